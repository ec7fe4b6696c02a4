//! Constrained output, tool calls, reasoning, `logit_bias` and `n` over the real server:
//! grammars batched with free requests, Qwen3.5 calls and reasoning parsed out of the text.
//!
//! SmolLM2 answers the plain requests; the Qwen3.5 ones run on the synthetic `qwen35`
//! fixture (random weights, so its text is nonsense but greedy-deterministic) with the real
//! Qwen3.5 chat template (tests/data/qwen3.5.jinja) put in place of the file's own.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use server::{Server, Speculation};

/// The real Qwen3.5 chat template (from llama.cpp's models/templates).
const QWEN35_TEMPLATE: &str = include_str!("data/qwen3.5.jinja");

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// The qwen35 fixture's Q8_0 file, or None (the test is skipped, saying so) when the
/// fixture files are not there.
fn qwen35_file() -> Option<PathBuf> {
    if testkit::fixtures_missing(testkit::QWEN35) {
        return None;
    }
    Some(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/data/synthetic/qwen35-tiny-q8_0.gguf"),
    )
}

/// A server over the qwen35 fixture (2 sequences of 1024 tokens) with the Qwen3.5 template.
fn start_qwen35(file: &std::path::Path, spec: Speculation) -> Server {
    start_qwen35_with(file, config(8, spec))
}

/// [`start_qwen35`] configured by `cfg`.
fn start_qwen35_with(file: &std::path::Path, mut cfg: server::Config) -> Server {
    let spec = cfg.spec;
    cfg.model_id = "qwen35-tiny".into();
    let (mut engine, tok, _) = load(file, 2, 1024, spec);
    let (bos, eos) = (
        engine.template.bos_token().to_owned(),
        engine.template.eos_token().to_owned(),
    );
    engine.template = tokenizer::ChatTemplate::from_source(QWEN35_TEMPLATE, &bos, &eos)
        .expect("the Qwen3.5 template compiles");
    start_engine(engine, tok, cfg)
}

/// A successful POST's JSON.
fn ok(url: &str, path: &str, body: &Value) -> Value {
    let r = post_json(url, path, body);
    assert_eq!(r.status, 200, "{body}\n-> {}", r.body);
    r.json()
}

/// The JSON events of a stream up to `[DONE]` (which must end it).
fn events(url: &str, path: &str, body: &Value) -> Vec<Value> {
    let s = stream(url, path, body);
    assert_eq!(s.status, 200);
    let data = s.all();
    assert_eq!(
        data.last().map(String::as_str),
        Some("[DONE]"),
        "{body}\n-> {data:?}"
    );
    data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("bad event ({e}): {d}")))
        .collect()
}

/// The value of an unlabelled counter in /metrics text.
fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in /metrics:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

/// The id of the token whose text is `piece` (which must be unique in the vocabulary).
fn token_id(tok: &tokenizer::Tokenizer, piece: &str) -> u32 {
    let ids: Vec<u32> = (0..tok.vocab_size() as u32)
        .filter(|&id| tok.piece(id, false) == piece.as_bytes())
        .collect();
    assert_eq!(ids.len(), 1, "tokens spelled {piece:?}: {ids:?}");
    ids[0]
}

/// A streamed chat answer put back together.
#[derive(Debug, Default, PartialEq)]
struct Streamed {
    reasoning: String,
    content: String,
    /// By call index: id, name and the concatenated arguments.
    calls: BTreeMap<u64, (String, String, String)>,
    finish: Option<String>,
}

fn reassemble(chunks: &[Value]) -> Streamed {
    let mut s = Streamed::default();
    for c in chunks {
        assert_eq!(c["object"], "chat.completion.chunk", "{c}");
        let Some(ch) = c["choices"].as_array().and_then(|a| a.first()) else {
            continue;
        };
        assert_eq!(ch["index"], 0);
        let d = &ch["delta"];
        if let Some(t) = d["reasoning_content"].as_str() {
            s.reasoning.push_str(t);
        }
        if let Some(t) = d["content"].as_str() {
            s.content.push_str(t);
        }
        for t in d["tool_calls"].as_array().into_iter().flatten() {
            let i = t["index"].as_u64().expect("a call index");
            let e = s.calls.entry(i).or_default();
            if let Some(id) = t["id"].as_str() {
                assert!(e.0.is_empty(), "a second id for call {i}: {t}");
                assert_eq!(t["type"], "function");
                e.0 = id.to_owned();
            }
            if let Some(name) = t["function"]["name"].as_str() {
                assert!(e.1.is_empty(), "a second name for call {i}: {t}");
                e.1 = name.to_owned();
            }
            if let Some(a) = t["function"]["arguments"].as_str() {
                e.2.push_str(a);
            }
        }
        if let Some(f) = ch["finish_reason"].as_str() {
            assert!(s.finish.is_none(), "two finish reasons");
            s.finish = Some(f.to_owned());
        }
    }
    s
}

