//! The CLI on the emulated GPU (`scripts/emu.sh cargo test -p surplus-cli --test
//! emulated_gpu`): devices as `SURPLUS_EMU_GPUS` describes them, kernels for old
//! architectures, and a device too small for the model. Without the emulator (no device
//! named "(emulated)" in `surplus doctor`) every test passes with a note.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output, Stdio};

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

/// The token ids of `run --json`'s output.
fn token_ids(stdout: &[u8]) -> Vec<u64> {
    let j: Value = serde_json::from_slice(stdout).expect("one JSON object");
    j["tokens"]
        .as_array()
        .expect("a tokens array")
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect()
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
    let ids = token_ids(&out.stdout);
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
        .find_map(|l| l.split_once(" of 24 blocks on GPUs"))
        .and_then(|(before, _)| before.rsplit(' ').next()?.parse::<usize>().ok())
        .unwrap_or_else(|| panic!("a placement line: {err}"));
    assert!(
        0 < placed && placed < 24,
        "{placed} of 24 layers on the device"
    );
}

/// `surplus ARGS` with the emulated devices `gpus` and the emulator's counters written to
/// `stats` at exit.
fn surplus_stats(gpus: &str, stats: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_surplus"))
        .env("SURPLUS_EMU_GPUS", gpus)
        .env("SURPLUS_EMU_STATS", stats)
        .args(args)
        .output()
        .unwrap()
}

fn data(rel: &str) -> String {
    format!("{}/../../tests/data/{rel}", env!("CARGO_MANIFEST_DIR"))
}

/// Whether the qwen35 fixture and its projector are built (scripts/fixtures.sh); says so
/// when not.
fn have_qwen35_fixtures() -> bool {
    let ok = [
        "synthetic/qwen35-tiny-q8_0.gguf",
        "vision/qwen35-tiny-mmproj.gguf",
    ]
    .iter()
    .all(|f| std::path::Path::new(&data(f)).exists());
    if !ok {
        eprintln!("skipped: the qwen35 fixtures are not built (scripts/fixtures.sh)");
    }
    ok
}

/// `plan --json` with `flags`, then `run` with the same flags: the run's GPUs allocate at
/// most what the plan says of each, and at least 98% of it; the greedy tokens are returned.
fn plan_then_run(gpus: &str, model: &str, flags: &[&str], run: &[&str]) -> (Value, Vec<u64>) {
    let mut args = vec!["plan", "-m", model, "--json", "--draft-max", "0"];
    args.extend_from_slice(flags);
    let out = surplus(gpus, &args);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "plan failed: {err}");
    let plan: Value = serde_json::from_slice(&out.stdout).expect("plan prints JSON");
    let dir = std::env::temp_dir().join(format!("surplus-plan-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let stats = dir.join(format!("{}.json", gpus.replace([':', ','], "_")));
    let mut args = vec!["run", "-m", model, "--spec", "none", "--temp", "0"];
    args.extend_from_slice(&["--ignore-eos", "--json", "-t", "2", "-n", "4"]);
    args.extend_from_slice(flags);
    args.extend_from_slice(run);
    let out = surplus_stats(gpus, &stats, &args);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "run failed: {err}");
    let ids = token_ids(&out.stdout);
    let st: Value = serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    let devs = plan["devices"].as_array().unwrap();
    for (i, d) in devs.iter().filter(|d| d["gpu"].is_u64()).enumerate() {
        let planned = d["bytes"]["total"].as_u64().unwrap();
        let peak = st["devices"][i]["peak_bytes"].as_u64().unwrap();
        eprintln!("{gpus} {}: planned {planned}, allocated {peak}", d["name"]);
        assert!(
            planned >= peak,
            "{}: planned {planned} < allocated {peak}",
            d["name"]
        );
        assert!(
            planned as f64 <= peak as f64 * 1.02,
            "{}: planned {planned} > 1.02 × allocated {peak}",
            d["name"]
        );
    }
    (plan, ids)
}

