//! `config.toml`: named profiles of settings, each a `[<profile>.qwen_image]` table and, for the
//! Z-Image mode, a `[<profile>.z_image]` table (`model_path`, `steps`, `cfg_scale`, `width`,
//! `height`, `seed`, `cpu_offload`).
//!
//! Keys of the seed: `model_path`, `edit_model_path` (empty = download `Qwen/Qwen-Image-Edit-2509`
//! from Hugging Face), `cpu_offload`, `layer_num`, `num_inference_steps`, `cfg_scale`,
//! `resolution`. A profile other than `default` starts from `default` and overrides what it sets.
//! Unknown keys and out-of-range values are errors naming the key, the file and the line.
//!
//! LoRA adapters (issue 20): `lora = [{ path = "…", scale = 1.0 }]` (the decompose DiT) and
//! `edit_lora = […]` (the edit DiT) in `[<profile>.qwen_image]`, merged for every run; and named
//! presets, `[<profile>.presets.<name>]` with `pipeline` ("edit" or "decompose"), `label`,
//! `steps`, `cfg_scale`, `scheduler_config` (a `scheduler_config.json` file) and their own `lora`,
//! which a request picks with `preset`. Relative paths are relative to the config file's folder.
//!
//! Several GPUs (issue 21): `devices = [0, 1]` (GPU numbers, `"cuda:N"` or `"cpu"`; absent =
//! every visible GPU) and `parallel = "throughput"` (a worker per device) or `"latency"` (pairs
//! of devices run each job CFG-parallel); see [`crate::workers`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use engine::lora::LoraSpec;
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
    /// Adapters merged into the decompose DiT for every run.
    pub lora: Vec<LoraSpec>,
    /// Adapters merged into the edit DiT for every run.
    pub edit_lora: Vec<LoraSpec>,
    /// Named presets requests can pick.
    pub presets: BTreeMap<String, PresetSettings>,
    /// The devices the engine workers use; `None`: every visible GPU (or the CPU).
    pub devices: Option<Vec<crate::workers::DeviceSpec>>,
    /// How several devices serve jobs.
    pub parallel: crate::workers::Parallel,
}

/// One `[<profile>.presets.<name>]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PresetSettings {
    pub label: String,
    /// [`app::api_lora::PIPELINE_EDIT`] or [`app::api_lora::PIPELINE_DECOMPOSE`].
    pub pipeline: &'static str,
    pub steps: u32,
    pub cfg_scale: f32,
    pub scheduler_config: Option<PathBuf>,
    /// Merged on top of the pipeline's own adapters while the preset runs.
    pub lora: Vec<LoraSpec>,
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
            lora: Vec::new(),
            edit_lora: Vec::new(),
            presets: BTreeMap::new(),
            devices: None,
            parallel: crate::workers::Parallel::default(),
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
    lora: Option<Vec<LoraEntry>>,
    edit_lora: Option<Vec<LoraEntry>>,
    devices: Option<Vec<crate::workers::DeviceSpec>>,
    parallel: Option<crate::workers::Parallel>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileTable {
    qwen_image: Option<QwenImageTable>,
    presets: Option<BTreeMap<String, PresetTable>>,
    z_image: Option<ZImageTable>,
}

/// The Z-Image settings of one profile after merging with `default`.
#[derive(Debug, Clone, PartialEq)]
pub struct ZImageSettings {
    /// A local diffusers folder or a Hugging Face repo id.
    pub model_path: String,
    pub cpu_offload: bool,
    /// What requests without these fields get.
    pub defaults: app::api_z_image::ZImageDefaults,
    /// Largest width × height generated (`--z-image-max-pixels`; the VAE's mid-block attention
    /// holds (pixels/64)² scores, 8.6 GB in bf16 at 2048²).
    pub max_pixels: u64,
}

impl Default for ZImageSettings {
    fn default() -> Self {
        Self {
            model_path: app::api_z_image::DEFAULT_Z_IMAGE_REPO.into(),
            cpu_offload: false,
            defaults: app::api_z_image::ZImageDefaults::default(),
            max_pixels: u64::from(app::api_z_image::Z_MAX_SIZE).pow(2),
        }
    }
}

