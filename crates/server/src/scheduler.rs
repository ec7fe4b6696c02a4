//! The continuous-batching scheduler: one OS thread owns the engine, admits queued requests
//! into free KV-cache slots, decodes every running sequence in one forward pass per step and
//! interleaves fixed-offset prompt chunks; it never blocks on I/O.
//!
//! With speculative decoding on, each sequence's decode step also carries the tokens its
//! drafter proposes (at consecutive positions after its last token); the rows are verified
//! as [`Engine::generate_speculative`] does, and the kept drafts plus the model's own next
//! token go out through the same per-token path as plain decoding.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::Instant;

use engine::mtp::MtpState;
use engine::multi::{prefill_chunks, DecodeItem, StopScanner};
use engine::sampling::{argmax_excluding, logprob_of, top_logprobs, Sampler, SamplingParams};
use engine::speculative::{
    verify_sampled, Controller, Draft, Drafter, ModelDrafter, NgramDrafter, Verify,
};
use engine::Engine;
use tokenizer::{StreamDecoder, Tokenizer};
use tokio::sync::mpsc::UnboundedSender;

use crate::metrics::Metrics;

/// One generation request, validated and tokenized.
pub struct Job {
    /// The prompt's ids, one per position; the positions of `images` hold placeholders.
    pub prompt: Vec<u32>,
    /// Input rows placed in the prompt (images), in order, not overlapping.
    pub images: Vec<JobImage>,
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

/// Input rows (an image's embeddings) taking positions `start..start + len` of a job's
/// prompt: evaluated in one pass of their own (prompt chunks stop at `start` and restart
/// after it, cut at the usual fixed offsets).
#[derive(Debug, Clone)]
pub struct JobImage {
    pub start: usize,
    pub len: usize,
    /// `len × n_embd` values, row-major.
    pub data: Vec<f32>,
    /// Whether the rows attend to each other both ways (Gemma 3).
    pub non_causal: bool,
    /// The image's token grid `[nx, ny]` (see [`engine::ImageRows`]).
    pub grid: [usize; 2],
}

impl JobImage {
    /// The rows as the engine takes them.
    pub fn rows(&self) -> engine::ImageRows<'_> {
        engine::ImageRows {
            data: &self.data,
            non_causal: self.non_causal,
            grid: self.grid,
        }
    }

    /// Whether position `p` is one of the image's.
    pub fn holds(&self, p: usize) -> bool {
        (self.start..self.start + self.len).contains(&p)
    }
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
    /// Speculative decoding state, when on.
    spec: Option<SlotSpec>,
}

/// One sequence's speculative decoding state.
struct SlotSpec {
    /// The n-gram drafter; None: the scheduler's draft model drafts for this slot (its
    /// sequence number is the slot's).
    ngram: Option<NgramDrafter>,
    ctl: Controller,
    /// The prompt and every token emitted so far.
    history: Vec<u32>,
    /// The tokens drafted for the current step.
    draft: Draft,
    /// Seconds spent drafting for the current step.
    t_draft: f64,
    /// Of which seconds spent catching up with tokens missed while not drafting.
    catch_up: f64,
}

/// Speculative decoding in the server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Speculation {
    /// Plain decoding.
    #[default]
    Off,
    /// Prompt lookup ([`NgramDrafter`]), at most `draft_max` tokens per sequence and step
    /// (capped at [`engine::speculative::MAX_DRAFT`]), the length adapted per sequence.
    Ngram { draft_max: usize },
    /// A draft model ([`ModelDrafter`], given to [`crate::Server::start_with_drafter`] and
    /// loaded with a sequence per slot), at most `draft_max` tokens per sequence and step
    /// (capped at [`engine::speculative::MAX_DRAFT`]), the length adapted per sequence.
    Draft { draft_max: usize },
    /// The model's own multi-token-prediction block (`qwen35` files with one), at most
    /// `draft_max` tokens per sequence and step, the length adapted per sequence.
    Mtp { draft_max: usize },
}

impl Speculation {
    /// The most tokens drafted per sequence and step (0: off).
    pub fn draft_max(&self) -> usize {
        match *self {
            Speculation::Off => 0,
            Speculation::Ngram { draft_max }
            | Speculation::Draft { draft_max }
            | Speculation::Mtp { draft_max } => draft_max,
        }
    }
}

