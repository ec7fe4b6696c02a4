//! Per-op dispatch overhead of `runtime::pool::ThreadPool`: ns per empty `run`, per barrier
//! inside a run, per `std::thread::scope` spawn (the worst case), and the wake-up of parked workers.
//!
//! Barriers are timed by the round (a run of many back to back); runs and spawns one by one.
//!
//! cargo run --release -p surplus-runtime --example pool_overhead -- [--threads 1,2] [--runs N]
//!     [--contend K] [--spins S] [--yields Y] [--idle I] [--idle-yield-us U]
//!
//! `--contend K` keeps K extra threads busy meanwhile (a machine with other work on it);
//! `--spins/--yields/--idle/--idle-yield-us` override the pool's `SpinConfig` (by default
//! `SpinConfig::for_threads`, as `ThreadPool::new` picks); `--runs` sets the
//! samples (100 000 runs and barriers). Rayon is not in the dependency tree, so it is not
//! compared here (docs/DEPENDENCIES.md measured 11-22 µs per op from outside its pool on this
//! machine).

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
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
    // Overrides of `SpinConfig::for_threads(nth)`, the budgets `ThreadPool::new` picks.
    let (mut spins, mut yields, mut idle, mut idle_yield) = (None, None, None, None);
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
            "--spins" => spins = Some(val().parse().expect("--spins S")),
            "--yields" => yields = Some(val().parse().expect("--yields Y")),
            "--idle" => idle = Some(val().parse().expect("--idle I")),
            "--idle-yield-us" => {
                idle_yield = Some(Duration::from_micros(
                    val().parse().expect("--idle-yield-us U"),
                ))
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
    println!("{cpus} CPUs, {contend} busy threads beside");
    println!();
    println!("ns per op, median / mean:");
    println!();
    println!(
        "| threads | spins, yields, idle spins, idle yield | empty run | barrier \
         | scope spawn+join | run after 10 ms sleep |"
    );
    println!("|---|---|---|---|---|---|");
    for &nth in &threads {
        let mut spin = SpinConfig::for_threads(nth);
        spin.barrier_spins = spins.unwrap_or(spin.barrier_spins);
        spin.barrier_yields = yields.unwrap_or(spin.barrier_yields);
        spin.idle_spins = idle.unwrap_or(spin.idle_spins);
        spin.idle_yield_for = idle_yield.unwrap_or(spin.idle_yield_for);
        let pool = ThreadPool::with_spin(nth, spin);
        let run = time_each(runs, || {
            pool.run(|w| {
                black_box(w.ith());
            })
        });
        // A barrier is timed by the round: one run passes `batch` barriers back to back, and
        // the time per barrier of each of 20 such runs is a sample. (Timing single calls on one
        // thread would only see that thread's wait, often none when it arrives last.)
        let batch = runs.div_ceil(20);
        let barrier = stats(
            (0..21)
                .map(|_| {
                    let t = Instant::now();
                    pool.run(|w| {
                        for _ in 0..batch {
                            w.barrier();
                        }
                    });
                    (t.elapsed().as_nanos() / batch as u128) as u64
                })
                .skip(1) // warm-up
                .collect(),
        );
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
            "| {nth} | {}, {}, {}, {:?} | {} | {} | {} | {} |",
            spin.barrier_spins,
            spin.barrier_yields,
            spin.idle_spins,
            spin.idle_yield_for,
            pair(run),
            pair(barrier),
            pair(spawn),
            pair(wake)
        );
    }

    stop.store(true, Ordering::Relaxed);
    for h in hogs {
        h.join().unwrap();
    }
}
