//! PowerPoint (`.pptx`, Office Open XML / ECMA-376): one slide holding every layer as a
//! picture, in stack order (the first picture of the shape tree is drawn first, so bottom first),
//! each covering the whole slide. Hidden layers are pictures marked `hidden="1"` (listed in the
//! selection pane, not shown); opacity below 1 is the picture's transparency (`alphaModFix`).
//! Groups are flattened into their pictures: a hidden group hides them, its opacity multiplies
//! theirs.
//! The slide has the image's aspect ratio, its longer side 13.33 in (PowerPoint's 16:9 width).
//!
//! The package is the smallest one PowerPoint and LibreOffice open without repair:
//! `[Content_Types].xml`, `_rels/.rels`, `docProps/{core,app}.xml` (the run as the
//! description), `ppt/presentation.xml` with its rels, `presProps`, `viewProps`, `tableStyles`,
//! one slide master with one blank layout and a complete theme, `ppt/slides/slide1.xml` with its
//! rels, and `ppt/media/imageN.png` (N = stack position, bottom first).

use std::io::{Cursor, Write};

use ::zip::write::SimpleFileOptions;

use super::{xml_escape, Document, ExportError, CREATOR};

/// English Metric Units per inch.
pub const EMU_PER_INCH: u64 = 914_400;
/// The slide's longer side: 13.333 in, the width of PowerPoint's 16:9 slides.
pub const SLIDE_LONG_SIDE: u64 = 12_192_000;
/// PowerPoint's limits on either side of a slide: 1 in to 56 in.
const SLIDE_MIN: u64 = EMU_PER_INCH;
const SLIDE_MAX: u64 = 56 * EMU_PER_INCH;

const NS_A: &str = "http://schemas.openxmlformats.org/drawingml/2006/main";
const NS_R: &str = "http://schemas.openxmlformats.org/officeDocument/2006/relationships";
const NS_P: &str = "http://schemas.openxmlformats.org/presentationml/2006/main";
const REL: &str = "http://schemas.openxmlformats.org/officeDocument/2006/relationships";
const XML_DECL: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>\n";

/// The slide size in EMU for an image of `width × height` pixels: the same aspect ratio, the
/// longer side [`SLIDE_LONG_SIDE`], both sides within PowerPoint's limits.
pub fn slide_size(width: u32, height: u32) -> (u64, u64) {
    let (long_px, short_px) = (u64::from(width.max(height)), u64::from(width.min(height).max(1)));
    let mut long = SLIDE_LONG_SIDE;
    let mut short = (long * short_px + long_px / 2) / long_px;
    if short < SLIDE_MIN {
        short = SLIDE_MIN;
        long = ((SLIDE_MIN * long_px + short_px / 2) / short_px).min(SLIDE_MAX);
    }
    if width >= height {
        (long, short)
    } else {
        (short, long)
    }
}

/// Builds the PowerPoint file.
pub fn build(doc: &Document<'_>) -> Result<Vec<u8>, ExportError> {
    doc.check()?;
    let (cx, cy) = slide_size(doc.width, doc.height);
    let mut zip = ::zip::ZipWriter::new(Cursor::new(Vec::new()));
    let deflated = SimpleFileOptions::default().compression_method(::zip::CompressionMethod::Deflated);
    let stored = SimpleFileOptions::default().compression_method(::zip::CompressionMethod::Stored);
    let parts: Vec<(&str, String)> = vec![
        ("[Content_Types].xml", content_types()),
        ("_rels/.rels", package_rels()),
        ("docProps/core.xml", core_properties(doc)),
        ("docProps/app.xml", app_properties()),
        ("ppt/presentation.xml", presentation(cx, cy)),
        ("ppt/_rels/presentation.xml.rels", presentation_rels()),
        (
            "ppt/presProps.xml",
            format!("{XML_DECL}<p:presentationPr xmlns:a=\"{NS_A}\" xmlns:r=\"{NS_R}\" xmlns:p=\"{NS_P}\"/>"),
        ),
        (
            "ppt/viewProps.xml",
            format!("{XML_DECL}<p:viewPr xmlns:a=\"{NS_A}\" xmlns:r=\"{NS_R}\" xmlns:p=\"{NS_P}\"/>"),
        ),
        // The default table style's id, as PowerPoint writes it.
        (
            "ppt/tableStyles.xml",
            format!("{XML_DECL}<a:tblStyleLst xmlns:a=\"{NS_A}\" def=\"{{5C22544A-7EE6-4342-B048-85BDC9FD1C3A}}\"/>"),
        ),
        ("ppt/slideMasters/slideMaster1.xml", slide_master()),
        (
            "ppt/slideMasters/_rels/slideMaster1.xml.rels",
            rels(&[
                ("rId1", "slideLayout", "../slideLayouts/slideLayout1.xml"),
                ("rId2", "theme", "../theme/theme1.xml"),
            ]),
        ),
        ("ppt/slideLayouts/slideLayout1.xml", slide_layout()),
        (
            "ppt/slideLayouts/_rels/slideLayout1.xml.rels",
            rels(&[("rId1", "slideMaster", "../slideMasters/slideMaster1.xml")]),
        ),
        ("ppt/theme/theme1.xml", theme()),
        ("ppt/slides/slide1.xml", slide(doc, cx, cy)),
        ("ppt/slides/_rels/slide1.xml.rels", slide_rels(doc)),
    ];
    for (name, xml) in &parts {
        zip.start_file(*name, deflated)?;
        zip.write_all(xml.as_bytes())?;
    }
    for i in 0..doc.layers.len() {
        zip.start_file(format!("ppt/media/{}", media_name(i)), stored)?;
        zip.write_all(&doc.layer_png(i)?)?;
    }
    Ok(zip.finish()?.into_inner())
}

