//! The Z-Image mode on the server: `POST /api/z-image/generate` (waits), followable jobs
//! (`/api/z-image/jobs`, progress, ETA, cancel) and `GET /api/z-image/status`.
//!
//! Jobs run on the same engine workers as decomposition (each worker owns its device, so a
//! generation and a decomposition never compete for one), with the same job records
//! ([`crate::jobs`]); each worker loads the Z-Image model on its first job there and keeps it.
//! Results live in memory for [`JobOutput::KEEP_FINISHED`] (an image is one PNG; they are not
//! written to the run store).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use app::api::{ApiError, JobStarted, JobState};
use app::api_z_image::{GenerateJob, GenerateRequest, GenerateResponse, ZImageJobStatus, ZImageStatusResponse};
use app::backend::Caller;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use engine::gpu::OffloadOptions;
use engine::pipeline::{LoadOptions, Phase, Progress};
use engine::runtime::Runtime;
use engine::weights::ModelDir;
use qwen_layers::generator::Generator;

use crate::config::ZImageSettings;
use crate::engine_state::EngineState;
use crate::http_error::{DoorErrors, ErrorResponse};
use crate::jobs::{CancelOnDrop, JobHandle, JobOutput, JobRegistry};
use crate::queue::JobQueue;
use crate::routes::{job_id, parse_json};

/// The loaded model, owned by the worker thread (the mutex is only ever taken there).
type Slot = Arc<Mutex<Option<Generator>>>;

/// One generation: written by the worker, read by status requests.
type ZJob = JobHandle<GenerateResponse>;

/// Z-Image's state on the server.
pub struct ZImageService {
    settings: ZImageSettings,
    default_mode: String,
    runtime: Runtime,
    /// The model folder, or why it cannot be used (found at startup, never downloaded).
    model: Result<ModelDir, String>,
    /// One per engine worker: each loads Z-Image on its own device.
    slots: Vec<Slot>,
    loaded: Arc<AtomicBool>,
    /// Whether the model stays loaded after a job, and why (for `/status`).
    residency: (bool, String),
    queue: Arc<JobQueue<EngineState>>,
    jobs: JobRegistry<GenerateResponse>,
    /// Refuses over-long prompts before queueing (when the tokenizer could be read).
    tokenizer: Option<engine::tokenizer::QwenTokenizer>,
}

impl ZImageService {
    pub fn new(
        settings: ZImageSettings,
        default_mode: &str,
        runtime: Runtime,
        queue: Arc<JobQueue<EngineState>>,
    ) -> Arc<Self> {
        let model = match &runtime.problem {
            Some(p) => Err(p.clone()),
            None => ModelDir::resolve(&settings.model_path, false).map_err(|e| e.to_string()),
        };
        let tokenizer = model
            .as_ref()
            .ok()
            .and_then(|m| engine::tokenizer::QwenTokenizer::from_model_dir(m).ok());
        let kept = residency(
            runtime.device.is_cuda(),
            settings.cpu_offload,
            engine::gpu::memory::mem_info(&runtime.device).map(|(_, total)| total),
        );
        Arc::new(Self {
            settings,
            default_mode: default_mode.into(),
            runtime,
            model,
            slots: (0..queue.worker_count()).map(|_| Arc::new(Mutex::new(None))).collect(),
            loaded: Arc::new(AtomicBool::new(false)),
            residency: kept,
            queue,
            jobs: JobRegistry::default(),
            tokenizer,
        })
    }

    pub fn settings(&self) -> &ZImageSettings {
        &self.settings
    }

    pub fn status(&self) -> ZImageStatusResponse {
        let loaded = self.loaded.load(Ordering::SeqCst);
        ZImageStatusResponse {
            status: match (&self.model, loaded) {
                (Err(_), _) => "unavailable",
                (Ok(_), true) => "ready",
                (Ok(_), false) => "idle",
            }
            .into(),
            model_loaded: loaded,
            residency: self.residency.1.clone(),
            model: self.settings.model_path.clone(),
            device: self.runtime.describe(),
            reason: self.model.as_ref().err().cloned(),
            default_mode: self.default_mode.clone(),
            defaults: self.settings.defaults,
        }
    }

