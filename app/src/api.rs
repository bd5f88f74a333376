//! The REST + server-function contract: request/response types shared by the browser, the
//! server and scripts, and the validation every entry point applies before work is queued.
//!
//! Paths (all JSON unless noted):
//! - `POST /api/qwen-image/decompose`   [`DecomposeRequest`] → [`DecomposeResponse`]
//! - `POST /api/qwen-image/edit-layer`  [`EditLayerRequest`] → `image/png` bytes
//! - `GET  /api/qwen-image/config`      → [`ConfigResponse`]
//! - `GET  /api/qwen-image/status`      → [`StatusResponse`]
//! - `GET  /api/qwen-image/edit-status` → [`EditStatusResponse`]
//!
//! Errors are `{"error": "…"}` with a 4xx/5xx status ([`ApiError`]).

use serde::{Deserialize, Serialize};

pub use crate::error::{ApiError, CANCELLED_STATUS, MAX_QUOTED_CHARS};

// The contract's numbers, in one place: validation, the server's config and flags, both CLIs,
// the UI and the OpenAPI document all take them from here.

/// Smallest and largest number of layers the model can produce.
pub const LAYER_RANGE: std::ops::RangeInclusive<u32> = 2..=10;
/// The models used when no path is configured: Hugging Face repo ids, resolved in the hub cache.
pub const DEFAULT_MODEL_REPO: &str = "Qwen/Qwen-Image-Layered";
pub const DEFAULT_EDIT_MODEL_REPO: &str = "Qwen/Qwen-Image-Edit-2509";
/// Defaults of a decomposition (the official app's), used until a profile or request says otherwise.
pub const DEFAULT_LAYER_NUM: u32 = 4;
pub const DEFAULT_RESOLUTION: u32 = 640;
pub const DEFAULT_STEPS: u32 = 50;
pub const DEFAULT_CFG_SCALE: f32 = 4.0;
/// The two resolution buckets of Qwen-Image-Layered.
pub const RESOLUTIONS: [u32; 2] = [640, 1024];
/// Upper bound on denoising steps: far beyond any useful value, it stops runaway requests.
pub const MAX_STEPS: u32 = 200;
/// Upper bound on true-CFG scale.
pub const MAX_CFG_SCALE: f32 = 20.0;
/// Longest accepted prompt / instruction, in characters (the encoder keeps ≤ 1024 tokens anyway).
pub const MAX_PROMPT_CHARS: usize = 4000;
/// Qwen-Image-Edit's schedule, stretched to end at sigma 0.02, needs at least two steps.
pub const EDIT_MIN_STEPS: u32 = 2;
/// The vision processor refuses images whose long side is this many times the short side or more.
pub const MAX_ASPECT_RATIO: f64 = 200.0;

/// Where the layers come back: index 0 is the composite, then Layer 1 (bottom) … Layer N (top).
pub const LAYER_ORDER: &str = "bottom-to-top";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct DecomposeRequest {
    /// The input image: a `data:image/…;base64,` URL or bare base64 (PNG, JPEG or WebP).
    pub image: String,
    /// Describes the whole scene (not the layers). Empty = caption the image automatically.
    #[serde(default)]
    pub prompt: String,
    #[serde(default)]
    pub negative_prompt: Option<String>,
    /// How many layers: a number in the layer range, or "auto" (the model runs with
    /// `AUTO_MAX_LAYERS` and layers that add nothing visible are dropped, see `auto_layers`).
    #[serde(default)]
    pub layer_num: Option<LayerNum>,
    #[serde(default)]
    pub resolution: Option<u32>,
    #[serde(default)]
    pub steps: Option<u32>,
    #[serde(default)]
    pub cfg_scale: Option<f32>,
    /// Random seed; absent = a fresh random seed (reported back).
    #[serde(default)]
    pub seed: Option<u64>,
    /// CFG normalisation (the official app's default: on).
    #[serde(default)]
    pub cfg_normalize: Option<bool>,
    /// Language of the automatic caption for an empty prompt: "en" (default) or "cn".
    #[serde(default)]
    pub caption_language: Option<String>,
    /// Layered files to return beside the ZIP, in `files`: any of "psd", "ora", "pptx", "png"
    /// (the flattened composite), "zip".
    #[serde(default)]
    pub formats: Option<Vec<String>>,
    /// A decompose preset of the server's config (`/config` lists them): its steps, CFG scale,
    /// scheduler and LoRA adapters; `steps` / `cfg_scale` given here still win.
    #[serde(default)]
    pub preset: Option<String>,
}

