//! The same model on the GPU and on the CPU: logits of a prompt (the GPU's cuBLAS path), of
//! decode steps (dp4a kernels, CUDA graphs) and greedy tokens agree. Passes with a note when
//! CUDA is unusable, and skips models that are not on disk (nothing is downloaded).

use engine::sampling::SamplingParams;
use engine::{Engine, EngineError, EngineOptions, GenerateOptions, GpuLayers};

fn opts(gpu: GpuLayers) -> EngineOptions {
    EngineOptions {
        n_ctx: 256,
        n_batch: 64,
        n_seq: 1,
        max_logit_rows: 1,
        n_threads: 2,
        gpu_layers: gpu,
    }
}

/// The fixture and the test models present on disk.
fn models() -> Vec<(String, std::path::PathBuf)> {
    let mut v = Vec::new();
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/synthetic/qwen35-tiny-q8_0.gguf");
    if fixture.exists() {
        v.push(("qwen35-tiny-q8_0".to_string(), fixture));
    }
    for name in ["smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b"] {
        match registry::find(name) {
            Some(m) if m.is_present() => v.push((name.to_string(), m.path())),
            _ => eprintln!("skipped {name}: not on disk"),
        }
    }
    v
}

/// Largest |a - b| relative to (1 + max |b|).
fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    let scale = 1.0 + b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max)
        / scale
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &x)| {
            if x > bv {
                (i, x)
            } else {
                (bi, bv)
            }
        })
        .0
}

#[test]
fn gpu_logits_and_greedy_tokens_follow_the_cpu() {
    let models = models();
    for (name, path) in models {
        // Every block on the GPU, then the first half (the rest on the CPU).
        let n_layer = match Engine::load(&path, &opts(GpuLayers::Count(0))) {
            Ok(e) => e.model.hp.n_layer,
            Err(e) => panic!("{name} on the CPU: {e}"),
        };
        for layers in [GpuLayers::All, GpuLayers::Count(n_layer / 2)] {
            compare(&name, &path, layers);
        }
    }
}

fn compare(name: &str, path: &std::path::Path, layers: GpuLayers) {
    let name = &format!("{name} ({layers:?})");
    {
        let mut gpu = match Engine::load(path, &opts(layers)) {
            Ok(e) => e,
            Err(EngineError::Placement(why)) => {
                eprintln!("skipped: {why}");
                return;
            }
            Err(e) => panic!("{name} on the GPU: {e}"),
        };
        eprintln!("{name}: {}", gpu.placement());
        let mut cpu = Engine::load(path, &opts(GpuLayers::Count(0))).unwrap();
        let text = "The quick brown fox jumps over the lazy dog. Then it ran into the forest, \
                    where the trees were tall and the air was cold.";
        let ids = cpu.tokenizer.encode(text, true, true);
        // A prompt (chunks of 64: the GEMM path), then token by token (decode, graphs).
        let a = cpu.eval(0, &ids, 0, false).unwrap().to_vec();
        let b = gpu.eval(0, &ids, 0, false).unwrap().to_vec();
        let d = rel_diff(&b, &a);
        eprintln!(
            "{name}: prompt of {} tokens: max rel diff {d:.2e}",
            ids.len()
        );
        assert!(d < 0.05, "{name}: prompt logits differ by {d}");
        assert_eq!(argmax(&a), argmax(&b), "{name}: prompt top token");
        for (i, &t) in ids.iter().take(12).enumerate() {
            let a = cpu.eval(0, &[t], i, false).unwrap().to_vec();
            let b = gpu.eval(0, &[t], i, false).unwrap().to_vec();
            let d = rel_diff(&b, &a);
            assert!(d < 0.05, "{name}: decode step {i} logits differ by {d}");
        }
        let g = GenerateOptions {
            max_tokens: 24,
            sampling: SamplingParams::greedy(),
            ignore_eos: true,
            logprobs: 0,
            stop: vec![],
        };
        let ta = cpu.generate(&ids, &g, |_, _| true).unwrap().tokens;
        let tb = gpu.generate(&ids, &g, |_, _| true).unwrap().tokens;
        let same = ta.iter().zip(&tb).take_while(|(x, y)| x == y).count();
        eprintln!("{name}: greedy tokens agree for {same} of {}", ta.len());
        if same < ta.len().min(tb.len()) {
            // Where they part, the GPU's pick must be a near-tie of the CPU's on the CPU's
            // own logits for that prefix.
            let mut prefix = ids.clone();
            prefix.extend_from_slice(&ta[..same]);
            let a = cpu.eval(0, &prefix, 0, false).unwrap().to_vec();
            let scale = 1.0 + a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let (want, got) = (ta[same] as usize, tb[same] as usize);
            assert!(
                a[got] >= a[want] - 0.02 * scale,
                "{name}: step {same}: the GPU picked {got} (CPU logit {}) over {want} ({})",
                a[got],
                a[want]
            );
        }
    }
}
