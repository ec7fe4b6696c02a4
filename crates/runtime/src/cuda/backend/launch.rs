//! Launching kernels: the arguments, the state of one pass ([`CudaOps`]) and its first error,
//! and the checked launch every op and the rollback go through.

use std::cell::{Cell, RefCell};
use std::ffi::c_void;

use cudarc::driver::{result, sys};

use super::weights::DevWeight;
use super::{BackendError, CudaBackend};
use crate::collect::{vector_key, weight_key};
use crate::cuda::kernels::{Kernel, Param, MAX_PARAMS};
use crate::ops::GEMM_MIN_TOKENS;
use crate::ops::{Act, Batch};
use crate::tensor::Weight;

/// The largest grid y and z of a launch (x goes to 2^31 - 1).
pub(super) const MAX_GRID_YZ: u32 = 65535;

/// A kernel argument: a device pointer, an int, an unsigned int, a float or a 64-bit int
/// (the kinds of [`Param`], in the same order).
#[derive(Clone, Copy, Debug)]
pub(super) enum Arg {
    P(u64),
    I(i32),
    U(u32),
    F(f32),
    L(i64),
}

impl Arg {
    pub(super) fn ptr(&self) -> *mut c_void {
        match self {
            Arg::P(v) => v as *const u64 as *mut c_void,
            Arg::I(v) => v as *const i32 as *mut c_void,
            Arg::U(v) => v as *const u32 as *mut c_void,
            Arg::F(v) => v as *const f32 as *mut c_void,
            Arg::L(v) => v as *const i64 as *mut c_void,
        }
    }

    pub(super) fn bits(&self) -> u64 {
        match *self {
            Arg::P(v) => v,
            Arg::I(v) => v as u32 as u64 | 1 << 40,
            Arg::U(v) => v as u64 | 4 << 40,
            Arg::F(v) => v.to_bits() as u64 | 2 << 40,
            Arg::L(v) => v as u64 ^ 3 << 60,
        }
    }

    /// The parameter kind this argument fills.
    pub(super) fn kind(&self) -> Param {
        match self {
            Arg::P(_) => Param::Ptr,
            Arg::I(_) => Param::I32,
            Arg::U(_) => Param::U32,
            Arg::F(_) => Param::F32,
            Arg::L(_) => Param::I64,
        }
    }
}

/// Checks `args` against the declared parameters of `kernel`: as many, each of its kind.
pub(super) fn check_args(kernel: &Kernel, args: &[Arg]) -> Result<(), String> {
    let kinds: Vec<Param> = args.iter().map(Arg::kind).collect();
    if kinds != kernel.params {
        return Err(format!(
            "arguments {kinds:?} do not match the kernel's parameters {:?}",
            kernel.params
        ));
    }
    Ok(())
}

/// What a pass does with its launches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mode {
    /// Launches them.
    Launch,
    /// Only hashes them (the dry run before a graph replay).
    Hash,
}

/// One forward pass on the GPU: every op launches kernels on the backend's stream.
pub struct CudaOps<'a> {
    pub(super) be: &'a CudaBackend,
    pub(super) batch: &'a Batch,
    /// The sequence and first position when the batch is a prompt chunk.
    pub(super) chunk: Option<(u32, u32)>,
    pub(super) mode: Mode,
    pub(super) hash: Cell<u64>,
    pub(super) used_blas: Cell<bool>,
    pub(super) err: RefCell<Option<BackendError>>,
    /// The activation buffer (and rows) `q8` holds quantized, and the one `xh` holds as f16.
    /// Which activation (id, rows, cols) the q8 / f16 scratch holds.
    pub(super) quantized: Cell<Option<(u32, usize, usize)>>,
    pub(super) halved: Cell<Option<(u32, usize, usize)>>,
    pub(super) touched: Cell<bool>,
}

