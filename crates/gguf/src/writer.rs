//! Writing GGUF files: metadata and tensors in, a valid v3 (or v2) image out. Used by tests
//! and to build synthetic models with real shapes.

use std::io::{self, Write};
use std::path::Path;

use crate::error::{Error, Result};
use crate::reader::{DEFAULT_ALIGNMENT, MAGIC, MAX_DIMS};
use crate::types::GgmlType;
use crate::value::{Array, Metadata, Value};

/// Fills a tensor's bytes when the file is written.
pub type Fill = Box<dyn Fn(&mut [u8]) + Send + Sync>;

/// A tensor's bytes: given, or made when written (so a large file needs no more memory than
/// its largest tensor).
enum Data {
    Bytes(Vec<u8>),
    Later { len: usize, fill: Fill },
}

impl Data {
    fn len(&self) -> usize {
        match self {
            Data::Bytes(b) => b.len(),
            Data::Later { len, .. } => *len,
        }
    }
}

struct PendingTensor {
    name: String,
    dims: Vec<u64>,
    ggml_type: GgmlType,
    data: Data,
}

/// Builds a GGUF file in memory and writes it out (tensors added with
/// [`GgufWriter::add_tensor_with`] are made only as they are written).
pub struct GgufWriter {
    version: u32,
    alignment: u64,
    metadata: Metadata,
    tensors: Vec<PendingTensor>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufWriter {
    /// A version-3 writer with the default 32-byte alignment.
    pub fn new() -> Self {
        GgufWriter {
            version: 3,
            alignment: DEFAULT_ALIGNMENT,
            metadata: Metadata::new(),
            tensors: Vec::new(),
        }
    }

    /// Writes format version 2 or 3 (they differ only in big-endian support).
    pub fn version(mut self, version: u32) -> Self {
        self.version = version;
        self
    }

    /// Sets the data alignment and records it as `general.alignment` (u32).
    pub fn alignment(mut self, alignment: u32) -> Result<Self> {
        if alignment == 0 || !alignment.is_power_of_two() {
            return Err(Error::BadAlignment(alignment as u64));
        }
        self.alignment = alignment as u64;
        self.metadata
            .set("general.alignment", Value::U32(alignment));
        Ok(self)
    }

    /// Sets a metadata key (replacing an earlier value of the same key).
    pub fn set(&mut self, key: &str, value: Value) -> &mut Self {
        self.metadata.set(key, value);
        self
    }

    /// Sets a string key.
    pub fn set_str(&mut self, key: &str, value: &str) -> &mut Self {
        self.set(key, Value::String(value.to_string()))
    }

    /// Sets a u32 key.
    pub fn set_u32(&mut self, key: &str, value: u32) -> &mut Self {
        self.set(key, Value::U32(value))
    }

    /// Sets an f32 key.
    pub fn set_f32(&mut self, key: &str, value: f32) -> &mut Self {
        self.set(key, Value::F32(value))
    }

    /// Sets an array key.
    pub fn set_array(&mut self, key: &str, value: Array) -> &mut Self {
        self.set(key, Value::Array(value))
    }

    /// Adds a tensor. `dims` are innermost first; `data` must be exactly the bytes that
    /// `ggml_type` needs for that many elements.
    pub fn add_tensor(
        &mut self,
        name: &str,
        dims: &[u64],
        ggml_type: GgmlType,
        data: Vec<u8>,
    ) -> Result<&mut Self> {
        self.push(name, dims, ggml_type, Data::Bytes(data))
    }

    /// Adds a tensor whose bytes `fill` writes into a zeroed buffer of the right size when
    /// the file is written, one tensor at a time.
    pub fn add_tensor_with(
        &mut self,
        name: &str,
        dims: &[u64],
        ggml_type: GgmlType,
        fill: Fill,
    ) -> Result<&mut Self> {
        let n = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
        let len = n
            .and_then(|n| ggml_type.bytes_for(n))
            .and_then(|b| usize::try_from(b).ok())
            .ok_or_else(|| Error::BadTensor {
                tensor: name.to_string(),
                reason: "size overflows".into(),
            })?;
        self.push(name, dims, ggml_type, Data::Later { len, fill })
    }

    fn push(
        &mut self,
        name: &str,
        dims: &[u64],
        ggml_type: GgmlType,
        data: Data,
    ) -> Result<&mut Self> {
        let bad = |reason: String| Error::BadTensor {
            tensor: name.to_string(),
            reason,
        };
        if dims.is_empty() || dims.len() > MAX_DIMS {
            return Err(bad(format!("{} dimensions (1 to {MAX_DIMS})", dims.len())));
        }
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(Error::DuplicateTensor {
                tensor: name.to_string(),
            });
        }
        if !dims[0].is_multiple_of(ggml_type.block_size()) {
            return Err(bad(format!(
                "first dimension {} is not a multiple of the {ggml_type} block size",
                dims[0]
            )));
        }
        let n = dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| bad("element count overflows".into()))?;
        let need = ggml_type
            .bytes_for(n)
            .ok_or_else(|| bad("size overflows".into()))?;
        if need != data.len() as u64 {
            return Err(bad(format!(
                "{n} {ggml_type} elements take {need} bytes, {} were given",
                data.len()
            )));
        }
        self.tensors.push(PendingTensor {
            name: name.to_string(),
            dims: dims.to_vec(),
            ggml_type,
            data,
        });
        Ok(self)
    }

    /// Adds an F32 tensor from values.
    pub fn add_f32(&mut self, name: &str, dims: &[u64], values: &[f32]) -> Result<&mut Self> {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.add_tensor(name, dims, GgmlType::F32, data)
    }

    /// Writes the whole file.
    pub fn write_to<W: Write>(&self, w: &mut W) -> io::Result<()> {
        let mut w = CountingWriter { inner: w, pos: 0 };
        let (data_start, offsets) = self.write_header(&mut w)?;
        for (t, off) in self.tensors.iter().zip(offsets) {
            pad(&mut w, data_start + off)?;
            match &t.data {
                Data::Bytes(b) => w.write_all(b)?,
                Data::Later { len, fill } => {
                    let mut buf = vec![0u8; *len];
                    fill(&mut buf);
                    w.write_all(&buf)?;
                }
            }
        }
        Ok(())
    }

    /// The header, the tensor index and the padding to the data; returns where the data
    /// starts and each tensor's offset in it.
    fn write_header<W: Write>(&self, w: &mut CountingWriter<'_, W>) -> io::Result<(u64, Vec<u64>)> {
        w.write_all(MAGIC)?;
        w.write_all(&self.version.to_le_bytes())?;
        w.write_all(&(self.tensors.len() as u64).to_le_bytes())?;
        w.write_all(&(self.metadata.len() as u64).to_le_bytes())?;
        for (key, value) in self.metadata.iter() {
            write_str(w, key)?;
            w.write_all(&(value.value_type() as u32).to_le_bytes())?;
            write_value(w, value)?;
        }
        let mut offset = 0u64;
        let mut offsets = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            write_str(w, &t.name)?;
            w.write_all(&(t.dims.len() as u32).to_le_bytes())?;
            for d in &t.dims {
                w.write_all(&d.to_le_bytes())?;
            }
            w.write_all(&t.ggml_type.id().to_le_bytes())?;
            w.write_all(&offset.to_le_bytes())?;
            offsets.push(offset);
            offset = (offset + t.data.len() as u64).div_ceil(self.alignment) * self.alignment;
        }
        let data_start = w.pos.div_ceil(self.alignment) * self.alignment;
        pad(w, data_start)?;
        Ok((data_start, offsets))
    }

    /// Writes the file to `path` with the tensors added by [`GgufWriter::add_tensor_with`]
    /// left as holes (zero bytes that take no disk space on file systems with sparse
    /// files): a file of a large model's size and layout for tools that read only the
    /// header and the small tensors, such as `surplus plan`.
    pub fn write_file_sparse(&self, path: impl AsRef<Path>) -> Result<()> {
        use std::io::{Seek, SeekFrom};
        let path = path.as_ref();
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = std::fs::File::create(path).map_err(io)?;
        let mut end = 0u64;
        {
            let mut b = io::BufWriter::new(&mut file);
            let mut w = CountingWriter {
                inner: &mut b,
                pos: 0,
            };
            let (data_start, offsets) = self.write_header(&mut w).map_err(io)?;
            for (t, off) in self.tensors.iter().zip(&offsets) {
                end = end.max(data_start + off + t.data.len() as u64);
            }
            for (t, off) in self.tensors.iter().zip(offsets) {
                if let Data::Bytes(bytes) = &t.data {
                    b.seek(SeekFrom::Start(data_start + off)).map_err(io)?;
                    b.write_all(bytes).map_err(io)?;
                }
            }
            b.flush().map_err(io)?;
        }
        file.set_len(end).map_err(io)
    }

    /// The whole file as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.write_to(&mut v).expect("writing to a Vec cannot fail");
        v
    }

    /// Writes the file to `path`.
    pub fn write_file(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::create(path).map_err(io)?;
        let mut w = io::BufWriter::new(file);
        self.write_to(&mut w).map_err(io)?;
        w.flush().map_err(io)
    }
}

