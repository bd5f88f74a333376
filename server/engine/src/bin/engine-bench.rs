//! `engine-bench`: times the Qwen-Image-Layered models at full size on one device, phase by
//! phase, so the numbers sit next to `shared/bench/diffusers_anchor.py`'s (same shapes, same
//! analytic FLOP count, one JSON line per measurement).
//!
//! - text: the Qwen2.5-VL-7B language model on a 64-token (prompt) and a 40-token (negative)
//!   templated prompt; the model lives on the GPU only for this phase;
//! - dit: one denoising step with true CFG = one batch-2 forward (cond 30 text tokens, uncond 6,
//!   padded and key-masked) over (layers + 2) frames of (res/16)² tokens, optionally with the
//!   blocks streamed from host memory (`--offload on`);
//! - vae: RGBA encode of one image, decode of each layer (one at a time, as the anchor).
//!
//! - profile: the pieces of one transformer block at the step's shapes, each timed alone
//!   (synchronised, median of several runs), with the GEMM and copy ceilings of the card, to see
//!   where a step's time goes.
//!
//! Weights are random (`--random-weights`, no checkpoint needed; `--init anchor` draws the DiT's
//! as diffusers' speed anchor does, since at the power limit their distribution moves a step by
//! 1–2%) or read from a model folder (`--model DIR`, which also times loading). Built only
//! with the `bench` feature: `cargo build --release -p engine --features cuda,bench --bin engine-bench`.

use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use engine::gpu::memory::gib;
use engine::gpu::{flops, InitScheme, OffloadOptions, RandomWeights, VramSampler};
use engine::text_encoder::{text_position_ids, Qwen25VLTextModel};
use engine::transformer::{cfg, QwenImageTransformer};
use engine::vae::AutoencoderKLQwenImage;
use engine::weights::ModelDir;

const USAGE: &str = "engine-bench [--random-weights | --model DIR] [--config-dir DIR] [--device cuda|cpu]
  [--dtype bf16|f32] [--resolution 640] [--layers 4] [--steps 3] [--warmup 1] [--phases text,dit,vae]
  [--offload on|off] [--vram-budget-gb G] [--resident-blocks K] [--no-pin] [--check-finite] [--tag NAME]
  [--fused on|off] [--attention cudnn|own] [--cudnn-autotune on|off] [--flash-kernel sm90|w4|w8|w4m2]
  [--gemm-epilogue on|off] [--init fan-in|anchor]";

impl Args {
    /// The DiT's kernel choices.
    fn kernels(&self) -> engine::gpu::fused::Kernels {
        engine::gpu::fused::Kernels {
            fused: self.fused,
            gemm_epilogue: self.gemm_epilogue,
            flash: self.flash_kernel,
            cudnn_attention: self.cudnn_attention,
        }
    }
}

struct Args {
    model: Option<String>,
    config_dir: Option<String>,
    device: String,
    dtype: DType,
    resolution: usize,
    layers: usize,
    steps: usize,
    warmup: usize,
    phases: Vec<String>,
    offload: bool,
    vram_budget_gb: Option<f64>,
    resident_blocks: Option<usize>,
    pin: bool,
    check_finite: bool,
    tag: String,
    /// The DiT's fused CUDA kernels (bf16), or its plain path.
    fused: bool,
    flash_kernel: engine::gpu::fused::FlashKernel,
    /// cuDNN's SDPA for the joint attention where compiled in (else our kernel).
    cudnn_attention: bool,
    cudnn_autotune: bool,
    /// The MLP's bias + GELU in the cuBLASLt GEMM epilogue (else a separate kernel).
    gemm_epilogue: bool,
    /// How random DiT weights are drawn (`anchor`: as diffusers' speed anchor draws them).
    init: InitScheme,
}

