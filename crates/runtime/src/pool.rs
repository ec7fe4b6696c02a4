//! CPU thread pool for many tiny ops per token: persistent workers spin briefly, then park.
//! One `run` per layer or graph (every thread runs the same closure) with barriers between ops.

use std::any::Any;
use std::cell::Cell;
use std::fmt;
use std::hint;
use std::ops::{Deref, Range};
use std::panic::{self, AssertUnwindSafe};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// `spin_loop` iterations a thread waiting at a barrier (or the caller waiting for the end of a
/// run) spends before it falls back to `yield_now`. One iteration is one `pause`: about 25 ns on
/// the AMD EPYC CI machine (about 40 ns on recent Intel cores), so about 25-40 µs. Long enough
/// that the imbalance of a µs-sized op never leaves the spin; short enough that a thread whose
/// partner was descheduled (more threads than free cores) soon stops burning the core. When the
/// partner waits for the waiter's own core, every barrier costs this budget: measured 27 µs per
/// barrier with 2 threads while another process held one of the 2 vCPUs (an adaptive budget
/// could cut that; see [`SpinConfig`] to tune).
pub const BARRIER_SPINS: u32 = 1 << 10;

/// `yield_now` calls after [`BARRIER_SPINS`] before the waiter blocks (Mutex + Condvar, a futex
/// on Linux) until the last thread arrives. A yield costs about 0.5 µs when the core is free.
/// Blocking matters under oversubscription: a blocked thread leaves its core and its scheduler
/// credit to the threads it waits for, where a yielding one keeps competing with them.
pub const BARRIER_YIELDS: u32 = 16;

/// `spin_loop` iterations an idle worker polls for the next run before it polls with
/// `yield_now` between checks (about 25-40 µs, as [`BARRIER_SPINS`]). Pure spinning has to stay
/// short: an idle worker spinning on a core that a busy thread of the same run needs (more
/// threads than free cores) holds up the whole run for as long as it spins.
pub const IDLE_SPINS: u32 = 1 << 10;

/// How long an idle worker keeps polling with `yield_now` after [`IDLE_SPINS`] before it parks.
/// A decode loop that calls `run` again within this finds its workers awake (a yield costs about
/// 0.5 µs when the core is free, so they answer almost as fast as spinning ones); waking a
/// parked worker costs tens of µs. An idle pool parks and then costs nothing.
pub const IDLE_YIELD_FOR: Duration = Duration::from_millis(1);

/// Spin budgets of a pool; [`SpinConfig::default`] gives the constants above, and
/// [`SpinConfig::for_threads`] (what [`ThreadPool::new`] uses) [`SpinConfig::OVERSUBSCRIBED`]
/// when the pool has more threads than the CPUs this process may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpinConfig {
    /// Spins at a barrier (and in the caller waiting for the workers) before yielding.
    pub barrier_spins: u32,
    /// Yields after those spins before blocking.
    pub barrier_yields: u32,
    /// Spins of an idle worker before it yields.
    pub idle_spins: u32,
    /// How long an idle worker yields after those spins before it parks (both 0: park at once).
    pub idle_yield_for: Duration,
}

impl SpinConfig {
    /// Budgets for a pool with more threads than CPUs (as libgomp throttles its spin count): a
    /// waiter then most likely holds the core of the thread it waits for, so it blocks after a
    /// few µs. Measured with 3 and 4 threads on 2 vCPUs: 4-9 µs per barrier and per empty run,
    /// against 27-57 µs with the default budgets.
    pub const OVERSUBSCRIBED: SpinConfig = SpinConfig {
        barrier_spins: 64,
        barrier_yields: 4,
        idle_spins: 64,
        idle_yield_for: IDLE_YIELD_FOR,
    };

    /// [`SpinConfig::OVERSUBSCRIBED`] if `n_threads` exceeds
    /// `std::thread::available_parallelism` (CPU affinity and cgroup quota), else the default.
    /// Other processes' load is not seen here; the yield and block fallbacks cover it.
    pub fn for_threads(n_threads: usize) -> SpinConfig {
        match thread::available_parallelism() {
            Ok(cpus) if n_threads > cpus.get() => SpinConfig::OVERSUBSCRIBED,
            _ => SpinConfig::default(),
        }
    }
}

impl Default for SpinConfig {
    fn default() -> Self {
        SpinConfig {
            barrier_spins: BARRIER_SPINS,
            barrier_yields: BARRIER_YIELDS,
            idle_spins: IDLE_SPINS,
            idle_yield_for: IDLE_YIELD_FOR,
        }
    }
}