/// One `[<profile>.z_image]` table as written; absent keys inherit.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ZImageTable {
    model_path: Option<String>,
    cpu_offload: Option<bool>,
    steps: Option<Steps>,
    cfg_scale: Option<CfgScale>,
    width: Option<ZSize>,
    height: Option<ZSize>,
    seed: Option<Seed>,
}

impl ZImageTable {
    fn apply(&self, s: &mut ZImageSettings) {
        if let Some(v) = &self.model_path {
            s.model_path = v.clone();
        }
        if let Some(v) = self.cpu_offload {
            s.cpu_offload = v;
        }
        if let Some(v) = self.steps {
            s.defaults.steps = v.0;
        }
        if let Some(v) = self.cfg_scale {
            s.defaults.cfg_scale = v.0;
        }
        if let Some(v) = self.width {
            s.defaults.width = v.0;
        }
        if let Some(v) = self.height {
            s.defaults.height = v.0;
        }
        if let Some(v) = self.seed {
            s.defaults.seed = Some(v.0);
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(try_from = "i64")]
struct ZSize(u32);
impl TryFrom<i64> for ZSize {
    type Error = String;
    fn try_from(v: i64) -> Result<Self, String> {
        let v = u32::try_from(v).map_err(|_| format!("width/height must be a positive multiple of 16, got {v}"))?;
        app::api_z_image::validate_size("width/height", v)
            .map(Self)
            .map_err(|e| e.error)
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(try_from = "i64")]
struct Seed(u64);
impl TryFrom<i64> for Seed {
    type Error = String;
    fn try_from(v: i64) -> Result<Self, String> {
        u64::try_from(v)
            .map(Self)
            .map_err(|_| format!("seed must be ≥ 0, got {v}"))
    }
}

/// `{ path = "…", scale = 1.0 }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoraEntry {
    path: String,
    #[serde(default)]
    scale: Option<LoraScale>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(try_from = "f64")]
struct LoraScale(f64);
impl TryFrom<f64> for LoraScale {
    type Error = String;
    fn try_from(v: f64) -> Result<Self, String> {
        LoraSpec::parse(&format!("x:{v}")).map(|s| Self(s.scale))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PresetTable {
    label: Option<String>,
    pipeline: PipelineName,
    steps: Steps,
    cfg_scale: CfgScale,
    scheduler_config: Option<String>,
    #[serde(default)]
    lora: Vec<LoraEntry>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum PipelineName {
    Edit,
    Decompose,
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

/// Paths relative to the config file's folder.
fn resolve(base: &Path, path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

fn specs(base: &Path, entries: &[LoraEntry]) -> Vec<LoraSpec> {
    entries
        .iter()
        .map(|e| LoraSpec::new(resolve(base, &e.path), e.scale.map_or(1.0, |s| s.0)))
        .collect()
}

impl PresetTable {
    fn settings(&self, name: &str, base: &Path) -> Result<PresetSettings, String> {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(format!("preset name {name:?}: use letters, digits, '-' and '_' only"));
        }
        let pipeline = match self.pipeline {
            PipelineName::Edit => app::api_lora::PIPELINE_EDIT,
            PipelineName::Decompose => app::api_lora::PIPELINE_DECOMPOSE,
        };
        if pipeline == app::api_lora::PIPELINE_EDIT && self.steps.0 < app::api::EDIT_MIN_STEPS {
            return Err(format!(
                "preset {name}: an edit needs at least {} steps, got {}",
                app::api::EDIT_MIN_STEPS,
                self.steps.0
            ));
        }
        Ok(PresetSettings {
            label: self.label.clone().unwrap_or_else(|| name.to_string()),
            pipeline,
            steps: self.steps.0,
            cfg_scale: self.cfg_scale.0,
            scheduler_config: self.scheduler_config.as_deref().map(|p| resolve(base, p)),
            lora: specs(base, &self.lora),
        })
    }
}

impl QwenImageTable {
    fn apply_lora(&self, s: &mut QwenImageSettings, base: &Path) {
        if let Some(v) = &self.lora {
            s.lora = specs(base, v);
        }
        if let Some(v) = &self.edit_lora {
            s.edit_lora = specs(base, v);
        }
    }

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
        if let Some(v) = &self.devices {
            s.devices = Some(v.clone());
        }
        if let Some(v) = self.parallel {
            s.parallel = v;
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
    parse_profile(&read_config(path)?, path, profile)
}

/// Parses config text (`path` only names the file in errors).
pub fn parse_profile(text: &str, path: &Path, profile: &str) -> Result<QwenImageSettings, ConfigError> {
    let profiles = parse_tables(text, path)?;
    let base = path.parent().unwrap_or(Path::new(""));
    let mut settings = QwenImageSettings::default();
    for table in profile_chain(&profiles, path, profile)? {
        if let Some(t) = &table.qwen_image {
            t.apply(&mut settings);
            t.apply_lora(&mut settings, base);
        }
        for (name, preset) in table.presets.iter().flatten() {
            let p = preset.settings(name, base).map_err(|message| ConfigError::Parse {
                path: path.into(),
                message,
            })?;
            settings.presets.insert(name.clone(), p);
        }
    }
    Ok(settings)
}

/// Reads `path` and returns the Z-Image settings of `profile` (merged over `default`).
pub fn load_z_image_profile(path: &Path, profile: &str) -> Result<ZImageSettings, ConfigError> {
    parse_z_image_profile(&read_config(path)?, path, profile)
}

/// Parses config text for the `[<profile>.z_image]` tables (the profile must exist, as for
/// [`parse_profile`]; a profile without a `z_image` table inherits `default`'s).
pub fn parse_z_image_profile(text: &str, path: &Path, profile: &str) -> Result<ZImageSettings, ConfigError> {
    let profiles = parse_tables(text, path)?;
    let mut settings = ZImageSettings::default();
    for table in profile_chain(&profiles, path, profile)? {
        if let Some(t) = &table.z_image {
            t.apply(&mut settings);
        }
    }
    Ok(settings)
}

/// The config file's text.
fn read_config(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.into(),
        source,
    })
}

/// Config text as its profile tables (`path` only names the file in errors).
fn parse_tables(text: &str, path: &Path) -> Result<BTreeMap<String, ProfileTable>, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.into(),
        message: e.to_string().trim_end().to_string(),
    })
}

/// The tables a profile's settings come from, in the order they apply: `default`'s (if the file
/// has one), then `profile`'s, which must exist unless it is `default`.
fn profile_chain<'a>(
    profiles: &'a BTreeMap<String, ProfileTable>,
    path: &Path,
    profile: &str,
) -> Result<Vec<&'a ProfileTable>, ConfigError> {
    let mut chain: Vec<&ProfileTable> = profiles.get("default").into_iter().collect();
    if profile != "default" {
        chain.push(profiles.get(profile).ok_or_else(|| ConfigError::UnknownProfile {
            path: path.into(),
            profile: profile.into(),
            available: profiles.keys().cloned().collect::<Vec<_>>().join(", "),
        })?);
    }
    Ok(chain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn z_image_tables_inherit_and_check_their_values() {
        let text = "[default.z_image]\nmodel_path = \"/m/z\"\nsteps = 8\nseed = 7\n\n[big.z_image]\nwidth = 1280\ncpu_offload = true\n";
        let d = parse_z_image_profile(text, Path::new("config.toml"), "default").unwrap();
        assert_eq!(
            (d.model_path.as_str(), d.defaults.steps, d.defaults.seed),
            ("/m/z", 8, Some(7))
        );
        assert_eq!(
            (d.defaults.width, d.defaults.cfg_scale, d.cpu_offload),
            (1024, 0.0, false)
        );
        let b = parse_z_image_profile(text, Path::new("config.toml"), "big").unwrap();
        assert_eq!(
            (b.model_path.as_str(), b.defaults.width, b.cpu_offload),
            ("/m/z", 1280, true)
        );
        // The Qwen-Image settings of the same file are unaffected.
        assert_eq!(
            parse_profile(text, Path::new("config.toml"), "big").unwrap(),
            QwenImageSettings::default()
        );
        for (bad, key) in [
            ("[default.z_image]\nwidth = 1000\n", "width"),
            ("[default.z_image]\nsteps = 0\n", "steps"),
            ("[default.z_image]\nseed = -1\n", "seed"),
            ("[default.z_image]\nsampler = \"x\"\n", "sampler"),
        ] {
            let err = parse_z_image_profile(bad, Path::new("config.toml"), "default")
                .unwrap_err()
                .to_string();
            assert!(err.contains(key) && err.contains("line 2"), "{key}: {err}");
        }
    }

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
    fn devices_and_parallel_mode_are_read_and_inherited() {
        use crate::workers::{DeviceSpec, Parallel};
        let text = format!("{SAMPLE}\n[studio.qwen_image]\ndevices = [0, \"cuda:1\"]\nparallel = \"latency\"\n");
        let s = parse(&text, "studio").unwrap();
        assert_eq!(s.devices, Some(vec![DeviceSpec::Cuda(0), DeviceSpec::Cuda(1)]));
        assert_eq!((s.parallel, s.resolution), (Parallel::Latency, 640));
        let d = parse(&text, "default").unwrap();
        assert_eq!((d.devices, d.parallel), (None, Parallel::Throughput));
        for (bad, key) in [("devices = [\"gpu0\"]", "gpu0"), ("parallel = \"fast\"", "fast")] {
            let err = parse(&format!("[default.qwen_image]\n{bad}\n"), "default")
                .unwrap_err()
                .to_string();
            assert!(err.contains(key) && err.contains("line 2"), "{bad}: {err}");
        }
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
    fn lora_lists_and_presets_parse_relative_to_the_file() {
        let text = r#"
[default.qwen_image]
lora = [{ path = "a.safetensors" }, { path = "/abs/b.safetensors", scale = -0.5 }]

[default.presets.fast-edit-8]
label = "Fast edit (8 steps)"
pipeline = "edit"
steps = 8
cfg_scale = 1.0
scheduler_config = "presets/s.json"
lora = [{ path = "l.safetensors", scale = 1.0 }]

[big.qwen_image]
edit_lora = [{ path = "e.safetensors", scale = 0.8 }]
[big.presets.mine]
pipeline = "decompose"
steps = 20
cfg_scale = 2.0
"#;
        let s = parse_profile(text, Path::new("/etc/q/config.toml"), "default").unwrap();
        assert_eq!(
            s.lora,
            [
                LoraSpec::new("/etc/q/a.safetensors", 1.0),
                LoraSpec::new("/abs/b.safetensors", -0.5)
            ]
        );
        assert!(s.edit_lora.is_empty());
        let p = &s.presets["fast-edit-8"];
        assert_eq!((p.pipeline, p.steps, p.cfg_scale), ("edit", 8, 1.0));
        assert_eq!(p.scheduler_config.as_deref(), Some(Path::new("/etc/q/presets/s.json")));
        assert_eq!(p.lora, [LoraSpec::new("/etc/q/l.safetensors", 1.0)]);
        let big = parse_profile(text, Path::new("/etc/q/config.toml"), "big").unwrap();
        assert_eq!(big.lora.len(), 2, "inherited");
        assert_eq!(big.edit_lora, [LoraSpec::new("/etc/q/e.safetensors", 0.8)]);
        assert_eq!(big.presets.len(), 2);
        assert_eq!(big.presets["mine"].label, "mine");
    }

    #[test]
    fn bad_lora_and_preset_entries_name_the_key() {
        for (text, needle) in [
            (
                "[default.qwen_image]\nlora = [{ path = \"a\", scale = 50.0 }]\n",
                "scale",
            ),
            ("[default.qwen_image]\nlora = [{ file = \"a\" }]\n", "file"),
            (
                "[default.presets.x]\npipeline = \"edit\"\nsteps = 1\ncfg_scale = 1.0\n",
                "at least 2 steps",
            ),
            (
                "[default.presets.x]\npipeline = \"video\"\nsteps = 8\ncfg_scale = 1.0\n",
                "pipeline",
            ),
            ("[default.presets.x]\npipeline = \"edit\"\ncfg_scale = 1.0\n", "steps"),
            (
                "[default.presets.\"a b\"]\npipeline = \"edit\"\nsteps = 8\ncfg_scale = 1.0\n",
                "preset name",
            ),
        ] {
            let err = parse(text, "default").unwrap_err().to_string();
            assert!(err.contains(needle), "{needle}: {err}");
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
