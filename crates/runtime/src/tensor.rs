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

/// How a [`Weight`]'s bytes are arranged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// As in the GGUF file: rows contiguous, `ty.bytes_for(cols)` bytes each.
    Rows,
    /// Repacked sixteen rows at a time for the int8 kernels of [`quant::rows16`].
    Rows16,
}

/// A weight matrix (or vector): `rows` rows of `cols` elements of `ty`, in the file's
/// layout (each row `ty.bytes_for(cols)` bytes, rows contiguous) or repacked
/// ([`Layout::Rows16`]).
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
    layout: Layout,
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
            layout: Layout::Rows,
        })
    }

    /// This weight repacked for [`quant::rows16`] (owned memory), or `None` when that
    /// module does not take its type or shape.
    pub fn repacked(&self) -> Option<Weight> {
        use quant::rows16;
        if self.layout != Layout::Rows || !rows16::cols_ok(self.ty, self.cols) {
            return None;
        }
        let (ty, cols, rb) = (self.ty, self.cols, self.row_bytes);
        let gb = rows16::group_bytes(ty, cols);
        let mut dst = vec![0u8; rows16::packed_bytes(ty, self.rows, cols)];
        let src = self.bytes();
        // Groups of 16 rows are independent: split them over the CPU's threads.
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let per = self.rows.div_ceil(rows16::ROWS).div_ceil(threads).max(1);
        let ok = std::thread::scope(|s| {
            let jobs: Vec<_> = dst
                .chunks_mut(per * gb)
                .enumerate()
                .map(|(k, part)| {
                    s.spawn(move || {
                        part.chunks_exact_mut(gb).enumerate().all(|(g, group)| {
                            let r0 = (k * per + g) * rows16::ROWS;
                            let n = rows16::ROWS.min(self.rows - r0);
                            let rows: [&[u8]; rows16::ROWS] =
                                std::array::from_fn(|j| &src[(r0 + j.min(n - 1)) * rb..][..rb]);
                            rows16::pack_group(ty, cols, &rows[..n], group)
                        })
                    })
                })
                .collect();
            jobs.into_iter().all(|j| j.join().unwrap_or(false))
        });
        ok.then(|| Weight {
            data: Bytes::from_vec(dst),
            layout: Layout::Rows16,
            ..self.clone()
        })
    }

    /// Whether [`Weight::repacked`] pays on this CPU (its int8 kernels have a SIMD version).
    pub fn repack_pays() -> bool {
        quant::rows16::isa().is_some()
    }

    /// How the bytes are arranged.
    pub fn layout(&self) -> Layout {
        self.layout
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

    /// The bytes of row `r` in the file's layout. Panics for a repacked weight (its rows
    /// are interleaved): callers check [`Weight::layout`] first.
    pub fn row(&self, r: usize) -> &[u8] {
        assert_eq!(self.layout, Layout::Rows, "row bytes of a repacked weight");
        &self.bytes()[r * self.row_bytes..(r + 1) * self.row_bytes]
    }

    /// Row `r` dequantized into `out` (`cols` values), whatever the layout.
    pub fn row_to_f32(&self, r: usize, out: &mut [f32]) -> Result<(), quant::QuantError> {
        match self.layout {
            Layout::Rows => quant::dequantize(self.ty, self.row(r), out),
            Layout::Rows16 => {
                let ok = r < self.rows
                    && quant::rows16::dequantize_row(self.ty, self.cols, self.bytes(), r, out);
                ok.then_some(()).ok_or(quant::QuantError::DstLength {
                    ty: self.ty,
                    expected: self.cols,
                    actual: out.len(),
                    unit: "elements",
                })
            }
        }
    }

    /// The whole weight as f32 values (for small tensors: norms, biases).
    pub fn to_f32(&self) -> Result<Vec<f32>, quant::QuantError> {
        match self.layout {
            Layout::Rows => quant::dequantize_to_vec(self.ty, self.bytes()),
            Layout::Rows16 => {
                let mut v = vec![0.0; self.rows * self.cols];
                for (r, row) in v.chunks_exact_mut(self.cols).enumerate() {
                    self.row_to_f32(r, row)?;
                }
                Ok(v)
            }
        }
    }
}
