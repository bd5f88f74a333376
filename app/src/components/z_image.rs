//! The Z-Image mode: write a prompt, get an image (with progress and cancel), then "Decompose into
//! layers" carries the image into the Qwen-Image view as its input, with the prompt.

use leptos::prelude::*;

use super::{AppState, ModelMode, UploadedImage};
use crate::api_z_image::{GenerateRequest, GenerateResponse, ZImageDefaults, ZImageJobStatus, ZImageStatusResponse};

/// Milliseconds between progress polls.
#[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
const POLL_MS: i32 = 300;
/// Polls that may fail in a row before the page gives up on a job.
#[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
const MAX_POLL_FAILURES: u32 = 20;

/// Where a generation is.
#[derive(Debug, Clone, PartialEq)]
pub enum ZRun {
    Idle,
    Starting,
    Running {
        id: String,
        status: Option<ZImageJobStatus>,
        cancelling: bool,
    },
    Done(GenerateResponse),
    Failed(String),
}

impl ZRun {
    pub fn is_busy(&self) -> bool {
        matches!(self, ZRun::Starting | ZRun::Running { .. })
    }
}

/// The form as typed (numbers as text, so a half-typed value is not lost).
#[derive(Debug, Clone, PartialEq)]
pub struct ZForm {
    pub prompt: String,
    pub negative_prompt: String,
    pub width: String,
    pub height: String,
    pub steps: String,
    pub cfg_scale: String,
    /// Empty = random.
    pub seed: String,
}

impl ZForm {
    pub fn from_defaults(d: &ZImageDefaults) -> Self {
        Self {
            prompt: String::new(),
            negative_prompt: String::new(),
            width: d.width.to_string(),
            height: d.height.to_string(),
            steps: d.steps.to_string(),
            cfg_scale: d.cfg_scale.to_string(),
            seed: d.seed.map(|s| s.to_string()).unwrap_or_default(),
        }
    }

    /// The request, checked with the contract's own validation; the error names the field.
    pub fn to_request(&self, defaults: &ZImageDefaults) -> Result<GenerateRequest, String> {
        fn number<T: std::str::FromStr>(what: &str, s: &str) -> Result<T, String> {
            s.trim().parse().map_err(|_| format!("{what}: `{s}` is not a number"))
        }
        let seed = match self.seed.trim() {
            "" => None,
            s => Some(number("seed", s)?),
        };
        let request = GenerateRequest {
            prompt: self.prompt.clone(),
            negative_prompt: Some(self.negative_prompt.clone()).filter(|n| !n.trim().is_empty()),
            width: Some(number("width", &self.width)?),
            height: Some(number("height", &self.height)?),
            steps: Some(number("steps", &self.steps)?),
            cfg_scale: Some(number("cfg_scale", &self.cfg_scale)?),
            seed,
        };
        request.validate(defaults, 0).map_err(|e| e.error)?;
        Ok(request)
    }
}

/// The page's Z-Image state (signals, so it survives switching modes).
#[derive(Debug, Clone, Copy)]
pub struct ZImageState {
    pub form: RwSignal<ZForm>,
    pub run: RwSignal<ZRun>,
    pub status: RwSignal<Option<ZImageStatusResponse>>,
}

impl ZImageState {
    pub fn new() -> Self {
        Self {
            form: RwSignal::new(ZForm::from_defaults(&ZImageDefaults::default())),
            run: RwSignal::new(ZRun::Idle),
            status: RwSignal::new(None),
        }
    }
}

impl Default for ZImageState {
    fn default() -> Self {
        Self::new()
    }
}

/// What the progress line says, and the fraction done when known.
pub fn progress_label(s: &ZImageJobStatus) -> (String, Option<f64>) {
    let fraction = (s.total_steps > 0 && matches!(s.phase.as_str(), "denoising" | "decoding" | "done"))
        .then(|| (f64::from(s.step) / f64::from(s.total_steps)).clamp(0.0, 1.0));
    let label = match s.phase.as_str() {
        "queued" => "Waiting for the model".to_string(),
        "starting" => "Starting".into(),
        "loading" => "Loading Z-Image".into(),
        "encoding" => "Encoding the prompt".into(),
        "denoising" => format!("Denoising, step {} of {}", s.step, s.total_steps),
        "decoding" => "Decoding the image".into(),
        "done" => "Done".into(),
        other => other.to_string(),
    };
    let label = match s.eta_seconds {
        Some(eta) if s.phase == "denoising" => format!("{label} (about {} s left)", eta.ceil()),
        _ => label,
    };
    (label, fraction)
}

