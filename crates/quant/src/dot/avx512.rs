//! AVX-512 kernels (F, BW, VL and VNNI), one per weight type.
//!
//! 512-bit vectors are used where they measured faster on Zen 4 (which runs them as two
//! 256-bit halves): Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, IQ4_XS and the float types. Q8_0,
//! IQ4_NL, Q2_K, Q3_K, Q5_K and Q6_K run the AVX2 kernels' structure with 256-bit VNNI
//! (`dpbusd`, `dpwssd` through AVX512-VL), which was faster for them.
//!
//! VNNI's `dpbusd` multiplies unsigned weight bytes by signed activation bytes and sums
//! each four products into an i32 lane, so unsigned levels need no sign games: a format's
//! offset (Q4_0's -8, Q5_0's -16, IQ4's +128 table bias) is taken out as
//! `offset * sum(activations)`, from the Q8_K block sums where they exist.
//!
//! Blocks of 32 go four at a time: the weights' 16 nibble bytes of each block are gathered
//! with one word permute from two loads of the group, the activations are rearranged to
//! match ([low 16 of each block], [high 16 of each block]), and the four blocks' scales
//! are gathered the same way, so one conversion and one FMA serve four blocks. K-quants
//! apply sub-block scales in i16 (`maddubs`, then `dpwssd` against the scales).

use std::arch::x86_64::*;

use gguf::GgmlType;

use super::avx2;
use super::avx2::iq4_xs_scale;
use super::x86::{f16, f32_at, ld128, ld256, ld512, sub, u16_at};
use super::{row_blocks, DotFn, DotMultiFn};
use crate::formats::iq4_nl::IQ4_LEVELS;
use crate::formats::{
    IQ4_NL_BYTES, IQ4_XS_BYTES, Q2_K_BYTES, Q3_K_BYTES, Q4_0_BYTES, Q4_1_BYTES, Q4_K_BYTES,
    Q5_0_BYTES, Q5_1_BYTES, Q5_K_BYTES, Q6_K_BYTES, Q8_0_BYTES, Q8_1_BYTES, Q8_K_BYTES,
};

/// The AVX-512 kernel for weights of type `w`.
///
/// # Safety
///
/// The CPU must support AVX-512 F, BW, VL and VNNI, and AVX2, FMA and F16C: the returned
/// functions use them.
pub(super) unsafe fn kernel(w: GgmlType) -> Option<DotFn> {
    kernel_table!(w)
}

/// The AVX-512 kernel dotting one weight row of type `w` with up to four activation rows
/// at once (the weights unpacked once), for the types that have one.
///
/// # Safety
///
/// As for [`kernel`].
pub(super) unsafe fn multi_kernel(w: GgmlType) -> Option<DotMultiFn> {
    use GgmlType as T;
    Some(match w {
        T::Q4_K => q4_k_multi,
        T::Q6_K => q6_k_multi,
        _ => return None,
    })
}

/// The prepared-activation kernels of weight type `w` (Q4_0, Q5_0 with Q8_0 activations;
/// Q4_1, Q5_1 with Q8_1): (bytes of a prepared row of n elements, preparation, kernel).
///
/// # Safety
///
/// As for [`kernel`].
pub(super) unsafe fn prepared_kernel(w: GgmlType) -> Option<super::Prepared> {
    use GgmlType as T;
    let (len, prepare, multi): (fn(usize) -> usize, super::PrepareFn, DotMultiFn) = match w {
        T::Q4_0 => (
            |n| prepared_len(n / 32, Q8_0_BYTES),
            prepare_q8_0,
            q4_0_prep,
        ),
        T::Q5_0 => (
            |n| prepared_len(n / 32, Q8_0_BYTES),
            prepare_q8_0,
            q5_0_prep,
        ),
        T::Q4_1 => (
            |n| prepared_len(n / 32, Q8_1_BYTES),
            prepare_q8_1,
            q4_1_prep,
        ),
        T::Q5_1 => (
            |n| prepared_len(n / 32, Q8_1_BYTES),
            prepare_q8_1,
            q5_1_prep,
        ),
        _ => return None,
    };
    Some(super::Prepared {
        len,
        prepare,
        multi,
    })
}

fn prepare_q8_0(n: usize, a: &[u8], out: &mut [u8]) {
    assert!(
        n.is_multiple_of(32)
            && a.len() == n / 32 * Q8_0_BYTES
            && out.len() >= prepared_len(n / 32, Q8_0_BYTES)
    );
    // SAFETY: handed out only after the AVX-512 tier's features were detected; `prepare`
    // reads and writes through the slices.
    unsafe { prepare::<Q8_0_BYTES, 2>(a.as_chunks::<Q8_0_BYTES>().0, out) }
}

