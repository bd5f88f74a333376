//! Adobe Photoshop document (PSD, version 1) writer, following Adobe's "Photoshop File Formats
//! Specification". All integers are big-endian. The file is:
//!
//! 1. **Header**: `8BPS`, version 1, six zero bytes, 4 channels (R, G, B and the merged image's
//!    transparency), height, width, depth 8, colour mode 3 (RGB).
//! 2. **Colour mode data**: empty (only indexed and duotone images have any).
//! 3. **Image resources**: ResolutionInfo (1005: 72 dpi) and XMP metadata (1060: the creator
//!    tool and, when known, the run as the description).
//! 4. **Layer and mask information**: the layer info (a *negative* layer count, which says the
//!    merged image's first alpha channel is its transparency; one record per layer, bottom
//!    first, as Photoshop stores them; then every layer's channel data), an empty global layer
//!    mask info. A record holds the layer's bounds (cropped to its non-transparent pixels, as
//!    Photoshop does), its channels (transparency −1, then red 0, green 1, blue 2), blend mode
//!    `norm`, opacity, flags (bit 1 set = hidden, bit 3 = "bit 4 is meaningful"), empty mask and
//!    blending-range data, the name as a Pascal string (ASCII, at most 31 bytes, padded to a
//!    multiple of 4) and the full name in a `luni` block (UTF-16). A group is two more records
//!    around its layers, as Photoshop writes them: below, a "bounding section divider"
//!    (`</Layer group>`, `lsct` type 3); above, the folder (`lsct` type 1, open, blend `pass`)
//!    with the group's name; both carry its visibility and opacity.
//! 5. **Image data**: the composite, channel by channel, so viewers without layer support show
//!    it. Like Photoshop (and GIMP), the colour channels of a transparent composite are matted
//!    against white; the fourth channel holds the alpha.
//!
//! Channel data is PackBits RLE (per-row byte counts, then the rows), or raw where that is
//! smaller (noise does not compress).

use super::{xml_escape, Document, ExportError, CREATOR};

/// Photoshop's limit for PSD (PSB goes further) on either side.
pub const MAX_SIDE: u32 = 30_000;

const COMPRESSION_RAW: u16 = 0;
const COMPRESSION_RLE: u16 = 1;

/// A layer's channels in the order Photoshop writes them: (channel id, byte within an RGBA pixel).
const LAYER_CHANNELS: [(i16, usize); 4] = [(-1, 3), (0, 0), (1, 1), (2, 2)];

/// Layer flag bit 1. The specification's table calls it "visible", but Photoshop sets it for
/// *hidden* layers, and every reader and writer follows Photoshop (GIMP, Krita, psd-tools).
const FLAG_HIDDEN: u8 = 1 << 1;
/// Layer flag bit 3: "bit 4 has useful information" (bit 4, "pixel data irrelevant", is 0).
const FLAG_BIT4_USEFUL: u8 = 1 << 3;

/// Builds the PSD file.
pub fn build(doc: &Document<'_>) -> Result<Vec<u8>, ExportError> {
    let (width, height) = (doc.width, doc.height);
    if width > MAX_SIDE || height > MAX_SIDE {
        return Err(ExportError(format!(
            "a PSD is at most {MAX_SIDE} pixels on each side; the image is {width}×{height}"
        )));
    }
    doc.check()?;
    if doc.layers.len() > i16::MAX as usize {
        return Err(ExportError(format!("a PSD holds at most {} layers", i16::MAX)));
    }

    let mut out = Out(Vec::with_capacity(
        doc.composite.len() * (doc.layers.len() + 1) / 2 + 1024,
    ));
    // 1. Header.
    out.bytes(b"8BPS");
    out.u16(1);
    out.bytes(&[0; 6]);
    out.u16(4);
    out.u32(height);
    out.u32(width);
    out.u16(8);
    out.u16(3);
    // 2. Colour mode data.
    out.u32(0);
    // 3. Image resources.
    out.section(&image_resources(doc));
    // 4. Layer and mask information.
    out.section(&layer_and_mask_information(doc)?);
    // 5. Image data: the merged composite.
    merged_image(doc, &mut out);
    Ok(out.0)
}

