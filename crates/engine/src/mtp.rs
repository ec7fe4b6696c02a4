//! Drafting with the model's own multi-token-prediction (MTP) block (`qwen35`): the block
//! reads the token at position p and the trunk's hidden state of p − 1 and predicts p + 1.
//!
//! Its KV cache holds one entry per verified position, written from the trunk's hidden
//! states: during the prompt (a pass over each chunk right after the trunk's), and at each
//! round for the positions verified since the last one ("catch-up", one pass that also gives
//! the first draft). Further drafts feed the previous draft token with the block's own
//! output state; those entries are provisional and the next catch-up overwrites them. When
//! the controller stops drafting, catch-up stops too (it would cost a pass per token); the
//! entries it skipped stay stale, which only lowers acceptance after a restart.

use crate::session::Engine;
use crate::speculative::{Draft, SpecError};
use crate::EngineError;
use runtime::Batch;

/// The MTP drafter's bookkeeping for one sequence.
pub struct MtpState {
    /// Positions whose MTP cache entry is verified (or skipped): the next catch-up starts here.
    len: usize,
    /// Position of the first row of `h`.
    pass_start: usize,
    /// The trunk's hidden states of the sequence's last trunk pass, `rows × n_embd`.
    h: Vec<f32>,
    rows: usize,
    /// Input rows of an MTP pass.
    h_in: Vec<f32>,
}

impl MtpState {
    /// State for passes of up to `n_batch` tokens of a model `n_embd` wide.
    pub fn new(n_batch: usize, n_embd: usize) -> MtpState {
        MtpState {
            len: 0,
            pass_start: 0,
            h: vec![0.0; n_batch * n_embd],
            rows: 0,
            h_in: vec![0.0; n_batch * n_embd],
        }
    }

    /// Forgets the sequence (a new one starts at position 0).
    pub fn reset(&mut self) {
        self.len = 0;
        self.pass_start = 0;
        self.rows = 0;
    }
}

impl Engine {
    /// Whether the model has an MTP block to draft with.
    pub fn has_mtp(&self) -> bool {
        self.model.n_mtp() > 0
    }

    /// Copies the trunk's hidden states of the last pass (`rows` tokens from position
    /// `start`) into `st`.
    pub(crate) fn mtp_keep_hidden(
        &mut self,
        st: &mut MtpState,
        start: usize,
        rows: usize,
    ) -> Result<(), EngineError> {
        self.mtp_keep_hidden_rows(st, 0, start, rows)
    }

    /// Copies rows `row0..row0 + rows` of the last pass's hidden states (one sequence's
    /// tokens at positions `start..`, in a pass that may hold other sequences) into `st`:
    /// call it right after the pass.
    pub fn mtp_keep_hidden_rows(
        &mut self,
        st: &mut MtpState,
        row0: usize,
        start: usize,
        rows: usize,
    ) -> Result<(), EngineError> {
        let Some(h) = self.model.hidden() else {
            return Ok(());
        };
        let d = self.model.hp.n_embd;
        let src = self.backend.read(h, row0 + rows)?;
        st.h[..rows * d].copy_from_slice(&src[row0 * d..(row0 + rows) * d]);
        st.pass_start = start;
        st.rows = rows;
        Ok(())
    }

    /// One MTP pass over `tokens` at positions `start..`, with `st.h_in` holding their input
    /// states; logits for the last token when `logits`.
    fn mtp_pass(
        &mut self,
        st: &MtpState,
        seq: u32,
        tokens: &[u32],
        start: usize,
        logits: bool,
    ) -> Result<(), EngineError> {
        self.mtp_pass_inputs(st, seq, tokens, &[], start, logits)
    }

