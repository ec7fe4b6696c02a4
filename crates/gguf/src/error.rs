//! Typed errors of the reader and writer: each says what is wrong and where.

use std::path::PathBuf;

/// Everything that can go wrong reading or writing a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("not a GGUF file: bad magic {found:02x?} at offset 0 (expected \"GGUF\")")]
    BadMagic { found: Vec<u8> },
    #[error("unsupported GGUF version {0} (supported: 2 and 3)")]
    UnsupportedVersion(u32),
    #[error("big-endian GGUF files are not supported")]
    BigEndian,
    #[error("truncated file: {what} at offset {offset} needs {need} bytes, only {have} left")]
    Truncated {
        what: String,
        offset: u64,
        need: u64,
        have: u64,
    },
    #[error("{what} at offset {offset} is {value}, which cannot fit in the {have} bytes left in the file")]
    TooLarge {
        what: String,
        offset: u64,
        value: u64,
        have: u64,
    },
    #[error("metadata key {key:?} at offset {offset}: unknown value type {type_id}")]
    UnknownValueType {
        key: String,
        offset: u64,
        type_id: u32,
    },
    #[error("metadata key {key:?}: arrays nested deeper than {max} levels")]
    TooDeep { key: String, max: usize },
    #[error("metadata key {key:?} appears twice (second at offset {offset})")]
    DuplicateKey { key: String, offset: u64 },
    #[error("metadata key {key:?} is not valid UTF-8 (offset {offset})")]
    BadKey { key: String, offset: u64 },
    #[error("general.alignment is {0}: it must be a power of two between 1 and 2^30")]
    BadAlignment(u64),
    #[error("tensor {tensor:?}: unknown tensor type {type_id}")]
    UnknownTensorType { tensor: String, type_id: u32 },
    #[error("tensor {tensor:?}: {reason}")]
    BadTensor { tensor: String, reason: String },
    #[error("tensor {tensor:?} appears twice")]
    DuplicateTensor { tensor: String },
    #[error(
        "tensor {tensor:?}: data [{start}, {end}) lies outside the {data_size}-byte data section"
    )]
    TensorOutOfRange {
        tensor: String,
        start: u64,
        end: u64,
        data_size: u64,
    },
    #[error("tensor {first:?} and tensor {second:?} overlap in the data section")]
    TensorOverlap { first: String, second: String },
    #[error("split model: {0}")]
    Split(String),
    #[error("metadata key {key:?}: {reason}")]
    Metadata { key: String, reason: String },
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
