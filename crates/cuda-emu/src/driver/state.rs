//! The driver's global state at work: handles, the current context, sticky errors, capture
//! checks, memory operations and kernel runs; faults printed, statistics gathered.

use super::*;

impl State {
    pub(super) fn new(cfgs: Vec<DeviceConfig>) -> State {
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

    pub(super) fn device(&self, d: CUdevice) -> Result<usize, CUresult> {
        if d >= 0 && (d as usize) < self.devices.len() {
            Ok(d as usize)
        } else {
            Err(CUDA_ERROR_INVALID_DEVICE)
        }
    }

    pub(super) fn ctx_device(&self, ctx: u64) -> Option<usize> {
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
    pub(super) fn refuse_if_capturing(&mut self, func: &str) -> Result<(), CUresult> {
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

    pub(super) fn is_pinned(&self, p: usize, len: usize) -> bool {
        match self.pinned.range(..=p).next_back() {
            Some((&s, &l)) => p.checked_add(len).is_some_and(|e| e <= s + l),
            None => false,
        }
    }

    /// Records `node` on stream `h` when it is capturing, else does it now.
    ///
    /// # Safety
    /// Host pointers in `node` are valid for its length now (and, when recorded, pinned).
    pub(super) unsafe fn submit(&mut self, func: &str, h: u64, node: Node) -> Result<(), CUresult> {
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
    pub(super) unsafe fn exec(
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
    pub(super) fn run_kernel(
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

    pub(super) fn device_infos(&self) -> Vec<DeviceInfo> {
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
pub(super) fn report_fault(f: &Fault, grid: [u32; 3], block: [u32; 3], code: CUresult) {
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
