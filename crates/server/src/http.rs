//! The HTTP routes: chat and text completions (JSON or SSE), models, health and metrics;
//! requests are validated and tokenized here and handed to the scheduler through a bounded
//! queue.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use constrain::tools::ToolFormat;
use constrain::{Constraint, Vocabulary};
use serde_json::{json, Value};
use tokenizer::{ChatTemplate, RenderOptions, Tokenizer};
use tokio::sync::mpsc::unbounded_channel;

use crate::answer::{self, AnswerConfig};
use crate::api::{parse, ChatRequest, CompletionRequest, Params, Prompt};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::respond::{self, Kind, Meta};
use crate::scheduler::{Job, JobImage, Sibling};
use crate::structured::{self, Tools};

/// Image input: the projector and the model's image tokens.
pub struct Vision {
    /// The loaded vision tower that turns an image into embedding rows.
    pub projector: vision::Projector,
    /// The text model's image begin/end tokens and how image rows attend.
    pub tokens: engine::ImageTokens,
    /// The text model's width (the projector's output width).
    pub n_embd: usize,
    /// Most rows one image may have (the engine's batch).
    pub max_rows: usize,
}

/// What the handlers share.
pub struct AppState {
    /// The bounded queue to the scheduler thread; full means 429.
    pub queue: SyncSender<Job>,
    /// Counters shared with the scheduler and served at `/metrics`.
    pub metrics: Arc<Metrics>,
    /// The model's tokenizer, for prompts and the token texts of log-probabilities.
    pub tokenizer: Arc<Tokenizer>,
    /// The model's chat template, for `/v1/chat/completions`.
    pub template: ChatTemplate,
    /// The model name answered in `/v1/models` and in every completion.
    pub model_id: String,
    /// Context length in tokens: prompt plus answer must fit in it.
    pub n_ctx: usize,
    /// Vocabulary size: token ids in a prompt must be below it.
    pub n_vocab: usize,
    /// When the server started, in seconds since the Unix epoch (the model's `created`).
    pub created: u64,
    /// Image input, when a projector is loaded.
    pub vision: Option<Arc<Vision>>,
    /// `--allow-image-urls`: http(s) image URLs are fetched.
    pub allow_image_urls: bool,
    /// The vocabulary for constrained output (None: the model has no end-of-generation
    /// token, so no grammar can end).
    pub vocab: Option<Vocabulary>,
    /// How the model writes tool calls (None: its template defines no format we parse).
    pub tool_format: Option<ToolFormat>,
    /// The chat template knows `<think>` blocks.
    pub thinks: bool,
    /// Split reasoning into `reasoning_content` by default (`--reasoning-format`).
    pub reasoning: bool,
    /// Sequences the scheduler runs at once (the most answers `n` one request may ask).
    pub n_slots: usize,
    /// The model keeps recurrent state (chat prompts then mark where their turn starts,
    /// for a checkpoint there).
    pub recurrent: bool,
    /// The API keys requests must present (none: the server is open).
    pub api_keys: Arc<crate::auth::ApiKeys>,
}

type St = State<Arc<AppState>>;

/// The router with every route, the body limit, the API-key check and the request counter
/// (outermost, so refused requests are counted too).
pub fn router(state: Arc<AppState>, max_body: usize) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(
            state.api_keys.clone(),
            crate::auth::require_key,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), count))
        .with_state(state)
}

/// Counts every response by route and status.
async fn count(State(st): St, req: Request, next: Next) -> Response {
    let route = match req.uri().path() {
        "/v1/chat/completions" => "/v1/chat/completions",
        "/v1/completions" => "/v1/completions",
        "/v1/models" => "/v1/models",
        "/health" => "/health",
        "/metrics" => "/metrics",
        _ => "other",
    };
    let r = next.run(req).await;
    st.metrics.request(route, r.status().as_u16());
    r
}

