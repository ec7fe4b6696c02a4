//! [`CudaBackend`] against [`CpuBackend`]: the same ops on the same random inputs through
//! both backends, outputs compared. Each test passes with a note when no GPU can be opened.

use quant::GgmlType;

use super::backend::weights::GPU_TYPES;
use super::backend::{AttnShape, CudaBackend};
use super::gpu::GpuContext;
use super::gpu_tests::device;
use crate::collect::Collect;
use crate::cpu::CpuBackend;
use crate::ops::{Act, Attention, Batch, DeltaNet, Ops, Plan, Rollback, Rope, RopeMode};
use crate::tensor::{Bytes, Weight};
use crate::{KvConfig, KvType, RecurrentConfig};

fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn weight(ty: GgmlType, rows: usize, cols: usize, seed: u64) -> Weight {
    let v = rand_vec(rows * cols, seed);
    let bytes = match ty {
        GgmlType::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        _ => quant::quantize_to_vec(ty, &v).unwrap(),
    };
    Weight::new(ty, cols, rows, Bytes::from_vec(bytes)).unwrap()
}

/// Rows a pass may hold: more than one DeltaNet chunk (the recurrent test's 70-token prompt).
const MAX_ROWS: usize = 96;

/// Two backends over one plan and cache.
struct Pair {
    cpu: CpuBackend,
    gpu: CudaBackend,
}

impl Pair {
    /// Backends for `plan`, with the weights and vectors `f` uses uploaded to the GPU.
    fn new(
        dev: GpuContext,
        plan: &Plan,
        kv: KvConfig,
        rec: Option<RecurrentConfig>,
        f: &(dyn Fn(&dyn Ops) + Sync),
    ) -> Pair {
        Pair::with_kv(dev, plan, kv.clone(), kv, rec, f)
    }

    /// As [`Pair::new`], the CPU's cache shaped `kv` and the GPU's `gpu_kv`.
    fn with_kv(
        dev: GpuContext,
        plan: &Plan,
        kv: KvConfig,
        gpu_kv: KvConfig,
        rec: Option<RecurrentConfig>,
        f: &(dyn Fn(&dyn Ops) + Sync),
    ) -> Pair {
        let mut b = Batch::one_sequence(&[0], 0, 0, true);
        b.logits = vec![0];
        let c = Collect::new(b);
        f(&c);
        let used = c.finish();
        let mut cpu = CpuBackend::new(plan, MAX_ROWS, kv.clone(), 2);
        if let Some(r) = &rec {
            cpu = cpu.with_recurrent(r.clone());
        }
        let attn = AttnShape {
            max_heads: 8,
            max_head_dim: 128,
        };
        let gpu = CudaBackend::new(dev, plan, MAX_ROWS, gpu_kv, rec, attn, &used)
            .unwrap_or_else(|e| panic!("CudaBackend::new: {e}"));
        Pair { cpu, gpu }
    }

    fn write(&mut self, a: Act, data: &[f32]) {
        self.cpu.write(a, data);
        self.gpu.write(a, data).unwrap();
    }

    fn run(&mut self, batch: &Batch, vocab: usize, f: &(dyn Fn(&dyn Ops) + Sync)) {
        self.cpu.forward(batch, vocab, |o| f(o)).unwrap();
        self.gpu
            .forward(batch, vocab, |o| f(o))
            .unwrap_or_else(|e| panic!("GPU pass: {e}"));
    }

    /// Compares `rows` rows of `a`: |gpu - cpu| <= tol × (1 + max |cpu|).
    fn check(&mut self, a: Act, rows: usize, tol: f32, what: &str) {
        let want = self.cpu.read(a, rows).to_vec();
        let got = self.gpu.read(a, rows).unwrap().to_vec();
        let scale = 1.0 + want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= tol * scale && g.is_finite(),
                "{what}[row {}, col {}]: gpu {g} cpu {w} (scale {scale})",
                i / a.width,
                i % a.width
            );
        }
    }
}

fn kv(n_ctx: usize, kv_dim: usize, n_seq: usize, n_layers: usize) -> KvConfig {
    KvConfig {
        n_layers,
        kv_dim,
        n_ctx,
        n_seq,
        k_type: KvType::F16,
        v_type: KvType::F16,
    }
}

