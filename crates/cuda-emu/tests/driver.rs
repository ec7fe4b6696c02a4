//! The driver and cuBLAS exports, called as C would through the rlib. One process: every test
//! shares the devices `V100:70:32:900,P40:61:24:347` and sets its own current context.

mod common;

use std::ffi::{c_int, c_void, CStr};

use common::*;
use cuda_emu::cublas::*;
use cuda_emu::driver::*;
use half::f16;

const GPUS: &str = "V100:70:32:900,P40:61:24:347";

fn setup() -> Handle {
    setup_dev(GPUS, 0)
}

fn new_stream() -> Handle {
    let mut s: Handle = std::ptr::null_mut();
    // SAFETY: a valid out-pointer.
    ck(unsafe { cuStreamCreate(&mut s, 1) });
    s
}

#[test]
fn devices_come_from_the_environment() {
    setup();
    // SAFETY: valid out-pointers and buffers throughout.
    unsafe {
        let mut v = 0;
        ck(cuDriverGetVersion(&mut v));
        assert_eq!(v, 12080);
        let mut n = 0;
        ck(cuDeviceGetCount(&mut n));
        assert_eq!(n, 2);
        let mut d = 0;
        ck(cuDeviceGet(&mut d, 1));
        assert_eq!(d, 1);
        expect(cuDeviceGet(&mut d, 2), CUDA_ERROR_INVALID_DEVICE);
        let mut buf = [0 as std::ffi::c_char; 64];
        ck(cuDeviceGetName(buf.as_mut_ptr(), 64, 0));
        assert_eq!(
            CStr::from_ptr(buf.as_ptr()).to_str().unwrap(),
            "V100 (emulated)"
        );
        ck(cuDeviceGetName(buf.as_mut_ptr(), 5, 1));
        assert_eq!(CStr::from_ptr(buf.as_ptr()).to_str().unwrap(), "P40 ");
        let mut mem = 0usize;
        ck(cuDeviceTotalMem_v2(&mut mem, 0));
        assert_eq!(mem, 32 << 30);
        ck(cuDeviceTotalMem_v2(&mut mem, 1));
        assert_eq!(mem, 24 << 30);
        let attr = |a: c_int, dev: c_int| {
            let mut x = -1;
            ck(cuDeviceGetAttribute(&mut x, a, dev));
            x
        };
        assert_eq!((attr(75, 0), attr(76, 0)), (7, 0));
        assert_eq!((attr(75, 1), attr(76, 1)), (6, 1));
        assert_eq!(attr(16, 0), 80);
        assert_eq!(attr(10, 0), 32);
        assert_eq!(attr(1, 0), 1024);
        assert_eq!(attr(8, 0), 49152);
        assert_eq!(attr(97, 0), 98304);
        assert_eq!(attr(115, 0), 0, "no memory pools");
        for (dev, gbps) in [(0, 900.0), (1, 347.0)] {
            let bw = 2.0 * attr(36, dev) as f64 * 1e3 * attr(37, dev) as f64 / 8.0;
            assert_eq!(bw, gbps * 1e9);
        }
        expect(cuDeviceGetAttribute(&mut n, 0, 0), CUDA_ERROR_INVALID_VALUE);
        let mut ctx: Handle = std::ptr::null_mut();
        ck(cuCtxGetCurrent(&mut ctx));
        assert!(!ctx.is_null());
        ck(cuCtxGetDevice(&mut d));
        assert_eq!(d, 0);
        // Push device 1's context, pop it again.
        let mut c1: Handle = std::ptr::null_mut();
        ck(cuDevicePrimaryCtxRetain(&mut c1, 1));
        ck(cuCtxPushCurrent_v2(c1));
        ck(cuCtxGetDevice(&mut d));
        assert_eq!(d, 1);
        let mut popped: Handle = std::ptr::null_mut();
        ck(cuCtxPopCurrent_v2(&mut popped));
        assert_eq!(popped, c1);
        ck(cuCtxGetDevice(&mut d));
        assert_eq!(d, 0);
        ck(cuDevicePrimaryCtxRelease_v2(1));
    }
}

