//! Editing one RGBA layer with Qwen-Image-Edit-2509, which only sees and makes RGB.
//!
//! The official flow (`src/tool/edit_rgba_image.py` of Qwen-Image-Layered, spec §10) composites the
//! layer over solid green, edits the RGB image, and cuts the result out again with a matting model
//! (RMBG-2.0, non-commercial licence). Here:
//! 1. the layer is composited over a **key colour**: the official green (30, 215, 96) unless the
//!    layer's own colours come close to it, in which case the candidate farthest from them is used
//!    (an object drawn on a background of its own colour is invisible to the edit model, and could
//!    not be keyed out again);
//! 2. the composite is edited (output ≈1 MP) and resized back to the layer's size (LANCZOS);
//! 3. alpha: [`AlphaMode::KeepOriginal`] (default) puts the edited colours under the layer's
//!    **original alpha**, so holes stay holes and soft edges keep their exact coverage;
//!    [`AlphaMode::Rekey`] derives alpha from each pixel's distance to the key colour, for edits
//!    that change the shape. No matting model.
//! 4. colours of partly transparent pixels are **un-mixed** from the key:
//!    `F = (C − (1 − a)·K) / a`, the colour that, composited at coverage `a` over the key, gives
//!    the edited pixel `C`; without it soft edges keep a fringe of the key colour.
//!    Fully transparent pixels get RGB 0.

use image::{Rgb, RgbImage, Rgba, RgbaImage};

use crate::image_proc;
use crate::pipeline::edit::{EditOptions, EditOutput, EditPipeline};
use crate::pipeline::Progress;
use crate::{Error, Result};

/// The official tool's background colour.
pub const OFFICIAL_KEY_COLOR: [u8; 3] = [30, 215, 96];

/// Key colours to choose from, the official green first (it is kept whenever it is far enough
/// from the layer): saturated hues far apart from each other and from skin and sky tones.
pub const KEY_CANDIDATES: [[u8; 3]; 4] = [OFFICIAL_KEY_COLOR, [230, 30, 200], [30, 60, 230], [240, 140, 20]];

/// RGB distance from the key the layer's colours must keep for the official green to be used.
const KEY_MIN_SEPARATION: f32 = 120.0;
/// The layer's colours are summarised by the distance of their closest 0.5 % to a candidate, so
/// a few stray pixels do not decide the key.
const KEY_NEAR_FRACTION: f32 = 0.005;
/// Pixels with at least this alpha count as the layer's colours when choosing the key.
const KEY_SAMPLE_MIN_ALPHA: u8 = 64;

/// Rekeying: RGB distance to the key up to which a pixel is background (alpha 0) …
const REKEY_TOLERANCE: f32 = 40.0;
/// … and over which alpha ramps linearly to 255 (absorbs the edit model's drift from the exact
/// key colour).
const REKEY_SOFTNESS: f32 = 60.0;
/// Edge refinement: window radius searched for background and for the pure foreground colour …
const REKEY_EDGE_RADIUS: i64 = 3;
/// … which must lie within ≈18° of the pixel's direction from the key (cosine).
const REKEY_MIN_ALIGNMENT: f32 = 0.95;

/// Where the edited layer's alpha comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AlphaMode {
    /// The layer's original alpha (the edit recolours / retextures within its shape).
    #[default]
    KeepOriginal,
    /// Alpha keyed from the edited image's distance to the key colour (the edit may change the
    /// shape).
    Rekey,
}

/// One layer edit's parameters.
#[derive(Debug, Clone, Default)]
pub struct LayerEditOptions {
    /// The edit run (steps, CFG, seed…); the output size defaults to ≈1 MP and is resized back.
    pub edit: EditOptions,
    pub alpha: AlphaMode,
    /// `None` = chosen from the layer's colours ([`choose_key_color`]).
    pub key_color: Option<[u8; 3]>,
}

/// The edited layer (the input layer's size), the key colour used, and the edit run.
#[derive(Debug)]
pub struct LayerEditOutput {
    pub layer: RgbaImage,
    pub key_color: [u8; 3],
    pub edit: EditOutput,
}

