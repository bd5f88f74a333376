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
pub mod vae_kernels;

use candle_core::{DType, Device};

pub use errors::describe_error;
pub use memory::VramSampler;
pub use offload::{Blocks, OffloadOptions, OffloadStats, StreamedBlocks};
pub use random_weights::{InitScheme, RandomWeights};

/// Whether this build has CUDA support compiled in.
pub const fn cuda_compiled() -> bool {
    cfg!(feature = "cuda")
}

/// How many CUDA devices this process can see (0 without CUDA support, a driver or a card).
pub fn cuda_device_count() -> usize {
    #[cfg(feature = "cuda")]
    {
        use candle_core::cuda_backend::cudarc::driver::CudaContext;
        CudaContext::device_count().map_or(0, |n| n.max(0) as usize)
    }
    #[cfg(not(feature = "cuda"))]
    {
        0
    }
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
    let device = Device::new_cuda(ordinal).map_err(|e| crate::Error::InvalidInput(describe_error(&e)))?;
    check_compute_capability(&device)?;
    Ok(device)
}

/// The oldest compute capability the kernels support: Ampere (8.0).
pub const MIN_COMPUTE_CAPABILITY: u32 = 80;

/// Refuses a card the build's kernels cannot run on: older than Ampere, or older than the
/// compute capability the PTX was compiled for (PTX only JIT-compiles for its own or a newer
/// architecture).
pub fn check_card(card: u32, built_for: u32) -> crate::Result<()> {
    let dotted = |cc: u32| format!("{}.{}", cc / 10, cc % 10);
    if card < MIN_COMPUTE_CAPABILITY {
        return Err(crate::Error::InvalidInput(format!(
            "this GPU has compute capability {}, older than Ampere ({}), which the engine needs",
            dotted(card),
            dotted(MIN_COMPUTE_CAPABILITY)
        )));
    }
    if card < built_for {
        return Err(crate::Error::InvalidInput(format!(
            "this build's kernels target compute capability {} (CUDA_COMPUTE_CAP at build time) and cannot run on \
             this {} card: rebuild with scripts/run.sh, which detects the card",
            dotted(built_for),
            dotted(card)
        )));
    }
    Ok(())
}

#[cfg(feature = "cuda")]
fn check_compute_capability(device: &Device) -> crate::Result<()> {
    let Device::Cuda(dev) = device else { return Ok(()) };
    let Ok((major, minor)) = dev.cuda_stream().context().compute_capability() else {
        return Ok(());
    };
    let card = u32::try_from(major * 10 + minor).unwrap_or(0);
    check_card(card, env!("ENGINE_CUDA_COMPUTE_CAP").parse().unwrap_or(0))
}

#[cfg(not(feature = "cuda"))]
fn check_compute_capability(_: &Device) -> crate::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cards_older_than_ampere_or_than_the_build_are_refused_by_name() {
        assert!(check_card(89, 89).is_ok());
        assert!(check_card(90, 80).is_ok(), "PTX for 8.0 runs on Hopper");
        let e = check_card(75, 75).unwrap_err().to_string();
        assert!(e.contains("7.5") && e.contains("Ampere"), "{e}");
        let e = check_card(89, 90).unwrap_err().to_string();
        assert!(
            e.contains("9.0") && e.contains("8.9") && e.contains("scripts/run.sh"),
            "{e}"
        );
    }
}
