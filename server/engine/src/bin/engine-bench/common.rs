//! What every phase shares: the JSON lines, timing, where weights and configs come from.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use engine::gpu::{InitScheme, RandomWeights};
use engine::weights::ModelDir;

use crate::args::Args;

pub(crate) fn describe(e: &engine::Error) -> String {
    match e {
        engine::Error::Candle(c) => engine::gpu::describe_error(c),
        other => other.to_string(),
    }
}

/// One JSON line per measurement (the anchor's format), flushed at once.
pub(crate) fn emit(v: serde_json::Value) {
    println!("{v}");
}

pub(crate) fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

pub(crate) fn sync(device: &Device) -> engine::Result<()> {
    Ok(device.synchronize()?)
}

/// Where the weights come from.
pub(crate) enum Source {
    /// Random weights; the scheme applies to the DiT (the other models keep fan-in values).
    Random(InitScheme),
    Model(ModelDir),
}

impl Source {
    pub(crate) fn var_builder(
        &self,
        component: &str,
        dtype: DType,
        device: &Device,
    ) -> engine::Result<VarBuilder<'static>> {
        match self {
            Source::Random(scheme) if component == "transformer" => {
                Ok(RandomWeights::var_builder_with(*scheme, dtype, device))
            }
            Source::Random(_) => Ok(RandomWeights::var_builder(dtype, device)),
            Source::Model(m) => m.var_builder(component, dtype, device),
        }
    }
}

pub(crate) struct Configs {
    pub(crate) transformer: engine::transformer::Config,
    pub(crate) vae: engine::vae::Config,
    pub(crate) text: engine::text_encoder::Config,
}

pub(crate) fn configs(args: &Args) -> engine::Result<Configs> {
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

pub(crate) fn emit_peak(phase: &str, peak_gib: Option<f64>) {
    emit(serde_json::json!({ "run": format!("ours_{phase}_peak"), "peak_gib": peak_gib }));
}

pub(crate) fn gpu_name(device: &Device) -> String {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = device {
        return d.cuda_stream().context().name().unwrap_or_else(|_| "cuda".into());
    }
    let _ = device;
    "cpu".into()
}

/// Checks a tensor has no NaN/Inf; emits the result and fails the run if it does.
pub(crate) fn check_finite(args: &Args, what: &str, t: &Tensor) -> engine::Result<()> {
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

/// Median seconds of `f` over `reps` runs after one warm-up, synchronising around each.
pub(crate) fn time_op(
    device: &Device,
    reps: usize,
    mut f: impl FnMut() -> engine::Result<Tensor>,
) -> engine::Result<f64> {
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

/// Where a model's weights came from: a checkpoint, or random values of which scheme (`--init`
/// applies to the DiT only; the other models are always fan-in).
pub(crate) fn weights_name(args: &Args, dit: bool) -> String {
    match args.model {
        Some(_) => "checkpoint".into(),
        None => format!("random ({})", if dit { args.init } else { InitScheme::FanIn }.name()),
    }
}

/// The run-name suffix of a non-default DiT path, so the comparison table keeps the default runs
/// apart from the variants timed beside them.
pub(crate) fn variant_suffix(args: &Args) -> String {
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