/// Edits `layer` by `instruction` with the Edit-2509 pipeline.
pub fn edit_layer(
    pipe: &mut EditPipeline,
    layer: &RgbaImage,
    instruction: &str,
    options: &LayerEditOptions,
    progress: &dyn Progress,
) -> Result<LayerEditOutput> {
    let mut run = None;
    let (edited, key_color) = edit_layer_with(layer, options, |composite| {
        let out = pipe.edit(std::slice::from_ref(composite), instruction, &options.edit, progress)?;
        let image = out.image.clone();
        run = Some(out);
        Ok(image)
    })?;
    let edit = run.ok_or_else(|| Error::InvalidInput("the layer edit did not run".into()))?;
    Ok(LayerEditOutput {
        layer: edited,
        key_color,
        edit,
    })
}

/// The layer-edit flow around any RGB editor: `edit` gets the layer composited over the key colour
/// and returns the edited image (any size); the result is the edited layer at the layer's size,
/// with the key colour used.
pub fn edit_layer_with(
    layer: &RgbaImage,
    options: &LayerEditOptions,
    edit: impl FnOnce(&RgbImage) -> Result<RgbImage>,
) -> Result<(RgbaImage, [u8; 3])> {
    let (w, h) = layer.dimensions();
    if w == 0 || h == 0 {
        return Err(Error::InvalidInput(format!("the layer is empty ({w}×{h})")));
    }
    if options.alpha == AlphaMode::KeepOriginal && layer.pixels().all(|p| p.0[3] == 0) {
        return Err(Error::InvalidInput(
            "the layer is fully transparent, so keeping its alpha would hide any edit; re-key the alpha instead".into(),
        ));
    }
    let key = options.key_color.unwrap_or_else(|| choose_key_color(layer));
    let edited = edit(&composite_over_key(layer, key))?;
    Ok((restore_layer(layer, &edited, key, options.alpha)?, key))
}

