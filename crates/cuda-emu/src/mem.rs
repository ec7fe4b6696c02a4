//! Device memory of the emulated GPUs: one address space for every device, allocations whose
//! addresses are never reused (so a use after free is caught), every access checked.
//!
//! Also counts, per kernel launch, the distinct 32-byte sectors read and written (one bit per
//! sector per allocation, cleared when the launch ends).

use std::fmt;

/// Allocation granularity and alignment (as `cuMemAlloc`: at least 256 bytes).
pub const ALIGN: u64 = 256;
/// Unmapped bytes left after every allocation, so an overrun never lands in a neighbour.
const GUARD: u64 = 64 * 1024;
/// The first address handed out: far from 0, so a null or small integer is never valid.
const BASE: u64 = 0x7000_0000_0000;
/// Bytes per sector (the unit of DRAM traffic counted in the statistics).
pub const SECTOR: u64 = 32;
/// What fresh allocations hold: all-ones bytes, which read as NaN in f32, f16 and bf16, so
/// a kernel reading memory nobody wrote shows it.
pub const FILL: u8 = 0xff;

/// One allocation, live or freed (freed ones keep their range for error messages).
pub struct Alloc {
    /// First address.
    pub base: u64,
    /// Size in bytes as requested.
    pub size: u64,
    /// Device ordinal it was allocated on.
    pub device: usize,
    /// Its bytes (empty once freed).
    pub data: Vec<u8>,
    /// Whether it has not been freed.
    pub live: bool,
    /// Sector bits read during the current launch (empty until first touched).
    sectors_r: Vec<u64>,
    /// Sector bits written during the current launch.
    sectors_w: Vec<u64>,
}

impl Alloc {
    /// One past the last address.
    pub fn end(&self) -> u64 {
        self.base + self.size
    }
}

/// A memory access that no live allocation covers.
#[derive(Clone, Debug, PartialEq)]
pub struct MemError {
    /// The faulting address.
    pub addr: u64,
    /// Bytes accessed.
    pub len: u64,
    /// Where the address is relative to the nearest allocation.
    pub what: String,
}

impl fmt::Display for MemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes at {:#x}: {}", self.len, self.addr, self.what)
    }
}

/// Every device's memory.
pub struct Memory {
    /// All allocations ever made, sorted by `base` (addresses only grow).
    pub allocs: Vec<Alloc>,
    next: u64,
    /// Bytes allocated now, per device.
    pub used: Vec<u64>,
    /// Most bytes allocated at once, per device.
    pub peak: Vec<u64>,
    /// Allocations whose sector bits are set in the current launch.
    touched: Vec<usize>,
}

impl Memory {
    /// Empty memory for `devices` devices.
    pub fn new(devices: usize) -> Memory {
        Memory {
            allocs: Vec::new(),
            next: BASE,
            used: vec![0; devices],
            peak: vec![0; devices],
            touched: Vec::new(),
        }
    }

    /// Allocates `size` bytes on `device` (the caller checks capacity) filled with [`FILL`].
    pub fn alloc(&mut self, device: usize, size: u64) -> u64 {
        let base = self.next;
        let span = size.max(1).div_ceil(ALIGN) * ALIGN;
        self.next = base + span + GUARD;
        self.allocs.push(Alloc {
            base,
            size,
            device,
            data: vec![FILL; size as usize],
            live: true,
            sectors_r: Vec::new(),
            sectors_w: Vec::new(),
        });
        self.used[device] += size;
        self.peak[device] = self.peak[device].max(self.used[device]);
        base
    }

    /// Frees the allocation starting at `addr`; returns its device and size.
    pub fn free(&mut self, addr: u64) -> Result<(usize, u64), MemError> {
        let i = self.index_at(addr);
        match i.map(|i| &mut self.allocs[i]) {
            Some(a) if a.base == addr && a.live => {
                a.live = false;
                a.data = Vec::new();
                a.sectors_r = Vec::new();
                a.sectors_w = Vec::new();
                self.used[a.device] -= a.size;
                Ok((a.device, a.size))
            }
            Some(a) if a.base == addr => Err(MemError {
                addr,
                len: 0,
                what: format!("freed twice (a {}-byte allocation)", a.size),
            }),
            _ => Err(MemError {
                addr,
                len: 0,
                what: format!("not the start of an allocation; {}", self.describe(addr)),
            }),
        }
    }

    /// The index of the allocation whose range (live or not, guard excluded) starts at or
    /// before `addr` and is nearest to it.
    fn index_at(&self, addr: u64) -> Option<usize> {
        let i = self.allocs.partition_point(|a| a.base <= addr);
        i.checked_sub(1)
    }

    /// The index of the live allocation holding all of `[addr, addr + len)`.
    #[inline]
    pub fn find(&self, addr: u64, len: u64) -> Result<usize, MemError> {
        if let Some(i) = self.index_at(addr) {
            let a = &self.allocs[i];
            if a.live && addr.checked_add(len).is_some_and(|e| e <= a.end()) {
                return Ok(i);
            }
        }
        Err(MemError {
            addr,
            len,
            what: self.describe(addr),
        })
    }

