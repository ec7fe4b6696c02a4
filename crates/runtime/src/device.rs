//! The device layer: what a caller asks of a device (the CPU, or one GPU) as one trait:
//! run a pass of a model's code, read and write activations, roll back and copy sequences.
//!
//! A model's code is written once over [`Ops`] ([`Program`]); a device runs it with its own
//! ops through [`Pass`], which keeps [`Device`] object-safe, so that the devices a model is
//! spread over can be a list.

use crate::cpu::{CpuBackend, CpuOps};
use crate::cuda::backend::{CudaBackend, CudaOps};
use crate::error::BackendError;
use crate::limits::Limits;
use std::ops::Range;

use crate::ops::{Act, Batch, Ops, Rollback};

/// Code a device runs in a forward pass, generic over the device's [`Ops`] (a model's pass,
/// or part of one).
pub trait Program: Sync {
    /// Issues the pass's operations on `o`.
    fn run<O: Ops>(&self, o: &O);
}

/// A [`Program`] as each device calls it (implemented for every program; object-safe).
pub trait Pass: Sync {
    /// Runs on the CPU's ops.
    fn on_cpu(&self, o: &CpuOps);
    /// Runs on a GPU's ops.
    fn on_cuda(&self, o: &CudaOps);
}

impl<P: Program> Pass for P {
    fn on_cpu(&self, o: &CpuOps) {
        self.run(o)
    }

    fn on_cuda(&self, o: &CudaOps) {
        self.run(o)
    }
}

/// A device holding a model's activations and state (KV cache, recurrent state).
pub trait Device: Rollback<Error = BackendError> + Send {
    /// Runs one forward pass of `pass` over `batch` (tokens of a vocabulary of `vocab`),
    /// checked against [`Device::limits`] first.
    fn forward(&mut self, batch: &Batch, vocab: usize, pass: &dyn Pass)
        -> Result<(), BackendError>;
    /// The first `rows` rows of an activation buffer, after the passes so far.
    fn read(&mut self, act: Act, rows: usize) -> Result<&[f32], BackendError>;
    /// Writes `data` (whole rows) into the first rows of an activation buffer.
    fn write(&mut self, act: Act, data: &[f32]) -> Result<(), BackendError>;
    /// Copies the KV cache of sequence `src` up to `len` positions into sequence `dst`.
    fn kv_copy(&mut self, src: usize, dst: usize, len: usize) -> Result<(), BackendError>;
    /// Positions the recurrent state of `seq` covers (`None` without recurrent layers).
    fn recurrent_len(&self, seq: u32) -> Option<usize>;
    /// Bytes [`Device::kv_save`] writes per position: keys and values of every layer this
    /// device holds, in the cache's types.
    fn kv_token_bytes(&self) -> usize;
    /// Appends the keys and values of positions `range` of sequence `seq` (every layer this
    /// device holds, layer by layer: keys, then values) to `out`, as the cache stores them.
    fn kv_save(
        &mut self,
        seq: u32,
        range: Range<usize>,
        out: &mut Vec<u8>,
    ) -> Result<(), BackendError>;
    /// Writes positions `range` of sequence `seq` back from the front of `data` (what
    /// [`Device::kv_save`] wrote for the same range); returns the bytes it took.
    fn kv_load(
        &mut self,
        seq: u32,
        range: Range<usize>,
        data: &[u8],
    ) -> Result<usize, BackendError>;
    /// Bytes of one sequence's recurrent state (0 without recurrent layers).
    fn state_bytes(&self) -> usize;
    /// Appends sequence `seq`'s current recurrent state to `out` (nothing without recurrent
    /// layers).
    fn state_save(&mut self, seq: u32, out: &mut Vec<u8>) -> Result<(), BackendError>;
    /// Makes the front of `data` (what [`Device::state_save`] wrote) sequence `seq`'s state,
    /// covering `len` positions: its next batch continues at `len`. Returns the bytes taken.
    fn state_load(&mut self, seq: u32, len: usize, data: &[u8]) -> Result<usize, BackendError>;
    /// The bounds every batch must fit.
    fn limits(&self) -> Limits;
    /// Host threads its passes run on.
    fn n_threads(&self) -> usize {
        1
    }
    /// The CPU backend, when this device is the CPU (to share its threads).
    fn as_cpu(&self) -> Option<&CpuBackend> {
        None
    }
    /// The CPU backend, mutably, when this device is the CPU.
    fn as_cpu_mut(&mut self) -> Option<&mut CpuBackend> {
        None
    }
    /// Whether this device is a GPU.
    fn is_gpu(&self) -> bool {
        false
    }
    /// The CUDA backend, when this device is a GPU (for copies between GPUs).
    fn as_cuda(&self) -> Option<&CudaBackend> {
        None
    }
}

