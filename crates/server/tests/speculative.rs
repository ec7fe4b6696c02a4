//! Speculative decoding in the server (`Speculation::Ngram`, `Draft` and `Mtp`):
//! greedy output is exactly that of plain decoding (text and log-probabilities), alone and
//! among other requests, and the drafts are counted in /metrics.

mod common;

use common::*;
use serde_json::{json, Value};
use server::Speculation;

const PROMPT: &str = "1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1, 2, 3,";

fn completion(url: &str, prompt: &str, max: usize) -> Value {
    let r = post_json(
        url,
        "/v1/completions",
        &json!({"prompt": prompt, "max_tokens": max, "temperature": 0, "ignore_eos": true, "logprobs": 2}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

/// Text, the exact log-probabilities (as JSON text, so bit-for-bit) and the usage.
fn fingerprint(v: &Value) -> (String, String, String, String) {
    (
        v["choices"][0]["text"].as_str().unwrap().to_owned(),
        v["choices"][0]["logprobs"]["token_logprobs"].to_string(),
        v["choices"][0]["logprobs"]["top_logprobs"].to_string(),
        v["usage"].to_string(),
    )
}

/// The value of an unlabelled counter (or of a labelled series, `name{...}`).
fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in /metrics:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

/// The request alone, then started just after 3 others.
fn alone_and_busy(url: &str) -> (Value, Value, Vec<Value>) {
    let others = [
        "Once upon a time",
        "a b c d a b c d a b",
        "The quick brown fox jumps over the lazy dog. The quick brown fox",
    ];
    let alone = completion(url, PROMPT, 24);
    let handles: Vec<_> = others
        .iter()
        .map(|p| {
            let url = url.to_owned();
            let p = p.to_string();
            std::thread::spawn(move || completion(&url, &p, 16))
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(30));
    let busy = completion(url, PROMPT, 24);
    let outs = handles.into_iter().map(|h| h.join().unwrap()).collect();
    (alone, busy, outs)
}

/// The plain server's answers (alone, amid others, the others) equal the speculating one's,
/// text and log-probs, and the plain answer alone equals the plain answer amid others.
fn assert_same_outputs(plain: (&Value, &Value, &[Value]), spec: (&Value, &Value, &[Value])) {
    assert_eq!(fingerprint(plain.0), fingerprint(plain.1));
    assert_eq!(fingerprint(plain.0), fingerprint(spec.0));
    assert_eq!(fingerprint(plain.0), fingerprint(spec.1));
    for (p, s) in plain.2.iter().zip(spec.2) {
        assert_eq!(fingerprint(p), fingerprint(s));
    }
}

/// Checks that the metrics `m` count drafted tokens, some of them kept (never more than
/// drafted); returns the tokens drafted.
fn some_drafts_kept(m: &str) -> u64 {
    let drafted = metric(m, "surplus_spec_drafted_total");
    let accepted = metric(m, "surplus_spec_accepted_total");
    assert!(drafted > 0, "nothing drafted:\n{m}");
    assert!(accepted > 0 && accepted <= drafted, "{m}");
    drafted
}

#[test]
fn ngram_speculation_keeps_greedy_output_and_counts_drafts() {
    let plain = start(4, 16, 256);
    let (p_alone, p_busy, p_others) = alone_and_busy(&base(&plain));
    plain.shutdown();

    let spec = start_spec(4, 16, 256, Speculation::Ngram { draft_max: 4 });
    let url = base(&spec);
    let (s_alone, s_busy, s_others) = alone_and_busy(&url);
    let m = get(&url, "/metrics").body;
    spec.shutdown();

    assert_same_outputs(
        (&p_alone, &p_busy, &p_others),
        (&s_alone, &s_busy, &s_others),
    );
    assert_eq!(s_alone["usage"]["completion_tokens"], 24);

    // The prompt repeats itself: most drafts are right.
    let drafted = some_drafts_kept(&m);
    let d0 = metric(&m, "surplus_spec_drafted_by_position_total{position=\"0\"}");
    let a0 = metric(
        &m,
        "surplus_spec_accepted_by_position_total{position=\"0\"}",
    );
    assert!(d0 > 0 && a0 <= d0, "{m}");
    let by_pos: u64 = (0..engine::speculative::MAX_DRAFT)
        .map(|i| {
            metric(
                &m,
                &format!("surplus_spec_drafted_by_position_total{{position=\"{i}\"}}"),
            )
        })
        .sum();
    assert_eq!(by_pos, drafted);
    // Generated tokens are counted once each, drafts included only when kept.
    let generated = metric(&m, "surplus_generation_tokens_total");
    assert_eq!(generated, 2 * 24 + 3 * 16);
}

/// Sampling with speculation still honours max_tokens and stop strings, and streams.
#[test]
fn ngram_speculation_with_sampling_and_stops() {
    let spec = start_spec(2, 8, 256, Speculation::Ngram { draft_max: 6 });
    let url = base(&spec);
    let r = post_json(
        &url,
        "/v1/completions",
        &json!({"prompt": PROMPT, "max_tokens": 20, "temperature": 0.7, "seed": 7, "ignore_eos": true, "logprobs": 1}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["usage"]["completion_tokens"], 20);
    assert_eq!(
        v["choices"][0]["logprobs"]["token_logprobs"]
            .as_array()
            .unwrap()
            .len(),
        20
    );
    // Greedy continues "4, 5, 1, 2, ...": stopping at "2," cuts the text there.
    let r = post_json(
        &url,
        "/v1/completions",
        &json!({"prompt": PROMPT, "max_tokens": 24, "temperature": 0, "ignore_eos": true, "stop": ["2,"]}),
    );
    let v = r.json();
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
    assert!(!v["choices"][0]["text"].as_str().unwrap().contains("2,"));
    spec.shutdown();
}

/// A draft model (the same model, so its greedy drafts are the target's picks) drafting for
/// several slots: greedy output is plain decoding's, alone and with 2 other requests, and
/// sampled requests draft with their own samplers.
#[test]
fn draft_model_speculation_keeps_greedy_output() {
    let others = ["Once upon a time", "a b c d a b c d a b"];
    let run = |url: &str| {
        let alone = completion(url, PROMPT, 16);
        let handles: Vec<_> = others
            .iter()
            .map(|p| {
                let url = url.to_owned();
                let p = p.to_string();
                std::thread::spawn(move || completion(&url, &p, 12))
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(30));
        let busy = completion(url, PROMPT, 16);
        let outs: Vec<Value> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        (alone, busy, outs)
    };
    let plain = start(3, 8, 128);
    let (p_alone, p_busy, p_others) = run(&base(&plain));
    plain.shutdown();

    let spec = start_spec(3, 8, 128, Speculation::Draft { draft_max: 4 });
    let url = base(&spec);
    let (s_alone, s_busy, s_others) = run(&url);
    let m = get(&url, "/metrics").body;
    // Sampling with a draft model: max_tokens holds and every token has its logprob.
    let r = post_json(
        &url,
        "/v1/completions",
        &json!({"prompt": PROMPT, "max_tokens": 12, "temperature": 0.8, "seed": 3, "ignore_eos": true, "logprobs": 1}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let m2 = get(&url, "/metrics").body;
    spec.shutdown();

    assert_same_outputs(
        (&p_alone, &p_busy, &p_others),
        (&s_alone, &s_busy, &s_others),
    );
    assert_eq!(s_alone["usage"]["completion_tokens"], 16);
    some_drafts_kept(&m);
    assert_eq!(
        metric(&m, "surplus_generation_tokens_total"),
        2 * 16 + 2 * 12
    );

    assert_eq!(v["usage"]["completion_tokens"], 12);
    assert_eq!(
        v["choices"][0]["logprobs"]["token_logprobs"]
            .as_array()
            .unwrap()
            .len(),
        12
    );
    assert!(
        metric(&m2, "surplus_spec_accepted_total") <= metric(&m2, "surplus_spec_drafted_total")
    );
}

/// The qwen35 fixture's own MTP block drafts for every sequence: greedy outputs (text and
/// log-probs) equal plain decoding's, alone and among other requests.
#[test]
fn mtp_speculation_keeps_greedy_output() {
    if fixtures_missing() {
        return;
    }
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/synthetic/qwen35-tiny-q8_0.gguf");
    let plain = start_file(file.clone(), 4, 16, 256, Speculation::Off);
    let (p_alone, p_busy, p_others) = alone_and_busy(&base(&plain));
    plain.shutdown();

    let spec = start_file(file, 4, 16, 256, Speculation::Mtp { draft_max: 3 });
    let url = base(&spec);
    let (s_alone, s_busy, s_others) = alone_and_busy(&url);
    let m = get(&url, "/metrics").body;
    spec.shutdown();

    assert_same_outputs(
        (&p_alone, &p_busy, &p_others),
        (&s_alone, &s_busy, &s_others),
    );
    // The adaptive length starts by drafting, so the block ran.
    assert!(metric(&m, "surplus_spec_drafted_total") > 0, "{m}");
}

/// The fixture's model files (GGUF weights, embedding dumps) are not in git: `scripts/
/// fixtures.sh` copies them into tests/data. Without them a test that needs them is skipped
/// and says so.
fn fixtures_missing() -> bool {
    testkit::fixtures_missing(testkit::QWEN35)
}
