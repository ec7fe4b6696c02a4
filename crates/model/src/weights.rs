//! Binding a GGUF file's tensors to the runtime's [`Weight`]s, zero-copy over the memory map,
//! with the shape each architecture expects checked at load.

use std::sync::Arc;

use gguf::Gguf;
use runtime::{ByteSource, Bytes, Weight};

use crate::ModelError;

/// One file of an opened GGUF, as a byte source for weights.
struct Shard {
    gguf: Arc<Gguf>,
    index: usize,
}

impl ByteSource for Shard {
    fn bytes(&self) -> &[u8] {
        self.gguf.shard_bytes(self.index)
    }
}

/// Looks tensors up by name and checks their shapes.
pub struct Loader {
    gguf: Arc<Gguf>,
    shards: Vec<Arc<dyn ByteSource>>,
    repack: bool,
}

impl Loader {
    /// A loader over an opened file.
    pub fn new(gguf: Arc<Gguf>) -> Loader {
        Loader::with_repack(gguf, true)
    }

    /// A loader that repacks matrices for the CPU's int8 kernels only when `repack` (and
    /// the CPU and `SURPLUS_NO_REPACK` allow it): a model placed on a GPU keeps the file's
    /// layout.
    pub fn with_repack(gguf: Arc<Gguf>, repack: bool) -> Loader {
        let shards = (0..gguf.paths().len())
            .map(|index| {
                Arc::new(Shard {
                    gguf: gguf.clone(),
                    index,
                }) as Arc<dyn ByteSource>
            })
            .collect();
        // Matrices the CPU's int8 kernels take are repacked sixteen rows at a time: one
        // kernel then serves one token or many, with the same bits. `SURPLUS_NO_REPACK=1`
        // keeps the file's layout (to compare).
        let repack = repack
            && Weight::repack_pays()
            && std::env::var_os("SURPLUS_NO_REPACK").is_none_or(|v| v.is_empty() || v == "0");
        Loader {
            gguf,
            shards,
            repack,
        }
    }

    /// The file's metadata.
    pub fn metadata(&self) -> &gguf::Metadata {
        self.gguf.metadata()
    }

    /// Whether the file has this tensor.
    pub fn has(&self, name: &str) -> bool {
        self.gguf.tensor(name).is_some()
    }

    /// Tensor `name` as a matrix of `rows` rows of `cols` values (ggml dims `[cols, rows]`).
    pub fn matrix(&self, name: &str, cols: usize, rows: usize) -> Result<Weight, ModelError> {
        let t = self
            .gguf
            .tensor(name)
            .ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
        let dims = t.dims();
        let n: u64 = dims.iter().product();
        if dims[0] as usize != cols || n as usize != cols * rows {
            return Err(ModelError::BadShape {
                tensor: name.to_string(),
                found: dims.to_vec(),
                expected: vec![cols as u64, rows as u64],
            });
        }
        let (shard, range) = self.gguf.tensor_location(t);
        let bytes = Bytes::new(self.shards[shard].clone(), range.clone())
            .ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
        let w =
            Weight::new(t.ggml_type(), cols, rows, bytes).ok_or_else(|| ModelError::BadShape {
                tensor: name.to_string(),
                found: dims.to_vec(),
                expected: vec![cols as u64, rows as u64],
            })?;
        Ok(match self.repack.then(|| w.repacked()).flatten() {
            Some(packed) => {
                // The file's copy is not read again.
                self.gguf.release(shard, range);
                packed
            }
            None => w,
        })
    }

    /// Tensor `name` as `n` f32 values (norm weights, biases).
    pub fn vector(&self, name: &str, n: usize) -> Result<Vec<f32>, ModelError> {
        let w = self.matrix(name, n, 1)?;
        w.to_f32().map_err(|e| ModelError::BadTensor {
            tensor: name.to_string(),
            reason: e.to_string(),
        })
    }

    /// [`Loader::vector`] when the tensor exists, `None` when it does not.
    pub fn optional_vector(&self, name: &str, n: usize) -> Result<Option<Vec<f32>>, ModelError> {
        if self.has(name) {
            self.vector(name, n).map(Some)
        } else {
            Ok(None)
        }
    }
}
