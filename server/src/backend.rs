//! The server's implementation of the app's [`Backend`]: validation, model availability, and
//! the job queue in front of the engine. REST routes and server functions both call it.

use std::sync::Arc;

use app::api::{
    ApiError, ConfigResponse, DecomposeJob, DecomposeRequest, DecomposeResponse, EditJobStatus, EditLayerRequest,
    EditResult, EditStatusResponse, JobStarted, JobState, JobStatus, Limits, RunSummary, SplitLayerRequest,
    StatusResponse,
};
use app::backend::{Backend, BoxFuture, Caller};

use crate::config::QwenImageSettings;
use crate::engine_state::{EngineState, PromptChecker, SharedEditState};
use crate::jobs::{CancelOnDrop, JobHandle, JobRegistry};
use crate::queue::JobQueue;
use crate::run_store::{unix_now, RunStore};

/// Limits and identity of a running server, fixed at startup.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub settings: QwenImageSettings,
    pub model_type: String,
    pub device: String,
    pub queue_depth: u32,
    pub max_body_bytes: u64,
    pub max_image_pixels: u64,
}

pub struct ServerBackend {
    options: ServerOptions,
    limits: Limits,
    queue: Arc<JobQueue<EngineState>>,
    /// Set by the worker once the decompose models are in memory.
    loaded: Arc<std::sync::atomic::AtomicBool>,
    jobs: JobRegistry,
    /// Layer edits being followed (their results stay in memory only).
    edit_jobs: JobRegistry<EditResult>,
    /// Why decomposition cannot run (model missing…), found at startup.
    unavailable: Option<String>,
    /// The edit model's state, kept current by the worker.
    edit: SharedEditState,
    /// Finished results on disk.
    store: Arc<RunStore>,
    /// Refuses over-long prompts before queueing (when the model's tokenizer could be read).
    prompts: Option<PromptChecker>,
    /// Where the text encoder lives between jobs, for `/status`.
    text_encoder: String,
    /// Whether both pipelines stay loaded, for `/status`.
    pipelines: String,
    /// LoRA adapters and presets, for `/config`; what is merged now, for `/status`.
    adapters: app::api_lora::AdapterConfig,
    active_lora: crate::adapters::SharedActiveLora,
}

/// Where a queued decomposition's result arrives.
type Outcome = tokio::sync::oneshot::Receiver<Result<DecomposeResponse, ApiError>>;

/// Where a queued edit's result (the PNG) arrives.
type EditOutcome = tokio::sync::oneshot::Receiver<Result<Vec<u8>, ApiError>>;

/// The answer for a job that does not exist or belongs to someone else (the same, so ids of
/// other people's jobs cannot be probed).
fn no_such_job(id: &str) -> ApiError {
    ApiError::new(
        404,
        format!("no job {id} (finished results are kept on the server for --keep-results-hours)"),
    )
}

fn may_see(owner: Option<&str>, caller: &Caller) -> bool {
    owner.is_none() || owner == caller.owner.as_deref()
}

impl ServerBackend {
    /// A backend in front of one engine worker.
    pub fn new(options: ServerOptions, engine: EngineState, store: RunStore) -> Arc<Self> {
        Self::with_workers(options, vec![("worker".into(), engine)], store)
    }

