//! Weights on the device: each matrix's copy in its file layout, the kernels that take each
//! weight type, and the check that a weight can go on the GPU.

use std::collections::HashMap;

use cudarc::driver::{result, sys};
use quant::GgmlType;

use super::memory::DevBuf;
use super::{drv, BackendError};
use crate::collect::{weight_key, Collected, Key};
use crate::tensor::{Layout, Weight};

/// A weight's device copy.
#[derive(Clone, Copy, Debug)]
pub(super) struct DevWeight {
    pub(super) ptr: u64,
    pub(super) ty: GgmlType,
    pub(super) row_bytes: usize,
}

/// Weight types the kernels take: the type, its kernel-name suffix, and whether it is a block
/// format with the dp4a matrix × vector kernel (`mmvq_*`). The one list: the kernel names,
/// the placement check and the kernel tests read it.
pub(crate) const GPU_TYPES: &[(GgmlType, &str, bool)] = &[
    (GgmlType::Q4_0, "q4_0", true),
    (GgmlType::Q4_1, "q4_1", true),
    (GgmlType::Q5_0, "q5_0", true),
    (GgmlType::Q5_1, "q5_1", true),
    (GgmlType::Q8_0, "q8_0", true),
    (GgmlType::Q4_K, "q4_k", true),
    (GgmlType::Q5_K, "q5_k", true),
    (GgmlType::Q6_K, "q6_k", true),
    (GgmlType::F32, "f32", false),
    (GgmlType::F16, "f16", false),
    (GgmlType::BF16, "bf16", false),
];

/// `ty`'s kernel-name suffix and whether `mmvq_*` takes it; `None` for a type the GPU does
/// not take.
pub(crate) fn kernel_suffix(ty: GgmlType) -> Option<(&'static str, bool)> {
    GPU_TYPES
        .iter()
        .find(|t| t.0 == ty)
        .map(|&(_, s, q)| (s, q))
}

/// Kernel names per weight type, built once (no formatting per launch).
pub(super) struct TypeKernels {
    pub(super) mmvq: HashMap<GgmlType, String>,
    pub(super) mmv: HashMap<GgmlType, String>,
    pub(super) deq: HashMap<GgmlType, String>,
    pub(super) rows: HashMap<GgmlType, String>,
}

impl TypeKernels {
    pub(super) fn new() -> TypeKernels {
        let mut t = TypeKernels {
            mmvq: HashMap::new(),
            mmv: HashMap::new(),
            deq: HashMap::new(),
            rows: HashMap::new(),
        };
        for &(ty, s, q) in GPU_TYPES {
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

/// The device copies of the weights and vectors `used`, uploaded on `stream` in their file
/// layout, keyed by the address of their bytes; the buffers are owned by the returned list.
/// The host bytes must stay alive until `stream` is synchronized.
pub(super) type Uploaded = (HashMap<Key, DevWeight>, HashMap<Key, u64>, Vec<DevBuf>);

/// Uploads every weight matrix and vector `used` (see [`Uploaded`]).
pub(super) fn upload(used: &Collected, stream: sys::CUstream) -> Result<Uploaded, BackendError> {
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
    Ok((weights, vectors, bufs))
}
