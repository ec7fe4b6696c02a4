//! cuBLAS, emulated: the exports of `libcublas.so.12` the project uses, done on the CPU over
//! the driver's device memory.
//!
//! `cublasGemmEx` computes `C = alpha · op(A) · op(B) + beta · C` with real cuBLAS's
//! column-major semantics for every combination of `CUBLAS_OP_N`/`T`/`C` (`C` = `T`, the types
//! being real): A, B in f16 × f16, bf16 × bf16 or f32 × f32, C in f32 (or the inputs' type
//! for f16/bf16), compute type `CUBLAS_COMPUTE_32F` (or its `_FAST_*`/`_PEDANTIC` variants,
//! or the legacy `CUDA_R_32F`), alpha and beta host f32 pointers. Products accumulate in f32
//! (eight partial sums per dot product), so results are close to but not bit-identical with
//! cuBLAS. With `beta == 0`, C is not read (as in cuBLAS: it may hold NaN). Other type
//! combinations: `CUBLAS_STATUS_NOT_SUPPORTED` (15) with a message.
//!
//! Every operand's whole strided extent (`ld · (cols − 1) + rows` elements) must lie inside
//! one live allocation. If one does not, the fault is printed compute-sanitizer style, the
//! driver's context becomes sticky with `CUDA_ERROR_ILLEGAL_ADDRESS` (as the asynchronous
//! fault of a real GEMM kernel would make it), and the call returns
//! `CUBLAS_STATUS_EXECUTION_FAILED` (13) at once, so the failing call is the one reported.
//! A call on a context already sticky also returns `CUBLAS_STATUS_EXECUTION_FAILED`.
//!
//! Stream capture: the project never captures cuBLAS calls; a GEMM issued on a capturing
//! stream is refused (`CUBLAS_STATUS_NOT_SUPPORTED`, the capture invalidated, a message).
//!
//! Each GEMM counts in the statistics as a launch of kernel `cublasGemmEx`:
//! `bytes_requested` = bytes of A and B extents read, plus C read (when `beta != 0`) and
//! written; sectors = those bytes / 32 (rounded up); `warp_instructions` = m·n·k / 32.

#![allow(non_snake_case, clippy::missing_safety_doc, clippy::too_many_arguments)]

use std::ffi::{c_char, c_int, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use half::{bf16, f16};

use crate::driver::{say, with_state, BlasHandle, CUDA_ERROR_ILLEGAL_ADDRESS};
use crate::mem::SECTOR;
use crate::ptx::KernelStats;

/// `cublasStatus_t`.
pub type CublasStatus = c_int;
/// `CUBLAS_STATUS_SUCCESS`.
pub const CUBLAS_STATUS_SUCCESS: CublasStatus = 0;
/// `CUBLAS_STATUS_NOT_INITIALIZED`.
pub const CUBLAS_STATUS_NOT_INITIALIZED: CublasStatus = 1;
/// `CUBLAS_STATUS_ALLOC_FAILED`.
pub const CUBLAS_STATUS_ALLOC_FAILED: CublasStatus = 3;
/// `CUBLAS_STATUS_INVALID_VALUE`.
pub const CUBLAS_STATUS_INVALID_VALUE: CublasStatus = 7;
/// `CUBLAS_STATUS_ARCH_MISMATCH`.
pub const CUBLAS_STATUS_ARCH_MISMATCH: CublasStatus = 8;
/// `CUBLAS_STATUS_MAPPING_ERROR`.
pub const CUBLAS_STATUS_MAPPING_ERROR: CublasStatus = 11;
/// `CUBLAS_STATUS_EXECUTION_FAILED`.
pub const CUBLAS_STATUS_EXECUTION_FAILED: CublasStatus = 13;
/// `CUBLAS_STATUS_INTERNAL_ERROR`.
pub const CUBLAS_STATUS_INTERNAL_ERROR: CublasStatus = 14;
/// `CUBLAS_STATUS_NOT_SUPPORTED`.
pub const CUBLAS_STATUS_NOT_SUPPORTED: CublasStatus = 15;

/// `cudaDataType` values used.
pub const CUDA_R_32F: c_int = 0;
/// `CUDA_R_16F`.
pub const CUDA_R_16F: c_int = 2;
/// `CUDA_R_16BF`.
pub const CUDA_R_16BF: c_int = 14;
/// `CUBLAS_COMPUTE_32F`.
pub const CUBLAS_COMPUTE_32F: c_int = 68;
/// `CUBLAS_OP_N`.
pub const CUBLAS_OP_N: c_int = 0;
/// `CUBLAS_OP_T`.
pub const CUBLAS_OP_T: c_int = 1;

/// The version reported (12.8.0).
pub const VERSION: (c_int, c_int, c_int) = (12, 8, 0);

fn guard(name: &str, f: impl FnOnce() -> Result<(), CublasStatus>) -> CublasStatus {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => CUBLAS_STATUS_SUCCESS,
        Ok(Err(e)) => e,
        Err(_) => {
            say(&format!(
                "{name} panicked (returning CUBLAS_STATUS_INTERNAL_ERROR)"
            ));
            CUBLAS_STATUS_INTERNAL_ERROR
        }
    }
}

