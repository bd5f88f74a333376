//! The stage: a canvas that composites the visible layers in order (in WASM, with the same code
//! as the server) over a checkerboard, redrawn on every toggle, reorder, opacity change or edit;
//! zoom to fit or 100 %; and the compositing time, measured with `performance.now()`.

use leptos::prelude::*;

use super::AppState;

/// What the canvas shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageView {
    /// The visible layers, composited live.
    Layers,
    /// The model's own composite (index 0 of the response), for comparison.
    ModelComposite,
}

/// Pixels kept free around the image when it is fitted.
#[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
const FIT_MARGIN: i32 = 24;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Zoom {
    Fit,
    Scale(f64),
}

impl Zoom {
    pub const STEPS: [f64; 7] = [0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0];

    fn current_scale(self, fit_scale: f64) -> f64 {
        match self {
            Zoom::Fit => fit_scale,
            Zoom::Scale(s) => s,
        }
    }

    /// The next zoom step in or out from the current scale.
    pub fn step(self, fit_scale: f64, zoom_in: bool) -> Zoom {
        let now = self.current_scale(fit_scale);
        let next = if zoom_in {
            Self::STEPS.iter().copied().find(|s| *s > now + 1e-6).unwrap_or(*Self::STEPS.last().unwrap())
        } else {
            Self::STEPS.iter().rev().copied().find(|s| *s < now - 1e-6).unwrap_or(Self::STEPS[0])
        };
        Zoom::Scale(next)
    }

    pub fn label(self, fit_scale: f64) -> String {
        format!("{:.0} %", self.current_scale(fit_scale) * 100.0)
    }
}

/// One compositing measurement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    pub layers: usize,
    pub width: u32,
    pub height: u32,
    /// `Compositor::composite_into` alone.
    pub compose_ms: f64,
    /// Compositing plus `putImageData`.
    pub frame_ms: f64,
}

