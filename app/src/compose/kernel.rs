//! The per-pixel loop of compositing, over one tile at a time.
//!
//! The accumulator holds premultiplied RGBA in f32 (colour and alpha in [0, 1]); layers are
//! straight-alpha RGBA8, premultiplied on the fly. [`compose`] is the one loop: it starts from a
//! cached composite (or transparency), puts any number of layers over it and then a cached
//! composite of what lies above, keeping each pixel in registers throughout, and writes either
//! the accumulator or the finished straight-alpha bytes. It exists twice: portable (the server,
//! the CLI, native tests) and with `wasm32` `simd128` intrinsics (one pixel per f32x4, four pixels
//! per 16-byte load), used when the WASM bundle is built with `+simd128` (`.cargo/config.toml`).
//! Both do the same f32 operations in the same order (no fused multiply-add on either side), so
//! they give bit-identical results; the app's speed test checks that in the browser.

/// A layer's constants: `k = opacity / 255` turns an alpha byte into the effective alpha, and
/// `k2 = k / 255` turns `alpha byte × colour byte` into a premultiplied colour in [0, 1].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scale {
    pub k: f32,
    pub k2: f32,
}

impl Scale {
    /// `None` for an opacity of 0 (or NaN): the layer adds nothing.
    pub fn new(opacity: f32) -> Option<Self> {
        let opacity = if opacity.is_nan() { 0.0 } else { opacity.clamp(0.0, 1.0) };
        let k = opacity / 255.0;
        (k > 0.0).then_some(Self { k, k2: k / 255.0 })
    }
}

