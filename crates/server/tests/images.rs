//! Images in chat requests: a base64 data URL through `/v1/chat/completions` on Gemma 3 270M
//! with the random-weight projector of tests/data/vision gives the engine's own greedy text
//! for the same prompt and image; bad images and URLs are 400s with OpenAI error objects.

mod common;

use common::{base, post_json};
use engine::sampling::SamplingParams;
use engine::{Engine, EngineOptions, GenerateOptions, PromptPart};
use serde_json::{json, Value};
use server::{Config, Server};

const MODEL: &str = "gemma3-270m";
const TEXT: &str = "Describe this image.";

fn data() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/vision")
}

fn opts() -> EngineOptions {
    EngineOptions {
        n_ctx: 256,
        n_batch: 64,
        n_seq: 2,
        max_logit_rows: 2,
        n_threads: 2,
        gpu_layers: engine::GpuLayers::for_tests(),
        ..EngineOptions::default()
    }
}

fn start(mmproj: bool) -> Server {
    start_with(mmproj, false)
}

fn start_with(mmproj: bool, allow_image_urls: bool) -> Server {
    let path = registry::test_model(MODEL);
    let engine = Engine::load(&path, &opts()).expect("loading the model");
    let tok = Engine::tokenizer_from_file(&path).expect("loading the tokenizer");
    let cfg = Config {
        port: 0,
        model_id: MODEL.into(),
        max_body: 1 << 20,
        prefill_chunk: 64,
        mmproj: mmproj.then(|| data().join("gemma3-270m-mmproj.gguf")),
        allow_image_urls,
        ..Config::default()
    };
    Server::start(engine, tok, cfg).expect("starting the server")
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn chat(url: &str) -> Value {
    json!({
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url}},
            {"type": "text", "text": TEXT},
        ]}],
        "max_tokens": 12,
        "temperature": 0,
        "ignore_eos": true,
        "logprobs": true,
        "top_logprobs": 3,
    })
}

/// Each step's top log-probs.
fn step_logprobs(v: &Value) -> Vec<Vec<f32>> {
    v["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            t["top_logprobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x["logprob"].as_f64().unwrap() as f32)
                .collect()
        })
        .collect()
}

