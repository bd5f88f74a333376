//! Prompts with images: what `Qwen2VLProcessor` + `Qwen2_5_VLModel.forward` do between the text
//! and the language model's layers.
//!
//! 1. Each `<|image_pad|>` in the text is expanded to as many copies as its image has merged
//!    tokens (`gh·gw/4`).
//! 2. The token embeddings of those copies are replaced, in order, by the vision tower's output.
//! 3. Positions ([`MropeMode`]): Qwen2.5-VL was trained with **3-D M-RoPE**: text tokens count
//!    up 0, 1, 2, … on all three axes; an image starting at position s puts its merged token
//!    (row, col) at (t, h, w) = (s, s + row, s + col); the text after it resumes at
//!    s + max(rows, cols). transformers 5 only computes these when the processor's
//!    `mm_token_type_ids` reach the model — diffusers' edit text encoding drops them, so there
//!    every token just gets its index (1-D; diffusers issue #14194). Captioning passes them.
//!
//! [`encode_prompt_with_images`] is Edit-2509's `encode_prompt`: the `"Picture N: …"` image
//! placeholders before the instruction, the template, the LM, the template's first `drop` tokens
//! removed, and **no** `max_sequence_length` cut (Edit-Plus applies none).

use std::ops::Range;

use candle_core::{Device, Tensor};
use image::RgbImage;

use super::processor::ProcessedImage;
use super::prompt::gather_prompt_tokens;
use super::text::Qwen25VLTextModel;
use super::vision::VisionTower;
use crate::tokenizer::{edit_image_prefix, PromptTemplate, QwenTokenizer};
use crate::{Error, Result};

/// How image tokens are positioned for M-RoPE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MropeMode {
    /// True 3-D positions (`get_rope_index`): what the model was trained with.
    #[default]
    ThreeD,
    /// Every token at its sequence index: what diffusers 0.42.1 + transformers 5 compute for the
    /// Edit-2509 prompt (for parity with that reference).
    OneD,
}

/// One tokenised prompt with its image placeholders expanded, and its M-RoPE positions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultimodalPrompt {
    /// Token ids, each `<|image_pad|>` repeated once per merged image token.
    pub ids: Vec<u32>,
    /// `[3][S]`: the t, h and w position of every token.
    pub positions: [Vec<u32>; 3],
    /// The next text token (index `ids.len()`) goes at position `ids.len() + rope_delta` on every
    /// axis: `max position + 1 − len` (0 for 1-D positions).
    pub rope_delta: i64,
}

