//! The whole transformer (diffusers `QwenImageTransformer2DModel`): input projections, timestep
//! conditioning, RoPE, the dual-stream blocks, and the modulated output projection.

use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{Linear, Module, VarBuilder};

use super::attention::KeyMask;
use super::block::{CondModulation, TransformerBlock};
use super::config::Config;
use super::embeddings::TimeTextEmbed;
use super::norm::{layer_norm, RmsNorm};
use super::rope::{Rope, RopeTables, RopeVariant};
use super::sequence_parallel::RankComm;
use crate::gpu::fused::Kernels;
use crate::gpu::offload::{Blocks, BuildBlock, OffloadOptions, OffloadStats, StreamedBlocks};

/// Image-segment shapes `(frames, h, w)` in packed-token units (latent h/2, w/2), in token order.
pub type ImgShapes = [(usize, usize, usize)];

/// Intermediate tensors of one forward, for parity tests against the reference.
#[derive(Debug, Clone)]
pub struct Trace {
    /// `[B, D]`: `time_text_embed` output.
    pub temb: Tensor,
    /// `[B, S_img, D]`: `img_in` output.
    pub img_in: Tensor,
    /// `[B, S_txt, joint_attention_dim]`: `txt_norm` output.
    pub txt_norm: Tensor,
    /// `[B, S_txt, D]`: `txt_in(txt_norm(·))` output.
    pub txt_in: Tensor,
    /// Per block, its `(img, txt)` outputs.
    pub blocks: Vec<(Tensor, Tensor)>,
    /// `[B, S_img, D]`: `norm_out` output (before `proj_out`).
    pub norm_out: Tensor,
}

#[derive(Debug)]
pub struct QwenImageTransformer {
    cfg: Config,
    img_in: Linear,
    txt_norm: RmsNorm,
    txt_in: Linear,
    time_text_embed: TimeTextEmbed,
    transformer_blocks: Blocks<TransformerBlock>,
    /// `norm_out.linear` of `AdaLayerNormContinuous`: emits (scale, shift) — scale first.
    norm_out: Linear,
    proj_out: Linear,
    rope: Rope,
    dtype: DType,
    device: Device,
    /// Which CUDA kernels the blocks run (bf16 on a GPU); the default is the fastest measured.
    kernels: Kernels,
}

