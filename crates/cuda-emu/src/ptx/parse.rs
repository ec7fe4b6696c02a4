//! PTX text to decoded kernels: a lexer, a parser of the module's directives and kernel bodies,
//! and the decoder of each instruction into an [`Op`] (every modifier accounted for).

use std::collections::HashMap;

use super::exec::{
    Alu, AluFn, Code, Instr, MemOp, Op, ShflMode, Space, Src, VoteMode, FIRST_REG, LOCAL_WINDOW,
    SHARED_WINDOW, SPECIALS,
};
use super::float::{Round, RoundInt};
use super::ops::{self, tc};
use super::Param;

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Id(String),
    Num(String),
    Str,
    P(char),
}

#[derive(Clone, Debug)]
struct Token {
    t: Tok,
    line: u32,
    start: usize,
    end: usize,
}

fn is_id_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || matches!(c, b'_' | b'$' | b'%' | b'.')
}

fn is_id(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'$' | b'%' | b'.')
}

fn lex(text: &str) -> Result<Vec<Token>, String> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let mut line = 1u32;
    while i < b.len() {
        let c = b[i];
        if c == b'\n' {
            line += 1;
            i += 1;
        } else if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i < b.len() && !(b[i] == b'*' && b.get(i + 1) == Some(&b'/')) {
                if b[i] == b'\n' {
                    line += 1;
                }
                i += 1;
            }
            i += 2;
        } else if c == b'@' && b.get(i + 1) == Some(&b'@') {
            // @@DWARF lines.
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'"' {
            let s = i;
            i += 1;
            while i < b.len() && b[i] != b'"' && b[i] != b'\n' {
                i += 1;
            }
            i += 1;
            out.push(Token {
                t: Tok::Str,
                line,
                start: s,
                end: i.min(b.len()),
            });
        } else if is_id_start(c) {
            let s = i;
            while i < b.len() {
                if is_id(b[i]) {
                    i += 1;
                } else if b[i] == b':'
                    && b.get(i + 1) == Some(&b':')
                    && b.get(i + 2).is_some_and(|&c| is_id(c))
                {
                    i += 2;
                } else {
                    break;
                }
            }
            out.push(Token {
                t: Tok::Id(text[s..i].to_string()),
                line,
                start: s,
                end: i,
            });
        } else if c.is_ascii_digit() {
            let s = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                // Exponent signs: 1e-5.
                i += 1;
                if i < b.len()
                    && matches!(b[i], b'+' | b'-')
                    && matches!(b[i - 1], b'e' | b'E')
                    && !text[s..i].starts_with("0x")
                    && !text[s..i].starts_with("0f")
                    && !text[s..i].starts_with("0d")
                    && !text[s..i].starts_with("0F")
                    && !text[s..i].starts_with("0D")
                {
                    i += 1;
                }
            }
            out.push(Token {
                t: Tok::Num(text[s..i].to_string()),
                line,
                start: s,
                end: i,
            });
        } else if b"{}()[],;:+-|!@<>=".contains(&c) {
            out.push(Token {
                t: Tok::P(c as char),
                line,
                start: i,
                end: i + 1,
            });
            i += 1;
        } else {
            return Err(format!("line {line}: unexpected character {:?}", c as char));
        }
    }
    Ok(out)
}

fn parse_int(s: &str) -> Option<u64> {
    let s = s.strip_suffix('U').unwrap_or(s);
    if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()
    } else if let Some(h) = s.strip_prefix("0b").or_else(|| s.strip_prefix("0B")) {
        u64::from_str_radix(h, 2).ok()
    } else if s.len() > 1 && s.starts_with('0') {
        u64::from_str_radix(&s[1..], 8).ok()
    } else {
        s.parse::<u64>().ok()
    }
}

