//! Speculative decoding keeps greedy output exactly: for every golden prompt of the three
//! models, plain greedy generation equals speculative generation with the n-gram drafter
//! and with a draft model (the model itself: fixed and adaptive draft lengths), tokens and
//! log-probs alike. A draft model with another tokenizer is refused.

use engine::sampling::SamplingParams;
use engine::speculative::{Controller, Drafter, ModelDrafter, NgramDrafter, SpecError, MAX_DRAFT};
use engine::{Engine, EngineOptions, GenerateOptions};
use serde_json::Value;

fn golden_prompts(file: &str) -> Vec<String> {
    let path = format!(
        "{}/../../tests/data/golden/{file}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v["greedy"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["prompt"].as_str().unwrap().to_string())
        .collect()
}

fn load(name: &str, logit_rows: usize) -> Engine {
    let opts = EngineOptions {
        n_ctx: 256,
        n_batch: 128,
        n_seq: 1,
        max_logit_rows: logit_rows,
        n_threads: 2,
    };
    Engine::load(&registry::test_model(name), &opts).unwrap()
}

fn check(name: &str, file: &str) {
    let mut target = load(name, MAX_DRAFT + 1);
    let mut by_model =
        ModelDrafter::new(load(name, 1), &target, &SamplingParams::greedy()).unwrap();
    let mut ngram = NgramDrafter::default();
    let (mut ngram_drafted, mut self_drafted, mut self_accepted) = (0, 0, 0);
    for prompt in golden_prompts(file) {
        let ids = target.tokenizer.encode(&prompt, true, true);
        for ignore_eos in [true, false] {
            let opts = GenerateOptions {
                max_tokens: 20,
                sampling: SamplingParams::greedy(),
                ignore_eos,
                logprobs: 3,
                stop: vec![],
            };
            // Each run evaluates the whole prompt (a reused prefix would change how its last
            // token is computed: alone rather than in the prompt's batch).
            target.clear_cache();
            let plain = target.generate(&ids, &opts, |_, _| true).unwrap();
            for run in 0..3 {
                let (drafter, mut ctl): (&mut dyn Drafter, Controller) = match run {
                    0 => (&mut ngram, Controller::fixed(4)),
                    1 => (&mut by_model, Controller::fixed(MAX_DRAFT)),
                    _ => (&mut by_model, Controller::new(3)),
                };
                let what = format!(
                    "{name} {prompt:?} {} (ignore_eos {ignore_eos})",
                    drafter.name()
                );
                target.clear_cache();
                let (spec, stats) = target
                    .generate_speculative(&ids, &opts, drafter, &mut ctl, |_, _| true)
                    .unwrap();
                assert_eq!(spec.tokens, plain.tokens, "{what}: tokens");
                assert_eq!(spec.text, plain.text, "{what}: text");
                assert_eq!(spec.finish_reason, plain.finish_reason, "{what}");
                assert_eq!(spec.logprobs, plain.logprobs, "{what}: log-probs");
                assert!(stats.accepted <= stats.drafted);
                if drafter.name() == "ngram" {
                    ngram_drafted += stats.drafted;
                } else {
                    self_drafted += stats.drafted;
                    self_accepted += stats.accepted;
                }
            }
        }
    }
    assert!(
        ngram_drafted > 0,
        "{name}: the n-gram drafter never drafted"
    );
    // The model drafting for itself: most drafts are kept (not all: the draft evaluates
    // some tokens in batches, the target one by one, and near-ties can fall either way).
    assert!(
        self_accepted * 2 >= self_drafted && self_drafted > 0,
        "{name}: {self_accepted} of {self_drafted} self-drafted tokens kept"
    );
}

#[test]
fn smollm2_greedy_is_unchanged_by_speculation() {
    check("smollm2-135m", "smollm2-135m-instruct-q4_1");
}

#[test]
fn qwen2_greedy_is_unchanged_by_speculation() {
    check("qwen2.5-coder-0.5b", "qwen2.5-coder-0.5b-instruct-q4");
}

#[test]
fn gemma3_greedy_is_unchanged_by_speculation() {
    check("gemma3-270m", "gemma3-270m-q4_k_m");
}

#[test]
fn a_draft_model_with_another_tokenizer_is_refused() {
    let target = load("smollm2-135m", MAX_DRAFT + 1);
    let err = ModelDrafter::new(load("gemma3-270m", 1), &target, &SamplingParams::greedy())
        .err()
        .expect("refused");
    assert!(matches!(err, SpecError::Vocabulary { .. }), "{err}");
    assert!(err.to_string().contains("tokenizer"), "{err}");
}
