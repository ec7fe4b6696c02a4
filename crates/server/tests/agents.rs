//! The API that agents use, driven by the official `openai` Python package against the
//! real server on qwen2.5-coder-0.5b: JSON schema output, tool calls (named, required,
//! streamed, a follow-up turn), several choices and bad requests (the script's asserts).
//! Skipped, with a message, where `openai` or `jsonschema` cannot be imported.

mod common;

use std::process::Command;

use common::*;
use server::Speculation;

#[test]
fn the_openai_client_gets_schemas_and_tool_calls() {
    if !python_has("openai, jsonschema") {
        return;
    }
    let file = registry::test_model("qwen2.5-coder-0.5b");
    let srv = start_file(file, 4, 32, 1024, Speculation::Off);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/agents_client.py");
    let out = Command::new("python3")
        .args([script, &base(&srv), MODEL])
        .output()
        .expect("running python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "the openai client failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("openai agents client OK"), "{stdout}");
    srv.shutdown();
}
