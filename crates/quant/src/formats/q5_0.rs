//! Q5_0: blocks of 32 weights, 5-bit signed levels `q - 16` times one f16 scale.

use bytemuck::{Pod, Zeroable};
use gguf::GgmlType;
use half::f16;

use super::{inverse, pack_nibbles_split, round_i32, signed_absmax, Block};

/// Elements per Q5_0 block.
pub const QK5_0: usize = 32;

/// One Q5_0 block (22 bytes): `y[i] = d * (q[i] - 16)`, `q` in 0..32.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ5_0 {
    /// Scale.
    pub d: f16,
    /// Bit `i` of this little-endian u32 is bit 4 of `q[i]`.
    pub qh: [u8; 4],
    /// Low 4 bits: byte `j` holds `q[j]` low, `q[j + 16]` high.
    pub qs: [u8; QK5_0 / 2],
}

const _: () = assert!(size_of::<BlockQ5_0>() == 22);

impl Block for BlockQ5_0 {
    const TYPE: GgmlType = GgmlType::Q5_0;
    const ELEMS: usize = QK5_0;
}

/// The 32 five-bit levels of a Q5_0/Q5_1 block.
pub(crate) fn unpack5(qh: [u8; 4], qs: &[u8; 16]) -> [u8; 32] {
    let h = u32::from_le_bytes(qh);
    let mut q = [0u8; 32];
    for (j, &b) in qs.iter().enumerate() {
        q[j] = (b & 0x0F) | ((((h >> j) & 1) as u8) << 4);
        q[j + 16] = (b >> 4) | ((((h >> (j + 16)) & 1) as u8) << 4);
    }
    q
}

/// Packs 32 five-bit levels as Q5_0/Q5_1 store them: `(qh, qs)`.
pub(crate) fn pack5(q: &[u8; 32]) -> ([u8; 4], [u8; 16]) {
    let mut qs = [0u8; 16];
    pack_nibbles_split(q, &mut qs);
    let h = q
        .iter()
        .enumerate()
        .fold(0u32, |h, (i, &v)| h | (u32::from(v >> 4 & 1) << i));
    (h.to_le_bytes(), qs)
}

impl BlockQ5_0 {
    /// Writes the block's 32 values to `y`.
    pub fn dequantize(&self, y: &mut [f32; QK5_0]) {
        let d = self.d.to_f32();
        let q = unpack5(self.qh, &self.qs);
        for (y, &q) in y.iter_mut().zip(&q) {
            *y = (q as i32 - 16) as f32 * d;
        }
    }

    /// Rounds `x` to the nearest level of the scale that puts the largest-magnitude
    /// element on level -16; its opposite, if present, clips at +15.
    pub fn quantize(x: &[f32; QK5_0]) -> Self {
        let (max, _) = signed_absmax(x);
        let d = f16::from_f32(max / -16.0);
        let id = inverse(d.to_f32());
        let q = x.map(|v| (round_i32(v * id).clamp(-16, 15) + 16) as u8);
        let (qh, qs) = pack5(&q);
        BlockQ5_0 { d, qh, qs }
    }
}
