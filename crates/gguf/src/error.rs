//! Typed errors of the reader and writer: each says what is wrong and where.

use std::path::PathBuf;

/// Everything that can go wrong reading or writing a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Opening, mapping, creating or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file that was being opened or written.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The first four bytes are not `GGUF`.
    #[error("not a GGUF file: bad magic {found:02x?} at offset 0 (expected \"GGUF\")")]
    BadMagic {
        /// The four bytes found at offset 0.
        found: Vec<u8>,
    },
    /// The version field (read little-endian) is neither 2 nor 3.
    #[error("unsupported GGUF version {0} (supported: 2 and 3)")]
    UnsupportedVersion(u32),
    /// The version field reads as 2 or 3 only when byte-swapped: a big-endian file.
    #[error("big-endian GGUF files are not supported")]
    BigEndian,
    #[error("truncated file: {what} at offset {offset} needs {need} bytes, only {have} left")]
    /// The file ends before a field it must hold.
    Truncated {
        /// The field being read (`"version"`, `"tensor name"`, ...).
        what: String,
        /// Byte offset of the field in the file.
        offset: u64,
        /// Bytes the field takes.
        need: u64,
        /// Bytes left in the file from `offset`.
        have: u64,
    },
    #[error("{what} at offset {offset} is {value}, which cannot fit in the {have} bytes left in the file")]
    /// A count or length that even its smallest possible items could not fit in the rest
    /// of the file: refused before anything is allocated for it.
    TooLarge {
        /// The count or length being read (`"tensor count"`, `"metadata key length"`, ...).
        what: String,
        /// Byte offset of the count in the file.
        offset: u64,
        /// The count or length as stored.
        value: u64,
        /// Bytes left in the file after the count.
        have: u64,
    },
    #[error("metadata key {key:?} at offset {offset}: unknown value type {type_id}")]
    /// A metadata value (or array element) type tag outside the thirteen GGUF types.
    UnknownValueType {
        /// The metadata key whose value has the tag.
        key: String,
        /// Byte offset of the tag in the file.
        offset: u64,
        /// The tag as stored.
        type_id: u32,
    },
    #[error("metadata key {key:?}: arrays nested deeper than {max} levels")]
    /// Arrays of arrays nested past [`MAX_ARRAY_DEPTH`](crate::MAX_ARRAY_DEPTH) levels.
    TooDeep {
        /// The metadata key holding the array.
        key: String,
        /// The deepest nesting accepted.
        max: usize,
    },
    #[error("metadata key {key:?} appears twice (second at offset {offset})")]
    /// The same metadata key twice in one file.
    DuplicateKey {
        /// The repeated key.
        key: String,
        /// Byte offset of the second occurrence in the file.
        offset: u64,
    },
    #[error("metadata key {key:?} is not valid UTF-8 (offset {offset})")]
    /// A metadata key whose bytes are not UTF-8.
    BadKey {
        /// The key, with invalid bytes replaced by U+FFFD.
        key: String,
        /// Byte offset of the key in the file.
        offset: u64,
    },
    /// A data alignment (read from `general.alignment` or given to the writer) that is not
    /// a power of two from 1 to 2^30 bytes.
    #[error("general.alignment is {0}: it must be a power of two between 1 and 2^30")]
    BadAlignment(u64),
    #[error("tensor {tensor:?}: unknown tensor type {type_id}")]
    /// A tensor type id that [`GgmlType`](crate::GgmlType) does not know.
    UnknownTensorType {
        /// The tensor's name.
        tensor: String,
        /// The type id as stored.
        type_id: u32,
    },
    #[error("tensor {tensor:?}: {reason}")]
    /// A tensor whose description is invalid: dimension count, a first dimension that is not
    /// a whole number of blocks, a size that overflows, a misaligned data offset.
    BadTensor {
        /// The tensor's name.
        tensor: String,
        /// What is wrong with it, in words.
        reason: String,
    },
    #[error("tensor {tensor:?} appears twice")]
    /// Two tensors with the same name (in one file, across the files of a split model, or
    /// added twice to the writer).
    DuplicateTensor {
        /// The repeated name.
        tensor: String,
    },
    #[error(
        "tensor {tensor:?}: data [{start}, {end}) lies outside the {data_size}-byte data section"
    )]
    /// A tensor whose bytes do not lie wholly inside the data section.
    TensorOutOfRange {
        /// The tensor's name.
        tensor: String,
        /// First byte of its data, relative to the start of the data section.
        start: u64,
        /// One past its last byte, relative to the data section (`u64::MAX` on overflow).
        end: u64,
        /// Size of the data section in bytes.
        data_size: u64,
    },
    #[error("tensor {first:?} and tensor {second:?} overlap in the data section")]
    /// Two tensors whose data ranges overlap.
    TensorOverlap {
        /// The tensor that starts first.
        first: String,
        /// The tensor that starts inside it.
        second: String,
    },
    /// The files of a split model do not fit together: a part missing or unreadable, file
    /// names and `split.*` keys that disagree, or another tensor count than
    /// `split.tensors.count`. The text names the file and says why.
    #[error("split model: {0}")]
    Split(String),
    #[error("metadata key {key:?}: {reason}")]
    /// A metadata key that is missing or holds the wrong type of value.
    Metadata {
        /// The key.
        key: String,
        /// What is wrong with it (`"missing"`, `"expected a string, found u32"`, ...).
        reason: String,
    },
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
