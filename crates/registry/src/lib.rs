//! The named test models surplus can fetch from PyPI packages (GGUF files shipped inside wheels),
//! and where models live on disk (`$SURPLUS_HOME/models`, else `~/.cache/surplus/models`).

#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::io::{self, IsTerminal};
use std::path::{Path, PathBuf};

mod catalog;
mod error;
mod pip;
mod pull;
#[cfg(test)]
mod tests;

use catalog::known_names;
pub use catalog::{find, known_models, ModelSpec, WheelPart, DEFAULT_MODEL};
pub use error::RegistryError;
use pull::{present, pull_in};
pub use pull::{pull, PullOptions};

/// Where models live: `$SURPLUS_HOME/models` if `SURPLUS_HOME` is set, else
/// `$XDG_CACHE_HOME/surplus/models`, else `~/.cache/surplus/models`.
pub fn models_dir() -> PathBuf {
    let home = std::env::var_os("HOME").or_else(|| std::env::var_os("USERPROFILE"));
    models_dir_from(
        std::env::var_os("SURPLUS_HOME"),
        std::env::var_os("XDG_CACHE_HOME"),
        home,
    )
}

fn models_dir_from(
    surplus_home: Option<OsString>,
    xdg_cache: Option<OsString>,
    home: Option<OsString>,
) -> PathBuf {
    let set = |v: Option<OsString>| v.filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = set(surplus_home) {
        return dir.join("models");
    }
    // The XDG spec says relative values are invalid and must be ignored.
    if let Some(dir) = set(xdg_cache).filter(|d| d.is_absolute()) {
        return dir.join("surplus").join("models");
    }
    let home = set(home).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("surplus").join("models")
}

/// Turns a `-m` argument into a GGUF path: an existing file, something path-like (contains a
/// path separator or ends in `.gguf`), or a known model name, pulled into [`models_dir`] on
/// first use.
pub fn resolve(model: &str, opts: &PullOptions) -> Result<PathBuf, RegistryError> {
    resolve_in(model, &models_dir(), opts)
}

fn resolve_in(model: &str, dir: &Path, opts: &PullOptions) -> Result<PathBuf, RegistryError> {
    let path = Path::new(model);
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    let path_like = model.contains('/')
        || model.contains(std::path::MAIN_SEPARATOR)
        || model.to_ascii_lowercase().ends_with(".gguf");
    if path_like {
        let why = if path.exists() {
            "is not a file"
        } else {
            "does not exist"
        };
        return Err(RegistryError::BadModelPath {
            path: path.to_path_buf(),
            why,
            known: known_names(),
        });
    }
    match find(model) {
        Some(spec) => {
            let pulling = !opts.force && !present(&dir.join(spec.file_name), spec.size);
            if pulling && opts.progress && io::stderr().is_terminal() {
                eprintln!(
                    "pulling {} ({}) into {}",
                    spec.name,
                    spec.description,
                    dir.display()
                );
            }
            pull_in(spec, dir, opts)
        }
        None => Err(RegistryError::UnknownModel {
            name: model.to_string(),
            known: known_names(),
        }),
    }
}

/// For tests: the path of the named model (or a GGUF path), pulled without progress bars if
/// missing. Panics with the reason if that fails.
pub fn test_model(name: &str) -> PathBuf {
    let opts = PullOptions {
        progress: false,
        force: false,
    };
    resolve(name, &opts).unwrap_or_else(|e| panic!("test model `{name}` is unavailable: {e}"))
}
