//! "Decompose Image": starts a job, follows it (phase, step/total, ETA) by polling the server,
//! offers Cancel, and shows errors where the button is.

use leptos::prelude::*;

use super::{AppState, ModelMode};
#[cfg(feature = "hydrate")]
use crate::api::DecomposeResponse;
use crate::api::{JobState, JobStatus, RunSummary};

/// How often a running job is polled.
#[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
pub const POLL_MS: i32 = 400;
/// Polls that may fail in a row (a blip of the network) before the run is reported failed.
#[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
const MAX_POLL_FAILURES: u32 = 5;

/// Where the decompose run stands.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum RunState {
    #[default]
    Idle,
    /// The request is on its way (the image is being uploaded).
    Starting,
    Running {
        id: String,
        status: Option<Box<JobStatus>>,
        cancelling: bool,
    },
    /// The layers arrived.
    Done {
        seconds: f64,
        seed: u64,
        layers: u32,
        /// The automatic caption, when the prompt was empty.
        caption: Option<String>,
        /// What an automatic layer count kept and dropped.
        auto_layers: Option<crate::layer_count::AutoLayers>,
    },
    Failed(String),
    Cancelled,
}

impl RunState {
    pub fn is_busy(&self) -> bool {
        matches!(self, RunState::Starting | RunState::Running { .. })
    }
}

/// What the progress bar shows for a job: a label, the fraction done (`None` = indeterminate)
/// and a detail line (step, elapsed, ETA).
#[derive(Debug, Clone, PartialEq)]
pub struct ProgressView {
    pub label: String,
    pub fraction: Option<f64>,
    pub detail: String,
}

pub fn progress_view(s: &JobStatus) -> ProgressView {
    let label = match (s.state, s.phase.as_str()) {
        (JobState::Queued, _) | (_, "queued") => match s.queue_position {
            Some(0) | None => "Waiting for the model (next in line)".to_string(),
            Some(n) => format!("Waiting for the model ({n} ahead)"),
        },
        (_, "starting") => "Starting".into(),
        (_, "loading") => "Loading the model".into(),
        (_, "encoding") => "Encoding the prompt and image".into(),
        (_, "denoising") => "Denoising".into(),
        (_, "decoding") => "Decoding the layers…".into(),
        (_, "done") => "Done".into(),
        (_, other) => {
            let mut c = other.chars();
            c.next()
                .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
                .unwrap_or_default()
        }
    };
    let fraction = match s.phase.as_str() {
        "denoising" | "decoding" | "done" if s.total_steps > 0 => {
            Some((f64::from(s.step) / f64::from(s.total_steps)).clamp(0.0, 1.0))
        }
        _ => None,
    };
    let mut detail = Vec::new();
    if s.total_steps > 0 && s.state != JobState::Queued {
        detail.push(format!("Step {} / {}", s.step.min(s.total_steps), s.total_steps));
    }
    if s.elapsed > 0.0 {
        detail.push(format!("{} elapsed", duration(s.elapsed)));
    }
    match s.eta_seconds.filter(|e| e.is_finite() && *e >= 0.0) {
        Some(eta) => detail.push(format!("about {} left", duration(eta))),
        // The server times denoising steps only; the first one is still running.
        None if s.phase == "denoising" && s.step == 0 => detail.push("timing the first step".into()),
        None => {}
    }
    ProgressView {
        label,
        fraction,
        detail: detail.join(" · "),
    }
}

/// "0.4 s", "12 s", "3 min 05 s", "1 h 02 min".
pub fn duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "?".into();
    }
    if secs < 10.0 {
        return format!("{secs:.1} s");
    }
    let s = secs.round() as u64;
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min {:02} s", s / 60, s % 60),
        _ => format!("{} h {:02} min", s / 3600, (s % 3600) / 60),
    }
}

