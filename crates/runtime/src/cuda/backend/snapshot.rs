//! Copies of one sequence's KV-cache rows and recurrent state between the device and host
//! bytes, for a prefix cache that keeps evicted prompts and recurrent checkpoints.

use std::ops::Range;

use cudarc::driver::result;

use super::memory::DevBuf;
use super::{drv, BackendError, CudaBackend};

impl CudaBackend {
    /// Bytes of one position's keys and values over every layer on this GPU.
    pub fn kv_token_bytes(&self) -> usize {
        self.kv.saved_bytes(1)
    }

    /// Appends the keys and values of positions `range` of `seq` to `out` (see
    /// [`crate::Device::kv_save`]); waits for the copies.
    pub fn kv_save(
        &mut self,
        seq: u32,
        range: Range<usize>,
        out: &mut Vec<u8>,
    ) -> Result<(), BackendError> {
        self.kv.check_saved(seq, &range, None)?;
        self.bind()?;
        let start = out.len();
        out.resize(start + self.kv.saved_bytes(range.len()), 0);
        let mut at = start;
        for (buf, off, n) in self.kv_spans(seq, &range) {
            // SAFETY: the span lies inside the cache buffer (checked range of a checked
            // sequence) and `out[at..at + n]` inside the vector; the copy completes before
            // the synchronization below returns.
            unsafe {
                result::memcpy_dtoh_async(
                    &mut out[at..at + n],
                    buf + off,
                    self.dev.stream.cu_stream(),
                )
            }
            .map_err(drv("kv_save"))?;
            at += n;
        }
        self.synchronize()
    }

    /// Writes positions `range` of `seq` back from `data` (see [`crate::Device::kv_load`]).
    pub fn kv_load(
        &mut self,
        seq: u32,
        range: Range<usize>,
        data: &[u8],
    ) -> Result<usize, BackendError> {
        self.kv.check_saved(seq, &range, Some(data.len()))?;
        self.bind()?;
        let mut at = 0;
        for (buf, off, n) in self.kv_spans(seq, &range) {
            // SAFETY: as in kv_save, the other way; the source stays borrowed until the
            // synchronization below.
            unsafe {
                result::memcpy_htod_async(buf + off, &data[at..at + n], self.dev.stream.cu_stream())
            }
            .map_err(drv("kv_load"))?;
            at += n;
        }
        self.synchronize()?;
        Ok(at)
    }

    /// Per layer, keys then values: (buffer, byte offset, bytes) of `seq`'s positions
    /// `range` (layout `[layer][seq][position][row]`).
    fn kv_spans(&self, seq: u32, range: &Range<usize>) -> Vec<(u64, u64, usize)> {
        let c = &self.kv;
        let mut spans = Vec::with_capacity(2 * c.n_layers);
        for layer in 0..c.n_layers {
            for (buf, ty) in [(&self.kc, c.k_type), (&self.vc, c.v_type)] {
                let row = ty.row_bytes(c.kv_dim);
                let first = (layer * c.n_seq + seq as usize) * c.n_ctx + range.start;
                spans.push((buf.ptr, (first * row) as u64, range.len() * row));
            }
        }
        spans
    }

    /// Bytes of one sequence's recurrent state (0 without recurrent layers).
    pub fn state_bytes(&self) -> usize {
        self.rec.as_ref().map_or(0, |r| r.cfg.seq_bytes())
    }

    /// Appends `seq`'s current recurrent state to `out` (see
    /// [`crate::Device::state_save`]); waits for the copies.
    pub fn state_save(&mut self, seq: u32, out: &mut Vec<u8>) -> Result<(), BackendError> {
        let Some(spans) = self.state_spans(seq)? else {
            return Ok(());
        };
        self.bind()?;
        let start = out.len();
        out.resize(start + self.state_bytes(), 0);
        let mut at = start;
        for (ptr, n) in spans {
            // SAFETY: the span is the sequence's current copy inside the state buffer; the
            // copy completes before the synchronization below returns.
            unsafe {
                result::memcpy_dtoh_async(&mut out[at..at + n], ptr, self.dev.stream.cu_stream())
            }
            .map_err(drv("state_save"))?;
            at += n;
        }
        self.synchronize()
    }

    /// Makes `data` the state of `seq` at `len` positions (see
    /// [`crate::Device::state_load`]).
    pub fn state_load(&mut self, seq: u32, len: usize, data: &[u8]) -> Result<usize, BackendError> {
        let Some(spans) = self.state_spans(seq)? else {
            return Ok(0);
        };
        let need = self.state_bytes();
        if data.len() < need || len > self.kv.n_ctx {
            return Err(BackendError::Op {
                op: "state_load".into(),
                reason: format!("{} bytes for {need}, {len} positions", data.len()),
            });
        }
        self.bind()?;
        let mut at = 0;
        for (ptr, n) in spans {
            // SAFETY: as in state_save, the other way; `data` outlives the synchronization.
            unsafe {
                result::memcpy_htod_async(ptr, &data[at..at + n], self.dev.stream.cu_stream())
            }
            .map_err(drv("state_load"))?;
            at += n;
        }
        self.synchronize()?;
        if let Some(rec) = self.rec.as_mut() {
            rec.t.restored(seq, len);
        }
        Ok(at)
    }

    /// Per layer, the convolution history then the delta-rule state of `seq`'s current
    /// copy: (device address, bytes). None without recurrent layers.
    fn state_spans(&self, seq: u32) -> Result<Option<Vec<(u64, usize)>>, BackendError> {
        let Some(rec) = &self.rec else {
            return Ok(None);
        };
        if seq as usize >= rec.t.n_seq() {
            return Err(BackendError::Op {
                op: "state_save/state_load".into(),
                reason: format!("sequence {seq} of {}", rec.t.n_seq()),
            });
        }
        let n_seq = rec.t.n_seq();
        let copy = rec.t.cur[seq as usize] as usize;
        let (nc, ns) = (rec.cfg.net.conv_state_len(), rec.cfg.net.state_len());
        let at = |b: &DevBuf, layer: usize, len: usize| {
            let i = ((layer * n_seq + seq as usize) * 2 + copy) * len;
            (b.ptr + (i * 4) as u64, len * 4)
        };
        Ok(Some(
            (0..rec.cfg.n_layers)
                .flat_map(|l| [at(&rec.conv, l, nc), at(&rec.ssm, l, ns)])
                .collect(),
        ))
    }

    /// Makes the context current on this thread.
    fn bind(&self) -> Result<(), BackendError> {
        self.dev
            .ctx
            .bind_to_thread()
            .map_err(drv("binding the context"))
    }
}