    /// [`Engine::mtp_pass`] whose inputs are rows given directly when `embd` is not empty
    /// (an image's embeddings stand in for the token embeddings; `tokens` are placeholders).
    fn mtp_pass_inputs(
        &mut self,
        st: &MtpState,
        seq: u32,
        tokens: &[u32],
        embd: &[f32],
        start: usize,
        logits: bool,
    ) -> Result<(), EngineError> {
        let Some((h_in, _, _)) = self.model.mtp_acts() else {
            return Ok(());
        };
        let d = self.model.hp.n_embd;
        self.backend.write(h_in, &st.h_in[..tokens.len() * d])?;
        let rows = Batch::last_row(tokens.len(), logits);
        self.batch.refill(tokens, start as u32, seq, rows);
        self.batch.embd.extend_from_slice(embd);
        // The block's cache shares the trunk's slots and rotary positions.
        self.rope.fill(&mut self.batch, false);
        let model = &self.model;
        let res = self
            .backend
            .forward(&self.batch, model, crate::backend::Pass::Mtp(0));
        self.batch.embd.clear();
        res?;
        Ok(())
    }

    /// The MTP block's pass over a prompt chunk of sequence `seq` (`chunk` at positions
    /// `start..`), right after the trunk's pass over it (whose hidden states it reads).
    pub fn mtp_after_chunk(
        &mut self,
        seq: u32,
        st: &mut MtpState,
        chunk: &[u32],
        start: usize,
    ) -> Result<(), EngineError> {
        self.mtp_after_pass(seq, st, chunk, &[], start)
    }

    /// [`Engine::mtp_after_chunk`] after the trunk's pass over an image's rows
    /// ([`Engine::prefill_embeddings`]): the block takes the same rows as its inputs.
    pub fn mtp_after_rows(
        &mut self,
        seq: u32,
        st: &mut MtpState,
        rows: &[f32],
        start: usize,
    ) -> Result<(), EngineError> {
        let n = rows.len() / self.model.hp.n_embd.max(1);
        let placeholders = vec![0; n];
        self.mtp_after_pass(seq, st, &placeholders, rows, start)
    }

    fn mtp_after_pass(
        &mut self,
        seq: u32,
        st: &mut MtpState,
        chunk: &[u32],
        embd: &[f32],
        start: usize,
    ) -> Result<(), EngineError> {
        let d = self.model.hp.n_embd;
        let n = chunk.len();
        if n == 0 || n * d > st.h.len() {
            return Err(EngineError::EmptyPrompt);
        }
        // Inputs: the state before each token (zeros before position 0).
        if start == 0 {
            st.h_in[..d].fill(0.0);
        } else if st.rows > 0 && st.pass_start + st.rows == start {
            st.h_in[..d].copy_from_slice(&st.h[(st.rows - 1) * d..st.rows * d]);
        } else {
            st.h_in[..d].fill(0.0);
        }
        self.mtp_keep_hidden(st, start, n)?;
        st.h_in[d..n * d].copy_from_slice(&st.h[..(n - 1) * d]);
        self.mtp_pass_inputs(st, seq, chunk, embd, start, false)?;
        st.len = start + n;
        Ok(())
    }

    /// Evaluates a prompt chunk by chunk, each trunk pass followed by the MTP block's pass
    /// over the same positions (its cache entries). The trunk's logits of the last token
    /// are left in `acts.logits`.
    pub(crate) fn mtp_prefill(
        &mut self,
        st: &mut MtpState,
        prompt: &[u32],
    ) -> Result<(), EngineError> {
        st.reset();
        self.mtp_prefill_tokens(st, prompt, 0, true)
    }

