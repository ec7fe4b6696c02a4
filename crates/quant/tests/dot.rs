//! The dot-product kernels: every tier this CPU runs against the scalar reference, the
//! scalar reference against an f64 dot product of the dequantized rows, and the activation
//! quantizers against `quant::quantize`, byte for byte.

use gguf::GgmlType;
use quant::dot::{quantize_activations_for, ISA_ENV};
use quant::{
    activation_type, dequantize_to_vec, dot_fn, dot_fn_for, dot_isa, dot_scalar,
    quantize_activations, quantize_to_vec, Isa, Operation, QuantError,
};
use rand::rngs::StdRng;
use rand::SeedableRng;
use testkit::gaussian;

/// Every type that can be a weight.
const WEIGHTS: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::IQ4_NL,
    GgmlType::IQ4_XS,
];

/// SIMD kernels may only reorder f32 additions: |simd - scalar| <= this × sum|w a|.
const SIMD_TOL: f64 = 1e-5;
/// The reference's integer sums are exact; what is left is f32 rounding of the block
/// scales' products and the running sum: |scalar - exact| <= this × sum|w a|.
const REF_TOL: f64 = 1e-4;

/// Row lengths to try for `w`: one block, two blocks, 4096 and 14336 (and, for the float
/// types, lengths that leave SIMD tails).
fn lengths(w: GgmlType) -> Vec<usize> {
    let b = w.block_size() as usize;
    let mut v = vec![b, 2 * b, 4096, 14336];
    if b == 1 {
        v.extend([3, 8, 15, 33, 100, 1001]);
    }
    v
}

/// A quantized weight row and activation row of `n` elements, with the f64 dot product of
/// their dequantized values and `sum |w_i a_i|`.
struct Case {
    n: usize,
    w: Vec<u8>,
    a: Vec<u8>,
    exact: f64,
    abs: f64,
}

fn case(w: GgmlType, n: usize, rng: &mut StdRng, outliers: bool) -> Case {
    let mut wf = gaussian(rng, n, 0.05);
    let mut xf = gaussian(rng, n, 1.0);
    if outliers {
        // A few large activations and a shifted weight range (minimums matter).
        for i in (0..n).step_by(97) {
            xf[i] *= 20.0;
        }
        for v in wf.iter_mut().take(n / 2) {
            *v += 0.03;
        }
    }
    let wq = quantize_to_vec(w, &wf).unwrap();
    let at = activation_type(w);
    let mut aq = vec![0u8; at.bytes_for(n as u64).unwrap() as usize];
    quantize_activations(w, &xf, &mut aq).unwrap();
    let wd = dequantize_to_vec(w, &wq).unwrap();
    let ad = dequantize_to_vec(at, &aq).unwrap();
    let exact = wd.iter().zip(&ad).map(|(&w, &a)| w as f64 * a as f64).sum();
    let abs: f64 = wd
        .iter()
        .zip(&ad)
        .map(|(&w, &a)| (w as f64 * a as f64).abs())
        .sum();
    assert!(abs > 0.0, "{w} n={n}: all-zero test data");
    Case {
        n,
        w: wq,
        a: aq,
        exact,
        abs,
    }
}

#[test]
fn scalar_reference_matches_exact_dot() {
    let mut rng = StdRng::seed_from_u64(1);
    for &w in WEIGHTS {
        let f = dot_scalar(w).unwrap_or_else(|| panic!("{w}: no scalar kernel"));
        for n in lengths(w) {
            for outliers in [false, true] {
                let c = case(w, n, &mut rng, outliers);
                let got = f(c.n, &c.w, &c.a) as f64;
                let err = (got - c.exact).abs() / c.abs;
                assert!(
                    err < REF_TOL,
                    "{w} n={n}: scalar {got} vs exact {} (relative error {err:e})",
                    c.exact
                );
            }
        }
    }
}

#[test]
fn every_tier_matches_scalar_reference() {
    let mut rng = StdRng::seed_from_u64(2);
    let mut tested = 0;
    for &w in WEIGHTS {
        let reference = dot_scalar(w).unwrap();
        for n in lengths(w) {
            for outliers in [false, true] {
                let c = case(w, n, &mut rng, outliers);
                let want = reference(c.n, &c.w, &c.a) as f64;
                for isa in Isa::ALL {
                    let Some(f) = dot_fn_for(w, isa) else {
                        continue;
                    };
                    let got = f(c.n, &c.w, &c.a) as f64;
                    let err = (got - want).abs() / c.abs;
                    assert!(
                        err < SIMD_TOL,
                        "{w} {isa} n={n}: {got} vs scalar {want} (relative error {err:e})"
                    );
                    tested += 1;
                }
            }
        }
    }
    eprintln!(
        "{tested} kernel runs compared; this CPU: {}",
        Isa::detected()
    );
}

