//! The edit box of a layer: an instruction for Qwen-Image-Edit-2509; the result replaces the
//! layer (the old pixels stay for before/after and undo). The edit runs as a job: its phase,
//! step, ETA and a Cancel button show while it runs.

use leptos::prelude::*;

use super::AppState;
use crate::api::{EditJobStatus, JobStatus};

/// What an edit that was cancelled ends with (shown as "Edit cancelled.", not as a failure).
const EDIT_CANCELLED: &str = "cancelled";

/// An edit's status as the progress bar reads a job's ([`super::run::progress_view`]).
pub fn edit_progress(s: &EditJobStatus) -> super::ProgressView {
    let as_job = JobStatus {
        id: s.id.clone(),
        state: s.state,
        phase: s.phase.clone(),
        step: s.step,
        total_steps: s.total_steps,
        elapsed: s.elapsed,
        eta_seconds: s.eta_seconds,
        queue_position: s.queue_position,
        error: s.error.clone(),
        result: None,
    };
    let mut view = super::run::progress_view(&as_job);
    match s.phase.as_str() {
        "loading" => view.label = "Loading the edit model".into(),
        "decoding" => view.label = "Decoding the edited layer…".into(),
        _ => {}
    }
    view
}

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
    // The running edit's job: its id, last status and whether a cancel was asked for.
    let job = RwSignal::new(None::<(String, Option<EditJobStatus>, bool)>);
    let field_id = format!("layer-{id}-instruction");
    // Seconds since "Apply edit", counted on the page while the (blocking) edit request runs.
    let elapsed = RwSignal::new(0u32);
    Effect::new(move |was_busy: Option<bool>| {
        let now = busy.get();
        if now {
            elapsed.set(0);
            #[cfg(feature = "hydrate")]
            leptos::task::spawn_local(async move {
                while busy.try_get_untracked().unwrap_or(false) {
                    crate::browser::sleep_ms(1000).await;
                    if busy.try_get_untracked().unwrap_or(false) {
                        elapsed.try_update(|e| *e += 1);
                    }
                }
            });
        } else if was_busy == Some(true) {
            // The edit model has loaded (or failed): the page's model status says so.
            #[cfg(feature = "hydrate")]
            leptos::task::spawn_local(async move {
                if let Ok(s) = crate::server_fns::get_edit_status().await {
                    edit_status.try_set(Some(s));
                }
            });
        }
        now
    });

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
                    job,
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
                on:input=move |ev| {
                    instruction.set(event_target_value(&ev));
                    // A message about the old instruction no longer applies.
                    error.set(None);
                }
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
                <Show
                    when=move || busy.get()
                    fallback=move || view! {
                        <button type="button" class="secondary small" on:click=move |_| close()>
                            "Close"
                        </button>
                    }
                >
                    <button
                        type="button"
                        class="secondary small cancel-button"
                        aria-label="Cancel the edit"
                        disabled=move || job.with(|j| j.as_ref().is_none_or(|(_, _, cancelling)| *cancelling))
                        on:click=move |_| {
                            #[cfg(feature = "hydrate")]
                            if let Some((id, _, false)) = job.get_untracked() {
                                job.update(|j| {
                                    if let Some(j) = j {
                                        j.2 = true;
                                    }
                                });
                                leptos::task::spawn_local(async move {
                                    if let Err(e) = crate::server_fns::cancel_edit(id).await {
                                        leptos::logging::warn!("cancel failed: {}", e.error);
                                    }
                                });
                            }
                        }
                    >
                        {move || if job.with(|j| j.as_ref().is_some_and(|j| j.2)) { "Cancelling…" } else { "Cancel" }}
                    </button>
                </Show>
            </div>
            <Show when=move || busy.get()>
                {move || {
                    let status = job.with(|j| j.as_ref().and_then(|(_, s, _)| s.clone()));
                    let cancelling = job.with(|j| j.as_ref().is_some_and(|j| j.2));
                    let (mut label, fraction, detail) = match status.as_ref().filter(|s| s.phase != "starting") {
                        Some(s) => {
                            let v = edit_progress(s);
                            (v.label, v.fraction, v.detail)
                        }
                        // Before the job reports steps: the edit model's state (a first edit
                        // may download or load it).
                        None => {
                            let (label, note) = edit_status.with(|s| edit_phase(s.as_ref().map(|s| (s.status.as_str(), s.reason.as_deref()))));
                            (label, None, format!("{} elapsed · {note}", super::run::duration(f64::from(elapsed.get()))))
                        }
                    };
                    if cancelling {
                        label = format!("{label} — cancelling after this step");
                    }
                    view! { <super::run::ProgressBar label fraction detail/> }
                }}
            </Show>
            {move || {
                error
                    .get()
                    .map(|e| {
                        if e == EDIT_CANCELLED {
                            return view! { <p class="run-cancelled" role="status">"Edit cancelled."</p> }.into_any();
                        }
                        view! {
                            <p class="error" role="alert">
                                <strong>"Edit failed: "</strong>
                                {e}
                            </p>
                        }
                        .into_any()
                    })
            }}
        </form>
    }
    .into_any()
}

