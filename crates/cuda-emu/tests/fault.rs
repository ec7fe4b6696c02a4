//! Faults make the context sticky (its own process; one device per test, since the error is
//! per context).

mod common;

use std::ffi::c_void;

use common::*;
use cuda_emu::cublas::*;
use cuda_emu::driver::*;

const GPUS: &str = "a:70:1:900,b:70:1:900,c:70:1:900";

#[test]
fn a_gemm_out_of_bounds_fails_and_poisons_the_context() {
    setup_dev(GPUS, 1);
    let mut h: *mut c_void = std::ptr::null_mut();
    // SAFETY: a valid out-pointer.
    assert_eq!(unsafe { cublasCreate_v2(&mut h) }, 0);
    let (m, n, k) = (16, 4, 32);
    let a = alloc(m * k * 2);
    let b = alloc(n * k * 2 - 2); // one element short
    let c = alloc(m * n * 4);
    // SAFETY: B is too small on purpose (the emulator checks it).
    let st = unsafe {
        gemm_ex(
            h,
            (true, false),
            (m, n, k),
            (1.0, 0.0),
            (a, CUDA_R_16F, k),
            (b, CUDA_R_16F, k),
            (c, CUDA_R_32F, m),
        )
    };
    assert_eq!(st, CUBLAS_STATUS_EXECUTION_FAILED);
    // SAFETY: valid arguments.
    unsafe {
        expect(cuCtxSynchronize(), CUDA_ERROR_ILLEGAL_ADDRESS);
        let mut p = 0;
        expect(cuMemAlloc_v2(&mut p, 16), CUDA_ERROR_ILLEGAL_ADDRESS);
        expect(cuMemFree_v2(a), CUDA_ERROR_ILLEGAL_ADDRESS);
        // Resetting the primary context clears it.
        ck(cuDevicePrimaryCtxReset_v2(1));
        ck(cuCtxSynchronize());
        ck(cuMemFree_v2(a));
    }
}

#[test]
fn a_kernel_fault_is_sticky_from_the_next_call() {
    setup_dev(GPUS, 0);
    let m = load_ptx();
    let poke = function(m, "poke");
    let vadd = function(m, "vadd");
    let buf = alloc(64);
    let mut s: Handle = std::ptr::null_mut();
    // SAFETY: valid out-pointers and arguments.
    unsafe {
        ck(cuStreamCreate(&mut s, 0));
        let launch = |i: i32| {
            let (mut p, mut i) = (buf, i);
            let mut args = [
                &mut p as *mut u64 as *mut c_void,
                &mut i as *mut i32 as *mut c_void,
            ];
            cuLaunchKernel(
                poke,
                1,
                1,
                1,
                32,
                1,
                1,
                0,
                s,
                args.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        };
        ck(launch(3));
        ck(cuStreamSynchronize(s));
        let v = download_f32(buf, 16);
        assert_eq!(v[3], 1.0);
        // 4 bytes past the end: the launch "succeeds", the next sync reports it.
        ck(launch(16));
        expect(cuStreamSynchronize(s), CUDA_ERROR_ILLEGAL_ADDRESS);
        expect(cuCtxSynchronize(), CUDA_ERROR_ILLEGAL_ADDRESS);
        let mut out = [0f32; 16];
        expect(
            cuMemcpyDtoH_v2(out.as_mut_ptr() as *mut c_void, buf, 64),
            CUDA_ERROR_ILLEGAL_ADDRESS,
        );
        expect(launch(0), CUDA_ERROR_ILLEGAL_ADDRESS);
        expect(
            launch_vadd(vadd, s, buf, buf, buf, 1.0, 16),
            CUDA_ERROR_ILLEGAL_ADDRESS,
        );
        expect(cuMemFree_v2(buf), CUDA_ERROR_ILLEGAL_ADDRESS);
        // Both launches of poke counted, the faulting one too (other tests of this process
        // may add theirs).
        let st: serde_json::Value = serde_json::from_str(&cuda_emu::stats::stats_json()).unwrap();
        assert!(st["kernels"]["poke"]["launches"].as_u64().unwrap() >= 2);
    }
}

#[test]
fn a_fault_in_a_graph_replay_shows_at_the_next_call() {
    setup_dev(GPUS, 2);
    let m = load_ptx();
    let poke = function(m, "poke");
    let buf = alloc(64);
    let mut s: Handle = std::ptr::null_mut();
    // SAFETY: valid out-pointers and arguments.
    unsafe {
        ck(cuStreamCreate(&mut s, 0));
        ck(cuStreamBeginCapture_v2(s, 1));
        let (mut p, mut i) = (buf, 100i32);
        let mut args = [
            &mut p as *mut u64 as *mut c_void,
            &mut i as *mut i32 as *mut c_void,
        ];
        ck(cuLaunchKernel(
            poke,
            1,
            1,
            1,
            32,
            1,
            1,
            0,
            s,
            args.as_mut_ptr(),
            std::ptr::null_mut(),
        ));
        let mut g: Handle = std::ptr::null_mut();
        ck(cuStreamEndCapture(s, &mut g));
        let mut x: Handle = std::ptr::null_mut();
        ck(cuGraphInstantiateWithFlags(&mut x, g, 0));
        ck(cuGraphLaunch(x, s));
        expect(cuStreamSynchronize(s), CUDA_ERROR_ILLEGAL_ADDRESS);
        expect(cuGraphLaunch(x, s), CUDA_ERROR_ILLEGAL_ADDRESS);
    }
}
