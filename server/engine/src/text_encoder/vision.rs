//! The Qwen2.5-VL vision tower (`Qwen2_5_VisionTransformerPretrainedModel`, tensors `visual.*`):
//! processor patches → one embedding per 2×2 block of patches, in the language model's width.
//!
//! - **Patch embedding**: a Conv3d with kernel = stride = (2, 14, 14) and no bias, i.e. a linear
//!   map of each 1176-wide `pixel_values` row.
//! - **Windows**: tokens are regrouped (in units of merged 2×2 blocks) into windows of
//!   `window_size / patch / merge` = 4×4 blocks, raster order of windows, the right/bottom windows
//!   cut short. Blocks attend within their window, except `fullatt_block_indexes` which attend over
//!   the whole image. The merger output is put back in raster order at the end.
//! - **2-D RoPE** (rotate-half, θ = 10000): `head_dim / 4` frequencies; per patch the angles are
//!   `[row·f, col·f]` repeated twice across the head.
//! - **Blocks**: `x += proj(attn(norm1 x))`, `x += mlp(norm2 x)`; RMSNorm eps 1e-6, qkv one linear
//!   with bias, SiLU-gated MLP with biases.
//! - **Merger**: RMSNorm each patch, concatenate the 4 patches of a block, Linear → GELU (erf) →
//!   Linear to `out_hidden_size`.
//!
//! Norm statistics, softmax and RoPE run in f32 whatever the weights' dtype.

