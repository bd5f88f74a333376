//! The Qwen2-VL image processor (`processor/preprocessor_config.json`, `Qwen2VLImageProcessor`) as
//! transformers 5.24 runs it for the pipelines: image → `pixel_values` `[gh·gw, 3·2·14·14]` and its
//! grid `(1, gh, gw)`.
//!
//! 1. **RGB**: an RGBA image is composited over white (Pillow's `alpha_composite`, then the alpha
//!    dropped: transformers' `convert_to_rgb`), not just stripped of its alpha.
//! 2. **Size**: [`smart_resize`] rounds each side to a multiple of 28 (patch 14 × merge 2) and
//!    keeps the area within `[min_pixels, max_pixels]`.
//! 3. **Resize**: transformers 5 uses the torchvision backend, i.e. PyTorch's antialiased bicubic
//!    on `uint8` ([`resize_bicubic_antialias`]), not Pillow's BICUBIC (they differ by up to 9
//!    levels on sharp edges). Skipped when the size does not change.
//! 4. **Normalise**: `(x − 255·mean) / (255·std)` in f32 (rescale and CLIP normalisation fused,
//!    as the torchvision backend does).
//! 5. **Patchify**: rows in 2×2 merge-block order (block row, block col, row in block, col in
//!    block); each row is channel-major `[3][T][14][14]` with the still frame repeated over T = 2.

use candle_core::{DType, Device, Tensor};
use image::{RgbImage, RgbaImage};
use serde::Deserialize;

use crate::weights::ModelDir;
use crate::{Error, Result};

/// `processor/preprocessor_config.json` (HF keys; defaults are Qwen2-VL's class defaults).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ImageProcessorConfig {
    #[serde(default)]
    pub min_pixels: Option<u64>,
    #[serde(default)]
    pub max_pixels: Option<u64>,
    /// transformers 5 spelling of min/max pixels (`shortest_edge` / `longest_edge`).
    #[serde(default)]
    pub size: Option<SizeConfig>,
    #[serde(default = "default_patch_size")]
    pub patch_size: usize,
    #[serde(default = "default_temporal_patch_size")]
    pub temporal_patch_size: usize,
    #[serde(default = "default_merge_size")]
    pub merge_size: usize,
    #[serde(default = "default_image_mean")]
    pub image_mean: [f32; 3],
    #[serde(default = "default_image_std")]
    pub image_std: [f32; 3],
    #[serde(default = "default_rescale_factor")]
    pub rescale_factor: f64,
    /// Pillow filter id; only 3 (BICUBIC) is supported.
    #[serde(default = "default_resample")]
    pub resample: u32,
    #[serde(default = "yes")]
    pub do_resize: bool,
    #[serde(default = "yes")]
    pub do_rescale: bool,
    #[serde(default = "yes")]
    pub do_normalize: bool,
    #[serde(default = "yes")]
    pub do_convert_rgb: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SizeConfig {
    #[serde(default)]
    pub shortest_edge: Option<u64>,
    #[serde(default)]
    pub longest_edge: Option<u64>,
}

/// One preprocessed image.
#[derive(Debug, Clone)]
pub struct ProcessedImage {
    /// `[gh·gw, 3·T·P·P]` f32, rows in merge-block order.
    pub pixel_values: Tensor,
    /// `(t, gh, gw)` in patches (t = 1 for a still image).
    pub grid_thw: (usize, usize, usize),
}

impl Default for ImageProcessorConfig {
    /// Qwen2.5-VL's `preprocessor_config.json` (spec §2).
    fn default() -> Self {
        Self {
            min_pixels: Some(3136),
            max_pixels: Some(12_845_056),
            size: None,
            patch_size: default_patch_size(),
            temporal_patch_size: default_temporal_patch_size(),
            merge_size: default_merge_size(),
            image_mean: default_image_mean(),
            image_std: default_image_std(),
            rescale_factor: default_rescale_factor(),
            resample: default_resample(),
            do_resize: true,
            do_rescale: true,
            do_normalize: true,
            do_convert_rgb: true,
        }
    }
}

