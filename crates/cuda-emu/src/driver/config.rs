//! The devices from `SURPLUS_EMU_GPUS` ([`DeviceConfig`], [`parse_gpus`]) and what
//! `cuDeviceGetAttribute` reports for them ([`device_attribute`]).

use std::ffi::c_int;

/// The environment variable describing the devices.
pub const GPUS_ENV: &str = "SURPLUS_EMU_GPUS";
/// The devices when [`GPUS_ENV`] is unset or empty.
pub const DEFAULT_GPUS: &str = "surplus-emu:70:16:900";
/// Streaming multiprocessors reported per device.
pub const SM_COUNT: c_int = 80;
/// Bus width reported (bits); the memory clock is chosen to match the bandwidth.
pub const BUS_WIDTH_BITS: c_int = 4000;

/// One configured device.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceConfig {
    /// Name (reported with " (emulated)" appended).
    pub name: String,
    /// Compute capability, `major * 10 + minor`.
    pub sm: u32,
    /// Memory in bytes.
    pub memory: u64,
    /// Bandwidth in GB/s (10^9 bytes per second).
    pub bandwidth_gbps: f64,
}

/// Parses a [`GPUS_ENV`] value (`name:sm:memory_GiB:bandwidth_GBps,...`).
pub fn parse_gpus(spec: &str) -> Result<Vec<DeviceConfig>, String> {
    let mut out = Vec::new();
    for item in spec.split(',') {
        let item = item.trim();
        let parts: Vec<&str> = item.split(':').collect();
        if parts.len() != 4 {
            return Err(format!("`{item}` does not have 4 `:`-separated fields"));
        }
        let name = parts[0].trim();
        if name.is_empty() {
            return Err(format!("`{item}` has an empty name"));
        }
        let sm: u32 = parts[1]
            .trim()
            .parse()
            .ok()
            .filter(|s| (10..=1000).contains(s))
            .ok_or_else(|| format!("`{item}`: sm `{}` is not a number like 70", parts[1]))?;
        // Field `i` as a positive finite number below 10^6 (`what`, in `unit`, for the error).
        let positive = |i: usize, what: &str, unit: &str| {
            parts[i]
                .trim()
                .parse()
                .ok()
                .filter(|g: &f64| g.is_finite() && *g > 0.0 && *g < 1e6)
                .ok_or_else(|| {
                    format!(
                        "`{item}`: {what} `{}` is not a positive number of {unit}",
                        parts[i]
                    )
                })
        };
        let gib = positive(2, "memory", "GiB")?;
        let bw = positive(3, "bandwidth", "GB/s")?;
        let memory = (gib * (1u64 << 30) as f64).round() as u64;
        if memory == 0 {
            return Err(format!("`{item}`: memory rounds to 0 bytes"));
        }
        out.push(DeviceConfig {
            name: name.to_string(),
            sm,
            memory,
            bandwidth_gbps: bw,
        });
    }
    Ok(out)
}

/// The value of device attribute `a` (`CUdevice_attribute`) for `cfg`; 0 for any attribute
/// not in the table (a feature not offered).
pub fn device_attribute(cfg: &DeviceConfig, ordinal: usize, a: c_int) -> c_int {
    match a {
        1 => 1024,                                            // MAX_THREADS_PER_BLOCK
        2 | 3 => 1024,                                        // MAX_BLOCK_DIM_X/Y
        4 => 64,                                              // MAX_BLOCK_DIM_Z
        5 => i32::MAX,                                        // MAX_GRID_DIM_X
        6 | 7 => 65535,                                       // MAX_GRID_DIM_Y/Z
        8 => 49152,                                           // MAX_SHARED_MEMORY_PER_BLOCK
        9 => 65536,                                           // TOTAL_CONSTANT_MEMORY
        10 => 32,                                             // WARP_SIZE
        11 => i32::MAX,                                       // MAX_PITCH
        12 => 65536,                                          // MAX_REGISTERS_PER_BLOCK
        13 => 1_530_000,                                      // CLOCK_RATE (kHz)
        14 => 512,                                            // TEXTURE_ALIGNMENT
        15 => 1,                                              // GPU_OVERLAP
        16 => SM_COUNT,                                       // MULTIPROCESSOR_COUNT
        17 => 0,                                              // KERNEL_EXEC_TIMEOUT
        18 => 0,                                              // INTEGRATED
        19 => 1,                                              // CAN_MAP_HOST_MEMORY
        20 => 0,                                              // COMPUTE_MODE (default)
        30 => 512,                                            // SURFACE_ALIGNMENT
        31 => 1,                                              // CONCURRENT_KERNELS
        32 => 0,                                              // ECC_ENABLED
        33 => ordinal as c_int + 1,                           // PCI_BUS_ID
        34 => 0,                                              // PCI_DEVICE_ID
        35 => 0,                                              // TCC_DRIVER
        36 => (cfg.bandwidth_gbps * 1000.0).round() as c_int, // MEMORY_CLOCK_RATE (kHz)
        37 => BUS_WIDTH_BITS,                                 // GLOBAL_MEMORY_BUS_WIDTH
        38 => 6 << 20,                                        // L2_CACHE_SIZE
        39 => 2048,                                           // MAX_THREADS_PER_MULTIPROCESSOR
        40 => 2,                                              // ASYNC_ENGINE_COUNT
        41 => 1,                                              // UNIFIED_ADDRESSING
        50 => 0,                                              // PCI_DOMAIN_ID
        51 => 32,                                             // TEXTURE_PITCH_ALIGNMENT
        75 => (cfg.sm / 10) as c_int,                         // COMPUTE_CAPABILITY_MAJOR
        76 => (cfg.sm % 10) as c_int,                         // COMPUTE_CAPABILITY_MINOR
        78 => 1,                                              // STREAM_PRIORITIES_SUPPORTED
        79 | 80 => 1,                                         // GLOBAL/LOCAL_L1_CACHE_SUPPORTED
        81 => 98304, // MAX_SHARED_MEMORY_PER_MULTIPROCESSOR
        82 => 65536, // MAX_REGISTERS_PER_MULTIPROCESSOR
        83 => 0,     // MANAGED_MEMORY (not emulated)
        87 => 32,    // SINGLE_TO_DOUBLE_PRECISION_PERF_RATIO
        90 => 1,     // COMPUTE_PREEMPTION_SUPPORTED
        95 => 0,     // COOPERATIVE_LAUNCH (not emulated)
        97 => 98304, // MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
        106 => 32,   // MAX_BLOCKS_PER_MULTIPROCESSOR
        111 => 0,    // RESERVED_SHARED_MEMORY_PER_BLOCK
        115 => 0,    // MEMORY_POOLS_SUPPORTED (cuMemAllocAsync not emulated)
        _ => 0,
    }
}
