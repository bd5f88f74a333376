//! `qwen-layers generate` on the tiny Z-Image checkpoint: the PNG is the Rust API's image for the
//! same seed, `--then-decompose` writes the layers, and bad arguments fail with a message.

use std::path::{Path, PathBuf};
use std::process::Command;

use app::api_z_image::{GenerateRequest, ZImageDefaults};
use qwen_layers::generator::{Generator, LoadOptions, NoProgress};

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

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("qwen-layers-gen-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const Z: &str = "tests/fixtures/tiny-z-image-turbo";

#[test]
fn generate_writes_the_apis_image_and_then_decomposes_it() {
    let dir = temp_dir("ok");
    let out = dir.join("fox.png");
    let (code, stdout, stderr) = cli(&[
        "generate",
        "--model-path",
        Z,
        "--device",
        "cpu",
        "--prompt",
        "A red fox in fresh snow",
        "--width",
        "64",
        "--height",
        "48",
        "--steps",
        "2",
        "--seed",
        "5",
        "-o",
        out.to_str().unwrap(),
        "--then-decompose",
        "2",
        "--layers-model-path",
        "tests/fixtures/tiny-qwen-image-layered",
        "--layers-steps",
        "2",
    ]);
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    let png = image::open(&out).unwrap().to_rgba8();
    assert_eq!(png.dimensions(), (64, 48));

    // The same request through the Rust API gives the same pixels.
    let request = GenerateRequest {
        prompt: "A red fox in fresh snow".into(),
        negative_prompt: None,
        width: Some(64),
        height: Some(48),
        steps: Some(2),
        cfg_scale: Some(0.0),
        seed: Some(5),
    };
    let job = request.validate(&ZImageDefaults::default(), 0).unwrap();
    let g = Generator::from_pretrained(repo().join(Z).to_str().unwrap(), LoadOptions::default()).unwrap();
    let api = g.generate(&job, &NoProgress).unwrap();
    assert_eq!(api.rgba().as_raw(), png.as_raw(), "CLI and API images differ");

    let layers = dir.join("fox-layers");
    for f in ["composite.png", "layers.zip", "manifest.json"] {
        assert!(layers.join(f).is_file(), "{f} missing in {}", layers.display());
    }
    let layer_pngs = std::fs::read_dir(&layers)
        .unwrap()
        .filter(|e| {
            let n = e.as_ref().unwrap().file_name().to_string_lossy().into_owned();
            n.ends_with(".png") && n != "composite.png"
        })
        .count();
    assert_eq!(layer_pngs, 2, "{stdout}");
    assert!(stdout.contains("2 layers"), "{stdout}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_arguments_fail_with_a_message() {
    let dir = temp_dir("bad");
    let out = dir.join("x.png");
    let out = out.to_str().unwrap();
    for (args, needle) in [
        (
            vec![
                "generate",
                "--model-path",
                Z,
                "--prompt",
                "x",
                "--width",
                "50",
                "-o",
                out,
            ],
            "multiple of 16",
        ),
        (
            vec![
                "generate",
                "--model-path",
                Z,
                "--device",
                "cpu",
                "--prompt",
                " ",
                "-o",
                out,
            ],
            "prompt is empty",
        ),
        (
            vec![
                "generate",
                "--model-path",
                "/no/such/model",
                "--device",
                "cpu",
                "--prompt",
                "x",
                "-o",
                out,
            ],
            "/no/such/model",
        ),
        (
            vec![
                "generate",
                "--model-path",
                Z,
                "--prompt",
                "x",
                "--then-decompose",
                "1",
                "-o",
                out,
            ],
            "layer",
        ),
    ] {
        let (code, _, stderr) = cli(&args);
        assert_ne!(code, 0, "{args:?} succeeded");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    assert!(!Path::new(out).exists());
    std::fs::remove_dir_all(&dir).ok();
}
