//! `surplus info` end to end: the real test models, and broken files refused cleanly.

use std::path::Path;
use std::process::{Command, Output};

use gguf::{Array, GgufWriter};
use serde_json::Value;

fn surplus(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_surplus"))
        .args(args)
        .output()
        .expect("run surplus")
}

fn info_json(model: &Path) -> Value {
    let out = surplus(&["info", "--json", model.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("info --json prints one JSON object")
}

#[test]
fn info_json_on_the_test_models() {
    for (name, arch, tensors, vocab, template) in [
        ("smollm2-135m", "llama", 272, 49152, true),
        ("gemma3-270m", "gemma3", 236, 262144, false),
        ("qwen2.5-coder-0.5b", "qwen2", 291, 151936, true),
    ] {
        let path = registry::test_model(name);
        let j = info_json(&path);
        assert_eq!(j["architecture"], arch, "{name}");
        assert_eq!(j["tensor_count"], tensors, "{name}");
        assert_eq!(j["tokenizer"]["vocab_size"], vocab, "{name}");
        assert_eq!(j["chat_template"], template, "{name}");
        assert_eq!(j["metadata"]["general.architecture"], arch, "{name}");
        assert_eq!(j["file_size"], std::fs::metadata(&path).unwrap().len());
        // Parameters add up over the types, and match the sum over tensors.
        let by_type: u64 = j["types"]
            .as_object()
            .unwrap()
            .values()
            .map(|t| t["parameters"].as_u64().unwrap())
            .sum();
        assert_eq!(j["parameter_count"].as_u64().unwrap(), by_type);
        // The vocabulary is summarized, not dumped.
        let tokens = &j["metadata"]["tokenizer.ggml.tokens"];
        assert_eq!(tokens["len"], vocab, "{name}");
        assert_eq!(tokens["element_type"], "string");
    }
    let j = info_json(&registry::test_model("smollm2-135m"));
    assert_eq!(j["parameter_count"], 134_515_008);
    assert_eq!(j["block_count"], 30);
    assert_eq!(j["head_count"], 9);
    assert_eq!(j["head_count_kv"], 3);
    assert_eq!(j["context_length"], 8192);
    assert_eq!(j["types"]["Q4_1"]["tensors"], 210);
    assert_eq!(j["metadata"]["tokenizer.ggml.pre"], "smollm");
}

#[test]
fn info_text_names_the_essentials() {
    let path = registry::test_model("gemma3-270m");
    let out = surplus(&["info", path.to_str().unwrap()]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("architecture:    gemma3"), "{text}");
    assert!(text.contains("tensors:         236"), "{text}");
    assert!(text.contains("Q4_K"), "{text}");
    assert!(text.contains("tokenizer:       llama"), "{text}");
}

/// A small valid model file: metadata, a vocabulary and two tensors.
fn valid_file() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.set_str("general.architecture", "llama");
    w.set_u32("llama.block_count", 1);
    w.set_array(
        "tokenizer.ggml.tokens",
        Array::String(vec!["<s>".into(), "a".into()]),
    );
    w.add_f32("token_embd.weight", &[4, 2], &[0.5; 8]).unwrap();
    w.add_f32("output_norm.weight", &[4], &[1.0; 4]).unwrap();
    w.to_bytes()
}

/// Runs `info` on `bytes` and checks: non-zero exit, one line on stderr containing `expect`,
/// no panic.
fn assert_refused(bytes: &[u8], expect: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.gguf");
    std::fs::write(&path, bytes).unwrap();
    let out = surplus(&["info", path.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains("broken.gguf"), "names the file: {err}");
    assert!(err.contains(expect), "expected {expect:?} in: {err}");
}

#[test]
fn broken_files_are_refused_with_a_clear_message() {
    let valid = valid_file();
    let h = gguf::parse(&valid).unwrap();
    let infos_start = 24; // magic, version, two counts
    assert_refused(&[], "truncated file: magic");
    let mut bad_magic = valid.clone();
    bad_magic[..4].copy_from_slice(b"GGML");
    assert_refused(&bad_magic, "bad magic");
    assert_refused(&valid[..12], "truncated file: tensor count");
    assert_refused(
        &valid[..infos_start + 42],
        "value of \"general.architecture\"",
    );
    let in_data = (h.data_offset + 10) as usize;
    assert_refused(&valid[..in_data], "outside the");
    let mut random = Vec::new();
    let mut x = 12345u32;
    for _ in 0..4096 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        random.push((x >> 16) as u8);
    }
    assert_refused(&random, "bad magic");
    let mut huge = valid.clone();
    huge[8..16].copy_from_slice(&(1u64 << 62).to_le_bytes());
    assert_refused(&huge, "tensor count at offset 8 is 4611686018427387904");
    let mut version = valid.clone();
    version[4..8].copy_from_slice(&7u32.to_le_bytes());
    assert_refused(&version, "unsupported GGUF version 7");
}

#[test]
fn missing_file_and_unknown_name() {
    let out = surplus(&["info", "/nonexistent/model.gguf"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/model.gguf"), "{err}");
    let out = surplus(&["info", "no-such-model"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("smollm2-135m"), "lists the known names: {err}");
}

#[test]
fn help_explains_every_subcommand() {
    let out = surplus(&["--help"]);
    let text = String::from_utf8(out.stdout).unwrap();
    for sub in ["info", "pull", "tokenize", "template"] {
        assert!(text.contains(sub), "{text}");
        let out = surplus(&[sub, "--help"]);
        assert!(out.status.success());
        assert!(String::from_utf8(out.stdout).unwrap().contains("Usage"));
    }
}
