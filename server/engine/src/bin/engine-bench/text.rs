//! The text phase: the Qwen2.5-VL-7B language model on a prompt and a negative prompt.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use engine::gpu::memory::gib;
use engine::gpu::{OffloadOptions, VramSampler};
use engine::text_encoder::{text_position_ids, Qwen25VLTextModel};

use crate::args::Args;
use crate::common::*;

/// Random token ids `[1, n]` below `vocab` (the speed of the model does not depend on them).
pub(crate) fn random_ids(n: usize, vocab: usize, device: &Device) -> engine::Result<Tensor> {
    let ids = Tensor::rand(0f32, vocab as f32 - 1.0, n, &Device::Cpu)?.to_dtype(DType::U32)?;
    Ok(ids.unsqueeze(0)?.to_device(device)?)
}

pub(crate) fn text_phase(
    args: &Args,
    cfgs: &Configs,
    source: &Source,
    device: &Device,
    gpu: &str,
    sampler: &Option<VramSampler>,
) -> engine::Result<()> {
    let t0 = Instant::now();
    let vb = source.var_builder("text_encoder", args.dtype, device)?;
    let model = if args.offload {
        let host = match source {
            Source::Random(_) => vb.clone(),
            Source::Model(m) => m.var_builder("text_encoder", args.dtype, &Device::Cpu)?,
        };
        let options = OffloadOptions {
            resident_blocks: 0,
            pin_memory: args.pin,
        };
        Qwen25VLTextModel::new_offloaded(&cfgs.text, vb, &host, options)?
    } else {
        Qwen25VLTextModel::new(&cfgs.text, vb)?
    };
    sync(device)?;
    let build_s = t0.elapsed().as_secs_f64();
    // The Layered template adds 34 tokens before the prompt (dropped from the embeddings): a
    // 30-token prompt and a 6-token negative prompt, as the DiT phase's text.
    let vocab = cfgs.text.text_config.vocab_size;
    let prompts = [random_ids(64, vocab, device)?, random_ids(40, vocab, device)?];
    let mut times = Vec::new();
    for rep in 0..args.warmup + args.steps {
        sync(device)?;
        let t = Instant::now();
        let mut outs = Vec::new();
        for ids in &prompts {
            let pos = text_position_ids(1, ids.dim(1)?, device)?;
            outs.push(model.forward(ids, &pos, None)?);
        }
        sync(device)?;
        if rep >= args.warmup {
            times.push(t.elapsed().as_secs_f64());
        }
        if rep == 0 {
            check_finite(args, "text_encoder_hidden_states", &outs[0])?;
        }
    }
    emit(serde_json::json!({
        "run": format!("ours_text_encode{}", if args.offload { "_offload" } else { "" }), "tag": args.tag, "tokens": [64, 40], "median_s": median(times.clone()), "all_s": times,
        "build_s": build_s, "weights_source": weights_name(args, false),
        "peak_gib": sampler.as_ref().map(|s| gib(s.peak_above_baseline())), "gpu": gpu,
    }));
    drop(model);
    sync(device)?;
    Ok(())
}
