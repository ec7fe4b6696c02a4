//! Modules and functions: PTX (or a cubin's embedded PTX) loaded into a device, kernels
//! looked up by name, their attributes.

use super::*;

/// `cuModuleLoadData`: loads NUL-terminated PTX text, or the PTX embedded in an ELF cubin,
/// into the current device (its globals allocated there). Neither: `CUDA_ERROR_INVALID_IMAGE`;
/// PTX the interpreter cannot load: `CUDA_ERROR_INVALID_PTX`.
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

/// `cuModuleGetFunction`: the kernel `name` of module `hmod` (the same handle each time); no
/// such kernel: `CUDA_ERROR_NOT_FOUND`, with the module's kernels listed on stderr.
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

/// `cuModuleUnload`: frees the module's globals and forgets it and its functions.
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

/// `cuFuncGetAttribute`: fixed values (1024 threads per block, 32 registers, PTX version 70,
/// the device's SM as binary version, 49152 dynamic shared bytes, carveout -1; 0 otherwise).
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

/// `cuFuncSetAttribute`: checks the function handle; the setting is ignored.
#[no_mangle]
pub unsafe extern "C" fn cuFuncSetAttribute(f: Handle, _attrib: c_int, _value: c_int) -> CUresult {
    guard("cuFuncSetAttribute", || {
        with_state(|st| func_dev(st, "cuFuncSetAttribute", f).map(|_| ()))
    })
}

/// `cuFuncSetCacheConfig`: checks the function handle; the setting is ignored.
#[no_mangle]
pub unsafe extern "C" fn cuFuncSetCacheConfig(f: Handle, _config: c_int) -> CUresult {
    guard("cuFuncSetCacheConfig", || {
        with_state(|st| func_dev(st, "cuFuncSetCacheConfig", f).map(|_| ()))
    })
}
