//! The `qwen35` fixture's sequence state through the engine: a prompt evaluated in chunks
//! (chunk-parallel delta rule, prompt GEMMs) gives the logits of token-by-token decoding;
//! rolling back after a verification step gives exactly a fresh run's state; several
//! sequences decoded in one step; speculative decoding gives plain greedy output.

use engine::multi::DecodeItem;
use engine::sampling::SamplingParams;
use engine::speculative::{Controller, DraftSource, NgramDrafter, MAX_DRAFT};
use engine::{Engine, EngineOptions, GenerateOptions};

fn load(n_batch: usize, n_seq: usize, logit_rows: usize) -> Engine {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/synthetic/qwen35-tiny-f32.gguf");
    let opts = EngineOptions {
        n_ctx: 256,
        n_batch,
        n_seq,
        max_logit_rows: logit_rows,
        n_threads: 2,
        gpu_layers: engine::GpuLayers::for_tests(),
        ..EngineOptions::default()
    };
    Engine::load(&path, &opts).unwrap()
}

fn text_tokens(e: &Engine, n: usize) -> Vec<u32> {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/golden/GPL-3.txt"),
    )
    .unwrap();
    let ids = e.tokenizer.encode(&text[..4000], false, false);
    ids[..n].to_vec()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Chunks of 64 (two DeltaNet chunks at the end: 64 + 36) against one token per pass: the
/// logits of every position agree to float rounding.
#[test]
fn chunked_prefill_matches_token_by_token_decode() {
    if fixtures_missing() {
        return;
    }
    let n = 164;
    let mut chunked = load(100, 1, 100);
    let toks = text_tokens(&chunked, n);
    let mut want = Vec::new();
    let mut single = load(1, 1, 1);
    for (p, &t) in toks.iter().enumerate() {
        want.extend_from_slice(single.eval(0, &[t], p, false).unwrap());
    }
    let vocab = chunked.n_vocab();
    let mut got = Vec::new();
    for (c, chunk) in toks.chunks(100).enumerate() {
        got.extend_from_slice(chunked.eval(0, chunk, c * 100, true).unwrap());
    }
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let worst = (0..n)
        .map(|p| {
            max_diff(
                &got[p * vocab..(p + 1) * vocab],
                &want[p * vocab..(p + 1) * vocab],
            )
        })
        .fold(0.0, f32::max);
    eprintln!("max |Δ logit| {worst:.2e} (logits up to {scale:.1})");
    assert!(worst < 2e-3 * scale, "max |Δ logit| {worst}");
}

/// A verification step of the last token and 5 drafts, rolled back to keep `keep` of them:
/// the next step's logits are bit for bit those of a run that never saw the rejected ones.
#[test]
fn rollback_after_verification_matches_a_fresh_run() {
    if fixtures_missing() {
        return;
    }
    let mut e = load(128, 1, MAX_DRAFT + 1);
    let toks = text_tokens(&e, 60);
    let (prompt, rest) = toks.split_at(40);
    let step: Vec<DecodeItem> = (0..6)
        .map(|i| DecodeItem {
            seq: 0,
            token: rest[i],
            pos: (40 + i) as u32,
        })
        .collect();
    let next = rest[10];
    for keep in 0..=6 {
        // Fresh: the prompt, then the kept tokens one by one, then `next`.
        e.eval(0, prompt, 0, false).unwrap();
        for (i, &t) in rest[..keep].iter().enumerate() {
            e.eval(0, &[t], 40 + i, false).unwrap();
        }
        let want = e.eval(0, &[next], 40 + keep, false).unwrap().to_vec();
        // Verified together, then rolled back.
        e.eval(0, prompt, 0, false).unwrap();
        e.decode_step(&step).unwrap();
        e.rollback(0, 40 + keep).unwrap();
        let got = e.eval(0, &[next], 40 + keep, false).unwrap();
        assert!(got == want.as_slice(), "keep {keep}: logits differ");
    }
    // Rolling back before the verification step is refused, and so is skipping positions.
    e.eval(0, prompt, 0, false).unwrap();
    e.decode_step(&step).unwrap();
    assert!(e.rollback(0, 39).is_err());
    assert!(e.eval(0, &[next], 50, false).is_err());
}

