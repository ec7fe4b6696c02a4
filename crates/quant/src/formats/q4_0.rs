//! Q4_0: blocks of 32 weights, 4-bit signed levels `q - 8` times one f16 scale.

use bytemuck::{Pod, Zeroable};
use gguf::GgmlType;
use half::f16;

use super::{inverse, pack_nibbles_split, round_i32, signed_absmax, Block};

/// Elements per Q4_0 block.
pub const QK4_0: usize = 32;

/// One Q4_0 block (18 bytes): `y[i] = d * (q[i] - 8)`, `q` in 0..16.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ4_0 {
    /// Scale.
    pub d: f16,
    /// Byte `j` holds `q[j]` in its low nibble and `q[j + 16]` in its high nibble.
    pub qs: [u8; QK4_0 / 2],
}

const _: () = assert!(size_of::<BlockQ4_0>() == 18);

impl Block for BlockQ4_0 {
    const TYPE: GgmlType = GgmlType::Q4_0;
    const ELEMS: usize = QK4_0;
}

impl BlockQ4_0 {
    /// Writes the block's 32 values to `y`.
    pub fn dequantize(&self, y: &mut [f32; QK4_0]) {
        let d = self.d.to_f32();
        let (lo, hi) = y.split_at_mut(QK4_0 / 2);
        for ((&b, l), h) in self.qs.iter().zip(lo).zip(hi) {
            *l = ((b & 0x0F) as i32 - 8) as f32 * d;
            *h = ((b >> 4) as i32 - 8) as f32 * d;
        }
    }

    /// Rounds `x` to the nearest level of the scale that puts the largest-magnitude
    /// element on level -8 (the end with more room); its opposite, if present, clips at +7.
    pub fn quantize(x: &[f32; QK4_0]) -> Self {
        let (max, _) = signed_absmax(x);
        let d = f16::from_f32(max / -8.0);
        let id = inverse(d.to_f32());
        let q = x.map(|v| (round_i32(v * id).clamp(-8, 7) + 8) as u8);
        let mut qs = [0u8; QK4_0 / 2];
        pack_nibbles_split(&q, &mut qs);
        BlockQ4_0 { d, qs }
    }
}
