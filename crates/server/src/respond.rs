//! Answers built from the scheduler's events: one JSON object, or server-sent events, for
//! one or several choices; chat text split into reasoning, content and tool calls.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use tokenizer::Tokenizer;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::answer::{Answer, AnswerConfig, Delta, Message};
use crate::error::ApiError;
use crate::http::{json_response, AppState};
use crate::scheduler::{Event, TokenLogprob};

/// Which endpoint a generation answers.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    Completion,
}

/// Identity of one response.
pub struct Meta {
    /// `chatcmpl-N` or `cmpl-N`.
    pub id: String,
    /// Seconds since the Unix epoch.
    pub created: u64,
    /// The served model's name.
    pub model: String,
    /// The endpoint.
    pub kind: Kind,
    /// Log-probabilities were asked for.
    pub logprobs: bool,
    /// How chat text is parsed (chat only).
    pub answer: Option<AnswerConfig>,
}

impl Meta {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.kind, chunk) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Completion, _) => "text_completion",
        }
    }
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
        let mut top = Map::new();
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
}

fn usage(prompt: usize, completion: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

/// The events of every choice in one channel, tagged with the choice's index; `None` ends a
/// choice. A forwarder stops (dropping its receiver, which cancels the job) as soon as the
/// merged receiver is gone.
fn merge(rxs: Vec<UnboundedReceiver<Event>>) -> UnboundedReceiver<(usize, Option<Event>)> {
    let (tx, out) = unbounded_channel();
    for (i, rx) in rxs.into_iter().enumerate() {
        tokio::spawn(forward(i, rx, tx.clone()));
    }
    out
}

async fn forward(
    i: usize,
    mut rx: UnboundedReceiver<Event>,
    tx: UnboundedSender<(usize, Option<Event>)>,
) {
    loop {
        tokio::select! {
            ev = rx.recv() => {
                let end = ev.is_none() || matches!(ev, Some(Event::Done { .. } | Event::Error(_)));
                if tx.send((i, ev)).is_err() || end {
                    return;
                }
            }
            () = tx.closed() => return,
        }
    }
}

/// `tool_calls` of a whole message.
fn calls_json(m: &Message) -> Value {
    m.tool_calls
        .iter()
        .map(|c| {
            json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}})
        })
        .collect()
}

