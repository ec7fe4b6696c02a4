//! `surplus run`: generate text from a raw prompt (no chat template), streamed or as JSON.

use std::io::Write;

use anyhow::{Context, Result};
use engine::sampling::SamplingParams;
use engine::speculative::{
    Controller, DraftSource, ModelDrafter, MtpDrafter, NgramDrafter, MAX_DRAFT,
};
use engine::{Engine, EngineOptions, GenerateOptions, PromptPart};
use serde_json::json;

/// Loading flags shared by the commands that run a model.
#[derive(clap::Args, Clone)]
pub struct ModelArgs {
    /// The model: a .gguf path or a known model name (pulled on first use).
    #[arg(short, long, value_name = "MODEL", default_value = registry::DEFAULT_MODEL)]
    pub model: String,
    /// CPU threads (default: all cores).
    #[arg(short, long, value_name = "N", default_value_t = 0)]
    pub threads: usize,
    /// Context size in tokens (default: on GPUs with --fit on, the largest up to the
    /// model's that fits; on the CPU, the model's, at most 4096).
    #[arg(short = 'c', long = "ctx-size", value_name = "N", default_value_t = 0)]
    pub ctx_size: usize,
    /// Most prompt tokens evaluated in one pass.
    #[arg(
        short = 'b',
        long = "batch-size",
        value_name = "N",
        default_value_t = 512
    )]
    pub batch_size: usize,
    /// Blocks on the GPUs: N, `all` (an error when they do not fit), `0` (the CPU) or
    /// `auto` (as many as fit, the fastest GPUs first; the CPU runs the rest). Also
    /// `-ngl N`.
    #[arg(
        long = "gpu-layers",
        visible_alias = "n-gpu-layers",
        value_name = "N|all|auto",
        default_value = "auto"
    )]
    pub gpu_layers: engine::GpuLayers,
    #[command(flatten)]
    pub cache: CacheTypes,
    #[command(flatten)]
    pub fit: FitArgs,
    /// Bytes a vision projector takes on the CPU (set by the command before loading).
    #[arg(skip)]
    pub vision_bytes: usize,
    /// A draft model the command loads after this one (set by it before loading): the plan
    /// keeps room for it.
    #[arg(skip)]
    pub draft_path: Option<std::path::PathBuf>,
}

/// How a model is split over the GPUs and what must fit (`--tensor-split`, `--main-gpu`,
/// `--fit`, `--fit-margin`), shared by every command that loads a model and by `plan`.
#[derive(clap::Args, Clone, Debug)]
pub struct FitArgs {
    /// Shares of the blocks per GPU, by driver ordinal (`3,1`: three quarters on GPU 0).
    /// Default: the fastest GPUs first, each as full as its memory allows, equal GPUs
    /// evenly; the CPU takes what is left. Also `-ts A,B`.
    #[arg(long = "tensor-split", value_name = "A,B,...", value_delimiter = ',')]
    pub tensor_split: Vec<f64>,
    /// The GPU that runs the LM head and any MTP block (its blocks come last in the pass).
    /// Also `-mg I`.
    #[arg(long = "main-gpu", value_name = "I")]
    pub main_gpu: Option<usize>,
    /// `on`: without -c, the largest context up to the model's that keeps the blocks on the
    /// GPUs (at least 4096 before blocks move to the CPU), with --fit-margin kept free;
    /// whatever does not fit is an error at load, never an out-of-memory later. `off`: a
    /// context of 4096 and no margin.
    #[arg(long = "fit", value_name = "on|off", default_value = "on", value_parser = parse_on_off)]
    pub fit: bool,
    /// MiB kept free on each GPU for the driver, cuBLAS and CUDA graphs (default: 768, at
    /// most an eighth of a small card).
    #[arg(long = "fit-margin", value_name = "MiB")]
    pub fit_margin: Option<usize>,
}

fn parse_on_off(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "on" | "true" | "1" | "yes" => Ok(true),
        "off" | "false" | "0" | "no" => Ok(false),
        _ => Err(format!("takes `on` or `off`, not {s:?}")),
    }
}

impl FitArgs {
    /// Sets these flags' fields of `eo`.
    pub fn apply(&self, eo: &mut EngineOptions) {
        eo.tensor_split = self.tensor_split.clone();
        eo.main_gpu = self.main_gpu;
        eo.fit = self.fit;
        eo.fit_margin = self.fit_margin.map(|m| m << 20);
        eo.measured_bandwidth = crate::doctor::measured_bandwidths();
    }
}

