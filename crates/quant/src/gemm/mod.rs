//! Int8 matrix × matrix for prompt-sized matmuls: weights unpacked to 8-bit levels with
//! scales per 16 and offsets per 32, activations quantized to 8 bits per 32, VNNI dot products.
//!
//! Both operands are laid out in *panels* of four rows (weights) or four tokens
//! (activations), interleaved per chunk of 64 elements, so the micro-kernel reads two
//! contiguous streams and computes a 4 × 4 block of outputs:
//!
//! - weight panel, per chunk ([`W_CHUNK`] bytes): 4 × 64 `u8` levels, 4 × 16 `f32` lane
//!   scales. Lane `l` covers elements `4l..4l + 4`. Weight `k` of a row is
//!   `s16[k / 16] × (q[k] − 2^shift) + b32[k / 32]`, with a per-type [`offset_shift`]
//!   (Q4_0's levels are 0..16 around 8, for instance; types with minimums have none). The
//!   biases `b32` (the minimums of Q4_1, Q5_1, Q4_K and Q5_K) are kept apart, see
//!   [`pack_weights`].
//! - activation panel, per chunk ([`A_CHUNK`] bytes): 4 × 64 `i8` levels, 4 × 16 `f32`
//!   lane scales (the scale of the lane's block of 32), 4 × 16 `i32` lane sums of levels.
//!
//! VNNI multiplies unsigned (weight) by signed (activation) bytes; each lane's integer sum
//! starts at `−2^shift × Σ a` (the lane sum, shifted), so it is exactly
//! `Σ (q_w − 2^shift) q_a`. Each lane's sum is then scaled (`w scale × a scale`) and added
//! in f32. A token's result for a row is the sum of its 16 lanes plus
//! `Σ_b b32[b] × d_b Σ q_a` over its blocks of 32.

use gguf::GgmlType;

use crate::formats::iq4_nl::IQ4_LEVELS;
use crate::formats::q4_k::unpack_scale_min;
use crate::formats::q6_k::q6_position;
use crate::formats::{
    cast_blocks, BlockIQ4_NL, BlockQ4_0, BlockQ4_1, BlockQ4_K, BlockQ5_0, BlockQ5_1, BlockQ5_K,
    BlockQ6_K, BlockQ8_0,
};
use crate::Isa;

#[cfg(target_arch = "x86_64")]
mod avx512;

/// Elements per chunk of a panel.
pub const CHUNK: usize = 64;
/// Bytes per chunk of a weight panel (4 rows).
pub const W_CHUNK: usize = 4 * (64 + 64);
/// Bytes per chunk of an activation panel (4 tokens).
pub const A_CHUNK: usize = 4 * (64 + 64 + 64);

/// Whether weights of type `ty` can be multiplied here.
pub fn supported(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(
        ty,
        Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | IQ4_NL | Q4_K | Q5_K | Q6_K
    )
}

/// Whether rows of `ty` have per-block offsets (minimums), which [`pack_weights`] returns
/// apart and the caller adds with [`add_bias`].
pub fn has_bias(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(ty, Q4_1 | Q5_1 | Q4_K | Q5_K)
}

/// The offset of the levels [`unpack_row`] gives for `ty`, as a power of two: a weight
/// is `scale × (q − 2^shift) + bias`; 0 means no offset (not `2^0`).
pub fn offset_shift(ty: GgmlType) -> u32 {
    use GgmlType::*;
    match ty {
        Q4_0 => 3,
        Q5_0 => 4,
        Q6_K => 5,
        Q8_0 | IQ4_NL => 7,
        _ => 0,
    }
}

/// The offset of [`offset_shift`] as a number.
fn offset(ty: GgmlType) -> i32 {
    match offset_shift(ty) {
        0 => 0,
        s => 1 << s,
    }
}

/// The best instruction set this module has a kernel for on this CPU, within
/// [`Isa::selected`]: `Some(Isa::Avx512)` (VNNI) or `None` (callers keep their f32 path;
/// the scalar kernel is the reference, for tests).
pub fn isa() -> Option<Isa> {
    (Isa::selected() >= Isa::Avx512).then_some(Isa::Avx512)
}

/// Bytes of a weight panel for rows of `cols` elements.
pub fn weight_panel_bytes(cols: usize) -> usize {
    cols / CHUNK * W_CHUNK
}

/// Bytes of an activation panel for rows of `cols` elements.
pub fn act_panel_bytes(cols: usize) -> usize {
    cols / CHUNK * A_CHUNK
}

