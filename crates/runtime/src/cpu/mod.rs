//! The CPU backend: activation buffers and KV cache allocated once, and [`CpuOps`], which
//! runs every operation of a forward pass on all threads of the pool with a barrier after each.

pub mod attend;
pub mod kernels;
mod matmul;
mod recurrent;
mod shared;
mod snapshot;

use std::cell::Cell;
use std::sync::Arc;

use quant::{gemm as int8, GgmlType};

use crate::error::BackendError;
use crate::limits::KvConfig;
use crate::limits::Limits;
use crate::ops::GEMM_MIN_TOKENS;
use crate::ops::{Act, Attention, Batch, DeltaNet, Ops, Plan, Rope};
use crate::pool::{ThreadPool, Worker};
use crate::tensor::Weight;
use recurrent::Recurrent;
pub use shared::Shared;

/// Weight rows dequantized at a time for the GEMM path.
const GEMM_ROWS: usize = 64;

/// Memory and threads of the CPU backend.
pub struct CpuBackend {
    /// Shared with other backends of the process that never run at the same time (a
    /// speculative draft model and its target), so only one set of workers exists.
    pool: Arc<ThreadPool>,
    widths: Vec<usize>,
    acts: Vec<Shared<f32>>,
    max_batch: usize,
    /// The bounds every batch is checked against.
    limits: Limits,
    /// Activations quantized for the current matmul (one row per token).
    qbuf: Shared<u8>,
    qrow_cap: usize,
    /// The quantized rows rearranged for the prepared dot kernels (one row per token).
    pbuf: Shared<u8>,
    prow_cap: usize,
    /// Per-thread scratch: attention scores and dequantized weight rows.
    scratch: Shared<f32>,
    scratch_per_thread: usize,
    /// Block sums of the activation panels of the int8 GEMM ([`quant::gemm`]).
    panel_sums: Shared<f32>,
    /// Per-thread bytes for the int8 GEMM: a weight panel and one row's unpacked levels.
    panel_scratch: Shared<u8>,
    panel_scratch_per_thread: usize,
    kv: KvConfig,
    /// The model's KV-cache and recurrent layer numbers of this backend's first layers
    /// (non-zero on a later device of a split model; see [`CpuBackend::with_first_layers`]).
    first: (usize, usize),
    /// Keys, as bytes of `kv.k_type`: for each layer and sequence, `n_ctx` rows of
    /// `k_stride` bytes.
    k: Shared<u8>,
    /// Values, as bytes of `kv.v_type`, laid out as `k`.
    v: Shared<u8>,
    k_stride: usize,
    v_stride: usize,
    /// State of the recurrent layers ([`CpuBackend::with_recurrent`]).
    rec: Option<Recurrent>,
}

impl CpuBackend {
    /// Allocates everything a model with this `plan` needs for batches of up to `max_batch`
    /// tokens and the given KV cache, with `n_threads` threads.
    pub fn new(plan: &Plan, max_batch: usize, kv: KvConfig, n_threads: usize) -> CpuBackend {
        let max_batch = max_batch.max(1);
        let max_width = plan.widths.iter().copied().max().unwrap_or(1);
        // Any activation format takes at most 4 bytes per value (f32), plus block headers.
        let qrow_cap = max_width * 4 + 64;
        // Attention scores of a whole prompt chunk against the context, or the other users.
        let scratch_per_thread = (kv.n_ctx * max_batch)
            .max(kv.n_ctx + 2 * max_width + GEMM_ROWS * max_width)
            .max(attend::scratch_len(
                attend::MAX_QUERIES,
                kv.n_ctx,
                max_width,
            ))
            + 64;
        let n_threads = n_threads.max(1);
        // Rows of whole blocks (the engine checks that `kv_dim` is whole blocks, so this is
        // `KvConfig::bytes` in all).
        let stride = |t: crate::KvType| t.row_bytes(kv.kv_dim.next_multiple_of(t.block()));
        let (k_stride, v_stride) = (stride(kv.k_type), stride(kv.v_type));
        let rows = kv.n_layers * kv.n_seq * kv.n_ctx;
        let panel_scratch_per_thread = int8::weight_panel_bytes(max_width) + max_width + 64;
        CpuBackend {
            pool: Arc::new(ThreadPool::new(n_threads)),
            widths: plan.widths.clone(),
            acts: plan
                .widths
                .iter()
                .zip(&plan.rows)
                .map(|(w, r)| Shared::new(w * r.unwrap_or(max_batch)))
                .collect(),
            limits: Limits::new(plan, max_batch, &kv),
            max_batch,
            // Rows quantized for dot products, or panels of four tokens for the int8 GEMM.
            qbuf: Shared::new((qrow_cap * max_batch).max(
                max_batch.div_ceil(4) * int8::act_panel_bytes(max_width.next_multiple_of(64)),
            )),
            qrow_cap,
            pbuf: Shared::new((2 * max_width + 256) * max_batch),
            prow_cap: 2 * max_width + 256,
            scratch: Shared::new(scratch_per_thread * n_threads),
            scratch_per_thread,
            panel_sums: Shared::new((max_batch.div_ceil(4) * 4) * (max_width / 32 + 1)),
            panel_scratch: Shared::new(panel_scratch_per_thread * n_threads),
            panel_scratch_per_thread,
            k: Shared::new(rows * k_stride),
            v: Shared::new(rows * v_stride),
            k_stride,
            v_stride,
            kv,
            first: (0, 0),
            rec: None,
        }
    }

