//! Matrix × vector throughput of the dot-product kernels: a 2048 × 4096 weight matrix
//! (beyond L2 for every type) times one activation row, per weight type and tier,
//! reported in GB/s of weight bytes. Also the activation quantizers on one 4096 row.
//!
//! `cargo bench -p surplus-quant --bench dot` (filter: `-- Q4_K`, `-- avx512`, ...).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gguf::GgmlType;
use quant::dot::quantize_activations_for;
use quant::{activation_type, dot_fn_for, quantize_to_vec, Isa};
use rand::rngs::StdRng;
use rand::SeedableRng;
use testkit::gaussian;

const ROWS: usize = 2048;
const COLS: usize = 4096;
/// Distinct rows quantized; the matrix repeats them (same bytes moved, less setup time).
const DISTINCT: usize = 64;

const WEIGHTS: &[GgmlType] = &[
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::IQ4_NL,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::IQ4_XS,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::F32,
];

fn matvec(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(7);
    let x = gaussian(&mut rng, COLS, 1.0);
    let mut group = c.benchmark_group("matvec_2048x4096");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for &w in WEIGHTS {
        let row_bytes = w.bytes_for(COLS as u64).unwrap() as usize;
        let distinct: Vec<u8> = (0..DISTINCT)
            .flat_map(|_| quantize_to_vec(w, &gaussian(&mut rng, COLS, 0.05)).unwrap())
            .collect();
        let matrix: Vec<u8> = distinct
            .chunks_exact(row_bytes)
            .cycle()
            .take(ROWS)
            .flatten()
            .copied()
            .collect();
        let at = activation_type(w);
        let mut a = vec![0u8; at.bytes_for(COLS as u64).unwrap() as usize];
        quantize_activations_for(w, Isa::detected(), &x, &mut a).unwrap();
        let mut out = vec![0.0f32; ROWS];
        group.throughput(Throughput::BytesDecimal(matrix.len() as u64));
        for isa in Isa::ALL {
            let Some(f) = dot_fn_for(w, isa) else {
                continue;
            };
            group.bench_function(format!("{w}/{isa}"), |b| {
                b.iter(|| {
                    for (o, row) in out.iter_mut().zip(matrix.chunks_exact(row_bytes)) {
                        *o = f(COLS, black_box(row), black_box(&a));
                    }
                    black_box(&out);
                })
            });
        }
    }
    group.finish();
}

fn activations(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(8);
    let x = gaussian(&mut rng, COLS, 1.0);
    let mut group = c.benchmark_group("quantize_activations_4096");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    group.throughput(Throughput::BytesDecimal((COLS * 4) as u64));
    for w in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q4_K] {
        let at = activation_type(w);
        let mut out = vec![0u8; at.bytes_for(COLS as u64).unwrap() as usize];
        for isa in Isa::ALL {
            if !isa.is_available() {
                continue;
            }
            group.bench_function(format!("{at}/{isa}"), |b| {
                b.iter(|| quantize_activations_for(w, isa, black_box(&x), &mut out).unwrap())
            });
        }
    }
    group.finish();
}

criterion_group!(benches, matvec, activations);
criterion_main!(benches);
