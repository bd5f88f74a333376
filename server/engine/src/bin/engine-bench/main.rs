//! `engine-bench`: times the Qwen-Image-Layered models at full size on one device, phase by
//! phase, so the numbers sit next to `shared/bench/diffusers_anchor.py`'s (same shapes, same
//! analytic FLOP count, one JSON line per measurement).
//!
//! - text: the Qwen2.5-VL-7B language model on a 64-token (prompt) and a 40-token (negative)
//!   templated prompt; the model lives on the GPU only for this phase;
//! - dit: one denoising step with true CFG = one batch-2 forward (cond 30 text tokens, uncond 6,
//!   padded and key-masked) over (layers + 2) frames of (res/16)² tokens, optionally with the
//!   blocks streamed from host memory (`--offload on`);
//! - vae: RGBA encode of one image, decode of each layer (one at a time, as the anchor, and
//!   batched), through the plain path and the fused kernels.
//! - vae-ops: the decoder's convolution, norm, bias and upsampling alone at its widest shapes.
//!
//! - profile: the pieces of one transformer block at the step's shapes, each timed alone
//!   (synchronised, median of several runs), with the GEMM and copy ceilings of the card, to see
//!   where a step's time goes.
//!
//! Weights are random (`--random-weights`, no checkpoint needed; `--init anchor` draws the DiT's
//! as diffusers' speed anchor does, since at the power limit their distribution moves a step by
//! 1–2%) or read from a model folder (`--model DIR`, which also times loading). Built only
//! with the `bench` feature: `cargo build --release -p engine --features cuda,bench --bin engine-bench`.

mod args;
mod common;
mod dit;
mod profile;
mod text;
mod vae;

use std::time::Duration;

use candle_core::Device;
use clap::Parser;
use engine::gpu::memory::gib;
use engine::gpu::VramSampler;
use engine::weights::ModelDir;

use crate::args::{Args, Cli};
use crate::common::*;

fn main() {
    let args: Args = Cli::parse().into();
    if let Err(e) = run(&args) {
        eprintln!("engine-bench: {}", describe(&e));
        std::process::exit(1);
    }
}

fn run(args: &Args) -> engine::Result<()> {
    let device = match args.device.as_str() {
        "cpu" => Device::Cpu,
        "cuda" => engine::gpu::cuda_device(0)?,
        other => return Err(engine::Error::InvalidInput(format!("--device {other}: cuda or cpu"))),
    };
    engine::gpu::configure_matmul(&device, args.dtype);
    let source = match &args.model {
        Some(dir) => Source::Model(ModelDir::open(dir)?),
        None => Source::Random(args.init),
    };
    let cfgs = configs(args)?;
    let sampler = VramSampler::start(&device, Duration::from_millis(2));
    let gpu = gpu_name(&device);
    emit(serde_json::json!({
        "run": "ours_setup", "tag": args.tag, "gpu": gpu, "dtype": format!("{:?}", args.dtype),
        "device_total_gib": sampler.as_ref().map(|s| gib(s.total())),
        "baseline_used_gib": sampler.as_ref().map(|s| gib(s.baseline())),
        "weights": weights_name(args, true),
    }));
    let peak = |s: &Option<VramSampler>| s.as_ref().map(|s| gib(s.peak_above_baseline()));

    if args.phases.iter().any(|p| p == "text") {
        if let Some(s) = &sampler {
            s.reset_peak();
        }
        text::text_phase(args, &cfgs, &source, &device, &gpu, &sampler)?;
        emit_peak("text", peak(&sampler));
    }
    if args.phases.iter().any(|p| p == "dit") {
        if let Some(s) = &sampler {
            s.reset_peak();
        }
        dit::dit_phase(args, &cfgs, &source, &device, &gpu, &sampler)?;
    }
    if args.phases.iter().any(|p| p == "profile") {
        profile::profile_phase(args, &cfgs, &device)?;
    }
    if args.phases.iter().any(|p| p == "vae") {
        if let Some(s) = &sampler {
            s.reset_peak();
        }
        vae::vae_phase(args, &cfgs, &source, &device, &sampler)?;
    }
    if args.phases.iter().any(|p| p == "vae-ops") {
        vae::vae_ops_profile(args, &device)?;
    }
    Ok(())
}
