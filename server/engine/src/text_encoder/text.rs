//! The Qwen2.5-VL language model (`Qwen2_5_VLTextModel`): what turns a prompt into the hidden
//! states the DiT is conditioned on.
//!
//! - token embeddings (vision embeddings are scattered over the `<|image_pad|>` rows by the
//!   caller, see [`Qwen25VLTextModel::embed_tokens`]);
//! - N pre-norm decoder layers: `h += o(attn(rope(q), rope(k), v))` on `input_layernorm(h)`, then
//!   `h += down(silu(gate(x)) * up(x))` on `post_attention_layernorm(h)`; q/k/v have biases, GQA;
//! - causal attention, optionally with a key-padding mask;
//! - rotate-half RoPE with multimodal sections (M-RoPE): each token has a (t, h, w) position, and
//!   the head_dim/2 frequency slots are split into three runs (16/24/24 for the 7B) that rotate by
//!   t, h and w respectively. Text tokens have t = h = w, i.e. ordinary 1-D RoPE;
//! - a final RMSNorm; its output is `hidden_states[-1]` of the reference.
//!
//! Tensor names follow the checkpoint: `model.layers.{i}.self_attn.q_proj.weight` (the saved
//! layout) or `model.language_model.layers.{i}…` (transformers ≥ 4.52's in-memory layout); both
//! are accepted. Norm statistics, softmax and RoPE run in f32 whatever the model dtype.

use candle_core::{bail, DType, Device, Module, Result, Tensor, D};
use candle_nn::{Embedding, Linear, VarBuilder};

use super::config::{Config, TextConfig};
use super::layers::{apply_rope, GatedMlp, RmsNorm};
use crate::gpu::offload::{Blocks, BuildBlock, OffloadOptions, OffloadStats, StreamedBlocks};
use crate::weights::ModelDir;

/// Prefixes under which checkpoints keep the language model, newest first.
const LANGUAGE_MODEL_PREFIXES: [&str; 2] = ["model.language_model", "model"];

/// M-RoPE tables: inverse frequencies and which position axis drives each frequency slot.
#[derive(Debug, Clone)]
struct MultimodalRope {
    /// `[head_dim / 2]`, f32.
    inv_freq: Tensor,
    /// Slot counts for the t, h, w axes (sum = head_dim / 2).
    mrope_section: Vec<usize>,
}

impl MultimodalRope {
    fn new(cfg: &TextConfig, device: &Device) -> Result<Self> {
        let head_dim = cfg.head_dim();
        let mrope_section = cfg.mrope_section();
        if mrope_section.iter().sum::<usize>() != head_dim / 2 {
            bail!(
                "mrope_section {mrope_section:?} must sum to head_dim/2 = {}",
                head_dim / 2
            )
        }
        // In f32 like torch: 1 / theta^(2i/d).
        let theta = cfg.rope_theta() as f32;
        let inv_freq: Vec<f32> = (0..head_dim / 2)
            .map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32))
            .collect();
        Ok(Self {
            inv_freq: Tensor::new(inv_freq, device)?,
            mrope_section,
        })
    }

    /// cos and sin for `position_ids` `[3, B, S]`, each `[B, 1, S, head_dim]` in f32 (the 1
    /// broadcasts over heads).
    fn cos_sin(&self, position_ids: &Tensor) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.dim(0)?;
        // [3, B, S, half]: every axis' angles for every slot; then each slot keeps its own axis.
        let angles = position_ids
            .to_dtype(DType::F32)?
            .unsqueeze(D::Minus1)?
            .broadcast_mul(&self.inv_freq.reshape((1, 1, 1, half))?)?;
        let mut runs = Vec::with_capacity(self.mrope_section.len());
        let mut start = 0;
        for (i, &len) in self.mrope_section.iter().enumerate() {
            runs.push(angles.get(i % 3)?.narrow(D::Minus1, start, len)?);
            start += len;
        }
        let angles = Tensor::cat(&runs, D::Minus1)?;
        let angles = Tensor::cat(&[&angles, &angles], D::Minus1)?.unsqueeze(1)?;
        Ok((angles.cos()?, angles.sin()?))
    }
}

