//! The HTTP API over the real model on a loopback port: chat and completions (JSON and SSE),
//! logprobs, stop strings, every class of bad input, health and metrics.

mod common;

use std::sync::OnceLock;

use common::*;
use serde_json::{json, Value};
use server::Server;

/// One server shared by the tests of this file.
fn url() -> &'static str {
    static S: OnceLock<(Server, String)> = OnceLock::new();
    &S.get_or_init(|| {
        let s = start(4, 16, 256);
        let b = base(&s);
        (s, b)
    })
    .1
}

fn chat_body(content: &str, max: usize) -> Value {
    json!({
        "model": MODEL,
        "messages": [{"role": "system", "content": "You are brief."}, {"role": "user", "content": content}],
        "max_tokens": max,
        "temperature": 0,
    })
}

#[test]
fn chat_answers_with_a_message_and_usage() {
    let r = post_json(url(), "/v1/chat/completions", &chat_body("Say hello.", 6));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.content_type.as_deref(), Some("application/json"));
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], MODEL);
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    let c = &v["choices"][0];
    assert_eq!(c["index"], 0);
    assert_eq!(c["message"]["role"], "assistant");
    assert!(!c["message"]["content"].as_str().unwrap().is_empty());
    assert!(["stop", "length"].contains(&c["finish_reason"].as_str().unwrap()));
    let u = &v["usage"];
    assert!(u["prompt_tokens"].as_u64().unwrap() > 5);
    assert!(u["completion_tokens"].as_u64().unwrap() <= 6);
    assert_eq!(
        u["total_tokens"].as_u64(),
        Some(u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap())
    );
}

#[test]
fn streamed_chat_matches_the_plain_answer() {
    let body = chat_body("Name a colour.", 8);
    let plain = post_json(url(), "/v1/chat/completions", &body).json();
    let mut sb = body.clone();
    sb["stream"] = json!(true);
    sb["stream_options"] = json!({"include_usage": true});
    let s = stream(url(), "/v1/chat/completions", &sb);
    assert_eq!(s.status, 200);
    let data = s.all();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let mut text = String::new();
    let mut finish = None;
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        if let Some(ch) = c["choices"].as_array().unwrap().first() {
            if let Some(t) = ch["delta"]["content"].as_str() {
                text.push_str(t);
            }
            if !ch["finish_reason"].is_null() {
                finish = Some(ch["finish_reason"].clone());
            }
        }
    }
    // The usage chunk comes last, with no choices; the others carry usage: null.
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"], plain["usage"]);
    assert!(chunks[0]["usage"].is_null());
    assert_eq!(
        text,
        plain["choices"][0]["message"]["content"].as_str().unwrap()
    );
    assert_eq!(finish.unwrap(), plain["choices"][0]["finish_reason"]);
}

