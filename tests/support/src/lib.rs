//! Fixture access for the engine's parity tests.
//!
//! The fixtures under `tests/fixtures/` are written by `tests/reference/generate.py` (diffusers
//! 0.42.1 + transformers 5.24 on tiny random-weight checkpoints); `tests/reference/README.md`
//! documents every file, tensor and case. This crate finds them, loads tensors as f32 CPU
//! [`Tensor`]s, and compares results with a relative tolerance that reports the worst element.
//!
//! ```no_run
//! use test_support::*;
//! let expected = load_tensor("transformer.safetensors", "layered/output");
//! # let actual = expected.clone();
//! let err = assert_close(&actual, &expected, 1e-4, "layered transformer output");
//! println!("{err}");
//! ```

pub mod fake_hub;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use serde_json::Value;

/// Absolute path of `tests/fixtures`.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("fixtures")
        .canonicalize()
        .expect("tests/fixtures exists")
}

/// Absolute path of `tests/fixtures/reference` (safetensors, JSON and PNG reference outputs).
pub fn reference_dir() -> PathBuf {
    fixtures_dir().join("reference")
}

/// Every tensor of `tests/fixtures/reference/<file>` (a safetensors file), on the CPU.
pub fn load_reference(file: &str) -> std::collections::HashMap<String, Tensor> {
    let path = reference_dir().join(file);
    candle_core::safetensors::load(&path, &Device::Cpu).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The tiny Qwen-Image-Layered checkpoint (diffusers folder layout).
pub fn layered_checkpoint() -> PathBuf {
    fixtures_dir().join("tiny-qwen-image-layered")
}

/// The tiny Qwen-Image-Edit-2509 checkpoint (its text_encoder/, tokenizer/ and processor/ are
/// symlinks to the layered checkpoint's).
pub fn edit_checkpoint() -> PathBuf {
    fixtures_dir().join("tiny-qwen-image-edit-2509")
}

/// The tiny Z-Image-Turbo checkpoint (its tokenizer's vocab.json and merges.txt are symlinks to
/// the layered checkpoint's); its reference outputs are under `reference/extra/z_image/`.
pub fn z_image_checkpoint() -> PathBuf {
    fixtures_dir().join("tiny-z-image-turbo")
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: invalid JSON: {e}", path.display()))
}

/// `reference/manifest.json`: `files` (per safetensors file: tensor name -> shape, dtype, meaning,
/// optional `strided`), `cases` (parameters of every recorded case), `pngs`, `generator`.
pub fn reference_manifest() -> &'static Value {
    static M: OnceLock<Value> = OnceLock::new();
    M.get_or_init(|| read_json(&reference_dir().join("manifest.json")))
}

/// Parameters of one case of the manifest (`"run/layered_l2_cfgnorm"`, `"transformer/layered"`, …).
pub fn case(name: &str) -> &'static Value {
    let c = &reference_manifest()["cases"][name];
    assert!(!c.is_null(), "case {name:?} is not in reference/manifest.json");
    c
}

/// Manifest entry of one stored tensor (shape, dtype, meaning, optional `strided`).
pub fn tensor_meta(file: &str, name: &str) -> &'static Value {
    let m = &reference_manifest()["files"][file][name];
    assert!(!m.is_null(), "tensor {file}:{name} is not in reference/manifest.json");
    m
}

/// Any JSON file under `reference/` (`tokens.json`, `caption.json`, `checkpoint_layout.json`).
pub fn load_json(file: &str) -> Value {
    read_json(&reference_dir().join(file))
}

/// `reference/tokens.json` (templates, prompts and their ids, special tokens, batch padding).
pub fn load_tokens() -> &'static Value {
    static T: OnceLock<Value> = OnceLock::new();
    T.get_or_init(|| load_json("tokens.json"))
}

/// Token ids of a recorded prompt: `prompt` is a key of `tokens.json["prompts"]` (`ascii`,
/// `chinese`, `emoji`, `empty`, `space`, `mixed`, `long`), `field` one of `bare_ids`,
/// `layered_ids`, `edit_ids_unexpanded`.
pub fn token_ids(prompt: &str, field: &str) -> Vec<u32> {
    json_u32s(&load_tokens()["prompts"][prompt][field])
        .unwrap_or_else(|| panic!("tokens.json: no prompts.{prompt}.{field}"))
}

/// A JSON array of non-negative integers as `Vec<u32>`.
pub fn json_u32s(v: &Value) -> Option<Vec<u32>> {
    v.as_array()?.iter().map(|x| x.as_u64().map(|x| x as u32)).collect()
}

