//! The denoising loop both pipelines share: per step one transformer forward over the noisy and
//! the condition tokens (cond and uncond batched in one forward when there is a negative
//! prompt), the true-CFG combine in f32, and the flow-match Euler step; cancellation is checked
//! between steps, progress reported, and each step handed to an observer.
//!
//! CFG-parallel: with a second copy of the DiT on another device (`cfg_peer`), the unconditional
//! branch runs there on its own thread while the conditional one runs here, and its velocity is
//! copied back to be combined. Each branch is the batched forward's row (same padded text and
//! mask), so the result is the batched path's, less the batch-dependent rounding of the kernels.
//!
//! Sequence-parallel: each forward (both branches batched) is spread over several devices by
//! their image tokens ([`SequenceParallel`]).

use candle_core::{DType, Device, Tensor};

use crate::pipeline::{check_cancel, Phase, Progress};
use crate::scheduler::FlowMatchEulerScheduler;
use crate::transformer::{cfg, QwenImageTransformer, SequenceParallel};
use crate::Result;

/// Per-step tensors, handed to an observer (tests compare them with the reference's).
pub struct StepTrace<'a> {
    pub step: usize,
    pub v_cond: &'a Tensor,
    pub v_uncond: Option<&'a Tensor>,
    pub v_guided: &'a Tensor,
    pub latents_after: &'a Tensor,
}

/// What one run denoises, and how.
pub(crate) struct Denoise<'a> {
    pub transformer: &'a QwenImageTransformer,
    /// CFG-parallel: the DiT's copy on a second device, which runs the unconditional branch.
    pub cfg_peer: Option<&'a QwenImageTransformer>,
    /// Sequence-parallel: the DiT's copies on further devices, sharing each forward's tokens.
    pub sequence: Option<&'a SequenceParallel>,
    /// The packed condition tokens, appended after the noisy ones at every step.
    pub cond_latents: &'a Tensor,
    /// `[1 or 2, S, D]` in the model's dtype: the prompt, then (batched CFG) the negative one.
    pub txt: &'a Tensor,
    pub txt_mask: Option<&'a Tensor>,
    pub img_shapes: &'a [(usize, usize, usize)],
    /// Layered's `additional_t_cond` (is-RGB flags), `None` for edit.
    pub additional_t_cond: Option<&'a Tensor>,
    /// The model's dtype (the latents and the scheduler stay f32).
    pub dtype: DType,
    pub true_cfg_scale: f64,
    /// Rescale the guided velocity to the conditional one's norm.
    pub cfg_normalize: bool,
}

impl Denoise<'_> {
    /// Runs every step of `scheduler` from the packed `latents` and returns the final ones.
    pub(crate) fn run(
        &self,
        scheduler: &mut FlowMatchEulerScheduler,
        mut latents: Tensor,
        progress: &dyn Progress,
        observe: &mut dyn FnMut(StepTrace<'_>),
    ) -> Result<Tensor> {
        let device = latents.device().clone();
        let batch = self.txt.dim(0)?;
        let noisy_tokens = latents.dim(1)?;
        let steps = scheduler.num_steps();
        progress.phase(Phase::Denoising);
        progress.step(0, steps);
        let parallel = match self.cfg_peer {
            Some(peer) if batch == 2 => Some(PeerBranch::new(self, peer)?),
            _ => None,
        };
        for i in 0..steps {
            check_cancel(progress)?;
            let sigma = scheduler.model_sigma(i)?;
            let input = Tensor::cat(&[&latents, self.cond_latents], 1)?;
            let (v_cond, v_uncond) = match &parallel {
                Some(peer) => {
                    let (c, u) = peer.forward_both(self, &input, sigma)?;
                    (c.narrow(1, 0, noisy_tokens)?, Some(u.narrow(1, 0, noisy_tokens)?))
                }
                None => {
                    let input = if batch == 2 {
                        Tensor::cat(&[&input, &input], 0)?
                    } else {
                        input
                    };
                    let (input, sigma) = (input.to_dtype(self.dtype)?, Tensor::full(sigma, batch, &device)?);
                    let out = match self.sequence {
                        Some(sp) => sp.forward(
                            self.transformer,
                            &input,
                            self.txt,
                            self.txt_mask,
                            &sigma,
                            self.img_shapes,
                            self.additional_t_cond,
                        )?,
                        None => self.transformer.forward(
                            &input,
                            self.txt,
                            self.txt_mask,
                            &sigma,
                            self.img_shapes,
                            self.additional_t_cond,
                        )?,
                    };
                    let out = out.narrow(1, 0, noisy_tokens)?.to_dtype(DType::F32)?;
                    if batch == 2 {
                        let (c, u) = cfg::split_cond_uncond(&out)?;
                        (c, Some(u))
                    } else {
                        (out, None)
                    }
                }
            };
            let v = match &v_uncond {
                Some(u) => cfg::combine(&v_cond, u, self.true_cfg_scale, self.cfg_normalize)?,
                None => v_cond.clone(),
            };
            latents = scheduler.step(&latents, &v, i)?;
            observe(StepTrace {
                step: i,
                v_cond: &v_cond,
                v_uncond: v_uncond.as_ref(),
                v_guided: &v,
                latents_after: &latents,
            });
            progress.step(i + 1, steps);
        }
        check_cancel(progress)?;
        Ok(latents)
    }
}

