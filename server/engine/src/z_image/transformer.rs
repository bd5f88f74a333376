//! Z-Image's single-stream DiT (diffusers `ZImageTransformer2DModel`, basic mode: one image per
//! batch row, no SigLIP / omni inputs).
//!
//! Per batch row: the latents are cut into 2×2 patches (channels ordered `(dy, dx, c)`), embedded,
//! and padded to a multiple of [`SEQ_MULTI_OF`] with the learned `x_pad_token`; the caption
//! (RMSNorm + linear) is padded the same way with `cap_pad_token`. Pad tokens are *not* masked:
//! they attend and are attended to like real tokens, as in the reference. Two modulated
//! `noise_refiner` blocks run over the image tokens, two unmodulated `context_refiner` blocks
//! over the caption, then `n_layers` modulated blocks over `[image, caption]`, and a final
//! AdaLN-scaled LayerNorm + linear on the image tokens. Rows whose padded lengths differ (CFG
//! with a negative prompt of another length) are right-padded with zeros and those keys masked.
//!
//! RoPE has three axes `(frame, row, column)`: caption token `j` sits at `(1 + j, 0, 0)`, image
//! patch `(h, w)` at `(P + 1, h, w)` with `P` that row's padded caption length, image pad tokens at
//! `(0, 0, 0)`. Tables are computed on the host in f64 then f32 as the reference does.
//!
//! What differs from candle-transformers 0.11.1's `z_image::transformer` (which this replaces):
//! it masks the caption's pad positions and fills them with zeros instead of the learned
//! `cap_pad_token`, never pads the image tokens (sizes whose patch count is not a multiple of 32
//! give other positions and no `x_pad_token`), computes the FFN width as `dim / 3 * 8` in
//! integers (168, not the reference's 170, for dim 64), builds RoPE angles in f32 (the reference
//! rounds f64 angles), and cannot stream its blocks for `cpu_offload`.

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{Linear, VarBuilder};

use super::config::{Config, SEQ_MULTI_OF, T_EMBED_MID, T_FREQ_DIM};
use crate::gpu::fused::{Kernels, FLASH_HEAD_DIM};
use crate::gpu::offload::{Blocks, BuildBlock, OffloadOptions, OffloadStats, StreamedBlocks};
use crate::transformer::norm::{layer_norm, RmsNorm};

/// `n` rounded up to a multiple of [`SEQ_MULTI_OF`].
pub fn padded_len(n: usize) -> usize {
    n.div_ceil(SEQ_MULTI_OF) * SEQ_MULTI_OF
}

/// RoPE tables of a batch: `cos`, `sin` `[B, S, head_dim/2]` (f32, on the run's device).
#[derive(Debug, Clone)]
pub struct BatchRope {
    cos: Tensor,
    sin: Tensor,
}

/// Which keys each batch row attends to: its first `lens[b]` (`None`: all of them in every row).
#[derive(Debug, Clone)]
pub struct RowMask {
    lens: Vec<usize>,
    /// `lens` as u32 `[B]` on the device (for the flash kernel).
    kv_len: Tensor,
}

impl RowMask {
    /// `None` when every row is `total` long.
    fn new(lens: &[usize], total: usize, device: &Device) -> Result<Option<Self>> {
        if lens.iter().all(|&l| l == total) {
            return Ok(None);
        }
        let kv: Vec<u32> = lens.iter().map(|&l| l as u32).collect();
        Ok(Some(Self {
            lens: lens.to_vec(),
            kv_len: Tensor::from_vec(kv, lens.len(), device)?,
        }))
    }
}

/// One `ZImageTransformerBlock`.
#[derive(Debug, Clone)]
pub struct ZBlock {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    norm_q: RmsNorm,
    norm_k: RmsNorm,
    w1: Linear,
    w2: Linear,
    w3: Linear,
    attention_norm1: RmsNorm,
    attention_norm2: RmsNorm,
    ffn_norm1: RmsNorm,
    ffn_norm2: RmsNorm,
    /// `adaLN_modulation.0`: `[adaln_dim] → 4·dim` (scale_msa, gate_msa, scale_mlp, gate_mlp).
    adaln: Option<Linear>,
    heads: usize,
    head_dim: usize,
}

