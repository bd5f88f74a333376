//! Exports a layer stack to the files other tools open. Pure Rust, so the browser (WASM) builds
//! the same bytes locally that the server and the CLI write.
//!
//! Every format takes one [`Document`]: the layers in stack order (**bottom first**) with their
//! name, visibility, opacity and straight-alpha RGBA8 pixels, the flattened composite, and the
//! run's record where the format has room for it.
//!
//! - [`zip`]: a ZIP of PNGs (composite + one per layer) and `manifest.json`.
//! - [`psd`]: Adobe Photoshop, layered, 8-bit RGB + transparency, with the merged image.
//! - [`ora`]: OpenRaster (GIMP, Krita, MyPaint): a ZIP with `stack.xml` and PNGs.
//! - [`pptx`]: PowerPoint: one slide, one full-slide picture per layer, bottom first.
//! - [`Format::Png`]: the flattened composite alone.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

pub mod ora;
pub mod pptx;
pub mod psd;
pub mod zip;

pub use self::zip::{build_zip, Manifest, ManifestLayer, ManifestNode};

/// One layer as exported.
#[derive(Debug, Clone, Copy)]
pub struct Layer<'a> {
    pub name: &'a str,
    pub visible: bool,
    /// Opacity multiplier in [0, 1] (values outside are clamped).
    pub opacity: f32,
    /// Straight-alpha RGBA8, `width × height × 4` bytes.
    pub rgba: &'a [u8],
    /// The same pixels already encoded as PNG, when the caller has them (saves re-encoding).
    pub png: Option<&'a [u8]>,
}

/// A group of layers (e.g. a layer decomposed again into sub-layers): a PSD group, an OpenRaster
/// nested stack, a node of the ZIP manifest's `tree`; PowerPoint flattens it into its pictures.
#[derive(Debug, Clone)]
pub struct Group<'a> {
    pub name: &'a str,
    pub visible: bool,
    /// Opacity multiplier in [0, 1] for everything in the group.
    pub opacity: f32,
    /// The layers it holds: indices into [`Document::layers`], bottom first. Two groups' ranges
    /// are nested or apart, never overlapping.
    pub layers: std::ops::Range<usize>,
}

/// The stack as a tree, bottom first: layers and groups of nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// An index into [`Document::layers`].
    Layer(usize),
    /// An index into [`Document::groups`] and what it holds.
    Group(usize, Vec<Node>),
}

/// What every format is built from.
#[derive(Debug, Clone)]
pub struct Document<'a> {
    pub width: u32,
    pub height: u32,
    /// Stack order, bottom first (`layers[0]` is drawn first).
    pub layers: Vec<Layer<'a>>,
    /// Groups over ranges of `layers` (none: a flat stack).
    pub groups: Vec<Group<'a>>,
    /// The flattened image (visible layers, opacity applied), straight-alpha RGBA8.
    pub composite: &'a [u8],
    /// The composite as PNG, when the caller has it.
    pub composite_png: Option<&'a [u8]>,
    /// The run that produced the layers (seed, parameters, model, timings), when known.
    pub run: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("export failed: {0}")]
pub struct ExportError(pub String);

impl From<::zip::result::ZipError> for ExportError {
    fn from(e: ::zip::result::ZipError) -> Self {
        Self(e.to_string())
    }
}

impl From<std::io::Error> for ExportError {
    fn from(e: std::io::Error) -> Self {
        Self(e.to_string())
    }
}

impl From<serde_json::Error> for ExportError {
    fn from(e: serde_json::Error) -> Self {
        Self(e.to_string())
    }
}

/// Name of the program in files that record who wrote them.
pub const CREATOR: &str = "Qwen Layers";

