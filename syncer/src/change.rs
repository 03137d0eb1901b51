//! The vocabulary every event source speaks: a [`Change`] to one path relative to the source
//! root, delivered to a [`ChangeSink`]. Sources translate kernel records into these; nothing
//! downstream knows which kernel interface produced them; and a [`WatchClock`], until when
//! a source had delivered everything, and [`ReadMarks`], how far what a reader took from the
//! kernel is kept. A leaf: imports nothing of syncer.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// Until when a source had handed on every record the kernel queued: its reader sets it each
/// time it finds the queue empty; the state's heartbeat follows it, so that "last alive"
/// means "last watching". Shared (`Arc`) and kept across reopens of the source.
#[derive(Debug, Default)]
pub struct WatchClock(AtomicU64);

impl WatchClock {
    /// Everything queued before `t` has been handed on.
    pub fn caught_up(&self, t: SystemTime) {
        let ns = t
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        self.0.store(ns, Ordering::Relaxed);
    }

    /// The last such moment; `None` before the first.
    pub fn get(&self) -> Option<SystemTime> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(SystemTime::UNIX_EPOCH + Duration::from_nanos(ns)),
        }
    }
}

/// Where a reader marks how far it read the kernel's queue, so that a successor handed the
/// same queue (systemd's fd store) knows whether anything read was lost with this process,
/// and gets back what was read and kept but not yet journaled. Per read: [`ReadMarks::reading`]
/// before it, [`ReadMarks::raw`] with the records it took (before they are turned into
/// changes), [`ReadMarks::handed`] once its changes are in the sink.
pub trait ReadMarks: Send + Sync {
    /// Raw record buffers the predecessor kept and had not journaled, oldest first: they are
    /// turned into changes (and handed) before anything new is read.
    fn unjournaled(&self) -> Vec<Vec<u8>>;
    /// A read that may take records begins.
    fn reading(&self);
    /// The records it took, as the kernel gave them.
    fn raw(&self, bytes: &[u8]);
    /// Its changes (or the unjournaled buffers' changes) are in the sink.
    fn handed(&self);
}

/// What happened to a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// The name came into being here (creat, mkdir, mknod, symlink, link).
    Created,
    /// Content or attributes changed (write, truncate, chmod, utimes).
    Modified,
    /// A file opened for writing was closed, and nothing else was reported with it. Often
    /// long after its writes, which were reported already: an NFS server closes what it
    /// kept open a second or more after the client's last WRITE (NFSv3 has no close at all),
    /// so this alone may find the target already holding the file (see `queue::rules`).
    Closed,
    /// The name went away (unlink, rmdir, or renamed away).
    Removed,
    /// The name appeared by a rename, possibly over an existing one; a directory brings its
    /// whole subtree.
    MovedIn,
    /// The whole subtree must be compared again (overflow, lost or unresolvable events).
    Rescan,
}

/// A change to `path`, relative to the source root (the root itself is the empty path).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Change {
    pub path: PathBuf,
    pub kind: ChangeKind,
    pub is_dir: bool,
}

impl Change {
    pub fn new(path: impl Into<PathBuf>, kind: ChangeKind, is_dir: bool) -> Change {
        Change {
            path: path.into(),
            kind,
            is_dir,
        }
    }

    /// A rescan of the subtree at `path`.
    pub fn rescan(path: impl Into<PathBuf>) -> Change {
        Change::new(path, ChangeKind::Rescan, true)
    }
}

/// Where a source delivers what it saw (the queues of every target). `push` must not block on
/// the transfer side: sources call it from their reader threads.
pub trait ChangeSink: Send + Sync {
    fn push(&self, changes: &[Change]);
}

/// The changes caused by a directory-entry operation on `path`: the entry itself, and its
/// parent directory, whose mtime the operation moved (the target's copy of the parent must be
/// brought up to date after the entry).
pub fn entry_changes(path: &Path, kind: ChangeKind, is_dir: bool, out: &mut Vec<Change>) {
    out.push(Change::new(path, kind, is_dir));
    if let Some(parent) = path.parent() {
        out.push(Change::new(parent, ChangeKind::Modified, true));
    }
}

/// The length of the hex part of a Linux NFS client's silly-rename name: `.nfs`, the file's
/// 64-bit file id and a 32-bit counter, in hex (`fs/nfs/dir.c`, `nfs_sillyrename`).
pub const SILLY_RENAME_HEX: usize = 24;

/// Whether `name` (one path component) is an NFS client's silly-rename: a file removed or
/// renamed over while a client still has it open is renamed on the server to
/// `.nfs<24 hex digits>` and removed at the client's last close. Such a name is an artifact of
/// the protocol, never content: the fanout drops its changes (the rename that made it is then the
/// removal of the old name, which is what the client sees), and walks and transfers skip it.
pub fn is_silly_rename(name: &[u8]) -> bool {
    name.strip_prefix(b".nfs").is_some_and(|hex| {
        hex.len() == SILLY_RENAME_HEX && hex.iter().all(|b| b.is_ascii_hexdigit())
    })
}

/// Whether a change's path ends in an NFS silly-rename ([`is_silly_rename`]).
pub fn is_silly_renamed(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    path.file_name()
        .is_some_and(|n| is_silly_rename(n.as_bytes()))
}

/// Whether `path` lies strictly below `dir` (relative paths; the empty path is the root).
pub fn is_below(path: &Path, dir: &Path) -> bool {
    if dir.as_os_str().is_empty() {
        return !path.as_os_str().is_empty();
    }
    path != dir && path.starts_with(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_changes_touch_the_parent() {
        let mut out = Vec::new();
        entry_changes(Path::new("a/b"), ChangeKind::Created, false, &mut out);
        assert_eq!(
            out,
            vec![
                Change::new("a/b", ChangeKind::Created, false),
                Change::new("a", ChangeKind::Modified, true)
            ]
        );
        out.clear();
        entry_changes(Path::new("top"), ChangeKind::Removed, true, &mut out);
        assert_eq!(out[1], Change::new("", ChangeKind::Modified, true));
    }

    #[test]
    fn silly_renames() {
        for (name, silly) in [
            (".nfs00000000000c04a200000001", true),
            (".nfs0000000000ABCDEF00000001", true),
            (".nfs00000000000c04a20000000", false), // 23 digits
            (".nfs00000000000c04a2000000011", false), // 25 digits
            (".nfs00000000000c04a20000000g", false),
            (".nfs", false),
            (".nfsd", false),
            ("nfs00000000000c04a200000001", false),
            ("a.nfs00000000000c04a200000001", false),
        ] {
            assert_eq!(is_silly_rename(name.as_bytes()), silly, "{name}");
        }
        assert!(is_silly_renamed(Path::new(
            "dir/.nfs00000000000c04a200000001"
        )));
        assert!(!is_silly_renamed(Path::new(
            ".nfs00000000000c04a200000001/file"
        )));
        assert!(!is_silly_renamed(Path::new("")));
    }

    #[test]
    fn below() {
        assert!(is_below(Path::new("a/b"), Path::new("a")));
        assert!(!is_below(Path::new("ab"), Path::new("a")));
        assert!(!is_below(Path::new("a"), Path::new("a")));
        assert!(is_below(Path::new("a"), Path::new("")));
        assert!(!is_below(Path::new(""), Path::new("")));
    }
}
