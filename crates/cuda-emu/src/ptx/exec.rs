//! The decoded form of a kernel and its interpreter: warps of 32 lanes with one program
//! counter per lane, "lowest PC first" scheduling (which reconverges structured code at its
//! join points), block barriers, checked memory accesses.

// Lane loops index several per-lane arrays at once.
#![allow(clippy::needless_range_loop, clippy::too_many_arguments)]

use super::float::{Round, RoundInt};
use super::{Fault, KernelStats, Launch, Param};
use crate::mem::{Memory, SECTOR};

/// One warp's registers: `regs[reg][lane]`.
pub type Regs = [[u64; 32]];

/// Generic addresses in `[SHARED_WINDOW, SHARED_WINDOW + 2^32)` are shared memory.
pub const SHARED_WINDOW: u64 = 0x5000_0000_0000;
/// Generic addresses in `[LOCAL_WINDOW, LOCAL_WINDOW + 2^32)` are local memory.
pub const LOCAL_WINDOW: u64 = 0x6000_0000_0000;
const WINDOW: u64 = 1 << 32;

/// Special registers live in the first register slots of every kernel.
pub const SPECIALS: [&str; 15] = [
    "%tid.x",
    "%tid.y",
    "%tid.z",
    "%ntid.x",
    "%ntid.y",
    "%ntid.z",
    "%ctaid.x",
    "%ctaid.y",
    "%ctaid.z",
    "%nctaid.x",
    "%nctaid.y",
    "%nctaid.z",
    "%laneid",
    "%warpid",
    "%nwarpid",
];
/// First register slot of declared registers.
pub const FIRST_REG: usize = 16;

/// Warp instructions one launch may issue before it is declared hung.
const WATCHDOG: u64 = 1 << 40;

/// A source operand.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Src {
    /// A register.
    Reg(u16),
    /// A predicate register, negated (`!%p`).
    Not(u16),
    /// An immediate (integer bits, float bits, or a symbol's address).
    Imm(u64),
}

/// The operands and modifiers of an ALU instruction.
#[derive(Clone, Debug)]
pub struct Alu {
    pub d: u16,
    /// Sources as decoded (registers, negated predicates, immediates).
    pub s: [Src; 4],
    /// The sources as registers (immediates live in constant registers), filled by
    /// [`Code::finish`]; `neg` is xored into each (1 for a negated predicate).
    pub r: [u16; 4],
    pub neg: [u64; 4],
    pub rnd: Round,
    pub irnd: RoundInt,
    pub ftz: bool,
    pub sat: bool,
    /// Operation-specific: comparison code, combining op, conversion flags.
    pub aux: u32,
    pub aux2: u32,
}

impl Alu {
    pub fn new(d: u16) -> Alu {
        Alu {
            d,
            s: [Src::Imm(0); 4],
            r: [0; 4],
            neg: [0; 4],
            rnd: Round::Rn,
            irnd: RoundInt::Rzi,
            ftz: false,
            sat: false,
            aux: 0,
            aux2: 0,
        }
    }
}

/// An ALU operation over the lanes of a mask.
pub type AluFn = fn(&mut Regs, u32, &Alu);

/// A state space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Space {
    Global,
    Shared,
    Local,
    Param,
    Generic,
}

impl Space {
    fn name(self) -> &'static str {
        match self {
            Space::Global => "global",
            Space::Shared => "shared",
            Space::Local => "local",
            Space::Param => "param",
            Space::Generic => "generic",
        }
    }
}

/// A load or store.
#[derive(Clone, Debug)]
pub struct MemOp {
    pub space: Space,
    /// Bytes per element (1, 2, 4, 8).
    pub size: u8,
    /// Elements (1, 2, 4).
    pub n: u8,
    /// Sign-extend loaded values.
    pub signed: bool,
    /// Destination registers (loads; `u16::MAX` is a sink) or sources (stores).
    pub regs: [Src; 4],
    pub base: Option<u16>,
    pub off: u64,
}

/// `shfl.sync` modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShflMode {
    Up,
    Down,
    Bfly,
    Idx,
}

/// `vote.sync` modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteMode {
    All,
    Any,
    Uni,
    Ballot,
}

/// A decoded operation.
#[derive(Clone, Debug)]
pub enum Op {
    Alu(AluFn, Alu),
    Ld(MemOp),
    St(MemOp),
    /// `mov.bN d, {a, b, ...}`: `n` elements of `bits` each.
    Pack {
        d: u16,
        s: [Src; 4],
        n: u8,
        bits: u8,
    },
    /// `mov.bN {a, b, ...}, s` (`u16::MAX` is a sink).
    Unpack {
        d: [u16; 4],
        a: Src,
        n: u8,
        bits: u8,
    },
    Bra(u32),
    Exit,
    Bar,
    Shfl {
        mode: ShflMode,
        d: u16,
        p: Option<u16>,
        a: Src,
        b: Src,
        c: Src,
        mask: Src,
    },
    Vote {
        mode: VoteMode,
        d: u16,
        a: Src,
        mask: Src,
    },
}

/// One instruction.
#[derive(Clone, Debug)]
pub struct Instr {
    pub op: Op,
    /// Guard predicate register and whether it is negated.
    pub guard: Option<(u16, bool)>,
}

