//! The results area: an empty state until a decomposition arrives, then the canvas, the layer
//! panel and export.

use leptos::prelude::*;

use super::canvas::Stage;
use super::export_bar::ExportBar;
use super::layers::LayerPanel;
use super::run::{RunProgress, RunState};
use super::AppState;

#[component]
pub fn ResultsArea() -> impl IntoView {
    let AppState { result, run, .. } = expect_context::<AppState>();
    view! {
        <section class="results" aria-label="Results">
            // A run shows here, where its layers will appear (above the previous ones, if any).
            <RunProgress/>
            <Show
                when=move || result.with(Option::is_some)
                fallback=move || {
                    view! {
                        <div class="empty-state card" class:hidden=move || run.with(RunState::is_busy)>
                            <div class="empty-illustration" aria-hidden="true">
                                <span></span>
                                <span></span>
                                <span></span>
                            </div>
                            <h2>"Your layers appear here"</h2>
                            <p class="hint">
                                "Choose an image and press “Decompose Image”. Layers appear here, Layer 1 at the bottom of the stack; "
                                "you can hide, reorder, fade, edit and export them."
                            </p>
                        </div>
                    }
                }
            >
                <Stage/>
                <div class="side">
                    <LayerPanel/>
                    <ExportBar/>
                </div>
            </Show>
        </section>
    }
    .into_any()
}
