//! Where a model lives and how its weights are read.
//!
//! A model is a folder in the diffusers layout (`model_index.json`, `transformer/`, `vae/`,
//! `text_encoder/`, `tokenizer/`, `processor/`, `scheduler/`). It is named either by a local path
//! or by a Hugging Face repo id (`Qwen/Qwen-Image-Layered`), which is looked up in the standard hub
//! cache (`HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`) and downloaded
//! there when allowed and `HF_HUB_OFFLINE` is not set.
//!
//! Weights are memory-mapped safetensors: a component is either one file or shards listed by a
//! `*.safetensors.index.json` (`{"weight_map": {tensor: shard}}`). Conversion to the run's dtype
//! happens per tensor as it is fetched, so a bf16 checkpoint loads as f32 on CPU and vice versa.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use serde::de::DeserializeOwned;

use crate::{Error, Result};

/// A resolved model folder.
#[derive(Debug, Clone)]
pub struct ModelDir {
    root: PathBuf,
    /// The repo id when the folder came from the hub cache.
    repo: Option<String>,
    /// The hub snapshot (commit hash) when known.
    revision: Option<String>,
}

/// What a pipeline needs of one component folder.
#[derive(Debug, Clone, Copy)]
pub struct ComponentSpec {
    pub name: &'static str,
    /// Files that must exist in the component folder.
    pub files: &'static [&'static str],
    /// Whether the component carries safetensors weights (one file or an index + shards).
    pub weights: bool,
}

/// How a download is going, file by file (the hub reports each file's bytes as they arrive).
pub trait DownloadProgress {
    /// File `index` (1-based) of `files` starts: `name`, `size` bytes.
    fn file(&mut self, name: &str, size: u64, index: usize, files: usize);
    /// `bytes` more of the current file arrived.
    fn advance(&mut self, bytes: u64);
}

/// Logs each file as it starts (the server's default when nobody follows the download).
pub struct LogProgress;

impl DownloadProgress for LogProgress {
    fn file(&mut self, name: &str, size: u64, index: usize, files: usize) {
        tracing::info!(file = name, bytes = size, "downloading file {index} of {files}");
    }

    fn advance(&mut self, _: u64) {}
}

/// hf-hub's per-file progress, forwarded to a [`DownloadProgress`].
struct HubProgress<'a> {
    inner: &'a mut dyn DownloadProgress,
    index: usize,
    files: usize,
}

impl hf_hub::api::Progress for HubProgress<'_> {
    fn init(&mut self, size: usize, filename: &str) {
        self.inner.file(filename, size as u64, self.index, self.files);
    }

    fn update(&mut self, size: usize) {
        self.inner.advance(size as u64);
    }

    fn finish(&mut self) {}
}

impl ModelDir {
    /// Opens a local folder or resolves a hub repo id (`owner/name`).
    pub fn resolve(path_or_repo: &str, allow_download: bool) -> Result<Self> {
        if allow_download {
            Self::fetch(path_or_repo, &mut LogProgress)
        } else {
            Self::resolve_with(path_or_repo, None)
        }
    }

    /// Like [`ModelDir::resolve`] with downloading allowed, reporting the download's progress.
    pub fn fetch(path_or_repo: &str, progress: &mut dyn DownloadProgress) -> Result<Self> {
        Self::resolve_with(path_or_repo, Some(progress))
    }

