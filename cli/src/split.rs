//! `qwen-layers split`: decomposes one layer of an earlier result again (recursive
//! decomposition, issue 19). The layer's RGBA image goes to the model as a photo would (the
//! engine keeps its alpha); its sub-layers replace it in the stack as a group named after it,
//! and every file written keeps the groups (manifest.json's `tree`, PSD folders, OpenRaster
//! nested stacks; PowerPoint flattens them).

use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use app::export::{Document, Format, Group, Layer, Manifest, ManifestNode};
use clap::Args;
use image::RgbaImage;

#[derive(Args)]
pub struct SplitArgs {
    #[command(flatten)]
    model: super::ModelArgs,
    /// A folder that `decompose` or `split` wrote: its manifest.json and layer PNGs.
    #[arg(long, value_name = "DIR")]
    run_dir: PathBuf,
    /// The layer to split, by its position in that manifest (1 = bottom).
    #[arg(long, value_name = "N")]
    layer: u32,
    #[command(flatten)]
    run: super::RunArgs,
    /// Where the new stack is written (not --run-dir: the earlier stack stays as it was).
    #[arg(long, value_name = "DIR")]
    output_dir: PathBuf,
    #[command(flatten)]
    output: super::OutputArgs,
}

struct StackLayer {
    name: String,
    visible: bool,
    opacity: f32,
    image: RgbaImage,
}

struct StackGroup {
    name: String,
    visible: bool,
    opacity: f32,
    layers: Range<usize>,
}

/// A stack read from a manifest, owned, with its groups.
struct Stack {
    width: u32,
    height: u32,
    layers: Vec<StackLayer>,
    groups: Vec<StackGroup>,
    run: Option<serde_json::Value>,
}

/// The layer indices (0-based) under `nodes`, and each group found on the way.
fn collect_groups(nodes: &[ManifestNode], groups: &mut Vec<StackGroup>) -> Result<Vec<usize>> {
    let mut all = Vec::new();
    for node in nodes {
        match node {
            ManifestNode::Layer { layer } => all.push((*layer as usize).checked_sub(1).context("layer 0 in the tree")?),
            ManifestNode::Group {
                group,
                visible,
                opacity,
                children,
            } => {
                let inside = collect_groups(children, groups)?;
                let (Some(&lo), Some(&hi)) = (inside.iter().min(), inside.iter().max()) else {
                    bail!("group \"{group}\" in the manifest's tree is empty");
                };
                groups.push(StackGroup {
                    name: group.clone(),
                    visible: *visible,
                    opacity: *opacity,
                    layers: lo..hi + 1,
                });
                all.extend(inside);
            }
        }
    }
    Ok(all)
}

fn read_stack(dir: &Path) -> Result<Stack> {
    let path = dir.join("manifest.json");
    let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let manifest: Manifest =
        serde_json::from_slice(&text).with_context(|| format!("{} is not a manifest", path.display()))?;
    let mut layers = Vec::new();
    for l in &manifest.layers {
        let image = super::read_image(&dir.join(&l.file))?;
        if image.dimensions() != (manifest.width, manifest.height) {
            bail!(
                "{} is {}×{}, the manifest says {}×{}",
                l.file,
                image.width(),
                image.height(),
                manifest.width,
                manifest.height
            );
        }
        layers.push(StackLayer {
            name: l.name.clone(),
            visible: l.visible,
            opacity: l.opacity,
            image,
        });
    }
    let mut groups = Vec::new();
    if let Some(tree) = &manifest.tree {
        collect_groups(tree, &mut groups)?;
    }
    Ok(Stack {
        width: manifest.width,
        height: manifest.height,
        layers,
        groups,
        run: manifest.run,
    })
}

impl Stack {
    /// Replaces layer `index` by `parts` (bottom first) in a group named after it, which takes
    /// its visibility and opacity; the groups around it grow, those above it move up.
    fn split(&mut self, index: usize, parts: Vec<RgbaImage>) {
        let old = self.layers.remove(index);
        let added = parts.len();
        for g in &mut self.groups {
            if g.layers.start > index {
                g.layers = g.layers.start + added - 1..g.layers.end + added - 1;
            } else if g.layers.end > index {
                g.layers.end += added - 1;
            }
        }
        let subs = parts.into_iter().enumerate().map(|(k, image)| StackLayer {
            name: format!("{}.{}", old.name, k + 1),
            visible: true,
            opacity: 1.0,
            image,
        });
        self.layers.splice(index..index, subs);
        self.groups.push(StackGroup {
            name: old.name,
            visible: old.visible,
            opacity: old.opacity,
            layers: index..index + added,
        });
    }