/// `layer_num` of a request: a count, or the word "auto" ([`crate::layer_count`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum LayerNum {
    Count(u32),
    Auto(AutoWord),
}

/// The word `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum AutoWord {
    Auto,
}

impl LayerNum {
    pub const AUTO: LayerNum = LayerNum::Auto(AutoWord::Auto);
}

/// What a `layer_num` that is neither a count nor "auto" is told.
const LAYER_NUM_EXPECTED: &str = "layer_num must be a whole number or \"auto\"";

impl<'de> Deserialize<'de> for LayerNum {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Count(u32),
            Word(String),
        }
        match Raw::deserialize(d).map_err(|_| serde::de::Error::custom(LAYER_NUM_EXPECTED))? {
            Raw::Count(n) => Ok(LayerNum::Count(n)),
            // Exactly the word the OpenAPI document lists (flags, typed by people, are looser).
            Raw::Word(w) if w == "auto" => Ok(LayerNum::AUTO),
            Raw::Word(_) => Err(serde::de::Error::custom(LAYER_NUM_EXPECTED)),
        }
    }
}

impl std::str::FromStr for LayerNum {
    type Err = String;

    /// A flag's text: `auto` or a count in the layer range.
    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim().eq_ignore_ascii_case("auto") {
            return Ok(LayerNum::AUTO);
        }
        flags::layer_num(s).map(LayerNum::Count)
    }
}

impl std::fmt::Display for LayerNum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LayerNum::Count(n) => write!(f, "{n}"),
            LayerNum::Auto(_) => f.write_str("auto"),
        }
    }
}

/// A layered file of the run, as `formats` asked for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct ExportedFile {
    /// "psd", "ora", "pptx", "png" or "zip".
    pub format: String,
    /// A file name for it, e.g. `layers.psd`.
    pub filename: String,
    pub mime: String,
    /// The file, base64.
    pub data: String,
}

/// One returned image: index 0 "Composite", then "Layer 1" … "Layer N".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct LayerImage {
    pub name: String,
    /// `data:image/png;base64,…`
    pub image: String,
    pub index: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct DecomposeResponse {
    pub layers: Vec<LayerImage>,
    /// Base64 ZIP of the layer PNGs, the composite and manifest.json.
    pub zip_data: String,
    /// Seconds spent in the pipeline.
    pub generation_time: f64,
    /// Number of layers, not counting the composite.
    pub layer_count: u32,
    pub resolution: u32,
    /// Extra fields (additions to the seed's contract).
    pub layer_order: String,
    pub seed: u64,
    pub width: u32,
    pub height: u32,
    /// The automatic caption used when the prompt was empty.
    #[serde(default)]
    pub caption: Option<String>,
    /// The files the request's `formats` asked for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<ExportedFile>,
    /// With `layer_num: "auto"`: how many layers the model produced, which were kept and
    /// which were dropped and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_layers: Option<crate::layer_count::AutoLayers>,
}

/// The seed's field names (`layer_image`, `instruction`); `image` and `prompt` are accepted too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct EditLayerRequest {
    /// The RGBA layer to edit (data URL or bare base64).
    #[serde(rename = "layer_image", alias = "image")]
    pub image: String,
    /// The edit instruction.
    #[serde(rename = "instruction", alias = "prompt")]
    pub prompt: String,
    #[serde(default)]
    pub steps: Option<u32>,
    #[serde(default)]
    pub cfg_scale: Option<f32>,
    #[serde(default)]
    pub seed: Option<u64>,
    /// Keep the layer's original alpha (default) or re-derive it by keying the background.
    #[serde(default)]
    pub keep_alpha: Option<bool>,
    /// An edit preset of the server's config, e.g. "fast-edit-8" (Qwen-Image-Lightning: 8 steps,
    /// no CFG, its scheduler and LoRA); `steps` / `cfg_scale` given here still win.
    #[serde(default)]
    pub preset: Option<String>,
}

