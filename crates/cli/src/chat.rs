//! `surplus chat`: an interactive conversation through the model's chat template. The
//! history is kept (and its KV cache reused); Ctrl-C stops a reply, Ctrl-D quits.
//! `/image PATH` (with --mmproj) attaches an image to the next user message; a conversation
//! with images is evaluated whole each turn.

use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use engine::{GenerateOptions, ImageRows, PromptPart};
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
    // Every reply is constrained, each from the start of the grammar.
    #[command(flatten)]
    constraint: crate::grammar::ConstraintArgs,
    /// A vision projector file ("mmproj" GGUF): `/image PATH` then attaches an image to the
    /// next message (Gemma 3 for now).
    #[arg(long, value_name = "FILE")]
    mmproj: Option<std::path::PathBuf>,
}

/// Where an image sits in a message until the prompt is tokenized (the object replacement
/// character).
const MARKER: &str = "\u{FFFC}";

/// Image input: the projector, the model's image tokens, the conversation's images (their
/// embeddings, in order) and those waiting for the next message.
struct Images {
    projector: vision::Projector,
    tokens: engine::ImageTokens,
    sent: Vec<vision::ImageEmbeddings>,
    pending: Vec<vision::ImageEmbeddings>,
}

impl Images {
    fn load(engine: &engine::Engine, path: &std::path::Path) -> Result<Images> {
        let projector = vision::Projector::open(path)
            .with_context(|| format!("loading the projector {}", path.display()))?;
        if projector.n_embd_out() != engine.model.hp.n_embd {
            anyhow::bail!(
                "the projector {} makes {}-wide embeddings; the model takes {}",
                path.display(),
                projector.n_embd_out(),
                engine.model.hp.n_embd
            );
        }
        let tokens = engine::image_tokens(&engine.tokenizer, engine.model.family)?;
        eprintln!("{}", projector.memory());
        Ok(Images {
            projector,
            tokens,
            sent: Vec::new(),
            pending: Vec::new(),
        })
    }

    /// Decodes and encodes the image at `path` for the next message.
    fn attach(&mut self, path: &str) -> Result<usize> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {path}"))?;
        let img = vision::decode(&bytes, &vision::DecodeLimits::default())
            .with_context(|| format!("decoding {path}"))?;
        let e = self
            .projector
            .embed(&img)
            .with_context(|| format!("encoding {path}"))?;
        let n = e.n_tokens;
        self.pending.push(e);
        Ok(n)
    }
}

/// Runs `surplus chat`.
pub fn run(args: Args) -> Result<()> {
    // Flag errors (an unreadable or invalid file) come before the model loads.
    args.constraint.grammar()?;
    let mut engine = args.model.load(1)?;
    let constraint = args.constraint.compile(&engine)?;
    let mut images = match &args.mmproj {
        Some(p) => Some(Images::load(&engine, p)?),
        None => None,
    };
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
    let mut opts = GenerateOptions {
        max_tokens: args.n_predict,
        sampling: args.sampling.params(),
        ignore_eos: false,
        logprobs: 0,
        stop: Vec::new(),
        constraint: None,
        logit_bias: Vec::new(),
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
        if let Some(path) = text.strip_prefix("/image") {
            let path = path.trim();
            match images.as_mut() {
                None => eprintln!("/image needs a vision projector: start with --mmproj FILE"),
                Some(_) if path.is_empty() => eprintln!("usage: /image PATH"),
                Some(im) => match im.attach(path) {
                    Ok(n) => eprintln!("[image attached to the next message: {n} tokens]"),
                    Err(e) => eprintln!("error: {e:#}"),
                },
            }
            continue;
        }
        if images.is_some() && text.contains(MARKER) {
            eprintln!("messages may not contain U+FFFC (it marks images)");
            continue;
        }
        let pending = images.as_ref().map_or(0, |im| im.pending.len());
        messages.push(Message::new(
            "user",
            format!("{}{text}", MARKER.repeat(pending)),
        ));
        let rendered = engine.template.render(&messages, true)?;
        let d = engine.model.hp.n_embd;
        let (prompt, runs) = match images.as_ref() {
            Some(im) if im.sent.len() + im.pending.len() > 0 => {
                let n = im.sent.len() + im.pending.len();
                let runs = engine::image_runs(&engine.tokenizer, &rendered, MARKER, im.tokens, n)?;
                let len = runs.iter().map(Vec::len).sum::<usize>()
                    + im.sent
                        .iter()
                        .chain(&im.pending)
                        .map(|r| r.data.len() / d)
                        .sum::<usize>();
                // Only the length matters here: the parts go to the engine below.
                (vec![0; len], Some(runs))
            }
            _ => (engine.tokenizer.encode_prompt(&rendered, true), None),
        };
        if prompt.len() + opts.max_tokens > engine.n_ctx() {
            messages.pop();
            eprintln!(
                "the conversation ({} tokens) no longer fits the context of {}: start again with a larger --ctx-size",
                prompt.len(),
                engine.n_ctx()
            );
            continue;
        }
        // Each reply starts the grammar afresh (the compiled constraint is never advanced).
        opts.constraint = constraint.clone();
        let stdout = std::io::stdout();
        let mut printed = 0;
        let on_token = |_: u32, piece: &str| {
            let mut out = stdout.lock();
            printed += piece.len();
            let _ = out.write_all(piece.as_bytes());
            let _ = out.flush();
            !stop.load(Ordering::SeqCst)
        };
        let gen = match (&runs, images.as_mut()) {
            (Some(runs), Some(im)) => {
                im.sent.append(&mut im.pending);
                let mut parts = Vec::with_capacity(runs.len() * 2);
                for (i, run) in runs.iter().enumerate() {
                    parts.push(PromptPart::Tokens(run));
                    if let Some(e) = im.sent.get(i) {
                        parts.push(PromptPart::Embeddings(ImageRows {
                            data: &e.data,
                            non_causal: im.tokens.non_causal,
                            grid: [e.nx, e.ny],
                        }));
                    }
                }
                engine.generate_parts(&parts, &opts, on_token)?
            }
            _ => engine.generate(&prompt, &opts, on_token)?,
        };
        // What generation held back and released at its end.
        println!("{}", gen.text.get(printed..).unwrap_or(""));
        if gen.finish_reason == "cancelled" {
            eprintln!("[stopped]");
        }
        // The marker stays reserved for images.
        messages.push(Message::new(
            "assistant",
            gen.text.trim().replace(MARKER, ""),
        ));
    }
}
