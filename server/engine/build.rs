//! With the `cuda` feature, compiles the engine's own CUDA kernels (`src/gpu/kernels/*.cu`) to
//! PTX with nvcc (the CUDA 13.0 toolchain candle's kernels are built with), embedded in the
//! binary and JIT-compiled by the driver on first use. With `cudnn-attention`, also compiles the
//! C++ shim over cuDNN's SDPA (`src/gpu/cudnn/sdpa.cpp`; headers from CUDNN_FRONTEND_INCLUDE,
//! CUDNN_INCLUDE and CUDA_ROOT). Without the features nothing happens, so CI and the CPU build
//! need no toolkit.

use std::path::PathBuf;
use std::process::Command;

const KERNELS: &[&str] = &["softmax", "fused", "vae", "attention", "attention_sm90"];

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
    let cap = compute_capability();
    // The runtime refuses a card older than this (its PTX would not load there).
    println!("cargo:rustc-env=ENGINE_CUDA_COMPUTE_CAP={cap}");
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

/// `CUDA_COMPUTE_CAP` (e.g. `89` or `8.9`), else the first GPU's as `nvidia-smi` reports it, else
/// 90 (H100/H200: the GPU machine builds here, where there is no GPU to ask).
fn compute_capability() -> String {
    let from_env = std::env::var("CUDA_COMPUTE_CAP").ok();
    let detected = || {
        let out = Command::new("nvidia-smi")
            .args(["--query-gpu=compute_cap", "--format=csv,noheader"])
            .output()
            .ok()?;
        let first = String::from_utf8_lossy(&out.stdout).lines().next()?.trim().to_string();
        out.status.success().then_some(first)
    };
    let cap = from_env.or_else(detected).unwrap_or_else(|| {
        println!(
            "cargo:warning=no CUDA_COMPUTE_CAP and no GPU to ask (nvidia-smi): building for compute capability 9.0"
        );
        "90".into()
    });
    let cap = cap.replace('.', "");
    assert!(
        (2..=3).contains(&cap.len()) && cap.bytes().all(|b| b.is_ascii_digit()),
        "CUDA_COMPUTE_CAP must look like 89, 8.9 or 120, got {cap}"
    );
    cap
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
