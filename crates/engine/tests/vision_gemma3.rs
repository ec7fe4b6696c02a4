//! Gemma 3 270M with the random-weight projector of tests/data/vision: image embeddings placed
//! between `<start_of_image>` and `<end_of_image>`, unscaled, attending to each other both
//! ways; greedy output against llama.cpp's (vision.json) with the README's loose rule: tokens
//! up to the first near-tie, log-probs within 0.20 nats, step-0 top-5 sets overlapping.

use engine::sampling::SamplingParams;
use engine::{Engine, EngineOptions, GenerateOptions, PromptPart};
use serde_json::Value;
use testkit::ids;

/// llama.cpp's own flash-attention choice moves step-0 log-probs by up to 0.23 nats: steps
/// whose top two are closer than this may part.
const NEAR_TIE: f64 = 0.35;
/// Measured: 0.105; with causal attention inside the image it would be 0.237.
const MAX_DLOGPROB: f64 = 0.20;

fn data() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/vision")
}

#[test]
fn gemma3_with_an_image_follows_llama_cpp() {
    if fixtures_missing() {
        return;
    }
    let g: Value =
        serde_json::from_str(&std::fs::read_to_string(data().join("vision.json")).unwrap())
            .unwrap();
    let opts = EngineOptions {
        n_ctx: 256,
        n_batch: 64,
        n_seq: 1,
        max_logit_rows: 1,
        n_threads: 2,
        gpu_layers: engine::GpuLayers::for_tests(),
        ..EngineOptions::default()
    };
    let mut engine = Engine::load(&registry::test_model("gemma3-270m"), &opts).unwrap();
    let proj = vision::Projector::open(data().join("gemma3-270m-mmproj.gguf")).unwrap();
    assert_eq!(proj.n_embd_out(), engine.model.hp.n_embd);
    let gen_opts = GenerateOptions {
        max_tokens: 32,
        sampling: SamplingParams::greedy(),
        ignore_eos: true,
        logprobs: 5,
        stop: vec![],
        constraint: None,
        logit_bias: Vec::new(),
    };
    let mut errors = Vec::new();
    for case in g["cases"].as_array().unwrap() {
        if case["model"] != "gemma3-270m" {
            continue;
        }
        let image = case["image"].as_str().unwrap();
        let prompt = case["prompt"].as_str().unwrap();
        // Text on each side tokenized separately; BOS, then the image between its markers.
        let ip = engine::image_prompt(&engine, prompt, "<__media__>").unwrap();
        assert!(ip.non_causal);
        let (pre, post) = (ip.before, ip.after);
        assert_eq!(pre, ids(&case["tokens_before_image"]), "{prompt:?}");
        assert_eq!(post, ids(&case["tokens_after_image"]), "{prompt:?}");
        let file = image.replace(".jpg", ".stb-decoded.png");
        let bytes = std::fs::read(data().join(file)).unwrap();
        let img = vision::decode(&bytes, &vision::DecodeLimits::default()).unwrap();
        let emb = proj.embed(&img).unwrap();
        let parts = [
            PromptPart::Tokens(&pre),
            PromptPart::Embeddings(engine::ImageRows {
                data: &emb.data,
                non_causal: ip.non_causal,
                grid: [emb.nx, emb.ny],
            }),
            PromptPart::Tokens(&post),
        ];
        let gen = engine
            .generate_parts(&parts, &gen_opts, |_, _| true)
            .unwrap();
        let want = ids(&case["greedy"]["tokens"]);
        let steps = case["greedy"]["steps"].as_array().unwrap();
        let mut shared = 0;
        let mut worst = 0.0f64;
        for (i, (&ours, &theirs)) in gen.tokens.iter().zip(&want).enumerate() {
            let top5 = steps[i]["top5"].as_array().unwrap();
            let lps: Vec<f64> = top5.iter().map(|p| p[1].as_f64().unwrap()).collect();
            let near_tie = lps[0] - lps[1] < NEAR_TIE;
            if ours != theirs {
                if !near_tie {
                    errors.push(format!(
                        "{image} {prompt:?}: step {i} chose {ours}, llama.cpp {theirs} (gap {:.3})",
                        lps[0] - lps[1]
                    ));
                }
                break;
            }
            let our_lp = gen.logprobs[i].iter().find(|p| p.0 == ours).unwrap().1 as f64;
            worst = worst.max((our_lp - lps[0]).abs());
            if i == 0 {
                let theirs: Vec<u64> = top5.iter().map(|p| p[0].as_u64().unwrap()).collect();
                let overlap = gen.logprobs[0]
                    .iter()
                    .filter(|p| theirs.contains(&(p.0 as u64)))
                    .count();
                if overlap < 3 {
                    errors.push(format!(
                        "{image} {prompt:?}: step-0 top-5 overlap {overlap}"
                    ));
                }
            }
            shared += 1;
            if near_tie {
                break;
            }
        }
        eprintln!(
            "{image} {:?}: {shared} steps checked, max |Δ logprob| {worst:.3}; ours {:?}",
            &prompt[..12],
            gen.text
        );
        if worst > MAX_DLOGPROB {
            errors.push(format!("{image} {prompt:?}: |Δ logprob| {worst:.3}"));
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

/// The fixture's model files (GGUF weights, embedding dumps) are not in git: `scripts/
/// fixtures.sh` copies them into tests/data. Without them a test that needs them is skipped
/// and says so.
fn fixtures_missing() -> bool {
    testkit::fixtures_missing(testkit::VISION)
}
