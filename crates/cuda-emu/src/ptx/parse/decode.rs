//! One parsed instruction to an [`Op`]: operands to sources and destinations, every opcode
//! form the kernels use decoded, every modifier accounted for.

use super::*;

fn src(o: &Opnd, ty: Ty, k: &KernelCtx) -> Result<Src, String> {
    match o {
        Opnd::Reg(r) => Ok(Src::Reg(*r)),
        Opnd::Not(r) => Ok(Src::Not(*r)),
        Opnd::Imm(v, f) => match (ty, f) {
            (Ty::F32, 32) | (Ty::F64, 64) => Ok(Src::Imm(*v)),
            (Ty::F32, 65) => Ok(Src::Imm((f64::from_bits(*v) as f32).to_bits() as u64)),
            (Ty::F64, 65) => Ok(Src::Imm(*v)),
            (Ty::F32 | Ty::F64, _) => Err(format!("a non-float immediate for a .{ty:?} operand")),
            (_, 0) => Ok(Src::Imm(*v)),
            (_, _) => Err("a float immediate for an integer operand".into()),
        },
        Opnd::Label(n) => match k.sym(n) {
            Some(a) if ty.int() => Ok(Src::Imm(a)),
            Some(_) => Err(format!("the address of {n} as a .{ty:?} operand")),
            None => Err(format!("unknown name {n}")),
        },
        _ => Err(format!("unsupported operand form {o:?}")),
    }
}

fn dst(o: &Opnd) -> Result<u16, String> {
    match o {
        Opnd::Reg(r) if *r as usize >= FIRST_REG => Ok(*r),
        Opnd::Reg(_) => Err("a special register as a destination".into()),
        _ => Err(format!("unsupported destination form {o:?}")),
    }
}

fn nops(r: &RawInstr, n: usize) -> Result<(), String> {
    if r.operands.len() != n {
        Err(format!(
            "{} takes {} operands, found {}",
            r.opcode,
            n,
            r.operands.len()
        ))
    } else {
        Ok(())
    }
}

fn one_ty(m: &mut Mods, what: &str) -> Result<Ty, String> {
    let t = m.types();
    if t.len() != 1 {
        return Err(format!("{what} needs exactly one type"));
    }
    Ok(t[0])
}

macro_rules! width {
    ($ty:expr, $f:ident) => {
        match $ty.bits() {
            1 => ops::$f::<1> as AluFn,
            8 => ops::$f::<8> as AluFn,
            16 => ops::$f::<16> as AluFn,
            32 => ops::$f::<32> as AluFn,
            _ => ops::$f::<64> as AluFn,
        }
    };
}

/// An ALU op with sources taken from operands 1.. (destination operand 0).
fn alu(r: &RawInstr, k: &KernelCtx, f: AluFn, ty: Ty, n: usize) -> Result<(AluFn, Alu), String> {
    nops(r, n + 1)?;
    let mut x = Alu::new(dst(&r.operands[0])?);
    for j in 0..n {
        x.s[j] = src(&r.operands[j + 1], ty, k)?;
    }
    Ok((f, x))
}

pub(super) fn decode(r: &RawInstr, k: &KernelCtx) -> Result<Op, String> {
    let mut parts = r.opcode.split('.');
    let base = parts.next().unwrap_or("");
    let mut m = Mods::new(parts.collect());
    let op = decode_inner(base, &mut m, r, k)?;
    m.done()?;
    Ok(op)
}

