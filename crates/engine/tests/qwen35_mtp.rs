//! Speculative decoding with the `qwen35` fixture's own MTP block against llama.cpp
//! (tests/data/synthetic/qwen35-tiny.json, `mtp.n_max_3`): the output equals plain greedy
//! decoding, and where a round starts at the same position as one of llama.cpp's, the
//! block proposes the same drafts (up to a near-tie: a draft position where llama.cpp's top
//! two probabilities are within `tie`, after which that round is not compared).

use engine::sampling::SamplingParams;
use engine::speculative::{Controller, DraftSource, MtpDrafter};
use engine::{Engine, EngineOptions, GenerateOptions};
use serde_json::Value;
use testkit::ids;

fn data(file: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/synthetic")
        .join(file)
}

fn check(file: &str, cases: &Value, tie: f64) {
    let opts = EngineOptions {
        n_ctx: 256,
        n_batch: 128,
        n_seq: 1,
        max_logit_rows: 8,
        n_threads: 2,
        gpu_layers: engine::GpuLayers::for_tests(),
        ..EngineOptions::default()
    };
    let mut engine = Engine::load(&data(file), &opts).unwrap();
    assert!(engine.has_mtp());
    let gen_opts = GenerateOptions {
        max_tokens: 32,
        sampling: SamplingParams::greedy(),
        ignore_eos: true,
        logprobs: 0,
        stop: vec![],
        constraint: None,
        logit_bias: Vec::new(),
    };
    let (mut aligned, mut drafts_equal) = (0, 0);
    let mut mismatches = Vec::new();
    for case in cases.as_array().unwrap() {
        let prompt = ids(&case["prompt_ids"]);
        let plain = engine.generate(&prompt, &gen_opts, |_, _| true).unwrap();
        for fixed in [true, false] {
            let mut drafter = DraftSource::Mtp(MtpDrafter::traced());
            let mut ctl = if fixed {
                Controller::fixed(3)
            } else {
                Controller::new(3)
            };
            let (gen, stats) = engine
                .generate_speculative(&prompt, &gen_opts, &mut drafter, &mut ctl, |_, _| true)
                .unwrap();
            assert_eq!(gen.tokens, plain.tokens, "{file}: MTP changed the output");
            if !fixed {
                continue;
            }
            assert!(stats.drafted > 0, "{file}: nothing drafted");
            // llama.cpp's rounds: the first starts at the prompt's end, each next one where
            // the previous left the context.
            let mut start = prompt.len();
            let mut reference = Vec::new();
            for r in case["rounds"].as_array().unwrap() {
                // Per draft position: the top two (id, p) llama.cpp printed.
                let top2: Vec<[(u64, f64); 2]> = r["top3"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| {
                        let e = |i: usize| (t[i][0].as_u64().unwrap(), t[i][1].as_f64().unwrap());
                        [e(0), e(1)]
                    })
                    .collect();
                reference.push((start, ids(&r["draft"]), top2));
                // The last round may end before its verdict was logged.
                let Some(after) = r["n_tokens_after"].as_u64() else {
                    break;
                };
                start = after as usize;
            }
            let DraftSource::Mtp(mtp) = drafter else {
                unreachable!()
            };
            for (pos, ours) in mtp.trace.unwrap() {
                let Some((_, theirs, top2)) = reference.iter().find(|r| r.0 == pos) else {
                    continue;
                };
                aligned += 1;
                let first_diff = ours.iter().zip(theirs).position(|(a, b)| a != b);
                match first_diff {
                    None => drafts_equal += 1,
                    Some(i) => {
                        let [(a, pa), (b, pb)] = top2[i];
                        let near_tie = pa - pb < tie && [a, b].contains(&(ours[i] as u64));
                        if near_tie {
                            drafts_equal += 1;
                        } else {
                            mismatches.push(format!("pos {pos}: {ours:?} vs {theirs:?}"));
                        }
                    }
                }
            }
        }
    }
    eprintln!(
        "{file}: {drafts_equal} of {aligned} aligned rounds propose llama.cpp's drafts \
         (up to a near-tie within {tie})"
    );
    assert!(aligned >= 8, "{file}: only {aligned} rounds line up");
    assert!(mismatches.is_empty(), "{file}: {mismatches:?}");
}

#[test]
fn f32_mtp_matches_plain_greedy_and_llama_cpp_drafts() {
    if fixtures_missing() {
        return;
    }
    let text = std::fs::read_to_string(data("qwen35-tiny.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    check("qwen35-tiny-f32.gguf", &v["mtp"]["n_max_3"]["greedy"], 0.0);
}

#[test]
fn q8_0_mtp_matches_plain_greedy_and_llama_cpp_drafts() {
    if fixtures_missing() {
        return;
    }
    let text = std::fs::read_to_string(data("qwen35-tiny.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    check(
        "qwen35-tiny-q8_0.gguf",
        &v["variants"]["q8_0"]["mtp"]["n_max_3"]["greedy"],
        0.05,
    );
}

/// The fixture's model files (GGUF weights, embedding dumps) are not in git: `scripts/
/// fixtures.sh` copies them into tests/data. Without them a test that needs them is skipped
/// and says so.
fn fixtures_missing() -> bool {
    testkit::fixtures_missing(testkit::QWEN35)
}
