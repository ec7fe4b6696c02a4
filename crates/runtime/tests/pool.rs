//! `runtime::pool`: every thread runs once per run, shares partition exactly, barriers order
//! phases, panics propagate, nested and concurrent use, and no deadlock under stress.

use std::cell::UnsafeCell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::Duration;

use runtime::pool::{SpinConfig, ThreadPool, Worker};

/// Scaled down under Miri, which is some 1000× slower.
fn iters(native: usize, miri: usize) -> usize {
    if cfg!(miri) {
        miri
    } else {
        native
    }
}

/// Runs `f` on its own thread and fails the test if it takes longer than `secs` (a deadlock).
fn with_timeout(secs: u64, f: impl FnOnce() + Send + 'static) {
    if cfg!(miri) {
        return f();
    }
    let (tx, rx) = mpsc::channel();
    let handle = thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(()) => handle.join().unwrap(),
        // The sender was dropped without sending: `f` panicked; re-raise its panic.
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            panic::resume_unwind(handle.join().unwrap_err())
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("timed out after {secs} s (deadlock?)"),
    }
}

/// The message of a panic payload (`panic!` with a literal or a format string).
fn message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "<non-string payload>".into()
    }
}

/// Plain (non-atomic) slots, one per thread, so that a missing happens-before edge is a data
/// race Miri reports, not just a wrong value.
struct Slots(Vec<UnsafeCell<u64>>);

// SAFETY: the tests only write a slot from its own thread and read others after a barrier.
unsafe impl Sync for Slots {}

impl Slots {
    fn new(n: usize) -> Slots {
        Slots((0..n).map(|_| UnsafeCell::new(0)).collect())
    }
    fn write(&self, i: usize, v: u64) {
        // SAFETY: only thread `i` writes slot `i`, and no thread reads it until a barrier.
        unsafe { *self.0[i].get() = v }
    }
    fn read(&self, i: usize) -> u64 {
        // SAFETY: the writer of slot `i` is separated from this read by a barrier.
        unsafe { *self.0[i].get() }
    }
}

#[test]
fn pool_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<ThreadPool>();
    check::<Worker<'static>>();
}

#[test]
fn spin_config_throttles_when_oversubscribed() {
    assert_eq!(SpinConfig::for_threads(1), SpinConfig::default());
    assert_eq!(
        SpinConfig::for_threads(usize::MAX),
        SpinConfig::OVERSUBSCRIBED
    );
}

#[test]
fn every_thread_runs_once_per_run_with_distinct_ith() {
    with_timeout(60, || {
        let caller = thread::current().id();
        for n in 1..=5 {
            let pool = ThreadPool::new(n);
            assert_eq!(pool.n_threads(), n);
            let counts: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            let runs = iters(200, 5);
            for _ in 0..runs {
                pool.run(|w| {
                    assert_eq!(w.nth(), n);
                    assert!(w.ith() < n);
                    // Thread 0 is the caller; every other index is a worker thread.
                    assert_eq!(w.ith() == 0, thread::current().id() == caller);
                    counts[w.ith()].fetch_add(1, Ordering::Relaxed);
                });
            }
            for (i, c) in counts.iter().enumerate() {
                assert_eq!(c.load(Ordering::Relaxed), runs, "thread {i} of {n}");
            }
        }
    });
}

#[test]
fn single_thread_pool_runs_on_the_caller() {
    let pool = ThreadPool::new(1);
    assert_eq!(pool.n_threads(), 1);
    let caller = thread::current().id();
    let hits = AtomicUsize::new(0);
    for _ in 0..iters(1000, 10) {
        pool.run(|w| {
            assert_eq!((w.ith(), w.nth()), (0, 1));
            assert_eq!(thread::current().id(), caller);
            w.barrier();
            w.barrier();
            assert_eq!(w.split(10), 0..10);
            assert_eq!(w.split_aligned(10, 4), 0..10);
            hits.fetch_add(1, Ordering::Relaxed);
        });
    }
    assert_eq!(hits.load(Ordering::Relaxed), iters(1000, 10));
    let r = panic::catch_unwind(AssertUnwindSafe(|| pool.run(|_| panic!("solo"))));
    assert_eq!(message(&*r.unwrap_err()), "solo");
    pool.run(|_| {});
}

