//! The CUDA backend: [`CudaBackend`] owns the device memory of a model (weights in their
//! GGUF blocks, activations, an f16 KV cache, recurrent state, scratch), and [`CudaOps`]
//! implements [`Ops`] by launching our kernels on one stream.
//!
//! - Weights: every matrix and host vector a pass uses is found by running the model's code
//!   once with [`crate::collect::Collect`] at load and uploaded then, in the file's layout
//!   (never the CPU's repacked one). Ops find a weight's device copy by the address of its
//!   bytes ([`crate::collect::weight_key`]).
//! - Matmul: batches that are not prompt chunks (decode, verification, several sequences)
//!   take the dp4a matrix × vector kernels (activations quantized to 8 bits per 32), token
//!   by token, so a token's result never depends on its batch; prompt chunks of
//!   [`GEMM_MIN_TOKENS`] or more dequantize weight rows to f16 tiles and run cuBLAS.
//! - Attention: split-K flash decoding over a fixed grid of splits (any position, the same
//!   launches: graph-friendly), a tiled kernel for prompt chunks.
//! - Decode steps (one token) are captured once into a CUDA graph and replayed while the
//!   pass launches the same kernels with the same arguments (checked by hashing a dry run
//!   of the pass); `SURPLUS_NO_CUDA_GRAPH=1` turns that off.
//! - Errors never panic: an op that cannot run records the first error (which op, which
//!   shapes) and the pass returns it; kernel faults surface at the next read, and
//!   `SURPLUS_CUDA_SYNC=1` synchronizes after every launch to name the failing kernel.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ffi::c_void;
use std::fmt;

use cudarc::driver::{result, sys};
use quant::GgmlType;

use super::cublas::{Cublas, Gemm};
use super::gpu::CudaDevice;
use crate::collect::{vector_key, weight_key, Collected, Key};
use crate::cpu::{KvConfig, RecurrentConfig};
use crate::ops::{Act, Attention, Batch, DeltaNet, Ops, Plan, Rope, RopeMode};
use crate::rollback::{keeps_inputs, replay_width, Window, ROLLBACK_TOKENS};
use crate::tensor::{Layout, Weight};

/// Prompt chunks of this many tokens or more take the cuBLAS GEMM (as the CPU's
/// `GEMM_MIN_TOKENS`).
pub const GEMM_MIN_TOKENS: usize = 8;
/// Tokens per launch of the decode attention (bounds its partials buffer).
const ATT_TOKENS: usize = 16;
/// Keys per split of the decode attention are `n_ctx / splits`, with this many splits at
/// most.
const ATT_MAX_SPLITS: usize = 32;
/// Bytes of f16 weight tiles for the GEMM path, on a large GPU.
const TILE_BYTES: usize = 64 << 20;

/// The tile on a GPU of `total` bytes: [`TILE_BYTES`], but at most a sixteenth of a small
/// card (at least 4 MiB; smaller tiles only mean more cuBLAS calls per prompt matmul).
fn tile_bytes(total: usize) -> usize {
    TILE_BYTES.min((total / 16).max(4 << 20))
}

/// The largest grid y and z of a launch (x goes to 2^31 - 1).
const MAX_GRID_YZ: u32 = 65535;
/// Bytes left free for the driver, cuBLAS's workspace and the kernels, on a large GPU.
pub const RESERVE_BYTES: usize = 768 << 20;

/// The reserve on a GPU of `total` bytes: [`RESERVE_BYTES`], but at most an eighth of a
/// small card (at least 64 MiB), so that a few layers can still go on it.
pub fn reserve_bytes(total: usize) -> usize {
    RESERVE_BYTES.min((total / 8).max(64 << 20))
}

/// Graphs kept (decode of the trunk, of an MTP block, ...).
const MAX_GRAPHS: usize = 8;

/// Errors of the CUDA backend.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    #[error("CUDA: {0}")]
    Device(String),
    #[error("not enough GPU memory: {0}")]
    OutOfMemory(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("batch of {0} tokens is larger than the {1} planned at load")]
    BatchTooLarge(usize, usize),
    #[error("token {index}: position {pos} of sequence {seq} is outside the context ({n_ctx} positions, {n_seq} sequences)")]
    OutOfContext {
        index: usize,
        pos: u32,
        seq: u32,
        n_ctx: usize,
        n_seq: usize,
    },
    #[error("{0} logit rows asked for; at most {1}, each naming a token of the batch")]
    BadLogits(usize, usize),
    #[error("token id {0} is outside the vocabulary")]
    BadToken(u32),
    #[error("{0} input values given for a batch of {1} tokens (one row per token, at most {2} values each)")]
    BadEmbeddings(usize, usize, usize),
    #[error("sequence {seq}: token at position {pos}, but its recurrent state is at position {expected} (a sequence starts at 0 or continues where it is; roll back first to go back)")]
    RecurrentPosition { seq: u32, pos: u32, expected: u32 },
    #[error("sequence {seq}: cannot roll back to {len} positions: {reason}")]
    Rollback {
        seq: u32,
        len: usize,
        reason: String,
    },
    #[error("{op}: {reason}")]
    Op { op: String, reason: String },
}

fn drv(what: &str) -> impl Fn(result::DriverError) -> CudaError + '_ {
    move |e| CudaError::Device(format!("{what}: {e}"))
}

/// What the GPU's memory holds for a model, planned before anything is allocated.
#[derive(Clone, Debug, Default)]
pub struct MemoryPlan {
    /// The GPU's name.
    pub device: String,
    /// Weight matrices and vectors, in their file formats.
    pub weights: usize,
    /// Keys and values (f16).
    pub kv_cache: usize,
    /// Recurrent state (both copies and the rollback inputs).
    pub recurrent: usize,
    /// Activation buffers.
    pub activations: usize,
    /// Quantized activations, f16 tiles, attention partials, batch data.
    pub scratch: usize,
    /// Kept free for the driver and cuBLAS.
    pub reserve: usize,
    /// Free memory on the GPU before loading.
    pub free: usize,
    /// The GPU's memory.
    pub total: usize,
}

impl MemoryPlan {
    /// Bytes the plan allocates.
    pub fn needed(&self) -> usize {
        self.weights + self.kv_cache + self.recurrent + self.activations + self.scratch
    }

    /// Whether it fits in the free memory with the reserve left.
    pub fn fits(&self) -> bool {
        self.needed() + self.reserve <= self.free
    }
}

impl fmt::Display for MemoryPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mib = |b: usize| b as f64 / (1u64 << 20) as f64;
        write!(
            f,
            "{}: weights {:.0} MiB, KV cache {:.0} MiB, recurrent {:.0} MiB, activations {:.0} \
             MiB, scratch {:.0} MiB = {:.0} MiB (+{:.0} MiB reserve) of {:.0} MiB free ({:.0} \
             MiB total)",
            self.device,
            mib(self.weights),
            mib(self.kv_cache),
            mib(self.recurrent),
            mib(self.activations),
            mib(self.scratch),
            mib(self.needed()),
            mib(self.reserve),
            mib(self.free),
            mib(self.total)
        )
    }
}

/// Device memory freed on drop (the owning backend makes its context current first).
struct DevBuf {
    ptr: u64,
    bytes: usize,
}

impl DevBuf {
    /// `bytes` of device memory, zeroed on `stream` (ordered before anything later on it:
    /// a plain `cuMemset` would run on the legacy stream, which our non-blocking stream does
    /// not wait for).
    fn new(bytes: usize, what: &str, stream: sys::CUstream) -> Result<DevBuf, CudaError> {
        let bytes = bytes.max(256);
        // SAFETY: the backend's context is current on this thread (bound by the caller).
        let ptr = unsafe { result::malloc_sync(bytes) }
            .map_err(|e| CudaError::OutOfMemory(format!("{what} ({bytes} bytes): {e}")))?;
        let b = DevBuf { ptr, bytes };
        // SAFETY: `ptr` holds `bytes` bytes just allocated; `stream` is a live stream of the
        // current context.
        unsafe { result::memset_d8_async(ptr, 0, bytes, stream) }
            .map_err(drv("clearing device memory"))?;
        Ok(b)
    }
}