/// Keeps a hot atomic alone on its cache line (128 bytes: x86 prefetches lines in pairs).
#[repr(align(128))]
struct Padded<T>(T);

impl<T> Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// The closure of a run, as the workers see it.
type Job<'f> = dyn for<'w, 'p> Fn(&'w Worker<'p>) + Sync + 'f;

/// Payload of the panic a barrier raises to unwind a thread out of a run that another thread's
/// panic has already doomed; never propagated to the caller.
struct Abandoned;

thread_local! {
    /// The pool whose closure this thread is running (always set on a worker thread): lets
    /// `run` reject a nested call instead of deadlocking.
    static CURRENT: Cell<*const Shared> = const { Cell::new(ptr::null()) };
}

struct Start {
    /// Bumped once per run (and once at shutdown); workers poll it.
    epoch: AtomicU64,
    /// Points at a `&Job` on the stack of the thread in `run`. Set before the epoch is bumped,
    /// valid until `done` reaches `nth` (see the SAFETY comment in `worker_main`).
    job: AtomicPtr<()>,
}

struct Shared {
    nth: usize,
    spin: SpinConfig,
    start: Padded<Start>,
    /// Threads that have returned from the closure in this run (the caller counts too): the end
    /// barrier. Also tells a thread waiting at a barrier that somebody left without arriving.
    done: Padded<AtomicUsize>,
    /// Arrivals at the current barrier.
    bar_count: Padded<AtomicUsize>,
    /// Barrier generation: the last arrival bumps it, the others wait for it to change.
    bar_gen: Padded<AtomicUsize>,
    cold: Padded<Cold>,
}

struct Cold {
    /// Workers parked (or about to park): the caller unparks them only when this is non-zero.
    n_parked: AtomicUsize,
    /// Threads blocked (or about to block) on `cv` in `wait_until`: whoever changes `bar_gen`
    /// or `done` notifies only when this is non-zero.
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    cv: Condvar,
    /// A thread of this run panicked; its payload is in `panic`.
    poisoned: AtomicBool,
    shutdown: AtomicBool,
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

impl Shared {
    /// Waits for the epoch to move past `seen` and returns the new one: spin, yield, park.
    #[inline]
    fn wait_for_epoch(&self, seen: u64) -> u64 {
        for _ in 0..self.spin.idle_spins {
            let e = self.start.epoch.load(Ordering::Acquire);
            if e != seen {
                return e;
            }
            hint::spin_loop();
        }
        self.idle_slow(seen)
    }

    #[cold]
    #[inline(never)]
    fn idle_slow(&self, seen: u64) -> u64 {
        let since = Instant::now();
        loop {
            let e = self.start.epoch.load(Ordering::Acquire);
            if e != seen {
                return e;
            }
            if since.elapsed() >= self.spin.idle_yield_for {
                break;
            }
            thread::yield_now();
        }
        // Dekker-style handshake with `run`: we publish `n_parked` then read the epoch, `run`
        // bumps the epoch then reads `n_parked` (all SeqCst), so either we see the new epoch or
        // `run` sees us and unparks us (an unpark before the park is remembered by the token).
        self.cold.n_parked.fetch_add(1, Ordering::SeqCst);
        let e = loop {
            let e = self.start.epoch.load(Ordering::SeqCst);
            if e != seen {
                break e;
            }
            thread::park();
        };
        self.cold.n_parked.fetch_sub(1, Ordering::SeqCst);
        e
    }

    /// Waits until `ready()`, which must turn true through a change of `bar_gen` or `done`
    /// (each followed by `wake_sleepers`): spin, then yield, then block on the condvar.
    #[inline]
    fn wait_until(&self, ready: impl Fn() -> bool) {
        for _ in 0..self.spin.barrier_spins {
            if ready() {
                return;
            }
            hint::spin_loop();
        }
        self.wait_slow(ready);
    }

    #[cold]
    #[inline(never)]
    fn wait_slow(&self, ready: impl Fn() -> bool) {
        for _ in 0..self.spin.barrier_yields {
            if ready() {
                return;
            }
            thread::yield_now();
        }
        // Dekker-style with `wake_sleepers`: we publish `sleepers` then read the state (SeqCst
        // loads in `ready`), the waker writes the state (SeqCst) then reads `sleepers`; so
        // either we see the change or it sees us, and it takes `lock` before notifying, so it
        // cannot notify between our last check and our wait.
        let cold = &self.cold;
        cold.sleepers.fetch_add(1, Ordering::SeqCst);
        let mut guard = cold.lock.lock().unwrap_or_else(PoisonError::into_inner);
        while !ready() {
            guard = cold.cv.wait(guard).unwrap_or_else(PoisonError::into_inner);
        }
        drop(guard);
        cold.sleepers.fetch_sub(1, Ordering::SeqCst);
    }

