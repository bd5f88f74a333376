//! The Qwen2 tokenizer (byte-level BPE, as shipped with Qwen2.5-VL) and the pipelines' prompt
//! templates.
//!
//! - 151,643 ranked BPE tokens over the GPT-2 byte→unicode alphabet, an NFC normaliser, the Qwen2
//!   pre-tokenizer regex (below), no BOS, nothing appended.
//! - 22 special tokens at ids 151643..151664 (`<|endoftext|>` … `<|file_sep|>`), matched in the
//!   text before normalisation, so a template's `<|im_start|>` is one token.
//! - Loaded from the checkpoint either as one `tokenizer.json` (the `processor/` layout, or
//!   `tokenizer/` when a newer transformers saved it) or rebuilt from `tokenizer/vocab.json` +
//!   `merges.txt` + the special tokens of `tokenizer_config.json` / `added_tokens.json`, exactly
//!   as transformers' `Qwen2Tokenizer` assembles it. Both give the same ids (tested).

pub mod templates;

pub use templates::{
    edit_image_prefix, PromptTemplate, CAPTION_PROMPT_CN, CAPTION_PROMPT_EN, EDIT_DROP, EDIT_IMAGE_TEMPLATE,
    EDIT_TEMPLATE, LAYERED_DROP, LAYERED_TEMPLATE,
};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::weights::ModelDir;
use crate::{Error, Result};

/// transformers' `Qwen2Tokenizer` pre-tokenizer pattern: contractions, letters with at most one
/// leading non-letter, single digits, punctuation runs, newlines, and whitespace that leaves the
/// last space to the following word.
pub const PRETOKENIZE_REGEX: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// `Qwen2Tokenizer`'s default pad (and unk/eos) token.
const DEFAULT_PAD_TOKEN: &str = "<|endoftext|>";

/// Ids of the special tokens the pipelines refer to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialTokens {
    pub endoftext: u32,
    pub im_start: u32,
    pub im_end: u32,
    pub vision_start: u32,
    pub vision_end: u32,
    pub image_pad: u32,
    pub video_pad: u32,
}

/// Which side `tokenizer(texts, padding=True)` pads a batch on (`padding_side` of
/// `tokenizer_config.json`; transformers defaults to right).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PaddingSide {
    Left,
    #[default]
    Right,
}

/// The Qwen2 tokenizer of a checkpoint.
#[derive(Clone)]
pub struct QwenTokenizer {
    inner: Tokenizer,
    special: SpecialTokens,
    pad_id: u32,
    padding_side: PaddingSide,
    /// The file or folder it was loaded from, for messages.
    source: PathBuf,
}

impl std::fmt::Debug for QwenTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QwenTokenizer")
            .field("source", &self.source)
            .field("special", &self.special)
            .field("pad_id", &self.pad_id)
            .field("padding_side", &self.padding_side)
            .finish()
    }
}

/// The parts of `tokenizer_config.json` that change ids or padding.
#[derive(Debug, Default, Deserialize)]
struct TokenizerConfig {
    /// `{"151643": {"content": "<|endoftext|>", "special": true, …}, …}`
    #[serde(default)]
    added_tokens_decoder: BTreeMap<String, AddedTokenConfig>,
    /// A string, or an `AddedToken` dict in older saves.
    #[serde(default)]
    pad_token: Option<serde_json::Value>,
    #[serde(default)]
    padding_side: Option<String>,
}

#[derive(Debug, Deserialize)]
struct AddedTokenConfig {
    content: String,
    #[serde(default)]
    lstrip: bool,
    #[serde(default)]
    rstrip: bool,
    #[serde(default)]
    single_word: bool,
    #[serde(default)]
    normalized: bool,
    #[serde(default = "yes")]
    special: bool,
}

fn yes() -> bool {
    true
}

