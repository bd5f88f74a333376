//! The DiT phase: one denoising step with true CFG, resident or streamed from host memory.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use engine::gpu::memory::gib;
use engine::gpu::{flops, OffloadOptions, VramSampler};
use engine::transformer::{cfg, QwenImageTransformer};

use crate::args::Args;
use crate::common::*;

pub(crate) fn dit_phase(
    args: &Args,
    cfgs: &Configs,
    source: &Source,
    device: &Device,
    gpu: &str,
    sampler: &Option<VramSampler>,
) -> engine::Result<()> {
    let tcfg = &cfgs.transformer;
    let t0 = Instant::now();
    let vb = source.var_builder("transformer", args.dtype, device)?;
    let mut model = if args.offload {
        let block_bytes = block_bytes(tcfg, args.dtype);
        let resident = match (args.resident_blocks, args.vram_budget_gb) {
            (Some(k), _) => k,
            (None, Some(budget)) => OffloadOptions::resident_for_budget(
                (budget * (1u64 << 30) as f64) as u64,
                activation_estimate(args, tcfg),
                block_bytes,
                tcfg.num_layers,
            ),
            (None, None) => 0,
        };
        let options = OffloadOptions {
            resident_blocks: resident,
            pin_memory: args.pin,
        };
        // Random weights are generated on the GPU and copied to host buffers block by block; a
        // checkpoint's blocks are read from its memory-mapped files on the CPU.
        let host = match source {
            Source::Random(_) => vb.clone(),
            Source::Model(m) => m.var_builder("transformer", args.dtype, &Device::Cpu)?,
        };
        QwenImageTransformer::new_offloaded(tcfg, vb, &host, options)?
    } else {
        QwenImageTransformer::new(tcfg, vb)?
    };
    model.set_kernels(args.kernels());
    sync(device)?;
    let build_s = t0.elapsed().as_secs_f64();
    let after_build = sampler.as_ref().map(|s| gib(s.peak_above_baseline()));

    // Inputs as the pipeline builds them for a batched-CFG step.
    let (res, layers) = (args.resolution, args.layers);
    let grid = res / 16;
    let frames = layers + 2;
    let img_tokens = frames * grid * grid;
    let (txt_cond, txt_uncond) = (30usize, 6usize);
    let jd = tcfg.joint_attention_dim;
    let dtype = args.dtype;
    let img = Tensor::randn(0f32, 1.0, (1, img_tokens, tcfg.in_channels), device)?.to_dtype(dtype)?;
    let img = Tensor::cat(&[&img, &img], 0)?;
    let cond = Tensor::randn(0f32, 1.0, (1, txt_cond, jd), device)?;
    let uncond = Tensor::randn(0f32, 1.0, (1, txt_uncond, jd), device)?;
    let (txt, mask) = cfg::pad_and_stack(&cond, None, &uncond, None)?;
    let txt = txt.to_dtype(dtype)?;
    let sigma = Tensor::full(0.5f32, 2, device)?;
    let t_cond = Tensor::zeros(2, DType::U32, device)?;
    let additional = tcfg.use_additional_t_cond.then_some(&t_cond);
    let img_shapes = vec![(1, grid, grid); frames];

    if let Some(s) = sampler {
        s.reset_peak();
    }
    let mut times = Vec::new();
    // When the host had queued the whole step: near the step time means the GPU waited on the
    // host (launch overhead, a hidden sync); far below it, the GPU is the bottleneck.
    let mut queued = Vec::new();
    let uploaded_before = model.offload_stats().map(|s| s.uploaded_bytes).unwrap_or(0);
    for rep in 0..args.warmup + args.steps {
        sync(device)?;
        let t = Instant::now();
        let out = model.forward(&img, &txt, Some(&mask), &sigma, &img_shapes, additional)?;
        // The step's CFG combine, as the pipeline does it (f32, normalised).
        let out = out.narrow(1, 0, (layers + 1) * grid * grid)?;
        let (c, u) = cfg::split_cond_uncond(&out)?;
        let v = cfg::combine(&c, &u, 4.0, true)?;
        let queued_s = t.elapsed().as_secs_f64();
        sync(device)?;
        let dt = t.elapsed().as_secs_f64();
        if rep >= args.warmup {
            times.push(dt);
            queued.push(queued_s);
        }
        if rep == 0 {
            check_finite(args, &format!("dit_velocity_{res}"), &v)?;
        }
    }
    let stats = model.offload_stats();
    let passes = (args.warmup + args.steps) as f64;
    let step_flops = flops::dit_cfg_step(res, layers);
    let med = median(times.clone());
    emit(serde_json::json!({
        "run": format!("ours_dit_step_{res}_L{layers}_cfg{}{}", if args.offload { "_offload" } else { "" }, variant_suffix(args)),
        "tag": args.tag,
        "median_s": med, "all_s": times, "queued_s": median(queued),
        "peak_gib": sampler.as_ref().map(|s| gib(s.peak_above_baseline())),
        "weights_resident_gib": after_build,
        "tflops_per_step": step_flops / 1e12, "achieved_tflops": step_flops / med / 1e12,
        "build_s": build_s, "weights_source": weights_name(args, true),
        "offload": stats.as_ref().map(|s| serde_json::json!({
            "resident_blocks": s.resident_blocks, "blocks": s.blocks, "pinned": s.pinned,
            "block_gib": gib(s.block_bytes), "host_gib": gib(s.host_bytes),
            "uploaded_gib_per_step": gib(s.uploaded_bytes - uploaded_before) / passes,
        })),
        "img_tokens": img_tokens, "batch": 2, "gpu": gpu, "fused": args.fused, "flash_kernel": args.flash_kernel.name(),
        "cudnn_autotune": args.cudnn_autotune, "gemm_epilogue": args.gemm_epilogue,
        "attention": if !args.fused { "plain" } else if args.kernels().cudnn_attention_active() { "cudnn" } else { "own" },
    }));
    Ok(())
}

/// Bytes of one transformer block in `dtype` (36·D² weights plus biases and norms).
pub(crate) fn block_bytes(cfg: &engine::transformer::Config, dtype: DType) -> u64 {
    let d = cfg.inner_dim() as u64;
    (36 * d * d + 40 * d) * dtype.size_in_bytes() as u64
}

/// A rough upper bound of the DiT's activations and non-block weights at `args`' shape, for
/// turning a VRAM budget into resident blocks: 24 activations of [2, S, D] plus the attention
/// chunk (2 × 256 MiB f32) and 1 GiB of other weights and workspace.
pub(crate) fn activation_estimate(args: &Args, cfg: &engine::transformer::Config) -> u64 {
    let grid = (args.resolution / 16) as u64;
    let s = (args.layers as u64 + 2) * grid * grid + 30;
    24 * 2 * s * cfg.inner_dim() as u64 * args.dtype.size_in_bytes() as u64 + (1 << 29) + (1 << 30)
}
