//! Helpers shared by the x86-64 kernels: loads from fixed-size byte arrays (so that every
//! read is in bounds by type), sub-array views, and f16 scalar conversion.

use std::arch::x86_64::*;

/// The `L` bytes of `a` from offset `O` (checked at compile time).
#[inline(always)]
pub(super) fn sub<const O: usize, const L: usize, const N: usize>(a: &[u8; N]) -> &[u8; L] {
    const { assert!(O + L <= N) };
    a[O..O + L].try_into().unwrap()
}

/// The little-endian `u16` at offset `O` of `a`.
#[inline(always)]
pub(super) fn u16_at<const O: usize, const N: usize>(a: &[u8; N]) -> u16 {
    u16::from_le_bytes(*sub::<O, 2, N>(a))
}

/// The little-endian `u32` at offset `O` of `a`.
#[inline(always)]
pub(super) fn u32_at<const O: usize, const N: usize>(a: &[u8; N]) -> u32 {
    u32::from_le_bytes(*sub::<O, 4, N>(a))
}

/// The little-endian `f32` at offset `O` of `a`.
#[inline(always)]
pub(super) fn f32_at<const O: usize, const N: usize>(a: &[u8; N]) -> f32 {
    f32::from_le_bytes(*sub::<O, 4, N>(a))
}

/// 16 bytes as a vector.
#[inline]
#[target_feature(enable = "sse2")]
pub(super) fn ld128(p: &[u8; 16]) -> __m128i {
    // SAFETY: `p` is 16 readable bytes; the load has no alignment requirement.
    unsafe { _mm_loadu_si128(p.as_ptr().cast()) }
}

/// 32 bytes as a vector.
#[inline]
#[target_feature(enable = "avx")]
pub(super) fn ld256(p: &[u8; 32]) -> __m256i {
    // SAFETY: `p` is 32 readable bytes; the load has no alignment requirement.
    unsafe { _mm256_loadu_si256(p.as_ptr().cast()) }
}

/// 64 bytes as a vector.
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) fn ld512(p: &[u8; 64]) -> __m512i {
    // SAFETY: `p` is 64 readable bytes; the load has no alignment requirement.
    unsafe { _mm512_loadu_si512(p.as_ptr().cast()) }
}

/// An f16 bit pattern as f32 (exact), by F16C.
#[inline]
#[target_feature(enable = "f16c")]
pub(super) fn f16(bits: u16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
}

/// Four f16 bit patterns as f32 lanes 0..4 (exact), by F16C.
#[inline]
#[target_feature(enable = "f16c")]
pub(super) fn f16x4(b: [u16; 4]) -> __m128 {
    let v = u64::from(b[0]) | u64::from(b[1]) << 16 | u64::from(b[2]) << 32 | u64::from(b[3]) << 48;
    _mm_cvtph_ps(_mm_cvtsi64_si128(v as i64))
}

/// An f32 rounded to f16 (nearest, ties to even, as `half` does), by F16C.
#[inline]
#[target_feature(enable = "f16c")]
pub(super) fn to_f16(x: f32) -> u16 {
    _mm_extract_epi16::<0>(_mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(x))) as u16
}
