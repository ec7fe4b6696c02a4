//! Weights repacked sixteen rows at a time for int8 products with one kernel for every batch
//! size (AVX-512 VNNI), so a token's result is the same bits whatever else shares its batch.
//!
//! A repacked matrix is a sequence of *groups* of 16 rows (the last one padded with zero
//! rows), each a sequence of *block groups*, one per block of 32 columns, holding that block
//! of all 16 rows:
//!
//! - `d`: the 16 rows' f16 scales (32 bytes); for Q4_1 and Q5_1 then `m`, their f16
//!   minimums (32 bytes);
//! - for Q5_0 and Q5_1, the fifth bits as eight 64-bit masks (64 bytes), see below;
//! - the levels. Q4/Q5: four 64-byte vectors; in vector `j`, the 32-bit lane `r` (row `r`)
//!   holds four bytes `i = 0..4`, each with the level of column `8j + i` in its low nibble
//!   and that of column `8j + 4 + i` in its high nibble. Q8_0: eight 64-byte vectors; in
//!   vector `j`, lane `r` holds the levels of columns `4j..4j + 4` plus 128, as bytes.
//! - Fifth bits: for vector `j`, a mask whose bit `4r + i` is bit 4 of the level of column
//!   `8j + i` of row `r`, then one for column `8j + 4 + i`.
//!
//! K-quants keep their super-blocks of 256 columns: Q4_K's 16 f16 `d` and `dmin` lead each
//! super-block group, then each block group is the rows' 6-bit scales and minimums (16 + 16
//! bytes) and the nibble vectors. Q6_K's 16 f16 `d` lead, then each block group holds the
//! rows' i8 scales of its two halves of 16 (16 + 16 bytes), the nibble vectors of the low
//! four bits, and two 64-byte planes of the top two bits: vector `j`'s low (high) half is
//! element `e = 2j` (`2j + 1`), in plane `e / 4` at bit `2 (e % 4)` of byte `4r + i`.
//!
//! So a lane's unpacked vector meets one 4-byte word of a token's block of levels, and a
//! VNNI instruction does 16 rows × 4 columns. A token's activations are quantized to 8 bits
//! per block of 32 as ggml does for Q8_0 ([`quantize_act`]); for each block, a row's integer
//! sum `Σ q_w q_a − offset × Σ q_a` is exact, then it is scaled and added in f32 in block
//! order with one fused multiply-add: `acc = fma(isum, d_w × d_a, acc)` (and, with minimums,
//! `acc = fma(m_w, d_a Σ q_a, acc)`). Q4_K's block scale is `d × sc` and its minimum
//! `−dmin × m` (both exact in f32); Q6_K's integer sum is `sc_lo isum_lo + sc_hi isum_hi`
//! over its two halves, scaled by `d`. [`kernel_scalar`] does exactly those operations, so the
//! SIMD kernel's results equal it bit for bit.

use gguf::GgmlType;

use crate::formats::q4_k::{pack_scale_min, unpack_scale_min};
use crate::formats::q6_k::q6_position;
use crate::formats::{Q4_0_BYTES, Q4_1_BYTES, Q5_0_BYTES, Q5_1_BYTES};
use crate::Isa;

#[cfg(target_arch = "x86_64")]
mod avx512;

/// Rows per group.
pub const ROWS: usize = 16;
/// Tokens one [`kernel`] call takes at most.
pub const MAX_TOKENS: usize = 8;

/// Whether weights of type `ty` can be repacked.
pub fn supported(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(ty, Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q4_K | Q6_K)
}

/// Whether rows of `cols` values of `ty` can be repacked: a supported type, whole blocks.
pub fn cols_ok(ty: GgmlType, cols: usize) -> bool {
    supported(ty) && cols > 0 && cols.is_multiple_of(span(ty))
}

/// The instruction set of the fast kernel on this CPU (`Some(Isa::Avx512)` with VNNI), or
/// `None`: then repacking does not pay and callers keep the rows as they are.
pub fn isa() -> Option<Isa> {
    (Isa::selected() >= Isa::Avx512).then_some(Isa::Avx512)
}

/// Whether `ty` is a K-quant (super-blocks of 256).
fn is_k(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q4_K | GgmlType::Q6_K)
}

/// Columns of one block of `ty` in the GGUF layout.
fn span(ty: GgmlType) -> usize {
    if is_k(ty) {
        256
    } else {
        32
    }
}

