//! The CUDA backend: [`CudaBackend`] owns the device memory of a model (weights in their
//! GGUF blocks, activations, a KV cache of f32, f16, q8_0 or q4_0 rows, recurrent state,
//! scratch), and [`CudaOps`] implements [`Ops`] by launching our kernels on one stream.
//!
//! - Weights: every matrix and host vector a pass uses is found by running the model's code
//!   once with [`crate::collect::Collect`] at load and uploaded then, in the file's layout
//!   (never the CPU's repacked one). Ops find a weight's device copy by the address of its
//!   bytes ([`crate::collect::weight_key`]).
//! - Matmul: batches that are not prompt chunks (decode, verification, several sequences)
//!   take the dp4a matrix × vector kernels (activations quantized to 8 bits per 32), token
//!   by token, so a token's result never depends on its batch; prompt chunks of
//!   [`crate::GEMM_MIN_TOKENS`] or more dequantize weight rows to f16 tiles and run cuBLAS.
//! - Attention: split-K flash decoding over a fixed grid of splits (any position, the same
//!   launches: graph-friendly), a tiled kernel for prompt chunks; both read the cache in its
//!   type (q8_0/q4_0 blocks quantized at the write, dequantized as they are loaded).
//! - Decode steps (one token) are captured once into a CUDA graph and replayed while the
//!   pass launches the same kernels with the same arguments (checked by hashing a dry run
//!   of the pass); `SURPLUS_NO_CUDA_GRAPH=1` turns that off.
//! - Errors never panic: an op that cannot run records the first error (which op, which
//!   shapes) and the pass returns it; kernel faults surface at the next read, and
//!   `SURPLUS_CUDA_SYNC=1` synchronizes after every launch to name the failing kernel.

use std::collections::HashMap;
use std::ffi::c_void;

use cudarc::driver::{result, sys};

use super::cublas::{Cublas, Gemm};
use super::gpu::GpuContext;
use crate::collect::{Collected, Key};
use crate::error::BackendError;
use crate::limits::KvConfig;
use crate::limits::Limits;
use crate::ops::{Act, Batch, Plan};
use crate::recurrent::RecurrentConfig;
use graph::Graph;
use launch::Mode;
use memory::{kv_max_head_dim, sizes, DevBuf, ATT_TOKENS};
use recurrent::RecHost;
use weights::{DevWeight, TypeKernels};

mod graph;
mod launch;
mod memory;
mod ops;
mod recurrent;
mod snapshot;
pub(crate) mod weights;

pub use launch::CudaOps;
pub use memory::{gpu_memory, reserve_bytes, AttnShape, MemoryPlan, RESERVE_BYTES};
pub use weights::check_weight;

/// A driver error as a [`BackendError::Device`] naming what failed.
fn drv(what: &str) -> impl Fn(result::DriverError) -> BackendError + '_ {
    move |e| BackendError::Device(format!("{what}: {e}"))
}

/// Offsets (in u32) of the batch data in the one buffer uploaded per pass.
#[derive(Clone, Copy, Debug)]
struct InfoLayout {
    tokens: usize,
    pos: usize,
    seq: usize,
    kend: usize,
    logits: usize,
    order: usize,
    groups: usize,
    /// Multi-section rotary positions (t, h, w) of each token.
    rope3: usize,
    len: usize,
}

impl InfoLayout {
    fn new(max_batch: usize) -> InfoLayout {
        let m = max_batch;
        InfoLayout {
            tokens: 0,
            pos: m,
            seq: 2 * m,
            kend: 3 * m,
            logits: 4 * m,
            order: 5 * m,
            groups: 6 * m,
            rope3: 12 * m,
            len: 15 * m,
        }
    }
}

