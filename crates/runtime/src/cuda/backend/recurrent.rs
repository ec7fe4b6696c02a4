//! The recurrent state on the device: host bookkeeping of which copy is current and how far
//! each sequence is, and rolling a sequence back by replaying its latest inputs.

use cudarc::driver::{result, sys};

use super::launch::{Arg, CudaOps};
use super::memory::DevBuf;
use super::{drv, BackendError, CudaBackend};
use crate::ops::DeltaNet;
use crate::recurrent::{RecurrentConfig, Tracker};
use crate::rollback::{replay_width, ROLLBACK_TOKENS};

/// The recurrent state on the device and its host bookkeeping (the rules shared with the
/// CPU backend: [`Tracker`]).
pub(super) struct RecHost {
    pub(super) cfg: RecurrentConfig,
    /// Which copy is current, the positions each sequence covers, the batch's groups.
    pub(super) t: Tracker,
    pub(super) conv: DevBuf,
    pub(super) ssm: DevBuf,
    pub(super) replay: DevBuf,
    /// Output of replayed delta steps (discarded), and the identity order 0..ROLLBACK.
    pub(super) scratch: DevBuf,
    pub(super) ident: DevBuf,
    /// One group for a rollback.
    pub(super) rb_group: DevBuf,
}

impl RecHost {
    /// The groups of the batch as the kernels read them, six ints each: sequence, first
    /// index in the order, tokens, first position, the copy to read, whether to keep the
    /// inputs.
    pub(super) fn device_groups(&self) -> impl Iterator<Item = [i32; 6]> + '_ {
        self.t.groups.iter().map(|g| {
            [
                g.seq as i32,
                g.start as i32,
                g.n as i32,
                g.p0 as i32,
                self.t.cur[g.seq as usize] as i32,
                g.keeps_inputs() as i32,
            ]
        })
    }
}

impl crate::ops::Rollback for CudaBackend {
    type Error = BackendError;

    /// As the CPU backend: the recurrent state can return to any position of the sequence's
    /// latest batch of up to [`ROLLBACK_TOKENS`] tokens; the KV cache needs nothing.
    fn rollback(&mut self, seq: u32, len: usize) -> Result<(), BackendError> {
        let Some(rec) = &self.rec else {
            return Ok(());
        };
        let s = seq as usize;
        let Some(replay) = rec.t.plan_rollback(seq, len)? else {
            return Ok(());
        };
        self.dev
            .ctx
            .bind_to_thread()
            .map_err(drv("binding the context"))?;
        // Replay from the snapshot (the copy the latest batch read) into the current copy.
        let m = replay.tokens;
        let snapshot = (rec.t.cur[s] ^ 1) as i32;
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
        let n_seq = rec.t.n_seq();
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
        rec.t.win[s].rolled_back(replay);
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
        if rec.t.invalid.is_some() || rec.t.groups.is_empty() {
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
    ) -> Result<RecHost, BackendError> {
        let lens = cfg.state_lens(n_seq);
        let ident: Vec<u32> = (0..ROLLBACK_TOKENS as u32).collect();
        let ib = DevBuf::new(ROLLBACK_TOKENS * 4, "recurrent scratch", stream)?;
        // SAFETY: `ib` holds ROLLBACK_TOKENS u32; the copy from pageable memory is
        // staged before the call returns, ordered after the zeroing on our stream.
        unsafe { result::memcpy_htod_async(ib.ptr, &ident[..], stream) }
            .map_err(drv("uploading the rollback order"))?;
        Ok(RecHost {
            t: Tracker::new(n_seq, max_batch),
            conv: DevBuf::new(lens.conv * 4, "the convolution state", stream)?,
            ssm: DevBuf::new(lens.ssm * 4, "the delta-rule state", stream)?,
            replay: DevBuf::new(lens.replay * 4, "the rollback inputs", stream)?,
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
