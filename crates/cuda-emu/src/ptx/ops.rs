//! The ALU operations, each a function over the lanes of a warp (monomorphised per width, so
//! that the per-lane body is inlined into the lane loop).

#![allow(unused_variables, clippy::manual_checked_ops)]

use super::exec::{run, Alu, Regs};
use super::float as fl;

#[inline(always)]
pub fn tr<const B: u32>(v: u64) -> u64 {
    if B >= 64 {
        v
    } else {
        v & ((1u64 << B) - 1)
    }
}

#[inline(always)]
pub fn sx<const B: u32>(v: u64) -> i64 {
    if B >= 64 {
        v as i64
    } else {
        ((v << (64 - B)) as i64) >> (64 - B)
    }
}

#[inline(always)]
fn sxw(v: u64, b: u32) -> i64 {
    if b >= 64 {
        v as i64
    } else {
        ((v << (64 - b)) as i64) >> (64 - b)
    }
}

#[inline(always)]
fn trw(v: u64, b: u32) -> u64 {
    if b >= 64 {
        v
    } else {
        v & ((1u64 << b) - 1)
    }
}

macro_rules! op {
    ($name:ident, $n:literal, |$x:ident, $a:ident, $b:ident, $c:ident, $e:ident| $body:expr) => {
        pub fn $name<const B: u32>(r: &mut Regs, m: u32, x: &Alu) {
            run::<$n, _>(r, m, x, |$x: &Alu, $a: u64, $b: u64, $c: u64, $e: u64| {
                $body
            })
        }
    };
}

macro_rules! op0 {
    ($name:ident, $n:literal, |$x:ident, $a:ident, $b:ident, $c:ident, $e:ident| $body:expr) => {
        pub fn $name(r: &mut Regs, m: u32, x: &Alu) {
            run::<$n, _>(r, m, x, |$x: &Alu, $a: u64, $b: u64, $c: u64, $e: u64| {
                $body
            })
        }
    };
}

// ---- integer ----
op!(mov, 1, |x, a, b, c, e| tr::<B>(a));
op!(add, 2, |x, a, b, c, e| tr::<B>(a.wrapping_add(b)));
op!(sub, 2, |x, a, b, c, e| tr::<B>(a.wrapping_sub(b)));
op0!(add_sat_s32, 2, |x, a, b, c, e| {
    (sx::<32>(a) + sx::<32>(b)).clamp(i32::MIN as i64, i32::MAX as i64) as u32 as u64
});
op0!(sub_sat_s32, 2, |x, a, b, c, e| {
    (sx::<32>(a) - sx::<32>(b)).clamp(i32::MIN as i64, i32::MAX as i64) as u32 as u64
});
op!(mul_lo, 2, |x, a, b, c, e| tr::<B>(a.wrapping_mul(b)));
op!(mul_hi_u, 2, |x, a, b, c, e| {
    tr::<B>(((tr::<B>(a) as u128 * tr::<B>(b) as u128) >> B) as u64)
});
op!(mul_hi_s, 2, |x, a, b, c, e| {
    tr::<B>(((sx::<B>(a) as i128 * sx::<B>(b) as i128) >> B) as u64)
});
op!(mul_wide_u, 2, |x, a, b, c, e| tr::<B>(a)
    .wrapping_mul(tr::<B>(b)));
op!(
    mul_wide_s,
    2,
    |x, a, b, c, e| sx::<B>(a).wrapping_mul(sx::<B>(b)) as u64
);
op!(mad_lo, 3, |x, a, b, c, e| tr::<B>(
    a.wrapping_mul(b).wrapping_add(c)
));
op!(mad_hi_u, 3, |x, a, b, c, e| {
    tr::<B>((((tr::<B>(a) as u128 * tr::<B>(b) as u128) >> B) as u64).wrapping_add(c))
});
op!(mad_hi_s, 3, |x, a, b, c, e| {
    tr::<B>((((sx::<B>(a) as i128 * sx::<B>(b) as i128) >> B) as u64).wrapping_add(c))
});
op!(mad_wide_u, 3, |x, a, b, c, e| tr::<B>(a)
    .wrapping_mul(tr::<B>(b))
    .wrapping_add(c));
