//! One model loaded for inference (CPU or GPU): tokenizer, chat template, KV cache, and the
//! loop that evaluates prompts and generates tokens, picked by [`crate::pick::Picker`].

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use model::Model;
use runtime::Batch;
use runtime::KvType;
use tokenizer::{ChatTemplate, Tokenizer};

use crate::backend::{place, Backend, GpuLayers};
use crate::pick::Picker;
use crate::sampling::{top_logprobs, SamplingParams};
use crate::stop::TextStream;

/// Why loading or running failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The GGUF file could not be opened or parsed.
    #[error("{path}: {source}")]
    File {
        /// The file's path, as displayed.
        path: String,
        /// What the GGUF reader reported.
        #[source]
        source: gguf::Error,
    },
    /// The file's metadata or tensors do not make a model this engine runs.
    #[error(transparent)]
    Model(#[from] model::ModelError),
    /// The file's vocabulary could not be turned into a tokenizer.
    #[error(transparent)]
    Tokenizer(#[from] tokenizer::TokenizerError),
    /// The chat template could not be parsed or rendered.
    #[error(transparent)]
    Template(#[from] tokenizer::TemplateError),
    /// The compute backend (CPU or GPU) failed: allocation, upload or a kernel.
    #[error(transparent)]
    Device(#[from] runtime::BackendError),
    /// The layers cannot be placed as asked (e.g. `--gpu-layers` given but CUDA unusable);
    /// the message says why.
    #[error("{0}")]
    Placement(String),
    /// The prompt plus the tokens to generate do not fit one sequence's context.
    #[error("the prompt has {prompt} tokens; with {generate} to generate that exceeds the context of {n_ctx} (raise --ctx-size)")]
    ContextFull {
        /// Positions the prompt takes (tokens and image rows), or the end position of a
        /// chunk evaluated at an offset.
        prompt: usize,
        /// Tokens asked for (`max_tokens`; 0 when only evaluating, e.g. perplexity).
        generate: usize,
        /// Context positions per sequence.
        n_ctx: usize,
    },
    /// The prompt takes no position, so there are no logits to start from.
    #[error("empty prompt: nothing to evaluate")]
    EmptyPrompt,
    /// [`SamplingParams::validate`] rejected the parameters; the message names the bad one.
    #[error("invalid sampling parameters: {0}")]
    Sampling(String),
    /// Input rows given directly (an image's embeddings) have the wrong size or do not fit;
    /// the message says which.
    #[error("bad input rows: {0}")]
    Embeddings(String),
    /// An operation this model does not support; the message says which.
    #[error("not supported for this model: {0}")]
    Unsupported(String),
}

/// One piece of a prompt: token ids, or input rows given directly (an image's embeddings).
#[derive(Clone, Copy, Debug)]
pub enum PromptPart<'a> {
    /// Token ids, one position each.
    Tokens(&'a [u32]),
    /// Rows of the model's width, evaluated in one batch of their own.
    Embeddings(ImageRows<'a>),
}

/// Input rows given directly instead of token ids: an image's embeddings.
#[derive(Clone, Copy, Debug)]
pub struct ImageRows<'a> {
    /// `n × n_embd` values, row after row.
    pub data: &'a [f32],
    /// The rows attend to each other both ways (a Gemma 3 image).
    pub non_causal: bool,
    /// The image's token grid `[nx, ny]` (row i at grid row i / nx, column i % nx): under
    /// multi-section RoPE (Qwen3.5) it sets the rows' positions and where the text after
    /// them resumes. `[n, 1]` for rows without a grid.
    pub grid: [usize; 2],
}

impl PromptPart<'_> {
    /// Positions the part takes (one per token or row).
    pub fn len(&self, n_embd: usize) -> usize {
        match self {
            PromptPart::Tokens(t) => t.len(),
            PromptPart::Embeddings(rows) => rows.data.len() / n_embd.max(1),
        }
    }

    /// Whether the part takes no position.
    pub fn is_empty(&self, n_embd: usize) -> bool {
        self.len(n_embd) == 0
    }
}

/// How to load a model.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Context positions per sequence (0: the model's training length, capped at 4096).
    pub n_ctx: usize,
    /// Most tokens evaluated in one forward pass (longer prompts go in chunks).
    pub n_batch: usize,
    /// Sequences held in the KV cache at once.
    pub n_seq: usize,
    /// Most tokens of one pass that may ask for logits.
    pub max_logit_rows: usize,
    /// CPU threads (0: all cores).
    pub n_threads: usize,
    /// Layers on the GPU (`--gpu-layers`): by default all when CUDA is usable and the
    /// model fits, else none.
    pub gpu_layers: GpuLayers,
    /// How the KV cache stores keys (`--cache-type-k`; None: the device's default, f32 on
    /// the CPU and f16 on a GPU).
    pub cache_type_k: Option<KvType>,
    /// How the KV cache stores values (`--cache-type-v`; None: the device's default).
    pub cache_type_v: Option<KvType>,
    /// Shares of the blocks per GPU by driver ordinal (`--tensor-split 3,1`); empty: by
    /// memory and bandwidth ([`crate::plan`]).
    pub tensor_split: Vec<f64>,
    /// The GPU that runs the head and any MTP block: the last of the pass (`--main-gpu`).
    pub main_gpu: Option<usize>,
    /// `--fit on`: with `n_ctx` 0, the largest context up to the model's that keeps the
    /// blocks on the GPUs, and a reserve kept free on each; off: 4096 positions and no
    /// reserve.
    pub fit: bool,
    /// Bytes kept free on each GPU (`--fit-margin`; None: 768 MiB, at most an eighth of a
    /// small card).
    pub fit_margin: Option<usize>,
    /// Bytes the process holds on the CPU besides the model (a vision projector and its
    /// largest image), counted in the plan.
    pub vision_bytes: usize,
    /// A draft model to be loaded after this one at the same context: the plan keeps room
    /// for all of it on the last GPU.
    pub draft_model: Option<std::path::PathBuf>,
    /// GPUs' bandwidths measured by `surplus doctor --bandwidth`, bytes/s by the driver's
    /// name of the GPU (the planner's first choice).
    pub measured_bandwidth: Vec<(String, f64)>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            n_ctx: 0,
            n_batch: 256,
            n_seq: 1,
            max_logit_rows: 1,
            n_threads: 0,
            gpu_layers: GpuLayers::Auto,
            cache_type_k: None,
            cache_type_v: None,
            tensor_split: Vec::new(),
            main_gpu: None,
            fit: true,
            fit_margin: None,
            vision_bytes: 0,
            draft_model: None,
            measured_bandwidth: Vec::new(),
        }
    }
}

