//! Recurrent state of Gated DeltaNet layers on the CPU: per layer and sequence, the
//! convolution state (the last K − 1 inputs of every channel) and the delta-rule state (a
//! `head_v × head_k` matrix per value head), the operations that read and advance them, and
//! rollback for speculative decoding.
//!
//! Every state exists twice per (layer, sequence). A forward pass reads a sequence's current
//! copy and writes the other one, which becomes current when the pass ends; the copy it read
//! is left as it was, a snapshot of the state before the sequence's latest batch. For batches
//! of up to [`ROLLBACK_TOKENS`] tokens of a sequence, the pass also keeps each token's inputs
//! to the recurrence; rolling back to a position inside that batch makes the snapshot current
//! again and replays the kept inputs up to that position with the kernels of the forward
//! pass, so the result is bit for bit the state a pass over those tokens alone leaves.

use std::sync::atomic::{AtomicBool, Ordering};

use super::{kernels, CpuBackend, CpuOps, Shared};
use crate::error::BackendError;
use crate::ops::{Act, DeltaNet};
use crate::pool::ThreadPool;
use crate::recurrent::{RecurrentConfig, Tracker};
use crate::rollback::replay_width;
pub use crate::rollback::ROLLBACK_TOKENS;

/// State of every recurrent layer for every sequence.
pub(crate) struct Recurrent {
    cfg: RecurrentConfig,
    n_seq: usize,
    /// `[layer][seq][copy][channel][K − 1]`.
    conv: Shared<f32>,
    /// `[layer][seq][copy][value head][head_v][head_k]`.
    ssm: Shared<f32>,
    /// `[layer][seq][token of the latest batch][replay_width]`.
    replay: Shared<f32>,
    /// Which copy is current, the positions each sequence covers, the batch's groups.
    t: Tracker,
    scratch: Shared<f32>,
    scratch_per_thread: usize,
    /// Whether the current pass ran a recurrent op.
    touched: AtomicBool,
}

impl Recurrent {
    pub(crate) fn new(
        cfg: RecurrentConfig,
        n_seq: usize,
        max_batch: usize,
        n_threads: usize,
    ) -> Recurrent {
        let net = &cfg.net;
        let scratch_per_thread = net.conv_channels() + 2 * net.head_k + net.head_v + 16;
        let lens = cfg.state_lens(n_seq);
        Recurrent {
            conv: Shared::new(lens.conv),
            ssm: Shared::new(lens.ssm),
            replay: Shared::new(lens.replay),
            t: Tracker::new(n_seq, max_batch),
            scratch: Shared::new(scratch_per_thread * n_threads),
            scratch_per_thread,
            touched: AtomicBool::new(false),
            n_seq,
            cfg,
        }
    }

    pub(crate) fn config(&self) -> &RecurrentConfig {
        &self.cfg
    }

    /// Positions the state of `seq` covers.
    pub(crate) fn seq_len(&self, seq: u32) -> Option<usize> {
        self.t.seq_len(seq)
    }

    fn conv_at(&self, layer: usize, seq: u32, copy: u8) -> usize {
        ((layer * self.n_seq + seq as usize) * 2 + copy as usize) * self.cfg.net.conv_state_len()
    }

    fn ssm_at(&self, layer: usize, seq: u32, copy: u8) -> usize {
        ((layer * self.n_seq + seq as usize) * 2 + copy as usize) * self.cfg.net.state_len()
    }

    fn replay_at(&self, layer: usize, seq: u32, token: usize) -> usize {
        ((layer * self.n_seq + seq as usize) * ROLLBACK_TOKENS + token)
            * replay_width(&self.cfg.net)
    }

    /// Before a pass: groups the batch's tokens by sequence. A pass that runs recurrent ops
    /// fails ([`Recurrent::finish`]) unless each sequence continues where its state is (or
    /// starts over at position 0) at consecutive positions.
    pub(crate) fn prepare(&mut self, seqs: &[u32], pos: &[u32]) {
        *self.touched.get_mut() = false;
        self.t.prepare(seqs, pos);
    }

    /// After a pass: the copies it wrote become current. A pass that ran no recurrent op (a
    /// multi-token-prediction block alone) leaves the state as it was.
    pub(crate) fn finish(&mut self) -> Result<(), BackendError> {
        self.t.finish(*self.touched.get_mut())
    }

