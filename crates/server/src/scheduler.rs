//! The continuous-batching scheduler: one OS thread owns the engine, admits queued requests
//! into free KV-cache slots, decodes every running sequence in one forward pass per step and
//! interleaves fixed-offset prompt chunks; it never blocks on I/O.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::Instant;

use engine::multi::{prefill_chunks, DecodeItem, StopScanner};
use engine::sampling::{argmax_excluding, logprob_of, top_logprobs, Sampler, SamplingParams};
use engine::Engine;
use tokenizer::{StreamDecoder, Tokenizer};
use tokio::sync::mpsc::UnboundedSender;

use crate::metrics::Metrics;

/// One generation request, validated and tokenized.
pub struct Job {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    /// Some(k): report the chosen token's log-probability and the top k.
    pub logprobs: Option<usize>,
    pub ignore_eos: bool,
    /// Where the tokens go; a closed channel (the client left) cancels the job.
    pub events: UnboundedSender<Event>,
    pub received: Instant,
}

/// The log-probabilities of one generated token.
#[derive(Debug, Clone)]
pub struct TokenLogprob {
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// What the scheduler sends back for a job.
#[derive(Debug)]
pub enum Event {
    /// A generated token and the text that may be shown now (possibly empty: held back).
    Token {
        id: u32,
        text: String,
        logprob: Option<TokenLogprob>,
    },
    /// The end: the last held-back text, why it stopped and the token counts.
    Done {
        text: String,
        finish_reason: &'static str,
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    /// The job failed inside the engine.
    Error(String),
}

/// A job holding a KV-cache slot.
struct Slot {
    job: Job,
    /// Admission order (prefill goes first come, first served).
    order: u64,
    sampler: Sampler,
    decoder: StreamDecoder,
    stop: StopScanner,
    /// Prompt tokens evaluated so far.
    prefilled: usize,
    /// The token to evaluate next and its position (once the prompt is done).
    next: Option<(u32, u32)>,
    generated: usize,
    first_token: bool,
}

/// Scheduler settings.
pub struct SchedulerConfig {
    /// Prompt chunk length (chunks start at multiples of it from position 0).
    pub prefill_chunk: usize,
}

/// Runs the scheduler until the request channel is closed and every job is finished.
pub fn run(
    mut engine: Engine,
    tok: Arc<Tokenizer>,
    rx: Receiver<Job>,
    metrics: Arc<Metrics>,
    cfg: SchedulerConfig,
) {
    let n_slots = engine.n_seq().min(engine.max_logit_rows()).max(1);
    let vocab = engine.n_vocab();
    let n_ctx = engine.n_ctx();
    let chunk = cfg.prefill_chunk.clamp(1, engine.n_batch());
    let eog: Vec<u32> = tok.eog_ids().to_vec();
    let mut slots: Vec<Option<Slot>> = (0..n_slots).map(|_| None).collect();
    let mut items: Vec<DecodeItem> = Vec::with_capacity(n_slots);
    let mut owners: Vec<usize> = Vec::with_capacity(n_slots);
    let mut scratch = Scratch {
        piece: String::with_capacity(64),
        masked: Vec::new(),
        top: Vec::new(),
    };
    let mut order = 0u64;
    let mut closed = false;
    let mut rate = RateWindow::new();
    loop {
        // Cancel the jobs whose client went away.
        for s in slots.iter_mut() {
            if s.as_ref().is_some_and(|x| x.job.events.is_closed()) {
                *s = None;
                metrics.cancelled.fetch_add(1, Ordering::Relaxed);
            }
        }
        // Admit queued jobs into free slots; wait for one when idle.
        while !closed {
            let Some(free) = slots.iter().position(|s| s.is_none()) else {
                break;
            };
            let idle = slots.iter().all(|s| s.is_none());
            let job = if idle {
                metrics.active.store(0, Ordering::Relaxed);
                match rx.recv() {
                    Ok(j) => j,
                    Err(_) => {
                        closed = true;
                        break;
                    }
                }
            } else {
                match rx.try_recv() {
                    Ok(j) => j,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            };
            metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
            if job.events.is_closed() {
                metrics.cancelled.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if job.prompt.is_empty() || job.prompt.len() + job.max_tokens > n_ctx {
                let _ = job.events.send(Event::Error(format!(
                    "the prompt ({} tokens) and max_tokens ({}) exceed the context of {n_ctx}",
                    job.prompt.len(),
                    job.max_tokens
                )));
                continue;
            }
            let mut sampler = Sampler::new(job.sampling.clone(), vocab);
            for &t in &job.prompt {
                sampler.accept(t);
            }
            order += 1;
            slots[free] = Some(Slot {
                stop: StopScanner::new(job.stop.clone()),
                job,
                order,
                sampler,
                decoder: StreamDecoder::new(false),
                prefilled: 0,
                next: None,
                generated: 0,
                first_token: true,
            });
        }
        let active = slots.iter().filter(|s| s.is_some()).count();
        metrics.active.store(active, Ordering::Relaxed);
        if active == 0 {
            if closed {
                break;
            }
            continue;
        }

        // One decode step for every sequence past its prompt, in one forward pass.
        items.clear();
        owners.clear();
        for (i, s) in slots.iter().enumerate() {
            if let Some((token, pos)) = s.as_ref().and_then(|x| x.next) {
                items.push(DecodeItem {
                    seq: i as u32,
                    token,
                    pos,
                });
                owners.push(i);
            }
        }
        if !items.is_empty() {
            let t0 = Instant::now();
            match engine.decode_step(&items) {
                Ok(logits) => {
                    for (row, &i) in owners.iter().enumerate() {
                        let l = &logits[row * vocab..(row + 1) * vocab];
                        let pos = items[row].pos as usize + 1;
                        if let Some(slot) = slots[i].as_mut() {
                            if !next_token(slot, l, pos, n_ctx, &tok, &eog, &mut scratch, &metrics)
                            {
                                slots[i] = None;
                            }
                        }
                    }
                }
                Err(e) => {
                    for &i in &owners {
                        if let Some(slot) = slots[i].take() {
                            let _ = slot.job.events.send(Event::Error(e.to_string()));
                        }
                    }
                }
            }
            metrics
                .decode_seconds
                .fetch_add(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
            rate.add(items.len(), &metrics);
        }

        // Then at most one prompt chunk, of the earliest admitted job still in its prompt.
        let pick = slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|x| (i, x)))
            .filter(|(_, x)| x.next.is_none())
            .min_by_key(|(_, x)| x.order)
            .map(|(i, _)| i);
        if let Some(i) = pick {
            let Some(slot) = slots[i].as_mut() else {
                continue;
            };
            let len = slot.job.prompt.len();
            let r = prefill_chunks(slot.prefilled, len, chunk);
            let last = r.end == len;
            let n = r.len();
            match engine.prefill_chunk(i as u32, &slot.job.prompt[r.clone()], r.start, last) {
                Ok(out) => {
                    metrics.prompt_tokens.fetch_add(n as u64, Ordering::Relaxed);
                    slot.prefilled = r.end;
                    if let Some(l) = out {
                        if !next_token(slot, l, len, n_ctx, &tok, &eog, &mut scratch, &metrics) {
                            slots[i] = None;
                        }
                    }
                }
                Err(e) => {
                    if let Some(slot) = slots[i].take() {
                        let _ = slot.job.events.send(Event::Error(e.to_string()));
                    }
                }
            }
        }
    }
    metrics.active.store(0, Ordering::Relaxed);
}

/// Buffers reused across tokens.
struct Scratch {
    piece: String,
    masked: Vec<f32>,
    top: Vec<(u32, f32)>,
}

/// Samples the next token of `slot` from its logit row (the token goes to position `pos`
/// next) and sends it. Returns false when the job is over (the slot is then free).
#[allow(clippy::too_many_arguments)]
fn next_token(
    slot: &mut Slot,
    logits: &[f32],
    pos: usize,
    n_ctx: usize,
    tok: &Tokenizer,
    eog: &[u32],
    s: &mut Scratch,
    metrics: &Metrics,
) -> bool {
    let job = &slot.job;
    if slot.first_token {
        slot.first_token = false;
        metrics.observe_ttft(job.received.elapsed().as_secs_f64());
    }
    let id = if job.ignore_eos && job.sampling.temperature <= 0.0 {
        argmax_excluding(logits, eog)
    } else if job.ignore_eos {
        s.masked.clear();
        s.masked.extend_from_slice(logits);
        for &e in eog {
            if let Some(v) = s.masked.get_mut(e as usize) {
                *v = f32::NEG_INFINITY;
            }
        }
        slot.sampler.sample(&s.masked)
    } else {
        slot.sampler.sample(logits)
    };
    slot.sampler.accept(id);
    if !job.ignore_eos && tok.is_eog(id) {
        return finish(slot, "stop", false);
    }
    let logprob = job.logprobs.map(|k| {
        top_logprobs(logits, k, &mut s.top);
        TokenLogprob {
            logprob: logprob_of(logits, id),
            top: s.top.clone(),
        }
    });
    slot.generated += 1;
    metrics.generated_tokens.fetch_add(1, Ordering::Relaxed);
    s.piece.clear();
    slot.decoder.push(tok, id, &mut s.piece);
    let (text, stopped) = slot.stop.push(&s.piece);
    if job
        .events
        .send(Event::Token {
            id,
            text: text.to_owned(),
            logprob,
        })
        .is_err()
    {
        metrics.cancelled.fetch_add(1, Ordering::Relaxed);
        return false;
    }
    if stopped {
        return finish(slot, "stop", true);
    }
    if slot.generated >= job.max_tokens || pos >= n_ctx {
        return finish(slot, "length", false);
    }
    slot.next = Some((id, pos as u32));
    true
}

/// Sends the end of a job; always returns false (the slot is free).
fn finish(slot: &mut Slot, reason: &'static str, stopped: bool) -> bool {
    let mut reason = reason;
    let mut tail = String::new();
    if !stopped {
        let mut rest = String::new();
        slot.decoder.finish(&mut rest);
        let (t, hit) = slot.stop.push(&rest);
        tail.push_str(t);
        if hit {
            reason = "stop";
        } else {
            tail.push_str(slot.stop.finish());
        }
    }
    let _ = slot.job.events.send(Event::Done {
        text: tail,
        finish_reason: reason,
        prompt_tokens: slot.job.prompt.len(),
        completion_tokens: slot.generated,
    });
    false
}

/// Generation rate over windows of about a second, published to the metrics.
struct RateWindow {
    start: Instant,
    tokens: usize,
}

impl RateWindow {
    fn new() -> RateWindow {
        RateWindow {
            start: Instant::now(),
            tokens: 0,
        }
    }

    fn add(&mut self, n: usize, metrics: &Metrics) {
        self.tokens += n;
        let dt = self.start.elapsed().as_secs_f64();
        if dt >= 1.0 {
            metrics.set_rate(self.tokens as f64 / dt);
            self.start = Instant::now();
            self.tokens = 0;
        }
    }
}
