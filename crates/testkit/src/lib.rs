//! Helpers shared by the workspace's tests (a dev-dependency only): paths below `tests/data`,
//! goldens read as JSON, skipping a test whose fixtures are missing, seeded random inputs.

use std::path::{Path, PathBuf};

use rand::Rng;
use serde_json::Value;

/// The `qwen35` fixtures (tests/data/synthetic/README.md): the F32 and Q8_0 files.
pub const QWEN35: &[&str] = &[
    "synthetic/qwen35-tiny-f32.gguf",
    "synthetic/qwen35-tiny-q8_0.gguf",
];

/// The vision fixtures (tests/data/vision): both projectors and Gemma 3's `-fa off` dump.
pub const VISION: &[&str] = &[
    "vision/gemma3-270m-mmproj.gguf",
    "vision/qwen35-tiny-mmproj.gguf",
    "vision/embd/gemma3-270m__photo-150x100.fa-off.bin",
];

/// The repository's `tests/data` folder.
pub fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data")
}

/// The path of `rel` below `tests/data`.
pub fn data(rel: &str) -> PathBuf {
    data_dir().join(rel)
}

/// The JSON file `rel` below `tests/data`, parsed (panics if it is missing or malformed).
pub fn json(rel: &str) -> Value {
    let path = data(rel);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The golden `tests/data/golden/{file}.json` (`file` without the extension).
pub fn golden(file: &str) -> Value {
    json(&format!("golden/{file}.json"))
}

/// A JSON array of token ids.
pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Whether one of `need` (paths below `tests/data`) is missing; if so it says which on
/// stderr, so that the calling test can return early as skipped.
pub fn fixtures_missing(need: &[&str]) -> bool {
    match need.iter().map(|f| data(f)).find(|p| !p.exists()) {
        Some(p) => {
            eprintln!(
                "skipped: {} is missing (run scripts/fixtures.sh)",
                p.display()
            );
            true
        }
        None => false,
    }
}

/// `n` standard normal samples (Box-Muller) times `sigma`.
pub fn gaussian(rng: &mut impl Rng, n: usize, sigma: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u1: f32 = rng.random::<f32>().max(1e-12);
            let u2: f32 = rng.random();
            sigma * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
        })
        .collect()
}

/// `n` values uniform in -1..1 plus `offset`, with every 97th (from index 5) an outlier: the
/// uniform value times 8, no offset. A spread of magnitudes, never all zero.
pub fn spread_values(rng: &mut impl Rng, n: usize, offset: f32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let v: f32 = rng.random_range(-1.0..1.0);
            if i % 97 == 5 {
                v * 8.0
            } else {
                v + offset
            }
        })
        .collect()
}
