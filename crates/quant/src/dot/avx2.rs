//! AVX2 + FMA + F16C kernels (256-bit), one per weight type.
//!
//! Blocks of 32 are handled four at a time: each block's eight i32 partial sums are folded
//! by three horizontal adds into one vector holding two partial sums of each of the four
//! blocks, so one conversion and one FMA apply four blocks' scales. K-quants sum a whole
//! super-block in i32 lanes (sub-block scales applied by `madd`, or by VNNI's `dpwssd`
//! when the AVX-512 tier reuses a kernel through its `*_with` form) and use one FMA per
//! super-block.

use std::arch::x86_64::*;

use gguf::GgmlType;

use super::x86::{f16, f16x4, f32_at, ld128, ld256, sub, u16_at, u32_at};
use super::{row_blocks, DotFn};
use crate::formats::iq4_nl::IQ4_LEVELS;
use crate::formats::{
    IQ4_NL_BYTES, IQ4_XS_BYTES, Q2_K_BYTES, Q3_K_BYTES, Q4_0_BYTES, Q4_1_BYTES, Q4_K_BYTES,
    Q5_0_BYTES, Q5_1_BYTES, Q5_K_BYTES, Q6_K_BYTES, Q8_0_BYTES, Q8_1_BYTES, Q8_K_BYTES,
};

/// The AVX2 kernel for weights of type `w`.
///
/// # Safety
///
/// The CPU must support AVX2, FMA and F16C: the returned functions use them.
pub(super) unsafe fn kernel(w: GgmlType) -> Option<DotFn> {
    kernel_table!(w)
}

tier_fns!();

// ---------------------------------------------------------------------------------------
// Small helpers

/// The sum of the eight lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// 16 bytes of split nibbles as 32 bytes 0..16: byte `j` of the result is the low nibble
/// of byte `j` for `j < 16`, the high nibble of byte `j - 16` above.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn nibbles(p: &[u8; 16]) -> __m256i {
    let b = ld128(p);
    let v = _mm256_set_m128i(_mm_srli_epi16::<4>(b), b);
    _mm256_and_si256(v, _mm256_set1_epi8(0x0F))
}

/// The 32 bits of `bits` as 32 bytes: 0xFF where the bit is set, 0 where not.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn bit_bytes(bits: u32) -> __m256i {
    // Byte j takes byte j / 8 of `bits`, then is tested against bit j % 8.
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(bits as i32),
        _mm256_set_epi64x(
            0x0303_0303_0303_0303,
            0x0202_0202_0202_0202,
            0x0101_0101_0101_0101,
            0,
        ),
    );
    let select = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    _mm256_cmpeq_epi8(_mm256_and_si256(spread, select), select)
}

/// Eight i32 partial sums of `x * y` over 32 signed bytes each (`x` may be -128 only if
/// `y` is never -128).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dot_i8(x: __m256i, y: __m256i) -> __m256i {
    let p = _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
    _mm256_madd_epi16(p, _mm256_set1_epi16(1))
}

/// Eight i32 partial sums of `x * y`, `x` unsigned bytes below 128, `y` signed.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dot_u8(x: __m256i, y: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(x, y), _mm256_set1_epi16(1))
}

/// Folds four blocks' eight partial sums into one vector: lane `k` and `k + 4` hold
/// partial sums of block `k`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn fold4(p: [__m256i; 4]) -> __m256 {
    let h01 = _mm256_hadd_epi32(p[0], p[1]);
    let h23 = _mm256_hadd_epi32(p[2], p[3]);
    _mm256_cvtepi32_ps(_mm256_hadd_epi32(h01, h23))
}

/// The f16 at offset `O` of four blocks, as f32 lanes 0..4 repeated in 4..8.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn f16_lanes<const O: usize, const N: usize>(b: &[[u8; N]; 4]) -> __m128 {
    f16x4(b.each_ref().map(u16_at::<O, N>))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dup(v: __m128) -> __m256 {
    _mm256_set_m128(v, v)
}

// ---------------------------------------------------------------------------------------
// Blocks of 32 with Q8_0 activations: `sum_blocks d_w d_a sum(q_w q_a)`.