    /// Runs on `other`'s threads from now on (this backend's own workers end): for two
    /// backends used in turn, such as a draft model and its target, whose two sets of idle
    /// workers would otherwise compete for the cores. Does nothing (false) when the thread
    /// counts differ, since per-thread scratch was sized for this backend's count.
    pub fn share_pool(&mut self, other: &CpuBackend) -> bool {
        if self.pool.n_threads() != other.pool.n_threads() {
            return false;
        }
        self.pool = Arc::clone(&other.pool);
        true
    }

    /// Threads used.
    pub fn n_threads(&self) -> usize {
        self.pool.n_threads()
    }

    /// The KV cache's shape.
    pub fn kv_config(&self) -> &KvConfig {
        &self.kv
    }

    /// Largest batch.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// The bounds every batch is checked against.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Runs one forward pass: `f` (the model) runs on every thread with a [`CpuOps`].
    pub fn forward<F>(&mut self, batch: &Batch, vocab: usize, f: F) -> Result<(), BackendError>
    where
        F: Fn(&CpuOps) + Sync,
    {
        self.limits().check(batch, vocab)?;
        if let Some(rec) = &mut self.rec {
            rec.prepare(&batch.seq, &batch.pos);
        }
        let this = &*self;
        let chunk = batch.prompt_chunk(GEMM_MIN_TOKENS);
        this.pool.run(|w| {
            let ops = CpuOps {
                w,
                be: this,
                batch,
                chunk,
                quantized: Cell::new(None),
                prepared: Cell::new(None),
            };
            f(&ops);
        });
        if let Some(rec) = &mut self.rec {
            rec.finish()?;
        }
        Ok(())
    }

    /// Writes `data` (whole rows) into the first rows of an activation buffer, before a
    /// forward pass that reads it (a speculative head's input). Panics if it does not fit.
    pub fn write(&mut self, act: Act, data: &[f32]) {
        assert!(
            data.len().is_multiple_of(act.width),
            "whole rows of {}",
            act.width
        );
        self.acts[act.id as usize].as_mut_slice()[..data.len()].copy_from_slice(data);
    }

    /// The first `rows` rows of an activation buffer, after a forward pass.
    pub fn read(&mut self, act: Act, rows: usize) -> &[f32] {
        &self.acts[act.id as usize].as_slice()[..rows * act.width]
    }

    /// Copies the cache of sequence `src` up to `len` positions into sequence `dst`
    /// (the KV cache only, not recurrent state).
    pub fn kv_copy(&mut self, src: usize, dst: usize, len: usize) {
        let c = &self.kv;
        if src >= c.n_seq || dst >= c.n_seq || src == dst {
            return;
        }
        for (buf, stride) in [(&mut self.k, self.k_stride), (&mut self.v, self.v_stride)] {
            let per_seq = c.n_ctx * stride;
            let n = len.min(c.n_ctx) * stride;
            for layer in 0..c.n_layers {
                let s = (layer * c.n_seq + src) * per_seq;
                let d = (layer * c.n_seq + dst) * per_seq;
                buf.as_mut_slice().copy_within(s..s + n, d);
            }
        }
    }

