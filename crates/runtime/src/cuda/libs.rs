//! Where the CUDA libraries are: our own search for the driver, NVRTC and cuBLAS over the
//! override directory, LD_LIBRARY_PATH, toolkits, pip wheels and system directories.
//!
//! cudarc's loader only tries a fixed list of sonames (with `cuda-12080`: `.so`, `.so.12`,
//! `.so.11`, ... never `.so.13`) through the system search path, and panics when none loads.
//! So we look for the files ourselves, report every one we find, and load NVRTC and cuBLAS
//! through our own bindings by full path ([`super::nvrtc`], [`super::cublas`]). The driver's
//! soname is `libcuda.so.1` for every CUDA version; when it lives outside the loader's path
//! we open it by full path first, and cudarc's `dlopen("libcuda.so.1")` then finds the
//! object already loaded (glibc matches a loaded object's soname before searching).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Environment variable naming one or more directories (`:`-separated) searched first.
pub const LIB_DIR_ENV: &str = "SURPLUS_CUDA_LIB_DIR";

/// The libraries we look for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Lib {
    /// `libcuda.so.1`, installed with the NVIDIA driver.
    Driver,
    /// `libnvrtc.so.N`, the run-time compiler.
    Nvrtc,
    /// `libcublas.so.N` (needs `libcublasLt.so.N` beside it).
    Cublas,
}

impl Lib {
    /// The file-name stem (`libnvrtc`).
    pub fn stem(self) -> &'static str {
        match self {
            Lib::Driver => "libcuda",
            Lib::Nvrtc => "libnvrtc",
            Lib::Cublas => "libcublas",
        }
    }

    /// Whether `name` is this library: the stem, `.so`, then only numeric version parts
    /// (`libnvrtc.so`, `libnvrtc.so.13`, `libcuda.so.550.54.14`; not `libnvrtc.alt.so.12`,
    /// `libnvrtc-builtins.so.12.9` or `libcublasLt.so.12`).
    pub fn matches(self, name: &str) -> bool {
        name.strip_prefix(self.stem())
            .and_then(|r| r.strip_prefix(".so"))
            .is_some_and(numeric_suffix)
    }
}

/// `""`, or `.N`, `.N.M`, ...
fn numeric_suffix(s: &str) -> bool {
    s.is_empty()
        || s.strip_prefix('.').is_some_and(|v| {
            v.split('.')
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        })
}

/// The version numbers after `.so` in a file name (`libnvrtc.so.12` → `[12]`).
pub fn so_version(name: &str) -> Vec<u32> {
    name.split_once(".so")
        .map(|(_, v)| v.split('.').filter_map(|p| p.parse().ok()).collect())
        .unwrap_or_default()
}

/// Where a directory came from (reported by `surplus doctor`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// [`LIB_DIR_ENV`].
    Override,
    /// `LD_LIBRARY_PATH`.
    LdLibraryPath,
    /// `CUDA_PATH`, `CUDA_HOME`, `/usr/local/cuda*`.
    Toolkit,
    /// `site-packages/nvidia/*/lib` of a Python installation.
    PipWheel,
    /// A system library directory.
    System,
}

impl Origin {
    /// A short name.
    pub fn name(self) -> &'static str {
        match self {
            Origin::Override => LIB_DIR_ENV,
            Origin::LdLibraryPath => "LD_LIBRARY_PATH",
            Origin::Toolkit => "CUDA toolkit",
            Origin::PipWheel => "pip wheel",
            Origin::System => "system",
        }
    }
}

/// One library file found.
#[derive(Clone, Debug)]
pub struct Found {
    /// The library.
    pub lib: Lib,
    /// The file (as found; symlinks not resolved).
    pub path: PathBuf,
    /// Where its directory came from.
    pub origin: Origin,
}

impl Found {
    /// Version parts of the file name (`[13]` for `libnvrtc.so.13`, empty for `libnvrtc.so`).
    pub fn so_version(&self) -> Vec<u32> {
        self.path
            .file_name()
            .and_then(|n| n.to_str())
            .map(so_version)
            .unwrap_or_default()
    }
}

/// Every directory searched, in order, with where it came from; duplicates removed.
pub fn search_dirs() -> Vec<(PathBuf, Origin)> {
    let mut dirs = Vec::new();
    let env_list = |name: &str| -> Vec<PathBuf> {
        std::env::var_os(name)
            .map(|v| {
                std::env::split_paths(&v)
                    .filter(|p| !p.as_os_str().is_empty())
                    .collect()
            })
            .unwrap_or_default()
    };
    for d in env_list(LIB_DIR_ENV) {
        dirs.push((d, Origin::Override));
    }
    for d in env_list("LD_LIBRARY_PATH") {
        dirs.push((d, Origin::LdLibraryPath));
    }
    for d in toolkit_dirs() {
        dirs.push((d, Origin::Toolkit));
    }
    for site in site_dirs() {
        for d in subdirs(&site.join("nvidia")) {
            dirs.push((d.join("lib"), Origin::PipWheel));
        }
    }
    for d in SYSTEM_DIRS {
        dirs.push((PathBuf::from(d), Origin::System));
    }
    let mut seen = HashSet::new();
    dirs.retain(|(d, _)| d.is_dir() && seen.insert(d.canonicalize().unwrap_or(d.clone())));
    dirs
}