/// `--cache-type-k` / `--cache-type-v`, shared by every command that loads a model.
#[derive(clap::Args, Clone, Copy, Debug, Default)]
pub struct CacheTypes {
    /// How the KV cache stores keys: f32, f16, q8_0 or q4_0 (default: f32 on the CPU, f16
    /// on a GPU). q8_0 takes about half of f16 and attention reads it as is; most models
    /// lose little, but those with very large key values (Qwen2.5) lose more: check with
    /// `surplus perplexity -ctk q8_0`.
    /// Also `-ctk TYPE`.
    #[arg(long = "cache-type-k", value_name = "TYPE")]
    pub k: Option<runtime::KvType>,
    /// How the KV cache stores values (the same types as --cache-type-k). Also `-ctv TYPE`.
    #[arg(long = "cache-type-v", value_name = "TYPE")]
    pub v: Option<runtime::KvType>,
}

impl ModelArgs {
    /// The engine options these flags ask for (one sequence).
    pub fn options(&self, max_logit_rows: usize) -> EngineOptions {
        let mut eo = EngineOptions {
            n_ctx: self.ctx_size,
            n_batch: self.batch_size,
            n_seq: 1,
            max_logit_rows,
            n_threads: self.threads,
            gpu_layers: self.gpu_layers,
            cache_type_k: self.cache.k,
            cache_type_v: self.cache.v,
            vision_bytes: self.vision_bytes,
            draft_model: self.draft_path.clone(),
            ..EngineOptions::default()
        };
        self.fit.apply(&mut eo);
        eo
    }

    /// Resolves the model name or path and loads it.
    pub fn load(&self, max_logit_rows: usize) -> Result<Engine> {
        self.load_other(&self.model, max_logit_rows)
    }

    /// Loads the draft model `name` for a target of `n_ctx` positions: that context, the
    /// room the target's plan kept for it, no split or projector of the target's.
    pub fn load_draft(&self, name: &str, n_ctx: usize) -> Result<Engine> {
        let pull = registry::PullOptions {
            progress: crate::progress_enabled(),
            force: false,
        };
        let path = registry::resolve(name, &pull)?;
        let eo = EngineOptions {
            n_ctx,
            tensor_split: Vec::new(),
            main_gpu: None,
            vision_bytes: 0,
            draft_model: None,
            ..self.options(1)
        };
        load_engine(&path, &eo)
    }

    /// Loads `model` (a name or a path) with these flags' threads, context and batch.
    pub fn load_other(&self, model: &str, max_logit_rows: usize) -> Result<Engine> {
        let opts = registry::PullOptions {
            progress: crate::progress_enabled(),
            force: false,
        };
        let path = registry::resolve(model, &opts)?;
        load_engine(&path, &self.options(max_logit_rows))
    }
}

/// Bytes the projector at `path` takes on the CPU: its weights and its largest image's
/// activations (counted in the placement plan).
pub fn vision_bytes(path: &std::path::Path) -> Result<usize> {
    let m = vision::Projector::open(path)
        .with_context(|| format!("reading the projector {}", path.display()))?
        .memory();
    Ok((m.weights + m.scratch) as usize)
}

/// Loads the GGUF file at `path` with a progress bar on a terminal.
pub fn load_engine(path: &std::path::Path, eo: &EngineOptions) -> Result<Engine> {
    let bar = crate::progress_enabled().then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "loading {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        b.set_message(
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
        b
    });
    let engine = Engine::load_with_progress(path, eo, |done, total| {
        if let Some(b) = &bar {
            b.set_length(total);
            b.set_position(done);
        }
    })
    .with_context(|| format!("loading {}", path.display()));
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if let Ok(e) = &engine {
        eprintln!("surplus: {}", e.placement());
    }
    engine
}

