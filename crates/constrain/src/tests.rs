//! The constraint on a real vocabulary (Qwen2.5's 151,936 tokens): texts that match are
//! taken token by token, texts that do not are refused where they go wrong.

use serde_json::json;
use tokenizer::Tokenizer;

use super::*;
use crate::tools::{grammar, ToolFormat, ToolMode, ToolSpec};

fn qwen() -> Option<(Tokenizer, Vocabulary)> {
    let path = registry::test_model("qwen2.5-coder-0.5b");
    let g = gguf::Gguf::open(path).ok()?;
    let tok = Tokenizer::from_metadata(g.metadata()).unwrap();
    let v = Vocabulary::new(&tok, 151_936).unwrap();
    Some((tok, v))
}

/// Feeds `text` (special tokens parsed) through `c`: Ok when every token is allowed and
/// end-of-generation is allowed after the last; Err(the token index refused).
fn feed(c: &mut Constraint, tok: &Tokenizer, text: &str) -> Result<(), usize> {
    let ids = tok.encode(text, false, true);
    for (i, &id) in ids.iter().enumerate() {
        if !c.allows(id) {
            return Err(i);
        }
        c.consume(id);
    }
    let eos = tok.eog_ids()[0];
    if c.is_active() && !c.allows(eos) {
        return Err(ids.len());
    }
    Ok(())
}

#[test]
fn json_schema_accepts_matching_json_and_refuses_the_rest() {
    let Some((tok, v)) = qwen() else { return };
    let schema = json!({
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer"},
            "tags": {"type": "array", "items": {"enum": ["a", "b"]}},
        },
        "required": ["name", "age"],
        "additionalProperties": false,
    });
    let g = Grammar::JsonSchema(schema);
    let ok = r#"{"name": "Ann", "age": 31, "tags": ["a", "b"]}"#;
    let mut c = v.compile(&g, Start::Now).unwrap();
    assert_eq!(feed(&mut c, &tok, ok), Ok(()));
    assert!(c.is_finished());
    for bad in [
        r#"{"name": "Ann", "age": "31"}"#,
        r#"{"name": "Ann"}"#,
        r#"{"name": "Ann", "age": 1, "tags": ["c"]}"#,
        r#"{"name": "Ann", "age": 1, "x": 2}"#,
        "Sure! {",
    ] {
        let mut c = v.compile(&g, Start::Now).unwrap();
        assert!(feed(&mut c, &tok, bad).is_err(), "{bad} was accepted");
    }
}

#[test]
fn bad_grammars_are_errors_that_say_why() {
    let Some((_, v)) = qwen() else { return };
    let e = v
        .compile(
            &Grammar::JsonSchema(json!({"type": "nonsense"})),
            Start::Now,
        )
        .unwrap_err();
    assert!(e.to_string().contains("nonsense"), "{e}");
    let e = v
        .compile(&Grammar::Lark("start: foo".into()), Start::Now)
        .unwrap_err();
    assert!(e.to_string().contains("foo"), "{e}");
    assert!(v
        .compile(&Grammar::JsonSchema(json!([1])), Start::Now)
        .is_err());
}

#[test]
fn a_trigger_delays_the_grammar() {
    let Some((tok, v)) = qwen() else { return };
    let g = Grammar::Lark("start: \" yes\" | \" no\"".into());
    let mut c = v.compile(&g, Start::After("</think>".into())).unwrap();
    assert_eq!(feed(&mut c, &tok, "hmm, let me think</think> yes"), Ok(()));
    let mut c = v.compile(&g, Start::After("</think>".into())).unwrap();
    assert!(feed(&mut c, &tok, "hmm</think> maybe").is_err());
    // Free text until the trigger.
    let mut c = v.compile(&g, Start::After("</think>".into())).unwrap();
    assert_eq!(feed(&mut c, &tok, "anything at all"), Ok(()));
    assert!(!c.is_active());
}

