//! `gelu_tanh(x·Wᵀ + b)` as one cuBLASLt GEMM with its bias-and-GELU epilogue (bf16 in and out,
//! f32 accumulation): the DiT's MLP input projection. Fusing the epilogue saves the separate
//! bias + GELU pass over the `[B, S, 4D]` hidden activations (the largest tensor of a block).
//!
//! cuBLASLt's GELU epilogue is the tanh approximation, the one the DiT uses
//! (`GELU(approximate="tanh")`); `device_parity` checks it against f32.
//!
//! Without the `cuda` feature [`linear_bias_gelu`] returns an error.

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

#[cfg(feature = "cuda")]
mod cuda {
    use std::sync::{Arc, Mutex};

    use candle_core::cuda_backend::cudarc::cublaslt::{Activation, CudaBlasLT, Matmul, MatmulConfig};
    use candle_core::cuda_backend::cudarc::driver::CudaView;
    use candle_core::cuda_backend::{CudaDevice, CudaStorage};
    use candle_core::op::BackpropOp;
    use candle_core::{bail, DType, Device, Layout, Result, Storage, Tensor};
    use half::bf16;

    /// One cuBLASLt handle (and its 32 MB workspace) per CUDA stream, made on first use.
    static HANDLES: Mutex<Vec<(usize, Arc<CudaBlasLT>)>> = Mutex::new(Vec::new());

    fn handle(dev: &CudaDevice) -> Result<Arc<CudaBlasLT>> {
        let stream = dev.cuda_stream();
        let key = stream.cu_stream() as usize;
        let mut handles = HANDLES.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((_, h)) = handles.iter().find(|(k, _)| *k == key) {
            return Ok(h.clone());
        }
        let h = Arc::new(CudaBlasLT::new(stream).map_err(|e| candle_core::Error::Msg(format!("cuBLASLt: {e:?}")))?);
        handles.push((key, h.clone()));
        Ok(h)
    }

    fn view<'a>(storage: &'a Storage, layout: &Layout, what: &str) -> Result<CudaView<'a, bf16>> {
        let Storage::Cuda(s) = storage else {
            bail!("linear_bias_gelu: {what} is not on CUDA")
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            bail!("linear_bias_gelu: {what} is not contiguous")
        };
        Ok(s.as_cuda_slice::<bf16>()?.slice(start..end))
    }

    pub fn linear_bias_gelu(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let (b, s, k) = x.dims3()?;
        let (n, k_w) = weight.dims2()?;
        if k_w != k || bias.dims() != [n] {
            bail!(
                "linear_bias_gelu: x {:?}, weight {:?}, bias {:?} don't match",
                x.dims(),
                weight.dims(),
                bias.dims()
            );
        }
        for (t, what) in [(x, "x"), (weight, "weight"), (bias, "bias")] {
            if t.dtype() != DType::BF16 {
                bail!("linear_bias_gelu: {what} is {:?}, expected bf16", t.dtype());
            }
        }
        let Device::Cuda(dev) = x.device() else {
            bail!("linear_bias_gelu: x is not on a CUDA device")
        };
        let (x, weight, bias) = (x.contiguous()?, weight.contiguous()?, bias.contiguous()?);
        let (xg, wg, bg) = (x.storage_and_layout(), weight.storage_and_layout(), bias.storage_and_layout());
        let (xv, wv, bv) = (view(&xg.0, xg.1, "x")?, view(&wg.0, wg.1, "weight")?, view(&bg.0, bg.1, "bias")?);
        let rows = b * s;
        // SAFETY: the GEMM writes all rows × n outputs.
        let mut out = unsafe { dev.alloc::<bf16>((rows * n).max(1))? };
        if rows > 0 && n > 0 {
            // Column-major view: outᵀ [n, rows] = W [n, k] (stored row-major, i.e. transposed)
            // · xᵀ [k, rows]; the bias runs along outᵀ's rows, i.e. over the n outputs.
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
                stride_a: None,
                stride_b: None,
                stride_c: None,
                stride_bias: None,
                batch_size: None,
            };
            let lt = handle(dev)?;
            // SAFETY: weight holds n × k, x rows × k, bias n and out rows × n elements, as the
            // config's shapes and leading dimensions describe.
            unsafe { lt.matmul(cfg, &wv, &xv, &mut out, Some(&bv), Some(&Activation::Gelu)) }
                .map_err(|e| candle_core::Error::Msg(format!("cuBLASLt GEMM + GELU: {e:?}")))?;
        }
        drop((xg, wg, bg));
        Ok(Tensor::from_storage(
            Storage::Cuda(CudaStorage::wrap_cuda_slice(out, dev.clone())),
            (b, s, n),
            BackpropOp::none(),
            false,
        ))
    }
}
