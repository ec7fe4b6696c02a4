//! Where a model runs: the CPU, GPUs through CUDA, or a pipeline of several (as
//! [`crate::plan`] decides at load), behind one type the rest of the engine drives.

use std::ops::Range;
use std::str::FromStr;
use std::sync::Arc;

use model::Model;
use runtime::cpu::CpuBackend;
use runtime::cuda::backend::{AttnShape, CudaBackend};
use runtime::cuda::gpu::GpuContext;
use runtime::KvType;
use runtime::{Act, Batch, Device, Ops, Program, Rollback};
use runtime::{KvConfig, RecurrentConfig};

use crate::plan::{self, DeviceSpec};
use crate::{EngineError, EngineOptions};

/// How many of a model's layers go to the GPU (`--gpu-layers N|all|auto`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GpuLayers {
    /// All of them when CUDA is usable and the model fits, else as many as fit (the
    /// fastest GPUs first), else none (with the reason in [`crate::Engine::placement`]).
    #[default]
    Auto,
    /// This many blocks on the GPUs, the rest (and then the LM head and any MTP block) on
    /// the CPU; 0 is the CPU alone.
    Count(usize),
    /// Every block; an error when CUDA is unusable or the model does not fit.
    All,
}

impl GpuLayers {
    /// For tests: every layer on the GPU when `SURPLUS_TEST_GPU=1`, else the CPU. The same
    /// tests then check either device.
    pub fn for_tests() -> GpuLayers {
        if runtime::cuda::gpu_tests_required() {
            GpuLayers::All
        } else {
            GpuLayers::Count(0)
        }
    }
}

impl FromStr for GpuLayers {
    type Err = String;

    fn from_str(s: &str) -> Result<GpuLayers, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "all" | "max" => Ok(GpuLayers::All),
            "auto" => Ok(GpuLayers::Auto),
            n => n.parse().map(GpuLayers::Count).map_err(|_| {
                format!("--gpu-layers takes a number of layers, `all` or `auto`, not {s:?}")
            }),
        }
    }
}

/// Which forward pass to run.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Pass {
    /// The model.
    Trunk,
    /// Multi-token-prediction block `k`.
    Mtp(usize),
}

/// Part of a model's pass, as a device runs it: blocks `layers` of the trunk (with the
/// embeddings from block 0, the head at the last block), or an MTP block.
struct Part<'a> {
    model: &'a Model,
    pass: Pass,
    layers: Range<usize>,
}

impl Program for Part<'_> {
    fn run<O: Ops>(&self, o: &O) {
        match self.pass {
            Pass::Trunk => self.model.forward_layers(o, self.layers.clone()),
            Pass::Mtp(k) => self.model.mtp_forward(o, k),
        }
    }
}

/// One device of a loaded model and the blocks it runs.
struct Stage {
    dev: Box<dyn Device>,
    layers: Range<usize>,
    /// Whether the residual comes from the previous stage's GPU peer to peer (else through
    /// host memory).
    peer: bool,
}

/// A loaded model's devices, in order: the first runs the embeddings, each a range of
/// blocks, the residual stream (`acts.x`) copied from one to the next; the last runs the
/// head and the MTP blocks, and holds the activations the engine reads and writes.
pub(crate) struct Backend {
    stages: Vec<Stage>,
}

impl Backend {
    /// The model on one device.
    fn one(dev: Box<dyn Device>, n_layers: usize) -> Backend {
        Backend {
            stages: vec![Stage {
                dev,
                layers: 0..n_layers,
                peer: false,
            }],
        }
    }

    /// The device the engine reads and writes.
    fn last(&mut self) -> &mut dyn Device {
        &mut *self.stages.last_mut().expect("a backend has a device").dev
    }

