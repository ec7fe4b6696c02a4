//! Encoding speed on about 1 MB of text: `cargo run --release -p surplus-tokenizer
//! --example bench_encode -- MODEL [TEXT_FILE]` (default text: the GPL v3, repeated).

use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let model = args.next().unwrap_or_else(|| "smollm2-135m".into());
    let text = match args.next() {
        Some(p) => std::fs::read_to_string(p).expect("read text"),
        None => {
            let gpl = include_str!("../../../tests/data/golden/GPL-3.txt");
            gpl.repeat((1 << 20) / gpl.len() + 1)
        }
    };
    let path = registry::resolve(&model, &registry::PullOptions::default()).expect("model");
    let g = gguf::Gguf::open(&path).expect("open");
    let t0 = Instant::now();
    let tok = tokenizer::Tokenizer::from_metadata(g.metadata()).expect("tokenizer");
    let load = t0.elapsed();
    // One warm-up pass, then the best of three.
    let mut best = f64::MAX;
    let mut n = 0;
    for _ in 0..4 {
        let t = Instant::now();
        n = tok.encode(&text, false, false).len();
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!(
        "{model}: tokenizer built in {:.0} ms; {} bytes -> {n} tokens in {:.3} s: {:.0} tokens/s, {:.1} MB/s",
        load.as_secs_f64() * 1e3,
        text.len(),
        best,
        n as f64 / best,
        text.len() as f64 / best / 1e6
    );
}