/// Defaults the server runs with (from config.toml + flags).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct ConfigResponse {
    pub model_type: String,
    pub layer_num: u32,
    pub resolution: u32,
    pub steps: u32,
    pub cfg_scale: f32,
    pub cpu_offload: bool,
    pub layer_range: [u32; 2],
    pub resolutions: Vec<u32>,
    pub max_steps: u32,
    pub max_image_pixels: u64,
    pub max_body_bytes: u64,
    /// LoRA adapters of both pipelines and the presets requests can name.
    #[serde(default)]
    pub adapters: crate::api_lora::AdapterConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct StatusResponse {
    /// "ready" (weights in memory), "idle" (will load on first job), "unavailable" (cannot run).
    pub status: String,
    pub model_loaded: bool,
    pub model: String,
    pub device: String,
    /// Why decomposition cannot run, when it cannot.
    pub reason: Option<String>,
    pub queue_depth: u32,
    pub queue_capacity: u32,
    pub busy: bool,
    /// Where the text encoder lives between jobs (resident, host copies, or loaded per job).
    #[serde(default)]
    pub text_encoder: String,
    /// Whether the decompose and edit pipelines both stay loaded or replace each other.
    #[serde(default)]
    pub pipelines: String,
    /// The LoRA adapters merged into each loaded pipeline now.
    #[serde(default)]
    pub lora: crate::api_lora::ActiveLora,
    /// The engine workers: one per device (or CFG-parallel pair of devices).
    #[serde(default)]
    pub workers: Vec<WorkerStatus>,
    /// How several devices serve jobs: "throughput" (a worker per device) or "latency" (two
    /// devices per job, CFG-parallel).
    #[serde(default)]
    pub parallel: String,
}

/// One engine worker in `/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct WorkerStatus {
    pub index: u32,
    /// The device it runs on: `cuda:0`, `cuda:0+cuda:1` (a CFG-parallel pair) or `cpu`.
    pub device: String,
    pub busy: bool,
    /// The kind of job running now ("decompose", "edit", "z-image"), while busy.
    pub running: Option<String>,
    /// Jobs it has finished since the server started.
    pub jobs_done: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct EditStatusResponse {
    pub status: String,
    pub model_loaded: bool,
    pub model: String,
    pub reason: Option<String>,
    /// While the edit model is being downloaded (the first edit of a repo id not cached yet).
    #[serde(default)]
    pub download: Option<DownloadStatus>,
}

/// A model download in progress: the current file and its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct DownloadStatus {
    pub file: String,
    /// 1-based place of `file` among `files`.
    pub file_index: u32,
    pub files: u32,
    pub bytes_done: u64,
    pub bytes_total: u64,
}

/// Defaults and limits validation needs (the server's effective configuration).
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub default_layer_num: u32,
    pub default_resolution: u32,
    pub default_steps: u32,
    pub default_cfg_scale: f32,
    pub max_image_pixels: u64,
    /// The presets requests can name.
    pub presets: Vec<crate::api_lora::PresetInfo>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            default_layer_num: DEFAULT_LAYER_NUM,
            default_resolution: DEFAULT_RESOLUTION,
            default_steps: DEFAULT_STEPS,
            default_cfg_scale: DEFAULT_CFG_SCALE,
            max_image_pixels: 36_000_000,
            presets: Vec::new(),
        }
    }
}

/// A decompose request after validation: every field resolved, the image decoded.
#[derive(Debug, Clone)]
pub struct DecomposeJob {
    pub image: image::RgbaImage,
    pub prompt: String,
    pub negative_prompt: String,
    /// Layers to ask the model for ([`crate::layer_count::AUTO_MAX_LAYERS`] when `auto_layers`).
    pub layer_num: u32,
    /// `layer_num: "auto"`: drop the layers that add nothing visible.
    pub auto_layers: bool,
    pub resolution: u32,
    pub steps: u32,
    pub cfg_scale: f32,
    pub cfg_normalize: bool,
    pub seed: u64,
    /// Caption in Chinese instead of English (empty prompt only).
    pub caption_in_chinese: bool,
    /// Layered files to return beside the ZIP.
    pub formats: Vec<crate::export::Format>,
    /// The preset it runs with.
    pub preset: Option<String>,
}

/// An edit request after validation.
#[derive(Debug, Clone)]
pub struct EditJob {
    pub image: image::RgbaImage,
    pub prompt: String,
    pub steps: u32,
    pub cfg_scale: f32,
    pub seed: u64,
    pub keep_alpha: bool,
    /// The preset it runs with.
    pub preset: Option<String>,
}