/// The media file of layer `index` (0 = bottom).
fn media_name(index: usize) -> String {
    format!("image{}.png", index + 1)
}

fn content_types() -> String {
    const PML: &str = "application/vnd.openxmlformats-officedocument.presentationml";
    let overrides = [
        ("/ppt/presentation.xml", format!("{PML}.presentation.main+xml")),
        ("/ppt/presProps.xml", format!("{PML}.presProps+xml")),
        ("/ppt/viewProps.xml", format!("{PML}.viewProps+xml")),
        ("/ppt/tableStyles.xml", format!("{PML}.tableStyles+xml")),
        ("/ppt/slideMasters/slideMaster1.xml", format!("{PML}.slideMaster+xml")),
        ("/ppt/slideLayouts/slideLayout1.xml", format!("{PML}.slideLayout+xml")),
        ("/ppt/slides/slide1.xml", format!("{PML}.slide+xml")),
        (
            "/ppt/theme/theme1.xml",
            "application/vnd.openxmlformats-officedocument.theme+xml".into(),
        ),
        (
            "/docProps/core.xml",
            "application/vnd.openxmlformats-package.core-properties+xml".into(),
        ),
        (
            "/docProps/app.xml",
            "application/vnd.openxmlformats-officedocument.extended-properties+xml".into(),
        ),
    ];
    let mut xml = format!(
        "{XML_DECL}<Types xmlns=\"http://schemas.openxmlformats.org/package/2006/content-types\">\
<Default Extension=\"rels\" ContentType=\"application/vnd.openxmlformats-package.relationships+xml\"/>\
<Default Extension=\"xml\" ContentType=\"application/xml\"/>\
<Default Extension=\"png\" ContentType=\"image/png\"/>"
    );
    for (part, ty) in overrides {
        xml.push_str(&format!("<Override PartName=\"{part}\" ContentType=\"{ty}\"/>"));
    }
    xml.push_str("</Types>");
    xml
}

/// A relationships part; `kind` is the last segment of an officeDocument relationship type.
fn rels(entries: &[(&str, &str, &str)]) -> String {
    let mut xml =
        format!("{XML_DECL}<Relationships xmlns=\"http://schemas.openxmlformats.org/package/2006/relationships\">");
    for (id, kind, target) in entries {
        xml.push_str(&format!(
            "<Relationship Id=\"{id}\" Type=\"{REL}/{kind}\" Target=\"{target}\"/>"
        ));
    }
    xml.push_str("</Relationships>");
    xml
}

fn package_rels() -> String {
    format!(
        "{XML_DECL}<Relationships xmlns=\"http://schemas.openxmlformats.org/package/2006/relationships\">\
<Relationship Id=\"rId1\" Type=\"{REL}/officeDocument\" Target=\"ppt/presentation.xml\"/>\
<Relationship Id=\"rId2\" Type=\"http://schemas.openxmlformats.org/package/2006/relationships/metadata/core-properties\" Target=\"docProps/core.xml\"/>\
<Relationship Id=\"rId3\" Type=\"{REL}/extended-properties\" Target=\"docProps/app.xml\"/>\
</Relationships>"
    )
}