use candle_core::{bail, DType, Device, IndexOp, Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use super::config::{Config, VisionConfig};
use super::layers::{apply_rope, GatedMlp, RmsNorm};
use super::processor::{ImageProcessorConfig, ProcessedImage};
use crate::weights::ModelDir;

/// Prefixes under which checkpoints keep the vision tower, saved layout first.
const VISUAL_PREFIXES: [&str; 2] = ["visual", "model.visual"];

/// Which rows attend to each other: consecutive segments of the (window-ordered) sequence,
/// batched by padding every segment to the longest one.
#[derive(Debug, Clone)]
struct Segments {
    /// `[S·L]`: source row of each padded slot (padding slots repeat row 0).
    gather: Tensor,
    /// `[N]`: padded slot of each row, to bring the outputs back.
    scatter: Tensor,
    /// Additive f32 key mask `[S, 1, 1, L]`, or `None` when nothing is padded.
    key_bias: Option<Tensor>,
    count: usize,
    len: usize,
}

impl Segments {
    /// `bounds` are cumulative lengths `[0, …, N]` (cu_seqlens).
    fn new(bounds: &[usize], device: &Device) -> Result<Self> {
        let lens: Vec<usize> = bounds.windows(2).map(|w| w[1] - w[0]).filter(|&l| l > 0).collect();
        let starts: Vec<usize> = bounds.windows(2).filter(|w| w[1] > w[0]).map(|w| w[0]).collect();
        let (count, len) = (lens.len(), lens.iter().copied().max().unwrap_or(0));
        let mut gather = vec![0u32; count * len];
        let mut scatter = Vec::with_capacity(bounds.last().copied().unwrap_or(0));
        let mut bias = vec![0f32; count * len];
        for (s, (&start, &l)) in starts.iter().zip(&lens).enumerate() {
            for j in 0..len {
                if j < l {
                    gather[s * len + j] = (start + j) as u32;
                    scatter.push((s * len + j) as u32);
                } else {
                    bias[s * len + j] = f32::MIN;
                }
            }
        }
        let padded = lens.iter().any(|&l| l != len);
        Ok(Self {
            gather: Tensor::new(gather, device)?,
            scatter: Tensor::new(scatter, device)?,
            key_bias: if padded {
                Some(Tensor::from_vec(bias, (count, 1, 1, len), device)?)
            } else {
                None
            },
            count,
            len,
        })
    }
}

#[derive(Debug, Clone)]
struct VisionAttention {
    qkv: Linear,
    proj: Linear,
    num_heads: usize,
    head_dim: usize,
}

impl VisionAttention {
    fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let dim = cfg.hidden_size;
        Ok(Self {
            qkv: candle_nn::linear(dim, 3 * dim, vb.pp("qkv"))?,
            proj: candle_nn::linear(dim, dim, vb.pp("proj"))?,
            num_heads: cfg.num_heads,
            head_dim: dim / cfg.num_heads,
        })
    }

    /// `x` `[N, D]` (window order), `cos`/`sin` `[N, 1, head_dim]` f32.
    fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, segments: &Segments) -> Result<Tensor> {
        let (n, dim) = x.dims2()?;
        let (h, hd) = (self.num_heads, self.head_dim);
        let qkv = self.qkv.forward(x)?.reshape((n, 3, h, hd))?;
        let q = apply_rope(&qkv.i((.., 0))?, cos, sin)?;
        let k = apply_rope(&qkv.i((.., 1))?, cos, sin)?;
        let v = qkv.i((.., 2))?.contiguous()?;

        // [N, H, hd] → [S, H, L, hd]: each segment a batch item, padded to the longest.
        let (s, l) = (segments.count, segments.len);
        let batch = |t: &Tensor| -> Result<Tensor> {
            t.index_select(&segments.gather, 0)?
                .reshape((s, l, h, hd))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (q, k, v) = (batch(&q)?, batch(&k)?, batch(&v)?);
        let scores = (q.matmul(&k.t()?)? * (hd as f64).powf(-0.5))?;
        let mut scores = scores.to_dtype(DType::F32)?;
        if let Some(bias) = &segments.key_bias {
            scores = scores.broadcast_add(bias)?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(v.dtype())?;
        let out = probs.matmul(&v)?.transpose(1, 2)?.reshape((s * l, dim))?;
        let out = out.index_select(&segments.scatter, 0)?;
        self.proj.forward(&out)
    }
}

#[derive(Debug, Clone)]
struct VisionBlock {
    norm1: RmsNorm,
    attn: VisionAttention,
    norm2: RmsNorm,
    mlp: GatedMlp,
    span: tracing::Span,
}

impl VisionBlock {
    fn new(cfg: &VisionConfig, index: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm1: RmsNorm::new(cfg.hidden_size, NORM_EPS, vb.pp("norm1"))?,
            attn: VisionAttention::new(cfg, vb.pp("attn"))?,
            norm2: RmsNorm::new(cfg.hidden_size, NORM_EPS, vb.pp("norm2"))?,
            mlp: GatedMlp::new(cfg.hidden_size, cfg.intermediate_size, true, vb.pp("mlp"))?,
            span: tracing::trace_span!("vision-block", index),
        })
    }

    fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, segments: &Segments) -> Result<Tensor> {
        let _enter = self.span.enter();
        let x = (x + self.attn.forward(&self.norm1.forward(x)?, cos, sin, segments)?)?;
        &x + self.mlp.forward(&self.norm2.forward(&x)?)?
    }
}

/// `ln_q` then the 4 patches of each merged block concatenated → Linear → GELU → Linear.
#[derive(Debug, Clone)]
struct PatchMerger {
    ln_q: RmsNorm,
    fc1: Linear,
    fc2: Linear,
    merged_dim: usize,
}

