//! The element-wise and per-row kernels of the CPU backend, written as plain loops over
//! slices (the compiler vectorizes them). They are also the reference for other devices.

use crate::ops::{Rope, RopeMode};

/// RMSNorm of one row: `out = x / sqrt(mean(x²) + eps) × w` (sum in f64, as ggml does).
pub fn rms_norm(x: &[f32], w: Option<&[f32]>, eps: f32, out: &mut [f32]) {
    let ss: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
    let scale = (1.0 / (ss / x.len() as f64 + eps as f64).sqrt()) as f32;
    match w {
        Some(w) => {
            for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
                *o = v * scale * g;
            }
        }
        None => {
            for (o, &v) in out.iter_mut().zip(x) {
                *o = v * scale;
            }
        }
    }
}

/// LayerNorm of one row: `(x - mean) / sqrt(var + eps) × w + b`.
pub fn layer_norm(x: &[f32], w: Option<&[f32]>, b: Option<&[f32]>, eps: f32, out: &mut [f32]) {
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    let inv = 1.0 / (var + eps as f64).sqrt();
    for (i, (o, &v)) in out.iter_mut().zip(x).enumerate() {
        let mut y = ((v as f64 - mean) * inv) as f32;
        if let Some(w) = w {
            y *= w[i];
        }
        if let Some(b) = b {
            y += b[i];
        }
        *o = y;
    }
}

/// Rotates one head in place for position `pos`.
pub fn rope(head: &mut [f32], pos: u32, rope: &Rope) {
    rope_at(head, [pos; 3], rope);
}

/// [`rope`] at a multi-section position (t, h, w): pair i turns by component
/// `rope.section[i]` (by t when `section` is empty).
pub fn rope_at(head: &mut [f32], pos: [u32; 3], rope: &Rope) {
    let half = rope.n_rot / 2;
    let p = pos.map(|x| x as f32 * rope.freq_scale);
    for i in 0..half {
        let c = rope.section.get(i).map_or(0, |&s| s as usize);
        let (s, c) = (p[c.min(2)] * rope.inv_freq[i]).sin_cos();
        let (a, b) = match rope.mode {
            RopeMode::Normal => (2 * i, 2 * i + 1),
            RopeMode::Neox => (i, i + half),
        };
        let (x0, x1) = (head[a], head[b]);
        head[a] = x0 * c - x1 * s;
        head[b] = x0 * s + x1 * c;
    }
}

/// `e^x` to within 2 ulp (relative error < 2.5e-7) for x in [-87, 88]; 0 below (e^-87 ≈
/// 1.6e-38), e^88 ≈ 1.7e38 above. Branch-free, so loops over slices vectorize: the scalar
/// `f32::exp` of libm is a call per value.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in a part with few mantissa bits (exact products with n) and the rest.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding 1.5 × 2^23 rounds to an integer, which lands in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let underflow = x < -87.0;
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    // e^r for |r| <= ln2/2: Taylor series to r^6 (truncation error < 1e-7 relative).
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let ni = t.to_bits() as i32 - ROUND.to_bits() as i32;
    let e = p * f32::from_bits(((ni + 127) << 23) as u32);
    if underflow {
        0.0
    } else {
        e
    }
}

/// `tanh(x)` through [`exp`]: absolute error below 3e-7.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    1.0 - 2.0 / (exp(2.0 * x) + 1.0)
}

/// Softmax in place (max-subtracted; sum in f64).
#[inline]
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return;
    }
    for v in x.iter_mut() {
        *v = exp(*v - max);
    }
    let sum: f64 = x.iter().map(|&v| v as f64).sum();
    let inv = (1.0 / sum) as f32;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// `x / (1 + e^-x)`.
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// GELU, tanh approximation: `0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))`.
#[inline(always)]
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    // 0.5 (1 + tanh(y)) = 1 / (1 + e^-2y): no cancellation for y << 0, no overflow.
    x / (1.0 + exp(-2.0 * SQRT_2_OVER_PI * x * (1.0 + 0.044715 * x * x)))
}

/// `out = silu(gate) × up`.
pub fn swiglu(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = silu(g) * u;
    }
}

/// `out = gelu_tanh(gate) × up`.
pub fn geglu(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = gelu_tanh(g) * u;
    }
}