/// A PNG with a valid header claiming `w` × `h` pixels and no image data.
fn png_header(w: u32, h: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in bytes {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }
    fn chunk(out: &mut Vec<u8>, kind: &[u8], body: &[u8]) {
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        let mut k = kind.to_vec();
        k.extend_from_slice(body);
        out.extend_from_slice(&k);
        out.extend_from_slice(&crc32(&k).to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IEND", &[]);
    out
}

#[test]
fn an_image_gives_the_engines_greedy_text() {
    if fixtures_missing() {
        return;
    }
    let png = std::fs::read(data().join("gradient-64x48.png")).unwrap();
    // The engine on its own: the rendered chat split at the image, as `surplus run` does.
    let path = registry::test_model(MODEL);
    let mut engine = Engine::load(&path, &opts()).unwrap();
    let marker = "<image>";
    let msg = tokenizer::Message::new("user", format!("{marker}{TEXT}"));
    let rendered = engine.template.render(&[msg], true).unwrap();
    let ip = engine::image_prompt(&engine, &rendered.text, marker).unwrap();
    let proj = vision::Projector::open(data().join("gemma3-270m-mmproj.gguf")).unwrap();
    let img = vision::decode(&png, &vision::DecodeLimits::default()).unwrap();
    let emb = proj.embed(&img).unwrap();
    let parts = [
        PromptPart::Tokens(&ip.before),
        PromptPart::Embeddings(engine::ImageRows {
            data: &emb.data,
            non_causal: ip.non_causal,
            grid: [emb.nx, emb.ny],
        }),
        PromptPart::Tokens(&ip.after),
    ];
    let gen_opts = GenerateOptions {
        max_tokens: 12,
        sampling: SamplingParams::greedy(),
        ignore_eos: true,
        logprobs: 3,
        stop: vec![],
        constraint: None,
        logit_bias: Vec::new(),
    };
    let want = engine
        .generate_parts(&parts, &gen_opts, |_, _| true)
        .unwrap();
    drop(engine);

    let srv = start(true);
    let url = format!("data:image/png;base64,{}", base64(&png));
    let r = post_json(&base(&srv), "/v1/chat/completions", &chat(&url));
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["choices"][0]["message"]["content"], want.text.as_str());
    let lp = step_logprobs(&v);
    assert_eq!(lp.len(), 12);
    for (step, (got, want)) in lp.iter().zip(&want.logprobs).enumerate() {
        for (g, w) in got.iter().zip(want) {
            assert!((g - w.1).abs() < 1e-3, "step {step}: {got:?} vs {want:?}");
        }
    }
    let n_prompt = ip.before.len() + emb.n_tokens + ip.after.len();
    assert_eq!(v["usage"]["prompt_tokens"], n_prompt);
    assert_eq!(v["usage"]["completion_tokens"], 12);
    // Again (the slot is reused): the same text.
    let r = post_json(&base(&srv), "/v1/chat/completions", &chat(&url));
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        want.text.as_str()
    );
    // A JPEG.
    let jpg = std::fs::read(data().join("photo-150x100.jpg")).unwrap();
    let url = format!("data:image/jpeg;base64,{}", base64(&jpg));
    let r = post_json(&base(&srv), "/v1/chat/completions", &chat(&url));
    assert_eq!(r.status, 200, "{}", r.body);
    // The image matters: another one moves the first step's log-probs.
    let other = step_logprobs(&r.json());
    assert!(
        (other[0][0] - lp[0][0]).abs() > 1e-3,
        "{:?} vs {:?}",
        other[0],
        lp[0]
    );
    // A text-only request still works next to it.
    let r = post_json(
        &base(&srv),
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": TEXT}], "max_tokens": 4}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
}

/// The qwen35 fixture with its projector: a chat request with an image gives the same text
/// and log-probs with MTP speculation as without, among other requests, and the block drafts.
#[test]
fn mtp_speculation_with_an_image_keeps_greedy_output() {
    if fixtures_missing() {
        return;
    }
    let path = data().join("../synthetic/qwen35-tiny-f32.gguf");
    let png = std::fs::read(data().join("shapes-300x200.png")).unwrap();
    let url = format!("data:image/png;base64,{}", base64(&png));
    let mut req = chat(&url);
    req["max_tokens"] = json!(24);
    let run = |spec: server::Speculation| {
        let (parallel, rows) = (2, 2 * (spec.draft_max() + 1));
        let opts = EngineOptions {
            n_ctx: 256,
            n_batch: 64,
            n_seq: parallel,
            max_logit_rows: rows,
            n_threads: 2,
            gpu_layers: engine::GpuLayers::for_tests(),
            ..EngineOptions::default()
        };
        let engine = Engine::load(&path, &opts).unwrap();
        let tok = Engine::tokenizer_from_file(&path).unwrap();
        let cfg = Config {
            port: 0,
            model_id: "qwen35-tiny".into(),
            max_body: 1 << 20,
            prefill_chunk: 64,
            spec,
            mmproj: Some(data().join("qwen35-tiny-mmproj.gguf")),
            ..Config::default()
        };
        let srv = Server::start(engine, tok, cfg).unwrap();
        let u = base(&srv);
        // Alone, then next to a text request.
        let alone = post_json(&u, "/v1/chat/completions", &req);
        assert_eq!(alone.status, 200, "{}", alone.body);
        let u2 = u.clone();
        let other = std::thread::spawn(move || {
            post_json(
                &u2,
                "/v1/completions",
                &json!({"prompt": "Hello there", "max_tokens": 16, "temperature": 0}),
            )
        });
        let busy = post_json(&u, "/v1/chat/completions", &req);
        assert_eq!(other.join().unwrap().status, 200);
        let m = common::get(&u, "/metrics").body;
        srv.shutdown();
        (alone.json(), busy.json(), m)
    };
    let (p_alone, p_busy, _) = run(server::Speculation::Off);
    let (s_alone, s_busy, m) = run(server::Speculation::Mtp { draft_max: 3 });
    let text = |v: &Value| v["choices"][0]["message"]["content"].clone();
    assert_eq!(text(&s_alone), text(&p_alone));
    assert_eq!(text(&s_busy), text(&p_alone));
    assert_eq!(text(&p_busy), text(&p_alone));
    for (s, p) in step_logprobs(&s_alone).iter().zip(step_logprobs(&p_alone)) {
        for (a, b) in s.iter().zip(&p) {
            assert!((a - b).abs() < 1e-4, "{s:?} vs {p:?}");
        }
    }
    let drafted = m
        .lines()
        .find_map(|l| l.strip_prefix("surplus_spec_drafted_total "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    assert!(drafted > 0, "{m}");
}

fn assert_400(r: &common::Reply, what: &str) {
    assert_eq!(r.status, 400, "{what}: {}", r.body);
    let e = &r.json()["error"];
    assert_eq!(e["type"], "invalid_request_error", "{what}: {}", r.body);
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}"
    );
}

#[test]
fn bad_images_are_400s() {
    if fixtures_missing() {
        return;
    }
    let srv = start(true);
    let b = base(&srv);
    let png = std::fs::read(data().join("gradient-64x48.png")).unwrap();
    let cases = [
        (
            "truncated PNG",
            format!("data:image/png;base64,{}", base64(&png[..200])),
        ),
        (
            "text as JPEG",
            format!(
                "data:image/jpeg;base64,{}",
                base64(b"this is a text file, not a picture\n")
            ),
        ),
        (
            "20000 x 20000",
            format!(
                "data:image/png;base64,{}",
                base64(&png_header(20_000, 20_000))
            ),
        ),
        ("empty data URL", "data:image/png;base64,".to_owned()),
        ("not base64", "data:image/png;base64,!!!!".to_owned()),
        (
            "not an image type",
            "data:text/plain;base64,aGk=".to_owned(),
        ),
        ("remote URL", "https://example.com/cat.png".to_owned()),
        ("no scheme", "cat.png".to_owned()),
    ];
    for (what, url) in &cases {
        let r = post_json(&b, "/v1/chat/completions", &chat(url));
        assert_400(&r, what);
    }
    // A malformed image part.
    let r = post_json(
        &b,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
    );
    assert_400(&r, "no image_url");
    // The server still answers.
    let url = format!("data:image/png;base64,{}", base64(&png));
    let r = post_json(&b, "/v1/chat/completions", &chat(&url));
    assert_eq!(r.status, 200, "{}", r.body);
}

/// A one-thread HTTP server on loopback answering `/cat.png` with `png`, `/text` with a text
/// file and anything else with 404, for `n` requests.
fn image_host(png: Vec<u8>, n: usize) -> String {
    use std::io::{BufRead, BufReader, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in l.incoming().take(n) {
            let Ok(mut c) = conn else { continue };
            let mut r = BufReader::new(c.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            loop {
                let mut h = String::new();
                match r.read_line(&mut h) {
                    Ok(0) | Err(_) => break,
                    Ok(_) if h.trim().is_empty() => break,
                    Ok(_) => {}
                }
            }
            let path = line.split(' ').nth(1).unwrap_or("").to_owned();
            let (status, body): (&str, &[u8]) = match path.as_str() {
                "/cat.png" => ("200 OK", &png),
                "/text" => ("200 OK", b"just some text\n"),
                _ => ("404 Not Found", b"no\n"),
            };
            let _ = write!(
                c,
                "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = c.write_all(body);
        }
    });
    format!("http://{addr}")
}

#[test]
fn image_urls_are_fetched_with_allow_image_urls() {
    if fixtures_missing() {
        return;
    }
    let png = std::fs::read(data().join("gradient-64x48.png")).unwrap();
    let host = image_host(png.clone(), 3);
    let srv = start_with(true, true);
    let b = base(&srv);
    let data_url = format!("data:image/png;base64,{}", base64(&png));
    let want = post_json(&b, "/v1/chat/completions", &chat(&data_url));
    assert_eq!(want.status, 200, "{}", want.body);
    let got = post_json(
        &b,
        "/v1/chat/completions",
        &chat(&format!("{host}/cat.png")),
    );
    assert_eq!(got.status, 200, "{}", got.body);
    assert_eq!(
        got.json()["choices"][0]["message"]["content"],
        want.json()["choices"][0]["message"]["content"]
    );
    // A 404, a text file and a closed port are 400s naming the problem.
    let r = post_json(
        &b,
        "/v1/chat/completions",
        &chat(&format!("{host}/nope.png")),
    );
    assert_400(&r, "404");
    assert!(r.body.contains("404"), "{}", r.body);
    let r = post_json(&b, "/v1/chat/completions", &chat(&format!("{host}/text")));
    assert_400(&r, "text");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let r = post_json(
        &b,
        "/v1/chat/completions",
        &chat(&format!("http://127.0.0.1:{port}/cat.png")),
    );
    assert_400(&r, "closed port");
}

#[test]
fn images_need_a_projector() {
    let srv = start(false);
    let png = std::fs::read(data().join("gradient-64x48.png")).unwrap();
    let url = format!("data:image/png;base64,{}", base64(&png));
    let r = post_json(&base(&srv), "/v1/chat/completions", &chat(&url));
    assert_400(&r, "no projector");
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("--mmproj"));
}

/// The fixture's model files (GGUF weights, embedding dumps) are not in git: `scripts/
/// fixtures.sh` copies them into tests/data. Without them a test that needs them is skipped
/// and says so.
fn fixtures_missing() -> bool {
    testkit::fixtures_missing(testkit::VISION)
        || testkit::fixtures_missing(&["synthetic/qwen35-tiny-f32.gguf"])
}
