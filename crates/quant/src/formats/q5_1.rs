//! Q5_1: blocks of 32 weights, 5-bit unsigned levels times an f16 scale plus an f16 minimum.

use bytemuck::{Pod, Zeroable};
use gguf::GgmlType;
use half::f16;

use super::q4_1::quantize_min_max;
use super::q5_0::{pack5, unpack5};
use super::Block;

/// Elements per Q5_1 block.
pub const QK5_1: usize = 32;

/// One Q5_1 block (24 bytes): `y[i] = d * q[i] + m`, `q` in 0..32.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ5_1 {
    /// Scale.
    pub d: f16,
    /// Minimum (the value of level 0).
    pub m: f16,
    /// Bit `i` of this little-endian u32 is bit 4 of `q[i]`.
    pub qh: [u8; 4],
    /// Low 4 bits: byte `j` holds `q[j]` low, `q[j + 16]` high.
    pub qs: [u8; QK5_1 / 2],
}

const _: () = assert!(size_of::<BlockQ5_1>() == 24);

impl Block for BlockQ5_1 {
    const TYPE: GgmlType = GgmlType::Q5_1;
    const ELEMS: usize = QK5_1;
}

impl BlockQ5_1 {
    /// Writes the block's 32 values to `y`.
    pub fn dequantize(&self, y: &mut [f32; QK5_1]) {
        let d = self.d.to_f32();
        let m = self.m.to_f32();
        let q = unpack5(self.qh, &self.qs);
        for (y, &q) in y.iter_mut().zip(&q) {
            *y = q as f32 * d + m;
        }
    }

    /// Spreads the 32 levels evenly from the block's minimum to its maximum and rounds to
    /// the nearest.
    pub fn quantize(x: &[f32; QK5_1]) -> Self {
        let (q, d, m) = quantize_min_max(x, 31);
        let (qh, qs) = pack5(&q);
        BlockQ5_1 { d, m, qh, qs }
    }
}
