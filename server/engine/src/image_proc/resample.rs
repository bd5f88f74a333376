//! Pillow's `Image.resize` for 8-bit RGB and RGBA images with the LANCZOS and BICUBIC filters,
//! reimplemented from its algorithm (Pillow 13 `libImaging/Resample.c`, `Convert.c`) so the
//! pixels match bit for bit:
//!
//! - A separable convolution in two passes, the intermediate stored as clipped u8: horizontal
//!   first (over just the source rows the vertical pass reads), except that Pillow 13 goes
//!   vertical first when the height shrinks by more than twice as many pixels as the width. A
//!   pass whose size does not change is skipped; if neither changes the image is returned as is.
//! - Per output pixel the filter is centred at `(i + 0.5) · scale` in source coordinates and
//!   stretched by the downscale factor (`support · max(scale, 1)`), evaluated in f64 at the
//!   source pixel centres, and normalised to sum 1.
//! - Coefficients become 22-bit fixed point (rounded half away from zero); each sum starts at
//!   `2^21` (rounding) and the result is `sum >> 22` clamped to 0..=255.
//! - RGBA goes through premultiplied alpha: `c·a/255` rounded (`MULDIV255`) before, and
//!   `255·c / a` truncated and clamped after (alpha 0 and 255 left as they are).

/// A Pillow resampling filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// `Image.LANCZOS`: sinc windowed by sinc, support 3. Used by diffusers' VaeImageProcessor.
    Lanczos,
    /// `Image.BICUBIC`: Keys cubic with a = −0.5, support 2.
    Bicubic,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Lanczos => 3.0,
            Filter::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        match self {
            Filter::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
            Filter::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        return 1.0;
    }
    let x = x * std::f64::consts::PI;
    x.sin() / x
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// The fixed-point filter taps of one axis: output `i` reads source pixels
/// `start[i] .. start[i] + len[i]` with weights `taps[i * ksize ..][.. len[i]]`.
struct Coefficients {
    ksize: usize,
    start: Vec<usize>,
    len: Vec<usize>,
    taps: Vec<i32>,
}

impl Coefficients {
    fn new(in_size: usize, out_size: usize, filter: Filter) -> Self {
        // The box is always the whole source here: (0, in_size).
        let scale = in_size as f64 / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = filter.support() * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let inv_filterscale = 1.0 / filterscale;

        let mut start = Vec::with_capacity(out_size);
        let mut len = Vec::with_capacity(out_size);
        let mut taps = vec![0i32; out_size * ksize];
        let mut weights = vec![0f64; ksize];
        for i in 0..out_size {
            let center = (i as f64 + 0.5) * scale;
            // `(int)(v + 0.5)` in C: rounds by truncation toward zero, then clamped to the image.
            let lo = ((center - support + 0.5) as i64).max(0) as usize;
            let hi = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let n = hi.saturating_sub(lo);
            let mut sum = 0.0;
            for (x, w) in weights.iter_mut().enumerate().take(n) {
                *w = filter.weight(((x + lo) as f64 - center + 0.5) * inv_filterscale);
                sum += *w;
            }
            for (x, w) in weights.iter().enumerate().take(n) {
                let w = if sum != 0.0 { w / sum } else { *w };
                let fixed = w * (1u32 << PRECISION_BITS) as f64;
                // C's `(int)(±0.5 + v)`: round half away from zero by truncation.
                taps[i * ksize + x] = if w < 0.0 {
                    (fixed - 0.5) as i32
                } else {
                    (fixed + 0.5) as i32
                };
            }
            start.push(lo);
            len.push(n);
        }
        Self {
            ksize,
            start,
            len,
            taps,
        }
    }

    fn taps(&self, i: usize) -> &[i32] {
        &self.taps[i * self.ksize..i * self.ksize + self.len[i]]
    }
}

/// `sum >> 22` clamped to a byte (Pillow's `clip8`).
fn clip8(sum: i32) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Resamples interleaved 8-bit pixels (`channels` per pixel, rows of `width`) to
/// `out_w × out_h`, as Pillow's `ImagingResample` on an unpremultiplied buffer.
/// Sizes must be positive (checked by the callers).
pub(super) fn resample(
    src: &[u8],
    channels: usize,
    (width, height): (usize, usize),
    (out_w, out_h): (usize, usize),
    filter: Filter,
) -> Vec<u8> {
    debug_assert_eq!(src.len(), width * height * channels);
    let need_horizontal = out_w != width;
    let need_vertical = out_h != height;
    if !need_horizontal && !need_vertical {
        return src.to_vec();
    }
    // Pillow 13.0 runs the vertical pass first when the height shrinks by more than twice as
    // many pixels as the width does (it then reads fewer rows). The pass order changes the
    // rounded intermediate, so it must match. (Not in Pillow's git main of Aug 2026, whose rule
    // differs; established against the installed 13.0.0 on thousands of size pairs.)
    let vertical_first = out_h < height && 2 * (width as i64 - out_w as i64) < (height as i64 - out_h as i64);

    if vertical_first {
        let vertical = Coefficients::new(height, out_h, filter);
        let tmp = vertical_pass(src, channels, width, &vertical, 0);
        if !need_horizontal {
            return tmp;
        }
        let horizontal = Coefficients::new(width, out_w, filter);
        return horizontal_pass(&tmp, channels, width, 0..out_h, &horizontal);
    }

    if !need_horizontal {
        let vertical = Coefficients::new(height, out_h, filter);
        return vertical_pass(src, channels, width, &vertical, 0);
    }
    let horizontal = Coefficients::new(width, out_w, filter);
    if !need_vertical {
        return horizontal_pass(src, channels, width, 0..height, &horizontal);
    }
    // Horizontal first, over just the source rows the vertical pass will read.
    let vertical = Coefficients::new(height, out_h, filter);
    let first = vertical.start[0];
    let last = vertical.start[out_h - 1] + vertical.len[out_h - 1];
    let tmp = horizontal_pass(src, channels, width, first..last, &horizontal);
    vertical_pass(&tmp, channels, out_w, &vertical, first)
}

