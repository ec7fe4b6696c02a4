//! Counters of the emulated GPU, written as JSON.
//!
//! The driver keeps one [`Stats`] in its global state: per kernel name the summed
//! [`KernelStats`] of every launch (graph replays included; cuBLAS GEMMs count as the kernel
//! `cublasGemmEx`), the number of graph launches and the bytes copied each way.
//!
//! When `SURPLUS_EMU_STATS` names a file, the driver writes [`stats_json`] there when the
//! process exits (an `atexit` handler registered by the first successful `cuInit`). The C
//! exports [`surplus_emu_stats_reset`] and [`surplus_emu_stats_write`] reset the counters and
//! write them to a given path at any time.
//!
//! The JSON:
//! ```text
//! {"devices": [{"name", "sm", "memory_bytes", "bandwidth_gbps", "peak_bytes"}],
//!  "kernels": {NAME: {"launches", "warp_instructions", "bytes_requested",
//!                     "sectors_read", "sectors_written"}},
//!  "graph_launches": n, "memcpy_htod_bytes": n, "memcpy_dtoh_bytes": n}
//! ```

use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, CStr};

use serde_json::{json, Value};

use crate::ptx::KernelStats;

/// The environment variable naming the file written at exit.
pub const STATS_ENV: &str = "SURPLUS_EMU_STATS";

/// Every counter of the process (reset by [`surplus_emu_stats_reset`]).
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Per kernel name, summed over launches.
    pub kernels: BTreeMap<String, KernelStats>,
    /// `cuGraphLaunch` calls that ran.
    pub graph_launches: u64,
    /// Bytes copied host to device (graph replays included).
    pub memcpy_htod_bytes: u64,
    /// Bytes copied device to host (graph replays included).
    pub memcpy_dtoh_bytes: u64,
}

/// One device as reported in the JSON.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    /// Configured name (without " (emulated)").
    pub name: String,
    /// Compute capability as one number (70).
    pub sm: u32,
    /// Memory size in bytes.
    pub memory_bytes: u64,
    /// Configured bandwidth in GB/s.
    pub bandwidth_gbps: f64,
    /// Most bytes allocated at once.
    pub peak_bytes: u64,
}

impl Stats {
    /// Adds one launch's counters to kernel `name`.
    pub fn add_kernel(&mut self, name: &str, s: &KernelStats) {
        let e = self.kernels.entry(name.to_string()).or_default();
        e.launches += s.launches;
        e.warp_instructions += s.warp_instructions;
        e.bytes_requested += s.bytes_requested;
        e.sectors_read += s.sectors_read;
        e.sectors_written += s.sectors_written;
    }

    /// The JSON document described in the module documentation.
    pub fn to_json(&self, devices: &[DeviceInfo]) -> Value {
        let devices: Vec<Value> = devices
            .iter()
            .map(|d| {
                json!({
                    "name": d.name,
                    "sm": d.sm,
                    "memory_bytes": d.memory_bytes,
                    "bandwidth_gbps": d.bandwidth_gbps,
                    "peak_bytes": d.peak_bytes,
                })
            })
            .collect();
        let kernels: serde_json::Map<String, Value> = self
            .kernels
            .iter()
            .map(|(k, s)| {
                (
                    k.clone(),
                    json!({
                        "launches": s.launches,
                        "warp_instructions": s.warp_instructions,
                        "bytes_requested": s.bytes_requested,
                        "sectors_read": s.sectors_read,
                        "sectors_written": s.sectors_written,
                    }),
                )
            })
            .collect();
        json!({
            "devices": devices,
            "kernels": kernels,
            "graph_launches": self.graph_launches,
            "memcpy_htod_bytes": self.memcpy_htod_bytes,
            "memcpy_dtoh_bytes": self.memcpy_dtoh_bytes,
        })
    }
}

/// The counters so far as JSON (`{}`-shaped with no devices before `cuInit`).
pub fn stats_json() -> String {
    crate::driver::stats_value().to_string()
}

/// Writes [`stats_json`] to `path`.
pub fn write_stats(path: &str) -> Result<(), String> {
    write_value(path, &crate::driver::stats_value())
}

fn write_value(path: &str, v: &Value) -> Result<(), String> {
    let text = serde_json::to_string_pretty(v)
        .map_err(|e| format!("cannot format the statistics: {e}"))?;
    std::fs::write(path, text + "\n").map_err(|e| format!("cannot write {path}: {e}"))
}

/// The `atexit` handler: writes the statistics to `$SURPLUS_EMU_STATS` when it is set
/// (waiting at most 2 s for a thread still inside the driver).
pub(crate) extern "C" fn write_at_exit() {
    let _ = std::panic::catch_unwind(|| {
        let Some(path) = std::env::var_os(STATS_ENV) else {
            return;
        };
        let path = path.to_string_lossy().into_owned();
        if path.is_empty() {
            return;
        }
        let r = match crate::driver::stats_value_within(std::time::Duration::from_secs(2)) {
            Some(v) => write_value(&path, &v),
            None => Err("the driver stayed busy at exit; no statistics written".into()),
        };
        if let Err(e) = r {
            crate::driver::say(&format!("{STATS_ENV}: {e}"));
        }
    });
}

/// C export: zeroes every counter (kernels, graph launches, copies; peak memory is kept).
#[no_mangle]
pub extern "C" fn surplus_emu_stats_reset() {
    let _ = std::panic::catch_unwind(crate::driver::reset_stats);
}

/// C export: writes the statistics JSON to the NUL-terminated `path`; returns 0 on success,
/// 1 on failure (with a message on stderr).
///
/// # Safety
/// `path` is null or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn surplus_emu_stats_write(path: *const c_char) -> c_int {
    if path.is_null() {
        crate::driver::say("surplus_emu_stats_write: null path");
        return 1;
    }
    // SAFETY: the caller passes a NUL-terminated string.
    let p = unsafe { CStr::from_ptr(path) }
        .to_string_lossy()
        .into_owned();
    match std::panic::catch_unwind(|| write_stats(&p)) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            crate::driver::say(&format!("surplus_emu_stats_write: {e}"));
            1
        }
        Err(_) => 1,
    }
}