/// Big-endian writer.
struct Out(Vec<u8>);

impl Out {
    fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.bytes(&v.to_be_bytes());
    }
    fn i16(&mut self, v: i16) {
        self.bytes(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.bytes(&v.to_be_bytes());
    }
    /// A length-prefixed (u32) block.
    fn section(&mut self, body: &[u8]) {
        self.u32(body.len() as u32);
        self.bytes(body);
    }
    /// Zero bytes until the length is a multiple of `n`, counting from `start`.
    fn pad(&mut self, start: usize, n: usize) {
        while !(self.0.len() - start).is_multiple_of(n) {
            self.0.push(0);
        }
    }
}

fn image_resources(doc: &Document<'_>) -> Vec<u8> {
    let mut out = Out(Vec::new());
    // ResolutionInfo: horizontal and vertical resolution as 16.16 fixed point in pixels per inch
    // (unit 1), each followed by the unit used to display width/height (1 = inches).
    let mut resolution = Out(Vec::new());
    for _ in 0..2 {
        resolution.u32(72 << 16);
        resolution.u16(1);
        resolution.u16(1);
    }
    resource(&mut out, 1005, &resolution.0);
    resource(&mut out, 1060, xmp(doc).as_bytes());
    out.0
}

/// One image resource block: `8BIM`, id, an empty Pascal name (padded to even), the data size
/// and the data padded to even.
fn resource(out: &mut Out, id: u16, data: &[u8]) {
    out.bytes(b"8BIM");
    out.u16(id);
    out.bytes(&[0, 0]);
    out.u32(data.len() as u32);
    let start = out.0.len();
    out.bytes(data);
    out.pad(start, 2);
}

/// An XMP packet naming the program and describing the run.
fn xmp(doc: &Document<'_>) -> String {
    let description = doc
        .run_summary()
        .map(|s| {
            format!(
                "<dc:description><rdf:Alt><rdf:li xml:lang=\"x-default\">{}</rdf:li></rdf:Alt></dc:description>",
                xml_escape(&s)
            )
        })
        .unwrap_or_default();
    format!(
        "<?xpacket begin=\"\u{feff}\" id=\"W5M0MpCehiHzreSzNTczkc9d\"?>\
<x:xmpmeta xmlns:x=\"adobe:ns:meta/\">\
<rdf:RDF xmlns:rdf=\"http://www.w3.org/1999/02/22-rdf-syntax-ns#\">\
<rdf:Description rdf:about=\"\" xmlns:xmp=\"http://ns.adobe.com/xap/1.0/\" xmlns:dc=\"http://purl.org/dc/elements/1.1/\">\
<xmp:CreatorTool>{CREATOR}</xmp:CreatorTool>{description}\
</rdf:Description></rdf:RDF></x:xmpmeta>\
<?xpacket end=\"w\"?>"
    )
}

/// The smallest rectangle holding every pixel with alpha > 0; `None` for a transparent layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bounds {
    top: u32,
    left: u32,
    /// Exclusive.
    bottom: u32,
    /// Exclusive.
    right: u32,
}

fn content_bounds(rgba: &[u8], width: u32, height: u32) -> Option<Bounds> {
    let w = width as usize;
    let mut b: Option<Bounds> = None;
    for y in 0..height {
        let row = &rgba[y as usize * w * 4..][..w * 4];
        let mut xs = row
            .chunks_exact(4)
            .enumerate()
            .filter(|(_, p)| p[3] != 0)
            .map(|(x, _)| x as u32);
        let Some(first) = xs.next() else { continue };
        let last = xs.next_back().unwrap_or(first);
        b = Some(match b {
            None => Bounds {
                top: y,
                left: first,
                bottom: y + 1,
                right: last + 1,
            },
            Some(b) => Bounds {
                top: b.top,
                left: b.left.min(first),
                bottom: y + 1,
                right: b.right.max(last + 1),
            },
        });
    }
    b
}

