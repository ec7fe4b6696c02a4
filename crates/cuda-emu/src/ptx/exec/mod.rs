//! The decoded form of a kernel (operands, ops, instructions) and the lane-wise ALU helpers;
//! the interpreter in [`warp`], its loads and stores in [`access`].

// Lane loops index several per-lane arrays at once.
#![allow(clippy::needless_range_loop, clippy::too_many_arguments)]

use super::float::{Round, RoundInt};
use super::{Fault, KernelStats, Launch, Param};
use crate::mem::{Memory, SECTOR};

mod access;
mod warp;

pub use warp::run_kernel;

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
    /// The destination register.
    pub d: u16,
    /// Sources as decoded (registers, negated predicates, immediates).
    pub s: [Src; 4],
    /// The sources as registers (immediates live in constant registers), filled by
    /// [`Code::finish`]; `neg` is xored into each (1 for a negated predicate).
    pub r: [u16; 4],
    /// Xored into each source's value (1 for a negated predicate, else 0).
    pub neg: [u64; 4],
    /// The floating-point rounding modifier (`.rn` when none is given).
    pub rnd: Round,
    /// The integral rounding modifier (`.rzi` when none is given).
    pub irnd: RoundInt,
    /// `.ftz`: subnormal inputs and results flushed to zero.
    pub ftz: bool,
    /// `.sat`: the result clamped (to [0, 1] for floats).
    pub sat: bool,
    /// Operation-specific: comparison code, combining op, conversion flags.
    pub aux: u32,
    /// Operation-specific, second word: a comparison's combining op, a conversion's source
    /// type.
    pub aux2: u32,
}

impl Alu {
    /// An ALU instruction writing register `d`, its sources immediate 0 and no modifiers.
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
    /// `.global`: device memory, through [`Memory`].
    Global,
    /// `.shared`: the block's shared memory.
    Shared,
    /// `.local`: the thread's local memory.
    Local,
    /// `.param`: the kernel's parameter buffer (read only).
    Param,
    /// No space given: the address says which ([`SHARED_WINDOW`], [`LOCAL_WINDOW`], else
    /// global).
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
    /// The state space accessed.
    pub space: Space,
    /// Bytes per element (1, 2, 4, 8).
    pub size: u8,
    /// Elements (1, 2, 4).
    pub n: u8,
    /// Sign-extend loaded values.
    pub signed: bool,
    /// Destination registers (loads; `u16::MAX` is a sink) or sources (stores).
    pub regs: [Src; 4],
    /// The address register, if any (its value plus `off` is the address).
    pub base: Option<u16>,
    /// The byte offset (with a symbol, its address folded in).
    pub off: u64,
}

/// `shfl.sync` modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShflMode {
    /// `.up`: from lane `lane - b`.
    Up,
    /// `.down`: from lane `lane + b`.
    Down,
    /// `.bfly`: from lane `lane ^ b`.
    Bfly,
    /// `.idx`: from lane `b` (within its segment).
    Idx,
}

/// `vote.sync` modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteMode {
    /// `.all`: true when the predicate holds in every lane of the mask.
    All,
    /// `.any`: true when it holds in some lane.
    Any,
    /// `.uni`: true when it is the same in every lane.
    Uni,
    /// `.ballot.b32`: the bit mask of the lanes where it holds.
    Ballot,
}

/// A decoded operation.
#[derive(Clone, Debug)]
pub enum Op {
    /// A lane-wise ALU operation and its operands.
    Alu(AluFn, Alu),
    /// A load.
    Ld(MemOp),
    /// A store.
    St(MemOp),
    /// `mov.bN d, {a, b, ...}`: `n` elements of `bits` each.
    Pack {
        /// The destination register.
        d: u16,
        /// The elements, lowest first.
        s: [Src; 4],
        /// How many elements.
        n: u8,
        /// Bits per element.
        bits: u8,
    },
    /// `mov.bN {a, b, ...}, s` (`u16::MAX` is a sink).
    Unpack {
        /// The destination registers, lowest element first.
        d: [u16; 4],
        /// The packed source.
        a: Src,
        /// How many elements.
        n: u8,
        /// Bits per element.
        bits: u8,
    },
    /// `bra`: jump to this instruction index (lanes split when the guard diverges).
    Bra(u32),
    /// `exit`/`ret`: the lanes end.
    Exit,
    /// `bar.sync 0`: waits for every warp of the block.
    Bar,
    /// `shfl.sync`: reads `a` from another lane of the warp.
    Shfl {
        /// Which lane to read from.
        mode: ShflMode,
        /// The destination register.
        d: u16,
        /// The optional predicate destination: whether the source lane was in range.
        p: Option<u16>,
        /// The value shuffled.
        a: Src,
        /// The lane offset or index.
        b: Src,
        /// The clamp (low 5 bits) and the segment mask (5 bits from bit 8).
        c: Src,
        /// The member mask (the lanes must be converged on it).
        mask: Src,
    },
    /// `vote.sync`: combines a predicate over the warp.
    Vote {
        /// How it combines.
        mode: VoteMode,
        /// The destination register (a predicate, or the ballot's mask).
        d: u16,
        /// The predicate voted on.
        a: Src,
        /// The member mask (the lanes must be converged on it).
        mask: Src,
    },
}

/// One instruction.
#[derive(Clone, Debug)]
pub struct Instr {
    /// What it does.
    pub op: Op,
    /// Guard predicate register and whether it is negated.
    pub guard: Option<(u16, bool)>,
}

/// A kernel, decoded.
pub struct Code {
    /// The entry point's name.
    pub name: String,
    /// Its parameters in order.
    pub params: Vec<Param>,
    /// Bytes of the parameter buffer (every parameter's end, aligned).
    pub param_size: usize,
    /// The instructions; branch targets are indices into it.
    pub instrs: Vec<Instr>,
    /// The PTX line of each instruction (for fault reports).
    pub lines: Vec<u32>,
    /// The PTX text of each instruction (for fault reports).
    pub texts: Vec<String>,
    /// Register slots per lane: specials, declared registers, then constants.
    pub nregs: usize,
    /// Bytes of the statically declared shared variables.
    pub shared_static: u32,
    /// Offset of the dynamic (`.extern .shared`) area.
    pub dyn_off: u32,
    /// Bytes of local memory per thread.
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
