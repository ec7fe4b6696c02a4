//! Request bodies of `/v1/chat/completions` and `/v1/completions`: parsed from JSON with a
//! check of every field, unsupported ones ignored as OpenAI clients expect or refused.

use engine::sampling::SamplingParams;
use serde::Deserialize;
use serde_json::{Map, Value};
use tokenizer::Message;

use crate::error::ApiError;
use crate::structured::{self, OutputGrammar, Tools};

/// Most stop strings per request.
const MAX_STOP: usize = 16;
/// Longest stop string, in bytes (the scheduler scans for them after every token).
const MAX_STOP_BYTES: usize = 256;
/// Most top log-probabilities per token.
pub const MAX_TOP_LOGPROBS: usize = 20;
/// Most choices per request (`n`).
pub const MAX_N: usize = 8;

/// Fields shared by both endpoints.
#[derive(Deserialize, Default)]
#[serde(default)]
pub struct Common {
    /// The model name; must be a string when given, otherwise ignored (one model is served).
    pub model: Option<Value>,
    /// Most tokens to generate, at least 1; `None`: up to the end of the context (chat) or
    /// 16 (completions).
    pub max_tokens: Option<i64>,
    /// Sampling temperature in [0, 2], 0 meaning greedy; `None`: 1.
    pub temperature: Option<f64>,
    /// Nucleus sampling mass in (0, 1]; `None`: 1 (off).
    pub top_p: Option<f64>,
    /// A stop string or an array of at most 16, each at most 256 bytes.
    pub stop: Option<Value>,
    /// Sampling seed (a negative one is taken as its two's-complement `u64`); `None`: drawn
    /// from the clock.
    pub seed: Option<i64>,
    /// In [-2, 2], subtracted once from the logit of each token in the penalty window (the
    /// last 64 tokens); `None`: 0 (off).
    pub presence_penalty: Option<f64>,
    /// In [-2, 2], subtracted from a token's logit once per time it occurs in the penalty
    /// window; `None`: 0 (off).
    pub frequency_penalty: Option<f64>,
    /// Whether to answer with server-sent events as the text is generated; `None`: false.
    pub stream: Option<bool>,
    /// Options of a streamed answer; ignored unless `stream` is true.
    pub stream_options: Option<StreamOptions>,
    /// Number of choices, 1 to [`MAX_N`]; they share the prompt's evaluation.
    pub n: Option<i64>,
    /// The end user's identifier; accepted and ignored.
    pub user: Option<Value>,
    /// Per-token logit offsets: token ids (as strings) to a bias in [-100, 100].
    pub logit_bias: Option<Map<String, Value>>,
    /// The output as JSON (`{"type": "json_object"}`, or `json_schema` with a schema).
    pub response_format: Option<Value>,
    /// Extension (llama.cpp's): a grammar the output must match, GBNF or Lark.
    pub grammar: Option<Value>,
    /// Extension (llama.cpp's): a JSON schema the output must match.
    pub json_schema: Option<Value>,
    // Extensions (llama.cpp names).
    /// Keep only the `k` most likely tokens, in [0, 1000000], 0 meaning off; `None`: off.
    pub top_k: Option<i64>,
    /// Drop tokens less likely than `min_p` times the most likely one, in [0, 1]; `None`: 0
    /// (off).
    pub min_p: Option<f64>,
    /// In (0, 10]: positive logits of the tokens in the penalty window are divided by it,
    /// negative ones multiplied; `None`: 1 (off).
    pub repeat_penalty: Option<f64>,
    /// Never pick an end-of-generation token (generate until `max_tokens` or a stop string);
    /// `None`: false.
    pub ignore_eos: Option<bool>,
}

/// `stream_options`.
#[derive(Deserialize, Default)]
#[serde(default)]
pub struct StreamOptions {
    /// Whether a last event carries the token counts (`usage`); `None`: false.
    pub include_usage: Option<bool>,
}

