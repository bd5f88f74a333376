//! The VAE's building blocks in their single-frame (2-D) form: causal convolutions reduced to
//! their last temporal tap, the L2 "RMS" norm, residual blocks, the mid-block attention and the
//! spatial resamplers. See the module docs of [`crate::vae`] for why the reduction is exact.

use candle_core::{DType, IndexOp, Module, Result, Tensor, D};
use candle_nn::VarBuilder;

use crate::gpu::vae_kernels;

/// Which implementation the blocks run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VaeKernels {
    /// The fused CUDA kernels ([`vae_kernels`]) wherever they apply (bf16 on a GPU), the plain
    /// path elsewhere.
    #[default]
    Fused,
    /// candle's ops throughout: the parity reference.
    Plain,
}

impl VaeKernels {
    fn fused_for(self, x: &Tensor) -> bool {
        self == VaeKernels::Fused && vae_kernels::applies_to(x)
    }
}

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
        Ok(Self {
            weight,
            bias,
            padding: k / 2,
            stride: 1,
        })
    }

    /// A plain `nn.Conv2d(in, out, k, stride, padding)`.
    pub fn plain(vb: VarBuilder, in_ch: usize, out_ch: usize, k: usize, stride: usize, padding: usize) -> Result<Self> {
        let weight = vb.get((out_ch, in_ch, k, k), "weight")?;
        let bias = vb.get(out_ch, "bias")?.reshape((1, out_ch, 1, 1))?;
        Ok(Self {
            weight,
            bias,
            padding,
            stride,
        })
    }

    /// The 2-D kernel in use (`[out, in, k, k]`).
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The convolution without its bias: our column GEMM on a GPU in bf16 (candle's conv2d
    /// there is im2col in the transposed layout at 7–30 TFLOP/s), candle's conv2d elsewhere.
    fn conv(&self, x: &Tensor, k: VaeKernels) -> Result<Tensor> {
        if k == VaeKernels::Fused && crate::gpu::fused::applies_to(x) {
            return vae_kernels::conv2d(x, &self.weight, self.padding, self.stride);
        }
        x.conv2d(&self.weight, self.padding, self.stride, 1, 1)
    }

    /// `conv(x) + bias (+ residual)`, the additions in one fused pass where it applies.
    pub fn forward_with(&self, x: &Tensor, residual: Option<&Tensor>, k: VaeKernels) -> Result<Tensor> {
        let y = self.conv(x, k)?;
        if k.fused_for(&y) {
            return vae_kernels::bias_residual(&y, &self.bias, residual);
        }
        let y = y.broadcast_add(&self.bias)?;
        match residual {
            Some(r) => y + r,
            None => Ok(y),
        }
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, None, VaeKernels::Plain)
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
        Ok(Self {
            gamma,
            scale: (dim as f64).sqrt(),
        })
    }

    /// The norm of `x + bias` (the previous convolution's bias, if given), then SiLU if `silu`:
    /// one fused pass where it applies.
    pub fn forward_with(&self, x: &Tensor, bias: Option<&Tensor>, silu: bool, k: VaeKernels) -> Result<Tensor> {
        if k.fused_for(x) {
            return vae_kernels::channel_norm(x, bias, &self.gamma, self.scale, silu);
        }
        let x = match bias {
            Some(b) => x.broadcast_add(b)?,
            None => x.clone(),
        };
        let y = self.forward(&x)?;
        if silu {
            candle_nn::ops::silu(&y)
        } else {
            Ok(y)
        }
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
        let conv_shortcut = if in_dim != out_dim {
            Some(Conv2d::causal(vb.pp("conv_shortcut"), in_dim, out_dim, 1)?)
        } else {
            None
        };
        Ok(Self {
            norm1: RmsNorm::new(vb.pp("norm1"), in_dim, &[in_dim, 1, 1, 1])?,
            conv1: Conv2d::causal(vb.pp("conv1"), in_dim, out_dim, 3)?,
            norm2: RmsNorm::new(vb.pp("norm2"), out_dim, &[out_dim, 1, 1, 1])?,
            conv2: Conv2d::causal(vb.pp("conv2"), out_dim, out_dim, 3)?,
            conv_shortcut,
        })
    }
}

