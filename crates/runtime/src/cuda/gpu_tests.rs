//! Each kernel against the CPU reference on random inputs, on GPU 0. Every test passes with
//! a note when no GPU can be opened (no driver, no GPU, no NVRTC), so CI stays green.

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use quant::GgmlType;

use super::backend::weights::{kernel_suffix, GPU_TYPES};
use super::gpu::GpuContext;
use super::kernels::Param;
use crate::cpu::kernels as cpu;
use crate::ops::{Rope, RopeMode};

/// GPU 0, or `None` (with the reason printed) when there is none. With `SURPLUS_TEST_GPU`
/// set (as `scripts/emu.sh` and `scripts/gpu_check.sh` do) a GPU that does not open fails
/// the test instead: a skip there would hide a broken driver.
pub(super) fn device() -> Option<GpuContext> {
    match GpuContext::open(0) {
        Ok(d) => Some(d),
        Err(e) if super::gpu_tests_required() => {
            panic!("SURPLUS_TEST_GPU is set but no GPU opened: {e}")
        }
        Err(e) => {
            eprintln!("skipped: no usable GPU: {e}");
            None
        }
    }
}

/// Deterministic values in [-1, 1).
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

fn cfg(grid: (u32, u32, u32), block: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: grid,
        block_dim: (block, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The kind of parameter a test's launch argument fills, to check the arguments against the
/// kernel's declaration as the backend's launches are.
trait ArgKind {
    const KIND: Param;
}

impl<T> ArgKind for CudaSlice<T> {
    const KIND: Param = Param::Ptr;
}

/// A raw device address (0 for a null pointer).
impl ArgKind for u64 {
    const KIND: Param = Param::Ptr;
}

impl ArgKind for i32 {
    const KIND: Param = Param::I32;
}

impl ArgKind for u32 {
    const KIND: Param = Param::U32;
}

impl ArgKind for i64 {
    const KIND: Param = Param::I64;
}

impl ArgKind for f32 {
    const KIND: Param = Param::F32;
}

fn kind_of<T: ArgKind>(_: &T) -> Param {
    T::KIND
}

/// Launches kernel `$name` with the given arguments (references to locals), once they are
/// checked against its declaration (arity and kinds).
macro_rules! launch {
    ($dev:expr, $name:expr, $cfg:expr; $($arg:expr),* $(,)?) => {{
        let (f, k) = $dev.kernel($name).unwrap();
        let kinds: &[Param] = &[$(kind_of($arg)),*];
        assert_eq!(kinds, k.params, "the arguments of {} do not match its declaration", k.name);
        let mut b = $dev.stream.launch_builder(f);
        $( b.arg($arg); )*
        // SAFETY: the arguments match the kernel's parameter list in its .cu file, and every
        // buffer is large enough for the grid given (each test sizes them for that grid).
        unsafe { b.launch($cfg) }.unwrap();
    }};
}

fn up<T: cudarc::driver::DeviceRepr>(dev: &GpuContext, v: &[T]) -> CudaSlice<T> {
    dev.stream.clone_htod(v).unwrap()
}

fn down(dev: &GpuContext, s: &CudaSlice<f32>) -> Vec<f32> {
    dev.stream.clone_dtoh(s).unwrap()
}

fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: gpu {g} cpu {w}"
        );
    }
}

#[test]
fn elementwise_match_cpu() {
    let Some(dev) = device() else { return };
    let (n, w) = (3usize, 1000usize);
    let (a, b) = (rand_vec(n * w, 1), rand_vec(n * w, 2));
    let (da, db) = (up(&dev, &a), up(&dev, &b));
    let mut out = dev.stream.alloc_zeros::<f32>(n * w).unwrap();
    let (wi, grid) = (w as i32, ((w as u32).div_ceil(256), n as u32, 1));
    for name in ["swiglu", "geglu", "add"] {
        launch!(dev, name, cfg(grid, 256); &da, &wi, &db, &wi, &mut out, &wi, &wi);
        let mut want = vec![0.0; n * w];
        for t in 0..n {
            let r = t * w..(t + 1) * w;
            match name {
                "swiglu" => cpu::swiglu(&a[r.clone()], &b[r.clone()], &mut want[r]),
                "geglu" => cpu::geglu(&a[r.clone()], &b[r.clone()], &mut want[r]),
                _ => {
                    for i in r {
                        want[i] = a[i] + b[i];
                    }
                }
            }
        }
        assert_close(&down(&dev, &out), &want, 1e-5, name);
    }
}

