//! cuBLAS, loaded by full path from the file [`super::libs`] found (CUDA 12 or 13), through
//! our own binding of the functions we use: its version (for `surplus doctor`) and the
//! mixed-precision GEMM of the prompt path ([`Gemm`]).
//!
//! cudarc's cuBLAS module loads `libcublas` by its own soname list (and its f16 GEMM by the
//! bare `libcublas.so`, unwrapping the result), so it would panic on a CUDA-13-only host.

use std::ffi::{c_int, c_void};
use std::path::PathBuf;

use super::libs::{self, Found, Lib};

/// A loaded cuBLAS.
pub struct Cublas {
    /// The file it was loaded from.
    pub path: PathBuf,
    /// Where that file was found.
    pub origin: libs::Origin,
    /// (major, minor, patch).
    pub version: (i32, i32, i32),
    /// The entry points of the GEMM, when the library has them all.
    api: Option<Api>,
}

type Handle = *mut c_void;
type CreateFn = unsafe extern "C" fn(*mut Handle) -> c_int;
type DestroyFn = unsafe extern "C" fn(Handle) -> c_int;
type SetStreamFn = unsafe extern "C" fn(Handle, *mut c_void) -> c_int;
#[allow(clippy::type_complexity)]
type GemmExFn = unsafe extern "C" fn(
    Handle,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    *const c_void,
    *const c_void,
    c_int,
    c_int,
    *const c_void,
    c_int,
    c_int,
    *const c_void,
    *mut c_void,
    c_int,
    c_int,
    c_int,
    c_int,
) -> c_int;

#[derive(Clone, Copy)]
struct Api {
    create: CreateFn,
    destroy: DestroyFn,
    set_stream: SetStreamFn,
    gemm_ex: GemmExFn,
}

// cuBLAS / CUDA enum values (cublas_api.h, library_types.h).
const OP_N: c_int = 0;
const OP_T: c_int = 1;
const R_16F: c_int = 2;
const R_32F: c_int = 0;
const COMPUTE_32F: c_int = 68;
const GEMM_DEFAULT: c_int = -1;

impl Cublas {
    /// Loads cuBLAS from `found` (with its `libcublasLt` beside it).
    pub fn load(found: &Found) -> Result<Cublas, String> {
        let lib = libs::load(found)?;
        type GetProperty = unsafe extern "C" fn(c_int, *mut c_int) -> c_int;
        // SAFETY: `cublasGetProperty(libraryPropertyType, int*)` has this C signature; the
        // library stays loaded for the process.
        let get: GetProperty = unsafe {
            *lib.get(b"cublasGetProperty\0")
                .map_err(|e| format!("{}: missing cublasGetProperty: {e}", found.path.display()))?
        };
        let prop = |p: c_int| {
            let mut v = 0;
            // SAFETY: a valid property id (0 major, 1 minor, 2 patch) and out-pointer.
            (unsafe { get(p, &mut v) } == 0).then_some(v)
        };
        let (Some(major), Some(minor), Some(patch)) = (prop(0), prop(1), prop(2)) else {
            return Err(format!(
                "{}: cublasGetProperty failed",
                found.path.display()
            ));
        };
        // SAFETY: each symbol is looked up with the C signature cuBLAS 12/13 declares for it
        // (`cublasCreate_v2`, `cublasDestroy_v2`, `cublasSetStream_v2`, `cublasGemmEx`); the
        // library stays loaded for the process.
        let api = unsafe {
            match (
                lib.get::<CreateFn>(b"cublasCreate_v2\0"),
                lib.get::<DestroyFn>(b"cublasDestroy_v2\0"),
                lib.get::<SetStreamFn>(b"cublasSetStream_v2\0"),
                lib.get::<GemmExFn>(b"cublasGemmEx\0"),
            ) {
                (Ok(c), Ok(d), Ok(s), Ok(g)) => Some(Api {
                    create: *c,
                    destroy: *d,
                    set_stream: *s,
                    gemm_ex: *g,
                }),
                _ => None,
            }
        };
        Ok(Cublas {
            path: found.path.clone(),
            origin: found.origin,
            version: (major, minor, patch),
            api,
        })
    }

