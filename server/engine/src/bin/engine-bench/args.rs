//! The command line, on clap: `Cli` as typed, then the [`Args`] the phases read.

use candle_core::DType;
use clap::{Parser, ValueEnum};
use engine::gpu::fused::FlashKernel;
use engine::gpu::InitScheme;

/// `on` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

impl From<OnOff> for bool {
    fn from(v: OnOff) -> bool {
        v == OnOff::On
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DtypeArg {
    Bf16,
    F16,
    F32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AttentionArg {
    /// cuDNN's SDPA (where compiled in).
    Cudnn,
    /// The engine's own flash kernel.
    Own,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum InitArg {
    FanIn,
    Anchor,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FlashArg {
    Sm90,
    W4,
    W8,
    W4m2,
}

#[derive(Parser, Debug)]
#[command(
    name = "engine-bench",
    about = "Times the Qwen-Image-Layered models at full size, phase by phase (one JSON line per measurement)"
)]
#[command(group(clap::ArgGroup::new("weights").required(true).args(["random_weights", "model"])))]
pub struct Cli {
    /// Random weights (no checkpoint needed).
    #[arg(long)]
    random_weights: bool,
    /// A model folder (also times loading).
    #[arg(long, value_name = "DIR")]
    model: Option<String>,
    /// Where the configs come from with random weights (default: the released shapes).
    #[arg(long, value_name = "DIR")]
    config_dir: Option<String>,
    /// cuda or cpu.
    #[arg(long, default_value = "cuda")]
    device: String,
    #[arg(long, value_enum, default_value = "bf16")]
    dtype: DtypeArg,
    /// A multiple of 16.
    #[arg(long, default_value_t = 640, value_parser = multiple_of_16)]
    resolution: usize,
    #[arg(long, default_value_t = 4)]
    layers: usize,
    /// Timed steps (at least 1).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    steps: u64,
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Any of text, dit, vae, vae-ops, profile.
    #[arg(long, value_delimiter = ',', default_value = "text,dit,vae")]
    phases: Vec<String>,
    /// Stream the DiT's blocks from host memory.
    #[arg(long, value_enum, default_value = "off")]
    offload: OnOff,
    /// With --offload on: keep as many blocks resident as fit this VRAM budget.
    #[arg(long, value_name = "G")]
    vram_budget_gb: Option<f64>,
    /// With --offload on: blocks kept on the GPU.
    #[arg(long, value_name = "K")]
    resident_blocks: Option<usize>,
    /// Ordinary instead of page-locked host memory for offloaded blocks.
    #[arg(long)]
    no_pin: bool,
    /// Fail the run on NaN or Inf outputs.
    #[arg(long)]
    check_finite: bool,
    /// A name carried into every JSON line.
    #[arg(long, default_value = "")]
    tag: String,
    /// The DiT's fused CUDA kernels (bf16), or its plain path.
    #[arg(long, value_enum, default_value = "on")]
    fused: OnOff,
    #[arg(long, value_enum, default_value = "own")]
    attention: AttentionArg,
    #[arg(long, value_enum, default_value = "off")]
    cudnn_autotune: OnOff,
    #[arg(long, value_enum, default_value = "sm90")]
    flash_kernel: FlashArg,
    /// The MLP's bias + GELU in the cuBLASLt GEMM epilogue (else a separate kernel).
    #[arg(long, value_enum, default_value = "on")]
    gemm_epilogue: OnOff,
    /// How random DiT weights are drawn (anchor: as diffusers' speed anchor draws them).
    #[arg(long, value_enum, default_value = "fan-in")]
    init: InitArg,
}

fn multiple_of_16(s: &str) -> Result<usize, String> {
    let v: usize = s.parse().map_err(|_| format!("not a number: {s}"))?;
    if !v.is_multiple_of(16) {
        return Err(format!("{v} must be a multiple of 16"));
    }
    Ok(v)
}

pub struct Args {
    pub model: Option<String>,
    pub config_dir: Option<String>,
    pub device: String,
    pub dtype: DType,
    pub resolution: usize,
    pub layers: usize,
    pub steps: usize,
    pub warmup: usize,
    pub phases: Vec<String>,
    pub offload: bool,
    pub vram_budget_gb: Option<f64>,
    pub resident_blocks: Option<usize>,
    pub pin: bool,
    pub check_finite: bool,
    pub tag: String,
    /// The DiT's fused CUDA kernels (bf16), or its plain path.
    pub fused: bool,
    pub flash_kernel: engine::gpu::fused::FlashKernel,
    /// cuDNN's SDPA for the joint attention where compiled in (else our kernel).
    pub cudnn_attention: bool,
    pub cudnn_autotune: bool,
    /// The MLP's bias + GELU in the cuBLASLt GEMM epilogue (else a separate kernel).
    pub gemm_epilogue: bool,
    /// How random DiT weights are drawn (`anchor`: as diffusers' speed anchor draws them).
    pub init: InitScheme,
}

impl Args {
    /// The DiT's kernel choices.
    pub fn kernels(&self) -> engine::gpu::fused::Kernels {
        engine::gpu::fused::Kernels {
            fused: self.fused,
            gemm_epilogue: self.gemm_epilogue,
            flash: self.flash_kernel,
            cudnn_attention: self.cudnn_attention,
            cudnn_autotune: self.cudnn_autotune,
        }
    }
}

impl From<Cli> for Args {
    fn from(c: Cli) -> Self {
        Args {
            model: c.model,
            config_dir: c.config_dir,
            device: c.device,
            dtype: match c.dtype {
                DtypeArg::Bf16 => DType::BF16,
                DtypeArg::F16 => DType::F16,
                DtypeArg::F32 => DType::F32,
            },
            resolution: c.resolution,
            layers: c.layers,
            steps: c.steps as usize,
            warmup: c.warmup,
            phases: c.phases,
            offload: c.offload.into(),
            vram_budget_gb: c.vram_budget_gb,
            resident_blocks: c.resident_blocks,
            pin: !c.no_pin,
            check_finite: c.check_finite,
            tag: c.tag,
            fused: c.fused.into(),
            flash_kernel: match c.flash_kernel {
                FlashArg::Sm90 => FlashKernel::Sm90,
                FlashArg::W4 => FlashKernel::W4,
                FlashArg::W8 => FlashKernel::W8,
                FlashArg::W4m2 => FlashKernel::W4M2,
            },
            cudnn_attention: c.attention == AttentionArg::Cudnn,
            cudnn_autotune: c.cudnn_autotune.into(),
            gemm_epilogue: c.gemm_epilogue.into(),
            init: match c.init {
                InitArg::FanIn => InitScheme::FanIn,
                InitArg::Anchor => InitScheme::Anchor,
            },
        }
    }
}