#[test]
fn rms_norm_matches_cpu() {
    let Some(dev) = device() else { return };
    // Two tokens of 4 heads of 64 (per-head norm, as QK-norm does), with weights.
    let (n, heads, d) = (2usize, 4usize, 64usize);
    let x = rand_vec(n * heads * d, 3);
    let g = rand_vec(d, 4);
    let (dx, dg) = (up(&dev, &x), up(&dev, &g));
    let mut out = dev.stream.alloc_zeros::<f32>(x.len()).unwrap();
    let (stride, row, per, eps) = ((heads * d) as i32, d as i32, heads as i32, 1e-6f32);
    launch!(dev, "rms_norm", cfg(((n * heads) as u32, 1, 1), 256);
        &dx, &stride, &dg, &mut out, &stride, &row, &per, &eps);
    let mut want = vec![0.0; x.len()];
    for (xr, wr) in x.chunks(d).zip(want.chunks_mut(d)) {
        cpu::rms_norm(xr, Some(&g), eps, wr);
    }
    assert_close(&down(&dev, &out), &want, 1e-5, "rms_norm");
}

#[test]
fn rope_matches_cpu() {
    let Some(dev) = device() else { return };
    let (n, heads, d) = (3usize, 2usize, 64usize);
    for mode in [RopeMode::Normal, RopeMode::Neox] {
        let rope = Rope::new(mode, d, 10000.0, 1.0);
        let x = rand_vec(n * heads * d, 5);
        let pos: Vec<u32> = vec![0, 7, 300];
        let mut dx = up(&dev, &x);
        let (dp, df) = (up(&dev, &pos), up(&dev, &rope.inv_freq));
        let (stride, h, hd, nr, fs) = ((heads * d) as i32, heads as i32, d as i32, d as i32, 1f32);
        let neox = (mode == RopeMode::Neox) as i32;
        let grid = (((heads * d / 2) as u32).div_ceil(256), n as u32, 1);
        let (null, z) = (0u64, 0u32);
        launch!(dev, "rope", cfg(grid, 256); &mut dx, &stride, &dp, &df, &h, &hd, &nr, &fs, &neox,
            &null, &z, &z, &z, &z);
        let mut want = x.clone();
        for t in 0..n {
            for hh in 0..heads {
                cpu::rope(&mut want[(t * heads + hh) * d..][..d], pos[t], &rope);
            }
        }
        assert_close(&down(&dev, &dx), &want, 1e-4, "rope");
    }
}

/// Multi-section RoPE (Qwen3.5): 16 of 64 dims rotated, pair i by component i mod 3 of each
/// token's (t, h, w).
#[test]
fn multi_section_rope_matches_cpu() {
    let Some(dev) = device() else { return };
    let (n, heads, d, n_rot) = (4usize, 2usize, 64usize, 16usize);
    let mut rope = Rope::new(RopeMode::Neox, n_rot, 1e7, 1.0);
    rope.section = (0..n_rot / 2).map(|i| (i % 3) as u8).collect();
    let x = rand_vec(n * heads * d, 6);
    let pos: Vec<u32> = vec![4, 5, 6, 13];
    let pos3: Vec<[u32; 3]> = vec![[4, 4, 4], [4, 4, 5], [4, 5, 4], [13, 13, 13]];
    let flat: Vec<u32> = pos3.iter().flatten().copied().collect();
    let mut sec = [0u32; 4];
    for (i, &c) in rope.section.iter().enumerate() {
        sec[i / 16] |= (c as u32) << (2 * (i % 16));
    }
    let mut dx = up(&dev, &x);
    let (dp, df, d3) = (up(&dev, &pos), up(&dev, &rope.inv_freq), up(&dev, &flat));
    let (stride, h, hd, nr, fs) = (
        (heads * d) as i32,
        heads as i32,
        d as i32,
        n_rot as i32,
        1f32,
    );
    let neox = 1i32;
    let grid = (((heads * n_rot / 2) as u32).div_ceil(256), n as u32, 1);
    launch!(dev, "rope", cfg(grid, 256); &mut dx, &stride, &dp, &df, &h, &hd, &nr, &fs, &neox,
        &d3, &sec[0], &sec[1], &sec[2], &sec[3]);
    let mut want = x.clone();
    for t in 0..n {
        for hh in 0..heads {
            cpu::rope_at(&mut want[(t * heads + hh) * d..][..d], pos3[t], &rope);
        }
    }
    assert_close(&down(&dev, &dx), &want, 1e-4, "multi-section rope");
}

