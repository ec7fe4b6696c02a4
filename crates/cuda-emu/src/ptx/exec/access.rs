//! Loads and stores: generic addresses classified, shared/local/param accesses checked against
//! their sizes, global ones through [`Memory`] with a fast path per instruction, sectors marked.

use super::warp::{Ctx, Warp};
use super::*;

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

/// Where one lane's access lands: (allocation index, offset) of a global access, or the
/// space and offset of a shared, local or parameter one.
enum Lands {
    Global(usize, usize),
    Small(Space, usize),
}

/// Lane `l`'s address of `x` (`len` bytes), checked for alignment and bounds, and where it
/// lands (the instruction's cached allocation first, then a search that updates the cache).
#[inline(always)]
fn lane_access(
    ctx: &mut Ctx,
    w: &Warp,
    wi: usize,
    pc: usize,
    l: usize,
    x: &MemOp,
    len: u64,
    write: bool,
) -> Result<Lands, Fault> {
    let addr = match x.base {
        Some(r) => w.regs[r as usize][l].wrapping_add(x.off),
        None => x.off,
    };
    if addr & (len - 1) != 0 && len.is_power_of_two() {
        return Err(misaligned(ctx, pc, wi, l, addr, len, x.space, write));
    }
    let (space, a) = classify(x.space, addr);
    if space != Space::Global {
        let o = small_space(ctx, pc, wi, l, space, a, len, write)?;
        return Ok(Lands::Small(space, o));
    }
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
        _ => global_slow(ctx, pc, wi, l, a, len, write)?,
    };
    Ok(Lands::Global(i, (a - ctx.mem.allocs[i].base) as usize))
}

pub(super) fn load(
    ctx: &mut Ctx,
    w: &mut Warp,
    wi: usize,
    pc: usize,
    m: u32,
    x: &MemOp,
) -> Result<(), Fault> {
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
    let mut gmask = 0u32;
    let mut mm = m;
    while mm != 0 {
        let l = mm.trailing_zeros() as usize;
        mm &= mm - 1;
        let bytes: &[u8] = match lane_access(ctx, w, wi, pc, l, x, len, false)? {
            Lands::Global(i, o) => {
                gmask |= 1 << l;
                allocs[l] = i as u32;
                offs[l] = o as u64;
                &ctx.mem.allocs[i].data[o..o + len as usize]
            }
            Lands::Small(space, o) => match space {
                Space::Shared => &ctx.shared[o..o + len as usize],
                Space::Local => &ctx.local[o..o + len as usize],
                _ => &ctx.launch.params[o..o + len as usize],
            },
        };
        for k in 0..N {
            let v = read_le(&bytes[k * x.size as usize..], x.size);
            vals[k][l] = if x.signed { sext(v, x.size) } else { v };
        }
    }
    if gmask != 0 {
        mark(ctx, gmask, &allocs, &offs, len, false);
    }
    for k in 0..N {
        if let Src::Reg(d) = x.regs[k] {
            store(&mut w.regs, d, m, &vals[k]);
        }
    }
    Ok(())
}

pub(super) fn store_op(
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
        let bytes: &mut [u8] = match lane_access(ctx, w, wi, pc, l, x, len, true)? {
            Lands::Global(i, o) => {
                gmask |= 1 << l;
                allocs[l] = i as u32;
                offs[l] = o as u64;
                &mut ctx.mem.allocs[i].data[o..o + len as usize]
            }
            Lands::Small(space, o) => match space {
                Space::Shared => &mut ctx.shared[o..o + len as usize],
                _ => &mut ctx.local[o..o + len as usize],
            },
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
