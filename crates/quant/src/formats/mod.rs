//! One module per format family, each with the `#[repr(C)]` block struct as ggml lays it
//! out, its dequantizer (bit-exact with ggml's reference C code) and a quantizer.
//!
//! Every block struct is [`bytemuck::Pod`], so a `&[u8]` of whole blocks can be viewed as
//! `&[BlockX]` (see [`Block`]). Multi-byte fields are little-endian, as in GGUF files; the
//! crate only builds for little-endian targets.
//!
//! A note for faster kernels: in every format here each output is either exact or one
//! correctly rounded f32 operation on exact values (an f16 scale has 11 significant bits,
//! and scale × sub-scale × level never needs more than 24, except Q6_K's and Q8_K's final
//! product, which is rounded once whatever the order). So evaluation order and fused
//! multiply-add do not change the bits, and SIMD code can match these results exactly.

use bytemuck::Pod;
use gguf::GgmlType;

pub mod float;
pub mod iq4_nl;
pub mod iq4_xs;
pub mod q2_k;
pub mod q3_k;
pub mod q4_0;
pub mod q4_1;
pub mod q4_k;
pub mod q5_0;
pub mod q5_1;
pub mod q5_k;
pub mod q6_k;
pub mod q8_0;
pub mod q8_1;
pub mod q8_k;

pub use iq4_nl::BlockIQ4_NL;
pub use iq4_xs::BlockIQ4_XS;
pub use q2_k::BlockQ2_K;
pub use q3_k::BlockQ3_K;
pub use q4_0::BlockQ4_0;
pub use q4_1::BlockQ4_1;
pub use q4_k::BlockQ4_K;
pub use q5_0::BlockQ5_0;
pub use q5_1::BlockQ5_1;
pub use q5_k::BlockQ5_K;
pub use q6_k::BlockQ6_K;
pub use q8_0::BlockQ8_0;
pub use q8_1::BlockQ8_1;
pub use q8_k::BlockQ8_K;

/// Elements in a K-quant super-block (ggml's `QK_K`).
pub const QK_K: usize = 256;

// Bytes of one block of each format (`size_of` of its struct, ggml's type size): the one
// definition the SIMD kernels, which read blocks as byte arrays, are sized by.
/// Bytes of one Q4_0 block.
pub const Q4_0_BYTES: usize = size_of::<BlockQ4_0>();
/// Bytes of one Q4_1 block.
pub const Q4_1_BYTES: usize = size_of::<BlockQ4_1>();
/// Bytes of one Q5_0 block.
pub const Q5_0_BYTES: usize = size_of::<BlockQ5_0>();
/// Bytes of one Q5_1 block.
pub const Q5_1_BYTES: usize = size_of::<BlockQ5_1>();
/// Bytes of one Q8_0 block.
pub const Q8_0_BYTES: usize = size_of::<BlockQ8_0>();
/// Bytes of one Q8_1 block.
pub const Q8_1_BYTES: usize = size_of::<BlockQ8_1>();
/// Bytes of one IQ4_NL block.
pub const IQ4_NL_BYTES: usize = size_of::<BlockIQ4_NL>();
/// Bytes of one Q2_K block.
pub const Q2_K_BYTES: usize = size_of::<BlockQ2_K>();
/// Bytes of one Q3_K block.
pub const Q3_K_BYTES: usize = size_of::<BlockQ3_K>();
/// Bytes of one Q4_K block.
pub const Q4_K_BYTES: usize = size_of::<BlockQ4_K>();
/// Bytes of one Q5_K block.
pub const Q5_K_BYTES: usize = size_of::<BlockQ5_K>();
/// Bytes of one Q6_K block.
pub const Q6_K_BYTES: usize = size_of::<BlockQ6_K>();
/// Bytes of one Q8_K block.
pub const Q8_K_BYTES: usize = size_of::<BlockQ8_K>();
/// Bytes of one IQ4_XS block.
pub const IQ4_XS_BYTES: usize = size_of::<BlockIQ4_XS>();

