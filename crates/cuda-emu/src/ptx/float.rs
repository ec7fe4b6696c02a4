//! Exact IEEE arithmetic for the PTX rounding modifiers: `.rn` is the host's own arithmetic;
//! `.rz`, `.rm`, `.rp` take the nearest result and step one ulp by the sign of the exact error,
//! found by an error-free transformation in f64. Also the `.approx` forms and conversions.

use std::cmp::Ordering;

/// A floating-point rounding modifier (`.rn`, `.rz`, `.rm`, `.rp`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Round {
    /// To nearest, ties to even.
    Rn,
    /// Toward zero.
    Rz,
    /// Toward minus infinity.
    Rm,
    /// Toward plus infinity.
    Rp,
}

/// An integer rounding modifier (`.rni`, `.rzi`, `.rmi`, `.rpi`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoundInt {
    /// To nearest integer, ties to even.
    Rni,
    /// Toward zero.
    Rzi,
    /// Toward minus infinity.
    Rmi,
    /// Toward plus infinity.
    Rpi,
}

/// Steps the nearest result `c` to the directed result, given how the exact value compares
/// with `c`.
fn direct32(c: f32, exact_vs_c: Ordering, r: Round) -> f32 {
    match (exact_vs_c, r) {
        (Ordering::Equal, _) | (_, Round::Rn) => c,
        (Ordering::Greater, Round::Rp) => c.next_up(),
        (Ordering::Greater, Round::Rz) if c < 0.0 => c.next_up(),
        (Ordering::Less, Round::Rm) => c.next_down(),
        (Ordering::Less, Round::Rz) if c > 0.0 => c.next_down(),
        _ => c,
    }
}

fn direct64(c: f64, exact_vs_c: Ordering, r: Round) -> f64 {
    match (exact_vs_c, r) {
        (Ordering::Equal, _) | (_, Round::Rn) => c,
        (Ordering::Greater, Round::Rp) => c.next_up(),
        (Ordering::Greater, Round::Rz) if c < 0.0 => c.next_up(),
        (Ordering::Less, Round::Rm) => c.next_down(),
        (Ordering::Less, Round::Rz) if c > 0.0 => c.next_down(),
        _ => c,
    }
}

fn sign(x: f64) -> Ordering {
    x.partial_cmp(&0.0).unwrap_or(Ordering::Equal)
}

/// `s + e` (exactly, `|e|` far below an f32 ulp of `s`) rounded to f32 per `r`.
fn round_pair(s: f64, e: f64, r: Round) -> f32 {
    let c = s as f32;
    if !s.is_finite() || r == Round::Rn {
        return c;
    }
    // s - c is exact (Sterbenz, or c infinite); the sign of d + e is exact even if rounded.
    let ord = if c.is_infinite() {
        if c > 0.0 {
            Ordering::Less
        } else {
            Ordering::Greater
        }
    } else {
        sign((s - c as f64) + e)
    };
    direct32(c, ord, r)
}

/// An exact zero sum's sign: IEEE gives -0 only to -0 + -0, or in round-down.
fn zero_sum32(x: f32, y: f32, r: Round) -> f32 {
    if x == 0.0 && y == 0.0 && x.is_sign_negative() == y.is_sign_negative() {
        x
    } else if r == Round::Rm {
        -0.0
    } else {
        0.0
    }
}

fn two_sum(a: f64, b: f64) -> (f64, f64) {
    let s = a + b;
    let bb = s - a;
    let e = (a - (s - bb)) + (b - bb);
    (s, e)
}

/// `a + b` rounded per `r`.
pub fn add_f32(a: f32, b: f32, r: Round) -> f32 {
    if r == Round::Rn || !a.is_finite() || !b.is_finite() {
        return a + b;
    }
    let (s, e) = two_sum(a as f64, b as f64);
    if s == 0.0 && e == 0.0 {
        return zero_sum32(a, b, r);
    }
    round_pair(s, e, r)
}

/// `a - b` rounded per `r`.
pub fn sub_f32(a: f32, b: f32, r: Round) -> f32 {
    add_f32(a, -b, r)
}

