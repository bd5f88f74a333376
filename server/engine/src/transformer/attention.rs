//! Joint text–image attention of a dual-stream block (diffusers `Attention` with
//! `QwenDoubleStreamAttnProcessor2_0`).
//!
//! Each stream has its own q/k/v projections and q/k RMSNorms; the two are concatenated in the
//! order **[text, image]**, rotated, and attend over each other in one softmax. Padded text keys are
//! left out of each row's attention ([`KeyMask`]), which is what makes batched classifier-free
//! guidance (cond and uncond prompts of different lengths in one batch) equal to separate forwards.

use candle_core::{DType, Result, Tensor};
use candle_nn::{Linear, Module, VarBuilder};

use super::norm::RmsNorm;
use super::rope::{apply_rope, RopeTables};
use super::sequence_parallel::RankComm;

/// Upper bound on the f32 score elements materialised at once (256 MiB; the probabilities take
/// as much again); larger attentions are computed in query chunks. Small enough for the offload
/// mode's VRAM goal, large enough that each chunk's GEMMs fill the GPU.
const MAX_SCORE_ELEMENTS: usize = 1 << 26;

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
    /// and which keys each row may attend to (padded text is left out). Returns `(img_out, txt_out)`.
    pub fn forward(
        &self,
        img: &Tensor,
        txt: &Tensor,
        rope: &RopeTables,
        key_mask: Option<&KeyMask>,
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

        let out = scaled_dot_product_attention(&q, &k, &v, key_mask)?;
        let (b, h, s, dh) = out.dims4()?;
        let out = out.transpose(1, 2)?.reshape((b, s, h * dh))?;
        let txt_out = self.to_add_out.forward(&out.narrow(1, 0, txt_len)?.contiguous()?)?;
        let img_out = self
            .to_out
            .forward(&out.narrow(1, txt_len, s - txt_len)?.contiguous()?)?;
        Ok((img_out, txt_out))
    }
}