/// Whether a row length is usable: whole chunks (and so whole blocks of 32).
pub fn cols_ok(ty: GgmlType, cols: usize) -> bool {
    cols > 0 && cols.is_multiple_of(CHUNK) && cols.is_multiple_of(ty.block_size() as usize)
}

/// Unpacks one row of `ty` (`row` holds exactly `cols` weights) to levels `q`, scales per
/// 16 and biases per 32 such that weight `k` = `s16[k / 16] × (q[k] − offset) + b32[k / 32]`
/// ([`offset_shift`]). Returns false (nothing meaningful written) for an unsupported type or
/// a row of the wrong size. `isa` None unpacks with scalar code only.
pub fn unpack_row(
    isa: Option<Isa>,
    ty: GgmlType,
    row: &[u8],
    q: &mut [u8],
    s16: &mut [f32],
    b32: &mut [f32],
) -> bool {
    let cols = q.len();
    if !supported(ty)
        || s16.len() != cols / 16
        || b32.len() != cols / 32
        || (ty.bytes_for(cols as u64) != Some(row.len() as u64))
    {
        return false;
    }
    // The levels of the most common types by SIMD; their scales below, by scalar code.
    #[cfg(target_arch = "x86_64")]
    let simd = isa.is_some()
        && self::isa().is_some()
        && matches!(
            ty,
            GgmlType::Q5_0 | GgmlType::Q8_0 | GgmlType::Q4_K | GgmlType::Q6_K
        );
    #[cfg(not(target_arch = "x86_64"))]
    let simd = false;
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: the CPU has AVX-512 F/BW/VL and VNNI (`isa()`); `row` holds exactly the
        // blocks of `q.len()` levels (checked above).
        unsafe { avx512::unpack_levels(ty, row, q) };
    }
    let _ = isa;
    match ty {
        GgmlType::Q4_0 => each::<BlockQ4_0, 32>(row, q, s16, b32, |b, q, s, o| {
            let d = b.d.to_f32();
            for (j, &x) in b.qs.iter().enumerate() {
                q[j] = x & 0x0F;
                q[j + 16] = x >> 4;
            }
            s.fill(d);
            o[0] = 0.0;
        }),
        GgmlType::Q4_1 => each::<BlockQ4_1, 32>(row, q, s16, b32, |b, q, s, o| {
            for (j, &x) in b.qs.iter().enumerate() {
                q[j] = x & 0x0F;
                q[j + 16] = x >> 4;
            }
            s.fill(b.d.to_f32());
            o[0] = b.m.to_f32();
        }),
        GgmlType::Q5_0 => each::<BlockQ5_0, 32>(row, q, s16, b32, |b, q, s, o| {
            if !simd {
                q.copy_from_slice(&crate::formats::q5_0::unpack5(b.qh, &b.qs));
            }
            s.fill(b.d.to_f32());
            o[0] = 0.0;
        }),
        GgmlType::Q5_1 => each::<BlockQ5_1, 32>(row, q, s16, b32, |b, q, s, o| {
            q.copy_from_slice(&crate::formats::q5_0::unpack5(b.qh, &b.qs));
            s.fill(b.d.to_f32());
            o[0] = b.m.to_f32();
        }),
        GgmlType::Q8_0 => each::<BlockQ8_0, 32>(row, q, s16, b32, |b, q, s, o| {
            if !simd {
                for (q, &v) in q.iter_mut().zip(&b.qs) {
                    *q = (v as i32 + 128) as u8;
                }
            }
            s.fill(b.d.to_f32());
            o[0] = 0.0;
        }),
        GgmlType::IQ4_NL => each::<BlockIQ4_NL, 32>(row, q, s16, b32, |b, q, s, o| {
            for (j, &x) in b.qs.iter().enumerate() {
                q[j] = (IQ4_LEVELS[(x & 0x0F) as usize] as i32 + 128) as u8;
                q[j + 16] = (IQ4_LEVELS[(x >> 4) as usize] as i32 + 128) as u8;
            }
            s.fill(b.d.to_f32());
            o[0] = 0.0;
        }),
        GgmlType::Q4_K => each::<BlockQ4_K, 256>(row, q, s16, b32, |b, q, s, o| {
            let (d, dmin) = (b.d.to_f32(), b.dmin.to_f32());
            if !simd {
                for (c, qs) in b.qs.chunks_exact(32).enumerate() {
                    for (l, &x) in qs.iter().enumerate() {
                        q[64 * c + l] = x & 0x0F;
                        q[64 * c + 32 + l] = x >> 4;
                    }
                }
            }
            for j in 0..8 {
                let (sc, m) = unpack_scale_min(j, &b.scales);
                s[2 * j..2 * j + 2].fill(d * sc as f32);
                o[j] = -(dmin * m as f32);
            }
        }),
        GgmlType::Q5_K => each::<BlockQ5_K, 256>(row, q, s16, b32, |b, q, s, o| {
            let (d, dmin) = (b.d.to_f32(), b.dmin.to_f32());
            for (c, qs) in b.qs.chunks_exact(32).enumerate() {
                let (bit1, bit2) = (1u8 << (2 * c), 2u8 << (2 * c));
                for (l, (&x, &h)) in qs.iter().zip(&b.qh).enumerate() {
                    q[64 * c + l] = (x & 0x0F) + if h & bit1 != 0 { 16 } else { 0 };
                    q[64 * c + 32 + l] = (x >> 4) + if h & bit2 != 0 { 16 } else { 0 };
                }
            }
            for j in 0..8 {
                let (sc, m) = unpack_scale_min(j, &b.scales);
                s[2 * j..2 * j + 2].fill(d * sc as f32);
                o[j] = -(dmin * m as f32);
            }
        }),
        GgmlType::Q6_K => each::<BlockQ6_K, 256>(row, q, s16, b32, |b, q, s, o| {
            let d = b.d.to_f32();
            if !simd {
                for (i, q) in q.iter_mut().enumerate() {
                    let (lb, ls, hb, hs) = q6_position(i);
                    *q = ((b.ql[lb] >> ls) & 0x0F) | (((b.qh[hb] >> hs) & 3) << 4);
                }
            }
            for (s, &sc) in s.iter_mut().zip(&b.scales) {
                *s = d * sc as f32;
            }
            o.fill(0.0);
        }),
        _ => return false,
    }
    true
}