/// A quantized block type: its ggml type and how many elements one block holds.
/// `size_of::<Self>()` equals `Self::TYPE.type_size()`.
pub trait Block: Pod {
    /// The ggml type stored in blocks of this layout.
    const TYPE: GgmlType;
    /// Elements per block (`Self::TYPE.block_size()`).
    const ELEMS: usize;
}

/// Views `bytes` as blocks of `B` when the slice is aligned for `B` and a whole number of
/// blocks long, as the bytes of a memory-mapped GGUF tensor normally are.
pub fn cast_blocks<B: Block>(bytes: &[u8]) -> Option<&[B]> {
    bytemuck::try_cast_slice(bytes).ok()
}

/// Runs `f` on each block of `src` with the `N` outputs it fills. `src` may be unaligned;
/// the caller has checked that `src` and `dst` hold the same whole number of blocks.
fn dequantize_blocks<B: Block, const N: usize>(
    src: &[u8],
    dst: &mut [f32],
    f: fn(&B, &mut [f32; N]),
) {
    let (out, _) = dst.as_chunks_mut::<N>();
    match cast_blocks::<B>(src) {
        Some(blocks) => blocks.iter().zip(out).for_each(|(b, y)| f(b, y)),
        None => src
            .chunks_exact(size_of::<B>())
            .zip(out)
            .for_each(|(c, y)| f(&bytemuck::pod_read_unaligned(c), y)),
    }
}

/// Quantizes each group of `N` inputs with `f` and writes the block's bytes to `dst`. The
/// caller has checked that `src` and `dst` hold the same whole number of blocks.
fn quantize_blocks<B: Block, const N: usize>(src: &[f32], dst: &mut [u8], f: fn(&[f32; N]) -> B) {
    let (inp, _) = src.as_chunks::<N>();
    for (x, out) in inp.iter().zip(dst.chunks_exact_mut(size_of::<B>())) {
        out.copy_from_slice(bytemuck::bytes_of(&f(x)));
    }
}

