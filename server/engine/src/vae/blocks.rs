//! The VAE's building blocks in their single-frame (2-D) form: causal convolutions reduced to
//! their last temporal tap, the L2 "RMS" norm, residual blocks, the mid-block attention and the
//! spatial resamplers. See the module docs of [`crate::vae`] for why the reduction is exact.

use candle_core::{DType, IndexOp, Module, Result, Tensor, D};
use candle_nn::VarBuilder;

/// A 2-D convolution with bias, from either a stored causal 3-D kernel or a plain 2-D one.
#[derive(Debug, Clone)]
pub struct Conv2d {
    /// `[out, in, k, k]`.
    weight: Tensor,
    /// `[1, out, 1, 1]`, ready to broadcast.
    bias: Tensor,
    padding: usize,
    stride: usize,
}

impl Conv2d {
    /// A `QwenImageCausalConv3d(in, out, k, padding=k/2)` applied to one frame.
    ///
    /// The kernel is stored `[out, in, k, k, k]`. With one frame the causal padding puts `k-1`
    /// zero frames before it, so only the last temporal tap ever meets data: the 3-D conv is
    /// exactly the 2-D conv with `weight[:, :, k-1]`.
    pub fn causal(vb: VarBuilder, in_ch: usize, out_ch: usize, k: usize) -> Result<Self> {
        let weight = vb.get((out_ch, in_ch, k, k, k), "weight")?;
        let weight = weight.i((.., .., k - 1))?.contiguous()?;
        let bias = vb.get(out_ch, "bias")?.reshape((1, out_ch, 1, 1))?;
        Ok(Self { weight, bias, padding: k / 2, stride: 1 })
    }

    /// A plain `nn.Conv2d(in, out, k, stride, padding)`.
    pub fn plain(vb: VarBuilder, in_ch: usize, out_ch: usize, k: usize, stride: usize, padding: usize) -> Result<Self> {
        let weight = vb.get((out_ch, in_ch, k, k), "weight")?;
        let bias = vb.get(out_ch, "bias")?.reshape((1, out_ch, 1, 1))?;
        Ok(Self { weight, bias, padding, stride })
    }

    /// The 2-D kernel in use (`[out, in, k, k]`).
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.conv2d(&self.weight, self.padding, self.stride, 1, 1)?.broadcast_add(&self.bias)
    }
}

/// `QwenImageRMS_norm`: despite the name, an L2 normalisation over channels,
/// `x / max(‖x‖₂, 1e-12) · √C · γ` (`F.normalize`), with no bias.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    /// `[1, C, 1, 1]`.
    gamma: Tensor,
    scale: f64,
}

impl RmsNorm {
    /// `gamma_shape` is the stored shape: `[C,1,1,1]` in residual blocks and heads
    /// (`images=False`), `[C,1,1]` in the attention block (`images=True`).
    pub fn new(vb: VarBuilder, dim: usize, gamma_shape: &[usize]) -> Result<Self> {
        let gamma = vb.get(gamma_shape, "gamma")?.reshape((1, dim, 1, 1))?;
        Ok(Self { gamma, scale: (dim as f64).sqrt() })
    }
}

impl Module for RmsNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // The norm is taken in f32 whatever the run's dtype (as diffusers does for bf16/fp16).
        let dtype = x.dtype();
        let xf = x.to_dtype(DType::F32)?;
        let norm = xf.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12f32, f32::INFINITY)?;
        let normalized = xf.broadcast_div(&norm)?.to_dtype(dtype)?;
        (normalized * self.scale)?.broadcast_mul(&self.gamma)
    }
}

/// `QwenImageResidualBlock`: `shortcut(x) + conv2(SiLU(norm2(conv1(SiLU(norm1(x))))))`.
#[derive(Debug, Clone)]
pub struct ResidualBlock {
    norm1: RmsNorm,
    conv1: Conv2d,
    norm2: RmsNorm,
    conv2: Conv2d,
    /// A 1×1 conv when the channel count changes, else the identity.
    conv_shortcut: Option<Conv2d>,
}

impl ResidualBlock {
    pub fn new(vb: VarBuilder, in_dim: usize, out_dim: usize) -> Result<Self> {
        let conv_shortcut =
            if in_dim != out_dim { Some(Conv2d::causal(vb.pp("conv_shortcut"), in_dim, out_dim, 1)?) } else { None };
        Ok(Self {
            norm1: RmsNorm::new(vb.pp("norm1"), in_dim, &[in_dim, 1, 1, 1])?,
            conv1: Conv2d::causal(vb.pp("conv1"), in_dim, out_dim, 3)?,
            norm2: RmsNorm::new(vb.pp("norm2"), out_dim, &[out_dim, 1, 1, 1])?,
            conv2: Conv2d::causal(vb.pp("conv2"), out_dim, out_dim, 3)?,
            conv_shortcut,
        })
    }
}

impl Module for ResidualBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(x)?,
            None => x.clone(),
        };
        let h = candle_nn::ops::silu(&self.norm1.forward(x)?)?;
        let h = self.conv1.forward(&h)?;
        let h = candle_nn::ops::silu(&self.norm2.forward(&h)?)?;
        // (dropout: identity at inference)
        self.conv2.forward(&h)? + shortcut
    }
}

