//! Quantize → dequantize round trips on seeded random data: each type's error must stay
//! within a bound that a correct implementation meets with room to spare.

use gguf::GgmlType;
use quant::{can_dequantize, can_quantize, dequantize_to_vec, quantize_to_vec, supported_types};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Elements per data set: 16 K-quant super-blocks, 128 blocks of 32.
const N: usize = 4096;
/// Chunk over which the relative RMS error is measured (one K-quant super-block, eight
/// 32-element blocks).
const CHUNK: usize = 256;

/// Largest allowed `rms(error) / rms(x)` over any 256-element chunk of the Gaussian data
/// sets. For round to nearest the expected value is about `step / sqrt(12) / sigma`, and
/// a block of n Gaussian samples spans about ±2.5σ (n = 32) or ±2σ (n = 16). The bounds
/// leave 25-50% headroom over what this crate's quantizers measure (printed with
/// `--nocapture`); the mixed-scales set is the hardest for the formats with one scale per
/// 256 weights.
fn rms_bound(ty: GgmlType) -> f32 {
    use GgmlType::*;
    match ty {
        F32 => 0.0,
        // Round to nearest: relative error at most 2^-11 and 2^-8 per element.
        F16 => 2.0f32.powi(-11),
        BF16 => 2.0f32.powi(-8),
        // 255 levels over ±amax: step ≈ 2.5σ/127 ⇒ ≈ 0.006σ (measured 0.0062).
        Q8_0 | Q8_1 => 0.01,
        // One f32 scale per 256: ≈ 0.009σ, more when sigma varies within the block
        // (measured 0.016 on mixed scales).
        Q8_K => 0.02,
        // 16 levels, scale max/-8: step ≈ 2.5σ/8 ⇒ ≈ 0.09σ (measured 0.111).
        Q4_0 => 0.14,
        // 16 levels over [min, max]: step ≈ 5σ/15 ⇒ ≈ 0.096σ (measured 0.095).
        Q4_1 => 0.125,
        // 32 levels: half the 4-bit figures (measured 0.054 and 0.042).
        Q5_0 => 0.07,
        Q5_1 => 0.06,
        // 4 levels per 16 weights, fitted scale and minimum, 4-bit sub-scales: step
        // ≈ 3.5σ/3 ⇒ ≈ 0.33σ before the fit (measured 0.287).
        Q2_K => 0.35,
        // 8 signed levels per 16 weights, 6-bit sub-scales: ≈ 0.16σ (measured 0.174).
        Q3_K => 0.22,
        // 16 levels per 32 weights with a fitted scale and minimum (measured 0.085).
        Q4_K => 0.11,
        // 32 levels (measured 0.038).
        Q5_K => 0.05,
        // 64 levels per 16 weights, 8-bit sub-scales (measured 0.020).
        Q6_K => 0.03,
        // 16 non-linear levels, denser near zero, with a fitted scale (measured 0.088).
        IQ4_NL | IQ4_XS => 0.115,
        _ => unreachable!("{ty} is not supported"),
    }
}

/// On the outlier set the bound is this many times [`rms_bound`]: a ±40σ outlier sets the
/// step of its whole block (256 weights for Q8_K), so the other weights there lose
/// precision; relative to the chunk's RMS (≈ 2.7σ with the outlier) the error measured
/// is up to 1.8 times the Gaussian bound.
const OUTLIER_FACTOR: f32 = 2.5;

/// A per-element bound on `|error|` for one block `x`, for the types quantized by plain
/// rounding against a scale derived from the block's extremes; `None` for the types
/// whose scale is searched (their RMS bound is the test). The factors slightly above 1
/// cover the rounding of the scale (and minimum) to f16, at most 2^-11 relative.
fn elem_bound(ty: GgmlType, x: &[f32], v: f32) -> Option<f32> {
    use GgmlType::*;
    let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    let lo = x.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let f16_slack = 1.0 + 2.0f32.powi(-9);
    Some(match ty {
        F32 => 0.0,
        // Round to nearest f16/bf16: half an ulp, which is 2^-25 in f16's subnormal range
        // (below 2^-14).
        F16 => (v.abs() * 2.0f32.powi(-11)).max(2.0f32.powi(-25)),
        BF16 => v.abs() * 2.0f32.powi(-8),
        // Half a step of d = amax/127; Q8_0 levels are rounded against the f32 scale (as
        // ggml), then stored with the f16 one, up to 127 half-ulps (2^-11 relative) away.
        Q8_0 => amax / 127.0 / 2.0 * (1.0 + 127.0 * 2.0f32.powi(-10)),
        Q8_1 => amax / 127.0 / 2.0 * f16_slack,
        Q8_K => amax / 127.0 / 2.0 * (1.0 + 1e-5),
        // d = amax/8 (/16): half a step, except the opposite of the extreme, which can
        // only reach level +7 (+15) and so is off by up to a whole step.
        Q4_0 => amax / 8.0 * f16_slack,
        Q5_0 => amax / 16.0 * f16_slack,
        // Half a step of (max - min)/15 (/31), plus the f16 rounding of the minimum.
        Q4_1 => (hi - lo) / 15.0 / 2.0 * f16_slack + lo.abs() * 2.0f32.powi(-11),
        Q5_1 => (hi - lo) / 31.0 / 2.0 * f16_slack + lo.abs() * 2.0f32.powi(-11),
        _ => return None,
    })
}

/// A standard normal sample (Box–Muller).
fn gaussian(rng: &mut StdRng) -> f32 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random();
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