/// Element-wise and row ops: embed (ids and given rows), norms, unzip, concat, gates,
/// scale, softcap, bias, logit rows.
#[test]
fn row_ops_match_cpu() {
    let Some(dev) = device() else { return };
    let mut plan = Plan::new();
    let (x, a, b, c, cat) = (
        plan.act(128),
        plan.act(64),
        plan.act(64),
        plan.act(128),
        plan.act(128),
    );
    let (g8, b8, last) = (plan.act(8), plan.act(8), plan.act_rows(128, 4));
    let emb = weight(GgmlType::Q8_0, 50, 128, 1);
    let norm = rand_vec(128, 2);
    let head_norm = rand_vec(32, 3);
    let bias = rand_vec(128, 4);
    let (dt, aa) = (rand_vec(8, 5), rand_vec(8, 6));
    let f = |o: &dyn Ops| {
        let n = o.batch().len();
        o.embed(&emb, x);
        o.rms_norm(n, x, Some(&norm), 1e-6, 128, c);
        o.add_bias(n, c, &bias);
        o.unzip(n, c, 16, a, b);
        o.sigmoid_mul(n, a, b, a);
        o.concat(n, a, b, cat);
        o.gated_rms_norm(n, cat, x, &head_norm, 1e-6, cat);
        o.scale(n, cat, 0.5);
        o.softcap(n, cat, 0.3);
        o.delta_gates(n, g8, b8, &dt, &aa);
        o.gather_logit_rows(cat, last);
    };
    let mut p = Pair::new(dev, &plan, kv(16, 32, 1, 1), None, &f);
    let mut batch = Batch::one_sequence(&[3, 7, 49, 0, 11], 0, 0, false);
    batch.logits = vec![4, 1];
    p.write(g8, &rand_vec(5 * 8, 7));
    p.write(b8, &rand_vec(5 * 8, 8));
    p.run(&batch, 50, &f);
    p.check(x, 5, 1e-6, "embed");
    p.check(c, 5, 1e-5, "rms_norm + add_bias");
    p.check(a, 5, 1e-5, "unzip + sigmoid_mul");
    p.check(b, 5, 1e-6, "unzip");
    p.check(cat, 5, 1e-4, "concat + gated_rms_norm + scale + softcap");
    p.check(g8, 5, 1e-5, "delta_gates alpha");
    p.check(b8, 5, 1e-5, "delta_gates beta");
    p.check(last, 2, 1e-4, "gather_logit_rows");
    // Given input rows instead of ids.
    batch.embd = rand_vec(5 * 128, 9);
    p.run(&batch, 50, &f);
    p.check(x, 5, 0.0, "embed (given rows)");
}

/// Matmul of every weight type: a prompt chunk (cuBLAS over f16 tiles) and a decode batch
/// of three sequences (dp4a kernels; f32 kernels for float weights).
#[test]
fn matmul_matches_cpu_for_every_type() {
    let Some(dev) = device() else { return };
    let mut plan = Plan::new();
    let (x, y) = (plan.act(512), plan.act(72));
    let types: Vec<GgmlType> = GPU_TYPES.iter().map(|t| t.0).collect();
    let ws: Vec<Weight> = types
        .iter()
        .enumerate()
        .map(|(i, &t)| weight(t, 72, 512, 20 + i as u64))
        .collect();
    let which = std::sync::atomic::AtomicUsize::new(0);
    let f = |o: &dyn Ops| {
        let i = which.load(std::sync::atomic::Ordering::Relaxed);
        let n = o.batch().len();
        // The load-time pass sees every weight.
        if o.batch().len() == 1 && o.batch().pos[0] == 0 && o.batch().seq[0] == 0 {
            for w in &ws {
                o.matmul(n, w, x, y);
            }
        }
        o.matmul(n, &ws[i], x, y);
    };
    let mut p = Pair::new(dev, &plan, kv(64, 32, 3, 1), None, &f);
    let chunk = Batch::one_sequence(&(0..20).collect::<Vec<u32>>(), 0, 0, false);
    let decode = Batch {
        tokens: vec![1, 2, 3],
        pos: vec![5, 9, 0],
        seq: vec![0, 1, 2],
        logits: vec![],
        embd: vec![],
        non_causal: false,
        rope_pos: Vec::new(),
    };
    for (i, ty) in types.iter().enumerate() {
        which.store(i, std::sync::atomic::Ordering::Relaxed);
        for (batch, what, tol) in [(&chunk, "chunk", 2e-2), (&decode, "decode", 2e-2)] {
            let n = batch.len();
            p.write(x, &rand_vec(n * 512, 30 + i as u64));
            p.run(batch, 50, &f);
            p.check(y, n, tol, &format!("{ty:?} {what}"));
        }
    }
}