fn core_properties(doc: &Document<'_>) -> String {
    let description = doc
        .run_summary()
        .map(|s| format!("<dc:description>{}</dc:description>", xml_escape(&s)))
        .unwrap_or_default();
    format!(
        "{XML_DECL}<cp:coreProperties xmlns:cp=\"http://schemas.openxmlformats.org/package/2006/metadata/core-properties\" \
xmlns:dc=\"http://purl.org/dc/elements/1.1/\" xmlns:dcterms=\"http://purl.org/dc/terms/\" \
xmlns:dcmitype=\"http://purl.org/dc/dcmitype/\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\">\
<dc:title>{CREATOR} layers</dc:title><dc:creator>{CREATOR}</dc:creator>{description}</cp:coreProperties>"
    )
}

fn app_properties() -> String {
    format!(
        "{XML_DECL}<Properties xmlns=\"http://schemas.openxmlformats.org/officeDocument/2006/extended-properties\">\
<Application>{CREATOR}</Application><Slides>1</Slides></Properties>"
    )
}

fn presentation(cx: u64, cy: u64) -> String {
    // Master ids and layout ids share one space from 2^31; slide ids start at 256.
    format!(
        "{XML_DECL}<p:presentation xmlns:a=\"{NS_A}\" xmlns:r=\"{NS_R}\" xmlns:p=\"{NS_P}\" saveSubsetFonts=\"1\">\
<p:sldMasterIdLst><p:sldMasterId id=\"2147483648\" r:id=\"rId1\"/></p:sldMasterIdLst>\
<p:sldIdLst><p:sldId id=\"256\" r:id=\"rId2\"/></p:sldIdLst>\
<p:sldSz cx=\"{cx}\" cy=\"{cy}\"/><p:notesSz cx=\"6858000\" cy=\"9144000\"/>\
</p:presentation>"
    )
}

fn presentation_rels() -> String {
    rels(&[
        ("rId1", "slideMaster", "slideMasters/slideMaster1.xml"),
        ("rId2", "slide", "slides/slide1.xml"),
        ("rId3", "theme", "theme/theme1.xml"),
        ("rId4", "presProps", "presProps.xml"),
        ("rId5", "viewProps", "viewProps.xml"),
        ("rId6", "tableStyles", "tableStyles.xml"),
    ])
}

/// The empty shape tree every slide-like part starts with (the group that holds the shapes).
fn tree_start() -> &'static str {
    "<p:nvGrpSpPr><p:cNvPr id=\"1\" name=\"\"/><p:cNvGrpSpPr/><p:nvPr/></p:nvGrpSpPr>\
<p:grpSpPr><a:xfrm><a:off x=\"0\" y=\"0\"/><a:ext cx=\"0\" cy=\"0\"/><a:chOff x=\"0\" y=\"0\"/><a:chExt cx=\"0\" cy=\"0\"/></a:xfrm></p:grpSpPr>"
}

fn slide_master() -> String {
    let level = |size: u32| format!("<a:lvl1pPr><a:defRPr sz=\"{size}\"/></a:lvl1pPr>");
    format!(
        "{XML_DECL}<p:sldMaster xmlns:a=\"{NS_A}\" xmlns:r=\"{NS_R}\" xmlns:p=\"{NS_P}\">\
<p:cSld><p:spTree>{}</p:spTree></p:cSld>\
<p:clrMap bg1=\"lt1\" tx1=\"dk1\" bg2=\"lt2\" tx2=\"dk2\" accent1=\"accent1\" accent2=\"accent2\" accent3=\"accent3\" \
accent4=\"accent4\" accent5=\"accent5\" accent6=\"accent6\" hlink=\"hlink\" folHlink=\"folHlink\"/>\
<p:sldLayoutIdLst><p:sldLayoutId id=\"2147483649\" r:id=\"rId1\"/></p:sldLayoutIdLst>\
<p:txStyles><p:titleStyle>{}</p:titleStyle><p:bodyStyle>{}</p:bodyStyle><p:otherStyle>{}</p:otherStyle></p:txStyles>\
</p:sldMaster>",
        tree_start(),
        level(4400),
        level(2800),
        level(1800)
    )
}

fn slide_layout() -> String {
    format!(
        "{XML_DECL}<p:sldLayout xmlns:a=\"{NS_A}\" xmlns:r=\"{NS_R}\" xmlns:p=\"{NS_P}\" type=\"blank\" preserve=\"1\">\
<p:cSld name=\"Blank\"><p:spTree>{}</p:spTree></p:cSld>\
<p:clrMapOvr><a:masterClrMapping/></p:clrMapOvr></p:sldLayout>",
        tree_start()
    )
}

