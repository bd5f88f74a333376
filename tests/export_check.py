#!/usr/bin/env python3
"""Checks the PSD, OpenRaster and PowerPoint exports with other people's readers.

Run by hand (not by CI):

    python3 -m venv /tmp/export-venv && /tmp/export-venv/bin/pip install psd-tools python-pptx pyora
    EXPORT_SAMPLES_DIR=$PWD/target/export-samples \\
        cargo test -p app --lib -- --ignored export_samples
    /tmp/export-venv/bin/python tests/export_check.py target/export-samples

`export_samples` (app/src/export/mod.rs) writes layers.{psd,ora,pptx,png,zip}, the expected
layer pixels (layer-N.png, bottom first) and expected.json (names, visibility, opacity). This
script reads each file with psd-tools, python-pptx, pyora and zipfile + ElementTree, compares what they
see with what was meant, and prints one line per check and "N passed, N failed".
"""

import io
import json
import sys
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

RESULTS = []


def check(name, ok, detail=""):
    RESULTS.append(ok)
    print(f"{'ok  ' if ok else 'FAIL'} {name}{': ' + detail if detail and not ok else ''}")


def rgba(data):
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGBA"), dtype=np.int32)


def composite_over(layers, width, height):
    """Straight-alpha "over", bottom first, in float: the reference for the composites."""
    acc_c = np.zeros((height, width, 3))
    acc_a = np.zeros((height, width, 1))
    for pixels, opacity in layers:
        a = pixels[..., 3:4] / 255.0 * opacity
        acc_c = pixels[..., :3] / 255.0 * a + acc_c * (1 - a)
        acc_a = a + acc_a * (1 - a)
    return acc_c, acc_a


def check_psd(path, expected, layers):
    from psd_tools import PSDImage
    from psd_tools.constants import ColorMode

    psd = PSDImage.open(path)
    check("psd: size", (psd.width, psd.height) == (expected["width"], expected["height"]))
    check("psd: 8-bit RGB", psd.depth == 8 and psd.color_mode == ColorMode.RGB, f"{psd.depth} {psd.color_mode}")
    got = list(psd)  # psd-tools iterates bottom first
    check("psd: layer count", len(got) == len(layers), f"{len(got)}")
    for i, (layer, want) in enumerate(zip(got, expected["layers"])):
        check(f"psd: layer {i + 1} name", layer.name == want["name"], repr(layer.name))
        check(f"psd: layer {i + 1} visibility", layer.visible == want["visible"], f"{layer.visible}")
        want_opacity = round(want["opacity"] * 255)
        check(f"psd: layer {i + 1} opacity", layer.opacity == want_opacity, f"{layer.opacity} != {want_opacity}")
        # The layer's pixels at its offset (bounds cropped to its non-transparent pixels).
        left, top, right, bottom = layer.bbox
        pixels = np.asarray(layer.topil().convert("RGBA"), dtype=np.int32)
        full = np.zeros_like(layers[i])
        full[top:bottom, left:right] = pixels
        same = np.array_equal(full, np.where(layers[i][..., 3:4] > 0, layers[i], full))
        check(f"psd: layer {i + 1} pixels", same, f"bbox {layer.bbox}")
    # The merged image section (what viewers without layer support show).
    merged = np.asarray(psd.topil().convert("RGBA"), dtype=np.int32)
    ref_c, ref_a = composite_over(
        [(p, w["opacity"]) for p, w in zip(layers, expected["layers"]) if w["visible"]],
        expected["width"],
        expected["height"],
    )
    alpha_diff = np.abs(merged[..., 3] - np.round(ref_a[..., 0] * 255)).max()
    check("psd: merged image alpha", alpha_diff <= 1, f"max diff {alpha_diff}")
    # psd-tools removes the white matte: compare colour where the composite is not too thin.
    mask = ref_a[..., 0] > 0.2
    colour = np.round(np.divide(ref_c, np.maximum(ref_a, 1e-9)) * 255)
    colour_diff = np.abs(merged[..., :3] - colour)[mask].max()
    check("psd: merged image colour", colour_diff <= 3, f"max diff {colour_diff}")
    # psd-tools' own compositing of the layers (its order, visibility and opacity handling).
    composed = np.asarray(psd.composite(force=True).convert("RGBA"), dtype=np.int32)
    comp_diff = np.abs(composed[..., 3] - np.round(ref_a[..., 0] * 255)).max()
    check("psd: psd-tools composites the layers to our composite (alpha)", comp_diff <= 2, f"max diff {comp_diff}")
    comp_colour = np.abs(composed[..., :3] - colour)[mask].max()
    check("psd: psd-tools composites the layers to our composite (colour)", comp_colour <= 3, f"max diff {comp_colour}")


