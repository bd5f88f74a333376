//! The job queue: one worker thread owns the engine (models are large and the GPU is one), and
//! requests wait for it in a bounded queue. A full queue answers 429 with Retry-After instead of
//! piling up memory.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use app::api::ApiError;
use tokio::sync::{mpsc, oneshot};

/// A unit of work run on the worker thread with exclusive access to `S` (the loaded models).
type Task<S> = Box<dyn FnOnce(&mut S) + Send>;

pub struct JobQueue<S> {
    tx: mpsc::Sender<Task<S>>,
    /// Jobs submitted and not finished (waiting + running).
    in_flight: Arc<AtomicU32>,
    capacity: u32,
}

impl<S: Send + 'static> JobQueue<S> {
    /// Starts the worker thread; `capacity` jobs may wait behind the running one.
    pub fn start(state: S, capacity: u32) -> Self {
        let (tx, mut rx) = mpsc::channel::<Task<S>>(capacity.max(1) as usize);
        std::thread::Builder::new()
            .name("engine-worker".into())
            .spawn(move || {
                let mut state = state;
                while let Some(task) = rx.blocking_recv() {
                    task(&mut state);
                }
            })
            .expect("spawning the engine worker thread");
        Self {
            tx,
            in_flight: Arc::new(AtomicU32::new(0)),
            capacity: capacity.max(1),
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
        let (done_tx, done_rx) = oneshot::channel();
        let in_flight = self.in_flight.clone();
        let task: Task<S> = Box::new(move |state| {
            // A panic in the engine must not take the worker (and every later job) down.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(state)))
                .unwrap_or_else(|_| Err(ApiError::internal("the engine panicked while running this job")));
            in_flight.fetch_sub(1, Ordering::SeqCst);
            let _ = done_tx.send(result);
        });
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        if let Err(e) = self.tx.try_send(task) {
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

    pub fn capacity(&self) -> u32 {
        self.capacity
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
}
