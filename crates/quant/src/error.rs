//! The errors of this crate.

use std::fmt;

use gguf::GgmlType;

/// Which conversion was asked for, named in [`QuantError::Unsupported`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    /// Blocks of `ty` to `f32`.
    Dequantize,
    /// `f32` to blocks of `ty`.
    Quantize,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::Dequantize => "dequantization",
            Operation::Quantize => "quantization",
        })
    }
}

/// Why a conversion was refused. Nothing is written to the destination when one is returned.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuantError {
    /// This crate has no code for `op` on `ty`.
    #[error("{op} of {ty} is not supported")]
    Unsupported {
        /// The type asked for.
        ty: GgmlType,
        /// The conversion asked for.
        op: Operation,
    },
    /// The `f32` input or output holds a number of elements that is not a whole number of
    /// blocks.
    #[error("{ty}: {len} elements is not a multiple of the block size {block_size}")]
    PartialBlockElems {
        /// The type.
        ty: GgmlType,
        /// Elements given.
        len: usize,
        /// Elements per block of `ty`.
        block_size: usize,
    },
    /// The quantized input holds a number of bytes that is not a whole number of blocks.
    #[error("{ty}: {len} bytes is not a multiple of the block's {type_size} bytes")]
    PartialBlockBytes {
        /// The type.
        ty: GgmlType,
        /// Bytes given.
        len: usize,
        /// Bytes per block of `ty`.
        type_size: usize,
    },
    /// The destination does not have the length the source implies (`f32` elements for
    /// dequantization, bytes for quantization).
    #[error("{ty}: destination holds {actual} {unit}, the source needs {expected}")]
    DstLength {
        /// The type.
        ty: GgmlType,
        /// The length the source implies.
        expected: usize,
        /// The length given.
        actual: usize,
        /// `"elements"` or `"bytes"`.
        unit: &'static str,
    },
}
