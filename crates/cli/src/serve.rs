//! `surplus serve`: the OpenAI-compatible HTTP server (chat and text completions, models,
//! health, metrics) with continuous batching over `--parallel` sequences; SIGTERM or
//! Ctrl-C shuts it down gracefully.

use anyhow::{Context, Result};
use engine::sampling::SamplingParams;
use engine::speculative::ModelDrafter;
use engine::{Engine, EngineOptions};

/// Arguments of `surplus serve`.
#[derive(clap::Args)]
pub struct Args {
    /// The model: a .gguf path or a known model name (pulled on first use).
    #[arg(short, long, value_name = "MODEL", default_value = registry::DEFAULT_MODEL)]
    model: String,
    /// Address to listen on.
    #[arg(long, value_name = "HOST", default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0: any free port).
    #[arg(long, value_name = "PORT", default_value_t = 8080)]
    port: u16,
    /// Sequences generated at once (continuous batching; each has its own KV cache).
    #[arg(long, value_name = "N", default_value_t = 4)]
    parallel: usize,
    /// Context size of each sequence in tokens (default: on GPUs with --fit on, the largest
    /// up to the model's that fits; on the CPU, the model's, at most 4096).
    #[arg(short = 'c', long = "ctx-size", value_name = "N", default_value_t = 0)]
    ctx_size: usize,
    /// CPU threads (default: all cores).
    #[arg(short, long, value_name = "N", default_value_t = 0)]
    threads: usize,
    /// Blocks on the GPUs: N, `all` (an error when they do not fit), `0` (the CPU) or
    /// `auto` (as many as fit, the fastest GPUs first; the CPU runs the rest). Also
    /// `-ngl N`.
    #[arg(
        long = "gpu-layers",
        visible_alias = "n-gpu-layers",
        value_name = "N|all|auto",
        default_value = "auto"
    )]
    gpu_layers: engine::GpuLayers,
    #[command(flatten)]
    cache: crate::run::CacheTypes,
    #[command(flatten)]
    fit: crate::run::FitArgs,
    /// Requests that may wait for a free sequence; more are answered 429 with Retry-After.
    #[arg(long, value_name = "N", default_value_t = 64)]
    queue: usize,
    /// Prompt tokens evaluated in one pass (prompts go in chunks of this many, interleaved
    /// with the decode steps of running streams).
    #[arg(
        short = 'b',
        long = "batch-size",
        value_name = "N",
        default_value_t = 128
    )]
    batch_size: usize,
    /// Largest request body accepted, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20)]
    max_body: usize,
    /// Speculative decoding: `ngram` drafts tokens by looking the recent text up earlier in
    /// the prompt and output (no extra model); `draft` runs a small model with the same
    /// tokenizer (--draft-model). Greedy output is unchanged and sampled output keeps its
    /// distribution. With --draft-model the default is `draft`, otherwise `none`.
    #[arg(long, value_name = "KIND", value_enum)]
    spec: Option<Spec>,
    /// The draft model for --spec draft: a .gguf path or a known model name, with the same
    /// tokenizer as --model (it drafts for every sequence, on the same threads).
    #[arg(long, value_name = "MODEL")]
    draft_model: Option<String>,
    /// Most tokens drafted per sequence and step with --spec (1..=6; the length adapts to
    /// what pays off).
    #[arg(long, value_name = "K", default_value_t = 4)]
    draft_max: usize,
    /// A vision projector file ("mmproj" GGUF): chat messages may then hold `image_url`
    /// parts with base64 data URLs (Gemma 3 for now). Raise --max-body for large images.
    #[arg(long, value_name = "FILE")]
    mmproj: Option<std::path::PathBuf>,
    /// Fetch http(s) image URLs in requests (at most 20 MiB, 30 s; without this flag they
    /// are refused with a 400). The server then makes requests wherever clients point it:
    /// enable it only for trusted clients.
    #[arg(long, requires = "mmproj")]
    allow_image_urls: bool,
    /// Require this API key: clients send `Authorization: Bearer KEY` (or `x-api-key: KEY`)
    /// on /v1/* and /metrics, else they get a 401; /health stays open. Repeat it for
    /// several keys; SURPLUS_API_KEY gives one (used when the flag is absent). A key is
    /// printable ASCII without spaces; keys are never printed.
    #[arg(
        long = "api-key",
        value_name = "KEY",
        env = "SURPLUS_API_KEY",
        hide_env_values = true
    )]
    api_keys: Vec<String>,
    /// Require one of the API keys in FILE (one a line; blank lines and lines starting
    /// with # are skipped), as well as any --api-key.
    #[arg(long, value_name = "FILE")]
    api_key_file: Option<std::path::PathBuf>,
    /// Where a thinking model's `<think>…</think>` goes: `auto` (or `deepseek`) puts it in
    /// `message.reasoning_content` (`delta.reasoning_content` when streaming) and the
    /// answer in `content`, as llama.cpp does; `none` leaves everything in `content`.
    /// A request's `reasoning_format` overrides it.
    #[arg(long, value_enum, default_value = "auto")]
    reasoning_format: ReasoningFormat,
    /// Host memory (MiB) for the prefix cache: prompts of finished requests that left their
    /// sequence, and the recurrent checkpoints of Qwen3.5/3.6 models. A request always
    /// resumes from the longest prefix of its tokens already evaluated (in a sequence or
    /// here); 0 keeps only what the sequences hold.
    #[arg(long = "cache-ram", value_name = "MiB", default_value_t = 8192)]
    cache_ram: usize,
    /// For models with recurrent state (qwen35): save the state every N prompt tokens
    /// (rounded up to whole --batch-size chunks), besides the end of every prompt, so a
    /// request sharing part of a long prompt resumes near where they part. 0: prompt ends
    /// only.
    #[arg(long = "checkpoint-every", value_name = "N", default_value_t = server::DEFAULT_CHECKPOINT_EVERY)]
    checkpoint_every: usize,
}

