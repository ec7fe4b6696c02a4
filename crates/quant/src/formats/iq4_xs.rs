//! IQ4_XS: super-blocks of 256 weights in 8 sub-blocks of 32, each with a signed 6-bit
//! scale times the super-block's f16 `d`; weights are 4-bit indices into IQ4_NL's levels.

use bytemuck::{Pod, Zeroable};
use gguf::GgmlType;
use half::f16;

use super::iq4_nl::{dequantize_iq4_32, quantize_iq4_32, IQ4_LEVELS};
use super::{Block, QK_K};
use crate::fit::{fit_scale_grid, quantize_signed, refine_scale_grid};

/// One IQ4_XS block (136 bytes). For sub-block `j`, with `ls` its unpacked 6-bit scale:
/// `y = (d * (ls - 32)) * IQ4_LEVELS[q]`.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockIQ4_XS {
    /// Scale of the sub-block scales.
    pub d: f16,
    /// Top 2 bits of the scales: bits `2j..2j + 2` for sub-block `j`.
    pub scales_h: u16,
    /// Low 4 bits of the scales: sub-block `j` in nibble `j % 2` of byte `j / 2`.
    pub scales_l: [u8; QK_K / 64],
    /// Indices, 16 bytes per sub-block, packed as in IQ4_NL.
    pub qs: [u8; QK_K / 2],
}

const _: () = assert!(size_of::<BlockIQ4_XS>() == 136);

impl Block for BlockIQ4_XS {
    const TYPE: GgmlType = GgmlType::IQ4_XS;
    const ELEMS: usize = QK_K;
}

impl BlockIQ4_XS {
    /// The stored scale of sub-block `j` (0..8), in 0..64; the signed scale is this
    /// minus 32.
    #[inline]
    pub fn sub_scale(&self, j: usize) -> u8 {
        let low = (self.scales_l[j / 2] >> (4 * (j % 2))) & 0x0F;
        let high = ((self.scales_h >> (2 * j)) & 3) as u8;
        low | (high << 4)
    }

    /// Writes the block's 256 values to `y`.
    pub fn dequantize(&self, y: &mut [f32; QK_K]) {
        let d = self.d.to_f32();
        for (j, (ys, qs)) in y
            .chunks_exact_mut(32)
            .zip(self.qs.chunks_exact(16))
            .enumerate()
        {
            let dl = d * (self.sub_scale(j) as i32 - 32) as f32;
            dequantize_iq4_32(dl, qs, ys);
        }
    }

    /// Fits a scale per sub-block (a small search, see the crate's `fit` module), rounds
    /// them to 6 signed bits, then picks the nearest level for each weight.
    pub fn quantize(x: &[f32; QK_K]) -> Self {
        let mut scales = [0.0f32; 8];
        for (j, sub) in x.chunks_exact(32).enumerate() {
            scales[j] = fit_scale_grid(sub, &IQ4_LEVELS);
        }
        let (d, mut ls) = quantize_signed(&scales, -32, 31);
        let df = d.to_f32();
        for (j, sub) in x.chunks_exact(32).enumerate() {
            refine_scale_grid(sub, &IQ4_LEVELS, df, &mut ls[j], -32, 31);
        }
        let mut b = BlockIQ4_XS {
            d,
            scales_h: 0,
            scales_l: [0; QK_K / 64],
            qs: [0; QK_K / 2],
        };
        for (j, (xs, qs)) in x
            .chunks_exact(32)
            .zip(b.qs.chunks_exact_mut(16))
            .enumerate()
        {
            let u = (ls[j] + 32) as u8;
            b.scales_l[j / 2] |= (u & 0x0F) << (4 * (j % 2));
            b.scales_h |= u16::from(u >> 4) << (2 * j);
            quantize_iq4_32(df * ls[j] as f32, xs, qs);
        }
        b
    }
}
