//! The ZIP export: one PNG per layer (in stack order, bottom first), the flattened composite and
//! a `manifest.json` recording order, names, visibility, opacity and the run's parameters
//! (docs/outputs.md).

use std::io::{Cursor, Write};

use ::zip::write::SimpleFileOptions;
use serde::{Deserialize, Serialize};

use super::{Document, ExportError};

/// One layer as listed in the manifest.
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

/// A node of the manifest's `tree` (written when the stack has groups), bottom first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ManifestNode {
    /// A layer, by its `position` in `layers`.
    Layer { layer: u32 },
    /// A group and what it holds, bottom first.
    Group {
        group: String,
        visible: bool,
        opacity: f32,
        children: Vec<ManifestNode>,
    },
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
    /// The stack as a tree when it has groups (e.g. a layer split again): `layers` stays the
    /// flat list in stack order, and this says which of them each group holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree: Option<Vec<ManifestNode>>,
    /// The run that produced the layers (seed, parameters, model, timings), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<serde_json::Value>,
}

/// A layer name as a file-name stem: lower-case ASCII letters and digits joined by `-`
/// (`Sky & sun!` → `sky-sun`), `layer` when nothing is left.
pub fn file_stem(name: &str) -> String {
    let slug = name
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
    if slug.is_empty() {
        "layer".into()
    } else {
        slug
    }
}

/// A file name safe inside a ZIP: `01_layer-1.png`.
pub fn layer_file_name(position: usize, name: &str) -> String {
    format!("{position:02}_{}.png", file_stem(name))
}

fn manifest_nodes(doc: &Document<'_>, nodes: &[super::Node]) -> Vec<ManifestNode> {
    nodes
        .iter()
        .map(|node| match node {
            super::Node::Layer(i) => ManifestNode::Layer { layer: *i as u32 + 1 },
            super::Node::Group(g, children) => {
                let group = &doc.groups[*g];
                ManifestNode::Group {
                    group: group.name.to_string(),
                    visible: group.visible,
                    opacity: group.opacity,
                    children: manifest_nodes(doc, children),
                }
            }
        })
        .collect()
}

/// The manifest of `doc` (also written beside the files by the CLI).
pub fn manifest(doc: &Document<'_>) -> Manifest {
    Manifest {
        format: "qwen-layers/1".into(),
        layer_order: crate::api::LAYER_ORDER.into(),
        width: doc.width,
        height: doc.height,
        composite: "composite.png".into(),
        layers: doc
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| ManifestLayer {
                name: l.name.to_string(),
                file: layer_file_name(i + 1, l.name),
                position: i as u32 + 1,
                visible: l.visible,
                opacity: l.opacity,
            })
            .collect(),
        tree: match doc.tree() {
            Ok(tree) if !doc.groups.is_empty() => Some(manifest_nodes(doc, &tree)),
            _ => None,
        },
        run: doc.run.clone(),
    }
}

/// Builds the ZIP: `composite.png`, `NN_<name>.png` per layer (bottom first) and `manifest.json`.
pub fn build(doc: &Document<'_>) -> Result<(Vec<u8>, Manifest), ExportError> {
    let manifest = manifest(doc);
    let mut zip = ::zip::ZipWriter::new(Cursor::new(Vec::new()));
    // PNGs are already deflated: store them, compress only the manifest.
    let stored = SimpleFileOptions::default().compression_method(::zip::CompressionMethod::Stored);
    let deflated = SimpleFileOptions::default().compression_method(::zip::CompressionMethod::Deflated);
    zip.start_file(manifest.composite.as_str(), stored)?;
    zip.write_all(&doc.composite_png()?)?;
    for (i, layer) in manifest.layers.iter().enumerate() {
        zip.start_file(layer.file.as_str(), stored)?;
        zip.write_all(&doc.layer_png(i)?)?;
    }
    zip.start_file("manifest.json", deflated)?;
    let json = serde_json::to_vec_pretty(&manifest)?;
    zip.write_all(&json)?;
    let bytes = zip.finish()?.into_inner();
    Ok((bytes, manifest))
}

/// [`build`] for a checked document, as `(bytes, manifest)`.
pub fn build_zip(doc: &Document<'_>) -> Result<(Vec<u8>, Manifest), ExportError> {
    doc.check()?;
    build(doc)
}

#[cfg(test)]
mod tests {
    use super::super::testing::{decode_png, Fixture};
    use super::*;
    use std::io::Read;

    #[test]
    fn zip_holds_layers_in_stack_order_and_a_manifest() {
        let fx = Fixture::new();
        let mut doc = fx.document();
        // A PNG the caller already has is stored as it is, not re-encoded.
        doc.layers[0].png = Some(b"not re-encoded");
        let (bytes, manifest) = build_zip(&doc).unwrap();
        let mut archive = ::zip::ZipArchive::new(Cursor::new(bytes)).unwrap();
        let names: Vec<String> = (0..archive.len())
            .map(|i| archive.by_index(i).unwrap().name().unwrap().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "composite.png",
                "01_layer-1.png",
                "02_sky-sun-1.png",
                "03_n-c-d.png",
                "manifest.json"
            ]
        );
        let mut read = |name: &str| {
            let mut v = Vec::new();
            archive.by_name(name).unwrap().read_to_end(&mut v).unwrap();
            v
        };
        assert_eq!(read("01_layer-1.png"), b"not re-encoded");
        assert_eq!(decode_png(&read("02_sky-sun-1.png")).into_raw(), fx.pixels[1]);
        assert_eq!(decode_png(&read("composite.png")).into_raw(), fx.composite);
        let parsed: Manifest = serde_json::from_slice(&read("manifest.json")).unwrap();
        assert_eq!(parsed, manifest);
        assert_eq!(parsed.layer_order, "bottom-to-top");
        assert_eq!((parsed.width, parsed.height), (150, 5));
        assert_eq!(parsed.layers[2].name, "Ünïcødé 层 ☀");
        assert_eq!(parsed.layers[1].position, 2);
        assert_eq!(parsed.layers[1].opacity, 0.4);
        assert!(!parsed.layers[2].visible);
        assert_eq!(parsed.run.unwrap()["seed"], 42);
        assert_eq!(parsed.tree, None, "a flat stack has no tree");
    }

    #[test]
    fn groups_are_a_tree_in_the_manifest() {
        let fx = Fixture::new();
        let (bytes, _) = build_zip(&fx.grouped()).unwrap();
        let mut archive = ::zip::ZipArchive::new(Cursor::new(bytes)).unwrap();
        let json: serde_json::Value = serde_json::from_reader(archive.by_name("manifest.json").unwrap()).unwrap();
        assert_eq!(
            json["tree"],
            serde_json::json!([
                {"layer": 1},
                {"group": "Outer ☀", "visible": true, "opacity": 0.5, "children": [
                    {"layer": 2},
                    {"group": "Inner <b>", "visible": false, "opacity": 1.0, "children": [{"layer": 3}]}
                ]}
            ])
        );
        // The flat list stays as it was, and the tree reads back.
        assert_eq!(json["layers"].as_array().unwrap().len(), 3);
        let parsed: Manifest = serde_json::from_value(json).unwrap();
        assert!(matches!(&parsed.tree.unwrap()[1], ManifestNode::Group { children, .. } if children.len() == 2));
    }
}
