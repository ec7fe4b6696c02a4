//! `surplus perplexity`: how well a model predicts a text (llama-perplexity's method).

use anyhow::{Context, Result};
use serde_json::json;

use crate::run::ModelArgs;

/// Arguments of `surplus perplexity`. `-c N` sets the chunk size (default 512): each chunk is
/// evaluated on its own and its second half scored.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// The text file to score.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: std::path::PathBuf,
    /// Stop after this many chunks (default: all).
    #[arg(long, value_name = "N")]
    chunks: Option<usize>,
    /// Print one JSON object: ppl, chunks, tokens, scored, running.
    #[arg(long)]
    json: bool,
}

/// Runs `surplus perplexity`.
pub fn run(mut args: Args) -> Result<()> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    // As in llama-perplexity, the context size is the chunk size (default 512).
    let chunk = match args.model.ctx_size {
        0 => 512,
        c => c,
    };
    if chunk < 4 {
        anyhow::bail!("-c must be at least 4 tokens");
    }
    args.model.ctx_size = chunk;
    args.model.batch_size = args.model.batch_size.max(chunk);
    let mut engine = args.model.load(chunk / 2 + 1)?;
    let json = args.json;
    let r = engine::perplexity::perplexity(&mut engine, &text, chunk, args.chunks, |i, ppl| {
        if !json {
            eprint!("[{}]{:.4},", i + 1, ppl);
        }
    })?;
    if json {
        println!(
            "{}",
            json!({"ppl": r.ppl, "chunks": r.chunks, "tokens": r.tokens, "scored": r.scored,
                   "chunk": chunk, "running": r.running})
        );
    } else {
        eprintln!();
        println!(
            "perplexity: {:.4} over {} chunks of {} tokens ({} tokens, {} scored)",
            r.ppl, r.chunks, chunk, r.tokens, r.scored
        );
    }
    Ok(())
}
