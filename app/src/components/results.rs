//! The results area: decompose button, progress, and the returned layers.

use leptos::prelude::*;

use super::{ModelMode, Params, UploadedImage};

#[component]
pub fn ResultsArea(
    image: RwSignal<Option<UploadedImage>>,
    params: RwSignal<Params>,
    mode: RwSignal<ModelMode>,
) -> impl IntoView {
    let _ = params;
    let disabled = move || image.with(Option::is_none) || mode.get() != ModelMode::QwenImage;
    view! {
        <section class="results" aria-label="Results">
            <button type="button" class="primary" disabled=disabled>
                "Decompose Image"
            </button>
            <p class="hint">"Layers appear here, Layer 1 at the bottom of the stack."</p>
        </section>
    }
}
