//! The official `openai` Python package against the real server: a plain and a streaming
//! chat (skipped, with a message, where `python3 -c "import openai"` fails; CI installs it).

mod common;

use std::process::Command;

use common::*;

#[test]
fn the_official_openai_client_works() {
    if !python_has("openai") {
        return;
    }
    let srv = start(2, 8, 256);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/openai_client.py");
    let out = Command::new("python3")
        .args([script, &base(&srv), MODEL])
        .output()
        .expect("running python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the openai client failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("openai client OK"), "{stdout}");
    srv.shutdown();
}