#[component]
pub fn RunPanel() -> impl IntoView {
    let state = expect_context::<AppState>();
    let AppState {
        mode,
        image,
        field_errors,
        status,
        run,
        ..
    } = state;

    let blocked_reason = move || -> Option<String> {
        if mode.get() != ModelMode::QwenImage {
            return Some("Decomposition runs in the Qwen-Image mode.".into());
        }
        if image.with(Option::is_none) {
            return Some("Choose an image first.".into());
        }
        if field_errors.with(|e| e.any()) {
            return Some("Fix the parameters above first.".into());
        }
        None
    };
    let disabled = move || run.with(RunState::is_busy) || blocked_reason().is_some();

    let start = move |_| {
        if !disabled() {
            #[cfg(feature = "hydrate")]
            start_run(state);
        }
    };
    let model_notice = move || {
        status.with(|s| {
            s.as_ref().filter(|s| s.status == "unavailable").map(|s| {
                view! {
                    <p class="notice" id="model-notice">
                        <strong>"The decompose model is unavailable. "</strong>
                        {s.reason.clone().unwrap_or_default()}
                    </p>
                }
            })
        })
    };

    view! {
        <div class="run card" aria-labelledby="run-title">
            <h2 id="run-title" class="visually-hidden">"Run"</h2>
            <div class="run-buttons">
                <button
                    type="button"
                    class="primary run-button"
                    disabled=disabled
                    aria-describedby="run-why"
                    on:click=start
                >
                    {move || if run.with(RunState::is_busy) { "Decomposing…" } else { "Decompose Image" }}
                </button>
            </div>
            <p id="run-why" class="hint mode-note">{move || if run.with(RunState::is_busy) { None } else { blocked_reason() }}</p>
            <ModelStatus/>
            {model_notice}
            <RunStatus run/>
        </div>
    }
    .into_any()
}

/// What a model's state is called on the page, and a word on what it means.
pub fn model_state_text(status: &str) -> (&'static str, &'static str) {
    match status {
        "ready" => ("ready", "in memory"),
        "idle" => ("idle", "loads on the first run"),
        "loading" => ("loading", "reading the weights"),
        "downloading" => ("downloading", "fetching the weights"),
        "unavailable" => ("unavailable", "cannot run here"),
        _ => ("unknown", "no answer from the server yet"),
    }
}

/// The engine workers in a sentence, when there are several (several GPUs, issue 21): how many,
/// the mode, and what each is doing. `None` for one worker (nothing to tell).
pub fn workers_text(workers: &[crate::api::WorkerStatus], parallel: &str) -> Option<String> {
    if workers.len() < 2 {
        return None;
    }
    let each = workers
        .iter()
        .map(|w| match (&w.running, w.busy) {
            (Some(kind), _) => format!("{} running {kind}", w.device),
            (None, true) => format!("{} busy", w.device),
            (None, false) => format!("{} idle", w.device),
        })
        .collect::<Vec<_>>()
        .join(", ");
    Some(format!("{} workers ({parallel}): {each}", workers.len()))
}

/// Both models' state (idle, loading, ready, downloading, unavailable), always on the page.
#[component]
fn ModelStatus() -> impl IntoView {
    let AppState {
        status,
        edit_status,
        run,
        ..
    } = expect_context::<AppState>();
    // The decompose model loads inside a job: the job's phase says so before /status can.
    let decompose = move || {
        let phase = run.with(|r| match r {
            RunState::Running { status: Some(s), .. } => Some(s.phase.clone()),
            _ => None,
        });
        match phase.as_deref() {
            Some("loading") => "loading".to_string(),
            Some("encoding" | "captioning" | "denoising" | "decoding") => "ready".to_string(),
            _ => status.with(|s| s.as_ref().map(|s| s.status.clone()).unwrap_or_default()),
        }
    };
    let edit = move || edit_status.with(|s| s.as_ref().map(|s| s.status.clone()).unwrap_or_default());
    let chip = move |label: &'static str, id: &'static str, state: Signal<String>| {
        view! {
            <li class="model-state" id=id data-state=move || model_state_text(&state.get()).0>
                <span class="model-dot" aria-hidden="true"></span>
                {label}
                ": "
                <strong>{move || model_state_text(&state.get()).0}</strong>
                <span class="model-why">{move || format!(" — {}", model_state_text(&state.get()).1)}</span>
            </li>
        }
    };
    let workers = move || status.with(|s| s.as_ref().and_then(|s| workers_text(&s.workers, &s.parallel)));
    view! {
        <ul class="model-status" aria-label="Models">
            {chip("Layers model", "model-status-decompose", Signal::derive(decompose))}
            {chip("Edit model", "model-status-edit", Signal::derive(edit))}
            {move || workers().map(|text| view! { <li class="model-state" id="worker-status">{text}</li> })}
        </ul>
    }
    .into_any()
}

