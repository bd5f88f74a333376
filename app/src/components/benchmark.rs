//! The app's speed test of compositing (issue 24): 10 layers of 1024², through both of the
//! canvas's compositors (WASM and WebGL2, when the browser has it), for the interactions that
//! matter: a full recomposite (the first draw, a reorder), the first change to a layer (its caches
//! are made), and a toggle or an opacity step once they are. It also checks the pixels: the WASM
//! path against its portable kernels (bit for bit) and against the compositor before issue 24,
//! and WebGL2 against WASM (within 1/255). "Show the test scene" puts the same layers in the page.

use leptos::prelude::*;

use super::AppState;

/// Synthetic layers for the speed test.
///
/// `Typical` looks like a decomposition: an opaque background (Layer 1), then objects (discs
/// with a soft edge over transparency), and every third layer a full-frame translucent veil
/// (haze, shadow) that blends at every pixel. `Worst` makes every pixel of every layer
/// translucent, so nothing can be skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchScene {
    Typical,
    Worst,
}

pub fn bench_layers(count: usize, size: u32, scene: BenchScene) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            let s = f64::from(size);
            let (cx, cy) = (s * (0.2 + 0.06 * i as f64), s * (0.8 - 0.05 * i as f64));
            let r = s * 0.3;
            let colour = [(40 * i) as u8, (255 - 20 * i) as u8, (90 + 15 * i) as u8];
            let mut px = vec![0u8; (size * size * 4) as usize];
            for y in 0..size {
                for x in 0..size {
                    let a = match scene {
                        BenchScene::Worst => 1 + ((x + y + i as u32) % 254) as u8,
                        BenchScene::Typical if i == 0 => 255,
                        BenchScene::Typical if i % 3 == 2 => 96,
                        BenchScene::Typical => {
                            let d = ((f64::from(x) - cx).powi(2) + (f64::from(y) - cy).powi(2)).sqrt();
                            ((r - d) * 64.0).clamp(0.0, 255.0) as u8 // a 4-pixel soft edge
                        }
                    };
                    let o = ((y * size + x) * 4) as usize;
                    px[o..o + 4].copy_from_slice(&[colour[0], colour[1], colour[2], a]);
                }
            }
            px
        })
        .collect()
}

/// The typical test scene as a decomposition (layers named Layer 1 …, PNGs for thumbnails and
/// export), so the speed test's layers can be shown in the page and changed by hand.
pub fn bench_decomposition(count: usize, size: u32) -> Result<crate::layer_stack::Decomposition, String> {
    use crate::image_data::{encode_png, png_data_url};
    use crate::layer_stack::{Bitmap, Decomposition, LayerStack};
    let bitmap = |rgba: Vec<u8>| -> Result<Bitmap, String> {
        let img = image::RgbaImage::from_raw(size, size, rgba).ok_or("the test layer has the wrong size")?;
        let url = png_data_url(&encode_png(&img).map_err(|e| e.error)?);
        Ok(Bitmap::from_rgba(size, size, img.into_raw(), url))
    };
    let layers = bench_layers(count, size, BenchScene::Typical)
        .into_iter()
        .enumerate()
        .map(|(i, rgba)| Ok((format!("Layer {}", i + 1), bitmap(rgba)?)))
        .collect::<Result<Vec<_>, String>>()?;
    let stack = LayerStack::new(layers).map_err(|e| e.to_string())?;
    let composite = bitmap(stack.flatten().into_raw())?;
    Ok(Decomposition { composite, stack })
}

/// Median, best and worst of a set of times.
pub fn summarize(times: &mut [f64]) -> (f64, f64, f64) {
    times.sort_by(|a, b| a.total_cmp(b));
    let median = if times.is_empty() {
        0.0
    } else if times.len() % 2 == 1 {
        times[times.len() / 2]
    } else {
        (times[times.len() / 2 - 1] + times[times.len() / 2]) / 2.0
    };
    (
        median,
        times.first().copied().unwrap_or(0.0),
        times.last().copied().unwrap_or(0.0),
    )
}

/// Number of layers and their side in the speed test (the target: ≤ 16 ms for 10 × 1024²).
pub const BENCH_LAYERS: usize = 10;
pub const BENCH_SIZE: u32 = 1024;
const BENCH_RUNS: usize = 15;

