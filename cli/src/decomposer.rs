//! The Rust API of the product, in the spirit of the seed's Python one:
//!
//! ```no_run
//! use qwen_layers::decomposer::{Decomposer, DecomposeOptions, Format, LoadOptions};
//! let mut d = Decomposer::from_pretrained("Qwen/Qwen-Image-Layered", LoadOptions::default())?;
//! let image = image::open("photo.png")?.to_rgba8();
//! let opts = DecomposeOptions { prompt: "a cat on a sofa".into(), layers: 4, ..Default::default() };
//! let layers = d.decompose(&image, &opts)?;
//! layers.write_to_dir("out".as_ref())?; // composite.png, 01_layer-1.png…, layers.zip, manifest.json
//! layers.write_formats("out".as_ref(), &[Format::Psd, Format::Ora])?; // + layers.psd, layers.ora
//! # Ok::<(), anyhow::Error>(())
//! ```
//!
//! [`Layers`] holds the composite (index 0 of every listing: the layers flattened with the
//! app's compositing code, i.e. the reconstructed input) and Layer 1 … Layer N, bottom → top.

use std::path::Path;

use app::api::{ApiError, DecomposeResponse, LayerImage, LAYER_ORDER};
pub use app::export::Format;
use app::export::{Document, Layer, Manifest};
use app::image_data::{encode_png, png_data_url, to_base64};
pub use app::layer_count::{AutoLayers, AUTO_MAX_LAYERS};
use image::RgbaImage;

pub use app::compose::composite_layers;
use engine::pipeline::LayeredPipeline;
pub use engine::pipeline::{DecomposeOptions, LoadOptions, NoProgress, Progress, RunRecord};
use engine::weights::ModelDir;

/// A loaded Qwen-Image-Layered model.
pub struct Decomposer {
    pipeline: LayeredPipeline,
}

impl Decomposer {
    /// Loads from a local diffusers folder or a Hugging Face repo id (downloaded into the hub
    /// cache when missing, unless `HF_HUB_OFFLINE` is set).
    pub fn from_pretrained(path_or_repo: &str, options: LoadOptions) -> engine::Result<Self> {
        Self::from_model_dir(ModelDir::resolve(path_or_repo, true)?, options)
    }

    pub fn from_model_dir(model: ModelDir, options: LoadOptions) -> engine::Result<Self> {
        Ok(Self {
            pipeline: LayeredPipeline::load(model, options)?,
        })
    }

    /// Wraps a pipeline loaded by the caller (e.g. one sharing its text encoder).
    pub fn from_pipeline(pipeline: LayeredPipeline) -> Self {
        Self { pipeline }
    }

    pub fn pipeline(&self) -> &LayeredPipeline {
        &self.pipeline
    }

    /// The pipeline, to change what it runs with (e.g. [`LayeredPipeline::set_lora`]).
    pub fn pipeline_mut(&mut self) -> &mut LayeredPipeline {
        &mut self.pipeline
    }

    /// Decomposes `image` into layers.
    pub fn decompose(&mut self, image: &RgbaImage, options: &DecomposeOptions) -> engine::Result<Layers> {
        self.decompose_with_progress(image, options, &NoProgress)
    }

    pub fn decompose_with_progress(
        &mut self,
        image: &RgbaImage,
        options: &DecomposeOptions,
        progress: &dyn Progress,
    ) -> engine::Result<Layers> {
        let out = self.pipeline.decompose(image, options, progress)?;
        Layers::new(out.layers, out.record)
    }
}

/// A decomposition: the composite and the layers, bottom → top, with the run's record.
#[derive(Debug, Clone)]
pub struct Layers {
    pub composite: RgbaImage,
    pub layers: Vec<RgbaImage>,
    pub record: RunRecord,
    /// What [`Layers::keep_visible`] dropped (an automatic layer count).
    pub auto_layers: Option<AutoLayers>,
}

/// A layer's display name: "Layer 1" is the bottom one.
pub fn layer_name(position: usize) -> String {
    format!("Layer {position}")
}

impl Layers {
    pub fn new(layers: Vec<RgbaImage>, record: RunRecord) -> engine::Result<Self> {
        let composite = composite_layers(&layers).map_err(|e| engine::Error::InvalidInput(e.to_string()))?;
        Ok(Self {
            composite,
            layers,
            record,
            auto_layers: None,
        })
    }

    /// The automatic layer count: drops the layers that add nothing visible (empty, covered by
    /// the layers above, duplicates; [`app::layer_count`]), recomposites, and records what went.
    pub fn keep_visible(self) -> engine::Result<Self> {
        let pixels: Vec<&[u8]> = self.layers.iter().map(|l| l.as_raw().as_slice()).collect();
        let report = app::layer_count::prune(&pixels);
        let kept: Vec<RgbaImage> = report
            .kept
            .iter()
            .map(|&position| self.layers[position as usize - 1].clone())
            .collect();
        let mut out = Self::new(kept, self.record)?;
        out.auto_layers = Some(report);
        Ok(out)
    }

