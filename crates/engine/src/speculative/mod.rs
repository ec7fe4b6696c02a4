//! Speculative decoding: a drafter proposes the next few tokens, the target model checks them
//! all in one batched pass and keeps the prefix its own sampling agrees with, exactly.
//!
//! - [`DraftSource`]: what proposes tokens. [`NgramDrafter`] looks the recent tokens up
//!   earlier in the text (prompt lookup, no extra model); [`ModelDrafter`] runs a small
//!   model that shares the target's tokenizer; [`MtpDrafter`] runs the target's own
//!   multi-token-prediction block on its hidden states.
//! - Verification ([`SpecSeq`], one round per target pass, the same in
//!   [`Engine::generate_speculative`] and the server): the last token and k drafts are
//!   evaluated together; at temperature 0 a draft is kept while it equals the target's
//!   argmax, otherwise by the rejection rule (keep `x` with probability `min(1, p(x)/q(x))`,
//!   else draw from `max(0, p − q)` normalized), so the output follows the target's
//!   distribution exactly. The sequence state past the kept tokens is then rolled back by
//!   the model ([`model::Model::rollback`]).
//!   The rule itself is [`crate::pick::Picker::pick_draft`].
//! - [`Controller`]: picks k every step from the measured acceptance and the measured cost
//!   of a step and of a draft, and drafts nothing when speculation does not pay.
//!
//! Verification batches stay below [`runtime::GEMM_MIN_TOKENS`] tokens, so every token
//! is computed exactly as a lone decode step would compute it: greedy output is identical
//! with and without speculation.

use std::time::Instant;

use crate::sampling::top_logprobs;
use crate::session::{Engine, EngineError, GenerateOptions, Generation, PromptPart};

mod controller;
mod draft;
mod model;
mod round;

pub use crate::pick::{verify_sampled, Verify};
pub use controller::{Controller, SpecStats};
pub use draft::{Draft, DraftSource, MtpDrafter, NgramDrafter};
pub use model::ModelDrafter;
pub use round::SpecSeq;

/// Most tokens drafted per step: with the last token, a verification batch stays below the
/// size at which the CPU backend switches to its prompt GEMM (different rounding).
pub const MAX_DRAFT: usize = runtime::GEMM_MIN_TOKENS - 2;

/// Why speculative decoding could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The target (or draft) engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The MTP drafter lost track of the sequence.
    #[error("MTP drafting: {0}")]
    Mtp(&'static str),
    /// MTP drafting was asked of a model without the block.
    #[error("the model has no multi-token-prediction block: use --spec ngram or --spec draft")]
    NoMtp,
    /// A drafter that cannot see images was asked to draft after a prompt with some.
    #[error("with images in the prompt only the MTP drafter speculates (a draft model or n-grams cannot see the image): use --spec mtp or --spec none")]
    ImagesNeedMtp,
    /// The draft model's vocabulary is not the target's.
    #[error("the draft model's vocabulary ({draft} tokens) differs from the target's ({target}); a draft model must share the target's tokenizer")]
    Vocabulary {
        /// The draft model's vocabulary size.
        draft: usize,
        /// The target's.
        target: usize,
    },
    /// The draft model spells a token differently from the target.
    #[error("the draft model's tokenizer disagrees with the target's on token {id} ({draft:?} vs {target:?}); a draft model must share the target's tokenizer")]
    Tokenizer {
        /// The token.
        id: u32,
        /// The draft model's spelling.
        draft: String,
        /// The target's.
        target: String,
    },
}

impl Engine {
    /// [`Engine::generate`] with speculative decoding: each step, `source` proposes as many
    /// tokens as `ctl` picks (at most the logit rows this engine was loaded with, less one),
    /// the target verifies them in one pass, and the kept tokens (plus the target's own next
    /// token) are emitted through `on_token`. Greedy output is identical to
    /// [`Engine::generate`]'s; sampled output follows the same distribution. Returns the
    /// generation and the speculation counts.
    pub fn generate_speculative(
        &mut self,
        prompt: &[u32],
        opts: &GenerateOptions,
        source: &mut DraftSource,
        ctl: &mut Controller,
        on_token: impl FnMut(u32, &str) -> bool,
    ) -> Result<(Generation, SpecStats), SpecError> {
        self.generate_speculative_parts(&[PromptPart::Tokens(prompt)], opts, source, ctl, on_token)
    }

    /// [`Engine::generate_speculative`] after a prompt made of parts (text and images, see
    /// [`Engine::generate_parts`]). With images only the MTP drafter may speculate (its
    /// block takes the image rows as its inputs); greedy output is identical to
    /// [`Engine::generate_parts`]'s.
    pub fn generate_speculative_parts(
        &mut self,
        parts: &[PromptPart],
        opts: &GenerateOptions,
        source: &mut DraftSource,
        ctl: &mut Controller,
        on_token: impl FnMut(u32, &str) -> bool,
    ) -> Result<(Generation, SpecStats), SpecError> {
        let d = self.model.hp.n_embd;
        let parts: Vec<PromptPart> = parts.iter().copied().filter(|p| !p.is_empty(d)).collect();
        let images = parts.iter().any(|p| matches!(p, PromptPart::Embeddings(_)));
        let ctl_in = std::mem::replace(ctl, Controller::fixed(0));
        let mut seq = SpecSeq::new(ctl_in, &[], opts.max_tokens, source.name());
        let r = self.speculate(&parts, images, opts, source, &mut seq, on_token);
        *ctl = std::mem::replace(&mut seq.ctl, Controller::fixed(0));
        if images {
            // The cache's token list holds the images' placeholder ids: nothing to reuse,
            // whether generation ended or failed.
            self.cached.clear();
        }
        r.map(|g| (g, seq.finish_stats()))
    }

