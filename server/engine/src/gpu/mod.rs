//! Running on NVIDIA GPUs (the `cuda` feature): settings, streamed CPU offload, VRAM accounting,
//! clear CUDA error messages, and the pieces of the benchmark (random full-size weights, FLOP
//! counts).
//!
//! Everything here compiles without CUDA too; without it the CUDA-only parts return clear errors
//! (or `None` for measurements), so CI and the CPU build need no toolkit.

pub mod cudnn_attention;
pub mod errors;
pub mod flops;
pub mod fused;
pub mod gemm_epilogue;
pub mod memory;
pub mod offload;
pub mod random_weights;
pub mod softmax;

use candle_core::{DType, Device};

pub use errors::describe_error;
pub use memory::VramSampler;
pub use offload::{Blocks, OffloadOptions, OffloadStats, StreamedBlocks};
pub use random_weights::{InitScheme, RandomWeights};

/// Whether this build has CUDA support compiled in.
pub const fn cuda_compiled() -> bool {
    cfg!(feature = "cuda")
}

/// Matmul settings for a run in `dtype` on `device`.
///
/// In bf16/f16 runs the only f32 GEMMs are the attention's scores and weighted sums, whose
/// operands are upcast 16-bit values (exactly representable in TF32's 10-bit mantissa) or the
/// f32 probabilities: TF32 tensor cores run them at about twice the plain f32 rate with error
/// well under bf16's. f32 runs keep full f32 GEMMs (they are the parity path). bf16 GEMMs always
/// accumulate in f32 (candle's default, kept). The switch is process-wide in candle.
pub fn configure_matmul(device: &Device, dtype: DType) {
    if device.is_cuda() {
        candle_core::cuda::set_gemm_reduced_precision_f32(dtype != DType::F32);
    }
}

/// The CUDA device `ordinal`, with the failure turned into a message that says what to do.
pub fn cuda_device(ordinal: usize) -> crate::Result<Device> {
    if !cuda_compiled() {
        return Err(crate::Error::InvalidInput(
            "this build has no CUDA support: rebuild with `--features cuda` (needs the CUDA 13 toolkit at build time)"
                .into(),
        ));
    }
    Device::new_cuda(ordinal).map_err(|e| crate::Error::InvalidInput(describe_error(&e)))
}
