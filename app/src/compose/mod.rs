//! "Over" compositing of straight-alpha RGBA8 layers, bottom first. The same code runs in the
//! browser (WASM, on every visibility toggle, opacity change or reorder) and on the server/CLI
//! (the composite returned at index 0 and every export's flattened image), so both agree.
//!
//! Layers are accumulated premultiplied in f32 (one multiply-add per channel per layer) and
//! un-premultiplied once at the end: exact "over" (C = αs·Cs + (1−αs)·Cd) with no fringe at soft
//! edges. The image is processed in tiles of [`TILE`] pixels whose accumulator stays in the CPU
//! cache; in each tile, compositing starts at the topmost layer that is opaque over the whole
//! tile (everything below is multiplied by exactly 0) and skips layers that are transparent over
//! the whole tile (they multiply by exactly 1). Both shortcuts give bit-identical results to
//! drawing every layer everywhere (tested), and spare most of the work on typical decompositions
//! (an opaque background and objects on transparency). Which tiles of a layer are transparent or
//! opaque is a [`TileMap`], made once per image where the caller keeps it ([`live`]).
//!
//! - [`kernel`]: the per-pixel loops (portable, and `wasm32` `simd128`).
//! - [`live`]: the browser's compositor, which keeps the composites below and above the layer
//!   being changed, so a toggle or an opacity drag blends three images instead of every layer.
//! - [`reference`]: the compositor as it was before issue 24, for tests (within 1/255).

pub mod kernel;
pub mod live;
pub mod reference;

use image::RgbaImage;

use kernel::Scale;

/// A layer to draw: straight-alpha RGBA8 pixels and an opacity multiplier in [0, 1].
#[derive(Debug, Clone, Copy)]
pub struct LayerPixels<'a> {
    pub rgba: &'a [u8],
    pub opacity: f32,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ComposeError {
    #[error("layer {index} has {got} bytes, expected {expected} ({width}×{height} RGBA)")]
    SizeMismatch {
        index: usize,
        got: usize,
        expected: usize,
        width: u32,
        height: u32,
    },
    #[error("no layers to composite")]
    Empty,
}

/// Pixels per tile: 256 RGBA pixels = a 4 KiB f32 accumulator (L1-resident), and small enough
/// that a tile is often entirely transparent or opaque in a layer.
pub const TILE: usize = 256;

/// What a tile of an image holds, as far as compositing cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coverage {
    /// Every alpha is 0: drawing it changes nothing.
    Transparent,
    /// Every alpha is 255: at full opacity it hides everything below.
    Opaque,
    Mixed,
}

/// The [`Coverage`] of each tile of an RGBA8 image: a layer made ready to blend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TileMap {
    tiles: Vec<Coverage>,
}

impl TileMap {
    pub fn new(rgba: &[u8]) -> Self {
        let mut map = Self { tiles: Vec::new() };
        map.fill(rgba);
        map
    }

    /// Classifies the tiles of `rgba`, reusing this map's memory.
    fn fill(&mut self, rgba: &[u8]) {
        self.tiles.clear();
        self.tiles.extend(rgba.chunks(TILE * 4).map(|tile| {
            let (all, any) = tile
                .chunks_exact(4)
                .fold((255u8, 0u8), |(all, any), px| (all & px[3], any | px[3]));
            if any == 0 {
                Coverage::Transparent
            } else if all == 255 {
                Coverage::Opaque
            } else {
                Coverage::Mixed
            }
        }));
    }

    pub fn get(&self, tile: usize) -> Coverage {
        self.tiles[tile]
    }

    pub fn len(&self) -> usize {
        self.tiles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tiles.is_empty()
    }
}

/// A layer prepared for compositing.
#[derive(Clone, Copy)]
pub(crate) struct Prepared<'a> {
    pub rgba: &'a [u8],
    pub tiles: &'a TileMap,
    pub scale: Scale,
    /// Full opacity: an alpha byte of 255 hides everything below. (255 · (1/255) is exactly
    /// 1.0 in f32, so such a pixel leaves exactly nothing of what is below it.)
    pub full: bool,
}

