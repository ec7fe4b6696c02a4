//! The chat answer's parsers: split generated text, as it streams in, into reasoning
//! (`<think>…</think>`), content and tool calls (Hermes JSON or Qwen XML blocks).

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;

const THINK_OPEN: &str = "<think>";
const THINK_CLOSE: &str = "</think>";
const CALL_OPEN: &str = "<tool_call>";
const CALL_CLOSE: &str = "</tool_call>";
const FUNCTION_OPEN: &str = "<function=";
const FUNCTION_CLOSE: &str = "</function>";
const PARAM_OPEN: &str = "<parameter=";
const PARAM_CLOSE: &str = "</parameter>";

/// Whether a rendered chat prompt leaves the model inside a think block: true iff, after
/// trailing whitespace is trimmed, the prompt ends with `<think>`.
pub fn prompt_opens_thinking(prompt: &str) -> bool {
    prompt.trim_end().ends_with(THINK_OPEN)
}

/// How the model writes tool calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToolFormat {
    /// `<tool_call>{"name": …, "arguments": {…}}</tool_call>` (Qwen2.5, Qwen3).
    Hermes,
    /// `<tool_call><function=NAME><parameter=KEY>value</parameter>…</function></tool_call>`
    /// (Qwen3.5, Qwen3.6, Qwen3-Coder).
    QwenXml,
}

/// A tool the request offers: its name and the JSON schema of its parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolSpec {
    /// The function's name.
    pub name: String,
    /// The function's parameters as a JSON schema (may be `{}`).
    pub parameters: Value,
}

/// What to parse out of the generated text.
#[derive(Clone, Debug, PartialEq)]
pub struct AnswerConfig {
    /// Split `<think>…</think>` off into reasoning (false: `--reasoning-format none`, all
    /// text is content).
    pub reasoning: bool,
    /// The prompt already opened a think block (see [`prompt_opens_thinking`]): the text
    /// is reasoning up to `</think>`.
    pub thinking_open: bool,
    /// Parse tool calls in this format, with these tools' schemas (None: no tool parsing).
    pub tools: Option<(ToolFormat, Vec<ToolSpec>)>,
}

/// What a piece of generated text adds to the answer, ready to be streamed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Delta {
    /// More reasoning text.
    pub reasoning: String,
    /// More content text.
    pub content: String,
    /// Tool-call parts, at most one per call index.
    pub tool_calls: Vec<ToolCallDelta>,
}

impl Delta {
    /// True when the delta adds nothing.
    pub fn is_empty(&self) -> bool {
        self.reasoning.is_empty() && self.content.is_empty() && self.tool_calls.is_empty()
    }

    /// Adds a fragment of call `index`, to the last part when it is of the same call.
    fn call(&mut self, index: usize, head: Option<(&str, &str)>, arguments: &str) {
        if head.is_none() {
            if let Some(last) = self.tool_calls.last_mut().filter(|c| c.index == index) {
                last.arguments.push_str(arguments);
                return;
            }
        }
        self.tool_calls.push(ToolCallDelta {
            index,
            id: head.map(|h| h.0.to_string()),
            name: head.map(|h| h.1.to_string()),
            arguments: arguments.to_string(),
        });
    }
}

/// A streamed part of a tool call, as in OpenAI's `delta.tool_calls`: the first part of
/// a call has its id and name, every part a fragment of the arguments' JSON text.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolCallDelta {
    /// The call's position in the message's calls.
    pub index: usize,
    /// The call's id (first part only).
    pub id: Option<String>,
    /// The function's name (first part only).
    pub name: Option<String>,
    /// The next fragment of the arguments' JSON text (may be empty).
    pub arguments: String,
}

/// A complete tool call.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolCall {
    /// `call_` and 24 letters and digits.
    pub id: String,
    /// The function's name.
    pub name: String,
    /// The arguments as JSON object text (compact: `{"city":"Paris","days":3}`).
    pub arguments: String,
}

/// The whole answer message.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    /// The reasoning (None when there is none).
    pub reasoning: Option<String>,
    /// The content (None when it is empty and there are tool calls).
    pub content: Option<String>,
    /// The tool calls, in order.
    pub tool_calls: Vec<ToolCall>,
}

/// Turns the generated text, piece by piece, into reasoning, content and tool calls.
///
/// [`Answer::push`] takes the text piece by piece, then [`Answer::finish`]; each returns
/// what can be shown at once ([`Delta`]), holding back only text that might still turn
/// into a tag (or whitespace that may be trimmed). The concatenated deltas do not depend on
/// how the text was cut into pieces, and they add up to the whole [`Message`]
/// ([`Answer::message`]), with one exception: a tool-call block still open when generation
/// ends (cut by `max_tokens`) becomes content, although a Qwen XML call may already have
/// been started in the stream (its id, name and some argument fragments).
#[derive(Debug)]
pub struct Answer {
    think: ThinkSplitter,
    tools: Option<ToolParser>,
    reasoning: String,
    content: String,
    finished: bool,
}

impl Answer {
    /// An answer parser for `cfg`.
    pub fn new(cfg: AnswerConfig) -> Answer {
        Answer::with_seed(cfg, fresh_seed())
    }

    /// [`Answer::new`] with the seed of the tool-call ids.
    fn with_seed(cfg: AnswerConfig, seed: u64) -> Answer {
        Answer {
            think: ThinkSplitter::new(cfg.reasoning, cfg.thinking_open),
            tools: cfg
                .tools
                .map(|(format, tools)| ToolParser::with_seed(format, &tools, seed)),
            reasoning: String::new(),
            content: String::new(),
            finished: false,
        }
    }