/// System directories where distributions, containers and WSL put the driver and toolkits.
const SYSTEM_DIRS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/local/nvidia/lib64",
    "/usr/local/nvidia/lib",
    "/usr/lib/wsl/lib",
    "/run/opengl-driver/lib",
    "/usr/local/lib",
];

/// CUDA toolkit library directories: `$CUDA_PATH`, `$CUDA_HOME`, `/usr/local/cuda*`, `/opt/cuda`.
fn toolkit_dirs() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = ["CUDA_PATH", "CUDA_HOME", "CUDA_ROOT"]
        .iter()
        .filter_map(std::env::var_os)
        .map(PathBuf::from)
        .collect();
    roots.push("/usr/local/cuda".into());
    let mut versioned: Vec<PathBuf> = subdirs(Path::new("/usr/local"))
        .into_iter()
        .filter(|d| name_of(d).starts_with("cuda-"))
        .collect();
    // Newest first (cuda-13.0 before cuda-12.8).
    versioned.sort_by_key(|d| std::cmp::Reverse(version_key(name_of(d))));
    roots.extend(versioned);
    roots.push("/opt/cuda".into());
    let mut out = Vec::new();
    for r in roots {
        for sub in [
            "lib64",
            "lib",
            "targets/x86_64-linux/lib",
            "targets/sbsa-linux/lib",
        ] {
            out.push(r.join(sub));
        }
    }
    out
}

/// Python `site-packages`/`dist-packages` directories: of the active virtual environment or
/// conda environment, of the user, of `python3*` installations on PATH, pyenv, system.
fn site_dirs() -> Vec<PathBuf> {
    let mut prefixes: Vec<PathBuf> = Vec::new();
    for var in ["VIRTUAL_ENV", "CONDA_PREFIX"] {
        if let Some(p) = std::env::var_os(var) {
            prefixes.push(p.into());
        }
    }
    if let Some(home) = std::env::var_os("HOME").map(PathBuf::from) {
        prefixes.push(home.join(".local"));
        for v in subdirs(&home.join(".pyenv/versions")) {
            prefixes.push(v);
        }
        for conda in ["miniconda3", "anaconda3", "miniforge3", "mambaforge"] {
            prefixes.push(home.join(conda));
        }
    }
    // The prefix of each python3 on PATH: /x/bin/python3 -> /x (symlinks resolved, so a
    // venv's link to its base interpreter also yields the base).
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            for exe in ["python3", "python"] {
                let p = dir.join(exe);
                for q in [Some(p.clone()), p.canonicalize().ok()]
                    .into_iter()
                    .flatten()
                {
                    if let Some(prefix) = q.parent().and_then(Path::parent) {
                        if q.is_file() {
                            prefixes.push(prefix.to_path_buf());
                        }
                    }
                }
            }
        }
    }
    for p in ["/usr/local", "/usr", "/opt/conda"] {
        prefixes.push(p.into());
    }
    let mut out = Vec::new();
    for prefix in prefixes {
        for lib in ["lib", "lib64"] {
            for py in subdirs(&prefix.join(lib)) {
                if name_of(&py).starts_with("python3") {
                    out.push(py.join("site-packages"));
                    out.push(py.join("dist-packages"));
                }
            }
        }
    }
    out.push("/usr/lib/python3/dist-packages".into());
    let mut seen = HashSet::new();
    out.retain(|d| d.is_dir() && seen.insert(d.clone()));
    out
}

fn name_of(p: &Path) -> &str {
    p.file_name().and_then(|n| n.to_str()).unwrap_or("")
}

/// `cuda-12.8` → `[12, 8]`, for sorting.
fn version_key(name: &str) -> Vec<u32> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Directories directly inside `dir` (none if unreadable), sorted by name.
fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Every file of `lib` in `dirs`, in directory order; within a directory the highest version
/// first (`.so.13` before `.so.12` before `.so`). Files that resolve to the same target are
/// listed once.
pub fn find_in(lib: Lib, dirs: &[(PathBuf, Origin)]) -> Vec<Found> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (dir, origin) in dirs {
        let Ok(rd) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut names: Vec<String> = rd
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| lib.matches(n))
            .collect();
        names.sort_by_key(|n| std::cmp::Reverse(so_version(n)));
        for n in names {
            let path = dir.join(&n);
            let real = path.canonicalize().unwrap_or(path.clone());
            if real.is_file() && seen.insert(real) {
                out.push(Found {
                    lib,
                    path,
                    origin: *origin,
                });
            }
        }
    }
    out
}

