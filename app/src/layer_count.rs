//! Automatic layer count (`layer_num: "auto"`): the model is run with [`AUTO_MAX_LAYERS`] layers
//! and the layers that add nothing visible are dropped, each with the reason.
//!
//! The rules, in this order (each layer is judged by its straight-alpha RGBA8 pixels):
//! 1. **empty**: fewer than [`MIN_VISIBLE_FRACTION`] of the pixels have alpha of at least
//!    [`VISIBLE_ALPHA`];
//! 2. **duplicate**: its premultiplied pixels differ from those of a kept layer below it by at
//!    most [`DUPLICATE_MAX_DIFF`] on average, over the pixels where either is visible (the upper
//!    copy goes);
//! 3. **covered**: judged from the top of the stack down, fewer than [`MIN_VISIBLE_FRACTION`] of
//!    the pixels show at least [`VISIBLE_ALPHA`] of it through the kept layers above it
//!    (`alpha · Π(1 − alpha_above)`).
//!
//! At least [`MIN_KEPT_LAYERS`] layer stays: when every layer would go, the most visible one is
//! kept.

use serde::{Deserialize, Serialize};

/// How many layers an automatic run asks the model for.
pub const AUTO_MAX_LAYERS: u32 = 6;
/// A pixel counts as visible from this alpha (or this much showing through the layers above).
pub const VISIBLE_ALPHA: f32 = 8.0 / 255.0;
/// A layer must show on at least this fraction of the image's pixels (0.2 %: about 820 pixels
/// of a 640² image) to stay.
pub const MIN_VISIBLE_FRACTION: f64 = 0.002;
/// Mean absolute difference of premultiplied RGBA (0–1 per channel) under which two layers are
/// the same (about 3/255).
pub const DUPLICATE_MAX_DIFF: f64 = 0.012;
/// An automatic run never returns fewer layers than this.
pub const MIN_KEPT_LAYERS: usize = 1;

/// Why a layer was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum DropReason {
    Empty,
    Duplicate,
    Covered,
}

/// One dropped layer: its place in the model's output and why it went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct DroppedLayer {
    /// 1-based position among the layers the model produced (1 = bottom).
    pub layer: u32,
    pub reason: DropReason,
    /// In words, with the numbers that decided it.
    pub detail: String,
}

/// What an automatic layer count did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct AutoLayers {
    /// Layers the model produced ([`AUTO_MAX_LAYERS`]).
    pub produced: u32,
    /// Layers kept, bottom first, by their 1-based position among those produced.
    pub kept: Vec<u32>,
    pub dropped: Vec<DroppedLayer>,
}

fn alpha(px: &[u8]) -> f32 {
    f32::from(px[3]) / 255.0
}

/// Fraction of the pixels where `weight(i) · alpha` reaches [`VISIBLE_ALPHA`].
fn visible_fraction(rgba: &[u8], weight: impl Fn(usize) -> f32) -> f64 {
    let n = rgba.len() / 4;
    if n == 0 {
        return 0.0;
    }
    let visible = rgba
        .chunks_exact(4)
        .enumerate()
        .filter(|(i, px)| alpha(px) * weight(*i) >= VISIBLE_ALPHA)
        .count();
    visible as f64 / n as f64
}

/// Mean absolute difference of premultiplied RGBA over the pixels where either layer is visible
/// (`None`: neither is visible anywhere).
fn premultiplied_difference(a: &[u8], b: &[u8]) -> Option<f64> {
    let mut sum = 0.0f64;
    let mut count = 0usize;
    for (pa, pb) in a.chunks_exact(4).zip(b.chunks_exact(4)) {
        let (aa, ab) = (alpha(pa), alpha(pb));
        if aa < VISIBLE_ALPHA && ab < VISIBLE_ALPHA {
            continue;
        }
        let mut d = (aa - ab).abs();
        for c in 0..3 {
            d += (f32::from(pa[c]) / 255.0 * aa - f32::from(pb[c]) / 255.0 * ab).abs();
        }
        sum += f64::from(d) / 4.0;
        count += 1;
    }
    (count > 0).then(|| sum / count as f64)
}

