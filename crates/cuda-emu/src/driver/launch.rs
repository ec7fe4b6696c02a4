//! `cuLaunchKernel`: the launch's parameters read (either form) and the kernel run at once,
//! or recorded when its stream captures.

use super::*;

/// `CU_LAUNCH_PARAM_END`, `CU_LAUNCH_PARAM_BUFFER_POINTER`, `CU_LAUNCH_PARAM_BUFFER_SIZE`.
const LAUNCH_PARAM_END: usize = 0;
const LAUNCH_PARAM_BUFFER_POINTER: usize = 1;
const LAUNCH_PARAM_BUFFER_SIZE: usize = 2;

/// `cuLaunchKernel`: gathers the parameters from `kernel_params` (one pointer per parameter)
/// or `extra` (one buffer), checks the shape (at most 1024 threads per block, block z <= 64,
/// grid y/z <= 65535, dynamic shared <= 98304 bytes, else `CUDA_ERROR_INVALID_VALUE`) and runs
/// the kernel to completion now, or records it when `s` captures.
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