pub fn validate_steps(steps: u32) -> Result<u32, ApiError> {
    if steps == 0 || steps > MAX_STEPS {
        return Err(ApiError::unprocessable(format!(
            "steps must be between 1 and {MAX_STEPS}, got {steps}"
        )));
    }
    Ok(steps)
}

pub fn validate_cfg_scale(cfg: f32) -> Result<f32, ApiError> {
    if !cfg.is_finite() || !(0.0..=MAX_CFG_SCALE).contains(&cfg) {
        return Err(ApiError::unprocessable(format!(
            "cfg_scale must be a finite number between 0 and {MAX_CFG_SCALE}, got {cfg}"
        )));
    }
    Ok(cfg)
}

pub fn validate_layer_num(n: u32) -> Result<u32, ApiError> {
    if !LAYER_RANGE.contains(&n) {
        return Err(ApiError::unprocessable(format!(
            "layer_num must be between {} and {}, got {n}",
            LAYER_RANGE.start(),
            LAYER_RANGE.end()
        )));
    }
    Ok(n)
}

pub fn validate_resolution(r: u32) -> Result<u32, ApiError> {
    if !RESOLUTIONS.contains(&r) {
        return Err(ApiError::unprocessable(format!(
            "resolution must be 640 or 1024, got {r}"
        )));
    }
    Ok(r)
}

fn validate_prompt(what: &str, p: &str) -> Result<(), ApiError> {
    if p.chars().count() > MAX_PROMPT_CHARS {
        return Err(ApiError::unprocessable(format!(
            "{what} is longer than {MAX_PROMPT_CHARS} characters"
        )));
    }
    Ok(())
}

/// Command-line flags of both binaries go through the same checks as requests: these parse the
/// text of a flag (clap's `value_parser`) and answer the check's message.
pub mod flags {
    use super::{validate_cfg_scale, validate_layer_num, validate_resolution, validate_steps, EDIT_MIN_STEPS};

    fn number<T: std::str::FromStr>(s: &str) -> Result<T, String> {
        s.trim().parse().map_err(|_| format!("`{s}` is not a number"))
    }

    pub fn layer_num(s: &str) -> Result<u32, String> {
        validate_layer_num(number(s)?).map_err(|e| e.error)
    }

    pub fn resolution(s: &str) -> Result<u32, String> {
        validate_resolution(number(s)?).map_err(|e| e.error)
    }

    pub fn steps(s: &str) -> Result<u32, String> {
        validate_steps(number(s)?).map_err(|e| e.error)
    }

    pub fn edit_steps(s: &str) -> Result<u32, String> {
        let steps = steps(s)?;
        if steps < EDIT_MIN_STEPS {
            return Err(format!("an edit needs at least {EDIT_MIN_STEPS} steps, got {steps}"));
        }
        Ok(steps)
    }

    pub fn cfg_scale(s: &str) -> Result<f32, String> {
        validate_cfg_scale(number(s)?).map_err(|e| e.error)
    }
}

/// Refuses images the vision processor would refuse later, so the client hears before queueing.
fn validate_aspect_ratio(image: &image::RgbaImage) -> Result<(), ApiError> {
    let (w, h) = image.dimensions();
    let ratio = f64::from(w.max(h)) / f64::from(w.min(h).max(1));
    if ratio >= MAX_ASPECT_RATIO {
        return Err(ApiError::unprocessable(format!(
            "the image is {w}×{h}: its long side must be less than {MAX_ASPECT_RATIO} times its short side"
        )));
    }
    Ok(())
}