struct CountingWriter<'a, W: Write> {
    inner: &'a mut W,
    pos: u64,
}

impl<W: Write> Write for CountingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn pad<W: Write>(w: &mut CountingWriter<'_, W>, to: u64) -> io::Result<()> {
    const ZEROS: [u8; 64] = [0; 64];
    while w.pos < to {
        let n = (to - w.pos).min(64) as usize;
        w.write_all(&ZEROS[..n])?;
    }
    Ok(())
}

fn write_str<W: Write>(w: &mut W, s: &str) -> io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

fn write_value<W: Write>(w: &mut W, v: &Value) -> io::Result<()> {
    match v {
        Value::U8(x) => w.write_all(&[*x]),
        Value::I8(x) => w.write_all(&x.to_le_bytes()),
        Value::U16(x) => w.write_all(&x.to_le_bytes()),
        Value::I16(x) => w.write_all(&x.to_le_bytes()),
        Value::U32(x) => w.write_all(&x.to_le_bytes()),
        Value::I32(x) => w.write_all(&x.to_le_bytes()),
        Value::F32(x) => w.write_all(&x.to_le_bytes()),
        Value::Bool(x) => w.write_all(&[*x as u8]),
        Value::String(s) => write_str(w, s),
        Value::Array(a) => write_array(w, a),
        Value::U64(x) => w.write_all(&x.to_le_bytes()),
        Value::I64(x) => w.write_all(&x.to_le_bytes()),
        Value::F64(x) => w.write_all(&x.to_le_bytes()),
    }
}

fn write_array<W: Write>(w: &mut W, a: &Array) -> io::Result<()> {
    w.write_all(&(a.element_type() as u32).to_le_bytes())?;
    w.write_all(&(a.len() as u64).to_le_bytes())?;
    macro_rules! each {
        ($v:expr) => {{
            for x in $v {
                w.write_all(&x.to_le_bytes())?;
            }
            Ok(())
        }};
    }
    match a {
        Array::U8(v) => w.write_all(v),
        Array::I8(v) => each!(v),
        Array::U16(v) => each!(v),
        Array::I16(v) => each!(v),
        Array::U32(v) => each!(v),
        Array::I32(v) => each!(v),
        Array::F32(v) => each!(v),
        Array::Bool(v) => {
            for x in v {
                w.write_all(&[*x as u8])?;
            }
            Ok(())
        }
        Array::String(v) => {
            for s in v {
                write_str(w, s)?;
            }
            Ok(())
        }
        Array::Array(v) => {
            for inner in v {
                write_array(w, inner)?;
            }
            Ok(())
        }
        Array::U64(v) => each!(v),
        Array::I64(v) => each!(v),
        Array::F64(v) => each!(v),
    }
}