    /// The whole message of a complete generated `text` (push it all, then finish).
    pub fn parse(cfg: AnswerConfig, text: &str) -> Message {
        let mut a = Answer::new(cfg);
        a.push(text);
        a.finish();
        a.message()
    }

    /// Feeds a piece of generated text; returns what can be shown now. Ignored after
    /// [`Answer::finish`].
    pub fn push(&mut self, text: &str) -> Delta {
        if self.finished {
            return Delta::default();
        }
        self.step(text, false)
    }

    /// End of generation: the rest (empty when called again).
    pub fn finish(&mut self) -> Delta {
        if self.finished {
            return Delta::default();
        }
        self.finished = true;
        self.step("", true)
    }

    fn step(&mut self, text: &str, fin: bool) -> Delta {
        let mut d = Delta::default();
        let mut content = String::new();
        self.think.feed(text, fin, &mut d.reasoning, &mut content);
        match &mut self.tools {
            Some(t) => t.feed(&content, fin, &mut d),
            None => d.content = content,
        }
        self.reasoning.push_str(&d.reasoning);
        self.content.push_str(&d.content);
        d
    }

    /// The whole message (after [`Answer::finish`]; before, what was decided so far):
    /// reasoning (None if empty), content (None if empty and there are tool calls, else
    /// Some) and the complete tool calls.
    pub fn message(&self) -> Message {
        let tool_calls = self
            .tools
            .as_ref()
            .map_or_else(Vec::new, |t| t.calls().to_vec());
        Message {
            reasoning: (!self.reasoning.is_empty()).then(|| self.reasoning.clone()),
            content: (!self.content.is_empty() || tool_calls.is_empty())
                .then(|| self.content.clone()),
            tool_calls,
        }
    }
}

/// Where the reasoning split stands.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Think {
    /// Before the first non-whitespace text: it may open a think block.
    Start,
    /// Inside a think block; `started` once its leading whitespace is behind.
    Reasoning { started: bool },
    /// Just after `</think>`: leading whitespace is dropped.
    After,
    /// Everything else is content.
    Content,
}

/// Splits `<think>…</think>` off the front of the text.
#[derive(Debug)]
struct ThinkSplitter {
    state: Think,
    /// Text not decided yet.
    buf: String,
}

impl ThinkSplitter {
    fn new(reasoning: bool, thinking_open: bool) -> ThinkSplitter {
        let state = match (reasoning, thinking_open) {
            (false, _) => Think::Content,
            (true, true) => Think::Reasoning { started: false },
            (true, false) => Think::Start,
        };
        ThinkSplitter {
            state,
            buf: String::new(),
        }
    }

    /// Takes `text` (and the end of generation when `fin`); appends what is decided to
    /// `reasoning` and `content`.
    fn feed(&mut self, text: &str, fin: bool, reasoning: &mut String, content: &mut String) {
        self.buf.push_str(text);
        loop {
            match self.state {
                Think::Start => {
                    let rest = self.buf.trim_start();
                    if rest.starts_with(THINK_OPEN) {
                        let cut = self.buf.len() - rest.len() + THINK_OPEN.len();
                        self.buf.drain(..cut);
                        self.state = Think::Reasoning { started: false };
                    } else if !fin && THINK_OPEN.starts_with(rest) {
                        return;
                    } else {
                        self.state = Think::Content;
                    }
                }
                Think::Reasoning { started } => {
                    if !started {
                        let ws = self.buf.len() - self.buf.trim_start().len();
                        self.buf.drain(..ws);
                        if self.buf.is_empty() {
                            return;
                        }
                        self.state = Think::Reasoning { started: true };
                    }
                    if let Some(i) = self.buf.find(THINK_CLOSE) {
                        reasoning.push_str(self.buf[..i].trim_end());
                        self.buf.drain(..i + THINK_CLOSE.len());
                        self.state = Think::After;
                    } else if fin {
                        reasoning.push_str(self.buf.trim_end());
                        self.buf.clear();
                        return;
                    } else {
                        // Hold back trailing whitespace and what may begin `</think>`.
                        let k = partial_tag(&self.buf, THINK_CLOSE);
                        let n = self.buf[..self.buf.len() - k].trim_end().len();
                        reasoning.push_str(&self.buf[..n]);
                        self.buf.drain(..n);
                        return;
                    }
                }
                Think::After => {
                    let ws = self.buf.len() - self.buf.trim_start().len();
                    self.buf.drain(..ws);
                    if self.buf.is_empty() {
                        return;
                    }
                    self.state = Think::Content;
                }
                Think::Content => {
                    content.push_str(&self.buf);
                    self.buf.clear();
                    return;
                }
            }
        }
    }
}

/// Where a Qwen XML block stands.
#[derive(Clone, Debug, PartialEq)]
enum Xml {
    /// After `<tool_call>`, before `<function=`.
    Open,
    /// After `<function=`, before `>`.
    Name,
    /// Inside the function (its call started), between parameters.
    Body,
    /// After `<parameter=`, before `>`.
    ParamName,
    /// Inside the value of this parameter, before `</parameter>`.
    ParamValue(String),
    /// After `</function>`, before `</tool_call>`.
    AfterFunction,
    /// Not a call after all: up to `</tool_call>`, the block is content.
    Skip,
}

/// Where the tool-call parser stands.
#[derive(Clone, Debug, PartialEq)]
enum Tools {
    /// Content, outside tool-call blocks.
    Text,
    /// Inside a Hermes block, before `</tool_call>`.
    Hermes,
    /// Inside a Qwen XML block.
    Xml(Xml),
}

