//! With the `cuda` feature, compiles the engine's own CUDA kernels (`src/gpu/kernels/*.cu`) to
//! PTX with nvcc (the CUDA 13.0 toolchain candle's kernels are built with), embedded in the
//! binary and JIT-compiled by the driver on first use. With `cudnn-attention`, also compiles the
//! C++ shim over cuDNN's SDPA (`src/gpu/cudnn/sdpa.cpp`; headers from CUDNN_FRONTEND_INCLUDE,
//! CUDNN_INCLUDE and CUDA_ROOT). Without the features nothing happens, so CI and the CPU build
//! need no toolkit.

use std::path::PathBuf;
use std::process::Command;

const KERNELS: &[&str] = &["softmax", "fused", "attention", "attention_sm90"];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    for k in KERNELS {
        println!("cargo:rerun-if-changed=src/gpu/kernels/{k}.cu");
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".into());
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    for k in KERNELS {
        let ptx = out.join(format!("{k}.ptx"));
        // The Hopper kernel uses wgmma and setmaxnreg, which exist only for the "a" target of
        // compute capability 9.0; for any other GPU it is left out (an empty PTX string).
        let arch = if *k == "attention_sm90" {
            if cap != "90" {
                std::fs::write(&ptx, "").expect("writing an empty PTX");
                continue;
            }
            "compute_90a".to_string()
        } else {
            format!("compute_{cap}")
        };
        let status = Command::new(&nvcc)
            .args(["-ptx", "-O3", &format!("-arch={arch}"), "-o"])
            .arg(&ptx)
            .arg(format!("src/gpu/kernels/{k}.cu"))
            .status()
            .unwrap_or_else(|e| {
                panic!("running {nvcc} for src/gpu/kernels/{k}.cu: {e} (source setup_cuda_toolchain.sh)")
            });
        assert!(status.success(), "nvcc failed on src/gpu/kernels/{k}.cu");
    }
    #[cfg(feature = "cudnn-attention")]
    build_cudnn_shim();
}

#[cfg(feature = "cudnn-attention")]
fn build_cudnn_shim() {
    println!("cargo:rerun-if-changed=src/gpu/cudnn/sdpa.cpp");
    for var in ["CUDNN_FRONTEND_INCLUDE", "CUDNN_INCLUDE", "CUDA_ROOT"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let need = |var: &str| {
        std::env::var(var)
            .unwrap_or_else(|_| panic!("the cudnn-attention feature needs {var} (scripts/gpu_prepare.sh sets it up)"))
    };
    let cuda_root = need("CUDA_ROOT");
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .opt_level(2)
        .warnings(false)
        .include(need("CUDNN_FRONTEND_INCLUDE"))
        .include(need("CUDNN_INCLUDE"))
        .include(format!("{cuda_root}/include"))
        .file("src/gpu/cudnn/sdpa.cpp")
        .compile("engine_cudnn_sdpa");
    // The frontend dlopens libcudnn and libcudart itself.
    println!("cargo:rustc-link-lib=dylib=dl");
}
