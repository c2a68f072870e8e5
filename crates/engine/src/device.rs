//! Which device computes, as users name it (`cpu`, `cuda:0`), and what its driver says of its
//! memory. A build without the `cuda` feature knows only the CPU and says how to get the rest.

use std::fmt;
use std::str::FromStr;

/// The tensor library's device handle, for callers that hold one without using the library.
pub use candle_core::Device;

use crate::error::{EngineError, Result};

/// A device as named on the command line or in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceSpec {
    Cpu,
    /// A CUDA GPU by its ordinal, as `nvidia-smi` numbers it (after `CUDA_VISIBLE_DEVICES`).
    Cuda(usize),
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim();
        if s == "cpu" {
            return Ok(DeviceSpec::Cpu);
        }
        if s == "cuda" {
            return Ok(DeviceSpec::Cuda(0));
        }
        match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => Ok(DeviceSpec::Cuda(n)),
            _ => Err(format!(
                "unknown device `{s}`: expected `cpu`, `cuda` or `cuda:N` (N = 0, 1, …)"
            )),
        }
    }
}

/// A list of devices: `cuda:0,cuda:1`. Each device once; the CPU alone or GPUs only.
pub fn parse_list(s: &str) -> std::result::Result<Vec<DeviceSpec>, String> {
    let mut out: Vec<DeviceSpec> = Vec::new();
    for part in s.split(',') {
        let d: DeviceSpec = part.parse()?;
        if out.contains(&d) {
            return Err(format!("device `{d}` is named twice in `{s}`"));
        }
        out.push(d);
    }
    if out.len() > 1 && out.contains(&DeviceSpec::Cpu) {
        return Err(format!(
            "`{s}` mixes the CPU with GPUs: serve on the CPU alone or on GPUs only"
        ));
    }
    Ok(out)
}

/// Whether this build can compute on CUDA GPUs.
pub const CUDA_BUILT: bool = cfg!(feature = "cuda");

/// Opens `spec`, ready to hold weights and compute.
pub fn open(spec: DeviceSpec) -> Result<Device> {
    match spec {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Cuda(n) => open_cuda(n),
    }
}

#[cfg(feature = "cuda")]
fn open_cuda(n: usize) -> Result<Device> {
    Device::new_cuda(n).map_err(|e| {
        EngineError::Input(format!(
            "cannot open GPU cuda:{n}: {e} (is the NVIDIA driver loaded and the ordinal below \
             the number of GPUs `nvidia-smi` lists?)"
        ))
    })
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(n: usize) -> Result<Device> {
    Err(EngineError::Input(format!(
        "cuda:{n} was asked for, but this lensd was built without CUDA: build it with \
         scripts/build-cuda.sh or `cargo build --release -p lensd --features cuda` (docs/gpu.md)"
    )))
}

/// What the driver reports of a device's memory, all processes together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriverMemory {
    pub used: u64,
    pub total: u64,
}

impl DriverMemory {
    pub fn free(&self) -> u64 {
        self.total.saturating_sub(self.used)
    }
}

/// The driver's figures for `device`; `None` for the CPU (its memory is the process's) or when
/// the driver cannot say.
pub fn driver_memory(device: &Device) -> Option<DriverMemory> {
    #[cfg(feature = "cuda")]
    if let Ok(cuda) = device.as_cuda_device() {
        let (free, total) = cuda.cuda_stream().context().mem_get_info().ok()?;
        return Some(DriverMemory {
            used: (total - free) as u64,
            total: total as u64,
        });
    }
    let _ = device;
    None
}

/// The device's name as the driver gives it (`NVIDIA H100 80GB HBM3`), or `cpu`.
pub fn name(device: &Device) -> String {
    #[cfg(feature = "cuda")]
    if let Ok(cuda) = device.as_cuda_device() {
        return cuda
            .cuda_stream()
            .context()
            .name()
            .unwrap_or_else(|_| "CUDA GPU".into());
    }
    match device {
        Device::Cpu => "cpu".into(),
        other => format!("{:?}", other.location()),
    }
}

/// What a failure on a GPU means for the device that raised it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The device had no room for an allocation: the work that asked fails, the device is fine.
    OutOfMemory,
    /// The device's context is unusable from now on (CUDA's "sticky" errors: an illegal memory
    /// access or a failed launch poisons every later call in the process), or the device is
    /// gone: the device must be taken out of service. The text is the driver's error name.
    Lost(String),
    /// Anything else (a shape error, a missing kernel, ...): the work fails, the device is fine.
    Other,
}