/// The official green, unless the layer's own (mostly opaque) colours come within
/// `KEY_MIN_SEPARATION` of it; then the candidate whose nearest layer colours are farthest.
pub fn choose_key_color(layer: &RgbaImage) -> [u8; 3] {
    let colours: Vec<[u8; 3]> = layer
        .pixels()
        .filter(|p| p.0[3] >= KEY_SAMPLE_MIN_ALPHA)
        .map(|p| [p.0[0], p.0[1], p.0[2]])
        .collect();
    if colours.is_empty() {
        return OFFICIAL_KEY_COLOR;
    }
    let near_distance = |key: [u8; 3]| {
        let mut d: Vec<f32> = colours.iter().map(|c| distance(*c, key)).collect();
        let k = ((d.len() as f32 * KEY_NEAR_FRACTION) as usize).min(d.len() - 1);
        *d.select_nth_unstable_by(k, f32::total_cmp).1
    };
    if near_distance(OFFICIAL_KEY_COLOR) >= KEY_MIN_SEPARATION {
        return OFFICIAL_KEY_COLOR;
    }
    KEY_CANDIDATES
        .iter()
        .map(|&k| (k, near_distance(k)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map_or(OFFICIAL_KEY_COLOR, |(k, _)| k)
}

/// `alpha_composite` of the layer over an opaque `key` background, as RGB.
pub fn composite_over_key(layer: &RgbaImage, key: [u8; 3]) -> RgbImage {
    let mut out = RgbImage::new(layer.width(), layer.height());
    for (o, p) in out.pixels_mut().zip(layer.pixels()) {
        let a = u32::from(p.0[3]);
        let mix = |f: u8, k: u8| ((u32::from(f) * a + u32::from(k) * (255 - a) + 127) / 255) as u8;
        *o = Rgb([mix(p.0[0], key[0]), mix(p.0[1], key[1]), mix(p.0[2], key[2])]);
    }
    out
}

/// The edited RGB image (any size; resized to the layer's with LANCZOS) back to an RGBA layer:
/// alpha from `mode`, colours un-mixed from the key, RGB 0 where alpha is 0.
pub fn restore_layer(layer: &RgbaImage, edited: &RgbImage, key: [u8; 3], mode: AlphaMode) -> Result<RgbaImage> {
    let (w, h) = layer.dimensions();
    let edited = image_proc::resize_lanczos_rgb(edited, w, h)?;
    let alpha: Vec<u8> = match mode {
        AlphaMode::KeepOriginal => layer.pixels().map(|p| p.0[3]).collect(),
        AlphaMode::Rekey => key_alpha(&edited, key),
    };
    let mut out = RgbaImage::new(w, h);
    for ((o, c), a) in out.pixels_mut().zip(edited.pixels()).zip(alpha) {
        *o = unmix(c.0, key, a);
    }
    Ok(out)
}

/// Alpha keyed from `img`'s colours (row-major, one per pixel).
///
/// A soft threshold on the distance `d` to the key: background up to `REKEY_TOLERANCE`, opaque
/// from `REKEY_TOLERANCE + REKEY_SOFTNESS`, a linear ramp between. That ramp knows nothing of
/// the foreground colour, so it overstates the coverage of anti-aliased edges; at the cut-out's
/// edges (pixels with background within `REKEY_EDGE_RADIUS`), a pixel `C` is instead taken as a
/// mix `K + a·(F − K)` with the nearby pure foreground colour `F`: the opaque pixel farthest
/// from the key in nearly the same direction (cosine ≥ `REKEY_MIN_ALIGNMENT`; the pixel itself
/// qualifies), and `a` is the projection of `C − K` onto `F − K`.
pub fn key_alpha(img: &RgbImage, key: [u8; 3]) -> Vec<u8> {
    let (w, h) = (i64::from(img.width()), i64::from(img.height()));
    let offsets: Vec<[f32; 3]> = img
        .pixels()
        .map(|p| std::array::from_fn(|c| f32::from(p.0[c]) - f32::from(key[c])))
        .collect();
    let norm = |v: &[f32; 3]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let dist: Vec<f32> = offsets.iter().map(norm).collect();
    let opaque_from = REKEY_TOLERANCE + REKEY_SOFTNESS;
    let ramp = |d: f32| ((d - REKEY_TOLERANCE) / REKEY_SOFTNESS).clamp(0.0, 1.0);
    let mut alpha = Vec::with_capacity(dist.len());
    for y in 0..h {
        for x in 0..w {
            let i = (y * w + x) as usize;
            let (c, d) = (offsets[i], dist[i]);
            if d <= REKEY_TOLERANCE {
                alpha.push(0);
                continue;
            }
            let mut near_background = false;
            let mut pure: Option<usize> = None;
            for qy in (y - REKEY_EDGE_RADIUS).max(0)..(y + REKEY_EDGE_RADIUS + 1).min(h) {
                for qx in (x - REKEY_EDGE_RADIUS).max(0)..(x + REKEY_EDGE_RADIUS + 1).min(w) {
                    let q = (qy * w + qx) as usize;
                    let dq = dist[q];
                    near_background |= dq <= REKEY_TOLERANCE;
                    let aligned = dot(&c, &offsets[q]) >= REKEY_MIN_ALIGNMENT * d * dq;
                    if dq >= opaque_from && aligned && pure.is_none_or(|p| dq > dist[p]) {
                        pure = Some(q);
                    }
                }
            }
            let a = match pure {
                Some(q) if near_background => (dot(&c, &offsets[q]) / (dist[q] * dist[q])).clamp(0.0, 1.0),
                _ => ramp(d),
            };
            alpha.push((a * 255.0).round() as u8);
        }
    }
    alpha
}

fn dot(a: &[f32; 3], b: &[f32; 3]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The foreground colour that gives `c` when composited at `alpha` over `key`.
fn unmix(c: [u8; 3], key: [u8; 3], alpha: u8) -> Rgba<u8> {
    if alpha == 0 {
        return Rgba([0, 0, 0, 0]);
    }
    let a = f32::from(alpha) / 255.0;
    let f = |c: u8, k: u8| {
        ((f32::from(c) - (1.0 - a) * f32::from(k)) / a)
            .round()
            .clamp(0.0, 255.0) as u8
    };
    Rgba([f(c[0], key[0]), f(c[1], key[1]), f(c[2], key[2]), alpha])
}

fn distance(a: [u8; 3], b: [u8; 3]) -> f32 {
    a.iter()
        .zip(&b)
        .map(|(x, y)| (f32::from(*x) - f32::from(*y)).powi(2))
        .sum::<f32>()
        .sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use test_support::layer_with_holes;

    #[test]
    fn keeping_alpha_preserves_holes_and_soft_edges_exactly() {
        let layer = layer_with_holes();
        let options = LayerEditOptions::default();
        let mut seen = None;
        // A stand-in edit: the composite unchanged (at the same size, so no resampling).
        let (out, key) = edit_layer_with(&layer, &options, |c| {
            seen = Some(c.clone());
            Ok(c.clone())
        })
        .unwrap();
        assert_eq!(key, OFFICIAL_KEY_COLOR, "a blue-ish layer keeps the official green");
        assert_eq!(
            seen.unwrap().get_pixel(2, 2).0,
            OFFICIAL_KEY_COLOR,
            "holes show the key"
        );
        assert_eq!(out.dimensions(), layer.dimensions());
        for (o, l) in out.pixels().zip(layer.pixels()) {
            assert_eq!(o.0[3], l.0[3], "alpha is the original");
            if l.0[3] == 0 {
                assert_eq!(o.0, [0, 0, 0, 0], "holes stay empty");
                continue;
            }
            // Un-mixed colours composite back to the same pixel within rounding: premultiplied
            // error ≤ 1 level, so no key fringe on soft edges.
            let a = f32::from(l.0[3]) / 255.0;
            for ch in 0..3 {
                let err = (f32::from(o.0[ch]) - f32::from(l.0[ch])).abs() * a;
                assert!(
                    err <= 1.0,
                    "channel {ch} of {:?} vs {:?}: premultiplied error {err}",
                    o.0,
                    l.0
                );
            }
        }
    }

    #[test]
    fn edited_colours_land_under_the_original_alpha_at_the_layers_size() {
        let layer = layer_with_holes();
        // A stand-in edit at another size (like the ≈1 MP run) that paints everything red except
        // the key, which it leaves alone.
        let (out, key) = edit_layer_with(&layer, &LayerEditOptions::default(), |c| {
            let big = image::imageops::resize(c, 128, 96, image::imageops::FilterType::Nearest);
            Ok(RgbImage::from_fn(128, 96, |x, y| {
                let p = big.get_pixel(x, y).0;
                if p == OFFICIAL_KEY_COLOR {
                    Rgb(p)
                } else {
                    Rgb([220, 20, 20])
                }
            }))
        })
        .unwrap();
        assert_eq!(key, OFFICIAL_KEY_COLOR);
        assert_eq!(out.dimensions(), (64, 48));
        for (o, l) in out.pixels().zip(layer.pixels()) {
            assert_eq!(o.0[3], l.0[3]);
        }
        // Inside the opaque block, away from resampling edges, the edit's colour.
        let p = out.get_pixel(40, 10).0;
        assert!(p[0] > 200 && p[1] < 40 && p[2] < 40, "{p:?}");
        assert_eq!(out.get_pixel(5, 5).0, [0, 0, 0, 0]);
    }

    #[test]
    fn rekeying_cuts_out_the_key_with_soft_edges() {
        let key = OFFICIAL_KEY_COLOR;
        let fg = [200u8, 40, 40];
        // An edit that drew a new shape: a red disk of radius 10 with a 3-pixel blended rim, on a
        // background a few levels off the exact key (as a real model would paint it).
        let edited = RgbImage::from_fn(48, 48, |x, y| {
            let r = (((x as f32 - 24.0).powi(2) + (y as f32 - 24.0).powi(2)).sqrt() - 10.0).clamp(0.0, 3.0) / 3.0;
            let bg = [key[0] + 6, key[1] - 8, key[2] + 5];
            Rgb(std::array::from_fn(|c| {
                (f32::from(fg[c]) * (1.0 - r) + f32::from(bg[c]) * r).round() as u8
            }))
        });
        // The original layer was a small square: its alpha must not matter in rekey mode.
        let layer = RgbaImage::from_fn(48, 48, |x, y| {
            Rgba([
                0,
                0,
                255,
                if (20..28).contains(&x) && (20..28).contains(&y) {
                    255
                } else {
                    0
                },
            ])
        });
        let out = restore_layer(&layer, &edited, key, AlphaMode::Rekey).unwrap();
        assert_eq!(out.get_pixel(0, 0).0, [0, 0, 0, 0], "drifted background is keyed out");
        assert_eq!(
            out.get_pixel(24, 24).0,
            [fg[0], fg[1], fg[2], 255],
            "disk centre opaque"
        );
        assert_eq!(
            out.get_pixel(24, 16).0[3],
            255,
            "the new shape is kept outside the old one"
        );
        let rim = out.get_pixel(24 + 12, 24).0;
        assert!(rim[3] > 0 && rim[3] < 255, "rim is semi-transparent: {rim:?}");
        let raw = edited.get_pixel(24 + 12, 24).0;
        let to_fg = |c: [u8; 3]| distance(c, fg);
        assert!(
            to_fg([rim[0], rim[1], rim[2]]) < to_fg(raw) / 2.0,
            "rim colour un-mixed toward the foreground: {rim:?} from {raw:?}"
        );
        let opaque = out.pixels().filter(|p| p.0[3] == 255).count();
        assert!((300..=360).contains(&opaque), "≈π·10² opaque pixels, got {opaque}");
        // Coverage along the rim follows the blend: 1 − (r − 10)/3.
        for (x, coverage) in [(35u32, 1.0 - 1.0 / 3.0), (36, 1.0 - 2.0 / 3.0)] {
            let a = f32::from(out.get_pixel(x, 24).0[3]) / 255.0;
            assert!((a - coverage).abs() < 0.06, "x={x}: alpha {a} for coverage {coverage}");
        }
    }

    #[test]
    fn rekeying_keeps_outlines_and_textured_interiors_opaque() {
        let key = OFFICIAL_KEY_COLOR;
        // A white box with a 2-pixel black outline and a checkered interior, on the exact key.
        let edited = RgbImage::from_fn(32, 32, |x, y| match (x, y) {
            (8..24, 8..24) if !(10..22).contains(&x) || !(10..22).contains(&y) => Rgb([0, 0, 0]),
            (8..24, 8..24) if (x + y) % 2 == 0 => Rgb([250, 250, 250]),
            (8..24, 8..24) => Rgb([120, 60, 20]),
            _ => Rgb(key),
        });
        let alpha = key_alpha(&edited, key);
        for y in 0..32u32 {
            for x in 0..32u32 {
                let inside = (8..24).contains(&x) && (8..24).contains(&y);
                assert_eq!(alpha[(y * 32 + x) as usize], if inside { 255 } else { 0 }, "({x}, {y})");
            }
        }
    }

    #[test]
    fn key_colour_avoids_the_layers_own_colours() {
        let red = RgbaImage::from_pixel(32, 32, Rgba([220, 30, 30, 255]));
        assert_eq!(choose_key_color(&red), OFFICIAL_KEY_COLOR);
        let green = RgbaImage::from_fn(32, 32, |x, _| Rgba([40, 200 + (x % 8) as u8, 90, 255]));
        let k = choose_key_color(&green);
        assert_ne!(k, OFFICIAL_KEY_COLOR);
        assert!(distance(k, [40, 204, 90]) > 200.0, "{k:?}");
        // Green hidden under alpha 0 does not count; a fully transparent layer gets the default.
        let hidden = RgbaImage::from_pixel(8, 8, Rgba([30, 215, 96, 0]));
        assert_eq!(choose_key_color(&hidden), OFFICIAL_KEY_COLOR);
        // A few stray green pixels on a red layer do not move the key.
        let mut mostly_red = red.clone();
        mostly_red.put_pixel(0, 0, Rgba([30, 215, 96, 255]));
        assert_eq!(choose_key_color(&mostly_red), OFFICIAL_KEY_COLOR);
    }

    #[test]
    fn composite_matches_alpha_blending() {
        let layer = RgbaImage::from_fn(3, 1, |x, _| Rgba([255, 0, 100, [0, 128, 255][x as usize]]));
        let c = composite_over_key(&layer, [30, 215, 96]);
        assert_eq!(c.get_pixel(0, 0).0, [30, 215, 96]);
        assert_eq!(c.get_pixel(1, 0).0, [143, 107, 98]);
        assert_eq!(c.get_pixel(2, 0).0, [255, 0, 100]);
    }

    #[test]
    fn transparent_layers_and_empty_ones_are_refused_when_keeping_alpha() {
        let clear = RgbaImage::new(8, 8);
        let err = edit_layer_with(&clear, &LayerEditOptions::default(), |c| Ok(c.clone())).unwrap_err();
        assert!(err.to_string().contains("fully transparent"), "{err}");
        let rekey = LayerEditOptions {
            alpha: AlphaMode::Rekey,
            ..LayerEditOptions::default()
        };
        let (out, _) = edit_layer_with(&clear, &rekey, |c| Ok(c.clone())).unwrap();
        assert!(
            out.pixels().all(|p| p.0[3] == 0),
            "an unchanged key background stays transparent"
        );
        let err = edit_layer_with(&RgbaImage::new(0, 3), &rekey, |c| Ok(c.clone())).unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
    }
}
