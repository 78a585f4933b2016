//! Choosing the burn device the scorer runs on.

use std::str::FromStr;

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::AnalyzerError;

/// A device by name: `cpu` (burn's `flex` backend, always available), `wgpu` (feature `wgpu`:
/// the best adapter; `wgpu-cpu` for a CPU Vulkan adapter such as Mesa's lavapipe) or `cuda`
/// (feature `cuda`, GPU 0; `cuda:N` for GPU N).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceName(pub String);

impl FromStr for DeviceName {
    type Err = AnalyzerError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let d = DeviceName(s.to_string());
        d.device()?;
        Ok(d)
    }
}

impl DeviceName {
    /// The device (without autodiff).
    pub fn device(&self) -> Result<Device, AnalyzerError> {
        let s = self.0.as_str();
        match s {
            "cpu" | "flex" => Ok(Device::flex()),
            #[cfg(feature = "wgpu")]
            "wgpu" => Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)),
            #[cfg(feature = "wgpu")]
            "wgpu-cpu" => Ok(Device::wgpu(burn::tensor::DeviceKind::Cpu)),
            #[cfg(feature = "cuda")]
            "cuda" => Ok(Device::cuda(0)),
            #[cfg(feature = "cuda")]
            _ if s.starts_with("cuda:") => s[5..]
                .parse::<usize>()
                .map(Device::cuda)
                .map_err(|_| AnalyzerError::argument("device", format!("bad GPU index in {s:?}"))),
            _ => Err(AnalyzerError::argument(
                "device",
                format!(
                    "unknown or not compiled in: {s:?} (available: {})",
                    available().join(", ")
                ),
            )),
        }
    }
}

/// Device names this build supports.
pub fn available() -> Vec<&'static str> {
    let mut v = vec!["cpu"];
    if cfg!(feature = "wgpu") {
        v.extend(["wgpu", "wgpu-cpu"]);
    }
    if cfg!(feature = "cuda") {
        v.extend(["cuda", "cuda:N"]);
    }
    v
}
