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
//!
//! The walk's order is the paths' order (component by component, names as bytes), so "every
//! directory up to P is on the target" is one path: a pass cut short can resume *after* P,
//! skipping whole subtrees before it and reading only the directories above P again.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::mpsc;
use tracing::debug;

/// Directories to be transferred shallow, in one rsync call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// Its place in the walk (0, 1, ...); the parts of a failed piece keep it.
    pub no: u64,
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
    /// Subtrees skipped whole because a resumed walk had sent them before.
    pub skipped: AtomicU64,
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
    /// Starts walking `rel` below `root`, after `after` when given (see [`walk`]).
    pub fn start(
        root: PathBuf,
        rel: PathBuf,
        size: PieceSize,
        after: Option<PathBuf>,
    ) -> std::io::Result<Walk> {
        let (tx, rx) = mpsc::channel(CHANNEL);
        let cancel = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(WalkStats::default());
        let thread = {
            let (cancel, stats) = (cancel.clone(), stats.clone());
            std::thread::Builder::new()
                .name("pass-walk".into())
                .spawn(move || {
                    walk(&root, rel, size, after.as_deref(), &cancel, &stats, |p| {
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
/// With `after`, only directories after that path in the walk's order are handed out: a
/// subtree wholly before it is not read, and a directory above it (or it) is read for its
/// subdirectories only. Exposed for tests; [`Walk`] runs it on a thread.
pub fn walk(
    root: &Path,
    rel: PathBuf,
    size: PieceSize,
    after: Option<&Path>,
    cancel: &AtomicBool,
    stats: &WalkStats,
    mut emit: impl FnMut(Piece) -> bool,
) {
    let mut stack = vec![rel];
    let mut no = 0;
    let mut piece = Piece {
        no,
        dirs: Vec::new(),
        entries: 0,
    };
    let mut subdirs = Vec::new();
    let mut first = true;
    while let Some(dir) = stack.pop() {
        if cancel.load(Ordering::Relaxed) {
            return;
        }
        // Path order is the walk's order: a directory before `after` and not above it has
        // its whole subtree before it too.
        let sent = after.is_some_and(|a| dir.as_path() <= a);
        if sent && !after.is_some_and(|a| a.starts_with(&dir)) {
            stats.skipped.fetch_add(1, Ordering::Relaxed);
            continue;
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
        if sent {
            // Above (or at) the resume point: its own piece went before.
            continue;
        }
        piece.entries += n + 1;
        piece.dirs.push(dir);
        if piece.entries >= size.entries || piece.dirs.len() >= size.dirs {
            no += 1;
            let full = std::mem::replace(
                &mut piece,
                Piece {
                    no,
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
        pieces_after(root, rel, size, None)
    }

    fn pieces_after(
        root: &Path,
        rel: &str,
        size: PieceSize,
        after: Option<&str>,
    ) -> Vec<(Vec<String>, u64)> {
        let mut out = Vec::new();
        let stats = WalkStats::default();
        let mut nos = Vec::new();
        walk(
            root,
            PathBuf::from(rel),
            size,
            after.map(Path::new),
            &AtomicBool::new(false),
            &stats,
            |p| {
                nos.push(p.no);
                out.push((
                    p.dirs.iter().map(|d| d.display().to_string()).collect(),
                    p.entries,
                ));
                true
            },
        );
        assert!(
            nos.iter().copied().eq(0..nos.len() as u64),
            "numbered in order: {nos:?}"
        );
        out
    }

    #[test]
    fn a_resumed_walk_hands_out_only_what_comes_after() {
        let t = tempfile::tempdir().unwrap();
        for d in ["a/x", "a/y", "ab", "b/q", "c/z/deep"] {
            std::fs::create_dir_all(t.path().join(d)).unwrap();
        }
        let one = PieceSize {
            entries: 1,
            dirs: 1,
        };
        // Walk order: "", a, a/x, a/y, ab, b, b/q, c, c/z, c/z/deep.
        #[rustfmt::skip]
        let table: &[(Option<&str>, &[&str], &str)] = &[
            (None, &["", "a", "a/x", "a/y", "ab", "b", "b/q", "c", "c/z", "c/z/deep"], "no resume point: all"),
            (Some(""), &["a", "a/x", "a/y", "ab", "b", "b/q", "c", "c/z", "c/z/deep"], "after the root: all but the root"),
            (Some("a"), &["a/x", "a/y", "ab", "b", "b/q", "c", "c/z", "c/z/deep"], "after a directory: its subdirectories come next"),
            (Some("a/y"), &["ab", "b", "b/q", "c", "c/z", "c/z/deep"], "a subtree wholly before is skipped"),
            (Some("b/q"), &["c", "c/z", "c/z/deep"], "last of a subtree"),
            (Some("a/xa"), &["a/y", "ab", "b", "b/q", "c", "c/z", "c/z/deep"], "a point that no longer exists: what sorts after it"),
            (Some("c/z/deep"), &[], "after the last directory: nothing"),
            (Some("zz"), &[], "after everything: nothing"),
        ];
        for &(after, want, why) in table {
            let got: Vec<String> = pieces_after(t.path(), "", one, after)
                .into_iter()
                .flat_map(|(d, _)| d)
                .collect();
            assert_eq!(got, want, "{why}");
        }
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
