//! The CPU KV cache's rows in their stored types (f32, f16, q8_0, q4_0), and the one attention
//! kernel that reads them in place for decode, verification and prompt chunks alike.

use quant::{BlockQ4_0, BlockQ8_0};

use super::kernels::{exp, tanh};
use crate::limits::KvType;

/// Most queries (token × head pairs) one [`attend`] call takes.
pub const MAX_QUERIES: usize = 64;

/// Floats of scratch [`attend`] needs for `n_queries` queries of heads of `head_dim`
/// values over at most `n_ctx` positions.
pub fn scratch_len(n_queries: usize, n_ctx: usize, head_dim: usize) -> usize {
    n_queries * n_ctx + (KEY_TILE.max(VALUE_TILE) + 1) * head_dim + 64
}

/// Writes one token's row of keys or values `x` into `out` in type `ty`: f32 and f16 value
/// by value (f16 rounded to nearest even), q8_0 and q4_0 in GGUF blocks of 32 as ggml's
/// reference quantizers round them (a last partial block is padded with zeros). `out` holds
/// [`KvType::row_bytes`] of `x.len()` rounded up to whole blocks; shorter `out` is filled as
/// far as it goes.
pub fn store_row(ty: KvType, x: &[f32], out: &mut [u8]) {
    match ty {
        KvType::F32 => {
            for (c, v) in out.chunks_exact_mut(4).zip(x) {
                c.copy_from_slice(&v.to_le_bytes());
            }
        }
        KvType::F16 => {
            for (c, v) in out.chunks_exact_mut(2).zip(x) {
                c.copy_from_slice(&half::f16::from_f32(*v).to_le_bytes());
            }
        }
        KvType::Q8_0 => {
            for (c, xs) in out.chunks_exact_mut(34).zip(x.chunks(32)) {
                let b = BlockQ8_0::quantize_ref(&block_of(xs));
                c.copy_from_slice(bytemuck::bytes_of(&b));
            }
        }
        KvType::Q4_0 => {
            for (c, xs) in out.chunks_exact_mut(18).zip(x.chunks(32)) {
                let b = BlockQ4_0::quantize_ref(&block_of(xs));
                c.copy_from_slice(bytemuck::bytes_of(&b));
            }
        }
    }
}

/// Up to 32 values as one block, zero-padded.
fn block_of(xs: &[f32]) -> [f32; 32] {
    let mut b = [0.0f32; 32];
    b[..xs.len()].copy_from_slice(xs);
    b
}

/// Values `off..off + out.len()` of a stored row `row` of type `ty`, as f32 (exactly the
/// values the type holds: f16 widened, blocks dequantized as ggml does).
pub fn load(ty: KvType, row: &[u8], off: usize, out: &mut [f32]) {
    let n = out.len();
    match ty {
        KvType::F32 => {
            let b = &row[4 * off..4 * (off + n)];
            match bytemuck::try_cast_slice::<u8, f32>(b) {
                Ok(v) => out.copy_from_slice(v),
                Err(_) => {
                    for (y, c) in out.iter_mut().zip(b.chunks_exact(4)) {
                        *y = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                    }
                }
            }
        }
        KvType::F16 => {
            use half::slice::HalfFloatSliceExt;
            let b = &row[2 * off..2 * (off + n)];
            match bytemuck::try_cast_slice::<u8, half::f16>(b) {
                Ok(v) => v.convert_to_f32_slice(out),
                Err(_) => {
                    for (y, c) in out.iter_mut().zip(b.chunks_exact(2)) {
                        *y = half::f16::from_le_bytes([c[0], c[1]]).to_f32();
                    }
                }
            }
        }
        KvType::Q8_0 | KvType::Q4_0 => {
            let (bytes, mut y) = (if ty == KvType::Q8_0 { 34 } else { 18 }, [0.0f32; 32]);
            let mut i = off;
            let mut o = 0;
            while o < n {
                let (blk, within) = (i / 32, i % 32);
                let raw = &row[blk * bytes..(blk + 1) * bytes];
                if ty == KvType::Q8_0 {
                    bytemuck::pod_read_unaligned::<BlockQ8_0>(raw).dequantize(&mut y);
                } else {
                    bytemuck::pod_read_unaligned::<BlockQ4_0>(raw).dequantize(&mut y);
                }
                let take = (32 - within).min(n - o);
                out[o..o + take].copy_from_slice(&y[within..within + take]);
                o += take;
                i += take;
            }
        }
    }
}