/// A JSON array of numbers as `Vec<f64>` (`null` -> NaN).
pub fn json_f64s(v: &Value) -> Option<Vec<f64>> {
    v.as_array()?
        .iter()
        .map(|x| if x.is_null() { Some(f64::NAN) } else { x.as_f64() })
        .collect()
}

/// Loads a tensor in its stored dtype (f32 for everything except the `uint8` pixel tensors).
pub fn load_tensor_raw(file: &str, name: &str) -> Tensor {
    let path = reference_dir().join(file);
    // SAFETY: fixture files are read-only for the duration of the tests.
    let st = unsafe { MmapedSafetensors::new(&path) }.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    st.load(name, &Device::Cpu).unwrap_or_else(|e| {
        panic!(
            "{}: tensor {name:?}: {e} (see tests/reference/README.md for the names)",
            path.display()
        )
    })
}

/// Loads a reference tensor as f32 on the CPU (`file` relative to `reference/`, e.g.
/// `"runs/layered_l2_cfgnorm.safetensors"`).
pub fn load_tensor(file: &str, name: &str) -> Tensor {
    let t = load_tensor_raw(file, name);
    if t.dtype() == DType::F32 {
        t
    } else {
        t.to_dtype(DType::F32).expect("convert to f32")
    }
}

/// Indices `0, stride, 2*stride, …` of `dim`: how the `strided` tensors of the manifest were cut
/// (`{"dim", "stride", "full_len"}`). Apply it to a full result before comparing.
pub fn strided(t: &Tensor, dim: usize, stride: usize) -> Tensor {
    let len = t.dim(dim).expect("dim in range");
    let idx: Vec<u32> = (0..len).step_by(stride).map(|i| i as u32).collect();
    let idx = Tensor::new(idx.as_slice(), t.device()).expect("index tensor");
    t.index_select(&idx, dim).expect("index_select")
}

/// Applies the manifest's `strided` cut of tensor `file:name` (if it has one) to a full result.
pub fn as_stored(actual: &Tensor, file: &str, name: &str) -> Tensor {
    let s = &tensor_meta(file, name)["strided"];
    if s.is_null() {
        return actual.clone();
    }
    let dim = s["dim"].as_i64().expect("strided.dim");
    let dim = if dim < 0 {
        (actual.rank() as i64 + dim) as usize
    } else {
        dim as usize
    };
    strided(actual, dim, s["stride"].as_u64().expect("strided.stride") as usize)
}

/// A PNG of `reference/` decoded to 8-bit RGBA: (width, height, pixels row-major RGBA).
pub fn load_png_rgba8(rel: &str) -> (u32, u32, Vec<u8>) {
    let path = reference_dir().join(rel);
    let img = image::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let rgba = img.to_rgba8();
    (rgba.width(), rgba.height(), rgba.into_raw())
}

/// Raw PNG bytes of a file under `reference/` (to feed an engine's own decoder).
pub fn read_reference_bytes(rel: &str) -> Vec<u8> {
    let path = reference_dir().join(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The device the device-parametrised parity tests run on: `ENGINE_TEST_DEVICE` = `cpu`
/// (default), `cuda` or `cuda:N`. CUDA needs the engine built with `--features cuda`.
///
/// Created once per process: every call returns the same device, so tensors made in different
/// tests can be combined (two `Device::new_cuda(0)` values are different devices to candle).
pub fn test_device() -> Device {
    static DEVICE: OnceLock<Device> = OnceLock::new();
    DEVICE.get_or_init(device_from_env).clone()
}

fn device_from_env() -> Device {
    let spec = std::env::var("ENGINE_TEST_DEVICE").unwrap_or_default();
    match spec.trim() {
        "" | "cpu" => Device::Cpu,
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal = s
                .strip_prefix("cuda:")
                .map_or(0, |n| n.parse().expect("ENGINE_TEST_DEVICE=cuda:N"));
            Device::new_cuda(ordinal).unwrap_or_else(|e| panic!("ENGINE_TEST_DEVICE={s}: {e}"))
        }
        other => panic!("ENGINE_TEST_DEVICE={other}: expected cpu, cuda or cuda:N"),
    }
}

/// The dtype of those tests: `ENGINE_TEST_DTYPE` = `f32` (default), `bf16` or `f16`.
pub fn test_dtype() -> DType {
    match std::env::var("ENGINE_TEST_DTYPE").unwrap_or_default().trim() {
        "" | "f32" => DType::F32,
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        other => panic!("ENGINE_TEST_DTYPE={other}: expected f32, bf16 or f16"),
    }
}

/// The relative tolerance of a check for [`test_dtype`]: `f32_tol` in f32 (on any device),
/// `half_tol` in bf16/f16 (8-bit mantissas: errors of a few 1e-3 per op that compound).
pub fn dtype_tolerance(f32_tol: f64, half_tol: f64) -> f64 {
    if test_dtype() == DType::F32 {
        f32_tol
    } else {
        half_tol
    }
}

/// Errors of one comparison.
#[derive(Debug, Clone)]
pub struct Errors {
    /// max |actual - expected| over all elements (positions where both are NaN are skipped).
    pub max_abs: f64,
    /// max |expected|.
    pub scale: f64,
    /// `max_abs / scale` (or `max_abs` when `scale` is 0): the number compared with the tolerance.
    pub rel: f64,
    /// Mean |actual - expected|.
    pub mean_abs: f64,
    /// Index of the worst element and its two values.
    pub worst_index: Vec<usize>,
    pub worst_actual: f64,
    pub worst_expected: f64,
    /// Elements where exactly one side is NaN/inf, or both are non-finite but different.
    pub non_finite_mismatches: usize,
    pub numel: usize,
}

impl fmt::Display for Errors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rel {:.3e} (max-abs {:.3e} / max|expected| {:.3e}), mean-abs {:.3e}, worst at {:?}: actual {} vs expected {}",
            self.rel, self.max_abs, self.scale, self.mean_abs, self.worst_index, self.worst_actual, self.worst_expected
        )?;
        if self.non_finite_mismatches > 0 {
            write!(f, ", {} non-finite mismatches", self.non_finite_mismatches)?;
        }
        Ok(())
    }
}

