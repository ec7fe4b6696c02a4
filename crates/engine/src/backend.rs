//! Where a model runs: the CPU, or one GPU through CUDA, picked at load
//! ([`GpuLayers`]), behind one type the rest of the engine drives.

use std::str::FromStr;
use std::sync::Arc;

use model::Model;
use runtime::collect::Collect;
use runtime::cpu::CpuBackend;
use runtime::cuda::backend::{AttnShape, CudaBackend};
use runtime::cuda::gpu::GpuContext;
use runtime::{Act, Batch, Ops, Rollback};
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

fn run<O: Ops>(m: &Model, pass: Pass, o: &O) {
    match pass {
        Pass::Trunk => m.forward(o),
        Pass::Mtp(k) => m.mtp_forward(o, k),
    }
}

/// A loaded model's device (the CPU's buffers are few and live as long as the engine; the
/// size difference of the variants does not matter).
#[allow(clippy::large_enum_variant)]
pub(crate) enum Backend {
    Cpu(CpuBackend),
    Cuda(Box<CudaBackend>),
    /// The first `n_gpu` blocks (and the embeddings) on the GPU, the residual stream copied
    /// to the CPU, which runs the other blocks, the head and the MTP blocks. Reads and writes
    /// of activations go to the CPU side.
    Split {
        gpu: Box<CudaBackend>,
        cpu: CpuBackend,
        n_gpu: usize,
    },
}

impl Backend {
    pub(crate) fn forward(
        &mut self,
        batch: &Batch,
        model: &Model,
        pass: Pass,
    ) -> Result<(), EngineError> {
        let vocab = model.hp.n_vocab;
        match self {
            Backend::Cpu(b) => Ok(b.forward(batch, vocab, |o| run(model, pass, o))?),
            Backend::Cuda(b) => Ok(b.forward(batch, vocab, |o| run(model, pass, o))?),
            Backend::Split { gpu, cpu, n_gpu } => match pass {
                Pass::Trunk => {
                    let (k, n) = (*n_gpu, model.hp.n_layer);
                    gpu.forward(batch, vocab, |o| model.forward_layers(o, 0..k))?;
                    let x = gpu.read(model.acts.x, batch.len())?;
                    cpu.write(model.acts.x, x);
                    Ok(cpu.forward(batch, vocab, |o| model.forward_layers(o, k..n))?)
                }
                Pass::Mtp(_) => Ok(cpu.forward(batch, vocab, |o| run(model, pass, o))?),
            },
        }
    }

    pub(crate) fn read(&mut self, act: Act, rows: usize) -> Result<&[f32], EngineError> {
        match self {
            Backend::Cpu(b) | Backend::Split { cpu: b, .. } => Ok(b.read(act, rows)),
            Backend::Cuda(b) => Ok(b.read(act, rows)?),
        }
    }

    pub(crate) fn write(&mut self, act: Act, data: &[f32]) -> Result<(), EngineError> {
        match self {
            Backend::Cpu(b) | Backend::Split { cpu: b, .. } => {
                b.write(act, data);
                Ok(())
            }
            Backend::Cuda(b) => Ok(b.write(act, data)?),
        }
    }

    pub(crate) fn n_threads(&self) -> usize {
        match self {
            Backend::Cpu(b) | Backend::Split { cpu: b, .. } => b.n_threads(),
            Backend::Cuda(_) => 1,
        }
    }

    pub(crate) fn share_pool(&mut self, other: &Backend) -> bool {
        match (self, other) {
            (
                Backend::Cpu(a) | Backend::Split { cpu: a, .. },
                Backend::Cpu(b) | Backend::Split { cpu: b, .. },
            ) => a.share_pool(b),
            _ => false,
        }
    }
}

impl Rollback for Backend {
    type Error = EngineError;

    fn rollback(&mut self, seq: u32, len: usize) -> Result<(), EngineError> {
        match self {
            Backend::Cpu(b) => Ok(b.rollback(seq, len)?),
            Backend::Cuda(b) => Ok(b.rollback(seq, len)?),
            Backend::Split { gpu, cpu, .. } => {
                gpu.rollback(seq, len)?;
                Ok(cpu.rollback(seq, len)?)
            }
        }
    }
}

/// Everything [`place`] needs besides the model.
pub(crate) struct Shape {
    pub kv: KvConfig,
    pub n_batch: usize,
    pub n_threads: usize,
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
        let mut be = CpuBackend::new(model.plan(), s.n_batch, s.kv, s.n_threads);
        if let Some((n_layers, net)) = model.recurrent() {
            be = be.with_recurrent(RecurrentConfig { n_layers, net });
        }
        let line = format!("CPU ({} threads): {why}", be.n_threads());
        Ok((model, Backend::Cpu(be), line))
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
        let mut cpu = CpuBackend::new(model.plan(), s.n_batch, s.kv, s.n_threads);
        if let Some(r) = full_rec {
            cpu = cpu.with_recurrent(r);
        }
        let be = Backend::Split {
            gpu: Box::new(be),
            cpu,
            n_gpu,
        };
        return Ok((model, be, line));
    }
    Ok((model, Backend::Cuda(Box::new(be)), line))
}
