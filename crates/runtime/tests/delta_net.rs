//! The Gated DeltaNet operations of the CPU backend: the chunk-parallel delta rule against the
//! token-by-token recurrence, the convolution and delta-rule ops against a float64 reference,
//! prompt chunks against single-token steps, several sequences in one batch, and rollback.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use runtime::cpu::{kernels, CpuBackend};
use runtime::{Act, Batch, DeltaNet, Ops, Plan, Rollback, Weight};
use runtime::{KvConfig, RecurrentConfig, GEMM_MIN_TOKENS};

fn uniform(rng: &mut StdRng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(lo..hi)).collect()
}

fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
    got.iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w).abs())
        .fold(0.0, f64::max)
        / scale
}

fn normalized(rng: &mut StdRng, n: usize, d: usize) -> Vec<f32> {
    let mut x = uniform(rng, n * d, -1.0, 1.0);
    for r in x.chunks_mut(d) {
        let s = r.iter().map(|v| v * v).sum::<f32>().sqrt();
        r.iter_mut().for_each(|v| *v /= s);
    }
    x
}

/// The chunk-parallel form gives the recurrence's outputs and final state, for chunks of
/// several lengths, mild and strong decays, and a non-zero starting state.
#[test]
fn chunked_delta_rule_matches_the_recurrence() {
    let mut rng = StdRng::seed_from_u64(35);
    for &(n, hk, hv, g_lo) in &[
        (1, 16, 16, -0.5f32),
        (7, 16, 8, -0.5),
        (64, 32, 32, -0.2),
        (64, 32, 32, -20.0),
        (40, 128, 128, -3.0),
    ] {
        let q = normalized(&mut rng, n, hk);
        let k = normalized(&mut rng, n, hk);
        let v = uniform(&mut rng, n * hv, -2.0, 2.0);
        let g = uniform(&mut rng, n, g_lo, 0.0);
        let beta = uniform(&mut rng, n, 0.0, 1.0);
        let s0 = uniform(&mut rng, hv * hk, -1.0, 1.0);
        // Recurrence in f64.
        let mut s: Vec<f64> = s0.iter().map(|&x| x as f64).collect();
        let mut want_o = vec![0.0f64; n * hv];
        for t in 0..n {
            let e = (g[t] as f64).exp();
            let kt = &k[t * hk..(t + 1) * hk];
            let qt = &q[t * hk..(t + 1) * hk];
            for i in 0..hv {
                let row = &mut s[i * hk..(i + 1) * hk];
                let sk: f64 = row.iter().zip(kt).map(|(a, &b)| a * b as f64).sum::<f64>() * e;
                let d = beta[t] as f64 * (v[t * hv + i] as f64 - sk);
                for (x, &kj) in row.iter_mut().zip(kt) {
                    *x = e * *x + d * kj as f64;
                }
                want_o[t * hv + i] = row.iter().zip(qt).map(|(a, &b)| a * b as f64).sum();
            }
        }
        // The f32 recurrence kernel.
        let mut s_step = s0.clone();
        let mut o_step = vec![0.0f32; n * hv];
        for t in 0..n {
            kernels::delta_step(
                &mut s_step,
                &q[t * hk..(t + 1) * hk],
                &k[t * hk..(t + 1) * hk],
                &v[t * hv..(t + 1) * hv],
                g[t],
                beta[t],
                &mut o_step[t * hv..(t + 1) * hv],
            );
        }
        // The chunked kernel.
        let mut s_chunk = s0.clone();
        let mut o_chunk = vec![0.0f32; n * hv];
        let mut scratch = vec![0.0f32; kernels::delta_chunk_scratch(n, hv)];
        kernels::delta_chunk(
            &mut s_chunk,
            &q,
            &k,
            &v,
            &g,
            &beta,
            &mut o_chunk,
            &mut scratch,
        );
        let case = format!("n={n} hk={hk} hv={hv} g>={g_lo}");
        assert!(
            rel_err(&o_step, &want_o) < 1e-5,
            "{case}: recurrence outputs"
        );
        assert!(rel_err(&s_step, &s) < 1e-5, "{case}: recurrence state");
        assert!(rel_err(&o_chunk, &want_o) < 1e-4, "{case}: chunked outputs");
        assert!(rel_err(&s_chunk, &s) < 1e-4, "{case}: chunked state");
    }
}