/// `a * b` rounded per `r` (the f64 product of two f32 is exact).
pub fn mul_f32(a: f32, b: f32, r: Round) -> f32 {
    if r == Round::Rn {
        return a * b;
    }
    round_pair(a as f64 * b as f64, 0.0, r)
}

/// `a * b + c` with one rounding per `r`.
pub fn fma_f32(a: f32, b: f32, c: f32, r: Round) -> f32 {
    if r == Round::Rn || !a.is_finite() || !b.is_finite() || !c.is_finite() {
        return a.mul_add(b, c);
    }
    let p = a as f64 * b as f64;
    let (s, e) = two_sum(p, c as f64);
    if s == 0.0 && e == 0.0 {
        return zero_sum32(p as f32, c, r);
    }
    round_pair(s, e, r)
}

/// `a / b` rounded per `r`.
pub fn div_f32(a: f32, b: f32, r: Round) -> f32 {
    let c = a / b;
    if r == Round::Rn || !c.is_finite() || c == 0.0 || !b.is_finite() {
        return c;
    }
    // a/b - c has the sign of (a - c*b) * sign(b); c*b is exact in f64, one rounding after.
    let rem = (c as f64).mul_add(-(b as f64), a as f64);
    let ord = if b > 0.0 {
        sign(rem)
    } else {
        sign(rem).reverse()
    };
    direct32(c, ord, r)
}

/// Square root rounded per `r`.
pub fn sqrt_f32(a: f32, r: Round) -> f32 {
    let c = a.sqrt();
    if r == Round::Rn || !c.is_finite() || c == 0.0 {
        return c;
    }
    let ord = sign(a as f64 - c as f64 * c as f64);
    direct32(c, ord, r)
}

/// `1 / a` rounded per `r`.
pub fn rcp_f32(a: f32, r: Round) -> f32 {
    div_f32(1.0, a, r)
}

/// f64 `a + b` rounded per `r`.
pub fn add_f64(a: f64, b: f64, r: Round) -> f64 {
    let (s, e) = two_sum(a, b);
    if r == Round::Rn || !s.is_finite() {
        return s;
    }
    if s == 0.0 && e == 0.0 {
        return if a == 0.0 && b == 0.0 && a.is_sign_negative() == b.is_sign_negative() {
            a
        } else if r == Round::Rm {
            -0.0
        } else {
            0.0
        };
    }
    direct64(s, sign(e), r)
}

/// f64 `a - b` rounded per `r`.
pub fn sub_f64(a: f64, b: f64, r: Round) -> f64 {
    add_f64(a, -b, r)
}

/// f64 `a * b` rounded per `r` (exact while the product is not subnormal).
pub fn mul_f64(a: f64, b: f64, r: Round) -> f64 {
    let p = a * b;
    if r == Round::Rn || !p.is_finite() || p == 0.0 {
        return p;
    }
    direct64(p, sign(a.mul_add(b, -p)), r)
}

/// f64 `a * b + c` rounded once per `r`. Directed modes are exact when `a * b + c` needs no
/// more than the error of one product and one sum (always for our kernels, which use `.rn`).
pub fn fma_f64(a: f64, b: f64, c: f64, r: Round) -> f64 {
    let s = a.mul_add(b, c);
    if r == Round::Rn || !s.is_finite() {
        return s;
    }
    // Exact residual: a*b = p + pe, then (p + c) = t + te; the residual is pe + te - (s - t).
    let p = a * b;
    let pe = a.mul_add(b, -p);
    let (t, te) = two_sum(p, c);
    let resid = (t - s) + te + pe;
    direct64(s, sign(resid), r)
}

/// f64 `a / b` rounded per `r`.
pub fn div_f64(a: f64, b: f64, r: Round) -> f64 {
    let c = a / b;
    if r == Round::Rn || !c.is_finite() || c == 0.0 || !b.is_finite() {
        return c;
    }
    let rem = c.mul_add(-b, a);
    let ord = if b > 0.0 {
        sign(rem)
    } else {
        sign(rem).reverse()
    };
    direct64(c, ord, r)
}

/// Flushes a subnormal to a zero of the same sign (`.ftz`).
pub fn ftz(x: f32) -> f32 {
    if x.is_subnormal() {
        if x.is_sign_negative() {
            -0.0
        } else {
            0.0
        }
    } else {
        x
    }
}

