//! PTX text to decoded kernels: the parser of a module's directives and kernel bodies over
//! the tokens of [`lex`], each instruction then decoded into an [`Op`] by [`decode`].

use std::collections::HashMap;

use super::exec::{
    Alu, AluFn, Code, Instr, MemOp, Op, ShflMode, Space, Src, VoteMode, FIRST_REG, LOCAL_WINDOW,
    SHARED_WINDOW, SPECIALS,
};
use super::float::{Round, RoundInt};
use super::ops::{self, tc};
use super::Param;

mod decode;
mod lex;
mod types;

use decode::decode;
use lex::{lex, parse_int, parse_num, Tok, Token};
use types::Mods;
pub use types::Ty;

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
    /// Its PTX name.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its initial bytes (`size` of them; zeros where no initialiser was given).
    pub init: Vec<u8>,
}

/// The parsed module.
pub struct Parsed {
    /// The module-level variables in declaration order (each already placed through the
    /// loader's callback).
    pub globals: Vec<Global>,
    /// The entry points, decoded, in declaration order.
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
