//! `qwen-layers`: the command-line way in.
//!
//! - `decompose`: one image → composite + layer PNGs, manifest.json and the layered files of
//!   `--formats` (ZIP by default; PSD, OpenRaster, PowerPoint) in a folder.
//! - `batch`: every image of a folder, one output folder each.
//! - `compose`: flatten layer PNGs (bottom first) into one image, and/or write them as one
//!   layered file (`--to layers.psd`, `.ora`, `.pptx`, `.zip`).
//! - `edit`: edit one RGBA layer by an instruction with Qwen-Image-Edit-2509, keeping its alpha.
//! - `split`: decompose one layer of an earlier result again; its sub-layers become a group.
//! - `generate`: a prompt → an image with Z-Image-Turbo (`--then-decompose N`: and into layers).

mod generate;
mod split;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use app::api::{self, flags};
use clap::{Args, Parser, Subcommand, ValueEnum};
use engine::lora::LoraSpec;
use engine::pipeline::{edit_layer, AlphaMode, EditOptions, EditPipeline, LayerEditOptions};
use engine::runtime::Runtime;
use engine::scheduler::SchedulerConfig;
use engine::text_encoder::CaptionLanguage;
use engine::weights::ModelDir;
use indicatif::{ProgressBar, ProgressStyle};
use qwen_layers::decomposer::{
    composite_layers, DecomposeOptions, Decomposer, Format, LoadOptions, Progress, AUTO_MAX_LAYERS,
};

#[derive(Parser)]
#[command(
    name = "qwen-layers",
    version,
    about = "Decompose images into RGBA layers with Qwen-Image-Layered"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Decompose one image into layers.
    Decompose(DecomposeArgs),
    /// Decompose every PNG/JPEG/WebP in a folder.
    Batch(BatchArgs),
    /// Flatten layer PNGs into one image (-o) and/or write them as one layered file (--to);
    /// the first file is the bottom layer.
    Compose(ComposeArgs),
    /// Edit one RGBA layer by an instruction with Qwen-Image-Edit-2509; the layer's alpha is
    /// kept unless --rekey-alpha.
    Edit(EditArgs),
    /// Decompose one layer of an earlier result again: its sub-layers replace it as a group
    /// (kept in manifest.json's tree, PSD folders and OpenRaster stacks).
    Split(split::SplitArgs),
    /// Generate an image from a prompt with Z-Image-Turbo (and decompose it with
    /// --then-decompose N).
    Generate(generate::GenerateArgs),
    /// Download models into the Hugging Face cache with a progress bar (default: both
    /// Qwen-Image-Layered and Qwen-Image-Edit-2509); files already there are skipped.
    Download(DownloadArgs),
}

