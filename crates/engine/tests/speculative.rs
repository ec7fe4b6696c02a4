//! Speculative decoding keeps greedy output exactly: for every golden prompt of the three
//! models, plain greedy generation equals speculative generation with the n-gram drafter
//! and with a draft model (the model itself: fixed and adaptive draft lengths), tokens and
//! log-probs alike. A draft model with another tokenizer is refused.

use engine::sampling::SamplingParams;
use engine::speculative::{
    Controller, DraftSource, ModelDrafter, NgramDrafter, SpecError, MAX_DRAFT,
};
use engine::{Engine, EngineOptions, GenerateOptions};

fn golden_prompts(file: &str) -> Vec<String> {
    testkit::golden(file)["greedy"]
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
        gpu_layers: engine::GpuLayers::for_tests(),
        ..EngineOptions::default()
    };
    Engine::load(&registry::test_model(name), &opts).unwrap()
}

fn check(name: &str, file: &str) {
    let mut target = load(name, MAX_DRAFT + 1);
    let mut by_model = DraftSource::Model(Box::new(
        ModelDrafter::new(load(name, 1), &target, &SamplingParams::greedy()).unwrap(),
    ));
    let mut ngram = DraftSource::Ngram(NgramDrafter::default());
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
                constraint: None,
                logit_bias: Vec::new(),
            };
            // Each run evaluates the whole prompt (a reused prefix would change how its last
            // token is computed: alone rather than in the prompt's batch).
            target.clear_cache();
            let plain = target.generate(&ids, &opts, |_, _| true).unwrap();
            for run in 0..3 {
                let (drafter, mut ctl): (&mut DraftSource, Controller) = match run {
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

/// Pearson's chi-square test of homogeneity of two samples over the categories seen at
/// least 10 times in all (the rest lumped together): (statistic, degrees of freedom).
fn chi2_homogeneity(a: &[Vec<u32>], b: &[Vec<u32>]) -> (f64, usize) {
    use std::collections::BTreeMap;
    let mut counts: BTreeMap<&[u32], (f64, f64)> = BTreeMap::new();
    for x in a {
        counts.entry(x).or_default().0 += 1.0;
    }
    for x in b {
        counts.entry(x).or_default().1 += 1.0;
    }
    let mut cells: Vec<(f64, f64)> = Vec::new();
    let mut rest = (0.0, 0.0);
    for &(ca, cb) in counts.values() {
        if ca + cb >= 10.0 {
            cells.push((ca, cb));
        } else {
            rest.0 += ca;
            rest.1 += cb;
        }
    }
    if rest.0 + rest.1 > 0.0 {
        cells.push(rest);
    }
    let (na, nb) = (a.len() as f64, b.len() as f64);
    let n = na + nb;
    let stat = cells
        .iter()
        .map(|&(ca, cb)| {
            let t = ca + cb;
            let (ea, eb) = (t * na / n, t * nb / n);
            (ca - ea).powi(2) / ea + (cb - eb).powi(2) / eb
        })
        .sum();
    (stat, cells.len().saturating_sub(1))
}

/// Sampled generation with a draft model follows the same distribution as without: the
/// first three tokens of 300 seeds each way, chi-square test of homogeneity at p = 0.001.
/// (The exact rule itself is tested against known distributions in the crate's unit tests.)
#[test]
fn sampling_with_speculation_follows_the_target_distribution() {
    let mut target = load("smollm2-135m", MAX_DRAFT + 1);
    let ids = target.tokenizer.encode("Once upon a time", true, true);
    let params = |seed| SamplingParams {
        temperature: 1.0,
        top_k: 6,
        top_p: 1.0,
        min_p: 0.0,
        seed,
        ..SamplingParams::default()
    };
    let opts = |seed| GenerateOptions {
        max_tokens: 3,
        sampling: params(seed),
        ignore_eos: true,
        logprobs: 0,
        stop: vec![],
        constraint: None,
        logit_bias: Vec::new(),
    };
    let n = 300;
    let mut plain = Vec::with_capacity(n);
    for seed in 0..n as u64 {
        target.clear_cache();
        plain.push(
            target
                .generate(&ids, &opts(seed), |_, _| true)
                .unwrap()
                .tokens,
        );
    }
    let mut spec = Vec::with_capacity(n);
    let mut drafted = 0;
    // One draft model throughout (its sampler's stream simply goes on from run to run),
    // sampling from a flatter distribution than the target's: only the rejection rule makes
    // the output follow the target's.
    let flat = SamplingParams {
        temperature: 2.0,
        ..params(7)
    };
    let mut drafter = DraftSource::Model(Box::new(
        ModelDrafter::new(load("smollm2-135m", 1), &target, &flat).unwrap(),
    ));
    for seed in 0..n as u64 {
        target.clear_cache();
        let mut ctl = Controller::fixed(2);
        let (g, stats) = target
            .generate_speculative(
                &ids,
                &opts(seed + 1_000_000),
                &mut drafter,
                &mut ctl,
                |_, _| true,
            )
            .unwrap();
        drafted += stats.drafted;
        spec.push(g.tokens);
    }
    assert!(drafted > 0);
    let (stat, df) = chi2_homogeneity(&plain, &spec);
    // Upper 0.001 quantiles of chi-square for df = 1..=30 (Wilson-Hilferty beyond).
    let z = 3.090_2;
    let k = df as f64;
    let limit = k * (1.0 - 2.0 / (9.0 * k) + z * (2.0 / (9.0 * k)).sqrt()).powi(3);
    assert!(df >= 3, "too few categories ({df}) for a meaningful test");
    assert!(
        stat < limit,
        "chi-square {stat:.1} with {df} degrees of freedom (limit {limit:.1})"
    );
}
