//! GGUF, the model file format of llama.cpp: a bounds-checked, memory-mapped reader (v2/v3,
//! every metadata type, split models) and a writer. Format only: nothing about models here.
//!
//! ```no_run
//! let g = gguf::Gguf::open("model.gguf")?;
//! println!("{:?}", g.architecture());
//! for t in g.tensors() {
//!     println!("{} {:?} {}", t.name(), t.dims(), t.ggml_type());
//! }
//! # Ok::<(), gguf::Error>(())
//! ```

mod error;
mod file;
mod reader;
mod types;
mod value;
mod writer;

pub use error::{Error, Result};
pub use file::{split_path, Gguf, KEY_SPLIT_COUNT, KEY_SPLIT_NO, KEY_SPLIT_TENSORS_COUNT};
pub use reader::{parse, Header, TensorInfo, DEFAULT_ALIGNMENT, MAGIC, MAX_ARRAY_DEPTH, MAX_DIMS};
pub use types::{GgmlType, ALL_TYPES};
pub use value::{Array, Metadata, Value, ValueType};
pub use writer::{Fill, GgufWriter};