/// The blocks (first, last) `plan --json` gives each device, null for none.
fn blocks(plan: &Value) -> Vec<Value> {
    plan["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["blocks"].clone())
        .collect()
}

/// Two GPUs of different sizes and speeds and the CPU: the plan puts the most blocks on
/// the fast one it can, the bytes it states are what the GPUs allocate (within 2%, never
/// less), and the greedy tokens are the CPU's and one big GPU's.
#[test]
fn two_gpus_and_the_cpu_follow_the_plan_and_the_cpus_tokens() {
    // (model, devices): small devices, so that both GPUs and the CPU hold blocks.
    let cases = [
        ("qwen2.5-coder-0.5b", "fast:70:0.2:900,slow:61:0.3:347"),
        ("smollm2-135m", "fast:70:0.07:900,slow:61:0.1:347"),
    ];
    if emulated(cases[0].1).is_none() {
        return;
    }
    for (name, two) in cases {
        let model = registry::test_model(name);
        let model = model.to_str().unwrap();
        // f32 caches: Qwen2.5's keys lose to f16 (BENCHMARKS.md), which would move the
        // greedy path between a GPU's f16 cache and the CPU's f32 one.
        let flags = [
            "-c",
            "512",
            "--fit-margin",
            "1",
            "-ctk",
            "f32",
            "-ctv",
            "f32",
        ];
        let prompt = ["-p", "The capital of France is"];
        let (plan, ids) = plan_then_run(two, model, &flags, &prompt);
        assert_eq!(plan["ctx"], 512);
        let b = blocks(&plan);
        assert!(
            b[0].is_array() && b[1].is_array(),
            "{name}: both GPUs hold blocks: {b:?}"
        );
        assert_eq!(plan["devices"][2]["name"], "cpu", "{name}: {plan}");
        assert!(plan["predicted_tokens_per_s"].as_f64().unwrap() > 0.0);
        let run = |gpus: &str, layers: &str| {
            let mut args = vec!["run", "-m", model, "--temp", "0", "--ignore-eos", "--json"];
            args.extend_from_slice(&["-n", "4", "-t", "2", "--spec", "none", "-ngl", layers]);
            args.extend_from_slice(&flags);
            args.extend_from_slice(&prompt);
            let out = surplus(gpus, &args);
            let err = String::from_utf8_lossy(&out.stderr).to_string();
            assert!(out.status.success(), "{err}");
            token_ids(&out.stdout)
        };
        assert_eq!(
            ids,
            run(two, "0"),
            "{name}: two GPUs and the CPU vs the CPU"
        );
        assert_eq!(
            ids,
            run("big:70:4:900", "all"),
            "{name}: two GPUs and the CPU vs one GPU"
        );
    }
}

/// The qwen35 fixture with its MTP block and an image, split by --tensor-split over two GPUs
/// and the CPU (which then runs the last block, the head and MTP): the CPU's tokens.
#[test]
fn qwen35_with_mtp_and_an_image_splits_over_two_gpus_and_the_cpu() {
    let two = "a:70:0.03:900,b:61:0.035:347";
    if emulated(two).is_none() || !have_qwen35_fixtures() {
        return;
    }
    let model = data("synthetic/qwen35-tiny-q8_0.gguf");
    let image = [
        "--mmproj",
        &data("vision/qwen35-tiny-mmproj.gguf"),
        "--image",
        &data("vision/gradient-64x48.png"),
        "-p",
        "Describe the image.",
    ]
    .map(String::from);
    let image: Vec<&str> = image.iter().map(String::as_str).collect();
    let flags = ["-c", "512", "--fit-margin", "1", "-ngl", "3", "-ts", "1,2"];
    let (plan, _) = plan_then_run(two, &model, &flags, &image);
    assert_eq!(
        blocks(&plan),
        [
            serde_json::json!([0, 0]),
            serde_json::json!([1, 2]),
            serde_json::json!([3, 3])
        ]
    );
    // Greedy with MTP drafting across the split (f32 caches, as the CPU's), against one
    // placement on the GPUs alone and, for text, the CPU alone.
    let run = |gpus: &str, extra: &[&str], with_image: bool| {
        let mut args = vec!["run", "-m", &model, "--temp", "0", "--ignore-eos", "--json"];
        args.extend_from_slice(&["-n", "8", "-t", "2", "-c", "512", "--spec", "mtp"]);
        args.extend_from_slice(&["-ctk", "f32", "-ctv", "f32"]);
        if with_image {
            args.extend_from_slice(&image);
        } else {
            args.extend_from_slice(&["-p", "Describe the image."]);
        }
        args.extend_from_slice(extra);
        let out = surplus(gpus, &args);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{err}");
        let j: Value = serde_json::from_slice(&out.stdout).unwrap();
        j["tokens"].clone()
    };
    // MTP keeps more logit rows than --spec none: devices with room for them.
    let roomier = "a:70:0.05:900,b:61:0.05:347";
    let split = ["--fit-margin", "1", "-ngl", "3", "-ts", "1,2"];
    let gpus_only = ["--fit-margin", "1", "-ngl", "all", "-ts", "1,1"];
    for with_image in [true, false] {
        let s = run(roomier, &split, with_image);
        assert_eq!(
            s,
            run(roomier, &gpus_only, with_image),
            "split vs GPUs alone"
        );
        assert_eq!(
            s,
            run("big:70:4:900", &["-ngl", "all"], with_image),
            "vs one GPU"
        );
        if !with_image {
            assert_eq!(s, run(roomier, &["-ngl", "0"], with_image), "vs the CPU");
        }
    }
}

/// What cannot fit is an error at load naming the device, the shortfall and what to change.
#[test]
fn what_cannot_fit_is_an_error_that_says_what_to_change() {
    let two = "a:70:0.2:900,b:61:0.3:347";
    if emulated(two).is_none() {
        return;
    }
    let model = registry::test_model("qwen2.5-coder-0.5b");
    let model = model.to_str().unwrap();
    for flags in [
        &["-ngl", "all", "-c", "32768", "--fit-margin", "1"][..],
        &["-ngl", "all", "--fit-margin", "1"][..],
    ] {
        let mut args = vec!["plan", "-m", model];
        args.extend_from_slice(flags);
        let out = surplus(two, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flags:?} must not fit: {err}");
        for want in ["MiB", "-c", "q8_0", "--gpu-layers"] {
            assert!(
                err.contains(want),
                "{flags:?}: the error names {want}: {err}"
            );
        }
    }
}

/// `POST path` with a JSON body; the reply's status and body.
fn http_post(addr: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    let status = r.split(' ').nth(1).unwrap().parse().unwrap();
    let body = r.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (status, body)
}

/// The texts `serve ARGS` on `gpus` answers to `prompts`, all sent at once (greedy).
fn serve_answers(gpus: &str, args: &[&str], prompts: &[&str]) -> Vec<String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_surplus"))
        .env("SURPLUS_EMU_GPUS", gpus)
        .args(["serve", "--port", "0"])
        .args(args)
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
    // Keep reading the log so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    let result = std::panic::catch_unwind(|| {
        let threads: Vec<_> = prompts
            .iter()
            .map(|p| {
                let addr = addr.clone();
                let body = serde_json::json!({
                    "prompt": p, "max_tokens": 8, "temperature": 0, "ignore_eos": true
                })
                .to_string();
                std::thread::spawn(move || http_post(&addr, "/v1/completions", &body))
            })
            .collect();
        threads
            .into_iter()
            .map(|t| {
                let (status, body) = t.join().unwrap();
                assert_eq!(status, 200, "{body}");
                let j: Value = serde_json::from_str(&body).unwrap();
                j["choices"][0]["text"].as_str().unwrap().to_string()
            })
            .collect::<Vec<_>>()
    });
    let _ = child.kill();
    let _ = child.wait();
    match result {
        Ok(v) => v,
        Err(e) => {
            eprintln!("serve log: {log:?}");
            std::panic::resume_unwind(e)
        }
    }
}