#[derive(Debug, Clone)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn new(cfg: &TextConfig, vb: VarBuilder) -> Result<Self> {
        let (hidden, num_heads, num_kv_heads, head_dim) = (
            cfg.hidden_size,
            cfg.num_attention_heads,
            cfg.num_key_value_heads(),
            cfg.head_dim(),
        );
        Ok(Self {
            q_proj: candle_nn::linear(hidden, num_heads * head_dim, vb.pp("q_proj"))?,
            k_proj: candle_nn::linear(hidden, num_kv_heads * head_dim, vb.pp("k_proj"))?,
            v_proj: candle_nn::linear(hidden, num_kv_heads * head_dim, vb.pp("v_proj"))?,
            o_proj: candle_nn::linear_no_bias(num_heads * head_dim, hidden, vb.pp("o_proj"))?,
            num_heads,
            num_kv_heads,
            head_dim,
        })
    }

    /// `x` `[B, S, D]`; `mask` additive f32 `[B or 1, 1, S, T]` where T counts the cached keys
    /// too; `cache` holds this layer's keys and values `[B, kv, T−S, hd]` and is extended.
    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> Result<Tensor> {
        let (b, s, _) = x.dims3()?;
        let (h, kv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let heads = |t: Tensor, n: usize| t.reshape((b, s, n, hd))?.transpose(1, 2)?.contiguous();
        let q = apply_rope(&heads(self.q_proj.forward(x)?, h)?, cos, sin)?;
        let mut k = apply_rope(&heads(self.k_proj.forward(x)?, kv)?, cos, sin)?;
        let mut v = heads(self.v_proj.forward(x)?, kv)?;
        if let Some(cache) = cache {
            if let Some((past_k, past_v)) = cache.as_ref() {
                k = Tensor::cat(&[past_k, &k], 2)?;
                v = Tensor::cat(&[past_v, &v], 2)?;
            }
            *cache = Some((k.clone(), v.clone()));
        }
        let t = k.dim(2)?;

        // GQA without copying k/v: query head i uses kv head i / (h/kv), so the query heads of
        // one kv head are consecutive and fold into its sequence axis.
        let group = h / kv;
        let q = q.reshape((b, kv, group * s, hd))?;
        let scores = (q.matmul(&k.t()?)? * (hd as f64).powf(-0.5))?.reshape((b, h, s, t))?;
        let mut scores = scores.to_dtype(DType::F32)?;
        if let Some(mask) = mask {
            scores = scores.broadcast_add(mask)?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(v.dtype())?;
        let out = probs
            .reshape((b, kv, group * s, t))?
            .matmul(&v)?
            .reshape((b, h, s, hd))?;
        let out = out.transpose(1, 2)?.reshape((b, s, h * hd))?;
        self.o_proj.forward(&out)
    }
}

#[derive(Debug, Clone)]
struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: GatedMlp,
    span: tracing::Span,
}

impl DecoderLayer {
    fn new(cfg: &TextConfig, index: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            input_layernorm: RmsNorm::new(cfg.hidden_size, cfg.rms_norm_eps, vb.pp("input_layernorm"))?,
            self_attn: Attention::new(cfg, vb.pp("self_attn"))?,
            post_attention_layernorm: RmsNorm::new(
                cfg.hidden_size,
                cfg.rms_norm_eps,
                vb.pp("post_attention_layernorm"),
            )?,
            mlp: GatedMlp::new(cfg.hidden_size, cfg.intermediate_size, false, vb.pp("mlp"))?,
            span: tracing::trace_span!("text-encoder-layer", index),
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> Result<Tensor> {
        let _enter = self.span.enter();
        let x = (x + self
            .self_attn
            .forward(&self.input_layernorm.forward(x)?, cos, sin, mask, cache)?)?;
        &x + self.mlp.forward(&self.post_attention_layernorm.forward(&x)?)?
    }
}

/// The language model of Qwen2.5-VL, up to and including the final norm.
///
/// The 7B weighs ≈ 15 GB in bf16: build it for the encoding phase ([`Self::load`]) and drop it
/// afterwards, so its memory is free for the DiT.
/// Cloning shares the weights (the captioner and the prompt encoder use one model).
#[derive(Debug, Clone)]
pub struct Qwen25VLTextModel {
    /// On the run's device, or in host memory when the layers are streamed (1.1 GB for the 7B;
    /// a lookup of a few hundred rows costs nothing on the CPU).
    embed_tokens: Embedding,
    /// The run's device (the embeddings' rows are moved there).
    device: Device,
    layers: std::sync::Arc<Blocks<DecoderLayer>>,
    norm: RmsNorm,
    rope: MultimodalRope,
    tie_word_embeddings: bool,
    span: tracing::Span,
}

/// Output projection to vocabulary logits (for generation); see [`Qwen25VLTextModel::lm_head`].
#[derive(Debug, Clone)]
pub struct LmHead(Linear);

impl LmHead {
    /// Logits `[…, vocab_size]` of hidden states `[…, hidden_size]`.
    pub fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        self.0.forward(hidden)
    }
}

