//! Device and pinned host memory: allocation, memsets and copies, synchronous or on a stream
//! (recorded when that stream captures).

use super::*;

/// `cuMemGetInfo_v2`: the current device's free bytes (its configured memory less the live
/// allocations) and total bytes.
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

/// `cuMemAlloc_v2`: allocates `size` bytes on the current context's device (addresses are
/// never reused); 0 bytes: `CUDA_ERROR_INVALID_VALUE`; past the device's memory:
/// `CUDA_ERROR_OUT_OF_MEMORY`. Refused while this thread captures.
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

/// `cuMemFree_v2`: frees the live allocation that starts at `dptr` (0 does nothing); any
/// other address, or a second free, is `CUDA_ERROR_INVALID_VALUE`. Refused while this thread
/// captures.
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

/// `cuMemGetAddressRange_v2`: the base and size of the live allocation holding `dptr`
/// (`CUDA_ERROR_NOT_FOUND` when none); either out-pointer may be null.
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

/// `cuMemAllocHost_v2`: `size` bytes of zeroed, page-aligned host memory, recorded as pinned
/// (so captured copies may use it).
#[no_mangle]
pub unsafe extern "C" fn cuMemAllocHost_v2(pp: *mut *mut c_void, size: usize) -> CUresult {
    guard("cuMemAllocHost_v2", || {
        host_alloc("cuMemAllocHost_v2", pp, size)
    })
}

/// `cuMemHostAlloc`: as [`cuMemAllocHost_v2`] (the flags are ignored).
#[no_mangle]
pub unsafe extern "C" fn cuMemHostAlloc(
    pp: *mut *mut c_void,
    size: usize,
    _flags: c_uint,
) -> CUresult {
    guard("cuMemHostAlloc", || host_alloc("cuMemHostAlloc", pp, size))
}

/// `cuMemFreeHost`: frees pinned host memory from [`cuMemAllocHost_v2`] or
/// [`cuMemHostAlloc`]; any other pointer is `CUDA_ERROR_INVALID_VALUE`.
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

/// Runs `node` for the export `func`: synchronously when `s` is `None` ([`sync_op`]), else
/// on stream `s` ([`async_op`]).
///
/// # Safety
/// Host pointers in `node` are valid for its length (until it runs: now, or at each replay
/// for pinned memory).
unsafe fn issue(func: &str, s: Option<Handle>, node: Node) -> Result<(), CUresult> {
    // SAFETY: forwarded from the caller.
    unsafe {
        match s {
            None => sync_op(func, node),
            Some(s) => async_op(func, s, node),
        }
    }
}

/// A memset of `count` elements of `elem` bytes set to `value` (see [`issue`]).
fn memset(
    func: &str,
    s: Option<Handle>,
    dst: CUdeviceptr,
    value: u32,
    elem: u32,
    count: usize,
) -> CUresult {
    let node = Node::Memset {
        dst,
        value,
        elem,
        count: count as u64,
    };
    // SAFETY: no host memory involved.
    guard(func, || unsafe { issue(func, s, node) })
}

/// A copy of `n` bytes from host `src` to device `dst`.
fn htod(dst: CUdeviceptr, src: usize, n: usize) -> Node {
    let len = n as u64;
    Node::HtoD { dst, src, len }
}

/// A copy of `n` bytes from device `src` to host `dst`.
fn dtoh(dst: usize, src: CUdeviceptr, n: usize) -> Node {
    let len = n as u64;
    Node::DtoH { dst, src, len }
}

/// A copy of `n` bytes between device addresses.
fn dtod(dst: CUdeviceptr, src: CUdeviceptr, n: usize) -> Node {
    let len = n as u64;
    Node::DtoD { dst, src, len }
}

/// `cuMemsetD8_v2`: sets `n` bytes at `dst` to `v`, synchronously (refused while this
/// thread captures).
#[no_mangle]
pub unsafe extern "C" fn cuMemsetD8_v2(dst: CUdeviceptr, v: u8, n: usize) -> CUresult {
    memset("cuMemsetD8_v2", None, dst, v as u32, 1, n)
}

