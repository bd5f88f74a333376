//! Several engine workers (issue 21) on the real server with the tiny checkpoint: CPU workers
//! stand in for GPUs (`--devices cpu,cpu`), so the scheduling and the latency mode's
//! CFG-parallel path are tested here; the GPU numbers come from `gpu/gpu_bench.sh`.

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

mod common;
use common::{start, Server, TINY_LAYERED};

const INPUT: &str = "../tests/fixtures/reference/images/input_rgba_square.png";

fn input_data_url() -> String {
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(INPUT).unwrap())
    )
}

async fn get(s: &Server, path: &str) -> Value {
    let resp = reqwest::get(format!("{}{path}", s.base)).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200, "GET {path}");
    resp.json().await.unwrap()
}

async fn post(s: &Server, path: &str, body: &Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{}{path}", s.base))
        .json(body)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap_or(Value::Null))
}

/// Polls `until` over the job's status every 50 ms, for at most a minute.
async fn wait_for(s: &Server, id: &str, until: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = get(s, &format!("/api/qwen-image/jobs/{id}")).await;
        if until(&st) {
            return st;
        }
        assert!(Instant::now() < deadline, "job {id} stuck at {st}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn two_workers_run_two_jobs_at_once_and_status_reports_each() {
    let s = start(&["--qwen-image-model-path", TINY_LAYERED, "--devices", "cpu,cpu"]);
    let status = get(&s, "/api/qwen-image/status").await;
    let devices: Vec<_> = status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["device"].as_str().unwrap())
        .collect();
    assert_eq!(devices, ["cpu", "cpu"], "{status}");
    assert_eq!(status["parallel"], "throughput");

    // Two long jobs: on one worker the second would wait queued; here both denoise at once.
    let body = json!({"image": input_data_url(), "prompt": "a red apple", "layer_num": 2, "steps": 200});
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (code, started) = post(&s, "/api/qwen-image/jobs", &body).await;
        assert_eq!(code, 202, "{started}");
        ids.push(started["id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        wait_for(&s, id, |st| st["phase"] == "denoising").await;
    }
    let status = get(&s, "/api/qwen-image/status").await;
    for w in status["workers"].as_array().unwrap() {
        assert_eq!(
            (w["busy"].as_bool(), w["running"].as_str()),
            (Some(true), Some("decompose")),
            "{w}"
        );
    }
    assert_eq!(
        status["queue_depth"], 0,
        "nothing waits while both workers run: {status}"
    );
    for id in &ids {
        post(&s, &format!("/api/qwen-image/jobs/{id}/cancel"), &json!({})).await;
        let end = wait_for(&s, id, |st| st["state"] != "running" && st["state"] != "queued").await;
        assert_eq!(end["state"], "cancelled", "{end}");
    }

    // Each worker loaded its own pipelines; a short job now runs on either.
    let body = json!({"image": input_data_url(), "prompt": "a red apple", "layer_num": 2, "steps": 1, "seed": 3});
    let (code, resp) = post(&s, "/api/qwen-image/decompose", &body).await;
    assert_eq!(code, 200, "{resp}");
    let status = get(&s, "/api/qwen-image/status").await;
    let done: u64 = status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["jobs_done"].as_u64().unwrap())
        .sum();
    assert_eq!(done, 3);
}

/// The layers' pixels, by layer.
fn layer_pixels(resp: &Value) -> Vec<Vec<u8>> {
    resp["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let url = l["image"].as_str().unwrap();
            let b64 = url.strip_prefix("data:image/png;base64,").unwrap();
            let png = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
            image::load_from_memory(&png).unwrap().to_rgba8().into_raw()
        })
        .collect()
}

/// Latency mode (each job CFG-parallel on a pair) and sequence mode (each forward's tokens
/// shared by every device) give the single-device layers.
#[tokio::test]
async fn latency_and_sequence_modes_give_the_single_device_result() {
    let body = json!({
        "image": input_data_url(), "prompt": "a red apple", "negative_prompt": "blurry",
        "cfg_scale": 4.0, "layer_num": 2, "steps": 2, "seed": 11
    });
    let single = start(&["--qwen-image-model-path", TINY_LAYERED, "--device", "cpu"]);
    let (code, batched) = post(&single, "/api/qwen-image/decompose", &body).await;
    assert_eq!(code, 200, "{batched}");
    drop(single);
    for mode in ["latency", "sequence"] {
        let s = start(&[
            "--qwen-image-model-path",
            TINY_LAYERED,
            "--devices",
            "cpu,cpu",
            "--parallel",
            mode,
        ]);
        let status = get(&s, "/api/qwen-image/status").await;
        assert_eq!(status["parallel"], mode);
        let workers = status["workers"].as_array().unwrap();
        assert_eq!(workers.len(), 1, "{mode}: two devices, one worker: {status}");
        assert_eq!(workers[0]["device"], "cpu+cpu");
        let (code, spread) = post(&s, "/api/qwen-image/decompose", &body).await;
        assert_eq!(code, 200, "{mode}: {spread}");
        let (a, b) = (layer_pixels(&spread), layer_pixels(&batched));
        assert_eq!(a.len(), b.len());
        for (i, (a, b)) in a.iter().zip(&b).enumerate() {
            let worst = a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).max().unwrap();
            assert!(worst <= 1, "{mode}, layer {i}: differs from one device by {worst}/255");
        }
    }
}

#[test]
fn a_gpu_listed_twice_is_a_clear_startup_error() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_server"))
        .args([
            "--port",
            "0",
            "--devices",
            "0,0",
            "--qwen-image-model-path",
            TINY_LAYERED,
        ])
        .current_dir(common::repo())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cuda:0 is listed twice"), "{err}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_server"))
        .args(["--port", "0", "--devices", "gpu0"])
        .current_dir(common::repo())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("`gpu0` is not a device"));
}