pub(super) fn fnv(h: u64, v: u64) -> u64 {
    let mut h = h;
    for b in v.to_le_bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

pub(super) fn grid1(n: usize, per: usize) -> u32 {
    n.div_ceil(per).max(1) as u32
}

impl<'a> CudaOps<'a> {
    pub(super) fn new(be: &'a CudaBackend, batch: &'a Batch, mode: Mode) -> CudaOps<'a> {
        CudaOps {
            be,
            batch,
            chunk: batch.prompt_chunk(GEMM_MIN_TOKENS),
            mode,
            hash: Cell::new(0xcbf2_9ce4_8422_2325),
            used_blas: Cell::new(false),
            err: RefCell::new(None),
            quantized: Cell::new(None),
            halved: Cell::new(None),
            touched: Cell::new(false),
        }
    }

    /// The pass's outcome: its first error, or whether a recurrent op ran.
    pub(super) fn result(self) -> Result<bool, BackendError> {
        match self.err.into_inner() {
            Some(e) => Err(e),
            None => Ok(self.touched.get()),
        }
    }

    pub(super) fn failed(&self) -> bool {
        self.err.borrow().is_some()
    }

    pub(super) fn fail(&self, op: &str, reason: String) {
        let mut e = self.err.borrow_mut();
        if e.is_none() {
            *e = Some(BackendError::Op {
                op: op.to_string(),
                reason,
            });
        }
    }

    /// The device address of an activation buffer, checking its width.
    pub(super) fn act(&self, a: Act) -> u64 {
        match self.be.widths.get(a.id as usize) {
            Some(&w) if w == a.width => self.be.acts[a.id as usize].ptr,
            _ => {
                self.fail(
                    "activation",
                    format!(
                        "buffer {} of width {} is not in this backend's plan",
                        a.id, a.width
                    ),
                );
                0
            }
        }
    }

    pub(super) fn info(&self, off: usize) -> u64 {
        self.be.info.ptr + (off * 4) as u64
    }

    pub(super) fn vector(&self, op: &str, v: &[f32]) -> u64 {
        match self.be.vectors.get(&vector_key(v)) {
            Some(&p) => p,
            None => {
                self.fail(
                    op,
                    format!(
                        "a vector of {} values was not uploaded at load (the model's code \
                         used a different one than in the load-time pass)",
                        v.len()
                    ),
                );
                0
            }
        }
    }

    pub(super) fn weight(&self, op: &str, w: &Weight) -> Option<DevWeight> {
        let d = self.be.weights.get(&weight_key(w)).copied();
        if d.is_none() {
            self.fail(
                op,
                format!(
                    "a {:?} weight of {} × {} was not uploaded at load",
                    w.ty, w.rows, w.cols
                ),
            );
        }
        d
    }

    /// Notes that an op wrote `a`: forget converted copies of it.
    pub(super) fn wrote(&self, a: Act) {
        for c in [&self.quantized, &self.halved] {
            if c.get().is_some_and(|(id, _, _)| id == a.id) {
                c.set(None);
            }
        }
    }

    /// Launches (or hashes) kernel `name`; `shapes` describes the call for error messages.
    pub(super) fn launch(
        &self,
        name: &str,
        grid: (u32, u32, u32),
        block: u32,
        args: &[Arg],
        shapes: impl FnOnce() -> String,
    ) {
        if self.failed() {
            return;
        }
        if self.mode == Mode::Hash {
            let mut h = self.hash.get();
            h = fnv(h, name.as_ptr() as u64 ^ (name.len() as u64) << 48);
            h = fnv(h, grid.0 as u64 | (grid.1 as u64) << 32);
            h = fnv(h, grid.2 as u64 | (block as u64) << 32);
            for a in args {
                h = fnv(h, a.bits());
            }
            self.hash.set(h);
            // Still check the kernel and its arguments, so a dry run fails as the real one
            // would.
            if let Err(e) = self.be.func(name, args) {
                *self.err.borrow_mut() = Some(e);
            }
            return;
        }
        if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 || grid.1 > MAX_GRID_YZ || grid.2 > MAX_GRID_YZ
        {
            self.fail(name, format!("bad grid {grid:?} for {}", shapes()));
            return;
        }
        let f = match self.be.func(name, args) {
            Ok(f) => f,
            Err(e) => {
                *self.err.borrow_mut() = Some(e);
                return;
            }
        };
        // SAFETY: `args` were checked against the kernel's declared parameters (which a test
        // checks against its .cu signature); each op passes device addresses of buffers
        // allocated for the largest batch and checked shapes, so the grid stays inside them.
        let r = unsafe { self.be.launch_checked(f, grid, block, args) };
        if let Err(e) = r {
            self.fail(
                name,
                format!(
                    "launch failed: {e} (grid {grid:?}, block {block}; {})",
                    shapes()
                ),
            );
            return;
        }
        if self.be.sync_each {
            if let Err(e) = self.be.dev.stream.synchronize() {
                self.fail(
                    name,
                    format!(
                        "kernel failed: {e} (grid {grid:?}, block {block}; {})",
                        shapes()
                    ),
                );
            }
        }
    }

    /// Element-wise kernel over `n` rows of `width`.
    pub(super) fn rows_kernel(&self, name: &str, n: usize, width: usize, args: &[Arg]) {
        self.launch(name, (grid1(width, 256), n as u32, 1), 256, args, || {
            format!("{n} rows of {width}")
        });
    }
}

