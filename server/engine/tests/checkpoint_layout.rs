//! The tiny checkpoints of `tests/fixtures` load through the engine's real weight-loading path
//! (`engine::weights::ModelDir`: index file + shards, or a single file; symlinked components),
//! and every tensor name, shape and dtype matches what `tests/reference/generate.py` saved
//! (`reference/checkpoint_layout.json`).

use std::collections::{BTreeMap, BTreeSet};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device};
use engine::weights::{ComponentSpec, ModelDir};
use serde_json::Value;
use test_support::{fixtures_dir, load_json};

type Layout = BTreeMap<String, (Vec<usize>, String)>;

fn expected_tensors(entry: &Value) -> Layout {
    entry["tensors"]
        .as_object()
        .expect("tensors")
        .iter()
        .map(|(name, t)| {
            let shape = t["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            (name.clone(), (shape, t["dtype"].as_str().unwrap().to_string()))
        })
        .collect()
}

fn on_disk(st: &MmapedSafetensors) -> Layout {
    st.tensors()
        .into_iter()
        .map(|(name, view)| (name, (view.shape().to_vec(), format!("{:?}", view.dtype()))))
        .collect()
}

const SPECS: &[ComponentSpec] = &[
    ComponentSpec {
        name: "scheduler",
        files: &["scheduler_config.json"],
        weights: false,
    },
    ComponentSpec {
        name: "transformer",
        files: &["config.json"],
        weights: true,
    },
    ComponentSpec {
        name: "vae",
        files: &["config.json"],
        weights: true,
    },
    ComponentSpec {
        name: "text_encoder",
        files: &["config.json", "generation_config.json"],
        weights: true,
    },
    ComponentSpec {
        name: "tokenizer",
        files: &[
            "vocab.json",
            "merges.txt",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "added_tokens.json",
        ],
        weights: false,
    },
    ComponentSpec {
        name: "processor",
        files: &["tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"],
        weights: false,
    },
];

#[test]
fn tiny_checkpoints_match_the_manifest() {
    let layout = load_json("checkpoint_layout.json");
    let checkpoints = layout.as_object().expect("checkpoint_layout.json is an object");
    assert_eq!(checkpoints.len(), 2);
    let mut total = 0usize;
    for (ckpt, info) in checkpoints {
        let model = ModelDir::open(fixtures_dir().join(ckpt)).unwrap_or_else(|e| panic!("{ckpt}: {e}"));
        model.check(SPECS).unwrap_or_else(|e| panic!("{ckpt}: {e}"));
        let index: Value = model.read_json("", "model_index.json").unwrap();
        assert_eq!(index, info["model_index"], "{ckpt}: model_index.json");
        for spec in SPECS {
            assert!(
                index[spec.name].is_array(),
                "{ckpt}: model_index.json lacks {}",
                spec.name
            );
        }
        for (comp, entry) in info["components"].as_object().unwrap() {
            if entry["tensors"].is_null() {
                continue;
            }
            let what = format!("{ckpt}/{comp}");
            let expected = expected_tensors(entry);
            let files = model.safetensors_files(comp).unwrap_or_else(|e| panic!("{what}: {e}"));
            let names: BTreeSet<String> = files
                .iter()
                .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
                .collect();
            let want: BTreeSet<String> = entry["files"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f.as_str().unwrap().to_string())
                .filter(|f| f.ends_with(".safetensors"))
                .collect();
            assert_eq!(names, want, "{what}: weight files found by the loader");
            if let Some(index_file) = entry["index"].as_str() {
                assert!(files.len() > 1, "{what}: {index_file} should name several shards");
                // every tensor lives in the shard its index entry names
                let idx: Value = model.read_json(comp, index_file).unwrap();
                for f in &files {
                    // SAFETY: read-only fixture files.
                    let shard = unsafe { MmapedSafetensors::new(f) }.unwrap();
                    let fname = f.file_name().unwrap().to_string_lossy().into_owned();
                    for (name, _) in shard.tensors() {
                        assert_eq!(
                            idx["weight_map"][&name].as_str(),
                            Some(fname.as_str()),
                            "{what}: {name}"
                        );
                    }
                }
            }
            // SAFETY: read-only fixture files.
            let st = unsafe { MmapedSafetensors::multi(&files) }.unwrap();
            let got = on_disk(&st);
            let missing: Vec<_> = expected.keys().filter(|k| !got.contains_key(*k)).collect();
            let extra: Vec<_> = got.keys().filter(|k| !expected.contains_key(*k)).collect();
            assert!(
                missing.is_empty() && extra.is_empty(),
                "{what}: missing {missing:?}, unexpected {extra:?}"
            );
            for (name, (shape, dtype)) in &expected {
                assert_eq!(&got[name], &(shape.clone(), dtype.clone()), "{what}: {name}");
                assert_eq!(
                    dtype, "BF16",
                    "{what}: {name} should be stored in bf16 like the release"
                );
            }
            // The VarBuilder the models use: every tensor by name and shape, converted to f32.
            let vb = model.var_builder(comp, DType::F32, &Device::Cpu).unwrap();
            for (name, (shape, _)) in &expected {
                let t = vb
                    .get(shape.as_slice(), name)
                    .unwrap_or_else(|e| panic!("{what}: {name}: {e}"));
                assert_eq!(t.dtype(), DType::F32);
            }
            total += expected.len();
            println!("{what}: {} tensors in {} file(s)", expected.len(), files.len());
        }
    }
    assert!(total > 300, "only {total} tensors checked");
}

#[test]
fn edit_checkpoint_shares_text_encoder_and_tokenizers_by_symlink() {
    let edit = fixtures_dir().join("tiny-qwen-image-edit-2509");
    for comp in ["text_encoder", "tokenizer", "processor"] {
        let p = edit.join(comp);
        assert!(
            p.symlink_metadata().unwrap().file_type().is_symlink(),
            "{comp} should be a symlink"
        );
        assert!(p
            .join(if comp == "text_encoder" {
                "config.json"
            } else {
                "tokenizer_config.json"
            })
            .is_file());
    }
    let model = ModelDir::open(&edit).unwrap();
    let files = model.safetensors_files("text_encoder").unwrap();
    assert!(files.len() > 1 && files.iter().all(|f| f.is_file()));
}

#[test]
fn configs_carry_the_release_keys() {
    let l = ModelDir::open(fixtures_dir().join("tiny-qwen-image-layered")).unwrap();
    let e = ModelDir::open(fixtures_dir().join("tiny-qwen-image-edit-2509")).unwrap();
    let t: Value = l.read_json("transformer", "config.json").unwrap();
    assert_eq!(t["use_layer3d_rope"], true);
    assert_eq!(t["use_additional_t_cond"], true);
    let te: Value = e.read_json("transformer", "config.json").unwrap();
    assert!(
        te.get("use_layer3d_rope").is_none(),
        "edit transformer config omits the layered keys (defaults false)"
    );
    let v: Value = l.read_json("vae", "config.json").unwrap();
    assert_eq!(v["input_channels"], 4);
    let ve: Value = e.read_json("vae", "config.json").unwrap();
    assert!(
        ve.get("input_channels").is_none(),
        "edit VAE config omits input_channels (default 3)"
    );
    let s: Value = l.read_json("scheduler", "scheduler_config.json").unwrap();
    assert_eq!(s["time_shift_type"], "linear");
    let se: Value = e.read_json("scheduler", "scheduler_config.json").unwrap();
    assert_eq!(se["time_shift_type"], "exponential");
    assert_eq!(se["shift_terminal"], 0.02);
    let c: Value = l.read_json("text_encoder", "config.json").unwrap();
    assert_eq!(c["rope_scaling"]["type"], "mrope");
    assert_eq!(c["vocab_size"], 152064);
}