/// An immediate: integer, `0f` f32 bits or `0d` f64 bits. Returns (bits, is_float_literal).
fn parse_num(s: &str) -> Option<(u64, u8)> {
    if let Some(h) = s.strip_prefix("0f").or_else(|| s.strip_prefix("0F")) {
        if h.len() == 8 {
            return u32::from_str_radix(h, 16).ok().map(|v| (v as u64, 32));
        }
    }
    if let Some(h) = s.strip_prefix("0d").or_else(|| s.strip_prefix("0D")) {
        if h.len() == 16 {
            return u64::from_str_radix(h, 16).ok().map(|v| (v, 64));
        }
    }
    if let Some(v) = parse_int(s) {
        return Some((v, 0));
    }
    // A decimal float literal: f64 bits.
    s.parse::<f64>().ok().map(|v| (v.to_bits(), 65))
}

/// A data type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ty {
    B(u32),
    U(u32),
    S(u32),
    F16,
    F16x2,
    BF16,
    BF16x2,
    F32,
    F64,
    Pred,
}

impl Ty {
    fn parse(s: &str) -> Option<Ty> {
        Some(match s {
            "b8" => Ty::B(8),
            "b16" => Ty::B(16),
            "b32" => Ty::B(32),
            "b64" => Ty::B(64),
            "u8" => Ty::U(8),
            "u16" => Ty::U(16),
            "u32" => Ty::U(32),
            "u64" => Ty::U(64),
            "s8" => Ty::S(8),
            "s16" => Ty::S(16),
            "s32" => Ty::S(32),
            "s64" => Ty::S(64),
            "f16" => Ty::F16,
            "f16x2" => Ty::F16x2,
            "bf16" => Ty::BF16,
            "bf16x2" => Ty::BF16x2,
            "f32" => Ty::F32,
            "f64" => Ty::F64,
            "pred" => Ty::Pred,
            _ => return None,
        })
    }

    fn bits(self) -> u32 {
        match self {
            Ty::B(b) | Ty::U(b) | Ty::S(b) => b,
            Ty::F16 | Ty::BF16 => 16,
            Ty::F16x2 | Ty::BF16x2 | Ty::F32 => 32,
            Ty::F64 => 64,
            Ty::Pred => 1,
        }
    }

    fn int(self) -> bool {
        matches!(self, Ty::B(_) | Ty::U(_) | Ty::S(_))
    }
}

/// The modifiers of one opcode, each to be consumed by the decoder.
struct Mods<'a> {
    items: Vec<&'a str>,
    used: Vec<bool>,
}

impl<'a> Mods<'a> {
    fn new(items: Vec<&'a str>) -> Mods<'a> {
        let used = vec![false; items.len()];
        Mods { items, used }
    }

    fn has(&mut self, m: &str) -> bool {
        for (i, it) in self.items.iter().enumerate() {
            if !self.used[i] && *it == m {
                self.used[i] = true;
                return true;
            }
        }
        false
    }

    fn one(&mut self, set: &[&'a str]) -> Option<&'a str> {
        for (i, it) in self.items.iter().enumerate() {
            if !self.used[i] && set.contains(it) {
                self.used[i] = true;
                return Some(self.items[i]);
            }
        }
        None
    }

    fn types(&mut self) -> Vec<Ty> {
        let mut v = Vec::new();
        for (i, it) in self.items.iter().enumerate() {
            if !self.used[i] {
                if let Some(t) = Ty::parse(it) {
                    self.used[i] = true;
                    v.push(t);
                }
            }
        }
        v
    }

    fn rnd(&mut self) -> Option<Round> {
        self.one(&["rn", "rz", "rm", "rp"]).map(|r| match r {
            "rn" => Round::Rn,
            "rz" => Round::Rz,
            "rm" => Round::Rm,
            _ => Round::Rp,
        })
    }

    fn irnd(&mut self) -> Option<RoundInt> {
        self.one(&["rni", "rzi", "rmi", "rpi"]).map(|r| match r {
            "rni" => RoundInt::Rni,
            "rzi" => RoundInt::Rzi,
            "rmi" => RoundInt::Rmi,
            _ => RoundInt::Rpi,
        })
    }

    fn done(&self) -> Result<(), String> {
        let left: Vec<&str> = self
            .items
            .iter()
            .zip(&self.used)
            .filter(|(_, u)| !**u)
            .map(|(i, _)| *i)
            .collect();
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("unsupported modifier(s) .{}", left.join(" .")))
        }
    }
}

/// A parsed operand.
#[derive(Clone, Debug)]
enum Opnd {
    Reg(u16),
    Not(u16),
    Imm(u64, u8),
    Label(String),
    Vec(Vec<Opnd>),
    /// Base register, base symbol, offset.
    Mem(Option<u16>, Option<String>, u64),
    Pair(u16, u16),
    Sink,
}

/// A symbol: its state space and address in it.
#[derive(Clone, Copy)]
struct Sym {
    addr: u64,
}

/// What the module loader needs to place module-level variables.
pub struct Global {
    pub name: String,
    pub size: u64,
    pub init: Vec<u8>,
}

/// The parsed module.
pub struct Parsed {
    pub globals: Vec<Global>,
    pub kernels: Vec<Code>,
}

struct P<'a> {
    text: &'a str,
    toks: Vec<Token>,
    i: usize,
}

