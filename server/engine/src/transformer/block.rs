//! One dual-stream (MMDiT) block of the Qwen-Image transformer (diffusers
//! `QwenImageTransformerBlock`).
//!
//! Text and image tokens keep separate weights (modulation, norms, projections, MLPs) and meet
//! only in the joint attention. Per stream:
//! 1. `(shift1, scale1, gate1, shift2, scale2, gate2) = Linear(SiLU(temb))`;
//! 2. `x += gate1 · Attn(LN(x)·(1+scale1) + shift1)`;
//! 3. `x += gate2 · MLP(LN(x)·(1+scale2) + shift2)`, MLP = Linear(D→4D), GELU(tanh), Linear(4D→D).

use candle_core::{DType, Result, Tensor};
use candle_nn::{Linear, Module, VarBuilder};

use super::attention::{bias_of, matmul_without_bias, JointAttention, KeyMask};
use super::norm::layer_norm;
use super::rope::RopeTables;
use super::sequence_parallel::RankComm;
use crate::gpu::fused::Kernels;

const EPS: f64 = 1e-6;

/// diffusers `FeedForward(dim, dim, activation_fn="gelu-approximate")`: `net.0.proj`, GELU(tanh),
/// (`net.1` is dropout), `net.2`.
#[derive(Debug, Clone)]
pub struct FeedForward {
    proj_in: Linear,
    proj_out: Linear,
}

impl FeedForward {
    pub fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        let hidden = 4 * dim;
        Ok(Self {
            proj_in: candle_nn::linear(dim, hidden, vb.pp("net").pp("0").pp("proj"))?,
            proj_out: candle_nn::linear(hidden, dim, vb.pp("net").pp("2"))?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // candle's `gelu` is the tanh approximation, as `GELU(approximate="tanh")`.
        self.proj_out.forward(&self.proj_in.forward(x)?.gelu()?)
    }

    /// The fused CUDA path: `proj_in` with its bias and GELU in the GEMM's epilogue; returns the
    /// output projection **without** its bias (the gated residual adds it), and that bias.
    fn forward_fused_without_out_bias(&self, x: &Tensor, kernels: &Kernels) -> Result<(Tensor, &Tensor)> {
        let hidden = if kernels.gemm_epilogue {
            crate::gpu::gemm_epilogue::linear_bias_gelu(x, self.proj_in.weight(), bias_of(&self.proj_in)?)?
        } else {
            crate::gpu::fused::bias_gelu(&matmul_without_bias(x, &self.proj_in)?, bias_of(&self.proj_in)?)?
        };
        Ok((matmul_without_bias(&hidden, &self.proj_out)?, bias_of(&self.proj_out)?))
    }
}

/// Edit-2511's `zero_cond_t`: the image tokens from `noisy` on (the condition images) are
/// modulated with `temb0`, the embedding of t = 0, instead of the step's `temb`.
#[derive(Debug, Clone, Copy)]
pub struct CondModulation<'a> {
    /// `[B, D]`: `time_text_embed` of a zero timestep.
    pub temb0: &'a Tensor,
    /// Noisy image tokens (the first image segment); the rest are condition tokens.
    pub noisy: usize,
}

/// Applies `f` to the noisy tokens with `noisy` and to the condition tokens with `cond`, and
/// joins the two along the token axis; with no split, `f` on all tokens with `noisy`.
fn per_segment<M>(
    x: &Tensor,
    noisy: &M,
    cond: Option<(&M, usize)>,
    f: impl Fn(&Tensor, &M, usize, usize) -> Result<Tensor>,
) -> Result<Tensor> {
    let s = x.dim(1)?;
    match cond {
        Some((c, n)) if n < s => Tensor::cat(&[f(x, noisy, 0, n)?, f(x, c, n, s - n)?], 1),
        _ => f(x, noisy, 0, s),
    }
}

/// Shift, scale and gate of one modulated sub-layer, each `[B, 1, D]`.
struct Modulation {
    shift: Tensor,
    scale: Tensor,
    gate: Tensor,
}

impl Modulation {
    /// Splits `Linear(SiLU(temb))` `[B, 6D]` into the attention and MLP modulations, in the
    /// reference's (shift, scale, gate) order.
    fn pair(params: &Tensor) -> Result<(Self, Self)> {
        let chunks = params.unsqueeze(1)?.chunk(6, 2)?;
        let m = |i: usize| Self {
            shift: chunks[i].clone(),
            scale: chunks[i + 1].clone(),
            gate: chunks[i + 2].clone(),
        };
        Ok((m(0), m(3)))
    }

    /// `LN(x)·(1+scale) + shift`.
    fn modulate(&self, x: &Tensor) -> Result<Tensor> {
        layer_norm(x, EPS)?
            .broadcast_mul(&(&self.scale + 1.0)?)?
            .broadcast_add(&self.shift)
    }

    /// `x + gate·y`.
    fn gated_residual(&self, x: &Tensor, y: &Tensor) -> Result<Tensor> {
        x + y.broadcast_mul(&self.gate)?
    }
}

