//! cuBLAS, loaded by full path from the file [`super::libs`] found (CUDA 12 or 13), through
//! our own binding of the functions we use; for now its version, for `surplus doctor`.
//!
//! cudarc's cuBLAS module loads `libcublas` by its own soname list (and its f16 GEMM by the
//! bare `libcublas.so`, unwrapping the result), so it would panic on a CUDA-13-only host.

use std::ffi::c_int;
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
}

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
        Ok(Cublas {
            path: found.path.clone(),
            origin: found.origin,
            version: (major, minor, patch),
        })
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
