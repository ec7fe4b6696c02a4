//! Grammars for tool calls: the call format a model family was trained on (Hermes JSON in
//! `<tool_call>` tags, or Qwen3.5's XML), restricted to the request's functions.

use serde_json::{json, Map, Value};

use crate::{ConstrainError, Grammar, Start};

/// How a model writes a tool call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolFormat {
    /// `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>` (Qwen2.5, Qwen3).
    Hermes,
    /// `<tool_call>\n<function=NAME>\n<parameter=ARG>\nvalue\n</parameter>\n</function>\n</tool_call>`
    /// (Qwen3.5, Qwen3.6): string values raw, others JSON.
    QwenXml,
}

/// The text that opens every call in both formats.
pub const CALL_OPEN: &str = "<tool_call>";

impl ToolFormat {
    /// The format a chat template writes calls in: XML when it shows `<function=`, Hermes
    /// when it shows `<tool_call>`; None when it defines no tool calls.
    pub fn from_template(source: &str) -> Option<ToolFormat> {
        Self::for_model("", source)
    }

    /// The format a model of architecture `arch` with chat template `template` writes:
    /// `qwen35` models were trained on the XML format (whatever their template shows),
    /// others as their template shows.
    pub fn for_model(arch: &str, source: &str) -> Option<ToolFormat> {
        if arch.starts_with("qwen35") {
            return Some(ToolFormat::QwenXml);
        }
        if source.contains("<function=") {
            Some(ToolFormat::QwenXml)
        } else if source.contains(CALL_OPEN) {
            Some(ToolFormat::Hermes)
        } else {
            None
        }
    }
}

/// A function the model may call: its name and the JSON schema of its arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    /// The function's name.
    pub name: String,
    /// The JSON schema of its arguments (an object schema; `{}` when not given).
    pub parameters: Value,
}

/// Which calls the output must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolMode {
    /// The model chooses: text, or calls once it opens one (`tool_choice: "auto"`).
    Auto,
    /// At least one call to any of the tools (`"required"`).
    Required,
    /// A call to this function (`{"type": "function", "function": {"name": ...}}`).
    Named(String),
}

/// The grammar of the tool calls the output may or must hold, and when it applies: in
/// `Auto` mode once the model writes `<tool_call>` (the grammar covers what follows), else
/// from the first token (or after `after`, such as the end of the model's reasoning). With
/// `parallel`, several calls may follow one another. Ends after the last call (only
/// end-of-generation may follow).
pub fn grammar(
    format: ToolFormat,
    tools: &[ToolSpec],
    mode: &ToolMode,
    parallel: bool,
    after: Option<&str>,
) -> Result<(Grammar, Start), ConstrainError> {
    let chosen: Vec<&ToolSpec> = match mode {
        ToolMode::Named(n) => {
            let t = tools
                .iter()
                .find(|t| &t.name == n)
                .ok_or_else(|| ConstrainError::Compile(format!("no tool is named `{n}`")))?;
            vec![t]
        }
        _ => tools.iter().collect(),
    };
    if chosen.is_empty() {
        return Err(ConstrainError::Compile("no tools were given".into()));
    }
    let mut lark = String::new();
    // One rule per tool: its whole call, `<tool_call>` included.
    let mut alts = Vec::new();
    for (i, t) in chosen.iter().enumerate() {
        let body = match format {
            ToolFormat::Hermes => hermes_body(t),
            ToolFormat::QwenXml => xml_body(t, i, &mut lark),
        };
        lark.push_str(&format!(
            "call_{i}: {} {body} {}\n",
            lit(CALL_OPEN),
            lit("\n</tool_call>")
        ));
        alts.push(format!("call_{i}"));
    }
    lark.push_str(&format!("call: {}\n", alts.join(" | ")));
    let more = if parallel { " (SEP call)*" } else { "" };
    lark.push_str("SEP: /[ \\t\\r\\n]{1,4}/\n");
    let (start, first) = match mode {
        // The trigger `<tool_call>` was the model's own: the grammar takes the rest of it.
        ToolMode::Auto => (Start::After(CALL_OPEN.to_string()), "first"),
        _ => (
            after.map_or(Start::Now, |a| Start::After(a.to_string())),
            if after.is_some() { "lead call" } else { "call" },
        ),
    };
    if let ToolMode::Auto = mode {
        // The first call's rest, after the `<tool_call>` the model wrote.
        let mut firsts = Vec::new();
        for i in 0..chosen.len() {
            firsts.push(format!("first_{i}"));
        }
        for (i, t) in chosen.iter().enumerate() {
            let body = match format {
                ToolFormat::Hermes => hermes_body(t),
                ToolFormat::QwenXml => format!("xml_{i}"),
            };
            lark.push_str(&format!("first_{i}: {body} {}\n", lit("\n</tool_call>")));
        }
        lark.push_str(&format!("first: {}\n", firsts.join(" | ")));
    }
    lark.push_str("lead: /[ \\t\\r\\n]{0,4}/\n");
    lark.push_str(&format!("start: {first}{more}\n"));
    Ok((Grammar::Lark(lark), start))
}