/// The check of a write into an activation buffer of `len` values: whole rows that fit.
fn check_write(act: Act, data: &[f32], len: usize) -> Result<(), BackendError> {
    if !data.len().is_multiple_of(act.width) || data.len() > len {
        return Err(BackendError::Op {
            op: "write".into(),
            reason: format!(
                "{} values into a buffer of {} per row and {} values",
                data.len(),
                act.width,
                len
            ),
        });
    }
    Ok(())
}

impl Device for CpuBackend {
    fn forward(
        &mut self,
        batch: &Batch,
        vocab: usize,
        pass: &dyn Pass,
    ) -> Result<(), BackendError> {
        CpuBackend::forward(self, batch, vocab, |o| pass.on_cpu(o))
    }

    fn read(&mut self, act: Act, rows: usize) -> Result<&[f32], BackendError> {
        let len = self.act_len(act);
        if rows * act.width > len {
            return Err(BackendError::Op {
                op: "read".into(),
                reason: format!("{rows} rows of {} from {len} values", act.width),
            });
        }
        Ok(CpuBackend::read(self, act, rows))
    }

    fn write(&mut self, act: Act, data: &[f32]) -> Result<(), BackendError> {
        check_write(act, data, self.act_len(act))?;
        CpuBackend::write(self, act, data);
        Ok(())
    }

    fn kv_copy(&mut self, src: usize, dst: usize, len: usize) -> Result<(), BackendError> {
        let n_seq = self.kv_config().n_seq;
        if src >= n_seq || dst >= n_seq {
            return Err(BackendError::Op {
                op: "kv_copy".into(),
                reason: format!("sequences {src} -> {dst} of {n_seq}"),
            });
        }
        CpuBackend::kv_copy(self, src, dst, len);
        Ok(())
    }

    fn recurrent_len(&self, seq: u32) -> Option<usize> {
        CpuBackend::recurrent_len(self, seq)
    }

    fn kv_token_bytes(&self) -> usize {
        CpuBackend::kv_token_bytes(self)
    }

    fn kv_save(
        &mut self,
        seq: u32,
        range: Range<usize>,
        out: &mut Vec<u8>,
    ) -> Result<(), BackendError> {
        CpuBackend::kv_save(self, seq, range, out)
    }

    fn kv_load(
        &mut self,
        seq: u32,
        range: Range<usize>,
        data: &[u8],
    ) -> Result<usize, BackendError> {
        CpuBackend::kv_load(self, seq, range, data)
    }

    fn state_bytes(&self) -> usize {
        CpuBackend::state_bytes(self)
    }

    fn state_save(&mut self, seq: u32, out: &mut Vec<u8>) -> Result<(), BackendError> {
        CpuBackend::state_save(self, seq, out)
    }

    fn state_load(&mut self, seq: u32, len: usize, data: &[u8]) -> Result<usize, BackendError> {
        CpuBackend::state_load(self, seq, len, data)
    }

    fn limits(&self) -> Limits {
        CpuBackend::limits(self)
    }

    fn n_threads(&self) -> usize {
        CpuBackend::n_threads(self)
    }

    fn as_cpu(&self) -> Option<&CpuBackend> {
        Some(self)
    }

