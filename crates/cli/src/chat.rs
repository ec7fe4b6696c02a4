//! `surplus chat`: an interactive conversation through the model's chat template. The
//! history is kept (and its KV cache reused); Ctrl-C stops a reply, Ctrl-D quits.

use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use engine::GenerateOptions;
use tokenizer::Message;

use crate::run::{ModelArgs, SamplingArgs};

/// Arguments of `surplus chat`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// A system message to start the conversation with.
    #[arg(short, long, value_name = "TEXT")]
    system: Option<String>,
    /// Most tokens per reply.
    #[arg(
        short = 'n',
        long = "n-predict",
        value_name = "N",
        default_value_t = 512
    )]
    n_predict: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
}

/// Runs `surplus chat`.
pub fn run(args: Args) -> Result<()> {
    let mut engine = args.model.load(1)?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || {
            // A second Ctrl-C before the first was handled quits.
            if stop.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
        })
        .context("installing the Ctrl-C handler")?;
    }
    let mut messages: Vec<Message> = Vec::new();
    if let Some(s) = &args.system {
        messages.push(Message::new("system", s));
    }
    let opts = GenerateOptions {
        max_tokens: args.n_predict,
        sampling: args.sampling.params(),
        ignore_eos: false,
        logprobs: 0,
        stop: Vec::new(),
    };
    eprintln!(
        "surplus chat: {} ({}). Ctrl-C stops a reply, Ctrl-D quits.",
        args.model.model,
        if engine.template.is_fallback() {
            "no chat template in the file: using ChatML"
        } else {
            "the file's chat template"
        }
    );
    let stdin = std::io::stdin();
    let mut line = String::new();
    loop {
        eprint!("\n> ");
        line.clear();
        stop.store(false, Ordering::SeqCst);
        if stdin.lock().read_line(&mut line)? == 0 {
            eprintln!();
            return Ok(());
        }
        let text = line.trim_end_matches(['\n', '\r']);
        if text.trim().is_empty() {
            continue;
        }
        messages.push(Message::new("user", text));
        let rendered = engine.template.render(&messages, true)?;
        let prompt = engine.tokenizer.encode_prompt(&rendered, true);
        if prompt.len() + opts.max_tokens > engine.n_ctx() {
            messages.pop();
            eprintln!(
                "the conversation ({} tokens) no longer fits the context of {}: start again with a larger --ctx-size",
                prompt.len(),
                engine.n_ctx()
            );
            continue;
        }
        let stdout = std::io::stdout();
        let gen = engine.generate(&prompt, &opts, |_, piece| {
            let mut out = stdout.lock();
            let _ = out.write_all(piece.as_bytes());
            let _ = out.flush();
            !stop.load(Ordering::SeqCst)
        })?;
        println!();
        if gen.finish_reason == "cancelled" {
            eprintln!("[stopped]");
        }
        messages.push(Message::new("assistant", gen.text.trim()));
    }
}