fn percent(f: f64) -> String {
    format!("{:.2} %", f * 100.0)
}

/// Judges `layers` (bottom first, straight-alpha RGBA8 of equal size) by the rules above.
pub fn prune(layers: &[&[u8]]) -> AutoLayers {
    let n = layers.len();
    let mut dropped: Vec<Option<DroppedLayer>> = vec![None; n];
    let drop = |i: usize, reason: DropReason, detail: String| {
        Some(DroppedLayer {
            layer: i as u32 + 1,
            reason,
            detail,
        })
    };
    let own: Vec<f64> = layers.iter().map(|l| visible_fraction(l, |_| 1.0)).collect();
    for i in 0..n {
        if own[i] < MIN_VISIBLE_FRACTION {
            dropped[i] = drop(
                i,
                DropReason::Empty,
                format!(
                    "visible on {} of the pixels (needs {})",
                    percent(own[i]),
                    percent(MIN_VISIBLE_FRACTION)
                ),
            );
        }
    }
    for i in 0..n {
        if dropped[i].is_some() {
            continue;
        }
        let twin = (0..i).filter(|&j| dropped[j].is_none()).find_map(|j| {
            premultiplied_difference(layers[i], layers[j])
                .filter(|d| *d <= DUPLICATE_MAX_DIFF)
                .map(|d| (j, d))
        });
        if let Some((j, d)) = twin {
            dropped[i] = drop(
                i,
                DropReason::Duplicate,
                format!(
                    "the same as layer {} (mean difference {:.4}, at most {DUPLICATE_MAX_DIFF})",
                    j + 1,
                    d
                ),
            );
        }
    }
    // Top down: how much of each pixel still shows through the kept layers above.
    let pixels = layers.first().map_or(0, |l| l.len() / 4);
    let mut through = vec![1.0f32; pixels];
    for i in (0..n).rev() {
        if dropped[i].is_some() {
            continue;
        }
        let shown = visible_fraction(layers[i], |p| through[p]);
        if shown < MIN_VISIBLE_FRACTION {
            dropped[i] = drop(
                i,
                DropReason::Covered,
                format!(
                    "the layers above leave {} of the pixels showing it (needs {})",
                    percent(shown),
                    percent(MIN_VISIBLE_FRACTION)
                ),
            );
            continue;
        }
        for (t, px) in through.iter_mut().zip(layers[i].chunks_exact(4)) {
            *t *= 1.0 - alpha(px);
        }
    }
    if n > 0 && dropped.iter().filter(|d| d.is_none()).count() < MIN_KEPT_LAYERS {
        // Nothing would be left: keep the layer that shows most on its own.
        let best = (0..n).max_by(|&a, &b| own[a].total_cmp(&own[b])).unwrap_or_default();
        dropped[best] = None;
    }
    AutoLayers {
        produced: n as u32,
        kept: (0..n).filter(|&i| dropped[i].is_none()).map(|i| i as u32 + 1).collect(),
        dropped: dropped.into_iter().flatten().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: usize = 20;
    const H: usize = 10;

    /// A layer of one colour over the rectangle `x0..x1 × y0..y1`, transparent elsewhere.
    fn rect(color: [u8; 4], x0: usize, x1: usize, y0: usize, y1: usize) -> Vec<u8> {
        let mut v = vec![0u8; W * H * 4];
        for y in y0..y1 {
            for x in x0..x1 {
                v[(y * W + x) * 4..][..4].copy_from_slice(&color);
            }
        }
        v
    }

    fn judge(layers: &[Vec<u8>]) -> AutoLayers {
        let refs: Vec<&[u8]> = layers.iter().map(Vec::as_slice).collect();
        prune(&refs)
    }

    fn reasons(a: &AutoLayers) -> Vec<(u32, DropReason)> {
        a.dropped.iter().map(|d| (d.layer, d.reason)).collect()
    }

    #[test]
    fn distinct_visible_layers_all_stay() {
        let a = judge(&[
            rect([10, 20, 30, 255], 0, W, 0, H),
            rect([200, 0, 0, 255], 2, 8, 2, 8),
            rect([0, 0, 200, 128], 10, 18, 1, 9),
        ]);
        assert_eq!(a.kept, [1, 2, 3]);
        assert!(a.dropped.is_empty(), "{a:?}");
        assert_eq!(a.produced, 3);
    }

    #[test]
    fn a_layer_with_only_faint_or_tiny_content_is_empty() {
        // Alpha just under the threshold everywhere: nothing visible.
        let faint = rect([255, 255, 255, 7], 0, W, 0, H);
        let a = judge(&[rect([1, 2, 3, 255], 0, W, 0, H), faint.clone()]);
        assert_eq!(reasons(&a), [(2, DropReason::Empty)]);
        assert!(a.dropped[0].detail.contains("0.00 %"), "{}", a.dropped[0].detail);
        // At the threshold it counts.
        let just = rect([255, 255, 255, 8], 0, W, 0, H);
        assert!(judge(&[rect([1, 2, 3, 255], 0, W, 0, H), just]).dropped.is_empty());
    }

    #[test]
    fn a_layer_hidden_under_opaque_layers_is_covered() {
        let a = judge(&[
            rect([9, 9, 9, 255], 0, W, 0, H),
            rect([200, 0, 0, 255], 2, 8, 2, 8),
            rect([0, 200, 0, 255], 0, W, 0, H),
        ]);
        // The green layer on top hides both below it.
        assert_eq!(reasons(&a), [(1, DropReason::Covered), (2, DropReason::Covered)]);
        assert_eq!(a.kept, [3]);
    }

    #[test]
    fn a_layer_seen_through_a_translucent_one_is_not_covered() {
        let a = judge(&[rect([200, 0, 0, 255], 2, 8, 2, 8), rect([0, 200, 0, 200], 0, W, 0, H)]);
        assert!(a.dropped.is_empty(), "{a:?}");
    }

    #[test]
    fn a_dropped_layer_does_not_cover_those_below() {
        // Layer 3 is a copy of layer 2 (dropped), so it must not hide layer 1 either.
        let base = rect([9, 9, 9, 255], 0, W, 0, H);
        let object = rect([200, 0, 0, 255], 0, W, 0, H / 2);
        let a = judge(&[base, object.clone(), object]);
        assert_eq!(reasons(&a), [(3, DropReason::Duplicate)]);
        assert_eq!(a.kept, [1, 2]);
    }

    #[test]
    fn near_copies_are_duplicates_and_different_colours_are_not() {
        let base = rect([9, 9, 9, 255], 0, W, 0, H);
        let object = rect([100, 100, 100, 128], 2, 12, 2, 8);
        let near = rect([102, 101, 100, 129], 2, 12, 2, 8);
        let other = rect([140, 100, 100, 128], 2, 12, 2, 8);
        let a = judge(&[base.clone(), object.clone(), near]);
        assert_eq!(reasons(&a), [(3, DropReason::Duplicate)]);
        assert!(a.dropped[0].detail.contains("layer 2"), "{}", a.dropped[0].detail);
        assert!(judge(&[base, object, other]).dropped.is_empty());
    }

    #[test]
    fn at_least_one_layer_is_kept() {
        // Both are empty: the one with the most visible pixels stays (the last on a tie).
        let a = judge(&[rect([0, 0, 0, 0], 0, W, 0, H), rect([5, 5, 5, 7], 0, W, 0, H)]);
        assert_eq!(a.kept, [2]);
        assert_eq!(reasons(&a), [(1, DropReason::Empty)]);
    }

    #[test]
    fn the_report_serialises_with_lowercase_reasons() {
        let a = judge(&[rect([1, 1, 1, 255], 0, W, 0, H), rect([0, 0, 0, 0], 0, W, 0, H)]);
        let json = serde_json::to_value(&a).unwrap();
        assert_eq!(json["dropped"][0]["reason"], "empty");
        assert_eq!(json["kept"], serde_json::json!([1]));
    }
}