impl PatchMerger {
    fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let merged_dim = cfg.hidden_size * cfg.spatial_merge_size * cfg.spatial_merge_size;
        Ok(Self {
            ln_q: RmsNorm::new(cfg.hidden_size, NORM_EPS, vb.pp("ln_q"))?,
            // `mlp` is nn.Sequential(Linear, GELU, Linear): indices 0 and 2.
            fc1: candle_nn::linear(merged_dim, merged_dim, vb.pp("mlp").pp(0))?,
            fc2: candle_nn::linear(merged_dim, cfg.out_hidden_size, vb.pp("mlp").pp(2))?,
            merged_dim,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.ln_q.forward(x)?.reshape(((), self.merged_dim))?;
        self.fc2.forward(&self.fc1.forward(&x)?.gelu_erf()?)
    }
}

/// The vision tower's layer norms all use this epsilon (hard-coded in transformers).
const NORM_EPS: f64 = 1e-6;

/// Intermediate results of one [`VisionTower::forward_traced`] call (tests compare them with the
/// reference's hooks).
#[derive(Debug, Clone)]
pub struct VisionTrace {
    /// `[N, hidden]`, processor row order.
    pub patch_embed: Tensor,
    /// `[N, head_dim]` f32, processor row order.
    pub rotary_cos: Tensor,
    pub rotary_sin: Tensor,
    /// Each block's output `[N, hidden]`, window order.
    pub blocks: Vec<Tensor>,
    /// `[N/4, out_hidden]`, window order.
    pub merger_windowed: Tensor,
    /// `[N/4, out_hidden]`, raster order of merged tokens: the final embeddings.
    pub merged: Tensor,
}

/// The vision tower plus the image processor settings of its checkpoint.
#[derive(Debug, Clone)]
pub struct VisionTower {
    patch_embed: Linear,
    blocks: Vec<VisionBlock>,
    merger: PatchMerger,
    cfg: VisionConfig,
    processor: ImageProcessorConfig,
    /// `[head_dim / 4]` f32.
    inv_freq: Tensor,
    span: tracing::Span,
}

impl VisionTower {
    /// Builds the tower from the `text_encoder` component's weights (`vb` at the component root:
    /// tensors `visual.*` or `model.visual.*`), with the default image processor.
    pub fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        check_supported(cfg)?;
        let vb = visual_vb(&vb)?;
        let patch_dim = cfg.in_channels * cfg.temporal_patch_size * cfg.patch_size * cfg.patch_size;
        // The Conv3d kernel [hidden, C, T, P, P] flattened matches a pixel_values row's layout.
        let conv = vb.pp("patch_embed").pp("proj").get(
            (
                cfg.hidden_size,
                cfg.in_channels,
                cfg.temporal_patch_size,
                cfg.patch_size,
                cfg.patch_size,
            ),
            "weight",
        )?;
        let patch_embed = Linear::new(conv.reshape((cfg.hidden_size, patch_dim))?, None);
        let blocks = (0..cfg.depth)
            .map(|i| VisionBlock::new(cfg, i, vb.pp("blocks").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let merger = PatchMerger::new(cfg, vb.pp("merger"))?;
        // 1 / θ^(2i / (head_dim/2)), i < head_dim/4, in f32 like torch.
        let spatial_dim = cfg.hidden_size / cfg.num_heads / 2;
        let theta = cfg.rope_theta() as f32;
        let inv_freq: Vec<f32> = (0..spatial_dim)
            .step_by(2)
            .map(|i| 1.0 / theta.powf(i as f32 / spatial_dim as f32))
            .collect();
        Ok(Self {
            patch_embed,
            blocks,
            merger,
            cfg: cfg.clone(),
            processor: ImageProcessorConfig::default(),
            inv_freq: Tensor::new(inv_freq, vb.device())?,
            span: tracing::debug_span!("vision-tower"),
        })
    }

    /// Reads `text_encoder/config.json` and `processor/preprocessor_config.json` and builds the
    /// tower in `dtype` on `device`.
    pub fn load(model: &ModelDir, dtype: DType, device: &Device) -> crate::Result<Self> {
        let cfg: Config = model.read_json("text_encoder", "config.json")?;
        let vb = model.var_builder("text_encoder", dtype, device)?;
        let processor = ImageProcessorConfig::load(model)?;
        Ok(Self::new(&cfg.vision_config, vb)?.with_processor(processor)?)
    }

    /// Uses another image processor configuration (its patch and merge sizes must match).
    pub fn with_processor(mut self, processor: ImageProcessorConfig) -> Result<Self> {
        if processor.patch_size != self.cfg.patch_size
            || processor.merge_size != self.cfg.spatial_merge_size
            || processor.temporal_patch_size != self.cfg.temporal_patch_size
        {
            bail!(
                "image processor patch/merge/temporal sizes {}/{}/{} don't match the vision tower's {}/{}/{}",
                processor.patch_size,
                processor.merge_size,
                processor.temporal_patch_size,
                self.cfg.patch_size,
                self.cfg.spatial_merge_size,
                self.cfg.temporal_patch_size
            )
        }
        self.processor = processor;
        Ok(self)
    }

    pub fn config(&self) -> &VisionConfig {
        &self.cfg
    }

    pub fn processor(&self) -> &ImageProcessorConfig {
        &self.processor
    }

    pub fn dtype(&self) -> DType {
        self.patch_embed.weight().dtype()
    }

    pub fn device(&self) -> &Device {
        self.patch_embed.weight().device()
    }

    /// Merged tokens per image for a grid: `t·h·w / merge²`.
    pub fn num_tokens(&self, grid_thw: (usize, usize, usize)) -> usize {
        let m = self.cfg.spatial_merge_size;
        grid_thw.0 * grid_thw.1 * grid_thw.2 / (m * m)
    }

    /// Embeddings `[Σ tokens, out_hidden]` of preprocessed images, in order, each in raster order
    /// of its merged tokens (what replaces its `<|image_pad|>` run).
    pub fn encode(&self, images: &[ProcessedImage]) -> Result<Tensor> {
        let embeds = images
            .iter()
            .map(|img| self.forward(&img.pixel_values, img.grid_thw))
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&embeds, 0)
    }