/// Parses tool-call blocks out of the content stream.
#[derive(Debug)]
pub struct ToolParser {
    format: ToolFormat,
    tools: Vec<ToolSpec>,
    seed: u64,
    state: Tools,
    /// Text not decided yet.
    buf: String,
    /// Bytes at the start of `buf` known to hold no complete closing tag.
    scanned: usize,
    /// Nothing but whitespace was content since the last call.
    after_call: bool,
    /// The whitespace dropped before the open block (restored if it is no call).
    ws_before: String,
    /// The open block's text taken from `buf` so far, `<tool_call>` included.
    raw: String,
    /// The XML call being streamed.
    pending: Option<ToolCall>,
    /// Parameters of the pending call so far.
    n_params: usize,
    calls: Vec<ToolCall>,
    finished: bool,
}

impl ToolParser {
    /// A parser of calls in `format` to `tools` (their schemas type the XML parameters).
    pub fn new(format: ToolFormat, tools: &[ToolSpec]) -> ToolParser {
        ToolParser::with_seed(format, tools, fresh_seed())
    }

    fn with_seed(format: ToolFormat, tools: &[ToolSpec], seed: u64) -> ToolParser {
        ToolParser {
            format,
            tools: tools.to_vec(),
            seed,
            state: Tools::Text,
            buf: String::new(),
            scanned: 0,
            after_call: false,
            ws_before: String::new(),
            raw: String::new(),
            pending: None,
            n_params: 0,
            calls: Vec::new(),
            finished: false,
        }
    }

    /// Feeds a piece of content text; returns the content and call parts decided now
    /// (`reasoning` stays empty). Ignored after [`ToolParser::finish`].
    pub fn push(&mut self, text: &str) -> Delta {
        let mut d = Delta::default();
        if !self.finished {
            self.feed(text, false, &mut d);
        }
        d
    }

    /// End of the content: the rest (an unfinished block is content).
    pub fn finish(&mut self) -> Delta {
        let mut d = Delta::default();
        if !self.finished {
            self.feed("", true, &mut d);
        }
        d
    }

    /// The complete calls so far.
    pub fn calls(&self) -> &[ToolCall] {
        &self.calls
    }

    /// Takes `text` (and the end when `fin`); adds what is decided to `d`.
    fn feed(&mut self, text: &str, fin: bool, d: &mut Delta) {
        if self.finished {
            return;
        }
        self.buf.push_str(text);
        while self.step(fin, d) {}
        if fin {
            self.finished = true;
            if self.state == Tools::Text {
                if !(self.after_call && self.buf.trim().is_empty()) {
                    d.content.push_str(&self.buf);
                }
            } else {
                // Cut inside a block: its text is content, and no call.
                d.content.push_str(&self.ws_before);
                d.content.push_str(&self.raw);
                d.content.push_str(&self.buf);
                self.pending = None;
            }
            self.buf.clear();
            self.state = Tools::Text;
        }
    }

    /// One decision; false when more text is needed.
    fn step(&mut self, fin: bool, d: &mut Delta) -> bool {
        match self.state.clone() {
            Tools::Text => {
                if let Some(i) = self.buf.find(CALL_OPEN) {
                    let keep = self.buf[..i].trim_end().len();
                    if keep > 0 {
                        d.content.push_str(&self.buf[..keep]);
                        self.after_call = false;
                    }
                    self.ws_before = self.buf[keep..i].to_string();
                    self.buf.drain(..i);
                    self.scanned = 0;
                    self.raw.clear();
                    self.take(CALL_OPEN.len());
                    self.state = match self.format {
                        ToolFormat::Hermes => Tools::Hermes,
                        ToolFormat::QwenXml => Tools::Xml(Xml::Open),
                    };
                    return true;
                }
                if !fin {
                    // Hold back trailing whitespace and what may begin `<tool_call>`.
                    let k = partial_tag(&self.buf, CALL_OPEN);
                    let n = self.buf[..self.buf.len() - k].trim_end().len();
                    if n > 0 {
                        d.content.push_str(&self.buf[..n]);
                        self.buf.drain(..n);
                        self.after_call = false;
                    }
                }
                false
            }
            Tools::Hermes => {
                let Some(i) = self.find_tag(CALL_CLOSE) else {
                    return false;
                };
                let call = parse_hermes(&self.buf[..i]);
                self.take(i + CALL_CLOSE.len());
                match call {
                    Some((name, arguments)) => {
                        let index = self.calls.len();
                        let id = call_id(self.seed, index);
                        d.call(index, Some((&id, &name)), &arguments);
                        self.calls.push(ToolCall {
                            id,
                            name,
                            arguments,
                        });
                        self.after_call = true;
                    }
                    None => self.not_a_call(d),
                }
                self.state = Tools::Text;
                true
            }
            Tools::Xml(x) => self.step_xml(x, d),
        }
    }