    /// Wakes the threads blocked in `wait_slow`; call after a SeqCst change of `bar_gen`/`done`.
    #[inline]
    fn wake_sleepers(&self) {
        if self.cold.sleepers.load(Ordering::SeqCst) != 0 {
            self.wake_slow();
        }
    }

    #[cold]
    #[inline(never)]
    fn wake_slow(&self) {
        drop(
            self.cold
                .lock
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        self.cold.cv.notify_all();
    }

    /// Adds this thread to `done` (it has returned from the closure).
    #[inline]
    fn finish(&self) {
        self.done.fetch_add(1, Ordering::SeqCst);
        self.wake_sleepers();
    }

    /// Keeps the first real panic of a run; sets `poisoned` before the thread bumps `done`.
    #[cold]
    fn record_panic(&self, payload: Box<dyn Any + Send>) {
        if (*payload).is::<Abandoned>() {
            return; // the panic that caused it is recorded already
        }
        let mut slot = self
            .cold
            .panic
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if slot.is_none() {
            *slot = Some(payload);
        }
        drop(slot);
        self.cold.poisoned.store(true, Ordering::Release);
    }

    /// A thread returned from the closure while this one waits at a barrier that has not
    /// completed: either a thread panicked (unwind quietly) or the barrier counts differ.
    #[cold]
    #[inline(never)]
    fn barrier_abandoned(&self) -> ! {
        if self.cold.poisoned.load(Ordering::Acquire) {
            panic::resume_unwind(Box::new(Abandoned));
        }
        panic!(
            "Worker::barrier: a thread returned from the closure while others wait at a barrier \
             (every thread of a run must call barrier() the same number of times)"
        );
    }
}

/// A pool of `n_threads` threads (the caller of [`ThreadPool::run`] plus `n_threads - 1`
/// persistent workers) that run one closure SPMD-style, like ggml's compute threads or an
/// OpenMP parallel region: enter it once per forward pass (or layer), split each op by
/// [`Worker::ith`] and end each op with [`Worker::barrier`].
///
/// Per-op dispatch overhead, measured on the 2-vCPU CI machine (AMD EPYC under KVM, shared
/// with other jobs) with `cargo run --release -p surplus-runtime --example pool_overhead`,
/// median per op: with 2 threads an empty `run` costs about 0.2 µs and a barrier about 0.1 µs
/// (with 1 thread: 10 ns and nothing), against 11-22 µs for rayon entered from outside its pool
/// (docs/DEPENDENCIES.md) and 30-40 µs for spawning scoped threads. A run that finds its
/// workers parked takes about 45-65 µs (futex wake of a halted vCPU). With more threads than
/// free cores a barrier costs a context switch: 4-9 µs with 3 or 4 threads on 2 vCPUs
/// ([`SpinConfig::OVERSUBSCRIBED`]); with 2 threads while another process holds one of the two
/// vCPUs, 27 µs per barrier and 53 µs per run (the default spin budget, see [`BARRIER_SPINS`]).
/// Pure spinning took 14-20 ms per barrier or run with 3 threads and 2 busy processes beside.
///
/// Runs from several threads are serialized by a mutex (no allocation, no syscall when
/// uncontended). A nested `run` of the same pool from inside its closure panics (it could only
/// deadlock); running another pool from inside is allowed as long as no two pools wait on each
/// other. Only one pool should be busy at a time: two pools spinning against each other on the
/// same cores slow each other down.
pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    run_lock: Mutex<()>,
}

impl ThreadPool {
    /// `n_threads` threads in all: the caller plus `n_threads - 1` persistent workers
    /// (`n_threads >= 1`; 1 means no worker threads at all). Panics if `n_threads` is 0 or a
    /// thread cannot be spawned.
    pub fn new(n_threads: usize) -> ThreadPool {
        ThreadPool::with_spin(n_threads, SpinConfig::for_threads(n_threads))
    }