/// One layer's keys (or values) of one sequence as the cache stores them: position `j`'s
/// row is `data[j * stride..][..stride]`, `kv_dim` values of type `ty`.
#[derive(Clone, Copy, Debug)]
pub struct KvRows<'a> {
    /// The stored type.
    pub ty: KvType,
    /// The rows, from position 0.
    pub data: &'a [u8],
    /// Bytes from one position's row to the next.
    pub stride: usize,
}

impl<'a> KvRows<'a> {
    /// Position `j`'s row.
    fn row(&self, j: usize) -> &'a [u8] {
        &self.data[j * self.stride..(j + 1) * self.stride]
    }
}

/// One query of an [`attend`] call: a query head's values `q`, the positions `first..end`
/// it sees, and its output `out` (as long as `q`). The default sees nothing.
#[derive(Debug, Default)]
pub struct Query<'a> {
    /// The query head (already roped).
    pub q: &'a [f32],
    /// First visible position.
    pub first: usize,
    /// One past the last visible position.
    pub end: usize,
    /// The head's output.
    pub out: &'a mut [f32],
}

/// Keys scored together from one transposed tile (the lanes of a vector).
const KEY_TILE: usize = 16;
/// Value rows widened to f32 at a time (f16 and quantized values).
const VALUE_TILE: usize = 64;
/// Queries scored against a key tile at once (independent chains of vector adds).
const GROUP: usize = 8;
/// Head values accumulated in registers at a time.
const OUT_CHUNK: usize = 64;

/// Attention of `queries` (heads of one GQA group, of tokens of one sequence) over the
/// cached `keys` and `values`, whose head starts at value `offset` of each row:
/// `out = Σ_j softmax_j(softcap(scale · q·k_j)) v_j` over each query's `first..end`.
/// `scratch` holds [`scratch_len`] floats for the queries and the head size (with less,
/// the queries that do not fit are left alone).
///
/// Each query's output has the same bits whatever other queries share the call: a score is
/// `Σ_d q_d k_d` in two partial sums (even and odd `d`, each in order, then added; q8_0 and
/// q4_0 keys dequantized as ggml does, the query in f32, as the CUDA kernels score them),
/// and the output `Σ_j p_j v_j` in order of `j`. With SIMD (the
/// tier [`quant::Isa::selected`] picks) each product and sum is one fused multiply-add, so
/// the bits differ from [`attend_reference`]'s within rounding.
#[allow(clippy::too_many_arguments)]
pub fn attend(
    queries: &mut [Query],
    keys: KvRows,
    values: KvRows,
    offset: usize,
    scale: f32,
    softcap: Option<f32>,
    scratch: &mut [f32],
) {
    let args = (keys, values, offset, scale, softcap);
    #[cfg(target_arch = "x86_64")]
    match quant::Isa::selected() {
        quant::Isa::Avx512 => {
            // SAFETY: the selected tier is one this CPU runs; it has every feature enabled.
            unsafe { attend_avx512(queries, args, scratch) };
            return;
        }
        quant::Isa::Avx2 => {
            // SAFETY: as above.
            unsafe { attend_avx2(queries, args, scratch) };
            return;
        }
        quant::Isa::Scalar => {}
    }
    attend_body::<false>(queries, args, scratch);
}

/// [`attend`] in plain scalar code (separate multiplies and adds): the reference the SIMD
/// versions are tested against.
#[allow(clippy::too_many_arguments)]
pub fn attend_reference(
    queries: &mut [Query],
    keys: KvRows,
    values: KvRows,
    offset: usize,
    scale: f32,
    softcap: Option<f32>,
    scratch: &mut [f32],
) {
    let args = (keys, values, offset, scale, softcap);
    attend_body::<false>(queries, args, scratch);
}

/// The arguments of [`attend`] between the queries and the scratch.
type Args<'a> = (KvRows<'a>, KvRows<'a>, usize, f32, Option<f32>);

/// [`attend_body`] with fused multiply-adds, compiled for the AVX2 tier.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn attend_avx2(queries: &mut [Query], args: Args, s: &mut [f32]) {
    attend_body::<true>(queries, args, s);
}

/// [`attend_body`] with fused multiply-adds, compiled for the AVX-512 tier.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn attend_avx512(queries: &mut [Query], args: Args, s: &mut [f32]) {
    attend_body::<true>(queries, args, s);
}