    /// One decision inside a Qwen XML block; false when more text is needed.
    fn step_xml(&mut self, x: Xml, d: &mut Delta) -> bool {
        match x {
            Xml::Open => {
                self.skip_whitespace();
                if self.buf.starts_with(FUNCTION_OPEN) {
                    self.take(FUNCTION_OPEN.len());
                    self.state = Tools::Xml(Xml::Name);
                } else if FUNCTION_OPEN.starts_with(self.buf.as_str()) {
                    return false;
                } else {
                    self.state = Tools::Xml(Xml::Skip);
                }
                true
            }
            Xml::Name => {
                match self.buf.find('>') {
                    Some(i) => {
                        let raw_name = &self.buf[..i];
                        let name = raw_name.trim().to_string();
                        if raw_name.contains(['\n', '<']) || name.is_empty() {
                            self.state = Tools::Xml(Xml::Skip);
                        } else {
                            self.take(i + 1);
                            let index = self.calls.len();
                            let id = call_id(self.seed, index);
                            d.call(index, Some((&id, &name)), "");
                            self.pending = Some(ToolCall {
                                id,
                                name,
                                arguments: String::new(),
                            });
                            self.n_params = 0;
                            self.state = Tools::Xml(Xml::Body);
                        }
                    }
                    None if self.buf.contains(['\n', '<']) => {
                        self.state = Tools::Xml(Xml::Skip);
                    }
                    None => return false,
                }
                true
            }
            Xml::Body => {
                self.skip_whitespace();
                if self.buf.starts_with(PARAM_OPEN) {
                    self.take(PARAM_OPEN.len());
                    self.state = Tools::Xml(Xml::ParamName);
                } else if self.buf.starts_with(FUNCTION_CLOSE) {
                    self.take(FUNCTION_CLOSE.len());
                    self.close_function(d);
                } else if self.buf.starts_with(CALL_CLOSE) {
                    // `</function>` forgotten: the block's end closes the function too.
                    self.close_function(d);
                } else if self.buf.is_empty()
                    || [PARAM_OPEN, FUNCTION_CLOSE, CALL_CLOSE]
                        .iter()
                        .any(|t| t.starts_with(self.buf.as_str()))
                {
                    return false;
                } else {
                    // Stray text between parameters: skipped up to the next tag.
                    let n = self.buf[1..].find('<').map_or(self.buf.len(), |j| j + 1);
                    self.take(n);
                }
                true
            }
            Xml::ParamName => {
                let Some(i) = self.buf.find('>') else {
                    return false;
                };
                let key = self.buf[..i].trim().to_string();
                self.take(i + 1);
                self.state = Tools::Xml(Xml::ParamValue(key));
                true
            }
            Xml::ParamValue(key) => {
                let Some(i) = self.find_tag(PARAM_CLOSE) else {
                    return false;
                };
                let mut value = &self.buf[..i];
                value = value.strip_prefix('\n').unwrap_or(value);
                value = value.strip_suffix('\n').unwrap_or(value);
                let Some(pending) = self.pending.as_mut() else {
                    return false;
                };
                let string = is_string_param(&self.tools, &pending.name, &key);
                let mut frag = String::from(if self.n_params == 0 { "{" } else { "," });
                frag.push_str(&Value::String(key).to_string());
                frag.push(':');
                frag.push_str(&param_json(value, string));
                pending.arguments.push_str(&frag);
                d.call(self.calls.len(), None, &frag);
                self.n_params += 1;
                self.take(i + PARAM_CLOSE.len());
                self.state = Tools::Xml(Xml::Body);
                true
            }
            Xml::AfterFunction => {
                let Some(i) = self.find_tag(CALL_CLOSE) else {
                    return false;
                };
                self.take(i + CALL_CLOSE.len());
                if let Some(call) = self.pending.take() {
                    self.calls.push(call);
                }
                self.after_call = true;
                self.state = Tools::Text;
                true
            }
            Xml::Skip => {
                let Some(i) = self.find_tag(CALL_CLOSE) else {
                    return false;
                };
                self.take(i + CALL_CLOSE.len());
                self.not_a_call(d);
                self.state = Tools::Text;
                true
            }
        }
    }

    /// Ends the pending XML call's arguments object.
    fn close_function(&mut self, d: &mut Delta) {
        let frag = if self.n_params == 0 { "{}" } else { "}" };
        if let Some(p) = self.pending.as_mut() {
            p.arguments.push_str(frag);
        }
        d.call(self.calls.len(), None, frag);
        self.state = Tools::Xml(Xml::AfterFunction);
    }

    /// The block just closed is no call: its text (and the whitespace before) is content.
    fn not_a_call(&mut self, d: &mut Delta) {
        d.content.push_str(&self.ws_before);
        d.content.push_str(&self.raw);
        self.ws_before.clear();
        self.raw.clear();
        self.after_call = false;
    }

    /// Moves the first `n` bytes of `buf` into the block's text.
    fn take(&mut self, n: usize) {
        self.raw.push_str(&self.buf[..n]);
        self.buf.drain(..n);
        self.scanned = 0;
    }

    fn skip_whitespace(&mut self) {
        let n = self.buf.len() - self.buf.trim_start().len();
        if n > 0 {
            self.take(n);
        }
    }

    /// Where `tag` (ASCII) is in `buf`, searching only what was not searched before.
    fn find_tag(&mut self, tag: &str) -> Option<usize> {
        let mut from = self.scanned.saturating_sub(tag.len() - 1);
        while !self.buf.is_char_boundary(from) {
            from -= 1;
        }
        match self.buf[from..].find(tag) {
            Some(i) => Some(from + i),
            None => {
                self.scanned = self.buf.len();
                None
            }
        }
    }
}

/// Length of the longest suffix of `buf` that is a proper, non-empty prefix of `tag`
/// (ASCII): text that may still become `tag`.
fn partial_tag(buf: &str, tag: &str) -> usize {
    let (b, t) = (buf.as_bytes(), tag.as_bytes());
    (1..t.len())
        .rev()
        .find(|&k| b.ends_with(&t[..k]))
        .unwrap_or(0)
}

/// The name and arguments of a Hermes block's JSON (either key order); None when it is
/// not a call. Arguments written as a string are taken as they are.
fn parse_hermes(inner: &str) -> Option<(String, String)> {
    let v: Value = serde_json::from_str(inner.trim()).ok()?;
    let obj = v.as_object()?;
    let name = obj.get("name")?.as_str()?.trim();
    if name.is_empty() {
        return None;
    }
    let arguments = match obj.get("arguments").or_else(|| obj.get("parameters")) {
        None | Some(Value::Null) => "{}".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    };
    Some((name.to_string(), arguments))
}

