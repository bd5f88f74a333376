//! Joint text–image attention of a dual-stream block (diffusers `Attention` with
//! `QwenDoubleStreamAttnProcessor2_0`).
//!
//! Each stream has its own q/k/v projections and q/k RMSNorms; the two are concatenated in the
//! order **[text, image]**, rotated, and attend over each other in one softmax. Padded text keys are
//! masked out with an additive −∞ bias, which is what makes batched classifier-free guidance (cond
//! and uncond prompts of different lengths in one batch) equal to separate forwards.

use candle_core::{DType, Result, Tensor, D};
use candle_nn::{Linear, Module, VarBuilder};

use super::norm::RmsNorm;
use super::rope::{apply_rope, RopeTables};

/// Upper bound on the f32 score elements materialised at once (1 GiB); larger attentions are
/// computed in query chunks.
const MAX_SCORE_ELEMENTS: usize = 1 << 28;

#[derive(Debug, Clone)]
pub struct JointAttention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    add_q_proj: Linear,
    add_k_proj: Linear,
    add_v_proj: Linear,
    norm_q: RmsNorm,
    norm_k: RmsNorm,
    norm_added_q: RmsNorm,
    norm_added_k: RmsNorm,
    to_out: Linear,
    to_add_out: Linear,
    heads: usize,
    head_dim: usize,
}

impl JointAttention {
    pub fn new(dim: usize, heads: usize, head_dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let inner = heads * head_dim;
        let lin = |i, o, name: &str| candle_nn::linear(i, o, vb.pp(name));
        Ok(Self {
            to_q: lin(dim, inner, "to_q")?,
            to_k: lin(dim, inner, "to_k")?,
            to_v: lin(dim, inner, "to_v")?,
            add_q_proj: lin(dim, inner, "add_q_proj")?,
            add_k_proj: lin(dim, inner, "add_k_proj")?,
            add_v_proj: lin(dim, inner, "add_v_proj")?,
            norm_q: RmsNorm::new(head_dim, eps, vb.pp("norm_q"))?,
            norm_k: RmsNorm::new(head_dim, eps, vb.pp("norm_k"))?,
            norm_added_q: RmsNorm::new(head_dim, eps, vb.pp("norm_added_q"))?,
            norm_added_k: RmsNorm::new(head_dim, eps, vb.pp("norm_added_k"))?,
            // `to_out` is ModuleList(Linear, Dropout).
            to_out: candle_nn::linear(inner, dim, vb.pp("to_out").pp("0"))?,
            to_add_out: candle_nn::linear(inner, dim, vb.pp("to_add_out"))?,
            heads,
            head_dim,
        })
    }

    /// `[B, S, H·Dh]` → `[B, S, H, Dh]`.
    fn heads_view(&self, x: &Tensor) -> Result<Tensor> {
        let (b, s, _) = x.dims3()?;
        x.reshape((b, s, self.heads, self.head_dim))
    }

