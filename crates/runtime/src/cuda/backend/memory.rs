//! How much device memory a model takes: the [`MemoryPlan`] shown before loading, the
//! size of every buffer, and the reserve left for the driver.

use std::fmt;

use cudarc::driver::{result, sys};

use super::{drv, BackendError, CudaBackend, InfoLayout};
use crate::collect::Collected;
use crate::cuda::gpu::GpuContext;
use crate::limits::{KvConfig, KvType};
use crate::ops::Plan;
use crate::recurrent::RecurrentConfig;
use crate::rollback::ROLLBACK_TOKENS;

/// Tokens per launch of the decode attention (bounds its partials buffer).
pub(super) const ATT_TOKENS: usize = 16;
/// Keys per split of the decode attention are `n_ctx / splits`, with this many splits at
/// most.
pub(super) const ATT_MAX_SPLITS: usize = 32;
/// Bytes of f16 weight tiles for the GEMM path, on a large GPU.
pub(super) const TILE_BYTES: usize = 64 << 20;

/// The tile on a GPU of `total` bytes: [`TILE_BYTES`], but at most a sixteenth of a small
/// card (at least 4 MiB; smaller tiles only mean more cuBLAS calls per prompt matmul).
pub(super) fn tile_bytes(total: usize) -> usize {
    TILE_BYTES.min((total / 16).max(4 << 20))
}

/// The number the attention kernels know a cache type by (`KV_*` in attention.cu).
pub(super) fn kv_code(t: KvType) -> i32 {
    match t {
        KvType::F32 => 0,
        KvType::F16 => 1,
        KvType::Q8_0 => 2,
        KvType::Q4_0 => 3,
    }
}

/// The largest head size the attention kernels take with this cache: 256, or 128 when keys
/// or values are f32 (a prompt chunk stages a tile of 32 keys' rows in shared memory, which
/// holds 256 f16 values, or 128 f32 ones, per key).
pub(crate) fn kv_max_head_dim(kv: &KvConfig) -> usize {
    if kv.k_type == KvType::F32 || kv.v_type == KvType::F32 {
        128
    } else {
        256
    }
}

/// Bytes left free for the driver, cuBLAS's workspace and the kernels, on a large GPU.
pub const RESERVE_BYTES: usize = 768 << 20;

/// The reserve on a GPU of `total` bytes: [`RESERVE_BYTES`], but at most an eighth of a
/// small card (at least 64 MiB), so that a few layers can still go on it.
pub fn reserve_bytes(total: usize) -> usize {
    RESERVE_BYTES.min((total / 8).max(64 << 20))
}