impl Drop for DevBuf {
    fn drop(&mut self) {
        // SAFETY: allocated by cuMemAlloc and freed once; a failure (no current context at
        // process exit) only leaks.
        let _ = unsafe { result::free_sync(self.ptr) };
    }
}

/// A weight's device copy.
#[derive(Clone, Copy, Debug)]
struct DevWeight {
    ptr: u64,
    ty: GgmlType,
    row_bytes: usize,
}

/// Weight types the kernels take, with their kernel-name suffixes and whether the dp4a
/// matrix × vector kernel exists.
fn kernel_suffix(ty: GgmlType) -> Option<(&'static str, bool)> {
    Some(match ty {
        GgmlType::Q4_0 => ("q4_0", true),
        GgmlType::Q4_1 => ("q4_1", true),
        GgmlType::Q5_0 => ("q5_0", true),
        GgmlType::Q5_1 => ("q5_1", true),
        GgmlType::Q8_0 => ("q8_0", true),
        GgmlType::Q4_K => ("q4_k", true),
        GgmlType::Q5_K => ("q5_k", true),
        GgmlType::Q6_K => ("q6_k", true),
        GgmlType::F32 => ("f32", false),
        GgmlType::F16 => ("f16", false),
        GgmlType::BF16 => ("bf16", false),
        _ => return None,
    })
}

/// Kernel names per weight type, built once (no formatting per launch).
struct TypeKernels {
    mmvq: HashMap<GgmlType, String>,
    mmv: HashMap<GgmlType, String>,
    deq: HashMap<GgmlType, String>,
    rows: HashMap<GgmlType, String>,
}

impl TypeKernels {
    fn new() -> TypeKernels {
        let mut t = TypeKernels {
            mmvq: HashMap::new(),
            mmv: HashMap::new(),
            deq: HashMap::new(),
            rows: HashMap::new(),
        };
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q8_0,
            GgmlType::Q4_K,
            GgmlType::Q5_K,
            GgmlType::Q6_K,
            GgmlType::F32,
            GgmlType::F16,
            GgmlType::BF16,
        ] {
            let Some((s, q)) = kernel_suffix(ty) else {
                continue;
            };
            if q {
                t.mmvq.insert(ty, format!("mmvq_{s}"));
            }
            t.mmv.insert(ty, format!("mmv_{s}"));
            t.deq.insert(ty, format!("deq_f16_{s}"));
            t.rows.insert(ty, format!("get_rows_{s}"));
        }
        t
    }
}

/// Checks that the kernels can take `w` (type, shape); `what` names it in the error.
pub fn check_weight(w: &Weight) -> Result<(), String> {
    if w.layout() != Layout::Rows {
        return Err(format!(
            "a {:?} weight of {} × {} is repacked for the CPU; the GPU takes the file's layout \
             (load with repacking off)",
            w.ty, w.rows, w.cols
        ));
    }
    if kernel_suffix(w.ty).is_none() {
        return Err(format!(
            "weight type {:?} has no CUDA kernel yet (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, \
             Q6_K, F32, F16 and BF16 do)",
            w.ty
        ));
    }
    if !w.cols.is_multiple_of(32) {
        return Err(format!(
            "a {:?} weight with {} columns: the CUDA kernels need a multiple of 32",
            w.ty, w.cols
        ));
    }
    Ok(())
}

/// Host-side bookkeeping of the recurrent state (the device holds the state itself): which
/// copy is current, how far each sequence is, and its latest batch for rollbacks. Follows
/// the CPU backend's rules (see `cpu::recurrent`).
struct RecHost {
    cfg: RecurrentConfig,
    cur: Vec<u8>,
    /// Positions each sequence's state covers and its latest batch.
    win: Vec<Window>,
    /// Per group: seq, start, n, p0, src copy, keep.
    groups: Vec<[i32; 6]>,
    order: Vec<u32>,
    invalid: Option<CudaError>,
    conv: DevBuf,
    ssm: DevBuf,
    replay: DevBuf,
    /// Output of replayed delta steps (discarded), and the identity order 0..ROLLBACK.
    scratch: DevBuf,
    ident: DevBuf,
    /// One group for a rollback.
    rb_group: DevBuf,
}

fn rec_bytes(cfg: &RecurrentConfig, n_seq: usize) -> [usize; 3] {
    let net = &cfg.net;
    let per = |len: usize| cfg.n_layers * n_seq * len * 4;
    [
        per(2 * net.conv_state_len()),
        per(2 * net.state_len()),
        per(ROLLBACK_TOKENS * replay_width(net)),
    ]
}

