//! The AVX-512 VNNI kernel of [`super::kernel`]: one group of 16 rows against up to eight
//! tokens. Per block of 32 columns the group's levels are unpacked once into eight vectors
//! of 16 rows × 4 columns, then each token's block is eight broadcast 4-byte words through
//! `dpbusd`, in two chains (columns 0..16 and 16..32) added at the end: integers, exact.

use std::arch::x86_64::*;

use gguf::GgmlType;

use super::{act_bytes, block_at, field, layout, MAX_TOKENS, ROWS};

/// Safe entry: checks the CPU (the caller checked the sizes).
pub(super) fn kernel(
    ty: GgmlType,
    cols: usize,
    group: &[u8],
    acts: &[&[u8]],
    out: &mut [[f32; ROWS]],
) {
    assert!(
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vnni")
            && std::arch::is_x86_feature_detected!("f16c")
    );
    macro_rules! go {
        ($kind:expr) => {{
            // SAFETY: the features the kernels need were checked above; all reads go
            // through slices whose sizes `super::check` verified (a group of `cols`
            // columns, activations of `act_bytes(cols)` bytes).
            unsafe {
                match acts.len() {
                    1 => run::<1, { $kind }>(cols, group, acts, out),
                    2 => run::<2, { $kind }>(cols, group, acts, out),
                    3 => run::<3, { $kind }>(cols, group, acts, out),
                    4 => run::<4, { $kind }>(cols, group, acts, out),
                    5 => run::<5, { $kind }>(cols, group, acts, out),
                    6 => run::<6, { $kind }>(cols, group, acts, out),
                    7 => run::<7, { $kind }>(cols, group, acts, out),
                    _ => run::<8, { $kind }>(cols, group, acts, out),
                }
            }
        }};
    }
    const { assert!(MAX_TOKENS == 8) };
    match ty {
        GgmlType::Q4_0 => go!(Q4_0),
        GgmlType::Q4_1 => go!(Q4_1),
        GgmlType::Q5_0 => go!(Q5_0),
        GgmlType::Q5_1 => go!(Q5_1),
        GgmlType::Q4_K => go!(Q4_K),
        GgmlType::Q6_K => go!(Q6_K),
        _ => go!(Q8_0),
    }
}

const Q4_0: u8 = 0;
const Q4_1: u8 = 1;
const Q5_0: u8 = 2;
const Q5_1: u8 = 3;
const Q8_0: u8 = 4;
const Q4_K: u8 = 5;
const Q6_K: u8 = 6;

const fn ty_of(kind: u8) -> GgmlType {
    match kind {
        Q4_0 => GgmlType::Q4_0,
        Q4_1 => GgmlType::Q4_1,
        Q5_0 => GgmlType::Q5_0,
        Q5_1 => GgmlType::Q5_1,
        Q4_K => GgmlType::Q4_K,
        Q6_K => GgmlType::Q6_K,
        _ => GgmlType::Q8_0,
    }
}

/// Q6_K's top two bits of element `e` of a plane, moved to bits 4..6 of each byte.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn top2(plane: __m512i, e: usize) -> __m512i {
    let m = _mm512_set1_epi8(0x30);
    let v = match e % 4 {
        0 => _mm512_slli_epi16::<4>(plane),
        1 => _mm512_slli_epi16::<2>(plane),
        2 => plane,
        _ => _mm512_srli_epi16::<2>(plane),
    };
    _mm512_and_si512(v, m)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
