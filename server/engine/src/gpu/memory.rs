//! VRAM accounting: the device's used memory sampled on a background thread, so a run's peak
//! (including the short-lived attention buffers) is seen without instrumenting the allocator.
//!
//! "Used" is the driver's view (`total − free` from `cuMemGetInfo`): it includes the CUDA context,
//! cuBLAS workspaces and memory the stream-ordered pool keeps for reuse, so it is an upper bound
//! of what tensors occupy (PyTorch's `max_memory_allocated` counts tensors only). Peaks are
//! reported relative to a baseline taken when the sampler starts.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use candle_core::Device;

/// `(free, total)` device memory in bytes, or `None` off CUDA.
pub fn mem_info(device: &Device) -> Option<(u64, u64)> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(dev) = device {
        let (free, total) = dev.cuda_stream().context().mem_get_info().ok()?;
        return Some((free as u64, total as u64));
    }
    let _ = device;
    None
}

/// Samples the device's used memory every `period` until dropped.
pub struct VramSampler {
    baseline: u64,
    total: u64,
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    device: Device,
}

impl VramSampler {
    /// Starts sampling `device` (CUDA only; `None` elsewhere). The baseline is the memory used
    /// now (context, and whatever the process already holds).
    pub fn start(device: &Device, period: Duration) -> Option<Self> {
        let (free, total) = mem_info(device)?;
        let baseline = total - free;
        let peak = Arc::new(AtomicU64::new(baseline));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (peak, stop, device) = (peak.clone(), stop.clone(), device.clone());
            std::thread::Builder::new()
                .name("vram-sampler".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        if let Some((free, total)) = mem_info(&device) {
                            peak.fetch_max(total - free, Ordering::Relaxed);
                        }
                        std::thread::sleep(period);
                    }
                })
                .ok()?
        };
        Some(Self {
            baseline,
            total,
            peak,
            stop,
            thread: Some(thread),
            device: device.clone(),
        })
    }

    /// Used bytes now.
    pub fn used_now(&self) -> u64 {
        mem_info(&self.device).map(|(free, total)| total - free).unwrap_or(0)
    }

    /// Restarts the peak from the memory used now (e.g. between benchmark phases).
    pub fn reset_peak(&self) {
        let now = self.used_now();
        self.peak.store(now, Ordering::Relaxed);
    }

    /// Highest used bytes seen since the start or the last reset.
    pub fn peak_used(&self) -> u64 {
        self.peak.load(Ordering::Relaxed).max(self.used_now())
    }

    /// [`Self::peak_used`] minus the baseline: what this run added at its peak.
    pub fn peak_above_baseline(&self) -> u64 {
        self.peak_used().saturating_sub(self.baseline)
    }

    pub fn baseline(&self) -> u64 {
        self.baseline
    }

    pub fn total(&self) -> u64 {
        self.total
    }
}

impl Drop for VramSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Bytes as GiB, for reports.
pub fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// Each phase's peak device memory in a run, in GiB *used on the device* (driver-level, so the
/// CUDA context and the allocation pool's cache count: what `nvidia-smi` shows). `None` off CUDA.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PhaseVram {
    pub encode_prompt: Option<f64>,
    pub encode_image: Option<f64>,
    pub denoise: Option<f64>,
    pub decode: Option<f64>,
}

/// Samples a run's device memory (every 2 ms, on CUDA only) and hands out each phase's peak.
pub struct PhasePeaks(Option<VramSampler>);

impl PhasePeaks {
    pub fn start(device: &Device) -> Self {
        Self(VramSampler::start(device, Duration::from_millis(2)))
    }

    /// The peak since the previous call (or the start), in GiB; the next phase starts from now.
    pub fn phase_done(&self) -> Option<f64> {
        let sampler = self.0.as_ref()?;
        let peak = sampler.peak_used();
        sampler.reset_peak();
        Some(gib(peak))
    }
}
