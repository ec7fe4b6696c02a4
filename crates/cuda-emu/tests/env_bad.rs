//! A malformed SURPLUS_EMU_GPUS makes cuInit fail (its own process).

use cuda_emu::driver::*;

#[test]
fn bad_device_list_fails_cuinit_then_a_good_one_works() {
    for bad in [
        "V100:70:32",
        "V100:x:32:900",
        "V100:70:-1:900",
        ":70:1:1",
        "a:70:1:1,",
    ] {
        std::env::set_var("SURPLUS_EMU_GPUS", bad);
        // SAFETY: flags 0.
        assert_eq!(unsafe { cuInit(0) }, CUDA_ERROR_INVALID_VALUE, "{bad}");
        let mut n = 0;
        assert_eq!(
            // SAFETY: `&mut n` is a valid out-pointer for one `c_int`.
            unsafe { cuDeviceGetCount(&mut n) },
            CUDA_ERROR_NOT_INITIALIZED
        );
    }
    assert!(
        parse_gpus("V100:70:32:900,P40:61:24:347,tiny:70:0.25:900")
            .unwrap()
            .len()
            == 3
    );
    std::env::set_var("SURPLUS_EMU_GPUS", "a:70:1:100, b:61:0.5:50.5");
    // SAFETY: flags 0, a valid out-pointer.
    unsafe {
        assert_eq!(cuInit(0), 0);
        let mut n = 0;
        assert_eq!(cuDeviceGetCount(&mut n), 0);
        assert_eq!(n, 2);
        let mut mem = 0usize;
        assert_eq!(cuDeviceTotalMem_v2(&mut mem, 1), 0);
        assert_eq!(mem, 512 << 20);
    }
}