/// The input the Qwen-Image view gets from a generated image.
pub fn as_upload(result: &GenerateResponse) -> UploadedImage {
    let payload = result.image.split_once(',').map_or(result.image.as_str(), |(_, b)| b);
    UploadedImage {
        name: format!("z-image-{}.png", result.seed),
        data_url: result.image.clone(),
        width: result.width,
        height: result.height,
        bytes: payload.len() / 4 * 3,
        format: "PNG",
    }
}

/// The text-to-image view.
#[component]
pub fn ZImagePanel() -> impl IntoView {
    let app = expect_context::<AppState>();
    let z = expect_context::<ZImageState>();
    let ZImageState { form, run, status } = z;
    let busy = Signal::derive(move || run.with(ZRun::is_busy));
    let unavailable = move || {
        status.with(|s| {
            s.as_ref()
                .filter(|s| s.status == "unavailable")
                .map(|s| s.reason.clone().unwrap_or_else(|| "the model cannot be loaded".into()))
        })
    };
    let defaults = move || status.with(|s| s.as_ref().map(|s| s.defaults).unwrap_or_default());
    let problem = move || form.with(|f| f.to_request(&defaults()).err());
    let field = move |label: &'static str, id: &'static str, get: fn(&ZForm) -> String, set: fn(&mut ZForm, String)| {
        view! {
            <label class="field" for=id>
                <span>{label}</span>
                <input
                    id=id
                    type="text"
                    inputmode="decimal"
                    prop:value=move || form.with(get)
                    on:input=move |ev| form.update(|f| set(f, event_target_value(&ev)))
                    disabled=move || busy.get()
                />
            </label>
        }
    };
    let generate = move |_| {
        #[cfg(feature = "hydrate")]
        start_generation(z, defaults());
    };
    let cancel = move |_| {
        #[cfg(feature = "hydrate")]
        cancel_generation(z);
    };
    let decompose = move |_| {
        if let ZRun::Done(result) = run.get_untracked() {
            app.image.set(Some(as_upload(&result)));
            let prompt = form.with_untracked(|f| f.prompt.clone());
            app.params.update(|p| p.prompt = prompt);
            app.result.set(None);
            app.mode.set(ModelMode::QwenImage);
            app.announce.set(
                "The generated image is the input of the Qwen-Image view: choose the layers and decompose.".into(),
            );
        }
    };
    view! {
        <section class="inputs z-image" aria-label="Text to image">
            <div class="card">
                <h2 class="card-title">"Text to image (Z-Image-Turbo)"</h2>
                {move || unavailable().map(|r| view! { <p class="error z-unavailable" role="alert">{format!("Z-Image is unavailable: {r}")}</p> })}
                <label class="field" for="z-prompt">
                    <span>"Prompt"</span>
                    <textarea
                        id="z-prompt"
                        rows="4"
                        placeholder="What the image shows"
                        prop:value=move || form.with(|f| f.prompt.clone())
                        on:input=move |ev| form.update(|f| f.prompt = event_target_value(&ev))
                        disabled=move || busy.get()
                    ></textarea>
                </label>
                <label class="field" for="z-negative">
                    <span>"Negative prompt (with CFG above 0)"</span>
                    <input
                        id="z-negative"
                        type="text"
                        prop:value=move || form.with(|f| f.negative_prompt.clone())
                        on:input=move |ev| form.update(|f| f.negative_prompt = event_target_value(&ev))
                        disabled=move || busy.get()
                    />
                </label>
                <div class="z-fields">
                    {field("Width", "z-width", |f| f.width.clone(), |f, v| f.width = v)}
                    {field("Height", "z-height", |f| f.height.clone(), |f, v| f.height = v)}
                    {field("Steps", "z-steps", |f| f.steps.clone(), |f, v| f.steps = v)}
                    {field("CFG scale", "z-cfg", |f| f.cfg_scale.clone(), |f, v| f.cfg_scale = v)}
                    {field("Seed (empty = random)", "z-seed", |f| f.seed.clone(), |f, v| f.seed = v)}
                </div>
                {move || {
                    let touched = form.with(|f| !f.prompt.is_empty());
                    problem().filter(|_| touched).map(|p| view! { <p class="error z-problem" role="alert">{p}</p> })
                }}
                <button
                    type="button"
                    class="primary"
                    id="z-generate"
                    disabled=move || busy.get() || unavailable().is_some() || problem().is_some()
                    on:click=generate
                >
                    "Generate image"
                </button>
            </div>
            {move || match run.get() {
                ZRun::Starting => view! { <div class="card z-progress"><p>"Starting…"</p></div> }.into_any(),
                ZRun::Running { status: s, cancelling, .. } => {
                    let (label, fraction) = s.as_ref().map(progress_label).unwrap_or(("Waiting for the model".into(), None));
                    let percent = fraction.map(|f| (f * 100.0).round());
                    let label = if cancelling { format!("{label} — cancelling after this step") } else { label };
                    view! {
                        <div class="card z-progress">
                            <p class="z-progress-label">{label.clone()}</p>
                            <div class="progress-track" class:indeterminate=fraction.is_none() role="progressbar"
                                aria-label=label aria-valuemin="0" aria-valuemax="100" aria-valuenow=percent>
                                <div class="progress-fill" style:width=percent.map(|p| format!("{p}%"))></div>
                            </div>
                            <button type="button" class="secondary" id="z-cancel" disabled=cancelling on:click=cancel>"Cancel"</button>
                        </div>
                    }
                    .into_any()
                }
                ZRun::Failed(e) => view! { <p class="error z-failed" role="alert">{e}</p> }.into_any(),
                _ => ().into_any(),
            }}
        </section>
        <section class="results z-result" aria-label="Generated image">
            {move || match run.get() {
                ZRun::Done(result) => {
                    let info = format!(
                        "{}×{}, {} steps, seed {}, {:.1} s",
                        result.width, result.height, result.steps, result.seed, result.generation_time
                    );
                    view! {
                        <div class="card">
                            <img class="z-image-result" alt="Generated image" src=result.image.clone() style:max-width="100%" style:height="auto"
                                width=result.width height=result.height/>
                            <p class="z-info">{info}</p>
                            <button type="button" class="primary" id="z-decompose" on:click=decompose>
                                "Decompose into layers"
                            </button>
                        </div>
                    }
                    .into_any()
                }
                _ => view! { <p class="placeholder">"The generated image appears here."</p> }.into_any(),
            }}
        </section>
    }
    .into_any()
}

