//! The qwen35 fixture with the random-weight `qwen3vl_merger` projector of tests/data/vision:
//! an image between `<|vision_start|>` and `<|vision_end|>`, its rows at 2-D multi-section
//! rotary positions and the text after it resuming at p0 + max(nx, ny); greedy output against
//! llama.cpp's (vision.json): tokens up to the first near-tie, top-5 log-probs within 5e-3.

use engine::sampling::SamplingParams;
use engine::speculative::{Controller, DraftSource, MtpDrafter};
use engine::{Engine, EngineOptions, GenerateOptions, Generation, ImageRows, PromptPart};
use serde_json::Value;
use testkit::ids;

/// The README's tolerance on the Qwen log-probs.
const MAX_DLOGPROB: f64 = 5e-3;
/// Steps whose top two are closer than this may pick either (the smallest gap is 0.0025).
const NEAR_TIE: f64 = 0.01;

fn data() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data")
}

fn golden() -> Value {
    serde_json::from_str(&std::fs::read_to_string(data().join("vision/vision.json")).unwrap())
        .unwrap()
}

/// llama.cpp's embedding dump: int32 n_tokens, int32 n_embd, then the f32 values.
fn read_dump(file: &str) -> Vec<f32> {
    let b = std::fs::read(data().join("vision").join(file)).unwrap();
    b[8..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn load() -> Engine {
    let opts = EngineOptions {
        n_ctx: 256,
        n_batch: 64,
        n_seq: 1,
        max_logit_rows: 1,
        n_threads: 2,
        gpu_layers: engine::GpuLayers::for_tests(),
        ..EngineOptions::default()
    };
    Engine::load(&data().join("synthetic/qwen35-tiny-f32.gguf"), &opts).unwrap()
}

fn gen_opts() -> GenerateOptions {
    GenerateOptions {
        max_tokens: 32,
        sampling: SamplingParams::greedy(),
        ignore_eos: true,
        logprobs: 10,
        stop: vec![],
        constraint: None,
        logit_bias: Vec::new(),
    }
}

/// A prompt: `pre`, the image's rows (`grid` of them, causal), `post`.
fn image_parts<'a>(
    pre: &'a [u32],
    data: &'a [f32],
    grid: [usize; 2],
    post: &'a [u32],
) -> [PromptPart<'a>; 3] {
    [
        PromptPart::Tokens(pre),
        PromptPart::Embeddings(ImageRows {
            data,
            non_causal: false,
            grid,
        }),
        PromptPart::Tokens(post),
    ]
}

/// The prompt of `case` split around its image, checked against llama.cpp's tokens.
fn split(engine: &Engine, case: &Value) -> (Vec<u32>, Vec<u32>) {
    let prompt = case["prompt"].as_str().unwrap();
    let ip = engine::image_prompt(engine, prompt, "<__media__>").unwrap();
    assert!(!ip.non_causal);
    assert_eq!(ip.before, ids(&case["tokens_before_image"]), "{prompt:?}");
    assert_eq!(ip.after, ids(&case["tokens_after_image"]), "{prompt:?}");
    (ip.before, ip.after)
}

/// Compares a generation with the case's greedy reference; returns the steps compared and
/// the largest |Δ log-prob| over their reported top 5, or a description of a failure.
fn compare(gen: &Generation, case: &Value) -> Result<(usize, f64), String> {
    let want = ids(&case["greedy"]["tokens"]);
    let steps = case["greedy"]["steps"].as_array().unwrap();
    let mut worst = 0.0f64;
    let mut shared = 0;
    for (i, (&ours, &theirs)) in gen.tokens.iter().zip(&want).enumerate() {
        // llama-server skips a step's probabilities inside a UTF-8 sequence.
        let gap = match steps[i]["top5"].as_array() {
            Some(top5) => {
                let lps: Vec<(u32, f64)> = top5
                    .iter()
                    .map(|p| (p[0].as_u64().unwrap() as u32, p[1].as_f64().unwrap()))
                    .collect();
                for &(id, lp) in &lps {
                    let Some(o) = gen.logprobs[i].iter().find(|p| p.0 == id) else {
                        return Err(format!("step {i}: {id} is not in our top 10"));
                    };
                    worst = worst.max((o.1 as f64 - lp).abs());
                }
                lps[0].1 - lps[1].1
            }
            None => f64::INFINITY,
        };
        if ours != theirs {
            if gap >= NEAR_TIE {
                return Err(format!(
                    "step {i} chose {ours}, llama.cpp {theirs} (gap {gap:.4})"
                ));
            }
            break;
        }
        shared += 1;
        if gap < NEAR_TIE {
            break;
        }
    }
    Ok((shared, worst))
}

/// The text model alone: fed llama.cpp's own image embeddings (the default dumps, which its
/// greedy runs used), our positions and attention must give its tokens and log-probs.
#[test]
fn qwen35_with_llama_cpp_image_embeddings_follows_llama_cpp() {
    if fixtures_missing() {
        return;
    }
    let g = golden();
    let mut engine = load();
    let mut errors = Vec::new();
    let mut cases = 0;
    for case in g["cases"].as_array().unwrap() {
        if case["model"] != "qwen35-tiny" {
            continue;
        }
        cases += 1;
        let (pre, post) = split(&engine, case);
        let grid = &case["preprocess"]["token_grid"];
        let grid = [
            grid[0].as_u64().unwrap() as usize,
            grid[1].as_u64().unwrap() as usize,
        ];
        let emb = read_dump(case["embedding"]["file"].as_str().unwrap());
        assert_eq!(emb.len(), grid[0] * grid[1] * 64);
        assert_eq!(
            pre.len() + grid[0] * grid[1] + post.len(),
            case["n_prompt_tokens"].as_u64().unwrap() as usize
        );
        let parts = image_parts(&pre, &emb, grid, &post);
        let gen = engine
            .generate_parts(&parts, &gen_opts(), |_, _| true)
            .unwrap();
        let name = format!("{} {:?}", case["image"], case["prompt_index"]);
        match compare(&gen, case) {
            Ok((shared, worst)) => {
                eprintln!("{name}: {shared} steps, max |Δ logprob| {worst:.5}");
                if worst > MAX_DLOGPROB {
                    errors.push(format!("{name}: |Δ logprob| {worst:.5}"));
                }
                if shared < 2 {
                    errors.push(format!("{name}: only {shared} steps compared"));
                }
            }
            Err(e) => errors.push(format!("{name}: {e}")),
        }
    }
    assert_eq!(cases, 6);
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

/// The whole path from the pixels llama.cpp decoded: our preprocessing and tower (with f16
/// attention like llama.cpp's default flash attention: embeddings within 8.7e-4 of its
/// dumps), then the text model. Tokens up to the first near-tie, log-probs within 0.01 nats
/// (measured 0.0075; with plain f32 attention in the tower, 0.019).
#[test]
fn qwen35_with_our_image_embeddings_follows_llama_cpp() {
    if fixtures_missing() {
        return;
    }
    let g = golden();
    let mut engine = load();
    let proj = vision::Projector::open(data().join("vision/qwen35-tiny-mmproj.gguf")).unwrap();
    assert_eq!(proj.n_embd_out(), engine.model.hp.n_embd);
    let mut errors = Vec::new();
    let mut cases = 0;
    for case in g["cases"].as_array().unwrap() {
        if case["model"] != "qwen35-tiny" {
            continue;
        }
        cases += 1;
        let (pre, post) = split(&engine, case);
        let image = case["image"].as_str().unwrap();
        // The pixels llama.cpp worked with (JPEG decoders differ by a level or two).
        let file = image.replace(".jpg", ".stb-decoded.png");
        let bytes = std::fs::read(data().join("vision").join(file)).unwrap();
        let img = vision::decode(&bytes, &vision::DecodeLimits::default()).unwrap();
        let emb = proj.embed(&img).unwrap();
        let want_grid = &case["preprocess"]["token_grid"];
        assert_eq!(
            [emb.nx as u64, emb.ny as u64],
            [
                want_grid[0].as_u64().unwrap(),
                want_grid[1].as_u64().unwrap()
            ]
        );
        let parts = image_parts(&pre, &emb.data, [emb.nx, emb.ny], &post);
        let gen = engine
            .generate_parts(&parts, &gen_opts(), |_, _| true)
            .unwrap();
        let name = format!("{image} {:?}", case["prompt_index"]);
        match compare(&gen, case) {
            Ok((shared, worst)) => {
                eprintln!("{name}: {shared} steps, max |Δ logprob| {worst:.5}");
                if worst > 0.01 {
                    errors.push(format!("{name}: |Δ logprob| {worst:.5}"));
                }
                if shared < 2 {
                    errors.push(format!("{name}: only {shared} steps compared"));
                }
            }
            Err(e) => errors.push(format!("{name}: {e}")),
        }
    }
    assert_eq!(cases, 6);
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

/// MTP speculation on a prompt with an image (the MTP block takes the image rows as its
/// inputs) gives exactly the output of plain greedy decoding, with drafts made and some kept.
#[test]
fn mtp_speculation_with_an_image_keeps_greedy_output() {
    if fixtures_missing() {
        return;
    }
    let g = golden();
    let opts = EngineOptions {
        n_ctx: 256,
        n_batch: 64,
        n_seq: 1,
        max_logit_rows: 8,
        n_threads: 2,
        gpu_layers: engine::GpuLayers::for_tests(),
        ..EngineOptions::default()
    };
    let mut engine = Engine::load(&data().join("synthetic/qwen35-tiny-f32.gguf"), &opts).unwrap();
    let proj = vision::Projector::open(data().join("vision/qwen35-tiny-mmproj.gguf")).unwrap();
    let mut gen_opts = gen_opts();
    gen_opts.logprobs = 0;
    let (mut drafted, mut accepted) = (0, 0);
    for case in g["cases"].as_array().unwrap() {
        if case["model"] != "qwen35-tiny" {
            continue;
        }
        let (pre, post) = split(&engine, case);
        let image = case["image"].as_str().unwrap();
        let bytes = std::fs::read(data().join("vision").join(image)).unwrap();
        let img = vision::decode(&bytes, &vision::DecodeLimits::default()).unwrap();
        let emb = proj.embed(&img).unwrap();
        let parts = image_parts(&pre, &emb.data, [emb.nx, emb.ny], &post);
        let plain = engine
            .generate_parts(&parts, &gen_opts, |_, _| true)
            .unwrap();
        for fixed in [true, false] {
            let mut drafter = DraftSource::Mtp(MtpDrafter::default());
            let mut ctl = if fixed {
                Controller::fixed(3)
            } else {
                Controller::new(3)
            };
            let (gen, stats) = engine
                .generate_speculative_parts(&parts, &gen_opts, &mut drafter, &mut ctl, |_, _| true)
                .unwrap();
            assert_eq!(gen.tokens, plain.tokens, "{image}: MTP changed the output");
            if fixed {
                drafted += stats.drafted;
                accepted += stats.accepted;
            }
        }
        // A plain generation afterwards is unaffected (nothing of the image is reused).
        let again = engine
            .generate_parts(&parts, &gen_opts, |_, _| true)
            .unwrap();
        assert_eq!(again.tokens, plain.tokens);
    }
    eprintln!("MTP with images: {accepted}/{drafted} drafts kept");
    assert!(drafted > 0 && accepted > 0, "{accepted}/{drafted}");
}

/// An image larger than the batch (causal rows: qwen35) is evaluated in several passes, with
/// the same result as one pass; MTP speculation over it still keeps the greedy output.
#[test]
fn an_image_larger_than_the_batch_goes_in_several_passes() {
    if fixtures_missing() {
        return;
    }
    let g = golden();
    let case = g["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["model"] == "qwen35-tiny" && c["image"] == "shapes-300x200.png")
        .unwrap();
    let proj = vision::Projector::open(data().join("vision/qwen35-tiny-mmproj.gguf")).unwrap();
    let bytes = std::fs::read(data().join("vision/shapes-300x200.png")).unwrap();
    let emb = proj
        .embed(&vision::decode(&bytes, &vision::DecodeLimits::default()).unwrap())
        .unwrap();
    assert_eq!(emb.n_tokens, 54);
    let run = |n_batch: usize, mtp: bool| {
        let opts = EngineOptions {
            n_ctx: 256,
            n_batch,
            n_seq: 1,
            max_logit_rows: 8,
            n_threads: 2,
            gpu_layers: engine::GpuLayers::for_tests(),
            ..EngineOptions::default()
        };
        let mut engine =
            Engine::load(&data().join("synthetic/qwen35-tiny-f32.gguf"), &opts).unwrap();
        let (pre, post) = split(&engine, case);
        let parts = image_parts(&pre, &emb.data, [emb.nx, emb.ny], &post);
        if mtp {
            let mut drafter = DraftSource::Mtp(MtpDrafter::default());
            let mut ctl = Controller::fixed(3);
            let mut o = gen_opts();
            o.logprobs = 0;
            engine
                .generate_speculative_parts(&parts, &o, &mut drafter, &mut ctl, |_, _| true)
                .unwrap()
                .0
        } else {
            engine
                .generate_parts(&parts, &gen_opts(), |_, _| true)
                .unwrap()
        }
    };
    let one = run(64, false);
    let several = run(16, false);
    assert_eq!(several.tokens, one.tokens);
    for (a, b) in several.logprobs.iter().zip(&one.logprobs) {
        assert!((a[0].1 - b[0].1).abs() < 1e-3, "{a:?} vs {b:?}");
    }
    assert_eq!(run(16, true).tokens, one.tokens);
}

/// The fixture's model files are not in git: `scripts/fixtures.sh` copies them into
/// tests/data. Without them a test that needs them is skipped and says so.
fn fixtures_missing() -> bool {
    testkit::fixtures_missing(&[
        "synthetic/qwen35-tiny-f32.gguf",
        "vision/qwen35-tiny-mmproj.gguf",
        "vision/embd/qwen35-tiny__photo-150x100.bin",
    ])
}