/// `cublasGetProperty(type, *value)`: MAJOR_VERSION 0, MINOR_VERSION 1, PATCH_LEVEL 2.
#[no_mangle]
pub unsafe extern "C" fn cublasGetProperty(ty: c_int, value: *mut c_int) -> CublasStatus {
    guard("cublasGetProperty", || {
        let v = match ty {
            0 => VERSION.0,
            1 => VERSION.1,
            2 => VERSION.2,
            _ => return Err(CUBLAS_STATUS_INVALID_VALUE),
        };
        if value.is_null() {
            return Err(CUBLAS_STATUS_INVALID_VALUE);
        }
        // SAFETY: non-null; cuBLAS's contract: a valid out-pointer.
        unsafe { value.write(v) };
        Ok(())
    })
}

/// `cublasGetVersion_v2(handle, *version)`: 120800.
#[no_mangle]
pub unsafe extern "C" fn cublasGetVersion_v2(_h: *mut c_void, version: *mut c_int) -> CublasStatus {
    guard("cublasGetVersion_v2", || {
        if version.is_null() {
            return Err(CUBLAS_STATUS_INVALID_VALUE);
        }
        // SAFETY: non-null; cuBLAS's contract: a valid out-pointer.
        unsafe { version.write(VERSION.0 * 10000 + VERSION.1 * 100 + VERSION.2) };
        Ok(())
    })
}

/// `cublasCreate_v2(*handle)`: needs `cuInit` (else `CUBLAS_STATUS_NOT_INITIALIZED`); bound
/// to the current context's device (device 0 when none is current) and the NULL stream.
#[no_mangle]
pub unsafe extern "C" fn cublasCreate_v2(handle: *mut *mut c_void) -> CublasStatus {
    guard("cublasCreate_v2", || {
        if handle.is_null() {
            return Err(CUBLAS_STATUS_INVALID_VALUE);
        }
        let h = with_state(|st| {
            let dev = st.cur_dev("cublasCreate_v2").unwrap_or(0);
            let h = st.new_handle();
            st.blas.insert(h, BlasHandle { dev, stream: 0 });
            Ok(h)
        })
        .map_err(|_| {
            say("cublasCreate_v2: the driver is not initialised (call cuInit first)");
            CUBLAS_STATUS_NOT_INITIALIZED
        })?;
        // SAFETY: non-null; cuBLAS's contract: a valid out-pointer.
        unsafe { handle.write(h as *mut c_void) };
        Ok(())
    })
}

/// `cublasDestroy_v2(handle)`.
#[no_mangle]
pub unsafe extern "C" fn cublasDestroy_v2(handle: *mut c_void) -> CublasStatus {
    guard("cublasDestroy_v2", || {
        with_state(|st| Ok(st.blas.remove(&(handle as u64)).is_some()))
            .ok()
            .filter(|&x| x)
            .map(|_| ())
            .ok_or_else(|| {
                say(&format!("cublasDestroy_v2: invalid handle {handle:?}"));
                CUBLAS_STATUS_NOT_INITIALIZED
            })
    })
}