/// CUDA and cuBLAS error names after which the context cannot be used again.
const STICKY: &[&str] = &[
    "CUDA_ERROR_ILLEGAL_ADDRESS",
    "CUDA_ERROR_LAUNCH_FAILED",
    "CUDA_ERROR_ILLEGAL_INSTRUCTION",
    "CUDA_ERROR_MISALIGNED_ADDRESS",
    "CUDA_ERROR_INVALID_ADDRESS_SPACE",
    "CUDA_ERROR_INVALID_PC",
    "CUDA_ERROR_HARDWARE_STACK_ERROR",
    "CUDA_ERROR_ECC_UNCORRECTABLE",
    "CUDA_ERROR_LAUNCH_TIMEOUT",
    "CUDA_ERROR_CONTEXT_IS_DESTROYED",
    "CUDA_ERROR_DEVICE_UNAVAILABLE",
    "CUDA_ERROR_NO_DEVICE",
    "CUDA_ERROR_DEVICE_NOT_LICENSED",
    "CUDA_ERROR_SYSTEM_NOT_READY",
    "CUBLAS_STATUS_EXECUTION_FAILED",
    "CUBLAS_STATUS_INTERNAL_ERROR",
];

/// Out-of-memory error names of the driver, the runtime and cuBLAS.
const OUT_OF_MEMORY: &[&str] = &[
    "CUDA_ERROR_OUT_OF_MEMORY",
    "cudaErrorMemoryAllocation",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "out of memory",
];

/// Classifies an error raised while computing or copying on a GPU by the names the driver and
/// cuBLAS put in its text.
pub fn classify(message: &str) -> Fault {
    if let Some(name) = STICKY.iter().find(|n| message.contains(*n)) {
        return Fault::Lost((*name).to_string());
    }
    if OUT_OF_MEMORY.iter().any(|n| message.contains(n)) {
        return Fault::OutOfMemory;
    }
    Fault::Other
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_as_users_write_them() {
        assert_eq!("cpu".parse(), Ok(DeviceSpec::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceSpec::Cuda(0)));
        assert_eq!(" cuda:3".parse(), Ok(DeviceSpec::Cuda(3)));
        let e = "gpu0".parse::<DeviceSpec>().unwrap_err();
        assert!(e.contains("`gpu0`") && e.contains("cuda:N"), "{e}");
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
        assert_eq!(
            parse_list("cuda:0,cuda:1"),
            Ok(vec![DeviceSpec::Cuda(0), DeviceSpec::Cuda(1)])
        );
        assert!(parse_list("cuda:0,cuda:0").unwrap_err().contains("twice"));
        assert!(parse_list("cpu,cuda:0").unwrap_err().contains("mixes"));
        assert_eq!(DeviceSpec::Cuda(2).to_string(), "cuda:2");
    }

    #[test]
    fn the_cpu_opens_and_has_no_driver_figures() {
        let d = open(DeviceSpec::Cpu).unwrap();
        assert!(d.is_cpu());
        assert_eq!(driver_memory(&d), None);
        assert_eq!(name(&d), "cpu");
    }

    #[test]
    fn driver_errors_are_told_apart() {
        assert_eq!(
            classify("DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")"),
            Fault::OutOfMemory
        );
        assert_eq!(
            classify("cublas error: CUBLAS_STATUS_ALLOC_FAILED"),
            Fault::OutOfMemory
        );
        assert_eq!(
            classify("DriverError(CUDA_ERROR_ILLEGAL_ADDRESS, \"an illegal memory access\")"),
            Fault::Lost("CUDA_ERROR_ILLEGAL_ADDRESS".into())
        );
        assert_eq!(
            classify("shape mismatch in matmul, lhs: [2, 3], rhs: [4, 5]"),
            Fault::Other
        );
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_gpu_in_a_cpu_build_is_refused_with_the_way_to_build_one() {
        let e = open(DeviceSpec::Cuda(0)).unwrap_err().to_string();
        assert!(e.contains("cuda:0") && e.contains("build-cuda.sh"), "{e}");
    }
}
