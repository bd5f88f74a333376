//! A stand-in for the Hugging Face hub on localhost, for download tests (`HF_ENDPOINT`): it
//! lists a local model folder as a repo and serves its files the way hf-hub expects (`Range`,
//! `ETag`, `X-Repo-Commit`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The commit every served repo is at.
pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// Every file under `dir`, as paths relative to it with `/`.
pub fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_string_lossy().replace('\\', "/"));
            }
        }
    }
    out.sort();
    out
}

/// Answers one request the way the hub's API does for hf-hub: the repo listing, and files with
/// `Range`, `ETag` and `X-Repo-Commit`. Counts the file bodies it sends.
fn answer(mut stream: TcpStream, model: &Path, repo: &str, bodies: &AtomicUsize) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
            let (a, b) = v.trim().split_once('-').unwrap();
            range = Some((a.parse::<usize>().unwrap(), b.parse::<usize>().ok()));
        }
    }
    let listing = format!("/api/models/{repo}/revision/main");
    let prefix = format!("/{repo}/resolve/main/");
    let (status, headers, body) = if path == listing {
        let siblings: Vec<_> = files(model)
            .into_iter()
            .map(|f| serde_json::json!({ "rfilename": f }))
            .collect();
        let json = serde_json::json!({ "sha": COMMIT, "siblings": siblings }).to_string();
        (
            "200 OK",
            "Content-Type: application/json\r\n".to_string(),
            json.into_bytes(),
        )
    } else if let Some(file) = path.strip_prefix(&prefix) {
        let bytes = std::fs::read(model.join(file)).unwrap();
        let (start, end) = match range {
            Some((a, Some(b))) => (a, b.min(bytes.len() - 1)),
            Some((a, None)) => (a, bytes.len() - 1),
            None => (0, bytes.len() - 1),
        };
        if end > start {
            bodies.fetch_add(1, Ordering::SeqCst);
        }
        let etag = format!(
            "{:016x}",
            file.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(b))
                .wrapping_mul(0x100000001b3))
        );
        let headers = format!(
            "ETag: \"{etag}\"\r\nX-Repo-Commit: {COMMIT}\r\nContent-Range: bytes {start}-{end}/{}\r\n",
            bytes.len()
        );
        ("206 Partial Content", headers, bytes[start..=end].to_vec())
    } else {
        ("404 Not Found", String::new(), b"{}".to_vec())
    };
    let head = format!(
        "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(&body);
    let _ = stream.flush();
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
}

/// The stand-in hub on a free port, serving `model`'s files as `repo`, each request answered
/// after `delay` (to watch a download in progress); returns its URL and the count of file
/// bodies served.
pub fn start(model: PathBuf, repo: &str, delay: Duration) -> (String, Arc<AtomicUsize>) {
    let repo = repo.to_string();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let bodies = Arc::new(AtomicUsize::new(0));
    let served = bodies.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (model, repo, served) = (model.clone(), repo.clone(), served.clone());
            std::thread::spawn(move || {
                stream.set_read_timeout(Some(Duration::from_millis(200))).ok();
                std::thread::sleep(delay);
                answer(stream, &model, &repo, &served);
            });
        }
    });
    (url, bodies)
}
