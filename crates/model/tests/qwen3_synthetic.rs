//! Qwen3 has no test model that ships, so this writes a small random-weight `qwen3` GGUF with
//! the project's GGUF writer and checks the forward pass against a plain float64
//! implementation of the same math (per-head Q/K RMSNorm, NeoX RoPE, GQA, SwiGLU).

use std::sync::Arc;

use gguf::{Array, GgufWriter, Value};
use model::Model;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use runtime::cpu::CpuBackend;
use runtime::Batch;
use runtime::KvConfig;

const VOCAB: usize = 50;
const D: usize = 64;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HD: usize = 16;
const FF: usize = 96;
const LAYERS: usize = 2;
const EPS: f64 = 1e-6;
const BASE: f64 = 10_000.0;

struct Weights {
    tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
}

impl Weights {
    fn get(&self, name: &str) -> &[f32] {
        &self.tensors.iter().find(|t| t.0 == name).unwrap().2
    }
}

fn make(rng: &mut StdRng) -> Weights {
    let mut t = Vec::new();
    let mut add = |name: String, dims: Vec<usize>, scale: f32, offset: f32| {
        let n = dims.iter().product();
        let v = (0..n)
            .map(|_| offset + scale * rng.random_range(-1.0f32..1.0))
            .collect();
        t.push((name, dims, v));
    };
    add("token_embd.weight".into(), vec![D, VOCAB], 1.0, 0.0);
    add("output_norm.weight".into(), vec![D], 0.2, 1.0);
    add("output.weight".into(), vec![D, VOCAB], 0.3, 0.0);
    for l in 0..LAYERS {
        let p = |s: &str| format!("blk.{l}.{s}");
        add(p("attn_norm.weight"), vec![D], 0.2, 1.0);
        add(p("attn_q.weight"), vec![D, HEADS * HD], 0.3, 0.0);
        add(p("attn_k.weight"), vec![D, KV_HEADS * HD], 0.3, 0.0);
        add(p("attn_v.weight"), vec![D, KV_HEADS * HD], 0.3, 0.0);
        add(p("attn_q_norm.weight"), vec![HD], 0.2, 1.0);
        add(p("attn_k_norm.weight"), vec![HD], 0.2, 1.0);
        add(p("attn_output.weight"), vec![HEADS * HD, D], 0.3, 0.0);
        add(p("ffn_norm.weight"), vec![D], 0.2, 1.0);
        add(p("ffn_gate.weight"), vec![D, FF], 0.3, 0.0);
        add(p("ffn_up.weight"), vec![D, FF], 0.3, 0.0);
        add(p("ffn_down.weight"), vec![FF, D], 0.3, 0.0);
    }
    Weights { tensors: t }
}

fn write(w: &Weights, path: &std::path::Path) {
    let mut g = GgufWriter::new();
    g.set_str("general.architecture", "qwen3");
    g.set_u32("qwen3.embedding_length", D as u32);
    g.set_u32("qwen3.block_count", LAYERS as u32);
    g.set_u32("qwen3.feed_forward_length", FF as u32);
    g.set_u32("qwen3.attention.head_count", HEADS as u32);
    g.set_u32("qwen3.attention.head_count_kv", KV_HEADS as u32);
    g.set_u32("qwen3.attention.key_length", HD as u32);
    g.set_u32("qwen3.context_length", 256);
    g.set_f32("qwen3.attention.layer_norm_rms_epsilon", EPS as f32);
    g.set_f32("qwen3.rope.freq_base", BASE as f32);
    g.set_str("tokenizer.ggml.model", "gpt2");
    g.set_array(
        "tokenizer.ggml.tokens",
        Array::String((0..VOCAB).map(|i| format!("t{i}")).collect()),
    );
    g.set("tokenizer.ggml.merges", Value::Array(Array::String(vec![])));
    for (name, dims, v) in &w.tensors {
        let dims: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
        g.add_f32(name, &dims, v).unwrap();
    }
    g.write_file(path).unwrap();
}

fn rms(x: &[f64], w: &[f32]) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let s = 1.0 / (ms + EPS).sqrt();
    x.iter().zip(w).map(|(v, g)| v * s * *g as f64).collect()
}

/// y = W x for a weight stored as ggml [cols, rows].
fn mv(w: &[f32], x: &[f64], rows: usize) -> Vec<f64> {
    let cols = x.len();
    (0..rows)
        .map(|r| (0..cols).map(|c| w[r * cols + c] as f64 * x[c]).sum())
        .collect()
}

fn rope_neox(h: &mut [f64], pos: usize) {
    let half = HD / 2;
    for i in 0..half {
        let theta = pos as f64 * BASE.powf(-2.0 * i as f64 / HD as f64);
        let (s, c) = theta.sin_cos();
        let (a, b) = (h[i], h[i + half]);
        h[i] = a * c - b * s;
        h[i + half] = a * s + b * c;
    }
}