/// `POST /v1/chat/completions`.
#[derive(Deserialize)]
pub struct ChatRequest {
    /// The conversation: a non-empty array of `{role, content}` objects, checked by
    /// [`ChatRequest::check`].
    pub messages: Value,
    /// OpenAI's newer name for `max_tokens`; wins over it when both are given.
    pub max_completion_tokens: Option<i64>,
    /// Whether to return the log-probability of each generated token.
    pub logprobs: Option<bool>,
    /// How many most likely alternatives to return per token, in [0, 20]; needs `logprobs`.
    pub top_logprobs: Option<i64>,
    /// The functions the model may call.
    pub tools: Option<Value>,
    /// `none`, `auto` (the default with tools), `required`, or one named function.
    pub tool_choice: Option<Value>,
    /// Whether several calls may be made in one answer; `None`: true.
    pub parallel_tool_calls: Option<Value>,
    /// More variables for the chat template (such as `{"enable_thinking": false}`).
    pub chat_template_kwargs: Option<Map<String, Value>>,
    /// Extension (llama.cpp's): `none` keeps the reasoning in `content`; `auto` or
    /// `deepseek` split it into `reasoning_content` (the server's default).
    pub reasoning_format: Option<String>,
    /// The fields both endpoints share.
    #[serde(flatten)]
    pub common: Common,
    /// Every other field: refused, except a few that OpenAI clients send and that are
    /// harmless to ignore.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `POST /v1/completions`.
#[derive(Deserialize)]
pub struct CompletionRequest {
    /// A string, an array of token ids, or a one-element array of either.
    pub prompt: Value,
    /// How many most likely alternatives to return per token, in [0, 20]; when given, the
    /// log-probability of each generated token is returned too.
    pub logprobs: Option<i64>,
    /// Echo the prompt back; only false is accepted.
    pub echo: Option<bool>,
    /// Candidates to generate server-side; only 1 is accepted.
    pub best_of: Option<i64>,
    /// Text after the completion (fill-in-the-middle); only null is accepted.
    pub suffix: Option<Value>,
    /// The fields both endpoints share.
    #[serde(flatten)]
    pub common: Common,
    /// Every other field: refused, except a few that OpenAI clients send and that are
    /// harmless to ignore.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// What a request asks for, checked (the prompt still to be tokenized).
pub struct Params {
    /// Most tokens to generate, at least 1; `None`: up to the end of the context.
    pub max_tokens: Option<usize>,
    /// Temperature, top-k/p, min-p, penalties and seed, validated.
    pub sampling: SamplingParams,
    /// Strings that end the answer when generated (not included in it); at most 16.
    pub stop: Vec<String>,
    /// `None`: no log-probabilities; `Some(k)`: each token's, with its `k` (0 to 20) most
    /// likely alternatives.
    pub logprobs: Option<usize>,
    /// Answer with server-sent events.
    pub stream: bool,
    /// Streamed answers end with an event carrying the token counts.
    pub include_usage: bool,
    /// End-of-generation tokens are never picked.
    pub ignore_eos: bool,
    /// Choices to generate (1 to [`MAX_N`]), each sampled on its own after the prompt.
    pub n: usize,
    /// Added to these tokens' logits before each pick.
    pub logit_bias: Vec<(u32, f32)>,
    /// What the output must match (`response_format`, `grammar` or `json_schema`).
    pub output: Option<OutputGrammar>,
}

/// A checked chat request.
pub struct Chat {
    /// The messages, each image replaced by [`crate::image::MARKER`] in its text.
    pub messages: Vec<Message>,
    /// The images' URLs.
    pub images: Vec<ImageRef>,
    /// The generation parameters.
    pub params: Params,
    /// The tools offered, if any.
    pub tools: Option<Tools>,
    /// More variables for the template.
    pub kwargs: Map<String, Value>,
    /// `Some(false)`: the request asked for the reasoning in `content`.
    pub reasoning: Option<bool>,
}

/// A completion prompt: text or token ids.
pub enum Prompt {
    /// Text, to be tokenized.
    Text(String),
    /// Token ids, each below the vocabulary size.
    Tokens(Vec<u32>),
}

/// Parses a JSON body into `T`, with OpenAI-style errors.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("the body is not valid JSON: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::invalid("the body must be a JSON object"));
    }
    serde_json::from_value(v).map_err(|e| ApiError::invalid(format!("invalid request: {e}")))
}

