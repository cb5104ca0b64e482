//! Picking a backend by name (`cpu`, `cuda`, `cuda:N`), opening it, and the
//! memory a device offers a model.
//!
//! Commands stay generic: [`Device::open`] gives an [`AnyBackend`], and
//! [`with_backend!`](crate::with_backend) runs one generic expression on
//! whichever backend it holds, so there is one code path per command.

use std::fmt;

use super::cuda::Cuda;
use super::Cpu;

/// A compute device: the host CPU or CUDA device `N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Device, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| format!("unknown device `{s}` (use cpu, cuda or cuda:N)")),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// An opened backend of either kind.
#[derive(Clone)]
pub enum AnyBackend {
    Cpu(Cpu),
    Cuda(Cuda),
}

/// Opening or querying a device failed (no driver, no NVRTC, no such device).
#[derive(Debug, thiserror::Error)]
#[error("{device}: {msg}")]
pub struct DeviceError {
    pub device: Device,
    pub msg: String,
}

impl Device {
    /// Opens the backend: free for `cpu`; for `cuda:N` loads the driver and
    /// compiles (or takes from the PTX cache) every kernel. Without a GPU this
    /// is an error naming the device, never a panic.
    pub fn open(&self) -> Result<AnyBackend, DeviceError> {
        match *self {
            Device::Cpu => Ok(AnyBackend::Cpu(Cpu)),
            Device::Cuda(n) => Cuda::new(n).map(AnyBackend::Cuda).map_err(|e| DeviceError {
                device: *self,
                msg: e.to_string(),
            }),
        }
    }

    /// Memory the device has for a model right now: `MemAvailable` of
    /// `/proc/meminfo` for the CPU, free device memory for CUDA (no kernel
    /// is compiled).
    pub fn memory(&self) -> Result<DeviceMemory, DeviceError> {
        let err = |msg: String| DeviceError { device: *self, msg };
        match *self {
            Device::Cpu => {
                let text = std::fs::read_to_string("/proc/meminfo")
                    .map_err(|e| err(format!("/proc/meminfo: {e}")))?;
                parse_meminfo(&text)
                    .ok_or_else(|| err("/proc/meminfo has no MemAvailable / MemTotal".into()))
            }
            Device::Cuda(n) => igpo_kernels::launch::device_memory(n)
                .map(|m| DeviceMemory {
                    available: m.free as u64,
                    total: m.total as u64,
                    name: Some(m.name),
                })
                .map_err(|e| err(e.to_string())),
        }
    }

    /// Bytes of training state per parameter (activations not included).
    /// CPU: f32 weights, their packed panels for `x @ w^T` and the
    /// transposed ones for the backward's `dy W` (`backend/cpu/packed.rs`),
    /// f32 gradients, AdamW m and v. CUDA: bf16 weights + f32 gradients
    /// (what its `linear_backward` adds into) + f32 master + AdamW m, v + a
    /// frozen bf16 reference policy for the KL term.
    pub fn training_bytes_per_param(&self) -> u64 {
        match self {
            Device::Cpu => 4 + 4 + 4 + 4 + 8,
            Device::Cuda(_) => 2 + 4 + 4 + 8 + 2,
        }
    }
}

/// Memory a device offers, in bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceMemory {
    /// Host: `MemAvailable`; CUDA: free device memory.
    pub available: u64,
    pub total: u64,
    /// The GPU's name (CUDA only).
    pub name: Option<String>,
}

/// `MemAvailable` and `MemTotal` (kB in the file) of a `/proc/meminfo` text.
pub fn parse_meminfo(text: &str) -> Option<DeviceMemory> {
    let field = |key: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(key))?;
        let rest = line[key.len()..].trim();
        let kb: u64 = rest.split_whitespace().next()?.parse().ok()?;
        Some(kb * 1024)
    };
    Some(DeviceMemory {
        available: field("MemAvailable:")?,
        total: field("MemTotal:")?,
        name: None,
    })
}