/// `cublasSetStream_v2(handle, stream)`.
#[no_mangle]
pub unsafe extern "C" fn cublasSetStream_v2(
    handle: *mut c_void,
    stream: *mut c_void,
) -> CublasStatus {
    guard("cublasSetStream_v2", || {
        with_state(|st| {
            let (dev, _) = st
                .stream("cublasSetStream_v2", stream as u64)
                .map_err(|_| CUBLAS_STATUS_INVALID_VALUE)?;
            let Some(b) = st.blas.get_mut(&(handle as u64)) else {
                say(&format!("cublasSetStream_v2: invalid handle {handle:?}"));
                return Err(CUBLAS_STATUS_NOT_INITIALIZED);
            };
            b.stream = stream as u64;
            b.dev = dev;
            Ok(())
        })
        .map_err(|e| {
            if e == crate::driver::CUDA_ERROR_NOT_INITIALIZED {
                CUBLAS_STATUS_NOT_INITIALIZED
            } else {
                e
            }
        })
    })
}

/// `cublasGetStream_v2(handle, *stream)`.
#[no_mangle]
pub unsafe extern "C" fn cublasGetStream_v2(
    handle: *mut c_void,
    stream: *mut *mut c_void,
) -> CublasStatus {
    guard("cublasGetStream_v2", || {
        let s = with_state(|st| Ok(st.blas.get(&(handle as u64)).map(|b| b.stream)))
            .ok()
            .flatten()
            .ok_or(CUBLAS_STATUS_NOT_INITIALIZED)?;
        if stream.is_null() {
            return Err(CUBLAS_STATUS_INVALID_VALUE);
        }
        // SAFETY: non-null; cuBLAS's contract: a valid out-pointer.
        unsafe { stream.write(s as *mut c_void) };
        Ok(())
    })
}

/// `cublasSetMathMode(handle, mode)`: accepted, ignored.
#[no_mangle]
pub unsafe extern "C" fn cublasSetMathMode(handle: *mut c_void, _mode: c_int) -> CublasStatus {
    guard("cublasSetMathMode", || {
        with_state(|st| Ok(st.blas.contains_key(&(handle as u64))))
            .ok()
            .filter(|&x| x)
            .map(|_| ())
            .ok_or(CUBLAS_STATUS_NOT_INITIALIZED)
    })
}

const STATUSES: &[(CublasStatus, &CStr, &CStr)] = &[
    (0, c"CUBLAS_STATUS_SUCCESS", c"success"),
    (
        1,
        c"CUBLAS_STATUS_NOT_INITIALIZED",
        c"the library was not initialized",
    ),
    (
        3,
        c"CUBLAS_STATUS_ALLOC_FAILED",
        c"the resource allocation failed",
    ),
    (
        7,
        c"CUBLAS_STATUS_INVALID_VALUE",
        c"an invalid numeric value was used as an argument",
    ),
    (
        8,
        c"CUBLAS_STATUS_ARCH_MISMATCH",
        c"an absent device architectural feature is required",
    ),
    (
        11,
        c"CUBLAS_STATUS_MAPPING_ERROR",
        c"an access to GPU memory space failed",
    ),
    (
        13,
        c"CUBLAS_STATUS_EXECUTION_FAILED",
        c"the GPU program failed to execute",
    ),
    (
        14,
        c"CUBLAS_STATUS_INTERNAL_ERROR",
        c"an internal operation failed",
    ),
    (
        15,
        c"CUBLAS_STATUS_NOT_SUPPORTED",
        c"the functionality requested is not supported",
    ),
];

/// `cublasGetStatusString(status)`: a static string.
#[no_mangle]
pub extern "C" fn cublasGetStatusString(status: CublasStatus) -> *const c_char {
    STATUSES
        .iter()
        .find(|s| s.0 == status)
        .map_or(c"unknown error".as_ptr(), |s| s.2.as_ptr())
}