/// One channel's pixels inside `bounds`, row by row.
fn plane(rgba: &[u8], width: u32, bounds: Bounds, byte: usize) -> Vec<u8> {
    let w = width as usize;
    let mut out = Vec::with_capacity(((bounds.right - bounds.left) * (bounds.bottom - bounds.top)) as usize);
    for y in bounds.top as usize..bounds.bottom as usize {
        let row = &rgba[(y * w + bounds.left as usize) * 4..(y * w + bounds.right as usize) * 4];
        out.extend(row.chunks_exact(4).map(|p| p[byte]));
    }
    out
}

/// A channel compressed row by row with PackBits: the rows' byte counts and the packed rows.
struct Rle {
    counts: Vec<u16>,
    data: Vec<u8>,
}

impl Rle {
    fn new(plane: &[u8], row_len: usize) -> Self {
        let mut counts = Vec::with_capacity(plane.len() / row_len.max(1));
        let mut data = Vec::with_capacity(plane.len() / 2);
        for row in plane.chunks_exact(row_len) {
            let before = data.len();
            packbits(row, &mut data);
            // At most row_len + row_len/128 + 1 bytes, and rows are at most 30 000 pixels.
            counts.push((data.len() - before) as u16);
        }
        Self { counts, data }
    }

    /// Bytes it takes in the file (counts + data).
    fn len(&self) -> usize {
        self.counts.len() * 2 + self.data.len()
    }
}

/// PackBits (Apple TN1023, as TIFF and PSD use it): a header byte n, then n + 1 literal bytes
/// (0 ≤ n ≤ 127), or one byte repeated 1 − n times (−127 ≤ n ≤ −1). Runs of three or more
/// equal bytes are repeated; shorter ones join the literals. −128 is never written.
fn packbits(row: &[u8], out: &mut Vec<u8>) {
    fn literals(bytes: &[u8], out: &mut Vec<u8>) {
        for chunk in bytes.chunks(128) {
            out.push((chunk.len() - 1) as u8);
            out.extend_from_slice(chunk);
        }
    }
    let mut literal_start = 0;
    let mut i = 0;
    while i < row.len() {
        let run = row[i..].iter().take(128).take_while(|&&b| b == row[i]).count();
        if run >= 3 {
            literals(&row[literal_start..i], out);
            out.push((1 - run as i16) as i8 as u8);
            out.push(row[i]);
            i += run;
            literal_start = i;
        } else {
            i += run;
        }
    }
    literals(&row[literal_start..], out);
}

/// One layer channel as it follows its compression field, and the compression used.
fn encode_channel(plane: &[u8], row_len: usize) -> (u16, Vec<u8>) {
    if plane.is_empty() {
        return (COMPRESSION_RAW, Vec::new());
    }
    let rle = Rle::new(plane, row_len);
    if rle.len() < plane.len() {
        let mut data = Vec::with_capacity(rle.len());
        for c in &rle.counts {
            data.extend_from_slice(&c.to_be_bytes());
        }
        data.extend_from_slice(&rle.data);
        (COMPRESSION_RLE, data)
    } else {
        (COMPRESSION_RAW, plane.to_vec())
    }
}

/// The layer's name as a Pascal string: ASCII (anything else becomes `_`), at most 31 bytes
/// (the limit of older Photoshop versions; the full name is in `luni`), padded with zeros to a
/// multiple of 4 bytes including the length byte.
fn pascal_name(name: &str) -> Vec<u8> {
    let bytes: Vec<u8> = name
        .chars()
        .map(|c| {
            if c.is_ascii() && !c.is_ascii_control() {
                c as u8
            } else {
                b'_'
            }
        })
        .take(31)
        .collect();
    let mut out = Vec::with_capacity(32);
    out.push(bytes.len() as u8);
    out.extend_from_slice(&bytes);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
    out
}