#[test]
#[should_panic(expected = "at least 1")]
fn zero_threads_is_rejected() {
    let _ = ThreadPool::new(0);
}

/// Collects every thread's share of `0..n` (sorted by thread index).
fn shares(
    pool: &ThreadPool,
    f: impl Fn(&Worker) -> std::ops::Range<usize> + Sync,
) -> Vec<(usize, usize)> {
    let out = Mutex::new(vec![(usize::MAX, usize::MAX); pool.n_threads()]);
    pool.run(|w| {
        let r = f(w);
        out.lock().unwrap()[w.ith()] = (r.start, r.end);
    });
    out.into_inner().unwrap()
}

#[test]
fn split_partitions_exactly_and_evenly() {
    with_timeout(60, || {
        for nth in 1..=5 {
            let pool = ThreadPool::new(nth);
            for n in (0..40).chain([97, 1000, 4097]) {
                let s = shares(&pool, |w| w.split(n));
                assert_eq!(s[0].0, 0, "n={n} nth={nth}");
                assert_eq!(s[nth - 1].1, n, "n={n} nth={nth}");
                for i in 1..nth {
                    assert_eq!(s[i].0, s[i - 1].1, "contiguous: n={n} nth={nth}");
                }
                let lens: Vec<usize> = s.iter().map(|&(a, b)| b - a).collect();
                let (lo, hi) = (lens.iter().min().unwrap(), lens.iter().max().unwrap());
                assert!(hi - lo <= 1, "balanced: n={n} nth={nth} {lens:?}");
            }
        }
    });
}

#[test]
fn split_aligned_partitions_in_multiples_of_align() {
    with_timeout(60, || {
        for nth in 1..=5 {
            let pool = ThreadPool::new(nth);
            for align in [1, 2, 3, 4, 8, 32] {
                for n in (0..70).chain([255, 256, 257, 4096 + 5]) {
                    let s = shares(&pool, |w| w.split_aligned(n, align));
                    let ctx = format!("n={n} align={align} nth={nth} {s:?}");
                    assert_eq!(s[0].0, 0, "{ctx}");
                    assert_eq!(s[nth - 1].1, n, "{ctx}");
                    for i in 1..nth {
                        assert_eq!(s[i].0, s[i - 1].1, "contiguous: {ctx}");
                    }
                    for &(a, b) in &s {
                        assert!(a % align == 0 || a == n, "starts aligned: {ctx}");
                        assert!((b - a) % align == 0 || b == n, "multiple of align: {ctx}");
                    }
                    // Balanced in blocks: block counts differ by at most 1.
                    let blocks: Vec<usize> =
                        s.iter().map(|&(a, b)| (b - a).div_ceil(align)).collect();
                    let (lo, hi) = (blocks.iter().min().unwrap(), blocks.iter().max().unwrap());
                    assert!(hi - lo <= 1, "balanced: {ctx}");
                }
            }
        }
    });
}

#[test]
#[should_panic(expected = "align must be at least 1")]
fn split_aligned_rejects_zero_align() {
    ThreadPool::new(1).run(|w| {
        w.split_aligned(10, 0);
    });
}

#[test]
fn barrier_orders_phases() {
    with_timeout(120, || {
        let configs = [
            SpinConfig::default(),
            SpinConfig::OVERSUBSCRIBED,
            // Block at every wait: exercises the condvar path of the barrier.
            SpinConfig {
                barrier_spins: 0,
                barrier_yields: 0,
                idle_spins: 0,
                idle_yield_for: Duration::ZERO,
            },
        ];
        for (nth, spin) in (2..=4).flat_map(|n| configs.map(|c| (n, c))) {
            let pool = ThreadPool::with_spin(nth, spin);
            let slots = Slots::new(nth);
            let rounds = iters(1000, 10) as u64;
            pool.run(|w| {
                let (i, n) = (w.ith(), w.nth());
                for r in 0..rounds {
                    slots.write(i, r * 100 + i as u64);
                    w.barrier();
                    for j in 0..n {
                        assert_eq!(slots.read(j), r * 100 + j as u64, "round {r}");
                    }
                    w.barrier(); // nobody overwrites a slot before everyone has read it
                }
            });
        }
    });
}

