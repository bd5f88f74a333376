//! Several GPUs of one host (issue 21): which devices the engine workers run on.
//!
//! - **Throughput** (the default): one worker per device, each with its own pipelines (or its
//!   own offload stream); the queue hands each job to the first free worker, so N cards run N
//!   jobs at once.
//! - **Latency**: devices are taken in pairs; each pair is one worker whose jobs run
//!   CFG-parallel, the conditional branch on the first card and the unconditional one on the
//!   second ([`engine::pipeline::LoadOptions::cfg_parallel`]), so one job finishes in about half
//!   the time. A device left over without a partner is a worker of its own.
//! - **Sequence**: one worker over every device; each forward's image tokens are split among
//!   them (Ulysses, [`engine::transformer::SequenceParallel`]): for large jobs (1024², many
//!   layers) that one job should have the whole host. The heads (24) must split evenly: 2, 3,
//!   4, 6 or 8 devices.
//!
//! Devices are `cuda:N` (or just `N`) and `cpu`; `cpu` may repeat, which gives several CPU
//! workers (how the scheduling is tested without GPUs).

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

/// How several devices serve jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Parallel {
    /// One worker per device: more jobs at once.
    #[default]
    Throughput,
    /// Two devices per job (CFG-parallel): each job sooner.
    Latency,
    /// Every device on each job (sequence-parallel): large jobs soonest.
    Sequence,
}

impl Parallel {
    pub fn name(self) -> &'static str {
        match self {
            Parallel::Throughput => "throughput",
            Parallel::Latency => "latency",
            Parallel::Sequence => "sequence",
        }
    }
}

/// One device a worker runs on.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "DeviceEntry")]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
}

/// A `devices` entry as `config.toml` may write it: `0`, `"cuda:1"` or `"cpu"`.
#[derive(Deserialize)]
#[serde(untagged)]
enum DeviceEntry {
    Ordinal(usize),
    Name(String),
}

impl TryFrom<DeviceEntry> for DeviceSpec {
    type Error = String;

