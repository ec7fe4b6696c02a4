//! Q4_1: blocks of 32 weights, 4-bit unsigned levels times an f16 scale plus an f16 minimum.

use bytemuck::{Pod, Zeroable};
use gguf::GgmlType;
use half::f16;

use super::{inverse, pack_nibbles_split, round_i32, Block};

/// Elements per Q4_1 block.
pub const QK4_1: usize = 32;

/// One Q4_1 block (20 bytes): `y[i] = d * q[i] + m`, `q` in 0..16.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ4_1 {
    /// Scale.
    pub d: f16,
    /// Minimum (the value of level 0).
    pub m: f16,
    /// Byte `j` holds `q[j]` in its low nibble and `q[j + 16]` in its high nibble.
    pub qs: [u8; QK4_1 / 2],
}

const _: () = assert!(size_of::<BlockQ4_1>() == 20);

impl Block for BlockQ4_1 {
    const TYPE: GgmlType = GgmlType::Q4_1;
    const ELEMS: usize = QK4_1;
}

impl BlockQ4_1 {
    /// Writes the block's 32 values to `y`.
    pub fn dequantize(&self, y: &mut [f32; QK4_1]) {
        let d = self.d.to_f32();
        let m = self.m.to_f32();
        let (lo, hi) = y.split_at_mut(QK4_1 / 2);
        for ((&b, l), h) in self.qs.iter().zip(lo).zip(hi) {
            *l = (b & 0x0F) as f32 * d + m;
            *h = (b >> 4) as f32 * d + m;
        }
    }

    /// Spreads the 16 levels evenly from the block's minimum to its maximum and rounds to
    /// the nearest.
    pub fn quantize(x: &[f32; QK4_1]) -> Self {
        let (q, d, m) = quantize_min_max(x, 15);
        let mut qs = [0u8; QK4_1 / 2];
        pack_nibbles_split(&q, &mut qs);
        BlockQ4_1 { d, m, qs }
    }
}

/// Min/max quantization shared by Q4_1 and Q5_1: levels `0..=levels`, scale and minimum
/// rounded to f16 first so the levels are chosen against the values actually stored.
pub(crate) fn quantize_min_max(x: &[f32; 32], levels: i32) -> ([u8; 32], f16, f16) {
    let lo = x.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let m = f16::from_f32(lo);
    let d = f16::from_f32((hi - m.to_f32()) / levels as f32);
    let (mf, id) = (m.to_f32(), inverse(d.to_f32()));
    let q = x.map(|v| round_i32((v - mf) * id).clamp(0, levels) as u8);
    (q, d, m)
}
