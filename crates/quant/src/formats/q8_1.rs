//! Q8_1: Q8_0 plus the block's sum, the format ggml quantizes activations to for dot
//! products with Q4_1/Q5_1 weights (36 bytes, as in current ggml).

use bytemuck::{Pod, Zeroable};
use gguf::GgmlType;
use half::f16;

use super::q8_0::quantize_symmetric8;
use super::Block;

/// Elements per Q8_1 block.
pub const QK8_1: usize = 32;

/// One Q8_1 block (36 bytes): `y[i] = d * qs[i]`; `s = d * sum(qs)`.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ8_1 {
    /// Scale.
    pub d: f16,
    /// `d` times the sum of the levels, for dot products with formats that have a minimum.
    pub s: f16,
    /// Levels.
    pub qs: [i8; QK8_1],
}

const _: () = assert!(size_of::<BlockQ8_1>() == 36);

impl Block for BlockQ8_1 {
    const TYPE: GgmlType = GgmlType::Q8_1;
    const ELEMS: usize = QK8_1;
}

impl BlockQ8_1 {
    /// Writes the block's 32 values to `y` (`s` is not used). ggml's C has no Q8_1
    /// dequantizer; this is the format's definition.
    pub fn dequantize(&self, y: &mut [f32; QK8_1]) {
        let d = self.d.to_f32();
        for (y, &q) in y.iter_mut().zip(&self.qs) {
            *y = q as f32 * d;
        }
    }

    /// As Q8_0, and `s` set from the stored scale and the levels' sum.
    pub fn quantize(x: &[f32; QK8_1]) -> Self {
        let (d, qs) = quantize_symmetric8(x, false);
        let sum: i32 = qs.iter().map(|&q| i32::from(q)).sum();
        let s = f16::from_f32(d.to_f32() * sum as f32);
        BlockQ8_1 { d, s, qs }
    }
}