    /// [`ThreadPool::new`] with the given spin budgets (for measurements and tuning).
    pub fn with_spin(n_threads: usize, spin: SpinConfig) -> ThreadPool {
        assert!(
            n_threads >= 1,
            "ThreadPool::new: n_threads must be at least 1"
        );
        let shared = Arc::new(Shared {
            nth: n_threads,
            spin,
            start: Padded(Start {
                epoch: AtomicU64::new(0),
                job: AtomicPtr::new(ptr::null_mut()),
            }),
            done: Padded(AtomicUsize::new(0)),
            bar_count: Padded(AtomicUsize::new(0)),
            bar_gen: Padded(AtomicUsize::new(0)),
            cold: Padded(Cold {
                n_parked: AtomicUsize::new(0),
                sleepers: AtomicUsize::new(0),
                lock: Mutex::new(()),
                cv: Condvar::new(),
                poisoned: AtomicBool::new(false),
                shutdown: AtomicBool::new(false),
                panic: Mutex::new(None),
            }),
        });
        // Built up in place so that a failed spawn drops (and joins) the workers made so far.
        let mut pool = ThreadPool {
            shared,
            workers: Vec::with_capacity(n_threads - 1),
            run_lock: Mutex::new(()),
        };
        for ith in 1..n_threads {
            let shared = Arc::clone(&pool.shared);
            let handle = thread::Builder::new()
                .name(format!("surplus-pool-{ith}"))
                .spawn(move || worker_main(&shared, ith))
                .expect("ThreadPool::new: failed to spawn a worker thread");
            pool.workers.push(handle);
        }
        pool
    }

    /// Threads in all, the caller included.
    pub fn n_threads(&self) -> usize {
        self.shared.nth
    }

    /// Runs `f` on every thread (the caller is thread 0) and returns when all have finished.
    ///
    /// No allocation and no syscall on the fast path (workers spinning); workers that have
    /// waited [`IDLE_SPINS`] and then [`IDLE_YIELD_FOR`] without work park, and are woken
    /// (unparked) by the next run.
    /// If `f` panics on any thread, the first panic is propagated to the caller after all
    /// threads finished; threads waiting at a barrier for the panicked one unwind out of `f`
    /// too. The pool stays usable. Panics if called from inside a run of this same pool.
    pub fn run<F: Fn(&Worker) + Sync>(&self, f: F) {
        let shared: &Shared = &self.shared;
        let me: *const Shared = shared;
        let outer = CURRENT.get();
        assert!(
            outer != me,
            "ThreadPool::run: nested call from inside a run of the same pool (not supported)"
        );
        let guard = self.run_lock.lock().unwrap_or_else(PoisonError::into_inner);
        let nth = shared.nth;
        let job: &Job<'_> = &f;
        // No worker touches the run state between runs, so plain resets suffice; the epoch
        // bump (Release) publishes them together with `job`.
        shared.done.store(0, Ordering::Relaxed);
        shared.bar_count.store(0, Ordering::Relaxed);
        shared.cold.poisoned.store(false, Ordering::Relaxed);
        if nth > 1 {
            let job_ref: *const &Job<'_> = &job;
            shared
                .start
                .job
                .store(job_ref as *mut (), Ordering::Relaxed);
            shared.start.epoch.fetch_add(1, Ordering::SeqCst);
            if shared.cold.n_parked.load(Ordering::SeqCst) != 0 {
                for w in &self.workers {
                    w.thread().unpark();
                }
            }
        }
        CURRENT.set(me);
        let result = panic::catch_unwind(AssertUnwindSafe(|| {
            job(&Worker {
                ith: 0,
                nth,
                shared,
            })
        }));
        CURRENT.set(outer);
        if let Err(payload) = result {
            shared.record_panic(payload);
        }
        shared.finish();
        shared.wait_until(|| shared.done.load(Ordering::SeqCst) == nth);
        // Every worker is done with `job`: drop the dangling pointer before `f` goes.
        shared.start.job.store(ptr::null_mut(), Ordering::Relaxed);
        let payload = if shared.cold.poisoned.load(Ordering::Acquire) {
            let mut slot = shared
                .cold
                .panic
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            slot.take()
        } else {
            None
        };
        drop(guard);
        if let Some(payload) = payload {
            panic::resume_unwind(payload);
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        let cold = &self.shared.cold;
        cold.shutdown.store(true, Ordering::SeqCst);
        self.shared.start.epoch.fetch_add(1, Ordering::SeqCst);
        for w in &self.workers {
            w.thread().unpark();
        }
        for w in self.workers.drain(..) {
            // A worker never panics (closure panics are caught), so join only fails if the
            // thread was killed in some exotic way; nothing useful to do then.
            let _ = w.join();
        }
    }
}

impl fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThreadPool")
            .field("n_threads", &self.shared.nth)
            .field("spin", &self.shared.spin)
            .finish_non_exhaustive()
    }
}

