//! LoRA adapters and presets in the contract (issue 20): what `/config` lists, what `/status`
//! says is merged now, and how a request's `preset` is resolved.
//!
//! A **preset** is a named way to run one pipeline: its steps, CFG scale, a scheduler config
//! (a `scheduler_config.json` file, e.g. the one Qwen-Image-Lightning's LoRAs are distilled
//! for) and LoRA adapters merged on top of the pipeline's own. Presets come from the server's
//! config (`[<profile>.presets.<name>]`); a request names one with `preset`, and its own `steps` /
//! `cfg_scale`, when given, still win.

use serde::{Deserialize, Serialize};

use crate::api::ApiError;

/// The two pipelines a preset or adapter can belong to.
pub const PIPELINE_DECOMPOSE: &str = "decompose";
pub const PIPELINE_EDIT: &str = "edit";

/// The preset the UI's "Fast edit (8 steps)" switch asks for (the shipped config defines it:
/// Qwen-Image-Lightning's 8-step LoRA for Edit-2509, its scheduler, no CFG).
pub const FAST_EDIT_PRESET: &str = "fast-edit-8";

/// One adapter: a `.safetensors` file on the server and its strength.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct LoraInfo {
    pub path: String,
    pub scale: f64,
}

/// A preset as `/config` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct PresetInfo {
    pub name: String,
    /// What the UI shows, e.g. "Fast edit (8 steps)".
    pub label: String,
    /// "edit" or "decompose".
    pub pipeline: String,
    pub steps: u32,
    pub cfg_scale: f32,
    /// The scheduler config file it runs with (absent: the checkpoint's).
    #[serde(default)]
    pub scheduler_config: Option<String>,
    /// Adapters merged on top of the pipeline's own while it runs.
    #[serde(default)]
    pub lora: Vec<LoraInfo>,
    /// Whether its files are there; `reason` says what is missing when not.
    pub available: bool,
    #[serde(default)]
    pub reason: Option<String>,
}

/// The adapters and presets of the server's configuration (`/config`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct AdapterConfig {
    /// Merged into the decompose DiT for every run.
    #[serde(default)]
    pub lora: Vec<LoraInfo>,
    /// Merged into the edit DiT for every run.
    #[serde(default)]
    pub edit_lora: Vec<LoraInfo>,
    #[serde(default)]
    pub presets: Vec<PresetInfo>,
}

/// What is merged into each loaded pipeline's DiT now (`/status`); empty when none or not loaded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct ActiveLora {
    #[serde(default)]
    pub decompose: Vec<LoraInfo>,
    #[serde(default)]
    pub edit: Vec<LoraInfo>,
    /// The preset of the last edit / decomposition, if it used one.
    #[serde(default)]
    pub edit_preset: Option<String>,
    #[serde(default)]
    pub decompose_preset: Option<String>,
}

/// The preset `name` for `pipeline` among `presets`: unknown names and presets of the other
/// pipeline are 422 listing the ones that exist; a preset whose files are missing is 503 with
/// the reason.
pub fn resolve_preset<'a>(presets: &'a [PresetInfo], name: &str, pipeline: &str) -> Result<&'a PresetInfo, ApiError> {
    let known = || {
        let names: Vec<&str> = presets
            .iter()
            .filter(|p| p.pipeline == pipeline)
            .map(|p| p.name.as_str())
            .collect();
        if names.is_empty() {
            format!("this server has no {pipeline} presets")
        } else {
            format!("{pipeline} presets: {}", names.join(", "))
        }
    };
    let quoted: String = name.chars().take(crate::api::MAX_QUOTED_CHARS).collect();
    let preset = presets
        .iter()
        .find(|p| p.name == name)
        .ok_or_else(|| ApiError::unprocessable(format!("unknown preset {quoted:?} ({})", known())))?;
    if preset.pipeline != pipeline {
        return Err(ApiError::unprocessable(format!(
            "preset {quoted:?} is for the {} pipeline, not {pipeline} ({})",
            preset.pipeline,
            known()
        )));
    }
    if !preset.available {
        return Err(ApiError::unavailable(format!(
            "preset {quoted:?} cannot run: {}",
            preset.reason.as_deref().unwrap_or("its files are missing")
        )));
    }
    Ok(preset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preset(name: &str, pipeline: &str, available: bool) -> PresetInfo {
        PresetInfo {
            name: name.into(),
            label: name.into(),
            pipeline: pipeline.into(),
            steps: 8,
            cfg_scale: 1.0,
            scheduler_config: None,
            lora: vec![],
            available,
            reason: (!available).then(|| "LoRA file /m/l.safetensors does not exist".into()),
        }
    }

    #[test]
    fn presets_resolve_by_name_and_pipeline() {
        let all = [
            preset("fast-edit-8", PIPELINE_EDIT, true),
            preset("fast-edit-4", PIPELINE_EDIT, false),
            preset("my-style", PIPELINE_DECOMPOSE, true),
        ];
        assert_eq!(resolve_preset(&all, "fast-edit-8", PIPELINE_EDIT).unwrap().steps, 8);
        let e = resolve_preset(&all, "turbo", PIPELINE_EDIT).unwrap_err();
        assert_eq!(e.status, 422);
        assert!(
            e.error.contains("\"turbo\"") && e.error.contains("fast-edit-8, fast-edit-4"),
            "{e}"
        );
        let e = resolve_preset(&all, "my-style", PIPELINE_EDIT).unwrap_err();
        assert!(e.error.contains("decompose pipeline"), "{e}");
        let e = resolve_preset(&all, "fast-edit-4", PIPELINE_EDIT).unwrap_err();
        assert_eq!(e.status, 503);
        assert!(e.error.contains("does not exist"), "{e}");
        let e = resolve_preset(&[], "x", PIPELINE_DECOMPOSE).unwrap_err();
        assert!(e.error.contains("no decompose presets"), "{e}");
        let long = "x".repeat(500);
        assert!(resolve_preset(&all, &long, PIPELINE_EDIT).unwrap_err().error.len() < 200);
    }
}