/// Refuses fields we do not know, ignoring those OpenAI's clients commonly send.
fn check_extra(extra: &Map<String, Value>) -> Result<(), ApiError> {
    for (k, v) in extra {
        let ok = match k.as_str() {
            "store" | "metadata" | "service_tier" => true,
            "functions" => v.is_null() || v.as_array().is_some_and(|a| a.is_empty()),
            "function_call" => v.is_null() || v == "none",
            "modalities" => {
                v.is_null() || v.as_array().is_some_and(|a| a.iter().all(|m| m == "text"))
            }
            _ => {
                return Err(ApiError::param(
                    k,
                    format!("unrecognized request argument supplied: {k}"),
                ))
            }
        };
        if !ok {
            return Err(
                ApiError::param(k, format!("`{k}` is not supported by this server"))
                    .code("unsupported_parameter"),
            );
        }
    }
    Ok(())
}

fn check_common(c: &Common, max_tokens: Option<i64>, n_vocab: usize) -> Result<Params, ApiError> {
    if let Some(m) = &c.model {
        if !m.is_string() {
            return Err(ApiError::param("model", "model must be a string"));
        }
    }
    let n = c.n.unwrap_or(1);
    if !(1..=MAX_N as i64).contains(&n) {
        return Err(ApiError::param(
            "n",
            format!("n must be in [1, {MAX_N}], got {n}"),
        ));
    }
    let logit_bias = structured::logit_bias(c.logit_bias.as_ref(), n_vocab)?;
    let output = structured::one_grammar([
        structured::response_format(c.response_format.as_ref())?,
        structured::grammar(c.grammar.as_ref())?,
        structured::json_schema(c.json_schema.as_ref())?,
    ])?;
    let max_tokens = match max_tokens {
        None => None,
        Some(n) if n < 1 => {
            return Err(ApiError::param(
                "max_tokens",
                format!("max_tokens must be at least 1, got {n}"),
            ))
        }
        Some(n) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
    };
    let mut s = SamplingParams {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        repeat_penalty: 1.0,
        ..SamplingParams::default()
    };
    if let Some(t) = c.temperature {
        if !(0.0..=2.0).contains(&t) {
            return Err(ApiError::param(
                "temperature",
                format!("temperature must be in [0, 2], got {t}"),
            ));
        }
        s.temperature = t as f32;
    }
    if let Some(p) = c.top_p {
        if !(p > 0.0 && p <= 1.0) {
            return Err(ApiError::param(
                "top_p",
                format!("top_p must be in (0, 1], got {p}"),
            ));
        }
        s.top_p = p as f32;
    }
    for (name, v, dst) in [
        (
            "presence_penalty",
            c.presence_penalty,
            &mut s.presence_penalty,
        ),
        (
            "frequency_penalty",
            c.frequency_penalty,
            &mut s.frequency_penalty,
        ),
    ] {
        if let Some(v) = v {
            if !(-2.0..=2.0).contains(&v) {
                return Err(ApiError::param(
                    name,
                    format!("{name} must be in [-2, 2], got {v}"),
                ));
            }
            *dst = v as f32;
        }
    }
    if let Some(k) = c.top_k {
        if !(0..=1_000_000).contains(&k) {
            return Err(ApiError::param(
                "top_k",
                format!("top_k must be in [0, 1000000], got {k}"),
            ));
        }
        s.top_k = k as usize;
    }
    if let Some(m) = c.min_p {
        s.min_p = m as f32;
    }
    if let Some(r) = c.repeat_penalty {
        if !(r > 0.0 && r <= 10.0) {
            return Err(ApiError::param(
                "repeat_penalty",
                format!("repeat_penalty must be in (0, 10], got {r}"),
            ));
        }
        s.repeat_penalty = r as f32;
    }
    if let Some(seed) = c.seed {
        s.seed = seed as u64;
    }
    s.validate().map_err(ApiError::invalid)?;
    let stop = match &c.stop {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(x)) => vec![x.clone()],
        Some(Value::Array(a)) => {
            if a.len() > MAX_STOP {
                return Err(ApiError::param(
                    "stop",
                    format!(
                        "at most {MAX_STOP} stop strings are allowed, got {}",
                        a.len()
                    ),
                ));
            }
            a.iter()
                .map(|v| {
                    v.as_str().map(str::to_owned).ok_or_else(|| {
                        ApiError::param("stop", "stop must be a string or an array of strings")
                    })
                })
                .collect::<Result<_, _>>()?
        }
        Some(_) => {
            return Err(ApiError::param(
                "stop",
                "stop must be a string or an array of strings",
            ))
        }
    };
    if let Some(long) = stop.iter().find(|s| s.len() > MAX_STOP_BYTES) {
        return Err(ApiError::param(
            "stop",
            format!(
                "stop strings must be at most {MAX_STOP_BYTES} bytes, got one of {}",
                long.len()
            ),
        ));
    }
    let stream = c.stream.unwrap_or(false);
    Ok(Params {
        max_tokens,
        sampling: s,
        stop,
        logprobs: None,
        stream,
        include_usage: stream
            && c.stream_options
                .as_ref()
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
        ignore_eos: c.ignore_eos.unwrap_or(false),
        n: n as usize,
        logit_bias,
        output,
    })
}