/// A prompt through the GEMM path with a weight taller than a launch's grid y (65535): the
/// LM head of a large vocabulary over a narrow model (the qwen35 fixture: 151936 × 64) is
/// dequantized in several tiles. (It was one tile of 151936 rows, a launch the driver
/// refuses.)
#[test]
fn gemm_of_a_weight_taller_than_the_grid() {
    let Some(dev) = device() else { return };
    let (rows, cols) = (70_000, 32);
    let mut plan = Plan::new();
    let (x, y) = (plan.act(cols), plan.act(rows));
    let w = weight(GgmlType::Q8_0, rows, cols, 77);
    let f = |o: &dyn Ops| o.matmul(o.batch().len(), &w, x, y);
    let mut p = Pair::new(dev, &plan, kv(64, 32, 1, 1), None, &f);
    let chunk = Batch::one_sequence(&(0..9).collect::<Vec<u32>>(), 0, 0, false);
    p.write(x, &rand_vec(9 * cols, 78));
    p.run(&chunk, 50, &f);
    p.check(y, 9, 2e-2, "Q8_0 70000 × 32 chunk");
}

/// Attention through the ops: a prompt chunk (with RoPE and GQA), decode steps of two
/// sequences, a window and a softcap, and a non-causal chunk.
#[test]
fn attention_ops_match_cpu() {
    let Some(dev) = device() else { return };
    let (heads, kvh, hd) = (8usize, 2usize, 64usize);
    let mut plan = Plan::new();
    let (q, k, v, out) = (
        plan.act(heads * hd),
        plan.act(kvh * hd),
        plan.act(kvh * hd),
        plan.act(heads * hd),
    );
    let rope = Rope::new(RopeMode::Neox, hd, 10000.0, 1.0);
    let specs: Vec<Attention> = [(None, None), (Some(7u32), None), (None, Some(20.0f32))]
        .into_iter()
        .map(|(window, softcap)| Attention {
            n_heads: heads,
            n_kv_heads: kvh,
            head_dim: hd,
            scale: 1.0 / (hd as f32).sqrt(),
            window,
            softcap,
        })
        .collect();
    let f = |o: &dyn Ops| {
        o.rope(q, heads, hd, &rope);
        o.rope(k, kvh, hd, &rope);
        for (layer, spec) in specs.iter().enumerate() {
            o.attention(layer, q, k, v, spec, out);
        }
    };
    let mut p = Pair::new(dev, &plan, kv(300, kvh * hd, 2, 3), None, &f);
    let mut seed = 100;
    let mut step = |p: &mut Pair, batch: &Batch, what: &str| {
        let n = batch.len();
        for a in [q, k, v] {
            seed += 1;
            p.write(a, &rand_vec(n * a.width, seed));
        }
        p.run(batch, 50, &f);
        p.check(out, n, 2e-3, what);
    };
    let prompt: Vec<u32> = (0..40).collect();
    step(
        &mut p,
        &Batch::one_sequence(&prompt, 0, 0, false),
        "prefill",
    );
    step(
        &mut p,
        &Batch::one_sequence(&prompt[..25], 0, 1, false),
        "prefill seq 1",
    );
    for i in 0..3u32 {
        let b = Batch {
            tokens: vec![1, 2],
            pos: vec![40 + i, 25 + i],
            seq: vec![0, 1],
            logits: vec![],
            embd: vec![],
            non_causal: false,
            rope_pos: Vec::new(),
        };
        step(&mut p, &b, "decode");
    }
    let mut nc = Batch::one_sequence(&prompt[..12], 43, 0, false);
    nc.non_causal = true;
    step(&mut p, &nc, "non-causal chunk");
    // A long chunk that runs past one key tile many times.
    step(
        &mut p,
        &Batch::one_sequence(&prompt, 60, 0, false),
        "prefill at 60",
    );
    step(
        &mut p,
        &Batch::one_sequence(&[5], 100, 0, false),
        "decode at 100",
    );
}