#[component]
pub fn Stage() -> impl IntoView {
    let AppState { result, .. } = expect_context::<AppState>();
    let view_mode = RwSignal::new(StageView::Layers);
    let zoom = RwSignal::new(Zoom::Fit);
    let timing = RwSignal::new(None::<Timing>);
    let draw_error = RwSignal::new(None::<String>);
    let canvas_ref = NodeRef::<leptos::html::Canvas>::new();
    let wrap_ref = NodeRef::<leptos::html::Div>::new();
    // The scale "fit" currently gives (for the zoom label and the +/− steps).
    let fit_scale = RwSignal::new(1.0f64);

    #[cfg(feature = "hydrate")]
    {
        use std::cell::RefCell;
        use std::rc::Rc;
        let compositor = Rc::new(RefCell::new((crate::compose::Compositor::default(), Vec::<u8>::new())));
        Effect::new(move |_| {
            let Some(canvas) = canvas_ref.get() else { return };
            let mode = view_mode.get();
            result.with(|r| {
                let Some(d) = r else { return };
                let (w, h) = (d.stack.width(), d.stack.height());
                let outcome = match mode {
                    StageView::ModelComposite => crate::browser::put_rgba(&canvas, w, h, &d.composite.rgba),
                    StageView::Layers => {
                        let mut guard = compositor.borrow_mut();
                        let (comp, out) = &mut *guard;
                        out.resize(w as usize * h as usize * 4, 0);
                        let layers = d.stack.to_composite();
                        let t0 = crate::browser::now_ms();
                        let composed = comp.composite_into(w, h, &layers, out).map_err(|e| e.to_string());
                        let t1 = crate::browser::now_ms();
                        let drawn = composed.and_then(|()| crate::browser::put_rgba(&canvas, w, h, out));
                        let t2 = crate::browser::now_ms();
                        timing.set(Some(Timing {
                            layers: layers.len(),
                            width: w,
                            height: h,
                            compose_ms: t1 - t0,
                            frame_ms: t2 - t0,
                        }));
                        drawn
                    }
                };
                draw_error.set(outcome.err());
            });
        });
        // The scale that fits the image in the wrapper (up or down), recomputed when the result
        // or the window size changes.
        let refit = move || {
            let Some(wrap) = wrap_ref.get_untracked() else { return };
            let Some((w, h)) = result.with_untracked(|r| r.as_ref().map(|d| (d.stack.width(), d.stack.height())))
            else {
                return;
            };
            let avail_w = f64::from((wrap.client_width() - FIT_MARGIN).max(16));
            let avail_h = f64::from((wrap.client_height() - FIT_MARGIN).max(16));
            fit_scale.set((avail_w / f64::from(w)).min(avail_h / f64::from(h)));
        };
        Effect::new(move |_| {
            wrap_ref.track();
            result.track();
            refit();
        });
        let resize = window_event_listener(leptos::ev::resize, move |_| refit());
        on_cleanup(move || resize.remove());
    }

    let size = move || result.with(|r| r.as_ref().map(|d| (d.stack.width(), d.stack.height())));
    let canvas_style = move || match size() {
        Some((w, h)) => {
            let s = zoom.get().current_scale(fit_scale.get());
            format!("width:{}px;height:{}px", (f64::from(w) * s).round(), (f64::from(h) * s).round())
        }
        None => String::new(),
    };
    let aria = move || {
        result.with(|r| match r {
            Some(d) => {
                let shown = d.stack.layers().iter().filter(|l| l.visible).count();
                match view_mode.get() {
                    StageView::Layers => format!("Composite of {shown} visible of {} layers", d.stack.len()),
                    StageView::ModelComposite => "The model's composite".to_string(),
                }
            }
            None => String::new(),
        })
    };

    view! {
        <section class="stage card" aria-labelledby="stage-title">
            <div class="stage-toolbar">
                <h2 id="stage-title" class="card-title">"Canvas"</h2>
                <div class="segmented small" role="group" aria-label="Canvas shows">
                    <button
                        type="button"
                        aria-pressed=move || (view_mode.get() == StageView::Layers).to_string()
                        on:click=move |_| view_mode.set(StageView::Layers)
                    >
                        "Layers"
                    </button>
                    <button
                        type="button"
                        aria-pressed=move || (view_mode.get() == StageView::ModelComposite).to_string()
                        title="The flattened image the model returned, for comparison"
                        on:click=move |_| view_mode.set(StageView::ModelComposite)
                    >
                        "Model composite"
                    </button>
                </div>
                <div class="zoom" role="group" aria-label="Zoom">
                    <button
                        type="button"
                        class="icon-button"
                        aria-label="Zoom out"
                        on:click=move |_| zoom.update(|z| *z = z.step(fit_scale.get_untracked(), false))
                    >
                        "−"
                    </button>
                    <output class="zoom-level" aria-live="polite">{move || zoom.get().label(fit_scale.get())}</output>
                    <button
                        type="button"
                        class="icon-button"
                        aria-label="Zoom in"
                        on:click=move |_| zoom.update(|z| *z = z.step(fit_scale.get_untracked(), true))
                    >
                        "+"
                    </button>
                    <button
                        type="button"
                        aria-pressed=move || (zoom.get() == Zoom::Fit).to_string()
                        on:click=move |_| zoom.set(Zoom::Fit)
                    >
                        "Fit"
                    </button>
                    <button
                        type="button"
                        aria-pressed=move || (zoom.get() == Zoom::Scale(1.0)).to_string()
                        on:click=move |_| zoom.set(Zoom::Scale(1.0))
                    >
                        "100 %"
                    </button>
                </div>
            </div>
            <div class="canvas-wrap" class:fit=move || zoom.get() == Zoom::Fit node_ref=wrap_ref>
                <canvas
                    id="composite-canvas"
                    class="checkerboard"
                    node_ref=canvas_ref
                    role="img"
                    aria-label=aria
                    style=canvas_style
                ></canvas>
            </div>
            <p class="timing" id="compose-time" aria-live="off">
                {move || {
                    timing
                        .get()
                        .map(|t| {
                            format!(
                                "Composited {} layer{} ({}×{}) in {:.1} ms · drawn in {:.1} ms",
                                t.layers,
                                if t.layers == 1 { "" } else { "s" },
                                t.width,
                                t.height,
                                t.compose_ms,
                                t.frame_ms,
                            )
                        })
                }}
            </p>
            {move || draw_error.get().map(|e| view! { <p class="error" role="alert">{e}</p> })}
        </section>
    }
    .into_any()
}

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
    (median, times.first().copied().unwrap_or(0.0), times.last().copied().unwrap_or(0.0))
}