/// The `luni` additional-layer-information block: the full name as a Unicode string (a u32 count
/// of UTF-16 code units, then the units), its length padded to a multiple of 4.
fn luni_block(name: &str, out: &mut Out) {
    let units: Vec<u16> = name.encode_utf16().collect();
    let mut data = Out(Vec::with_capacity(4 + units.len() * 2 + 2));
    data.u32(units.len() as u32);
    for u in units {
        data.u16(u);
    }
    data.pad(0, 4);
    out.bytes(b"8BIM");
    out.bytes(b"luni");
    out.section(&data.0);
}

/// Opacity in [0, 1] as the byte PSD stores (0 = transparent, 255 = opaque).
pub fn opacity_byte(opacity: f32) -> u8 {
    let o = if opacity.is_finite() {
        opacity.clamp(0.0, 1.0)
    } else {
        1.0
    };
    (o * 255.0).round() as u8
}

/// One layer record to write, bottom first: a layer's pixels, or the two records that bracket a
/// group (Photoshop's "bounding section divider" below its layers and the folder above them).
enum Record {
    Pixels(usize),
    GroupEnd(usize),
    Folder(usize),
}

fn records(nodes: &[super::Node], out: &mut Vec<Record>) {
    for node in nodes {
        match node {
            super::Node::Layer(i) => out.push(Record::Pixels(*i)),
            super::Node::Group(g, children) => {
                out.push(Record::GroupEnd(*g));
                records(children, out);
                out.push(Record::Folder(*g));
            }
        }
    }
}

/// `lsct` section divider types.
const SECTION_OPEN_FOLDER: u32 = 1;
const SECTION_BOUNDING_DIVIDER: u32 = 3;
/// The name Photoshop gives the record that closes a group.
const GROUP_END_NAME: &str = "</Layer group>";

fn layer_and_mask_information(doc: &Document<'_>) -> Result<Vec<u8>, ExportError> {
    if doc.layers.is_empty() {
        return Ok(Vec::new());
    }
    let mut list = Vec::new();
    records(&doc.tree()?, &mut list);
    let count = i16::try_from(list.len()).map_err(|_| {
        ExportError(format!(
            "{} layers and group records are more than a PSD holds",
            list.len()
        ))
    })?;
    let mut info = Out(Vec::new());
    info.i16(-count);
    let mut channel_data = Out(Vec::new());
    for record in &list {
        // Groups carry their visibility and opacity on both of their records (Photoshop reads
        // the folder's, some readers the divider's).
        let (name, visible, opacity, rgba, section) = match *record {
            Record::Pixels(i) => {
                let l = &doc.layers[i];
                (l.name, l.visible, l.opacity, Some(l.rgba), None)
            }
            Record::GroupEnd(g) => {
                let group = &doc.groups[g];
                (
                    GROUP_END_NAME,
                    group.visible,
                    group.opacity,
                    None,
                    Some(SECTION_BOUNDING_DIVIDER),
                )
            }
            Record::Folder(g) => {
                let group = &doc.groups[g];
                (
                    group.name,
                    group.visible,
                    group.opacity,
                    None,
                    Some(SECTION_OPEN_FOLDER),
                )
            }
        };
        let bounds = rgba.and_then(|rgba| content_bounds(rgba, doc.width, doc.height));
        let b = bounds.unwrap_or(Bounds {
            top: 0,
            left: 0,
            bottom: 0,
            right: 0,
        });
        info.u32(b.top);
        info.u32(b.left);
        info.u32(b.bottom);
        info.u32(b.right);
        info.u16(LAYER_CHANNELS.len() as u16);
        let row_len = (b.right - b.left) as usize;
        for (id, byte) in LAYER_CHANNELS {
            let pixels = match (bounds, rgba) {
                (Some(b), Some(rgba)) => plane(rgba, doc.width, b, byte),
                _ => Vec::new(),
            };
            let (compression, data) = encode_channel(&pixels, row_len);
            info.i16(id);
            info.u32(2 + data.len() as u32);
            channel_data.u16(compression);
            channel_data.bytes(&data);
        }
        info.bytes(b"8BIM");
        // A group folder passes its layers' blending through; layers blend normally.
        info.bytes(if section == Some(SECTION_OPEN_FOLDER) {
            b"pass"
        } else {
            b"norm"
        });
        info.u8(opacity_byte(opacity));
        info.u8(0); // clipping: base
        info.u8(FLAG_BIT4_USEFUL | if visible { 0 } else { FLAG_HIDDEN });
        info.u8(0); // filler
        let mut extra = Out(Vec::new());
        extra.u32(0); // layer mask data: none
        extra.u32(0); // layer blending ranges: none
        extra.bytes(&pascal_name(name));
        luni_block(name, &mut extra);
        if let Some(kind) = section {
            extra.bytes(b"8BIM");
            extra.bytes(b"lsct");
            extra.u32(12);
            extra.u32(kind);
            extra.bytes(b"8BIM");
            extra.bytes(if kind == SECTION_OPEN_FOLDER { b"pass" } else { b"norm" });
        }
        info.section(&extra.0);
    }
    info.bytes(&channel_data.0);
    // "Length of the layers info section, rounded up to a multiple of 2."
    info.pad(0, 2);

    let mut out = Out(Vec::with_capacity(info.0.len() + 8));
    out.section(&info.0);
    out.u32(0); // global layer mask info: none
    Ok(out.0)
}