impl DecomposeRequest {
    /// Resolves defaults, checks every field and decodes the image. `random_seed` is used when
    /// the request has none.
    pub fn validate(&self, limits: &Limits, random_seed: u64) -> Result<DecomposeJob, ApiError> {
        let (layer_num, auto_layers) = match self.layer_num {
            Some(LayerNum::Auto(_)) => (crate::layer_count::AUTO_MAX_LAYERS, true),
            Some(LayerNum::Count(n)) => (validate_layer_num(n)?, false),
            None => (validate_layer_num(limits.default_layer_num)?, false),
        };
        let resolution = validate_resolution(self.resolution.unwrap_or(limits.default_resolution))?;
        let preset = self
            .preset
            .as_deref()
            .map(|name| crate::api_lora::resolve_preset(&limits.presets, name, crate::api_lora::PIPELINE_DECOMPOSE))
            .transpose()?;
        let steps = validate_steps(self.steps.or(preset.map(|p| p.steps)).unwrap_or(limits.default_steps))?;
        let cfg_scale = validate_cfg_scale(
            self.cfg_scale
                .or(preset.map(|p| p.cfg_scale))
                .unwrap_or(limits.default_cfg_scale),
        )?;
        validate_prompt("prompt", &self.prompt)?;
        let negative_prompt = self.negative_prompt.clone().unwrap_or_else(|| " ".into());
        validate_prompt("negative_prompt", &negative_prompt)?;
        let mut formats = Vec::new();
        for name in self.formats.iter().flatten() {
            let format: crate::export::Format = name.parse().map_err(ApiError::bad_request)?;
            if !formats.contains(&format) {
                formats.push(format);
            }
        }
        let image = crate::image_data::decode_image(&self.image, limits.max_image_pixels)?;
        validate_aspect_ratio(&image)?;
        Ok(DecomposeJob {
            preset: preset.map(|p| p.name.clone()),
            formats,
            image,
            prompt: self.prompt.clone(),
            negative_prompt,
            layer_num,
            auto_layers,
            resolution,
            steps,
            cfg_scale,
            cfg_normalize: self.cfg_normalize.unwrap_or(true),
            seed: self.seed.unwrap_or(random_seed),
            caption_in_chinese: match self.caption_language.as_deref().map(str::to_ascii_lowercase).as_deref() {
                None | Some("en") => false,
                Some("cn" | "zh") => true,
                Some(other) => {
                    return Err(ApiError::unprocessable(format!(
                        "caption_language must be \"en\" or \"cn\", got {other:?}"
                    )))
                }
            },
        })
    }
}

