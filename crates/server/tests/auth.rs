//! API keys over the real server on a loopback port: 401s with the OpenAI error object
//! without a key or with a wrong one, every key of a key file works, `/health` stays open.

mod common;

use std::io::Read;
use std::sync::OnceLock;

use common::*;
use engine::{Engine, EngineOptions};
use serde_json::{json, Value};
use server::auth::{read_key_file, ApiKeys};
use server::{Config, Server};

/// The key given directly.
const KEY: &str = "sk-direct-0123456789";
/// The two keys of the key file.
const FILE_KEYS: [&str; 2] = ["sk-file-one", "sk-file-two"];

/// One server shared by the tests of this file: the direct key plus a key file of two.
fn url() -> &'static str {
    static S: OnceLock<(Server, String)> = OnceLock::new();
    &S.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("surplus-auth-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("keys.txt");
        std::fs::write(
            &file,
            format!("# team keys\n{}\n\n  {}\n", FILE_KEYS[0], FILE_KEYS[1]),
        )
        .unwrap();
        let mut keys = vec![KEY.to_owned()];
        keys.extend(read_key_file(&file).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
        let s = start_keys(ApiKeys::new(&keys).unwrap());
        let b = base(&s);
        (s, b)
    })
    .1
}

/// A small server over the test model that needs `keys`.
fn start_keys(keys: ApiKeys) -> Server {
    let path = registry::test_model(MODEL);
    let opts = EngineOptions {
        n_ctx: 256,
        n_batch: 64,
        n_seq: 2,
        max_logit_rows: 2,
        n_threads: 2,
        gpu_layers: engine::GpuLayers::for_tests(),
        ..EngineOptions::default()
    };
    let engine = Engine::load(&path, &opts).expect("loading the model");
    let tok = Engine::tokenizer_from_file(&path).expect("loading the tokenizer");
    Server::start(
        engine,
        tok,
        Config {
            host: "127.0.0.1".into(),
            port: 0,
            model_id: MODEL.into(),
            queue: 8,
            max_body: 64 * 1024,
            prefill_chunk: 64,
            api_keys: keys,
            ..Config::default()
        },
    )
    .expect("starting the server")
}

/// An answer with the headers these tests look at.
struct Answer {
    status: u16,
    www_authenticate: Option<String>,
    content_type: Option<String>,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// Sends `method path` with the `headers` and, for a POST, the JSON `body`.
fn send(method: &str, path: &str, headers: &[(&str, &str)], body: Option<&Value>) -> Answer {
    let mut req = agent().request(method, &format!("{}{path}", url()));
    for &(k, v) in headers {
        req = req.set(k, v);
    }
    let r = match body {
        Some(b) => req
            .set("Content-Type", "application/json")
            .send_string(&b.to_string()),
        None => req.call(),
    };
    let resp = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("transport error: {e}"),
    };
    let status = resp.status();
    let www_authenticate = resp.header("www-authenticate").map(str::to_owned);
    let content_type = resp.header("content-type").map(str::to_owned);
    let mut body = String::new();
    resp.into_reader().read_to_string(&mut body).unwrap();
    Answer {
        status,
        www_authenticate,
        content_type,
        body,
    }
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

/// Checks a 401 answer and returns its error message.
fn assert_401(a: &Answer) -> String {
    assert_eq!(a.status, 401, "{}", a.body);
    assert_eq!(a.www_authenticate.as_deref(), Some("Bearer"));
    assert_eq!(a.content_type.as_deref(), Some("application/json"));
    let v = a.json();
    let e = &v["error"];
    assert_eq!(e["type"], "invalid_request_error");
    assert_eq!(e["code"], "invalid_api_key");
    assert_eq!(e["param"], Value::Null);
    assert_eq!(v.as_object().unwrap().len(), 1, "{v}");
    e["message"].as_str().unwrap().to_owned()
}

fn chat() -> Value {
    json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 3,
        "temperature": 0,
    })
}

/// The count of `surplus_requests_total` for `route` and `status` in a metrics text.
fn requests(metrics: &str, route: &str, status: u16) -> u64 {
    let prefix = format!("surplus_requests_total{{route=\"{route}\",status=\"{status}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |n| n.parse().unwrap())
}

#[test]
fn health_needs_no_key() {
    let a = send("GET", "/health", &[], None);
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json(), json!({"status": "ok"}));
    // A wrong key does not matter there either.
    let a = send("GET", "/health", &[("Authorization", "Bearer nope")], None);
    assert_eq!(a.status, 200);
}