/// Sampling flags.
#[derive(clap::Args, Clone)]
pub struct SamplingArgs {
    /// Temperature; 0 picks the most likely token every time (greedy).
    #[arg(
        long = "temp",
        value_name = "T",
        default_value_t = 0.8,
        allow_negative_numbers = true
    )]
    pub temperature: f32,
    /// Keep only the K most likely tokens (0: off).
    #[arg(long, value_name = "K", default_value_t = 40)]
    pub top_k: usize,
    /// Keep the most likely tokens whose probabilities add up to P (1: off).
    #[arg(long, value_name = "P", default_value_t = 0.95)]
    pub top_p: f32,
    /// Drop tokens less likely than P times the most likely one (0: off).
    #[arg(long, value_name = "P", default_value_t = 0.05)]
    pub min_p: f32,
    /// Penalize tokens seen in the last 64 (1: off).
    #[arg(long, value_name = "X", default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Random seed (default: random).
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,
}

impl SamplingArgs {
    /// The sampler's parameters.
    pub fn params(&self) -> SamplingParams {
        let mut p = SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            ..SamplingParams::default()
        };
        if let Some(s) = self.seed {
            p.seed = s;
        }
        p
    }
}

/// Which drafter speculative decoding uses.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpecMode {
    /// No speculation: one target pass per token.
    None,
    /// Prompt lookup: the last tokens are looked up earlier in the text and what followed
    /// them is proposed (no extra model; pays off when the output repeats the input).
    Ngram,
    /// A small model sharing the target's tokenizer proposes tokens (--draft-model).
    Draft,
    /// The model's own multi-token-prediction block (Qwen3.5/3.6 files with `nextn` layers;
    /// the default for them).
    Mtp,
}

/// Speculative decoding flags.
#[derive(clap::Args, Clone)]
pub struct SpecArgs {
    /// Speculative decoding: a drafter proposes tokens, the model checks them in one pass.
    /// Greedy output is unchanged and sampled output keeps its distribution. With
    /// --draft-model the default is `draft`; for a model with an MTP block, `mtp`.
    #[arg(long, value_enum, value_name = "MODE")]
    pub spec: Option<SpecMode>,
    /// The draft model for --spec draft: a .gguf path or a known model name, with the same
    /// tokenizer as the model (e.g. qwen2.5-coder-0.5b for qwen2.5-coder-1.5b).
    #[arg(long, value_name = "MODEL")]
    pub draft_model: Option<String>,
    /// Most tokens drafted per step (1 to 6); how many are drafted adapts every step to
    /// the measured acceptance and costs, down to none when speculation does not pay.
    #[arg(long, value_name = "K", default_value_t = 6)]
    pub draft_max: usize,
    /// Always draft --draft-max tokens, even when it does not pay (to measure a drafter's
    /// acceptance at a fixed draft length).
    #[arg(long)]
    pub draft_fixed: bool,
}

impl SpecArgs {
    /// The drafter these flags ask for, if any (the draft model is loaded here).
    pub fn drafter(
        &self,
        model: &ModelArgs,
        target: &Engine,
        sampling: &SamplingParams,
    ) -> Result<Option<DraftSource>> {
        let mode = self.spec.unwrap_or(if self.draft_model.is_some() {
            SpecMode::Draft
        } else if target.has_mtp() {
            SpecMode::Mtp
        } else {
            SpecMode::None
        });
        if !(1..=MAX_DRAFT).contains(&self.draft_max) {
            anyhow::bail!(
                "--draft-max must be between 1 and {MAX_DRAFT}, got {}",
                self.draft_max
            );
        }
        match mode {
            SpecMode::None => Ok(None),
            SpecMode::Ngram => Ok(Some(DraftSource::Ngram(NgramDrafter::default()))),
            SpecMode::Mtp => {
                if !target.has_mtp() {
                    anyhow::bail!("--spec mtp: this model has no multi-token-prediction block (use --spec ngram or --spec draft)");
                }
                Ok(Some(DraftSource::Mtp(MtpDrafter::default())))
            }
            SpecMode::Draft => {
                let Some(name) = &self.draft_model else {
                    anyhow::bail!("--spec draft needs --draft-model MODEL (a small model with the same tokenizer)");
                };
                let engine = model.load_draft(name, target.n_ctx())?;
                let d = ModelDrafter::new(engine, target, sampling)
                    .with_context(|| format!("draft model {name}"))?;
                Ok(Some(DraftSource::Model(Box::new(d))))
            }
        }
    }

    /// Logit rows the target needs: one per verified token (the model may turn out to have
    /// an MTP block, which speculates by default, so only `--spec none` asks for one row).
    /// Whether a draft model will be loaded (`--draft-model`, with `--spec draft` or no
    /// `--spec`).
    pub fn uses_draft(&self) -> bool {
        self.draft_model.is_some() && matches!(self.spec, None | Some(SpecMode::Draft))
    }