/// The running decomposition in the results area: the progress bar and Cancel.
#[component]
pub fn RunProgress() -> impl IntoView {
    let AppState { run, .. } = expect_context::<AppState>();
    let cancelling = move || run.with(|r| matches!(r, RunState::Running { cancelling: true, .. }));
    let cancel = move |_| {
        #[cfg(feature = "hydrate")]
        {
            let id = match run.get_untracked() {
                RunState::Running { id, .. } => id,
                _ => return,
            };
            run.update(|r| {
                if let RunState::Running { cancelling, .. } = r {
                    *cancelling = true;
                }
            });
            leptos::task::spawn_local(async move {
                if let Err(e) = crate::server_fns::cancel_job(id).await {
                    leptos::logging::warn!("cancel failed: {}", e.error);
                }
            });
        }
    };
    let bar = move || match run.get() {
        RunState::Starting => {
            view! { <ProgressBar label="Uploading the image".into() fraction=None detail=String::new()/> }.into_any()
        }
        RunState::Running { status, cancelling, .. } => {
            let view = status.as_deref().map(progress_view).unwrap_or(ProgressView {
                label: "Waiting for the model".into(),
                fraction: None,
                detail: String::new(),
            });
            let label = if cancelling {
                format!("{} — cancelling after this step", view.label)
            } else {
                view.label
            };
            view! { <ProgressBar label fraction=view.fraction detail=view.detail/> }.into_any()
        }
        _ => ().into_any(),
    };
    view! {
        <Show when=move || run.with(RunState::is_busy)>
            <section class="run-progress card" aria-labelledby="run-progress-title">
                <h2 id="run-progress-title" class="card-title">"Decomposing your image"</h2>
                {bar}
                <Show when=move || run.with(|r| matches!(r, RunState::Running { .. }))>
                    <button type="button" class="secondary cancel-button" disabled=cancelling on:click=cancel>
                        {move || if cancelling() { "Cancelling…" } else { "Cancel" }}
                    </button>
                </Show>
            </section>
        </Show>
    }
    .into_any()
}

/// The outcome of the last run (or its error), under the button; the progress itself is in the
/// results area ([`RunProgress`]).
#[component]
fn RunStatus(run: RwSignal<RunState>) -> impl IntoView {
    move || match run.get() {
        RunState::Idle | RunState::Starting | RunState::Running { .. } => ().into_any(),
        RunState::Done {
            seconds,
            seed,
            layers,
            caption,
            auto_layers,
        } => view! {
            <p class="run-done" role="status">
                {format!("Split into {layers} layers in {} · seed {seed}", duration(seconds))}
            </p>
            {auto_layers.map(|a| view! { <p class="auto-report hint">{auto_summary(&a)}</p> })}
            {caption.map(|c| view! { <Caption caption=c/> })}
        }
        .into_any(),
        RunState::Failed(msg) => view! {
            <div class="error run-error" role="alert">
                <strong>"Decomposition failed: "</strong>
                {msg}
            </div>
        }
        .into_any(),
        RunState::Cancelled => view! { <p class="run-cancelled" role="status">"Cancelled."</p> }.into_any(),
    }
}

/// "Automatic count: kept 3 of 6 layers; dropped layer 2 (empty), layer 5 (covered)."
pub fn auto_summary(a: &crate::layer_count::AutoLayers) -> String {
    use crate::layer_count::DropReason;
    let kept = format!("Automatic count: kept {} of {} layers", a.kept.len(), a.produced);
    if a.dropped.is_empty() {
        return format!("{kept}: every layer shows.");
    }
    let dropped: Vec<String> = a
        .dropped
        .iter()
        .map(|d| {
            let why = match d.reason {
                DropReason::Empty => "empty",
                DropReason::Duplicate => "duplicate",
                DropReason::Covered => "covered",
            };
            format!("layer {} ({why})", d.layer)
        })
        .collect();
    format!("{kept}; dropped {}.", dropped.join(", "))
}

/// The first `max` characters of a caption, cut at a word, and whether anything was cut.
pub fn shorten(text: &str, max: usize) -> (String, bool) {
    let text = text.trim();
    if text.chars().count() <= max {
        return (text.to_string(), false);
    }
    let cut: String = text.chars().take(max).collect();
    let cut = match cut.rfind(char::is_whitespace) {
        Some(i) if i > max / 2 => cut[..i].to_string(),
        _ => cut,
    };
    (format!("{}…", cut.trim_end()), true)
}

