//! The HTTP routes: chat and text completions (JSON or SSE), models, health and metrics;
//! requests are validated and tokenized here and handed to the scheduler through a bounded
//! queue.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use tokenizer::{ChatTemplate, Tokenizer};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::api::{parse, ChatRequest, CompletionRequest, Params, Prompt};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::scheduler::{Event, Job, JobImage, TokenLogprob};

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
fn json_response(status: StatusCode, v: &Value) -> Response {
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

/// Which endpoint a generation answers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Completion,
}

async fn chat(State(st): St, b: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let b = body(b)?;
    let req: ChatRequest = parse(&b)?;
    let (messages, images, params) = req.check()?;
    if !images.is_empty() {
        let (prompt, images) = image_prompt(&st, messages, images).await?;
        return generate(st, Kind::Chat, prompt, images, params).await;
    }
    let st2 = st.clone();
    let prompt = tokio::task::spawn_blocking(move || -> Result<Vec<u32>, ApiError> {
        let rendered = st2
            .template
            .render(&messages, true)
            .map_err(|e| ApiError::param("messages", e.to_string()))?;
        Ok(st2.tokenizer.encode_prompt(&rendered, true))
    })
    .await
    .map_err(|e| ApiError::internal(format!("tokenizing failed: {e}")))??;
    generate(st, Kind::Chat, prompt, Vec::new(), params).await
}

/// Decodes and encodes a chat's images and builds its prompt around them, on a blocking
/// thread (the vision tower is CPU work).
async fn image_prompt(
    st: &Arc<AppState>,
    messages: Vec<tokenizer::Message>,
    images: Vec<crate::api::ImageRef>,
) -> Result<(Vec<u32>, Vec<JobImage>), ApiError> {
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
            .render(&messages, true)
            .map_err(|e| ApiError::param("messages", e.to_string()))?;
        crate::image::build_prompt(&st2.tokenizer, &rendered, vision.tokens, vision.n_embd, rows)
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
    generate(st, Kind::Completion, prompt, Vec::new(), params).await
}

