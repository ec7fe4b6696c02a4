//! Prefix caching in the server: a follow-up prompt resumes from what an earlier one left
//! (in its sequence, another sequence, or host memory after eviction), counts it in
//! `/metrics`, and answers exactly as a cold server; a changed early token reuses nothing
//! past it; the qwen35 fixture resumes from recurrent checkpoints turn after turn, MTP on.

mod common;

use common::*;
use serde_json::{json, Value};
use server::{CacheConfig, Server, Speculation};

/// A text of about 350 tokens (SmolLM2; 650 for Qwen): numbered facts a model can continue.
fn long_text(seed: usize) -> String {
    let mut s = String::from("Here is a list of facts about the towns of a small country.\n");
    for i in 0..30 {
        let n = (i * 7919 + seed * 104_729) % 1000;
        s.push_str(&format!(
            "Fact {i}: the town number {n} has {} bridges and {} schools.\n",
            n % 13,
            n % 7
        ));
    }
    s
}

/// A server over the SmolLM2 test model: `parallel` sequences of 2048 tokens, prompts in
/// chunks of 64, the prefix cache as `cache`.
fn start_with(parallel: usize, cache: CacheConfig) -> Server {
    let (engine, tok, _) = load(
        &registry::test_model(MODEL),
        parallel,
        2048,
        Speculation::Off,
    );
    let mut cfg = config(8, Speculation::Off);
    cfg.cache = cache;
    start_engine(engine, tok, cfg)
}

/// A counter or gauge of `/metrics`.
fn metric(base: &str, name: &str) -> f64 {
    let body = get(base, "/metrics").body;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{body}"))
}

/// Prompt tokens evaluated and served from cache so far.
fn counts(base: &str) -> (f64, f64) {
    (
        metric(base, "surplus_prompt_tokens_total"),
        metric(base, "surplus_prompt_tokens_cached_total"),
    )
}

/// A greedy completion of the token ids `prompt` (16 tokens, with log-probabilities):
/// its text, log-probabilities and prompt length.
fn complete(base: &str, prompt: &[u32]) -> (String, Value, usize) {
    let body = json!({"prompt": prompt, "max_tokens": 16, "temperature": 0, "logprobs": 2});
    let r = post_json(base, "/v1/completions", &body);
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let c = &v["choices"][0];
    (
        c["text"].as_str().unwrap_or_default().to_owned(),
        c["logprobs"].clone(),
        v["usage"]["prompt_tokens"].as_u64().unwrap_or(0) as usize,
    )
}

fn tokenizer() -> tokenizer::Tokenizer {
    engine::Engine::tokenizer_from_file(&registry::test_model(MODEL)).expect("the tokenizer")
}

/// What a fresh server answers to `prompt`.
fn cold(prompt: &[u32]) -> (String, Value, usize) {
    let s = start_with(1, CacheConfig::default());
    let r = complete(&base(&s), prompt);
    let (evaluated, cached) = counts(&base(&s));
    assert_eq!((evaluated as usize, cached as usize), (prompt.len(), 0));
    r
}

#[test]
fn a_follow_up_resumes_where_the_last_answer_ended_and_equals_a_cold_server() {
    let tok = tokenizer();
    let s = start_with(2, CacheConfig::default());
    let url = base(&s);
    let p1 = tok.encode(&long_text(1), true, true);
    let (out1, _, _) = complete(&url, &p1);
    let mut p2 = p1.clone();
    p2.extend(tok.encode(&out1, false, false));
    p2.extend(tok.encode("\nFact 30: the town number", false, false));
    let (e0, c0) = counts(&url);
    let warm = complete(&url, &p2);
    let (e1, c1) = counts(&url);
    let (evaluated, cached) = ((e1 - e0) as usize, (c1 - c0) as usize);
    assert_eq!(evaluated + cached, p2.len());
    assert!(
        cached >= p1.len(),
        "only {cached} of the {} positions the first request evaluated were reused",
        p1.len()
    );
    assert!(metric(&url, "surplus_prefix_cache_hits_total") >= 1.0);
    assert_eq!(warm, cold(&p2), "a resumed prompt answers as a cold one");
}

#[test]
fn a_changed_early_token_reuses_nothing_past_it() {
    let tok = tokenizer();
    let s = start_with(1, CacheConfig::default());
    let url = base(&s);
    let p1 = tok.encode(&long_text(2), true, true);
    complete(&url, &p1);
    let mut p2 = p1.clone();
    let at = 40;
    p2[at] = if p2[at] == 1000 { 1001 } else { 1000 };
    let (e0, c0) = counts(&url);
    let warm = complete(&url, &p2);
    let (e1, c1) = counts(&url);
    let (evaluated, cached) = ((e1 - e0) as usize, (c1 - c0) as usize);
    // Everything before the change may be reused (on the CPU), nothing after it.
    assert!(
        cached <= at,
        "{cached} positions reused past the change at {at}"
    );
    assert_eq!(evaluated + cached, p2.len());
    assert_eq!(warm, cold(&p2));
}

