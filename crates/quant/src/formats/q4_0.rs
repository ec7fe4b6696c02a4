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

    /// ggml's reference quantizer (`quantize_row_q4_0_ref`): `d = max / -8` for the
    /// element `max` of largest magnitude, in f32, and each level `x / d + 8.5` truncated
    /// and capped at 15 (what a KV cache row written by llama.cpp's reference path holds).
    pub fn quantize_ref(x: &[f32; QK4_0]) -> Self {
        let (mut amax, mut max) = (0.0f32, 0.0f32);
        for &v in x {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        // `as u8` truncates toward zero (and saturates), as C's (int8_t) cast in this range.
        let q = x.map(|v| ((v * id + 8.5) as u8).min(15));
        let mut qs = [0u8; QK4_0 / 2];
        pack_nibbles_split(&q, &mut qs);
        BlockQ4_0 {
            d: f16::from_f32(d),
            qs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantize_ref_follows_ggml() {
        let mut x = [0.0f32; 32];
        for (i, v) in x.iter_mut().enumerate() {
            *v = (i as f32 - 12.0) * 0.5;
        }
        // max = 9.5 (i = 31): d = -1.1875, levels trunc(x / d + 8.5) capped at 15.
        let b = BlockQ4_0::quantize_ref(&x);
        assert_eq!(b.d.to_f32(), -1.1875);
        let mut y = [0.0f32; 32];
        b.dequantize(&mut y);
        assert_eq!(y[31], 9.5); // level 0
        assert_eq!(y[12], 0.0); // level 8
                                // x = -6 (i = 0): -6 / -1.1875 + 8.5 = 13.55 -> 13, value -5 × -1.1875.
        assert_eq!(y[0], 5.0 * -1.1875);
        // x = -3.5 (i = 5): 2.947 + 8.5 = 11.447 -> 11.
        assert_eq!(y[5], 3.0 * -1.1875);
        let z = BlockQ4_0::quantize_ref(&[0.0; 32]);
        assert_eq!((z.d.to_f32(), z.qs), (0.0, [0x88; 16]));
    }
}
