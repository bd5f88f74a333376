//! `qwen-layers` with LoRA adapters and a scheduler file (issue 20) on the tiny checkpoints: a
//! Lightning-style edit (its LoRA layout, the shipped scheduler, 4 steps, no CFG), a decompose
//! with a kohya LoRA, and clear failures for a LoRA of the wrong model and a bad scale.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_qwen-layers"))
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const LORA: &str = "tests/fixtures/reference/extra/lora";
const SCHEDULER: &str = "presets/qwen-image-lightning/scheduler_config.json";

#[test]
fn a_lightning_style_edit_and_a_decompose_with_a_lora() {
    let dir = std::env::temp_dir().join(format!("qwen-layers-cli-lora-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let layer = test_support::layer_with_holes();
    let input = dir.join("layer.png");
    std::fs::write(&input, test_support::encode_png(&layer)).unwrap();
    let output = dir.join("edited.png");
    let lightning = format!("{LORA}/lightning.safetensors");
    let edit = |lora: &str, scheduler: &str| {
        cli(&[
            "edit",
            "--model-path",
            "tests/fixtures/tiny-qwen-image-edit-2509",
            "--device",
            "cpu",
            "--layer-image",
            input.to_str().unwrap(),
            "--instruction",
            "make it red",
            "--edit-lora",
            lora,
            "--scheduler-config",
            scheduler,
            "--steps",
            "4",
            "--cfg-scale",
            "1",
            "--output",
            output.to_str().unwrap(),
        ])
    };
    let (code, stdout, stderr) = edit(&lightning, SCHEDULER);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("alpha kept"), "{stdout}");
    test_support::assert_alpha_kept(&image::open(&output).unwrap().to_rgba8(), &layer);

    // A LoRA made for another model: its keys are named, nothing is ignored.
    let other = dir.join("other.safetensors");
    // A minimal safetensors file: an 8-byte header length, the JSON header, one f32.
    let header =
        r#"{"transformer_blocks.59.attn.to_q.lora_A.weight":{"dtype":"F32","shape":[1,1],"data_offsets":[0,4]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&0f32.to_le_bytes());
    std::fs::write(&other, bytes).unwrap();
    let (code, _, stderr) = edit(other.to_str().unwrap(), SCHEDULER);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("transformer_blocks.59.attn.to_q.lora_A.weight"),
        "{stderr}"
    );
    // A bad scale or scheduler file fails when the flags are read.
    let (code, _, stderr) = edit(&format!("{lightning}:30"), SCHEDULER);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--edit-lora") && stderr.contains("between"), "{stderr}");
    let (code, _, stderr) = edit(&lightning, "presets/none.json");
    assert_eq!(code, 2);
    assert!(stderr.contains("presets/none.json"), "{stderr}");

    // Decompose with a kohya LoRA at 0.8.
    let out = dir.join("layers");
    let (code, _, stderr) = cli(&[
        "decompose",
        "--model-path",
        "tests/fixtures/tiny-qwen-image-layered",
        "--device",
        "cpu",
        "--input-image",
        "tests/fixtures/reference/images/input_rgba_wide.png",
        "--prompt",
        "a test",
        "--num-layers",
        "2",
        "--steps",
        "2",
        "--lora",
        &format!("{LORA}/kohya.safetensors:0.8"),
        "--output-dir",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let manifest = std::fs::read_to_string(out.join("manifest.json")).unwrap();
    assert!(
        manifest.contains("kohya.safetensors:0.8"),
        "the run records its LoRA: {manifest}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