/// A kernel, decoded.
pub struct Code {
    pub name: String,
    pub params: Vec<Param>,
    pub param_size: usize,
    pub instrs: Vec<Instr>,
    pub lines: Vec<u32>,
    pub texts: Vec<String>,
    pub nregs: usize,
    pub shared_static: u32,
    /// Offset of the dynamic (`.extern .shared`) area.
    pub dyn_off: u32,
    pub local_size: u32,
    /// Constant registers: (register, value in every lane).
    pub consts: Vec<(u16, u64)>,
}

impl Code {
    /// Moves the ALU operations' immediates into constant registers and resolves their
    /// sources to plain register numbers.
    pub fn finish(&mut self) -> Result<(), String> {
        let mut map: std::collections::HashMap<u64, u16> = std::collections::HashMap::new();
        for ins in &mut self.instrs {
            if let Op::Alu(_, x) = &mut ins.op {
                for k in 0..4 {
                    let (r, n) = match x.s[k] {
                        Src::Reg(r) => (r, 0),
                        Src::Not(r) => (r, 1),
                        Src::Imm(v) => {
                            let next = self.nregs;
                            let r = *map.entry(v).or_insert_with(|| {
                                self.consts.push((next as u16, v));
                                next as u16
                            });
                            if r as usize == next {
                                self.nregs += 1;
                                if self.nregs >= u16::MAX as usize {
                                    return Err("too many registers and constants".into());
                                }
                            }
                            (r, 0)
                        }
                    };
                    x.r[k] = r;
                    x.neg[k] = n;
                }
            }
        }
        Ok(())
    }
}

#[inline(always)]
fn col<'a>(regs: &'a Regs, s: Src, tmp: &'a mut [u64; 32]) -> &'a [u64; 32] {
    match s {
        Src::Reg(r) => &regs[r as usize],
        Src::Imm(v) => {
            *tmp = [v; 32];
            tmp
        }
        Src::Not(r) => {
            let c = &regs[r as usize];
            for l in 0..32 {
                tmp[l] = (c[l] & 1) ^ 1;
            }
            tmp
        }
    }
}

#[inline(always)]
fn store(regs: &mut Regs, d: u16, mask: u32, out: &[u64; 32]) {
    let dst = &mut regs[d as usize];
    if mask == u32::MAX {
        // In two halves: small enough for the compiler to copy inline (a whole register is
        // a call to memcpy).
        let (dl, dh) = dst.split_at_mut(16);
        dl.copy_from_slice(&out[..16]);
        dh.copy_from_slice(&out[16..]);
    } else {
        let mut m = mask;
        while m != 0 {
            let l = m.trailing_zeros() as usize;
            m &= m - 1;
            dst[l] = out[l];
        }
    }
}

/// Runs `f` over the lanes of `mask` with `N` source columns.
#[inline(always)]
pub fn run<const N: usize, F: Fn(&Alu, u64, u64, u64, u64) -> u64>(
    regs: &mut Regs,
    mask: u32,
    x: &Alu,
    f: F,
) {
    let mut out = [0u64; 32];
    {
        let r: &Regs = regs;
        let a = &r[x.r[0] as usize];
        let b = &r[x.r[1] as usize];
        let c = &r[x.r[2] as usize];
        let e = &r[x.r[3] as usize];
        let [na, nb, nc, ne] = x.neg;
        if mask == u32::MAX {
            for l in 0..32 {
                out[l] = f(x, a[l] ^ na, b[l] ^ nb, c[l] ^ nc, e[l] ^ ne);
            }
        } else {
            let mut m = mask;
            while m != 0 {
                let l = m.trailing_zeros() as usize;
                m &= m - 1;
                out[l] = f(x, a[l] ^ na, b[l] ^ nb, c[l] ^ nc, e[l] ^ ne);
            }
        }
    }
    store(regs, x.d, mask, &out);
}

/// Lanes of `mask` whose predicate register is true (false when `neg`).
#[inline(always)]
fn pred_mask(c: &[u64; 32], neg: bool) -> u32 {
    let mut m = 0u32;
    for l in 0..32 {
        m |= ((c[l] & 1) as u32) << l;
    }
    if neg {
        !m
    } else {
        m
    }
}

struct Warp {
    regs: Vec<[u64; 32]>,
    pc: u32,
    /// Lanes at `pc`, running.
    active: u32,
    /// Lanes not exited.
    live: u32,
    /// Lanes waiting at a barrier.
    waiting: u32,
    lane_pc: [u32; 32],
    /// Lowest PC of the live, non-waiting lanes not in `active` (`u32::MAX` if none).
    others_min: u32,
}

impl Warp {
    /// Picks the lanes with the lowest PC among the live, non-waiting ones.
    fn resched(&mut self) {
        let mut m = self.active;
        while m != 0 {
            let l = m.trailing_zeros() as usize;
            m &= m - 1;
            self.lane_pc[l] = self.pc;
        }
        let cand = self.live & !self.waiting;
        let mut min = u32::MAX;
        let mut m = cand;
        while m != 0 {
            let l = m.trailing_zeros() as usize;
            m &= m - 1;
            min = min.min(self.lane_pc[l]);
        }
        let mut active = 0;
        let mut others = u32::MAX;
        let mut m = cand;
        while m != 0 {
            let l = m.trailing_zeros() as usize;
            m &= m - 1;
            if self.lane_pc[l] == min {
                active |= 1 << l;
            } else {
                others = others.min(self.lane_pc[l]);
            }
        }
        self.pc = min;
        self.active = active;
        self.others_min = others;
    }