    /// A backend in front of several engine workers, each `(device label, state)`; the first
    /// one's state answers what the server reports about models (they all share it).
    pub fn with_workers(options: ServerOptions, workers: Vec<(String, EngineState)>, store: RunStore) -> Arc<Self> {
        let engine = &workers[0].1;
        let limits = Limits {
            default_layer_num: options.settings.layer_num,
            default_resolution: options.settings.resolution,
            default_steps: options.settings.num_inference_steps,
            default_cfg_scale: options.settings.cfg_scale,
            max_image_pixels: options.max_image_pixels,
            presets: engine.adapter_config().presets,
        };
        let unavailable = engine.decompose_unavailable();
        let edit = engine.edit_state();
        let loaded = engine.loaded_flag();
        let prompts = engine.prompt_checker();
        let (_, text_encoder) = engine.text_encoder_residency();
        let (_, pipelines) = engine.pipeline_residency();
        let adapters = engine.adapter_config();
        let active_lora = engine.active_lora();
        let queue = Arc::new(JobQueue::start_pool(workers, options.queue_depth));
        let store = Arc::new(store);
        Arc::new(Self {
            options,
            limits,
            queue,
            loaded,
            jobs: JobRegistry::default(),
            edit_jobs: JobRegistry::default(),
            unavailable,
            edit,
            store,
            prompts,
            text_encoder,
            pipelines,
            adapters,
            active_lora,
        })
    }

    pub fn options(&self) -> &ServerOptions {
        &self.options
    }