op!(mad_wide_s, 3, |x, a, b, c, e| {
    (sx::<B>(a).wrapping_mul(sx::<B>(b)) as u64).wrapping_add(c)
});
op!(div_u, 2, |x, a, b, c, e| {
    let (a, b) = (tr::<B>(a), tr::<B>(b));
    if b == 0 {
        tr::<B>(u64::MAX)
    } else {
        a / b
    }
});
op!(div_s, 2, |x, a, b, c, e| {
    let (a, b) = (sx::<B>(a), sx::<B>(b));
    if b == 0 {
        tr::<B>(u64::MAX)
    } else {
        tr::<B>(a.wrapping_div(b) as u64)
    }
});
op!(rem_u, 2, |x, a, b, c, e| {
    let (a, b) = (tr::<B>(a), tr::<B>(b));
    if b == 0 {
        a
    } else {
        a % b
    }
});
op!(rem_s, 2, |x, a, b, c, e| {
    let (a, b) = (sx::<B>(a), sx::<B>(b));
    if b == 0 {
        tr::<B>(a as u64)
    } else {
        tr::<B>(a.wrapping_rem(b) as u64)
    }
});
op!(min_u, 2, |x, a, b, c, e| tr::<B>(a).min(tr::<B>(b)));
op!(max_u, 2, |x, a, b, c, e| tr::<B>(a).max(tr::<B>(b)));
op!(min_s, 2, |x, a, b, c, e| tr::<B>(
    sx::<B>(a).min(sx::<B>(b)) as u64
));
op!(max_s, 2, |x, a, b, c, e| tr::<B>(
    sx::<B>(a).max(sx::<B>(b)) as u64
));
op!(abs_s, 1, |x, a, b, c, e| tr::<B>(
    sx::<B>(a).wrapping_abs() as u64
));
op!(neg_s, 1, |x, a, b, c, e| tr::<B>(
    (sx::<B>(a)).wrapping_neg() as u64
));
op!(and, 2, |x, a, b, c, e| tr::<B>(a & b));
op!(or, 2, |x, a, b, c, e| tr::<B>(a | b));
op!(xor, 2, |x, a, b, c, e| tr::<B>(a ^ b));
op!(not, 1, |x, a, b, c, e| tr::<B>(!a));
op!(cnot, 1, |x, a, b, c, e| (tr::<B>(a) == 0) as u64);
op!(shl, 2, |x, a, b, c, e| {
    let s = b as u32;
    if s >= B {
        0
    } else {
        tr::<B>(a << s)
    }
});
op!(shr_u, 2, |x, a, b, c, e| {
    let s = b as u32;
    if s >= B {
        0
    } else {
        tr::<B>(a) >> s
    }
});
op!(shr_s, 2, |x, a, b, c, e| {
    let s = (b as u32).min(B - 1);
    tr::<B>((sx::<B>(a) >> s) as u64)
});
op!(popc, 1, |x, a, b, c, e| tr::<B>(a).count_ones() as u64);
op!(
    clz,
    1,
    |x, a, b, c, e| (tr::<B>(a).leading_zeros() - (64 - B)) as u64
);
op!(brev, 1, |x, a, b, c, e| tr::<B>(
    a.reverse_bits() >> (64 - B)
));
op!(bfe_u, 3, |x, a, b, c, e| {
    let pos = (b & 0xff) as u32;
    let len = (c & 0xff) as u32;
    if len == 0 || pos >= B {
        0
    } else {
        let v = tr::<B>(a) >> pos;
        if len >= 64 {
            v
        } else {
            v & ((1u64 << len) - 1)
        }
    }
});
op!(bfe_s, 3, |x, a, b, c, e| {
    let pos = (b & 0xff) as u32;
    let len = (c & 0xff) as u32;
    if len == 0 {
        return 0;
    }
    let sbit_i = (pos + len - 1).min(B - 1);
    let sbit = (a >> sbit_i) & 1;
    if pos >= B {
        return if sbit == 1 { tr::<B>(u64::MAX) } else { 0 };
    }
    let avail = len.min(B - pos);
    let v = trw(tr::<B>(a) >> pos, avail);
    let fill = if sbit == 1 && avail < 64 {
        u64::MAX << avail
    } else {
        0
    };
    tr::<B>(v | fill)
});
op!(bfi, 4, |x, a, b, c, e| {
    let pos = (c & 0xff) as u32;
    let len = (e & 0xff) as u32;
    if len == 0 || pos >= B {
        tr::<B>(b)
    } else {
        let n = len.min(B - pos);
        let m = trw(u64::MAX, n) << pos;
        tr::<B>((b & !m) | ((a << pos) & m))
    }
});
op!(selp, 3, |x, a, b, c, e| if c & 1 != 0 {
    tr::<B>(a)
} else {
    tr::<B>(b)
});