/// A model's memory on one GPU and the stream its passes run on.
pub struct CudaBackend {
    /// The model's KV-cache and recurrent layer numbers of this backend's first layers
    /// (see [`CudaBackend::with_first_layers`]).
    first: (usize, usize),
    gemm: Option<Gemm>,
    names: TypeKernels,
    widths: Vec<usize>,
    acts: Vec<DevBuf>,
    max_batch: usize,
    /// The bounds every batch is checked against.
    limits: Limits,
    weights: HashMap<Key, DevWeight>,
    vectors: HashMap<Key, u64>,
    _weight_bufs: Vec<DevBuf>,
    info: DevBuf,
    info_host: Vec<u32>,
    layout: InfoLayout,
    embd: DevBuf,
    q8: DevBuf,
    xh: DevBuf,
    tile: DevBuf,
    tile_elems: usize,
    part: DevBuf,
    n_split: usize,
    split_len: usize,
    kv: KvConfig,
    kc: DevBuf,
    vc: DevBuf,
    rec: Option<RecHost>,
    host: Vec<f32>,
    graphs: Vec<Graph>,
    graphs_on: bool,
    graph_note: Option<String>,
    sync_each: bool,
    plan: MemoryPlan,
    /// Last: fields drop in order, and the buffers, graphs and cuBLAS handle above must go
    /// while the context (held by the device) is alive.
    dev: GpuContext,
}

// SAFETY: the raw device pointers and the cuBLAS handle are only used by the backend's
// owner (through `&mut self` or the ops of a pass it runs), one thread at a time; CUDA graph
// objects may be used from any thread as long as calls are serialized, which `&mut self`
// ensures.
unsafe impl Send for CudaBackend {}

