//! Q8_K: super-blocks of 256 values, 8-bit levels times an f32 scale, with the sum of each
//! 16 levels precomputed. ggml uses it for activations in dot products with K-quants.

use bytemuck::{Pod, Zeroable};
use gguf::GgmlType;

use super::{round_i32, signed_absmax, Block, QK_K};

/// One Q8_K block (292 bytes): `y[i] = d * qs[i]`; `bsums[j]` is the sum of
/// `qs[16 * j..16 * j + 16]`.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ8_K {
    /// Scale (f32, unlike the other formats).
    pub d: f32,
    /// Levels.
    pub qs: [i8; QK_K],
    /// Sums of each group of 16 levels.
    pub bsums: [i16; QK_K / 16],
}

const _: () = assert!(size_of::<BlockQ8_K>() == 292);

impl Block for BlockQ8_K {
    const TYPE: GgmlType = GgmlType::Q8_K;
    const ELEMS: usize = QK_K;
}

impl BlockQ8_K {
    /// Writes the block's 256 values to `y` (`bsums` is not used).
    pub fn dequantize(&self, y: &mut [f32; QK_K]) {
        for (y, &q) in y.iter_mut().zip(&self.qs) {
            *y = self.d * q as f32;
        }
    }

    /// Scale `max|x| / 127`, each element rounded to the nearest level, and `bsums` filled.
    pub fn quantize(x: &[f32; QK_K]) -> Self {
        let (_, amax) = signed_absmax(x);
        let mut b = BlockQ8_K::zeroed();
        if amax == 0.0 {
            return b;
        }
        let id = 127.0 / amax;
        b.d = amax / 127.0;
        for (q, &v) in b.qs.iter_mut().zip(x) {
            *q = round_i32(v * id).clamp(-127, 127) as i8;
        }
        for (s, group) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
            *s = group.iter().map(|&q| i16::from(q)).sum();
        }
        b
    }
}