/// Several sequences decoding together, with MTP drafts verified, across two GPUs: the
/// server's answers are the CPU server's.
#[test]
fn several_sequences_with_mtp_across_two_gpus_answer_as_the_cpu() {
    let two = "a:70:0.05:900,b:61:0.05:347";
    if emulated(two).is_none() || !have_qwen35_fixtures() {
        return;
    }
    let model = data("synthetic/qwen35-tiny-q8_0.gguf");
    let common = [
        "-m",
        &model,
        "-c",
        "256",
        "--parallel",
        "3",
        "-t",
        "2",
        "-ctk",
        "f32",
        "-ctv",
        "f32",
        "--cache-ram",
        "0",
    ];
    let prompts = ["Once upon a time", "The capital of France is", "1, 2, 3,"];
    let mut split = common.to_vec();
    split.extend_from_slice(&["--fit-margin", "1", "-ngl", "all", "-ts", "1,1"]);
    let mut cpu = common.to_vec();
    cpu.extend_from_slice(&["-ngl", "0"]);
    let a = serve_answers(two, &split, &prompts);
    let b = serve_answers(two, &cpu, &prompts);
    assert!(a.iter().all(|t| !t.is_empty()), "{a:?}");
    assert_eq!(a, b, "two GPUs vs the CPU");
}
