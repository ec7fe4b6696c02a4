//! Where a model's blocks go, decided before anything is allocated: each GPU's and the CPU's
//! contiguous range of blocks by memory and bandwidth, the context that fits, and the bytes
//! every device holds ([`Placement`], printed at load and by `surplus plan`).
//!
//! One token passes every device in turn, so a decode step takes the sum over devices of the
//! bytes each reads divided by its bandwidth. The planner fills the fastest GPUs first (equal
//! ones in proportion to what fits on each), the CPU takes what is left, and the context is
//! the largest that keeps every block on a GPU (down to 4096 positions before blocks move to
//! the CPU). A GPU's bytes are those [`runtime::cuda::backend::CudaBackend::new`] allocates,
//! from the same sizing function; the same inputs always give the same plan.

use std::fmt;
use std::ops::Range;

use model::Model;
use runtime::collect::{Collect, Collected};
use runtime::cuda::backend::{gpu_memory, reserve_bytes, AttnShape};
use runtime::{Batch, KvConfig, KvType, RecurrentConfig};

use crate::backend::GpuLayers;
use crate::{EngineError, EngineOptions};

/// The smallest context the planner gives up to keep blocks on the GPUs (or the model's own,
/// if smaller).
pub const MIN_FIT_CTX: usize = 4096;
/// Contexts are planned in multiples of this.
const CTX_STEP: usize = 256;
/// The position decode speed is predicted at (keys and values read per token).
pub const PREDICT_AT: usize = 4096;
/// The CPU's bandwidth when nothing better is known, bytes/s.
pub const CPU_BANDWIDTH: f64 = 40e9;

/// One device a model can use.
#[derive(Clone, Debug)]
pub struct DeviceSpec {
    /// `GPU 0 (Tesla V100, sm_70)`, or `cpu`.
    pub name: String,
    /// The driver's ordinal of a GPU; `None` for the CPU.
    pub gpu: Option<usize>,
    /// Bytes free before loading (the CPU: available memory, not a limit the plan keeps).
    pub free: usize,
    /// Bytes of memory.
    pub total: usize,
    /// Memory bandwidth, bytes/s.
    pub bandwidth: f64,
    /// Where the bandwidth figure comes from.
    pub bandwidth_from: &'static str,
}

impl DeviceSpec {
    /// The CPU: available memory from `/proc/meminfo`, [`CPU_BANDWIDTH`].
    pub fn cpu() -> DeviceSpec {
        let avail = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                let kib = |key: &str| {
                    m.lines()
                        .find(|l| l.starts_with(key))
                        .and_then(|l| l.split_whitespace().nth(1))
                        .and_then(|v| v.parse::<usize>().ok())
                };
                Some((kib("MemAvailable:")? * 1024, kib("MemTotal:")? * 1024))
            })
            .unwrap_or((0, 0));
        DeviceSpec {
            name: "cpu".into(),
            gpu: None,
            free: avail.0,
            total: avail.1,
            bandwidth: CPU_BANDWIDTH,
            bandwidth_from: "estimate",
        }
    }

    /// A GPU as the driver reports it, with `free` bytes free. Its bandwidth: measured by
    /// `surplus doctor --bandwidth` (in `measured`, by name), else the driver's memory clock
    /// × bus width (the emulator's configured figure), else [`known_bandwidth`], else a
    /// guess of 500 GB/s.
    pub fn gpu(
        info: &runtime::cuda::device::GpuInfo,
        free: usize,
        measured: &[(String, f64)],
    ) -> DeviceSpec {
        let mine = measured
            .iter()
            .find(|(name, b)| *name == info.name && *b > 0.0)
            .map(|&(_, b)| b);
        let (bandwidth, bandwidth_from) = match (mine, info.peak_bandwidth) {
            (Some(b), _) => (b, "measured"),
            (None, Some(b)) if b > 0.0 => (b, "driver"),
            _ => match known_bandwidth(&info.name) {
                Some(b) => (b, "known cards"),
                None => (500e9, "guess"),
            },
        };
        DeviceSpec {
            name: format!("GPU {} ({}, sm_{})", info.ordinal, info.name, info.sm),
            gpu: Some(info.ordinal),
            free,
            total: info.memory_bytes as usize,
            bandwidth,
            bandwidth_from,
        }
    }

    fn is_gpu(&self) -> bool {
        self.gpu.is_some()
    }
}