/// An `on|off` flag's value.
fn on_off(flag: &str, value: &str) -> Result<bool, String> {
    match value {
        "on" => Ok(true),
        "off" => Ok(false),
        other => Err(format!("{flag} {other}: on or off")),
    }
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        model: None,
        config_dir: None,
        device: "cuda".into(),
        dtype: DType::BF16,
        resolution: 640,
        layers: 4,
        steps: 3,
        warmup: 1,
        phases: vec!["text".into(), "dit".into(), "vae".into()],
        offload: false,
        vram_budget_gb: None,
        resident_blocks: None,
        pin: true,
        check_finite: false,
        tag: String::new(),
        fused: true,
        flash_kernel: engine::gpu::fused::FlashKernel::ALL[0],
        cudnn_attention: false,
        cudnn_autotune: false,
        gemm_epilogue: true,
        init: InitScheme::FanIn,
    };
    let mut random = false;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value\n{USAGE}"));
        let num = |v: String, name: &str| v.parse::<usize>().map_err(|_| format!("{name}: not a number: {v}"));
        match flag.as_str() {
            "--random-weights" => random = true,
            "--model" => a.model = Some(value("--model")?),
            "--config-dir" => a.config_dir = Some(value("--config-dir")?),
            "--device" => a.device = value("--device")?,
            "--dtype" => {
                a.dtype = match value("--dtype")?.as_str() {
                    "bf16" => DType::BF16,
                    "f16" => DType::F16,
                    "f32" => DType::F32,
                    other => return Err(format!("--dtype {other}: bf16, f16 or f32")),
                }
            }
            "--resolution" => a.resolution = num(value("--resolution")?, "--resolution")?,
            "--layers" => a.layers = num(value("--layers")?, "--layers")?,
            "--steps" => a.steps = num(value("--steps")?, "--steps")?.max(1),
            "--warmup" => a.warmup = num(value("--warmup")?, "--warmup")?,
            "--phases" => a.phases = value("--phases")?.split(',').map(str::to_string).collect(),
            "--offload" => a.offload = on_off("--offload", &value("--offload")?)?,
            "--vram-budget-gb" => {
                let v = value("--vram-budget-gb")?;
                a.vram_budget_gb = Some(v.parse().map_err(|_| format!("--vram-budget-gb: not a number: {v}"))?);
            }
            "--resident-blocks" => a.resident_blocks = Some(num(value("--resident-blocks")?, "--resident-blocks")?),
            "--no-pin" => a.pin = false,
            "--check-finite" => a.check_finite = true,
            "--tag" => a.tag = value("--tag")?,
            "--fused" => a.fused = on_off("--fused", &value("--fused")?)?,
            "--attention" => {
                a.cudnn_attention = match value("--attention")?.as_str() {
                    "cudnn" => true,
                    "own" => false,
                    other => return Err(format!("--attention {other}: cudnn or own")),
                }
            }
            "--cudnn-autotune" => a.cudnn_autotune = on_off("--cudnn-autotune", &value("--cudnn-autotune")?)?,
            "--gemm-epilogue" => a.gemm_epilogue = on_off("--gemm-epilogue", &value("--gemm-epilogue")?)?,
            "--init" => {
                let v = value("--init")?;
                a.init = InitScheme::parse(&v).ok_or_else(|| format!("--init {v}: fan-in or anchor"))?;
            }
            "--flash-kernel" => {
                let v = value("--flash-kernel")?;
                a.flash_kernel = engine::gpu::fused::FlashKernel::parse(&v)
                    .ok_or_else(|| format!("--flash-kernel {v}: w4, w8 or w4m2"))?;
            }
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    if random == a.model.is_some() {
        return Err(format!("give exactly one of --random-weights and --model DIR\n{USAGE}"));
    }
    if !a.resolution.is_multiple_of(16) {
        return Err(format!("--resolution {} must be a multiple of 16", a.resolution));
    }
    Ok(a)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{msg}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&args) {
        eprintln!("engine-bench: {}", describe(&e));
        std::process::exit(1);
    }
}

fn describe(e: &engine::Error) -> String {
    match e {
        engine::Error::Candle(c) => engine::gpu::describe_error(c),
        other => other.to_string(),
    }
}