fn weather() -> Vec<ToolSpec> {
    vec![
        ToolSpec {
            name: "get_weather".into(),
            parameters: json!({
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "days": {"type": "integer"},
                    "unit": {"enum": ["c", "f"]},
                },
                "required": ["city", "days"],
            }),
        },
        ToolSpec {
            name: "get_time".into(),
            parameters: json!({"type": "object", "properties": {"zone": {"type": "string"}}}),
        },
    ]
}

#[test]
fn hermes_calls_follow_the_named_tool() {
    let Some((tok, v)) = qwen() else { return };
    let tools = weather();
    let named = ToolMode::Named("get_weather".into());
    let (g, s) = grammar(ToolFormat::Hermes, &tools, &named, true, None).unwrap();
    let call = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": 3}}\n</tool_call>";
    let mut c = v.compile(&g, s.clone()).unwrap();
    assert_eq!(feed(&mut c, &tok, call), Ok(()));
    let two = format!("{call}\n{call}");
    let mut c = v.compile(&g, s.clone()).unwrap();
    assert_eq!(feed(&mut c, &tok, &two), Ok(()));
    for bad in [
        call.replace("get_weather", "get_time"),
        call.replace("3", "\"3\""),
        call.replace(", \"days\": 3", ""),
        format!("Sure. {call}"),
    ] {
        let mut c = v.compile(&g, s.clone()).unwrap();
        assert!(feed(&mut c, &tok, &bad).is_err(), "{bad} was accepted");
    }
    // Required: any tool; auto: text first, the call once opened.
    let (g, s) = grammar(ToolFormat::Hermes, &tools, &ToolMode::Required, false, None).unwrap();
    let t = "<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>";
    let mut c = v.compile(&g, s).unwrap();
    assert_eq!(feed(&mut c, &tok, t), Ok(()));
    let (g, s) = grammar(ToolFormat::Hermes, &tools, &ToolMode::Auto, false, None).unwrap();
    let mut c = v.compile(&g, s.clone()).unwrap();
    assert_eq!(feed(&mut c, &tok, &format!("Let me check.\n{t}")), Ok(()));
    let mut c = v.compile(&g, s.clone()).unwrap();
    assert_eq!(feed(&mut c, &tok, "No tool needed: it is 3pm."), Ok(()));
    let mut c = v.compile(&g, s).unwrap();
    assert!(feed(&mut c, &tok, "<tool_call>\n{\"name\": \"nope\"").is_err());
}

#[test]
fn xml_calls_write_strings_raw_and_the_rest_as_json() {
    let Some((tok, v)) = qwen() else { return };
    let tools = weather();
    let named = ToolMode::Named("get_weather".into());
    let (g, s) = grammar(ToolFormat::QwenXml, &tools, &named, false, None).unwrap();
    let call = "<tool_call>\n<function=get_weather>\n<parameter=city>\nNew York\n</parameter>\n<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>";
    let mut c = v.compile(&g, s.clone()).unwrap();
    assert_eq!(feed(&mut c, &tok, call), Ok(()));
    assert!(c.is_finished());
    let with_unit = call.replace(
        "3\n</parameter>\n</function>",
        "3\n</parameter>\n<parameter=unit>\nf\n</parameter>\n</function>",
    );
    let mut c = v.compile(&g, s.clone()).unwrap();
    assert_eq!(feed(&mut c, &tok, &with_unit), Ok(()));
    for bad in [
        call.replace("\n3\n", "\nthree\n"),
        call.replace("<parameter=city>\nNew York\n</parameter>\n", ""),
        with_unit.replace("\nf\n", "\nkelvin\n"),
    ] {
        let mut c = v.compile(&g, s.clone()).unwrap();
        assert!(feed(&mut c, &tok, &bad).is_err(), "{bad} was accepted");
    }
}