/// Memory bandwidth of well-known cards by name, bytes/s (a driver that reports no memory
/// clock).
pub fn known_bandwidth(name: &str) -> Option<f64> {
    const CARDS: &[(&str, f64)] = &[
        ("h200", 4800.0),
        ("h100 pcie", 2000.0),
        ("h100", 3350.0),
        ("a100", 1555.0),
        ("v100", 900.0),
        ("p100", 732.0),
        ("p40", 347.0),
        ("p4", 192.0),
        ("t4", 320.0),
        ("a10", 600.0),
        ("l4", 300.0),
        ("l40", 864.0),
        ("2060", 336.0),
        ("2070", 448.0),
        ("2080 ti", 616.0),
        ("2080", 448.0),
        ("3060", 360.0),
        ("3070", 448.0),
        ("3080", 760.0),
        ("3090", 936.0),
        ("4060", 272.0),
        ("4070", 504.0),
        ("4080", 717.0),
        ("4090", 1008.0),
        ("titan v", 653.0),
        ("titan xp", 548.0),
        ("1080 ti", 484.0),
        ("1080", 320.0),
    ];
    let n = name.to_ascii_lowercase();
    CARDS
        .iter()
        .find(|(k, _)| n.contains(k))
        .map(|&(_, gbps)| gbps * 1e9)
}

/// What one device holds, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bytes {
    /// Weight matrices and vectors of its blocks (the embeddings with the first, the head
    /// and MTP blocks with the last). On the CPU, the file's mapped bytes.
    pub weights: usize,
    /// Keys and values of its attention layers.
    pub kv: usize,
    /// Recurrent state of its Gated DeltaNet layers.
    pub recurrent: usize,
    /// The vision tower (CPU): its weights and the activations of the largest image.
    pub vision: usize,
    /// Activation buffers, quantized activations, weight tiles, attention partials.
    pub scratch: usize,
}

impl Bytes {
    /// All of it.
    pub fn total(&self) -> usize {
        self.weights + self.kv + self.recurrent + self.vision + self.scratch
    }
}

/// One device's part of a pass.
#[derive(Clone, Debug)]
pub struct Stage {
    /// Index into [`Placement::devices`].
    pub device: usize,
    /// The blocks it runs (empty for a CPU holding only the vision tower).
    pub blocks: Range<usize>,
    /// The model's KV-cache layers it holds (the MTP blocks' with the last stage).
    pub kv_layers: Range<usize>,
    /// The model's recurrent layers it holds.
    pub rec_layers: Range<usize>,
    /// What it holds.
    pub bytes: Bytes,
    /// Bytes one decode token reads on it (matmul weights, the KV of one sequence at
    /// [`PREDICT_AT`], recurrent state read and written).
    pub read_per_token: usize,
    /// Whether it runs the head (and any MTP block).
    pub last: bool,
    /// Its KV cache (layers counted from `kv_layers.start`).
    pub kv: KvConfig,
    /// Its recurrent state, if it has recurrent layers.
    pub rec: Option<RecurrentConfig>,
}

/// Where a model runs and what each device holds.
#[derive(Clone, Debug)]
pub struct Placement {
    /// Every device considered: the GPUs in driver order, then the CPU.
    pub devices: Vec<DeviceSpec>,
    /// Bytes kept free on each device (`--fit-margin`, or the default reserve).
    pub margins: Vec<usize>,
    /// Bytes kept on each device for a draft model loaded after this one (on the last GPU).
    pub draft_reserve: Vec<usize>,
    /// The devices holding blocks, in pass order (and the CPU when it holds only the vision
    /// tower, last, with no blocks).
    pub stages: Vec<Stage>,
    /// Context positions per sequence.
    pub ctx: usize,
    /// Sequences.
    pub n_seq: usize,
    /// Keys' and values' types on the GPUs.
    pub gpu_kv: (KvType, KvType),
    /// Keys' and values' types on the CPU.
    pub cpu_kv: (KvType, KvType),
    /// Blocks of the trunk.
    pub n_blocks: usize,
    /// Decode tokens per second the bandwidths predict for one sequence.
    pub predicted_tokens_per_s: f64,
    /// Why the context or the placement is what it is.
    pub notes: Vec<String>,
}

impl Placement {
    /// The stages with blocks (the ones a pass runs).
    pub fn block_stages(&self) -> impl Iterator<Item = &Stage> {
        self.stages.iter().filter(|s| !s.blocks.is_empty())
    }

