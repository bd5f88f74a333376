//! The server's command-line flags (the seed's table, plus host/port, limits and device).
//! Flags override the selected `config.toml` profile.

use std::net::IpAddr;
use std::path::PathBuf;

use app::api::flags;
use clap::{Parser, ValueEnum};

use crate::config::{self, QwenImageSettings, ZImageSettings};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModelType {
    /// Qwen-Image-Layered (decompose) + Qwen-Image-Edit-2509 (layer edits).
    Qwenimage,
    /// Z-Image-Turbo (text → image, then "Decompose into layers").
    Zimage,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeviceChoice {
    /// CUDA when built with it and a GPU is present, else CPU.
    Auto,
    Cpu,
    Cuda,
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "server",
    version,
    about = "Qwen Layers: the web app and REST API for layered image decomposition"
)]
pub struct ServerArgs {
    /// Settings file (default: ./config.toml when it exists, else built-in defaults).
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Profile of the settings file: [<PROFILE>.qwen_image].
    #[arg(long, default_value = "default")]
    pub profile: String,
    /// The mode the page opens in; one server serves both, each model loading on first use.
    #[arg(long, value_enum, default_value = "qwenimage")]
    pub model_type: ModelType,
    /// Z-Image-Turbo: local diffusers folder or Hugging Face repo id.
    #[arg(long, value_name = "PATH_OR_REPO")]
    pub z_image_model_path: Option<String>,
    /// Stream Z-Image's transformer layers from host memory (low VRAM).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub z_image_cpu_offload: Option<bool>,
    /// Default Z-Image denoising steps (Turbo: 8–9).
    #[arg(long, value_parser = flags::steps)]
    pub z_image_steps: Option<u32>,
    /// Default Z-Image CFG scale (Turbo: 0 = off).
    #[arg(long, value_parser = flags::cfg_scale)]
    pub z_image_cfg_scale: Option<f32>,
    /// Default Z-Image width and height (multiples of 16).
    #[arg(long, value_parser = app::api_z_image::flags::size)]
    pub z_image_width: Option<u32>,
    #[arg(long, value_parser = app::api_z_image::flags::size)]
    pub z_image_height: Option<u32>,
    /// A fixed seed for Z-Image requests that give none (default: random).
    #[arg(long)]
    pub z_image_seed: Option<u64>,
    /// Largest Z-Image width × height this server generates (default 2048²: the VAE's attention
    /// then holds 8.6 GB of scores in bf16; lower it for a CPU or a small card).
    #[arg(long, value_parser = clap::value_parser!(u64).range(256..))]
    pub z_image_max_pixels: Option<u64>,
    /// Qwen-Image-Layered: local diffusers folder or Hugging Face repo id.
    #[arg(long, value_name = "PATH_OR_REPO")]
    pub qwen_image_model_path: Option<String>,
    /// Qwen-Image-Edit-2509: local folder or repo id (empty = Qwen/Qwen-Image-Edit-2509).
    #[arg(long, value_name = "PATH_OR_REPO")]
    pub qwen_image_edit_model_path: Option<String>,
    /// Stream transformer weights from host memory (low VRAM). `--qwen-image-cpu-offload=false` turns it off.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub qwen_image_cpu_offload: Option<bool>,
    /// Default number of layers (2–10).
    #[arg(long, value_parser = flags::layer_num)]
    pub qwen_image_layers: Option<u32>,
    /// Default number of denoising steps.
    #[arg(long, value_parser = flags::steps)]
    pub qwen_image_steps: Option<u32>,
    /// Default true-CFG scale.
    #[arg(long, value_parser = flags::cfg_scale)]
    pub qwen_image_cfg_scale: Option<f32>,
    /// Default resolution bucket: 640 or 1024.
    #[arg(long, value_parser = flags::resolution)]
    pub qwen_image_resolution: Option<u32>,
    /// A LoRA adapter merged into the decompose transformer, `PATH[:SCALE]` (repeat the flag for
    /// several); replaces the profile's `lora` list.
    #[arg(long = "lora", value_name = "PATH[:SCALE]", value_parser = engine::lora::LoraSpec::parse)]
    pub lora: Vec<engine::lora::LoraSpec>,
    /// A LoRA adapter merged into the edit transformer, `PATH[:SCALE]` (repeatable); replaces the
    /// profile's `edit_lora` list.
    #[arg(long = "edit-lora", value_name = "PATH[:SCALE]", value_parser = engine::lora::LoraSpec::parse)]
    pub edit_lora: Vec<engine::lora::LoraSpec>,
    /// Address to bind. Anything but loopback exposes the API to the network: set --api-token.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port to bind (0 = any free port; the chosen address is printed).
    #[arg(long, default_value_t = 7860)]
    pub port: u16,
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceChoice,
    /// The devices engine workers run on, e.g. `0,1,2,3` (GPU numbers, cuda:N, or cpu, which may
    /// repeat); replaces the profile's `devices`. Default: every visible GPU.
    #[arg(long, value_delimiter = ',', value_name = "DEVICE")]
    pub devices: Vec<crate::workers::DeviceSpec>,
    /// With several devices: `throughput` (a worker per device) or `latency` (each job on two
    /// devices, CFG-parallel); replaces the profile's `parallel`.
    #[arg(long, value_enum)]
    pub parallel: Option<crate::workers::Parallel>,
    /// Jobs that may wait behind the running one before requests get 429.
    #[arg(long, default_value_t = 4)]
    pub queue_depth: u32,
    /// Largest request body, in MiB.
    #[arg(long, default_value_t = 64)]
    pub max_body_mb: u64,
    /// Largest input image, in pixels.
    #[arg(long, default_value_t = 36_000_000)]
    pub max_image_pixels: u64,
    /// Require the token on every /api/ route: `Authorization: Bearer <token>`, or the page's
    /// sign-in form (kept in an HttpOnly cookie).
    #[arg(long, env = "QWEN_LAYERS_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Host names (besides IP addresses and localhost) the API answers to; others get 403, so a
    /// rebinding DNS name cannot reach it. Repeat or separate by commas.
    #[arg(long, value_delimiter = ',', value_name = "NAME")]
    pub allowed_host: Vec<String>,
    /// Seconds a client has to send its request headers, and separately its whole body.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub request_timeout_secs: u64,
    /// Request bodies read at once (each up to --max-body-mb); more get 503.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_uploads: u32,
    /// Where finished results are kept (default: $XDG_DATA_HOME/qwen-layers, else
    /// ~/.local/share/qwen-layers).
    #[arg(long, env = "QWEN_LAYERS_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Hours a finished result is kept.
    #[arg(long, default_value_t = 168, value_parser = clap::value_parser!(u64).range(1..=87_600))]
    pub keep_results_hours: u64,
    /// Size the kept results may fill, in MiB; beyond it new jobs are refused (507), never
    /// results deleted early.
    #[arg(long, default_value_t = 10_240)]
    pub results_budget_mb: u64,
}

