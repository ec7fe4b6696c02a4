//! Q3_K: super-blocks of 256 weights in 16 sub-blocks of 16. Each sub-block has a signed
//! 6-bit scale times the super-block's f16 `d`; the weights are 3-bit signed levels, two
//! low bits in `qs` and a high bit in `hmask`.

use bytemuck::{Pod, Zeroable};
use gguf::GgmlType;
use half::f16;

use super::q2_k::q2_position;
use super::{round_i32, Block, QK_K};
use crate::fit::{fit_scale, quantize_signed, refine_scale};

/// One Q3_K block (110 bytes). For sub-block `j`: `y = (d * (sc[j] - 32)) * q` with `sc`
/// unpacked by [`unpack_scales`] and `q` in -4..4.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ3_K {
    /// Bit 2 of the level plus 4: bit `b` of byte `l` belongs to weight `32 * b + l`
    /// (a clear bit means the level is the 2 low bits minus 4).
    pub hmask: [u8; QK_K / 8],
    /// Low 2 bits of the level plus 4, laid out as Q2_K's `qs`.
    pub qs: [u8; QK_K / 4],
    /// 16 scales of 6 bits (stored plus 32), see [`unpack_scales`].
    pub scales: [u8; 12],
    /// Scale of the sub-block scales.
    pub d: f16,
}

const _: () = assert!(size_of::<BlockQ3_K>() == 110);

impl Block for BlockQ3_K {
    const TYPE: GgmlType = GgmlType::Q3_K;
    const ELEMS: usize = QK_K;
}

/// The 16 sub-block scales (each stored plus 32, so 0..64) from their 12 packed bytes:
/// scale `i` has its low 4 bits in the nibble `i / 8` of byte `i % 8`, and its top 2 bits
/// in bits `2 * (i / 4)..` of byte `8 + i % 4`.
pub fn unpack_scales(s: &[u8; 12]) -> [u8; 16] {
    std::array::from_fn(|i| {
        let low = (s[i % 8] >> (4 * (i / 8))) & 0x0F;
        let high = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
        low | (high << 4)
    })
}

/// The inverse of [`unpack_scales`] for values below 64.
pub fn pack_scales(sc: &[u8; 16]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for (i, &v) in sc.iter().enumerate() {
        s[i % 8] |= (v & 0x0F) << (4 * (i / 8));
        s[8 + i % 4] |= ((v >> 4) & 3) << (2 * (i / 4));
    }
    s
}

impl BlockQ3_K {
    /// Writes the block's 256 values to `y`.
    pub fn dequantize(&self, y: &mut [f32; QK_K]) {
        let d = self.d.to_f32();
        let sc = unpack_scales(&self.scales);
        for (j, ys) in y.chunks_exact_mut(16).enumerate() {
            let dl = d * (sc[j] as i32 - 32) as f32;
            for (k, y) in ys.iter_mut().enumerate() {
                let i = 16 * j + k;
                let (byte, shift) = q2_position(i);
                let low = ((self.qs[byte] >> shift) & 3) as i32;
                let high_set = self.hmask[i % 32] & (1 << (i / 32)) != 0;
                let q = low - if high_set { 0 } else { 4 };
                *y = dl * q as f32;
            }
        }
    }

    /// Fits a signed scale per sub-block (a small search, see the crate's `fit` module),
    /// rounds them to 6 bits, then rounds each weight to the nearest level.
    pub fn quantize(x: &[f32; QK_K]) -> Self {
        let mut scales = [0.0f32; 16];
        for (j, sub) in x.chunks_exact(16).enumerate() {
            scales[j] = fit_scale(sub, -4, 3);
        }
        let (d, mut ls) = quantize_signed(&scales, -32, 31);
        let df = d.to_f32();
        for (j, sub) in x.chunks_exact(16).enumerate() {
            refine_scale(sub, -4, 3, df, &mut ls[j], -32, 31);
        }
        let mut b = BlockQ3_K {
            hmask: [0; QK_K / 8],
            qs: [0; QK_K / 4],
            scales: pack_scales(&ls.map(|l| (l + 32) as u8)),
            d,
        };
        for (j, xs) in x.chunks_exact(16).enumerate() {
            let s = df * ls[j] as f32;
            let is = crate::formats::inverse(s);
            for (k, &v) in xs.iter().enumerate() {
                let i = 16 * j + k;
                // Level plus 4, in 0..8; a zero scale leaves every weight at level 0.
                let u = (round_i32(v * is).clamp(-4, 3) + 4) as u8;
                let (byte, shift) = q2_position(i);
                b.qs[byte] |= (u & 3) << shift;
                b.hmask[i % 32] |= (u >> 2) << (i / 32);
            }
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_packing_round_trips() {
        let sc: [u8; 16] = std::array::from_fn(|i| ((i * 37 + 5) % 64) as u8);
        assert_eq!(unpack_scales(&pack_scales(&sc)), sc);
    }
}