    pub fn logit_rows(&self) -> usize {
        if self.spec == Some(SpecMode::None) {
            1
        } else {
            MAX_DRAFT + 1
        }
    }
}

/// Arguments of `surplus run`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt, used as it is (no chat template); BOS is added if the model wants it.
    #[arg(short, long, value_name = "TEXT")]
    prompt: String,
    /// Tokens to generate.
    #[arg(
        short = 'n',
        long = "n-predict",
        value_name = "N",
        default_value_t = 128
    )]
    n_predict: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    spec: SpecArgs,
    #[command(flatten)]
    constraint: crate::grammar::ConstraintArgs,
    /// Do not stop at end-of-generation tokens (they are never picked).
    #[arg(long)]
    ignore_eos: bool,
    /// Stop when the text contains TEXT (repeatable); the text is cut before it, and what
    /// could still begin it is not printed until it is known not to.
    #[arg(long, value_name = "TEXT")]
    stop: Vec<String>,
    /// Record the K most likely tokens and their log-probabilities at every step (--json).
    #[arg(long, value_name = "K", default_value_t = 0)]
    logprobs: usize,
    /// Print one JSON object (prompt_tokens, tokens, text, logprobs, timings) instead of
    /// streaming the text.
    #[arg(long)]
    json: bool,
    /// A vision projector file ("mmproj" GGUF) for --image.
    #[arg(long, value_name = "FILE")]
    mmproj: Option<std::path::PathBuf>,
    /// An image (PNG, JPEG, WebP, GIF) placed where the prompt says `<image>`, else before
    /// the prompt; needs --mmproj.
    #[arg(long, value_name = "PATH", requires = "mmproj")]
    image: Option<std::path::PathBuf>,
}

/// The image's embeddings and the prompt split around it, for --image.
struct ImageInput {
    prompt: engine::ImagePrompt,
    emb: vision::ImageEmbeddings,
}

impl ImageInput {
    fn rows(&self) -> engine::ImageRows<'_> {
        engine::ImageRows {
            data: &self.emb.data,
            non_causal: self.prompt.non_causal,
            grid: [self.emb.nx, self.emb.ny],
        }
    }
}

/// Where --image goes in the prompt.
const IMAGE_MARKER: &str = "<image>";

/// Loads the projector, decodes and encodes the image, and splits the prompt around it.
fn image_input(
    engine: &Engine,
    mmproj: &std::path::Path,
    image: &std::path::Path,
    prompt: &str,
) -> Result<ImageInput> {
    let proj = vision::Projector::open(mmproj)
        .with_context(|| format!("loading the projector {}", mmproj.display()))?;
    if proj.n_embd_out() != engine.model.hp.n_embd {
        anyhow::bail!(
            "the projector {} makes {}-wide embeddings; the model takes {}",
            mmproj.display(),
            proj.n_embd_out(),
            engine.model.hp.n_embd
        );
    }
    eprintln!("{}", proj.memory());
    let bytes = std::fs::read(image).with_context(|| format!("reading {}", image.display()))?;
    let img = vision::decode(&bytes, &vision::DecodeLimits::default())
        .with_context(|| format!("decoding {}", image.display()))?;
    let emb = proj
        .embed(&img)
        .with_context(|| format!("encoding {}", image.display()))?;
    let prompt = engine::image_prompt(engine, prompt, IMAGE_MARKER)?;
    Ok(ImageInput { prompt, emb })
}