    fn load_options(&self) -> LoadOptions {
        let cuda = self.runtime.device.is_cuda();
        let offload = self.settings.cpu_offload && cuda;
        let total_vram = engine::gpu::memory::mem_info(&self.runtime.device).map(|(_, total)| total);
        LoadOptions {
            device: self.runtime.device.clone(),
            dtype: self.runtime.dtype,
            keep_text_encoder: keep_text_encoder(cuda, offload, total_vram),
            offload: offload.then(OffloadOptions::default),
            ..LoadOptions::default()
        }
    }

    fn validate(&self, request: &GenerateRequest) -> Result<GenerateJob, ApiError> {
        let job = request.validate(&self.settings.defaults, crate::backend::random_seed())?;
        let pixels = u64::from(job.width) * u64::from(job.height);
        if pixels > self.settings.max_pixels {
            return Err(ApiError::unprocessable(format!(
                "{}×{} is {pixels} pixels; this server generates at most {} (--z-image-max-pixels)",
                job.width, job.height, self.settings.max_pixels
            )));
        }
        let model = self
            .model
            .as_ref()
            .map_err(|reason| ApiError::unavailable(reason.clone()))?;
        let _ = model;
        if let Some(tok) = &self.tokenizer {
            let options = qwen_layers::generator::options(&job);
            for (what, text) in [
                ("prompt", Some(job.prompt.as_str())),
                ("negative_prompt", job.negative_prompt.as_deref()),
            ] {
                if let (Some(text), true) = (text, what == "prompt" || options.uses_cfg()) {
                    engine::z_image::text::prompt_ids(tok, text, what)
                        .map_err(|e| ApiError::unprocessable(e.to_string()))?;
                }
            }
        }
        Ok(job)
    }

    /// Validates and queues; the receiver yields the outcome.
    #[allow(clippy::type_complexity)]
    fn enqueue(
        &self,
        request: GenerateRequest,
        caller: &Caller,
    ) -> Result<
        (
            Arc<ZJob>,
            tokio::sync::oneshot::Receiver<Result<GenerateResponse, ApiError>>,
        ),
        ApiError,
    > {
        let job = self.validate(&request)?;
        let model = self.model.clone().map_err(ApiError::unavailable)?;
        let handle = self.jobs.create(job.steps, caller.owner.clone());
        let (worker, slots, loaded, options, keep) = (
            handle.clone(),
            self.slots.clone(),
            self.loaded.clone(),
            self.load_options(),
            self.residency.0,
        );
        let submitted = self.queue.submit_kind("z-image", move |engine: &mut EngineState| {
            // On whichever worker is free: its own slot, on its own device.
            let options = LoadOptions {
                device: engine.runtime().device.clone(),
                ..options
            };
            let out = run(&worker, &job, &model, &slots[engine.worker()], &loaded, options, keep);
            worker.finish(&out, false);
            out
        });
        match submitted {
            Ok(done) => Ok((handle, done)),
            Err(e) => {
                self.jobs.remove(&handle.id);
                Err(e)
            }
        }
    }

    fn find(&self, id: &str, caller: &Caller) -> Result<Arc<ZJob>, ApiError> {
        self.jobs
            .find(id)
            .filter(|j| j.owner.is_none() || j.owner == caller.owner)
            .ok_or_else(|| {
                ApiError::new(
                    404,
                    format!(
                        "no Z-Image job {id} (finished images are kept for {} minutes)",
                        GenerateResponse::KEEP_FINISHED.as_secs() / 60
                    ),
                )
            })
    }

    pub fn start(&self, request: GenerateRequest, caller: &Caller) -> Result<JobStarted, ApiError> {
        let (handle, _) = self.enqueue(request, caller)?;
        Ok(JobStarted { id: handle.id.clone() })
    }