    /// The body of [`Engine::generate_speculative_parts`] (`parts` without empty ones), with
    /// the sequence's speculation state `seq` (its history empty).
    fn speculate(
        &mut self,
        parts: &[PromptPart],
        images: bool,
        opts: &GenerateOptions,
        source: &mut DraftSource,
        seq: &mut SpecSeq,
        mut on_token: impl FnMut(u32, &str) -> bool,
    ) -> Result<Generation, SpecError> {
        opts.sampling.validate().map_err(EngineError::Sampling)?;
        let d = self.model.hp.n_embd;
        if images && !source.sees_images() {
            return Err(SpecError::ImagesNeedMtp);
        }
        // The prompt's ids; an image's rows take placeholders (never read: only the tokens
        // generated after the prompt are drafted from).
        seq.history.extend(parts.iter().flat_map(|p| match *p {
            PromptPart::Tokens(t) => t.to_vec(),
            PromptPart::Embeddings(rows) => vec![0; rows.data.len() / d.max(1)],
        }));
        let prompt = seq.history.clone();
        if prompt.is_empty() {
            return Err(EngineError::EmptyPrompt.into());
        }
        if prompt.len() + opts.max_tokens > self.n_ctx {
            return Err(EngineError::ContextFull {
                prompt: prompt.len(),
                generate: opts.max_tokens,
                n_ctx: self.n_ctx,
            }
            .into());
        }
        let vocab = self.model.hp.n_vocab;
        let max_draft = MAX_DRAFT.min(self.max_logit_rows.saturating_sub(1));
        let (mut picker, mut out, mut emit) = self.start_generation(parts, opts);
        let mut top = Vec::with_capacity(opts.logprobs);

        // The prompt, as `generate` evaluates it (the cached prefix reused); with the MTP
        // drafter, chunk by chunk with the block's passes (no prefix reuse).
        let t0 = Instant::now();
        source.start(self, 0, &prompt, None)?;
        match source.mtp_state(0) {
            Some(st) if images => {
                self.cached.clear();
                self.mtp_prefill_parts(st, parts)?;
            }
            Some(st) => {
                self.cached.clear();
                self.mtp_prefill(st, &prompt)?;
            }
            None => {
                let reuse = self.reusable_prefix(&prompt);
                self.eval(0, &prompt[reuse..], reuse, false)?;
            }
        }
        self.cached.extend_from_slice(&prompt);
        out.timings.prompt_tokens = prompt.len();
        out.timings.prompt_time = t0.elapsed();
        let t1 = Instant::now();

        // Logit rows ready: row i follows the history up to the i-th token of the last pass.
        let mut rows_ready = 1;
        // The last pass's seconds, scored once its tokens are picked.
        let mut t_verify = None;
        loop {
            // Pick tokens from the rows: the kept drafts, then the target's own.
            let logits = self.backend.read(self.model.acts.logits, rows_ready)?;
            seq.verify(&mut picker, logits, vocab, t_verify.take());

            // Emit them in order, as `generate` does.
            let mut done = false;
            for j in 0..seq.picked().len() {
                let (id, row_i) = seq.picked()[j];
                if opts.logprobs > 0 {
                    let row = &self.backend.read(self.model.acts.logits, rows_ready)?
                        [row_i * vocab..(row_i + 1) * vocab];
                    top_logprobs(row, opts.logprobs, &mut top);
                    out.logprobs.push(top.clone());
                }
                let before = out.tokens.len();
                let eog_ends = !opts.ignore_eos || picker.grammar_finished();
                done = emit.push(&self.tokenizer, eog_ends, opts, &mut out, id, &mut on_token);
                if out.tokens.len() > before {
                    seq.history.push(id);
                }
                if done {
                    break;
                }
            }
            // The state is valid for the history but its last token (evaluated next, with
            // the new drafts); what the rejected drafts left is rolled back.
            let pos = seq.history.len() - 1;
            self.rollback(0, pos)?;
            self.cached.truncate(pos);
            let have = self.cached.len();
            self.cached.extend_from_slice(&seq.history[have..pos]);
            if done {
                break;
            }

            // Draft, then verify the last token and the drafts in one pass.
            let remaining = opts.max_tokens - out.tokens.len();
            let room = self.n_ctx - seq.history.len();
            let limit = remaining.saturating_sub(1).min(room).min(max_draft);
            seq.draft(self, source, 0, limit)?;
            // Drafts the grammar refuses would never be kept: they are not verified.
            let valid = picker.valid_drafts(seq.drafted());
            seq.keep_draft(valid);
            let n_draft = seq.drafted().len();
            let mut batch = [0u32; MAX_DRAFT + 1];
            batch[0] = seq.history[pos];
            batch[1..=n_draft].copy_from_slice(seq.drafted());
            let tv = Instant::now();
            let cached = std::mem::take(&mut self.cached);
            let result = self
                .eval_rows(0, &batch[..=n_draft], pos, 0)
                .map(|r| r.len() / vocab);
            self.cached = cached;
            rows_ready = match result {
                Ok(r) => r,
                Err(e) => {
                    self.cached.clear();
                    return Err(e.into());
                }
            };
            self.cached.push(seq.history[pos]);
            source.after_pass(self, 0, 0, pos, n_draft + 1)?;
            t_verify = Some(tv.elapsed().as_secs_f64());
        }
        emit.finish(&mut out);
        out.timings.generation_time = t1.elapsed();
        Ok(out)
    }
}