#[test]
fn drafts_are_checked_without_being_taken() {
    let Some((tok, v)) = qwen() else { return };
    let g = Grammar::JsonSchema(
        json!({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}),
    );
    let mut c = v.compile(&g, Start::Now).unwrap();
    let good = tok.encode("{\"a\": 12}", false, false);
    assert_eq!(c.valid_prefix(&good), good.len());
    let bad = tok.encode("{\"a\": \"x\"}", false, false);
    let n = c.valid_prefix(&bad);
    assert!(n < bad.len());
    // Nothing was taken: the good text still goes through.
    assert_eq!(feed(&mut c, &tok, "{\"a\": 12}"), Ok(()));
}

#[test]
fn grammar_text_is_lark_unless_it_looks_like_gbnf() {
    assert_eq!(
        Grammar::from_text("start: \"yes\" | \"no\""),
        Grammar::Lark("start: \"yes\" | \"no\"".into())
    );
    assert_eq!(
        Grammar::from_text("root ::= \"yes\" | \"no\"\n"),
        Grammar::Gbnf("root ::= \"yes\" | \"no\"\n".into())
    );
    // The marker line goes, whatever follows it on that line; `::=` after it is Lark's.
    assert_eq!(
        Grammar::from_text("  %llguidance {}\nstart: a\na ::= \"x\"\n"),
        Grammar::Lark("\nstart: a\na ::= \"x\"\n".into())
    );
    assert_eq!(
        Grammar::from_text("%llguidance"),
        Grammar::Lark(String::new())
    );
}

/// `apply` (a mask word at a time) refuses exactly the tokens `allows` refuses, at states
/// with few and with most tokens allowed, and every id past the vocabulary.
#[test]
fn apply_masks_exactly_what_allows_refuses() {
    let Some((tok, v)) = qwen() else { return };
    let g = Grammar::JsonSchema(json!({
        "type": "object",
        "properties": {"s": {"type": "string"}, "e": {"enum": ["red", "green"]}},
        "required": ["s", "e"],
    }));
    let mut c = v.compile(&g, Start::Now).unwrap();
    // Before `{`, inside a string, inside an enum, after the end.
    let text = r#"{"s": "ab", "e": "gr"#;
    let ids = tok.encode(text, false, false);
    let mut checked = 0;
    for (i, &id) in ids.iter().enumerate() {
        if i == 0 || i == 5 || i + 1 == ids.len() {
            // A row longer than the vocabulary: the ids past it are refused too.
            let mut row = vec![1.0f32; v.n_vocab() + 40];
            c.apply(&mut row);
            let mut n_allowed = 0;
            for (t, &l) in row.iter().enumerate() {
                let want = t < v.n_vocab() && c.allows(t as u32);
                assert_eq!(l == 1.0, want, "token {t} at step {i}");
                assert!(l == 1.0 || l == f32::NEG_INFINITY);
                n_allowed += usize::from(want);
            }
            assert!(n_allowed > 0 && n_allowed < v.n_vocab());
            assert!(row[id as usize] == 1.0);
            checked += 1;
        }
        c.consume(id);
    }
    assert_eq!(checked, 3);
}

#[test]
fn xml_strings_keep_to_their_max_length() {
    let Some((tok, v)) = qwen() else { return };
    let tools = vec![ToolSpec {
        name: "f".into(),
        parameters: json!({"type": "object", "properties": {"s": {"type": "string", "maxLength": 5}}, "required": ["s"]}),
    }];
    let (g, s) = grammar(
        ToolFormat::QwenXml,
        &tools,
        &ToolMode::Required,
        false,
        None,
    )
    .unwrap();
    let call = |v: &str| {
        format!("<tool_call>\n<function=f>\n<parameter=s>\n{v}\n</parameter>\n</function>\n</tool_call>")
    };
    let mut c = v.compile(&g, s.clone()).unwrap();
    assert_eq!(feed(&mut c, &tok, &call("ab\ncd")), Ok(()));
    let mut c = v.compile(&g, s).unwrap();
    assert!(feed(&mut c, &tok, &call("abcdefgh")).is_err());
}