/// `a × b + c`, fused (one rounding) when `FMA`.
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// The body of [`attend`].
#[inline(always)]
fn attend_body<const FMA: bool>(
    queries: &mut [Query],
    (keys, values, offset, scale, softcap): Args,
    scratch: &mut [f32],
) {
    let Some(hd) = queries.first().map(|q| q.q.len()) else {
        return;
    };
    let tile_len = (KEY_TILE.max(VALUE_TILE) + 1) * hd;
    if scratch.len() < tile_len {
        return;
    }
    let (tile, scores) = scratch.split_at_mut(tile_len);
    // Where each query's scores start in `scores`; queries that do not fit are dropped.
    let mut at = [0usize; MAX_QUERIES + 1];
    let mut nq = 0;
    for (i, q) in queries.iter().enumerate().take(MAX_QUERIES) {
        let need = at[i] + q.end.saturating_sub(q.first);
        if q.q.len() != hd || q.out.len() != hd || need > scores.len() {
            break;
        }
        at[i + 1] = need;
        nq = i + 1;
    }
    let queries = &mut queries[..nq];
    // Positions beyond the stored rows are not read.
    let n_rows =
        (keys.data.len() / keys.stride.max(1)).min(values.data.len() / values.stride.max(1));
    for q in queries.iter_mut() {
        q.end = q.end.min(n_rows);
        q.first = q.first.min(q.end);
    }
    let lo = queries.iter().map(|q| q.first).min().unwrap_or(0);
    let hi = queries.iter().map(|q| q.end).max().unwrap_or(0);

    // 1. Scores, a tile of KEY_TILE keys at a time: the tile is widened to f32 and
    // transposed, so that a query's scores against it are the lanes of one vector.
    // Lane l sums q_d · k_ld in order of d (quantized keys dequantized as ggml does, the
    // query kept in f32, as the CUDA kernels score them).
    let kt = keys.ty;
    let (kt_tile, rest) = tile.split_at_mut(KEY_TILE * hd);
    let wide = &mut rest[..hd];
    let mut j0 = lo;
    while j0 < hi {
        let n = KEY_TILE.min(hi - j0);
        for l in 0..KEY_TILE {
            if l >= n {
                wide.fill(0.0);
            } else {
                load(kt, keys.row(j0 + l), offset, wide);
            }
            for (d, &x) in wide.iter().enumerate() {
                kt_tile[d * KEY_TILE + l] = x;
            }
        }
        let mut i = 0;
        while i < queries.len() {
            // Up to GROUP queries at a time share the loads of the tile.
            let m = GROUP.min(queries.len() - i);
            let pick = |g: usize| (i + g).min(i + m - 1);
            let group: [&[f32]; GROUP] = std::array::from_fn(|g| queries[pick(g)].q);
            let lanes = score_tile::<FMA>(group, kt_tile, hd);
            for (g, lanes) in lanes.iter().enumerate().take(m) {
                let q = &queries[i + g];
                let (a, b) = (q.first.max(j0), q.end.min(j0 + n));
                if a >= b {
                    continue;
                }
                let base = at[i + g] + a - q.first;
                scores[base..base + (b - a)].copy_from_slice(&lanes[a - j0..b - j0]);
            }
            i += m;
        }
        j0 += n;
    }
    // 2. Scale, softcap, softmax.
    for (i, q) in queries.iter_mut().enumerate() {
        let s = &mut scores[at[i]..at[i + 1]];
        for v in s.iter_mut() {
            *v *= scale;
            if let Some(cap) = softcap {
                *v = cap * tanh(*v / cap);
            }
        }
        softmax(s);
        q.out.fill(0.0);
    }
    // 3. Values, in position order: f32 rows read in place, others widened a tile at a time.
    let direct = match values.ty {
        KvType::F32 => bytemuck::try_cast_slice::<u8, f32>(values.data).ok(),
        _ => None,
    };
    // Tiles of VALUE_TILE rows (they stay in L1 while every query reads them).
    let mut j0 = lo;
    while j0 < hi {
        let n = VALUE_TILE.min(hi - j0);
        let (rows, rs, r0): (&[f32], usize, usize) = match direct {
            Some(v) => (v, values.stride / 4, offset),
            None => {
                for l in 0..n {
                    load(
                        values.ty,
                        values.row(j0 + l),
                        offset,
                        &mut tile[l * hd..(l + 1) * hd],
                    );
                }
                (&tile[..], hd, 0)
            }
        };
        // Row j of the tile starts at `r0 + (j - base) * rs`.
        let base = if direct.is_some() { 0 } else { j0 };
        for (i, q) in queries.iter_mut().enumerate() {
            let (a, b) = (q.first.max(j0), q.end.min(j0 + n));
            if a >= b {
                continue;
            }
            let p = &scores[at[i] + a - q.first..at[i] + b - q.first];
            accumulate::<FMA>(p, rows, r0 + (a - base) * rs, rs, q.out);
        }
        j0 += n;
    }
}

