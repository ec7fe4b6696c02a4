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

pub use constrain::tools::{ToolFormat, ToolSpec};

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
mod tests;