/// Timings of one generation.
#[derive(Clone, Debug, Default)]
pub struct Timings {
    /// Positions of the prompt, a reused cached prefix included.
    pub prompt_tokens: usize,
    /// Wall time evaluating the prompt (only the part past a reused prefix is evaluated).
    pub prompt_time: Duration,
    /// Tokens added to the output (an end-of-generation token that ended it is not counted).
    pub generated_tokens: usize,
    /// Wall time from the end of the prompt to the end of generation.
    pub generation_time: Duration,
}

impl Timings {
    /// Prompt tokens per second.
    pub fn prompt_tps(&self) -> f64 {
        self.prompt_tokens as f64 / self.prompt_time.as_secs_f64().max(1e-9)
    }

    /// Generated tokens per second.
    pub fn generation_tps(&self) -> f64 {
        self.generated_tokens as f64 / self.generation_time.as_secs_f64().max(1e-9)
    }
}

/// What to do when generating.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// How each token is chosen from the logits (checked before anything runs).
    pub sampling: SamplingParams,
    /// Keep going past end-of-generation tokens (they are masked out of the choice).
    pub ignore_eos: bool,
    /// Record the top-K log-probabilities of every step (0: none).
    pub logprobs: usize,
    /// Stop when the generated text contains one of these.
    pub stop: Vec<String>,
    /// What the output must match (a JSON schema or grammar), if anything.
    pub constraint: Option<constrain::Constraint>,
    /// Added to these tokens' logits before every pick.
    pub logit_bias: Vec<(u32, f32)>,
}

/// What a generation produced.
#[derive(Clone, Debug, Default)]
pub struct Generation {
    /// The generated token ids, without the end-of-generation token that ended it.
    pub tokens: Vec<u32>,
    /// The generated text, cut before a stop string that ended it.
    pub text: String,
    /// Per step: the top-K (id, log-probability) pairs of the raw logits.
    pub logprobs: Vec<Vec<(u32, f32)>>,
    /// Why it stopped: "length", "eos", "stop" or "cancelled".
    pub finish_reason: &'static str,
    /// Token counts and wall times of the prompt and the generation.
    pub timings: Timings,
}

