//! The placement planner on made-up GPUs (no driver needed): fastest first, equal GPUs
//! evenly, the context that fits, `--tensor-split`, `--main-gpu`, strict errors, and the same
//! plan for the same inputs.

use std::sync::Arc;

use engine::plan::{plan, DeviceSpec, Placement};
use engine::{EngineOptions, GpuLayers};
use model::Model;

const MIB: usize = 1 << 20;

fn model(name: &str) -> Model {
    let path = registry::test_model(name);
    let file = gguf::Gguf::open(&path).unwrap();
    Model::load_with(Arc::new(file), 1, false).unwrap()
}

fn gpu(ordinal: usize, mib: usize, gbps: f64) -> DeviceSpec {
    DeviceSpec {
        name: format!("GPU {ordinal}"),
        gpu: Some(ordinal),
        free: mib * MIB,
        total: mib * MIB,
        bandwidth: gbps * 1e9,
        bandwidth_from: "test",
    }
}

fn cpu() -> DeviceSpec {
    DeviceSpec {
        name: "cpu".into(),
        gpu: None,
        free: 64 << 30,
        total: 64 << 30,
        bandwidth: 40e9,
        bandwidth_from: "test",
    }
}

fn opts() -> EngineOptions {
    EngineOptions {
        fit_margin: Some(MIB),
        ..EngineOptions::default()
    }
}

/// (device name, first block, end) of each stage with blocks.
fn ranges(p: &Placement) -> Vec<(String, usize, usize)> {
    p.block_stages()
        .map(|s| {
            (
                p.devices[s.device].name.clone(),
                s.blocks.start,
                s.blocks.end,
            )
        })
        .collect()
}

/// Every GPU stage within its free memory less the margin.
fn check_fits(p: &Placement) {
    for s in &p.stages {
        let d = &p.devices[s.device];
        if d.gpu.is_some() {
            assert!(
                s.bytes.total() + p.margins[s.device] <= d.free,
                "{}: {} + {} > {}",
                d.name,
                s.bytes.total(),
                p.margins[s.device],
                d.free
            );
        }
    }
}

#[test]
fn a_big_gpu_takes_everything_at_the_models_context() {
    let m = model("qwen2.5-coder-0.5b");
    let p = plan(&m, &[gpu(0, 32 << 10, 900.0), cpu()], &opts()).unwrap();
    assert_eq!(ranges(&p), [("GPU 0".to_string(), 0, 24)]);
    assert_eq!(p.ctx, m.hp.n_ctx_train);
    assert!(p.stages[0].last);
    check_fits(&p);
    // The same inputs, the same plan.
    let again = plan(&m, &[gpu(0, 32 << 10, 900.0), cpu()], &opts()).unwrap();
    assert_eq!(format!("{p:?}"), format!("{again:?}"));
}

#[test]
fn the_context_shrinks_to_keep_every_block_on_the_gpu() {
    let m = model("qwen2.5-coder-0.5b");
    // Weights and scratch take about 550 MiB; 700 MiB leaves room for far less than the
    // model's 32768 positions of f16 KV (12 KiB each).
    let p = plan(&m, &[gpu(0, 700, 900.0), cpu()], &opts()).unwrap();
    assert_eq!(p.gpu_blocks(), 24);
    assert!(4096 <= p.ctx && p.ctx < 32768, "ctx {}", p.ctx);
    assert_eq!(p.ctx % 256, 0);
    check_fits(&p);
    // One step more would not fit.
    let o = EngineOptions {
        n_ctx: p.ctx + 256,
        gpu_layers: GpuLayers::All,
        ..opts()
    };
    let err = plan(&m, &[gpu(0, 700, 900.0), cpu()], &o)
        .unwrap_err()
        .to_string();
    assert!(err.contains("-c") && err.contains("q8_0"), "{err}");
    // q8_0 keys and values: a longer context.
    let q8 = EngineOptions {
        cache_type_k: Some(runtime::KvType::Q8_0),
        cache_type_v: Some(runtime::KvType::Q8_0),
        ..opts()
    };
    let pq = plan(&m, &[gpu(0, 700, 900.0), cpu()], &q8).unwrap();
    assert!(pq.ctx > p.ctx, "{} vs {}", pq.ctx, p.ctx);
}