    /// The current copy of `seq`'s state: per layer, its convolution history then its
    /// delta-rule state, as ranges of `conv` and `ssm`.
    fn current(&self, seq: u32) -> Result<Vec<(usize, usize)>, BackendError> {
        if seq as usize >= self.n_seq {
            return Err(BackendError::Op {
                op: "state_save/state_load".into(),
                reason: format!("sequence {seq} of {}", self.n_seq),
            });
        }
        let copy = self.t.cur[seq as usize];
        Ok((0..self.cfg.n_layers)
            .map(|l| (self.conv_at(l, seq, copy), self.ssm_at(l, seq, copy)))
            .collect())
    }

    /// Appends `seq`'s current state to `out` (f32, native byte order).
    pub(crate) fn save(&mut self, seq: u32, out: &mut Vec<u8>) -> Result<(), BackendError> {
        let (nc, ns) = (self.cfg.net.conv_state_len(), self.cfg.net.state_len());
        for (c, s) in self.current(seq)? {
            for x in &self.conv.as_slice()[c..c + nc] {
                out.extend_from_slice(&x.to_ne_bytes());
            }
            for x in &self.ssm.as_slice()[s..s + ns] {
                out.extend_from_slice(&x.to_ne_bytes());
            }
        }
        Ok(())
    }

    /// Makes the front of `data` (what [`Recurrent::save`] wrote) `seq`'s current state,
    /// covering `len` positions; returns the bytes taken.
    pub(crate) fn load(
        &mut self,
        seq: u32,
        len: usize,
        data: &[u8],
    ) -> Result<usize, BackendError> {
        let need = self.cfg.seq_bytes();
        if data.len() < need {
            return Err(BackendError::Op {
                op: "state_load".into(),
                reason: format!("{} bytes for {need}", data.len()),
            });
        }
        let (nc, ns) = (self.cfg.net.conv_state_len(), self.cfg.net.state_len());
        let mut vals = data[..need]
            .chunks_exact(4)
            .map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
        for (c, s) in self.current(seq)? {
            for (x, v) in self.conv.as_mut_slice()[c..c + nc]
                .iter_mut()
                .zip(&mut vals)
            {
                *x = v;
            }
            for (x, v) in self.ssm.as_mut_slice()[s..s + ns].iter_mut().zip(&mut vals) {
                *x = v;
            }
        }
        self.t.restored(seq, len);
        Ok(need)
    }

    /// Brings `seq` back to its state after `len` positions (see the module doc).
    pub(crate) fn rollback(
        &mut self,
        pool: &ThreadPool,
        seq: u32,
        len: usize,
    ) -> Result<(), BackendError> {
        let s = seq as usize;
        let Some(replay) = self.t.plan_rollback(seq, len)? else {
            return Ok(());
        };
        self.t.cur[s] ^= 1;
        let copy = self.t.cur[s];
        let m = replay.tokens;
        let this = &*self;
        let net = &this.cfg.net;
        let (k1, ch) = (net.conv_kernel.max(1) - 1, net.conv_channels());
        let (nk, nv, hk, hv) = (net.n_k_heads, net.n_v_heads, net.head_k, net.head_v);
        let scale = 1.0 / (hk as f32).sqrt();
        pool.run(|w| {
            // SAFETY: each thread takes its own scratch slice.
            let scratch = unsafe {
                this.scratch
                    .get_mut(w.ith() * this.scratch_per_thread, this.scratch_per_thread)
            };
            let (qn, rest) = scratch.split_at_mut(hk);
            let (kn, rest) = rest.split_at_mut(hk);
            let o = &mut rest[..hv];
            for layer in w.split(this.cfg.n_layers) {
                // SAFETY: whole layers of `seq`'s current copy belong to one thread each;
                // the kept inputs are only read.
                unsafe {
                    let conv = this.conv.get_mut(this.conv_at(layer, seq, copy), k1 * ch);
                    let st = this
                        .ssm
                        .get_mut(this.ssm_at(layer, seq, copy), net.state_len());
                    if replay.from_zero {
                        conv.fill(0.0);
                        st.fill(0.0);
                    }
                    for t in 0..m {
                        let rep = this
                            .replay
                            .get(this.replay_at(layer, seq, t), replay_width(net));
                        let (x, rest) = rep.split_at(ch);
                        let (co, gb) = rest.split_at(ch);
                        if k1 > 0 {
                            for (c, &xv) in x.iter().enumerate() {
                                let hist = &mut conv[c * k1..(c + 1) * k1];
                                hist.copy_within(1.., 0);
                                hist[k1 - 1] = xv;
                            }
                        }
                        for h in 0..nv {
                            let kh = h % nk;
                            kernels::l2_normalize(&co[kh * hk..][..hk], net.eps, scale, qn);
                            kernels::l2_normalize(&co[(nk + kh) * hk..][..hk], net.eps, 1.0, kn);
                            let v = &co[2 * nk * hk + h * hv..][..hv];
                            let sh = &mut st[h * hv * hk..(h + 1) * hv * hk];
                            kernels::delta_step(sh, qn, kn, v, gb[h], gb[nv + h], o);
                        }
                    }
                }
            }
        });
        self.t.win[s].rolled_back(replay);
        Ok(())
    }
}