/// The automatic caption the server used: short ones in full, long ones folded; it can become
/// the prompt (to refine it and run again).
#[component]
fn Caption(caption: String) -> impl IntoView {
    let AppState { params, .. } = expect_context::<AppState>();
    let (short, folded) = shorten(&caption, 140);
    let full = caption.clone();
    let use_it = move |_| params.update(|p| p.prompt = full.clone());
    view! {
        <div class="run-caption">
            {if folded {
                view! {
                    <details>
                        <summary>"Automatic caption: " <q>{short}</q></summary>
                        <p class="caption-full">{caption}</p>
                    </details>
                }
                    .into_any()
            } else {
                view! { <p>"Automatic caption: " <q>{short}</q></p> }.into_any()
            }}
            <button type="button" class="secondary small" on:click=use_it>
                "Use as prompt"
            </button>
        </div>
    }
    .into_any()
}

#[component]
pub fn ProgressBar(label: String, fraction: Option<f64>, detail: String) -> impl IntoView {
    let percent = fraction.map(|f| (f * 100.0).round() as u32);
    view! {
        <div class="progress" role="status" aria-live="polite">
            <div class="progress-label">
                <span class="progress-phase">{label.clone()}</span>
                <span class="progress-percent">{percent.map(|p| format!("{p} %"))}</span>
            </div>
            <div
                class="progress-track"
                class:indeterminate=fraction.is_none()
                role="progressbar"
                aria-label=label
                aria-valuemin="0"
                aria-valuemax="100"
                aria-valuenow=percent
            >
                <div class="progress-fill" style:width=percent.map(|p| format!("{p}%"))></div>
            </div>
            <p class="progress-detail">{detail}</p>
        </div>
    }
    .into_any()
}

/// Starts a job and follows it until it ends; the result becomes the layer stack.
#[cfg(feature = "hydrate")]
fn start_run(state: AppState) {
    use crate::server_fns::{get_job_status, start_decompose};

    let AppState {
        image,
        params,
        run,
        announce,
        runs_changed,
        ..
    } = state;
    let Some(img) = image.get_untracked() else { return };
    let p = params.get_untracked();
    let request = p.to_request(img.data_url.clone());
    run.set(RunState::Starting);
    announce.set("Decomposition started.".into());
    leptos::task::spawn_local(async move {
        let id = match start_decompose(request).await {
            Ok(started) => started.id,
            Err(e) => {
                run.set(RunState::Failed(e.error));
                return;
            }
        };
        run.set(RunState::Running {
            id: id.clone(),
            status: None,
            cancelling: false,
        });
        let mut failures = 0;
        // However the run ends, the model may have loaded: the page's model status says so.
        let _refresh = RefreshStatusOnDrop(state.status);
        loop {
            crate::browser::sleep_ms(POLL_MS).await;
            let s = match get_job_status(id.clone()).await {
                Ok(s) => {
                    failures = 0;
                    s
                }
                Err(e) => {
                    failures += 1;
                    if failures >= MAX_POLL_FAILURES {
                        run.set(RunState::Failed(format!("Lost track of the job: {}", e.error)));
                        return;
                    }
                    continue;
                }
            };
            match s.state {
                JobState::Queued | JobState::Running => {
                    run.update(|r| {
                        if let RunState::Running { status, .. } = r {
                            *status = Some(Box::new(s));
                        }
                    });
                }
                JobState::Cancelled => {
                    run.set(RunState::Cancelled);
                    announce.set("Decomposition cancelled.".into());
                    return;
                }
                JobState::Failed => {
                    run.set(RunState::Failed(s.error.unwrap_or_else(|| "the job failed".into())));
                    announce.set("Decomposition failed.".into());
                    return;
                }
                JobState::Done => {
                    let Some(response) = s.result else {
                        run.set(RunState::Failed("the job finished without a result".into()));
                        return;
                    };
                    show_result(state, &response, p.prompt.trim(), p.steps, p.cfg_scale);
                    runs_changed.update(|n| *n += 1);
                    return;
                }
            }
        }
    });
}

/// Fetches the decompose model's status when dropped (at the end of a run, however it ends).
#[cfg(feature = "hydrate")]
struct RefreshStatusOnDrop(RwSignal<Option<crate::api::StatusResponse>>);

