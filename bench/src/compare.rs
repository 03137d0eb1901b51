//! Comparing the source tree with the target tree: which files are missing, extra or wrong (type,
//! size, mode, mtime to the nanosecond and, in the full comparison, every byte), and which
//! directories are missing, extra or carry a different mode/mtime. `lost+found` and the root
//! directory's own attributes are ignored (the target root belongs to the rsync module).
//!
//! Both walks and the byte comparison run on a few threads (the top-level directories shared
//! out among them; the files in inode order, in consecutive chunks), so that a tree of a
//! million files compares in about a minute, not half an hour.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Meta {
    dir: bool,
    size: u64,
    mode: u32,
    mtime: i64,
    mtime_ns: i64,
    /// Inode number: the byte comparison reads files in this order, which on ext4 is close to
    /// the order of their blocks on disk.
    ino: u64,
}

/// The outcome of one comparison.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Diff {
    pub files: u64,
    pub files_missing: u64,
    pub files_extra: u64,
    /// Present on both sides but different: type, size, mode, contents, or mtime by a second
    /// or more.
    pub files_wrong: u64,
    /// Right in every other way (bytes included, in the full comparison) but with an mtime off
    /// by less than a second.
    pub files_mtime_subsec: u64,
    pub dirs: u64,
    pub dirs_missing: u64,
    pub dirs_extra: u64,
    /// Directories present on both sides with a different mode or mtime.
    pub dirs_meta_wrong: u64,
    /// A few examples, for the log.
    pub examples: Vec<String>,
    /// A few directories with different attributes.
    pub dir_examples: Vec<String>,
    /// A few files counted in `files_mtime_subsec`.
    pub subsec_examples: Vec<String>,
}

impl Diff {
    /// Whether every file and directory is in place and every file is right, as rsync judges
    /// it (sub-second mtimes and directory attributes are reported but not required).
    pub fn files_ok(&self) -> bool {
        self.files_missing == 0
            && self.files_extra == 0
            && self.files_wrong == 0
            && self.dirs_missing == 0
            && self.dirs_extra == 0
    }

    fn note(&mut self, s: String) {
        if self.examples.len() < 8 {
            self.examples.push(s);
        }
    }
}

/// Threads for the walks and the byte comparison (the work is mostly system time in the kernel).
fn threads() -> usize {
    std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, 8)
}

type Snapshot = HashMap<PathBuf, Meta>;

/// Every entry under `root` (relative paths), the top-level directories walked in parallel.
fn snapshot(root: &Path) -> Result<Snapshot> {
    let mut out = HashMap::new();
    let mut tops = Vec::new();
    walk(root, PathBuf::new(), &mut out, &mut tops, false)?;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let parts: Vec<Result<Snapshot>> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..threads())
            .map(|_| {
                sc.spawn(|| -> Result<Snapshot> {
                    let mut mine = HashMap::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(top) = tops.get(i) else {
                            return Ok(mine);
                        };
                        walk(root, top.clone(), &mut mine, &mut Vec::new(), true)?;
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("walker panicked")))
            })
            .collect()
    });
    for p in parts {
        out.extend(p?);
    }
    Ok(out)
}

/// Walks `start` (relative to `root`) into `out`; with `recurse` false, lists only `start`
/// and hands its subdirectories back in `dirs`.
fn walk(
    root: &Path,
    start: PathBuf,
    out: &mut Snapshot,
    dirs: &mut Vec<PathBuf>,
    recurse: bool,
) -> Result<()> {
    let mut stack = vec![start];
    while let Some(rel) = stack.pop() {
        crate::sys::check_interrupt()?;
        let dir = root.join(&rel);
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            // A directory renamed or removed under us: the caller compares again later.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("read {}", dir.display())),
        };
        for e in rd {
            let Ok(e) = e else { continue };
            if rel.as_os_str().is_empty() && e.file_name() == "lost+found" {
                continue;
            }
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            let r = rel.join(e.file_name());
            let meta = Meta {
                dir: m.is_dir(),
                size: if m.is_dir() { 0 } else { m.len() },
                mode: m.mode(),
                mtime: m.mtime(),
                mtime_ns: m.mtime_nsec(),
                ino: m.ino(),
            };
            if meta.dir {
                if recurse {
                    stack.push(r.clone());
                } else {
                    dirs.push(r.clone());
                }
            }
            out.insert(r, meta);
        }
    }
    Ok(())
}