/// Softmax in place: max-subtracted, the sum in f64 over eight partial sums (position
/// mod 8) added in a fixed order.
#[inline(always)]
fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return;
    }
    for v in x.iter_mut() {
        *v = exp(*v - max);
    }
    let mut part = [0.0f64; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (p, &v) in part.iter_mut().zip(c) {
            *p += v as f64;
        }
    }
    for (p, &v) in part.iter_mut().zip(tail) {
        *p += v as f64;
    }
    let sum =
        ((part[0] + part[4]) + (part[2] + part[6])) + ((part[1] + part[5]) + (part[3] + part[7]));
    let inv = (1.0 / sum) as f32;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// Dot products of [`GROUP`] queries (`hd` values each) with a tile of [`KEY_TILE`] keys
/// stored transposed (`kt[d * KEY_TILE + l]` is key l's value d): lane l of result g is
/// `Σ_d q_g[d] · k_l[d]`, summed in order of d.
#[inline(always)]
fn score_tile<const FMA: bool>(
    q: [&[f32]; GROUP],
    kt: &[f32],
    hd: usize,
) -> [[f32; KEY_TILE]; GROUP] {
    // Two partial sums (even and odd d), added at the end: half the rounding steps.
    let mut acc = [[[0.0f32; KEY_TILE]; GROUP]; 2];
    let q = q.map(|x| &x[..hd]);
    for (d, k) in kt.chunks_exact(KEY_TILE).take(hd).enumerate() {
        for (a, qg) in acc[d & 1].iter_mut().zip(&q) {
            let x = qg[d];
            for (s, &kv) in a.iter_mut().zip(k) {
                *s = madd::<FMA>(x, kv, *s);
            }
        }
    }
    let [mut even, odd] = acc;
    for (e, o) in even.iter_mut().zip(&odd) {
        for (e, &o) in e.iter_mut().zip(o) {
            *e += o;
        }
    }
    even
}

