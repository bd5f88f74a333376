//! True classifier-free guidance: running the conditional and unconditional prompts as one batch,
//! and combining the two velocities.
//!
//! The two prompts usually differ in length. [`pad_and_stack`] pads the shorter one with zero
//! embeddings at the end and masks the padding as attention keys; text RoPE positions depend only
//! on a token's index, so every valid token sees exactly what it would in a separate forward, and
//! the image tokens (the only output used) are unchanged.

use candle_core::{DType, Result, Tensor, D};

/// Stacks `cond` `[B, S_c, D]` and `uncond` `[B, S_u, D]` into `[2B, max(S_c, S_u), D]`
/// (cond rows first), with the matching mask `[2B, S]` (u8, 1 = valid). A missing mask means all
/// tokens are valid.
pub fn pad_and_stack(
    cond: &Tensor,
    cond_mask: Option<&Tensor>,
    uncond: &Tensor,
    uncond_mask: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    let (bc, sc, dc) = cond.dims3()?;
    let (bu, su, du) = uncond.dims3()?;
    if bc != bu || dc != du {
        candle_core::bail!(
            "pad_and_stack: cond embeddings {:?} and uncond embeddings {:?} must share batch and width",
            cond.dims(),
            uncond.dims()
        );
    }
    let len = sc.max(su);
    let (cond, cond_mask) = pad_one(cond, cond_mask, len, "cond")?;
    let (uncond, uncond_mask) = pad_one(uncond, uncond_mask, len, "uncond")?;
    Ok((
        Tensor::cat(&[cond, uncond], 0)?,
        Tensor::cat(&[cond_mask, uncond_mask], 0)?,
    ))
}

/// Pads `x` `[B, S, D]` with zeros to `len` tokens and returns it with its u8 mask `[B, len]`.
fn pad_one(x: &Tensor, mask: Option<&Tensor>, len: usize, which: &str) -> Result<(Tensor, Tensor)> {
    let (b, s, d) = x.dims3()?;
    let mask = match mask {
        Some(m) if m.dims() == [b, s] => m.to_dtype(DType::F32)?.ne(0.0)?,
        Some(m) => candle_core::bail!(
            "pad_and_stack: {which} mask has shape {:?}, expected [{b}, {s}]",
            m.dims()
        ),
        None => Tensor::ones((b, s), DType::U8, x.device())?,
    };
    if s == len {
        return Ok((x.clone(), mask));
    }
    let x = Tensor::cat(&[x.clone(), Tensor::zeros((b, len - s, d), x.dtype(), x.device())?], 1)?;
    let mask = Tensor::cat(&[mask, Tensor::zeros((b, len - s), DType::U8, x.device())?], 1)?;
    Ok((x, mask))
}

/// Splits a batched-CFG output `[2B, …]` back into `(cond, uncond)`.
pub fn split_cond_uncond(x: &Tensor) -> Result<(Tensor, Tensor)> {
    let b2 = x.dim(0)?;
    if b2 % 2 != 0 {
        candle_core::bail!("split_cond_uncond: batch {b2} is odd; expected cond rows then uncond rows");
    }
    Ok((x.narrow(0, 0, b2 / 2)?, x.narrow(0, b2 / 2, b2 / 2)?))
}

/// `v = uncond + scale·(cond − uncond)`; with `normalize`, rescaled per token so its norm over
/// the channel axis equals the conditional velocity's (`cfg_normalize`). Computed in f32.
pub fn combine(cond: &Tensor, uncond: &Tensor, scale: f64, normalize: bool) -> Result<Tensor> {
    if cond.dims() != uncond.dims() {
        candle_core::bail!(
            "cfg combine: cond {:?} and uncond {:?} differ in shape",
            cond.dims(),
            uncond.dims()
        );
    }
    let cond = cond.to_dtype(DType::F32)?;
    let uncond = uncond.to_dtype(DType::F32)?;
    let guided = (&uncond + ((&cond - &uncond)? * scale)?)?;
    if !normalize {
        return Ok(guided);
    }
    let norm = |t: &Tensor| t.sqr()?.sum_keepdim(D::Minus1)?.sqrt();
    guided.broadcast_mul(&norm(&cond)?.broadcast_div(&norm(&guided)?)?)
}