async fn not_found() -> ApiError {
    ApiError::invalid("no such route")
        .status(StatusCode::NOT_FOUND)
        .code("not_found")
}

async fn method_not_allowed() -> ApiError {
    ApiError::invalid("method not allowed on this route")
        .status(StatusCode::METHOD_NOT_ALLOWED)
        .code("method_not_allowed")
}

async fn health(State(st): St) -> Response {
    if st.metrics.alive.load(Ordering::Relaxed) {
        json_response(StatusCode::OK, &json!({"status": "ok"}))
    } else {
        ApiError::unavailable("the scheduler is not running").into_response()
    }
}

async fn metrics(State(st): St) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(),
    )
        .into_response()
}

async fn models(State(st): St) -> Response {
    json_response(
        StatusCode::OK,
        &json!({
            "object": "list",
            "data": [{"id": st.model_id, "object": "model", "created": st.created, "owned_by": "surplus"}],
        }),
    )
}

/// A JSON answer.
pub(crate) fn json_response(status: StatusCode, v: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

/// The body bytes, or the rejection (e.g. over the size limit) as an API error.
fn body(b: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    b.map_err(|e| {
        let status = e.status();
        let msg = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "the request body is larger than the server accepts".to_owned()
        } else {
            format!("could not read the request body: {e}")
        };
        ApiError::invalid(msg).status(status)
    })
}

async fn chat(State(st): St, b: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let b = body(b)?;
    let req: ChatRequest = parse(&b)?;
    let chat = req.check(st.n_vocab)?;
    let opts = RenderOptions {
        tools: chat.tools.as_ref().map(|t| t.raw.clone()),
        kwargs: chat.kwargs,
    };
    let mut turn_start = None;
    let ((text, prompt), images) = if chat.images.is_empty() {
        let st2 = st.clone();
        let messages = chat.messages;
        let (r, turn) = tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
            let rendered = st2
                .template
                .render_with(&messages, true, &opts)
                .map_err(|e| ApiError::param("messages", e.to_string()))?;
            let ids = st2.tokenizer.encode_prompt(&rendered, true);
            // A recurrent model saves its state where the conversation so far ends (the
            // next turn's prompt shares it; the generation prompt after it may render
            // differently in history).
            let turn = st2
                .recurrent
                .then(|| st2.template.render_with(&messages, false, &opts).ok())
                .flatten()
                .map(|r| {
                    let before = st2.tokenizer.encode_prompt(&r, true);
                    before.iter().zip(&ids).take_while(|(a, b)| a == b).count()
                });
            Ok(((rendered.text, ids), turn))
        })
        .await
        .map_err(|e| ApiError::internal(format!("tokenizing failed: {e}")))??;
        turn_start = turn;
        (r, Vec::new())
    } else {
        image_prompt(&st, chat.messages, chat.images, opts).await?
    };
    let thinking_open = answer::prompt_opens_thinking(&text);
    let tool_parse = chat
        .tools
        .as_ref()
        .filter(|t| t.mode.is_some())
        .and_then(|t| st.tool_format.map(|f| (f, t.specs.clone())));
    let reasoning = chat.reasoning.unwrap_or(st.reasoning) && (st.thinks || thinking_open);
    let answer = AnswerConfig {
        reasoning,
        thinking_open: reasoning && thinking_open,
        tools: tool_parse,
    };
    let constraint = compile(&st, chat.tools, &chat.params, thinking_open).await?;
    let req = Generation {
        kind: Kind::Chat,
        prompt,
        images,
        params: chat.params,
        constraint,
        answer: Some(answer),
        turn_start,
    };
    generate(st, req).await
}