/// One JSON line per measurement (the anchor's format), flushed at once.
fn emit(v: serde_json::Value) {
    println!("{v}");
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn sync(device: &Device) -> engine::Result<()> {
    Ok(device.synchronize()?)
}

/// Where the weights come from.
enum Source {
    /// Random weights; the scheme applies to the DiT (the other models keep fan-in values).
    Random(InitScheme),
    Model(ModelDir),
}

impl Source {
    fn var_builder(&self, component: &str, dtype: DType, device: &Device) -> engine::Result<VarBuilder<'static>> {
        match self {
            Source::Random(scheme) if component == "transformer" => {
                Ok(RandomWeights::var_builder_with(*scheme, dtype, device))
            }
            Source::Random(_) => Ok(RandomWeights::var_builder(dtype, device)),
            Source::Model(m) => m.var_builder(component, dtype, device),
        }
    }
}

struct Configs {
    transformer: engine::transformer::Config,
    vae: engine::vae::Config,
    text: engine::text_encoder::Config,
}

fn configs(args: &Args) -> engine::Result<Configs> {
    let dir = args.config_dir.as_deref().or(args.model.as_deref());
    Ok(match dir {
        Some(d) => {
            let m = ModelDir::open(d)?;
            Configs {
                transformer: m.read_json("transformer", "config.json")?,
                vae: m.read_json("vae", "config.json")?,
                text: m.read_json("text_encoder", "config.json")?,
            }
        }
        None => Configs {
            transformer: engine::transformer::Config::layered(),
            vae: engine::vae::Config::qwen_image_layered(),
            text: engine::text_encoder::Config::qwen2_5_vl_7b(),
        },
    })
}

fn run(args: &Args) -> engine::Result<()> {
    let device = match args.device.as_str() {
        "cpu" => Device::Cpu,
        "cuda" => engine::gpu::cuda_device(0)?,
        other => return Err(engine::Error::InvalidInput(format!("--device {other}: cuda or cpu"))),
    };
    engine::gpu::configure_matmul(&device, args.dtype);
    engine::gpu::cudnn_attention::set_autotune(args.cudnn_autotune);
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
        text_phase(args, &cfgs, &source, &device, &gpu, &sampler)?;
        emit_peak("text", peak(&sampler));
    }
    if args.phases.iter().any(|p| p == "dit") {
        if let Some(s) = &sampler {
            s.reset_peak();
        }
        dit_phase(args, &cfgs, &source, &device, &gpu, &sampler)?;
    }
    if args.phases.iter().any(|p| p == "profile") {
        profile_phase(args, &cfgs, &device)?;
    }
    if args.phases.iter().any(|p| p == "vae") {
        if let Some(s) = &sampler {
            s.reset_peak();
        }
        vae_phase(args, &cfgs, &source, &device, &sampler)?;
    }
    Ok(())
}

fn emit_peak(phase: &str, peak_gib: Option<f64>) {
    emit(serde_json::json!({ "run": format!("ours_{phase}_peak"), "peak_gib": peak_gib }));
}

fn gpu_name(device: &Device) -> String {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = device {
        return d.cuda_stream().context().name().unwrap_or_else(|_| "cuda".into());
    }
    let _ = device;
    "cpu".into()
}

/// Checks a tensor has no NaN/Inf; emits the result and fails the run if it does.
fn check_finite(args: &Args, what: &str, t: &Tensor) -> engine::Result<()> {
    if !args.check_finite {
        return Ok(());
    }
    let t = t.to_dtype(DType::F32)?;
    let sum = t.sum_all()?.to_scalar::<f32>()?;
    let max_abs = t.abs()?.max_all()?.to_scalar::<f32>()?;
    let ok = sum.is_finite() && max_abs.is_finite();
    emit(
        serde_json::json!({ "check": "finite", "what": what, "ok": ok, "sum": sum, "max_abs": max_abs, "shape": t.dims() }),
    );
    if !ok {
        return Err(engine::Error::InvalidInput(format!(
            "{what}: NaN or Inf in the output (sum {sum}, max |x| {max_abs})"
        )));
    }
    Ok(())
}

/// Random token ids `[1, n]` below `vocab` (the speed of the model does not depend on them).
fn random_ids(n: usize, vocab: usize, device: &Device) -> engine::Result<Tensor> {
    let ids = Tensor::rand(0f32, vocab as f32 - 1.0, n, &Device::Cpu)?.to_dtype(DType::U32)?;
    Ok(ids.unsqueeze(0)?.to_device(device)?)
}