impl EditLayerRequest {
    pub fn validate(&self, limits: &Limits, random_seed: u64) -> Result<EditJob, ApiError> {
        if self.prompt.trim().is_empty() {
            return Err(ApiError::unprocessable("instruction must not be empty"));
        }
        validate_prompt("instruction", &self.prompt)?;
        let preset = self
            .preset
            .as_deref()
            .map(|name| crate::api_lora::resolve_preset(&limits.presets, name, crate::api_lora::PIPELINE_EDIT))
            .transpose()?;
        let steps = validate_steps(self.steps.or(preset.map(|p| p.steps)).unwrap_or(limits.default_steps))?;
        if steps < EDIT_MIN_STEPS {
            return Err(ApiError::unprocessable(format!(
                "an edit needs at least {EDIT_MIN_STEPS} inference steps (Qwen-Image-Edit's schedule), got steps = {steps}"
            )));
        }
        let cfg_scale = validate_cfg_scale(
            self.cfg_scale
                .or(preset.map(|p| p.cfg_scale))
                .unwrap_or(limits.default_cfg_scale),
        )?;
        let image = crate::image_data::decode_image(&self.image, limits.max_image_pixels)?;
        validate_aspect_ratio(&image)?;
        Ok(EditJob {
            preset: preset.map(|p| p.name.clone()),
            image,
            prompt: self.prompt.clone(),
            steps,
            cfg_scale,
            seed: self.seed.unwrap_or(random_seed),
            keep_alpha: self.keep_alpha.unwrap_or(true),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image_data::{encode_png, png_data_url};

    fn request(image: String) -> DecomposeRequest {
        DecomposeRequest {
            image,
            prompt: "a cat on a sofa".into(),
            negative_prompt: None,
            layer_num: None,
            resolution: None,
            steps: None,
            cfg_scale: None,
            seed: None,
            cfg_normalize: None,
            caption_language: None,
            formats: None,
            preset: None,
        }
    }

    #[test]
    fn formats_are_parsed_once_each_and_unknown_ones_refused() {
        let limits = Limits::default();
        let mut req = request(tiny_png());
        req.formats = Some(vec!["PSD".into(), "ora".into(), "psd".into()]);
        let job = req.validate(&limits, 1).unwrap();
        assert_eq!(job.formats, [crate::export::Format::Psd, crate::export::Format::Ora]);
        req.formats = Some(vec!["gif".into()]);
        let err = req.validate(&limits, 1).unwrap_err();
        assert_eq!(err.status, 400);
        assert!(err.error.contains("unknown export format \"gif\""), "{}", err.error);
        req.formats = None;
        assert!(req.validate(&limits, 1).unwrap().formats.is_empty());
    }

    fn tiny_png() -> String {
        png_data_url(&encode_png(&image::RgbaImage::from_pixel(3, 2, image::Rgba([1, 2, 3, 4]))).unwrap())
    }

    #[test]
    fn layer_num_is_a_count_or_auto() {
        let parse =
            |json: &str| serde_json::from_str::<DecomposeRequest>(&format!(r#"{{"image": "x", "layer_num": {json}}}"#));
        assert_eq!(parse("3").unwrap().layer_num, Some(LayerNum::Count(3)));
        assert_eq!(parse(r#""auto""#).unwrap().layer_num, Some(LayerNum::AUTO));
        for bad in [r#""many""#, r#"" AUTO""#, r#""4""#, "-1", "2.5", "true"] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(
                err.contains(r#"layer_num must be a whole number or "auto""#),
                "{bad}: {err}"
            );
        }
        // Serialised back the same way.
        assert_eq!(serde_json::to_value(LayerNum::AUTO).unwrap(), "auto");
        assert_eq!(serde_json::to_value(LayerNum::Count(5)).unwrap(), 5);
        let mut r = request(tiny_png());
        r.layer_num = Some(LayerNum::AUTO);
        let job = r.validate(&Limits::default(), 0).unwrap();
        assert_eq!(
            (job.layer_num, job.auto_layers),
            (crate::layer_count::AUTO_MAX_LAYERS, true)
        );
        r.layer_num = Some(LayerNum::Count(3));
        assert!(!r.validate(&Limits::default(), 0).unwrap().auto_layers);
        // The command lines' flag.
        assert_eq!("auto".parse::<LayerNum>(), Ok(LayerNum::AUTO));
        assert_eq!("7".parse::<LayerNum>(), Ok(LayerNum::Count(7)));
        assert!("12".parse::<LayerNum>().unwrap_err().contains("between 2 and 10"));
        assert_eq!(LayerNum::AUTO.to_string(), "auto");
    }

    #[test]
    fn defaults_are_filled_in() {
        let job = request(tiny_png()).validate(&Limits::default(), 7).unwrap();
        assert_eq!((job.layer_num, job.resolution, job.steps, job.seed), (4, 640, 50, 7));
        assert_eq!(job.cfg_scale, 4.0);
        assert!(job.cfg_normalize);
        assert_eq!(job.negative_prompt, " ");
        assert_eq!(job.image.dimensions(), (3, 2));
        assert_eq!(job.image.get_pixel(0, 0).0, [1, 2, 3, 4]);
    }

    #[test]
    fn out_of_range_fields_are_422_naming_the_field() {
        type Mutation = Box<dyn Fn(&mut DecomposeRequest)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|r| r.layer_num = Some(LayerNum::Count(1))), "layer_num"),
            (Box::new(|r| r.layer_num = Some(LayerNum::Count(11))), "layer_num"),
            (Box::new(|r| r.resolution = Some(800)), "resolution"),
            (Box::new(|r| r.steps = Some(0)), "steps"),
            (Box::new(|r| r.steps = Some(MAX_STEPS + 1)), "steps"),
            (Box::new(|r| r.cfg_scale = Some(f32::NAN)), "cfg_scale"),
            (Box::new(|r| r.cfg_scale = Some(-1.0)), "cfg_scale"),
            (Box::new(|r| r.prompt = "x".repeat(MAX_PROMPT_CHARS + 1)), "prompt"),
            (Box::new(|r| r.caption_language = Some("fr".into())), "caption_language"),
        ];
        for (mutate, field) in cases {
            let mut r = request(tiny_png());
            mutate(&mut r);
            let err = r.validate(&Limits::default(), 0).unwrap_err();
            assert_eq!(err.status, 422, "{field}: {err}");
            assert!(err.error.contains(field), "{field}: {err}");
        }
    }

    #[test]
    fn accepted_edges_pass() {
        let mut r = request(tiny_png());
        r.layer_num = Some(LayerNum::Count(10));
        r.resolution = Some(1024);
        r.steps = Some(1);
        r.cfg_scale = Some(1.0);
        r.seed = Some(u64::MAX);
        let job = r.validate(&Limits::default(), 0).unwrap();
        assert_eq!(
            (job.layer_num, job.resolution, job.steps, job.seed),
            (10, 1024, 1, u64::MAX)
        );
    }

    #[test]
    fn edit_needs_an_instruction() {
        let r = EditLayerRequest {
            image: tiny_png(),
            prompt: "  ".into(),
            steps: None,
            cfg_scale: None,
            seed: None,
            keep_alpha: None,
            preset: None,
        };
        let err = r.validate(&Limits::default(), 0).unwrap_err();
        assert_eq!(err.status, 422);
        let ok = EditLayerRequest {
            prompt: "make it red".into(),
            ..r
        }
        .validate(&Limits::default(), 0)
        .unwrap();
        assert!(ok.keep_alpha);
    }

    #[test]
    fn edit_refuses_one_step_and_elongated_images_before_queueing() {
        let r = EditLayerRequest {
            image: tiny_png(),
            prompt: "make it red".into(),
            steps: Some(1),
            cfg_scale: None,
            seed: None,
            keep_alpha: None,
            preset: None,
        };
        let err = r.validate(&Limits::default(), 0).unwrap_err();
        assert_eq!(err.status, 422);
        assert!(err.error.contains("at least 2"), "{err}");
        let thin = png_data_url(&encode_png(&image::RgbaImage::new(400, 2)).unwrap());
        let err = EditLayerRequest {
            image: thin.clone(),
            steps: None,
            ..r
        }
        .validate(&Limits::default(), 0)
        .unwrap_err();
        assert!(err.error.contains("400×2"), "{err}");
        let err = request(thin).validate(&Limits::default(), 0).unwrap_err();
        assert_eq!(err.status, 422);
    }

    #[test]
    fn the_seeds_edit_field_names_and_ours_both_parse() {
        let seed: EditLayerRequest = serde_json::from_str(
            r#"{"layer_image": "abc", "instruction": "make it red", "steps": 30, "cfg_scale": 4.0, "seed": 1}"#,
        )
        .unwrap();
        let ours: EditLayerRequest = serde_json::from_str(
            r#"{"image": "abc", "prompt": "make it red", "steps": 30, "cfg_scale": 4.0, "seed": 1}"#,
        )
        .unwrap();
        assert_eq!(seed, ours);
        assert_eq!((seed.image.as_str(), seed.prompt.as_str()), ("abc", "make it red"));
    }

    #[test]
    fn a_preset_sets_steps_and_cfg_unless_the_request_does() {
        let fast = crate::api_lora::PresetInfo {
            name: crate::api_lora::FAST_EDIT_PRESET.into(),
            label: "Fast edit (8 steps)".into(),
            pipeline: crate::api_lora::PIPELINE_EDIT.into(),
            steps: 8,
            cfg_scale: 1.0,
            scheduler_config: None,
            lora: vec![],
            available: true,
            reason: None,
        };
        let limits = Limits {
            presets: vec![fast],
            ..Limits::default()
        };
        let mut r: EditLayerRequest = serde_json::from_value(serde_json::json!({
            "layer_image": tiny_png(), "instruction": "make it red", "preset": "fast-edit-8"
        }))
        .unwrap();
        let job = r.validate(&limits, 0).unwrap();
        assert_eq!(
            (job.steps, job.cfg_scale, job.preset.as_deref()),
            (8, 1.0, Some("fast-edit-8"))
        );
        r.steps = Some(4);
        assert_eq!(r.validate(&limits, 0).unwrap().steps, 4);
        r.preset = Some("nope".into());
        let err = r.validate(&limits, 0).unwrap_err();
        assert_eq!(err.status, 422);
        assert!(err.error.contains("unknown preset \"nope\""), "{err}");
        // A decompose request cannot use an edit preset.
        let mut d = request(tiny_png());
        d.preset = Some("fast-edit-8".into());
        assert!(d.validate(&limits, 0).unwrap_err().error.contains("edit pipeline"));
        d.preset = None;
        assert_eq!(d.validate(&limits, 0).unwrap().preset, None);
    }

    #[test]
    fn error_serialises_as_error_field_only() {
        let json = serde_json::to_value(ApiError::bad_request("nope")).unwrap();
        assert_eq!(json, serde_json::json!({"error": "nope"}));
    }
}

/// A queued or running job, as `GET /api/qwen-image/jobs/{id}` reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct JobStatus {
    pub id: String,
    pub state: JobState,
    /// What the engine is doing: "queued", "loading", "encoding", "denoising", "decoding", "done".
    pub phase: String,
    /// Denoising step finished so far, out of `total_steps`.
    pub step: u32,
    pub total_steps: u32,
    /// Seconds since the job started running (0 while queued).
    pub elapsed: f64,
    /// Estimated seconds left, once a step has been timed.
    pub eta_seconds: Option<f64>,
    /// Position in the queue while waiting (0 = next).
    pub queue_position: Option<u32>,
    pub error: Option<String>,
    /// The result, once `state` is `done`.
    pub result: Option<DecomposeResponse>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Done,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn is_finished(self) -> bool {
        matches!(self, JobState::Done | JobState::Failed | JobState::Cancelled)
    }
}

/// A finished decomposition kept on the server's disk, newest first in
/// `GET /api/qwen-image/runs`; its result is `GET /api/qwen-image/jobs/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct RunSummary {
    pub id: String,
    /// When it finished, in seconds since the Unix epoch.
    pub finished_at: u64,
    pub prompt: String,
    pub layer_count: u32,
    pub resolution: u32,
    pub width: u32,
    pub height: u32,
    pub seed: u64,
    pub steps: u32,
    pub cfg_scale: f32,
    pub generation_time: f64,
}

/// The `{"error": …}` of a request that lacks the API token (the web app asks for it on seeing it).
pub const TOKEN_REQUIRED: &str = "missing or wrong API token (Authorization: Bearer …, or the page's sign-in)";

/// Answer to starting a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct JobStarted {
    pub id: String,
}

/// A finished layer edit: the edited layer, the same size as the one sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct EditResult {
    /// `data:image/png;base64,…`
    pub image: String,
    /// The seed the edit ran with (the request's, or a fresh random one).
    pub seed: u64,
}