/// Whether training state of `needs` bytes fits in `mem`.
#[derive(Clone, Debug, PartialEq)]
pub struct Fit {
    pub needs: u64,
    pub available: u64,
    pub total: u64,
}

impl Fit {
    pub fn new(needs: u64, mem: &DeviceMemory) -> Fit {
        Fit {
            needs,
            available: mem.available,
            total: mem.total,
        }
    }

    pub fn fits(&self) -> bool {
        self.needs <= self.available
    }

    /// `fits on cpu for training: yes (needs ~X GiB of Y GiB available, Z GiB total; plus activations)`.
    pub fn line(&self, device: &Device) -> String {
        const GIB: f64 = (1u64 << 30) as f64;
        let what = match device {
            Device::Cpu => "available",
            Device::Cuda(_) => "free",
        };
        format!(
            "fits on {device} for training: {} (needs ~{:.2} GiB of {:.2} GiB {what}, {:.2} GiB total; plus activations)",
            if self.fits() { "yes" } else { "no" },
            self.needs as f64 / GIB,
            self.available as f64 / GIB,
            self.total as f64 / GIB,
        )
    }
}

/// Runs a generic expression on the backend an [`AnyBackend`] holds:
/// `with_backend!(any, b => run_sft(b, &cfg, &text, &opts))`. The expression
/// is compiled once per backend type; there is one source for both.
#[macro_export]
macro_rules! with_backend {
    ($backend:expr, $b:ident => $body:expr) => {
        match $backend {
            $crate::backend::AnyBackend::Cpu($b) => $body,
            $crate::backend::AnyBackend::Cuda($b) => $body,
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMINFO: &str = "MemTotal:       24576000 kB\nMemFree:        16000000 kB\nMemAvailable:   20971520 kB\nBuffers:          100 kB\n";

    #[test]
    fn parses_devices() {
        assert_eq!("cpu".parse::<Device>(), Ok(Device::Cpu));
        assert_eq!("cuda".parse::<Device>(), Ok(Device::Cuda(0)));
        assert_eq!("cuda:3".parse::<Device>(), Ok(Device::Cuda(3)));
        for bad in ["gpu", "cuda:", "cuda:x", "CPU", ""] {
            assert!(bad.parse::<Device>().is_err(), "{bad}");
        }
        assert_eq!(Device::Cuda(2).to_string(), "cuda:2");
    }

    #[test]
    fn meminfo_and_fit_arithmetic() {
        let mem = parse_meminfo(MEMINFO).unwrap();
        assert_eq!(mem.available, 20 * (1 << 30));
        assert_eq!(mem.total, 24576000 * 1024);
        assert!(parse_meminfo("MemTotal: 10 kB\n").is_none());
        assert!(parse_meminfo("garbage").is_none());

        // 8e8 parameters at 24 B each on the CPU: 17.88 GiB of 20 GiB.
        let per = Device::Cpu.training_bytes_per_param();
        let fit = Fit::new(800_000_000 * per, &mem);
        assert!(fit.fits());
        assert_eq!(
            fit.line(&Device::Cpu),
            "fits on cpu for training: yes (needs ~17.88 GiB of 20.00 GiB available, 23.44 GiB total; plus activations)"
        );
        // 1.5e9 parameters: 33.53 GiB does not fit in 20 GiB.
        let fit = Fit::new(1_500_000_000 * per, &mem);
        assert!(!fit.fits());
        assert!(fit
            .line(&Device::Cpu)
            .starts_with("fits on cpu for training: no (needs ~33.53 GiB"));
        // Exactly the available bytes fits.
        assert!(Fit::new(mem.available, &mem).fits());
        assert!(Fit::new(
            18,
            &DeviceMemory {
                available: 20,
                total: 40,
                name: None
            }
        )
        .line(&Device::Cuda(1))
        .contains("on cuda:1 for training: yes"));
    }
}
