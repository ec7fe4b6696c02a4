//! The recurrent state on the device: host bookkeeping of which copy is current and how far
//! each sequence is, and rolling a sequence back by replaying its latest inputs.

use cudarc::driver::{result, sys};

use super::launch::{Arg, CudaOps};
use super::memory::DevBuf;
use super::{drv, CudaBackend, CudaError};
use crate::cpu::RecurrentConfig;
use crate::ops::DeltaNet;
use crate::rollback::{keeps_inputs, replay_width, Window, ROLLBACK_TOKENS};

/// Host-side bookkeeping of the recurrent state (the device holds the state itself): which
/// copy is current, how far each sequence is, and its latest batch for rollbacks. Follows
/// the CPU backend's rules (see `cpu::recurrent`).
pub(super) struct RecHost {
    pub(super) cfg: RecurrentConfig,
    pub(super) cur: Vec<u8>,
    /// Positions each sequence's state covers and its latest batch.
    pub(super) win: Vec<Window>,
    /// Per group: seq, start, n, p0, src copy, keep.
    pub(super) groups: Vec<[i32; 6]>,
    pub(super) order: Vec<u32>,
    pub(super) invalid: Option<CudaError>,
    pub(super) conv: DevBuf,
    pub(super) ssm: DevBuf,
    pub(super) replay: DevBuf,
    /// Output of replayed delta steps (discarded), and the identity order 0..ROLLBACK.
    pub(super) scratch: DevBuf,
    pub(super) ident: DevBuf,
    /// One group for a rollback.
    pub(super) rb_group: DevBuf,
}

pub(super) fn rec_bytes(cfg: &RecurrentConfig, n_seq: usize) -> [usize; 3] {
    let net = &cfg.net;
    let per = |len: usize| cfg.n_layers * n_seq * len * 4;
    [
        per(2 * net.conv_state_len()),
        per(2 * net.state_len()),
        per(ROLLBACK_TOKENS * replay_width(net)),
    ]
}

impl RecHost {
    pub(super) fn group(&mut self, seqs: &[u32], pos: &[u32]) -> Result<(), CudaError> {
        self.groups.clear();
        self.order.clear();
        for (&s, &p) in seqs.iter().zip(pos) {
            match self.groups.iter_mut().find(|g| g[0] as u32 == s) {
                Some(g) => {
                    let next = (g[3] + g[2]) as u32;
                    if p != next {
                        return Err(CudaError::RecurrentPosition {
                            seq: s,
                            pos: p,
                            expected: next,
                        });
                    }
                    g[2] += 1;
                }
                None => {
                    let expected = self.win[s as usize].len();
                    if p != 0 && p != expected {
                        return Err(CudaError::RecurrentPosition {
                            seq: s,
                            pos: p,
                            expected,
                        });
                    }
                    let src = self.cur[s as usize] as i32;
                    self.groups.push([s as i32, 0, 1, p as i32, src, 0]);
                }
            }
        }
        for gi in 0..self.groups.len() {
            let seq = self.groups[gi][0] as u32;
            self.groups[gi][1] = self.order.len() as i32;
            self.groups[gi][5] = keeps_inputs(self.groups[gi][2] as usize) as i32;
            self.order.extend(
                seqs.iter()
                    .enumerate()
                    .filter(|&(_, &s)| s == seq)
                    .map(|(t, _)| t as u32),
            );
        }
        Ok(())
    }

    pub(super) fn prepare(&mut self, seqs: &[u32], pos: &[u32]) {
        self.invalid = self.group(seqs, pos).err();
        if self.invalid.is_some() {
            self.groups.clear();
            self.order.clear();
        }
    }

    pub(super) fn finish(&mut self, touched: bool) -> Result<(), CudaError> {
        if !touched {
            self.groups.clear();
            self.invalid = None;
            return Ok(());
        }
        if let Some(e) = self.invalid.take() {
            return Err(e);
        }
        for g in &self.groups {
            let s = g[0] as usize;
            self.cur[s] ^= 1;
            self.win[s].advance(g[3] as u32, g[2] as u32);
        }
        self.groups.clear();
        Ok(())
    }
}

impl crate::ops::Rollback for CudaBackend {
    type Error = CudaError;