#[test]
fn the_faster_gpu_fills_first_and_the_cpu_takes_the_rest() {
    let m = model("qwen2.5-coder-0.5b");
    // GPU 0 slow, GPU 1 fast, neither holds the model.
    let devs = [gpu(0, 200, 347.0), gpu(1, 200, 900.0), cpu()];
    let p = plan(
        &m,
        &devs,
        &EngineOptions {
            n_ctx: 512,
            ..opts()
        },
    )
    .unwrap();
    check_fits(&p);
    let r = ranges(&p);
    assert_eq!(r.len(), 3, "{r:?}");
    assert_eq!(r[2].0, "cpu");
    let n = |i: usize| r[i].2 - r[i].1;
    // GPU 0 runs first (with the embeddings), so it holds fewer blocks than the fast one
    // would alone; the fast one is as full as it gets.
    assert!(n(1) >= n(0), "{r:?}");
    let fast = p.stages.iter().find(|s| s.device == 1).unwrap();
    assert!(
        fast.bytes.total() + 10 * MIB > 200 * MIB - MIB,
        "{:?}",
        fast.bytes
    );
    assert!(p.predicted_tokens_per_s > 0.0);
}

#[test]
fn with_room_for_every_block_the_faster_gpu_takes_the_most() {
    let m = model("qwen2.5-coder-0.5b");
    let o = EngineOptions {
        n_ctx: 512,
        ..opts()
    };
    let count = |p: &Placement, ord: usize| {
        p.block_stages()
            .find(|s| p.devices[s.device].gpu == Some(ord))
            .map_or(0, |s| s.blocks.len())
    };
    for (fast, slow) in [(0, 1), (1, 0)] {
        let mut devs = [gpu(0, 400, 347.0), gpu(1, 400, 347.0), cpu()];
        devs[fast].bandwidth = 900e9;
        let p = plan(&m, &devs, &o).unwrap();
        check_fits(&p);
        assert_eq!(p.gpu_blocks(), 24);
        assert!(
            count(&p, fast) > count(&p, slow) + 8,
            "fast GPU {fast}: {:?}",
            ranges(&p)
        );
        // Faster than the same two GPUs both at the slow speed.
        let even = plan(&m, &[gpu(0, 400, 347.0), gpu(1, 400, 347.0), cpu()], &o).unwrap();
        assert!(p.predicted_tokens_per_s > even.predicted_tokens_per_s);
    }
}

#[test]
fn equal_gpus_share_the_blocks_evenly() {
    let m = model("qwen2.5-coder-0.5b");
    let devs = [gpu(0, 16 << 10, 900.0), gpu(1, 16 << 10, 900.0), cpu()];
    // Auto on two equal GPUs that each could hold it all: every block on the GPUs, split
    // in proportion to what fits (the first also holds the embeddings, the last the head).
    let p = plan(
        &m,
        &devs,
        &EngineOptions {
            n_ctx: 4096,
            ..opts()
        },
    )
    .unwrap();
    let r = ranges(&p);
    assert_eq!(r.len(), 2, "{r:?}");
    assert!((r[0].2 as i64 - 12).abs() <= 1, "{r:?}");
    check_fits(&p);
}