    pub(crate) fn forward(
        &mut self,
        batch: &Batch,
        model: &Model,
        pass: Pass,
    ) -> Result<(), EngineError> {
        let vocab = model.hp.n_vocab;
        if let Pass::Mtp(_) = pass {
            let part = Part {
                model,
                pass,
                layers: 0..0,
            };
            return Ok(self.last().forward(batch, vocab, &part)?);
        }
        for i in 0..self.stages.len() {
            let (done, rest) = self.stages.split_at_mut(i);
            if let Some(prev) = done.last_mut() {
                let (x, n) = (model.acts.x, batch.len());
                match (rest[0].peer, prev.dev.as_cuda(), rest[0].dev.as_cuda()) {
                    (true, Some(a), Some(b)) => a.copy_act_to(x, n, b)?,
                    _ => {
                        let rows = prev.dev.read(x, n)?;
                        rest[0].dev.write(x, rows)?;
                    }
                }
            }
            let part = Part {
                model,
                pass,
                layers: rest[0].layers.clone(),
            };
            rest[0].dev.forward(batch, vocab, &part)?;
        }
        Ok(())
    }

    pub(crate) fn read(&mut self, act: Act, rows: usize) -> Result<&[f32], EngineError> {
        Ok(self.last().read(act, rows)?)
    }

    pub(crate) fn write(&mut self, act: Act, data: &[f32]) -> Result<(), EngineError> {
        Ok(self.last().write(act, data)?)
    }

    /// The devices, in order.
    pub(crate) fn stages(&self) -> impl Iterator<Item = &dyn Device> {
        self.stages.iter().map(|s| &*s.dev)
    }

    /// The devices, in order, mutably.
    pub(crate) fn stages_mut(&mut self) -> impl Iterator<Item = &mut (dyn Device + 'static)> {
        self.stages.iter_mut().map(|s| &mut *s.dev)
    }

    pub(crate) fn n_threads(&self) -> usize {
        self.stages.last().map_or(1, |s| s.dev.n_threads())
    }

    /// Copies the KV cache of sequence `src` up to `len` positions into `dst` on every
    /// stage.
    pub(crate) fn kv_copy(
        &mut self,
        src: usize,
        dst: usize,
        len: usize,
    ) -> Result<(), EngineError> {
        for s in &mut self.stages {
            s.dev.kv_copy(src, dst, len)?;
        }
        Ok(())
    }

    /// Whether any part of the model runs on a GPU.
    pub(crate) fn on_gpu(&self) -> bool {
        self.stages.iter().any(|s| s.dev.is_gpu())
    }

    pub(crate) fn share_pool(&mut self, other: &Backend) -> bool {
        let theirs = other.stages.last().and_then(|s| s.dev.as_cpu());
        match (self.last().as_cpu_mut(), theirs) {
            (Some(a), Some(b)) => a.share_pool(b),
            _ => false,
        }
    }
}

impl Rollback for Backend {
    type Error = EngineError;

    fn rollback(&mut self, seq: u32, len: usize) -> Result<(), EngineError> {
        for s in &mut self.stages {
            s.dev.rollback(seq, len)?;
        }
        Ok(())
    }
}

/// Checks that a KV cache of `kv`'s types fits the model's rows and heads (`head_dim`
/// values): a quantized type's blocks may not straddle two heads, which attention reads one
/// at a time. Every device stores f32, f16, q8_0 and q4_0; the CUDA backend checks its own
/// limits at load.
fn check_kv(kv: &KvConfig, head_dim: usize) -> Result<(), EngineError> {
    kv.check().map_err(EngineError::Placement)?;
    for t in [kv.k_type, kv.v_type] {
        if !head_dim.is_multiple_of(t.block()) {
            return Err(EngineError::Placement(format!(
                "a {t} KV cache needs heads of whole {}-value blocks; this model's are {head_dim} wide (use f16 or f32)",
                t.block()
            )));
        }
    }
    Ok(())
}