/// Queues the job and answers with JSON or an SSE stream.
async fn generate(
    st: Arc<AppState>,
    kind: Kind,
    prompt: Vec<u32>,
    images: Vec<JobImage>,
    p: Params,
) -> Result<Response, ApiError> {
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
    let (tx, rx) = unbounded_channel();
    let prompt_tokens = prompt.len();
    let job = Job {
        prompt,
        images,
        max_tokens,
        sampling: p.sampling,
        stop: p.stop,
        logprobs: p.logprobs,
        ignore_eos: p.ignore_eos,
        constraint: None,
        logit_bias: Vec::new(),
        events: tx,
        received: Instant::now(),
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
    };
    if p.stream {
        Ok(stream(st, meta, rx, p.include_usage))
    } else {
        whole(st, meta, rx, prompt_tokens).await
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

/// Identity of one response.
struct Meta {
    id: String,
    created: u64,
    model: String,
    kind: Kind,
    logprobs: bool,
}

/// Log-probabilities gathered for a response.
#[derive(Default)]
struct Logprobs {
    chat: Vec<Value>,
    tokens: Vec<Value>,
    token_logprobs: Vec<Value>,
    top: Vec<Value>,
    offsets: Vec<Value>,
}

impl Logprobs {
    fn add(&mut self, tok: &Tokenizer, id: u32, lp: &TokenLogprob, offset: usize) {
        let piece = |id: u32| {
            let b = tok.piece(id, false);
            (String::from_utf8_lossy(b).into_owned(), b.to_vec())
        };
        let (text, bytes) = piece(id);
        self.chat.push(json!({
            "token": text,
            "logprob": lp.logprob,
            "bytes": bytes,
            "top_logprobs": lp.top.iter().map(|&(t, l)| {
                let (tt, tb) = piece(t);
                json!({"token": tt, "logprob": l, "bytes": tb})
            }).collect::<Vec<_>>(),
        }));
        self.tokens.push(json!(text));
        self.token_logprobs.push(json!(lp.logprob));
        let mut top = serde_json::Map::new();
        for &(t, l) in &lp.top {
            top.insert(piece(t).0, json!(l));
        }
        self.top.push(Value::Object(top));
        self.offsets.push(json!(offset));
    }

    fn json(&self, kind: Kind) -> Value {
        match kind {
            Kind::Chat => json!({"content": self.chat, "refusal": null}),
            Kind::Completion => json!({
                "tokens": self.tokens,
                "token_logprobs": self.token_logprobs,
                "top_logprobs": self.top,
                "text_offset": self.offsets,
            }),
        }
    }

    fn clear(&mut self) {
        *self = Logprobs::default();
    }
}

fn usage(prompt: usize, completion: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

/// Waits for the whole generation and answers one JSON object.
async fn whole(
    st: Arc<AppState>,
    meta: Meta,
    mut rx: UnboundedReceiver<Event>,
    prompt_tokens: usize,
) -> Result<Response, ApiError> {
    let mut text = String::new();
    let mut lps = Logprobs::default();
    loop {
        match rx.recv().await {
            Some(Event::Token {
                id,
                text: t,
                logprob,
            }) => {
                if let Some(lp) = &logprob {
                    lps.add(&st.tokenizer, id, lp, text.len());
                }
                text.push_str(&t);
            }
            Some(Event::Done {
                text: t,
                finish_reason,
                prompt_tokens,
                completion_tokens,
            }) => {
                text.push_str(&t);
                let lp = if meta.logprobs {
                    lps.json(meta.kind)
                } else {
                    Value::Null
                };
                let choice = match meta.kind {
                    Kind::Chat => json!({
                        "index": 0,
                        "message": {"role": "assistant", "content": text, "refusal": null},
                        "logprobs": lp,
                        "finish_reason": finish_reason,
                    }),
                    Kind::Completion => json!({
                        "index": 0,
                        "text": text,
                        "logprobs": lp,
                        "finish_reason": finish_reason,
                    }),
                };
                let body = json!({
                    "id": meta.id,
                    "object": if meta.kind == Kind::Chat { "chat.completion" } else { "text_completion" },
                    "created": meta.created,
                    "model": meta.model,
                    "system_fingerprint": null,
                    "choices": [choice],
                    "usage": usage(prompt_tokens, completion_tokens),
                });
                return Ok(json_response(StatusCode::OK, &body));
            }
            Some(Event::Error(e)) => return Err(ApiError::internal(e)),
            None => {
                let _ = prompt_tokens;
                return Err(ApiError::unavailable("the scheduler stopped"));
            }
        }
    }
}

/// State of one SSE stream.
struct Streamer {
    st: Arc<AppState>,
    meta: Meta,
    rx: UnboundedReceiver<Event>,
    include_usage: bool,
    pending: VecDeque<String>,
    finished: bool,
    started: bool,
    lps: Logprobs,
    offset: usize,
}

impl Streamer {
    fn chunk(&self, text: &str, finish: Option<&str>, lp: Value) -> String {
        let choice = match self.meta.kind {
            Kind::Chat => {
                let delta = if finish.is_some() && text.is_empty() {
                    json!({})
                } else if !self.started {
                    json!({"role": "assistant", "content": text})
                } else {
                    json!({"content": text})
                };
                json!({"index": 0, "delta": delta, "logprobs": lp, "finish_reason": finish})
            }
            Kind::Completion => {
                json!({"index": 0, "text": text, "logprobs": lp, "finish_reason": finish})
            }
        };
        let mut v = json!({
            "id": self.meta.id,
            "object": if self.meta.kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" },
            "created": self.meta.created,
            "model": self.meta.model,
            "system_fingerprint": null,
            "choices": [choice],
        });
        if self.include_usage {
            v["usage"] = Value::Null;
        }
        v.to_string()
    }

    fn on(&mut self, ev: Option<Event>) {
        match ev {
            Some(Event::Token { id, text, logprob }) => {
                if let Some(lp) = &logprob {
                    self.lps.add(&self.st.tokenizer, id, lp, self.offset);
                }
                self.offset += text.len();
                if text.is_empty() && logprob.is_none() && self.started {
                    return;
                }
                let lp = if self.meta.logprobs {
                    self.lps.json(self.meta.kind)
                } else {
                    Value::Null
                };
                self.lps.clear();
                let c = self.chunk(&text, None, lp);
                self.started = true;
                self.pending.push_back(c);
            }
            Some(Event::Done {
                text,
                finish_reason,
                prompt_tokens,
                completion_tokens,
            }) => {
                if !text.is_empty() || !self.started {
                    let c = self.chunk(&text, None, Value::Null);
                    self.started = true;
                    self.pending.push_back(c);
                }
                let c = self.chunk("", Some(finish_reason), Value::Null);
                self.pending.push_back(c);
                if self.include_usage {
                    let v = json!({
                        "id": self.meta.id,
                        "object": if self.meta.kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" },
                        "created": self.meta.created,
                        "model": self.meta.model,
                        "system_fingerprint": null,
                        "choices": [],
                        "usage": usage(prompt_tokens, completion_tokens),
                    });
                    self.pending.push_back(v.to_string());
                }
                self.pending.push_back("[DONE]".into());
                self.finished = true;
            }
            Some(Event::Error(e)) => {
                self.pending
                    .push_back(ApiError::internal(e).body().to_string());
                self.finished = true;
            }
            None => {
                self.pending.push_back(
                    ApiError::unavailable("the scheduler stopped")
                        .body()
                        .to_string(),
                );
                self.finished = true;
            }
        }
    }
}

/// Answers with server-sent events; dropping the stream (the client left) drops the
/// receiver, which cancels the job in the scheduler.
fn stream(
    st: Arc<AppState>,
    meta: Meta,
    rx: UnboundedReceiver<Event>,
    include_usage: bool,
) -> Response {
    let s = Streamer {
        st,
        meta,
        rx,
        include_usage,
        pending: VecDeque::new(),
        finished: false,
        started: false,
        lps: Logprobs::default(),
        offset: 0,
    };
    let events = futures_util::stream::unfold(s, |mut s| async move {
        loop {
            if let Some(data) = s.pending.pop_front() {
                return Some((Ok::<_, Infallible>(SseEvent::default().data(data)), s));
            }
            if s.finished {
                return None;
            }
            let ev = s.rx.recv().await;
            s.on(ev);
        }
    });
    Sse::new(events).into_response()
}
