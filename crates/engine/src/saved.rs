//! A sequence's state copied to host memory and put back: the KV rows of its first positions
//! and its recurrent state, for the server's prefix cache (evicted prompts, checkpoints).

use std::ops::Range;

use runtime::Layout;

use crate::backend::Backend;
use crate::session::{Engine, EngineError};

impl Backend {
    fn kv_token_bytes(&self) -> usize {
        self.stages().map(|d| d.kv_token_bytes()).sum()
    }

    fn state_bytes(&self) -> usize {
        self.stages().map(|d| d.state_bytes()).sum()
    }
}

impl Engine {
    /// Whether a prompt may resume from a saved prefix at any position and give the same
    /// bits as evaluating it whole: on the CPU, where every token's result is the same in a
    /// prompt chunk of any size or a decode step (repacked matrices, one attention kernel,
    /// the token-by-token delta rule). Elsewhere (a GPU's prompt GEMM rounds by shape, and
    /// the CPU's file-layout matrices take a GEMM for chunks) only at the fixed chunk
    /// offsets a cold prompt is cut at, from positions a prompt chunk computed.
    pub fn resumes_anywhere(&self) -> bool {
        !self.on_gpu()
            && self
                .model
                .matmul_weights()
                .iter()
                .all(|w| w.layout() == Layout::Rows16)
    }

    /// Whether the model keeps recurrent state (which cannot be cut back to an earlier
    /// position: a prefix resumes only where a saved state is).
    pub fn has_recurrent(&self) -> bool {
        self.model.recurrent().is_some()
    }

    /// Bytes [`Engine::save_kv`] writes per position (keys and values of every layer).
    pub fn kv_token_bytes(&self) -> usize {
        self.backend.kv_token_bytes()
    }

    /// Bytes of one saved recurrent state (0 for a model without one).
    pub fn state_bytes(&self) -> usize {
        self.backend.state_bytes()
    }

    /// Appends the KV rows of positions `range` of sequence `seq` to `out`.
    pub fn save_kv(
        &mut self,
        seq: u32,
        range: Range<usize>,
        out: &mut Vec<u8>,
    ) -> Result<(), EngineError> {
        for d in self.backend.stages_mut() {
            d.kv_save(seq, range.clone(), out)?;
        }
        Ok(())
    }

    /// Writes positions `range` of sequence `seq` back from `data` (what [`Engine::save_kv`]
    /// wrote for the same range). The sequence holds no image from there on.
    pub fn load_kv(
        &mut self,
        seq: u32,
        range: Range<usize>,
        data: &[u8],
    ) -> Result<(), EngineError> {
        self.cached.clear();
        self.rope.truncate(seq, range.start as u32);
        let mut at = 0;
        for d in self.backend.stages_mut() {
            at += d.kv_load(seq, range.clone(), &data[at.min(data.len())..])?;
        }
        Ok(())
    }

    /// Appends sequence `seq`'s recurrent state to `out` and returns the positions it
    /// covers (None for a model without recurrent state).
    pub fn save_state(
        &mut self,
        seq: u32,
        out: &mut Vec<u8>,
    ) -> Result<Option<usize>, EngineError> {
        let mut len = None;
        for d in self.backend.stages_mut() {
            if let Some(l) = d.recurrent_len(seq) {
                len = Some(l);
            }
            d.state_save(seq, out)?;
        }
        Ok(len)
    }

    /// Makes `data` (what [`Engine::save_state`] wrote) sequence `seq`'s recurrent state,
    /// covering `len` positions: its next prompt chunk starts at `len`.
    pub fn load_state(&mut self, seq: u32, len: usize, data: &[u8]) -> Result<(), EngineError> {
        self.cached.clear();
        let mut at = 0;
        for d in self.backend.stages_mut() {
            at += d.state_load(seq, len, &data[at.min(data.len())..])?;
        }
        Ok(())
    }
}

impl Engine {
    /// Positions sequence `seq`'s recurrent state covers (None for a model without one).
    pub fn state_len(&self, seq: u32) -> Option<usize> {
        self.backend.stages().find_map(|d| d.recurrent_len(seq))
    }

    /// Copies the KV rows of sequence `src`'s first `len` positions into `dst` (not the
    /// recurrent state: with one, load a saved state after, see [`Engine::load_state`]).
    pub fn copy_kv(&mut self, src: u32, dst: u32, len: usize) -> Result<(), EngineError> {
        if src as usize >= self.n_seq || dst as usize >= self.n_seq || len > self.n_ctx {
            return Err(EngineError::ContextFull {
                prompt: len,
                generate: 0,
                n_ctx: self.n_ctx,
            });
        }
        self.cached.clear();
        self.rope.truncate(dst, 0);
        self.backend.kv_copy(src as usize, dst as usize, len)
    }
}
