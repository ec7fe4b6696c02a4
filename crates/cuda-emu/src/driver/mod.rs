//! The CUDA driver API, emulated: `#[no_mangle] extern "C"` functions with the exact ABI of
//! `libcuda.so.1` (CUDA 12.8), over one global state guarded by a mutex.
//!
//! # Devices
//! From `SURPLUS_EMU_GPUS` (read by the first successful `cuInit`): comma-separated
//! `name:sm:memory_GiB:bandwidth_GBps` (`V100:70:32:900,P40:61:24:347,tiny:70:0.25:900`),
//! default `surplus-emu:70:16:900`. Bad syntax makes `cuInit` fail with
//! `CUDA_ERROR_INVALID_VALUE` and a message on stderr. Every device has one primary context.
//! Memory clock and bus width are reported so that `2 · clock_kHz · 1000 · bus_bits / 8` is
//! the configured bandwidth exactly (bus 4000 bits, clock = GB/s · 1000 kHz).
//!
//! # Execution
//! Everything runs synchronously when it is issued (a stream is only an ordering label), so
//! events are complete as soon as recorded and synchronisations only report errors.
//!
//! # Errors
//! Every export catches panics (`CUDA_ERROR_UNKNOWN`, 999, with a message) and validates every
//! handle (`CUDA_ERROR_INVALID_HANDLE`, 400, naming the function). A kernel fault is printed
//! in compute-sanitizer style and makes the device's context sticky: the launch itself returns
//! `CUDA_SUCCESS` (as an asynchronous launch would), every later call on that context returns
//! `CUDA_ERROR_ILLEGAL_ADDRESS` (700) for memory faults or `CUDA_ERROR_LAUNCH_FAILED` (719)
//! otherwise, and no kernel runs any more (`cuDevicePrimaryCtxReset_v2` clears it). A launch
//! whose shape is out of range fails at once with `CUDA_ERROR_INVALID_VALUE` (the driver API
//! has no `INVALID_CONFIGURATION`). Copies whose device range is not inside one live
//! allocation fail at once with `CUDA_ERROR_INVALID_VALUE` (graph replays: sticky 700).
//!
//! # Stream capture
//! `cuStreamBeginCapture_v2` records the stream's kernel launches (with a copy of their
//! parameter bytes), memsets, device-to-device copies and copies from/to pinned host memory
//! (`cuMemAllocHost_v2`/`cuMemHostAlloc`: the host pointer is kept and read or written at
//! replay, as a real memcpy node does). Refused on a capturing stream, with
//! `CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED` (900), a stderr line naming the call, and the
//! capture invalidated (`cuStreamEndCapture` then returns 901): synchronising it, querying it,
//! and pageable host copies on it; and, from the capturing thread (any thread for the global
//! mode; the relaxed mode is treated as thread-local, stricter than CUDA), `cuMemAlloc_v2`,
//! `cuMemFree_v2`, `cuCtxSynchronize`, synchronising the legacy stream and the synchronous
//! `cuMemcpy*`/`cuMemset*`. `cuGraphLaunch` replays the nodes in order.
//!
//! # Not emulated
//! Other plausible entry points (memory pools, managed memory, 2D copies, occupancy, ...)
//! exist as stubs that print `surplus-cuda-emu: <name> is not emulated` and return
//! `CUDA_ERROR_NOT_SUPPORTED` (801), so a caller gets an error rather than cudarc's
//! "Missing symbol" panic. (They take no arguments: on the C calling conventions of x86-64
//! and aarch64 a callee may ignore the arguments it is passed.)

#![allow(non_snake_case, clippy::missing_safety_doc, clippy::too_many_arguments)]

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, MutexGuard, Once};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::mem::Memory;
use crate::ptx::{Fault, Kernel, KernelStats, Launch, Module};
use crate::stats::{DeviceInfo, Stats};

mod config;
mod device;
mod elf;
mod errors;
mod graph;
mod launch;
mod memory;
mod module;
mod state;
mod stream;
mod stubs;

