//! Recursive decomposition and followable edits over REST, on the tiny checkpoints: a layer of a
//! finished run decomposed again (`POST /runs/{id}/layers/{index}/split`, and the same layer's
//! RGBA sent to `/decompose` as a photo would be), and a layer edit as a job with progress and
//! cancel (`/edit-jobs`), each with its errors as JSON 4xx.

use base64::Engine as _;
use serde_json::{json, Value};

mod common;
use common::{data_url, png_bytes, start, TINY_EDIT, TINY_LAYERED};
use test_support::layer_with_holes;

async fn post(base: &str, path: &str, body: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .header("content-type", "application/json")
        .body(body.to_string())
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

/// Polls `{path}{id}` until the job ends; returns its last status and the phases it went through.
async fn follow(base: &str, path: &str, id: &str) -> (Value, Vec<String>) {
    let mut phases: Vec<String> = Vec::new();
    loop {
        let (code, st) = get(base, &format!("{path}{id}")).await;
        assert_eq!(code, 200, "{st}");
        let phase = st["phase"].as_str().unwrap().to_string();
        if phases.last() != Some(&phase) {
            phases.push(phase);
        }
        if st["state"] != "queued" && st["state"] != "running" {
            return (st, phases);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn decode(url: &str) -> image::RgbaImage {
    let b64 = url.strip_prefix("data:image/png;base64,").expect("PNG data URL");
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
    image::load_from_memory(&bytes).unwrap().to_rgba8()
}

/// A small photo-like input: a gradient with an opaque disk.
fn photo() -> String {
    data_url(&png_bytes(&image::RgbaImage::from_fn(48, 40, |x, y| {
        let disk = (x as i32 - 24).pow(2) + (y as i32 - 20).pow(2) < 120;
        if disk {
            image::Rgba([220, 30, 40, 255])
        } else {
            image::Rgba([(x * 5) as u8, (y * 6) as u8, 160, 255])
        }
    })))
}

#[tokio::test]
async fn a_layer_of_a_run_splits_into_sub_layers() {
    let s = start(&["--qwen-image-model-path", TINY_LAYERED, "--device", "cpu"]);
    let body = json!({"image": photo(), "prompt": "a red ball", "layer_num": 2, "steps": 2, "seed": 3});
    let (code, started) = post(&s.base, "/api/qwen-image/jobs", &body.to_string()).await;
    assert_eq!(code, 202, "{started}");
    let run = started["id"].as_str().unwrap().to_string();
    let (done, _) = follow(&s.base, "/api/qwen-image/jobs/", &run).await;
    assert_eq!(done["state"], "done", "{done}");
    let (width, height) = (done["result"]["width"].as_u64(), done["result"]["height"].as_u64());
    let layer2 = done["result"]["layers"][2]["image"].as_str().unwrap().to_string();
    assert_eq!(done["result"]["layers"][2]["index"], 2);

    // Split Layer 2 into 3 sub-layers: a decompose job of its own, at the run's size.
    let split = format!("/api/qwen-image/runs/{run}/layers/2/split");
    let (code, started) = post(
        &s.base,
        &split,
        &json!({"prompt": "a ball", "layer_num": 3, "steps": 2, "seed": 4}).to_string(),
    )
    .await;
    assert_eq!(code, 202, "{started}");
    let job = started["id"].as_str().unwrap().to_string();
    assert_ne!(job, run);
    let (parts, phases) = follow(&s.base, "/api/qwen-image/jobs/", &job).await;
    assert_eq!(parts["state"], "done", "{parts}");
    assert!(phases.contains(&"denoising".to_string()), "{phases:?}");
    let result = &parts["result"];
    let names: Vec<&str> = result["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Composite", "Layer 1", "Layer 2", "Layer 3"]);
    assert_eq!((result["width"].as_u64(), result["height"].as_u64()), (width, height));
    let part = decode(result["layers"][1]["image"].as_str().unwrap());
    assert_eq!(
        (u64::from(part.width()), u64::from(part.height())),
        (width.unwrap(), height.unwrap())
    );
    // The split is a run of its own, listed and splittable again.
    let (code, again) = post(
        &s.base,
        &format!("/api/qwen-image/runs/{job}/layers/1/split"),
        &json!({"prompt": "a ball", "layer_num": 2, "steps": 1}).to_string(),
    )
    .await;
    assert_eq!(code, 202, "{again}");
    let (nested, _) = follow(&s.base, "/api/qwen-image/jobs/", again["id"].as_str().unwrap()).await;
    assert_eq!(nested["state"], "done", "{nested}");

    // The same layer's RGBA sent as a photo: `/decompose` takes it and gives layers out.
    let rgba = decode(&layer2);
    assert!(rgba.pixels().any(|p| p.0[3] < 255), "the layer has transparency");
    let body = json!({"image": layer2, "prompt": "a ball", "layer_num": 2, "steps": 1, "seed": 4});
    let (code, resp) = post(&s.base, "/api/qwen-image/decompose", &body.to_string()).await;
    assert_eq!(code, 200, "{resp}");
    assert_eq!(resp["layers"].as_array().unwrap().len(), 3);
    assert_eq!((resp["width"].as_u64(), resp["height"].as_u64()), (width, height));

    // Errors: JSON 4xx that say what is wrong.
    let cases: Vec<(String, Value, u16, &str)> = vec![
        (
            format!("/api/qwen-image/runs/{run}/layers/0/split"),
            json!({}),
            422,
            "composite",
        ),
        (
            format!("/api/qwen-image/runs/{run}/layers/9/split"),
            json!({}),
            404,
            "layers 1 to 2",
        ),
        (
            "/api/qwen-image/runs/job-none/layers/1/split".into(),
            json!({}),
            404,
            "no finished run",
        ),
        (
            format!("/api/qwen-image/runs/{run}/layers/x/split"),
            json!({}),
            400,
            "layer index",
        ),
        (
            format!("/api/qwen-image/runs/{run}/layers/1/split"),
            json!({"layer_num": 1}),
            422,
            "layer_num",
        ),
        (
            format!("/api/qwen-image/runs/{run}/layers/1/split"),
            json!({"steps": "many"}),
            400,
            "invalid JSON",
        ),
    ];
    for (path, body, code, needle) in cases {
        let (status, json) = post(&s.base, &path, &body.to_string()).await;
        assert_eq!(status, code, "{path} {body}: {json}");
        let msg = json["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error field: {json}"));
        assert!(msg.contains(needle), "{needle} not in {msg}");
    }
    let resp = reqwest::get(format!("{}{split}", s.base)).await.unwrap();
    assert_eq!(resp.status().as_u16(), 405);
}

#[tokio::test]
async fn an_edit_job_reports_progress_and_can_be_cancelled() {
    let s = start(&["--qwen-image-edit-model-path", TINY_EDIT, "--device", "cpu"]);
    let layer = layer_with_holes();
    let image = data_url(&png_bytes(&layer));

    let body = json!({"layer_image": image, "instruction": "make it red", "steps": 2, "seed": 7});
    let (code, started) = post(&s.base, "/api/qwen-image/edit-jobs", &body.to_string()).await;
    assert_eq!(code, 202, "{started}");
    let id = started["id"].as_str().unwrap().to_string();
    let (done, phases) = follow(&s.base, "/api/qwen-image/edit-jobs/", &id).await;
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(
        (done["step"].as_u64(), done["total_steps"].as_u64()),
        (Some(2), Some(2))
    );
    assert!(
        phases.contains(&"denoising".to_string()) && phases.last().unwrap() == "done",
        "{phases:?}"
    );
    assert_eq!(done["result"]["seed"], 7);
    let edited = decode(done["result"]["image"].as_str().unwrap());
    assert_eq!(edited.dimensions(), layer.dimensions());
    for (a, b) in edited.pixels().zip(layer.pixels()) {
        assert_eq!(a.0[3], b.0[3], "the layer's alpha is kept");
    }
    // The server function reports the same job.
    let (code, via_fn) = post(&s.base, "/api/app/edit_job_status", &json!({"id": id}).to_string()).await;
    assert_eq!((code, &via_fn["state"]), (200, &json!("done")));

    // A long edit, cancelled while denoising, ends "cancelled" between steps.
    let body = json!({"layer_image": image, "instruction": "make it blue", "steps": 200});
    let (code, started) = post(&s.base, "/api/app/start_edit", &json!({"request": body}).to_string()).await;
    assert_eq!(code, 200, "{started}");
    let id = started["id"].as_str().unwrap().to_string();
    loop {
        let st = get(&s.base, &format!("/api/qwen-image/edit-jobs/{id}")).await.1;
        if st["phase"] == "denoising" && st["step"].as_u64() >= Some(1) {
            assert_eq!(st["total_steps"], 200);
            assert!(st["eta_seconds"].as_f64().is_some(), "{st}");
            break;
        }
        assert!(st["state"] == "queued" || st["state"] == "running", "{st}");
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    }
    let (code, _) = post(&s.base, &format!("/api/qwen-image/edit-jobs/{id}/cancel"), "").await;
    assert_eq!(code, 200);
    let (end, _) = follow(&s.base, "/api/qwen-image/edit-jobs/", &id).await;
    assert_eq!(end["state"], "cancelled", "{end}");
    assert!(end["step"].as_u64().unwrap() < 200);

    // Errors: JSON 4xx.
    let (code, json) = get(&s.base, "/api/qwen-image/edit-jobs/job-none").await;
    assert_eq!(code, 404, "{json}");
    assert!(json["error"].as_str().unwrap().contains("no edit job"));
    let (code, json) = post(&s.base, "/api/qwen-image/edit-jobs/job-none/cancel", "").await;
    assert_eq!((code, json["error"].is_string()), (404, true));
    let bad = json!({"layer_image": image, "instruction": "make it red", "steps": 1});
    let (code, json) = post(&s.base, "/api/qwen-image/edit-jobs", &bad.to_string()).await;
    assert_eq!(code, 422, "{json}");
    assert!(json["error"].as_str().unwrap().contains("at least 2"));
    // The blocking endpoint still answers with the PNG.
    let body = json!({"layer_image": image, "instruction": "make it red", "steps": 2, "seed": 7});
    let resp = reqwest::Client::new()
        .post(format!("{}/api/qwen-image/edit-layer", s.base))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let png = resp.bytes().await.unwrap();
    assert_eq!(
        image::load_from_memory(&png).unwrap().to_rgba8(),
        edited,
        "the same seed, the same edit"
    );
}