#[test]
fn no_key_is_a_401_with_the_error_object() {
    for (m, path, body) in [
        ("GET", "/v1/models", None),
        ("POST", "/v1/chat/completions", Some(chat())),
        (
            "POST",
            "/v1/completions",
            Some(json!({"prompt": "Hi", "max_tokens": 2})),
        ),
        ("GET", "/metrics", None),
    ] {
        let a = send(m, path, &[], body.as_ref());
        let msg = assert_401(&a);
        assert!(msg.contains("Authorization: Bearer KEY"), "{path}: {msg}");
        assert!(msg.starts_with("You didn't provide an API key"), "{msg}");
    }
    // Another scheme counts as no key.
    let a = send(
        "GET",
        "/v1/models",
        &[("Authorization", "Basic c2stZGlyZWN0")],
        None,
    );
    assert!(assert_401(&a).starts_with("You didn't provide"));
}

#[test]
fn a_wrong_key_is_a_401_that_does_not_echo_it() {
    for wrong in [
        "sk-guess",
        // Prefixes, extensions and near misses of the real keys.
        &KEY[..KEY.len() - 1],
        &format!("{KEY}0"),
        "sk-file-on",
        "SK-FILE-ONE",
    ] {
        let a = send(
            "GET",
            "/v1/models",
            &[("Authorization", &bearer(wrong))],
            None,
        );
        let msg = assert_401(&a);
        assert!(msg.starts_with("Incorrect API key provided"), "{msg}");
        assert!(!a.body.contains(wrong), "{}", a.body);
        let a = send(
            "POST",
            "/v1/chat/completions",
            &[("x-api-key", wrong)],
            Some(&chat()),
        );
        assert_401(&a);
    }
}

#[test]
fn every_key_opens_the_api() {
    for key in [KEY, FILE_KEYS[0], FILE_KEYS[1]] {
        let auth = bearer(key);
        let h = [("Authorization", auth.as_str())];
        let a = send("GET", "/v1/models", &h, None);
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.json()["data"][0]["id"], MODEL);
        let a = send("POST", "/v1/chat/completions", &h, Some(&chat()));
        assert_eq!(a.status, 200, "{}", a.body);
        let v = a.json();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["choices"][0]["message"]["role"], "assistant");
        assert!(v["usage"]["completion_tokens"].as_u64().unwrap() <= 3);
        let a = send(
            "POST",
            "/v1/completions",
            &h,
            Some(&json!({"prompt": "The capital of France is", "max_tokens": 2, "temperature": 0})),
        );
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.json()["object"], "text_completion");
        let a = send("GET", "/metrics", &h, None);
        assert_eq!(a.status, 200, "{}", a.body);
        assert!(a.body.contains("# TYPE surplus_requests_total counter"));
    }
    // The scheme in lower case, and x-api-key, work too.
    let a = send(
        "GET",
        "/v1/models",
        &[("authorization", "bearer sk-file-two")],
        None,
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let a = send("GET", "/v1/models", &[("x-api-key", KEY)], None);
    assert_eq!(a.status, 200, "{}", a.body);
}

#[test]
fn refused_requests_are_counted() {
    let auth = bearer(KEY);
    let h = [("Authorization", auth.as_str())];
    let before = send("GET", "/metrics", &h, None).body;
    for _ in 0..3 {
        assert_401(&send("GET", "/v1/models", &[], None));
    }
    assert_401(&send(
        "POST",
        "/v1/completions",
        &[("x-api-key", "bad")],
        Some(&json!({})),
    ));
    let after = send("GET", "/metrics", &h, None).body;
    // Other tests run at the same time: at least these refusals were added.
    assert!(requests(&after, "/v1/models", 401) >= requests(&before, "/v1/models", 401) + 3);
    assert!(requests(&after, "/v1/completions", 401) > requests(&before, "/v1/completions", 401));
}

#[test]
fn unknown_routes_and_preflights() {
    // Without a key an unknown route is a 401 (which routes exist is not revealed)...
    assert_401(&send("GET", "/v1/nothing", &[], None));
    assert_401(&send("GET", "/admin", &[], None));
    // ...and with one, the usual 404 and 405.
    let auth = bearer(FILE_KEYS[1]);
    let h = [("Authorization", auth.as_str())];
    let a = send("GET", "/v1/nothing", &h, None);
    assert_eq!(a.status, 404, "{}", a.body);
    assert_eq!(a.json()["error"]["code"], "not_found");
    let a = send("GET", "/v1/chat/completions", &h, None);
    assert_eq!(a.status, 405, "{}", a.body);
    // A preflight needs no key: it gets what it would without keys.
    let a = send("OPTIONS", "/v1/chat/completions", &[], None);
    assert_eq!(a.status, 405, "{}", a.body);
}