#[test]
fn memory_round_trip() {
    setup();
    // SAFETY: valid out-pointers; host buffers hold the bytes copied.
    unsafe {
        let (mut free0, mut total) = (0usize, 0usize);
        ck(cuMemGetInfo_v2(&mut free0, &mut total));
        assert_eq!(total, 32 << 30);
        let v: Vec<f32> = (0..1000).map(|i| i as f32 * 0.5).collect();
        let p = upload_f32(&v);
        assert_eq!(download_f32(p, 1000), v);
        // Async copies, memset and device-to-device on a stream.
        let s = new_stream();
        let q = alloc(4000);
        ck(cuMemsetD8Async(q, 0, 4000, s));
        assert!(download_f32(q, 1000).iter().all(|&x| x == 0.0));
        ck(cuMemcpyDtoDAsync_v2(q + 400, p, 400, s));
        let mut back = vec![0f32; 1000];
        ck(cuMemcpyDtoHAsync_v2(
            back.as_mut_ptr() as *mut c_void,
            q,
            4000,
            s,
        ));
        ck(cuStreamSynchronize(s));
        assert_eq!(&back[100..200], &v[..100]);
        assert_eq!(back[0], 0.0);
        ck(cuMemsetD32Async(q, 0x3f80_0000, 10, s));
        ck(cuMemcpyHtoDAsync_v2(
            q + 40,
            v.as_ptr() as *const c_void,
            8,
            s,
        ));
        assert_eq!(
            download_f32(q, 12),
            [1.0; 10].iter().chain(&v[..2]).copied().collect::<Vec<_>>()
        );
        // Events complete at once.
        let (mut e0, mut e1): (Handle, Handle) = (std::ptr::null_mut(), std::ptr::null_mut());
        ck(cuEventCreate(&mut e0, 0));
        ck(cuEventCreate(&mut e1, 0));
        ck(cuEventRecord(e0, s));
        ck(cuEventRecord(e1, s));
        ck(cuStreamWaitEvent(s, e1, 0));
        ck(cuEventSynchronize(e1));
        ck(cuEventQuery(e1));
        let mut ms = -1.0f32;
        ck(cuEventElapsedTime(&mut ms, e0, e1));
        assert!(ms >= 0.0);
        ck(cuEventDestroy_v2(e0));
        ck(cuEventDestroy_v2(e1));
        ck(cuStreamQuery(s));
        ck(cuStreamDestroy_v2(s));
        ck(cuMemFree_v2(p));
        ck(cuMemFree_v2(q));
        ck(cuCtxSynchronize());
        // Pinned host memory.
        let mut h: *mut c_void = std::ptr::null_mut();
        ck(cuMemAllocHost_v2(&mut h, 64));
        assert!(!h.is_null());
        ck(cuMemFreeHost(h));
        expect(cuMemFreeHost(h), CUDA_ERROR_INVALID_VALUE);
    }
}

#[test]
fn a_use_after_free_is_an_error() {
    setup();
    let p = alloc(256);
    // SAFETY: valid arguments; the device pointer is stale on purpose.
    unsafe {
        ck(cuMemFree_v2(p));
        let mut b = [0u8; 16];
        expect(
            cuMemcpyDtoH_v2(b.as_mut_ptr() as *mut c_void, p, 16),
            CUDA_ERROR_INVALID_VALUE,
        );
        expect(
            cuMemcpyHtoD_v2(p, b.as_ptr() as *const c_void, 16),
            CUDA_ERROR_INVALID_VALUE,
        );
        expect(cuMemsetD8_v2(p, 0, 16), CUDA_ERROR_INVALID_VALUE);
        expect(cuMemFree_v2(p), CUDA_ERROR_INVALID_VALUE);
        // An overrun of a live allocation too.
        let q = alloc(16);
        expect(
            cuMemcpyDtoH_v2(b.as_mut_ptr() as *mut c_void, q + 8, 16),
            CUDA_ERROR_INVALID_VALUE,
        );
        expect(cuMemAlloc_v2(&mut 0, 0), CUDA_ERROR_INVALID_VALUE);
        ck(cuMemFree_v2(q));
    }
}

