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
mod elf;
mod errors;
mod stubs;

pub use config::{
    device_attribute, parse_gpus, DeviceConfig, BUS_WIDTH_BITS, DEFAULT_GPUS, GPUS_ENV, SM_COUNT,
};
use elf::elf_len;
pub use elf::ptx_from_cubin;
pub use errors::error_name;
use errors::ERRORS;
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

impl State {
    fn new(cfgs: Vec<DeviceConfig>) -> State {
        let n = cfgs.len();
        let mut st = State {
            devices: Vec::new(),
            mem: Memory::new(n),
            streams: HashMap::new(),
            events: HashMap::new(),
            modules: HashMap::new(),
            functions: HashMap::new(),
            func_cache: HashMap::new(),
            graphs: HashMap::new(),
            execs: HashMap::new(),
            pinned: BTreeMap::new(),
            stats: Stats::default(),
            blas: HashMap::new(),
            next_handle: 0x5ee0_0000,
        };
        for cfg in cfgs {
            let ctx = st.new_handle();
            st.devices.push(Device {
                cfg,
                ctx,
                retained: 0,
                sticky: None,
            });
        }
        st
    }

    /// A fresh opaque handle value (never 0, 1 or 2; never reused).
    pub(crate) fn new_handle(&mut self) -> u64 {
        self.next_handle += 0x10;
        self.next_handle
    }

    fn device(&self, d: CUdevice) -> Result<usize, CUresult> {
        if d >= 0 && (d as usize) < self.devices.len() {
            Ok(d as usize)
        } else {
            Err(CUDA_ERROR_INVALID_DEVICE)
        }
    }

    fn ctx_device(&self, ctx: u64) -> Option<usize> {
        self.devices.iter().position(|d| d.ctx == ctx)
    }

    /// The current context's device (`CUDA_ERROR_INVALID_CONTEXT` when none is current).
    pub(crate) fn cur_dev(&self, func: &str) -> Result<usize, CUresult> {
        let c = current_ctx();
        match self.ctx_device(c) {
            Some(d) => Ok(d),
            None => {
                say(&format!(
                    "{func}: no current context (call cuCtxSetCurrent first)"
                ));
                Err(CUDA_ERROR_INVALID_CONTEXT)
            }
        }
    }

