//! The runtime: weights over memory-mapped bytes, the operations a forward pass needs
//! ([`ops::Ops`]), and the devices that run them (the CPU; CUDA: libraries, probing and kernels so far).

pub mod collect;
pub mod cpu;
pub mod cuda;
pub mod ops;
pub mod pool;
pub mod rollback;
pub mod tensor;

pub use ops::{Act, Attention, Batch, DeltaNet, Ops, Plan, Rollback, Rope, RopeMode};
pub use tensor::{ByteSource, Bytes, Layout, Weight};
