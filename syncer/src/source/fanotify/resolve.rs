//! Directory handle → path resolution, through a cache.
//!
//! fanotify names a directory by its file handle. `open_by_handle_at` plus a readlink of the
//! descriptor gives the directory's *current* path. Resolved paths are cached by handle; the
//! cache is cleared whenever a directory is renamed (every cached path below it may be stale)
//! and a deleted directory's entry is dropped, so no stale path outlives the event that made it
//! stale. The cache is bounded: when full it starts over, which costs only re-resolution.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

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

pub struct Resolver {
    root: PathBuf,
    mount_fd: OwnedFd,
    cache: HashMap<Box<[u8]>, Resolved>,
    capacity: usize,
}

impl Resolver {
    /// `root` must be canonical; `mount_fd` is any descriptor on the source's filesystem.
    pub fn new(root: PathBuf, mount_fd: OwnedFd, capacity: usize) -> Resolver {
        Resolver {
            root,
            mount_fd,
            cache: HashMap::new(),
            capacity,
        }
    }

    /// Resolves a directory handle.
    pub fn dir(&mut self, handle: &[u8]) -> io::Result<Resolved> {
        if let Some(r) = self.cache.get(handle) {
            return Ok(r.clone());
        }
        let r = match sys::open_by_handle(self.mount_fd.as_raw_fd(), handle) {
            Ok(fd) => {
                let (abs, linked) = sys::fd_path(&fd)?;
                if !linked {
                    Resolved::Gone
                } else {
                    match abs.strip_prefix(&self.root) {
                        Ok(rel) => Resolved::Inside(rel.to_path_buf()),
                        Err(_) => Resolved::Outside,
                    }
                }
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::ESTALE) | Some(libc::ENOENT)) => {
                Resolved::Gone
            }
            Err(e) => return Err(e),
        };
        if r != Resolved::Gone {
            if self.cache.len() >= self.capacity {
                self.cache.clear();
            }
            self.cache.insert(handle.into(), r.clone());
        }
        Ok(r)
    }

    /// The path of `name` in the directory `handle`. A missing name, or `.`, is the directory
    /// itself. `None` when the entry is not inside the source tree.
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

    /// A directory was renamed: every cached path may now be stale.
    pub fn invalidate_all(&mut self) {
        self.cache.clear();
    }

    /// A directory was deleted.
    pub fn forget(&mut self, handle: &[u8]) {
        self.cache.remove(handle);
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn cached(&self) -> usize {
        self.cache.len()
    }
}