pub use config::{
    device_attribute, parse_gpus, DeviceConfig, BUS_WIDTH_BITS, DEFAULT_GPUS, GPUS_ENV, SM_COUNT,
};
pub use device::*;
use elf::elf_len;
pub use elf::ptx_from_cubin;
pub use errors::*;
pub use graph::*;
pub use launch::*;
pub use memory::*;
pub use module::*;
pub(crate) use state::{reset_stats, stats_value, stats_value_within};
pub use stream::*;
pub use stubs::*;

/// `CUresult`.
pub type CUresult = c_int;
/// `CUdevice` (an ordinal).
pub type CUdevice = c_int;
/// `CUdeviceptr`.
pub type CUdeviceptr = u64;
/// Any opaque handle (`CUcontext`, `CUstream`, `CUevent`, `CUmodule`, `CUfunction`,
/// `CUgraph`, `CUgraphExec`).
pub type Handle = *mut c_void;

/// `CUDA_SUCCESS`.
pub const CUDA_SUCCESS: CUresult = 0;
/// `CUDA_ERROR_INVALID_VALUE`.
pub const CUDA_ERROR_INVALID_VALUE: CUresult = 1;
/// `CUDA_ERROR_OUT_OF_MEMORY`.
pub const CUDA_ERROR_OUT_OF_MEMORY: CUresult = 2;
/// `CUDA_ERROR_NOT_INITIALIZED`.
pub const CUDA_ERROR_NOT_INITIALIZED: CUresult = 3;
/// `CUDA_ERROR_INVALID_DEVICE`.
pub const CUDA_ERROR_INVALID_DEVICE: CUresult = 101;
/// `CUDA_ERROR_INVALID_IMAGE`.
pub const CUDA_ERROR_INVALID_IMAGE: CUresult = 200;
/// `CUDA_ERROR_INVALID_CONTEXT`.
pub const CUDA_ERROR_INVALID_CONTEXT: CUresult = 201;
/// `CUDA_ERROR_INVALID_PTX`.
pub const CUDA_ERROR_INVALID_PTX: CUresult = 218;
/// `CUDA_ERROR_INVALID_HANDLE`.
pub const CUDA_ERROR_INVALID_HANDLE: CUresult = 400;
/// `CUDA_ERROR_ILLEGAL_STATE`.
pub const CUDA_ERROR_ILLEGAL_STATE: CUresult = 401;
/// `CUDA_ERROR_NOT_FOUND`.
pub const CUDA_ERROR_NOT_FOUND: CUresult = 500;
/// `CUDA_ERROR_NOT_READY`.
pub const CUDA_ERROR_NOT_READY: CUresult = 600;
/// `CUDA_ERROR_ILLEGAL_ADDRESS`.
pub const CUDA_ERROR_ILLEGAL_ADDRESS: CUresult = 700;
/// `CUDA_ERROR_LAUNCH_FAILED`.
pub const CUDA_ERROR_LAUNCH_FAILED: CUresult = 719;
/// `CUDA_ERROR_NOT_SUPPORTED`.
pub const CUDA_ERROR_NOT_SUPPORTED: CUresult = 801;
/// `CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED`.
pub const CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED: CUresult = 900;
/// `CUDA_ERROR_STREAM_CAPTURE_INVALIDATED`.
pub const CUDA_ERROR_STREAM_CAPTURE_INVALIDATED: CUresult = 901;
/// `CUDA_ERROR_UNKNOWN`.
pub const CUDA_ERROR_UNKNOWN: CUresult = 999;

/// What `cuDriverGetVersion` reports.
pub const DRIVER_VERSION: c_int = 12080;

const CAPTURE_MODE_GLOBAL: c_int = 0;

/// Writes one line to stderr prefixed `surplus-cuda-emu: ` (never panics).
pub fn say(msg: &str) {
    let _ = writeln!(std::io::stderr(), "surplus-cuda-emu: {msg}");
}

// ---------------------------------------------------------------------------------------------
// State

/// A [`Module`] kept in the global state.
struct SendModule(Module);
// SAFETY: a module is only touched while the global mutex is held, by one thread at a time;
// it holds no reference to thread-local data.
unsafe impl Send for SendModule {}

struct Device {
    cfg: DeviceConfig,
    ctx: u64,
    retained: u32,
    /// The sticky error of its primary context, once a kernel faulted.
    sticky: Option<CUresult>,
}