fn run<const T: usize, const KIND: u8>(
    cols: usize,
    group: &[u8],
    acts: &[&[u8]],
    out: &mut [[f32; ROWS]],
) {
    let ty = ty_of(KIND);
    let min = KIND == Q4_1 || KIND == Q5_1;
    let fifth = KIND == Q5_0 || KIND == Q5_1;
    // Offsets taken out of the integer sums as a shifted activation sum.
    let shift: i32 = match KIND {
        Q4_0 => 3,
        Q5_0 => 4,
        Q8_0 => 7,
        Q6_K => 5,
        _ => -1,
    };
    let (mo, ko, lo) = layout(ty);
    let nb = cols / 32;
    let acts: [&[u8]; T] = std::array::from_fn(|t| &acts[t][..act_bytes(cols)]);
    let i32_at = |a: &[u8], f: usize, b: usize| i32::from_le_bytes(field(a, cols, f, b));
    let f32_at = |a: &[u8], f: usize, b: usize| f32::from_le_bytes(field(a, cols, f, b));
    let m4 = _mm512_set1_epi8(0x0F);
    let b4 = _mm512_set1_epi8(0x10);
    let mut acc = [_mm512_setzero_ps(); T];
    for b in 0..nb {
        let (at, h) = block_at(ty, b);
        let ld = |o: usize| -> __m512i {
            let p: &[u8; 64] = group[o..o + 64].try_into().unwrap();
            // SAFETY: 64 readable bytes; no alignment required.
            unsafe { _mm512_loadu_si512(p.as_ptr().cast()) }
        };
        let halfs = |o: usize| -> __m512 {
            let p: &[u8; 32] = group[o..o + 32].try_into().unwrap();
            // SAFETY: 32 readable bytes; no alignment required.
            _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(p.as_ptr().cast()) })
        };
        let bytes16 = |o: usize| -> __m128i {
            let p: &[u8; 16] = group[o..o + 16].try_into().unwrap();
            // SAFETY: 16 readable bytes; no alignment required.
            unsafe { _mm_loadu_si128(p.as_ptr().cast()) }
        };
        // Per-row scales of this block: (d_w, the minimum term's factor, Q6_K's two
        // integer half scales).
        let zero_i = _mm512_setzero_si512();
        let (dw, dm, sc_lo, sc_hi) = match KIND {
            Q4_K => {
                let sc = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(bytes16(at)));
                let m = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(bytes16(at + 16)));
                (
                    _mm512_mul_ps(halfs(h), sc),
                    _mm512_mul_ps(halfs(h + 32), m),
                    zero_i,
                    zero_i,
                )
            }
            Q6_K => (
                halfs(h),
                _mm512_setzero_ps(),
                _mm512_cvtepi8_epi32(bytes16(at)),
                _mm512_cvtepi8_epi32(bytes16(at + 16)),
            ),
            _ => (
                halfs(at),
                if min {
                    halfs(at + mo)
                } else {
                    _mm512_setzero_ps()
                },
                zero_i,
                zero_i,
            ),
        };
        let mut v = [zero_i; 8];
        if KIND == Q8_0 {
            for (j, v) in v.iter_mut().enumerate() {
                *v = ld(at + lo + 64 * j);
            }
        } else {
            for j in 0..4 {
                let q = ld(at + lo + 64 * j);
                let (mut l, mut hi) = (
                    _mm512_and_si512(q, m4),
                    _mm512_and_si512(_mm512_srli_epi16::<4>(q), m4),
                );
                if fifth {
                    let k = |o: usize| u64::from_le_bytes(group[o..o + 8].try_into().unwrap());
                    l = _mm512_mask_add_epi8(l, k(at + ko + 16 * j), l, b4);
                    hi = _mm512_mask_add_epi8(hi, k(at + ko + 16 * j + 8), hi, b4);
                }
                if KIND == Q6_K {
                    let plane = ld(at + lo + 256 + 64 * (j / 2));
                    l = _mm512_or_si512(l, top2(plane, 2 * j));
                    hi = _mm512_or_si512(hi, top2(plane, 2 * j + 1));
                }
                v[2 * j] = l;
                v[2 * j + 1] = hi;
            }
        }
        // One token's block, unrolled below with constant indices so that the
        // accumulators stay in registers.
        macro_rules! token {
            ($t:literal) => {{
                let a = acts[$t];
                let y: &[u8; 32] = a[32 * b..32 * b + 32].try_into().unwrap();
                let w = |i: usize| {
                    _mm512_set1_epi32(i32::from_le_bytes(y[4 * i..4 * i + 4].try_into().unwrap()))
                };
                let (start_lo, start_hi) = if KIND == Q6_K {
                    let (s, s16) = (i32_at(a, 1, b), i32_at(a, 3, b));
                    (
                        _mm512_set1_epi32(-(s16 << shift)),
                        _mm512_set1_epi32(-((s - s16) << shift)),
                    )
                } else if shift >= 0 {
                    (_mm512_set1_epi32(-(i32_at(a, 1, b) << shift)), zero_i)
                } else {
                    (zero_i, zero_i)
                };
                let mut s0 = _mm512_dpbusd_epi32(start_lo, v[0], w(0));
                let mut s1 = _mm512_dpbusd_epi32(start_hi, v[4], w(4));
                s0 = _mm512_dpbusd_epi32(s0, v[1], w(1));
                s1 = _mm512_dpbusd_epi32(s1, v[5], w(5));
                s0 = _mm512_dpbusd_epi32(s0, v[2], w(2));
                s1 = _mm512_dpbusd_epi32(s1, v[6], w(6));
                s0 = _mm512_dpbusd_epi32(s0, v[3], w(3));
                s1 = _mm512_dpbusd_epi32(s1, v[7], w(7));
                let isum = if KIND == Q6_K {
                    _mm512_add_epi32(_mm512_mullo_epi32(s0, sc_lo), _mm512_mullo_epi32(s1, sc_hi))
                } else {
                    _mm512_add_epi32(s0, s1)
                };
                let f = _mm512_cvtepi32_ps(isum);
                let da = f32_at(a, 0, b);
                acc[$t] = _mm512_fmadd_ps(f, _mm512_mul_ps(dw, _mm512_set1_ps(da)), acc[$t]);
                if min {
                    acc[$t] = _mm512_fmadd_ps(dm, _mm512_set1_ps(f32_at(a, 2, b)), acc[$t]);
                } else if KIND == Q4_K {
                    acc[$t] = _mm512_fnmadd_ps(dm, _mm512_set1_ps(f32_at(a, 2, b)), acc[$t]);
                }
            }};
        }
        macro_rules! unrolled {
            ($($t:literal)*) => {$(
                if $t < T {
                    token!($t);
                }
            )*};
        }
        unrolled!(0 1 2 3 4 5 6 7);
    }
    for t in 0..T {
        // SAFETY: `out[t]` is 16 writable f32; no alignment required.
        unsafe { _mm512_storeu_ps(out[t].as_mut_ptr(), acc[t]) };
    }
}
