//! The Z-Image REST routes on the real server with the tiny checkpoint: status, blocking
//! generation, followable jobs with progress and cancel, JSON 4xx for every bad input, the mode
//! flag, and generate → decompose over REST.

use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};

mod common;
use common::{start, TINY_LAYERED};

const TINY_Z: &str = "tests/fixtures/tiny-z-image-turbo";

async fn post(base: &str, path: &str, body: Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json::<Value>().await.unwrap_or(Value::Null))
}

async fn get(base: &str, path: &str) -> (u16, Value) {
    let resp = reqwest::get(format!("{base}{path}")).await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json::<Value>().await.unwrap_or(Value::Null))
}

fn png_of(data_url: &str) -> image::RgbaImage {
    let b64 = data_url.strip_prefix("data:image/png;base64,").expect("a PNG data URL");
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
    image::load_from_memory(&bytes).unwrap().to_rgba8()
}

fn server() -> common::Server {
    start(&[
        "--device",
        "cpu",
        "--model-type",
        "zimage",
        "--z-image-model-path",
        TINY_Z,
        "--z-image-steps",
        "2",
        "--z-image-width",
        "64",
        "--z-image-height",
        "48",
        "--qwen-image-model-path",
        TINY_LAYERED,
        "--qwen-image-steps",
        "2",
        "--qwen-image-layers",
        "2",
        "--z-image-max-pixels",
        "4096",
    ])
}

#[tokio::test]
async fn generate_then_decompose_over_rest() {
    let s = server();
    let (code, status) = get(&s.base, "/api/z-image/status").await;
    assert_eq!(code, 200);
    assert_eq!(status["status"], "idle");
    assert_eq!(status["default_mode"], "zimage");
    assert_eq!(status["residency"], "kept loaded between jobs (CPU)");
    assert_eq!(
        status["defaults"],
        json!({"width": 64, "height": 48, "steps": 2, "cfg_scale": 0.0, "seed": null})
    );
    let (_, config) = get(&s.base, "/api/qwen-image/config").await;
    assert_eq!(config["model_type"], "zimage");

    let (code, out) = post(
        &s.base,
        "/api/z-image/generate",
        json!({"prompt": "A red fox", "seed": 3}),
    )
    .await;
    assert_eq!(code, 200, "{out}");
    assert_eq!(
        (out["seed"].clone(), out["width"].clone(), out["height"].clone()),
        (json!(3), json!(64), json!(48))
    );
    assert_eq!(out["steps"], 2);
    assert!(out["generation_time"].as_f64().unwrap() > 0.0);
    let img = png_of(out["image"].as_str().unwrap());
    assert_eq!(img.dimensions(), (64, 48));
    // Same seed, same image; the model is loaded now.
    let (_, again) = post(
        &s.base,
        "/api/z-image/generate",
        json!({"prompt": "A red fox", "seed": 3}),
    )
    .await;
    assert_eq!(again["image"], out["image"]);
    assert_eq!(get(&s.base, "/api/z-image/status").await.1["status"], "ready");
    // CFG with a negative prompt and another size.
    let (code, cfg) = post(
        &s.base,
        "/api/z-image/generate",
        json!({"prompt": "A red fox", "negative_prompt": "blur", "cfg_scale": 2.0, "width": 32, "height": 32, "seed": 3}),
    )
    .await;
    assert_eq!(code, 200, "{cfg}");
    assert_eq!(png_of(cfg["image"].as_str().unwrap()).dimensions(), (32, 32));

    // The generated image decomposes over the Qwen-Image route.
    let (code, layers) = post(
        &s.base,
        "/api/qwen-image/decompose",
        json!({"image": out["image"], "prompt": "A red fox"}),
    )
    .await;
    assert_eq!(code, 200, "{layers}");
    assert_eq!(layers["layer_count"], 2);
}