/// One recorded operation of a captured stream (or one to do now).
#[derive(Clone, Debug)]
pub(crate) enum Node {
    Kernel {
        func: u64,
        grid: [u32; 3],
        block: [u32; 3],
        shared: u32,
        params: Vec<u8>,
    },
    Memset {
        dst: u64,
        value: u32,
        elem: u32,
        count: u64,
    },
    DtoD {
        dst: u64,
        src: u64,
        len: u64,
    },
    /// From host memory at `src` (pinned when recorded).
    HtoD {
        dst: u64,
        src: usize,
        len: u64,
    },
    /// To host memory at `dst` (pinned when recorded).
    DtoH {
        dst: usize,
        src: u64,
        len: u64,
    },
}

struct Capture {
    nodes: Vec<Node>,
    invalidated: bool,
    mode: c_int,
    thread: ThreadId,
}

struct Stream {
    dev: usize,
    capture: Option<Capture>,
}

struct Event {
    dev: usize,
    time: Option<Instant>,
}

struct LoadedModule {
    module: SendModule,
    dev: usize,
    kernels: Vec<Kernel>,
}

/// A cuBLAS handle: its device and stream.
pub(crate) struct BlasHandle {
    pub(crate) dev: usize,
    pub(crate) stream: u64,
}

/// Everything the driver knows.
pub(crate) struct State {
    devices: Vec<Device>,
    pub(crate) mem: Memory,
    streams: HashMap<u64, Stream>,
    events: HashMap<u64, Event>,
    modules: HashMap<u64, LoadedModule>,
    functions: HashMap<u64, (u64, usize)>,
    func_cache: HashMap<(u64, usize), u64>,
    graphs: HashMap<u64, Arc<Vec<Node>>>,
    execs: HashMap<u64, Arc<Vec<Node>>>,
    /// Pinned host allocations: start → length.
    pinned: BTreeMap<usize, usize>,
    pub(crate) stats: Stats,
    pub(crate) blas: HashMap<u64, BlasHandle>,
    next_handle: u64,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);
static ATEXIT: Once = Once::new();

thread_local! {
    /// The calling thread's context stack (top = current).
    static CTX_STACK: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

extern "C" {
    fn atexit(cb: extern "C" fn()) -> c_int;
}

fn lock() -> MutexGuard<'static, Option<State>> {
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `f` on the initialised state (`CUDA_ERROR_NOT_INITIALIZED` before `cuInit`).
pub(crate) fn with_state<R>(
    f: impl FnOnce(&mut State) -> Result<R, CUresult>,
) -> Result<R, CUresult> {
    let mut g = lock();
    match g.as_mut() {
        Some(st) => f(st),
        None => Err(CUDA_ERROR_NOT_INITIALIZED),
    }
}

fn current_ctx() -> u64 {
    CTX_STACK.with(|s| s.borrow().last().copied().unwrap_or(0))
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".into()
    }
}

/// Runs an export's body: `Ok` → `CUDA_SUCCESS`, a panic → `CUDA_ERROR_UNKNOWN`.
fn guard(name: &str, f: impl FnOnce() -> Result<(), CUresult>) -> CUresult {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => CUDA_SUCCESS,
        Ok(Err(e)) => e,
        Err(p) => {
            say(&format!(
                "{name} panicked: {} (returning CUDA_ERROR_UNKNOWN)",
                panic_text(p.as_ref())
            ));
            CUDA_ERROR_UNKNOWN
        }
    }
}

/// Writes `v` through the out-pointer `p` (`CUDA_ERROR_INVALID_VALUE` when null).
///
/// # Safety
/// `p` is null or valid for a write of `T`.
unsafe fn put<T>(p: *mut T, v: T) -> Result<(), CUresult> {
    if p.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: non-null, and the caller passes a valid out-pointer (CUDA's contract).
    unsafe { p.write(v) };
    Ok(())
}

fn invalid_handle(func: &str, what: &str, h: u64) -> CUresult {
    say(&format!("{func}: invalid {what} handle {h:#x}"));
    CUDA_ERROR_INVALID_HANDLE
}

fn is_legacy_stream(h: u64) -> bool {
    // NULL, CU_STREAM_LEGACY, CU_STREAM_PER_THREAD.
    h <= 2
}
