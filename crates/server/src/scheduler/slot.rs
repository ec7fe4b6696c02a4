//! One job in a KV-cache slot: how it picks its tokens, streams its text and ends, after a
//! prompt's last chunk or a decode step (verifying its drafts when it speculates).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use engine::pick::Picker;
use engine::sampling::{logprob_of, top_logprobs};
use engine::speculative::SpecSeq;
use engine::stop::TextStream;
use tokenizer::Tokenizer;

use super::{Event, Job, TokenLogprob};
use crate::metrics::Metrics;

/// What every slot's per-token path shares.
pub(super) struct Out {
    pub tok: Arc<Tokenizer>,
    pub metrics: Arc<Metrics>,
    pub n_ctx: usize,
    pub vocab: usize,
    /// Scratch of the top log-probabilities.
    pub top: Vec<(u32, f32)>,
}

/// A job holding a KV-cache slot.
pub(super) struct Slot {
    pub job: Job,
    /// Admission order (prefill goes first come, first served).
    pub order: u64,
    picker: Picker,
    text: TextStream,
    /// Prompt tokens evaluated so far (a reused prefix included).
    pub prefilled: usize,
    /// Positions evaluated: the prompt's, then up to the last picked token's.
    pub valid: usize,
    /// Tokens picked so far (end-of-generation included), at positions from the prompt's end.
    picked: Vec<u32>,
    /// The token to evaluate next and its position (once the prompt is done).
    pub next: Option<(u32, u32)>,
    generated: usize,
    first_token: bool,
    /// Speculative decoding state, when on.
    pub spec: Option<SpecSeq>,
    /// `(slot, order)` of the job whose prompt evaluation this one waits to copy (an answer
    /// of `n` > 1 sharing it); None once it has its own.
    pub fork: Option<(usize, u64)>,
}

impl Slot {
    /// The slot of `job`, admitted `order`-th, picking with `picker` (which has seen the
    /// prompt's tokens).
    pub fn new(job: Job, order: u64, picker: Picker, spec: Option<SpecSeq>) -> Slot {
        Slot {
            text: TextStream::new(job.stop.clone()),
            job,
            order,
            picker,
            prefilled: 0,
            valid: 0,
            picked: Vec::new(),
            next: None,
            generated: 0,
            first_token: true,
            spec,
            fork: None,
        }
    }

    /// What its sequence holds once the job ends: the token ids of the positions evaluated
    /// (cut at the first image, whose positions hold placeholders), and how many of them
    /// prompt chunks computed.
    pub fn held(&self) -> (Vec<u32>, usize) {
        let text = self.job.images.first().map_or(usize::MAX, |im| im.start);
        let valid = self.valid.min(text);
        let mut tokens = Vec::with_capacity(valid);
        tokens.extend(self.job.prompt.iter().chain(&self.picked).take(valid));
        (tokens, self.prefilled.min(valid))
    }

    /// Tokens generated so far.
    pub fn generated(&self) -> usize {
        self.generated
    }

    /// Whether its picks follow a grammar.
    pub fn is_constrained(&self) -> bool {
        self.picker.is_constrained()
    }

    /// Computes its grammar's mask for the next pick (see [`Picker::prepare`]).
    pub fn prepare(&mut self) {
        self.picker.prepare();
    }

    /// This step's drafts for sequence `seq` (at most `limit`), from `source`: those the
    /// request's grammar allows in a row (a failing drafter drafts nothing).
    pub fn draft(
        &mut self,
        engine: &mut engine::Engine,
        source: &mut engine::speculative::DraftSource,
        seq: usize,
        limit: usize,
    ) -> &[u32] {
        let Some(sp) = self.spec.as_mut() else {
            return &[];
        };
        let n = match sp.draft(engine, source, seq, limit) {
            Ok(tokens) => self.picker.valid_drafts(tokens),
            Err(_) => 0,
        };
        sp.keep_draft(n);
        sp.drafted()
    }