impl CudaBackend {
    /// Kernel `name`, once `args` are checked against its declaration.
    pub(super) fn func(&self, name: &str, args: &[Arg]) -> Result<sys::CUfunction, BackendError> {
        let op = |reason| BackendError::Op {
            op: name.into(),
            reason,
        };
        let (f, kernel) = self.dev.kernel(name).map_err(op)?;
        check_args(kernel, args).map_err(op)?;
        Ok(f.cu_function())
    }

    /// Launches `f` on the backend's stream with `args` (copied by the driver before it
    /// returns).
    ///
    /// # Safety
    /// `args` must match `f`'s parameters (see [`CudaBackend::func`]), and the grid must
    /// stay inside the buffers they point to.
    pub(super) unsafe fn launch_checked(
        &self,
        f: sys::CUfunction,
        grid: (u32, u32, u32),
        block: u32,
        args: &[Arg],
    ) -> Result<(), result::DriverError> {
        let mut ptrs = [std::ptr::null_mut::<c_void>(); MAX_PARAMS];
        for (p, a) in ptrs.iter_mut().zip(args) {
            *p = a.ptr();
        }
        // SAFETY: as the caller promises; `ptrs` points at `args`, alive for the call.
        unsafe {
            result::launch_kernel(
                f,
                grid,
                (block, 1, 1),
                0,
                self.dev.stream.cu_stream(),
                &mut ptrs[..args.len().min(MAX_PARAMS)],
            )
        }
    }

    /// A launch outside a pass (rollback).
    pub(super) fn launch_now(
        &self,
        name: &str,
        grid: (u32, u32, u32),
        block: u32,
        args: &[Arg],
    ) -> Result<(), BackendError> {
        let f = self.func(name, args)?;
        // SAFETY: `args` checked against the kernel's declaration; each caller passes device
        // pointers into buffers sized for `grid`.
        unsafe { self.launch_checked(f, grid, block, args) }.map_err(|e| BackendError::Op {
            op: name.into(),
            reason: format!("launch failed: {e}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::kernels::kernel;

    /// A launch with the wrong arity or a wrong kind is refused before the driver sees it.
    #[test]
    fn launch_arguments_are_checked_against_the_declaration() {
        let k = kernel("scale").expect("declared");
        let good = [Arg::P(0), Arg::I(4), Arg::F(0.5), Arg::I(4)];
        assert!(check_args(k, &good).is_ok());
        assert!(check_args(k, &good[..3]).is_err());
        let swapped = [Arg::P(0), Arg::I(4), Arg::I(1), Arg::I(4)];
        assert!(check_args(k, &swapped).is_err());
        let rope = kernel("rope").expect("declared");
        assert_eq!(rope.params[10], Param::U32);
        assert!(kernel("no_such_kernel").is_none());
    }
}