// ---------------------------------------------------------------------------------------
// 1. Constrained and free requests in one batch (SmolLM2)
// ---------------------------------------------------------------------------------------

/// A person: a short name and a bounded age, nothing else.
fn person_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 16},
            "age": {"type": "integer", "minimum": 0, "maximum": 120}
        },
        "required": ["name", "age"],
        "additionalProperties": false
    })
}

/// A colour out of three and whether it is bright.
fn colour_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "colour": {"enum": ["red", "green", "blue"]},
            "bright": {"type": "boolean"}
        },
        "required": ["colour", "bright"],
        "additionalProperties": false
    })
}

/// Checks `text` against [`person_schema`] by hand.
fn check_person(text: &str) {
    let v: Value =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"));
    let o = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"));
    let mut keys: Vec<&str> = o.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["age", "name"], "{v}");
    let name = o["name"].as_str().unwrap_or_else(|| panic!("{v}"));
    assert!(name.chars().count() <= 16, "{v}");
    let age = o["age"].as_u64().unwrap_or_else(|| panic!("{v}"));
    assert!(age <= 120, "{v}");
}

/// Checks `text` against [`colour_schema`] by hand.
fn check_colour(text: &str) {
    let v: Value =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"));
    let o = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"));
    assert_eq!(o.len(), 2, "{v}");
    assert!(
        ["red", "green", "blue"].contains(&o["colour"].as_str().unwrap_or("")),
        "{v}"
    );
    assert!(o["bright"].is_boolean(), "{v}");
}

#[test]
fn constrained_requests_leave_a_free_one_in_their_batch_unchanged() {
    let srv = start(3, 8, 512);
    let url = base(&srv);
    let free = json!({
        "prompt": "Once upon a time", "max_tokens": 32, "temperature": 0,
        "ignore_eos": true, "logprobs": 2,
    });
    let alone = ok(&url, "/v1/completions", &free);

    // Each constrained request answers with the time its answer came.
    let spawn = |path: &'static str, body: Value| {
        let url = url.clone();
        std::thread::spawn(move || (ok(&url, path, &body), Instant::now()))
    };
    let person = spawn(
        "/v1/chat/completions",
        json!({
            "messages": [{"role": "user", "content": "Invent a person. Answer in JSON."}],
            "max_tokens": 48, "temperature": 0,
            "response_format": {"type": "json_schema",
                "json_schema": {"name": "person", "schema": person_schema(), "strict": true}},
        }),
    );
    let colour = spawn(
        "/v1/completions",
        json!({
            "prompt": "The sky as JSON:", "max_tokens": 32, "temperature": 0,
            "json_schema": colour_schema(),
        }),
    );
    std::thread::sleep(Duration::from_millis(30));
    let sent = Instant::now();
    let busy = ok(&url, "/v1/completions", &free);
    let (person, person_done) = person.join().unwrap();
    let (colour, colour_done) = colour.join().unwrap();
    // The constrained ones were still running when the free one was sent (3 slots: all
    // three in one batch).
    assert!(person_done > sent && colour_done > sent);
    let m = get(&url, "/metrics").body;
    srv.shutdown();

    // The free answer is bit-for-bit the same with grammars beside it.
    let a = &alone["choices"][0];
    let b = &busy["choices"][0];
    assert_eq!(a["text"], b["text"]);
    assert_eq!(a["logprobs"], b["logprobs"]);
    assert_eq!(alone["usage"], busy["usage"]);
    assert_eq!(alone["usage"]["completion_tokens"], 32);
    assert_eq!(a["logprobs"]["tokens"].as_array().unwrap().len(), 32);

    let p = &person["choices"][0];
    assert_eq!(p["finish_reason"], "stop", "{person}");
    check_person(p["message"]["content"].as_str().unwrap());
    let c = &colour["choices"][0];
    assert_eq!(c["finish_reason"], "stop", "{colour}");
    check_colour(c["text"].as_str().unwrap());
    // The three ran in one server; every token was counted.
    let generated = metric(&m, "surplus_generation_tokens_total");
    let want = 2 * 32
        + person["usage"]["completion_tokens"].as_u64().unwrap()
        + colour["usage"]["completion_tokens"].as_u64().unwrap();
    assert_eq!(generated, want, "{m}");
}

