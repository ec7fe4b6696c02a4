//! Chat templates: the GGUF's Jinja `tokenizer.chat_template` rendered byte-identical to HF
//! transformers (minijinja + pycompat + HF shims), ChatML when absent, with user-text ranges.

mod pyjson;
mod spans;
mod strftime;

use std::fmt;
use std::ops::Range;

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{from_args, Kwargs, Rest, Serde, Value};
use minijinja::{Environment, Error, ErrorKind, State};
use serde::{Deserialize, Serialize};

/// The roles a message may have.
pub const ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];

/// The metadata key that holds the template.
pub const KEY_CHAT_TEMPLATE: &str = "tokenizer.chat_template";

/// The name the template is compiled under (it appears in error messages).
const TEMPLATE_NAME: &str = "chat_template";

/// What llama.cpp uses when a file has no template: ChatML without a default system prompt.
const CHATML_SOURCE: &str = "{%- for message in messages -%}\n\
    {{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}\n\
    {%- endfor -%}\n\
    {%- if add_generation_prompt -%}\n\
    {{- '<|im_start|>assistant\\n' -}}\n\
    {%- endif -%}\n";

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The text of the message.
    pub content: String,
    /// Other fields the template sees on the message, as the templates expect them:
    /// `tool_calls` (each `{"type": "function", "function": {"name", "arguments"}}` with
    /// the arguments an object), `tool_call_id`, `name`, `reasoning_content`.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Message {
    /// A message with this role and content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
            extra: serde_json::Map::new(),
        }
    }
}

/// What a template sees besides the messages.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RenderOptions {
    /// The tools offered (`[{"type": "function", "function": {...}}]`); None: `tools` is
    /// none.
    pub tools: Option<serde_json::Value>,
    /// More variables (`chat_template_kwargs`, such as `enable_thinking`); they cannot
    /// replace `messages`, `tools` or the others above.
    pub kwargs: serde_json::Map<String, serde_json::Value>,
}

/// Why a template could not be built or rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// A message has a role other than those in [`ROLES`].
    #[error(
        "message {index} has unknown role `{role}` (expected system, user, assistant or tool)"
    )]
    UnknownRole {
        /// Position of the message (0-based).
        index: usize,
        /// The role it had.
        role: String,
    },
    /// The template does not compile.
    #[error("chat template syntax error: {0}")]
    Syntax(String),
    /// The template called `raise_exception(message)`; this is the message.
    #[error("chat template raised an exception: {0}")]
    Raised(String),
    /// Rendering failed for another reason (unknown filter, bad operand, ...).
    #[error("chat template failed to render: {0}")]
    Render(String),
}

/// A prompt rendered from a chat template.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RenderedPrompt {
    /// The prompt text, byte-identical to what HF transformers renders.
    pub text: String,
    /// Byte ranges of `text` that hold text users sent (message contents). The tokenizer encodes
    /// these with special-token parsing OFF, so a message cannot inject `<|im_end|>`; the
    /// template's own markers outside these ranges stay special.
    ///
    /// Sorted, non-overlapping, non-empty, on UTF-8 boundaries. Found by rendering again with
    /// every content wrapped in private-use sentinel characters (placed inside any leading and
    /// trailing whitespace, so `.strip()` keeps them): when the output without sentinels is
    /// byte-identical to `text`, the sentinels give the exact ranges, however often and wherever
    /// the template printed the content (`tojson` escaping included). When a template changes
    /// its output because of the sentinels (it slices the content, tests `startswith`, splits
    /// on `</think>`...), each message is tried alone; a message that still cannot be located
    /// that way is searched for (exact, then trimmed) after the previous message's ranges, and if
    /// its content holds anything that looks like a special token (`<...>`, `[...]`), every
    /// occurrence of those pieces between its neighbours' ranges is marked as well: safe
    /// against injection, at the cost of possibly also marking an identical template marker.
    pub user_spans: Vec<Range<usize>>,
}

/// A compiled chat template.
///
/// Rendering matches `tokenizer.apply_chat_template` (jinja2 `ImmutableSandboxedEnvironment`,
/// `trim_blocks`, `lstrip_blocks`, `loopcontrols`, no trailing newline kept): the template sees
/// `messages`, `add_generation_prompt`, `bos_token`, `eos_token`, and `tools` / `documents` set
/// to none. The HF compatibility layer:
/// - Python string/dict/list methods (`.strip()`, `.startswith()`, `.split()`, `.items()`,
///   `.get()`, ...) through `minijinja_contrib::pycompat`, with Python's `str.title()`;
/// - `raise_exception(msg)` (a [`TemplateError::Raised`]) and `strftime_now(fmt)` (UTC, C locale);
/// - `tojson` as HF defines it: `json.dumps(x, ensure_ascii=False, indent=None,
///   separators=None, sort_keys=False)`, with Python's separators and float formatting;
/// - `{{ x }}` and `x|string` print none, booleans, floats, lists and dicts like Python's `str`;
///   the `iterable` test is false for none, as in jinja2;
/// - `{% generation %}` / `{% endgeneration %}` (HF's assistant-mask extension) render their body;
/// - newlines in the source are normalized as jinja2 does, and `namespace(name=x if c else y)`
///   gets the parentheses minijinja needs.
#[derive(Clone)]
pub struct ChatTemplate {
    source: String,
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    fallback: bool,
}

