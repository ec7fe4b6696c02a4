//! Pulls a model by name (or resolves a path) and prints where it is:
//! `cargo run -p surplus-registry --example pull -- smollm2-135m [--force]`.

use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let model = args
        .next()
        .unwrap_or_else(|| registry::DEFAULT_MODEL.to_string());
    let force = args.any(|a| a == "--force");
    let opts = registry::PullOptions {
        progress: true,
        force,
    };
    eprintln!("models dir: {}", registry::models_dir().display());
    for attempt in 1..=2 {
        let t = Instant::now();
        match registry::resolve(&model, &opts) {
            Ok(path) => println!("{attempt}: {} in {:?}", path.display(), t.elapsed()),
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        }
        if force {
            break;
        }
    }
}