impl<'a> P<'a> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.i).map(|t| &t.t)
    }
    fn line(&self) -> u32 {
        self.toks
            .get(self.i)
            .or(self.toks.last())
            .map_or(0, |t| t.line)
    }
    fn next(&mut self) -> Result<Tok, String> {
        let t = self.toks.get(self.i).map(|t| t.t.clone());
        self.i += 1;
        t.ok_or_else(|| "unexpected end of the PTX text".to_string())
    }
    fn is_p(&self, c: char) -> bool {
        self.peek() == Some(&Tok::P(c))
    }
    fn is_id(&self, s: &str) -> bool {
        matches!(self.peek(), Some(Tok::Id(x)) if x == s)
    }
    fn expect_p(&mut self, c: char) -> Result<(), String> {
        let l = self.line();
        match self.next()? {
            Tok::P(x) if x == c => Ok(()),
            t => Err(format!("line {l}: expected '{c}', found {t:?}")),
        }
    }
    fn ident(&mut self) -> Result<String, String> {
        let l = self.line();
        match self.next()? {
            Tok::Id(s) => Ok(s),
            t => Err(format!("line {l}: expected a name, found {t:?}")),
        }
    }
    fn num(&mut self) -> Result<u64, String> {
        let l = self.line();
        let neg = if self.is_p('-') {
            self.i += 1;
            true
        } else {
            false
        };
        match self.next()? {
            Tok::Num(s) => parse_int(&s)
                .map(|v| if neg { v.wrapping_neg() } else { v })
                .ok_or_else(|| format!("line {l}: bad number {s}")),
            t => Err(format!("line {l}: expected a number, found {t:?}")),
        }
    }
    /// Skips the rest of the current source line.
    fn skip_line(&mut self) {
        let l = self
            .toks
            .get(self.i.saturating_sub(1))
            .map_or(0, |t| t.line);
        while self.toks.get(self.i).is_some_and(|t| t.line == l) {
            self.i += 1;
        }
    }
    fn skip_to_semi(&mut self) -> Result<(), String> {
        while !self.is_p(';') {
            self.next()?;
        }
        self.i += 1;
        Ok(())
    }
    /// Skips a balanced `{ ... }` starting at the current `{`.
    fn skip_block(&mut self) -> Result<(), String> {
        self.expect_p('{')?;
        let mut depth = 1;
        while depth > 0 {
            match self.next()? {
                Tok::P('{') => depth += 1,
                Tok::P('}') => depth -= 1,
                _ => {}
            }
        }
        Ok(())
    }
}

/// A variable declaration: `.align N`, `.vN`, type, name, `[N]`..., initialiser.
struct VarDecl {
    name: String,
    align: u64,
    size: u64,
    elem: u32,
    init: Option<Vec<u64>>,
    unsized_array: bool,
}

