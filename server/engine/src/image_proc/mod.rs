//! Pixels in and out of the VAE, as the diffusers pipelines handle them (spec §5, §9.1, §10.1):
//!
//! - **Sizes**: [`calculate_dimensions`] (target area and aspect ratio → multiples of 32), the
//!   Layered resolution bucket and the Edit-2509 condition/VAE sizes.
//! - **Resizing**: Pillow's LANCZOS (the VAE path) and BICUBIC, bit-exact ([`resample`]).
//! - **Tensors**: `u8 → 2·(u/255) − 1` in `[1, C, H, W]` (VaeImageProcessor.preprocess), and back
//!   with `round(clamp(x/2 + 0.5, 0, 1)·255)`, rounding half to even as numpy does
//!   (VaeImageProcessor.postprocess → numpy_to_pil).
//! - **PNG** encode/decode, and Pillow's RGB ⇄ RGBA conversions.

mod resample;

pub use resample::Filter;

use candle_core::{DType, Device, Tensor};
use image::{ImageBuffer, Pixel, Rgb, RgbImage, Rgba, RgbaImage};

use crate::{Error, Result};

/// The Edit-2509 pipeline's target areas (`CONDITION_IMAGE_SIZE`, `VAE_IMAGE_SIZE`).
pub const EDIT_CONDITION_AREA: u32 = 384 * 384;
pub const EDIT_VAE_AREA: u32 = 1024 * 1024;

/// The resolutions QwenImageLayeredPipeline accepts.
pub const LAYERED_RESOLUTIONS: [u32; 2] = [640, 1024];

/// diffusers' `calculate_dimensions(target_area, ratio)` → `(width, height)`: the size of area
/// ≈ `target_area` and aspect `ratio = width / height`, each side rounded to a multiple of 32.
///
/// Both sides come from the unrounded width (`height = width / ratio`) and are rounded with
/// Python's `round`, which sends halves to the even neighbour.
pub fn calculate_dimensions(target_area: f64, ratio: f64) -> (u32, u32) {
    let width = (target_area * ratio).sqrt();
    let height = width / ratio;
    let snap = |v: f64| ((v / 32.0).round_ties_even() * 32.0) as u32;
    (snap(width), snap(height))
}

/// The size QwenImageLayeredPipeline works at for a `src_w × src_h` input and `resolution` 640 or
/// 1024 (§9 step 1): [`calculate_dimensions`] of `resolution²`, floored to a multiple of 16 (a
/// no-op after the multiples of 32; the pipeline resizes to the unfloored size).
pub fn layered_dimensions(resolution: u32, src_w: u32, src_h: u32) -> Result<(u32, u32)> {
    if !LAYERED_RESOLUTIONS.contains(&resolution) {
        return Err(Error::InvalidInput(format!(
            "resolution must be 640 or 1024, got {resolution}"
        )));
    }
    let (w, h) = dimensions_for(f64::from(resolution * resolution), src_w, src_h)?;
    Ok((w / 16 * 16, h / 16 * 16))
}

/// Edit-2509's condition-image size for the vision-language encoder (≈384², before the
/// processor's own multiple-of-28 resize).
pub fn edit_condition_dimensions(src_w: u32, src_h: u32) -> Result<(u32, u32)> {
    dimensions_for(f64::from(EDIT_CONDITION_AREA), src_w, src_h)
}

/// Edit-2509's VAE-image size (≈1 MP whatever the output size), also its default output size.
pub fn edit_vae_dimensions(src_w: u32, src_h: u32) -> Result<(u32, u32)> {
    dimensions_for(f64::from(EDIT_VAE_AREA), src_w, src_h)
}

fn dimensions_for(area: f64, src_w: u32, src_h: u32) -> Result<(u32, u32)> {
    if src_w == 0 || src_h == 0 {
        return Err(Error::InvalidInput(format!("empty image ({src_w}×{src_h})")));
    }
    let (w, h) = calculate_dimensions(area, f64::from(src_w) / f64::from(src_h));
    if w == 0 || h == 0 {
        return Err(Error::InvalidInput(format!(
            "image {src_w}×{src_h} is too elongated: its working size would be {w}×{h}"
        )));
    }
    Ok((w, h))
}

/// Pillow `Image.resize((width, height), filter)` of an RGBA image: resampled with premultiplied
/// alpha, as Pillow does for mode RGBA. The same size returns a copy.
pub fn resize_rgba(img: &RgbaImage, width: u32, height: u32, filter: Filter) -> Result<RgbaImage> {
    check_resize(img.dimensions(), width, height)?;
    if img.dimensions() == (width, height) {
        return Ok(img.clone());
    }
    let mut src = img.as_raw().clone();
    resample::premultiply(&mut src);
    let mut out = resample::resample(&src, 4, dims(img), (width as usize, height as usize), filter);
    resample::unpremultiply(&mut out);
    Ok(RgbaImage::from_raw(width, height, out).expect("resample returns width·height·4 bytes"))
}

/// Pillow `Image.resize((width, height), filter)` of an RGB image. The same size returns a copy.
pub fn resize_rgb(img: &RgbImage, width: u32, height: u32, filter: Filter) -> Result<RgbImage> {
    check_resize(img.dimensions(), width, height)?;
    if img.dimensions() == (width, height) {
        return Ok(img.clone());
    }
    let out = resample::resample(img.as_raw(), 3, dims(img), (width as usize, height as usize), filter);
    Ok(RgbImage::from_raw(width, height, out).expect("resample returns width·height·3 bytes"))
}