/// ggml's reference `quantize_row_q8_0` / `quantize_row_q4_0`, which the GPU's `kv_write`
/// follows: a row of whole blocks as the cache stores it (float types as they are).
fn kv_ref_bytes(ty: KvType, x: &[f32]) -> Vec<u8> {
    let f16 = |d: f32| half::f16::from_f32(d).to_bits().to_le_bytes();
    let mut out = Vec::new();
    match ty {
        KvType::F32 => out.extend(x.iter().flat_map(|v| v.to_le_bytes())),
        KvType::F16 => out.extend(x.iter().flat_map(|&v| f16(v))),
        KvType::Q8_0 => {
            for b in x.chunks(32) {
                let amax = b
                    .iter()
                    .fold(0.0f32, |m, v| if v.abs() > m { v.abs() } else { m });
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend(f16(d));
                out.extend(b.iter().map(|&v| (v * id).round() as i8 as u8));
            }
        }
        KvType::Q4_0 => {
            for b in x.chunks(32) {
                let (mut amax, mut max) = (0.0f32, 0.0f32);
                for &v in b {
                    if amax < v.abs() {
                        amax = v.abs();
                        max = v;
                    }
                }
                let d = max / -8.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend(f16(d));
                let level = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
                out.extend((0..16).map(|j| level(b[j]) | (level(b[j + 16]) << 4)));
            }
        }
    }
    out
}

/// What a cache of `ty` gives back for rows `x` (the reference quantization, dequantized).
fn kv_roundtrip(ty: KvType, x: &[f32]) -> Vec<f32> {
    match ty {
        KvType::F32 => x.to_vec(),
        _ => quant::dequantize_to_vec(ty.ggml(), &kv_ref_bytes(ty, x)).unwrap(),
    }
}

/// Rows that probe the quantizers' rounding: an all-zero block, the largest magnitude
/// twice with opposite signs (q4_0 takes the first), levels exactly halfway (q8_0 rounds
/// them away from zero, q4_0 truncates x / d + 8.5), and a block of one tiny value.
fn kv_edge_rows(kv_dim: usize) -> Vec<f32> {
    let mut r = vec![0.0f32; 4 * kv_dim];
    for (i, v) in r[kv_dim..2 * kv_dim].iter_mut().enumerate() {
        *v = [-3.0, 3.0, 1.25, -0.75][i % 4] * (1.0 + (i / 32) as f32);
    }
    // amax 127 (q8_0: d = 1) or max -8 (q4_0: d = 1): halves land on ties.
    for (i, v) in r[2 * kv_dim..3 * kv_dim].iter_mut().enumerate() {
        *v = match i % 32 {
            0 => {
                if (i / 32) % 2 == 0 {
                    127.0
                } else {
                    -8.0
                }
            }
            l => (l as f32 - 16.0) * 0.5,
        };
    }
    r[3 * kv_dim + 5] = 1e-30;
    r
}