/// The dot product of rows of 32-element blocks whose scale is the f16 at offset 0 of
/// both blocks, `dot` giving eight i32 partial sums of a block's integer products.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn blocks_q8_0<const WB: usize>(
    w: &[[u8; WB]],
    a: &[[u8; Q8_0_BYTES]],
    dot: impl Fn(&[u8; WB], &[u8; 32]) -> __m256i,
) -> f32 {
    let (w4, wt) = w.as_chunks::<4>();
    let (a4, at) = a.as_chunks::<4>();
    let mut acc = _mm256_setzero_ps();
    for (x, y) in w4.iter().zip(a4) {
        let p = std::array::from_fn(|k| dot(&x[k], sub::<2, 32, Q8_0_BYTES>(&y[k])));
        let d = _mm_mul_ps(f16_lanes::<0, WB>(x), f16_lanes::<0, Q8_0_BYTES>(y));
        acc = _mm256_fmadd_ps(fold4(p), dup(d), acc);
    }
    for (x, y) in wt.iter().zip(at) {
        let p = _mm256_cvtepi32_ps(dot(x, sub::<2, 32, Q8_0_BYTES>(y)));
        let d = f16(u16_at::<0, WB>(x)) * f16(u16_at::<0, Q8_0_BYTES>(y));
        acc = _mm256_fmadd_ps(p, _mm256_set1_ps(d), acc);
    }
    hsum(acc)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn q8_0_k(w: &[[u8; Q8_0_BYTES]], a: &[[u8; Q8_0_BYTES]]) -> f32 {
    blocks_q8_0(w, a, |x, y| {
        dot_i8(ld256(sub::<2, 32, Q8_0_BYTES>(x)), ld256(y))
    })
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn q4_0_k(w: &[[u8; Q4_0_BYTES]], a: &[[u8; Q8_0_BYTES]]) -> f32 {
    blocks_q8_0(w, a, |x, y| {
        // sum((q - 8) y) = sum(q y) - sum(8 y), both in i16 pairs without overflow.
        let q = nibbles(sub::<2, 16, Q4_0_BYTES>(x));
        let y = ld256(y);
        let p = _mm256_sub_epi16(
            _mm256_maddubs_epi16(q, y),
            _mm256_maddubs_epi16(_mm256_set1_epi8(8), y),
        );
        _mm256_madd_epi16(p, _mm256_set1_epi16(1))
    })
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn q5_0_k(w: &[[u8; Q5_0_BYTES]], a: &[[u8; Q8_0_BYTES]]) -> f32 {
    blocks_q8_0(w, a, |x, y| {
        // q - 16 as a signed byte: the nibble, with 0xF0 or-ed in where the fifth bit is 0.
        let high = bit_bytes(u32_at::<2, Q5_0_BYTES>(x));
        let q = _mm256_or_si256(
            nibbles(sub::<6, 16, Q5_0_BYTES>(x)),
            _mm256_andnot_si256(high, _mm256_set1_epi8(0xF0u8 as i8)),
        );
        dot_i8(q, ld256(y))
    })
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn iq4_nl_k(w: &[[u8; IQ4_NL_BYTES]], a: &[[u8; Q8_0_BYTES]]) -> f32 {
    let table = levels_table();
    blocks_q8_0(w, a, |x, y| {
        let q = _mm256_shuffle_epi8(table, nibbles(sub::<2, 16, IQ4_NL_BYTES>(x)));
        dot_i8(q, ld256(y))
    })
}

/// The 16 IQ4 levels in both 128-bit lanes, for `shuffle_epi8` lookups.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn levels_table() -> __m256i {
    let t = ld128(&IQ4_LEVELS.map(|v| v as u8));
    _mm256_set_m128i(t, t)
}

// ---------------------------------------------------------------------------------------
// Blocks of 32 with a minimum, Q8_1 activations:
// `sum_blocks d_w d_a sum(q_w q_a) + m_w d_a sum(q_a)`.

/// As `blocks_q8_0` for weights `d` (offset 0) and `m` (offset 2): `dot` gives the
/// partial sums of the integer products; the sums of the activation levels are taken here.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn blocks_q8_1<const WB: usize>(
    w: &[[u8; WB]],
    a: &[[u8; Q8_1_BYTES]],
    dot: impl Fn(&[u8; WB], __m256i) -> __m256i,
) -> f32 {
    let ones = _mm256_set1_epi8(1);
    let (w4, wt) = w.as_chunks::<4>();
    let (a4, at) = a.as_chunks::<4>();
    let mut acc = _mm256_setzero_ps();
    for (x, y) in w4.iter().zip(a4) {
        let ys: [__m256i; 4] = std::array::from_fn(|k| ld256(sub::<4, 32, Q8_1_BYTES>(&y[k])));
        let p = std::array::from_fn(|k| dot(&x[k], ys[k]));
        let s = ys.map(|y| dot_u8(ones, y));
        let dy = f16_lanes::<0, Q8_1_BYTES>(y);
        let d = _mm_mul_ps(f16_lanes::<0, WB>(x), dy);
        let m = _mm_mul_ps(f16_lanes::<2, WB>(x), dy);
        acc = _mm256_fmadd_ps(fold4(p), dup(d), acc);
        acc = _mm256_fmadd_ps(fold4(s), dup(m), acc);
    }
    for (x, y) in wt.iter().zip(at) {
        let ys = ld256(sub::<4, 32, Q8_1_BYTES>(y));
        let p = _mm256_cvtepi32_ps(dot(x, ys));
        let s = _mm256_cvtepi32_ps(dot_u8(ones, ys));
        let dy = f16(u16_at::<0, Q8_1_BYTES>(y));
        acc = _mm256_fmadd_ps(p, _mm256_set1_ps(f16(u16_at::<0, WB>(x)) * dy), acc);
        acc = _mm256_fmadd_ps(s, _mm256_set1_ps(f16(u16_at::<2, WB>(x)) * dy), acc);
    }
    hsum(acc)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn q4_1_k(w: &[[u8; Q4_1_BYTES]], a: &[[u8; Q8_1_BYTES]]) -> f32 {
    blocks_q8_1(w, a, |x, y| dot_u8(nibbles(sub::<4, 16, Q4_1_BYTES>(x)), y))
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn q5_1_k(w: &[[u8; Q5_1_BYTES]], a: &[[u8; Q8_1_BYTES]]) -> f32 {
    blocks_q8_1(w, a, |x, y| {
        let high = _mm256_and_si256(
            bit_bytes(u32_at::<4, Q5_1_BYTES>(x)),
            _mm256_set1_epi8(0x10),
        );
        dot_u8(
            _mm256_or_si256(nibbles(sub::<8, 16, Q5_1_BYTES>(x)), high),
            y,
        )
    })
}

// ---------------------------------------------------------------------------------------
// K-quants and IQ4_XS, Q8_K activations: d (f32) at 0, levels at 4, bsums at 260.

/// The 256 activation levels of a Q8_K block in 32-byte pieces.
#[inline(always)]
pub(super) fn q8k_levels(y: &[u8; Q8_K_BYTES]) -> &[[u8; 32]; 8] {
    sub::<4, 256, Q8_K_BYTES>(y)
        .as_chunks::<32>()
        .0
        .try_into()
        .unwrap()
}

/// A byte shuffle that broadcasts 16-bit element `j` of each 128-bit lane.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn pick16(j: usize) -> __m256i {
    _mm256_set1_epi16((0x0100 + 0x0202 * j) as i16)
}

/// A byte shuffle that broadcasts 16-bit element `j` of the low 128-bit lane and element
/// `j + 1` of the high lane (each lane shuffles its own bytes).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn pick16_pair(j: usize) -> __m256i {
    _mm256_set_m128i(
        _mm_set1_epi16((0x0100 + 0x0202 * (j + 1)) as i16),
        _mm_set1_epi16((0x0100 + 0x0202 * j) as i16),
    )
}

/// 16 i16 scales as two vectors [scales 8h..8h + 8 in both 128-bit lanes], h = 0, 1.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn halves(sc16: __m256i) -> [__m256i; 2] {
    [
        _mm256_permute2x128_si256::<0x00>(sc16, sc16),
        _mm256_permute2x128_si256::<0x11>(sc16, sc16),
    ]
}

/// The shared head of a Q4_K/Q5_K block (`h` = its first 20 bytes: d, dmin, the 12
/// packed scale bytes and 4 more): adds `dmin d_y sum_j m_j (sum of sub-block j's 32
/// activation levels)` to `acc_m` and returns the 8 sub-block scales as i16 in both
/// 128-bit lanes, and `d d_y`. The 6-bit fields are unpacked with byte shuffles.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn k_head(h: &[u8; 20], y: &[u8; Q8_K_BYTES], acc_m: &mut __m256) -> (__m256i, f32) {
    let r = k_scales(h);
    k_head_with(h, r, y, acc_m)
}