/// Rows at odd addresses: kernels must not assume any alignment.
#[test]
fn unaligned_rows() {
    let mut rng = StdRng::seed_from_u64(3);
    for &w in WEIGHTS {
        let c = case(w, 4096, &mut rng, false);
        let mut wbuf = vec![0u8; c.w.len() + 1];
        wbuf[1..].copy_from_slice(&c.w);
        let mut abuf = vec![0u8; c.a.len() + 3];
        abuf[3..].copy_from_slice(&c.a);
        for isa in Isa::ALL {
            let Some(f) = dot_fn_for(w, isa) else {
                continue;
            };
            let aligned = f(c.n, &c.w, &c.a);
            let odd = f(c.n, &wbuf[1..], &abuf[3..]);
            assert_eq!(aligned.to_bits(), odd.to_bits(), "{w} {isa}");
        }
    }
}

#[test]
fn tiers_exist_for_every_weight_type() {
    for &w in WEIGHTS {
        assert!(dot_scalar(w).is_some(), "{w}");
        assert!(dot_fn(w).is_some(), "{w}");
        for isa in Isa::ALL {
            if isa.is_available() && cfg!(target_arch = "x86_64") {
                assert!(dot_fn_for(w, isa).is_some(), "{w}: no {isa} kernel");
            }
        }
        let picked = dot_isa(w);
        assert!(
            Isa::from_name(picked).is_some_and(|i| i <= Isa::selected()),
            "{w}: {picked}"
        );
    }
    for &t in &[
        GgmlType::Q8_1,
        GgmlType::Q8_K,
        GgmlType::I32,
        GgmlType::IQ2_XXS,
    ] {
        assert!(dot_fn(t).is_none() && dot_scalar(t).is_none(), "{t}");
        for isa in Isa::ALL {
            assert!(dot_fn_for(t, isa).is_none(), "{t} {isa}");
        }
    }
}

#[test]
fn activation_types_follow_ggml() {
    use GgmlType::*;
    for (w, a) in [
        (F32, F32),
        (F16, F32),
        (BF16, F32),
        (Q4_0, Q8_0),
        (Q5_0, Q8_0),
        (Q8_0, Q8_0),
        (IQ4_NL, Q8_0),
        (Q4_1, Q8_1),
        (Q5_1, Q8_1),
        (Q2_K, Q8_K),
        (Q3_K, Q8_K),
        (Q4_K, Q8_K),
        (Q5_K, Q8_K),
        (Q6_K, Q8_K),
        (IQ4_XS, Q8_K),
    ] {
        assert_eq!(activation_type(w), a, "{w}");
    }
}

/// Rows of the test models' own weight tensors (every weight type they use, real scale
/// and minimum distributions): each tier against the scalar reference, the reference
/// against the exact dot product.
#[test]
fn real_model_rows() {
    let mut rng = StdRng::seed_from_u64(5);
    let mut types = std::collections::BTreeSet::new();
    for model in ["smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b"] {
        let path = registry::test_model(model);
        let g = gguf::Gguf::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut per_type = std::collections::HashMap::new();
        for t in g.tensors() {
            let w = t.ggml_type();
            let count = per_type.entry(w).or_insert(0);
            if dot_scalar(w).is_none() || t.dims().len() != 2 || *count == 2 {
                continue;
            }
            *count += 1;
            types.insert(w.name());
            let n = t.dims()[0] as usize;
            let at = activation_type(w);
            let x = gaussian(&mut rng, n, 1.0);
            let mut a = vec![0u8; at.bytes_for(n as u64).unwrap() as usize];
            quantize_activations(w, &x, &mut a).unwrap();
            let ad = dequantize_to_vec(at, &a).unwrap();
            let row_bytes = w.bytes_for(n as u64).unwrap() as usize;
            for row in g
                .tensor_data(t)
                .chunks_exact(row_bytes)
                .step_by(37)
                .take(24)
            {
                let wd = dequantize_to_vec(w, row).unwrap();
                let exact: f64 = wd.iter().zip(&ad).map(|(&w, &a)| w as f64 * a as f64).sum();
                let abs: f64 = wd
                    .iter()
                    .zip(&ad)
                    .map(|(&w, &a)| (w as f64 * a as f64).abs())
                    .sum();
                let want = dot_scalar(w).unwrap()(n, row, &a) as f64;
                let what = format!("{model} {} ({w}, n={n})", t.name());
                assert!(
                    (want - exact).abs() <= REF_TOL * abs,
                    "{what}: scalar {want} vs {exact}"
                );
                for isa in Isa::ALL {
                    if let Some(f) = dot_fn_for(w, isa) {
                        let got = f(n, row, &a) as f64;
                        assert!(
                            (got - want).abs() <= SIMD_TOL * abs,
                            "{what} {isa}: {got} vs scalar {want}"
                        );
                    }
                }
            }
        }
    }
    eprintln!("weight types in the test models: {types:?}");
}