/// Attention (prompt chunks, decode steps of two sequences, a window, a softcap, a
/// non-causal chunk) with the GPU's cache in `kt`/`vt` and the CPU's in f32:
/// - against the CPU given the values the GPU's cache holds (the reference quantization
///   of its inputs): equal up to f32 rounding (1e-4 of the largest output);
/// - against the CPU given the exact inputs: within `tol` of the largest output, the
///   quantization's own error (except for a first chunk whose keys start with edge rows).
///
/// The GPU's cache rows of the first chunk equal the reference quantizer's bytes.
fn attention_with_cache(kt: KvType, vt: KvType, tol: f32) {
    let Some(dev) = device() else { return };
    let (heads, kvh, hd) = (8usize, 2usize, 64usize);
    let kv_dim = kvh * hd;
    let mut plan = Plan::new();
    let (q, k, v, out) = (
        plan.act(heads * hd),
        plan.act(kv_dim),
        plan.act(kv_dim),
        plan.act(heads * hd),
    );
    let specs: Vec<Attention> = [(None, None), (Some(7u32), None), (None, Some(20.0f32))]
        .into_iter()
        .map(|(window, softcap)| Attention {
            n_heads: heads,
            n_kv_heads: kvh,
            head_dim: hd,
            scale: 1.0 / (hd as f32).sqrt(),
            window,
            softcap,
        })
        .collect();
    let f = |o: &dyn Ops| {
        for (layer, spec) in specs.iter().enumerate() {
            o.attention(layer, q, k, v, spec, out);
        }
    };
    let f32_kv = kv(300, kv_dim, 2, 3);
    let f32_kv = KvConfig {
        k_type: KvType::F32,
        v_type: KvType::F32,
        ..f32_kv
    };
    let gpu_kv = KvConfig {
        k_type: kt,
        v_type: vt,
        ..f32_kv.clone()
    };
    let mut p = Pair::with_kv(dev, &plan, f32_kv.clone(), gpu_kv, None, &f);
    let mut exact = CpuBackend::new(&plan, MAX_ROWS, f32_kv, 2);
    let mut seed = 400;
    let mut worst = 0.0f32;
    let mut step = |p: &mut Pair, batch: &Batch, what: &str, edge: bool| {
        let n = batch.len();
        seed += 3;
        let qd = rand_vec(n * q.width, seed);
        let mut kd = rand_vec(n * kv_dim, seed + 1);
        let vd = rand_vec(n * kv_dim, seed + 2);
        if edge {
            let e = kv_edge_rows(kv_dim);
            kd[..e.len()].copy_from_slice(&e);
        }
        p.write(q, &qd);
        exact.write(q, &qd);
        for (a, d, ty) in [(k, &kd, kt), (v, &vd, vt)] {
            p.gpu.write(a, d).unwrap();
            exact.write(a, d);
            p.cpu.write(a, &kv_roundtrip(ty, d));
        }
        p.run(batch, 50, &f);
        exact.forward(batch, 50, |o| f(o)).unwrap();
        p.check(out, n, 1e-4, &format!("{kt}/{vt} {what}"));
        let want = exact.read(out, n);
        let got = p.gpu.read(out, n).unwrap();
        let scale = 1.0 + want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let dev = got
            .iter()
            .zip(want)
            .fold(0.0f32, |m, (g, w)| m.max((g - w).abs() / scale));
        // (Not for the edge rows: keys of 127 make scores that amplify any error.)
        if !edge {
            assert!(dev <= tol, "{kt}/{vt} {what}: {dev} from an f32 cache");
            worst = worst.max(dev);
        }
        (kd, vd)
    };
    let prompt: Vec<u32> = (0..40).collect();
    let (kd, vd) = step(
        &mut p,
        &Batch::one_sequence(&prompt, 0, 0, false),
        "prefill with edge rows",
        true,
    );
    // Layer 0, sequence 0, positions 0..40: the reference quantizer's bytes.
    let (kc, vc) = p.gpu.cache_bytes().unwrap();
    assert_eq!(
        kc[..40 * kt.row_bytes(kv_dim)],
        kv_ref_bytes(kt, &kd)[..],
        "{kt} key rows"
    );
    assert_eq!(
        vc[..40 * vt.row_bytes(kv_dim)],
        kv_ref_bytes(vt, &vd)[..],
        "{vt} value rows"
    );
    // The same positions again, without the edge rows (which would stay in view).
    step(
        &mut p,
        &Batch::one_sequence(&prompt, 0, 0, false),
        "prefill",
        false,
    );
    step(
        &mut p,
        &Batch::one_sequence(&prompt[..25], 0, 1, false),
        "prefill seq 1",
        false,
    );
    for i in 0..3u32 {
        let b = Batch {
            tokens: vec![1, 2],
            pos: vec![40 + i, 25 + i],
            seq: vec![0, 1],
            logits: vec![],
            embd: vec![],
            non_causal: false,
            rope_pos: Vec::new(),
        };
        step(&mut p, &b, "decode", false);
    }
    let mut nc = Batch::one_sequence(&prompt[..12], 43, 0, false);
    nc.non_causal = true;
    step(&mut p, &nc, "non-causal chunk", false);
    step(
        &mut p,
        &Batch::one_sequence(&prompt, 60, 0, false),
        "prefill at 60",
        false,
    );
    step(
        &mut p,
        &Batch::one_sequence(&[5], 100, 0, false),
        "decode at 100",
        false,
    );
    // Past the first of the two splits of 150 keys (the positions between are zero rows
    // in both caches).
    let far = Batch {
        tokens: vec![1, 2],
        pos: vec![200, 160],
        seq: vec![0, 1],
        logits: vec![],
        embd: vec![],
        non_causal: false,
        rope_pos: Vec::new(),
    };
    step(&mut p, &far, "decode over two splits", false);
    eprintln!("{kt}/{vt} cache: largest deviation from an f32 cache {worst:.2e} (bound {tol:.1e})");
}

