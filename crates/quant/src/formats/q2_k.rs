//! Q2_K: super-blocks of 256 weights in 16 sub-blocks of 16. Each sub-block has a 4-bit
//! scale and a 4-bit minimum, scaled by the super-block's f16 `d` and `dmin`; the weights
//! are 2-bit levels.

use bytemuck::{Pod, Zeroable};
use gguf::GgmlType;
use half::f16;

use super::{round_i32, Block, QK_K};
use crate::fit::{fit_scale_min, quantize_unsigned, refine_scale_min};

/// One Q2_K block (84 bytes). For sub-block `j`: `y = (d * sc) * q - (dmin * m)` with
/// `sc = scales[j] & 15`, `m = scales[j] >> 4`, `q` in 0..4.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ2_K {
    /// Per sub-block: scale in the low nibble, minimum in the high nibble.
    pub scales: [u8; QK_K / 16],
    /// 2-bit levels: for each 128 weights, byte `l` (of 32) holds weights `l`, `l + 32`,
    /// `l + 64` and `l + 96` in bits 0-1, 2-3, 4-5 and 6-7.
    pub qs: [u8; QK_K / 4],
    /// Scale of the sub-block scales.
    pub d: f16,
    /// Scale of the sub-block minimums.
    pub dmin: f16,
}

const _: () = assert!(size_of::<BlockQ2_K>() == 84);

impl Block for BlockQ2_K {
    const TYPE: GgmlType = GgmlType::Q2_K;
    const ELEMS: usize = QK_K;
}

/// Where weight `i` of a 256-weight super-block keeps its 2 bits in Q2_K's and Q3_K's
/// `qs`: (byte, shift).
#[inline]
pub(crate) fn q2_position(i: usize) -> (usize, u32) {
    (32 * (i / 128) + i % 32, 2 * ((i % 128) / 32) as u32)
}

impl BlockQ2_K {
    /// Writes the block's 256 values to `y`.
    pub fn dequantize(&self, y: &mut [f32; QK_K]) {
        let d = self.d.to_f32();
        let dmin = self.dmin.to_f32();
        for (j, ys) in y.chunks_exact_mut(16).enumerate() {
            let sc = self.scales[j];
            let dl = d * (sc & 0x0F) as f32;
            let ml = dmin * (sc >> 4) as f32;
            for (k, y) in ys.iter_mut().enumerate() {
                let (byte, shift) = q2_position(16 * j + k);
                let q = (self.qs[byte] >> shift) & 3;
                *y = dl * q as f32 - ml;
            }
        }
    }

    /// Fits a scale and minimum per sub-block (a small search, see the crate's `fit`
    /// module), rounds them to 4 bits, then rounds each weight to the nearest level.
    pub fn quantize(x: &[f32; QK_K]) -> Self {
        let mut scales = [0.0f32; 16];
        let mut mins = [0.0f32; 16];
        for (j, sub) in x.chunks_exact(16).enumerate() {
            (scales[j], mins[j]) = fit_scale_min(sub, 3);
        }
        let (d, mut ls) = quantize_unsigned(&scales, 15);
        let (dmin, mut lm) = quantize_unsigned(&mins, 15);
        let (df, dminf) = (d.to_f32(), dmin.to_f32());
        for (j, sub) in x.chunks_exact(16).enumerate() {
            refine_scale_min(sub, 3, df, dminf, &mut ls[j], &mut lm[j], 15);
        }
        let mut b = BlockQ2_K {
            scales: std::array::from_fn(|j| ls[j] | (lm[j] << 4)),
            qs: [0; QK_K / 4],
            d,
            dmin,
        };
        for (j, xs) in x.chunks_exact(16).enumerate() {
            let s = df * ls[j] as f32;
            let m = dminf * lm[j] as f32;
            if s <= 0.0 {
                continue;
            }
            let is = 1.0 / s;
            for (k, &v) in xs.iter().enumerate() {
                let q = round_i32((v + m) * is).clamp(0, 3) as u8;
                let (byte, shift) = q2_position(16 * j + k);
                b.qs[byte] |= q << shift;
            }
        }
        b
    }
}