fn prepare_q8_1(n: usize, a: &[u8], out: &mut [u8]) {
    assert!(
        n.is_multiple_of(32)
            && a.len() == n / 32 * Q8_1_BYTES
            && out.len() >= prepared_len(n / 32, Q8_1_BYTES)
    );
    // SAFETY: as for `prepare_q8_0`.
    unsafe { prepare::<Q8_1_BYTES, 4>(a.as_chunks::<Q8_1_BYTES>().0, out) }
}

/// Defines the safe `DotMultiFn` `$name` over prepared activation rows and the
/// const-generic `$imp`.
macro_rules! prep_fn {
    ($name:ident, $imp:ident, $wb:expr, $ab:expr) => {
        fn $name(n: usize, w: &[u8], p: &[&[u8]], out: &mut [f32]) {
            assert!(
                !p.is_empty() && p.len() <= 4 && p.len() == out.len(),
                "1 to 4 activation rows and as many outputs"
            );
            assert!(
                n.is_multiple_of(32) && w.len() == n / 32 * $wb,
                "weight row of {n}"
            );
            for p in p {
                assert!(p.len() >= prepared_len(n / 32, $ab), "prepared row of {n}");
            }
            let (w, _) = w.as_chunks::<$wb>();
            let r: [&[u8]; 4] = std::array::from_fn(|t| p[t.min(p.len() - 1)]);
            // SAFETY: as in `blocks_fn`: handed out only after the AVX-512 tier's features
            // were detected; `$imp` reads through the slices.
            unsafe {
                match p.len() {
                    1 => out.copy_from_slice(&$imp::<1>(w, [r[0]])),
                    2 => out.copy_from_slice(&$imp::<2>(w, [r[0], r[1]])),
                    3 => out.copy_from_slice(&$imp::<3>(w, [r[0], r[1], r[2]])),
                    _ => out.copy_from_slice(&$imp::<4>(w, r)),
                }
            }
        }
    };
}

prep_fn!(q4_0_prep, q4_0_kp, Q4_0_BYTES, Q8_0_BYTES);
prep_fn!(q5_0_prep, q5_0_kp, Q5_0_BYTES, Q8_0_BYTES);
prep_fn!(q4_1_prep, q4_1_kp, Q4_1_BYTES, Q8_1_BYTES);
prep_fn!(q5_1_prep, q5_1_kp, Q5_1_BYTES, Q8_1_BYTES);

/// Defines the safe `DotMultiFn` `$name` over the const-generic `$imp`.
macro_rules! multi_fn {
    ($name:ident, $imp:ident, $block:expr, $wb:expr, $ab:expr) => {
        fn $name(n: usize, w: &[u8], a: &[&[u8]], out: &mut [f32]) {
            assert!(
                !a.is_empty() && a.len() <= 4 && a.len() == out.len(),
                "1 to 4 activation rows and as many outputs"
            );
            for a in a {
                row_blocks(n, w, a, $block, $wb, $ab);
            }
            let (w, _) = w.as_chunks::<$wb>();
            let r: [&[[u8; $ab]]; 4] =
                std::array::from_fn(|t| a[t.min(a.len() - 1)].as_chunks::<$ab>().0);
            // SAFETY: as in `blocks_fn`: handed out only after the AVX-512 tier's features
            // were detected; `$imp` reads through the slices.
            unsafe {
                match a.len() {
                    1 => out.copy_from_slice(&$imp::<1>(w, [r[0]])),
                    2 => out.copy_from_slice(&$imp::<2>(w, [r[0], r[1]])),
                    3 => out.copy_from_slice(&$imp::<3>(w, [r[0], r[1], r[2]])),
                    _ => out.copy_from_slice(&$imp::<4>(w, r)),
                }
            }
        }
    };
}

multi_fn!(q4_k_multi, q4_k_kn, 256, Q4_K_BYTES, Q8_K_BYTES);
multi_fn!(q6_k_multi, q6_k_kn, 256, Q6_K_BYTES, Q8_K_BYTES);

tier_fns!();

// ---------------------------------------------------------------------------------------
// Gathers within a group of four blocks.
//
// A group of four `WB`-byte blocks is read as two 64-byte vectors: `A` = bytes 0..64 and
// `B` = bytes `b_offset(WB)..+64` (the last 64 bytes of a short group, else 64..128).
// Every field used lies at an even offset, so 16-bit permutes over (A, B) can pick it.

/// Where the second 64-byte load of a group of four `wb`-byte blocks starts.
const fn b_offset(wb: usize) -> usize {
    if 4 * wb - 64 < 64 {
        4 * wb - 64
    } else {
        64
    }
}

/// The `permutex2var_epi16` index of the 16-bit word at `byte` of a group.
const fn word(wb: usize, byte: usize) -> u16 {
    assert!(byte.is_multiple_of(2) && byte + 2 <= b_offset(wb) + 64);
    if byte + 2 <= 64 {
        (byte / 2) as u16
    } else {
        (32 + (byte - b_offset(wb)) / 2) as u16
    }
}

