//! The Qwen2-VL image processor and the Qwen2.5-VL vision tower against what transformers 5.24
//! computed on the tiny checkpoint (`tests/fixtures/reference/`: `image_proc.safetensors`,
//! `vision.safetensors`, the processor PNGs), f32 on CPU.

use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};
use engine::text_encoder::{
    composite_over_white, resize_bicubic_antialias, smart_resize, window_layout, ImageProcessorConfig, VisionTower,
};
use engine::weights::ModelDir;
use image::{RgbImage, RgbaImage};
use test_support::*;

/// Worst error allowed, relative to the reference tensor's largest magnitude.
const TOLERANCE: f64 = 1e-4;

fn tower() -> &'static VisionTower {
    static TOWER: OnceLock<VisionTower> = OnceLock::new();
    TOWER.get_or_init(|| {
        let dir = ModelDir::open(layered_checkpoint()).unwrap();
        VisionTower::load(&dir, DType::F32, &Device::Cpu).unwrap()
    })
}

fn rgb(rel: &str) -> RgbImage {
    let (w, h, px) = load_png_rgba8(rel);
    let rgba = RgbaImage::from_raw(w, h, px).unwrap();
    image::DynamicImage::ImageRgba8(rgba).to_rgb8()
}

fn rgba(rel: &str) -> RgbaImage {
    let (w, h, px) = load_png_rgba8(rel);
    RgbaImage::from_raw(w, h, px).unwrap()
}

/// Max |a − b| over two images of the same size, and how many bytes differ.
fn pixel_diff(a: &RgbImage, b: &RgbImage) -> (u8, usize) {
    assert_eq!(a.dimensions(), b.dimensions());
    let mut worst = 0;
    let mut count = 0;
    for (x, y) in a.as_raw().iter().zip(b.as_raw()) {
        let d = x.abs_diff(*y);
        worst = worst.max(d);
        count += usize::from(d > 0);
    }
    (worst, count)
}

#[test]
fn smart_resize_matches_the_recorded_cases() {
    let cfg = ImageProcessorConfig::load(&ModelDir::open(layered_checkpoint()).unwrap()).unwrap();
    assert_eq!((cfg.min_pixels(), cfg.max_pixels()), (3136, 12_845_056));
    let cases = reference_manifest()["cases"]["smart_resize"].as_array().unwrap();
    assert!(cases.len() >= 8);
    for c in cases {
        let hw = json_u32s(&c["hw"]).unwrap();
        let want = json_u32s(&c["result_hw"]).unwrap();
        let got = smart_resize(hw[0], hw[1], 28, cfg.min_pixels(), cfg.max_pixels()).unwrap();
        assert_eq!([got.0, got.1], [want[0], want[1]], "smart_resize{hw:?}");
    }
}

#[test]
fn resize_matches_torchvision_uint8_bicubic() {
    for (input, expected, what) in [
        (
            "images/edit_condition_lanczos.png",
            "images/edit_condition_processor_resized.png",
            "edit condition 480×320 → 476×308",
        ),
        (
            "images/input_rgb_tiny_vl.png",
            "images/vl_tiny_torchvision_resized.png",
            "tiny 90×50 → 84×56",
        ),
    ] {
        let src = rgb(input);
        let want = rgb(expected);
        let cfg = ImageProcessorConfig::default();
        assert_eq!(cfg.target_size(src.width(), src.height()).unwrap(), want.dimensions());
        let got = resize_bicubic_antialias(&src, want.width(), want.height()).unwrap();
        let (worst, count) = pixel_diff(&got, &want);
        println!("{what}: max |Δ| = {worst}/255 over {count} differing bytes");
        assert!(worst <= 1, "{what}: max |Δ| {worst}");
        // Pillow's BICUBIC is measurably different on this input: proves the test can tell.
        if input.contains("edit_condition") {
            let pil = rgb("images/edit_condition_pil_bicubic.png");
            let (pil_worst, _) = pixel_diff(&pil, &want);
            assert!(pil_worst > 1, "Pillow bicubic should differ from torchvision here");
        }
    }
}

#[test]
fn pixel_values_match_the_processor() {
    let cfg = ImageProcessorConfig::default();
    // Tiny case, all 24 rows.
    let tiny = cfg
        .preprocess(&rgb("images/input_rgb_tiny_vl.png"), &Device::Cpu)
        .unwrap();
    assert_eq!(tiny.grid_thw, (1, 4, 6));
    let want = load_tensor("image_proc.safetensors", "vl_tiny/pixel_values");
    let err = assert_close(&tiny.pixel_values, &want, TOLERANCE, "vl_tiny pixel_values");
    println!("vl_tiny pixel_values: {err}");

    // Edit condition: from the LANCZOS condition image, strided rows.
    let edit = cfg
        .preprocess(&rgb("images/edit_condition_lanczos.png"), &Device::Cpu)
        .unwrap();
    assert_eq!(edit.grid_thw, (1, 22, 34));
    let got = as_stored(&edit.pixel_values, "vision.safetensors", "edit/pixel_values");
    let want = load_tensor("vision.safetensors", "edit/pixel_values");
    let err = assert_close(&got, &want, TOLERANCE, "edit pixel_values");
    println!("edit pixel_values (strided rows): {err}");
}