    /// Values an activation buffer holds.
    pub(crate) fn act_len(&self, a: Act) -> usize {
        self.acts[a.id as usize].len()
    }

    fn act(&self, a: Act) -> &Shared<f32> {
        debug_assert_eq!(self.widths[a.id as usize], a.width);
        &self.acts[a.id as usize]
    }
}

/// One thread's view of a forward pass; every method is called by all threads together.
pub struct CpuOps<'a> {
    w: &'a Worker<'a>,
    be: &'a CpuBackend,
    batch: &'a Batch,
    /// The sequence and first position when the batch is a prompt chunk ([`Batch::prompt_chunk`]).
    chunk: Option<(u32, u32)>,
    /// What `qbuf` holds: (activation buffer, format, rows), to skip quantizing the same
    /// input again for the next matmul (Q, K and V share theirs).
    quantized: Cell<Option<(u32, GgmlType, usize)>>,
    /// What `pbuf` holds, as `quantized`.
    prepared: Cell<Option<(u32, GgmlType, usize)>>,
}

/// The index in this backend's state of the model's layer `layer`, its first being `first`.
fn own_layer(layer: usize, first: usize) -> usize {
    layer
        .checked_sub(first)
        .expect("a split model runs each layer on the device that holds its state")
}

impl CpuOps<'_> {
    /// This thread's scratch space. Each operation takes it once.
    #[allow(clippy::mut_from_ref)]
    fn scratch(&self) -> &mut [f32] {
        let n = self.be.scratch_per_thread;
        // SAFETY: each thread touches only its own slice (indexed by its thread number).
        unsafe { self.be.scratch.get_mut(self.w.ith() * n, n) }
    }

    /// Ends an operation that wrote `act`: all threads wait, and a cached quantization of
    /// that buffer is forgotten.
    fn done(&self, wrote: Act) {
        for cache in [&self.quantized, &self.prepared] {
            if let Some((id, _, _)) = cache.get() {
                if id == wrote.id {
                    cache.set(None);
                }
            }
        }
        self.w.barrier();
    }

    /// Runs `f(row)` for this thread's share of `0..n`.
    fn rows(&self, n: usize, mut f: impl FnMut(usize)) {
        for i in self.w.split(n) {
            f(i);
        }
    }
}