/// Logits of every position of `tokens`, in float64.
fn reference(w: &Weights, tokens: &[u32]) -> Vec<Vec<f64>> {
    let n = tokens.len();
    let emb = w.get("token_embd.weight");
    let mut x: Vec<Vec<f64>> = tokens
        .iter()
        .map(|&t| {
            emb[t as usize * D..(t as usize + 1) * D]
                .iter()
                .map(|&v| v as f64)
                .collect()
        })
        .collect();
    for l in 0..LAYERS {
        let g = |s: &str| w.get(&format!("blk.{l}.{s}"));
        let mut ks = Vec::new();
        let mut vs = Vec::new();
        let mut qs = Vec::new();
        for (p, xi) in x.iter().enumerate() {
            let xn = rms(xi, g("attn_norm.weight"));
            let mut q = mv(g("attn_q.weight"), &xn, HEADS * HD);
            let mut k = mv(g("attn_k.weight"), &xn, KV_HEADS * HD);
            let v = mv(g("attn_v.weight"), &xn, KV_HEADS * HD);
            for h in q.chunks_mut(HD) {
                let r = rms(h, g("attn_q_norm.weight"));
                h.copy_from_slice(&r);
                rope_neox(h, p);
            }
            for h in k.chunks_mut(HD) {
                let r = rms(h, g("attn_k_norm.weight"));
                h.copy_from_slice(&r);
                rope_neox(h, p);
            }
            qs.push(q);
            ks.push(k);
            vs.push(v);
        }
        for p in 0..n {
            let mut att = vec![0.0; HEADS * HD];
            for h in 0..HEADS {
                let kh = h / (HEADS / KV_HEADS);
                let sc: Vec<f64> = (0..=p)
                    .map(|j| {
                        (0..HD)
                            .map(|d| qs[p][h * HD + d] * ks[j][kh * HD + d])
                            .sum::<f64>()
                            / (HD as f64).sqrt()
                    })
                    .collect();
                let m = sc.iter().cloned().fold(f64::MIN, f64::max);
                let z: f64 = sc.iter().map(|s| (s - m).exp()).sum();
                for (j, s) in sc.iter().enumerate() {
                    for d in 0..HD {
                        att[h * HD + d] += (s - m).exp() / z * vs[j][kh * HD + d];
                    }
                }
            }
            let o = mv(g("attn_output.weight"), &att, D);
            for d in 0..D {
                x[p][d] += o[d];
            }
            let xn = rms(&x[p], g("ffn_norm.weight"));
            let gate = mv(g("ffn_gate.weight"), &xn, FF);
            let up = mv(g("ffn_up.weight"), &xn, FF);
            let hmid: Vec<f64> = gate
                .iter()
                .zip(&up)
                .map(|(a, b)| a / (1.0 + (-a).exp()) * b)
                .collect();
            let down = mv(g("ffn_down.weight"), &hmid, D);
            for d in 0..D {
                x[p][d] += down[d];
            }
        }
    }
    x.iter()
        .map(|xi| {
            mv(
                w.get("output.weight"),
                &rms(xi, w.get("output_norm.weight")),
                VOCAB,
            )
        })
        .collect()
}

#[test]
fn qwen3_forward_matches_float64_reference() {
    let mut rng = StdRng::seed_from_u64(42);
    let w = make(&mut rng);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qwen3-tiny.gguf");
    write(&w, &path);
    let file = Arc::new(gguf::Gguf::open(&path).unwrap());
    let tokens: Vec<u32> = (0..11).map(|_| rng.random_range(0..VOCAB as u32)).collect();
    let want = reference(&w, &tokens);
    let m = Model::load(file, tokens.len()).unwrap();
    assert_eq!(m.family, model::Family::Qwen3);
    let kv = KvConfig {
        n_layers: LAYERS,
        kv_dim: KV_HEADS * HD,
        n_ctx: 64,
        n_seq: 1,
        k_type: runtime::KvType::F32,
        v_type: runtime::KvType::F32,
    };
    // Once as a prompt (all 11 tokens in one pass: the GEMM path), once token by token
    // (the decode path), both against the reference.
    for stepwise in [false, true] {
        let mut be = CpuBackend::new(m.plan(), 16, kv.clone(), 2);
        let mut got: Vec<Vec<f32>> = Vec::new();
        if stepwise {
            for (p, &t) in tokens.iter().enumerate() {
                let b = Batch::one_sequence(&[t], p as u32, 0, true);
                be.forward(&b, VOCAB, |o| m.forward(o)).unwrap();
                got.push(be.read(m.acts.logits, 1).to_vec());
            }
        } else {
            let b = Batch::one_sequence(&tokens, 0, 0, true);
            be.forward(&b, VOCAB, |o| m.forward(o)).unwrap();
            let all = be.read(m.acts.logits, tokens.len());
            got = all.chunks(VOCAB).map(|c| c.to_vec()).collect();
        }
        for (p, (g, r)) in got.iter().zip(&want).enumerate() {
            let scale = r.iter().map(|v| v.abs()).fold(0.0, f64::max);
            for (a, b) in g.iter().zip(r) {
                let e = (*a as f64 - b).abs() / scale;
                assert!(e < 1e-4, "stepwise {stepwise} position {p}: {a} vs {b}");
            }
        }
    }
}
