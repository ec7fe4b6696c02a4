//! Scale searches shared by the quantizers. Each tries a couple of dozen candidate scales
//! around the obvious one (the largest element on the end of the range), assigns the
//! integer levels by rounding, refits the scale (and offset) by least squares for those
//! levels, and keeps the candidate with the smallest squared error. Unweighted, small and
//! deterministic; not ggml's search, and not meant to produce the same bytes.

use crate::formats::{round_i32, signed_absmax};

/// Candidates on each side of the obvious scale.
const STEPS: i32 = 10;

/// How far, in levels, the candidates reach on each side of the obvious mapping of the
/// extreme element onto a range of `levels`: at least one level, else 15% of the range.
fn reach(levels: f32) -> f32 {
    (0.15 * levels).max(1.0)
}

/// Fits `x ≈ s·q` with integer `q` in `qmin..=qmax` (`qmin < 0 < qmax`, `-qmin >= qmax`)
/// and returns `s`, which is negative when the largest-magnitude element is positive
/// (that element lands near `qmin`, the end with more levels). 0 for all-zero input.
pub(crate) fn fit_scale(x: &[f32], qmin: i32, qmax: i32) -> f32 {
    let (max, amax) = signed_absmax(x);
    let plain = max / qmin as f32;
    if amax == 0.0 || !amax.is_finite() {
        return if amax == 0.0 { 0.0 } else { plain };
    }
    let step = reach(-qmin as f32) / STEPS as f32;
    let mut best = (plain, f32::NEG_INFINITY);
    for t in -STEPS..=STEPS {
        let iscale = (qmin as f32 + t as f32 * step) / max;
        let (mut sxq, mut sqq) = (0.0f32, 0.0f32);
        for &v in x {
            let q = round_i32(v * iscale).clamp(qmin, qmax) as f32;
            sxq += v * q;
            sqq += q * q;
        }
        // With the least-squares scale sxq/sqq the squared error is sum(x²) - sxq²/sqq,
        // so the best candidate has the largest sxq²/sqq.
        if sqq > 0.0 {
            let score = sxq * sxq / sqq;
            if score > best.1 {
                best = (sxq / sqq, score);
            }
        }
    }
    best.0
}

/// Squared error of `x ≈ s·q − m` with `q = round((x + m) / s)` clamped to `0..=qmax`
/// (all levels 0 when `s` is 0).
fn error_scale_min(x: &[f32], qmax: i32, s: f32, m: f32) -> f32 {
    let is = crate::formats::inverse(s);
    x.iter()
        .map(|&v| {
            let q = round_i32((v + m) * is).clamp(0, qmax) as f32;
            let e = s * q - m - v;
            e * e
        })
        .sum()
}

/// Fits `x ≈ s·q − m` with integer `q` in `0..=qmax`, `s >= 0` and `m >= 0` (the offset
/// `-m` is never above zero, as the K-quant formats store it). Returns `(s, m)`.
pub(crate) fn fit_scale_min(x: &[f32], qmax: i32) -> (f32, f32) {
    // `f32::min`/`max` skip NaN.
    let lo = x.iter().copied().fold(0.0f32, f32::min);
    let hi = x.iter().copied().fold(lo, f32::max);
    let range = hi - lo;
    if range <= 0.0 || !range.is_finite() {
        // Every element equals `lo` (or the input is not finite).
        return (0.0, -lo);
    }
    let n = x.len() as f32;
    let plain = range / qmax as f32;
    let mut best = (plain, -lo, error_scale_min(x, qmax, plain, -lo));
    let step = reach(qmax as f32) / STEPS as f32;
    for t in -STEPS..=STEPS {
        let iscale = (qmax as f32 + t as f32 * step) / range;
        let (mut sx, mut sq, mut sxq, mut sqq) = (0.0f32, 0.0f32, 0.0f32, 0.0f32);
        for &v in x {
            let q = round_i32((v - lo) * iscale).clamp(0, qmax) as f32;
            sx += v;
            sq += q;
            sxq += v * q;
            sqq += q * q;
        }
        let det = n * sqq - sq * sq;
        if det <= 0.0 {
            continue;
        }
        let mut s = (n * sxq - sq * sx) / det;
        let mut b = (sx - s * sq) / n;
        if b > 0.0 {
            // The offset must not be positive: refit the scale alone.
            b = 0.0;
            s = sxq / sqq;
        }
        if s > 0.0 {
            let e = error_scale_min(x, qmax, s, -b);
            if e < best.2 {
                best = (s, -b, e);
            }
        }
    }
    (best.0, best.1)
}

