//! Exports a layer stack: a ZIP with one PNG per layer (in stack order, bottom first), the
//! flattened composite and a `manifest.json` recording order, names, visibility and the run's
//! parameters. Pure Rust, so the browser builds it locally and the server/CLI write the same file.

use std::io::{Cursor, Write};

use serde::{Deserialize, Serialize};
use zip::write::SimpleFileOptions;

/// One layer as exported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestLayer {
    pub name: String,
    /// File name inside the ZIP.
    pub file: String,
    /// Position in the stack, 1 = bottom.
    pub position: u32,
    pub visible: bool,
    pub opacity: f32,
}

/// `manifest.json` of an export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    /// Always "bottom-to-top": `layers[0]` is drawn first.
    pub layer_order: String,
    pub width: u32,
    pub height: u32,
    pub composite: String,
    pub layers: Vec<ManifestLayer>,
    /// The run that produced the layers (seed, parameters, model, timings), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<serde_json::Value>,
}

/// A layer to put in the ZIP.
pub struct ExportLayer<'a> {
    pub name: &'a str,
    pub png: &'a [u8],
    pub visible: bool,
    pub opacity: f32,
}

#[derive(Debug, thiserror::Error)]
#[error("export failed: {0}")]
pub struct ExportError(String);

/// A file name safe inside a ZIP: `01_layer-1.png`.
fn layer_file_name(position: usize, name: &str) -> String {
    let slug: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect::<String>()
        .split('-')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    format!("{position:02}_{}.png", if slug.is_empty() { "layer" } else { &slug })
}

/// Builds the ZIP: `composite.png`, `NN_<name>.png` per layer (bottom first) and `manifest.json`.
pub fn build_zip(
    width: u32,
    height: u32,
    composite_png: &[u8],
    layers: &[ExportLayer<'_>],
    run: Option<serde_json::Value>,
) -> Result<(Vec<u8>, Manifest), ExportError> {
    let err = |e: &dyn std::fmt::Display| ExportError(e.to_string());
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    // PNGs are already deflated: store them, compress only the manifest.
    let stored = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let deflated = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    zip.start_file("composite.png", stored).map_err(|e| err(&e))?;
    zip.write_all(composite_png).map_err(|e| err(&e))?;
    let mut manifest_layers = Vec::with_capacity(layers.len());
    for (i, layer) in layers.iter().enumerate() {
        let file = layer_file_name(i + 1, layer.name);
        zip.start_file(file.as_str(), stored).map_err(|e| err(&e))?;
        zip.write_all(layer.png).map_err(|e| err(&e))?;
        manifest_layers.push(ManifestLayer {
            name: layer.name.to_string(),
            file,
            position: i as u32 + 1,
            visible: layer.visible,
            opacity: layer.opacity,
        });
    }
    let manifest = Manifest {
        format: "qwen-layers/1".into(),
        layer_order: crate::api::LAYER_ORDER.into(),
        width,
        height,
        composite: "composite.png".into(),
        layers: manifest_layers,
        run,
    };
    zip.start_file("manifest.json", deflated).map_err(|e| err(&e))?;
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| err(&e))?;
    zip.write_all(&json).map_err(|e| err(&e))?;
    let bytes = zip.finish().map_err(|e| err(&e))?.into_inner();
    Ok((bytes, manifest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn zip_holds_layers_in_stack_order_and_a_manifest() {
        let layers = [
            ExportLayer {
                name: "Layer 1",
                png: b"bottom",
                visible: true,
                opacity: 1.0,
            },
            ExportLayer {
                name: "Sky & sun!",
                png: b"top",
                visible: false,
                opacity: 0.5,
            },
        ];
        let (bytes, manifest) = build_zip(4, 3, b"comp", &layers, Some(serde_json::json!({"seed": 42}))).unwrap();
        let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).unwrap();
        let names: Vec<String> = (0..archive.len())
            .map(|i| archive.by_index(i).unwrap().name().unwrap().to_string())
            .collect();
        assert_eq!(
            names,
            ["composite.png", "01_layer-1.png", "02_sky-sun.png", "manifest.json"]
        );
        let mut top = Vec::new();
        archive
            .by_name("02_sky-sun.png")
            .unwrap()
            .read_to_end(&mut top)
            .unwrap();
        assert_eq!(top, b"top");
        let mut json = String::new();
        archive
            .by_name("manifest.json")
            .unwrap()
            .read_to_string(&mut json)
            .unwrap();
        let parsed: Manifest = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed, manifest);
        assert_eq!(parsed.layer_order, "bottom-to-top");
        assert_eq!(parsed.layers[1].position, 2);
        assert!(!parsed.layers[1].visible);
        assert_eq!(parsed.run.unwrap()["seed"], 42);
    }
}
