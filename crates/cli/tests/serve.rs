//! `surplus serve` API keys end to end: bad key files and keys fail before the model
//! loads, without showing a key; a served key is needed on /v1/* but not on /health.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output, Stdio};

fn surplus(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_surplus"));
    c.args(args).env_remove("SURPLUS_API_KEY");
    for &(k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run surplus")
}

/// Runs `serve` with a model that does not exist, so only the key checks can pass; returns
/// (exit code, stderr).
fn serve_fails(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut a = vec!["serve", "-m", "/no/such/model.gguf", "--port", "0"];
    a.extend_from_slice(args);
    let out = surplus(&a, env);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_key_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let empty = path("empty.txt", "");
    let comments = path("comments.txt", "# no keys yet\n\n   \n");
    let bad = path("bad.txt", "sk-good\n\nsk secret-part\n");
    let missing = dir.path().join("missing.txt");
    let missing = missing.to_str().unwrap();
    for (file, want) in [
        (empty.as_str(), "no API keys in it"),
        (comments.as_str(), "no API keys in it"),
        (bad.as_str(), "the key on line 3 is not usable"),
        (missing, "cannot read the key file: "),
    ] {
        let (code, err) = serve_fails(&["--api-key-file", file], &[]);
        assert_eq!(code, Some(1), "{err}");
        assert!(
            err.starts_with(&format!("error: --api-key-file {file}: {want}")),
            "{err}"
        );
        // It failed on the keys, before looking for the model.
        assert!(!err.contains("model.gguf"), "{err}");
        assert!(!err.contains("secret") && !err.contains("sk-good"), "{err}");
    }
}

#[test]
fn bad_keys_are_clear_errors() {
    let (code, err) = serve_fails(&["--api-key", "sk-ok", "--api-key", "sk not-ok"], &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.starts_with("error: --api-key (or SURPLUS_API_KEY): API key 2 is not usable"),
        "{err}"
    );
    assert!(!err.contains("not-ok") && !err.contains("sk-ok"), "{err}");
    // An empty SURPLUS_API_KEY is refused rather than leaving the server open.
    let (code, err) = serve_fails(&[], &[("SURPLUS_API_KEY", "")]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("API key 1 is not usable"), "{err}");
    // Good keys get as far as the model.
    let (code, err) = serve_fails(&["--api-key", "sk-ok"], &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("model.gguf"), "{err}");
    assert!(!err.contains("sk-ok"), "{err}");
}

#[test]
fn help_explains_the_flags_and_hides_the_env_key() {
    let out = surplus(
        &["serve", "--help"],
        &[("SURPLUS_API_KEY", "sk-env-secret")],
    );
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--api-key <KEY>"), "{help}");
    assert!(help.contains("--api-key-file <FILE>"), "{help}");
    assert!(help.contains("Authorization: Bearer KEY"), "{help}");
    assert!(help.contains("[env: SURPLUS_API_KEY]"), "{help}");
    assert!(!help.contains("sk-env-secret"), "{help}");
}

/// A plain HTTP/1.1 GET to `addr`: (status, body).
fn http_get(addr: &str, path: &str, key: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    let auth = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    let status = r.split(' ').nth(1).unwrap().parse().unwrap();
    let body = r.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (status, body)
}

#[test]
fn served_keys_guard_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys.txt");
    std::fs::write(&file, "# keys\nsk-file-a\nsk-file-b\n").unwrap();
    let model = registry::test_model("smollm2-135m");
    let mut child = Command::new(env!("CARGO_BIN_EXE_surplus"))
        .args(["serve", "-m", model.to_str().unwrap(), "--port", "0"])
        .args([
            "-t",
            "2",
            "-c",
            "256",
            "--parallel",
            "1",
            "--gpu-layers",
            "0",
        ])
        .args(["--api-key-file", file.to_str().unwrap()])
        .env("SURPLUS_API_KEY", "sk-env")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = Vec::new();
    let addr = loop {
        let Some(Ok(line)) = lines.next() else {
            let _ = child.kill();
            panic!("serve ended: {log:?}");
        };
        if let Some(a) = line.strip_prefix("listening on http://") {
            break a.to_owned();
        }
        log.push(line);
    };
    let result = std::panic::catch_unwind(|| {
        assert!(
            log.iter()
                .any(|l| l == "requests to /v1/* and /metrics need one of 3 API keys"),
            "{log:?}"
        );
        assert!(!log.iter().any(|l| l.contains("sk-")), "{log:?}");
        assert_eq!(http_get(&addr, "/health", None).0, 200);
        let (status, body) = http_get(&addr, "/v1/models", None);
        assert_eq!(status, 401, "{body}");
        assert!(body.contains("\"code\":\"invalid_api_key\""), "{body}");
        assert_eq!(http_get(&addr, "/v1/models", Some("sk-wrong")).0, 401);
        assert_eq!(http_get(&addr, "/metrics", None).0, 401);
        for key in ["sk-env", "sk-file-a", "sk-file-b"] {
            let (status, body) = http_get(&addr, "/v1/models", Some(key));
            assert_eq!(status, 200, "{key}: {body}");
            assert!(body.contains("\"object\":\"list\""), "{body}");
        }
        assert_eq!(http_get(&addr, "/metrics", Some("sk-file-b")).0, 200);
    });
    let _ = child.kill();
    let _ = child.wait();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
