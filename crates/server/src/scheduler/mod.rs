//! The continuous-batching scheduler: one OS thread owns the engine, admits queued requests
//! into free KV-cache slots, decodes every running sequence in one forward pass per step and
//! interleaves fixed-offset prompt chunks; it never blocks on I/O.
//!
//! With speculative decoding on, each sequence's decode step also carries the tokens its
//! [`DraftSource`] proposes (at consecutive positions after its last token); each sequence's
//! rows are verified by the engine's per-sequence round ([`SpecSeq`], as
//! [`Engine::generate_speculative`] does), and the kept drafts plus the model's own next
//! token go out through the same per-token path as plain decoding (`slot::Slot`).

pub mod prefix;
mod slot;

use std::collections::VecDeque;
use std::fmt::Display;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::Instant;

use engine::multi::{prefill_chunks, DecodeItem};
use engine::pick::Picker;
use engine::sampling::SamplingParams;
use engine::speculative::{
    Controller, DraftSource, ModelDrafter, MtpDrafter, NgramDrafter, SpecSeq,
};
use engine::Engine;
use tokenizer::Tokenizer;
use tokio::sync::mpsc::UnboundedSender;

use crate::metrics::Metrics;
use prefix::{CacheConfig, PrefixCache};
use slot::{Out, Slot};

/// One generation request, validated and tokenized.
pub struct Job {
    /// The prompt's ids, one per position; the positions of `images` hold placeholders.
    pub prompt: Vec<u32>,
    /// Input rows placed in the prompt (images), in order, not overlapping.
    pub images: Vec<JobImage>,
    /// Most tokens to generate; the prompt plus these must fit the context.
    pub max_tokens: usize,
    /// How each token is chosen from the logits.
    pub sampling: SamplingParams,
    /// Stop strings: the job ends when the generated text contains one (not sent).
    pub stop: Vec<String>,
    /// Some(k): report the chosen token's log-probability and the top k.
    pub logprobs: Option<usize>,
    /// Keep going past end-of-generation tokens (the picker masks them out).
    pub ignore_eos: bool,
    /// What the output must match (JSON schema, grammar, tool calls), if anything.
    pub constraint: Option<constrain::Constraint>,
    /// Added to these tokens' logits before each pick.
    pub logit_bias: Vec<(u32, f32)>,
    /// Where the tokens go; a closed channel (the client left) cancels the job.
    pub events: UnboundedSender<Event>,
    /// When the request arrived: the time to first token is measured from it.
    pub received: Instant,
    /// More answers to the same prompt (`n` > 1): each takes a slot of its own and, where
    /// the model allows it, starts from a copy of this job's evaluated prompt.
    pub siblings: Vec<Sibling>,
    /// Where a chat's generation prompt starts (the end of its last message): a model with
    /// recurrent state saves its state there, since the next turn's prompt shares the
    /// conversation up to it (the generation prompt may render otherwise in history).
    pub turn_start: Option<usize>,
}

/// Another answer to a job's prompt: what differs from the job.
pub struct Sibling {
    /// How its tokens are chosen (its own seed).
    pub sampling: SamplingParams,
    /// Its own copy of the job's constraint.
    pub constraint: Option<constrain::Constraint>,
    /// Where its tokens go.
    pub events: UnboundedSender<Event>,
}

impl Job {
    /// The job of sibling `s`: the same prompt and limits.
    fn sibling(&self, s: Sibling) -> Job {
        Job {
            prompt: self.prompt.clone(),
            images: self.images.clone(),
            max_tokens: self.max_tokens,
            sampling: s.sampling,
            stop: self.stop.clone(),
            logprobs: self.logprobs,
            ignore_eos: self.ignore_eos,
            constraint: s.constraint,
            logit_bias: self.logit_bias.clone(),
            events: s.events,
            received: self.received,
            siblings: Vec::new(),
            turn_start: self.turn_start,
        }
    }
}

