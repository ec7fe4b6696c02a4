//! AVX-512 VNNI versions of the int8 GEMM's micro-kernel and packing; the scalar
//! references are in the parent module.

use std::arch::x86_64::*;

use super::{A_CHUNK, CHUNK, W_CHUNK};

/// See [`super::kernel`]; `SHIFT` is the weights' [`super::offset_shift`].
///
/// # Safety
///
/// The CPU must have AVX-512 F, BW, VL and VNNI; `w` must hold `chunks * W_CHUNK` bytes
/// and `a` `chunks * A_CHUNK` bytes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn kernel<const SHIFT: u32, const NT: usize>(
    chunks: usize,
    w: &[u8],
    a: &[u8],
    bias: Option<(&[f32], &[f32])>,
    out: &mut [[f32; 4]; 4],
) {
    let mut acc = [[_mm512_setzero_ps(); 4]; 4];
    let (wp, ap) = (w.as_ptr(), a.as_ptr());
    for c in 0..chunks {
        // SAFETY: chunk c lies within both panels (the caller's contract); the loads have
        // no alignment requirement.
        unsafe {
            let wc = wp.add(c * W_CHUNK);
            let ac = ap.add(c * A_CHUNK);
            let wq: [__m512i; 4] =
                std::array::from_fn(|r| _mm512_loadu_si512(wc.add(64 * r).cast()));
            let ws: [__m512; 4] =
                std::array::from_fn(|r| _mm512_loadu_ps(wc.add(256 + 64 * r).cast()));
            #[allow(clippy::needless_range_loop)]
            for t in 0..NT {
                let aq = _mm512_loadu_si512(ac.add(64 * t).cast());
                let asc = _mm512_loadu_ps(ac.add(256 + 64 * t).cast());
                // Each lane starts at -2^SHIFT × (sum of its activation levels).
                let start = if SHIFT == 0 {
                    _mm512_setzero_si512()
                } else {
                    let sums = _mm512_loadu_si512(ac.add(512 + 64 * t).cast());
                    _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32::<SHIFT>(sums))
                };
                for r in 0..4 {
                    let s = _mm512_dpbusd_epi32(start, wq[r], aq);
                    let sc = _mm512_mul_ps(ws[r], asc);
                    acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), sc, acc[r][t]);
                }
            }
        }
    }
    // The minimums: Σ_b bias[r][b] × sums[t][b], 16 blocks at a time into the same lanes.
    if let Some((b, s)) = bias {
        let nb = 2 * chunks;
        for b0 in (0..nb).step_by(16) {
            let m: __mmask16 = if nb - b0 >= 16 {
                0xFFFF
            } else {
                (1u16 << (nb - b0)) - 1
            };
            // SAFETY: blocks b0.. (masked to nb) of each of the 4 rows of `b` and `s` are in
            // bounds (the parent asserted 4 × nb values each).
            unsafe {
                let bv: [__m512; 4] =
                    std::array::from_fn(|r| _mm512_maskz_loadu_ps(m, b.as_ptr().add(r * nb + b0)));
                #[allow(clippy::needless_range_loop)]
                for t in 0..NT {
                    let sv = _mm512_maskz_loadu_ps(m, s.as_ptr().add(t * nb + b0));
                    for r in 0..4 {
                        acc[r][t] = _mm512_fmadd_ps(bv[r], sv, acc[r][t]);
                    }
                }
            }
        }
    }
    for (o, acc) in out.iter_mut().zip(&acc) {
        for (o, &acc) in o.iter_mut().zip(acc).take(NT) {
            *o = _mm512_reduce_add_ps(acc);
        }
    }
}

