//! The VAE phase: RGBA encode of one image, decode of each layer.

use std::time::Instant;

use candle_core::{Device, Tensor};
use engine::gpu::memory::gib;
use engine::gpu::VramSampler;
use engine::vae::AutoencoderKLQwenImage;

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
    let vae = AutoencoderKLQwenImage::new(&cfgs.vae, source.var_builder("vae", args.dtype, device)?)?;
    sync(device)?;
    let build_s = t0.elapsed().as_secs_f64();
    let res = args.resolution;
    let lat = res / 8;
    let x = Tensor::rand(0f32, 1.0, (1, cfgs.vae.input_channels, res, res), device)?
        .affine(2.0, -1.0)?
        .to_dtype(args.dtype)?;
    let z = Tensor::randn(0f32, 1.0, (args.layers, cfgs.vae.z_dim, lat, lat), device)?.to_dtype(args.dtype)?;
    let (mut enc, mut dec) = (Vec::new(), Vec::new());
    for rep in 0..args.warmup + args.steps.min(2) {
        sync(device)?;
        let t = Instant::now();
        let mean = vae.encode_mean(&x)?;
        sync(device)?;
        let te = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let mut last = None;
        for k in 0..args.layers {
            last = Some(vae.decode(&z.narrow(0, k, 1)?)?);
        }
        sync(device)?;
        let td = t.elapsed().as_secs_f64();
        if rep >= args.warmup {
            enc.push(te);
            dec.push(td);
        }
        if rep == 0 {
            check_finite(args, "vae_posterior_mean", &mean)?;
            if let Some(px) = &last {
                check_finite(args, "vae_decoded", px)?;
            }
        }
    }
    emit(serde_json::json!({
        "run": format!("ours_vae_{res}"), "tag": args.tag,
        "encode_s": median(enc.clone()), "decode_layers_s": median(dec.clone()), "layers": args.layers,
        "all_encode_s": enc, "all_decode_s": dec, "build_s": build_s,
        "peak_gib": sampler.as_ref().map(|s| gib(s.peak_above_baseline())),
    }));
    Ok(())
}
