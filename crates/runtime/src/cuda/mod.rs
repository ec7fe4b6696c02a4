//! CUDA: finding the libraries (driver, NVRTC, cuBLAS) without a toolkit, probing GPUs, the
//! kernels compiled at run time for the GPU at hand, and the backend that runs a model.
//!
//! Always compiled: nothing here links against CUDA, every library is opened at run time,
//! and a machine without a driver or GPU gets a reason string instead of a panic.
//! What each piece does:
//! - [`libs`]: where the libraries are (override dir, LD_LIBRARY_PATH, toolkit, pip wheels).
//! - [`device`]: the driver (through cudarc, after our own lookup) and its GPUs.
//! - [`nvrtc`], [`cublas`]: our bindings, loaded by full path (CUDA 12 or 13).
//! - [`kernels`]: the `.cu` sources and each kernel's parameters, compiled per architecture
//!   and cached on disk.
//! - [`gpu`]: [`gpu::GpuContext`], one GPU opened with every kernel loaded (tests compare each
//!   kernel with the CPU); [`device::GpuInfo`] only describes a GPU.
//! - [`backend`]: a model's memory on one GPU and the [`crate::Ops`] that launch the kernels.

pub mod backend;
#[cfg(test)]
mod backend_tests;
pub mod cublas;
pub mod device;
pub mod gpu;
#[cfg(test)]
mod gpu_tests;
pub mod kernels;
pub mod libs;
pub mod nvrtc;

use std::time::Instant;

use nvrtc::Nvrtc;

/// Whether `SURPLUS_TEST_GPU` asks the tests for the GPU (set, not empty, not `0`; as
/// `scripts/emu.sh` and `scripts/gpu_check.sh` set it): then they run on it, and a GPU that
/// does not open fails them instead of skipping them.
pub fn gpu_tests_required() -> bool {
    std::env::var("SURPLUS_TEST_GPU").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// The NVRTC to use for a GPU of architecture `sm` under a driver supporting CUDA
/// `driver_major`: the first of `all` (override first, then newest) that can target `sm` and
/// is not newer than the driver (a newer NVRTC's output may not load); failing that, the
/// first that can target `sm`.
pub fn pick_nvrtc(all: &[Nvrtc], sm: u32, driver_major: Option<u32>) -> Option<&Nvrtc> {
    let fits = |n: &&Nvrtc| driver_major.is_none_or(|d| n.version.0 as u32 <= d);
    all.iter()
        .filter(|n| n.supports(sm))
        .find(fits)
        .or_else(|| all.iter().find(|n| n.supports(sm)))
}

/// The outcome of compiling one module for one architecture.
#[derive(Clone, Debug)]
pub struct KernelCheck {
    /// Module name (`matvec`).
    pub name: &'static str,
    /// Target architecture (70 for sm_70).
    pub arch: u32,
    /// NVRTC version used, if one could target `arch`.
    pub nvrtc: Option<(i32, i32)>,
    /// Whether it compiled and defines every kernel listed for it.
    pub ok: bool,
    /// NVRTC's log, or why it failed.
    pub log: String,
    /// Entry points the module defines.
    pub entry_points: usize,
    /// CUBIN size in bytes (0 on failure).
    pub cubin_bytes: usize,
    /// Compile time in seconds.
    pub seconds: f64,
}

/// Compiles every module for every arch in `archs` (no cache), each with the first NVRTC of
/// `all` that can target it, and checks that each CUBIN defines the module's kernels.
pub fn compile_check(all: &[Nvrtc], archs: &[u32]) -> Vec<KernelCheck> {
    let mut out = Vec::new();
    for &arch in archs {
        let nv = all.iter().find(|n| n.supports(arch));
        for m in kernels::MODULES {
            let start = Instant::now();
            let mut check = KernelCheck {
                name: m.name,
                arch,
                nvrtc: nv.map(|n| n.version),
                ok: false,
                log: String::new(),
                entry_points: m.kernels.len(),
                cubin_bytes: 0,
                seconds: 0.0,
            };
            match nv {
                None => {
                    let have: Vec<String> = all
                        .iter()
                        .map(|n| format!("{}.{}", n.version.0, n.version.1))
                        .collect();
                    check.log = format!(
                        "no NVRTC found can target sm_{arch} (found: {}); NVRTC 12 reaches \
                         sm_50..sm_90, NVRTC 13 sm_75 and newer",
                        if have.is_empty() {
                            "none".into()
                        } else {
                            have.join(", ")
                        }
                    );
                }
                Some(nv) => match kernels::build(m, arch, nv, false) {
                    Ok(b) => {
                        let missing: Vec<&str> = m
                            .kernels
                            .iter()
                            .map(|k| k.name)
                            .filter(|k| !kernels::cubin_defines(&b.cubin, k))
                            .collect();
                        check.ok = missing.is_empty();
                        check.cubin_bytes = b.cubin.len();
                        check.log = b.log;
                        if !missing.is_empty() {
                            check.log.push_str(&format!(
                                "kernels missing from the CUBIN: {}",
                                missing.join(", ")
                            ));
                        }
                    }
                    Err(e) => check.log = e,
                },
            }
            check.seconds = start.elapsed().as_secs_f64();
            out.push(check);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Compiles every kernel for Pascal, Volta and Hopper when an NVRTC is found (CI installs
    /// `nvidia-cuda-nvrtc-cu12`); passes with a note when none is.
    #[test]
    fn kernels_compile_with_the_nvrtc_found() {
        let (all, errs) = Nvrtc::load_all();
        if all.is_empty() {
            eprintln!("skipped: no NVRTC found ({errs:?}); pip install nvidia-cuda-nvrtc-cu12");
            return;
        }
        let archs: Vec<u32> = [61, 70, 90]
            .into_iter()
            .filter(|&a| all.iter().any(|n| n.supports(a)))
            .collect();
        let checks = compile_check(&all, &archs);
        let failed: Vec<String> = checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| format!("{} sm_{}: {}", c.name, c.arch, c.log))
            .collect();
        assert!(failed.is_empty(), "{}", failed.join("\n\n"));
        for c in &checks {
            eprintln!("{} sm_{} ok ({:.1}s)", c.name, c.arch, c.seconds);
        }
    }

    /// A build is written to the disk cache and read back from it.
    #[test]
    fn builds_are_cached_on_disk() {
        let (all, _) = Nvrtc::load_all();
        let Some(nv) = all.first() else {
            eprintln!("skipped: no NVRTC found");
            return;
        };
        let dir = std::env::temp_dir().join(format!("surplus-kcache-{}", std::process::id()));
        // Only this test reads the variable.
        std::env::set_var("SURPLUS_KERNEL_CACHE", &dir);
        let m = kernels::MODULES.iter().find(|m| m.name == "rope").unwrap();
        let first = kernels::build(m, 75, nv, true).unwrap();
        let second = kernels::build(m, 75, nv, true).unwrap();
        std::env::remove_var("SURPLUS_KERNEL_CACHE");
        let _ = std::fs::remove_dir_all(&dir);
        assert!(!first.cached && second.cached);
        assert_eq!(first.cubin, second.cubin);
    }

    #[test]
    fn probing_never_panics() {
        // On a machine without a GPU this is an Err with a reason; with one, Ok.
        match device::probe() {
            Ok(d) => assert!(!d.gpus.is_empty()),
            Err(reason) => assert!(!reason.is_empty()),
        }
    }
}