fn decode_inner(base: &str, m: &mut Mods, r: &RawInstr, k: &KernelCtx) -> Result<Op, String> {
    let o = &r.operands;
    let int_only = |ty: Ty| -> Result<(), String> {
        if ty.int() {
            Ok(())
        } else {
            Err(format!("{base} on .{ty:?} is not supported"))
        }
    };
    let (f, mut x) = match base {
        "mov" => {
            let ty = one_ty(m, "mov")?;
            nops(r, 2)?;
            if let Opnd::Vec(v) = &o[1] {
                let n = v.len();
                if !(n == 2 || n == 4) || ty.bits() % n as u32 != 0 || !ty.int() {
                    return Err("unsupported vector mov".into());
                }
                let mut s = [Src::Imm(0); 4];
                for (i, e) in v.iter().enumerate() {
                    s[i] = src(e, Ty::B(32), k)?;
                }
                return Ok(Op::Pack {
                    d: dst(&o[0])?,
                    s,
                    n: n as u8,
                    bits: (ty.bits() / n as u32) as u8,
                });
            }
            if let Opnd::Vec(v) = &o[0] {
                let n = v.len();
                if !(n == 2 || n == 4) || ty.bits() % n as u32 != 0 || !ty.int() {
                    return Err("unsupported vector mov".into());
                }
                let mut d = [u16::MAX; 4];
                for (i, e) in v.iter().enumerate() {
                    d[i] = if matches!(e, Opnd::Sink) {
                        u16::MAX
                    } else {
                        dst(e)?
                    };
                }
                return Ok(Op::Unpack {
                    d,
                    a: src(&o[1], Ty::B(64), k)?,
                    n: n as u8,
                    bits: (ty.bits() / n as u32) as u8,
                });
            }
            let f = match ty {
                Ty::F32 => ops::mov::<32> as AluFn,
                Ty::F64 => ops::mov::<64>,
                Ty::F16 | Ty::BF16 => ops::mov::<16>,
                Ty::F16x2 | Ty::BF16x2 => ops::mov::<32>,
                _ => width!(ty, mov),
            };
            alu(r, k, f, ty, 1)?
        }
        "add" | "sub" => {
            let ty = one_ty(m, base)?;
            let add = base == "add";
            match ty {
                Ty::F32 | Ty::F64 => {
                    let rnd = m.rnd();
                    let (ftz, sat) = (m.has("ftz"), m.has("sat"));
                    if ty == Ty::F64 && (ftz || sat) {
                        return Err(".ftz/.sat on f64".into());
                    }
                    let f: AluFn = match (ty, add) {
                        (Ty::F32, true) => ops::add_f32,
                        (Ty::F32, false) => ops::sub_f32,
                        (_, true) => ops::add_f64,
                        _ => ops::sub_f64,
                    };
                    let (f, mut x) = alu(r, k, f, ty, 2)?;
                    x.rnd = rnd.unwrap_or(Round::Rn);
                    x.ftz = ftz;
                    x.sat = sat;
                    (f, x)
                }
                _ => {
                    int_only(ty)?;
                    if m.has("sat") {
                        if ty != Ty::S(32) {
                            return Err(".sat needs .s32".into());
                        }
                        alu(
                            r,
                            k,
                            if add {
                                ops::add_sat_s32
                            } else {
                                ops::sub_sat_s32
                            },
                            ty,
                            2,
                        )?
                    } else if add {
                        alu(r, k, width!(ty, add), ty, 2)?
                    } else {
                        alu(r, k, width!(ty, sub), ty, 2)?
                    }
                }
            }
        }
        "mul" | "mad" => {
            let ty = one_ty(m, base)?;
            let mad = base == "mad";
            let n = if mad { 3 } else { 2 };
            match ty {
                Ty::F32 | Ty::F64 => {
                    let rnd = m.rnd();
                    let (ftz, sat) = (m.has("ftz"), m.has("sat"));
                    if ty == Ty::F64 && (ftz || sat) {
                        return Err(".ftz/.sat on f64".into());
                    }
                    if mad && rnd.is_none() {
                        return Err("mad on floats needs a rounding modifier".into());
                    }
                    let f: AluFn = match (ty, mad) {
                        (Ty::F32, false) => ops::mul_f32,
                        (Ty::F32, true) => ops::fma_f32,
                        (_, false) => ops::mul_f64,
                        _ => ops::fma_f64,
                    };
                    let (f, mut x) = alu(r, k, f, ty, n)?;
                    x.rnd = rnd.unwrap_or(Round::Rn);
                    x.ftz = ftz;
                    x.sat = sat;
                    (f, x)
                }
                _ => {
                    int_only(ty)?;
                    let signed = matches!(ty, Ty::S(_));
                    let mode = m
                        .one(&["lo", "hi", "wide"])
                        .ok_or("mul/mad needs .lo, .hi or .wide")?;
                    if mad && m.has("sat") {
                        return Err("mad.sat is not supported".into());
                    }
                    let f = match (mode, mad, signed) {
                        ("lo", false, _) => width!(ty, mul_lo),
                        ("lo", true, _) => width!(ty, mad_lo),
                        ("hi", false, false) => width!(ty, mul_hi_u),
                        ("hi", false, true) => width!(ty, mul_hi_s),
                        ("hi", true, false) => width!(ty, mad_hi_u),
                        ("hi", true, true) => width!(ty, mad_hi_s),
                        (_, _, _) => {
                            if ty.bits() > 32 {
                                return Err(".wide needs a 16- or 32-bit type".into());
                            }
                            match (mad, signed) {
                                (false, false) => width!(ty, mul_wide_u),
                                (false, true) => width!(ty, mul_wide_s),
                                (true, false) => width!(ty, mad_wide_u),
                                (true, true) => width!(ty, mad_wide_s),
                            }
                        }
                    };
                    alu(r, k, f, ty, n)?
                }
            }
        }
        "fma" => {
            let ty = one_ty(m, base)?;
            let rnd = m.rnd().ok_or("fma needs a rounding modifier")?;
            let (ftz, sat) = (m.has("ftz"), m.has("sat"));
            let f: AluFn = match ty {
                Ty::F32 => ops::fma_f32,
                Ty::F64 if !ftz && !sat => ops::fma_f64,
                _ => return Err(format!("fma on .{ty:?}")),
            };
            let (f, mut x) = alu(r, k, f, ty, 3)?;
            x.rnd = rnd;
            x.ftz = ftz;
            x.sat = sat;
            (f, x)
        }
        "div" => {
            let ty = one_ty(m, base)?;
            match ty {
                Ty::F32 => {
                    let approx = m.has("approx");
                    let full = m.has("full");
                    let rnd = m.rnd();
                    let ftz = m.has("ftz");
                    let f: AluFn = match (approx, full, rnd) {
                        (true, false, None) => ops::div_approx_f32,
                        // div.full: within 2 ulp; the correctly rounded quotient is that.
                        (false, true, None) => ops::div_f32,
                        (false, false, Some(_)) => ops::div_f32,
                        _ => {
                            return Err(
                                "div.f32 needs one of .approx, .full, .rn/.rz/.rm/.rp".into()
                            )
                        }
                    };
                    let (f, mut x) = alu(r, k, f, ty, 2)?;
                    x.rnd = rnd.unwrap_or(Round::Rn);
                    x.ftz = ftz;
                    (f, x)
                }
                Ty::F64 => {
                    let rnd = m.rnd().ok_or("div.f64 needs a rounding modifier")?;
                    let (f, mut x) = alu(r, k, ops::div_f64, ty, 2)?;
                    x.rnd = rnd;
                    (f, x)
                }
                _ => {
                    int_only(ty)?;
                    let f = if matches!(ty, Ty::S(_)) {
                        width!(ty, div_s)
                    } else {
                        width!(ty, div_u)
                    };
                    alu(r, k, f, ty, 2)?
                }
            }
        }
        "rem" => {
            let ty = one_ty(m, base)?;
            int_only(ty)?;
            let f = if matches!(ty, Ty::S(_)) {
                width!(ty, rem_s)
            } else {
                width!(ty, rem_u)
            };
            alu(r, k, f, ty, 2)?
        }
        "min" | "max" | "abs" | "neg" => {
            let ty = one_ty(m, base)?;
            let n = if base == "min" || base == "max" { 2 } else { 1 };
            match ty {
                Ty::F32 => {
                    let ftz = m.has("ftz");
                    let f: AluFn = match base {
                        "min" => ops::min_f32,
                        "max" => ops::max_f32,
                        "abs" => ops::abs_f32,
                        _ => ops::neg_f32,
                    };
                    let (f, mut x) = alu(r, k, f, ty, n)?;
                    x.ftz = ftz;
                    (f, x)
                }
                Ty::F64 => {
                    let f: AluFn = match base {
                        "min" => ops::min_f64,
                        "max" => ops::max_f64,
                        "abs" => ops::abs_f64,
                        _ => ops::neg_f64,
                    };
                    alu(r, k, f, ty, n)?
                }
                _ => {
                    int_only(ty)?;
                    let s = matches!(ty, Ty::S(_));
                    let f = match (base, s) {
                        ("min", false) => width!(ty, min_u),
                        ("min", true) => width!(ty, min_s),
                        ("max", false) => width!(ty, max_u),
                        ("max", true) => width!(ty, max_s),
                        ("abs", true) => width!(ty, abs_s),
                        ("neg", true) => width!(ty, neg_s),
                        _ => return Err(format!("{base} needs a signed type")),
                    };
                    alu(r, k, f, ty, n)?
                }
            }
        }
        "and" | "or" | "xor" | "not" | "cnot" | "popc" | "clz" | "brev" => {
            let ty = one_ty(m, base)?;
            if !matches!(ty, Ty::B(_) | Ty::Pred) {
                return Err(format!("{base} needs a .b or .pred type"));
            }
            if ty == Ty::Pred && !matches!(base, "and" | "or" | "xor" | "not") {
                return Err(format!("{base}.pred"));
            }
            let (f, n) = match base {
                "and" => (width!(ty, and), 2),
                "or" => (width!(ty, or), 2),
                "xor" => (width!(ty, xor), 2),
                "not" => (width!(ty, not), 1),
                "cnot" => (width!(ty, cnot), 1),
                "popc" => (width!(ty, popc), 1),
                "clz" => (width!(ty, clz), 1),
                _ => (width!(ty, brev), 1),
            };
            alu(r, k, f, ty, n)?
        }
        "shl" | "shr" => {
            let ty = one_ty(m, base)?;
            int_only(ty)?;
            let f = match (base, ty) {
                ("shl", _) => width!(ty, shl),
                (_, Ty::S(_)) => width!(ty, shr_s),
                _ => width!(ty, shr_u),
            };
            nops(r, 3)?;
            let mut x = Alu::new(dst(&o[0])?);
            x.s[0] = src(&o[1], ty, k)?;
            x.s[1] = src(&o[2], Ty::U(32), k)?;
            (f, x)
        }
        "bfe" => {
            let ty = one_ty(m, base)?;
            let f = match ty {
                Ty::U(32) => ops::bfe_u::<32> as AluFn,
                Ty::U(64) => ops::bfe_u::<64>,
                Ty::S(32) => ops::bfe_s::<32>,
                Ty::S(64) => ops::bfe_s::<64>,
                _ => return Err("bfe needs .u32/.u64/.s32/.s64".into()),
            };
            alu(r, k, f, ty, 3)?
        }
        "bfi" => {
            let ty = one_ty(m, base)?;
            let f = match ty {
                Ty::B(32) => ops::bfi::<32> as AluFn,
                Ty::B(64) => ops::bfi::<64>,
                _ => return Err("bfi needs .b32/.b64".into()),
            };
            alu(r, k, f, ty, 4)?
        }
        "prmt" => {
            let ty = one_ty(m, base)?;
            if ty != Ty::B(32) {
                return Err("prmt needs .b32".into());
            }
            alu(r, k, ops::prmt, ty, 3)?
        }
        "dp4a" | "dp2a" => {
            let t = m.types();
            let hi = if base == "dp2a" {
                match m.one(&["lo", "hi"]) {
                    Some("hi") => true,
                    Some(_) => false,
                    None => return Err("dp2a needs .lo or .hi".into()),
                }
            } else {
                false
            };
            if t.len() != 2 || !t.iter().all(|t| matches!(t, Ty::U(32) | Ty::S(32))) {
                return Err(format!("{base} needs two of .u32/.s32"));
            }
            let (f, mut x) = alu(
                r,
                k,
                if base == "dp4a" { ops::dp4a } else { ops::dp2a },
                Ty::U(32),
                3,
            )?;
            x.aux =
                (t[0] == Ty::S(32)) as u32 | ((t[1] == Ty::S(32)) as u32) << 1 | (hi as u32) << 2;
            (f, x)
        }
        "selp" => {
            let ty = one_ty(m, base)?;
            let f = match ty {
                Ty::F32 => ops::selp::<32> as AluFn,
                Ty::F64 => ops::selp::<64>,
                Ty::F16 | Ty::BF16 => ops::selp::<16>,
                _ if ty.int() => width!(ty, selp),
                _ => return Err(format!("selp.{ty:?}")),
            };
            nops(r, 4)?;
            let mut x = Alu::new(dst(&o[0])?);
            x.s[0] = src(&o[1], ty, k)?;
            x.s[1] = src(&o[2], ty, k)?;
            x.s[2] = src(&o[3], Ty::Pred, k)?;
            (f, x)
        }
        "setp" => {
            let cmps = [
                "eq", "ne", "lt", "le", "gt", "ge", "lo", "ls", "hi", "hs", "equ", "neu", "ltu",
                "leu", "gtu", "geu", "num", "nan",
            ];
            let c = m.one(&cmps).ok_or("setp needs a comparison")?;
            let bop = m.one(&["and", "or", "xor"]);
            let ftz = m.has("ftz");
            let ty = one_ty(m, base)?;
            let code = match c {
                "eq" => ops::EQ,
                "ne" => ops::NE,
                "lt" | "lo" => ops::LT,
                "le" | "ls" => ops::LE,
                "gt" | "hi" => ops::GT,
                "ge" | "hs" => ops::GE,
                "equ" => ops::EQ | ops::U,
                "neu" => ops::NE | ops::U,
                "ltu" => ops::LT | ops::U,
                "leu" => ops::LE | ops::U,
                "gtu" => ops::GT | ops::U,
                "geu" => ops::GE | ops::U,
                "num" => ops::NUM,
                _ => ops::NAN,
            };
            let float = matches!(ty, Ty::F32 | Ty::F64);
            if !float && (code >= ops::U || ftz) {
                return Err(format!("setp.{c} on an integer type"));
            }
            if float && matches!(c, "lo" | "ls" | "hi" | "hs") {
                return Err(format!("setp.{c} on a float type"));
            }
            let f = match ty {
                Ty::F32 => ops::setp_f32 as AluFn,
                Ty::F64 if !ftz => ops::setp_f64,
                Ty::S(_) => width!(ty, setp_s),
                Ty::U(_) | Ty::B(_) => width!(ty, setp_u),
                _ => return Err(format!("setp.{ty:?}")),
            };
            if matches!(o.first(), Some(Opnd::Pair(..))) {
                return Err("setp with two destinations (p|q) is not supported".into());
            }
            let n = if bop.is_some() { 3 } else { 2 };
            nops(r, n + 1)?;
            let mut x = Alu::new(dst(&o[0])?);
            x.s[0] = src(&o[1], ty, k)?;
            x.s[1] = src(&o[2], ty, k)?;
            if bop.is_some() {
                x.s[2] = src(&o[3], Ty::Pred, k)?;
            }
            x.aux = code;
            x.aux2 = match bop {
                None => 0,
                Some("and") => 1,
                Some("or") => 2,
                _ => 3,
            };
            x.ftz = ftz;
            (f, x)
        }
        "cvt" => {
            let irnd = m.irnd();
            let rnd = m.rnd();
            let ftz = m.has("ftz");
            let sat = m.has("sat");
            let t = m.types();
            if t.len() != 2 {
                return Err("cvt needs two types".into());
            }
            let code = |t: Ty| -> Result<u32, String> {
                Ok(match t {
                    Ty::U(b) | Ty::B(b) => tc::U | b,
                    Ty::S(b) => tc::S | b,
                    Ty::F16 => tc::F16 | 16,
                    Ty::BF16 => tc::BF16 | 16,
                    Ty::F32 => tc::F32 | 32,
                    Ty::F64 => tc::F64 | 64,
                    _ => return Err(format!("cvt with .{t:?}")),
                })
            };
            let (dt, st) = (t[0], t[1]);
            let (dc, sc) = (code(dt)?, code(st)?);
            let dint = dt.int();
            let sint = st.int();
            let df = !dint;
            let sf = !sint;
            // Which rounding each pair needs.
            let ok = match (dint, sint) {
                (true, true) => irnd.is_none() && rnd.is_none(),
                (true, false) => irnd.is_some() && rnd.is_none(),
                (false, true) => rnd.is_some() && irnd.is_none() && matches!(dt, Ty::F32 | Ty::F64),
                (false, false) => {
                    let narrowing = dt.bits() < st.bits();
                    if dt == st {
                        rnd.is_none()
                    } else if narrowing {
                        rnd.is_some()
                            && irnd.is_none()
                            && !(matches!(dt, Ty::F16 | Ty::BF16) && st == Ty::F64)
                    } else {
                        rnd.is_none() && irnd.is_none()
                    }
                }
            };
            if !ok || (ftz && !(st == Ty::F32 || dt == Ty::F32)) {
                return Err(format!("unsupported cvt form (.{dt:?} from .{st:?})"));
            }
            let _ = sf;
            // The frequent forms get their own lane loops.
            let f: AluFn = match (dt, st) {
                _ if ftz || sat || irnd.is_some() => ops::cvt,
                (Ty::U(d) | Ty::S(d) | Ty::B(d), Ty::U(s) | Ty::S(s) | Ty::B(s)) => {
                    let sg = matches!(st, Ty::S(_));
                    macro_rules! ii {
                        ($($d:literal),*) => {
                            match (d, s, sg) {
                                $(($d, 8, false) => ops::cvt_ii::<$d, 8, false>,
                                ($d, 8, true) => ops::cvt_ii::<$d, 8, true>,
                                ($d, 16, false) => ops::cvt_ii::<$d, 16, false>,
                                ($d, 16, true) => ops::cvt_ii::<$d, 16, true>,
                                ($d, 32, false) => ops::cvt_ii::<$d, 32, false>,
                                ($d, 32, true) => ops::cvt_ii::<$d, 32, true>,
                                ($d, _, _) => ops::cvt_ii::<$d, 64, false>,)*
                                _ => ops::cvt,
                            }
                        };
                    }
                    ii!(8, 16, 32, 64)
                }
                (Ty::F32, Ty::U(16) | Ty::B(16)) => ops::cvt_f32_i::<16, false>,
                (Ty::F32, Ty::S(16)) => ops::cvt_f32_i::<16, true>,
                (Ty::F32, Ty::U(32) | Ty::B(32)) => ops::cvt_f32_i::<32, false>,
                (Ty::F32, Ty::S(32)) => ops::cvt_f32_i::<32, true>,
                (Ty::F32, Ty::F16) => ops::cvt_f32_f16,
                _ => ops::cvt,
            };
            let (f, mut x) = alu(r, k, f, st, 1)?;
            x.aux = dc;
            x.aux2 = sc
                | if irnd.is_some() && df {
                    ops::CVT_IRND
                } else {
                    0
                };
            x.rnd = rnd.unwrap_or(Round::Rn);
            x.irnd = irnd.unwrap_or(RoundInt::Rzi);
            x.ftz = ftz;
            x.sat = sat;
            (f, x)
        }
        "cvta" => {
            let to = m.has("to");
            let space = m
                .one(&["global", "shared", "local", "const", "param"])
                .ok_or("cvta needs a space")?;
            let ty = one_ty(m, base)?;
            if ty != Ty::U(64) {
                return Err("cvta needs .u64".into());
            }
            let (f, mut x) = alu(r, k, ops::cvta, ty, 1)?;
            match space {
                "global" => x.aux = 0,
                "shared" => x.aux = (SHARED_WINDOW >> 32) as u32,
                "local" => x.aux = (LOCAL_WINDOW >> 32) as u32,
                _ => return Err(format!("cvta of .{space}")),
            }
            x.aux2 = to as u32;
            (f, x)
        }
        "sqrt" | "rcp" | "rsqrt" | "ex2" | "lg2" | "sin" | "cos" | "tanh" => {
            let approx = m.has("approx");
            let rnd = m.rnd();
            let ftz = m.has("ftz");
            let ty = one_ty(m, base)?;
            let f: AluFn = match (base, ty, approx, rnd) {
                ("sqrt", Ty::F32, false, Some(_)) => ops::sqrt_f32,
                ("sqrt", Ty::F32, true, None) => ops::sqrt_f32,
                ("sqrt", Ty::F64, false, Some(Round::Rn)) if !ftz => ops::sqrt_f64,
                ("rcp", Ty::F32, false, Some(_)) => ops::rcp_f32,
                ("rcp", Ty::F32, true, None) => ops::rcp_approx_f32,
                ("rcp", Ty::F64, false, Some(_)) if !ftz => ops::rcp_f64,
                ("rsqrt", Ty::F32, true, None) => ops::rsqrt_approx_f32,
                ("ex2", Ty::F32, true, None) => ops::ex2_approx_f32,
                ("lg2", Ty::F32, true, None) => ops::lg2_approx_f32,
                ("sin", Ty::F32, true, None) => ops::sin_approx_f32,
                ("cos", Ty::F32, true, None) => ops::cos_approx_f32,
                ("tanh", Ty::F32, true, None) => ops::tanh_approx_f32,
                _ => return Err(format!("unsupported {base} form")),
            };
            let (f, mut x) = alu(r, k, f, ty, 1)?;
            x.rnd = rnd.unwrap_or(Round::Rn);
            x.ftz = ftz;
            (f, x)
        }
        "ld" | "st" => return decode_mem(base, m, r, k),
        "bra" => {
            m.has("uni");
            nops(r, 1)?;
            let Opnd::Label(l) = &o[0] else {
                return Err("bra needs a label".into());
            };
            let t = *k
                .labels
                .get(l)
                .ok_or_else(|| format!("unknown label {l}"))?;
            return Ok(Op::Bra(t));
        }
        "ret" | "exit" => {
            m.has("uni");
            nops(r, 0)?;
            return Ok(Op::Exit);
        }
        "bar" | "barrier" => {
            if !m.has("sync") {
                m.has("aligned");
                return Err(format!("{base} without .sync is not supported"));
            }
            m.has("aligned");
            if o.len() != 1 {
                return Err("bar.sync with a thread count is not supported".into());
            }
            match &o[0] {
                Opnd::Imm(0, 0) => {}
                _ => return Err("bar.sync other than barrier 0 is not supported".into()),
            }
            return Ok(Op::Bar);
        }
        "shfl" => {
            if !m.has("sync") {
                return Err("shfl without .sync is not supported".into());
            }
            let mode = match m.one(&["up", "down", "bfly", "idx"]) {
                Some("up") => ShflMode::Up,
                Some("down") => ShflMode::Down,
                Some("bfly") => ShflMode::Bfly,
                Some(_) => ShflMode::Idx,
                None => return Err("shfl needs a mode".into()),
            };
            let ty = one_ty(m, base)?;
            if ty != Ty::B(32) {
                return Err("shfl needs .b32".into());
            }
            nops(r, 5)?;
            let (d, p) = match &o[0] {
                Opnd::Pair(d, p) => (*d, Some(*p)),
                other => (dst(other)?, None),
            };
            return Ok(Op::Shfl {
                mode,
                d,
                p,
                a: src(&o[1], ty, k)?,
                b: src(&o[2], ty, k)?,
                c: src(&o[3], ty, k)?,
                mask: src(&o[4], ty, k)?,
            });
        }
        "vote" => {
            if !m.has("sync") {
                return Err("vote without .sync is not supported".into());
            }
            let mode = match m.one(&["all", "any", "uni", "ballot"]) {
                Some("all") => VoteMode::All,
                Some("any") => VoteMode::Any,
                Some("uni") => VoteMode::Uni,
                Some(_) => VoteMode::Ballot,
                None => return Err("vote needs a mode".into()),
            };
            let ty = one_ty(m, base)?;
            if (mode == VoteMode::Ballot) != (ty == Ty::B(32)) {
                return Err("vote.sync type".into());
            }
            nops(r, 3)?;
            return Ok(Op::Vote {
                mode,
                d: dst(&o[0])?,
                a: src(&o[1], Ty::Pred, k)?,
                mask: src(&o[2], Ty::B(32), k)?,
            });
        }
        "call" => return Err("call is not supported (no device functions)".into()),
        _ => return Err(format!("unsupported opcode {}", r.opcode)),
    };
    let _ = &mut x;
    Ok(Op::Alu(f, x))
}