    fn resolve_with(path_or_repo: &str, download: Option<&mut dyn DownloadProgress>) -> Result<Self> {
        let path = Path::new(path_or_repo);
        if path.is_dir() {
            return Self::open(path);
        }
        if !looks_like_repo_id(path_or_repo) {
            return Err(Error::ModelNotFound(format!(
                "{path_or_repo} is not a folder, and not a Hugging Face repo id of the form owner/name"
            )));
        }
        if let Some(dir) = Self::from_hub_cache(path_or_repo)? {
            return Ok(dir);
        }
        let offline = std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| !v.is_empty() && v != "0");
        if let (Some(progress), false) = (download, offline) {
            return Self::download(path_or_repo, progress);
        }
        Err(Error::ModelNotFound(format!(
            "{path_or_repo} is not in the Hugging Face cache ({}){}; download it with \
             `huggingface-cli download {path_or_repo}` or pass a local folder",
            hub_cache_dir().display(),
            if offline { " and HF_HUB_OFFLINE is set" } else { "" },
        )))
    }

    /// A local folder; it must hold `model_index.json`.
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        if !root.join("model_index.json").is_file() {
            return Err(Error::IncompleteModel {
                dir: root,
                missing: vec!["model_index.json".into()],
                hint: "A model folder is a diffusers pipeline folder (model_index.json, transformer/, vae/, …).".into(),
            });
        }
        Ok(Self {
            root,
            repo: None,
            revision: None,
        })
    }

    fn from_hub_cache(repo_id: &str) -> Result<Option<Self>> {
        let cache = hf_hub::Cache::new(hub_cache_dir());
        let repo = cache.model(repo_id.to_string());
        let Some(index) = repo.get("model_index.json") else {
            return Ok(None);
        };
        let snapshot = index.parent().map(Path::to_path_buf).unwrap_or_default();
        let revision = snapshot.file_name().map(|s| s.to_string_lossy().into_owned());
        Ok(Some(Self {
            root: snapshot,
            repo: Some(repo_id.to_string()),
            revision,
        }))
    }

    /// Downloads every file of the repo not cached yet into the hub cache (resumable by
    /// re-running), from `HF_ENDPOINT` when set.
    fn download(repo_id: &str, progress: &mut dyn DownloadProgress) -> Result<Self> {
        let mut builder = hf_hub::api::sync::ApiBuilder::new().with_cache_dir(hub_cache_dir());
        if let Ok(endpoint) = std::env::var("HF_ENDPOINT") {
            builder = builder.with_endpoint(endpoint);
        }
        let api = builder
            .build()
            .map_err(|e| Error::ModelNotFound(format!("{repo_id}: cannot reach the Hugging Face hub: {e}")))?;
        let repo = api.model(repo_id.to_string());
        let info = repo
            .info()
            .map_err(|e| Error::ModelNotFound(format!("{repo_id}: cannot list the repo: {e}")))?;
        let cached = hf_hub::Cache::new(hub_cache_dir()).model(repo_id.to_string());
        let files = info.siblings.len();
        for (i, sibling) in info.siblings.iter().enumerate() {
            let name = &sibling.rfilename;
            if cached.get(name).is_some() {
                continue;
            }
            let hub = HubProgress {
                inner: &mut *progress,
                index: i + 1,
                files,
            };
            repo.download_with_progress(name, hub)
                .map_err(|e| Error::ModelNotFound(format!("{repo_id}/{name}: download failed: {e}")))?;
        }
        Self::from_hub_cache(repo_id)?
            .ok_or_else(|| Error::ModelNotFound(format!("{repo_id}: downloaded, but model_index.json is missing")))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `repo@commit` for hub models, the folder path for local ones: recorded in run manifests.
    pub fn describe(&self) -> String {
        match (&self.repo, &self.revision) {
            (Some(repo), Some(rev)) => format!("{repo}@{rev}"),
            (Some(repo), None) => repo.clone(),
            _ => self.root.display().to_string(),
        }
    }

    pub fn revision(&self) -> Option<&str> {
        self.revision.as_deref()
    }

    pub fn component_dir(&self, component: &str) -> PathBuf {
        self.root.join(component)
    }

    /// Reads and parses a JSON file of a component (`""` for the root).
    pub fn read_json<T: DeserializeOwned>(&self, component: &str, file: &str) -> Result<T> {
        let path = self.component_dir(component).join(file);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        serde_json::from_str(&text).map_err(|source| Error::Json { path, source })
    }

    /// Checks that every listed component has its files, and reports all that are missing at once.
    pub fn check(&self, components: &[ComponentSpec]) -> Result<()> {
        let mut missing = Vec::new();
        for spec in components {
            let dir = self.component_dir(spec.name);
            for file in spec.files {
                if !dir.join(file).is_file() {
                    missing.push(format!("{}/{file}", spec.name));
                }
            }
            if spec.weights {
                if let Err(Error::IncompleteModel { missing: m, .. }) = self.safetensors_files(spec.name) {
                    missing.extend(m);
                }
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let hint = match &self.repo {
            Some(repo) => format!("Complete it with `huggingface-cli download {repo}`."),
            None => "Download the full model with `huggingface-cli download <repo> --local-dir <folder>` \
                     (e.g. Qwen/Qwen-Image-Layered)."
                .into(),
        };
        Err(Error::IncompleteModel {
            dir: self.root.clone(),
            missing,
            hint,
        })
    }

    /// The safetensors files of a component: the shards named by its index file, or its single
    /// weights file.
    pub fn safetensors_files(&self, component: &str) -> Result<Vec<PathBuf>> {
        let dir = self.component_dir(component);
        let incomplete = |missing: Vec<String>| Error::IncompleteModel {
            dir: self.root.clone(),
            missing,
            hint: String::new(),
        };
        let entries = std::fs::read_dir(&dir).map_err(|_| incomplete(vec![format!("{component}/")]))?;
        let mut index = None;
        let mut singles = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".safetensors.index.json") {
                index = Some(entry.path());
            } else if name.ends_with(".safetensors") {
                singles.push(entry.path());
            }
        }
        if let Some(index) = index {
            let shards = shard_names(&index)?;
            let missing: Vec<String> = shards
                .iter()
                .filter(|s| !dir.join(s).is_file())
                .map(|s| format!("{component}/{s}"))
                .collect();
            if !missing.is_empty() {
                return Err(incomplete(missing));
            }
            return Ok(shards.into_iter().map(|s| dir.join(s)).collect());
        }
        match singles.len() {
            0 => Err(incomplete(vec![format!("{component}/*.safetensors")])),
            _ => {
                singles.sort();
                Ok(singles)
            }
        }
    }

    /// What tells a component's weights apart from another folder's without reading them: its
    /// `config.json` and, for each weights file, the content hash the hub cache names its blob by
    /// (a snapshot's files link to `blobs/<sha256>`), else the file's resolved path. Equal
    /// identities mean the same weights; different ones may still be equal copies (not hashed).
    pub fn weights_identity(&self, component: &str) -> Result<WeightsIdentity> {
        let config: serde_json::Value = self.read_json(component, "config.json")?;
        let mut files = Vec::new();
        for file in self.safetensors_files(component)? {
            let resolved = std::fs::canonicalize(&file).map_err(|e| Error::io(&file, e))?;
            let in_blobs = resolved
                .parent()
                .and_then(Path::file_name)
                .is_some_and(|d| d == "blobs");
            files.push(match (in_blobs, resolved.file_name()) {
                (true, Some(hash)) => hash.to_string_lossy().into_owned(),
                _ => resolved.to_string_lossy().into_owned(),
            });
        }
        files.sort();
        Ok(WeightsIdentity { config, files })
    }

    /// A `VarBuilder` over a component's memory-mapped weights, converting to `dtype` on fetch.
    pub fn var_builder(&self, component: &str, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
        let files = self.safetensors_files(component)?;
        // SAFETY: the files are memory-mapped read-only; modifying them while a model is loaded
        // is undefined behaviour, as with every mmap-based loader.
        Ok(unsafe { VarBuilder::from_mmaped_safetensors(&files, dtype, device)? })
    }
}