#[test]
fn a_prefix_evicted_from_its_sequence_is_found_in_host_memory() {
    let tok = tokenizer();
    let s = start_with(1, CacheConfig::default());
    let url = base(&s);
    let p1 = tok.encode(&long_text(3), true, true);
    complete(&url, &p1);
    // Another prompt takes the only sequence: the first one's prefix moves to host memory.
    complete(&url, &tok.encode(&long_text(4), true, true));
    assert!(metric(&url, "surplus_prefix_cache_entries") >= 1.0);
    assert!(metric(&url, "surplus_prefix_cache_bytes") > 0.0);
    let mut p2 = p1.clone();
    p2.extend(tok.encode(" And one more fact:", false, false));
    let (_, c0) = counts(&url);
    let warm = complete(&url, &p2);
    let (_, c1) = counts(&url);
    assert!(
        (c1 - c0) as usize >= p1.len() - 64,
        "{} of {} reused",
        c1 - c0,
        p1.len()
    );
    assert_eq!(warm, cold(&p2));

    // Without host memory, the evicted prefix is gone.
    let off = start_with(
        1,
        CacheConfig {
            ram_bytes: 0,
            ..CacheConfig::default()
        },
    );
    let url = base(&off);
    complete(&url, &p1);
    complete(&url, &tok.encode(&long_text(4), true, true));
    let (_, c0) = counts(&url);
    assert_eq!(complete(&url, &p2), warm);
    let reused = (counts(&url).1 - c0) as usize;
    // Only the first line, which the other prompt shares, is still in the sequence.
    assert!(reused < 32, "{reused} reused without host memory");
}