/// Attention of one query head over `n_pos` cached keys and values.
/// `keys`/`values` hold rows of `stride` values; this head's part starts at `offset`.
/// `scores` is scratch of at least `n_pos` values. `first` is the first visible position.
#[allow(clippy::too_many_arguments)]
pub fn attend(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    stride: usize,
    offset: usize,
    first: usize,
    n_pos: usize,
    scale: f32,
    softcap: Option<f32>,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let args = (
        q, keys, values, stride, offset, first, n_pos, scale, softcap,
    );
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, all `attend_avx2` enables.
        unsafe { attend_avx2(args, scores, out) };
        return;
    }
    let (q, keys, values, stride, offset, first, n_pos, scale, softcap) = args;
    attend_body(
        q, keys, values, stride, offset, first, n_pos, scale, softcap, scores, out,
    );
}

/// The arguments of [`attend`] before its two outputs.
type AttendArgs<'a> = (
    &'a [f32],
    &'a [f32],
    &'a [f32],
    usize,
    usize,
    usize,
    usize,
    f32,
    Option<f32>,
);

/// [`attend`] compiled for AVX2 (wider vectors; no FMA, so the same bits as the baseline).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn attend_avx2(args: AttendArgs, scores: &mut [f32], out: &mut [f32]) {
    let (q, keys, values, stride, offset, first, n_pos, scale, softcap) = args;
    attend_body(
        q, keys, values, stride, offset, first, n_pos, scale, softcap, scores, out,
    );
}

/// The body of [`attend`].
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn attend_body(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    stride: usize,
    offset: usize,
    first: usize,
    n_pos: usize,
    scale: f32,
    softcap: Option<f32>,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let d = q.len();
    let scores = &mut scores[..n_pos - first];
    for (j, s) in scores.iter_mut().enumerate() {
        let k = &keys[(first + j) * stride + offset..][..d];
        let mut v = dot(q, k) * scale;
        if let Some(cap) = softcap {
            v = cap * tanh(v / cap);
        }
        *s = v;
    }
    softmax(scores);
    out.fill(0.0);
    for (j, &p) in scores.iter().enumerate() {
        let v = &values[(first + j) * stride + offset..][..d];
        axpy(p, v, out);
    }
}

/// Lanes of the accumulators below: wide enough for the compiler to use full vectors.
const LANES: usize = 16;

/// Dot product with independent partial sums, so the loop vectorizes.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let mut acc = [0.0f32; LANES];
    let (ac, bc) = (a[..n].chunks_exact(LANES), b[..n].chunks_exact(LANES));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for (x, y) in ar.iter().zip(br) {
        sum += x * y;
    }
    sum
}

/// `out += a × x`.
#[inline(always)]
pub fn axpy(a: f32, x: &[f32], out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o += a * v;
    }
}

/// `1 / (1 + e^-x)`.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// `ln(1 + e^x)`, and `x` itself above 20 (as ggml).
#[inline(always)]
pub fn softplus(x: f32) -> f32 {
    if x > 20.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}

/// Scales `x` into `out` by `scale / sqrt(Σx² + eps)` (the L2 norm of the Gated DeltaNet's
/// queries and keys; sum in f64).
pub fn l2_normalize(x: &[f32], eps: f32, scale: f32, out: &mut [f32]) {
    let ss: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
    let s = (scale as f64 / (ss + eps as f64).sqrt()) as f32;
    for (o, &v) in out.iter_mut().zip(x) {
        *o = v * s;
    }
}

/// One time step of a causal depthwise convolution for one channel: `taps` holds the
/// kernel's weights, oldest first; `hist` the channel's last `taps.len() - 1` inputs, oldest
/// first. Returns `Σ taps · [hist; x]` and shifts `x` into `hist`.
#[inline]
pub fn conv_step(taps: &[f32], hist: &mut [f32], x: f32) -> f32 {
    let k = hist.len();
    let mut y = taps[k] * x;
    for j in 0..k {
        y += taps[j] * hist[j];
    }
    if k > 0 {
        hist.copy_within(1.., 0);
        hist[k - 1] = x;
    }
    y
}

/// One token of the gated delta rule for one head, in place on the state `s` (`head_v` rows
/// of `head_k` values: S[i][j] pairs value i with key j):
/// `S ← e^g·S; S ← S + β·(v − S·k)·kᵀ; o = S·q`.
#[allow(clippy::too_many_arguments)]
pub fn delta_step(
    s: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    g: f32,
    beta: f32,
    o: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, all `delta_step_avx2` enables.
        unsafe { delta_step_avx2(s, q, k, v, g, beta, o) };
        return;
    }
    delta_step_body(s, q, k, v, g, beta, o);
}