/// A complete theme: the colour, font and format schemes are all required, the format lists
/// with at least three entries each.
fn theme() -> String {
    let colors = [
        ("dk1", "<a:sysClr val=\"windowText\" lastClr=\"000000\"/>"),
        ("lt1", "<a:sysClr val=\"window\" lastClr=\"FFFFFF\"/>"),
        ("dk2", "<a:srgbClr val=\"44546A\"/>"),
        ("lt2", "<a:srgbClr val=\"E7E6E6\"/>"),
        ("accent1", "<a:srgbClr val=\"4472C4\"/>"),
        ("accent2", "<a:srgbClr val=\"ED7D31\"/>"),
        ("accent3", "<a:srgbClr val=\"A5A5A5\"/>"),
        ("accent4", "<a:srgbClr val=\"FFC000\"/>"),
        ("accent5", "<a:srgbClr val=\"5B9BD5\"/>"),
        ("accent6", "<a:srgbClr val=\"70AD47\"/>"),
        ("hlink", "<a:srgbClr val=\"0563C1\"/>"),
        ("folHlink", "<a:srgbClr val=\"954F72\"/>"),
    ];
    let colors: String = colors.iter().map(|(n, c)| format!("<a:{n}>{c}</a:{n}>")).collect();
    let fill = "<a:solidFill><a:schemeClr val=\"phClr\"/></a:solidFill>";
    let fills = fill.repeat(3);
    let lines: String = [6350, 12700, 19050]
        .iter()
        .map(|w| format!("<a:ln w=\"{w}\">{fill}</a:ln>"))
        .collect();
    let effects = "<a:effectStyle><a:effectLst/></a:effectStyle>".repeat(3);
    let font = |latin: &str| format!("<a:latin typeface=\"{latin}\"/><a:ea typeface=\"\"/><a:cs typeface=\"\"/>");
    format!(
        "{XML_DECL}<a:theme xmlns:a=\"{NS_A}\" name=\"Office Theme\"><a:themeElements>\
<a:clrScheme name=\"Office\">{colors}</a:clrScheme>\
<a:fontScheme name=\"Office\"><a:majorFont>{}</a:majorFont><a:minorFont>{}</a:minorFont></a:fontScheme>\
<a:fmtScheme name=\"Office\"><a:fillStyleLst>{fills}</a:fillStyleLst><a:lnStyleLst>{lines}</a:lnStyleLst>\
<a:effectStyleLst>{effects}</a:effectStyleLst><a:bgFillStyleLst>{fills}</a:bgFillStyleLst></a:fmtScheme>\
</a:themeElements><a:objectDefaults/><a:extraClrSchemeLst/></a:theme>",
        font("Calibri Light"),
        font("Calibri")
    )
}

/// The relationship id of layer `index`'s picture (rId1 is the layout).
fn image_rel_id(index: usize) -> String {
    format!("rId{}", index + 2)
}

fn slide_rels(doc: &Document<'_>) -> String {
    let targets: Vec<(String, String)> = (0..doc.layers.len())
        .map(|i| (image_rel_id(i), format!("../media/{}", media_name(i))))
        .collect();
    let mut entries = vec![("rId1", "slideLayout", "../slideLayouts/slideLayout1.xml")];
    entries.extend(targets.iter().map(|(id, t)| (id.as_str(), "image", t.as_str())));
    rels(&entries)
}

