//! `surplus bench`: prompt processing and generation speed, measured like llama-bench.

use std::time::Instant;

use anyhow::Result;
use serde_json::json;

use crate::run::ModelArgs;

/// Arguments of `surplus bench`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt tokens processed in one test (pp), evaluated in batches of --batch-size.
    #[arg(
        short = 'p',
        long = "n-prompt",
        value_name = "N",
        default_value_t = 512
    )]
    n_prompt: usize,
    /// Tokens generated one by one in one test (tg).
    #[arg(short = 'n', long = "n-gen", value_name = "N", default_value_t = 128)]
    n_gen: usize,
    /// Repetitions of each test; the mean and standard deviation are reported.
    #[arg(
        short = 'r',
        long = "repetitions",
        value_name = "N",
        default_value_t = 5
    )]
    reps: usize,
    /// Print one JSON object: {"pp": {"tokens_per_s", "stddev"}, "tg": {...}, ...}.
    #[arg(long)]
    json: bool,
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (m, var.sqrt())
}

/// Runs `surplus bench`.
pub fn run(mut args: Args) -> Result<()> {
    if args.model.ctx_size == 0 {
        args.model.ctx_size = (args.n_prompt + args.n_gen).max(16);
    }
    args.model.batch_size = args.model.batch_size.max(1);
    let mut engine = args.model.load(1)?;
    let vocab = engine.model.hp.n_vocab as u32;
    // Random tokens, like llama-bench.
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut rand_tok = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % vocab as u64) as u32
    };
    let prompt: Vec<u32> = (0..args.n_prompt).map(|_| rand_tok()).collect();
    let gen: Vec<u32> = (0..args.n_gen).map(|_| rand_tok()).collect();
    // Warm-up.
    if !prompt.is_empty() {
        engine.eval(0, &prompt[..prompt.len().min(16)], 0, false)?;
    }
    let mut pp = Vec::new();
    let mut tg = Vec::new();
    for _ in 0..args.reps.max(1) {
        if args.n_prompt > 0 {
            let t = Instant::now();
            engine.eval(0, &prompt, 0, false)?;
            pp.push(args.n_prompt as f64 / t.elapsed().as_secs_f64());
        }
        if args.n_gen > 0 {
            let t = Instant::now();
            for (i, &tok) in gen.iter().enumerate() {
                engine.eval(0, &[tok], i, false)?;
            }
            tg.push(args.n_gen as f64 / t.elapsed().as_secs_f64());
        }
    }
    let (ppm, pps) = mean_sd(&pp);
    let (tgm, tgs) = mean_sd(&tg);
    if args.json {
        println!(
            "{}",
            json!({
                "model": args.model.model,
                "threads": engine.n_threads(),
                "gpu": engine.on_gpu(),
                "device": engine.placement(),
                "decode_weight_bytes": engine.decode_weight_bytes(),
                "n_prompt": args.n_prompt, "n_gen": args.n_gen, "repetitions": args.reps,
                "pp": {"tokens_per_s": ppm, "stddev": pps},
                "tg": {"tokens_per_s": tgm, "stddev": tgs},
            })
        );
    } else {
        println!("| model | threads | test | t/s |");
        println!("|---|---|---|---|");
        if args.n_prompt > 0 {
            println!(
                "| {} | {} | pp{} | {:.2} ± {:.2} |",
                args.model.model,
                engine.n_threads(),
                args.n_prompt,
                ppm,
                pps
            );
        }
        if args.n_gen > 0 {
            println!(
                "| {} | {} | tg{} | {:.2} ± {:.2} |",
                args.model.model,
                engine.n_threads(),
                args.n_gen,
                tgm,
                tgs
            );
        }
    }
    Ok(())
}