impl JointAttention {
    /// [`Self::forward`] with `img` this device's shard of the image tokens (Ulysses; see
    /// [`super::sequence_parallel`]): q/k/v are exchanged so that each device attends over the
    /// whole joint sequence with its share of the heads, and the outputs exchanged back.
    /// `rope` and `key_mask` are the whole sequence's. On CUDA in bf16 with 128-wide heads the
    /// attention itself is the fused flash kernel, else candle's.
    pub(crate) fn forward_sequence_parallel(
        &self,
        img: &Tensor,
        txt: &Tensor,
        rope: &RopeTables,
        key_mask: Option<&KeyMask>,
        comm: &RankComm,
        kernels: &crate::gpu::fused::Kernels,
    ) -> Result<(Tensor, Tensor)> {
        let (ranks, rank) = (comm.ranks(), comm.rank);
        let heads = self.heads / ranks;
        let mine = |x: &Tensor| x.narrow(2, rank * heads, heads);
        let img_q = self.norm_q.forward(&self.heads_view(&self.to_q.forward(img)?)?)?;
        let img_k = self.norm_k.forward(&self.heads_view(&self.to_k.forward(img)?)?)?;
        let img_v = self.heads_view(&self.to_v.forward(img)?)?;
        let txt_q = mine(
            &self
                .norm_added_q
                .forward(&self.heads_view(&self.add_q_proj.forward(txt)?)?)?,
        )?;
        let txt_k = mine(
            &self
                .norm_added_k
                .forward(&self.heads_view(&self.add_k_proj.forward(txt)?)?)?,
        )?;
        let txt_v = mine(&self.heads_view(&self.add_v_proj.forward(txt)?)?)?;

        // My tokens, every device's heads → every device's tokens, my heads: [B, S_img, H/P, Dh].
        let parts = (0..ranks)
            .map(|to| {
                [&img_q, &img_k, &img_v]
                    .iter()
                    .map(|t| t.narrow(2, to * heads, heads)?.contiguous())
                    .collect()
            })
            .collect::<Result<Vec<Vec<Tensor>>>>()?;
        let got = comm.all_to_all(parts)?;
        let whole = |i: usize| Tensor::cat(&got.iter().map(|from| &from[i]).collect::<Vec<_>>(), 1);
        let (img_q, img_k, img_v) = (whole(0)?, whole(1)?, whole(2)?);
        let (txt_len, img_len) = (txt.dim(1)?, img_q.dim(1)?);

        // The attention over [text, image] for my heads; both outputs `[B, H/P, S, Dh]`.
        let kv_len = key_mask.and_then(KeyMask::kv_len);
        let (img_out, txt_out) = match kv_len {
            Some(kv_len) if kernels.fused && self.fused_supported() && img.device().is_cuda() => {
                // The flash kernel's joint order is [image, text]: the tables' rows follow.
                let reorder = |t: &Tensor| Tensor::cat(&[t.narrow(0, txt_len, img_len)?, t.narrow(0, 0, txt_len)?], 0);
                let (cos, sin) = (reorder(&rope.cos)?, reorder(&rope.sin)?);
                let joint = |i: &Tensor, t: &Tensor| Tensor::cat(&[i, t], 1)?.transpose(1, 2)?.contiguous();
                let rotated =
                    |i: &Tensor, t: &Tensor| apply_rope(&joint(i, t)?, &cos, &sin)?.transpose(1, 2)?.contiguous();
                let q = rotated(&img_q, &txt_q)?;
                let k = rotated(&img_k, &txt_k)?;
                let v = joint(&img_v, &txt_v)?.transpose(1, 2)?.contiguous()?;
                let (i, t) = crate::gpu::fused::flash_attention(&q, &k, &v, kv_len, img_len, kernels)?;
                let (b, dh) = (img.dim(0)?, self.head_dim);
                let per_head = |x: Tensor, len: usize| x.reshape((b, len, heads, dh))?.transpose(1, 2);
                (per_head(i, img_len)?, per_head(t, txt_len)?)
            }
            _ => {
                let joint = |t: &Tensor, i: &Tensor| Tensor::cat(&[t, i], 1)?.transpose(1, 2)?.contiguous();
                let q = apply_rope(&joint(&txt_q, &img_q)?, &rope.cos, &rope.sin)?;
                let k = apply_rope(&joint(&txt_k, &img_k)?, &rope.cos, &rope.sin)?;
                let v = joint(&txt_v, &img_v)?;
                let out = scaled_dot_product_attention(&q, &k, &v, key_mask)?;
                (out.narrow(2, txt_len, img_len)?, out.narrow(2, 0, txt_len)?)
            }
        };

        // Back: each device's tokens of my heads to it, and my heads' text rows to every device.
        let txt_out = txt_out.contiguous()?;
        let parts = comm
            .shards
            .iter()
            .map(|shard| {
                Ok(vec![
                    img_out.narrow(2, shard.start, shard.len())?.contiguous()?,
                    txt_out.clone(),
                ])
            })
            .collect::<Result<Vec<Vec<Tensor>>>>()?;
        let got = comm.all_to_all(parts)?;
        // Every device's heads in order: [B, H, S, Dh] → [B, S, H·Dh].
        let all_heads = |i: usize| -> Result<Tensor> {
            let out = Tensor::cat(&got.iter().map(|from| &from[i]).collect::<Vec<_>>(), 1)?;
            let (b, h, s, dh) = out.dims4()?;
            out.transpose(1, 2)?.reshape((b, s, h * dh))
        };
        let img_out = self.to_out.forward(&all_heads(0)?)?;
        let txt_out = self.to_add_out.forward(&all_heads(1)?)?;
        Ok((img_out, txt_out))
    }
}

/// `x` `[B, S, D_in]` times `linear`'s weight, without its bias (the fused path adds biases in
/// the element-wise kernel that follows): one GEMM over all B·S rows.
pub(crate) fn matmul_without_bias(x: &Tensor, linear: &Linear) -> Result<Tensor> {
    let (b, s, d_in) = x.dims3()?;
    let w = linear.weight();
    if !x.is_contiguous() {
        // A row-strided view (one stream's rows of a joint attention output): a batched GEMM
        // reads it in place instead of copying it to flatten the batch.
        return x.broadcast_matmul(&w.t()?);
    }
    let y = x.reshape((b * s, d_in))?.matmul(&w.t()?)?;
    y.reshape((b, s, w.dim(0)?))
}

/// `linear`'s bias; every Linear of the DiT has one.
pub(crate) fn bias_of(linear: &Linear) -> Result<&Tensor> {
    linear
        .bias()
        .ok_or_else(|| candle_core::Error::Msg("fused DiT path: a projection without bias".into()))
}

impl JointAttention {
    /// Whether the fused CUDA kernels cover this attention's shape (head dim 128).
    pub(crate) fn fused_supported(&self) -> bool {
        self.head_dim == crate::gpu::fused::FLASH_HEAD_DIM
    }