/// Where [`compose`] writes.
pub enum Dst<'a> {
    /// The premultiplied accumulator (a cache).
    Acc(&'a mut [f32]),
    /// Straight-alpha RGBA8, rounded to nearest (an alpha of 0 gives transparent black).
    Out(&'a mut [u8]),
}

/// For each pixel: `acc = below` (or transparent), then for each layer `a = αs·k`,
/// `acc = (Cs·αs·k2, a) + acc·(1 − a)`, then `acc = above + acc·(1 − α_above)`; written to `dst`.
/// Every slice covers the same pixels.
pub fn compose(below: Option<&[f32]>, layers: &[(&[u8], Scale)], above: Option<&[f32]>, dst: Dst<'_>) {
    let len = match &dst {
        Dst::Acc(a) => a.len(),
        Dst::Out(o) => o.len(),
    };
    assert!(
        below.is_none_or(|b| b.len() == len)
            && above.is_none_or(|a| a.len() == len)
            && layers.iter().all(|(l, _)| l.len() == len),
        "compose: slices of different lengths"
    );
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    let (done, dst) = {
        let mut dst = dst;
        (simd::compose(below, layers, above, &mut dst, len), dst)
    };
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    let done = 0;
    if done == len {
        return;
    }
    // The pixels the SIMD loop left (or all of them).
    let tail_layers: Vec<(&[u8], Scale)>;
    let layers = if done == 0 {
        layers
    } else {
        tail_layers = layers.iter().map(|(l, s)| (&l[done..], *s)).collect();
        &tail_layers
    };
    match dst {
        Dst::Acc(acc) => compose_portable(
            below.map(|b| &b[done..]),
            layers,
            above.map(|a| &a[done..]),
            &mut acc[done..],
            None,
        ),
        Dst::Out(out) => {
            // A tile's accumulator fits on the stack; a whole image (a read-back) does not.
            let mut small = [0f32; super::TILE * 4];
            let mut large = Vec::new();
            let acc = if len - done <= small.len() {
                &mut small[..len - done]
            } else {
                large.resize(len - done, 0.0);
                &mut large[..]
            };
            compose_portable(
                below.map(|b| &b[done..]),
                layers,
                above.map(|a| &a[done..]),
                acc,
                Some(&mut out[done..]),
            );
        }
    }
}

/// Un-premultiplies `acc` into straight-alpha RGBA8.
pub fn finish(acc: &[f32], out: &mut [u8]) {
    compose(Some(acc), &[], None, Dst::Out(out));
}

/// The portable loop: the accumulator is `acc` (filled from `below` or zeros); when `out` is
/// given it is finished into it.
pub fn compose_portable(
    below: Option<&[f32]>,
    layers: &[(&[u8], Scale)],
    above: Option<&[f32]>,
    acc: &mut [f32],
    out: Option<&mut [u8]>,
) {
    match below {
        Some(b) => acc.copy_from_slice(b),
        None => acc.fill(0.0),
    }
    for (src, s) in layers {
        for (d, p) in acc.chunks_exact_mut(4).zip(src.chunks_exact(4)) {
            let sa = f32::from(p[3]);
            let m = sa * s.k2;
            let a = sa * s.k;
            let keep = 1.0 - a;
            d[0] = f32::from(p[0]) * m + d[0] * keep;
            d[1] = f32::from(p[1]) * m + d[1] * keep;
            d[2] = f32::from(p[2]) * m + d[2] * keep;
            d[3] = a + d[3] * keep;
        }
    }
    if let Some(top) = above {
        for (d, t) in acc.chunks_exact_mut(4).zip(top.chunks_exact(4)) {
            let keep = 1.0 - t[3];
            d[0] = t[0] + d[0] * keep;
            d[1] = t[1] + d[1] * keep;
            d[2] = t[2] + d[2] * keep;
            d[3] = t[3] + d[3] * keep;
        }
    }
    let Some(out) = out else { return };
    for (px, d) in out.chunks_exact_mut(4).zip(acc.chunks_exact(4)) {
        let a = d[3];
        if a > 0.0 {
            let inv = 255.0 / a;
            px[0] = to_u8(d[0] * inv);
            px[1] = to_u8(d[1] * inv);
            px[2] = to_u8(d[2] * inv);
            px[3] = to_u8(a * 255.0);
        } else {
            px.copy_from_slice(&[0; 4]);
        }
    }
}

/// Rounds half up and saturates (NaN gives 0), as the SIMD path's `trunc_sat` and narrowing do.
#[inline(always)]
fn to_u8(v: f32) -> u8 {
    (v + 0.5) as u8
}

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod simd {
    use super::{Dst, Scale};
    use core::arch::wasm32::*;

    /// One layer's pixel `c` (four u32 lanes) over the accumulator `acc`.
    #[inline(always)]
    fn over(acc: v128, c: v128, k1: v128, k0: v128, one: v128) -> v128 {
        let c = f32x4_convert_u32x4(c);
        let sa = i32x4_shuffle::<3, 3, 3, 3>(c, c);
        // Lanes 0–2: αs·k2 (+ 0, exact); lane 3: αs·0 + k = k.
        let premul = f32x4_mul(c, f32x4_add(f32x4_mul(sa, k1), k0));
        let keep = f32x4_sub(one, i32x4_shuffle::<3, 3, 3, 3>(premul, premul));
        f32x4_add(premul, f32x4_mul(acc, keep))
    }

    /// `top` (premultiplied) over `acc`.
    #[inline(always)]
    fn under(acc: v128, top: v128, one: v128) -> v128 {
        let keep = f32x4_sub(one, i32x4_shuffle::<3, 3, 3, 3>(top, top));
        f32x4_add(top, f32x4_mul(acc, keep))
    }

    /// Colour · 255/α and alpha · 255, rounded, as i32 lanes. α = 0 gives 0·∞ = NaN, which
    /// saturates to 0: transparent black, as the portable branch writes.
    #[inline(always)]
    fn finish(v: v128, c255: v128, half: v128) -> v128 {
        let inv = f32x4_div(c255, i32x4_shuffle::<3, 3, 3, 3>(v, v));
        let scale = i32x4_shuffle::<0, 1, 2, 7>(inv, c255);
        i32x4_trunc_sat_f32x4(f32x4_add(f32x4_mul(v, scale), half))
    }

    /// The loop over whole groups of four pixels; returns how many floats (or bytes) it did.
    /// The caller checked that every slice has `len` elements.
    #[inline]
    pub fn compose(
        below: Option<&[f32]>,
        layers: &[(&[u8], Scale)],
        above: Option<&[f32]>,
        dst: &mut Dst<'_>,
        len: usize,
    ) -> usize {
        let one = f32x4_splat(1.0);
        let c255 = f32x4_splat(255.0);
        let half = f32x4_splat(0.5);
        let consts: Vec<(*const u8, v128, v128)> = layers
            .iter()
            .map(|(l, s)| (l.as_ptr(), f32x4(s.k2, s.k2, s.k2, 0.0), f32x4(0.0, 0.0, 0.0, s.k)))
            .collect();
        let (acc_out, byte_out) = match dst {
            Dst::Acc(a) => (a.as_mut_ptr(), core::ptr::null_mut()),
            Dst::Out(o) => (core::ptr::null_mut(), o.as_mut_ptr()),
        };
        let groups = len / 16;
        for g in 0..groups {
            let o = 16 * g;
            // SAFETY: group g covers elements o..o+16 of every slice, all `len` long (checked by
            // the caller); wasm allows unaligned v128 loads and stores.
            unsafe {
                let mut acc = match below {
                    Some(b) => {
                        let p = b.as_ptr().add(o);
                        [
                            v128_load(p.cast()),
                            v128_load(p.add(4).cast()),
                            v128_load(p.add(8).cast()),
                            v128_load(p.add(12).cast()),
                        ]
                    }
                    None => [f32x4_splat(0.0); 4],
                };
                for (src, k1, k0) in &consts {
                    let bytes = v128_load(src.add(o).cast());
                    let lo = u16x8_extend_low_u8x16(bytes);
                    let hi = u16x8_extend_high_u8x16(bytes);
                    acc[0] = over(acc[0], u32x4_extend_low_u16x8(lo), *k1, *k0, one);
                    acc[1] = over(acc[1], u32x4_extend_high_u16x8(lo), *k1, *k0, one);
                    acc[2] = over(acc[2], u32x4_extend_low_u16x8(hi), *k1, *k0, one);
                    acc[3] = over(acc[3], u32x4_extend_high_u16x8(hi), *k1, *k0, one);
                }
                if let Some(a) = above {
                    let p = a.as_ptr().add(o);
                    for (i, acc) in acc.iter_mut().enumerate() {
                        *acc = under(*acc, v128_load(p.add(4 * i).cast()), one);
                    }
                }
                if byte_out.is_null() {
                    let p = acc_out.add(o);
                    for (i, acc) in acc.iter().enumerate() {
                        v128_store(p.add(4 * i).cast(), *acc);
                    }
                } else {
                    let q = acc.map(|v| finish(v, c255, half));
                    let bytes = u8x16_narrow_i16x8(i16x8_narrow_i32x4(q[0], q[1]), i16x8_narrow_i32x4(q[2], q[3]));
                    v128_store(byte_out.add(o).cast(), bytes);
                }
            }
        }
        groups * 16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_opacity_and_full_alpha_replace_exactly() {
        // 255 · (1/255) is exactly 1.0 in f32, so an opaque pixel leaves nothing below it; the
        // compositor's shortcuts rely on it.
        let s = Scale::new(1.0).unwrap();
        assert_eq!(255.0 * s.k, 1.0);
        let below = [0.3, 0.2, 0.1, 0.5];
        let mut acc = [0f32; 4];
        compose(Some(&below), &[(&[10, 20, 30, 255], s)], None, Dst::Acc(&mut acc));
        assert_eq!(acc[3], 1.0);
        let mut out = [0u8; 4];
        finish(&acc, &mut out);
        assert_eq!(out, [10, 20, 30, 255]);
        assert_eq!(Scale::new(0.0), None);
        assert_eq!(Scale::new(f32::NAN), None);
    }

    #[test]
    fn finish_rounds_half_up_and_clears_transparent_pixels() {
        let mut out = [9u8; 8];
        finish(&[0.5, 0.25, 0.0, 0.5, 0.7, 0.7, 0.7, 0.0], &mut out);
        assert_eq!(out, [255, 128, 0, 128, 0, 0, 0, 0]);
    }

    #[test]
    fn one_fused_pass_equals_the_steps_one_by_one() {
        // below, two layers, above: at once, or layer by layer through the accumulator.
        let px = 37;
        let bytes = |seed: usize| {
            (0..px * 4)
                .map(|i| ((i * 97 + seed * 31) % 256) as u8)
                .collect::<Vec<_>>()
        };
        let (l1, l2) = (bytes(1), bytes(2));
        let (s1, s2) = (Scale::new(0.8).unwrap(), Scale::new(1.0).unwrap());
        let mut below = vec![0f32; px * 4];
        compose(None, &[(&bytes(3), s2)], None, Dst::Acc(&mut below));
        let mut above = vec![0f32; px * 4];
        compose(None, &[(&bytes(4), s1)], None, Dst::Acc(&mut above));
        let mut fused = vec![0u8; px * 4];
        compose(
            Some(&below),
            &[(&l1, s1), (&l2, s2)],
            Some(&above),
            Dst::Out(&mut fused),
        );
        let mut acc = below.clone();
        for (l, s) in [(&l1, s1), (&l2, s2)] {
            let start = acc.clone();
            compose(Some(&start), &[(l, s)], None, Dst::Acc(&mut acc));
        }
        let start = acc.clone();
        compose(Some(&start), &[], Some(&above), Dst::Acc(&mut acc));
        let mut steps = vec![0u8; px * 4];
        finish(&acc, &mut steps);
        assert_eq!(fused, steps);
    }
}