/// Compiles a request's constraint (tool calls or output grammar) on a blocking thread.
async fn compile(
    st: &Arc<AppState>,
    tools: Option<Tools>,
    p: &Params,
    thinking_open: bool,
) -> Result<Option<Constraint>, ApiError> {
    let calls = tools.as_ref().is_some_and(|t| t.mode.is_some());
    if !calls && p.output.is_none() {
        return Ok(None);
    }
    let Some(vocab) = st.vocab.clone() else {
        return Err(ApiError::invalid(
            "this model's vocabulary cannot be used for constrained output (it has no end-of-generation token)",
        )
        .code("unsupported_parameter"));
    };
    let (format, output) = (st.tool_format, p.output.clone());
    tokio::task::spawn_blocking(move || {
        structured::constraint(
            &vocab,
            format,
            tools.as_ref(),
            output.as_ref(),
            thinking_open,
        )
    })
    .await
    .map_err(|e| ApiError::internal(format!("compiling the grammar failed: {e}")))?
}

/// Decodes and encodes a chat's images and builds its prompt around them, on a blocking
/// thread (the vision tower is CPU work). Returns the rendered text and the prompt.
async fn image_prompt(
    st: &Arc<AppState>,
    messages: Vec<tokenizer::Message>,
    images: Vec<crate::api::ImageRef>,
    opts: RenderOptions,
) -> Result<((String, Vec<u32>), Vec<JobImage>), ApiError> {
    let Some(vision) = st.vision.clone() else {
        return Err(ApiError::param(
            &images[0].param,
            "this server has no vision projector loaded (start it with --mmproj FILE) and cannot take images",
        )
        .code("unsupported_parameter"));
    };
    let st2 = st.clone();
    tokio::task::spawn_blocking(move || {
        // Fetching a URL blocks: here, off the async runtime.
        let files = images
            .iter()
            .map(|im| crate::image::image_bytes(&im.url, &im.param, st2.allow_image_urls))
            .collect::<Result<Vec<_>, _>>()?;
        let limits = vision::DecodeLimits::default();
        let mut rows = Vec::with_capacity(files.len());
        for (bytes, im) in files.iter().zip(&images) {
            let bad = |e: vision::VisionError| {
                ApiError::param(&im.param, format!("the image could not be used: {e}"))
                    .code("invalid_image")
            };
            let img = vision::decode(bytes, &limits).map_err(bad)?;
            let e = vision.projector.embed(&img).map_err(bad)?;
            if e.n_embd != vision.n_embd || e.n_tokens == 0 || e.n_tokens > vision.max_rows {
                return Err(ApiError::param(
                    &im.param,
                    format!(
                        "the image makes {} rows of {} values; the model takes at most {} rows of {}",
                        e.n_tokens, e.n_embd, vision.max_rows, vision.n_embd
                    ),
                )
                .code("invalid_image"));
            }
            rows.push(e);
        }
        let rendered = st2
            .template
            .render_with(&messages, true, &opts)
            .map_err(|e| ApiError::param("messages", e.to_string()))?;
        let (prompt, images) = crate::image::build_prompt(
            &st2.tokenizer,
            &rendered,
            vision.tokens,
            vision.n_embd,
            rows,
        )?;
        Ok(((rendered.text, prompt), images))
    })
    .await
    .map_err(|e| ApiError::internal(format!("encoding the images failed: {e}")))?
}

async fn completions(
    State(st): St,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let b = body(b)?;
    let req: CompletionRequest = parse(&b)?;
    let (prompt, params) = req.check(st.n_vocab)?;
    let prompt = match prompt {
        Prompt::Tokens(t) => t,
        Prompt::Text(text) => {
            let st2 = st.clone();
            tokio::task::spawn_blocking(move || st2.tokenizer.encode(&text, true, true))
                .await
                .map_err(|e| ApiError::internal(format!("tokenizing failed: {e}")))?
        }
    };
    let constraint = compile(&st, None, &params, false).await?;
    let req = Generation {
        kind: Kind::Completion,
        prompt,
        images: Vec::new(),
        params,
        constraint,
        answer: None,
        turn_start: None,
    };
    generate(st, req).await
}