/// Number of layers and their side in the speed test (the target: ≤ 16 ms for 10 × 1024²).
pub const BENCH_LAYERS: usize = 10;
pub const BENCH_SIZE: u32 = 1024;
const BENCH_RUNS: usize = 15;

/// A speed test of browser compositing at the size the target is stated for.
#[component]
pub fn Benchmark() -> impl IntoView {
    let outcome = RwSignal::new(None::<String>);
    let running = RwSignal::new(false);
    let run = move |_| {
        running.set(true);
        outcome.set(Some("Measuring…".into()));
        #[cfg(feature = "hydrate")]
        leptos::task::spawn_local(async move {
            // Let "Measuring…" paint first.
            crate::browser::sleep_ms(30).await;
            outcome.set(Some(measure()));
            running.set(false);
        });
    };
    view! {
        <details class="benchmark">
            <summary>"Compositing speed"</summary>
            <p class="hint">
                {format!(
                    "Composites {BENCH_LAYERS} layers of {BENCH_SIZE}×{BENCH_SIZE} in this browser, {BENCH_RUNS} times for each of two scenes: typical (an opaque background, objects, translucent veils) and worst case (every pixel of every layer translucent). Target: 16 ms, one frame."
                )}
            </p>
            <button type="button" class="secondary" id="bench-button" disabled=move || running.get() on:click=run>
                "Measure"
            </button>
            <output id="bench-result" aria-live="polite">{move || outcome.get()}</output>
        </details>
    }
    .into_any()
}

#[cfg(feature = "hydrate")]
fn measure() -> String {
    use crate::compose::{Compositor, LayerPixels};
    let canvas = crate::browser::scratch_canvas();
    let mut lines = Vec::new();
    for (scene, label) in [(BenchScene::Typical, "typical"), (BenchScene::Worst, "worst case")] {
        let layers = bench_layers(BENCH_LAYERS, BENCH_SIZE, scene);
        let refs: Vec<LayerPixels<'_>> = layers.iter().map(|l| LayerPixels { rgba: l, opacity: 1.0 }).collect();
        let mut out = vec![0u8; (BENCH_SIZE * BENCH_SIZE * 4) as usize];
        let mut comp = Compositor::default();
        let _ = comp.composite_into(BENCH_SIZE, BENCH_SIZE, &refs, &mut out); // warm-up
        let mut compose = Vec::with_capacity(BENCH_RUNS);
        let mut frame = Vec::with_capacity(BENCH_RUNS);
        for _ in 0..BENCH_RUNS {
            let t0 = crate::browser::now_ms();
            if let Err(e) = comp.composite_into(BENCH_SIZE, BENCH_SIZE, &refs, &mut out) {
                return format!("failed: {e}");
            }
            let t1 = crate::browser::now_ms();
            if let Some(c) = &canvas {
                let _ = crate::browser::put_rgba(c, BENCH_SIZE, BENCH_SIZE, &out);
            }
            let t2 = crate::browser::now_ms();
            compose.push(t1 - t0);
            frame.push(t2 - t0);
        }
        let (median, best, worst) = summarize(&mut compose);
        let (frame_median, _, _) = summarize(&mut frame);
        lines.push(format!(
            "{label}: median {median:.1} ms (best {best:.1}, worst {worst:.1}), with drawing {frame_median:.1} ms"
        ));
    }
    format!("{BENCH_LAYERS} × {BENCH_SIZE}² — {}", lines.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zoom_steps_from_fit_to_the_next_stop() {
        assert_eq!(Zoom::Fit.step(0.6, true), Zoom::Scale(0.75));
        assert_eq!(Zoom::Fit.step(0.6, false), Zoom::Scale(0.5));
        assert_eq!(Zoom::Scale(4.0).step(1.0, true), Zoom::Scale(4.0));
        assert_eq!(Zoom::Scale(0.25).step(1.0, false), Zoom::Scale(0.25));
        assert_eq!(Zoom::Scale(1.0).step(1.0, true), Zoom::Scale(1.5));
        assert_eq!(Zoom::Fit.label(0.625), "62 %");
    }

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
}
