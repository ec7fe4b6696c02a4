//! Q6_K: super-blocks of 256 weights in 16 sub-blocks of 16. Each sub-block has a signed
//! 8-bit scale times the super-block's f16 `d`; the weights are 6-bit signed levels, four
//! low bits in `ql` and two high bits in `qh`.

use bytemuck::{Pod, Zeroable};
use gguf::GgmlType;
use half::f16;

use super::{inverse, round_i32, Block, QK_K};
use crate::fit::{fit_scale, quantize_signed, refine_scale};

/// One Q6_K block (210 bytes). For sub-block `j`: `y = (d * scales[j]) * (q - 32)`, `q`
/// in 0..64.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ6_K {
    /// Low 4 bits of the levels, see [`q6_position`].
    pub ql: [u8; QK_K / 2],
    /// High 2 bits of the levels, see [`q6_position`].
    pub qh: [u8; QK_K / 4],
    /// Sub-block scales.
    pub scales: [i8; QK_K / 16],
    /// Scale of the sub-block scales.
    pub d: f16,
}

const _: () = assert!(size_of::<BlockQ6_K>() == 210);

impl Block for BlockQ6_K {
    const TYPE: GgmlType = GgmlType::Q6_K;
    const ELEMS: usize = QK_K;
}

/// Where weight `i` of a super-block keeps its bits: `(ql byte, ql shift, qh byte, qh
/// shift)`. Each half of 128 weights uses 64 bytes of `ql` and 32 of `qh`; of its four
/// runs of 32 weights, runs 0 and 1 take the low nibbles of `ql` bytes 0..32 and 32..64,
/// runs 2 and 3 the high nibbles, and run `r` takes bits `2r..2r + 2` of the `qh` bytes.
#[inline]
pub fn q6_position(i: usize) -> (usize, u32, usize, u32) {
    let (half, run, l) = (i / 128, (i % 128) / 32, i % 32);
    (
        64 * half + 32 * (run & 1) + l,
        4 * (run >> 1) as u32,
        32 * half + l,
        2 * run as u32,
    )
}

impl BlockQ6_K {
    /// Writes the block's 256 values to `y`.
    pub fn dequantize(&self, y: &mut [f32; QK_K]) {
        let d = self.d.to_f32();
        for (j, ys) in y.chunks_exact_mut(16).enumerate() {
            let sc = self.scales[j] as f32;
            for (k, y) in ys.iter_mut().enumerate() {
                let (lb, ls, hb, hs) = q6_position(16 * j + k);
                let q = ((self.ql[lb] >> ls) & 0x0F) | (((self.qh[hb] >> hs) & 3) << 4);
                // ggml multiplies left to right: (d * scale) * level.
                *y = d * sc * (q as i32 - 32) as f32;
            }
        }
    }

    /// Fits a signed scale per sub-block (a small search, see the crate's `fit` module),
    /// rounds them to 8 bits, then rounds each weight to the nearest level.
    pub fn quantize(x: &[f32; QK_K]) -> Self {
        let mut scales = [0.0f32; 16];
        for (j, sub) in x.chunks_exact(16).enumerate() {
            scales[j] = fit_scale(sub, -32, 31);
        }
        let (d, mut ls) = quantize_signed(&scales, -128, 127);
        let df = d.to_f32();
        for (j, sub) in x.chunks_exact(16).enumerate() {
            refine_scale(sub, -32, 31, df, &mut ls[j], -128, 127);
        }
        let mut b = BlockQ6_K {
            ql: [0; QK_K / 2],
            qh: [0; QK_K / 4],
            scales: ls.map(|l| l as i8),
            d,
        };
        for (j, xs) in x.chunks_exact(16).enumerate() {
            let is = inverse(df * ls[j] as f32);
            for (k, &v) in xs.iter().enumerate() {
                let q = (round_i32(v * is).clamp(-32, 31) + 32) as u8;
                let (lb, lsh, hb, hsh) = q6_position(16 * j + k);
                b.ql[lb] |= (q & 0x0F) << lsh;
                b.qh[hb] |= (q >> 4) << hsh;
            }
        }
        b
    }
}
