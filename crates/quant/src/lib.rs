//! The ggml quantization formats: block layouts, dequantization and quantization, and the
//! CPU kernels over them (dot products, 16-row repacking, int8 GEMM), SIMD tested against scalar.
//!
//! [`dequantize`] is bit-exact with ggml's reference C dequantizers: the same f32
//! operations in the same order. [`quantize`] is this crate's own: round to nearest with a
//! searched scale, not byte-identical to ggml's quantizers but within the error bounds
//! stated in the tests. Block structs live in [`formats`], one module per format family.

#![warn(missing_docs)]

#[cfg(not(target_endian = "little"))]
compile_error!(
    "surplus-quant views little-endian GGUF blocks in place: little-endian targets only"
);

pub mod dot;
mod error;
mod fit;
pub mod formats;
pub mod gemm;
pub mod rows16;

pub use dot::{
    activation_type, dot_fn, dot_fn_for, dot_isa, dot_scalar, quantize_activations, DotFn, Isa,
};
pub use error::{Operation, QuantError};
pub use formats::float::{bf16_to_f32, f32_to_bf16};
pub use formats::{
    Block, BlockIQ4_NL, BlockIQ4_XS, BlockQ2_K, BlockQ3_K, BlockQ4_0, BlockQ4_1, BlockQ4_K,
    BlockQ5_0, BlockQ5_1, BlockQ5_K, BlockQ6_K, BlockQ8_0, BlockQ8_1, BlockQ8_K, QK_K,
};
pub use gguf::GgmlType;

use formats::SUPPORTED;

/// Whether [`dequantize`] handles `ty`.
pub fn can_dequantize(ty: GgmlType) -> bool {
    SUPPORTED.contains(&ty)
}

/// Whether [`quantize`] handles `ty`.
pub fn can_quantize(ty: GgmlType) -> bool {
    SUPPORTED.contains(&ty)
}

/// The types this crate converts both ways, in id order.
pub fn supported_types() -> &'static [GgmlType] {
    SUPPORTED
}

/// Elements per block and bytes per block of `ty`, as `usize`.
fn geometry(ty: GgmlType) -> (usize, usize) {
    (ty.block_size() as usize, ty.type_size() as usize)
}

/// Dequantizes `src`, whole blocks of `ty`, into `dst`, which must hold exactly the
/// elements those blocks encode.
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    if !can_dequantize(ty) {
        return Err(QuantError::Unsupported {
            ty,
            op: Operation::Dequantize,
        });
    }
    let (block_size, type_size) = geometry(ty);
    if !src.len().is_multiple_of(type_size) {
        return Err(QuantError::PartialBlockBytes {
            ty,
            len: src.len(),
            type_size,
        });
    }
    let expected = src.len() / type_size * block_size;
    if dst.len() != expected {
        return Err(QuantError::DstLength {
            ty,
            expected,
            actual: dst.len(),
            unit: "elements",
        });
    }
    formats::dequantize_checked(ty, src, dst).ok_or(QuantError::Unsupported {
        ty,
        op: Operation::Dequantize,
    })
}

/// Dequantizes `src`, whole blocks of `ty`, into a new vector.
pub fn dequantize_to_vec(ty: GgmlType, src: &[u8]) -> Result<Vec<f32>, QuantError> {
    let (block_size, type_size) = geometry(ty);
    let mut out = vec![0.0; (src.len() / type_size).saturating_mul(block_size)];
    dequantize(ty, src, &mut out)?;
    Ok(out)
}

/// Quantizes `src` to blocks of `ty` in `dst`. `src.len()` must be a multiple of the
/// block size and `dst.len()` must be `ty.bytes_for(src.len())`.
pub fn quantize(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    if !can_quantize(ty) {
        return Err(QuantError::Unsupported {
            ty,
            op: Operation::Quantize,
        });
    }
    let (block_size, type_size) = geometry(ty);
    if !src.len().is_multiple_of(block_size) {
        return Err(QuantError::PartialBlockElems {
            ty,
            len: src.len(),
            block_size,
        });
    }
    let expected = src.len() / block_size * type_size;
    if dst.len() != expected {
        return Err(QuantError::DstLength {
            ty,
            expected,
            actual: dst.len(),
            unit: "bytes",
        });
    }
    formats::quantize_checked(ty, src, dst).ok_or(QuantError::Unsupported {
        ty,
        op: Operation::Quantize,
    })
}

/// Quantizes `src` to blocks of `ty` in a new vector.
pub fn quantize_to_vec(ty: GgmlType, src: &[f32]) -> Result<Vec<u8>, QuantError> {
    let (block_size, type_size) = geometry(ty);
    let mut out = vec![0; (src.len() / block_size).saturating_mul(type_size)];
    quantize(ty, src, &mut out)?;
    Ok(out)
}