#[derive(Args)]
struct DownloadArgs {
    /// Repo ids to download (default: the decompose and the edit model).
    #[arg(value_name = "REPO")]
    repos: Vec<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum DeviceArg {
    Auto,
    Cpu,
    Cuda,
}

#[derive(Clone, Copy, ValueEnum)]
enum CaptionArg {
    En,
    Cn,
}

#[derive(Clone, Copy, ValueEnum)]
enum DtypeArg {
    F32,
    Bf16,
    F16,
}

#[derive(Args, Clone)]
struct ModelArgs {
    /// Local diffusers folder or Hugging Face repo id.
    #[arg(long, default_value = api::DEFAULT_MODEL_REPO)]
    model_path: String,
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceArg,
    /// Default: bf16 on CUDA, f32 on CPU.
    #[arg(long, value_enum)]
    dtype: Option<DtypeArg>,
    /// A LoRA adapter merged into the transformer, `PATH[:SCALE]` (repeat for several): the
    /// layouts people publish for Qwen-Image (diffusers/PEFT, kohya, Lightning, ComfyUI).
    #[arg(long = "lora", value_name = "PATH[:SCALE]", value_parser = LoraSpec::parse)]
    lora: Vec<LoraSpec>,
}

#[derive(Args, Clone)]
struct RunArgs {
    /// Describes the whole scene (not the layers). Empty: the image is captioned automatically.
    #[arg(long, default_value = "")]
    prompt: String,
    /// Language of the automatic caption.
    #[arg(long, value_enum, default_value = "en")]
    caption_language: CaptionArg,
    #[arg(long, default_value = " ")]
    negative_prompt: String,
    /// A count, or `auto`: up to AUTO_MAX_LAYERS (6), then the layers that add nothing visible
    /// (empty, covered, duplicates) are dropped; manifest.json says which and why.
    #[arg(long, default_value_t = api::LayerNum::Count(api::DEFAULT_LAYER_NUM), value_parser = layer_num)]
    num_layers: api::LayerNum,
    #[arg(long, default_value_t = api::DEFAULT_RESOLUTION, value_parser = flags::resolution)]
    resolution: u32,
    #[arg(long, default_value_t = api::DEFAULT_STEPS, value_parser = flags::steps)]
    steps: u32,
    #[arg(long, default_value_t = api::DEFAULT_CFG_SCALE, value_parser = flags::cfg_scale)]
    cfg_scale: f32,
    /// Turn off the per-token CFG normalisation (on in the official app).
    #[arg(long)]
    no_cfg_normalize: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Initial latents (`noise`, [1, layers+1, 16, H/8, W/8]) from a safetensors file.
    #[arg(long, value_name = "FILE")]
    init_noise: Option<PathBuf>,
    /// A scheduler_config.json to run with instead of the model's (e.g. the one a step-distilled
    /// LoRA was trained for).
    #[arg(long, value_name = "FILE", value_parser = scheduler_file)]
    scheduler_config: Option<SchedulerConfig>,
}

/// `--scheduler-config`: the file, read and checked when the flags are parsed.
fn scheduler_file(path: &str) -> std::result::Result<SchedulerConfig, String> {
    SchedulerConfig::from_file(Path::new(path)).map_err(|e| e.to_string())
}

#[derive(Args, Clone)]
struct OutputArgs {
    /// Layered files to write beside the PNGs and manifest.json, comma-separated: zip
    /// (layers.zip), psd (Photoshop), ora (OpenRaster), pptx (PowerPoint).
    #[arg(long, value_delimiter = ',', default_value = "zip", value_parser = layered_format)]
    formats: Vec<Format>,
}

/// `--num-layers`: a count in the layer range or `auto`.
fn layer_num(s: &str) -> std::result::Result<api::LayerNum, String> {
    s.parse()
}

/// A `--formats` entry: a layered format (the flattened PNG is always written).
fn layered_format(s: &str) -> std::result::Result<Format, String> {
    match s.parse::<Format>()? {
        Format::Png => Err("png is always written (composite.png); choose among zip, psd, ora, pptx".into()),
        f => Ok(f),
    }
}

#[derive(Args)]
struct DecomposeArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long, value_name = "FILE")]
    input_image: PathBuf,
    #[command(flatten)]
    run: RunArgs,
    #[arg(long, value_name = "DIR")]
    output_dir: PathBuf,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Args)]
struct BatchArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long, value_name = "DIR")]
    input_dir: PathBuf,
    #[command(flatten)]
    run: RunArgs,
    /// One sub-folder per input image is written here.
    #[arg(long, value_name = "DIR")]
    output_dir: PathBuf,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Args)]
struct ComposeArgs {
    /// Layer PNGs, bottom first.
    #[arg(required = true, num_args = 1..)]
    layers: Vec<PathBuf>,
    /// The flattened image (PNG).
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
    /// One layered file holding the layers (named after their files), its format from the
    /// extension: .psd, .ora, .pptx or .zip.
    #[arg(long, value_name = "FILE")]
    to: Option<PathBuf>,
}

