//! Parsing a GGUF byte image: header, metadata, tensor infos, with every count and length
//! checked against the bytes that are actually there before anything is allocated.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::types::GgmlType;
use crate::value::{Array, Metadata, Value, ValueType};

/// The four bytes every GGUF file starts with.
pub const MAGIC: &[u8; 4] = b"GGUF";
/// Alignment of tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// The most dimensions a tensor can have (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;
/// How deep arrays of arrays may nest before the reader refuses the file.
pub const MAX_ARRAY_DEPTH: usize = 8;
/// Capacity reserved up front for an array, whatever count the file claims; beyond this,
/// vectors grow only as elements are actually read.
const MAX_PREALLOC: usize = 1 << 16;

/// Where one tensor is and what it holds. Offsets are relative to the data section of the
/// file (shard) it lives in.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    name: String,
    dims: Vec<u64>,
    ggml_type: GgmlType,
    offset: u64,
    n_bytes: u64,
    shard: usize,
}

impl TensorInfo {
    /// The tensor's name (`blk.0.attn_q.weight`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The dimensions, innermost (contiguous) first, as ggml orders them; 1 to 4 of them.
    pub fn dims(&self) -> &[u64] {
        &self.dims
    }

    /// The element type.
    pub fn ggml_type(&self) -> GgmlType {
        self.ggml_type
    }

    /// Offset of the data from the start of its shard's data section.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Number of elements.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Bytes of data.
    pub fn n_bytes(&self) -> u64 {
        self.n_bytes
    }

    /// Which file of a split model holds the data (0 for a single file).
    pub fn shard(&self) -> usize {
        self.shard
    }

    pub(crate) fn set_shard(&mut self, shard: usize) {
        self.shard = shard;
    }
}

/// Everything before the tensor data: what [`parse`] returns.
#[derive(Clone, Debug)]
pub struct Header {
    /// Format version (2 or 3).
    pub version: u32,
    /// Alignment of tensor data (`general.alignment`, default 32).
    pub alignment: u64,
    /// The key-value table.
    pub metadata: Metadata,
    /// Tensor infos in file order.
    pub tensors: Vec<TensorInfo>,
    /// File offset of the data section.
    pub data_offset: u64,
    /// Bytes in the data section (file size minus `data_offset`, or 0).
    pub data_size: u64,
}

/// Parses and validates the whole image of one GGUF file. Never panics: every malformed input
/// is an [`Error`] that says what is wrong and at which offset.
pub fn parse(bytes: &[u8]) -> Result<Header> {
    let mut r = Cursor { buf: bytes, pos: 0 };

    let magic = r.take(4, "magic")?;
    if magic != MAGIC {
        return Err(Error::BadMagic {
            found: magic.to_vec(),
        });
    }
    let version = r.u32("version")?;
    if version != 2 && version != 3 {
        let swapped = version.swap_bytes();
        if swapped == 2 || swapped == 3 {
            return Err(Error::BigEndian);
        }
        return Err(Error::UnsupportedVersion(version));
    }

    // A tensor info takes at least: name length (8), n_dims (4), one dim (8), type (4),
    // offset (8). A key-value pair: key length (8), type (4), a one-byte value.
    let tensor_count_offset = r.pos as u64;
    let tensor_count = r.u64("tensor count")?;
    let kv_count = r.count("metadata key-value count", 13)?;

    let mut metadata = Metadata::new();
    for _ in 0..kv_count {
        let key_offset = r.pos as u64;
        let key_bytes = r.string_bytes("metadata key")?;
        let key = match std::str::from_utf8(key_bytes) {
            Ok(k) => k.to_string(),
            Err(_) => {
                return Err(Error::BadKey {
                    key: String::from_utf8_lossy(key_bytes).into_owned(),
                    offset: key_offset,
                })
            }
        };
        let type_offset = r.pos as u64;
        let type_id = r.u32("metadata value type")?;
        let ty = ValueType::from_id(type_id).ok_or_else(|| Error::UnknownValueType {
            key: key.clone(),
            offset: type_offset,
            type_id,
        })?;
        let value = r.value(&key, ty, 0)?;
        if !metadata.insert(key.clone(), value) {
            return Err(Error::DuplicateKey {
                key,
                offset: key_offset,
            });
        }
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => {
            let a = v.as_u64().ok_or_else(|| Error::Metadata {
                key: "general.alignment".into(),
                reason: format!("expected an integer, found {}", v.value_type().name()),
            })?;
            if a == 0 || !a.is_power_of_two() || a > 1 << 30 {
                return Err(Error::BadAlignment(a));
            }
            a
        }
    };

    // Checked here rather than where it is read, so that a file cut inside the metadata is
    // reported there.
    if tensor_count
        .checked_mul(32)
        .is_none_or(|need| need > r.left())
    {
        return Err(Error::TooLarge {
            what: "tensor count".into(),
            offset: tensor_count_offset,
            value: tensor_count,
            have: r.left(),
        });
    }
    let mut tensors = Vec::with_capacity(tensor_count.min(MAX_PREALLOC as u64) as usize);
    let mut names: HashMap<String, usize> = HashMap::new();
    for _ in 0..tensor_count {
        let t = r.tensor_info(alignment)?;
        if names.insert(t.name.clone(), tensors.len()).is_some() {
            return Err(Error::DuplicateTensor { tensor: t.name });
        }
        tensors.push(t);
    }

    let end_of_infos = r.pos as u64;
    // Cannot overflow: end_of_infos <= bytes.len() and alignment <= 2^30.
    let data_offset = end_of_infos.div_ceil(alignment) * alignment;
    if !tensors.is_empty() && data_offset > bytes.len() as u64 {
        // Even a zero-sized tensor needs its data section to start inside the file.
        return Err(Error::Truncated {
            what: "padding before the tensor data".into(),
            offset: end_of_infos,
            need: data_offset - end_of_infos,
            have: bytes.len() as u64 - end_of_infos,
        });
    }
    let data_size = (bytes.len() as u64).saturating_sub(data_offset);
    check_tensor_ranges(&tensors, data_size)?;

    Ok(Header {
        version,
        alignment,
        metadata,
        tensors,
        data_offset,
        data_size,
    })
}