const NET: DeltaNet = DeltaNet {
    n_k_heads: 2,
    n_v_heads: 4,
    head_k: 16,
    head_v: 8,
    conv_kernel: 4,
    eps: 1e-6,
};

/// Per-token inputs of one DeltaNet layer: pre-convolution channels, g, β.
struct Inputs {
    qkv: Vec<f32>,
    g: Vec<f32>,
    beta: Vec<f32>,
    conv_w: Vec<f32>,
}

fn inputs(rng: &mut StdRng, n: usize) -> Inputs {
    let ch = NET.conv_channels();
    Inputs {
        qkv: uniform(rng, n * ch, -1.5, 1.5),
        // Mild decays, so that the state carries over whole chunks.
        g: uniform(rng, n * NET.n_v_heads, -0.1, 0.0),
        beta: uniform(rng, n * NET.n_v_heads, 0.0, 1.0),
        conv_w: uniform(rng, ch * NET.conv_kernel, -0.7, 0.7),
    }
}

/// The conv, SiLU, L2 norms and delta rule of one sequence's tokens in float64.
fn reference(inp: &Inputs, n: usize) -> Vec<f64> {
    let (ch, k) = (NET.conv_channels(), NET.conv_kernel);
    let (nk, nv, hk, hv) = (NET.n_k_heads, NET.n_v_heads, NET.head_k, NET.head_v);
    let mut s = vec![0.0f64; nv * hv * hk];
    let mut out = vec![0.0f64; n * nv * hv];
    for t in 0..n {
        let co: Vec<f64> = (0..ch)
            .map(|c| {
                let y: f64 = (0..k)
                    .filter(|j| t + j + 1 >= k)
                    .map(|j| {
                        inp.conv_w[c * k + j] as f64 * inp.qkv[(t + j + 1 - k) * ch + c] as f64
                    })
                    .sum();
                y / (1.0 + (-y).exp())
            })
            .collect();
        let l2 = |x: &[f64]| {
            let n = (x.iter().map(|v| v * v).sum::<f64>() + NET.eps as f64).sqrt();
            x.iter().map(|v| v / n).collect::<Vec<_>>()
        };
        for h in 0..nv {
            let kh = h % nk;
            let q: Vec<f64> = l2(&co[kh * hk..(kh + 1) * hk])
                .iter()
                .map(|v| v / (hk as f64).sqrt())
                .collect();
            let kk = l2(&co[(nk + kh) * hk..(nk + kh + 1) * hk]);
            let v = &co[2 * nk * hk + h * hv..2 * nk * hk + (h + 1) * hv];
            let e = (inp.g[t * nv + h] as f64).exp();
            let b = inp.beta[t * nv + h] as f64;
            let sh = &mut s[h * hv * hk..(h + 1) * hv * hk];
            for i in 0..hv {
                let row = &mut sh[i * hk..(i + 1) * hk];
                let sk: f64 = row.iter().zip(&kk).map(|(a, b)| a * b).sum::<f64>() * e;
                let d = b * (v[i] - sk);
                for (x, kj) in row.iter_mut().zip(&kk) {
                    *x = e * *x + d * kj;
                }
                out[t * nv * hv + h * hv + i] = row.iter().zip(&q).map(|(a, b)| a * b).sum();
            }
        }
    }
    out
}

struct Rig {
    be: CpuBackend,
    qkv: Act,
    conv: Act,
    g: Act,
    beta: Act,
    out: Act,
    tq: Weight,
    tg: Weight,
    tb: Weight,
    conv_w: Vec<f32>,
}

const N_SEQ: usize = 3;