    /// Validates a request and queues it as a followable job; the receiver yields its outcome.
    fn enqueue_decompose(
        &self,
        request: DecomposeRequest,
        caller: &Caller,
    ) -> Result<(Arc<JobHandle>, Outcome), ApiError> {
        let job: DecomposeJob = request.validate(&self.limits, random_seed())?;
        if let Some(reason) = &self.unavailable {
            return Err(ApiError::unavailable(reason.clone()));
        }
        if let Some(checker) = &self.prompts {
            checker.check(&job)?;
        }
        self.store.check_room()?;
        let handle = self.jobs.create(job.steps, caller.owner.clone());
        let worker_handle = handle.clone();
        let store = self.store.clone();
        let submitted = self.queue.submit_kind("decompose", move |engine: &mut EngineState| {
            if worker_handle.is_cancelled_now() {
                let out = Err(ApiError::cancelled());
                worker_handle.finish(&out, false);
                return out;
            }
            worker_handle.start();
            let (prompt, steps, cfg_scale) = (job.prompt.clone(), job.steps, job.cfg_scale);
            let out = engine.decompose(job, worker_handle.as_ref());
            let stored = match &out {
                Ok(response) => {
                    let summary = RunSummary {
                        id: worker_handle.id.clone(),
                        finished_at: unix_now(),
                        prompt,
                        layer_count: response.layer_count,
                        resolution: response.resolution,
                        width: response.width,
                        height: response.height,
                        seed: response.seed,
                        steps,
                        cfg_scale,
                        generation_time: response.generation_time,
                    };
                    store
                        .save(worker_handle.owner.as_deref(), &summary, response)
                        .map_err(|e| tracing::error!("keeping the result in memory only: {e}"))
                        .is_ok()
                }
                Err(_) => false,
            };
            worker_handle.finish(&out, stored);
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

    /// Validates an edit and queues it as a followable job; the receiver yields the PNG.
    fn enqueue_edit(
        &self,
        request: EditLayerRequest,
        caller: &Caller,
    ) -> Result<(Arc<JobHandle<EditResult>>, EditOutcome), ApiError> {
        let job = request.validate(&self.limits, random_seed())?;
        if let Some(reason) = self.edit.lock().ok().and_then(|s| s.refusal()) {
            return Err(ApiError::unavailable(reason));
        }
        let handle = self.edit_jobs.create(job.steps, caller.owner.clone());
        let worker_handle = handle.clone();
        let submitted = self.queue.submit_kind("edit", move |engine: &mut EngineState| {
            if worker_handle.is_cancelled_now() {
                worker_handle.finish(&Err(ApiError::cancelled()), false);
                return Err(ApiError::cancelled());
            }
            worker_handle.start();
            let seed = job.seed;
            let out = engine.edit_layer(job, worker_handle.as_ref());
            let result = out.as_ref().map_err(Clone::clone).map(|png| EditResult {
                image: app::image_data::png_data_url(png),
                seed,
            });
            worker_handle.finish(&result, false);
            out
        });
        match submitted {
            Ok(done) => Ok((handle, done)),
            Err(e) => {
                self.edit_jobs.remove(&handle.id);
                Err(e)
            }
        }
    }

    /// Decomposes layer `index` (1 = bottom) of the caller's finished run `run_id` again, as a
    /// followable decompose job whose result is the layer's sub-layers.
    pub fn start_split(
        &self,
        run_id: &str,
        index: u32,
        request: SplitLayerRequest,
        caller: &Caller,
    ) -> Result<JobStarted, ApiError> {
        let run = self
            .store
            .load(run_id)
            .filter(|r| may_see(r.owner.as_deref(), caller))
            .ok_or_else(|| {
                ApiError::new(
                    404,
                    format!("no finished run {run_id} (runs are kept on the server for --keep-results-hours)"),
                )
            })?;
        if index == 0 {
            return Err(ApiError::unprocessable(
                "layer 0 is the composite, not a layer: split a layer from 1 (bottom) up",
            ));
        }
        let count = run.response.layer_count;
        let layer = run
            .response
            .layers
            .iter()
            .find(|l| l.index == index)
            .ok_or_else(|| ApiError::new(404, format!("run {run_id} has layers 1 to {count}, not {index}")))?;
        let decompose = request.into_decompose(layer.image.clone(), run.response.resolution);
        let (handle, _) = self.enqueue_decompose(decompose, caller)?;
        Ok(JobStarted { id: handle.id.clone() })
    }

    /// The worker queue (Z-Image jobs run on the same worker).
    pub(crate) fn queue_handle(&self) -> Arc<JobQueue<EngineState>> {
        self.queue.clone()
    }

    fn queue_state_loaded(&self) -> bool {
        self.loaded.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A seed for requests that did not choose one.
pub fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    // Keep seeds within 2^53 so JavaScript clients can hold them exactly.
    h.finish() & ((1 << 53) - 1)
}

impl Backend for ServerBackend {
    fn config(&self) -> ConfigResponse {
        let s = &self.options.settings;
        ConfigResponse {
            model_type: self.options.model_type.clone(),
            layer_num: s.layer_num,
            resolution: s.resolution,
            steps: s.num_inference_steps,
            cfg_scale: s.cfg_scale,
            cpu_offload: s.cpu_offload,
            layer_range: [*app::api::LAYER_RANGE.start(), *app::api::LAYER_RANGE.end()],
            resolutions: app::api::RESOLUTIONS.to_vec(),
            max_steps: app::api::MAX_STEPS,
            max_image_pixels: self.options.max_image_pixels,
            max_body_bytes: self.options.max_body_bytes,
            adapters: self.adapters.clone(),
        }
    }

    fn status(&self) -> StatusResponse {
        let in_flight = self.queue.in_flight();
        let loaded = self.queue_state_loaded();
        StatusResponse {
            status: match (&self.unavailable, loaded) {
                (Some(_), _) => "unavailable",
                (None, true) => "ready",
                (None, false) => "idle",
            }
            .into(),
            model_loaded: loaded,
            model: self.options.settings.model_path.clone(),
            device: self.options.device.clone(),
            reason: self.unavailable.clone(),
            queue_depth: self.queue.waiting(),
            queue_capacity: self.queue.capacity(),
            busy: in_flight > 0,
            text_encoder: self.text_encoder.clone(),
            pipelines: self.pipelines.clone(),
            lora: self.active_lora.lock().map(|a| a.clone()).unwrap_or_default(),
            workers: self.queue.workers(),
            parallel: self.options.settings.parallel.name().into(),
        }
    }

    fn edit_status(&self) -> EditStatusResponse {
        let model = self.options.settings.edit_model_source();
        match self.edit.lock() {
            Ok(state) => state.to_response(model),
            Err(_) => EditStatusResponse {
                status: "unavailable".into(),
                model_loaded: false,
                model: model.to_string(),
                reason: Some("the engine worker failed while loading the edit model".into()),
                download: None,
            },
        }
    }

    fn decompose(&self, request: DecomposeRequest, caller: Caller) -> BoxFuture<Result<DecomposeResponse, ApiError>> {
        let queued = self.enqueue_decompose(request, &caller);
        Box::pin(async move {
            let (handle, done) = queued?;
            let guard = CancelOnDrop::new(handle);
            let out = done
                .await
                .unwrap_or_else(|_| Err(ApiError::internal("the engine worker dropped the job")));
            guard.disarm();
            out
        })
    }

    fn start_decompose(&self, request: DecomposeRequest, caller: &Caller) -> Result<JobStarted, ApiError> {
        let (handle, _) = self.enqueue_decompose(request, caller)?;
        Ok(JobStarted { id: handle.id.clone() })
    }

    fn job_status(&self, id: &str, caller: &Caller) -> Result<JobStatus, ApiError> {
        if let Some(job) = self.jobs.find(id).filter(|j| may_see(j.owner.as_deref(), caller)) {
            let mut status = self.jobs.status(&job);
            if status.state == JobState::Done && status.result.is_none() {
                status.result = self.store.load(id).map(|run| run.response);
            }
            return Ok(status);
        }
        // Finished before this server started, or long ago: from the store.
        let run = self
            .store
            .load(id)
            .filter(|r| may_see(r.owner.as_deref(), caller))
            .ok_or_else(|| no_such_job(id))?;
        Ok(JobStatus {
            id: id.to_string(),
            state: JobState::Done,
            phase: "done".into(),
            step: run.summary.steps,
            total_steps: run.summary.steps,
            elapsed: run.summary.generation_time,
            eta_seconds: None,
            queue_position: None,
            error: None,
            result: Some(run.response),
        })
    }

    fn cancel_job(&self, id: &str, caller: &Caller) -> Result<JobStatus, ApiError> {
        if let Some(job) = self.jobs.find(id).filter(|j| may_see(j.owner.as_deref(), caller)) {
            job.request_cancel();
        }
        self.job_status(id, caller)
    }

    fn list_runs(&self, caller: &Caller) -> Vec<RunSummary> {
        caller
            .owner
            .as_deref()
            .map(|owner| self.store.list(owner))
            .unwrap_or_default()
    }

    fn edit_layer(&self, request: EditLayerRequest) -> BoxFuture<Result<Vec<u8>, ApiError>> {
        // A followable job like any other (no owner: nobody is given its id), so a client that
        // goes away cancels it between steps.
        let queued = self.enqueue_edit(request, &Caller::default());
        Box::pin(async move {
            let (handle, done) = queued?;
            let guard = CancelOnDrop::new(handle);
            let out = done
                .await
                .unwrap_or_else(|_| Err(ApiError::internal("the engine worker dropped the edit")));
            guard.disarm();
            out
        })
    }

    fn start_edit(&self, request: EditLayerRequest, caller: &Caller) -> Result<JobStarted, ApiError> {
        let (handle, _) = self.enqueue_edit(request, caller)?;
        Ok(JobStarted { id: handle.id.clone() })
    }

    fn edit_job_status(&self, id: &str, caller: &Caller) -> Result<EditJobStatus, ApiError> {
        let job = self
            .edit_jobs
            .find(id)
            .filter(|j| may_see(j.owner.as_deref(), caller))
            .ok_or_else(|| {
                ApiError::new(
                    404,
                    format!("no edit job {id} (a finished edit's record is kept for 15 minutes)"),
                )
            })?;
        Ok(self.edit_jobs.status(&job))
    }

    fn cancel_edit(&self, id: &str, caller: &Caller) -> Result<EditJobStatus, ApiError> {
        let status = self.edit_job_status(id, caller)?;
        if let Some(job) = self.edit_jobs.find(id) {
            job.request_cancel();
            return Ok(self.edit_jobs.status(&job));
        }
        Ok(status)
    }
}