#[derive(Debug, Clone)]
pub struct TransformerBlock {
    /// `img_mod` is Sequential(SiLU, Linear): the Linear is `img_mod.1`.
    img_mod: Linear,
    txt_mod: Linear,
    attn: JointAttention,
    img_mlp: FeedForward,
    txt_mlp: FeedForward,
    span: tracing::Span,
}

impl TransformerBlock {
    pub fn new(dim: usize, heads: usize, head_dim: usize, index: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            img_mod: candle_nn::linear(dim, 6 * dim, vb.pp("img_mod").pp("1"))?,
            txt_mod: candle_nn::linear(dim, 6 * dim, vb.pp("txt_mod").pp("1"))?,
            attn: JointAttention::new(dim, heads, head_dim, EPS, vb.pp("attn"))?,
            img_mlp: FeedForward::new(dim, vb.pp("img_mlp"))?,
            txt_mlp: FeedForward::new(dim, vb.pp("txt_mlp"))?,
            span: tracing::debug_span!("transformer_block", index),
        })
    }

    /// `img` `[B, S_img, D]`, `txt` `[B, S_txt, D]`, `temb` `[B, D]`. Returns the updated
    /// `(img, txt)`.
    pub fn forward(
        &self,
        img: &Tensor,
        txt: &Tensor,
        temb: &Tensor,
        rope: &RopeTables,
        key_mask: Option<&KeyMask>,
        kernels: &Kernels,
    ) -> Result<(Tensor, Tensor)> {
        self.forward_with_cond(img, txt, temb, None, rope, key_mask, kernels)
    }

    /// [`Self::forward`] with Edit-2511's separate modulation of the condition tokens (`cond`,
    /// when the model has `zero_cond_t`).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_with_cond(
        &self,
        img: &Tensor,
        txt: &Tensor,
        temb: &Tensor,
        cond: Option<CondModulation>,
        rope: &RopeTables,
        key_mask: Option<&KeyMask>,
        kernels: &Kernels,
    ) -> Result<(Tensor, Tensor)> {
        let _enter = self.span.enter();
        if kernels.fused && self.fused_supported(img) {
            return self.forward_fused(img, txt, temb, cond, rope, key_mask, kernels);
        }
        self.forward_plain(img, txt, temb, cond, |img, txt| {
            self.attn.forward(img, txt, rope, key_mask)
        })
    }

    /// [`Self::forward`] on this device's shard of the image tokens (the whole text), the
    /// attention exchanging heads with the other devices ([`super::sequence_parallel`]).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward_sequence_parallel(
        &self,
        img: &Tensor,
        txt: &Tensor,
        temb: &Tensor,
        rope: &RopeTables,
        key_mask: Option<&KeyMask>,
        comm: &RankComm,
        kernels: &Kernels,
    ) -> Result<(Tensor, Tensor)> {
        let _enter = self.span.enter();
        self.forward_plain(img, txt, temb, None, |img, txt| {
            self.attn
                .forward_sequence_parallel(img, txt, rope, key_mask, comm, kernels)
        })
    }

    /// The block with candle ops, the joint attention done by `attend` (modulated image and
    /// text in, their attention outputs out).
    fn forward_plain(
        &self,
        img: &Tensor,
        txt: &Tensor,
        temb: &Tensor,
        cond: Option<CondModulation>,
        attend: impl FnOnce(&Tensor, &Tensor) -> Result<(Tensor, Tensor)>,
    ) -> Result<(Tensor, Tensor)> {
        let temb = temb.silu()?;
        let (img_attn_mod, img_mlp_mod) = Modulation::pair(&self.img_mod.forward(&temb)?)?;
        let (txt_attn_mod, txt_mlp_mod) = Modulation::pair(&self.txt_mod.forward(&temb)?)?;
        let cond_mods = match cond {
            Some(c) => Some((Modulation::pair(&self.img_mod.forward(&c.temb0.silu()?)?)?, c.noisy)),
            None => None,
        };
        let attn_cond = cond_mods.as_ref().map(|((a, _), n)| (a, *n));
        let mlp_cond = cond_mods.as_ref().map(|((_, m), n)| (m, *n));
        let modulate = |x: &Tensor, m: &Modulation, from: usize, len: usize| m.modulate(&x.narrow(1, from, len)?);

        let (img_attn, txt_attn) = attend(
            &per_segment(img, &img_attn_mod, attn_cond, modulate)?,
            &txt_attn_mod.modulate(txt)?,
        )?;
        let img = per_segment(img, &img_attn_mod, attn_cond, |x, m, from, len| {
            m.gated_residual(&x.narrow(1, from, len)?, &img_attn.narrow(1, from, len)?)
        })?;
        let txt = txt_attn_mod.gated_residual(txt, &txt_attn)?;

        let img_mlp = self
            .img_mlp
            .forward(&per_segment(&img, &img_mlp_mod, mlp_cond, modulate)?)?;
        let img = per_segment(&img, &img_mlp_mod, mlp_cond, |x, m, from, len| {
            m.gated_residual(&x.narrow(1, from, len)?, &img_mlp.narrow(1, from, len)?)
        })?;
        let txt_mlp = self.txt_mlp.forward(&txt_mlp_mod.modulate(&txt)?)?;
        let txt = txt_mlp_mod.gated_residual(&txt, &txt_mlp)?;
        if img.dtype() == DType::F16 {
            // As the reference: keep fp16 activations finite.
            return Ok((img.clamp(-65504f32, 65504f32)?, txt.clamp(-65504f32, 65504f32)?));
        }
        Ok((img, txt))
    }
}

