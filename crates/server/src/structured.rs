//! The request fields that shape the output: `response_format`, `grammar`, `tools`,
//! `tool_choice`, `logit_bias`; checked, then compiled into the sequence's constraint.

use constrain::tools::{self, ToolFormat, ToolMode, ToolSpec};
use constrain::{ConstrainError, Constraint, Grammar, Start, Vocabulary};
use serde_json::{Map, Value};

use crate::error::ApiError;

/// The tools a chat request offers and how they may be used.
#[derive(Debug, Clone)]
pub struct Tools {
    /// Each function's name and parameter schema.
    pub specs: Vec<ToolSpec>,
    /// `tools` as sent, for the chat template.
    pub raw: Value,
    /// `None`: `tool_choice: "none"` (no calls are parsed or constrained).
    pub mode: Option<ToolMode>,
    /// Several calls may follow one another (`parallel_tool_calls`, default true).
    pub parallel: bool,
}

/// An output grammar and the request field it came from (for errors).
#[derive(Debug, Clone)]
pub struct OutputGrammar {
    /// What the output must match.
    pub grammar: Grammar,
    /// `response_format`, `grammar` or `json_schema`.
    pub param: &'static str,
}

/// Reads `response_format`: `text` (nothing), `json_object` (any object, or llama.cpp's
/// `schema` beside it) or `json_schema` with `{"name", "schema", "strict"}`.
pub fn response_format(v: Option<&Value>) -> Result<Option<OutputGrammar>, ApiError> {
    let p = "response_format";
    let v = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(v) => v,
    };
    let o = v.as_object().ok_or_else(|| {
        ApiError::param(
            p,
            "response_format must be an object such as {\"type\": \"json_object\"}",
        )
    })?;
    let schema = |s: &Value| -> Result<Grammar, ApiError> {
        if !s.is_object() {
            return Err(ApiError::param(p, "the JSON schema must be an object"));
        }
        Ok(Grammar::JsonSchema(tools::with_json_options(s)))
    };
    let grammar = match o.get("type").and_then(Value::as_str) {
        Some("text") => return Ok(None),
        Some("json_object") => match o.get("schema") {
            Some(s) if !s.is_null() => schema(s)?,
            _ => Grammar::JsonSchema(tools::with_json_options(
                &serde_json::json!({"type": "object"}),
            )),
        },
        Some("json_schema") => {
            let js = o.get("json_schema").and_then(Value::as_object).ok_or_else(|| {
                ApiError::param(
                    p,
                    "response_format of type json_schema needs \"json_schema\": {\"name\": ..., \"schema\": {...}}",
                )
            })?;
            if let Some(n) = js.get("name") {
                if !n.is_string() {
                    return Err(ApiError::param(
                        p,
                        "response_format.json_schema.name must be a string",
                    ));
                }
            }
            match js.get("schema") {
                Some(s) => schema(s)?,
                None => Grammar::JsonSchema(tools::with_json_options(&serde_json::json!({}))),
            }
        }
        Some(t) => {
            return Err(ApiError::param(
                p,
                format!(
                "response_format type `{t}` is not supported (text, json_object or json_schema)"
            ),
            ))
        }
        None => return Err(ApiError::param(p, "response_format.type must be a string")),
    };
    Ok(Some(OutputGrammar { grammar, param: p }))
}

/// Reads `grammar` (an extension, as llama.cpp's server has it): GBNF when it has `::=`,
/// else llguidance's Lark (`%llguidance` before it, as llama.cpp writes it, is dropped).
pub fn grammar(v: Option<&Value>) -> Result<Option<OutputGrammar>, ApiError> {
    let g = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => s,
        Some(_) => return Err(ApiError::param("grammar", "grammar must be a string")),
    };
    if g.trim().is_empty() {
        return Ok(None);
    }
    let grammar = Grammar::from_text(g);
    Ok(Some(OutputGrammar {
        grammar,
        param: "grammar",
    }))
}