/// `cublasGetStatusName(status)`: a static string.
#[no_mangle]
pub extern "C" fn cublasGetStatusName(status: CublasStatus) -> *const c_char {
    STATUSES
        .iter()
        .find(|s| s.0 == status)
        .map_or(c"CUBLAS_STATUS_UNKNOWN".as_ptr(), |s| s.1.as_ptr())
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Ty {
    F32,
    F16,
    Bf16,
}

impl Ty {
    fn of(t: c_int) -> Option<Ty> {
        match t {
            CUDA_R_32F => Some(Ty::F32),
            CUDA_R_16F => Some(Ty::F16),
            CUDA_R_16BF => Some(Ty::Bf16),
            _ => None,
        }
    }
    fn size(self) -> u64 {
        match self {
            Ty::F32 => 4,
            _ => 2,
        }
    }
    fn load(self, b: &[u8], i: usize) -> f32 {
        match self {
            Ty::F32 => f32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]),
            Ty::F16 => f16::from_le_bytes([b[2 * i], b[2 * i + 1]]).to_f32(),
            Ty::Bf16 => bf16::from_le_bytes([b[2 * i], b[2 * i + 1]]).to_f32(),
        }
    }
    fn store(self, b: &mut [u8], i: usize, v: f32) {
        match self {
            Ty::F32 => b[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes()),
            Ty::F16 => b[2 * i..2 * i + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes()),
            Ty::Bf16 => b[2 * i..2 * i + 2].copy_from_slice(&bf16::from_f32(v).to_le_bytes()),
        }
    }
}

/// The dot product of two equal-length slices, in f32 with eight partial sums.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let n8 = a.len() / 8 * 8;
    for (x, y) in a[..n8].chunks_exact(8).zip(b[..n8].chunks_exact(8)) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for i in n8..a.len() {
        s += a[i] * b[i];
    }
    s
}