/// What the edit progress says, from the edit model's state (`status`, `reason`): a label and a
/// note. The server reports no steps for an edit, so there is no fraction or ETA.
pub fn edit_phase(model: Option<(&str, Option<&str>)>) -> (String, String) {
    match model {
        // The first edit of a model not cached yet downloads it (~57 GB).
        Some(("downloading", reason)) => (
            "Downloading the edit model".into(),
            reason.unwrap_or("the first edit fetches the weights").to_string(),
        ),
        Some(("idle", _)) => (
            "Loading the edit model, then editing".into(),
            "the first edit loads the model".into(),
        ),
        _ => (
            "Editing the layer".into(),
            "an edit runs all its steps at once; a large model takes minutes".into(),
        ),
    }
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
    job: RwSignal<Option<(String, Option<EditJobStatus>, bool)>>,
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
    let (seed, steps) = params.with_untracked(|p| (p.seed, p.steps));
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
            // The page's Steps (a preset brings its own).
            steps: (preset.is_none() && steps >= crate::api::EDIT_MIN_STEPS).then_some(steps),
            cfg_scale: None,
            seed,
            keep_alpha: Some(keep_alpha),
            preset,
        };
        let outcome = match follow_edit(request, job).await {
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
            Err(e) => Err(e),
        };
        busy.try_set(false);
        job.try_set(None);
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

/// Starts the edit job and polls it until it ends; the edited layer's data URL, or why not.
#[cfg(feature = "hydrate")]
async fn follow_edit(
    request: crate::api::EditLayerRequest,
    job: RwSignal<Option<(String, Option<EditJobStatus>, bool)>>,
) -> Result<String, String> {
    use crate::api::JobState;
    let id = crate::server_fns::start_edit(request).await.map_err(|e| e.error)?.id;
    job.try_set(Some((id.clone(), None, false)));
    let mut failures = 0;
    loop {
        crate::browser::sleep_ms(super::run::POLL_MS).await;
        let s = match crate::server_fns::get_edit_job_status(id.clone()).await {
            Ok(s) => s,
            Err(e) => {
                failures += 1;
                if failures >= 5 {
                    return Err(format!("lost track of the edit: {}", e.error));
                }
                continue;
            }
        };
        match s.state {
            JobState::Queued | JobState::Running => {
                job.try_update(|j| {
                    if let Some(j) = j {
                        j.1 = Some(s);
                    }
                });
            }
            JobState::Done => {
                return s
                    .result
                    .map(|r| r.image)
                    .ok_or_else(|| "the edit finished without a result".into())
            }
            JobState::Cancelled => return Err(EDIT_CANCELLED.into()),
            JobState::Failed => return Err(s.error.unwrap_or_else(|| "the edit failed".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::edit_phase;

    #[test]
    fn the_edit_progress_names_the_phase() {
        assert_eq!(
            edit_phase(Some(("idle", None))).0,
            "Loading the edit model, then editing"
        );
        let (label, note) = edit_phase(Some(("downloading", Some("file 2 of 9"))));
        assert_eq!(
            (label.as_str(), note.as_str()),
            ("Downloading the edit model", "file 2 of 9")
        );
        assert_eq!(edit_phase(Some(("ready", None))).0, "Editing the layer");
        assert_eq!(edit_phase(None).0, "Editing the layer");
    }
}
