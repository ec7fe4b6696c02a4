//! Opening GGUF files from disk: memory-mapped, and split models
//! (`NAME-00001-of-00003.gguf`) opened as one model.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{Error, Result};
use crate::reader::{parse, Header, TensorInfo};
use crate::value::Metadata;

/// Metadata key holding the index (0-based) of this file in a split model.
pub const KEY_SPLIT_NO: &str = "split.no";
/// Metadata key holding the number of files of a split model.
pub const KEY_SPLIT_COUNT: &str = "split.count";
/// Metadata key holding the number of tensors over all files of a split model.
pub const KEY_SPLIT_TENSORS_COUNT: &str = "split.tensors.count";

/// One file of a (possibly split) model.
struct Shard {
    path: PathBuf,
    /// `None` for an empty file, which cannot be mapped.
    map: Option<Mmap>,
    header: Header,
}

impl Shard {
    fn open(path: &Path) -> Result<Shard> {
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let map = if len == 0 {
            None
        } else {
            // SAFETY: the map is read-only and private to this process. Like every mmap-based
            // model loader, we rely on the file not being truncated or rewritten while it is
            // open; every offset we read is checked against the length seen here.
            Some(unsafe { Mmap::map(&file) }.map_err(io)?)
        };
        let bytes: &[u8] = map.as_deref().unwrap_or(&[]);
        let header = parse(bytes)?;
        Ok(Shard {
            path: path.to_path_buf(),
            map,
            header,
        })
    }

    fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    fn split(&self) -> Result<(u64, u64)> {
        let m = &self.header.metadata;
        let count = match m.get(KEY_SPLIT_COUNT) {
            None => return Ok((0, 1)),
            Some(v) => v
                .as_u64()
                .ok_or_else(|| split_err(&self.path, "split.count is not an integer"))?,
        };
        let no = match m.get(KEY_SPLIT_NO) {
            None => 0,
            Some(v) => v
                .as_u64()
                .ok_or_else(|| split_err(&self.path, "split.no is not an integer"))?,
        };
        Ok((no, count.max(1)))
    }
}

fn split_err(path: &Path, msg: &str) -> Error {
    Error::Split(format!("{}: {msg}", path.display()))
}

/// An opened model: one GGUF file, or every file of a split model, memory-mapped.
pub struct Gguf {
    shards: Vec<Shard>,
    tensors: Vec<TensorInfo>,
    index: HashMap<String, usize>,
}

impl Gguf {
    /// Opens a GGUF file. When the file is one part of a split model, every part is opened
    /// (from the first, whichever part was named) and the tensors of all parts are merged.
    pub fn open(path: impl AsRef<Path>) -> Result<Gguf> {
        let path = path.as_ref();
        let first = Shard::open(path)?;
        let (no, count) = first.split()?;
        let shards = if count <= 1 {
            vec![first]
        } else {
            open_split(path, first, no, count)?
        };

        let mut tensors = Vec::new();
        let mut index = HashMap::new();
        for (i, shard) in shards.iter().enumerate() {
            for t in &shard.header.tensors {
                let mut t = t.clone();
                t.set_shard(i);
                if index.insert(t.name().to_string(), tensors.len()).is_some() {
                    return Err(Error::DuplicateTensor {
                        tensor: t.name().to_string(),
                    });
                }
                tensors.push(t);
            }
        }
        if shards.len() > 1 {
            if let Some(expected) = shards[0].header.metadata.get_u64(KEY_SPLIT_TENSORS_COUNT) {
                if expected != tensors.len() as u64 {
                    return Err(Error::Split(format!(
                        "split.tensors.count says {expected} tensors, the {} files hold {}",
                        shards.len(),
                        tensors.len()
                    )));
                }
            }
        }
        Ok(Gguf {
            shards,
            tensors,
            index,
        })
    }

    /// The key-value table (of the first file, for a split model).
    pub fn metadata(&self) -> &Metadata {
        &self.shards[0].header.metadata
    }

    /// Format version of the (first) file.
    pub fn version(&self) -> u32 {
        self.shards[0].header.version
    }

    /// Alignment of tensor data in the (first) file.
    pub fn alignment(&self) -> u64 {
        self.shards[0].header.alignment
    }

    /// `general.architecture`, if present.
    pub fn architecture(&self) -> Option<&str> {
        self.metadata().get_str("general.architecture")
    }

