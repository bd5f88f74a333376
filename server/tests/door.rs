//! One door: the server functions under `/api/app/` and the REST routes under `/api/qwen-image/`
//! answer hostile and odd requests alike (JSON 4xx, the token, Host/Origin, content type,
//! timeouts), take uploads up to `--max-body-mb`, and never lose a finished result: not to a
//! burst of other jobs, not to a restart, and not to another browser session.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{data_url, png_bytes, start, temp_dir, TINY_LAYERED};
use serde_json::{json, Value};

/// Sends `body` with `headers` and returns the status and the JSON answer (Null if not JSON).
async fn send(method: &str, url: &str, headers: &[(&str, &str)], body: impl Into<reqwest::Body>) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method.parse().unwrap(), url).body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

const JSON: (&str, &str) = ("content-type", "application/json");

/// A photo-like 1000×1000 PNG of noise: about 4 MB, over the old 2 MiB server-function limit.
fn big_photo() -> String {
    let mut state = 0x2545_f491_u32;
    let img = image::RgbaImage::from_fn(1000, 1000, |_, _| {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let [r, g, b, _] = state.to_le_bytes();
        image::Rgba([r, g, b, 255])
    });
    data_url(&png_bytes(&img))
}

fn small_image() -> String {
    common::png_data_url(24, 16)
}

#[tokio::test]
async fn server_functions_take_big_uploads_and_answer_bad_input_with_json_4xx() {
    let s = start(&["--qwen-image-model-path", TINY_LAYERED, "--device", "cpu"]);
    let photo = big_photo();
    assert!(photo.len() > 4 << 20, "{} bytes", photo.len());
    let body = json!({"request": {"image": photo, "prompt": "noise", "layer_num": 2, "steps": 1, "seed": 1}});
    let (code, started) = send(
        "POST",
        &format!("{}/api/app/start_decompose", s.base),
        &[JSON],
        body.to_string(),
    )
    .await;
    assert_eq!(code, 200, "{started}");
    assert!(started["id"].as_str().unwrap().starts_with("job-"));

    let doors = [
        "/api/app/start_decompose",
        "/api/app/decompose",
        "/api/qwen-image/decompose",
        "/api/qwen-image/jobs",
    ];
    let long = "y".repeat(1 << 20);
    let cases: Vec<(String, u16)> = vec![
        (String::new(), 400),
        ("{".into(), 400),
        ("[1, 2]".into(), 400),
        ("null".into(), 400),
        ("\"text\"".into(), 400),
        (json!({"request": {"prompt": 1}}).to_string(), 400),
        (json!({"image": 5}).to_string(), 400),
        (
            json!({"request": {"image": small_image(), "layer_num": long}}).to_string(),
            400,
        ),
        (json!({"image": small_image(), "layer_num": long}).to_string(), 400),
    ];
    for door in doors {
        for (body, expected) in &cases {
            let (code, err) = send("POST", &format!("{}{door}", s.base), &[JSON], body.clone()).await;
            let shown: String = body.chars().take(60).collect();
            // A body that parses for one door can be wrong for the other: 400 or 422, never 5xx.
            assert!(code == *expected || code == 422, "{door} {shown}: {code} {err}");
            let msg = err["error"]
                .as_str()
                .unwrap_or_else(|| panic!("{door} {shown}: no JSON error: {err}"));
            assert!(
                msg.len() < 400,
                "{door}: a long bad value is echoed back ({} bytes)",
                msg.len()
            );
        }
        // Form-encoded and text/plain bodies are not JSON: 415, so no cross-site "simple request".
        for ct in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
        ] {
            let (code, err) = send("POST", &format!("{}{door}", s.base), &[("content-type", ct)], "{}").await;
            assert_eq!(code, 415, "{door} {ct}: {err}");
            assert!(err["error"].as_str().unwrap().contains("application/json"));
        }
    }
    // Odd paths answer JSON too.
    for path in [
        "/api/qwen-image/jobs/%FF%FE",
        "/api/qwen-image/nothing",
        "/api/nothing",
        "/api/app/nothing",
    ] {
        let (code, err) = send("GET", &format!("{}{path}", s.base), &[], "").await;
        assert!((400..500).contains(&code), "{path}: {code}");
        assert!(err["error"].is_string(), "{path}: {err}");
    }
    // Over --max-body-mb: 413 JSON at both doors.
    let s = start(&["--max-body-mb", "1"]);
    let huge = json!({"image": "A".repeat(2 << 20)}).to_string();
    for door in ["/api/app/start_decompose", "/api/qwen-image/jobs"] {
        let (code, err) = send("POST", &format!("{}{door}", s.base), &[JSON], huge.clone()).await;
        assert_eq!(code, 413, "{door}: {err}");
    }
}

