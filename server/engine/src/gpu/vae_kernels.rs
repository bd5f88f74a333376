//! The VAE's fused CUDA kernels (bf16, `kernels/vae.cu`): the L2 channel norm with an optional
//! folded-in bias and SiLU, a convolution's bias plus a residual in one pass, and the convolution
//! itself as channel-first columns times the weight (one cuBLAS GEMM per band of rows). The VAE's
//! blocks use them where [`applies_to`] holds and keep their plain candle path elsewhere (CPU,
//! f32, sizes the kernels don't cover); the device parity tests check one against the other.
//!
//! Without the `cuda` feature every function here returns an error and [`applies_to`] is false.

use candle_core::{DType, Result, Tensor};

/// Whether the kernels can serve the channel-first activation `x` `[B, C, H, W]`: a CUDA build,
/// `x` bf16 on a GPU, and H·W a multiple of 8 (a thread owns 8 pixels).
pub fn applies_to(x: &Tensor) -> bool {
    super::fused::applies_to(x) && x.rank() == 4 && (x.dims()[2] * x.dims()[3]).is_multiple_of(8)
}

/// `silu?((x + bias) / max(‖x + bias‖₂ over C, 1e-12) · scale · gamma)` for `x` `[B, C, H, W]`,
/// `bias` and `gamma` `[C]` (bf16): the VAE's "RMS" norm after a bias-free convolution.
pub fn channel_norm(x: &Tensor, bias: Option<&Tensor>, gamma: &Tensor, scale: f64, silu: bool) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    return cuda::channel_norm(x, bias, gamma, scale, silu);
    #[cfg(not(feature = "cuda"))]
    no_cuda((x, bias, gamma, scale, silu))
}

/// Bytes of GEMM columns built at once: a convolution runs in bands of output rows so that its
/// columns (9× its input for a 3×3 kernel) stay within this, whatever the image size or batch
/// (at 1024² the widest layer's full columns would be 3.6 GB per image).
pub const CONV_COLUMNS_BUDGET_BYTES: usize = 256 << 20;

/// `conv2d(x, weight)` without bias, `x` `[B, C_in, H, W]`, `weight` `[C_out, C_in, kh, kw]`
/// (bf16 on a GPU), symmetric zero `padding`, `stride`. 1×1 kernels are one GEMM on `x` itself.
pub fn conv2d(x: &Tensor, weight: &Tensor, padding: usize, stride: usize) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    return cuda::conv2d(x, weight, padding, stride);
    #[cfg(not(feature = "cuda"))]
    no_cuda((x, weight, padding, stride))
}

/// `y + bias (+ residual)` for `y` `[B, C, H, W]`, `bias` `[C]`, `residual` shaped like `y`.
pub fn bias_residual(y: &Tensor, bias: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    return cuda::bias_residual(y, bias, residual);
    #[cfg(not(feature = "cuda"))]
    no_cuda((y, bias, residual))
}

#[cfg(not(feature = "cuda"))]
fn no_cuda<T, A>(_args: A) -> Result<T> {
    candle_core::bail!("the VAE kernels need a build with the `cuda` feature")
}

