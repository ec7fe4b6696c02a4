//! The `CUresult` table (names and descriptions), the exports that read it
//! (`cuGetErrorName`, `cuGetErrorString`), and [`error_name`].

use std::ffi::CStr;

use super::*;

pub(super) const ERRORS: &[(CUresult, &CStr, &CStr)] = &[
    (0, c"CUDA_SUCCESS", c"no error"),
    (1, c"CUDA_ERROR_INVALID_VALUE", c"invalid argument"),
    (2, c"CUDA_ERROR_OUT_OF_MEMORY", c"out of memory"),
    (3, c"CUDA_ERROR_NOT_INITIALIZED", c"initialization error"),
    (4, c"CUDA_ERROR_DEINITIALIZED", c"driver shutting down"),
    (
        100,
        c"CUDA_ERROR_NO_DEVICE",
        c"no CUDA-capable device is detected",
    ),
    (101, c"CUDA_ERROR_INVALID_DEVICE", c"invalid device ordinal"),
    (
        200,
        c"CUDA_ERROR_INVALID_IMAGE",
        c"device kernel image is invalid",
    ),
    (
        201,
        c"CUDA_ERROR_INVALID_CONTEXT",
        c"invalid device context",
    ),
    (
        209,
        c"CUDA_ERROR_NO_BINARY_FOR_GPU",
        c"no kernel image is available for execution on the device",
    ),
    (
        218,
        c"CUDA_ERROR_INVALID_PTX",
        c"a PTX JIT compilation failed",
    ),
    (
        400,
        c"CUDA_ERROR_INVALID_HANDLE",
        c"invalid resource handle",
    ),
    (
        401,
        c"CUDA_ERROR_ILLEGAL_STATE",
        c"the operation cannot be performed in the present state",
    ),
    (500, c"CUDA_ERROR_NOT_FOUND", c"named symbol not found"),
    (600, c"CUDA_ERROR_NOT_READY", c"device not ready"),
    (
        700,
        c"CUDA_ERROR_ILLEGAL_ADDRESS",
        c"an illegal memory access was encountered",
    ),
    (
        701,
        c"CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES",
        c"too many resources requested for launch",
    ),
    (
        719,
        c"CUDA_ERROR_LAUNCH_FAILED",
        c"unspecified launch failure",
    ),
    (801, c"CUDA_ERROR_NOT_SUPPORTED", c"operation not supported"),
    (
        900,
        c"CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED",
        c"operation not permitted when stream is capturing",
    ),
    (
        901,
        c"CUDA_ERROR_STREAM_CAPTURE_INVALIDATED",
        c"operation failed due to a previous error during capture",
    ),
    (999, c"CUDA_ERROR_UNKNOWN", c"unknown error"),
];

/// The name of a `CUresult` this driver returns.
pub fn error_name(e: CUresult) -> Option<&'static str> {
    ERRORS
        .iter()
        .find(|x| x.0 == e)
        .and_then(|x| x.1.to_str().ok())
}

/// `cuGetErrorString`: the static description of `e` into `p`; a code not in the table
/// writes null and returns `CUDA_ERROR_INVALID_VALUE`.
#[no_mangle]
pub unsafe extern "C" fn cuGetErrorString(e: CUresult, p: *mut *const c_char) -> CUresult {
    guard("cuGetErrorString", || {
        let found = ERRORS.iter().find(|x| x.0 == e);
        // SAFETY: CUDA's contract: a valid out-pointer; the strings are static.
        unsafe {
            put(p, found.map_or(std::ptr::null(), |x| x.2.as_ptr()))?;
        }
        found.map(|_| ()).ok_or(CUDA_ERROR_INVALID_VALUE)
    })
}

/// `cuGetErrorName`: the static name of `e` (`CUDA_ERROR_...`) into `p`; a code not in the
/// table writes null and returns `CUDA_ERROR_INVALID_VALUE`.
#[no_mangle]
pub unsafe extern "C" fn cuGetErrorName(e: CUresult, p: *mut *const c_char) -> CUresult {
    guard("cuGetErrorName", || {
        let found = ERRORS.iter().find(|x| x.0 == e);
        // SAFETY: CUDA's contract: a valid out-pointer; the strings are static.
        unsafe {
            put(p, found.map_or(std::ptr::null(), |x| x.1.as_ptr()))?;
        }
        found.map(|_| ()).ok_or(CUDA_ERROR_INVALID_VALUE)
    })
}
