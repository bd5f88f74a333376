//! `qwen-layers generate`: a prompt → one image with Z-Image-Turbo, and with `--then-decompose N`
//! that image → N layers with Qwen-Image-Layered (the page's "Decompose into layers").

use std::path::PathBuf;

use anyhow::{Context, Result};
use app::api::{self, flags, LayerNum};
use app::api_z_image::{self as z, GenerateRequest, ZImageDefaults};
use clap::Args;
use qwen_layers::decomposer::{DecomposeOptions, Decomposer};
use qwen_layers::generator::Generator;

use super::{bar, prepare, DeviceArg, DtypeArg};

#[derive(Args)]
pub struct GenerateArgs {
    /// Z-Image-Turbo: local diffusers folder or Hugging Face repo id.
    #[arg(long, default_value = z::DEFAULT_Z_IMAGE_REPO)]
    model_path: String,
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceArg,
    /// Default: bf16 on CUDA, f32 on CPU.
    #[arg(long, value_enum)]
    dtype: Option<DtypeArg>,
    /// What the image shows.
    #[arg(long)]
    prompt: String,
    /// What it should not show (only with --cfg-scale above 0).
    #[arg(long)]
    negative_prompt: Option<String>,
    #[arg(long, default_value_t = z::DEFAULT_Z_SIZE, value_parser = z::flags::size)]
    width: u32,
    #[arg(long, default_value_t = z::DEFAULT_Z_SIZE, value_parser = z::flags::size)]
    height: u32,
    /// Turbo: 8–9.
    #[arg(long, default_value_t = z::DEFAULT_Z_STEPS, value_parser = flags::steps)]
    steps: u32,
    /// 0 = no classifier-free guidance (Turbo's setting).
    #[arg(long, default_value_t = z::DEFAULT_Z_CFG_SCALE, value_parser = flags::cfg_scale)]
    cfg_scale: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The image (PNG).
    #[arg(long, short, value_name = "FILE")]
    output: PathBuf,
    /// Then decompose the image into this many layers (2–10) with Qwen-Image-Layered.
    #[arg(long, value_name = "N", value_parser = flags::layer_num)]
    then_decompose: Option<u32>,
    /// Where the layers go (default: next to --output, `<name>-layers/`).
    #[arg(long, value_name = "DIR")]
    layers_dir: Option<PathBuf>,
    /// Qwen-Image-Layered for --then-decompose.
    #[arg(long, default_value = api::DEFAULT_MODEL_REPO)]
    layers_model_path: String,
    #[arg(long, default_value_t = api::DEFAULT_RESOLUTION, value_parser = flags::resolution)]
    layers_resolution: u32,
    #[arg(long, default_value_t = api::DEFAULT_STEPS, value_parser = flags::steps)]
    layers_steps: u32,
    #[arg(long, default_value_t = api::DEFAULT_CFG_SCALE, value_parser = flags::cfg_scale)]
    layers_cfg_scale: f32,
}

pub fn generate(a: GenerateArgs) -> Result<()> {
    let request = GenerateRequest {
        prompt: a.prompt.clone(),
        negative_prompt: a.negative_prompt.clone(),
        width: Some(a.width),
        height: Some(a.height),
        steps: Some(a.steps),
        cfg_scale: Some(a.cfg_scale),
        seed: Some(a.seed),
    };
    let job = request
        .validate(&ZImageDefaults::default(), a.seed)
        .map_err(|e| anyhow::anyhow!(e.error))?;
    let (dir, options, spinner) = prepare(&a.model_path, a.device, a.dtype)?;
    let generator = Generator::from_model_dir(dir, options);
    spinner.finish_and_clear();
    let generator = generator?;
    generator.check_prompts(&job)?;
    let progress = bar();
    let out = generator.generate(&job, &progress);
    progress.0.finish_and_clear();
    let out = out.context("generating the image")?;
    let png = out.png().map_err(|e| anyhow::anyhow!(e.error))?;
    if let Some(parent) = a.output.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(&a.output, png).with_context(|| format!("writing {}", a.output.display()))?;
    let t = &out.record.timings;
    println!(
        "{}: {}×{} in {:.1} s (denoise {:.1} s, decode {:.1} s), seed {}",
        a.output.display(),
        job.width,
        job.height,
        t.total,
        t.denoise,
        t.decode,
        job.seed
    );
    let Some(layers) = a.then_decompose else {
        return Ok(());
    };
    // One model at a time: the generator's memory goes before the decomposer loads.
    let image = out.rgba();
    drop(generator);
    let dir = a.layers_dir.clone().unwrap_or_else(|| {
        let stem = a
            .output
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        a.output.with_file_name(format!("{stem}-layers"))
    });
    let (model, options, spinner) = prepare(&a.layers_model_path, a.device, a.dtype)?;
    let decomposer = Decomposer::from_model_dir(model, options);
    spinner.finish_and_clear();
    let mut decomposer = decomposer?;
    let options = DecomposeOptions {
        prompt: a.prompt.clone(),
        layers: layers as usize,
        resolution: a.layers_resolution,
        num_inference_steps: a.layers_steps as usize,
        true_cfg_scale: f64::from(a.layers_cfg_scale),
        seed: a.seed,
        ..DecomposeOptions::default()
    };
    let progress = bar();
    let result = decomposer.decompose_with_progress(&image, &options, &progress);
    progress.0.finish_and_clear();
    let result = result.context("decomposing the generated image")?;
    result.write_formats(&dir, &[qwen_layers::decomposer::Format::Zip])?;
    println!(
        "{} → {}: {} layers ({})",
        a.output.display(),
        dir.display(),
        result.layers.len(),
        LayerNum::Count(layers)
    );
    Ok(())
}
