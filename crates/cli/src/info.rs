//! `surplus info`: what a GGUF file holds, for people (text) and programs (`--json`).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use gguf::{Array, GgmlType, Gguf, Value};
use serde_json::{json, Map, Value as Json};

/// Arrays longer than this are summarized in `--json` output unless `--full` is given.
const ARRAY_PREVIEW: usize = 16;

/// Arguments of `surplus info`.
#[derive(clap::Args)]
pub struct Args {
    /// The model: a path to a .gguf file, or a known model name (pulled on first use).
    #[arg(value_name = "MODEL", default_value = registry::DEFAULT_MODEL)]
    model: String,
    /// Print one JSON object instead of text: architecture, tensor_count, parameter_count,
    /// sizes by type, hyper-parameters and the whole metadata table.
    #[arg(long)]
    json: bool,
    /// With --json, print long arrays (such as the vocabulary) in full instead of a summary.
    #[arg(long)]
    full: bool,
    /// Also list every tensor (name, type, shape).
    #[arg(long)]
    tensors: bool,
}

/// Per-type totals.
#[derive(Default)]
struct TypeStats {
    tensors: u64,
    bytes: u64,
    parameters: u64,
}

/// Runs `surplus info`.
pub fn run(args: Args) -> Result<()> {
    let opts = registry::PullOptions {
        progress: crate::progress_enabled(),
        force: false,
    };
    let path = registry::resolve(&args.model, &opts)?;
    let g = Gguf::open(&path).with_context(|| path.display().to_string())?;
    let summary = Summary::of(&g);
    if args.json {
        let out = summary.to_json(&g, &path, args.full, args.tensors);
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        summary.print(&g, &path, args.tensors);
    }
    Ok(())
}

/// The facts `info` reports, gathered once.
struct Summary {
    architecture: String,
    parameters: u64,
    by_type: BTreeMap<GgmlType, TypeStats>,
    vocab_size: Option<usize>,
}

impl Summary {
    fn of(g: &Gguf) -> Summary {
        let mut by_type: BTreeMap<GgmlType, TypeStats> = BTreeMap::new();
        let mut parameters = 0u64;
        for t in g.tensors() {
            let s = by_type.entry(t.ggml_type()).or_default();
            s.tensors += 1;
            s.bytes += t.n_bytes();
            s.parameters += t.n_elements();
            parameters += t.n_elements();
        }
        Summary {
            architecture: g.architecture().unwrap_or("unknown").to_string(),
            parameters,
            by_type,
            vocab_size: g
                .metadata()
                .get_array("tokenizer.ggml.tokens")
                .map(|a| a.len()),
        }
    }

    /// `{arch}.{key}` as an integer.
    fn arch_u64(&self, g: &Gguf, key: &str) -> Option<u64> {
        g.metadata()
            .get_u64(&format!("{}.{key}", self.architecture))
    }

    fn print(&self, g: &Gguf, path: &Path, tensors: bool) {
        let m = g.metadata();
        let opt = |v: Option<u64>| v.map_or("?".to_string(), |v| v.to_string());
        println!(
            "file:            {} ({}, GGUF v{}{})",
            path.display(),
            human_bytes(g.file_size()),
            g.version(),
            if g.paths().len() > 1 {
                format!(", {} parts", g.paths().len())
            } else {
                String::new()
            }
        );
        println!("architecture:    {}", self.architecture);
        if let Some(name) = m.get_str("general.name") {
            println!("name:            {name}");
        }
        println!(
            "parameters:      {} ({})",
            human_count(self.parameters),
            self.parameters
        );
        println!(
            "context length:  {}",
            opt(self.arch_u64(g, "context_length"))
        );
        println!("layers:          {}", opt(self.arch_u64(g, "block_count")));
        println!(
            "embedding:       {}   feed-forward: {}",
            opt(self.arch_u64(g, "embedding_length")),
            opt(self.arch_u64(g, "feed_forward_length"))
        );
        println!(
            "attention heads: {}   KV heads: {}",
            opt(self.arch_u64(g, "attention.head_count")),
            opt(self.arch_u64(g, "attention.head_count_kv"))
        );
        println!(
            "tokenizer:       {}{}, {} tokens",
            m.get_str("tokenizer.ggml.model").unwrap_or("none"),
            m.get_str("tokenizer.ggml.pre")
                .map(|p| format!(" (pre-tokenizer {p})"))
                .unwrap_or_default(),
            self.vocab_size.map_or("?".into(), |n| n.to_string())
        );
        println!(
            "chat template:   {}",
            if m.get_str("tokenizer.chat_template").is_some() {
                "yes"
            } else {
                "no (ChatML will be used)"
            }
        );
        println!("tensors:         {}", g.tensors().len());
        for (ty, s) in &self.by_type {
            println!(
                "  {:<8} {:>5} tensors {:>12} parameters {:>10}",
                ty.name(),
                s.tensors,
                human_count(s.parameters),
                human_bytes(s.bytes)
            );
        }
        if tensors {
            for t in g.tensors() {
                println!("  {:<40} {:<8} {:?}", t.name(), t.ggml_type(), t.dims());
            }
        }
    }

