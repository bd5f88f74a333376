//! Jobs that clients can follow: each decomposition or layer edit gets an unguessable id, its
//! owner, a state, the engine's phase and step, an ETA, and a cancel flag the engine checks
//! between steps. Finished jobs' records stay a while; decompositions' results live in the
//! [`crate::run_store`], so however many other jobs finish, a result is not lost. The same
//! [`JobHandle`] and [`JobRegistry`] serve both kinds, generic over the result ([`JobOutput`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use app::api::{ApiError, DecomposeResponse, EditJobStatus, EditResult, JobState, JobStatus};
use engine::pipeline::{Phase, Progress};

/// What a kind of job produces, and how its status is reported.
pub trait JobOutput: Clone + Send + Sync + 'static {
    /// The status clients read (`JobStatus` for decompositions, `EditJobStatus` for edits,
    /// `ZImageJobStatus` for Z-Image generations).
    type Status;
    /// How long a finished job's record (state, error, a result not in the run store) stays in
    /// memory; a stored result outlives it.
    const KEEP_FINISHED: Duration = Duration::from_secs(15 * 60);
    /// How its ids start.
    const ID_PREFIX: &'static str = "job-";
    fn status(progress: JobProgress, result: Option<Self>) -> Self::Status;
}

/// Z-Image generations keep their image in memory only (it is not written to the run store).
impl JobOutput for app::api_z_image::GenerateResponse {
    type Status = app::api_z_image::ZImageJobStatus;
    const KEEP_FINISHED: Duration = Duration::from_secs(30 * 60);
    const ID_PREFIX: &'static str = "zimg-";
    fn status(p: JobProgress, result: Option<Self>) -> Self::Status {
        app::api_z_image::ZImageJobStatus {
            id: p.id,
            state: p.state,
            phase: p.phase,
            step: p.step,
            total_steps: p.total_steps,
            elapsed: p.elapsed,
            eta_seconds: p.eta_seconds,
            error: p.error,
            result,
        }
    }
}

/// Cancels its job when dropped before [`CancelOnDrop::disarm`]: a blocking request whose
/// client went away stops its job between steps.
pub struct CancelOnDrop<R: JobOutput>(Option<Arc<JobHandle<R>>>);

impl<R: JobOutput> CancelOnDrop<R> {
    pub fn new(job: Arc<JobHandle<R>>) -> Self {
        Self(Some(job))
    }

    pub fn disarm(mut self) {
        self.0 = None;
    }
}

impl<R: JobOutput> Drop for CancelOnDrop<R> {
    fn drop(&mut self) {
        if let Some(job) = self.0.take() {
            job.request_cancel();
        }
    }
}

/// A job's state and progress, without its result.
#[derive(Debug, Clone, PartialEq)]
pub struct JobProgress {
    pub id: String,
    pub state: JobState,
    pub phase: String,
    pub step: u32,
    pub total_steps: u32,
    pub elapsed: f64,
    pub eta_seconds: Option<f64>,
    pub queue_position: Option<u32>,
    pub error: Option<String>,
}

impl JobOutput for DecomposeResponse {
    type Status = JobStatus;
    fn status(p: JobProgress, result: Option<Self>) -> JobStatus {
        JobStatus {
            id: p.id,
            state: p.state,
            phase: p.phase,
            step: p.step,
            total_steps: p.total_steps,
            elapsed: p.elapsed,
            eta_seconds: p.eta_seconds,
            queue_position: p.queue_position,
            error: p.error,
            result,
        }
    }
}

impl JobOutput for EditResult {
    type Status = EditJobStatus;
    fn status(p: JobProgress, result: Option<Self>) -> EditJobStatus {
        EditJobStatus {
            id: p.id,
            state: p.state,
            phase: p.phase,
            step: p.step,
            total_steps: p.total_steps,
            elapsed: p.elapsed,
            eta_seconds: p.eta_seconds,
            queue_position: p.queue_position,
            error: p.error,
            result,
        }
    }
}

#[derive(Debug)]
struct Record<R> {
    state: JobState,
    phase: &'static str,
    step: u32,
    total_steps: u32,
    started: Option<Instant>,
    /// When denoising began and when its last step finished (for the ETA).
    denoise_started: Option<Instant>,
    last_step: Option<Instant>,
    finished: Option<Instant>,
    error: Option<String>,
    /// The result, while it is not in the run store (it failed to save, say; edits' always).
    result: Option<R>,
}

/// One job's shared state: written by the engine worker, read by status requests.
#[derive(Debug)]
pub struct JobHandle<R = DecomposeResponse> {
    pub id: String,
    /// Who started it ([`app::backend::Caller::owner`]); `None`: whoever holds the id.
    pub owner: Option<String>,
    seq: u64,
    record: Mutex<Record<R>>,
    cancel: AtomicBool,
}

impl<R: JobOutput> JobHandle<R> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Record<R>> {
        self.record.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the job running (called on the worker when it picks the job up).
    pub fn start(&self) {
        let mut r = self.lock();
        r.state = JobState::Running;
        r.phase = "starting";
        r.started = Some(Instant::now());
    }

