//! Finished decompositions on disk, so a result is never lost: not to other jobs finishing, not
//! to a restart. Each run is a folder `<data-dir>/runs/<id>/` with `result.json` (the response
//! as the API returns it), `layers.zip` (the PNGs and manifest, for people browsing the folder)
//! and `meta.json` (owner and summary). Runs are deleted only once older than the retention;
//! when the folder outgrows its size budget, new jobs are refused (507) rather than old results
//! deleted early.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use app::api::{ApiError, DecomposeResponse, RunSummary};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
}

type Result<T> = std::result::Result<T, StoreError>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What `meta.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    owner: Option<String>,
    summary: RunSummary,
}

/// A stored run: who owns it, its summary and the full response.
#[derive(Debug, Clone)]
pub struct StoredRun {
    pub owner: Option<String>,
    pub summary: RunSummary,
    pub response: DecomposeResponse,
}

#[derive(Debug)]
pub struct RunStore {
    runs: PathBuf,
    keep: Duration,
    budget_bytes: u64,
}

/// Run ids are ours (`job-` and hex); anything else could be a path trick.
fn is_run_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl RunStore {
    /// Opens (creating) `<data_dir>/runs` and deletes runs past their retention.
    pub fn open(data_dir: &Path, keep: Duration, budget_bytes: u64) -> Result<Self> {
        let runs = data_dir.join("runs");
        std::fs::create_dir_all(&runs).map_err(io(&runs))?;
        let store = Self {
            runs,
            keep,
            budget_bytes,
        };
        store.prune();
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.runs
    }

    /// Writes a finished run; it appears whole or not at all (written aside, then renamed).
    pub fn save(&self, owner: Option<&str>, summary: &RunSummary, response: &DecomposeResponse) -> Result<()> {
        let final_dir = self.runs.join(&summary.id);
        let tmp = self.runs.join(format!(".{}.partial", summary.id));
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        write_json(&tmp.join("result.json"), response)?;
        write_json(
            &tmp.join("meta.json"),
            &Meta {
                owner: owner.map(str::to_string),
                summary: summary.clone(),
            },
        )?;
        if let Ok(zip) = base64::engine::general_purpose::STANDARD.decode(&response.zip_data) {
            let path = tmp.join("layers.zip");
            std::fs::write(&path, zip).map_err(io(&path))?;
        }
        std::fs::rename(&tmp, &final_dir).map_err(io(&final_dir))?;
        self.prune();
        Ok(())
    }

    fn read_meta(&self, dir: &Path) -> Result<Meta> {
        let path = dir.join("meta.json");
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        serde_json::from_slice(&bytes).map_err(|source| StoreError::Json { path, source })
    }

    /// The run `id`, if it is stored.
    pub fn load(&self, id: &str) -> Option<StoredRun> {
        if !is_run_id(id) {
            return None;
        }
        let dir = self.runs.join(id);
        let meta = self.read_meta(&dir).ok()?;
        let path = dir.join("result.json");
        let response = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())?;
        Some(StoredRun {
            owner: meta.owner,
            summary: meta.summary,
            response,
        })
    }

    /// The summaries of `owner`'s runs, newest first.
    pub fn list(&self, owner: &str) -> Vec<RunSummary> {
        let mut runs: Vec<RunSummary> = self
            .run_dirs()
            .filter_map(|dir| self.read_meta(&dir).ok())
            .filter(|m| m.owner.as_deref() == Some(owner))
            .map(|m| m.summary)
            .collect();
        runs.sort_by(|a, b| b.finished_at.cmp(&a.finished_at).then_with(|| b.id.cmp(&a.id)));
        runs
    }

    /// A new job is refused while the stored runs fill the size budget.
    pub fn check_room(&self) -> std::result::Result<(), ApiError> {
        let used: u64 = self.run_dirs().map(|d| dir_size(&d)).sum();
        if used >= self.budget_bytes {
            return Err(ApiError::new(
                507,
                format!(
                    "the results folder {} holds {} MiB, its budget (--results-budget-mb); results are kept {} h \
                     (--keep-results-hours): delete old runs there or raise the budget",
                    self.runs.display(),
                    used >> 20,
                    self.keep.as_secs() / 3600
                ),
            ));
        }
        Ok(())
    }

    fn run_dirs(&self) -> impl Iterator<Item = PathBuf> {
        std::fs::read_dir(&self.runs)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_str().is_some_and(is_run_id))
            .map(|e| e.path())
            .filter(|p| p.is_dir())
    }

    /// Deletes runs that finished longer ago than the retention, and half-written leftovers.
    pub fn prune(&self) {
        let cutoff = unix_now().saturating_sub(self.keep.as_secs());
        for dir in self.run_dirs() {
            let expired = match self.read_meta(&dir) {
                Ok(meta) => meta.summary.finished_at < cutoff,
                Err(_) => true,
            };
            if expired {
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
        for entry in std::fs::read_dir(&self.runs).into_iter().flatten().flatten() {
            let name = entry.file_name();
            if name
                .to_str()
                .is_some_and(|n| n.starts_with('.') && n.ends_with(".partial"))
            {
                let old = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t.elapsed().unwrap_or_default() > Duration::from_secs(3600));
                if old {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
    }
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let bytes = serde_json::to_vec(value).map_err(|source| StoreError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    std::fs::write(path, bytes).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(seed: u64) -> DecomposeResponse {
        DecomposeResponse {
            layers: vec![],
            zip_data: base64::engine::general_purpose::STANDARD.encode(b"PK fake"),
            generation_time: 1.5,
            layer_count: 3,
            resolution: 640,
            layer_order: "bottom-to-top".into(),
            seed,
            width: 640,
            height: 480,
            caption: None,
            files: Vec::new(),
            auto_layers: None,
        }
    }

    fn summary(id: &str, finished_at: u64) -> RunSummary {
        RunSummary {
            id: id.into(),
            finished_at,
            prompt: "a cat".into(),
            layer_count: 3,
            resolution: 640,
            width: 640,
            height: 480,
            seed: 7,
            steps: 50,
            cfg_scale: 4.0,
            generation_time: 1.5,
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("run-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn saved_runs_load_back_list_by_owner_and_survive_reopening() {
        let dir = temp_dir("roundtrip");
        let store = RunStore::open(&dir, Duration::from_secs(3600), u64::MAX).unwrap();
        let now = unix_now();
        store
            .save(Some("session:a"), &summary("job-1", now - 5), &response(1))
            .unwrap();
        store
            .save(Some("session:a"), &summary("job-2", now), &response(2))
            .unwrap();
        store
            .save(Some("session:b"), &summary("job-3", now), &response(3))
            .unwrap();
        store.save(None, &summary("job-4", now), &response(4)).unwrap();
        drop(store);
        let store = RunStore::open(&dir, Duration::from_secs(3600), u64::MAX).unwrap();
        let run = store.load("job-2").unwrap();
        assert_eq!((run.owner.as_deref(), run.response.seed), (Some("session:a"), 2));
        assert_eq!(std::fs::read(dir.join("runs/job-2/layers.zip")).unwrap(), b"PK fake");
        let ids: Vec<_> = store.list("session:a").into_iter().map(|s| s.id).collect();
        assert_eq!(ids, ["job-2", "job-1"]);
        assert!(store.load("job-4").unwrap().owner.is_none());
        for bad in ["../runs/job-1", "job-1/../job-2", "", "job-9"] {
            assert!(store.load(bad).is_none(), "{bad}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_expired_runs_are_deleted_and_a_full_budget_refuses_new_jobs() {
        let dir = temp_dir("prune");
        let store = RunStore::open(&dir, Duration::from_secs(3600), 1).unwrap();
        assert!(store.check_room().is_ok());
        store
            .save(Some("o"), &summary("job-old", unix_now() - 7200), &response(1))
            .unwrap();
        assert!(store.load("job-old").is_none(), "past its retention");
        store
            .save(Some("o"), &summary("job-new", unix_now()), &response(2))
            .unwrap();
        // Over budget: the new run stays (never deleted early); new jobs are refused instead.
        assert!(store.load("job-new").is_some());
        assert_eq!(store.check_room().unwrap_err().status, 507);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