/// The levels of a row of Q5_0, Q8_0, Q4_K or Q6_K, as [`super::unpack_row`] gives them.
///
/// # Safety
///
/// The CPU must have AVX-512 F, BW, VL and VNNI; `row` must be whole blocks of `ty` encoding
/// exactly `q.len()` weights.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn unpack_levels(ty: gguf::GgmlType, row: &[u8], q: &mut [u8]) {
    use crate::formats::{Q4_K_BYTES, Q5_0_BYTES, Q6_K_BYTES, Q8_0_BYTES};
    use gguf::GgmlType;
    let (rp, qp) = (row.as_ptr(), q.as_mut_ptr());
    let nib = _mm256_set1_epi8(0x0F);
    // In every arm, block i of `row` and its levels in `q` are in bounds (the caller's
    // contract: the row is exactly q.len() weights of these blocks); loads and stores are
    // unaligned, so any byte offset will do.
    match ty {
        GgmlType::Q5_0 => {
            for i in 0..q.len() / 32 {
                // SAFETY: i < q.len() / 32 blocks: bytes 2..22 of the 22-byte block i (qh,
                // then the 16 level bytes at 6) and levels 32i..32i + 32 of `q`.
                unsafe {
                    let b = rp.add(Q5_0_BYTES * i);
                    let qh = u32::from_le_bytes([*b.add(2), *b.add(3), *b.add(4), *b.add(5)]);
                    let x = _mm_loadu_si128(b.add(6).cast());
                    let lo = _mm_and_si128(x, _mm256_castsi256_si128(nib));
                    let hi = _mm_and_si128(_mm_srli_epi16::<4>(x), _mm256_castsi256_si128(nib));
                    let v = _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(lo), hi);
                    let v = _mm256_mask_add_epi8(v, qh, v, _mm256_set1_epi8(16));
                    _mm256_storeu_si256(qp.add(32 * i).cast(), v);
                }
            }
        }
        GgmlType::Q8_0 => {
            for i in 0..q.len() / 32 {
                // SAFETY: i < q.len() / 32 blocks: the 32 levels at bytes 2..34 of the
                // 34-byte block i, and levels 32i..32i + 32 of `q`.
                unsafe {
                    let x = _mm256_loadu_si256(rp.add(Q8_0_BYTES * i + 2).cast());
                    let v = _mm256_xor_si256(x, _mm256_set1_epi8(-128));
                    _mm256_storeu_si256(qp.add(32 * i).cast(), v);
                }
            }
        }
        GgmlType::Q4_K => {
            for i in 0..q.len() / 256 {
                for c in 0..4 {
                    // SAFETY: i < q.len() / 256 blocks, c < 4: level bytes 16 + 32c..48 + 32c
                    // ≤ 144 of the 144-byte block i, and levels 256i + 64c..256i + 64c + 64
                    // of `q`.
                    unsafe {
                        let x = _mm256_loadu_si256(rp.add(Q4_K_BYTES * i + 16 + 32 * c).cast());
                        let lo = _mm256_and_si256(x, nib);
                        let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(x), nib);
                        _mm256_storeu_si256(qp.add(256 * i + 64 * c).cast(), lo);
                        _mm256_storeu_si256(qp.add(256 * i + 64 * c + 32).cast(), hi);
                    }
                }
            }
        }
        GgmlType::Q6_K => {
            let two = _mm256_set1_epi8(3);
            for i in 0..q.len() / 256 {
                for h in 0..2 {
                    // SAFETY: i < q.len() / 256 blocks, h < 2: `ql` bytes 64h..64h + 64 ≤ 128
                    // and `qh` bytes 128 + 32h..160 + 32h ≤ 192 of the 210-byte block i, and
                    // levels 256i + 128h..256i + 128h + 128 of `q`.
                    unsafe {
                        let b = rp.add(Q6_K_BYTES * i);
                        let ql0 = _mm256_loadu_si256(b.add(64 * h).cast());
                        let ql1 = _mm256_loadu_si256(b.add(64 * h + 32).cast());
                        let qh = _mm256_loadu_si256(b.add(128 + 32 * h).cast());
                        let high = |s: i32| {
                            let v = match s {
                                0 => qh,
                                2 => _mm256_srli_epi16::<2>(qh),
                                4 => _mm256_srli_epi16::<4>(qh),
                                _ => _mm256_srli_epi16::<6>(qh),
                            };
                            _mm256_slli_epi16::<4>(_mm256_and_si256(v, two))
                        };
                        let runs = [
                            _mm256_or_si256(_mm256_and_si256(ql0, nib), high(0)),
                            _mm256_or_si256(_mm256_and_si256(ql1, nib), high(2)),
                            _mm256_or_si256(
                                _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), nib),
                                high(4),
                            ),
                            _mm256_or_si256(
                                _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), nib),
                                high(6),
                            ),
                        ];
                        for (run, v) in runs.into_iter().enumerate() {
                            _mm256_storeu_si256(qp.add(256 * i + 128 * h + 32 * run).cast(), v);
                        }
                    }
                }
            }
        }
        _ => {}
    }
}