fn f16_next(bits: u16, up: bool) -> u16 {
    let h = half::f16::from_bits(bits);
    if h.is_nan() {
        return bits;
    }
    let neg = bits & 0x8000 != 0;
    if bits & 0x7fff == 0 {
        return if up { 0x0001 } else { 0x8001 };
    }
    if (up && !neg) || (!up && neg) {
        if bits & 0x7fff == 0x7c00 {
            bits
        } else {
            bits + 1
        }
    } else {
        bits - 1
    }
}

fn direct16(c: u16, value: f32, x: f32, r: Round) -> u16 {
    let ord = x.partial_cmp(&value).unwrap_or(Ordering::Equal);
    match (ord, r) {
        (Ordering::Equal, _) | (_, Round::Rn) => c,
        (Ordering::Greater, Round::Rp) => f16_next(c, true),
        (Ordering::Greater, Round::Rz) if value < 0.0 => f16_next(c, true),
        (Ordering::Less, Round::Rm) => f16_next(c, false),
        (Ordering::Less, Round::Rz) if value > 0.0 => f16_next(c, false),
        _ => c,
    }
}

/// f32 to f16 bits, rounded per `r`.
pub fn f32_to_f16(x: f32, r: Round) -> u16 {
    let c = half::f16::from_f32(x).to_bits();
    if r == Round::Rn || x.is_nan() {
        return c;
    }
    direct16(c, f16_to_f32(c), x, r)
}

/// f16 bits to f32 (exact).
pub fn f16_to_f32(h: u16) -> f32 {
    half::f16::from_bits(h).to_f32()
}

/// f32 to bf16 bits, rounded per `r`.
pub fn f32_to_bf16(x: f32, r: Round) -> u16 {
    let c = half::bf16::from_f32(x);
    if r == Round::Rn || x.is_nan() {
        return c.to_bits();
    }
    // bf16 is the top half of an f32: step on f32 bits of the truncated value.
    let v = c.to_f32();
    match x.partial_cmp(&v).unwrap_or(Ordering::Equal) {
        Ordering::Greater if r == Round::Rp || (r == Round::Rz && v < 0.0) => {
            if v < 0.0 {
                c.to_bits() - 1
            } else if v == 0.0 {
                1
            } else {
                c.to_bits() + 1
            }
        }
        Ordering::Less if r == Round::Rm || (r == Round::Rz && v > 0.0) => {
            if v > 0.0 {
                c.to_bits() - 1
            } else if v == 0.0 {
                0x8001
            } else {
                c.to_bits() + 1
            }
        }
        _ => c.to_bits(),
    }
}

/// bf16 bits to f32 (exact).
pub fn bf16_to_f32(h: u16) -> f32 {
    half::bf16::from_bits(h).to_f32()
}

/// f64 to f32 rounded per `r`.
pub fn f64_to_f32(x: f64, r: Round) -> f32 {
    round_pair(x, 0.0, r)
}

/// An integer (sign- or zero-extended into i128) to f32, rounded per `r`.
pub fn int_to_f32(x: i128, r: Round) -> f32 {
    let c = x as f32;
    if r == Round::Rn {
        return c;
    }
    let ord = if c.is_infinite() {
        Ordering::Less
    } else {
        x.cmp(&(c as i128))
    };
    direct32(c, ord, r)
}

/// An integer to f64, rounded per `r`.
pub fn int_to_f64(x: i128, r: Round) -> f64 {
    let c = x as f64;
    if r == Round::Rn {
        return c;
    }
    let ord = if c.is_infinite() {
        Ordering::Less
    } else {
        x.cmp(&(c as i128))
    };
    direct64(c, ord, r)
}

/// f32 to an integer of `bits` bits (`signed` or not), rounded per `r`, saturating, NaN to 0;
/// the result's low `bits` bits.
pub fn f32_to_int(x: f32, r: RoundInt, signed: bool, bits: u32) -> u64 {
    f64_to_int(x as f64, r, signed, bits)
}