fn parse_var(p: &mut P) -> Result<VarDecl, String> {
    let l = p.line();
    let mut align = 0;
    let mut vec = 1;
    let mut ty = None;
    loop {
        let Some(Tok::Id(s)) = p.peek().cloned() else {
            return Err(format!("line {l}: bad variable declaration"));
        };
        if !s.starts_with('.') {
            break;
        }
        p.i += 1;
        match s.as_str() {
            ".align" => align = p.num()?,
            ".v2" => vec = 2,
            ".v4" => vec = 4,
            _ => match Ty::parse(&s[1..]) {
                Some(t) => ty = Some(t),
                None => return Err(format!("line {l}: unsupported variable attribute {s}")),
            },
        }
    }
    let ty = ty.ok_or_else(|| format!("line {l}: variable without a type"))?;
    let name = p.ident()?;
    let elem = (ty.bits().max(8) / 8) * vec;
    let mut count = 1u64;
    let mut unsized_array = false;
    while p.is_p('[') {
        p.i += 1;
        if p.is_p(']') {
            unsized_array = true;
            count = 0;
        } else {
            count = count.saturating_mul(p.num()?);
        }
        p.expect_p(']')?;
    }
    if p.is_p('<') {
        return Err(format!(
            "line {l}: parameterized variable names are not supported"
        ));
    }
    let mut init = None;
    if p.is_p('=') {
        p.i += 1;
        let mut vals = Vec::new();
        let mut depth = 0;
        loop {
            if p.is_p('{') {
                depth += 1;
                p.i += 1;
            } else if p.is_p('}') {
                depth -= 1;
                p.i += 1;
            } else if p.is_p(',') {
                p.i += 1;
            } else if depth == 0 && !vals.is_empty() {
                break;
            } else {
                let neg = p.is_p('-');
                if neg {
                    p.i += 1;
                }
                let ll = p.line();
                match p.next()? {
                    Tok::Num(s) => {
                        let (v, _) = parse_num(&s)
                            .ok_or_else(|| format!("line {ll}: bad initialiser {s}"))?;
                        vals.push(if neg { v.wrapping_neg() } else { v });
                    }
                    t => return Err(format!("line {ll}: unsupported initialiser {t:?}")),
                }
            }
            if depth == 0 && !vals.is_empty() && !p.is_p(',') {
                break;
            }
        }
        if unsized_array {
            count = vals.len() as u64;
            unsized_array = false;
        }
        init = Some(vals);
    }
    if matches!(ty, Ty::F16x2 | Ty::BF16x2) && init.is_some() {
        return Err(format!(
            "line {l}: initialised packed half variables are not supported"
        ));
    }
    p.expect_p(';')?;
    Ok(VarDecl {
        name,
        align: if align == 0 { elem as u64 } else { align },
        size: count.saturating_mul(elem as u64),
        elem: elem / vec,
        init,
        unsized_array,
    })
}