#[test]
fn capture_refuses_allocation_and_sync() {
    setup();
    let s = new_stream();
    // SAFETY: valid handles and out-pointers.
    unsafe {
        let mut st: c_int = -1;
        ck(cuStreamIsCapturing(s, &mut st));
        assert_eq!(st, 0);
        ck(cuStreamBeginCapture_v2(s, 1));
        ck(cuStreamIsCapturing(s, &mut st));
        assert_eq!(st, 1);
        let mut p = 0;
        expect(
            cuMemAlloc_v2(&mut p, 256),
            CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED,
        );
        ck(cuStreamIsCapturing(s, &mut st));
        assert_eq!(st, 2, "invalidated");
        let mut g: Handle = 1 as Handle;
        expect(
            cuStreamEndCapture(s, &mut g),
            CUDA_ERROR_STREAM_CAPTURE_INVALIDATED,
        );
        assert!(g.is_null());
        ck(cuStreamIsCapturing(s, &mut st));
        assert_eq!(st, 0);

        // Synchronising the capturing stream.
        ck(cuStreamBeginCapture_v2(s, 1));
        expect(
            cuStreamSynchronize(s),
            CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED,
        );
        expect(
            cuStreamEndCapture(s, &mut g),
            CUDA_ERROR_STREAM_CAPTURE_INVALIDATED,
        );

        // A pageable host copy on it.
        let q = alloc(64);
        let host = [7u8; 64];
        ck(cuStreamBeginCapture_v2(s, 1));
        expect(
            cuMemcpyHtoDAsync_v2(q, host.as_ptr() as *const c_void, 64, s),
            CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED,
        );
        expect(
            cuStreamEndCapture(s, &mut g),
            CUDA_ERROR_STREAM_CAPTURE_INVALIDATED,
        );

        // cuCtxSynchronize and cuMemFree from the capturing thread.
        ck(cuStreamBeginCapture_v2(s, 1));
        expect(cuCtxSynchronize(), CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
        expect(
            cuStreamEndCapture(s, &mut g),
            CUDA_ERROR_STREAM_CAPTURE_INVALIDATED,
        );
        ck(cuStreamBeginCapture_v2(s, 1));
        expect(cuMemFree_v2(q), CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
        expect(
            cuStreamEndCapture(s, &mut g),
            CUDA_ERROR_STREAM_CAPTURE_INVALIDATED,
        );

        // Not capturing: an error.
        expect(cuStreamEndCapture(s, &mut g), CUDA_ERROR_ILLEGAL_STATE);
        ck(cuMemFree_v2(q));
        ck(cuStreamDestroy_v2(s));
    }
}

#[test]
fn a_graph_replays_copies_reading_pinned_memory_at_replay() {
    setup();
    let s = new_stream();
    let d = alloc(16);
    let e = alloc(16);
    let graphs_before = graph_launches();
    // SAFETY: valid handles; the pinned buffer lives until the end.
    unsafe {
        let mut h: *mut c_void = std::ptr::null_mut();
        ck(cuMemAllocHost_v2(&mut h, 16));
        let hb = std::slice::from_raw_parts_mut(h as *mut u8, 16);
        hb.fill(1);
        ck(cuStreamBeginCapture_v2(s, 1));
        ck(cuMemsetD8Async(e, 9, 16, s));
        ck(cuMemcpyHtoDAsync_v2(d, h, 16, s));
        ck(cuMemcpyDtoDAsync_v2(e, d, 8, s));
        let mut g: Handle = std::ptr::null_mut();
        ck(cuStreamEndCapture(s, &mut g));
        assert!(!g.is_null());
        // Nothing ran during capture.
        let mut out = [0u8; 16];
        ck(cuMemcpyDtoH_v2(out.as_mut_ptr() as *mut c_void, e, 16));
        assert_eq!(out, [0xff; 16], "fresh memory is all ones");
        let mut x: Handle = std::ptr::null_mut();
        ck(cuGraphInstantiateWithFlags(&mut x, g, 0));
        for round in 2u8..5 {
            hb.fill(round);
            ck(cuGraphLaunch(x, s));
            ck(cuStreamSynchronize(s));
            ck(cuMemcpyDtoH_v2(out.as_mut_ptr() as *mut c_void, e, 16));
            let mut want = [9u8; 16];
            want[..8].fill(round);
            assert_eq!(out, want, "round {round}: the pinned bytes at replay time");
        }
        ck(cuGraphExecDestroy(x));
        ck(cuGraphDestroy(g));
        expect(cuGraphLaunch(x, s), CUDA_ERROR_INVALID_HANDLE);
        ck(cuMemFreeHost(h));
    }
    assert!(graph_launches() >= graphs_before + 3);
}

fn graph_launches() -> u64 {
    let v: serde_json::Value = serde_json::from_str(&cuda_emu::stats::stats_json()).unwrap();
    v["graph_launches"].as_u64().unwrap()
}

#[test]
fn unknown_handles_are_refused() {
    setup();
    let bogus = 0xdead_0000usize as Handle;
    // SAFETY: invalid handles are what is tested; out-pointers are valid.
    unsafe {
        expect(cuStreamSynchronize(bogus), CUDA_ERROR_INVALID_HANDLE);
        expect(cuStreamDestroy_v2(bogus), CUDA_ERROR_INVALID_HANDLE);
        expect(
            cuEventRecord(bogus, std::ptr::null_mut()),
            CUDA_ERROR_INVALID_HANDLE,
        );
        expect(cuEventDestroy_v2(bogus), CUDA_ERROR_INVALID_HANDLE);
        let mut f: Handle = std::ptr::null_mut();
        expect(
            cuModuleGetFunction(&mut f, bogus, c"vadd".as_ptr()),
            CUDA_ERROR_INVALID_HANDLE,
        );
        expect(cuModuleUnload(bogus), CUDA_ERROR_INVALID_HANDLE);
        expect(
            cuLaunchKernel(
                bogus,
                1,
                1,
                1,
                1,
                1,
                1,
                0,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            ),
            CUDA_ERROR_INVALID_HANDLE,
        );
        let mut x: Handle = std::ptr::null_mut();
        expect(
            cuGraphInstantiateWithFlags(&mut x, bogus, 0),
            CUDA_ERROR_INVALID_HANDLE,
        );
        expect(
            cuGraphLaunch(bogus, std::ptr::null_mut()),
            CUDA_ERROR_INVALID_HANDLE,
        );
        expect(cuGraphDestroy(bogus), CUDA_ERROR_INVALID_HANDLE);
        expect(cuCtxSetCurrent(bogus), CUDA_ERROR_INVALID_HANDLE);
        expect(cuStreamBeginCapture_v2(bogus, 1), CUDA_ERROR_INVALID_HANDLE);
        // The current context is unchanged by the refused call.
        let mut d = -1;
        ck(cuCtxGetDevice(&mut d));
        assert_eq!(d, 0);
        // A stub.
        expect(cuMemAllocManaged(), CUDA_ERROR_NOT_SUPPORTED);
    }
}

#[test]
fn error_strings() {
    // SAFETY: valid out-pointers; the strings are static.
    unsafe {
        let mut p = std::ptr::null();
        ck(cuGetErrorString(700, &mut p));
        assert_eq!(
            CStr::from_ptr(p).to_str().unwrap(),
            "an illegal memory access was encountered"
        );
        ck(cuGetErrorName(901, &mut p));
        assert_eq!(
            CStr::from_ptr(p).to_str().unwrap(),
            "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED"
        );
        expect(cuGetErrorString(12345, &mut p), CUDA_ERROR_INVALID_VALUE);
        assert!(p.is_null());
        assert_eq!(
            CStr::from_ptr(cublasGetStatusString(13)).to_str().unwrap(),
            "the GPU program failed to execute"
        );
    }
}

#[test]
fn cubin_images() {
    setup();
    // The PTX inside a CUBIN built with --generate-line-info is NVRTC's, instruction for
    // instruction.
    let from_cubin = cuda_emu::driver::ptx_from_cubin(CUBIN_LINEINFO).unwrap();
    let code = |t: &str| -> Vec<String> {
        t.lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|l| !l.is_empty() && !l.starts_with("//") && !l.starts_with(".loc"))
            .filter(|l| !l.starts_with(".file"))
            .collect()
    };
    assert_eq!(code(&from_cubin), code(PTX));
    // Without line info there is no PTX to run.
    let err = cuda_emu::driver::ptx_from_cubin(CUBIN_PLAIN).unwrap_err();
    assert!(err.contains("--generate-line-info"), "{err}");
    let mut m: Handle = std::ptr::null_mut();
    // SAFETY: a CUBIN image and a valid out-pointer.
    expect(
        unsafe { cuModuleLoadData(&mut m, CUBIN_PLAIN.as_ptr() as *const c_void) },
        CUDA_ERROR_INVALID_IMAGE,
    );
    // Not a module at all.
    // SAFETY: NUL-terminated text.
    expect(
        unsafe { cuModuleLoadData(&mut m, c"hello".as_ptr() as *const c_void) },
        CUDA_ERROR_INVALID_IMAGE,
    );
}

// ---- cuBLAS

#[allow(clippy::too_many_arguments)]
fn gemm_ref(
    ta: bool,
    tb: bool,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
) -> Vec<f64> {
    let mut c = vec![0f64; m * n];
    for j in 0..n {
        for i in 0..m {
            let mut s = 0f64;
            for l in 0..k {
                let av = if ta { a[l + i * lda] } else { a[i + l * lda] };
                let bv = if tb { b[j + l * ldb] } else { b[l + j * ldb] };
                s += av as f64 * bv as f64;
            }
            c[j * m + i] = s;
        }
    }
    c
}

fn blas_handle() -> *mut c_void {
    let mut h: *mut c_void = std::ptr::null_mut();
    // SAFETY: a valid out-pointer.
    assert_eq!(unsafe { cublasCreate_v2(&mut h) }, 0);
    h
}

#[test]
fn gemm_f16_transposed_a_as_the_project_calls_it() {
    setup();
    let s = new_stream();
    let h = blas_handle();
    // SAFETY: valid handles and pointers.
    unsafe {
        assert_eq!(cublasSetStream_v2(h, s), 0);
        let (mut maj, mut min) = (0, 0);
        assert_eq!(cublasGetProperty(0, &mut maj), 0);
        assert_eq!(cublasGetProperty(1, &mut min), 0);
        assert_eq!((maj, min), (12, 8));
    }
    // W: m rows of k (row-major) = column-major k × m, lda = k + 3 (padded); X: n rows of k.
    let (m, n, k) = (37, 5, 70);
    let lda = k + 3;
    let ldb = k;
    let ldc = m + 2;
    let val = |i: usize| ((i * 7919 % 97) as f32 - 48.0) / 32.0;
    let a: Vec<f32> = (0..m * lda).map(val).collect();
    let b: Vec<f32> = (0..n * ldb).map(|i| val(i + 5)).collect();
    let a16: Vec<f16> = a.iter().map(|&x| f16::from_f32(x)).collect();
    let b16: Vec<f16> = b.iter().map(|&x| f16::from_f32(x)).collect();
    let a32: Vec<f32> = a16.iter().map(|x| x.to_f32()).collect();
    let b32: Vec<f32> = b16.iter().map(|x| x.to_f32()).collect();
    let da = alloc(a16.len() * 2);
    let db = alloc(b16.len() * 2);
    let dc = alloc(ldc * n * 4);
    // SAFETY: host buffers hold the bytes copied; the GEMM's operands are in bounds.
    unsafe {
        ck(cuMemcpyHtoD_v2(
            da,
            a16.as_ptr() as *const c_void,
            a16.len() * 2,
        ));
        ck(cuMemcpyHtoD_v2(
            db,
            b16.as_ptr() as *const c_void,
            b16.len() * 2,
        ));
        let st = gemm_ex(
            h,
            (true, false),
            (m, n, k),
            (1.0, 0.0),
            (da, CUDA_R_16F, lda),
            (db, CUDA_R_16F, ldb),
            (dc, CUDA_R_32F, ldc),
        );
        assert_eq!(st, 0);
    }
    let c = download_f32(dc, ldc * n);
    let want = gemm_ref(true, false, m, n, k, &a32, lda, &b32, ldb);
    for j in 0..n {
        for i in 0..m {
            let (got, w) = (c[i + j * ldc], want[j * m + i]);
            assert!(
                (got as f64 - w).abs() < 1e-3,
                "C[{i},{j}] = {got}, want {w}"
            );
        }
        // The padding rows of C (never written; beta = 0 ignores the NaN fill) stay as they were.
        assert!(c[m + j * ldc].is_nan());
    }
    let v: serde_json::Value = serde_json::from_str(&cuda_emu::stats::stats_json()).unwrap();
    assert!(v["kernels"]["cublasGemmEx"]["launches"].as_u64().unwrap() >= 1);
    // SAFETY: a live handle.
    assert_eq!(unsafe { cublasDestroy_v2(h) }, 0);
}

#[test]
fn gemm_f32_every_transpose_with_beta() {
    setup();
    let h = blas_handle();
    let (m, n, k) = (9, 6, 13);
    let val = |i: usize| ((i * 31 % 23) as f32 - 11.0) / 8.0;
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        let (ar, ac) = if ta { (k, m) } else { (m, k) };
        let (br, bc) = if tb { (n, k) } else { (k, n) };
        let (lda, ldb, ldc) = (ar + 1, br + 2, m);
        let a: Vec<f32> = (0..lda * ac).map(val).collect();
        let b: Vec<f32> = (0..ldb * bc).map(|i| val(i + 3)).collect();
        let c0: Vec<f32> = (0..ldc * n).map(|i| val(i + 7)).collect();
        let (da, db, dc) = (upload_f32(&a), upload_f32(&b), upload_f32(&c0));
        // SAFETY: operands in bounds.
        let st = unsafe {
            gemm_ex(
                h,
                (ta, tb),
                (m, n, k),
                (0.5, -2.0),
                (da, CUDA_R_32F, lda),
                (db, CUDA_R_32F, ldb),
                (dc, CUDA_R_32F, ldc),
            )
        };
        assert_eq!(st, 0);
        let c = download_f32(dc, ldc * n);
        let r = gemm_ref(ta, tb, m, n, k, &a, lda, &b, ldb);
        for j in 0..n {
            for i in 0..m {
                let w = 0.5 * r[j * m + i] - 2.0 * c0[i + j * ldc] as f64;
                let got = c[i + j * ldc] as f64;
                assert!(
                    (got - w).abs() < 1e-4,
                    "({ta},{tb}) C[{i},{j}] = {got}, want {w}"
                );
            }
        }
        for p in [da, db, dc] {
            // SAFETY: a live allocation.
            ck(unsafe { cuMemFree_v2(p) });
        }
    }
    // Unsupported types.
    let p = alloc(1024);
    let f64_2 = (p, 1, 2); // CUDA_R_64F
                           // SAFETY: the type check comes first.
    let st = unsafe {
        gemm_ex(
            h,
            (false, false),
            (2, 2, 2),
            (1.0, 0.0),
            f64_2,
            f64_2,
            f64_2,
        )
    };
    assert_eq!(st, CUBLAS_STATUS_NOT_SUPPORTED);
    // SAFETY: a live handle.
    assert_eq!(unsafe { cublasDestroy_v2(h) }, 0);
}

