//! The Z-Image contract (text → image with Z-Image-Turbo): request/response types, defaults and
//! limits, and the validation every entry point (REST, the page, the CLI, `config.toml`) applies.
//!
//! Paths:
//! - `POST /api/z-image/generate`          [`GenerateRequest`] → [`GenerateResponse`] (waits)
//! - `POST /api/z-image/jobs`              [`GenerateRequest`] → [`JobStarted`] (202)
//! - `GET  /api/z-image/jobs/{id}`         → [`ZImageJobStatus`]
//! - `POST /api/z-image/jobs/{id}/cancel`  → [`ZImageJobStatus`]
//! - `GET  /api/z-image/status`            → [`ZImageStatusResponse`]
//!
//! Errors are `{"error": …}` with a 4xx/5xx status, as everywhere.

use serde::{Deserialize, Serialize};

use crate::api::{validate_cfg_scale, validate_steps, ApiError, MAX_PROMPT_CHARS};
pub use crate::api::{JobStarted, JobState};

/// The model used when no path is configured (resolved in the Hugging Face cache).
pub const DEFAULT_Z_IMAGE_REPO: &str = "Tongyi-MAI/Z-Image-Turbo";
/// Turbo's recommended settings: 9 steps (8 model evaluations that matter), no CFG, 1024².
pub const DEFAULT_Z_STEPS: u32 = 9;
pub const DEFAULT_Z_CFG_SCALE: f32 = 0.0;
pub const DEFAULT_Z_SIZE: u32 = 1024;
/// Width and height must be multiples of this (VAE factor 8 × patch 2), as the reference demands.
pub const Z_SIZE_MULTIPLE: u32 = 16;
/// Smallest and largest side accepted.
pub const Z_MIN_SIZE: u32 = 16;
pub const Z_MAX_SIZE: u32 = 2048;
/// Largest seed accepted (the schema's int64).
pub const Z_MAX_SEED: u64 = i64::MAX as u64;

/// What to generate. Absent fields take the server's defaults (`[<profile>.z_image]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct GenerateRequest {
    /// What the image shows (required).
    pub prompt: String,
    /// What it should not show; used only when `cfg_scale` > 0.
    #[serde(default)]
    pub negative_prompt: Option<String>,
    /// Pixels, a multiple of 16 between 16 and 2048.
    #[serde(default)]
    pub width: Option<u32>,
    #[serde(default)]
    pub height: Option<u32>,
    #[serde(default)]
    pub steps: Option<u32>,
    /// Classifier-free guidance (0 = off, Turbo's setting).
    #[serde(default)]
    pub cfg_scale: Option<f32>,
    /// Fixes the noise; random when absent.
    #[serde(default)]
    pub seed: Option<u64>,
}

/// The generated image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct GenerateResponse {
    /// `data:image/png;base64,…`
    pub image: String,
    pub seed: u64,
    pub width: u32,
    pub height: u32,
    pub steps: u32,
    pub cfg_scale: f32,
    /// Seconds spent in the pipeline.
    pub generation_time: f64,
}

/// A Z-Image job as `GET /api/z-image/jobs/{id}` reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct ZImageJobStatus {
    pub id: String,
    pub state: JobState,
    /// "queued", "loading", "encoding", "denoising", "decoding", "done", "failed", "cancelled".
    pub phase: String,
    pub step: u32,
    pub total_steps: u32,
    /// Seconds since the job started running (0 while queued).
    pub elapsed: f64,
    /// Estimated seconds left, once a step has been timed.
    pub eta_seconds: Option<f64>,
    pub error: Option<String>,
    /// The image, once `state` is `done`.
    pub result: Option<GenerateResponse>,
}

/// The Z-Image model's state and the server's defaults for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct ZImageStatusResponse {
    /// "idle" (loads on the first job), "ready" or "unavailable".
    pub status: String,
    pub model_loaded: bool,
    /// Whether the model stays loaded between jobs, and why.
    pub residency: String,
    pub model: String,
    pub device: String,
    pub reason: Option<String>,
    /// The mode the page opens in (`--model-type`): "zimage" or "qwenimage".
    pub default_mode: String,
    pub defaults: ZImageDefaults,
}

/// Defaults a request's absent fields take (the profile's `[z_image]` table).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct ZImageDefaults {
    pub width: u32,
    pub height: u32,
    pub steps: u32,
    pub cfg_scale: f32,
    /// A fixed seed for requests without one (`None`: random).
    pub seed: Option<u64>,
}

impl Default for ZImageDefaults {
    fn default() -> Self {
        Self {
            width: DEFAULT_Z_SIZE,
            height: DEFAULT_Z_SIZE,
            steps: DEFAULT_Z_STEPS,
            cfg_scale: DEFAULT_Z_CFG_SCALE,
            seed: None,
        }
    }
}

/// A request after validation: every field resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateJob {
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub width: u32,
    pub height: u32,
    pub steps: u32,
    pub cfg_scale: f32,
    pub seed: u64,
}

