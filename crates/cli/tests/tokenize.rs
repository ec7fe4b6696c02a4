//! `surplus tokenize` and `surplus template` end to end against the goldens.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;
use testkit::golden;

fn surplus(args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_surplus"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

const MODELS: &[(&str, &str)] = &[
    ("smollm2-135m", "smollm2-135m-instruct-q4_1"),
    ("gemma3-270m", "gemma3-270m-q4_k_m"),
    ("qwen2.5-coder-0.5b", "qwen2.5-coder-0.5b-instruct-q4"),
];

#[test]
fn tokenize_json_matches_the_goldens_in_all_modes() {
    for (name, file) in MODELS {
        let path = registry::test_model(name);
        let model = path.to_str().unwrap();
        let g = golden(file);
        // The case with special-token text and the multilingual one.
        for case in g["tokenize"].as_array().unwrap().iter().skip(6) {
            let text = case["text"].as_str().unwrap();
            if text.is_empty() {
                continue;
            }
            for (flags, key) in [
                (&[][..], "ids_parse_special"),
                (&["--no-parse-special"][..], "ids_plain"),
                (&["--add-special"][..], "ids_with_bos"),
            ] {
                let mut args = vec!["tokenize", "-m", model, "--json"];
                args.extend(flags);
                args.push("-");
                let (code, out, err) = surplus(&args, Some(text));
                assert_eq!(code, 0, "{err}");
                let ids: Value = serde_json::from_str(&out).unwrap();
                assert_eq!(ids, case[key], "{name} {key} {text:?}");
            }
        }
    }
}

#[test]
fn template_renders_the_golden_prompts() {
    let dir = tempfile::tempdir().unwrap();
    for (name, file) in MODELS {
        let path = registry::test_model(name);
        for (i, case) in golden(file)["chat_template"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
        {
            let msgs = dir.path().join(format!("{name}-{i}.json"));
            std::fs::write(&msgs, case["messages"].to_string()).unwrap();
            let (code, out, err) = surplus(
                &[
                    "template",
                    "-m",
                    path.to_str().unwrap(),
                    "--messages",
                    msgs.to_str().unwrap(),
                    "--json",
                ],
                None,
            );
            assert_eq!(code, 0, "{err}");
            let v: Value = serde_json::from_str(&out).unwrap();
            assert_eq!(v["prompt"], case["prompt"], "{name} {i}");
        }
    }
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"[{"role": "wizard", "content": "hi"}]"#).unwrap();
    let (code, _, err) = surplus(&["template", "--messages", bad.to_str().unwrap()], None);
    assert_eq!(code, 1);
    assert!(err.contains("wizard"), "{err}");
}