/// Whether `ty` has per-block minimums (`m`) in f16.
fn has_min(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q4_1 | GgmlType::Q5_1)
}

/// Whether `ty` has fifth bits.
fn has_fifth(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q5_0 | GgmlType::Q5_1)
}

/// The offset subtracted from the stored levels: a weight is `d × (level − offset)` (plus
/// the minimum for the types with one).
fn offset(ty: GgmlType) -> i32 {
    match ty {
        GgmlType::Q4_0 => 8,
        GgmlType::Q5_0 => 16,
        GgmlType::Q6_K => 32,
        GgmlType::Q8_0 => 128,
        _ => 0,
    }
}

/// Bytes of one block group (16 rows × 32 columns) of `ty`, without a K-quant's header.
fn block_group_bytes(ty: GgmlType) -> usize {
    match ty {
        GgmlType::Q4_K => 32 + 256,
        GgmlType::Q6_K => 32 + 256 + 128,
        GgmlType::Q8_0 => 32 + 512,
        _ => 32 + if has_min(ty) { 32 } else { 0 } + if has_fifth(ty) { 64 } else { 0 } + 256,
    }
}

/// Bytes of a K-quant's super-block header (16 rows' f16 `d`, and `dmin` for Q4_K).
fn header_bytes(ty: GgmlType) -> usize {
    match ty {
        GgmlType::Q4_K => 64,
        GgmlType::Q6_K => 32,
        _ => 0,
    }
}

/// Offsets of block `b`'s group inside a group of rows, and of its super-block header.
fn block_at(ty: GgmlType, b: usize) -> (usize, usize) {
    let bg = block_group_bytes(ty);
    if is_k(ty) {
        let sup = header_bytes(ty) + 8 * bg;
        let h = (b / 8) * sup;
        (h + header_bytes(ty) + (b % 8) * bg, h)
    } else {
        (b * bg, 0)
    }
}

/// Offsets inside a block group: (m or the K-quants' scales, fifth-bit masks, levels).
fn layout(ty: GgmlType) -> (usize, usize, usize) {
    if is_k(ty) {
        return (0, 0, 32);
    }
    let m = 32;
    let masks = m + if has_min(ty) { 32 } else { 0 };
    let levels = masks + if has_fifth(ty) { 64 } else { 0 };
    (m, masks, levels)
}

/// Bytes of one group of 16 rows of `cols` columns.
pub fn group_bytes(ty: GgmlType, cols: usize) -> usize {
    cols / 32 * block_group_bytes(ty) + cols / 256 * header_bytes(ty)
}

/// Bytes of a repacked `rows` × `cols` matrix of `ty`.
pub fn packed_bytes(ty: GgmlType, rows: usize, cols: usize) -> usize {
    rows.div_ceil(ROWS) * group_bytes(ty, cols)
}

/// One row's block of 32, decoded: unsigned levels (with the offset) and its scales as
/// stored (f16 bits; a K-quant's super-block `d`/`dmin` and its 6-bit or i8 sub-scales).
#[derive(Clone, Copy, Default)]
struct Piece {
    q: [u8; 32],
    d: u16,
    m: u16,
    sc: [u8; 2],
}