/// Squared error of `x ≈ s·q` with `q = round(x / s)` clamped to `qmin..=qmax`.
fn error_scale(x: &[f32], qmin: i32, qmax: i32, s: f32) -> f32 {
    let is = crate::formats::inverse(s);
    x.iter()
        .map(|&v| {
            let e = s * round_i32(v * is).clamp(qmin, qmax) as f32 - v;
            e * e
        })
        .sum()
}

/// Squared error of `x ≈ s·grid[q]` with the nearest grid value for each element.
fn error_scale_grid(x: &[f32], grid: &[i8], s: f32) -> f32 {
    let is = crate::formats::inverse(s);
    x.iter()
        .map(|&v| {
            let e = s * grid[nearest_in_grid(grid, v * is)] as f32 - v;
            e * e
        })
        .sum()
}

/// After the sub-block scale and minimum have been rounded to integer steps `ls`, `lm`
/// (in `0..=lmax`) of the super-block's `d` and `dmin`: tries each one step up and down
/// and keeps the pair whose levels fit `x` best. The effective scale and minimum are
/// computed as the dequantizer does, `d * ls` and `dmin * lm`.
pub(crate) fn refine_scale_min(
    x: &[f32],
    qmax: i32,
    d: f32,
    dmin: f32,
    ls: &mut u8,
    lm: &mut u8,
    lmax: u8,
) {
    let err = |a: u8, b: u8| error_scale_min(x, qmax, d * a as f32, dmin * b as f32);
    let mut best = (*ls, *lm, err(*ls, *lm));
    for a in ls.saturating_sub(1)..=(*ls + 1).min(lmax) {
        for b in lm.saturating_sub(1)..=(*lm + 1).min(lmax) {
            let e = err(a, b);
            if e < best.2 {
                best = (a, b, e);
            }
        }
    }
    (*ls, *lm) = (best.0, best.1);
}

/// As [`refine_scale_min`] for a signed integer scale step `l` in `lmin..=lmax` and
/// levels `qmin..=qmax`.
pub(crate) fn refine_scale(
    x: &[f32],
    qmin: i32,
    qmax: i32,
    d: f32,
    l: &mut i32,
    lmin: i32,
    lmax: i32,
) {
    let mut best = (*l, error_scale(x, qmin, qmax, d * *l as f32));
    for a in (*l - 1).max(lmin)..=(*l + 1).min(lmax) {
        let e = error_scale(x, qmin, qmax, d * a as f32);
        if e < best.1 {
            best = (a, e);
        }
    }
    *l = best.0;
}

/// As [`refine_scale`] for a non-linear grid of levels.
pub(crate) fn refine_scale_grid(x: &[f32], grid: &[i8], d: f32, l: &mut i32, lmin: i32, lmax: i32) {
    let mut best = (*l, error_scale_grid(x, grid, d * *l as f32));
    for a in (*l - 1).max(lmin)..=(*l + 1).min(lmax) {
        let e = error_scale_grid(x, grid, d * a as f32);
        if e < best.1 {
            best = (a, e);
        }
    }
    *l = best.0;
}