impl Ops for CpuOps<'_> {
    fn batch(&self) -> &Batch {
        self.batch
    }

    fn embed(&self, w: &Weight, out: Act) {
        let o = self.be.act(out);
        let given = &self.batch.embd;
        let given_width = given.len() / self.batch.len().max(1);
        self.rows(self.batch.len(), |i| {
            let tok = self.batch.tokens[i] as usize;
            // SAFETY: row i of `out` is written by this thread only.
            let dst = unsafe { o.get_mut(i * out.width, out.width) };
            if !given.is_empty() {
                // Rows given by the caller (checked to be one per token); a width that is
                // not the model's leaves the rest zero.
                let n = given_width.min(out.width);
                dst[..n].copy_from_slice(&given[i * given_width..][..n]);
                dst[n..].fill(0.0);
                return;
            }
            // The backend checked the token against the vocabulary; a shape mismatch is a
            // model bug, caught when the model was loaded.
            let _ = w.row_to_f32(tok, dst);
        });
        self.done(out);
    }

    fn rms_norm(&self, n: usize, x: Act, w: Option<&[f32]>, eps: f32, row_len: usize, out: Act) {
        let (xs, os) = (self.be.act(x), self.be.act(out));
        let per_token = x.width / row_len;
        let tmp = &mut self.scratch()[..row_len];
        self.rows(n * per_token, |r| {
            let (t, k) = (r / per_token, r % per_token);
            // SAFETY: row r is read and written by this thread only; it is copied first, so
            // `out` may be `x`.
            unsafe {
                tmp.copy_from_slice(xs.get(t * x.width + k * row_len, row_len));
                let dst = os.get_mut(t * out.width + k * row_len, row_len);
                kernels::rms_norm(tmp, w, eps, dst);
            }
        });
        self.done(out);
    }

    fn matmul(&self, n: usize, w: &Weight, x: Act, out: Act) {
        self.matmul_impl(n, w, x, out);
    }

    fn add_bias(&self, n: usize, x: Act, b: &[f32]) {
        let xs = self.be.act(x);
        self.rows(n, |t| {
            // SAFETY: row t is this thread's.
            let row = unsafe { xs.get_mut(t * x.width, b.len()) };
            for (v, &bb) in row.iter_mut().zip(b) {
                *v += bb;
            }
        });
        self.done(x);
    }

    fn rope(&self, x: Act, n_heads: usize, head_dim: usize, rope: &Rope) {
        let xs = self.be.act(x);
        self.rows(self.batch.len() * n_heads, |r| {
            let (t, h) = (r / n_heads, r % n_heads);
            // SAFETY: head h of token t is this thread's.
            let head = unsafe { xs.get_mut(t * x.width + h * head_dim, head_dim) };
            match self.batch.rope_pos.get(t) {
                Some(&p) => kernels::rope_at(head, p, rope),
                None => kernels::rope(head, self.batch.pos[t], rope),
            }
        });
        self.done(x);
    }

    fn attention(&self, layer: usize, q: Act, k: Act, v: Act, spec: &Attention, out: Act) {
        let be = self.be;
        let layer = own_layer(layer, be.first.0);
        let c = &be.kv;
        let hd = spec.head_dim;
        let kv_dim = (spec.n_kv_heads * hd).min(c.kv_dim);
        let (ks, vs, qs, os) = (be.act(k), be.act(v), be.act(q), be.act(out));
        let row_at = |seq: u32, pos: usize| (layer * c.n_seq + seq as usize) * c.n_ctx + pos;
        let b = self.batch;
        // 1. Store this batch's keys and values, converted to the cache's types.
        self.rows(b.len(), |t| {
            let r = row_at(b.seq[t], b.pos[t] as usize);
            // SAFETY: each (sequence, position) slot is written by one token of the batch,
            // handled by one thread; k and v rows are only read.
            unsafe {
                let kr = be.k.get_mut(r * be.k_stride, be.k_stride);
                attend::store_row(c.k_type, ks.get(t * k.width, kv_dim), kr);
                let vr = be.v.get_mut(r * be.v_stride, be.v_stride);
                attend::store_row(c.v_type, vs.get(t * v.width, kv_dim), vr);
            }
        });
        self.w.barrier();
        // 2. Attend. A unit of work is a tile of consecutive tokens × one KV head × a part
        // of its group's query heads; each thread takes every nth unit (causal tiles grow
        // along the batch, so interleaving balances them).
        let n_kv = spec.n_kv_heads.max(1);
        let group = (spec.n_heads / n_kv).max(1);
        let per_tile = (attend::MAX_QUERIES / group).clamp(1, 16);
        let heads_per_part = group.min(attend::MAX_QUERIES);
        let n_tiles = b.len().div_ceil(per_tile);
        let mut parts = group.div_ceil(heads_per_part);
        let nth = self.w.nth();
        if n_tiles * n_kv * parts < nth {
            parts = nth.div_ceil(n_tiles * n_kv).min(group);
        }
        let heads_per_part = group.div_ceil(parts);
        let parts = group.div_ceil(heads_per_part);
        let n_units = n_tiles * n_kv * parts;
        let scratch = self.scratch();
        // The queries of one call, on the stack (no allocation in a forward pass).
        let mut queries: [attend::Query; attend::MAX_QUERIES] =
            std::array::from_fn(|_| attend::Query::default());
        for u in (self.w.ith()..n_units).step_by(nth) {
            let (tile, rest) = (u / (n_kv * parts), u % (n_kv * parts));
            let (kvh, part) = (rest / parts, rest % parts);
            let heads = kvh * group + part * heads_per_part
                ..(kvh * group + (part + 1) * heads_per_part).min((kvh + 1) * group);
            let tokens = tile * per_tile..((tile + 1) * per_tile).min(b.len());
            // Runs of tokens of one sequence share the cache rows they read.
            let mut t0 = tokens.start;
            while t0 < tokens.end {
                let seq = b.seq[t0];
                let t1 = (t0..tokens.end)
                    .find(|&t| b.seq[t] != seq)
                    .unwrap_or(tokens.end);
                let base = row_at(seq, 0);
                let mut nq = 0;
                for t in t0..t1 {
                    let pos = b.pos[t] as usize;
                    // A non-causal batch: up to its last position in this token's sequence.
                    let end = b.key_end(t) as usize;
                    let first = spec
                        .window
                        .map_or(0, |win| (pos + 1).saturating_sub(win as usize));
                    for h in heads.clone() {
                        // SAFETY: q is only read; output head (t, h) is written by the one
                        // thread that owns this unit.
                        let (qh, oh) = unsafe {
                            (
                                qs.get(t * q.width + h * hd, hd),
                                os.get_mut(t * out.width + h * hd, hd),
                            )
                        };
                        if let Some(slot) = queries.get_mut(nq) {
                            *slot = attend::Query {
                                q: qh,
                                first,
                                end,
                                out: oh,
                            };
                            nq += 1;
                        }
                    }
                }
                // SAFETY: the cache is only read in this phase.
                let (keys, vals) = unsafe {
                    (
                        be.k.get(base * be.k_stride, c.n_ctx * be.k_stride),
                        be.v.get(base * be.v_stride, c.n_ctx * be.v_stride),
                    )
                };
                attend::attend(
                    &mut queries[..nq],
                    attend::KvRows {
                        ty: c.k_type,
                        data: keys,
                        stride: be.k_stride,
                    },
                    attend::KvRows {
                        ty: c.v_type,
                        data: vals,
                        stride: be.v_stride,
                    },
                    kvh * hd,
                    spec.scale,
                    spec.softcap,
                    scratch,
                );
                t0 = t1;
            }
        }
        self.done(out);
    }

    fn swiglu(&self, n: usize, gate: Act, up: Act, out: Act) {
        self.zip2(n, gate, up, out, kernels::swiglu);
    }

    fn geglu(&self, n: usize, gate: Act, up: Act, out: Act) {
        self.zip2(n, gate, up, out, kernels::geglu);
    }

    fn add(&self, n: usize, a: Act, b: Act, out: Act) {
        self.zip2(n, a, b, out, |x, y, o| {
            for ((o, &x), &y) in o.iter_mut().zip(x).zip(y) {
                *o = x + y;
            }
        });
    }

    fn scale(&self, n: usize, x: Act, s: f32) {
        let xs = self.be.act(x);
        self.rows(n, |t| {
            // SAFETY: row t is this thread's.
            for v in unsafe { xs.get_mut(t * x.width, x.width) } {
                *v *= s;
            }
        });
        self.done(x);
    }

    fn gather_logit_rows(&self, x: Act, out: Act) {
        let (xs, os) = (self.be.act(x), self.be.act(out));
        self.rows(self.batch.logits.len(), |i| {
            let src = self.batch.logits[i] as usize;
            // SAFETY: x is only read; row i of out is this thread's.
            unsafe {
                os.get_mut(i * out.width, x.width)
                    .copy_from_slice(xs.get(src * x.width, x.width));
            }
        });
        self.done(out);
    }

    fn softcap(&self, n: usize, x: Act, cap: f32) {
        let xs = self.be.act(x);
        self.rows(n, |t| {
            // SAFETY: row t is this thread's.
            for v in unsafe { xs.get_mut(t * x.width, x.width) } {
                *v = cap * (*v / cap).tanh();
            }
        });
        self.done(x);
    }

    fn unzip(&self, n: usize, x: Act, half: usize, a: Act, b: Act) {
        let (xs, sa, sb) = (self.be.act(x), self.be.act(a), self.be.act(b));
        let groups = x.width / (2 * half);
        self.rows(n, |t| {
            // SAFETY: row t of each buffer is this thread's; x is only read.
            unsafe {
                let src = xs.get(t * x.width, groups * 2 * half);
                let da = sa.get_mut(t * a.width, groups * half);
                let db = sb.get_mut(t * b.width, groups * half);
                for (i, pair) in src.chunks_exact(2 * half).enumerate() {
                    da[i * half..(i + 1) * half].copy_from_slice(&pair[..half]);
                    db[i * half..(i + 1) * half].copy_from_slice(&pair[half..]);
                }
            }
        });
        self.done(a);
        self.done(b);
    }

    fn concat(&self, n: usize, a: Act, b: Act, out: Act) {
        let (sa, sb, so) = (self.be.act(a), self.be.act(b), self.be.act(out));
        self.rows(n, |t| {
            // SAFETY: row t of `out` is this thread's; `a` and `b` are only read.
            unsafe {
                let dst = so.get_mut(t * out.width, a.width + b.width);
                dst[..a.width].copy_from_slice(sa.get(t * a.width, a.width));
                dst[a.width..].copy_from_slice(sb.get(t * b.width, b.width));
            }
        });
        self.done(out);
    }

    fn sigmoid_mul(&self, n: usize, x: Act, gate: Act, out: Act) {
        self.zip2(n, x, gate, out, |x, g, o| {
            for ((o, &x), &g) in o.iter_mut().zip(x).zip(g) {
                *o = x * kernels::sigmoid(g);
            }
        });
    }

    fn gated_rms_norm(&self, n: usize, x: Act, z: Act, w: &[f32], eps: f32, out: Act) {
        let row_len = w.len().max(1);
        let (xs, zs, os) = (self.be.act(x), self.be.act(z), self.be.act(out));
        let per_token = out.width / row_len;
        let tmp = &mut self.scratch()[..2 * row_len];
        self.rows(n * per_token, |r| {
            let (t, k) = (r / per_token, r % per_token);
            let (tx, tz) = tmp.split_at_mut(row_len);
            // SAFETY: piece k of row t is read and written by this thread only; the inputs
            // are copied first, so `out` may be `x` or `z`.
            unsafe {
                tx.copy_from_slice(xs.get(t * x.width + k * row_len, row_len));
                tz.copy_from_slice(zs.get(t * z.width + k * row_len, row_len));
                let dst = os.get_mut(t * out.width + k * row_len, row_len);
                kernels::rms_norm(tx, Some(w), eps, dst);
                for (o, &zv) in dst.iter_mut().zip(tz.iter()) {
                    *o *= kernels::silu(zv);
                }
            }
        });
        self.done(out);
    }

    fn delta_gates(&self, n: usize, alpha: Act, beta: Act, dt_bias: &[f32], a: &[f32]) {
        let (sa, sb) = (self.be.act(alpha), self.be.act(beta));
        let heads = a.len().min(dt_bias.len());
        self.rows(n, |t| {
            // SAFETY: row t of both buffers is this thread's.
            unsafe {
                let ra = sa.get_mut(t * alpha.width, heads);
                for ((x, &bias), &a) in ra.iter_mut().zip(dt_bias).zip(a) {
                    *x = kernels::softplus(*x + bias) * a;
                }
                for x in sb.get_mut(t * beta.width, heads) {
                    *x = kernels::sigmoid(*x);
                }
            }
        });
        self.done(alpha);
        self.done(beta);
    }

    fn conv_silu(&self, layer: usize, x: Act, w: &[f32], net: &DeltaNet, out: Act) {
        self.conv_silu_impl(own_layer(layer, self.be.first.1), x, w, net, out);
    }

    fn gated_delta(&self, layer: usize, qkv: Act, g: Act, beta: Act, net: &DeltaNet, out: Act) {
        self.gated_delta_impl(own_layer(layer, self.be.first.1), qkv, g, beta, net, out);
    }
}

impl CpuOps<'_> {
    /// `out = f(a, b)` row by row; `out` may be `a` or `b`.
    fn zip2(&self, n: usize, a: Act, b: Act, out: Act, f: impl Fn(&[f32], &[f32], &mut [f32])) {
        let (sa, sb, so) = (self.be.act(a), self.be.act(b), self.be.act(out));
        let w = out.width;
        let tmp = &mut self.scratch()[..2 * w];
        self.rows(n, |t| {
            // SAFETY: row t of each buffer is this thread's; inputs are copied first, so
            // `out` may alias them.
            unsafe {
                let (ta, tb) = tmp.split_at_mut(w);
                ta.copy_from_slice(sa.get(t * a.width, w));
                tb.copy_from_slice(sb.get(t * b.width, w));
                f(ta, tb, so.get_mut(t * out.width, w));
            }
        });
        self.done(out);
    }
}