/// Whether the schema of `tool` types parameter `key` as a string.
fn is_string_param(tools: &[ToolSpec], tool: &str, key: &str) -> bool {
    let Some(spec) = tools.iter().find(|t| t.name == tool) else {
        return false;
    };
    match spec
        .parameters
        .pointer(&format!("/properties/{}/type", pointer_escape(key)))
    {
        Some(Value::String(t)) => t == "string",
        Some(Value::Array(ts)) => {
            let mut types = ts.iter().filter(|t| t.as_str() != Some("null")).peekable();
            types.peek().is_some() && types.all(|t| t.as_str() == Some("string"))
        }
        _ => false,
    }
}

/// `key` escaped for a JSON pointer.
fn pointer_escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// A parameter value as JSON text: a string when `string`, else the value parsed as
/// JSON, or a string when it does not parse.
fn param_json(value: &str, string: bool) -> String {
    if !string {
        if let Ok(v) = serde_json::from_str::<Value>(value) {
            return v.to_string();
        }
    }
    Value::String(value.to_string()).to_string()
}

/// A seed for call ids that differs between parsers and runs.
fn fresh_seed() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut s =
        nanos ^ (u64::from(std::process::id()) << 32) ^ n.wrapping_mul(0xA24B_AED4_963E_E407);
    splitmix(&mut s)
}