#[test]
fn tensor_split_and_main_gpu_are_followed() {
    let m = model("smollm2-135m");
    let devs = [gpu(0, 4 << 10, 900.0), gpu(1, 4 << 10, 900.0), cpu()];
    let o = EngineOptions {
        n_ctx: 1024,
        tensor_split: vec![2.0, 1.0],
        ..opts()
    };
    let p = plan(&m, &devs, &o).unwrap();
    assert_eq!(
        ranges(&p),
        [("GPU 0".to_string(), 0, 20), ("GPU 1".to_string(), 20, 30)]
    );
    // --main-gpu 0: GPU 0 runs last, with the head.
    let p = plan(
        &m,
        &devs,
        &EngineOptions {
            main_gpu: Some(0),
            ..o.clone()
        },
    )
    .unwrap();
    assert_eq!(
        ranges(&p),
        [("GPU 1".to_string(), 0, 10), ("GPU 0".to_string(), 10, 30)]
    );
    assert!(p.stages[1].last);
    // A missing GPU is an error.
    let err = plan(
        &m,
        &devs,
        &EngineOptions {
            main_gpu: Some(5),
            ..o
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("--main-gpu 5"), "{err}");
}

#[test]
fn gpu_layers_counts_blocks_and_all_is_strict() {
    let m = model("smollm2-135m");
    let devs = [gpu(0, 4 << 10, 900.0), cpu()];
    let o = EngineOptions {
        n_ctx: 1024,
        gpu_layers: GpuLayers::Count(7),
        ..opts()
    };
    let p = plan(&m, &devs, &o).unwrap();
    assert_eq!(
        ranges(&p),
        [("GPU 0".to_string(), 0, 7), ("cpu".to_string(), 7, 30)]
    );
    let tiny = [gpu(0, 40, 900.0), cpu()];
    let err = plan(
        &m,
        &tiny,
        &EngineOptions {
            gpu_layers: GpuLayers::All,
            ..o
        },
    )
    .unwrap_err()
    .to_string();
    for want in ["MiB", "--gpu-layers", "-c", "q8_0"] {
        assert!(err.contains(want), "{want}: {err}");
    }
}

#[test]
fn the_mtp_cache_and_recurrent_state_go_with_their_blocks() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/synthetic/qwen35-tiny-q8_0.gguf");
    if !path.exists() {
        eprintln!("skipped: the qwen35 fixture is not built (scripts/fixtures.sh)");
        return;
    }
    let m = Model::load_with(Arc::new(gguf::Gguf::open(&path).unwrap()), 1, false).unwrap();
    let devs = [gpu(0, 4 << 10, 900.0), gpu(1, 4 << 10, 900.0), cpu()];
    let o = EngineOptions {
        n_ctx: 512,
        tensor_split: vec![1.0, 1.0],
        ..opts()
    };
    let p = plan(&m, &devs, &o).unwrap();
    let (a, b) = (&p.stages[0], &p.stages[1]);
    assert_eq!((a.blocks.clone(), b.blocks.clone()), (0..2, 2..4));
    // Layers in order, none twice; the last stage holds the MTP block's KV layer.
    assert_eq!(a.kv_layers.end, b.kv_layers.start);
    assert_eq!(b.kv_layers.end, m.kv_layers());
    assert_eq!(a.rec_layers.end, b.rec_layers.start);
    assert_eq!(
        a.rec_layers.len() + b.rec_layers.len(),
        m.recurrent().unwrap().0
    );
    assert!(b.last && !a.last);
}

/// A bandwidth measured by `doctor --bandwidth` comes first, then the driver's figure, then
/// the table of known cards.
#[test]
fn measured_bandwidth_comes_first() {
    let info = runtime::cuda::device::GpuInfo {
        ordinal: 0,
        name: "Tesla V100-PCIE-16GB".into(),
        sm: 70,
        memory_bytes: 16 << 30,
        sm_count: 80,
        peak_bandwidth: Some(897e9),
    };
    let measured = vec![("Tesla V100-PCIE-16GB".to_string(), 790e9)];
    let d = DeviceSpec::gpu(&info, 1 << 30, &measured);
    assert_eq!((d.bandwidth, d.bandwidth_from), (790e9, "measured"));
    let d = DeviceSpec::gpu(&info, 1 << 30, &[("Other".to_string(), 1e9)]);
    assert_eq!((d.bandwidth, d.bandwidth_from), (897e9, "driver"));
    let no_clock = runtime::cuda::device::GpuInfo {
        peak_bandwidth: None,
        ..info
    };
    let d = DeviceSpec::gpu(&no_clock, 1 << 30, &[]);
    assert_eq!((d.bandwidth, d.bandwidth_from), (900e9, "known cards"));
    assert_eq!(d.gpu, Some(0));
}
