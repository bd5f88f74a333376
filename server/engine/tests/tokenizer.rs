//! The Qwen2 tokenizer and templates against `tests/fixtures/reference/tokens.json` (ids that
//! transformers 5.24's `Qwen2Tokenizer` produced on the tiny checkpoint's tokenizer, which is the
//! real Qwen2 vocabulary), through both on-disk layouts.

use std::sync::OnceLock;

use engine::text_encoder::{check_prompt_lengths, PromptBatch};
use engine::tokenizer::{
    edit_image_prefix, PaddingSide, PromptTemplate, QwenTokenizer, CAPTION_PROMPT_CN, CAPTION_PROMPT_EN, EDIT_DROP,
    EDIT_TEMPLATE, LAYERED_DROP, LAYERED_TEMPLATE,
};
use engine::weights::ModelDir;
use serde_json::Value;
use test_support as ts;

fn tokens_json() -> &'static Value {
    static TOKENS: OnceLock<Value> = OnceLock::new();
    TOKENS.get_or_init(|| {
        let text = std::fs::read_to_string(ts::fixtures_dir().join("reference/tokens.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    })
}

/// The tokenizer from `processor/tokenizer.json` and the one rebuilt from `tokenizer/vocab.json` +
/// `merges.txt` + special tokens.
fn both_layouts() -> &'static [(&'static str, QwenTokenizer); 2] {
    static BOTH: OnceLock<[(&str, QwenTokenizer); 2]> = OnceLock::new();
    BOTH.get_or_init(|| {
        let root = ts::fixtures_dir().join("tiny-qwen-image-layered");
        let json = QwenTokenizer::from_tokenizer_json(&root.join("processor/tokenizer.json")).unwrap();
        let built = QwenTokenizer::from_vocab_merges(&root.join("tokenizer")).unwrap();
        [
            ("processor/tokenizer.json", json),
            ("tokenizer/vocab.json+merges.txt", built),
        ]
    })
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn every_fixture_prompt_tokenises_like_the_reference() {
    let prompts = tokens_json()["prompts"].as_object().unwrap();
    assert!(prompts.len() >= 7, "fixture prompts: {:?}", prompts.keys());
    for (layout, tok) in both_layouts() {
        for (name, case) in prompts {
            let text = case["text"].as_str().unwrap();
            assert_eq!(
                tok.encode(text).unwrap(),
                ids(&case["bare_ids"]),
                "{layout}: bare ids of {name}"
            );
            let layered = tok.encode(&PromptTemplate::LAYERED.format(text)).unwrap();
            assert_eq!(layered, ids(&case["layered_ids"]), "{layout}: layered ids of {name}");
            assert_eq!(
                layered.len() - LAYERED_DROP,
                case["layered_kept_len"].as_u64().unwrap() as usize,
                "{name}"
            );
            let edit = tok
                .encode(&PromptTemplate::EDIT.format(&(edit_image_prefix(1) + text)))
                .unwrap();
            assert_eq!(edit, ids(&case["edit_ids_unexpanded"]), "{layout}: edit ids of {name}");
            let decoded = tok.decode(&ids(&case["bare_ids"]), false).unwrap();
            assert_eq!(
                decoded,
                case["decoded_bare"].as_str().unwrap(),
                "{layout}: decode of {name}"
            );
        }
    }
}

#[test]
fn template_prefixes_are_34_and_64_tokens() {
    let t = &tokens_json()["templates"];
    assert_eq!(t["layered"]["template"].as_str().unwrap(), LAYERED_TEMPLATE);
    assert_eq!(t["edit"]["template"].as_str().unwrap(), EDIT_TEMPLATE);
    assert_eq!(t["layered"]["drop_idx"], LAYERED_DROP);
    assert_eq!(t["edit"]["drop_idx"], EDIT_DROP);
    assert_eq!(t["edit_image_prompt"]["text"].as_str().unwrap(), edit_image_prefix(1));
    for (layout, tok) in both_layouts() {
        let layered = tok.encode(PromptTemplate::LAYERED.prefix()).unwrap();
        let edit = tok.encode(PromptTemplate::EDIT.prefix()).unwrap();
        assert_eq!((layered.len(), edit.len()), (34, 64), "{layout}");
        assert_eq!(layered, ids(&t["layered"]["prefix_ids"]), "{layout}");
        assert_eq!(edit, ids(&t["edit"]["prefix_ids"]), "{layout}");
        assert_eq!(
            tok.encode(&edit_image_prefix(1)).unwrap(),
            ids(&t["edit_image_prompt"]["ids"]),
            "{layout}"
        );
    }
}

#[test]
fn caption_prompts_are_221_and_209_tokens() {
    let t = tokens_json();
    assert_eq!(t["caption_prompt_en"]["text"].as_str().unwrap(), CAPTION_PROMPT_EN);
    assert_eq!(t["caption_prompt_cn"]["text"].as_str().unwrap(), CAPTION_PROMPT_CN);
    for (layout, tok) in both_layouts() {
        let en = tok.encode(CAPTION_PROMPT_EN).unwrap();
        let cn = tok.encode(CAPTION_PROMPT_CN).unwrap();
        assert_eq!((en.len(), cn.len()), (221, 209), "{layout}");
        assert_eq!(en, ids(&t["caption_prompt_en"]["ids_unexpanded"]), "{layout}");
        assert_eq!(cn, ids(&t["caption_prompt_cn"]["ids_unexpanded"]), "{layout}");
    }
}

#[test]
fn special_tokens_sit_at_151643_to_151664() {
    let specials = tokens_json()["special_tokens"].as_object().unwrap();
    assert_eq!(specials.len(), 22);
    for (layout, tok) in both_layouts() {
        for (content, id) in specials {
            assert_eq!(
                tok.token_id(content),
                Some(id.as_u64().unwrap() as u32),
                "{layout}: {content}"
            );
            // Written in text, each is one token, not BPE pieces.
            assert_eq!(
                tok.encode(content).unwrap(),
                vec![id.as_u64().unwrap() as u32],
                "{layout}: {content}"
            );
        }
        let s = tok.special();
        assert_eq!(
            [
                s.endoftext,
                s.im_start,
                s.im_end,
                s.vision_start,
                s.vision_end,
                s.image_pad,
                s.video_pad
            ],
            [151643, 151644, 151645, 151652, 151653, 151655, 151656],
            "{layout}"
        );
        assert_eq!(tok.pad_id(), 151643, "{layout}");
        assert_eq!(tok.padding_side(), PaddingSide::Right, "{layout}");
        assert_eq!(tok.vocab_size(), 151665, "{layout}");
    }
}

#[test]
fn decode_skips_only_special_tokens() {
    for (layout, tok) in both_layouts() {
        let ids = tok.encode("<|im_start|>user\n一只猫 🐱<tool_call><|im_end|>").unwrap();
        assert_eq!(
            tok.decode(&ids, false).unwrap(),
            "<|im_start|>user\n一只猫 🐱<tool_call><|im_end|>",
            "{layout}"
        );
        // <tool_call> is an added token but not flagged special in Qwen2's config, so it stays.
        assert_eq!(
            tok.decode(&ids, true).unwrap(),
            "user\n一只猫 🐱<tool_call>",
            "{layout}"
        );
    }
}

#[test]
fn model_dir_prefers_tokenizer_json_and_falls_back_to_vocab_merges() {
    let model = ModelDir::open(ts::fixtures_dir().join("tiny-qwen-image-layered")).unwrap();
    let tok = QwenTokenizer::from_model_dir(&model).unwrap();
    assert!(format!("{tok:?}").contains("processor/tokenizer.json"), "{tok:?}");

    // A model folder with only the tokenizer/ layout.
    let dir = std::env::temp_dir().join(format!("engine-tokenizer-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("model_index.json"), "{}").unwrap();
    let link = dir.join("tokenizer");
    if !link.exists() {
        std::os::unix::fs::symlink(ts::fixtures_dir().join("tiny-qwen-image-layered/tokenizer"), &link).unwrap();
    }
    let tok = QwenTokenizer::from_model_dir(&ModelDir::open(&dir).unwrap()).unwrap();
    assert!(format!("{tok:?}").contains("tokenizer\""), "{tok:?}");
    let text = "A red apple";
    assert_eq!(tok.encode(text).unwrap(), both_layouts()[0].1.encode(text).unwrap());

    // Nothing at all: the error says what is missing.
    std::fs::remove_file(&link).unwrap();
    let err = QwenTokenizer::from_model_dir(&ModelDir::open(&dir).unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("processor/tokenizer.json"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn batches_pad_right_with_endoftext_like_the_reference() {
    let t = &tokens_json()["batch_padding"];
    assert_eq!(t["padding_side"], "right");
    let prompts = &tokens_json()["prompts"];
    let texts = [
        prompts["ascii"]["text"].as_str().unwrap(),
        prompts["space"]["text"].as_str().unwrap(),
    ];
    for (i, text) in texts.iter().enumerate() {
        assert_eq!(t["texts"][i].as_str().unwrap(), PromptTemplate::LAYERED.format(text));
    }
    for (layout, tok) in both_layouts() {
        let batch = PromptBatch::new(tok, &PromptTemplate::LAYERED, &texts, 512).unwrap();
        let expect_ids: Vec<Vec<u32>> = t["input_ids"].as_array().unwrap().iter().map(ids).collect();
        let expect_mask: Vec<Vec<u32>> = t["attention_mask"].as_array().unwrap().iter().map(ids).collect();
        assert_eq!(batch.ids, expect_ids, "{layout}");
        assert_eq!(batch.attention_mask, expect_mask, "{layout}");
        assert_eq!(batch.kept, vec![34..51, 34..40], "{layout}");
        assert!(batch.is_padded());
    }
}

#[test]
fn over_long_prompts_are_refused_with_their_length() {
    let tok = &both_layouts()[0].1;
    let long = tokens_json()["prompts"]["long"]["text"].as_str().unwrap();
    let short = tokens_json()["prompts"]["ascii"]["text"].as_str().unwrap();
    // 522 tokens of text + the closing 5 = 527 > 512.
    let err = check_prompt_lengths(tok, &PromptTemplate::LAYERED, &[long], 512)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("527 tokens") && err.contains("max_sequence_length is 512") && err.contains("by 15"),
        "{err}"
    );
    let err = check_prompt_lengths(tok, &PromptTemplate::LAYERED, &[short, long], 512)
        .unwrap_err()
        .to_string();
    assert!(err.contains("prompt 1 is too long"), "{err}");
    assert_eq!(
        check_prompt_lengths(tok, &PromptTemplate::LAYERED, &[short, long], 1024).unwrap(),
        vec![17, 527]
    );
    for bad in [0, 1025] {
        let err = check_prompt_lengths(tok, &PromptTemplate::LAYERED, &[short], bad)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("between 1 and 1024") && err.contains(&bad.to_string()),
            "{err}"
        );
        let err = PromptBatch::new(tok, &PromptTemplate::LAYERED, &[short], bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains("between 1 and 1024"), "{err}");
    }
    let err = PromptBatch::new(tok, &PromptTemplate::LAYERED, &[], 512)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no prompt"), "{err}");
}

#[test]
fn long_prompts_are_cut_before_the_model() {
    let tok = &both_layouts()[0].1;
    let long = tokens_json()["prompts"]["long"]["text"].as_str().unwrap();
    let short = tokens_json()["prompts"]["ascii"]["text"].as_str().unwrap();
    let full = tok.encode(&PromptTemplate::LAYERED.format(long)).unwrap();
    let batch = PromptBatch::new(tok, &PromptTemplate::LAYERED, &[long, short], 100).unwrap();
    // Only drop + max tokens go to the (causal) model: the kept ones can't see later tokens.
    assert_eq!(batch.seq_len(), 134);
    assert_eq!(batch.ids[0], full[..134]);
    assert_eq!(batch.kept, vec![34..134, 34..51]);
    assert_eq!(batch.full_lengths, vec![527, 17]);
}

/// `padding_side: "left"` in tokenizer_config.json: pads go first, and each row keeps the offset
/// it has in the uncut batch (the reference's positions run over the padding).
#[test]
fn left_padding_keeps_each_rows_offset() {
    let dir = std::env::temp_dir().join(format!("engine-left-pad-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("tokenizer.json");
    if !json.exists() {
        std::os::unix::fs::symlink(
            ts::fixtures_dir().join("tiny-qwen-image-layered/processor/tokenizer.json"),
            &json,
        )
        .unwrap();
    }
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"pad_token": "<|endoftext|>", "padding_side": "left"}"#,
    )
    .unwrap();
    let tok = QwenTokenizer::from_tokenizer_json(&json).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(tok.padding_side(), PaddingSide::Left);

    let prompts = &tokens_json()["prompts"];
    let ascii = prompts["ascii"]["text"].as_str().unwrap(); // 51 tokens with the template
    let space = prompts["space"]["text"].as_str().unwrap(); // 40
    let batch = PromptBatch::new(&tok, &PromptTemplate::LAYERED, &[ascii, space], 512).unwrap();
    assert_eq!(batch.seq_len(), 51);
    assert_eq!(batch.ids[1][..11], [151643; 11]);
    assert_eq!(batch.ids[1][11..], ids(&prompts["space"]["layered_ids"]));
    assert_eq!(batch.attention_mask[1], [vec![0; 11], vec![1; 40]].concat());
    assert_eq!(batch.kept, vec![34..51, 45..51]);

    // Cut at 10 kept tokens: the long row loses its tail, the short one keeps its 11 pads.
    let batch = PromptBatch::new(&tok, &PromptTemplate::LAYERED, &[ascii, space], 10).unwrap();
    assert_eq!(batch.seq_len(), 51);
    assert_eq!(batch.kept, vec![34..44, 45..51]);
    assert_eq!(batch.attention_mask[0], [vec![1; 44], vec![0; 7]].concat());
}
