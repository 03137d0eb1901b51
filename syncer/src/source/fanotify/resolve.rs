//! Directory handle → path resolution, through a cache.
//!
//! fanotify names a directory by its file handle. `open_by_handle_at` plus a readlink of the
//! descriptor gives the directory's *current* path. Resolved paths are cached by handle, and
//! indexed by path (ordered by components, so a subtree is one contiguous range): a directory
//! rename drops the cached entries at and below its old and new paths, a deleted directory's
//! entry is dropped, and nothing else is touched, so a rename costs what it makes stale, never
//! the whole cache. The cache is bounded: when full it starts over, which costs only
//! re-resolution.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hashbrown::HashMap;

use super::sys;

/// Where a directory handle points now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// A directory inside the source tree, relative to its root ("" is the root).
    Inside(PathBuf),
    /// A live directory elsewhere on the filesystem (its events are not ours).
    Outside,
    /// The directory no longer exists (ESTALE, or unlinked): a later removal event covers it.
    Gone,
}

/// A cached directory: its absolute path, and whether it lies in the source tree.
#[derive(Debug, Clone)]
struct Cached {
    abs: Arc<Path>,
    inside: bool,
}

pub struct Resolver {
    root: PathBuf,
    mount_fd: OwnedFd,
    by_handle: HashMap<Box<[u8]>, Cached>,
    by_path: BTreeMap<Arc<Path>, Box<[u8]>>,
    capacity: usize,
}

/// Whether a failure to open a directory handle means the directory is gone. ESTALE and ENOENT
/// say so; ENOMEM is what ext4 answers for a deleted directory whose dentry must be reconnected
/// to the root through parents that are gone too (seen on the bench's 1 M-file tree with
/// temporary directories removed under load): [`open_dir_handle`] retries it once, so a
/// genuine, passing allocation failure is not taken for a deletion.
fn gone(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ESTALE) | Some(libc::ENOENT) | Some(libc::ENOMEM)
    )
}

/// `open_by_handle_at`, with one retry of an ENOMEM.
fn open_dir_handle(mount_fd: std::os::fd::RawFd, handle: &[u8]) -> io::Result<OwnedFd> {
    match sys::open_by_handle(mount_fd, handle) {
        Err(e) if e.raw_os_error() == Some(libc::ENOMEM) => {
            std::thread::sleep(std::time::Duration::from_millis(1));
            sys::open_by_handle(mount_fd, handle)
        }
        r => r,
    }
}

impl Resolver {
    /// `root` must be canonical; `mount_fd` is any descriptor on the source's filesystem.
    pub fn new(root: PathBuf, mount_fd: OwnedFd, capacity: usize) -> Resolver {
        Resolver {
            root,
            mount_fd,
            by_handle: HashMap::new(),
            by_path: BTreeMap::new(),
            capacity,
        }
    }

    fn resolved(&self, c: &Cached) -> Resolved {
        match (c.inside, c.abs.strip_prefix(&self.root)) {
            (true, Ok(rel)) => Resolved::Inside(rel.to_path_buf()),
            _ => Resolved::Outside,
        }
    }

    /// Resolves a directory handle.
    pub fn dir(&mut self, handle: &[u8]) -> io::Result<Resolved> {
        if let Some(c) = self.by_handle.get(handle) {
            return Ok(self.resolved(c));
        }
        let abs = match open_dir_handle(self.mount_fd.as_raw_fd(), handle) {
            Ok(fd) => match sys::fd_path(&fd)? {
                (_, false) => return Ok(Resolved::Gone),
                (abs, true) => abs,
            },
            Err(e) if gone(&e) => return Ok(Resolved::Gone),
            Err(e) => return Err(e),
        };
        if self.by_handle.len() >= self.capacity {
            self.invalidate_all();
        }
        let c = Cached {
            inside: abs.starts_with(&self.root),
            abs: Arc::from(abs),
        };
        let r = self.resolved(&c);
        if let Some(old) = self.by_path.insert(c.abs.clone(), handle.into()) {
            // Another handle had this path: that directory was replaced without our noticing
            // (e.g. events lost); it is not there any more.
            self.by_handle.remove(&old);
        }
        self.by_handle.insert(handle.into(), c);
        Ok(r)
    }

    /// Opens (`O_PATH`) the object of any handle on the source's filesystem.
    pub fn open_handle(&self, handle: &[u8]) -> io::Result<OwnedFd> {
        sys::open_by_handle(self.mount_fd.as_raw_fd(), handle)
    }