    /// Uses a decode step's rows: its last token's (whose successor goes to position `pos`)
    /// and those of the tokens it drafted after it. Speculating, the drafts are verified
    /// ([`SpecSeq::verify`], the step took `t_verify` seconds) and the kept ones and the
    /// model's own next token are emitted until the job finishes. Returns false when the
    /// job is over (the slot is then free).
    ///
    /// The KV cache past the kept tokens holds the rejected drafts: those positions are
    /// simply overwritten by later steps (attention never looks past a token's own
    /// position); a recurrent model's state is rolled back by the caller once the step's
    /// logits are used ([`engine::Engine::rollback`]).
    pub fn apply_step(&mut self, rows: &[f32], pos: usize, t_verify: f64, out: &mut Out) -> bool {
        let vocab = out.vocab;
        let Some(mut sp) = self.spec.take() else {
            return self.next_token(&rows[..vocab], pos, out);
        };
        let drafted = sp.drafted().len();
        let kept = sp.verify(&mut self.picker, rows, vocab, Some(t_verify));
        if drafted > 0 {
            out.metrics.observe_spec(drafted, kept);
        }
        let mut alive = true;
        for j in 0..sp.picked().len() {
            let (id, i) = sp.picked()[j];
            alive = self.emit(&rows[i * vocab..(i + 1) * vocab], id, pos + i, out);
            if !alive {
                break;
            }
            sp.history.push(id);
        }
        self.spec = Some(sp);
        alive
    }

    /// Picks the next token from its logit row (the token goes to position `pos` next) and
    /// sends it. Returns false when the job is over (the slot is then free).
    pub fn next_token(&mut self, logits: &[f32], pos: usize, out: &mut Out) -> bool {
        let id = self.picker.pick(logits);
        let alive = self.emit(logits, id, pos, out);
        if alive {
            if let Some(sp) = self.spec.as_mut() {
                sp.history.push(id);
            }
        }
        alive
    }

    /// Sends token `id`, picked from the logit row `logits` (it goes to position `pos`
    /// next): EOS, stop strings and max_tokens end the job. Returns false when the job is
    /// over.
    fn emit(&mut self, logits: &[f32], id: u32, pos: usize, out: &mut Out) -> bool {
        // Every position before the token's own is evaluated.
        self.valid = pos;
        self.picked.push(id);
        let job = &self.job;
        if self.first_token {
            self.first_token = false;
            out.metrics
                .observe_ttft(job.received.elapsed().as_secs_f64());
        }
        // With the output's grammar complete, end-of-generation ends it even when ignored.
        if (!job.ignore_eos || self.picker.grammar_finished()) && out.tok.is_eog(id) {
            return self.finish("stop", false);
        }
        let logprob = job.logprobs.map(|k| {
            top_logprobs(logits, k, &mut out.top);
            TokenLogprob {
                logprob: logprob_of(logits, id),
                top: out.top.clone(),
            }
        });
        self.generated += 1;
        out.metrics.generated_tokens.fetch_add(1, Ordering::Relaxed);
        let (text, stopped) = self.text.push(&out.tok, id);
        let token = Event::Token {
            id,
            text: text.to_owned(),
            logprob,
        };
        if job.events.send(token).is_err() {
            out.metrics.cancelled.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        if stopped {
            return self.finish("stop", true);
        }
        if self.generated >= job.max_tokens || pos >= out.n_ctx {
            return self.finish("length", false);
        }
        self.next = Some((id, pos as u32));
        true
    }

    /// Sends the end of the job (after a stop string when `stopped`); always returns false
    /// (the slot is free).
    fn finish(&mut self, reason: &'static str, stopped: bool) -> bool {
        let mut reason = reason;
        let mut tail = String::new();
        if !stopped {
            let (t, hit) = self.text.finish();
            tail.push_str(t);
            if hit {
                reason = "stop";
            }
        }
        let _ = self.job.events.send(Event::Done {
            text: tail,
            finish_reason: reason,
            prompt_tokens: self.job.prompt.len(),
            completion_tokens: self.generated,
        });
        false
    }
}