#[test]
fn attention_with_a_q8_0_cache_matches_cpu() {
    // Measured on the emulated GPU: 2.1e-3.
    attention_with_cache(KvType::Q8_0, KvType::Q8_0, 5e-3);
}

#[test]
fn attention_with_a_q4_0_cache_matches_cpu() {
    // Measured on the emulated GPU: 5.6e-2.
    attention_with_cache(KvType::Q4_0, KvType::Q4_0, 1e-1);
}

#[test]
fn attention_with_mixed_and_f32_caches_matches_cpu() {
    // Measured on the emulated GPU: 7.5e-4, 5.6e-2, 4.9e-7.
    attention_with_cache(KvType::Q8_0, KvType::F16, 5e-3);
    attention_with_cache(KvType::F32, KvType::Q4_0, 1e-1);
    attention_with_cache(KvType::F32, KvType::F32, 1e-5);
}

/// `kv_copy` of a quantized cache (q4_0 keys, q8_0 values: rows of different sizes): the
/// copied rows equal the source's bytes in every layer, and decoding the copy matches the
/// CPU's copy of an f32 cache holding the same values.
#[test]
fn kv_copy_of_a_quantized_cache() {
    let Some(dev) = device() else { return };
    let (heads, kvh, hd) = (4usize, 2usize, 32usize);
    let kv_dim = kvh * hd;
    let mut plan = Plan::new();
    let (q, k, v, out) = (
        plan.act(heads * hd),
        plan.act(kv_dim),
        plan.act(kv_dim),
        plan.act(heads * hd),
    );
    let spec = Attention {
        n_heads: heads,
        n_kv_heads: kvh,
        head_dim: hd,
        scale: 0.2,
        window: None,
        softcap: None,
    };
    let f = |o: &dyn Ops| {
        for layer in 0..2 {
            o.attention(layer, q, k, v, &spec, out);
        }
    };
    let (kt, vt) = (KvType::Q4_0, KvType::Q8_0);
    let base = KvConfig {
        k_type: KvType::F32,
        v_type: KvType::F32,
        ..kv(64, kv_dim, 3, 2)
    };
    let gpu_kv = KvConfig {
        k_type: kt,
        v_type: vt,
        ..base.clone()
    };
    let mut p = Pair::with_kv(dev, &plan, base, gpu_kv, None, &f);
    let mut seed = 500;
    let mut step = |p: &mut Pair, batch: &Batch, what: &str| {
        let n = batch.len();
        seed += 3;
        p.write(q, &rand_vec(n * q.width, seed));
        for (a, ty, s) in [(k, kt, seed + 1), (v, vt, seed + 2)] {
            let d = rand_vec(n * kv_dim, s);
            p.gpu.write(a, &d).unwrap();
            p.cpu.write(a, &kv_roundtrip(ty, &d));
        }
        p.run(batch, 50, &f);
        p.check(out, n, 1e-4, what);
    };
    let prompt: Vec<u32> = (0..20).collect();
    step(
        &mut p,
        &Batch::one_sequence(&prompt, 0, 0, false),
        "prefill",
    );
    p.cpu.kv_copy(0, 2, 20);
    p.gpu.kv_copy(0, 2, 20).unwrap();
    let (kc, vc) = p.gpu.cache_bytes().unwrap();
    for (c, ty) in [(&kc, kt), (&vc, vt)] {
        let row = ty.row_bytes(kv_dim);
        for layer in 0..2 {
            let slot = |s: usize| (layer * 3 + s) * 64 * row;
            assert_eq!(
                c[slot(2)..slot(2) + 20 * row],
                c[slot(0)..slot(0) + 20 * row],
                "{ty} layer {layer}"
            );
            assert!(c[slot(0)..slot(0) + 20 * row].iter().any(|&b| b != 0));
        }
    }
    let b = Batch {
        tokens: vec![1, 2],
        pos: vec![20, 20],
        seq: vec![2, 0],
        logits: vec![],
        embd: vec![],
        non_causal: false,
        rope_pos: Vec::new(),
    };
    step(&mut p, &b, "decode the copy and the source");
    step(
        &mut p,
        &Batch::one_sequence(&[3, 4, 5], 21, 2, false),
        "continue the copy",
    );
}

