//! Binding a GGUF file's tensors to the runtime's [`Weight`]s, zero-copy over the memory map,
//! with the shape the caller expects checked at load: the one loader of models and projectors.

use std::sync::Arc;

use gguf::Gguf;
use runtime::{ByteSource, Bytes, Weight};

/// Why a tensor could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum WeightError {
    /// The file has no tensor of that name.
    #[error("the file has no tensor {0:?}")]
    MissingTensor(String),
    /// The tensor's dimensions are not the expected ones.
    #[error("tensor {tensor:?} has shape {found:?}, expected {expected:?}")]
    BadShape {
        /// The tensor's name.
        tensor: String,
        /// Its dimensions in the file (GGUF order).
        found: Vec<u64>,
        /// The dimensions expected.
        expected: Vec<u64>,
    },
    /// The tensor's values cannot be read as asked (e.g. as f32).
    #[error("tensor {tensor:?}: {reason}")]
    BadTensor {
        /// The tensor's name.
        tensor: String,
        /// What is wrong.
        reason: String,
    },
}

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

    /// The dimensions of tensor `name` (GGUF order), if present.
    pub fn dims(&self, name: &str) -> Option<Vec<u64>> {
        self.gguf.tensor(name).map(|t| t.dims().to_vec())
    }

    /// Tensor `name` as a matrix of `rows` rows of `cols` values: its first dimension is
    /// `cols` and it holds `cols × rows` values (ggml dims `[cols, rows]`).
    pub fn matrix(&self, name: &str, cols: usize, rows: usize) -> Result<Weight, WeightError> {
        let expected = [cols as u64, rows as u64];
        self.bind(name, &expected, cols, rows, |dims| {
            let n: u64 = dims.iter().product();
            dims[0] as usize == cols && n as usize == cols * rows
        })
    }

    /// Tensor `name`, which must have exactly the GGUF dimensions `dims` (trailing
    /// dimensions of 1 aside), as a matrix whose rows are its last dimension (each row all
    /// the other dimensions); a single dimension is one row.
    pub fn weight(&self, name: &str, dims: &[u64]) -> Result<Weight, WeightError> {
        // Trailing dimensions of 1 are the same shape.
        let trim = |d: &[u64]| {
            let mut d = d.to_vec();
            while d.len() > 1 && d.last() == Some(&1) {
                d.pop();
            }
            d
        };
        let (cols, rows) = match dims {
            [] => (1, 1),
            [n] => (*n as usize, 1),
            [cols @ .., rows] => (cols.iter().product::<u64>() as usize, *rows as usize),
        };
        self.bind(name, dims, cols, rows, |found| trim(found) == trim(dims))
    }

    /// Tensor `name` as `n` f32 values (norm weights, biases).
    pub fn vector(&self, name: &str, n: usize) -> Result<Vec<f32>, WeightError> {
        self.values(name, &[n as u64])
    }

    /// [`Loader::vector`] when the tensor exists, `None` when it does not.
    pub fn optional_vector(&self, name: &str, n: usize) -> Result<Option<Vec<f32>>, WeightError> {
        if self.has(name) {
            self.vector(name, n).map(Some)
        } else {
            Ok(None)
        }
    }

    /// A whole tensor of the GGUF dimensions `dims` (as [`Loader::weight`] checks them) as
    /// f32 values.
    pub fn values(&self, name: &str, dims: &[u64]) -> Result<Vec<f32>, WeightError> {
        self.weight(name, dims)?
            .to_f32()
            .map_err(|e| WeightError::BadTensor {
                tensor: name.to_string(),
                reason: e.to_string(),
            })
    }

    /// Tensor `name` as a `cols × rows` weight when `fits` accepts its dimensions, repacked
    /// for the CPU when this loader repacks.
    fn bind(
        &self,
        name: &str,
        expected: &[u64],
        cols: usize,
        rows: usize,
        fits: impl Fn(&[u64]) -> bool,
    ) -> Result<Weight, WeightError> {
        let t = self
            .gguf
            .tensor(name)
            .ok_or_else(|| WeightError::MissingTensor(name.to_string()))?;
        let bad = || WeightError::BadShape {
            tensor: name.to_string(),
            found: t.dims().to_vec(),
            expected: expected.to_vec(),
        };
        if !fits(t.dims()) {
            return Err(bad());
        }
        let (shard, range) = self.gguf.tensor_location(t);
        let bytes = Bytes::new(self.shards[shard].clone(), range.clone()).ok_or_else(bad)?;
        let w = Weight::new(t.ggml_type(), cols, rows, bytes).ok_or_else(bad)?;
        Ok(match self.repack.then(|| w.repacked()).flatten() {
            Some(packed) => {
                // The file's copy is not read again.
                self.gguf.release(shard, range);
                packed
            }
            None => w,
        })
    }
}
