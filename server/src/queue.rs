//! The job queue: engine workers, one per device (or pair of devices, see [`crate::workers`]),
//! each a thread owning its own engine state (models are large and each GPU holds its own), and
//! a bounded queue in front of them from which the first free worker takes the next job. A full
//! queue answers 429 with Retry-After instead of piling up memory.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use app::api::{ApiError, WorkerStatus};
use tokio::sync::{mpsc, oneshot};

/// A unit of work run on a worker thread with exclusive access to its `S` (the loaded models);
/// it marks the worker free before it hands its result over.
type Task<S> = Box<dyn FnOnce(&mut S, &WorkerInfo) + Send>;

/// A queued task and what kind of job it is (for `/status`).
struct Queued<S> {
    kind: &'static str,
    run: Task<S>,
}

/// What `/status` tells of one worker, kept current by its thread.
#[derive(Debug)]
struct WorkerInfo {
    device: String,
    /// The kind of job running now ("decompose", "edit", …), empty when idle.
    running: Mutex<&'static str>,
    busy: AtomicBool,
    jobs_done: AtomicU64,
}

impl WorkerInfo {
    fn finished(&self) {
        *self.running.lock().unwrap_or_else(|p| p.into_inner()) = "";
        self.busy.store(false, Ordering::SeqCst);
        self.jobs_done.fetch_add(1, Ordering::SeqCst);
    }
}

pub struct JobQueue<S> {
    tx: mpsc::Sender<Queued<S>>,
    /// Jobs submitted and not finished (waiting + running).
    in_flight: Arc<AtomicU32>,
    capacity: u32,
    workers: Vec<Arc<WorkerInfo>>,
}

