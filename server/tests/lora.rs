//! LoRA adapters and presets through the real server on the tiny Edit checkpoint (issue 20): the
//! config's `edit_lora` and a Lightning-style preset (its LoRA fixture, the shipped scheduler
//! file, 4 steps, no CFG) are listed by `/config`, a request picks the preset, `/status` says what
//! is merged, and a request without it swaps back; unknown and unusable presets are refused.

use serde_json::{json, Value};

mod common;
use common::{data_url, png_bytes, repo, start, temp_dir, TINY_EDIT};

async fn post(base: &str, path: &str, body: Value) -> (u16, reqwest::Response) {
    let resp = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp)
}

async fn get(base: &str, path: &str) -> Value {
    reqwest::get(format!("{base}{path}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn presets_pick_adapters_and_scheduler_per_request() {
    let root = repo();
    let fixtures = root.join("tests/fixtures/reference/extra/lora");
    let dir = temp_dir("lora-config");
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[default.qwen_image]
model_path = "{root}/tests/fixtures/tiny-qwen-image-layered"
edit_model_path = "{root}/{TINY_EDIT}"
edit_lora = [{{ path = "{fx}/kohya.safetensors", scale = 0.5 }}]

[default.presets.fast-edit-8]
label = "Fast edit (8 steps)"
pipeline = "edit"
steps = 4
cfg_scale = 1.0
scheduler_config = "{root}/presets/qwen-image-lightning/scheduler_config.json"
lora = [{{ path = "{fx}/lightning.safetensors" }}]

[default.presets.my-style]
pipeline = "decompose"
steps = 2
cfg_scale = 1.0
lora = [{{ path = "{fx}/kohya.safetensors", scale = 0.8 }}]

[default.presets.not-downloaded]
pipeline = "edit"
steps = 8
cfg_scale = 1.0
lora = [{{ path = "missing.safetensors" }}]
"#,
            root = root.display(),
            fx = fixtures.display(),
        ),
    )
    .unwrap();
    let s = start(&["--config", config.to_str().unwrap()]);

    let cfg = get(&s.base, "/api/qwen-image/config").await;
    let adapters = &cfg["adapters"];
    assert_eq!(adapters["edit_lora"][0]["scale"], 0.5, "{cfg}");
    let presets = adapters["presets"].as_array().unwrap();
    let fast = presets.iter().find(|p| p["name"] == "fast-edit-8").unwrap();
    assert_eq!(
        (fast["available"].as_bool(), fast["steps"].as_u64()),
        (Some(true), Some(4))
    );
    assert_eq!(fast["label"], "Fast edit (8 steps)");
    let missing = presets.iter().find(|p| p["name"] == "not-downloaded").unwrap();
    assert_eq!(missing["available"], false);
    assert!(missing["reason"].as_str().unwrap().contains("missing.safetensors"));

    let layer = image::RgbaImage::from_fn(40, 24, |x, y| image::Rgba([200, (x * 6) as u8, (y * 9) as u8, 255]));
    let image = data_url(&png_bytes(&layer));
    // Refused before queueing: an unknown preset (422) and one whose LoRA is not there (503).
    let (code, resp) = post(
        &s.base,
        "/api/qwen-image/edit-layer",
        json!({"image": image, "prompt": "make it blue", "preset": "turbo"}),
    )
    .await;
    let body: Value = resp.json().await.unwrap();
    assert_eq!(code, 422, "{body}");
    assert!(body["error"].as_str().unwrap().contains("fast-edit-8"), "{body}");
    let (code, resp) = post(
        &s.base,
        "/api/qwen-image/edit-layer",
        json!({"image": image, "prompt": "make it blue", "preset": "not-downloaded"}),
    )
    .await;
    let body: Value = resp.json().await.unwrap();
    assert_eq!(code, 503, "{body}");

    // The preset: its adapters on top of the edit pipeline's own, 4 steps, no CFG.
    let (code, resp) = post(
        &s.base,
        "/api/qwen-image/edit-layer",
        json!({"image": image, "prompt": "make it blue", "preset": "fast-edit-8", "seed": 1}),
    )
    .await;
    assert_eq!(code, 200, "{}", resp.text().await.unwrap());
    let fast_png = resp.bytes().await.unwrap();
    let status = get(&s.base, "/api/qwen-image/status").await;
    let edit = status["lora"]["edit"].as_array().unwrap();
    assert_eq!(edit.len(), 2, "{status}");
    assert!(edit[0]["path"].as_str().unwrap().ends_with("kohya.safetensors"));
    assert!(edit[1]["path"].as_str().unwrap().ends_with("lightning.safetensors"));
    assert_eq!(status["lora"]["edit_preset"], "fast-edit-8");

    // Without the preset: back to the pipeline's own adapter (the DiT swapped, not the rest).
    let (code, resp) = post(
        &s.base,
        "/api/qwen-image/edit-layer",
        json!({"image": image, "prompt": "make it blue", "steps": 4, "cfg_scale": 1.0, "seed": 1}),
    )
    .await;
    assert_eq!(code, 200);
    let plain_png = resp.bytes().await.unwrap();
    assert_ne!(
        fast_png, plain_png,
        "the preset's LoRA and scheduler changed the result"
    );
    let status = get(&s.base, "/api/qwen-image/status").await;
    assert_eq!(status["lora"]["edit"].as_array().unwrap().len(), 1, "{status}");
    assert_eq!(status["lora"]["edit_preset"], Value::Null);

    // A decompose preset (a user's LoRA for Qwen-Image-Layered): its adapter merged for that run.
    let (code, resp) = post(
        &s.base,
        "/api/qwen-image/decompose",
        json!({"image": image, "prompt": "a test", "layer_num": 2, "preset": "my-style", "seed": 3}),
    )
    .await;
    assert_eq!(code, 200, "{}", resp.text().await.unwrap());
    let status = get(&s.base, "/api/qwen-image/status").await;
    assert_eq!(status["lora"]["decompose_preset"], "my-style", "{status}");
    assert_eq!(status["lora"]["decompose"][0]["scale"], 0.8);
    // An edit preset is not a decompose preset.
    let (code, _) = post(
        &s.base,
        "/api/qwen-image/decompose",
        json!({"image": image, "prompt": "a test", "preset": "fast-edit-8"}),
    )
    .await;
    assert_eq!(code, 422);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_missing_edit_lora_makes_editing_unavailable_with_the_reason() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s = start(&[
        "--qwen-image-edit-model-path",
        TINY_EDIT,
        "--edit-lora",
        "/no/such/adapter.safetensors:0.5",
    ]);
    let status = rt.block_on(get(&s.base, "/api/qwen-image/edit-status"));
    assert_eq!(status["status"], "unavailable", "{status}");
    assert!(status["reason"]
        .as_str()
        .unwrap()
        .contains("/no/such/adapter.safetensors"));
    let cfg = rt.block_on(get(&s.base, "/api/qwen-image/config"));
    assert_eq!(cfg["adapters"]["edit_lora"][0]["scale"], 0.5);
}