/// The low `bits` bits (8 or 16) of `v` as an i32, sign-extended when `signed`.
#[inline(always)]
fn widen(v: u64, bits: u32, signed: bool) -> i32 {
    let sh = 32 - bits;
    let v = (v as u32) << sh;
    if signed {
        (v as i32) >> sh
    } else {
        (v >> sh) as i32
    }
}

// `dp4a`: `aux` bit 0 = a signed, bit 1 = b signed.
op0!(dp4a, 3, |x, a, b, c, e| {
    let mut acc = c as u32;
    for k in 0..4 {
        let av = widen(a >> (8 * k), 8, x.aux & 1 != 0);
        let bv = widen(b >> (8 * k), 8, x.aux & 2 != 0);
        acc = acc.wrapping_add(av.wrapping_mul(bv) as u32);
    }
    acc as u64
});

// `dp2a.lo/hi`: `aux` bit 0 = a signed, bit 1 = b signed, bit 2 = hi.
op0!(dp2a, 3, |x, a, b, c, e| {
    let mut acc = c as u32;
    let boff = if x.aux & 4 != 0 { 2 } else { 0 };
    for k in 0..2 {
        let av = widen(a >> (16 * k), 16, x.aux & 1 != 0);
        let bv = widen(b >> (8 * (k + boff)), 8, x.aux & 2 != 0);
        acc = acc.wrapping_add(av.wrapping_mul(bv) as u32);
    }
    acc as u64
});

// `prmt.b32` in the default mode.
op0!(prmt, 3, |x, a, b, c, e| {
    let src = (a & 0xffff_ffff) | (b << 32);
    let mut d = 0u32;
    for k in 0..4 {
        let sel = (c >> (4 * k)) & 0xf;
        let byte = (src >> (8 * (sel & 7))) as u8;
        let byte = if sel & 8 != 0 {
            if byte & 0x80 != 0 {
                0xff
            } else {
                0
            }
        } else {
            byte
        };
        d |= (byte as u32) << (8 * k);
    }
    d as u64
});

// ---- comparisons: aux = comparison code, aux2 = combining op (0 none, 1 and, 2 or, 3 xor) ----

pub const EQ: u32 = 0;
pub const NE: u32 = 1;
pub const LT: u32 = 2;
pub const LE: u32 = 3;
pub const GT: u32 = 4;
pub const GE: u32 = 5;
/// Unordered flag for float comparisons (`equ`, `ltu`, ...); `NUM`/`NAN` are separate.
pub const U: u32 = 8;
pub const NUM: u32 = 16;
pub const NAN: u32 = 17;

#[inline(always)]
fn ord<T: PartialOrd>(code: u32, a: T, b: T) -> bool {
    match code & 7 {
        EQ => a == b,
        NE => a != b,
        LT => a < b,
        LE => a <= b,
        GT => a > b,
        _ => a >= b,
    }
}