// ---------------------------------------------------------------------------------------
// 2. Tool calls (qwen35 fixture, Qwen3.5 template, XML calls)
// ---------------------------------------------------------------------------------------

/// Two tools: the weather (a city, a number of days) and the time (a zone out of two).
/// Every value is bounded (the city an enum, the days a range): in the Qwen XML format a
/// free string parameter ends only when the model writes `\n</parameter>` (`maxLength` is
/// not enforced there), which the random fixture never does.
fn tools() -> Value {
    json!([
        {"type": "function", "function": {
            "name": "get_weather",
            "description": "The weather forecast of a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "enum": ["Paris", "London", "Tokyo"]},
                    "days": {"type": "integer", "minimum": 1, "maximum": 14}
                },
                "required": ["city", "days"]
            }
        }},
        {"type": "function", "function": {
            "name": "get_time",
            "description": "The time now.",
            "parameters": {
                "type": "object",
                "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
                "required": ["zone"]
            }
        }}
    ])
}

fn tool_request(choice: Value) -> Value {
    json!({
        "messages": [{"role": "user", "content": "What is the weather in Paris for the next 3 days?"}],
        "tools": tools(),
        "tool_choice": choice,
        "parallel_tool_calls": false,
        "chat_template_kwargs": {"enable_thinking": false},
        "max_tokens": 160,
        "temperature": 0,
        "logprobs": true,
    })
}

/// Checks that the arguments of a call to `name` fit its tool's schema; returns them.
fn check_arguments(name: &str, arguments: &str) -> Value {
    let a: Value = serde_json::from_str(arguments)
        .unwrap_or_else(|e| panic!("arguments are not JSON ({e}): {arguments:?}"));
    let o = a
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {a}"));
    match name {
        "get_weather" => {
            assert_eq!(o.len(), 2, "{a}");
            assert!(o["city"].is_string(), "{a}");
            let days = o["days"].as_i64().unwrap_or_else(|| panic!("{a}"));
            assert!(o["days"].is_i64() && (1..=14).contains(&days), "{a}");
        }
        "get_time" => {
            assert_eq!(o.len(), 1, "{a}");
            assert!(
                ["UTC", "CET"].contains(&o["zone"].as_str().unwrap_or("")),
                "{a}"
            );
        }
        other => panic!("a call to an unknown tool `{other}`"),
    }
    a
}

/// The one call of a whole answer: (name, arguments), checked.
fn the_call(v: &Value) -> (String, String) {
    let c = &v["choices"][0];
    assert_eq!(c["finish_reason"], "tool_calls", "{v}");
    let calls = c["message"]["tool_calls"].as_array().expect("tool_calls");
    assert_eq!(calls.len(), 1, "{v}");
    let call = &calls[0];
    assert_eq!(call["type"], "function");
    let id = call["id"].as_str().unwrap();
    assert!(
        id.len() == 29
            && id.starts_with("call_")
            && id[5..].bytes().all(|b| b.is_ascii_alphanumeric()),
        "{id}"
    );
    let name = call["function"]["name"].as_str().unwrap().to_owned();
    let args = call["function"]["arguments"].as_str().unwrap().to_owned();
    check_arguments(&name, &args);
    (name, args)
}