impl ServerArgs {
    pub fn request_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.request_timeout_secs)
    }

    /// `--data-dir`, else the per-user data folder.
    pub fn data_dir(&self) -> PathBuf {
        if let Some(dir) = &self.data_dir {
            return dir.clone();
        }
        let base = std::env::var_os("XDG_DATA_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
            .unwrap_or_else(|| PathBuf::from("."));
        base.join("qwen-layers")
    }

    /// The profile's Z-Image settings with the `--z-image-*` flags applied on top.
    pub fn z_image_settings(&self) -> Result<ZImageSettings, config::ConfigError> {
        let mut s = match self.config_file() {
            Some(path) => config::load_z_image_profile(&path, &self.profile)?,
            None => ZImageSettings::default(),
        };
        if let Some(v) = &self.z_image_model_path {
            s.model_path = v.clone();
        }
        if let Some(v) = self.z_image_cpu_offload {
            s.cpu_offload = v;
        }
        let d = &mut s.defaults;
        if let Some(v) = self.z_image_steps {
            d.steps = v;
        }
        if let Some(v) = self.z_image_cfg_scale {
            d.cfg_scale = v;
        }
        if let Some(v) = self.z_image_width {
            d.width = v;
        }
        if let Some(v) = self.z_image_height {
            d.height = v;
        }
        if self.z_image_seed.is_some() {
            d.seed = self.z_image_seed;
        }
        if let Some(v) = self.z_image_max_pixels {
            s.max_pixels = v;
        }
        Ok(s)
    }

    /// The settings file in use: `--config`, else `./config.toml` when it exists.
    fn config_file(&self) -> Option<PathBuf> {
        match &self.config {
            Some(path) => Some(path.clone()),
            None if std::path::Path::new("config.toml").is_file() => Some("config.toml".into()),
            None => None,
        }
    }

    /// The profile's settings with the flags applied on top.
    pub fn settings(&self) -> Result<QwenImageSettings, config::ConfigError> {
        let mut s = match &self.config {
            Some(path) => config::load_profile(path, &self.profile)?,
            None if std::path::Path::new("config.toml").is_file() => {
                config::load_profile(std::path::Path::new("config.toml"), &self.profile)?
            }
            None if self.profile != "default" => {
                return Err(config::ConfigError::UnknownProfile {
                    path: "config.toml (not found)".into(),
                    profile: self.profile.clone(),
                    available: "default".into(),
                })
            }
            None => QwenImageSettings::default(),
        };
        if let Some(v) = &self.qwen_image_model_path {
            s.model_path = v.clone();
        }
        if let Some(v) = &self.qwen_image_edit_model_path {
            s.edit_model_path = v.clone();
        }
        if let Some(v) = self.qwen_image_cpu_offload {
            s.cpu_offload = v;
        }
        if let Some(v) = self.qwen_image_layers {
            s.layer_num = v;
        }
        if let Some(v) = self.qwen_image_steps {
            s.num_inference_steps = v;
        }
        if let Some(v) = self.qwen_image_cfg_scale {
            s.cfg_scale = v;
        }
        if let Some(v) = self.qwen_image_resolution {
            s.resolution = v;
        }
        if !self.lora.is_empty() {
            s.lora = self.lora.clone();
        }
        if !self.devices.is_empty() {
            s.devices = Some(self.devices.clone());
        }
        if let Some(v) = self.parallel {
            s.parallel = v;
        }
        if !self.edit_lora.is_empty() {
            s.edit_lora = self.edit_lora.clone();
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<ServerArgs, clap::Error> {
        ServerArgs::try_parse_from(std::iter::once("server").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_bind_loopback_7860() {
        let a = parse(&[]).unwrap();
        assert_eq!(a.host.to_string(), "127.0.0.1");
        assert_eq!(a.port, 7860);
        assert_eq!(a.model_type, ModelType::Qwenimage);
    }

    #[test]
    fn flags_override_the_profile() {
        let dir = std::env::temp_dir().join(format!("server-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("c.toml");
        std::fs::write(
            &cfg,
            "[default.qwen_image]\nlayer_num = 3\nresolution = 1024\n[big.qwen_image]\nlayer_num = 8\n",
        )
        .unwrap();
        let a = parse(&[
            "--config",
            cfg.to_str().unwrap(),
            "--profile",
            "big",
            "--qwen-image-steps",
            "20",
            "--qwen-image-cpu-offload",
            "--qwen-image-model-path",
            "/models/layered",
        ])
        .unwrap();
        let s = a.settings().unwrap();
        assert_eq!((s.layer_num, s.resolution, s.num_inference_steps), (8, 1024, 20));
        assert!(s.cpu_offload);
        assert_eq!(s.model_path, "/models/layered");
        let a = parse(&[
            "--config",
            cfg.to_str().unwrap(),
            "--qwen-image-cpu-offload=false",
            "--qwen-image-layers",
            "5",
        ])
        .unwrap();
        let s = a.settings().unwrap();
        assert!(!s.cpu_offload);
        assert_eq!(s.layer_num, 5);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn lora_flags_replace_the_profiles_lists() {
        let a = parse(&[
            "--lora",
            "/m/a.safetensors:0.5",
            "--lora",
            "/m/b.safetensors",
            "--edit-lora",
            "/m/l.safetensors",
        ])
        .unwrap();
        let s = a.settings().unwrap();
        assert_eq!(
            s.lora,
            [
                engine::lora::LoraSpec::new("/m/a.safetensors", 0.5),
                engine::lora::LoraSpec::new("/m/b.safetensors", 1.0)
            ]
        );
        assert_eq!(s.edit_lora, [engine::lora::LoraSpec::new("/m/l.safetensors", 1.0)]);
        let err = parse(&["--edit-lora", "/m/l.safetensors:99"]).unwrap_err().to_string();
        assert!(err.contains("--edit-lora") && err.contains("between"), "{err}");
    }

    #[test]
    fn bad_flag_values_are_rejected_by_name() {
        for (args, needle) in [
            (vec!["--qwen-image-layers", "11"], "--qwen-image-layers"),
            (vec!["--qwen-image-resolution", "800"], "640 or 1024"),
            (vec!["--qwen-image-cfg-scale", "inf"], "cfg_scale"),
            (vec!["--qwen-image-steps", "0"], "--qwen-image-steps"),
            (vec!["--model-type", "sdxl"], "--model-type"),
            (vec!["--port", "70000"], "--port"),
        ] {
            let err = parse(&args).unwrap_err().to_string();
            assert!(err.contains(needle), "{args:?}: {err}");
        }
    }

    #[test]
    fn z_image_flags_override_the_profile() {
        let dir = std::env::temp_dir().join(format!("server-cli-z-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("c.toml");
        std::fs::write(
            &cfg,
            "[default.z_image]\nmodel_path = \"/m/z\"\nsteps = 8\nwidth = 768\n",
        )
        .unwrap();
        let a = parse(&[
            "--config",
            cfg.to_str().unwrap(),
            "--model-type",
            "zimage",
            "--z-image-steps",
            "4",
            "--z-image-height",
            "512",
            "--z-image-seed",
            "3",
            "--z-image-cpu-offload",
        ])
        .unwrap();
        assert_eq!(a.model_type, ModelType::Zimage);
        let s = a.z_image_settings().unwrap();
        assert_eq!(s.model_path, "/m/z");
        assert_eq!((s.defaults.steps, s.defaults.width, s.defaults.height), (4, 768, 512));
        assert_eq!(s.defaults.seed, Some(3));
        assert!(s.cpu_offload);
        for (args, needle) in [
            (vec!["--z-image-width", "1000"], "multiple of 16"),
            (vec!["--z-image-steps", "0"], "--z-image-steps"),
        ] {
            let err = parse(&args).unwrap_err().to_string();
            assert!(err.contains(needle), "{args:?}: {err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_config_file_is_an_error() {
        let a = parse(&["--config", "/no/such/config.toml"]).unwrap();
        assert!(a.settings().unwrap_err().to_string().contains("/no/such/config.toml"));
    }
}
