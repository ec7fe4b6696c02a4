//! The scalar reference kernels: integer products summed exactly per block (per
//! super-block for the K-quants), then scaled and accumulated in f32, block by block.

use bytemuck::Pod;
use gguf::GgmlType;

use super::{row_blocks, DotFn};
use crate::bf16_to_f32;
use crate::formats::iq4_nl::IQ4_LEVELS;
use crate::formats::q3_k::unpack_scales as q3_scales;
use crate::formats::q4_k::unpack_scale_min;
use crate::formats::{
    BlockIQ4_NL, BlockIQ4_XS, BlockQ2_K, BlockQ3_K, BlockQ4_0, BlockQ4_1, BlockQ4_K, BlockQ5_0,
    BlockQ5_1, BlockQ5_K, BlockQ6_K, BlockQ8_0, BlockQ8_1, BlockQ8_K, QK_K,
};

/// The reference kernel for weights of type `w`.
pub(super) fn kernel(w: GgmlType) -> Option<DotFn> {
    kernel_table!(w)
}

/// The row's blocks in pairs (weight, activation), after checking the lengths. The bytes
/// need no alignment: each block is copied out.
#[track_caller]
fn pairs<'a, W: Pod, A: Pod>(
    n: usize,
    block: usize,
    w: &'a [u8],
    a: &'a [u8],
) -> impl Iterator<Item = (W, A)> + 'a {
    let (wb, ab) = (size_of::<W>(), size_of::<A>());
    row_blocks(n, w, a, block, wb, ab);
    w.chunks_exact(wb)
        .map(bytemuck::pod_read_unaligned::<W>)
        .zip(a.chunks_exact(ab).map(bytemuck::pod_read_unaligned::<A>))
}

/// Lanes of the float dot products: independent partial sums, so the loop vectorizes.
const LANES: usize = 16;

/// `sum(w[i] * a[i])` over float rows, with `w` decoded by `dec` from `B`-byte elements.
#[inline(always)]
fn float_dot<const B: usize>(n: usize, w: &[u8], a: &[u8], dec: impl Fn([u8; B]) -> f32) -> f32 {
    row_blocks(n, w, a, 1, B, 4);
    let (wc, _) = w.as_chunks::<B>();
    let (ac, _) = a.as_chunks::<4>();
    let mut acc = [0.0f32; LANES];
    let (wl, wt) = wc.as_chunks::<LANES>();
    let (al, at) = ac.as_chunks::<LANES>();
    for (wl, al) in wl.iter().zip(al) {
        for ((s, &w), &a) in acc.iter_mut().zip(wl).zip(al) {
            *s += dec(w) * f32::from_le_bytes(a);
        }
    }
    for ((s, &w), &a) in acc.iter_mut().zip(wt).zip(at) {
        *s += dec(w) * f32::from_le_bytes(a);
    }
    acc.iter().sum()
}

fn f32_f32(n: usize, w: &[u8], a: &[u8]) -> f32 {
    float_dot(n, w, a, f32::from_le_bytes)
}

fn f16_f32(n: usize, w: &[u8], a: &[u8]) -> f32 {
    float_dot(n, w, a, |b| f16_to_f32(u16::from_le_bytes(b)))
}

/// An f16 bit pattern as f32, exactly as `half` (and F16C) convert it, in branch-free
/// integer and f32 operations that vectorize: the exponent and mantissa bits moved into
/// f32 position and scaled by 2^112 (exact, subnormals included); exponent 31 becomes
/// infinity or a quiet NaN with the same payload.
#[inline(always)]
fn f16_to_f32(h: u16) -> f32 {
    let h = u32::from(h);
    let em = h & 0x7FFF;
    let scaled = f32::from_bits(em << 13) * f32::from_bits(0x7780_0000);
    let special =
        f32::from_bits((em << 13) | 0x7F80_0000 | if em > 0x7C00 { 0x0040_0000 } else { 0 });
    let v = if em >= 0x7C00 { special } else { scaled };
    f32::from_bits(v.to_bits() | (h & 0x8000) << 16)
}

fn bf16_f32(n: usize, w: &[u8], a: &[u8]) -> f32 {
    float_dot(n, w, a, |b| bf16_to_f32(u16::from_le_bytes(b)))
}

// The integer loops below have fixed trip counts and no data-dependent branches, so the
// compiler vectorizes them for the target's baseline (SSE2, NEON): this is also the
// fallback path on CPUs without a SIMD tier here.

/// Sums over one 32-element block of split nibbles (Q4_0, Q4_1, IQ4_NL, Q5_0, Q5_1):
/// element `j < 16` is the low nibble of byte `j`, element `j + 16` its high nibble, plus
/// bit `j` of `high` as the fifth bit. Returns `sum(level(q) * y)` with `level` mapping
/// the 4- or 5-bit value to the weight's integer level.
#[inline(always)]
fn split_dot(qs: &[u8; 16], high: u32, y: &[i8; 32], level: impl Fn(u8) -> i32) -> i32 {
    let mut s = 0;
    for j in 0..16 {
        let lo = (qs[j] & 0x0F) | ((((high >> j) & 1) as u8) << 4);
        let hi = (qs[j] >> 4) | ((((high >> (j + 16)) & 1) as u8) << 4);
        s += level(lo) * i32::from(y[j]) + level(hi) * i32::from(y[j + 16]);
    }
    s
}