    fn to_json(&self, g: &Gguf, path: &Path, full: bool, tensors: bool) -> Json {
        let m = g.metadata();
        let mut metadata = Map::new();
        for (k, v) in m.iter() {
            metadata.insert(k.to_string(), value_json(v, full));
        }
        let mut types = Map::new();
        for (ty, s) in &self.by_type {
            types.insert(
                ty.name().to_string(),
                json!({"tensors": s.tensors, "bytes": s.bytes, "parameters": s.parameters}),
            );
        }
        let mut out = json!({
            "path": path.display().to_string(),
            "files": g.paths().iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            "file_size": g.file_size(),
            "gguf_version": g.version(),
            "architecture": self.architecture,
            "name": m.get_str("general.name"),
            "parameter_count": self.parameters,
            "tensor_count": g.tensors().len(),
            "types": types,
            "context_length": self.arch_u64(g, "context_length"),
            "block_count": self.arch_u64(g, "block_count"),
            "embedding_length": self.arch_u64(g, "embedding_length"),
            "feed_forward_length": self.arch_u64(g, "feed_forward_length"),
            "head_count": self.arch_u64(g, "attention.head_count"),
            "head_count_kv": self.arch_u64(g, "attention.head_count_kv"),
            "tokenizer": {
                "model": m.get_str("tokenizer.ggml.model"),
                "pre": m.get_str("tokenizer.ggml.pre"),
                "vocab_size": self.vocab_size,
            },
            "chat_template": m.get_str("tokenizer.chat_template").is_some(),
            "metadata": metadata,
        });
        if tensors {
            out["tensors"] = g
                .tensors()
                .iter()
                .map(|t| json!({"name": t.name(), "type": t.ggml_type().name(), "dims": t.dims(), "offset": t.offset()}))
                .collect();
        }
        out
    }
}

/// An f32 as JSON, printed at its own precision (0.1, not 0.10000000149011612).
fn f32_json(v: f32) -> Json {
    format!("{v}")
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Json::Null, Json::Number)
}

fn value_json(v: &Value, full: bool) -> Json {
    match v {
        Value::U8(x) => json!(x),
        Value::I8(x) => json!(x),
        Value::U16(x) => json!(x),
        Value::I16(x) => json!(x),
        Value::U32(x) => json!(x),
        Value::I32(x) => json!(x),
        Value::U64(x) => json!(x),
        Value::I64(x) => json!(x),
        Value::F32(x) => f32_json(*x),
        Value::F64(x) => serde_json::Number::from_f64(*x).map_or(Json::Null, Json::Number),
        Value::Bool(x) => json!(x),
        Value::String(s) => json!(s),
        Value::Array(a) => array_json(a, full),
    }
}

/// An array in full, or, when long, `{"type": "array", "element_type", "len", "head"}`.
fn array_json(a: &Array, full: bool) -> Json {
    let n = if full {
        a.len()
    } else {
        a.len().min(ARRAY_PREVIEW)
    };
    let items: Vec<Json> = (0..n)
        .filter_map(|i| a.get(i))
        .map(|v| value_json(&v, full))
        .collect();
    if n == a.len() {
        Json::Array(items)
    } else {
        json!({
            "type": "array",
            "element_type": a.element_type().name(),
            "len": a.len(),
            "head": items,
        })
    }
}

fn human_bytes(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.2} GB", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.1} MB", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1} kB", n / 1e3)
    } else {
        format!("{n} B")
    }
}

fn human_count(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.2} B", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.1} M", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1} K", n / 1e3)
    } else {
        format!("{n}")
    }
}