    /// `img` `[B, S_img, D]`, `txt` `[B, S_txt, D]` (both already modulated), the joint RoPE tables,
    /// and an optional additive key bias `[B, 1, 1, S_txt + S_img]` (f32, 0 or −∞).
    /// Returns `(img_out, txt_out)`.
    pub fn forward(
        &self,
        img: &Tensor,
        txt: &Tensor,
        rope: &RopeTables,
        key_bias: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        let txt_len = txt.dim(1)?;
        let img_q = self.norm_q.forward(&self.heads_view(&self.to_q.forward(img)?)?)?;
        let img_k = self.norm_k.forward(&self.heads_view(&self.to_k.forward(img)?)?)?;
        let img_v = self.heads_view(&self.to_v.forward(img)?)?;
        let txt_q = self
            .norm_added_q
            .forward(&self.heads_view(&self.add_q_proj.forward(txt)?)?)?;
        let txt_k = self
            .norm_added_k
            .forward(&self.heads_view(&self.add_k_proj.forward(txt)?)?)?;
        let txt_v = self.heads_view(&self.add_v_proj.forward(txt)?)?;

        // [B, S, H, Dh] → [B, H, S_txt + S_img, Dh]
        let joint = |t: &Tensor, i: &Tensor| Tensor::cat(&[t, i], 1)?.transpose(1, 2)?.contiguous();
        let q = apply_rope(&joint(&txt_q, &img_q)?, &rope.cos, &rope.sin)?;
        let k = apply_rope(&joint(&txt_k, &img_k)?, &rope.cos, &rope.sin)?;
        let v = joint(&txt_v, &img_v)?;

        let out = scaled_dot_product_attention(&q, &k, &v, key_bias)?;
        let (b, h, s, dh) = out.dims4()?;
        let out = out.transpose(1, 2)?.reshape((b, s, h * dh))?;
        let txt_out = self.to_add_out.forward(&out.narrow(1, 0, txt_len)?.contiguous()?)?;
        let img_out = self
            .to_out
            .forward(&out.narrow(1, txt_len, s - txt_len)?.contiguous()?)?;
        Ok((img_out, txt_out))
    }
}

/// softmax(q kᵀ / √Dh + bias) v for `[B, H, S, Dh]` inputs.
///
/// Scores and softmax are f32 whatever the input dtype: bf16-rounded scores of magnitude ~20 would
/// be off by up to 0.06 before the exponential, which is noise on long sequences (fused kernels
/// such as flash attention keep them in f32 too, and are the faster choice on CUDA). Queries are
/// processed in chunks so the score matrix stays under [`MAX_SCORE_ELEMENTS`].
pub fn scaled_dot_product_attention(q: &Tensor, k: &Tensor, v: &Tensor, key_bias: Option<&Tensor>) -> Result<Tensor> {
    let (b, h, s_q, dh) = q.dims4()?;
    let s_k = k.dim(2)?;
    let scale = 1.0 / (dh as f64).sqrt();
    let kt = k.to_dtype(DType::F32)?.transpose(2, 3)?.contiguous()?;
    let chunk = (MAX_SCORE_ELEMENTS / (b * h * s_k).max(1)).clamp(1, s_q.max(1));
    let mut outs = Vec::with_capacity(s_q.div_ceil(chunk));
    let mut start = 0;
    while start < s_q {
        let len = chunk.min(s_q - start);
        let q_chunk = q.narrow(2, start, len)?.to_dtype(DType::F32)?.contiguous()?;
        let scores = (q_chunk.matmul(&kt)? * scale)?;
        let scores = match key_bias {
            Some(bias) => scores.broadcast_add(bias)?,
            None => scores,
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(v.dtype())?;
        outs.push(probs.matmul(v)?);
        start += len;
    }
    if outs.len() == 1 {
        return Ok(outs.pop().expect("one chunk"));
    }
    Tensor::cat(&outs, 2)
}

/// The additive key bias for a text mask `[B, S_txt]` (nonzero = valid): 0 for valid text and
/// all image keys, −∞ for padded text. Shape `[B, 1, 1, S_txt + S_img]`, f32.
pub fn key_bias_from_text_mask(txt_mask: &Tensor, img_len: usize) -> Result<Tensor> {
    let (b, s_txt) = txt_mask.dims2()?;
    let valid = txt_mask.to_dtype(DType::F32)?.ne(0.0)?;
    let zeros = Tensor::zeros((b, s_txt), DType::F32, txt_mask.device())?;
    let neg_inf = Tensor::full(f32::NEG_INFINITY, (b, s_txt), txt_mask.device())?;
    let txt_bias = valid.where_cond(&zeros, &neg_inf)?;
    let img_bias = Tensor::zeros((b, img_len), DType::F32, txt_mask.device())?;
    Tensor::cat(&[txt_bias, img_bias], D::Minus1)?.reshape((b, 1, 1, s_txt + img_len))
}