/// The block formats the GPU takes (those with a dp4a kernel).
fn block_types() -> impl Iterator<Item = GgmlType> {
    GPU_TYPES.iter().filter(|t| t.2).map(|t| t.0)
}

fn suffix(ty: GgmlType) -> &'static str {
    kernel_suffix(ty).expect("a GPU type").0
}

/// Quantized matrix × vector for 3 tokens: the dp4a path (activations quantized on the GPU)
/// within 8-bit activation error of the f32 product, the f32-activation path close to it.
#[test]
fn matvec_matches_cpu_for_every_type() {
    let Some(dev) = device() else { return };
    let (rows, cols, n) = (40usize, 512usize, 3usize);
    let x = rand_vec(n * cols, 11);
    let dx = up(&dev, &x);
    for ty in block_types() {
        let wf = rand_vec(rows * cols, 12);
        let wq = quant::quantize_to_vec(ty, &wf).unwrap();
        let wd = quant::dequantize_to_vec(ty, &wq).unwrap();
        let row_bytes = (wq.len() / rows) as i64;
        let dw = up(&dev, &wq);
        let mut want = vec![0.0f32; n * rows];
        let mut bound = vec![0.0f32; n * rows];
        for t in 0..n {
            for r in 0..rows {
                let (wr, xr) = (&wd[r * cols..][..cols], &x[t * cols..][..cols]);
                want[t * rows + r] = wr.iter().zip(xr).map(|(a, b)| a * b).sum();
                bound[t * rows + r] = wr.iter().zip(xr).map(|(a, b)| (a * b).abs()).sum();
            }
        }
        let nb = (cols / 32) as i32;
        let mut q8 = dev.stream.alloc_zeros::<u8>(n * cols / 32 * 40).unwrap();
        let (ci, ri, ni, rows_out) = (cols as i32, rows as i32, n as i32, rows as i32);
        let grid = ((cols as u32 / 32).div_ceil(8), n as u32, 1);
        launch!(dev, "quantize_q8_1", cfg(grid, 256); &dx, &ci, &mut q8, &nb, &ci);
        let grid = ((rows as u32).div_ceil(4), (n as u32).div_ceil(8), 1);
        for (kernel, xin_q) in [
            (format!("mmvq_{}", suffix(ty)), true),
            (format!("mmv_{}", suffix(ty)), false),
        ] {
            let mut out = dev.stream.alloc_zeros::<f32>(n * rows).unwrap();
            if xin_q {
                launch!(dev, &kernel, cfg(grid, 128);
                    &dw, &row_bytes, &q8, &nb, &mut out, &rows_out, &ci, &ri, &ni);
            } else {
                launch!(dev, &kernel, cfg(grid, 128);
                    &dw, &row_bytes, &dx, &ci, &mut out, &rows_out, &ci, &ri, &ni);
            }
            let got = down(&dev, &out);
            // 8-bit activations: error per product at most |w| |x| / 127.
            let rel = if xin_q { 1.0 / 127.0 } else { 1e-5 };
            for i in 0..n * rows {
                assert!(
                    (got[i] - want[i]).abs() <= rel * bound[i] + 1e-5,
                    "{kernel} [{i}]: gpu {} cpu {} (bound {})",
                    got[i],
                    want[i],
                    bound[i]
                );
            }
        }
    }
}