/// Indices gathering the 16 bytes at offset `off` of each block, block `k` into 128-bit
/// lane `k`.
const fn lanes16(wb: usize, off: usize) -> [u16; 32] {
    let mut r = [0u16; 32];
    let mut i = 0;
    while i < 32 {
        r[i] = word(wb, (i / 8) * wb + off + 2 * (i % 8));
        i += 1;
    }
    r
}

/// Indices gathering the 16-bit field at offset `off` of each block into words 0..4 (and
/// at `off2` into words 4..8).
const fn fields(wb: usize, off: usize, off2: usize) -> [u16; 32] {
    let mut r = [0u16; 32];
    let mut k = 0;
    while k < 4 {
        r[k] = word(wb, k * wb + off);
        r[k + 4] = word(wb, k * wb + off2);
        k += 1;
    }
    r
}

/// A constant index vector.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn index(v: &[u16; 32]) -> __m512i {
    // SAFETY: `v` is 64 readable bytes; the load has no alignment requirement.
    unsafe { _mm512_loadu_si512(v.as_ptr().cast()) }
}

/// The two 64-byte vectors of a group of four blocks.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn group<const WB: usize>(g: &[[u8; WB]; 4]) -> (__m512i, __m512i) {
    let flat = g.as_flattened();
    let a = ld512(flat.first_chunk::<64>().unwrap());
    let b = ld512(flat[b_offset(WB)..].first_chunk::<64>().unwrap());
    (a, b)
}

/// Four f16 words (words 0..4 of `v`) as f32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn f16_words(v: __m512i) -> __m128 {
    _mm_cvtph_ps(_mm512_castsi512_si128(v))
}

/// [s0 × 4, s1 × 4, s2 × 4, s3 × 4] from four floats.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn spread4(s: __m128) -> __m512 {
    let idx = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(s))
}

/// Activations of four Q8_0/Q8_1 blocks (levels at `QOFF`, f16 scale at 0) as
/// ([low 16 levels of each block], [high 16 of each], the four scales).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn act_quad<const AB: usize, const QOFF: usize>(
    y: &[[u8; AB]; 4],
    scales: __m512i,
) -> (__m512i, __m512i, __m128) {
    let pair = |a: &[u8; AB], b: &[u8; AB]| {
        let lo = _mm512_castsi256_si512(ld256(a[QOFF..].first_chunk::<32>().unwrap()));
        _mm512_inserti64x4::<1>(lo, ld256(b[QOFF..].first_chunk::<32>().unwrap()))
    };
    let y01 = pair(&y[0], &y[1]);
    let y23 = pair(&y[2], &y[3]);
    let low = _mm512_shuffle_i64x2::<0b10_00_10_00>(y01, y23);
    let high = _mm512_shuffle_i64x2::<0b11_01_11_01>(y01, y23);
    let (a, b) = group(y);
    let d = f16_words(_mm512_permutex2var_epi16(a, scales, b));
    (low, high, d)
}

// ---------------------------------------------------------------------------------------
// Blocks of 32.

/// A token's group of four activation blocks as the quad kernels use it: low levels of each
/// block, high levels, the four scales, and the lane sums of the levels.
type Quad = (__m512i, __m512i, __m128, __m512i);

/// The [`Quad`] of four raw Q8_0 (`AB` 34, `QOFF` 2) or Q8_1 (36, 4) activation blocks.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn raw_quad<const AB: usize, const QOFF: usize>(y: &[[u8; AB]; 4], scales: __m512i) -> Quad {
    let (low, high, d) = act_quad::<AB, QOFF>(y, scales);
    let ones = _mm512_set1_epi8(1);
    let zero = _mm512_setzero_si512();
    let s = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(zero, ones, low), ones, high);
    (low, high, d, s)
}

/// `sum_blocks d_w d_a sum((q - 2^SHIFT) y)` over the whole groups of four 32-element
/// weight blocks, whose f16 scale is at offset 0 and whose levels `unpack` makes into
/// unsigned bytes ([low 16 of each block], [high 16 of each]) from the group's two
/// vectors, for N Q8_0 activation rows; `act(t, i)` gives row t's group i (raw or
/// prepared: the same values). The weights are unpacked once for all rows; each row's
/// arithmetic is the same as when it is alone (N = 1), so its sum is the same bits.
/// Returns the sums and the number of blocks done (the caller adds the last one to three).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn quad_q8_0<const WB: usize, const N: usize, const SHIFT: u32>(
    w: &[[u8; WB]],
    act: impl Fn(usize, usize) -> Quad,
    unpack: impl Fn(__m512i, __m512i) -> (__m512i, __m512i),
) -> ([f32; N], usize) {
    let wd_idx = index(&const { fields(WB, 0, 0) });
    let (w4, _) = w.as_chunks::<4>();
    let mut acc = [_mm512_setzero_ps(); N];
    for (i, x) in w4.iter().enumerate() {
        let (ga, gb) = group(x);
        let (lo, hi) = unpack(ga, gb);
        let dw = f16_words(_mm512_permutex2var_epi16(ga, wd_idx, gb));
        for (t, acc) in acc.iter_mut().enumerate() {
            let (ylo, yhi, dy, sy) = act(t, i);
            let zero = _mm512_setzero_si512();
            let p = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(zero, lo, ylo), hi, yhi);
            // The offset's share, 2^SHIFT × sum(y).
            let c = _mm512_slli_epi32::<SHIFT>(sy);
            let d = spread4(_mm_mul_ps(dw, dy));
            *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(p, c)), d, *acc);
        }
    }
    (
        std::array::from_fn(|t| _mm512_reduce_add_ps(acc[t])),
        4 * w4.len(),
    )
}

