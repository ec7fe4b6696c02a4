//! Activation rows quantized for the dot products: F32 (copied), Q8_0, Q8_1 and Q8_K.
//! The SIMD quantizers give the bytes of [`crate::quantize`] exactly: the same f32
//! operations (scale, its inverse, products) and the same rounding (half away from zero,
//! NaN to 0, saturation at ±127).

use gguf::GgmlType;

use super::Isa;

/// Quantizes `x` into `out` as `at` with the best implementation up to `isa` that this
/// CPU runs. Lengths have been checked by the caller.
pub(super) fn quantize(at: GgmlType, isa: Isa, x: &[f32], out: &mut [u8]) {
    if at == GgmlType::F32 {
        for (o, v) in out.chunks_exact_mut(4).zip(x) {
            o.copy_from_slice(&v.to_le_bytes());
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if isa.min(Isa::detected()) >= Isa::Avx2 {
        // SAFETY: the AVX2 tier is at most the detected one: this CPU has AVX2, FMA and
        // F16C.
        if unsafe { x86::quantize(at, x, out) } {
            return;
        }
    }
    let _ = isa;
    crate::quantize(at, x, out).expect("activation row lengths are checked by the caller");
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use gguf::GgmlType;

    use crate::dot::x86::{f16, to_f16};
    use crate::formats::{Q8_0_BYTES, Q8_1_BYTES, Q8_K_BYTES};

    /// Quantizes `x` into `out` as `at` with AVX2 when that type has an AVX2 quantizer
    /// here; false (nothing written) when not. The lengths have been checked.
    ///
    /// # Safety
    ///
    /// The CPU must have AVX2, FMA and F16C.
    pub(super) unsafe fn quantize(at: GgmlType, x: &[f32], out: &mut [u8]) -> bool {
        let (x32, _) = x.as_chunks::<32>();
        let (x256, _) = x.as_chunks::<256>();
        match at {
            GgmlType::Q8_0 => {
                // SAFETY: the CPU has AVX2, FMA and F16C (this function's contract);
                // `q8_0` touches memory only through the slices.
                unsafe { q8_0(x32, out.as_chunks_mut::<Q8_0_BYTES>().0) }
            }
            GgmlType::Q8_1 => {
                // SAFETY: as for Q8_0.
                unsafe { q8_1(x32, out.as_chunks_mut::<Q8_1_BYTES>().0) }
            }
            GgmlType::Q8_K => {
                // SAFETY: as for Q8_0.
                unsafe { q8_k(x256, out.as_chunks_mut::<Q8_K_BYTES>().0) }
            }
            _ => return false,
        }
        true
    }

    /// Eight floats.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn ld(p: &[f32; 8]) -> __m256 {
        // SAFETY: `p` is 32 readable bytes; the load has no alignment requirement.
        unsafe { _mm256_loadu_ps(p.as_ptr()) }
    }

    /// Stores 32 bytes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn st(p: &mut [u8; 32], v: __m256i) {
        // SAFETY: `p` is 32 writable bytes; the store has no alignment requirement.
        unsafe { _mm256_storeu_si256(p.as_mut_ptr().cast(), v) }
    }

    /// The largest magnitude among `v`, NaNs skipped (as `signed_absmax` does).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn absmax(v: &[__m256]) -> f32 {
        let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
        let mut m = _mm256_setzero_ps();
        for &v in v {
            // `max_ps` returns its second operand when either is NaN: NaNs never win.
            m = _mm256_max_ps(_mm256_and_ps(v, abs), m);
        }
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)))
    }

    /// `v * id` rounded half away from zero, NaN to 0, clamped to ±127, as i32 lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn levels(v: __m256, id: __m256) -> __m256i {
        let t = _mm256_mul_ps(v, id);
        let sign = _mm256_castsi256_ps(_mm256_set1_epi32(i32::MIN));
        let tr = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(t);
        // t - trunc(t) is exact; at least one half away from trunc(t) rounds outwards.
        let frac = _mm256_andnot_ps(sign, _mm256_sub_ps(t, tr));
        let up = _mm256_cmp_ps::<_CMP_GE_OQ>(frac, _mm256_set1_ps(0.5));
        let one = _mm256_or_ps(_mm256_and_ps(t, sign), _mm256_set1_ps(1.0));
        let r = _mm256_add_ps(tr, _mm256_and_ps(up, one));
        let r = _mm256_and_ps(r, _mm256_cmp_ps::<_CMP_ORD_Q>(t, t));
        let r = _mm256_min_ps(
            _mm256_max_ps(r, _mm256_set1_ps(-127.0)),
            _mm256_set1_ps(127.0),
        );
        _mm256_cvttps_epi32(r)
    }

    /// Four vectors of i32 levels (in -127..=127) as 32 bytes in order.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn pack(q: [__m256i; 4]) -> __m256i {
        let p01 = _mm256_packs_epi32(q[0], q[1]);
        let p23 = _mm256_packs_epi32(q[2], q[3]);
        let b = _mm256_packs_epi16(p01, p23);
        // The in-lane packs leave 4-byte groups in the order 0 2 4 6 1 3 5 7... per
        // source vector; put them back.
        _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
    }

    /// One block of 32 as Q8_0/Q8_1: the f16 scale bits, the packed levels and their sum;
    /// levels rounded as `quantize_symmetric8` says (`ggml_levels` for Q8_0).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn block32(x: &[f32; 32], ggml_levels: bool) -> (u16, f32, __m256i, i32) {
        let (c, _) = x.as_chunks::<8>();
        let v: [__m256; 4] = std::array::from_fn(|k| ld(&c[k]));
        let amax = absmax(&v);
        let d = to_f16(amax / 127.0);
        let df = f16(d);
        let id = _mm256_set1_ps(match (ggml_levels, amax == 0.0, df == 0.0) {
            (true, false, _) => 127.0 / amax,
            (false, _, false) => 1.0 / df,
            _ => 0.0,
        });
        let q = v.map(|v| levels(v, id));
        let s = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
        let s = _mm_hadd_epi32(s, s);
        let s = _mm_cvtsi128_si32(_mm_hadd_epi32(s, s));
        (d, df, pack(q), s)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn q8_0(x: &[[f32; 32]], out: &mut [[u8; Q8_0_BYTES]]) {
        for (x, o) in x.iter().zip(out) {
            let (d, _, q, _) = block32(x, true);
            let (head, tail) = o.split_first_chunk_mut::<2>().unwrap();
            *head = d.to_le_bytes();
            st(tail.try_into().unwrap(), q);
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn q8_1(x: &[[f32; 32]], out: &mut [[u8; Q8_1_BYTES]]) {
        for (x, o) in x.iter().zip(out) {
            let (d, df, q, sum) = block32(x, false);
            let (head, tail) = o.split_first_chunk_mut::<4>().unwrap();
            let s = to_f16(df * sum as f32);
            *head = (u32::from(d) | u32::from(s) << 16).to_le_bytes();
            st(tail.try_into().unwrap(), q);
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn q8_k(x: &[[f32; 256]], out: &mut [[u8; Q8_K_BYTES]]) {
        for (x, o) in x.iter().zip(out) {
            let (c, _) = x.as_chunks::<8>();
            let v: [__m256; 32] = std::array::from_fn(|k| ld(&c[k]));
            let amax = absmax(&v);
            if amax == 0.0 {
                o.fill(0);
                continue;
            }
            let id = _mm256_set1_ps(127.0 / amax);
            let (d, rest) = o.split_first_chunk_mut::<4>().unwrap();
            *d = (amax / 127.0).to_le_bytes();
            let (qs, bsums) = rest.split_first_chunk_mut::<256>().unwrap();
            let (qs, _) = qs.as_chunks_mut::<32>();
            let ones = _mm256_set1_epi8(1);
            let ones16 = _mm256_set1_epi16(1);
            // Four i32 partial sums of each group of 16 levels, two groups per vector.
            let mut part = [_mm256_setzero_si256(); 8];
            for (k, (qs, p)) in qs.iter_mut().zip(&mut part).enumerate() {
                let b = pack(std::array::from_fn(|i| levels(v[4 * k + i], id)));
                st(qs, b);
                *p = _mm256_madd_epi16(_mm256_maddubs_epi16(ones, b), ones16);
            }
            // Vector k holds groups 2k (low lane) and 2k + 1 (high lane); two rounds of
            // hadd give [g0 g2 g4 g6 | g1 g3 g5 g7] and the same for g8..g15.
            let fold = |a: &[__m256i]| {
                _mm256_hadd_epi32(_mm256_hadd_epi32(a[0], a[1]), _mm256_hadd_epi32(a[2], a[3]))
            };
            let s = _mm256_packs_epi32(fold(&part[..4]), fold(&part[4..]));
            let (even, odd) = (_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
            let s = _mm256_set_m128i(_mm_unpackhi_epi16(even, odd), _mm_unpacklo_epi16(even, odd));
            st(bsums.try_into().unwrap(), s);
        }
    }
}