def check_ora(path, expected, layers):
    with zipfile.ZipFile(path) as z:
        first = z.infolist()[0]
        check("ora: mimetype first", first.filename == "mimetype", first.filename)
        check("ora: mimetype stored", first.compress_type == zipfile.ZIP_STORED)
        check("ora: mimetype content", z.read("mimetype") == b"image/openraster")
        raw = open(path, "rb").read()
        check("ora: mimetype at offset 38", raw[30:38] == b"mimetype" and raw[38:54] == b"image/openraster")
        root = ET.fromstring(z.read("stack.xml"))
        check("ora: image size", (root.get("w"), root.get("h")) == (str(expected["width"]), str(expected["height"])))
        got = root.find("stack").findall("layer")
        check("ora: layer count", len(got) == len(layers))
        for k, el in enumerate(got):
            i = len(layers) - 1 - k  # top first
            want = expected["layers"][i]
            check(f"ora: layer {i + 1} name", el.get("name") == want["name"], repr(el.get("name")))
            vis = "visible" if want["visible"] else "hidden"
            check(f"ora: layer {i + 1} visibility", el.get("visibility") == vis, el.get("visibility"))
            check(f"ora: layer {i + 1} opacity", abs(float(el.get("opacity")) - want["opacity"]) < 1e-6)
            check(f"ora: layer {i + 1} pixels", np.array_equal(rgba(z.read(el.get("src"))), layers[i]))
        thumb = Image.open(io.BytesIO(z.read("Thumbnails/thumbnail.png")))
        check("ora: thumbnail at most 256 px", max(thumb.size) <= 256, f"{thumb.size}")
        merged = rgba(z.read("mergedimage.png"))
        check("ora: mergedimage size", merged.shape[:2] == (expected["height"], expected["width"]))
    try:
        from pyora import Project
    except ImportError:
        print("skip ora: pyora is not installed")
        return
    project = Project.load(path)
    check("ora: pyora reads the size", tuple(project.dimensions) == (expected["width"], expected["height"]))
    got = [(l.name, l.visible, round(l.opacity, 6)) for l in project.children]
    want = [(l["name"], l["visible"], round(l["opacity"], 6)) for l in reversed(expected["layers"])]
    check("ora: pyora reads the layers, top first", got == want, f"{got}")


def check_pptx(path, expected, layers):
    from pptx import Presentation

    prs = Presentation(path)
    check("pptx: one slide", len(prs.slides) == 1)
    w, h = expected["width"], expected["height"]
    ratio = prs.slide_width / prs.slide_height
    check("pptx: slide aspect", abs(ratio - w / h) < 1e-3, f"{prs.slide_width}×{prs.slide_height}")
    shapes = list(prs.slides[0].shapes)
    check("pptx: one picture per layer", len(shapes) == len(layers), f"{len(shapes)}")
    ns = "{http://schemas.openxmlformats.org/drawingml/2006/main}"
    for i, (shape, want) in enumerate(zip(shapes, expected["layers"])):
        check(f"pptx: picture {i + 1} is a picture", shape.shape_type == 13, f"{shape.shape_type}")  # PICTURE
        check(f"pptx: picture {i + 1} name (bottom first)", shape.name == want["name"], repr(shape.name))
        hidden = shape._element.nvPicPr.cNvPr.get("hidden") == "1"
        check(f"pptx: picture {i + 1} hidden flag", hidden == (not want["visible"]))
        full = (shape.left, shape.top, shape.width, shape.height) == (0, 0, prs.slide_width, prs.slide_height)
        check(f"pptx: picture {i + 1} covers the slide", full)
        check(f"pptx: picture {i + 1} pixels", np.array_equal(rgba(shape.image.blob), layers[i]))
        amt = shape._element.find(f".//{ns}alphaModFix")
        got = 1.0 if amt is None else int(amt.get("amt")) / 100000
        check(f"pptx: picture {i + 1} opacity", abs(got - want["opacity"]) < 1e-4, f"{got}")


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    d = Path(sys.argv[1])
    expected = json.loads((d / "expected.json").read_text())
    layers = [rgba((d / l["png"]).read_bytes()) for l in expected["layers"]]
    for name, fn in [("layers.psd", check_psd), ("layers.ora", check_ora), ("layers.pptx", check_pptx)]:
        try:
            fn(str(d / name), expected, layers)
        except Exception as e:  # a reader refusing the file is a failure, not a crash
            check(f"{name}: opens", False, repr(e))
    failed = RESULTS.count(False)
    print(f"{len(RESULTS) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
