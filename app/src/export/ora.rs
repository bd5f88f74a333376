//! OpenRaster (`.ora`, draft 0.0.5, the current one), the layered format of GIMP, Krita and
//! MyPaint: a ZIP holding
//!
//! - `mimetype` — first, stored (not compressed), containing `image/openraster`, so the type is
//!   readable at a fixed offset;
//! - `stack.xml` — `<image w h version>` with one `<stack>` whose `<layer>`s are listed **top
//!   first** (the specification's order; our documents are bottom first), each with `name`,
//!   `src`, `x`, `y`, `opacity`, `visibility` (`visible`/`hidden`) and `composite-op`; a group
//!   is a nested `<stack>` with its name, opacity and visibility;
//! - `data/NN.png` — one full-canvas PNG per layer;
//! - `mergedimage.png` — the flattened composite, and `Thumbnails/thumbnail.png` — the same at
//!   most 256 pixels on its longer side;
//! - `qwen-layers.json` — the run's record, when known (readers ignore files they don't know).

use std::io::{Cursor, Write};

use ::zip::write::SimpleFileOptions;

use super::{xml_escape, Document, ExportError};

/// The longest side of `Thumbnails/thumbnail.png`.
pub const THUMBNAIL_MAX: u32 = 256;

/// Builds the OpenRaster file.
pub fn build(doc: &Document<'_>) -> Result<Vec<u8>, ExportError> {
    doc.check()?;
    let mut zip = ::zip::ZipWriter::new(Cursor::new(Vec::new()));
    let stored = SimpleFileOptions::default().compression_method(::zip::CompressionMethod::Stored);
    let deflated = SimpleFileOptions::default().compression_method(::zip::CompressionMethod::Deflated);
    zip.start_file("mimetype", stored)?;
    zip.write_all(b"image/openraster")?;
    zip.start_file("stack.xml", deflated)?;
    zip.write_all(stack_xml(doc)?.as_bytes())?;
    for i in 0..doc.layers.len() {
        zip.start_file(layer_src(i), stored)?;
        zip.write_all(&doc.layer_png(i)?)?;
    }
    zip.start_file("mergedimage.png", stored)?;
    zip.write_all(&doc.composite_png()?)?;
    zip.start_file("Thumbnails/thumbnail.png", stored)?;
    zip.write_all(&thumbnail(doc)?)?;
    if let Some(run) = &doc.run {
        zip.start_file("qwen-layers.json", deflated)?;
        zip.write_all(&serde_json::to_vec_pretty(run)?)?;
    }
    Ok(zip.finish()?.into_inner())
}

/// Where layer `index` (0 = bottom) is stored.
fn layer_src(index: usize) -> String {
    format!("data/layer-{:02}.png", index + 1)
}

fn unit_opacity(opacity: f32) -> f32 {
    if opacity.is_finite() {
        opacity.clamp(0.0, 1.0)
    } else {
        1.0
    }
}

fn visibility(visible: bool) -> &'static str {
    if visible {
        "visible"
    } else {
        "hidden"
    }
}

/// `nodes` (bottom first) as `<layer>`s and nested `<stack>`s, top first.
fn push_nodes(doc: &Document<'_>, nodes: &[super::Node], xml: &mut String) {
    for node in nodes.iter().rev() {
        match node {
            super::Node::Layer(i) => {
                let layer = &doc.layers[*i];
                xml.push_str(&format!(
                    "<layer name=\"{}\" src=\"{}\" x=\"0\" y=\"0\" opacity=\"{}\" visibility=\"{}\" composite-op=\"svg:src-over\"/>\n",
                    xml_escape(layer.name),
                    layer_src(*i),
                    unit_opacity(layer.opacity),
                    visibility(layer.visible),
                ));
            }
            // A group is a nested stack (OpenRaster's groups, which GIMP and Krita read as such).
            super::Node::Group(g, children) => {
                let group = &doc.groups[*g];
                xml.push_str(&format!(
                    "<stack name=\"{}\" x=\"0\" y=\"0\" opacity=\"{}\" visibility=\"{}\" composite-op=\"svg:src-over\" isolation=\"isolate\">\n",
                    xml_escape(group.name),
                    unit_opacity(group.opacity),
                    visibility(group.visible),
                ));
                push_nodes(doc, children, xml);
                xml.push_str("</stack>\n");
            }
        }
    }
}

