//! A model run in two parts (blocks `0..k` on one backend, the rest on another, the residual
//! stream copied in between, as a GPU/CPU split does) gives the logits of one whole pass.
//! Two CPU backends stand in for the two devices; the fixture is the qwen35 tiny model
//! (hybrid: attention and recurrent blocks), skipped when it is not in tests/data.

use std::sync::Arc;

use model::Model;
use runtime::cpu::CpuBackend;
use runtime::Batch;
use runtime::{KvConfig, RecurrentConfig};

fn backend(m: &Model) -> CpuBackend {
    let kv = KvConfig {
        n_layers: m.kv_layers(),
        kv_dim: m.hp.kv_dim(),
        n_ctx: 64,
        n_seq: 1,
        k_type: runtime::KvType::F32,
        v_type: runtime::KvType::F32,
    };
    let mut be = CpuBackend::new(m.plan(), 16, kv, 2);
    if let Some((n_layers, net)) = m.recurrent() {
        be = be.with_recurrent(RecurrentConfig { n_layers, net });
    }
    be
}

#[test]
fn a_split_pass_equals_a_whole_pass() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/synthetic/qwen35-tiny-q8_0.gguf");
    if !path.exists() {
        eprintln!("skipped: no fixture at {}", path.display());
        return;
    }
    let m = Model::load(Arc::new(gguf::Gguf::open(&path).unwrap()), 1).unwrap();
    let vocab = m.hp.n_vocab;
    let batches: Vec<Batch> = vec![
        Batch::one_sequence(&[3, 14, 15, 92, 65, 35, 89, 79, 32, 38], 0, 0, false),
        Batch::one_sequence(&[46], 10, 0, false),
        Batch::one_sequence(&[26, 43], 11, 0, false),
    ];
    let mut whole = backend(&m);
    let mut want = Vec::new();
    for b in &batches {
        whole.forward(b, vocab, |o| m.forward(o)).unwrap();
        want.push(whole.read(m.acts.logits, 1).to_vec());
    }
    let n = m.hp.n_layer;
    for k in [1, n / 2, n - 1] {
        let (mut first, mut rest) = (backend(&m), backend(&m));
        for (b, want) in batches.iter().zip(&want) {
            first
                .forward(b, vocab, |o| m.forward_layers(o, 0..k))
                .unwrap();
            let x = first.read(m.acts.x, b.len()).to_vec();
            rest.write(m.acts.x, &x);
            rest.forward(b, vocab, |o| m.forward_layers(o, k..n))
                .unwrap();
            assert_eq!(rest.read(m.acts.logits, 1), &want[..], "split at {k}");
        }
    }
    let (kv, rec) = m.state_layers_before(n);
    assert_eq!(kv + rec, n);
    assert_eq!(kv, m.kv_layers() - m.n_mtp());
}