/// A Lark string literal.
fn lit(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    crate::gbnf::write_lark_string(&mut out, s);
    out
}

/// `x-guidance` options for every JSON part: whitespace between items is allowed but
/// bounded (a model cannot stall in whitespace forever).
pub fn json_options() -> Value {
    json!({"whitespace_pattern": "[\\x20\\x0A\\x0D\\x09]{0,16}"})
}

/// `schema` with the bounded-whitespace options added (unless it sets its own).
pub fn with_json_options(schema: &Value) -> Value {
    let mut s = schema.clone();
    if let Some(o) = s.as_object_mut() {
        o.entry("x-guidance").or_insert_with(json_options);
    }
    s
}

/// A tool's arguments schema, an object schema whatever was given.
fn params(t: &ToolSpec) -> Value {
    match &t.parameters {
        Value::Object(o) if !o.is_empty() => Value::Object(o.clone()),
        _ => json!({"type": "object"}),
    }
}

/// Hermes: `\n{"name": "NAME", "arguments": {...}}` as one JSON object.
fn hermes_body(t: &ToolSpec) -> String {
    let mut props = Map::new();
    props.insert("name".into(), json!({"const": t.name}));
    props.insert("arguments".into(), params(t));
    let mut schema = json!({
        "type": "object",
        "properties": props,
        "required": ["name", "arguments"],
        "additionalProperties": false,
    });
    schema["x-guidance"] = json_options();
    format!("{} %json {}", lit("\n"), schema)
}

/// XML: `\n<function=NAME>\n` then each parameter, then `</function>`. Adds the rules it
/// needs to `lark`; returns the body's rule.
fn xml_body(t: &ToolSpec, i: usize, lark: &mut String) -> String {
    let p = params(t);
    let props = p.get("properties").and_then(Value::as_object);
    let required: Vec<&str> = p
        .get("required")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut items = Vec::new();
    if let Some(props) = props {
        for (j, (name, schema)) in props.iter().enumerate() {
            let rule = format!("p_{i}_{j}");
            let open = lit(&format!("<parameter={name}>\n"));
            let choices = string_choices(schema);
            let value = if let Some(c) = choices {
                let alts: Vec<String> = c.iter().map(|v| lit(v)).collect();
                format!("({}) {}", alts.join(" | "), lit("\n</parameter>"))
            } else if is_string(schema) {
                // Raw text up to the first "\n</parameter>" (which the lazy rule includes),
                // at most `maxLength` characters when the schema says so.
                let rep = match max_length(schema) {
                    Some(n) => format!("{{0,{n}}}"),
                    None => "*".to_string(),
                };
                lark.push_str(&format!(
                    "{rule}_v[lazy]: /(.|\\n){rep}\\n<\\/parameter>/\n"
                ));
                format!("{rule}_v")
            } else {
                let s = with_json_options(schema);
                format!("%json {s} {}", lit("\n</parameter>"))
            };
            lark.push_str(&format!("{rule}: {open} {value} {}\n", lit("\n")));
            if required.contains(&name.as_str()) {
                items.push(rule);
            } else {
                items.push(format!("{rule}?"));
            }
        }
    }
    let head = lit(&format!("\n<function={}>\n", t.name));
    lark.push_str(&format!(
        "xml_{i}: {head} {} {}\n",
        items.join(" "),
        lit("</function>")
    ));
    format!("xml_{i}")
}

/// Whether a parameter's schema makes its value a string (written raw in the XML format).
pub fn is_string(schema: &Value) -> bool {
    match schema.get("type") {
        Some(Value::String(t)) => t == "string",
        Some(Value::Array(a)) => a.len() == 1 && a[0] == "string",
        _ => schema
            .get("enum")
            .and_then(Value::as_array)
            .is_some_and(|e| !e.is_empty() && e.iter().all(Value::is_string)),
    }
}

/// The values a string parameter may take when its schema lists them (`enum`, `const`).
fn string_choices(schema: &Value) -> Option<Vec<&str>> {
    if let Some(c) = schema.get("const").and_then(Value::as_str) {
        return Some(vec![c]);
    }
    let e = schema.get("enum")?.as_array()?;
    let v: Vec<&str> = e.iter().filter_map(Value::as_str).collect();
    (!v.is_empty() && v.len() == e.len()).then_some(v)
}

/// Longest raw string an XML parameter may hold: the schema's `maxLength`, when it has one
/// small enough to bound a regex (4,096).
fn max_length(schema: &Value) -> Option<u64> {
    schema
        .get("maxLength")
        .and_then(Value::as_u64)
        .filter(|&n| n <= 4096)
}
