//! `surplus template`: render a conversation with the model's chat template, exactly as the
//! prompt the model would be given (HF transformers' rendering; ChatML when the file has none).

use std::io::{Read, Write};

use anyhow::{Context, Result};
use tokenizer::template::{ChatTemplate, Message};

/// Arguments of `surplus template`.
#[derive(clap::Args)]
pub struct Args {
    /// The model whose chat template to use: a .gguf path or a known model name.
    #[arg(short, long, value_name = "MODEL", default_value = registry::DEFAULT_MODEL)]
    model: String,
    /// A JSON file holding the conversation: an array of {"role", "content"} objects (roles
    /// system, user, assistant, tool); `-` reads standard input.
    #[arg(long, value_name = "FILE")]
    messages: String,
    /// Leave out the header that opens the assistant's reply (add_generation_prompt=false).
    #[arg(long)]
    no_generation_prompt: bool,
    /// Print {"prompt": "..."} instead of the bare prompt.
    #[arg(long)]
    json: bool,
}

/// Reads the conversation from `source` (a path, or `-` for standard input); also returns the
/// name to use for it in messages.
fn read_messages(source: &str) -> Result<(Vec<Message>, String)> {
    let (text, name) = if source == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading messages from standard input")?;
        (s, "standard input".to_string())
    } else {
        let s = std::fs::read_to_string(source)
            .with_context(|| format!("reading messages from {source}"))?;
        (s, source.to_string())
    };
    let messages = serde_json::from_str(&text).with_context(|| {
        format!("{name}: expected a JSON array of {{\"role\": ..., \"content\": ...}} objects")
    })?;
    Ok((messages, name))
}

/// Runs `surplus template`.
pub fn run(args: Args) -> Result<()> {
    let (messages, name) = read_messages(&args.messages)?;
    let opts = registry::PullOptions {
        progress: crate::progress_enabled(),
        force: false,
    };
    let path = registry::resolve(&args.model, &opts)?;
    let g = gguf::Gguf::open(&path).with_context(|| path.display().to_string())?;
    let template = ChatTemplate::from_metadata(g.metadata())
        .with_context(|| format!("{}: chat template", path.display()))?;
    let prompt = template
        .render(&messages, !args.no_generation_prompt)
        .with_context(|| format!("{}: rendering the messages of {name}", path.display()))?;
    let mut out = std::io::stdout().lock();
    if args.json {
        let json = serde_json::json!({ "prompt": prompt.text });
        writeln!(out, "{}", serde_json::to_string(&json)?)?;
    } else {
        out.write_all(prompt.text.as_bytes())?;
    }
    out.flush()?;
    Ok(())
}
