//! `qwen-layers download` against a stand-in Hugging Face hub on localhost (`HF_ENDPOINT`) that
//! serves the tiny edit checkpoint as a repo: the model lands in the hub cache file for file,
//! a second run downloads nothing, and the result loads as a model folder.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;

use test_support::fake_hub::{self, files, COMMIT};

const REPO: &str = "test-owner/tiny-edit";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

#[test]
fn download_fills_the_hub_cache_once_and_the_model_loads() {
    let model = repo_root().join("tests/fixtures/tiny-qwen-image-edit-2509");
    let (hub, bodies) = fake_hub::start(model.clone(), REPO, std::time::Duration::ZERO);
    let cache = std::env::temp_dir().join(format!("qwen-layers-download-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_qwen-layers"))
            .args(["download", REPO])
            .env("HF_ENDPOINT", &hub)
            .env("HF_HUB_CACHE", &cache)
            .env_remove("HF_HUB_OFFLINE")
            .output()
            .unwrap()
    };
    let out = run();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let snapshot = cache.join("models--test-owner--tiny-edit/snapshots").join(COMMIT);
    assert!(stdout.contains(&snapshot.display().to_string()), "{stdout}");
    let wanted = files(&model);
    assert_eq!(files(&snapshot), wanted, "every file of the repo, in the layout");
    for f in &wanted {
        assert!(
            std::fs::read(snapshot.join(f)).unwrap() == std::fs::read(model.join(f)).unwrap(),
            "{f} differs"
        );
    }
    let first = bodies.load(Ordering::SeqCst);
    assert!(first >= wanted.len(), "{first} bodies for {} files", wanted.len());

    // Everything is cached: a second run lists the repo and downloads nothing.
    let out = run();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(bodies.load(Ordering::SeqCst), first);

    // The cached repo is a complete edit model.
    let dir = engine::weights::ModelDir::open(&snapshot).unwrap();
    dir.check(engine::pipeline::edit::EDIT_COMPONENTS).unwrap();

    // A bad name is refused before anything is asked of the hub.
    let out = Command::new(env!("CARGO_BIN_EXE_qwen-layers"))
        .args(["download", "not a repo"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a Hugging Face repo id"));
    std::fs::remove_dir_all(&cache).unwrap();
}