/// A model ready to run.
pub struct Engine {
    /// The loaded model: its family, hyper-parameters, weights and activation buffers.
    pub model: Model,
    /// The tokenizer built from the file's vocabulary.
    pub tokenizer: Tokenizer,
    /// The file's chat template (or the built-in fallback), which turns messages into a prompt.
    pub template: ChatTemplate,
    pub(crate) backend: Backend,
    /// Where the model runs, in one line (the GPU's memory plan, or why the CPU).
    pub(crate) placement: String,
    pub(crate) n_ctx: usize,
    pub(crate) n_batch: usize,
    pub(crate) n_seq: usize,
    /// Rotary positions of sequences holding images (multi-section RoPE).
    pub(crate) rope: crate::positions::RopePositions,
    pub(crate) max_logit_rows: usize,
    pub(crate) batch: Batch,
    /// Tokens whose keys and values sequence 0 of the cache holds, in order: a new prompt
    /// that starts with them is evaluated from where they end.
    pub(crate) cached: Vec<u32>,
}

impl Engine {
    /// Opens a GGUF file and prepares everything (buffers, KV cache, threads).
    pub fn load(path: &Path, opts: &EngineOptions) -> Result<Engine, EngineError> {
        Engine::load_with_progress(path, opts, |_, _| {})
    }

    /// [`Engine::load`], reading the weights into memory first and reporting
    /// `progress(bytes_done, bytes_total)` as it goes.
    pub fn load_with_progress(
        path: &Path,
        opts: &EngineOptions,
        progress: impl FnMut(u64, u64),
    ) -> Result<Engine, EngineError> {
        let file = gguf::Gguf::open(path).map_err(|source| EngineError::File {
            path: path.display().to_string(),
            source,
        })?;
        file.prefault(progress);
        let file = Arc::new(file);
        let tokenizer = Tokenizer::from_metadata(file.metadata())?;
        let template = ChatTemplate::from_metadata(file.metadata())?;
        let n_threads = match opts.n_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let (model, backend, n_ctx, placement) = place(file, opts, n_threads)?;
        let n_batch = opts.n_batch.clamp(1, n_ctx);
        Ok(Engine {
            model,
            tokenizer,
            template,
            backend,
            placement,
            n_ctx,
            n_batch,
            n_seq: opts.n_seq.max(1),
            rope: crate::positions::RopePositions::new(opts.n_seq.max(1)),
            max_logit_rows: opts.max_logit_rows.max(1),
            batch: Batch::default(),
            cached: Vec::new(),
        })
    }

    /// Context positions per sequence.
    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// Threads used (1 on a GPU).
    pub fn n_threads(&self) -> usize {
        self.backend.n_threads()
    }

    /// Where the model runs, in one line: the GPU and its memory plan (weights, KV cache,
    /// scratch), or the CPU and why.
    pub fn placement(&self) -> &str {
        &self.placement
    }

    /// Bytes of weights one decode step reads (every matrix of the trunk and the LM head;
    /// one embedding row is negligible): the numerator of the memory-bandwidth roofline.
    pub fn decode_weight_bytes(&self) -> usize {
        let c = runtime::collect::Collect::new(Batch::one_sequence(&[0], 0, 0, true));
        self.model.forward(&c);
        c.finish().matmul_bytes
    }

    /// Whether the model runs on a GPU.
    pub fn on_gpu(&self) -> bool {
        self.backend.on_gpu()
    }

    /// Evaluates `tokens` of sequence `seq` from position `start`, in chunks of at most
    /// n_batch. Returns the logits of the last token, or of every token with `all_logits`
    /// (then at most `max_logit_rows` tokens per chunk are allowed: pass chunks yourself).
    pub fn eval(
        &mut self,
        seq: u32,
        tokens: &[u32],
        start: usize,
        all_logits: bool,
    ) -> Result<&[f32], EngineError> {
        self.cached.clear();
        let rows = self.forward_tokens(seq, tokens, start, all_logits)?;
        self.backend.read(self.model.acts.logits, rows)
    }

