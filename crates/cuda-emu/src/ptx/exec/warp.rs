//! The interpreter: a grid run block by block, warps of 32 lanes with one program counter per
//! lane, "lowest PC first" scheduling (reconverging structured code), barriers, shuffles.

use super::access::{load, store_op};
use super::*;

pub(super) struct Warp {
    pub(super) regs: Vec<[u64; 32]>,
    pub(super) pc: u32,
    /// Lanes at `pc`, running.
    pub(super) active: u32,
    /// Lanes not exited.
    pub(super) live: u32,
    /// Lanes waiting at a barrier.
    pub(super) waiting: u32,
    pub(super) lane_pc: [u32; 32],
    /// Lowest PC of the live, non-waiting lanes not in `active` (`u32::MAX` if none).
    pub(super) others_min: u32,
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

pub(super) struct Ctx<'a> {
    pub(super) code: &'a Code,
    pub(super) launch: &'a Launch<'a>,
    pub(super) mem: &'a mut Memory,
    pub(super) shared: Vec<u8>,
    pub(super) local: Vec<u8>,
    pub(super) cache: Vec<u32>,
    pub(super) block: [u32; 3],
    pub(super) stats: KernelStats,
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
    pub(super) fn fault(
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