fn slide(doc: &Document<'_>, cx: u64, cy: u64) -> String {
    let mut pictures = String::new();
    for (i, layer) in doc.layers.iter().enumerate() {
        let name = xml_escape(layer.name);
        // Groups are flattened into their pictures: a hidden group hides them, its opacity
        // multiplies theirs.
        let (visible, opacity) = doc.effective(i);
        let hidden = if visible { "" } else { " hidden=\"1\"" };
        let opacity = if opacity.is_finite() {
            opacity.clamp(0.0, 1.0)
        } else {
            1.0
        };
        // Transparency is a picture effect: alpha scaled to `amt` thousandths of a percent.
        let alpha = if opacity < 1.0 {
            format!("<a:alphaModFix amt=\"{}\"/>", (opacity * 100_000.0).round() as u32)
        } else {
            String::new()
        };
        pictures.push_str(&format!(
            "<p:pic><p:nvPicPr><p:cNvPr id=\"{}\" name=\"{name}\" descr=\"{name}\"{hidden}/>\
<p:cNvPicPr><a:picLocks noChangeAspect=\"1\"/></p:cNvPicPr><p:nvPr/></p:nvPicPr>\
<p:blipFill><a:blip r:embed=\"{}\">{alpha}</a:blip><a:stretch><a:fillRect/></a:stretch></p:blipFill>\
<p:spPr><a:xfrm><a:off x=\"0\" y=\"0\"/><a:ext cx=\"{cx}\" cy=\"{cy}\"/></a:xfrm>\
<a:prstGeom prst=\"rect\"><a:avLst/></a:prstGeom></p:spPr></p:pic>",
            i + 2,
            image_rel_id(i),
        ));
    }
    format!(
        "{XML_DECL}<p:sld xmlns:a=\"{NS_A}\" xmlns:r=\"{NS_R}\" xmlns:p=\"{NS_P}\">\
<p:cSld><p:spTree>{}{pictures}</p:spTree></p:cSld>\
<p:clrMapOvr><a:masterClrMapping/></p:clrMapOvr></p:sld>",
        tree_start()
    )
}

#[cfg(test)]
mod tests {
    use super::super::testing::{decode_png, Fixture};
    use super::super::{export, Format};
    use super::*;
    use std::collections::HashMap;
    use std::io::Read;

    fn unzip(bytes: Vec<u8>) -> Vec<(String, Vec<u8>)> {
        let mut archive = ::zip::ZipArchive::new(Cursor::new(bytes)).unwrap();
        (0..archive.len())
            .map(|i| {
                let mut f = archive.by_index(i).unwrap();
                let mut v = Vec::new();
                f.read_to_end(&mut v).unwrap();
                (f.name().unwrap().to_string(), v)
            })
            .collect()
    }

    /// `Id → Target` of a relationships part.
    fn relationships(xml: &str) -> HashMap<String, (String, String)> {
        let tree = roxmltree::Document::parse(xml).unwrap();
        tree.root_element()
            .children()
            .filter(|n| n.has_tag_name("Relationship"))
            .map(|n| {
                let attr = |a| n.attribute(a).unwrap().to_string();
                (attr("Id"), (attr("Type"), attr("Target")))
            })
            .collect()
    }

    #[test]
    fn one_slide_with_a_picture_per_layer_in_stack_order() {
        let fx = Fixture::new();
        let files = unzip(export(&fx.document(), Format::Pptx).unwrap());
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names[0], "[Content_Types].xml");
        let file = |name: &str| {
            &files
                .iter()
                .find(|(n, _)| n == name)
                .unwrap_or_else(|| panic!("{name}"))
                .1
        };
        let text = |name: &str| String::from_utf8(file(name).clone()).unwrap();

        // Every XML part is well-formed, and every relationship points at a part in the package.
        for (name, data) in &files {
            if name.ends_with(".xml") || name.ends_with(".rels") {
                roxmltree::Document::parse(std::str::from_utf8(data).unwrap())
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
            }
            if let Some((dir, rels_name)) = name.rsplit_once("_rels/") {
                let source_dir = dir.trim_end_matches('/');
                for (_, (_, target)) in relationships(std::str::from_utf8(data).unwrap()) {
                    let mut path: Vec<&str> = source_dir.split('/').filter(|s| !s.is_empty()).collect();
                    for seg in target.split('/') {
                        if seg == ".." {
                            path.pop();
                        } else {
                            path.push(seg);
                        }
                    }
                    let resolved = path.join("/");
                    assert!(
                        names.contains(&resolved.as_str()),
                        "{rels_name}: {target} → {resolved} is missing"
                    );
                }
            }
        }
        // Every part but the rels has a content type: an override, or the png/xml defaults.
        let types = text("[Content_Types].xml");
        assert!(types.contains("PartName=\"/ppt/slides/slide1.xml\""));
        assert!(types.contains("Extension=\"png\" ContentType=\"image/png\""));

        let presentation = text("ppt/presentation.xml");
        let tree = roxmltree::Document::parse(&presentation).unwrap();
        let slide_ids: Vec<_> = tree.descendants().filter(|n| n.has_tag_name((NS_P, "sldId"))).collect();
        assert_eq!(slide_ids.len(), 1, "one slide");
        let size = tree.descendants().find(|n| n.has_tag_name((NS_P, "sldSz"))).unwrap();
        let (cx, cy): (u64, u64) = (
            size.attribute("cx").unwrap().parse().unwrap(),
            size.attribute("cy").unwrap().parse().unwrap(),
        );
        assert_eq!(
            (cx, cy),
            (27_432_000, 914_400),
            "150×5: the short side at PowerPoint's 1 in minimum, 30 in long"
        );

