//! The CLI on the emulated GPU (`scripts/emu.sh cargo test -p surplus-cli --test
//! emulated_gpu`): devices as `SURPLUS_EMU_GPUS` describes them, kernels for old
//! architectures, and a device too small for the model. Without the emulator (no device
//! named "(emulated)" in `surplus doctor`) every test passes with a note.

use std::process::{Command, Output};

use serde_json::Value;

/// `surplus ARGS` with the emulated devices `gpus`.
fn surplus(gpus: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_surplus"))
        .env("SURPLUS_EMU_GPUS", gpus)
        .args(args)
        .output()
        .unwrap()
}

/// `surplus doctor --json`'s GPUs with the devices `gpus`, or `None` (with a note) when the
/// driver is not the emulator.
fn emulated(gpus: &str) -> Option<Vec<Value>> {
    let out = surplus(gpus, &["doctor", "--json"]);
    let j: Value = serde_json::from_slice(&out.stdout).expect("doctor prints JSON");
    let list = j["cuda"]["gpus"].as_array().cloned().unwrap_or_default();
    if list.is_empty()
        || !list.iter().all(|g| {
            g["name"]
                .as_str()
                .is_some_and(|n| n.ends_with("(emulated)"))
        })
    {
        eprintln!("skipped: not on the emulated GPU (run through scripts/emu.sh)");
        return None;
    }
    Some(list)
}

/// Greedy token ids of `run` on `model` with `-ngl LAYERS`; panics with stderr on failure.
fn greedy(gpus: &str, model: &str, layers: &str, n: usize) -> (Vec<u64>, String) {
    let n = n.to_string();
    let out = surplus(
        gpus,
        &[
            "run",
            "-m",
            model,
            "-ngl",
            layers,
            "-p",
            "The capital of France is",
            "-n",
            &n,
            "--temp",
            "0",
            "--ignore-eos",
            "--json",
            "-t",
            "2",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "run -ngl {layers} failed: {err}");
    let j: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let ids = j["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect();
    (ids, err)
}

#[test]
fn doctor_lists_the_configured_devices() {
    let Some(gpus) = emulated("V100:70:32:900,P40:61:24:347,tiny:70:0.25:900") else {
        return;
    };
    assert_eq!(gpus.len(), 3);
    let got: Vec<(String, String, u64)> = gpus
        .iter()
        .map(|g| {
            (
                g["name"].as_str().unwrap().to_string(),
                g["sm"].as_str().unwrap().to_string(),
                g["memory_bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("V100 (emulated)".to_string(), "sm_70".to_string(), 32 << 30),
            ("P40 (emulated)".to_string(), "sm_61".to_string(), 24 << 30),
            (
                "tiny (emulated)".to_string(),
                "sm_70".to_string(),
                256 << 20
            ),
        ]
    );
    assert_eq!(gpus[1]["peak_bandwidth_gbs"].as_f64(), Some(347.0));
}

/// Pascal's kernels: sm_61 has dp4a, sm_60 takes the byte-loop fallback. Both give the
/// CPU's greedy tokens on SmolLM2.
#[test]
fn pascal_kernels_give_the_cpus_tokens() {
    if emulated("P40:61:24:347").is_none() {
        return;
    }
    let model = registry::test_model("smollm2-135m");
    let model = model.to_str().unwrap();
    let (cpu, _) = greedy("P40:61:24:347", model, "0", 3);
    for gpus in ["P40:61:24:347", "P100:60:16:732"] {
        let (ids, err) = greedy(gpus, model, "all", 3);
        let sm = format!("sm_{}", &gpus[gpus.find(':').unwrap() + 1..][..2]);
        assert!(err.contains(&sm), "{gpus}: placement names {sm}: {err}");
        assert_eq!(ids, cpu, "{gpus}");
    }
}

/// A 256 MiB device: every layer of Qwen2.5-0.5B does not fit, which is an error at load
/// that says so; `auto` puts the leading layers there and runs.
#[test]
fn a_small_device_refuses_all_and_auto_offloads_what_fits() {
    let tiny = "tiny:70:0.25:900";
    if emulated(tiny).is_none() {
        return;
    }
    let model = registry::test_model("qwen2.5-coder-0.5b");
    let model = model.to_str().unwrap();
    let out = surplus(
        tiny,
        &["run", "-m", model, "-ngl", "all", "-p", "Hi", "-n", "1"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "-ngl all must fail: {err}");
    assert!(
        err.contains("memory") || err.contains("MiB"),
        "the error is about memory: {err}"
    );
    let (ids, err) = greedy(tiny, model, "auto", 2);
    assert_eq!(ids.len(), 2);
    let placed = err
        .lines()
        .find_map(|l| l.split_once(" of 24 layers on the GPU"))
        .and_then(|(before, _)| before.rsplit(' ').next()?.parse::<usize>().ok())
        .unwrap_or_else(|| panic!("a placement line: {err}"));
    assert!(
        0 < placed && placed < 24,
        "{placed} of 24 layers on the device"
    );
}
