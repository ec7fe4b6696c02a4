//! Test helpers: start the real server on a loopback port over the small test model, and a
//! blocking HTTP client (ureq) with JSON and SSE helpers.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::time::Duration;

use engine::speculative::ModelDrafter;
use engine::{Engine, EngineOptions};
use serde_json::Value;
use server::{Config, Server, Speculation};

pub const MODEL: &str = "smollm2-135m";

/// Starts a server with `parallel` sequences of `n_ctx` tokens and a queue of `queue`.
pub fn start(parallel: usize, queue: usize, n_ctx: usize) -> Server {
    start_spec(parallel, queue, n_ctx, Speculation::Off)
}

/// [`start`] with speculative decoding `spec` (the engine sized for its drafts).
pub fn start_spec(parallel: usize, queue: usize, n_ctx: usize, spec: Speculation) -> Server {
    start_file(registry::test_model(MODEL), parallel, queue, n_ctx, spec)
}

/// [`start_spec`] with the model file `path`.
pub fn start_file(
    path: std::path::PathBuf,
    parallel: usize,
    queue: usize,
    n_ctx: usize,
    spec: Speculation,
) -> Server {
    let (engine, tok, opts) = load(&path, parallel, n_ctx, spec);
    // A draft model: the same model (the only test model with its tokenizer).
    let drafter = matches!(spec, Speculation::Draft { .. }).then(|| {
        ModelDrafter::load_for(
            &path,
            &engine,
            &opts,
            &engine::sampling::SamplingParams::greedy(),
            parallel,
        )
        .expect("loading the draft model")
    });
    Server::start_with_drafter(engine, drafter, tok, config(queue, spec))
        .expect("starting the server")
}

/// Loads the model file `path` for `parallel` sequences of `n_ctx` tokens, sized for the
/// drafts of `spec`: the engine, a tokenizer for the server and the options used.
pub fn load(
    path: &std::path::Path,
    parallel: usize,
    n_ctx: usize,
    spec: Speculation,
) -> (Engine, tokenizer::Tokenizer, EngineOptions) {
    let rows = parallel * (spec.draft_max() + 1);
    let opts = EngineOptions {
        n_ctx,
        n_batch: 64.max(rows),
        n_seq: parallel,
        max_logit_rows: rows,
        n_threads: 2,
        gpu_layers: engine::GpuLayers::for_tests(),
        ..EngineOptions::default()
    };
    let engine = Engine::load(path, &opts).expect("loading the model");
    let tok = Engine::tokenizer_from_file(path).expect("loading the tokenizer");
    (engine, tok, opts)
}

/// The tests' server configuration: a queue of `queue`, speculation `spec`.
pub fn config(queue: usize, spec: Speculation) -> Config {
    Config {
        host: "127.0.0.1".into(),
        port: 0,
        model_id: MODEL.into(),
        queue,
        max_body: 64 * 1024,
        prefill_chunk: 64,
        handle_signals: false,
        spec,
        ..Config::default()
    }
}

/// Starts a server over an engine from [`load`] (which a test may change first, e.g. its
/// `template`), configured by `cfg` (see [`config`]; not for a draft model).
pub fn start_engine(engine: Engine, tok: tokenizer::Tokenizer, cfg: Config) -> Server {
    Server::start(engine, tok, cfg).expect("starting the server")
}

pub fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(300))
        .build()
}

/// A response: status, Retry-After, body.
pub struct Reply {
    pub status: u16,
    pub retry_after: Option<String>,
    pub content_type: Option<String>,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

fn reply(r: Result<ureq::Response, ureq::Error>) -> Reply {
    let resp = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("transport error: {e}"),
    };
    let status = resp.status();
    let retry_after = resp.header("retry-after").map(str::to_owned);
    let content_type = resp.header("content-type").map(str::to_owned);
    let mut body = String::new();
    resp.into_reader()
        .read_to_string(&mut body)
        .expect("reading the body");
    Reply {
        status,
        retry_after,
        content_type,
        body,
    }
}

pub fn post(base: &str, path: &str, body: &str) -> Reply {
    reply(
        agent()
            .post(&format!("{base}{path}"))
            .set("Content-Type", "application/json")
            .send_string(body),
    )
}

/// [`post`] of a body the server refuses before reading it all (over the size limit): the
/// server answers and closes while the client may still be writing, which can break the
/// client's pipe before it reads the answer; such attempts are retried (up to 5).
pub fn post_oversized(base: &str, path: &str, body: &str) -> Reply {
    for _ in 0..4 {
        let r = agent()
            .post(&format!("{base}{path}"))
            .set("Content-Type", "application/json")
            .send_string(body);
        match r {
            Err(ureq::Error::Transport(_)) => continue,
            r => return reply(r),
        }
    }
    post(base, path, body)
}

pub fn post_json(base: &str, path: &str, body: &Value) -> Reply {
    post(base, path, &body.to_string())
}

pub fn get(base: &str, path: &str) -> Reply {
    reply(agent().get(&format!("{base}{path}")).call())
}

pub fn method(base: &str, m: &str, path: &str) -> Reply {
    reply(agent().request(m, &format!("{base}{path}")).call())
}

/// An open SSE stream.
pub struct Sse {
    lines: BufReader<Box<dyn Read + Send + Sync + 'static>>,
    pub status: u16,
}

impl Sse {
    /// The next `data:` payload, or None at the end of the stream.
    pub fn next_data(&mut self) -> Option<String> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.lines.read_line(&mut line).ok()? == 0 {
                return None;
            }
            if let Some(d) = line.strip_prefix("data: ") {
                return Some(d.trim_end_matches(['\r', '\n']).to_owned());
            }
        }
    }

    /// Every remaining payload.
    pub fn all(mut self) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(d) = self.next_data() {
            out.push(d);
        }
        out
    }
}

pub fn stream(base: &str, path: &str, body: &Value) -> Sse {
    let r = agent()
        .post(&format!("{base}{path}"))
        .set("Content-Type", "application/json")
        .send_string(&body.to_string())
        .expect("stream request");
    assert_eq!(
        r.header("content-type"),
        Some("text/event-stream"),
        "SSE content type"
    );
    Sse {
        status: r.status(),
        lines: BufReader::new(r.into_reader()),
    }
}

pub fn base(s: &Server) -> String {
    format!("http://{}", s.addr())
}

/// Whether `python3 -c "import MODULES"` works (e.g. `"openai, jsonschema"`); when it does
/// not, says so and how to install them (the calling test then skips).
pub fn python_has(modules: &str) -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", &format!("import {modules}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        let pkgs = modules.replace(',', "");
        eprintln!("SKIPPED: the Python packages {modules} are not installed (python3 -m pip install {pkgs})");
    }
    ok
}