fn to_f64_vec(t: &Tensor) -> Vec<f64> {
    let t = t
        .to_device(&Device::Cpu)
        .and_then(|t| t.to_dtype(DType::F64))
        .and_then(|t| t.flatten_all());
    t.and_then(|t| t.to_vec1::<f64>()).expect("tensor to f64 vec")
}

fn unravel(mut i: usize, dims: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; dims.len()];
    for (k, d) in dims.iter().enumerate().rev() {
        if *d > 0 {
            idx[k] = i % d;
            i /= d;
        }
    }
    idx
}

/// max |a − b| over all elements (computed in f32 on the tensors' device), after checking that
/// the shapes match: for results that must be equal or within a plain absolute bound.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "max_abs_diff: shapes differ");
    let (a, b) = (a.to_dtype(DType::F32).unwrap(), b.to_dtype(DType::F32).unwrap());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Compares two tensors of the same shape (panics on a shape mismatch) without judging.
pub fn compare(actual: &Tensor, expected: &Tensor) -> Errors {
    assert_eq!(
        actual.dims(),
        expected.dims(),
        "shape mismatch: actual {:?} vs expected {:?}",
        actual.dims(),
        expected.dims()
    );
    let a = to_f64_vec(actual);
    let e = to_f64_vec(expected);
    let (mut max_abs, mut scale, mut sum, mut worst, mut bad) = (0f64, 0f64, 0f64, 0usize, 0usize);
    for (i, (&x, &y)) in a.iter().zip(e.iter()).enumerate() {
        if !x.is_finite() || !y.is_finite() {
            let same = (x.is_nan() && y.is_nan()) || x == y;
            if !same {
                bad += 1;
                worst = i;
                max_abs = f64::INFINITY;
            }
            continue;
        }
        scale = scale.max(y.abs());
        let d = (x - y).abs();
        sum += d;
        if d > max_abs {
            max_abs = d;
            worst = i;
        }
    }
    let rel = if scale > 0.0 { max_abs / scale } else { max_abs };
    Errors {
        max_abs,
        scale,
        rel,
        mean_abs: if a.is_empty() { 0.0 } else { sum / a.len() as f64 },
        worst_index: unravel(worst, expected.dims()),
        worst_actual: a.get(worst).copied().unwrap_or(f64::NAN),
        worst_expected: e.get(worst).copied().unwrap_or(f64::NAN),
        non_finite_mismatches: bad,
        numel: a.len(),
    }
}

/// Checks `actual` against `expected`: same shape, and max-abs error / max |expected| ≤ `rel_tol`.
/// Panics with the errors and the worst element on failure; returns the errors otherwise so that
/// a test can print them (`println!("{what}: {err}")`).
pub fn assert_close(actual: &Tensor, expected: &Tensor, rel_tol: f64, what: &str) -> Errors {
    let err = compare(actual, expected);
    if err.rel.is_nan() || err.rel > rel_tol || err.non_finite_mismatches > 0 {
        panic!(
            "{what}: not within rel tol {rel_tol:.1e}: {err} (shape {:?})",
            expected.dims()
        );
    }
    err
}