// ---- Kernels (need the PTX interpreter)

#[test]
fn kernels_load_launch_and_replay_with_captured_arguments() {
    setup();
    let m = load_ptx();
    let f = function(m, "vadd");
    let mut nf: Handle = std::ptr::null_mut();
    // SAFETY: a NUL-terminated name and a valid out-pointer.
    expect(
        unsafe { cuModuleGetFunction(&mut nf, m, c"nope".as_ptr()) },
        CUDA_ERROR_NOT_FOUND,
    );
    let n = 300;
    let a: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let b: Vec<f32> = (0..n).map(|i| 1000.0 + i as f32).collect();
    let (da, db) = (upload_f32(&a), upload_f32(&b));
    let dc = alloc(n * 4);
    let s = new_stream();
    ck(launch_vadd(f, s, da, db, dc, 2.0, n as i32));
    // SAFETY: a live stream.
    ck(unsafe { cuStreamSynchronize(s) });
    let c = download_f32(dc, n);
    for i in 0..n {
        assert_eq!(c[i], a[i] + b[i] * 2.0, "c[{i}]");
    }
    // A bad launch shape fails at once, without making the context unusable.
    let mut x = 0u64;
    let mut args = [&mut x as *mut u64 as *mut c_void; 5];
    // SAFETY: the shape check comes before the arguments are read.
    expect(
        unsafe {
            cuLaunchKernel(
                f,
                1,
                1,
                1,
                2048,
                1,
                1,
                0,
                s,
                args.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        },
        CUDA_ERROR_INVALID_VALUE,
    );

    // Capture with s = 3, then launch with other arguments: the replay uses the captured ones.
    let launches_before = launches("vadd");
    // SAFETY: valid handles and out-pointers.
    unsafe {
        ck(cuStreamBeginCapture_v2(s, 1));
        ck(launch_vadd(f, s, da, db, dc, 3.0, n as i32));
        let mut g: Handle = std::ptr::null_mut();
        ck(cuStreamEndCapture(s, &mut g));
        assert_eq!(
            launches("vadd"),
            launches_before,
            "nothing runs during capture"
        );
        let mut ex: Handle = std::ptr::null_mut();
        ck(cuGraphInstantiateWithFlags(&mut ex, g, 0));
        ck(launch_vadd(f, s, da, db, dc, 0.0, n as i32));
        assert_eq!(download_f32(dc, n), a);
        ck(cuGraphLaunch(ex, s));
        ck(cuGraphLaunch(ex, s));
        ck(cuStreamSynchronize(s));
        let c = download_f32(dc, n);
        for i in 0..n {
            assert_eq!(c[i], a[i] + b[i] * 3.0, "c[{i}] after replay");
        }
        assert_eq!(launches("vadd"), launches_before + 3);
        ck(cuGraphExecDestroy(ex));
        ck(cuGraphDestroy(g));
    }
    // The same kernels from a CUBIN with line info.
    let mut m2: Handle = std::ptr::null_mut();
    // SAFETY: a CUBIN image and a valid out-pointer.
    ck(unsafe { cuModuleLoadData(&mut m2, CUBIN_LINEINFO.as_ptr() as *const c_void) });
    let f2 = function(m2, "vadd");
    ck(launch_vadd(f2, s, da, db, dc, -1.0, n as i32));
    let c = download_f32(dc, n);
    assert_eq!(c[7], a[7] - b[7]);
    // SAFETY: live handles.
    unsafe {
        ck(cuModuleUnload(m2));
        expect(
            launch_vadd(f2, s, da, db, dc, -1.0, n as i32),
            CUDA_ERROR_INVALID_HANDLE,
        );
        ck(cuModuleUnload(m));
    }
}

fn launches(kernel: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_str(&cuda_emu::stats::stats_json()).unwrap();
    v["kernels"][kernel]["launches"].as_u64().unwrap_or(0)
}

#[test]
fn stats_json_lists_devices_and_copies() {
    setup();
    let p = upload_f32(&[1.0; 8]);
    download_f32(p, 8);
    let v: serde_json::Value = serde_json::from_str(&cuda_emu::stats::stats_json()).unwrap();
    let devs = v["devices"].as_array().unwrap();
    assert_eq!(devs.len(), 2);
    assert_eq!(devs[0]["name"], "V100");
    assert_eq!(devs[1]["sm"], 61);
    assert_eq!(devs[0]["memory_bytes"], 32u64 << 30);
    assert!(devs[0]["peak_bytes"].as_u64().unwrap() >= 32);
    assert!(v["memcpy_htod_bytes"].as_u64().unwrap() >= 32);
    assert!(v["memcpy_dtoh_bytes"].as_u64().unwrap() >= 32);
    // And to a file through the C export.
    let path = std::env::temp_dir().join(format!("surplus-emu-stats-{}.json", std::process::id()));
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    assert_eq!(
        // SAFETY: `c` is a NUL-terminated path that outlives the call.
        unsafe { cuda_emu::stats::surplus_emu_stats_write(c.as_ptr()) },
        0
    );
    let w: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(w["devices"][0]["bandwidth_gbps"], 900.0);
    std::fs::remove_file(&path).unwrap();
    // SAFETY: a live allocation.
    ck(unsafe { cuMemFree_v2(p) });
}