/// A generation to queue: the prompt and everything that shapes the answer.
struct Generation {
    kind: Kind,
    prompt: Vec<u32>,
    images: Vec<JobImage>,
    params: Params,
    constraint: Option<Constraint>,
    answer: Option<AnswerConfig>,
    /// Where the chat's generation prompt starts (see [`Job::turn_start`]).
    turn_start: Option<usize>,
}

/// Queues the job (one per choice) and answers with JSON or an SSE stream.
async fn generate(st: Arc<AppState>, g: Generation) -> Result<Response, ApiError> {
    let Generation {
        kind,
        prompt,
        images,
        params: p,
        constraint,
        answer,
        turn_start,
    } = g;
    if prompt.is_empty() {
        return Err(ApiError::param("prompt", "the prompt is empty (no tokens)"));
    }
    let n_ctx = st.n_ctx;
    if prompt.len() >= n_ctx {
        return Err(ApiError::param(
            if kind == Kind::Chat {
                "messages"
            } else {
                "prompt"
            },
            format!(
                "this model's maximum context length is {n_ctx} tokens; the prompt has {} tokens",
                prompt.len()
            ),
        )
        .code("context_length_exceeded"));
    }
    let max_tokens = match p.max_tokens {
        None => n_ctx - prompt.len(),
        Some(m) if m > n_ctx - prompt.len() => {
            return Err(ApiError::param(
                "max_tokens",
                format!(
                    "this model's maximum context length is {n_ctx} tokens; the prompt has {} tokens and max_tokens is {m}",
                    prompt.len()
                ),
            )
            .code("context_length_exceeded"))
        }
        Some(m) => m,
    };
    if p.n > st.n_slots {
        return Err(ApiError::param(
            "n",
            format!(
                "n is {}, but this server answers at most {} sequences at once (its --parallel)",
                p.n, st.n_slots
            ),
        ));
    }
    let mut rxs = Vec::with_capacity(p.n);
    let (tx, rx) = unbounded_channel();
    rxs.push(rx);
    // Each answer samples on its own; the first is what n = 1 gives.
    let siblings = (1..p.n)
        .map(|i| {
            let (tx, rx) = unbounded_channel();
            rxs.push(rx);
            let mut sampling = p.sampling.clone();
            sampling.seed = sampling.seed.wrapping_add(i as u64);
            Sibling {
                sampling,
                constraint: constraint.clone(),
                events: tx,
            }
        })
        .collect();
    let job = Job {
        prompt,
        images,
        max_tokens,
        sampling: p.sampling.clone(),
        stop: p.stop.clone(),
        logprobs: p.logprobs,
        ignore_eos: p.ignore_eos,
        constraint,
        logit_bias: p.logit_bias.clone(),
        events: tx,
        received: Instant::now(),
        siblings,
        turn_start,
    };
    submit(&st, job)?;
    let meta = Meta {
        id: format!(
            "{}-{}",
            if kind == Kind::Chat {
                "chatcmpl"
            } else {
                "cmpl"
            },
            next_id()
        ),
        created: now(),
        model: st.model_id.clone(),
        kind,
        logprobs: p.logprobs.is_some(),
        answer,
    };
    if p.stream {
        Ok(respond::stream(st, meta, rxs, p.include_usage))
    } else {
        respond::whole(st, meta, rxs).await
    }
}

/// Hands a job to the scheduler without waiting: a full queue is a 429.
fn submit(st: &AppState, job: Job) -> Result<(), ApiError> {
    if !st.metrics.alive.load(Ordering::Relaxed) {
        return Err(ApiError::unavailable("the scheduler is not running"));
    }
    st.metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
    match st.queue.try_send(job) {
        Ok(()) => Ok(()),
        Err(TrySendError::Full(_)) => {
            st.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
            Err(ApiError::overloaded(1))
        }
        Err(TrySendError::Disconnected(_)) => {
            st.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
            Err(ApiError::unavailable("the scheduler is not running"))
        }
    }
}

fn next_id() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    N.fetch_add(1, Ordering::Relaxed)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