/// Runs `f(block, levels, scales per 16, biases per 32)` over the blocks of a row.
fn each<B: crate::Block, const N: usize>(
    row: &[u8],
    q: &mut [u8],
    s16: &mut [f32],
    b32: &mut [f32],
    f: impl Fn(&B, &mut [u8], &mut [f32], &mut [f32]),
) {
    let Some(blocks) = cast_blocks::<B>(row) else {
        return;
    };
    for (((b, q), s), o) in blocks
        .iter()
        .zip(q.chunks_exact_mut(N))
        .zip(s16.chunks_exact_mut(N / 16))
        .zip(b32.chunks_exact_mut(N / 32))
    {
        f(b, q, s, o);
    }
}

/// Packs up to four weight rows of `ty` (each exactly `cols` weights) into `panel`
/// ([`weight_panel_bytes`]); missing rows are zeros. The rows' biases per 32 go to
/// `bias` (4 × `cols / 32`, row-major; zeros for types without). `q` (`cols` levels) and
/// `s16` (`cols / 16` scales) are scratch. Returns false when the type or a size is not
/// supported (the panel is then unusable). `isa` None packs with scalar code only.
#[allow(clippy::too_many_arguments)]
pub fn pack_weights(
    isa: Option<Isa>,
    ty: GgmlType,
    rows: &[&[u8]],
    cols: usize,
    q: &mut [u8],
    s16: &mut [f32],
    panel: &mut [u8],
    bias: &mut [f32],
) -> bool {
    if rows.len() > 4
        || !cols_ok(ty, cols)
        || panel.len() < weight_panel_bytes(cols)
        || bias.len() < 4 * (cols / 32)
        || q.len() < cols
        || s16.len() < cols / 16
    {
        return false;
    }
    let nb = cols / 32;
    let (q, s16) = (&mut q[..cols], &mut s16[..cols / 16]);
    for r in 0..4 {
        let b32 = &mut bias[r * nb..(r + 1) * nb];
        match rows.get(r) {
            Some(row) => {
                if !unpack_row(isa, ty, row, &mut *q, &mut *s16, b32) {
                    return false;
                }
            }
            None => {
                q.fill(0);
                s16.fill(0.0);
                b32.fill(0.0);
            }
        }
        interleave(isa, q, s16, r, panel);
    }
    true
}

