//! The start-up pass and full rescans: "make the target's copy of this tree identical", cut into
//! small pieces while the tree is walked.
//!
//! A walker thread reads the directories of the tree depth first (`getdents` through
//! `read_dir`, entry types from the directory itself: no `stat` per file) and hands out
//! [`Piece`]s: runs of directories, each to be transferred *shallow* (its own attributes and
//! immediate entries, with deletion of extraneous entries on the target), of about
//! `piece_entries` entries in all. The pool sends each piece as one rsync call, several in
//! parallel. Because a piece is small, a live change waits at most for the one piece in flight
//! over its directory, never for the whole pass; and because pieces are produced while the pool
//! consumes them (a bounded channel), the walk costs memory for its stack only, never for the
//! whole tree, and nothing is planned before the first piece goes.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::mpsc;
use tracing::debug;

/// Directories to be transferred shallow, in one rsync call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub dirs: Vec<PathBuf>,
    /// Entries of those directories when they were read (the directories themselves included).
    pub entries: u64,
}

/// How pieces are cut.
#[derive(Debug, Clone, Copy)]
pub struct PieceSize {
    /// A piece is handed out once its directories hold this many entries.
    pub entries: u64,
    /// ... or once it has this many directories.
    pub dirs: usize,
}

/// What the walker has done so far.
#[derive(Debug, Default)]
pub struct WalkStats {
    pub dirs: AtomicU64,
    pub entries: AtomicU64,
    /// Directories that could not be read for a reason other than being gone (their piece
    /// reports the error and is retried).
    pub unreadable: AtomicU64,
}

/// A running walk; dropping it stops the walker.
pub struct Walk {
    rx: mpsc::Receiver<Piece>,
    cancel: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub stats: Arc<WalkStats>,
}

/// Pieces buffered between the walker and the pool.
const CHANNEL: usize = 64;

impl Walk {
    /// Starts walking `rel` below `root`.
    pub fn start(root: PathBuf, rel: PathBuf, size: PieceSize) -> std::io::Result<Walk> {
        let (tx, rx) = mpsc::channel(CHANNEL);
        let cancel = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(WalkStats::default());
        let thread = {
            let (cancel, stats) = (cancel.clone(), stats.clone());
            std::thread::Builder::new()
                .name("pass-walk".into())
                .spawn(move || {
                    walk(&root, rel, size, &cancel, &stats, |p| {
                        tx.blocking_send(p).is_ok()
                    })
                })?
        };
        Ok(Walk {
            rx,
            cancel,
            thread: Some(thread),
            stats,
        })
    }

    /// The next piece; `None` once the walk is complete.
    pub async fn next(&mut self) -> Option<Piece> {
        self.rx.recv().await
    }
}

impl Drop for Walk {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        self.rx.close();
        if let Some(t) = self.thread.take() {
            // The walker notices within one directory read.
            let _ = t.join();
        }
    }
}

/// Walks `rel` below `root` depth first, handing pieces to `emit` (which returns false to stop).
/// Exposed for tests; [`Walk`] runs it on a thread.
pub fn walk(
    root: &Path,
    rel: PathBuf,
    size: PieceSize,
    cancel: &AtomicBool,
    stats: &WalkStats,
    mut emit: impl FnMut(Piece) -> bool,
) {
    let mut stack = vec![rel];
    let mut piece = Piece {
        dirs: Vec::new(),
        entries: 0,
    };
    let mut subdirs = Vec::new();
    let mut first = true;
    while let Some(dir) = stack.pop() {
        if cancel.load(Ordering::Relaxed) {
            return;
        }
        let n = match read_subdirs(&root.join(&dir), &mut subdirs) {
            Ok(n) => n,
            // Gone or no longer a directory since its parent was read: the parent's piece (or the
            // live event) takes care of it on the target. The walk's own top is always handed
            // out: its transfer deletes it on the target if it is gone.
            Err(e) if !first && matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
                continue
            }
            Err(e) => {
                debug!(dir = %dir.display(), "cannot read directory during the pass: {e}");
                stats.unreadable.fetch_add(1, Ordering::Relaxed);
                0
            }
        };
        first = false;
        stats.dirs.fetch_add(1, Ordering::Relaxed);
        stats.entries.fetch_add(n, Ordering::Relaxed);
        // Depth first, in name order: push in reverse so the smallest name comes next.
        subdirs.sort_unstable_by(|a, b| b.cmp(a));
        stack.extend(subdirs.drain(..).map(|name| dir.join(name)));
        piece.entries += n + 1;
        piece.dirs.push(dir);
        if piece.entries >= size.entries || piece.dirs.len() >= size.dirs {
            let full = std::mem::replace(
                &mut piece,
                Piece {
                    dirs: Vec::new(),
                    entries: 0,
                },
            );
            if !emit(full) {
                return;
            }
        }
    }
    if !piece.dirs.is_empty() {
        emit(piece);
    }
}

