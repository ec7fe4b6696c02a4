//! What a prefix-cache checkpoint costs against the prompt it saves re-evaluating: bytes and
//! time to save and restore a sequence's recurrent state and KV rows, and the time to
//! evaluate prompt tokens. `cargo run --release -p surplus-engine --example checkpoint_cost
//! -- MODEL.gguf [threads] [prompt tokens] [chunk]`

use std::time::Instant;

use engine::{Engine, EngineOptions};

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        eprintln!("usage: checkpoint_cost MODEL.gguf [threads] [prompt tokens] [chunk]");
        std::process::exit(2);
    };
    let mut num = |d: usize| args.next().and_then(|t| t.parse().ok()).unwrap_or(d);
    let (threads, n, chunk) = (num(2), num(512), num(128));
    let opts = EngineOptions {
        n_ctx: n + 16,
        n_batch: chunk,
        n_seq: 2,
        n_threads: threads,
        ..EngineOptions::default()
    };
    let mut e = Engine::load(std::path::Path::new(&path), &opts).unwrap_or_else(|err| {
        eprintln!("error: {err}");
        std::process::exit(1);
    });
    let prompt: Vec<u32> = (0..n as u32).map(|i| 100 + i * 7 % 5000).collect();
    let t = Instant::now();
    for start in (0..n).step_by(chunk) {
        let end = (start + chunk).min(n);
        let r = e.prefill_chunk(0, &prompt[start..end], start, end == n);
        if let Err(err) = r {
            eprintln!("error: {err}");
            std::process::exit(1);
        }
    }
    let per_token = t.elapsed().as_secs_f64() / n as f64;
    let (mut state, mut kv) = (Vec::new(), Vec::new());
    let t = Instant::now();
    let saved = e.save_state(0, &mut state);
    let t_save = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let kv_ok = e.save_kv(0, 0..n, &mut kv);
    let t_kv_save = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let loaded = e.load_state(1, n, &state);
    let t_load = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let kv_loaded = e.load_kv(1, 0..n, &kv);
    let t_kv_load = t.elapsed().as_secs_f64();
    if let Some(err) = [saved.err(), kv_ok.err(), loaded.err(), kv_loaded.err()]
        .into_iter()
        .flatten()
        .next()
    {
        eprintln!("error: {err}");
        std::process::exit(1);
    }
    let mib = |b: usize| b as f64 / (1 << 20) as f64;
    println!("{}", e.placement());
    println!(
        "prompt: {n} tokens in chunks of {chunk}, {:.2} ms a token",
        per_token * 1e3
    );
    println!(
        "recurrent state: {:.2} MiB, saved in {:.2} ms, restored in {:.2} ms (= {:.1} prompt tokens)",
        mib(state.len()),
        t_save * 1e3,
        t_load * 1e3,
        (t_save + t_load) / per_token
    );
    println!(
        "KV rows of {n} positions: {:.2} MiB ({:.1} KiB a position), saved in {:.2} ms, loaded in {:.2} ms",
        mib(kv.len()),
        e.kv_token_bytes() as f64 / 1024.0,
        t_kv_save * 1e3,
        t_kv_load * 1e3
    );
}
