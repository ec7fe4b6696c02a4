//! Per-op dispatch overhead of `runtime::pool::ThreadPool`: ns per empty `run`, per barrier
//! inside a run, per `std::thread::scope` spawn (the worst case), and the wake-up of parked workers.
//!
//! cargo run --release -p surplus-runtime --example pool_overhead -- [--threads 1,2] [--runs N]
//!     [--contend K] [--spins S] [--yields Y] [--idle I] [--idle-yield-us U]
//!
//! `--contend K` keeps K extra threads busy meanwhile (a machine with other work on it);
//! `--spins/--yields/--idle/--idle-yield-us` override the pool's `SpinConfig`; `--runs` sets the
//! samples (100 000 runs and barriers). Rayon is not in the dependency tree, so it is not
//! compared here (docs/DEPENDENCIES.md measured 11-22 µs per op from outside its pool on this
//! machine).

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use runtime::pool::{SpinConfig, ThreadPool};

/// Median and mean of `samples` in ns.
fn stats(mut samples: Vec<u64>) -> (f64, f64) {
    samples.sort_unstable();
    let mean = samples.iter().sum::<u64>() as f64 / samples.len() as f64;
    (samples[samples.len() / 2] as f64, mean)
}

/// Times each of `n` calls of `f` (after a warm-up): median and mean ns, less the cost of
/// reading the clock. The median is what an op costs when nothing preempts the threads; the
/// mean includes preemptions by other work.
fn time_each(n: usize, mut f: impl FnMut()) -> (f64, f64) {
    for _ in 0..n / 10 {
        f();
    }
    let (median, mean) = stats(
        (0..n)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_nanos() as u64
            })
            .collect(),
    );
    let clock = clock_ns();
    (median - clock, mean - clock)
}

/// Median ns of timing nothing: `Instant::now` plus `elapsed`.
fn clock_ns() -> f64 {
    stats(
        (0..10_000)
            .map(|_| Instant::now().elapsed().as_nanos() as u64)
            .collect(),
    )
    .0
}

fn fmt_ns(ns: f64) -> String {
    if ns >= 10_000.0 {
        format!("{:.1} µs", ns / 1000.0)
    } else {
        format!("{ns:.0} ns")
    }
}

fn pair((median, mean): (f64, f64)) -> String {
    format!("{} / {}", fmt_ns(median), fmt_ns(mean))
}

fn main() {
    let mut threads = vec![1, 2];
    let mut contend = 0;
    let mut runs = 100_000;
    let mut spin = SpinConfig::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--threads" => {
                threads = val()
                    .split(',')
                    .map(|s| s.parse().expect("thread count"))
                    .collect()
            }
            "--contend" => contend = val().parse().expect("--contend K"),
            "--runs" => runs = val().parse().expect("--runs N"),
            "--spins" => spin.barrier_spins = val().parse().expect("--spins S"),
            "--yields" => spin.barrier_yields = val().parse().expect("--yields Y"),
            "--idle" => spin.idle_spins = val().parse().expect("--idle I"),
            "--idle-yield-us" => {
                spin.idle_yield_for =
                    Duration::from_micros(val().parse().expect("--idle-yield-us U"))
            }
            _ => panic!("unknown argument {a} (see the top of examples/pool_overhead.rs)"),
        }
    }

    let stop = Arc::new(AtomicBool::new(false));
    let hogs: Vec<_> = (0..contend)
        .map(|_| {
            let stop = stop.clone();
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    black_box(0);
                }
            })
        })
        .collect();

    let cpus = thread::available_parallelism().map_or(0, |n| n.get());
    println!("{cpus} CPUs, {contend} busy threads beside, {spin:?}");
    println!();
    println!("ns per op, median / mean:");
    println!();
    println!("| threads | empty run | barrier | scope spawn+join | run after 10 ms sleep |");
    println!("|---|---|---|---|---|");
    for &nth in &threads {
        let pool = ThreadPool::with_spin(nth, spin);
        let run = time_each(runs, || {
            pool.run(|w| {
                black_box(w.ith());
            })
        });
        // Thread 0 times each barrier; one run holds them all.
        let barrier = Mutex::new((0.0, 0.0));
        let n = runs;
        pool.run(|w| {
            let mut samples = Vec::with_capacity(if w.ith() == 0 { n } else { 0 });
            for k in 0..n + n / 10 {
                let t = Instant::now();
                w.barrier();
                if w.ith() == 0 && k >= n / 10 {
                    samples.push(t.elapsed().as_nanos() as u64);
                }
            }
            if w.ith() == 0 {
                let ((median, mean), clock) = (stats(samples), clock_ns());
                *barrier.lock().unwrap() = (median - clock, mean - clock);
            }
        });
        let spawn = time_each(runs.div_ceil(50), || {
            thread::scope(|s| {
                for i in 1..nth {
                    s.spawn(move || black_box(i));
                }
            })
        });
        let wake = stats(
            (0..30)
                .map(|_| {
                    thread::sleep(Duration::from_millis(10));
                    let t = Instant::now();
                    pool.run(|w| {
                        black_box(w.ith());
                    });
                    t.elapsed().as_nanos() as u64
                })
                .collect(),
        );
        println!(
            "| {nth} | {} | {} | {} | {} |",
            pair(run),
            pair(barrier.into_inner().unwrap()),
            pair(spawn),
            pair(wake)
        );
    }

    stop.store(true, Ordering::Relaxed);
    for h in hogs {
        h.join().unwrap();
    }
}