    pub async fn generate(&self, request: GenerateRequest, caller: &Caller) -> Result<GenerateResponse, ApiError> {
        let (handle, done) = self.enqueue(request, caller)?;
        let guard = CancelOnDrop::new(handle);
        let out = done
            .await
            .unwrap_or_else(|_| Err(ApiError::internal("the engine worker dropped the job")));
        guard.disarm();
        out
    }

    pub fn job_status(&self, id: &str, caller: &Caller) -> Result<ZImageJobStatus, ApiError> {
        let job = self.find(id, caller)?;
        Ok(self.jobs.status(&job))
    }

    pub fn cancel(&self, id: &str, caller: &Caller) -> Result<ZImageJobStatus, ApiError> {
        let job = self.find(id, caller)?;
        job.request_cancel();
        Ok(self.jobs.status(&job))
    }
}

impl app::server_fns_z_image::ZImageBackend for ZImageService {
    fn status(&self) -> ZImageStatusResponse {
        ZImageService::status(self)
    }
    fn start(&self, request: GenerateRequest, caller: &Caller) -> Result<JobStarted, ApiError> {
        ZImageService::start(self, request, caller)
    }
    fn job_status(&self, id: &str, caller: &Caller) -> Result<ZImageJobStatus, ApiError> {
        ZImageService::job_status(self, id, caller)
    }
    fn cancel(&self, id: &str, caller: &Caller) -> Result<ZImageJobStatus, ApiError> {
        ZImageService::cancel(self, id, caller)
    }
}

/// Whether the Z-Image model stays loaded between jobs, and why (a sentence for `/status`): on
/// the CPU and with offload (host memory) it does; on a GPU only from
/// [`engine::runtime::KEEP_BOTH_PIPELINES_MIN_VRAM`] on (an H200: Qwen-Image's two pipelines and
/// Z-Image's ~20 GB side by side), else it is dropped after each job so decomposition has the card.
pub fn residency(cuda: bool, offload: bool, total_vram: Option<u64>) -> (bool, String) {
    let min = engine::runtime::KEEP_BOTH_PIPELINES_MIN_VRAM;
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    match (cuda, offload, total_vram) {
        (false, _, _) => (true, "kept loaded between jobs (CPU)".into()),
        (true, true, _) => (
            true,
            "kept loaded between jobs (cpu_offload: its layers in host memory)".into(),
        ),
        (true, false, Some(t)) if t >= min => (true, format!("kept loaded beside Qwen-Image ({:.0} GiB card)", gib(t))),
        (true, false, t) => (
            false,
            format!(
                "loaded for each job and dropped after it ({}; kept from {:.0} GiB)",
                t.map_or("card size unknown".to_string(), |t| format!("a {:.0} GiB card", gib(t))),
                gib(min)
            ),
        ),
    }
}

/// A card with at least this much memory keeps Z-Image's Qwen3 encoder (~8 GB in bf16) resident
/// beside its DiT (~12 GB), the VAE and 1024² activations, whatever else is loaded.
pub const KEEP_Z_TEXT_ENCODER_MIN_VRAM: u64 = 40 << 30;

/// Whether the Qwen3 encoder stays loaded between jobs: always on the CPU; on a GPU, not with
/// offload (it is loaded onto the card for each job's encoding, then dropped), else from
/// [`KEEP_Z_TEXT_ENCODER_MIN_VRAM`] on.
pub fn keep_text_encoder(cuda: bool, offload: bool, total_vram: Option<u64>) -> bool {
    !cuda || (!offload && total_vram.is_some_and(|t| t >= KEEP_Z_TEXT_ENCODER_MIN_VRAM))
}

