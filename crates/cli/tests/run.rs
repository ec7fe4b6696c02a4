//! `surplus run`, `perplexity` and `bench` end to end: the JSON each prints.

use std::process::Command;

use serde_json::Value;
use testkit::golden;

fn surplus(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_surplus"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

#[test]
fn run_json_greedy_matches_the_oracle_start() {
    let model = registry::test_model("smollm2-135m");
    let g = golden("f64/smollm2-135m-instruct-q4_1");
    // "1, 2, 3, 4, 5,": the oracle's top two are more than 3 nats apart at every step
    // compared (prompt 1's first step is a near-tie, 0.07 nats, which rounding can flip).
    let case = &g["greedy"][4];
    let prompt = golden("smollm2-135m-instruct-q4_1")["greedy"][4]["prompt"]
        .as_str()
        .unwrap()
        .to_string();
    let j = surplus(&[
        "run",
        "-m",
        model.to_str().unwrap(),
        "-p",
        &prompt,
        "-n",
        "6",
        "--temp",
        "0",
        "--ignore-eos",
        "--logprobs",
        "3",
        "-t",
        "2",
        "--json",
    ]);
    assert_eq!(j["prompt_tokens"], case["prompt_ids"]);
    let tokens = j["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 6);
    assert_eq!(
        tokens[..3],
        case["f64_greedy_tokens"].as_array().unwrap()[..3]
    );
    let lp = j["logprobs"].as_array().unwrap();
    assert_eq!(lp.len(), 6);
    for (step, t) in lp.iter().zip(tokens) {
        let top = step.as_array().unwrap();
        assert_eq!(top.len(), 3);
        assert_eq!(&top[0][0], t, "greedy picks the top log-prob");
        assert!(top[0][1].as_f64().unwrap() <= 0.0);
    }
    assert!(j["timings"]["generation_tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(!j["text"].as_str().unwrap().is_empty());
}

#[test]
fn perplexity_json_matches_the_oracle_running_value() {
    let model = registry::test_model("qwen2.5-coder-0.5b");
    let text = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/data/golden/GPL-3.txt"
    );
    let j = surplus(&[
        "perplexity",
        "-m",
        model.to_str().unwrap(),
        "-f",
        text,
        "-c",
        "128",
        "--chunks",
        "3",
        "-t",
        "2",
        "--json",
    ]);
    let want = golden("f64/qwen2.5-coder-0.5b-instruct-q4")["perplexity"]["f64_running"][2]
        .as_f64()
        .unwrap();
    let ppl = j["ppl"].as_f64().unwrap();
    assert_eq!(j["chunks"], 3);
    assert!((ppl / want - 1.0).abs() < 0.01, "{ppl} vs {want}");
}

#[test]
fn bench_json_reports_both_tests() {
    let model = registry::test_model("smollm2-135m");
    let j = surplus(&[
        "bench",
        "-m",
        model.to_str().unwrap(),
        "-p",
        "16",
        "-n",
        "4",
        "-r",
        "1",
        "-t",
        "2",
        "--json",
    ]);
    assert!(j["pp"]["tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(j["tg"]["tokens_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(j["n_prompt"], 16);
}

#[test]
fn run_with_speculation_reports_it_and_keeps_greedy_output() {
    let model = registry::test_model("smollm2-135m");
    let m = model.to_str().unwrap();
    let base = [
        "run",
        "-m",
        m,
        "-p",
        "1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1, 2, 3,",
        "-n",
        "16",
        "--temp",
        "0",
        "--ignore-eos",
        "-t",
        "2",
        "--json",
    ];
    let plain = surplus(&base);
    assert!(plain.get("speculative").is_none());
    let mut with = base.to_vec();
    with.extend(["--spec", "ngram", "--draft-max", "4"]);
    let spec = surplus(&with);
    assert_eq!(spec["tokens"], plain["tokens"]);
    let s = &spec["speculative"];
    assert_eq!(s["drafter"], "ngram");
    assert!(s["drafted"].as_u64().unwrap() >= s["accepted"].as_u64().unwrap());
    assert!(s["acceptance_by_position"].is_array());
    // A draft model is needed for --spec draft, and must share the tokenizer.
    for (extra, needle) in [
        (&["--spec", "draft"][..], "--draft-model"),
        (&["--draft-model", "gemma3-270m"][..], "tokenizer"),
        (&["--spec", "ngram", "--draft-max", "9"][..], "--draft-max"),
    ] {
        let mut args = base.to_vec();
        args.extend(extra);
        let out = Command::new(env!("CARGO_BIN_EXE_surplus"))
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{extra:?}: {err}");
        assert!(err.contains(needle), "{extra:?}: {err}");
    }
}

#[test]
fn qwen35_speculates_with_its_mtp_block_by_default() {
    if fixtures_missing() {
        return;
    }
    let model = format!(
        "{}/../../tests/data/synthetic/qwen35-tiny-q8_0.gguf",
        env!("CARGO_MANIFEST_DIR")
    );
    let args = |spec: Option<&'static str>| {
        let mut a = vec![
            "run",
            "-m",
            &model,
            "-p",
            "1, 2, 3, 4, 5,",
            "-n",
            "24",
            "--temp",
            "0",
            "--ignore-eos",
            "-t",
            "2",
            "--json",
        ];
        if let Some(s) = spec {
            a.extend(["--spec", s, "--draft-max", "3", "--draft-fixed"]);
        }
        surplus(&a.iter().map(|s| &**s).collect::<Vec<_>>())
    };
    let plain = surplus(&[
        "run",
        "-m",
        &model,
        "-p",
        "1, 2, 3, 4, 5,",
        "-n",
        "24",
        "--temp",
        "0",
        "--ignore-eos",
        "-t",
        "2",
        "--json",
        "--spec",
        "none",
    ]);
    assert!(plain["speculative"].is_null());
    let by_default = args(None);
    assert_eq!(by_default["speculative"]["drafter"], "mtp");
    let fixed = args(Some("mtp"));
    assert!(fixed["speculative"]["drafted"].as_u64().unwrap() > 0);
    for j in [&by_default, &fixed] {
        assert_eq!(
            j["text"], plain["text"],
            "greedy text changed by MTP speculation"
        );
    }
}

/// `surplus synth` of both shapes, shrunk: each file loads, generates, and benchmarks;
/// the qwen35 one drafts with its MTP block by default and keeps the greedy text.
#[test]
fn synth_writes_models_that_run() {
    let dir = std::env::temp_dir().join(format!("surplus-synth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let small = [
        "--embd",
        "256",
        "--layers",
        "4",
        "--heads",
        "2",
        "--kv-heads",
        "1",
        "--ff",
        "512",
        "--vocab",
        "600",
    ];
    for shape in ["llama3-8b", "qwen3.6-27b"] {
        let file = dir.join(format!("{shape}.gguf"));
        let f = file.to_str().unwrap();
        let mut args = vec!["synth", f, "--shape", shape];
        args.extend(small);
        if shape == "qwen3.6-27b" {
            args.extend(["--delta-heads", "2"]);
        }
        let out = Command::new(env!("CARGO_BIN_EXE_surplus"))
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let run = |spec: &str| {
            surplus(&[
                "run",
                "-m",
                f,
                "-p",
                "t5 t6 t7",
                "-n",
                "12",
                "--temp",
                "0",
                "--ignore-eos",
                "-t",
                "2",
                "--json",
                "--spec",
                spec,
            ])
        };
        let plain = run("none");
        assert_eq!(
            plain["tokens"].as_array().map(Vec::len),
            Some(12),
            "{shape}: {plain}"
        );
        if shape == "qwen3.6-27b" {
            let mtp = run("mtp");
            assert_eq!(mtp["speculative"]["drafter"], "mtp");
            assert_eq!(mtp["text"], plain["text"], "{shape}: MTP changed the text");
        }
        let b = surplus(&[
            "bench", "-m", f, "-p", "8", "-n", "2", "-r", "1", "-t", "2", "--json",
        ]);
        assert!(b["tg"]["tokens_per_s"].as_f64().unwrap() > 0.0);
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// The fixture's model files (GGUF weights, embedding dumps) are not in git: `scripts/
/// fixtures.sh` copies them into tests/data. Without them a test that needs them is skipped
/// and says so.
fn fixtures_missing() -> bool {
    testkit::fixtures_missing(testkit::QWEN35)
}

/// `--stop` cuts the text before the stop string, and the streamed text never shows the
/// start of a stop string that then appears (it is held back until known).
#[test]
fn run_stops_at_a_stop_string_without_printing_its_start() {
    let model = registry::test_model("smollm2-135m");
    let m = model.to_str().unwrap();
    let args = |json: bool| {
        let mut a = vec![
            "run",
            "-m",
            m,
            "-p",
            "1, 2, 3, 4, 5,",
            "-n",
            "20",
            "--temp",
            "0",
            "--ignore-eos",
            "-t",
            "2",
            "--stop",
            " 7, 8",
        ];
        if json {
            a.push("--json");
        }
        a
    };
    let j = surplus(&args(true));
    assert_eq!(j["finish_reason"], "stop");
    assert_eq!(j["text"], " 6,");
    let out = Command::new(env!("CARGO_BIN_EXE_surplus"))
        .args(args(false))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1, 2, 3, 4, 5, 6,\n");
}

/// Runs `surplus` with `args`; returns (success, stdout, stderr).
fn surplus_output(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_surplus"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `--json-schema`: the output is JSON valid for the schema, and generation ends when it
/// is complete (well before the token limit).
#[test]
fn run_with_a_json_schema_writes_json_valid_for_it() {
    let model = registry::test_model("qwen2.5-coder-0.5b");
    let dir = tempfile::tempdir().unwrap();
    let schema = dir.path().join("person.json");
    std::fs::write(
        &schema,
        r#"{
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 20},
                "age": {"type": "integer", "minimum": 0, "maximum": 120},
                "languages": {
                    "type": "array",
                    "items": {"enum": ["rust", "python", "c"]},
                    "minItems": 1,
                    "maxItems": 3
                }
            },
            "required": ["name", "age", "languages"],
            "additionalProperties": false
        }"#,
    )
    .unwrap();
    let j = surplus(&[
        "run",
        "-m",
        model.to_str().unwrap(),
        "-p",
        "Describe a programmer as JSON: ",
        "--json-schema",
        schema.to_str().unwrap(),
        "-n",
        "100",
        "--temp",
        "0",
        "-t",
        "2",
        "--json",
    ]);
    assert_eq!(j["finish_reason"], "eos", "{j}");
    let text = j["text"].as_str().unwrap();
    let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
    let o = v.as_object().unwrap();
    let mut keys: Vec<&str> = o.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["age", "languages", "name"], "{text}");
    assert!(o["name"].as_str().unwrap().chars().count() <= 20, "{text}");
    let age = o["age"].as_u64().unwrap();
    assert!(age <= 120, "{text}");
    let langs = o["languages"].as_array().unwrap();
    assert!((1..=3).contains(&langs.len()), "{text}");
    for l in langs {
        assert!(
            ["rust", "python", "c"].contains(&l.as_str().unwrap()),
            "{text}"
        );
    }
}

/// `--grammar` with a Lark file: the output is exactly one of its two words.
#[test]
fn run_with_a_lark_grammar_answers_yes_or_no() {
    let model = registry::test_model("qwen2.5-coder-0.5b");
    let dir = tempfile::tempdir().unwrap();
    let lark = dir.path().join("yn.lark");
    std::fs::write(&lark, "start: \"yes\" | \"no\"\n").unwrap();
    for (prompt, temp) in [
        ("Is the sky blue? Answer: ", "0"),
        ("Is fire cold? Answer: ", "1.5"),
    ] {
        let j = surplus(&[
            "run",
            "-m",
            model.to_str().unwrap(),
            "-p",
            prompt,
            "--grammar",
            lark.to_str().unwrap(),
            "-n",
            "10",
            "--temp",
            temp,
            "--seed",
            "7",
            "-t",
            "2",
            "--json",
        ]);
        let text = j["text"].as_str().unwrap();
        assert!(text == "yes" || text == "no", "{text:?}");
        assert_eq!(j["finish_reason"], "eos");
    }
}

/// A schema that does not compile, a file that is not JSON or is missing, and two
/// constraints at once: a non-zero exit and a message naming the file.
#[test]
fn run_with_a_bad_schema_fails_naming_the_file() {
    let model = registry::test_model("qwen2.5-coder-0.5b");
    let m = model.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad-schema.json");
    std::fs::write(&bad, r#"{"type": "nonsense"}"#).unwrap();
    let not_json = dir.path().join("not-json.json");
    std::fs::write(&not_json, "{\"type\": ").unwrap();
    let missing = dir.path().join("missing.json");
    let bad_lark = dir.path().join("bad.lark");
    std::fs::write(&bad_lark, "start: undefined_rule\n").unwrap();
    for (flag, file, says) in [
        ("--json-schema", &bad, "nonsense"),
        ("--json-schema", &not_json, "not valid JSON"),
        ("--json-schema", &missing, "reading"),
        ("--grammar", &bad_lark, "undefined_rule"),
    ] {
        let (ok, _, err) = surplus_output(&[
            "run",
            "-m",
            m,
            "-p",
            "x",
            "-n",
            "2",
            "-t",
            "2",
            flag,
            file.to_str().unwrap(),
        ]);
        assert!(!ok, "{file:?} was accepted");
        let name = file.file_name().unwrap().to_str().unwrap();
        assert!(err.contains(name) && err.contains(says), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let (ok, _, err) = surplus_output(&[
        "run",
        "-m",
        m,
        "-p",
        "x",
        "--json-schema",
        bad.to_str().unwrap(),
        "--grammar",
        bad_lark.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("cannot be used with"), "{err}");
}

#[test]
fn run_with_a_q8_0_kv_cache_keeps_the_greedy_start() {
    let model = registry::test_model("smollm2-135m");
    let g = golden("f64/smollm2-135m-instruct-q4_1");
    // The "1, 2, 3, 4, 5," prompt, whose first steps are far from ties (see above).
    let case = &g["greedy"][4];
    let prompt = golden("smollm2-135m-instruct-q4_1")["greedy"][4]["prompt"]
        .as_str()
        .unwrap()
        .to_string();
    let j = surplus(&[
        "run",
        "-m",
        model.to_str().unwrap(),
        "-p",
        &prompt,
        "-n",
        "4",
        "--temp",
        "0",
        "--ignore-eos",
        "-t",
        "2",
        "--gpu-layers",
        "0",
        "-ctk",
        "q8_0",
        "-ctv",
        "q8_0",
        "--json",
    ]);
    assert_eq!(j["prompt_tokens"], case["prompt_ids"]);
    let tokens = j["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 4);
    assert_eq!(
        tokens[..3],
        case["f64_greedy_tokens"].as_array().unwrap()[..3]
    );
}
