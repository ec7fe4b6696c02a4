//! A projector file's tensors as the runtime's [`Weight`]s (zero-copy over the memory map),
//! each checked against the exact shape the tower expects, and its metadata keys.

use std::sync::Arc;

use gguf::Gguf;
use runtime::{ByteSource, Bytes, Weight};

use crate::VisionError;

/// The opened file as a byte source for weights.
struct Mapped(Arc<Gguf>, usize);

impl ByteSource for Mapped {
    fn bytes(&self) -> &[u8] {
        self.0.shard_bytes(self.1)
    }
}

/// Tensor and metadata lookup over an opened projector file.
pub(crate) struct Tensors {
    gguf: Arc<Gguf>,
}

impl Tensors {
    pub fn new(gguf: Arc<Gguf>) -> Tensors {
        Tensors { gguf }
    }

    pub fn has(&self, name: &str) -> bool {
        self.gguf.tensor(name).is_some()
    }

    /// The dimensions of tensor `name` (GGUF order), if present.
    pub fn dims(&self, name: &str) -> Option<Vec<u64>> {
        self.gguf.tensor(name).map(|t| t.dims().to_vec())
    }

    /// Tensor `name`, which must have exactly the GGUF dimensions `dims`, as a matrix whose
    /// rows are its last dimension (each row all the other dimensions).
    pub fn weight(&self, name: &str, dims: &[u64]) -> Result<Weight, VisionError> {
        let t = self
            .gguf
            .tensor(name)
            .ok_or_else(|| VisionError::MissingTensor(name.to_string()))?;
        let bad = || VisionError::BadShape {
            tensor: name.to_string(),
            found: t.dims().to_vec(),
            expected: dims.to_vec(),
        };
        // Trailing dimensions of 1 are the same shape.
        let trim = |d: &[u64]| {
            let mut d = d.to_vec();
            while d.len() > 1 && d.last() == Some(&1) {
                d.pop();
            }
            d
        };
        if trim(t.dims()) != trim(dims) {
            return Err(bad());
        }
        let rows = *dims.last().unwrap_or(&1) as usize;
        let cols = if dims.len() > 1 {
            dims[..dims.len() - 1].iter().product::<u64>() as usize
        } else {
            rows
        };
        let rows = if dims.len() > 1 { rows } else { 1 };
        let (shard, range) = self.gguf.tensor_location(t);
        let src: Arc<dyn ByteSource> = Arc::new(Mapped(self.gguf.clone(), shard));
        let bytes = Bytes::new(src, range).ok_or_else(bad)?;
        Weight::new(t.ggml_type(), cols, rows, bytes).ok_or_else(bad)
    }

    /// Tensor `name` as `n` f32 values.
    pub fn vector(&self, name: &str, n: usize) -> Result<Vec<f32>, VisionError> {
        self.weight(name, &[n as u64])?
            .to_f32()
            .map_err(|e| VisionError::BadTensor {
                tensor: name.to_string(),
                reason: e.to_string(),
            })
    }

    /// A whole tensor as f32 values (after checking its shape).
    pub fn values(&self, name: &str, dims: &[u64]) -> Result<Vec<f32>, VisionError> {
        self.weight(name, dims)?
            .to_f32()
            .map_err(|e| VisionError::BadTensor {
                tensor: name.to_string(),
                reason: e.to_string(),
            })
    }

    pub fn metadata(&self) -> &gguf::Metadata {
        self.gguf.metadata()
    }

    /// A required unsigned key, at least 1.
    pub fn count(&self, key: &str) -> Result<usize, VisionError> {
        let v = self
            .metadata()
            .get_u64(key)
            .ok_or_else(|| VisionError::Metadata(key.into(), "missing or not an integer".into()))?;
        if v == 0 || v > 1 << 20 {
            return Err(VisionError::Metadata(
                key.into(),
                format!("{v} is out of range"),
            ));
        }
        Ok(v as usize)
    }

    /// An f32 key, or `default` when absent.
    pub fn f32_or(&self, key: &str, default: f32) -> Result<f32, VisionError> {
        match self.metadata().get(key) {
            None => Ok(default),
            Some(v) => v
                .as_f32()
                .filter(|x| x.is_finite())
                .ok_or_else(|| VisionError::Metadata(key.into(), "not a finite number".into())),
        }
    }

    /// A required array of three f32 values (image mean or std).
    pub fn rgb(&self, key: &str) -> Result<[f32; 3], VisionError> {
        let bad = || VisionError::Metadata(key.into(), "expected 3 numbers".into());
        let a = self.metadata().get_array(key).ok_or_else(bad)?;
        if a.len() != 3 {
            return Err(bad());
        }
        let mut out = [0.0f32; 3];
        for (i, o) in out.iter_mut().enumerate() {
            *o = a.get(i).and_then(|v| v.as_f32()).ok_or_else(bad)?;
        }
        Ok(out)
    }
}