    /// [`Engine::eval`] without forgetting the cached prefix; returns the logit rows made.
    fn forward_tokens(
        &mut self,
        seq: u32,
        tokens: &[u32],
        start: usize,
        all_logits: bool,
    ) -> Result<usize, EngineError> {
        if tokens.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        if start + tokens.len() > self.n_ctx {
            return Err(EngineError::ContextFull {
                prompt: start + tokens.len(),
                generate: 0,
                n_ctx: self.n_ctx,
            });
        }
        let mut pos = start;
        let mut rows = 0;
        for chunk in tokens.chunks(self.n_batch) {
            let last = pos + chunk.len() == start + tokens.len();
            let logits = if all_logits {
                0..chunk.len() as u32
            } else {
                Batch::last_row(chunk.len(), last)
            };
            self.batch.refill(chunk, pos as u32, seq, logits);
            rows = self.batch.logits.len();
            self.rope.fill(&mut self.batch, true);
            let model = &self.model;
            self.backend
                .forward(&self.batch, model, crate::backend::Pass::Trunk)?;
            pos += chunk.len();
        }
        Ok(rows)
    }

    /// How many leading tokens of `prompt` sequence 0 already holds and a generation may
    /// start after (a chat's history); at least the last token is evaluated. A model with
    /// recurrent state can only continue from the whole cached prefix: anything shorter
    /// starts over.
    pub(crate) fn reusable_prefix(&self, prompt: &[u32]) -> usize {
        let common = self
            .cached
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count()
            .min(prompt.len().saturating_sub(1));
        if self.model.recurrent().is_some() && common < self.cached.len() {
            0
        } else {
            common
        }
    }

    /// Evaluates input rows given directly (an image's embeddings, see [`ImageRows`]) for
    /// sequence `seq` from position `start`: in one pass when the rows attend both ways
    /// (then at most n_batch of them), else in passes of up to n_batch rows. With
    /// `last_logits`, returns the logit rows made (the last row's). The cached prefix is
    /// forgotten.
    pub fn eval_embeddings(
        &mut self,
        seq: u32,
        rows: ImageRows,
        start: usize,
        last_logits: bool,
    ) -> Result<usize, EngineError> {
        self.eval_embeddings_then(seq, rows, start, last_logits, |_, _, _| Ok(()))
    }

    /// [`Engine::eval_embeddings`] calling `after(engine, rows, start)` after each pass with
    /// the rows and first position it evaluated.
    pub(crate) fn eval_embeddings_then(
        &mut self,
        seq: u32,
        rows: ImageRows,
        start: usize,
        last_logits: bool,
        mut after: impl FnMut(&mut Engine, &[f32], usize) -> Result<(), EngineError>,
    ) -> Result<usize, EngineError> {
        self.cached.clear();
        let ImageRows {
            data,
            non_causal,
            grid: [nx, ny],
        } = rows;
        let d = self.model.hp.n_embd;
        let n = data.len() / d.max(1);
        if n == 0 || n * d != data.len() {
            return Err(EngineError::Embeddings(format!(
                "{} values are not whole rows of {d}",
                data.len()
            )));
        }
        if non_causal && n > self.n_batch {
            return Err(EngineError::Embeddings(format!(
                "the image's {n} rows attend to each other and must fit one batch of {} (raise the batch size)",
                self.n_batch
            )));
        }
        if start + n > self.n_ctx {
            return Err(EngineError::ContextFull {
                prompt: start + n,
                generate: 0,
                n_ctx: self.n_ctx,
            });
        }
        if nx * ny != n {
            return Err(EngineError::Embeddings(format!(
                "a grid of {nx} × {ny} does not hold {n} rows"
            )));
        }
        if self.model.multi_section_rope() {
            self.rope.add_image(seq, start as u32, nx as u32, ny as u32);
        } else {
            self.rope.truncate(seq, start as u32);
        }
        let mut made = 0;
        for (c, chunk) in data.chunks(self.n_batch * d).enumerate() {
            let at = start + c * self.n_batch;
            let m = chunk.len() / d;
            let last = last_logits && at + m == start + n;
            let b = &mut self.batch;
            b.refill_placeholders(m, at as u32, seq, Batch::last_row(m, last));
            b.embd.extend_from_slice(chunk);
            b.non_causal = non_causal;
            self.rope.fill(&mut self.batch, false);
            made = self.batch.logits.len();
            let model = &self.model;
            let res = self
                .backend
                .forward(&self.batch, model, crate::backend::Pass::Trunk);
            self.batch.embd.clear();
            self.batch.non_causal = false;
            res?;
            after(self, chunk, at)?;
        }
        Ok(made)
    }