/// `cuMemsetD16_v2`: sets `n` 16-bit elements at `dst` to `v`, synchronously (refused while
/// this thread captures).
#[no_mangle]
pub unsafe extern "C" fn cuMemsetD16_v2(dst: CUdeviceptr, v: u16, n: usize) -> CUresult {
    memset("cuMemsetD16_v2", None, dst, v as u32, 2, n)
}

/// `cuMemsetD32_v2`: sets `n` 32-bit elements at `dst` to `v`, synchronously (refused while
/// this thread captures).
#[no_mangle]
pub unsafe extern "C" fn cuMemsetD32_v2(dst: CUdeviceptr, v: c_uint, n: usize) -> CUresult {
    memset("cuMemsetD32_v2", None, dst, v, 4, n)
}

/// `cuMemsetD8Async`: sets `n` bytes at `dst` to `v` on stream `s` (recorded when it
/// captures).
#[no_mangle]
pub unsafe extern "C" fn cuMemsetD8Async(dst: CUdeviceptr, v: u8, n: usize, s: Handle) -> CUresult {
    memset("cuMemsetD8Async", Some(s), dst, v as u32, 1, n)
}

/// `cuMemsetD16Async`: sets `n` 16-bit elements at `dst` to `v` on stream `s` (recorded when
/// it captures).
#[no_mangle]
pub unsafe extern "C" fn cuMemsetD16Async(
    dst: CUdeviceptr,
    v: u16,
    n: usize,
    s: Handle,
) -> CUresult {
    memset("cuMemsetD16Async", Some(s), dst, v as u32, 2, n)
}

/// `cuMemsetD32Async`: sets `n` 32-bit elements at `dst` to `v` on stream `s` (recorded when
/// it captures).
#[no_mangle]
pub unsafe extern "C" fn cuMemsetD32Async(
    dst: CUdeviceptr,
    v: c_uint,
    n: usize,
    s: Handle,
) -> CUresult {
    memset("cuMemsetD32Async", Some(s), dst, v, 4, n)
}

/// `cuMemcpyHtoD_v2`: copies `n` bytes from host `src` to device `dst`, synchronously; the
/// device range must lie in one live allocation (else `CUDA_ERROR_INVALID_VALUE`).
#[no_mangle]
pub unsafe extern "C" fn cuMemcpyHtoD_v2(
    dst: CUdeviceptr,
    src: *const c_void,
    n: usize,
) -> CUresult {
    let f = "cuMemcpyHtoD_v2";
    // SAFETY: CUDA's contract: `src` holds `n` bytes.
    guard(f, || unsafe { issue(f, None, htod(dst, src as usize, n)) })
}

/// `cuMemcpyDtoH_v2`: copies `n` bytes from device `src` to host `dst`, synchronously; the
/// device range must lie in one live allocation (else `CUDA_ERROR_INVALID_VALUE`).
#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoH_v2(dst: *mut c_void, src: CUdeviceptr, n: usize) -> CUresult {
    let f = "cuMemcpyDtoH_v2";
    // SAFETY: CUDA's contract: `dst` holds `n` bytes.
    guard(f, || unsafe { issue(f, None, dtoh(dst as usize, src, n)) })
}

/// `cuMemcpyDtoD_v2`: copies `n` bytes between device addresses, synchronously; each range
/// must lie in one live allocation (else `CUDA_ERROR_INVALID_VALUE`).
#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoD_v2(dst: CUdeviceptr, src: CUdeviceptr, n: usize) -> CUresult {
    let f = "cuMemcpyDtoD_v2";
    // SAFETY: no host memory involved.
    guard(f, || unsafe { issue(f, None, dtod(dst, src, n)) })
}

