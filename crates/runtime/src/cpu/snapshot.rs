//! Copies of one sequence's KV-cache rows and recurrent state to and from host bytes, for a
//! prefix cache that keeps evicted prompts and recurrent checkpoints.

use std::ops::Range;

use super::CpuBackend;
use crate::error::BackendError;

impl CpuBackend {
    /// Bytes of one position's keys and values over every layer.
    pub fn kv_token_bytes(&self) -> usize {
        self.kv.saved_bytes(1)
    }

    /// Appends the keys and values of positions `range` of `seq` to `out` (see
    /// [`crate::Device::kv_save`]).
    pub fn kv_save(
        &mut self,
        seq: u32,
        range: Range<usize>,
        out: &mut Vec<u8>,
    ) -> Result<(), BackendError> {
        self.kv.check_saved(seq, &range, None)?;
        let c = &self.kv;
        for layer in 0..c.n_layers {
            for (buf, stride) in [(&mut self.k, self.k_stride), (&mut self.v, self.v_stride)] {
                let base = (layer * c.n_seq + seq as usize) * c.n_ctx * stride;
                out.extend_from_slice(
                    &buf.as_slice()[base + range.start * stride..base + range.end * stride],
                );
            }
        }
        Ok(())
    }

    /// Writes positions `range` of `seq` back from `data` (see [`crate::Device::kv_load`]).
    pub fn kv_load(
        &mut self,
        seq: u32,
        range: Range<usize>,
        data: &[u8],
    ) -> Result<usize, BackendError> {
        self.kv.check_saved(seq, &range, Some(data.len()))?;
        let c = &self.kv;
        let mut at = 0;
        for layer in 0..c.n_layers {
            for (buf, stride) in [(&mut self.k, self.k_stride), (&mut self.v, self.v_stride)] {
                let base = (layer * c.n_seq + seq as usize) * c.n_ctx * stride;
                let n = range.len() * stride;
                buf.as_mut_slice()[base + range.start * stride..][..n]
                    .copy_from_slice(&data[at..at + n]);
                at += n;
            }
        }
        Ok(at)
    }

    /// Bytes of one sequence's recurrent state (0 without recurrent layers).
    pub fn state_bytes(&self) -> usize {
        self.rec.as_ref().map_or(0, |r| r.config().seq_bytes())
    }

    /// Appends `seq`'s current recurrent state to `out` (see [`crate::Device::state_save`]).
    pub fn state_save(&mut self, seq: u32, out: &mut Vec<u8>) -> Result<(), BackendError> {
        match &mut self.rec {
            None => Ok(()),
            Some(rec) => rec.save(seq, out),
        }
    }

    /// Makes `data` the state of `seq` at `len` positions (see
    /// [`crate::Device::state_load`]).
    pub fn state_load(&mut self, seq: u32, len: usize, data: &[u8]) -> Result<usize, BackendError> {
        if len > self.kv.n_ctx {
            return Err(BackendError::Op {
                op: "state_load".into(),
                reason: format!("{len} positions of {}", self.kv.n_ctx),
            });
        }
        match &mut self.rec {
            None => Ok(0),
            Some(rec) => rec.load(seq, len, data),
        }
    }
}