fn stack_xml(doc: &Document<'_>) -> Result<String, ExportError> {
    let mut xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<image version=\"0.0.5\" w=\"{}\" h=\"{}\" xres=\"72\" yres=\"72\">\n<stack>\n",
        doc.width, doc.height
    );
    push_nodes(doc, &doc.tree()?, &mut xml);
    xml.push_str("</stack>\n</image>\n");
    Ok(xml)
}

/// The composite scaled to fit [`THUMBNAIL_MAX`] (never enlarged).
fn thumbnail(doc: &Document<'_>) -> Result<Vec<u8>, ExportError> {
    let (w, h) = (doc.width, doc.height);
    if w <= THUMBNAIL_MAX && h <= THUMBNAIL_MAX {
        return doc.composite_png().map(|p| p.into_owned());
    }
    let scale = f64::from(THUMBNAIL_MAX) / f64::from(w.max(h));
    let tw = ((f64::from(w) * scale).round() as u32).clamp(1, THUMBNAIL_MAX);
    let th = ((f64::from(h) * scale).round() as u32).clamp(1, THUMBNAIL_MAX);
    let img = image::RgbaImage::from_raw(w, h, doc.composite.to_vec())
        .ok_or_else(|| ExportError("the composite does not match the image size".into()))?;
    let small = image::imageops::resize(&img, tw, th, image::imageops::FilterType::Triangle);
    crate::image_data::encode_png(&small).map_err(|e| ExportError(e.error))
}

#[cfg(test)]
mod tests {
    use super::super::testing::{decode_png, Fixture};
    use super::super::{export, Format};
    use super::*;
    use std::io::Read;

    fn read(archive: &mut ::zip::ZipArchive<Cursor<Vec<u8>>>, name: &str) -> Vec<u8> {
        let mut v = Vec::new();
        archive.by_name(name).unwrap().read_to_end(&mut v).unwrap();
        v
    }

    #[test]
    fn mimetype_comes_first_and_stored() {
        let fx = Fixture::new();
        let bytes = export(&fx.document(), Format::Ora).unwrap();
        // The first local file header: name at offset 30, no extra field, data right after it.
        assert_eq!(&bytes[..4], b"PK\x03\x04");
        assert_eq!(u16::from_le_bytes([bytes[8], bytes[9]]), 0, "stored");
        assert_eq!(u16::from_le_bytes([bytes[26], bytes[27]]), 8, "name length");
        assert_eq!(u16::from_le_bytes([bytes[28], bytes[29]]), 0, "no extra field");
        assert_eq!(&bytes[30..38], b"mimetype");
        assert_eq!(&bytes[38..54], b"image/openraster");
        let mut archive = ::zip::ZipArchive::new(Cursor::new(bytes)).unwrap();
        let first = archive.by_index(0).unwrap();
        assert_eq!(first.name().unwrap(), "mimetype");
        assert_eq!(first.compression(), ::zip::CompressionMethod::Stored);
    }