/// Dequantizes whole blocks; `None` when `ty` has no dequantizer here. Lengths are checked
/// by the caller.
pub(crate) fn dequantize_checked(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Option<()> {
    use GgmlType as T;
    match ty {
        T::F32 => float::dequantize_f32(src, dst),
        T::F16 => float::dequantize_f16(src, dst),
        T::BF16 => float::dequantize_bf16(src, dst),
        T::Q4_0 => dequantize_blocks(src, dst, BlockQ4_0::dequantize),
        T::Q4_1 => dequantize_blocks(src, dst, BlockQ4_1::dequantize),
        T::Q5_0 => dequantize_blocks(src, dst, BlockQ5_0::dequantize),
        T::Q5_1 => dequantize_blocks(src, dst, BlockQ5_1::dequantize),
        T::Q8_0 => dequantize_blocks(src, dst, BlockQ8_0::dequantize),
        T::Q8_1 => dequantize_blocks(src, dst, BlockQ8_1::dequantize),
        T::Q2_K => dequantize_blocks(src, dst, BlockQ2_K::dequantize),
        T::Q3_K => dequantize_blocks(src, dst, BlockQ3_K::dequantize),
        T::Q4_K => dequantize_blocks(src, dst, BlockQ4_K::dequantize),
        T::Q5_K => dequantize_blocks(src, dst, BlockQ5_K::dequantize),
        T::Q6_K => dequantize_blocks(src, dst, BlockQ6_K::dequantize),
        T::Q8_K => dequantize_blocks(src, dst, BlockQ8_K::dequantize),
        T::IQ4_NL => dequantize_blocks(src, dst, BlockIQ4_NL::dequantize),
        T::IQ4_XS => dequantize_blocks(src, dst, BlockIQ4_XS::dequantize),
        _ => return None,
    }
    Some(())
}

/// Quantizes whole blocks; `None` when `ty` has no quantizer here. Lengths are checked by
/// the caller.
pub(crate) fn quantize_checked(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Option<()> {
    use GgmlType as T;
    match ty {
        T::F32 => float::quantize_f32(src, dst),
        T::F16 => float::quantize_f16(src, dst),
        T::BF16 => float::quantize_bf16(src, dst),
        T::Q4_0 => quantize_blocks(src, dst, BlockQ4_0::quantize),
        T::Q4_1 => quantize_blocks(src, dst, BlockQ4_1::quantize),
        T::Q5_0 => quantize_blocks(src, dst, BlockQ5_0::quantize),
        T::Q5_1 => quantize_blocks(src, dst, BlockQ5_1::quantize),
        T::Q8_0 => quantize_blocks(src, dst, BlockQ8_0::quantize),
        T::Q8_1 => quantize_blocks(src, dst, BlockQ8_1::quantize),
        T::Q2_K => quantize_blocks(src, dst, BlockQ2_K::quantize),
        T::Q3_K => quantize_blocks(src, dst, BlockQ3_K::quantize),
        T::Q4_K => quantize_blocks(src, dst, BlockQ4_K::quantize),
        T::Q5_K => quantize_blocks(src, dst, BlockQ5_K::quantize),
        T::Q6_K => quantize_blocks(src, dst, BlockQ6_K::quantize),
        T::Q8_K => quantize_blocks(src, dst, BlockQ8_K::quantize),
        T::IQ4_NL => quantize_blocks(src, dst, BlockIQ4_NL::quantize),
        T::IQ4_XS => quantize_blocks(src, dst, BlockIQ4_XS::quantize),
        _ => return None,
    }
    Some(())
}

/// The types [`dequantize_checked`] and [`quantize_checked`] handle, in id order.
pub(crate) const SUPPORTED: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q8_1,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::Q8_K,
    GgmlType::IQ4_NL,
    GgmlType::IQ4_XS,
    GgmlType::BF16,
];

/// Rounds to the nearest integer, ties away from zero (C's `roundf`), and saturates;
/// NaN gives 0.
#[inline]
pub(crate) fn round_i32(x: f32) -> i32 {
    x.round() as i32
}

/// The element of largest magnitude, with its sign (the first one on ties), and that
/// magnitude. NaNs are skipped; all-NaN or empty input gives `(0.0, 0.0)`.
pub(crate) fn signed_absmax(x: &[f32]) -> (f32, f32) {
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    (max, amax)
}

/// `1 / d`, or 0 when `d` is 0 (so that an all-zero block quantizes to zeros, not NaN).
#[inline]
pub(crate) fn inverse(d: f32) -> f32 {
    if d == 0.0 {
        0.0
    } else {
        1.0 / d
    }
}

/// Writes `q[i]` (4-bit values) into `out` two per byte: `out[i]` low nibble holds `q[i]`,
/// high nibble `q[i + out.len()]`. This is the nibble order of Q4_0, Q4_1, Q5_0, Q5_1 and
/// IQ4_NL.
pub(crate) fn pack_nibbles_split(q: &[u8], out: &mut [u8]) {
    let half = out.len();
    for (i, o) in out.iter_mut().enumerate() {
        *o = (q[i] & 0x0F) | ((q[i + half] & 0x0F) << 4);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check<B: Block>() {
        assert_eq!(size_of::<B>() as u64, B::TYPE.type_size(), "{}", B::TYPE);
        assert_eq!(B::ELEMS as u64, B::TYPE.block_size(), "{}", B::TYPE);
    }

    #[test]
    fn block_sizes_match_ggml() {
        check::<BlockQ4_0>();
        check::<BlockQ4_1>();
        check::<BlockQ5_0>();
        check::<BlockQ5_1>();
        check::<BlockQ8_0>();
        check::<BlockQ8_1>();
        check::<BlockQ2_K>();
        check::<BlockQ3_K>();
        check::<BlockQ4_K>();
        check::<BlockQ5_K>();
        check::<BlockQ6_K>();
        check::<BlockQ8_K>();
        check::<BlockIQ4_NL>();
        check::<BlockIQ4_XS>();
    }

    #[test]
    fn rounding_is_away_from_zero() {
        assert_eq!(round_i32(2.5), 3);
        assert_eq!(round_i32(-2.5), -3);
        assert_eq!(round_i32(f32::NAN), 0);
        assert_eq!(round_i32(1e30), i32::MAX);
    }
}