/// f64 to an integer, as [`f32_to_int`].
pub fn f64_to_int(x: f64, r: RoundInt, signed: bool, bits: u32) -> u64 {
    if x.is_nan() {
        return 0;
    }
    let v = round_f64_integral(x, r);
    let (lo, hi): (i128, i128) = if signed {
        (-(1i128 << (bits - 1)), (1i128 << (bits - 1)) - 1)
    } else {
        (0, (1i128 << bits) - 1)
    };
    let i = if v <= lo as f64 {
        lo
    } else if v >= hi as f64 {
        hi
    } else {
        v as i128
    };
    let mask = if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    };
    (i as u64) & mask
}

/// f32 rounded to an integral f32 (`cvt.rni.f32.f32` and friends).
pub fn round_f32_integral(x: f32, r: RoundInt) -> f32 {
    match r {
        RoundInt::Rni => x.round_ties_even(),
        RoundInt::Rzi => x.trunc(),
        RoundInt::Rmi => x.floor(),
        RoundInt::Rpi => x.ceil(),
    }
}

/// f64 rounded to an integral f64.
pub fn round_f64_integral(x: f64, r: RoundInt) -> f64 {
    match r {
        RoundInt::Rni => x.round_ties_even(),
        RoundInt::Rzi => x.trunc(),
        RoundInt::Rmi => x.floor(),
        RoundInt::Rpi => x.ceil(),
    }
}

/// `ex2.approx.ftz`: 2^x (subnormal input and output flushed).
pub fn ex2_approx(x: f32) -> f32 {
    ftz(ftz(x).exp2())
}

/// `rcp.approx`: 1/x.
pub fn rcp_approx(x: f32) -> f32 {
    1.0 / x
}

/// `rsqrt.approx`: 1/sqrt(x).
pub fn rsqrt_approx(x: f32) -> f32 {
    1.0 / x.sqrt()
}

/// `lg2.approx`: log2(x).
pub fn lg2_approx(x: f32) -> f32 {
    x.log2()
}

/// `sin.approx`.
pub fn sin_approx(x: f32) -> f32 {
    x.sin()
}

/// `cos.approx`.
pub fn cos_approx(x: f32) -> f32 {
    x.cos()
}

/// `tanh.approx`.
pub fn tanh_approx(x: f32) -> f32 {
    x.tanh()
}

/// PTX `min.f32`: the other operand when one is NaN; -0 below +0.
pub fn min_f32(a: f32, b: f32) -> f32 {
    if a.is_nan() {
        b
    } else if b.is_nan() || a < b || (a == b && a.is_sign_negative()) {
        a
    } else {
        b
    }
}

/// PTX `max.f32`: the other operand when one is NaN; +0 above -0.
pub fn max_f32(a: f32, b: f32) -> f32 {
    if a.is_nan() {
        b
    } else if b.is_nan() || a > b || (a == b && a.is_sign_positive()) {
        a
    } else {
        b
    }
}

