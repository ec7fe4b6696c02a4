//! Counters and gauges shared by the HTTP handlers and the scheduler, rendered in the
//! Prometheus text format at `GET /metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use engine::speculative::MAX_DRAFT;

/// Upper bounds (seconds) of the time-to-first-token histogram buckets.
const TTFT_BUCKETS: [f64; 10] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Everything `/metrics` reports.
pub struct Metrics {
    /// Requests answered, by (route, status).
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    /// Prompt tokens (and image rows) evaluated, in all.
    pub prompt_tokens: AtomicU64,
    /// Tokens generated, in all.
    pub generated_tokens: AtomicU64,
    /// Prompt positions served from the prefix cache instead of evaluated, in all.
    pub prompt_tokens_cached: AtomicU64,
    /// Requests that reused a cached prefix.
    pub cache_hits: AtomicU64,
    /// Recurrent states put back from a checkpoint.
    pub checkpoint_restores: AtomicU64,
    /// Recurrent checkpoints saved.
    pub checkpoints_saved: AtomicU64,
    /// Host bytes of the prefix cache (evicted prefixes and checkpoints).
    pub cache_bytes: AtomicUsize,
    /// Prefixes held in host memory.
    pub cache_entries: AtomicUsize,
    /// The host memory the prefix cache may use (`--cache-ram`).
    pub cache_ram: AtomicUsize,
    /// Microseconds spent in decode steps.
    pub decode_seconds: AtomicU64,
    /// Generations cancelled because the client went away, in all.
    pub cancelled: AtomicU64,
    /// Requests in the queue, not yet given a sequence slot.
    pub queue_depth: AtomicUsize,
    /// Sequences being generated now.
    pub active: AtomicUsize,
    /// Sequences that can run at once.
    pub slots: usize,
    /// Whether the scheduler thread is running.
    pub alive: AtomicBool,
    /// Generation tokens/s of the last window (f64 bits) and when it was measured.
    rate: AtomicU64,
    rate_at: Mutex<Option<Instant>>,
    ttft_buckets: [AtomicU64; TTFT_BUCKETS.len()],
    ttft_count: AtomicU64,
    /// Sum of the times to first token, in microseconds.
    ttft_sum_us: AtomicU64,
    /// Speculative decoding: tokens drafted and drafted tokens kept, in all and by draft
    /// position (0: the first token after the last one kept).
    pub spec_drafted: AtomicU64,
    /// Drafted tokens the model kept, in all (see `spec_drafted`).
    pub spec_accepted: AtomicU64,
    spec_drafted_at: [AtomicU64; MAX_DRAFT],
    spec_accepted_at: [AtomicU64; MAX_DRAFT],
}

impl Metrics {
    /// Zeroed metrics for a scheduler with `slots` sequences.
    pub fn new(slots: usize) -> Metrics {
        Metrics {
            requests: Mutex::new(BTreeMap::new()),
            prompt_tokens: AtomicU64::new(0),
            generated_tokens: AtomicU64::new(0),
            prompt_tokens_cached: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
            checkpoint_restores: AtomicU64::new(0),
            checkpoints_saved: AtomicU64::new(0),
            cache_bytes: AtomicUsize::new(0),
            cache_entries: AtomicUsize::new(0),
            cache_ram: AtomicUsize::new(0),
            decode_seconds: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            queue_depth: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            slots,
            alive: AtomicBool::new(false),
            rate: AtomicU64::new(0),
            rate_at: Mutex::new(None),
            ttft_buckets: Default::default(),
            ttft_count: AtomicU64::new(0),
            ttft_sum_us: AtomicU64::new(0),
            spec_drafted: AtomicU64::new(0),
            spec_accepted: AtomicU64::new(0),
            spec_drafted_at: Default::default(),
            spec_accepted_at: Default::default(),
        }
    }