#[derive(Args)]
struct EditArgs {
    /// Qwen-Image-Edit-2509: local diffusers folder or Hugging Face repo id (downloaded into the
    /// hub cache when missing).
    #[arg(long, default_value = api::DEFAULT_EDIT_MODEL_REPO)]
    model_path: String,
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceArg,
    /// Default: bf16 on CUDA, f32 on CPU.
    #[arg(long, value_enum)]
    dtype: Option<DtypeArg>,
    /// The RGBA layer (PNG, JPEG or WebP).
    #[arg(long, value_name = "FILE")]
    layer_image: PathBuf,
    /// What to change, e.g. "make the apple green".
    #[arg(long)]
    instruction: String,
    #[arg(long, default_value = " ")]
    negative_prompt: String,
    /// At least 2 (the Edit-2509 schedule is undefined for one step).
    #[arg(long, default_value_t = api::DEFAULT_STEPS, value_parser = flags::edit_steps)]
    steps: u32,
    #[arg(long, default_value_t = api::DEFAULT_CFG_SCALE, value_parser = flags::cfg_scale)]
    cfg_scale: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Derive the alpha from the edited image by keying out its background colour (for edits
    /// that change the shape) instead of keeping the layer's alpha.
    #[arg(long)]
    rekey_alpha: bool,
    /// Initial latents (`noise`, [1, 1, 16, H/8, W/8]) from a safetensors file.
    #[arg(long, value_name = "FILE")]
    init_noise: Option<PathBuf>,
    /// A LoRA adapter merged into the edit transformer, `PATH[:SCALE]` (repeatable). A Lightning
    /// edit: `--edit-lora Qwen-Image-Edit-2509-Lightning-8steps-V1.0-bf16.safetensors
    /// --scheduler-config presets/qwen-image-lightning/scheduler_config.json --steps 8
    /// --cfg-scale 1`.
    #[arg(long = "edit-lora", alias = "lora", value_name = "PATH[:SCALE]", value_parser = LoraSpec::parse)]
    edit_lora: Vec<LoraSpec>,
    /// A scheduler_config.json to run with instead of the model's.
    #[arg(long, value_name = "FILE", value_parser = scheduler_file)]
    scheduler_config: Option<SchedulerConfig>,
    /// The edited layer (PNG, same size as the input).
    #[arg(long, short, value_name = "FILE")]
    output: PathBuf,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Decompose(a) => decompose(a),
        Command::Batch(a) => batch(a),
        Command::Compose(a) => compose(a),
        Command::Edit(a) => edit(a),
        Command::Split(a) => split::split(a),
        Command::Download(a) => download(a),
        Command::Generate(a) => generate::generate(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn runtime(device: DeviceArg, dtype: Option<DtypeArg>) -> Result<Runtime> {
    let device = match device {
        DeviceArg::Auto => "auto",
        DeviceArg::Cpu => "cpu",
        DeviceArg::Cuda => "cuda",
    };
    let dtype = dtype.map(|d| match d {
        DtypeArg::F32 => "f32",
        DtypeArg::Bf16 => "bf16",
        DtypeArg::F16 => "f16",
    });
    Ok(Runtime::select(device, dtype)?)
}

/// Finds a model (downloading it, with a progress bar, if it is a repo id not cached yet) and
/// the load options for the chosen device; the spinner runs until the caller has loaded it.
fn prepare(
    model_path: &str,
    device: DeviceArg,
    dtype: Option<DtypeArg>,
) -> Result<(ModelDir, LoadOptions, ProgressBar)> {
    let runtime = runtime(device, dtype)?;
    let model = fetch(model_path)?;
    let spinner = ProgressBar::new_spinner().with_message(format!("loading {model_path} on {}", runtime.describe()));
    spinner.enable_steady_tick(Duration::from_millis(120));
    let options = LoadOptions {
        device: runtime.device.clone(),
        dtype: runtime.dtype,
        keep_text_encoder: true,
        ..Default::default()
    };
    Ok((model, options, spinner))
}

fn load(model: &ModelArgs) -> Result<Decomposer> {
    let (dir, options, spinner) = prepare(&model.model_path, model.device, model.dtype)?;
    let options = LoadOptions {
        lora: model.lora.clone(),
        ..options
    };
    let d = Decomposer::from_model_dir(dir, options);
    spinner.finish_and_clear();
    Ok(d?)
}

fn options(run: &RunArgs) -> DecomposeOptions {
    DecomposeOptions {
        prompt: run.prompt.clone(),
        negative_prompt: Some(run.negative_prompt.clone()),
        layers: match run.num_layers {
            api::LayerNum::Count(n) => n,
            api::LayerNum::Auto(_) => AUTO_MAX_LAYERS,
        } as usize,
        resolution: run.resolution,
        num_inference_steps: run.steps as usize,
        true_cfg_scale: f64::from(run.cfg_scale),
        cfg_normalize: !run.no_cfg_normalize,
        seed: run.seed,
        init_noise: run.init_noise.clone(),
        scheduler: run.scheduler_config.clone(),
        caption_language: match run.caption_language {
            CaptionArg::En => CaptionLanguage::En,
            CaptionArg::Cn => CaptionLanguage::Cn,
        },
        ..DecomposeOptions::default()
    }
}

fn read_image(path: &Path) -> Result<image::RgbaImage> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let img = app::image_data::decode_image_bytes(&bytes, u64::MAX)
        .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.error))?;
    Ok(img)
}