impl<'a> Prepared<'a> {
    pub fn new(rgba: &'a [u8], tiles: &'a TileMap, opacity: f32) -> Option<Self> {
        Scale::new(opacity).map(|scale| Self {
            rgba,
            tiles,
            scale,
            full: opacity >= 1.0,
        })
    }
}

/// The layers that matter in tile `t` (bytes `range`), bottom first: from the topmost one that
/// is opaque over the whole tile at full opacity (nothing below it shows), without those that
/// are transparent over it. Both shortcuts are exact (see the module's documentation).
pub(crate) fn active<'a>(
    layers: &[Prepared<'a>],
    t: usize,
    range: std::ops::Range<usize>,
    into: &mut Vec<(&'a [u8], Scale)>,
) {
    into.clear();
    let start = layers
        .iter()
        .rposition(|p| p.full && p.tiles.get(t) == Coverage::Opaque)
        .unwrap_or(0);
    into.extend(
        layers[start..]
            .iter()
            .filter(|p| p.tiles.get(t) != Coverage::Transparent)
            .map(|p| (&p.rgba[range.clone()], p.scale)),
    );
}

/// Checks that every layer (and the output) holds `width × height` RGBA pixels.
pub(crate) fn check_sizes<'a>(
    width: u32,
    height: u32,
    layers: impl IntoIterator<Item = &'a [u8]>,
    out: &[u8],
) -> Result<(), ComposeError> {
    let expected = width as usize * height as usize * 4;
    let mut count = 0;
    for (index, rgba) in layers.into_iter().enumerate() {
        count = index + 1;
        if rgba.len() != expected {
            return Err(ComposeError::SizeMismatch {
                index,
                got: rgba.len(),
                expected,
                width,
                height,
            });
        }
    }
    if out.len() != expected {
        return Err(ComposeError::SizeMismatch {
            index: count,
            got: out.len(),
            expected,
            width,
            height,
        });
    }
    Ok(())
}

/// Composites layers into an image (the server's and the exports' flattening), keeping its
/// tile maps' memory between calls.
#[derive(Debug, Default)]
pub struct Compositor {
    maps: Vec<TileMap>,
}