    /// Records the final outcome; `stored`: the result is in the run store, so it is not kept here.
    pub fn finish(&self, outcome: &Result<R, ApiError>, stored: bool) {
        let mut r = self.lock();
        r.finished = Some(Instant::now());
        match outcome {
            Ok(resp) => {
                r.state = JobState::Done;
                r.phase = "done";
                r.step = r.total_steps;
                r.result = (!stored).then(|| resp.clone());
            }
            Err(e) if self.cancel.load(Ordering::SeqCst) && e.status == app::api::CANCELLED_STATUS => {
                r.state = JobState::Cancelled;
                r.phase = "cancelled";
                r.error = Some(e.error.clone());
            }
            Err(e) => {
                r.state = JobState::Failed;
                r.phase = "failed";
                r.error = Some(e.error.clone());
            }
        }
    }

    /// Whether a cancel was requested (also readable before the job starts).
    pub fn is_cancelled_now(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }

    pub fn request_cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }

    pub fn status(&self, queue_position: Option<u32>) -> R::Status {
        let r = self.lock();
        let now = Instant::now();
        let elapsed = r.started.map_or(0.0, |s| (r.finished.unwrap_or(now) - s).as_secs_f64());
        // Only while denoising: the other phases are not timed per step (the page names them).
        let eta_seconds = match (r.state, r.phase, r.denoise_started, r.last_step) {
            (JobState::Running, "denoising", Some(t0), Some(t1)) => {
                denoise_eta(r.step, r.total_steps, (t1 - t0).as_secs_f64(), (now - t1).as_secs_f64())
            }
            _ => None,
        };
        let progress = JobProgress {
            id: self.id.clone(),
            state: r.state,
            phase: r.phase.to_string(),
            step: r.step,
            total_steps: r.total_steps,
            elapsed,
            eta_seconds,
            queue_position: (r.state == JobState::Queued).then_some(queue_position.unwrap_or(0)),
            error: r.error.clone(),
        };
        R::status(progress, r.result.clone())
    }
}

impl<R: JobOutput> Progress for JobHandle<R> {
    fn phase(&self, phase: Phase) {
        let mut r = self.lock();
        r.phase = phase.name();
        if phase == Phase::Denoising {
            r.denoise_started = Some(Instant::now());
        }
    }

    fn step(&self, done: usize, total: usize) {
        let mut r = self.lock();
        if done as u32 > r.step {
            r.last_step = Some(Instant::now());
        }
        r.step = done as u32;
        r.total_steps = total as u32;
    }

    fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }
}

/// Seconds of denoising left after `step` of `total` steps took `finished_secs`, the running step
/// having run `running_secs`: the mean step time for each step left, less what the running step
/// has done, but never less than the steps after the running one need, so a step slower than
/// the mean holds the estimate instead of driving it to zero. `None` before the first step ends
/// and after the last.
pub fn denoise_eta(step: u32, total: u32, finished_secs: f64, running_secs: f64) -> Option<f64> {
    if step == 0 || step >= total {
        return None;
    }
    let per_step = finished_secs / f64::from(step);
    let left = f64::from(total - step);
    Some((per_step * left - running_secs).max(per_step * (left - 1.0)))
}

/// All jobs of one kind the server knows about.
#[derive(Debug)]
pub struct JobRegistry<R = DecomposeResponse> {
    jobs: Mutex<HashMap<String, Arc<JobHandle<R>>>>,
    next: AtomicU64,
}

impl<R> Default for JobRegistry<R> {
    fn default() -> Self {
        Self {
            jobs: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
        }
    }
}

impl<R: JobOutput> JobRegistry<R> {
    /// Registers a new queued job of `owner` with `total_steps` denoising steps.
    pub fn create(&self, total_steps: u32, owner: Option<String>) -> Arc<JobHandle<R>> {
        let seq = self.next.fetch_add(1, Ordering::SeqCst);
        let id = format!("{}{}", R::ID_PREFIX, crate::door::random_id());
        let handle = Arc::new(JobHandle {
            id: id.clone(),
            owner,
            seq,
            record: Mutex::new(Record {
                state: JobState::Queued,
                phase: "queued",
                step: 0,
                total_steps,
                started: None,
                denoise_started: None,
                last_step: None,
                finished: None,
                error: None,
                result: None,
            }),
            cancel: AtomicBool::new(false),
        });
        let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        Self::prune(&mut jobs);
        jobs.insert(id, handle.clone());
        handle
    }

    /// Forgets records finished longer ago than [`JobOutput::KEEP_FINISHED`] (by age only: other
    /// jobs finishing never push a record out).
    fn prune(jobs: &mut HashMap<String, Arc<JobHandle<R>>>) {
        let now = Instant::now();
        jobs.retain(|_, j| j.lock().finished.is_none_or(|f| now - f < R::KEEP_FINISHED));
    }

