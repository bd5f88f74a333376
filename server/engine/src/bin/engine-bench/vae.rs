//! The VAE phase: RGBA encode of one image, decode of each layer.

use std::time::Instant;

use candle_core::{Device, Tensor};
use engine::gpu::memory::gib;
use engine::gpu::VramSampler;
use engine::vae::{AutoencoderKLQwenImage, VaeKernels};

use crate::args::Args;
use crate::common::*;

pub(crate) fn vae_phase(
    args: &Args,
    cfgs: &Configs,
    source: &Source,
    device: &Device,
    sampler: &Option<VramSampler>,
) -> engine::Result<()> {
    let t0 = Instant::now();
    let mut vae = AutoencoderKLQwenImage::new(&cfgs.vae, source.var_builder("vae", args.dtype, device)?)?;
    sync(device)?;
    let build_s = t0.elapsed().as_secs_f64();
    let res = args.resolution;
    let lat = res / 8;
    let x = Tensor::rand(0f32, 1.0, (1, cfgs.vae.input_channels, res, res), device)?
        .affine(2.0, -1.0)?
        .to_dtype(args.dtype)?;
    let z = Tensor::randn(0f32, 1.0, (args.layers, cfgs.vae.z_dim, lat, lat), device)?.to_dtype(args.dtype)?;
    // The plain path first (the yardstick), then the fused kernels (used where they apply).
    for (name, kernels) in [("plain", VaeKernels::Plain), ("fused", VaeKernels::Fused)] {
        vae.set_kernels(kernels);
        timed_runs(args, &vae, &x, &z, device, sampler, build_s, name)?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn timed_runs(
    args: &Args,
    vae: &AutoencoderKLQwenImage,
    x: &Tensor,
    z: &Tensor,
    device: &Device,
    sampler: &Option<VramSampler>,
    build_s: f64,
    kernels: &str,
) -> engine::Result<()> {
    let res = args.resolution;
    let (mut enc, mut dec, mut dec_batch) = (Vec::new(), Vec::new(), Vec::new());
    for rep in 0..args.warmup + args.steps.clamp(2, 5) {
        sync(device)?;
        let t = Instant::now();
        let mean = vae.encode_mean(x)?;
        sync(device)?;
        let te = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let mut last = None;
        for k in 0..args.layers {
            last = Some(vae.decode(&z.narrow(0, k, 1)?)?);
        }
        sync(device)?;
        let td = t.elapsed().as_secs_f64();
        // All layers in one batch (the pipeline's `vae_decode_chunk` at its largest).
        let t = Instant::now();
        vae.decode(z)?;
        sync(device)?;
        let tb = t.elapsed().as_secs_f64();
        if rep >= args.warmup {
            enc.push(te);
            dec.push(td);
            dec_batch.push(tb);
        }
        if rep == 0 {
            check_finite(args, "vae_posterior_mean", &mean)?;
            if let Some(px) = &last {
                check_finite(args, "vae_decoded", px)?;
            }
        }
    }
    emit(serde_json::json!({
        "run": format!("ours_vae_{res}"), "tag": args.tag, "kernels": kernels,
        "encode_s": median(enc.clone()), "decode_layers_s": median(dec.clone()),
        "decode_batch_s": median(dec_batch.clone()), "layers": args.layers,
        "all_encode_s": enc, "all_decode_s": dec, "all_decode_batch_s": dec_batch, "build_s": build_s,
        "peak_gib": sampler.as_ref().map(|s| gib(s.peak_above_baseline())),
    }));
    Ok(())
}

/// The decoder's pieces alone at its three widest shapes (one image): where a decode's time goes.
pub(crate) fn vae_ops_profile(args: &Args, device: &Device) -> engine::Result<()> {
    use engine::gpu::vae_kernels;
    let res = args.resolution;
    for (side, c) in [(res, 96usize), (res / 2, 192), (res / 4, 384)] {
        let x = Tensor::randn(0f32, 1.0, (1, c, side, side), device)?.to_dtype(args.dtype)?;
        let w = (Tensor::randn(0f32, 1.0, (c, c, 3, 3), device)? * 0.02)?.to_dtype(args.dtype)?;
        let bias = Tensor::randn(0f32, 1.0, c, device)?.to_dtype(args.dtype)?;
        let gamma = Tensor::ones(c, args.dtype, device)?;
        let b4 = bias.reshape((1, c, 1, 1))?;
        let g4 = gamma.reshape((1, c, 1, 1))?;
        let scale = (c as f64).sqrt();
        let time = |f: &dyn Fn() -> candle_core::Result<Tensor>| -> engine::Result<f64> {
            let mut ts = Vec::new();
            for _ in 0..6 {
                sync(device)?;
                let t = Instant::now();
                f()?;
                sync(device)?;
                ts.push(t.elapsed().as_secs_f64());
            }
            Ok(median(ts[1..].to_vec()))
        };
        let conv = time(&|| x.conv2d(&w, 1, 1, 1, 1))?;
        let bias_add_plain = time(&|| x.broadcast_add(&b4)? + &x)?;
        let norm_plain = time(&|| {
            let xf = x.to_dtype(candle_core::DType::F32)?;
            let n = xf.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12f32, f32::INFINITY)?;
            let y = (xf.broadcast_div(&n)?.to_dtype(x.dtype())? * scale)?.broadcast_mul(&g4)?;
            candle_nn::ops::silu(&y)
        })?;
        let (norm_fused, bias_fused, conv_columns) = if vae_kernels::applies_to(&x) {
            (
                Some(time(&|| {
                    vae_kernels::channel_norm(&x, Some(&bias), &gamma, scale, true)
                })?),
                Some(time(&|| vae_kernels::bias_residual(&x, &bias, Some(&x)))?),
                Some(time(&|| vae_kernels::conv2d(&x, &w, 1, 1))?),
            )
        } else {
            (None, None, None)
        };
        let flop = 2.0 * (c * c * 9 * side * side) as f64;
        let upsample = time(&|| x.upsample_nearest2d(2 * side, 2 * side))?;
        emit(serde_json::json!({
            "run": format!("ours_vae_ops_{side}x{c}"), "tag": args.tag,
            "conv3x3_s": conv, "conv3x3_columns_s": conv_columns, "bias_residual_plain_s": bias_add_plain, "bias_residual_fused_s": bias_fused,
            "norm_silu_plain_s": norm_plain, "norm_silu_fused_s": norm_fused, "upsample_s": upsample,
            "conv_tflops": flop / conv / 1e12, "conv_columns_tflops": conv_columns.map(|t| flop / t / 1e12),
        }));
    }
    Ok(())
}