    /// Embeddings `[t·h·w/4, out_hidden]` of one image's `pixel_values` `[t·h·w, patch_dim]`.
    pub fn forward(&self, pixel_values: &Tensor, grid_thw: (usize, usize, usize)) -> Result<Tensor> {
        Ok(self.run(pixel_values, grid_thw, false)?.merged)
    }

    /// [`Self::forward`], keeping every intermediate.
    pub fn forward_traced(&self, pixel_values: &Tensor, grid_thw: (usize, usize, usize)) -> Result<VisionTrace> {
        self.run(pixel_values, grid_thw, true)
    }

    fn run(&self, pixel_values: &Tensor, grid_thw: (usize, usize, usize), trace: bool) -> Result<VisionTrace> {
        let _enter = self.span.enter();
        let (t, gh, gw) = grid_thw;
        let m = self.cfg.spatial_merge_size;
        let n = t * gh * gw;
        let patch_dim = self.patch_embed.weight().dim(1)?;
        if gh % m != 0 || gw % m != 0 || n == 0 {
            bail!("vision grid {grid_thw:?} must be non-empty with h and w multiples of {m}")
        }
        if pixel_values.dims() != [n, patch_dim] {
            bail!(
                "pixel_values must be [{n}, {patch_dim}] for grid {grid_thw:?}, got {:?}",
                pixel_values.dims()
            )
        }
        let device = pixel_values.device();
        let unit = m * m;

        let patch_embed = self.patch_embed.forward(&pixel_values.to_dtype(self.dtype())?)?;
        let (cos, sin) = self.rotary(grid_thw, device)?;

        // Window order: permute merged tokens (groups of `unit` consecutive rows).
        let layout = window_layout(grid_thw, m, self.merger_window())?;
        let row_order: Vec<u32> = layout
            .window_index
            .iter()
            .flat_map(|&b| (0..unit).map(move |k| (b * unit + k) as u32))
            .collect();
        let row_order = Tensor::new(row_order, device)?;
        let to_window = |x: &Tensor| x.index_select(&row_order, 0);
        let (cos_w, sin_w) = (to_window(&cos)?.unsqueeze(1)?, to_window(&sin)?.unsqueeze(1)?);
        let windows = Segments::new(&layout.cu_window_seqlens, device)?;
        let frames: Vec<usize> = (0..=t).map(|f| f * gh * gw).collect();
        let full = Segments::new(&frames, device)?;

        let mut hidden = to_window(&patch_embed)?;
        let mut blocks = Vec::new();
        for (i, block) in self.blocks.iter().enumerate() {
            let segments = if self.cfg.fullatt_block_indexes.contains(&i) {
                &full
            } else {
                &windows
            };
            hidden = block.forward(&hidden, &cos_w, &sin_w, segments)?;
            if trace {
                blocks.push(hidden.clone());
            }
        }
        let merger_windowed = self.merger.forward(&hidden)?;
        let mut inverse = vec![0u32; layout.window_index.len()];
        for (pos, &b) in layout.window_index.iter().enumerate() {
            inverse[b] = pos as u32;
        }
        let merged = merger_windowed.index_select(&Tensor::new(inverse, device)?, 0)?;
        Ok(VisionTrace {
            patch_embed,
            rotary_cos: cos,
            rotary_sin: sin,
            blocks,
            merger_windowed,
            merged,
        })
    }