impl QwenTokenizer {
    /// The checkpoint's tokenizer: `tokenizer/tokenizer.json` or `processor/tokenizer.json` when
    /// present, else rebuilt from `tokenizer/vocab.json` + `merges.txt`.
    pub fn from_model_dir(model: &ModelDir) -> Result<Self> {
        for component in ["tokenizer", "processor"] {
            let file = model.component_dir(component).join("tokenizer.json");
            if file.is_file() {
                return Self::from_tokenizer_json(&file);
            }
        }
        let dir = model.component_dir("tokenizer");
        if dir.join("vocab.json").is_file() && dir.join("merges.txt").is_file() {
            return Self::from_vocab_merges(&dir);
        }
        Err(Error::IncompleteModel {
            dir: model.root().to_path_buf(),
            missing: vec!["processor/tokenizer.json (or tokenizer/vocab.json + tokenizer/merges.txt)".into()],
            hint: "The Qwen2 tokenizer ships in the model's tokenizer/ and processor/ folders.".into(),
        })
    }

    /// A serialized `tokenizers` file; padding/truncation settings in it are ignored (batches are
    /// padded by the caller), `tokenizer_config.json` beside it gives pad token and side.
    pub fn from_tokenizer_json(file: &Path) -> Result<Self> {
        let mut inner = Tokenizer::from_file(file).map_err(|e| tokenizer_error(file, e))?;
        inner.with_padding(None);
        inner.with_truncation(None).map_err(|e| tokenizer_error(file, e))?;
        let dir = file.parent().unwrap_or(Path::new("."));
        let config = read_tokenizer_config(dir)?;
        Self::finish(inner, config.as_ref(), file)
    }

    /// Rebuilds the tokenizer from `vocab.json` + `merges.txt` in `dir`, the way transformers'
    /// `Qwen2Tokenizer` does, with the special tokens of `tokenizer_config.json`
    /// (`added_tokens_decoder`) or else `added_tokens.json`, at their declared ids.
    pub fn from_vocab_merges(dir: &Path) -> Result<Self> {
        let vocab_file = dir.join("vocab.json");
        let merges_file = dir.join("merges.txt");
        let (mut vocab, merges) = BPE::read_file(&path_str(&vocab_file)?, &path_str(&merges_file)?)
            .map_err(|e| tokenizer_error(&vocab_file, e))?;

        let config = read_tokenizer_config(dir)?;
        let added = added_tokens(dir, config.as_ref())?;
        // Special tokens go into the BPE vocab at their declared ids first, so adding them below
        // reuses those ids whatever gaps the id range has (the tokenizers crate would otherwise
        // number added tokens consecutively from the vocab size).
        for (id, token) in &added {
            if let Some(&existing) = vocab.get(&token.content) {
                if existing != *id {
                    return Err(Error::Tokenizer(format!(
                        "{}: {:?} has id {existing} in vocab.json but {id} in the special tokens",
                        dir.display(),
                        token.content
                    )));
                }
            }
            vocab.insert(token.content.clone(), *id);
        }

        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| tokenizer_error(&merges_file, e))?;
        let split = Split::new(
            SplitPattern::Regex(PRETOKENIZE_REGEX.into()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| tokenizer_error(dir, e))?;
        // The regex already split the text, so ByteLevel only maps bytes (use_regex = false).
        let byte_level = ByteLevel::new(false, false, false);

        let mut inner = Tokenizer::new(bpe);
        inner.with_normalizer(Some(NFC)).map_err(|e| tokenizer_error(dir, e))?;
        inner.with_pre_tokenizer(Some(Sequence::new(vec![split.into(), byte_level.into()])));
        inner.with_decoder(Some(byte_level));
        inner
            .add_special_tokens(added.into_values())
            .map_err(|e| tokenizer_error(dir, e))?;
        Self::finish(inner, config.as_ref(), dir)
    }

