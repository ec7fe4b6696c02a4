//! An emulated NVIDIA GPU: a stand-in for `libcuda.so.1` and `libcublas.so` that runs the PTX
//! NVRTC emitted for our kernels on the CPU, warp by warp, with every memory access checked.
//!
//! Built as a shared library (`scripts/emu.sh` lays it out as `libcuda.so.1` and
//! `libcublas.so.12` and points `SURPLUS_CUDA_LIB_DIR` at it) and as an rlib for its tests.
//! - [`mem`]: device memory, one address space, addresses never reused, sector counting.
//! - [`ptx`]: NVRTC's PTX parsed and interpreted (warps of 32, divergence, barriers).
//! - [`driver`]: the driver API exports (devices from `SURPLUS_EMU_GPUS`, streams, graphs).
//! - [`cublas`]: `cublasGemmEx` and friends, done on the CPU.
//! - [`stats`]: counters written as JSON to `SURPLUS_EMU_STATS` at exit.

pub mod cublas;
pub mod driver;
pub mod mem;
pub mod ptx;
pub mod stats;