    /// Merged blocks per window side (112 / 14 / 2 = 4).
    fn merger_window(&self) -> usize {
        self.cfg.window_size / self.cfg.spatial_merge_size / self.cfg.patch_size
    }

    /// cos/sin `[N, head_dim]` f32 of each patch's (row, col), in processor row order.
    fn rotary(&self, grid_thw: (usize, usize, usize), device: &Device) -> Result<(Tensor, Tensor)> {
        let (rows, cols) = patch_positions(grid_thw, self.cfg.spatial_merge_size);
        let n = rows.len();
        let rows = Tensor::from_vec(rows, (n, 1), device)?.to_dtype(DType::F32)?;
        let cols = Tensor::from_vec(cols, (n, 1), device)?.to_dtype(DType::F32)?;
        let f = self.inv_freq.to_device(device)?.unsqueeze(0)?;
        let angles = Tensor::cat(&[rows.broadcast_mul(&f)?, cols.broadcast_mul(&f)?], 1)?;
        let angles = Tensor::cat(&[&angles, &angles], 1)?;
        Ok((angles.cos()?, angles.sin()?))
    }
}

/// The window regrouping of one image: `window_index[k]` is the raster index of the merged token
/// at window-order position k; `cu_window_seqlens` are the cumulative window lengths in patches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowLayout {
    pub window_index: Vec<usize>,
    pub cu_window_seqlens: Vec<usize>,
}

/// transformers' `get_vision_window_index` for one image: windows of `window × window` merged
/// tokens in raster order (the last row/column of windows cut short), tokens in raster order
/// within each window; frames one after the other.
pub fn window_layout(grid_thw: (usize, usize, usize), merge: usize, window: usize) -> Result<WindowLayout> {
    let (t, gh, gw) = grid_thw;
    if merge == 0 || window == 0 || gh % merge != 0 || gw % merge != 0 {
        bail!("cannot cut grid {grid_thw:?} into {window}×{window} windows of {merge}×{merge} blocks")
    }
    let (lh, lw) = (gh / merge, gw / merge);
    let unit = merge * merge;
    let mut window_index = Vec::with_capacity(t * lh * lw);
    let mut cu = vec![0];
    for frame in 0..t {
        for wr in (0..lh).step_by(window) {
            for wc in (0..lw).step_by(window) {
                for r in wr..(wr + window).min(lh) {
                    for c in wc..(wc + window).min(lw) {
                        window_index.push(frame * lh * lw + r * lw + c);
                    }
                }
                cu.push(window_index.len() * unit);
            }
        }
    }
    Ok(WindowLayout {
        window_index,
        cu_window_seqlens: cu,
    })
}

/// Each patch's (row, col) in processor row order (2×2 merge blocks), frames repeated.
pub fn patch_positions(grid_thw: (usize, usize, usize), merge: usize) -> (Vec<u32>, Vec<u32>) {
    let (t, gh, gw) = grid_thw;
    let mut rows = Vec::with_capacity(t * gh * gw);
    let mut cols = Vec::with_capacity(t * gh * gw);
    for _ in 0..t {
        for bi in 0..gh / merge {
            for bj in 0..gw / merge {
                for di in 0..merge {
                    for dj in 0..merge {
                        rows.push((bi * merge + di) as u32);
                        cols.push((bj * merge + dj) as u32);
                    }
                }
            }
        }
    }
    (rows, cols)
}

