//! Yardsticks for the fast paths. [`composite`]: the compositor as it was before issue 24: every
//! layer over the whole image (no shortcuts; the old compositor's shortcuts were bit-identical to
//! this), with that version's formulas (`a/255`, `1/a · 255`, round half away from zero). The
//! tests and the app's speed test check that today's paths stay within 1/255 of it.

use super::kernel::{self, Scale};
use super::{check_sizes, ComposeError, LayerPixels};

/// Composites `layers` (bottom first) into `out` (straight-alpha RGBA8) as the old compositor did.
pub fn composite(width: u32, height: u32, layers: &[LayerPixels<'_>], out: &mut [u8]) -> Result<(), ComposeError> {
    check_sizes(width, height, layers.iter().map(|l| l.rgba), out)?;
    let mut acc = vec![0f32; out.len()];
    for layer in layers {
        let opacity = layer.opacity.clamp(0.0, 1.0) / 255.0;
        if opacity == 0.0 || opacity.is_nan() {
            continue;
        }
        for (dst, src) in acc.chunks_exact_mut(4).zip(layer.rgba.chunks_exact(4)) {
            let a = f32::from(src[3]) * opacity;
            let keep = 1.0 - a;
            let a255 = a / 255.0;
            dst[0] = f32::from(src[0]) * a255 + dst[0] * keep;
            dst[1] = f32::from(src[1]) * a255 + dst[1] * keep;
            dst[2] = f32::from(src[2]) * a255 + dst[2] * keep;
            dst[3] = a + dst[3] * keep;
        }
    }
    let to_u8 = |v: f32| v.round().clamp(0.0, 255.0) as u8;
    for (px, p) in out.chunks_exact_mut(4).zip(acc.chunks_exact(4)) {
        if p[3] <= 0.0 {
            px.copy_from_slice(&[0; 4]);
        } else {
            let inv = 1.0 / p[3];
            px.copy_from_slice(&[
                to_u8(p[0] * inv * 255.0),
                to_u8(p[1] * inv * 255.0),
                to_u8(p[2] * inv * 255.0),
                to_u8(p[3] * 255.0),
            ]);
        }
    }
    Ok(())
}

/// Today's formulas the plain way: every layer over the whole image with the portable kernels
/// (no tiles, shortcuts or SIMD). The compositors must equal it bit for bit.
pub fn portable(width: u32, height: u32, layers: &[LayerPixels<'_>], out: &mut [u8]) -> Result<(), ComposeError> {
    check_sizes(width, height, layers.iter().map(|l| l.rgba), out)?;
    let layers: Vec<(&[u8], Scale)> = layers
        .iter()
        .filter_map(|l| Some((l.rgba, Scale::new(l.opacity)?)))
        .collect();
    let mut acc = vec![0f32; out.len()];
    kernel::compose_portable(None, &layers, None, &mut acc, Some(out));
    Ok(())
}

/// The largest difference between two images, per channel, in steps of 1/255.
pub fn max_diff(a: &[u8], b: &[u8]) -> u8 {
    assert_eq!(a.len(), b.len(), "images of different sizes");
    a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).max().unwrap_or(0)
}
