//! Q5_K: Q4_K's super-block of 256 weights (8 sub-blocks of 32 with 6-bit scales and
//! minimums), with 5-bit levels: a fifth bit per weight in `qh`.

use bytemuck::{Pod, Zeroable};
use gguf::GgmlType;
use half::f16;

use super::q4_k::{quantize_k_scale_min, sub_scales, K_SCALE_SIZE};
use super::{Block, QK_K};

/// One Q5_K block (176 bytes). For sub-block `j`, with `(sc, m)` its unpacked scale and
/// minimum (packed as in Q4_K): `y = (d * sc) * q - (dmin * m)`, `q` in 0..32.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ5_K {
    /// Scale of the sub-block scales.
    pub d: f16,
    /// Scale of the sub-block minimums.
    pub dmin: f16,
    /// 8 scales and 8 minimums of 6 bits, see [`super::q4_k::unpack_scale_min`].
    pub scales: [u8; K_SCALE_SIZE],
    /// Bit 4 of the levels: bit `j` of byte `l` belongs to weight `32 * j + l`.
    pub qh: [u8; QK_K / 8],
    /// Low 4 bits of the levels, laid out as Q4_K's `qs`.
    pub qs: [u8; QK_K / 2],
}

const _: () = assert!(size_of::<BlockQ5_K>() == 176);

impl Block for BlockQ5_K {
    const TYPE: GgmlType = GgmlType::Q5_K;
    const ELEMS: usize = QK_K;
}

impl BlockQ5_K {
    /// Writes the block's 256 values to `y`.
    pub fn dequantize(&self, y: &mut [f32; QK_K]) {
        let eff = sub_scales(self.d, self.dmin, &self.scales);
        for (c, (ys, qs)) in y
            .chunks_exact_mut(64)
            .zip(self.qs.chunks_exact(32))
            .enumerate()
        {
            let (d1, m1) = eff[2 * c];
            let (d2, m2) = eff[2 * c + 1];
            let (bit1, bit2) = (1u8 << (2 * c), 2u8 << (2 * c));
            let (lo, hi) = ys.split_at_mut(32);
            for (l, (&b, &h)) in qs.iter().zip(&self.qh).enumerate() {
                let q1 = (b & 0x0F) + if h & bit1 != 0 { 16 } else { 0 };
                let q2 = (b >> 4) + if h & bit2 != 0 { 16 } else { 0 };
                lo[l] = d1 * q1 as f32 - m1;
                hi[l] = d2 * q2 as f32 - m2;
            }
        }
    }

    /// As Q4_K's quantizer, with 32 levels.
    pub fn quantize(x: &[f32; QK_K]) -> Self {
        let (d, dmin, scales, q) = quantize_k_scale_min(x, 31);
        let mut qs = [0u8; QK_K / 2];
        let mut qh = [0u8; QK_K / 8];
        for (c, out) in qs.chunks_exact_mut(32).enumerate() {
            for (l, o) in out.iter_mut().enumerate() {
                let (q1, q2) = (q[64 * c + l], q[64 * c + 32 + l]);
                *o = (q1 & 0x0F) | ((q2 & 0x0F) << 4);
            }
        }
        for (i, &v) in q.iter().enumerate() {
            qh[i % 32] |= ((v >> 4) & 1) << (i / 32);
        }
        BlockQ5_K {
            d,
            dmin,
            scales,
            qh,
            qs,
        }
    }
}