impl Qwen25VLTextModel {
    /// Builds the model from the `text_encoder` component's weights (`vb` at the component root);
    /// only the language-model tensors are read, not the vision tower's or `lm_head`.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        check_supported(&cfg.text_config)?;
        let vb_lm = language_model_vb(&vb)?;
        let build = Self::layer_builder(&cfg.text_config);
        let layers = (0..cfg.text_config.num_hidden_layers)
            .map(|i| build(i, vb_lm.pp("layers").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let text = &cfg.text_config;
        let embed_tokens = candle_nn::embedding(text.vocab_size, text.hidden_size, vb_lm.pp("embed_tokens"))?;
        Self::with_layers(cfg, vb, embed_tokens, Blocks::OnDevice(layers))
    }

    /// Like [`Self::new`], but the decoder layers stay in host memory and stream to the GPU one
    /// layer ahead of use ([`crate::gpu::offload`]); `vb` gives the final norm on the run's
    /// device, `layers_source` (the component root, typically memory-mapped on the CPU) the
    /// layers and the embedding table, which stays there.
    pub fn new_offloaded(
        cfg: &Config,
        vb: VarBuilder,
        layers_source: &VarBuilder,
        options: OffloadOptions,
    ) -> Result<Self> {
        check_supported(&cfg.text_config)?;
        let source = language_model_vb(layers_source)?;
        let layers = StreamedBlocks::new(
            &source.pp("layers"),
            cfg.text_config.num_hidden_layers,
            Self::layer_builder(&cfg.text_config),
            vb.device(),
            options,
        )?;
        let text = &cfg.text_config;
        let embed_tokens = candle_nn::embedding(text.vocab_size, text.hidden_size, source.pp("embed_tokens"))?;
        Self::with_layers(cfg, vb, embed_tokens, Blocks::Streamed(layers))
    }

    fn layer_builder(text: &TextConfig) -> BuildBlock<DecoderLayer> {
        let text = text.clone();
        Box::new(move |i, vb| DecoderLayer::new(&text, i, vb))
    }

    fn with_layers(
        cfg: &Config,
        vb: VarBuilder,
        embed_tokens: Embedding,
        layers: Blocks<DecoderLayer>,
    ) -> Result<Self> {
        let text = &cfg.text_config;
        let vb_lm = language_model_vb(&vb)?;
        Ok(Self {
            embed_tokens,
            device: vb.device().clone(),
            layers: std::sync::Arc::new(layers),
            norm: RmsNorm::new(text.hidden_size, text.rms_norm_eps, vb_lm.pp("norm"))?,
            rope: MultimodalRope::new(text, vb.device())?,
            tie_word_embeddings: cfg.tie_word_embeddings,
            span: tracing::debug_span!("text-encoder"),
        })
    }

    /// What the offloaded layer stack holds and has copied (`None` when all are on the device).
    pub fn offload_stats(&self) -> Option<OffloadStats> {
        self.layers.offload_stats()
    }

    /// Reads `text_encoder/config.json` and builds the model in `dtype` on `device`.
    pub fn load(model: &ModelDir, dtype: DType, device: &Device) -> crate::Result<(Config, Self)> {
        let cfg: Config = model.read_json("text_encoder", "config.json")?;
        let vb = model.var_builder("text_encoder", dtype, device)?;
        let text_model = Self::new(&cfg, vb)?;
        Ok((cfg, text_model))
    }

    /// The output projection: `lm_head.weight`, or the embedding table when the config ties them
    /// or the checkpoint has no `lm_head` (`vb` at the component root, as for [`Self::new`]).
    pub fn lm_head(&self, vb: VarBuilder) -> Result<LmHead> {
        let weight = if self.tie_word_embeddings || !vb.contains_tensor("lm_head.weight") {
            self.embed_tokens.embeddings().to_device(&self.device)?
        } else {
            let (vocab, hidden) = self.embed_tokens.embeddings().dims2()?;
            vb.get((vocab, hidden), "lm_head.weight")?
        };
        Ok(LmHead(Linear::new(weight, None)))
    }

    pub fn hidden_size(&self) -> usize {
        self.embed_tokens.hidden_size()
    }

    pub fn dtype(&self) -> DType {
        self.embed_tokens.embeddings().dtype()
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Embeddings `[B, S, D]` of token ids `[B, S]` (the vision tower later overwrites the
    /// `<|image_pad|>` rows before [`Self::forward`]).
    pub fn embed_tokens(&self, ids: &Tensor) -> Result<Tensor> {
        let table = self.embed_tokens.embeddings().device();
        if table.same_device(&self.device) {
            return self.embed_tokens.forward(ids);
        }
        self.embed_tokens
            .forward(&ids.to_device(table)?)?
            .to_device(&self.device)
    }

    /// The last hidden state `[B, S, D]` after the final norm.
    ///
    /// - `input`: token ids `[B, S]` (integer dtype) or input embeddings `[B, S, D]` (float);
    /// - `position_ids`: `[3, B, S]` (t, h, w) M-RoPE positions, or `[B, S]` for text-only 1-D
    ///   positions (see [`text_position_ids`]);
    /// - `attention_mask`: `[B, S]`, nonzero = real token; keys at zeros are ignored. Attention
    ///   is causal either way.
    pub fn forward(&self, input: &Tensor, position_ids: &Tensor, attention_mask: Option<&Tensor>) -> Result<Tensor> {
        let _enter = self.span.enter();
        let embeds = self.input_embeds(input)?;
        let (b, s, d) = embeds.dims3()?;
        if d != self.hidden_size() {
            bail!(
                "text encoder embeddings have width {d}, the model {}",
                self.hidden_size()
            )
        }
        let position_ids = match position_ids.dims() {
            [3, pb, ps] if (*pb, *ps) == (b, s) => position_ids.clone(),
            [pb, ps] if (*pb, *ps) == (b, s) => position_ids.unsqueeze(0)?.repeat((3, 1, 1))?,
            dims => bail!("position_ids must be [3, {b}, {s}] (or [{b}, {s}]), got {dims:?}"),
        };
        if let Some(mask) = attention_mask {
            if mask.dims() != [b, s] {
                bail!("attention_mask must be [{b}, {s}], got {:?}", mask.dims())
            }
        }
        let (cos, sin) = self.rope.cos_sin(&position_ids)?;
        let mask = attention_bias(b, s, attention_mask, embeds.device())?;

        let mut hidden = embeds;
        self.layers.for_each(|layer| {
            hidden = layer.forward(&hidden, &cos, &sin, mask.as_ref(), None)?;
            Ok(())
        })?;
        self.norm.forward(&hidden)
    }

    /// [`Self::forward`] for incremental decoding of one unpadded sequence (B = 1): attends to
    /// the keys and values in `cache` as well as to `input`'s, and appends `input`'s to it.
    /// `position_ids` `[3, 1, S]` (or `[1, S]`) are the new tokens' positions.
    pub fn forward_cached(&self, input: &Tensor, position_ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let _enter = self.span.enter();
        let embeds = self.input_embeds(input)?;
        let (b, s, _) = embeds.dims3()?;
        if b != 1 {
            bail!("forward_cached decodes one sequence at a time, got a batch of {b}")
        }
        let position_ids = match position_ids.dims() {
            [3, 1, ps] if *ps == s => position_ids.clone(),
            [1, ps] if *ps == s => position_ids.unsqueeze(0)?.repeat((3, 1, 1))?,
            dims => bail!("position_ids must be [3, 1, {s}] (or [1, {s}]), got {dims:?}"),
        };
        if cache.layers.is_empty() {
            cache.layers = vec![None; self.layers.len()];
        }
        if cache.layers.len() != self.layers.len() {
            bail!(
                "KV cache has {} layers, the model {}",
                cache.layers.len(),
                self.layers.len()
            )
        }
        let past = cache.len;
        let (cos, sin) = self.rope.cos_sin(&position_ids)?;
        let mask = causal_bias_after(s, past, embeds.device())?;
        let mut hidden = embeds;
        let mut slots = cache.layers.iter_mut();
        self.layers.for_each(|layer| {
            let slot = slots
                .next()
                .ok_or_else(|| candle_core::Error::Msg("KV cache shorter than the model".into()))?;
            hidden = layer.forward(&hidden, &cos, &sin, mask.as_ref(), Some(slot))?;
            Ok(())
        })?;
        cache.len = past + s;
        self.norm.forward(&hidden)
    }

    /// `[B, S, D]` embeddings from ids `[B, S]` (integer dtype) or embeddings (float).
    fn input_embeds(&self, input: &Tensor) -> Result<Tensor> {
        match (input.dtype(), input.rank()) {
            (DType::U8 | DType::U32 | DType::I64, 2) => self.embed_tokens(input),
            (dtype, 3) if dtype.is_float() => input.to_dtype(self.dtype()),
            (dtype, _) => bail!(
                "text encoder input must be ids [B, S] or embeddings [B, S, {}], got {dtype:?} {:?}",
                self.hidden_size(),
                input.shape()
            ),
        }
    }
}

/// Keys and values of the tokens a sequence has seen so far, per decoder layer: what
/// [`Qwen25VLTextModel::forward_cached`] attends to.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

impl KvCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Tokens cached.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Additive f32 bias `[1, 1, S, P+S]` letting new token i (at absolute index P+i) see keys
/// 0..=P+i; `None` for a single new token, which may see everything.
fn causal_bias_after(s: usize, past: usize, device: &Device) -> Result<Option<Tensor>> {
    if s == 1 {
        return Ok(None);
    }
    let t = past + s;
    let keys = Tensor::arange(0u32, t as u32, device)?.reshape((1, t))?;
    let queries = Tensor::arange(past as u32, t as u32, device)?.reshape((s, 1))?;
    let allowed = keys.broadcast_le(&queries)?;
    let zeros = Tensor::zeros((s, t), DType::F32, device)?;
    let blocked = Tensor::full(f32::MIN, (s, t), device)?;
    Ok(Some(allowed.where_cond(&zeros, &blocked)?.reshape((1, 1, s, t))?))
}

/// 1-D positions `0..S` for every sample, as M-RoPE ids `[3, B, S]` (u32): what the reference
/// uses for text-only prompts.
pub fn text_position_ids(batch: usize, seq_len: usize, device: &Device) -> Result<Tensor> {
    Tensor::arange(0u32, seq_len as u32, device)?
        .reshape((1, 1, seq_len))?
        .repeat((3, batch, 1))
}

/// Additive f32 attention bias `[B or 1, 1, S, S]`: 0 where query i may attend key j (j ≤ i and
/// key j is a real token), a large negative number elsewhere. Finite rather than −∞, so rows
/// with nothing to attend to (left padding) stay finite instead of turning into NaN.
fn attention_bias(b: usize, s: usize, attention_mask: Option<&Tensor>, device: &Device) -> Result<Option<Tensor>> {
    if s == 1 && attention_mask.is_none() {
        return Ok(None);
    }
    let idx = Tensor::arange(0u32, s as u32, device)?;
    let causal = idx.reshape((1, s))?.broadcast_le(&idx.reshape((s, 1))?)?; // [S, S] u8, key ≤ query
    let allowed = match attention_mask {
        None => causal.reshape((1, 1, s, s))?,
        Some(mask) => {
            let keys = mask.ne(0u32)?.reshape((b, 1, 1, s))?;
            keys.broadcast_mul(&causal.reshape((1, 1, s, s))?)?
        }
    };
    let zeros = Tensor::zeros(allowed.shape(), DType::F32, device)?;
    let blocked = Tensor::full(f32::MIN, allowed.shape(), device)?;
    Ok(Some(allowed.where_cond(&zeros, &blocked)?))
}

fn check_supported(cfg: &TextConfig) -> Result<()> {
    if cfg.hidden_act != "silu" {
        bail!(
            "text encoder hidden_act {:?} is not supported (only silu)",
            cfg.hidden_act
        )
    }
    if cfg.use_sliding_window {
        bail!("text encoder use_sliding_window = true is not supported")
    }
    let rope_type = cfg.rope_type();
    if rope_type != "default" {
        bail!("text encoder rope_type {rope_type:?} is not supported (only default / mrope)")
    }
    let (h, kv) = (cfg.num_attention_heads, cfg.num_key_value_heads());
    if h == 0 || kv == 0 || !h.is_multiple_of(kv) || !cfg.hidden_size.is_multiple_of(h) {
        bail!(
            "text encoder heads don't fit: hidden_size {}, num_attention_heads {h}, num_key_value_heads {kv}",
            cfg.hidden_size
        )
    }
    Ok(())
}

/// The language model's root in this checkpoint, whichever spelling it uses.
fn language_model_vb<'a>(vb: &VarBuilder<'a>) -> Result<VarBuilder<'a>> {
    for prefix in LANGUAGE_MODEL_PREFIXES {
        if vb.contains_tensor(&format!("{prefix}.embed_tokens.weight")) {
            return Ok(vb.pp(prefix));
        }
    }
    bail!(
        "text encoder weights not found: expected {}",
        LANGUAGE_MODEL_PREFIXES
            .map(|p| format!("{p}.embed_tokens.weight"))
            .join(" or ")
    )
}