#[test]
fn completions_take_text_or_token_ids() {
    let a = post_json(
        url(),
        "/v1/completions",
        &json!({"prompt": "The capital of France is", "max_tokens": 6, "temperature": 0}),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let a = a.json();
    assert_eq!(a["object"], "text_completion");
    let text = a["choices"][0]["text"].as_str().unwrap();
    assert!(text.contains("Paris"), "{text}");
    // The same prompt as ids (SmolLM2 adds no BOS).
    let path = registry::test_model(MODEL);
    let tok = engine::Engine::tokenizer_from_file(&path).unwrap();
    let ids = tok.encode("The capital of France is", true, true);
    let b = post_json(
        url(),
        "/v1/completions",
        &json!({"prompt": ids, "max_tokens": 6, "temperature": 0}),
    )
    .json();
    assert_eq!(b["choices"][0]["text"], a["choices"][0]["text"]);
    assert_eq!(b["usage"], a["usage"]);
    // A one-element array of ids works too, and a streamed completion gives the same text.
    let c = post_json(
        url(),
        "/v1/completions",
        &json!({"prompt": [ids], "max_tokens": 6, "temperature": 0, "stream": true}),
    );
    let mut streamed = String::new();
    for line in c.body.lines() {
        if let Some(d) = line.strip_prefix("data: ") {
            if d != "[DONE]" {
                let v: Value = serde_json::from_str(d).unwrap();
                streamed.push_str(v["choices"][0]["text"].as_str().unwrap());
            }
        }
    }
    assert!(c.body.trim_end().ends_with("data: [DONE]"));
    assert_eq!(streamed, text);
}

#[test]
fn logprobs_are_reported() {
    let mut body = chat_body("Count: one, two,", 4);
    body["logprobs"] = json!(true);
    body["top_logprobs"] = json!(3);
    let v = post_json(url(), "/v1/chat/completions", &body).json();
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(
        content.len() as u64,
        v["usage"]["completion_tokens"].as_u64().unwrap()
    );
    let mut text = String::new();
    for t in content {
        let lp = t["logprob"].as_f64().unwrap();
        assert!(lp <= 0.0);
        let top = t["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        // Greedy: the chosen token is the best one.
        assert_eq!(top[0]["logprob"].as_f64().unwrap(), lp);
        assert!(top[0]["logprob"].as_f64() >= top[1]["logprob"].as_f64());
        text.push_str(t["token"].as_str().unwrap());
    }
    assert_eq!(
        text,
        v["choices"][0]["message"]["content"].as_str().unwrap()
    );
    // Completions: the legacy shape.
    let v = post_json(
        url(),
        "/v1/completions",
        &json!({"prompt": "1, 2, 3,", "max_tokens": 3, "temperature": 0, "logprobs": 2}),
    )
    .json();
    let lp = &v["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), 3);
    assert_eq!(lp["token_logprobs"].as_array().unwrap().len(), 3);
    assert_eq!(lp["top_logprobs"][0].as_object().unwrap().len(), 2);
    assert_eq!(lp["text_offset"][0], 0);
}

#[test]
fn stop_strings_end_the_text_before_them() {
    let body = json!({"prompt": "The capital of France is", "max_tokens": 12, "temperature": 0});
    let full = post_json(url(), "/v1/completions", &body).json();
    let full_text = full["choices"][0]["text"].as_str().unwrap().to_owned();
    let at = full_text.find('.').expect("a period in the greedy text");
    let mut b = body.clone();
    b["stop"] = json!(["."]);
    let v = post_json(url(), "/v1/completions", &b).json();
    assert_eq!(v["choices"][0]["text"].as_str().unwrap(), &full_text[..at]);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    // Streamed, a stop string spanning tokens is never shown.
    b["stream"] = json!(true);
    b["stop"] = json!("s."); // ends a word before the period, e.g. "Paris."
    let s = stream(url(), "/v1/completions", &b).all();
    let mut text = String::new();
    for d in &s[..s.len() - 1] {
        let v: Value = serde_json::from_str(d).unwrap();
        text.push_str(v["choices"][0]["text"].as_str().unwrap());
    }
    let want = full_text
        .find("s.")
        .map_or(full_text.as_str(), |i| &full_text[..i]);
    assert_eq!(text, want);
}

#[test]
fn bad_inputs_get_openai_style_4xx() {
    let chat = "/v1/chat/completions";
    let comp = "/v1/completions";
    let msgs = json!([{"role": "user", "content": "hi"}]);
    let long = "word ".repeat(400);
    let cases: Vec<(&str, String, u16, Option<&str>)> = vec![
        (chat, "{not json".into(), 400, None),
        (chat, "[1, 2]".into(), 400, None),
        (chat, "".into(), 400, None),
        (chat, json!({}).to_string(), 400, None),
        (chat, json!({"messages": "hi"}).to_string(), 400, Some("messages")),
        (chat, json!({"messages": []}).to_string(), 400, Some("messages")),
        (chat, json!({"messages": [{"role": "wizard", "content": "x"}]}).to_string(), 400, Some("messages[0]")),
        (chat, json!({"messages": [{"content": "x"}]}).to_string(), 400, Some("messages[0]")),
        (chat, json!({"messages": [{"role": "user", "content": 5}]}).to_string(), 400, Some("messages[0]")),
        (chat, json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}).to_string(), 400, Some("messages[0].content[0]")),
        (chat, json!({"messages": msgs, "max_tokens": -5}).to_string(), 400, Some("max_tokens")),
        (chat, json!({"messages": msgs, "max_tokens": 0}).to_string(), 400, Some("max_tokens")),
        (chat, json!({"messages": msgs, "max_tokens": 1_000_000_000_000u64}).to_string(), 400, Some("max_tokens")),
        (chat, json!({"messages": msgs, "max_tokens": "ten"}).to_string(), 400, None),
        (chat, json!({"messages": msgs, "temperature": -1}).to_string(), 400, Some("temperature")),
        (chat, json!({"messages": msgs, "temperature": 1e30}).to_string(), 400, Some("temperature")),
        (chat, json!({"messages": msgs, "top_p": 0}).to_string(), 400, Some("top_p")),
        (chat, json!({"messages": msgs, "presence_penalty": 9}).to_string(), 400, Some("presence_penalty")),
        (chat, json!({"messages": msgs, "stream": "yes"}).to_string(), 400, None),
        (chat, json!({"messages": msgs, "stop": [1]}).to_string(), 400, Some("stop")),
        (chat, json!({"messages": msgs, "stop": "x".repeat(1000)}).to_string(), 400, Some("stop")),
        (chat, json!({"messages": msgs, "stop": vec!["a"; 17]}).to_string(), 400, Some("stop")),
        (chat, json!({"messages": msgs, "n": 9}).to_string(), 400, Some("n")),
        (chat, json!({"messages": msgs, "logprobs": true, "top_logprobs": 99}).to_string(), 400, Some("top_logprobs")),
        (chat, json!({"messages": msgs, "tools": [{"type": "function", "function": {"name": "f"}}]}).to_string(), 400, Some("tools")),
        (chat, json!({"messages": msgs, "logit_bias": {"99999999": 5}}).to_string(), 400, Some("logit_bias")),
        (chat, json!({"messages": msgs, "logit_bias": {"1": 500}}).to_string(), 400, Some("logit_bias")),
        (chat, json!({"messages": msgs, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}}).to_string(), 400, Some("response_format")),
        (chat, json!({"messages": msgs, "response_format": {"type": "yaml"}}).to_string(), 400, Some("response_format")),
        (chat, json!({"messages": msgs, "grammar": "start: foo"}).to_string(), 400, Some("grammar")),
        (chat, json!({"messages": msgs, "grammar": "start: \"a\"", "json_schema": {}}).to_string(), 400, Some("json_schema")),
        (chat, json!({"messages": msgs, "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": {"type": "function", "function": {"name": "g"}}}).to_string(), 400, Some("tool_choice")),
        (chat, json!({"messages": msgs, "tools": [{"type": "code_interpreter"}]}).to_string(), 400, Some("tools[0].type")),
        (chat, json!({"messages": msgs, "tools": [{"type": "function", "function": {"name": "f", "parameters": 3}}]}).to_string(), 400, Some("tools[0].function.parameters")),
        (chat, json!({"messages": msgs, "tool_choice": "required"}).to_string(), 400, Some("tool_choice")),
        (chat, json!({"messages": [{"role": "assistant", "content": null, "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]}).to_string(), 400, Some("messages[0].tool_calls[0]")),
        (chat, json!({"messages": msgs, "frobnicate": true}).to_string(), 400, Some("frobnicate")),
        (chat, json!({"messages": [{"role": "user", "content": long}]}).to_string(), 400, Some("messages")),
        (comp, json!({"prompt": 5}).to_string(), 400, Some("prompt")),
        (comp, json!({"prompt": []}).to_string(), 400, Some("prompt")),
        (comp, json!({"prompt": ["a", "b"]}).to_string(), 400, Some("prompt")),
        (comp, json!({"prompt": [1, -2]}).to_string(), 400, Some("prompt")),
        (comp, json!({"prompt": [1, 99_999_999]}).to_string(), 400, Some("prompt")),
        (comp, json!({"prompt": "x", "echo": true}).to_string(), 400, Some("echo")),
        (comp, json!({"prompt": "x", "logprobs": 50}).to_string(), 400, Some("logprobs")),
        (comp, json!({"prompt": long}).to_string(), 400, Some("prompt")),
        (comp, json!({"prompt": "x", "max_tokens": 300}).to_string(), 400, Some("max_tokens")),
        (comp, json!({"prompt": ""}).to_string(), 400, Some("prompt")),
    ];
    for (path, body, status, param) in cases {
        let r = post(url(), path, &body);
        assert_eq!(r.status, status, "{path} {body}: {}", r.body);
        let v = r.json();
        let e = &v["error"];
        assert!(
            e["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}: {v}"
        );
        assert_eq!(e["type"], "invalid_request_error", "{body}: {v}");
        assert!(e.get("code").is_some() && e.get("param").is_some(), "{v}");
        if let Some(p) = param {
            assert_eq!(e["param"], p, "{body}: {v}");
        }
    }
    // Over the body limit (64 KiB in these tests).
    let big = json!({"messages": [{"role": "user", "content": "a".repeat(100_000)}]});
    let r = post_oversized(url(), chat, &big.to_string());
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(r.json()["error"]["message"].is_string());
    // Unknown routes and methods.
    let r = get(url(), "/v1/nothing");
    assert_eq!(r.status, 404);
    assert!(r.json()["error"]["message"].is_string());
    let r = method(url(), "DELETE", "/v1/models");
    assert_eq!(r.status, 405);
    assert!(r.json()["error"]["message"].is_string());
    // Fields OpenAI clients send that we ignore.
    let r = post_json(
        url(),
        chat,
        &json!({"messages": msgs, "max_tokens": 2, "user": "u1", "n": 1, "logit_bias": {},
                "store": false, "tools": [], "tool_choice": "none", "response_format": {"type": "text"},
                "stream_options": null, "seed": 7, "temperature": null}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // Nothing was poisoned: a normal request still works.
    let r = post_json(url(), chat, &chat_body("Hi", 2));
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn models_health_and_metrics() {
    let v = get(url(), "/v1/models").json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], MODEL);
    let h = get(url(), "/health");
    assert_eq!(h.status, 200);
    assert_eq!(h.json()["status"], "ok");
    let r = post_json(url(), "/v1/chat/completions", &chat_body("Hello", 2));
    assert_eq!(r.status, 200);
    let _ = post(url(), "/v1/chat/completions", "{");
    let m = get(url(), "/metrics");
    assert_eq!(m.status, 200);
    let t = m.body;
    for name in [
        "surplus_requests_total{route=\"/v1/chat/completions\",status=\"200\"}",
        "surplus_requests_total{route=\"/v1/chat/completions\",status=\"400\"}",
        "surplus_prompt_tokens_total",
        "surplus_generation_tokens_total",
        "surplus_queue_depth",
        "surplus_active_sequences",
        "surplus_generation_tokens_per_second",
        "surplus_time_to_first_token_seconds_bucket{le=\"+Inf\"}",
        "surplus_time_to_first_token_seconds_count",
        "surplus_requests_cancelled_total",
    ] {
        assert!(t.contains(name), "{name} missing from:\n{t}");
    }
    let value = |name: &str| -> f64 {
        t.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in:\n{t}"))
    };
    assert!(value("surplus_generation_tokens_total") >= 2.0);
    assert!(value("surplus_prompt_tokens_total") >= 5.0);
    assert!(value("surplus_time_to_first_token_seconds_count") >= 1.0);
}

#[test]
fn a_client_dropping_its_stream_is_cancelled_while_others_are_served() {
    let before = metric(url(), "surplus_requests_cancelled_total");
    let body = json!({"prompt": "Once upon a time", "max_tokens": 200, "temperature": 0,
                      "ignore_eos": true, "stream": true});
    let mut s = stream(url(), "/v1/completions", &body);
    for _ in 0..3 {
        assert!(s.next_data().is_some());
    }
    drop(s); // the connection closes mid-stream
             // Another request is served meanwhile and afterwards.
    let r = post_json(url(), "/v1/chat/completions", &chat_body("Hi", 3));
    assert_eq!(r.status, 200, "{}", r.body);
    let t0 = std::time::Instant::now();
    while metric(url(), "surplus_requests_cancelled_total") <= before {
        assert!(
            t0.elapsed().as_secs() < 60,
            "the dropped stream was not cancelled"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let r = post_json(url(), "/v1/chat/completions", &chat_body("Hello", 2));
    assert_eq!(r.status, 200, "{}", r.body);
}

fn metric(url: &str, name: &str) -> f64 {
    let t = get(url, "/metrics").body;
    t.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn a_client_leaving_a_plain_request_cancels_it() {
    use std::io::Write;
    // A server of its own, so that its counters are this test's alone.
    let srv = start(1, 4, 256);
    let own = base(&srv);
    let url = || own.as_str();
    let body = json!({"prompt": "Once upon a time", "max_tokens": 200, "temperature": 0,
                      "ignore_eos": true})
    .to_string();
    let addr = url().trim_start_matches("http://");
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    write!(
        c,
        "POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // Wait until it generates, then hang up without reading the answer.
    let t0 = std::time::Instant::now();
    while metric(url(), "surplus_active_sequences") < 1.0 {
        assert!(t0.elapsed().as_secs() < 60, "the request never started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    drop(c);
    while metric(url(), "surplus_requests_cancelled_total") < 1.0 {
        assert!(
            t0.elapsed().as_secs() < 60,
            "the abandoned request was not cancelled"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    while metric(url(), "surplus_active_sequences") > 0.0 {
        assert!(t0.elapsed().as_secs() < 60, "the slot was not freed");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    srv.shutdown();
}
