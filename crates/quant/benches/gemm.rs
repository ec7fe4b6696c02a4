//! The int8 GEMM's micro-kernel with both panels in L1 (peak multiply-adds per second),
//! and a whole 896 × 4864 × 256 product (Qwen2.5-0.5B's ffn_down for 256 tokens) as the CPU backend runs it on one thread (weights
//! unpacked four rows at a time, activations packed once), in GMAC/s.
//!
//! `cargo bench -p surplus-quant --bench gemm`

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gguf::GgmlType;
use quant::gemm::{self, CHUNK};
use quant::quantize_to_vec;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const TYPES: &[GgmlType] = &[
    GgmlType::Q4_0,
    GgmlType::Q5_0,
    GgmlType::Q8_0,
    GgmlType::Q4_K,
    GgmlType::Q6_K,
];

fn values(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn bench(c: &mut Criterion) {
    let Some(isa) = gemm::isa() else {
        eprintln!("no AVX-512 VNNI here: the int8 GEMM is not used, nothing to measure");
        return;
    };
    let mut rng = StdRng::seed_from_u64(7);
    let mut g = c.benchmark_group("gemm");
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(300));
    for &ty in TYPES {
        // Micro-kernel alone: 4 rows × 4 tokens × 1024.
        let cols = 1024;
        let bytes = quantize_to_vec(ty, &values(&mut rng, 4 * cols)).unwrap();
        let rows: Vec<&[u8]> = bytes.chunks_exact(bytes.len() / 4).collect();
        let (mut q, mut s16) = (vec![0u8; cols], vec![0f32; cols / 16]);
        let mut wp = vec![0u8; gemm::weight_panel_bytes(cols)];
        let mut bias = vec![0f32; 4 * cols / 32];
        assert!(gemm::pack_weights(
            Some(isa),
            ty,
            &rows,
            cols,
            &mut q,
            &mut s16,
            &mut wp,
            &mut bias
        ));
        let x: Vec<Vec<f32>> = (0..4).map(|_| values(&mut rng, cols)).collect();
        let xr: Vec<&[f32]> = x.iter().map(|v| v.as_slice()).collect();
        let mut ap = vec![0u8; gemm::act_panel_bytes(cols)];
        let mut sums = vec![0f32; 4 * cols / 32];
        gemm::pack_acts(&xr, cols, &mut ap, &mut sums);
        g.throughput(Throughput::Elements((16 * cols) as u64));
        g.bench_function(format!("kernel/{ty:?}"), |b| {
            b.iter(|| {
                let mut o = [[0f32; 4]; 4];
                gemm::kernel(
                    Some(isa),
                    ty,
                    4,
                    cols / CHUNK,
                    black_box(&wp),
                    black_box(&ap),
                    gemm::has_bias(ty).then_some((bias.as_slice(), sums.as_slice())),
                    &mut o,
                );
                o
            })
        });

        // A whole product: 896 rows × 4864 columns × 256 tokens, one thread.
        let (rows_n, cols, n) = (896usize, 4864usize, 256usize);
        let distinct = 16;
        let bytes = quantize_to_vec(ty, &values(&mut rng, distinct * cols)).unwrap();
        let row_bytes = bytes.len() / distinct;
        let x = values(&mut rng, n * cols);
        let groups = n / 4;
        let a_bytes = gemm::act_panel_bytes(cols);
        let mut ap = vec![0u8; groups * a_bytes];
        let mut sums = vec![0f32; groups * 4 * cols / 32];
        let (mut q, mut s16) = (vec![0u8; cols], vec![0f32; cols / 16]);
        let mut wp = vec![0u8; gemm::weight_panel_bytes(cols)];
        let mut bias = vec![0f32; 4 * cols / 32];
        let mut out = vec![0f32; n * rows_n];
        let nb = cols / 32;
        g.throughput(Throughput::Elements((rows_n * cols * n) as u64));
        g.bench_function(format!("matmul_896x4864x256/{ty:?}"), |b| {
            b.iter(|| {
                for gi in 0..groups {
                    let rows: Vec<&[f32]> = (0..4)
                        .map(|t| &x[(4 * gi + t) * cols..(4 * gi + t + 1) * cols])
                        .collect();
                    gemm::pack_acts(
                        &rows,
                        cols,
                        &mut ap[gi * a_bytes..(gi + 1) * a_bytes],
                        &mut sums[gi * 4 * nb..(gi + 1) * 4 * nb],
                    );
                }
                for r0 in (0..rows_n).step_by(4) {
                    let rows: Vec<&[u8]> = (0..4)
                        .map(|j| &bytes[((r0 + j) % distinct) * row_bytes..][..row_bytes])
                        .collect();
                    gemm::pack_weights(
                        Some(isa),
                        ty,
                        &rows,
                        cols,
                        &mut q,
                        &mut s16,
                        &mut wp,
                        &mut bias,
                    );
                    for gi in 0..groups {
                        let mut o = [[0f32; 4]; 4];
                        let sums = &sums[gi * 4 * nb..(gi + 1) * 4 * nb];
                        let b = gemm::has_bias(ty).then_some((bias.as_slice(), sums));
                        gemm::kernel(
                            Some(isa),
                            ty,
                            4,
                            cols / CHUNK,
                            &wp,
                            &ap[gi * a_bytes..],
                            b,
                            &mut o,
                        );
                        for (r, o) in o.iter().enumerate() {
                            for (t, &v) in o.iter().enumerate() {
                                out[(4 * gi + t) * rows_n + r0 + r] = v;
                            }
                        }
                    }
                }
                black_box(&out);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