/// Runs `surplus run`.
pub fn run(mut args: Args) -> Result<()> {
    // Flag errors (an unreadable or invalid file) come before the model loads.
    args.constraint.grammar()?;
    if let (Some(m), Some(_)) = (&args.mmproj, &args.image) {
        args.model.vision_bytes = vision_bytes(m)?;
    }
    if let Some(name) = args
        .spec
        .draft_model
        .as_ref()
        .filter(|_| args.spec.uses_draft())
    {
        let pull = registry::PullOptions {
            progress: crate::progress_enabled(),
            force: false,
        };
        args.model.draft_path = Some(registry::resolve(name, &pull)?);
    }
    let mut engine = args.model.load(args.spec.logit_rows())?;
    let constraint = args.constraint.compile(&engine)?;
    let sampling = args.sampling.params();
    sampling
        .validate()
        .map_err(|e| anyhow::anyhow!("invalid sampling parameters: {e}"))?;
    let mut drafter = args.spec.drafter(&args.model, &engine, &sampling)?;
    let image = match (&args.mmproj, &args.image) {
        (Some(m), Some(i)) => Some(image_input(&engine, m, i, &args.prompt)?),
        _ => None,
    };
    let prompt = match &image {
        Some(im) => [im.prompt.before.as_slice(), &im.prompt.after].concat(),
        None => engine.tokenizer.encode(&args.prompt, true, true),
    };
    let opts = GenerateOptions {
        max_tokens: args.n_predict,
        sampling: args.sampling.params(),
        ignore_eos: args.ignore_eos,
        logprobs: args.logprobs,
        stop: args.stop.clone(),
        constraint,
        logit_bias: Vec::new(),
    };
    let stdout = std::io::stdout();
    let json = args.json;
    // The prompt is echoed with the first generated piece, so errors come alone.
    let mut echoed = false;
    // Bytes of the generated text printed (text that may begin a stop string comes later).
    let mut printed = 0;
    let on_token = |_: u32, piece: &str| {
        if !json {
            let mut out = stdout.lock();
            if !echoed {
                let _ = out.write_all(args.prompt.as_bytes());
                echoed = true;
            }
            printed += piece.len();
            let _ = out.write_all(piece.as_bytes());
            let _ = out.flush();
        }
        true
    };
    let (gen, spec) = match drafter.as_mut() {
        Some(d) => {
            let mut ctl = if args.spec.draft_fixed {
                Controller::fixed(args.spec.draft_max)
            } else {
                Controller::new(args.spec.draft_max)
            };
            let (g, s) = match &image {
                Some(im) => {
                    let parts = [
                        PromptPart::Tokens(&im.prompt.before),
                        PromptPart::Embeddings(im.rows()),
                        PromptPart::Tokens(&im.prompt.after),
                    ];
                    engine.generate_speculative_parts(&parts, &opts, d, &mut ctl, on_token)?
                }
                None => engine.generate_speculative(&prompt, &opts, d, &mut ctl, on_token)?,
            };
            (g, Some(s))
        }
        None => match &image {
            Some(im) => {
                let parts = [
                    PromptPart::Tokens(&im.prompt.before),
                    PromptPart::Embeddings(im.rows()),
                    PromptPart::Tokens(&im.prompt.after),
                ];
                (engine.generate_parts(&parts, &opts, on_token)?, None)
            }
            None => (engine.generate(&prompt, &opts, on_token)?, None),
        },
    };
    if !json && !echoed {
        print!("{}", args.prompt);
    }
    if !json {
        // What generation held back and released at its end.
        print!("{}", gen.text.get(printed..).unwrap_or(""));
    }
    let t = &gen.timings;
    if json {
        let logprobs: Vec<Vec<(u32, f32)>> = gen.logprobs.clone();
        let out = json!({
            "prompt_tokens": prompt,
            "tokens": gen.tokens,
            "text": gen.text,
            "finish_reason": gen.finish_reason,
            "logprobs": if args.logprobs > 0 { json!(logprobs) } else { json!(null) },
            "timings": {
                "prompt_tokens": t.prompt_tokens,
                "prompt_tokens_per_s": t.prompt_tps(),
                "generated_tokens": t.generated_tokens,
                "generation_tokens_per_s": t.generation_tps(),
                "threads": engine.n_threads(),
            },
        });
        let mut out = out;
        if let Some(s) = &spec {
            out["speculative"] = json!(s);
        }
        println!("{out}");
    } else {
        println!();
        eprintln!(
            "\nprompt: {} tokens, {:.1} tokens/s; generation: {} tokens, {:.1} tokens/s ({} threads)",
            t.prompt_tokens,
            t.prompt_tps(),
            t.generated_tokens,
            t.generation_tps(),
            engine.n_threads()
        );
        if let Some(s) = &spec {
            let rate = if s.drafted == 0 {
                0.0
            } else {
                100.0 * s.accepted as f64 / s.drafted as f64
            };
            eprintln!(
                "speculative ({}): {} drafted, {} accepted ({rate:.0}%), {} target passes",
                s.drafter, s.drafted, s.accepted, s.steps
            );
        }
    }
    Ok(())
}