    fn as_cpu_mut(&mut self) -> Option<&mut CpuBackend> {
        Some(self)
    }
}

impl Device for CudaBackend {
    fn forward(
        &mut self,
        batch: &Batch,
        vocab: usize,
        pass: &dyn Pass,
    ) -> Result<(), BackendError> {
        CudaBackend::forward(self, batch, vocab, |o| pass.on_cuda(o))
    }

    fn read(&mut self, act: Act, rows: usize) -> Result<&[f32], BackendError> {
        CudaBackend::read(self, act, rows)
    }

    fn write(&mut self, act: Act, data: &[f32]) -> Result<(), BackendError> {
        CudaBackend::write(self, act, data)
    }

    fn kv_copy(&mut self, src: usize, dst: usize, len: usize) -> Result<(), BackendError> {
        CudaBackend::kv_copy(self, src, dst, len)
    }

    fn recurrent_len(&self, seq: u32) -> Option<usize> {
        CudaBackend::recurrent_len(self, seq)
    }

    fn kv_token_bytes(&self) -> usize {
        CudaBackend::kv_token_bytes(self)
    }

    fn kv_save(
        &mut self,
        seq: u32,
        range: Range<usize>,
        out: &mut Vec<u8>,
    ) -> Result<(), BackendError> {
        CudaBackend::kv_save(self, seq, range, out)
    }

    fn kv_load(
        &mut self,
        seq: u32,
        range: Range<usize>,
        data: &[u8],
    ) -> Result<usize, BackendError> {
        CudaBackend::kv_load(self, seq, range, data)
    }

    fn state_bytes(&self) -> usize {
        CudaBackend::state_bytes(self)
    }

    fn state_save(&mut self, seq: u32, out: &mut Vec<u8>) -> Result<(), BackendError> {
        CudaBackend::state_save(self, seq, out)
    }

    fn state_load(&mut self, seq: u32, len: usize, data: &[u8]) -> Result<usize, BackendError> {
        CudaBackend::state_load(self, seq, len, data)
    }

    fn limits(&self) -> Limits {
        CudaBackend::limits(self)
    }

    fn is_gpu(&self) -> bool {
        true
    }

    fn as_cuda(&self) -> Option<&CudaBackend> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::KvConfig;
    use crate::ops::Plan;

    /// A program that scales its batch's rows of one buffer.
    struct Halve(Act);

    impl Program for Halve {
        fn run<O: Ops>(&self, o: &O) {
            o.scale(o.batch().len(), self.0, 0.5);
        }
    }

    /// The CPU as a `dyn Device`: a pass runs the program, reads and writes are checked.
    #[test]
    fn the_cpu_is_a_device() {
        let mut plan = Plan::new();
        let x = plan.act(4);
        let kv = KvConfig {
            n_layers: 1,
            kv_dim: 4,
            n_ctx: 8,
            n_seq: 2,
            k_type: crate::KvType::F32,
            v_type: crate::KvType::F32,
        };
        let mut dev: Box<dyn Device> = Box::new(CpuBackend::new(&plan, 2, kv, 1));
        dev.write(x, &[2.0, 4.0, 6.0, 8.0]).unwrap();
        let batch = Batch::one_sequence(&[0], 0, 0, false);
        dev.forward(&batch, 10, &Halve(x)).unwrap();
        assert_eq!(dev.read(x, 1).unwrap(), [1.0, 2.0, 3.0, 4.0]);
        assert!(dev.write(x, &[1.0; 3]).is_err());
        assert!(dev.write(x, &[1.0; 12]).is_err());
        assert!(dev.read(x, 3).is_err());
        assert!(dev.kv_copy(0, 2, 1).is_err());
        dev.kv_copy(0, 1, 1).unwrap();
        assert_eq!(dev.limits().n_seq, 2);
        assert_eq!(dev.recurrent_len(0), None);
        assert!(!dev.is_gpu() && dev.as_cpu().is_some());
        dev.rollback(0, 0).unwrap();
    }
}