impl ZBlock {
    pub fn new(cfg: &Config, modulation: bool, vb: VarBuilder) -> Result<Self> {
        let (dim, ffn) = (cfg.dim, cfg.ffn_dim());
        let att = vb.pp("attention");
        let lin = |i, o, vb: VarBuilder| candle_nn::linear_no_bias(i, o, vb);
        Ok(Self {
            to_q: lin(dim, dim, att.pp("to_q"))?,
            to_k: lin(dim, dim, att.pp("to_k"))?,
            to_v: lin(dim, dim, att.pp("to_v"))?,
            to_out: lin(dim, dim, att.pp("to_out").pp("0"))?,
            // diffusers' Attention(qk_norm="rms_norm", eps=1e-5), whatever norm_eps says.
            norm_q: RmsNorm::new(cfg.head_dim(), 1e-5, att.pp("norm_q"))?,
            norm_k: RmsNorm::new(cfg.head_dim(), 1e-5, att.pp("norm_k"))?,
            w1: lin(dim, ffn, vb.pp("feed_forward").pp("w1"))?,
            w2: lin(ffn, dim, vb.pp("feed_forward").pp("w2"))?,
            w3: lin(dim, ffn, vb.pp("feed_forward").pp("w3"))?,
            attention_norm1: RmsNorm::new(dim, cfg.norm_eps, vb.pp("attention_norm1"))?,
            attention_norm2: RmsNorm::new(dim, cfg.norm_eps, vb.pp("attention_norm2"))?,
            ffn_norm1: RmsNorm::new(dim, cfg.norm_eps, vb.pp("ffn_norm1"))?,
            ffn_norm2: RmsNorm::new(dim, cfg.norm_eps, vb.pp("ffn_norm2"))?,
            adaln: if modulation {
                Some(candle_nn::linear(
                    cfg.adaln_dim(),
                    4 * dim,
                    vb.pp("adaLN_modulation").pp("0"),
                )?)
            } else {
                None
            },
            heads: cfg.n_heads,
            head_dim: cfg.head_dim(),
        })
    }

    /// `x` `[B, S, dim]`; `adaln` `[B, adaln_dim]` for a modulated block.
    pub fn forward(
        &self,
        x: &Tensor,
        adaln: Option<&Tensor>,
        rope: &BatchRope,
        mask: Option<&RowMask>,
        kernels: &Kernels,
    ) -> Result<Tensor> {
        match (&self.adaln, adaln) {
            (Some(lin), Some(c)) => {
                let dim = x.dim(D::Minus1)?;
                let m = lin.forward(c)?.unsqueeze(1)?;
                let chunk = |i: usize| m.narrow(2, i * dim, dim);
                let scale_msa = (chunk(0)? + 1.0)?;
                let gate_msa = chunk(1)?.tanh()?;
                let scale_mlp = (chunk(2)? + 1.0)?;
                let gate_mlp = chunk(3)?.tanh()?;
                let h = self.attention_norm1.forward(x)?.broadcast_mul(&scale_msa)?;
                let a = self.attention(&h, rope, mask, kernels)?;
                let x = (x + self.attention_norm2.forward(&a)?.broadcast_mul(&gate_msa)?)?;
                let h = self.ffn_norm1.forward(&x)?.broadcast_mul(&scale_mlp)?;
                let f = self.feed_forward(&h)?;
                x + self.ffn_norm2.forward(&f)?.broadcast_mul(&gate_mlp)?
            }
            (None, None) => {
                let a = self.attention(&self.attention_norm1.forward(x)?, rope, mask, kernels)?;
                let x = (x + self.attention_norm2.forward(&a)?)?;
                let f = self.feed_forward(&self.ffn_norm1.forward(&x)?)?;
                x + self.ffn_norm2.forward(&f)?
            }
            (Some(_), None) => candle_core::bail!("z-image block: a modulated block needs the timestep embedding"),
            (None, Some(_)) => candle_core::bail!("z-image block: an unmodulated block takes no timestep embedding"),
        }
    }