/// Inputs that probe the rounding and the special cases of the activation quantizers.
fn awkward_rows(rng: &mut StdRng, n: usize) -> Vec<Vec<f32>> {
    let mut rows = vec![
        gaussian(rng, n, 1.0),
        gaussian(rng, n, 1e-3),
        gaussian(rng, n, 3e4),
        vec![0.0; n],
        vec![-0.0; n],
    ];
    // Exact halves between levels: with amax 127 the scale is 1.
    let mut halves: Vec<f32> = (0..n).map(|i| (i % 255) as f32 - 127.0 + 0.5).collect();
    halves.iter_mut().step_by(32).for_each(|v| *v = 127.0);
    rows.push(halves);
    // NaN, infinities, subnormals, huge values, isolated in a few blocks.
    let mut special = gaussian(rng, n, 1.0);
    for (i, v) in [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        1e-40,
        -1e-42,
        f32::MAX,
        -3e38,
        1e-8,
    ]
    .into_iter()
    .enumerate()
    {
        let at = (i * 37 * 13) % n;
        special[at] = v;
    }
    rows.push(special);
    // One block of NaN only, one with a single tiny value.
    let mut nan_block = gaussian(rng, n, 1.0);
    nan_block[..32].fill(f32::NAN);
    nan_block[256..288].fill(0.0);
    nan_block[260] = 1e-30;
    rows.push(nan_block);
    rows
}

#[test]
fn activation_quantizers_match_quantize_bit_for_bit() {
    let mut rng = StdRng::seed_from_u64(4);
    let n = 14336;
    for w in [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q4_K,
        GgmlType::F16,
    ] {
        let at = activation_type(w);
        for (r, x) in awkward_rows(&mut rng, n).iter().enumerate() {
            let want = quantize_to_vec(at, x).unwrap();
            for isa in Isa::ALL {
                let mut got = vec![0xAAu8; want.len()];
                quantize_activations_for(w, isa, x, &mut got).unwrap();
                if got != want {
                    let bs = at.type_size() as usize;
                    let first = got.iter().zip(&want).position(|(a, b)| a != b).unwrap();
                    panic!(
                        "{at} via {isa}, row {r}: block {} differs at byte {}",
                        first / bs,
                        first % bs
                    );
                }
            }
        }
    }
}

#[test]
fn activation_quantizer_errors() {
    let x = [0.5f32; 64];
    let mut out = [0u8; 68];
    assert_eq!(
        quantize_activations(GgmlType::Q8_K, &x, &mut out),
        Err(QuantError::Unsupported {
            ty: GgmlType::Q8_K,
            op: Operation::Quantize
        })
    );
    assert!(matches!(
        quantize_activations(GgmlType::Q4_K, &x, &mut out),
        Err(QuantError::PartialBlockElems { len: 64, .. })
    ));
    assert!(matches!(
        quantize_activations(GgmlType::Q4_0, &x, &mut out[..67]),
        Err(QuantError::DstLength {
            expected: 68,
            actual: 67,
            ..
        })
    ));
    quantize_activations(GgmlType::Q4_0, &x, &mut out).unwrap();
}

#[test]
#[should_panic(expected = "dot product of 64 elements")]
fn short_rows_panic() {
    let f = dot_fn(GgmlType::Q4_0).unwrap();
    f(64, &[0u8; 36], &[0u8; 67]);
}

#[test]
fn short_rows_panic_in_every_tier() {
    for &w in WEIGHTS {
        for isa in Isa::ALL {
            let Some(f) = dot_fn_for(w, isa) else {
                continue;
            };
            let n = w.block_size() as usize * 2;
            let wl = w.bytes_for(n as u64).unwrap() as usize;
            let al = activation_type(w).bytes_for(n as u64).unwrap() as usize;
            for (wl, al, n) in [(wl - 1, al, n), (wl, al - 1, n), (wl, al, n + 1)] {
                let (wb, ab) = (vec![0u8; wl], vec![0u8; al]);
                let r = std::panic::catch_unwind(|| f(n, &wb, &ab));
                assert!(
                    r.is_err(),
                    "{w} {isa}: {wl} / {al} bytes for n = {n} accepted"
                );
            }
        }
    }
}