/// Parses a whole module. `global_addr` places a module variable and returns its address.
pub fn parse_module(
    text: &str,
    mut global_addr: impl FnMut(&Global) -> u64,
) -> Result<Parsed, String> {
    let toks = lex(text)?;
    let mut p = P { text, toks, i: 0 };
    let mut globals = Vec::new();
    let mut syms: HashMap<String, Sym> = HashMap::new();
    let mut kernels = Vec::new();
    // Module-level .shared variables: (name, align, size, unsized extern).
    let mut mshared: Vec<(String, u64, u64, bool)> = Vec::new();
    while p.i < p.toks.len() {
        let l = p.line();
        let t = p.next()?;
        let Tok::Id(s) = t else {
            return Err(format!("line {l}: unexpected {t:?} at module level"));
        };
        match s.as_str() {
            ".version" | ".target" | ".address_size" | ".file" | ".loc" | ".globl" => p.skip_line(),
            ".section" => {
                while !p.is_p('{') {
                    p.next()?;
                }
                p.skip_block()?;
            }
            ".visible" | ".weak" | ".extern" if p.is_id(".func") => {
                // A device function (never called: `call` is rejected), or its declaration.
                skip_func(&mut p)?;
            }
            ".visible" | ".weak" | ".extern" => {}
            ".func" => {
                p.i -= 1;
                skip_func(&mut p)?;
            }
            ".global" | ".const" => {
                if s == ".const" {
                    return Err(format!("line {l}: .const variables are not supported"));
                }
                let v = parse_var(&mut p)?;
                if v.unsized_array {
                    return Err(format!("line {l}: global {} without a size", v.name));
                }
                let mut init = vec![0u8; v.size as usize];
                if let Some(vals) = &v.init {
                    for (k, val) in vals.iter().enumerate() {
                        let o = k * v.elem as usize;
                        if o + v.elem as usize > init.len() {
                            return Err(format!("line {l}: too many initialisers for {}", v.name));
                        }
                        init[o..o + v.elem as usize]
                            .copy_from_slice(&val.to_le_bytes()[..v.elem as usize]);
                    }
                }
                let g = Global {
                    name: v.name.clone(),
                    size: v.size,
                    init,
                };
                let addr = global_addr(&g);
                syms.insert(v.name, Sym { addr });
                globals.push(g);
            }
            ".shared" => {
                let v = parse_var(&mut p)?;
                if v.init.is_some() {
                    return Err(format!("line {l}: initialised .shared variable {}", v.name));
                }
                mshared.push((v.name, v.align.max(1), v.size, v.unsized_array));
            }
            ".entry" => {
                let k = parse_entry(&mut p, &syms, &mshared)?;
                kernels.push(k);
            }
            _ => return Err(format!("line {l}: unsupported module-level directive {s}")),
        }
    }
    Ok(Parsed { globals, kernels })
}

fn skip_func(p: &mut P) -> Result<(), String> {
    while !p.is_p('{') && !p.is_p(';') {
        p.next()?;
    }
    if p.is_p(';') {
        p.i += 1;
        Ok(())
    } else {
        p.skip_block()
    }
}

struct KernelCtx<'s> {
    name: String,
    regs: Vec<HashMap<String, u16>>,
    nregs: usize,
    syms: HashMap<String, Sym>,
    globals: &'s HashMap<String, Sym>,
    labels: HashMap<String, u32>,
}

impl KernelCtx<'_> {
    fn reg(&self, n: &str) -> Option<u16> {
        for s in self.regs.iter().rev() {
            if let Some(&r) = s.get(n) {
                return Some(r);
            }
        }
        SPECIALS.iter().position(|s| *s == n).map(|i| i as u16)
    }
    fn sym(&self, n: &str) -> Option<u64> {
        self.syms
            .get(n)
            .or_else(|| self.globals.get(n))
            .map(|s| s.addr)
    }
    fn declare(&mut self, n: String, l: u32) -> Result<(), String> {
        if self.nregs >= u16::MAX as usize - 1 {
            return Err(format!(
                "line {l}: too many registers in kernel {}",
                self.name
            ));
        }
        let r = self.nregs as u16;
        self.nregs += 1;
        self.regs.last_mut().expect("a scope").insert(n, r);
        Ok(())
    }
}

struct RawInstr {
    line: u32,
    text: String,
    guard: Option<(u16, bool)>,
    opcode: String,
    operands: Vec<Opnd>,
}