/// [`delta_step`] compiled for AVX2 (wider vectors; no FMA, so the same bits as the
/// baseline: a rollback's replay and the forward pass agree on any CPU).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn delta_step_avx2(
    s: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    g: f32,
    beta: f32,
    o: &mut [f32],
) {
    delta_step_body(s, q, k, v, g, beta, o);
}

/// The body of [`delta_step`].
#[inline(always)]
fn delta_step_body(
    s: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    g: f32,
    beta: f32,
    o: &mut [f32],
) {
    let decay = exp(g);
    let hk = k.len();
    for ((row, &vi), oi) in s.chunks_exact_mut(hk).zip(v).zip(o.iter_mut()) {
        let d = beta * (vi - decay * dot(row, k));
        for (x, &kj) in row.iter_mut().zip(k) {
            *x = decay * *x + d * kj;
        }
        *oi = dot(row, q);
    }
}

/// Floats of scratch [`delta_chunk`] needs for chunks of up to `c` tokens.
pub fn delta_chunk_scratch(c: usize, head_v: usize) -> usize {
    2 * c * c + c + c * head_v
}

/// The gated delta rule over a chunk of `n` tokens for one head in its chunk-parallel (WY)
/// form, with the same result as `n` calls of [`delta_step`] up to rounding. `s` is the state
/// (`head_v × head_k`) before the chunk, updated in place; `q`, `k` hold `n` rows of
/// `head_k`, `v` and `o` `n` rows of `head_v`; `g` and `beta` one value per token.
///
/// With γ_t = Σ_{s≤t} g_s and the new values u_t = β_t (v_t − e^{g_t} S_{t−1} k_t), the state
/// is S_t = e^{γ_t} S_0 + Σ_{s≤t} e^{γ_t−γ_s} u_s k_sᵀ, so
/// - u_t = β_t (v_t − e^{γ_t} S_0 k_t) − Σ_{s<t} β_t e^{γ_t−γ_s} (k_t·k_s) u_s: one
///   triangular solve for all of U;
/// - o_t = e^{γ_t} S_0 q_t + Σ_{s≤t} e^{γ_t−γ_s} (q_t·k_s) u_s;
/// - S_n = e^{γ_n} S_0 + Σ_s e^{γ_n−γ_s} u_s k_sᵀ.
///
/// Everything is a product of small matrices, run by the `gemm` crate (K·Kᵀ, Q·Kᵀ, K·S₀ᵀ,
/// Q·S₀ᵀ, P·U and Uᵀ·K); only the triangular solve goes token by token, over rows of U.
///
/// The CPU backend's passes do not use it: their rounding would depend on where a prompt
/// chunk starts, and a prefix cache resumes prompts anywhere, so prompts step token by token
/// like decode. It stays, tested against [`delta_step`], as the reference for a
/// chunk-parallel GPU form.
#[allow(clippy::too_many_arguments)]
pub fn delta_chunk(
    s: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    g: &[f32],
    beta: &[f32],
    o: &mut [f32],
    scratch: &mut [f32],
) {
    let n = g.len();
    if n == 0 {
        return;
    }
    let hk = k.len() / n;
    let hv = v.len() / n;
    assert!(
        q.len() >= n * hk && v.len() >= n * hv && o.len() >= n * hv && s.len() >= hv * hk,
        "delta_chunk: buffers smaller than the shapes"
    );
    let (a, rest) = scratch.split_at_mut(n * n);
    let (p, rest) = rest.split_at_mut(n * n);
    let (gam, rest) = rest.split_at_mut(n);
    let u = &mut rest[..n * hv];
    // Cumulative log-decay, summed in f64.
    let mut acc = 0.0f64;
    for (c, &x) in gam.iter_mut().zip(g) {
        acc += x as f64;
        *c = acc as f32;
    }
    // A = K·Kᵀ and P = Q·Kᵀ, then weighted by the decays between (lower triangle).
    mm(n, n, hk, a, (n, 1), k, (hk, 1), k, (1, hk), None);
    mm(n, n, hk, p, (n, 1), q, (hk, 1), k, (1, hk), None);
    for t in 0..n {
        for j in 0..=t {
            let dec = exp(gam[t] - gam[j]);
            a[t * n + j] *= beta[t] * dec;
            p[t * n + j] *= dec;
        }
        p[t * n + t + 1..(t + 1) * n].fill(0.0);
    }
    // R_t = β_t (v_t − e^{γ_t} S_0 k_t) from K·S₀ᵀ, then forward substitution for U.
    mm(n, hv, hk, u, (hv, 1), k, (hk, 1), s, (1, hk), None);
    for t in 0..n {
        let e = exp(gam[t]);
        let (done, cur) = u.split_at_mut(t * hv);
        let ut = &mut cur[..hv];
        for (x, &vi) in ut.iter_mut().zip(&v[t * hv..(t + 1) * hv]) {
            *x = beta[t] * (vi - e * *x);
        }
        for j in 0..t {
            axpy(-a[t * n + j], &done[j * hv..(j + 1) * hv], ut);
        }
    }
    // Outputs: e^{γ_t} S_0 q_t from Q·S₀ᵀ, plus P·U.
    mm(n, hv, hk, o, (hv, 1), q, (hk, 1), s, (1, hk), None);
    for t in 0..n {
        let e = exp(gam[t]);
        o[t * hv..(t + 1) * hv].iter_mut().for_each(|x| *x *= e);
    }
    mm(n, hv, n, o, (hv, 1), p, (n, 1), u, (hv, 1), Some(1.0));
    // State at the chunk's end: e^{γ_n} S_0 + (D·U)ᵀ·K, D the decays to the chunk's end.
    let last = gam[n - 1];
    for j in 0..n {
        let dec = exp(last - gam[j]);
        u[j * hv..(j + 1) * hv].iter_mut().for_each(|x| *x *= dec);
    }
    mm(
        hv,
        hk,
        n,
        s,
        (hk, 1),
        u,
        (1, hv),
        k,
        (hk, 1),
        Some(exp(last)),
    );
}