#[inline(always)]
fn combine(x: &Alu, r: bool, c: u64) -> u64 {
    let c = c & 1 != 0;
    (match x.aux2 {
        0 => r,
        1 => r & c,
        2 => r | c,
        _ => r ^ c,
    }) as u64
}

#[inline(always)]
fn fcmp<T: PartialOrd + Copy>(code: u32, a: T, b: T, nan: bool) -> bool {
    if code == NUM {
        !nan
    } else if code == NAN {
        nan
    } else if nan {
        code & U != 0
    } else {
        ord(code, a, b)
    }
}

op!(setp_u, 3, |x, a, b, c, e| combine(
    x,
    ord(x.aux, tr::<B>(a), tr::<B>(b)),
    c
));
op!(setp_s, 3, |x, a, b, c, e| combine(
    x,
    ord(x.aux, sx::<B>(a), sx::<B>(b)),
    c
));
op0!(setp_f32, 3, |x, a, b, c, e| {
    let (a, b) = (fin(x, a), fin(x, b));
    combine(x, fcmp(x.aux, a, b, a.is_nan() || b.is_nan()), c)
});
op0!(setp_f64, 3, |x, a, b, c, e| {
    let (a, b) = (f64::from_bits(a), f64::from_bits(b));
    combine(x, fcmp(x.aux, a, b, a.is_nan() || b.is_nan()), c)
});

// ---- f32 ----

#[inline(always)]
fn fin(x: &Alu, a: u64) -> f32 {
    let v = f32::from_bits(a as u32);
    if x.ftz {
        fl::ftz(v)
    } else {
        v
    }
}

#[inline(always)]
fn fout(x: &Alu, v: f32) -> u64 {
    let v = if x.ftz { fl::ftz(v) } else { v };
    let v = if x.sat { fl::sat(v) } else { v };
    v.to_bits() as u64
}

#[inline(always)]
fn d(a: u64) -> f64 {
    f64::from_bits(a)
}

op0!(add_f32, 2, |x, a, b, c, e| fout(
    x,
    fl::add_f32(fin(x, a), fin(x, b), x.rnd)
));
op0!(sub_f32, 2, |x, a, b, c, e| fout(
    x,
    fl::sub_f32(fin(x, a), fin(x, b), x.rnd)
));
op0!(mul_f32, 2, |x, a, b, c, e| fout(
    x,
    fl::mul_f32(fin(x, a), fin(x, b), x.rnd)
));
op0!(fma_f32, 3, |x, a, b, c, e| {
    fout(x, fl::fma_f32(fin(x, a), fin(x, b), fin(x, c), x.rnd))
});
op0!(div_f32, 2, |x, a, b, c, e| fout(
    x,
    fl::div_f32(fin(x, a), fin(x, b), x.rnd)
));
op0!(div_approx_f32, 2, |x, a, b, c, e| {
    fout(x, fin(x, a) * fl::rcp_approx(fin(x, b)))
});
op0!(rcp_f32, 1, |x, a, b, c, e| fout(
    x,
    fl::rcp_f32(fin(x, a), x.rnd)
));
op0!(rcp_approx_f32, 1, |x, a, b, c, e| fout(
    x,
    fl::rcp_approx(fin(x, a))
));
op0!(sqrt_f32, 1, |x, a, b, c, e| fout(
    x,
    fl::sqrt_f32(fin(x, a), x.rnd)
));
op0!(rsqrt_approx_f32, 1, |x, a, b, c, e| fout(
    x,
    fl::rsqrt_approx(fin(x, a))
));
op0!(ex2_approx_f32, 1, |x, a, b, c, e| fout(
    x,
    fl::ex2_approx(fin(x, a))
));
op0!(lg2_approx_f32, 1, |x, a, b, c, e| fout(
    x,
    fl::lg2_approx(fin(x, a))
));
op0!(sin_approx_f32, 1, |x, a, b, c, e| fout(
    x,
    fl::sin_approx(fin(x, a))
));
op0!(cos_approx_f32, 1, |x, a, b, c, e| fout(
    x,
    fl::cos_approx(fin(x, a))
));
op0!(tanh_approx_f32, 1, |x, a, b, c, e| fout(
    x,
    fl::tanh_approx(fin(x, a))
));
op0!(min_f32, 2, |x, a, b, c, e| fout(
    x,
    fl::min_f32(fin(x, a), fin(x, b))
));
op0!(max_f32, 2, |x, a, b, c, e| fout(
    x,
    fl::max_f32(fin(x, a), fin(x, b))
));
op0!(abs_f32, 1, |x, a, b, c, e| fout(
    x,
    f32::from_bits(fin(x, a).to_bits() & 0x7fff_ffff)
));
op0!(neg_f32, 1, |x, a, b, c, e| fout(
    x,
    f32::from_bits(fin(x, a).to_bits() ^ 0x8000_0000)
));

