//! A prompt's logits do not depend on how it was cut into batches: evaluated in one pass, in
//! chunks cut at odd positions (37, 100) and token by token on the CPU backend, SmolLM2
//! gives the same bits, with an f32 and with a q8_0 KV cache (what prefix caching, which
//! resumes a prompt at any position, relies on).

use std::sync::Arc;

use model::Model;
use runtime::cpu::CpuBackend;
use runtime::{Batch, KvConfig, KvType};

const N: usize = 150;

/// Logits of every position of `tokens`, evaluated in batches that end at `cuts` (and at
/// the end), with the KV cache in `ty`.
fn logits(m: &Model, tokens: &[u32], cuts: &[usize], ty: KvType) -> Vec<f32> {
    let kv = KvConfig {
        n_layers: m.kv_layers(),
        kv_dim: m.hp.kv_dim(),
        n_ctx: 256,
        n_seq: 1,
        k_type: ty,
        v_type: ty,
    };
    let mut be = CpuBackend::new(m.plan(), N, kv, 2);
    let mut out = Vec::new();
    let mut start = 0;
    for &end in cuts.iter().chain([&tokens.len()]) {
        let b = Batch::one_sequence(&tokens[start..end], start as u32, 0, true);
        be.forward(&b, m.hp.n_vocab, |o| m.forward(o)).unwrap();
        out.extend_from_slice(be.read(m.acts.logits, end - start));
        start = end;
    }
    out
}

#[test]
fn logits_do_not_depend_on_the_chunks() {
    let path = registry::test_model("smollm2-135m");
    let file = Arc::new(gguf::Gguf::open(&path).unwrap());
    let m = Model::load(file, N).unwrap();
    // A prompt of varied tokens.
    let tokens: Vec<u32> = (0..N as u32)
        .map(|i| (i * 7919 + 13) % 20_000 + 100)
        .collect();
    let every: Vec<usize> = (1..N).collect();
    for ty in [KvType::F32, KvType::Q8_0] {
        let whole = logits(&m, &tokens, &[], ty);
        assert_eq!(whole.len(), N * m.hp.n_vocab);
        assert!(whole.iter().all(|x| x.is_finite()) && whole.iter().any(|&x| x != 0.0));
        let cut = logits(&m, &tokens, &[37, 100], ty);
        assert!(
            cut == whole,
            "{ty}: chunks at 37 and 100 differ from one pass"
        );
        let single = logits(&m, &tokens, &every, ty);
        assert!(
            single == whole,
            "{ty}: token by token differs from one pass"
        );
    }
}
