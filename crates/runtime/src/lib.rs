//! The runtime: weights over memory-mapped bytes, the operations a forward pass needs
//! ([`Ops`]), and the devices that run them ([`Device`]: the CPU, a CUDA GPU) by shared rules.

pub mod collect;
pub mod cpu;
pub mod cuda;
pub mod device;
pub mod error;
pub mod limits;
pub mod ops;
pub mod pool;
pub mod recurrent;
pub mod rollback;
pub mod tensor;

pub use device::{Device, Pass, Program};
pub use error::BackendError;
pub use limits::{KvConfig, KvType, Limits};
pub use ops::{
    Act, Attention, Batch, DeltaNet, Ops, Plan, Rollback, Rope, RopeMode, GEMM_MIN_TOKENS,
};
pub use recurrent::RecurrentConfig;
pub use tensor::{ByteSource, Bytes, Layout, Weight};