#[test]
fn rgba_is_composited_over_white() {
    // The caption image has a transparent strip and an alpha ramp: compositing over white (not
    // dropping alpha) is what makes the vision embeddings match below; here, the pixels.
    let img = rgba("images/resized_lanczos_rgba_square_640x640.png");
    let rgb = composite_over_white(&img);
    let (x, y) = (0..img.width())
        .flat_map(|x| (0..img.height()).map(move |y| (x, y)))
        .find(|&(x, y)| img.get_pixel(x, y)[3] == 0)
        .expect("a transparent pixel");
    assert_eq!(rgb.get_pixel(x, y).0, [255, 255, 255]);
    let opaque = img.pixels().zip(rgb.pixels()).find(|(p, _)| p[3] == 255).unwrap();
    assert_eq!(&opaque.0 .0[..3], &opaque.1 .0);
}

#[test]
fn window_layout_matches_the_reference() {
    let case = case("vision/edit");
    let layout = window_layout((1, 22, 34), 2, 4).unwrap();
    let want_index: Vec<usize> = json_u32s(&case["window_index"])
        .unwrap()
        .into_iter()
        .map(|v| v as usize)
        .collect();
    let want_cu: Vec<usize> = json_u32s(&case["cu_window_seqlens"])
        .unwrap()
        .into_iter()
        .map(|v| v as usize)
        .collect();
    assert_eq!(layout.window_index, want_index);
    assert_eq!(layout.cu_window_seqlens, want_cu);
}

#[test]
fn vision_tower_matches_every_stage() {
    let tower = tower();
    // Start from the exact processor pixels (the resize is checked separately).
    let resized = rgb("images/edit_condition_processor_resized.png");
    let processed = tower.processor().patchify(&resized, &Device::Cpu).unwrap();
    assert_eq!(processed.grid_thw, (1, 22, 34));
    let trace = tower
        .forward_traced(&processed.pixel_values, processed.grid_thw)
        .unwrap();
    let file = "vision.safetensors";
    let mut worst = 0f64;
    let mut check = |got: &Tensor, name: &str| {
        let want = load_tensor(file, name);
        let err = assert_close(got, &want, TOLERANCE, name);
        println!("{name}: {err}");
        worst = worst.max(err.rel);
    };
    check(&trace.patch_embed, "edit/patch_embed");
    check(&trace.rotary_cos, "edit/rotary_cos");
    check(&trace.rotary_sin, "edit/rotary_sin");
    assert_eq!(trace.blocks.len(), 2);
    check(&trace.blocks[0], "edit/block0");
    check(&trace.blocks[1], "edit/block1");
    check(&trace.merger_windowed, "edit/merger_windowed");
    check(&trace.merged, "edit/merged");
    println!("vision tower worst rel error: {worst:.3e}");
}

#[test]
fn caption_image_embeddings_match() {
    // The whole path of the caption image: RGBA 640² → over white → torchvision resize to 644²
    // → patches → tower.
    let tower = tower();
    let img = rgba("images/resized_lanczos_rgba_square_640x640.png");
    let processed = tower.processor().preprocess_rgba(&img, &Device::Cpu).unwrap();
    assert_eq!(processed.grid_thw, (1, 46, 46));
    let merged = tower.forward(&processed.pixel_values, processed.grid_thw).unwrap();
    let want = load_tensor("vision.safetensors", "caption/merged");
    let err = assert_close(&merged, &want, TOLERANCE, "caption/merged");
    println!("caption/merged: {err}");
}

#[test]
fn bad_inputs_are_clear_errors() {
    let tower = tower();
    let pv = Tensor::zeros((10, 1176), DType::F32, &Device::Cpu).unwrap();
    let err = tower.forward(&pv, (1, 4, 4)).unwrap_err().to_string();
    assert!(err.contains("[16, 1176]"), "{err}");
    let err = tower.forward(&pv, (1, 3, 4)).unwrap_err().to_string();
    assert!(err.contains("multiples of 2"), "{err}");
}

#[test]
fn bf16_runs_the_same_code_path() {
    // The dtype the real model runs in: weights and activations bf16, norms/softmax/RoPE in f32.
    let dir = ModelDir::open(layered_checkpoint()).unwrap();
    let bf16 = VisionTower::load(&dir, DType::BF16, &Device::Cpu).unwrap();
    let resized = rgb("images/edit_condition_processor_resized.png");
    let processed = bf16.processor().patchify(&resized, &Device::Cpu).unwrap();
    let merged = bf16.forward(&processed.pixel_values, processed.grid_thw).unwrap();
    assert_eq!(merged.dtype(), DType::BF16);
    let want = load_tensor("vision.safetensors", "edit/merged");
    let err = assert_close(&merged.to_dtype(DType::F32).unwrap(), &want, 5e-2, "bf16 merged");
    println!("bf16 vision tower vs f32 reference: {err}");
}
