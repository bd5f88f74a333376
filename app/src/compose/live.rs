//! The browser's compositor: the whole stack (hidden layers included) is drawn again on every
//! change, but a change to one layer (a visibility toggle, an opacity drag, a before/after switch)
//! blends three images: the composite of the layers below it, the layer, and the composite of the
//! layers above it, both kept premultiplied in f32 from the previous draw.
//!
//! [`Planner`] decides what a draw has to do, by comparing the stack with the last drawn one and
//! with the one the caches were made for; [`LiveCompositor`] does it on the CPU, and the WebGL2
//! path (`crate::gl`) does the same plans on the GPU.
//!
//! "Over" is associative in premultiplied form, `A over (L over B) = (A over L) over B`, so the
//! result equals compositing every layer up to f32 rounding (within 1/255 of the 8-bit output,
//! tested); where nothing translucent lies above the changed layer it is bit-identical. A draw
//! that changes nothing drawn (folding a group in the panel) keeps the canvas's pixels, and one
//! that changes several layers (a group hidden or shown) composites everything, so neither moves
//! a pixel by that rounding.

use std::sync::Arc;

use super::kernel::{self, Dst, Scale};
use super::{active, check_sizes, ComposeError, Coverage, Prepared, TileMap, TILE};

/// One layer of the stack as the canvas draws it; pixels are identified by their allocation.
#[derive(Debug, Clone, Copy)]
pub struct StageLayer<'a> {
    pub pixels: &'a Arc<[u8]>,
    pub visible: bool,
    pub opacity: f32,
}

impl StageLayer<'_> {
    /// The opacity it is drawn with, or `None` when it adds nothing.
    pub fn effective(&self) -> Option<f32> {
        (self.visible && self.opacity > 0.0).then_some(self.opacity.min(1.0))
    }
}

/// What one draw does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Nothing drawn changed since the last draw (a group folded in the panel, a redraw for
    /// another reason): the canvas keeps its pixels, bit for bit.
    Keep,
    /// Composite every visible layer (the first draw, a reorder, several changes at once, such
    /// as a group hidden or shown).
    Full,
    /// Composite the layers below and above `pivot` into the caches, then blend the three
    /// (the first change to that layer).
    Split { pivot: usize },
    /// Blend the caches with layer `pivot` (every later change to it).
    Blend { pivot: usize },
}

impl Plan {
    pub fn label(self) -> &'static str {
        match self {
            Plan::Keep => "unchanged",
            Plan::Full => "all layers",
            Plan::Split { .. } => "caches made",
            Plan::Blend { .. } => "3-image blend",
        }
    }
}

/// A layer as it was drawn or cached. Holding the `Arc` keeps its address from being reused by
/// other pixels while it is remembered.
#[derive(Debug, Clone)]
struct Seen {
    pixels: Arc<[u8]>,
    effective: Option<f32>,
}

impl Seen {
    fn of(layer: &StageLayer<'_>) -> Self {
        Self {
            pixels: Arc::clone(layer.pixels),
            effective: layer.effective(),
        }
    }

    /// Whether `layer` draws the same as this one did (a hidden layer's pixels do not matter).
    fn same(&self, layer: &StageLayer<'_>) -> bool {
        match (self.effective, layer.effective()) {
            (None, None) => true,
            (Some(a), Some(b)) => a == b && Arc::ptr_eq(&self.pixels, layer.pixels),
            _ => false,
        }
    }
}

/// Decides each draw's [`Plan`] and remembers what the canvas and the caches hold.
///
/// A draw blends three images only when the one layer it changes since the last draw is the
/// one the caches were made around; several changes at once composite everything. So a draw
/// that changes nothing leaves the canvas as it is, and returning to a stack by several changes
/// (hiding and showing a group, a reorder and back) gives exactly what compositing every layer
/// gives, not the blend's result, which may differ by f32 rounding (within 1/255).
#[derive(Debug, Default)]
pub struct Planner {
    size: (u32, u32),
    /// The stack the canvas shows and the plan that drew it; `None` when the canvas shows
    /// something else (nothing yet, the model's composite).
    drawn: Option<(Vec<Seen>, Plan)>,
    /// The layer the caches were made around and the stack they were made from.
    cache: Option<(usize, Vec<Seen>)>,
}