#[test]
fn requests_running_together_share_a_prefix_and_stay_exact() {
    let tok = tokenizer();
    let s = start_with(2, CacheConfig::default());
    let url = base(&s);
    let shared = tok.encode(&long_text(5), true, true);
    let prompts: Vec<Vec<u32>> = ["Fact 30: the town", "Fact 31: a town"]
        .iter()
        .map(|t| {
            let mut p = shared.clone();
            p.extend(tok.encode(t, false, false));
            p
        })
        .collect();
    complete(&url, &shared);
    let answers: Vec<_> = std::thread::scope(|sc| {
        let hs: Vec<_> = prompts
            .iter()
            .map(|p| {
                let url = url.clone();
                sc.spawn(move || complete(&url, p))
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("a client"))
            .collect()
    });
    for (p, a) in prompts.iter().zip(&answers) {
        assert_eq!(a, &cold(p));
    }
    assert!(metric(&url, "surplus_prompt_tokens_cached_total") >= 2.0 * (shared.len() - 64) as f64);
}

// ---------------------------------------------------------------------------------------
// qwen35 fixture: recurrent checkpoints, MTP on
// ---------------------------------------------------------------------------------------

/// The real Qwen3.5 chat template (from llama.cpp's models/templates).
const QWEN35_TEMPLATE: &str = include_str!("data/qwen3.5.jinja");

/// A server over the qwen35 fixture with the Qwen3.5 template and MTP drafts.
fn start_qwen35(file: &std::path::Path) -> Server {
    let spec = Speculation::Mtp { draft_max: 3 };
    let (mut engine, tok, _) = load(file, 2, 2048, spec);
    let (bos, eos) = (
        engine.template.bos_token().to_owned(),
        engine.template.eos_token().to_owned(),
    );
    engine.template = tokenizer::ChatTemplate::from_source(QWEN35_TEMPLATE, &bos, &eos)
        .expect("the Qwen3.5 template compiles");
    let mut cfg = config(8, spec);
    cfg.model_id = "qwen35-tiny".into();
    start_engine(engine, tok, cfg)
}

/// Tokens of the Qwen3.5 generation prompt with thinking off, at most.
const GENERATION_PROMPT: usize = 12;

/// A greedy chat answer: its message and the prompt's length.
fn chat(base: &str, messages: &[Value]) -> (Value, usize) {
    let body = json!({"messages": messages, "max_tokens": 12, "temperature": 0,
                      "chat_template_kwargs": {"enable_thinking": false}});
    let r = post_json(base, "/v1/chat/completions", &body);
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    (
        v["choices"][0]["message"].clone(),
        v["usage"]["prompt_tokens"].as_u64().unwrap_or(0) as usize,
    )
}

#[test]
fn qwen35_turns_resume_from_checkpoints_and_equal_a_cold_server() {
    if testkit::fixtures_missing(testkit::QWEN35) {
        return;
    }
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/synthetic/qwen35-tiny-q8_0.gguf");
    let s = start_qwen35(&file);
    let url = base(&s);
    let mut messages = vec![json!({"role": "system", "content": long_text(6)})];
    let mut last_prompt = 0;
    for (turn, question) in ["How many bridges?", "And schools?", "Which town?"]
        .iter()
        .enumerate()
    {
        messages.push(json!({"role": "user", "content": question}));
        let (e0, c0) = counts(&url);
        let (answer, prompt_len) = chat(&url, &messages);
        let (e1, c1) = counts(&url);
        let (evaluated, cached) = ((e1 - e0) as usize, (c1 - c0) as usize);
        assert_eq!(evaluated + cached, prompt_len);
        if turn > 0 {
            // Only the new turn is evaluated: the conversation up to the previous prompt's
            // generation prompt (`<|im_start|>assistant` and an empty think block, which
            // history renders otherwise) comes from the checkpoint saved there.
            assert!(
                cached + GENERATION_PROMPT >= last_prompt,
                "turn {turn}: {cached} reused of the previous prompt's {last_prompt}"
            );
            assert!(evaluated <= prompt_len - last_prompt + GENERATION_PROMPT);
            let fresh = start_qwen35(&file);
            let (cold_answer, _) = chat(&base(&fresh), &messages);
            assert_eq!(answer, cold_answer, "turn {turn} answers as a cold server");
        }
        last_prompt = prompt_len;
        let text = answer["content"].as_str().unwrap_or_default().to_owned();
        messages.push(json!({"role": "assistant", "content": text}));
    }
    assert!(metric(&url, "surplus_checkpoint_restores_total") >= 2.0);
    assert!(metric(&url, "surplus_checkpoints_saved_total") >= 2.0);
    assert!(
        metric(&url, "surplus_spec_drafted_total") > 0.0,
        "MTP drafted"
    );
}

/// A greedy completion of `prompt` on the qwen35 fixture server: text and log-probabilities.
fn complete_ids(base: &str, prompt: &[u32]) -> (String, Value) {
    let (text, logprobs, _) = complete(base, prompt);
    (text, logprobs)
}

/// Runs on the emulated GPU in CI (`scripts/emu.sh`), where prompts resume only at chunk
/// boundaries (a GPU's prompt GEMM rounds by shape); on the CPU, anywhere.
#[test]
fn qwen35_resumes_at_a_chunk_boundary_checkpoint_exactly() {
    if testkit::fixtures_missing(testkit::QWEN35) {
        return;
    }
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/synthetic/qwen35-tiny-q8_0.gguf");
    let tok = engine::Engine::tokenizer_from_file(&file).expect("the tokenizer");
    let mut p1 = tok.encode(&long_text(7), true, true);
    p1.truncate(200);
    let mut p2 = p1.clone();
    p2.extend(tok.encode(" Fact 30: the town number 4", false, false));
    let s = start_qwen35(&file);
    let url = base(&s);
    complete_ids(&url, &p1);
    let (_, c0) = counts(&url);
    let warm = complete_ids(&url, &p2);
    let cached = (counts(&url).1 - c0) as usize;
    // The test config's prompt chunks are 64 tokens: 192 is the last boundary before 200.
    assert!(cached >= 192, "{cached} reused");
    assert!(metric(&url, "surplus_checkpoint_restores_total") >= 1.0);
    let fresh = start_qwen35(&file);
    assert_eq!(warm, complete_ids(&base(&fresh), &p2));

    // Two other prompts take both sequences: p2's prefix and checkpoints go to host memory
    // (read back from the device), and a longer prompt resumes from there.
    for seed in [8, 9] {
        let mut q = tok.encode(&long_text(seed), true, true);
        q.truncate(100);
        complete_ids(&url, &q);
    }
    assert!(metric(&url, "surplus_prefix_cache_entries") >= 1.0);
    let mut p3 = p2.clone();
    p3.extend(tok.encode(" bridges and", false, false));
    let (_, c0) = counts(&url);
    let warm = complete_ids(&url, &p3);
    let cached = (counts(&url).1 - c0) as usize;
    assert!(cached >= 192, "{cached} reused from host memory");
    let fresh = start_qwen35(&file);
    assert_eq!(warm, complete_ids(&base(&fresh), &p3));
}