    /// A handle bound to `stream` (a `CUstream`) for [`Gemm::f16_f32`].
    ///
    /// # Safety
    /// `stream` is a live stream whose driver context is current on this thread.
    pub unsafe fn gemm(&self, stream: *mut c_void) -> Result<Gemm, String> {
        let api = self.api.ok_or_else(|| {
            format!(
                "{}: cublasCreate_v2/cublasSetStream_v2/cublasGemmEx not found",
                self.path.display()
            )
        })?;
        let mut h: Handle = std::ptr::null_mut();
        // SAFETY: a valid out-pointer; cublasCreate_v2 initializes it on success.
        let st = unsafe { (api.create)(&mut h) };
        if st != 0 || h.is_null() {
            return Err(format!("cublasCreate failed (status {st})"));
        }
        let g = Gemm { api, handle: h };
        // SAFETY: a live handle and a stream of the current context.
        let st = unsafe { (api.set_stream)(h, stream) };
        if st != 0 {
            return Err(format!("cublasSetStream failed (status {st})"));
        }
        Ok(g)
    }

    /// The first cuBLAS found that loads, preferring major version `major` when given
    /// (the one matching the driver or NVRTC); the load errors otherwise.
    pub fn load_best(major: Option<u32>) -> Result<Cublas, Vec<String>> {
        let mut found = libs::find(Lib::Cublas);
        if let Some(m) = major {
            found.sort_by_key(|f| f.so_version().first() != Some(&m));
        }
        let mut errs = Vec::new();
        for f in &found {
            match Cublas::load(f) {
                Ok(c) => return Ok(c),
                Err(e) => errs.push(e),
            }
        }
        Err(errs)
    }
}

/// A cuBLAS handle bound to one stream.
pub struct Gemm {
    api: Api,
    handle: Handle,
}

// SAFETY: a cuBLAS handle may be used from any thread as long as calls are not concurrent;
// `Gemm` is not `Sync`, so its single owner makes every call.
unsafe impl Send for Gemm {}

impl Gemm {
    /// `C = A·B` in column-major terms with f16 A (m × k, stored transposed: `lda` ≥ k per
    /// column of Aᵀ) and B (k × n, `ldb` ≥ k), f32 C (m × n, `ldc` ≥ m), f32 accumulation:
    /// for row-major weights W (m rows of k) and activations X (n rows of k), this is
    /// `out[t][r] = W[r]·X[t]` with `ldc` the output's row stride.
    ///
    /// # Safety
    /// The pointers are device addresses of the handle's context holding the sizes above,
    /// and the handle's stream orders this call after their producers.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn f16_f32(
        &self,
        m: usize,
        n: usize,
        k: usize,
        a: u64,
        lda: usize,
        b: u64,
        ldb: usize,
        c: u64,
        ldc: usize,
    ) -> Result<(), String> {
        let (alpha, beta) = (1.0f32, 0.0f32);
        let st = (self.api.gemm_ex)(
            self.handle,
            OP_T,
            OP_N,
            m as c_int,
            n as c_int,
            k as c_int,
            &alpha as *const f32 as *const c_void,
            a as *const c_void,
            R_16F,
            lda as c_int,
            b as *const c_void,
            R_16F,
            ldb as c_int,
            &beta as *const f32 as *const c_void,
            c as *mut c_void,
            R_32F,
            ldc as c_int,
            COMPUTE_32F,
            GEMM_DEFAULT,
        );
        if st != 0 {
            return Err(format!(
                "cublasGemmEx (f16 x f16 -> f32, m {m} n {n} k {k}, lda {lda} ldb {ldb} ldc {ldc}) \
                 failed with status {st}"
            ));
        }
        Ok(())
    }
}

impl Drop for Gemm {
    fn drop(&mut self) {
        // SAFETY: the handle came from cublasCreate_v2 and is destroyed once.
        unsafe { (self.api.destroy)(self.handle) };
    }
}