/// The pieces of one GGUF block of `ty` (1 for blocks of 32, 8 for K-quants).
fn decode(ty: GgmlType, b: &[u8], out: &mut [Piece; 8]) {
    let h = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let p = &mut out[0];
    let nibbles = |qs: &[u8], q: &mut [u8; 32]| {
        for k in 0..16 {
            q[k] = qs[k] & 0x0F;
            q[k + 16] = qs[k] >> 4;
        }
    };
    let fifth = |qh: u32, q: &mut [u8; 32]| {
        for (k, v) in q.iter_mut().enumerate() {
            *v |= (((qh >> k) & 1) as u8) << 4;
        }
    };
    let qh = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    match ty {
        GgmlType::Q4_0 => {
            nibbles(&b[2..Q4_0_BYTES], &mut p.q);
            p.d = h(0);
        }
        GgmlType::Q4_1 => {
            nibbles(&b[4..Q4_1_BYTES], &mut p.q);
            (p.d, p.m) = (h(0), h(2));
        }
        GgmlType::Q5_0 => {
            nibbles(&b[6..Q5_0_BYTES], &mut p.q);
            fifth(qh(2), &mut p.q);
            p.d = h(0);
        }
        GgmlType::Q5_1 => {
            nibbles(&b[8..Q5_1_BYTES], &mut p.q);
            fifth(qh(4), &mut p.q);
            (p.d, p.m) = (h(0), h(2));
        }
        GgmlType::Q8_0 => {
            for (k, v) in p.q.iter_mut().enumerate() {
                *v = (b[2 + k] as i8 as i32 + 128) as u8;
            }
            p.d = h(0);
        }
        GgmlType::Q4_K => {
            let scales: &[u8; 12] = b[4..16].try_into().unwrap();
            for (j, p) in out.iter_mut().enumerate() {
                let (sc, m) = unpack_scale_min(j, scales);
                (p.d, p.m, p.sc) = (h(0), h(2), [sc, m]);
                let qs = &b[16 + 32 * (j / 2)..16 + 32 * (j / 2) + 32];
                for (k, v) in p.q.iter_mut().enumerate() {
                    *v = if j % 2 == 0 { qs[k] & 0x0F } else { qs[k] >> 4 };
                }
            }
        }
        _ => {
            // Q6_K: ql at 0, qh at 128, scales at 192, d at 208.
            for (j, p) in out.iter_mut().enumerate() {
                (p.d, p.sc) = (h(208), [b[192 + 2 * j], b[193 + 2 * j]]);
                for (k, v) in p.q.iter_mut().enumerate() {
                    let (lb, ls, hb, hs) = q6_position(32 * j + k);
                    *v = ((b[lb] >> ls) & 0x0F) | (((b[128 + hb] >> hs) & 3) << 4);
                }
            }
        }
    }
}

/// The inverse of [`decode`]: one GGUF block of `ty` from its pieces.
fn encode(ty: GgmlType, pieces: &[Piece; 8], out: &mut [u8]) {
    let p = &pieces[0];
    let (q, d, m) = (&p.q, p.d, p.m);
    let nibbles = |out: &mut [u8]| {
        for k in 0..16 {
            out[k] = (q[k] & 0x0F) | (q[k + 16] & 0x0F) << 4;
        }
    };
    let qh = || (0..32).fold(0u32, |a, k| a | (u32::from(q[k] >> 4 & 1) << k));
    match ty {
        GgmlType::Q4_0 => {
            out[0..2].copy_from_slice(&d.to_le_bytes());
            nibbles(&mut out[2..Q4_0_BYTES]);
        }
        GgmlType::Q4_1 => {
            out[0..2].copy_from_slice(&d.to_le_bytes());
            out[2..4].copy_from_slice(&m.to_le_bytes());
            nibbles(&mut out[4..Q4_1_BYTES]);
        }
        GgmlType::Q5_0 => {
            out[0..2].copy_from_slice(&d.to_le_bytes());
            out[2..6].copy_from_slice(&qh().to_le_bytes());
            nibbles(&mut out[6..Q5_0_BYTES]);
        }
        GgmlType::Q5_1 => {
            out[0..2].copy_from_slice(&d.to_le_bytes());
            out[2..4].copy_from_slice(&m.to_le_bytes());
            out[4..8].copy_from_slice(&qh().to_le_bytes());
            nibbles(&mut out[8..Q5_1_BYTES]);
        }
        GgmlType::Q8_0 => {
            out[0..2].copy_from_slice(&d.to_le_bytes());
            for k in 0..32 {
                out[2 + k] = (i32::from(q[k]) - 128) as i8 as u8;
            }
        }
        GgmlType::Q4_K => {
            out[0..2].copy_from_slice(&d.to_le_bytes());
            out[2..4].copy_from_slice(&m.to_le_bytes());
            let sc: [u8; 8] = std::array::from_fn(|j| pieces[j].sc[0]);
            let mn: [u8; 8] = std::array::from_fn(|j| pieces[j].sc[1]);
            out[4..16].copy_from_slice(&pack_scale_min(&sc, &mn));
            for j in (0..8).step_by(2) {
                for k in 0..32 {
                    out[16 + 16 * j + k] =
                        (pieces[j].q[k] & 0x0F) | (pieces[j + 1].q[k] & 0x0F) << 4;
                }
            }
        }
        _ => {
            out[..208].fill(0);
            for (j, p) in pieces.iter().enumerate() {
                out[192 + 2 * j] = p.sc[0];
                out[193 + 2 * j] = p.sc[1];
                for (k, &v) in p.q.iter().enumerate() {
                    let (lb, ls, hb, hs) = q6_position(32 * j + k);
                    out[lb] |= (v & 0x0F) << ls;
                    out[128 + hb] |= (v >> 4 & 3) << hs;
                }
            }
            out[208..210].copy_from_slice(&d.to_le_bytes());
        }
    }
}