/// Writes row `r` of a weight panel from its unpacked levels and scales per 16.
fn interleave(isa: Option<Isa>, q: &[u8], s16: &[f32], r: usize, panel: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if isa.is_some() && self::isa().is_some() {
        // SAFETY: the CPU has AVX-512 F/BW/VL and VNNI (`isa()`); the caller checked that
        // `panel` holds `q.len() / CHUNK` chunks and `s16` a scale per 16 levels.
        unsafe { avx512::interleave(q, s16, r, panel) };
        return;
    }
    let _ = isa;
    for (c, chunk) in panel
        .chunks_exact_mut(W_CHUNK)
        .take(q.len() / CHUNK)
        .enumerate()
    {
        chunk[r * 64..(r + 1) * 64].copy_from_slice(&q[c * CHUNK..(c + 1) * CHUNK]);
        for l in 0..16 {
            let o = 256 + r * 64 + 4 * l;
            chunk[o..o + 4].copy_from_slice(&s16[c * 4 + l / 4].to_le_bytes());
        }
    }
}

/// Packs up to four activation rows (each at least `cols` values; the slots of missing
/// ones are left as they are, [`kernel`] reads only `rows.len()` tokens) into `panel` ([`act_panel_bytes`]), quantized to 8 bits per block of 32 (scale
/// `max |x| / 127`, round half to even), with the sums of levels per lane. Writes each block's `d × Σ q` to `sums`
/// (4 × `cols / 32`, row-major), for [`add_bias`].
pub fn pack_acts(rows: &[&[f32]], cols: usize, panel: &mut [u8], sums: &mut [f32]) {
    assert!(rows.len() <= 4 && cols.is_multiple_of(CHUNK));
    assert!(panel.len() >= act_panel_bytes(cols) && sums.len() >= 4 * (cols / 32));
    #[cfg(target_arch = "x86_64")]
    if isa().is_some() {
        // SAFETY: `isa()` is Some only when the CPU has AVX-512 F/BW/VL and VNNI; the
        // lengths were asserted above.
        unsafe { avx512::pack_acts(rows, cols, panel, sums) };
        return;
    }
    pack_acts_scalar(rows, cols, panel, sums);
}

/// The reference of [`pack_acts`].
pub fn pack_acts_scalar(rows: &[&[f32]], cols: usize, panel: &mut [u8], sums: &mut [f32]) {
    let nb = cols / 32;
    for (t, row) in rows.iter().enumerate() {
        let row = Some(&row[..cols]);
        for b in 0..nb {
            let x = row.map(|r| &r[32 * b..32 * b + 32]);
            let amax = x.map_or(0.0, |x| x.iter().fold(0.0f32, |m, v| m.max(v.abs())));
            let d = amax / 127.0;
            let id = if d > 0.0 { 1.0 / d } else { 0.0 };
            let chunk = &mut panel[(b / 2) * A_CHUNK..(b / 2 + 1) * A_CHUNK];
            let half = (b % 2) * 32;
            let mut sum = 0i32;
            let mut lane = [0i32; 8];
            for k in 0..32 {
                let v = x.map_or(0.0, |x| x[k]);
                let q = (v * id).round_ties_even().clamp(-127.0, 127.0) as i32;
                sum += q;
                lane[k / 4] += q;
                chunk[t * 64 + half + k] = q as i8 as u8;
            }
            for (l, &ls) in lane.iter().enumerate() {
                let o = t * 64 + half + 4 * l;
                chunk[256 + o..256 + o + 4].copy_from_slice(&d.to_le_bytes());
                chunk[512 + o..512 + o + 4].copy_from_slice(&ls.to_le_bytes());
            }
            sums[t * nb + b] = d * sum as f32;
        }
    }
}