    #[inline(always)]
    fn advance(&mut self) {
        self.pc += 1;
        if self.pc >= self.others_min {
            self.resched();
        }
    }
}

struct Ctx<'a> {
    code: &'a Code,
    launch: &'a Launch<'a>,
    mem: &'a mut Memory,
    shared: Vec<u8>,
    local: Vec<u8>,
    cache: Vec<u32>,
    block: [u32; 3],
    stats: KernelStats,
}

fn thread_of(block: [u32; 3], warp: usize, lane: usize) -> [u32; 3] {
    let lin = (warp * 32 + lane) as u64;
    let (bx, by) = (block[0] as u64, block[1] as u64);
    [
        (lin % bx) as u32,
        ((lin / bx) % by) as u32,
        (lin / (bx * by)) as u32,
    ]
}

impl Ctx<'_> {
    fn fault(
        &self,
        pc: usize,
        warp: usize,
        lane: usize,
        addr: Option<u64>,
        message: String,
    ) -> Fault {
        Fault {
            kernel: self.code.name.clone(),
            line: self.code.lines.get(pc).copied().unwrap_or(0) as usize,
            instr: self.code.texts.get(pc).cloned().unwrap_or_default(),
            block: self.block,
            thread: thread_of(self.launch.block, warp, lane),
            addr,
            message,
        }
    }
}

#[inline(always)]
fn read_le(b: &[u8], size: u8) -> u64 {
    match size {
        1 => b[0] as u64,
        2 => u16::from_le_bytes([b[0], b[1]]) as u64,
        4 => u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u64,
        _ => u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
    }
}

#[inline(always)]
fn write_le(b: &mut [u8], size: u8, v: u64) {
    b[..size as usize].copy_from_slice(&v.to_le_bytes()[..size as usize]);
}

#[inline(always)]
fn sext(v: u64, bytes: u8) -> u64 {
    let sh = 64 - 8 * bytes as u32;
    (((v << sh) as i64) >> sh) as u64
}

/// Validates the launch shape.
fn check_launch(code: &Code, launch: &Launch) -> Result<(), String> {
    let [bx, by, bz] = launch.block;
    let [gx, gy, gz] = launch.grid;
    if bx == 0 || by == 0 || bz == 0 || gx == 0 || gy == 0 || gz == 0 {
        return Err(format!(
            "invalid launch: a zero dimension in grid ({gx},{gy},{gz}) or block ({bx},{by},{bz})"
        ));
    }
    let threads = bx as u64 * by as u64 * bz as u64;
    if threads > 1024 || bz > 64 {
        return Err(format!(
            "invalid launch: block ({bx},{by},{bz}) has {threads} threads (at most 1024, z at most 64)"
        ));
    }
    if gy > 65535 || gz > 65535 || gx > i32::MAX as u32 {
        return Err(format!("invalid launch: grid ({gx},{gy},{gz}) too large"));
    }
    if launch.params.len() < code.param_size {
        return Err(format!(
            "invalid launch: the parameter buffer has {} bytes, the kernel's parameters take {}",
            launch.params.len(),
            code.param_size
        ));
    }
    let shared = code.dyn_off as u64 + launch.shared_dynamic as u64;
    if shared > (1 << 24) {
        return Err(format!("invalid launch: {shared} bytes of shared memory"));
    }
    Ok(())
}

/// Runs `code` over the whole grid.
pub fn run_kernel(
    code: &Code,
    launch: &Launch,
    mem: &mut Memory,
    stats: &mut KernelStats,
) -> Result<(), Fault> {
    let mut ctx = Ctx {
        code,
        launch,
        mem,
        shared: Vec::new(),
        local: Vec::new(),
        cache: vec![u32::MAX; code.instrs.len()],
        block: [0; 3],
        stats: KernelStats {
            launches: 1,
            ..Default::default()
        },
    };
    let r = run_grid(&mut ctx);
    let s = ctx.stats;
    stats.launches += s.launches;
    stats.warp_instructions += s.warp_instructions;
    stats.bytes_requested += s.bytes_requested;
    stats.sectors_read += s.sectors_read;
    stats.sectors_written += s.sectors_written;
    ctx.mem.clear_sectors();
    r
}

