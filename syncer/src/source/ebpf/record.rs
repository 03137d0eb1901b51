//! Decoding ring-buffer records into paths relative to the source root.
//!
//! A record carries a directory walk (components from some directory up to the filesystem
//! root, leaf first) and a name relative to that directory. Joined, they give the path from
//! the root of the source's *filesystem*; the source tree is one directory of it
//! ([`Placement::fs_path`]), found through the mount table. Records whose name is absolute and
//! whose writer's root lies on another filesystem ([`F_ABSOLUTE`]) are mapped through syncer's
//! own view of the mounts instead.

use std::ffi::OsStr;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use syncer_ebpf_abi::{RecordHeader, F_ABSOLUTE, F_TRUNCATED, F_TYPE_UNKNOWN, HEADER_LEN};

/// A decoded record.
#[derive(Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub mask: u32,
    pub flags: u16,
    pub tgid: u32,
    pub key: u64,
    /// Name relative to the walked directory (absolute with [`F_ABSOLUTE`]).
    pub name: &'a [u8],
    /// Components from the walked directory up to the filesystem root, leaf first.
    pub walk: Vec<&'a [u8]>,
}

/// Why a record could not be decoded; the source rescans.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed eBPF record ({0})")]
pub struct Malformed(&'static str);

pub fn decode(buf: &[u8]) -> Result<Record<'_>, Malformed> {
    if buf.len() < HEADER_LEN {
        return Err(Malformed("shorter than its header"));
    }
    // SAFETY: RecordHeader is repr(C) plain integers; read_unaligned copes with any alignment.
    let h: RecordHeader = unsafe { std::ptr::read_unaligned(buf.as_ptr().cast()) };
    let name_end = HEADER_LEN + h.name_len as usize;
    let walk_end = name_end + h.walk_len as usize;
    if walk_end > buf.len() {
        return Err(Malformed("lengths exceed the record"));
    }
    let mut walk = Vec::new();
    let mut rest = &buf[name_end..walk_end];
    while let Some((&len, tail)) = rest.split_first() {
        let len = len as usize;
        if len > tail.len() {
            return Err(Malformed("walk component exceeds the record"));
        }
        walk.push(&tail[..len]);
        rest = &tail[len..];
    }
    Ok(Record {
        mask: h.mask,
        flags: h.flags,
        tgid: h.tgid,
        key: h.key,
        name: &buf[HEADER_LEN..name_end],
        walk,
    })
}

/// Where the source tree lies, for mapping records to it.
#[derive(Debug, Clone)]
pub struct Placement {
    /// The source root as syncer sees it (canonical).
    pub root: PathBuf,
    /// The source root's path from the root of its filesystem (`/` for a whole filesystem).
    pub fs_path: PathBuf,
    /// The source filesystem's device (`st_dev`).
    pub dev: u64,
}

/// What a record means for the tree.
#[derive(Debug, PartialEq, Eq)]
pub enum Placed {
    /// A path relative to the source root ("" is the root itself).
    Inside(PathBuf),
    /// Elsewhere on the filesystem, or on another one.
    Outside,
    /// Cannot be placed: rescan.
    Lost,
}

