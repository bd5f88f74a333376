//! Prompt → embeddings for the DiT, as the pipelines' `_get_qwen_prompt_embeds` + `encode_prompt`
//! do it (diffusers 0.42.1):
//!
//! 1. wrap each prompt in the template and tokenise; pad the batch with `<|endoftext|>` on the
//!    tokenizer's padding side and build the attention mask;
//! 2. run the language model with 1-D positions `0..S` for every row (the reference passes no
//!    position ids, so a left-padded row's positions start at its padding);
//! 3. per sample keep only the real tokens, drop the template's first `drop` of them;
//! 4. right-pad with zero rows to the longest sample, mask = 1 on kept tokens;
//! 5. cut at `max_sequence_length`.
//!
//! Step 5 silently loses the end of a long prompt. [`encode_prompt`] does the same (that is the
//! reference's output, and tested against it); [`check_prompt_lengths`] turns it into a clear
//! error, and needs only the tokenizer, so a server can reject a request before loading 15 GB.
//! Since attention is causal, tokens past the cut cannot change the kept ones: they are not fed
//! to the model at all, which bounds its cost for any prompt length.

use std::ops::Range;

use candle_core::{DType, Device, Tensor};

use super::text::{text_position_ids, Qwen25VLTextModel};
use crate::tokenizer::{PaddingSide, PromptTemplate, QwenTokenizer};
use crate::{Error, Result};

/// The pipelines' default `max_sequence_length`.
pub const DEFAULT_MAX_SEQUENCE_LENGTH: usize = 512;
/// The largest `max_sequence_length` the pipelines accept.
pub const MAX_SEQUENCE_LENGTH_LIMIT: usize = 1024;

/// A tokenised, padded batch of templated prompts, ready for the language model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptBatch {
    /// `[B][S]` token ids, padded.
    pub ids: Vec<Vec<u32>>,
    /// `[B][S]`: 1 on real tokens, 0 on padding.
    pub attention_mask: Vec<Vec<u32>>,
    /// The rows of each sample that become its prompt embedding: its real tokens after the
    /// template's drop, at most `max_sequence_length` of them.
    pub kept: Vec<Range<usize>>,
    /// Kept tokens each prompt had before the cut at `max_sequence_length`.
    pub full_lengths: Vec<usize>,
}

impl PromptBatch {
    /// Tokenises `template.format(p)` for each prompt and lays the batch out as the reference
    /// does, leaving out tokens beyond `drop + max_sequence_length` (1..=1024).
    pub fn new(
        tokenizer: &QwenTokenizer,
        template: &PromptTemplate,
        prompts: &[&str],
        max_sequence_length: usize,
    ) -> Result<Self> {
        check_max_sequence_length(max_sequence_length)?;
        if prompts.is_empty() {
            return Err(Error::InvalidInput("no prompt to encode".into()));
        }
        let rows = prompts
            .iter()
            .enumerate()
            .map(|(i, prompt)| templated_ids(tokenizer, template, i, prompt))
            .collect::<Result<Vec<_>>>()?;

        // Left padding puts each row's tokens at positions (width - len)..width of the full
        // batch; keep those offsets so the cut changes nothing the model sees.
        let full_width = rows.iter().map(Vec::len).max().unwrap_or(0);
        let cap = template.drop + max_sequence_length;
        let lead = |row: &Vec<u32>| match tokenizer.padding_side() {
            PaddingSide::Right => 0,
            PaddingSide::Left => full_width - row.len(),
        };
        let width = rows.iter().map(|r| lead(r) + r.len().min(cap)).max().unwrap_or(0);

        let pad = tokenizer.pad_id();
        let mut batch = Self {
            ids: vec![],
            attention_mask: vec![],
            kept: vec![],
            full_lengths: vec![],
        };
        for row in &rows {
            let (lead, used) = (lead(row), row.len().min(cap));
            let trail = width - lead - used;
            batch
                .ids
                .push([vec![pad; lead], row[..used].to_vec(), vec![pad; trail]].concat());
            batch
                .attention_mask
                .push([vec![0; lead], vec![1; used], vec![0; trail]].concat());
            batch.kept.push(lead + template.drop..lead + used);
            batch.full_lengths.push(row.len() - template.drop);
        }
        Ok(batch)
    }

    pub fn batch_size(&self) -> usize {
        self.ids.len()
    }

    pub fn seq_len(&self) -> usize {
        self.ids.first().map_or(0, Vec::len)
    }

    /// Whether any row is padded (if not, the model needs no mask beyond causality).
    pub fn is_padded(&self) -> bool {
        self.attention_mask.iter().flatten().any(|&m| m == 0)
    }

    pub fn ids_tensor(&self, device: &Device) -> candle_core::Result<Tensor> {
        Tensor::new(self.ids.clone(), device)
    }

    pub fn attention_mask_tensor(&self, device: &Device) -> candle_core::Result<Tensor> {
        Tensor::new(self.attention_mask.clone(), device)
    }
}

