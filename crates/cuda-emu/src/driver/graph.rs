//! Stream capture and graphs: beginning and ending a capture, instantiating the recorded
//! nodes and replaying them in order.

use super::*;

/// `cuStreamBeginCapture_v2`: starts recording stream `s` in `mode` (0 global, 1
/// thread-local, 2 relaxed). The legacy stream: `CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED`; a
/// stream already capturing: `CUDA_ERROR_ILLEGAL_STATE`.
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

/// `cuStreamEndCapture`: ends the capture of `s`; its nodes become a new graph written to
/// `graph`. A capture a refused call invalidated: `CUDA_ERROR_STREAM_CAPTURE_INVALIDATED` and
/// a null graph; a stream not capturing: `CUDA_ERROR_ILLEGAL_STATE`.
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

/// `cuStreamIsCapturing`: 0 when `s` is not capturing, 1 when it is, 2 when its capture
/// was invalidated.
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

/// `cuGraphInstantiateWithFlags`: an executable graph sharing the graph's nodes (the flags
/// are ignored).
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

/// `cuGraphLaunch`: replays the nodes in order on `s`'s device; a faulting node stops the
/// rest and its error turns sticky. Into a capturing stream, the nodes join that capture.
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

/// `cuGraphExecDestroy`: forgets the executable graph.
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

/// `cuGraphDestroy`: forgets the graph (executables made from it keep its nodes).
#[no_mangle]
pub unsafe extern "C" fn cuGraphDestroy(graph: Handle) -> CUresult {
    guard("cuGraphDestroy", || {
        with_state(|st| match st.graphs.remove(&(graph as u64)) {
            Some(_) => Ok(()),
            None => Err(invalid_handle("cuGraphDestroy", "graph", graph as u64)),
        })
    })
}
