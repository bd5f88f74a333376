//! Softmax over the last axis of f32 scores: on CUDA our own kernel (`kernels/softmax.cu`, one
//! thread block per row: candle's gives a row one warp and is latency-bound on the DiT's
//! ~10k-key attention rows), elsewhere candle's.

use candle_core::{Result, Tensor};

/// `softmax(x)` along the last axis, computed in f32 for f32 inputs.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() && x.dtype() == candle_core::DType::F32 && x.elem_count() > 0 {
        return x.contiguous()?.apply_op1_no_bwd(&cuda::RowSoftmax);
    }
    candle_nn::ops::softmax_last_dim(x)
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{CpuStorage, CudaStorage, Layout, Result, Shape};

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/softmax.ptx"));
    /// Threads per row: 8 warps keep enough loads in flight for a 10k-element row.
    const BLOCK: u32 = 256;

    pub struct RowSoftmax;

    impl candle_core::CustomOp1 for RowSoftmax {
        fn name(&self) -> &'static str {
            "engine-row-softmax"
        }

        fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
            candle_core::bail!("engine-row-softmax runs on CUDA only")
        }

        fn cuda_fwd(&self, storage: &CudaStorage, layout: &Layout) -> Result<(CudaStorage, Shape)> {
            let dev = storage.device();
            let (start, end) = layout
                .contiguous_offsets()
                .ok_or_else(|| candle_core::Error::Msg("engine-row-softmax: input must be contiguous".into()))?;
            let src = storage.as_cuda_slice::<f32>()?.slice(start..end);
            let cols = *layout.dims().last().expect("rank ≥ 1");
            let elements = layout.shape().elem_count();
            let rows = elements / cols;
            // SAFETY: every element is written by the kernel.
            let dst = unsafe { dev.alloc::<f32>(elements)? };
            let func = dev.get_or_load_custom_func("engine_softmax_rows_f32", "engine_softmax", PTX)?;
            let mut builder = func.builder();
            builder.arg(&src);
            builder.arg(&dst);
            let cols_arg = cols as i32;
            builder.arg(&cols_arg);
            let cfg = LaunchConfig {
                grid_dim: (rows as u32, 1, 1),
                block_dim: (BLOCK, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: the kernel reads `rows × cols` f32 from `src` and writes as many to `dst`.
            unsafe { builder.launch(cfg) }.w()?;
            Ok((CudaStorage::wrap_cuda_slice(dst, dev.clone()), layout.shape().clone()))
        }
    }
}