/// Values of `--reasoning-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum ReasoningFormat {
    /// Reasoning in `reasoning_content`.
    Auto,
    /// The same as auto (llama.cpp's name).
    Deepseek,
    /// Everything in `content`.
    None,
}

/// Speculative decoding kinds of `--spec`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Spec {
    /// Plain decoding.
    None,
    /// Prompt lookup.
    Ngram,
    /// A draft model (--draft-model).
    Draft,
    /// The model's own multi-token-prediction block (the default for files with one).
    Mtp,
}

/// Runs `surplus serve` until SIGTERM or Ctrl-C (the open requests finish first).
pub fn run(args: Args) -> Result<()> {
    anyhow::ensure!(
        (1..=256).contains(&args.parallel),
        "--parallel must be in 1..=256"
    );
    anyhow::ensure!(args.queue >= 1, "--queue must be at least 1");
    anyhow::ensure!(
        (1..=engine::speculative::MAX_DRAFT).contains(&args.draft_max),
        "--draft-max must be in 1..={}",
        engine::speculative::MAX_DRAFT
    );
    // Keys first: a bad key file fails before any model is loaded.
    let api_keys = api_keys(&args)?;
    let opts = registry::PullOptions {
        progress: crate::progress_enabled(),
        force: false,
    };
    let path = registry::resolve(&args.model, &opts)?;
    // Whether the file has MTP blocks (read from its header before loading).
    let has_mtp = gguf::Gguf::open(&path).ok().is_some_and(|g| {
        let arch = g.architecture().unwrap_or_default().to_string();
        let key = format!("{arch}.nextn_predict_layers");
        g.metadata().get_u64(&key).unwrap_or(0) > 0
    });
    let kind = args.spec.unwrap_or(if args.draft_model.is_some() {
        Spec::Draft
    } else if has_mtp {
        Spec::Mtp
    } else {
        Spec::None
    });
    let spec = match kind {
        Spec::None => server::Speculation::Off,
        Spec::Ngram => server::Speculation::Ngram {
            draft_max: args.draft_max,
        },
        Spec::Mtp => {
            anyhow::ensure!(
                has_mtp,
                "--spec mtp: this model has no multi-token-prediction block (use --spec ngram or --spec draft)"
            );
            server::Speculation::Mtp {
                draft_max: args.draft_max,
            }
        }
        Spec::Draft => {
            anyhow::ensure!(
                args.draft_model.is_some(),
                "--spec draft needs --draft-model MODEL (a small model with the same tokenizer)"
            );
            server::Speculation::Draft {
                draft_max: args.draft_max,
            }
        }
    };
    // A decode step holds every sequence's last token and, speculating, its drafts.
    let rows_per_seq = spec.draft_max() + 1;
    let mut eo = EngineOptions {
        n_ctx: args.ctx_size,
        n_batch: args.batch_size.max(args.parallel * rows_per_seq),
        n_seq: args.parallel,
        max_logit_rows: args.parallel * rows_per_seq,
        n_threads: args.threads,
        gpu_layers: args.gpu_layers,
        cache_type_k: args.cache.k,
        cache_type_v: args.cache.v,
        ..EngineOptions::default()
    };
    args.fit.apply(&mut eo);
    if let Some(m) = &args.mmproj {
        eo.vision_bytes = crate::run::vision_bytes(m)?;
    }
    if let (Some(name), server::Speculation::Draft { .. }) = (&args.draft_model, spec) {
        eo.draft_model = Some(registry::resolve(name, &opts)?);
    }
    let engine = crate::run::load_engine(&path, &eo)?;
    // The draft model: a sequence per slot, the target's context and threads.
    let drafter = match (&args.draft_model, spec) {
        (Some(name), server::Speculation::Draft { .. }) => {
            let dpath = registry::resolve(name, &opts)?;
            let deo = EngineOptions {
                n_ctx: engine.n_ctx(),
                n_batch: args.batch_size,
                n_seq: args.parallel,
                max_logit_rows: 1,
                n_threads: if engine.on_gpu() {
                    args.threads
                } else {
                    engine.n_threads()
                },
                gpu_layers: args.gpu_layers,
                cache_type_k: args.cache.k,
                cache_type_v: args.cache.v,
                tensor_split: Vec::new(),
                main_gpu: None,
                vision_bytes: 0,
                draft_model: None,
                ..eo.clone()
            };
            let d = ModelDrafter::load_for(
                &dpath,
                &engine,
                &deo,
                &SamplingParams::greedy(),
                args.parallel,
            )
            .with_context(|| format!("draft model {name}"))?;
            Some(d)
        }
        _ => None,
    };
    let tokenizer = Engine::tokenizer_from_file(&path)?;
    let n_ctx = engine.n_ctx();
    let threads = engine.n_threads();
    let model_id = if path.exists() && !args.model.ends_with(".gguf") {
        args.model.clone()
    } else {
        path.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| args.model.clone())
    };
    let cfg = server::Config {
        host: args.host.clone(),
        port: args.port,
        model_id,
        queue: args.queue,
        max_body: args.max_body,
        prefill_chunk: args.batch_size,
        handle_signals: true,
        spec,
        mmproj: args.mmproj.clone(),
        allow_image_urls: args.allow_image_urls,
        api_keys,
        reasoning: args.reasoning_format != ReasoningFormat::None,
        cache: server::CacheConfig {
            ram_bytes: args.cache_ram.saturating_mul(1 << 20),
            checkpoint_every: args.checkpoint_every,
        },
    };
    let cache_line = cache_summary(&engine, &cfg);
    let n_keys = cfg.api_keys.len();
    let srv = server::Server::start_with_drafter(engine, drafter, tokenizer, cfg)
        .with_context(|| format!("starting the server on {}:{}", args.host, args.port))?;
    let addr = srv.addr();
    let host = if addr.is_ipv6() {
        format!("[{}]", addr.ip())
    } else {
        addr.ip().to_string()
    };
    eprintln!(
        "{}: {} sequences of {n_ctx} tokens, {threads} threads",
        args.model, args.parallel
    );
    if let Some(m) = srv.vision_memory() {
        eprintln!("{m}");
    }
    if let (Some(name), server::Speculation::Draft { .. }) = (&args.draft_model, spec) {
        eprintln!("speculative decoding with draft model {name}");
    }
    if n_keys > 0 {
        eprintln!(
            "requests to /v1/* and /metrics need one of {n_keys} API key{}",
            if n_keys == 1 { "" } else { "s" }
        );
    }
    eprintln!("{cache_line}");
    eprintln!("listening on http://{host}:{}", addr.port());
    srv.wait();
    Ok(())
}