impl ImageProcessorConfig {
    /// `processor/preprocessor_config.json` of a checkpoint, or the Qwen2.5-VL defaults when the
    /// checkpoint has no `processor/` folder.
    pub fn load(model: &ModelDir) -> Result<Self> {
        let cfg: Self = if model
            .component_dir("processor")
            .join("preprocessor_config.json")
            .is_file()
        {
            model.read_json("processor", "preprocessor_config.json")?
        } else {
            tracing::warn!("no processor/preprocessor_config.json: using Qwen2.5-VL's image processor defaults");
            Self::default()
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<()> {
        if self.resample != 3 {
            return Err(Error::InvalidInput(format!(
                "image processor resample {} is not supported (only 3 = BICUBIC)",
                self.resample
            )));
        }
        if !self.do_resize || !self.do_rescale || !self.do_normalize {
            return Err(Error::InvalidInput(
                "image processor with do_resize/do_rescale/do_normalize off is not supported".into(),
            ));
        }
        if self.patch_size == 0 || self.merge_size == 0 || self.temporal_patch_size == 0 {
            return Err(Error::InvalidInput(format!(
                "image processor sizes must be positive: patch {}, merge {}, temporal {}",
                self.patch_size, self.merge_size, self.temporal_patch_size
            )));
        }
        if self.min_pixels() > self.max_pixels() {
            return Err(Error::InvalidInput(format!(
                "image processor min_pixels {} is above max_pixels {}",
                self.min_pixels(),
                self.max_pixels()
            )));
        }
        Ok(())
    }

    /// `size.shortest_edge` (what transformers 5 reads), else `min_pixels`, else 56².
    pub fn min_pixels(&self) -> u64 {
        self.size
            .as_ref()
            .and_then(|s| s.shortest_edge)
            .or(self.min_pixels)
            .unwrap_or(56 * 56)
    }

    /// `size.longest_edge`, else `max_pixels`, else 28²·1280.
    pub fn max_pixels(&self) -> u64 {
        self.size
            .as_ref()
            .and_then(|s| s.longest_edge)
            .or(self.max_pixels)
            .unwrap_or(28 * 28 * 1280)
    }

    /// Sides are rounded to multiples of this (28).
    pub fn factor(&self) -> usize {
        self.patch_size * self.merge_size
    }

    /// Width of a `pixel_values` row (3·2·14·14 = 1176).
    pub fn patch_dim(&self) -> usize {
        3 * self.temporal_patch_size * self.patch_size * self.patch_size
    }

    /// The size `(width, height)` an image of `width × height` is resized to.
    pub fn target_size(&self, width: u32, height: u32) -> Result<(u32, u32)> {
        let (h, w) = smart_resize(
            height,
            width,
            self.factor() as u32,
            self.min_pixels(),
            self.max_pixels(),
        )?;
        Ok((w, h))
    }

    /// The RGB image after `smart_resize` and the torchvision resize: the exact pixels behind
    /// `pixel_values`.
    pub fn resize(&self, image: &RgbImage) -> Result<RgbImage> {
        let (w, h) = self.target_size(image.width(), image.height())?;
        resize_bicubic_antialias(image, w, h)
    }

    /// `pixel_values` and grid of an RGB image.
    pub fn preprocess(&self, image: &RgbImage, device: &Device) -> Result<ProcessedImage> {
        let resized = self.resize(image)?;
        self.patchify(&resized, device)
    }

    /// `pixel_values` and grid of an RGBA image (composited over white first).
    pub fn preprocess_rgba(&self, image: &RgbaImage, device: &Device) -> Result<ProcessedImage> {
        self.preprocess(&composite_over_white(image), device)
    }

    /// Normalises and patchifies an image already at its processed size (sides multiples of 28).
    pub fn patchify(&self, resized: &RgbImage, device: &Device) -> Result<ProcessedImage> {
        let (p, m, t) = (self.patch_size, self.merge_size, self.temporal_patch_size);
        let (w, h) = (resized.width() as usize, resized.height() as usize);
        if w % (p * m) != 0 || h % (p * m) != 0 || w == 0 || h == 0 {
            return Err(Error::InvalidInput(format!(
                "an image of {w}×{h} cannot be cut into {p}-pixel patches merged {m}×{m}: sides must be positive multiples of {}",
                p * m
            )));
        }
        let (gh, gw) = (h / p, w / p);
        // Fused rescale + normalise, in f32 as the torchvision backend: (x − 255·mean) / (255·std).
        let scale = (1.0 / self.rescale_factor) as f32;
        let mean = self.image_mean.map(|v| v * scale);
        let std = self.image_std.map(|v| v * scale);
        let px = resized.as_raw();
        let dim = self.patch_dim();
        let mut out = Vec::with_capacity(gh * gw * dim);
        for bi in 0..gh / m {
            for bj in 0..gw / m {
                for di in 0..m {
                    for dj in 0..m {
                        let (row0, col0) = ((bi * m + di) * p, (bj * m + dj) * p);
                        for c in 0..3 {
                            for _ in 0..t {
                                for y in 0..p {
                                    let line = ((row0 + y) * w + col0) * 3 + c;
                                    for x in 0..p {
                                        out.push((f32::from(px[line + 3 * x]) - mean[c]) / std[c]);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        let pixel_values = Tensor::from_vec(out, (gh * gw, dim), device)?;
        Ok(ProcessedImage {
            pixel_values,
            grid_thw: (1, gh, gw),
        })
    }
}

impl ProcessedImage {
    /// Merged tokens (`<|image_pad|>` copies) this image becomes: `t·gh·gw / merge²`.
    pub fn num_tokens(&self, merge_size: usize) -> usize {
        let (t, h, w) = self.grid_thw;
        t * h * w / (merge_size * merge_size)
    }

    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        Ok(Self {
            pixel_values: self.pixel_values.to_dtype(dtype)?,
            grid_thw: self.grid_thw,
        })
    }
}

/// transformers' `smart_resize(height, width, factor, min_pixels, max_pixels)` → `(height, width)`:
/// each side rounded (half to even, as Python's `round`) to a multiple of `factor`; if the area
/// leaves `[min_pixels, max_pixels]`, both sides are scaled by the area ratio and floored (too
/// big) or ceiled (too small) to multiples of `factor`.
pub fn smart_resize(height: u32, width: u32, factor: u32, min_pixels: u64, max_pixels: u64) -> Result<(u32, u32)> {
    if height == 0 || width == 0 || factor == 0 {
        return Err(Error::InvalidInput(format!(
            "cannot resize a {width}×{height} image to multiples of {factor}"
        )));
    }
    let (h, w, f) = (f64::from(height), f64::from(width), f64::from(factor));
    if h.max(w) / h.min(w) > 200.0 {
        return Err(Error::InvalidInput(format!(
            "absolute aspect ratio must be smaller than 200, got {} ({width}×{height})",
            h.max(w) / h.min(w)
        )));
    }
    let mut h_bar = (h / f).round_ties_even() * f;
    let mut w_bar = (w / f).round_ties_even() * f;
    if h_bar * w_bar > max_pixels as f64 {
        let beta = (h * w / max_pixels as f64).sqrt();
        h_bar = f.max((h / beta / f).floor() * f);
        w_bar = f.max((w / beta / f).floor() * f);
    } else if h_bar * w_bar < min_pixels as f64 {
        let beta = (min_pixels as f64 / (h * w)).sqrt();
        h_bar = (h * beta / f).ceil() * f;
        w_bar = (w * beta / f).ceil() * f;
    }
    Ok((h_bar as u32, w_bar as u32))
}

/// Pillow's `Image.alpha_composite(white, image).convert("RGB")`, bit-exact: what transformers'
/// `convert_to_rgb` does with an image that has alpha.
pub fn composite_over_white(image: &RgbaImage) -> RgbImage {
    // Pillow's AlphaComposite.c with an opaque white destination: 7-bit fixed-point blend
    // coefficients and its shift-based division by 255.
    const PRECISION_BITS: u32 = 7;
    let div255 = |a: u32| ((a >> 8) + a) >> 8;
    let (dst, dst_a) = (255u32, 255u32);
    let mut out = RgbImage::new(image.width(), image.height());
    for (o, p) in out.pixels_mut().zip(image.pixels()) {
        let a = u32::from(p[3]);
        if a == 0 {
            o.0 = [255; 3];
            continue;
        }
        let out_a255 = a * 255 + dst_a * (255 - a);
        let coef1 = a * 255 * 255 * (1 << PRECISION_BITS) / out_a255;
        let coef2 = 255 * (1 << PRECISION_BITS) - coef1;
        for c in 0..3 {
            let t = u32::from(p[c]) * coef1 + dst * coef2 + (0x80 << PRECISION_BITS);
            o[c] = (div255(t) >> PRECISION_BITS) as u8;
        }
    }
    out
}

/// PyTorch's antialiased bicubic resize of a `uint8` image (`F.interpolate(mode="bicubic",
/// antialias=True)` on CPU, what torchvision's `resize` runs for uint8), bit-exact:
///
/// - separable: width first (skipped if unchanged), then height, the intermediate stored as u8;
/// - per output index the Keys cubic (a = −0.5) is centred at `(i + 0.5)·scale`, stretched by
///   the downscale factor (`support = 2·max(scale, 1)`), evaluated in f64 and normalised;
/// - weights become int16 at the largest precision where the axis's biggest weight still fits,
///   each sum starts at half an LSB, and the result is `sum >> precision` clamped to 0..=255.
pub fn resize_bicubic_antialias(image: &RgbImage, width: u32, height: u32) -> Result<RgbImage> {
    if width == 0 || height == 0 || image.width() == 0 || image.height() == 0 {
        return Err(Error::InvalidInput(format!(
            "cannot resize a {}×{} image to {width}×{height}",
            image.width(),
            image.height()
        )));
    }
    let (in_w, in_h) = (image.width() as usize, image.height() as usize);
    let (out_w, out_h) = (width as usize, height as usize);
    let mut pixels = image.as_raw().clone();
    let mut cur_w = in_w;
    if out_w != in_w {
        let axis = AxisWeights::new(in_w, out_w);
        let mut next = vec![0u8; out_w * in_h * 3];
        for y in 0..in_h {
            let src = &pixels[y * in_w * 3..(y + 1) * in_w * 3];
            let dst = &mut next[y * out_w * 3..(y + 1) * out_w * 3];
            for (x, taps) in axis.taps.iter().enumerate() {
                for c in 0..3 {
                    dst[x * 3 + c] = axis.apply(taps, |i| src[i * 3 + c]);
                }
            }
        }
        pixels = next;
        cur_w = out_w;
    }
    if out_h != in_h {
        let axis = AxisWeights::new(in_h, out_h);
        let row = cur_w * 3;
        let mut next = vec![0u8; out_h * row];
        for (y, taps) in axis.taps.iter().enumerate() {
            for k in 0..row {
                next[y * row + k] = axis.apply(taps, |i| pixels[i * row + k]);
            }
        }
        pixels = next;
    }
    RgbImage::from_raw(width, height, pixels)
        .ok_or_else(|| Error::InvalidInput(format!("resize to {width}×{height} produced a wrong buffer")))
}

/// One axis of [`resize_bicubic_antialias`]: per output index, the first source index and the
/// int16 weights, and the fixed-point precision shared by the axis.
struct AxisWeights {
    taps: Vec<(usize, Vec<i32>)>,
    precision: u32,
}

impl AxisWeights {
    fn new(in_size: usize, out_size: usize) -> Self {
        let scale = in_size as f64 / out_size as f64;
        let support = if scale >= 1.0 { 2.0 * scale } else { 2.0 };
        let max_taps = support.ceil() as i64 * 2 + 1;
        let invscale = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
        let mut real = Vec::with_capacity(out_size);
        let mut wt_max = 0f64;
        for i in 0..out_size {
            let center = scale * (i as f64 + 0.5);
            // `as i64` truncates toward zero like the C++ casts.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xsize = (((center + support + 0.5) as i64).min(in_size as i64) - xmin).clamp(0, max_taps);
            let mut w: Vec<f64> = (0..xsize)
                .map(|j| keys_cubic((j as f64 + xmin as f64 - center + 0.5) * invscale))
                .collect();
            let total: f64 = w.iter().fold(0.0, |s, v| s + v);
            if total != 0.0 {
                for v in &mut w {
                    *v /= total;
                    wt_max = wt_max.max(*v);
                }
            }
            real.push((xmin as usize, w));
        }
        // The largest precision (< 22 bits) where 2·max weight still fits in int16.
        let mut precision = 0u32;
        while precision < 22 {
            let next = (0.5 + wt_max * f64::from(1u32 << (precision + 1))) as i64;
            if next >= 1 << 15 {
                break;
            }
            precision += 1;
        }
        let taps = real
            .into_iter()
            .map(|(xmin, w)| {
                let w = w
                    .iter()
                    .map(|&v| {
                        let v = v * f64::from(1u32 << precision);
                        // Rounded half away from zero, then stored as int16.
                        (if v < 0.0 { (v - 0.5) as i32 } else { (v + 0.5) as i32 }) as i16 as i32
                    })
                    .collect();
                (xmin, w)
            })
            .collect();
        Self { taps, precision }
    }

    fn apply(&self, (xmin, weights): &(usize, Vec<i32>), src: impl Fn(usize) -> u8) -> u8 {
        let mut acc: i32 = 1 << (self.precision - 1);
        for (j, &w) in weights.iter().enumerate() {
            acc += i32::from(src(xmin + j)) * w;
        }
        (acc >> self.precision).clamp(0, 255) as u8
    }
}

/// PyTorch's `HelperInterpCubic::aa_filter` with a = −0.5 (Keys), in its evaluation order.
fn keys_cubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
    } else {
        0.0
    }
}

fn yes() -> bool {
    true
}
fn default_patch_size() -> usize {
    14
}
fn default_temporal_patch_size() -> usize {
    2
}
fn default_merge_size() -> usize {
    2
}
fn default_image_mean() -> [f32; 3] {
    [0.48145466, 0.4578275, 0.40821073]
}
// The values as the config files write them; parsed to f32 as `torch.tensor` does.
#[allow(clippy::excessive_precision)]
fn default_image_std() -> [f32; 3] {
    [0.26862954, 0.26130258, 0.27577711]
}
fn default_rescale_factor() -> f64 {
    1.0 / 255.0
}
fn default_resample() -> u32 {
    3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smart_resize_rounds_to_28_and_keeps_the_area_in_range() {
        let (min, max) = (3136, 12_845_056);
        assert_eq!(smart_resize(320, 480, 28, min, max).unwrap(), (308, 476));
        assert_eq!(smart_resize(10, 10, 28, min, max).unwrap(), (56, 56));
        assert_eq!(smart_resize(5000, 6000, 28, min, max).unwrap(), (3248, 3920));
        assert!(smart_resize(1, 300, 28, min, max).is_err());
        assert!(smart_resize(0, 3, 28, min, max).is_err());
    }

    #[test]
    fn composite_over_white_blends_and_drops_alpha() {
        let img = RgbaImage::from_raw(3, 1, vec![10, 20, 30, 0, 10, 20, 30, 255, 0, 0, 0, 128]).unwrap();
        let rgb = composite_over_white(&img);
        assert_eq!(rgb.as_raw(), &[255, 255, 255, 10, 20, 30, 127, 127, 127]);
    }

    #[test]
    fn resize_is_identity_at_the_same_size_and_preserves_flat_colour() {
        let img = RgbImage::from_fn(30, 20, |x, y| image::Rgb([x as u8 * 7, y as u8 * 11, 200]));
        assert_eq!(resize_bicubic_antialias(&img, 30, 20).unwrap(), img);
        let flat = RgbImage::from_pixel(50, 33, image::Rgb([17, 128, 250]));
        let small = resize_bicubic_antialias(&flat, 28, 14).unwrap();
        assert!(small.pixels().all(|p| p.0 == [17, 128, 250]));
        let big = resize_bicubic_antialias(&flat, 84, 56).unwrap();
        assert!(big.pixels().all(|p| p.0 == [17, 128, 250]));
    }

    #[test]
    fn patchify_orders_rows_in_merge_blocks() {
        // Each 14×14 patch filled with its own grey level: row r of pixel_values must hold the
        // patch at (2·bi + di, 2·bj + dj).
        let cfg = ImageProcessorConfig::default();
        let (gh, gw) = (2, 4);
        let img = RgbImage::from_fn(gw as u32 * 14, gh as u32 * 14, |x, y| {
            let level = (y / 14) as u8 * 10 + (x / 14) as u8;
            image::Rgb([level; 3])
        });
        let out = cfg.patchify(&img, &Device::Cpu).unwrap();
        assert_eq!(out.grid_thw, (1, 2, 4));
        assert_eq!(out.pixel_values.dims(), &[8, 1176]);
        let rows = out.pixel_values.to_vec2::<f32>().unwrap();
        let expect_patch = [(0, 0), (0, 1), (1, 0), (1, 1), (0, 2), (0, 3), (1, 2), (1, 3)];
        for (r, &(pi, pj)) in expect_patch.iter().enumerate() {
            let level = (pi * 10 + pj) as f32;
            let want = (level - 255.0 * cfg.image_mean[0]) / (255.0 * cfg.image_std[0]);
            assert!((rows[r][0] - want).abs() < 1e-5, "row {r}");
            assert!((rows[r][14 * 14 * 2 - 1] - want).abs() < 1e-5, "row {r}, channel 0 end");
        }
        assert!(cfg.patchify(&RgbImage::new(30, 28), &Device::Cpu).is_err());
    }
}