fn parse_entry(
    p: &mut P,
    globals: &HashMap<String, Sym>,
    mshared: &[(String, u64, u64, bool)],
) -> Result<Code, String> {
    let name = p.ident()?;
    let mut k = KernelCtx {
        name: name.clone(),
        regs: vec![HashMap::new()],
        nregs: FIRST_REG,
        syms: HashMap::new(),
        globals,
        labels: HashMap::new(),
    };
    let ctx_err = |e: String| format!("kernel {name}: {e}");
    // Parameters.
    let mut params = Vec::new();
    let mut off = 0u64;
    if p.is_p('(') {
        p.i += 1;
        while !p.is_p(')') {
            let l = p.line();
            if !p.is_id(".param") {
                return Err(ctx_err(format!("line {l}: expected .param")));
            }
            p.i += 1;
            // parse_var wants a ';' terminator: parse by hand.
            let mut align = 0;
            let mut ty = None;
            while let Some(Tok::Id(s)) = p.peek().cloned() {
                if !s.starts_with('.') {
                    break;
                }
                p.i += 1;
                match s.as_str() {
                    ".align" => align = p.num()?,
                    ".ptr" | ".global" | ".shared" | ".local" | ".const" => {}
                    _ => {
                        ty = Some(Ty::parse(&s[1..]).ok_or_else(|| {
                            ctx_err(format!("line {l}: unsupported parameter attribute {s}"))
                        })?)
                    }
                }
            }
            let ty = ty.ok_or_else(|| ctx_err(format!("line {l}: parameter without a type")))?;
            let pname = p.ident()?;
            let elem = ty.bits().max(8) as u64 / 8;
            let mut count = 1u64;
            while p.is_p('[') {
                p.i += 1;
                count = count.saturating_mul(p.num()?);
                p.expect_p(']')?;
            }
            let align = if align == 0 { elem } else { align }.max(1);
            off = off.div_ceil(align) * align;
            let size = elem.saturating_mul(count);
            params.push(Param {
                offset: off as usize,
                size: size as usize,
            });
            k.syms.insert(pname, Sym { addr: off });
            off = off.saturating_add(size);
            if p.is_p(',') {
                p.i += 1;
            }
        }
        p.i += 1;
    }
    let param_size = off as usize;
    // Performance directives up to the body.
    while !p.is_p('{') {
        let l = p.line();
        match p.next()? {
            Tok::Id(s)
                if matches!(
                    s.as_str(),
                    ".maxntid"
                        | ".reqntid"
                        | ".minnctapersm"
                        | ".maxnreg"
                        | ".maxclusterrank"
                        | ".reqnctapercluster"
                        | ".explicitcluster"
                        | ".noreturn"
                        | ".pragma"
                ) => {}
            Tok::Num(_) | Tok::P(',') | Tok::Str | Tok::P(';') => {}
            t => {
                return Err(ctx_err(format!(
                    "line {l}: unexpected {t:?} before the body"
                )))
            }
        }
    }
    p.i += 1;
    // Body.
    let mut raws: Vec<RawInstr> = Vec::new();
    let mut shared_size = 0u64;
    let mut local_size = 0u64;
    let mut externs: Vec<(String, u64)> = Vec::new();
    for (n, align, size, unsized_array) in mshared {
        if *unsized_array {
            externs.push((n.clone(), *align));
        } else {
            shared_size = shared_size.div_ceil(*align) * align;
            k.syms.insert(n.clone(), Sym { addr: shared_size });
            shared_size += size;
        }
    }
    let mut depth = 1;
    while depth > 0 {
        let l = p.line();
        let start = p.toks.get(p.i).map_or(0, |t| t.start);
        match p.peek().cloned() {
            None => return Err(ctx_err("unterminated body".into())),
            Some(Tok::P('{')) => {
                p.i += 1;
                depth += 1;
                k.regs.push(HashMap::new());
            }
            Some(Tok::P('}')) => {
                p.i += 1;
                depth -= 1;
                k.regs.pop();
            }
            Some(Tok::Id(s)) if s.starts_with('.') => {
                p.i += 1;
                match s.as_str() {
                    ".loc" | ".file" => p.skip_line(),
                    ".pragma" => p.skip_to_semi()?,
                    ".reg" => {
                        let tyname = p.ident()?;
                        let mut vec_ok = true;
                        if tyname == ".v2" || tyname == ".v4" {
                            vec_ok = false;
                        }
                        if !vec_ok || Ty::parse(tyname.trim_start_matches('.')).is_none() {
                            return Err(ctx_err(format!(
                                "line {l}: unsupported register type {tyname}"
                            )));
                        }
                        loop {
                            let n = p.ident()?;
                            if p.is_p('<') {
                                p.i += 1;
                                let c = p.num()?;
                                p.expect_p('>')?;
                                if c > 60000 {
                                    return Err(ctx_err(format!("line {l}: too many registers")));
                                }
                                for j in 0..c {
                                    k.declare(format!("{n}{j}"), l).map_err(ctx_err)?;
                                }
                            } else {
                                k.declare(n, l).map_err(ctx_err)?;
                            }
                            if p.is_p(',') {
                                p.i += 1;
                            } else {
                                break;
                            }
                        }
                        p.expect_p(';')?;
                    }
                    ".local" | ".shared" => {
                        let v = parse_var(p)?;
                        let align = v.align.max(1);
                        if s == ".local" {
                            local_size = local_size.div_ceil(align) * align;
                            k.syms.insert(v.name, Sym { addr: local_size });
                            local_size += v.size;
                        } else {
                            if v.unsized_array {
                                return Err(ctx_err(format!(
                                    "line {l}: unsized .shared without .extern"
                                )));
                            }
                            shared_size = shared_size.div_ceil(align) * align;
                            k.syms.insert(v.name, Sym { addr: shared_size });
                            shared_size += v.size;
                        }
                        if v.init.is_some() {
                            return Err(ctx_err(format!("line {l}: initialised {s} variable")));
                        }
                    }
                    ".extern" => {
                        if !p.is_id(".shared") {
                            return Err(ctx_err(format!(
                                "line {l}: unsupported .extern in a body"
                            )));
                        }
                        p.i += 1;
                        let v = parse_var(p)?;
                        externs.push((v.name, v.align.max(1)));
                    }
                    _ => {
                        return Err(ctx_err(format!(
                            "line {l}: unsupported directive {s} in a body"
                        )))
                    }
                }
            }
            Some(Tok::Id(s)) if p.toks.get(p.i + 1).map(|t| &t.t) == Some(&Tok::P(':')) => {
                p.i += 2;
                if k.labels.insert(s.clone(), raws.len() as u32).is_some() {
                    return Err(ctx_err(format!("line {l}: label {s} defined twice")));
                }
            }
            Some(_) => {
                let mut guard = None;
                if p.is_p('@') {
                    p.i += 1;
                    let neg = p.is_p('!');
                    if neg {
                        p.i += 1;
                    }
                    let g = p.ident()?;
                    let r = k
                        .reg(&g)
                        .ok_or_else(|| ctx_err(format!("line {l}: unknown guard {g}")))?;
                    guard = Some((r, neg));
                }
                let opcode = p.ident()?;
                if opcode == "call" || opcode.starts_with("call.") {
                    return Err(ctx_err(format!(
                        "line {l}: call is not supported (no device functions)"
                    )));
                }
                let mut operands = Vec::new();
                while !p.is_p(';') {
                    operands.push(
                        parse_operand(p, &k).map_err(|e| ctx_err(format!("{e} in {opcode}")))?,
                    );
                    if p.is_p(',') {
                        p.i += 1;
                    } else if !p.is_p(';') {
                        let ll = p.line();
                        return Err(ctx_err(format!(
                            "line {ll}: expected ',' or ';' in {opcode}"
                        )));
                    }
                }
                let end = p.toks[p.i].end;
                p.i += 1;
                let text = p
                    .text
                    .get(start..end)
                    .unwrap_or("")
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ");
                raws.push(RawInstr {
                    line: l,
                    text,
                    guard,
                    opcode,
                    operands,
                });
            }
        }
    }
    // The dynamic shared area follows the static variables.
    let mut dyn_off = shared_size;
    for (_, a) in &externs {
        dyn_off = dyn_off.div_ceil(*a) * a;
    }
    let dyn_off = dyn_off.max(shared_size).div_ceil(16) * 16;
    for (n, _) in externs {
        k.syms.insert(n, Sym { addr: dyn_off });
    }
    if shared_size > u32::MAX as u64 / 2 || local_size > u32::MAX as u64 / 2 {
        return Err(ctx_err("shared or local variables too large".into()));
    }
    // Operands naming shared/local/param symbols were resolved as names: re-resolve now
    // (extern shared addresses are only known at the end).
    let mut instrs = Vec::with_capacity(raws.len());
    let mut lines = Vec::with_capacity(raws.len());
    let mut texts = Vec::with_capacity(raws.len());
    for r in raws {
        let op = decode(&r, &k)
            .map_err(|e| format!("kernel {name}, line {}: {e} (in `{}`)", r.line, r.text))?;
        instrs.push(Instr { op, guard: r.guard });
        lines.push(r.line);
        texts.push(r.text);
    }
    let mut code = Code {
        name,
        params,
        param_size,
        instrs,
        lines,
        texts,
        nregs: k.nregs,
        shared_static: shared_size as u32,
        dyn_off: dyn_off as u32,
        local_size: local_size as u32,
        consts: Vec::new(),
    };
    code.finish()
        .map_err(|e| format!("kernel {}: {e}", code.name))?;
    Ok(code)
}