#[test]
fn results_of_a_run_are_visible_to_the_caller() {
    let pool = ThreadPool::new(3);
    let slots = Slots::new(3);
    for r in 0..iters(1000, 10) as u64 {
        pool.run(|w| slots.write(w.ith(), r + w.ith() as u64));
        for i in 0..3 {
            assert_eq!(slots.read(i), r + i as u64);
        }
    }
}

#[test]
fn hundred_thousand_tiny_runs() {
    with_timeout(300, || {
        for nth in [2, 3] {
            let pool = ThreadPool::new(nth);
            let hits = AtomicUsize::new(0);
            let runs = iters(100_000, 30);
            for _ in 0..runs {
                pool.run(|_| {
                    hits.fetch_add(1, Ordering::Relaxed);
                });
            }
            assert_eq!(hits.load(Ordering::Relaxed), runs * nth);
        }
    });
}

#[test]
fn parked_workers_wake_up() {
    with_timeout(60, || {
        // No idle spinning at all: workers park right after every run, and barriers block at once.
        let spin = SpinConfig {
            barrier_spins: 16,
            barrier_yields: 0,
            idle_spins: 0,
            idle_yield_for: Duration::ZERO,
        };
        for pool in [ThreadPool::new(3), ThreadPool::with_spin(3, spin)] {
            let hits = AtomicUsize::new(0);
            for k in 0..iters(200, 5) {
                if k % 50 == 0 && !cfg!(miri) {
                    thread::sleep(Duration::from_millis(20)); // past the idle spin: parked
                }
                pool.run(|w| {
                    w.barrier();
                    hits.fetch_add(1, Ordering::Relaxed);
                });
            }
            assert_eq!(hits.load(Ordering::Relaxed), iters(200, 5) * 3);
        }
    });
}