/// Named and required calls with and without MTP drafts: the same calls, and the same
/// log-probabilities.
#[test]
fn tool_calls_are_parsed_and_do_not_depend_on_speculation() {
    let Some(file) = qwen35_file() else { return };
    let named = tool_request(json!({"type": "function", "function": {"name": "get_weather"}}));
    let required = tool_request(json!("required"));

    let run = |spec: Speculation| {
        let srv = start_qwen35(&file, spec);
        let url = base(&srv);
        let n = ok(&url, "/v1/chat/completions", &named);
        let r = ok(&url, "/v1/chat/completions", &required);
        let mut sb = named.clone();
        sb["stream"] = json!(true);
        let s = reassemble(&events(&url, "/v1/chat/completions", &sb));
        let m = get(&url, "/metrics").body;
        srv.shutdown();
        (n, r, s, m)
    };
    let (n_off, r_off, s_off, _) = run(Speculation::Off);
    let (n_mtp, r_mtp, s_mtp, m) = run(Speculation::Mtp { draft_max: 3 });

    let (name, args) = the_call(&n_off);
    assert_eq!(name, "get_weather");
    let c = &n_off["choices"][0]["message"];
    assert!(c["content"].is_null() || c["content"] == "", "{c}");
    // Greedy output does not depend on speculation, the grammar on or not.
    assert_eq!(the_call(&n_mtp), (name.clone(), args.clone()));
    assert_eq!(
        n_off["choices"][0]["logprobs"],
        n_mtp["choices"][0]["logprobs"]
    );
    assert_eq!(n_off["usage"], n_mtp["usage"]);
    assert!(
        r_off["choices"][0]["message"]["content"].is_null(),
        "{r_off}"
    );
    let (rname, rargs) = the_call(&r_off);
    assert_eq!(the_call(&r_mtp), (rname, rargs));
    assert_eq!(
        r_off["choices"][0]["logprobs"],
        r_mtp["choices"][0]["logprobs"]
    );
    assert!(metric(&m, "surplus_spec_drafted_total") > 0, "{m}");

    // Streamed: the deltas make the same call, with one id.
    for s in [&s_off, &s_mtp] {
        assert_eq!(s.finish.as_deref(), Some("tool_calls"), "{s:?}");
        assert_eq!(s.content, "", "{s:?}");
        assert_eq!(s.reasoning, "", "{s:?}");
        assert_eq!(s.calls.len(), 1, "{s:?}");
        let (id, sname, sargs) = &s.calls[&0];
        assert!(id.starts_with("call_") && id.len() == 29, "{id}");
        assert_eq!((sname, sargs), (&name, &args));
    }
}

// ---------------------------------------------------------------------------------------
// 3. Reasoning (qwen35 fixture, Qwen3.5 template, thinking on)
// ---------------------------------------------------------------------------------------