    fn feed_forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate = self.w1.forward(x)?.silu()?;
        self.w2.forward(&(gate * self.w3.forward(x)?)?)
    }

    fn attention(&self, x: &Tensor, rope: &BatchRope, mask: Option<&RowMask>, kernels: &Kernels) -> Result<Tensor> {
        let (b, s, _) = x.dims3()?;
        let (h, dh) = (self.heads, self.head_dim);
        // [B, H, S, Dh], q/k normalised per head then rotated (in f32, cast back).
        let heads = |t: Tensor| t.reshape((b, s, h, dh));
        let q = self.norm_q.forward(&heads(self.to_q.forward(x)?)?)?.transpose(1, 2)?;
        let k = self.norm_k.forward(&heads(self.to_k.forward(x)?)?)?.transpose(1, 2)?;
        let q = crate::transformer::rope::apply_rope(&q, &rope.cos, &rope.sin)?;
        let k = crate::transformer::rope::apply_rope(&k, &rope.cos, &rope.sin)?;
        let v = heads(self.to_v.forward(x)?)?;
        let out = if kernels.fused && dh == FLASH_HEAD_DIM && crate::gpu::fused::applies_to(x) {
            // The flash kernel wants [B, S, H, 128] and a per-row key count.
            let kv_len = match mask {
                Some(m) => m.kv_len.clone(),
                None => Tensor::from_vec(vec![s as u32; b], b, x.device())?,
            };
            let q = q.transpose(1, 2)?.contiguous()?;
            let k = k.transpose(1, 2)?.contiguous()?;
            let (out, _) = crate::gpu::fused::flash_attention(&q, &k, &v.contiguous()?, &kv_len, s, kernels)?;
            out
        } else {
            let v = v.transpose(1, 2)?.contiguous()?;
            let out = match mask {
                None => crate::transformer::attention::scaled_dot_product_attention(&q, &k, &v, None)?,
                Some(m) => {
                    let rows = (0..b)
                        .map(|i| {
                            let len = m.lens[i];
                            crate::transformer::attention::scaled_dot_product_attention(
                                &q.narrow(0, i, 1)?,
                                &k.narrow(0, i, 1)?.narrow(2, 0, len)?,
                                &v.narrow(0, i, 1)?.narrow(2, 0, len)?,
                                None,
                            )
                        })
                        .collect::<Result<Vec<_>>>()?;
                    Tensor::cat(&rows, 0)?
                }
            };
            out.transpose(1, 2)?.reshape((b, s, h * dh))?
        };
        self.to_out.forward(&out)
    }
}

/// Intermediates of one forward, for the parity tests.
#[derive(Debug, Clone)]
pub struct Trace {
    /// `[B, adaln_dim]`: `t_embedder(t · t_scale)`.
    pub t_emb: Tensor,
    /// `[B, S_x padded, dim]`: after the last noise refiner.
    pub noise_refiner: Tensor,
    /// `[B, max padded caption, dim]`: after the last context refiner.
    pub context_refiner: Tensor,
    /// Per main layer, `[B, max(S_x + S_cap), dim]`.
    pub layers: Vec<Tensor>,
}

/// Per-axis RoPE tables on the host: `cos`/`sin` `[axes_lens[a]][axes_dims[a] / 2]`.
#[derive(Debug, Clone)]
struct AxisTables {
    half: Vec<usize>,
    lens: Vec<usize>,
    cos: Vec<Vec<f32>>,
    sin: Vec<Vec<f32>>,
}

impl AxisTables {
    fn new(cfg: &Config) -> Self {
        let mut t = AxisTables {
            half: Vec::new(),
            lens: cfg.axes_lens.clone(),
            cos: Vec::new(),
            sin: Vec::new(),
        };
        for (&d, &len) in cfg.axes_dims.iter().zip(&cfg.axes_lens) {
            let freqs: Vec<f64> = (0..d / 2)
                .map(|k| 1.0 / cfg.rope_theta.powf((2 * k) as f64 / d as f64))
                .collect();
            let (mut c, mut s) = (Vec::with_capacity(len * d / 2), Vec::with_capacity(len * d / 2));
            for p in 0..len {
                for f in &freqs {
                    let angle = (p as f64 * f) as f32;
                    c.push(angle.cos());
                    s.push(angle.sin());
                }
            }
            t.half.push(d / 2);
            t.cos.push(c);
            t.sin.push(s);
        }
        t
    }

    fn half_dim(&self) -> usize {
        self.half.iter().sum()
    }

    /// Appends the rows of positions `ids` to `cos`/`sin`.
    fn push_rows(&self, ids: impl Iterator<Item = [usize; 3]>, cos: &mut Vec<f32>, sin: &mut Vec<f32>) -> Result<()> {
        for id in ids {
            for (a, &p) in id.iter().enumerate() {
                if p >= self.lens[a] {
                    candle_core::bail!(
                        "z-image RoPE: position {p} on axis {a} is past axes_lens[{a}]={} (image or prompt too long)",
                        self.lens[a]
                    );
                }
                let h = self.half[a];
                cos.extend_from_slice(&self.cos[a][p * h..(p + 1) * h]);
                sin.extend_from_slice(&self.sin[a][p * h..(p + 1) * h]);
            }
        }
        Ok(())
    }
}

