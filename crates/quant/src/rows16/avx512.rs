//! The AVX-512 VNNI kernel of [`super::kernel`]: one group of 16 rows against up to eight
//! tokens. Per block of 32 columns the group's levels are unpacked once into eight vectors
//! of 16 rows × 4 columns, then each token's block is eight broadcast 4-byte words through
//! `dpbusd`, in two chains (columns 0..16 and 16..32) added at the end: integers, exact.

use std::arch::x86_64::*;

use gguf::GgmlType;

use super::{act_bytes, block_at, layout, MAX_TOKENS, ROWS};

/// Safe entry: checks the CPU (the caller checked the sizes).
pub(super) fn kernel(
    ty: GgmlType,
    cols: usize,
    group: &[u8],
    acts: &[&[u8]],
    out: &mut [[f32; ROWS]],
) {
    assert!(
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vnni")
            && std::arch::is_x86_feature_detected!("f16c")
    );
    macro_rules! go {
        ($kind:expr) => {{
            // SAFETY: the features the kernels need were checked above; all reads go
            // through slices whose sizes `super::check` verified (a group of `cols`
            // columns, activations of `act_bytes(cols)` bytes).
            unsafe {
                match acts.len() {
                    1 => run::<1, { $kind }>(cols, group, acts, out),
                    2 => run::<2, { $kind }>(cols, group, acts, out),
                    3 => run::<3, { $kind }>(cols, group, acts, out),
                    4 => run::<4, { $kind }>(cols, group, acts, out),
                    5 => run::<5, { $kind }>(cols, group, acts, out),
                    6 => run::<6, { $kind }>(cols, group, acts, out),
                    7 => run::<7, { $kind }>(cols, group, acts, out),
                    _ => run::<8, { $kind }>(cols, group, acts, out),
                }
            }
        }};
    }
    const { assert!(MAX_TOKENS == 8) };
    match ty {
        GgmlType::Q4_0 => go!(Q4_0),
        GgmlType::Q4_1 => go!(Q4_1),
        GgmlType::Q5_0 => go!(Q5_0),
        GgmlType::Q5_1 => go!(Q5_1),
        GgmlType::Q4_K => go!(Q4_K),
        GgmlType::Q6_K => go!(Q6_K),
        _ => go!(Q8_0),
    }
}

const Q4_0: u8 = 0;
const Q4_1: u8 = 1;
const Q5_0: u8 = 2;
const Q5_1: u8 = 3;
const Q8_0: u8 = 4;
const Q4_K: u8 = 5;
const Q6_K: u8 = 6;

const fn ty_of(kind: u8) -> GgmlType {
    match kind {
        Q4_0 => GgmlType::Q4_0,
        Q4_1 => GgmlType::Q4_1,
        Q5_0 => GgmlType::Q5_0,
        Q5_1 => GgmlType::Q5_1,
        Q4_K => GgmlType::Q4_K,
        Q6_K => GgmlType::Q6_K,
        _ => GgmlType::Q8_0,
    }
}

/// Q6_K's top two bits of element `e` of a plane, moved to bits 4..6 of each byte.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn top2(plane: __m512i, e: usize) -> __m512i {
    let m = _mm512_set1_epi8(0x30);
    let v = match e % 4 {
        0 => _mm512_slli_epi16::<4>(plane),
        1 => _mm512_slli_epi16::<2>(plane),
        2 => plane,
        _ => _mm512_srli_epi16::<2>(plane),
    };
    _mm512_and_si512(v, m)
}

/// A token's activation fields as pointers (see [`super::act_bytes`]).
#[derive(Clone, Copy)]
struct Tok {
    levels: *const u8,
    d: *const f32,
    sum: *const i32,
    dsum: *const f32,
    sum16: *const i32,
    dsum_h: *const f32,
}