/// What the GPU's memory holds for a model, planned before anything is allocated.
#[derive(Clone, Debug, Default)]
pub struct MemoryPlan {
    /// The GPU's name.
    pub device: String,
    /// Weight matrices and vectors, in their file formats.
    pub weights: usize,
    /// Keys and values, in their types.
    pub kv_cache: usize,
    /// How keys and values are stored.
    pub kv_types: (KvType, KvType),
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
        let kv_types = match self.kv_types {
            (k, v) if k == v => k.to_string(),
            (k, v) => format!("K {k}, V {v}"),
        };
        write!(
            f,
            "{}: weights {:.0} MiB, KV cache {:.0} MiB ({}), recurrent {:.0} MiB, activations \
             {:.0} MiB, scratch {:.0} MiB = {:.0} MiB (+{:.0} MiB reserve) of {:.0} MiB free \
             ({:.0} MiB total)",
            self.device,
            mib(self.weights),
            mib(self.kv_cache),
            kv_types,
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

/// Device memory the kernels' modules hold for their globals (the driver allocates it as
/// they load; under 1 KiB today), counted with the scratch.
const MODULE_GLOBALS: usize = 64 << 10;

/// The smallest buffer [`DevBuf::new`] allocates.
const MIN_BUF: usize = 256;

/// Bytes `DevBuf::new(bytes, ..)` allocates.
pub(super) fn buf_bytes(bytes: usize) -> usize {
    bytes.max(MIN_BUF)
}

/// Device memory freed on drop (the owning backend makes its context current first).
pub(super) struct DevBuf {
    pub(super) ptr: u64,
    pub(super) bytes: usize,
}

impl DevBuf {
    /// `bytes` of device memory, zeroed on `stream` (ordered before anything later on it:
    /// a plain `cuMemset` would run on the legacy stream, which our non-blocking stream does
    /// not wait for).
    pub(super) fn new(
        bytes: usize,
        what: &str,
        stream: sys::CUstream,
    ) -> Result<DevBuf, BackendError> {
        let bytes = buf_bytes(bytes);
        // SAFETY: the backend's context is current on this thread (bound by the caller).
        let ptr = unsafe { result::malloc_sync(bytes) }
            .map_err(|e| BackendError::OutOfMemory(format!("{what} ({bytes} bytes): {e}")))?;
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

/// Sizes every buffer of a backend would allocate.
pub(super) struct Sizes {
    pub(super) acts: usize,
    pub(super) scratch: usize,
    pub(super) kv: usize,
    pub(super) rec: usize,
    pub(super) max_width: usize,
    /// Bytes of the f16 weight tile of the GEMM path.
    pub(super) tile: usize,
    pub(super) n_split: usize,
    pub(super) split_len: usize,
    pub(super) max_heads: usize,
    pub(super) max_hd: usize,
}

#[allow(clippy::too_many_arguments)]
pub(super) fn sizes(
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
    let max_width = plan.max_token_width();
    // Every buffer as `DevBuf::new` allocates it (at least MIN_BUF bytes).
    let acts = plan
        .widths
        .iter()
        .zip(&plan.rows)
        .map(|(w, r)| buf_bytes(w * r.unwrap_or(max_batch) * 4))
        .sum();
    let n_split = kv.n_ctx.div_ceil(256).clamp(1, ATT_MAX_SPLITS);
    let split_len = kv.n_ctx.div_ceil(n_split).max(1);
    let part = ATT_TOKENS * max_heads * n_split * (max_hd + 2) * 4;
    let q8 = max_batch * (max_width / 32 + 1) * 40;
    let xh = max_batch * max_width * 2;
    let info = InfoLayout::new(max_batch).len * 4;
    let embd = max_batch * max_width * 4;
    let scratch = [part, q8, xh, tile, info, embd]
        .into_iter()
        .map(buf_bytes)
        .sum::<usize>()
        + MODULE_GLOBALS;
    let rows = kv.n_layers * kv.n_seq * kv.n_ctx;
    let kvb = buf_bytes(rows * kv.k_type.row_bytes(kv.kv_dim))
        + buf_bytes(rows * kv.v_type.row_bytes(kv.kv_dim));
    let recb = rec.map_or(0, |r| {
        let l = r.state_lens(kv.n_seq);
        [
            l.conv * 4,
            l.ssm * 4,
            l.replay * 4,
            ROLLBACK_TOKENS * r.net.value_dim() * 4,
            ROLLBACK_TOKENS * 4,
            6 * 4,
        ]
        .into_iter()
        .map(buf_bytes)
        .sum()
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

/// What a backend with these buffers and weights allocates on a GPU of `total` bytes, named
/// `device` (free memory and reserve left 0: the caller knows them). The planner of a split
/// model calls this for GPUs it has not opened; [`CudaBackend::new`] allocates exactly this.
#[allow(clippy::too_many_arguments)]
pub fn gpu_memory(
    device: String,
    total: usize,
    plan: &Plan,
    max_batch: usize,
    kv: &KvConfig,
    rec: Option<&RecurrentConfig>,
    attn: AttnShape,
    used: &Collected,
) -> MemoryPlan {
    let s = sizes(
        plan,
        max_batch.max(1),
        kv,
        rec,
        attn.max_heads,
        attn.max_head_dim,
        total,
    );
    let weights = used
        .weights
        .iter()
        .map(|w| buf_bytes(w.bytes().len()))
        .sum::<usize>()
        + used
            .vectors
            .iter()
            .map(|v| buf_bytes(v.len() * 4))
            .sum::<usize>();
    MemoryPlan {
        device,
        weights,
        kv_cache: s.kv,
        kv_types: (kv.k_type, kv.v_type),
        recurrent: s.rec,
        activations: s.acts,
        scratch: s.scratch,
        reserve: reserve_bytes(total),
        free: 0,
        total,
    }
}

impl CudaBackend {
    /// What loading a model with these buffers and weights would take on `dev`'s GPU (free
    /// memory read now).
    pub fn plan_memory(
        dev: &GpuContext,
        plan: &Plan,
        max_batch: usize,
        kv: &KvConfig,
        rec: Option<&RecurrentConfig>,
        attn: AttnShape,
        used: &Collected,
    ) -> MemoryPlan {
        let (free, total) = dev.ctx.mem_get_info().unwrap_or((0, 0));
        MemoryPlan {
            free,
            total,
            ..gpu_memory(
                format!(
                    "GPU {} ({}, sm_{})",
                    dev.info.ordinal, dev.info.name, dev.info.sm
                ),
                dev.info.memory_bytes as usize,
                plan,
                max_batch,
                kv,
                rec,
                attn,
                used,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(k_type: KvType, v_type: KvType) -> KvConfig {
        KvConfig {
            n_layers: 2,
            kv_dim: 128,
            n_ctx: 512,
            n_seq: 3,
            k_type,
            v_type,
        }
    }

    /// The plan counts the cache's bytes by type (4 blocks of 34 or 18 bytes per q8_0 /
    /// q4_0 row of 128), and the placement line names the types.
    #[test]
    fn kv_cache_bytes_follow_the_types() {
        let mut plan = Plan::new();
        plan.act(64);
        let rows = 2 * 512 * 3;
        let bytes = |k, v| sizes(&plan, 4, &kv(k, v), None, 4, 64, 1 << 34).kv;
        assert_eq!(bytes(KvType::F32, KvType::F32), rows * 2 * 512);
        assert_eq!(bytes(KvType::F16, KvType::F16), rows * 2 * 256);
        assert_eq!(bytes(KvType::Q8_0, KvType::Q8_0), rows * 2 * 136);
        assert_eq!(bytes(KvType::Q4_0, KvType::Q4_0), rows * 2 * 72);
        assert_eq!(bytes(KvType::Q8_0, KvType::F16), rows * (136 + 256));
        let line = |k, v| {
            MemoryPlan {
                kv_cache: bytes(k, v),
                kv_types: (k, v),
                ..MemoryPlan::default()
            }
            .to_string()
        };
        assert!(line(KvType::Q8_0, KvType::Q8_0).contains("KV cache 1 MiB (q8_0)"));
        assert!(line(KvType::F16, KvType::F16).contains("KV cache 2 MiB (f16)"));
        assert!(line(KvType::Q4_0, KvType::F16).contains("(K q4_0, V f16)"));
    }

    #[test]
    fn f32_caches_take_heads_of_up_to_128() {
        assert_eq!(kv_max_head_dim(&kv(KvType::F16, KvType::Q4_0)), 256);
        assert_eq!(kv_max_head_dim(&kv(KvType::Q8_0, KvType::F32)), 128);
        assert_eq!(kv_code(KvType::Q4_0), 3);
    }
}