/// The dp4a path computes what the CPU's int8 path computes: activations rounded to 8 bits
/// by the CPU's rule (`quant::rows16::quantize_act`: f16 scale, levels to nearest even),
/// then exact products; so against the dequantized weights times the CPU-quantized
/// activations it is within f32 summation error, far below the 8-bit bound above.
#[test]
fn matvec_dp4a_rounds_activations_as_the_cpu() {
    let Some(dev) = device() else { return };
    let (rows, cols, n) = (24usize, 256usize, 2usize);
    let x = rand_vec(n * cols, 21);
    let dx = up(&dev, &x);
    // The CPU's 8-bit activations, dequantized: level × f16-rounded scale.
    let mut xq = vec![0.0f32; n * cols];
    for t in 0..n {
        let mut a = vec![0u8; quant::rows16::act_bytes(cols)];
        quant::rows16::quantize_act(&x[t * cols..][..cols], &mut a);
        for b in 0..cols / 32 {
            let o = cols + 4 * b;
            let d = f32::from_le_bytes(a[o..o + 4].try_into().unwrap());
            for i in 0..32 {
                xq[t * cols + 32 * b + i] = a[32 * b + i] as i8 as f32 * d;
            }
        }
    }
    let nb = (cols / 32) as i32;
    let mut q8 = dev.stream.alloc_zeros::<u8>(n * cols / 32 * 40).unwrap();
    let (ci, ri, ni) = (cols as i32, rows as i32, n as i32);
    let grid = ((cols as u32 / 32).div_ceil(8), n as u32, 1);
    launch!(dev, "quantize_q8_1", cfg(grid, 256); &dx, &ci, &mut q8, &nb, &ci);
    for ty in block_types() {
        let wf = rand_vec(rows * cols, 22);
        let wq = quant::quantize_to_vec(ty, &wf).unwrap();
        let wd = quant::dequantize_to_vec(ty, &wq).unwrap();
        let row_bytes = (wq.len() / rows) as i64;
        let dw = up(&dev, &wq);
        let mut out = dev.stream.alloc_zeros::<f32>(n * rows).unwrap();
        let kernel = format!("mmvq_{}", suffix(ty));
        let grid = ((rows as u32).div_ceil(4), (n as u32).div_ceil(8), 1);
        launch!(dev, &kernel, cfg(grid, 128);
            &dw, &row_bytes, &q8, &nb, &mut out, &ri, &ci, &ri, &ni);
        let got = down(&dev, &out);
        for t in 0..n {
            for r in 0..rows {
                let (wr, xr) = (&wd[r * cols..][..cols], &xq[t * cols..][..cols]);
                let want: f64 = wr.iter().zip(xr).map(|(a, b)| *a as f64 * *b as f64).sum();
                let bound: f64 = wr
                    .iter()
                    .zip(xr)
                    .map(|(a, b)| (*a as f64 * *b as f64).abs())
                    .sum();
                let g = got[t * rows + r] as f64;
                assert!(
                    (g - want).abs() <= 1e-5 * bound + 1e-6,
                    "{kernel} token {t} row {r}: gpu {g} cpu-rounded {want} (bound {bound})"
                );
            }
        }
    }
}

/// Embedding rows and f16 tiles dequantize exactly as the CPU does.
#[test]
fn dequantize_matches_cpu_for_every_type() {
    let Some(dev) = device() else { return };
    let (rows, cols) = (8usize, 512usize);
    for ty in block_types() {
        let wq = quant::quantize_to_vec(ty, &rand_vec(rows * cols, 21)).unwrap();
        let wd = quant::dequantize_to_vec(ty, &wq).unwrap();
        let row_bytes = (wq.len() / rows) as i64;
        let dw = up(&dev, &wq);
        let ids: Vec<u32> = vec![5, 0, 7];
        let did = up(&dev, &ids);
        let mut out = dev.stream.alloc_zeros::<f32>(ids.len() * cols).unwrap();
        let ci = cols as i32;
        let grid = ((cols as u32 / 32).div_ceil(128), ids.len() as u32, 1);
        let name = format!("get_rows_{}", suffix(ty));
        launch!(dev, &name, cfg(grid, 128); &dw, &row_bytes, &did, &mut out, &ci, &ci);
        let want: Vec<f32> = ids
            .iter()
            .flat_map(|&r| wd[r as usize * cols..][..cols].to_vec())
            .collect();
        assert_close(&down(&dev, &out), &want, 1e-6, &name);
        let mut h = dev.stream.alloc_zeros::<u16>(rows * cols).unwrap();
        let row0 = 0i32;
        let grid = ((cols as u32 / 32).div_ceil(128), rows as u32, 1);
        let name = format!("deq_f16_{}", suffix(ty));
        launch!(dev, &name, cfg(grid, 128); &dw, &row_bytes, &mut h, &ci, &row0);
        let got: Vec<f32> = dev
            .stream
            .clone_dtoh(&h)
            .unwrap()
            .into_iter()
            .map(|b| half::f16::from_bits(b).to_f32())
            .collect();
        let want: Vec<f32> = wd
            .iter()
            .map(|&v| half::f16::from_f32(v).to_f32())
            .collect();
        assert_close(&got, &want, 0.0, &name);
    }
}