/// The keys of --api-key (or SURPLUS_API_KEY) and --api-key-file; errors never show a key.
fn api_keys(args: &Args) -> Result<server::auth::ApiKeys> {
    let mut keys = args.api_keys.clone();
    server::auth::ApiKeys::new(&keys).context("--api-key (or SURPLUS_API_KEY)")?;
    if let Some(file) = &args.api_key_file {
        let more = server::auth::read_key_file(file)
            .with_context(|| format!("--api-key-file {}", file.display()))?;
        keys.extend(more);
    }
    Ok(server::auth::ApiKeys::new(&keys)?)
}

/// One line on the prefix cache: its host memory, what a position of KV and a recurrent
/// checkpoint cost, and whether prompts resume anywhere or at chunk boundaries.
fn cache_summary(engine: &Engine, cfg: &server::Config) -> String {
    let mib = |b: usize| b as f64 / (1 << 20) as f64;
    let mut s = format!(
        "prefix cache: up to {:.0} MiB of host memory; KV {:.1} KiB a position",
        mib(cfg.cache.ram_bytes),
        engine.kv_token_bytes() as f64 / 1024.0
    );
    if engine.has_recurrent() {
        let every = match cfg.cache.checkpoint_every {
            0 => "at prompt ends".to_string(),
            n => format!(
                "every {} prompt tokens and at prompt ends",
                server::checkpoint_interval(n, cfg.prefill_chunk)
            ),
        };
        s.push_str(&format!(
            "; recurrent checkpoints {:.1} MiB each, {every}",
            mib(engine.state_bytes())
        ));
    }
    if engine.resumes_anywhere() {
        s.push_str("; prompts resume at any shared position");
    } else {
        s.push_str(&format!(
            "; prompts resume at multiples of {} tokens (--batch-size), where a whole prompt's chunks end",
            cfg.prefill_chunk
        ));
    }
    s
}