/// The files whose metadata match on both sides but whose bytes differ (read in parallel).
fn bytes_differ<'a>(
    src: &Path,
    tgt: &Path,
    a: &'a Snapshot,
    b: &Snapshot,
) -> std::collections::HashSet<&'a PathBuf> {
    let mut todo: Vec<(u64, &PathBuf)> = a
        .iter()
        .filter(|(rel, ma)| {
            !ma.dir
                && b.get(*rel).is_some_and(|mb| {
                    !mb.dir && ma.size == mb.size && ma.mode == mb.mode && ma.mtime == mb.mtime
                })
        })
        .map(|(rel, ma)| (ma.ino, rel))
        .collect();
    // In inode order, handed out in consecutive chunks: the reads of a tree of small files go
    // through the image nearly sequentially (readahead helps) instead of at random (cold, on
    // disk, a million random reads take many minutes).
    todo.sort_unstable();
    let todo: Vec<&PathBuf> = todo.into_iter().map(|(_, rel)| rel).collect();
    let chunk = 256;
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|sc| {
        let handles: Vec<_> = (0..threads())
            .map(|_| {
                sc.spawn(|| {
                    let mut bad = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let lo = i * chunk;
                        if lo >= todo.len() {
                            return bad;
                        }
                        let part = &todo[lo..(lo + chunk).min(todo.len())];
                        for rel in part {
                            if !same_bytes(&src.join(rel), &tgt.join(rel)).unwrap_or(false) {
                                bad.push(*rel);
                            }
                        }
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

/// Opens for reading without updating the access time (which would dirty every inode the
/// comparison reads; the bench runs as root, which O_NOATIME needs).
fn open_noatime(p: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOATIME)
        .open(p)
        .or_else(|_| std::fs::File::open(p))
}

fn same_bytes(a: &Path, b: &Path) -> std::io::Result<bool> {
    let mut fa = open_noatime(a)?;
    let mut fb = open_noatime(b)?;
    let mut ba = vec![0u8; 256 * 1024];
    let mut bb = vec![0u8; 256 * 1024];
    loop {
        let na = read_full(&mut fa, &mut ba)?;
        let nb = read_full(&mut fb, &mut bb)?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Compares `src` with `tgt`; with `contents`, also every byte of every file.
pub fn compare(src: &Path, tgt: &Path, contents: bool) -> Result<Diff> {
    let a = snapshot(src)?;
    let b = snapshot(tgt)?;
    let bad_bytes = if contents {
        bytes_differ(src, tgt, &a, &b)
    } else {
        Default::default()
    };
    let mut d = Diff::default();
    for (rel, ma) in &a {
        if ma.dir {
            d.dirs += 1;
        } else {
            d.files += 1;
        }
        let Some(mb) = b.get(rel) else {
            if ma.dir {
                d.dirs_missing += 1;
            } else {
                d.files_missing += 1;
            }
            d.note(format!("missing: {}", rel.display()));
            continue;
        };
        if ma.dir && mb.dir {
            if ma.mode != mb.mode || ma.mtime != mb.mtime || ma.mtime_ns != mb.mtime_ns {
                d.dirs_meta_wrong += 1;
                if d.dir_examples.len() < 5 {
                    d.dir_examples.push(format!(
                        "{}: mode {:o} vs {:o}, mtime {}.{:09} vs {}.{:09}",
                        rel.display(),
                        ma.mode,
                        mb.mode,
                        ma.mtime,
                        ma.mtime_ns,
                        mb.mtime,
                        mb.mtime_ns
                    ));
                }
            }
            continue;
        }
        // Wrong: type, size or mode differ, the mtime differs by a second or more, or (in the
        // full comparison) the bytes differ. An mtime off by less than a second with the same
        // size (and bytes) is counted apart: rsync's quick check compares whole seconds, so
        // every rsync-based tool leaves it so.
        let mut why = None;
        let mut subsec = false;
        if ma.dir != mb.dir {
            why = Some("type".to_string());
        } else if ma.size != mb.size {
            why = Some(format!("size {} vs {}", ma.size, mb.size));
        } else if ma.mode != mb.mode {
            why = Some(format!("mode {:o} vs {:o}", ma.mode, mb.mode));
        } else if ma.mtime != mb.mtime {
            why = Some(format!(
                "mtime {}.{:09} vs {}.{:09}",
                ma.mtime, ma.mtime_ns, mb.mtime, mb.mtime_ns
            ));
        } else {
            if bad_bytes.contains(rel) {
                why = Some("contents".to_string());
            }
            subsec = ma.mtime_ns != mb.mtime_ns;
        }
        if let Some(w) = why {
            d.files_wrong += 1;
            d.note(format!("wrong: {}: {w}", rel.display()));
        } else if subsec {
            d.files_mtime_subsec += 1;
            if d.subsec_examples.len() < 5 {
                d.subsec_examples.push(format!(
                    "{}: mtime {}.{:09} vs {}.{:09}",
                    rel.display(),
                    ma.mtime,
                    ma.mtime_ns,
                    mb.mtime,
                    mb.mtime_ns
                ));
            }
        }
    }
    for (rel, mb) in &b {
        if !a.contains_key(rel) {
            if mb.dir {
                d.dirs_extra += 1;
            } else {
                d.files_extra += 1;
            }
            d.note(format!("extra: {}", rel.display()));
        }
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_each_kind_of_difference() {
        let base = std::env::temp_dir().join(format!("sb-cmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let (a, b) = (base.join("a"), base.join("b"));
        for r in [&a, &b] {
            std::fs::create_dir_all(r.join("d")).unwrap();
            std::fs::write(r.join("d/same"), b"hello").unwrap();
            std::fs::write(r.join("d/bytes"), b"hello").unwrap();
        }
        std::fs::write(a.join("d/only_a"), b"x").unwrap();
        std::fs::write(b.join("d/only_b"), b"x").unwrap();
        std::fs::write(b.join("d/bytes"), b"hellO").unwrap();
        let t = std::fs::File::open(a.join("d/bytes"))
            .unwrap()
            .metadata()
            .unwrap()
            .modified()
            .unwrap();
        for r in [&a, &b] {
            for f in ["d/same", "d/bytes"] {
                std::fs::File::options()
                    .write(true)
                    .open(r.join(f))
                    .unwrap()
                    .set_modified(t)
                    .unwrap();
            }
        }
        let quick = compare(&a, &b, false).unwrap();
        assert_eq!(
            (quick.files_missing, quick.files_extra, quick.files_wrong),
            (1, 1, 0)
        );
        let full = compare(&a, &b, true).unwrap();
        assert_eq!(full.files_wrong, 1, "{:?}", full.examples);
        assert!(!full.files_ok());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