    /// Counts a response.
    pub fn request(&self, route: &'static str, status: u16) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((route, status)).or_insert(0) += 1;
        }
    }

    /// Records one time to first token.
    pub fn observe_ttft(&self, secs: f64) {
        for (b, &le) in self.ttft_buckets.iter().zip(&TTFT_BUCKETS) {
            if secs <= le {
                b.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.ttft_count.fetch_add(1, Ordering::Relaxed);
        self.ttft_sum_us
            .fetch_add((secs * 1e6) as u64, Ordering::Relaxed);
    }

    /// Records one sequence's verification: `drafted` tokens proposed, the first `accepted`
    /// of them kept.
    pub fn observe_spec(&self, drafted: usize, accepted: usize) {
        self.spec_drafted
            .fetch_add(drafted as u64, Ordering::Relaxed);
        self.spec_accepted
            .fetch_add(accepted.min(drafted) as u64, Ordering::Relaxed);
        for i in 0..drafted.min(MAX_DRAFT) {
            self.spec_drafted_at[i].fetch_add(1, Ordering::Relaxed);
            if i < accepted {
                self.spec_accepted_at[i].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Publishes the generation rate of the last window.
    pub fn set_rate(&self, tps: f64) {
        self.rate.store(tps.to_bits(), Ordering::Relaxed);
        if let Ok(mut at) = self.rate_at.lock() {
            *at = Some(Instant::now());
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut o = String::with_capacity(2048);
        let _ = writeln!(
            o,
            "# HELP surplus_requests_total HTTP requests answered, by route and status."
        );
        let _ = writeln!(o, "# TYPE surplus_requests_total counter");
        if let Ok(m) = self.requests.lock() {
            for ((route, status), n) in m.iter() {
                let _ = writeln!(
                    o,
                    "surplus_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
                );
            }
        }
        let counter = |o: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        let gauge = |o: &mut String, name: &str, help: &str, v: f64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        counter(
            &mut o,
            "surplus_prompt_tokens_total",
            "Prompt tokens evaluated.",
            self.prompt_tokens.load(Ordering::Relaxed),
        );
        counter(
            &mut o,
            "surplus_prompt_tokens_cached_total",
            "Prompt tokens served from the prefix cache instead of evaluated.",
            self.prompt_tokens_cached.load(Ordering::Relaxed),
        );
        counter(
            &mut o,
            "surplus_prefix_cache_hits_total",
            "Requests that resumed from a cached prefix.",
            self.cache_hits.load(Ordering::Relaxed),
        );
        counter(
            &mut o,
            "surplus_checkpoint_restores_total",
            "Recurrent states put back from a checkpoint.",
            self.checkpoint_restores.load(Ordering::Relaxed),
        );
        counter(
            &mut o,
            "surplus_checkpoints_saved_total",
            "Recurrent checkpoints saved.",
            self.checkpoints_saved.load(Ordering::Relaxed),
        );
        gauge(
            &mut o,
            "surplus_prefix_cache_bytes",
            "Host memory held by the prefix cache (evicted prefixes and checkpoints).",
            self.cache_bytes.load(Ordering::Relaxed) as f64,
        );
        gauge(
            &mut o,
            "surplus_prefix_cache_entries",
            "Prefixes kept in host memory.",
            self.cache_entries.load(Ordering::Relaxed) as f64,
        );
        gauge(
            &mut o,
            "surplus_prefix_cache_capacity_bytes",
            "Host memory the prefix cache may use (--cache-ram).",
            self.cache_ram.load(Ordering::Relaxed) as f64,
        );
        counter(
            &mut o,
            "surplus_generation_tokens_total",
            "Tokens generated.",
            self.generated_tokens.load(Ordering::Relaxed),
        );
        counter(
            &mut o,
            "surplus_requests_cancelled_total",
            "Generations cancelled because the client went away.",
            self.cancelled.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            o,
            "# HELP surplus_decode_seconds_total Time spent in batched decode steps.\n# TYPE surplus_decode_seconds_total counter\nsurplus_decode_seconds_total {}",
            self.decode_seconds.load(Ordering::Relaxed) as f64 / 1e6
        );
        gauge(
            &mut o,
            "surplus_queue_depth",
            "Requests waiting for a free sequence slot.",
            self.queue_depth.load(Ordering::Relaxed) as f64,
        );
        gauge(
            &mut o,
            "surplus_active_sequences",
            "Sequences being generated.",
            self.active.load(Ordering::Relaxed) as f64,
        );
        gauge(
            &mut o,
            "surplus_sequence_slots",
            "Sequences that can run at once (--parallel).",
            self.slots as f64,
        );
        let fresh = self
            .rate_at
            .lock()
            .ok()
            .and_then(|a| *a)
            .is_some_and(|a| a.elapsed().as_secs_f64() < 3.0);
        let rate = if fresh {
            f64::from_bits(self.rate.load(Ordering::Relaxed))
        } else {
            0.0
        };
        gauge(
            &mut o,
            "surplus_generation_tokens_per_second",
            "Aggregate generation rate over the last second (0 when idle).",
            rate,
        );
        let _ = writeln!(o, "# HELP surplus_time_to_first_token_seconds From request received to first token sampled.");
        let _ = writeln!(o, "# TYPE surplus_time_to_first_token_seconds histogram");
        for (b, le) in self.ttft_buckets.iter().zip(TTFT_BUCKETS) {
            let _ = writeln!(
                o,
                "surplus_time_to_first_token_seconds_bucket{{le=\"{le}\"}} {}",
                b.load(Ordering::Relaxed)
            );
        }
        let count = self.ttft_count.load(Ordering::Relaxed);
        let _ = writeln!(
            o,
            "surplus_time_to_first_token_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            o,
            "surplus_time_to_first_token_seconds_sum {}",
            self.ttft_sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(o, "surplus_time_to_first_token_seconds_count {count}");
        counter(
            &mut o,
            "surplus_spec_drafted_total",
            "Tokens drafted by speculative decoding.",
            self.spec_drafted.load(Ordering::Relaxed),
        );
        counter(
            &mut o,
            "surplus_spec_accepted_total",
            "Drafted tokens the model kept.",
            self.spec_accepted.load(Ordering::Relaxed),
        );
        for (name, help, by) in [
            (
                "surplus_spec_drafted_by_position_total",
                "Tokens drafted, by position in the draft (0: first).",
                &self.spec_drafted_at,
            ),
            (
                "surplus_spec_accepted_by_position_total",
                "Drafted tokens kept, by position in the draft (0: first).",
                &self.spec_accepted_at,
            ),
        ] {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter");
            for (i, v) in by.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "{name}{{position=\"{i}\"}} {}",
                    v.load(Ordering::Relaxed)
                );
            }
        }
        o
    }
}