/// Photoshop's merged colour for a transparent pixel: the colour over white.
pub fn matte_white(c: u8, a: u8) -> u8 {
    let (c, a) = (u32::from(c), u32::from(a));
    ((c * a + 255 * (255 - a) + 127) / 255) as u8
}

fn merged_image(doc: &Document<'_>, out: &mut Out) {
    let w = doc.width as usize;
    let planes: Vec<Vec<u8>> = (0..4)
        .map(|byte| {
            doc.composite
                .chunks_exact(4)
                .map(|p| if byte == 3 { p[3] } else { matte_white(p[byte], p[3]) })
                .collect()
        })
        .collect();
    let rles: Vec<Rle> = planes.iter().map(|p| Rle::new(p, w)).collect();
    let rle_len: usize = rles.iter().map(Rle::len).sum();
    if rle_len < doc.composite.len() {
        // RLE: the byte counts of every row of every channel first, then all the rows.
        out.u16(COMPRESSION_RLE);
        for rle in &rles {
            for &c in &rle.counts {
                out.u16(c);
            }
        }
        for rle in &rles {
            out.bytes(&rle.data);
        }
    } else {
        out.u16(COMPRESSION_RAW);
        for p in &planes {
            out.bytes(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::Fixture;
    use super::super::{export, Document, Format, Layer};
    use super::*;

    /// What a reader should find for a layer: the pixels inside the layer's bounds; outside them
    /// (where every pixel is transparent) nothing.
    fn expected_layer(rgba: &[u8], width: u32, height: u32) -> Vec<u8> {
        let b = content_bounds(rgba, width, height).unwrap();
        let mut out = vec![0; rgba.len()];
        for y in b.top..b.bottom {
            for x in b.left..b.right {
                let i = (y * width + x) as usize * 4;
                out[i..i + 4].copy_from_slice(&rgba[i..i + 4]);
            }
        }
        out
    }

    #[test]
    fn packbits_matches_apples_example() {
        // Apple Technical Note TN1023's example.
        let unpacked = [
            0xAA, 0xAA, 0xAA, 0x80, 0x00, 0x2A, 0xAA, 0xAA, 0xAA, 0xAA, 0x80, 0x00, 0x2A, 0x22, 0xAA, 0xAA, 0xAA, 0xAA,
            0xAA, 0xAA, 0xAA, 0xAA, 0xAA, 0xAA,
        ];
        let mut packed = Vec::new();
        packbits(&unpacked, &mut packed);
        assert_eq!(
            packed,
            [0xFE, 0xAA, 0x02, 0x80, 0x00, 0x2A, 0xFD, 0xAA, 0x03, 0x80, 0x00, 0x2A, 0x22, 0xF7, 0xAA]
        );
        // Runs and literals longer than 128 are split; a run is never −128.
        let mut packed = Vec::new();
        packbits(&[7; 300], &mut packed);
        assert_eq!(packed, [0x81, 7, 0x81, 7, 0xD5, 7]);
        let literal: Vec<u8> = (0..=255u8).chain(0..4).collect();
        let mut packed = Vec::new();
        packbits(&literal, &mut packed);
        assert_eq!(packed.len(), 260 + 3);
        assert_eq!((packed[0], packed[129], packed[258]), (127, 127, 3));
    }

    #[test]
    fn bounds_cover_the_non_transparent_pixels() {
        let fx = Fixture::new();
        let b = |i: usize| content_bounds(&fx.pixels[i], fx.width, fx.height);
        let full = |top, left, bottom, right| {
            Some(Bounds {
                top,
                left,
                bottom,
                right,
            })
        };
        assert_eq!(b(0), full(0, 0, 5, 150));
        assert_eq!(b(1), full(1, 3, 5, 146));
        assert_eq!(b(2), full(0, 147, 2, 150));
        assert_eq!(content_bounds(&[0; 16], 2, 2), None);
    }

    /// Groups are folders: the `psd` crate reads them back with their names, nesting,
    /// visibility and opacity, and every layer in its group.
    #[test]
    fn groups_are_photoshop_folders() {
        let fx = Fixture::new();
        let bytes = export(&fx.grouped(), Format::Psd).unwrap();
        // Three layers and two records per group, the count negative (the merged alpha is the
        // transparency): header, colour mode data, image resources, then the two section lengths.
        let u32_at = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let resources = 26 + 4 + u32_at(26);
        let count_at = resources + 4 + u32_at(resources) + 8;
        assert_eq!(i16::from_be_bytes([bytes[count_at], bytes[count_at + 1]]), -7);
        let psd = ::psd::Psd::from_bytes(&bytes).unwrap();
        assert_eq!(psd.layers().len(), 3, "group records are not layers");
        let groups = psd.groups();
        assert_eq!(groups.len(), 2);
        let by_name = |name: &str| {
            groups
                .values()
                .find(|g| g.name() == name)
                .unwrap_or_else(|| panic!("{name}"))
        };
        let (outer, inner) = (by_name("Outer ☀"), by_name("Inner <b>"));
        assert_eq!(outer.parent_id(), None);
        assert_eq!(inner.parent_id(), Some(outer.id()), "Inner is inside Outer");
        assert_eq!(outer.opacity(), 128, "0.5 × 255");
        // psd 0.3.5's `visible()` is the hidden bit (see the test below).
        assert_eq!((outer.visible(), inner.visible()), (false, true));
        // Top first: layer 3 in Inner, layer 2 in Outer, layer 1 at the top level.
        for (idx, i, parent) in [(0, 2, Some(inner.id())), (1, 1, Some(outer.id())), (2, 0, None)] {
            let layer = psd.layer_by_idx(idx);
            assert_eq!(layer.name(), fx.names[i]);
            assert_eq!(layer.parent_id(), parent, "{}", fx.names[i]);
            assert!(
                layer.rgba() == expected_layer(&fx.pixels[i], fx.width, fx.height),
                "layer {i}: pixels"
            );
        }
    }

    /// Reads the file back with the `psd` crate (an independent parser) and compares the layer
    /// count, order, names, visibility, opacity, pixels and the merged image.
    #[test]
    fn an_independent_reader_sees_every_layer_and_the_merged_image() {
        let fx = Fixture::new();
        let bytes = export(&fx.document(), Format::Psd).unwrap();
        let psd = ::psd::Psd::from_bytes(&bytes).unwrap();
        assert_eq!((psd.width(), psd.height()), (fx.width, fx.height));
        assert_eq!(psd.depth(), ::psd::PsdDepth::Eight);
        assert_eq!(psd.color_mode(), ::psd::ColorMode::Rgb);
        assert_eq!(psd.layers().len(), 3);
        for i in 0..3 {
            // psd 0.3.5 lists the file's last layer record first: the top layer, as Photoshop
            // stores the bottom layer first.
            let layer = psd.layer_by_idx(2 - i);
            assert_eq!(layer.name(), fx.names[i], "layer {i}: the full Unicode name from luni");
            // psd 0.3.5 returns bit 1 as `visible()`, but bit 1 is Photoshop's hidden flag
            // (chinedufn/psd#55, fixed after 0.3.5): it must be set exactly for hidden layers.
            assert_eq!(layer.visible(), !fx.visible[i], "layer {i}: hidden flag");
            assert_eq!(layer.opacity(), opacity_byte(fx.opacity[i]), "layer {i}: opacity");
            assert!(
                layer.rgba() == expected_layer(&fx.pixels[i], fx.width, fx.height),
                "layer {i}: pixels"
            );
        }
        assert_eq!(psd.layer_by_idx(1).opacity(), 102, "0.4 × 255 = 102");
        let merged: Vec<u8> = fx
            .composite
            .chunks_exact(4)
            .flat_map(|p| {
                let white = |c: u8| ((f64::from(c) * f64::from(p[3])) / 255.0 + 255.0 - f64::from(p[3])).round() as u8;
                [white(p[0]), white(p[1]), white(p[2]), p[3]]
            })
            .collect();
        assert!(psd.rgba() == merged, "the merged image, matted against white");
    }

    #[test]
    fn a_large_smooth_image_is_rle_compressed_and_reads_back() {
        let (w, h) = (300u32, 200u32);
        let background = [30, 120, 200, 255].repeat((w * h) as usize);
        let disc: Vec<u8> = (0..w * h)
            .flat_map(|i| {
                let (x, y) = ((i % w) as i32 - 150, (i / w) as i32 - 100);
                if x * x + y * y < 60 * 60 {
                    [250, 40, 10, 200]
                } else {
                    [0; 4]
                }
            })
            .collect();
        let mut composite = vec![0; (w * h * 4) as usize];
        crate::compose::Compositor::default()
            .composite_into(
                w,
                h,
                &[
                    crate::compose::LayerPixels {
                        rgba: &background,
                        opacity: 1.0,
                    },
                    crate::compose::LayerPixels {
                        rgba: &disc,
                        opacity: 1.0,
                    },
                ],
                &mut composite,
            )
            .unwrap();
        let layer = |name, rgba| Layer {
            name,
            visible: true,
            opacity: 1.0,
            rgba,
            png: None,
        };
        let doc = Document {
            width: w,
            height: h,
            layers: vec![layer("Background", &background), layer("Disc", &disc)],
            groups: Vec::new(),
            composite: &composite,
            composite_png: None,
            run: None,
        };
        let bytes = build(&doc).unwrap();
        let psd = ::psd::Psd::from_bytes(&bytes).unwrap();
        assert_eq!(psd.compression(), &::psd::PsdChannelCompression::RleCompressed);
        // (psd 0.3.5 lists the top layer first.)
        assert_eq!(psd.layer_by_idx(1).name(), "Background");
        assert!(psd.layer_by_idx(1).rgba() == background, "background pixels");
        assert!(psd.layer_by_idx(0).rgba() == disc, "disc pixels");
        assert!(psd.rgba() == composite, "opaque: nothing to matte");
        // Raw, the two layers and the merged image would take 720 000 bytes.
        assert!(bytes.len() < 20_000, "{} bytes", bytes.len());
    }

    #[test]
    fn the_byte_layout_follows_the_specification() {
        let fx = Fixture::new();
        let bytes = build(&fx.document()).unwrap();
        let be16 = |at: usize| u16::from_be_bytes([bytes[at], bytes[at + 1]]);
        let be32 = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
        assert_eq!(&bytes[..4], b"8BPS");
        assert_eq!(be16(4), 1, "version");
        assert_eq!(&bytes[6..12], &[0; 6]);
        assert_eq!((be16(12), be32(14), be32(18), be16(22), be16(24)), (4, 5, 150, 8, 3));
        assert_eq!(be32(26), 0, "no colour mode data");
        let resources_len = be32(30) as usize;
        let resources = &bytes[34..34 + resources_len];
        assert_eq!(&resources[..6], b"8BIM\x03\xED", "ResolutionInfo first");
        let text = String::from_utf8_lossy(resources);
        assert!(
            text.contains("<xmp:CreatorTool>Qwen Layers</xmp:CreatorTool>"),
            "{text}"
        );
        assert!(text.contains("prompt: a cat &amp; a &lt;sofa&gt;; seed: 42"), "{text}");
        let lm = 34 + resources_len;
        let lm_len = be32(lm) as usize;
        let info_len = be32(lm + 4) as usize;
        assert_eq!(info_len % 2, 0);
        assert_eq!(lm_len, 4 + info_len + 4, "layer info + empty global mask info");
        assert_eq!(be16(lm + 8) as i16, -3, "negative: the merged alpha is transparency");
        // The first record (the bottom layer): full bounds, 4 channels −1, 0, 1, 2.
        let rec = lm + 10;
        assert_eq!(
            (be32(rec), be32(rec + 4), be32(rec + 8), be32(rec + 12)),
            (0, 0, 5, 150)
        );
        assert_eq!(be16(rec + 16), 4);
        let ids: Vec<i16> = (0..4).map(|c| be16(rec + 18 + c * 6) as i16).collect();
        assert_eq!(ids, [-1, 0, 1, 2]);
        let blend = rec + 18 + 24;
        assert_eq!(&bytes[blend..blend + 8], b"8BIMnorm");
        assert_eq!(
            &bytes[blend + 8..blend + 12],
            &[255, 0, 0x08, 0],
            "opacity, clipping, flags, filler"
        );
        let name = blend + 16 + 8;
        assert_eq!(&bytes[name..name + 8], b"\x07Layer 1", "Pascal name, padded to 4");
        assert_eq!(&bytes[name + 8..name + 16], b"8BIMluni");
        assert_eq!(be32(name + 16), 20, "4 + 7 × 2 = 18, padded to 20");
        assert_eq!(be32(name + 20), 7);
        // The image data section follows the layers.
        let image_data = lm + 4 + lm_len;
        assert!(be16(image_data) <= 1);
    }

    #[test]
    fn names_are_ascii_in_the_pascal_string_and_complete_in_luni() {
        assert_eq!(pascal_name(""), [0, 0, 0, 0]);
        assert_eq!(pascal_name("abc"), *b"\x03abc");
        assert_eq!(pascal_name("Ünï"), *b"\x03_n_");
        let long = pascal_name(&"x".repeat(40));
        assert_eq!((long[0], long.len()), (31, 32));
        let mut out = Out(Vec::new());
        luni_block("层", &mut out);
        assert_eq!(out.0, b"8BIMluni\0\0\0\x08\0\0\0\x01\x5c\x42\0\0");
    }

    #[test]
    fn an_all_transparent_layer_and_large_images_are_handled() {
        let rgba = vec![0u8; 4 * 4 * 4];
        let doc = Document {
            width: 4,
            height: 4,
            layers: vec![Layer {
                name: "empty",
                visible: true,
                opacity: 1.0,
                rgba: &rgba,
                png: None,
            }],
            groups: Vec::new(),
            composite: &rgba,
            composite_png: None,
            run: None,
        };
        let bytes = build(&doc).unwrap();
        let psd = ::psd::Psd::from_bytes(&bytes).unwrap();
        assert_eq!(psd.layers().len(), 1);
        assert_eq!(psd.layer_by_idx(0).name(), "empty");
        assert_eq!(psd.rgba(), [255, 255, 255, 0].repeat(16));

        let wide = Document {
            width: MAX_SIDE + 1,
            height: 1,
            layers: vec![],
            groups: Vec::new(),
            composite: &[],
            composite_png: None,
            run: None,
        };
        // The size is refused before anything is allocated for it.
        let err = build(&wide).unwrap_err();
        assert!(err.0.contains("at most 30000 pixels"), "{err}");
        assert_eq!(opacity_byte(f32::NAN), 255);
        assert_eq!(opacity_byte(-1.0), 0);
        assert_eq!(opacity_byte(0.25), 64);
    }
}
