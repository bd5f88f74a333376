//! The real `server` binary on a free port, for the integration tests: started with its own
//! empty results folder and hub cache, stopped when dropped.

#![allow(dead_code)] // each test file uses a part

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use base64::Engine as _;

pub struct Server {
    child: Child,
    pub base: String,
    /// The server's `--data-dir` (a fresh temporary folder unless the test chose one).
    pub data_dir: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The repository's root (fixture paths below are relative to it).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

pub const TINY_LAYERED: &str = "tests/fixtures/tiny-qwen-image-layered";
pub const TINY_EDIT: &str = "tests/fixtures/tiny-qwen-image-edit-2509";

/// A fresh, empty folder under the temporary directory.
pub fn temp_dir(name: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "qwen-layers-test-{name}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs the server from the repository root with `args` on port 0, waits for its "listening on"
/// line. The results go to a fresh folder unless `args` has `--data-dir`.
pub fn start(args: &[&str]) -> Server {
    start_with_env(args, &[])
}

/// [`start`] with extra environment variables (they override the defaults above).
pub fn start_with_env(args: &[&str], envs: &[(&str, &str)]) -> Server {
    let data_dir = match args.iter().position(|a| *a == "--data-dir") {
        Some(i) => PathBuf::from(args[i + 1]),
        None => temp_dir("data"),
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_server"))
        .args(["--port", "0"])
        .args(args)
        .current_dir(repo())
        .env("HF_HUB_CACHE", std::env::temp_dir().join("qwen-layers-empty-hub"))
        .env("QWEN_LAYERS_DATA_DIR", &data_dir)
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("server binary");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let base = loop {
        let line = lines.next().expect("server exited before listening").unwrap();
        if let Some(url) = line.strip_prefix("listening on ") {
            break url.to_string();
        }
    };
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Server { child, base, data_dir }
}

impl Server {
    /// The server's resident memory, in MiB (Linux).
    pub fn rss_mib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        kib / 1024
    }
}

pub fn png_bytes(img: &image::RgbaImage) -> Vec<u8> {
    test_support::encode_png(img)
}

pub fn data_url(png: &[u8]) -> String {
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    )
}

pub fn png_data_url(w: u32, h: u32) -> String {
    data_url(&png_bytes(&image::RgbaImage::from_fn(w, h, |x, y| {
        image::Rgba([x as u8, y as u8, 100, 255])
    })))
}