/// The transformer.
#[derive(Debug)]
pub struct ZImageTransformer {
    cfg: Config,
    t_linear1: Linear,
    t_linear2: Linear,
    cap_norm: RmsNorm,
    cap_linear: Linear,
    x_embedder: Linear,
    final_adaln: Linear,
    final_linear: Linear,
    x_pad_token: Tensor,
    cap_pad_token: Tensor,
    noise_refiner: Vec<ZBlock>,
    context_refiner: Vec<ZBlock>,
    layers: Blocks<ZBlock>,
    rope: AxisTables,
    dtype: DType,
    device: Device,
    kernels: Kernels,
}

impl ZImageTransformer {
    /// Loads `transformer/` from `vb` (its dtype and device are the run's).
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let layers = (0..cfg.n_layers)
            .map(|i| ZBlock::new(cfg, true, vb.pp("layers").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Self::with_layers(cfg, vb, Blocks::OnDevice(layers))
    }

    /// Like [`Self::new`], with the main layers (≈ 90 % of the weights) in host memory, streamed
    /// to the GPU one ahead of use ([`crate::gpu::offload`]); `host` reads them on the CPU.
    pub fn new_offloaded(cfg: &Config, vb: VarBuilder, host: &VarBuilder, options: OffloadOptions) -> Result<Self> {
        cfg.validate()?;
        let block_cfg = cfg.clone();
        let build: BuildBlock<ZBlock> = Box::new(move |_, vb| ZBlock::new(&block_cfg, true, vb));
        let layers = StreamedBlocks::new(&host.pp("layers"), cfg.n_layers, build, vb.device(), options)?;
        Self::with_layers(cfg, vb, Blocks::Streamed(layers))
    }

    fn with_layers(cfg: &Config, vb: VarBuilder, layers: Blocks<ZBlock>) -> Result<Self> {
        let (dim, adaln) = (cfg.dim, cfg.adaln_dim());
        let refiners = |name: &str, modulation: bool| {
            (0..cfg.n_refiner_layers)
                .map(|i| ZBlock::new(cfg, modulation, vb.pp(name).pp(i)))
                .collect::<Result<Vec<_>>>()
        };
        let fl = vb.pp("all_final_layer").pp("2-1");
        Ok(Self {
            t_linear1: candle_nn::linear(T_FREQ_DIM, T_EMBED_MID, vb.pp("t_embedder").pp("mlp").pp("0"))?,
            t_linear2: candle_nn::linear(T_EMBED_MID, adaln, vb.pp("t_embedder").pp("mlp").pp("2"))?,
            cap_norm: RmsNorm::new(cfg.cap_feat_dim, cfg.norm_eps, vb.pp("cap_embedder").pp("0"))?,
            cap_linear: candle_nn::linear(cfg.cap_feat_dim, dim, vb.pp("cap_embedder").pp("1"))?,
            x_embedder: candle_nn::linear(cfg.patch_channels(), dim, vb.pp("all_x_embedder").pp("2-1"))?,
            final_adaln: candle_nn::linear(adaln, dim, fl.pp("adaLN_modulation").pp("1"))?,
            final_linear: candle_nn::linear(dim, cfg.patch_channels(), fl.pp("linear"))?,
            x_pad_token: vb.get((1, dim), "x_pad_token")?,
            cap_pad_token: vb.get((1, dim), "cap_pad_token")?,
            noise_refiner: refiners("noise_refiner", true)?,
            context_refiner: refiners("context_refiner", false)?,
            layers,
            rope: AxisTables::new(cfg),
            dtype: vb.dtype(),
            device: vb.device().clone(),
            cfg: cfg.clone(),
            kernels: Kernels::default(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn device(&self) -> &Device {
        &self.device
    }
    /// Chooses the CUDA kernels of later forwards (`Kernels::PLAIN`: the candle path).
    pub fn set_kernels(&mut self, kernels: Kernels) {
        self.kernels = kernels;
    }
    pub fn offload_stats(&self) -> Option<OffloadStats> {
        self.layers.offload_stats()
    }

    /// `t_embedder(t · t_scale)`: sinusoidal features `[cos | sin]` of 128 frequencies
    /// `exp(−ln(10000)·k/128)` in f32, cast to the weights' dtype, then the MLP. `t` `[B]`.
    pub fn timestep_embedding(&self, t: &Tensor) -> Result<Tensor> {
        let half = T_FREQ_DIM / 2;
        let ln = -(10000f64.ln() as f32);
        let freqs: Vec<f32> = (0..half).map(|k| ((ln * k as f32) / half as f32).exp()).collect();
        let freqs = Tensor::from_vec(freqs, (1, half), t.device())?;
        let args = (t.to_dtype(DType::F32)? * self.cfg.t_scale)?
            .unsqueeze(1)?
            .broadcast_mul(&freqs)?;
        let feat = Tensor::cat(&[args.cos()?, args.sin()?], 1)?.to_dtype(self.dtype)?;
        self.t_linear2.forward(&self.t_linear1.forward(&feat)?.silu()?)
    }

    /// Predicts the flow for `latents` `[B, C, H, W]` at `t` `[B]` (the pipeline's
    /// `(1000 − timestep) / 1000`), row `b` conditioned on `captions[b]` `[L_b, cap_feat_dim]`.
    /// Returns `[B, C, H, W]` in the model's dtype.
    pub fn forward(&self, latents: &Tensor, t: &Tensor, captions: &[Tensor]) -> Result<Tensor> {
        self.run(latents, t, captions, None)
    }

    /// [`Self::forward`] with its intermediates.
    pub fn forward_with_trace(&self, latents: &Tensor, t: &Tensor, captions: &[Tensor]) -> Result<(Tensor, Trace)> {
        let mut trace = Vec::new();
        let out = self.run(latents, t, captions, Some(&mut trace))?;
        let mut it = trace.into_iter();
        let mut next = || it.next().expect("run records every stage");
        let (t_emb, noise_refiner, context_refiner) = (next(), next(), next());
        let layers = (0..self.layers.len()).map(|_| next()).collect();
        Ok((
            out,
            Trace {
                t_emb,
                noise_refiner,
                context_refiner,
                layers,
            },
        ))
    }

    fn rope_tensor(&self, cos: Vec<f32>, sin: Vec<f32>, b: usize, s: usize) -> Result<BatchRope> {
        let half = self.rope.half_dim();
        Ok(BatchRope {
            cos: Tensor::from_vec(cos, (b, s, half), &Device::Cpu)?.to_device(&self.device)?,
            sin: Tensor::from_vec(sin, (b, s, half), &Device::Cpu)?.to_device(&self.device)?,
        })
    }

    fn run(
        &self,
        latents: &Tensor,
        t: &Tensor,
        captions: &[Tensor],
        mut trace: Option<&mut Vec<Tensor>>,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (b, c, h, w) = latents.dims4()?;
        if c != cfg.in_channels || h % 2 != 0 || w % 2 != 0 || h == 0 || w == 0 {
            candle_core::bail!(
                "z-image transformer: latents must be [B, {}, H, W] with even H, W, got {:?}",
                cfg.in_channels,
                latents.dims()
            );
        }
        if captions.len() != b || t.dims() != [b] {
            candle_core::bail!(
                "z-image transformer: {b} latents need {b} captions and t [{b}] (got {} and {:?})",
                captions.len(),
                t.dims()
            );
        }
        let mut record = |x: &Tensor| {
            if let Some(tr) = trace.as_deref_mut() {
                tr.push(x.clone());
            }
        };
        let dim = cfg.dim;
        let half = self.rope.half_dim();
        let (ht, wt) = (h / 2, w / 2);
        let n_x = ht * wt;
        let n_xp = padded_len(n_x);
        let cap_lens = captions
            .iter()
            .map(|cap| match cap.dims() {
                &[l, d] if d == cfg.cap_feat_dim && l > 0 => Ok(l),
                d => candle_core::bail!(
                    "z-image transformer: a caption must be [tokens ≥ 1, {}], got {d:?}",
                    cfg.cap_feat_dim
                ),
            })
            .collect::<Result<Vec<_>>>()?;
        let cap_padded: Vec<usize> = cap_lens.iter().map(|&l| padded_len(l)).collect();
        let cap_max = *cap_padded.iter().max().expect("b ≥ 1");

        let adaln = self.timestep_embedding(t)?;
        record(&adaln);

        // Image tokens: 2×2 patches, channels (dy, dx, c); pads are x_pad_token.
        let patches = latents
            .to_dtype(self.dtype)?
            .reshape((b, c, ht, 2, wt, 2))?
            .permute((0, 2, 4, 3, 5, 1))?
            .contiguous()?
            .reshape((b, n_x, 4 * c))?;
        let mut x = self.x_embedder.forward(&patches)?;
        if n_xp > n_x {
            let pad = self.x_pad_token.unsqueeze(0)?.broadcast_as((b, n_xp - n_x, dim))?;
            x = Tensor::cat(&[&x, &pad.to_dtype(x.dtype())?], 1)?;
        }
        // Per row: image positions (P_b + 1, h, w), pads (0, 0, 0); caption (1 + j, 0, 0).
        let img_ids = |p: usize| (0..n_xp).map(move |i| if i < n_x { [p + 1, i / wt, i % wt] } else { [0, 0, 0] });
        let cap_ids = |p: usize| (0..p).map(|j| [1 + j, 0, 0]);
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        for &p in &cap_padded {
            self.rope.push_rows(img_ids(p), &mut cos, &mut sin)?;
        }
        let x_rope = self.rope_tensor(cos, sin, b, n_xp)?;
        for block in &self.noise_refiner {
            x = block.forward(&x, Some(&adaln), &x_rope, None, &self.kernels)?;
        }
        record(&x);

        // Captions: embedded, pad tokens to P_b, zeros to the longest row (masked keys).
        let mut rows = Vec::with_capacity(b);
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        for (i, cap) in captions.iter().enumerate() {
            let e = self.cap_linear.forward(
                &self
                    .cap_norm
                    .forward(&cap.to_device(&self.device)?.to_dtype(self.dtype)?)?,
            )?;
            let mut parts = vec![e];
            if cap_padded[i] > cap_lens[i] {
                parts.push(
                    self.cap_pad_token
                        .broadcast_as((cap_padded[i] - cap_lens[i], dim))?
                        .to_dtype(self.dtype)?,
                );
            }
            if cap_max > cap_padded[i] {
                parts.push(Tensor::zeros((cap_max - cap_padded[i], dim), self.dtype, &self.device)?);
            }
            rows.push(Tensor::cat(&parts, 0)?);
            self.rope.push_rows(cap_ids(cap_padded[i]), &mut cos, &mut sin)?;
            let fill = (cap_max - cap_padded[i]) * half;
            cos.extend(std::iter::repeat_n(0f32, fill));
            sin.extend(std::iter::repeat_n(0f32, fill));
        }
        let mut cap = Tensor::stack(&rows, 0)?;
        let cap_rope = self.rope_tensor(cos, sin, b, cap_max)?;
        let cap_mask = RowMask::new(&cap_padded, cap_max, &self.device)?;
        for block in &self.context_refiner {
            cap = block.forward(&cap, None, &cap_rope, cap_mask.as_ref(), &self.kernels)?;
        }
        record(&cap);

        // Unified [image, caption] per row, zero-padded to the longest.
        let u_max = n_xp + cap_max;
        let mut rows = Vec::with_capacity(b);
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        for (i, &p) in cap_padded.iter().enumerate() {
            let mut parts = vec![x.get(i)?, cap.get(i)?.narrow(0, 0, p)?];
            if cap_max > p {
                parts.push(Tensor::zeros((cap_max - p, dim), self.dtype, &self.device)?);
            }
            rows.push(Tensor::cat(&parts, 0)?);
            self.rope.push_rows(img_ids(p).chain(cap_ids(p)), &mut cos, &mut sin)?;
            let fill = (cap_max - p) * half;
            cos.extend(std::iter::repeat_n(0f32, fill));
            sin.extend(std::iter::repeat_n(0f32, fill));
        }
        let mut u = Tensor::stack(&rows, 0)?;
        let u_rope = self.rope_tensor(cos, sin, b, u_max)?;
        let u_lens: Vec<usize> = cap_padded.iter().map(|p| n_xp + p).collect();
        let u_mask = RowMask::new(&u_lens, u_max, &self.device)?;
        self.layers.for_each(|block| {
            u = block.forward(&u, Some(&adaln), &u_rope, u_mask.as_ref(), &self.kernels)?;
            record(&u);
            Ok(())
        })?;

        // Final layer on the real image tokens, then un-patchify.
        let img = u.narrow(1, 0, n_x)?;
        let scale = (self.final_adaln.forward(&adaln.silu()?)? + 1.0)?.unsqueeze(1)?;
        let img = layer_norm(&img, 1e-6)?.broadcast_mul(&scale)?;
        self.final_linear
            .forward(&img)?
            .reshape((b, ht, wt, 2, 2, c))?
            .permute((0, 5, 1, 3, 2, 4))?
            .contiguous()?
            .reshape((b, c, h, w))
    }
}
