//! The parameters panel: prompt, layers, resolution, steps, CFG and seed.

use leptos::prelude::*;

use super::ModelMode;

/// What the user set; `None` seed = random.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    pub prompt: String,
    pub layer_num: u32,
    pub resolution: u32,
    pub steps: u32,
    pub cfg_scale: f32,
    pub seed: Option<u64>,
}

impl Default for Params {
    fn default() -> Self {
        Self { prompt: String::new(), layer_num: 4, resolution: 640, steps: 50, cfg_scale: 4.0, seed: None }
    }
}

#[component]
pub fn ParamsPanel(params: RwSignal<Params>, mode: RwSignal<ModelMode>) -> impl IntoView {
    view! {
        <form class="params" aria-label="Parameters" on:submit=|ev| ev.prevent_default()>
            <label for="prompt">"Prompt"</label>
            <textarea
                id="prompt"
                rows="3"
                placeholder="Describe the scene, not the layers (leave empty to caption automatically)"
                prop:value=move || params.with(|p| p.prompt.clone())
                on:input=move |ev| params.update(|p| p.prompt = event_target_value(&ev))
            ></textarea>
            <label for="layers">"Layers"</label>
            <input
                id="layers"
                type="number"
                min="2"
                max="10"
                prop:value=move || params.with(|p| p.layer_num.to_string())
                on:change=move |ev| {
                    if let Ok(n) = event_target_value(&ev).parse::<u32>() {
                        params.update(|p| p.layer_num = n.clamp(2, 10));
                    }
                }
            />
            <p class="mode-note">
                {move || match mode.get() {
                    ModelMode::QwenImage => "Qwen-Image-Layered mode".to_string(),
                    ModelMode::ZImage => "Z-Image mode is not available yet".to_string(),
                }}
            </p>
        </form>
    }
}
