//! Rotary position embeddings of the Qwen-Image transformer (diffusers `QwenEmbedRope` and
//! `QwenEmbedLayer3DRope`).
//!
//! Every token gets a position triple (frame, height, width). The head dimension is split into
//! three axes (`axes_dims_rope`, e.g. 16 + 56 + 56), each rotated by its own position with
//! frequencies `10000^(-2i/d_axis)`. Pairs `(2k, 2k+1)` of a head are rotated together (complex
//! multiplication, the "interleaved" layout), unlike the text encoder's rotate-half.
//!
//! - Image tokens: height and width positions are centred (`scale_rope=True`): row `r` of `h` rows
//!   gets `r − (h − h/2)`, so 40 rows span −20..19. The frame position is the segment's index in
//!   `img_shapes` (base); in the Layer3D variant the last segment (the condition image) gets −1.
//! - Text tokens: `m + j` on all three axes, where `m = max(h/2, w/2)` over the segments (and at
//!   least `segments − 1` for Layer3D), so text never collides with image positions.
//!
//! Tables are cos/sin in f32, `[S, head_dim/2]`, cached per (img_shapes, text length).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Result, Tensor};

pub use crate::rope_tables::RopeTables;

/// How frame positions are assigned to the segments of `img_shapes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RopeVariant {
    /// `QwenEmbedRope`: frame position = segment index (target 0, condition images 1, 2, …).
    Base,
    /// `QwenEmbedLayer3DRope`: generated frames 0..L, the last (condition) segment −1.
    Layer3d,
}

type CacheKey = (Vec<(usize, usize, usize)>, usize);

/// Builds (and caches) RoPE tables for a transformer.
#[derive(Debug)]
pub struct Rope {
    variant: RopeVariant,
    /// Per-axis inverse frequencies, f32 as the reference computes them.
    axis_freqs: [Vec<f32>; 3],
    device: Device,
    cache: Mutex<HashMap<CacheKey, Arc<RopeTables>>>,
}

/// Distinct shapes are few in practice (one per resolution/layer count); the bound only stops a
/// long-running server from growing without limit.
const CACHE_CAPACITY: usize = 16;
const THETA: f32 = 10000.0;

impl Rope {
    pub fn new(axes_dims: [usize; 3], variant: RopeVariant, device: &Device) -> Self {
        // 1 / theta^(2i/d), each step in f32 like `1.0 / torch.pow(theta, arange(0, d, 2).float() / d)`.
        let axis_freqs = axes_dims.map(|d| {
            (0..d / 2)
                .map(|i| 1.0f32 / THETA.powf((2 * i) as f32 / d as f32))
                .collect::<Vec<f32>>()
        });
        Self {
            variant,
            axis_freqs,
            device: device.clone(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub fn variant(&self) -> RopeVariant {
        self.variant
    }

    /// Complex slots per head (`head_dim / 2`).
    pub fn half_dim(&self) -> usize {
        self.axis_freqs.iter().map(Vec::len).sum()
    }

    /// Position triples of the image tokens (segment by segment, raster order within a segment)
    /// and the text offset `m`.
    pub fn image_positions(&self, img_shapes: &[(usize, usize, usize)]) -> Result<(Vec<[i64; 3]>, i64)> {
        if img_shapes.is_empty() {
            candle_core::bail!("rope: img_shapes is empty; it needs one (frames, h, w) per image segment");
        }
        let last = img_shapes.len() - 1;
        let mut positions = Vec::with_capacity(img_shapes.iter().map(|&(f, h, w)| f * h * w).sum());
        let mut txt_offset = 0usize;
        for (idx, &(frames, height, width)) in img_shapes.iter().enumerate() {
            let is_condition = self.variant == RopeVariant::Layer3d && idx == last;
            if is_condition && frames != 1 {
                candle_core::bail!(
                    "rope: the Layer3D condition segment (last of img_shapes) must have 1 frame, got {frames}"
                );
            }
            // Centred rows/columns: h − h/2 negative positions, then h/2 non-negative ones.
            let h0 = (height - height / 2) as i64;
            let w0 = (width - width / 2) as i64;
            for f in 0..frames {
                let frame_pos = if is_condition { -1 } else { (idx + f) as i64 };
                for r in 0..height {
                    for c in 0..width {
                        positions.push([frame_pos, r as i64 - h0, c as i64 - w0]);
                    }
                }
            }
            txt_offset = txt_offset.max(height / 2).max(width / 2);
        }
        if self.variant == RopeVariant::Layer3d {
            txt_offset = txt_offset.max(last);
        }
        Ok((positions, txt_offset as i64))
    }

    /// The tables for `img_shapes` and `txt_len` text tokens, from the cache when seen before.
    pub fn tables(&self, img_shapes: &[(usize, usize, usize)], txt_len: usize) -> Result<Arc<RopeTables>> {
        let key = (img_shapes.to_vec(), txt_len);
        if let Some(t) = self.cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(t.clone());
        }
        let tables = Arc::new(self.compute(img_shapes, txt_len)?);
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_CAPACITY {
            cache.clear();
        }
        cache.insert(key, tables.clone());
        Ok(tables)
    }

    fn compute(&self, img_shapes: &[(usize, usize, usize)], txt_len: usize) -> Result<RopeTables> {
        let (img_positions, m) = self.image_positions(img_shapes)?;
        let txt_positions = (0..txt_len as i64).map(|j| [m + j; 3]);
        let rows: Vec<[i64; 3]> = txt_positions.chain(img_positions).collect();
        let half = self.half_dim();
        let mut cos = Vec::with_capacity(rows.len() * half);
        let mut sin = Vec::with_capacity(rows.len() * half);
        for pos in &rows {
            for (axis, freqs) in self.axis_freqs.iter().enumerate() {
                for &f in freqs {
                    // f32 product, as `torch.outer(index, freqs)` then `torch.polar`.
                    let angle = pos[axis] as f32 * f;
                    cos.push(angle.cos());
                    sin.push(angle.sin());
                }
            }
        }
        let n = rows.len();
        Ok(RopeTables {
            cos: Tensor::from_vec(cos, (n, half), &Device::Cpu)?.to_device(&self.device)?,
            sin: Tensor::from_vec(sin, (n, half), &Device::Cpu)?.to_device(&self.device)?,
            txt_len,
        })
    }
}

/// Rotates `x` `[B, H, S, head_dim]` by the tables `[S, head_dim/2]`, pairs (2k, 2k+1) as complex
/// numbers. Computed in f32 and cast back, as the reference does (`x.float()` … `type_as(x)`).
pub fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    let x32 = x.to_dtype(DType::F32)?.contiguous()?;
    candle_nn::rotary_emb::rope_i(&x32, &cos.contiguous()?, &sin.contiguous()?)?.to_dtype(dtype)
}