impl CpuBackend {
    /// Adds the state of `cfg.n_layers` Gated DeltaNet layers for every sequence of the KV
    /// cache (allocated now, as everything else).
    pub fn with_recurrent(mut self, cfg: RecurrentConfig) -> CpuBackend {
        let n_threads = self.pool.n_threads();
        self.rec = Some(Recurrent::new(
            cfg,
            self.kv.n_seq,
            self.max_batch,
            n_threads,
        ));
        self
    }

    /// Makes this backend hold the state of the model's KV-cache layers from `kv` and
    /// recurrent layers from `rec` on (the blocks of a later device of a split model): its
    /// [`KvConfig::n_layers`] and [`RecurrentConfig::n_layers`] count from there.
    pub fn with_first_layers(mut self, kv: usize, rec: usize) -> CpuBackend {
        self.first = (kv, rec);
        self
    }

    /// The recurrent layers this backend keeps state for, if any.
    pub fn recurrent_config(&self) -> Option<&RecurrentConfig> {
        self.rec.as_ref().map(Recurrent::config)
    }

    /// Positions the recurrent state of `seq` covers (`None` without recurrent layers).
    pub fn recurrent_len(&self, seq: u32) -> Option<usize> {
        self.rec.as_ref().and_then(|r| r.seq_len(seq))
    }
}

impl crate::ops::Rollback for CpuBackend {
    type Error = BackendError;

    /// KV-cache entries past `len` are never read before being written again, so only the
    /// recurrent state needs work; it can return to any position of the sequence's latest
    /// batch of up to [`ROLLBACK_TOKENS`] tokens.
    fn rollback(&mut self, seq: u32, len: usize) -> Result<(), BackendError> {
        match &mut self.rec {
            None => Ok(()),
            Some(rec) => rec.rollback(&self.pool, seq, len),
        }
    }
}