/// The denoising steps as a progress bar with ETA.
struct Bar(ProgressBar);

impl Progress for Bar {
    fn phase(&self, phase: engine::pipeline::Phase) {
        self.0.set_message(phase.name());
    }
    fn step(&self, done: usize, total: usize) {
        self.0.set_length(total as u64);
        self.0.set_position(done as u64);
    }
}

fn bar() -> Bar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:30}] {pos}/{len} steps, {elapsed} elapsed, ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    Bar(bar)
}

fn run_one(d: &mut Decomposer, input: &Path, run: &RunArgs, out: &Path, formats: &[Format]) -> Result<()> {
    let image = read_image(input)?;
    let bar = bar();
    let layers = d.decompose_with_progress(&image, &options(run), &bar);
    bar.0.finish_and_clear();
    let mut layers = layers.with_context(|| format!("decomposing {}", input.display()))?;
    if matches!(run.num_layers, api::LayerNum::Auto(_)) {
        layers = layers.keep_visible()?;
        for d in layers.auto_layers.iter().flat_map(|a| &a.dropped) {
            println!(
                "dropped layer {} of {AUTO_MAX_LAYERS}: {:?}, {}",
                d.layer, d.reason, d.detail
            );
        }
    }
    layers.write_formats(out, formats)?;
    let t = &layers.record.timings;
    if let Some(caption) = &layers.record.caption {
        println!("caption: {caption}");
    }
    println!(
        "{} → {}: {} layers at {}×{} in {:.1} s (denoise {:.1} s, decode {:.1} s)",
        input.display(),
        out.display(),
        layers.layers.len(),
        layers.record.width,
        layers.record.height,
        t.total,
        t.denoise,
        t.decode
    );
    Ok(())
}

fn decompose(a: DecomposeArgs) -> Result<()> {
    // Read the input before the (slow) model load, so a typo fails at once.
    read_image(&a.input_image)?;
    let mut d = load(&a.model)?;
    run_one(&mut d, &a.input_image, &a.run, &a.output_dir, &a.output.formats)
}

fn batch(a: BatchArgs) -> Result<()> {
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(&a.input_dir)
        .with_context(|| format!("reading {}", a.input_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg" | "webp"))
        })
        .collect();
    inputs.sort();
    if inputs.is_empty() {
        bail!("{} holds no PNG, JPEG or WebP images", a.input_dir.display());
    }
    let mut d = load(&a.model)?;
    let mut failed = 0;
    for input in &inputs {
        let stem = input
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        // One bad image must not lose the others' results.
        if let Err(e) = run_one(&mut d, input, &a.run, &a.output_dir.join(stem), &a.output.formats) {
            eprintln!("error: {e:#}");
            failed += 1;
        }
    }
    if failed > 0 {
        bail!("{failed} of {} images failed", inputs.len());
    }
    Ok(())
}

fn compose(a: ComposeArgs) -> Result<()> {
    if a.output.is_none() && a.to.is_none() {
        bail!("say where to write: -o flat.png (the flattened image) and/or --to layers.psd (the layers)");
    }
    // Check the layered file's format before reading the layers.
    let layered = match &a.to {
        Some(path) => {
            let format = Format::from_path(&path.to_string_lossy())
                .filter(|f| *f != Format::Png)
                .with_context(|| {
                    format!(
                        "--to {}: the extension must be .psd, .ora, .pptx or .zip",
                        path.display()
                    )
                })?;
            Some((path, format))
        }
        None => None,
    };
    let layers = a.layers.iter().map(|p| read_image(p)).collect::<Result<Vec<_>>>()?;
    let flat = composite_layers(&layers).map_err(|e| anyhow::anyhow!("{e} (layers must all have the same size)"))?;
    if let Some(output) = &a.output {
        flat.save(output)
            .with_context(|| format!("writing {}", output.display()))?;
        println!("{} layers → {}", layers.len(), output.display());
    }
    if let Some((path, format)) = layered {
        let names: Vec<String> = a
            .layers
            .iter()
            .map(|p| {
                p.file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default()
            })
            .collect();
        let doc = app::export::Document {
            width: flat.width(),
            height: flat.height(),
            layers: layers
                .iter()
                .zip(&names)
                .map(|(img, name)| app::export::Layer {
                    name,
                    visible: true,
                    opacity: 1.0,
                    rgba: img.as_raw(),
                    png: None,
                })
                .collect(),
            groups: Vec::new(),
            composite: flat.as_raw(),
            composite_png: None,
            run: None,
        };
        let bytes = app::export::export(&doc, format)?;
        std::fs::write(path, &bytes).with_context(|| format!("writing {}", path.display()))?;
        println!("{} layers → {} ({})", layers.len(), path.display(), format.label());
    }
    Ok(())
}