/// Row `lane`'s piece of block `b` of a group (the inverse of [`put_block`]).
fn get(ty: GgmlType, group: &[u8], lane: usize, b: usize) -> Piece {
    let (at, h) = block_at(ty, b);
    let (mo, ko, lo) = layout(ty);
    let half = |at: usize| u16::from_le_bytes([group[at], group[at + 1]]);
    let mut p = Piece::default();
    match ty {
        GgmlType::Q4_K => {
            (p.d, p.m) = (half(h + 2 * lane), half(h + 32 + 2 * lane));
            p.sc = [group[at + lane], group[at + 16 + lane]];
        }
        GgmlType::Q6_K => {
            p.d = half(h + 2 * lane);
            p.sc = [group[at + lane], group[at + 16 + lane]];
        }
        _ => {
            p.d = half(at + 2 * lane);
            if has_min(ty) {
                p.m = half(at + mo + 2 * lane);
            }
        }
    }
    let o = &group[at..at + block_group_bytes(ty)];
    if ty == GgmlType::Q8_0 {
        for (k, v) in p.q.iter_mut().enumerate() {
            *v = o[lo + (k / 4) * 64 + 4 * lane + k % 4];
        }
        return p;
    }
    for j in 0..4 {
        for i in 0..4 {
            let byte = 4 * lane + i;
            let packed = o[lo + j * 64 + byte];
            let mut a = packed & 0x0F;
            let mut c = packed >> 4;
            if has_fifth(ty) {
                a |= (o[ko + 16 * j + byte / 8] >> (byte % 8) & 1) << 4;
                c |= (o[ko + 16 * j + 8 + byte / 8] >> (byte % 8) & 1) << 4;
            }
            if ty == GgmlType::Q6_K {
                let hi = |e: usize| (o[lo + 256 + (e / 4) * 64 + byte] >> (2 * (e % 4)) & 3) << 4;
                a |= hi(2 * j);
                c |= hi(2 * j + 1);
            }
            p.q[8 * j + i] = a;
            p.q[8 * j + 4 + i] = c;
        }
    }
    p
}

/// Writes block `b` of a group from the 16 rows' pieces (rows past `p.len()` stay zero),
/// in one pass over the block group's bytes.
fn put_block(ty: GgmlType, group: &mut [u8], b: usize, p: &[Piece]) {
    let (at, h) = block_at(ty, b);
    let (mo, ko, lo) = layout(ty);
    let put_halfs = |o: &mut [u8], f: &dyn Fn(&Piece) -> u16| {
        for (lane, p) in p.iter().enumerate() {
            o[2 * lane..2 * lane + 2].copy_from_slice(&f(p).to_le_bytes());
        }
    };
    if is_k(ty) {
        if b.is_multiple_of(8) {
            put_halfs(&mut group[h..h + 32], &|p| p.d);
            if ty == GgmlType::Q4_K {
                put_halfs(&mut group[h + 32..h + 64], &|p| p.m);
            }
        }
        for (lane, p) in p.iter().enumerate() {
            group[at + lane] = p.sc[0];
            group[at + 16 + lane] = p.sc[1];
        }
    } else {
        put_halfs(&mut group[at..at + 32], &|p| p.d);
        if has_min(ty) {
            put_halfs(&mut group[at + mo..at + mo + 32], &|p| p.m);
        }
    }
    let o = &mut group[at..at + block_group_bytes(ty)];
    if ty == GgmlType::Q8_0 {
        for j in 0..8 {
            for (lane, p) in p.iter().enumerate() {
                let d = lo + 64 * j + 4 * lane;
                o[d..d + 4].copy_from_slice(&p.q[4 * j..4 * j + 4]);
            }
        }
        return;
    }
    for j in 0..4 {
        for (lane, p) in p.iter().enumerate() {
            let mut lo_bits = 0u8;
            let mut hi_bits = 0u8;
            for i in 0..4 {
                let (a, c) = (p.q[8 * j + i], p.q[8 * j + 4 + i]);
                o[lo + j * 64 + 4 * lane + i] = (a & 0x0F) | (c & 0x0F) << 4;
                lo_bits |= (a >> 4 & 1) << i;
                hi_bits |= (c >> 4 & 1) << i;
                if ty == GgmlType::Q6_K {
                    for (e, v) in [(2 * j, a), (2 * j + 1, c)] {
                        o[lo + 256 + (e / 4) * 64 + 4 * lane + i] |= (v >> 4 & 3) << (2 * (e % 4));
                    }
                }
            }
            if has_fifth(ty) {
                // Bits 4·lane .. 4·lane + 4 of the two masks.
                let (byte, sh) = (lane / 2, 4 * (lane % 2));
                o[ko + 16 * j + byte] |= lo_bits << sh;
                o[ko + 16 * j + 8 + byte] |= hi_bits << sh;
            }
        }
    }
}