    /// The export document, its composite made by `composite`.
    fn document<'a>(&'a self, composite: &'a [u8]) -> Document<'a> {
        Document {
            width: self.width,
            height: self.height,
            layers: self
                .layers
                .iter()
                .map(|l| Layer {
                    name: &l.name,
                    visible: l.visible,
                    opacity: l.opacity,
                    rgba: l.image.as_raw(),
                    png: None,
                })
                .collect(),
            groups: self
                .groups
                .iter()
                .map(|g| Group {
                    name: &g.name,
                    visible: g.visible,
                    opacity: g.opacity,
                    layers: g.layers.clone(),
                })
                .collect(),
            composite,
            composite_png: None,
            run: self.run.clone(),
        }
    }

    /// The visible layers flattened, with their groups' visibility and opacity.
    fn composite(&self) -> Result<RgbaImage> {
        let doc = self.document(&[]);
        let shown: Vec<app::compose::LayerPixels<'_>> = (0..doc.layers.len())
            .filter_map(|i| {
                let (visible, opacity) = doc.effective(i);
                visible.then(|| app::compose::LayerPixels {
                    rgba: doc.layers[i].rgba,
                    opacity,
                })
            })
            .collect();
        let mut out = RgbaImage::new(self.width, self.height);
        app::compose::Compositor::default()
            .composite_into(self.width, self.height, &shown, &mut out)
            .map_err(|e| anyhow::anyhow!("compositing: {e}"))?;
        Ok(out)
    }
}

pub fn split(a: SplitArgs) -> Result<()> {
    // Everything that can be wrong with the inputs is said before the (slow) model load.
    let same = match (a.run_dir.canonicalize(), a.output_dir.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    };
    if same {
        bail!("--output-dir must differ from --run-dir (the earlier stack is kept as it was)");
    }
    let mut stack = read_stack(&a.run_dir)?;
    let count = stack.layers.len();
    if a.layer == 0 || a.layer as usize > count {
        bail!(
            "--layer {}: the stack in {} has layers 1 to {count}",
            a.layer,
            a.run_dir.display()
        );
    }
    let index = a.layer as usize - 1;
    let name = stack.layers[index].name.clone();
    let mut d = super::load(&a.model)?;
    let bar = super::bar();
    let out = d.decompose_with_progress(&stack.layers[index].image, &super::options(&a.run), &bar);
    bar.0.finish_and_clear();
    let mut out = out.with_context(|| format!("decomposing {name}"))?;
    if matches!(a.run.num_layers, app::api::LayerNum::Auto(_)) {
        out = out.keep_visible()?;
    }
    // The model works at its resolution bucket: back to the stack's size where that differs.
    let parts: Vec<RgbaImage> = out
        .layers
        .iter()
        .map(|l| {
            if l.dimensions() == (stack.width, stack.height) {
                l.clone()
            } else {
                image::imageops::resize(l, stack.width, stack.height, image::imageops::FilterType::Lanczos3)
            }
        })
        .collect();
    let parts_count = parts.len();
    stack.split(index, parts);
    // The run record gains this split (the model's record and the automatic count, if any).
    let mut run = stack.run.take().unwrap_or_else(|| serde_json::json!({}));
    if let Some(map) = run.as_object_mut() {
        let entry = serde_json::json!({
            "layer": name,
            "run": serde_json::to_value(&out.record)?,
            "auto_layers": out.auto_layers,
        });
        match map.get_mut("splits").and_then(|s| s.as_array_mut()) {
            Some(list) => list.push(entry),
            None => {
                map.insert("splits".into(), serde_json::json!([entry]));
            }
        }
    }
    stack.run = Some(run);
    let composite = stack.composite()?;
    let doc = stack.document(composite.as_raw());
    doc.check()?;
    let written = write(&doc, &a.output_dir, &a.output.formats)?;
    println!(
        "{name} → {parts_count} layers in group \"{name}\": {} layers in {} ({} files)",
        stack.layers.len(),
        a.output_dir.display(),
        written
    );
    Ok(())
}

/// Writes `composite.png`, `NN_<name>.png` per layer, `manifest.json` and `layers.<ext>` for
/// each of `formats` into `dir`; returns how many files.
fn write(doc: &Document<'_>, dir: &Path, formats: &[Format]) -> Result<usize> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let manifest = app::export::zip::manifest(doc);
    let mut n = 0;
    let mut put = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        n += 1;
        anyhow::Ok(())
    };
    put(&manifest.composite, &doc.composite_png()?)?;
    for (i, layer) in manifest.layers.iter().enumerate() {
        put(&layer.file, &doc.layer_png(i)?)?;
    }
    put("manifest.json", serde_json::to_string_pretty(&manifest)?.as_bytes())?;
    for &format in formats {
        if format != Format::Png {
            put(&format!("layers.{format}"), &app::export::export(doc, format)?)?;
        }
    }
    Ok(n)
}