#[test]
fn empty_rows_are_zero() {
    for &w in WEIGHTS {
        for isa in Isa::ALL {
            if let Some(f) = dot_fn_for(w, isa) {
                assert_eq!(f(0, &[], &[]), 0.0, "{w} {isa}");
            }
        }
    }
}

/// Run by `isa_cap_is_honoured` in a child process with `SURPLUS_CPU_ISA` set (the
/// selection is made once per process); does nothing when the variable is not set.
#[test]
#[ignore = "run by isa_cap_is_honoured"]
fn isa_cap_child() {
    let Ok(cap) = std::env::var(ISA_ENV) else {
        return;
    };
    let cap = Isa::from_name(&cap).expect("a tier name");
    let want = cap.min(Isa::detected());
    assert_eq!(Isa::selected(), want);
    for &w in WEIGHTS {
        assert_eq!(dot_isa(w), want.name(), "{w}");
    }
}

#[test]
fn isa_cap_is_honoured() {
    let exe = std::env::current_exe().unwrap();
    for cap in ["scalar", "avx2", "AVX512"] {
        let out = std::process::Command::new(&exe)
            .args(["isa_cap_child", "--exact", "--ignored", "--test-threads=1"])
            .env(ISA_ENV, cap)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("1 passed"),
            "{ISA_ENV}={cap}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The multi-row kernels give each activation row exactly the bits its single dot gives.
#[test]
fn multi_row_dots_equal_single_dots_bit_for_bit() {
    let mut rng = StdRng::seed_from_u64(77);
    let mut covered = 0;
    for &w in WEIGHTS {
        let Some(multi) = quant::dot::dot_multi_fn(w) else {
            continue;
        };
        covered += 1;
        let single = dot_fn(w).unwrap();
        for n in lengths(w) {
            let cases: Vec<Case> = (0..4).map(|i| case(w, n, &mut rng, i % 2 == 1)).collect();
            for k in 1..=4 {
                let acts: Vec<&[u8]> = cases[..k].iter().map(|c| c.a.as_slice()).collect();
                let mut out = vec![0f32; k];
                multi(n, &cases[0].w, &acts, &mut out);
                for (t, c) in cases[..k].iter().enumerate() {
                    let want = single(n, &cases[0].w, &c.a);
                    assert_eq!(out[t].to_bits(), want.to_bits(), "{w} n={n} k={k} row {t}");
                }
            }
        }
    }
    if Isa::selected() >= Isa::Avx512 {
        assert_eq!(covered, 2, "Q4_K and Q6_K have multi-row kernels");
    }
}

/// Kernels over prepared activation rows give each row exactly the bits of the single dot.
#[test]
fn prepared_rows_give_the_single_dots_bits() {
    let mut rng = StdRng::seed_from_u64(78);
    let mut covered = 0;
    for &w in WEIGHTS {
        let Some(p) = quant::dot::prepared_fn(w) else {
            continue;
        };
        covered += 1;
        let single = dot_fn(w).unwrap();
        for n in lengths(w).into_iter().chain([96, 160, 576]) {
            let cases: Vec<Case> = (0..4).map(|i| case(w, n, &mut rng, i % 2 == 0)).collect();
            let prepared: Vec<Vec<u8>> = cases
                .iter()
                .map(|c| {
                    let mut out = vec![0u8; (p.len)(n)];
                    (p.prepare)(n, &c.a, &mut out);
                    out
                })
                .collect();
            for k in 1..=4 {
                let rows: Vec<&[u8]> = prepared[..k].iter().map(|v| v.as_slice()).collect();
                let mut out = vec![0f32; k];
                (p.multi)(n, &cases[0].w, &rows, &mut out);
                for (t, c) in cases[..k].iter().enumerate() {
                    let want = single(n, &cases[0].w, &c.a);
                    assert_eq!(out[t].to_bits(), want.to_bits(), "{w} n={n} k={k} row {t}");
                }
            }
        }
    }
    if Isa::selected() >= Isa::Avx512 {
        assert_eq!(
            covered, 4,
            "Q4_0, Q4_1, Q5_0 and Q5_1 have prepared kernels"
        );
    }
}
