//! Where and how the models run: the device (CPU or a CUDA card), the dtype, offload, and why a
//! requested device cannot be used. The server and the CLI choose it the same way.

use candle_core::{DType, Device};

use crate::{Error, Result};

/// Where and how the models run.
#[derive(Debug, Clone)]
pub struct Runtime {
    pub device: Device,
    pub dtype: DType,
    /// `cpu_offload`: stream the transformer's and text encoder's layers from host memory (CUDA
    /// only; ignored on the CPU).
    pub offload: bool,
    /// Why the requested device cannot be used (no GPU, a driver too old, a build without CUDA):
    /// the server then stays up and reports it in `/status` instead of exiting.
    pub problem: Option<String>,
}

impl Runtime {
    /// `cuda` when asked for (an error if this build or machine has none, or the card is one
    /// the build's kernels cannot run on); `auto` = CUDA in a CUDA build, else the CPU.
    pub fn select(device: &str, dtype: Option<&str>) -> Result<Self> {
        let device = match device {
            "cpu" => Device::Cpu,
            "cuda" => crate::gpu::cuda_device(0).map_err(|e| Error::InvalidInput(format!("--device cuda: {e}")))?,
            // One of several GPUs (`--devices`): `cuda:N`.
            other if other.starts_with("cuda:") => {
                let ordinal = other["cuda:".len()..]
                    .parse()
                    .map_err(|_| Error::InvalidInput(format!("`{other}` is not cuda:<number>")))?;
                crate::gpu::cuda_device(ordinal).map_err(|e| Error::InvalidInput(format!("{other}: {e}")))?
            }
            "auto" if crate::gpu::cuda_compiled() => crate::gpu::cuda_device(0)?,
            "auto" => Device::Cpu,
            other => {
                return Err(Error::InvalidInput(format!(
                    "unknown device `{other}` (cpu, cuda, cuda:N or auto)"
                )))
            }
        };
        let dtype = match dtype {
            None if device.is_cuda() => DType::BF16,
            None | Some("f32") => DType::F32,
            Some("bf16") => DType::BF16,
            Some("f16") => DType::F16,
            Some(other) => {
                return Err(Error::InvalidInput(format!(
                    "unknown dtype `{other}` (f32, bf16 or f16)"
                )))
            }
        };
        Ok(Self {
            device,
            dtype,
            offload: false,
            problem: None,
        })
    }

    /// A runtime that cannot run jobs, and says why.
    pub fn unavailable(problem: String) -> Self {
        Self {
            device: Device::Cpu,
            dtype: DType::F32,
            offload: false,
            problem: Some(problem),
        }
    }

    /// What the server prints at start: device, dtype, offload and the card's free memory.
    pub fn startup_summary(&self) -> String {
        if let Some(problem) = &self.problem {
            return format!("no usable device ({problem})");
        }
        let mut line = self.describe();
        if let Some((free, total)) = crate::gpu::memory::mem_info(&self.device) {
            let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
            line += &format!(", VRAM {:.1} of {:.1} GiB free", gib(free), gib(total));
        }
        if !self.device.is_cuda() {
            line += " (the CPU runs only the tiny test models)";
        }
        line
    }

    pub fn describe(&self) -> String {
        if self.problem.is_some() {
            return "unavailable".into();
        }
        let device = if self.device.is_cuda() { "cuda" } else { "cpu" };
        let offload = if self.offload && self.device.is_cuda() {
            " cpu-offload"
        } else {
            ""
        };
        format!("{device} {:?}{offload}", self.dtype).to_lowercase()
    }
}

/// A card with at least this much memory keeps the text encoder (Qwen2.5-VL-7B, ~16.6 GB in
/// bf16) resident beside the DiT (~41 GB) and the VAE, with room left for the activations of
/// 1024², 10 layers.
pub const KEEP_TEXT_ENCODER_MIN_VRAM: u64 = 70 << 30;

/// Whether the text encoder stays in memory between jobs, and why: a sentence for `/status`.
pub fn text_encoder_residency(on_cuda: bool, offload: bool, total_vram: Option<u64>) -> (bool, String) {
    if !on_cuda {
        return (true, "kept in memory between jobs (CPU)".into());
    }
    if offload {
        return (
            true,
            "kept between jobs as packed host copies (cpu_offload: ~16 GB of host memory, streamed per job)".into(),
        );
    }
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    match total_vram {
        Some(total) if total >= KEEP_TEXT_ENCODER_MIN_VRAM => (
            true,
            format!("resident on the GPU between jobs ({:.0} GiB card)", gib(total)),
        ),
        Some(total) => (
            false,
            format!(
                "loaded for each job and dropped before denoising (a {:.0} GiB card; kept from {:.0} GiB)",
                gib(total),
                gib(KEEP_TEXT_ENCODER_MIN_VRAM)
            ),
        ),
        None => (false, "loaded for each job and dropped before denoising".into()),
    }
}