    /// The device's sticky error, if a kernel faulted on it.
    pub(crate) fn check(&self, dev: usize) -> Result<(), CUresult> {
        match self.devices[dev].sticky {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Makes `code` the device's sticky error (the first one stays).
    pub(crate) fn set_sticky(&mut self, dev: usize, code: CUresult) {
        let d = &mut self.devices[dev];
        if d.sticky.is_none() {
            d.sticky = Some(code);
        }
    }

    /// The device of stream `h` and whether it is capturing (`h` may be a legacy stream:
    /// the current context's).
    pub(crate) fn stream(&self, func: &str, h: u64) -> Result<(usize, bool), CUresult> {
        if is_legacy_stream(h) {
            return Ok((self.cur_dev(func)?, false));
        }
        match self.streams.get(&h) {
            Some(s) => Ok((s.dev, s.capture.is_some())),
            None => Err(invalid_handle(func, "stream", h)),
        }
    }

    /// Invalidates the capture of stream `h` after a refused call, saying why.
    pub(crate) fn refuse_on_capture(&mut self, func: &str, h: u64, why: &str) -> CUresult {
        if let Some(c) = self.streams.get_mut(&h).and_then(|s| s.capture.as_mut()) {
            c.invalidated = true;
        }
        say(&format!(
            "{func}: {why} on stream {h:#x} while it is being captured into a graph: \
             CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED (the capture is invalidated)"
        ));
        CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED
    }

    /// Fails (and invalidates the captures concerned) when this thread may not make a
    /// potentially unsafe call because a capture is under way: one in global mode on any
    /// thread, or one begun by this thread.
    fn refuse_if_capturing(&mut self, func: &str) -> Result<(), CUresult> {
        let me = std::thread::current().id();
        let mut hit = Vec::new();
        for (h, s) in self.streams.iter_mut() {
            if let Some(c) = s.capture.as_mut() {
                if c.mode == CAPTURE_MODE_GLOBAL || c.thread == me {
                    c.invalidated = true;
                    hit.push(*h);
                }
            }
        }
        if hit.is_empty() {
            return Ok(());
        }
        hit.sort_unstable();
        say(&format!(
            "{func} is not permitted while stream {} is being captured into a graph: \
             CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED (the capture is invalidated)",
            hit.iter()
                .map(|h| format!("{h:#x}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        Err(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED)
    }

    fn is_pinned(&self, p: usize, len: usize) -> bool {
        match self.pinned.range(..=p).next_back() {
            Some((&s, &l)) => p.checked_add(len).is_some_and(|e| e <= s + l),
            None => false,
        }
    }

    /// Records `node` on stream `h` when it is capturing, else does it now.
    ///
    /// # Safety
    /// Host pointers in `node` are valid for its length now (and, when recorded, pinned).
    unsafe fn submit(&mut self, func: &str, h: u64, node: Node) -> Result<(), CUresult> {
        let (dev, capturing) = self.stream(func, h)?;
        self.check(dev)?;
        if capturing {
            let c = self
                .streams
                .get_mut(&h)
                .and_then(|s| s.capture.as_mut())
                .expect("capturing stream");
            if c.invalidated {
                return Err(CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
            }
            c.nodes.push(node);
            return Ok(());
        }
        // SAFETY: forwarded from the caller.
        unsafe { self.exec(func, dev, &node, false) }
    }

    /// Does `node` now on `dev`. Memory errors: `CUDA_ERROR_INVALID_VALUE` when issued
    /// directly, a sticky `CUDA_ERROR_ILLEGAL_ADDRESS` when replayed from a graph.
    ///
    /// # Safety
    /// Host pointers in `node` are valid for its length (checked against the pinned ranges
    /// when `replay`).
    unsafe fn exec(
        &mut self,
        func: &str,
        dev: usize,
        node: &Node,
        replay: bool,
    ) -> Result<(), CUresult> {
        self.check(dev)?;
        let fail = |st: &mut State, msg: String| -> CUresult {
            if replay {
                say(&format!(
                    "{func}: graph node fault: {msg} (the context is now unusable: \
                     CUDA_ERROR_ILLEGAL_ADDRESS)"
                ));
                st.set_sticky(dev, CUDA_ERROR_ILLEGAL_ADDRESS);
                CUDA_ERROR_ILLEGAL_ADDRESS
            } else {
                say(&format!("{func}: {msg}: CUDA_ERROR_INVALID_VALUE"));
                CUDA_ERROR_INVALID_VALUE
            }
        };
        match node {
            Node::Kernel {
                func: f,
                grid,
                block,
                shared,
                params,
            } => self.run_kernel(func, dev, *f, *grid, *block, *shared, params),
            Node::Memset {
                dst,
                value,
                elem,
                count,
            } => {
                let len = count * *elem as u64;
                if len == 0 {
                    return Ok(());
                }
                match self.mem.bytes_mut(*dst, len) {
                    Ok(b) => {
                        let pat = value.to_le_bytes();
                        for ch in b.chunks_mut(*elem as usize) {
                            ch.copy_from_slice(&pat[..*elem as usize]);
                        }
                        Ok(())
                    }
                    Err(e) => Err(fail(self, format!("memset of {len} bytes: {e}"))),
                }
            }
            Node::DtoD { dst, src, len } => {
                if *len == 0 {
                    return Ok(());
                }
                let tmp = match self.mem.bytes(*src, *len) {
                    Ok(b) => b.to_vec(),
                    Err(e) => return Err(fail(self, format!("copy source: {e}"))),
                };
                match self.mem.bytes_mut(*dst, *len) {
                    Ok(b) => {
                        b.copy_from_slice(&tmp);
                        Ok(())
                    }
                    Err(e) => Err(fail(self, format!("copy destination: {e}"))),
                }
            }
            Node::HtoD { dst, src, len } => {
                if *len == 0 {
                    return Ok(());
                }
                if *src == 0 {
                    return Err(fail(self, "null host source".into()));
                }
                if replay && !self.is_pinned(*src, *len as usize) {
                    return Err(fail(
                        self,
                        format!("host source {src:#x} ({len} bytes) is no longer pinned memory"),
                    ));
                }
                // SAFETY: the caller guarantees the host range (pinned and live on replay).
                let host = unsafe { std::slice::from_raw_parts(*src as *const u8, *len as usize) };
                match self.mem.bytes_mut(*dst, *len) {
                    Ok(b) => {
                        b.copy_from_slice(host);
                        self.stats.memcpy_htod_bytes += len;
                        Ok(())
                    }
                    Err(e) => Err(fail(self, format!("copy destination: {e}"))),
                }
            }
            Node::DtoH { dst, src, len } => {
                if *len == 0 {
                    return Ok(());
                }
                if *dst == 0 {
                    return Err(fail(self, "null host destination".into()));
                }
                if replay && !self.is_pinned(*dst, *len as usize) {
                    return Err(fail(
                        self,
                        format!(
                            "host destination {dst:#x} ({len} bytes) is no longer pinned memory"
                        ),
                    ));
                }
                match self.mem.bytes(*src, *len) {
                    Ok(b) => {
                        // SAFETY: the caller guarantees the host range.
                        let host = unsafe {
                            std::slice::from_raw_parts_mut(*dst as *mut u8, *len as usize)
                        };
                        host.copy_from_slice(b);
                        self.stats.memcpy_dtoh_bytes += len;
                        Ok(())
                    }
                    Err(e) => Err(fail(self, format!("copy source: {e}"))),
                }
            }
        }
    }

    /// Runs kernel `f` now. A fault is printed and made sticky; the launch still succeeds.
    fn run_kernel(
        &mut self,
        func: &str,
        dev: usize,
        f: u64,
        grid: [u32; 3],
        block: [u32; 3],
        shared: u32,
        params: &[u8],
    ) -> Result<(), CUresult> {
        let Some(&(mh, idx)) = self.functions.get(&f) else {
            return Err(invalid_handle(func, "function", f));
        };
        let Some(lm) = self.modules.get(&mh) else {
            return Err(invalid_handle(func, "module (unloaded) of function", f));
        };
        let name = lm.kernels[idx].name.clone();
        let launch = Launch {
            grid,
            block,
            shared_dynamic: shared,
            params,
        };
        let mut ks = KernelStats::default();
        let mem = &mut self.mem;
        let res = catch_unwind(AssertUnwindSafe(|| {
            lm.module.0.run(idx, &launch, mem, &mut ks)
        }));
        self.mem.clear_sectors();
        ks.launches = 1;
        self.stats.add_kernel(&name, &ks);
        match res {
            Ok(Ok(())) => Ok(()),
            Ok(Err(fault)) => {
                let code = if fault.addr.is_some() {
                    CUDA_ERROR_ILLEGAL_ADDRESS
                } else {
                    CUDA_ERROR_LAUNCH_FAILED
                };
                report_fault(&fault, grid, block, code);
                self.set_sticky(dev, code);
                Ok(())
            }
            Err(p) => {
                say(&format!(
                    "kernel {name}: the interpreter panicked: {} (the context is now \
                     unusable: CUDA_ERROR_LAUNCH_FAILED)",
                    panic_text(p.as_ref())
                ));
                self.set_sticky(dev, CUDA_ERROR_LAUNCH_FAILED);
                Ok(())
            }
        }
    }

    fn device_infos(&self) -> Vec<DeviceInfo> {
        self.devices
            .iter()
            .enumerate()
            .map(|(i, d)| DeviceInfo {
                name: d.cfg.name.clone(),
                sm: d.cfg.sm,
                memory_bytes: d.cfg.memory,
                bandwidth_gbps: d.cfg.bandwidth_gbps,
                peak_bytes: self.mem.peak.get(i).copied().unwrap_or(0),
            })
            .collect()
    }
}

/// Prints a fault the way compute-sanitizer does.
fn report_fault(f: &Fault, grid: [u32; 3], block: [u32; 3], code: CUresult) {
    let kind = if f.addr.is_some() {
        let op = f.instr.trim_start();
        let op = op.strip_prefix('@').map_or(op, |r| {
            r.split_once(char::is_whitespace)
                .map_or(r, |(_, x)| x.trim_start())
        });
        let dir = if op.starts_with("st") {
            "write"
        } else if op.starts_with("ld") {
            "read"
        } else if op.starts_with("atom") || op.starts_with("red") {
            "atomic access"
        } else {
            "access"
        };
        let space = if op.contains(".shared") {
            "__shared__"
        } else if op.contains(".local") {
            "__local__"
        } else {
            "__global__"
        };
        format!("Invalid {space} {dir}")
    } else {
        "Kernel error".to_string()
    };
    let mut s = String::new();
    s += &format!("========= {kind} ({})\n", f.message);
    s += &format!(
        "=========     at {}+PTX line {}: {}\n",
        f.kernel,
        f.line,
        f.instr.trim()
    );
    s += &format!(
        "=========     by thread ({},{},{}) in block ({},{},{}) of a launch of grid ({},{},{}) \
         block ({},{},{})\n",
        f.thread[0],
        f.thread[1],
        f.thread[2],
        f.block[0],
        f.block[1],
        f.block[2],
        grid[0],
        grid[1],
        grid[2],
        block[0],
        block[1],
        block[2]
    );
    if let Some(a) = f.addr {
        s += &format!("=========     Address {a:#x}\n");
    }
    s += &format!("========= {f}\n");
    s += &format!(
        "========= surplus-cuda-emu: the launch returned CUDA_SUCCESS; every later call on \
         this context returns {} ({code})\n",
        error_name(code).unwrap_or("?")
    );
    let _ = std::io::stderr().write_all(s.as_bytes());
}

/// The statistics as JSON (an empty document before `cuInit`).
pub(crate) fn stats_value() -> Value {
    let g = lock();
    match g.as_ref() {
        Some(st) => st.stats.to_json(&st.device_infos()),
        None => Stats::default().to_json(&[]),
    }
}

/// The statistics, waiting at most `wait` for the state (at exit another thread may hold it).
pub(crate) fn stats_value_within(wait: Duration) -> Option<Value> {
    let t0 = Instant::now();
    loop {
        match STATE.try_lock() {
            Ok(g) => {
                return Some(match g.as_ref() {
                    Some(st) => st.stats.to_json(&st.device_infos()),
                    None => Stats::default().to_json(&[]),
                })
            }
            Err(std::sync::TryLockError::Poisoned(p)) => {
                let g = p.into_inner();
                return Some(match g.as_ref() {
                    Some(st) => st.stats.to_json(&st.device_infos()),
                    None => Stats::default().to_json(&[]),
                });
            }
            Err(std::sync::TryLockError::WouldBlock) => {
                if t0.elapsed() > wait {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Zeroes the counters.
pub(crate) fn reset_stats() {
    if let Some(st) = lock().as_mut() {
        st.stats = Stats::default();
    }
}

// ---------------------------------------------------------------------------------------------
// Initialisation and devices

/// `cuInit`: reads [`GPUS_ENV`] once (again after a failure).
#[no_mangle]
pub unsafe extern "C" fn cuInit(flags: c_uint) -> CUresult {
    guard("cuInit", || {
        if flags != 0 {
            say("cuInit: flags must be 0");
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let mut g = lock();
        if g.is_none() {
            let spec = std::env::var(GPUS_ENV).unwrap_or_default();
            let spec_used = if spec.trim().is_empty() {
                DEFAULT_GPUS
            } else {
                spec.as_str()
            };
            let cfgs = match parse_gpus(spec_used) {
                Ok(c) => c,
                Err(e) => {
                    say(&format!(
                        "cuInit: {GPUS_ENV}=\"{spec}\" is not valid: {e}; expected comma-separated \
                         name:sm:memory_GiB:bandwidth_GBps, e.g. V100:70:32:900,P40:61:24:347 \
                         (default {DEFAULT_GPUS})"
                    ));
                    return Err(CUDA_ERROR_INVALID_VALUE);
                }
            };
            *g = Some(State::new(cfgs));
        }
        drop(g);
        ATEXIT.call_once(|| {
            // SAFETY: registers a plain `extern "C"` function without arguments.
            unsafe { atexit(crate::stats::write_at_exit) };
        });
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDriverGetVersion(v: *mut c_int) -> CUresult {
    // SAFETY: CUDA's contract: a valid out-pointer.
    guard("cuDriverGetVersion", || unsafe { put(v, DRIVER_VERSION) })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetCount(n: *mut c_int) -> CUresult {
    guard("cuDeviceGetCount", || {
        let c = with_state(|st| Ok(st.devices.len() as c_int))?;
        // SAFETY: CUDA's contract: a valid out-pointer.
        unsafe { put(n, c) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGet(dev: *mut CUdevice, ordinal: c_int) -> CUresult {
    guard("cuDeviceGet", || {
        let d = with_state(|st| st.device(ordinal))?;
        // SAFETY: CUDA's contract: a valid out-pointer.
        unsafe { put(dev, d as CUdevice) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetName(name: *mut c_char, len: c_int, dev: CUdevice) -> CUresult {
    guard("cuDeviceGetName", || {
        let n = with_state(|st| {
            let d = st.device(dev)?;
            Ok(format!("{} (emulated)", st.devices[d].cfg.name))
        })?;
        if name.is_null() || len <= 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let bytes = n.as_bytes();
        let k = bytes.len().min(len as usize - 1);
        // SAFETY: CUDA's contract: `name` holds `len` bytes; we write k + 1 <= len.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), name as *mut u8, k);
            *name.add(k) = 0;
        }
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceTotalMem_v2(bytes: *mut usize, dev: CUdevice) -> CUresult {
    guard("cuDeviceTotalMem_v2", || {
        let m = with_state(|st| Ok(st.devices[st.device(dev)?].cfg.memory))?;
        // SAFETY: CUDA's contract: a valid out-pointer.
        unsafe { put(bytes, m as usize) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetAttribute(
    pi: *mut c_int,
    attrib: c_int,
    dev: CUdevice,
) -> CUresult {
    guard("cuDeviceGetAttribute", || {
        let v = with_state(|st| {
            let d = st.device(dev)?;
            if !(1..120).contains(&attrib) {
                say(&format!("cuDeviceGetAttribute: unknown attribute {attrib}"));
                return Err(CUDA_ERROR_INVALID_VALUE);
            }
            Ok(device_attribute(&st.devices[d].cfg, d, attrib))
        })?;
        // SAFETY: CUDA's contract: a valid out-pointer.
        unsafe { put(pi, v) }
    })
}

// ---------------------------------------------------------------------------------------------
// Contexts

#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxRetain(pctx: *mut Handle, dev: CUdevice) -> CUresult {
    guard("cuDevicePrimaryCtxRetain", || {
        let c = with_state(|st| {
            let d = st.device(dev)?;
            st.devices[d].retained += 1;
            Ok(st.devices[d].ctx)
        })?;
        // SAFETY: CUDA's contract: a valid out-pointer.
        unsafe { put(pctx, c as Handle) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxRelease_v2(dev: CUdevice) -> CUresult {
    guard("cuDevicePrimaryCtxRelease_v2", || {
        with_state(|st| {
            let d = st.device(dev)?;
            let r = &mut st.devices[d].retained;
            *r = r.saturating_sub(1);
            Ok(())
        })
    })
}

/// Clears the device's sticky error and its streams' captures (allocations stay).
#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxReset_v2(dev: CUdevice) -> CUresult {
    guard("cuDevicePrimaryCtxReset_v2", || {
        with_state(|st| {
            let d = st.device(dev)?;
            st.devices[d].sticky = None;
            for s in st.streams.values_mut().filter(|s| s.dev == d) {
                s.capture = None;
            }
            Ok(())
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxGetState(
    dev: CUdevice,
    flags: *mut c_uint,
    active: *mut c_int,
) -> CUresult {
    guard("cuDevicePrimaryCtxGetState", || {
        let r = with_state(|st| Ok(st.devices[st.device(dev)?].retained))?;
        // SAFETY: CUDA's contract: valid out-pointers.
        unsafe {
            put(flags, 0)?;
            put(active, (r > 0) as c_int)
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxSetFlags_v2(dev: CUdevice, _flags: c_uint) -> CUresult {
    guard("cuDevicePrimaryCtxSetFlags_v2", || {
        with_state(|st| st.device(dev).map(|_| ()))
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetCurrent(pctx: *mut Handle) -> CUresult {
    guard("cuCtxGetCurrent", || {
        with_state(|_| Ok(()))?;
        // SAFETY: CUDA's contract: a valid out-pointer.
        unsafe { put(pctx, current_ctx() as Handle) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxSetCurrent(ctx: Handle) -> CUresult {
    guard("cuCtxSetCurrent", || {
        let c = ctx as u64;
        with_state(|st| {
            if c != 0 && st.ctx_device(c).is_none() {
                return Err(invalid_handle("cuCtxSetCurrent", "context", c));
            }
            Ok(())
        })?;
        CTX_STACK.with(|s| {
            let mut s = s.borrow_mut();
            if c == 0 {
                s.pop();
            } else if let Some(top) = s.last_mut() {
                *top = c;
            } else {
                s.push(c);
            }
        });
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxPushCurrent_v2(ctx: Handle) -> CUresult {
    guard("cuCtxPushCurrent_v2", || {
        let c = ctx as u64;
        with_state(|st| match st.ctx_device(c) {
            Some(_) => Ok(()),
            None => Err(invalid_handle("cuCtxPushCurrent_v2", "context", c)),
        })?;
        CTX_STACK.with(|s| s.borrow_mut().push(c));
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxPopCurrent_v2(pctx: *mut Handle) -> CUresult {
    guard("cuCtxPopCurrent_v2", || {
        with_state(|_| Ok(()))?;
        let Some(c) = CTX_STACK.with(|s| s.borrow_mut().pop()) else {
            return Err(CUDA_ERROR_INVALID_CONTEXT);
        };
        if !pctx.is_null() {
            // SAFETY: CUDA's contract: a valid out-pointer when not null.
            unsafe { put(pctx, c as Handle)? };
        }
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetDevice(dev: *mut CUdevice) -> CUresult {
    guard("cuCtxGetDevice", || {
        let d = with_state(|st| st.cur_dev("cuCtxGetDevice"))?;
        // SAFETY: CUDA's contract: a valid out-pointer.
        unsafe { put(dev, d as CUdevice) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetApiVersion(ctx: Handle, version: *mut c_uint) -> CUresult {
    guard("cuCtxGetApiVersion", || {
        with_state(|st| {
            let c = ctx as u64;
            if c != 0 && st.ctx_device(c).is_none() {
                return Err(invalid_handle("cuCtxGetApiVersion", "context", c));
            }
            Ok(())
        })?;
        // SAFETY: CUDA's contract: a valid out-pointer.
        unsafe { put(version, 12080) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxSynchronize() -> CUresult {
    guard("cuCtxSynchronize", || {
        with_state(|st| {
            let d = st.cur_dev("cuCtxSynchronize")?;
            st.refuse_if_capturing("cuCtxSynchronize")?;
            st.check(d)
        })
    })
}

// ---------------------------------------------------------------------------------------------
// Streams and events

fn create_stream(func: &str, ph: *mut Handle) -> Result<(), CUresult> {
    let h = with_state(|st| {
        let d = st.cur_dev(func)?;
        st.check(d)?;
        let h = st.new_handle();
        st.streams.insert(
            h,
            Stream {
                dev: d,
                capture: None,
            },
        );
        Ok(h)
    })?;
    // SAFETY: CUDA's contract: a valid out-pointer.
    unsafe { put(ph, h as Handle) }
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamCreate(ph: *mut Handle, _flags: c_uint) -> CUresult {
    guard("cuStreamCreate", || create_stream("cuStreamCreate", ph))
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamCreateWithPriority(
    ph: *mut Handle,
    _flags: c_uint,
    _priority: c_int,
) -> CUresult {
    guard("cuStreamCreateWithPriority", || {
        create_stream("cuStreamCreateWithPriority", ph)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetStreamPriorityRange(
    least: *mut c_int,
    greatest: *mut c_int,
) -> CUresult {
    guard("cuCtxGetStreamPriorityRange", || {
        // SAFETY: CUDA's contract: out-pointers, each may be null.
        unsafe {
            if !least.is_null() {
                put(least, 0)?;
            }
            if !greatest.is_null() {
                put(greatest, 0)?;
            }
        }
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamDestroy_v2(s: Handle) -> CUresult {
    guard("cuStreamDestroy_v2", || {
        with_state(|st| {
            let h = s as u64;
            match st.streams.remove(&h) {
                Some(x) => st.check(x.dev),
                None => Err(invalid_handle("cuStreamDestroy_v2", "stream", h)),
            }
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamSynchronize(s: Handle) -> CUresult {
    guard("cuStreamSynchronize", || {
        with_state(|st| {
            let h = s as u64;
            let (d, capturing) = st.stream("cuStreamSynchronize", h)?;
            if capturing {
                return Err(st.refuse_on_capture("cuStreamSynchronize", h, "synchronize"));
            }
            if is_legacy_stream(h) {
                st.refuse_if_capturing("cuStreamSynchronize (legacy stream)")?;
            }
            st.check(d)
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamQuery(s: Handle) -> CUresult {
    guard("cuStreamQuery", || {
        with_state(|st| {
            let h = s as u64;
            let (d, capturing) = st.stream("cuStreamQuery", h)?;
            if capturing {
                return Err(st.refuse_on_capture("cuStreamQuery", h, "query"));
            }
            st.check(d)
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamWaitEvent(s: Handle, e: Handle, _flags: c_uint) -> CUresult {
    guard("cuStreamWaitEvent", || {
        with_state(|st| {
            let (d, _) = st.stream("cuStreamWaitEvent", s as u64)?;
            if !st.events.contains_key(&(e as u64)) {
                return Err(invalid_handle("cuStreamWaitEvent", "event", e as u64));
            }
            st.check(d)
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuEventCreate(ph: *mut Handle, _flags: c_uint) -> CUresult {
    guard("cuEventCreate", || {
        let h = with_state(|st| {
            let d = st.cur_dev("cuEventCreate")?;
            st.check(d)?;
            let h = st.new_handle();
            st.events.insert(h, Event { dev: d, time: None });
            Ok(h)
        })?;
        // SAFETY: CUDA's contract: a valid out-pointer.
        unsafe { put(ph, h as Handle) }
    })
}

fn record_event(func: &str, e: Handle, s: Handle) -> Result<(), CUresult> {
    with_state(|st| {
        let (d, _) = st.stream(func, s as u64)?;
        let Some(ev) = st.events.get_mut(&(e as u64)) else {
            return Err(invalid_handle(func, "event", e as u64));
        };
        // Everything before it has run already: the event completes now.
        ev.time = Some(Instant::now());
        st.check(d)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuEventRecord(e: Handle, s: Handle) -> CUresult {
    guard("cuEventRecord", || record_event("cuEventRecord", e, s))
}

#[no_mangle]
pub unsafe extern "C" fn cuEventRecordWithFlags(e: Handle, s: Handle, _flags: c_uint) -> CUresult {
    guard("cuEventRecordWithFlags", || {
        record_event("cuEventRecordWithFlags", e, s)
    })
}

fn event_dev(st: &State, func: &str, e: Handle) -> Result<usize, CUresult> {
    match st.events.get(&(e as u64)) {
        Some(ev) => Ok(ev.dev),
        None => Err(invalid_handle(func, "event", e as u64)),
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuEventSynchronize(e: Handle) -> CUresult {
    guard("cuEventSynchronize", || {
        with_state(|st| {
            let d = event_dev(st, "cuEventSynchronize", e)?;
            st.check(d)
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuEventQuery(e: Handle) -> CUresult {
    guard("cuEventQuery", || {
        with_state(|st| {
            let d = event_dev(st, "cuEventQuery", e)?;
            st.check(d)
        })
    })
}

fn elapsed(func: &str, ms: *mut f32, a: Handle, b: Handle) -> Result<(), CUresult> {
    let v = with_state(|st| {
        let d = event_dev(st, func, a)?;
        event_dev(st, func, b)?;
        st.check(d)?;
        let (Some(ta), Some(tb)) = (st.events[&(a as u64)].time, st.events[&(b as u64)].time)
        else {
            say(&format!("{func}: an event was never recorded"));
            return Err(CUDA_ERROR_INVALID_HANDLE);
        };
        let ms = if tb >= ta {
            (tb - ta).as_secs_f64() * 1e3
        } else {
            -((ta - tb).as_secs_f64() * 1e3)
        };
        Ok(ms as f32)
    })?;
    // SAFETY: CUDA's contract: a valid out-pointer.
    unsafe { put(ms, v) }
}

#[no_mangle]
pub unsafe extern "C" fn cuEventElapsedTime(ms: *mut f32, a: Handle, b: Handle) -> CUresult {
    guard("cuEventElapsedTime", || {
        elapsed("cuEventElapsedTime", ms, a, b)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuEventElapsedTime_v2(ms: *mut f32, a: Handle, b: Handle) -> CUresult {
    guard("cuEventElapsedTime_v2", || {
        elapsed("cuEventElapsedTime_v2", ms, a, b)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuEventDestroy_v2(e: Handle) -> CUresult {
    guard("cuEventDestroy_v2", || {
        with_state(|st| match st.events.remove(&(e as u64)) {
            Some(ev) => st.check(ev.dev),
            None => Err(invalid_handle("cuEventDestroy_v2", "event", e as u64)),
        })
    })
}

// ---------------------------------------------------------------------------------------------
// Modules and functions

#[no_mangle]
pub unsafe extern "C" fn cuModuleLoadData(module: *mut Handle, image: *const c_void) -> CUresult {
    guard("cuModuleLoadData", || {
        if image.is_null() || module.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let p = image as *const u8;
        // SAFETY: CUDA's contract: `image` is a CUBIN/fatbin (at least 4 bytes) or
        // NUL-terminated PTX (at least its NUL; reading 4 bytes of text stops at none of
        // them: a PTX text shorter than 4 bytes is not a module).
        let magic = unsafe { std::slice::from_raw_parts(p, 1) }[0] == 0x7f
            && unsafe { std::slice::from_raw_parts(p, 4) } == b"\x7fELF";
        let text = if magic {
            // SAFETY: an ELF image as declared by its headers.
            let r = unsafe { elf_len(p) }.and_then(|n| {
                // SAFETY: the image spans `n` bytes per its headers.
                ptx_from_cubin(unsafe { std::slice::from_raw_parts(p, n) })
            });
            match r {
                Ok(t) => t,
                Err(e) => {
                    say(&format!("cuModuleLoadData: {e}: CUDA_ERROR_INVALID_IMAGE"));
                    return Err(CUDA_ERROR_INVALID_IMAGE);
                }
            }
        } else {
            // SAFETY: CUDA's contract: PTX text is NUL-terminated.
            let c = unsafe { CStr::from_ptr(image as *const c_char) };
            match c.to_str() {
                Ok(t) => t.to_string(),
                Err(_) => {
                    say("cuModuleLoadData: the image is neither an ELF CUBIN nor UTF-8 PTX text");
                    return Err(CUDA_ERROR_INVALID_IMAGE);
                }
            }
        };
        if !text.contains(".version") && !text.contains(".entry") {
            say("cuModuleLoadData: the image is neither an ELF CUBIN nor PTX text");
            return Err(CUDA_ERROR_INVALID_IMAGE);
        }
        let h = with_state(|st| {
            let d = st.cur_dev("cuModuleLoadData")?;
            st.check(d)?;
            let mem = &mut st.mem;
            let loaded = catch_unwind(AssertUnwindSafe(|| Module::load(&text, mem, d)));
            let m = match loaded {
                Ok(Ok(m)) => m,
                Ok(Err(e)) => {
                    say(&format!(
                        "cuModuleLoadData: the PTX does not load: {e}: CUDA_ERROR_INVALID_PTX"
                    ));
                    return Err(CUDA_ERROR_INVALID_PTX);
                }
                Err(p) => {
                    say(&format!(
                        "cuModuleLoadData: the PTX interpreter panicked: {}: \
                         CUDA_ERROR_INVALID_PTX",
                        panic_text(p.as_ref())
                    ));
                    return Err(CUDA_ERROR_INVALID_PTX);
                }
            };
            let kernels = m.kernels().to_vec();
            let h = st.new_handle();
            st.modules.insert(
                h,
                LoadedModule {
                    module: SendModule(m),
                    dev: d,
                    kernels,
                },
            );
            Ok(h)
        })?;
        // SAFETY: checked non-null; CUDA's contract: a valid out-pointer.
        unsafe { put(module, h as Handle) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuModuleGetFunction(
    hfunc: *mut Handle,
    hmod: Handle,
    name: *const c_char,
) -> CUresult {
    guard("cuModuleGetFunction", || {
        if name.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: CUDA's contract: a NUL-terminated name.
        let name = unsafe { CStr::from_ptr(name) }
            .to_string_lossy()
            .into_owned();
        let f = with_state(|st| {
            let mh = hmod as u64;
            let Some(lm) = st.modules.get(&mh) else {
                return Err(invalid_handle("cuModuleGetFunction", "module", mh));
            };
            st.check(lm.dev)?;
            let Some(idx) = lm.kernels.iter().position(|k| k.name == name) else {
                let names: Vec<&str> = lm.kernels.iter().map(|k| k.name.as_str()).collect();
                say(&format!(
                    "cuModuleGetFunction: no kernel `{name}` in module {mh:#x} (it has: {})",
                    names.join(", ")
                ));
                return Err(CUDA_ERROR_NOT_FOUND);
            };
            if let Some(&f) = st.func_cache.get(&(mh, idx)) {
                return Ok(f);
            }
            let f = st.new_handle();
            st.functions.insert(f, (mh, idx));
            st.func_cache.insert((mh, idx), f);
            Ok(f)
        })?;
        // SAFETY: CUDA's contract: a valid out-pointer.
        unsafe { put(hfunc, f as Handle) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuModuleUnload(hmod: Handle) -> CUresult {
    guard("cuModuleUnload", || {
        with_state(|st| {
            let mh = hmod as u64;
            let Some(mut lm) = st.modules.remove(&mh) else {
                return Err(invalid_handle("cuModuleUnload", "module", mh));
            };
            let mem = &mut st.mem;
            let _ = catch_unwind(AssertUnwindSafe(|| lm.module.0.unload(mem)));
            st.functions.retain(|_, (m, _)| *m != mh);
            st.func_cache.retain(|(m, _), _| *m != mh);
            st.check(lm.dev)
        })
    })
}

fn func_dev(st: &State, func: &str, f: Handle) -> Result<usize, CUresult> {
    let Some(&(mh, _)) = st.functions.get(&(f as u64)) else {
        return Err(invalid_handle(func, "function", f as u64));
    };
    Ok(st.modules[&mh].dev)
}

#[no_mangle]
pub unsafe extern "C" fn cuFuncGetAttribute(pi: *mut c_int, attrib: c_int, f: Handle) -> CUresult {
    guard("cuFuncGetAttribute", || {
        let v = with_state(|st| {
            let d = func_dev(st, "cuFuncGetAttribute", f)?;
            Ok(match attrib {
                0 => 1024,                          // MAX_THREADS_PER_BLOCK
                4 => 32,                            // NUM_REGS
                5 => 70,                            // PTX_VERSION
                6 => st.devices[d].cfg.sm as c_int, // BINARY_VERSION
                8 => 49152,                         // MAX_DYNAMIC_SHARED_SIZE_BYTES
                9 => -1,                            // PREFERRED_SHARED_MEMORY_CARVEOUT
                _ => 0,
            })
        })?;
        // SAFETY: CUDA's contract: a valid out-pointer.
        unsafe { put(pi, v) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuFuncSetAttribute(f: Handle, _attrib: c_int, _value: c_int) -> CUresult {
    guard("cuFuncSetAttribute", || {
        with_state(|st| func_dev(st, "cuFuncSetAttribute", f).map(|_| ()))
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuFuncSetCacheConfig(f: Handle, _config: c_int) -> CUresult {
    guard("cuFuncSetCacheConfig", || {
        with_state(|st| func_dev(st, "cuFuncSetCacheConfig", f).map(|_| ()))
    })
}

// ---------------------------------------------------------------------------------------------
// Memory

#[no_mangle]
pub unsafe extern "C" fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) -> CUresult {
    guard("cuMemGetInfo_v2", || {
        let (f, t) = with_state(|st| {
            let d = st.cur_dev("cuMemGetInfo_v2")?;
            st.check(d)?;
            let t = st.devices[d].cfg.memory;
            Ok((t.saturating_sub(st.mem.used[d]), t))
        })?;
        // SAFETY: CUDA's contract: valid out-pointers.
        unsafe {
            put(free, f as usize)?;
            put(total, t as usize)
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAlloc_v2(dptr: *mut CUdeviceptr, size: usize) -> CUresult {
    guard("cuMemAlloc_v2", || {
        if dptr.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let a = with_state(|st| {
            let d = st.cur_dev("cuMemAlloc_v2")?;
            st.check(d)?;
            st.refuse_if_capturing("cuMemAlloc_v2")?;
            if size == 0 {
                return Err(CUDA_ERROR_INVALID_VALUE);
            }
            let total = st.devices[d].cfg.memory;
            let used = st.mem.used[d];
            if used.checked_add(size as u64).is_none_or(|u| u > total) {
                say(&format!(
                    "cuMemAlloc_v2: {size} bytes do not fit on device {d} ({}): {used} of {total} \
                     bytes in use: CUDA_ERROR_OUT_OF_MEMORY",
                    st.devices[d].cfg.name
                ));
                return Err(CUDA_ERROR_OUT_OF_MEMORY);
            }
            Ok(st.mem.alloc(d, size as u64))
        })?;
        // SAFETY: checked non-null; CUDA's contract: a valid out-pointer.
        unsafe { put(dptr, a) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemFree_v2(dptr: CUdeviceptr) -> CUresult {
    guard("cuMemFree_v2", || {
        with_state(|st| {
            let d = st.cur_dev("cuMemFree_v2")?;
            st.check(d)?;
            st.refuse_if_capturing("cuMemFree_v2")?;
            if dptr == 0 {
                return Ok(());
            }
            match st.mem.free(dptr) {
                Ok(_) => Ok(()),
                Err(e) => {
                    say(&format!(
                        "cuMemFree_v2({dptr:#x}): {}: CUDA_ERROR_INVALID_VALUE",
                        e.what
                    ));
                    Err(CUDA_ERROR_INVALID_VALUE)
                }
            }
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemGetAddressRange_v2(
    pbase: *mut CUdeviceptr,
    psize: *mut usize,
    dptr: CUdeviceptr,
) -> CUresult {
    guard("cuMemGetAddressRange_v2", || {
        let (b, s) = with_state(|st| match st.mem.find(dptr, 1) {
            Ok(i) => Ok((st.mem.allocs[i].base, st.mem.allocs[i].size)),
            Err(e) => {
                say(&format!("cuMemGetAddressRange_v2: {e}"));
                Err(CUDA_ERROR_NOT_FOUND)
            }
        })?;
        // SAFETY: CUDA's contract: out-pointers, each may be null.
        unsafe {
            if !pbase.is_null() {
                put(pbase, b)?;
            }
            if !psize.is_null() {
                put(psize, s as usize)?;
            }
        }
        Ok(())
    })
}

fn host_alloc(func: &str, pp: *mut *mut c_void, size: usize) -> Result<(), CUresult> {
    if pp.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let layout = std::alloc::Layout::from_size_align(size.max(1), 4096)
        .map_err(|_| CUDA_ERROR_INVALID_VALUE)?;
    let p = with_state(|st| {
        let d = st.cur_dev(func)?;
        st.check(d)?;
        // SAFETY: a non-zero size.
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        if p.is_null() {
            say(&format!("{func}: the host has no {size} bytes"));
            return Err(CUDA_ERROR_OUT_OF_MEMORY);
        }
        st.pinned.insert(p as usize, size.max(1));
        Ok(p)
    })?;
    // SAFETY: checked non-null; CUDA's contract: a valid out-pointer.
    unsafe { put(pp, p as *mut c_void) }
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAllocHost_v2(pp: *mut *mut c_void, size: usize) -> CUresult {
    guard("cuMemAllocHost_v2", || {
        host_alloc("cuMemAllocHost_v2", pp, size)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemHostAlloc(
    pp: *mut *mut c_void,
    size: usize,
    _flags: c_uint,
) -> CUresult {
    guard("cuMemHostAlloc", || host_alloc("cuMemHostAlloc", pp, size))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemFreeHost(p: *mut c_void) -> CUresult {
    guard("cuMemFreeHost", || {
        with_state(|st| {
            let Some(size) = st.pinned.remove(&(p as usize)) else {
                say(&format!(
                    "cuMemFreeHost({p:?}): not a pinned allocation: CUDA_ERROR_INVALID_VALUE"
                ));
                return Err(CUDA_ERROR_INVALID_VALUE);
            };
            let layout = std::alloc::Layout::from_size_align(size, 4096).expect("layout");
            // SAFETY: allocated by `host_alloc` with this layout, freed once (removed above).
            unsafe { std::alloc::dealloc(p as *mut u8, layout) };
            Ok(())
        })
    })
}

/// A synchronous (legacy-stream) operation: refused during this thread's capture.
///
/// # Safety
/// Host pointers in `node` are valid for its length.
unsafe fn sync_op(func: &str, node: Node) -> Result<(), CUresult> {
    with_state(|st| {
        let d = st.cur_dev(func)?;
        st.check(d)?;
        st.refuse_if_capturing(func)?;
        // SAFETY: forwarded from the caller.
        unsafe { st.exec(func, d, &node, false) }
    })
}

/// An asynchronous operation on stream `s` (recorded when it captures). Host memory must be
/// pinned to be captured.
///
/// # Safety
/// Host pointers in `node` are valid for its length.
unsafe fn async_op(func: &str, s: Handle, node: Node) -> Result<(), CUresult> {
    with_state(|st| {
        let h = s as u64;
        let (_, capturing) = st.stream(func, h)?;
        if capturing {
            let pageable = match &node {
                Node::HtoD { src, len, .. } => !st.is_pinned(*src, *len as usize),
                Node::DtoH { dst, len, .. } => !st.is_pinned(*dst, *len as usize),
                _ => false,
            };
            if pageable {
                return Err(st.refuse_on_capture(func, h, "a copy with pageable host memory"));
            }
        }
        // SAFETY: forwarded from the caller.
        unsafe { st.submit(func, h, node) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemsetD8_v2(dst: CUdeviceptr, v: u8, n: usize) -> CUresult {
    let node = Node::Memset {
        dst,
        value: v as u32,
        elem: 1,
        count: n as u64,
    };
    // SAFETY: no host memory involved.
    guard("cuMemsetD8_v2", || unsafe {
        sync_op("cuMemsetD8_v2", node)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemsetD16_v2(dst: CUdeviceptr, v: u16, n: usize) -> CUresult {
    let node = Node::Memset {
        dst,
        value: v as u32,
        elem: 2,
        count: n as u64,
    };
    // SAFETY: no host memory involved.
    guard("cuMemsetD16_v2", || unsafe {
        sync_op("cuMemsetD16_v2", node)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemsetD32_v2(dst: CUdeviceptr, v: c_uint, n: usize) -> CUresult {
    let node = Node::Memset {
        dst,
        value: v,
        elem: 4,
        count: n as u64,
    };
    // SAFETY: no host memory involved.
    guard("cuMemsetD32_v2", || unsafe {
        sync_op("cuMemsetD32_v2", node)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemsetD8Async(dst: CUdeviceptr, v: u8, n: usize, s: Handle) -> CUresult {
    let node = Node::Memset {
        dst,
        value: v as u32,
        elem: 1,
        count: n as u64,
    };
    // SAFETY: no host memory involved.
    guard("cuMemsetD8Async", || unsafe {
        async_op("cuMemsetD8Async", s, node)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemsetD16Async(
    dst: CUdeviceptr,
    v: u16,
    n: usize,
    s: Handle,
) -> CUresult {
    let node = Node::Memset {
        dst,
        value: v as u32,
        elem: 2,
        count: n as u64,
    };
    // SAFETY: no host memory involved.
    guard("cuMemsetD16Async", || unsafe {
        async_op("cuMemsetD16Async", s, node)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemsetD32Async(
    dst: CUdeviceptr,
    v: c_uint,
    n: usize,
    s: Handle,
) -> CUresult {
    let node = Node::Memset {
        dst,
        value: v,
        elem: 4,
        count: n as u64,
    };
    // SAFETY: no host memory involved.
    guard("cuMemsetD32Async", || unsafe {
        async_op("cuMemsetD32Async", s, node)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyHtoD_v2(
    dst: CUdeviceptr,
    src: *const c_void,
    n: usize,
) -> CUresult {
    let node = Node::HtoD {
        dst,
        src: src as usize,
        len: n as u64,
    };
    // SAFETY: CUDA's contract: `src` holds `n` bytes.
    guard("cuMemcpyHtoD_v2", || unsafe {
        sync_op("cuMemcpyHtoD_v2", node)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoH_v2(dst: *mut c_void, src: CUdeviceptr, n: usize) -> CUresult {
    let node = Node::DtoH {
        dst: dst as usize,
        src,
        len: n as u64,
    };
    // SAFETY: CUDA's contract: `dst` holds `n` bytes.
    guard("cuMemcpyDtoH_v2", || unsafe {
        sync_op("cuMemcpyDtoH_v2", node)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoD_v2(dst: CUdeviceptr, src: CUdeviceptr, n: usize) -> CUresult {
    let node = Node::DtoD {
        dst,
        src,
        len: n as u64,
    };
    // SAFETY: no host memory involved.
    guard("cuMemcpyDtoD_v2", || unsafe {
        sync_op("cuMemcpyDtoD_v2", node)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyHtoDAsync_v2(
    dst: CUdeviceptr,
    src: *const c_void,
    n: usize,
    s: Handle,
) -> CUresult {
    let node = Node::HtoD {
        dst,
        src: src as usize,
        len: n as u64,
    };
    // SAFETY: CUDA's contract: `src` holds `n` bytes (until the copy runs: now, or at each
    // replay for pinned memory).
    guard("cuMemcpyHtoDAsync_v2", || unsafe {
        async_op("cuMemcpyHtoDAsync_v2", s, node)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoHAsync_v2(
    dst: *mut c_void,
    src: CUdeviceptr,
    n: usize,
    s: Handle,
) -> CUresult {
    let node = Node::DtoH {
        dst: dst as usize,
        src,
        len: n as u64,
    };
    // SAFETY: CUDA's contract: `dst` holds `n` bytes.
    guard("cuMemcpyDtoHAsync_v2", || unsafe {
        async_op("cuMemcpyDtoHAsync_v2", s, node)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoDAsync_v2(
    dst: CUdeviceptr,
    src: CUdeviceptr,
    n: usize,
    s: Handle,
) -> CUresult {
    let node = Node::DtoD {
        dst,
        src,
        len: n as u64,
    };
    // SAFETY: no host memory involved.
    guard("cuMemcpyDtoDAsync_v2", || unsafe {
        async_op("cuMemcpyDtoDAsync_v2", s, node)
    })
}

/// `cuMemcpy` / `cuMemcpyAsync` with unified addressing: the direction from the pointers.
///
/// # Safety
/// Host pointers hold `n` bytes.
unsafe fn memcpy_unified(
    func: &str,
    dst: u64,
    src: u64,
    n: usize,
    s: Option<Handle>,
) -> Result<(), CUresult> {
    let is_dev = |p: u64| with_state(|st| Ok(st.mem.find(p, 1).is_ok())).unwrap_or(false);
    let node = match (is_dev(dst), is_dev(src)) {
        (true, true) => Node::DtoD {
            dst,
            src,
            len: n as u64,
        },
        (true, false) => Node::HtoD {
            dst,
            src: src as usize,
            len: n as u64,
        },
        (false, true) => Node::DtoH {
            dst: dst as usize,
            src,
            len: n as u64,
        },
        (false, false) => {
            say(&format!(
                "{func}: neither {dst:#x} nor {src:#x} is device memory"
            ));
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
    };
    // SAFETY: forwarded from the caller.
    unsafe {
        match s {
            Some(s) => async_op(func, s, node),
            None => sync_op(func, node),
        }
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpy(dst: CUdeviceptr, src: CUdeviceptr, n: usize) -> CUresult {
    // SAFETY: CUDA's contract: host pointers hold `n` bytes.
    guard("cuMemcpy", || unsafe {
        memcpy_unified("cuMemcpy", dst, src, n, None)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyAsync(
    dst: CUdeviceptr,
    src: CUdeviceptr,
    n: usize,
    s: Handle,
) -> CUresult {
    // SAFETY: CUDA's contract: host pointers hold `n` bytes.
    guard("cuMemcpyAsync", || unsafe {
        memcpy_unified("cuMemcpyAsync", dst, src, n, Some(s))
    })
}

// ---------------------------------------------------------------------------------------------
// Launch

/// `CU_LAUNCH_PARAM_END`, `CU_LAUNCH_PARAM_BUFFER_POINTER`, `CU_LAUNCH_PARAM_BUFFER_SIZE`.
const LAUNCH_PARAM_END: usize = 0;
const LAUNCH_PARAM_BUFFER_POINTER: usize = 1;
const LAUNCH_PARAM_BUFFER_SIZE: usize = 2;

#[no_mangle]
pub unsafe extern "C" fn cuLaunchKernel(
    f: Handle,
    gx: c_uint,
    gy: c_uint,
    gz: c_uint,
    bx: c_uint,
    by: c_uint,
    bz: c_uint,
    shared: c_uint,
    s: Handle,
    kernel_params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CUresult {
    guard("cuLaunchKernel", || {
        with_state(|st| {
            let fh = f as u64;
            let Some(&(mh, idx)) = st.functions.get(&fh) else {
                return Err(invalid_handle("cuLaunchKernel", "function", fh));
            };
            let kernel = st.modules[&mh].kernels[idx].clone();
            let (d, _) = st.stream("cuLaunchKernel", s as u64)?;
            st.check(d)?;
            let grid = [gx, gy, gz];
            let block = [bx, by, bz];
            let threads = bx as u64 * by as u64 * bz as u64;
            if grid.contains(&0)
                || block.contains(&0)
                || threads > 1024
                || bx > 1024
                || by > 1024
                || bz > 64
                || gy > 65535
                || gz > 65535
                || shared > 98304
            {
                say(&format!(
                    "cuLaunchKernel: kernel {}: launch shape out of range: grid ({gx},{gy},{gz}) \
                     block ({bx},{by},{bz}) dynamic shared {shared} bytes (at most 1024 threads \
                     per block, block z <= 64, grid y/z <= 65535, shared <= 98304): \
                     CUDA_ERROR_INVALID_VALUE",
                    kernel.name
                ));
                return Err(CUDA_ERROR_INVALID_VALUE);
            }
            let size = kernel
                .params
                .iter()
                .map(|p| p.offset + p.size)
                .max()
                .unwrap_or(0);
            let mut params = vec![0u8; size];
            if !kernel_params.is_null() {
                for (k, p) in kernel.params.iter().enumerate() {
                    // SAFETY: CUDA's contract: `kernelParams` has one pointer per parameter,
                    // each to a value of the parameter's size.
                    let arg = unsafe { *kernel_params.add(k) } as *const u8;
                    if arg.is_null() {
                        say(&format!(
                            "cuLaunchKernel: kernel {}: parameter {k} is a null pointer",
                            kernel.name
                        ));
                        return Err(CUDA_ERROR_INVALID_VALUE);
                    }
                    // SAFETY: as above.
                    let src = unsafe { std::slice::from_raw_parts(arg, p.size) };
                    params[p.offset..p.offset + p.size].copy_from_slice(src);
                }
            } else if !extra.is_null() {
                let (mut buf, mut len) = (std::ptr::null::<u8>(), None::<usize>);
                let mut i = 0;
                loop {
                    // SAFETY: CUDA's contract: `extra` is a key/value list ending in
                    // CU_LAUNCH_PARAM_END.
                    let key = unsafe { *extra.add(i) } as usize;
                    if key == LAUNCH_PARAM_END {
                        break;
                    }
                    // SAFETY: as above: each key but END has a value.
                    let val = unsafe { *extra.add(i + 1) };
                    match key {
                        LAUNCH_PARAM_BUFFER_POINTER => buf = val as *const u8,
                        // SAFETY: the value of BUFFER_SIZE points to a size_t.
                        LAUNCH_PARAM_BUFFER_SIZE => len = Some(unsafe { *(val as *const usize) }),
                        _ => {
                            say(&format!("cuLaunchKernel: unknown `extra` key {key}"));
                            return Err(CUDA_ERROR_INVALID_VALUE);
                        }
                    }
                    i += 2;
                }
                match len {
                    Some(n) if !buf.is_null() && n >= size => {
                        // SAFETY: the buffer holds `n` >= `size` bytes.
                        params.copy_from_slice(unsafe { std::slice::from_raw_parts(buf, size) });
                    }
                    _ => {
                        say(&format!(
                            "cuLaunchKernel: kernel {}: `extra` lacks a parameter buffer of \
                             {size} bytes",
                            kernel.name
                        ));
                        return Err(CUDA_ERROR_INVALID_VALUE);
                    }
                }
            } else if size > 0 {
                say(&format!(
                    "cuLaunchKernel: kernel {} takes {} parameters but none were passed",
                    kernel.name,
                    kernel.params.len()
                ));
                return Err(CUDA_ERROR_INVALID_VALUE);
            }
            let node = Node::Kernel {
                func: fh,
                grid,
                block,
                shared,
                params,
            };
            // SAFETY: a kernel node holds no host pointer.
            unsafe { st.submit("cuLaunchKernel", s as u64, node) }
        })
    })
}

// ---------------------------------------------------------------------------------------------
// Graphs

#[no_mangle]
pub unsafe extern "C" fn cuStreamBeginCapture_v2(s: Handle, mode: c_int) -> CUresult {
    guard("cuStreamBeginCapture_v2", || {
        with_state(|st| {
            let h = s as u64;
            if is_legacy_stream(h) {
                say("cuStreamBeginCapture_v2: the legacy (NULL) stream cannot be captured");
                return Err(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
            }
            if !(0..=2).contains(&mode) {
                return Err(CUDA_ERROR_INVALID_VALUE);
            }
            let (d, capturing) = st.stream("cuStreamBeginCapture_v2", h)?;
            st.check(d)?;
            if capturing {
                say(&format!(
                    "cuStreamBeginCapture_v2: stream {h:#x} is already capturing"
                ));
                return Err(CUDA_ERROR_ILLEGAL_STATE);
            }
            st.streams.get_mut(&h).expect("stream").capture = Some(Capture {
                nodes: Vec::new(),
                invalidated: false,
                mode,
                thread: std::thread::current().id(),
            });
            Ok(())
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamEndCapture(s: Handle, graph: *mut Handle) -> CUresult {
    guard("cuStreamEndCapture", || {
        let h = s as u64;
        let r = with_state(|st| {
            let (d, capturing) = st.stream("cuStreamEndCapture", h)?;
            if !capturing {
                say(&format!(
                    "cuStreamEndCapture: stream {h:#x} is not capturing"
                ));
                return Err(CUDA_ERROR_ILLEGAL_STATE);
            }
            let c = st
                .streams
                .get_mut(&h)
                .expect("stream")
                .capture
                .take()
                .expect("capture");
            st.check(d)?;
            if c.invalidated {
                say(&format!(
                    "cuStreamEndCapture: the capture of stream {h:#x} was invalidated by a \
                     refused call: CUDA_ERROR_STREAM_CAPTURE_INVALIDATED"
                ));
                return Err(CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
            }
            let g = st.new_handle();
            st.graphs.insert(g, Arc::new(c.nodes));
            Ok(g)
        });
        match r {
            Ok(g) => {
                // SAFETY: CUDA's contract: a valid out-pointer.
                unsafe { put(graph, g as Handle) }
            }
            Err(e) => {
                if !graph.is_null() {
                    // SAFETY: CUDA's contract: a valid out-pointer.
                    unsafe { put(graph, std::ptr::null_mut())? };
                }
                Err(e)
            }
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamIsCapturing(s: Handle, status: *mut c_int) -> CUresult {
    guard("cuStreamIsCapturing", || {
        let v = with_state(|st| {
            let h = s as u64;
            st.stream("cuStreamIsCapturing", h)?;
            Ok(match st.streams.get(&h).and_then(|x| x.capture.as_ref()) {
                None => 0,
                Some(c) if c.invalidated => 2,
                Some(_) => 1,
            })
        })?;
        // SAFETY: CUDA's contract: a valid out-pointer (CUstreamCaptureStatus, an int).
        unsafe { put(status, v) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphInstantiateWithFlags(
    exec: *mut Handle,
    graph: Handle,
    _flags: u64,
) -> CUresult {
    guard("cuGraphInstantiateWithFlags", || {
        let e = with_state(|st| {
            let Some(nodes) = st.graphs.get(&(graph as u64)).cloned() else {
                return Err(invalid_handle(
                    "cuGraphInstantiateWithFlags",
                    "graph",
                    graph as u64,
                ));
            };
            let e = st.new_handle();
            st.execs.insert(e, nodes);
            Ok(e)
        })?;
        // SAFETY: CUDA's contract: a valid out-pointer.
        unsafe { put(exec, e as Handle) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphLaunch(exec: Handle, s: Handle) -> CUresult {
    guard("cuGraphLaunch", || {
        with_state(|st| {
            let Some(nodes) = st.execs.get(&(exec as u64)).cloned() else {
                return Err(invalid_handle("cuGraphLaunch", "graph exec", exec as u64));
            };
            let h = s as u64;
            let (d, capturing) = st.stream("cuGraphLaunch", h)?;
            st.check(d)?;
            if capturing {
                // A graph launched into a capture: its nodes join the capture.
                for n in nodes.iter() {
                    // SAFETY: host pointers of recorded nodes are pinned (checked at replay).
                    unsafe { st.submit("cuGraphLaunch", h, n.clone())? };
                }
                return Ok(());
            }
            st.stats.graph_launches += 1;
            for n in nodes.iter() {
                // SAFETY: replay checks that host pointers are still pinned.
                let r = unsafe { st.exec("cuGraphLaunch", d, n, true) };
                if st.check(d).is_err() {
                    // A node faulted: the rest does not run, and (as on a GPU, where the
                    // launch is asynchronous) the error shows from the next call on.
                    break;
                }
                r?;
            }
            Ok(())
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphExecDestroy(exec: Handle) -> CUresult {
    guard("cuGraphExecDestroy", || {
        with_state(|st| match st.execs.remove(&(exec as u64)) {
            Some(_) => Ok(()),
            None => Err(invalid_handle(
                "cuGraphExecDestroy",
                "graph exec",
                exec as u64,
            )),
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphDestroy(graph: Handle) -> CUresult {
    guard("cuGraphDestroy", || {
        with_state(|st| match st.graphs.remove(&(graph as u64)) {
            Some(_) => Ok(()),
            None => Err(invalid_handle("cuGraphDestroy", "graph", graph as u64)),
        })
    })
}

// ---------------------------------------------------------------------------------------------
// Errors

#[no_mangle]
pub unsafe extern "C" fn cuGetErrorString(e: CUresult, p: *mut *const c_char) -> CUresult {
    guard("cuGetErrorString", || {
        let found = ERRORS.iter().find(|x| x.0 == e);
        // SAFETY: CUDA's contract: a valid out-pointer; the strings are static.
        unsafe {
            put(p, found.map_or(std::ptr::null(), |x| x.2.as_ptr()))?;
        }
        found.map(|_| ()).ok_or(CUDA_ERROR_INVALID_VALUE)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGetErrorName(e: CUresult, p: *mut *const c_char) -> CUresult {
    guard("cuGetErrorName", || {
        let found = ERRORS.iter().find(|x| x.0 == e);
        // SAFETY: CUDA's contract: a valid out-pointer; the strings are static.
        unsafe {
            put(p, found.map_or(std::ptr::null(), |x| x.1.as_ptr()))?;
        }
        found.map(|_| ()).ok_or(CUDA_ERROR_INVALID_VALUE)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuProfilerStart() -> CUresult {
    CUDA_SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuProfilerStop() -> CUresult {
    CUDA_SUCCESS
}