/// A speed test of browser compositing at the size the target is stated for.
#[component]
pub fn Benchmark() -> impl IntoView {
    let AppState { result, run_info, .. } = expect_context::<AppState>();
    let outcome = RwSignal::new(None::<Result<BenchReport, String>>);
    let running = RwSignal::new(false);
    let scene_error = RwSignal::new(None::<String>);
    let run = move |_| {
        running.set(true);
        outcome.set(None);
        #[cfg(feature = "hydrate")]
        leptos::task::spawn_local(async move {
            // Let "Measuring…" paint first.
            crate::browser::sleep_ms(30).await;
            outcome.set(Some(measure().await));
            running.set(false);
        });
    };
    let show_scene = move |_| {
        #[cfg(feature = "hydrate")]
        match bench_decomposition(BENCH_LAYERS, BENCH_SIZE) {
            Ok(d) => {
                run_info.set(None);
                result.set(Some(d));
                scene_error.set(None);
            }
            Err(e) => scene_error.set(Some(e)),
        }
        #[cfg(not(feature = "hydrate"))]
        let _ = (result, run_info);
    };
    view! {
        <details class="benchmark">
            <summary>"Compositing speed"</summary>
            <p class="hint">
                {format!(
                    "Composites {BENCH_LAYERS} layers of {BENCH_SIZE}×{BENCH_SIZE} in this browser, {BENCH_RUNS} times each, with WASM and with WebGL2: everything again (typical scene: an opaque background, objects, translucent veils; worst case: every pixel of every layer translucent), the first change to a layer, and a toggle or an opacity step after it. Target: 16 ms, one frame."
                )}
            </p>
            <button type="button" class="secondary" id="bench-button" disabled=move || running.get() on:click=run>
                "Measure"
            </button>
            " "
            <button
                type="button"
                class="secondary"
                id="bench-scene"
                title="Replaces the results with the test scene, to try hiding, fading and reordering its layers"
                on:click=show_scene
            >
                "Show the test scene"
            </button>
            {move || scene_error.get().map(|e| view! { <p class="error" role="alert">{e}</p> })}
            <output
                id="bench-result"
                aria-live="polite"
                data-report=move || {
                    outcome.with(|o| {
                        o.as_ref().and_then(|r| r.as_ref().ok()).and_then(|r| serde_json::to_string(r).ok())
                    })
                }
            >
                {move || match outcome.get() {
                    None if running.get() => "Measuring…".to_string(),
                    None => String::new(),
                    Some(Ok(r)) => r.text(),
                    Some(Err(e)) => format!("The measurement failed: {e}"),
                }}
            </output>
        </details>
    }
    .into_any()
}

/// What the speed test found.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct BenchReport {
    pub lines: Vec<BenchLine>,
    /// The WebGL renderer, or why WebGL2 was not measured.
    pub webgl: String,
    pub checks: Vec<BenchCheck>,
}

/// Times of one interaction on one path, in ms.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct BenchLine {
    /// "WASM" or "WebGL2".
    pub path: String,
    /// "full", "full-worst", "first-change", "toggle", "opacity".
    pub what: String,
    /// Compositing plus drawing on a canvas (WebGL2: until the GPU finished).
    pub median: f64,
    pub best: f64,
    pub worst: f64,
    /// Compositing alone (median; the same as `median` for WebGL2).
    pub compose: f64,
}

/// A comparison of two compositors' pixels: the largest difference, in steps of 1/255.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct BenchCheck {
    pub what: String,
    pub max_diff: u8,
    /// The most it may be (0: bit-identical).
    pub limit: u8,
}

impl BenchLine {
    fn label(&self) -> &str {
        match self.what.as_str() {
            "full" => "everything, typical",
            "full-worst" => "everything, worst case",
            "first-change" => "first change to a layer",
            "toggle" => "toggle",
            "opacity" => "opacity step",
            other => other,
        }
    }
}

impl BenchReport {
    pub fn text(&self) -> String {
        let mut out = format!("{BENCH_LAYERS} × {BENCH_SIZE}², input to drawn canvas, median (best–worst) ms:");
        for l in &self.lines {
            out.push_str(&format!(
                "\n{} {}: {:.1} ({:.1}–{:.1})",
                l.path,
                l.label(),
                l.median,
                l.best,
                l.worst
            ));
        }
        out.push_str(&format!("\nWebGL2: {}", self.webgl));
        for c in &self.checks {
            out.push_str(&format!(
                "\n{}: {} {}/255 (limit {})",
                c.what,
                if c.max_diff <= c.limit { "ok," } else { "FAILED," },
                c.max_diff,
                c.limit
            ));
        }
        out
    }
}