/// The Gated DeltaNet ops: a prompt chunk (the CPU's chunked form against the GPU's
/// token-by-token one), decode steps, two sequences in one batch, and a rollback.
#[test]
fn recurrent_ops_match_cpu() {
    let Some(dev) = device() else { return };
    let net = DeltaNet {
        n_k_heads: 2,
        n_v_heads: 4,
        head_k: 64,
        head_v: 32,
        conv_kernel: 4,
        eps: 1e-6,
    };
    let ch = net.conv_channels();
    let mut plan = Plan::new();
    let (x, conv, g, beta, out) = (
        plan.act(ch),
        plan.act(ch),
        plan.act(net.n_v_heads),
        plan.act(net.n_v_heads),
        plan.act(net.value_dim()),
    );
    let taps = rand_vec(ch * net.conv_kernel, 50);
    let net2 = net.clone();
    let f = move |o: &dyn Ops| {
        for layer in 0..2 {
            o.conv_silu(layer, x, &taps, &net2, conv);
            o.gated_delta(layer, conv, g, beta, &net2, out);
        }
    };
    let rec = RecurrentConfig {
        n_layers: 2,
        net: net.clone(),
    };
    let mut p = Pair::new(dev, &plan, kv(200, 32, 2, 1), Some(rec), &f);
    let mut seed = 60;
    let mut step = |p: &mut Pair, batch: &Batch, what: &str| {
        let n = batch.len();
        seed += 3;
        p.write(x, &rand_vec(n * ch, seed));
        // g: a log-decay (negative), beta in (0, 1).
        let gv: Vec<f32> = rand_vec(n * net.n_v_heads, seed + 1)
            .iter()
            .map(|v| -v.abs())
            .collect();
        let bv: Vec<f32> = rand_vec(n * net.n_v_heads, seed + 2)
            .iter()
            .map(|v| 0.5 + 0.5 * v)
            .collect();
        p.write(g, &gv);
        p.write(beta, &bv);
        p.run(batch, 128, &f);
        p.check(conv, n, 1e-4, &format!("{what}: conv_silu"));
        p.check(out, n, 2e-3, &format!("{what}: gated_delta"));
    };
    let prompt: Vec<u32> = (0..70).collect();
    step(&mut p, &Batch::one_sequence(&prompt, 0, 0, false), "prompt");
    step(
        &mut p,
        &Batch::one_sequence(&prompt[..5], 0, 1, false),
        "seq 1",
    );
    for i in 0..2u32 {
        let b = Batch {
            tokens: vec![1, 2, 3],
            pos: vec![70 + i, 5 + 2 * i, 6 + 2 * i],
            seq: vec![0, 1, 1],
            logits: vec![],
            embd: vec![],
            non_causal: false,
            rope_pos: Vec::new(),
        };
        step(&mut p, &b, "mixed decode");
    }
    // Verify 4 tokens of sequence 0, keep 2, continue.
    step(
        &mut p,
        &Batch::one_sequence(&prompt[..4], 72, 0, false),
        "verify",
    );
    p.cpu.rollback(0, 74).unwrap();
    p.gpu.rollback(0, 74).unwrap();
    assert_eq!(p.gpu.recurrent_len(0), Some(74));
    step(
        &mut p,
        &Batch::one_sequence(&[9], 74, 0, false),
        "after rollback",
    );
    step(
        &mut p,
        &Batch::one_sequence(&[9], 75, 0, false),
        "after rollback 2",
    );
}

/// A one-token pass replays its CUDA graph once captured; the results equal the plain
/// passes' (SURPLUS_NO_CUDA_GRAPH=1 turns graphs off).
#[test]
fn decode_graph_replays_the_same_results() {
    let Some(dev) = device() else { return };
    let mut plan = Plan::new();
    let (x, y, z) = (plan.act(256), plan.act(96), plan.act_rows(96, 1));
    let w = weight(GgmlType::Q4_K, 96, 256, 70);
    let norm = rand_vec(256, 71);
    let f = |o: &dyn Ops| {
        o.embed(&w, x);
        o.rms_norm(1, x, Some(&norm), 1e-6, 256, x);
        o.matmul(1, &w, x, y);
        o.gather_logit_rows(y, z);
    };
    let mut p = Pair::new(dev, &plan, kv(32, 32, 1, 1), None, &f);
    for (i, t) in [5u32, 17, 5, 40, 95].into_iter().enumerate() {
        let b = Batch::one_sequence(&[t], i as u32, 0, true);
        p.run(&b, 96, &f);
        p.check(z, 1, 2e-2, &format!("step {i}"));
    }
    eprintln!("graphs: {:?}", p.gpu.graphs());
}