impl RecHost {
    fn group(&mut self, seqs: &[u32], pos: &[u32]) -> Result<(), CudaError> {
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

    fn prepare(&mut self, seqs: &[u32], pos: &[u32]) {
        self.invalid = self.group(seqs, pos).err();
        if self.invalid.is_some() {
            self.groups.clear();
            self.order.clear();
        }
    }

    fn finish(&mut self, touched: bool) -> Result<(), CudaError> {
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

/// A captured decode pass and the hash of the launches it was captured from.
struct Graph {
    hash: u64,
    graph: cudarc::driver::CudaGraph,
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
    gemm: Option<Gemm>,
    names: TypeKernels,
    widths: Vec<usize>,
    acts: Vec<DevBuf>,
    max_batch: usize,
    max_logit_rows: usize,
    max_width: usize,
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
    dev: CudaDevice,
}

// SAFETY: the raw device pointers and the cuBLAS handle are only used by the backend's
// owner (through `&mut self` or the ops of a pass it runs), one thread at a time; CUDA graph
// objects may be used from any thread as long as calls are serialized, which `&mut self`
// ensures.
unsafe impl Send for CudaBackend {}

/// Sizes every buffer of a backend would allocate.
struct Sizes {
    acts: usize,
    scratch: usize,
    kv: usize,
    rec: usize,
    max_width: usize,
    /// Bytes of the f16 weight tile of the GEMM path.
    tile: usize,
    n_split: usize,
    split_len: usize,
    max_heads: usize,
    max_hd: usize,
}

#[allow(clippy::too_many_arguments)]
fn sizes(
    plan: &Plan,
    max_batch: usize,
    kv: &KvConfig,
    rec: Option<&RecurrentConfig>,
    max_heads: usize,
    max_hd: usize,
    total: usize,
) -> Sizes {
    let tile = tile_bytes(total);
    // The widest per-token buffer bounds every matmul input (its f16 and 8-bit copies) and
    // input row; the buffers of a few rows (the logits, vocabulary-wide) are outputs only.
    let max_width = plan
        .widths
        .iter()
        .zip(&plan.rows)
        .filter(|(_, rows)| rows.is_none())
        .map(|(&w, _)| w)
        .max()
        .unwrap_or(1)
        .max(32);
    let acts = plan.bytes(max_batch);
    let n_split = kv.n_ctx.div_ceil(256).clamp(1, ATT_MAX_SPLITS);
    let split_len = kv.n_ctx.div_ceil(n_split).max(1);
    let part = ATT_TOKENS * max_heads * n_split * (max_hd + 2) * 4;
    let q8 = max_batch * (max_width / 32 + 1) * 40;
    let xh = max_batch * max_width * 2;
    let info = InfoLayout::new(max_batch).len * 4;
    let embd = max_batch * max_width * 4;
    let scratch = part + q8 + xh + tile + info + embd;
    let kvb = 2 * kv.n_layers * kv.n_seq * kv.n_ctx * kv.kv_dim * 2;
    let recb = rec.map_or(0, |r| {
        rec_bytes(r, kv.n_seq).iter().sum::<usize>()
            + ROLLBACK_TOKENS * r.net.value_dim() * 4
            + 64 * 4
    });
    Sizes {
        acts,
        scratch,
        kv: kvb,
        rec: recb,
        max_width,
        tile,
        n_split,
        split_len,
        max_heads,
        max_hd,
    }
}

/// The largest (query heads, head size) of the attention a pass uses, for sizing the
/// decode partials: from the KV shape and what the model says.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    /// Most query heads of any layer.
    pub max_heads: usize,
    /// Largest head size.
    pub max_head_dim: usize,
}

impl CudaBackend {
    /// What loading a model with these buffers and weights would take on `dev`'s GPU (free
    /// memory read now).
    pub fn plan_memory(
        dev: &CudaDevice,
        plan: &Plan,
        max_batch: usize,
        kv: &KvConfig,
        rec: Option<&RecurrentConfig>,
        attn: AttnShape,
        used: &Collected,
    ) -> MemoryPlan {
        let (free, total) = dev.ctx.mem_get_info().unwrap_or((0, 0));
        let s = sizes(
            plan,
            max_batch,
            kv,
            rec,
            attn.max_heads,
            attn.max_head_dim,
            dev.gpu.memory_bytes as usize,
        );
        let weights = used.weights.iter().map(|w| w.bytes().len()).sum::<usize>()
            + used.vectors.iter().map(|v| v.len() * 4).sum::<usize>();
        MemoryPlan {
            device: format!(
                "GPU {} ({}, sm_{})",
                dev.gpu.ordinal, dev.gpu.name, dev.gpu.sm
            ),
            weights,
            kv_cache: s.kv,
            recurrent: s.rec,
            activations: s.acts,
            scratch: s.scratch,
            reserve: reserve_bytes(dev.gpu.memory_bytes as usize),
            free,
            total,
        }
    }

    /// Allocates everything for a model with this `plan` and batches of up to `max_batch`
    /// tokens, uploads the weights and vectors `used` (what [`crate::collect::Collect`]
    /// recorded), and loads cuBLAS for the prompt path. Not enough memory is an error here,
    /// before anything runs.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        dev: CudaDevice,
        plan: &Plan,
        max_batch: usize,
        kv: KvConfig,
        rec: Option<RecurrentConfig>,
        attn: AttnShape,
        used: &Collected,
    ) -> Result<CudaBackend, CudaError> {
        dev.ctx
            .bind_to_thread()
            .map_err(drv("binding the context"))?;
        let max_batch = max_batch.max(1);
        let mem = CudaBackend::plan_memory(&dev, plan, max_batch, &kv, rec.as_ref(), attn, used);
        if !mem.fits() {
            return Err(CudaError::OutOfMemory(format!(
                "{mem}; lower --ctx-size, --parallel or --batch-size, or run on the CPU \
                 (--gpu-layers 0)"
            )));
        }
        for w in &used.weights {
            check_weight(w).map_err(CudaError::Unsupported)?;
        }
        if let Some(r) = &rec {
            let net = &r.net;
            if net.conv_kernel.max(1) - 1 > 7 {
                return Err(CudaError::Unsupported(format!(
                    "a convolution of {} taps (the CUDA kernel takes up to 8)",
                    net.conv_kernel
                )));
            }
            if !net.head_k.is_multiple_of(32) || net.head_k > 256 {
                return Err(CudaError::Unsupported(format!(
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
            dev.gpu.memory_bytes as usize,
        );
        let stream = dev.stream.cu_stream();
        // Weights, uploaded in their file layout.
        let mut weights = HashMap::new();
        let mut bufs = Vec::new();
        for w in &used.weights {
            let b = DevBuf::new(w.bytes().len(), "a weight matrix", stream)?;
            // SAFETY: `b` holds the weight's bytes; the host bytes stay alive (the model
            // owns them) until the stream is synchronized below.
            unsafe { result::memcpy_htod_async(b.ptr, w.bytes(), stream) }
                .map_err(drv("uploading a weight"))?;
            weights.insert(
                weight_key(w),
                DevWeight {
                    ptr: b.ptr,
                    ty: w.ty,
                    row_bytes: w.row_bytes(),
                },
            );
            bufs.push(b);
        }
        let mut vectors = HashMap::new();
        for (v, &k) in used.vectors.iter().zip(&used.vector_keys) {
            let b = DevBuf::new(v.len() * 4, "a weight vector", stream)?;
            // SAFETY: as above; `used` outlives the synchronization below.
            unsafe { result::memcpy_htod_async(b.ptr, v.as_slice(), stream) }
                .map_err(drv("uploading a vector"))?;
            vectors.insert(k, b.ptr);
            bufs.push(b);
        }
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
        let kv_elems = kv.n_layers * kv.n_seq * kv.n_ctx * kv.kv_dim;
        let rec = match rec {
            None => None,
            Some(cfg) => {
                let [c, m, r] = rec_bytes(&cfg, kv.n_seq);
                let ident: Vec<u32> = (0..ROLLBACK_TOKENS as u32).collect();
                let ib = DevBuf::new(ROLLBACK_TOKENS * 4, "recurrent scratch", stream)?;
                // SAFETY: `ib` holds ROLLBACK_TOKENS u32; the copy from pageable memory is
                // staged before the call returns, ordered after the zeroing on our stream.
                unsafe { result::memcpy_htod_async(ib.ptr, &ident[..], stream) }
                    .map_err(drv("uploading the rollback order"))?;
                Some(RecHost {
                    cur: vec![0; kv.n_seq],
                    win: vec![Window::default(); kv.n_seq],
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
            gemm,
            names: TypeKernels::new(),
            widths: plan.widths.clone(),
            acts,
            // The info buffer holds max_batch logit ids.
            max_logit_rows: plan.min_fixed_rows().unwrap_or(max_batch).min(max_batch),
            max_batch,
            max_width: s.max_width,
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
            kc: DevBuf::new(kv_elems * 2, "the key cache", stream)?,
            vc: DevBuf::new(kv_elems * 2, "the value cache", stream)?,
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
    pub fn device(&self) -> &CudaDevice {
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

    fn check_batch(&self, batch: &Batch, vocab: usize) -> Result<(), CudaError> {
        if batch.len() > self.max_batch {
            return Err(CudaError::BatchTooLarge(batch.len(), self.max_batch));
        }
        if batch.logits.len() > self.max_logit_rows
            || batch.logits.iter().any(|&i| i as usize >= batch.len())
        {
            return Err(CudaError::BadLogits(
                batch.logits.len(),
                self.max_logit_rows,
            ));
        }
        for (i, (&pos, &seq)) in batch.pos.iter().zip(&batch.seq).enumerate() {
            if pos as usize >= self.kv.n_ctx || seq as usize >= self.kv.n_seq {
                return Err(CudaError::OutOfContext {
                    index: i,
                    pos,
                    seq,
                    n_ctx: self.kv.n_ctx,
                    n_seq: self.kv.n_seq,
                });
            }
        }
        if let Some(&t) = batch.tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(CudaError::BadToken(t));
        }
        if batch.pos.len() != batch.len() || batch.seq.len() != batch.len() {
            return Err(CudaError::Op {
                op: "forward".into(),
                reason: format!(
                    "{} tokens with {} positions and {} sequence ids",
                    batch.len(),
                    batch.pos.len(),
                    batch.seq.len()
                ),
            });
        }
        if !batch.embd.is_empty() {
            let n = batch.len().max(1);
            if !batch.embd.len().is_multiple_of(n) || batch.embd.len() / n > self.max_width {
                return Err(CudaError::BadEmbeddings(
                    batch.embd.len(),
                    batch.len(),
                    self.max_width,
                ));
            }
        }
        Ok(())
    }

    /// Uploads the batch's tokens, positions, sequences, key ends, logit rows and recurrent
    /// groups (one copy), and its input rows if any.
    fn upload_batch(&mut self, batch: &Batch) -> Result<(), CudaError> {
        let l = self.layout;
        let n = batch.len();
        let h = &mut self.info_host;
        h[l.tokens..l.tokens + n].copy_from_slice(&batch.tokens);
        h[l.pos..l.pos + n].copy_from_slice(&batch.pos);
        h[l.seq..l.seq + n].copy_from_slice(&batch.seq);
        for t in 0..n {
            h[l.kend + t] = if batch.non_causal {
                let s = batch.seq[t];
                let last = batch
                    .seq
                    .iter()
                    .zip(&batch.pos)
                    .filter(|(&q, _)| q == s)
                    .map(|(_, &p)| p)
                    .max()
                    .unwrap_or(batch.pos[t]);
                last + 1
            } else {
                batch.pos[t] + 1
            };
        }
        h[l.logits..l.logits + batch.logits.len()].copy_from_slice(&batch.logits);
        for t in 0..n {
            let p = batch.rope_pos.get(t).copied().unwrap_or([batch.pos[t]; 3]);
            h[l.rope3 + 3 * t..l.rope3 + 3 * t + 3].copy_from_slice(&p);
        }
        if let Some(rec) = &self.rec {
            h[l.order..l.order + rec.order.len()].copy_from_slice(&rec.order);
            for (i, g) in rec.groups.iter().enumerate() {
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
    pub fn forward<F>(&mut self, batch: &Batch, vocab: usize, f: F) -> Result<(), CudaError>
    where
        F: Fn(&CudaOps),
    {
        self.dev
            .ctx
            .bind_to_thread()
            .map_err(drv("binding the context"))?;
        self.check_batch(batch, vocab)?;
        if let Some(rec) = &mut self.rec {
            rec.prepare(&batch.seq, &batch.pos);
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
            rec.finish(touched)?;
        }
        Ok(())
    }

    /// A one-token pass through a graph: hashes the launches of a dry run, replays the graph
    /// captured for that hash or captures one. Returns whether a recurrent op ran.
    fn forward_graph<F>(&mut self, batch: &Batch, f: &F) -> Result<bool, CudaError>
    where
        F: Fn(&CudaOps),
    {
        let dry = CudaOps::new(self, batch, Mode::Hash);
        f(&dry);
        let hash = dry.hash.get();
        let blas = dry.used_blas.get();
        let touched = dry.result()?;
        if blas {
            let ops = CudaOps::new(self, batch, Mode::Launch);
            f(&ops);
            return ops.result();
        }
        if let Some(g) = self.graphs.iter().find(|g| g.hash == hash) {
            g.graph.launch().map_err(drv("replaying a decode graph"))?;
            return Ok(touched);
        }
        let stream = self.dev.stream.clone();
        let captured = (|| -> Result<Option<cudarc::driver::CudaGraph>, String> {
            stream
                .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
                .map_err(|e| format!("begin capture: {e}"))?;
            let ops = CudaOps::new(self, batch, Mode::Launch);
            f(&ops);
            let res = ops.result();
            let g = stream
                .end_capture(sys::CUgraphInstantiate_flags(0))
                .map_err(|e| format!("end capture: {e}"));
            res.map_err(|e| e.to_string())?;
            g
        })();
        match captured {
            Ok(Some(graph)) => {
                graph
                    .launch()
                    .map_err(drv("launching a new decode graph"))?;
                if self.graphs.len() >= MAX_GRAPHS {
                    self.graphs.remove(0);
                }
                self.graphs.push(Graph { hash, graph });
                Ok(touched)
            }
            Ok(None) | Err(_) => {
                // Capturing failed: turn graphs off and run the pass plainly.
                self.graph_note = Some(match captured {
                    Err(e) => format!("CUDA graphs off: {e}"),
                    _ => "CUDA graphs off: the capture was empty".into(),
                });
                self.graphs_on = false;
                let ops = CudaOps::new(self, batch, Mode::Launch);
                f(&ops);
                ops.result()
            }
        }
    }

    /// Waits for the stream; a kernel fault since the last wait is reported here.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.dev.stream.synchronize().map_err(|e| {
            CudaError::Device(format!(
                "a kernel failed: {e} (run with SURPLUS_CUDA_SYNC=1 to find which)"
            ))
        })
    }

    /// Writes `data` (whole rows) into the first rows of an activation buffer.
    pub fn write(&mut self, act: Act, data: &[f32]) -> Result<(), CudaError> {
        let b = &self.acts[act.id as usize];
        if !data.len().is_multiple_of(act.width) || data.len() * 4 > b.bytes {
            return Err(CudaError::Op {
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

    /// The first `rows` rows of an activation buffer, after the passes so far (waits).
    pub fn read(&mut self, act: Act, rows: usize) -> Result<&[f32], CudaError> {
        let b = &self.acts[act.id as usize];
        let n = rows * act.width;
        if n * 4 > b.bytes {
            return Err(CudaError::Op {
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
    pub fn kv_copy(&mut self, src: usize, dst: usize, len: usize) -> Result<(), CudaError> {
        let c = &self.kv;
        if src >= c.n_seq || dst >= c.n_seq {
            return Err(CudaError::Op {
                op: "kv_copy".into(),
                reason: format!("sequences {src} -> {dst} of {}", c.n_seq),
            });
        }
        let per_seq = c.n_ctx * c.kv_dim * 2;
        let n = len.min(c.n_ctx) * c.kv_dim * 2;
        let stream = self.dev.stream.cu_stream();
        for layer in 0..c.n_layers {
            let s = ((layer * c.n_seq + src) * per_seq) as u64;
            let d = ((layer * c.n_seq + dst) * per_seq) as u64;
            for buf in [&self.kc, &self.vc] {
                // SAFETY: both ranges lie inside the cache (sequence slots of n_ctx
                // positions); distinct sequences do not overlap.
                unsafe { result::memcpy_dtod_async(buf.ptr + d, buf.ptr + s, n, stream) }
                    .map_err(drv("kv_copy"))?;
            }
        }
        Ok(())
    }

    /// Positions the recurrent state of `seq` covers (`None` without recurrent layers).
    pub fn recurrent_len(&self, seq: u32) -> Option<usize> {
        self.rec
            .as_ref()
            .and_then(|r| r.win.get(seq as usize).map(|w| w.len() as usize))
    }

    fn func(&self, name: &str) -> Result<sys::CUfunction, CudaError> {
        self.dev
            .function(name)
            .map(|f| f.cu_function())
            .map_err(|e| CudaError::Op {
                op: name.into(),
                reason: e,
            })
    }

    /// A launch outside a pass (rollback).
    fn launch_now(
        &self,
        name: &str,
        grid: (u32, u32, u32),
        block: u32,
        args: &[Arg],
    ) -> Result<(), CudaError> {
        let f = self.func(name)?;
        let mut ptrs = [std::ptr::null_mut::<c_void>(); MAX_ARGS];
        for (p, a) in ptrs.iter_mut().zip(args) {
            *p = a.ptr();
        }
        // SAFETY: `args` match the kernel's parameter list in its .cu file (each caller
        // passes them in order, with device pointers into buffers sized for `grid`), and
        // they outlive the call (cuLaunchKernel copies them).
        unsafe {
            result::launch_kernel(
                f,
                grid,
                (block, 1, 1),
                0,
                self.dev.stream.cu_stream(),
                &mut ptrs[..args.len()],
            )
        }
        .map_err(|e| CudaError::Op {
            op: name.into(),
            reason: format!("launch failed: {e}"),
        })
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

/// A kernel argument: a device pointer, an int, a float or a 64-bit int.
#[derive(Clone, Copy, Debug)]
enum Arg {
    P(u64),
    I(i32),
    F(f32),
    L(i64),
}

const MAX_ARGS: usize = 24;

impl Arg {
    fn ptr(&self) -> *mut c_void {
        match self {
            Arg::P(v) => v as *const u64 as *mut c_void,
            Arg::I(v) => v as *const i32 as *mut c_void,
            Arg::F(v) => v as *const f32 as *mut c_void,
            Arg::L(v) => v as *const i64 as *mut c_void,
        }
    }

    fn bits(&self) -> u64 {
        match *self {
            Arg::P(v) => v,
            Arg::I(v) => v as u32 as u64 | 1 << 40,
            Arg::F(v) => v.to_bits() as u64 | 2 << 40,
            Arg::L(v) => v as u64 ^ 3 << 60,
        }
    }
}

/// What a pass does with its launches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Launches them.
    Launch,
    /// Only hashes them (the dry run before a graph replay).
    Hash,
}

/// One forward pass on the GPU: every op launches kernels on the backend's stream.
pub struct CudaOps<'a> {
    be: &'a CudaBackend,
    batch: &'a Batch,
    /// The sequence and first position when the batch is a prompt chunk.
    chunk: Option<(u32, u32)>,
    mode: Mode,
    hash: Cell<u64>,
    used_blas: Cell<bool>,
    err: RefCell<Option<CudaError>>,
    /// The activation buffer (and rows) `q8` holds quantized, and the one `xh` holds as f16.
    /// Which activation (id, rows, cols) the q8 / f16 scratch holds.
    quantized: Cell<Option<(u32, usize, usize)>>,
    halved: Cell<Option<(u32, usize, usize)>>,
    touched: Cell<bool>,
}

fn fnv(h: u64, v: u64) -> u64 {
    let mut h = h;
    for b in v.to_le_bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn grid1(n: usize, per: usize) -> u32 {
    n.div_ceil(per).max(1) as u32
}

impl<'a> CudaOps<'a> {
    fn new(be: &'a CudaBackend, batch: &'a Batch, mode: Mode) -> CudaOps<'a> {
        CudaOps {
            be,
            batch,
            chunk: batch.prompt_chunk(GEMM_MIN_TOKENS),
            mode,
            hash: Cell::new(0xcbf2_9ce4_8422_2325),
            used_blas: Cell::new(false),
            err: RefCell::new(None),
            quantized: Cell::new(None),
            halved: Cell::new(None),
            touched: Cell::new(false),
        }
    }

    /// The pass's outcome: its first error, or whether a recurrent op ran.
    fn result(self) -> Result<bool, CudaError> {
        match self.err.into_inner() {
            Some(e) => Err(e),
            None => Ok(self.touched.get()),
        }
    }

    fn failed(&self) -> bool {
        self.err.borrow().is_some()
    }

    fn fail(&self, op: &str, reason: String) {
        let mut e = self.err.borrow_mut();
        if e.is_none() {
            *e = Some(CudaError::Op {
                op: op.to_string(),
                reason,
            });
        }
    }

    /// The device address of an activation buffer, checking its width.
    fn act(&self, a: Act) -> u64 {
        match self.be.widths.get(a.id as usize) {
            Some(&w) if w == a.width => self.be.acts[a.id as usize].ptr,
            _ => {
                self.fail(
                    "activation",
                    format!(
                        "buffer {} of width {} is not in this backend's plan",
                        a.id, a.width
                    ),
                );
                0
            }
        }
    }

    fn info(&self, off: usize) -> u64 {
        self.be.info.ptr + (off * 4) as u64
    }

    fn vector(&self, op: &str, v: &[f32]) -> u64 {
        match self.be.vectors.get(&vector_key(v)) {
            Some(&p) => p,
            None => {
                self.fail(
                    op,
                    format!(
                        "a vector of {} values was not uploaded at load (the model's code \
                         used a different one than in the load-time pass)",
                        v.len()
                    ),
                );
                0
            }
        }
    }

    fn weight(&self, op: &str, w: &Weight) -> Option<DevWeight> {
        let d = self.be.weights.get(&weight_key(w)).copied();
        if d.is_none() {
            self.fail(
                op,
                format!(
                    "a {:?} weight of {} × {} was not uploaded at load",
                    w.ty, w.rows, w.cols
                ),
            );
        }
        d
    }

    /// Notes that an op wrote `a`: forget converted copies of it.
    fn wrote(&self, a: Act) {
        for c in [&self.quantized, &self.halved] {
            if c.get().is_some_and(|(id, _, _)| id == a.id) {
                c.set(None);
            }
        }
    }

    /// Launches (or hashes) kernel `name`; `shapes` describes the call for error messages.
    fn launch(
        &self,
        name: &str,
        grid: (u32, u32, u32),
        block: u32,
        args: &[Arg],
        shapes: impl FnOnce() -> String,
    ) {
        if self.failed() {
            return;
        }
        if self.mode == Mode::Hash {
            let mut h = self.hash.get();
            h = fnv(h, name.as_ptr() as u64 ^ (name.len() as u64) << 48);
            h = fnv(h, grid.0 as u64 | (grid.1 as u64) << 32);
            h = fnv(h, grid.2 as u64 | (block as u64) << 32);
            for a in args {
                h = fnv(h, a.bits());
            }
            self.hash.set(h);
            // Still check the kernel exists, so a dry run fails as the real one would.
            if let Err(e) = self.be.func(name) {
                *self.err.borrow_mut() = Some(e);
            }
            return;
        }
        if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 || grid.1 > MAX_GRID_YZ || grid.2 > MAX_GRID_YZ
        {
            self.fail(name, format!("bad grid {grid:?} for {}", shapes()));
            return;
        }
        let f = match self.be.func(name) {
            Ok(f) => f,
            Err(e) => {
                *self.err.borrow_mut() = Some(e);
                return;
            }
        };
        let mut ptrs = [std::ptr::null_mut::<c_void>(); MAX_ARGS];
        for (p, a) in ptrs.iter_mut().zip(args) {
            *p = a.ptr();
        }
        // SAFETY: each op passes `args` in the order and types of the kernel's parameter
        // list in its .cu file, with device addresses of buffers allocated for the largest
        // batch and checked shapes, so the grid stays inside them; `args` outlives the call
        // (cuLaunchKernel copies the values).
        let r = unsafe {
            result::launch_kernel(
                f,
                grid,
                (block, 1, 1),
                0,
                self.be.dev.stream.cu_stream(),
                &mut ptrs[..args.len()],
            )
        };
        if let Err(e) = r {
            self.fail(
                name,
                format!(
                    "launch failed: {e} (grid {grid:?}, block {block}; {})",
                    shapes()
                ),
            );
            return;
        }
        if self.be.sync_each {
            if let Err(e) = self.be.dev.stream.synchronize() {
                self.fail(
                    name,
                    format!(
                        "kernel failed: {e} (grid {grid:?}, block {block}; {})",
                        shapes()
                    ),
                );
            }
        }
    }

    /// Element-wise kernel over `n` rows of `width`.
    fn rows_kernel(&self, name: &str, n: usize, width: usize, args: &[Arg]) {
        self.launch(name, (grid1(width, 256), n as u32, 1), 256, args, || {
            format!("{n} rows of {width}")
        });
    }

    /// The batch's activations quantized to bq8 blocks (cached while `x` is unchanged).
    fn quantize(&self, n: usize, x: Act, cols: usize) -> u64 {
        let key = Some((x.id, n, cols));
        if self.quantized.get() != key {
            let nb = (cols / 32) as i32;
            self.launch(
                "quantize_q8_1",
                (grid1(cols / 32, 8), n as u32, 1),
                256,
                &[
                    Arg::P(self.act(x)),
                    Arg::I(x.width as i32),
                    Arg::P(self.be.q8.ptr),
                    Arg::I(nb),
                    Arg::I(cols as i32),
                ],
                || format!("{n} rows of {cols} (buffer width {})", x.width),
            );
            self.quantized.set(key);
        }
        self.be.q8.ptr
    }

    fn matmul_gemm(&self, n: usize, w: &Weight, dw: DevWeight, x: Act, out: Act) {
        let (rows, cols) = (w.rows, w.cols);
        let key = Some((x.id, n, cols));
        if self.halved.get() != key {
            self.launch(
                "f32_to_f16",
                (grid1(cols, 256), n as u32, 1),
                256,
                &[
                    Arg::P(self.act(x)),
                    Arg::I(x.width as i32),
                    Arg::P(self.be.xh.ptr),
                    Arg::I(cols as i32),
                ],
                || format!("{n} rows of {cols}"),
            );
            self.halved.set(key);
        }
        let deq = &self.be.names.deq[&dw.ty];
        // Tiles of a multiple of 64 rows keep the output columns 256-byte aligned for cuBLAS;
        // a tile's rows are the dequantizing launch's grid y, which stops at 65535.
        let fit = (self.be.tile_elems / cols).min(MAX_GRID_YZ as usize);
        let tile_rows = if fit >= 64 { fit / 64 * 64 } else { fit }.clamp(1, rows);
        let o = self.act(out);
        self.used_blas.set(true);
        let mut r0 = 0;
        while r0 < rows && !self.failed() {
            let rb = tile_rows.min(rows - r0);
            self.launch(
                deq,
                (grid1(cols / 32, 128), rb as u32, 1),
                128,
                &[
                    Arg::P(dw.ptr),
                    Arg::L(dw.row_bytes as i64),
                    Arg::P(self.be.tile.ptr),
                    Arg::I(cols as i32),
                    Arg::I(r0 as i32),
                ],
                || format!("rows {r0}..{} of a {:?} {rows} × {cols}", r0 + rb, w.ty),
            );
            if self.mode == Mode::Launch && !self.failed() {
                let Some(g) = &self.be.gemm else { return };
                // SAFETY: the tile holds rb × cols f16 (rb ≤ tile_elems / cols), xh holds
                // n × cols f16, out holds n rows of out.width ≥ rows floats, from column r0;
                // all were written by earlier work on the handle's stream.
                let r = unsafe {
                    g.f16_f32(
                        rb,
                        n,
                        cols,
                        self.be.tile.ptr,
                        cols,
                        self.be.xh.ptr,
                        cols,
                        o + (r0 * 4) as u64,
                        out.width,
                    )
                };
                if let Err(e) = r {
                    self.fail("matmul (cuBLAS)", e);
                }
            } else {
                self.hash
                    .set(fnv(self.hash.get(), (rb as u64) << 32 | r0 as u64));
            }
            r0 += rb;
        }
    }
}

impl Ops for CudaOps<'_> {
    fn batch(&self) -> &Batch {
        self.batch
    }

    fn embed(&self, w: &Weight, out: Act) {
        let n = self.batch.len();
        let o = self.act(out);
        if !self.batch.embd.is_empty() {
            let gw = self.batch.embd.len() / n.max(1);
            self.rows_kernel(
                "embd_rows",
                n,
                out.width,
                &[
                    Arg::P(self.be.embd.ptr),
                    Arg::I(gw as i32),
                    Arg::P(o),
                    Arg::I(out.width as i32),
                    Arg::I(out.width as i32),
                ],
            );
        } else if let Some(dw) = self.weight("embed", w) {
            if w.cols > out.width {
                self.fail(
                    "embed",
                    format!("rows of {} into a buffer of {}", w.cols, out.width),
                );
                return;
            }
            self.launch(
                &self.be.names.rows[&dw.ty],
                (grid1(w.cols / 32, 128), n as u32, 1),
                128,
                &[
                    Arg::P(dw.ptr),
                    Arg::L(dw.row_bytes as i64),
                    Arg::P(self.info(self.be.layout.tokens)),
                    Arg::P(o),
                    Arg::I(out.width as i32),
                    Arg::I(w.cols as i32),
                ],
                || format!("{n} rows of a {:?} {} × {}", w.ty, w.rows, w.cols),
            );
        }
        self.wrote(out);
    }

    fn rms_norm(&self, n: usize, x: Act, w: Option<&[f32]>, eps: f32, row_len: usize, out: Act) {
        let per_token = x.width / row_len.max(1);
        if n * per_token == 0 {
            return;
        }
        let wp = w.map_or(0, |w| self.vector("rms_norm", w));
        if w.is_some() && wp == 0 {
            return;
        }
        self.launch(
            "rms_norm",
            ((n * per_token).max(1) as u32, 1, 1),
            256,
            &[
                Arg::P(self.act(x)),
                Arg::I(x.width as i32),
                Arg::P(wp),
                Arg::P(self.act(out)),
                Arg::I(out.width as i32),
                Arg::I(row_len as i32),
                Arg::I(per_token as i32),
                Arg::F(eps),
            ],
            || format!("{n} tokens × {per_token} rows of {row_len}"),
        );
        self.wrote(out);
    }

    fn matmul(&self, n: usize, w: &Weight, x: Act, out: Act) {
        self.wrote(out);
        let Some(dw) = self.weight("matmul", w) else {
            return;
        };
        if n == 0 {
            return;
        }
        if w.cols > x.width || w.rows > out.width || w.cols > self.be.max_width {
            self.fail(
                "matmul",
                format!(
                    "a {} × {} weight with inputs of {} and outputs of {} values",
                    w.rows, w.cols, x.width, out.width
                ),
            );
            return;
        }
        if self.chunk.is_some() && n >= GEMM_MIN_TOKENS && self.be.gemm.is_some() {
            self.matmul_gemm(n, w, dw, x, out);
            self.wrote(out);
            return;
        }
        let (rows, cols) = (w.rows, w.cols);
        let shapes = || format!("{n} tokens × a {:?} {rows} × {cols}", w.ty);
        let grid = (grid1(rows, 4), grid1(n, 8), 1);
        if let Some(k) = self.be.names.mmvq.get(&dw.ty) {
            let q = self.quantize(n, x, cols);
            self.launch(
                k,
                grid,
                128,
                &[
                    Arg::P(dw.ptr),
                    Arg::L(dw.row_bytes as i64),
                    Arg::P(q),
                    Arg::I((cols / 32) as i32),
                    Arg::P(self.act(out)),
                    Arg::I(out.width as i32),
                    Arg::I(cols as i32),
                    Arg::I(rows as i32),
                    Arg::I(n as i32),
                ],
                shapes,
            );
        } else {
            self.launch(
                &self.be.names.mmv[&dw.ty],
                grid,
                128,
                &[
                    Arg::P(dw.ptr),
                    Arg::L(dw.row_bytes as i64),
                    Arg::P(self.act(x)),
                    Arg::I(x.width as i32),
                    Arg::P(self.act(out)),
                    Arg::I(out.width as i32),
                    Arg::I(cols as i32),
                    Arg::I(rows as i32),
                    Arg::I(n as i32),
                ],
                shapes,
            );
        }
        self.wrote(out);
    }

    fn add_bias(&self, n: usize, x: Act, b: &[f32]) {
        let bp = self.vector("add_bias", b);
        self.rows_kernel(
            "add_bias",
            n,
            b.len().min(x.width),
            &[
                Arg::P(self.act(x)),
                Arg::I(x.width as i32),
                Arg::P(bp),
                Arg::I(b.len().min(x.width) as i32),
            ],
        );
        self.wrote(x);
    }

    fn rope(&self, x: Act, n_heads: usize, head_dim: usize, rope: &Rope) {
        let n = self.batch.len();
        let fp = self.vector("rope", &rope.inv_freq);
        let half = rope.n_rot / 2;
        // M-RoPE: each pair's position component, 2 bits a pair in four words.
        let mut sec = [0u32; 4];
        // Positions given per token: the pairs without a section turn by t (as on the CPU).
        let multi = !self.batch.rope_pos.is_empty();
        if multi && !rope.section.is_empty() {
            if half > 64 {
                self.fail(
                    "rope",
                    format!("{half} rotary pairs with sections (64 at most)"),
                );
                return;
            }
            for (i, &c) in rope.section.iter().take(half).enumerate() {
                sec[i / 16] |= (c.min(3) as u32) << (2 * (i % 16));
            }
        }
        let pos3 = if multi {
            self.info(self.be.layout.rope3)
        } else {
            0
        };
        if rope.n_rot > head_dim || n_heads * head_dim > x.width || rope.inv_freq.len() < half {
            self.fail(
                "rope",
                format!(
                    "{n_heads} heads of {head_dim} (rotating {}) in rows of {}",
                    rope.n_rot, x.width
                ),
            );
            return;
        }
        self.launch(
            "rope",
            (grid1(n_heads * half, 256), n as u32, 1),
            256,
            &[
                Arg::P(self.act(x)),
                Arg::I(x.width as i32),
                Arg::P(self.info(self.be.layout.pos)),
                Arg::P(fp),
                Arg::I(n_heads as i32),
                Arg::I(head_dim as i32),
                Arg::I(rope.n_rot as i32),
                Arg::F(rope.freq_scale),
                Arg::I((rope.mode == RopeMode::Neox) as i32),
                Arg::P(pos3),
                Arg::I(sec[0] as i32),
                Arg::I(sec[1] as i32),
                Arg::I(sec[2] as i32),
                Arg::I(sec[3] as i32),
            ],
            || format!("{n} tokens × {n_heads} heads of {head_dim}"),
        );
        self.wrote(x);
    }

    fn attention(&self, layer: usize, q: Act, k: Act, v: Act, spec: &Attention, out: Act) {
        let be = self.be;
        let c = &be.kv;
        let n = self.batch.len();
        let hd = spec.head_dim;
        let kv_dim = spec.n_kv_heads * hd;
        let shapes = || {
            format!(
                "layer {layer}, {n} tokens, {} heads / {} kv heads of {hd}, n_ctx {}",
                spec.n_heads, spec.n_kv_heads, c.n_ctx
            )
        };
        if layer >= c.n_layers
            || kv_dim != c.kv_dim
            || !hd.is_multiple_of(32)
            || hd > 256
            || spec.n_kv_heads == 0
            || !spec.n_heads.is_multiple_of(spec.n_kv_heads)
            || spec.n_heads * hd > q.width.min(out.width)
            || kv_dim > k.width.min(v.width)
            || spec.n_heads > 65535
        {
            self.fail(
                "attention",
                format!(
                    "unsupported shape: {} (KV cache of {} layers × {}; head sizes must be \
                     multiples of 32 up to 256)",
                    shapes(),
                    c.n_layers,
                    c.kv_dim
                ),
            );
            return;
        }
        let layer_off = (layer * c.n_seq * c.n_ctx * c.kv_dim) as i64;
        let l = be.layout;
        self.launch(
            "kv_write",
            (grid1(kv_dim, 256), n as u32, 1),
            256,
            &[
                Arg::P(self.act(k)),
                Arg::I(k.width as i32),
                Arg::P(self.act(v)),
                Arg::I(v.width as i32),
                Arg::P(be.kc.ptr),
                Arg::P(be.vc.ptr),
                Arg::P(self.info(l.pos)),
                Arg::P(self.info(l.seq)),
                Arg::I(kv_dim as i32),
                Arg::I(c.n_ctx as i32),
                Arg::L(layer_off),
            ],
            shapes,
        );
        let softcap = spec.softcap.unwrap_or(0.0);
        let window = spec.window.map_or(0, |w| w.min(i32::MAX as u32) as i32);
        if let Some((seq, p0)) = self.chunk {
            self.launch(
                "attn_prefill",
                (grid1(n, 8), spec.n_heads as u32, 1),
                128,
                &[
                    Arg::P(self.act(q)),
                    Arg::I(q.width as i32),
                    Arg::P(be.kc.ptr),
                    Arg::P(be.vc.ptr),
                    Arg::P(self.act(out)),
                    Arg::I(out.width as i32),
                    Arg::I(n as i32),
                    Arg::I(seq as i32),
                    Arg::I(p0 as i32),
                    Arg::I(spec.n_heads as i32),
                    Arg::I(spec.n_kv_heads as i32),
                    Arg::I(hd as i32),
                    Arg::I(c.n_ctx as i32),
                    Arg::L(layer_off),
                    Arg::F(spec.scale),
                    Arg::F(softcap),
                    Arg::I(window),
                    Arg::I(self.batch.non_causal as i32),
                ],
                shapes,
            );
            self.wrote(out);
            return;
        }
        // Decode: slices of ATT_TOKENS tokens, a fixed number of splits over the context.
        if ATT_TOKENS * spec.n_heads * be.n_split * (hd + 2) * 4 > be.part.bytes {
            self.fail(
                "attention",
                format!("{} exceeds the partials planned at load", shapes()),
            );
            return;
        }
        let (qp, op) = (self.act(q), self.act(out));
        for t0 in (0..n).step_by(ATT_TOKENS) {
            let nt = ATT_TOKENS.min(n - t0);
            let off = |base: usize| self.info(base + t0);
            self.launch(
                "attn_decode",
                (spec.n_heads as u32, nt as u32, be.n_split as u32),
                128,
                &[
                    Arg::P(qp + (t0 * q.width * 4) as u64),
                    Arg::I(q.width as i32),
                    Arg::P(be.kc.ptr),
                    Arg::P(be.vc.ptr),
                    Arg::P(off(l.pos)),
                    Arg::P(off(l.seq)),
                    Arg::P(off(l.kend)),
                    Arg::P(be.part.ptr),
                    Arg::I(spec.n_heads as i32),
                    Arg::I(spec.n_kv_heads as i32),
                    Arg::I(hd as i32),
                    Arg::I(c.n_ctx as i32),
                    Arg::L(layer_off),
                    Arg::F(spec.scale),
                    Arg::F(softcap),
                    Arg::I(window),
                    Arg::I(be.split_len as i32),
                ],
                shapes,
            );
            self.launch(
                "attn_combine",
                (spec.n_heads as u32, nt as u32, 1),
                hd as u32,
                &[
                    Arg::P(be.part.ptr),
                    Arg::P(op + (t0 * out.width * 4) as u64),
                    Arg::I(out.width as i32),
                    Arg::I(spec.n_heads as i32),
                    Arg::I(hd as i32),
                    Arg::I(be.n_split as i32),
                ],
                shapes,
            );
        }
        self.wrote(out);
    }

    fn swiglu(&self, n: usize, gate: Act, up: Act, out: Act) {
        self.zip("swiglu", n, gate, up, out);
    }

    fn geglu(&self, n: usize, gate: Act, up: Act, out: Act) {
        self.zip("geglu", n, gate, up, out);
    }

    fn add(&self, n: usize, a: Act, b: Act, out: Act) {
        self.zip("add", n, a, b, out);
    }

    fn scale(&self, n: usize, x: Act, s: f32) {
        self.rows_kernel(
            "scale",
            n,
            x.width,
            &[
                Arg::P(self.act(x)),
                Arg::I(x.width as i32),
                Arg::F(s),
                Arg::I(x.width as i32),
            ],
        );
        self.wrote(x);
    }

    fn gather_logit_rows(&self, x: Act, out: Act) {
        let n = self.batch.logits.len();
        if n == 0 {
            return;
        }
        if x.width > out.width {
            self.fail(
                "gather_logit_rows",
                format!("rows of {} into {}", x.width, out.width),
            );
            return;
        }
        self.rows_kernel(
            "copy_rows",
            n,
            x.width,
            &[
                Arg::P(self.act(x)),
                Arg::I(x.width as i32),
                Arg::P(self.info(self.be.layout.logits)),
                Arg::P(self.act(out)),
                Arg::I(out.width as i32),
                Arg::I(x.width as i32),
            ],
        );
        self.wrote(out);
    }

    fn softcap(&self, n: usize, x: Act, cap: f32) {
        self.rows_kernel(
            "softcap",
            n,
            x.width,
            &[
                Arg::P(self.act(x)),
                Arg::I(x.width as i32),
                Arg::F(cap),
                Arg::I(x.width as i32),
            ],
        );
        self.wrote(x);
    }

    fn unzip(&self, n: usize, x: Act, half: usize, a: Act, b: Act) {
        let groups = x.width / (2 * half.max(1));
        let width = groups * half;
        if width > a.width.min(b.width) {
            self.fail(
                "unzip",
                format!(
                    "{groups} pairs of {half} into rows of {} and {}",
                    a.width, b.width
                ),
            );
            return;
        }
        self.rows_kernel(
            "unzip",
            n,
            width,
            &[
                Arg::P(self.act(x)),
                Arg::I(x.width as i32),
                Arg::P(self.act(a)),
                Arg::I(a.width as i32),
                Arg::P(self.act(b)),
                Arg::I(b.width as i32),
                Arg::I(half as i32),
                Arg::I(width as i32),
            ],
        );
        self.wrote(a);
        self.wrote(b);
    }

    fn sigmoid_mul(&self, n: usize, x: Act, gate: Act, out: Act) {
        self.zip("sigmoid_mul", n, x, gate, out);
    }

    fn concat(&self, n: usize, a: Act, b: Act, out: Act) {
        let width = a.width + b.width;
        if width > out.width {
            self.fail(
                "concat",
                format!("{} + {} values into {}", a.width, b.width, out.width),
            );
            return;
        }
        self.rows_kernel(
            "concat",
            n,
            width,
            &[
                Arg::P(self.act(a)),
                Arg::I(a.width as i32),
                Arg::I(a.width as i32),
                Arg::P(self.act(b)),
                Arg::I(b.width as i32),
                Arg::P(self.act(out)),
                Arg::I(out.width as i32),
                Arg::I(width as i32),
            ],
        );
        self.wrote(out);
    }

    fn gated_rms_norm(&self, n: usize, x: Act, z: Act, w: &[f32], eps: f32, out: Act) {
        let row_len = w.len().max(1);
        let per_token = out.width / row_len;
        if n * per_token == 0 {
            return;
        }
        let wp = self.vector("gated_rms_norm", w);
        self.launch(
            "gated_rms_norm",
            ((n * per_token).max(1) as u32, 1, 1),
            256,
            &[
                Arg::P(self.act(x)),
                Arg::I(x.width as i32),
                Arg::P(self.act(z)),
                Arg::I(z.width as i32),
                Arg::P(wp),
                Arg::P(self.act(out)),
                Arg::I(out.width as i32),
                Arg::I(row_len as i32),
                Arg::I(per_token as i32),
                Arg::F(eps),
            ],
            || format!("{n} tokens × {per_token} rows of {row_len}"),
        );
        self.wrote(out);
    }

    fn delta_gates(&self, n: usize, alpha: Act, beta: Act, dt_bias: &[f32], a: &[f32]) {
        let heads = a.len().min(dt_bias.len()).min(alpha.width).min(beta.width);
        let (bp, ap) = (
            self.vector("delta_gates", dt_bias),
            self.vector("delta_gates", a),
        );
        self.rows_kernel(
            "delta_gates",
            n,
            heads,
            &[
                Arg::P(self.act(alpha)),
                Arg::I(alpha.width as i32),
                Arg::P(self.act(beta)),
                Arg::I(beta.width as i32),
                Arg::P(bp),
                Arg::P(ap),
                Arg::I(heads as i32),
            ],
        );
        self.wrote(alpha);
        self.wrote(beta);
    }

    fn conv_silu(&self, layer: usize, x: Act, w: &[f32], net: &DeltaNet, out: Act) {
        self.wrote(out);
        let Some(rec) = self.rec("conv_silu", layer, net) else {
            return;
        };
        let (ch, k) = (net.conv_channels(), net.conv_kernel.max(1));
        if w.len() < ch * k || ch > x.width.min(out.width) {
            self.fail(
                "conv_silu",
                format!(
                    "{ch} channels × {k} taps ({} given), rows of {}",
                    w.len(),
                    x.width
                ),
            );
            return;
        }
        let wp = self.vector("conv_silu", w);
        let l = self.be.layout;
        self.launch(
            "conv_silu",
            (grid1(ch, 128), rec.groups.len() as u32, 1),
            128,
            &[
                Arg::P(self.act(x)),
                Arg::I(x.width as i32),
                Arg::P(wp),
                Arg::P(self.act(out)),
                Arg::I(out.width as i32),
                Arg::P(rec.conv.ptr),
                Arg::P(rec.replay.ptr),
                Arg::P(self.info(l.groups)),
                Arg::P(self.info(l.order)),
                Arg::I(layer as i32),
                Arg::I(rec.win.len() as i32),
                Arg::I(ch as i32),
                Arg::I(k as i32),
                Arg::I(net.n_v_heads as i32),
                Arg::I(ROLLBACK_TOKENS as i32),
            ],
            || {
                format!(
                    "recurrent layer {layer}, {ch} channels, {} sequences",
                    rec.groups.len()
                )
            },
        );
    }

    fn gated_delta(&self, layer: usize, qkv: Act, g: Act, beta: Act, net: &DeltaNet, out: Act) {
        self.wrote(out);
        let Some(rec) = self.rec("gated_delta", layer, net) else {
            return;
        };
        let (nk, nv, hk, hv) = (net.n_k_heads, net.n_v_heads, net.head_k, net.head_v);
        if net.conv_channels() > qkv.width || nv > g.width.min(beta.width) || nv * hv > out.width {
            self.fail(
                "gated_delta",
                format!(
                    "shapes {net:?} with rows of {}, {}, {}",
                    qkv.width, g.width, out.width
                ),
            );
            return;
        }
        let l = self.be.layout;
        self.launch(
            "gated_delta",
            (grid1(hv, 16), nv as u32, rec.groups.len() as u32),
            128,
            &[
                Arg::P(self.act(qkv)),
                Arg::I(qkv.width as i32),
                Arg::P(self.act(g)),
                Arg::I(g.width as i32),
                Arg::P(self.act(beta)),
                Arg::I(beta.width as i32),
                Arg::P(self.act(out)),
                Arg::I(out.width as i32),
                Arg::P(rec.ssm.ptr),
                Arg::P(rec.replay.ptr),
                Arg::P(self.info(l.groups)),
                Arg::P(self.info(l.order)),
                Arg::I(layer as i32),
                Arg::I(rec.win.len() as i32),
                Arg::I(nk as i32),
                Arg::I(nv as i32),
                Arg::I(hk as i32),
                Arg::I(hv as i32),
                Arg::F(net.eps),
                Arg::F(1.0 / (hk as f32).sqrt()),
                Arg::I(ROLLBACK_TOKENS as i32),
            ],
            || format!("recurrent layer {layer}, {nv} value heads of {hv} × {hk}"),
        );
    }
}

impl CudaOps<'_> {
    /// The recurrent state for an op on `layer`, noting that the pass uses it; `None` (and
    /// nothing to launch) when the batch cannot advance it (the pass then fails).
    fn rec(&self, op: &str, layer: usize, net: &DeltaNet) -> Option<&RecHost> {
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

    /// `out = f(a, b)` element-wise, row by row.
    fn zip(&self, name: &str, n: usize, a: Act, b: Act, out: Act) {
        let w = out.width.min(a.width).min(b.width);
        self.rows_kernel(
            name,
            n,
            w,
            &[
                Arg::P(self.act(a)),
                Arg::I(a.width as i32),
                Arg::P(self.act(b)),
                Arg::I(b.width as i32),
                Arg::P(self.act(out)),
                Arg::I(out.width as i32),
                Arg::I(w as i32),
            ],
        );
        self.wrote(out);
    }
}
