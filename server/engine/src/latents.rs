//! Packing VAE latents into transformer tokens and back.
//!
//! A token is a 2×2 patch of the latent grid with its channels: channel index `c·4 + dy·2 + dx`.
//! Tokens run frame by frame, then row-major over the (h/2, w/2) patch grid:
//! token index `l·(h/2·w/2) + i·(w/2) + j`. This is diffusers' `_pack_latents` /
//! `_unpack_latents` of the Qwen-Image pipelines; `unpack*` is the exact inverse of `pack*`.
//!
//! `h`, `w` are latent sizes (pixels / 8) and must be even.

use candle_core::{Result, Tensor};

fn check_even(h: usize, w: usize, what: &str) -> Result<()> {
    if !h.is_multiple_of(2) || !w.is_multiple_of(2) {
        candle_core::bail!(
            "{what}: latent height and width must be even to form 2×2 patches, got {h}×{w} \
             (image sizes must be multiples of 16 pixels)"
        );
    }
    Ok(())
}

/// `[N, C, h, w]` → `[N, h/2·w/2, 4C]`.
fn pack_frames(x: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    x.reshape((n, c, h / 2, 2, w / 2, 2))?
        .permute((0, 2, 4, 1, 3, 5))?
        .reshape((n, (h / 2) * (w / 2), c * 4))
}

/// `[N, h/2·w/2, 4C]` → `[N, C, h, w]`.
fn unpack_frames(x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (n, _, c4) = x.dims3()?;
    x.reshape((n, h / 2, w / 2, c4 / 4, 2, 2))?
        .permute((0, 3, 1, 4, 2, 5))?
        .reshape((n, c4 / 4, h, w))
}

/// Single-frame latents `[B, C, 1, h, w]` (the VAE's layout; `[B, C, h, w]` is accepted too) →
/// tokens `[B, h/2·w/2, 4C]`.
pub fn pack(latents: &Tensor) -> Result<Tensor> {
    let x = match latents.dims() {
        &[b, c, 1, h, w] => latents.reshape((b, c, h, w))?,
        &[_, _, _, _] => latents.clone(),
        d => candle_core::bail!("pack: expected latents [B, C, 1, h, w] or [B, C, h, w], got {d:?}"),
    };
    let (_, _, h, w) = x.dims4()?;
    check_even(h, w, "pack")?;
    pack_frames(&x)
}

/// Tokens `[B, h/2·w/2, 4C]` → single-frame latents `[B, C, 1, h, w]`.
pub fn unpack(tokens: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    check_even(h, w, "unpack")?;
    let (_, s, c4) = tokens.dims3()?;
    check_tokens(s, c4, 1, h, w, "unpack")?;
    unpack_frames(tokens, h, w)?.unsqueeze(2)
}

/// Layered latents `[B, L, C, h, w]` (frame-major, as the layered pipeline draws its noise) →
/// tokens `[B, L·h/2·w/2, 4C]`.
pub fn pack_layered(latents: &Tensor) -> Result<Tensor> {
    let (b, l, c, h, w) = match latents.dims() {
        &[b, l, c, h, w] => (b, l, c, h, w),
        d => candle_core::bail!("pack_layered: expected latents [B, frames, C, h, w], got {d:?}"),
    };
    check_even(h, w, "pack_layered")?;
    pack_frames(&latents.reshape((b * l, c, h, w))?)?.reshape((b, l * (h / 2) * (w / 2), c * 4))
}

/// Tokens `[B, L·h/2·w/2, 4C]` → layered latents `[B, L, C, h, w]`.
///
/// diffusers' `_unpack_latents` returns this permuted to `(B, C, L, h, w)`.
pub fn unpack_layered(tokens: &Tensor, frames: usize, h: usize, w: usize) -> Result<Tensor> {
    check_even(h, w, "unpack_layered")?;
    let (b, s, c4) = tokens.dims3()?;
    check_tokens(s, c4, frames, h, w, "unpack_layered")?;
    let per_frame = (h / 2) * (w / 2);
    let frames_tokens = tokens.reshape((b * frames, per_frame, c4))?;
    unpack_frames(&frames_tokens, h, w)?.reshape((b, frames, c4 / 4, h, w))
}

fn check_tokens(s: usize, c4: usize, frames: usize, h: usize, w: usize, what: &str) -> Result<()> {
    let expected = frames * (h / 2) * (w / 2);
    if s != expected {
        candle_core::bail!("{what}: {s} tokens, but {frames} frame(s) of {h}×{w} latents make {expected}");
    }
    if !c4.is_multiple_of(4) {
        candle_core::bail!("{what}: {c4} channels per token is not a multiple of 4 (2×2 patches)");
    }
    Ok(())
}