/// A named closure for a run.
type Case = (&'static str, fn(&Worker));

#[test]
fn panics_propagate_and_the_pool_stays_usable() {
    with_timeout(60, || {
        let pool = ThreadPool::new(3);
        // On a worker, on the caller, on every thread, and before a barrier others wait at.
        let cases: [Case; 4] = [
            ("worker", |w| {
                if w.ith() == 2 {
                    panic!("boom on {}", w.ith());
                }
            }),
            ("caller", |w| {
                w.barrier();
                if w.ith() == 0 {
                    panic!("boom on {}", w.ith());
                }
            }),
            ("all", |w| panic!("boom on {}", w.ith())),
            ("before barrier", |w| {
                if w.ith() == 1 {
                    panic!("boom on {}", w.ith());
                }
                for _ in 0..10 {
                    w.barrier();
                }
            }),
        ];
        for (what, f) in cases {
            for _ in 0..iters(20, 2) {
                let r = panic::catch_unwind(AssertUnwindSafe(|| pool.run(f)));
                let msg = message(&*r.expect_err(what));
                assert!(msg.starts_with("boom on "), "{what}: {msg}");
                // Still usable, barriers included.
                let hits = AtomicUsize::new(0);
                pool.run(|w| {
                    w.barrier();
                    hits.fetch_add(1, Ordering::Relaxed);
                    w.barrier();
                });
                assert_eq!(hits.load(Ordering::Relaxed), 3, "{what}");
            }
        }
    });
}

#[test]
fn uneven_barrier_counts_panic_instead_of_hanging() {
    with_timeout(60, || {
        let pool = ThreadPool::new(2);
        for waiter in [0, 1] {
            let r = panic::catch_unwind(AssertUnwindSafe(|| {
                pool.run(|w| {
                    if w.ith() == waiter {
                        w.barrier();
                    }
                })
            }));
            let msg = message(&*r.unwrap_err());
            assert!(msg.contains("same number of times"), "{msg}");
            pool.run(|w| w.barrier());
        }
    });
}

#[test]
fn nested_run_of_the_same_pool_is_rejected() {
    with_timeout(60, || {
        let pool = ThreadPool::new(2);
        for from in [0, 1] {
            let r = panic::catch_unwind(AssertUnwindSafe(|| {
                pool.run(|w| {
                    if w.ith() == from {
                        pool.run(|_| {});
                    }
                })
            }));
            let msg = message(&*r.unwrap_err());
            assert!(msg.contains("nested"), "from thread {from}: {msg}");
            pool.run(|_| {});
        }
    });
}

#[test]
fn another_pool_may_run_inside_a_run() {
    with_timeout(60, || {
        let outer = ThreadPool::new(2);
        let inner = ThreadPool::new(2);
        let hits = AtomicUsize::new(0);
        for _ in 0..iters(100, 3) {
            outer.run(|w| {
                if w.ith() == 0 {
                    inner.run(|v| {
                        v.barrier();
                        hits.fetch_add(1, Ordering::Relaxed);
                    });
                }
                w.barrier();
            });
        }
        assert_eq!(hits.load(Ordering::Relaxed), iters(100, 3) * 2);
    });
}

#[test]
fn runs_from_two_caller_threads_are_serialized() {
    with_timeout(120, || {
        let pool = Arc::new(ThreadPool::new(2));
        let inside = Arc::new(AtomicUsize::new(0));
        let hits = Arc::new(AtomicUsize::new(0));
        let callers: Vec<_> = (0..2)
            .map(|_| {
                let (pool, inside, hits) = (pool.clone(), inside.clone(), hits.clone());
                thread::spawn(move || {
                    for _ in 0..iters(2000, 10) {
                        pool.run(|w| {
                            // At most nth threads are ever inside: runs never overlap.
                            assert!(inside.fetch_add(1, Ordering::SeqCst) < w.nth());
                            w.barrier();
                            hits.fetch_add(1, Ordering::Relaxed);
                            w.barrier();
                            inside.fetch_sub(1, Ordering::SeqCst);
                        });
                    }
                })
            })
            .collect();
        for c in callers {
            c.join().unwrap();
        }
        assert_eq!(hits.load(Ordering::Relaxed), 2 * iters(2000, 10) * 2);
    });
}

#[test]
fn pools_are_created_and_dropped_cleanly() {
    with_timeout(60, || {
        for k in 0..iters(50, 3) {
            let pool = ThreadPool::new(1 + k % 4);
            if k % 2 == 0 {
                pool.run(|w| w.barrier());
            }
            if k % 10 == 0 && !cfg!(miri) {
                thread::sleep(Duration::from_millis(5)); // drop with the workers parked
            }
        }
    });
}

/// A tiny deterministic generator, so the stress test needs no dependency.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// A mix of ops like a forward pass: each op splits a shared vector, writes its share, waits at
/// a barrier, then checks the whole vector; threads get uneven work so they arrive out of order.
#[test]
fn stress_many_ops_per_run() {
    with_timeout(300, || {
        for nth in [2, 3, 4] {
            let pool = ThreadPool::new(nth);
            let len = 257;
            let data: Vec<AtomicUsize> = (0..len).map(|_| AtomicUsize::new(0)).collect();
            let mut seed = 0x9e37_79b9_7f4a_7c15_u64 ^ nth as u64;
            for run in 0..iters(300, 3) {
                let ops = (next(&mut seed) % 20) as usize;
                let salt = next(&mut seed);
                pool.run(|w| {
                    for op in 0..ops {
                        let tag = run * 1000 + op + 1;
                        let r = if op % 2 == 0 {
                            w.split(len)
                        } else {
                            w.split_aligned(len, 8)
                        };
                        // Uneven, varying work per thread.
                        let spin = (salt >> (w.ith() * 4 + op % 8)) % 64;
                        for _ in 0..spin * 10 {
                            std::hint::spin_loop();
                        }
                        for x in &data[r] {
                            x.store(tag, Ordering::Relaxed);
                        }
                        w.barrier();
                        for x in &data {
                            assert_eq!(x.load(Ordering::Relaxed), tag);
                        }
                        w.barrier();
                    }
                });
            }
        }
    });
}
