//! The cost of constrained output per generated token on Qwen2.5's 151,936-token vocabulary:
//! a valid output is walked token by token, timing the mask (`prepare`), `apply` and `consume`.
//!
//! `cargo bench -p surplus-constrain --bench mask` (needs the qwen2.5-coder-0.5b test model;
//! `surplus pull qwen2.5-coder-0.5b`). Prints the vocabulary's build time, then per grammar
//! its compile time and per-token mean, p50, p99 and max in µs over every walk. Each walk
//! compiles the grammar afresh, as a server request does (llguidance's lexer starts cold).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use constrain::tools::{self, ToolFormat, ToolMode, ToolSpec};
use constrain::{Constraint, Grammar, Start, Vocabulary};
use serde_json::json;
use tokenizer::Tokenizer;

/// Walks per grammar (each on a freshly compiled constraint).
const WALKS: usize = 10;

/// A product order: nested objects, arrays of objects, enums, strings, integers, numbers,
/// a nullable field and a pattern.
fn order_schema() -> serde_json::Value {
    json!({
        "type": "object",
        "properties": {
            "order_id": {"type": "string", "pattern": "^ORD-[0-9]{4,8}$"},
            "status": {"enum": ["pending", "paid", "shipped", "delivered", "cancelled"]},
            "customer": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 64},
                    "email": {"type": "string"},
                    "age": {"type": "integer", "minimum": 0, "maximum": 150},
                    "address": {
                        "type": "object",
                        "properties": {
                            "street": {"type": "string"},
                            "city": {"type": "string"},
                            "country": {"enum": ["DE", "FR", "GB", "US", "JP"]},
                            "postcode": {"type": "string"}
                        },
                        "required": ["street", "city", "country"],
                        "additionalProperties": false
                    }
                },
                "required": ["name", "email", "address"],
                "additionalProperties": false
            },
            "items": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "properties": {
                        "sku": {"type": "string"},
                        "quantity": {"type": "integer", "minimum": 1},
                        "unit_price": {"type": "number", "minimum": 0},
                        "tags": {
                            "type": "array",
                            "items": {"enum": ["gift", "fragile", "express", "bulk"]}
                        }
                    },
                    "required": ["sku", "quantity", "unit_price"],
                    "additionalProperties": false
                }
            },
            "total": {"type": "number"},
            "notes": {"type": ["string", "null"]}
        },
        "required": ["order_id", "status", "customer", "items", "total"],
        "additionalProperties": false
    })
}

/// A valid output of [`order_schema`], as a model writes it (spaces after separators).
const ORDER: &str = r#"{"order_id": "ORD-20931", "status": "shipped", "customer": {"name": "Maria Lopez", "email": "maria.lopez@example.com", "age": 34, "address": {"street": "12 Rue de la Paix", "city": "Paris", "country": "FR", "postcode": "75002"}}, "items": [{"sku": "KB-8812-BLK", "quantity": 2, "unit_price": 49.99, "tags": ["gift", "fragile"]}, {"sku": "MS-0031", "quantity": 1, "unit_price": 19.5, "tags": []}, {"sku": "CBL-USB-C-2M", "quantity": 3, "unit_price": 7.25, "tags": ["bulk"]}], "total": 141.23, "notes": "Leave the parcel with the concierge if nobody answers."}"#;

/// Two tools, the call naming the first.
fn flight_tools() -> Vec<ToolSpec> {
    vec![
        ToolSpec {
            name: "search_flights".into(),
            parameters: json!({
                "type": "object",
                "properties": {
                    "origin": {"type": "string", "description": "IATA code"},
                    "destination": {"type": "string"},
                    "date": {"type": "string"},
                    "passengers": {"type": "integer", "minimum": 1, "maximum": 9},
                    "cabin": {"enum": ["economy", "premium", "business", "first"]},
                    "max_price": {"type": "number"},
                    "airlines": {"type": "array", "items": {"type": "string"}}
                },
                "required": ["origin", "destination", "date"]
            }),
        },
        ToolSpec {
            name: "get_weather".into(),
            parameters: json!({
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "unit": {"enum": ["c", "f"]}
                },
                "required": ["city"]
            }),
        },
    ]
}

/// A valid Hermes call of `search_flights`.
const CALL: &str = "<tool_call>\n{\"name\": \"search_flights\", \"arguments\": {\"origin\": \"LHR\", \"destination\": \"NRT\", \"date\": \"2025-03-14\", \"passengers\": 2, \"cabin\": \"business\", \"max_price\": 4200.0, \"airlines\": [\"JL\", \"BA\"]}}\n</tool_call>";

/// Per-token timings of the walks of one grammar.
#[derive(Default)]
struct Times {
    compile: Vec<Duration>,
    prepare: Vec<Duration>,
    apply: Vec<Duration>,
    consume: Vec<Duration>,
    /// The first token's mask (a cold lexer) of each walk.
    first: Vec<Duration>,
}