/// The next number of a SplitMix64 sequence.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The id of call `index`: `call_` and 24 letters and digits drawn from `seed`.
fn call_id(seed: u64, index: usize) -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut state = seed ^ (index as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93);
    let mut id = String::from("call_");
    for _ in 0..4 {
        let mut r = splitmix(&mut state);
        for _ in 0..6 {
            id.push(ALPHABET[(r % 62) as usize] as char);
            r /= 62;
        }
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SEED: u64 = 7;

    fn cfg(reasoning: bool, thinking_open: bool) -> AnswerConfig {
        AnswerConfig {
            reasoning,
            thinking_open,
            tools: None,
        }
    }

    fn with_tools(format: ToolFormat, tools: Vec<ToolSpec>) -> AnswerConfig {
        AnswerConfig {
            reasoning: true,
            thinking_open: false,
            tools: Some((format, tools)),
        }
    }

    fn weather_tool() -> ToolSpec {
        ToolSpec {
            name: "get_weather".into(),
            parameters: json!({
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "days": {"type": "integer"},
                    "options": {"type": "object"},
                    "zip": {"type": ["string", "null"]},
                    "note": {"type": "string"}
                },
                "required": ["city"]
            }),
        }
    }

    /// Pieces of at least `n` bytes, cut at character boundaries.
    fn bytes(s: &str, n: usize) -> Vec<&str> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < s.len() {
            let mut j = (i + n).min(s.len());
            while !s.is_char_boundary(j) {
                j += 1;
            }
            out.push(&s[i..j]);
            i = j;
        }
        out
    }

    /// Token-like pieces: special tags whole, a space with the word after it, words of at
    /// most 5 characters, whitespace runs, single other characters.
    fn tokens(s: &str) -> Vec<&str> {
        const SPECIAL: [&str; 4] = [THINK_OPEN, THINK_CLOSE, CALL_OPEN, CALL_CLOSE];
        let mut out = Vec::new();
        let mut i = 0;
        while i < s.len() {
            let rest = &s[i..];
            let n = if let Some(t) = SPECIAL.iter().find(|t| rest.starts_with(**t)) {
                t.len()
            } else {
                let word = |s: &str| -> usize {
                    s.char_indices()
                        .take_while(|(k, c)| c.is_alphanumeric() && *k < 5)
                        .map(|(k, c)| k + c.len_utf8())
                        .last()
                        .unwrap_or(0)
                };
                let c = rest.chars().next().map_or(1, char::len_utf8);
                if rest.starts_with(' ') && word(&rest[1..]) > 0 {
                    1 + word(&rest[1..])
                } else if word(rest) > 0 {
                    word(rest)
                } else if rest.starts_with(char::is_whitespace) {
                    rest.len() - rest.trim_start().len()
                } else {
                    c
                }
            };
            out.push(&rest[..n]);
            i += n;
        }
        out
    }

    fn stream(cfg: &AnswerConfig, pieces: &[&str]) -> (Message, Vec<Delta>) {
        let mut a = Answer::with_seed(cfg.clone(), SEED);
        let mut deltas: Vec<Delta> = pieces.iter().map(|p| a.push(p)).collect();
        deltas.push(a.finish());
        assert_eq!(a.finish(), Delta::default());
        assert_eq!(a.push("more"), Delta::default());
        (a.message(), deltas)
    }

    /// Checks that the deltas add up to the message: reasoning, content, and each call's
    /// id, name (first part only) and arguments. Returns the streamed calls' indices.
    fn check_deltas(m: &Message, deltas: &[Delta]) -> Vec<usize> {
        let reasoning: String = deltas.iter().map(|d| d.reasoning.as_str()).collect();
        let content: String = deltas.iter().map(|d| d.content.as_str()).collect();
        assert_eq!(reasoning, m.reasoning.clone().unwrap_or_default());
        assert_eq!(content, m.content.clone().unwrap_or_default());
        let mut seen: Vec<usize> = Vec::new();
        let mut args: Vec<String> = Vec::new();
        for d in deltas {
            let mut indices = d.tool_calls.iter().map(|c| c.index).collect::<Vec<_>>();
            indices.dedup();
            assert_eq!(indices.len(), d.tool_calls.len(), "one part per call");
            for c in &d.tool_calls {
                if seen.contains(&c.index) {
                    assert_eq!(c.id, None);
                    assert_eq!(c.name, None);
                    args[c.index].push_str(&c.arguments);
                } else {
                    assert_eq!(c.index, seen.len(), "calls are numbered in order");
                    seen.push(c.index);
                    args.push(c.arguments.clone());
                    if let Some(call) = m.tool_calls.get(c.index) {
                        assert_eq!(c.id.as_deref(), Some(call.id.as_str()));
                        assert_eq!(c.name.as_deref(), Some(call.name.as_str()));
                    }
                }
            }
        }
        for (i, call) in m.tool_calls.iter().enumerate() {
            assert_eq!(args[i], call.arguments);
        }
        seen
    }

    /// The message of `text` fed whole; fed in 1-byte, 3-byte and token-sized pieces it
    /// must be the same, with consistent deltas.
    fn check(cfg: &AnswerConfig, text: &str) -> Message {
        let (whole, deltas) = stream(cfg, &[text]);
        assert_eq!(check_deltas(&whole, &deltas).len(), whole.tool_calls.len());
        for pieces in [bytes(text, 1), bytes(text, 3), tokens(text)] {
            let (m, deltas) = stream(cfg, &pieces);
            assert_eq!(m, whole, "pieces {pieces:?}");
            assert_eq!(check_deltas(&m, &deltas).len(), m.tool_calls.len());
        }
        whole
    }

    fn msg(reasoning: Option<&str>, content: Option<&str>, calls: &[(&str, &str)]) -> Message {
        Message {
            reasoning: reasoning.map(str::to_string),
            content: content.map(str::to_string),
            tool_calls: calls
                .iter()
                .enumerate()
                .map(|(i, (name, args))| ToolCall {
                    id: call_id(SEED, i),
                    name: name.to_string(),
                    arguments: args.to_string(),
                })
                .collect(),
        }
    }

    #[test]
    fn prompt_opens_thinking_after_trimming() {
        assert!(prompt_opens_thinking("<|im_start|>assistant\n<think>\n"));
        assert!(prompt_opens_thinking("x<think>"));
        assert!(prompt_opens_thinking("x<think> \n\n"));
        assert!(!prompt_opens_thinking(
            "<|im_start|>assistant\n<think>\n\n</think>\n\n"
        ));
        assert!(!prompt_opens_thinking("<think>\nhi"));
        assert!(!prompt_opens_thinking(""));
    }

    #[test]
    fn reasoning_then_content() {
        let text = "<think>\nThe user asks 2 + 2.\n\nThat is 4.\n</think>\n\nThe answer is 4.";
        let m = check(&cfg(true, false), text);
        assert_eq!(
            m,
            msg(
                Some("The user asks 2 + 2.\n\nThat is 4."),
                Some("The answer is 4."),
                &[]
            )
        );
        // Leading whitespace before `<think>` and an empty think block.
        let m = check(&cfg(true, false), "\n <think>\n\n</think>\n\nHi.");
        assert_eq!(m, msg(None, Some("Hi."), &[]));
    }

    #[test]
    fn prompt_opened_thinking() {
        let text = "Okay, the user greets me.\n</think>\n\nHello! How can I help?";
        let m = check(&cfg(true, true), text);
        assert_eq!(
            m,
            msg(
                Some("Okay, the user greets me."),
                Some("Hello! How can I help?"),
                &[]
            )
        );
        // A `<think>` inside reasoning is reasoning text.
        let m = check(&cfg(true, true), "\nA <think> tag.\n</think>Done.");
        assert_eq!(m, msg(Some("A <think> tag."), Some("Done."), &[]));
    }

    #[test]
    fn no_think_is_all_content() {
        let text = "Hello there.\nUse <think> tags </think> like this.\n";
        assert_eq!(check(&cfg(true, false), text), msg(None, Some(text), &[]));
        let text = "<thinking>not a tag</thinking>";
        assert_eq!(check(&cfg(true, false), text), msg(None, Some(text), &[]));
        let text = "  <th";
        assert_eq!(check(&cfg(true, false), text), msg(None, Some(text), &[]));
        assert_eq!(check(&cfg(true, false), ""), msg(None, Some(""), &[]));
    }

    #[test]
    fn unterminated_think_stays_reasoning() {
        let text = "<think>\nStill weighing 東京 vs. Zürich…\n\n";
        let m = check(&cfg(true, false), text);
        assert_eq!(
            m,
            msg(Some("Still weighing 東京 vs. Zürich…"), Some(""), &[])
        );
        let m = check(&cfg(true, true), "Cut off mid </thi");
        assert_eq!(m, msg(Some("Cut off mid </thi"), Some(""), &[]));
        let m = check(&cfg(true, false), "<think>");
        assert_eq!(m, msg(None, Some(""), &[]));
    }

    #[test]
    fn reasoning_off_keeps_tags_in_content() {
        let text = "<think>\nhmm\n</think>\n\nHi <tool_call>";
        assert_eq!(check(&cfg(false, false), text), msg(None, Some(text), &[]));
        assert_eq!(check(&cfg(false, true), text), msg(None, Some(text), &[]));
    }

    #[test]
    fn streaming_holds_back_only_possible_tags() {
        let mut a = Answer::with_seed(cfg(true, false), SEED);
        assert!(a.push("<").is_empty());
        assert!(a.push("th").is_empty());
        assert!(a.push("ink>\n").is_empty());
        assert_eq!(a.push("Hmm, 1 <").reasoning, "Hmm, 1");
        assert_eq!(a.push(" 2 ").reasoning, " < 2");
        assert!(a.push("\n</thi").is_empty());
        assert!(a.push("nk>\n\n").is_empty());
        // Without tools, content is not held back.
        assert_eq!(a.push("Yes <").content, "Yes <");
        assert_eq!(a.push("b>").content, "b>");
        assert_eq!(a.finish(), Delta::default());
        assert_eq!(a.message(), msg(Some("Hmm, 1 < 2"), Some("Yes <b>"), &[]));

        let mut a = Answer::with_seed(with_tools(ToolFormat::Hermes, vec![]), SEED);
        assert_eq!(a.push("See <tool").content, "See");
        assert_eq!(a.push("s>").content, " <tools>");
    }

    #[test]
    fn hermes_single_call() {
        let text = "Let me check.\n\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": \
                    {\"city\": \"Paris\"}}\n</tool_call>";
        let c = with_tools(ToolFormat::Hermes, vec![weather_tool()]);
        let m = check(&c, text);
        assert_eq!(
            m,
            msg(
                None,
                Some("Let me check."),
                &[("get_weather", r#"{"city":"Paris"}"#)]
            )
        );
        // Only the call: no content.
        let text = "<tool_call>\n{\"name\": \"now\", \"arguments\": {}}\n</tool_call>\n";
        assert_eq!(check(&c, text), msg(None, None, &[("now", "{}")]));
    }

    #[test]
    fn hermes_parallel_calls_after_reasoning_and_content() {
        let text = "<think>\nTwo cities.\n</think>\n\nChecking both.\n<tool_call>\n\
                    {\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n\
                    </tool_call>\n<tool_call>\n{\"arguments\": {\"city\": \"Tokyo\", \
                    \"days\": 2}, \"name\": \"get_weather\"}\n</tool_call>\n\
                    <tool_call>\n{\"name\": \"raw\", \"arguments\": \"{\\\"q\\\": 1}\"}\n\
                    </tool_call>";
        let c = with_tools(ToolFormat::Hermes, vec![weather_tool()]);
        let m = check(&c, text);
        assert_eq!(
            m,
            msg(
                Some("Two cities."),
                Some("Checking both."),
                &[
                    ("get_weather", r#"{"city":"Paris"}"#),
                    ("get_weather", r#"{"city":"Tokyo","days":2}"#),
                    ("raw", r#"{"q": 1}"#),
                ]
            )
        );
        assert_ne!(m.tool_calls[0].id, m.tool_calls[1].id);
    }

    #[test]
    fn hermes_malformed_block_is_content() {
        let bad = "Sure.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": }\n\
                   </tool_call>";
        let c = with_tools(ToolFormat::Hermes, vec![weather_tool()]);
        assert_eq!(check(&c, bad), msg(None, Some(bad), &[]));
        // A good call after it is still call 0.
        let text = format!(
            "{bad}\n<tool_call>\n{{\"name\": \"get_weather\", \"arguments\": \
             {{\"city\": \"Oslo\"}}}}\n</tool_call>"
        );
        assert_eq!(
            check(&c, &text),
            msg(None, Some(bad), &[("get_weather", r#"{"city":"Oslo"}"#)])
        );
        // Content after a call is kept, with its leading whitespace.
        let text = "<tool_call>\n{\"name\": \"f\"}\n</tool_call>\nDone.\n";
        assert_eq!(
            check(&c, text),
            msg(None, Some("\nDone.\n"), &[("f", "{}")])
        );
    }

    #[test]
    fn unfinished_block_is_content() {
        let text = "Checking.\n<tool_call>\n{\"name\": \"get_weather\", \"argu";
        let c = with_tools(ToolFormat::Hermes, vec![weather_tool()]);
        assert_eq!(check(&c, text), msg(None, Some(text), &[]));

        // XML: the call was started in the stream, but the message has none.
        let text = "<tool_call>\n<function=get_weather>\n<parameter=city>\nPar";
        let c = with_tools(ToolFormat::QwenXml, vec![weather_tool()]);
        let (whole, _) = stream(&c, &[text]);
        assert_eq!(whole, msg(None, Some(text), &[]));
        for pieces in [bytes(text, 1), bytes(text, 3), tokens(text)] {
            let (m, deltas) = stream(&c, &pieces);
            assert_eq!(m, whole);
            assert_eq!(check_deltas(&m, &deltas), vec![0]);
        }
    }

    #[test]
    fn xml_call_typed_by_schema() {
        let text = "I'll look it up.\n\n<tool_call>\n<function=get_weather>\n\
                    <parameter=city>\nSan Francisco\n</parameter>\n\
                    <parameter=days>\n3\n</parameter>\n\
                    <parameter=options>\n{\"units\": \"metric\", \"hourly\": true}\n</parameter>\n\
                    <parameter=zip>\n94103\n</parameter>\n\
                    <parameter=note>\nline one\nline \"two\"\n</parameter>\n\
                    </function>\n</tool_call>";
        let c = with_tools(ToolFormat::QwenXml, vec![weather_tool()]);
        let args = r#"{"city":"San Francisco","days":3,"options":{"units":"metric","hourly":true},"zip":"94103","note":"line one\nline \"two\""}"#;
        assert_eq!(
            check(&c, text),
            msg(None, Some("I'll look it up."), &[("get_weather", args)])
        );

        // The stream: id and name first, then one fragment per parameter, then `}`.
        let mut a = Answer::with_seed(c, SEED);
        let mut parts = Vec::new();
        for p in bytes(text, 1) {
            parts.extend(a.push(p).tool_calls);
        }
        parts.extend(a.finish().tool_calls);
        let frags: Vec<&str> = parts.iter().map(|p| p.arguments.as_str()).collect();
        assert_eq!(
            frags,
            [
                "",
                r#"{"city":"San Francisco""#,
                r#","days":3"#,
                r#","options":{"units":"metric","hourly":true}"#,
                r#","zip":"94103""#,
                r#","note":"line one\nline \"two\"""#,
                "}"
            ]
        );
        assert_eq!(parts[0].id.as_deref(), Some(call_id(SEED, 0).as_str()));
        assert_eq!(parts[0].name.as_deref(), Some("get_weather"));
    }

    #[test]
    fn xml_calls_without_schema() {
        let text = "<think>\nUse the tools.\n</think>\n\n<tool_call>\n<function=search>\n\
                    <parameter=query>\nParis\n</parameter>\n<parameter=limit>\n3\n</parameter>\n\
                    <parameter=exact>\ntrue\n</parameter>\n<parameter=note>\n3 apples\n\
                    </parameter>\n<parameter=filter>\n{\"lang\": [\"fr\"]}\n</parameter>\n\
                    </function>\n</tool_call>\n<tool_call>\n<function=now>\n</function>\n\
                    </tool_call>\n";
        let c = with_tools(ToolFormat::QwenXml, vec![]);
        let args = r#"{"query":"Paris","limit":3,"exact":true,"note":"3 apples","filter":{"lang":["fr"]}}"#;
        assert_eq!(
            check(&c, text),
            msg(
                Some("Use the tools."),
                None,
                &[("search", args), ("now", "{}")]
            )
        );
        // Not a function inside: the block is content.
        let text = "<tool_call>\n{\"name\": \"f\"}\n</tool_call>";
        assert_eq!(check(&c, text), msg(None, Some(text), &[]));
    }

    #[test]
    fn without_tools_calls_are_content() {
        let text = "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>";
        assert_eq!(check(&cfg(true, false), text), msg(None, Some(text), &[]));
    }

    #[test]
    fn call_ids_look_like_openai() {
        let ids: Vec<String> = (0..3).map(|i| call_id(SEED, i)).collect();
        for id in &ids {
            let tail = id.strip_prefix("call_").unwrap();
            assert_eq!(tail.len(), 24);
            assert!(tail.bytes().all(|b| b.is_ascii_alphanumeric()), "{id}");
        }
        assert_ne!(ids[0], ids[1]);
        assert_ne!(ids[1], ids[2]);
        let text = "<tool_call>\n{\"name\": \"f\"}\n</tool_call>";
        let c = with_tools(ToolFormat::Hermes, vec![]);
        let (a, b) = (Answer::parse(c.clone(), text), Answer::parse(c, text));
        assert_ne!(a.tool_calls[0].id, b.tool_calls[0].id);
    }

    #[test]
    fn random_pieces_give_the_same_message() {
        let texts = [
            "<think>\nA <tool_call> in reasoning </thin k>.\n</think>\n\nOk <tool_call>\n\
             {\"name\": \"f\", \"arguments\": {\"s\": \"}<tool_call>{\\\"x\"}}\n</tool_call> \n",
            "Zürich 東京 <tool_cal <tool_call><function=f>\n<parameter=a>\n<x>\n</parameter>\n\
             junk <parameter=b>\n[1, 2]\n</parameter></tool_call>\n<tool_call>\n<func",
            "<tool_call>\n<function=bad\nname>\n</function>\n</tool_call> tail ",
            "  <think>x</think>  <tool_call>{\"name\": \"g\", \"arguments\": null}</tool_call>",
        ];
        let mut rng = 0x1234_5678_u64;
        for format in [ToolFormat::Hermes, ToolFormat::QwenXml] {
            for text in texts {
                let c = with_tools(format, vec![weather_tool()]);
                let (whole, deltas) = stream(&c, &[text]);
                check_deltas(&whole, &deltas);
                for _ in 0..50 {
                    let mut pieces = Vec::new();
                    let mut i = 0;
                    while i < text.len() {
                        let mut j = (i + 1 + (splitmix(&mut rng) % 8) as usize).min(text.len());
                        while !text.is_char_boundary(j) {
                            j += 1;
                        }
                        pieces.push(&text[i..j]);
                        i = j;
                    }
                    let (m, deltas) = stream(&c, &pieces);
                    assert_eq!(m, whole, "{format:?} {pieces:?}");
                    check_deltas(&m, &deltas);
                }
            }
        }
        // Spot checks of what those texts give.
        let c = with_tools(ToolFormat::Hermes, vec![]);
        let m = Answer::parse(c, texts[0]);
        assert_eq!(
            m.reasoning.as_deref(),
            Some("A <tool_call> in reasoning </thin k>.")
        );
        assert_eq!(m.content.as_deref(), Some("Ok"));
        assert_eq!(m.tool_calls[0].arguments, r#"{"s":"}<tool_call>{\"x"}"#);
        let c = with_tools(ToolFormat::QwenXml, vec![]);
        let m = Answer::parse(c.clone(), texts[1]);
        assert_eq!(m.tool_calls.len(), 1);
        assert_eq!(m.tool_calls[0].arguments, r#"{"a":"<x>","b":[1,2]}"#);
        assert_eq!(
            m.content.as_deref(),
            Some("Zürich 東京 <tool_cal\n<tool_call>\n<func")
        );
        let m = Answer::parse(c, texts[2]);
        assert_eq!(m.content.as_deref(), Some(texts[2]));
        assert!(m.tool_calls.is_empty());
    }

    #[test]
    fn tool_parser_alone() {
        let mut p = ToolParser::new(ToolFormat::Hermes, &[]);
        let d = p.push("Hi <tool_call>{\"name\": \"f\", \"arguments\": {\"a\": [1, 2]}}");
        assert_eq!(d.content, "Hi");
        assert!(d.tool_calls.is_empty());
        let d = p.push("</tool_call>");
        assert_eq!(d.tool_calls.len(), 1);
        assert_eq!(d.tool_calls[0].arguments, r#"{"a":[1,2]}"#);
        assert_eq!(p.finish(), Delta::default());
        assert_eq!(p.calls()[0].name, "f");
    }
}
