//! Where a model runs: the CPU, or one GPU through CUDA, picked at load
//! ([`GpuLayers`]), behind one type the rest of the engine drives.

use std::ops::Range;
use std::str::FromStr;
use std::sync::Arc;

use model::Model;
use runtime::collect::Collect;
use runtime::cpu::CpuBackend;
use runtime::cuda::backend::{AttnShape, CudaBackend};
use runtime::cuda::gpu::GpuContext;
use runtime::KvType;
use runtime::{Act, Batch, Device, Ops, Program, Rollback};
use runtime::{KvConfig, RecurrentConfig};

use crate::EngineError;

/// How many of a model's layers go to the GPU (`--gpu-layers N|all|auto`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GpuLayers {
    /// All of them when CUDA is usable and the model fits, else as many leading blocks as
    /// fit, else none (with the reason in [`crate::Engine::placement`]).
    #[default]
    Auto,
    /// This many: the first N blocks on the GPU, the rest (and the LM head, and any MTP
    /// block) on the CPU; 0 is the CPU alone.
    Count(usize),
    /// Every layer; an error when CUDA is unusable or the model does not fit.
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
                let x = prev.dev.read(model.acts.x, batch.len())?;
                rest[0].dev.write(model.acts.x, x)?;
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

/// Everything [`place`] needs besides the model.
pub(crate) struct Shape {
    /// The KV cache as the CPU holds it.
    pub kv: KvConfig,
    /// The key and value types of a GPU's KV cache.
    pub gpu_kv_types: (KvType, KvType),
    pub n_batch: usize,
    pub n_threads: usize,
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

/// Loads the model and makes its backend as `layers` asks. Returns the model (loaded
/// without CPU repacking when it runs on the GPU), the backend, and one line saying where it
/// runs (the memory plan for a GPU, the reason for the CPU).
pub(crate) fn place(
    file: Arc<gguf::Gguf>,
    max_logit_rows: usize,
    layers: GpuLayers,
    shape: impl Fn(&Model) -> Shape,
) -> Result<(Model, Backend, String), EngineError> {
    let explicit = !matches!(layers, GpuLayers::Auto | GpuLayers::Count(0));
    let cpu = |file: Arc<gguf::Gguf>, why: String| -> Result<_, EngineError> {
        let model = Model::load(file, max_logit_rows)?;
        let s = shape(&model);
        check_kv(&s.kv, model.hp.head_dim)?;
        let mut be = CpuBackend::new(model.plan(), s.n_batch, s.kv, s.n_threads);
        if let Some((n_layers, net)) = model.recurrent() {
            be = be.with_recurrent(RecurrentConfig { n_layers, net });
        }
        let line = format!("CPU ({} threads): {why}", be.n_threads());
        let n_layers = model.hp.n_layer;
        Ok((model, Backend::one(Box::new(be), n_layers), line))
    };
    if layers == GpuLayers::Count(0) {
        return cpu(file, "--gpu-layers 0".into());
    }
    let dev = match GpuContext::open(0) {
        Ok(d) => d,
        Err(reason) if !explicit => return cpu(file, format!("CUDA is off: {reason}")),
        Err(reason) => {
            return Err(EngineError::Placement(format!(
                "--gpu-layers asks for the GPU, but CUDA is unusable: {reason}"
            )))
        }
    };
    let model = Model::load_with(file.clone(), max_logit_rows, false)?;
    let n_layers = model.hp.n_layer;
    let s = shape(&model);
    let gpu_kv = KvConfig {
        k_type: s.gpu_kv_types.0,
        v_type: s.gpu_kv_types.1,
        ..s.kv.clone()
    };
    check_kv(&gpu_kv, model.hp.head_dim)?;
    let full_rec = model
        .recurrent()
        .map(|(n_layers, net)| RecurrentConfig { n_layers, net });
    let attn = AttnShape {
        max_heads: model.hp.n_head.max(1),
        max_head_dim: model.hp.head_dim.max(32),
    };
    // What the GPU holds with the first n blocks on it: the weights and vectors its passes
    // read (the model's code run once without a device), the KV and recurrent state of its
    // blocks (layer numbers from 0 match), and the memory plan.
    let part = |n_gpu: usize| {
        let split = n_gpu < n_layers;
        let c = Collect::new(Batch::one_sequence(&[0], 0, 0, true));
        model.forward_layers(&c, 0..n_gpu);
        if !split {
            for k in 0..model.n_mtp() {
                model.mtp_forward(&c, k);
            }
        }
        let used = c.finish();
        let (kv_before, rec_before) = if split {
            model.state_layers_before(n_gpu)
        } else {
            (s.kv.n_layers, full_rec.as_ref().map_or(0, |r| r.n_layers))
        };
        let kv = KvConfig {
            n_layers: kv_before,
            k_type: s.gpu_kv_types.0,
            v_type: s.gpu_kv_types.1,
            ..s.kv.clone()
        };
        let rec = full_rec
            .clone()
            .filter(|_| rec_before > 0)
            .map(|r| RecurrentConfig {
                n_layers: rec_before,
                ..r
            });
        let plan = CudaBackend::plan_memory(
            &dev,
            model.plan(),
            s.n_batch,
            &kv,
            rec.as_ref(),
            attn,
            &used,
        );
        (used, kv, rec, plan)
    };
    // Blocks on the GPU: as asked, or (auto) all when they fit, else as many as fit.
    let mut n_gpu = match layers {
        GpuLayers::Count(n) => n.min(n_layers),
        _ => n_layers,
    };
    let (mut used, mut gpu_kv, mut rec, mut plan) = part(n_gpu);
    if let Some(why) = used
        .weights
        .iter()
        .find_map(|w| runtime::cuda::backend::check_weight(w).err())
    {
        if !explicit {
            drop(model);
            return cpu(file, format!("the GPU cannot take this model: {why}"));
        }
    }
    if !explicit && !plan.fits() {
        // The most blocks that fit (the plan grows with each block).
        let (mut lo, mut hi) = (0, n_layers);
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if part(mid).3.fits() {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        if lo == 0 {
            let why = format!("the model does not fit the GPU: {plan}");
            drop(model);
            return cpu(file, why);
        }
        n_gpu = lo;
        (used, gpu_kv, rec, plan) = part(n_gpu);
    }
    let split = n_gpu < n_layers;
    let be = CudaBackend::new(dev, model.plan(), s.n_batch, gpu_kv, rec, attn, &used)?;
    let (graphs, _) = be.graphs();
    let line = format!(
        "{n_gpu} of {n_layers} layers on the GPU{}: {plan}; prompts by {}; decode {}",
        if split {
            format!(
                ", {} on the CPU ({} threads; the CPU part keeps the file's layout)",
                n_layers - n_gpu,
                s.n_threads
            )
        } else {
            String::new()
        },
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
    if split {
        check_kv(&s.kv, model.hp.head_dim)?;
        let mut cpu = CpuBackend::new(model.plan(), s.n_batch, s.kv, s.n_threads);
        if let Some(r) = full_rec {
            cpu = cpu.with_recurrent(r);
        }
        let be = Backend {
            stages: vec![
                Stage {
                    dev: Box::new(be),
                    layers: 0..n_gpu,
                },
                Stage {
                    dev: Box::new(cpu),
                    layers: n_gpu..n_layers,
                },
            ],
        };
        return Ok((model, be, line));
    }
    Ok((model, Backend::one(Box::new(be), n_layers), line))
}
