//! Loading `qwen35` files: copies of the fixture (tests/data/synthetic/qwen35-tiny-f32.gguf,
//! cut to a 100-token vocabulary) rewritten the ways real conversions differ (the
//! `attention.recurrent_layers` array, a separate LM head) or break (a missing or misshapen
//! tensor, the MoE variant), checked through their forward pass or their error.

use std::sync::Arc;

use gguf::{Array, GgufWriter, Value};
use model::{Model, ModelError};
use runtime::cpu::CpuBackend;
use runtime::Batch;
use runtime::{KvConfig, RecurrentConfig};

const VOCAB: usize = 100;

/// The fixture's metadata and tensors, the vocabulary cut to `VOCAB`, after `edit`.
fn rewrite(
    edit: impl FnOnce(&mut Vec<(String, Value)>, &mut Vec<(String, Vec<u64>, Vec<u8>)>),
) -> tempfile::NamedTempFile {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/synthetic/qwen35-tiny-f32.gguf");
    let f = gguf::Gguf::open(&path).unwrap();
    let mut meta: Vec<(String, Value)> = f
        .metadata()
        .iter()
        .filter(|(k, _)| !k.starts_with("tokenizer.") && *k != "general.alignment")
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    meta.push((
        "tokenizer.ggml.tokens".into(),
        Value::Array(Array::String((0..VOCAB).map(|i| format!("t{i}")).collect())),
    ));
    let mut tensors: Vec<(String, Vec<u64>, Vec<u8>)> = f
        .tensors()
        .iter()
        .map(|t| {
            let mut dims = t.dims().to_vec();
            let mut data = f.tensor_data(t).to_vec();
            if t.name() == "token_embd.weight" {
                dims[1] = VOCAB as u64;
                data.truncate(VOCAB * 64 * 4);
            }
            (t.name().to_string(), dims, data)
        })
        .collect();
    edit(&mut meta, &mut tensors);
    let mut g = GgufWriter::new();
    for (k, v) in meta {
        g.set(&k, v);
    }
    for (name, dims, data) in tensors {
        g.add_tensor(&name, &dims, gguf::GgmlType::F32, data)
            .unwrap();
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    g.write_file(file.path()).unwrap();
    file
}

fn load(file: &tempfile::NamedTempFile) -> Result<Model, ModelError> {
    Model::load(Arc::new(gguf::Gguf::open(file.path()).unwrap()), 1)
}

/// Logits after each of a few tokens, one pass each.
fn logits(m: &Model) -> Vec<f32> {
    let kv = KvConfig {
        n_layers: m.kv_layers(),
        kv_dim: m.hp.kv_dim(),
        n_ctx: 16,
        n_seq: 1,
        k_type: runtime::KvType::F32,
        v_type: runtime::KvType::F32,
    };
    let (n_layers, net) = m.recurrent().unwrap();
    let mut be =
        CpuBackend::new(m.plan(), 16, kv, 2).with_recurrent(RecurrentConfig { n_layers, net });
    let mut out = Vec::new();
    for (p, t) in [3u32, 14, 15, 92, 65].into_iter().enumerate() {
        let b = Batch::one_sequence(&[t], p as u32, 0, false);
        be.forward(&b, m.hp.n_vocab, |o| m.forward(o)).unwrap();
        out.extend_from_slice(be.read(m.acts.logits, 1));
    }
    out
}

fn set(meta: &mut Vec<(String, Value)>, key: &str, v: Value) {
    meta.retain(|(k, _)| k != key);
    meta.push((key.into(), v));
}

#[test]
fn the_fixture_loads_with_its_layer_pattern_and_mtp_block() {
    if fixtures_missing() {
        return;
    }
    let m = load(&rewrite(|_, _| {})).unwrap();
    assert_eq!(m.hp.n_layer, 4);
    let kinds: Vec<bool> = m
        .blocks
        .iter()
        .map(|b| matches!(b.mixer, model::Mixer::DeltaNet(_)))
        .collect();
    assert_eq!(kinds, [true, true, true, false]);
    let n_recurrent = m.recurrent().unwrap().0;
    assert_eq!((n_recurrent, m.kv_layers(), m.mtp.len()), (3, 2, 1));
    assert_eq!(m.mtp[0].block.attention().unwrap().kv, 1);
    assert_eq!(m.recurrent().unwrap().1.conv_channels(), 256);
    // RoPE: 8 rotated pairs, all covered by the sections [3, 3, 2, 0].
    let layer = m.blocks[3].attention().unwrap();
    assert_eq!(layer.rope.n_rot, 16);
    assert!(layer.rope.inv_freq.iter().all(|&f| f > 0.0));
}

#[test]
fn recurrent_layers_array_and_separate_head_give_the_same_model() {
    if fixtures_missing() {
        return;
    }
    let want = logits(&load(&rewrite(|_, _| {})).unwrap());
    let with_array = rewrite(|meta, _| {
        meta.retain(|(k, _)| k != "qwen35.full_attention_interval");
        meta.push((
            "qwen35.attention.recurrent_layers".into(),
            Value::Array(Array::Bool(vec![true, true, true, false, false])),
        ));
    });
    assert_eq!(logits(&load(&with_array).unwrap()), want);
    let with_head = rewrite(|_, tensors| {
        let embd = tensors.iter().find(|t| t.0 == "token_embd.weight").unwrap();
        let head = ("output.weight".to_string(), embd.1.clone(), embd.2.clone());
        tensors.push(head);
    });
    assert_eq!(logits(&load(&with_head).unwrap()), want);
    // A separate head that differs changes the logits.
    let other_head = rewrite(|_, tensors| {
        let embd = tensors.iter().find(|t| t.0 == "token_embd.weight").unwrap();
        let data = embd.2.iter().rev().copied().collect();
        tensors.push(("output.weight".to_string(), embd.1.clone(), data));
    });
    assert_ne!(logits(&load(&other_head).unwrap()), want);
}

#[test]
fn bad_files_are_refused_with_a_clear_error() {
    if fixtures_missing() {
        return;
    }
    let err = |f: tempfile::NamedTempFile| load(&f).err().unwrap().to_string();
    let e = err(rewrite(|_, t| t.retain(|t| t.0 != "blk.1.ssm_a")));
    assert!(e.contains("blk.1.ssm_a"), "{e}");
    let e = err(rewrite(|_, t| {
        let c = t
            .iter_mut()
            .find(|t| t.0 == "blk.0.ssm_conv1d.weight")
            .unwrap();
        c.1 = vec![8, 128];
    }));
    assert!(
        e.contains("blk.0.ssm_conv1d.weight") && e.contains("shape"),
        "{e}"
    );
    // The array says layer 3 is recurrent, but it holds attention tensors.
    let e = err(rewrite(|meta, _| {
        let v = Value::Array(Array::Bool(vec![true; 5]));
        set(meta, "qwen35.attention.recurrent_layers", v);
    }));
    assert!(e.contains("blk.3."), "{e}");
    let e = err(rewrite(|meta, _| {
        set(meta, "qwen35.ssm.inner_size", Value::U32(130));
    }));
    assert!(e.contains("inner_size"), "{e}");
    let e = err(rewrite(|meta, _| {
        set(
            meta,
            "general.architecture",
            Value::String("qwen35moe".into()),
        );
    }));
    assert!(
        e.contains("qwen35moe") && e.contains("not yet supported"),
        "{e}"
    );
}

/// The fixture's model files (GGUF weights, embedding dumps) are not in git: `scripts/
/// fixtures.sh` copies them into tests/data. Without them a test that needs them is skipped
/// and says so.
fn fixtures_missing() -> bool {
    testkit::fixtures_missing(testkit::QWEN35)
}