/// Input rows (an image's embeddings) taking positions `start..start + len` of a job's
/// prompt: evaluated in one pass of their own (prompt chunks stop at `start` and restart
/// after it, cut at the usual fixed offsets).
#[derive(Debug, Clone)]
pub struct JobImage {
    /// The prompt position of the first row.
    pub start: usize,
    /// Rows, one position each.
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
    /// The chosen token's log-softmax of the raw logits (natural log, ≤ 0).
    pub logprob: f32,
    /// The `k` best (id, log-probability) pairs, best first.
    pub top: Vec<(u32, f32)>,
}

/// What the scheduler sends back for a job.
#[derive(Debug)]
pub enum Event {
    /// A generated token and the text that may be shown now (possibly empty: held back).
    Token {
        /// The token's id.
        id: u32,
        /// Text that can be shown now; bytes that may start a stop string or finish a
        /// character are held back for a later event.
        text: String,
        /// Its log-probabilities, when the job asked for them.
        logprob: Option<TokenLogprob>,
    },
    /// The end: the last held-back text, why it stopped and the token counts.
    Done {
        /// Held-back text still to show (empty after a stop string).
        text: String,
        /// "stop" (an end-of-generation token or a stop string) or "length" (`max_tokens`
        /// or the end of the context).
        finish_reason: &'static str,
        /// Positions of the prompt (images included).
        prompt_tokens: usize,
        /// Tokens sent as [`Event::Token`].
        completion_tokens: usize,
    },
    /// The job failed: refused at admission (an empty prompt, or one that does not fit the
    /// context with its `max_tokens`) or an error inside the engine; the text says which.
    Error(String),
}

/// Speculative decoding in the server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Speculation {
    /// Plain decoding.
    #[default]
    Off,
    /// Prompt lookup ([`engine::speculative::NgramDrafter`]), at most `draft_max` tokens per sequence and step
    /// (capped at [`engine::speculative::MAX_DRAFT`]), the length adapted per sequence.
    Ngram {
        /// Most tokens drafted per sequence and step.
        draft_max: usize,
    },
    /// A draft model ([`ModelDrafter`], given to [`crate::Server::start_with_drafter`] and
    /// loaded with a sequence per slot), at most `draft_max` tokens per sequence and step
    /// (capped at [`engine::speculative::MAX_DRAFT`]), the length adapted per sequence.
    Draft {
        /// Most tokens drafted per sequence and step.
        draft_max: usize,
    },
    /// The model's own multi-token-prediction block (`qwen35` files with one), at most
    /// `draft_max` tokens per sequence and step, the length adapted per sequence.
    Mtp {
        /// Most tokens drafted per sequence and step.
        draft_max: usize,
    },
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
    /// Prefix reuse and its host memory.
    pub cache: CacheConfig,
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
    engine: Engine,
    tok: Arc<Tokenizer>,
    rx: Receiver<Job>,
    metrics: Arc<Metrics>,
    cfg: SchedulerConfig,
) {
    Scheduler::new(engine, tok, metrics, cfg).run(&rx);
}

/// The engine, its slots and what a step needs; owned by the scheduler thread.
struct Scheduler {
    engine: Engine,
    /// Where drafts come from (None: no speculation).
    source: Option<DraftSource>,
    /// The most tokens drafted per sequence and step.
    draft_max: usize,
    slots: Vec<Option<Slot>>,
    /// Prompt chunk length.
    chunk: usize,
    /// The most items a decode step may have.
    step_limit: usize,
    /// The current decode step and whose rows it holds.
    items: Vec<DecodeItem>,
    owners: Vec<Owner>,
    /// Sequences to roll back after a step, with the length each keeps.
    rollbacks: Vec<(u32, usize)>,
    out: Out,
    /// Admissions so far.
    order: u64,
    /// The request channel is closed.
    closed: bool,
    rate: RateWindow,
    /// Jobs taken from the channel that wait for enough free slots (a job with siblings
    /// needs one each), first come, first served.
    waiting: VecDeque<Job>,
    /// The logit row a prompt's answers all start from (siblings sharing its evaluation).
    fork_row: Vec<f32>,
    /// What each sequence holds for later prompts, and the host cache.
    prefix: PrefixCache,
    /// Slots whose job ended in the current step.
    ended: Vec<usize>,
}