    /// The fused CUDA path of [`JointAttention::forward`]: bias-free projections, then one kernel
    /// per q/k/v (bias, RMSNorm, RoPE, joint [image, text] layout), flash attention over the
    /// first `kv_len[b]` keys, and the output projections **without their biases**
    /// (`to_out`'s and `to_add_out`'s, which the caller's gated residual adds). Returns
    /// `(img_out, txt_out)` before bias.
    pub(crate) fn forward_fused(
        &self,
        img: &Tensor,
        txt: &Tensor,
        rope: &RopeTables,
        kv_len: &Tensor,
        kernels: &crate::gpu::fused::Kernels,
    ) -> Result<(Tensor, Tensor)> {
        use crate::gpu::fused::{flash_attention, joint_qkv, HeadNorms};
        let s_img = img.dim(1)?;
        let project = |x: &Tensor, l: &Linear| matmul_without_bias(x, l);
        let q_norms = HeadNorms {
            image: self.norm_q.weight(),
            text: self.norm_added_q.weight(),
            eps: self.norm_q.eps(),
        };
        let k_norms = HeadNorms {
            image: self.norm_k.weight(),
            text: self.norm_added_k.weight(),
            eps: self.norm_k.eps(),
        };
        // One joint buffer from the two streams' projections (`image_proj`, `text_proj`).
        let joint = |image_proj: &Linear, text_proj: &Linear, norms: Option<&HeadNorms>, rope: Option<&RopeTables>| {
            joint_qkv(
                &project(img, image_proj)?,
                &project(txt, text_proj)?,
                bias_of(image_proj)?,
                bias_of(text_proj)?,
                norms,
                rope,
            )
        };
        let q = joint(&self.to_q, &self.add_q_proj, Some(&q_norms), Some(rope))?;
        let k = joint(&self.to_k, &self.add_k_proj, Some(&k_norms), Some(rope))?;
        let v = if kernels.gemm_epilogue {
            // v needs no norm or rotation: both projections, with their biases, go straight
            // into the joint buffer.
            let (b, seq) = (img.dim(0)?, s_img + txt.dim(1)?);
            crate::gpu::gemm_epilogue::joint_linear(
                img,
                self.to_v.weight(),
                bias_of(&self.to_v)?,
                txt,
                self.add_v_proj.weight(),
                bias_of(&self.add_v_proj)?,
            )?
            .reshape((b, seq, self.heads, self.head_dim))?
        } else {
            joint(&self.to_v, &self.add_v_proj, None, None)?
        };
        let (img_attn, txt_attn) = flash_attention(&q, &k, &v, kv_len, s_img, kernels)?;
        Ok((
            matmul_without_bias(&img_attn, &self.to_out)?,
            matmul_without_bias(&txt_attn, &self.to_add_out)?,
        ))
    }

    pub(crate) fn to_out(&self) -> &Linear {
        &self.to_out
    }

    pub(crate) fn to_add_out(&self) -> &Linear {
        &self.to_add_out
    }
}

/// Which keys each batch row may attend to: all of them, or (per row) the indices of its valid
/// keys. Padded text keys are *left out* of the attention rather than masked with a −∞ bias: the
/// two are the same function (exp(−∞) = 0 contributes nothing to the softmax), and leaving them
/// out saves a full read-modify-write pass over the score matrix per block.
#[derive(Debug, Clone)]
pub struct KeyMask {
    /// Per batch row: `None` = every key, `Some(idx)` = these key positions (u32, ascending).
    rows: Vec<Option<Tensor>>,
    /// For the fused kernel's joint order [image, text], where right-padded text makes the valid
    /// keys a prefix: per batch row, `S_img` + its valid text tokens (u32 `[B]` on the device).
    /// `None` when some row's valid text is not a prefix (the plain path handles that).
    kv_len: Option<Tensor>,
}

impl KeyMask {
    /// Every key valid, for `batch` rows of `txt_len` text and `img_len` image tokens.
    pub fn all(batch: usize, txt_len: usize, img_len: usize, device: &candle_core::Device) -> Result<Self> {
        let kv_len = Tensor::from_vec(vec![(txt_len + img_len) as u32; batch], batch, device)?;
        Ok(Self {
            rows: vec![None; batch],
            kv_len: Some(kv_len),
        })
    }

    /// Keys per batch row in the fused kernel's [image, text] order, when that is expressible.
    pub fn kv_len(&self) -> Option<&Tensor> {
        self.kv_len.as_ref()
    }