    /// Where `addr` lies relative to the nearest allocation, in words.
    pub fn describe(&self, addr: u64) -> String {
        let state = |a: &Alloc| if a.live { "live" } else { "freed" };
        let before = self.index_at(addr).map(|i| &self.allocs[i]);
        let after = self
            .allocs
            .get(self.allocs.partition_point(|a| a.base <= addr));
        match (before, after) {
            (Some(a), _) if addr < a.end() => format!(
                "inside a {} allocation of {} bytes at {:#x} (offset {}) on device {}",
                state(a),
                a.size,
                a.base,
                addr - a.base,
                a.device
            ),
            (Some(a), next) => {
                let past = addr - a.end();
                match next {
                    Some(n) if n.base - addr < past => format!(
                        "{} bytes before a {} allocation of {} bytes at {:#x}",
                        n.base - addr,
                        state(n),
                        n.size,
                        n.base
                    ),
                    _ => format!(
                        "{} bytes past the end of a {} allocation of {} bytes at {:#x}",
                        past,
                        state(a),
                        a.size,
                        a.base
                    ),
                }
            }
            (None, Some(n)) => format!(
                "not device memory ({} bytes before the first allocation at {:#x})",
                n.base - addr,
                n.base
            ),
            (None, None) => "not device memory (nothing is allocated)".into(),
        }
    }

    /// The bytes `[addr, addr + len)`, all inside one live allocation.
    pub fn bytes(&self, addr: u64, len: u64) -> Result<&[u8], MemError> {
        let i = self.find(addr, len)?;
        let a = &self.allocs[i];
        let o = (addr - a.base) as usize;
        Ok(&a.data[o..o + len as usize])
    }

    /// The bytes `[addr, addr + len)` to write, all inside one live allocation.
    pub fn bytes_mut(&mut self, addr: u64, len: u64) -> Result<&mut [u8], MemError> {
        let i = self.find(addr, len)?;
        let a = &mut self.allocs[i];
        let o = (addr - a.base) as usize;
        Ok(&mut a.data[o..o + len as usize])
    }

    /// Marks the sectors of `[off, off + len)` of allocation `i` as read (or written) in this
    /// launch; returns how many of them were not marked before.
    #[inline]
    pub fn mark_sectors(&mut self, i: usize, off: u64, len: u64, write: bool) -> u64 {
        let (_, bits) = self.data_and_sectors(i, write);
        let mut new = 0;
        let first = off / SECTOR;
        let last = (off + len.max(1) - 1) / SECTOR;
        for s in first..=last {
            let (w, b) = ((s / 64) as usize, 1u64 << (s % 64));
            if bits[w] & b == 0 {
                bits[w] |= b;
                new += 1;
            }
        }
        new
    }

    /// The bytes of allocation `i` and its sector bits of this launch for reads (or writes),
    /// one bit per 32-byte sector (allocated on first use in a launch).
    #[inline]
    pub fn data_and_sectors(&mut self, i: usize, write: bool) -> (&mut [u8], &mut [u64]) {
        let a = &mut self.allocs[i];
        let bits = if write {
            &mut a.sectors_w
        } else {
            &mut a.sectors_r
        };
        if bits.is_empty() {
            let sectors = a.size.div_ceil(SECTOR).max(1);
            *bits = vec![0; sectors.div_ceil(64) as usize];
            self.touched.push(i);
        }
        (&mut a.data, bits)
    }

    /// Forgets the sector bits of the launch that ended.
    pub fn clear_sectors(&mut self) {
        for i in self.touched.drain(..) {
            let a = &mut self.allocs[i];
            a.sectors_r = Vec::new();
            a.sectors_w = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_never_reused_and_checked() {
        let mut m = Memory::new(1);
        let a = m.alloc(0, 100);
        assert_eq!(a % ALIGN, 0);
        assert_eq!(m.bytes(a, 100).unwrap().len(), 100);
        assert!(m.find(a + 96, 8).is_err(), "an access past the end");
        assert_eq!(m.free(a).unwrap(), (0, 100));
        let b = m.alloc(0, 100);
        assert!(b > a);
        let e = m.find(a, 4).unwrap_err();
        assert!(e.what.contains("freed"), "{e}");
        assert!(m.free(a).unwrap_err().what.contains("twice"));
        let e = m.find(b + 104, 4).unwrap_err();
        assert!(e.what.contains("4 bytes past the end"), "{e}");
        assert!(m.find(0, 4).unwrap_err().what.contains("not device memory"));
        assert_eq!(m.peak[0], 100);
    }

    #[test]
    fn sectors_count_once_per_launch() {
        let mut m = Memory::new(1);
        let a = m.alloc(0, 1000);
        let i = m.find(a, 1).unwrap();
        assert_eq!(m.mark_sectors(i, 0, 64, false), 2);
        assert_eq!(m.mark_sectors(i, 60, 8, false), 1);
        assert_eq!(m.mark_sectors(i, 0, 4, true), 1);
        m.clear_sectors();
        assert_eq!(m.mark_sectors(i, 0, 4, false), 1);
    }
}
