//! Starts the real `server` binary on a free port and exercises every REST endpoint with good
//! and bad requests, checking status codes, JSON error bodies and that the server keeps serving.

use std::process::Command;

use base64::Engine as _;
use serde_json::{json, Value};

mod common;
use common::{png_data_url, start, TINY_LAYERED};

async fn post(base: &str, path: &str, body: impl Into<reqwest::Body>) -> (u16, Value, reqwest::header::HeaderMap) {
    let resp = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let json = resp.json::<Value>().await.unwrap_or(Value::Null);
    (status, json, headers)
}

async fn get(base: &str, path: &str) -> (u16, Value) {
    let resp = reqwest::get(format!("{base}{path}")).await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json::<Value>().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn read_endpoints_report_config_and_status() {
    let s = start(&[
        "--qwen-image-layers",
        "6",
        "--qwen-image-steps",
        "30",
        "--queue-depth",
        "3",
    ]);
    let (code, config) = get(&s.base, "/api/qwen-image/config").await;
    assert_eq!(code, 200);
    assert_eq!(config["layer_num"], 6);
    assert_eq!(config["steps"], 30);
    assert_eq!(config["resolution"], 640);
    assert_eq!(config["model_type"], "qwenimage");
    assert_eq!(config["layer_range"], json!([2, 10]));

    let (code, status) = get(&s.base, "/api/qwen-image/status").await;
    assert_eq!(code, 200);
    assert_eq!(status["model_loaded"], false);
    assert_eq!(status["queue_capacity"], 3);
    assert_eq!(status["text_encoder"], "kept in memory between jobs (CPU)");
    // No model in the (empty) hub cache: unavailable, with a reason that says how to get it.
    assert_eq!(status["status"], "unavailable");
    assert!(status["reason"]
        .as_str()
        .unwrap()
        .contains("huggingface-cli download Qwen/Qwen-Image-Layered"));

    let (code, edit) = get(&s.base, "/api/qwen-image/edit-status").await;
    assert_eq!(code, 200);
    assert_eq!(edit["model"], "Qwen/Qwen-Image-Edit-2509");
    // Not cached, but a repo id: downloaded on the first edit, so not unavailable yet.
    assert_eq!(edit["status"], "idle");
    assert_eq!(edit["model_loaded"], false);
}

#[tokio::test]
async fn bad_requests_get_clear_json_errors_and_the_server_keeps_serving() {
    let s = start(&["--max-body-mb", "1"]);
    let good_image = png_data_url(8, 6);
    let cases: Vec<(Value, u16, &str)> = vec![
        (json!({"image": good_image, "layer_num": 1}), 422, "layer_num"),
        (json!({"image": good_image, "layer_num": 11}), 422, "layer_num"),
        (json!({"image": good_image, "resolution": 512}), 422, "resolution"),
        (json!({"image": good_image, "steps": 0}), 422, "steps"),
        (json!({"image": good_image, "steps": 100000}), 422, "steps"),
        (json!({"image": good_image, "cfg_scale": -3.0}), 422, "cfg_scale"),
        (json!({"image": "data:image/png;base64,!!!"}), 400, "base64"),
        (json!({"image": "aGVsbG8gd29ybGQ="}), 422, "PNG, JPEG or WebP"),
        (json!({"prompt": "no image"}), 400, "image"),
        (json!({"image": good_image, "layer_num": "four"}), 400, "invalid JSON"),
        (
            json!({"image": good_image, "formats": ["psd", "tiff"]}),
            400,
            "unknown export format \"tiff\"",
        ),
    ];
    for (body, code, needle) in cases {
        let (status, json, _) = post(&s.base, "/api/qwen-image/decompose", body.to_string()).await;
        assert_eq!(status, code, "{body}: {json}");
        let msg = json["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error field: {json}"));
        assert!(msg.contains(needle), "{needle} not in {msg}");
    }
    let (status, json, _) = post(&s.base, "/api/qwen-image/decompose", "{not json").await;
    assert_eq!((status, json["error"].as_str().is_some()), (400, true));

    // Over the body limit (1 MiB): 413 as JSON.
    let huge = json!({"image": "A".repeat(2 * 1024 * 1024)}).to_string();
    let (status, json, _) = post(&s.base, "/api/qwen-image/decompose", huge).await;
    assert_eq!(status, 413, "{json}");
    assert!(json["error"].as_str().unwrap().contains("larger than"));

    // Edit: empty instruction.
    let (status, json, _) = post(
        &s.base,
        "/api/qwen-image/edit-layer",
        json!({"image": good_image, "prompt": ""}).to_string(),
    )
    .await;
    assert_eq!(status, 422, "{json}");

    // A valid request cannot run without a model: 503 with the reason.
    let (status, json, _) = post(
        &s.base,
        "/api/qwen-image/decompose",
        json!({"image": good_image, "prompt": "a cat"}).to_string(),
    )
    .await;
    assert_eq!(status, 503, "{json}");
    assert!(json["error"].as_str().unwrap().contains("not available"));

    // Unknown paths and wrong methods are JSON errors too.
    assert_eq!(get(&s.base, "/api/qwen-image/nothing").await.0, 404);
    let (code, json) = get(&s.base, "/api/qwen-image/decompose").await;
    assert_eq!((code, json["error"].is_string()), (405, true));

    // Still serving.
    assert_eq!(get(&s.base, "/api/qwen-image/status").await.0, 200);
}