/// The sum of the 32 levels of a Q8 block.
#[inline(always)]
fn sum32(y: &[i8; 32]) -> i32 {
    y.iter().map(|&y| i32::from(y)).sum()
}

fn q4_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in pairs::<BlockQ4_0, BlockQ8_0>(n, 32, w, a) {
        let s = split_dot(&x.qs, 0, &y.qs, |q| i32::from(q) - 8);
        sum += s as f32 * (x.d.to_f32() * y.d.to_f32());
    }
    sum
}

fn q4_1(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in pairs::<BlockQ4_1, BlockQ8_1>(n, 32, w, a) {
        let s = split_dot(&x.qs, 0, &y.qs, i32::from);
        let dy = y.d.to_f32();
        sum += s as f32 * (x.d.to_f32() * dy) + sum32(&y.qs) as f32 * (x.m.to_f32() * dy);
    }
    sum
}

fn q5_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in pairs::<BlockQ5_0, BlockQ8_0>(n, 32, w, a) {
        let s = split_dot(&x.qs, u32::from_le_bytes(x.qh), &y.qs, |q| {
            i32::from(q) - 16
        });
        sum += s as f32 * (x.d.to_f32() * y.d.to_f32());
    }
    sum
}

fn q5_1(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in pairs::<BlockQ5_1, BlockQ8_1>(n, 32, w, a) {
        let s = split_dot(&x.qs, u32::from_le_bytes(x.qh), &y.qs, i32::from);
        let dy = y.d.to_f32();
        sum += s as f32 * (x.d.to_f32() * dy) + sum32(&y.qs) as f32 * (x.m.to_f32() * dy);
    }
    sum
}

fn q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in pairs::<BlockQ8_0, BlockQ8_0>(n, 32, w, a) {
        let s: i32 =
            x.qs.iter()
                .zip(&y.qs)
                .map(|(&x, &y)| i32::from(x) * i32::from(y))
                .sum();
        sum += s as f32 * (x.d.to_f32() * y.d.to_f32());
    }
    sum
}

fn iq4_nl(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in pairs::<BlockIQ4_NL, BlockQ8_0>(n, 32, w, a) {
        let s = split_dot(&x.qs, 0, &y.qs, |q| {
            i32::from(IQ4_LEVELS[usize::from(q & 15)])
        });
        sum += s as f32 * (x.d.to_f32() * y.d.to_f32());
    }
    sum
}

/// `sum(q(l) * y[l])` over 16 elements.
#[inline(always)]
fn dot16(y: &[i8], q: impl Fn(usize) -> i32) -> i32 {
    let y: &[i8; 16] = y[..16].try_into().unwrap();
    let mut s = 0;
    for (l, &y) in y.iter().enumerate() {
        s += q(l) * i32::from(y);
    }
    s
}

fn q2_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in pairs::<BlockQ2_K, BlockQ8_K>(n, QK_K, w, a) {
        let (mut isum, mut msum) = (0i32, 0i32);
        // Element 128h + 32s + l: bits 2s of qs[32h + l]; sub-block (16 elements) j.
        for j in 0..QK_K / 16 {
            let (h, s, half) = (j / 8, (j % 8) / 2, j % 2);
            let qs = &x.qs[32 * h + 16 * half..];
            let q = |l: usize| i32::from((qs[l] >> (2 * s)) & 3);
            let sc = x.scales[j];
            isum += i32::from(sc & 0x0F) * dot16(&y.qs[16 * j..], q);
            msum += i32::from(sc >> 4) * i32::from(y.bsums[j]);
        }
        sum += y.d * (x.d.to_f32() * isum as f32 - x.dmin.to_f32() * msum as f32);
    }
    sum
}

fn q3_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in pairs::<BlockQ3_K, BlockQ8_K>(n, QK_K, w, a) {
        let sc = q3_scales(&x.scales);
        let mut isum = 0i32;
        // As Q2_K for the low 2 bits; the high bit of element 128h + 32s + l is bit
        // 4h + s of hmask[l], and a clear bit means 4 less.
        for (j, &sc) in sc.iter().enumerate() {
            let (h, s, half) = (j / 8, (j % 8) / 2, j % 2);
            let qs = &x.qs[32 * h + 16 * half..];
            let hm = &x.hmask[16 * half..];
            let bit = 4 * h + s;
            let q = |l: usize| {
                let low = i32::from((qs[l] >> (2 * s)) & 3);
                low - 4 + 4 * i32::from((hm[l] >> bit) & 1)
            };
            isum += (i32::from(sc) - 32) * dot16(&y.qs[16 * j..], q);
        }
        sum += y.d * x.d.to_f32() * isum as f32;
    }
    sum
}