/// `cublasGemmEx`: see the module documentation.
#[no_mangle]
pub unsafe extern "C" fn cublasGemmEx(
    handle: *mut c_void,
    transa: c_int,
    transb: c_int,
    m: c_int,
    n: c_int,
    k: c_int,
    alpha: *const c_void,
    a: *const c_void,
    a_type: c_int,
    lda: c_int,
    b: *const c_void,
    b_type: c_int,
    ldb: c_int,
    beta: *const c_void,
    c: *mut c_void,
    c_type: c_int,
    ldc: c_int,
    compute: c_int,
    _algo: c_int,
) -> CublasStatus {
    guard("cublasGemmEx", || {
        let desc = format!(
            "cublasGemmEx(transa {transa}, transb {transb}, m {m}, n {n}, k {k}, A {a:?} type \
             {a_type} lda {lda}, B {b:?} type {b_type} ldb {ldb}, C {c:?} type {c_type} ldc {ldc}, \
             compute {compute})"
        );
        let (ta, tb) = match (op(transa), op(transb)) {
            (Some(x), Some(y)) => (x, y),
            _ => {
                say(&format!(
                    "{desc}: invalid operation: CUBLAS_STATUS_INVALID_VALUE"
                ));
                return Err(CUBLAS_STATUS_INVALID_VALUE);
            }
        };
        let (Some(at), Some(bt), Some(ct)) = (Ty::of(a_type), Ty::of(b_type), Ty::of(c_type))
        else {
            say(&format!(
                "{desc}: unsupported data types (f16, bf16 and f32 are emulated): \
                 CUBLAS_STATUS_NOT_SUPPORTED"
            ));
            return Err(CUBLAS_STATUS_NOT_SUPPORTED);
        };
        // CUBLAS_COMPUTE_32F, _PEDANTIC, _FAST_16F, _FAST_16BF, _FAST_TF32; legacy CUDA_R_32F.
        let compute_ok = matches!(compute, 68 | 69 | 74 | 75 | 77 | CUDA_R_32F);
        let types_ok = at == bt && (ct == Ty::F32 || ct == at);
        if !compute_ok || !types_ok {
            say(&format!(
                "{desc}: unsupported combination (emulated: A and B of one type among f16, bf16, \
                 f32; C f32 or that type; compute CUBLAS_COMPUTE_32F*): \
                 CUBLAS_STATUS_NOT_SUPPORTED"
            ));
            return Err(CUBLAS_STATUS_NOT_SUPPORTED);
        }
        if m < 0 || n < 0 || k < 0 {
            say(&format!(
                "{desc}: negative size: CUBLAS_STATUS_INVALID_VALUE"
            ));
            return Err(CUBLAS_STATUS_INVALID_VALUE);
        }
        let (m, n, k) = (m as usize, n as usize, k as usize);
        // Stored shapes (rows × cols, column-major).
        let (ar, ac) = if ta { (k, m) } else { (m, k) };
        let (br, bc) = if tb { (n, k) } else { (k, n) };
        if (lda as i64) < ar.max(1) as i64
            || (ldb as i64) < br.max(1) as i64
            || (ldc as i64) < m.max(1) as i64
        {
            say(&format!(
                "{desc}: a leading dimension is smaller than its matrix's rows \
                 (lda >= {ar}, ldb >= {br}, ldc >= {m}): CUBLAS_STATUS_INVALID_VALUE"
            ));
            return Err(CUBLAS_STATUS_INVALID_VALUE);
        }
        if alpha.is_null() || beta.is_null() {
            say(&format!(
                "{desc}: null alpha or beta: CUBLAS_STATUS_INVALID_VALUE"
            ));
            return Err(CUBLAS_STATUS_INVALID_VALUE);
        }
        // SAFETY: cuBLAS's contract (host pointer mode): alpha and beta point to f32.
        let (alpha, beta) = unsafe { (*(alpha as *const f32), *(beta as *const f32)) };
        let (lda, ldb, ldc) = (lda as usize, ldb as usize, ldc as usize);
        let r = with_state(|st| {
            let Some(bh) = st.blas.get(&(handle as u64)) else {
                say(&format!(
                    "{desc}: invalid handle: CUBLAS_STATUS_NOT_INITIALIZED"
                ));
                return Err(CUBLAS_STATUS_NOT_INITIALIZED);
            };
            let (dev, sh) = (bh.dev, bh.stream);
            let (dev, capturing) = if sh <= 2 {
                (dev, false)
            } else {
                st.stream("cublasGemmEx", sh)
                    .map_err(|_| CUBLAS_STATUS_INVALID_VALUE)?
            };
            if capturing {
                st.refuse_on_capture("cublasGemmEx", sh, "a cuBLAS call (not emulated in graphs)");
                return Err(CUBLAS_STATUS_NOT_SUPPORTED);
            }
            if st.check(dev).is_err() {
                say(&format!(
                    "{desc}: the context has a sticky error from an earlier fault: \
                     CUBLAS_STATUS_EXECUTION_FAILED"
                ));
                return Err(CUBLAS_STATUS_EXECUTION_FAILED);
            }
            if m == 0 || n == 0 {
                return Ok(());
            }
            let extent = |rows: usize, cols: usize, ld: usize, t: Ty| -> u64 {
                if rows == 0 || cols == 0 {
                    0
                } else {
                    ((cols - 1) * ld + rows) as u64 * t.size()
                }
            };
            let a_len = extent(ar, ac, lda, at);
            let b_len = extent(br, bc, ldb, bt);
            let c_len = extent(m, n, ldc, ct);
            let mut bad = Vec::new();
            for (name, p, len) in [
                ("A", a as u64, a_len),
                ("B", b as u64, b_len),
                ("C", c as u64, c_len),
            ] {
                if len == 0 {
                    continue;
                }
                if let Err(e) = st.mem.find(p, len) {
                    bad.push(format!(
                        "operand {name} ({len} bytes from {p:#x}): {}",
                        e.what
                    ));
                }
            }
            if !bad.is_empty() {
                let mut s = String::from("========= Invalid __global__ access by cublasGemmEx\n");
                for x in &bad {
                    s += &format!("=========     {x}\n");
                }
                s += &format!("=========     in {desc}\n");
                s += "========= surplus-cuda-emu: returning CUBLAS_STATUS_EXECUTION_FAILED; every \
                      later call on this context returns CUDA_ERROR_ILLEGAL_ADDRESS (700)\n";
                let _ = std::io::Write::write_all(&mut std::io::stderr(), s.as_bytes());
                st.set_sticky(dev, CUDA_ERROR_ILLEGAL_ADDRESS);
                return Err(CUBLAS_STATUS_EXECUTION_FAILED);
            }
            // op(A) as m rows of k, op(B) as n rows of k (row-major, f32): `count` vectors
            // of k values, element l of vector i at `l + i * ld` (`i + l * ld` when `across`).
            let gather = |p: u64, len: u64, t: Ty, count: usize, across: bool, ld: usize| {
                let mut v = vec![0f32; count * k];
                if k > 0 {
                    let bytes = st.mem.bytes(p, len).expect("checked");
                    for i in 0..count {
                        for l in 0..k {
                            let idx = if across { i + l * ld } else { l + i * ld };
                            v[i * k + l] = t.load(bytes, idx);
                        }
                    }
                }
                v
            };
            let arows = gather(a as u64, a_len, at, m, !ta, lda);
            let bcols = gather(b as u64, b_len, bt, n, tb, ldb);
            // out[j * m + i] = dot(op(A) row i, op(B) column j).
            let mut out = vec![0f32; m * n];
            let threads = if m * n * k >= 1 << 22 {
                std::thread::available_parallelism()
                    .map_or(1, |x| x.get())
                    .min(16)
            } else {
                1
            };
            let rows_per = m.div_ceil(threads);
            let compute_rows = |i0: usize, i1: usize| -> Vec<f32> {
                let mut v = vec![0f32; (i1 - i0) * n];
                for j in 0..n {
                    let bj = &bcols[j * k..(j + 1) * k];
                    for i in i0..i1 {
                        v[j * (i1 - i0) + (i - i0)] = dot(&arows[i * k..(i + 1) * k], bj);
                    }
                }
                v
            };
            let parts: Vec<(usize, usize, Vec<f32>)> = if threads > 1 {
                std::thread::scope(|s| {
                    let hs: Vec<_> = (0..threads)
                        .map(|t| (t * rows_per, ((t + 1) * rows_per).min(m)))
                        .filter(|(i0, i1)| i0 < i1)
                        .map(|(i0, i1)| {
                            let f = &compute_rows;
                            (i0, i1, s.spawn(move || f(i0, i1)))
                        })
                        .collect();
                    hs.into_iter()
                        .map(|(i0, i1, h)| (i0, i1, h.join().expect("gemm worker")))
                        .collect()
                })
            } else {
                vec![(0, m, compute_rows(0, m))]
            };
            for (i0, i1, v) in parts {
                for j in 0..n {
                    for i in i0..i1 {
                        out[j * m + i] = v[j * (i1 - i0) + (i - i0)];
                    }
                }
            }
            let cb = st.mem.bytes_mut(c as u64, c_len).expect("checked");
            for j in 0..n {
                for i in 0..m {
                    let idx = i + j * ldc;
                    let mut v = alpha * out[j * m + i];
                    if beta != 0.0 {
                        v += beta * ct.load(cb, idx);
                    }
                    ct.store(cb, idx, v);
                }
            }
            let c_rw = (m * n) as u64 * ct.size();
            let read = a_len + b_len + if beta != 0.0 { c_rw } else { 0 };
            let ks = KernelStats {
                launches: 1,
                warp_instructions: (m * n * k) as u64 / 32,
                bytes_requested: read + c_rw,
                sectors_read: read.div_ceil(SECTOR),
                sectors_written: c_rw.div_ceil(SECTOR),
            };
            st.stats.add_kernel("cublasGemmEx", &ks);
            Ok(())
        });
        r.map_err(|e| match e {
            crate::driver::CUDA_ERROR_NOT_INITIALIZED => CUBLAS_STATUS_NOT_INITIALIZED,
            e => e,
        })
    })
}

fn op(t: c_int) -> Option<bool> {
    match t {
        0 => Some(false),
        1 | 2 => Some(true),
        _ => None,
    }
}
