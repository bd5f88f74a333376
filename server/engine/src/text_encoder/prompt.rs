//! Prompt → embeddings for the DiT, as the pipelines' `_get_qwen_prompt_embeds` + `encode_prompt`
//! do it (diffusers 0.42.1):
//!
//! 1. wrap each prompt in the template and tokenise; pad the batch with `<|endoftext|>` on the
//!    tokenizer's padding side and build the attention mask;
//! 2. run the language model with 1-D positions `0..S` for every row (the reference passes no
//!    position ids, so a left-padded row's positions start at its padding);
//! 3. per sample keep only the real tokens, drop the template's first `drop` of them;
//! 4. right-pad with zero rows to the longest sample, mask = 1 on kept tokens;
//! 5. cap the length at `max_sequence_length`.
//!
//! Unlike the reference, which silently cuts prompts at `max_sequence_length`, a prompt that
//! does not fit is an error naming its length, so no part of a user's prompt is lost unnoticed.

use std::ops::Range;

use candle_core::{DType, Device, Tensor};

use super::text::{text_position_ids, Qwen25VLTextModel};
use crate::tokenizer::{PaddingSide, PromptTemplate, QwenTokenizer};
use crate::{Error, Result};

/// The pipelines' default `max_sequence_length`.
pub const DEFAULT_MAX_SEQUENCE_LENGTH: usize = 512;
/// The largest `max_sequence_length` the pipelines accept.
pub const MAX_SEQUENCE_LENGTH_LIMIT: usize = 1024;

/// A tokenised, padded batch of templated prompts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptBatch {
    /// `[B][S]` token ids, padded.
    pub ids: Vec<Vec<u32>>,
    /// The rows of each sample that its prompt keeps: its real tokens after the template's drop.
    pub kept: Vec<Range<usize>>,
    /// `[B][S]`: 1 on real tokens, 0 on padding.
    pub attention_mask: Vec<Vec<u32>>,
}

impl PromptBatch {
    /// Tokenises `template.format(p)` for each prompt and pads to the longest; checks that each
    /// prompt's kept part fits in `max_sequence_length` (1..=1024).
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
        let mut rows = Vec::with_capacity(prompts.len());
        for (i, prompt) in prompts.iter().enumerate() {
            let ids = tokenizer.encode(&template.format(prompt))?;
            let kept = ids.len().saturating_sub(template.drop);
            if kept == 0 {
                return Err(Error::InvalidInput(format!(
                    "prompt {i} encodes to {} tokens with its template, not more than the {} the template drops",
                    ids.len(),
                    template.drop
                )));
            }
            if kept > max_sequence_length {
                return Err(Error::InvalidInput(format!(
                    "prompt {i} is too long: {kept} tokens (with the template's closing 5), the limit is \
                     max_sequence_length = {max_sequence_length} (at most {MAX_SEQUENCE_LENGTH_LIMIT}); \
                     shorten the prompt or raise max_sequence_length"
                )));
            }
            rows.push(ids);
        }

        let width = rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut batch = Self { ids: vec![], kept: vec![], attention_mask: vec![] };
        for row in rows {
            let pad = width - row.len();
            let (ids, mask, start) = match tokenizer.padding_side() {
                PaddingSide::Right => {
                    ([row.as_slice(), &vec![tokenizer.pad_id(); pad]].concat(), [vec![1; row.len()], vec![0; pad]].concat(), 0)
                }
                PaddingSide::Left => {
                    ([&vec![tokenizer.pad_id(); pad], row.as_slice()].concat(), [vec![0; pad], vec![1; row.len()]].concat(), pad)
                }
            };
            batch.kept.push(start + template.drop..start + row.len());
            batch.ids.push(ids);
            batch.attention_mask.push(mask);
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

/// Encodes a batch of prompts with one template: embeddings `[B, L, D]` (the model's dtype) and
/// mask `[B, L]` (u8, 1 = token, 0 = padding), L = the longest kept prompt.
///
/// The reference drops the mask when it is all ones; callers that batch with other prompts need
/// it, so it is always returned.
pub fn encode_prompt(
    model: &Qwen25VLTextModel,
    tokenizer: &QwenTokenizer,
    template: &PromptTemplate,
    prompts: &[&str],
    max_sequence_length: usize,
) -> Result<(Tensor, Tensor)> {
    let batch = PromptBatch::new(tokenizer, template, prompts, max_sequence_length)?;
    let device = model.device();
    let ids = batch.ids_tensor(device)?;
    let positions = text_position_ids(batch.batch_size(), batch.seq_len(), device)?;
    // An all-ones mask changes nothing under causal attention; skip building it.
    let mask = if batch.is_padded() { Some(batch.attention_mask_tensor(device)?) } else { None };
    let hidden = model.forward(&ids, &positions, mask.as_ref())?;
    let (embeds, mask) = gather_prompt_tokens(&hidden, &batch.kept)?;
    // Every kept range fits (checked above); the cap matters only to callers of
    // `gather_prompt_tokens` with longer rows.
    let len = embeds.dim(1)?.min(max_sequence_length);
    Ok((embeds.narrow(1, 0, len)?, mask.narrow(1, 0, len)?))
}

/// Takes rows `kept[b]` of each sample of `hidden` `[B, S, D]`, right-pads them with zero rows
/// to the longest, and returns them `[B, L, D]` with their mask `[B, L]` (u8).
pub fn gather_prompt_tokens(hidden: &Tensor, kept: &[Range<usize>]) -> Result<(Tensor, Tensor)> {
    let (b, s, d) = hidden.dims3()?;
    if kept.len() != b || kept.iter().any(|r| r.start > r.end || r.end > s) {
        return Err(Error::InvalidInput(format!("kept token ranges {kept:?} don't fit hidden states [{b}, {s}, {d}]")));
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
    Ok((Tensor::stack(&rows, 0)?, Tensor::new(masks, hidden.device())?.to_dtype(DType::U8)?))
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