/// `QwenImageAttentionBlock`: single-head self-attention of width C over the H·W positions,
/// scale 1/√C, then a 1×1 projection and a residual.
#[derive(Debug, Clone)]
pub struct AttentionBlock {
    norm: RmsNorm,
    to_qkv: Conv2d,
    proj: Conv2d,
    dim: usize,
}

/// Upper bound on the f32 score elements held at once (`query rows × keys`): 64 Mi = 256 MiB.
/// At 1024² the mid block sees 16384 positions, whose full score matrix would be 1 GiB.
const MAX_SCORE_ELEMENTS: usize = 1 << 26;

impl AttentionBlock {
    pub fn new(vb: VarBuilder, dim: usize) -> Result<Self> {
        Ok(Self {
            norm: RmsNorm::new(vb.pp("norm"), dim, &[dim, 1, 1])?,
            to_qkv: Conv2d::plain(vb.pp("to_qkv"), dim, dim * 3, 1, 1, 0)?,
            proj: Conv2d::plain(vb.pp("proj"), dim, dim, 1, 1, 0)?,
            dim,
        })
    }
}

impl Module for AttentionBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let n = h * w;
        let dtype = x.dtype();
        let qkv = self.to_qkv.forward(&self.norm.forward(x)?)?;
        // [B, 3C, H, W] → [B, HW, 3C]; q, k, v are consecutive C-wide channel groups.
        let qkv = qkv.reshape((b, 3 * c, n))?.transpose(1, 2)?.to_dtype(DType::F32)?;
        let q = (qkv.narrow(D::Minus1, 0, c)?.contiguous()? / (self.dim as f64).sqrt())?;
        let k_t = qkv.narrow(D::Minus1, c, c)?.transpose(1, 2)?.contiguous()?;
        let v = qkv.narrow(D::Minus1, 2 * c, c)?.contiguous()?;
        // Softmax rows are independent, so queries go in chunks to bound the score matrix.
        let rows = (MAX_SCORE_ELEMENTS / n.max(1)).clamp(1, n);
        let mut outs = Vec::with_capacity(n.div_ceil(rows));
        for start in (0..n).step_by(rows) {
            let len = rows.min(n - start);
            let scores = q.narrow(1, start, len)?.matmul(&k_t)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            outs.push(probs.matmul(&v)?);
        }
        let out = Tensor::cat(&outs, 1)?; // [B, HW, C]
        let out = out.transpose(1, 2)?.reshape((b, c, h, w))?.to_dtype(dtype)?;
        self.proj.forward(&out)? + x
    }
}

/// `QwenImageMidBlock` with one attention layer: Res, Attn, Res.
#[derive(Debug, Clone)]
pub struct MidBlock {
    resnets: Vec<ResidualBlock>,
    attentions: Vec<AttentionBlock>,
}

impl MidBlock {
    pub fn new(vb: VarBuilder, dim: usize) -> Result<Self> {
        let resnets = (0..2).map(|i| ResidualBlock::new(vb.pp("resnets").pp(i), dim, dim)).collect::<Result<_>>()?;
        let attentions = vec![AttentionBlock::new(vb.pp("attentions").pp(0), dim)?];
        Ok(Self { resnets, attentions })
    }
}

impl Module for MidBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = self.resnets[0].forward(x)?;
        for (attn, resnet) in self.attentions.iter().zip(&self.resnets[1..]) {
            x = resnet.forward(&attn.forward(&x)?)?;
        }
        Ok(x)
    }
}

/// The spatial half of `QwenImageResample` (`downsample2d`/`downsample3d`): ZeroPad2d(0,1,0,1)
/// then a 3×3 stride-2 conv. The `time_conv` of the 3-D variant is not loaded: on the first (and
/// only) frame diffusers only caches the input for it.
#[derive(Debug, Clone)]
pub struct Downsample {
    conv: Conv2d,
}

impl Downsample {
    pub fn new(vb: VarBuilder, dim: usize) -> Result<Self> {
        Ok(Self { conv: Conv2d::plain(vb.pp("resample").pp(1), dim, dim, 3, 2, 0)? })
    }
}

impl Module for Downsample {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // Pad one zero column on the right and one row at the bottom only.
        let x = x.pad_with_zeros(D::Minus1, 0, 1)?.pad_with_zeros(D::Minus2, 0, 1)?;
        self.conv.forward(&x)
    }
}

/// The spatial half of `QwenImageResample` (`upsample2d`/`upsample3d`): nearest-exact ×2 then a
/// 3×3 conv C → C/2. At an exact factor 2, nearest-exact picks source index `floor(i/2)`, the
/// same as plain nearest. The `time_conv` of the 3-D variant only runs from the second frame on.
#[derive(Debug, Clone)]
pub struct Upsample {
    conv: Conv2d,
}

impl Upsample {
    pub fn new(vb: VarBuilder, dim: usize) -> Result<Self> {
        Ok(Self { conv: Conv2d::plain(vb.pp("resample").pp(1), dim, dim / 2, 3, 1, 1)? })
    }
}

impl Module for Upsample {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        self.conv.forward(&x.upsample_nearest2d(2 * h, 2 * w)?)
    }
}