/// As `quad_q8_0` for weights with a minimum (f16 `d` at 0, `m` at 2) and Q8_1
/// activations: `sum_blocks d_w d_a sum(q y) + m_w d_a sum(y)`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn quad_q8_1<const WB: usize, const N: usize>(
    w: &[[u8; WB]],
    act: impl Fn(usize, usize) -> Quad,
    unpack: impl Fn(__m512i, __m512i) -> (__m512i, __m512i),
) -> ([f32; N], usize) {
    let wd_idx = index(&const { fields(WB, 0, 2) });
    let (w4, _) = w.as_chunks::<4>();
    let mut acc = [_mm512_setzero_ps(); N];
    for (i, x) in w4.iter().enumerate() {
        let (ga, gb) = group(x);
        let (lo, hi) = unpack(ga, gb);
        // Words 0..4: d of each block, 4..8: m.
        let f = _mm512_castsi512_si128(_mm512_permutex2var_epi16(ga, wd_idx, gb));
        let dw = _mm_cvtph_ps(f);
        let dm = _mm_cvtph_ps(_mm_unpackhi_epi64(f, f));
        for (t, acc) in acc.iter_mut().enumerate() {
            let (ylo, yhi, dy, s) = act(t, i);
            let zero = _mm512_setzero_si512();
            let p = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(zero, lo, ylo), hi, yhi);
            let acc_p = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), spread4(_mm_mul_ps(dw, dy)), *acc);
            *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), spread4(_mm_mul_ps(dm, dy)), acc_p);
        }
    }
    (
        std::array::from_fn(|t| _mm512_reduce_add_ps(acc[t])),
        4 * w4.len(),
    )
}

/// Bytes of one group of four prepared activation blocks: low levels (64), high levels
/// (64), the four scales as f32 (16), padding (16), the lane sums of levels (64 i32 bytes).
pub(super) const PREP_GROUP: usize = 224;

/// Bytes of a prepared activation row of `nb` blocks of `ab` bytes: whole groups prepared,
/// the last `nb % 4` blocks as they were.
pub(super) const fn prepared_len(nb: usize, ab: usize) -> usize {
    (nb / 4) * PREP_GROUP + (nb % 4) * ab
}

/// Prepares an activation row of Q8_0 (`AB` 34, `QOFF` 2) or Q8_1 (36, 4) blocks for the
/// `*_kp` kernels: each group of four blocks as `act_quad` arranges it, with its lane sums,
/// so that the per-row work of a matmul does not redo it for every weight row. The values
/// are the same, so the kernels' results are the same bits.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn prepare<const AB: usize, const QOFF: usize>(a: &[[u8; AB]], out: &mut [u8]) {
    let ad_idx = index(&const { fields(AB, 0, 0) });
    let (a4, tail) = a.as_chunks::<4>();
    for (i, y) in a4.iter().enumerate() {
        let (low, high, d, s) = raw_quad::<AB, QOFF>(y, ad_idx);
        let o = &mut out[i * PREP_GROUP..(i + 1) * PREP_GROUP];
        // SAFETY: `o` is PREP_GROUP = 224 writable bytes; the stores at 0, 64, 128 and 160
        // (64, 64, 16 and 64 bytes) lie within it; no alignment is required.
        unsafe {
            _mm512_storeu_si512(o.as_mut_ptr().cast(), low);
            _mm512_storeu_si512(o.as_mut_ptr().add(64).cast(), high);
            _mm_storeu_ps(o.as_mut_ptr().add(128).cast(), d);
            _mm512_storeu_si512(o.as_mut_ptr().add(160).cast(), s);
        }
    }
    let done = a4.len() * PREP_GROUP;
    out[done..done + tail.len() * AB].copy_from_slice(tail.as_flattened());
}

/// A prepared group's (low, high, scales, lane sums).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn prepared_group(p: &[u8], i: usize) -> Quad {
    let g: &[u8; PREP_GROUP] = p[i * PREP_GROUP..(i + 1) * PREP_GROUP].try_into().unwrap();
    (
        ld512(sub::<0, 64, PREP_GROUP>(g)),
        ld512(sub::<64, 64, PREP_GROUP>(g)),
        _mm_castsi128_ps(ld128(sub::<128, 16, PREP_GROUP>(g))),
        ld512(sub::<160, 64, PREP_GROUP>(g)),
    )
}

