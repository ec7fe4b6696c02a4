//! Multi-sequence stepping for continuous batching: one forward pass decodes a token for each
//! of several sequences, and prompts are prefilled one fixed-offset chunk at a time.

use runtime::Batch;

use crate::session::{Engine, EngineError, ImageRows};

/// One sequence's next token in a decode step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeItem {
    /// KV-cache slot of the sequence (below [`Engine::n_seq`]).
    pub seq: u32,
    /// The token to evaluate.
    pub token: u32,
    /// Its position in the sequence.
    pub pos: u32,
}

impl Engine {
    /// A second tokenizer for the model file at `path` (the tokenizer is not `Clone`; a
    /// server tokenizes requests on other threads than the one that owns the engine).
    pub fn tokenizer_from_file(
        path: &std::path::Path,
    ) -> Result<tokenizer::Tokenizer, EngineError> {
        let file = gguf::Gguf::open(path).map_err(|source| EngineError::File {
            path: path.display().to_string(),
            source,
        })?;
        Ok(tokenizer::Tokenizer::from_metadata(file.metadata())?)
    }

    /// Sequences the KV cache holds at once.
    pub fn n_seq(&self) -> usize {
        self.n_seq
    }

    /// Most tokens one forward pass evaluates.
    pub fn n_batch(&self) -> usize {
        self.n_batch
    }

    /// Most tokens of one pass that may produce logits (the widest decode step).
    pub fn max_logit_rows(&self) -> usize {
        self.max_logit_rows
    }

    /// Vocabulary size (the width of a logit row).
    pub fn n_vocab(&self) -> usize {
        self.model.hp.n_vocab
    }

    /// Evaluates one token for each item in ONE forward pass (at most `max_logit_rows` items)
    /// and returns their logit rows, `n_vocab` values each, in order.
    ///
    /// Items of the same sequence at consecutive positions (its last token and drafted ones,
    /// for speculative decoding) are fine: every token sees the keys and values of its
    /// sequence up to its own position, those of the same step included.
    ///
    /// A token's logits do not depend on the other items: the batch goes through the
    /// per-token (8-bit activation) matmul path, unless it is a single sequence of
    /// [`runtime::GEMM_MIN_TOKENS`] or more consecutive tokens (a prompt chunk, computed
    /// with different rounding): callers keep one sequence's items in a step below that
    /// (at most [`crate::speculative::MAX_DRAFT`] drafts and the last token).
    pub fn decode_step(&mut self, items: &[DecodeItem]) -> Result<&[f32], EngineError> {
        if items.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        let limit = self.max_logit_rows.min(self.n_batch);
        if items.len() > limit {
            return Err(EngineError::ContextFull {
                prompt: items.len(),
                generate: 0,
                n_ctx: limit,
            });
        }
        for it in items {
            if it.seq as usize >= self.n_seq || it.pos as usize >= self.n_ctx {
                return Err(EngineError::ContextFull {
                    prompt: it.pos as usize + 1,
                    generate: 0,
                    n_ctx: self.n_ctx,
                });
            }
        }
        // Sequence 0 may be overwritten: forget the prefix `generate` would reuse.
        self.cached.clear();
        let b = &mut self.batch;
        b.tokens.clear();
        b.pos.clear();
        b.seq.clear();
        b.logits.clear();
        for (i, it) in items.iter().enumerate() {
            b.tokens.push(it.token);
            b.pos.push(it.pos);
            b.seq.push(it.seq);
            b.logits.push(i as u32);
        }
        self.rope.fill(&mut self.batch, true);
        let model = &self.model;
        self.backend
            .forward(&self.batch, model, crate::backend::Pass::Trunk)?;
        self.backend.read(self.model.acts.logits, items.len())
    }

    /// Brings sequence `seq` back to its state after its first `len` positions, after a
    /// verification step ([`Engine::decode_step`] with drafts) whose later tokens were
    /// rejected: `len` may be any position from the step's first token to its end. The next
    /// step of that sequence then starts at position `len`. A no-op for models whose only
    /// per-sequence state is the KV cache.
    pub fn rollback(&mut self, seq: u32, len: usize) -> Result<(), EngineError> {
        self.model.rollback(&mut self.backend, seq, len)
    }