/// Every file of `lib` in [`search_dirs`] (cached for the process: the search reads many
/// directories).
pub fn find(lib: Lib) -> Vec<Found> {
    static DIRS: OnceLock<Vec<(PathBuf, Origin)>> = OnceLock::new();
    find_in(lib, DIRS.get_or_init(search_dirs))
}

/// The companion libraries a library opens by soname, which must be loaded first from the
/// same directory when that directory is not on the loader's path: NVRTC's versioned
/// builtins (`libnvrtc-builtins.so.12.9`) and cuBLAS's `libcublasLt.so.N`.
pub fn companions(found: &Found) -> Vec<PathBuf> {
    let Some(dir) = found.path.parent() else {
        return Vec::new();
    };
    let prefix = match found.lib {
        Lib::Nvrtc => "libnvrtc-builtins.so",
        Lib::Cublas => "libcublasLt.so",
        Lib::Driver => return Vec::new(),
    };
    let major = found.so_version().first().copied();
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| {
                    n.strip_prefix(prefix).is_some_and(numeric_suffix)
                        && (major.is_none() || so_version(n).first().copied() == major)
                })
                .map(|n| dir.join(n))
                .collect()
        })
        .unwrap_or_default();
    // Most specific first: the exact soname (libnvrtc-builtins.so.12.9) is what gets opened.
    v.sort_by_key(|p| std::cmp::Reverse(so_version(name_of(p)).len()));
    v
}

/// Opens `path` and keeps it open for the life of the process (the libraries we open are
/// never unloaded: cudarc and our bindings hold function pointers into them).
pub fn open_forever(path: &Path) -> Result<&'static libloading::Library, String> {
    // SAFETY: the CUDA libraries' initializers have no preconditions on the caller; opening
    // one twice returns the same loaded object.
    let lib = unsafe { libloading::Library::new(path) }
        .map_err(|e| format!("cannot load {}: {e}", path.display()))?;
    Ok(Box::leak(Box::new(lib)))
}

/// Loads `found` by full path, after its companions (errors loading those are ignored: the
/// library may still find them by itself, and its own load error is the one worth reporting).
pub fn load(found: &Found) -> Result<&'static libloading::Library, String> {
    for c in companions(found) {
        let _ = open_forever(&c);
    }
    open_forever(&found.path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_only_the_library_itself() {
        assert!(Lib::Nvrtc.matches("libnvrtc.so"));
        assert!(Lib::Nvrtc.matches("libnvrtc.so.12"));
        assert!(Lib::Nvrtc.matches("libnvrtc.so.13.0.48"));
        assert!(!Lib::Nvrtc.matches("libnvrtc.alt.so.12"));
        assert!(!Lib::Nvrtc.matches("libnvrtc-builtins.so.12.9"));
        assert!(!Lib::Nvrtc.matches("libnvrtc.so.12.bak"));
        assert!(Lib::Cublas.matches("libcublas.so.12"));
        assert!(!Lib::Cublas.matches("libcublasLt.so.12"));
        assert!(Lib::Driver.matches("libcuda.so.1"));
        assert!(Lib::Driver.matches("libcuda.so.550.54.14"));
        assert!(!Lib::Driver.matches("libcudart.so.12"));
        assert_eq!(so_version("libnvrtc.so.13"), vec![13]);
        assert_eq!(so_version("libnvrtc-builtins.so.12.9"), vec![12, 9]);
        assert!(so_version("libnvrtc.so").is_empty());
    }

    #[test]
    fn finds_files_in_a_directory_newest_first() {
        let dir = std::env::temp_dir().join(format!("surplus-libs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for n in [
            "libnvrtc.so.12",
            "libnvrtc.so.13",
            "libnvrtc-builtins.so.13.0",
            "libnvrtc-builtins.so.12.9",
            "libnvrtc.alt.so.12",
        ] {
            std::fs::write(dir.join(n), b"").unwrap();
        }
        let found = find_in(Lib::Nvrtc, &[(dir.clone(), Origin::Override)]);
        let names: Vec<_> = found.iter().map(|f| name_of(&f.path).to_string()).collect();
        assert_eq!(names, ["libnvrtc.so.13", "libnvrtc.so.12"]);
        let comp = companions(&found[1]);
        assert_eq!(comp, [dir.join("libnvrtc-builtins.so.12.9")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