/// On the worker: load the model if needed, generate, answer.
fn run(
    job_handle: &ZJob,
    job: &GenerateJob,
    model: &ModelDir,
    slot: &Slot,
    loaded: &AtomicBool,
    options: LoadOptions,
    keep: bool,
) -> Result<GenerateResponse, ApiError> {
    if job_handle.is_cancelled() {
        return Err(ApiError::cancelled());
    }
    job_handle.start();
    let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
    if slot.is_none() {
        job_handle.phase(Phase::Loading);
        let generator = Generator::from_model_dir(model.clone(), options).map_err(engine_error)?;
        *slot = Some(generator);
        loaded.store(true, Ordering::SeqCst);
    }
    let generator = slot.as_ref().expect("loaded above");
    let out = generator.generate(job, job_handle);
    if !keep {
        // A card without room for both modes: Z-Image's memory goes back for decomposition.
        *slot = None;
        loaded.store(false, Ordering::SeqCst);
    }
    let out = out.map_err(engine_error)?;
    tracing::info!(
        "z-image {}×{} {} steps: encode {:.2}s, denoise {:.2}s, decode {:.2}s",
        job.width,
        job.height,
        job.steps,
        out.record.timings.encode_prompt,
        out.record.timings.denoise,
        out.record.timings.decode
    );
    out.response(job)
}

fn engine_error(e: engine::Error) -> ApiError {
    match e {
        engine::Error::Cancelled => ApiError::cancelled(),
        engine::Error::InvalidInput(m) => ApiError::unprocessable(m),
        other => ApiError::internal(format!("Z-Image failed: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_stays_loaded_where_both_modes_fit() {
        assert!(residency(false, false, None).0);
        assert!(residency(true, true, Some(24 << 30)).0);
        assert!(residency(true, false, Some(141 << 30)).0);
        let (keep, why) = residency(true, false, Some(80 << 30));
        assert!(!keep);
        assert!(why.contains("a 80 GiB card") && why.contains("125 GiB"), "{why}");
        assert!(!residency(true, false, None).0);
    }

    #[test]
    fn the_text_encoder_stays_where_there_is_room() {
        assert!(keep_text_encoder(false, false, None));
        assert!(keep_text_encoder(true, false, Some(141 << 30)));
        assert!(!keep_text_encoder(true, false, Some(24 << 30)));
        assert!(!keep_text_encoder(true, false, None));
        assert!(!keep_text_encoder(true, true, Some(141 << 30)));
    }
}

// ---------------------------------------------------------------------------------------------
// REST
// ---------------------------------------------------------------------------------------------

type ApiResult<T> = Result<T, ErrorResponse>;

/// Generate an image from a prompt and wait for it.
#[utoipa::path(post, path = "/api/z-image/generate", request_body = GenerateRequest,
    responses((status = 200, description = "the image", body = GenerateResponse), DoorErrors))]
pub(crate) async fn generate(
    State(service): State<Arc<ZImageService>>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let request: GenerateRequest = parse_json(body)?;
    Ok(Json(service.generate(request, &caller).await?).into_response())
}

/// Queue a generation; follow it with `GET /api/z-image/jobs/{id}`.
#[utoipa::path(post, path = "/api/z-image/jobs", request_body = GenerateRequest,
    responses((status = 202, description = "queued", body = JobStarted), DoorErrors))]
pub(crate) async fn start_job(
    State(service): State<Arc<ZImageService>>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let request: GenerateRequest = parse_json(body)?;
    Ok((StatusCode::ACCEPTED, Json(service.start(request, &caller)?)).into_response())
}

/// A generation's state, phase, step, ETA and (when done) image.
#[utoipa::path(get, path = "/api/z-image/jobs/{id}", params(("id" = String, Path)),
    responses((status = 200, body = ZImageJobStatus), DoorErrors))]
pub(crate) async fn job_status(
    State(service): State<Arc<ZImageService>>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    Ok(Json(service.job_status(&job_id(path)?, &caller)?).into_response())
}

/// Stop a generation between denoising steps.
#[utoipa::path(post, path = "/api/z-image/jobs/{id}/cancel", params(("id" = String, Path)),
    responses((status = 200, body = ZImageJobStatus), DoorErrors))]
pub(crate) async fn cancel_job(
    State(service): State<Arc<ZImageService>>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    Ok(Json(service.cancel(&job_id(path)?, &caller)?).into_response())
}

/// The Z-Image model's state, the page's default mode and the generation defaults.
#[utoipa::path(get, path = "/api/z-image/status", responses((status = 200, body = ZImageStatusResponse), DoorErrors))]
pub(crate) async fn status(State(service): State<Arc<ZImageService>>) -> Response {
    Json(service.status()).into_response()
}