        let slide_xml = text("ppt/slides/slide1.xml");
        let slide = roxmltree::Document::parse(&slide_xml).unwrap();
        let tree = slide.descendants().find(|n| n.has_tag_name((NS_P, "spTree"))).unwrap();
        let pictures: Vec<_> = tree.children().filter(|n| n.has_tag_name((NS_P, "pic"))).collect();
        assert_eq!(pictures.len(), 3);
        let rels = relationships(&text("ppt/slides/_rels/slide1.xml.rels"));
        for (i, pic) in pictures.iter().enumerate() {
            let c_nv_pr = pic.descendants().find(|n| n.has_tag_name((NS_P, "cNvPr"))).unwrap();
            assert_eq!(c_nv_pr.attribute("name"), Some(fx.names[i].as_str()), "bottom first");
            assert_eq!(c_nv_pr.attribute("hidden") == Some("1"), !fx.visible[i]);
            let ext = pic.descendants().find(|n| n.has_tag_name((NS_A, "ext"))).unwrap();
            assert_eq!(
                (ext.attribute("cx"), ext.attribute("cy")),
                (Some("27432000"), Some("914400")),
                "full slide"
            );
            let blip = pic.descendants().find(|n| n.has_tag_name((NS_A, "blip"))).unwrap();
            let amt = blip
                .children()
                .find(|n| n.has_tag_name((NS_A, "alphaModFix")))
                .map(|n| n.attribute("amt").unwrap().to_string());
            assert_eq!(amt, (fx.opacity[i] < 1.0).then(|| "40000".to_string()));
            let (kind, target) = &rels[blip.attribute((NS_R, "embed")).unwrap()];
            assert!(kind.ends_with("/image"));
            let media = format!("ppt/{}", target.trim_start_matches("../"));
            assert_eq!(decode_png(file(&media)).into_raw(), fx.pixels[i], "layer {i}'s pixels");
        }
        assert!(text("docProps/core.xml").contains("prompt: a cat &amp; a &lt;sofa&gt;; seed: 42"));
    }

    #[test]
    fn groups_flatten_into_ordered_pictures_with_their_visibility_and_opacity() {
        let fx = Fixture::new();
        let files = unzip(build(&fx.grouped()).unwrap());
        let slide_xml = files
            .iter()
            .find(|(n, _)| n == "ppt/slides/slide1.xml")
            .map(|(_, d)| String::from_utf8(d.clone()).unwrap())
            .unwrap();
        let slide = roxmltree::Document::parse(&slide_xml).unwrap();
        let pictures: Vec<_> = slide.descendants().filter(|n| n.has_tag_name((NS_P, "pic"))).collect();
        let seen: Vec<(String, bool, Option<String>)> = pictures
            .iter()
            .map(|pic| {
                let c_nv_pr = pic.descendants().find(|n| n.has_tag_name((NS_P, "cNvPr"))).unwrap();
                let amt = pic
                    .descendants()
                    .find(|n| n.has_tag_name((NS_A, "alphaModFix")))
                    .map(|n| n.attribute("amt").unwrap().to_string());
                (
                    c_nv_pr.attribute("name").unwrap().to_string(),
                    c_nv_pr.attribute("hidden") == Some("1"),
                    amt,
                )
            })
            .collect();
        // Bottom first; "Outer" (50 %) holds layers 2 and 3, the hidden "Inner" layer 3.
        assert_eq!(
            seen,
            [
                (fx.names[0].clone(), false, None),
                (fx.names[1].clone(), false, Some("20000".to_string())),
                (fx.names[2].clone(), true, Some("50000".to_string())),
            ]
        );
    }

    #[test]
    fn the_slide_keeps_the_image_aspect_within_powerpoint_limits() {
        assert_eq!(slide_size(1024, 1024), (12_192_000, 12_192_000));
        assert_eq!(slide_size(1280, 720), (12_192_000, 6_858_000));
        assert_eq!(slide_size(720, 1280), (6_858_000, 12_192_000));
        // Very long strips: the short side is at least 1 in, the long one at most 56 in.
        assert_eq!(slide_size(100, 1), (SLIDE_MAX, SLIDE_MIN));
        assert_eq!(slide_size(20, 1), (20 * EMU_PER_INCH, EMU_PER_INCH));
    }
}