#[cfg(feature = "hydrate")]
impl Drop for RefreshStatusOnDrop {
    fn drop(&mut self) {
        let status = self.0;
        leptos::task::spawn_local(async move {
            if let Ok(s) = crate::server_fns::get_status().await {
                status.try_set(Some(s));
            }
        });
    }
}

/// Puts a finished decomposition on the page: the layer stack, its run info and the outcome line.
#[cfg(feature = "hydrate")]
fn show_result(state: AppState, response: &DecomposeResponse, prompt: &str, steps: u32, cfg_scale: f32) {
    use crate::layer_stack::{Decomposition, RunInfo};
    let AppState {
        run,
        result,
        run_info,
        announce,
        status,
        ..
    } = state;
    match Decomposition::from_response(response) {
        Ok(d) => {
            let layers = d.stack.len() as u32;
            let model = status
                .with_untracked(|s| s.as_ref().map(|s| s.model.clone()))
                .unwrap_or_default();
            run_info.set(Some(RunInfo {
                model,
                prompt: prompt.to_string(),
                seed: response.seed,
                layer_num: response.layer_count,
                resolution: response.resolution,
                steps,
                cfg_scale,
                generation_time: response.generation_time,
                caption: response.caption.clone(),
                auto_layers: response.auto_layers.clone(),
            }));
            result.set(Some(d));
            run.set(RunState::Done {
                seconds: response.generation_time,
                seed: response.seed,
                layers,
                caption: response.caption.clone(),
                auto_layers: response.auto_layers.clone(),
            });
            announce.set(format!("Done: {layers} layers."));
        }
        Err(e) => run.set(RunState::Failed(format!("The result could not be shown: {e}"))),
    }
}

/// This browser's earlier runs, kept on the server: each can be opened again.
#[component]
pub fn RecentRuns() -> impl IntoView {
    let state = expect_context::<AppState>();
    let runs = RwSignal::new(Vec::<RunSummary>::new());
    let runs_changed = state.runs_changed;
    Effect::new(move |_| {
        runs_changed.track();
        #[cfg(feature = "hydrate")]
        leptos::task::spawn_local(async move {
            if let Ok(list) = crate::server_fns::list_runs().await {
                runs.set(list);
            }
        });
    });
    let open = move |summary: RunSummary| {
        if state.run.with_untracked(RunState::is_busy) {
            return;
        }
        #[cfg(feature = "hydrate")]
        leptos::task::spawn_local(async move {
            match crate::server_fns::get_job_status(summary.id.clone()).await {
                Ok(JobStatus {
                    result: Some(response), ..
                }) => show_result(state, &response, &summary.prompt, summary.steps, summary.cfg_scale),
                Ok(_) => state.run.set(RunState::Failed("that run has no result".into())),
                Err(e) => state.run.set(RunState::Failed(e.error)),
            }
        });
        #[cfg(not(feature = "hydrate"))]
        let _ = summary;
    };
    view! {
        <Show when=move || runs.with(|r| !r.is_empty())>
            <details class="recent-runs card">
                <summary>"Recent runs (" {move || runs.with(Vec::len)} ")"</summary>
                <ul>
                    <For each=move || runs.get() key=|r| r.id.clone() let:r>
                        {
                            let label = run_label(&r);
                            let id = r.id.clone();
                            view! {
                                <li>
                                    <button type="button" class="link open-run" data-run=id on:click=move |_| open(r.clone())>
                                        {label}
                                    </button>
                                </li>
                            }
                        }
                    </For>
                </ul>
            </details>
        </Show>
    }
    .into_any()
}

