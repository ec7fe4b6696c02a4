//! Weights repacked sixteen rows at a time: the repacked matrix gives back every row as it
//! was, the AVX-512 kernel equals the scalar reference bit for bit (so a token's result
//! does not depend on the other tokens of its call), and both match an f64 product of the
//! dequantized weights and the 8-bit activations.

use gguf::GgmlType;
use quant::rows16::{self, ROWS};
use quant::{dequantize_to_vec, quantize_to_vec, Isa};
use rand::rngs::StdRng;
use rand::SeedableRng;

const TYPES: &[GgmlType] = &[
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q4_K,
    GgmlType::Q6_K,
];

/// Row lengths to try: whole blocks (of 256 for K-quants).
fn widths(ty: GgmlType) -> &'static [usize] {
    if ty.block_size() == 256 {
        &[256, 768]
    } else {
        &[32, 96, 576]
    }
}

/// Values with a spread of magnitudes (and some outliers), never all zero.
fn values(rng: &mut StdRng, n: usize) -> Vec<f32> {
    testkit::spread_values(rng, n, 0.05)
}

/// A random `rows` × `cols` matrix of `ty`, repacked: (GGUF bytes, repacked bytes).
fn matrix(rng: &mut StdRng, ty: GgmlType, rows: usize, cols: usize) -> (Vec<u8>, Vec<u8>) {
    let src = quantize_to_vec(ty, &values(rng, rows * cols)).unwrap();
    let mut packed = vec![0u8; rows16::packed_bytes(ty, rows, cols)];
    assert!(rows16::pack(ty, rows, cols, &src, &mut packed));
    (src, packed)
}

fn acts(rng: &mut StdRng, n: usize, cols: usize) -> (Vec<Vec<u8>>, Vec<Vec<f64>>) {
    (0..n)
        .map(|_| {
            let x = values(rng, cols);
            let mut a = vec![0u8; rows16::act_bytes(cols)];
            rows16::quantize_act(&x, &mut a);
            // The quantized values, in f64.
            let d: Vec<f32> = (0..cols / 32)
                .map(|b| f32::from_le_bytes(a[cols + 4 * b..cols + 4 * b + 4].try_into().unwrap()))
                .collect();
            let q = (0..cols)
                .map(|k| a[k] as i8 as f64 * d[k / 32] as f64)
                .collect();
            (a, q)
        })
        .unzip()
}

#[test]
fn rows_come_back_unchanged() {
    let mut rng = StdRng::seed_from_u64(1);
    for &ty in TYPES {
        for rows in [1, 16, 37] {
            let cols = widths(ty)[1];
            let (src, packed) = matrix(&mut rng, ty, rows, cols);
            let rb = ty.bytes_for(cols as u64).unwrap() as usize;
            let mut row = vec![0u8; rb];
            for r in 0..rows {
                assert!(rows16::unpack_row(ty, cols, &packed, r, &mut row));
                assert_eq!(row, src[r * rb..(r + 1) * rb], "{ty:?} row {r} of {rows}");
            }
        }
    }
}

#[test]
fn refuses_bad_sizes() {
    let ty = GgmlType::Q4_0;
    let src = vec![0u8; 18 * 2];
    let mut dst = vec![0u8; rows16::packed_bytes(ty, 1, 64)];
    assert!(rows16::pack(ty, 1, 64, &src, &mut dst));
    assert!(!rows16::pack(ty, 2, 64, &src, &mut dst));
    assert!(!rows16::pack(GgmlType::Q4_K, 1, 256, &src, &mut dst));
    assert!(!rows16::pack(ty, 1, 48, &src[..27], &mut dst));
    assert!(!rows16::cols_ok(GgmlType::Q6_K, 96));
}

#[test]
fn kernel_matches_scalar_and_f64() {
    let mut rng = StdRng::seed_from_u64(2);
    let simd = rows16::isa();
    for &ty in TYPES {
        for &cols in widths(ty) {
            let rows = 2 * ROWS;
            let (src, packed) = matrix(&mut rng, ty, rows, cols);
            let w = dequantize_to_vec(ty, &src).unwrap();
            let gb = rows16::group_bytes(ty, cols);
            for n in 1..=rows16::MAX_TOKENS {
                let (a, q) = acts(&mut rng, n, cols);
                let a: Vec<&[u8]> = a.iter().map(|a| a.as_slice()).collect();
                for g in 0..rows / ROWS {
                    let group = &packed[g * gb..(g + 1) * gb];
                    let mut scalar = vec![[0.0f32; ROWS]; n];
                    rows16::kernel(None, ty, cols, group, &a, &mut scalar);
                    if simd.is_some() {
                        let mut fast = vec![[0.0f32; ROWS]; n];
                        rows16::kernel(simd, ty, cols, group, &a, &mut fast);
                        for (t, (f, s)) in fast.iter().zip(&scalar).enumerate() {
                            for r in 0..ROWS {
                                assert_eq!(
                                    f[r].to_bits(),
                                    s[r].to_bits(),
                                    "{ty:?} {cols} n {n} t {t} r {r}"
                                );
                            }
                            // Alone, the token gets the same bits.
                            let mut one = [[0.0f32; ROWS]];
                            rows16::kernel(simd, ty, cols, group, &a[t..t + 1], &mut one);
                            assert_eq!(one[0].map(f32::to_bits), f.map(f32::to_bits));
                        }
                    }
                    for (t, s) in scalar.iter().enumerate() {
                        for r in 0..ROWS {
                            let row = &w[(g * ROWS + r) * cols..(g * ROWS + r + 1) * cols];
                            let mut exact: f64 =
                                row.iter().zip(&q[t]).map(|(&w, &x)| w as f64 * x).sum();
                            if let GgmlType::Q4_1 | GgmlType::Q5_1 = ty {
                                // Each block's minimum times the activations' sum as ggml's
                                // Q8_1 holds it (field 4 of the activations), not as the
                                // sum of the levels × the f16 scale.
                                let bb = ty.bytes_for(32).unwrap() as usize;
                                let rb = (cols / 32) * bb;
                                let at = (g * ROWS + r) * rb;
                                let nb = cols / 32;
                                for b in 0..nb {
                                    let o = at + b * bb + 2;
                                    let m = half::f16::from_le_bytes([src[o], src[o + 1]]);
                                    let f = cols + 16 * nb + 4 * b;
                                    let held =
                                        f32::from_le_bytes(a[t][f..f + 4].try_into().unwrap());
                                    let sum: f64 = q[t][32 * b..32 * b + 32].iter().sum();
                                    exact += m.to_f64() * (held as f64 - sum);
                                }
                            }
                            let norm: f64 = row
                                .iter()
                                .zip(&q[t])
                                .map(|(&w, &x)| (w as f64 * x).abs())
                                .sum();
                            let err = (s[r] as f64 - exact).abs() / norm;
                            assert!(
                                err < 1e-5,
                                "{ty:?} {cols} t {t} r {r}: {} vs {exact} (rel {err:e})",
                                s[r]
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn avx512_is_used_where_available() {
    if Isa::selected() >= Isa::Avx512 {
        assert_eq!(rows16::isa(), Some(Isa::Avx512));
    }
}