/// A side length: a multiple of [`Z_SIZE_MULTIPLE`] within [`Z_MIN_SIZE`]..=[`Z_MAX_SIZE`].
pub fn validate_size(what: &str, v: u32) -> Result<u32, ApiError> {
    if !(Z_MIN_SIZE..=Z_MAX_SIZE).contains(&v) || !v.is_multiple_of(Z_SIZE_MULTIPLE) {
        return Err(ApiError::unprocessable(format!(
            "{what} must be a multiple of {Z_SIZE_MULTIPLE} between {Z_MIN_SIZE} and {Z_MAX_SIZE}, got {v}"
        )));
    }
    Ok(v)
}

impl GenerateRequest {
    /// Resolves defaults and checks every field; `random_seed` is used when neither the request
    /// nor the defaults fix one.
    pub fn validate(&self, defaults: &ZImageDefaults, random_seed: u64) -> Result<GenerateJob, ApiError> {
        if self.prompt.trim().is_empty() {
            return Err(ApiError::unprocessable(
                "prompt is empty: describe the image to generate",
            ));
        }
        for (what, text) in [
            ("prompt", Some(&self.prompt)),
            ("negative_prompt", self.negative_prompt.as_ref()),
        ] {
            if text.is_some_and(|t| t.chars().count() > MAX_PROMPT_CHARS) {
                return Err(ApiError::unprocessable(format!(
                    "{what} is longer than {MAX_PROMPT_CHARS} characters"
                )));
            }
        }
        if let Some(seed) = self.seed.filter(|&s| s > Z_MAX_SEED) {
            return Err(ApiError::unprocessable(format!(
                "seed must be between 0 and {Z_MAX_SEED}, got {seed}"
            )));
        }
        Ok(GenerateJob {
            prompt: self.prompt.clone(),
            negative_prompt: self.negative_prompt.clone().filter(|n| !n.is_empty()),
            width: validate_size("width", self.width.unwrap_or(defaults.width))?,
            height: validate_size("height", self.height.unwrap_or(defaults.height))?,
            steps: validate_steps(self.steps.unwrap_or(defaults.steps))?,
            cfg_scale: validate_cfg_scale(self.cfg_scale.unwrap_or(defaults.cfg_scale))?,
            seed: self.seed.or(defaults.seed).unwrap_or(random_seed),
        })
    }
}

/// Flag parsers (clap `value_parser`) with the same checks as requests.
pub mod flags {
    /// `--width`/`--height`.
    pub fn size(s: &str) -> Result<u32, String> {
        let v: u32 = s.trim().parse().map_err(|_| format!("`{s}` is not a number"))?;
        super::validate_size("the size", v).map_err(|e| e.error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(prompt: &str) -> GenerateRequest {
        GenerateRequest {
            prompt: prompt.into(),
            negative_prompt: None,
            width: None,
            height: None,
            steps: None,
            cfg_scale: None,
            seed: None,
        }
    }

    #[test]
    fn defaults_fill_absent_fields_and_a_fixed_seed_wins_over_random() {
        let d = ZImageDefaults::default();
        let job = req("a fox").validate(&d, 77).unwrap();
        assert_eq!(
            (job.width, job.height, job.steps, job.cfg_scale, job.seed),
            (1024, 1024, 9, 0.0, 77)
        );
        let fixed = ZImageDefaults { seed: Some(5), ..d };
        assert_eq!(req("a fox").validate(&fixed, 77).unwrap().seed, 5);
        let own = GenerateRequest {
            seed: Some(9),
            ..req("a fox")
        };
        assert_eq!(own.validate(&fixed, 77).unwrap().seed, 9);
    }

    #[test]
    fn bad_fields_are_422_naming_the_field() {
        let d = ZImageDefaults::default();
        let cases = [
            (req("  "), "prompt is empty"),
            (
                GenerateRequest {
                    width: Some(100),
                    ..req("x")
                },
                "width must be a multiple of 16",
            ),
            (
                GenerateRequest {
                    height: Some(4096),
                    ..req("x")
                },
                "height must be",
            ),
            (
                GenerateRequest {
                    steps: Some(0),
                    ..req("x")
                },
                "steps",
            ),
            (
                GenerateRequest {
                    cfg_scale: Some(f32::NAN),
                    ..req("x")
                },
                "cfg_scale",
            ),
            (
                GenerateRequest {
                    seed: Some(1 << 63),
                    ..req("x")
                },
                "seed must be",
            ),
            (
                GenerateRequest {
                    prompt: "x".repeat(MAX_PROMPT_CHARS + 1),
                    ..req("x")
                },
                "longer than",
            ),
        ];
        for (r, msg) in cases {
            let e = r.validate(&d, 0).unwrap_err();
            assert_eq!(e.status, 422, "{msg}");
            assert!(e.error.contains(msg), "{} does not say {msg}", e.error);
        }
        assert_eq!(flags::size("64"), Ok(64));
        assert!(flags::size("65").is_err());
        assert!(flags::size("abc").is_err());
    }

    #[test]
    fn an_empty_negative_prompt_is_none() {
        let r = GenerateRequest {
            negative_prompt: Some(String::new()),
            ..req("x")
        };
        assert_eq!(r.validate(&ZImageDefaults::default(), 0).unwrap().negative_prompt, None);
    }
}