fn edit(a: EditArgs) -> Result<()> {
    // Check the inputs before the (slow) model load, so a typo fails at once.
    let layer = read_image(&a.layer_image)?;
    if a.instruction.trim().is_empty() {
        bail!("--instruction is empty: say what to change in the layer");
    }
    let (dir, options, spinner) = prepare(&a.model_path, a.device, a.dtype)?;
    let options = LoadOptions {
        lora: a.edit_lora.clone(),
        ..options
    };
    let pipe = EditPipeline::load(dir, options);
    spinner.finish_and_clear();
    let mut pipe = pipe.with_context(|| format!("loading the edit model {}", a.model_path))?;

    let options = LayerEditOptions {
        edit: EditOptions {
            negative_prompt: Some(a.negative_prompt.clone()),
            true_cfg_scale: f64::from(a.cfg_scale),
            num_inference_steps: a.steps as usize,
            seed: a.seed,
            init_noise: a.init_noise.clone(),
            scheduler: a.scheduler_config.clone(),
            ..EditOptions::default()
        },
        alpha: if a.rekey_alpha {
            AlphaMode::Rekey
        } else {
            AlphaMode::KeepOriginal
        },
        key_color: None,
    };
    let bar = bar();
    let out = edit_layer(&mut pipe, &layer, &a.instruction, &options, &bar);
    bar.0.finish_and_clear();
    let out = out.with_context(|| format!("editing {}", a.layer_image.display()))?;
    out.layer
        .save(&a.output)
        .with_context(|| format!("writing {}", a.output.display()))?;
    let r = &out.edit.record;
    let [kr, kg, kb] = out.key_color;
    println!(
        "{} → {}: {}×{} layer edited at {}×{} in {:.1} s (denoise {:.1} s), key colour #{kr:02x}{kg:02x}{kb:02x}, alpha {}",
        a.layer_image.display(),
        a.output.display(),
        out.layer.width(),
        out.layer.height(),
        r.width,
        r.height,
        r.timings.total,
        r.timings.denoise,
        if a.rekey_alpha { "re-keyed" } else { "kept" }
    );
    Ok(())
}

/// One progress bar for the file being downloaded, with its place among the repo's files.
struct DownloadBar {
    bar: Option<ProgressBar>,
}

impl engine::weights::DownloadProgress for DownloadBar {
    fn file(&mut self, name: &str, size: u64, index: usize, files: usize) {
        if let Some(bar) = self.bar.take() {
            bar.finish();
        }
        let bar = ProgressBar::new(size).with_message(format!("[{index}/{files}] {name}"));
        bar.set_style(
            ProgressStyle::with_template("{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        self.bar = Some(bar);
    }

    fn advance(&mut self, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
        }
    }
}

fn download(a: DownloadArgs) -> Result<()> {
    let repos = if a.repos.is_empty() {
        vec![
            api::DEFAULT_MODEL_REPO.to_string(),
            api::DEFAULT_EDIT_MODEL_REPO.to_string(),
        ]
    } else {
        a.repos
    };
    for repo in &repos {
        if !engine::weights::looks_like_repo_id(repo) {
            bail!("{repo} is not a Hugging Face repo id (owner/name)");
        }
        println!("{repo}: {}", fetch(repo)?.root().display());
    }
    Ok(())
}

/// A local folder, or a repo id from the hub cache, downloaded first (with a progress bar) if
/// it is not there yet.
fn fetch(path_or_repo: &str) -> Result<ModelDir> {
    let mut bar = DownloadBar { bar: None };
    let model = ModelDir::fetch(path_or_repo, &mut bar);
    if let Some(bar) = bar.bar.take() {
        bar.finish();
    }
    model.with_context(|| format!("finding the model {path_or_repo}"))
}