    #[test]
    fn stack_lists_layers_top_first_with_their_state_and_pixels() {
        let fx = Fixture::new();
        let bytes = export(&fx.document(), Format::Ora).unwrap();
        let mut archive = ::zip::ZipArchive::new(Cursor::new(bytes)).unwrap();
        let xml = String::from_utf8(read(&mut archive, "stack.xml")).unwrap();
        let tree = roxmltree::Document::parse(&xml).unwrap();
        let image = tree.root_element();
        assert_eq!(image.tag_name().name(), "image");
        assert_eq!((image.attribute("w"), image.attribute("h")), (Some("150"), Some("5")));
        assert!(image.attribute("version").is_some());
        let stack = image.children().find(|n| n.has_tag_name("stack")).unwrap();
        let layers: Vec<_> = stack.children().filter(|n| n.is_element()).collect();
        assert_eq!(layers.len(), 3);
        for (k, layer) in layers.iter().enumerate() {
            let i = 2 - k; // top first
            assert!(layer.has_tag_name("layer"));
            assert_eq!(layer.attribute("name"), Some(fx.names[i].as_str()));
            let expected = if fx.visible[i] { "visible" } else { "hidden" };
            assert_eq!(layer.attribute("visibility"), Some(expected));
            let opacity: f32 = layer.attribute("opacity").unwrap().parse().unwrap();
            assert_eq!(opacity, fx.opacity[i]);
            assert_eq!((layer.attribute("x"), layer.attribute("y")), (Some("0"), Some("0")));
            let png = read(&mut archive, layer.attribute("src").unwrap());
            assert_eq!(decode_png(&png).into_raw(), fx.pixels[i], "layer {i}'s pixels");
        }
        assert_eq!(
            decode_png(&read(&mut archive, "mergedimage.png")).into_raw(),
            fx.composite
        );
        assert_eq!(
            decode_png(&read(&mut archive, "Thumbnails/thumbnail.png")).into_raw(),
            fx.composite,
            "small images are their own thumbnail"
        );
        let run: serde_json::Value = serde_json::from_slice(&read(&mut archive, "qwen-layers.json")).unwrap();
        assert_eq!(run["seed"], 42);
    }

    #[test]
    fn groups_are_nested_stacks_top_first() {
        let fx = Fixture::new();
        let bytes = export(&fx.grouped(), Format::Ora).unwrap();
        let mut archive = ::zip::ZipArchive::new(Cursor::new(bytes)).unwrap();
        let xml = String::from_utf8(read(&mut archive, "stack.xml")).unwrap();
        let tree = roxmltree::Document::parse(&xml).unwrap();
        let root = tree
            .root_element()
            .children()
            .find(|n| n.has_tag_name("stack"))
            .unwrap();
        fn elements<'a, 'i>(n: roxmltree::Node<'a, 'i>) -> Vec<roxmltree::Node<'a, 'i>> {
            n.children().filter(|c| c.is_element()).collect()
        }
        // Top first: the "Outer" group (holding layers 2 and 3), then layer 1.
        let top = elements(root);
        assert_eq!(top.len(), 2);
        assert!(top[0].has_tag_name("stack") && top[1].has_tag_name("layer"));
        assert_eq!(top[0].attribute("name"), Some("Outer ☀"));
        assert_eq!(top[0].attribute("opacity"), Some("0.5"));
        assert_eq!(top[0].attribute("visibility"), Some("visible"));
        assert_eq!(top[1].attribute("name"), Some("Layer 1"));
        let outer = elements(top[0]);
        assert_eq!(outer.len(), 2);
        assert_eq!(
            outer[0].attribute("name"),
            Some("Inner <b>"),
            "the nested group is above layer 2"
        );
        assert_eq!(outer[0].attribute("visibility"), Some("hidden"));
        assert_eq!(outer[1].attribute("name"), Some(fx.names[1].as_str()));
        let inner = elements(outer[0]);
        assert_eq!(inner.len(), 1);
        assert_eq!(inner[0].attribute("name"), Some(fx.names[2].as_str()));
        // Every layer's pixels are where its src says.
        for (node, i) in [(inner[0], 2), (outer[1], 1), (top[1], 0)] {
            let png = read(&mut archive, node.attribute("src").unwrap());
            assert_eq!(decode_png(&png).into_raw(), fx.pixels[i], "layer {i}");
        }
    }

    #[test]
    fn the_thumbnail_fits_256_pixels() {
        let fx = Fixture::sized(600, 300);
        let bytes = export(&fx.document(), Format::Ora).unwrap();
        let mut archive = ::zip::ZipArchive::new(Cursor::new(bytes)).unwrap();
        let thumb = decode_png(&read(&mut archive, "Thumbnails/thumbnail.png"));
        assert_eq!(thumb.dimensions(), (256, 128));
        let merged = decode_png(&read(&mut archive, "mergedimage.png"));
        assert_eq!(merged.dimensions(), (600, 300));
    }
}