/// `.sat`: clamp to [0, 1], NaN to 0.
pub fn sat(x: f32) -> f32 {
    if x.is_nan() {
        0.0
    } else {
        x.clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator of f32 values across magnitudes.
    fn values(n: usize) -> Vec<f32> {
        let mut s = 0x2545_f491_4f6c_dd1du64;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let m = (s >> 40) as f32 / (1u64 << 24) as f32 + 0.5;
                let e = ((s >> 8) % 40) as i32 - 20;
                let v = m * 2f32.powi(e);
                if s & 1 == 1 {
                    -v
                } else {
                    v
                }
            })
            .collect()
    }

    /// Checks `got` is the directed rounding of the exact value `t` (representable in f64).
    fn check(got: f32, t: f64, r: Round) {
        let g = got as f64;
        match r {
            Round::Rm => assert!(g <= t && (got.next_up() as f64) > t, "{got} vs {t}"),
            Round::Rp => assert!(g >= t && (got.next_down() as f64) < t, "{got} vs {t}"),
            Round::Rz => {
                assert!(g.abs() <= t.abs(), "{got} vs {t}");
                let away = if t >= 0.0 {
                    got.next_up()
                } else {
                    got.next_down()
                };
                assert!((away as f64).abs() > t.abs(), "{got} vs {t}");
            }
            Round::Rn => {}
        }
    }

    #[test]
    fn directed_add_mul_fma_are_exact() {
        let v = values(600);
        for w in v.windows(3) {
            let (a, b, c) = (w[0], w[1], w[2]);
            for r in [Round::Rz, Round::Rm, Round::Rp] {
                // Exponents stay within 40 of each other: these f64 results are exact.
                check(add_f32(a, b, r), a as f64 + b as f64, r);
                check(mul_f32(a, b, r), a as f64 * b as f64, r);
                let p = a as f64 * b as f64;
                let t = p + c as f64;
                if t - p == c as f64 && t - c as f64 == p {
                    check(fma_f32(a, b, c, r), t, r);
                }
            }
            assert_eq!(add_f32(a, b, Round::Rn), a + b);
        }
    }

    #[test]
    fn directed_rounding_known_values() {
        // 1 + 2^-30: down and toward zero give 1, up gives the next float.
        let tiny = 2f32.powi(-30);
        assert_eq!(add_f32(1.0, tiny, Round::Rz), 1.0);
        assert_eq!(add_f32(1.0, tiny, Round::Rp), 1.0f32.next_up());
        assert_eq!(add_f32(-1.0, -tiny, Round::Rm), -1.0f32.next_up());
        assert_eq!(add_f32(-1.0, -tiny, Round::Rz), -1.0);
        // roundf's add.rz of 0.49999997 + 0.5 stays below 1.
        assert_eq!(add_f32(0.49999997, 0.5, Round::Rz), 1.0f32.next_down());
        assert_eq!(add_f32(0.49999997, 0.5, Round::Rn), 1.0);
        assert!(add_f32(1.0, -1.0, Round::Rm).is_sign_negative());
        assert!(add_f32(1.0, -1.0, Round::Rz).is_sign_positive());
        assert_eq!(mul_f32(f32::MAX, 2.0, Round::Rz), f32::MAX);
        assert_eq!(mul_f32(f32::MAX, 2.0, Round::Rp), f32::INFINITY);
        // 1/3 rounds up to nearest: toward zero is one ulp below.
        assert_eq!(div_f32(1.0, 3.0, Round::Rz), (1.0f32 / 3.0).next_down());
        assert_eq!(div_f32(1.0, 3.0, Round::Rp), 1.0 / 3.0);
        assert!(div_f32(1.0, 3.0, Round::Rp) > div_f32(1.0, 3.0, Round::Rm));
    }

    #[test]
    fn conversions_round_and_saturate() {
        assert_eq!(f32_to_int(2.5, RoundInt::Rni, true, 32), 2);
        assert_eq!(f32_to_int(3.5, RoundInt::Rni, true, 32), 4);
        assert_eq!(f32_to_int(-2.7, RoundInt::Rzi, true, 32) as u32 as i32, -2);
        assert_eq!(f32_to_int(1e20, RoundInt::Rzi, true, 32), i32::MAX as u64);
        assert_eq!(
            f32_to_int(-1e20, RoundInt::Rzi, true, 32) as u32 as i32,
            i32::MIN
        );
        assert_eq!(f32_to_int(-5.0, RoundInt::Rzi, false, 32), 0);
        assert_eq!(f32_to_int(f32::NAN, RoundInt::Rni, true, 32), 0);
        assert_eq!(round_f32_integral(-2.5, RoundInt::Rni), -2.0);
        assert_eq!(int_to_f32(16_777_217, Round::Rz), 16_777_216.0);
        assert_eq!(int_to_f32(16_777_217, Round::Rp), 16_777_218.0);
        assert_eq!(f64_to_f32(1.0 + 1e-12, Round::Rp), 1.0f32.next_up());
        assert_eq!(f64_to_f32(1.0 + 1e-12, Round::Rn), 1.0);
        assert_eq!(
            f16_to_f32(f32_to_f16(1.0 + 1e-4, Round::Rp)),
            1.0 + 2f32.powi(-10)
        );
        assert_eq!(f16_to_f32(f32_to_f16(1.0 + 1e-4, Round::Rz)), 1.0);
        assert_eq!(
            bf16_to_f32(f32_to_bf16(1.0 + 1e-4, Round::Rp)),
            1.0 + 2f32.powi(-7)
        );
        assert_eq!(sat(f32::NAN), 0.0);
        assert!(min_f32(0.0, -0.0).is_sign_negative());
        assert_eq!(max_f32(f32::NAN, 2.0), 2.0);
    }
}