#[cfg(feature = "hydrate")]
async fn measure() -> Result<BenchReport, String> {
    use crate::compose::reference::{self, max_diff};
    use crate::compose::LayerPixels;
    use crate::render::{Path, Renderer};
    use std::sync::Arc;

    let n = BENCH_SIZE;
    let scene = |s| -> Vec<(Arc<[u8]>, bool, f32)> {
        bench_layers(BENCH_LAYERS, n, s)
            .into_iter()
            .map(|l| (Arc::from(l), true, 1.0))
            .collect()
    };
    let typical = scene(BenchScene::Typical);
    let worst = scene(BenchScene::Worst);
    fn stage(s: &[(Arc<[u8]>, bool, f32)]) -> Vec<crate::compose::live::StageLayer<'_>> {
        s.iter()
            .map(|(p, visible, opacity)| crate::compose::live::StageLayer {
                pixels: p,
                visible: *visible,
                opacity: *opacity,
            })
            .collect()
    }
    let visible = |s: &[(Arc<[u8]>, bool, f32)]| -> Vec<u8> {
        let layers: Vec<LayerPixels<'_>> = s
            .iter()
            .filter(|l| l.1)
            .map(|(p, _, opacity)| LayerPixels {
                rgba: p,
                opacity: *opacity,
            })
            .collect();
        let mut out = vec![0u8; (n * n * 4) as usize];
        reference::composite(n, n, &layers, &mut out).expect("the test layers have the right size");
        out
    };
    let mut report = BenchReport::default();
    // The WASM path's stack and pixels at the end, for comparing WebGL2's with.
    let mut wasm_pixels = None;
    let document = web_sys::window().and_then(|w| w.document()).ok_or("no document")?;
    for path in [Path::Wasm, Path::Webgl2] {
        use wasm_bindgen::JsCast;
        let canvas: web_sys::HtmlCanvasElement = document
            .create_element("canvas")
            .map_err(|_| "no canvas")?
            .dyn_into()
            .map_err(|_| "no canvas")?;
        let mut r = Renderer::new(&canvas, Some(path));
        if r.path() != path {
            report.webgl = format!("not measured: {}", r.gl_unavailable.clone().unwrap_or_default());
            continue;
        }
        if let Some(name) = r.gl_renderer() {
            report.webgl = name;
        }
        let line = |what: &str, times: &[(f64, f64)]| {
            let mut frame: Vec<f64> = times.iter().map(|t| t.1).collect();
            let mut compose: Vec<f64> = times.iter().map(|t| t.0).collect();
            let (median, best, worst) = summarize(&mut frame);
            BenchLine {
                path: path.label().to_string(),
                what: what.to_string(),
                median,
                best,
                worst,
                compose: summarize(&mut compose).0,
            }
        };
        // Everything again, each scene (the first draw warms up).
        for (what, layers) in [("full", &typical), ("full-worst", &worst)] {
            let mut times = Vec::new();
            for i in 0..=BENCH_RUNS {
                r.invalidate();
                let d = r.draw(n, n, &stage(layers))?;
                if i > 0 {
                    times.push((d.compose_ms, d.frame_ms));
                }
            }
            report.lines.push(line(what, &times));
            if path == Path::Wasm {
                let out = r.read_back(n, n, &stage(layers))?;
                let mut portable = vec![0u8; out.len()];
                let refs: Vec<LayerPixels<'_>> = layers
                    .iter()
                    .map(|(p, _, o)| LayerPixels { rgba: p, opacity: *o })
                    .collect();
                reference::portable(n, n, &refs, &mut portable).map_err(|e| e.to_string())?;
                report.checks.push(BenchCheck {
                    what: format!("WASM ({what}) = portable kernels"),
                    max_diff: max_diff(&out, &portable),
                    limit: 0,
                });
                report.checks.push(BenchCheck {
                    what: format!("WASM ({what}) vs the compositor before issue 24"),
                    max_diff: max_diff(&out, &visible(layers)),
                    limit: 1,
                });
            }
            crate::browser::sleep_ms(0).await;
        }
        let mut s = typical.clone();
        // The first change to a layer: a different layer each time, so its caches are made.
        let mut times = Vec::new();
        for i in 0..=BENCH_RUNS {
            let k = i % BENCH_LAYERS;
            s[k].1 = !s[k].1;
            let d = r.draw(n, n, &stage(&s))?;
            if i > 0 {
                times.push((d.compose_ms, d.frame_ms));
            }
        }
        report.lines.push(line("first-change", &times));
        crate::browser::sleep_ms(0).await;
        // A toggle of the middle layer, and an opacity drag of the one above it, with their
        // caches made beforehand (as the pointer on the row does).
        for (what, k) in [("toggle", 4usize), ("opacity", 5)] {
            r.prepare(n, n, &stage(&s), k)?;
            let mut times = Vec::new();
            for i in 0..BENCH_RUNS {
                if what == "toggle" {
                    s[k].1 = !s[k].1;
                } else {
                    s[k].2 = 1.0 - 0.05 * (i + 1) as f32;
                }
                let d = r.draw(n, n, &stage(&s))?;
                times.push((d.compose_ms, d.frame_ms));
            }
            report.lines.push(line(what, &times));
            crate::browser::sleep_ms(0).await;
        }
        // The pixels of the last state: from the caches, and composited again.
        let cached = r.read_back(n, n, &stage(&s))?;
        r.invalidate();
        r.draw(n, n, &stage(&s))?;
        let full = r.read_back(n, n, &stage(&s))?;
        match path {
            Path::Wasm => {
                report.checks.push(BenchCheck {
                    what: "WASM 3-image blend vs everything again".into(),
                    max_diff: max_diff(&cached, &full),
                    limit: 1,
                });
                report.checks.push(BenchCheck {
                    what: "WASM (changed stack) vs the compositor before issue 24".into(),
                    max_diff: max_diff(&full, &visible(&s)),
                    limit: 1,
                });
                wasm_pixels = Some((s.clone(), cached, full));
            }
            Path::Webgl2 => {
                if let Some((ws, wasm_cached, wasm_full)) = &wasm_pixels {
                    if ws == &s {
                        report.checks.push(BenchCheck {
                            what: "WebGL2 vs WASM, 3-image blend".into(),
                            max_diff: max_diff(&cached, wasm_cached),
                            limit: 1,
                        });
                        report.checks.push(BenchCheck {
                            what: "WebGL2 vs WASM, everything again".into(),
                            max_diff: max_diff(&full, wasm_full),
                            limit: 1,
                        });
                    }
                }
                // The worst-case scene too: every pixel of every layer translucent.
                r.invalidate();
                r.draw(n, n, &stage(&worst))?;
                let gl_worst = r.read_back(n, n, &stage(&worst))?;
                report.checks.push(BenchCheck {
                    what: "WebGL2 (worst case) vs the compositor before issue 24".into(),
                    max_diff: max_diff(&gl_worst, &visible(&worst)),
                    limit: 1,
                });
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_scenes_have_the_alpha_they_claim() {
        let alphas = |l: &Vec<u8>| l.chunks_exact(4).map(|p| p[3]).collect::<Vec<_>>();
        let typical = bench_layers(4, 64, BenchScene::Typical);
        assert_eq!(typical.len(), 4);
        assert!(typical.iter().all(|l| l.len() == 64 * 64 * 4));
        assert!(alphas(&typical[0]).iter().all(|a| *a == 255), "opaque background");
        let disc = alphas(&typical[1]);
        assert!(disc.contains(&0) && disc.contains(&255) && disc.iter().any(|a| *a > 0 && *a < 255));
        assert!(alphas(&typical[2]).iter().all(|a| *a == 96));
        let worst = bench_layers(3, 64, BenchScene::Worst);
        assert!(worst.iter().all(|l| alphas(l).iter().all(|a| *a > 0 && *a < 255)));
    }

    #[test]
    fn summary_is_median_best_worst() {
        assert_eq!(summarize(&mut [3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert_eq!(summarize(&mut [4.0, 1.0, 2.0, 3.0]), (2.5, 1.0, 4.0));
        assert_eq!(summarize(&mut []), (0.0, 0.0, 0.0));
    }

    #[test]
    fn the_test_scene_is_a_decomposition_of_the_typical_layers() {
        let d = bench_decomposition(3, 16).unwrap();
        assert_eq!(d.stack.len(), 3);
        assert_eq!(d.stack.layers()[2].name, "Layer 3");
        let layers = bench_layers(3, 16, BenchScene::Typical);
        assert_eq!(&*d.stack.layers()[1].current().bitmap.rgba, &layers[1][..]);
        assert_eq!(&d.composite.rgba[..], d.stack.flatten().as_raw().as_slice());
        assert!(d.stack.layers()[0]
            .current()
            .bitmap
            .png_bytes()
            .unwrap()
            .starts_with(b"\x89PNG"));
    }

    #[test]
    fn the_report_reads_as_lines_and_flags_a_failed_check() {
        let r = BenchReport {
            lines: vec![BenchLine {
                path: "WASM".into(),
                what: "toggle".into(),
                median: 4.25,
                best: 4.0,
                worst: 9.0,
                compose: 3.0,
            }],
            webgl: "not measured: no WebGL2".into(),
            checks: vec![BenchCheck {
                what: "WebGL2 vs WASM".into(),
                max_diff: 2,
                limit: 1,
            }],
        };
        assert_eq!(
            r.text(),
            "10 × 1024², input to drawn canvas, median (best–worst) ms:\nWASM toggle: 4.2 (4.0–9.0)\nWebGL2: not measured: no WebGL2\nWebGL2 vs WASM: FAILED, 2/255 (limit 1)"
        );
    }
}
