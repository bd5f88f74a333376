//! Layer editing end to end on the tiny Qwen-Image-Edit-2509 checkpoint: the REST endpoint and the
//! server function (the CLI's `edit` is tested in `cli/tests/cli.rs`), on a layer with holes and soft edges. The
//! edit must keep the layer's size and (by default) its alpha exactly, and bad requests must fail
//! clearly.

use base64::Engine as _;
use serde_json::{json, Value};

mod common;
use common::{data_url, png_bytes, repo, start, start_with_env, temp_dir, TINY_EDIT};
use test_support::{assert_alpha_kept, layer_with_holes};

async fn post(base: &str, path: &str, body: Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{base}{path}"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

async fn edit_status(base: &str) -> Value {
    reqwest::get(format!("{base}/api/qwen-image/edit-status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn edit_endpoint_and_server_function_keep_the_layers_alpha() {
    let s = start(&["--qwen-image-edit-model-path", TINY_EDIT]);
    let layer = layer_with_holes();
    let image = data_url(&png_bytes(&layer));

    let status = edit_status(&s.base).await;
    assert_eq!(
        (status["status"].as_str(), status["model_loaded"].as_bool()),
        (Some("idle"), Some(false)),
        "{status}"
    );
    assert_eq!(status["model"], TINY_EDIT);

    // Bad requests are refused before anything loads.
    let bad: Vec<(Value, u16, &str)> = vec![
        (json!({"image": image, "prompt": "  "}), 422, "must not be empty"),
        (
            json!({"image": "data:image/png;base64,aGVsbG8=", "prompt": "make it red"}),
            422,
            "PNG, JPEG or WebP",
        ),
        (
            json!({"image": "data:image/png;base64,!!!", "prompt": "make it red"}),
            400,
            "base64",
        ),
        (
            json!({"image": image, "prompt": "make it red", "steps": 1}),
            422,
            "at least 2 inference steps",
        ),
    ];
    for (body, code, needle) in bad {
        let resp = post(&s.base, "/api/qwen-image/edit-layer", body.clone()).await;
        assert_eq!(resp.status().as_u16(), code, "{body}");
        let json: Value = resp.json().await.unwrap();
        let msg = json["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error field: {json}"));
        assert!(msg.contains(needle), "{needle} not in {msg}");
    }

    // REST: PNG bytes, alpha kept.
    let body = json!({"image": image, "prompt": "make it red", "steps": 2, "cfg_scale": 4.0, "seed": 7});
    let resp = post(&s.base, "/api/qwen-image/edit-layer", body).await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["content-type"], "image/png");
    let edited_bytes = resp.bytes().await.unwrap();
    let edited = image::load_from_memory(&edited_bytes).unwrap();
    assert_eq!(edited.color(), image::ColorType::Rgba8);
    assert_alpha_kept(&edited.to_rgba8(), &layer);

    // The seed's own request, verbatim (its field names), gives the same edit.
    let seed_body = format!(
        r#"{{"layer_image": "{image}", "instruction": "make it red", "steps": 2, "cfg_scale": 4.0, "seed": 7}}"#
    );
    let resp = reqwest::Client::new()
        .post(format!("{}/api/qwen-image/edit-layer", s.base))
        .header("content-type", "application/json")
        .body(seed_body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["content-type"], "image/png");
    assert!(
        resp.bytes().await.unwrap() == edited_bytes,
        "the seed's field names must mean the same request"
    );
    let status = edit_status(&s.base).await;
    assert_eq!(
        (status["status"].as_str(), status["model_loaded"].as_bool()),
        (Some("ready"), Some(true)),
        "{status}"
    );

    // Server function: a PNG data URL; with keep_alpha false the alpha is re-derived.
    let resp = post(
        &s.base,
        "/api/app/edit_layer",
        json!({"request": {"image": image, "prompt": "make it red", "steps": 2, "seed": 7, "keep_alpha": false}}),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 200);
    let url: String = resp.json().await.unwrap();
    let b64 = url.strip_prefix("data:image/png;base64,").expect("a PNG data URL");
    let png = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
    let rekeyed = image::load_from_memory(&png).unwrap().to_rgba8();
    assert_eq!(rekeyed.dimensions(), layer.dimensions());
    assert!(
        rekeyed.pixels().all(|p| p.0[3] > 0 || p.0 == [0, 0, 0, 0]),
        "transparent pixels carry no colour"
    );

    let resp = post(
        &s.base,
        "/api/app/edit_layer",
        json!({"request": {"image": image, "prompt": ""}}),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 422);
    assert!(resp.text().await.unwrap().contains("must not be empty"));
    let status: Value = reqwest::get(format!("{}/api/app/edit_status", s.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["status"], "ready");
}

#[tokio::test]
async fn a_missing_edit_model_is_reported_and_refused() {
    let s = start(&["--qwen-image-edit-model-path", "/no/such/edit-model"]);
    let status = edit_status(&s.base).await;
    assert_eq!(status["status"], "unavailable");
    assert!(
        status["reason"].as_str().unwrap().contains("/no/such/edit-model"),
        "{status}"
    );
    let layer = data_url(&png_bytes(&layer_with_holes()));
    let resp = post(
        &s.base,
        "/api/qwen-image/edit-layer",
        json!({"image": layer, "prompt": "make it red"}),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 503);
    let json: Value = resp.json().await.unwrap();
    assert!(json["error"].as_str().unwrap().contains("not a folder"), "{json}");

    // A Layered checkpoint is not an edit model: found out at the first edit, then refused.
    let s = start(&["--qwen-image-edit-model-path", "tests/fixtures/tiny-qwen-image-layered"]);
    let resp = post(
        &s.base,
        "/api/qwen-image/edit-layer",
        json!({"image": layer, "prompt": "make it red", "steps": 2}),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 503);
    let json: Value = resp.json().await.unwrap();
    assert!(
        json["error"].as_str().unwrap().contains("Qwen-Image-Layered model"),
        "{json}"
    );
    assert_eq!(edit_status(&s.base).await["status"], "unavailable");
}

/// The first edit of a repo id not cached yet downloads it; `edit-status` follows the download
/// (file, bytes) and the edit then runs. The hub is a stand-in on localhost (`HF_ENDPOINT`).
#[tokio::test]
async fn the_first_edit_downloads_the_model_and_edit_status_follows_it() {
    let repo_id = "test-owner/tiny-edit";
    let delay = std::time::Duration::from_millis(60);
    let (hub, _) = test_support::fake_hub::start(repo().join(TINY_EDIT), repo_id, delay);
    let cache = temp_dir("hub-cache");
    let s = start_with_env(
        &["--qwen-image-edit-model-path", repo_id],
        &[("HF_ENDPOINT", &hub), ("HF_HUB_CACHE", cache.to_str().unwrap())],
    );
    assert_eq!(edit_status(&s.base).await["status"], "idle");
    let layer = layer_with_holes();
    let body =
        json!({"layer_image": data_url(&png_bytes(&layer)), "instruction": "make it red", "steps": 2, "seed": 1});
    let base = s.base.clone();
    let edit = tokio::spawn(async move { post(&base, "/api/qwen-image/edit-layer", body).await });
    let mut seen = None;
    for _ in 0..400 {
        let st = edit_status(&s.base).await;
        if st["status"] == "downloading" {
            seen = Some(st);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let st = seen.expect("edit-status never said downloading");
    let d = &st["download"];
    assert!(
        d["files"].as_u64().unwrap() > 5 && d["file_index"].as_u64().unwrap() >= 1,
        "{st}"
    );
    assert!(st["reason"].as_str().unwrap().contains("downloading"), "{st}");
    let resp = edit.await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_alpha_kept(
        &image::load_from_memory(&resp.bytes().await.unwrap())
            .unwrap()
            .to_rgba8(),
        &layer,
    );
    let st = edit_status(&s.base).await;
    assert_eq!(
        (st["status"].as_str(), st["download"].is_null()),
        (Some("ready"), true),
        "{st}"
    );
}