/// Pillow LANCZOS resize of RGBA (diffusers' VaeImageProcessor.resize on the Layered input).
pub fn resize_lanczos(img: &RgbaImage, width: u32, height: u32) -> Result<RgbaImage> {
    resize_rgba(img, width, height, Filter::Lanczos)
}

/// Pillow LANCZOS resize of RGB (the Edit-2509 VAE and condition images).
pub fn resize_lanczos_rgb(img: &RgbImage, width: u32, height: u32) -> Result<RgbImage> {
    resize_rgb(img, width, height, Filter::Lanczos)
}

/// Pillow BICUBIC resize of RGB (Qwen2-VL's PIL image-processor backend).
pub fn resize_bicubic(img: &RgbImage, width: u32, height: u32) -> Result<RgbImage> {
    resize_rgb(img, width, height, Filter::Bicubic)
}

fn check_resize((w, h): (u32, u32), width: u32, height: u32) -> Result<()> {
    if w == 0 || h == 0 || width == 0 || height == 0 {
        return Err(Error::Image(format!(
            "cannot resize {w}×{h} to {width}×{height}: sizes must be positive"
        )));
    }
    Ok(())
}

fn dims<P: Pixel>(img: &ImageBuffer<P, Vec<P::Subpixel>>) -> (usize, usize) {
    (img.width() as usize, img.height() as usize)
}

/// Pixels to the VAE's input: `[1, C, H, W]` f32 with `x = 2·(u/255) − 1`, C = 3 for RGB and 4
/// for RGBA, computed in f32 in the reference's order (`u/255`, then `2·v − 1`).
pub fn to_tensor<P>(img: &ImageBuffer<P, Vec<u8>>, device: &Device) -> Result<Tensor>
where
    P: Pixel<Subpixel = u8>,
{
    let (w, h) = dims(img);
    let c = usize::from(P::CHANNEL_COUNT);
    let mut planar = vec![0f32; c * h * w];
    for (i, px) in img.as_raw().chunks_exact(c).enumerate() {
        for (ch, u) in px.iter().enumerate() {
            planar[ch * h * w + i] = 2.0 * (f32::from(*u) / 255.0) - 1.0;
        }
    }
    Ok(Tensor::from_vec(planar, (1, c, h, w), &Device::Cpu)?.to_device(device)?)
}

/// One decoded RGBA image `[4, H, W]` (any float dtype or device) to pixels.
pub fn tensor_to_rgba8(t: &Tensor) -> Result<RgbaImage> {
    let (w, h, data) = tensor_to_u8(t, 4)?;
    Ok(ImageBuffer::<Rgba<u8>, _>::from_raw(w, h, data).expect("w·h·4 bytes"))
}

/// One decoded RGB image `[3, H, W]` to pixels.
pub fn tensor_to_rgb8(t: &Tensor) -> Result<RgbImage> {
    let (w, h, data) = tensor_to_u8(t, 3)?;
    Ok(ImageBuffer::<Rgb<u8>, _>::from_raw(w, h, data).expect("w·h·3 bytes"))
}

/// `round(clamp(x·0.5 + 0.5, 0, 1) · 255)` per element, interleaved, in f32 as the reference.
fn tensor_to_u8(t: &Tensor, channels: usize) -> Result<(u32, u32, Vec<u8>)> {
    let (c, h, w) = t.dims3().map_err(|_| {
        Error::InvalidInput(format!(
            "expected one image [{channels}, H, W], got shape {:?}",
            t.dims()
        ))
    })?;
    if c != channels {
        return Err(Error::InvalidInput(format!(
            "expected {channels} channels, got {c} (shape {:?})",
            t.dims()
        )));
    }
    let planar = t
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let mut out = vec![0u8; c * h * w];
    for (i, px) in out.chunks_exact_mut(c).enumerate() {
        for (ch, u) in px.iter_mut().enumerate() {
            let v = (planar[ch * h * w + i] * 0.5 + 0.5).clamp(0.0, 1.0);
            *u = (v * 255.0).round_ties_even() as u8;
        }
    }
    Ok((w as u32, h as u32, out))
}

/// Decodes an image file (PNG, JPEG, WebP) as RGBA, like Pillow's `.convert("RGBA")`: RGB gets
/// alpha 255, grey is replicated.
pub fn decode_rgba(bytes: &[u8]) -> Result<RgbaImage> {
    Ok(decode(bytes)?.to_rgba8())
}

/// Decodes an image file as RGB, like Pillow's `.convert("RGB")`: alpha is dropped, not composited.
pub fn decode_rgb(bytes: &[u8]) -> Result<RgbImage> {
    Ok(decode(bytes)?.to_rgb8())
}

fn decode(bytes: &[u8]) -> Result<image::DynamicImage> {
    image::load_from_memory(bytes).map_err(|e| Error::Image(format!("cannot decode the image: {e}")))
}

/// Pillow `RGBA → RGB`: drops alpha.
pub fn rgba_to_rgb(img: &RgbaImage) -> RgbImage {
    image::DynamicImage::ImageRgba8(img.clone()).to_rgb8()
}

/// Pillow `RGB → RGBA`: alpha 255 (the official Layered app feeds `.convert("RGB").convert("RGBA")`).
pub fn rgb_to_rgba(img: &RgbImage) -> RgbaImage {
    image::DynamicImage::ImageRgb8(img.clone()).to_rgba8()
}