/// Reads `json_schema` (llama.cpp's extension: the schema itself).
pub fn json_schema(v: Option<&Value>) -> Result<Option<OutputGrammar>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(s) if s.is_object() => Ok(Some(OutputGrammar {
            grammar: Grammar::JsonSchema(tools::with_json_options(s)),
            param: "json_schema",
        })),
        Some(_) => Err(ApiError::param(
            "json_schema",
            "json_schema must be an object",
        )),
    }
}

/// At most one of the output grammars.
pub fn one_grammar(gs: [Option<OutputGrammar>; 3]) -> Result<Option<OutputGrammar>, ApiError> {
    let mut given = gs.into_iter().flatten();
    let first = given.next();
    if let (Some(a), Some(b)) = (&first, given.next()) {
        return Err(ApiError::param(
            b.param,
            format!("only one of {} and {} may be given", a.param, b.param),
        ));
    }
    Ok(first)
}

/// Whether `name` is a valid function name (OpenAI's rule: 1 to 64 of a-z, A-Z, 0-9, `_`
/// and `-`).
fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Reads `tools`, `tool_choice` and `parallel_tool_calls` (also the deprecated `functions`
/// and `function_call`).
pub fn tools(
    tools: Option<&Value>,
    choice: Option<&Value>,
    parallel: Option<&Value>,
) -> Result<Option<Tools>, ApiError> {
    let arr = match tools {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) => Some(a),
        Some(_) => return Err(ApiError::param("tools", "tools must be an array")),
    };
    let parallel = match parallel {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(ApiError::param(
                "parallel_tool_calls",
                "parallel_tool_calls must be a boolean",
            ))
        }
    };
    let Some(arr) = arr.filter(|a| !a.is_empty()) else {
        return match choice {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s == "none" || s == "auto" => Ok(None),
            Some(_) => Err(ApiError::param(
                "tool_choice",
                "tool_choice is only allowed when tools are given",
            )),
        };
    };
    let mut specs = Vec::with_capacity(arr.len());
    for (i, t) in arr.iter().enumerate() {
        let p = format!("tools[{i}]");
        let o = t
            .as_object()
            .ok_or_else(|| ApiError::param(&p, format!("{p} must be an object")))?;
        match o.get("type").and_then(Value::as_str) {
            Some("function") => {}
            Some(other) => {
                return Err(ApiError::param(
                    &format!("{p}.type"),
                    format!("{p}.type `{other}` is not supported (only \"function\" tools are)"),
                ))
            }
            None => {
                return Err(ApiError::param(
                    &format!("{p}.type"),
                    format!("{p}.type must be \"function\""),
                ))
            }
        }
        let f = o
            .get("function")
            .and_then(Value::as_object)
            .ok_or_else(|| {
                ApiError::param(
                    &format!("{p}.function"),
                    format!("{p}.function must be an object with a name"),
                )
            })?;
        let name = f.get("name").and_then(Value::as_str).unwrap_or_default();
        if !valid_name(name) {
            return Err(ApiError::param(
                &format!("{p}.function.name"),
                format!(
                    "{p}.function.name must be 1 to 64 letters, digits, `_` or `-`, got {name:?}"
                ),
            ));
        }
        if specs.iter().any(|s: &ToolSpec| s.name == name) {
            return Err(ApiError::param(
                &format!("{p}.function.name"),
                format!("two tools are named `{name}`"),
            ));
        }
        let parameters = match f.get("parameters") {
            None | Some(Value::Null) => serde_json::json!({"type": "object", "properties": {}}),
            Some(v @ Value::Object(_)) => v.clone(),
            Some(_) => {
                return Err(ApiError::param(
                    &format!("{p}.function.parameters"),
                    format!("{p}.function.parameters must be a JSON schema object"),
                ))
            }
        };
        specs.push(ToolSpec {
            name: name.to_string(),
            parameters,
        });
    }
    let mode = match choice {
        None | Some(Value::Null) => Some(ToolMode::Auto),
        Some(Value::String(s)) => match s.as_str() {
            "none" => None,
            "auto" => Some(ToolMode::Auto),
            "required" => Some(ToolMode::Required),
            other => {
                return Err(ApiError::param(
                    "tool_choice",
                    format!("tool_choice `{other}` is not one of none, auto, required or {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}"),
                ))
            }
        },
        Some(Value::Object(o)) => {
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    ApiError::param(
                        "tool_choice",
                        "tool_choice must be {\"type\": \"function\", \"function\": {\"name\": ...}}",
                    )
                })?;
            if !specs.iter().any(|s| s.name == name) {
                return Err(ApiError::param(
                    "tool_choice",
                    format!("tool_choice names `{name}`, which is not one of the tools"),
                ));
            }
            Some(ToolMode::Named(name.to_string()))
        }
        Some(_) => {
            return Err(ApiError::param(
                "tool_choice",
                "tool_choice must be a string or an object",
            ))
        }
    };
    Ok(Some(Tools {
        specs,
        raw: Value::Array(arr.clone()),
        mode,
        parallel,
    }))
}