#[test]
fn reasoning_goes_to_reasoning_content_unless_asked_not_to() {
    let Some(file) = qwen35_file() else { return };
    let srv = start_qwen35(&file, Speculation::Off);
    let url = base(&srv);
    let body = json!({
        "messages": [{"role": "user", "content": "Why is the sky blue?"}],
        "max_tokens": 12,
        "temperature": 0,
    });
    let v = ok(&url, "/v1/chat/completions", &body);
    let c = &v["choices"][0];
    assert_eq!(c["finish_reason"], "length", "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 12);
    let reasoning = c["message"]["reasoning_content"]
        .as_str()
        .unwrap_or_else(|| panic!("no reasoning_content: {v}"))
        .to_owned();
    assert!(!reasoning.is_empty());
    let content = &c["message"]["content"];
    assert!(content.is_null() || content == "", "{v}");

    // Streamed: the reasoning pieces make the same text.
    let mut sb = body.clone();
    sb["stream"] = json!(true);
    let s = reassemble(&events(&url, "/v1/chat/completions", &sb));
    assert_eq!(s.reasoning, reasoning);
    assert_eq!(s.content, "");
    assert!(s.calls.is_empty());
    assert_eq!(s.finish.as_deref(), Some("length"));

    // reasoning_format "none": the same text, as content.
    let mut nb = body.clone();
    nb["reasoning_format"] = json!("none");
    let n = ok(&url, "/v1/chat/completions", &nb);
    let nc = &n["choices"][0];
    assert_eq!(nc["message"]["content"].as_str(), Some(reasoning.as_str()));
    assert!(nc["message"].get("reasoning_content").is_none(), "{n}");
    assert_eq!(nc["finish_reason"], "length");
    nb["stream"] = json!(true);
    let s = reassemble(&events(&url, "/v1/chat/completions", &nb));
    assert_eq!(s.content, reasoning);
    assert_eq!(s.reasoning, "");
    srv.shutdown();

    // A server started with reasoning off (`--reasoning-format none`) keeps it in content;
    // a request may still ask for the split.
    let mut cfg = config(8, Speculation::Off);
    cfg.reasoning = false;
    let srv = start_qwen35_with(&file, cfg);
    let url = base(&srv);
    let v = ok(&url, "/v1/chat/completions", &body);
    let m = &v["choices"][0]["message"];
    assert_eq!(m["content"].as_str(), Some(reasoning.as_str()), "{v}");
    assert!(m.get("reasoning_content").is_none(), "{v}");
    let mut ab = body.clone();
    ab["reasoning_format"] = json!("auto");
    let v = ok(&url, "/v1/chat/completions", &ab);
    let m = &v["choices"][0]["message"];
    assert_eq!(
        m["reasoning_content"].as_str(),
        Some(reasoning.as_str()),
        "{v}"
    );
    assert!(m["content"].is_null() || m["content"] == "", "{v}");
    srv.shutdown();
}

// ---------------------------------------------------------------------------------------
// 4. logit_bias (SmolLM2)
// ---------------------------------------------------------------------------------------

#[test]
fn logit_bias_moves_the_first_token() {
    let srv = start(2, 8, 256);
    let url = base(&srv);
    let tok = engine::Engine::tokenizer_from_file(&registry::test_model(MODEL)).unwrap();
    let prompt = tok.encode("The capital of France is", true, true);
    let body = |bias: Value| {
        json!({"prompt": prompt, "max_tokens": 3, "temperature": 0, "logprobs": 2,
               "logit_bias": bias})
    };
    let first = |v: &Value| -> String {
        v["choices"][0]["logprobs"]["tokens"][0]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let plain = ok(&url, "/v1/completions", &body(json!({})));
    let t_text = first(&plain);
    let t = token_id(&tok, &t_text);
    // The runner-up, for later.
    let top = plain["choices"][0]["logprobs"]["top_logprobs"][0]
        .as_object()
        .unwrap();
    assert_eq!(top.len(), 2);
    let second = top.keys().find(|k| **k != t_text).unwrap().clone();

    // -100 on T: another first token.
    let v = ok(&url, "/v1/completions", &body(json!({t.to_string(): -100})));
    assert_ne!(first(&v), t_text, "{v}");
    assert_eq!(first(&v), second, "the runner-up takes its place: {v}");

    // +100 on U (an unlikely token): U comes first.
    let u = token_id(&tok, " zebra");
    assert_ne!(u, t);
    let v = ok(&url, "/v1/completions", &body(json!({u.to_string(): 100})));
    assert_eq!(first(&v), " zebra", "{v}");
    srv.shutdown();
}

// ---------------------------------------------------------------------------------------
// 5. n (SmolLM2)
// ---------------------------------------------------------------------------------------

#[test]
fn n_choices_are_seeded_one_after_another() {
    let srv = start(4, 8, 256);
    let url = base(&srv);
    let body = |n: usize, seed: u64| {
        json!({"prompt": "My favourite food is", "max_tokens": 8, "temperature": 1,
               "seed": seed, "n": n, "ignore_eos": true})
    };
    let v = ok(&url, "/v1/completions", &body(3, 11));
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3, "{v}");
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
        assert_eq!(c["finish_reason"], "length");
    }
    assert_eq!(v["usage"]["completion_tokens"], 3 * 8);
    assert_eq!(
        v["usage"]["total_tokens"],
        v["usage"]["prompt_tokens"].as_u64().unwrap() + 24
    );
    // Choice i is what n = 1 gives with seed 11 + i.
    for (i, c) in choices.iter().enumerate() {
        let one = ok(&url, "/v1/completions", &body(1, 11 + i as u64));
        assert_eq!(one["choices"].as_array().unwrap().len(), 1);
        assert_eq!(one["choices"][0]["text"], c["text"], "choice {i}");
        assert_eq!(one["usage"]["completion_tokens"], 8);
    }
    // Not all the same text (the seeds differ).
    assert!(
        choices[0]["text"] != choices[1]["text"] || choices[1]["text"] != choices[2]["text"],
        "{v}"
    );
    srv.shutdown();
}

// ---------------------------------------------------------------------------------------
// 6. json_object and Lark grammars on /v1/completions (SmolLM2)
// ---------------------------------------------------------------------------------------