impl<'a> Document<'a> {
    /// Checks that the size is non-zero and every image holds `width × height` RGBA pixels.
    pub fn check(&self) -> Result<(), ExportError> {
        if self.width == 0 || self.height == 0 {
            return Err(ExportError(format!("the image is {}×{}", self.width, self.height)));
        }
        let expected = self.width as usize * self.height as usize * 4;
        let wrong = |what: &str, got: usize| {
            ExportError(format!(
                "{what} has {got} bytes, expected {expected} ({}×{} RGBA)",
                self.width, self.height
            ))
        };
        if self.composite.len() != expected {
            return Err(wrong("the composite", self.composite.len()));
        }
        for layer in &self.layers {
            if layer.rgba.len() != expected {
                return Err(wrong(&format!("layer \"{}\"", layer.name), layer.rgba.len()));
            }
        }
        self.tree().map(|_| ())
    }

    /// The stack as a tree, bottom first; an error names a group that is empty, reaches past
    /// the layers or overlaps another without holding it.
    pub fn tree(&self) -> Result<Vec<Node>, ExportError> {
        let n = self.layers.len();
        for g in &self.groups {
            if g.layers.is_empty() || g.layers.end > n {
                return Err(ExportError(format!(
                    "group \"{}\" holds layers {:?} of {n}",
                    g.name, g.layers
                )));
            }
            for other in &self.groups {
                let (a, b) = (&g.layers, &other.layers);
                let overlap = a.start < b.end && b.start < a.end;
                let nested = (a.start <= b.start && b.end <= a.end) || (b.start <= a.start && a.end <= b.end);
                if overlap && !nested {
                    return Err(ExportError(format!(
                        "groups \"{}\" and \"{}\" overlap",
                        g.name, other.name
                    )));
                }
            }
        }
        // Outer groups first: by start, then the longer range, then their order in `groups`.
        let mut order: Vec<usize> = (0..self.groups.len()).collect();
        order.sort_by_key(|&i| {
            (
                self.groups[i].layers.start,
                std::cmp::Reverse(self.groups[i].layers.end),
                i,
            )
        });
        let mut used = vec![false; self.groups.len()];
        Ok(self.subtree(0..n, &order, &mut used))
    }

    fn subtree(&self, range: std::ops::Range<usize>, order: &[usize], used: &mut [bool]) -> Vec<Node> {
        let mut nodes = Vec::new();
        let mut i = range.start;
        while i < range.end {
            let outer = order
                .iter()
                .copied()
                .find(|&g| !used[g] && self.groups[g].layers.start == i && self.groups[g].layers.end <= range.end);
            match outer {
                Some(g) => {
                    used[g] = true;
                    let inner = self.subtree(self.groups[g].layers.clone(), order, used);
                    nodes.push(Node::Group(g, inner));
                    i = self.groups[g].layers.end;
                }
                None => {
                    nodes.push(Node::Layer(i));
                    i += 1;
                }
            }
        }
        nodes
    }

    /// Whether layer `index` shows, and its opacity, once the groups holding it are applied
    /// (for formats without groups).
    pub fn effective(&self, index: usize) -> (bool, f32) {
        let layer = &self.layers[index];
        self.groups
            .iter()
            .filter(|g| g.layers.contains(&index))
            .fold((layer.visible, layer.opacity), |(v, o), g| {
                (v && g.visible, o * g.opacity)
            })
    }

    /// A layer's PNG: the caller's, or encoded now.
    pub fn layer_png(&self, index: usize) -> Result<Cow<'a, [u8]>, ExportError> {
        let layer = &self.layers[index];
        match layer.png {
            Some(png) => Ok(Cow::Borrowed(png)),
            None => encode_png(self.width, self.height, layer.rgba).map(Cow::Owned),
        }
    }

    /// The composite's PNG: the caller's, or encoded now.
    pub fn composite_png(&self) -> Result<Cow<'a, [u8]>, ExportError> {
        match self.composite_png {
            Some(png) => Ok(Cow::Borrowed(png)),
            None => encode_png(self.width, self.height, self.composite).map(Cow::Owned),
        }
    }

    /// The run as one line of text (`prompt: …; seed: 42; …`) for a format's description field.
    pub fn run_summary(&self) -> Option<String> {
        let run = self.run.as_ref()?.as_object()?;
        let parts: Vec<String> = run
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => format!("{k}: {s}"),
                other => format!("{k}: {other}"),
            })
            .collect();
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