/// "4 layers · 640 · seed 7 · a cat on a sofa" (the prompt shortened).
pub fn run_label(r: &RunSummary) -> String {
    let (prompt, _) = shorten(
        if r.prompt.is_empty() {
            "(automatic caption)"
        } else {
            &r.prompt
        },
        40,
    );
    format!(
        "{} layers · {} · seed {} · {prompt}",
        r.layer_count, r.resolution, r.seed
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_workers_are_told_one_is_not() {
        use crate::api::WorkerStatus;
        let worker = |index: u32, running: Option<&str>| WorkerStatus {
            index,
            device: format!("cuda:{index}"),
            busy: running.is_some(),
            running: running.map(String::from),
            jobs_done: 0,
        };
        assert_eq!(workers_text(&[worker(0, None)], "throughput"), None);
        assert_eq!(
            workers_text(&[worker(0, Some("decompose")), worker(1, None)], "throughput").as_deref(),
            Some("2 workers (throughput): cuda:0 running decompose, cuda:1 idle")
        );
    }

    fn status(state: JobState, phase: &str, step: u32) -> JobStatus {
        JobStatus {
            id: "j".into(),
            state,
            phase: phase.into(),
            step,
            total_steps: 50,
            elapsed: 0.0,
            eta_seconds: None,
            queue_position: None,
            error: None,
            result: None,
        }
    }

    #[test]
    fn queued_jobs_say_how_many_are_ahead() {
        let mut s = status(JobState::Queued, "queued", 0);
        assert_eq!(progress_view(&s).label, "Waiting for the model (next in line)");
        s.queue_position = Some(2);
        let v = progress_view(&s);
        assert_eq!(v.label, "Waiting for the model (2 ahead)");
        assert_eq!((v.fraction, v.detail.as_str()), (None, ""));
    }

    #[test]
    fn denoising_shows_step_fraction_elapsed_and_eta() {
        let mut s = status(JobState::Running, "denoising", 10);
        s.elapsed = 12.4;
        s.eta_seconds = Some(95.0);
        let v = progress_view(&s);
        assert_eq!(v.label, "Denoising");
        assert_eq!(v.fraction, Some(0.2));
        assert_eq!(v.detail, "Step 10 / 50 · 12 s elapsed · about 1 min 35 s left");
    }

    #[test]
    fn phases_before_denoising_are_indeterminate() {
        let v = progress_view(&status(JobState::Running, "encoding", 0));
        assert_eq!((v.label.as_str(), v.fraction), ("Encoding the prompt and image", None));
        assert_eq!(
            progress_view(&status(JobState::Running, "warming up", 0)).label,
            "Warming up"
        );
        assert_eq!(
            progress_view(&status(JobState::Running, "decoding", 50)).fraction,
            Some(1.0)
        );
    }

    #[test]
    fn decoding_is_named_and_the_first_step_is_being_timed() {
        let v = progress_view(&status(JobState::Running, "denoising", 0));
        assert_eq!(v.detail, "Step 0 / 50 · timing the first step");
        let mut s = status(JobState::Running, "decoding", 50);
        s.elapsed = 30.0;
        let v = progress_view(&s);
        assert_eq!(v.label, "Decoding the layers…");
        assert_eq!(v.detail, "Step 50 / 50 · 30 s elapsed", "no ETA while decoding");
    }

    #[test]
    fn the_automatic_count_says_what_it_dropped() {
        use crate::layer_count::{AutoLayers, DropReason, DroppedLayer};
        let dropped = |layer, reason| DroppedLayer {
            layer,
            reason,
            detail: String::new(),
        };
        let a = AutoLayers {
            produced: 6,
            kept: vec![1, 3, 4, 6],
            dropped: vec![dropped(2, DropReason::Empty), dropped(5, DropReason::Covered)],
        };
        assert_eq!(
            auto_summary(&a),
            "Automatic count: kept 4 of 6 layers; dropped layer 2 (empty), layer 5 (covered)."
        );
        let all = AutoLayers {
            produced: 6,
            kept: (1..=6).collect(),
            dropped: vec![],
        };
        assert_eq!(
            auto_summary(&all),
            "Automatic count: kept 6 of 6 layers: every layer shows."
        );
    }

    #[test]
    fn every_model_state_has_words() {
        for state in ["idle", "loading", "ready", "downloading", "unavailable"] {
            assert_eq!(model_state_text(state).0, state);
        }
        assert_eq!(model_state_text("").0, "unknown");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(0.42), "0.4 s");
        assert_eq!(duration(42.0), "42 s");
        assert_eq!(duration(185.0), "3 min 05 s");
        assert_eq!(duration(3725.0), "1 h 02 min");
        assert_eq!(duration(f64::NAN), "?");
    }

    #[test]
    fn long_captions_are_cut_at_a_word() {
        assert_eq!(
            shorten("  a cat on a sofa ", 140),
            ("a cat on a sofa".to_string(), false)
        );
        let (s, cut) = shorten("one two three four five", 12);
        assert_eq!((s.as_str(), cut), ("one two…", true));
        let (s, cut) = shorten(&"x".repeat(50), 10);
        assert_eq!((s.chars().count(), cut), (11, true));
    }
}
