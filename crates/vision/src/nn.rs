//! The f32 building blocks of the towers, on the CPU: linear layers over the runtime's
//! [`Weight`]s, LayerNorm, llama.cpp's f16-table GELU, full (unmasked) multi-head attention.

use half::f16;
use runtime::cpu::kernels;
use runtime::Weight;

/// Weight rows dequantized at a time by [`linear`].
const BLOCK_ROWS: usize = 64;

/// Rounds to the nearest f16 and back.
#[inline]
pub fn f16_round(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

/// GELU (tanh form) as llama.cpp's CPU backend computes it: looked up in a table of f16
/// values for −10 < x < 10, so `f16(gelu(f16(x)))`; 0 below, x above.
#[inline]
pub fn gelu(x: f32) -> f32 {
    if x <= -10.0 {
        0.0
    } else if x >= 10.0 {
        x
    } else {
        let h = f16_round(x);
        const SQRT_2_OVER_PI: f32 = 0.797_884_6;
        const COEF_A: f32 = 0.044715;
        let g = 0.5 * h * (1.0 + (SQRT_2_OVER_PI * h * (1.0 + COEF_A * h * h)).tanh());
        f16_round(g)
    }
}

/// `out` (n × w.rows) = x (n × w.cols) × wᵀ + b, over all cores: each thread dequantizes
/// blocks of weight rows and multiplies them with every row of `x`.
pub fn linear(x: &[f32], n: usize, w: &Weight, b: Option<&[f32]>) -> Vec<f32> {
    let (cols, rows) = (w.cols, w.rows);
    debug_assert_eq!(x.len(), n * cols);
    let threads = std::thread::available_parallelism()
        .map_or(1, |t| t.get())
        .min(rows.div_ceil(BLOCK_ROWS))
        .max(1);
    let per = rows.div_ceil(threads).div_ceil(BLOCK_ROWS) * BLOCK_ROWS;
    // Each thread returns its rows' outputs (n × its rows), gathered below.
    let parts: Vec<(usize, Vec<f32>)> = std::thread::scope(|s| {
        let jobs: Vec<_> = (0..rows)
            .step_by(per.max(1))
            .map(|r0| {
                s.spawn(move || {
                    let r1 = (r0 + per).min(rows);
                    let mut out = vec![0.0f32; n * (r1 - r0)];
                    let mut deq = vec![0.0f32; BLOCK_ROWS * cols];
                    let mut r = r0;
                    while r < r1 {
                        let nr = BLOCK_ROWS.min(r1 - r);
                        for j in 0..nr {
                            // Shapes were checked at load.
                            let _ = w.row_to_f32(r + j, &mut deq[j * cols..(j + 1) * cols]);
                        }
                        for t in 0..n {
                            let xr = &x[t * cols..(t + 1) * cols];
                            let o = &mut out[t * (r1 - r0) + (r - r0)..][..nr];
                            for (j, o) in o.iter_mut().enumerate() {
                                *o = kernels::dot(xr, &deq[j * cols..(j + 1) * cols]);
                            }
                        }
                        r += nr;
                    }
                    (r0, out)
                })
            })
            .collect();
        jobs.into_iter()
            .map(|j| j.join().expect("linear worker panicked"))
            .collect()
    });
    let mut out = vec![0.0f32; n * rows];
    for (r0, part) in parts {
        let width = part.len() / n.max(1);
        for t in 0..n {
            out[t * rows + r0..][..width].copy_from_slice(&part[t * width..(t + 1) * width]);
        }
    }
    if let Some(b) = b {
        for row in out.chunks_exact_mut(rows) {
            for (v, &bb) in row.iter_mut().zip(b) {
                *v += bb;
            }
        }
    }
    out
}

/// LayerNorm of every `width`-wide row of `x`, in place.
pub fn layer_norm(x: &mut [f32], width: usize, w: &[f32], b: &[f32], eps: f32) {
    let mut tmp = vec![0.0f32; width];
    for row in x.chunks_exact_mut(width) {
        tmp.copy_from_slice(row);
        kernels::layer_norm(&tmp, Some(w), Some(b), eps, row);
    }
}

/// GELU of every value, in place.
pub fn gelu_inplace(x: &mut [f32]) {
    for v in x {
        *v = gelu(*v);
    }
}

/// `a += b`.
pub fn add_inplace(a: &mut [f32], b: &[f32]) {
    for (x, &y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

/// Multi-head attention of `n` tokens over each other, no mask: head h of token i of the
/// output = softmax(scale · q_i·k_j) · v_j over all j. `q`, `k`, `v` are rows of
/// `stride` values with head h at `h × head_dim` after their offsets.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: (&[f32], usize),
    k: (&[f32], usize),
    v: (&[f32], usize),
    stride: usize,
    n: usize,
    n_heads: usize,
    head_dim: usize,
    scale: f32,
) -> Vec<f32> {
    let width = n_heads * head_dim;
    let mut out = vec![0.0f32; n * width];
    // Query rows split over the cores; each row's result does not depend on the split.
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    let per = n.div_ceil(threads).max(1);
    std::thread::scope(|sc| {
        for (c, rows) in out.chunks_mut(per * width).enumerate() {
            sc.spawn(move || {
                let mut scores = vec![0.0f32; n];
                for (r, orow) in rows.chunks_exact_mut(width).enumerate() {
                    let i = c * per + r;
                    for h in 0..n_heads {
                        let qi = &q.0[i * stride + q.1 + h * head_dim..][..head_dim];
                        for (j, s) in scores.iter_mut().enumerate() {
                            let kj = &k.0[j * stride + k.1 + h * head_dim..][..head_dim];
                            *s = kernels::dot(qi, kj) * scale;
                        }
                        kernels::softmax(&mut scores);
                        let o = &mut orow[h * head_dim..][..head_dim];
                        for (j, &p) in scores.iter().enumerate() {
                            let vj = &v.0[j * stride + v.1 + h * head_dim..][..head_dim];
                            kernels::axpy(p, vj, o);
                        }
                    }
                }
            });
        }
    });
    out
}

/// [`attention`] as llama.cpp's CPU flash attention computes it with f16 keys and values.
/// From 64 queries on (its tiled kernel): k and v rounded to f16, the rest in f32. Below
/// (its one-query kernel): q, k and v rounded to f16; per query, the keys in order with an
/// online softmax whose running weighted sum of values is kept in f16 (rescaled when the
/// maximum grows, each update rounded), divided by the sum of weights at the end.
#[allow(clippy::too_many_arguments)]
pub fn attention_f16(
    q: (&[f32], usize),
    k: (&[f32], usize),
    v: (&[f32], usize),
    stride: usize,
    n: usize,
    n_heads: usize,
    head_dim: usize,
    scale: f32,
) -> Vec<f32> {
    let r = |x: &[f32]| -> Vec<f32> { x.iter().map(|&v| f16_round(v)).collect() };
    if n >= 64 {
        let (kh, vh) = (r(k.0), r(v.0));
        return attention(
            q,
            (&kh, k.1),
            (&vh, v.1),
            stride,
            n,
            n_heads,
            head_dim,
            scale,
        );
    }
    let width = n_heads * head_dim;
    let mut out = vec![0.0f32; n * width];
    let (qh, kh, vh) = (r(q.0), r(k.0), r(v.0));
    let mut acc = vec![0.0f32; head_dim];
    for h in 0..n_heads {
        for i in 0..n {
            let qi = &qh[i * stride + q.1 + h * head_dim..][..head_dim];
            acc.fill(0.0);
            let (mut m, mut sum) = (f32::NEG_INFINITY, 0.0f32);
            for j in 0..n {
                let kj = &kh[j * stride + k.1 + h * head_dim..][..head_dim];
                let dot: f64 = qi.iter().zip(kj).map(|(&a, &b)| (a * b) as f64).sum();
                let s = dot as f32 * scale;
                let (mut ms, mut vs) = (1.0f32, 1.0f32);
                if s > m {
                    ms = (m - s).exp();
                    m = s;
                    for a in acc.iter_mut() {
                        *a = f16_round(*a * ms);
                    }
                } else {
                    vs = (s - m).exp();
                }
                let vj = &vh[j * stride + v.1 + h * head_dim..][..head_dim];
                for (a, &x) in acc.iter_mut().zip(vj) {
                    *a = f16_round(*a + x * vs);
                }
                sum = sum * ms + vs;
            }
            let inv = if sum == 0.0 { 0.0 } else { 1.0 / sum };
            let o = &mut out[i * width + h * head_dim..][..head_dim];
            for (o, &a) in o.iter_mut().zip(&acc) {
                *o = a * inv;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_matches_a_plain_product() {
        let (n, cols, rows) = (3, 5, 130);
        let wv: Vec<f32> = (0..cols * rows).map(|i| (i as f32 * 0.37).sin()).collect();
        let w = Weight::from_f32(cols, rows, &wv).unwrap();
        let x: Vec<f32> = (0..n * cols).map(|i| (i as f32 * 0.11).cos()).collect();
        let b: Vec<f32> = (0..rows).map(|i| i as f32).collect();
        let out = linear(&x, n, &w, Some(&b));
        for t in 0..n {
            for r in 0..rows {
                let want: f32 = (0..cols).map(|c| x[t * cols + c] * wv[r * cols + c]).sum();
                assert!((out[t * rows + r] - want - b[r]).abs() < 1e-4);
            }
        }
    }

    #[test]
    fn gelu_table_edges() {
        assert_eq!(gelu(-10.0), 0.0);
        assert_eq!(gelu(12.5), 12.5);
        assert!((gelu(1.0) - 0.8412).abs() < 1e-3);
    }
}