#[tokio::test]
async fn the_openapi_document_describes_every_route() {
    let s = start(&[]);
    let (code, doc) = get(&s.base, "/api/qwen-image/openapi.json").await;
    assert_eq!(code, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    let routes = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/routes.rs")).unwrap();
    let mut described = 0;
    // The path of every `.route(` call (rustfmt may put it on the next line).
    let routed = routes
        .split(".route(")
        .skip(1)
        .filter_map(|call| call.split('"').nth(1));
    for path in routed.filter(|p| p.starts_with("/api/qwen-image/")) {
        if path.contains('*') {
            continue;
        }
        assert!(paths.contains_key(path), "{path} is routed but not in openapi.json");
        described += 1;
    }
    assert_eq!(
        described,
        paths.keys().filter(|p| p.starts_with("/api/qwen-image/")).count(),
        "openapi.json describes a path that is not routed"
    );
    // Every documented server function exists: a GET answers, a POST of `{}` is a 400, not a 404.
    for (path, item) in paths.iter().filter(|(p, _)| p.starts_with("/api/app/")) {
        let url = format!("{}{path}", s.base);
        let code = if item.get("get").is_some() {
            reqwest::get(&url).await.unwrap().status().as_u16()
        } else {
            post(&s.base, path, "{}").await.0
        };
        assert!(code == 200 || code == 400, "{path}: {code}");
    }
    // Every schema reference resolves.
    let text = doc.to_string();
    for r in text.split("#/components/schemas/").skip(1) {
        let name = r.split('"').next().unwrap();
        assert!(doc["components"]["schemas"][name].is_object(), "dangling $ref {name}");
    }
}

#[tokio::test]
async fn api_token_is_enforced_when_set() {
    let s = start(&["--api-token", "s3cret"]);
    assert_eq!(get(&s.base, "/api/qwen-image/config").await.0, 401);
    let client = reqwest::Client::new();
    let ok = client
        .get(format!("{}/api/qwen-image/config", s.base))
        .header("authorization", "Bearer s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status().as_u16(), 200);
    let wrong = client
        .get(format!("{}/api/qwen-image/config", s.base))
        .header("authorization", "Bearer nope")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    // The web page itself stays public.
    assert_eq!(
        reqwest::get(format!("{}/", s.base)).await.unwrap().status().as_u16(),
        200
    );
}

#[tokio::test]
async fn the_page_is_server_rendered_with_the_app_layout() {
    let s = start(&[]);
    let html = reqwest::get(format!("{}/", s.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "Qwen-Image",
        "Z-Image",
        "Decompose Image",
        "/pkg/qwen_layers.js",
        "image-input",
    ] {
        assert!(html.contains(needle), "{needle} missing from the page");
    }
}

#[test]
fn startup_errors_are_clear_and_nonzero() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_server"))
            .args(["--port", "0"])
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, err) = run(&["--model-type", "zimage", "--z-image-width", "1000"]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("--z-image-width") && err.contains("multiple of 16"),
        "{err}"
    );

    let dir = std::env::temp_dir().join(format!("server-api-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("bad.toml");
    std::fs::write(&cfg, "[default.qwen_image]\nlayer_num = 4\nsteps = 20\n").unwrap();
    let (code, err) = run(&["--config", cfg.to_str().unwrap()]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("bad.toml") && err.contains("steps") && err.contains("line 3"),
        "{err}"
    );
    let (code, err) = run(&["--profile", "nope", "--config", "../config.toml"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("no profile `nope`"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn decode_data_url(url: &str) -> image::RgbaImage {
    let b64 = url.strip_prefix("data:image/png;base64,").expect("PNG data URL");
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
    image::load_from_memory(&bytes).unwrap().to_rgba8()
}

/// The test runs in `server/`, so its paths are relative to it.
const TINY: &str = "../tests/fixtures/tiny-qwen-image-layered";
const INPUT: &str = "../tests/fixtures/reference/images/input_rgba_square.png";

fn input_data_url() -> String {
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(INPUT).unwrap())
    )
}

#[tokio::test]
async fn rest_decompose_on_the_tiny_checkpoint_returns_what_the_cli_writes() {
    let s = start(&["--qwen-image-model-path", TINY_LAYERED, "--device", "cpu"]);
    let (_, status) = get(&s.base, "/api/qwen-image/status").await;
    assert_eq!(
        (status["status"].as_str(), status["model_loaded"].as_bool()),
        (Some("idle"), Some(false))
    );

    let body = json!({"image": input_data_url(), "prompt": "a red apple", "layer_num": 2, "steps": 1, "seed": 5});
    let (code, resp, _) = post(&s.base, "/api/qwen-image/decompose", body.to_string()).await;
    assert_eq!(code, 200, "{resp}");
    let names: Vec<_> = resp["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["Composite", "Layer 1", "Layer 2"]);
    assert_eq!(
        (
            resp["layer_count"].as_u64(),
            resp["resolution"].as_u64(),
            resp["seed"].as_u64()
        ),
        (Some(2), Some(640), Some(5))
    );
    assert_eq!(resp["layer_order"], "bottom-to-top");
    assert!(resp["generation_time"].as_f64().unwrap() > 0.0);
    let images: Vec<_> = resp["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| decode_data_url(l["image"].as_str().unwrap()))
        .collect();
    // Index 0 is the layers flattened bottom-first.
    assert_eq!(images[0], app::compose::composite_layers(&images[1..]).unwrap());
    let zip_bytes = base64::engine::general_purpose::STANDARD
        .decode(resp["zip_data"].as_str().unwrap())
        .unwrap();
    let zip = zip::ZipArchive::new(std::io::Cursor::new(zip_bytes)).unwrap();
    assert_eq!(zip.len(), 4);
    assert_eq!(get(&s.base, "/api/qwen-image/status").await.1["status"], "ready");

    // The Rust API (what the CLI runs) with the same seed gives the same layers.
    let model = engine::weights::ModelDir::open(TINY).unwrap();
    let mut decomposer = qwen_layers::Decomposer::from_model_dir(model, Default::default()).unwrap();
    let options = engine::pipeline::DecomposeOptions {
        prompt: "a red apple".into(),
        layers: 2,
        num_inference_steps: 1,
        seed: 5,
        ..Default::default()
    };
    let direct = decomposer
        .decompose(&image::open(INPUT).unwrap().to_rgba8(), &options)
        .unwrap();
    for (i, rest_layer) in images.iter().enumerate().skip(1) {
        assert!(
            direct.layers[i - 1] == *rest_layer,
            "layer {i}: REST and the Rust API differ"
        );
    }

    // Layered files beside the ZIP, as `formats` asks: each one as its readers expect it.
    let body = json!({"image": input_data_url(), "prompt": "a red apple", "layer_num": 2, "steps": 1, "seed": 5,
                      "formats": ["psd", "ora", "pptx", "png", "psd"]});
    let (code, resp, _) = post(&s.base, "/api/qwen-image/decompose", body.to_string()).await;
    assert_eq!(code, 200, "{resp}");
    let files = resp["files"].as_array().unwrap();
    let listed: Vec<_> = files.iter().map(|f| f["filename"].as_str().unwrap()).collect();
    assert_eq!(
        listed,
        ["layers.psd", "layers.ora", "layers.pptx", "layers.png"],
        "in order, once each"
    );
    let bytes = |i: usize| {
        base64::engine::general_purpose::STANDARD
            .decode(files[i]["data"].as_str().unwrap())
            .unwrap()
    };
    assert_eq!(&bytes(0)[..4], b"8BPS", "a Photoshop file");
    assert_eq!(files[0]["mime"], "image/vnd.adobe.photoshop");
    let mut ora = zip::ZipArchive::new(std::io::Cursor::new(bytes(1))).unwrap();
    assert_eq!(
        ora.by_index(0).unwrap().name().unwrap(),
        "mimetype",
        "OpenRaster's mimetype comes first"
    );
    assert!(ora.by_name("stack.xml").is_ok());
    let mut pptx = zip::ZipArchive::new(std::io::Cursor::new(bytes(2))).unwrap();
    assert!(pptx.by_name("ppt/slides/slide1.xml").is_ok());
    let flattened = image::load_from_memory(&bytes(3)).unwrap().to_rgba8();
    assert_eq!(flattened, images[0], "the flattened PNG is the composite");

    // layer_num "auto": six layers from the model, the ones kept come back, the rest are
    // reported with their reasons (the rules: app::layer_count's tests).
    let body = json!({"image": input_data_url(), "prompt": "a red apple", "layer_num": "auto", "steps": 1, "seed": 5,
                      "formats": ["zip"]});
    let (code, resp, _) = post(&s.base, "/api/qwen-image/decompose", body.to_string()).await;
    assert_eq!(code, 200, "{resp}");
    let auto = &resp["auto_layers"];
    assert_eq!(auto["produced"], 6, "{auto}");
    let kept = auto["kept"].as_array().unwrap().len();
    assert_eq!(kept + auto["dropped"].as_array().unwrap().len(), 6, "{auto}");
    assert_eq!(resp["layer_count"].as_u64(), Some(kept as u64));
    assert_eq!(resp["layers"].as_array().unwrap().len(), kept + 1);
    let zip_bytes = base64::engine::general_purpose::STANDARD
        .decode(resp["files"][0]["data"].as_str().unwrap())
        .unwrap();
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(zip_bytes)).unwrap();
    let manifest: Value = serde_json::from_reader(zip.by_name("manifest.json").unwrap()).unwrap();
    assert_eq!(&manifest["run"]["auto_layers"], auto, "the manifest carries the report");
    let (code, err, _) = post(
        &s.base,
        "/api/qwen-image/decompose",
        json!({"image": input_data_url(), "layer_num": "some"}).to_string(),
    )
    .await;
    assert_eq!(code, 400, "{err}");
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .contains(r#"layer_num must be a whole number or "auto""#),
        "{err}"
    );

    // An empty prompt is captioned automatically and the caption reported.
    let body = json!({"image": input_data_url(), "prompt": "", "layer_num": 2, "steps": 1, "seed": 5});
    let (code, resp, _) = post(&s.base, "/api/qwen-image/decompose", body.to_string()).await;
    assert_eq!(code, 200, "{resp}");
    let caption = resp["caption"].as_str().expect("caption reported");
    assert!(!caption.trim().is_empty());
    assert!(resp["layers"][1]["image"] != json!(null));
    // A prompt given by the caller reports no caption.
    assert_eq!(get(&s.base, "/api/qwen-image/status").await.0, 200);
}

#[tokio::test]
async fn jobs_report_progress_and_can_be_cancelled() {
    let s = start(&["--qwen-image-model-path", TINY_LAYERED, "--device", "cpu"]);
    let body = json!({"image": input_data_url(), "prompt": "a red apple", "layer_num": 2, "steps": 2, "seed": 1});
    let (code, started, _) = post(&s.base, "/api/qwen-image/jobs", body.to_string()).await;
    assert_eq!(code, 202, "{started}");
    let id = started["id"].as_str().unwrap().to_string();
    let mut phases = Vec::new();
    let done = loop {
        let (code, st) = get(&s.base, &format!("/api/qwen-image/jobs/{id}")).await;
        assert_eq!(code, 200);
        let phase = st["phase"].as_str().unwrap().to_string();
        if phases.last() != Some(&phase) {
            phases.push(phase);
        }
        if st["state"] != "queued" && st["state"] != "running" {
            break st;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(
        (done["step"].as_u64(), done["total_steps"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(done["result"]["layers"].as_array().unwrap().len(), 3);
    assert!(
        phases.contains(&"denoising".to_string()) && phases.last().unwrap() == "done",
        "{phases:?}"
    );

    // A long job, cancelled once it is denoising, ends "cancelled" between steps.
    let body = json!({"image": input_data_url(), "prompt": "a red apple", "layer_num": 2, "steps": 200});
    let (_, started, _) = post(&s.base, "/api/qwen-image/jobs", body.to_string()).await;
    let id = started["id"].as_str().unwrap().to_string();
    loop {
        let st = get(&s.base, &format!("/api/qwen-image/jobs/{id}")).await.1;
        if st["phase"] == "denoising" {
            assert!(st["total_steps"] == 200);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (code, _, _) = post(&s.base, &format!("/api/qwen-image/jobs/{id}/cancel"), "").await;
    assert_eq!(code, 200);
    let end = loop {
        let st = get(&s.base, &format!("/api/qwen-image/jobs/{id}")).await.1;
        if st["state"] != "running" && st["state"] != "queued" {
            break st;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(end["state"], "cancelled", "{end}");
    assert!(end["step"].as_u64().unwrap() < 200);
    assert_eq!(get(&s.base, "/api/qwen-image/jobs/job-none").await.0, 404);
}