    /// Blocks on GPUs.
    pub fn gpu_blocks(&self) -> usize {
        self.block_stages()
            .filter(|s| self.devices[s.device].is_gpu())
            .map(|s| s.blocks.len())
            .sum()
    }
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mib = |b: usize| b as f64 / (1u64 << 20) as f64;
        let types = |(k, v): (KvType, KvType)| {
            if k == v {
                k.to_string()
            } else {
                format!("K {k}, V {v}")
            }
        };
        writeln!(
            f,
            "plan: {} of {} blocks on GPUs, context {} × {} sequence(s), predicted decode {:.1} tokens/s",
            self.gpu_blocks(),
            self.n_blocks,
            self.ctx,
            self.n_seq,
            self.predicted_tokens_per_s
        )?;
        for s in &self.stages {
            let d = &self.devices[s.device];
            let b = &s.bytes;
            let blocks = if s.blocks.is_empty() {
                "no blocks".to_string()
            } else {
                format!("blocks {}-{}", s.blocks.start, s.blocks.end - 1)
            };
            let kv = if d.is_gpu() { self.gpu_kv } else { self.cpu_kv };
            write!(
                f,
                "  {}: {blocks}{}: weights {:.0} MiB, KV {:.0} MiB ({}), recurrent {:.0} MiB, \
                 vision {:.0} MiB, scratch {:.0} MiB = {:.0} MiB",
                d.name,
                if s.last && !s.blocks.is_empty() {
                    " + head"
                } else {
                    ""
                },
                mib(b.weights),
                mib(b.kv),
                types(kv),
                mib(b.recurrent),
                mib(b.vision),
                mib(b.scratch),
                mib(b.total()),
            )?;
            if self.draft_reserve[s.device] > 0 {
                write!(
                    f,
                    " (+{:.0} MiB for the draft model)",
                    mib(self.draft_reserve[s.device])
                )?;
            }
            if d.is_gpu() {
                write!(
                    f,
                    " (+{:.0} MiB margin) of {:.0} MiB free, {:.0} GB/s ({})",
                    mib(self.margins[s.device]),
                    mib(d.free),
                    d.bandwidth / 1e9,
                    d.bandwidth_from
                )?;
            }
            writeln!(f)?;
        }
        for n in &self.notes {
            writeln!(f, "  note: {n}")?;
        }
        Ok(())
    }
}

/// Why a layout does not fit: the first device over its memory.
#[derive(Clone, Debug)]
struct Shortfall {
    device: usize,
    need: usize,
    margin: usize,
    free: usize,
}

/// The planner for one model, devices and options.
struct Planner<'a> {
    model: &'a Model,
    /// A draft model loaded after this one: room for all of it is kept on the last GPU.
    draft: Option<&'a Model>,
    devices: &'a [DeviceSpec],
    opts: &'a EngineOptions,
    margins: Vec<usize>,
    /// GPU device indices in pass order (the main GPU last).
    order: Vec<usize>,
    cpu: Option<usize>,
    gpu_kv: (KvType, KvType),
    cpu_kv: (KvType, KvType),
    rec: Option<RecurrentConfig>,
    attn: AttnShape,
    n_blocks: usize,
}