#[tokio::test]
async fn jobs_report_progress_and_cancel() {
    let s = server();
    let (code, started) = post(
        &s.base,
        "/api/z-image/jobs",
        json!({"prompt": "A lighthouse", "steps": 3}),
    )
    .await;
    assert_eq!(code, 202, "{started}");
    let id = started["id"].as_str().unwrap().to_string();
    let mut last = Value::Null;
    for _ in 0..600 {
        let (code, st) = get(&s.base, &format!("/api/z-image/jobs/{id}")).await;
        assert_eq!(code, 200);
        last = st;
        if last["state"] == "done" || last["state"] == "failed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last["state"], "done", "{last}");
    assert_eq!(
        (last["step"].clone(), last["total_steps"].clone()),
        (json!(3), json!(3))
    );
    assert_eq!(png_of(last["result"]["image"].as_str().unwrap()).dimensions(), (64, 48));

    // A job cancelled while queued behind another never runs.
    let (_, a) = post(&s.base, "/api/z-image/jobs", json!({"prompt": "one", "steps": 50})).await;
    let (_, b) = post(&s.base, "/api/z-image/jobs", json!({"prompt": "two", "steps": 50})).await;
    let (a, b) = (
        a["id"].as_str().unwrap().to_string(),
        b["id"].as_str().unwrap().to_string(),
    );
    let (code, st) = post(&s.base, &format!("/api/z-image/jobs/{b}/cancel"), json!({})).await;
    assert_eq!(code, 200, "{st}");
    let (code, _) = post(&s.base, &format!("/api/z-image/jobs/{a}/cancel"), json!({})).await;
    assert_eq!(code, 200);
    for id in [&a, &b] {
        let mut st = Value::Null;
        for _ in 0..600 {
            st = get(&s.base, &format!("/api/z-image/jobs/{id}")).await.1;
            if st["state"] != "queued" && st["state"] != "running" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(st["state"], "cancelled", "{st}");
        assert!(st["step"].as_u64().unwrap() < 50, "{st}");
    }
}

#[tokio::test]
async fn bad_requests_are_json_4xx() {
    let s = server();
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        ("/api/z-image/generate", json!({"prompt": ""}), 422, "prompt is empty"),
        (
            "/api/z-image/generate",
            json!({"prompt": "x", "width": 50}),
            422,
            "width",
        ),
        (
            "/api/z-image/generate",
            json!({"prompt": "x", "height": 4096}),
            422,
            "height",
        ),
        (
            "/api/z-image/generate",
            json!({"prompt": "x", "steps": 0}),
            422,
            "steps",
        ),
        (
            "/api/z-image/generate",
            json!({"prompt": "x", "width": 128, "height": 64}),
            422,
            "--z-image-max-pixels",
        ),
        (
            "/api/z-image/generate",
            json!({"prompt": "x", "cfg_scale": -1}),
            422,
            "cfg_scale",
        ),
        (
            "/api/z-image/generate",
            json!({"prompt": "fox ".repeat(700)}),
            422,
            "at most 512",
        ),
        ("/api/z-image/generate", json!({"width": 64}), 400, "prompt"),
        ("/api/z-image/jobs", json!({"prompt": 5}), 400, "invalid JSON"),
        ("/api/z-image/jobs/zimg-nope/cancel", json!({}), 404, "no Z-Image job"),
    ];
    for (path, body, code, needle) in cases {
        let (got, err) = post(&s.base, path, body.clone()).await;
        assert_eq!(got, code, "{path} {body}: {err}");
        assert!(
            err["error"].as_str().unwrap_or("").contains(needle),
            "{path} {body}: {err}"
        );
    }
    let (code, err) = get(&s.base, "/api/z-image/jobs/zimg-nope").await;
    assert_eq!((code, err["error"].is_string()), (404, true));
    let (code, err) = get(&s.base, "/api/z-image/generate").await;
    assert_eq!((code, err["error"].is_string()), (405, true));
    let (code, err) = get(&s.base, "/api/z-image/nothing").await;
    assert_eq!((code, err["error"].is_string()), (404, true));
    // Still serving.
    assert_eq!(get(&s.base, "/api/z-image/status").await.0, 200);
}

#[tokio::test]
async fn a_missing_model_is_unavailable_with_a_reason() {
    let s = start(&["--device", "cpu", "--z-image-model-path", "end2end/no-such-model"]);
    let (_, status) = get(&s.base, "/api/z-image/status").await;
    assert_eq!(status["status"], "unavailable");
    assert_eq!(status["default_mode"], "qwenimage");
    assert!(status["reason"].as_str().unwrap().contains("no-such-model"), "{status}");
    let (code, err) = post(&s.base, "/api/z-image/generate", json!({"prompt": "x"})).await;
    assert_eq!(code, 503, "{err}");
}

#[tokio::test]
async fn the_openapi_document_describes_every_z_image_route() {
    let s = start(&["--device", "cpu"]);
    let (code, doc) = get(&s.base, "/api/qwen-image/openapi.json").await;
    assert_eq!(code, 200);
    let paths = doc["paths"].as_object().unwrap();
    let routes = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/z_image.rs")).unwrap();
    let routed: Vec<&str> = routes
        .split(".route(")
        .skip(1)
        .filter_map(|call| call.split('"').nth(1))
        .filter(|p| !p.contains('*'))
        .collect();
    assert_eq!(routed.len(), 5);
    for path in &routed {
        assert!(paths.contains_key(*path), "{path} is routed but not in openapi.json");
    }
    assert_eq!(
        paths.keys().filter(|p| p.starts_with("/api/z-image/")).count(),
        routed.len()
    );
    let width = &doc["components"]["schemas"]["GenerateRequest"]["properties"]["width"];
    assert_eq!(
        (width["multipleOf"].clone(), width["maximum"].clone()),
        (json!(16), json!(2048))
    );
    let steps = &doc["components"]["schemas"]["GenerateRequest"]["properties"]["steps"];
    assert_eq!(steps["minimum"], 1);
}