impl Placement {
    /// Finds where `root` lies in its filesystem from `/proc/self/mountinfo`.
    pub fn find(root: &Path) -> std::io::Result<Placement> {
        let root = root.canonicalize()?;
        let dev = std::fs::metadata(&root)?.dev();
        let info = std::fs::read_to_string("/proc/self/mountinfo")?;
        let (major, minor) = (libc::major(dev), libc::minor(dev));
        let mut best: Option<(PathBuf, PathBuf)> = None;
        for line in info.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            if f.len() < 5 || f[2] != format!("{major}:{minor}") {
                continue;
            }
            let (mroot, mpoint) = (unescape(f[3]), unescape(f[4]));
            if root.starts_with(&mpoint)
                && best
                    .as_ref()
                    .is_none_or(|(_, p)| mpoint.as_os_str().len() > p.as_os_str().len())
            {
                best = Some((mroot, mpoint));
            }
        }
        let (mroot, mpoint) = best.ok_or_else(|| {
            std::io::Error::other(format!(
                "no mount of device {major}:{minor} holds {}",
                root.display()
            ))
        })?;
        let below = root.strip_prefix(&mpoint).expect("checked above");
        Ok(Placement {
            fs_path: mroot.join(below),
            root,
            dev,
        })
    }

    /// The path a record names, relative to the source root.
    pub fn place(&self, rec: &Record<'_>) -> Placed {
        if rec.flags & F_TRUNCATED != 0 {
            return Placed::Lost;
        }
        if rec.flags & F_ABSOLUTE != 0 {
            return self.place_absolute(OsStr::from_bytes(rec.name));
        }
        let mut full = PathBuf::from("/");
        for c in rec.walk.iter().rev() {
            full.push(OsStr::from_bytes(c));
        }
        // The name is relative to the walked directory; a leading '/' means that directory is
        // the writer's root.
        let name = OsStr::from_bytes(rec.name);
        let full = normalize(&full, Path::new(name));
        match full.strip_prefix(&self.fs_path) {
            Ok(rel) => Placed::Inside(rel.to_path_buf()),
            Err(_) => Placed::Outside,
        }
    }

    /// An absolute name from a writer whose root is not on the source filesystem: it is taken
    /// as a path in syncer's own mount namespace. A name that reaches the tree only through a
    /// symbolic link is found by resolving its parent directory.
    fn place_absolute(&self, name: &OsStr) -> Placed {
        let lexical = normalize(Path::new("/"), Path::new(name));
        if let Ok(rel) = lexical.strip_prefix(&self.root) {
            return Placed::Inside(rel.to_path_buf());
        }
        let (Some(parent), Some(file)) = (lexical.parent(), lexical.file_name()) else {
            return Placed::Outside;
        };
        match std::fs::metadata(parent) {
            Ok(m) if m.dev() == self.dev => {}
            _ => return Placed::Outside,
        }
        match parent.canonicalize() {
            Ok(p) => match p.join(file).strip_prefix(&self.root) {
                Ok(rel) => Placed::Inside(rel.to_path_buf()),
                Err(_) => Placed::Outside,
            },
            // The directory went away in the meantime: its removal is reported too.
            Err(_) => Placed::Outside,
        }
    }

    /// Whether the record's object is a directory.
    pub fn is_dir(&self, rec: &Record<'_>, rel: &Path) -> bool {
        if rec.flags & F_TYPE_UNKNOWN != 0 {
            std::fs::symlink_metadata(self.root.join(rel)).is_ok_and(|m| m.is_dir())
        } else {
            rec.mask & syncer_ebpf_abi::EV_ISDIR != 0
        }
    }
}

