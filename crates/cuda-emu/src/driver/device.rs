//! Initialisation, devices and contexts: `cuInit` reading the configured devices, their
//! attributes, the primary contexts and the current-context stack.

use super::*;

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

/// `cuDriverGetVersion`: writes [`DRIVER_VERSION`] to `v` (works before `cuInit`).
#[no_mangle]
pub unsafe extern "C" fn cuDriverGetVersion(v: *mut c_int) -> CUresult {
    // SAFETY: CUDA's contract: a valid out-pointer.
    guard("cuDriverGetVersion", || unsafe { put(v, DRIVER_VERSION) })
}

/// `cuDeviceGetCount`: the number of configured devices.
#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetCount(n: *mut c_int) -> CUresult {
    guard("cuDeviceGetCount", || {
        let c = with_state(|st| Ok(st.devices.len() as c_int))?;
        // SAFETY: CUDA's contract: a valid out-pointer.
        unsafe { put(n, c) }
    })
}

/// `cuDeviceGet`: the device of `ordinal` (a device is its ordinal); out of range,
/// `CUDA_ERROR_INVALID_DEVICE`.
#[no_mangle]
pub unsafe extern "C" fn cuDeviceGet(dev: *mut CUdevice, ordinal: c_int) -> CUresult {
    guard("cuDeviceGet", || {
        let d = with_state(|st| st.device(ordinal))?;
        // SAFETY: CUDA's contract: a valid out-pointer.
        unsafe { put(dev, d as CUdevice) }
    })
}

/// `cuDeviceCanAccessPeer`: 1 for two different devices (every emulated device reaches
/// every other), unless `SURPLUS_EMU_PEER=0`, which makes copies between devices go through
/// the host (as between consumer cards without peer-to-peer).
#[no_mangle]
pub unsafe extern "C" fn cuDeviceCanAccessPeer(
    can: *mut c_int,
    dev: CUdevice,
    peer: CUdevice,
) -> CUresult {
    guard("cuDeviceCanAccessPeer", || {
        let (a, b) = with_state(|st| Ok((st.device(dev)?, st.device(peer)?)))?;
        let off = std::env::var("SURPLUS_EMU_PEER").is_ok_and(|v| v == "0");
        // SAFETY: CUDA's contract: a valid out-pointer.
        unsafe { put(can, c_int::from(a != b && !off)) }
    })
}

/// `cuCtxEnablePeerAccess`: accepted (every allocation is reachable from every context).
#[no_mangle]
pub unsafe extern "C" fn cuCtxEnablePeerAccess(_peer: Handle, flags: c_uint) -> CUresult {
    guard("cuCtxEnablePeerAccess", || {
        if flags != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        Ok(())
    })
}

/// `cuDeviceGetName`: writes `<name> (emulated)` into `name`, cut to `len - 1` bytes and
/// NUL-terminated.
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

/// `cuDeviceTotalMem_v2`: the device's configured memory in bytes.
#[no_mangle]
pub unsafe extern "C" fn cuDeviceTotalMem_v2(bytes: *mut usize, dev: CUdevice) -> CUresult {
    guard("cuDeviceTotalMem_v2", || {
        let m = with_state(|st| Ok(st.devices[st.device(dev)?].cfg.memory))?;
        // SAFETY: CUDA's contract: a valid out-pointer.
        unsafe { put(bytes, m as usize) }
    })
}

/// `cuDeviceGetAttribute`: the value [`device_attribute`] gives; an attribute outside 1..120
/// is `CUDA_ERROR_INVALID_VALUE`.
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

/// `cuDevicePrimaryCtxRetain`: the device's one primary context, its retain count raised.
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

/// `cuDevicePrimaryCtxRelease_v2`: lowers the retain count (not below 0); the context and
/// its allocations stay.
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

/// `cuDevicePrimaryCtxGetState`: flags 0, and active while the context is retained.
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

/// `cuDevicePrimaryCtxSetFlags_v2`: checks the device; the flags are ignored.
#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxSetFlags_v2(dev: CUdevice, _flags: c_uint) -> CUresult {
    guard("cuDevicePrimaryCtxSetFlags_v2", || {
        with_state(|st| st.device(dev).map(|_| ()))
    })
}

/// `cuCtxGetCurrent`: the top of this thread's context stack (null when it is empty).
#[no_mangle]
pub unsafe extern "C" fn cuCtxGetCurrent(pctx: *mut Handle) -> CUresult {
    guard("cuCtxGetCurrent", || {
        with_state(|_| Ok(()))?;
        // SAFETY: CUDA's contract: a valid out-pointer.
        unsafe { put(pctx, current_ctx() as Handle) }
    })
}

/// `cuCtxSetCurrent`: replaces the top of this thread's context stack (pushes onto an empty
/// one); null pops it. Not a primary context: `CUDA_ERROR_INVALID_HANDLE`.
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

/// `cuCtxPushCurrent_v2`: pushes a primary context onto this thread's context stack.
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

/// `cuCtxPopCurrent_v2`: pops this thread's context stack into `pctx` (which may be null);
/// an empty stack is `CUDA_ERROR_INVALID_CONTEXT`.
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

/// `cuCtxGetDevice`: the current context's device (`CUDA_ERROR_INVALID_CONTEXT` when none).
#[no_mangle]
pub unsafe extern "C" fn cuCtxGetDevice(dev: *mut CUdevice) -> CUresult {
    guard("cuCtxGetDevice", || {
        let d = with_state(|st| st.cur_dev("cuCtxGetDevice"))?;
        // SAFETY: CUDA's contract: a valid out-pointer.
        unsafe { put(dev, d as CUdevice) }
    })
}

/// `cuCtxGetApiVersion`: 12080 for a primary context or null.
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

/// `cuCtxSynchronize`: everything has run already, so only the current device's sticky
/// error is returned; refused while this thread captures.
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

/// `cuProfilerStart`: does nothing (there is no profiler).
#[no_mangle]
pub unsafe extern "C" fn cuProfilerStart() -> CUresult {
    CUDA_SUCCESS
}

/// `cuProfilerStop`: does nothing (there is no profiler).
#[no_mangle]
pub unsafe extern "C" fn cuProfilerStop() -> CUresult {
    CUDA_SUCCESS
}