/// # Safety
///
/// The CPU must have the enabled features; `group` must be one group of `cols` columns of
/// `KIND`'s layout and every `acts[t]` at least `act_bytes(cols)` bytes (`super::check`).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn run<const T: usize, const KIND: u8>(
    cols: usize,
    group: &[u8],
    acts: &[&[u8]],
    out: &mut [[f32; ROWS]],
) {
    let ty = ty_of(KIND);
    let min = KIND == Q4_1 || KIND == Q5_1;
    let fifth = KIND == Q5_0 || KIND == Q5_1;
    // Offsets taken out of the integer sums as a shifted activation sum.
    let shift: i32 = match KIND {
        Q4_0 => 3,
        Q5_0 => 4,
        Q8_0 => 7,
        Q6_K => 5,
        _ => -1,
    };
    let (mo, ko, lo) = layout(ty);
    let nb = cols / 32;
    debug_assert!(group.len() == super::group_bytes(ty, cols));
    let toks: [Tok; T] = std::array::from_fn(|t| {
        let a = &acts[t][..act_bytes(cols)];
        let p = a.as_ptr();
        // SAFETY: the fields lie within the act_bytes(cols) bytes of `a`: levels (cols
        // bytes), then five arrays of nb 4-byte values.
        unsafe {
            Tok {
                levels: p,
                d: p.add(cols).cast(),
                sum: p.add(cols + 4 * nb).cast(),
                dsum: p.add(cols + 8 * nb).cast(),
                sum16: p.add(cols + 12 * nb).cast(),
                dsum_h: p.add(cols + 16 * nb).cast(),
            }
        }
    });
    let g = group.as_ptr();
    // Every read below is at an offset from `block_at` and `layout` for a block b < nb of a
    // group of `cols` columns, which `group` is (the caller's contract, `super::check`);
    // activation reads are field b (or levels 32b..32b + 32) of a token's act_bytes(cols)
    // bytes. Loads are unaligned, so any byte offset will do.
    // SAFETY: 64 level bytes at `at + lo + 64j`: j < 4 of a block group's 256 (j < 8 of
    // Q8_0's 512), or Q6_K's top-bit plane `at + lo + 256 + 64(j / 2)` in its last 128.
    let ld = |o: usize| unsafe { _mm512_loadu_si512(g.add(o).cast()) };
    // SAFETY: 16 f16 scales (32 bytes) at a block group's `at` / `at + mo`, or at a
    // K-quant header's `h` / `h + 32` (64 header bytes for Q4_K, 32 for Q6_K).
    let halfs = |o: usize| _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(g.add(o).cast()) });
    // SAFETY: 16 sub-scale bytes at a K-quant block group's `at` / `at + 16`, within its
    // first 32 bytes.
    let bytes16 = |o: usize| unsafe { _mm_loadu_si128(g.add(o).cast()) };
    // SAFETY: 8 fifth-bit mask bytes at `at + ko + 16j (+ 8)`, j < 4: within the block
    // group's 64 mask bytes (Q5_0 and Q5_1 only).
    let mask = |o: usize| unsafe { g.add(o).cast::<u64>().read_unaligned() };
    let m4 = _mm512_set1_epi8(0x0F);
    let b4 = _mm512_set1_epi8(0x10);
    let zero_i = _mm512_setzero_si512();
    let mut acc = [_mm512_setzero_ps(); T];
    for b in 0..nb {
        let (at, h) = block_at(ty, b);
        // Per-row scales of this block: (d_w, the minimum term's factor, Q6_K's two
        // integer half scales).
        let (dw, dm, sc_lo, sc_hi) = match KIND {
            Q4_K => {
                let sc = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(bytes16(at)));
                let m = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(bytes16(at + 16)));
                (
                    _mm512_mul_ps(halfs(h), sc),
                    _mm512_mul_ps(halfs(h + 32), m),
                    zero_i,
                    zero_i,
                )
            }
            Q6_K => (
                halfs(h),
                _mm512_setzero_ps(),
                _mm512_cvtepi8_epi32(bytes16(at)),
                _mm512_cvtepi8_epi32(bytes16(at + 16)),
            ),
            _ => (
                halfs(at),
                if min {
                    halfs(at + mo)
                } else {
                    _mm512_setzero_ps()
                },
                zero_i,
                zero_i,
            ),
        };
        let mut v = [zero_i; 8];
        if KIND == Q8_0 {
            for (j, v) in v.iter_mut().enumerate() {
                *v = ld(at + lo + 64 * j);
            }
        } else {
            for j in 0..4 {
                let q = ld(at + lo + 64 * j);
                let (mut l, mut hi) = (
                    _mm512_and_si512(q, m4),
                    _mm512_and_si512(_mm512_srli_epi16::<4>(q), m4),
                );
                if fifth {
                    l = _mm512_mask_add_epi8(l, mask(at + ko + 16 * j), l, b4);
                    hi = _mm512_mask_add_epi8(hi, mask(at + ko + 16 * j + 8), hi, b4);
                }
                if KIND == Q6_K {
                    let plane = ld(at + lo + 256 + 64 * (j / 2));
                    l = _mm512_or_si512(l, top2(plane, 2 * j));
                    hi = _mm512_or_si512(hi, top2(plane, 2 * j + 1));
                }
                v[2 * j] = l;
                v[2 * j + 1] = hi;
            }
        }
        // One token's block, unrolled below with constant indices so that the
        // accumulators stay in registers.
        macro_rules! token {
            ($t:literal) => {{
                let tk = toks[$t];
                // SAFETY: see above.
                let y = unsafe { tk.levels.add(32 * b).cast::<i32>() };
                // SAFETY: word i < 8 of the token's block b.
                let w = move |i: usize| _mm512_set1_epi32(unsafe { y.add(i).read_unaligned() });
                // SAFETY: see above.
                let (sum, sum16, da, ds) = unsafe {
                    (
                        tk.sum.add(b).read_unaligned(),
                        tk.sum16.add(b).read_unaligned(),
                        tk.d.add(b).read_unaligned(),
                        if min {
                            tk.dsum_h.add(b).read_unaligned()
                        } else {
                            tk.dsum.add(b).read_unaligned()
                        },
                    )
                };
                let (start_lo, start_hi) = if KIND == Q6_K {
                    (
                        _mm512_set1_epi32(-(sum16 << shift)),
                        _mm512_set1_epi32(-((sum - sum16) << shift)),
                    )
                } else if shift >= 0 {
                    (_mm512_set1_epi32(-(sum << shift)), zero_i)
                } else {
                    (zero_i, zero_i)
                };
                let mut s0 = _mm512_dpbusd_epi32(start_lo, v[0], w(0));
                let mut s1 = _mm512_dpbusd_epi32(start_hi, v[4], w(4));
                s0 = _mm512_dpbusd_epi32(s0, v[1], w(1));
                s1 = _mm512_dpbusd_epi32(s1, v[5], w(5));
                s0 = _mm512_dpbusd_epi32(s0, v[2], w(2));
                s1 = _mm512_dpbusd_epi32(s1, v[6], w(6));
                s0 = _mm512_dpbusd_epi32(s0, v[3], w(3));
                s1 = _mm512_dpbusd_epi32(s1, v[7], w(7));
                let isum = if KIND == Q6_K {
                    _mm512_add_epi32(_mm512_mullo_epi32(s0, sc_lo), _mm512_mullo_epi32(s1, sc_hi))
                } else {
                    _mm512_add_epi32(s0, s1)
                };
                let f = _mm512_cvtepi32_ps(isum);
                acc[$t] = _mm512_fmadd_ps(f, _mm512_mul_ps(dw, _mm512_set1_ps(da)), acc[$t]);
                if min {
                    acc[$t] = _mm512_fmadd_ps(dm, _mm512_set1_ps(ds), acc[$t]);
                } else if KIND == Q4_K {
                    acc[$t] = _mm512_fnmadd_ps(dm, _mm512_set1_ps(ds), acc[$t]);
                }
            }};
        }
        macro_rules! unrolled {
            ($($t:literal)*) => {$(
                if $t < T {
                    token!($t);
                }
            )*};
        }
        unrolled!(0 1 2 3 4 5 6 7);
    }
    for t in 0..T {
        // SAFETY: `out[t]` is 16 writable f32; no alignment required.
        unsafe { _mm512_storeu_ps(out[t].as_mut_ptr(), acc[t]) };
    }
}
