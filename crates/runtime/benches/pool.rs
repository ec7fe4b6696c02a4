//! `runtime::pool` dispatch costs: an empty run, a barrier, and a small op (y += a·x over f32)
//! split across the pool against the same op serial. `cargo bench -p surplus-runtime --bench pool`

use std::hint::black_box;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use runtime::pool::ThreadPool;

const THREADS: [usize; 2] = [1, 2];

fn empty_run(c: &mut Criterion) {
    let mut g = c.benchmark_group("pool/empty_run");
    for nth in THREADS {
        let pool = ThreadPool::new(nth);
        g.bench_function(BenchmarkId::from_parameter(nth), |b| {
            b.iter(|| {
                pool.run(|w| {
                    black_box(w.ith());
                })
            })
        });
    }
    g.finish();
}

fn barrier(c: &mut Criterion) {
    let mut g = c.benchmark_group("pool/barrier");
    let per_run = 1000;
    g.throughput(Throughput::Elements(per_run));
    for nth in THREADS {
        let pool = ThreadPool::new(nth);
        g.bench_function(BenchmarkId::from_parameter(nth), |b| {
            b.iter(|| {
                pool.run(|w| {
                    for _ in 0..per_run {
                        w.barrier();
                    }
                })
            })
        });
    }
    g.finish();
}

/// `y += a * x` with f32 bits in atomics, so that threads may share the slices safely (relaxed
/// atomic loads and stores compile to plain moves).
fn axpy(y: &[AtomicU32], x: &[AtomicU32], a: f32) {
    for (y, x) in y.iter().zip(x) {
        let v = f32::from_bits(y.load(Ordering::Relaxed))
            + a * f32::from_bits(x.load(Ordering::Relaxed));
        y.store(v.to_bits(), Ordering::Relaxed);
    }
}

fn small_op(c: &mut Criterion) {
    let mut g = c.benchmark_group("pool/axpy");
    for len in [1024, 16 * 1024, 256 * 1024] {
        let x: Vec<AtomicU32> = (0..len)
            .map(|i| AtomicU32::new((i as f32).to_bits()))
            .collect();
        let y: Vec<AtomicU32> = (0..len).map(|_| AtomicU32::new(0)).collect();
        g.throughput(Throughput::Bytes(len as u64 * 4));
        g.bench_function(BenchmarkId::new("serial", len), |b| {
            b.iter(|| axpy(&y, &x, black_box(0.5)))
        });
        for nth in THREADS {
            let pool = ThreadPool::new(nth);
            g.bench_function(BenchmarkId::new(format!("pool{nth}"), len), |b| {
                b.iter(|| {
                    pool.run(|w| {
                        let r = w.split_aligned(len, 16);
                        axpy(&y[r.clone()], &x[r], black_box(0.5));
                    })
                })
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = empty_run, barrier, small_op
}
criterion_main!(benches);