/// `dst (m × n) = keep·dst + lhs (m × depth) · rhs (depth × n)` (`keep` None: dst is only
/// written) with the `gemm` crate on this thread. Each matrix comes with its (row, column)
/// strides in elements.
#[allow(clippy::too_many_arguments)]
fn mm(
    m: usize,
    n: usize,
    depth: usize,
    dst: &mut [f32],
    dst_s: (usize, usize),
    lhs: &[f32],
    lhs_s: (usize, usize),
    rhs: &[f32],
    rhs_s: (usize, usize),
    keep: Option<f32>,
) {
    let last = |rows: usize, cols: usize, (rs, cs): (usize, usize)| {
        (rows.max(1) - 1) * rs + (cols.max(1) - 1) * cs
    };
    assert!(
        last(m, n, dst_s) < dst.len()
            && last(m, depth, lhs_s) < lhs.len()
            && last(depth, n, rhs_s) < rhs.len(),
        "mm: a matrix runs past its buffer"
    );
    // SAFETY: the assert above keeps every element the strides reach inside its slice; dst
    // is borrowed mutably, so it overlaps neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            depth,
            dst.as_mut_ptr(),
            dst_s.1 as isize,
            dst_s.0 as isize,
            keep.is_some(),
            lhs.as_ptr(),
            lhs_s.1 as isize,
            lhs_s.0 as isize,
            rhs.as_ptr(),
            rhs_s.1 as isize,
            rhs_s.0 as isize,
            keep.unwrap_or(0.0),
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_matches_definition() {
        let x = [1.0f32, -2.0, 3.0, 0.5];
        let w = [1.0f32, 2.0, 0.5, -1.0];
        let mut out = [0.0; 4];
        rms_norm(&x, Some(&w), 1e-6, &mut out);
        let ms = (1.0 + 4.0 + 9.0 + 0.25) / 4.0;
        let s = 1.0 / (ms + 1e-6f64).sqrt();
        for i in 0..4 {
            assert!((out[i] as f64 - x[i] as f64 * s * w[i] as f64).abs() < 1e-6);
        }
    }

    #[test]
    fn rope_rotates_pairs_by_position() {
        let r = Rope::new(RopeMode::Normal, 4, 10000.0, 1.0);
        let mut h = [1.0f32, 0.0, 1.0, 0.0];
        rope(&mut h, 2, &r);
        // Pair 0 turns by 2 rad, pair 1 by 2 × 10000^(-1/2).
        assert!((h[0] - 2f32.cos()).abs() < 1e-6 && (h[1] - 2f32.sin()).abs() < 1e-6);
        let a = 2.0 * 0.01f32;
        assert!((h[2] - a.cos()).abs() < 1e-6 && (h[3] - a.sin()).abs() < 1e-6);
        let r = Rope::new(RopeMode::Neox, 4, 10000.0, 1.0);
        let mut h = [1.0f32, 1.0, 0.0, 0.0];
        rope(&mut h, 1, &r);
        assert!((h[0] - 1f32.cos()).abs() < 1e-6 && (h[2] - 1f32.sin()).abs() < 1e-6);
    }

    /// The dispatched delta step (AVX2 where the CPU has it) gives the scalar body's bits:
    /// a rollback replays with it and must land on the forward pass's exact state.
    #[test]
    fn delta_step_simd_has_the_scalar_bits() {
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        };
        let (hv, hk) = (24, 40);
        let mut s: Vec<f32> = (0..hv * hk).map(|_| rand()).collect();
        let mut s2 = s.clone();
        for _ in 0..5 {
            let q: Vec<f32> = (0..hk).map(|_| rand()).collect();
            let k: Vec<f32> = (0..hk).map(|_| rand() * 0.3).collect();
            let v: Vec<f32> = (0..hv).map(|_| rand()).collect();
            let (g, beta) = (-0.5 * rand().abs(), 0.5 + 0.4 * rand());
            let (mut o, mut o2) = (vec![0.0; hv], vec![0.0; hv]);
            delta_step(&mut s, &q, &k, &v, g, beta, &mut o);
            delta_step_body(&mut s2, &q, &k, &v, g, beta, &mut o2);
            assert!(o.iter().any(|&x| x.abs() > 1e-3));
            assert_eq!(o, o2);
            assert_eq!(s, s2);
        }
    }

    #[test]
    fn softmax_sums_to_one_and_keeps_order() {
        let mut x = [1.0f32, 3.0, 2.0, -1e9];
        softmax(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(x[1] > x[2] && x[2] > x[0] && x[3] == 0.0);
    }

    #[test]
    fn exp_and_tanh_match_f64() {
        let mut worst_exp = 0.0f64;
        let mut worst_tanh = 0.0f64;
        let mut x = -87.0f32;
        while x <= 88.0 {
            let want = (x as f64).exp();
            worst_exp = worst_exp.max(((exp(x) as f64 - want) / want).abs());
            let want = (x as f64).tanh();
            worst_tanh = worst_tanh.max((tanh(x) as f64 - want).abs());
            x += 0.001_37;
        }
        assert!(worst_exp < 2.5e-7, "exp relative error {worst_exp}");
        assert!(worst_tanh < 3e-7, "tanh absolute error {worst_tanh}");
        assert_eq!(exp(-1000.0), 0.0);
        assert!(exp(1000.0).is_finite());
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn gelu_and_silu_match_f64() {
        let mut x = -30.0f32;
        while x <= 30.0 {
            let xd = x as f64;
            let g = 0.5
                * xd
                * (1.0
                    + ((2.0 / std::f64::consts::PI).sqrt() * (xd + 0.044715 * xd.powi(3))).tanh());
            let s = xd / (1.0 + (-xd).exp());
            assert!(
                (gelu_tanh(x) as f64 - g).abs() <= 1e-6 * (1.0 + g.abs()),
                "gelu({x})"
            );
            assert!(
                (silu(x) as f64 - s).abs() <= 1e-6 * (1.0 + s.abs()),
                "silu({x})"
            );
            x += 0.0071;
        }
    }

    #[test]
    fn gelu_and_silu_values() {
        assert!((silu(1.0) - 0.731_058_6).abs() < 1e-6);
        assert!((gelu_tanh(1.0) - 0.841_192).abs() < 1e-5);
        assert!((gelu_tanh(-3.0) - (-0.003_637_4)).abs() < 1e-5);
    }

    #[test]
    fn dot_matches_a_plain_sum() {
        for n in [0, 1, 15, 16, 17, 64, 100, 256] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            let scale: f64 = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (*x as f64 * *y as f64).abs())
                .sum();
            assert!(
                (dot(&a, &b) as f64 - want).abs() <= 1e-6 * scale.max(1.0),
                "n={n}"
            );
        }
    }

    #[test]
    fn attention_of_one_key_is_its_value() {
        let q = [1.0f32, 0.0];
        let keys = [0.5f32, 0.5];
        let values = [3.0f32, -4.0];
        let mut scores = [0.0; 1];
        let mut out = [0.0; 2];
        attend(
            &q,
            &keys,
            &values,
            2,
            0,
            0,
            1,
            1.0,
            None,
            &mut scores,
            &mut out,
        );
        assert_eq!(out, [3.0, -4.0]);
    }
}