/// A backend with one recurrent layer for `N_SEQ` sequences, whose batches' token ids index
/// rows of `inp` (token id = row).
fn rig(inp: &Inputs, n_rows: usize, threads: usize) -> Rig {
    let ch = NET.conv_channels();
    let mut plan = Plan::new();
    let qkv = plan.act(ch);
    let conv = plan.act(ch);
    let g = plan.act(NET.n_v_heads);
    let beta = plan.act(NET.n_v_heads);
    let out = plan.act(NET.value_dim());
    let kv = KvConfig {
        n_layers: 1,
        kv_dim: 8,
        n_ctx: 256,
        n_seq: N_SEQ,
        k_type: runtime::KvType::F32,
        v_type: runtime::KvType::F32,
    };
    let be = CpuBackend::new(&plan, 160, kv, threads).with_recurrent(RecurrentConfig {
        n_layers: 1,
        net: NET,
    });
    Rig {
        be,
        qkv,
        conv,
        g,
        beta,
        out,
        tq: Weight::from_f32(ch, n_rows, &inp.qkv).unwrap(),
        tg: Weight::from_f32(NET.n_v_heads, n_rows, &inp.g).unwrap(),
        tb: Weight::from_f32(NET.n_v_heads, n_rows, &inp.beta).unwrap(),
        conv_w: inp.conv_w.clone(),
    }
}

impl Rig {
    /// Runs the layer on `(row, seq, pos)` tokens; returns each token's output.
    fn run(&mut self, toks: &[(u32, u32, u32)]) -> Vec<f32> {
        self.try_run(toks).unwrap()
    }

    fn try_run(&mut self, toks: &[(u32, u32, u32)]) -> Result<Vec<f32>, runtime::BackendError> {
        let batch = Batch {
            tokens: toks.iter().map(|t| t.0).collect(),
            seq: toks.iter().map(|t| t.1).collect(),
            pos: toks.iter().map(|t| t.2).collect(),
            logits: vec![],
            ..Default::default()
        };
        let r = &*self;
        let vocab = r.tq.rows;
        let (qkv, conv, g, beta, out) = (r.qkv, r.conv, r.g, r.beta, r.out);
        let (tq, tg, tb, w) = (r.tq.clone(), r.tg.clone(), r.tb.clone(), r.conv_w.clone());
        self.be.forward(&batch, vocab, |o| {
            o.embed(&tq, qkv);
            o.embed(&tg, g);
            o.embed(&tb, beta);
            o.conv_silu(0, qkv, &w, &NET, conv);
            o.gated_delta(0, conv, g, beta, &NET, out);
        })?;
        Ok(self.be.read(out, toks.len()).to_vec())
    }
}

/// One sequence's tokens `from..to`, rows = positions.
fn seq_tokens(seq: u32, from: u32, to: u32) -> Vec<(u32, u32, u32)> {
    (from..to).map(|p| (p, seq, p)).collect()
}

#[test]
fn prompt_chunk_and_single_steps_match_the_f64_reference() {
    let mut rng = StdRng::seed_from_u64(8);
    let n = 150;
    let inp = inputs(&mut rng, n);
    let want = reference(&inp, n);
    // A prompt chunk (chunk-parallel form, over three chunks of 64), then single steps.
    for threads in [1, 2, 3] {
        let mut r = rig(&inp, n, threads);
        let mut got = r.run(&seq_tokens(0, 0, 140));
        const { assert!(140 >= GEMM_MIN_TOKENS) };
        for p in 140..n as u32 {
            got.extend(r.run(&[(p, 0, p)]));
        }
        let e = rel_err(&got, &want);
        assert!(
            e < 1e-4,
            "{threads} threads, chunked prompt: relative error {e}"
        );
        // Every token on its own (the recurrence).
        let mut r = rig(&inp, n, threads);
        let got: Vec<f32> = (0..n as u32).flat_map(|p| r.run(&[(p, 0, p)])).collect();
        let e = rel_err(&got, &want);
        assert!(
            e < 1e-5,
            "{threads} threads, token by token: relative error {e}"
        );
    }
}