/// Encodes a batch of prompts with one template, as the reference's `encode_prompt`: embeddings
/// `[B, L, D]` (the model's dtype) and mask `[B, L]` (u8, 1 = token, 0 = padding), where L is the
/// longest kept prompt, at most `max_sequence_length`. Longer prompts are cut there, as in the
/// reference (with a warning in the log); use [`check_prompt_lengths`] to refuse them instead.
///
/// The reference returns no mask when it is all ones; callers that batch with other prompts need
/// it, so it is always returned.
pub fn encode_prompt(
    model: &Qwen25VLTextModel,
    tokenizer: &QwenTokenizer,
    template: &PromptTemplate,
    prompts: &[&str],
    max_sequence_length: usize,
) -> Result<(Tensor, Tensor)> {
    let batch = PromptBatch::new(tokenizer, template, prompts, max_sequence_length)?;
    for (i, &len) in batch.full_lengths.iter().enumerate() {
        if len > max_sequence_length {
            tracing::warn!(
                prompt = i,
                tokens = len,
                max_sequence_length,
                "prompt cut at max_sequence_length"
            );
        }
    }
    let device = model.device();
    let ids = batch.ids_tensor(device)?;
    let positions = text_position_ids(batch.batch_size(), batch.seq_len(), device)?;
    // An all-ones mask changes nothing under causal attention; skip building it.
    let mask = if batch.is_padded() {
        Some(batch.attention_mask_tensor(device)?)
    } else {
        None
    };
    let hidden = model.forward(&ids, &positions, mask.as_ref())?;
    gather_prompt_tokens(&hidden, &batch.kept)
}

/// The number of tokens each prompt contributes (its text plus the template's closing 5), or a
/// clear error if one exceeds `max_sequence_length` (which must be 1..=1024). Needs only the
/// tokenizer: run it when a request arrives.
pub fn check_prompt_lengths(
    tokenizer: &QwenTokenizer,
    template: &PromptTemplate,
    prompts: &[&str],
    max_sequence_length: usize,
) -> Result<Vec<usize>> {
    check_max_sequence_length(max_sequence_length)?;
    let mut lengths = Vec::with_capacity(prompts.len());
    for (i, prompt) in prompts.iter().enumerate() {
        let kept = templated_ids(tokenizer, template, i, prompt)?.len() - template.drop;
        if kept > max_sequence_length {
            let what = if prompts.len() == 1 {
                "the prompt".to_string()
            } else {
                format!("prompt {i}")
            };
            return Err(Error::InvalidInput(format!(
                "{what} is too long: {kept} tokens (including the template's closing 5), but max_sequence_length is \
                 {max_sequence_length} (at most {MAX_SEQUENCE_LENGTH_LIMIT}); shorten it by {} tokens or raise \
                 max_sequence_length",
                kept - max_sequence_length
            )));
        }
        lengths.push(kept);
    }
    Ok(lengths)
}

/// Takes rows `kept[b]` of each sample of `hidden` `[B, S, D]`, right-pads them with zero rows
/// to the longest, and returns them `[B, L, D]` with their mask `[B, L]` (u8).
pub fn gather_prompt_tokens(hidden: &Tensor, kept: &[Range<usize>]) -> Result<(Tensor, Tensor)> {
    let (b, s, d) = hidden.dims3()?;
    if kept.len() != b || kept.iter().any(|r| r.start > r.end || r.end > s) {
        return Err(Error::InvalidInput(format!(
            "kept token ranges {kept:?} don't fit hidden states [{b}, {s}, {d}]"
        )));
    }
    let longest = kept.iter().map(|r| r.len()).max().unwrap_or(0);
    let mut rows = Vec::with_capacity(b);
    let mut masks = Vec::with_capacity(b);
    for (i, range) in kept.iter().enumerate() {
        let tokens = hidden.get(i)?.narrow(0, range.start, range.len())?;
        let pad = longest - range.len();
        rows.push(if pad > 0 {
            Tensor::cat(&[tokens, Tensor::zeros((pad, d), hidden.dtype(), hidden.device())?], 0)?
        } else {
            tokens
        });
        masks.push([vec![1u8; range.len()], vec![0u8; pad]].concat());
    }
    Ok((
        Tensor::stack(&rows, 0)?,
        Tensor::new(masks, hidden.device())?.to_dtype(DType::U8)?,
    ))
}

/// `max_sequence_length` must be 1..=1024, as the pipelines' `check_inputs` requires.
pub fn check_max_sequence_length(max_sequence_length: usize) -> Result<()> {
    if max_sequence_length == 0 || max_sequence_length > MAX_SEQUENCE_LENGTH_LIMIT {
        return Err(Error::InvalidInput(format!(
            "max_sequence_length must be between 1 and {MAX_SEQUENCE_LENGTH_LIMIT}, got {max_sequence_length}"
        )));
    }
    Ok(())
}

/// Ids of `template.format(prompt)`; an error if nothing is left after the template's drop.
fn templated_ids(tokenizer: &QwenTokenizer, template: &PromptTemplate, index: usize, prompt: &str) -> Result<Vec<u32>> {
    let ids = tokenizer.encode(&template.format(prompt))?;
    if ids.len() <= template.drop {
        return Err(Error::InvalidInput(format!(
            "prompt {index} encodes to {} tokens with its template, not more than the {} the template drops",
            ids.len(),
            template.drop
        )));
    }
    Ok(ids)
}