/// The weight-only part of [`k_head`]: [scale 0..8, minimum 0..8] as bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn k_scales(h: &[u8; 20]) -> __m128i {
    let s = ld128(sub::<4, 16, 20>(h));
    // Scales 0..4 and minimums 0..4 are the low 6 bits of bytes 0..4 and 4..8; scales
    // 4..8 are the low nibbles of bytes 8..12 with bits 6, 7 of bytes 0..4 on top,
    // minimums 4..8 the high nibbles with bits 6, 7 of bytes 4..8.
    let a = _mm_shuffle_epi8(
        s,
        _mm_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 8, 9, 10, 11),
    );
    let b = _mm_shuffle_epi8(
        s,
        _mm_setr_epi8(-1, -1, -1, -1, 0, 1, 2, 3, -1, -1, -1, -1, 4, 5, 6, 7),
    );
    let low = _mm_or_si128(
        _mm_and_si128(
            a,
            _mm_setr_epi8(63, 63, 63, 63, 15, 15, 15, 15, 63, 63, 63, 63, 0, 0, 0, 0),
        ),
        _mm_and_si128(
            _mm_srli_epi16::<4>(a),
            _mm_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 15, 15, 15, 15),
        ),
    );
    _mm_or_si128(
        low,
        _mm_and_si128(_mm_srli_epi16::<2>(b), _mm_set1_epi8(0x30)),
    )
}

