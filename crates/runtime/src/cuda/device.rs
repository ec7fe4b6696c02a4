//! The NVIDIA driver and its GPUs, probed through cudarc without ever letting it panic:
//! the driver library is located and opened first, and every failure becomes a reason string.

use std::sync::OnceLock;

use cudarc::driver::{result, sys};

use super::libs::{self, Found, Lib};

/// One GPU as the driver reports it: a description, nothing opened (see
/// [`super::gpu::GpuContext`] for a GPU ready to run kernels).
#[derive(Clone, Debug)]
pub struct GpuInfo {
    /// Driver ordinal.
    pub ordinal: usize,
    /// Marketing name.
    pub name: String,
    /// Compute capability as `major * 10 + minor` (61, 70, 90).
    pub sm: u32,
    /// Device memory in bytes.
    pub memory_bytes: u64,
    /// Streaming multiprocessors.
    pub sm_count: u32,
    /// Peak memory bandwidth in bytes/s from the memory clock and bus width, when the driver
    /// reports them.
    pub peak_bandwidth: Option<f64>,
}

/// What the driver probe found.
#[derive(Clone, Debug)]
pub struct DriverInfo {
    /// The driver library file, when known.
    pub library: Option<Found>,
    /// CUDA version the driver supports, as (major, minor) (12080 → (12, 8)).
    pub cuda_version: (u32, u32),
    /// The GPUs.
    pub gpus: Vec<GpuInfo>,
}

/// Probes the driver once per process: `Err` holds why CUDA cannot be used.
pub fn probe() -> Result<&'static DriverInfo, String> {
    static PROBE: OnceLock<Result<DriverInfo, String>> = OnceLock::new();
    PROBE
        .get_or_init(probe_uncached)
        .as_ref()
        .map_err(Clone::clone)
}

fn probe_uncached() -> Result<DriverInfo, String> {
    // Open our own find first (by full path), so that cudarc's dlopen by soname finds it
    // loaded even when its directory is not on the loader's search path.
    let found = libs::find(Lib::Driver);
    let preferred = found
        .iter()
        .find(|f| f.so_version() == [1])
        .or(found.first())
        .cloned();
    let mut load_error = None;
    if let Some(f) = &preferred {
        if let Err(e) = libs::load(f) {
            load_error = Some(e);
        }
    }
    // SAFETY: only tries to open the driver library by its candidate names.
    if !unsafe { sys::is_culib_present() } {
        return Err(match load_error {
            Some(e) => format!("the NVIDIA driver library could not be loaded: {e}"),
            None => "no NVIDIA driver: libcuda.so.1 was not found (no GPU driver installed, \
                     or a container started without GPU access)"
                .to_string(),
        });
    }
    result::init().map_err(|e| format!("the NVIDIA driver failed to initialize: {e}"))?;
    let mut v = 0;
    // SAFETY: a valid out-pointer.
    unsafe { sys::cuDriverGetVersion(&mut v) }
        .result()
        .map_err(|e| format!("cuDriverGetVersion: {e}"))?;
    let cuda_version = ((v / 1000) as u32, ((v % 1000) / 10) as u32);
    let n = result::device::get_count().map_err(|e| format!("cuDeviceGetCount: {e}"))?;
    if n <= 0 {
        return Err("the NVIDIA driver reports no GPU".into());
    }
    let mut gpus = Vec::new();
    for i in 0..n {
        gpus.push(gpu(i).map_err(|e| format!("GPU {i}: {e}"))?);
    }
    Ok(DriverInfo {
        library: preferred,
        cuda_version,
        gpus,
    })
}

fn gpu(i: i32) -> Result<GpuInfo, result::DriverError> {
    use sys::CUdevice_attribute::*;
    let dev = result::device::get(i)?;
    // SAFETY: `dev` came from cuDeviceGet.
    let attr = |a| unsafe { result::device::get_attribute(dev, a) };
    let major = attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
    let minor = attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
    let sm_count = attr(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
    // kHz and bits; double data rate. Newer drivers may report 0.
    let clock = attr(CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE).unwrap_or(0);
    let bus = attr(CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH).unwrap_or(0);
    let peak_bandwidth =
        (clock > 0 && bus > 0).then(|| 2.0 * clock as f64 * 1e3 * bus as f64 / 8.0);
    // SAFETY: `dev` came from cuDeviceGet.
    let memory_bytes = unsafe { result::device::total_mem(dev)? } as u64;
    Ok(GpuInfo {
        ordinal: i as usize,
        name: result::device::get_name(dev)?,
        sm: (major * 10 + minor) as u32,
        memory_bytes,
        sm_count: sm_count as u32,
        peak_bandwidth,
    })
}