impl Compositor {
    /// Composites `layers` (bottom first) over transparency into `out` (RGBA8, straight alpha).
    pub fn composite_into(
        &mut self,
        width: u32,
        height: u32,
        layers: &[LayerPixels<'_>],
        out: &mut [u8],
    ) -> Result<(), ComposeError> {
        check_sizes(width, height, layers.iter().map(|l| l.rgba), out)?;
        self.maps.resize_with(layers.len(), || TileMap { tiles: Vec::new() });
        for (map, l) in self.maps.iter_mut().zip(layers) {
            map.fill(l.rgba);
        }
        let prepared: Vec<Prepared<'_>> = layers
            .iter()
            .zip(&self.maps)
            .filter_map(|(l, m)| Prepared::new(l.rgba, m, l.opacity))
            .collect();
        let mut tile_layers = Vec::with_capacity(prepared.len());
        for (t, out_tile) in out.chunks_mut(TILE * 4).enumerate() {
            let range = t * TILE * 4..t * TILE * 4 + out_tile.len();
            active(&prepared, t, range, &mut tile_layers);
            kernel::compose(None, &tile_layers, None, kernel::Dst::Out(out_tile));
        }
        Ok(())
    }
}

/// Composites whole images (bottom first, full opacity) into a new image.
pub fn composite_layers(layers: &[RgbaImage]) -> Result<RgbaImage, ComposeError> {
    let first = layers.first().ok_or(ComposeError::Empty)?;
    let (w, h) = first.dimensions();
    let refs: Vec<LayerPixels<'_>> = layers
        .iter()
        .map(|l| LayerPixels {
            rgba: l.as_raw(),
            opacity: 1.0,
        })
        .collect();
    let mut out = RgbaImage::new(w, h);
    Compositor::default().composite_into(w, h, &refs, &mut out)?;
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use image::Rgba;

    fn solid(c: [u8; 4]) -> RgbaImage {
        RgbaImage::from_pixel(2, 1, Rgba(c))
    }

    #[test]
    fn opaque_top_layer_hides_the_bottom() {
        let out = composite_layers(&[solid([255, 0, 0, 255]), solid([0, 0, 255, 255])]).unwrap();
        assert_eq!(out.get_pixel(0, 0).0, [0, 0, 255, 255]);
    }

    #[test]
    fn order_matters_bottom_first() {
        let red = solid([255, 0, 0, 255]);
        let half_blue = solid([0, 0, 255, 128]);
        let over = composite_layers(&[red.clone(), half_blue.clone()]).unwrap();
        // 128/255 blue over red: R = 255·(1−0.502) = 127, B = 255·0.502 = 128.
        assert_eq!(over.get_pixel(0, 0).0, [127, 0, 128, 255]);
        let under = composite_layers(&[half_blue, red]).unwrap();
        assert_eq!(under.get_pixel(0, 0).0, [255, 0, 0, 255]);
    }

    #[test]
    fn translucent_over_translucent_matches_the_formula() {
        // αo = αs + αd(1−αs); Co = (Cs αs + Cd αd (1−αs)) / αo
        let out = composite_layers(&[solid([200, 100, 0, 102]), solid([0, 50, 250, 153])]).unwrap();
        let (as_, ad) = (153.0 / 255.0, 102.0 / 255.0);
        let ao: f64 = as_ + ad * (1.0 - as_);
        let c = |s: f64, d: f64| ((s * as_ + d * ad * (1.0 - as_)) / ao).round() as u8;
        assert_eq!(
            out.get_pixel(1, 0).0,
            [c(0.0, 200.0), c(50.0, 100.0), c(250.0, 0.0), (ao * 255.0).round() as u8]
        );
    }

    #[test]
    fn transparent_everywhere_stays_transparent_and_opacity_scales_alpha() {
        let out = composite_layers(&[solid([9, 9, 9, 0])]).unwrap();
        assert_eq!(TileMap::new(&[9, 9, 9, 0]).get(0), Coverage::Transparent);
        assert_eq!(out.get_pixel(0, 0).0, [0, 0, 0, 0]);
        let red = solid([255, 0, 0, 255]);
        let mut out = vec![0u8; 8];
        Compositor::default()
            .composite_into(
                2,
                1,
                &[LayerPixels {
                    rgba: red.as_raw(),
                    opacity: 0.5,
                }],
                &mut out,
            )
            .unwrap();
        assert_eq!(&out[..4], &[255, 0, 0, 128]);
    }

    #[test]
    fn size_mismatch_is_an_error_naming_the_layer() {
        let err = composite_layers(&[solid([0; 4]), RgbaImage::new(3, 3)]).unwrap_err();
        assert!(matches!(err, ComposeError::SizeMismatch { index: 1, .. }), "{err}");
        assert_eq!(composite_layers(&[]).unwrap_err(), ComposeError::Empty);
    }

    /// Checks the compositor against drawing every layer everywhere (bit-identical) and against
    /// the compositor before issue 24 (within 1/255).
    fn check(w: u32, h: u32, refs: &[LayerPixels<'_>], what: &str) {
        let mut out = vec![0u8; (w * h * 4) as usize];
        Compositor::default().composite_into(w, h, refs, &mut out).unwrap();
        let mut plain = vec![0u8; out.len()];
        reference::portable(w, h, refs, &mut plain).unwrap();
        assert_eq!(out, plain, "{what}");
        let mut old = vec![0u8; out.len()];
        reference::composite(w, h, refs, &mut old).unwrap();
        assert!(reference::max_diff(&out, &old) <= 1, "{what}");
    }

    /// Pseudo-random layers where alpha is often 0 or 255 (the cases the shortcuts take).
    pub(crate) fn random_layers(count: usize, pixels: usize, seed: u64) -> Vec<Vec<u8>> {
        let mut state = seed | 1;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        (0..count)
            .map(|_| {
                (0..pixels)
                    .flat_map(|_| {
                        let v = next();
                        let a = match v % 4 {
                            0 => 0,
                            1 => 255,
                            _ => (v >> 8) as u8,
                        };
                        [(v >> 16) as u8, (v >> 24) as u8, (v >> 32) as u8, a]
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn shortcuts_are_bit_identical_to_drawing_every_layer() {
        // At several opacities including exactly 1 and 0; 37×23 is not a whole number of tiles
        // nor of SIMD groups.
        let (w, h) = (37u32, 23u32);
        let layers = random_layers(7, (w * h) as usize, 0x2545_f491_4f6c_dd1d);
        for opacities in [[1.0; 7], [1.0, 0.5, 1.0, 0.0, 0.99, 1.0, 0.25], [0.3; 7]] {
            let refs: Vec<LayerPixels<'_>> = layers
                .iter()
                .zip(opacities)
                .map(|(l, opacity)| LayerPixels { rgba: l, opacity })
                .collect();
            check(w, h, &refs, &format!("opacities {opacities:?}"));
        }
    }

    #[test]
    fn tile_shortcuts_are_bit_identical_too() {
        // Five tiles; layer k is opaque over tile k, transparent over tile k + 1 and varied
        // elsewhere, so every tile takes a different shortcut.
        let (w, h) = (64u32, 20u32);
        let layers: Vec<Vec<u8>> = (0..5usize)
            .map(|k| {
                (0..(w * h) as usize)
                    .flat_map(|i| {
                        let tile = i / TILE;
                        let a = if tile == k {
                            255
                        } else if tile == (k + 1) % 5 {
                            0
                        } else {
                            ((i * 37 + k * 11) % 256) as u8
                        };
                        [(i % 251) as u8, (k * 50) as u8, (i % 7 * 30) as u8, a]
                    })
                    .collect()
            })
            .collect();
        for opacity in [1.0, 0.6] {
            let refs: Vec<LayerPixels<'_>> = layers.iter().map(|l| LayerPixels { rgba: l, opacity }).collect();
            check(w, h, &refs, &format!("opacity {opacity}"));
        }
    }

    #[test]
    fn every_alpha_and_opacity_stays_within_one_step_of_the_old_compositor() {
        // Every alpha byte (the faint ones amplify errors most when un-premultiplied) under
        // every colour byte, over a second layer of every alpha, at several opacities.
        let top: Vec<u8> = (0..256 * 256)
            .flat_map(|i| {
                [
                    (i % 256) as u8,
                    (255 - i % 256) as u8,
                    (i * 7 % 256) as u8,
                    (i / 256) as u8,
                ]
            })
            .collect();
        let bottom: Vec<u8> = (0..256 * 256)
            .flat_map(|i| [(i * 13 % 256) as u8, 200, 30, (i % 251) as u8])
            .collect();
        for (o1, o2) in [(1.0, 1.0), (0.37, 1.0), (1.0, 0.004), (0.8, 0.61)] {
            let refs = [
                LayerPixels {
                    rgba: &bottom,
                    opacity: o1,
                },
                LayerPixels {
                    rgba: &top,
                    opacity: o2,
                },
            ];
            let mut out = vec![0u8; top.len()];
            Compositor::default().composite_into(256, 256, &refs, &mut out).unwrap();
            let mut old = vec![0u8; top.len()];
            reference::composite(256, 256, &refs, &mut old).unwrap();
            assert!(reference::max_diff(&out, &old) <= 1, "opacities {o1}, {o2}");
        }
    }

    #[test]
    fn a_soft_edge_over_a_contrasting_background_has_no_fringe() {
        // A white layer whose edge fades out over 256 pixels, its transparent pixels black (as
        // model outputs and our own composite leave them), over opaque red: every pixel must be
        // the mix of white and red by the edge's alpha, with red's channel never darkened.
        let edge: Vec<u8> = (0..256u32)
            .flat_map(|a| if a == 0 { [0, 0, 0, 0] } else { [255, 255, 255, a as u8] })
            .collect();
        let red = RgbaImage::from_pixel(256, 1, Rgba([255, 0, 0, 255]));
        let white = RgbaImage::from_raw(256, 1, edge).unwrap();
        let out = composite_layers(&[red, white]).unwrap();
        for (a, px) in out.pixels().enumerate() {
            assert_eq!(px.0, [255, a as u8, a as u8, 255], "alpha {a}");
        }
    }
}