    /// The run record as exports carry it, with the automatic count's report.
    fn run_json(&self) -> Option<serde_json::Value> {
        let mut run = serde_json::to_value(&self.record).ok()?;
        if let (Some(auto), Some(map)) = (&self.auto_layers, run.as_object_mut()) {
            map.insert("auto_layers".into(), serde_json::to_value(auto).ok()?);
        }
        Some(run)
    }

    /// PNG bytes of the composite and of each layer.
    pub fn pngs(&self) -> Result<(Vec<u8>, Vec<Vec<u8>>), ApiError> {
        let composite = encode_png(&self.composite)?;
        let layers = self.layers.iter().map(encode_png).collect::<Result<Vec<_>, _>>()?;
        Ok((composite, layers))
    }

    /// The layers as an export document: "Layer 1" … "Layer N" bottom first, all visible at
    /// full opacity, with the composite, their PNGs when given (else encoded as needed) and the
    /// run record.
    pub fn document<'a>(&'a self, names: &'a [String], pngs: Option<&'a (Vec<u8>, Vec<Vec<u8>>)>) -> Document<'a> {
        Document {
            width: self.composite.width(),
            height: self.composite.height(),
            layers: self
                .layers
                .iter()
                .zip(names)
                .enumerate()
                .map(|(i, (img, name))| Layer {
                    name,
                    visible: true,
                    opacity: 1.0,
                    rgba: img.as_raw(),
                    png: pngs.map(|p| p.1[i].as_slice()),
                })
                .collect(),
            groups: Vec::new(),
            composite: self.composite.as_raw(),
            composite_png: pngs.map(|p| p.0.as_slice()),
            run: self.run_json(),
        }
    }

    fn names(&self) -> Vec<String> {
        (1..=self.layers.len()).map(layer_name).collect()
    }

    /// The export ZIP (composite, layers in stack order, manifest.json with the run record) and
    /// its manifest.
    pub fn zip(&self, pngs: &(Vec<u8>, Vec<Vec<u8>>)) -> Result<(Vec<u8>, Manifest), ApiError> {
        let names = self.names();
        app::export::build_zip(&self.document(&names, Some(pngs))).map_err(|e| ApiError::internal(e.to_string()))
    }

    /// The layers in one export format (see [`app::export`]).
    pub fn export(&self, format: Format) -> Result<Vec<u8>, ApiError> {
        let names = self.names();
        app::export::export(&self.document(&names, None), format).map_err(|e| ApiError::internal(e.to_string()))
    }

    /// The REST response: index 0 "Composite", then "Layer 1" … "Layer N".
    pub fn to_response(&self) -> Result<DecomposeResponse, ApiError> {
        let pngs = self.pngs()?;
        let (zip, _) = self.zip(&pngs)?;
        let mut layers = vec![LayerImage {
            name: "Composite".into(),
            image: png_data_url(&pngs.0),
            index: 0,
        }];
        for (i, png) in pngs.1.iter().enumerate() {
            layers.push(LayerImage {
                name: layer_name(i + 1),
                image: png_data_url(png),
                index: i as u32 + 1,
            });
        }
        let (width, height) = self.composite.dimensions();
        Ok(DecomposeResponse {
            layers,
            zip_data: to_base64(&zip),
            generation_time: self.record.timings.total,
            layer_count: self.layers.len() as u32,
            resolution: self.record.resolution,
            layer_order: LAYER_ORDER.into(),
            seed: self.record.seed,
            width,
            height,
            caption: self.record.caption.clone(),
            files: Vec::new(),
            auto_layers: self.auto_layers.clone(),
        })
    }

    /// Writes `composite.png`, `NN_layer-N.png`, `layers.zip` and `manifest.json` into `dir`.
    pub fn write_to_dir(&self, dir: &Path) -> anyhow::Result<()> {
        self.write_formats(dir, &[Format::Zip]).map(|_| ())
    }

    /// Writes `composite.png`, `NN_layer-N.png` and `manifest.json` into `dir`, and
    /// `layers.<ext>` for each of `formats` (`zip`, `psd`, `ora`, `pptx`; `png` is the
    /// composite, always written). Returns the files written.
    pub fn write_formats(&self, dir: &Path, formats: &[Format]) -> anyhow::Result<Vec<std::path::PathBuf>> {
        use anyhow::Context;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let pngs = self.pngs()?;
        let names = self.names();
        let doc = self.document(&names, Some(&pngs));
        let manifest = app::export::zip::manifest(&doc);
        let mut written = Vec::new();
        let mut write = |name: &str, bytes: &[u8]| {
            let path = dir.join(name);
            std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
            written.push(path);
            anyhow::Ok(())
        };
        // The same files and manifest as inside the ZIP.
        write(&manifest.composite, &pngs.0)?;
        for (layer, png) in manifest.layers.iter().zip(&pngs.1) {
            write(&layer.file, png)?;
        }
        write("manifest.json", serde_json::to_string_pretty(&manifest)?.as_bytes())?;
        for &format in formats {
            if format == Format::Png {
                continue;
            }
            let bytes = app::export::export(&doc, format).with_context(|| format!("building layers.{format}"))?;
            write(&format!("layers.{format}"), &bytes)?;
        }
        Ok(written)
    }
}