fn parse_operand(p: &mut P, k: &KernelCtx) -> Result<Opnd, String> {
    let l = p.line();
    if p.is_p('{') {
        p.i += 1;
        let mut v = Vec::new();
        while !p.is_p('}') {
            v.push(parse_operand(p, k)?);
            if p.is_p(',') {
                p.i += 1;
            }
        }
        p.i += 1;
        return Ok(Opnd::Vec(v));
    }
    if p.is_p('[') {
        p.i += 1;
        let mut base = None;
        let mut sym = None;
        let mut off = 0u64;
        let mut first = true;
        while !p.is_p(']') {
            let neg = if p.is_p('+') {
                p.i += 1;
                if p.is_p('-') {
                    p.i += 1;
                    true
                } else {
                    false
                }
            } else if p.is_p('-') {
                p.i += 1;
                true
            } else {
                false
            };
            match p.next()? {
                Tok::Id(n) if first => {
                    if let Some(r) = k.reg(&n) {
                        base = Some(r);
                    } else if n.starts_with('%') {
                        return Err(format!("line {l}: unknown register {n} in an address"));
                    } else {
                        sym = Some(n);
                    }
                }
                Tok::Num(s) => {
                    let v = parse_int(&s).ok_or_else(|| format!("line {l}: bad offset {s}"))?;
                    off = if neg {
                        off.wrapping_sub(v)
                    } else {
                        off.wrapping_add(v)
                    };
                }
                t => return Err(format!("line {l}: unsupported address form near {t:?}")),
            }
            first = false;
        }
        p.i += 1;
        return Ok(Opnd::Mem(base, sym, off));
    }
    if p.is_p('!') {
        p.i += 1;
        let n = p.ident()?;
        let r = k
            .reg(&n)
            .ok_or_else(|| format!("line {l}: unknown register {n}"))?;
        return Ok(Opnd::Not(r));
    }
    let neg = if p.is_p('-') {
        p.i += 1;
        true
    } else {
        false
    };
    match p.next()? {
        Tok::Num(s) => {
            let (v, f) = parse_num(&s).ok_or_else(|| format!("line {l}: bad number {s}"))?;
            let v = if neg {
                match f {
                    32 => v ^ 0x8000_0000,
                    64 | 65 => v ^ (1 << 63),
                    _ => v.wrapping_neg(),
                }
            } else {
                v
            };
            Ok(Opnd::Imm(v, f))
        }
        Tok::Id(n) if !neg => {
            if n == "_" {
                return Ok(Opnd::Sink);
            }
            if let Some(r) = k.reg(&n) {
                if p.is_p('|') {
                    p.i += 1;
                    let n2 = p.ident()?;
                    let r2 = k
                        .reg(&n2)
                        .ok_or_else(|| format!("line {l}: unknown register {n2}"))?;
                    return Ok(Opnd::Pair(r, r2));
                }
                return Ok(Opnd::Reg(r));
            }
            if n.starts_with('%') {
                return Err(format!("line {l}: unknown register {n}"));
            }
            Ok(Opnd::Label(n))
        }
        t => Err(format!("line {l}: unexpected operand {t:?}")),
    }
}

// ---------------------------------------------------------------- decoding

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

fn decode(r: &RawInstr, k: &KernelCtx) -> Result<Op, String> {
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