impl TransformerBlock {
    /// Whether the fused CUDA kernels ([`crate::gpu::fused`]) serve this block for `img`: a bf16
    /// run on a GPU of a CUDA build and a width the element-wise kernels take. The attention is
    /// fused too where its shape allows (head dim 128, valid keys a prefix per row).
    fn fused_supported(&self, img: &Tensor) -> bool {
        let dim = img.dim(2).unwrap_or(0);
        crate::gpu::fused::applies_to(img) && dim.is_multiple_of(8) && dim <= crate::gpu::fused::MAX_LN_DIM
    }

    /// [`TransformerBlock::forward`] through the fused kernels: LayerNorm + modulation in one
    /// pass, biases folded into the pass after each GEMM (q/k/v preparation, GELU, gated
    /// residual), fused attention where its shape allows. Same function as the plain path up to bf16 rounding (the
    /// plain path rounds after every op, this one once per kernel).
    #[allow(clippy::too_many_arguments)]
    fn forward_fused(
        &self,
        img: &Tensor,
        txt: &Tensor,
        temb: &Tensor,
        cond: Option<CondModulation>,
        rope: &RopeTables,
        key_mask: Option<&KeyMask>,
        kernels: &Kernels,
    ) -> Result<(Tensor, Tensor)> {
        use crate::gpu::fused::{gated_residual, ln_modulate};
        let temb = temb.silu()?;
        let d = img.dim(2)?;
        // [B, 6D] = (shift1, scale1, gate1, shift2, scale2, gate2); the kernels read column
        // slices of it in place.
        let img_params = self.img_mod.forward(&temb)?.contiguous()?;
        let txt_params = self.txt_mod.forward(&temb)?.contiguous()?;
        let part = |p: &Tensor, i: usize| p.narrow(1, i * d, d);
        // Edit-2511: the condition tokens' own (t = 0) parameters; each kernel then runs once per
        // segment of the image tokens.
        let cond_params = match cond {
            Some(c) => Some((self.img_mod.forward(&c.temb0.silu()?)?.contiguous()?, c.noisy)),
            None => None,
        };
        let cond_params = cond_params.as_ref().map(|(p, n)| (p, *n));
        let img_ln = |x: &Tensor, i: usize| {
            per_segment(x, &img_params, cond_params, |x, p, from, len| {
                ln_modulate(&x.narrow(1, from, len)?, &part(p, i)?, &part(p, i + 1)?, EPS)
            })
        };
        let img_gate = |x: &Tensor, y: &Tensor, bias: &Tensor, i: usize| {
            per_segment(x, &img_params, cond_params, |x, p, from, len| {
                gated_residual(&x.narrow(1, from, len)?, &y.narrow(1, from, len)?, bias, &part(p, i)?)
            })
        };

        let img_in = img_ln(img, 0)?;
        let txt_in = ln_modulate(txt, &part(&txt_params, 0)?, &part(&txt_params, 1)?, EPS)?;
        let kv_len = key_mask
            .and_then(KeyMask::kv_len)
            .filter(|_| self.attn.fused_supported());
        let (img_attn, txt_attn, img_bias, txt_bias) = match kv_len {
            Some(kv_len) => {
                let (i, t) = self.attn.forward_fused(&img_in, &txt_in, rope, kv_len, kernels)?;
                (
                    i,
                    t,
                    bias_of(self.attn.to_out())?.clone(),
                    bias_of(self.attn.to_add_out())?.clone(),
                )
            }
            None => {
                // Other head dims (the tiny test checkpoints) or a mask with holes: the plain
                // attention, whose output projections already carry their biases.
                let (i, t) = self.attn.forward(&img_in, &txt_in, rope, key_mask)?;
                let zeros = Tensor::zeros(d, img.dtype(), img.device())?;
                (i, t, zeros.clone(), zeros)
            }
        };
        let img = img_gate(img, &img_attn, &img_bias, 2)?;
        let txt = gated_residual(txt, &txt_attn, &txt_bias, &part(&txt_params, 2)?)?;

        let img_in = img_ln(&img, 3)?;
        let (img_mlp, img_bias) = self.img_mlp.forward_fused_without_out_bias(&img_in, kernels)?;
        let img = img_gate(&img, &img_mlp, img_bias, 5)?;
        let txt_in = ln_modulate(&txt, &part(&txt_params, 3)?, &part(&txt_params, 4)?, EPS)?;
        let (txt_mlp, txt_bias) = self.txt_mlp.forward_fused_without_out_bias(&txt_in, kernels)?;
        let txt = gated_residual(&txt, &txt_mlp, txt_bias, &part(&txt_params, 5)?)?;
        Ok((img, txt))
    }
}
