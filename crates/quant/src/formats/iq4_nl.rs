//! IQ4_NL: blocks of 32 weights, 4-bit indices into a fixed non-linear table of 16 levels,
//! times one f16 scale.

use bytemuck::{Pod, Zeroable};
use gguf::GgmlType;
use half::f16;

use super::{inverse, pack_nibbles_split, Block};
use crate::fit::{fit_scale_grid, nearest_in_grid};

/// Elements per IQ4_NL block.
pub const QK4_NL: usize = 32;

/// The 16 levels IQ4_NL and IQ4_XS indices select (ascending; ggml's `kvalues_iq4nl`).
pub const IQ4_LEVELS: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// One IQ4_NL block (18 bytes): `y[i] = d * IQ4_LEVELS[q[i]]`.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockIQ4_NL {
    /// Scale.
    pub d: f16,
    /// Byte `j` holds index `q[j]` in its low nibble and `q[j + 16]` in its high nibble.
    pub qs: [u8; QK4_NL / 2],
}

const _: () = assert!(size_of::<BlockIQ4_NL>() == 18);

impl Block for BlockIQ4_NL {
    const TYPE: GgmlType = GgmlType::IQ4_NL;
    const ELEMS: usize = QK4_NL;
}

/// Dequantizes 32 weights whose indices are packed as in IQ4_NL, with scale `d`.
#[inline]
pub(crate) fn dequantize_iq4_32(d: f32, qs: &[u8], y: &mut [f32]) {
    let (lo, hi) = y.split_at_mut(16);
    for ((&b, l), h) in qs.iter().zip(lo).zip(hi) {
        *l = d * IQ4_LEVELS[(b & 0x0F) as usize] as f32;
        *h = d * IQ4_LEVELS[(b >> 4) as usize] as f32;
    }
}

/// Packs the nearest level index of each of 32 weights for scale `d` into 16 bytes.
pub(crate) fn quantize_iq4_32(d: f32, x: &[f32], qs: &mut [u8]) {
    let id = inverse(d);
    let mut q = [0u8; QK4_NL];
    for (q, &v) in q.iter_mut().zip(x) {
        *q = nearest_in_grid(&IQ4_LEVELS, v * id) as u8;
    }
    pack_nibbles_split(&q, qs);
}

impl BlockIQ4_NL {
    /// Writes the block's 32 values to `y`.
    pub fn dequantize(&self, y: &mut [f32; QK4_NL]) {
        dequantize_iq4_32(self.d.to_f32(), &self.qs, y);
    }

    /// Fits the scale (a small search, see the crate's `fit` module) and picks the nearest
    /// level for each weight.
    pub fn quantize(x: &[f32; QK4_NL]) -> Self {
        let d = f16::from_f32(fit_scale_grid(x, &IQ4_LEVELS));
        let mut qs = [0u8; QK4_NL / 2];
        quantize_iq4_32(d.to_f32(), x, &mut qs);
        BlockIQ4_NL { d, qs }
    }
}