/// The unconditional branch's inputs, moved once to the CFG peer's device.
struct PeerBranch<'a> {
    peer: &'a QwenImageTransformer,
    device: Device,
    txt: Tensor,
    txt_mask: Option<Tensor>,
    cond_latents: Tensor,
    additional_t_cond: Option<Tensor>,
    /// The conditional branch's rows (row 0 of the batched inputs), on the main device.
    main_txt: Tensor,
    main_txt_mask: Option<Tensor>,
    main_t_cond: Option<Tensor>,
}

impl<'a> PeerBranch<'a> {
    fn new(d: &Denoise<'_>, peer: &'a QwenImageTransformer) -> Result<Self> {
        let device = peer.device().clone();
        let row = |t: &Tensor, i: usize| t.narrow(0, i, 1);
        let on_peer = |t: &Tensor| row(t, 1)?.to_device(&device);
        Ok(Self {
            peer,
            txt: on_peer(d.txt)?,
            txt_mask: d.txt_mask.map(on_peer).transpose()?,
            cond_latents: d.cond_latents.to_device(&device)?,
            additional_t_cond: d.additional_t_cond.map(on_peer).transpose()?,
            main_txt: row(d.txt, 0)?,
            main_txt_mask: d.txt_mask.map(|m| row(m, 0)).transpose()?,
            main_t_cond: d.additional_t_cond.map(|t| row(t, 0)).transpose()?,
            device,
        })
    }

    /// Both branches' velocities for the noisy `input` (`[1, tokens, C]` f32 on the main
    /// device, condition tokens included) at `sigma`, each f32 on the main device: the
    /// unconditional one computed on the peer at the same time as the conditional one here.
    fn forward_both(&self, d: &Denoise<'_>, input: &Tensor, sigma: f32) -> Result<(Tensor, Tensor)> {
        let main_device = input.device().clone();
        let noisy = input.narrow(1, 0, input.dim(1)? - d.cond_latents.dim(1)?)?;
        std::thread::scope(|scope| {
            let uncond = scope.spawn(|| -> Result<Tensor> {
                let x = Tensor::cat(&[&noisy.to_device(&self.device)?, &self.cond_latents], 1)?;
                let out = self.peer.forward(
                    &x.to_dtype(d.dtype)?,
                    &self.txt,
                    self.txt_mask.as_ref(),
                    &Tensor::full(sigma, 1, &self.device)?,
                    d.img_shapes,
                    self.additional_t_cond.as_ref(),
                )?;
                let out = out.to_dtype(DType::F32)?;
                // Computed before it is copied (the copy runs on the main device's stream).
                self.device.synchronize()?;
                Ok(out)
            });
            let cond = d.transformer.forward(
                &input.to_dtype(d.dtype)?,
                &self.main_txt,
                self.main_txt_mask.as_ref(),
                &Tensor::full(sigma, 1, &main_device)?,
                d.img_shapes,
                self.main_t_cond.as_ref(),
            );
            // A panic there is one here, as if both branches ran on this thread.
            let on_peer = uncond.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
            let uncond = on_peer.to_device(&main_device)?;
            // Copied before the peer's buffer is freed.
            main_device.synchronize()?;
            Ok((cond?.to_dtype(DType::F32)?, uncond))
        })
    }
}