impl<S: Send + 'static> JobQueue<S> {
    /// One worker owning `state`; `capacity` jobs may wait behind the running one.
    pub fn start(state: S, capacity: u32) -> Self {
        Self::start_pool(vec![("worker".into(), state)], capacity)
    }

    /// A worker thread per `(device label, state)`; `capacity` jobs may wait behind the running
    /// ones. Each worker takes the next job as soon as it is free, so jobs start in the order
    /// they came, on whichever worker frees first.
    pub fn start_pool(states: Vec<(String, S)>, capacity: u32) -> Self {
        assert!(!states.is_empty(), "a job queue needs at least one worker");
        let (tx, rx) = mpsc::channel::<Queued<S>>(capacity.max(1) as usize);
        // Idle workers wait in turn on the receiver: the one holding it takes the next job.
        let rx = Arc::new(Mutex::new(rx));
        let mut workers = Vec::new();
        for (index, (device, state)) in states.into_iter().enumerate() {
            let info = Arc::new(WorkerInfo {
                device,
                running: Mutex::new(""),
                busy: AtomicBool::new(false),
                jobs_done: AtomicU64::new(0),
            });
            workers.push(info.clone());
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("engine-worker-{index}"))
                .spawn(move || {
                    let mut state = state;
                    loop {
                        let next = rx.lock().unwrap_or_else(|p| p.into_inner()).blocking_recv();
                        let Some(task) = next else { break };
                        *info.running.lock().unwrap_or_else(|p| p.into_inner()) = task.kind;
                        info.busy.store(true, Ordering::SeqCst);
                        (task.run)(&mut state, &info);
                    }
                })
                .expect("spawning an engine worker thread");
        }
        Self {
            tx,
            in_flight: Arc::new(AtomicU32::new(0)),
            capacity: capacity.max(1),
            workers,
        }
    }

    /// Queues `work` and waits for its result. Fails fast with 429 when the queue is full.
    pub async fn run<T, F>(&self, work: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&mut S) -> Result<T, ApiError> + Send + 'static,
    {
        let done = self.submit(work)?;
        done.await
            .unwrap_or_else(|_| Err(ApiError::internal("the engine worker dropped the job")))
    }

    /// Queues `work` without waiting; the receiver yields its result. Fails fast with 429 when
    /// the queue is full, so the caller knows at once whether the job was accepted.
    pub fn submit<T, F>(&self, work: F) -> Result<oneshot::Receiver<Result<T, ApiError>>, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&mut S) -> Result<T, ApiError> + Send + 'static,
    {
        self.submit_kind("job", work)
    }

    /// [`submit`](Self::submit), naming the kind of job `/status` shows while it runs.
    pub fn submit_kind<T, F>(
        &self,
        kind: &'static str,
        work: F,
    ) -> Result<oneshot::Receiver<Result<T, ApiError>>, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&mut S) -> Result<T, ApiError> + Send + 'static,
    {
        let (done_tx, done_rx) = oneshot::channel();
        let in_flight = self.in_flight.clone();
        let run: Task<S> = Box::new(move |state, worker| {
            // A panic in the engine must not take the worker (and every later job) down.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(state)))
                .unwrap_or_else(|_| Err(ApiError::internal("the engine panicked while running this job")));
            // Free before the result is out, so whoever reads it sees the worker free.
            worker.finished();
            in_flight.fetch_sub(1, Ordering::SeqCst);
            let _ = done_tx.send(result);
        });
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        if let Err(e) = self.tx.try_send(Queued { kind, run }) {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            return Err(match e {
                mpsc::error::TrySendError::Full(_) => ApiError::busy(
                    format!("the job queue is full ({} waiting); try again shortly", self.capacity),
                    10,
                ),
                mpsc::error::TrySendError::Closed(_) => ApiError::unavailable("the engine worker has stopped"),
            });
        }
        Ok(done_rx)
    }

    /// Jobs waiting or running.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Jobs waiting for a free worker.
    pub fn waiting(&self) -> u32 {
        let running = self.workers.iter().filter(|w| w.busy.load(Ordering::SeqCst)).count() as u32;
        self.in_flight().saturating_sub(running)
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// Each worker's device and what it is doing, for `/status`.
    pub fn workers(&self) -> Vec<WorkerStatus> {
        self.workers
            .iter()
            .enumerate()
            .map(|(index, w)| {
                let running = *w.running.lock().unwrap_or_else(|p| p.into_inner());
                WorkerStatus {
                    index: index as u32,
                    device: w.device.clone(),
                    busy: w.busy.load(Ordering::SeqCst),
                    running: (!running.is_empty()).then(|| running.to_string()),
                    jobs_done: w.jobs_done.load(Ordering::SeqCst),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc as std_mpsc;
    use std::time::Duration;

    #[tokio::test]
    async fn jobs_run_in_order_on_one_worker_with_state() {
        let q = JobQueue::start(Vec::<u32>::new(), 4);
        for i in 0..3 {
            let seen = q
                .run(move |s: &mut Vec<u32>| {
                    s.push(i);
                    Ok(s.clone())
                })
                .await
                .unwrap();
            assert_eq!(seen, (0..=i).collect::<Vec<_>>());
        }
        assert_eq!(q.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_full_queue_answers_429_and_recovers() {
        let q = Arc::new(JobQueue::start((), 1));
        let (release_tx, release_rx) = std_mpsc::channel::<()>();
        let release_rx = Arc::new(std::sync::Mutex::new(release_rx));
        // One job running (blocked), one waiting: the queue (capacity 1) is then full.
        let mut handles = Vec::new();
        for _ in 0..2 {
            let (q, rx) = (q.clone(), release_rx.clone());
            handles.push(tokio::spawn(async move {
                q.run(move |_| {
                    rx.lock().unwrap().recv().unwrap();
                    Ok(1)
                })
                .await
            }));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let err = q.run(|_| Ok(0)).await.unwrap_err();
        assert_eq!(err.status, 429);
        assert_eq!(err.retry_after, Some(10));
        assert_eq!(q.in_flight(), 2);
        release_tx.send(()).unwrap();
        release_tx.send(()).unwrap();
        for h in handles {
            assert_eq!(h.await.unwrap().unwrap(), 1);
        }
        assert_eq!(q.run(|_| Ok(5)).await.unwrap(), 5);
    }

    #[tokio::test]
    async fn a_panicking_job_is_an_error_and_the_worker_survives() {
        let q = JobQueue::start((), 2);
        let err = q.run(|_| -> Result<(), ApiError> { panic!("boom") }).await.unwrap_err();
        assert_eq!(err.status, 500);
        assert_eq!(q.run(|_| Ok(3)).await.unwrap(), 3);
    }

    #[tokio::test]
    async fn the_first_free_worker_takes_the_next_job() {
        // Two workers, each knowing its index; a job held on worker A does not stop worker B.
        let q = Arc::new(JobQueue::start_pool(
            vec![("cpu".into(), 0u32), ("cpu".into(), 1u32)],
            4,
        ));
        let (release_tx, release_rx) = std_mpsc::channel::<()>();
        let held = q
            .submit_kind("decompose", move |s: &mut u32| {
                release_rx.recv().unwrap();
                Ok(*s)
            })
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let status = q.workers();
        assert_eq!(status.iter().filter(|w| w.busy).count(), 1);
        let busy = status.iter().find(|w| w.busy).unwrap();
        assert_eq!(busy.running.as_deref(), Some("decompose"));
        // Three more jobs all run on the free worker while the first is held.
        for _ in 0..3 {
            let other = q.run(|s: &mut u32| Ok(*s)).await.unwrap();
            assert_ne!(other, busy.index, "a job waited for the busy worker");
        }
        assert_eq!((q.in_flight(), q.waiting()), (1, 0));
        release_tx.send(()).unwrap();
        assert_eq!(held.await.unwrap().unwrap(), busy.index);
        let done: u64 = q.workers().iter().map(|w| w.jobs_done).sum();
        assert_eq!(done, 4);
        assert!(q.workers().iter().all(|w| !w.busy && w.running.is_none()));
    }

    #[tokio::test]
    async fn jobs_run_at_once_on_as_many_workers_as_there_are() {
        let workers = 3;
        let q = Arc::new(JobQueue::start_pool(
            (0..workers).map(|i| (format!("cpu{i}"), ())).collect(),
            8,
        ));
        // Each job waits until all three are running: this finishes only if they run together.
        let barrier = Arc::new(std::sync::Barrier::new(workers));
        let jobs: Vec<_> = (0..workers)
            .map(|_| {
                let b = barrier.clone();
                q.submit(move |_| {
                    b.wait();
                    Ok(())
                })
                .unwrap()
            })
            .collect();
        for j in jobs {
            tokio::time::timeout(Duration::from_secs(10), j)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
        }
        let labels: Vec<_> = q.workers().into_iter().map(|w| w.device).collect();
        assert_eq!(labels, ["cpu0", "cpu1", "cpu2"]);
    }
}
