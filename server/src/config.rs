//! `config.toml`: named profiles of settings, each a `[<profile>.qwen_image]` table.
//!
//! Keys of the seed: `model_path`, `edit_model_path` (empty = download `Qwen/Qwen-Image-Edit-2509`
//! from Hugging Face), `cpu_offload`, `layer_num`, `num_inference_steps`, `cfg_scale`,
//! `resolution`. A profile other than `default` starts from `default` and overrides what it sets.
//! Unknown keys and out-of-range values are errors naming the key, the file and the line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use app::api::{DEFAULT_EDIT_MODEL_REPO, DEFAULT_MODEL_REPO};

/// The settings of one profile after merging with `default`.
#[derive(Debug, Clone, PartialEq)]
pub struct QwenImageSettings {
    pub model_path: String,
    pub edit_model_path: String,
    pub cpu_offload: bool,
    pub layer_num: u32,
    pub num_inference_steps: u32,
    pub cfg_scale: f32,
    pub resolution: u32,
}

impl Default for QwenImageSettings {
    fn default() -> Self {
        Self {
            model_path: DEFAULT_MODEL_REPO.into(),
            edit_model_path: String::new(),
            cpu_offload: false,
            layer_num: app::api::DEFAULT_LAYER_NUM,
            num_inference_steps: app::api::DEFAULT_STEPS,
            cfg_scale: app::api::DEFAULT_CFG_SCALE,
            resolution: app::api::DEFAULT_RESOLUTION,
        }
    }
}

impl QwenImageSettings {
    /// Where the edit model comes from: the configured path, else the official repo.
    pub fn edit_model_source(&self) -> &str {
        if self.edit_model_path.trim().is_empty() {
            DEFAULT_EDIT_MODEL_REPO
        } else {
            &self.edit_model_path
        }
    }
}

/// One `[<profile>.qwen_image]` table as written; absent keys inherit.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct QwenImageTable {
    model_path: Option<String>,
    edit_model_path: Option<String>,
    cpu_offload: Option<bool>,
    layer_num: Option<LayerNum>,
    num_inference_steps: Option<Steps>,
    cfg_scale: Option<CfgScale>,
    resolution: Option<Resolution>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileTable {
    qwen_image: Option<QwenImageTable>,
}

// Range-checked values: the check runs inside deserialisation, so the TOML error carries the
// line and column of the offending value.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(try_from = "i64")]
struct LayerNum(u32);
impl TryFrom<i64> for LayerNum {
    type Error = String;
    fn try_from(v: i64) -> Result<Self, String> {
        let v = u32::try_from(v).map_err(|_| format!("layer_num must be a small positive number, got {v}"))?;
        app::api::validate_layer_num(v).map(Self).map_err(|e| e.error)
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(try_from = "i64")]
struct Steps(u32);
impl TryFrom<i64> for Steps {
    type Error = String;
    fn try_from(v: i64) -> Result<Self, String> {
        let max = app::api::MAX_STEPS;
        let bad = || format!("num_inference_steps must be between 1 and {max}, got {v}");
        let v = u32::try_from(v).map_err(|_| bad())?;
        app::api::validate_steps(v).map(Self).map_err(|_| bad())
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(try_from = "f64")]
struct CfgScale(f32);
impl TryFrom<f64> for CfgScale {
    type Error = String;
    fn try_from(v: f64) -> Result<Self, String> {
        app::api::validate_cfg_scale(v as f32).map(Self).map_err(|e| e.error)
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(try_from = "i64")]
struct Resolution(u32);
impl TryFrom<i64> for Resolution {
    type Error = String;
    fn try_from(v: i64) -> Result<Self, String> {
        let v = u32::try_from(v).map_err(|_| format!("resolution must be 640 or 1024, got {v}"))?;
        app::api::validate_resolution(v).map(Self).map_err(|e| e.error)
    }
}

impl QwenImageTable {
    fn apply(&self, s: &mut QwenImageSettings) {
        if let Some(v) = &self.model_path {
            s.model_path = v.clone();
        }
        if let Some(v) = &self.edit_model_path {
            s.edit_model_path = v.clone();
        }
        if let Some(v) = self.cpu_offload {
            s.cpu_offload = v;
        }
        if let Some(v) = self.layer_num {
            s.layer_num = v.0;
        }
        if let Some(v) = self.num_inference_steps {
            s.num_inference_steps = v.0;
        }
        if let Some(v) = self.cfg_scale {
            s.cfg_scale = v.0;
        }
        if let Some(v) = self.resolution {
            s.resolution = v.0;
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path} has no profile `{profile}` (profiles: {available})")]
    UnknownProfile {
        path: PathBuf,
        profile: String,
        available: String,
    },
}

/// Reads `path` and returns the settings of `profile` (merged over `default`).
pub fn load_profile(path: &Path, profile: &str) -> Result<QwenImageSettings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.into(),
        source,
    })?;
    parse_profile(&text, path, profile)
}

/// Parses config text (`path` only names the file in errors).
pub fn parse_profile(text: &str, path: &Path, profile: &str) -> Result<QwenImageSettings, ConfigError> {
    let profiles: BTreeMap<String, ProfileTable> = toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.into(),
        message: e.to_string().trim_end().to_string(),
    })?;
    let mut settings = QwenImageSettings::default();
    if let Some(table) = profiles.get("default").and_then(|p| p.qwen_image.as_ref()) {
        table.apply(&mut settings);
    }
    if profile != "default" {
        let table = profiles.get(profile).ok_or_else(|| ConfigError::UnknownProfile {
            path: path.into(),
            profile: profile.into(),
            available: profiles.keys().cloned().collect::<Vec<_>>().join(", "),
        })?;
        if let Some(t) = &table.qwen_image {
            t.apply(&mut settings);
        }
    }
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
[default.qwen_image]
model_path = "Qwen/Qwen-Image-Layered"
edit_model_path = ""
cpu_offload = false
layer_num = 4
num_inference_steps = 50
cfg_scale = 4.0
resolution = 640