/// Encodes an 8-bit RGB or RGBA image as PNG (the tests' one encoder; the product's is
/// `app::image_data::encode_png`).
pub fn encode_png<P>(img: &image::ImageBuffer<P, Vec<u8>>) -> Vec<u8>
where
    P: image::PixelWithColorType<Subpixel = u8>,
{
    let mut bytes = std::io::Cursor::new(Vec::new());
    img.write_to(&mut bytes, image::ImageFormat::Png).expect("PNG encoding");
    bytes.into_inner()
}

/// A layer edit's hard case, 64×48: a fully transparent strip (x < 16), an alpha ramp
/// (16 ≤ x < 32), an opaque block, and a fully transparent disk inside the opaque part (a hole
/// with RGB left underneath).
pub fn layer_with_holes() -> image::RgbaImage {
    image::RgbaImage::from_fn(64, 48, |x, y| {
        let in_disk = (x as i32 - 48).pow(2) + (y as i32 - 24).pow(2) < 36;
        let a = match x {
            _ if in_disk => 0,
            0..16 => 0,
            16..32 => ((x - 15) * 16 - 1) as u8,
            _ => 255,
        };
        image::Rgba([(x * 4) as u8, (y * 5) as u8, 230, a])
    })
}

/// The edited layer must be the input's size with exactly its alpha, and no colour in the holes.
pub fn assert_alpha_kept(edited: &image::RgbaImage, layer: &image::RgbaImage) {
    assert_eq!(edited.dimensions(), layer.dimensions());
    for (o, l) in edited.pixels().zip(layer.pixels()) {
        assert_eq!(o.0[3], l.0[3], "alpha changed");
        if l.0[3] == 0 {
            assert_eq!(o.0, [0, 0, 0, 0], "a hole got colour");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixtures_are_found() {
        assert!(layered_checkpoint().join("model_index.json").is_file());
        assert!(edit_checkpoint().join("model_index.json").is_file());
        assert!(reference_manifest()["files"].is_object());
        assert!(case("run/layered_l2_cfgnorm")["layers"].as_u64() == Some(2));
    }

    #[test]
    fn every_manifest_tensor_loads_with_its_shape() {
        let files = reference_manifest()["files"].as_object().unwrap();
        let mut n = 0;
        for (file, tensors) in files {
            for (name, meta) in tensors.as_object().unwrap() {
                let t = load_tensor(file, name);
                let shape: Vec<usize> = meta["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap() as usize)
                    .collect();
                assert_eq!(t.dims(), shape.as_slice(), "{file}:{name}");
                assert_eq!(t.dtype(), DType::F32);
                n += 1;
            }
        }
        assert!(n > 100, "only {n} tensors");
    }

    #[test]
    fn tokens_and_pngs_load() {
        let ids = token_ids("ascii", "layered_ids");
        let prefix = json_u32s(&load_tokens()["templates"]["layered"]["prefix_ids"]).unwrap();
        assert_eq!(prefix.len(), 34);
        assert_eq!(&ids[..34], prefix.as_slice());
        let (w, h, px) = load_png_rgba8("images/input_rgba_square.png");
        assert_eq!((w, h, px.len()), (512, 512, 512 * 512 * 4));
    }

    #[test]
    fn compare_reports_the_worst_element() {
        let e = Tensor::new(&[[1f32, 2.0], [3.0, -4.0]], &Device::Cpu).unwrap();
        let a = Tensor::new(&[[1f32, 2.0], [3.5, -4.0]], &Device::Cpu).unwrap();
        let err = compare(&a, &e);
        assert_eq!(err.worst_index, vec![1, 0]);
        assert!((err.max_abs - 0.5).abs() < 1e-12 && (err.rel - 0.125).abs() < 1e-12);
        assert_close(&a, &e, 0.2, "within");
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| assert_close(&a, &e, 0.1, "outside")));
        assert!(r.is_err());
        let n = Tensor::new(&[f32::NAN, 1.0], &Device::Cpu).unwrap();
        assert_eq!(compare(&n, &n).non_finite_mismatches, 0);
        let m = Tensor::new(&[0f32, 1.0], &Device::Cpu).unwrap();
        assert_eq!(compare(&m, &n).non_finite_mismatches, 1);
    }

    #[test]
    fn strided_matches_the_stored_cut() {
        let t = Tensor::arange(0f32, 10.0, &Device::Cpu)
            .unwrap()
            .reshape((1, 10))
            .unwrap();
        let s = strided(&t, 1, 4);
        assert_eq!(s.to_vec2::<f32>().unwrap(), vec![vec![0.0, 4.0, 8.0]]);
    }
}