    /// As the CPU backend: the recurrent state can return to any position of the sequence's
    /// latest batch of up to [`ROLLBACK_TOKENS`] tokens; the KV cache needs nothing.
    fn rollback(&mut self, seq: u32, len: usize) -> Result<(), CudaError> {
        let Some(rec) = &self.rec else {
            return Ok(());
        };
        let s = seq as usize;
        if s >= rec.win.len() {
            return Err(CudaError::Rollback {
                seq,
                len,
                reason: format!("there are {} sequences", rec.win.len()),
            });
        }
        let replay = match rec.win[s].plan(len) {
            Ok(None) => return Ok(()),
            Ok(Some(r)) => r,
            Err(reason) => return Err(CudaError::Rollback { seq, len, reason }),
        };
        self.dev
            .ctx
            .bind_to_thread()
            .map_err(drv("binding the context"))?;
        // Replay from the snapshot (the copy the latest batch read) into the current copy.
        let m = replay.tokens;
        let snapshot = (rec.cur[s] ^ 1) as i32;
        let group = [
            seq as i32,
            0,
            m as i32,
            if replay.from_zero { 0 } else { 1 },
            snapshot,
            0,
        ];
        // SAFETY: rb_group holds 6 ints; pageable source staged before return.
        unsafe {
            result::memcpy_htod_async(rec.rb_group.ptr, &group[..], self.dev.stream.cu_stream())
        }
        .map_err(drv("rollback"))?;
        let net = &rec.cfg.net;
        let (ch, nv, hv, hk, nk) = (
            net.conv_channels(),
            net.n_v_heads,
            net.head_v,
            net.head_k,
            net.n_k_heads,
        );
        let rw = replay_width(net);
        let n_seq = rec.win.len();
        for layer in 0..rec.cfg.n_layers {
            let base = rec.replay.ptr + (((layer * n_seq + s) * ROLLBACK_TOKENS) * rw * 4) as u64;
            self.launch_now(
                "conv_shift",
                (ch.div_ceil(128) as u32, 1, 1),
                128,
                &[
                    Arg::P(base),
                    Arg::I(rw as i32),
                    Arg::P(rec.conv.ptr),
                    Arg::P(rec.rb_group.ptr),
                    Arg::I(layer as i32),
                    Arg::I(n_seq as i32),
                    Arg::I(ch as i32),
                    Arg::I(net.conv_kernel.max(1) as i32),
                ],
            )?;
            self.launch_now(
                "gated_delta",
                (hv.div_ceil(16) as u32, nv as u32, 1),
                128,
                &[
                    Arg::P(base + (ch * 4) as u64),
                    Arg::I(rw as i32),
                    Arg::P(base + (2 * ch * 4) as u64),
                    Arg::I(rw as i32),
                    Arg::P(base + ((2 * ch + nv) * 4) as u64),
                    Arg::I(rw as i32),
                    Arg::P(rec.scratch.ptr),
                    Arg::I((nv * hv) as i32),
                    Arg::P(rec.ssm.ptr),
                    Arg::P(0),
                    Arg::P(rec.rb_group.ptr),
                    Arg::P(rec.ident.ptr),
                    Arg::I(layer as i32),
                    Arg::I(n_seq as i32),
                    Arg::I(nk as i32),
                    Arg::I(nv as i32),
                    Arg::I(hk as i32),
                    Arg::I(hv as i32),
                    Arg::F(net.eps),
                    Arg::F(1.0 / (hk as f32).sqrt()),
                    Arg::I(ROLLBACK_TOKENS as i32),
                ],
            )?;
        }
        let rec = self.rec.as_mut().expect("checked above");
        rec.win[s].rolled_back(replay);
        self.synchronize()
    }
}

impl CudaOps<'_> {
    /// The recurrent state for an op on `layer`, noting that the pass uses it; `None` (and
    /// nothing to launch) when the batch cannot advance it (the pass then fails).
    pub(super) fn rec(&self, op: &str, layer: usize, net: &DeltaNet) -> Option<&RecHost> {
        self.touched.set(true);
        let Some(rec) = self.be.rec.as_ref() else {
            self.fail(op, "the backend was made without recurrent state".into());
            return None;
        };
        if layer >= rec.cfg.n_layers || *net != rec.cfg.net {
            self.fail(
                op,
                format!(
                    "recurrent layer {layer} of shape {net:?}; the backend holds {} layers of \
                     {:?}",
                    rec.cfg.n_layers, rec.cfg.net
                ),
            );
            return None;
        }
        if rec.invalid.is_some() || rec.groups.is_empty() {
            return None;
        }
        Some(rec)
    }
}

impl RecHost {
    /// The state of `cfg`'s layers for `n_seq` sequences and batches of up to `max_batch`
    /// tokens, zeroed on `stream`.
    pub(super) fn new(
        cfg: RecurrentConfig,
        n_seq: usize,
        max_batch: usize,
        stream: sys::CUstream,
    ) -> Result<RecHost, CudaError> {
        let [c, m, r] = rec_bytes(&cfg, n_seq);
        let ident: Vec<u32> = (0..ROLLBACK_TOKENS as u32).collect();
        let ib = DevBuf::new(ROLLBACK_TOKENS * 4, "recurrent scratch", stream)?;
        // SAFETY: `ib` holds ROLLBACK_TOKENS u32; the copy from pageable memory is
        // staged before the call returns, ordered after the zeroing on our stream.
        unsafe { result::memcpy_htod_async(ib.ptr, &ident[..], stream) }
            .map_err(drv("uploading the rollback order"))?;
        Ok(RecHost {
            cur: vec![0; n_seq],
            win: vec![Window::default(); n_seq],
            groups: Vec::with_capacity(max_batch),
            order: Vec::with_capacity(max_batch),
            invalid: None,
            conv: DevBuf::new(c, "the convolution state", stream)?,
            ssm: DevBuf::new(m, "the delta-rule state", stream)?,
            replay: DevBuf::new(r, "the rollback inputs", stream)?,
            scratch: DevBuf::new(
                ROLLBACK_TOKENS * cfg.net.value_dim() * 4,
                "recurrent scratch",
                stream,
            )?,
            ident: ib,
            rb_group: DevBuf::new(6 * 4, "recurrent scratch", stream)?,
            cfg,
        })
    }
}