    /// [`Engine::mtp_prefill`] for a prompt of parts (text and images, see
    /// [`crate::PromptPart`]): each image's rows in a trunk pass of their own, then the
    /// block's pass over them.
    pub(crate) fn mtp_prefill_parts(
        &mut self,
        st: &mut MtpState,
        parts: &[crate::PromptPart],
    ) -> Result<(), EngineError> {
        st.reset();
        let d = self.model.hp.n_embd;
        let mut start = 0;
        for (i, p) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            match *p {
                crate::PromptPart::Tokens(t) => self.mtp_prefill_tokens(st, t, start, last)?,
                crate::PromptPart::Embeddings(rows) => {
                    self.eval_embeddings_then(0, rows, start, last, |e, chunk, at| {
                        e.mtp_after_rows(0, st, chunk, at)
                    })?;
                }
            }
            start += p.len(d);
        }
        Ok(())
    }

    /// Evaluates `prompt` from position `start` chunk by chunk, each trunk pass followed by
    /// the block's; logits of the last token when `logits`.
    fn mtp_prefill_tokens(
        &mut self,
        st: &mut MtpState,
        prompt: &[u32],
        start: usize,
        logits: bool,
    ) -> Result<(), EngineError> {
        let end = start + prompt.len();
        if end > self.n_ctx {
            return Err(EngineError::ContextFull {
                prompt: end,
                generate: 0,
                n_ctx: self.n_ctx,
            });
        }
        let mut start = start;
        for chunk in prompt.chunks(self.n_batch) {
            let last = logits && start + chunk.len() == end;
            let rows = Batch::last_row(chunk.len(), last);
            self.batch.refill(chunk, start as u32, 0, rows);
            self.rope.fill(&mut self.batch, true);
            let model = &self.model;
            self.backend
                .forward(&self.batch, model, crate::backend::Pass::Trunk)?;
            self.mtp_after_chunk(0, st, chunk, start)?;
            start += chunk.len();
        }
        Ok(())
    }

    /// Catches sequence `seq`'s MTP cache up with `history` (whose last token is the next
    /// to verify; `st` kept the hidden states of the sequence's last trunk pass, see
    /// [`Engine::mtp_keep_hidden_rows`]) and proposes up to `k` greedy drafts. Returns the
    /// seconds spent catching up on positions before the last token (left out of the draft
    /// cost).
    pub fn mtp_propose_seq(
        &mut self,
        seq: u32,
        st: &mut MtpState,
        history: &[u32],
        k: usize,
        draft: &mut Draft,
    ) -> Result<f64, SpecError> {
        let p = history.len() - 1;
        if k == 0 {
            return Ok(0.0);
        }
        let d = self.model.hp.n_embd;
        let Some((_, h_out, logits)) = self.model.mtp_acts() else {
            return Ok(0.0);
        };
        // Positions whose input state the last trunk pass has: pass_start + 1 ..= p.
        let from = st.len.max(st.pass_start + 1).min(p);
        let n = p + 1 - from;
        if from <= st.pass_start || p > st.pass_start + st.rows {
            return Err(SpecError::Mtp(
                "the trunk's hidden state of the last position is gone",
            ));
        }
        for (i, pos) in (from..=p).enumerate() {
            let r = pos - 1 - st.pass_start;
            st.h_in[i * d..(i + 1) * d].copy_from_slice(&st.h[r * d..(r + 1) * d]);
        }
        let t = std::time::Instant::now();
        self.mtp_pass(st, seq, &history[from..=p], from, true)?;
        let catch_up = t.elapsed().as_secs_f64() * (n - 1) as f64 / n as f64;
        st.len = p + 1;
        let mut next = crate::sampling::argmax_excluding(self.backend.read(logits, 1)?, &[]);
        draft.tokens.push(next);
        let mut last_row = n - 1;
        for i in 1..k {
            // The block's own output state of the previous step feeds the next.
            let rows = self.backend.read(h_out, last_row + 1)?;
            st.h_in[..d].copy_from_slice(&rows[last_row * d..(last_row + 1) * d]);
            self.mtp_pass(st, seq, &[next], p + i, true)?;
            next = crate::sampling::argmax_excluding(self.backend.read(logits, 1)?, &[]);
            draft.tokens.push(next);
            last_row = 0;
        }
        Ok(catch_up)
    }
}
