//! `surplus plan`: where a model would run on the GPUs there are now (the blocks, bytes and
//! predicted speed of each device), from the file's header alone, as text or `--json`.

use anyhow::Result;
use engine::plan::{Placement, Stage};
use serde_json::{json, Value};

use crate::run::ModelArgs;

/// Arguments of `surplus plan`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// A vision projector ("mmproj" GGUF): its weights and largest image, on the CPU.
    #[arg(long, value_name = "FILE")]
    mmproj: Option<std::path::PathBuf>,
    /// A draft model for speculative decoding, planned in what the model leaves free.
    #[arg(long, value_name = "MODEL")]
    draft_model: Option<String>,
    /// Sequences held at once (as `serve --parallel`).
    #[arg(long, value_name = "N", default_value_t = 1)]
    parallel: usize,
    /// Tokens drafted per step when speculating (MTP or --draft-model), as `run` and
    /// `serve` do: the logit rows a step keeps (0: no speculation, as `--spec none`).
    #[arg(long, value_name = "N", default_value_t = engine::speculative::MAX_DRAFT)]
    draft_max: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Then load the model as planned (every buffer allocated, nothing run) and exit: a
    /// check that it fits, and what the emulator's peak-allocation counters compare with.
    #[arg(long)]
    load: bool,
}

/// Runs `surplus plan`.
pub fn run(args: Args) -> Result<()> {
    anyhow::ensure!(
        (1..=256).contains(&args.parallel),
        "--parallel must be in 1..=256"
    );
    let pull = registry::PullOptions {
        progress: crate::progress_enabled(),
        force: false,
    };
    let path = registry::resolve(&args.model.model, &pull)?;
    let speculates = args.draft_max > 0 && (args.draft_model.is_some() || has_mtp(&path));
    let rows = args.parallel * if speculates { args.draft_max + 1 } else { 1 };
    let mut eo = args.model.options(rows);
    eo.n_seq = args.parallel;
    if args.parallel > 1 {
        eo.n_batch = eo.n_batch.max(rows);
    }
    if let Some(mmproj) = &args.mmproj {
        eo.vision_bytes = crate::run::vision_bytes(mmproj)?;
    }
    let dpath = match &args.draft_model {
        Some(name) => Some(registry::resolve(name, &pull)?),
        None => None,
    };
    eo.draft_model = dpath.clone();
    let p = engine::plan::plan_file(&path, &eo)?;
    let draft = match &dpath {
        None => None,
        Some(dpath) => {
            let deo = engine::EngineOptions {
                n_ctx: p.ctx,
                max_logit_rows: 1,
                vision_bytes: 0,
                tensor_split: Vec::new(),
                main_gpu: None,
                draft_model: None,
                ..eo.clone()
            };
            let model = engine::plan::load_header(dpath, 1)?;
            let devices = left_free(&p);
            Some(engine::plan::plan(&model, &devices, &deo)?)
        }
    };
    if args.load {
        let engine = crate::run::load_engine(&path, &eo)?;
        eprintln!("surplus: loaded: {}", engine.placement().trim_end());
    }
    if args.json {
        let mut out = to_json(&p);
        if let Some(d) = &draft {
            out["draft"] = to_json(d);
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!("{p}");
        if let Some(d) = &draft {
            print!("draft model {d}");
        }
    }
    Ok(())
}

/// Whether the file has MTP blocks (read from its header).
fn has_mtp(path: &std::path::Path) -> bool {
    gguf::Gguf::open(path).ok().is_some_and(|g| {
        let arch = g.architecture().unwrap_or_default().to_string();
        let key = format!("{arch}.nextn_predict_layers");
        g.metadata().get_u64(&key).unwrap_or(0) > 0
    })
}

/// The devices with what `p` takes of each (and its margin) no longer free.
fn left_free(p: &Placement) -> Vec<engine::plan::DeviceSpec> {
    let mut devices = p.devices.clone();
    for s in &p.stages {
        let d = &mut devices[s.device];
        if d.gpu.is_some() {
            d.free = d.free.saturating_sub(s.bytes.total() + p.margins[s.device]);
        }
    }
    devices
}

/// The plan as `--json` prints it: every GPU (`blocks` null when it holds none), the CPU
/// when it holds blocks or the vision tower.
pub fn to_json(p: &Placement) -> Value {
    let mut devices = Vec::new();
    for (i, d) in p.devices.iter().enumerate() {
        let stage: Option<&Stage> = p.stages.iter().find(|s| s.device == i);
        if d.gpu.is_none() && stage.is_none() {
            continue;
        }
        let b = stage.map(|s| s.bytes).unwrap_or_default();
        let blocks = match stage {
            Some(s) if !s.blocks.is_empty() => json!([s.blocks.start, s.blocks.end - 1]),
            _ => Value::Null,
        };
        let ms = stage
            .filter(|s| !s.blocks.is_empty())
            .map_or(0.0, |s| s.read_per_token as f64 / d.bandwidth * 1e3);
        devices.push(json!({
            "name": d.name,
            "gpu": d.gpu,
            "blocks": blocks,
            "head": stage.is_some_and(|s| s.last && !s.blocks.is_empty()),
            "bytes": {
                "weights": b.weights,
                "kv": b.kv,
                "recurrent": b.recurrent,
                "vision": b.vision,
                "scratch": b.scratch,
                "total": b.total(),
            },
            "free_bytes": d.free,
            "total_bytes": d.total,
            "margin_bytes": p.margins[i],
            "draft_reserve_bytes": p.draft_reserve[i],
            "bandwidth_gbps": d.bandwidth / 1e9,
            "bandwidth_from": d.bandwidth_from,
            "read_bytes_per_token": stage.map_or(0, |s| s.read_per_token),
            "ms_per_token": ms,
        }));
    }
    let kv = |(k, v): (runtime::KvType, runtime::KvType)| json!([k.to_string(), v.to_string()]);
    json!({
        "devices": devices,
        "ctx": p.ctx,
        "n_seq": p.n_seq,
        "n_blocks": p.n_blocks,
        "gpu_blocks": p.gpu_blocks(),
        "kv_types": {"gpu": kv(p.gpu_kv), "cpu": kv(p.cpu_kv)},
        "predicted_tokens_per_s": p.predicted_tokens_per_s,
        "predicted_at_position": engine::plan::PREDICT_AT.min(p.ctx),
        "notes": p.notes,
    })
}
