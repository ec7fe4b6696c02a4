//! Weights as the runtime sees them: a ggml type, a row-major shape, and bytes that live
//! in a memory map (or any owner) without being copied.

use std::ops::Range;
use std::sync::Arc;

use quant::GgmlType;

/// Something that owns a byte buffer: a memory-mapped model file, a `Vec<u8>`.
pub trait ByteSource: Send + Sync {
    /// The whole buffer.
    fn bytes(&self) -> &[u8];
}

impl ByteSource for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
}

/// A shared, read-only range of a [`ByteSource`].
#[derive(Clone)]
pub struct Bytes {
    src: Arc<dyn ByteSource>,
    range: Range<usize>,
}

impl Bytes {
    /// `range` of `src`; `None` if it lies outside.
    pub fn new(src: Arc<dyn ByteSource>, range: Range<usize>) -> Option<Bytes> {
        (range.start <= range.end && range.end <= src.bytes().len()).then_some(Bytes { src, range })
    }

    /// Owned bytes.
    pub fn from_vec(v: Vec<u8>) -> Bytes {
        let n = v.len();
        Bytes {
            src: Arc::new(v),
            range: 0..n,
        }
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.src.bytes()[self.range.clone()]
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.range.len()
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }
}

/// A weight matrix (or vector) in its stored format: `rows` rows of `cols` elements, each
/// row `ty.bytes_for(cols)` bytes, rows contiguous.
#[derive(Clone)]
pub struct Weight {
    /// Element format.
    pub ty: GgmlType,
    /// Elements per row (ggml's ne0).
    pub cols: usize,
    /// Number of rows (ggml's ne1 × ne2 × ne3).
    pub rows: usize,
    row_bytes: usize,
    data: Bytes,
}

impl Weight {
    /// A weight over `data`; `None` when the sizes do not agree.
    pub fn new(ty: GgmlType, cols: usize, rows: usize, data: Bytes) -> Option<Weight> {
        let row_bytes = ty.bytes_for(cols as u64)? as usize;
        (row_bytes.checked_mul(rows)? == data.len()).then_some(Weight {
            ty,
            cols,
            rows,
            row_bytes,
            data,
        })
    }

    /// An F32 weight from values (tests, synthetic models).
    pub fn from_f32(cols: usize, rows: usize, values: &[f32]) -> Option<Weight> {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Weight::new(GgmlType::F32, cols, rows, Bytes::from_vec(bytes))
    }

    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        self.row_bytes
    }

    /// All bytes.
    pub fn bytes(&self) -> &[u8] {
        self.data.as_slice()
    }

    /// The bytes of row `r`.
    pub fn row(&self, r: usize) -> &[u8] {
        &self.bytes()[r * self.row_bytes..(r + 1) * self.row_bytes]
    }

    /// Row `r` dequantized into `out` (`cols` values).
    pub fn row_to_f32(&self, r: usize, out: &mut [f32]) -> Result<(), quant::QuantError> {
        quant::dequantize(self.ty, self.row(r), out)
    }

    /// The whole weight as f32 values (for small tensors: norms, biases).
    pub fn to_f32(&self) -> Result<Vec<f32>, quant::QuantError> {
        quant::dequantize_to_vec(self.ty, self.bytes())
    }
}
