//! Continuous batching through the real server: greedy output does not depend on what else
//! is in the batch, matches the single-sequence engine, and a full queue answers 429.

mod common;

use std::time::{Duration, Instant};

use common::*;
use engine::sampling::SamplingParams;
use engine::{Engine, EngineOptions, GenerateOptions};
use serde_json::{json, Value};

fn completion(url: &str, prompt: &str, max: usize) -> Value {
    let r = post_json(
        url,
        "/v1/completions",
        &json!({"prompt": prompt, "max_tokens": max, "temperature": 0, "ignore_eos": true, "logprobs": 1}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

/// Text and the exact log-probabilities (as JSON text, so bit-for-bit) of a completion.
fn fingerprint(v: &Value) -> (String, String) {
    (
        v["choices"][0]["text"].as_str().unwrap().to_owned(),
        v["choices"][0]["logprobs"]["token_logprobs"].to_string(),
    )
}

#[test]
fn greedy_output_does_not_depend_on_the_batch() {
    let srv = start(8, 16, 256);
    let url = base(&srv);
    let prompt = "The three primary colours are";
    let alone = completion(&url, prompt, 12);

    // The same request among 7 others of different lengths, started just before it.
    let others = [
        "Once upon a time",
        "def fibonacci(n):",
        "The quick brown fox jumps over the lazy dog. The quick brown fox jumps over the lazy dog. Again:",
        "1, 2, 3, 4,",
        "Paris is the capital of",
        "In the beginning",
        "A long time ago in a galaxy far, far away, there lived a",
    ];
    let handles: Vec<_> = others
        .iter()
        .map(|p| {
            let url = url.clone();
            let p = p.to_string();
            std::thread::spawn(move || completion(&url, &p, 16))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    let busy = completion(&url, prompt, 12);
    let mut outs = Vec::new();
    for h in handles {
        outs.push(h.join().unwrap());
    }
    assert_eq!(fingerprint(&alone), fingerprint(&busy));
    assert_eq!(alone["usage"], busy["usage"]);
    // The others were really decoded together (several sequences in one step).
    for (p, o) in others.iter().zip(&outs) {
        assert_eq!(o["usage"]["completion_tokens"], 16, "{p}");
    }
    // And each of them, run alone afterwards, gives the same again.
    for (p, o) in others.iter().zip(&outs).take(3) {
        assert_eq!(fingerprint(&completion(&url, p, 16)), fingerprint(o), "{p}");
    }
    srv.shutdown();

    // The server's greedy tokens are the single-sequence engine's.
    let path = registry::test_model(MODEL);
    let mut e = Engine::load(
        &path,
        &EngineOptions {
            n_ctx: 256,
            n_threads: 2,
            gpu_layers: engine::GpuLayers::for_tests(),
            ..EngineOptions::default()
        },
    )
    .unwrap();
    let ids = e.tokenizer.encode(prompt, true, true);
    let g = e
        .generate(
            &ids,
            &GenerateOptions {
                max_tokens: 12,
                sampling: SamplingParams::greedy(),
                ignore_eos: true,
                logprobs: 0,
                stop: vec![],
                constraint: None,
                logit_bias: Vec::new(),
            },
            |_, _| true,
        )
        .unwrap();
    assert_eq!(g.text, alone["choices"][0]["text"].as_str().unwrap());
}

#[test]
fn a_full_queue_answers_429_and_never_hangs() {
    let srv = start(1, 1, 256);
    let url = base(&srv);
    // A occupies the only slot.
    let mut a = stream(
        &url,
        "/v1/completions",
        &json!({"prompt": "Once upon a time", "max_tokens": 200, "temperature": 0,
                "ignore_eos": true, "stream": true}),
    );
    assert!(a.next_data().is_some());
    // B waits in the queue (of 1).
    let b = {
        let url = url.clone();
        std::thread::spawn(move || {
            post_json(
                &url,
                "/v1/completions",
                &json!({"prompt": "Hello", "max_tokens": 2, "temperature": 0}),
            )
        })
    };
    let t0 = Instant::now();
    while srv
        .metrics()
        .queue_depth
        .load(std::sync::atomic::Ordering::Relaxed)
        < 1
    {
        assert!(t0.elapsed() < Duration::from_secs(30), "B never queued");
        std::thread::sleep(Duration::from_millis(10));
    }
    // C finds the queue full: 429 with Retry-After, at once.
    let t0 = Instant::now();
    let c = post_json(
        &url,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}),
    );
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert_eq!(c.status, 429, "{}", c.body);
    assert_eq!(c.retry_after.as_deref(), Some("1"));
    let e = c.json();
    assert_eq!(e["error"]["code"], "queue_full");
    assert!(e["error"]["message"].is_string());
    // A leaves; B is served.
    drop(a);
    let b = b.join().unwrap();
    assert_eq!(b.status, 200, "{}", b.body);
    // Health while running; graceful shutdown ends everything.
    assert_eq!(get(&url, "/health").status, 200);
    srv.shutdown();
    assert!(std::net::TcpStream::connect(url.trim_start_matches("http://")).is_err());
}