/// Reads a directory: returns its entry count and puts the names of its subdirectories (not
/// symlinks to directories) in `out`.
fn read_subdirs(abs: &Path, out: &mut Vec<std::ffi::OsString>) -> std::io::Result<u64> {
    let mut n = 0;
    for e in std::fs::read_dir(abs)? {
        let e = e?;
        n += 1;
        // The type comes from getdents; file_type() falls back to lstat where the filesystem
        // does not fill it in. Symlinks to directories are entries, not directories.
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.push(e.file_name());
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(root: &Path, rel: &str, size: PieceSize) -> Vec<(Vec<String>, u64)> {
        let mut out = Vec::new();
        let stats = WalkStats::default();
        walk(
            root,
            PathBuf::from(rel),
            size,
            &AtomicBool::new(false),
            &stats,
            |p| {
                out.push((
                    p.dirs.iter().map(|d| d.display().to_string()).collect(),
                    p.entries,
                ));
                true
            },
        );
        out
    }

    #[test]
    fn pieces_follow_the_tree_depth_first() {
        let t = tempfile::tempdir().unwrap();
        for d in ["a/x", "a/y", "b", "c/z/deep"] {
            std::fs::create_dir_all(t.path().join(d)).unwrap();
        }
        for f in ["f1", "a/x/f", "a/x/g", "b/f"] {
            std::fs::write(t.path().join(f), b"x").unwrap();
        }
        std::os::unix::fs::symlink("a", t.path().join("link-to-dir")).unwrap();
        let big = PieceSize {
            entries: 1000,
            dirs: 1000,
        };
        let all = pieces(t.path(), "", big);
        assert_eq!(all.len(), 1);
        assert_eq!(
            all[0].0,
            ["", "a", "a/x", "a/y", "b", "c", "c/z", "c/z/deep"],
            "parents before children, names in order, symlinks not followed"
        );
        // Entries: root 5 (a b c f1 link), a 2, a/x 2, a/y 0, b 1, c 1, c/z 1, deep 0, plus one
        // per directory.
        assert_eq!(all[0].1, 12 + 8);

        let by_entries = pieces(
            t.path(),
            "",
            PieceSize {
                entries: 4,
                dirs: 1000,
            },
        );
        let shown: Vec<_> = by_entries.iter().map(|(d, _)| d.join(",")).collect();
        assert_eq!(shown, ["", "a,a/x", "a/y,b,c", "c/z,c/z/deep"]);

        let by_dirs = pieces(
            t.path(),
            "a",
            PieceSize {
                entries: 1000,
                dirs: 2,
            },
        );
        let shown: Vec<_> = by_dirs.iter().map(|(d, _)| d.join(",")).collect();
        assert_eq!(shown, ["a,a/x", "a/y"]);
    }

    #[test]
    fn a_missing_root_is_still_handed_out() {
        let t = tempfile::tempdir().unwrap();
        let got = pieces(
            t.path(),
            "gone",
            PieceSize {
                entries: 10,
                dirs: 10,
            },
        );
        assert_eq!(got, [(vec!["gone".to_string()], 1)]);
    }
}
