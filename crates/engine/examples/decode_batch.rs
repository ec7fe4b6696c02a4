//! Time of one multi-sequence decode step (`Engine::decode_step`) by batch size: what the
//! server's continuous batching can gain at most. `cargo run --release -p surplus-engine
//! --example decode_batch -- MODEL.gguf [threads] [sizes, e.g. 1,4,16]`

use std::time::Instant;

use engine::multi::DecodeItem;
use engine::{Engine, EngineOptions};

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        eprintln!("usage: decode_batch MODEL.gguf [threads]");
        std::process::exit(2);
    };
    let threads = args.next().and_then(|t| t.parse().ok()).unwrap_or(2);
    let sizes: Vec<usize> = args
        .next()
        .map(|s| s.split(',').filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 2, 4, 8, 16])
        .into_iter()
        .filter(|&n| (1..=16).contains(&n))
        .collect();
    let opts = EngineOptions {
        n_ctx: 256,
        n_batch: 64,
        n_seq: 16,
        max_logit_rows: 16,
        n_threads: threads,
        gpu_layers: engine::GpuLayers::Auto,
        ..EngineOptions::default()
    };
    let mut e = match Engine::load(std::path::Path::new(&path), &opts) {
        Ok(e) => e,
        Err(err) => {
            eprintln!("error: {err}");
            std::process::exit(1);
        }
    };
    let (warmup, steps) = (8, 64);
    for n in sizes {
        let mut t = Instant::now();
        for s in 0..warmup + steps {
            if s == warmup {
                t = Instant::now();
            }
            let items: Vec<DecodeItem> = (0..n)
                .map(|i| DecodeItem {
                    seq: i as u32,
                    token: 100 + i as u32,
                    pos: s as u32,
                })
                .collect();
            if let Err(err) = e.decode_step(&items) {
                eprintln!("error: {err}");
                std::process::exit(1);
            }
        }
        let dt = t.elapsed().as_secs_f64();
        println!(
            "batch {n:2}: {:6.2} ms/step, {:6.1} tokens/s",
            dt * 1e3 / steps as f64,
            (n * steps) as f64 / dt
        );
    }
}
