//! NVRTC's PTX, parsed into decoded instructions and interpreted with the CUDA execution
//! model: warps of 32 lanes in lockstep, divergence and reconvergence, block barriers.
//!
//! Every global access goes through [`crate::mem::Memory`] (checked, counted); shared, local
//! and parameter accesses are checked against their declared sizes. An opcode or form not
//! implemented is an error at load naming it and the kernel, never a silent wrong result.

pub mod exec;
pub mod float;
mod ops;
pub mod parse;
#[cfg(test)]
mod tests;

use std::fmt;

use crate::mem::Memory;

/// A parsed PTX module, its globals placed in device memory.
pub struct Module {
    kernels: Vec<Kernel>,
    code: Vec<exec::Code>,
    /// Addresses of the module's globals in device memory.
    globals: Vec<u64>,
}

/// One entry point's interface.
#[derive(Clone, Debug)]
pub struct Kernel {
    /// Its name (`mmvq_q8_0`).
    pub name: String,
    /// Its parameters in order.
    pub params: Vec<Param>,
}

/// One kernel parameter as declared (`.param .u64 x`, `.param .align 8 .b8 s[24]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Param {
    /// Offset in the parameter buffer (aligned).
    pub offset: usize,
    /// Size in bytes.
    pub size: usize,
}

/// A launch's shape and arguments.
pub struct Launch<'a> {
    /// Blocks in x, y, z.
    pub grid: [u32; 3],
    /// Threads per block in x, y, z.
    pub block: [u32; 3],
    /// Dynamic shared memory bytes.
    pub shared_dynamic: u32,
    /// The parameter buffer: each parameter's bytes at its [`Param::offset`].
    pub params: &'a [u8],
}

/// Counters of one kernel (summed over its launches).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct KernelStats {
    /// Executions (graph replays included).
    pub launches: u64,
    /// Instructions issued per warp (one per warp, whatever its active lanes).
    pub warp_instructions: u64,
    /// Global bytes loaded or stored, summed over lanes.
    pub bytes_requested: u64,
    /// Distinct 32-byte sectors read, per launch, summed.
    pub sectors_read: u64,
    /// Distinct 32-byte sectors written, per launch, summed.
    pub sectors_written: u64,
}

/// A fault inside a kernel: what compute-sanitizer would report.
#[derive(Clone, Debug)]
pub struct Fault {
    /// The kernel.
    pub kernel: String,
    /// 1-based line of the faulting instruction in the module's PTX text.
    pub line: usize,
    /// The instruction's text.
    pub instr: String,
    /// Block index (x, y, z).
    pub block: [u32; 3],
    /// Thread index within the block (x, y, z).
    pub thread: [u32; 3],
    /// The address accessed, for memory faults.
    pub addr: Option<u64>,
    /// What went wrong, with the nearest allocation for memory faults.
    pub message: String,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} in kernel {} at PTX line {} ({}) by thread ({},{},{}) in block ({},{},{})",
            self.message,
            self.kernel,
            self.line,
            self.instr,
            self.thread[0],
            self.thread[1],
            self.thread[2],
            self.block[0],
            self.block[1],
            self.block[2],
        )
    }
}

impl Module {
    /// Parses `text` and allocates its module globals (initialised) on `device` in `mem`.
    /// Unknown directives, opcodes or forms are an `Err` naming them and the kernel.
    pub fn load(text: &str, mem: &mut Memory, device: usize) -> Result<Module, String> {
        let mut placed: Vec<u64> = Vec::new();
        let parsed = parse::parse_module(text, |g| {
            let addr = mem.alloc(device, g.size);
            if let Ok(b) = mem.bytes_mut(addr, g.size) {
                b.copy_from_slice(&g.init);
            }
            placed.push(addr);
            addr
        });
        match parsed {
            Ok(p) => Ok(Module {
                kernels: p
                    .kernels
                    .iter()
                    .map(|k| Kernel {
                        name: k.name.clone(),
                        params: k.params.clone(),
                    })
                    .collect(),
                code: p.kernels,
                globals: placed,
            }),
            Err(e) => {
                for a in placed {
                    let _ = mem.free(a);
                }
                Err(e)
            }
        }
    }

    /// The entry points.
    pub fn kernels(&self) -> &[Kernel] {
        &self.kernels
    }

    /// Frees the module's globals.
    pub fn unload(&mut self, mem: &mut Memory) {
        for a in self.globals.drain(..) {
            let _ = mem.free(a);
        }
    }

    /// Runs entry point `kernel` (an index into [`Module::kernels`]) to completion.
    pub fn run(
        &self,
        kernel: usize,
        launch: &Launch,
        mem: &mut Memory,
        stats: &mut KernelStats,
    ) -> Result<(), Fault> {
        let Some(code) = self.code.get(kernel) else {
            return Err(Fault {
                kernel: format!("#{kernel}"),
                line: 0,
                instr: String::new(),
                block: [0; 3],
                thread: [0; 3],
                addr: None,
                message: format!(
                    "no kernel #{kernel} in this module ({} kernels)",
                    self.code.len()
                ),
            });
        };
        exec::run_kernel(code, launch, mem, stats)
    }
}