    /// Whether [`Engine::copy_sequence`] can copy a sequence: models whose only
    /// per-sequence state is the KV cache (not recurrent ones).
    pub fn can_copy_sequences(&self) -> bool {
        !self.has_recurrent()
    }

    /// Makes sequence `dst` continue from sequence `src`'s first `len` positions (its KV
    /// cache copied), as if `dst` had evaluated the same tokens: several answers to one
    /// prompt share its evaluation. Only for models whose only per-sequence state is the KV
    /// cache ([`Engine::can_copy_sequences`]).
    pub fn copy_sequence(&mut self, src: u32, dst: u32, len: usize) -> Result<(), EngineError> {
        if !self.can_copy_sequences() {
            return Err(EngineError::Unsupported(
                "copying a sequence of a model with recurrent state".into(),
            ));
        }
        self.copy_kv(src, dst, len)
    }

    /// Evaluates one prompt chunk (at most `n_batch` tokens) of sequence `seq` from position
    /// `start` in one pass; with `logits`, returns the logit row of its last token.
    ///
    /// For results that do not depend on load, callers cut prompts at fixed offsets from
    /// position 0 (see [`prefill_chunks`]).
    pub fn prefill_chunk(
        &mut self,
        seq: u32,
        tokens: &[u32],
        start: usize,
        logits: bool,
    ) -> Result<Option<&[f32]>, EngineError> {
        if tokens.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        if seq as usize >= self.n_seq
            || start + tokens.len() > self.n_ctx
            || tokens.len() > self.n_batch
        {
            return Err(EngineError::ContextFull {
                prompt: start + tokens.len(),
                generate: 0,
                n_ctx: self.n_ctx,
            });
        }
        self.cached.clear();
        let rows = Batch::last_row(tokens.len(), logits);
        self.batch.refill(tokens, start as u32, seq, rows);
        self.rope.fill(&mut self.batch, true);
        let model = &self.model;
        self.backend
            .forward(&self.batch, model, crate::backend::Pass::Trunk)?;
        if !logits {
            return Ok(None);
        }
        self.backend.read(self.model.acts.logits, 1).map(Some)
    }

    /// [`Engine::prefill_chunk`] for input rows (an image's embeddings, `n × n_embd`
    /// values) of sequence `seq` from position `start` (see [`ImageRows`]; causal rows past
    /// n_batch go in several passes). With `mtp`, the MTP block's pass follows each trunk
    /// pass over the same rows (its cache entries). With `logits`, returns the last row's
    /// logits.
    pub fn prefill_embeddings(
        &mut self,
        seq: u32,
        rows: ImageRows,
        start: usize,
        logits: bool,
        mtp: Option<&mut crate::mtp::MtpState>,
    ) -> Result<Option<&[f32]>, EngineError> {
        if seq as usize >= self.n_seq {
            return Err(EngineError::Embeddings(format!(
                "sequence {seq} is past the {} held",
                self.n_seq
            )));
        }
        match mtp {
            Some(st) => self.eval_embeddings_then(seq, rows, start, logits, |e, chunk, at| {
                e.mtp_after_rows(seq, st, chunk, at)
            })?,
            None => self.eval_embeddings(seq, rows, start, logits)?,
        };
        if !logits {
            return Ok(None);
        }
        self.backend.read(self.model.acts.logits, 1).map(Some)
    }
}

/// The chunk of a prompt of `len` tokens that starts at `done`, for chunks of `chunk` tokens
/// cut at fixed offsets from position 0: `done..end`.
pub fn prefill_chunks(done: usize, len: usize, chunk: usize) -> std::ops::Range<usize> {
    let chunk = chunk.max(1);
    let end = ((done / chunk) + 1) * chunk;
    done..end.min(len)
}

/// Engines move to the scheduler's thread.
#[allow(dead_code)]
fn assert_send() {
    fn is_send<T: Send>() {}
    is_send::<Engine>();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_cut_at_fixed_offsets() {
        assert_eq!(prefill_chunks(0, 300, 128), 0..128);
        assert_eq!(prefill_chunks(128, 300, 128), 128..256);
        assert_eq!(prefill_chunks(256, 300, 128), 256..300);
        assert_eq!(prefill_chunks(0, 5, 128), 0..5);
    }
}
