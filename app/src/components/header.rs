//! The top bar: product name and the Qwen-Image / Z-Image mode toggle.

use leptos::prelude::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelMode {
    QwenImage,
    ZImage,
}

impl ModelMode {
    pub fn label(self) -> &'static str {
        match self {
            ModelMode::QwenImage => "Qwen-Image",
            ModelMode::ZImage => "Z-Image",
        }
    }
}

#[component]
pub fn Header(mode: RwSignal<ModelMode>) -> impl IntoView {
    let button = move |m: ModelMode| {
        view! {
            <button
                type="button"
                class="mode-button"
                aria-pressed=move || (mode.get() == m).to_string()
                on:click=move |_| mode.set(m)
            >
                {m.label()}
            </button>
        }
    };
    view! {
        <header class="topbar">
            <h1>"Qwen Layers"</h1>
            <p class="tagline">"Split an image into editable RGBA layers"</p>
            <div class="mode-toggle" role="group" aria-label="Model">
                {button(ModelMode::QwenImage)}
                {button(ModelMode::ZImage)}
            </div>
        </header>
    }
    .into_any()
}