async fn not_found() -> ErrorResponse {
    ErrorResponse(ApiError::new(404, "no such API endpoint"))
}

async fn method_not_allowed() -> ErrorResponse {
    ErrorResponse(ApiError::new(405, "method not allowed on this endpoint"))
}

/// The `/api/z-image/*` routes (the door's policy is layered on by the caller).
pub fn router(service: Arc<ZImageService>) -> Router {
    Router::new()
        .route("/api/z-image/generate", post(generate).fallback(method_not_allowed))
        .route("/api/z-image/jobs", post(start_job).fallback(method_not_allowed))
        .route("/api/z-image/jobs/{id}", get(job_status).fallback(method_not_allowed))
        .route(
            "/api/z-image/jobs/{id}/cancel",
            post(cancel_job).fallback(method_not_allowed),
        )
        .route("/api/z-image/status", get(status).fallback(method_not_allowed))
        .route("/api/z-image/{*rest}", axum::routing::any(not_found))
        .with_state(service)
}

/// The contract's limits on [`GenerateRequest`]'s fields in the OpenAPI document's `schemas`
/// (steps and cfg_scale get the shared ones in [`crate::openapi::document`]).
pub fn document_limits(schemas: &mut serde_json::Value) {
    use app::api_z_image::{Z_MAX_SIZE, Z_MIN_SIZE, Z_SIZE_MULTIPLE};
    use serde_json::json;
    let properties = &mut schemas["GenerateRequest"]["properties"];
    for field in ["width", "height"] {
        if let Some(p) = properties[field].as_object_mut() {
            p.extend(
                json!({"minimum": Z_MIN_SIZE, "maximum": Z_MAX_SIZE, "multipleOf": Z_SIZE_MULTIPLE})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            );
        }
    }
    if let Some(p) = properties["seed"].as_object_mut() {
        p.insert("minimum".into(), json!(0));
        p.insert("maximum".into(), json!(app::api_z_image::Z_MAX_SEED));
    }
    if let Some(p) = properties["prompt"].as_object_mut() {
        p.insert("minLength".into(), json!(1));
        p.insert("maxLength".into(), json!(app::api::MAX_PROMPT_CHARS));
    }
}

// The page's server functions (`app::server_fns_z_image`), declared for the document.

/// `z_image_start`'s body.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct ZImageStartCall {
    request: GenerateRequest,
}

/// `z_image_job_status`'s and `z_image_cancel`'s body.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct ZImageJobCall {
    id: String,
}

#[utoipa::path(get, path = "/api/app/z_image_status", responses((status = 200, body = ZImageStatusResponse), DoorErrors))]
#[allow(dead_code)]
fn app_z_image_status() {}

#[utoipa::path(post, path = "/api/app/z_image_start", request_body = ZImageStartCall,
    responses((status = 200, body = JobStarted), DoorErrors))]
#[allow(dead_code)]
fn app_z_image_start() {}

#[utoipa::path(post, path = "/api/app/z_image_job_status", request_body = ZImageJobCall,
    responses((status = 200, body = ZImageJobStatus), DoorErrors))]
#[allow(dead_code)]
fn app_z_image_job_status() {}

#[utoipa::path(post, path = "/api/app/z_image_cancel", request_body = ZImageJobCall,
    responses((status = 200, body = ZImageJobStatus), DoorErrors))]
#[allow(dead_code)]
fn app_z_image_cancel() {}

/// The routes' part of the OpenAPI document (merged into [`crate::openapi::document`]).
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        generate,
        start_job,
        job_status,
        cancel_job,
        status,
        app_z_image_status,
        app_z_image_start,
        app_z_image_job_status,
        app_z_image_cancel
    ),
    components(schemas(
        GenerateRequest,
        GenerateResponse,
        ZImageJobStatus,
        ZImageStatusResponse,
        app::api_z_image::ZImageDefaults,
        JobStarted,
        JobState
    ))
)]
pub struct ZImageApi;