/// `out += Σ_j p[j] · v_j` in order of j, where row j is `rows[r0 + j * stride..][..out.len()]`;
/// the output is held in registers a chunk of [`OUT_CHUNK`] values at a time.
#[inline(always)]
fn accumulate<const FMA: bool>(p: &[f32], rows: &[f32], r0: usize, stride: usize, out: &mut [f32]) {
    let mut chunks = out.chunks_exact_mut(OUT_CHUNK);
    let mut c0 = 0;
    for o in &mut chunks {
        // Four vectors of sixteen, named apart so that they live in registers.
        let mut a = [[0.0f32; 16]; 4];
        for (a, o) in a.iter_mut().zip(o.chunks_exact(16)) {
            a.copy_from_slice(o);
        }
        let [mut a0, mut a1, mut a2, mut a3] = a;
        for (j, &pj) in p.iter().enumerate() {
            let start = r0 + j * stride + c0;
            let Some(v) = rows.get(start..start + OUT_CHUNK) else {
                break;
            };
            for i in 0..16 {
                a0[i] = madd::<FMA>(pj, v[i], a0[i]);
                a1[i] = madd::<FMA>(pj, v[16 + i], a1[i]);
                a2[i] = madd::<FMA>(pj, v[32 + i], a2[i]);
                a3[i] = madd::<FMA>(pj, v[48 + i], a3[i]);
            }
        }
        for (k, a) in [a0, a1, a2, a3].iter().enumerate() {
            o[16 * k..16 * k + 16].copy_from_slice(a);
        }
        c0 += OUT_CHUNK;
    }
    let o = chunks.into_remainder();
    let w = o.len();
    for (j, &pj) in p.iter().enumerate() {
        let start = r0 + j * stride + c0;
        let Some(v) = rows.get(start..start + w) else {
            break;
        };
        for (a, &x) in o.iter_mut().zip(v) {
            *a = madd::<FMA>(pj, x, *a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift values in [-1, 1).
    fn random(seed: &mut u64, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                (*seed >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// A cache of `n_pos` rows of `kv_dim` values of `ty`, from `x`.
    fn stored(ty: KvType, x: &[f32], kv_dim: usize) -> (Vec<u8>, usize) {
        let stride = ty.row_bytes(kv_dim);
        let n_pos = x.len() / kv_dim;
        let mut out = vec![0u8; n_pos * stride];
        for (r, o) in x.chunks_exact(kv_dim).zip(out.chunks_exact_mut(stride)) {
            store_row(ty, r, o);
        }
        (out, stride)
    }

    struct Case {
        hd: usize,
        kv_dim: usize,
        n_pos: usize,
        keys: Vec<f32>,
        values: Vec<f32>,
        queries: Vec<f32>,
        ranges: Vec<(usize, usize)>,
    }

    fn case(seed: u64, hd: usize, n_kv: usize, n_pos: usize, n_q: usize) -> Case {
        let mut s = seed;
        let kv_dim = hd * n_kv;
        // Keys with a spread of sizes, so that the softmax is not flat.
        let keys = random(&mut s, n_pos * kv_dim)
            .into_iter()
            .map(|x| 2.0 * x)
            .collect();
        let values = random(&mut s, n_pos * kv_dim);
        let queries = random(&mut s, n_q * hd);
        let ranges = (0..n_q)
            .map(|i| {
                let end = n_pos - (i * 7) % (n_pos / 2);
                (i * 3 % (end / 2 + 1), end)
            })
            .collect();
        Case {
            hd,
            kv_dim,
            n_pos,
            keys,
            values,
            queries,
            ranges,
        }
    }

    /// Runs `f` (attend or the reference) on queries `which` of the case with the cache in
    /// types (`kt`, `vt`), for KV head `kvh`; returns each query's output.
    #[allow(clippy::type_complexity)]
    fn run(
        c: &Case,
        (kt, vt): (KvType, KvType),
        kvh: usize,
        which: &[usize],
        softcap: Option<f32>,
        f: fn(&mut [Query], KvRows, KvRows, usize, f32, Option<f32>, &mut [f32]),
    ) -> Vec<Vec<f32>> {
        let (kb, ks) = stored(kt, &c.keys, c.kv_dim);
        let (vb, vs) = stored(vt, &c.values, c.kv_dim);
        let mut outs = vec![vec![0.0f32; c.hd]; which.len()];
        let mut qs: Vec<Query> = which
            .iter()
            .zip(outs.iter_mut())
            .map(|(&i, out)| Query {
                q: &c.queries[i * c.hd..(i + 1) * c.hd],
                first: c.ranges[i].0,
                end: c.ranges[i].1,
                out,
            })
            .collect();
        let mut scratch = vec![0.0f32; scratch_len(MAX_QUERIES, c.n_pos, c.hd)];
        let keys = KvRows {
            ty: kt,
            data: &kb,
            stride: ks,
        };
        let values = KvRows {
            ty: vt,
            data: &vb,
            stride: vs,
        };
        let scale = 1.0 / (c.hd as f32).sqrt();
        f(
            &mut qs,
            keys,
            values,
            kvh * c.hd,
            scale,
            softcap,
            &mut scratch,
        );
        outs
    }

    /// Attention of query `i` in f64 over the case's f32 keys and values.
    fn exact(c: &Case, kvh: usize, i: usize, softcap: Option<f32>) -> Vec<f64> {
        let (first, end) = c.ranges[i];
        let q = &c.queries[i * c.hd..(i + 1) * c.hd];
        let scale = 1.0 / (c.hd as f64).sqrt();
        let row = |x: &[f32], j: usize| x[j * c.kv_dim + kvh * c.hd..][..c.hd].to_vec();
        let s: Vec<f64> = (first..end)
            .map(|j| {
                let k = row(&c.keys, j);
                let d: f64 = q.iter().zip(&k).map(|(&a, &b)| a as f64 * b as f64).sum();
                let v = d * scale;
                softcap.map_or(v, |cap| cap as f64 * (v / cap as f64).tanh())
            })
            .collect();
        let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = s.iter().map(|v| (v - max).exp()).collect();
        let sum: f64 = e.iter().sum();
        let mut out = vec![0.0f64; c.hd];
        for (j, p) in (first..end).zip(&e) {
            for (o, v) in out.iter_mut().zip(row(&c.values, j)) {
                *o += p / sum * v as f64;
            }
        }
        out
    }

    /// ‖a − b‖ / ‖b‖, with ‖b‖ checked to be far from zero.
    fn rel(a: &[f32], b: &[f64]) -> f64 {
        let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!(nb > 1e-2, "reference too close to zero: {nb}");
        let d: f64 = a
            .iter()
            .zip(b)
            .map(|(&x, &y)| (x as f64 - y).powi(2))
            .sum::<f64>()
            .sqrt();
        d / nb
    }

    const TYPES: [KvType; 4] = KvType::ALL;

    /// Every type pair against f64 attention over the unquantized values: the error is the
    /// storage's (f32 ~1e-6, f16 ~5e-4, q8_0 ~1e-2, q4_0 ~0.1 relative).
    #[test]
    fn each_type_matches_f32_attention_within_its_tolerance() {
        let tol = |t: KvType| -> f64 {
            match t {
                KvType::F32 => 2e-6,
                KvType::F16 => 2e-3,
                KvType::Q8_0 => 2e-2,
                KvType::Q4_0 => 0.2,
            }
        };
        let c = case(11, 64, 2, 70, 9);
        for kt in TYPES {
            for vt in TYPES {
                for softcap in [None, Some(3.0)] {
                    let which: Vec<usize> = (0..9).collect();
                    let got = run(&c, (kt, vt), 1, &which, softcap, attend);
                    for (i, g) in got.iter().enumerate() {
                        let e = rel(g, &exact(&c, 1, i, softcap));
                        let t = tol(kt).max(tol(vt));
                        assert!(e < t, "{kt}/{vt} query {i}: relative error {e} > {t}");
                    }
                }
            }
        }
    }

    /// The dispatched (SIMD) kernel against the scalar reference on the same stored cache.
    #[test]
    fn simd_matches_the_scalar_reference() {
        for (seed, hd, n_pos) in [(3, 64, 45), (5, 96, 33), (8, 256, 20)] {
            let c = case(seed, hd, 3, n_pos, 11);
            let which: Vec<usize> = (0..11).collect();
            for kt in TYPES {
                for vt in TYPES {
                    let got = run(&c, (kt, vt), 2, &which, Some(5.0), attend);
                    let want = run(&c, (kt, vt), 2, &which, Some(5.0), attend_reference);
                    for (g, w) in got.iter().zip(&want) {
                        let w: Vec<f64> = w.iter().map(|&x| x as f64).collect();
                        let e = rel(g, &w);
                        assert!(e < 1e-5, "{kt}/{vt} hd {hd}: relative error {e}");
                    }
                }
            }
        }
    }

    /// A query's output has the same bits alone and among others (different groups, other
    /// ranges): what makes a token's result independent of its batch.
    #[test]
    fn a_query_does_not_depend_on_its_company() {
        let c = case(21, 64, 2, 50, 12);
        for kt in TYPES {
            for vt in TYPES {
                let all: Vec<usize> = (0..12).collect();
                let together = run(&c, (kt, vt), 0, &all, None, attend);
                for i in [0, 5, 11] {
                    let alone = run(&c, (kt, vt), 0, &[i], None, attend);
                    assert_eq!(alone[0], together[i], "{kt}/{vt} query {i}");
                    let pair = run(&c, (kt, vt), 0, &[(i + 1) % 12, i], None, attend);
                    assert_eq!(pair[1], together[i], "{kt}/{vt} query {i} in a pair");
                }
            }
        }
    }

    /// Rows are written as ggml's reference quantizers write them, and read back exactly.
    #[test]
    fn stored_rows_hold_the_types_values() {
        let mut s = 99;
        let x = random(&mut s, 64);
        for ty in TYPES {
            let mut row = vec![0u8; ty.row_bytes(64)];
            store_row(ty, &x, &mut row);
            let want = quant::dequantize_to_vec(ty.ggml(), &row).unwrap();
            let mut got = vec![0.0f32; 40];
            load(ty, &row, 24, &mut got);
            assert_eq!(got, want[24..]);
        }
        let mut row = vec![0u8; 68];
        store_row(KvType::Q8_0, &x, &mut row);
        let b = BlockQ8_0::quantize_ref(&x[32..].try_into().unwrap());
        assert_eq!(&row[34..], bytemuck::bytes_of(&b));
        let mut row = vec![0u8; 36];
        store_row(KvType::Q4_0, &x, &mut row);
        let b = BlockQ4_0::quantize_ref(&x[..32].try_into().unwrap());
        assert_eq!(&row[..18], bytemuck::bytes_of(&b));
        let mut row = vec![0u8; 128];
        store_row(KvType::F16, &x, &mut row);
        assert_eq!(&row[..2], &half::f16::from_f32(x[0]).to_le_bytes());
    }
}