impl Planner {
    /// The plan for drawing `layers` (bottom first, hidden ones included).
    pub fn plan(&self, width: u32, height: u32, layers: &[StageLayer<'_>]) -> Plan {
        let drawn = match &self.drawn {
            Some((drawn, _)) if self.size == (width, height) && drawn.len() == layers.len() => drawn,
            _ => return Plan::Full,
        };
        let mut changed = (0..layers.len()).filter(|&i| !drawn[i].same(&layers[i]));
        match (changed.next(), changed.next()) {
            (None, _) => Plan::Keep,
            (Some(pivot), None) if self.cached_pivot(layers) == Some(pivot) => Plan::Blend { pivot },
            (Some(pivot), None) => Plan::Split { pivot },
            _ => Plan::Full,
        }
    }

    /// The plan that makes the pixels the canvas shows again, for `layers` as drawn (reading
    /// them back): how the last draw made them, from the caches where they still serve.
    pub fn redraw(&self, width: u32, height: u32, layers: &[StageLayer<'_>]) -> Plan {
        match self.plan(width, height, layers) {
            Plan::Keep => match self.drawn {
                Some((_, Plan::Split { pivot } | Plan::Blend { pivot }))
                    if self.cached_pivot(layers) == Some(pivot) =>
                {
                    Plan::Blend { pivot }
                }
                _ => Plan::Full,
            },
            plan => plan,
        }
    }

    /// The plan that makes the caches ready for changes to layer `pivot` (the pointer is on its
    /// row), or `None` when they are.
    pub fn prepare(&self, width: u32, height: u32, layers: &[StageLayer<'_>], pivot: usize) -> Option<Plan> {
        let ready = self.size == (width, height) && self.cached_pivot(layers) == Some(pivot);
        (pivot < layers.len() && !ready).then_some(Plan::Split { pivot })
    }

    /// Records a plan carried out for `layers`; `drawn` when the canvas now shows them.
    pub fn done(&mut self, width: u32, height: u32, layers: &[StageLayer<'_>], plan: Plan, drawn: bool) {
        if self.size != (width, height) {
            self.size = (width, height);
            self.cache = None;
            self.drawn = None;
        }
        if let Plan::Split { pivot } = plan {
            self.cache = Some((pivot, layers.iter().map(Seen::of).collect()));
        }
        if drawn && plan != Plan::Keep {
            self.drawn = Some((layers.iter().map(Seen::of).collect(), plan));
        }
    }

    /// The canvas was drawn with something else (the model's composite): the next draw of the
    /// layers composites every one (the caches stay).
    pub fn forget_drawn(&mut self) {
        self.drawn = None;
    }

    /// Forgets everything (the caches were lost, e.g. with the WebGL context).
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// The cached layer, if the caches hold exactly what lies below and above it in `layers`.
    fn cached_pivot(&self, layers: &[StageLayer<'_>]) -> Option<usize> {
        let (pivot, seen) = self.cache.as_ref()?;
        let valid = seen.len() == layers.len()
            && seen
                .iter()
                .zip(layers)
                .enumerate()
                .all(|(i, (s, l))| i == *pivot || s.same(l));
        valid.then_some(*pivot)
    }
}

/// The CPU side: ready-to-blend tile maps of the stack's images and the caches: the composites
/// below and above the changed layer (premultiplied f32, with a [`Coverage`] per tile) and the
/// finished image without it, which the tiles the layer does not reach are copied from; and the
/// last drawn image, which a draw that changes nothing leaves as it is.
#[derive(Debug, Default)]
pub struct LiveCompositor {
    planner: Planner,
    out: Vec<u8>,
    maps: Vec<(Arc<[u8]>, Arc<TileMap>)>,
    below: Vec<f32>,
    above: Vec<f32>,
    below_cov: Vec<Coverage>,
    above_cov: Vec<Coverage>,
    without: Vec<u8>,
}

impl LiveCompositor {
    /// Draws `layers` (bottom first, hidden ones included); the image is [`Self::pixels`]
    /// (straight-alpha RGBA8), unchanged when the plan is [`Plan::Keep`].
    pub fn draw(&mut self, width: u32, height: u32, layers: &[StageLayer<'_>]) -> Result<Plan, ComposeError> {
        let mut out = std::mem::take(&mut self.out);
        out.resize(width as usize * height as usize * 4, 0);
        let checked = check_sizes(width, height, layers.iter().map(|l| &l.pixels[..]), &out);
        let plan = checked.map(|()| self.planner.plan(width, height, layers));
        match plan {
            Ok(plan) => {
                self.run(plan, width, height, layers, Some(&mut out));
                self.planner.done(width, height, layers, plan, true);
            }
            // `out` may have been resized: it no longer holds the last draw.
            Err(_) => self.planner.forget_drawn(),
        }
        self.out = out;
        plan
    }

    /// The last drawn image (straight-alpha RGBA8).
    pub fn pixels(&self) -> &[u8] {
        &self.out
    }

    /// The canvas was drawn with something else (the model's composite): the next draw
    /// composites every layer again.
    pub fn forget_drawn(&mut self) {
        self.planner.forget_drawn();
    }

    /// Makes the caches ready for changes to layer `pivot`, so the next change blends three
    /// images. Returns whether there was work to do.
    pub fn prepare(
        &mut self,
        width: u32,
        height: u32,
        layers: &[StageLayer<'_>],
        pivot: usize,
    ) -> Result<bool, ComposeError> {
        let expected = width as usize * height as usize * 4;
        if let Some((index, l)) = layers.iter().enumerate().find(|(_, l)| l.pixels.len() != expected) {
            return Err(ComposeError::SizeMismatch {
                index,
                got: l.pixels.len(),
                expected,
                width,
                height,
            });
        }
        let Some(plan) = self.planner.prepare(width, height, layers, pivot) else {
            return Ok(false);
        };
        self.run(plan, width, height, layers, None);
        self.planner.done(width, height, layers, plan, false);
        Ok(true)
    }

    /// Forgets what the canvas and the caches hold (the tile maps stay), so the next draw
    /// composites every layer.
    pub fn invalidate(&mut self) {
        self.planner.reset();
    }

    /// The tile map of each layer's pixels, made once per image and kept while it is in the stack.
    fn refresh_maps(&mut self, layers: &[StageLayer<'_>]) -> Vec<Arc<TileMap>> {
        let maps: Vec<Arc<TileMap>> = layers
            .iter()
            .map(|l| {
                self.maps
                    .iter()
                    .find(|(p, _)| Arc::ptr_eq(p, l.pixels))
                    .map(|(_, m)| Arc::clone(m))
                    .unwrap_or_else(|| Arc::new(TileMap::new(l.pixels)))
            })
            .collect();
        self.maps = layers
            .iter()
            .map(|l| Arc::clone(l.pixels))
            .zip(maps.iter().cloned())
            .collect();
        maps
    }

    fn run(&mut self, plan: Plan, width: u32, height: u32, layers: &[StageLayer<'_>], out: Option<&mut [u8]>) {
        let maps = self.refresh_maps(layers);
        let prepared = |range: std::ops::Range<usize>| -> Vec<Prepared<'_>> {
            range
                .filter_map(|i| {
                    let l = &layers[i];
                    Prepared::new(l.pixels, &maps[i], l.effective()?)
                })
                .collect()
        };
        let len = width as usize * height as usize * 4;
        let tiles = len.div_ceil(TILE * 4);
        let tile = |t: usize| t * TILE * 4..((t + 1) * TILE * 4).min(len);
        let mut tile_layers: Vec<(&[u8], Scale)> = Vec::with_capacity(layers.len());
        let pivot = match plan {
            Plan::Keep => return,
            Plan::Full => {
                let all = prepared(0..layers.len());
                if let Some(out) = out {
                    for t in 0..tiles {
                        active(&all, t, tile(t), &mut tile_layers);
                        kernel::compose(None, &tile_layers, None, Dst::Out(&mut out[tile(t)]));
                    }
                }
                return;
            }
            Plan::Split { pivot } | Plan::Blend { pivot } => pivot,
        };
        if let Plan::Split { .. } = plan {
            let (below, above) = (prepared(0..pivot), prepared(pivot + 1..layers.len()));
            self.below.resize(len, 0.0);
            self.above.resize(len, 0.0);
            self.without.resize(len, 0);
            self.below_cov.resize(tiles, Coverage::Transparent);
            self.above_cov.resize(tiles, Coverage::Transparent);
            for t in 0..tiles {
                let range = tile(t);
                active(&below, t, range.clone(), &mut tile_layers);
                kernel::compose(None, &tile_layers, None, Dst::Acc(&mut self.below[range.clone()]));
                self.below_cov[t] = coverage(&self.below[range.clone()]);
                active(&above, t, range.clone(), &mut tile_layers);
                kernel::compose(None, &tile_layers, None, Dst::Acc(&mut self.above[range.clone()]));
                self.above_cov[t] = coverage(&self.above[range.clone()]);
                let (b, a) = cached(
                    (self.below_cov[t], &self.below),
                    (self.above_cov[t], &self.above),
                    range.clone(),
                );
                kernel::compose(b, &[], a, Dst::Out(&mut self.without[range]));
            }
        }
        let Some(out) = out else { return };
        let layer = prepared(pivot..pivot + 1).pop();
        for t in 0..tiles {
            let range = tile(t);
            let reaches = layer
                .as_ref()
                .filter(|p| p.tiles.get(t) != Coverage::Transparent && self.above_cov[t] != Coverage::Opaque);
            match reaches {
                Some(p) => {
                    let (b, a) = cached(
                        (self.below_cov[t], &self.below),
                        (self.above_cov[t], &self.above),
                        range.clone(),
                    );
                    kernel::compose(b, &[(&p.rgba[range.clone()], p.scale)], a, Dst::Out(&mut out[range]));
                }
                None => out[range.clone()].copy_from_slice(&self.without[range]),
            }
        }
    }
}

/// A tile (`range`) of the caches below and above, where they hold anything.
fn cached<'a>(
    below: (Coverage, &'a [f32]),
    above: (Coverage, &'a [f32]),
    range: std::ops::Range<usize>,
) -> (Option<&'a [f32]>, Option<&'a [f32]>) {
    let some = |(cov, cache): (Coverage, &'a [f32])| (cov != Coverage::Transparent).then(|| &cache[range.clone()]);
    (some(below), some(above))
}

/// The coverage of a premultiplied f32 tile.
fn coverage(acc: &[f32]) -> Coverage {
    let alphas = || acc.iter().skip(3).step_by(4);
    if alphas().all(|a| *a == 0.0) {
        Coverage::Transparent
    } else if alphas().all(|a| *a == 1.0) {
        Coverage::Opaque
    } else {
        Coverage::Mixed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compose::reference::{self, max_diff};
    use crate::compose::tests::random_layers;
    use crate::compose::{Compositor, LayerPixels};
    use crate::layer_stack::{Bitmap, LayerStack};

    struct Stack {
        layers: Vec<(Arc<[u8]>, bool, f32)>,
    }

    impl Stack {
        fn stage(&self) -> Vec<StageLayer<'_>> {
            self.layers
                .iter()
                .map(|(p, visible, opacity)| StageLayer {
                    pixels: p,
                    visible: *visible,
                    opacity: *opacity,
                })
                .collect()
        }
    }

    /// Draws with the live compositor and checks it against compositing every visible layer
    /// (within 1/255) and against the compositor before issue 24 (within 1/255).
    fn draw_and_check(live: &mut LiveCompositor, w: u32, h: u32, s: &Stack) -> Plan {
        let stage = s.stage();
        let before = live.pixels().to_vec();
        let plan = live.draw(w, h, &stage).unwrap();
        let out = live.pixels();
        if plan == Plan::Keep {
            assert_eq!(out, before, "nothing drawn changed: the same pixels");
        }
        let visible: Vec<LayerPixels<'_>> = stage
            .iter()
            .filter(|l| l.visible)
            .map(|l| LayerPixels {
                rgba: l.pixels,
                opacity: l.opacity,
            })
            .collect();
        let mut full = vec![0u8; out.len()];
        Compositor::default().composite_into(w, h, &visible, &mut full).unwrap();
        assert!(max_diff(out, &full) <= 1, "{plan:?}");
        let mut old = vec![0u8; out.len()];
        reference::composite(w, h, &visible, &mut old).unwrap();
        assert!(max_diff(out, &old) <= 1, "{plan:?}");
        if matches!(plan, Plan::Full) {
            assert_eq!(out, full, "a full draw is the plain compositor");
        }
        plan
    }

    /// Layers whose tiles are opaque, transparent or random, so every shortcut is taken.
    fn stack(count: usize, w: u32, h: u32) -> Stack {
        let px = (w * h) as usize;
        let noise = random_layers(count, px, 0x9e37_79b9_7f4a_7c15);
        let layers = noise
            .into_iter()
            .enumerate()
            .map(|(k, mut l)| {
                for (i, p) in l.chunks_exact_mut(4).enumerate() {
                    match (i / TILE + k) % 4 {
                        0 => p[3] = 255,
                        1 => p[3] = 0,
                        _ => {}
                    }
                }
                (Arc::<[u8]>::from(l), true, 1.0)
            })
            .collect();
        Stack { layers }
    }

    #[test]
    fn one_changed_layer_makes_caches_then_blends_three_images() {
        let (w, h) = (50u32, 30u32);
        let mut s = stack(6, w, h);
        let mut live = LiveCompositor::default();
        assert_eq!(draw_and_check(&mut live, w, h, &s), Plan::Full);
        assert_eq!(draw_and_check(&mut live, w, h, &s), Plan::Keep, "nothing changed");
        s.layers[2].1 = false;
        assert_eq!(draw_and_check(&mut live, w, h, &s), Plan::Split { pivot: 2 });
        s.layers[2].1 = true;
        assert_eq!(draw_and_check(&mut live, w, h, &s), Plan::Blend { pivot: 2 });
        for opacity in [0.9, 0.5, 0.0, 0.25] {
            s.layers[2].2 = opacity;
            assert_eq!(draw_and_check(&mut live, w, h, &s), Plan::Blend { pivot: 2 });
        }
        // New pixels for the cached layer (an edit, before/after): still three images.
        s.layers[2].0 = Arc::clone(&s.layers[5].0);
        assert_eq!(draw_and_check(&mut live, w, h, &s), Plan::Blend { pivot: 2 });
        // Another layer: new caches.
        s.layers[4].2 = 0.7;
        assert_eq!(draw_and_check(&mut live, w, h, &s), Plan::Split { pivot: 4 });
        // A hidden layer's opacity does not matter: nothing to draw.
        s.layers[1].1 = false;
        assert_eq!(draw_and_check(&mut live, w, h, &s), Plan::Split { pivot: 1 });
        s.layers[1].2 = 0.3;
        assert_eq!(draw_and_check(&mut live, w, h, &s), Plan::Keep);
        s.layers[1].1 = true;
        assert_eq!(draw_and_check(&mut live, w, h, &s), Plan::Blend { pivot: 1 });
        // Prepared ahead (the pointer on a row): the first change already blends three.
        assert!(live.prepare(w, h, &s.stage(), 0).unwrap());
        assert!(!live.prepare(w, h, &s.stage(), 0).unwrap(), "already ready");
        s.layers[0].1 = false;
        assert_eq!(draw_and_check(&mut live, w, h, &s), Plan::Blend { pivot: 0 });
        // A reorder, or two changes at once, draws everything, and so does going back: the
        // canvas is then exactly what compositing every layer gives, not a blend of caches.
        let blended = live.pixels().to_vec();
        s.layers.swap(3, 5);
        assert_eq!(draw_and_check(&mut live, w, h, &s), Plan::Full);
        s.layers.swap(3, 5);
        assert_eq!(draw_and_check(&mut live, w, h, &s), Plan::Full);
        assert!(max_diff(live.pixels(), &blended) <= 1);
        // The caches stay for their stack: the next change to layer 0 blends.
        s.layers[0].1 = true;
        assert_eq!(draw_and_check(&mut live, w, h, &s), Plan::Blend { pivot: 0 });
        s.layers[3].2 = 0.5;
        s.layers[5].2 = 0.5;
        assert_eq!(draw_and_check(&mut live, w, h, &s), Plan::Full);
        // The canvas drawn with something else (the model's composite): drawn again in full.
        live.forget_drawn();
        assert_eq!(draw_and_check(&mut live, w, h, &s), Plan::Full);
        // The top and the bottom layer as pivots.
        s.layers[5].1 = false;
        assert_eq!(draw_and_check(&mut live, w, h, &s), Plan::Split { pivot: 5 });
        s.layers[5].1 = true;
        assert_eq!(draw_and_check(&mut live, w, h, &s), Plan::Blend { pivot: 5 });
    }

    #[test]
    fn random_changes_stay_within_one_step_of_compositing_everything() {
        let (w, h) = (40u32, 33u32);
        let mut s = stack(7, w, h);
        let spare: Vec<Arc<[u8]>> = random_layers(2, (w * h) as usize, 77)
            .into_iter()
            .map(Arc::from)
            .collect();
        let mut live = LiveCompositor::default();
        let mut state = 0x1234_5678_9abc_def1u64;
        let mut next = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let mut plans = [0usize; 4];
        for _ in 0..200 {
            let i = next(7);
            match next(10) {
                0..=3 => s.layers[i].1 = !s.layers[i].1,
                4..=6 => s.layers[i].2 = next(101) as f32 / 100.0,
                7 => s.layers.swap(i, next(7)),
                8 => s.layers[i].0 = Arc::clone(&spare[next(2)]),
                _ => {
                    live.prepare(w, h, &s.stage(), i).unwrap();
                }
            }
            match draw_and_check(&mut live, w, h, &s) {
                Plan::Full => plans[0] += 1,
                Plan::Split { .. } => plans[1] += 1,
                Plan::Blend { .. } => plans[2] += 1,
                Plan::Keep => plans[3] += 1,
            }
        }
        assert!(plans.iter().all(|n| *n > 10), "every plan was exercised: {plans:?}");
    }

    #[test]
    fn a_new_size_starts_over_and_wrong_sizes_are_refused() {
        let mut s = stack(3, 8, 8);
        let mut live = LiveCompositor::default();
        draw_and_check(&mut live, 8, 8, &s);
        s.layers[1].1 = false;
        assert_eq!(draw_and_check(&mut live, 8, 8, &s), Plan::Split { pivot: 1 });
        let s2 = stack(3, 4, 16);
        assert_eq!(draw_and_check(&mut live, 4, 16, &s2), Plan::Full);
        let small = stack(3, 5, 5);
        assert!(matches!(
            live.draw(8, 8, &small.stage()),
            Err(ComposeError::SizeMismatch { index: 0, .. })
        ));
        assert!(live.prepare(8, 8, &small.stage(), 0).is_err());
        // After a refused draw the canvas is drawn again, not kept.
        assert_eq!(draw_and_check(&mut live, 4, 16, &s2), Plan::Full);
    }

    /// A stack with a group: Layer 2 (at 60 % opacity) split into three parts, over a
    /// background and under Layer 3, everything above the background translucent everywhere.
    /// Its first pixel is one where blending the caches made around the bottom three layers
    /// rounds differently from compositing every layer (243 against 244 in alpha).
    fn group_stack(w: u32, h: u32) -> (LayerStack, u32) {
        const ROUNDS_APART: [[u8; 4]; 5] = [
            [239, 31, 140, 209],
            [97, 241, 190, 231],
            [215, 125, 87, 1],
            [228, 26, 113, 60],
            [113, 40, 173, 92],
        ];
        let px = (w * h) as usize;
        let mut layers = random_layers(5, px, 0x5eed_0f9a)
            .into_iter()
            .enumerate()
            .map(|(k, mut l)| {
                if k > 0 {
                    for p in l.chunks_exact_mut(4) {
                        p[3] = p[3].clamp(1, 254);
                    }
                }
                l[..4].copy_from_slice(&ROUNDS_APART[k]);
                Bitmap::from_rgba(w, h, l, "")
            });
        let mut next = || layers.next().expect("five layers");
        let (bottom, parts, top) = (next(), [next(), next(), next()], next());
        let mut s = LayerStack::new(vec![
            ("Layer 1".into(), bottom),
            ("Layer 2".into(), parts[0].clone()),
            ("Layer 3".into(), top),
        ])
        .unwrap();
        s.set_opacity(2, 0.6).unwrap();
        let parts = parts
            .into_iter()
            .zip(1..)
            .map(|(b, i)| (format!("Layer 2.{i}"), b))
            .collect();
        let g = s.split(2, parts).unwrap();
        (s, g)
    }

    /// Draws the stack as the canvas does and checks it against compositing every visible layer
    /// (within 1/255, exactly for a full draw); returns the plan and the pixels.
    fn draw_stack(live: &mut LiveCompositor, s: &LayerStack) -> (Plan, Vec<u8>) {
        let (w, h) = (s.width(), s.height());
        let before = live.pixels().to_vec();
        let plan = live.draw(w, h, &s.to_stage()).unwrap();
        let out = live.pixels().to_vec();
        let mut full = vec![0u8; out.len()];
        Compositor::default()
            .composite_into(w, h, &s.to_composite(), &mut full)
            .unwrap();
        assert!(max_diff(&out, &full) <= 1, "{plan:?}: {}", max_diff(&out, &full));
        match plan {
            Plan::Full => assert_eq!(out, full, "a full draw is the plain compositor"),
            Plan::Keep => assert_eq!(out, before, "nothing drawn changed"),
            Plan::Split { .. } | Plan::Blend { .. } => {}
        }
        (plan, out)
    }

    #[test]
    fn every_change_to_a_group_draws_what_compositing_everything_draws() {
        let (w, h) = (64u32, 48u32);
        let (mut s, g) = group_stack(w, h);
        let parts: Vec<usize> = (1..=3).collect();
        // With the caches made for each row the pointer may be on (None: none made).
        for pointed in [None, Some(0), Some(1), Some(2), Some(3), Some(4)] {
            let mut live = LiveCompositor::default();
            let (plan, original) = draw_stack(&mut live, &s);
            assert_eq!(plan, Plan::Full);
            let point = |live: &mut LiveCompositor, s: &LayerStack| {
                if let Some(p) = pointed {
                    live.prepare(w, h, &s.to_stage(), p).unwrap();
                }
            };

            // Folding and unfolding the group changes no pixel's inputs: the canvas stays.
            point(&mut live, &s);
            assert!(s.toggle_collapsed(g).unwrap());
            assert_eq!(
                draw_stack(&mut live, &s),
                (Plan::Keep, original.clone()),
                "folded, {pointed:?}"
            );
            assert!(!s.toggle_collapsed(g).unwrap());
            assert_eq!(
                draw_stack(&mut live, &s),
                (Plan::Keep, original.clone()),
                "unfolded, {pointed:?}"
            );

            // Hiding and showing the group: three layers at once, composited again, the same.
            point(&mut live, &s);
            s.set_group_visible(g, false).unwrap();
            assert_eq!(draw_stack(&mut live, &s).0, Plan::Full);
            // A part hidden inside the hidden group draws nothing new.
            let part = s.layers()[2].id;
            s.set_visible(part, false).unwrap();
            assert_eq!(draw_stack(&mut live, &s).0, Plan::Keep);
            s.set_visible(part, true).unwrap();
            assert_eq!(draw_stack(&mut live, &s).0, Plan::Keep);
            point(&mut live, &s);
            s.set_group_visible(g, true).unwrap();
            assert_eq!(
                draw_stack(&mut live, &s),
                (Plan::Full, original.clone()),
                "shown, {pointed:?}"
            );

            // A part hidden and shown, and its opacity: one layer, three images (within 1/255).
            for &i in &parts {
                let id = s.layers()[i].id;
                point(&mut live, &s);
                s.set_visible(id, false).unwrap();
                let cached = pointed == Some(i);
                let plan = draw_stack(&mut live, &s).0;
                assert_eq!(
                    plan,
                    if cached {
                        Plan::Blend { pivot: i }
                    } else {
                        Plan::Split { pivot: i }
                    }
                );
                s.set_visible(id, true).unwrap();
                assert_eq!(draw_stack(&mut live, &s).0, Plan::Blend { pivot: i });
                for opacity in [0.3, 0.0, 1.0] {
                    s.set_opacity(id, opacity).unwrap();
                    assert_eq!(draw_stack(&mut live, &s).0, Plan::Blend { pivot: i });
                }
                assert!(max_diff(live.pixels(), &original) <= 1);
            }

            // The group moves as one: composited again, and exactly the original when back.
            point(&mut live, &s);
            assert!(s.move_group(g, true).unwrap());
            assert_eq!(draw_stack(&mut live, &s).0, Plan::Full);
            assert!(s.move_group(g, false).unwrap());
            assert_eq!(draw_stack(&mut live, &s), (Plan::Full, original.clone()));

            // Undoing the split and bringing it back.
            let split = s.clone();
            s.unsplit(g).unwrap();
            assert_eq!(draw_stack(&mut live, &s).0, Plan::Full);
            s = split;
            assert_eq!(draw_stack(&mut live, &s), (Plan::Full, original.clone()));
        }
    }
}
