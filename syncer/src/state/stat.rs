//! Reading the source's metadata for the index: one entry (`lstat`), or a directory's entries
//! (`getdents` and `fstatat` relative to the directory's descriptor, so no path is resolved
//! twice), and the index updates a transfer will make true if it succeeds ([`prestat`]).

use std::ffi::{CString, OsStr};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::dir::Dir;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use super::meta::{IndexUpdate, Meta};

/// A directory's entries: names and metadata.
pub type Entries = Vec<(Vec<u8>, Meta)>;

/// Hard-linked names met while reading (files with more than one link: path and metadata),
/// for the transfer layer's table of names that change together.
pub type Linked = Vec<(PathBuf, Meta)>;

/// How much of the tree at a path a transfer makes identical.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// The entry itself.
    Entry,
    /// The directory and its immediate entries.
    Children,
    /// The whole subtree.
    Subtree,
}

/// `lstat` of `root/rel`: `Ok(None)` when it does not exist (or a parent is no directory).
pub fn lstat(root: &Path, rel: &Path) -> std::io::Result<Option<Meta>> {
    match std::fs::symlink_metadata(root.join(rel)) {
        Ok(m) => Ok(Some(Meta::from_metadata(&m))),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The entries of directory `abs` with their metadata (entries that vanish while it is read,
/// and NFS silly-renames, are left out). `Ok(None)`: the directory does not exist.
pub fn read_dir(abs: &Path) -> std::io::Result<Option<Entries>> {
    read_dir_noting(abs, &mut Vec::new())
}

/// [`read_dir`], adding the entries that are not directories and have more than one link
/// to `linked` too.
pub fn read_dir_noting(abs: &Path, linked: &mut Entries) -> std::io::Result<Option<Entries>> {
    let mut dir = match Dir::open(
        abs,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(d) => d,
        Err(nix::errno::Errno::ENOENT | nix::errno::Errno::ENOTDIR) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let fd = dir.as_raw_fd();
    let mut out = Vec::new();
    for entry in dir.iter() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        // NFS silly-renames are never replicated (see `change::is_silly_rename`).
        if name == b"." || name == b".." || crate::change::is_silly_rename(name) {
            continue;
        }
        let c = CString::new(name).expect("a name from getdents has no NUL");
        // SAFETY: a zeroed stat is a valid out-parameter.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid directory descriptor, NUL-terminated name, out-pointer to a stat.
        let r = unsafe { libc::fstatat(fd, c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
        if r == 0 {
            let m = Meta::from_stat(&st);
            if st.st_nlink > 1 && !m.is_dir() {
                linked.push((name.to_vec(), m));
            }
            out.push((name.to_vec(), m));
        } else {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ENOENT) {
                return Err(e);
            }
        }
    }
    Ok(Some(out))
}

/// The index updates that a successful transfer of `paths` (to `depth`) makes true, from the
/// source as it is now, before the transfer reads it. Entries that cannot be read give no
/// update (the transfer reports them). Hard-linked names met below the paths (not the paths
/// themselves: the dispatcher stats those) are added to `linked`.
pub fn prestat(
    root: &Path,
    depth: Depth,
    paths: &[PathBuf],
    linked: &mut Linked,
) -> Vec<IndexUpdate> {
    let mut out = Vec::new();
    for p in paths {
        match lstat(root, p) {
            Ok(None) => out.push(IndexUpdate::Remove(p.clone())),
            Ok(Some(m)) => {
                let is_dir = m.is_dir();
                out.push(IndexUpdate::Put(p.clone(), m));
                match depth {
                    Depth::Children if is_dir => children(root, p, &mut out, false, linked),
                    Depth::Subtree if is_dir => children(root, p, &mut out, true, linked),
                    _ => {}
                }
            }
            Err(_) => {}
        }
    }
    out
}

fn children(root: &Path, dir: &Path, out: &mut Vec<IndexUpdate>, deep: bool, linked: &mut Linked) {
    let mut stack = vec![dir.to_path_buf()];
    let mut here = Vec::new();
    while let Some(d) = stack.pop() {
        let Ok(Some(kids)) = read_dir_noting(&root.join(&d), &mut here) else {
            here.clear();
            continue;
        };
        linked.extend(
            here.drain(..)
                .map(|(name, m)| (d.join(OsStr::from_bytes(&name)), m)),
        );
        if deep {
            for (name, m) in &kids {
                if m.is_dir() {
                    stack.push(d.join(OsStr::from_bytes(name)));
                }
            }
        }
        out.push(IndexUpdate::Children(d, kids));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prestat_by_depth() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("d/sub")).unwrap();
        std::fs::write(r.join("d/f"), b"x").unwrap();
        std::fs::write(r.join("d/sub/g"), b"y").unwrap();
        std::os::unix::fs::symlink("nowhere", r.join("d/link")).unwrap();
        let show = |u: &[IndexUpdate]| -> Vec<String> {
            u.iter()
                .map(|u| match u {
                    IndexUpdate::Put(p, m) => format!("put {} {:?}", p.display(), m.kind),
                    IndexUpdate::Remove(p) => format!("remove {}", p.display()),
                    IndexUpdate::Children(p, k) => {
                        let mut n: Vec<_> = k
                            .iter()
                            .map(|(n, _)| String::from_utf8_lossy(n).into_owned())
                            .collect();
                        n.sort();
                        format!("children {} [{}]", p.display(), n.join(" "))
                    }
                })
                .collect()
        };
        let p = |s: &str| vec![PathBuf::from(s)];
        assert_eq!(
            show(&prestat(r, Depth::Entry, &p("d/f"), &mut Vec::new())),
            ["put d/f File"]
        );
        assert_eq!(
            show(&prestat(r, Depth::Entry, &p("d/gone"), &mut Vec::new())),
            ["remove d/gone"]
        );
        assert_eq!(
            show(&prestat(r, Depth::Entry, &p("d/f/below"), &mut Vec::new())),
            ["remove d/f/below"]
        );
        assert_eq!(
            show(&prestat(r, Depth::Entry, &p("d/link"), &mut Vec::new())),
            ["put d/link Symlink"]
        );
        assert_eq!(
            show(&prestat(r, Depth::Children, &p("d"), &mut Vec::new())),
            ["put d Dir", "children d [f link sub]"]
        );
        assert_eq!(
            show(&prestat(r, Depth::Subtree, &p("d"), &mut Vec::new())),
            ["put d Dir", "children d [f link sub]", "children d/sub [g]"]
        );
    }

    #[test]
    fn prestat_notes_hard_linked_names_below() {
        use std::os::unix::fs::MetadataExt;
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("d/sub")).unwrap();
        std::fs::write(r.join("d/one"), b"x").unwrap();
        std::fs::write(r.join("d/alone"), b"x").unwrap();
        std::fs::hard_link(r.join("d/one"), r.join("d/sub/two")).unwrap();
        let ino = std::fs::metadata(r.join("d/one")).unwrap().ino();
        let cases: &[(Depth, &[&str])] = &[
            (Depth::Entry, &[]),
            (Depth::Children, &["d/one"]),
            (Depth::Subtree, &["d/one", "d/sub/two"]),
        ];
        for (depth, want) in cases {
            let mut linked = Vec::new();
            prestat(r, *depth, &[PathBuf::from("d")], &mut linked);
            let mut got: Vec<(PathBuf, u64)> =
                linked.into_iter().map(|(p, m)| (p, m.ino)).collect();
            got.sort();
            let want: Vec<(PathBuf, u64)> = want.iter().map(|p| (PathBuf::from(p), ino)).collect();
            assert_eq!(got, want, "{depth:?}");
        }
    }
}
