//! Sequence parallelism (Ulysses) over several devices of one host (issue 21).
//!
//! Every device holds a copy of the DiT. The image tokens are split into one contiguous shard
//! per device; the text tokens (a few hundred, against thousands of image tokens) are kept
//! whole on every device. Everything but the attention acts token by token, so each device runs
//! it on its own shard. In each block's joint attention two all-to-all exchanges change what a
//! device holds:
//!
//! 1. q, k, v of *its tokens, every head* become *every token, its heads* (`heads / devices`):
//!    the attention then runs over the whole joint sequence for those heads;
//! 2. the output goes back to *its tokens, every head*, and the text rows of its heads go to
//!    every device (each keeps the whole text stream).
//!
//! The result equals the single-device forward up to the rounding of the per-head work split.
//! The exchanges move tensors between devices with candle's device-to-device copies (peer
//! copies between GPUs; no NCCL). On the CPU the "devices" are threads with their own model
//! copies, which is how the numerics are tested without GPUs.

use std::ops::Range;
use std::sync::{Condvar, Mutex};

use candle_core::{Device, Result, Tensor};

use super::model::{ImgShapes, QwenImageTransformer};

/// The DiT's copies on the devices after the first (the main copy, on the first device, is the
/// pipeline's own), run together as one sequence-parallel forward.
#[derive(Debug)]
pub struct SequenceParallel {
    peers: Vec<QwenImageTransformer>,
}

impl SequenceParallel {
    /// `peers`: the same model loaded on each further device. The heads must split evenly over
    /// all devices, and Edit-2511's per-segment modulation (`zero_cond_t`) is not sharded yet.
    pub fn new(main: &QwenImageTransformer, peers: Vec<QwenImageTransformer>) -> Result<Self> {
        let cfg = main.config();
        let ranks = peers.len() + 1;
        if !cfg.num_attention_heads.is_multiple_of(ranks) {
            candle_core::bail!(
                "sequence-parallel over {ranks} devices needs the {} attention heads to split evenly",
                cfg.num_attention_heads
            );
        }
        if cfg.zero_cond_t {
            candle_core::bail!("sequence-parallel does not support zero_cond_t models (Edit-2511) yet");
        }
        if peers.iter().any(|p| p.config() != cfg) {
            candle_core::bail!("sequence-parallel: every device must hold the same model");
        }
        Ok(Self { peers })
    }

    /// Devices taking part, the main one included.
    pub fn ranks(&self) -> usize {
        self.peers.len() + 1
    }

    /// [`QwenImageTransformer::forward`] spread over `main`'s device and the peers'; inputs and
    /// output on `main`'s device.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        main: &QwenImageTransformer,
        img: &Tensor,
        txt: &Tensor,
        txt_mask: Option<&Tensor>,
        sigma: &Tensor,
        img_shapes: &ImgShapes,
        additional_t_cond: Option<&Tensor>,
    ) -> Result<Tensor> {
        let ranks = self.ranks();
        let shards = shard_ranges(img.dim(1)?, ranks);
        let exchange = Exchange::new(ranks);
        let run_rank = |rank: usize, model: &QwenImageTransformer| -> Result<Tensor> {
            let device = model.device();
            let comm = RankComm {
                rank,
                shards: &shards,
                exchange: &exchange,
                device,
            };
            let on = |t: &Tensor| t.to_device(device);
            let out = model.forward_rank(
                &on(img)?,
                &on(txt)?,
                txt_mask.map(on).transpose()?.as_ref(),
                &on(sigma)?,
                img_shapes,
                additional_t_cond.map(on).transpose()?.as_ref(),
                &comm,
            );
            // A failed rank must not leave the others waiting for it at the next exchange.
            if let Err(e) = &out {
                exchange.abort(format!("device {rank} failed: {e}"));
            }
            out
        };
        std::thread::scope(|scope| {
            let peers: Vec<_> = self
                .peers
                .iter()
                .enumerate()
                .map(|(i, peer)| scope.spawn(move || run_rank(i + 1, peer)))
                .collect();
            let main_out = run_rank(0, main);
            let peer_outs: Vec<Result<Tensor>> = peers
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
                .collect();
            // The first real failure, not the "another device failed" it caused elsewhere.
            let mut shards_out = vec![main_out?];
            for out in peer_outs {
                shards_out.push(out?.to_device(main.device())?);
            }
            Tensor::cat(&shards_out, 1)
        })
    }
}

/// `len` tokens in `ranks` contiguous shards, the first `len % ranks` one token longer.
pub fn shard_ranges(len: usize, ranks: usize) -> Vec<Range<usize>> {
    let (base, extra) = (len / ranks, len % ranks);
    let mut start = 0;
    (0..ranks)
        .map(|r| {
            let n = base + usize::from(r < extra);
            let range = start..start + n;
            start += n;
            range
        })
        .collect()
}

/// What one device's forward knows of the others.
pub struct RankComm<'a> {
    pub rank: usize,
    /// Each device's image tokens.
    pub shards: &'a [Range<usize>],
    exchange: &'a Exchange,
    device: &'a Device,
}