impl ChatRequest {
    /// Checks the fields; returns the messages (each image replaced by
    /// [`crate::image::MARKER`] in its text), the images' URLs and the parameters.
    pub fn check(&self, n_vocab: usize) -> Result<Chat, ApiError> {
        check_extra(&self.extra)?;
        let max = self.max_completion_tokens.or(self.common.max_tokens);
        let mut p = check_common(&self.common, max, n_vocab)?;
        let tools = structured::tools(
            self.tools.as_ref(),
            self.tool_choice.as_ref(),
            self.parallel_tool_calls.as_ref(),
        )?;
        let reasoning = match self.reasoning_format.as_deref() {
            None => None,
            Some("none") => Some(false),
            Some("auto" | "deepseek" | "deepseek-legacy") => Some(true),
            Some(other) => {
                return Err(ApiError::param(
                    "reasoning_format",
                    format!("reasoning_format `{other}` is not one of none, auto, deepseek"),
                ))
            }
        };
        if self.logprobs == Some(true) {
            let k = self.top_logprobs.unwrap_or(0);
            if !(0..=MAX_TOP_LOGPROBS as i64).contains(&k) {
                return Err(ApiError::param(
                    "top_logprobs",
                    format!("top_logprobs must be in [0, {MAX_TOP_LOGPROBS}], got {k}"),
                ));
            }
            p.logprobs = Some(k as usize);
        } else if self.top_logprobs.is_some_and(|k| k > 0) {
            return Err(ApiError::param(
                "top_logprobs",
                "top_logprobs requires logprobs to be true",
            ));
        }
        let (messages, images) = messages(&self.messages)?;
        Ok(Chat {
            messages,
            images,
            params: p,
            tools,
            kwargs: self.chat_template_kwargs.clone().unwrap_or_default(),
            reasoning,
        })
    }
}

/// An image of a chat request: its `url` and the parameter that named it (for errors).
pub struct ImageRef {
    /// The URL as sent: a base64 `data:` URL, or an http(s) URL where the server allows
    /// them (see [`crate::image`]).
    pub url: String,
    /// Where it was in the request, such as `messages[1].content[0]`.
    pub param: String,
}

