//! CPU backend operations against plain f64 references on random data: the three matmul
//! paths (8-bit activations × dot products for decode; int8 GEMM or dequantize + f32 GEMM
//! for prompts) for several weight types, a token's result independent of its batch, and
//! attention over several sequences with grouped heads and a sliding window.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use runtime::cpu::CpuBackend;
use runtime::{Attention, Batch, Bytes, Ops, Plan, Weight};
use runtime::{KvConfig, GEMM_MIN_TOKENS};

fn random(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn kv(n_layers: usize, kv_dim: usize) -> KvConfig {
    KvConfig {
        n_layers,
        kv_dim,
        n_ctx: 64,
        n_seq: 3,
        k_type: runtime::KvType::F32,
        v_type: runtime::KvType::F32,
    }
}

/// Writes `rows` into an activation buffer through the embedding op: tokens index rows of an
/// F32 "embedding" holding the values.
fn load_rows<O: Ops>(o: &O, table: &Weight, out: runtime::Act) {
    o.embed(table, out);
}

fn check_matmul(ty: quant::GgmlType, n_tok: usize, tol: f64) {
    check_matmul_as(ty, n_tok, tol, false);
}

/// As [`check_matmul`], with the weight repacked sixteen rows at a time when `repack`.
fn check_matmul_as(ty: quant::GgmlType, n_tok: usize, tol: f64, repack: bool) {
    let mut rng = StdRng::seed_from_u64(7 + n_tok as u64 + ty as u64);
    // 90 rows: the last group of sixteen is partial.
    let (cols, rows) = (256, if repack { 90 } else { 96 });
    let wf = random(&mut rng, cols * rows);
    let bytes = quant::quantize_to_vec(ty, &wf).unwrap();
    let wq = Weight::new(ty, cols, rows, Bytes::from_vec(bytes)).unwrap();
    let wq = if repack {
        let p = wq.repacked().unwrap();
        assert_eq!(p.layout(), runtime::Layout::Rows16);
        p
    } else {
        wq
    };
    let wdeq = wq.to_f32().unwrap();
    let xs = random(&mut rng, cols * n_tok);
    let table = Weight::from_f32(cols, n_tok, &xs).unwrap();
    let mut plan = Plan::new();
    let x = plan.act(cols);
    let y = plan.act(rows);
    let mut be = CpuBackend::new(&plan, 32, kv(1, 8), 2);
    let batch = Batch::one_sequence(&(0..n_tok as u32).collect::<Vec<_>>(), 0, 0, true);
    be.forward(&batch, n_tok, |o| {
        load_rows(o, &table, x);
        o.matmul(n_tok, &wq, x, y);
    })
    .unwrap();
    let got = be.read(y, n_tok).to_vec();
    for t in 0..n_tok {
        for r in 0..rows {
            let want: f64 = (0..cols)
                .map(|c| wdeq[r * cols + c] as f64 * xs[t * cols + c] as f64)
                .sum();
            let scale: f64 = (0..cols)
                .map(|c| (wdeq[r * cols + c] as f64 * xs[t * cols + c] as f64).abs())
                .sum();
            let err = (got[t * rows + r] as f64 - want).abs() / scale;
            assert!(err < tol, "{ty} n={n_tok} t={t} r={r}: rel err {err}");
        }
    }
}

#[test]
fn matmul_both_paths_match_f64() {
    use quant::GgmlType::*;
    for ty in [
        F32, F16, Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q5_K, Q6_K, Q2_K, Q3_K, IQ4_NL, IQ4_XS,
    ] {
        // Decode path: activations rounded to 8 bits (relative error about 1/127 worst case).
        check_matmul(ty, 1, 2e-2);
        check_matmul(ty, 3, 2e-2);
        // Prompt path: the int8 GEMM where this CPU has it for the type (activations
        // rounded to 8 bits again), else an f32 GEMM over dequantized rows, close to exact.
        let tol = if quant::gemm::isa().is_some() && quant::gemm::supported(ty) {
            2e-2
        } else {
            1e-5
        };
        check_matmul(ty, GEMM_MIN_TOKENS, tol);
        check_matmul(ty, 19, tol);
    }
}

/// Runs one matmul over `tokens` rows of `xs` placed at the given (seq, pos) and returns
/// the outputs.
fn matmul_batch(w: &Weight, xs: &[f32], place: &[(u32, u32)]) -> Vec<f32> {
    let (cols, n) = (w.cols, place.len());
    let table = Weight::from_f32(cols, n, xs).unwrap();
    let mut plan = Plan::new();
    let x = plan.act(cols);
    let y = plan.act(w.rows);
    let mut be = CpuBackend::new(&plan, 32, kv(1, 8), 2);
    let batch = Batch {
        tokens: (0..n as u32).collect(),
        pos: place.iter().map(|p| p.1).collect(),
        seq: place.iter().map(|p| p.0).collect(),
        logits: vec![],
        ..Default::default()
    };
    be.forward(&batch, n, |o| {
        load_rows(o, &table, x);
        o.matmul(n, w, x, y);
    })
    .unwrap();
    be.read(y, n).to_vec()
}

#[test]
fn repacked_matmul_matches_f64() {
    use quant::GgmlType::*;
    for ty in [Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q6_K] {
        // One kernel for every batch: activations rounded to 8 bits.
        for n in [1, 3, GEMM_MIN_TOKENS, 19] {
            check_matmul_as(ty, n, 2e-2, true);
        }
    }
}

#[test]
fn a_repacked_token_does_not_depend_on_its_batch() {
    let mut rng = StdRng::seed_from_u64(12);
    let (cols, rows) = (256, 40);
    for ty in [
        quant::GgmlType::Q4_1,
        quant::GgmlType::Q5_0,
        quant::GgmlType::Q8_0,
    ] {
        let bytes = quant::quantize_to_vec(ty, &random(&mut rng, cols * rows)).unwrap();
        let w = Weight::new(ty, cols, rows, Bytes::from_vec(bytes))
            .unwrap()
            .repacked()
            .unwrap();
        let xs = random(&mut rng, cols * 12);
        // A decode step of several users, then a prompt chunk of one sequence: token 4 is
        // bit for bit the same as alone, in either.
        let place: Vec<(u32, u32)> = (0..10).map(|i| (i % 3, 5 + i / 3)).collect();
        let chunk: Vec<(u32, u32)> = (0..12).map(|i| (0, i)).collect();
        let all = matmul_batch(&w, &xs[..10 * cols], &place);
        let prompt = matmul_batch(&w, &xs, &chunk);
        let alone = matmul_batch(&w, &xs[4 * cols..5 * cols], &[place[4]]);
        assert_eq!(&all[4 * rows..5 * rows], &alone[..], "{ty}");
        assert_eq!(&prompt[4 * rows..5 * rows], &alone[..], "{ty}");
    }
}

#[test]
fn a_decode_token_does_not_depend_on_its_batch() {
    let mut rng = StdRng::seed_from_u64(11);
    let (cols, rows) = (256, 40);
    for ty in [
        quant::GgmlType::Q4_K,
        quant::GgmlType::Q5_0,
        quant::GgmlType::F16,
    ] {
        let bytes = quant::quantize_to_vec(ty, &random(&mut rng, cols * rows)).unwrap();
        let w = Weight::new(ty, cols, rows, Bytes::from_vec(bytes)).unwrap();
        let xs = random(&mut rng, cols * 10);
        // Ten tokens of three sequences (a decode step of several users, with a speculative
        // draft), then token 4 alone: bit for bit the same row.
        let place: Vec<(u32, u32)> = (0..10).map(|i| (i % 3, 5 + i / 3)).collect();
        let all = matmul_batch(&w, &xs, &place);
        let alone = matmul_batch(&w, &xs[4 * cols..5 * cols], &[place[4]]);
        assert_eq!(&all[4 * rows..5 * rows], &alone[..], "{ty}");
    }
}

/// Float64 attention of query head `h` of token `i` over the visible keys `vis` (indices
/// into the k/v rows), with the group's kv head, a scale and an optional softcap.
#[allow(clippy::too_many_arguments)]
fn reference_head(
    (qv, kvv, vv): (&[f32], &[f32], &[f32]),
    (qd, kvd, hd): (usize, usize, usize),
    i: usize,
    h: usize,
    g: usize,
    vis: &[usize],
    scale: f64,
    softcap: Option<f32>,
) -> Vec<f64> {
    let sc: Vec<f64> = vis
        .iter()
        .map(|&j| {
            let s = (0..hd)
                .map(|d| qv[i * qd + h * hd + d] as f64 * kvv[j * kvd + g * hd + d] as f64)
                .sum::<f64>()
                * scale;
            softcap.map_or(s, |c| c as f64 * (s / c as f64).tanh())
        })
        .collect();
    let m = sc.iter().cloned().fold(f64::MIN, f64::max);
    let z: f64 = sc.iter().map(|s| (s - m).exp()).sum();
    (0..hd)
        .map(|d| {
            vis.iter()
                .zip(&sc)
                .map(|(&j, s)| (s - m).exp() / z * vv[j * kvd + g * hd + d] as f64)
                .sum()
        })
        .collect()
}

#[test]
fn attention_over_sequences_with_groups_and_window() {
    let mut rng = StdRng::seed_from_u64(3);
    let (n_heads, n_kv, hd) = (4, 2, 8);
    let (qd, kvd) = (n_heads * hd, n_kv * hd);
    // Two sequences interleaved in one batch, then one more token for sequence 1.
    let seqs = [0u32, 1, 0, 1, 0, 1, 1];
    let pos = [0u32, 0, 1, 1, 2, 2, 3];
    let n = seqs.len();
    let qv = random(&mut rng, n * qd);
    let kvv = random(&mut rng, n * kvd);
    let vv = random(&mut rng, n * kvd);
    let tq = Weight::from_f32(qd, n, &qv).unwrap();
    let tk = Weight::from_f32(kvd, n, &kvv).unwrap();
    let tv = Weight::from_f32(kvd, n, &vv).unwrap();
    for window in [None, Some(2u32)] {
        let mut plan = Plan::new();
        let (q, k, v, o) = (plan.act(qd), plan.act(kvd), plan.act(kvd), plan.act(qd));
        let mut be = CpuBackend::new(&plan, 16, kv(1, kvd), 2);
        let spec = Attention {
            n_heads,
            n_kv_heads: n_kv,
            head_dim: hd,
            scale: 0.35,
            window,
            softcap: None,
        };
        // Tokens index rows of the q/k/v tables, so "token i" loads row i.
        let batch = Batch {
            tokens: (0..n as u32).collect(),
            pos: pos.to_vec(),
            seq: seqs.to_vec(),
            logits: vec![],
            ..Default::default()
        };
        be.forward(&batch, n, |ops| {
            ops.embed(&tq, q);
            ops.embed(&tk, k);
            ops.embed(&tv, v);
            ops.attention(0, q, k, v, &spec, o);
        })
        .unwrap();
        let got = be.read(o, n).to_vec();
        for i in 0..n {
            for h in 0..n_heads {
                let g = h / (n_heads / n_kv);
                // Keys visible to token i: same sequence, position <= its own, in window.
                let vis: Vec<usize> = (0..n)
                    .filter(|&j| seqs[j] == seqs[i] && pos[j] <= pos[i])
                    .filter(|&j| window.is_none_or(|w| pos[i] - pos[j] < w))
                    .collect();
                let want =
                    reference_head((&qv, &kvv, &vv), (qd, kvd, hd), i, h, g, &vis, 0.35, None);
                for (d, w) in want.iter().enumerate() {
                    let e = (got[i * qd + h * hd + d] as f64 - w).abs();
                    assert!(e < 1e-5, "window {window:?} token {i} head {h}: {e}");
                }
            }
        }
    }
}

#[test]
fn forward_rejects_bad_batches() {
    let mut plan = Plan::new();
    let _x = plan.act(8);
    let mut be = CpuBackend::new(&plan, 4, kv(1, 8), 1);
    let too_big = Batch::one_sequence(&[1; 5], 0, 0, false);
    assert!(be.forward(&too_big, 10, |_| {}).is_err());
    let past_ctx = Batch::one_sequence(&[1], 64, 0, false);
    assert!(be.forward(&past_ctx, 10, |_| {}).is_err());
    let bad_seq = Batch::one_sequence(&[1], 0, 3, false);
    assert!(be.forward(&bad_seq, 10, |_| {}).is_err());
    let bad_tok = Batch::one_sequence(&[10], 0, 0, false);
    assert!(be.forward(&bad_tok, 10, |_| {}).is_err());
}

/// The prompt path (GEMM attention) on one sequence in two chunks, the second attending to
/// the first's cached keys, with and without a window and softcap.
#[test]
fn prompt_chunk_attention_matches_f64() {
    let mut rng = StdRng::seed_from_u64(11);
    let (n_heads, n_kv, hd) = (6, 2, 16);
    let (qd, kvd) = (n_heads * hd, n_kv * hd);
    let n = 20;
    let qv = random(&mut rng, n * qd);
    let kvv = random(&mut rng, n * kvd);
    let vv = random(&mut rng, n * kvd);
    let tq = Weight::from_f32(qd, n, &qv).unwrap();
    let tk = Weight::from_f32(kvd, n, &kvv).unwrap();
    let tv = Weight::from_f32(kvd, n, &vv).unwrap();
    for (window, softcap) in [(None, None), (Some(5u32), None), (None, Some(0.7f32))] {
        let mut plan = Plan::new();
        let (q, k, v, o) = (plan.act(qd), plan.act(kvd), plan.act(kvd), plan.act(qd));
        let mut be = CpuBackend::new(&plan, 16, kv(1, kvd), 2);
        let spec = Attention {
            n_heads,
            n_kv_heads: n_kv,
            head_dim: hd,
            scale: 0.4,
            window,
            softcap,
        };
        let mut got = vec![0.0f32; n * qd];
        for (start, len) in [(0usize, 12usize), (12, 8)] {
            let batch = Batch {
                tokens: (start as u32..(start + len) as u32).collect(),
                pos: (start as u32..(start + len) as u32).collect(),
                seq: vec![1; len],
                logits: vec![],
                ..Default::default()
            };
            be.forward(&batch, n, |ops| {
                ops.embed(&tq, q);
                ops.embed(&tk, k);
                ops.embed(&tv, v);
                ops.attention(0, q, k, v, &spec, o);
            })
            .unwrap();
            got[start * qd..(start + len) * qd].copy_from_slice(be.read(o, len));
        }
        for i in 0..n {
            for h in 0..n_heads {
                let g = h / (n_heads / n_kv);
                let vis: Vec<usize> = (0..=i)
                    .filter(|&j| window.is_none_or(|w| i - j < w as usize))
                    .collect();
                let want =
                    reference_head((&qv, &kvv, &vv), (qd, kvd, hd), i, h, g, &vis, 0.4, softcap);
                for (d, w) in want.iter().enumerate() {
                    let e = (got[i * qd + h * hd + d] as f64 - w).abs();
                    assert!(e < 1e-5, "{window:?} {softcap:?} token {i} head {h}: {e}");
                }
            }
        }
    }
}
