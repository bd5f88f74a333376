//! The stage: a canvas that composites the visible layers in order over a checkerboard, redrawn
//! on every toggle, reorder, opacity change or edit; zoom to fit or 100 %; and the compositing
//! time, measured with `performance.now()`. It draws with WebGL2 where a GPU runs it, else in
//! WASM with the same code as the server (`crate::render`); a change to one layer blends three
//! images (the caches below and above it, made when the pointer comes onto the layer's row).

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
            Self::STEPS
                .iter()
                .copied()
                .find(|s| *s > now + 1e-6)
                .unwrap_or(*Self::STEPS.last().unwrap())
        } else {
            Self::STEPS
                .iter()
                .rev()
                .copied()
                .find(|s| *s < now - 1e-6)
                .unwrap_or(Self::STEPS[0])
        };
        Zoom::Scale(next)
    }

    pub fn label(self, fit_scale: f64) -> String {
        format!("{:.0} %", self.current_scale(fit_scale) * 100.0)
    }
}

/// One compositing measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct Timing {
    pub layers: usize,
    pub width: u32,
    pub height: u32,
    /// Compositing alone (WebGL2: until the GPU finished).
    pub compose_ms: f64,
    /// Compositing plus putting the pixels on the canvas.
    pub frame_ms: f64,
    /// "WASM" or "WebGL2", and what the draw did ("all layers", "3-image blend", …).
    pub path: &'static str,
    pub plan: &'static str,
}

impl Timing {
    pub fn text(&self) -> String {
        format!(
            "Composited {} layer{} ({}×{}) in {:.1} ms · drawn in {:.1} ms · {}, {}",
            self.layers,
            if self.layers == 1 { "" } else { "s" },
            self.width,
            self.height,
            self.compose_ms,
            self.frame_ms,
            self.path,
            self.plan,
        )
    }
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

    // The image's size: what the layout depends on (a toggle or a fade leaves it alone).
    let size = Memo::new(move |_| result.with(|r| r.as_ref().map(|d| (d.stack.width(), d.stack.height()))));

    #[cfg(feature = "hydrate")]
    {
        use crate::render::{Path, Renderer};
        use std::cell::RefCell;
        use std::rc::Rc;
        let AppState { pointed_layer, .. } = expect_context::<AppState>();
        let renderer = Rc::new(RefCell::new(None::<Renderer>));
        let gl_lost = std::cell::Cell::new(false);
        let requested = crate::render::requested_path();
        let draw_renderer = Rc::clone(&renderer);
        Effect::new(move |_| {
            let Some(canvas) = canvas_ref.get() else { return };
            let mode = view_mode.get();
            result.with(|r| {
                let Some(d) = r else { return };
                let (w, h) = (d.stack.width(), d.stack.height());
                let mut slot = draw_renderer.borrow_mut();
                // Twice at most: after a lost WebGL context, again with WASM.
                for _ in 0..2 {
                    if !slot.as_ref().is_some_and(|r| r.is_for(&canvas)) {
                        let path = if gl_lost.get() { Some(Path::Wasm) } else { requested };
                        *slot = Some(Renderer::new(&canvas, path));
                    }
                    let renderer = slot.as_mut().expect("bound above");
                    let _ = canvas.set_attribute("data-compositor", renderer.path().label());
                    let outcome = match mode {
                        StageView::ModelComposite => renderer.draw_image(w, h, &d.composite.rgba),
                        StageView::Layers => {
                            let layers = d.stack.to_stage();
                            renderer.draw(w, h, &layers).map(|drawn| {
                                timing.set(Some(Timing {
                                    layers: layers.iter().filter(|l| l.effective().is_some()).count(),
                                    width: w,
                                    height: h,
                                    compose_ms: drawn.compose_ms,
                                    frame_ms: drawn.frame_ms,
                                    path: renderer.path().label(),
                                    plan: drawn.plan.label(),
                                }))
                            })
                        }
                    };
                    if renderer.is_lost() {
                        leptos::logging::warn!("the WebGL context was lost; compositing with WASM");
                        gl_lost.set(true);
                        *slot = None;
                        continue;
                    }
                    // When the canvas was last drawn (`performance.now()`), for measuring the
                    // time from an input to the drawn canvas.
                    let _ = canvas.set_attribute("data-drawn-at", &format!("{:.3}", crate::browser::now_ms()));
                    draw_error.set(outcome.err());
                    break;
                }
            });
        });
        // The pointer (or the keyboard focus) came onto a layer's row: make the caches for a
        // change to that layer while the user moves to its controls, so the change itself only
        // blends three images.
        Effect::new(move |_| {
            let Some(id) = pointed_layer.get() else { return };
            if view_mode.get_untracked() != StageView::Layers {
                return;
            }
            let renderer = Rc::clone(&renderer);
            leptos::prelude::set_timeout(
                move || {
                    if pointed_layer.get_untracked() != Some(id) {
                        return; // the pointer moved on
                    }
                    result.with_untracked(|r| {
                        let Some(d) = r else { return };
                        let Some(pivot) = d.stack.position(id) else { return };
                        if let Some(renderer) = renderer.borrow_mut().as_mut() {
                            let layers = d.stack.to_stage();
                            if let Err(e) = renderer.prepare(d.stack.width(), d.stack.height(), &layers, pivot - 1) {
                                leptos::logging::warn!("preparing the canvas caches: {e}");
                            }
                        }
                    });
                },
                std::time::Duration::ZERO,
            );
        });
        // The scale that fits the image in the wrapper (up or down), recomputed when the result
        // or the window size changes.
        let refit = move || {
            let Some(wrap) = wrap_ref.get_untracked() else { return };
            let Some((w, h)) = size.get_untracked() else { return };
            let avail_w = f64::from((wrap.client_width() - FIT_MARGIN).max(16));
            let avail_h = f64::from((wrap.client_height() - FIT_MARGIN).max(16));
            fit_scale.set((avail_w / f64::from(w)).min(avail_h / f64::from(h)));
        };
        // (Tracking the size, not the stack: reading the wrapper's size forces a layout, which
        // would cost every toggle a millisecond.)
        Effect::new(move |_| {
            wrap_ref.track();
            size.track();
            refit();
        });
        let resize = window_event_listener(leptos::ev::resize, move |_| refit());
        on_cleanup(move || resize.remove());
    }

    let canvas_style = move || match size.get() {
        Some((w, h)) => {
            let s = zoom.get().current_scale(fit_scale.get());
            format!(
                "width:{}px;height:{}px",
                (f64::from(w) * s).round(),
                (f64::from(h) * s).round()
            )
        }
        None => String::new(),
    };
    let aria = move || {
        result.with(|r| match r {
            Some(d) => {
                let shown = d.stack.layers().iter().filter(|l| d.stack.effective(l).0).count();
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
                {move || timing.get().map(|t| t.text())}
            </p>
            {move || draw_error.get().map(|e| view! { <p class="error" role="alert">{e}</p> })}
        </section>
    }
    .into_any()
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
}