impl Scheduler {
    fn new(
        engine: Engine,
        tok: Arc<Tokenizer>,
        metrics: Arc<Metrics>,
        cfg: SchedulerConfig,
    ) -> Scheduler {
        let source = match cfg.spec {
            Speculation::Off => None,
            Speculation::Ngram { .. } => Some(DraftSource::Ngram(NgramDrafter::default())),
            Speculation::Draft { .. } => cfg.draft.map(|d| DraftSource::Model(Box::new(d))),
            Speculation::Mtp { .. } if engine.has_mtp() => {
                Some(DraftSource::Mtp(MtpDrafter::default()))
            }
            Speculation::Mtp { .. } => None,
        };
        let n_slots = engine.n_seq().min(engine.max_logit_rows()).max(1);
        let chunk = cfg.prefill_chunk.clamp(1, engine.n_batch());
        let prefix = PrefixCache::new(&engine, chunk, cfg.cache);
        metrics
            .cache_ram
            .store(cfg.cache.ram_bytes, Ordering::Relaxed);
        let step_limit = engine.max_logit_rows().min(engine.n_batch()).max(1);
        Scheduler {
            source,
            draft_max: cfg.spec.draft_max(),
            slots: (0..n_slots).map(|_| None).collect(),
            chunk,
            step_limit,
            items: Vec::with_capacity(step_limit),
            owners: Vec::with_capacity(n_slots),
            rollbacks: Vec::with_capacity(n_slots),
            out: Out {
                tok,
                metrics,
                n_ctx: engine.n_ctx(),
                vocab: engine.n_vocab(),
                top: Vec::new(),
            },
            order: 0,
            closed: false,
            rate: RateWindow::new(),
            waiting: VecDeque::new(),
            fork_row: Vec::new(),
            prefix,
            ended: Vec::with_capacity(n_slots),
            engine,
        }
    }

    /// Steps until the request channel is closed and every job is finished.
    fn run(&mut self, rx: &Receiver<Job>) {
        loop {
            self.cancel_gone();
            self.admit(rx);
            let active = self.slots.iter().filter(|s| s.is_some()).count();
            self.out.metrics.active.store(active, Ordering::Relaxed);
            if active == 0 {
                if self.closed {
                    break;
                }
                continue;
            }
            self.plan_step();
            if !self.items.is_empty() {
                self.decode_step();
            }
            self.prefill();
        }
        self.out.metrics.active.store(0, Ordering::Relaxed);
    }

    /// Frees the slots whose client went away.
    fn cancel_gone(&mut self) {
        for i in 0..self.slots.len() {
            if self.slots[i]
                .as_ref()
                .is_some_and(|x| x.job.events.is_closed())
            {
                self.release(i);
                self.out.metrics.cancelled.fetch_add(1, Ordering::Relaxed);
            }
        }
        // A sibling whose prompt's evaluation went away (its job failed or was cancelled).
        for i in 0..self.slots.len() {
            let Some((l, order)) = self.slots[i].as_ref().and_then(|x| x.fork) else {
                continue;
            };
            if self.slots[l].as_ref().is_none_or(|x| x.order != order) {
                self.fail(i, "the prompt's evaluation failed or was cancelled");
            }
        }
    }

    /// Whether a job's siblings can share its prompt's evaluation: the model's only
    /// per-sequence state is the KV cache, and no drafter keeps state per sequence.
    fn can_fork(&self) -> bool {
        self.engine.can_copy_sequences()
            && matches!(self.source, None | Some(DraftSource::Ngram(_)))
    }

    /// The next job: one that waited for slots first, else one from the channel (waiting
    /// for one when idle). None when there is none now or the channel is closed.
    fn next_job(&mut self, rx: &Receiver<Job>) -> Option<Job> {
        if let Some(j) = self.waiting.pop_front() {
            return Some(j);
        }
        let idle = self.slots.iter().all(|s| s.is_none());
        let metrics = &self.out.metrics;
        let job = if idle {
            metrics.active.store(0, Ordering::Relaxed);
            rx.recv().ok()
        } else {
            match rx.try_recv() {
                Ok(j) => Some(j),
                Err(TryRecvError::Empty) => return None,
                Err(TryRecvError::Disconnected) => None,
            }
        };
        match job {
            Some(j) => {
                metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
                Some(j)
            }
            None => {
                self.closed = true;
                None
            }
        }
    }

