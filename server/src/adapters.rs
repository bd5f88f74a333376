//! LoRA adapters and presets as the server runs them (issue 20): the configured lists checked at
//! startup, each preset's scheduler config read from its file, and what one run merges.
//!
//! Each pipeline has its own adapters (`lora` for decompose, `edit_lora` for edit), merged into
//! its DiT for every run; a request's preset adds its adapters on top and may replace the
//! scheduler. The worker swaps the merged set when a run needs another one
//! ([`engine::pipeline::loading::swap_transformer_lora`]: only the DiT is loaded again).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use app::api::ApiError;
use app::api_lora::{ActiveLora, AdapterConfig, LoraInfo, PresetInfo, PIPELINE_DECOMPOSE, PIPELINE_EDIT};
use engine::lora::LoraSpec;
use engine::scheduler::SchedulerConfig;

use crate::config::{PresetSettings, QwenImageSettings};

/// What `/status` reports as merged now; the worker keeps it current.
pub type SharedActiveLora = Arc<Mutex<ActiveLora>>;

/// One preset with its scheduler read, or why it cannot run.
#[derive(Debug, Clone)]
pub struct Preset {
    pub name: String,
    pub settings: PresetSettings,
    pub scheduler: Option<SchedulerConfig>,
    pub problem: Option<String>,
}

/// The configured adapters and presets.
#[derive(Debug, Clone, Default)]
pub struct Adapters {
    pub lora: Vec<LoraSpec>,
    pub edit_lora: Vec<LoraSpec>,
    pub presets: BTreeMap<String, Preset>,
}

/// Why `specs` cannot be merged, if a file is missing (the keys are checked when a model loads).
fn missing(specs: &[LoraSpec]) -> Option<String> {
    specs
        .iter()
        .find(|s| !s.path.is_file())
        .map(|s| format!("LoRA file {} does not exist", s.path.display()))
}

pub fn lora_info(specs: &[LoraSpec]) -> Vec<LoraInfo> {
    specs
        .iter()
        .map(|s| LoraInfo {
            path: s.path.display().to_string(),
            scale: s.scale,
        })
        .collect()
}

impl Adapters {
    /// Reads every preset's scheduler file and checks the adapter files exist.
    pub fn from_settings(settings: &QwenImageSettings) -> Self {
        let presets = settings
            .presets
            .iter()
            .map(|(name, p)| {
                let scheduler = p
                    .scheduler_config
                    .as_deref()
                    .map(|path| SchedulerConfig::from_file(path).map_err(|e| format!("scheduler config: {e}")))
                    .transpose();
                let (scheduler, problem) = match scheduler {
                    Ok(s) => (s, missing(&p.lora)),
                    Err(e) => (None, Some(e)),
                };
                if let Some(problem) = &problem {
                    tracing::warn!(preset = %name, "preset unavailable: {problem}");
                }
                let preset = Preset {
                    name: name.clone(),
                    settings: p.clone(),
                    scheduler,
                    problem,
                };
                (name.clone(), preset)
            })
            .collect();
        Self {
            lora: settings.lora.clone(),
            edit_lora: settings.edit_lora.clone(),
            presets,
        }
    }

    /// Why the decompose pipeline's own adapters cannot load, if they cannot.
    pub fn decompose_problem(&self) -> Option<String> {
        missing(&self.lora).map(|m| format!("the decompose LoRA cannot be used: {m}"))
    }

    /// Why the edit pipeline's own adapters cannot load, if they cannot.
    pub fn edit_problem(&self) -> Option<String> {
        missing(&self.edit_lora).map(|m| format!("the edit LoRA cannot be used: {m}"))
    }

    pub fn preset_infos(&self) -> Vec<PresetInfo> {
        self.presets
            .values()
            .map(|p| PresetInfo {
                name: p.name.clone(),
                label: p.settings.label.clone(),
                pipeline: p.settings.pipeline.to_string(),
                steps: p.settings.steps,
                cfg_scale: p.settings.cfg_scale,
                scheduler_config: p.settings.scheduler_config.as_ref().map(|s| s.display().to_string()),
                lora: lora_info(&p.settings.lora),
                available: p.problem.is_none(),
                reason: p.problem.clone(),
            })
            .collect()
    }

