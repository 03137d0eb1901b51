//! What the index records of one entry, and how index keys are spelled.
//!
//! A [`Meta`] is taken from the source (`lstat`) *before* the transfer that copies the entry
//! starts, and written to the index once that transfer succeeded. It is therefore a
//! certificate: if the source still shows exactly this metadata, the target holds at least this
//! version (any change after the stat moved the ctime, which cannot go back). Values carry a
//! CRC-32 of key and value, so a damaged index is detected rather than trusted.
//!
//! Keys: `parent ++ 0x00 ++ name` (the root is the single byte `0x00`). A name never holds a NUL
//! byte, so a directory's immediate children are exactly the keys with the prefix
//! `dir ++ 0x00`, and its deeper descendants those with the prefix `dir ++ "/"`.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Kinds of entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Other,
}

/// The metadata of one entry as the index keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: (i64, u32),
    pub ctime: (i64, u32),
    pub ino: u64,
}

const LEN: usize = 1 + 4 + 4 + 4 + 8 + 12 + 12 + 8;

impl Meta {
    pub fn from_stat(st: &libc::stat) -> Meta {
        let kind = match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => Kind::File,
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            _ => Kind::Other,
        };
        Meta {
            kind,
            mode: st.st_mode,
            uid: st.st_uid,
            gid: st.st_gid,
            size: st.st_size as u64,
            mtime: (st.st_mtime, st.st_mtime_nsec as u32),
            ctime: (st.st_ctime, st.st_ctime_nsec as u32),
            ino: st.st_ino,
        }
    }

    pub fn from_metadata(m: &std::fs::Metadata) -> Meta {
        use std::os::unix::fs::MetadataExt;
        let t = m.file_type();
        let kind = if t.is_file() {
            Kind::File
        } else if t.is_dir() {
            Kind::Dir
        } else if t.is_symlink() {
            Kind::Symlink
        } else {
            Kind::Other
        };
        Meta {
            kind,
            mode: m.mode(),
            uid: m.uid(),
            gid: m.gid(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec() as u32),
            ctime: (m.ctime(), m.ctime_nsec() as u32),
            ino: m.ino(),
        }
    }

    pub fn is_dir(&self) -> bool {
        self.kind == Kind::Dir
    }

    /// The value stored under `key`: the fields, then a CRC-32 of key and fields.
    pub fn encode(&self, key: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(LEN + 4);
        v.push(match self.kind {
            Kind::File => 0,
            Kind::Dir => 1,
            Kind::Symlink => 2,
            Kind::Other => 3,
        });
        v.extend_from_slice(&self.mode.to_le_bytes());
        v.extend_from_slice(&self.uid.to_le_bytes());
        v.extend_from_slice(&self.gid.to_le_bytes());
        v.extend_from_slice(&self.size.to_le_bytes());
        v.extend_from_slice(&self.mtime.0.to_le_bytes());
        v.extend_from_slice(&self.mtime.1.to_le_bytes());
        v.extend_from_slice(&self.ctime.0.to_le_bytes());
        v.extend_from_slice(&self.ctime.1.to_le_bytes());
        v.extend_from_slice(&self.ino.to_le_bytes());
        let crc = checksum(key, &v);
        v.extend_from_slice(&crc.to_le_bytes());
        v
    }

    /// Decodes a value read under `key`; `None` when it is damaged.
    pub fn decode(key: &[u8], v: &[u8]) -> Option<Meta> {
        if v.len() != LEN + 4 {
            return None;
        }
        let (body, crc) = v.split_at(LEN);
        if checksum(key, body).to_le_bytes() != crc {
            return None;
        }
        let u32_at = |i: usize| u32::from_le_bytes(body[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(body[i..i + 8].try_into().expect("8 bytes"));
        let kind = match body[0] {
            0 => Kind::File,
            1 => Kind::Dir,
            2 => Kind::Symlink,
            3 => Kind::Other,
            _ => return None,
        };
        Some(Meta {
            kind,
            mode: u32_at(1),
            uid: u32_at(5),
            gid: u32_at(9),
            size: u64_at(13),
            mtime: (u64_at(21) as i64, u32_at(29)),
            ctime: (u64_at(33) as i64, u32_at(41)),
            ino: u64_at(45),
        })
    }
}

/// CRC-32 of a key and a value body.
pub fn checksum(key: &[u8], body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(key);
    h.update(body);
    h.finalize()
}

/// The index key of a relative path (the root is `""`).
pub fn key(path: &Path) -> Vec<u8> {
    let b = path.as_os_str().as_bytes();
    let (parent, name) = match b.iter().rposition(|&c| c == b'/') {
        Some(i) => (&b[..i], &b[i + 1..]),
        None => (&b[..0], b),
    };
    let mut k = Vec::with_capacity(b.len() + 1);
    k.extend_from_slice(parent);
    k.push(0);
    k.extend_from_slice(name);
    k
}

/// The key prefix of the immediate children of directory `dir`.
pub fn children_prefix(dir: &Path) -> Vec<u8> {
    let mut k = dir.as_os_str().as_bytes().to_vec();
    k.push(0);
    k
}

/// The key prefix of everything deeper than the children of `dir` (`dir/`); `None` for the
/// root, whose deeper descendants are every key not starting with `0x00`.
pub fn deeper_prefix(dir: &Path) -> Option<Vec<u8>> {
    let b = dir.as_os_str().as_bytes();
    if b.is_empty() {
        return None;
    }
    let mut k = b.to_vec();
    k.push(b'/');
    Some(k)
}

/// The relative path of an index key.
pub fn path_of(key: &[u8]) -> std::path::PathBuf {
    use std::ffi::OsStr;
    let i = key.iter().position(|&c| c == 0).unwrap_or(key.len());
    let (parent, name) = (&key[..i], key.get(i + 1..).unwrap_or_default());
    let mut p = std::path::PathBuf::from(OsStr::from_bytes(parent));
    if !name.is_empty() {
        p.push(OsStr::from_bytes(name));
    }
    p
}

/// The name part of a child key (after the parent's `0x00`).
pub fn name_of(key: &[u8]) -> &[u8] {
    match key.iter().position(|&c| c == 0) {
        Some(i) => &key[i + 1..],
        None => key,
    }
}

/// One change to the index, applied when the transfer it describes succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexUpdate {
    /// The entry is on the target as of this metadata.
    Put(PathBuf, Meta),
    /// The entry (and, if it was a directory, everything below it) is gone from the target.
    Remove(PathBuf),
    /// A directory's immediate entries on the target are exactly these (names, metadata);
    /// entries no longer there are removed with what was below them.
    Children(PathBuf, Vec<(Vec<u8>, Meta)>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn meta() -> Meta {
        Meta {
            kind: Kind::File,
            mode: 0o100644,
            uid: 1,
            gid: 2,
            size: 1234,
            mtime: (1_700_000_000, 123),
            ctime: (1_700_000_001, 456),
            ino: 99,
        }
    }

    #[test]
    fn round_trip_and_damage() {
        let k = key(Path::new("a/b"));
        let v = meta().encode(&k);
        assert_eq!(Meta::decode(&k, &v), Some(meta()));
        assert_eq!(
            Meta::decode(&key(Path::new("a/c")), &v),
            None,
            "another key's value"
        );
        for i in 0..v.len() {
            let mut bad = v.clone();
            bad[i] ^= 0x40;
            assert_eq!(
                Meta::decode(&k, &bad),
                None,
                "a flipped byte at {i} went unnoticed"
            );
        }
        assert_eq!(Meta::decode(&k, &v[..v.len() - 1]), None, "a torn value");
    }

    #[test]
    fn keys_group_children() {
        #[rustfmt::skip]
        let table: &[(&str, &[u8])] = &[
            ("", b"\0"),
            ("top", b"\0top"),
            ("a/b", b"a\0b"),
            ("a/b/c", b"a/b\0c"),
        ];
        for (p, k) in table {
            assert_eq!(key(Path::new(p)), *k, "{p}");
            assert_eq!(path_of(k), PathBuf::from(p), "{p}");
        }
        let under_a = children_prefix(Path::new("a"));
        assert!(key(Path::new("a/b")).starts_with(&under_a));
        assert!(
            !key(Path::new("a/b/c")).starts_with(&under_a),
            "a grandchild is not a child"
        );
        assert!(!key(Path::new("ab/c")).starts_with(&under_a));
        assert!(key(Path::new("a/b/c")).starts_with(&deeper_prefix(Path::new("a")).unwrap()));
        assert!(key(Path::new("top")).starts_with(&children_prefix(Path::new(""))));
        assert_eq!(name_of(&key(Path::new("a/b"))), b"b");
    }
}