/// Loads the model and makes its backend as `opts` asks ([`crate::plan`] decides which
/// device runs which blocks and the context). Returns the model (loaded without CPU
/// repacking when any of it runs on a GPU), the backend, the context, and the placement in
/// words (the plan for GPUs, the reason for the CPU).
pub(crate) fn place(
    file: Arc<gguf::Gguf>,
    opts: &EngineOptions,
    n_threads: usize,
) -> Result<(Model, Backend, usize, String), EngineError> {
    let max_logit_rows = opts.max_logit_rows.max(1);
    let layers = opts.gpu_layers;
    let explicit = !matches!(layers, GpuLayers::Auto | GpuLayers::Count(0));
    let cpu = |file: Arc<gguf::Gguf>, why: String| -> Result<_, EngineError> {
        let model = Model::load(file, max_logit_rows)?;
        let ctx = match opts.n_ctx {
            0 => model.hp.n_ctx_train.min(plan::MIN_FIT_CTX),
            n => n,
        };
        let kv = KvConfig {
            n_layers: model.kv_layers(),
            kv_dim: model.hp.kv_dim(),
            n_ctx: ctx,
            n_seq: opts.n_seq.max(1),
            k_type: opts.cache_type_k.unwrap_or(KvType::F32),
            v_type: opts.cache_type_v.unwrap_or(KvType::F32),
        };
        check_kv(&kv, model.hp.head_dim)?;
        let mut be = CpuBackend::new(model.plan(), opts.n_batch.clamp(1, ctx), kv, n_threads);
        if let Some((n_layers, net)) = model.recurrent() {
            be = be.with_recurrent(RecurrentConfig { n_layers, net });
        }
        let line = format!("CPU ({} threads): {why}", be.n_threads());
        let n_layers = model.hp.n_layer;
        Ok((model, Backend::one(Box::new(be), n_layers), ctx, line))
    };
    if layers == GpuLayers::Count(0) {
        return cpu(file, "--gpu-layers 0".into());
    }
    let unusable = |reason: String| -> Result<_, EngineError> {
        if explicit {
            Err(EngineError::Placement(format!(
                "--gpu-layers asks for the GPU, but CUDA is unusable: {reason}"
            )))
        } else {
            cpu(file.clone(), format!("CUDA is off: {reason}"))
        }
    };
    let info = match runtime::cuda::device::probe() {
        Ok(i) => i,
        Err(reason) => return unusable(reason),
    };
    // Every GPU the driver shows, by its free memory (a context of its own, no kernels);
    // planned, then the GPUs the plan uses opened (kernels loaded). One that fails to open
    // is left out with its reason and the rest planned again.
    let mut specs = Vec::new();
    let mut left_out = Vec::new();
    for g in &info.gpus {
        match runtime::cuda::gpu::memory_info(g.ordinal) {
            Ok((free, _)) => specs.push(DeviceSpec::gpu(g, free, &opts.measured_bandwidth)),
            Err(e) => left_out.push(e),
        }
    }
    specs.push(DeviceSpec::cpu());
    let model = Model::load_with(file.clone(), max_logit_rows, false)?;
    let gpu_kv = KvConfig {
        n_layers: model.kv_layers(),
        kv_dim: model.hp.kv_dim(),
        n_ctx: 1,
        n_seq: 1,
        k_type: opts.cache_type_k.unwrap_or(KvType::F16),
        v_type: opts.cache_type_v.unwrap_or(KvType::F16),
    };
    check_kv(&gpu_kv, model.hp.head_dim)?;
    let draft = match &opts.draft_model {
        Some(d) => Some(plan::load_header(d, 1)?),
        None => None,
    };
    let mut gpus: Vec<(usize, Option<GpuContext>)> = Vec::new();
    let placement = loop {
        if specs.len() == 1 {
            let why = if left_out.is_empty() {
                "the driver shows no GPU".to_string()
            } else {
                left_out.join("; ")
            };
            drop(model);
            return unusable(why);
        }
        let placement = plan::plan_with_draft(&model, draft.as_ref(), &specs, opts)?;
        let failed = placement.block_stages().find_map(|s| {
            let ordinal = placement.devices[s.device].gpu?;
            if gpus.iter().any(|(o, _)| *o == ordinal) {
                return None;
            }
            match GpuContext::open(ordinal) {
                Ok(dev) => {
                    gpus.push((ordinal, Some(dev)));
                    None
                }
                Err(e) => Some((ordinal, e)),
            }
        });
        match failed {
            None => break placement,
            Some((ordinal, e)) => {
                left_out.push(e);
                specs.retain(|d| d.gpu != Some(ordinal));
            }
        }
    };
    if placement.gpu_blocks() == 0 {
        let why = format!(
            "the model does not fit the GPU{}: {}",
            if specs.len() > 2 { "s" } else { "" },
            placement.to_string().trim_end()
        );
        drop(model);
        return cpu(file, why);
    }
    let on_gpu = |s: &&plan::Stage| placement.devices[s.device].gpu.is_some();
    let unsupported = placement.block_stages().filter(on_gpu).find_map(|s| {
        plan::collect(&model, &s.blocks, s.last)
            .weights
            .iter()
            .find_map(|w| runtime::cuda::backend::check_weight(w).err())
    });
    if let Some(why) = unsupported {
        if !explicit {
            drop(model);
            return cpu(file, format!("the GPU cannot take this model: {why}"));
        }
    }
    let ctx = placement.ctx;
    let n_batch = opts.n_batch.clamp(1, ctx);
    let attn = AttnShape {
        max_heads: model.hp.n_head.max(1),
        max_head_dim: model.hp.head_dim.max(32),
    };
    let mut stages = Vec::new();
    let mut how = String::new();
    for s in placement.block_stages() {
        let (kv_first, rec_first) = (s.kv_layers.start, s.rec_layers.start);
        let dev: Box<dyn Device> = match placement.devices[s.device].gpu {
            Some(ordinal) => {
                let dev = gpus
                    .iter_mut()
                    .find(|(o, _)| *o == ordinal)
                    .and_then(|(_, d)| d.take())
                    .ok_or_else(|| EngineError::Placement(format!("GPU {ordinal} is gone")))?;
                let used = plan::collect(&model, &s.blocks, s.last);
                let be = CudaBackend::new(
                    dev,
                    model.plan(),
                    n_batch,
                    s.kv.clone(),
                    s.rec.clone(),
                    attn,
                    &used,
                )?
                .with_first_layers(kv_first, rec_first);
                if how.is_empty() {
                    let (graphs, _) = be.graphs();
                    how = format!(
                        "prompts by {}; decode {}",
                        if be.has_cublas() {
                            "cuBLAS"
                        } else {
                            "the matrix x vector kernels (no cuBLAS)"
                        },
                        if graphs {
                            "by CUDA graph replay"
                        } else {
                            "without CUDA graphs"
                        }
                    );
                }
                Box::new(be)
            }
            None => {
                check_kv(&s.kv, model.hp.head_dim)?;
                let mut be = CpuBackend::new(model.plan(), n_batch, s.kv.clone(), n_threads);
                if let Some(r) = s.rec.clone() {
                    be = be.with_recurrent(r);
                }
                Box::new(be.with_first_layers(kv_first, rec_first))
            }
        };
        let peer = match (
            stages.last().and_then(|p: &Stage| p.dev.as_cuda()),
            dev.as_cuda(),
        ) {
            (Some(a), Some(b)) => a.enable_peer(b),
            _ => false,
        };
        stages.push(Stage {
            dev,
            layers: s.blocks.clone(),
            peer,
        });
    }
    let mut line = placement.to_string();
    if stages.iter().any(|s| s.peer) {
        line.push_str("  note: GPUs pass the residual peer to peer\n");
    } else if stages.iter().filter(|s| s.dev.is_gpu()).count() > 1 {
        line.push_str("  note: GPUs pass the residual through host memory (no peer access)\n");
    }
    if stages.iter().any(|s| !s.dev.is_gpu()) {
        line.push_str("  note: the CPU part keeps the file's layout (not repacked)\n");
    }
    for e in &left_out {
        line.push_str(&format!("  note: left out: {e}\n"));
    }
    line.push_str(&format!("  {how}"));
    Ok((model, Backend { stages }, ctx, line))
}