/// Reads `logit_bias`: token ids (as strings) to a bias in [-100, 100].
pub fn logit_bias(
    b: Option<&Map<String, Value>>,
    n_vocab: usize,
) -> Result<Vec<(u32, f32)>, ApiError> {
    let Some(b) = b else {
        return Ok(Vec::new());
    };
    let p = "logit_bias";
    let mut out = Vec::with_capacity(b.len());
    for (k, v) in b {
        let id = k
            .parse::<u32>()
            .ok()
            .filter(|&id| (id as usize) < n_vocab)
            .ok_or_else(|| {
                ApiError::param(
                    p,
                    format!("logit_bias keys must be token ids in [0, {n_vocab}), got {k:?}"),
                )
            })?;
        let bias = v
            .as_f64()
            .filter(|x| (-100.0..=100.0).contains(x))
            .ok_or_else(|| {
                ApiError::param(
                    p,
                    format!("logit_bias values must be numbers in [-100, 100], got {v}"),
                )
            })?;
        out.push((id, bias as f32));
    }
    Ok(out)
}

/// An assistant message's `tool_calls` as chat templates expect them: each
/// `{"id", "type": "function", "function": {"name", "arguments"}}` with the arguments parsed
/// into an object (templates print them with `tojson`).
pub fn assistant_tool_calls(v: &Value, param: &str) -> Result<Value, ApiError> {
    let arr = v
        .as_array()
        .ok_or_else(|| ApiError::param(param, format!("{param}.tool_calls must be an array")))?;
    let mut out = Vec::with_capacity(arr.len());
    for (i, c) in arr.iter().enumerate() {
        let p = format!("{param}.tool_calls[{i}]");
        let f = c
            .get("function")
            .and_then(Value::as_object)
            .ok_or_else(|| {
                ApiError::param(
                    &p,
                    format!("{p}.function must be an object with name and arguments"),
                )
            })?;
        let name = f
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::param(&p, format!("{p}.function.name must be a string")))?;
        let args = match f.get("arguments") {
            None | Some(Value::Null) => Value::Object(Map::new()),
            Some(Value::String(s)) if s.trim().is_empty() => Value::Object(Map::new()),
            Some(Value::String(s)) => serde_json::from_str(s).map_err(|e| {
                ApiError::param(&p, format!("{p}.function.arguments is not valid JSON: {e}"))
            })?,
            Some(v) => v.clone(),
        };
        let mut call = Map::new();
        if let Some(id) = c.get("id") {
            call.insert("id".into(), id.clone());
        }
        call.insert("type".into(), "function".into());
        let mut func = Map::new();
        func.insert("name".into(), name.into());
        func.insert("arguments".into(), args);
        call.insert("function".into(), Value::Object(func));
        out.push(Value::Object(call));
    }
    Ok(Value::Array(out))
}