#[tokio::test]
async fn the_token_covers_both_doors_and_the_page_signs_in_with_a_cookie() {
    let s = start(&["--api-token", "s3cret"]);
    let gets = [
        "/api/app/config",
        "/api/app/status",
        "/api/app/edit_status",
        "/api/app/runs",
        "/api/qwen-image/runs",
    ];
    let posts = [
        ("/api/app/start_decompose", json!({"request": {"image": small_image()}})),
        ("/api/app/decompose", json!({"request": {"image": small_image()}})),
        ("/api/app/job_status", json!({"id": "job-x"})),
        ("/api/app/cancel_job", json!({"id": "job-x"})),
        (
            "/api/app/edit_layer",
            json!({"request": {"image": small_image(), "prompt": "x"}}),
        ),
    ];
    for path in gets {
        let (code, err) = send("GET", &format!("{}{path}", s.base), &[], "").await;
        assert_eq!(code, 401, "{path}");
        assert_eq!(err["error"], app::api::TOKEN_REQUIRED);
    }
    for (path, body) in &posts {
        let (code, err) = send("POST", &format!("{}{path}", s.base), &[JSON], body.to_string()).await;
        assert_eq!(code, 401, "{path}: {err}");
    }
    let bearer = ("authorization", "Bearer s3cret");
    assert_eq!(
        send("GET", &format!("{}/api/app/config", s.base), &[bearer], "")
            .await
            .0,
        200
    );

    // Signing in: a wrong token is refused; the right one sets an HttpOnly, SameSite=Strict cookie.
    let url = format!("{}/api/session", s.base);
    assert_eq!(
        send("POST", &url, &[JSON], json!({"token": "nope"}).to_string())
            .await
            .0,
        401
    );
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = client
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("token=s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 303, "the page's form goes back to the page");
    let cookie = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|c| c.starts_with("qwen_layers_token="))
        .expect("token cookie");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(
        !cookie.contains("s3cret"),
        "the cookie holds the token encoded: {cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_string();
    for path in gets {
        assert_eq!(
            send("GET", &format!("{}{path}", s.base), &[("cookie", &pair)], "")
                .await
                .0,
            200,
            "{path}"
        );
    }
    // The page itself and its files stay public.
    assert_eq!(send("GET", &format!("{}/", s.base), &[], "").await.0, 200);
}

#[tokio::test]
async fn foreign_hosts_and_origins_are_refused_at_both_doors() {
    let s = start(&["--allowed-host", "studio.example"]);
    for path in ["/api/app/config", "/api/qwen-image/config"] {
        let url = format!("{}{path}", s.base);
        for (headers, code) in [
            (vec![("host", "evil.example")], 403),
            (vec![("host", "localhost.evil.example:7860")], 403),
            (vec![("origin", "http://evil.example")], 403),
            (vec![("origin", "null")], 403),
            (vec![("host", "studio.example")], 200),
            (
                vec![("host", "localhost:7860"), ("origin", "http://localhost:7860")],
                200,
            ),
        ] {
            let (got, body) = send("GET", &url, &headers, "").await;
            assert_eq!(got, code, "{path} {headers:?}: {body}");
            if code == 403 {
                assert!(body["error"].is_string());
            }
        }
    }
}

/// Reads from `stream` until the server closes it; returns what it sent.
fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn stalled_clients_are_dropped_within_the_timeout() {
    let s = start(&["--request-timeout-secs", "1"]);
    let addr = s.base.trim_start_matches("http://").to_string();

    // Half the headers, then silence: the connection is closed.
    let mut stream = TcpStream::connect(&addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream
        .write_all(b"POST /api/qwen-image/jobs HTTP/1.1\r\nHost: localhost\r\nContent-Ty")
        .unwrap();
    let t0 = Instant::now();
    read_until_closed(&mut stream);
    assert!(t0.elapsed() < Duration::from_secs(5), "held {:?}", t0.elapsed());

    // Headers, then a body that stalls halfway: 408 JSON within the timeout.
    let mut stream = TcpStream::connect(&addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream
        .write_all(b"POST /api/app/start_decompose HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{\"request\":")
        .unwrap();
    let t0 = Instant::now();
    let answer = read_until_closed(&mut stream);
    assert!(t0.elapsed() < Duration::from_secs(5), "held {:?}", t0.elapsed());
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"error\""), "{answer}");

    // Five uploads that stall after 40 MiB: held while they arrive, freed when they are dropped.
    let baseline = s.rss_mib();
    let chunk = vec![b'A'; 1 << 20];
    let stalled: Vec<TcpStream> = (0..5)
        .map(|_| {
            let mut stream = TcpStream::connect(&addr).unwrap();
            stream
                .write_all(b"POST /api/qwen-image/jobs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 62914560\r\n\r\n")
                .unwrap();
            for _ in 0..40 {
                if stream.write_all(&chunk).is_err() {
                    break; // already timed out and closed by the server: also fine
                }
            }
            stream
        })
        .collect();
    let held = s.rss_mib();
    std::thread::sleep(Duration::from_secs(3));
    let after = s.rss_mib();
    drop(stalled);
    println!("server RSS: {baseline} MiB before, {held} MiB holding 5 stalled uploads, {after} MiB after the timeout");
    assert!(
        after < baseline + 40,
        "memory not given back: {baseline} → {held} → {after} MiB"
    );
}

async fn wait_finished(base: &str, id: &str, cookie: &str) -> Value {
    for _ in 0..600 {
        let (code, st) = send(
            "POST",
            &format!("{base}/api/app/job_status"),
            &[JSON, ("cookie", cookie)],
            json!({"id": id}).to_string(),
        )
        .await;
        assert_eq!(code, 200, "{st}");
        if st["state"] != "queued" && st["state"] != "running" {
            return st;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("job {id} did not finish");
}

#[tokio::test]
async fn finished_results_survive_other_jobs_and_a_restart_and_stay_their_owners() {
    let data = temp_dir("results");
    let data_arg = data.to_str().unwrap();
    let args = [
        "--qwen-image-model-path",
        TINY_LAYERED,
        "--device",
        "cpu",
        "--data-dir",
        data_arg,
    ];
    let s = start(&args);
    let (alice, bob) = (
        "qwen_layers_session=alice0000000000000000000000000000",
        "qwen_layers_session=bob",
    );
    let body = json!({"request": {"image": small_image(), "prompt": "a cat", "layer_num": 2, "steps": 1, "seed": 9}});
    let (code, started) = send(
        "POST",
        &format!("{}/api/app/start_decompose", s.base),
        &[JSON, ("cookie", alice)],
        body.to_string(),
    )
    .await;
    assert_eq!(code, 200, "{started}");
    let id = started["id"].as_str().unwrap().to_string();
    let done = wait_finished(&s.base, &id, alice).await;
    assert_eq!(done["state"], "done", "{done}");
    let layers = done["result"]["layers"].clone();

    // A burst of other jobs, started and cancelled, does not push the result out.
    for _ in 0..20 {
        let (code, other) = send(
            "POST",
            &format!("{}/api/qwen-image/jobs", s.base),
            &[JSON],
            json!({"image": small_image(), "steps": 50}).to_string(),
        )
        .await;
        if code == 202 {
            let url = format!(
                "{}/api/qwen-image/jobs/{}/cancel",
                s.base,
                other["id"].as_str().unwrap()
            );
            assert_eq!(send("POST", &url, &[], "").await.0, 200);
        } else {
            assert_eq!(code, 429, "{other}");
        }
    }
    assert_eq!(wait_finished(&s.base, &id, alice).await["result"]["layers"], layers);

    // Another session cannot read or cancel it, and does not see it listed.
    for path in ["/api/app/job_status", "/api/app/cancel_job"] {
        let (code, err) = send(
            "POST",
            &format!("{}{path}", s.base),
            &[JSON, ("cookie", bob)],
            json!({"id": id}).to_string(),
        )
        .await;
        assert_eq!(code, 404, "{path}: {err}");
    }
    assert_eq!(
        send("GET", &format!("{}/api/app/runs", s.base), &[("cookie", bob)], "")
            .await
            .1,
        json!([])
    );
    drop(s);

    // After a restart the owner still gets it, from disk, and sees it listed.
    let s = start(&args);
    let again = wait_finished(&s.base, &id, alice).await;
    assert_eq!(
        (again["state"].as_str(), &again["result"]["layers"]),
        (Some("done"), &layers)
    );
    let (_, runs) = send(
        "GET",
        &format!("{}/api/qwen-image/runs", s.base),
        &[("cookie", alice)],
        "",
    )
    .await;
    assert_eq!(runs[0]["id"], id.as_str(), "{runs}");
    assert_eq!(
        (runs[0]["prompt"].as_str(), runs[0]["seed"].as_u64()),
        (Some("a cat"), Some(9))
    );
    assert!(data.join("runs").join(&id).join("layers.zip").is_file());
    let (code, _) = send(
        "GET",
        &format!("{}/api/qwen-image/jobs/{id}", s.base),
        &[("cookie", bob)],
        "",
    )
    .await;
    assert_eq!(code, 404);
    drop(s);
    std::fs::remove_dir_all(&data).unwrap();
}

#[tokio::test]
async fn a_blocking_decompose_whose_client_leaves_is_cancelled() {
    let s = start(&["--qwen-image-model-path", TINY_LAYERED, "--device", "cpu"]);
    let body = json!({"image": small_image(), "prompt": "x", "layer_num": 2, "steps": 200}).to_string();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(4))
        .build()
        .unwrap();
    let gone = client
        .post(format!("{}/api/qwen-image/decompose", s.base))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await;
    assert!(gone.is_err(), "200 steps should outlast the client's 4 s");
    // The job stops between steps: the engine is free again soon, long before 200 steps.
    let t0 = Instant::now();
    loop {
        let (_, status) = send("GET", &format!("{}/api/qwen-image/status", s.base), &[], "").await;
        if status["busy"] == false {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "still busy: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