    fn try_from(entry: DeviceEntry) -> Result<Self, String> {
        match entry {
            DeviceEntry::Ordinal(n) => Ok(DeviceSpec::Cuda(n)),
            DeviceEntry::Name(name) => name.parse(),
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "cpu" {
            return Ok(DeviceSpec::Cpu);
        }
        let ordinal = s.strip_prefix("cuda:").unwrap_or(s);
        ordinal
            .parse()
            .map(DeviceSpec::Cuda)
            .map_err(|_| format!("`{s}` is not a device: write a GPU number (0, 1, …), cuda:N or cpu"))
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// One engine worker: the device its pipelines live on and, in latency mode, the device that
/// runs its jobs' unconditional CFG branch, or in sequence mode the further devices sharing
/// each forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerPlan {
    pub main: DeviceSpec,
    pub cfg_peer: Option<DeviceSpec>,
    pub sequence: Vec<DeviceSpec>,
}

impl WorkerPlan {
    fn alone(main: DeviceSpec) -> Self {
        Self {
            main,
            cfg_peer: None,
            sequence: Vec::new(),
        }
    }

    /// How `/status` names the worker: `cuda:0`, or its devices joined by `+` (a CFG-parallel
    /// pair, or the devices of a sequence-parallel one).
    pub fn label(&self) -> String {
        std::iter::once(&self.main)
            .chain(&self.cfg_peer)
            .chain(&self.sequence)
            .map(DeviceSpec::to_string)
            .collect::<Vec<_>>()
            .join("+")
    }
}

/// The workers for `devices` under `parallel`. A GPU listed twice is an error (two workers
/// would share one card's memory); `cpu` may repeat.
pub fn plan(devices: &[DeviceSpec], parallel: Parallel) -> Result<Vec<WorkerPlan>, String> {
    if devices.is_empty() {
        return Err("`devices` is empty: list at least one device (0, 1, …, or cpu)".into());
    }
    for (i, d) in devices.iter().enumerate() {
        if matches!(d, DeviceSpec::Cuda(_)) && devices[..i].contains(d) {
            return Err(format!("{d} is listed twice in `devices`: each GPU serves one worker"));
        }
    }
    Ok(match parallel {
        Parallel::Throughput => devices.iter().cloned().map(WorkerPlan::alone).collect(),
        Parallel::Latency => devices
            .chunks(2)
            .map(|pair| WorkerPlan {
                cfg_peer: pair.get(1).cloned(),
                ..WorkerPlan::alone(pair[0].clone())
            })
            .collect(),
        Parallel::Sequence => vec![WorkerPlan {
            sequence: devices[1..].to_vec(),
            ..WorkerPlan::alone(devices[0].clone())
        }],
    })
}

/// The devices used when none are listed: every visible GPU for `--device cuda` (and `auto` in
/// a CUDA build), else one CPU worker. A CUDA request with no visible GPU still names `cuda:0`,
/// so the server reports why it cannot be used.
pub fn default_devices(want_cuda: bool, visible_gpus: usize) -> Vec<DeviceSpec> {
    if !want_cuda {
        return vec![DeviceSpec::Cpu];
    }
    (0..visible_gpus.max(1)).map(DeviceSpec::Cuda).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn devices(s: &str) -> Vec<DeviceSpec> {
        s.split(',').map(|d| d.parse().unwrap()).collect()
    }

    #[test]
    fn devices_parse_from_numbers_names_and_cpu() {
        assert_eq!(
            devices("0,cuda:3,cpu"),
            vec![DeviceSpec::Cuda(0), DeviceSpec::Cuda(3), DeviceSpec::Cpu]
        );
        let err = "gpu1".parse::<DeviceSpec>().unwrap_err();
        assert!(err.contains("`gpu1` is not a device"), "{err}");
        assert_eq!(DeviceSpec::Cuda(2).to_string(), "cuda:2");
        #[derive(Deserialize)]
        struct T {
            devices: Vec<DeviceSpec>,
        }
        let t: T = toml::from_str(r#"devices = [0, "cuda:1", "cpu"]"#).unwrap();
        assert_eq!(t.devices, devices("0,1,cpu"));
        assert!(toml::from_str::<T>(r#"devices = ["tpu"]"#).is_err());
    }

    #[test]
    fn throughput_is_a_worker_per_device_and_latency_pairs_them() {
        let four = devices("0,1,2,3");
        let labels = |p: Vec<WorkerPlan>| p.iter().map(WorkerPlan::label).collect::<Vec<_>>();
        assert_eq!(
            labels(plan(&four, Parallel::Throughput).unwrap()),
            ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
        );
        assert_eq!(
            labels(plan(&four, Parallel::Latency).unwrap()),
            ["cuda:0+cuda:1", "cuda:2+cuda:3"]
        );
        // An odd card out still works, alone.
        assert_eq!(
            labels(plan(&devices("0,1,2"), Parallel::Latency).unwrap()),
            ["cuda:0+cuda:1", "cuda:2"]
        );
        assert_eq!(
            labels(plan(&devices("cpu,cpu"), Parallel::Throughput).unwrap()),
            ["cpu", "cpu"]
        );
        let err = plan(&devices("0,1,0"), Parallel::Throughput).unwrap_err();
        assert!(err.contains("cuda:0 is listed twice"), "{err}");
        assert!(plan(&[], Parallel::Throughput).is_err());
    }

    #[test]
    fn by_default_every_visible_gpu_gets_a_worker() {
        assert_eq!(default_devices(true, 4), devices("0,1,2,3"));
        assert_eq!(
            default_devices(true, 0),
            devices("0"),
            "reported as unusable, not silently the CPU"
        );
        assert_eq!(default_devices(false, 8), devices("cpu"));
    }
}