    /// What `/config` lists.
    pub fn config(&self) -> AdapterConfig {
        AdapterConfig {
            lora: lora_info(&self.lora),
            edit_lora: lora_info(&self.edit_lora),
            presets: self.preset_infos(),
        }
    }

    /// The adapters a run of `pipeline` merges (the pipeline's own, then the preset's) and the
    /// scheduler config it runs with (`None`: the checkpoint's). The request was validated
    /// against the same presets, so an unknown name here is an internal error.
    pub fn for_run(
        &self,
        pipeline: &str,
        preset: Option<&str>,
    ) -> Result<(Vec<LoraSpec>, Option<SchedulerConfig>), ApiError> {
        let mut lora = match pipeline {
            PIPELINE_DECOMPOSE => self.lora.clone(),
            PIPELINE_EDIT => self.edit_lora.clone(),
            other => return Err(ApiError::internal(format!("no pipeline {other}"))),
        };
        let Some(name) = preset else { return Ok((lora, None)) };
        let p = self
            .presets
            .get(name)
            .filter(|p| p.settings.pipeline == pipeline)
            .ok_or_else(|| ApiError::internal(format!("preset {name} vanished")))?;
        if let Some(problem) = &p.problem {
            return Err(ApiError::unavailable(format!("preset {name:?} cannot run: {problem}")));
        }
        lora.extend(p.settings.lora.iter().cloned());
        Ok((lora, p.scheduler.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &std::path::Path) -> QwenImageSettings {
        let text = format!(
            r#"
[default.qwen_image]
edit_lora = [{{ path = "{dir}/style.safetensors", scale = 0.5 }}]

[default.presets.fast-edit-8]
label = "Fast edit (8 steps)"
pipeline = "edit"
steps = 8
cfg_scale = 1.0
scheduler_config = "{root}/presets/qwen-image-lightning/scheduler_config.json"
lora = [{{ path = "{dir}/lightning.safetensors" }}]

[default.presets.broken]
pipeline = "decompose"
steps = 8
cfg_scale = 1.0
scheduler_config = "{dir}/nope.json"
"#,
            dir = dir.display(),
            root = concat!(env!("CARGO_MANIFEST_DIR"), "/..")
        );
        crate::config::parse_profile(&text, std::path::Path::new("config.toml"), "default").unwrap()
    }

    #[test]
    fn presets_read_their_scheduler_and_runs_stack_adapters() {
        let dir = std::env::temp_dir().join(format!("adapters-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = Adapters::from_settings(&settings(&dir));
        // The adapter files are not there yet.
        assert!(a.edit_problem().unwrap().contains("style.safetensors"));
        assert_eq!(a.decompose_problem(), None);
        let infos = a.preset_infos();
        let fast = infos.iter().find(|p| p.name == "fast-edit-8").unwrap();
        assert!(!fast.available && fast.reason.as_deref().unwrap().contains("lightning.safetensors"));
        let broken = infos.iter().find(|p| p.name == "broken").unwrap();
        assert!(broken.reason.as_deref().unwrap().contains("nope.json"));
        assert_eq!(a.for_run(PIPELINE_EDIT, Some("fast-edit-8")).unwrap_err().status, 503);

        for f in ["style.safetensors", "lightning.safetensors"] {
            std::fs::write(dir.join(f), b"x").unwrap();
        }
        let a = Adapters::from_settings(&settings(&dir));
        assert_eq!(a.edit_problem(), None);
        let (lora, scheduler) = a.for_run(PIPELINE_EDIT, Some("fast-edit-8")).unwrap();
        assert_eq!(
            lora,
            [
                LoraSpec::new(dir.join("style.safetensors"), 0.5),
                LoraSpec::new(dir.join("lightning.safetensors"), 1.0)
            ]
        );
        let scheduler = scheduler.unwrap();
        assert_eq!(scheduler.shift_terminal, None);
        assert!((scheduler.max_shift - 3f64.ln()).abs() < 1e-15);
        let (lora, scheduler) = a.for_run(PIPELINE_EDIT, None).unwrap();
        assert_eq!((lora.len(), scheduler), (1, None));
        assert!(a.for_run(PIPELINE_DECOMPOSE, Some("fast-edit-8")).is_err());
        assert_eq!(a.config().edit_lora[0].scale, 0.5);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