/// Why a tensor cannot go to the kernels, or `None`.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn unsupported(x: &Tensor, per_channel: &[&Tensor]) -> Option<String> {
    let dims = x.dims();
    if dims.len() != 4 || !(dims[2] * dims[3]).is_multiple_of(8) {
        return Some(format!("x {dims:?}: expected [B, C, H, W] with H·W % 8 == 0"));
    }
    if x.dtype() != DType::BF16 || per_channel.iter().any(|t| t.dtype() != DType::BF16) {
        return Some("expected bf16 tensors".into());
    }
    per_channel
        .iter()
        .find(|t| t.elem_count() != dims[1])
        .map(|t| format!("per-channel tensor {:?} for {} channels", t.dims(), dims[1]))
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
    use candle_core::{bail, Result, Tensor};
    use half::bf16;

    use super::unsupported;
    use crate::gpu::fused::cuda::{cuda_device, grid_for, launch, output, view, THREADS};

    const VAE_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/vae.ptx"));

    pub fn channel_norm(x: &Tensor, bias: Option<&Tensor>, gamma: &Tensor, scale: f64, silu: bool) -> Result<Tensor> {
        let per_channel: Vec<&Tensor> = std::iter::once(gamma).chain(bias).collect();
        if let Some(why) = unsupported(x, &per_channel) {
            bail!("vae channel_norm: {why}");
        }
        let (b, c, h, w) = x.dims4()?;
        let hw = h * w;
        let dev = cuda_device(x)?;
        let x = x.contiguous()?;
        let gamma = gamma.flatten_all()?.contiguous()?;
        let (has_bias, silu) = (i32::from(bias.is_some()), i32::from(silu));
        // Without a bias the kernel never reads it: gamma stands in as a valid pointer.
        let bias = match bias {
            Some(t) => t.flatten_all()?.contiguous()?,
            None => gamma.clone(),
        };
        let (xg, gg, bg) = (
            x.storage_and_layout(),
            gamma.storage_and_layout(),
            bias.storage_and_layout(),
        );
        let xv = view::<bf16>(&xg.0, xg.1, "x")?;
        let gv = view::<bf16>(&gg.0, gg.1, "gamma")?;
        let bv = view::<bf16>(&bg.0, bg.1, "bias")?;
        let groups = b * hw / 8;
        // SAFETY: every pixel group writes all its channels.
        let mut out = unsafe { dev.alloc::<bf16>((b * c * hw).max(1))? };
        if groups > 0 {
            let func = dev.get_or_load_custom_func("engine_vae_norm_bf16", "engine_vae", VAE_PTX)?;
            let mut builder = func.builder();
            let (channels, hw, groups_arg, scale) = (c as i32, hw as i64, groups as i64, scale as f32);
            builder.arg(&xv).arg(&bv).arg(&gv).arg(&mut out);
            builder
                .arg(&channels)
                .arg(&hw)
                .arg(&groups_arg)
                .arg(&scale)
                .arg(&has_bias)
                .arg(&silu);
            // SAFETY: reads b·c·hw elements of x and c of bias and gamma; writes b·c·hw of out.
            unsafe { launch(&mut builder, (grid_for(groups), 1, 1), THREADS) }?;
        }
        Ok(output(&dev, out, (b, c, h, w)))
    }

    pub fn conv2d(x: &Tensor, weight: &Tensor, padding: usize, stride: usize) -> Result<Tensor> {
        let (b, ci, h, w) = x.dims4()?;
        let (co, ci_w, kh, kw) = weight.dims4()?;
        if ci_w != ci || stride == 0 || h + 2 * padding < kh || w + 2 * padding < kw {
            bail!(
                "vae conv2d: x {:?}, weight {:?}, stride {stride}, padding {padding}",
                x.dims(),
                weight.dims()
            );
        }
        if x.dtype() != candle_core::DType::BF16 || weight.dtype() != candle_core::DType::BF16 {
            bail!("vae conv2d: expected bf16 tensors");
        }
        let (ho, wo) = ((h + 2 * padding - kh) / stride + 1, (w + 2 * padding - kw) / stride + 1);
        let k = ci * kh * kw;
        // [B, C_out, K]: the same weight for every image (a stride-0 batch).
        let w2 = weight.reshape((1, co, k))?.broadcast_as((b, co, k))?;
        if kh == 1 && kw == 1 && stride == 1 && padding == 0 {
            return w2.matmul(&x.reshape((b, ci, h * w))?)?.reshape((b, co, ho, wo));
        }
        let dev = cuda_device(x)?;
        let x = x.contiguous()?;
        let row_bytes = b * k * wo * std::mem::size_of::<bf16>();
        let band = (super::CONV_COLUMNS_BUDGET_BYTES / row_bytes.max(1)).clamp(1, ho);
        let mut bands = Vec::with_capacity(ho.div_ceil(band));
        for r0 in (0..ho).step_by(band) {
            let rows = band.min(ho - r0);
            let total = b * k * rows * wo;
            // SAFETY: the grid-stride loop writes every element.
            let mut cols = unsafe { dev.alloc::<bf16>(total)? };
            {
                let xg = x.storage_and_layout();
                let xv = view::<bf16>(&xg.0, xg.1, "x")?;
                let func = dev.get_or_load_custom_func("engine_vae_im2col_bf16", "engine_vae", VAE_PTX)?;
                let mut builder = func.builder();
                let dims = [ci, h, w, kh, kw, stride, padding, wo, r0, rows].map(|d| d as i32);
                let total_arg = total as i64;
                builder.arg(&xv).arg(&mut cols);
                for d in &dims {
                    builder.arg(d);
                }
                builder.arg(&total_arg);
                // SAFETY: reads within x ([b, ci, h, w], bounds checked per element); writes the
                // `total` elements of cols.
                unsafe { launch(&mut builder, (grid_for(total), 1, 1), THREADS) }?;
            }
            let cols = output(&dev, cols, (b, k, rows * wo));
            bands.push(w2.matmul(&cols)?.reshape((b, co, rows, wo))?);
        }
        Tensor::cat(&bands, 2)
    }

    pub fn bias_residual(y: &Tensor, bias: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        if let Some(why) = unsupported(y, &[bias]) {
            bail!("vae bias_residual: {why}");
        }
        if let Some(r) = residual {
            if r.dims() != y.dims() || r.dtype() != y.dtype() {
                bail!("vae bias_residual: residual {:?} for y {:?}", r.dims(), y.dims());
            }
        }
        let (b, c, h, w) = y.dims4()?;
        let dev = cuda_device(y)?;
        let y = y.contiguous()?;
        let bias = bias.flatten_all()?.contiguous()?;
        let has_residual = i32::from(residual.is_some());
        // Without a residual the kernel never reads it: y stands in as a valid pointer.
        let residual = match residual {
            Some(r) => r.contiguous()?,
            None => y.clone(),
        };
        let (yg, bg, rg) = (
            y.storage_and_layout(),
            bias.storage_and_layout(),
            residual.storage_and_layout(),
        );
        let yv = view::<bf16>(&yg.0, yg.1, "y")?;
        let bv = view::<bf16>(&bg.0, bg.1, "bias")?;
        let rv = view::<bf16>(&rg.0, rg.1, "residual")?;
        let n = b * c * h * w;
        // SAFETY: the grid-stride loop writes every element.
        let mut out = unsafe { dev.alloc::<bf16>(n.max(1))? };
        if n > 0 {
            let func = dev.get_or_load_custom_func("engine_vae_bias_residual_bf16", "engine_vae", VAE_PTX)?;
            let mut builder = func.builder();
            let (channels, hw, vecs) = (c as i32, (h * w) as i64, (n / 8) as i64);
            builder.arg(&yv).arg(&bv).arg(&rv).arg(&mut out);
            builder.arg(&channels).arg(&hw).arg(&vecs).arg(&has_residual);
            // SAFETY: reads n elements of y and residual and c of bias; writes n of out.
            unsafe { launch(&mut builder, (grid_for(n / 8), 1, 1), THREADS) }?;
        }
        Ok(output(&dev, out, (b, c, h, w)))
    }
}