fn encode_png(width: u32, height: u32, rgba: &[u8]) -> Result<Vec<u8>, ExportError> {
    let img = image::RgbaImage::from_raw(width, height, rgba.to_vec())
        .ok_or_else(|| ExportError(format!("{} bytes are not a {width}×{height} RGBA image", rgba.len())))?;
    crate::image_data::encode_png(&img).map_err(|e| ExportError(e.error))
}

/// Escapes text for XML content and attribute values.
pub(crate) fn xml_escape(text: &str) -> Cow<'_, str> {
    if !text.contains(['&', '<', '>', '"', '\'']) && !text.chars().any(is_xml_invalid) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters other than tab/newline are not allowed in XML 1.0 at all.
            c if is_xml_invalid(c) => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn is_xml_invalid(c: char) -> bool {
    (c < ' ' && !matches!(c, '\t' | '\n' | '\r')) || matches!(c, '\u{FFFE}' | '\u{FFFF}')
}

/// The export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// PNGs + manifest.json in a ZIP.
    Zip,
    /// Adobe Photoshop.
    Psd,
    /// OpenRaster.
    Ora,
    /// PowerPoint.
    Pptx,
    /// The flattened composite as one PNG.
    Png,
}

impl Format {
    pub const ALL: [Format; 5] = [Format::Zip, Format::Psd, Format::Ora, Format::Pptx, Format::Png];

    /// File extension, also the name used on command lines.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Zip => "zip",
            Format::Psd => "psd",
            Format::Ora => "ora",
            Format::Pptx => "pptx",
            Format::Png => "png",
        }
    }

    pub fn mime(self) -> &'static str {
        match self {
            Format::Zip => "application/zip",
            Format::Psd => "image/vnd.adobe.photoshop",
            Format::Ora => "image/openraster",
            Format::Pptx => "application/vnd.openxmlformats-officedocument.presentationml.presentation",
            Format::Png => "image/png",
        }
    }

    /// What a button or a list calls it.
    pub fn label(self) -> &'static str {
        match self {
            Format::Zip => "ZIP",
            Format::Psd => "PSD",
            Format::Ora => "ORA",
            Format::Pptx => "PPTX",
            Format::Png => "flattened PNG",
        }
    }

    /// The format a file name's extension names (`layers.psd` → PSD).
    pub fn from_path(path: &str) -> Option<Format> {
        let ext = path.rsplit_once('.')?.1;
        ext.parse().ok()
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.extension())
    }
}

impl FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim().to_ascii_lowercase();
        Format::ALL.into_iter().find(|f| f.extension() == s).ok_or_else(|| {
            let names: Vec<&str> = Format::ALL.iter().map(|f| f.extension()).collect();
            format!("unknown export format \"{s}\" (one of {})", names.join(", "))
        })
    }
}