// ---- f64 ----
op0!(add_f64, 2, |x, a, b, c, e| fl::add_f64(d(a), d(b), x.rnd)
    .to_bits());
op0!(sub_f64, 2, |x, a, b, c, e| fl::sub_f64(d(a), d(b), x.rnd)
    .to_bits());
op0!(mul_f64, 2, |x, a, b, c, e| fl::mul_f64(d(a), d(b), x.rnd)
    .to_bits());
op0!(fma_f64, 3, |x, a, b, c, e| fl::fma_f64(
    d(a),
    d(b),
    d(c),
    x.rnd
)
.to_bits());
op0!(div_f64, 2, |x, a, b, c, e| fl::div_f64(d(a), d(b), x.rnd)
    .to_bits());
op0!(rcp_f64, 1, |x, a, b, c, e| fl::div_f64(1.0, d(a), x.rnd)
    .to_bits());
op0!(sqrt_f64, 1, |x, a, b, c, e| d(a).sqrt().to_bits());
op0!(abs_f64, 1, |x, a, b, c, e| a & !(1u64 << 63));
op0!(neg_f64, 1, |x, a, b, c, e| a ^ (1u64 << 63));
op0!(min_f64, 2, |x, a, b, c, e| {
    let (a, b) = (d(a), d(b));
    (if a.is_nan() {
        b
    } else if b.is_nan() {
        a
    } else if a == b {
        if a.is_sign_negative() {
            a
        } else {
            b
        }
    } else {
        a.min(b)
    })
    .to_bits()
});
op0!(max_f64, 2, |x, a, b, c, e| {
    let (a, b) = (d(a), d(b));
    (if a.is_nan() {
        b
    } else if b.is_nan() {
        a
    } else if a == b {
        if a.is_sign_positive() {
            a
        } else {
            b
        }
    } else {
        a.max(b)
    })
    .to_bits()
});

// ---- conversions ----

/// Type codes for `cvt` (in `aux` = destination, `aux2` = source).
pub mod tc {
    /// Unsigned integer of `bits` (8..64).
    pub const U: u32 = 0x100;
    /// Signed integer.
    pub const S: u32 = 0x200;
    pub const F16: u32 = 0x300;
    pub const BF16: u32 = 0x400;
    pub const F32: u32 = 0x500;
    pub const F64: u32 = 0x600;
}

// `cvt`: aux = destination code | bits, aux2 = source code | bits. Flags: `rnd` for float
// results of inexact conversions, `irnd` for integer results and same-type float rounding
// (`aux2` bit 16 set when an integral rounding was given), `ftz`, `sat`.
op0!(cvt, 1, |x, a, b, c, e| cvt_one(x, a));

const HAS_IRND: u32 = 1 << 16;
/// `aux2` flag: the `cvt` has an integral rounding modifier.
pub const CVT_IRND: u32 = HAS_IRND;