    /// Forgets what the cache holds (the next generation evaluates its whole prompt).
    pub fn clear_cache(&mut self) {
        self.cached.clear();
    }

    /// Evaluates `tokens` (at most n_batch) of sequence `seq` from position `start` in one
    /// pass and returns the logits of tokens `logits_from..`, one row each.
    pub fn eval_rows(
        &mut self,
        seq: u32,
        tokens: &[u32],
        start: usize,
        logits_from: usize,
    ) -> Result<&[f32], EngineError> {
        if tokens.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        if start + tokens.len() > self.n_ctx || tokens.len() > self.n_batch {
            return Err(EngineError::ContextFull {
                prompt: start + tokens.len(),
                generate: 0,
                n_ctx: self.n_ctx.min(start + self.n_batch),
            });
        }
        self.cached.clear();
        let n = tokens.len() as u32;
        self.batch
            .refill(tokens, start as u32, seq, (logits_from as u32).min(n)..n);
        self.rope.fill(&mut self.batch, true);
        let rows = self.batch.logits.len();
        let model = &self.model;
        self.backend
            .forward(&self.batch, model, crate::backend::Pass::Trunk)?;
        self.backend.read(self.model.acts.logits, rows)
    }

    /// Generates up to `opts.max_tokens` tokens after `prompt` (ids, BOS included as the
    /// caller wants) in sequence 0, calling `on_token(id, text)` for each with the text that
    /// may be shown now (text that may start a stop string is held back: the returned
    /// [`Generation::text`] past what was shown is the rest); returning `false` from it stops
    /// early ("cancelled").
    pub fn generate(
        &mut self,
        prompt: &[u32],
        opts: &GenerateOptions,
        on_token: impl FnMut(u32, &str) -> bool,
    ) -> Result<Generation, EngineError> {
        self.generate_parts(&[PromptPart::Tokens(prompt)], opts, on_token)
    }

    /// [`Engine::generate`] after a prompt made of parts: token ids and input rows (images)
    /// in sequence order. Only an all-token prompt reuses (and updates) the cached prefix.
    pub fn generate_parts(
        &mut self,
        parts: &[PromptPart],
        opts: &GenerateOptions,
        mut on_token: impl FnMut(u32, &str) -> bool,
    ) -> Result<Generation, EngineError> {
        opts.sampling.validate().map_err(EngineError::Sampling)?;
        let d = self.model.hp.n_embd;
        let parts: Vec<PromptPart> = parts.iter().copied().filter(|p| !p.is_empty(d)).collect();
        let prompt_len: usize = parts.iter().map(|p| p.len(d)).sum();
        if prompt_len == 0 {
            return Err(EngineError::EmptyPrompt);
        }
        if prompt_len + opts.max_tokens > self.n_ctx {
            return Err(EngineError::ContextFull {
                prompt: prompt_len,
                generate: opts.max_tokens,
                n_ctx: self.n_ctx,
            });
        }
        let (mut picker, mut out, mut emit) = self.start_generation(&parts, opts);
        let mut top = Vec::with_capacity(opts.logprobs);

        let t0 = Instant::now();
        // The cache's token list describes sequence 0 only while the prompt is all tokens.
        let track = matches!(parts[..], [PromptPart::Tokens(_)]);
        if let [PromptPart::Tokens(prompt)] = parts[..] {
            // Reuse the cached prefix (a chat's history); at least the last token is evaluated.
            let reuse = self.reusable_prefix(prompt);
            self.cached.truncate(reuse);
            if let Err(e) = self.forward_tokens(0, &prompt[reuse..], reuse, false) {
                self.cached.clear();
                return Err(e);
            }
            self.cached.extend_from_slice(&prompt[reuse..]);
        } else {
            self.cached.clear();
            let mut pos = 0;
            for (i, p) in parts.iter().enumerate() {
                let last = i + 1 == parts.len();
                match *p {
                    PromptPart::Tokens(t) => {
                        // Only the last part's last token needs logits.
                        self.forward_tokens(0, t, pos, false)?;
                    }
                    PromptPart::Embeddings(rows) => {
                        self.eval_embeddings(0, rows, pos, last)?;
                    }
                }
                pos += p.len(d);
            }
        }
        out.timings.prompt_tokens = prompt_len;
        out.timings.prompt_time = t0.elapsed();
        let t1 = Instant::now();
        for pos in prompt_len..prompt_len + opts.max_tokens {
            let logits = self.backend.read(self.model.acts.logits, 1)?;
            let id = picker.pick(logits);
            if opts.logprobs > 0 {
                top_logprobs(logits, opts.logprobs, &mut top);
                out.logprobs.push(top.clone());
            }
            let eog_ends = !opts.ignore_eos || picker.grammar_finished();
            if emit.push(&self.tokenizer, eog_ends, opts, &mut out, id, &mut on_token) {
                break;
            }
            if track {
                self.cached.push(id);
            }
            if let Err(e) = self.forward_tokens(0, &[id], pos, false) {
                self.cached.clear();
                return Err(e);
            }
        }
        emit.finish(&mut out);
        out.timings.generation_time = t1.elapsed();
        Ok(out)
    }
}