/// Every tensor inside the data section, and no two overlapping.
pub(crate) fn check_tensor_ranges(tensors: &[TensorInfo], data_size: u64) -> Result<()> {
    for t in tensors {
        let end = t.offset.checked_add(t.n_bytes);
        match end {
            Some(end) if end <= data_size => {}
            _ => {
                return Err(Error::TensorOutOfRange {
                    tensor: t.name.clone(),
                    start: t.offset,
                    end: end.unwrap_or(u64::MAX),
                    data_size,
                })
            }
        }
    }
    let mut order: Vec<&TensorInfo> = tensors.iter().filter(|t| t.n_bytes > 0).collect();
    order.sort_by_key(|t| t.offset);
    for pair in order.windows(2) {
        if pair[0].offset + pair[0].n_bytes > pair[1].offset {
            return Err(Error::TensorOverlap {
                first: pair[0].name.clone(),
                second: pair[1].name.clone(),
            });
        }
    }
    Ok(())
}

/// A position in the byte image; every read checks the bytes left first.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn left(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        if n > self.left() {
            return Err(Error::Truncated {
                what: what.to_string(),
                offset: self.pos as u64,
                need: n,
                have: self.left(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A u64 count of items that each take at least `min_size` bytes: refused when even the
    /// smallest such items could not fit in the rest of the file.
    fn count(&mut self, what: &str, min_size: u64) -> Result<u64> {
        let offset = self.pos as u64;
        let n = self.u64(what)?;
        match n.checked_mul(min_size) {
            Some(need) if need <= self.left() => Ok(n),
            _ => Err(Error::TooLarge {
                what: what.to_string(),
                offset,
                value: n,
                have: self.left(),
            }),
        }
    }

    fn string_bytes(&mut self, what: &str) -> Result<&'a [u8]> {
        let offset = self.pos as u64;
        let len = self.u64(&format!("{what} length"))?;
        if len > self.left() {
            return Err(Error::TooLarge {
                what: format!("{what} length"),
                offset,
                value: len,
                have: self.left(),
            });
        }
        self.take(len, what)
    }

    /// A string value; invalid UTF-8 is replaced (some vocabularies carry raw bytes).
    fn string(&mut self, what: &str) -> Result<String> {
        let b = self.string_bytes(what)?;
        Ok(match std::str::from_utf8(b) {
            Ok(s) => s.to_string(),
            Err(_) => String::from_utf8_lossy(b).into_owned(),
        })
    }

    fn value(&mut self, key: &str, ty: ValueType, depth: usize) -> Result<Value> {
        let what = || format!("value of {key:?}");
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1>(&what())?[0]),
            ValueType::I8 => Value::I8(self.array::<1>(&what())?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(&what())?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(&what())?)),
            ValueType::U32 => Value::U32(u32::from_le_bytes(self.array(&what())?)),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(&what())?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(&what())?)),
            ValueType::U64 => Value::U64(u64::from_le_bytes(self.array(&what())?)),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(&what())?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(&what())?)),
            ValueType::Bool => Value::Bool(self.array::<1>(&what())?[0] != 0),
            ValueType::String => Value::String(self.string(&what())?),
            ValueType::Array => Value::Array(self.array_value(key, depth)?),
        })
    }

    fn array_value(&mut self, key: &str, depth: usize) -> Result<Array> {
        if depth >= MAX_ARRAY_DEPTH {
            return Err(Error::TooDeep {
                key: key.to_string(),
                max: MAX_ARRAY_DEPTH,
            });
        }
        let type_offset = self.pos as u64;
        let type_id = self.u32(&format!("array element type of {key:?}"))?;
        let ty = ValueType::from_id(type_id).ok_or_else(|| Error::UnknownValueType {
            key: key.to_string(),
            offset: type_offset,
            type_id,
        })?;
        let n = self.count(&format!("array length of {key:?}"), ty.min_encoded_size())?;
        let cap = n.min(MAX_PREALLOC as u64) as usize;
        let what = format!("array element of {key:?}");

        macro_rules! fixed {
            ($variant:ident, $t:ty, $size:expr) => {{
                // The count was checked against the bytes left, so this take succeeds.
                let raw = self.take(n * $size, &what)?;
                let mut v: Vec<$t> = Vec::with_capacity(cap);
                for chunk in raw.chunks_exact($size) {
                    let mut b = [0u8; $size];
                    b.copy_from_slice(chunk);
                    v.push(<$t>::from_le_bytes(b));
                }
                Array::$variant(v)
            }};
        }

        Ok(match ty {
            ValueType::U8 => Array::U8(self.take(n, &what)?.to_vec()),
            ValueType::I8 => Array::I8(self.take(n, &what)?.iter().map(|&b| b as i8).collect()),
            ValueType::Bool => Array::Bool(self.take(n, &what)?.iter().map(|&b| b != 0).collect()),
            ValueType::U16 => fixed!(U16, u16, 2),
            ValueType::I16 => fixed!(I16, i16, 2),
            ValueType::U32 => fixed!(U32, u32, 4),
            ValueType::I32 => fixed!(I32, i32, 4),
            ValueType::F32 => fixed!(F32, f32, 4),
            ValueType::U64 => fixed!(U64, u64, 8),
            ValueType::I64 => fixed!(I64, i64, 8),
            ValueType::F64 => fixed!(F64, f64, 8),
            ValueType::String => {
                let mut v = Vec::with_capacity(cap);
                for _ in 0..n {
                    v.push(self.string(&what)?);
                }
                Array::String(v)
            }
            ValueType::Array => {
                let mut v = Vec::with_capacity(cap.min(1024));
                for _ in 0..n {
                    v.push(self.array_value(key, depth + 1)?);
                }
                Array::Array(v)
            }
        })
    }

    fn tensor_info(&mut self, alignment: u64) -> Result<TensorInfo> {
        let name = self.string("tensor name")?;
        let bad = |reason: String| Error::BadTensor {
            tensor: name.clone(),
            reason,
        };
        let n_dims = self.u32(&format!("dimension count of tensor {name:?}"))?;
        if n_dims == 0 || n_dims as usize > MAX_DIMS {
            return Err(bad(format!(
                "{n_dims} dimensions (a tensor has 1 to {MAX_DIMS})"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(self.u64(&format!("dimensions of tensor {name:?}"))?);
        }
        let type_id = self.u32(&format!("type of tensor {name:?}"))?;
        let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| Error::UnknownTensorType {
            tensor: name.clone(),
            type_id,
        })?;
        let offset = self.u64(&format!("data offset of tensor {name:?}"))?;

        let mut n_elements: u64 = 1;
        for &d in &dims {
            n_elements = n_elements
                .checked_mul(d)
                .filter(|&n| n <= i64::MAX as u64)
                .ok_or_else(|| bad(format!("dimensions {dims:?} overflow the element count")))?;
        }
        if !dims[0].is_multiple_of(ggml_type.block_size()) {
            return Err(bad(format!(
                "first dimension {} is not a multiple of the {} block size {}",
                dims[0],
                ggml_type,
                ggml_type.block_size()
            )));
        }
        let n_bytes = ggml_type.bytes_for(n_elements).ok_or_else(|| {
            bad(format!(
                "size of {n_elements} {ggml_type} elements overflows"
            ))
        })?;
        if !offset.is_multiple_of(alignment) {
            return Err(bad(format!(
                "data offset {offset} is not a multiple of the alignment {alignment}"
            )));
        }
        Ok(TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
            n_bytes,
            shard: 0,
        })
    }
}