/// Reads an `image_url` content part's URL (`{"url": ...}` or, as some clients send, a
/// string).
fn image_url(part: &Value, param: &str) -> Result<String, ApiError> {
    let url = match part.get("image_url") {
        Some(Value::String(u)) => Some(u),
        Some(Value::Object(o)) => match o.get("url") {
            Some(Value::String(u)) => Some(u),
            _ => None,
        },
        _ => None,
    };
    url.cloned().ok_or_else(|| {
        ApiError::param(
            param,
            format!("{param}: an image part must be {{\"type\": \"image_url\", \"image_url\": {{\"url\": string}}}}"),
        )
    })
}

/// Reads `messages`: role and content (a string, or text and image parts; each image is
/// [`crate::image::MARKER`] in the text).
fn messages(v: &Value) -> Result<(Vec<Message>, Vec<ImageRef>), ApiError> {
    let arr = v
        .as_array()
        .ok_or_else(|| ApiError::param("messages", "messages must be an array"))?;
    if arr.is_empty() {
        return Err(ApiError::param("messages", "messages must not be empty"));
    }
    let mut out = Vec::with_capacity(arr.len());
    let mut images = Vec::new();
    for (i, m) in arr.iter().enumerate() {
        let param = format!("messages[{i}]");
        let obj = m
            .as_object()
            .ok_or_else(|| ApiError::param(&param, format!("{param} must be an object")))?;
        let role = obj
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::param(&param, format!("{param}.role must be a string")))?;
        let role = match role {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            "tool" => "tool",
            other => {
                return Err(ApiError::param(
                    &param,
                    format!("{param} has unknown role `{other}` (expected system, developer, user, assistant or tool)"),
                ))
            }
        };
        let mut extra = Map::new();
        for (k, v) in obj {
            match k.as_str() {
                "role" | "content" | "refusal" => {}
                "name" | "tool_call_id" | "reasoning_content" => {
                    if !(v.is_string() || v.is_null()) {
                        return Err(ApiError::param(
                            &param,
                            format!("{param}.{k} must be a string"),
                        ));
                    }
                    if v.is_string() {
                        extra.insert(k.clone(), v.clone());
                    }
                }
                "tool_calls" if !v.is_null() => {
                    if role != "assistant" {
                        return Err(ApiError::param(
                            &param,
                            format!("{param}.tool_calls is only allowed on assistant messages"),
                        ));
                    }
                    extra.insert(k.clone(), structured::assistant_tool_calls(v, &param)?);
                }
                "tool_calls" => {}
                "function_call" | "audio" => {
                    if !v.is_null() {
                        return Err(ApiError::param(
                            &param,
                            format!("{param}.{k} is not supported by this server"),
                        )
                        .code("unsupported_parameter"));
                    }
                }
                other => {
                    return Err(ApiError::param(
                        &param,
                        format!("{param} has an unrecognized field `{other}`"),
                    ))
                }
            }
        }
        let content = match obj.get("content") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => {
                let mut s = String::new();
                for (j, part) in parts.iter().enumerate() {
                    let text = match (part.get("type").and_then(Value::as_str), part.get("text")) {
                        (Some("text"), Some(Value::String(t))) => t,
                        (Some("image_url"), _) => {
                            let p = format!("{param}.content[{j}]");
                            if images.len() == crate::image::MAX_IMAGES {
                                return Err(ApiError::param(
                                    &p,
                                    format!("at most {} images per request are supported", crate::image::MAX_IMAGES),
                                ));
                            }
                            images.push(ImageRef {
                                url: image_url(part, &p)?,
                                param: p,
                            });
                            s.push_str(crate::image::MARKER);
                            continue;
                        }
                        (Some(t), _) if t != "text" => {
                            return Err(ApiError::param(
                                &param,
                                format!("{param}: content parts of type `{t}` are not supported (text and image_url only)"),
                            )
                            .code("unsupported_parameter"))
                        }
                        _ => {
                            return Err(ApiError::param(
                                &param,
                                format!("{param}: a content part must be {{\"type\": \"text\", \"text\": string}}"),
                            ))
                        }
                    };
                    s.push_str(text);
                }
                s
            }
            Some(_) => {
                return Err(ApiError::param(
                    &param,
                    format!("{param}.content must be a string or an array of text parts"),
                ))
            }
        };
        let mut m = Message::new(role, content);
        m.extra = extra;
        out.push(m);
    }
    if !images.is_empty() {
        // Only the image parts may hold the marker.
        let markers: usize = out
            .iter()
            .map(|m| m.content.matches(crate::image::MARKER).count())
            .sum();
        if markers != images.len() {
            return Err(ApiError::param(
                "messages",
                "with images, message text may not contain U+FFFC (the object replacement character)",
            ));
        }
    }
    Ok((out, images))
}