fn decode_mem(base: &str, m: &mut Mods, r: &RawInstr, k: &KernelCtx) -> Result<Op, String> {
    let space = match m.one(&["global", "shared", "local", "param", "const"]) {
        Some("global") => Space::Global,
        Some("shared") => Space::Shared,
        Some("local") => Space::Local,
        Some("param") => Space::Param,
        Some(s) => return Err(format!("{base}.{s} is not supported")),
        None => Space::Generic,
    };
    if space == Space::Global && base == "ld" {
        m.has("nc");
    }
    m.has("volatile");
    // Cache operators: hints without effect on results.
    m.one(&["ca", "cg", "cs", "lu", "cv", "wb", "wt"]);
    let n = match m.one(&["v2", "v4"]) {
        Some("v2") => 2,
        Some("v4") => 4,
        _ => 1,
    };
    let ty = one_ty(m, base)?;
    let size = match ty {
        Ty::Pred => return Err(format!("{base}.pred")),
        t => (t.bits() / 8) as u8,
    };
    let signed = matches!(ty, Ty::S(_));
    nops(r, 2)?;
    let (mo, vo) = if base == "ld" {
        (&r.operands[1], &r.operands[0])
    } else {
        (&r.operands[0], &r.operands[1])
    };
    let Opnd::Mem(b, sym, off) = mo else {
        return Err("expected an address operand [..]".into());
    };
    let off = match sym {
        Some(n) => k
            .sym(n)
            .ok_or_else(|| format!("unknown name {n} in an address"))?
            .wrapping_add(*off),
        None => *off,
    };
    let elems: Vec<Opnd> = match vo {
        Opnd::Vec(v) => v.clone(),
        other => vec![other.clone()],
    };
    if elems.len() != n {
        return Err(format!("{base} needs {n} value operand(s)"));
    }
    let mut regs = [Src::Imm(0); 4];
    for (i, e) in elems.iter().enumerate() {
        regs[i] = if base == "ld" {
            if matches!(e, Opnd::Sink) {
                Src::Imm(0)
            } else {
                Src::Reg(dst(e)?)
            }
        } else {
            src(e, ty, k)?
        };
    }
    let x = MemOp {
        space,
        size,
        n: n as u8,
        signed,
        regs,
        base: *b,
        off,
    };
    Ok(if base == "ld" { Op::Ld(x) } else { Op::St(x) })
}