/// The part of a Q4_K/Q5_K block dot product that the sub-block minimums contribute,
/// `sum_j m_j * sum(y in sub-block j)`, and the 8 scales.
#[inline(always)]
fn k_scales_mins(scales: &[u8; 12], bsums: &[i16; 16]) -> ([i32; 8], i32) {
    let mut sc = [0i32; 8];
    let mut msum = 0i32;
    for (j, s) in sc.iter_mut().enumerate() {
        let (scale, min) = unpack_scale_min(j, scales);
        *s = i32::from(scale);
        msum += i32::from(min) * (i32::from(bsums[2 * j]) + i32::from(bsums[2 * j + 1]));
    }
    (sc, msum)
}

fn q4_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in pairs::<BlockQ4_K, BlockQ8_K>(n, QK_K, w, a) {
        let (sc, msum) = k_scales_mins(&x.scales, &y.bsums);
        let mut isum = 0i32;
        // 32 bytes per 64 elements: low nibbles are sub-block 2c, high nibbles 2c + 1.
        for (c, qs) in x.qs.chunks_exact(32).enumerate() {
            let (ylo, yhi) = y.qs[64 * c..64 * c + 64].split_at(32);
            let (mut lo, mut hi) = (0i32, 0i32);
            for ((&q, &yl), &yh) in qs.iter().zip(ylo).zip(yhi) {
                lo += i32::from(q & 0x0F) * i32::from(yl);
                hi += i32::from(q >> 4) * i32::from(yh);
            }
            isum += sc[2 * c] * lo + sc[2 * c + 1] * hi;
        }
        sum += y.d * (x.d.to_f32() * isum as f32 - x.dmin.to_f32() * msum as f32);
    }
    sum
}

fn q5_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in pairs::<BlockQ5_K, BlockQ8_K>(n, QK_K, w, a) {
        let (sc, msum) = k_scales_mins(&x.scales, &y.bsums);
        let mut isum = 0i32;
        // As Q4_K, with the fifth bits of elements 64c + l and 64c + 32 + l in bits 2c
        // and 2c + 1 of qh[l].
        for (c, qs) in x.qs.chunks_exact(32).enumerate() {
            let (ylo, yhi) = y.qs[64 * c..64 * c + 64].split_at(32);
            let (mut lo, mut hi) = (0i32, 0i32);
            for (((&q, &h), &yl), &yh) in qs.iter().zip(&x.qh).zip(ylo).zip(yhi) {
                let h = h >> (2 * c);
                lo += i32::from((q & 0x0F) | ((h & 1) << 4)) * i32::from(yl);
                hi += i32::from((q >> 4) | ((h & 2) << 3)) * i32::from(yh);
            }
            isum += sc[2 * c] * lo + sc[2 * c + 1] * hi;
        }
        sum += y.d * (x.d.to_f32() * isum as f32 - x.dmin.to_f32() * msum as f32);
    }
    sum
}

fn q6_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in pairs::<BlockQ6_K, BlockQ8_K>(n, QK_K, w, a) {
        let mut isum = 0i32;
        // Element 128h + 32r + l: low 4 bits in ql[64h + 32(r & 1) + l] at bit
        // 4(r >> 1), high 2 bits in qh[32h + l] at bit 2r; level q - 32.
        for j in 0..QK_K / 16 {
            let (h, r, half) = (j / 8, (j % 8) / 2, j % 2);
            let ql = &x.ql[64 * h + 32 * (r & 1) + 16 * half..];
            let qh = &x.qh[32 * h + 16 * half..];
            let q = |l: usize| {
                let low = (ql[l] >> (4 * (r >> 1))) & 0x0F;
                let high = (qh[l] >> (2 * r)) & 3;
                i32::from(low | (high << 4)) - 32
            };
            isum += i32::from(x.scales[j]) * dot16(&y.qs[16 * j..], q);
        }
        sum += y.d * x.d.to_f32() * isum as f32;
    }
    sum
}

fn iq4_xs(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in pairs::<BlockIQ4_XS, BlockQ8_K>(n, QK_K, w, a) {
        let mut isum = 0i32;
        for (j, qs) in x.qs.chunks_exact(16).enumerate() {
            let ys: &[i8; 32] = y.qs[32 * j..32 * j + 32].try_into().unwrap();
            let level = |q: u8| i32::from(IQ4_LEVELS[usize::from(q & 15)]);
            let s = split_dot(qs.try_into().unwrap(), 0, ys, level);
            isum += (i32::from(x.sub_scale(j)) - 32) * s;
        }
        sum += y.d * x.d.to_f32() * isum as f32;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_conversion_matches_half_for_every_pattern() {
        for h in 0..=u16::MAX {
            let want = half::f16::from_bits(h).to_f32().to_bits();
            assert_eq!(f16_to_f32(h).to_bits(), want, "{h:#06x}");
        }
    }
}