impl fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source", &self.source)
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("fallback", &self.fallback)
            .finish_non_exhaustive()
    }
}

/// The text of token `key`'s id in `tokenizer.ggml.tokens`, or "" when either is missing.
fn token_text(meta: &gguf::Metadata, key: &str) -> String {
    let Some(id) = meta.get_u32(key) else {
        return String::new();
    };
    match meta.get_array("tokenizer.ggml.tokens") {
        Some(gguf::Array::String(tokens)) => tokens.get(id as usize).cloned().unwrap_or_default(),
        _ => String::new(),
    }
}

impl ChatTemplate {
    /// From `tokenizer.chat_template` in the metadata; ChatML when absent (as llama.cpp does).
    /// `bos_token` / `eos_token` are the texts of `tokenizer.ggml.bos_token_id` /
    /// `eos_token_id` in `tokenizer.ggml.tokens` ("" when missing).
    pub fn from_metadata(meta: &gguf::Metadata) -> Result<ChatTemplate, TemplateError> {
        match meta.get_str(KEY_CHAT_TEMPLATE) {
            Some(source) if !source.trim().is_empty() => {
                let bos = token_text(meta, "tokenizer.ggml.bos_token_id");
                let eos = token_text(meta, "tokenizer.ggml.eos_token_id");
                ChatTemplate::from_source(source, &bos, &eos)
            }
            _ => Ok(ChatTemplate::chatml()),
        }
    }

    /// Compiles `source` (Jinja, as in HF `tokenizer_config.json`).
    pub fn from_source(
        source: &str,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<ChatTemplate, TemplateError> {
        ChatTemplate::build(source, bos_token, eos_token, false)
    }

    /// The built-in ChatML template that files without a template get
    /// (`<|im_start|>{role}\n{content}<|im_end|>\n` per message). [`is_fallback`](Self::is_fallback)
    /// is true for it.
    pub fn chatml() -> ChatTemplate {
        ChatTemplate::build(CHATML_SOURCE, "", "", true)
            .unwrap_or_else(|e| unreachable!("the built-in ChatML template compiles: {e}"))
    }

    fn build(
        source: &str,
        bos_token: &str,
        eos_token: &str,
        fallback: bool,
    ) -> Result<ChatTemplate, TemplateError> {
        let env =
            environment(preprocess(source)).map_err(|e| TemplateError::Syntax(message(&e)))?;
        Ok(ChatTemplate {
            source: source.to_string(),
            env,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
            fallback,
        })
    }

    /// The template's Jinja source, as found in the file (or the built-in ChatML).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// True when the file had no template and the built-in ChatML is used.
    pub fn is_fallback(&self) -> bool {
        self.fallback
    }

    /// The text passed to the template as `bos_token`.
    pub fn bos_token(&self) -> &str {
        &self.bos_token
    }

    /// The text passed to the template as `eos_token`.
    pub fn eos_token(&self) -> &str {
        &self.eos_token
    }

    /// Renders `messages` (checking their roles first); `add_generation_prompt` appends the
    /// header of the assistant's reply.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<RenderedPrompt, TemplateError> {
        self.render_with(messages, add_generation_prompt, &RenderOptions::default())
    }

    /// [`ChatTemplate::render`] with tools and more variables for the template.
    pub fn render_with(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        opts: &RenderOptions,
    ) -> Result<RenderedPrompt, TemplateError> {
        for (index, m) in messages.iter().enumerate() {
            if !ROLES.contains(&m.role.as_str()) {
                return Err(TemplateError::UnknownRole {
                    index,
                    role: m.role.clone(),
                });
            }
        }
        let text = self.render_text(messages, add_generation_prompt, opts)?;
        let user_spans = spans::find(self, messages, add_generation_prompt, opts, &text);
        Ok(RenderedPrompt { text, user_spans })
    }

    /// Renders without looking for user spans.
    fn render_text(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        opts: &RenderOptions,
    ) -> Result<String, TemplateError> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| TemplateError::Syntax(message(&e)))?;
        let ctx = minijinja::context! {
            messages => Value::from(Serde(messages)),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
            tools => opts.tools.as_ref().map_or(Value::from(()), |t| Value::from(Serde(t))),
            documents => Value::from(()),
            ..Value::from(Serde(&opts.kwargs))
        };
        template.render(ctx).map_err(|e| render_error(&e))
    }
}

/// Marks errors made by `raise_exception`.
#[derive(Debug)]
struct Raised;

impl fmt::Display for Raised {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("raised by the template")
    }
}

impl std::error::Error for Raised {}

