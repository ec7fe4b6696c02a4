//! Q4_K: super-blocks of 256 weights in 8 sub-blocks of 32. Each sub-block has a 6-bit
//! scale and a 6-bit minimum, themselves scaled by the super-block's f16 `d` and `dmin`;
//! the weights are 4-bit levels. The 12-byte scale packing is shared with Q5_K.

use bytemuck::{Pod, Zeroable};
use gguf::GgmlType;
use half::f16;

use super::{round_i32, Block, QK_K};
use crate::fit::{fit_scale_min, quantize_unsigned, refine_scale_min};

/// Bytes of packed 6-bit scales and minimums in Q4_K and Q5_K blocks.
pub const K_SCALE_SIZE: usize = 12;

/// One Q4_K block (144 bytes). For sub-block `j`, with `(sc, m)` its unpacked scale and
/// minimum: `y = (d * sc) * q - (dmin * m)`, `q` in 0..16.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ4_K {
    /// Scale of the sub-block scales.
    pub d: f16,
    /// Scale of the sub-block minimums.
    pub dmin: f16,
    /// 8 scales and 8 minimums of 6 bits, see [`unpack_scale_min`].
    pub scales: [u8; K_SCALE_SIZE],
    /// 4-bit levels: for each 64 weights, 32 bytes hold the first 32 in their low nibbles
    /// and the next 32 in their high nibbles.
    pub qs: [u8; QK_K / 2],
}

const _: () = assert!(size_of::<BlockQ4_K>() == 144);

impl Block for BlockQ4_K {
    const TYPE: GgmlType = GgmlType::Q4_K;
    const ELEMS: usize = QK_K;
}

/// Scale and minimum of sub-block `j` (0..8) from the 12 packed bytes: sub-blocks 0..4
/// keep theirs in the low 6 bits of bytes `j` and `j + 4`; sub-blocks 4..8 have their low
/// 4 bits in the nibbles of byte `j + 4` and their top 2 bits in the spare top bits of
/// bytes `j - 4` (scale) and `j` (minimum).
#[inline]
pub fn unpack_scale_min(j: usize, s: &[u8; K_SCALE_SIZE]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// The inverse of [`unpack_scale_min`] for 8 scales and minimums below 64.
pub fn pack_scale_min(sc: &[u8; 8], m: &[u8; 8]) -> [u8; K_SCALE_SIZE] {
    let mut s = [0u8; K_SCALE_SIZE];
    for j in 0..8 {
        let (sc, m) = (sc[j] & 63, m[j] & 63);
        if j < 4 {
            s[j] |= sc;
            s[j + 4] |= m;
        } else {
            s[j + 4] = (sc & 0x0F) | ((m & 0x0F) << 4);
            s[j - 4] |= (sc >> 4) << 6;
            s[j] |= (m >> 4) << 6;
        }
    }
    s
}

/// The effective `(scale, minimum)` of each of the 8 sub-blocks, computed as ggml does.
pub(crate) fn sub_scales(d: f16, dmin: f16, s: &[u8; K_SCALE_SIZE]) -> [(f32, f32); 8] {
    let (d, dmin) = (d.to_f32(), dmin.to_f32());
    std::array::from_fn(|j| {
        let (sc, m) = unpack_scale_min(j, s);
        (d * sc as f32, dmin * m as f32)
    })
}

/// Quantization shared by Q4_K and Q5_K: per sub-block (scale, minimum) fits, both
/// rounded to 6 bits of the super-block's f16 scales, then each weight rounded to the
/// nearest of the levels `0..=qmax` actually stored. Returns `d, dmin, scales, levels`.
pub(crate) fn quantize_k_scale_min(
    x: &[f32; QK_K],
    qmax: i32,
) -> (f16, f16, [u8; K_SCALE_SIZE], [u8; QK_K]) {
    let mut scales = [0.0f32; 8];
    let mut mins = [0.0f32; 8];
    for (j, sub) in x.chunks_exact(32).enumerate() {
        (scales[j], mins[j]) = fit_scale_min(sub, qmax);
    }
    let (d, mut ls) = quantize_unsigned(&scales, 63);
    let (dmin, mut lm) = quantize_unsigned(&mins, 63);
    for (j, sub) in x.chunks_exact(32).enumerate() {
        refine_scale_min(
            sub,
            qmax,
            d.to_f32(),
            dmin.to_f32(),
            &mut ls[j],
            &mut lm[j],
            63,
        );
    }
    let packed = pack_scale_min(&ls, &lm);
    let eff = sub_scales(d, dmin, &packed);
    let mut q = [0u8; QK_K];
    for (j, (qs, xs)) in q.chunks_exact_mut(32).zip(x.chunks_exact(32)).enumerate() {
        let (s, m) = eff[j];
        if s > 0.0 {
            let is = 1.0 / s;
            for (q, &v) in qs.iter_mut().zip(xs) {
                *q = round_i32((v + m) * is).clamp(0, qmax) as u8;
            }
        }
    }
    (d, dmin, packed, q)
}

impl BlockQ4_K {
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
            let (lo, hi) = ys.split_at_mut(32);
            for ((&b, l), h) in qs.iter().zip(lo).zip(hi) {
                *l = d1 * (b & 0x0F) as f32 - m1;
                *h = d2 * (b >> 4) as f32 - m2;
            }
        }
    }

    /// Fits a scale and minimum per sub-block (a small search, see the crate's `fit`
    /// module), rounds them to 6 bits, then rounds each weight to the nearest level.
    pub fn quantize(x: &[f32; QK_K]) -> Self {
        let (d, dmin, scales, q) = quantize_k_scale_min(x, 15);
        let mut qs = [0u8; QK_K / 2];
        for (c, out) in qs.chunks_exact_mut(32).enumerate() {
            for (l, o) in out.iter_mut().enumerate() {
                *o = q[64 * c + l] | (q[64 * c + 32 + l] << 4);
            }
        }
        BlockQ4_K {
            d,
            dmin,
            scales,
            qs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_packing_round_trips() {
        let sc = [0, 63, 17, 42, 5, 63, 31, 48];
        let m = [63, 0, 9, 33, 62, 1, 16, 47];
        let p = pack_scale_min(&sc, &m);
        for j in 0..8 {
            assert_eq!(unpack_scale_min(j, &p), (sc[j], m[j]));
        }
    }
}
