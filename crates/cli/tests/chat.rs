//! `surplus chat` end to end: `/image PATH` with and without a projector.

use std::io::Write;
use std::process::{Command, Stdio};

fn data(file: &str) -> String {
    format!(
        "{}/../../tests/data/vision/{file}",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// Runs `surplus chat` with `args`, typing `input`; returns (success, stdout, stderr).
fn chat(args: &[&str], input: &str) -> (bool, String, String) {
    let model = registry::test_model("gemma3-270m");
    let mut child = Command::new(env!("CARGO_BIN_EXE_surplus"))
        .args([
            "chat",
            "-m",
            model.to_str().unwrap(),
            "-t",
            "2",
            "-c",
            "256",
        ])
        .args(["-n", "4", "--temp", "0"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn image_command_attaches_an_image() {
    if fixtures_missing() {
        return;
    }
    let mmproj = data("gemma3-270m-mmproj.gguf");
    let input = format!(
        "/image {}\nWhat is this?\n/image {}\nAnd this?\n/image /no/such/file.png\nHi\n",
        data("gradient-64x48.png"),
        data("photo-150x100.jpg")
    );
    let (ok, out, err) = chat(&["--mmproj", &mmproj], &input);
    assert!(ok, "{err}");
    assert_eq!(err.matches("[image attached").count(), 2, "{err}");
    assert!(err.contains("16 tokens"), "{err}");
    assert!(err.contains("/no/such/file.png"), "{err}");
    // Three replies, one line each.
    assert!(out.lines().count() >= 3, "{out:?}");
}

#[test]
fn image_command_needs_a_projector() {
    let input = format!("/image {}\nHi\n", data("gradient-64x48.png"));
    let (ok, _, err) = chat(&[], &input);
    assert!(ok, "{err}");
    assert!(err.contains("--mmproj"), "{err}");
}

/// The fixture's model files (GGUF weights, embedding dumps) are not in git: `scripts/
/// fixtures.sh` copies them into tests/data. Without them a test that needs them is skipped
/// and says so.
fn fixtures_missing() -> bool {
    testkit::fixtures_missing(testkit::VISION)
}

/// `--grammar` in a chat: every reply is held to it, each from its start (a second reply
/// is not the end of the first one's finished grammar).
#[test]
fn every_reply_follows_the_grammar() {
    let dir = tempfile::tempdir().unwrap();
    let lark = dir.path().join("yn.lark");
    std::fs::write(&lark, "start: \"yes\" | \"no\"\n").unwrap();
    let (ok, out, err) = chat(
        &["--grammar", lark.to_str().unwrap()],
        "Is the sky blue?\nIs grass red?\nAre you sure?\n",
    );
    assert!(ok, "{err}");
    let replies: Vec<&str> = out.lines().collect();
    assert_eq!(replies.len(), 3, "{out:?}");
    for r in replies {
        assert!(r == "yes" || r == "no", "{out:?}");
    }
}