    /// From a text mask `[B, S_txt]` (nonzero = valid) for joint keys ordered [text, image]:
    /// every image key is valid. Reads the (small) mask to the host once per forward.
    pub fn from_text_mask(txt_mask: &Tensor, img_len: usize) -> Result<Self> {
        let (_, s_txt) = txt_mask.dims2()?;
        let valid = txt_mask
            .to_dtype(DType::F32)?
            .ne(0.0)?
            .to_dtype(DType::U32)?
            .to_vec2::<u32>()?;
        let prefix_lengths: Option<Vec<u32>> = valid
            .iter()
            .map(|row| {
                let n = row.iter().take_while(|&&v| v != 0).count();
                row[n..].iter().all(|&v| v == 0).then_some((img_len + n) as u32)
            })
            .collect();
        let kv_len = prefix_lengths
            .map(|l| {
                let n = l.len();
                Tensor::from_vec(l, n, txt_mask.device())
            })
            .transpose()?;
        let rows = valid
            .iter()
            .map(|row| {
                if row.iter().all(|&v| v != 0) {
                    return Ok(None);
                }
                let idx: Vec<u32> = (0..s_txt as u32)
                    .filter(|&j| row[j as usize] != 0)
                    .chain(s_txt as u32..(s_txt + img_len) as u32)
                    .collect();
                let n = idx.len();
                Tensor::from_vec(idx, n, txt_mask.device()).map(Some)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { rows, kv_len })
    }

    /// From `txt_mask` when there is one, else every key valid.
    pub fn for_text(
        txt_mask: Option<&Tensor>,
        batch: usize,
        txt_len: usize,
        img_len: usize,
        device: &candle_core::Device,
    ) -> Result<Self> {
        match txt_mask {
            Some(m) => Self::from_text_mask(m, img_len),
            None => Self::all(batch, txt_len, img_len, device),
        }
    }

    /// True when no row leaves out any key.
    pub fn is_all(&self) -> bool {
        self.rows.iter().all(Option::is_none)
    }
}

/// softmax(q kᵀ / √Dh) v for `[B, H, S, Dh]` inputs; with a [`KeyMask`], each batch row attends
/// only to its valid keys. Returns `[B, H, S_q, Dh]` in `q`'s dtype.
pub fn scaled_dot_product_attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&KeyMask>) -> Result<Tensor> {
    let mask = match mask {
        Some(m) if !m.is_all() => m,
        _ => return attention_all_keys(q, k, v),
    };
    let b = q.dim(0)?;
    if mask.rows.len() != b {
        candle_core::bail!("attention: key mask has {} rows for a batch of {b}", mask.rows.len());
    }
    let outs = (0..b)
        .map(|i| {
            let (q, k, v) = (q.narrow(0, i, 1)?, k.narrow(0, i, 1)?, v.narrow(0, i, 1)?);
            match &mask.rows[i] {
                None => attention_all_keys(&q, &k, &v),
                Some(idx) => attention_all_keys(&q, &k.index_select(idx, 2)?, &v.index_select(idx, 2)?),
            }
        })
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&outs, 0)
}

/// The unmasked attention, with scores, softmax and the probability-weighted sum in f32 whatever
/// the input dtype: bf16-rounded scores of magnitude ~20 would be off by up to 0.06 before the
/// exponential, which is noise on long sequences (fused kernels such as flash attention keep them
/// in f32 too). Queries go in chunks so the score matrix stays under [`MAX_SCORE_ELEMENTS`].
///
/// On CUDA in bf16 runs the f32 GEMMs use TF32 ([`crate::gpu::configure_matmul`]): k and v are
/// upcast bf16, exact in TF32, so only the scaled queries and the probabilities are rounded
/// (to 10 mantissa bits, finer than bf16's 7).
fn attention_all_keys(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let (b, h, s_q, dh) = q.dims4()?;
    let s_k = k.dim(2)?;
    let scale = 1.0 / (dh as f64).sqrt();
    // kᵀ as a transposed view: the GEMM reads it in place, no copy.
    let k_t = k.to_dtype(DType::F32)?.contiguous()?.t()?;
    let v = v.to_dtype(DType::F32)?.contiguous()?;
    let chunk = (MAX_SCORE_ELEMENTS / (b * h * s_k).max(1)).clamp(1, s_q.max(1));
    let mut outs = Vec::with_capacity(s_q.div_ceil(chunk));
    let mut start = 0;
    while start < s_q {
        let len = chunk.min(s_q - start);
        // The scale goes on the queries (len × Dh) instead of the scores (len × S_k).
        let q_chunk = q.narrow(2, start, len)?.to_dtype(DType::F32)?.affine(scale, 0.0)?;
        let probs = crate::gpu::softmax::softmax_last_dim(&q_chunk.matmul(&k_t)?)?;
        outs.push(probs.matmul(&v)?.to_dtype(q.dtype())?);
        start += len;
    }
    if outs.len() == 1 {
        return Ok(outs.pop().expect("one chunk"));
    }
    Tensor::cat(&outs, 2)
}