    /// Fails the job in slot `i` (if any) with `e`; the slot is free and what its sequence
    /// holds is forgotten.
    fn fail(&mut self, i: usize, e: impl Display) {
        if let Some(slot) = self.slots[i].take() {
            let _ = slot.job.events.send(Event::Error(e.to_string()));
            self.prefix.forget(i);
        }
    }

    /// Frees slot `i` after its job ended (finished or cancelled): its sequence keeps the
    /// evaluated tokens for later prompts.
    fn release(&mut self, i: usize) {
        let Some(slot) = self.slots[i].take() else {
            return;
        };
        let (tokens, chunked) = slot.held();
        self.prefix.finish(&mut self.engine, i, tokens, chunked);
        self.publish_cache();
    }

    /// Publishes the prefix cache's gauges.
    fn publish_cache(&self) {
        let m = &self.out.metrics;
        m.cache_bytes.store(self.prefix.bytes(), Ordering::Relaxed);
        m.cache_entries
            .store(self.prefix.entries(), Ordering::Relaxed);
    }

    /// Admits queued jobs into free slots; waits for one when idle.
    fn admit(&mut self, rx: &Receiver<Job>) {
        let metrics = self.out.metrics.clone();
        while !self.closed || !self.waiting.is_empty() {
            let free = self.slots.iter().filter(|s| s.is_none()).count();
            if free == 0 {
                break;
            }
            let Some(mut job) = self.next_job(rx) else {
                break;
            };
            if job.events.is_closed() && job.siblings.iter().all(|s| s.events.is_closed()) {
                metrics.cancelled.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let n_ctx = self.out.n_ctx;
            if job.prompt.is_empty() || job.prompt.len() + job.max_tokens > n_ctx {
                let e = format!(
                    "the prompt ({} tokens) and max_tokens ({}) exceed the context of {n_ctx}",
                    job.prompt.len(),
                    job.max_tokens
                );
                for s in job.siblings.drain(..) {
                    let _ = s.events.send(Event::Error(e.clone()));
                }
                let _ = job.events.send(Event::Error(e));
                continue;
            }
            if job.siblings.len() >= self.slots.len() {
                let e = format!(
                    "{} answers to one prompt need as many sequences; the server runs {}",
                    job.siblings.len() + 1,
                    self.slots.len()
                );
                for s in job.siblings.drain(..) {
                    let _ = s.events.send(Event::Error(e.clone()));
                }
                let _ = job.events.send(Event::Error(e));
                continue;
            }
            if !job.siblings.is_empty() && !self.can_fork() {
                // Each answer evaluates the prompt on its own.
                let siblings = std::mem::take(&mut job.siblings);
                for s in siblings.into_iter().rev() {
                    let j = job.sibling(s);
                    self.waiting.push_front(j);
                }
                self.waiting.push_front(job);
                continue;
            }
            if free < 1 + job.siblings.len() {
                self.waiting.push_front(job);
                break;
            }
            let siblings = std::mem::take(&mut job.siblings);
            let free: Vec<usize> = (0..self.slots.len())
                .filter(|&i| self.slots[i].is_none())
                .collect();
            let limit = job.images.first().map_or(job.prompt.len(), |im| im.start);
            let resume = self
                .prefix
                .admit(&mut self.engine, &job.prompt, limit, &free);
            let lead = resume.seq;
            metrics
                .prompt_tokens_cached
                .fetch_add(resume.at as u64, Ordering::Relaxed);
            if resume.at > 0 {
                metrics.cache_hits.fetch_add(1, Ordering::Relaxed);
            }
            if resume.restored {
                metrics.checkpoint_restores.fetch_add(1, Ordering::Relaxed);
            }
            let sibling_jobs: Vec<Job> = siblings.into_iter().map(|s| job.sibling(s)).collect();
            self.start(lead, job, resume.at);
            let order = self.slots[lead].as_ref().map_or(0, |x| x.order);
            for j in sibling_jobs {
                let Some(i) = self.slots.iter().position(|s| s.is_none()) else {
                    break;
                };
                self.prefix.take(&mut self.engine, i);
                self.start(i, j, 0);
                if let Some(x) = self.slots[i].as_mut() {
                    x.fork = Some((lead, order));
                }
            }
        }
    }

    /// Puts `job` in the free slot `i`, whose sequence holds the prompt's first `resumed`
    /// positions already.
    fn start(&mut self, i: usize, mut job: Job, resumed: usize) {
        let eog = self.out.tok.eog_ids();
        let mut picker = Picker::new(&job.sampling, self.out.vocab, job.ignore_eos, eog)
            .with_bias(job.logit_bias.clone())
            .with_constraint(job.constraint.take());
        for (p, &t) in job.prompt.iter().enumerate() {
            // Image positions are not tokens (penalties see the text only).
            if !job.images.iter().any(|im| im.holds(p)) {
                picker.accept(t);
            }
        }
        self.order += 1;
        let spec = self.start_spec(i, &job);
        let mut slot = Slot::new(job, self.order, picker, spec);
        slot.prefilled = resumed;
        slot.valid = resumed;
        self.slots[i] = Some(slot);
        self.publish_cache();
    }

    /// The speculation state of `job` in slot `i`, when it speculates: a draft model
    /// evaluates the prompt for its sequence now (if it cannot, the job decodes plainly);
    /// with images only the MTP drafter speculates (its block takes the image rows).
    fn start_spec(&mut self, i: usize, job: &Job) -> Option<SpecSeq> {
        let source = self.source.as_mut()?;
        if !job.images.is_empty() && !source.sees_images() {
            return None;
        }
        let sampling = Some(&job.sampling);
        if !matches!(
            source.start(&self.engine, i, &job.prompt, sampling),
            Ok(true)
        ) {
            return None;
        }
        let ctl = Controller::new(self.draft_max);
        Some(SpecSeq::new(
            ctl,
            &job.prompt,
            job.max_tokens,
            source.name(),
        ))
    }

    /// Plans one decode step for every sequence past its prompt, in one forward pass: its
    /// last token, then the tokens its drafter proposes (if any fit in the step).
    fn plan_step(&mut self) {
        self.items.clear();
        self.owners.clear();
        let decoding = self
            .slots
            .iter()
            .filter(|s| s.as_ref().is_some_and(|x| x.next.is_some()))
            .count();
        let mut spare = self.step_limit.saturating_sub(decoding);
        let n_ctx = self.out.n_ctx;
        for (i, s) in self.slots.iter_mut().enumerate() {
            let Some(x) = s.as_mut() else {
                continue;
            };
            let Some((token, pos)) = x.next else {
                continue;
            };
            let row = self.items.len();
            let seq = i as u32;
            self.items.push(DecodeItem { seq, token, pos });
            let mut drafted = 0;
            // Never past max_tokens (the model's own token follows the drafts) nor past
            // the context.
            let remaining = x.job.max_tokens.saturating_sub(x.generated() + 1);
            if let (Some(_), Some(source)) = (x.spec.as_ref(), self.source.as_mut()) {
                let room = n_ctx.saturating_sub(pos as usize + 1);
                let limit = remaining.min(room).min(spare);
                // A drafter that fails drafts nothing this step; drafts the request's
                // grammar refuses are dropped before the pass.
                let tokens = x.draft(&mut self.engine, source, i, limit);
                for (j, &token) in tokens.iter().enumerate() {
                    let pos = pos + 1 + j as u32;
                    self.items.push(DecodeItem { seq, token, pos });
                }
                drafted = tokens.len();
                spare -= drafted;
            }
            self.owners.push(Owner {
                slot: i,
                row,
                drafted,
            });
        }
    }

    /// Runs the planned decode step and applies its logits to each sequence.
    fn decode_step(&mut self) {
        let metrics = self.out.metrics.clone();
        let t0 = Instant::now();
        let before = metrics.generated_tokens.load(Ordering::Relaxed);
        let owners = std::mem::take(&mut self.owners);
        let step = if self.engine.on_gpu() && self.slots.iter().flatten().any(Slot::is_constrained)
        {
            // The grammars' masks are computed on the CPU while the GPU runs the pass.
            let (engine, items, slots) = (&mut self.engine, &self.items, &mut self.slots);
            std::thread::scope(|s| {
                s.spawn(|| slots.iter_mut().flatten().for_each(Slot::prepare));
                engine.decode_step(items)
            })
        } else {
            self.engine.decode_step(&self.items)
        };
        match step {
            Ok(logits) => {
                let t_verify = t0.elapsed().as_secs_f64();
                let vocab = self.out.vocab;
                for o in &owners {
                    let Some(slot) = self.slots[o.slot].as_mut() else {
                        continue;
                    };
                    let rows = &logits[o.row * vocab..(o.row + 1 + o.drafted) * vocab];
                    let pos = self.items[o.row].pos as usize + 1;
                    if !slot.apply_step(rows, pos, t_verify, &mut self.out) {
                        self.ended.push(o.slot);
                    } else if o.drafted > 0 {
                        // The state past the kept drafts is rolled back (recurrent
                        // models; the KV cache needs nothing).
                        if let Some((_, next)) = slot.next {
                            self.rollbacks.push((o.slot as u32, next as usize));
                        }
                    }
                }
                for k in 0..self.ended.len() {
                    self.release(self.ended[k]);
                }
                self.ended.clear();
                self.after_step(&owners);
            }
            Err(e) => {
                let e = e.to_string();
                for o in &owners {
                    self.fail(o.slot, &e);
                }
            }
        }
        self.owners = owners;
        metrics
            .decode_seconds
            .fetch_add(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
        let after = metrics.generated_tokens.load(Ordering::Relaxed);
        self.rate
            .add(after.saturating_sub(before) as usize, &metrics);
    }

    /// After a step's logits are used: the MTP drafter reads each sequence's hidden states
    /// of the pass, and the sequences with rejected drafts are rolled back.
    fn after_step(&mut self, owners: &[Owner]) {
        for o in owners {
            let (Some(source), Some(_)) = (self.source.as_mut(), &self.slots[o.slot]) else {
                continue;
            };
            let start = self.items[o.row].pos as usize;
            let rows = 1 + o.drafted;
            let r = source.after_pass(&mut self.engine, o.slot, o.row, start, rows);
            if let Err(e) = r {
                self.fail(o.slot, e);
            }
        }
        let mut rollbacks = std::mem::take(&mut self.rollbacks);
        for (seq, len) in rollbacks.drain(..) {
            if let Err(e) = self.engine.rollback(seq, len) {
                self.fail(seq as usize, e);
            }
        }
        self.rollbacks = rollbacks;
    }

    /// Prompt chunks, earliest admitted job first, up to one chunk's worth of tokens per
    /// step (at least one chunk): many short prompts that arrive together all start
    /// decoding at the next step, while a long prompt still takes one chunk per step so
    /// running streams are not stalled. Each chunk is its own pass, cut at fixed offsets,
    /// so a prompt's result does not depend on the others.
    fn prefill(&mut self) {
        let mut budget = self.chunk;
        while budget > 0 {
            let pick = self
                .slots
                .iter()
                .enumerate()
                .filter_map(|(i, s)| s.as_ref().map(|x| (i, x)))
                .filter(|(_, x)| x.next.is_none() && x.fork.is_none())
                .min_by_key(|(_, x)| x.order)
                .map(|(i, _)| i);
            let Some(i) = pick else {
                break;
            };
            match self.prefill_next(i, budget) {
                Some(n) => budget = budget.saturating_sub(n),
                None => break,
            }
        }
    }

    /// Evaluates the next piece of slot `i`'s prompt: an image starting here (in a pass of
    /// its own), else a token chunk up to the next image. Returns the positions it took,
    /// or None when it does not fit in a `budget` smaller than a chunk.
    fn prefill_next(&mut self, i: usize, budget: usize) -> Option<usize> {
        let chunk = self.chunk;
        let slot = self.slots[i].as_mut()?;
        let len = slot.job.prompt.len();
        let mtp = self.source.as_mut().and_then(|s| s.mtp_state(i));
        let image = slot.job.images.iter().find(|im| im.start == slot.prefilled);
        let r = if let Some(im) = image {
            let n = im.len;
            if n > budget && budget < chunk {
                return None;
            }
            let last = im.start + n == len;
            // With MTP, the block's passes over the image rows follow the trunk's.
            let r = self
                .engine
                .prefill_embeddings(i as u32, im.rows(), im.start, last, mtp);
            r.map(|out| (im.start..im.start + n, out))
        } else {
            let mut r = prefill_chunks(slot.prefilled, len, chunk);
            // Token chunks stop where the next image starts.
            if let Some(im) = slot.job.images.iter().find(|im| im.start > r.start) {
                r.end = r.end.min(im.start);
            }
            // And where a checkpoint is wanted, when cutting there changes nothing.
            if let Some(t) = slot.job.turn_start {
                if t > r.start && t < r.end && self.prefix.cuts_at_turns() {
                    r.end = t;
                }
            }
            let n = r.len();
            if n == 0 || (n > budget && budget < chunk) {
                return None;
            }
            let tokens = &slot.job.prompt[r.clone()];
            let out = self
                .engine
                .prefill_chunk(i as u32, tokens, r.start, r.end == len);
            out.map(|out| (r, out))
        };
        let is_image = image.is_some();
        let (r, logits) = match r {
            Ok(x) => x,
            Err(e) => {
                self.fail(i, e);
                return Some(0);
            }
        };
        // The last chunk's logit row, kept while the chunk is recorded.
        let has_logits = logits.is_some();
        if let Some(l) = logits {
            self.fork_row.clear();
            self.fork_row.extend_from_slice(l);
        }
        let n = r.len();
        self.out
            .metrics
            .prompt_tokens
            .fetch_add(n as u64, Ordering::Relaxed);
        slot.prefilled = r.end;
        slot.valid = r.end;
        let order = slot.order;
        let text_end = slot
            .job
            .images
            .first()
            .map_or(r.end, |im| im.start.min(r.end));
        if self.prefix.after_chunk(
            &mut self.engine,
            i,
            &slot.job.prompt[..text_end],
            r.end,
            len,
            slot.job.turn_start,
        ) {
            self.out
                .metrics
                .checkpoints_saved
                .fetch_add(1, Ordering::Relaxed);
        }
        if has_logits {
            let forks: Vec<usize> = (0..self.slots.len())
                .filter(|&j| {
                    self.slots[j]
                        .as_ref()
                        .is_some_and(|x| x.fork == Some((i, order)))
                })
                .collect();
            if forks.is_empty() {
                let slot = self.slots[i].as_mut()?;
                if !slot.next_token(&self.fork_row, len, &mut self.out) {
                    self.release(i);
                }
            } else {
                self.start_forks(i, len, &forks);
            }
        }
        // The MTP block's pass over a token chunk (its cache entries).
        let mtp = self.source.as_mut().and_then(|s| s.mtp_state(i));
        if let (false, Some(slot), Some(st)) = (is_image, self.slots[i].as_ref(), mtp) {
            let tokens = &slot.job.prompt[r.clone()];
            if let Err(e) = self.engine.mtp_after_chunk(i as u32, st, tokens, r.start) {
                self.fail(i, e);
            }
        }
        Some(n)
    }
}

impl Scheduler {
    /// Slot `lead` evaluated its prompt of `len` positions (its last logit row in
    /// `fork_row`): the slots `forks` (its siblings) continue from a copy of it, and each
    /// answer picks its first token from that row.
    fn start_forks(&mut self, lead: usize, len: usize, forks: &[usize]) {
        for &j in forks {
            if let Err(e) = self.engine.copy_sequence(lead as u32, j as u32, len) {
                self.fail(j, e);
                continue;
            }
            if let Some(x) = self.slots[j].as_mut() {
                x.fork = None;
                x.prefilled = len;
                x.valid = len;
            }
        }
        let row = std::mem::take(&mut self.fork_row);
        for &j in std::iter::once(&lead).chain(forks) {
            if let Some(x) = self.slots[j].as_mut() {
                if !x.next_token(&row, len, &mut self.out) {
                    self.release(j);
                }
            }
        }
        self.fork_row = row;
    }
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