impl CompletionRequest {
    /// Checks the fields; returns the prompt and the parameters.
    pub fn check(&self, n_vocab: usize) -> Result<(Prompt, Params), ApiError> {
        check_extra(&self.extra)?;
        if self.echo == Some(true) {
            return Err(
                ApiError::param("echo", "echo is not supported").code("unsupported_parameter")
            );
        }
        if self.best_of.is_some_and(|b| b != 1) {
            return Err(
                ApiError::param("best_of", "best_of must be 1").code("unsupported_parameter")
            );
        }
        if self.suffix.as_ref().is_some_and(|s| !s.is_null()) {
            return Err(
                ApiError::param("suffix", "suffix is not supported").code("unsupported_parameter")
            );
        }
        let mut p = check_common(&self.common, self.common.max_tokens, n_vocab)?;
        if p.max_tokens.is_none() {
            p.max_tokens = Some(16); // OpenAI's default for completions
        }
        if let Some(k) = self.logprobs {
            if !(0..=MAX_TOP_LOGPROBS as i64).contains(&k) {
                return Err(ApiError::param(
                    "logprobs",
                    format!("logprobs must be in [0, {MAX_TOP_LOGPROBS}], got {k}"),
                ));
            }
            p.logprobs = Some(k as usize);
        }
        Ok((prompt(&self.prompt, n_vocab)?, p))
    }
}

/// Reads `prompt`: a string, token ids, or a one-element array of either.
fn prompt(v: &Value, n_vocab: usize) -> Result<Prompt, ApiError> {
    let bad = || {
        ApiError::param(
            "prompt",
            "prompt must be a string, an array of token ids, or a one-element array of either",
        )
    };
    match v {
        Value::String(s) => Ok(Prompt::Text(s.clone())),
        Value::Array(a) if a.is_empty() => {
            Err(ApiError::param("prompt", "prompt must not be empty"))
        }
        Value::Array(a) if a.len() == 1 && (a[0].is_string() || a[0].is_array()) => {
            prompt(&a[0], n_vocab)
        }
        Value::Array(a) if a.iter().all(Value::is_number) => {
            let ids = a
                .iter()
                .map(|x| {
                    x.as_u64()
                        .filter(|&id| (id as usize) < n_vocab)
                        .map(|id| id as u32)
                        .ok_or_else(|| {
                            ApiError::param(
                                "prompt",
                                format!("token ids must be integers in [0, {n_vocab}), got {x}"),
                            )
                        })
                })
                .collect::<Result<Vec<u32>, _>>()?;
            Ok(Prompt::Tokens(ids))
        }
        Value::Array(a) if a.len() > 1 && a.iter().all(|x| x.is_string() || x.is_array()) => {
            Err(ApiError::param(
                "prompt",
                "only one prompt per request is supported (batch prompts are not)",
            )
            .code("unsupported_parameter"))
        }
        _ => Err(bad()),
    }
}