/// Builds the file of `format` from `doc`.
pub fn export(doc: &Document<'_>, format: Format) -> Result<Vec<u8>, ExportError> {
    doc.check()?;
    match format {
        Format::Zip => zip::build(doc).map(|(bytes, _)| bytes),
        Format::Psd => psd::build(doc),
        Format::Ora => ora::build(doc),
        Format::Pptx => pptx::build(doc),
        Format::Png => doc.composite_png().map(Cow::into_owned),
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! A small document with awkward content for every format's tests.

    use super::*;

    /// Three 37×5 layers, bottom first: an opaque gradient, a half-transparent object with holes
    /// and colour under transparent pixels, and a hidden layer with a Unicode name that is
    /// transparent except for one corner. Rows longer than 128 bytes, runs and noise exercise
    /// both PackBits branches.
    pub struct Fixture {
        pub width: u32,
        pub height: u32,
        pub pixels: Vec<Vec<u8>>,
        pub names: Vec<String>,
        pub visible: Vec<bool>,
        pub opacity: Vec<f32>,
        pub composite: Vec<u8>,
    }

    impl Fixture {
        pub fn new() -> Self {
            Self::sized(150, 5)
        }

        pub fn sized(width: u32, height: u32) -> Self {
            let (w, h) = (width as usize, height as usize);
            let mut seed = 0x2545_f491_u32;
            let mut noise = move || {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                seed as u8
            };
            let mut bottom = Vec::with_capacity(w * h * 4);
            let mut middle = Vec::with_capacity(w * h * 4);
            let mut top = vec![0u8; w * h * 4];
            for y in 0..h {
                for x in 0..w {
                    bottom.extend_from_slice(&[(x * 255 / w) as u8, (y * 40) as u8, 200, 255]);
                    let inside = x >= 3 && x < w - 4 && y >= 1;
                    let alpha = if inside && x % 7 != 0 { noise() | 1 } else { 0 };
                    // Colour under transparent pixels stays in the file: an editor may use it.
                    middle.extend_from_slice(&[noise(), 9, if inside { 250 } else { 0 }, alpha]);
                }
            }
            for y in 0..2.min(h) {
                for x in (w - 3)..w {
                    top[(y * w + x) * 4..][..4].copy_from_slice(&[255, 255, 0, 255]);
                }
            }
            let pixels = vec![bottom, middle, top];
            let opacity = vec![1.0, 0.4, 1.0];
            let visible = vec![true, true, false];
            let layers: Vec<crate::compose::LayerPixels<'_>> = pixels
                .iter()
                .zip(&opacity)
                .zip(&visible)
                .filter(|(_, v)| **v)
                .map(|((p, o), _)| crate::compose::LayerPixels { rgba: p, opacity: *o })
                .collect();
            let mut composite = vec![0; w * h * 4];
            crate::compose::Compositor::default()
                .composite_into(width, height, &layers, &mut composite)
                .unwrap();
            Self {
                width,
                height,
                pixels,
                names: vec!["Layer 1".into(), "Sky & \"sun\" <1>".into(), "Ünïcødé 层 ☀".into()],
                visible,
                opacity,
                composite,
            }
        }

        pub fn document(&self) -> Document<'_> {
            Document {
                width: self.width,
                height: self.height,
                layers: (0..self.pixels.len())
                    .map(|i| Layer {
                        name: &self.names[i],
                        visible: self.visible[i],
                        opacity: self.opacity[i],
                        rgba: &self.pixels[i],
                        png: None,
                    })
                    .collect(),
                groups: Vec::new(),
                composite: &self.composite,
                composite_png: None,
                run: Some(serde_json::json!({"prompt": "a cat & a <sofa>", "seed": 42, "steps": 2})),
            }
        }

        /// The document with groups: "Outer ☀" (half opaque) holds the top two layers and,
        /// nested in it, the hidden "Inner <b>" holds the top one.
        pub fn grouped(&self) -> Document<'_> {
            let mut doc = self.document();
            doc.groups = vec![
                Group {
                    name: "Inner <b>",
                    visible: false,
                    opacity: 1.0,
                    layers: 2..3,
                },
                Group {
                    name: "Outer ☀",
                    visible: true,
                    opacity: 0.5,
                    layers: 1..3,
                },
            ];
            doc
        }
    }

    pub fn decode_png(bytes: &[u8]) -> image::RgbaImage {
        crate::image_data::decode_image_bytes(bytes, u64::MAX).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::Fixture;
    use super::*;

    #[test]
    fn formats_parse_from_names_and_paths() {
        for f in Format::ALL {
            assert_eq!(f.extension().parse::<Format>(), Ok(f));
            assert_eq!(Format::from_path(&format!("out/layers.{}", f.extension())), Some(f));
        }
        assert_eq!(" PSD ".parse::<Format>(), Ok(Format::Psd));
        let err = "tiff".parse::<Format>().unwrap_err();
        assert!(err.contains("zip, psd, ora, pptx, png"), "{err}");
        assert_eq!(Format::from_path("noextension"), None);
    }

    #[test]
    fn a_wrong_sized_layer_is_refused_by_name() {
        let fx = Fixture::new();
        let mut doc = fx.document();
        doc.layers[1].rgba = &doc.layers[1].rgba[4..];
        for f in Format::ALL {
            let err = export(&doc, f).unwrap_err();
            assert!(
                err.0
                    .contains("layer \"Sky & \"sun\" <1>\" has 2996 bytes, expected 3000 (150×5 RGBA)"),
                "{f}: {err}"
            );
        }
    }

    #[test]
    fn groups_become_a_tree_and_bad_ones_are_refused() {
        let fx = Fixture::new();
        let doc = fx.grouped();
        assert_eq!(
            doc.tree().unwrap(),
            [
                Node::Layer(0),
                Node::Group(1, vec![Node::Layer(1), Node::Group(0, vec![Node::Layer(2)])])
            ]
        );
        assert_eq!(
            fx.document().tree().unwrap(),
            [Node::Layer(0), Node::Layer(1), Node::Layer(2)]
        );
        // Visibility and opacity through the groups: "Inner" is hidden, "Outer" at 50 %.
        assert_eq!(doc.effective(0), (true, 1.0));
        assert_eq!(doc.effective(1), (true, 0.2));
        assert_eq!(doc.effective(2), (false, 0.5));
        let mut bad = fx.grouped();
        bad.groups[0].layers = 0..2; // overlaps 1..3 without holding it
        let err = export(&bad, Format::Psd).unwrap_err();
        assert!(err.0.contains("overlap"), "{err}");
        bad.groups[0].layers = 2..2;
        assert!(bad.check().unwrap_err().0.contains("holds layers 2..2 of 3"));
        bad.groups[0].layers = 2..4;
        assert!(bad.check().is_err());
    }

    #[test]
    fn png_export_is_the_composite() {
        let fx = Fixture::new();
        let png = export(&fx.document(), Format::Png).unwrap();
        assert_eq!(testing::decode_png(&png).into_raw(), fx.composite);
    }

    /// Writes the fixture in every format, with what a reader should find, for the manual check
    /// by other tools (`tests/export_check.py`: psd-tools, python-pptx). Run with
    /// `EXPORT_SAMPLES_DIR=target/export-samples cargo test -p app --lib -- --ignored export_samples`.
    #[test]
    #[ignore = "writes files for tests/export_check.py"]
    fn export_samples() {
        let dir = std::path::PathBuf::from(
            std::env::var("EXPORT_SAMPLES_DIR").unwrap_or_else(|_| "../target/export-samples".into()),
        );
        std::fs::create_dir_all(&dir).unwrap();
        let fx = Fixture::sized(320, 180);
        let doc = fx.document();
        for f in Format::ALL {
            std::fs::write(dir.join(format!("layers.{f}")), export(&doc, f).unwrap()).unwrap();
        }
        for i in 0..doc.layers.len() {
            std::fs::write(dir.join(format!("layer-{}.png", i + 1)), doc.layer_png(i).unwrap()).unwrap();
        }
        let expected = serde_json::json!({
            "width": fx.width,
            "height": fx.height,
            "layers": (0..fx.names.len()).map(|i| serde_json::json!({
                "name": fx.names[i],
                "visible": fx.visible[i],
                "opacity": fx.opacity[i],
                "png": format!("layer-{}.png", i + 1),
            })).collect::<Vec<_>>(),
            "composite": "layers.png",
        });
        std::fs::write(dir.join("expected.json"), serde_json::to_vec_pretty(&expected).unwrap()).unwrap();
    }

    #[test]
    fn xml_text_is_escaped() {
        assert_eq!(xml_escape("plain"), "plain");
        assert_eq!(xml_escape("a<b>&\"c'\u{1}"), "a&lt;b&gt;&amp;&quot;c&apos;\u{FFFD}");
    }

    #[test]
    fn the_run_becomes_one_line() {
        let fx = Fixture::new();
        assert_eq!(
            fx.document().run_summary().as_deref(),
            Some("prompt: a cat & a <sofa>; seed: 42; steps: 2")
        );
    }
}
