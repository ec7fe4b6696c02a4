//! Streams and events: creation, synchronisation and queries (everything has already run),
//! event recording and elapsed times.

use super::*;

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

/// `cuStreamCreate`: a new stream on the current device (the flags are ignored).
#[no_mangle]
pub unsafe extern "C" fn cuStreamCreate(ph: *mut Handle, _flags: c_uint) -> CUresult {
    guard("cuStreamCreate", || create_stream("cuStreamCreate", ph))
}

/// `cuStreamCreateWithPriority`: a new stream on the current device (the flags and the
/// priority are ignored).
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

/// `cuCtxGetStreamPriorityRange`: 0 and 0 (priorities are not emulated); either out-pointer
/// may be null.
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

/// `cuStreamDestroy_v2`: forgets the stream (returning its device's sticky error).
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

/// `cuStreamSynchronize`: everything has run already, so only the device's sticky error is
/// returned; refused on a capturing stream (the capture invalidated), and for the legacy
/// stream while this thread captures.
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

/// `cuStreamQuery`: a stream is always idle: `CUDA_SUCCESS` or the device's sticky error;
/// refused on a capturing stream (the capture invalidated).
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

/// `cuStreamWaitEvent`: checks both handles; there is nothing to wait for.
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

/// `cuEventCreate`: a new, unrecorded event on the current device (the flags are ignored).
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

/// `cuEventRecord`: stamps the event with the time now (all work before it on `s` has run
/// already).
#[no_mangle]
pub unsafe extern "C" fn cuEventRecord(e: Handle, s: Handle) -> CUresult {
    guard("cuEventRecord", || record_event("cuEventRecord", e, s))
}

/// `cuEventRecordWithFlags`: as [`cuEventRecord`] (the flags are ignored).
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

/// `cuEventSynchronize`: an event is always complete: `CUDA_SUCCESS` or its device's sticky
/// error.
#[no_mangle]
pub unsafe extern "C" fn cuEventSynchronize(e: Handle) -> CUresult {
    guard("cuEventSynchronize", || {
        with_state(|st| {
            let d = event_dev(st, "cuEventSynchronize", e)?;
            st.check(d)
        })
    })
}

/// `cuEventQuery`: an event is always complete: `CUDA_SUCCESS` or its device's sticky error.
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

/// `cuEventElapsedTime`: the milliseconds from event `a`'s stamp to event `b`'s (negative
/// when `b` came first); an event never recorded: `CUDA_ERROR_INVALID_HANDLE`.
#[no_mangle]
pub unsafe extern "C" fn cuEventElapsedTime(ms: *mut f32, a: Handle, b: Handle) -> CUresult {
    guard("cuEventElapsedTime", || {
        elapsed("cuEventElapsedTime", ms, a, b)
    })
}

/// `cuEventElapsedTime_v2`: as [`cuEventElapsedTime`].
#[no_mangle]
pub unsafe extern "C" fn cuEventElapsedTime_v2(ms: *mut f32, a: Handle, b: Handle) -> CUresult {
    guard("cuEventElapsedTime_v2", || {
        elapsed("cuEventElapsedTime_v2", ms, a, b)
    })
}

/// `cuEventDestroy_v2`: forgets the event (returning its device's sticky error).
#[no_mangle]
pub unsafe extern "C" fn cuEventDestroy_v2(e: Handle) -> CUresult {
    guard("cuEventDestroy_v2", || {
        with_state(|st| match st.events.remove(&(e as u64)) {
            Some(ev) => st.check(ev.dev),
            None => Err(invalid_handle("cuEventDestroy_v2", "event", e as u64)),
        })
    })
}