/// A card with at least this much memory keeps both pipelines loaded (switching between
/// decompose and edit then reads nothing): two DiTs (~41 GB each), one text encoder shared by
/// both (~16.6 GB), two VAEs and the activations of 1024², 10 layers. An H200 (141 GB) does; an
/// H100 (80 GB) keeps one at a time.
pub const KEEP_BOTH_PIPELINES_MIN_VRAM: u64 = 125 << 30;

/// With `cpu_offload`, both pipelines' packed host copies (~99 GB: two DiTs, one text encoder)
/// stay in page-locked host memory from this much host memory on, leaving the rest to the
/// system.
pub const KEEP_BOTH_PIPELINES_MIN_HOST: u64 = 160 << 30;

/// Whether the decompose and edit pipelines both stay loaded, and why: a sentence for `/status`.
/// Otherwise loading one drops the other.
pub fn pipeline_residency(
    on_cuda: bool,
    offload: bool,
    total_vram: Option<u64>,
    host_memory: Option<u64>,
) -> (bool, String) {
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    if !on_cuda {
        return (true, "both pipelines stay loaded (CPU)".into());
    }
    let (what, have, need) = if offload {
        ("host memory (cpu_offload)", host_memory, KEEP_BOTH_PIPELINES_MIN_HOST)
    } else {
        ("card", total_vram, KEEP_BOTH_PIPELINES_MIN_VRAM)
    };
    match have {
        Some(have) if have >= need => (
            true,
            format!(
                "both pipelines stay loaded ({:.0} GiB {what}), one text encoder shared",
                gib(have)
            ),
        ),
        Some(have) => (
            false,
            format!(
                "one pipeline at a time: loading decompose drops edit and back ({:.0} GiB {what}; both from {:.0} GiB)",
                gib(have),
                gib(need)
            ),
        ),
        None => (false, "one pipeline at a time".into()),
    }
}

/// Total host memory (`MemTotal` of /proc/meminfo), where the system says.
pub fn host_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib << 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_pipelines_stay_where_memory_allows() {
        let both =
            |on_cuda, offload, vram: Option<u64>, host: Option<u64>| pipeline_residency(on_cuda, offload, vram, host);
        assert!(both(false, false, None, None).0, "CPU");
        let (kept, why) = both(true, false, Some(141 << 30), Some(64 << 30));
        assert!(
            kept && why.contains("141 GiB card") && why.contains("shared"),
            "an H200: {why}"
        );
        let (kept, why) = both(true, false, Some(80 << 30), Some(1 << 40));
        assert!(
            !kept && why.contains("80 GiB card") && why.contains("125 GiB"),
            "an H100: {why}"
        );
        let (kept, why) = both(true, true, Some(24 << 30), Some(64 << 30));
        assert!(
            !kept && why.contains("64 GiB host"),
            "a 24 GB card on a 64 GB host: {why}"
        );
        assert!(
            both(true, true, Some(24 << 30), Some(256 << 30)).0,
            "a 256 GB host keeps both host copies"
        );
        assert!(!both(true, false, None, None).0, "unknown memory: the safe choice");
        assert!(
            host_memory().is_some_and(|m| m > 1 << 30),
            "this Linux machine reports its memory"
        );
    }

    #[test]
    fn the_text_encoder_stays_where_memory_allows() {
        let keep = |on_cuda, offload, vram: Option<u64>| text_encoder_residency(on_cuda, offload, vram);
        assert!(keep(false, false, None).0, "CPU");
        let (kept, why) = keep(true, true, Some(24 << 30));
        assert!(kept && why.contains("host"), "offload keeps host copies: {why}");
        let (kept, why) = keep(true, false, Some(141 << 30));
        assert!(kept && why.contains("141 GiB"), "an H200 keeps it resident: {why}");
        let (kept, why) = keep(true, false, Some(24 << 30));
        assert!(
            !kept && why.contains("24 GiB") && why.contains("70 GiB"),
            "a 24 GB card reloads it: {why}"
        );
        assert!(!keep(true, false, None).0, "unknown memory: the safe choice");
    }
}