fn run_grid(ctx: &mut Ctx) -> Result<(), Fault> {
    let code = ctx.code;
    let launch = ctx.launch;
    if let Err(message) = check_launch(code, launch) {
        return Err(Fault {
            kernel: code.name.clone(),
            line: 0,
            instr: String::new(),
            block: [0; 3],
            thread: [0; 3],
            addr: None,
            message,
        });
    }
    let [bx, by, bz] = launch.block;
    let threads = (bx * by * bz) as usize;
    let nwarps = threads.div_ceil(32);
    let shared_size = code.dyn_off as usize + launch.shared_dynamic as usize;
    let mut warps: Vec<Warp> = (0..nwarps)
        .map(|_| Warp {
            regs: vec![[0u64; 32]; code.nregs.max(FIRST_REG)],
            pc: 0,
            active: 0,
            live: 0,
            waiting: 0,
            lane_pc: [0; 32],
            others_min: u32::MAX,
        })
        .collect();
    // Per-warp constant special registers.
    for (wi, w) in warps.iter_mut().enumerate() {
        for l in 0..32 {
            let t = thread_of(launch.block, wi, l);
            w.regs[0][l] = t[0] as u64;
            w.regs[1][l] = t[1] as u64;
            w.regs[2][l] = t[2] as u64;
            w.regs[3][l] = bx as u64;
            w.regs[4][l] = by as u64;
            w.regs[5][l] = bz as u64;
            w.regs[9][l] = launch.grid[0] as u64;
            w.regs[10][l] = launch.grid[1] as u64;
            w.regs[11][l] = launch.grid[2] as u64;
            w.regs[12][l] = l as u64;
            w.regs[13][l] = wi as u64;
            w.regs[14][l] = nwarps as u64;
        }
        for &(r, v) in &code.consts {
            w.regs[r as usize] = [v; 32];
        }
    }
    let local_total = code.local_size as usize * threads;
    for gz in 0..launch.grid[2] {
        for gy in 0..launch.grid[1] {
            for gx in 0..launch.grid[0] {
                ctx.block = [gx, gy, gz];
                ctx.shared.clear();
                ctx.shared.resize(shared_size, 0xff);
                ctx.local.clear();
                ctx.local.resize(local_total, 0xff);
                for (wi, w) in warps.iter_mut().enumerate() {
                    let n = (threads - wi * 32).min(32);
                    let live = if n == 32 { u32::MAX } else { (1u32 << n) - 1 };
                    w.pc = 0;
                    w.active = live;
                    w.live = live;
                    w.waiting = 0;
                    w.lane_pc = [0; 32];
                    w.others_min = u32::MAX;
                    for l in 0..32 {
                        w.regs[6][l] = gx as u64;
                        w.regs[7][l] = gy as u64;
                        w.regs[8][l] = gz as u64;
                    }
                }
                loop {
                    for (wi, w) in warps.iter_mut().enumerate() {
                        run_warp(ctx, w, wi)?;
                    }
                    // Every warp is finished or waiting at the barrier: release it.
                    let mut any = false;
                    for w in warps.iter_mut() {
                        if w.waiting != 0 {
                            any = true;
                            w.waiting = 0;
                            w.resched();
                        }
                    }
                    if !any {
                        break;
                    }
                }
            }
        }
    }
    Ok(())
}

fn run_warp(ctx: &mut Ctx, w: &mut Warp, wi: usize) -> Result<(), Fault> {
    let code = ctx.code;
    let instrs = &code.instrs[..];
    while w.active != 0 {
        let pc = w.pc as usize;
        let Some(ins) = instrs.get(pc) else {
            // Falling off the end of the body: the lanes exit.
            w.live &= !w.active;
            w.active = 0;
            w.resched();
            continue;
        };
        ctx.stats.warp_instructions += 1;
        if ctx.stats.warp_instructions > WATCHDOG {
            let lane = w.active.trailing_zeros() as usize;
            return Err(ctx.fault(
                pc,
                wi,
                lane,
                None,
                "watchdog: the launch ran too long".into(),
            ));
        }
        let mut m = w.active;
        if let Some((p, neg)) = ins.guard {
            m &= pred_mask(&w.regs[p as usize], neg);
        }
        match &ins.op {
            Op::Alu(f, x) => {
                if m != 0 {
                    f(&mut w.regs, m, x);
                }
                w.advance();
            }
            Op::Ld(x) => {
                if m != 0 {
                    load(ctx, w, wi, pc, m, x)?;
                }
                w.advance();
            }
            Op::St(x) => {
                if m != 0 {
                    store_op(ctx, w, wi, pc, m, x)?;
                }
                w.advance();
            }
            Op::Bra(t) => {
                let t = *t;
                let nt = w.active & !m;
                if nt == 0 {
                    w.pc = t;
                    if w.pc >= w.others_min {
                        w.resched();
                    }
                } else if m == 0 {
                    w.advance();
                } else {
                    let mut mm = m;
                    while mm != 0 {
                        let l = mm.trailing_zeros() as usize;
                        mm &= mm - 1;
                        w.lane_pc[l] = t;
                    }
                    let mut mm = nt;
                    while mm != 0 {
                        let l = mm.trailing_zeros() as usize;
                        mm &= mm - 1;
                        w.lane_pc[l] = w.pc + 1;
                    }
                    w.active = 0;
                    w.resched();
                }
            }
            Op::Exit => {
                w.live &= !m;
                w.active &= !m;
                if w.active == 0 {
                    w.resched();
                } else {
                    w.advance();
                }
            }
            Op::Bar => {
                if m != w.active {
                    let lane = (w.active & !m).trailing_zeros() as usize;
                    return Err(ctx.fault(
                        pc,
                        wi,
                        lane,
                        None,
                        "predicated-off bar.sync in a warp not all taking it".into(),
                    ));
                }
                let mut mm = m;
                while mm != 0 {
                    let l = mm.trailing_zeros() as usize;
                    mm &= mm - 1;
                    w.lane_pc[l] = w.pc + 1;
                }
                w.waiting |= m;
                w.active = 0;
                w.resched();
            }
            Op::Pack { d, s, n, bits } => {
                if m != 0 {
                    let mut out = [0u64; 32];
                    for k in 0..*n as usize {
                        let mut t = [0u64; 32];
                        let c = col(&w.regs, s[k], &mut t);
                        let sh = k as u32 * *bits as u32;
                        let mask = if *bits == 64 {
                            u64::MAX
                        } else {
                            (1u64 << *bits) - 1
                        };
                        for l in 0..32 {
                            out[l] |= (c[l] & mask) << sh;
                        }
                    }
                    store(&mut w.regs, *d, m, &out);
                }
                w.advance();
            }
            Op::Unpack { d, a, n, bits } => {
                if m != 0 {
                    let mut t = [0u64; 32];
                    let src: [u64; 32] = *col(&w.regs, *a, &mut t);
                    let mask = if *bits == 64 {
                        u64::MAX
                    } else {
                        (1u64 << *bits) - 1
                    };
                    for k in 0..*n as usize {
                        if d[k] == u16::MAX {
                            continue;
                        }
                        let sh = k as u32 * *bits as u32;
                        let mut out = [0u64; 32];
                        for l in 0..32 {
                            out[l] = (src[l] >> sh) & mask;
                        }
                        store(&mut w.regs, d[k], m, &out);
                    }
                }
                w.advance();
            }
            Op::Shfl {
                mode,
                d,
                p,
                a,
                b,
                c,
                mask,
            } => {
                if m != 0 {
                    shfl(ctx, w, wi, pc, m, *mode, *d, *p, *a, *b, *c, *mask)?;
                }
                w.advance();
            }
            Op::Vote { mode, d, a, mask } => {
                if m != 0 {
                    let mut t = [0u64; 32];
                    let mk = col(&w.regs, *mask, &mut t)[m.trailing_zeros() as usize] as u32;
                    check_converged(ctx, w, wi, pc, m, mk, "vote.sync")?;
                    let mut t = [0u64; 32];
                    let pm = pred_mask(col(&w.regs, *a, &mut t), false) & m & mk;
                    let v = match mode {
                        VoteMode::Ballot => pm as u64,
                        VoteMode::Any => (pm != 0) as u64,
                        VoteMode::All => (pm == m & mk) as u64,
                        VoteMode::Uni => (pm == 0 || pm == m & mk) as u64,
                    };
                    store(&mut w.regs, *d, m, &[v; 32]);
                }
                w.advance();
            }
        }
    }
    Ok(())
}