/// Fetches the model's state and the server's defaults (once, in the browser).
#[cfg(feature = "hydrate")]
pub fn fetch_status(z: ZImageState) {
    leptos::task::spawn_local(async move {
        if let Ok(s) = crate::server_fns_z_image::get_z_image_status().await {
            let untouched = z
                .form
                .with_untracked(|f| *f == ZForm::from_defaults(&ZImageDefaults::default()));
            if untouched {
                z.form.set(ZForm::from_defaults(&s.defaults));
            }
            z.status.set(Some(s));
        }
    });
}

#[cfg(feature = "hydrate")]
fn start_generation(z: ZImageState, defaults: ZImageDefaults) {
    use crate::api::JobState;
    use crate::server_fns_z_image::{get_z_image_job, start_z_image};

    let request = match z.form.with_untracked(|f| f.to_request(&defaults)) {
        Ok(r) => r,
        Err(e) => {
            z.run.set(ZRun::Failed(e));
            return;
        }
    };
    z.run.set(ZRun::Starting);
    leptos::task::spawn_local(async move {
        let id = match start_z_image(request).await {
            Ok(started) => started.id,
            Err(e) => {
                z.run.set(ZRun::Failed(e.error));
                return;
            }
        };
        z.run.set(ZRun::Running {
            id: id.clone(),
            status: None,
            cancelling: false,
        });
        let mut failures = 0;
        loop {
            crate::browser::sleep_ms(POLL_MS).await;
            let s = match get_z_image_job(id.clone()).await {
                Ok(s) => {
                    failures = 0;
                    s
                }
                Err(e) => {
                    failures += 1;
                    if failures >= MAX_POLL_FAILURES {
                        z.run.set(ZRun::Failed(format!("Lost track of the job: {}", e.error)));
                        return;
                    }
                    continue;
                }
            };
            match s.state {
                JobState::Done => {
                    match s.result {
                        Some(r) => z.run.set(ZRun::Done(r)),
                        None => z.run.set(ZRun::Failed("the job finished without an image".into())),
                    }
                    fetch_status(z);
                    return;
                }
                JobState::Failed => {
                    z.run
                        .set(ZRun::Failed(s.error.unwrap_or_else(|| "the generation failed".into())));
                    fetch_status(z);
                    return;
                }
                JobState::Cancelled => {
                    z.run.set(ZRun::Idle);
                    return;
                }
                JobState::Queued | JobState::Running => z.run.update(|r| {
                    if let ZRun::Running { status, .. } = r {
                        *status = Some(s);
                    }
                }),
            }
        }
    });
}