impl Engine {
    /// What a generation after `parts` starts with: its picker (which has seen the prompt's
    /// tokens), its empty output and its emitter. Shared by plain and speculative generation.
    pub(crate) fn start_generation(
        &self,
        parts: &[PromptPart],
        opts: &GenerateOptions,
    ) -> (Picker, Generation, Emitter) {
        let vocab = self.model.hp.n_vocab;
        let eog = self.tokenizer.eog_ids();
        let mut picker = Picker::new(&opts.sampling, vocab, opts.ignore_eos, eog)
            .with_bias(opts.logit_bias.clone())
            .with_constraint(opts.constraint.clone());
        for p in parts {
            if let PromptPart::Tokens(t) = p {
                for &t in *t {
                    picker.accept(t);
                }
            }
        }
        let mut out = Generation {
            finish_reason: "length",
            ..Generation::default()
        };
        out.tokens.reserve(opts.max_tokens);
        (picker, out, Emitter::new(opts))
    }
}

/// Adds generated tokens to a [`Generation`] as `generate` does: end of generation, text
/// streamed through `on_token` (held back while it may start a stop string, see
/// [`TextStream`]), stop strings, the token limit. Shared by plain and speculative generation.
pub(crate) struct Emitter {
    text: TextStream,
}

impl Emitter {
    pub(crate) fn new(opts: &GenerateOptions) -> Emitter {
        Emitter {
            text: TextStream::new(opts.stop.clone()),
        }
    }

    /// Adds token `id` (an end-of-generation token ends it when `eog_ends`: unless
    /// `opts.ignore_eos`, or once the output's grammar is complete; it is not added).
    /// Returns true when generation is over: EOS, `on_token` returned false (cancelled), a
    /// stop string appeared (the text is cut before it), or `max_tokens`.
    pub(crate) fn push(
        &mut self,
        tok: &Tokenizer,
        eog_ends: bool,
        opts: &GenerateOptions,
        out: &mut Generation,
        id: u32,
        on_token: &mut impl FnMut(u32, &str) -> bool,
    ) -> bool {
        if eog_ends && tok.is_eog(id) {
            out.finish_reason = "eos";
            return true;
        }
        out.tokens.push(id);
        out.timings.generated_tokens += 1;
        let (safe, stopped) = self.text.push(tok, id);
        if !on_token(id, safe) {
            out.finish_reason = "cancelled";
            return true;
        }
        if stopped {
            out.finish_reason = "stop";
            return true;
        }
        out.tokens.len() == opts.max_tokens
    }

    /// Ends the text: after anything but a stop, flushes what the stream still holds (bytes
    /// of an unfinished character, which may complete a stop string). `out.text` is then
    /// the whole text; what `on_token` was not given is the rest of it past what it was.
    pub(crate) fn finish(&mut self, out: &mut Generation) {
        if out.finish_reason != "stop" {
            let (_, hit) = self.text.finish();
            if hit && out.finish_reason != "cancelled" {
                out.finish_reason = "stop";
            }
        }
        out.text.clear();
        out.text.push_str(self.text.text());
    }
}