    /// The job, if it is in memory.
    pub fn find(&self, id: &str) -> Option<Arc<JobHandle<R>>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).get(id).cloned()
    }

    /// The job's status, with its place in the queue while waiting.
    /// Forgets a job that never made it into the queue.
    pub fn remove(&self, id: &str) {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }

    pub fn status(&self, job: &JobHandle<R>) -> R::Status {
        let ahead = {
            let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
            jobs.values()
                .filter(|j| j.seq < job.seq && j.lock().state == JobState::Queued)
                .count() as u32
        };
        job.status(Some(ahead))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response() -> DecomposeResponse {
        DecomposeResponse {
            layers: vec![],
            zip_data: String::new(),
            generation_time: 1.0,
            layer_count: 2,
            resolution: 640,
            layer_order: "bottom-to-top".into(),
            seed: 1,
            width: 640,
            height: 640,
            caption: None,
            files: Vec::new(),
            auto_layers: None,
        }
    }

    #[test]
    fn a_job_goes_from_queued_to_done_with_progress() {
        let reg = JobRegistry::<DecomposeResponse>::default();
        let a = reg.create(10, None);
        let b = reg.create(10, Some("session:x".into()));
        assert_eq!(reg.status(&b).queue_position, Some(1));
        assert_eq!(reg.find(&b.id).unwrap().owner.as_deref(), Some("session:x"));
        assert_eq!(a.id.len(), 4 + 32, "job- and 128 random bits: {}", a.id);
        let s = reg.status(&a);
        assert_eq!(
            (s.state, s.queue_position, s.eta_seconds),
            (JobState::Queued, Some(0), None)
        );
        a.start();
        a.phase(Phase::Denoising);
        std::thread::sleep(Duration::from_millis(20));
        a.step(2, 10);
        let s = reg.status(&a);
        assert_eq!(
            (s.state, s.phase.as_str(), s.step, s.total_steps),
            (JobState::Running, "denoising", 2, 10)
        );
        let eta = s.eta_seconds.unwrap();
        assert!(eta > 0.05 && eta < 5.0, "eta {eta}: 8 steps left at ≥ 10 ms a step");
        // Decoding has no steps to time: no ETA (the page says "Decoding the layers").
        a.phase(Phase::Decoding);
        assert_eq!(reg.status(&a).eta_seconds, None);
        assert_eq!(reg.status(&b).queue_position, Some(0));
        a.finish(&Ok(response()), false);
        let s = reg.status(&a);
        assert_eq!((s.state, s.step), (JobState::Done, 10));
        assert_eq!(s.result.unwrap().layer_count, 2);
        b.finish(&Ok(response()), true);
        let s = reg.status(&b);
        assert_eq!(s.state, JobState::Done);
        assert!(
            s.result.is_none(),
            "a stored result is read from the store, not kept in memory"
        );
    }

    #[test]
    fn the_eta_counts_down_during_a_step_and_never_grows() {
        // 2 of 10 steps in 2 s: 1 s a step, 8 left.
        assert_eq!(denoise_eta(2, 10, 2.0, 0.0), Some(8.0));
        assert_eq!(denoise_eta(2, 10, 2.0, 0.25), Some(7.75));
        // A step slower than the mean holds the estimate at the 7 steps after it.
        assert_eq!(denoise_eta(2, 10, 2.0, 5.0), Some(7.0));
        let mut last = f64::INFINITY;
        for tenth in 0..30 {
            let eta = denoise_eta(2, 10, 2.0, f64::from(tenth) / 10.0).unwrap();
            assert!(eta <= last, "the estimate grew while a step ran: {eta} > {last}");
            last = eta;
        }
        assert_eq!(denoise_eta(0, 10, 0.0, 3.0), None, "nothing timed yet");
        assert_eq!(denoise_eta(10, 10, 9.0, 0.0), None, "denoising is over");
    }

    #[test]
    fn cancel_and_failure_are_distinct_outcomes() {
        let reg = JobRegistry::<DecomposeResponse>::default();
        let a = reg.create(5, None);
        assert!(!a.is_cancelled());
        a.request_cancel();
        assert!(a.is_cancelled());
        a.finish(&Err(ApiError::cancelled()), false);
        assert_eq!(reg.status(&a).state, JobState::Cancelled);
        let b = reg.create(5, None);
        b.finish(&Err(ApiError::internal("engine failed")), false);
        let s = reg.status(&b);
        assert_eq!((s.state, s.error.as_deref()), (JobState::Failed, Some("engine failed")));
        assert!(reg.find("job-x").is_none());
    }

    #[test]
    fn a_burst_of_other_jobs_does_not_push_a_finished_one_out() {
        let reg = JobRegistry::<DecomposeResponse>::default();
        let first = reg.create(1, None);
        first.finish(&Ok(response()), false);
        for _ in 0..100 {
            let j = reg.create(1, None);
            j.request_cancel();
            j.finish(&Err(ApiError::cancelled()), false);
        }
        reg.create(1, None); // creating prunes
        assert_eq!(reg.status(&reg.find(&first.id).unwrap()).result.unwrap().layer_count, 2);
    }
}
