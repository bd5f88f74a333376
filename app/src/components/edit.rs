//! The edit box of a layer: an instruction for Qwen-Image-Edit-2509; the result replaces the
//! layer (the old pixels stay for before/after and undo).

use leptos::prelude::*;

use super::AppState;

#[component]
pub fn EditBox(id: u32, editing: RwSignal<Option<u32>>) -> impl IntoView {
    let state = expect_context::<AppState>();
    let AppState { edit_status, .. } = state;
    let instruction = RwSignal::new(String::new());
    let keep_alpha = RwSignal::new(true);
    // "Fast edit (8 steps)": the server's fast edit preset (a step-distilled LoRA, no CFG), shown
    // when its config has one; off by default.
    let fast = RwSignal::new(false);
    let fast_preset = move || {
        state.config.with(|c| {
            c.as_ref().and_then(|c| {
                c.adapters
                    .presets
                    .iter()
                    .find(|p| p.name == crate::api_lora::FAST_EDIT_PRESET)
                    .cloned()
            })
        })
    };
    let busy = RwSignal::new(false);
    let error = RwSignal::new(None::<String>);
    let field_id = format!("layer-{id}-instruction");

    // Opening the box puts the cursor in the instruction (`autofocus` only works at page load).
    #[cfg(feature = "hydrate")]
    Effect::new(move |_| {
        request_animation_frame(move || crate::browser::focus(&format!("layer-{id}-instruction")));
    });
    let close = move || {
        editing.set(None);
        #[cfg(feature = "hydrate")]
        request_animation_frame(move || crate::browser::focus(&format!("layer-{id}-edit")));
    };
    let submit = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let prompt = instruction.get_untracked().trim().to_string();
        if prompt.is_empty() {
            error.set(Some("Describe the change first, e.g. “make the sofa blue”.".into()));
            return;
        }
        if !busy.get_untracked() {
            #[cfg(feature = "hydrate")]
            {
                let preset = (fast.get_untracked() && fast_preset().is_some_and(|p| p.available))
                    .then(|| crate::api_lora::FAST_EDIT_PRESET.to_string());
                run_edit(
                    state,
                    id,
                    prompt,
                    keep_alpha.get_untracked(),
                    preset,
                    busy,
                    error,
                    editing,
                );
            }
        }
    };
    let unavailable = move || {
        edit_status.with(|s| {
            s.as_ref().filter(|s| s.status == "unavailable").map(|s| {
                view! {
                    <p class="notice">
                        <strong>"Layer editing is unavailable on this server. "</strong>
                        {s.reason.clone().unwrap_or_default()}
                    </p>
                }
            })
        })
    };

    view! {
        <form
            class="edit-box"
            aria-label="Edit this layer"
            on:submit=submit
            on:keydown=move |ev: leptos::ev::KeyboardEvent| {
                if ev.key() == "Escape" {
                    ev.prevent_default();
                    close();
                }
            }
        >
            <label for=field_id.clone()>"Edit instruction"</label>
            <textarea
                id=field_id
                rows="2"
                placeholder="e.g. make it blue; add a red scarf; turn it into a watercolour"
                prop:value=move || instruction.get()
                on:input=move |ev| instruction.set(event_target_value(&ev))
                disabled=move || busy.get()
            ></textarea>
            <label class="check">
                <input
                    type="checkbox"
                    prop:checked=move || keep_alpha.get()
                    on:change=move |ev| keep_alpha.set(event_target_checked(&ev))
                    disabled=move || busy.get()
                />
                "Keep the layer's shape (its transparency)"
            </label>
            {move || {
                fast_preset()
                    .map(|p| {
                        let title = p.reason.clone().unwrap_or_else(|| {
                            format!("{} steps without CFG: a step-distilled LoRA and its scheduler", p.steps)
                        });
                        let available = p.available;
                        view! {
                            <label class="check" title=title>
                                <input
                                    type="checkbox"
                                    data-testid="fast-edit"
                                    prop:checked=move || fast.get()
                                    on:change=move |ev| fast.set(event_target_checked(&ev))
                                    disabled=move || busy.get() || !available
                                />
                                {p.label.clone()}
                            </label>
                        }
                    })
            }}
            {unavailable}
            <div class="edit-buttons">
                <button type="submit" class="primary small" disabled=move || busy.get()>
                    {move || if busy.get() { "Editing…" } else { "Apply edit" }}
                </button>
                <button type="button" class="secondary small" on:click=move |_| close()>
                    "Close"
                </button>
            </div>
            <Show when=move || busy.get()>
                <p class="hint" role="status">
                    {move || {
                        edit_status
                            .with(|s| match s {
                                // The first edit of a model not cached yet downloads it (~57 GB).
                                Some(s) if s.status == "downloading" => {
                                    format!("First edit: {}.", s.reason.clone().unwrap_or_default())
                                }
                                _ => "Editing the layer — this can take a while on a large model.".to_string(),
                            })
                    }}
                </p>
            </Show>
            {move || {
                error
                    .get()
                    .map(|e| {
                        view! {
                            <p class="error" role="alert">
                                <strong>"Edit failed: "</strong>
                                {e}
                            </p>
                        }
                    })
            }}
        </form>
    }
    .into_any()
}

#[cfg(feature = "hydrate")]
#[allow(clippy::too_many_arguments)]
fn run_edit(
    state: AppState,
    id: u32,
    prompt: String,
    keep_alpha: bool,
    preset: Option<String>,
    busy: RwSignal<bool>,
    error: RwSignal<Option<String>>,
    editing: RwSignal<Option<u32>>,
) {
    use crate::api::EditLayerRequest;
    use crate::layer_stack::Bitmap;
    let AppState {
        result,
        announce,
        params,
        ..
    } = state;
    let Some(image) = result.with_untracked(|r| {
        r.as_ref()
            .and_then(|d| d.stack.get(id))
            .map(|l| l.current().bitmap.data_url.to_string())
    }) else {
        return;
    };
    let seed = params.with_untracked(|p| p.seed);
    busy.set(true);
    error.set(None);
    // While the edit runs, follow the edit model's state (a first edit may be downloading it).
    // The box (and `busy` with it) is gone once the edit is applied: then stop.
    let edit_status = state.edit_status;
    leptos::task::spawn_local(async move {
        while busy.try_get_untracked().unwrap_or(false) {
            crate::browser::sleep_ms(1000).await;
            if let Ok(s) = crate::server_fns::get_edit_status().await {
                edit_status.set(Some(s));
            }
        }
    });
    leptos::task::spawn_local(async move {
        let request = EditLayerRequest {
            image,
            prompt: prompt.clone(),
            steps: None,
            cfg_scale: None,
            seed,
            keep_alpha: Some(keep_alpha),
            preset,
        };
        let outcome = match crate::server_fns::edit_layer(request).await {
            Ok(url) => Bitmap::from_data_url(&url)
                .map_err(|e| format!("the edited image could not be read: {e}"))
                .and_then(|bitmap| {
                    let mut applied = Err("the layer is gone".to_string());
                    result.update(|r| {
                        if let Some(d) = r {
                            applied = d
                                .stack
                                .apply_edit(id, bitmap, prompt.clone())
                                .map_err(|e| e.to_string());
                            if applied.is_ok() {
                                if let Some(l) = d.stack.get(id) {
                                    announce.set(format!("{} edited.", l.name));
                                }
                            }
                        }
                    });
                    applied
                }),
            Err(e) => Err(e.error),
        };
        busy.try_set(false);
        match outcome {
            Ok(()) => {
                editing.try_set(None);
            }
            Err(e) => {
                error.try_set(Some(e));
            }
        }
    });
}