impl CudaBackend {
    /// Allocates everything for a model with this `plan` and batches of up to `max_batch`
    /// tokens, uploads the weights and vectors `used` (what [`crate::collect::Collect`]
    /// recorded), and loads cuBLAS for the prompt path. Not enough memory is an error here,
    /// before anything runs.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        dev: GpuContext,
        plan: &Plan,
        max_batch: usize,
        kv: KvConfig,
        rec: Option<RecurrentConfig>,
        attn: AttnShape,
        used: &Collected,
    ) -> Result<CudaBackend, BackendError> {
        dev.ctx
            .bind_to_thread()
            .map_err(drv("binding the context"))?;
        let max_batch = max_batch.max(1);
        let mem = CudaBackend::plan_memory(&dev, plan, max_batch, &kv, rec.as_ref(), attn, used);
        // The reserve is the planner's policy (`--fit-margin`); here only what is free counts.
        if mem.needed() > mem.free {
            return Err(BackendError::OutOfMemory(format!(
                "{mem}; lower --ctx-size, --parallel or --batch-size, or run on the CPU \
                 (--gpu-layers 0)"
            )));
        }
        for w in &used.weights {
            check_weight(w).map_err(BackendError::Unsupported)?;
        }
        kv.check().map_err(BackendError::Unsupported)?;
        if attn.max_head_dim > kv_max_head_dim(&kv) {
            return Err(BackendError::Unsupported(format!(
                "a {}/{} KV cache with heads of {} values (the CUDA kernels take up to {}; \
                 use f16, q8_0 or q4_0)",
                kv.k_type,
                kv.v_type,
                attn.max_head_dim,
                kv_max_head_dim(&kv)
            )));
        }
        if let Some(r) = &rec {
            let net = &r.net;
            if net.conv_kernel.max(1) - 1 > 7 {
                return Err(BackendError::Unsupported(format!(
                    "a convolution of {} taps (the CUDA kernel takes up to 8)",
                    net.conv_kernel
                )));
            }
            if !net.head_k.is_multiple_of(32) || net.head_k > 256 {
                return Err(BackendError::Unsupported(format!(
                    "Gated DeltaNet key heads of {} values (the CUDA kernel takes multiples of \
                     32 up to 256)",
                    net.head_k
                )));
            }
        }
        let s = sizes(
            plan,
            max_batch,
            &kv,
            rec.as_ref(),
            attn.max_heads,
            attn.max_head_dim,
            dev.info.memory_bytes as usize,
        );
        let stream = dev.stream.cu_stream();
        // Weights, uploaded in their file layout.
        let (weights, vectors, bufs) = weights::upload(used, stream)?;
        dev.stream
            .synchronize()
            .map_err(drv("uploading the weights"))?;
        let acts = plan
            .widths
            .iter()
            .zip(&plan.rows)
            .map(|(w, r)| {
                DevBuf::new(
                    w * r.unwrap_or(max_batch) * 4,
                    "an activation buffer",
                    stream,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let layout = InfoLayout::new(max_batch);
        let kv_rows = kv.n_layers * kv.n_seq * kv.n_ctx;
        let rec = match rec {
            None => None,
            Some(cfg) => Some(RecHost::new(cfg, kv.n_seq, max_batch, stream)?),
        };
        let gemm = match Cublas::load_best(Some(dev.nvrtc.version.0 as u32)) {
            // SAFETY: the backend's stream, its context bound above.
            Ok(c) => match unsafe { c.gemm(stream as *mut c_void) } {
                Ok(g) => Some(g),
                Err(e) => {
                    eprintln!(
                        "surplus: cuBLAS unusable ({e}); prompts take the matrix x vector \
                         kernels"
                    );
                    None
                }
            },
            Err(errs) => {
                eprintln!(
                    "surplus: no cuBLAS found ({}); prompts take the matrix x vector kernels",
                    errs.join("; ")
                );
                None
            }
        };
        let env_on = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty() && v != "0");
        let sync_each = env_on("SURPLUS_CUDA_SYNC");
        let graphs_on = !env_on("SURPLUS_NO_CUDA_GRAPH") && !sync_each;
        let be = CudaBackend {
            first: (0, 0),
            gemm,
            names: TypeKernels::new(),
            widths: plan.widths.clone(),
            acts,
            // The info buffer holds max_batch logit ids.
            limits: Limits {
                max_logit_rows: plan.min_fixed_rows().unwrap_or(max_batch).min(max_batch),
                ..Limits::new(plan, max_batch, &kv)
            },
            max_batch,
            weights,
            vectors,
            _weight_bufs: bufs,
            info: DevBuf::new(layout.len * 4, "batch data", stream)?,
            info_host: vec![0; layout.len],
            layout,
            embd: DevBuf::new(max_batch * s.max_width * 4, "input rows", stream)?,
            q8: DevBuf::new(
                max_batch * (s.max_width / 32 + 1) * 40,
                "quantized activations",
                stream,
            )?,
            xh: DevBuf::new(max_batch * s.max_width * 2, "f16 activations", stream)?,
            tile: DevBuf::new(s.tile, "f16 weight tiles", stream)?,
            tile_elems: s.tile / 2,
            part: DevBuf::new(
                ATT_TOKENS * s.max_heads * s.n_split * (s.max_hd + 2) * 4,
                "attention partials",
                stream,
            )?,
            n_split: s.n_split,
            split_len: s.split_len,
            kc: DevBuf::new(
                kv_rows * kv.k_type.row_bytes(kv.kv_dim),
                "the key cache",
                stream,
            )?,
            vc: DevBuf::new(
                kv_rows * kv.v_type.row_bytes(kv.kv_dim),
                "the value cache",
                stream,
            )?,
            kv,
            rec,
            host: Vec::new(),
            graphs: Vec::new(),
            graphs_on,
            graph_note: None,
            sync_each,
            plan: mem,
            dev,
        };
        be.dev
            .stream
            .synchronize()
            .map_err(drv("preparing the device memory"))?;
        Ok(be)
    }

    /// The memory plan this backend was made with.
    pub fn memory_plan(&self) -> &MemoryPlan {
        &self.plan
    }

    /// The GPU.
    pub fn device(&self) -> &GpuContext {
        &self.dev
    }

    /// The KV cache's shape.
    pub fn kv_config(&self) -> &KvConfig {
        &self.kv
    }

    /// Largest batch.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Whether decode steps replay CUDA graphs (and why not, once one failed).
    pub fn graphs(&self) -> (bool, Option<&str>) {
        (self.graphs_on, self.graph_note.as_deref())
    }

    /// Whether prompt chunks take cuBLAS.
    pub fn has_cublas(&self) -> bool {
        self.gemm.is_some()
    }

    /// The bounds every batch is checked against.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Uploads the batch's tokens, positions, sequences, key ends, logit rows and recurrent
    /// groups (one copy), and its input rows if any.
    fn upload_batch(&mut self, batch: &Batch) -> Result<(), BackendError> {
        let l = self.layout;
        let n = batch.len();
        let h = &mut self.info_host;
        h[l.tokens..l.tokens + n].copy_from_slice(&batch.tokens);
        h[l.pos..l.pos + n].copy_from_slice(&batch.pos);
        h[l.seq..l.seq + n].copy_from_slice(&batch.seq);
        for t in 0..n {
            h[l.kend + t] = batch.key_end(t);
        }
        h[l.logits..l.logits + batch.logits.len()].copy_from_slice(&batch.logits);
        for t in 0..n {
            let p = batch.rope_pos.get(t).copied().unwrap_or([batch.pos[t]; 3]);
            h[l.rope3 + 3 * t..l.rope3 + 3 * t + 3].copy_from_slice(&p);
        }
        if let Some(rec) = &self.rec {
            h[l.order..l.order + rec.t.order.len()].copy_from_slice(&rec.t.order);
            for (i, g) in rec.device_groups().enumerate() {
                for (j, &v) in g.iter().enumerate() {
                    h[l.groups + 6 * i + j] = v as u32;
                }
            }
        }
        let stream = self.dev.stream.cu_stream();
        // SAFETY: the device buffer holds layout.len u32; a copy from pageable memory
        // returns once the source was staged, so the host buffer may change afterwards.
        unsafe { result::memcpy_htod_async(self.info.ptr, &self.info_host[..], stream) }
            .map_err(drv("uploading the batch"))?;
        if !batch.embd.is_empty() {
            // SAFETY: checked to fit (at most max_batch rows of max_width values).
            unsafe { result::memcpy_htod_async(self.embd.ptr, &batch.embd[..], stream) }
                .map_err(drv("uploading input rows"))?;
        }
        Ok(())
    }

    /// Runs one forward pass: `f` (the model) issues the ops of a [`CudaOps`]. A pass of one
    /// token replays a CUDA graph when it launches what an earlier captured pass launched.
    pub fn forward<F>(&mut self, batch: &Batch, vocab: usize, f: F) -> Result<(), BackendError>
    where
        F: Fn(&CudaOps),
    {
        self.dev
            .ctx
            .bind_to_thread()
            .map_err(drv("binding the context"))?;
        self.limits().check(batch, vocab)?;
        if let Some(rec) = &mut self.rec {
            rec.t.prepare(&batch.seq, &batch.pos);
        }
        self.upload_batch(batch)?;
        let graphable = self.graphs_on && batch.len() == 1 && batch.embd.is_empty();
        let touched = if graphable {
            self.forward_graph(batch, &f)?
        } else {
            let ops = CudaOps::new(self, batch, Mode::Launch);
            f(&ops);
            ops.result()?
        };
        if let Some(rec) = &mut self.rec {
            rec.t.finish(touched)?;
        }
        Ok(())
    }

    /// Waits for the stream; a kernel fault since the last wait is reported here.
    pub fn synchronize(&self) -> Result<(), BackendError> {
        self.dev.stream.synchronize().map_err(|e| {
            BackendError::Device(format!(
                "a kernel failed: {e} (run with SURPLUS_CUDA_SYNC=1 to find which)"
            ))
        })
    }

    /// Writes `data` (whole rows) into the first rows of an activation buffer.
    pub fn write(&mut self, act: Act, data: &[f32]) -> Result<(), BackendError> {
        let b = &self.acts[act.id as usize];
        if !data.len().is_multiple_of(act.width) || data.len() * 4 > b.bytes {
            return Err(BackendError::Op {
                op: "write".into(),
                reason: format!(
                    "{} values into a buffer of {} per row and {} bytes",
                    data.len(),
                    act.width,
                    b.bytes
                ),
            });
        }
        self.dev
            .ctx
            .bind_to_thread()
            .map_err(drv("binding the context"))?;
        // SAFETY: checked to fit; pageable source staged before return.
        unsafe { result::memcpy_htod_async(b.ptr, data, self.dev.stream.cu_stream()) }
            .map_err(drv("write"))
    }

    /// Lets this backend's GPU and `other`'s read each other's memory (peer to peer), when
    /// the driver allows it both ways; returns whether it does. Without it,
    /// [`CudaBackend::copy_act_to`] still works but the driver stages through the host, so
    /// callers copy through their own host buffer instead.
    pub fn enable_peer(&self, other: &CudaBackend) -> bool {
        let can = |a: &CudaBackend, b: &CudaBackend| {
            let mut v = 0;
            // SAFETY: a valid out-pointer and two devices the driver gave.
            let r = unsafe {
                sys::cuDeviceCanAccessPeer(&mut v, a.dev.ctx.cu_device(), b.dev.ctx.cu_device())
            };
            r == sys::CUresult::CUDA_SUCCESS && v == 1
        };
        if !can(self, other) || !can(other, self) {
            return false;
        }
        for (a, b) in [(self, other), (other, self)] {
            if a.dev.ctx.bind_to_thread().is_err() {
                return false;
            }
            // SAFETY: `b`'s context is alive (owned by `b`); `a`'s is current.
            let r = unsafe { sys::cuCtxEnablePeerAccess(b.dev.ctx.cu_ctx(), 0) };
            if r != sys::CUresult::CUDA_SUCCESS
                && r != sys::CUresult::CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED
            {
                return false;
            }
        }
        true
    }

    /// Copies the first `rows` rows of `act` into the same buffer of `dst` (another GPU's
    /// backend of the same model): after this backend's passes so far, before `dst`'s next.
    pub fn copy_act_to(
        &self,
        act: Act,
        rows: usize,
        dst: &CudaBackend,
    ) -> Result<(), BackendError> {
        let (s, d) = (&self.acts[act.id as usize], &dst.acts[act.id as usize]);
        let n = rows * act.width * 4;
        if n > s.bytes || n > d.bytes {
            return Err(BackendError::Op {
                op: "copy to another GPU".into(),
                reason: format!("{rows} rows of {} values past a buffer's end", act.width),
            });
        }
        self.dev
            .ctx
            .bind_to_thread()
            .map_err(drv("binding the context"))?;
        self.dev
            .stream
            .synchronize()
            .map_err(drv("finishing the pass before a copy to another GPU"))?;
        dst.dev
            .ctx
            .bind_to_thread()
            .map_err(drv("binding the context"))?;
        // SAFETY: both ranges checked to lie in live buffers of their contexts; ordered on
        // `dst`'s stream before its next pass, after this backend's finished work.
        unsafe {
            result::memcpy_peer_async(
                dst.dev.ctx.cu_ctx(),
                d.ptr,
                self.dev.ctx.cu_ctx(),
                s.ptr,
                n,
                dst.dev.stream.cu_stream(),
            )
        }
        .map_err(drv("copying to another GPU"))
    }

    /// The first `rows` rows of an activation buffer, after the passes so far (waits).
    pub fn read(&mut self, act: Act, rows: usize) -> Result<&[f32], BackendError> {
        let b = &self.acts[act.id as usize];
        let n = rows * act.width;
        if n * 4 > b.bytes {
            return Err(BackendError::Op {
                op: "read".into(),
                reason: format!("{rows} rows of {} from {} bytes", act.width, b.bytes),
            });
        }
        self.dev
            .ctx
            .bind_to_thread()
            .map_err(drv("binding the context"))?;
        self.host.resize(n, 0.0);
        // SAFETY: `b` holds at least n floats; the copy is ordered after the passes on the
        // stream and completes before the synchronization below returns.
        unsafe {
            result::memcpy_dtoh_async(&mut self.host[..n], b.ptr, self.dev.stream.cu_stream())
        }
        .map_err(drv("read"))?;
        self.synchronize()?;
        Ok(&self.host[..n])
    }

    /// Copies the cache of sequence `src` up to `len` positions into sequence `dst`.
    pub fn kv_copy(&mut self, src: usize, dst: usize, len: usize) -> Result<(), BackendError> {
        let c = &self.kv;
        if src >= c.n_seq || dst >= c.n_seq {
            return Err(BackendError::Op {
                op: "kv_copy".into(),
                reason: format!("sequences {src} -> {dst} of {}", c.n_seq),
            });
        }
        let stream = self.dev.stream.cu_stream();
        // The bytes of `len` rows, copied as they are stored (whole blocks per row).
        for (buf, ty) in [(&self.kc, c.k_type), (&self.vc, c.v_type)] {
            let per_seq = c.n_ctx * ty.row_bytes(c.kv_dim);
            let n = len.min(c.n_ctx) * ty.row_bytes(c.kv_dim);
            for layer in 0..c.n_layers {
                let s = ((layer * c.n_seq + src) * per_seq) as u64;
                let d = ((layer * c.n_seq + dst) * per_seq) as u64;
                // SAFETY: both ranges lie inside the cache (sequence slots of n_ctx
                // positions); distinct sequences do not overlap.
                unsafe { result::memcpy_dtod_async(buf.ptr + d, buf.ptr + s, n, stream) }
                    .map_err(drv("kv_copy"))?;
            }
        }
        Ok(())
    }

    /// The bytes of the key and value caches as stored (for tests), after the passes so far.
    #[cfg(test)]
    pub(crate) fn cache_bytes(&mut self) -> Result<(Vec<u8>, Vec<u8>), BackendError> {
        self.dev
            .ctx
            .bind_to_thread()
            .map_err(drv("binding the context"))?;
        let mut out = Vec::new();
        for buf in [&self.kc, &self.vc] {
            let mut host = vec![0u8; buf.bytes];
            // SAFETY: `buf` holds `bytes` bytes; the copy is ordered after the passes on the
            // stream and completes before the synchronization below returns.
            unsafe {
                result::memcpy_dtoh_async(&mut host[..], buf.ptr, self.dev.stream.cu_stream())
            }
            .map_err(drv("reading the cache"))?;
            out.push(host);
        }
        self.synchronize()?;
        let v = out.pop().unwrap_or_default();
        let k = out.pop().unwrap_or_default();
        Ok((k, v))
    }

    /// Makes this backend hold the state of the model's KV-cache layers from `kv` and
    /// recurrent layers from `rec` on (the blocks of a later device of a split model): its
    /// [`KvConfig::n_layers`] and [`RecurrentConfig::n_layers`] count from there.
    pub fn with_first_layers(mut self, kv: usize, rec: usize) -> CudaBackend {
        self.first = (kv, rec);
        self
    }

    /// Positions the recurrent state of `seq` covers (`None` without recurrent layers).
    pub fn recurrent_len(&self, seq: u32) -> Option<usize> {
        self.rec.as_ref().and_then(|r| r.t.seq_len(seq))
    }
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        // The buffers are freed after this, in the backend's context.
        let _ = self.dev.ctx.bind_to_thread();
        let _ = self.dev.stream.synchronize();
        self.graphs.clear();
    }
}