/// Sequences sharing batches (several tokens of one, one of another) get exactly what they
/// get alone; a sequence restarting at position 0 starts from a zero state.
#[test]
fn sequences_in_one_batch_are_independent() {
    let mut rng = StdRng::seed_from_u64(9);
    let n = 24;
    let inp = inputs(&mut rng, n);
    let mut alone = rig(&inp, n, 2);
    let want: Vec<f32> = (0..n as u32)
        .flat_map(|p| alone.run(&[(p, 0, p)]))
        .collect();
    let w = NET.value_dim();
    let at = |p: u32| &want[p as usize * w..(p as usize + 1) * w];
    let mut r = rig(&inp, n, 2);
    // Sequence 1 is filled with other rows first, then restarts from position 0.
    r.run(&[(5, 1, 0), (6, 1, 1)]);
    let mut p = [0u32; N_SEQ];
    let steps: &[&[u32]] = &[
        &[0, 1, 1, 1, 2],
        &[0, 0, 0, 1, 2, 2],
        &[2, 1, 0],
        &[1, 1, 1, 1, 1, 1, 1, 0],
    ];
    for seqs in steps {
        let toks: Vec<(u32, u32, u32)> = seqs
            .iter()
            .map(|&s| {
                let t = (p[s as usize], s, p[s as usize]);
                p[s as usize] += 1;
                t
            })
            .collect();
        let got = r.run(&toks);
        for (i, &(row, _, pos)) in toks.iter().enumerate() {
            assert_eq!(
                &got[i * w..(i + 1) * w],
                at(pos),
                "token row {row} pos {pos}"
            );
        }
    }
}

/// Rolling back into the latest batch leaves exactly the state a run over the kept tokens
/// leaves; rolling back further, or after a long batch, is refused.
#[test]
fn rollback_restores_the_state_of_a_shorter_run() {
    let mut rng = StdRng::seed_from_u64(10);
    let n = 40;
    let inp = inputs(&mut rng, n);
    for keep in 0..=5u32 {
        for reset in [false, true] {
            let p0 = if reset { 0 } else { 20 };
            // Fresh: tokens 0..p0 as a prompt, then p0..p0+keep one by one, then p0+keep.
            let mut fresh = rig(&inp, n, 2);
            if p0 > 0 {
                fresh.run(&seq_tokens(0, 0, p0));
            }
            for p in p0..p0 + keep {
                fresh.run(&[(p, 0, p)]);
            }
            let want = fresh.run(&[(30, 0, p0 + keep)]);
            // Verification batch of 5 tokens (one with another sequence), rollback, next.
            let mut r = rig(&inp, n, 2);
            if p0 > 0 {
                r.run(&seq_tokens(0, 0, p0));
            }
            let mut batch = seq_tokens(0, p0, p0 + 5);
            batch.insert(2, (7, 2, 0));
            r.run(&batch);
            r.be.rollback(0, (p0 + keep) as usize).unwrap();
            assert_eq!(r.be.recurrent_len(0), Some((p0 + keep) as usize));
            let got = r.run(&[(30, 0, p0 + keep)]);
            assert_eq!(got, want, "keep {keep} of 5 from position {p0}");
        }
    }
    // Refused: before the latest batch, after a prompt chunk, out of order positions.
    let mut r = rig(&inp, n, 2);
    r.run(&seq_tokens(0, 0, 20));
    assert!(r.be.rollback(0, 10).is_err());
    r.run(&seq_tokens(0, 20, 23));
    assert!(r.be.rollback(0, 19).is_err());
    assert!(r.be.rollback(0, 21).is_ok());
    assert!(r.try_run(&[(1, 0, 25)]).is_err());
    assert!(r.try_run(&[(1, 0, 21), (2, 0, 23)]).is_err());
    assert_eq!(r.be.recurrent_len(0), Some(21));
    // A pass without recurrent ops (a multi-token-prediction block) leaves the state alone.
    let batch = Batch {
        tokens: vec![1, 2],
        pos: vec![21, 22],
        seq: vec![0, 0],
        logits: vec![],
        ..Default::default()
    };
    r.be.forward(&batch, n, |_| {}).unwrap();
    assert_eq!(r.be.recurrent_len(0), Some(21));
    assert!(r.try_run(&[(1, 0, 21)]).is_ok());
}