impl<'a> Planner<'a> {
    fn new(
        model: &'a Model,
        draft: Option<&'a Model>,
        devices: &'a [DeviceSpec],
        opts: &'a EngineOptions,
        margins: Vec<usize>,
    ) -> Planner<'a> {
        Planner {
            model,
            draft,
            devices,
            opts,
            margins,
            order: (0..devices.len())
                .filter(|&i| devices[i].is_gpu())
                .collect(),
            cpu: devices.iter().position(|d| !d.is_gpu()),
            gpu_kv: (
                opts.cache_type_k.unwrap_or(KvType::F16),
                opts.cache_type_v.unwrap_or(KvType::F16),
            ),
            cpu_kv: (
                opts.cache_type_k.unwrap_or(KvType::F32),
                opts.cache_type_v.unwrap_or(KvType::F32),
            ),
            rec: model
                .recurrent()
                .map(|(n_layers, net)| RecurrentConfig { n_layers, net }),
            attn: AttnShape {
                max_heads: model.hp.n_head.max(1),
                max_head_dim: model.hp.head_dim.max(32),
            },
            n_blocks: model.hp.n_layer,
        }
    }

    fn n_batch(&self, ctx: usize) -> usize {
        self.opts.n_batch.clamp(1, ctx.max(1))
    }

    fn kv_layers(&self, blocks: &Range<usize>, last: bool) -> Range<usize> {
        let a = self.model.state_layers_before(blocks.start).0;
        let b = if last {
            self.model.kv_layers()
        } else {
            self.model.state_layers_before(blocks.end).0
        };
        a..b.max(a)
    }

    fn rec_layers(&self, blocks: &Range<usize>, last: bool) -> Range<usize> {
        let a = self.model.state_layers_before(blocks.start).1;
        let b = if last {
            self.rec.as_ref().map_or(0, |r| r.n_layers)
        } else {
            self.model.state_layers_before(blocks.end).1
        };
        a..b.max(a)
    }

    fn collect(&self, blocks: &Range<usize>, last: bool) -> Collected {
        collect(self.model, blocks, last)
    }

    /// The KV cache a stage of these layers holds.
    fn kv_config(&self, layers: &Range<usize>, ctx: usize, gpu: bool) -> KvConfig {
        let (k_type, v_type) = if gpu { self.gpu_kv } else { self.cpu_kv };
        KvConfig {
            n_layers: layers.len(),
            kv_dim: self.model.hp.kv_dim(),
            n_ctx: ctx,
            n_seq: self.opts.n_seq.max(1),
            k_type,
            v_type,
        }
    }

    fn rec_config(&self, layers: &Range<usize>) -> Option<RecurrentConfig> {
        self.rec
            .clone()
            .filter(|_| !layers.is_empty())
            .map(|r| RecurrentConfig {
                n_layers: layers.len(),
                ..r
            })
    }

    /// Device `dev` running `blocks` (the head and MTP blocks too when `last`).
    fn stage(&self, dev: usize, blocks: Range<usize>, last: bool, ctx: usize) -> Stage {
        let d = &self.devices[dev];
        let kv_layers = self.kv_layers(&blocks, last);
        let rec_layers = self.rec_layers(&blocks, last);
        let kv = self.kv_config(&kv_layers, ctx, d.is_gpu());
        let rec = self.rec_config(&rec_layers);
        let used = self.collect(&blocks, last);
        let n_batch = self.n_batch(ctx);
        let mut bytes = if d.is_gpu() {
            let m = gpu_memory(
                d.name.clone(),
                d.total,
                self.model.plan(),
                n_batch,
                &kv,
                rec.as_ref(),
                self.attn,
                &used,
            );
            Bytes {
                weights: m.weights,
                kv: m.kv_cache,
                recurrent: m.recurrent,
                vision: 0,
                scratch: m.activations + m.scratch,
            }
        } else {
            Bytes {
                weights: used.weights.iter().map(|w| w.bytes().len()).sum(),
                kv: kv.bytes(),
                recurrent: rec.as_ref().map_or(0, |r| r.bytes(kv.n_seq)),
                vision: 0,
                scratch: if blocks.is_empty() {
                    0
                } else {
                    self.model.plan().bytes(n_batch)
                },
            }
        };
        if !d.is_gpu() {
            bytes.vision = self.opts.vision_bytes;
        }
        let one_seq = KvConfig {
            n_seq: 1,
            n_ctx: PREDICT_AT.min(ctx),
            ..kv.clone()
        };
        let read_per_token =
            used.matmul_bytes + one_seq.bytes() + rec.as_ref().map_or(0, |r| 2 * r.bytes(1));
        Stage {
            device: dev,
            blocks,
            kv_layers,
            rec_layers,
            bytes,
            read_per_token,
            last,
            kv,
            rec,
        }
    }

    /// Bytes kept free on `dev` at `ctx`: its margin, and on the last GPU of the pass the
    /// whole draft model (weights, its KV cache at `ctx`, its buffers).
    fn kept(&self, dev: usize, ctx: usize) -> usize {
        self.margins[dev] + self.draft_bytes(dev, ctx)
    }

    /// What the draft model takes on `dev` at `ctx`, when `dev` is the last GPU.
    fn draft_bytes(&self, dev: usize, ctx: usize) -> usize {
        let Some(draft) = self.draft else {
            return 0;
        };
        if self.order.last() != Some(&dev) {
            return 0;
        }
        let opts = EngineOptions {
            max_logit_rows: 1,
            ..self.opts.clone()
        };
        let d = std::slice::from_ref(&self.devices[dev]);
        let p = Planner::new(draft, None, d, &opts, vec![0]);
        p.stage(0, 0..p.n_blocks, true, ctx).bytes.total()
    }

    fn fits(&self, s: &Stage, ctx: usize) -> bool {
        let d = &self.devices[s.device];
        !d.is_gpu() || s.bytes.total() + self.kept(s.device, ctx) <= d.free
    }

    /// The most blocks (up to `want`) device `dev` takes at `ctx`, as the first and/or last
    /// device of the pass.
    fn capacity(&self, dev: usize, want: usize, first: bool, last: bool, ctx: usize) -> usize {
        let range = |k: usize| {
            if first {
                0..k
            } else if last {
                self.n_blocks - k..self.n_blocks
            } else {
                // A middle device: the widest blocks are as good a guess as any; the layout
                // is checked with its true ranges afterwards.
                1.min(self.n_blocks - k)..1.min(self.n_blocks - k) + k
            }
        };
        let ok = |k: usize| self.fits(&self.stage(dev, range(k), last, ctx), ctx);
        let (mut lo, mut hi) = (0, want);
        if ok(hi) {
            return hi;
        }
        while lo + 1 < hi {
            let mid = (lo + hi) / 2;
            if ok(mid) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// Blocks per GPU (in [`Planner::order`]) to put `want` blocks on the GPUs at `ctx`:
    /// the fastest first, equal ones in proportion to what fits on each, or by
    /// `--tensor-split`.
    fn counts(&self, want: usize, ctx: usize) -> Vec<usize> {
        // The last GPU holds the head only when every block is on a GPU.
        let with_head = self.counts_with(want, ctx, true);
        if with_head.iter().sum::<usize>() == want {
            return with_head;
        }
        self.counts_with(want, ctx, false)
    }

    /// [`Planner::counts`], the last GPU holding the head or not.
    fn counts_with(&self, want: usize, ctx: usize, head: bool) -> Vec<usize> {
        if !self.opts.tensor_split.is_empty() {
            let weights: Vec<f64> = self
                .order
                .iter()
                .map(|&d| {
                    let ord = self.devices[d].gpu.unwrap_or(usize::MAX);
                    self.opts
                        .tensor_split
                        .get(ord)
                        .copied()
                        .unwrap_or(0.0)
                        .max(0.0)
                })
                .collect();
            return proportional(want, &weights, &vec![want; weights.len()]);
        }
        let mut active: Vec<usize> = (0..self.order.len())
            .filter(|&i| self.devices[self.order[i]].free > 0)
            .collect();
        loop {
            let mut counts = vec![0; self.order.len()];
            let mut by_speed = active.clone();
            by_speed.sort_by(|&a, &b| {
                let (x, y) = (&self.devices[self.order[a]], &self.devices[self.order[b]]);
                y.bandwidth.total_cmp(&x.bandwidth).then(a.cmp(&b))
            });
            let mut left = want;
            for group in by_speed.chunk_by(|&a, &b| {
                self.devices[self.order[a]].bandwidth == self.devices[self.order[b]].bandwidth
            }) {
                let caps: Vec<usize> = group
                    .iter()
                    .map(|&i| {
                        let first = active.first() == Some(&i);
                        let last = head && active.last() == Some(&i);
                        self.capacity(self.order[i], left, first, last, ctx)
                    })
                    .collect();
                let take = left.min(caps.iter().sum());
                let w: Vec<f64> = caps.iter().map(|&c| c as f64).collect();
                for (&i, n) in group.iter().zip(proportional(take, &w, &caps)) {
                    counts[i] = n;
                }
                left -= take;
            }
            let before = active.len();
            active.retain(|&i| counts[i] > 0);
            if active.len() == before || active.is_empty() {
                return counts;
            }
        }
    }

    /// The stages for these GPU counts (the CPU takes the rest) and the first that does
    /// not fit.
    fn layout(&self, counts: &[usize], ctx: usize) -> (Vec<Stage>, Option<Shortfall>) {
        let on_gpu: usize = counts.iter().sum();
        let mut stages = Vec::new();
        let mut start = 0;
        let mut parts: Vec<(usize, Range<usize>)> = self
            .order
            .iter()
            .zip(counts)
            .filter(|(_, &n)| n > 0)
            .map(|(&d, &n)| {
                start += n;
                (d, start - n..start)
            })
            .collect();
        if on_gpu < self.n_blocks {
            if let Some(cpu) = self.cpu {
                parts.push((cpu, on_gpu..self.n_blocks));
            }
        }
        let n_parts = parts.len();
        for (i, (d, r)) in parts.into_iter().enumerate() {
            stages.push(self.stage(d, r, i + 1 == n_parts, ctx));
        }
        if self.opts.vision_bytes > 0 {
            if let Some(cpu) = self.cpu {
                if !stages.iter().any(|s| s.device == cpu) {
                    stages.push(self.stage(cpu, self.n_blocks..self.n_blocks, false, ctx));
                }
            }
        }
        let short = stages
            .iter()
            .find(|s| !self.fits(s, ctx))
            .map(|s| Shortfall {
                device: s.device,
                need: s.bytes.total(),
                margin: self.kept(s.device, ctx),
                free: self.devices[s.device].free,
            });
        (stages, short)
    }

    /// The layout putting `want` blocks on the GPUs at `ctx`, moving blocks off any GPU
    /// that overflows with its true range (to the CPU) until every GPU fits.
    fn try_layout(&self, want: usize, ctx: usize) -> (Vec<Stage>, Option<Shortfall>, usize) {
        let mut counts = self.counts(want, ctx);
        loop {
            let (stages, short) = self.layout(&counts, ctx);
            let fixable = self.opts.tensor_split.is_empty()
                && short
                    .as_ref()
                    .is_some_and(|s| self.devices[s.device].is_gpu());
            if !fixable {
                return (stages, short, counts.iter().sum());
            }
            let dev = short.as_ref().map(|s| s.device);
            let i = self.order.iter().position(|&d| Some(d) == dev);
            match i {
                Some(i) if counts[i] > 0 => counts[i] -= 1,
                _ => return (stages, short, counts.iter().sum()),
            }
        }
    }
}

/// What the passes of `blocks` (and the MTP blocks when `last`) read: the weights a device
/// running them uploads.
pub(crate) fn collect(model: &Model, blocks: &Range<usize>, last: bool) -> Collected {
    let c = Collect::new(Batch::one_sequence(&[0], 0, 0, true));
    if !blocks.is_empty() {
        model.forward_layers(&c, blocks.clone());
    }
    if last {
        for k in 0..model.n_mtp() {
            model.mtp_forward(&c, k);
        }
    }
    c.finish()
}

/// Splits `n` in proportion to `weights`, each share at most its `cap` (largest remainders
/// first, ties to the earlier; deterministic).
fn proportional(n: usize, weights: &[f64], caps: &[usize]) -> Vec<usize> {
    let sum: f64 = weights.iter().sum();
    if sum <= 0.0 || n == 0 {
        return vec![0; weights.len()];
    }
    let exact: Vec<f64> = weights.iter().map(|w| n as f64 * w / sum).collect();
    let mut out: Vec<usize> = exact
        .iter()
        .zip(caps)
        .map(|(e, &c)| (e.floor() as usize).min(c))
        .collect();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by(|&a, &b| {
        let (fa, fb) = (exact[a] - exact[a].floor(), exact[b] - exact[b].floor());
        fb.total_cmp(&fa).then(a.cmp(&b))
    });
    let mut left = n - out.iter().sum::<usize>();
    while left > 0 {
        let before = left;
        for &i in &order {
            if left > 0 && out[i] < caps[i] && weights[i] > 0.0 {
                out[i] += 1;
                left -= 1;
            }
        }
        if left == before {
            break;
        }
    }
    out
}

/// Plans `model` on `devices` (GPUs in driver order, then the CPU) as `opts` asks: the
/// blocks each takes, the context, the bytes each holds. An error names what does not fit
/// and what to change.
pub fn plan(
    model: &Model,
    devices: &[DeviceSpec],
    opts: &EngineOptions,
) -> Result<Placement, EngineError> {
    plan_with_draft(model, None, devices, opts)
}

/// [`plan`], keeping room on the last GPU for all of `draft` (a draft model loaded after
/// this one, at the same context).
pub fn plan_with_draft(
    model: &Model,
    draft: Option<&Model>,
    devices: &[DeviceSpec],
    opts: &EngineOptions,
) -> Result<Placement, EngineError> {
    let n_blocks = model.hp.n_layer;
    let mut order: Vec<usize> = (0..devices.len())
        .filter(|&i| devices[i].is_gpu())
        .collect();
    if let Some(main) = opts.main_gpu {
        let Some(pos) = order.iter().position(|&d| devices[d].gpu == Some(main)) else {
            return Err(EngineError::Placement(format!(
                "--main-gpu {main}: there is no GPU {main} ({} found)",
                order.len()
            )));
        };
        let d = order.remove(pos);
        order.push(d);
    }
    let want = match opts.gpu_layers {
        GpuLayers::Auto | GpuLayers::All => n_blocks,
        GpuLayers::Count(n) => n.min(n_blocks),
    };
    let order = if want == 0 { Vec::new() } else { order };
    let margins = devices
        .iter()
        .map(|d| match (d.is_gpu(), opts.fit_margin) {
            (false, _) => 0,
            (true, Some(m)) => m,
            (true, None) if !opts.fit => 0,
            (true, None) => reserve_bytes(d.total),
        })
        .collect();
    let p = Planner::new(model, draft, devices, opts, margins);
    let p = Planner { order, ..p };
    let train = model.hp.n_ctx_train.max(1);
    let explicit_ctx = opts.n_ctx > 0;
    let search = opts.fit && !explicit_ctx && !p.order.is_empty();
    let ctx_max = match opts.n_ctx {
        0 if search => train,
        0 => train.min(MIN_FIT_CTX),
        n => n,
    };
    let mut notes = Vec::new();
    let strict = opts.gpu_layers != GpuLayers::Auto || !opts.tensor_split.is_empty();
    let placed = |ctx: usize| {
        let (stages, short, on_gpu) = p.try_layout(want, ctx);
        let ok = short.is_none() && (on_gpu == want || p.order.is_empty());
        (stages, short, on_gpu, ok)
    };
    let mut ctx = ctx_max;
    let mut got = placed(ctx);
    if search && !got.3 {
        // The largest context (a multiple of CTX_STEP, at least MIN_FIT_CTX) keeping the
        // asked blocks on the GPUs.
        let lo_ctx = MIN_FIT_CTX.min(ctx_max);
        let steps = |c: usize| c.div_ceil(CTX_STEP);
        let (mut lo, mut hi) = (steps(lo_ctx), steps(ctx_max) - 1);
        let at = |s: usize| (s * CTX_STEP).clamp(lo_ctx, ctx_max);
        if placed(at(lo)).3 {
            while lo < hi {
                let mid = (lo + hi).div_ceil(2);
                if placed(at(mid)).3 {
                    lo = mid;
                } else {
                    hi = mid - 1;
                }
            }
            ctx = at(lo);
            notes.push(format!(
                "context {ctx}: the largest that keeps {} on the GPUs (the model's is {train}; \
                 -c sets it)",
                if want == n_blocks {
                    "every block".to_string()
                } else {
                    format!("{want} blocks")
                }
            ));
        } else {
            ctx = lo_ctx;
            notes.push(format!(
                "context {ctx}: not every block fits on the GPUs even at {lo_ctx}, so some run \
                 on the CPU"
            ));
        }
        got = placed(ctx);
    }
    let (stages, short, on_gpu, _) = got;
    if let Some(s) = short {
        return Err(shortfall(&p, &s, ctx, explicit_ctx));
    }
    if strict && on_gpu < want {
        let mib = |b: usize| b >> 20;
        let free: usize = p.order.iter().map(|&d| devices[d].free).sum();
        let used: usize = stages
            .iter()
            .filter(|s| devices[s.device].is_gpu())
            .map(|s| s.bytes.total())
            .sum();
        return Err(EngineError::Placement(format!(
            "only {on_gpu} of the {want} blocks asked for fit on the GPUs at context {ctx}              ({} MiB of {} MiB free used, {} MiB margin kept on each); use fewer              --gpu-layers, a smaller -c, --cache-type-k q8_0 --cache-type-v q8_0, or a              smaller --fit-margin",
            mib(used),
            mib(free),
            p.order.first().map_or(0, |&d| mib(p.margins[d])),
        )));
    }
    if opts.gpu_layers == GpuLayers::Auto && !p.order.is_empty() && on_gpu < n_blocks {
        notes.push(format!(
            "{} of {n_blocks} blocks run on the CPU: the GPUs hold no more (fewer with a \
             smaller -c or --cache-type-k/v q8_0)",
            n_blocks - on_gpu
        ));
    }
    let secs: f64 = stages
        .iter()
        .filter(|s| !s.blocks.is_empty())
        .map(|s| s.read_per_token as f64 / devices[s.device].bandwidth)
        .sum();
    Ok(Placement {
        devices: devices.to_vec(),
        margins: p.margins.clone(),
        draft_reserve: (0..devices.len()).map(|d| p.draft_bytes(d, ctx)).collect(),
        stages,
        ctx,
        n_seq: opts.n_seq.max(1),
        gpu_kv: p.gpu_kv,
        cpu_kv: p.cpu_kv,
        n_blocks,
        predicted_tokens_per_s: if secs > 0.0 { 1.0 / secs } else { 0.0 },
        notes,
    })
}

/// The devices a model could use now: every GPU the driver shows (its free memory read
/// through a context of its own, no kernels loaded), then the CPU. Without a usable driver,
/// or with `--gpu-layers 0`, the CPU alone, and why.
pub fn devices(opts: &EngineOptions) -> (Vec<DeviceSpec>, Vec<String>) {
    let mut out = Vec::new();
    let mut notes = Vec::new();
    if opts.gpu_layers == GpuLayers::Count(0) {
        notes.push("--gpu-layers 0: the CPU alone".into());
    } else {
        match runtime::cuda::device::probe() {
            Ok(info) => {
                for g in &info.gpus {
                    match runtime::cuda::gpu::memory_info(g.ordinal) {
                        Ok((free, _)) => {
                            out.push(DeviceSpec::gpu(g, free, &opts.measured_bandwidth))
                        }
                        Err(e) => notes.push(format!("left out: {e}")),
                    }
                }
            }
            Err(e) => notes.push(format!("CUDA is off: {e}")),
        }
    }
    out.push(DeviceSpec::cpu());
    (out, notes)
}

/// The model at `path` as the planner needs it: the header and tensor index, mapped, not
/// read.
pub fn load_header(path: &std::path::Path, max_logit_rows: usize) -> Result<Model, EngineError> {
    let file = gguf::Gguf::open(path).map_err(|source| EngineError::File {
        path: path.display().to_string(),
        source,
    })?;
    Ok(Model::load_with(
        std::sync::Arc::new(file),
        max_logit_rows.max(1),
        false,
    )?)
}

/// Plans the model at `path` on the devices there are now, reading only the file's header
/// and index (`surplus plan`).
pub fn plan_file(path: &std::path::Path, opts: &EngineOptions) -> Result<Placement, EngineError> {
    let model = load_header(path, opts.max_logit_rows)?;
    let draft = match &opts.draft_model {
        Some(d) => Some(load_header(d, 1)?),
        None => None,
    };
    let (devices, notes) = devices(opts);
    let mut p = plan_with_draft(&model, draft.as_ref(), &devices, opts)?;
    p.notes.extend(notes);
    Ok(p)
}

/// The error for a device over its memory: by how much, and what to change.
fn shortfall(p: &Planner, s: &Shortfall, ctx: usize, explicit_ctx: bool) -> EngineError {
    let mib = |b: usize| b.div_ceil(1 << 20);
    let d = &p.devices[s.device];
    let short = (s.need + s.margin).saturating_sub(s.free);
    let mut fixes = Vec::new();
    if explicit_ctx {
        fixes.push(format!("a smaller -c (now {ctx})"));
    } else {
        fixes.push(format!("-c below {ctx}"));
    }
    if p.opts.n_seq > 1 {
        fixes.push(format!("fewer --parallel sequences (now {})", p.opts.n_seq));
    }
    fixes.push("fewer --gpu-layers (the rest runs on the CPU)".into());
    if p.gpu_kv != (KvType::Q8_0, KvType::Q8_0) && p.gpu_kv != (KvType::Q4_0, KvType::Q4_0) {
        fixes.push("--cache-type-k q8_0 --cache-type-v q8_0".into());
    }
    if s.margin > 0 {
        fixes.push(format!(
            "a smaller --fit-margin (now {} MiB)",
            mib(s.margin)
        ));
    }
    EngineError::Placement(format!(
        "the model does not fit {}: it needs {} MiB + {} MiB kept free (margin{}), {} MiB \
         are free ({} MiB short); use {}",
        d.name,
        mib(s.need),
        mib(s.margin),
        if p.draft.is_some() {
            ", the draft model"
        } else {
            ""
        },
        s.free >> 20,
        mib(short),
        fixes.join(", or ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proportional_shares_are_capped_and_deterministic() {
        assert_eq!(proportional(10, &[1.0, 1.0], &[10, 10]), vec![5, 5]);
        assert_eq!(proportional(7, &[1.0, 1.0], &[10, 10]), vec![4, 3]);
        assert_eq!(proportional(10, &[3.0, 1.0], &[10, 10]), vec![8, 2]);
        assert_eq!(proportional(10, &[1.0, 1.0], &[3, 10]), vec![3, 7]);
        assert_eq!(proportional(10, &[0.0, 1.0], &[10, 10]), vec![0, 10]);
        assert_eq!(proportional(0, &[1.0], &[1]), vec![0]);
    }

    #[test]
    fn known_cards() {
        assert_eq!(known_bandwidth("Tesla V100-SXM2-32GB"), Some(900e9));
        assert_eq!(known_bandwidth("NVIDIA GeForce RTX 2080 Ti"), Some(616e9));
        assert_eq!(known_bandwidth("Tesla P40"), Some(347e9));
        assert_eq!(known_bandwidth("Something New"), None);
    }
}