    fn finish(inner: Tokenizer, config: Option<&TokenizerConfig>, source: &Path) -> Result<Self> {
        let id = |token: &str| {
            inner
                .token_to_id(token)
                .ok_or_else(|| Error::Tokenizer(format!("{}: special token {token} is missing", source.display())))
        };
        let special = SpecialTokens {
            endoftext: id("<|endoftext|>")?,
            im_start: id("<|im_start|>")?,
            im_end: id("<|im_end|>")?,
            vision_start: id("<|vision_start|>")?,
            vision_end: id("<|vision_end|>")?,
            image_pad: id("<|image_pad|>")?,
            video_pad: id("<|video_pad|>")?,
        };
        let pad_token = config
            .and_then(|c| c.pad_token.as_ref())
            .and_then(|v| v.as_str().or_else(|| v.get("content").and_then(|c| c.as_str())))
            .unwrap_or(DEFAULT_PAD_TOKEN);
        let pad_id = id(pad_token)?;
        let padding_side = match config.and_then(|c| c.padding_side.as_deref()) {
            None | Some("right") => PaddingSide::Right,
            Some("left") => PaddingSide::Left,
            Some(other) => {
                return Err(Error::Tokenizer(format!(
                    "{}: padding_side must be \"left\" or \"right\", not {other:?}",
                    source.display()
                )))
            }
        };
        Ok(Self {
            inner,
            special,
            pad_id,
            padding_side,
            source: source.to_path_buf(),
        })
    }

    /// Token ids of `text`, with nothing added; special tokens written in the text are recognised.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| tokenizer_error(&self.source, e))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The text of `ids`; `skip_special` drops the tokens flagged special (as transformers'
    /// `skip_special_tokens`, without clean-up of tokenisation spaces).
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| tokenizer_error(&self.source, e))
    }

    /// The id of a token (special or regular, e.g. `"<|image_pad|>"`).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn special(&self) -> &SpecialTokens {
        &self.special
    }

    /// The id batches are padded with (`<|endoftext|>` for Qwen2).
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    pub fn padding_side(&self) -> PaddingSide {
        self.padding_side
    }

    /// Vocabulary size including the special tokens (151,665 for Qwen2; the model's embedding
    /// table is larger, 152,064, padded for efficiency).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

fn read_tokenizer_config(dir: &Path) -> Result<Option<TokenizerConfig>> {
    let path = dir.join("tokenizer_config.json");
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| Error::Json { path, source })
}

/// The special tokens by id: from `added_tokens_decoder` (with its flags) or `added_tokens.json`
/// (content → id; all special, matched before normalisation, as `Qwen2Tokenizer` adds them).
fn added_tokens(dir: &Path, config: Option<&TokenizerConfig>) -> Result<BTreeMap<u32, AddedToken>> {
    let mut tokens = BTreeMap::new();
    if let Some(config) = config.filter(|c| !c.added_tokens_decoder.is_empty()) {
        for (id, t) in &config.added_tokens_decoder {
            let id: u32 = id.parse().map_err(|_| {
                Error::Tokenizer(format!(
                    "{}/tokenizer_config.json: added token id {id:?} is not a number",
                    dir.display()
                ))
            })?;
            let token = AddedToken::from(t.content.clone(), t.special)
                .lstrip(t.lstrip)
                .rstrip(t.rstrip)
                .single_word(t.single_word)
                .normalized(t.normalized);
            tokens.insert(id, token);
        }
        return Ok(tokens);
    }
    let path = dir.join("added_tokens.json");
    if !path.is_file() {
        return Err(Error::Tokenizer(format!(
            "{}: no special tokens found (neither added_tokens_decoder in tokenizer_config.json nor added_tokens.json)",
            dir.display()
        )));
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let map: BTreeMap<String, u32> = serde_json::from_str(&text).map_err(|source| Error::Json { path, source })?;
    for (content, id) in map {
        tokens.insert(id, AddedToken::from(content, true).normalized(false));
    }
    Ok(tokens)
}

fn path_str(path: &Path) -> Result<String> {
    path.to_str()
        .map(str::to_string)
        .ok_or_else(|| Error::Tokenizer(format!("{}: path is not valid UTF-8", path.display())))
}

fn tokenizer_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(format!("{}: {e}", path.display()))
}