/// Walks `ids` through a fresh constraint compiled from `grammar`, recording the times;
/// an error when the text does not match the grammar (then the figures would mean nothing).
fn walk(
    vocab: &Vocabulary,
    grammar: &Grammar,
    start: &Start,
    ids: &[u32],
    eos: u32,
    t: &mut Times,
) -> Result<(), String> {
    let t0 = Instant::now();
    let mut c: Constraint = vocab
        .compile(grammar, start.clone())
        .map_err(|e| e.to_string())?;
    t.compile.push(t0.elapsed());
    let mut logits = vec![0.0f32; vocab.n_vocab()];
    for (i, &id) in ids.iter().enumerate() {
        let t0 = Instant::now();
        c.prepare();
        let d = t0.elapsed();
        t.prepare.push(d);
        if i == 0 {
            t.first.push(d);
        }
        logits.fill(0.0);
        let t0 = Instant::now();
        c.apply(&mut logits);
        t.apply.push(t0.elapsed());
        if logits
            .get(id as usize)
            .is_none_or(|l| *l == f32::NEG_INFINITY)
        {
            return Err(format!("token {i} (id {id}) is not allowed"));
        }
        let t0 = Instant::now();
        c.consume(id);
        t.consume.push(t0.elapsed());
    }
    if !c.allows(eos) {
        return Err("end-of-generation is not allowed after the text".into());
    }
    Ok(())
}

/// Mean, p50, p99 and max of `d` in µs.
fn stats(d: &[Duration]) -> [f64; 4] {
    let mut us: Vec<f64> = d.iter().map(|d| d.as_secs_f64() * 1e6).collect();
    if us.is_empty() {
        return [0.0; 4];
    }
    us.sort_by(f64::total_cmp);
    let n = us.len();
    let at = |q: f64| us[((q * n as f64).ceil() as usize).clamp(1, n) - 1];
    [
        us.iter().sum::<f64>() / n as f64,
        at(0.5),
        at(0.99),
        us[n - 1],
    ]
}

fn row(name: &str, what: &str, d: &[Duration]) {
    let [mean, p50, p99, max] = stats(d);
    println!("| {name} | {what} | {mean:.1} | {p50:.1} | {p99:.1} | {max:.1} |");
}

fn main() -> ExitCode {
    match bench() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mask bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bench() -> Result<(), String> {
    let path = registry::resolve(
        "qwen2.5-coder-0.5b",
        &registry::PullOptions {
            progress: false,
            force: false,
        },
    )
    .map_err(|e| format!("the test model qwen2.5-coder-0.5b: {e}"))?;
    let file = gguf::Gguf::open(&path).map_err(|e| e.to_string())?;
    let tok = Tokenizer::from_metadata(file.metadata()).map_err(|e| e.to_string())?;
    let n_vocab = 151_936;
    let t0 = Instant::now();
    let vocab = Vocabulary::new(&tok, n_vocab).map_err(|e| e.to_string())?;
    let build = t0.elapsed();
    let eos = *tok.eog_ids().first().ok_or("no end-of-generation token")?;

    let named = ToolMode::Named("search_flights".into());
    let (call, call_start) =
        tools::grammar(ToolFormat::Hermes, &flight_tools(), &named, false, None)
            .map_err(|e| e.to_string())?;
    let cases = [
        (
            "JSON schema (order)",
            Grammar::JsonSchema(tools::with_json_options(&order_schema())),
            Start::Now,
            ORDER,
        ),
        ("Hermes tool call (named)", call, call_start, CALL),
        ("any JSON object", Grammar::JsonObject, Start::Now, ORDER),
    ];

    println!(
        "vocabulary: {} tokens (model {}), built in {:.1} ms",
        vocab.n_vocab(),
        path.display(),
        build.as_secs_f64() * 1e3
    );
    println!("{WALKS} walks per grammar, each on a freshly compiled constraint\n");
    println!("| grammar | step | mean µs | p50 µs | p99 µs | max µs |");
    println!("|---|---|---|---|---|---|");
    for (name, grammar, start, text) in &cases {
        let ids = tok.encode(text, false, true);
        let mut t = Times::default();
        for _ in 0..WALKS {
            walk(&vocab, grammar, start, &ids, eos, &mut t).map_err(|e| format!("{name}: {e}"))?;
        }
        let name = format!("{name}, {} tokens", ids.len());
        row(&name, "compile", &t.compile);
        row(&name, "mask (`prepare`)", &t.prepare);
        row(&name, "first token's mask", &t.first);
        row(&name, "`apply` to the logits", &t.apply);
        row(&name, "`consume`", &t.consume);
        let total: Vec<Duration> = t
            .prepare
            .iter()
            .zip(&t.apply)
            .zip(&t.consume)
            .map(|((p, a), c)| *p + *a + *c)
            .collect();
        row(&name, "per token, all three", &total);
    }
    Ok(())
}