    /// The source root (canonical).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The absolute path of the directory `handle` (resolving it if needed), if it exists.
    pub fn abs_path(&mut self, handle: &[u8]) -> io::Result<Option<Arc<Path>>> {
        if self.dir(handle)? == Resolved::Gone {
            return Ok(None);
        }
        Ok(self.by_handle.get(handle).map(|c| c.abs.clone()))
    }
    /// The path of `name` in the directory `handle`. A missing name, or `.`, is the directory
    /// itself. `Err(Outside)` when the entry is not inside the source tree, `Err(Gone)` when
    /// its directory no longer exists.
    pub fn entry(
        &mut self,
        handle: &[u8],
        name: Option<&[u8]>,
    ) -> io::Result<Result<PathBuf, Resolved>> {
        use std::os::unix::ffi::OsStrExt;
        let dir = match self.dir(handle)? {
            Resolved::Inside(d) => Some(d),
            other => {
                // The source root's own events are reported in its parent directory.
                if other == Resolved::Outside {
                    if let Some(n) = name {
                        if self.is_root_entry(handle, n)? {
                            return Ok(Ok(PathBuf::new()));
                        }
                    }
                }
                return Ok(Err(other));
            }
        };
        let dir = dir.expect("inside");
        Ok(Ok(match name {
            None | Some(b".") => dir,
            Some(n) => dir.join(std::ffi::OsStr::from_bytes(n)),
        }))
    }

    fn is_root_entry(&mut self, handle: &[u8], name: &[u8]) -> io::Result<bool> {
        use std::os::unix::ffi::OsStrExt;
        let (Some(parent), Some(root_name)) = (self.root.parent(), self.root.file_name()) else {
            return Ok(false);
        };
        if root_name.as_bytes() != name {
            return Ok(false);
        }
        let fd = match sys::open_by_handle(self.mount_fd.as_raw_fd(), handle) {
            Ok(fd) => fd,
            Err(_) => return Ok(false),
        };
        Ok(sys::fd_path(&fd)?.0 == parent)
    }

    /// Drops every cached entry (events were lost, or a rename could not be placed).
    pub fn invalidate_all(&mut self) {
        self.by_handle.clear();
        self.by_path.clear();
    }

    /// A directory at absolute path `abs` was renamed away or replaced: drops the cached
    /// entries at and below it. Costs the number of entries dropped (plus a lookup).
    pub fn invalidate_subtree(&mut self, abs: &Path) {
        let stale: Vec<Arc<Path>> = self
            .by_path
            .range::<Path, _>((std::ops::Bound::Included(abs), std::ops::Bound::Unbounded))
            .take_while(|(p, _)| p.starts_with(abs))
            .map(|(p, _)| p.clone())
            .collect();
        for p in stale {
            if let Some(h) = self.by_path.remove(&p) {
                self.by_handle.remove(&h);
            }
        }
    }

    /// A directory was deleted.
    pub fn forget(&mut self, handle: &[u8]) {
        if let Some(c) = self.by_handle.remove(handle) {
            self.by_path.remove(&c.abs);
        }
    }

    /// Directories cached.
    pub fn cached(&self) -> usize {
        self.by_handle.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs open_by_handle_at (CAP_DAC_READ_SEARCH); returns None when not permitted.
    fn handle_of(p: &Path) -> Option<Vec<u8>> {
        sys::name_to_handle(p).ok()
    }

    #[test]
    fn a_rename_drops_only_its_subtree() {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIP: open_by_handle_at needs CAP_DAC_READ_SEARCH (run as root)");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(t.path()).unwrap();
        for d in ["a/b/c", "a/bc", "x"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let h = |d: &str| handle_of(&root.join(d)).unwrap();
        let (ab, abc, abc2, x) = (h("a/b"), h("a/b/c"), h("a/bc"), h("x"));
        let mut r = Resolver::new(
            root.clone(),
            std::fs::File::open(&root).unwrap().into(),
            100,
        );
        for hd in [&ab, &abc, &abc2, &x] {
            assert!(matches!(r.dir(hd).unwrap(), Resolved::Inside(_)));
        }
        assert_eq!(r.cached(), 4);
        std::fs::rename(root.join("a/b"), root.join("x/moved")).unwrap();
        r.invalidate_subtree(&root.join("a/b"));
        assert_eq!(r.cached(), 2, "a/b and a/b/c dropped, a/bc and x kept");
        assert_eq!(
            r.dir(&abc).unwrap(),
            Resolved::Inside(PathBuf::from("x/moved/c"))
        );
        assert_eq!(
            r.dir(&abc2).unwrap(),
            Resolved::Inside(PathBuf::from("a/bc"))
        );
        std::fs::remove_dir(root.join("a/bc")).unwrap();
        r.forget(&abc2);
        assert_eq!(r.dir(&abc2).unwrap(), Resolved::Gone);
    }
}