/// The activation part of [`k_head`], given the block's [`k_scales`] `r`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn k_head_with(
    h: &[u8; 20],
    r: __m128i,
    y: &[u8; Q8_K_BYTES],
    acc_m: &mut __m256,
) -> (__m256i, f32) {
    // [d d_y, dmin d_y].
    let dd = _mm_mul_ps(
        _mm_cvtph_ps(_mm_cvtsi32_si128(u32_at::<0, 20>(h) as i32)),
        _mm_set1_ps(f32_at::<0, Q8_K_BYTES>(y)),
    );
    // Each minimum twice, against the 16 sums of 16 levels.
    let mins = _mm256_cvtepu8_epi16(_mm_unpackhi_epi8(r, r));
    let msum = _mm256_madd_epi16(mins, ld256(sub::<260, 32, Q8_K_BYTES>(y)));
    *acc_m = _mm256_fmadd_ps(
        _mm256_broadcastss_ps(_mm_movehdup_ps(dd)),
        _mm256_cvtepi32_ps(msum),
        *acc_m,
    );
    let sc = _mm_cvtepu8_epi16(r);
    (_mm256_set_m128i(sc, sc), _mm_cvtss_f32(dd))
}

/// Q3_K's 16 scales (6 bits each in 12 bytes) minus 32, as signed bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn q3_scales(s: &[u8; 12]) -> __m128i {
    let u0 = u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
    let u1 = u32::from_le_bytes([s[4], s[5], s[6], s[7]]);
    let u2 = u32::from_le_bytes([s[8], s[9], s[10], s[11]]);
    const LOW4: u32 = 0x0F0F_0F0F;
    const LOW2: u32 = 0x0303_0303;
    let v = _mm_set_epi32(
        (((u1 >> 4) & LOW4) | ((u2 >> 6) & LOW2) << 4) as i32,
        (((u0 >> 4) & LOW4) | ((u2 >> 4) & LOW2) << 4) as i32,
        ((u1 & LOW4) | ((u2 >> 2) & LOW2) << 4) as i32,
        ((u0 & LOW4) | (u2 & LOW2) << 4) as i32,
    );
    _mm_sub_epi8(v, _mm_set1_epi8(32))
}