/// Repacks one group: `rows` (1 to 16 rows of `cols` values of `ty` in GGUF layout) into
/// `group` ([`group_bytes`] long, zeroed). False when a size disagrees.
pub fn pack_group(ty: GgmlType, cols: usize, rows: &[&[u8]], group: &mut [u8]) -> bool {
    let Some(row_bytes) = ty.bytes_for(cols as u64).map(|b| b as usize) else {
        return false;
    };
    if !cols_ok(ty, cols)
        || rows.is_empty()
        || rows.len() > ROWS
        || rows.iter().any(|r| r.len() != row_bytes)
        || group.len() != group_bytes(ty, cols)
    {
        return false;
    }
    let (bb, per) = (ty.type_size() as usize, span(ty) / 32);
    let mut pieces = [[Piece::default(); 8]; ROWS];
    let mut block = [Piece::default(); ROWS];
    for i in 0..cols / span(ty) {
        for (r, row) in rows.iter().enumerate() {
            decode(ty, &row[i * bb..(i + 1) * bb], &mut pieces[r]);
        }
        for j in 0..per {
            for (p, row) in block.iter_mut().zip(&pieces[..rows.len()]) {
                *p = row[j];
            }
            put_block(ty, group, i * per + j, &block[..rows.len()]);
        }
    }
    true
}

/// Repacks `src`, `rows` rows of `cols` values of `ty` in GGUF layout, into `dst`
/// ([`packed_bytes`] long). False (nothing meaningful written) when the type or the row
/// length is not supported ([`cols_ok`]) or a size disagrees.
pub fn pack(ty: GgmlType, rows: usize, cols: usize, src: &[u8], dst: &mut [u8]) -> bool {
    let Some(row_bytes) = ty.bytes_for(cols as u64).map(|b| b as usize) else {
        return false;
    };
    if !cols_ok(ty, cols)
        || src.len() != rows * row_bytes
        || dst.len() != packed_bytes(ty, rows, cols)
    {
        return false;
    }
    dst.fill(0);
    let gb = group_bytes(ty, cols);
    for (g, group) in dst.chunks_exact_mut(gb).enumerate() {
        let r0 = g * ROWS;
        let n = ROWS.min(rows - r0);
        let rs: [&[u8]; ROWS] =
            std::array::from_fn(|j| &src[(r0 + j.min(n - 1)) * row_bytes..][..row_bytes]);
        if !pack_group(ty, cols, &rs[..n], group) {
            return false;
        }
    }
    true
}

/// Row `r` of a repacked matrix in its GGUF layout (`out` is `ty.bytes_for(cols)` bytes);
/// false when a size disagrees.
pub fn unpack_row(ty: GgmlType, cols: usize, packed: &[u8], r: usize, out: &mut [u8]) -> bool {
    let (gb, bb, per) = (
        group_bytes(ty, cols),
        ty.type_size() as usize,
        span(ty) / 32,
    );
    let g = r / ROWS;
    if !cols_ok(ty, cols) || out.len() != cols / span(ty) * bb || packed.len() < (g + 1) * gb {
        return false;
    }
    let group = &packed[g * gb..(g + 1) * gb];
    let mut pieces = [Piece::default(); 8];
    for (i, blk) in out.chunks_exact_mut(bb).enumerate() {
        for (j, p) in pieces[..per].iter_mut().enumerate() {
            *p = get(ty, group, r % ROWS, i * per + j);
        }
        encode(ty, &pieces, blk);
    }
    true
}