impl QwenImageTransformer {
    /// Loads the weights under `vb` (the `transformer/` component); runs in `vb`'s dtype/device.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let blocks = (0..cfg.num_layers)
            .map(|i| Self::block_builder(cfg)(i, vb.pp("transformer_blocks").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Self::with_blocks(cfg, vb, Blocks::OnDevice(blocks))
    }

    /// Like [`Self::new`], but the transformer blocks (≈ 97% of the weights) stay in host memory
    /// and stream to the GPU one block ahead of use ([`crate::gpu::offload`]); the first
    /// `options.resident_blocks` stay on the GPU. `vb` gives the other weights on the run's
    /// device; `blocks_source` reads the blocks (typically the same checkpoint memory-mapped on
    /// the CPU), in the run's dtype.
    pub fn new_offloaded(
        cfg: &Config,
        vb: VarBuilder,
        blocks_source: &VarBuilder,
        options: OffloadOptions,
    ) -> Result<Self> {
        cfg.validate()?;
        let blocks = StreamedBlocks::new(
            &blocks_source.pp("transformer_blocks"),
            cfg.num_layers,
            Self::block_builder(cfg),
            vb.device(),
            options,
        )?;
        Self::with_blocks(cfg, vb, Blocks::Streamed(blocks))
    }

    fn block_builder(cfg: &Config) -> BuildBlock<TransformerBlock> {
        let (dim, heads, head_dim) = (cfg.inner_dim(), cfg.num_attention_heads, cfg.attention_head_dim);
        Box::new(move |i, vb| TransformerBlock::new(dim, heads, head_dim, i, vb))
    }

    fn with_blocks(cfg: &Config, vb: VarBuilder, transformer_blocks: Blocks<TransformerBlock>) -> Result<Self> {
        let dim = cfg.inner_dim();
        let variant = if cfg.use_layer3d_rope {
            RopeVariant::Layer3d
        } else {
            RopeVariant::Base
        };
        Ok(Self {
            img_in: candle_nn::linear(cfg.in_channels, dim, vb.pp("img_in"))?,
            txt_norm: RmsNorm::new(cfg.joint_attention_dim, 1e-6, vb.pp("txt_norm"))?,
            txt_in: candle_nn::linear(cfg.joint_attention_dim, dim, vb.pp("txt_in"))?,
            time_text_embed: TimeTextEmbed::new(dim, cfg.use_additional_t_cond, vb.pp("time_text_embed"))?,
            transformer_blocks,
            norm_out: candle_nn::linear(dim, 2 * dim, vb.pp("norm_out").pp("linear"))?,
            proj_out: candle_nn::linear(dim, cfg.out_token_channels(), vb.pp("proj_out"))?,
            rope: Rope::new(cfg.axes_dims_rope, variant, vb.device()),
            dtype: vb.dtype(),
            device: vb.device().clone(),
            cfg: cfg.clone(),
            kernels: Kernels::default(),
        })
    }

    /// Chooses the CUDA kernels of later forwards (the bench and the tests compare them).
    pub fn set_kernels(&mut self, kernels: Kernels) {
        self.kernels = kernels;
    }

    pub fn kernels(&self) -> Kernels {
        self.kernels
    }

    /// What the offloaded block stack holds and has copied (`None` when all blocks are on the
    /// device).
    pub fn offload_stats(&self) -> Option<OffloadStats> {
        self.transformer_blocks.offload_stats()
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The RoPE tables a forward with these image segments and text length uses (cached).
    pub fn rope_tables(&self, img_shapes: &ImgShapes, txt_len: usize) -> Result<Arc<RopeTables>> {
        self.rope.tables(img_shapes, txt_len)
    }

    /// `temb` `[B, D]` for `sigma` `[B]` (= timestep / 1000).
    pub fn timestep_embedding(&self, sigma: &Tensor, additional_t_cond: Option<&Tensor>) -> Result<Tensor> {
        self.time_text_embed.forward(sigma, additional_t_cond, self.dtype)
    }

    /// Predicts the flow velocity for the image tokens.
    ///
    /// - `img` `[B, S_img, in_channels]`: packed latents (noisy tokens, then condition tokens);
    /// - `txt` `[B, S_txt, joint_attention_dim]`: prompt embeddings;
    /// - `txt_mask` `[B, S_txt]`: nonzero = valid token, zero = padding (masked as a key);
    /// - `sigma` `[B]`: timestep / 1000;
    /// - `img_shapes`: `(frames, h, w)` of each segment of `img`, the same for every batch row,
    ///   summing to `S_img`;
    /// - `additional_t_cond` `[B]` (0 or 1): required by the layered model, refused otherwise.
    ///
    /// Returns `[B, S_img, patch²·out_channels]` in the model's dtype.
    pub fn forward(
        &self,
        img: &Tensor,
        txt: &Tensor,
        txt_mask: Option<&Tensor>,
        sigma: &Tensor,
        img_shapes: &ImgShapes,
        additional_t_cond: Option<&Tensor>,
    ) -> Result<Tensor> {
        self.run(img, txt, txt_mask, sigma, img_shapes, additional_t_cond, None)
    }

    /// [`forward`](Self::forward), also returning every intermediate the parity tests check.
    pub fn forward_with_trace(
        &self,
        img: &Tensor,
        txt: &Tensor,
        txt_mask: Option<&Tensor>,
        sigma: &Tensor,
        img_shapes: &ImgShapes,
        additional_t_cond: Option<&Tensor>,
    ) -> Result<(Tensor, Trace)> {
        let mut trace = Vec::new();
        let out = self.run(
            img,
            txt,
            txt_mask,
            sigma,
            img_shapes,
            additional_t_cond,
            Some(&mut trace),
        )?;
        let mut it = trace.into_iter();
        let mut next = || it.next().expect("run records every stage");
        let (temb, img_in, txt_norm, txt_in) = (next(), next(), next(), next());
        let blocks = (0..self.transformer_blocks.len()).map(|_| (next(), next())).collect();
        let norm_out = next();
        Ok((
            out,
            Trace {
                temb,
                img_in,
                txt_norm,
                txt_in,
                blocks,
                norm_out,
            },
        ))
    }

    /// This device's part of a sequence-parallel forward ([`super::SequenceParallel`]): the
    /// whole inputs in, the velocity of this device's shard of the image tokens out.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward_rank(
        &self,
        img: &Tensor,
        txt: &Tensor,
        txt_mask: Option<&Tensor>,
        sigma: &Tensor,
        img_shapes: &ImgShapes,
        additional_t_cond: Option<&Tensor>,
        comm: &RankComm,
    ) -> Result<Tensor> {
        let (_, s_img, s_txt) = self.check_inputs(img, txt, txt_mask, sigma, img_shapes)?;
        let shard = comm.shard();
        let temb = self.timestep_embedding(sigma, additional_t_cond)?;
        let mut img = self
            .img_in
            .forward(&img.narrow(1, shard.start, shard.len())?.to_dtype(self.dtype)?)?;
        let mut txt = self
            .txt_in
            .forward(&self.txt_norm.forward(&txt.to_dtype(self.dtype)?)?)?;
        let rope = self.rope.tables(img_shapes, s_txt)?;
        let key_mask = KeyMask::for_text(txt_mask, img.dim(0)?, s_txt, s_img, img.device())?;
        self.transformer_blocks.for_each(|block| {
            (img, txt) =
                block.forward_sequence_parallel(&img, &txt, &temb, &rope, Some(&key_mask), comm, &self.kernels)?;
            Ok(())
        })?;
        self.proj_out.forward(&self.final_norm(&img, &temb)?)
    }

    /// `norm_out`: AdaLN with (scale, shift) from `temb`.
    fn final_norm(&self, img: &Tensor, temb: &Tensor) -> Result<Tensor> {
        let emb = self.norm_out.forward(&temb.silu()?)?.unsqueeze(1)?;
        let (scale, shift) = (
            emb.narrow(2, 0, self.cfg.inner_dim())?,
            emb.narrow(2, self.cfg.inner_dim(), self.cfg.inner_dim())?,
        );
        layer_norm(img, 1e-6)?
            .broadcast_mul(&(scale + 1.0)?)?
            .broadcast_add(&shift)
    }

    /// Checks the shapes a caller can get wrong; returns (batch, S_img, S_txt).
    fn check_inputs(
        &self,
        img: &Tensor,
        txt: &Tensor,
        txt_mask: Option<&Tensor>,
        sigma: &Tensor,
        img_shapes: &ImgShapes,
    ) -> Result<(usize, usize, usize)> {
        let cfg = &self.cfg;
        let (b, s_img, c) = match img.dims() {
            &[b, s, c] => (b, s, c),
            d => candle_core::bail!(
                "transformer: img must be [batch, image tokens, {}], got {d:?}",
                cfg.in_channels
            ),
        };
        if c != cfg.in_channels {
            candle_core::bail!(
                "transformer: img has {c} channels per token, the model expects in_channels={} (packed 2×2 latents)",
                cfg.in_channels
            );
        }
        let (tb, s_txt) = match txt.dims() {
            &[tb, s, d] if d == cfg.joint_attention_dim => (tb, s),
            d => candle_core::bail!(
                "transformer: txt must be [batch, text tokens, joint_attention_dim={}], got {d:?}",
                cfg.joint_attention_dim
            ),
        };
        if tb != b {
            candle_core::bail!("transformer: img has batch {b} but txt has batch {tb}");
        }
        if let Some(mask) = txt_mask {
            if mask.dims() != [b, s_txt] {
                candle_core::bail!(
                    "transformer: txt_mask has shape {:?}, expected [batch={b}, text tokens={s_txt}]",
                    mask.dims()
                );
            }
        }
        if sigma.dims() != [b] {
            candle_core::bail!("transformer: sigma has shape {:?}, expected [batch={b}]", sigma.dims());
        }
        if img_shapes.is_empty() {
            candle_core::bail!("transformer: img_shapes is empty; give one (frames, h, w) per image segment");
        }
        let tokens: usize = img_shapes.iter().map(|&(f, h, w)| f * h * w).sum();
        if tokens != s_img {
            candle_core::bail!(
                "transformer: img_shapes {img_shapes:?} describe {tokens} tokens but img has {s_img} (token axis of [B, S_img, C])"
            );
        }
        Ok((b, s_img, s_txt))
    }

    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        img: &Tensor,
        txt: &Tensor,
        txt_mask: Option<&Tensor>,
        sigma: &Tensor,
        img_shapes: &ImgShapes,
        additional_t_cond: Option<&Tensor>,
        mut trace: Option<&mut Vec<Tensor>>,
    ) -> Result<Tensor> {
        let (_, s_img, s_txt) = self.check_inputs(img, txt, txt_mask, sigma, img_shapes)?;
        let mut record = |t: &Tensor| {
            if let Some(tr) = trace.as_deref_mut() {
                tr.push(t.clone());
            }
        };

        let temb = self.timestep_embedding(sigma, additional_t_cond)?;
        // Edit-2511 (`zero_cond_t`): the condition images' tokens are modulated as at t = 0.
        let temb0 = match self.cfg.zero_cond_t {
            true => Some(self.timestep_embedding(&sigma.zeros_like()?, additional_t_cond)?),
            false => None,
        };
        let cond = temb0.as_ref().map(|temb0| CondModulation {
            temb0,
            noisy: img_shapes.first().map_or(0, |&(f, h, w)| f * h * w),
        });
        let mut img = self.img_in.forward(&img.to_dtype(self.dtype)?)?;
        let txt_normed = self.txt_norm.forward(&txt.to_dtype(self.dtype)?)?;
        let mut txt = self.txt_in.forward(&txt_normed)?;
        record(&temb);
        record(&img);
        record(&txt_normed);
        record(&txt);

        let rope = self.rope.tables(img_shapes, s_txt)?;
        let key_mask = KeyMask::for_text(txt_mask, img.dim(0)?, s_txt, s_img, img.device())?;
        self.transformer_blocks.for_each(|block| {
            (img, txt) = block.forward_with_cond(&img, &txt, &temb, cond, &rope, Some(&key_mask), &self.kernels)?;
            record(&img);
            record(&txt);
            Ok(())
        })?;

        let img = self.final_norm(&img, &temb)?;
        record(&img);
        self.proj_out.forward(&img)
    }
}