impl CpuOps<'_> {
    /// The recurrent state, noting that this pass uses it.
    fn rec(&self) -> &Recurrent {
        let r = self
            .be
            .rec
            .as_ref()
            .expect("a recurrent op on a CPU backend made without with_recurrent");
        r.touched.store(true, Ordering::Relaxed);
        r
    }

    /// This thread's scratch for the recurrent ops.
    #[allow(clippy::mut_from_ref)]
    fn rec_scratch(&self) -> &mut [f32] {
        let r = self.rec();
        // SAFETY: each thread touches only its own slice (indexed by its thread number).
        unsafe {
            r.scratch
                .get_mut(self.w.ith() * r.scratch_per_thread, r.scratch_per_thread)
        }
    }

    /// [`crate::Ops::conv_silu`]: each thread takes a range of channels of every token.
    pub(super) fn conv_silu_impl(&self, layer: usize, x: Act, w: &[f32], net: &DeltaNet, out: Act) {
        let r = self.rec();
        let (xs, os) = (self.be.act(x), self.be.act(out));
        let (k, ch) = (net.conv_kernel.max(1), net.conv_channels());
        let k1 = k - 1;
        let mine = self.w.split(ch);
        let (c0, nc) = (mine.start, mine.len());
        for g in &r.t.groups {
            let cur = r.t.cur[g.seq as usize];
            // SAFETY: this thread alone writes channels c0..c0+nc of the sequence's other
            // copy, of the kept inputs and of `out`; the current copy and x are only read.
            unsafe {
                let dst = r
                    .conv
                    .get_mut(r.conv_at(layer, g.seq, cur ^ 1) + c0 * k1, nc * k1);
                if g.p0 == 0 {
                    dst.fill(0.0);
                } else {
                    dst.copy_from_slice(
                        r.conv.get(r.conv_at(layer, g.seq, cur) + c0 * k1, nc * k1),
                    );
                }
                for i in 0..g.n as usize {
                    let t = r.t.order[g.start as usize + i] as usize;
                    let xr = xs.get(t * x.width + c0, nc);
                    let or = os.get_mut(t * out.width + c0, nc);
                    for (j, (o, &xv)) in or.iter_mut().zip(xr).enumerate() {
                        let c = c0 + j;
                        let y = kernels::conv_step(
                            &w[c * k..(c + 1) * k],
                            &mut dst[j * k1..(j + 1) * k1],
                            xv,
                        );
                        *o = kernels::silu(y);
                    }
                    if g.keeps_inputs() {
                        let at = r.replay_at(layer, g.seq, i);
                        r.replay.get_mut(at + c0, nc).copy_from_slice(xr);
                        r.replay.get_mut(at + ch + c0, nc).copy_from_slice(or);
                    }
                }
            }
        }
        self.done(out);
    }

    /// [`crate::Ops::gated_delta`]: each thread takes (sequence, value head) pairs.
    pub(super) fn gated_delta_impl(
        &self,
        layer: usize,
        qkv: Act,
        g: Act,
        beta: Act,
        net: &DeltaNet,
        out: Act,
    ) {
        let r = self.rec();
        let (xs, gs, bs, os) = (
            self.be.act(qkv),
            self.be.act(g),
            self.be.act(beta),
            self.be.act(out),
        );
        let (nk, nv, hk, hv) = (net.n_k_heads, net.n_v_heads, net.head_k, net.head_v);
        let ch = net.conv_channels();
        let scale = 1.0 / (hk as f32).sqrt();
        let scratch = self.rec_scratch();
        self.rows(r.t.groups.len() * nv, |item| {
            let (grp, h) = (&r.t.groups[item / nv], item % nv);
            let kh = h % nk;
            let cur = r.t.cur[grp.seq as usize];
            let sl = hv * hk;
            // SAFETY: this thread alone owns head h of the group's sequence: its state in
            // the other copy, its columns of `out`, its g and β among the kept inputs. The
            // current copy and the inputs are only read.
            unsafe {
                let st = r
                    .ssm
                    .get_mut(r.ssm_at(layer, grp.seq, cur ^ 1) + h * sl, sl);
                if grp.p0 == 0 {
                    st.fill(0.0);
                } else {
                    st.copy_from_slice(r.ssm.get(r.ssm_at(layer, grp.seq, cur) + h * sl, sl));
                }
                let tok = |i: usize| r.t.order[grp.start as usize + i] as usize;
                if grp.keeps_inputs() {
                    for i in 0..grp.n as usize {
                        let at = r.replay_at(layer, grp.seq, i) + 2 * ch;
                        r.replay.set(at + h, gs.get(tok(i) * g.width + h, 1)[0]);
                        r.replay
                            .set(at + nv + h, bs.get(tok(i) * beta.width + h, 1)[0]);
                    }
                }
                let (qn, rest) = scratch.split_at_mut(hk);
                let kn = &mut rest[..hk];
                for i in 0..grp.n as usize {
                    let t = tok(i);
                    let row = xs.get(t * qkv.width, ch);
                    kernels::l2_normalize(&row[kh * hk..][..hk], net.eps, scale, qn);
                    kernels::l2_normalize(&row[(nk + kh) * hk..][..hk], net.eps, 1.0, kn);
                    let v = &row[2 * nk * hk + h * hv..][..hv];
                    let o = os.get_mut(t * out.width + h * hv, hv);
                    let (gv, bv) = (
                        gs.get(t * g.width + h, 1)[0],
                        bs.get(t * beta.width + h, 1)[0],
                    );
                    kernels::delta_step(st, qn, kn, v, gv, bv, o);
                }
            }
        });
        self.done(out);
    }
}
