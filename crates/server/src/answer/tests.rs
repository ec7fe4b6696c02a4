//! The answer parsers, whole and streamed in pieces of every size.
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
    let args =
        r#"{"query":"Paris","limit":3,"exact":true,"note":"3 apples","filter":{"lang":["fr"]}}"#;
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