/// Row `r` of a repacked matrix dequantized into `out` (`cols` values), as
/// [`crate::dequantize`] gives it from the GGUF layout; false when a size disagrees.
pub fn dequantize_row(ty: GgmlType, cols: usize, packed: &[u8], r: usize, out: &mut [f32]) -> bool {
    let (gb, bb, per) = (
        group_bytes(ty, cols),
        ty.type_size() as usize,
        span(ty) / 32,
    );
    let g = r / ROWS;
    if !cols_ok(ty, cols) || out.len() != cols || packed.len() < (g + 1) * gb {
        return false;
    }
    let group = &packed[g * gb..(g + 1) * gb];
    let mut pieces = [Piece::default(); 8];
    let mut blk = [0u8; 256];
    for (i, y) in out.chunks_exact_mut(span(ty)).enumerate() {
        for (j, p) in pieces[..per].iter_mut().enumerate() {
            *p = get(ty, group, r % ROWS, i * per + j);
        }
        encode(ty, &pieces, &mut blk[..bb]);
        if crate::dequantize(ty, &blk[..bb], y).is_err() {
            return false;
        }
    }
    true
}

/// Bytes of a token's quantized activations for rows of `cols` values: the levels (`cols`
/// bytes), then per block of 32 the f32 scale, the i32 sum of levels, the f32 product of
/// the two, the i32 sum of the first 16 levels, and the product as ggml's Q8_1 keeps it
/// (the unrounded scale × the sum, rounded to f16; for Q4_1 and Q5_1).
pub fn act_bytes(cols: usize) -> usize {
    cols + cols / 32 * 20
}

/// Quantizes one token's activations `x` (a whole number of blocks of 32) into `out`
/// ([`act_bytes`] long): per block, as ggml's Q8_0: the scale `max|x| / 127` rounded to
/// f16 (kept as f32) and the levels `x × 127 / max|x|` rounded to nearest (ties to even).
pub fn quantize_act(x: &[f32], out: &mut [u8]) {
    let nb = x.len() / 32;
    assert!(x.len().is_multiple_of(32) && out.len() == act_bytes(x.len()));
    let (levels, rest) = out.split_at_mut(x.len());
    let (ds, rest) = rest.split_at_mut(4 * nb);
    let (sums, rest) = rest.split_at_mut(4 * nb);
    let (dsums, rest) = rest.split_at_mut(4 * nb);
    let (sums16, dsums_h) = rest.split_at_mut(4 * nb);
    // Round to nearest, ties to even, without a libm call: adding 1.5 × 2^23 leaves no
    // fraction bits for values below 2^22 in magnitude (ours are at most 127).
    const MAGIC: f32 = 12_582_912.0;
    for b in 0..nb {
        let xb: &[f32; 32] = x[32 * b..32 * b + 32].try_into().unwrap();
        // Lane-wise maxima (exact in any order), then across lanes.
        let mut lanes = [0.0f32; 8];
        for c in xb.chunks_exact(8) {
            for (m, v) in lanes.iter_mut().zip(c) {
                *m = m.max(v.abs());
            }
        }
        let amax = lanes.iter().fold(0.0f32, |m, &v| m.max(v));
        // As ggml quantizes activations to Q8_0: the scale rounded to f16, the levels
        // `x × 127 / amax` in f32 (so the integer sums are ggml's).
        let d = half::f16::from_f32(amax / 127.0).to_f32();
        let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        let mut q = [0i32; 32];
        for (q, &v) in q.iter_mut().zip(xb) {
            *q = (((v * id).clamp(-127.0, 127.0) + MAGIC) - MAGIC) as i32;
        }
        for (o, &q) in levels[32 * b..32 * b + 32].iter_mut().zip(&q) {
            *o = q as i8 as u8;
        }
        let s16: i32 = q[..16].iter().sum();
        let s = s16 + q[16..].iter().sum::<i32>();
        ds[4 * b..4 * b + 4].copy_from_slice(&d.to_le_bytes());
        sums[4 * b..4 * b + 4].copy_from_slice(&s.to_le_bytes());
        dsums[4 * b..4 * b + 4].copy_from_slice(&(d * s as f32).to_le_bytes());
        sums16[4 * b..4 * b + 4].copy_from_slice(&s16.to_le_bytes());
        let dsum_h = half::f16::from_f32(amax / 127.0 * s as f32).to_f32();
        dsums_h[4 * b..4 * b + 4].copy_from_slice(&dsum_h.to_le_bytes());
    }
}