/// Decode (split-K) and prefill attention over an f16 cache agree with the CPU's `attend`
/// over the same f16-rounded keys and values, with GQA, a window and a softcap.
#[test]
fn attention_matches_cpu() {
    let Some(dev) = device() else { return };
    let (heads, kv_heads, d, n_ctx) = (4usize, 2usize, 64usize, 600usize);
    let kv_dim = kv_heads * d;
    let len = 530usize; // positions filled in sequence 1
    let f16r = |v: f32| half::f16::from_f32(v).to_f32();
    let keys: Vec<f32> = rand_vec(len * kv_dim, 31).into_iter().map(f16r).collect();
    let vals: Vec<f32> = rand_vec(len * kv_dim, 32).into_iter().map(f16r).collect();
    // Write them through kv_write into sequence 1 of a 2-sequence, 1-layer cache.
    let (mut ck, mut cv) = (
        dev.stream.alloc_zeros::<u16>(2 * n_ctx * kv_dim).unwrap(),
        dev.stream.alloc_zeros::<u16>(2 * n_ctx * kv_dim).unwrap(),
    );
    let pos: Vec<u32> = (0..len as u32).collect();
    let seq = vec![1u32; len];
    let (dk, dv, dp, ds) = (
        up(&dev, &keys),
        up(&dev, &vals),
        up(&dev, &pos),
        up(&dev, &seq),
    );
    // Layer offsets in bytes; type 1 is f16 (KV_F16 in attention.cu).
    let (kvi, ctxi, off, f16t) = (kv_dim as i32, n_ctx as i32, 0i64, 1i32);
    launch!(dev, "kv_write", cfg(((kv_dim as u32).div_ceil(256), len as u32, 1), 256);
        &dk, &kvi, &dv, &kvi, &mut ck, &mut cv, &dp, &ds, &kvi, &ctxi, &off, &off, &f16t,
        &f16t);
    let scale = 1.0 / (d as f32).sqrt();
    for (window, softcap) in [(0i32, 0.0f32), (100, 0.0), (0, 30.0)] {
        // CPU reference for the queries at the last 20 positions.
        let nq = 20usize;
        let p0 = len - nq;
        let q = rand_vec(nq * heads * d, 33);
        let mut want = vec![0.0f32; nq * heads * d];
        let mut scores = vec![0.0f32; n_ctx];
        for i in 0..nq {
            let p = p0 + i;
            let first = if window > 0 {
                (p + 1).saturating_sub(window as usize)
            } else {
                0
            };
            for h in 0..heads {
                cpu::attend(
                    &q[(i * heads + h) * d..][..d],
                    &keys,
                    &vals,
                    kv_dim,
                    (h / (heads / kv_heads)) * d,
                    first,
                    p + 1,
                    scale,
                    (softcap > 0.0).then_some(softcap),
                    &mut scores,
                    &mut want[(i * heads + h) * d..][..d],
                );
            }
        }
        let dq = up(&dev, &q);
        let (qs, hi, kvh, di) = ((heads * d) as i32, heads as i32, kv_heads as i32, d as i32);
        // Decode: every query as its own token (positions p0.., sequence 1), splits of 128.
        let qpos: Vec<u32> = (p0 as u32..len as u32).collect();
        let (dqp, dqs) = (up(&dev, &qpos), up(&dev, &vec![1u32; nq]));
        let split = 128i32;
        let n_split = (len as u32).div_ceil(split as u32);
        let mut part = dev
            .stream
            .alloc_zeros::<f32>(nq * heads * n_split as usize * (d + 2))
            .unwrap();
        let kend: Vec<u32> = qpos.iter().map(|p| p + 1).collect();
        let dke = up(&dev, &kend);
        launch!(dev, "attn_decode", cfg((heads as u32, nq as u32, n_split), 128);
            &dq, &qs, &ck, &cv, &dqp, &dqs, &dke, &mut part, &hi, &kvh, &di, &ctxi, &off, &off,
            &f16t, &f16t, &scale, &softcap, &window, &split);
        let mut out = dev.stream.alloc_zeros::<f32>(nq * heads * d).unwrap();
        let ns = n_split as i32;
        launch!(dev, "attn_combine", cfg((heads as u32, nq as u32, 1), d as u32);
            &part, &mut out, &qs, &hi, &di, &ns);
        assert_close(&down(&dev, &out), &want, 1e-4, "attn_decode");
        // Prefill: the same queries as one chunk of sequence 1 from p0.
        let mut out = dev.stream.alloc_zeros::<f32>(nq * heads * d).unwrap();
        let (nqi, sq, p0i) = (nq as i32, 1i32, p0 as i32);
        launch!(dev, "attn_prefill", cfg(((nq as u32).div_ceil(8), heads as u32, 1), 128);
            &dq, &qs, &ck, &cv, &mut out, &qs, &nqi, &sq, &p0i, &hi, &kvh, &di, &ctxi, &off,
            &off, &f16t, &f16t, &scale, &softcap, &window, &0i32);
        assert_close(&down(&dev, &out), &want, 1e-4, "attn_prefill");
    }
}