/// `base` joined with `rel`, with `.`, `..` and repeated slashes resolved lexically (an
/// absolute `rel` restarts from `base`, the writer's root). Both results are absolute.
fn normalize(base: &Path, rel: &Path) -> PathBuf {
    let mut out = base.to_path_buf();
    for c in rel.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir => out = base.to_path_buf(),
            Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = b[i + 1..i + 4]
                .iter()
                .fold(0u32, |v, d| v * 8 + (d - b'0') as u32);
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use syncer_ebpf_abi::{EV_CREATE, EV_ISDIR};

    fn encode(mask: u32, flags: u16, name: &[u8], walk_leaf_first: &[&[u8]]) -> Vec<u8> {
        let mut walk = Vec::new();
        for c in walk_leaf_first {
            walk.push(c.len() as u8);
            walk.extend_from_slice(c);
        }
        let h = RecordHeader {
            mask,
            flags,
            name_len: name.len() as u16,
            walk_len: walk.len() as u16,
            _pad: 0,
            tgid: 7,
            key: 0,
        };
        // SAFETY: RecordHeader is repr(C) plain integers.
        let hb: [u8; HEADER_LEN] = unsafe { std::mem::transmute(h) };
        [&hb[..], name, &walk].concat()
    }

    fn placement(fs_path: &str) -> Placement {
        Placement {
            root: PathBuf::from("/mnt/src/data"),
            fs_path: PathBuf::from(fs_path),
            dev: 0,
        }
    }

    #[test]
    fn decode_round_trip_and_truncation() {
        let buf = encode(EV_CREATE, 0, b"f", &[b"b", b"a"]);
        let r = decode(&buf).unwrap();
        assert_eq!((r.mask, r.tgid, r.name), (EV_CREATE, 7, &b"f"[..]));
        assert_eq!(r.walk, vec![&b"b"[..], &b"a"[..]]);
        // A record cut anywhere is refused, never read past its end or taken for another.
        for cut in 0..buf.len() {
            assert!(
                decode(&buf[..cut]).is_err(),
                "a record cut at {cut} decoded"
            );
        }
    }

    /// Data-driven: (fs path of the source, walk leaf first, name, expected).
    #[test]
    fn placing_records() {
        let inside = |p: &str| Placed::Inside(PathBuf::from(p));
        type Case = (
            &'static str,
            &'static [&'static [u8]],
            &'static [u8],
            Placed,
        );
        let cases: &[Case] = &[
            ("/", &[b"b", b"a"], b"f", inside("a/b/f")),
            ("/data", &[b"b", b"data"], b"f", inside("b/f")),
            ("/data", &[b"data"], b"", inside("")),
            ("/data", &[b"other"], b"f", Placed::Outside),
            ("/data", &[b"datax"], b"f", Placed::Outside),
            ("/data", &[], b"data/x/../y/./z", inside("y/z")),
            ("/data", &[b"d", b"data"], b"../../data/e", inside("e")),
            (
                "/data",
                &[b"d", b"data"],
                b"../../../../data/e",
                inside("e"),
            ),
            ("/", &[b"jail"], b"/etc/passwd", inside("jail/etc/passwd")),
            ("/", &[b"sub"], b"dir//f/", inside("sub/dir/f")),
            (
                "/",
                &[&[0xff, b'\n']],
                b"-x",
                Placed::Inside(PathBuf::from(OsStr::from_bytes(b"\xff\n/-x"))),
            ),
        ];
        for (fs_path, walk, name, want) in cases {
            let buf = encode(EV_CREATE, 0, name, walk);
            let got = placement(fs_path).place(&decode(&buf).unwrap());
            assert_eq!(
                &got,
                want,
                "fs_path {fs_path} walk {walk:?} name {:?}",
                OsStr::from_bytes(name)
            );
        }
        let truncated = encode(EV_CREATE, F_TRUNCATED, b"f", &[b"a"]);
        assert_eq!(
            placement("/").place(&decode(&truncated).unwrap()),
            Placed::Lost
        );
    }

    #[test]
    fn absolute_names_map_through_our_mounts() {
        let p = placement("/data");
        let abs = |n: &[u8]| encode(EV_CREATE | EV_ISDIR, F_ABSOLUTE, n, &[]);
        let place = |n: &[u8]| p.place(&decode(&abs(n)).unwrap());
        assert_eq!(
            place(b"/mnt/src/data/a/b"),
            Placed::Inside(PathBuf::from("a/b"))
        );
        assert_eq!(
            place(b"/mnt/src/data/../data/a"),
            Placed::Inside(PathBuf::from("a"))
        );
        assert_eq!(place(b"/tmp/x"), Placed::Outside);
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape(r"/mnt/a\040b"), PathBuf::from("/mnt/a b"));
        assert_eq!(unescape(r"/x\134y"), PathBuf::from("/x\\y"));
        assert_eq!(unescape("/plain"), PathBuf::from("/plain"));
    }
}