/// The index of the grid value nearest to `v` (`grid` ascending; ties go to the lower).
pub(crate) fn nearest_in_grid(grid: &[i8], v: f32) -> usize {
    let i = grid.partition_point(|&g| (g as f32) < v);
    if i == 0 {
        0
    } else if i == grid.len() {
        grid.len() - 1
    } else if v - grid[i - 1] as f32 <= grid[i] as f32 - v {
        i - 1
    } else {
        i
    }
}

/// Fits `x ≈ s·grid[q]` over an ascending grid whose first value is its largest in
/// magnitude (negative), and returns `s`. 0 for all-zero input.
pub(crate) fn fit_scale_grid(x: &[f32], grid: &[i8]) -> f32 {
    let (max, amax) = signed_absmax(x);
    let g0 = grid[0] as f32;
    let plain = max / g0;
    if amax == 0.0 || !amax.is_finite() {
        return if amax == 0.0 { 0.0 } else { plain };
    }
    let step = reach(-g0) / STEPS as f32;
    let mut best = (plain, f32::NEG_INFINITY);
    for t in -STEPS..=STEPS {
        let iscale = (g0 + t as f32 * step) / max;
        let (mut sxg, mut sgg) = (0.0f32, 0.0f32);
        for &v in x {
            let g = grid[nearest_in_grid(grid, v * iscale)] as f32;
            sxg += v * g;
            sgg += g * g;
        }
        if sgg > 0.0 {
            let score = sxg * sxg / sgg;
            if score > best.1 {
                best = (sxg / sgg, score);
            }
        }
    }
    best.0
}

/// Quantizes non-negative sub-block values to `0..=levels` steps of a shared f16 scale
/// `d = max / levels`. Returns `d` and the steps.
pub(crate) fn quantize_unsigned<const N: usize>(
    vals: &[f32; N],
    levels: i32,
) -> (half::f16, [u8; N]) {
    let max = vals.iter().copied().fold(0.0f32, f32::max);
    let d = half::f16::from_f32(max / levels as f32);
    let id = crate::formats::inverse(d.to_f32());
    let l = vals.map(|v| round_i32(v * id).clamp(0, levels) as u8);
    (d, l)
}

/// Quantizes signed sub-block values to `lmin..=lmax` steps of a shared f16 scale chosen
/// so that the largest-magnitude value lands on `lmin`. Returns the scale and the steps.
pub(crate) fn quantize_signed<const N: usize>(
    vals: &[f32; N],
    lmin: i32,
    lmax: i32,
) -> (half::f16, [i32; N]) {
    let (max, _) = signed_absmax(vals);
    let d = half::f16::from_f32(max / lmin as f32);
    let id = crate::formats::inverse(d.to_f32());
    let l = vals.map(|v| round_i32(v * id).clamp(lmin, lmax));
    (d, l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_grid_index() {
        let g = [-10i8, -2, 0, 5];
        assert_eq!(nearest_in_grid(&g, -100.0), 0);
        assert_eq!(nearest_in_grid(&g, -6.0), 0);
        assert_eq!(nearest_in_grid(&g, -5.9), 1);
        assert_eq!(nearest_in_grid(&g, 0.1), 2);
        assert_eq!(nearest_in_grid(&g, 4.0), 3);
        assert_eq!(nearest_in_grid(&g, 50.0), 3);
        assert!(nearest_in_grid(&g, f32::NAN) < g.len());
    }

    #[test]
    fn exact_data_is_fitted_exactly() {
        let x: Vec<f32> = (0..16).map(|i| 0.5 * (i % 8) as f32 - 2.0).collect();
        let s = fit_scale(&x, -4, 3);
        assert!((s.abs() - 0.5).abs() < 1e-6, "{s}");
        let (s, m) = fit_scale_min(&x, 7);
        assert!((s - 0.5).abs() < 1e-6 && (m - 2.0).abs() < 1e-6, "{s} {m}");
        assert_eq!(fit_scale(&[0.0; 8], -4, 3), 0.0);
        assert_eq!(fit_scale_min(&[0.0; 8], 3), (0.0, 0.0));
    }
}
