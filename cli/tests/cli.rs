//! The `qwen-layers` CLI on the tiny checkpoints: it reproduces the reference run's layer PNGs
//! from the reference's initial noise, recombines layers, edits a layer keeping its alpha, and
//! fails clearly on bad arguments.

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

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("qwen-layers-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn max_diff(a: &Path, b: &Path) -> u8 {
    let a = image::open(a).unwrap().to_rgba8();
    let b = image::open(b).unwrap().to_rgba8();
    assert_eq!(a.dimensions(), b.dimensions());
    a.as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap()
}

#[test]
fn decompose_reproduces_the_reference_layers_and_compose_recombines_them() {
    let reference = repo().join("tests/fixtures/reference");
    let out = temp_dir("decompose");
    let (code, stdout, stderr) = cli(&[
        "decompose",
        "--model-path",
        "tests/fixtures/tiny-qwen-image-layered",
        "--device",
        "cpu",
        "--input-image",
        "tests/fixtures/reference/images/input_rgba_square.png",
        "--prompt",
        "A red apple on a wooden table, soft morning light.",
        "--num-layers",
        "2",
        "--steps",
        "2",
        "--cfg-scale",
        "4",
        "--seed",
        "42",
        "--init-noise",
        "tests/fixtures/reference/runs/layered_l2_cfgnorm.safetensors",
        "--output-dir",
        out.to_str().unwrap(),
        "--formats",
        "zip,psd,ora,pptx",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("2 layers at 640×640"), "{stdout}");
    // The layered files of --formats (their content is tested in app::export).
    let head = |name: &str| std::fs::read(out.join(name)).unwrap()[..4].to_vec();
    assert_eq!(head("layers.psd"), b"8BPS");
    assert_eq!(head("layers.ora"), b"PK\x03\x04");
    assert_eq!(head("layers.pptx"), b"PK\x03\x04");
    for i in 1..=2 {
        let d = max_diff(
            &out.join(format!("0{i}_layer-{i}.png")),
            &reference.join(format!("runs/layered_l2_cfgnorm/layer{i}.png")),
        );
        assert!(d <= 1, "layer {i} differs by {d}/255");
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["layer_order"], "bottom-to-top");
    assert_eq!(manifest["run"]["seed"], 42);
    assert_eq!(manifest["run"]["num_inference_steps"], 2);
    assert!(manifest["run"]["init_noise"]
        .as_str()
        .unwrap()
        .ends_with("layered_l2_cfgnorm.safetensors"));
    let zip = zip::ZipArchive::new(std::fs::File::open(out.join("layers.zip")).unwrap()).unwrap();
    assert_eq!(zip.len(), 4);

    // compose: the layers, bottom first, give the composite the decomposition wrote.
    let recomposed = out.join("recomposed.png");
    let (code, _, stderr) = cli(&[
        "compose",
        out.join("01_layer-1.png").to_str().unwrap(),
        out.join("02_layer-2.png").to_str().unwrap(),
        "-o",
        recomposed.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(max_diff(&recomposed, &out.join("composite.png")), 0);
    // The other order gives another picture (unless the top layer were fully transparent).
    let swapped = out.join("swapped.png");
    cli(&[
        "compose",
        out.join("02_layer-2.png").to_str().unwrap(),
        out.join("01_layer-1.png").to_str().unwrap(),
        "-o",
        swapped.to_str().unwrap(),
    ]);
    assert!(max_diff(&swapped, &out.join("composite.png")) > 0);
    // compose --to: the layers as one layered file, named after their files, bottom first.
    let stack = out.join("stack.ora");
    let (code, stdout, stderr) = cli(&[
        "compose",
        out.join("01_layer-1.png").to_str().unwrap(),
        out.join("02_layer-2.png").to_str().unwrap(),
        "--to",
        stack.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("2 layers → ") && stdout.contains("(ORA)"), "{stdout}");
    let mut ora = zip::ZipArchive::new(std::fs::File::open(&stack).unwrap()).unwrap();
    let mut xml = String::new();
    std::io::Read::read_to_string(&mut ora.by_name("stack.xml").unwrap(), &mut xml).unwrap();
    let top = xml.find("name=\"02_layer-2\"").expect(&xml);
    let bottom = xml.find("name=\"01_layer-1\"").expect(&xml);
    assert!(top < bottom, "OpenRaster lists the top layer first: {xml}");
    std::fs::remove_dir_all(&out).unwrap();
}

/// `--num-layers auto`: the model runs with six layers, the kept ones are written and the
/// manifest says what was dropped and why (the rules themselves: `app::layer_count`'s tests).
#[test]
fn auto_layer_count_writes_the_kept_layers_and_reports_the_rest() {
    let out = temp_dir("auto");
    let (code, stdout, stderr) = cli(&[
        "decompose",
        "--model-path",
        "tests/fixtures/tiny-qwen-image-layered",
        "--device",
        "cpu",
        "--input-image",
        "tests/fixtures/reference/images/input_rgba_square.png",
        "--prompt",
        "an apple",
        "--num-layers",
        "auto",
        "--steps",
        "1",
        "--resolution",
        "640",
        "--output-dir",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let auto = &manifest["run"]["auto_layers"];
    assert_eq!(auto["produced"], 6, "{manifest}");
    let kept = auto["kept"].as_array().unwrap();
    let dropped = auto["dropped"].as_array().unwrap();
    assert_eq!(kept.len() + dropped.len(), 6, "{auto}");
    assert_eq!(manifest["layers"].as_array().unwrap().len(), kept.len());
    assert!(
        stdout.contains(&format!("{} layers at 640×640", kept.len())),
        "{stdout}"
    );
    for d in dropped {
        assert!(
            stdout.contains(&format!("dropped layer {} of 6", d["layer"])),
            "{stdout}"
        );
        assert!(
            ["empty", "covered", "duplicate"].contains(&d["reason"].as_str().unwrap()),
            "{d}"
        );
    }
    std::fs::remove_dir_all(&out).unwrap();
}

/// `split`: layer 2 of a decomposition, decomposed again, becomes a group of two layers in its
/// place; the manifest's tree, the PSD's folders and the OpenRaster stacks say so.
#[test]
fn split_decomposes_a_layer_again_into_a_group() {
    let first = temp_dir("split-first");
    let second = temp_dir("split-second");
    let model = [
        "--model-path",
        "tests/fixtures/tiny-qwen-image-layered",
        "--device",
        "cpu",
    ];
    let run = [
        "--prompt",
        "an apple",
        "--num-layers",
        "2",
        "--steps",
        "1",
        "--seed",
        "3",
    ];
    let mut args = vec![
        "decompose",
        "--input-image",
        "tests/fixtures/reference/images/input_rgba_wide.png",
    ];
    args.extend(model);
    args.extend(run);
    args.extend(["--output-dir", first.to_str().unwrap()]);
    let (code, _, stderr) = cli(&args);
    assert_eq!(code, 0, "{stderr}");

    let mut args = vec!["split", "--run-dir", first.to_str().unwrap(), "--layer", "2"];
    args.extend(model);
    args.extend(run);
    args.extend(["--output-dir", second.to_str().unwrap(), "--formats", "zip,psd,ora"]);
    let (code, stdout, stderr) = cli(&args);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("Layer 2 → 2 layers in group \"Layer 2\": 3 layers"),
        "{stdout}"
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(second.join("manifest.json")).unwrap()).unwrap();
    let names: Vec<&str> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Layer 1", "Layer 2.1", "Layer 2.2"]);
    assert_eq!(
        manifest["tree"],
        serde_json::json!([
            {"layer": 1},
            {"group": "Layer 2", "visible": true, "opacity": 1.0, "children": [{"layer": 2}, {"layer": 3}]}
        ])
    );
    assert_eq!(manifest["run"]["splits"][0]["layer"], "Layer 2");
    assert_eq!(manifest["run"]["seed"], 3, "the first run's record stays");
    for f in [
        "composite.png",
        "01_layer-1.png",
        "02_layer-2-1.png",
        "03_layer-2-2.png",
        "layers.zip",
        "layers.psd",
    ] {
        assert!(second.join(f).is_file(), "{f} missing");
    }
    // Layer 1 is carried over as it was.
    assert_eq!(
        max_diff(&first.join("01_layer-1.png"), &second.join("01_layer-1.png")),
        0
    );
    let mut ora = zip::ZipArchive::new(std::fs::File::open(second.join("layers.ora")).unwrap()).unwrap();
    let mut xml = String::new();
    std::io::Read::read_to_string(&mut ora.by_name("stack.xml").unwrap(), &mut xml).unwrap();
    assert!(xml.contains("<stack name=\"Layer 2\""), "{xml}");

    // A second split nests: Layer 2.1 becomes a group inside "Layer 2".
    let third = temp_dir("split-third");
    let mut args = vec!["split", "--run-dir", second.to_str().unwrap(), "--layer", "2"];
    args.extend(model);
    args.extend(run);
    args.extend(["--output-dir", third.to_str().unwrap()]);
    let (code, _, stderr) = cli(&args);
    assert_eq!(code, 0, "{stderr}");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(third.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(
        manifest["tree"],
        serde_json::json!([
            {"layer": 1},
            {"group": "Layer 2", "visible": true, "opacity": 1.0, "children": [
                {"group": "Layer 2.1", "visible": true, "opacity": 1.0, "children": [{"layer": 2}, {"layer": 3}]},
                {"layer": 4}
            ]}
        ])
    );
    assert_eq!(manifest["run"]["splits"].as_array().unwrap().len(), 2);

    // Bad requests are refused before any model loads.
    let (code, _, stderr) = cli(&[
        "split",
        "--run-dir",
        second.to_str().unwrap(),
        "--layer",
        "9",
        "--output-dir",
        third.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(stderr.contains("--layer 9: the stack in"), "{stderr}");
    let (code, _, stderr) = cli(&[
        "split",
        "--run-dir",
        second.to_str().unwrap(),
        "--layer",
        "1",
        "--output-dir",
        second.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(stderr.contains("--output-dir must differ"), "{stderr}");
    for d in [first, second, third] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

#[test]
fn bad_arguments_fail_clearly() {
    let cases: &[(&[&str], i32, &str)] = &[
        (
            &[
                "decompose",
                "--input-image",
                "x.png",
                "--prompt",
                "p",
                "--output-dir",
                "o",
                "--num-layers",
                "many",
            ],
            2,
            "`many` is not a number",
        ),
        (
            &[
                "decompose",
                "--input-image",
                "x.png",
                "--prompt",
                "p",
                "--output-dir",
                "o",
                "--num-layers",
                "12",
            ],
            2,
            "--num-layers",
        ),
        (
            &[
                "decompose",
                "--input-image",
                "x.png",
                "--prompt",
                "p",
                "--output-dir",
                "o",
                "--resolution",
                "700",
            ],
            2,
            "640 or 1024",
        ),
        (
            &[
                "decompose",
                "--input-image",
                "missing.png",
                "--prompt",
                "p",
                "--output-dir",
                "o",
            ],
            1,
            "missing.png",
        ),
        (
            &[
                "decompose",
                "--model-path",
                "/no/model",
                "--input-image",
                "tests/fixtures/reference/images/input_rgba_square.png",
                "--prompt",
                "p",
                "--output-dir",
                "o",
            ],
            1,
            "not a folder",
        ),
        (
            &[
                "decompose",
                "--input-image",
                "x.png",
                "--output-dir",
                "o",
                "--caption-language",
                "fr",
            ],
            2,
            "--caption-language",
        ),
        (&["compose", "-o", "x.png", "Cargo.toml"], 1, "PNG, JPEG or WebP"),
        (&["compose", "Cargo.toml"], 1, "-o flat.png"),
        (
            &["compose", "--to", "x.bmp", "Cargo.toml"],
            1,
            ".psd, .ora, .pptx or .zip",
        ),
        (
            &[
                "decompose",
                "--input-image",
                "x.png",
                "--output-dir",
                "o",
                "--formats",
                "zip,tiff",
            ],
            2,
            "unknown export format \"tiff\"",
        ),
        (
            &[
                "decompose",
                "--input-image",
                "x.png",
                "--output-dir",
                "o",
                "--formats",
                "png",
            ],
            2,
            "png is always written",
        ),
        (
            &["batch", "--input-dir", "/no/dir", "--prompt", "p", "--output-dir", "o"],
            1,
            "/no/dir",
        ),
    ];
    for (args, code, needle) in cases {
        let (got, _, stderr) = cli(args);
        assert_eq!(got, *code, "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {needle} not in {stderr}");
    }
}

#[test]
fn batch_decomposes_every_image_and_a_bad_one_does_not_lose_the_others() {
    let inputs = temp_dir("batch-in");
    let out = temp_dir("batch-out");
    std::fs::copy(
        repo().join("tests/fixtures/reference/images/input_rgba_wide.png"),
        inputs.join("wide.png"),
    )
    .unwrap();
    std::fs::write(inputs.join("broken.png"), b"not a png").unwrap();
    std::fs::write(inputs.join("notes.txt"), b"ignored").unwrap();
    let (code, stdout, stderr) = cli(&[
        "batch",
        "--model-path",
        "tests/fixtures/tiny-qwen-image-layered",
        "--device",
        "cpu",
        "--input-dir",
        inputs.to_str().unwrap(),
        "--prompt",
        "sunset over the sea",
        "--num-layers",
        "2",
        "--steps",
        "1",
        "--output-dir",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "one of two images is broken: {stdout}{stderr}");
    assert!(
        stderr.contains("broken.png") && stderr.contains("1 of 2 images failed"),
        "{stderr}"
    );
    // The good image's layers were still written (the wide input works at 768×512).
    assert!(stdout.contains("2 layers at 768×512"), "{stdout}");
    for f in [
        "composite.png",
        "01_layer-1.png",
        "02_layer-2.png",
        "layers.zip",
        "manifest.json",
    ] {
        assert!(out.join("wide").join(f).is_file(), "{f} missing");
    }
    assert!(!out.join("notes").exists());
    std::fs::remove_dir_all(&inputs).unwrap();
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn cli_edit_keeps_the_layers_alpha_and_fails_clearly() {
    let dir = std::env::temp_dir().join(format!("qwen-layers-cli-edit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let layer = test_support::layer_with_holes();
    let input = dir.join("layer.png");
    std::fs::write(&input, test_support::encode_png(&layer)).unwrap();
    let output = dir.join("edited.png");
    let args = |instruction: &str, steps: &str, input: &Path| -> Vec<String> {
        [
            "edit",
            "--model-path",
            "tests/fixtures/tiny-qwen-image-edit-2509",
            "--device",
            "cpu",
            "--layer-image",
            input.to_str().unwrap(),
            "--instruction",
            instruction,
            "--steps",
            steps,
            "--cfg-scale",
            "4",
            "--seed",
            "3",
            "--output",
            output.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let run = |a: Vec<String>| cli(&a.iter().map(String::as_str).collect::<Vec<_>>());

    let (code, stdout, stderr) = run(args("make it red", "2", &input));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("alpha kept"), "{stdout}");
    test_support::assert_alpha_kept(&image::open(&output).unwrap().to_rgba8(), &layer);

    let (code, _, stderr) = run(args("   ", "2", &input));
    assert_eq!(code, 1);
    assert!(stderr.contains("--instruction is empty"), "{stderr}");
    let garbage = dir.join("garbage.png");
    std::fs::write(&garbage, b"not an image").unwrap();
    let (code, _, stderr) = run(args("make it red", "2", &garbage));
    assert_eq!(code, 1);
    assert!(stderr.contains("garbage.png"), "{stderr}");
    let (code, _, stderr) = run(args("make it red", "1", &input));
    assert_eq!(code, 2, "clap rejects it");
    assert!(stderr.contains("--steps"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