/// Three sequences decoded together (one of them verifying drafts) get what each gets alone.
#[test]
fn sequences_decoded_together_match_each_alone() {
    if fixtures_missing() {
        return;
    }
    let mut e = load(128, 3, 12);
    let toks = text_tokens(&e, 90);
    let prompts = [&toks[..20], &toks[30..35], &toks[50..80]];
    let mut want = Vec::new();
    for p in prompts {
        e.eval(0, p, 0, false).unwrap();
        let mut row = Vec::new();
        for (i, &t) in toks[80..84].iter().enumerate() {
            row.push(e.eval(0, &[t], p.len() + i, false).unwrap().to_vec());
        }
        want.push(row);
    }
    for (s, p) in prompts.iter().enumerate() {
        e.eval(s as u32, p, 0, false).unwrap();
    }
    let vocab = e.n_vocab();
    // Step 1: one token each; step 2: sequence 1 verifies three tokens.
    let items: Vec<DecodeItem> = (0..3)
        .map(|s| DecodeItem {
            seq: s,
            token: toks[80],
            pos: prompts[s as usize].len() as u32,
        })
        .collect();
    let got = e.decode_step(&items).unwrap().to_vec();
    for s in 0..3 {
        assert!(
            got[s * vocab..(s + 1) * vocab] == want[s][0][..],
            "seq {s} step 1"
        );
    }
    let mut items = vec![];
    for s in 0..3u32 {
        let n = if s == 1 { 3 } else { 1 };
        for i in 0..n {
            items.push(DecodeItem {
                seq: s,
                token: toks[81 + i],
                pos: (prompts[s as usize].len() + 1 + i) as u32,
            });
        }
    }
    let got = e.decode_step(&items).unwrap().to_vec();
    let rows = [(0, 0, 1), (1, 1, 1), (2, 1, 2), (3, 1, 3), (4, 2, 1)];
    for (row, s, step) in rows {
        assert!(
            got[row * vocab..(row + 1) * vocab] == want[s][step][..],
            "seq {s} step {step}"
        );
    }
}

/// Speculative decoding with n-gram drafts (rejected drafts are rolled back) gives the
/// tokens and log-probs of plain greedy decoding.
#[test]
fn speculative_greedy_equals_plain_greedy() {
    if fixtures_missing() {
        return;
    }
    let mut e = load(128, 1, MAX_DRAFT + 1);
    let prompts = [
        "1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1, 2, 3,",
        "The capital of France is",
        "def fibonacci(n):\n",
    ];
    let mut drafted = 0;
    for prompt in prompts {
        let ids = e.tokenizer.encode(prompt, true, true);
        let opts = GenerateOptions {
            max_tokens: 40,
            sampling: SamplingParams::greedy(),
            ignore_eos: true,
            logprobs: 3,
            stop: vec![],
            constraint: None,
            logit_bias: Vec::new(),
        };
        e.clear_cache();
        let plain = e.generate(&ids, &opts, |_, _| true).unwrap();
        e.clear_cache();
        let mut ngram = DraftSource::Ngram(NgramDrafter::default());
        let mut ctl = Controller::fixed(4);
        let (spec, stats) = e
            .generate_speculative(&ids, &opts, &mut ngram, &mut ctl, |_, _| true)
            .unwrap();
        assert_eq!(spec.tokens, plain.tokens, "{prompt:?}");
        assert_eq!(spec.logprobs, plain.logprobs, "{prompt:?}");
        drafted += stats.drafted;
        // A follow-up prompt that extends the cached one (a chat's next turn) continues
        // from the recurrent state where it is.
        let mut longer = ids.clone();
        longer.extend_from_slice(&spec.tokens);
        longer.extend_from_slice(&ids);
        let cont = e.generate(&longer, &opts, |_, _| true).unwrap();
        e.clear_cache();
        let fresh = e.generate(&longer, &opts, |_, _| true).unwrap();
        assert_eq!(cont.tokens, fresh.tokens, "{prompt:?}: reused prefix");
    }
    assert!(drafted > 0, "the n-gram drafter never drafted");
}

/// The fixture's model files (GGUF weights, embedding dumps) are not in git: `scripts/
/// fixtures.sh` copies them into tests/data. Without them a test that needs them is skipped
/// and says so.
fn fixtures_missing() -> bool {
    testkit::fixtures_missing(testkit::QWEN35)
}
