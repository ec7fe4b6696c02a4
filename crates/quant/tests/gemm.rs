//! The int8 GEMM: unpacked rows reproduce the dequantized weights, the AVX-512 activation
//! packing equals the scalar one byte for byte, the AVX-512 micro-kernel matches the scalar
//! reference, and both match an f64 product of the dequantized weights and the 8-bit
//! activations.

use gguf::GgmlType;
use quant::gemm::{self, A_CHUNK, CHUNK};
use quant::{dequantize_to_vec, quantize_to_vec, Isa};
use rand::rngs::StdRng;
use rand::SeedableRng;

const TYPES: &[GgmlType] = &[
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::IQ4_NL,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

/// Values with a spread of magnitudes (and some outliers), never all zero.
fn values(rng: &mut StdRng, n: usize) -> Vec<f32> {
    testkit::spread_values(rng, n, 0.0)
}

fn weights(rng: &mut StdRng, ty: GgmlType, rows: usize, cols: usize) -> (Vec<u8>, Vec<f32>) {
    let bytes = quantize_to_vec(ty, &values(rng, rows * cols)).unwrap();
    let deq = dequantize_to_vec(ty, &bytes).unwrap();
    (bytes, deq)
}

#[test]
fn unpacked_rows_are_the_dequantized_weights() {
    let mut rng = StdRng::seed_from_u64(1);
    let cols = 512;
    for &ty in TYPES {
        assert!(gemm::supported(ty));
        let (bytes, deq) = weights(&mut rng, ty, 1, cols);
        let (mut q, mut s, mut b) = (vec![0u8; cols], vec![0.0; cols / 16], vec![0.0; cols / 32]);
        let off = match gemm::offset_shift(ty) {
            0 => 0.0,
            sh => (1u32 << sh) as f32,
        };
        assert!(gemm::unpack_row(None, ty, &bytes, &mut q, &mut s, &mut b));
        let (mut q2, mut s2, mut b2) =
            (vec![0u8; cols], vec![0.0; cols / 16], vec![0.0; cols / 32]);
        assert!(gemm::unpack_row(
            gemm::isa(),
            ty,
            &bytes,
            &mut q2,
            &mut s2,
            &mut b2
        ));
        assert_eq!(
            (&q, &s, &b),
            (&q2, &s2, &b2),
            "{ty:?}: SIMD and scalar unpacking differ"
        );
        for k in 0..cols {
            let v = s[k / 16] * (q[k] as f32 - off) + b[k / 32];
            let tol = 1e-6 * deq[k].abs().max(1e-3);
            assert!(
                (v - deq[k]).abs() <= tol,
                "{ty:?} element {k}: {v} vs {}",
                deq[k]
            );
        }
        assert_eq!(b.iter().any(|&x| x != 0.0), gemm::has_bias(ty), "{ty:?}");
        // A row of the wrong size is refused.
        assert!(!gemm::unpack_row(
            None,
            ty,
            &bytes[1..],
            &mut q,
            &mut s,
            &mut b
        ));
    }
    assert!(!gemm::supported(GgmlType::F32));
}

fn f32_at(b: &[u8], o: usize) -> f32 {
    f32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}

/// The activations a panel holds, dequantized: `x[t][k]`.
fn panel_values(panel: &[u8], cols: usize) -> Vec<Vec<f64>> {
    (0..4)
        .map(|t| {
            (0..cols)
                .map(|k| {
                    let c = &panel[(k / CHUNK) * A_CHUNK..];
                    let e = k % CHUNK;
                    let q = c[t * 64 + e] as i8 as i32;
                    q as f64 * f32_at(c, 256 + t * 64 + 4 * (e / 4)) as f64
                })
                .collect()
        })
        .collect()
}

#[test]
fn products_match_f64_and_the_scalar_kernel() {
    let mut rng = StdRng::seed_from_u64(2);
    let isa = gemm::isa();
    for &ty in TYPES {
        for (n_rows, n_tok, cols) in [(4, 4, 256), (3, 2, 768), (4, 1, 2048)] {
            let (bytes, deq) = weights(&mut rng, ty, n_rows, cols);
            let row_bytes = bytes.len() / n_rows;
            let rows: Vec<&[u8]> = bytes.chunks_exact(row_bytes).collect();
            let (mut q, mut s16) = (vec![0u8; cols], vec![0f32; cols / 16]);
            let mut wpanel = vec![0u8; gemm::weight_panel_bytes(cols)];
            let mut bias = vec![0f32; 4 * cols / 32];
            let mut wpanel_ref = vec![0u8; gemm::weight_panel_bytes(cols)];
            assert!(gemm::pack_weights(
                None,
                ty,
                &rows,
                cols,
                &mut q,
                &mut s16,
                &mut wpanel_ref,
                &mut bias
            ));
            assert!(gemm::pack_weights(
                isa,
                ty,
                &rows,
                cols,
                &mut q,
                &mut s16,
                &mut wpanel,
                &mut bias
            ));

            assert!(
                wpanel == wpanel_ref,
                "{ty:?}: SIMD and scalar weight panels differ"
            );

            let x: Vec<Vec<f32>> = (0..n_tok).map(|_| values(&mut rng, cols)).collect();
            let xr: Vec<&[f32]> = x.iter().map(|v| v.as_slice()).collect();
            let mut apanel = vec![0u8; gemm::act_panel_bytes(cols)];
            let mut sums = vec![0f32; 4 * cols / 32];
            gemm::pack_acts(&xr, cols, &mut apanel, &mut sums);
            let mut apanel_ref = vec![0u8; apanel.len()];
            let mut sums_ref = vec![0f32; sums.len()];
            gemm::pack_acts_scalar(&xr, cols, &mut apanel_ref, &mut sums_ref);
            assert_eq!(apanel, apanel_ref, "{ty:?}: SIMD and scalar packing differ");
            assert_eq!(sums, sums_ref);
            let xq = panel_values(&apanel, cols);

            // Token 0 alone gives the same bits as in the full panel.
            let mut alone = [[0f32; 4]; 4];
            let b0 = gemm::has_bias(ty).then_some((bias.as_slice(), sums.as_slice()));
            gemm::kernel(isa, ty, 1, cols / CHUNK, &wpanel, &apanel, b0, &mut alone);
            let mut fast = [[0f32; 4]; 4];
            let mut reference = [[0f32; 4]; 4];
            let b = gemm::has_bias(ty).then_some((bias.as_slice(), sums.as_slice()));
            gemm::kernel(isa, ty, n_tok, cols / CHUNK, &wpanel, &apanel, b, &mut fast);
            gemm::kernel(
                None,
                ty,
                n_tok,
                cols / CHUNK,
                &wpanel,
                &apanel,
                b,
                &mut reference,
            );
            for r in 0..4 {
                for t in 0..n_tok {
                    let (exact, mag) = if r < n_rows {
                        let w = &deq[r * cols..(r + 1) * cols];
                        let e: f64 = w.iter().zip(&xq[t]).map(|(&w, &a)| w as f64 * a).sum();
                        let m: f64 = w
                            .iter()
                            .zip(&xq[t])
                            .map(|(&w, &a)| (w as f64 * a).abs())
                            .sum();
                        (e, m)
                    } else {
                        (0.0, 1.0)
                    };
                    let (f, s) = (fast[r][t] as f64, reference[r][t] as f64);
                    assert!(
                        (f - s).abs() <= 1e-5 * mag,
                        "{ty:?} ({r},{t}): simd {f} vs scalar {s}"
                    );
                    assert!(
                        (s - exact).abs() <= 1e-5 * mag,
                        "{ty:?} ({r},{t}): {s} vs f64 {exact}"
                    );
                }
            }
        }
    }
    if Isa::detected() >= Isa::Avx512 {
        assert_eq!(isa.is_some(), Isa::selected() >= Isa::Avx512);
    }
}