/// Resamples each of the rows `rows` of `src` (rows of `width` pixels) along x.
fn horizontal_pass(
    src: &[u8],
    channels: usize,
    width: usize,
    rows: std::ops::Range<usize>,
    coeffs: &Coefficients,
) -> Vec<u8> {
    let out_w = coeffs.start.len();
    let mut out = vec![0u8; rows.len() * out_w * channels];
    for (y, out_row) in out.chunks_exact_mut(out_w * channels).enumerate() {
        let in_row = &src[(rows.start + y) * width * channels..][..width * channels];
        for (x, out_px) in out_row.chunks_exact_mut(channels).enumerate() {
            let lo = coeffs.start[x];
            for (c, out) in out_px.iter_mut().enumerate() {
                let mut sum = HALF;
                for (j, k) in coeffs.taps(x).iter().enumerate() {
                    sum += i32::from(in_row[(lo + j) * channels + c]) * k;
                }
                *out = clip8(sum);
            }
        }
    }
    out
}

/// Resamples along y; `src` holds the source rows from `row_offset` on (rows of `width` pixels).
fn vertical_pass(src: &[u8], channels: usize, width: usize, coeffs: &Coefficients, row_offset: usize) -> Vec<u8> {
    let stride = width * channels;
    let mut out = vec![0u8; coeffs.start.len() * stride];
    for (y, out_row) in out.chunks_exact_mut(stride).enumerate() {
        let lo = coeffs.start[y] - row_offset;
        let taps = coeffs.taps(y);
        for (i, out) in out_row.iter_mut().enumerate() {
            let mut sum = HALF;
            for (j, k) in taps.iter().enumerate() {
                sum += i32::from(src[(lo + j) * stride + i]) * k;
            }
            *out = clip8(sum);
        }
    }
    out
}

/// RGBA → premultiplied (Pillow's "RGBa"): `c · a / 255`, rounded.
pub(super) fn premultiply(rgba: &mut [u8]) {
    for px in rgba.chunks_exact_mut(4) {
        let a = u32::from(px[3]);
        for c in &mut px[..3] {
            let t = u32::from(*c) * a + 128;
            *c = (((t >> 8) + t) >> 8) as u8;
        }
    }
}

/// Premultiplied → RGBA: `255 · c / a` truncated and clamped; alpha 0 and 255 pass through.
pub(super) fn unpremultiply(rgba: &mut [u8]) {
    for px in rgba.chunks_exact_mut(4) {
        let a = u32::from(px[3]);
        if a == 0 || a == 255 {
            continue;
        }
        for c in &mut px[..3] {
            *c = ((255 * u32::from(*c)) / a).min(255) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coefficients_sum_to_one_in_fixed_point() {
        for (i, o) in [(100, 37), (37, 100), (640, 640), (1000, 333)] {
            for filter in [Filter::Lanczos, Filter::Bicubic] {
                let c = Coefficients::new(i, o, filter);
                for x in 0..o {
                    let s: i64 = c.taps(x).iter().map(|k| i64::from(*k)).sum();
                    // Each tap rounds by at most half a unit.
                    assert!(
                        (s - (1 << PRECISION_BITS)).abs() <= c.len[x] as i64,
                        "{i}->{o} {filter:?} x={x}: {s}"
                    );
                }
            }
        }
    }

    #[test]
    fn constant_image_stays_constant() {
        let src = vec![77u8; 13 * 9 * 3];
        for filter in [Filter::Lanczos, Filter::Bicubic] {
            let out = resample(&src, 3, (13, 9), (5, 20), filter);
            assert!(out.iter().all(|v| *v == 77), "{filter:?}: {out:?}");
        }
    }

    #[test]
    fn premultiply_round_trip_matches_pillow_arithmetic() {
        // Hand-computed: 200·128/255 = 100.39 → 100; back: 255·100/128 = 199.2 → 199.
        let mut px = [200u8, 255, 0, 128];
        premultiply(&mut px);
        assert_eq!(px, [100, 128, 0, 128]);
        unpremultiply(&mut px);
        assert_eq!(px, [199, 255, 0, 128]);
        // Alpha 0 zeroes colour on the way in and keeps it on the way out.
        let mut px = [9u8, 9, 9, 0];
        premultiply(&mut px);
        unpremultiply(&mut px);
        assert_eq!(px, [0, 0, 0, 0]);
    }
}