impl ResidualBlock {
    pub fn forward(&self, x: &Tensor, k: VaeKernels) -> Result<Tensor> {
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward_with(x, None, k)?,
            None => x.clone(),
        };
        let h = self.norm1.forward_with(x, None, true, k)?;
        // conv1's bias is added inside norm2's pass.
        let h = self.conv1.conv(&h, k)?;
        let h = self.norm2.forward_with(&h, Some(&self.conv1.bias), true, k)?;
        // (dropout: identity at inference)
        self.conv2.forward_with(&h, Some(&shortcut), k)
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

impl AttentionBlock {
    pub fn forward(&self, x: &Tensor, k: VaeKernels) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let n = h * w;
        let dtype = x.dtype();
        let qkv = self
            .to_qkv
            .forward_with(&self.norm.forward_with(x, None, false, k)?, None, k)?;
        // [B, 3C, H, W] → [B, HW, 3C]; q, k, v are consecutive C-wide channel groups.
        let qkv = qkv.reshape((b, 3 * c, n))?.transpose(1, 2)?.to_dtype(DType::F32)?;
        let q = (qkv.narrow(D::Minus1, 0, c)?.contiguous()? / (self.dim as f64).sqrt())?;
        let k_t = qkv.narrow(D::Minus1, c, c)?.transpose(1, 2)?.contiguous()?;
        let v = qkv.narrow(D::Minus1, 2 * c, c)?.contiguous()?;
        let out = attention(&q, &k_t, &v, (MAX_SCORE_ELEMENTS / n.max(1)).max(1))?; // [B, HW, C]
        let out = out.transpose(1, 2)?.reshape((b, c, h, w))?.to_dtype(dtype)?;
        self.proj.forward_with(&out, Some(x), k)
    }
}

/// `softmax(q · kᵀ) · v` for pre-scaled `q` `[B, N, C]`, `k_t` `[B, C, N]`, `v` `[B, N, C]`.
/// Softmax rows are independent, so queries go `rows` at a time to bound the score matrix.
fn attention(q: &Tensor, k_t: &Tensor, v: &Tensor, rows: usize) -> Result<Tensor> {
    let n = q.dim(1)?;
    let mut outs = Vec::with_capacity(n.div_ceil(rows));
    for start in (0..n).step_by(rows) {
        let scores = q.narrow(1, start, rows.min(n - start))?.matmul(k_t)?;
        outs.push(candle_nn::ops::softmax_last_dim(&scores)?.matmul(v)?);
    }
    Tensor::cat(&outs, 1)
}

/// `QwenImageMidBlock` with one attention layer: Res, Attn, Res.
#[derive(Debug, Clone)]
pub struct MidBlock {
    resnets: Vec<ResidualBlock>,
    attentions: Vec<AttentionBlock>,
}

impl MidBlock {
    pub fn new(vb: VarBuilder, dim: usize) -> Result<Self> {
        let resnets = (0..2)
            .map(|i| ResidualBlock::new(vb.pp("resnets").pp(i), dim, dim))
            .collect::<Result<_>>()?;
        let attentions = vec![AttentionBlock::new(vb.pp("attentions").pp(0), dim)?];
        Ok(Self { resnets, attentions })
    }
}

impl MidBlock {
    pub fn forward(&self, x: &Tensor, k: VaeKernels) -> Result<Tensor> {
        let mut x = self.resnets[0].forward(x, k)?;
        for (attn, resnet) in self.attentions.iter().zip(&self.resnets[1..]) {
            x = resnet.forward(&attn.forward(&x, k)?, k)?;
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
        Ok(Self {
            conv: Conv2d::plain(vb.pp("resample").pp(1), dim, dim, 3, 2, 0)?,
        })
    }
}

impl Downsample {
    pub fn forward(&self, x: &Tensor, k: VaeKernels) -> Result<Tensor> {
        // Pad one zero column on the right and one row at the bottom only.
        let x = x.pad_with_zeros(D::Minus1, 0, 1)?.pad_with_zeros(D::Minus2, 0, 1)?;
        self.conv.forward_with(&x, None, k)
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
        Ok(Self {
            conv: Conv2d::plain(vb.pp("resample").pp(1), dim, dim / 2, 3, 1, 1)?,
        })
    }
}

impl Upsample {
    pub fn forward(&self, x: &Tensor, k: VaeKernels) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        self.conv.forward_with(&x.upsample_nearest2d(2 * h, 2 * w)?, None, k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use std::collections::HashMap;

    fn vb(tensors: Vec<(&str, Tensor)>) -> VarBuilder<'static> {
        let map: HashMap<String, Tensor> = tensors.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        VarBuilder::from_tensors(map, DType::F32, &Device::Cpu)
    }

    fn arange(n: usize, shape: &[usize]) -> Tensor {
        Tensor::arange(0f32, n as f32, &Device::Cpu)
            .unwrap()
            .reshape(shape)
            .unwrap()
    }

    #[test]
    fn causal_conv_keeps_the_last_temporal_tap() {
        let w = arange(2 * 3 * 27, &[2, 3, 3, 3, 3]);
        let conv = Conv2d::causal(
            vb(vec![
                ("weight", w.clone()),
                ("bias", Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap()),
            ]),
            3,
            2,
            3,
        )
        .unwrap();
        let want = w.i((.., .., 2)).unwrap();
        assert_eq!(conv.weight().dims(), &[2, 3, 3, 3]);
        let diff = test_support::max_abs_diff(conv.weight(), &want);
        assert_eq!(diff, 0.0);
        // Not the first or middle tap: element [0,0,·,0,0] is 0, 9, 18 for taps 0, 1, 2.
        assert_eq!(conv.weight().i((0, 0, 0, 0)).unwrap().to_scalar::<f32>().unwrap(), 18.0);

        // 1×1×1 kernels squeeze to 1×1 and preserve the values.
        let w1 = arange(6, &[2, 3, 1, 1, 1]);
        let conv1 = Conv2d::causal(
            vb(vec![
                ("weight", w1),
                ("bias", Tensor::new(&[1f32, -1.], &Device::Cpu).unwrap()),
            ]),
            3,
            2,
            1,
        )
        .unwrap();
        let x = Tensor::ones((1, 3, 1, 1), DType::F32, &Device::Cpu).unwrap();
        let y = conv1
            .forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(y, vec![0. + 1. + 2. + 1., 3. + 4. + 5. - 1.]);
    }