/// The constraint of a request: its tool calls (required or named: from the first token,
/// or after the reasoning when the prompt opened it; auto: once the model opens a call),
/// else its output grammar. None when nothing constrains the output.
pub fn constraint(
    vocab: &Vocabulary,
    format: Option<ToolFormat>,
    tools: Option<&Tools>,
    output: Option<&OutputGrammar>,
    thinking_open: bool,
) -> Result<Option<Constraint>, ApiError> {
    let after = thinking_open.then_some("</think>");
    let tool_mode = tools.and_then(|t| t.mode.as_ref().map(|m| (t, m)));
    let compile_err = |param: &str, e: ConstrainError| {
        ApiError::param(param, format!("{param} cannot be used: {e}"))
    };
    if let Some((t, mode)) = tool_mode {
        let forced = !matches!(mode, ToolMode::Auto);
        if forced || output.is_none() {
            let Some(format) = format else {
                return Err(ApiError::param(
                    "tools",
                    "this model's chat template defines no tool-call format this server can parse (Hermes <tool_call> JSON or Qwen3.5 XML); send tool_choice \"none\" or no tools",
                )
                .code("unsupported_parameter"));
            };
            let (g, start) = tools::grammar(format, &t.specs, mode, t.parallel, after)
                .map_err(|e| compile_err("tools", e))?;
            return vocab
                .compile(&g, start)
                .map(Some)
                .map_err(|e| compile_err("tools", e));
        }
    }
    let Some(o) = output else {
        return Ok(None);
    };
    let start = after.map_or(Start::Now, |a| Start::After(a.to_string()));
    let grammar = match (&o.grammar, after) {
        // After the reasoning the model usually puts a blank line before the answer.
        (Grammar::JsonSchema(s), Some(_)) => Grammar::Lark(format!(
            "start: lead %json {s}\nlead: /[ \\t\\r\\n]{{0,4}}/\n"
        )),
        (g, _) => g.clone(),
    };
    vocab
        .compile(&grammar, start)
        .map(Some)
        .map_err(|e| compile_err(o.param, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn qwen() -> Option<(tokenizer::Tokenizer, Vocabulary)> {
        let g = gguf::Gguf::open(registry::test_model("qwen2.5-coder-0.5b")).ok()?;
        let tok = tokenizer::Tokenizer::from_metadata(g.metadata()).ok()?;
        let v = Vocabulary::new(&tok, 151_936).ok()?;
        Some((tok, v))
    }

    /// Whether `text` goes through `c` token by token, end-of-generation allowed after it.
    fn accepts(c: &mut Constraint, tok: &tokenizer::Tokenizer, text: &str) -> bool {
        for id in tok.encode(text, false, true) {
            if !c.allows(id) {
                return false;
            }
            c.consume(id);
        }
        c.allows(tok.eog_ids()[0])
    }

    /// With the prompt inside a think block, a schema applies after `</think>` and the
    /// blank line models put there.
    #[test]
    fn a_schema_after_reasoning_allows_the_blank_line() {
        let Some((tok, v)) = qwen() else { return };
        let out = response_format(Some(&json!({"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}}})))
            .unwrap()
            .unwrap();
        let mut c = constraint(&v, None, None, Some(&out), true)
            .unwrap()
            .unwrap();
        assert!(accepts(
            &mut c,
            &tok,
            "Let me see.\n</think>\n\n{\"ok\": true}"
        ));
        let mut c = constraint(&v, None, None, Some(&out), true)
            .unwrap()
            .unwrap();
        assert!(!accepts(
            &mut c,
            &tok,
            "Let me see.\n</think>\n\nSure: {\"ok\": true}"
        ));
        let mut c = constraint(&v, None, None, Some(&out), false)
            .unwrap()
            .unwrap();
        assert!(accepts(&mut c, &tok, "{\"ok\": false}"));
    }
}