/// Scheduler settings.
pub struct SchedulerConfig {
    /// Prompt chunk length (chunks start at multiples of it from position 0).
    pub prefill_chunk: usize,
    /// Speculative decoding.
    pub spec: Speculation,
    /// The draft model of [`Speculation::Draft`] (sharing the engine's threads), with a
    /// sequence per slot; slots past its sequences do not speculate.
    pub draft: Option<ModelDrafter>,
}

/// Where one sequence's rows are in a decode step.
struct Owner {
    slot: usize,
    /// Its first row (the last token's).
    row: usize,
    /// Drafted tokens after it.
    drafted: usize,
}

/// Runs the scheduler until the request channel is closed and every job is finished.
pub fn run(
    mut engine: Engine,
    tok: Arc<Tokenizer>,
    rx: Receiver<Job>,
    metrics: Arc<Metrics>,
    cfg: SchedulerConfig,
) {
    let mut draft = match cfg.spec {
        Speculation::Draft { .. } => cfg.draft,
        _ => None,
    };
    let n_slots = engine.n_seq().min(engine.max_logit_rows()).max(1);
    let vocab = engine.n_vocab();
    let n_ctx = engine.n_ctx();
    let chunk = cfg.prefill_chunk.clamp(1, engine.n_batch());
    let eog: Vec<u32> = tok.eog_ids().to_vec();
    let mut slots: Vec<Option<Slot>> = (0..n_slots).map(|_| None).collect();
    // The MTP drafter's state per slot (its sequence number is the slot's).
    let mut mtp: Vec<MtpState> = match cfg.spec {
        Speculation::Mtp { .. } if engine.has_mtp() => (0..n_slots)
            .map(|_| MtpState::new(engine.n_batch(), engine.model.hp.n_embd))
            .collect(),
        _ => Vec::new(),
    };
    // The most items a decode step may have.
    let step_limit = engine.max_logit_rows().min(engine.n_batch()).max(1);
    let mut items: Vec<DecodeItem> = Vec::with_capacity(step_limit);
    let mut owners: Vec<Owner> = Vec::with_capacity(n_slots);
    let mut scratch = Scratch {
        piece: String::with_capacity(64),
        masked: Vec::new(),
        top: Vec::new(),
        verify: None,
        picked: Vec::new(),
        rollbacks: Vec::with_capacity(n_slots),
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
            for (p, &t) in job.prompt.iter().enumerate() {
                // Image positions are not tokens (penalties see the text only).
                if !job.images.iter().any(|im| im.holds(p)) {
                    sampler.accept(t);
                }
            }
            order += 1;
            // A draft model evaluates the prompt for its sequence now (a new request starts
            // from an empty draft cache); if it cannot, the request decodes plainly.
            // Some(drafter): speculate, with that n-gram drafter or (None) the draft model.
            // With images only the MTP drafter speculates (its block takes the image rows).
            let ngram = match cfg.spec {
                Speculation::Ngram { .. } | Speculation::Draft { .. } if !job.images.is_empty() => {
                    None
                }
                Speculation::Off => None,
                Speculation::Ngram { .. } => Some(Some(NgramDrafter::default())),
                Speculation::Mtp { .. } => {
                    if let Some(st) = mtp.get_mut(free) {
                        st.reset();
                    }
                    (!mtp.is_empty()).then_some(None)
                }
                Speculation::Draft { .. } => {
                    draft.as_mut().filter(|d| free < d.n_seq()).and_then(|d| {
                        match d.start_seq(free, &job.prompt, &job.sampling) {
                            Ok(()) => Some(None),
                            Err(_) => {
                                d.reset_seq(free);
                                None
                            }
                        }
                    })
                }
            };
            let spec = ngram.map(|ngram| {
                let mut history = Vec::with_capacity(job.prompt.len() + job.max_tokens + 1);
                history.extend_from_slice(&job.prompt);
                SlotSpec {
                    ngram,
                    ctl: Controller::new(cfg.spec.draft_max()),
                    history,
                    draft: Draft::default(),
                    t_draft: 0.0,
                    catch_up: 0.0,
                }
            });
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
                spec,
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

        // One decode step for every sequence past its prompt, in one forward pass: its last
        // token, then the tokens its drafter proposes (if any fit in the step).
        items.clear();
        owners.clear();
        let decoding = slots
            .iter()
            .filter(|s| s.as_ref().is_some_and(|x| x.next.is_some()))
            .count();
        let mut spare = step_limit.saturating_sub(decoding);
        for (i, s) in slots.iter_mut().enumerate() {
            let Some(x) = s.as_mut() else {
                continue;
            };
            let Some((token, pos)) = x.next else {
                continue;
            };
            let row = items.len();
            items.push(DecodeItem {
                seq: i as u32,
                token,
                pos,
            });
            let drafted = match x.spec.as_mut() {
                Some(sp) => {
                    // Never past max_tokens (the model's own token follows the drafts) nor
                    // past the context.
                    let remaining = x.job.max_tokens.saturating_sub(x.generated + 1);
                    let room = n_ctx.saturating_sub(pos as usize + 1);
                    let k = sp.ctl.choose(remaining.min(room).min(spare));
                    sp.draft.clear();
                    let t = Instant::now();
                    sp.catch_up = 0.0;
                    if k > 0 {
                        let r = match (sp.ngram.as_mut(), draft.as_mut()) {
                            (Some(ng), _) => ng.propose(&sp.history, k, &mut sp.draft),
                            (None, Some(d)) => d.propose_seq(i, &sp.history, k, &mut sp.draft),
                            (None, None) => match mtp.get_mut(i) {
                                Some(st) => engine.mtp_propose_seq(
                                    i as u32,
                                    st,
                                    &sp.history,
                                    k,
                                    &mut sp.draft,
                                ),
                                None => Ok(0.0),
                            },
                        };
                        match r {
                            Ok(c) => sp.catch_up = c,
                            Err(_) => sp.draft.clear(),
                        }
                    }
                    sp.draft.tokens.truncate(k);
                    sp.t_draft = (t.elapsed().as_secs_f64() - sp.catch_up).max(0.0);
                    for (j, &d) in sp.draft.tokens.iter().enumerate() {
                        items.push(DecodeItem {
                            seq: i as u32,
                            token: d,
                            pos: pos + 1 + j as u32,
                        });
                    }
                    spare -= sp.draft.tokens.len();
                    sp.draft.tokens.len()
                }
                None => 0,
            };
            owners.push(Owner {
                slot: i,
                row,
                drafted,
            });
        }
        if !items.is_empty() {
            let t0 = Instant::now();
            let before = metrics.generated_tokens.load(Ordering::Relaxed);
            match engine.decode_step(&items) {
                Ok(logits) => {
                    let t_verify = t0.elapsed().as_secs_f64();
                    for o in &owners {
                        let Some(slot) = slots[o.slot].as_mut() else {
                            continue;
                        };
                        let rows = &logits[o.row * vocab..(o.row + 1 + o.drafted) * vocab];
                        let pos = items[o.row].pos as usize + 1;
                        let alive = if slot.spec.is_some() {
                            verify_and_emit(
                                slot,
                                rows,
                                o.drafted,
                                pos,
                                t_verify,
                                n_ctx,
                                &tok,
                                &eog,
                                &mut scratch,
                                &metrics,
                            )
                        } else {
                            next_token(slot, rows, pos, n_ctx, &tok, &eog, &mut scratch, &metrics)
                        };
                        if !alive {
                            slots[o.slot] = None;
                        } else if o.drafted > 0 {
                            // The state past the kept drafts is rolled back (recurrent
                            // models; the KV cache needs nothing).
                            if let Some((_, next)) = slot.next {
                                scratch.rollbacks.push((o.slot as u32, next as usize));
                            }
                        }
                    }
                    // The MTP drafter reads each sequence's hidden states of this pass.
                    if !mtp.is_empty() {
                        for o in &owners {
                            if slots[o.slot].is_some() {
                                let start = items[o.row].pos as usize;
                                let st = &mut mtp[o.slot];
                                let kept =
                                    engine.mtp_keep_hidden_rows(st, o.row, start, 1 + o.drafted);
                                if let Err(e) = kept {
                                    if let Some(slot) = slots[o.slot].take() {
                                        let _ = slot.job.events.send(Event::Error(e.to_string()));
                                    }
                                }
                            }
                        }
                    }
                    for (seq, len) in scratch.rollbacks.drain(..) {
                        if let Err(e) = engine.rollback(seq, len) {
                            if let Some(slot) = slots[seq as usize].take() {
                                let _ = slot.job.events.send(Event::Error(e.to_string()));
                            }
                        }
                    }
                }
                Err(e) => {
                    for o in &owners {
                        if let Some(slot) = slots[o.slot].take() {
                            let _ = slot.job.events.send(Event::Error(e.to_string()));
                        }
                    }
                }
            }
            metrics
                .decode_seconds
                .fetch_add(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
            let after = metrics.generated_tokens.load(Ordering::Relaxed);
            rate.add(after.saturating_sub(before) as usize, &metrics);
        }

        // Then prompt chunks, earliest admitted job first, up to one chunk's worth of
        // tokens per step (at least one chunk): many short prompts that arrive together
        // all start decoding at the next step, while a long prompt still takes one chunk
        // per step so running streams are not stalled. Each chunk is its own pass, cut at
        // fixed offsets, so a prompt's result does not depend on the others.
        let mut budget = chunk;
        while budget > 0 {
            let pick = slots
                .iter()
                .enumerate()
                .filter_map(|(i, s)| s.as_ref().map(|x| (i, x)))
                .filter(|(_, x)| x.next.is_none())
                .min_by_key(|(_, x)| x.order)
                .map(|(i, _)| i);
            let Some(i) = pick else {
                break;
            };
            let Some(slot) = slots[i].as_mut() else {
                break;
            };
            let len = slot.job.prompt.len();
            // An image starting here goes in one pass of its own.
            if let Some(im) = slot.job.images.iter().find(|im| im.start == slot.prefilled) {
                let n = im.len;
                if n > budget && budget < chunk {
                    break;
                }
                budget = budget.saturating_sub(n);
                let last = im.start + n == len;
                // With MTP, the block's passes over the image rows follow the trunk's.
                let r =
                    engine.prefill_embeddings(i as u32, im.rows(), im.start, last, mtp.get_mut(i));
                match r {
                    Ok(out) => {
                        metrics.prompt_tokens.fetch_add(n as u64, Ordering::Relaxed);
                        slot.prefilled += n;
                        if let Some(l) = out {
                            if !next_token(slot, l, len, n_ctx, &tok, &eog, &mut scratch, &metrics)
                            {
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
                continue;
            }
            let mut r = prefill_chunks(slot.prefilled, len, chunk);
            // Token chunks stop where the next image starts.
            if let Some(im) = slot.job.images.iter().find(|im| im.start > r.start) {
                r.end = r.end.min(im.start);
            }
            let last = r.end == len;
            let n = r.len();
            if n == 0 || (n > budget && budget < chunk) {
                break;
            }
            budget = budget.saturating_sub(n);
            match engine.prefill_chunk(i as u32, &slot.job.prompt[r.clone()], r.start, last) {
                Ok(out) => {
                    metrics.prompt_tokens.fetch_add(n as u64, Ordering::Relaxed);
                    slot.prefilled = r.end;
                    if let Some(l) = out {
                        if !next_token(slot, l, len, n_ctx, &tok, &eog, &mut scratch, &metrics) {
                            slots[i] = None;
                        }
                    }
                    // The MTP block's pass over the chunk (its cache entries).
                    if let (Some(slot), Some(st)) = (slots[i].as_ref(), mtp.get_mut(i)) {
                        let chunk = &slot.job.prompt[r.clone()];
                        if let Err(e) = engine.mtp_after_chunk(i as u32, st, chunk, r.start) {
                            if let Some(slot) = slots[i].take() {
                                let _ = slot.job.events.send(Event::Error(e.to_string()));
                            }
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
    /// Verification scratch (allocated when a sampled sequence first drafts).
    verify: Option<Verify>,
    /// The tokens picked in a step, with the row each came from.
    picked: Vec<(u32, usize)>,
    /// Sequences to roll back after a step, with the length each keeps.
    rollbacks: Vec<(u32, usize)>,
}

/// Picks a token from `logits` as plain decoding does: ignoring EOS, greedy is an argmax
/// without them and sampling sees them masked; otherwise the sampler's chain. With
/// `drafted` (draft position `i` of `draft`, proposed for this row), sampling keeps or
/// replaces it by the rejection rule and greedy keeps it when it is the pick. Returns the
/// token and whether it is the draft's; the sampler has accepted the token.
fn pick(
    slot: &mut Slot,
    logits: &[f32],
    drafted: Option<(&Draft, usize)>,
    eog: &[u32],
    s: &mut Scratch,
) -> (u32, bool) {
    let job = &slot.job;
    let greedy = job.sampling.temperature <= 0.0;
    let d = drafted.map(|(draft, i)| draft.tokens[i]);
    let (id, keep) = if job.ignore_eos && greedy {
        let id = argmax_excluding(logits, eog);
        (id, d == Some(id))
    } else {
        let row: &[f32] = if job.ignore_eos {
            s.masked.clear();
            s.masked.extend_from_slice(logits);
            for &e in eog {
                if let Some(v) = s.masked.get_mut(e as usize) {
                    *v = f32::NEG_INFINITY;
                }
            }
            &s.masked
        } else {
            logits
        };
        match drafted {
            Some((draft, i)) if !greedy => {
                let v = s.verify.get_or_insert_with(|| Verify::new(logits.len()));
                verify_sampled(&mut slot.sampler, row, draft, i, draft.tokens[i], v)
            }
            _ => {
                let id = slot.sampler.sample(row);
                (id, d == Some(id))
            }
        }
    };
    slot.sampler.accept(id);
    (id, keep)
}

/// Verifies a speculative sequence's step: `rows` holds the logit rows of its last token
/// (whose successor goes to position `pos`) and of the `drafted` tokens after it. Keeps
/// drafts while the model agrees, then emits the kept ones and the model's own next token
/// through [`emit`] until the job finishes. Returns false when the job is over.
///
/// The KV cache past the kept tokens holds the rejected drafts: those positions are simply
/// overwritten by later steps (attention never looks past a token's own position); a
/// recurrent model's state is rolled back by the caller once the step's logits are used
/// ([`Engine::rollback`]).
#[allow(clippy::too_many_arguments)]
fn verify_and_emit(
    slot: &mut Slot,
    rows: &[f32],
    drafted: usize,
    pos: usize,
    t_verify: f64,
    n_ctx: usize,
    tok: &Tokenizer,
    eog: &[u32],
    s: &mut Scratch,
    metrics: &Metrics,
) -> bool {
    let vocab = rows.len() / (drafted + 1);
    let Some(mut sp) = slot.spec.take() else {
        return next_token(slot, &rows[..vocab], pos, n_ctx, tok, eog, s, metrics);
    };
    let mut picked = std::mem::take(&mut s.picked);
    picked.clear();
    let mut kept = 0;
    for (i, row) in rows.chunks_exact(vocab).enumerate() {
        let d = (i < drafted).then_some((&sp.draft, i));
        let (id, keep) = pick(slot, row, d, eog, s);
        picked.push((id, i));
        if !keep {
            break;
        }
        kept += 1;
    }
    if drafted > 0 {
        metrics.observe_spec(drafted, kept);
    }
    sp.ctl
        .update_with_catch_up(drafted, kept, t_verify, sp.t_draft, sp.catch_up);
    let mut alive = true;
    for &(id, i) in &picked {
        alive = emit(
            slot,
            &rows[i * vocab..(i + 1) * vocab],
            id,
            pos + i,
            n_ctx,
            tok,
            s,
            metrics,
        );
        if !alive {
            break;
        }
        sp.history.push(id);
    }
    s.picked = picked;
    slot.spec = Some(sp);
    alive
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
    let (id, _) = pick(slot, logits, None, eog, s);
    let alive = emit(slot, logits, id, pos, n_ctx, tok, s, metrics);
    if alive {
        if let Some(sp) = slot.spec.as_mut() {
            sp.history.push(id);
        }
    }
    alive
}

/// Sends token `id`, picked from the logit row `logits` (it goes to position `pos` next):
/// EOS, stop strings and max_tokens end the job. Returns false when the job is over (the
/// slot is then free).
#[allow(clippy::too_many_arguments)]
fn emit(
    slot: &mut Slot,
    logits: &[f32],
    id: u32,
    pos: usize,
    n_ctx: usize,
    tok: &Tokenizer,
    s: &mut Scratch,
    metrics: &Metrics,
) -> bool {
    let job = &slot.job;
    if slot.first_token {
        slot.first_token = false;
        metrics.observe_ttft(job.received.elapsed().as_secs_f64());
    }
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