impl MultimodalPrompt {
    /// Tokenises `text`, whose `<|image_pad|>` tokens stand for `grids` in order (one each), and
    /// positions it. `merge` is the vision tower's spatial merge size.
    pub fn new(
        tokenizer: &QwenTokenizer,
        text: &str,
        grids: &[(usize, usize, usize)],
        merge: usize,
        mode: MropeMode,
    ) -> Result<Self> {
        let image_pad = tokenizer.special().image_pad;
        let ids = tokenizer.encode(text)?;
        let tokens: Vec<usize> = grids.iter().map(|&(t, h, w)| t * h * w / (merge * merge)).collect();
        let ids = expand_image_pads(&ids, image_pad, &tokens)?;
        let (positions, rope_delta) = match mode {
            MropeMode::ThreeD => rope_index(&ids, image_pad, grids, merge)?,
            MropeMode::OneD => {
                let p: Vec<u32> = (0..ids.len() as u32).collect();
                ([p.clone(), p.clone(), p], 0)
            }
        };
        Ok(Self {
            ids,
            positions,
            rope_delta,
        })
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Positions as a `[3, 1, S]` u32 tensor.
    pub fn positions_tensor(&self, device: &Device) -> candle_core::Result<Tensor> {
        Tensor::new(self.positions.to_vec(), device)?.unsqueeze(1)
    }
}

/// Replaces the i-th `<|image_pad|>` of `ids` by `tokens_per_image[i]` copies; an error unless
/// the counts match.
pub fn expand_image_pads(ids: &[u32], image_pad: u32, tokens_per_image: &[usize]) -> Result<Vec<u32>> {
    let pads = ids.iter().filter(|&&t| t == image_pad).count();
    if pads != tokens_per_image.len() {
        return Err(Error::InvalidInput(format!(
            "the prompt has {pads} <|image_pad|> placeholders but {} images were given",
            tokens_per_image.len()
        )));
    }
    let mut out = Vec::with_capacity(ids.len() + tokens_per_image.iter().sum::<usize>());
    let mut images = tokens_per_image.iter();
    for &t in ids {
        if t == image_pad {
            let n = *images.next().expect("counted above");
            out.extend(std::iter::repeat_n(image_pad, n));
        } else {
            out.push(t);
        }
    }
    Ok(out)
}

/// transformers' `get_rope_index` for one unpadded sequence whose image runs are already
/// expanded: `([t, h, w] positions, rope_delta)`. Runs of `<|image_pad|>` are the images, in
/// order; each run must hold exactly its grid's merged tokens.
pub fn rope_index(
    ids: &[u32],
    image_pad: u32,
    grids: &[(usize, usize, usize)],
    merge: usize,
) -> Result<([Vec<u32>; 3], i64)> {
    let mut pos: [Vec<u32>; 3] = [
        Vec::with_capacity(ids.len()),
        Vec::with_capacity(ids.len()),
        Vec::with_capacity(ids.len()),
    ];
    let mut grids = grids.iter();
    let mut current = 0u32;
    let mut i = 0;
    while i < ids.len() {
        if ids[i] != image_pad {
            for axis in &mut pos {
                axis.push(current);
            }
            current += 1;
            i += 1;
            continue;
        }
        let run = ids[i..].iter().take_while(|&&t| t == image_pad).count();
        let &(t, gh, gw) = grids
            .next()
            .ok_or_else(|| Error::InvalidInput("more image token runs than images".into()))?;
        let (lh, lw) = (gh / merge, gw / merge);
        if run != t * lh * lw {
            return Err(Error::InvalidInput(format!(
                "an image token run of {run} does not match grid {:?} ({} merged tokens)",
                (t, gh, gw),
                t * lh * lw
            )));
        }
        for frame in 0..t {
            for r in 0..lh {
                for c in 0..lw {
                    pos[0].push(current + frame as u32);
                    pos[1].push(current + r as u32);
                    pos[2].push(current + c as u32);
                }
            }
        }
        current += lh.max(lw) as u32;
        i += run;
    }
    if grids.next().is_some() {
        return Err(Error::InvalidInput("fewer image token runs than images".into()));
    }
    let max = pos.iter().flatten().copied().max().map_or(-1, i64::from);
    Ok((pos, max + 1 - ids.len() as i64))
}

/// Token embeddings of `rows` (`[B][S]` ids, equal lengths) with every row's `<|image_pad|>`
/// embeddings replaced, in order, by the rows of `image_embeds` `[N, D]` (each row must hold
/// exactly N pads): `[B, S, D]` in the model's dtype.
pub fn embed_with_images(
    model: &Qwen25VLTextModel,
    rows: &[Vec<u32>],
    image_pad: u32,
    image_embeds: Option<&Tensor>,
) -> Result<Tensor> {
    let device = model.device();
    let ids = Tensor::new(rows.to_vec(), device)?;
    let embeds = model.embed_tokens(&ids)?;
    let Some(image_embeds) = image_embeds else {
        if rows.iter().flatten().any(|&t| t == image_pad) {
            return Err(Error::InvalidInput(
                "the prompt has image tokens but no image embeddings".into(),
            ));
        }
        return Ok(embeds);
    };
    let (b, s, d) = embeds.dims3()?;
    let (n, di) = image_embeds.dims2()?;
    if di != d {
        return Err(Error::InvalidInput(format!(
            "vision embeddings are {di} wide but the language model's are {d} (out_hidden_size must equal hidden_size)"
        )));
    }
    // One gather over [token embeddings; image embeddings]: pads pick image rows in order.
    let mut index = Vec::with_capacity(b * s);
    for (r, row) in rows.iter().enumerate() {
        let mut k = 0;
        for (j, &t) in row.iter().enumerate() {
            if t == image_pad {
                index.push((b * s + k) as u32);
                k += 1;
            } else {
                index.push((r * s + j) as u32);
            }
        }
        if k != n {
            return Err(Error::InvalidInput(format!(
                "prompt {r} has {k} image tokens but the images give {n} embeddings"
            )));
        }
    }
    let table = Tensor::cat(
        &[embeds.reshape((b * s, d))?, image_embeds.to_dtype(embeds.dtype())?],
        0,
    )?;
    Ok(table
        .index_select(&Tensor::new(index, device)?, 0)?
        .reshape((b, s, d))?)
}

/// Edit-2509's prompt encoding (`QwenImageEditPlusPipeline.encode_prompt` with condition
/// images): for each prompt, `template.format("Picture 1: <image>…" + prompt)`, the images
/// (already at the pipeline's ≈384² condition size; the processor's own resize happens here)
/// embedded at their placeholders, the language model run, and each sample's real tokens after
/// the template's `drop` kept. Returns embeddings `[B, L, D]` (model dtype) and mask `[B, L]` (u8).
///
/// Every prompt sees all images. No `max_sequence_length` cut is applied, as in the reference.
pub fn encode_prompt_with_images(
    model: &Qwen25VLTextModel,
    vision: &VisionTower,
    tokenizer: &QwenTokenizer,
    template: &PromptTemplate,
    prompts: &[&str],
    images: &[RgbImage],
    positions: MropeMode,
) -> Result<(Tensor, Tensor)> {
    if prompts.is_empty() {
        return Err(Error::InvalidInput("no prompt to encode".into()));
    }
    let device = model.device();
    let processed = images
        .iter()
        .map(|img| vision.processor().preprocess(img, device))
        .collect::<Result<Vec<_>>>()?;
    let image_embeds = encode_images(vision, &processed)?;
    let grids: Vec<_> = processed.iter().map(|p| p.grid_thw).collect();
    let merge = vision.config().spatial_merge_size;
    let prefix = edit_image_prefix(images.len());
    let encoded = prompts
        .iter()
        .map(|p| {
            MultimodalPrompt::new(
                tokenizer,
                &template.format(&format!("{prefix}{p}")),
                &grids,
                merge,
                positions,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    for (i, e) in encoded.iter().enumerate() {
        if e.len() <= template.drop {
            return Err(Error::InvalidInput(format!(
                "prompt {i} encodes to {} tokens with its template, not more than the {} the template drops",
                e.len(),
                template.drop
            )));
        }
    }

    // Right padding (as the processor): pad rows get the pad id, position 0 and mask 0.
    let width = encoded.iter().map(MultimodalPrompt::len).max().unwrap_or(0);
    let pad = tokenizer.pad_id();
    let mut rows = Vec::with_capacity(encoded.len());
    let mut mask = Vec::with_capacity(encoded.len());
    let mut pos: [Vec<Vec<u32>>; 3] = Default::default();
    let mut kept: Vec<Range<usize>> = Vec::with_capacity(encoded.len());
    for e in &encoded {
        let trail = width - e.len();
        rows.push([e.ids.clone(), vec![pad; trail]].concat());
        mask.push([vec![1u32; e.len()], vec![0; trail]].concat());
        for (axis, p) in pos.iter_mut().zip(&e.positions) {
            axis.push([p.clone(), vec![0; trail]].concat());
        }
        kept.push(template.drop..e.len());
    }
    let image_pad = tokenizer.special().image_pad;
    let embeds = embed_with_images(model, &rows, image_pad, image_embeds.as_ref())?;
    let position_ids = Tensor::new(pos.to_vec(), device)?;
    let padded = mask.iter().flatten().any(|&m| m == 0);
    let mask = if padded { Some(Tensor::new(mask, device)?) } else { None };
    let hidden = model.forward(&embeds, &position_ids, mask.as_ref())?;
    gather_prompt_tokens(&hidden, &kept)
}

/// The vision embeddings of all images, concatenated (`None` without images).
fn encode_images(vision: &VisionTower, processed: &[ProcessedImage]) -> Result<Option<Tensor>> {
    if processed.is_empty() {
        return Ok(None);
    }
    Ok(Some(vision.encode(processed)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAD: u32 = 9;

    #[test]
    fn image_pads_expand_per_image() {
        let ids = [1, PAD, 2, PAD, 3];
        assert_eq!(
            expand_image_pads(&ids, PAD, &[2, 3]).unwrap(),
            vec![1, PAD, PAD, 2, PAD, PAD, PAD, 3]
        );
        assert!(expand_image_pads(&ids, PAD, &[2]).is_err());
    }

    #[test]
    fn rope_index_places_images_on_their_grid() {
        // 2 text tokens, a 2×3 merged image (grid 4×6), 2 text tokens.
        let ids = [1, 2, PAD, PAD, PAD, PAD, PAD, PAD, 3, 4];
        let (pos, delta) = rope_index(&ids, PAD, &[(1, 4, 6)], 2).unwrap();
        assert_eq!(pos[0], vec![0, 1, 2, 2, 2, 2, 2, 2, 5, 6]);
        assert_eq!(pos[1], vec![0, 1, 2, 2, 2, 3, 3, 3, 5, 6]);
        assert_eq!(pos[2], vec![0, 1, 2, 3, 4, 2, 3, 4, 5, 6]);
        assert_eq!(delta, 7 - 10);
        assert!(rope_index(&ids, PAD, &[(1, 4, 4)], 2).is_err());
        assert!(rope_index(&ids, PAD, &[], 2).is_err());
        let (text_only, d) = rope_index(&[5, 6, 7], PAD, &[], 2).unwrap();
        assert_eq!((text_only[2].clone(), d), (vec![0, 1, 2], 0));
    }
}
