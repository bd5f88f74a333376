//! cuBLASLt GEMMs with work folded into their epilogue (bf16 in and out, f32 accumulation), each
//! saving a separate pass over a large activation tensor of the DiT block:
//! - [`linear_bias_gelu`]: the MLP input projection with bias and GELU, no pass over the
//!   `[B, S, 4D]` hidden activations (the largest tensor of a block). cuBLASLt's GELU epilogue is
//!   the tanh approximation, the one the DiT uses (`GELU(approximate="tanh")`);
//! - [`joint_linear`]: the joint attention's v, both streams' projections with their biases
//!   written straight into the joint [image, text] buffer (no layout pass).
//!
//! `device_parity` checks both against f32. Without the `cuda` feature they return errors.

use candle_core::{Result, Tensor};

/// `gelu_tanh(x·weightᵀ + bias)` for `x` `[B, S, K]`, `weight` `[N, K]`, `bias` `[N]`, all bf16
/// on one CUDA device; returns `[B, S, N]`.
pub fn linear_bias_gelu(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    return cuda::linear_bias_gelu(x, weight, bias);
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (x, weight, bias);
        candle_core::bail!("linear_bias_gelu needs a build with the `cuda` feature")
    }
}

/// Both streams' projections with their biases, per batch row in the joint order [image, text]:
/// rows `[0, S_img)` of `out[b]` are `x_img[b]·w_imgᵀ + b_img`, rows `[S_img, S_img + S_txt)` are
/// `x_txt[b]·w_txtᵀ + b_txt`. `x_img` `[B, S_img, K]`, `x_txt` `[B, S_txt, K]`, weights `[N, K]`,
/// biases `[N]`, bf16 on one CUDA device; returns `[B, S_img + S_txt, N]`.
pub fn joint_linear(
    x_img: &Tensor,
    w_img: &Tensor,
    b_img: &Tensor,
    x_txt: &Tensor,
    w_txt: &Tensor,
    b_txt: &Tensor,
) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    return cuda::joint_linear(x_img, w_img, b_img, x_txt, w_txt, b_txt);
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (x_img, w_img, b_img, x_txt, w_txt, b_txt);
        candle_core::bail!("joint_linear needs a build with the `cuda` feature")
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use std::sync::{Arc, Mutex};

    use candle_core::cuda_backend::cudarc::cublaslt::{Activation, CudaBlasLT, Matmul, MatmulConfig};
    use candle_core::cuda_backend::cudarc::driver::{CudaView, DevicePtrMut};
    use candle_core::cuda_backend::CudaDevice;
    use candle_core::{bail, DType, Result, Tensor};
    use half::bf16;

    use crate::gpu::fused::cuda::{check_dtype, cuda_device, output, view};

    fn check_bf16(tensors: &[(&Tensor, &str)]) -> Result<()> {
        tensors
            .iter()
            .try_for_each(|(t, what)| check_dtype(t, DType::BF16, what))
    }

    /// One cuBLASLt handle (and its 32 MB workspace) per CUDA stream, made on first use.
    static HANDLES: Mutex<Vec<(usize, Arc<CudaBlasLT>)>> = Mutex::new(Vec::new());

    fn handle(dev: &CudaDevice) -> Result<Arc<CudaBlasLT>> {
        let stream = dev.cuda_stream();
        let key = stream.cu_stream() as usize;
        let mut handles = HANDLES.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((_, h)) = handles.iter().find(|(k, _)| *k == key) {
            return Ok(h.clone());
        }
        let h = Arc::new(CudaBlasLT::new(stream).map_err(|e| lt_error("handle", e))?);
        handles.push((key, h.clone()));
        Ok(h)
    }

    fn lt_error(what: &str, e: impl std::fmt::Debug) -> candle_core::Error {
        candle_core::Error::Msg(format!("cuBLASLt {what}: {e:?}"))
    }

    /// `out_b = x_b · Wᵀ (+ bias, + GELU)` for `batch` row blocks of `rows` rows: x blocks
    /// `x_stride` elements apart, output blocks `out_stride` apart (row-major, `n` wide).
    /// Column-major view for cuBLASLt: outᵀ [n, rows] = W [n, k] (row-major, i.e. transposed) ·
    /// xᵀ [k, rows]; the bias runs along outᵀ's rows, i.e. over the n outputs; W is shared by
    /// the batch (stride 0).
    #[allow(clippy::too_many_arguments)]
    fn gemm<O: DevicePtrMut<bf16>>(
        dev: &CudaDevice,
        (batch, rows, n, k): (usize, usize, usize, usize),
        w: &CudaView<'_, bf16>,
        x: &CudaView<'_, bf16>,
        x_stride: usize,
        out: &mut O,
        out_stride: usize,
        bias: &CudaView<'_, bf16>,
        act: Option<&Activation>,
    ) -> Result<()> {
        if batch * rows * n == 0 {
            return Ok(());
        }
        let batched = batch > 1;
        let cfg = MatmulConfig {
            transa: true,
            transb: false,
            transc: false,
            m: n as u64,
            n: rows as u64,
            k: k as u64,
            alpha: 1.0,
            lda: k as i64,
            ldb: k as i64,
            beta: 0.0,
            ldc: n as i64,
            stride_a: batched.then_some(0),
            stride_b: batched.then_some(x_stride as i64),
            stride_c: batched.then_some(out_stride as i64),
            stride_bias: None,
            batch_size: batched.then_some(batch as i32),
        };
        let lt = handle(dev)?;
        // SAFETY: the caller's views hold w n × k, x (batch − 1)·x_stride + rows × k, out
        // (batch − 1)·out_stride + rows × n and bias n elements.
        unsafe { lt.matmul(cfg, w, x, out, Some(bias), act) }.map_err(|e| lt_error("GEMM", e))
    }

    pub fn linear_bias_gelu(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
        const OP: &str = "linear_bias_gelu";
        let (b, s, k) = x.dims3()?;
        let (n, k_w) = weight.dims2()?;
        if k_w != k || bias.dims() != [n] {
            bail!(
                "{OP}: x {:?}, weight {:?}, bias {:?} don't match",
                x.dims(),
                weight.dims(),
                bias.dims()
            );
        }
        check_bf16(&[(x, "x"), (weight, "weight"), (bias, "bias")])?;
        let dev = &cuda_device(x)?;
        let (x, weight, bias) = (x.contiguous()?, weight.contiguous()?, bias.contiguous()?);
        let (xg, wg, bg) = (
            x.storage_and_layout(),
            weight.storage_and_layout(),
            bias.storage_and_layout(),
        );
        let (xv, wv, bv) = (
            view::<bf16>(&xg.0, xg.1, "x")?,
            view(&wg.0, wg.1, "weight")?,
            view(&bg.0, bg.1, "bias")?,
        );
        // SAFETY: the GEMM writes all b·s × n outputs.
        let mut out = unsafe { dev.alloc::<bf16>((b * s * n).max(1))? };
        // All rows as one matrix (contiguous x).
        gemm(
            dev,
            (1, b * s, n, k),
            &wv,
            &xv,
            0,
            &mut out,
            0,
            &bv,
            Some(&Activation::Gelu),
        )?;
        drop((xg, wg, bg));
        Ok(output(dev, out, (b, s, n)))
    }

    pub fn joint_linear(
        x_img: &Tensor,
        w_img: &Tensor,
        b_img: &Tensor,
        x_txt: &Tensor,
        w_txt: &Tensor,
        b_txt: &Tensor,
    ) -> Result<Tensor> {
        const OP: &str = "joint_linear";
        let (b, s_img, k) = x_img.dims3()?;
        let (b_t, s_txt, k_t) = x_txt.dims3()?;
        let (n, k_w) = w_img.dims2()?;
        if b_t != b || k_t != k || k_w != k || w_txt.dims() != [n, k] || b_img.dims() != [n] || b_txt.dims() != [n] {
            bail!(
                "{OP}: x_img {:?}, x_txt {:?}, weights {:?} / {:?}, biases {:?} / {:?} don't match",
                x_img.dims(),
                x_txt.dims(),
                w_img.dims(),
                w_txt.dims(),
                b_img.dims(),
                b_txt.dims()
            );
        }
        let inputs = [
            (x_img, "x_img"),
            (w_img, "w_img"),
            (b_img, "b_img"),
            (x_txt, "x_txt"),
            (w_txt, "w_txt"),
            (b_txt, "b_txt"),
        ];
        check_bf16(&inputs)?;
        let dev = &cuda_device(x_img)?;
        let seq = s_img + s_txt;
        // SAFETY: the two GEMMs write every row of every batch row (image rows, then text rows).
        let mut out = unsafe { dev.alloc::<bf16>((b * seq * n).max(1))? };
        for (x, w, bias, rows, first_row) in [(x_img, w_img, b_img, s_img, 0), (x_txt, w_txt, b_txt, s_txt, s_img)] {
            let (x, w, bias) = (x.contiguous()?, w.contiguous()?, bias.contiguous()?);
            let (xg, wg, bg) = (
                x.storage_and_layout(),
                w.storage_and_layout(),
                bias.storage_and_layout(),
            );
            let (xv, wv, bv) = (
                view::<bf16>(&xg.0, xg.1, "x")?,
                view(&wg.0, wg.1, "w")?,
                view(&bg.0, bg.1, "bias")?,
            );
            if rows == 0 {
                continue;
            }
            let mut dst = out.slice_mut(first_row * n..b * seq * n);
            gemm(dev, (b, rows, n, k), &wv, &xv, rows * k, &mut dst, seq * n, &bv, None)?;
        }
        Ok(output(dev, out, (b, seq, n)))
    }
}
