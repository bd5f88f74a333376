//! Flow-matching Euler sampler (diffusers `FlowMatchEulerDiscreteScheduler`, deterministic path)
//! and the resolution-dependent shift (`mu`) of the two pipelines.
//!
//! The schedule starts from `σ_i = linspace(1, 1/N, N)` (the Layered pipeline's
//! `linspace(1, 0, N+1)[:-1]` is the same after the f32 cast, for every N up to 1000), then shifts
//! it toward high noise by `mu`:
//! - `time_shift_type = "linear"` (Layered): `σ' = mu / (mu + 1/σ − 1)`, mu = √(S_cond / 256);
//! - `"exponential"` (Qwen-Image, Edit-2509): `σ' = e^mu / (e^mu + 1/σ − 1)`, mu linear in the
//!   noisy-token count, then stretched so the last σ equals `shift_terminal` (0.02).
//!
//! A terminal σ = 0 is appended; timesteps are `1000·σ`. The step is `x + (σ_{i+1} − σ_i)·v` in f32.
//! Every scalar step is done in f32 in the reference's order, so sigmas match it bit for bit.

use candle_core::{DType, Result, Tensor};
use serde::{Deserialize, Deserializer};

/// `scheduler/scheduler_config.json`, HF key names.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SchedulerConfig {
    #[serde(default = "default_num_train_timesteps")]
    pub num_train_timesteps: usize,
    /// Static shift, used only when `use_dynamic_shifting` is false.
    #[serde(default = "default_shift")]
    pub shift: f64,
    #[serde(default)]
    pub use_dynamic_shifting: bool,
    #[serde(default = "default_base_shift")]
    pub base_shift: f64,
    #[serde(default = "default_max_shift")]
    pub max_shift: f64,
    #[serde(default = "default_base_image_seq_len")]
    pub base_image_seq_len: usize,
    #[serde(default = "default_max_image_seq_len")]
    pub max_image_seq_len: usize,
    /// The checkpoints write `false`, `null` or a number; all falsy values mean "no stretch".
    #[serde(default, deserialize_with = "falsy_or_number")]
    pub shift_terminal: Option<f64>,
    #[serde(default = "default_time_shift_type")]
    pub time_shift_type: TimeShiftType,
    #[serde(default)]
    pub invert_sigmas: bool,
    #[serde(default)]
    pub use_karras_sigmas: bool,
    #[serde(default)]
    pub use_exponential_sigmas: bool,
    #[serde(default)]
    pub use_beta_sigmas: bool,
    #[serde(default)]
    pub stochastic_sampling: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeShiftType {
    Exponential,
    Linear,
}

fn default_num_train_timesteps() -> usize {
    1000
}
fn default_shift() -> f64 {
    1.0
}
fn default_base_shift() -> f64 {
    0.5
}
fn default_max_shift() -> f64 {
    1.15
}
fn default_base_image_seq_len() -> usize {
    256
}
fn default_max_image_seq_len() -> usize {
    4096
}
fn default_time_shift_type() -> TimeShiftType {
    TimeShiftType::Exponential
}

fn falsy_or_number<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<f64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Bool(bool),
        Number(f64),
    }
    Ok(match Option::<Raw>::deserialize(d)? {
        None | Some(Raw::Bool(false)) | Some(Raw::Number(0.0)) => None,
        Some(Raw::Number(x)) => Some(x),
        Some(Raw::Bool(true)) => {
            return Err(serde::de::Error::custom(
                "shift_terminal: expected false, null or a number",
            ))
        }
    })
}

impl SchedulerConfig {
    /// A `scheduler_config.json` (a checkpoint's, or a preset's such as the one a step-distilled
    /// LoRA was trained for), refused by name when it asks for what this port does not implement.
    pub fn from_file(path: &std::path::Path) -> crate::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| crate::Error::io(path, e))?;
        let cfg: Self = serde_json::from_str(&text).map_err(|source| crate::Error::Json {
            path: path.into(),
            source,
        })?;
        FlowMatchEulerScheduler::new(cfg.clone())
            .map_err(|e| crate::Error::InvalidInput(format!("{}: {e}", path.display())))?;
        Ok(cfg)
    }

    /// Qwen/Qwen-Image-Layered `scheduler/scheduler_config.json` (mirrors of the release).
    pub fn layered() -> Self {
        Self {
            shift_terminal: None,
            time_shift_type: TimeShiftType::Linear,
            ..Self::edit_2509()
        }
    }

    /// Qwen-Image / Edit / Edit-2509 (as cloned by derivatives; the exact 2509 file is unverified).
    pub fn edit_2509() -> Self {
        Self {
            num_train_timesteps: 1000,
            shift: 1.0,
            use_dynamic_shifting: true,
            base_shift: 0.5,
            max_shift: 0.9,
            base_image_seq_len: 256,
            max_image_seq_len: 8192,
            shift_terminal: Some(0.02),
            time_shift_type: TimeShiftType::Exponential,
            invert_sigmas: false,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            stochastic_sampling: false,
        }
    }
}

/// The Layered pipeline's mu: √(S_cond / 256), S_cond = condition-image tokens (1600 at 640²).
pub fn layered_mu(cond_tokens: usize) -> f64 {
    (cond_tokens as f64 / 256.0).sqrt()
}

/// The Euler sampler with its schedule.
#[derive(Debug, Clone)]
pub struct FlowMatchEulerScheduler {
    config: SchedulerConfig,
    /// N + 1 values, the last 0.
    sigmas: Vec<f32>,
    /// N values, `1000·σ`.
    timesteps: Vec<f32>,
}

