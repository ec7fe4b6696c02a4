//! Allocation past a device's memory (a 1 MiB device, its own process).

mod common;

use common::*;
use cuda_emu::driver::*;

#[test]
fn allocation_past_the_device_memory_fails() {
    setup_dev("tiny:70:0.001:900", 0);
    let total = (0.001f64 * (1u64 << 30) as f64).round() as usize;
    // SAFETY: valid out-pointers.
    unsafe {
        let (mut free, mut t) = (0usize, 0usize);
        ck(cuMemGetInfo_v2(&mut free, &mut t));
        assert_eq!((free, t), (total, total));
        let mut p = 0u64;
        expect(cuMemAlloc_v2(&mut p, total + 1), CUDA_ERROR_OUT_OF_MEMORY);
        let a = alloc(total / 2);
        ck(cuMemGetInfo_v2(&mut free, &mut t));
        assert_eq!(free, total - total / 2);
        expect(
            cuMemAlloc_v2(&mut p, total / 2 + 1),
            CUDA_ERROR_OUT_OF_MEMORY,
        );
        let b = alloc(total - total / 2);
        ck(cuMemGetInfo_v2(&mut free, &mut t));
        assert_eq!(free, 0);
        ck(cuMemFree_v2(a));
        let c = alloc(total / 2);
        ck(cuMemFree_v2(b));
        ck(cuMemFree_v2(c));
    }
    let v: serde_json::Value = serde_json::from_str(&cuda_emu::stats::stats_json()).unwrap();
    assert_eq!(
        v["devices"][0]["peak_bytes"].as_u64().unwrap() as usize,
        total
    );
}