/// The products `out[r][t]` of a panel of weights of `ty` and the first `nt` (1..=4)
/// tokens of an activation panel, `chunks` chunks each, with `isa` (None: the scalar
/// reference); `out[r][nt..]` is left as it is. `bias`, for types with minimums
/// ([`has_bias`]): the weight panel's biases and the activation panel's block sums,
/// `4 × nb` each (`nb` = 2 × chunks), as [`pack_weights`] and [`pack_acts`] wrote them.
///
/// A token's results do not depend on `nt` or on the panel's other tokens: bit for bit
/// the same whatever else is multiplied with it.
#[allow(clippy::too_many_arguments)]
pub fn kernel(
    isa: Option<Isa>,
    ty: GgmlType,
    nt: usize,
    chunks: usize,
    w: &[u8],
    a: &[u8],
    bias: Option<(&[f32], &[f32])>,
    out: &mut [[f32; 4]; 4],
) {
    assert!(w.len() >= chunks * W_CHUNK && a.len() >= chunks * A_CHUNK);
    assert!(
        (1..=4).contains(&nt),
        "a panel holds 1 to 4 tokens, not {nt}"
    );
    let nb = 2 * chunks;
    if let Some((b, s)) = bias {
        assert!(b.len() >= 4 * nb && s.len() >= 4 * nb);
    }
    #[cfg(target_arch = "x86_64")]
    if isa.is_some() && self::isa().is_some() {
        // SAFETY: the CPU has AVX-512 F/BW/VL and VNNI (`self::isa()`); the panel lengths
        // were asserted above.
        unsafe {
            macro_rules! by_tokens {
                ($shift:literal) => {
                    match nt {
                        1 => avx512::kernel::<$shift, 1>(chunks, w, a, bias, out),
                        2 => avx512::kernel::<$shift, 2>(chunks, w, a, bias, out),
                        3 => avx512::kernel::<$shift, 3>(chunks, w, a, bias, out),
                        _ => avx512::kernel::<$shift, 4>(chunks, w, a, bias, out),
                    }
                };
            }
            match offset_shift(ty) {
                0 => by_tokens!(0),
                3 => by_tokens!(3),
                4 => by_tokens!(4),
                5 => by_tokens!(5),
                _ => by_tokens!(7),
            }
        }
        return;
    }
    let _ = isa;
    let mut full = [[0.0f32; 4]; 4];
    kernel_scalar(offset(ty), nt, chunks, w, a, &mut full);
    if let Some((b, s)) = bias {
        for (r, o) in full.iter_mut().enumerate() {
            add_bias(nt, &b[r * nb..(r + 1) * nb], &s[..4 * nb], o);
        }
    }
    for (o, f) in out.iter_mut().zip(&full) {
        o[..nt].copy_from_slice(&f[..nt]);
    }
}

/// The reference of [`kernel`]: per lane, the exact integer sum, scaled and accumulated in
/// f32 in chunk order; then the 16 lanes summed.
fn kernel_scalar(off: i32, nt: usize, chunks: usize, w: &[u8], a: &[u8], out: &mut [[f32; 4]; 4]) {
    let f = |b: &[u8], o: usize| f32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let i = |b: &[u8], o: usize| i32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let mut acc = [[[0.0f32; 16]; 4]; 4];
    for c in 0..chunks {
        let wc = &w[c * W_CHUNK..(c + 1) * W_CHUNK];
        let ac = &a[c * A_CHUNK..(c + 1) * A_CHUNK];
        for (r, acc) in acc.iter_mut().enumerate() {
            for (t, acc) in acc.iter_mut().enumerate().take(nt) {
                for (l, acc) in acc.iter_mut().enumerate() {
                    let mut s = -off * i(ac, 512 + t * 64 + 4 * l);
                    for k in 0..4 {
                        let wq = wc[r * 64 + 4 * l + k] as i32;
                        s += wq * ac[t * 64 + 4 * l + k] as i8 as i32;
                    }
                    let scale = f(wc, 256 + r * 64 + 4 * l) * f(ac, 256 + t * 64 + 4 * l);
                    *acc += s as f32 * scale;
                }
            }
        }
    }
    for (o, acc) in out.iter_mut().zip(&acc) {
        for (o, acc) in o.iter_mut().zip(acc) {
            *o = acc.iter().sum();
        }
    }
}

/// `out[t] += Σ_b bias[b] × sums[t][b]` for the tokens of a panel: the minimums' share
/// of one row (`bias` has `nb` values; `sums` is the panel's `4 × nb`).
fn add_bias(nt: usize, bias: &[f32], sums: &[f32], out: &mut [f32; 4]) {
    let nb = bias.len();
    for (t, o) in out.iter_mut().enumerate().take(nt) {
        let s = &sums[t * nb..(t + 1) * nb];
        // Eight partial sums, so the loop vectorizes.
        let mut acc = [0.0f32; 8];
        let (bc, br) = bias.as_chunks::<8>();
        let (sc, sr) = s.as_chunks::<8>();
        for (b, s) in bc.iter().zip(sc) {
            for k in 0..8 {
                acc[k] += b[k] * s[k];
            }
        }
        let tail: f32 = br.iter().zip(sr).map(|(b, s)| b * s).sum();
        *o += acc.iter().sum::<f32>() + tail;
    }
}