/// The raw tail blocks of a prepared row of `nb` blocks.
#[inline]
fn prepared_tail<const AB: usize>(p: &[u8], nb: usize) -> &[[u8; AB]] {
    let start = (nb / 4) * PREP_GROUP;
    p[start..start + (nb % 4) * AB].as_chunks::<AB>().0
}

/// Splits gathered nibble bytes `q` (block k's 16 bytes in lane k) into ([low nibbles],
/// [high nibbles]).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn split(q: __m512i) -> (__m512i, __m512i) {
    let m4 = _mm512_set1_epi8(0x0F);
    (
        _mm512_and_si512(q, m4),
        _mm512_and_si512(_mm512_srli_epi16::<4>(q), m4),
    )
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q4_0_with<const N: usize>(
    w: &[[u8; Q4_0_BYTES]],
    act: impl Fn(usize, usize) -> Quad,
) -> ([f32; N], usize) {
    let qi = index(&const { lanes16(Q4_0_BYTES, 2) });
    quad_q8_0::<Q4_0_BYTES, N, 3>(w, act, |ga, gb| {
        split(_mm512_permutex2var_epi16(ga, qi, gb))
    })
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q4_0_k(w: &[[u8; Q4_0_BYTES]], a: &[[u8; Q8_0_BYTES]]) -> f32 {
    let ad_idx = index(&const { fields(Q8_0_BYTES, 0, 0) });
    let a4 = &a.as_chunks::<4>().0[..w.len() / 4];
    let (sum, done) = q4_0_with::<1>(w, |_, i| raw_quad::<Q8_0_BYTES, 2>(&a4[i], ad_idx));
    sum[0] + avx2::q4_0_k(&w[done..], &a[done..])
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q4_0_kp<const N: usize>(w: &[[u8; Q4_0_BYTES]], p: [&[u8]; N]) -> [f32; N] {
    let (sum, done) = q4_0_with::<N>(w, |t, i| prepared_group(p[t], i));
    let nb = w.len();
    std::array::from_fn(|t| {
        sum[t] + avx2::q4_0_k(&w[done..], prepared_tail::<Q8_0_BYTES>(p[t], nb))
    })
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn iq4_nl_k(w: &[[u8; IQ4_NL_BYTES]], a: &[[u8; Q8_0_BYTES]]) -> f32 {
    // The AVX2 kernel's structure with 256-bit VNNI (faster here than the 512-bit
    // gather of `quad_q8_0`, which needs two extra table lookups per four blocks).
    let table = avx2::levels_table();
    avx2::blocks_q8_0(w, a, |x, y| {
        let q = _mm256_shuffle_epi8(table, avx2::nibbles(sub::<2, 16, IQ4_NL_BYTES>(x)));
        let y = _mm256_sign_epi8(ld256(y), q);
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_abs_epi8(q), y)
    })
}

/// The fifth bits of four Q5 blocks (u32 at `HOFF` of each), for the low and the high 16
/// elements: bit 16k + j of the first mask is bit j of block k, of the second bit 16 + j.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn fifth_bits(ga: __m512i, gb: __m512i, idx: __m512i) -> (__mmask64, __mmask64) {
    let v = _mm512_castsi512_si128(_mm512_permutex2var_epi16(ga, idx, gb));
    (
        _mm_cvtsi128_si64(v) as u64,
        _mm_extract_epi64::<1>(v) as u64,
    )
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q5_0_with<const N: usize>(
    w: &[[u8; Q5_0_BYTES]],
    act: impl Fn(usize, usize) -> Quad,
) -> ([f32; N], usize) {
    let qi = index(&const { lanes16(Q5_0_BYTES, 6) });
    let hi_idx = index(&const { fields(Q5_0_BYTES, 2, 4) });
    let b4 = _mm512_set1_epi8(0x10);
    // Unsigned levels q in 0..32; the -16 comes off as 16 * sum(y).
    quad_q8_0::<Q5_0_BYTES, N, 4>(w, act, |ga, gb| {
        let (lo, hi) = split(_mm512_permutex2var_epi16(ga, qi, gb));
        let (klo, khi) = fifth_bits(ga, gb, hi_idx);
        (
            _mm512_mask_add_epi8(lo, klo, lo, b4),
            _mm512_mask_add_epi8(hi, khi, hi, b4),
        )
    })
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q5_0_k(w: &[[u8; Q5_0_BYTES]], a: &[[u8; Q8_0_BYTES]]) -> f32 {
    let ad_idx = index(&const { fields(Q8_0_BYTES, 0, 0) });
    let a4 = &a.as_chunks::<4>().0[..w.len() / 4];
    let (sum, done) = q5_0_with::<1>(w, |_, i| raw_quad::<Q8_0_BYTES, 2>(&a4[i], ad_idx));
    sum[0] + avx2::q5_0_k(&w[done..], &a[done..])
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q5_0_kp<const N: usize>(w: &[[u8; Q5_0_BYTES]], p: [&[u8]; N]) -> [f32; N] {
    let (sum, done) = q5_0_with::<N>(w, |t, i| prepared_group(p[t], i));
    let nb = w.len();
    std::array::from_fn(|t| {
        sum[t] + avx2::q5_0_k(&w[done..], prepared_tail::<Q8_0_BYTES>(p[t], nb))
    })
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q4_1_with<const N: usize>(
    w: &[[u8; Q4_1_BYTES]],
    act: impl Fn(usize, usize) -> Quad,
) -> ([f32; N], usize) {
    let qi = index(&const { lanes16(Q4_1_BYTES, 4) });
    quad_q8_1::<Q4_1_BYTES, N>(w, act, |ga, gb| {
        split(_mm512_permutex2var_epi16(ga, qi, gb))
    })
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q4_1_k(w: &[[u8; Q4_1_BYTES]], a: &[[u8; Q8_1_BYTES]]) -> f32 {
    let ad_idx = index(&const { fields(Q8_1_BYTES, 0, 0) });
    let a4 = &a.as_chunks::<4>().0[..w.len() / 4];
    let (sum, done) = q4_1_with::<1>(w, |_, i| raw_quad::<Q8_1_BYTES, 4>(&a4[i], ad_idx));
    sum[0] + avx2::q4_1_k(&w[done..], &a[done..])
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q4_1_kp<const N: usize>(w: &[[u8; Q4_1_BYTES]], p: [&[u8]; N]) -> [f32; N] {
    let (sum, done) = q4_1_with::<N>(w, |t, i| prepared_group(p[t], i));
    let nb = w.len();
    std::array::from_fn(|t| {
        sum[t] + avx2::q4_1_k(&w[done..], prepared_tail::<Q8_1_BYTES>(p[t], nb))
    })
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q5_1_with<const N: usize>(
    w: &[[u8; Q5_1_BYTES]],
    act: impl Fn(usize, usize) -> Quad,
) -> ([f32; N], usize) {
    let qi = index(&const { lanes16(Q5_1_BYTES, 8) });
    let hi_idx = index(&const { fields(Q5_1_BYTES, 4, 6) });
    let b4 = _mm512_set1_epi8(0x10);
    quad_q8_1::<Q5_1_BYTES, N>(w, act, |ga, gb| {
        let (lo, hi) = split(_mm512_permutex2var_epi16(ga, qi, gb));
        let (klo, khi) = fifth_bits(ga, gb, hi_idx);
        (
            _mm512_mask_add_epi8(lo, klo, lo, b4),
            _mm512_mask_add_epi8(hi, khi, hi, b4),
        )
    })
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q5_1_k(w: &[[u8; Q5_1_BYTES]], a: &[[u8; Q8_1_BYTES]]) -> f32 {
    let ad_idx = index(&const { fields(Q8_1_BYTES, 0, 0) });
    let a4 = &a.as_chunks::<4>().0[..w.len() / 4];
    let (sum, done) = q5_1_with::<1>(w, |_, i| raw_quad::<Q8_1_BYTES, 4>(&a4[i], ad_idx));
    sum[0] + avx2::q5_1_k(&w[done..], &a[done..])
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q5_1_kp<const N: usize>(w: &[[u8; Q5_1_BYTES]], p: [&[u8]; N]) -> [f32; N] {
    let (sum, done) = q5_1_with::<N>(w, |t, i| prepared_group(p[t], i));
    let nb = w.len();
    std::array::from_fn(|t| {
        sum[t] + avx2::q5_1_k(&w[done..], prepared_tail::<Q8_1_BYTES>(p[t], nb))
    })
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q8_0_k(w: &[[u8; Q8_0_BYTES]], a: &[[u8; Q8_0_BYTES]]) -> f32 {
    // The AVX2 kernel's structure with 256-bit VNNI: x * y as |x| * (y with x's sign).
    avx2::blocks_q8_0(w, a, |x, y| {
        let x = ld256(sub::<2, 32, Q8_0_BYTES>(x));
        let y = _mm256_sign_epi8(ld256(y), x);
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_abs_epi8(x), y)
    })
}

// ---------------------------------------------------------------------------------------
// K-quants and IQ4_XS, Q8_K activations: d (f32) at 0, levels at 4, bsums at 260.

/// The 256 activation levels of a Q8_K block in 64-byte pieces.
#[inline(always)]
fn q8k_levels64(y: &[u8; Q8_K_BYTES]) -> &[[u8; 64]; 4] {
    sub::<4, 256, Q8_K_BYTES>(y)
        .as_chunks::<64>()
        .0
        .try_into()
        .unwrap()
}

/// 32 bytes in both halves of a vector.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn twice(p: &[u8; 32]) -> __m512i {
    _mm512_broadcast_i64x4(ld256(p))
}

/// The AVX2 kernel's structure with VNNI's `dpwssd` (256-bit, AVX512-VL) accumulating the
/// scaled sub-block sums: on Zen 4 this beat a 512-bit version of these formats, whose
/// 2-bit, 3-bit and 6-bit unpacking costs more per byte in 512-bit shifts and permutes.
macro_rules! vnni256 {
    ($name:ident, $with:ident, $wb:expr) => {
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
        fn $name(w: &[[u8; $wb]], a: &[[u8; Q8_K_BYTES]]) -> f32 {
            avx2::$with(w, a, |acc, p, s| _mm256_dpwssd_epi32(acc, p, s))
        }
    };
}

vnni256!(q2_k_k, q2_k_with, Q2_K_BYTES);
vnni256!(q3_k_k, q3_k_with, Q3_K_BYTES);
vnni256!(q5_k_k, q5_k_with, Q5_K_BYTES);
vnni256!(q6_k_k, q6_k_with, Q6_K_BYTES);

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q6_k_kn<const N: usize>(w: &[[u8; Q6_K_BYTES]], a: [&[[u8; Q8_K_BYTES]]; N]) -> [f32; N] {
    avx2::q6_k_with_n(w, a, |acc, p, s| _mm256_dpwssd_epi32(acc, p, s))
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn iq4_xs_k(w: &[[u8; IQ4_XS_BYTES]], a: &[[u8; Q8_K_BYTES]]) -> f32 {
    // Levels biased by +128 (unsigned); the bias comes off with the block sums:
    // 128 sum_j s_j (bsum_2j + bsum_2j+1).
    let table = _mm512_broadcast_i32x4(ld128(&IQ4_LEVELS.map(|v| (v as u8) ^ 0x80)));
    let m4 = _mm512_set1_epi8(0x0F);
    let spread = [
        _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3),
        _mm512_setr_epi32(4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7),
    ];
    let mut acc = _mm512_setzero_ps();
    for (x, y) in w.iter().zip(a) {
        let ls: [i32; 8] = std::array::from_fn(|j| iq4_xs_scale(x, j));
        let ls_v = _mm512_castsi256_si512(_mm256_setr_epi32(
            ls[0], ls[1], ls[2], ls[3], ls[4], ls[5], ls[6], ls[7],
        ));
        let ls16 = _mm_packs_epi32(
            _mm_setr_epi32(ls[0], ls[1], ls[2], ls[3]),
            _mm_setr_epi32(ls[4], ls[5], ls[6], ls[7]),
        );
        let bias = _mm_slli_epi32::<7>(_mm_madd_epi16(ls16, avx2::bsums32(y)));
        let qs = sub::<8, 128, IQ4_XS_BYTES>(x).as_chunks::<64>().0;
        let ys = q8k_levels64(y);
        let mut sumi = [_mm512_setzero_si512(); 2];
        for k in 0..2 {
            // Sub-blocks 4k..4k+4, one per 128-bit lane: low nibbles are elements 0..16.
            let q = ld512(&qs[k]);
            let lo = _mm512_shuffle_epi8(table, _mm512_and_si512(q, m4));
            let hi = _mm512_shuffle_epi8(table, _mm512_and_si512(_mm512_srli_epi16::<4>(q), m4));
            let y0 = ld512(&ys[2 * k]);
            let y1 = ld512(&ys[2 * k + 1]);
            let ylo = _mm512_shuffle_i64x2::<0b10_00_10_00>(y0, y1);
            let yhi = _mm512_shuffle_i64x2::<0b11_01_11_01>(y0, y1);
            let zero = _mm512_setzero_si512();
            let p = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(zero, lo, ylo), hi, yhi);
            let s = _mm512_permutexvar_epi32(spread[k], ls_v);
            sumi[k] = _mm512_add_epi32(sumi[k], _mm512_mullo_epi32(p, s));
        }
        let d = f16(u16_at::<0, IQ4_XS_BYTES>(x)) * f32_at::<0, Q8_K_BYTES>(y);
        let sumi = _mm512_sub_epi32(
            _mm512_add_epi32(sumi[0], sumi[1]),
            _mm512_zextsi128_si512(bias),
        );
        acc = _mm512_fmadd_ps(_mm512_set1_ps(d), _mm512_cvtepi32_ps(sumi), acc);
    }
    _mm512_reduce_add_ps(acc)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q4_k_k(w: &[[u8; Q4_K_BYTES]], a: &[[u8; Q8_K_BYTES]]) -> f32 {
    q4_k_kn::<1>(w, [a])[0]
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q4_k_kn<const N: usize>(w: &[[u8; Q4_K_BYTES]], a: [&[[u8; Q8_K_BYTES]]; N]) -> [f32; N] {
    // Elements 64c..64c+64 from the 32 bytes of chunk c in both halves: the low nibbles
    // masked in place (sub-block 2c), the high nibbles masked in place too, so 16 times
    // their value (sub-block 2c + 1). `dpbusd` sums four products per i32 lane with no
    // overflow; the even sub-blocks' scales are multiplied by 16 to match, and the sum
    // is divided by 16 (exactly) at the end. The weights' part (levels, integer scales)
    // is done once for the N activation rows, each of which sees the same arithmetic as
    // alone.
    let mask = _mm512_inserti64x4::<1>(
        _mm512_castsi256_si512(_mm256_set1_epi8(0x0F)),
        _mm256_set1_epi8(0xF0u8 as i8),
    );
    // [scale 2c × 8, scale 2c + 1 × 8] from the eight i32 scales.
    let pick: [__m512i; 4] = std::array::from_fn(|c| {
        let c = c as i32;
        _mm512_inserti64x4::<1>(
            _mm512_castsi256_si512(_mm256_set1_epi32(2 * c)),
            _mm256_set1_epi32(2 * c + 1),
        )
    });
    let times16 = _mm256_setr_epi32(4, 0, 4, 0, 4, 0, 4, 0);
    let mut acc = [_mm512_setzero_ps(); N];
    let mut acc_m = [_mm256_setzero_ps(); N];
    for (i, x) in w.iter().enumerate() {
        let h = sub::<0, 20, Q4_K_BYTES>(x);
        let r = avx2::k_scales(h);
        let sc32 = _mm256_cvtepu16_epi32(_mm_cvtepu8_epi16(r));
        let sc32 = _mm512_castsi256_si512(_mm256_sllv_epi32(sc32, times16));
        let qs = sub::<16, 128, Q4_K_BYTES>(x).as_chunks::<32>().0;
        let q: [__m512i; 4] = std::array::from_fn(|c| _mm512_and_si512(twice(&qs[c]), mask));
        let s: [__m512i; 4] = std::array::from_fn(|c| _mm512_permutexvar_epi32(pick[c], sc32));
        for t in 0..N {
            let y = &a[t][i];
            let (_, d) = avx2::k_head_with(h, r, y, &mut acc_m[t]);
            let ys = q8k_levels64(y);
            let mut sumi = [_mm512_setzero_si512(); 2];
            for c in 0..4 {
                let p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q[c], ld512(&ys[c]));
                sumi[c & 1] = _mm512_add_epi32(sumi[c & 1], _mm512_mullo_epi32(p, s[c]));
            }
            let sumi = _mm512_add_epi32(sumi[0], sumi[1]);
            acc[t] = _mm512_fmadd_ps(
                _mm512_set1_ps(d * (1.0 / 16.0)),
                _mm512_cvtepi32_ps(sumi),
                acc[t],
            );
        }
    }
    std::array::from_fn(|t| _mm512_reduce_add_ps(acc[t]) - avx2::hsum(acc_m[t]))
}
// ---------------------------------------------------------------------------------------
// Float weights, f32 activations.

/// `sum(load(w) * a)` with `load` turning `WB` weight bytes (16 elements) into 16 floats;
/// four accumulators over 64 elements per step, then 16 at a time, then the AVX2 kernel
/// for the tail.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn float_dot<const WB: usize>(
    w: &[u8],
    a: &[u8],
    load: impl Fn(&[u8; WB]) -> __m512,
    tail: impl Fn(&[u8], &[u8]) -> f32,
) -> f32 {
    let (w16, _) = w.as_chunks::<WB>();
    let (a16, _) = a.as_chunks::<64>();
    let (w64, w16t) = w16.as_chunks::<4>();
    let (a64, a16t) = a16.as_chunks::<4>();
    let af = |a: &[u8; 64]| _mm512_castsi512_ps(ld512(a));
    let mut acc = [_mm512_setzero_ps(); 4];
    for (x, y) in w64.iter().zip(a64) {
        for k in 0..4 {
            acc[k] = _mm512_fmadd_ps(load(&x[k]), af(&y[k]), acc[k]);
        }
    }
    for (x, y) in w16t.iter().zip(a16t) {
        acc[0] = _mm512_fmadd_ps(load(x), af(y), acc[0]);
    }
    let v = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
    let done = w16.len() * 16;
    _mm512_reduce_add_ps(v) + tail(&w[done * WB / 16..], &a[done * 4..])
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn f32_k(w: &[u8], a: &[u8]) -> f32 {
    float_dot::<64>(
        w,
        a,
        |x| _mm512_castsi512_ps(ld512(x)),
        |w, a| avx2::f32_k(w, a),
    )
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn f16_k(w: &[u8], a: &[u8]) -> f32 {
    float_dot::<32>(
        w,
        a,
        |x| _mm512_cvtph_ps(ld256(x)),
        |w, a| avx2::f16_k(w, a),
    )
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn bf16_k(w: &[u8], a: &[u8]) -> f32 {
    float_dot::<32>(
        w,
        a,
        |x| _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(ld256(x)))),
        |w, a| avx2::bf16_k(w, a),
    )
}