#[test]
fn completions_follow_json_object_and_lark_grammars() {
    let srv = start(2, 8, 256);
    let url = base(&srv);
    let v = ok(
        &url,
        "/v1/completions",
        &json!({"prompt": "A user record in JSON:", "max_tokens": 64, "temperature": 0,
                "response_format": {"type": "json_object"}}),
    );
    let c = &v["choices"][0];
    assert_eq!(c["finish_reason"], "stop", "{v}");
    let text = c["text"].as_str().unwrap();
    let o: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    assert!(o.is_object(), "{o}");

    let body = json!({"prompt": "Is Paris in France? Answer:", "max_tokens": 8,
                      "temperature": 0, "grammar": "start: \"yes\" | \"no\""});
    let v = ok(&url, "/v1/completions", &body);
    let c = &v["choices"][0];
    let text = c["text"].as_str().unwrap();
    assert!(text == "yes" || text == "no", "{v}");
    assert_eq!(c["finish_reason"], "stop", "{v}");
    // Streamed: the same text.
    let mut sb = body.clone();
    sb["stream"] = json!(true);
    let chunks = events(&url, "/v1/completions", &sb);
    let streamed: String = chunks
        .iter()
        .filter_map(|e| e["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(streamed, text);
    let finish: Vec<&str> = chunks
        .iter()
        .filter_map(|e| e["choices"][0]["finish_reason"].as_str())
        .collect();
    assert_eq!(finish, ["stop"]);
    // Sampled at a high temperature, it is still one of the two.
    for seed in 0..4 {
        let v = ok(
            &url,
            "/v1/completions",
            &json!({"prompt": "Is Paris in France? Answer:", "max_tokens": 8,
                    "temperature": 2, "seed": seed, "grammar": "start: \"yes\" | \"no\""}),
        );
        let t = v["choices"][0]["text"].as_str().unwrap();
        assert!(t == "yes" || t == "no", "{v}");
    }
    // GBNF, as llama.cpp takes it: a date, sampled.
    let gbnf = "root ::= year \"-\" month \"-\" day\n\
                year ::= [12] [0-9] [0-9] [0-9]\n\
                month ::= \"0\" [1-9] | \"1\" [0-2]\n\
                day ::= [0-2] [0-9] | \"3\" [01]   # no calendar check\n";
    for seed in 0..3 {
        let v = ok(
            &url,
            "/v1/completions",
            &json!({"prompt": "The date was", "max_tokens": 16, "temperature": 1,
                    "seed": seed, "grammar": gbnf}),
        );
        let t = v["choices"][0]["text"].as_str().unwrap();
        let b = t.as_bytes();
        assert_eq!(b.len(), 10, "{v}");
        assert!(
            b[4] == b'-' && b[7] == b'-' && t.chars().filter(char::is_ascii_digit).count() == 8,
            "{v}"
        );
        assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
    }
    // A GBNF grammar that does not convert: a 400 that says where.
    let r = post_json(
        &url,
        "/v1/completions",
        &json!({"prompt": "x", "grammar": "root ::= item\nitem ::= [a-z\n"}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("line 2"), "{}", r.body);
    srv.shutdown();
}

/// A named tool call with MTP drafting and a free request beside it: the call is well
/// formed and its drafts were verified through the grammar. Cheap enough for the emulated
/// GPU in CI (`scripts/emu.sh cargo test -p surplus-server --test structured -- mtp_`),
/// where the grammar's masks are computed on a CPU thread while the GPU runs each pass.
#[test]
fn mtp_drafts_under_a_grammar_beside_a_free_request() {
    let Some(file) = qwen35_file() else { return };
    let srv = start_qwen35(&file, Speculation::Mtp { draft_max: 3 });
    let url = base(&srv);
    let named = tool_request(json!({"type": "function", "function": {"name": "get_weather"}}));
    let free = json!({"messages": [{"role": "user", "content": "Tell me a story."}],
                      "max_tokens": 16, "temperature": 0,
                      "chat_template_kwargs": {"enable_thinking": false}});
    let (called, told) = std::thread::scope(|s| {
        let a = s.spawn(|| ok(&url, "/v1/chat/completions", &named));
        let b = s.spawn(|| ok(&url, "/v1/chat/completions", &free));
        (a.join().unwrap(), b.join().unwrap())
    });
    let m = get(&url, "/metrics").body;
    srv.shutdown();
    let (name, args) = the_call(&called);
    assert_eq!(name, "get_weather");
    check_arguments(&name, &args);
    assert_eq!(told["choices"][0]["finish_reason"], "length", "{told}");
    assert!(metric(&m, "surplus_spec_drafted_total") > 0, "{m}");
}