fn check_supported(cfg: &VisionConfig) -> Result<()> {
    if cfg.hidden_act != "silu" {
        bail!(
            "vision tower hidden_act {:?} is not supported (only silu)",
            cfg.hidden_act
        )
    }
    if cfg.num_heads == 0
        || !cfg.hidden_size.is_multiple_of(cfg.num_heads)
        || !(cfg.hidden_size / cfg.num_heads).is_multiple_of(4)
    {
        bail!(
            "vision tower heads don't fit: hidden_size {}, num_heads {} (head_dim must be a multiple of 4)",
            cfg.hidden_size,
            cfg.num_heads
        )
    }
    if cfg.spatial_merge_size == 0 || cfg.patch_size == 0 || cfg.window_size < cfg.spatial_merge_size * cfg.patch_size {
        bail!(
            "vision tower window_size {} must cover at least one merged block ({} px)",
            cfg.window_size,
            cfg.spatial_merge_size * cfg.patch_size
        )
    }
    if let Some(&i) = cfg.fullatt_block_indexes.iter().find(|&&i| i >= cfg.depth) {
        tracing::warn!(
            index = i,
            depth = cfg.depth,
            "fullatt_block_indexes names a block past the depth"
        );
    }
    Ok(())
}

/// The vision tower's root in this checkpoint, whichever spelling it uses.
fn visual_vb<'a>(vb: &VarBuilder<'a>) -> Result<VarBuilder<'a>> {
    for prefix in VISUAL_PREFIXES {
        if vb.contains_tensor(&format!("{prefix}.patch_embed.proj.weight")) {
            return Ok(vb.pp(prefix));
        }
    }
    bail!(
        "vision tower weights not found: expected {}",
        VISUAL_PREFIXES
            .map(|p| format!("{p}.patch_embed.proj.weight"))
            .join(" or ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_layout_matches_the_reference_for_a_22x34_grid() {
        // Values from transformers' get_vision_window_index (tests/fixtures manifest, vision/edit).
        let l = window_layout((1, 22, 34), 2, 4).unwrap();
        assert_eq!(
            l.cu_window_seqlens,
            vec![0, 64, 128, 192, 256, 272, 336, 400, 464, 528, 544, 592, 640, 688, 736, 748]
        );
        assert_eq!(
            &l.window_index[..20],
            &[0, 1, 2, 3, 17, 18, 19, 20, 34, 35, 36, 37, 51, 52, 53, 54, 4, 5, 6, 7]
        );
        assert_eq!(&l.window_index[64..68], &[16, 33, 50, 67]);
        let mut sorted = l.window_index.clone();
        sorted.sort();
        assert_eq!(sorted, (0..187).collect::<Vec<_>>());
    }

    #[test]
    fn patch_positions_follow_merge_blocks() {
        let (r, c) = patch_positions((1, 2, 4), 2);
        assert_eq!(r, vec![0, 0, 1, 1, 0, 0, 1, 1]);
        assert_eq!(c, vec![0, 1, 0, 1, 2, 3, 2, 3]);
    }

    #[test]
    fn segments_pad_and_restore_rows() {
        let s = Segments::new(&[0, 3, 4, 4, 6], &Device::Cpu).unwrap();
        assert_eq!((s.count, s.len), (3, 3));
        assert_eq!(s.gather.to_vec1::<u32>().unwrap(), vec![0, 1, 2, 3, 0, 0, 4, 5, 0]);
        assert_eq!(s.scatter.to_vec1::<u32>().unwrap(), vec![0, 1, 2, 3, 6, 7]);
        assert!(s.key_bias.is_some());
        let full = Segments::new(&[0, 5], &Device::Cpu).unwrap();
        assert!(full.key_bias.is_none());
    }
}