/// A queued or running layer edit, as `GET /api/qwen-image/edit-jobs/{id}` reports it: the same
/// fields as [`JobStatus`], with the edited layer as the result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct EditJobStatus {
    pub id: String,
    pub state: JobState,
    /// "queued", "starting", "loading", "encoding", "denoising", "decoding", "done", …
    pub phase: String,
    pub step: u32,
    pub total_steps: u32,
    pub elapsed: f64,
    /// Estimated seconds left, while denoising and once a step has been timed.
    pub eta_seconds: Option<f64>,
    pub queue_position: Option<u32>,
    pub error: Option<String>,
    /// The edited layer, once `state` is `done`.
    pub result: Option<EditResult>,
}

/// Decomposing one layer of a finished run again (`POST /api/qwen-image/runs/{id}/layers/{index}/split`):
/// the fields of a [`DecomposeRequest`] but the image, which is the run's layer. The resolution
/// defaults to the run's, so the sub-layers come back at the layer's size.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct SplitLayerRequest {
    /// Describes the layer. Empty = caption the layer automatically.
    #[serde(default)]
    pub prompt: String,
    #[serde(default)]
    pub negative_prompt: Option<String>,
    /// How many sub-layers: a number in the layer range, or "auto".
    #[serde(default)]
    pub layer_num: Option<LayerNum>,
    #[serde(default)]
    pub resolution: Option<u32>,
    #[serde(default)]
    pub steps: Option<u32>,
    #[serde(default)]
    pub cfg_scale: Option<f32>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub cfg_normalize: Option<bool>,
    #[serde(default)]
    pub caption_language: Option<String>,
    #[serde(default)]
    pub formats: Option<Vec<String>>,
    #[serde(default)]
    pub preset: Option<String>,
}

impl SplitLayerRequest {
    /// The decompose request for `image` (the layer's data URL) from a run made at `resolution`.
    pub fn into_decompose(self, image: String, resolution: u32) -> DecomposeRequest {
        DecomposeRequest {
            image,
            prompt: self.prompt,
            negative_prompt: self.negative_prompt,
            layer_num: self.layer_num,
            resolution: Some(self.resolution.unwrap_or(resolution)),
            steps: self.steps,
            cfg_scale: self.cfg_scale,
            seed: self.seed,
            cfg_normalize: self.cfg_normalize,
            caption_language: self.caption_language,
            formats: self.formats,
            preset: self.preset,
        }
    }
}