/// The sums of each 32 activation levels of a Q8_K block (pairs of its 16 bsums), as
/// eight i16.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn bsums32(y: &[u8; Q8_K_BYTES]) -> __m128i {
    let b = ld256(sub::<260, 32, Q8_K_BYTES>(y));
    _mm_hadd_epi16(_mm256_castsi256_si128(b), _mm256_extracti128_si256::<1>(b))
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn q4_k_k(w: &[[u8; Q4_K_BYTES]], a: &[[u8; Q8_K_BYTES]]) -> f32 {
    q4_k_with(w, a, |acc, p, s| {
        _mm256_add_epi32(acc, _mm256_madd_epi16(p, s))
    })
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn q4_k_with(
    w: &[[u8; Q4_K_BYTES]],
    a: &[[u8; Q8_K_BYTES]],
    macc: impl Fn(__m256i, __m256i, __m256i) -> __m256i,
) -> f32 {
    let m4 = _mm256_set1_epi8(0x0F);
    let mut acc = _mm256_setzero_ps();
    let mut acc_m = _mm256_setzero_ps();
    for (x, y) in w.iter().zip(a) {
        let (scales, d) = k_head(sub::<0, 20, Q4_K_BYTES>(x), y, &mut acc_m);
        let qs = sub::<16, 128, Q4_K_BYTES>(x).as_chunks::<32>().0;
        let ys = q8k_levels(y);
        let mut sumi = [_mm256_setzero_si256(); 2];
        for (c, q) in qs.iter().enumerate() {
            let q = ld256(q);
            let lo = _mm256_and_si256(q, m4);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4);
            let plo = _mm256_maddubs_epi16(lo, ld256(&ys[2 * c]));
            let phi = _mm256_maddubs_epi16(hi, ld256(&ys[2 * c + 1]));
            let slo = _mm256_shuffle_epi8(scales, pick16(2 * c));
            let shi = _mm256_shuffle_epi8(scales, pick16(2 * c + 1));
            sumi[0] = macc(sumi[0], plo, slo);
            sumi[1] = macc(sumi[1], phi, shi);
        }
        let sumi = _mm256_add_epi32(sumi[0], sumi[1]);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum(acc) - hsum(acc_m)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn q5_k_k(w: &[[u8; Q5_K_BYTES]], a: &[[u8; Q8_K_BYTES]]) -> f32 {
    q5_k_with(w, a, |acc, p, s| {
        _mm256_add_epi32(acc, _mm256_madd_epi16(p, s))
    })
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn q5_k_with(
    w: &[[u8; Q5_K_BYTES]],
    a: &[[u8; Q8_K_BYTES]],
    macc: impl Fn(__m256i, __m256i, __m256i) -> __m256i,
) -> f32 {
    let m4 = _mm256_set1_epi8(0x0F);
    let b4 = _mm256_set1_epi8(0x10);
    let mut acc = _mm256_setzero_ps();
    let mut acc_m = _mm256_setzero_ps();
    for (x, y) in w.iter().zip(a) {
        let (scales, d) = k_head(sub::<0, 20, Q5_K_BYTES>(x), y, &mut acc_m);
        // Bit 2c of qh[l] is the fifth bit of element 64c + l, bit 2c + 1 that of
        // element 64c + 32 + l; `qh` is shifted right by 2 after each 64 elements.
        let mut qh = ld256(sub::<16, 32, Q5_K_BYTES>(x));
        let qs = sub::<48, 128, Q5_K_BYTES>(x).as_chunks::<32>().0;
        let ys = q8k_levels(y);
        let mut sumi = [_mm256_setzero_si256(); 2];
        for (c, q) in qs.iter().enumerate() {
            let q = ld256(q);
            let lo = _mm256_or_si256(
                _mm256_and_si256(q, m4),
                _mm256_and_si256(_mm256_slli_epi16::<4>(qh), b4),
            );
            let hi = _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4),
                _mm256_and_si256(_mm256_slli_epi16::<3>(qh), b4),
            );
            qh = _mm256_srli_epi16::<2>(qh);
            let plo = _mm256_maddubs_epi16(lo, ld256(&ys[2 * c]));
            let phi = _mm256_maddubs_epi16(hi, ld256(&ys[2 * c + 1]));
            let slo = _mm256_shuffle_epi8(scales, pick16(2 * c));
            let shi = _mm256_shuffle_epi8(scales, pick16(2 * c + 1));
            sumi[0] = macc(sumi[0], plo, slo);
            sumi[1] = macc(sumi[1], phi, shi);
        }
        let sumi = _mm256_add_epi32(sumi[0], sumi[1]);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum(acc) - hsum(acc_m)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn q6_k_k(w: &[[u8; Q6_K_BYTES]], a: &[[u8; Q8_K_BYTES]]) -> f32 {
    q6_k_with(w, a, |acc, p, s| {
        _mm256_add_epi32(acc, _mm256_madd_epi16(p, s))
    })
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn q6_k_with(
    w: &[[u8; Q6_K_BYTES]],
    a: &[[u8; Q8_K_BYTES]],
    macc: impl Fn(__m256i, __m256i, __m256i) -> __m256i,
) -> f32 {
    q6_k_with_n::<1>(w, [a], macc)[0]
}

/// [`q6_k_with`] for N activation rows: each block's levels and scales are unpacked once;
/// each row sees the same arithmetic as alone.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn q6_k_with_n<const N: usize>(
    w: &[[u8; Q6_K_BYTES]],
    a: [&[[u8; Q8_K_BYTES]]; N],
    macc: impl Fn(__m256i, __m256i, __m256i) -> __m256i,
) -> [f32; N] {
    let m4 = _mm256_set1_epi8(0x0F);
    let mut acc = [_mm256_setzero_ps(); N];
    for (i, x) in w.iter().enumerate() {
        let sc16 = _mm256_cvtepi8_epi16(ld128(sub::<192, 16, Q6_K_BYTES>(x)));
        let scales = halves(sc16);
        let ql = sub::<0, 128, Q6_K_BYTES>(x).as_chunks::<32>().0;
        let qh = sub::<128, 64, Q6_K_BYTES>(x).as_chunks::<32>().0;
        // Element 128h + 32r + l: low 4 bits from l0 (r = 0, 2) or l1 (r = 1, 3), low or
        // high nibble; high 2 bits from bits 2r of hb.
        let q: [[__m256i; 4]; 2] = std::array::from_fn(|h| {
            let l0 = ld256(&ql[2 * h]);
            let l1 = ld256(&ql[2 * h + 1]);
            let hb = ld256(&qh[h]);
            [
                _mm256_or_si256(
                    _mm256_and_si256(l0, m4),
                    _mm256_slli_epi16::<4>(_mm256_and_si256(hb, _mm256_set1_epi8(0x03))),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(l1, m4),
                    _mm256_slli_epi16::<2>(_mm256_and_si256(hb, _mm256_set1_epi8(0x0C))),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(l0), m4),
                    _mm256_and_si256(hb, _mm256_set1_epi8(0x30)),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(l1), m4),
                    _mm256_srli_epi16::<2>(_mm256_and_si256(hb, _mm256_set1_epi8(0xC0u8 as i8))),
                ),
            ]
        });
        let s: [[__m256i; 4]; 2] = std::array::from_fn(|h| {
            std::array::from_fn(|r| _mm256_shuffle_epi8(scales[h], pick16_pair(2 * r)))
        });
        for t in 0..N {
            let y = &a[t][i];
            // sum_j sc_j sum((q - 32) y) = sum_j sc_j sum(q y) - 32 sum_j sc_j bsum_j.
            let bsums = ld256(sub::<260, 32, Q8_K_BYTES>(y));
            let offset = _mm256_slli_epi32::<5>(_mm256_madd_epi16(bsums, sc16));
            let ys = q8k_levels(y);
            let mut sumi = [_mm256_setzero_si256(); 2];
            for h in 0..2 {
                for r in 0..4 {
                    let p = _mm256_maddubs_epi16(q[h][r], ld256(&ys[4 * h + r]));
                    sumi[r & 1] = macc(sumi[r & 1], p, s[h][r]);
                }
            }
            let d = f16(u16_at::<208, Q6_K_BYTES>(x)) * f32_at::<0, Q8_K_BYTES>(y);
            let sumi = _mm256_sub_epi32(_mm256_add_epi32(sumi[0], sumi[1]), offset);
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc[t]);
        }
    }
    std::array::from_fn(|t| hsum(acc[t]))
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn q2_k_k(w: &[[u8; Q2_K_BYTES]], a: &[[u8; Q8_K_BYTES]]) -> f32 {
    q2_k_with(w, a, |acc, p, s| {
        _mm256_add_epi32(acc, _mm256_madd_epi16(p, s))
    })
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn q2_k_with(
    w: &[[u8; Q2_K_BYTES]],
    a: &[[u8; Q8_K_BYTES]],
    macc: impl Fn(__m256i, __m256i, __m256i) -> __m256i,
) -> f32 {
    let m3 = _mm256_set1_epi8(3);
    let mut acc = _mm256_setzero_ps();
    let mut acc_m = _mm256_setzero_ps();
    for (x, y) in w.iter().zip(a) {
        let dy = f32_at::<0, Q8_K_BYTES>(y);
        let packed = ld128(sub::<0, 16, Q2_K_BYTES>(x));
        let scales = halves(_mm256_cvtepu8_epi16(_mm_and_si128(
            packed,
            _mm_set1_epi8(0x0F),
        )));
        let mins = _mm256_cvtepu8_epi16(_mm_and_si128(
            _mm_srli_epi16::<4>(packed),
            _mm_set1_epi8(0x0F),
        ));
        let msum = _mm256_madd_epi16(mins, ld256(sub::<260, 32, Q8_K_BYTES>(y)));
        acc_m = _mm256_fmadd_ps(
            _mm256_set1_ps(f16(u16_at::<82, Q2_K_BYTES>(x)) * dy),
            _mm256_cvtepi32_ps(msum),
            acc_m,
        );
        let qs = sub::<16, 64, Q2_K_BYTES>(x).as_chunks::<32>().0;
        let ys = q8k_levels(y);
        let mut sumi = [_mm256_setzero_si256(); 2];
        for h in 0..2 {
            // Element 128h + 32s + l is bits 2s of byte 32h + l.
            let mut q = ld256(&qs[h]);
            for s in 0..4 {
                let c = _mm256_and_si256(q, m3);
                q = _mm256_srli_epi16::<2>(q);
                let p = _mm256_maddubs_epi16(c, ld256(&ys[4 * h + s]));
                let sv = _mm256_shuffle_epi8(scales[h], pick16_pair(2 * s));
                sumi[s & 1] = macc(sumi[s & 1], p, sv);
            }
        }
        let d = f16(u16_at::<80, Q2_K_BYTES>(x)) * dy;
        let sumi = _mm256_add_epi32(sumi[0], sumi[1]);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum(acc) - hsum(acc_m)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn q3_k_k(w: &[[u8; Q3_K_BYTES]], a: &[[u8; Q8_K_BYTES]]) -> f32 {
    q3_k_with(w, a, |acc, p, s| {
        _mm256_add_epi32(acc, _mm256_madd_epi16(p, s))
    })
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn q3_k_with(
    w: &[[u8; Q3_K_BYTES]],
    a: &[[u8; Q8_K_BYTES]],
    macc: impl Fn(__m256i, __m256i, __m256i) -> __m256i,
) -> f32 {
    let m3 = _mm256_set1_epi8(3);
    let b2 = _mm256_set1_epi8(4);
    let mut acc = _mm256_setzero_ps();
    for (x, y) in w.iter().zip(a) {
        let sc16 = _mm256_cvtepi8_epi16(q3_scales(sub::<96, 12, Q3_K_BYTES>(x)));
        // Levels are u - 4 with u = low 2 bits + 4 * high bit in 0..8:
        // sum_j sc_j sum((u - 4) y) = sum_j sc_j sum(u y) - 4 sum_j sc_j bsum_j.
        let bsums = ld256(sub::<260, 32, Q8_K_BYTES>(y));
        let offset = _mm256_slli_epi32::<2>(_mm256_madd_epi16(bsums, sc16));
        let scales = halves(sc16);
        let qs = sub::<32, 64, Q3_K_BYTES>(x).as_chunks::<32>().0;
        // Bit 4h + s of hmask[l] is the high bit of element 128h + 32s + l; `hm` is
        // shifted right by one after each 32 elements.
        let mut hm = ld256(sub::<0, 32, Q3_K_BYTES>(x));
        let ys = q8k_levels(y);
        let mut sumi = [_mm256_setzero_si256(); 2];
        for h in 0..2 {
            let mut q = ld256(&qs[h]);
            for s in 0..4 {
                let u = _mm256_or_si256(
                    _mm256_and_si256(q, m3),
                    _mm256_and_si256(_mm256_slli_epi16::<2>(hm), b2),
                );
                q = _mm256_srli_epi16::<2>(q);
                hm = _mm256_srli_epi16::<1>(hm);
                let p = _mm256_maddubs_epi16(u, ld256(&ys[4 * h + s]));
                let sv = _mm256_shuffle_epi8(scales[h], pick16_pair(2 * s));
                sumi[s & 1] = macc(sumi[s & 1], p, sv);
            }
        }
        let d = f16(u16_at::<108, Q3_K_BYTES>(x)) * f32_at::<0, Q8_K_BYTES>(y);
        let sumi = _mm256_sub_epi32(_mm256_add_epi32(sumi[0], sumi[1]), offset);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum(acc)
}

/// The 6-bit scale of IQ4_XS sub-block `j` minus 32.
#[inline(always)]
pub(super) fn iq4_xs_scale(x: &[u8; IQ4_XS_BYTES], j: usize) -> i32 {
    let high = (u16_at::<2, IQ4_XS_BYTES>(x) >> (2 * j)) & 3;
    let low = (x[4 + j / 2] >> (4 * (j % 2))) & 0x0F;
    (i32::from(low) | i32::from(high) << 4) - 32
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn iq4_xs_k(w: &[[u8; IQ4_XS_BYTES]], a: &[[u8; Q8_K_BYTES]]) -> f32 {
    iq4_xs_with(w, a, |acc, p, s| {
        _mm256_add_epi32(acc, _mm256_madd_epi16(p, s))
    })
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn iq4_xs_with(
    w: &[[u8; IQ4_XS_BYTES]],
    a: &[[u8; Q8_K_BYTES]],
    macc: impl Fn(__m256i, __m256i, __m256i) -> __m256i,
) -> f32 {
    let table = levels_table();
    let mut acc = _mm256_setzero_ps();
    for (x, y) in w.iter().zip(a) {
        let qs = sub::<8, 128, IQ4_XS_BYTES>(x).as_chunks::<16>().0;
        let ys = q8k_levels(y);
        let mut sumi = [_mm256_setzero_si256(); 2];
        for (j, q) in qs.iter().enumerate() {
            let q = _mm256_shuffle_epi8(table, nibbles(q));
            let y = ld256(&ys[j]);
            let p = _mm256_maddubs_epi16(_mm256_sign_epi8(q, q), _mm256_sign_epi8(y, q));
            let s = _mm256_set1_epi16(iq4_xs_scale(x, j) as i16);
            sumi[j & 1] = macc(sumi[j & 1], p, s);
        }
        let d = f16(u16_at::<0, IQ4_XS_BYTES>(x)) * f32_at::<0, Q8_K_BYTES>(y);
        let sumi = _mm256_add_epi32(sumi[0], sumi[1]);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum(acc)
}

// ---------------------------------------------------------------------------------------
// Float weights, f32 activations.

/// `sum(load(w) * a)` with `load` turning `WB` weight bytes (8 elements) into 8 floats;
/// four accumulators over 32 elements per step, then 8 at a time, then the scalar tail.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn float_dot<const WB: usize>(
    w: &[u8],
    a: &[u8],
    load: impl Fn(&[u8; WB]) -> __m256,
    scalar: impl Fn(&[u8]) -> f32,
) -> f32 {
    let (w8, wt) = w.as_chunks::<WB>();
    let (a8, at) = a.as_chunks::<32>();
    let (w32, w8t) = w8.as_chunks::<4>();
    let (a32, a8t) = a8.as_chunks::<4>();
    let af = |a: &[u8; 32]| _mm256_castsi256_ps(ld256(a));
    let mut acc = [_mm256_setzero_ps(); 4];
    for (x, y) in w32.iter().zip(a32) {
        for k in 0..4 {
            acc[k] = _mm256_fmadd_ps(load(&x[k]), af(&y[k]), acc[k]);
        }
    }
    for (x, y) in w8t.iter().zip(a8t) {
        acc[0] = _mm256_fmadd_ps(load(x), af(y), acc[0]);
    }
    let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut sum = hsum(v);
    for (x, y) in wt.chunks_exact(WB / 8).zip(at.chunks_exact(4)) {
        sum += scalar(x) * f32::from_le_bytes([y[0], y[1], y[2], y[3]]);
    }
    sum
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn f32_k(w: &[u8], a: &[u8]) -> f32 {
    float_dot::<32>(
        w,
        a,
        |x| _mm256_castsi256_ps(ld256(x)),
        |x| f32::from_le_bytes([x[0], x[1], x[2], x[3]]),
    )
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn f16_k(w: &[u8], a: &[u8]) -> f32 {
    float_dot::<16>(
        w,
        a,
        |x| _mm256_cvtph_ps(ld128(x)),
        |x| f16(u16::from_le_bytes([x[0], x[1]])),
    )
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn bf16_k(w: &[u8], a: &[u8]) -> f32 {
    float_dot::<16>(
        w,
        a,
        |x| _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(ld128(x)))),
        |x| crate::bf16_to_f32(u16::from_le_bytes([x[0], x[1]])),
    )
}