fn text_phase(
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

fn dit_phase(
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

/// The run-name suffix of a non-default DiT path, so the comparison table keeps the default runs
/// apart from the variants timed beside them.
fn variant_suffix(args: &Args) -> String {
    let path = if !args.fused {
        "_plain"
    } else if args.cudnn_attention && args.cudnn_autotune {
        "_cudnn_tuned"
    } else if args.cudnn_attention {
        "_cudnn"
    } else if args.flash_kernel != engine::gpu::fused::FlashKernel::ALL[0] {
        "_mma_sync_attention"
    } else if !args.gemm_epilogue {
        "_separate_epilogues"
    } else {
        ""
    };
    let init = if args.model.is_none() && args.init == InitScheme::Anchor {
        "_anchor_init"
    } else {
        ""
    };
    format!("{path}{init}")
}

/// Where a model's weights came from: a checkpoint, or random values of which scheme (`--init`
/// applies to the DiT only; the other models are always fan-in).
fn weights_name(args: &Args, dit: bool) -> String {
    match args.model {
        Some(_) => "checkpoint".into(),
        None => format!("random ({})", if dit { args.init } else { InitScheme::FanIn }.name()),
    }
}

/// Bytes of one transformer block in `dtype` (36·D² weights plus biases and norms).
fn block_bytes(cfg: &engine::transformer::Config, dtype: DType) -> u64 {
    let d = cfg.inner_dim() as u64;
    (36 * d * d + 40 * d) * dtype.size_in_bytes() as u64
}

/// A rough upper bound of the DiT's activations and non-block weights at `args`' shape, for
/// turning a VRAM budget into resident blocks: 24 activations of [2, S, D] plus the attention
/// chunk (2 × 256 MiB f32) and 1 GiB of other weights and workspace.
fn activation_estimate(args: &Args, cfg: &engine::transformer::Config) -> u64 {
    let grid = (args.resolution / 16) as u64;
    let s = (args.layers as u64 + 2) * grid * grid + 30;
    24 * 2 * s * cfg.inner_dim() as u64 * args.dtype.size_in_bytes() as u64 + (1 << 29) + (1 << 30)
}

fn vae_phase(
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

/// Median seconds of `f` over `reps` runs after one warm-up, synchronising around each.
fn time_op(device: &Device, reps: usize, mut f: impl FnMut() -> engine::Result<Tensor>) -> engine::Result<f64> {
    drop(f()?);
    sync(device)?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        let out = f()?;
        sync(device)?;
        times.push(t.elapsed().as_secs_f64());
        drop(out);
    }
    Ok(median(times))
}

/// Times the pieces of one DiT block at the bench's shapes (batch 2, text 30) and the card's
/// ceilings; emits one JSON line per piece with its per-step total (× uses per block × blocks).
fn profile_phase(args: &Args, cfgs: &Configs, device: &Device) -> engine::Result<()> {
    use candle_nn::Module;
    use engine::transformer::attention::{scaled_dot_product_attention, KeyMask};
    use engine::transformer::block::TransformerBlock;
    use engine::transformer::norm::layer_norm;
    use engine::transformer::rope::{apply_rope, Rope, RopeVariant};

    let tcfg = &cfgs.transformer;
    let dtype = args.dtype;
    let (d, heads, dh) = (tcfg.inner_dim(), tcfg.num_attention_heads, tcfg.attention_head_dim);
    let grid = args.resolution / 16;
    let frames = args.layers + 2;
    let s_img = frames * grid * grid;
    let s_txt = 30;
    let s = s_img + s_txt;
    let blocks = tcfg.num_layers as f64;
    let reps = 5;
    let randn =
        |shape: &[usize]| -> engine::Result<Tensor> { Ok(Tensor::randn(0f32, 1.0, shape, device)?.to_dtype(dtype)?) };
    let report = |name: &str, secs: f64, per_block: f64, flops: f64, bytes: f64| {
        emit(serde_json::json!({
            "run": "ours_profile", "tag": args.tag, "op": name, "ms": secs * 1e3, "uses_per_block": per_block,
            "ms_per_step": secs * 1e3 * per_block * blocks,
            "tflops": if flops > 0.0 { Some(flops / secs / 1e12) } else { None },
            "gbps": if bytes > 0.0 { Some(bytes / secs / 1e9) } else { None },
        }));
    };

    // Ceilings: a large bf16 GEMM, the same in f32 (TF32 when configured), a device copy.
    let n = if device.is_cuda() { 8192 } else { 256 };
    let (a, b) = (randn(&[n, n])?, randn(&[n, n])?);
    let t = time_op(device, reps, || Ok(a.matmul(&b)?))?;
    report("ceiling_gemm_8192", t, 0.0, 2.0 * (n as f64).powi(3), 0.0);
    let (a32, b32) = (a.to_dtype(DType::F32)?, b.to_dtype(DType::F32)?);
    let t = time_op(device, reps, || Ok(a32.matmul(&b32)?))?;
    report("ceiling_gemm_8192_f32", t, 0.0, 2.0 * (n as f64).powi(3), 0.0);
    let big = Tensor::randn(0f32, 1.0, if device.is_cuda() { 1usize << 30 } else { 1 << 20 }, device)?;
    let t = time_op(device, reps, || Ok(big.copy()?))?;
    report("ceiling_copy_4GiB", t, 0.0, 0.0, 2.0 * 4.0 * (1u64 << 30) as f64);
    drop((a, b, a32, b32, big));
    if let Some((pinned, pageable)) = h2d_bandwidth(device)? {
        report("ceiling_h2d_pinned_1GiB", pinned, 0.0, 0.0, (1u64 << 30) as f64);
        report("ceiling_h2d_pageable_1GiB", pageable, 0.0, 0.0, (1u64 << 30) as f64);
    }

    // The block's pieces on the image stream (the text stream is 30 tokens: negligible).
    let x = randn(&[2, s_img, d])?;
    let lin = |i: usize, o: usize| -> engine::Result<candle_nn::Linear> {
        Ok(candle_nn::Linear::new(randn(&[o, i])?, Some(randn(&[o])?)))
    };
    let x_bytes = (2 * s_img * d * dtype.size_in_bytes()) as f64;
    let (proj, up, down) = (lin(d, d)?, lin(d, 4 * d)?, lin(4 * d, d)?);
    let t = time_op(device, reps, || Ok(proj.forward(&x)?))?;
    report(
        "linear_d_to_d (q,k,v,out)",
        t,
        4.0,
        2.0 * (2 * s_img * d * d) as f64,
        0.0,
    );
    let t = time_op(device, reps, || Ok(up.forward(&x)?))?;
    report(
        "linear_d_to_4d (mlp in)",
        t,
        1.0,
        2.0 * (2 * s_img * d * 4 * d) as f64,
        0.0,
    );
    let h = randn(&[2, s_img, 4 * d])?;
    let t = time_op(device, reps, || Ok(down.forward(&h)?))?;
    report(
        "linear_4d_to_d (mlp out)",
        t,
        1.0,
        2.0 * (2 * s_img * d * 4 * d) as f64,
        0.0,
    );
    let t = time_op(device, reps, || Ok(h.gelu()?))?;
    report("gelu_tanh (mlp)", t, 1.0, 0.0, 2.0 * 4.0 * x_bytes);
    drop(h);
    let (scale, shift) = (randn(&[2, 1, d])?, randn(&[2, 1, d])?);
    let t = time_op(device, reps, || Ok(layer_norm(&x, 1e-6)?))?;
    report("layer_norm (f32 statistics)", t, 2.0, 0.0, 2.0 * x_bytes);
    let t = time_op(device, reps, || {
        Ok(x.broadcast_mul(&(&scale + 1.0)?)?.broadcast_add(&shift)?)
    })?;
    report("modulate scale/shift", t, 2.0, 0.0, 2.0 * x_bytes);
    let t = time_op(device, reps, || Ok((&x + x.broadcast_mul(&scale)?)?))?;
    report("gated residual", t, 2.0, 0.0, 3.0 * x_bytes);

    // Attention: q/k RMSNorm, joint layout, RoPE, the attention itself and its parts.
    let heads_x = x.reshape((2, s_img, heads, dh))?;
    let w = Tensor::ones(dh, DType::F32, device)?;
    let t = time_op(device, reps, || {
        Ok(candle_nn::ops::rms_norm(&heads_x.to_dtype(DType::F32)?.contiguous()?, &w, 1e-6)?.to_dtype(dtype)?)
    })?;
    report("rms_norm q/k (f32)", t, 2.0, 0.0, 2.0 * x_bytes);
    let txt = randn(&[2, s_txt, heads, dh])?;
    let t = time_op(device, reps, || {
        Ok(Tensor::cat(&[&txt, &heads_x], 1)?.transpose(1, 2)?.contiguous()?)
    })?;
    report("joint cat + transpose (q,k,v)", t, 3.0, 0.0, 2.0 * x_bytes);
    let rope = Rope::new(tcfg.axes_dims_rope, RopeVariant::Layer3d, device);
    let tables = rope.tables(&vec![(1, grid, grid); frames], s_txt)?;
    let q = randn(&[2, heads, s, dh])?;
    let k = randn(&[2, heads, s, dh])?;
    let v = randn(&[2, heads, s, dh])?;
    let t = time_op(device, reps, || Ok(apply_rope(&q, &tables.cos, &tables.sin)?))?;
    report("rope (f32)", t, 2.0, 0.0, 2.0 * x_bytes);
    let mask = Tensor::cat(
        &[
            Tensor::ones((1, s_txt), DType::U8, device)?,
            Tensor::cat(
                &[
                    Tensor::ones((1, 6), DType::U8, device)?,
                    Tensor::zeros((1, s_txt - 6), DType::U8, device)?,
                ],
                1,
            )?,
        ],
        0,
    )?;
    let key_mask = KeyMask::from_text_mask(&mask, s_img)?;
    let attn_flops = 4.0 * (2 * heads * s * s * dh) as f64;
    let t = time_op(device, 3, || {
        Ok(scaled_dot_product_attention(&q, &k, &v, Some(&key_mask))?)
    })?;
    report("attention (masked CFG batch, all parts)", t, 1.0, attn_flops, 0.0);
    // One query chunk of one batch row, as the attention runs it.
    let rows = ((1usize << 26) / (heads * s)).clamp(1, s);
    let q32 = q
        .narrow(0, 0, 1)?
        .narrow(2, 0, rows)?
        .to_dtype(DType::F32)?
        .contiguous()?;
    let k32t = k.narrow(0, 0, 1)?.to_dtype(DType::F32)?.contiguous()?.t()?;
    let v32 = v.narrow(0, 0, 1)?.to_dtype(DType::F32)?.contiguous()?;
    let chunks = 2.0 * (s as f64 / rows as f64).ceil();
    let scores = q32.matmul(&k32t)?;
    let t = time_op(device, reps, || Ok(q32.matmul(&k32t)?))?;
    report(
        "attn chunk: q kᵀ (f32/TF32)",
        t,
        chunks,
        2.0 * (heads * rows * s * dh) as f64,
        0.0,
    );
    let score_bytes = (heads * rows * s * 4) as f64;
    let t = time_op(device, reps, || Ok(engine::gpu::softmax::softmax_last_dim(&scores)?))?;
    report("attn chunk: softmax (ours)", t, chunks, 0.0, 2.0 * score_bytes);
    let t = time_op(device, reps, || Ok(candle_nn::ops::softmax_last_dim(&scores)?))?;
    report("attn chunk: softmax (candle, not used)", t, 0.0, 0.0, 2.0 * score_bytes);
    let probs = engine::gpu::softmax::softmax_last_dim(&scores)?;
    let t = time_op(device, reps, || Ok(probs.matmul(&v32)?))?;
    report(
        "attn chunk: p v (f32/TF32)",
        t,
        chunks,
        2.0 * (heads * rows * s * dh) as f64,
        0.0,
    );
    drop((scores, probs, q32, k32t, v32));

    // The fused path's pieces (bf16 on CUDA): what a block costs with the fused kernels.
    if args.fused && engine::gpu::fused::applies_to(&x) {
        use engine::gpu::fused;
        let wq = randn(&[d, d])?;
        let x2 = x.reshape((2 * s_img, d))?;
        let t = time_op(device, reps, || Ok(x2.matmul(&wq.t()?)?))?;
        // Uses per block of the separate passes the epilogues replace (1 or 0), and of the
        // bias-free D→D GEMM (v's goes to the epilogue GEMM when on).
        let separate = if args.gemm_epilogue { 0.0 } else { 1.0 };
        let d_to_d_uses = 3.0 + separate;
        report(
            "fused: GEMM D→D without bias (q,k,v,out)",
            t,
            d_to_d_uses,
            2.0 * (2 * s_img * d * d) as f64,
            0.0,
        );
        let wu = randn(&[4 * d, d])?;
        let t = time_op(device, reps, || Ok(x2.matmul(&wu.t()?)?))?;
        report(
            "fused: GEMM D→4D without bias (mlp in)",
            t,
            separate,
            2.0 * (2 * s_img * d * 4 * d) as f64,
            0.0,
        );
        let h2 = randn(&[2 * s_img, 4 * d])?;
        let t = time_op(device, reps, || Ok(h2.matmul(&wu)?))?;
        report(
            "fused: GEMM 4D→D without bias (mlp out)",
            t,
            1.0,
            2.0 * (2 * s_img * d * 4 * d) as f64,
            0.0,
        );
        let bias4 = randn(&[4 * d])?;
        let h3 = h2.reshape((2, s_img, 4 * d))?;
        let t = time_op(device, reps, || Ok(fused::bias_gelu(&h3, &bias4)?))?;
        report("fused: bias + GELU", t, separate, 0.0, 2.0 * 4.0 * x_bytes);
        let t = time_op(device, reps, || {
            Ok(engine::gpu::gemm_epilogue::linear_bias_gelu(&x, &wu, &bias4)?)
        })?;
        let mlp_in_flops = 2.0 * (2 * s_img * d * 4 * d) as f64;
        report(
            "fused: cuBLASLt GEMM D→4D + bias + GELU epilogue",
            t,
            1.0 - separate,
            mlp_in_flops,
            0.0,
        );
        drop((h2, h3));
        let params = randn(&[2, 6 * d])?;
        let (p0, p1) = (params.narrow(1, 0, d)?, params.narrow(1, d, d)?);
        let t = time_op(device, reps, || Ok(fused::ln_modulate(&x, &p0, &p1, 1e-6)?))?;
        report("fused: LayerNorm + modulate", t, 2.0, 0.0, 2.0 * x_bytes);
        let bias = randn(&[d])?;
        let y = randn(&[2, s_img, d])?;
        let t = time_op(device, reps, || Ok(fused::gated_residual(&x, &y, &bias, &p0)?))?;
        report("fused: gated residual + bias", t, 2.0, 0.0, 3.0 * x_bytes);
        let txt_p = randn(&[2, s_txt, d])?;
        let w = Tensor::ones(dh, DType::F32, device)?;
        let norms = fused::HeadNorms {
            image: &w,
            text: &w,
            eps: 1e-6,
        };
        let t = time_op(device, reps, || {
            Ok(fused::joint_qkv(&x, &txt_p, &bias, &bias, Some(&norms), Some(&tables))?)
        })?;
        report("fused: joint q/k (bias, RMSNorm, RoPE)", t, 2.0, 0.0, 2.0 * x_bytes);
        let t = time_op(device, reps, || {
            Ok(fused::joint_qkv(&x, &txt_p, &bias, &bias, None, None)?)
        })?;
        report("fused: joint v (bias)", t, separate, 0.0, 2.0 * x_bytes);
        let txt_in = randn(&[2, s_txt, d])?;
        let t = time_op(device, reps, || {
            Ok(engine::gpu::gemm_epilogue::joint_linear(
                &x, &wq, &bias, &txt_in, &wq, &bias,
            )?)
        })?;
        report(
            "fused: cuBLASLt joint v GEMMs + bias epilogue",
            t,
            1.0 - separate,
            2.0 * (2 * s * d * d) as f64,
            0.0,
        );
        let (jq, jk, jv) = (
            randn(&[2, s, heads, dh])?,
            randn(&[2, s, heads, dh])?,
            randn(&[2, s, heads, dh])?,
        );
        let kv_len = Tensor::new(&[s as u32, (s_img + 6) as u32], device)?;
        let cudnn = args.kernels().cudnn_attention_active();
        for kernel in fused::FlashKernel::ALL {
            let t = time_op(device, reps, || {
                Ok(fused::own_flash_attention(&jq, &jk, &jv, &kv_len, s_img, kernel)?.0)
            })?;
            let uses = if !cudnn && kernel == args.flash_kernel {
                1.0
            } else {
                0.0
            };
            report(
                &format!("fused: flash attention, our kernel {}", kernel.name()),
                t,
                uses,
                attn_flops,
                0.0,
            );
        }
        if cudnn {
            match time_op(device, reps, || {
                Ok(engine::gpu::cudnn_attention::attention(&jq, &jk, &jv, &kv_len, s_img)?.0)
            }) {
                Ok(t) => report("fused: attention, cuDNN SDPA", t, 1.0, attn_flops, 0.0),
                Err(e) => emit(
                    serde_json::json!({"run": "ours_profile", "tag": args.tag, "op": "fused: attention, cuDNN SDPA", "error": e.to_string()}),
                ),
            }
        }
    }

    // The whole block, for the sum check: the path the run uses, and the plain one.
    let block_vb = RandomWeights::var_builder_with(args.init, dtype, device);
    let block = TransformerBlock::new(d, heads, dh, 0, block_vb.pp("transformer_blocks").pp(0))?;
    let txt_x = randn(&[2, s_txt, d])?;
    let temb = randn(&[2, d])?;
    let block_flops = flops::dit_forward(args.resolution, args.layers, 30) / blocks * 2.0;
    let kernels = args.kernels();
    let t = time_op(device, 3, || {
        Ok(block.forward(&x, &txt_x, &temb, &tables, Some(&key_mask), &kernels)?.0)
    })?;
    report("whole block", t, 1.0, block_flops, 0.0);
    if kernels.fused && engine::gpu::fused::applies_to(&x) {
        let plain = engine::gpu::fused::Kernels::PLAIN;
        let t = time_op(device, 3, || {
            Ok(block.forward(&x, &txt_x, &temb, &tables, Some(&key_mask), &plain)?.0)
        })?;
        report("whole block, plain path (not used)", t, 0.0, block_flops, 0.0);
    }
    Ok(())
}

/// Seconds to copy 1 GiB host → device from page-locked and from ordinary memory (the offload
/// path's ceiling), CUDA only.
fn h2d_bandwidth(device: &Device) -> engine::Result<Option<(f64, f64)>> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(dev) = device {
        let err =
            |e: candle_core::cuda::cudarc::driver::DriverError| engine::Error::InvalidInput(format!("h2d: {e:?}"));
        let stream = dev.cuda_stream();
        let ctx = stream.context().clone();
        let n = 1usize << 30;
        // SAFETY: contents are irrelevant to a bandwidth measurement; both buffers are n bytes.
        let pinned = unsafe { ctx.alloc_pinned::<u8>(n) }.map_err(err)?;
        let pageable = vec![1u8; n];
        let mut dst = unsafe { stream.alloc::<u8>(n) }.map_err(err)?;
        let mut time = |src: &dyn Fn(&mut candle_core::cuda::cudarc::driver::CudaSlice<u8>) -> engine::Result<()>| -> engine::Result<f64> {
            src(&mut dst)?;
            stream.synchronize().map_err(err)?;
            let mut ts = Vec::new();
            for _ in 0..3 {
                let t = Instant::now();
                src(&mut dst)?;
                stream.synchronize().map_err(err)?;
                ts.push(t.elapsed().as_secs_f64());
            }
            Ok(median(ts))
        };
        let t_pinned = time(&|d| stream.memcpy_htod(&pinned, d).map_err(err))?;
        let t_pageable = time(&|d| stream.memcpy_htod(&pageable, d).map_err(err))?;
        return Ok(Some((t_pinned, t_pageable)));
    }
    let _ = device;
    Ok(None)
}