/// See [`super::interleave`].
///
/// # Safety
///
/// The CPU must have AVX-512 F, BW, VL and VNNI; `panel` must hold `q.len() / CHUNK`
/// chunks, `s16` a scale per 16 levels of `q`, and `r < 4`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn interleave(q: &[u8], s16: &[f32], r: usize, panel: &mut [u8]) {
    let lane_group = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    for c in 0..q.len() / CHUNK {
        // SAFETY: chunk c of `q` (64 levels), its 4 scales and its part of the panel are
        // in bounds (the caller's contract); no alignment is required.
        unsafe {
            let qv = _mm512_loadu_si512(q.as_ptr().add(c * CHUNK).cast());
            let sv = _mm512_castps128_ps512(_mm_loadu_ps(s16.as_ptr().add(4 * c)));
            let base = panel.as_mut_ptr().add(c * W_CHUNK + r * 64);
            _mm512_storeu_si512(base.cast(), qv);
            _mm512_storeu_ps(base.add(256).cast(), _mm512_permutexvar_ps(lane_group, sv));
        }
    }
}

/// See [`super::pack_acts`].
///
/// # Safety
///
/// The CPU must have AVX-512 F, BW, VL and VNNI; at most 4 rows of at least `cols` values,
/// `cols` a multiple of [`CHUNK`], `panel` and `sums` as large as the parent checks.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn pack_acts(rows: &[&[f32]], cols: usize, panel: &mut [u8], sums: &mut [f32]) {
    let nb = cols / 32;
    let pp = panel.as_mut_ptr();
    for t in 0..4 {
        let Some(row) = rows.get(t) else {
            break;
        };
        let row = &row[..cols];
        let lim = _mm512_set1_epi32(127);
        let neg_lim = _mm512_set1_epi32(-127);
        let ones = _mm_set1_epi8(1);
        for b in 0..nb {
            // SAFETY: block b of the row is 32 readable floats (`row` has `cols`); its
            // bytes, scales, lane sums and block sum lie within `panel` and `sums` (sizes
            // checked by the caller). Loads and stores have no alignment requirement.
            unsafe {
                let x0 = _mm512_loadu_ps(row.as_ptr().add(32 * b));
                let x1 = _mm512_loadu_ps(row.as_ptr().add(32 * b + 16));
                let amax =
                    _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(x0), _mm512_abs_ps(x1)));
                let d = amax / 127.0;
                let id = _mm512_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
                const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
                let level = |x: __m512| {
                    let q =
                        _mm512_cvtps_epi32(_mm512_roundscale_ps::<NEAREST>(_mm512_mul_ps(x, id)));
                    _mm512_max_epi32(_mm512_min_epi32(q, lim), neg_lim)
                };
                let (q0, q1) = (level(x0), level(x1));
                let sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
                let (b0, b1) = (_mm512_cvtepi32_epi8(q0), _mm512_cvtepi32_epi8(q1));
                let base = pp.add((b / 2) * A_CHUNK + t * 64 + (b % 2) * 32);
                _mm_storeu_si128(base.cast(), b0);
                _mm_storeu_si128(base.add(16).cast(), b1);
                _mm256_storeu_ps(base.add(256).cast(), _mm256_set1_ps(d));
                // Lane sums: 1 × each level, four at a time.
                let s0 = _mm_dpbusd_epi32(_mm_setzero_si128(), ones, b0);
                let s1 = _mm_dpbusd_epi32(_mm_setzero_si128(), ones, b1);
                _mm_storeu_si128(base.add(512).cast(), s0);
                _mm_storeu_si128(base.add(528).cast(), s1);
                *sums.get_unchecked_mut(t * nb + b) = d * sum as f32;
            }
        }
    }
}