/// `raise_exception(message)`: fails the render with the template's message.
fn raise_exception(msg: Value) -> Result<Value, Error> {
    let msg = match msg.as_str() {
        Some(s) => s.to_string(),
        None => pyjson::py_str(&msg).unwrap_or_else(|| msg.to_string()),
    };
    Err(Error::new(ErrorKind::InvalidOperation, msg).with_source(Raised))
}

fn strftime_now(format: &str) -> String {
    strftime::DateTime::now().format(format)
}

/// Python's `str(x)` for the `string` filter and for printing.
fn string_filter(value: &Value) -> Value {
    match pyjson::py_str(value) {
        Some(s) => Value::from(s),
        None if value.is_undefined() => Value::from(""),
        None if value.as_str().is_some() => value.clone(),
        None => Value::from(value.to_string()),
    }
}

/// Python methods on values: pycompat's, with `str.title()` as Python has it (pycompat uses
/// jinja2's `title` filter, which only capitalizes after spaces and brackets).
fn unknown_method(
    state: &mut State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, Error> {
    if let (Some(s), "title") = (value.as_str(), method) {
        let () = from_args(args)?;
        return Ok(Value::from(py_title(s)));
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

/// Python's `str.title()`: a cased character is uppercased after an uncased one, else lowercased.
fn py_title(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut prev_cased = false;
    for c in s.chars() {
        if prev_cased {
            out.extend(c.to_lowercase());
        } else {
            out.extend(c.to_uppercase());
        }
        prev_cased = c.is_lowercase() || c.is_uppercase();
    }
    out
}

/// jinja2's `iterable` test: `iter(x)` works. Unlike minijinja's, false for none (templates
/// test `tools is iterable` with `tools=None`); true for undefined, as in jinja2.
fn is_iterable(value: &Value) -> bool {
    use minijinja::value::ValueKind;
    match value.kind() {
        ValueKind::Undefined
        | ValueKind::String
        | ValueKind::Seq
        | ValueKind::Map
        | ValueKind::Iterable => true,
        ValueKind::Plain => value.try_iter().is_ok(),
        _ => false,
    }
}

/// Prints `{{ x }}` like jinja2: Python's `str` for none, booleans, floats, lists and dicts.
fn formatter(out: &mut minijinja::Output, state: &mut State, value: &Value) -> Result<(), Error> {
    match pyjson::py_str(value) {
        Some(s) => minijinja::escape_formatter(out, state, &Value::from(s)),
        None => minijinja::escape_formatter(out, state, value),
    }
}

/// The environment HF's `_compile_jinja_template` builds, with the template added.
fn environment(source: String) -> Result<Environment<'static>, Error> {
    let mut env = Environment::new();
    env.set_syntax(
        SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(false)
            .build()?,
    );
    env.set_unknown_method_callback(unknown_method);
    env.set_formatter(formatter);
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime_now);
    env.add_filter("tojson", |v: &Value, args: Rest<Value>, kwargs: Kwargs| {
        pyjson::tojson_filter(v, args, kwargs)
    });
    env.add_filter("string", string_filter);
    env.add_test("iterable", is_iterable);
    env.add_template_owned(TEMPLATE_NAME, source)?;
    Ok(env)
}

/// Source rewrites that make minijinja accept what jinja2 (with HF's extensions) accepts.
fn preprocess(source: &str) -> String {
    // jinja2 turns every \r\n and \r of the source into \n.
    let mut s = source.replace("\r\n", "\n").replace('\r', "\n");
    // HF's AssistantTracker extension: `{% generation %}...{% endgeneration %}` renders its
    // body. An `if true` block keeps the tags' whitespace control (`-`, `+`, trim/lstrip).
    s = rewrite_tags(&s, "generation", "if true");
    s = rewrite_tags(&s, "endgeneration", "endif");
    // minijinja needs parentheses around a conditional expression used as a keyword argument.
    s.replace(
        "namespace(name=tcid if tcid else '')",
        "namespace(name=(tcid if tcid else ''))",
    )
}

/// Replaces every `{%[-+]? name [-+]?%}` tag with `{%[-+]? replacement [-+]?%}`.
fn rewrite_tags(s: &str, name: &str, replacement: &str) -> String {
    let pattern = format!(r"\{{%([-+]?)\s*{name}\s*([-+]?)%\}}");
    let re = fancy_regex::Regex::new(&pattern).unwrap_or_else(|e| unreachable!("{e}"));
    re.replace_all(s, format!("{{%${{1}} {replacement} ${{2}}%}}").as_str())
        .into_owned()
}

/// The message of an error: its detail and where, without the kind for raised exceptions.
fn message(e: &Error) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.downcast_ref::<Raised>().is_some() {
            break;
        }
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

fn render_error(e: &Error) -> TemplateError {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.downcast_ref::<Raised>().is_some() {
            return TemplateError::Raised(e.detail().unwrap_or_default().to_string());
        }
        // A raise inside a macro or include is wrapped in another minijinja error.
        if let Some(inner) = s.downcast_ref::<Error>() {
            if let TemplateError::Raised(m) = render_error(inner) {
                return TemplateError::Raised(m);
            }
        }
        source = s.source();
    }
    TemplateError::Render(message(e))
}