    /// All tensors, in file order (and part order for a split model).
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor with this name.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    /// The raw bytes of a tensor, borrowed from the memory map. Bounds were checked at open.
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        let shard = &self.shards[t.shard()];
        let start = (shard.header.data_offset + t.offset()) as usize;
        &shard.bytes()[start..start + t.n_bytes() as usize]
    }

    /// Which file holds a tensor and the byte range of its data in that file.
    pub fn tensor_location(&self, t: &TensorInfo) -> (usize, std::ops::Range<usize>) {
        let shard = &self.shards[t.shard()];
        let start = (shard.header.data_offset + t.offset()) as usize;
        (t.shard(), start..start + t.n_bytes() as usize)
    }

    /// The whole (memory-mapped) bytes of file `shard`.
    pub fn shard_bytes(&self, shard: usize) -> &[u8] {
        self.shards.get(shard).map_or(&[], |s| s.bytes())
    }

    /// Tells the kernel that bytes `range` of file `shard` will not be read again (a tensor
    /// that was copied elsewhere, e.g. repacked), so their pages leave the process's
    /// memory; a later read would fetch them from the file again. Ranges outside the file
    /// are ignored.
    pub fn release(&self, shard: usize, range: std::ops::Range<usize>) {
        let Some(map) = self.shards.get(shard).and_then(|s| s.map.as_ref()) else {
            return;
        };
        // Whole pages only: neighbours sharing a page stay.
        const PAGE: usize = 4096;
        let start = range.start.div_ceil(PAGE) * PAGE;
        let end = (range.end.min(map.len()) / PAGE) * PAGE;
        if start < end {
            // SAFETY: the map is a private, read-only mapping of a file that is not written:
            // dropping its pages only means re-reading the same bytes from the file if they
            // are touched again, so no reference into the map sees different contents.
            let _ = unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
            };
        }
    }

    /// Reads one byte of every page of the files so the weights are in memory before the
    /// first token (instead of faulting in during it); `progress(done, total)` is called
    /// every 16 MiB.
    pub fn prefault(&self, mut progress: impl FnMut(u64, u64)) {
        const PAGE: usize = 4096;
        const REPORT: usize = 16 << 20;
        let total = self.file_size();
        let mut done = 0u64;
        let mut sum = 0u8;
        for shard in &self.shards {
            let bytes = shard.bytes();
            for chunk in bytes.chunks(REPORT) {
                for p in (0..chunk.len()).step_by(PAGE) {
                    sum = sum.wrapping_add(chunk[p]);
                }
                done += chunk.len() as u64;
                progress(done, total);
            }
        }
        std::hint::black_box(sum);
    }

    /// The paths of the files opened, in part order.
    pub fn paths(&self) -> Vec<&Path> {
        self.shards.iter().map(|s| s.path.as_path()).collect()
    }

    /// Total size in bytes of the files opened.
    pub fn file_size(&self) -> u64 {
        self.shards.iter().map(|s| s.bytes().len() as u64).sum()
    }
}

/// `dir/NAME-00002-of-00003.gguf` → (`dir/NAME`, 2, 3).
fn split_name(path: &Path) -> Option<(PathBuf, u64, u64)> {
    let file = path.file_name()?.to_str()?;
    let stem = file.strip_suffix(".gguf")?;
    let (head, count) = stem.rsplit_once("-of-")?;
    let (prefix, no) = head.rsplit_once('-')?;
    if no.len() != 5 || count.len() != 5 {
        return None;
    }
    let no: u64 = no.parse().ok()?;
    let count: u64 = count.parse().ok()?;
    Some((path.with_file_name(prefix), no, count))
}

/// The path of part `no` (1-based) of `count` for a split model named `prefix`.
pub fn split_path(prefix: &Path, no: u64, count: u64) -> PathBuf {
    let name = prefix
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    prefix.with_file_name(format!("{name}-{no:05}-of-{count:05}.gguf"))
}

fn open_split(path: &Path, given: Shard, no: u64, count: u64) -> Result<Vec<Shard>> {
    let (prefix, name_no, name_count) = split_name(path).ok_or_else(|| {
        split_err(
            path,
            &format!(
                "this file is part {} of {count} of a split model, but its name does not \
                 follow NAME-{:05}-of-{count:05}.gguf, so the other parts cannot be found",
                no + 1,
                no + 1
            ),
        )
    })?;
    if name_count != count || name_no != no + 1 {
        return Err(split_err(
            path,
            &format!(
                "the name says part {name_no} of {name_count}, the metadata says part {} of {count}",
                no + 1
            ),
        ));
    }
    let mut given = Some(given);
    let mut shards = Vec::with_capacity(count.min(1024) as usize);
    for i in 0..count {
        let shard = if i == no {
            given.take().expect("the named part is used once")
        } else {
            let p = split_path(&prefix, i + 1, count);
            if !p.exists() {
                return Err(split_err(
                    &p,
                    &format!("part {} of {count} of the split model is missing", i + 1),
                ));
            }
            Shard::open(&p).map_err(|e| split_err(&p, &e.to_string()))?
        };
        let (sno, scount) = shard.split()?;
        if sno != i || scount != count {
            return Err(split_err(
                &shard.path,
                &format!(
                    "expected part {} of {count}, the metadata says part {} of {scount}",
                    i + 1,
                    sno + 1
                ),
            ));
        }
        shards.push(shard);
    }
    Ok(shards)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_names() {
        let (p, no, count) = split_name(Path::new("/m/qwen-7b-00002-of-00003.gguf")).unwrap();
        assert_eq!(p, Path::new("/m/qwen-7b"));
        assert_eq!((no, count), (2, 3));
        assert_eq!(
            split_path(&p, 1, 3),
            Path::new("/m/qwen-7b-00001-of-00003.gguf")
        );
        assert!(split_name(Path::new("/m/model.gguf")).is_none());
        assert!(split_name(Path::new("/m/x-1-of-3.gguf")).is_none());
    }
}