#[inline(always)]
fn cvt_one(x: &Alu, a: u64) -> u64 {
    let dk = x.aux & 0xff00;
    let db = x.aux & 0xff;
    let sk = x.aux2 & 0xff00;
    let sb = x.aux2 & 0xff;
    // Source as a value.
    enum V {
        I(i128),
        F(f64),
        F32(f32),
    }
    let v = match sk {
        tc::U => V::I(trw(a, sb) as i128),
        tc::S => V::I(sxw(a, sb) as i128),
        tc::F16 => V::F32(fl::f16_to_f32(a as u16)),
        tc::BF16 => V::F32(fl::bf16_to_f32(a as u16)),
        tc::F32 => {
            let f = f32::from_bits(a as u32);
            V::F32(if x.ftz { fl::ftz(f) } else { f })
        }
        _ => V::F(f64::from_bits(a)),
    };
    match dk {
        tc::U | tc::S => {
            let signed = dk == tc::S;
            match v {
                V::I(i) => {
                    if x.sat {
                        let (lo, hi) = if signed {
                            (-(1i128 << (db - 1)), (1i128 << (db - 1)) - 1)
                        } else {
                            (0, (1i128 << db) - 1)
                        };
                        trw(i.clamp(lo, hi) as u64, db)
                    } else {
                        trw(i as u64, db)
                    }
                }
                V::F32(f) => fl::f32_to_int(f, x.irnd, signed, db),
                V::F(f) => fl::f64_to_int(f, x.irnd, signed, db),
            }
        }
        tc::F32 => {
            let r = match v {
                V::I(i) => fl::int_to_f32(i, x.rnd),
                V::F32(f) => {
                    if x.aux2 & HAS_IRND != 0 {
                        fl::round_f32_integral(f, x.irnd)
                    } else {
                        f
                    }
                }
                V::F(f) => fl::f64_to_f32(f, x.rnd),
            };
            fout(x, r)
        }
        tc::F64 => {
            let r = match v {
                V::I(i) => fl::int_to_f64(i, x.rnd),
                V::F32(f) => f as f64,
                V::F(f) => {
                    if x.aux2 & HAS_IRND != 0 {
                        fl::round_f64_integral(f, x.irnd)
                    } else {
                        f
                    }
                }
            };
            let r = if x.sat {
                if r.is_nan() {
                    0.0
                } else {
                    r.clamp(0.0, 1.0)
                }
            } else {
                r
            };
            r.to_bits()
        }
        tc::F16 | tc::BF16 => {
            let f = match v {
                V::F32(f) => f,
                V::I(i) => i as f32,
                V::F(f) => f as f32,
            };
            let f = if x.sat { fl::sat(f) } else { f };
            if dk == tc::F16 {
                fl::f32_to_f16(f, x.rnd) as u64
            } else {
                fl::f32_to_bf16(f, x.rnd) as u64
            }
        }
        _ => 0,
    }
}

// `cvta` between generic and a window: `aux` is the window base, `aux2` 1 to subtract.
op0!(cvta, 1, |x, a, b, c, e| {
    let base = (x.aux as u64) << 32;
    if x.aux2 != 0 {
        a.wrapping_sub(base)
    } else {
        a.wrapping_add(base)
    }
});

// ---- specialised conversions (the common ones; `cvt` handles the rest) ----

/// Integer to integer without saturation: extend from `S` bits (signed if `SG`), keep `D`.
pub fn cvt_ii<const D: u32, const S: u32, const SG: bool>(r: &mut Regs, m: u32, x: &Alu) {
    run::<1, _>(r, m, x, |_, a, _, _, _| {
        let v = if SG { sx::<S>(a) as u64 } else { tr::<S>(a) };
        tr::<D>(v)
    })
}

/// Integer to f32 with the instruction's rounding.
pub fn cvt_f32_i<const S: u32, const SG: bool>(r: &mut Regs, m: u32, x: &Alu) {
    run::<1, _>(r, m, x, |x, a, _, _, _| {
        let v = if SG {
            sx::<S>(a) as i128
        } else {
            tr::<S>(a) as i128
        };
        fout(x, fl::int_to_f32(v, x.rnd))
    })
}

op0!(cvt_f32_f16, 1, |x, a, b, c, e| fout(
    x,
    fl::f16_to_f32(a as u16)
));