    #[test]
    fn causal_conv_rejects_a_2d_kernel() {
        let err = Conv2d::causal(
            vb(vec![("weight", arange(54, &[2, 3, 3, 3])), ("bias", arange(2, &[2]))]),
            3,
            2,
            3,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("shape"), "{err}");
    }

    #[test]
    fn rms_norm_is_l2_normalisation_times_sqrt_c_and_gamma() {
        let gamma = Tensor::new(&[1f32, 2.], &Device::Cpu)
            .unwrap()
            .reshape((2, 1, 1, 1))
            .unwrap();
        let norm = RmsNorm::new(vb(vec![("gamma", gamma)]), 2, &[2, 1, 1, 1]).unwrap();
        // Channels (3, 4) at one pixel and (0, 0) at another: ‖·‖ = 5 and the eps clamp.
        let x = Tensor::new(&[3f32, 0., 4., 0.], &Device::Cpu)
            .unwrap()
            .reshape((1, 2, 1, 2))
            .unwrap();
        let y = norm
            .forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let s = 2f32.sqrt();
        let want = [0.6 * s, 0.0, 0.8 * s * 2.0, 0.0];
        for (a, b) in y.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{y:?} vs {want:?}");
        }
    }

    #[test]
    fn downsample_pads_right_and_bottom_only() {
        // A 3×3 all-ones kernel summing a 4×4 ramp: windows start at 0 and 2 (stride 2) and the
        // second reaches the zero padding.
        let conv = vec![
            (
                "resample.1.weight",
                Tensor::ones((1, 1, 3, 3), DType::F32, &Device::Cpu).unwrap(),
            ),
            ("resample.1.bias", Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap()),
        ];
        let down = Downsample::new(vb(conv), 1).unwrap();
        let x = arange(16, &[1, 1, 4, 4]);
        let y = down
            .forward(&x, VaeKernels::Plain)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        // rows 0-2 × cols 0-2: 0+1+2+4+5+6+8+9+10 = 45; cols 2-3(+pad): 2+3+6+7+10+11 = 39;
        // rows 2-3(+pad) × cols 0-2: 8+9+10+12+13+14 = 66; both: 10+11+14+15 = 50.
        assert_eq!(y, vec![45., 39., 66., 50.]);
    }

    #[test]
    fn upsample_repeats_each_pixel_twice_each_way() {
        // An identity 3×3 kernel (centre tap) on one channel, out = C/2 = 1 of 2 channels.
        let mut k = vec![0f32; 2 * 9];
        k[4] = 1.0;
        let w = Tensor::from_vec(k, (1, 2, 3, 3), &Device::Cpu).unwrap();
        let up = Upsample::new(
            vb(vec![
                ("resample.1.weight", w),
                ("resample.1.bias", Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap()),
            ]),
            2,
        )
        .unwrap();
        let x = Tensor::cat(
            &[
                arange(4, &[1, 1, 2, 2]),
                Tensor::zeros((1, 1, 2, 2), DType::F32, &Device::Cpu).unwrap(),
            ],
            1,
        )
        .unwrap();
        let y = up.forward(&x, VaeKernels::Plain).unwrap();
        assert_eq!(y.dims(), &[1, 1, 4, 4]);
        let rows = y.squeeze(0).unwrap().squeeze(0).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(
            rows,
            vec![
                vec![0., 0., 1., 1.],
                vec![0., 0., 1., 1.],
                vec![2., 2., 3., 3.],
                vec![2., 2., 3., 3.]
            ]
        );
    }

    #[test]
    fn chunked_attention_equals_one_pass() {
        let q = (arange(2 * 7 * 3, &[2, 7, 3]) * 0.05).unwrap();
        let k_t = (arange(2 * 3 * 7, &[2, 3, 7]).cos().unwrap()).contiguous().unwrap();
        let v = arange(2 * 7 * 3, &[2, 7, 3]).sin().unwrap();
        let whole = attention(&q, &k_t, &v, 7).unwrap();
        let chunked = attention(&q, &k_t, &v, 3).unwrap();
        assert_eq!(whole.dims(), &[2, 7, 3]);
        let diff = test_support::max_abs_diff(&whole, &chunked);
        assert!(diff < 1e-6, "{diff}");
    }
}