fn worker_main(shared: &Shared, ith: usize) {
    CURRENT.set(shared);
    let mut seen = 0;
    loop {
        seen = shared.wait_for_epoch(seen);
        if shared.cold.shutdown.load(Ordering::Acquire) {
            return;
        }
        {
            let job_ref = shared.start.job.load(Ordering::Relaxed) as *const &Job<'_>;
            // SAFETY: `run` stored a pointer to its local `job: &Job` before the epoch bump we
            // observed with Acquire, so the pointer and both targets are visible to us. `run`
            // does not return (nor let `f` or `job` go, even when `f` panics: panics are
            // caught) until `done` reaches `nth`, and we add ourselves to `done` only after
            // this block, once the last use of `job` is over. So the erased lifetime covers
            // every use here. `F: Sync` makes calling it through `&F` from this thread sound.
            let job: &Job<'_> = unsafe { *job_ref };
            let worker = Worker {
                ith,
                nth: shared.nth,
                shared,
            };
            if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(|| job(&worker))) {
                shared.record_panic(payload);
            }
        }
        // After this the run may end and `f` go: no use of `job` past this point.
        shared.finish();
    }
}

/// One thread's view of a run: its index, the thread count, and the barrier.
pub struct Worker<'a> {
    ith: usize,
    nth: usize,
    shared: &'a Shared,
}

impl Worker<'_> {
    /// This thread's index, `0..nth()`; the caller of `run` is 0.
    pub fn ith(&self) -> usize {
        self.ith
    }

    /// Threads in this run.
    pub fn nth(&self) -> usize {
        self.nth
    }

    /// All threads of this run wait here until every one has arrived (spin, then yield, then
    /// block if it takes long: [`BARRIER_SPINS`], [`BARRIER_YIELDS`]). Reusable any number of times per run, but every thread must call it the
    /// same number of times: a thread that returns from the closure while others wait here
    /// makes them panic. Writes made before the barrier are visible to all threads after it.
    pub fn barrier(&self) {
        if self.nth == 1 {
            return;
        }
        let s = self.shared;
        // The generation cannot move before this thread arrives, so this is the current one.
        let gen = s.bar_gen.load(Ordering::Relaxed);
        if s.bar_count.fetch_add(1, Ordering::AcqRel) == self.nth - 1 {
            // Last to arrive: reset for the next barrier, then release the others (they
            // acquire `bar_gen`, hence see the reset and every write made before arriving).
            s.bar_count.store(0, Ordering::Relaxed);
            s.bar_gen.store(gen.wrapping_add(1), Ordering::SeqCst);
            s.wake_sleepers();
            return;
        }
        // Also stop waiting when a thread has returned from the closure (`done`): then this
        // barrier can never complete, unless it just did: a thread that passed it and then
        // finished bumped the generation before `done`, so re-check the generation.
        s.wait_until(|| {
            s.bar_gen.load(Ordering::SeqCst) != gen || s.done.load(Ordering::SeqCst) != 0
        });
        if s.bar_gen.load(Ordering::SeqCst) == gen {
            s.barrier_abandoned();
        }
    }

    /// This thread's contiguous share of `0..n`: shares are balanced (they differ by at most 1)
    /// and in thread order, so together they partition `0..n`.
    pub fn split(&self, n: usize) -> Range<usize> {
        split_range(n, self.ith, self.nth)
    }

    /// Like [`Worker::split`] over blocks of `align` items: every share is a multiple of
    /// `align` except the one that ends at `n`; threads past the last block get `n..n`.
    /// Panics if `align` is 0.
    pub fn split_aligned(&self, n: usize, align: usize) -> Range<usize> {
        assert!(align > 0, "Worker::split_aligned: align must be at least 1");
        let blocks = split_range(n.div_ceil(align), self.ith, self.nth);
        let at = |b: usize| b.saturating_mul(align).min(n);
        at(blocks.start)..at(blocks.end)
    }
}

impl fmt::Debug for Worker<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("ith", &self.ith)
            .field("nth", &self.nth)
            .finish()
    }
}

/// Share `i` of `0..n` among `nth`: the first `n % nth` shares have one item more.
fn split_range(n: usize, i: usize, nth: usize) -> Range<usize> {
    let (base, rem) = (n / nth, n % nth);
    let start = i * base + i.min(rem);
    start..start + base + usize::from(i < rem)
}