#[cfg(feature = "hydrate")]
fn cancel_generation(z: ZImageState) {
    let ZRun::Running { id, .. } = z.run.get_untracked() else {
        return;
    };
    z.run.update(|r| {
        if let ZRun::Running { cancelling, .. } = r {
            *cancelling = true;
        }
    });
    leptos::task::spawn_local(async move {
        let _ = crate::server_fns_z_image::cancel_z_image(id).await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::JobState;

    #[test]
    fn the_form_builds_a_checked_request() {
        let d = ZImageDefaults::default();
        let mut f = ZForm::from_defaults(&d);
        assert_eq!((f.width.as_str(), f.steps.as_str(), f.seed.as_str()), ("1024", "9", ""));
        assert!(f.to_request(&d).unwrap_err().contains("prompt is empty"));
        f.prompt = "a fox".into();
        let r = f.to_request(&d).unwrap();
        assert_eq!((r.width, r.seed, r.negative_prompt.clone()), (Some(1024), None, None));
        f.seed = "12".into();
        f.negative_prompt = "blur".into();
        let r = f.to_request(&d).unwrap();
        assert_eq!((r.seed, r.negative_prompt), (Some(12), Some("blur".into())));
        f.width = "1000".into();
        assert!(f.to_request(&d).unwrap_err().contains("width must be a multiple of 16"));
        f.width = "wide".into();
        assert!(f.to_request(&d).unwrap_err().contains("width: `wide` is not a number"));
    }

    #[test]
    fn progress_says_the_phase_and_step() {
        let s = ZImageJobStatus {
            id: "zimg-x".into(),
            state: JobState::Running,
            phase: "denoising".into(),
            step: 3,
            total_steps: 9,
            elapsed: 1.0,
            eta_seconds: Some(2.2),
            error: None,
            result: None,
        };
        let (label, fraction) = progress_label(&s);
        assert_eq!(label, "Denoising, step 3 of 9 (about 3 s left)");
        assert!((fraction.unwrap() - 1.0 / 3.0).abs() < 1e-9);
        let (label, fraction) = progress_label(&ZImageJobStatus {
            phase: "loading".into(),
            ..s
        });
        assert_eq!((label.as_str(), fraction), ("Loading Z-Image", None));
    }

    #[test]
    fn a_result_becomes_the_decompose_input() {
        let r = GenerateResponse {
            image: "data:image/png;base64,AAAABBBB".into(),
            seed: 4,
            width: 64,
            height: 48,
            steps: 2,
            cfg_scale: 0.0,
            generation_time: 0.5,
        };
        let u = as_upload(&r);
        assert_eq!(
            (u.name.as_str(), u.width, u.height, u.bytes, u.format),
            ("z-image-4.png", 64, 48, 6, "PNG")
        );
        assert_eq!(u.data_url, r.image);
    }
}
