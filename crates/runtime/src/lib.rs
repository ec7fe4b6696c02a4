//! The runtime: weights over memory-mapped bytes, the operations a forward pass needs
//! ([`ops::Ops`]), and the devices that run them (the CPU; CUDA: libraries, probing and kernels so far).

pub mod collect;
pub mod cpu;
pub mod cuda;
pub mod error;
pub mod limits;
pub mod ops;
pub mod pool;
pub mod recurrent;
pub mod rollback;
pub mod tensor;

pub use error::BackendError;
pub use limits::{KvConfig, Limits};
pub use ops::{
    Act, Attention, Batch, DeltaNet, Ops, Plan, Rollback, Rope, RopeMode, GEMM_MIN_TOKENS,
};
pub use recurrent::RecurrentConfig;
pub use tensor::{ByteSource, Bytes, Layout, Weight};
