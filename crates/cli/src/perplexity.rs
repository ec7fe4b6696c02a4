//! `surplus perplexity`: how well a model predicts a text (llama-perplexity's method).

use anyhow::{Context, Result};
use serde_json::json;

use crate::run::ModelArgs;

/// Arguments of `surplus perplexity`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// The text file to score.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: std::path::PathBuf,
    /// Tokens per chunk; the second half of each chunk is scored.
    #[arg(long = "chunk", value_name = "N", default_value_t = 128)]
    chunk: usize,
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
    if args.chunk < 4 {
        anyhow::bail!("--chunk must be at least 4 tokens");
    }
    args.model.batch_size = args.model.batch_size.max(args.chunk);
    if args.model.ctx_size == 0 {
        args.model.ctx_size = args.chunk;
    }
    let mut engine = args.model.load(args.chunk / 2 + 1)?;
    let json = args.json;
    let r =
        engine::perplexity::perplexity(&mut engine, &text, args.chunk, args.chunks, |i, ppl| {
            if !json {
                eprint!("[{}]{:.4},", i + 1, ppl);
            }
        })?;
    if json {
        println!(
            "{}",
            json!({"ppl": r.ppl, "chunks": r.chunks, "tokens": r.tokens, "scored": r.scored,
                   "chunk": args.chunk, "running": r.running})
        );
    } else {
        eprintln!();
        println!(
            "perplexity: {:.4} over {} chunks of {} tokens ({} tokens, {} scored)",
            r.ppl, r.chunks, args.chunk, r.tokens, r.scored
        );
    }
    Ok(())
}