[rtx4090.qwen_image]
cpu_offload = true
resolution = 1024
"#;

    fn parse(text: &str, profile: &str) -> Result<QwenImageSettings, ConfigError> {
        parse_profile(text, Path::new("config.toml"), profile)
    }

    #[test]
    fn default_profile_reads_every_key() {
        let s = parse(SAMPLE, "default").unwrap();
        assert_eq!(s, QwenImageSettings::default());
        assert_eq!(s.edit_model_source(), "Qwen/Qwen-Image-Edit-2509");
    }

    #[test]
    fn other_profiles_inherit_from_default() {
        let s = parse(SAMPLE, "rtx4090").unwrap();
        assert!(s.cpu_offload);
        assert_eq!(s.resolution, 1024);
        assert_eq!(s.layer_num, 4);
    }

    #[test]
    fn the_shipped_config_parses_in_every_profile() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let profiles: BTreeMap<String, toml::Value> = toml::from_str(&text).unwrap();
        assert!(profiles.contains_key("default") && profiles.contains_key("rtx4090"));
        for name in profiles.keys() {
            load_profile(&path, name).unwrap();
        }
    }

    #[test]
    fn unknown_key_names_key_file_and_line() {
        let text = "[default.qwen_image]\nlayer_num = 4\nmodel_pth = \"x\"\n";
        let err = parse(text, "default").unwrap_err().to_string();
        assert!(err.contains("config.toml"), "{err}");
        assert!(err.contains("model_pth"), "{err}");
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn bad_values_name_key_and_line() {
        for (text, key, line) in [
            ("[default.qwen_image]\nresolution = 800\n", "resolution", "line 2"),
            ("[default.qwen_image]\n\nlayer_num = 11\n", "layer_num", "line 3"),
            (
                "[default.qwen_image]\nnum_inference_steps = 0\n",
                "num_inference_steps",
                "line 2",
            ),
            ("[default.qwen_image]\ncfg_scale = nan\n", "cfg_scale", "line 2"),
            ("[default.qwen_image]\ncpu_offload = \"yes\"\n", "cpu_offload", "line 2"),
        ] {
            let err = parse(text, "default").unwrap_err().to_string();
            assert!(err.contains(key) && err.contains(line), "{key}: {err}");
        }
    }

    #[test]
    fn unknown_profile_lists_the_available_ones() {
        let err = parse(SAMPLE, "a100").unwrap_err().to_string();
        assert!(err.contains("a100") && err.contains("default, rtx4090"), "{err}");
    }

    #[test]
    fn unknown_section_is_rejected() {
        let err = parse("[default.zimage]\nx = 1\n", "default").unwrap_err().to_string();
        assert!(err.contains("zimage"), "{err}");
    }
}