/// `cuMemcpyPeer`: copies `n` bytes from `src` (of context `src_ctx`) to `dst` (of
/// `dst_ctx`), synchronously. One address space holds every device's memory, so this is a
/// device-to-device copy (each range in one live allocation).
#[no_mangle]
pub unsafe extern "C" fn cuMemcpyPeer(
    dst: CUdeviceptr,
    _dst_ctx: Handle,
    src: CUdeviceptr,
    _src_ctx: Handle,
    n: usize,
) -> CUresult {
    let f = "cuMemcpyPeer";
    // SAFETY: no host memory involved.
    guard(f, || unsafe { issue(f, None, dtod(dst, src, n)) })
}

/// `cuMemcpyPeerAsync`: [`cuMemcpyPeer`] on stream `s` (recorded when it captures).
#[no_mangle]
pub unsafe extern "C" fn cuMemcpyPeerAsync(
    dst: CUdeviceptr,
    _dst_ctx: Handle,
    src: CUdeviceptr,
    _src_ctx: Handle,
    n: usize,
    s: Handle,
) -> CUresult {
    let f = "cuMemcpyPeerAsync";
    // SAFETY: no host memory involved.
    guard(f, || unsafe { issue(f, Some(s), dtod(dst, src, n)) })
}

/// `cuMemcpyHtoDAsync_v2`: copies `n` bytes from host `src` to device `dst` on stream `s`;
/// when `s` captures, recorded if `src` is pinned, else refused (the capture invalidated).
#[no_mangle]
pub unsafe extern "C" fn cuMemcpyHtoDAsync_v2(
    dst: CUdeviceptr,
    src: *const c_void,
    n: usize,
    s: Handle,
) -> CUresult {
    let f = "cuMemcpyHtoDAsync_v2";
    // SAFETY: CUDA's contract: `src` holds `n` bytes (until the copy runs: now, or at each
    // replay for pinned memory).
    guard(f, || unsafe {
        issue(f, Some(s), htod(dst, src as usize, n))
    })
}

/// `cuMemcpyDtoHAsync_v2`: copies `n` bytes from device `src` to host `dst` on stream `s`;
/// when `s` captures, recorded if `dst` is pinned, else refused (the capture invalidated).
#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoHAsync_v2(
    dst: *mut c_void,
    src: CUdeviceptr,
    n: usize,
    s: Handle,
) -> CUresult {
    let f = "cuMemcpyDtoHAsync_v2";
    // SAFETY: CUDA's contract: `dst` holds `n` bytes.
    guard(f, || unsafe {
        issue(f, Some(s), dtoh(dst as usize, src, n))
    })
}

/// `cuMemcpyDtoDAsync_v2`: copies `n` bytes between device addresses on stream `s`
/// (recorded when it captures).
#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoDAsync_v2(
    dst: CUdeviceptr,
    src: CUdeviceptr,
    n: usize,
    s: Handle,
) -> CUresult {
    let f = "cuMemcpyDtoDAsync_v2";
    // SAFETY: no host memory involved.
    guard(f, || unsafe { issue(f, Some(s), dtod(dst, src, n)) })
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
        (true, true) => dtod(dst, src, n),
        (true, false) => htod(dst, src as usize, n),
        (false, true) => dtoh(dst as usize, src, n),
        (false, false) => {
            say(&format!(
                "{func}: neither {dst:#x} nor {src:#x} is device memory"
            ));
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
    };
    // SAFETY: forwarded from the caller.
    unsafe { issue(func, s, node) }
}

/// `cuMemcpy`: a synchronous copy of `n` bytes whose direction follows from which pointers
/// lie in device allocations (neither: `CUDA_ERROR_INVALID_VALUE`).
#[no_mangle]
pub unsafe extern "C" fn cuMemcpy(dst: CUdeviceptr, src: CUdeviceptr, n: usize) -> CUresult {
    // SAFETY: CUDA's contract: host pointers hold `n` bytes.
    guard("cuMemcpy", || unsafe {
        memcpy_unified("cuMemcpy", dst, src, n, None)
    })
}

/// `cuMemcpyAsync`: as [`cuMemcpy`], on stream `s` (recorded when it captures, host memory
/// pinned).
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
