//! `surplus tokenize`: text to token ids with the model's own tokenizer.

use std::io::Read;

use anyhow::{Context, Result};

/// Arguments of `surplus tokenize`.
#[derive(clap::Args)]
pub struct Args {
    /// The model whose tokenizer to use: a .gguf path or a known model name.
    #[arg(short, long, value_name = "MODEL", default_value = registry::DEFAULT_MODEL)]
    model: String,
    /// Add BOS/EOS as the model's metadata says (as when a prompt is tokenized).
    #[arg(long)]
    add_special: bool,
    /// Treat special-token text such as `<|im_start|>` as ordinary text instead of the
    /// special token (how text that users send is tokenized).
    #[arg(long)]
    no_parse_special: bool,
    /// Print a JSON array of ids instead of one `id<TAB>piece` line per token.
    #[arg(long)]
    json: bool,
    /// The text to tokenize; `-` reads standard input.
    #[arg(value_name = "TEXT")]
    text: String,
}

/// Runs `surplus tokenize`.
pub fn run(args: Args) -> Result<()> {
    let opts = registry::PullOptions {
        progress: crate::progress_enabled(),
        force: false,
    };
    let path = registry::resolve(&args.model, &opts)?;
    let g = gguf::Gguf::open(&path).with_context(|| path.display().to_string())?;
    let tok = tokenizer::Tokenizer::from_metadata(g.metadata())
        .with_context(|| path.display().to_string())?;
    let text = if args.text == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading standard input")?;
        s
    } else {
        args.text
    };
    let ids = tok.encode(&text, args.add_special, !args.no_parse_special);
    if args.json {
        println!("{}", serde_json::to_string(&ids)?);
    } else {
        for id in ids {
            let piece = String::from_utf8_lossy(tok.piece(id, true)).into_owned();
            println!("{id}\t{piece:?}");
        }
    }
    Ok(())
}