/// Field `f` (0: scale, 1: sum, 2: scale × sum, 3: sum of the first 16, 4: scale × sum as
/// ggml's Q8_1) of block `b` of a token's activations.
fn field(a: &[u8], cols: usize, f: usize, b: usize) -> [u8; 4] {
    let o = cols + (f * (cols / 32) + b) * 4;
    a[o..o + 4].try_into().unwrap()
}

/// Checks the arguments of a kernel call.
fn check(ty: GgmlType, cols: usize, group: &[u8], acts: &[&[u8]], out: &[[f32; ROWS]]) {
    assert!(cols_ok(ty, cols), "{ty:?} rows of {cols}");
    assert_eq!(
        group.len(),
        group_bytes(ty, cols),
        "one group of {cols} columns"
    );
    assert!(!acts.is_empty() && acts.len() <= MAX_TOKENS && acts.len() == out.len());
    for a in acts {
        assert!(a.len() >= act_bytes(cols), "a token of {cols} columns");
    }
}

/// `out[t][r]` = row `r` of `group` (one group of a repacked matrix) · token `t`'s
/// activations, for 1 to [`MAX_TOKENS`] tokens. With `isa` `None` the scalar reference runs;
/// every ISA gives the same bits. Panics when a size disagrees.
pub fn kernel(
    isa: Option<Isa>,
    ty: GgmlType,
    cols: usize,
    group: &[u8],
    acts: &[&[u8]],
    out: &mut [[f32; ROWS]],
) {
    check(ty, cols, group, acts, out);
    #[cfg(target_arch = "x86_64")]
    if isa.is_some_and(|i| i >= Isa::Avx512) && self::isa().is_some() {
        avx512::kernel(ty, cols, group, acts, out);
        return;
    }
    let _ = isa;
    kernel_scalar(ty, cols, group, acts, out);
}

/// The scalar reference of [`kernel`]: the same integer sums and the same f32 operations in
/// the same order.
fn kernel_scalar(ty: GgmlType, cols: usize, group: &[u8], acts: &[&[u8]], out: &mut [[f32; ROWS]]) {
    let nb = cols / 32;
    let f16 = |h: u16| half::f16::from_bits(h).to_f32();
    let i32_at = |a: &[u8], f, b| i32::from_le_bytes(field(a, cols, f, b));
    let f32_at = |a: &[u8], f, b| f32::from_le_bytes(field(a, cols, f, b));
    for (a, o) in acts.iter().zip(out.iter_mut()) {
        for (lane, o) in o.iter_mut().enumerate() {
            let mut acc = 0.0f32;
            for b in 0..nb {
                let p = get(ty, group, lane, b);
                let (da, sum, dsum, sum16) = (
                    f32_at(a, 0, b),
                    i32_at(a, 1, b),
                    f32_at(a, 2, b),
                    i32_at(a, 3, b),
                );
                let dot = |ks: std::ops::Range<usize>| -> i32 {
                    ks.map(|k| i32::from(p.q[k]) * i32::from(a[32 * b + k] as i8))
                        .sum()
                };
                match ty {
                    GgmlType::Q4_K => {
                        let dw = f16(p.d) * f32::from(p.sc[0]);
                        let mw = f16(p.m) * f32::from(p.sc[1]);
                        acc = (dot(0..32) as f32).mul_add(dw * da, acc);
                        acc = (-mw).mul_add(dsum, acc);
                    }
                    GgmlType::Q6_K => {
                        let lo = dot(0..16) - 32 * sum16;
                        let hi = dot(16..32) - 32 * (sum - sum16);
                        let isum = lo * i32::from(p.sc[0] as i8) + hi * i32::from(p.sc[1] as i8);
                        acc = (isum as f32).mul_add(f16(p.d) * da, acc);
                    }
                    _ => {
                        let s = dot(0..32) - offset(ty) * sum;
                        acc = (s as f32).mul_add(f16(p.d) * da, acc);
                        if has_min(ty) {
                            acc = f16(p.m).mul_add(f32_at(a, 4, b), acc);
                        }
                    }
                }
            }
            *o = acc;
        }
    }
}