impl FlowMatchEulerScheduler {
    /// Refuses the options this port does not implement (karras/exponential/beta sigmas,
    /// stochastic sampling, inverted sigmas), naming the key.
    pub fn new(config: SchedulerConfig) -> Result<Self> {
        let unsupported = [
            ("use_karras_sigmas", config.use_karras_sigmas),
            ("use_exponential_sigmas", config.use_exponential_sigmas),
            ("use_beta_sigmas", config.use_beta_sigmas),
            ("stochastic_sampling", config.stochastic_sampling),
            ("invert_sigmas", config.invert_sigmas),
        ];
        if let Some((key, _)) = unsupported.iter().find(|(_, on)| *on) {
            candle_core::bail!("scheduler config: {key}=true is not supported (Qwen-Image pipelines leave it off)");
        }
        Ok(Self {
            config,
            sigmas: Vec::new(),
            timesteps: Vec::new(),
        })
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// The Edit/Qwen-Image pipelines' mu (`calculate_shift`): linear in the noisy-token count,
    /// from `base_shift` at `base_image_seq_len` to `max_shift` at `max_image_seq_len`.
    pub fn edit_mu(&self, noisy_tokens: usize) -> f64 {
        let c = &self.config;
        let m = (c.max_shift - c.base_shift) / (c.max_image_seq_len as f64 - c.base_image_seq_len as f64);
        let b = c.base_shift - m * c.base_image_seq_len as f64;
        noisy_tokens as f64 * m + b
    }

    /// Sets the schedule for `num_steps` steps, as both pipelines do (`sigmas = linspace(1, 1/N, N)`).
    /// `mu` is required when the config has `use_dynamic_shifting`.
    pub fn set_timesteps(&mut self, num_steps: usize, mu: Option<f64>) -> Result<()> {
        if num_steps == 0 {
            candle_core::bail!("scheduler: num_steps must be at least 1");
        }
        self.set_sigmas(&linspace(1.0, 1.0 / num_steps as f64, num_steps), mu)
    }

    /// Sets the schedule from explicit input sigmas (before shifting), as `set_timesteps(sigmas=…)`.
    pub fn set_sigmas(&mut self, input_sigmas: &[f64], mu: Option<f64>) -> Result<()> {
        if input_sigmas.is_empty() {
            candle_core::bail!("scheduler: no sigmas given");
        }
        let c = &self.config;
        let sigmas: Vec<f32> = input_sigmas.iter().map(|&s| s as f32).collect();
        // numpy arithmetic on a float32 array with Python-float scalars stays in float32.
        let mut sigmas: Vec<f32> = if c.use_dynamic_shifting {
            let Some(mu) = mu else {
                candle_core::bail!("scheduler: mu is required (use_dynamic_shifting=true); see layered_mu / edit_mu");
            };
            let k = match c.time_shift_type {
                TimeShiftType::Exponential => mu.exp() as f32,
                TimeShiftType::Linear => mu as f32,
            };
            sigmas.iter().map(|&t| k / (k + (1.0 / t - 1.0))).collect()
        } else {
            let shift = c.shift as f32;
            sigmas.iter().map(|&t| shift * t / (1.0 + (shift - 1.0) * t)).collect()
        };
        if let Some(terminal) = c.shift_terminal {
            let last = *sigmas.last().expect("non-empty");
            if last >= 1.0 {
                // The stretch divides by 1 − σ_last: diffusers returns NaN sigmas here.
                candle_core::bail!(
                    "scheduler: shift_terminal={terminal} needs a last sigma below 1 (got {last}); \
                     use at least 2 steps"
                );
            }
            let scale = (1.0 - last) / (1.0 - terminal) as f32;
            for s in &mut sigmas {
                *s = 1.0 - (1.0 - *s) / scale;
            }
        }
        let train = c.num_train_timesteps as f32;
        self.timesteps = sigmas.iter().map(|&s| s * train).collect();
        sigmas.push(0.0);
        self.sigmas = sigmas;
        Ok(())
    }

    /// N + 1 sigmas, the last 0.
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// N timesteps (`num_train_timesteps · σ`).
    pub fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    pub fn num_steps(&self) -> usize {
        self.timesteps.len()
    }

    /// What the pipelines feed the transformer at step `i`: `timestep / 1000` in f32 (which can
    /// differ from σ_i in the last bit).
    pub fn model_sigma(&self, i: usize) -> Result<f32> {
        match self.timesteps.get(i) {
            Some(t) => Ok(t / 1000.0),
            None => candle_core::bail!("scheduler: step {i} out of range (0..{})", self.timesteps.len()),
        }
    }

    /// One Euler step from σ_i to σ_{i+1}: `latents + (σ_{i+1} − σ_i) · velocity`, in f32.
    /// Returns f32 whatever the inputs' dtype.
    pub fn step(&self, latents: &Tensor, velocity: &Tensor, i: usize) -> Result<Tensor> {
        if i + 1 >= self.sigmas.len() {
            candle_core::bail!("scheduler: step {i} out of range (0..{})", self.num_steps());
        }
        if latents.dims() != velocity.dims() {
            candle_core::bail!(
                "scheduler: latents {:?} and velocity {:?} differ in shape",
                latents.dims(),
                velocity.dims()
            );
        }
        let dt = self.sigmas[i + 1] - self.sigmas[i];
        let velocity = (velocity.to_dtype(DType::F32)? * dt as f64)?;
        latents.to_dtype(DType::F32)? + velocity
    }
}

/// `numpy.linspace(start, stop, num)` (endpoint included): `start + i·step`, last = `stop`.
pub fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut v: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    v[num - 1] = stop;
    v
}