/// The data sets: Gaussian at three scales (chosen so every f16 scale stays a normal
/// number), Gaussian whose sigma changes every 32 elements over two decades, and
/// Gaussian with one large outlier (±40σ) in every 256 elements.
fn datasets() -> Vec<(&'static str, Vec<f32>)> {
    let mut rng = StdRng::seed_from_u64(0x5EED_0001);
    let mut sets = Vec::new();
    for (name, sigma) in [
        ("gauss*0.05", 0.05f32),
        ("gauss*1", 1.0),
        ("gauss*30", 30.0),
    ] {
        sets.push((name, (0..N).map(|_| sigma * gaussian(&mut rng)).collect()));
    }
    let mut mixed = Vec::with_capacity(N);
    for _ in 0..N / 32 {
        let sigma = 10.0f32.powf(rng.random_range(-1.0..1.0));
        mixed.extend((0..32).map(|_| sigma * gaussian(&mut rng)));
    }
    sets.push(("mixed-scales", mixed));
    let mut outlier: Vec<f32> = (0..N).map(|_| gaussian(&mut rng)).collect();
    for chunk in outlier.chunks_mut(CHUNK) {
        let i = rng.random_range(0..CHUNK);
        chunk[i] = if rng.random::<bool>() { 40.0 } else { -40.0 };
    }
    sets.push(("outlier", outlier));
    sets
}

fn rms(v: impl Iterator<Item = f32>) -> f32 {
    let (s, n) = v.fold((0.0f64, 0usize), |(s, n), x| {
        (s + (x as f64).powi(2), n + 1)
    });
    (s / n as f64).sqrt() as f32
}

#[test]
fn round_trip_error_is_bounded() {
    let sets = datasets();
    for &ty in supported_types() {
        assert!(can_quantize(ty) && can_dequantize(ty));
        let bs = ty.block_size() as usize;
        let mut worst = 0.0f32;
        for (name, x) in &sets {
            let q = quantize_to_vec(ty, x).unwrap();
            assert_eq!(q.len() as u64, ty.bytes_for(x.len() as u64).unwrap());
            let y = dequantize_to_vec(ty, &q).unwrap();
            assert_eq!(y.len(), x.len());
            for (c, (xc, yc)) in x.chunks(CHUNK).zip(y.chunks(CHUNK)).enumerate() {
                let rel = rms(xc.iter().zip(yc).map(|(a, b)| a - b)) / rms(xc.iter().copied());
                assert!(rel.is_finite(), "{ty} {name} chunk {c}: non-finite error");
                let bound = if *name == "outlier" {
                    OUTLIER_FACTOR * rms_bound(ty)
                } else {
                    worst = worst.max(rel);
                    rms_bound(ty)
                };
                assert!(
                    rel <= bound,
                    "{ty} {name} chunk {c}: relative RMS error {rel} > {bound}"
                );
            }
            for (b, (xb, yb)) in x.chunks(bs).zip(y.chunks(bs)).enumerate() {
                for (i, (&a, &r)) in xb.iter().zip(yb).enumerate() {
                    if let Some(bound) = elem_bound(ty, xb, a) {
                        assert!(
                            (a - r).abs() <= bound,
                            "{ty} {name} block {b} elem {i}: {a} -> {r}, bound {bound}"
                        );
                    }
                }
            }
        }
        println!(
            "{ty:7} worst chunk relative RMS error on Gaussian data {worst:.4} (bound {})",
            rms_bound(ty)
        );
    }
}

#[test]
fn zeros_quantize_to_zeros() {
    let x = vec![0.0f32; 2 * 256];
    for &ty in supported_types() {
        let y = dequantize_to_vec(ty, &quantize_to_vec(ty, &x).unwrap()).unwrap();
        assert!(y.iter().all(|&v| v == 0.0), "{ty}: {:?}", &y[..8]);
        // Negative zero and one tiny value among zeros stay finite.
        let mut x2 = x.clone();
        x2[3] = -0.0;
        x2[300] = 1e-30;
        let y = dequantize_to_vec(ty, &quantize_to_vec(ty, &x2).unwrap()).unwrap();
        assert!(y.iter().all(|v| v.is_finite() && v.abs() <= 1e-29), "{ty}");
    }
}

#[test]
fn constant_and_extreme_blocks_stay_finite() {
    for &ty in supported_types() {
        for x in [vec![1.5f32; 256], vec![-3.0f32; 256], {
            let mut v = vec![0.0f32; 256];
            v[0] = 1.0;
            v[255] = -1.0;
            v
        }] {
            let y = dequantize_to_vec(ty, &quantize_to_vec(ty, &x).unwrap()).unwrap();
            let rel = rms(x.iter().zip(&y).map(|(a, b)| a - b)) / rms(x.iter().copied());
            assert!(
                rel <= rms_bound(ty).max(1e-6),
                "{ty}: {rel} for {:?}",
                &x[..2]
            );
        }
    }
}

#[test]
fn non_finite_and_extreme_input_does_not_panic() {
    let mut with_nan = vec![1.0f32; 256];
    with_nan[1] = f32::NAN;
    with_nan[2] = f32::INFINITY;
    with_nan[40] = f32::NEG_INFINITY;
    let huge: Vec<f32> = (0..256)
        .map(|i| {
            if i % 3 == 0 {
                f32::MAX
            } else {
                -1e30 * i as f32
            }
        })
        .collect();
    let tiny: Vec<f32> = (0..256).map(|i| 1e-42 * (i as f32 - 128.0)).collect();
    let mut mixed = tiny.clone();
    mixed[7] = 1e38;
    for &ty in supported_types() {
        for x in [&with_nan, &huge, &tiny, &mixed, &vec![f32::NAN; 256]] {
            let q = quantize_to_vec(ty, x).unwrap();
            dequantize_to_vec(ty, &q).unwrap();
        }
    }
}
