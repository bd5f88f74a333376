//! CUDA failures as messages a user can act on (what happened, and what to change), for the CLI,
//! the benchmark and the server's `/status` and job errors.

/// A clear description of `e` when it is a GPU problem (out of memory, no device, a driver too
/// old for this build, a build without CUDA); `None` for every other error.
pub fn gpu_problem(e: &candle_core::Error) -> Option<String> {
    let text = e.to_string();
    let lower = text.to_lowercase();
    let has = |needles: &[&str]| needles.iter().any(|n| lower.contains(n));
    let advice = if has(&[
        "out_of_memory",
        "out of memory",
        "alloc_failed",
        "cudaerrormemoryallocation",
    ]) {
        "the GPU ran out of memory. Lower the resolution or the number of layers, close other GPU programs, \
         or turn on cpu_offload (the transformer's weights then stream from host memory: about 5 GB of VRAM \
         at 640² with 4 layers)"
    } else if has(&["no_device", "no cuda-capable device"]) {
        "no NVIDIA GPU is visible to this process (CUDA_ERROR_NO_DEVICE): check `nvidia-smi` and \
         CUDA_VISIBLE_DEVICES, or run with --device cpu"
    } else if has(&[
        "insufficient_driver",
        "unsupported_ptx_version",
        "invalid_ptx",
        "no_binary_for_gpu",
    ]) {
        "the NVIDIA driver cannot run this build's kernels: it was built with CUDA 13.0 for compute \
         capability 9.0 (H100/H200) and needs driver 580 or newer on such a GPU"
    } else if has(&["not been built with cuda", "not compiled with cuda"]) {
        "this build has no CUDA support: rebuild with `--features cuda` (needs the CUDA 13 toolkit at \
         build time), or run with --device cpu"
    } else if has(&[
        "cannot open shared object",
        "libcuda",
        "libcublas",
        "libcurand",
        "libnvrtc",
    ]) {
        "a CUDA library could not be loaded: the NVIDIA driver (libcuda.so.1) and the CUDA 13 runtime \
         libraries (libcublas.so.13, libcublasLt.so.13, libcurand.so.10, libnvrtc.so.13) must be on the \
         library path (LD_LIBRARY_PATH)"
    } else {
        return None;
    };
    Some(format!("{advice} [{}]", text.trim()))
}

/// [`gpu_problem`]'s message for GPU problems, the error's own text otherwise.
pub fn describe_error(e: &candle_core::Error) -> String {
    gpu_problem(e).unwrap_or_else(|| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_memory_and_missing_cuda_get_advice() {
        let oom = candle_core::Error::Msg("DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")".into());
        let msg = describe_error(&oom);
        assert!(
            msg.contains("ran out of memory")
                && msg.contains("cpu_offload")
                && msg.contains("CUDA_ERROR_OUT_OF_MEMORY"),
            "{msg}"
        );
        let none =
            candle_core::Error::Msg("DriverError(CUDA_ERROR_NO_DEVICE, \"no CUDA-capable device is detected\")".into());
        assert!(describe_error(&none).contains("no NVIDIA GPU is visible"));
        let other = candle_core::Error::Msg("shape mismatch".into());
        assert_eq!(gpu_problem(&other), None);
        assert_eq!(describe_error(&other), "shape mismatch");
    }

    #[test]
    fn a_cpu_build_asking_for_cuda_says_how_to_get_it() {
        if crate::gpu::cuda_compiled() {
            return;
        }
        let err = candle_core::Device::new_cuda(0).unwrap_err();
        let msg = describe_error(&err);
        assert!(msg.contains("--features cuda"), "{msg}");
    }
}