fn check_converged(
    ctx: &Ctx,
    w: &Warp,
    wi: usize,
    pc: usize,
    m: u32,
    mk: u32,
    what: &str,
) -> Result<(), Fault> {
    if mk & !m != 0 || m & !mk != 0 {
        let lane = if mk & !m != 0 {
            (mk & !m).trailing_zeros()
        } else {
            (m & !mk).trailing_zeros()
        };
        let _ = w;
        return Err(ctx.fault(
            pc,
            wi,
            lane.min(31) as usize,
            None,
            format!(
                "{what} with lanes not converged: member mask {mk:#010x}, lanes executing it {m:#010x}"
            ),
        ));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn shfl(
    ctx: &mut Ctx,
    w: &mut Warp,
    wi: usize,
    pc: usize,
    m: u32,
    mode: ShflMode,
    d: u16,
    p: Option<u16>,
    a: Src,
    b: Src,
    c: Src,
    mask: Src,
) -> Result<(), Fault> {
    let first = m.trailing_zeros() as usize;
    let mut t = [0u64; 32];
    let mk = col(&w.regs, mask, &mut t)[first] as u32;
    check_converged(ctx, w, wi, pc, m, mk, "shfl.sync")?;
    let mut ta = [0u64; 32];
    let av = *col(&w.regs, a, &mut ta);
    let mut tb = [0u64; 32];
    let bv = *col(&w.regs, b, &mut tb);
    let mut tc = [0u64; 32];
    let cv = *col(&w.regs, c, &mut tc);
    let mut out = [0u64; 32];
    let mut pv = [0u64; 32];
    let mut mm = m;
    while mm != 0 {
        let l = mm.trailing_zeros() as usize;
        mm &= mm - 1;
        let lane = l as u32;
        let bb = (bv[l] as u32) & 31;
        let cc = cv[l] as u32;
        let clamp = cc & 31;
        let seg = (cc >> 8) & 31;
        let max_lane = (lane & seg) | (clamp & !seg);
        let min_lane = lane & seg;
        let (j, ok) = match mode {
            ShflMode::Up => {
                let j = lane as i32 - bb as i32;
                (j, j >= max_lane as i32)
            }
            ShflMode::Down => {
                let j = (lane + bb) as i32;
                (j, j <= max_lane as i32)
            }
            ShflMode::Bfly => {
                let j = (lane ^ bb) as i32;
                (j, j <= max_lane as i32)
            }
            ShflMode::Idx => {
                let j = (min_lane | (bb & !seg)) as i32;
                (j, j <= max_lane as i32)
            }
        };
        let j = if ok && (0..32).contains(&j) {
            j as usize
        } else {
            l
        };
        out[l] = av[j] & 0xffff_ffff;
        pv[l] = ok as u64;
    }
    store(&mut w.regs, d, m, &out);
    if let Some(p) = p {
        store(&mut w.regs, p, m, &pv);
    }
    Ok(())
}

/// Where a non-global access lands: (space, offset within it).
#[inline(always)]
fn classify(space: Space, addr: u64) -> (Space, u64) {
    match space {
        Space::Generic => {
            if addr.wrapping_sub(SHARED_WINDOW) < WINDOW {
                (Space::Shared, addr - SHARED_WINDOW)
            } else if addr.wrapping_sub(LOCAL_WINDOW) < WINDOW {
                (Space::Local, addr - LOCAL_WINDOW)
            } else {
                (Space::Global, addr)
            }
        }
        s => (s, addr),
    }
}

/// Resolves a shared/local/param access to a byte range in the context's buffers.
#[inline(always)]
fn small_space(
    ctx: &Ctx,
    pc: usize,
    wi: usize,
    lane: usize,
    space: Space,
    off: u64,
    len: u64,
    write: bool,
) -> Result<usize, Fault> {
    let (limit, base) = match space {
        Space::Shared => (ctx.shared.len() as u64, 0u64),
        Space::Local => {
            let t = (wi * 32 + lane) as u64;
            (ctx.code.local_size as u64, t * ctx.code.local_size as u64)
        }
        _ => (ctx.launch.params.len() as u64, 0),
    };
    match off.checked_add(len) {
        Some(e) if e <= limit && !(write && space == Space::Param) => Ok((base + off) as usize),
        _ => Err(small_fault(
            ctx, pc, wi, lane, space, off, len, write, limit,
        )),
    }
}

/// The fault of a shared/local/param access [`small_space`] refused.
#[cold]
#[inline(never)]
fn small_fault(
    ctx: &Ctx,
    pc: usize,
    wi: usize,
    lane: usize,
    space: Space,
    off: u64,
    len: u64,
    write: bool,
    limit: u64,
) -> Fault {
    if write && space == Space::Param {
        return ctx.fault(pc, wi, lane, Some(off), "store to the param space".into());
    }
    ctx.fault(
        pc,
        wi,
        lane,
        Some(off),
        format!(
            "invalid {} {} of {} bytes at offset {:#x}: the {} space of this {} has {} bytes",
            space.name(),
            if write { "write" } else { "read" },
            len,
            off,
            space.name(),
            if space == Space::Local {
                "thread"
            } else if space == Space::Shared {
                "block"
            } else {
                "launch"
            },
            limit
        ),
    )
}

#[inline(always)]
fn val(regs: &Regs, s: Src, l: usize) -> u64 {
    match s {
        Src::Reg(r) => regs[r as usize][l],
        Src::Not(r) => (regs[r as usize][l] & 1) ^ 1,
        Src::Imm(v) => v,
    }
}

/// A global access that missed the instruction's cached allocation.
#[cold]
#[inline(never)]
fn global_slow(
    ctx: &mut Ctx,
    pc: usize,
    warp: usize,
    lane: usize,
    addr: u64,
    len: u64,
    write: bool,
) -> Result<usize, Fault> {
    match ctx.mem.find(addr, len) {
        Ok(i) => {
            ctx.cache[pc] = i as u32;
            Ok(i)
        }
        Err(e) => Err(ctx.fault(
            pc,
            warp,
            lane,
            Some(addr),
            format!(
                "invalid global {} of {} bytes: {}",
                if write { "write" } else { "read" },
                len,
                e
            ),
        )),
    }
}

#[cold]
#[inline(never)]
fn misaligned(
    ctx: &Ctx,
    pc: usize,
    wi: usize,
    l: usize,
    addr: u64,
    len: u64,
    space: Space,
    write: bool,
) -> Fault {
    ctx.fault(
        pc,
        wi,
        l,
        Some(addr),
        format!(
            "misaligned address for a {}-byte {} {}",
            len,
            space.name(),
            if write { "write" } else { "read" }
        ),
    )
}

/// Marks the sectors of the lanes' global accesses (consecutive repeats skipped).
#[inline(always)]
fn mark(ctx: &mut Ctx, m: u32, allocs: &[u32; 32], offs: &[u64; 32], len: u64, write: bool) {
    let mut last: (u32, u64) = (u32::MAX, u64::MAX);
    let mut mm = m;
    let mut new = 0;
    while mm != 0 {
        let l = mm.trailing_zeros() as usize;
        mm &= mm - 1;
        let key = (allocs[l], offs[l] / 32);
        let single = (offs[l] + len - 1) / 32 == key.1;
        if single && key == last {
            continue;
        }
        new += ctx
            .mem
            .mark_sectors(allocs[l] as usize, offs[l], len, write);
        last = if single { key } else { (u32::MAX, u64::MAX) };
    }
    if write {
        ctx.stats.sectors_written += new;
    } else {
        ctx.stats.sectors_read += new;
    }
    ctx.stats.bytes_requested += len * m.count_ones() as u64;
}

fn load(ctx: &mut Ctx, w: &mut Warp, wi: usize, pc: usize, m: u32, x: &MemOp) -> Result<(), Fault> {
    match x.n {
        1 => load_n::<1>(ctx, w, wi, pc, m, x),
        2 => load_n::<2>(ctx, w, wi, pc, m, x),
        _ => load_n::<4>(ctx, w, wi, pc, m, x),
    }
}

#[inline(always)]
fn load_n<const N: usize>(
    ctx: &mut Ctx,
    w: &mut Warp,
    wi: usize,
    pc: usize,
    m: u32,
    x: &MemOp,
) -> Result<(), Fault> {
    let len = x.size as u64 * N as u64;
    if matches!(x.space, Space::Global | Space::Generic) {
        let addrs = addrs_of(w, x);
        if let Some(i) = cached_global(ctx, pc, m, &addrs, len) {
            load_fast::<N>(ctx, w, m, x, i, &addrs);
            return Ok(());
        }
    }
    let mut vals = [[0u64; 32]; N];
    let mut allocs = [0u32; 32];
    let mut offs = [0u64; 32];
    let mut any_global = false;
    let mut all_global = true;
    let mut gmask = 0u32;
    let mut mm = m;
    while mm != 0 {
        let l = mm.trailing_zeros() as usize;
        mm &= mm - 1;
        let addr = match x.base {
            Some(r) => w.regs[r as usize][l].wrapping_add(x.off),
            None => x.off,
        };
        if addr & (len - 1) != 0 && len.is_power_of_two() {
            return Err(misaligned(ctx, pc, wi, l, addr, len, x.space, false));
        }
        let (space, a) = classify(x.space, addr);
        let bytes: &[u8] = if space == Space::Global {
            any_global = true;
            gmask |= 1 << l;
            let c = ctx.cache[pc] as usize;
            let i = match ctx.mem.allocs.get(c) {
                Some(al)
                    if al.live
                        && a >= al.base
                        && a.wrapping_add(len) <= al.base + al.size
                        && a.wrapping_add(len) > a =>
                {
                    c
                }
                _ => global_slow(ctx, pc, wi, l, a, len, false)?,
            };
            let al = &ctx.mem.allocs[i];
            let o = (a - al.base) as usize;
            allocs[l] = i as u32;
            offs[l] = o as u64;
            &al.data[o..o + len as usize]
        } else {
            all_global = false;
            let o = small_space(ctx, pc, wi, l, space, a, len, false)?;
            match space {
                Space::Shared => &ctx.shared[o..o + len as usize],
                Space::Local => &ctx.local[o..o + len as usize],
                _ => &ctx.launch.params[o..o + len as usize],
            }
        };
        for k in 0..N {
            let v = read_le(&bytes[k * x.size as usize..], x.size);
            vals[k][l] = if x.signed { sext(v, x.size) } else { v };
        }
    }
    let _ = all_global;
    if any_global {
        mark(ctx, gmask, &allocs, &offs, len, false);
    }
    for k in 0..N {
        if let Src::Reg(d) = x.regs[k] {
            store(&mut w.regs, d, m, &vals[k]);
        }
    }
    Ok(())
}

fn store_op(
    ctx: &mut Ctx,
    w: &mut Warp,
    wi: usize,
    pc: usize,
    m: u32,
    x: &MemOp,
) -> Result<(), Fault> {
    let len = x.size as u64 * x.n as u64;
    if matches!(x.space, Space::Global | Space::Generic) {
        let addrs = addrs_of(w, x);
        if let Some(i) = cached_global(ctx, pc, m, &addrs, len) {
            store_fast(ctx, w, m, x, i, &addrs);
            return Ok(());
        }
    }
    let mut allocs = [0u32; 32];
    let mut offs = [0u64; 32];
    let mut gmask = 0u32;
    let mut mm = m;
    while mm != 0 {
        let l = mm.trailing_zeros() as usize;
        mm &= mm - 1;
        let addr = match x.base {
            Some(r) => w.regs[r as usize][l].wrapping_add(x.off),
            None => x.off,
        };
        if addr & (len - 1) != 0 && len.is_power_of_two() {
            return Err(misaligned(ctx, pc, wi, l, addr, len, x.space, true));
        }
        let (space, a) = classify(x.space, addr);
        let bytes: &mut [u8] = if space == Space::Global {
            gmask |= 1 << l;
            let c = ctx.cache[pc] as usize;
            let i = match ctx.mem.allocs.get(c) {
                Some(al)
                    if al.live
                        && a >= al.base
                        && a.wrapping_add(len) <= al.base + al.size
                        && a.wrapping_add(len) > a =>
                {
                    c
                }
                _ => global_slow(ctx, pc, wi, l, a, len, true)?,
            };
            let al = &mut ctx.mem.allocs[i];
            let o = (a - al.base) as usize;
            allocs[l] = i as u32;
            offs[l] = o as u64;
            &mut al.data[o..o + len as usize]
        } else {
            let o = small_space(ctx, pc, wi, l, space, a, len, true)?;
            match space {
                Space::Shared => &mut ctx.shared[o..o + len as usize],
                _ => &mut ctx.local[o..o + len as usize],
            }
        };
        for k in 0..x.n as usize {
            write_le(
                &mut bytes[k * x.size as usize..],
                x.size,
                val(&w.regs, x.regs[k], l),
            );
        }
    }
    if gmask != 0 {
        mark(ctx, gmask, &allocs, &offs, len, true);
    }
    Ok(())
}

/// Every lane's address of a load or store (inactive lanes' too: harmless values).
#[inline(always)]
fn addrs_of(w: &Warp, x: &MemOp) -> [u64; 32] {
    match x.base {
        Some(r) => {
            let c = &w.regs[r as usize];
            let mut a = [0u64; 32];
            for l in 0..32 {
                a[l] = c[l].wrapping_add(x.off);
            }
            a
        }
        None => [x.off; 32],
    }
}

/// The fast path of a global (or generic) access: when the address of every lane of `m` is
/// aligned and inside the live allocation the instruction last used, that allocation's
/// index. Such an access is global whatever the space (allocations lie outside the shared
/// and local windows), and the lane-by-lane path would find the same allocation.
#[inline(always)]
fn cached_global(ctx: &Ctx, pc: usize, m: u32, addrs: &[u64; 32], len: u64) -> Option<usize> {
    let c = ctx.cache[pc] as usize;
    let al = ctx.mem.allocs.get(c)?;
    if !al.live || al.size < len {
        return None;
    }
    let span = al.size - len;
    let align = if len.is_power_of_two() { len - 1 } else { 0 };
    let mut bad = 0u32;
    for l in 0..32 {
        let a = addrs[l];
        let b = (a.wrapping_sub(al.base) > span) | (a & align != 0);
        bad |= (b as u32) << l;
    }
    if bad & m == 0 {
        Some(c)
    } else {
        None
    }
}

/// Marks the sectors of the lanes' accesses at `addrs` (all inside the allocation at `base`
/// whose sector bits are `bits`); returns how many were not marked before.
#[inline(always)]
fn mark_fast(bits: &mut [u64], base: u64, addrs: &[u64; 32], m: u32, len: u64) -> u64 {
    let mut new = 0;
    let mut last = u64::MAX;
    let mut mm = m;
    while mm != 0 {
        let l = mm.trailing_zeros() as usize;
        mm &= mm - 1;
        let o = addrs[l] - base;
        let (first, end) = (o / SECTOR, (o + len - 1) / SECTOR);
        if first == last && end == first {
            continue;
        }
        for s in first..=end {
            let (wd, b) = ((s / 64) as usize, 1u64 << (s % 64));
            new += (bits[wd] & b == 0) as u64;
            bits[wd] |= b;
        }
        last = end;
    }
    new
}

/// Reads `N` elements of `S` bytes per lane of `m` from `data` (the allocation at `base`).
#[inline(always)]
fn gather<const S: usize, const N: usize>(
    data: &[u8],
    base: u64,
    addrs: &[u64; 32],
    m: u32,
    vals: &mut [[u64; 32]; N],
) {
    let mut one = |l: usize| {
        let o = (addrs[l] - base) as usize;
        let b = &data[o..o + S * N];
        for k in 0..N {
            let e = &b[k * S..k * S + S];
            vals[k][l] = match S {
                1 => e[0] as u64,
                2 => u16::from_le_bytes([e[0], e[1]]) as u64,
                4 => u32::from_le_bytes([e[0], e[1], e[2], e[3]]) as u64,
                _ => u64::from_le_bytes([e[0], e[1], e[2], e[3], e[4], e[5], e[6], e[7]]),
            };
        }
    };
    if m == u32::MAX {
        for l in 0..32 {
            one(l);
        }
    } else {
        let mut mm = m;
        while mm != 0 {
            let l = mm.trailing_zeros() as usize;
            mm &= mm - 1;
            one(l);
        }
    }
}

/// A load whose lanes all hit allocation `i` (see [`cached_global`]).
#[inline(always)]
fn load_fast<const N: usize>(
    ctx: &mut Ctx,
    w: &mut Warp,
    m: u32,
    x: &MemOp,
    i: usize,
    addrs: &[u64; 32],
) {
    let len = x.size as u64 * N as u64;
    let base = ctx.mem.allocs[i].base;
    let (data, bits) = ctx.mem.data_and_sectors(i, false);
    let mut vals = [[0u64; 32]; N];
    match x.size {
        1 => gather::<1, N>(data, base, addrs, m, &mut vals),
        2 => gather::<2, N>(data, base, addrs, m, &mut vals),
        4 => gather::<4, N>(data, base, addrs, m, &mut vals),
        _ => gather::<8, N>(data, base, addrs, m, &mut vals),
    }
    if x.signed {
        for v in vals.iter_mut() {
            for e in v.iter_mut() {
                *e = sext(*e, x.size);
            }
        }
    }
    let new = mark_fast(bits, base, addrs, m, len);
    ctx.stats.sectors_read += new;
    ctx.stats.bytes_requested += len * m.count_ones() as u64;
    for k in 0..N {
        if let Src::Reg(d) = x.regs[k] {
            store(&mut w.regs, d, m, &vals[k]);
        }
    }
}

/// A store whose lanes all hit allocation `i` (see [`cached_global`]), lanes in order.
#[inline(always)]
fn store_fast(ctx: &mut Ctx, w: &Warp, m: u32, x: &MemOp, i: usize, addrs: &[u64; 32]) {
    let len = x.size as u64 * x.n as u64;
    let base = ctx.mem.allocs[i].base;
    let (data, bits) = ctx.mem.data_and_sectors(i, true);
    let size = x.size as usize;
    let mut mm = m;
    while mm != 0 {
        let l = mm.trailing_zeros() as usize;
        mm &= mm - 1;
        let o = (addrs[l] - base) as usize;
        for k in 0..x.n as usize {
            write_le(
                &mut data[o + k * size..],
                x.size,
                val(&w.regs, x.regs[k], l),
            );
        }
    }
    let new = mark_fast(bits, base, addrs, m, len);
    ctx.stats.sectors_written += new;
    ctx.stats.bytes_requested += len * m.count_ones() as u64;
}