/// See [`ModelDir::weights_identity`].
#[derive(Debug, Clone, PartialEq)]
pub struct WeightsIdentity {
    /// The component's config (compared as JSON values: key order does not matter).
    config: serde_json::Value,
    files: Vec<String>,
}

/// The shard file names an index file refers to, in sorted order.
fn shard_names(index: &Path) -> Result<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: std::collections::HashMap<String, String>,
    }
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let parsed: Index = serde_json::from_str(&text).map_err(|source| Error::Json {
        path: index.into(),
        source,
    })?;
    let shards: BTreeSet<String> = parsed.weight_map.into_values().collect();
    Ok(shards.into_iter().collect())
}

/// The hub cache folder, following huggingface_hub's precedence.
pub fn hub_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HF_HUB_CACHE").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(home) = std::env::var_os("HF_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(home).join("hub");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("huggingface").join("hub")
}

/// `owner/name`, as the hub names repos (a path like `./x/y`, `../x` or `/x/y` is not one).
pub fn looks_like_repo_id(s: &str) -> bool {
    let mut parts = s.split('/');
    let ok = |p: Option<&str>| {
        p.is_some_and(|p| {
            !p.is_empty() && !p.starts_with('.') && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
    };
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_are_recognised() {
        assert!(looks_like_repo_id("Qwen/Qwen-Image-Layered"));
        assert!(looks_like_repo_id("a_b/c.d-e"));
        assert!(!looks_like_repo_id("Qwen"));
        assert!(!looks_like_repo_id("/abs/path"));
        assert!(!looks_like_repo_id("a/b/c"));
        assert!(!looks_like_repo_id("a b/c"));
        assert!(!looks_like_repo_id("./models/edit"));
        assert!(!looks_like_repo_id("../edit/x"));
        assert!(!looks_like_repo_id("../edit"));
    }

    #[test]
    fn missing_folder_and_repo_give_actionable_errors() {
        let err = ModelDir::resolve("/definitely/not/here", false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a folder"), "{err}");
        std::env::set_var("HF_HUB_CACHE", std::env::temp_dir().join("no-such-hub-cache"));
        let err = ModelDir::resolve("Qwen/Qwen-Image-Layered", false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("huggingface-cli download Qwen/Qwen-Image-Layered"),
            "{err}"
        );
    }

    #[test]
    fn weights_identity_follows_links_and_hub_blobs() {
        let root = std::env::temp_dir().join(format!("engine-identity-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let component = |model: &str| root.join(model).join("text_encoder");
        for model in ["a", "b", "c", "hub1", "hub2"] {
            std::fs::create_dir_all(component(model)).unwrap();
            std::fs::write(root.join(model).join("model_index.json"), "{}").unwrap();
            std::fs::write(component(model).join("config.json"), r#"{"x": 1, "y": 2}"#).unwrap();
        }
        // b links to a's weights (as the GPU benchmark's Edit checkpoint does); c holds an equal copy.
        std::fs::write(component("a").join("model.safetensors"), b"weights").unwrap();
        std::os::unix::fs::symlink(
            component("a").join("model.safetensors"),
            component("b").join("model.safetensors"),
        )
        .unwrap();
        std::fs::write(component("c").join("model.safetensors"), b"weights").unwrap();
        // Two hub snapshots whose files link to blobs of the same content hash, in different repos.
        for (model, repo) in [("hub1", "r1"), ("hub2", "r2")] {
            let blob = root.join(repo).join("blobs").join("5ca1ab1e");
            std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
            std::fs::write(&blob, b"weights").unwrap();
            std::os::unix::fs::symlink(&blob, component(model).join("model.safetensors")).unwrap();
        }
        let id = |model: &str| {
            ModelDir::open(root.join(model))
                .unwrap()
                .weights_identity("text_encoder")
                .unwrap()
        };
        assert_eq!(id("a"), id("b"), "a link is the same weights");
        assert_ne!(id("a"), id("c"), "a copy is not known to be the same without hashing");
        assert_eq!(id("hub1"), id("hub2"), "hub blobs are named by their content hash");
        // Same files, another config: different weights as far as loading goes.
        std::fs::write(component("b").join("config.json"), r#"{"x": 1, "y": 3}"#).unwrap();
        assert_ne!(id("a"), id("b"));
        std::fs::write(component("b").join("config.json"), r#"{"y": 2, "x": 1}"#).unwrap();
        assert_eq!(id("a"), id("b"), "key order does not matter");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn incomplete_folder_lists_everything_missing() {
        let dir = std::env::temp_dir().join(format!("engine-weights-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("transformer")).unwrap();
        std::fs::write(dir.join("model_index.json"), "{}").unwrap();
        std::fs::write(
            dir.join("transformer/diffusion_pytorch_model.safetensors.index.json"),
            r#"{"metadata":{},"weight_map":{"a":"s-00001-of-00002.safetensors","b":"s-00002-of-00002.safetensors"}}"#,
        )
        .unwrap();
        std::fs::write(dir.join("transformer/s-00001-of-00002.safetensors"), b"").unwrap();
        let model = ModelDir::open(&dir).unwrap();
        let specs = [
            ComponentSpec {
                name: "transformer",
                files: &["config.json"],
                weights: true,
            },
            ComponentSpec {
                name: "vae",
                files: &["config.json"],
                weights: true,
            },
        ];
        let err = model.check(&specs).unwrap_err().to_string();
        for m in [
            "transformer/config.json",
            "transformer/s-00002-of-00002.safetensors",
            "vae/config.json",
            "vae/",
        ] {
            assert!(err.contains(m), "{m} not in {err}");
        }
        assert!(!err.contains("s-00001"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
