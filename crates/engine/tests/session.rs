//! Generation details: the KV-cache prefix reuse of a conversation gives what a fresh
//! evaluation gives; stop strings and limits end generation with the right reason.

use engine::sampling::SamplingParams;
use engine::{Engine, EngineOptions, GenerateOptions};

fn engine() -> Engine {
    let opts = EngineOptions {
        n_ctx: 256,
        n_threads: 2,
        gpu_layers: engine::GpuLayers::for_tests(),
        ..EngineOptions::default()
    };
    Engine::load(&registry::test_model("smollm2-135m"), &opts).unwrap()
}

fn greedy(n: usize) -> GenerateOptions {
    GenerateOptions {
        max_tokens: n,
        sampling: SamplingParams::greedy(),
        ignore_eos: true,
        logprobs: 1,
        stop: vec![],
        constraint: None,
        logit_bias: Vec::new(),
    }
}

#[test]
fn reusing_the_cached_prefix_matches_a_fresh_run() {
    let mut e = engine();
    let p1 = e.tokenizer.encode("The capital of France is", true, true);
    let g1 = e.generate(&p1, &greedy(6), |_, _| true).unwrap();
    let mut p2 = p1.clone();
    p2.extend(&g1.tokens);
    p2.extend(
        e.tokenizer
            .encode(" Also, the capital of Spain is", false, true),
    );
    let reused = e.generate(&p2, &greedy(6), |_, _| true).unwrap();
    // Only the new part of the prompt was evaluated.
    assert!(reused.timings.prompt_tokens == p2.len());
    let mut fresh_engine = engine();
    let fresh = fresh_engine.generate(&p2, &greedy(6), |_, _| true).unwrap();
    assert_eq!(reused.tokens, fresh.tokens);
    // The two runs compute the first reply's keys and values differently (one token at a
    // time with 8-bit dot products, or in the prompt's batch with the int8 GEMM): both
    // approximations of the exact math, within the goldens' first-step tolerance.
    for (a, b) in reused.logprobs.iter().zip(&fresh.logprobs) {
        assert!((a[0].1 - b[0].1).abs() < 0.15, "{a:?} vs {b:?}");
    }
}

#[test]
fn stop_strings_and_limits() {
    let mut e = engine();
    let p = e.tokenizer.encode("1, 2, 3, 4, 5,", true, true);
    let mut opts = greedy(20);
    opts.stop = vec![" 8".into()];
    let g = e.generate(&p, &opts, |_, _| true).unwrap();
    assert_eq!(g.finish_reason, "stop");
    assert_eq!(g.text, " 6, 7,");
    let g = e.generate(&p, &greedy(3), |_, _| true).unwrap();
    assert_eq!((g.finish_reason, g.tokens.len()), ("length", 3));
    let mut n = 0;
    let g = e
        .generate(&p, &greedy(10), |_, _| {
            n += 1;
            n < 2
        })
        .unwrap();
    assert_eq!((g.finish_reason, g.tokens.len()), ("cancelled", 2));
    let too_long = greedy(300);
    assert!(e.generate(&p, &too_long, |_, _| true).is_err());
    assert!(e.generate(&[], &greedy(1), |_, _| true).is_err());
}

/// Streamed text holds back what may start a stop string: what `on_token` is given never
/// shows any part of the stop string, is a prefix of the final text, and the rest of that
/// text is released at the end. Speculative generation streams the same way.
#[test]
fn streamed_text_holds_back_a_partial_stop_string() {
    use engine::speculative::{Controller, DraftSource, NgramDrafter};
    let mut e = engine();
    let p = e.tokenizer.encode("1, 2, 3, 4, 5,", true, true);
    // " 7, 8" arrives over several tokens: " 7" first, which must be held back.
    let mut opts = greedy(20);
    opts.stop = vec![" 7, 8".into(), " 6, 7, 9".into()];
    let mut streamed = String::new();
    let g = e
        .generate(&p, &opts, |_, piece| {
            streamed.push_str(piece);
            true
        })
        .unwrap();
    assert_eq!(g.finish_reason, "stop");
    assert_eq!(g.text, " 6,");
    assert_eq!(streamed, " 6,", "a partial stop string was streamed");
    // A partial match that turns out not to be one is released as soon as it is known.
    opts.stop = vec![" 6, 7, 9".into()];
    opts.max_tokens = 8;
    let mut pieces = Vec::new();
    let g = e
        .generate(&p, &opts, |_, piece| {
            pieces.push(piece.to_string());
            true
        })
        .unwrap();
    assert_eq!(g.finish_reason, "length");
    let streamed: String = pieces.concat();
    assert!(g.text.starts_with(" 6, 7, 8"), "{:?}", g.text);
    assert!(g.text.starts_with(&streamed));
    assert!(pieces.iter().take(3).all(|p| p.is_empty()), "{pieces:?}");
    assert!(streamed.starts_with(" 6, 7, 8"), "{streamed:?}");
    // Speculative generation streams the same text.
    opts.stop = vec![" 7, 8".into()];
    opts.max_tokens = 20;
    let mut spec_streamed = String::new();
    let mut source = DraftSource::Ngram(NgramDrafter::default());
    e.clear_cache();
    let (g, _) = e
        .generate_speculative(
            &p,
            &opts,
            &mut source,
            &mut Controller::fixed(3),
            |_, piece| {
                spec_streamed.push_str(piece);
                true
            },
        )
        .unwrap();
    assert_eq!((g.finish_reason, g.text.as_str()), ("stop", " 6,"));
    assert_eq!(spec_streamed, " 6,");
}