/// The finish reason of a choice: `tool_calls` when it ended on its own with calls.
fn finish_reason(reason: &'static str, calls: bool) -> &'static str {
    if calls && reason == "stop" {
        "tool_calls"
    } else {
        reason
    }
}

/// One choice of a whole answer, as it is gathered.
#[derive(Default)]
struct Gathered {
    text: String,
    lps: Logprobs,
    done: Option<(&'static str, usize)>,
}

/// Waits for every choice and answers one JSON object.
pub async fn whole(
    st: Arc<AppState>,
    meta: Meta,
    rxs: Vec<UnboundedReceiver<Event>>,
) -> Result<Response, ApiError> {
    let n = rxs.len();
    let mut rx = merge(rxs);
    let mut got: Vec<Gathered> = (0..n).map(|_| Gathered::default()).collect();
    let mut prompt_tokens = 0;
    let mut left = n;
    while left > 0 {
        let Some((i, ev)) = rx.recv().await else {
            return Err(ApiError::unavailable("the scheduler stopped"));
        };
        let g = &mut got[i];
        match ev {
            Some(Event::Token { id, text, logprob }) => {
                if let Some(lp) = &logprob {
                    g.lps.add(&st.tokenizer, id, lp, g.text.len());
                }
                g.text.push_str(&text);
            }
            Some(Event::Done {
                text,
                finish_reason,
                prompt_tokens: p,
                completion_tokens,
            }) => {
                g.text.push_str(&text);
                g.done = Some((finish_reason, completion_tokens));
                prompt_tokens = p;
                left -= 1;
            }
            Some(Event::Error(e)) => return Err(ApiError::internal(e)),
            None => return Err(ApiError::unavailable("the scheduler stopped")),
        }
    }
    let mut completion = 0;
    let mut choices = Vec::with_capacity(n);
    for (i, g) in got.into_iter().enumerate() {
        let (reason, tokens) = g.done.unwrap_or(("stop", 0));
        completion += tokens;
        let lp = if meta.logprobs {
            g.lps.json(meta.kind)
        } else {
            Value::Null
        };
        choices.push(match (meta.kind, &meta.answer) {
            (Kind::Chat, Some(cfg)) => {
                let m = Answer::parse(cfg.clone(), &g.text);
                let mut msg = json!({"role": "assistant", "content": m.content, "refusal": null});
                if let Some(r) = &m.reasoning {
                    msg["reasoning_content"] = json!(r);
                }
                if !m.tool_calls.is_empty() {
                    msg["tool_calls"] = calls_json(&m);
                }
                json!({
                    "index": i,
                    "message": msg,
                    "logprobs": lp,
                    "finish_reason": finish_reason(reason, !m.tool_calls.is_empty()),
                })
            }
            (Kind::Chat, None) => json!({
                "index": i,
                "message": {"role": "assistant", "content": g.text, "refusal": null},
                "logprobs": lp,
                "finish_reason": reason,
            }),
            (Kind::Completion, _) => json!({
                "index": i,
                "text": g.text,
                "logprobs": lp,
                "finish_reason": reason,
            }),
        });
    }
    let body = json!({
        "id": meta.id,
        "object": meta.object(false),
        "created": meta.created,
        "model": meta.model,
        "system_fingerprint": null,
        "choices": choices,
        "usage": usage(prompt_tokens, completion),
    });
    Ok(json_response(StatusCode::OK, &body))
}

/// One choice of a stream.
struct ChoiceStream {
    answer: Option<Answer>,
    lps: Logprobs,
    offset: usize,
    started: bool,
    calls: bool,
}

/// State of one SSE stream.
struct Streamer {
    st: Arc<AppState>,
    meta: Meta,
    rx: UnboundedReceiver<(usize, Option<Event>)>,
    include_usage: bool,
    pending: VecDeque<String>,
    choices: Vec<ChoiceStream>,
    left: usize,
    finished: bool,
    prompt_tokens: usize,
    completion_tokens: usize,
}

impl Streamer {
    /// A chunk holding `choices`; with `include_usage`, `usage` is null but on the last.
    fn envelope(&self, choices: Value, usage: Option<Value>) -> String {
        let mut v = json!({
            "id": self.meta.id,
            "object": self.meta.object(true),
            "created": self.meta.created,
            "model": self.meta.model,
            "system_fingerprint": null,
            "choices": choices,
        });
        if self.include_usage {
            v["usage"] = usage.unwrap_or(Value::Null);
        }
        v.to_string()
    }

    /// A chunk of choice `i`: its delta (chat) or text, and its finish reason.
    fn chunk(&mut self, i: usize, d: &Delta, finish: Option<&str>, lp: Value) {
        let c = &mut self.choices[i];
        let choice = match self.meta.kind {
            Kind::Chat => {
                let mut delta = Map::new();
                if !c.started {
                    delta.insert("role".into(), json!("assistant"));
                    delta.insert("content".into(), json!(d.content));
                } else if !d.content.is_empty() {
                    delta.insert("content".into(), json!(d.content));
                }
                if !d.reasoning.is_empty() {
                    delta.insert("reasoning_content".into(), json!(d.reasoning));
                }
                if !d.tool_calls.is_empty() {
                    c.calls = true;
                    let calls: Vec<Value> = d
                        .tool_calls
                        .iter()
                        .map(|t| {
                            let mut f = Map::new();
                            if let Some(name) = &t.name {
                                f.insert("name".into(), json!(name));
                            }
                            f.insert("arguments".into(), json!(t.arguments));
                            let mut v = json!({"index": t.index, "function": f});
                            if let Some(id) = &t.id {
                                v["id"] = json!(id);
                                v["type"] = json!("function");
                            }
                            v
                        })
                        .collect();
                    delta.insert("tool_calls".into(), Value::Array(calls));
                }
                json!({"index": i, "delta": delta, "logprobs": lp, "finish_reason": finish})
            }
            Kind::Completion => {
                json!({"index": i, "text": d.content, "logprobs": lp, "finish_reason": finish})
            }
        };
        c.started = true;
        let s = self.envelope(json!([choice]), None);
        self.pending.push_back(s);
    }

    /// What choice `i`'s text adds (chat text goes through its parser).
    fn delta(&mut self, i: usize, text: &str, end: bool) -> Delta {
        let c = &mut self.choices[i];
        match c.answer.as_mut() {
            Some(a) => {
                let mut d = a.push(text);
                if end {
                    let f = a.finish();
                    d.reasoning.push_str(&f.reasoning);
                    d.content.push_str(&f.content);
                    d.tool_calls.extend(f.tool_calls);
                }
                d
            }
            None => Delta {
                content: text.to_string(),
                ..Delta::default()
            },
        }
    }

    fn on(&mut self, ev: Option<(usize, Option<Event>)>) {
        let Some((i, ev)) = ev else {
            self.fail(ApiError::unavailable("the scheduler stopped"));
            return;
        };
        match ev {
            Some(Event::Token { id, text, logprob }) => {
                let offset = self.choices[i].offset;
                if let Some(lp) = &logprob {
                    self.choices[i].lps.add(&self.st.tokenizer, id, lp, offset);
                }
                self.choices[i].offset += text.len();
                let d = self.delta(i, &text, false);
                if d.is_empty() && logprob.is_none() && self.choices[i].started {
                    return;
                }
                let lp = if self.meta.logprobs {
                    let lps = std::mem::take(&mut self.choices[i].lps);
                    lps.json(self.meta.kind)
                } else {
                    Value::Null
                };
                self.chunk(i, &d, None, lp);
            }
            Some(Event::Done {
                text,
                finish_reason: reason,
                prompt_tokens,
                completion_tokens,
            }) => {
                let d = self.delta(i, &text, true);
                if !d.is_empty() || !self.choices[i].started {
                    self.chunk(i, &d, None, Value::Null);
                }
                let reason = finish_reason(reason, self.choices[i].calls);
                self.chunk(i, &Delta::default(), Some(reason), Value::Null);
                self.prompt_tokens = prompt_tokens;
                self.completion_tokens += completion_tokens;
                self.left -= 1;
                if self.left == 0 {
                    if self.include_usage {
                        let u = usage(self.prompt_tokens, self.completion_tokens);
                        let v = self.envelope(json!([]), Some(u));
                        self.pending.push_back(v);
                    }
                    self.pending.push_back("[DONE]".into());
                    self.finished = true;
                }
            }
            Some(Event::Error(e)) => self.fail(ApiError::internal(e)),
            None => self.fail(ApiError::unavailable("the scheduler stopped")),
        }
    }

    fn fail(&mut self, e: ApiError) {
        self.pending.push_back(e.body().to_string());
        self.finished = true;
    }
}

/// Answers with server-sent events; dropping the stream (the client left) drops the
/// receivers, which cancels the jobs in the scheduler.
pub fn stream(
    st: Arc<AppState>,
    meta: Meta,
    rxs: Vec<UnboundedReceiver<Event>>,
    include_usage: bool,
) -> Response {
    let n = rxs.len();
    let choices = (0..n)
        .map(|_| ChoiceStream {
            answer: meta.answer.clone().map(Answer::new),
            lps: Logprobs::default(),
            offset: 0,
            started: false,
            calls: false,
        })
        .collect();
    let s = Streamer {
        st,
        meta,
        rx: merge(rxs),
        include_usage,
        pending: VecDeque::new(),
        choices,
        left: n,
        finished: false,
        prompt_tokens: 0,
        completion_tokens: 0,
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