impl RankComm<'_> {
    pub fn ranks(&self) -> usize {
        self.shards.len()
    }

    /// This device's image tokens.
    pub fn shard(&self) -> Range<usize> {
        self.shards[self.rank].clone()
    }

    /// Sends `parts[j]` to device `j` and returns what each device sent here, in device order,
    /// on this device. Every device must call it the same number of times.
    pub fn all_to_all(&self, parts: Vec<Vec<Tensor>>) -> Result<Vec<Vec<Tensor>>> {
        // The copies below run on the receivers' streams: what is sent must be computed first.
        self.device.synchronize()?;
        let received = self.exchange.swap(self.rank, parts)?;
        let here = received
            .iter()
            .map(|from| from.iter().map(|t| t.to_device(self.device)).collect())
            .collect::<Result<Vec<Vec<Tensor>>>>()?;
        // The senders' buffers may be freed once `received` drops: let the copies finish.
        self.device.synchronize()?;
        Ok(here)
    }
}

/// A rendezvous where each device leaves one list of tensors per device and takes the lists
/// left for it. Two alternating buffers: a device can only reach call k + 2 once every device
/// has left its part of call k + 1, which each does only after taking its part of call k.
#[derive(Debug)]
struct Exchange {
    ranks: usize,
    state: Mutex<ExchangeState>,
    changed: Condvar,
}

#[derive(Debug)]
struct ExchangeState {
    /// Per buffer: the call it holds, how many devices have left their parts, and
    /// `parts[from][to]`.
    round: [u64; 2],
    arrived: [usize; 2],
    parts: [Vec<Vec<Option<Vec<Tensor>>>>; 2],
    /// Each device's next call.
    calls: Vec<u64>,
    aborted: Option<String>,
}

impl Exchange {
    fn new(ranks: usize) -> Self {
        let empty = || vec![vec![None; ranks]; ranks];
        Self {
            ranks,
            state: Mutex::new(ExchangeState {
                round: [0, 1],
                arrived: [0, 0],
                parts: [empty(), empty()],
                calls: vec![0; ranks],
                aborted: None,
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ExchangeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops every exchange now and later with `why` (a device failed).
    fn abort(&self, why: String) {
        self.lock().aborted.get_or_insert(why);
        self.changed.notify_all();
    }

    fn swap(&self, rank: usize, parts: Vec<Vec<Tensor>>) -> Result<Vec<Vec<Tensor>>> {
        if parts.len() != self.ranks {
            candle_core::bail!("all-to-all: {} parts for {} devices", parts.len(), self.ranks);
        }
        let mut state = self.lock();
        let call = state.calls[rank];
        state.calls[rank] += 1;
        let buffer = (call % 2) as usize;
        if state.round[buffer] != call {
            // The first device at this call: the buffer's previous call is fully taken.
            state.round[buffer] = call;
            state.arrived[buffer] = 0;
        }
        for (to, part) in parts.into_iter().enumerate() {
            state.parts[buffer][rank][to] = Some(part);
        }
        state.arrived[buffer] += 1;
        self.changed.notify_all();
        while state.arrived[buffer] < self.ranks && state.aborted.is_none() {
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        if let Some(why) = &state.aborted {
            candle_core::bail!("sequence-parallel forward stopped: {why}");
        }
        (0..self.ranks)
            .map(|from| {
                state.parts[buffer][from][rank]
                    .take()
                    .ok_or_else(|| candle_core::Error::Msg(format!("all-to-all: nothing from device {from}")))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_the_tokens_in_order() {
        assert_eq!(shard_ranges(10, 4), vec![0..3, 3..6, 6..8, 8..10]);
        assert_eq!(shard_ranges(8, 2), vec![0..4, 4..8]);
        assert_eq!(shard_ranges(2, 3), vec![0..1, 1..2, 2..2]);
    }

    #[test]
    fn every_device_gets_what_each_sent_it_over_many_rounds() {
        let ranks = 3;
        let exchange = Exchange::new(ranks);
        std::thread::scope(|scope| {
            for rank in 0..ranks {
                let exchange = &exchange;
                scope.spawn(move || {
                    for round in 0..20u32 {
                        // Device `rank` sends `100·round + 10·rank + to` to device `to`.
                        let parts = (0..ranks)
                            .map(|to| {
                                let v = (100 * round + 10 * rank as u32 + to as u32) as f32;
                                vec![Tensor::new(&[v], &Device::Cpu).unwrap()]
                            })
                            .collect();
                        let got = exchange.swap(rank, parts).unwrap();
                        for (from, list) in got.iter().enumerate() {
                            let v = list[0].to_vec1::<f32>().unwrap()[0];
                            assert_eq!(v, (100 * round + 10 * from as u32 + rank as u32) as f32);
                        }
                    }
                });
            }
        });
    }

    #[test]
    fn a_failed_device_releases_the_others() {
        let exchange = Exchange::new(2);
        std::thread::scope(|scope| {
            let waiting = scope.spawn(|| exchange.swap(0, vec![vec![], vec![]]));
            std::thread::sleep(std::time::Duration::from_millis(50));
            exchange.abort("device 1 failed: out of memory".into());
            let err = waiting.join().unwrap().unwrap_err().to_string();
            assert!(err.contains("device 1 failed"), "{err}");
        });
    }
}
