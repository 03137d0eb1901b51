//! The durable state of one target: its journal of pending paths, its index of what it holds,
//! and whether that index is complete.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use fjall::{Database, Keyspace};
use tracing::error;

use super::meta::{self, Meta};
use super::StateError;
use crate::queue::{Journal, JournalEntry, Op};

pub struct TargetState {
    pub(super) name: String,
    pub(super) dir: PathBuf,
    pub(super) db: Database,
    pub(super) index: Keyspace,
    pub(super) journal: Keyspace,
    pub(super) meta: Keyspace,
    pub(super) complete_key: String,
    pub(super) writes: std::sync::Arc<AtomicU64>,
    /// A write failed (logged once): the index may be behind, which only costs transfers.
    pub(super) failed: AtomicBool,
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

/// A journal key: `p` and the path (the root, `""`, is the key `p`: keys are never empty).
fn journal_key(path: &Path) -> Vec<u8> {
    let mut k = Vec::with_capacity(path.as_os_str().len() + 1);
    k.push(b'p');
    k.extend_from_slice(path.as_os_str().as_bytes());
    k
}

fn encode_op(key: &[u8], op: Op, is_dir: bool) -> [u8; 6] {
    let body = [
        match op {
            Op::Update => 0,
            Op::Delete => 1,
            Op::Tree => 2,
            Op::Shallow => 3,
        },
        u8::from(is_dir),
    ];
    let crc = meta::checksum(key, &body).to_le_bytes();
    [body[0], body[1], crc[0], crc[1], crc[2], crc[3]]
}

fn decode_op(key: &[u8], v: &[u8]) -> Option<(Op, bool)> {
    if v.len() != 6 || meta::checksum(key, &v[..2]).to_le_bytes() != v[2..] {
        return None;
    }
    let op = match v[0] {
        0 => Op::Update,
        1 => Op::Delete,
        2 => Op::Tree,
        3 => Op::Shallow,
        _ => return None,
    };
    Some((op, v[1] == 1))
}

impl TargetState {
    fn damaged(&self, why: impl std::fmt::Display) -> StateError {
        StateError::Damaged {
            dir: self.dir.clone(),
            why: format!("target {}: {why}", self.name),
        }
    }

    fn wrote(&self, r: fjall::Result<()>, n: usize) {
        match r {
            Ok(()) => {
                self.writes.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) => {
                if !self.failed.swap(true, Ordering::Relaxed) {
                    error!(target = %self.name, "cannot write the state in {} ({e}): replication goes on, and the next start compares more of the tree", self.dir.display());
                }
            }
        }
    }

    /// The paths pending when the state was last written, with their ops.
    pub fn pending(&self) -> Result<Vec<(PathBuf, Op, bool)>, StateError> {
        let mut out = Vec::new();
        for item in self.journal.iter() {
            let (k, v) = item.into_inner().map_err(|e| self.damaged(e))?;
            let (op, is_dir) = decode_op(&k, &v)
                .ok_or_else(|| self.damaged("a journal entry fails its checksum"))?;
            let path = k.get(1..).unwrap_or_default();
            out.push((PathBuf::from(std::ffi::OsStr::from_bytes(path)), op, is_dir));
        }
        Ok(out)
    }

    /// Whether the index describes the whole target (a full pass or walk completed).
    pub fn is_complete(&self) -> bool {
        matches!(self.meta.get(&self.complete_key), Ok(Some(v)) if *v == *b"1")
    }

    pub fn set_complete(&self, complete: bool) {
        let r = if complete {
            self.meta.insert(&self.complete_key, "1")
        } else {
            self.meta.remove(self.complete_key.as_str())
        };
        self.wrote(r, 1);
        // The mark that the index may be trusted is made durable at once.
        if complete {
            let _ = self.db.persist(fjall::PersistMode::SyncAll);
        }
    }

    /// Forgets the whole index (a full pass follows).
    pub fn clear_index(&self) -> Result<(), StateError> {
        self.set_complete(false);
        let mut batch = self.db.batch();
        let mut n = 0;
        for item in self.index.iter() {
            let k = item.key().map_err(|e| self.damaged(e))?;
            batch.remove(&self.index, k);
            n += 1;
            if n % 100_000 == 0 {
                self.wrote(
                    std::mem::replace(&mut batch, self.db.batch()).commit(),
                    100_000,
                );
            }
        }
        self.wrote(batch.commit(), n % 100_000);
        Ok(())
    }

    /// The immediate entries of `dir` in the index: names and metadata.
    pub fn children(&self, dir: &Path) -> Result<Vec<(Vec<u8>, Meta)>, StateError> {
        let mut out = Vec::new();
        for item in self.index.prefix(meta::children_prefix(dir)) {
            let (k, v) = item.into_inner().map_err(|e| self.damaged(e))?;
            let m = Meta::decode(&k, &v).ok_or_else(|| {
                self.damaged(format!(
                    "index entry {:?} fails its checksum",
                    meta::path_of(&k)
                ))
            })?;
            let name = meta::name_of(&k);
            if !name.is_empty() {
                out.push((name.to_vec(), m));
            }
        }
        Ok(out)
    }

    /// The index entry of one path.
    pub fn get(&self, path: &Path) -> Result<Option<Meta>, StateError> {
        let k = meta::key(path);
        match self.index.get(&k).map_err(|e| self.damaged(e))? {
            None => Ok(None),
            Some(v) => Meta::decode(&k, &v)
                .map(Some)
                .ok_or_else(|| self.damaged(format!("index entry {path:?} fails its checksum"))),
        }
    }

    /// Applies index updates in one atomic batch.
    pub fn apply(&self, updates: &[IndexUpdate]) {
        let mut batch = self.db.batch();
        let mut n = 0;
        for u in updates {
            match u {
                IndexUpdate::Put(p, m) => {
                    let k = meta::key(p);
                    let v = m.encode(&k);
                    batch.insert(&self.index, k, v);
                    n += 1;
                }
                IndexUpdate::Remove(p) => {
                    n += self.remove_into(&mut batch, p);
                }
                IndexUpdate::Children(dir, kids) => {
                    n += self.children_into(&mut batch, dir, kids);
                }
            }
        }
        self.wrote(batch.commit(), n);
    }

    /// Adds the removal of `path` and everything below it to `batch`.
    fn remove_into(&self, batch: &mut fjall::OwnedWriteBatch, path: &Path) -> usize {
        batch.remove(&self.index, meta::key(path));
        let mut n = 1;
        let mut prefixes = vec![meta::children_prefix(path)];
        prefixes.extend(meta::deeper_prefix(path));
        for prefix in prefixes {
            for item in self.index.prefix(prefix) {
                if let Ok(k) = item.key() {
                    batch.remove(&self.index, k);
                    n += 1;
                }
            }
        }
        n
    }

    /// Adds "the children of `dir` are exactly `kids`" to `batch`.
    fn children_into(
        &self,
        batch: &mut fjall::OwnedWriteBatch,
        dir: &Path,
        kids: &[(Vec<u8>, Meta)],
    ) -> usize {
        let mut n = 0;
        let present: std::collections::HashSet<&[u8]> =
            kids.iter().map(|(name, _)| name.as_slice()).collect();
        if let Ok(old) = self.children(dir) {
            for (name, m) in old {
                if !present.contains(name.as_slice()) {
                    let p = dir.join(std::ffi::OsStr::from_bytes(&name));
                    if m.is_dir() {
                        n += self.remove_into(batch, &p);
                    } else {
                        batch.remove(&self.index, meta::key(&p));
                        n += 1;
                    }
                }
            }
        }
        for (name, m) in kids {
            let p = dir.join(std::ffi::OsStr::from_bytes(name));
            let k = meta::key(&p);
            let v = m.encode(&k);
            batch.insert(&self.index, k, v);
            n += 1;
        }
        n
    }
}

impl Journal for TargetState {
    fn record(&self, entries: &[JournalEntry<'_>]) {
        let mut batch = self.db.batch();
        for (path, state) in entries {
            let k = journal_key(path);
            match state {
                Some((op, is_dir)) => {
                    let v = encode_op(&k, *op, *is_dir);
                    batch.insert(&self.journal, k, v)
                }
                None => batch.remove(&self.journal, k),
            }
        }
        self.wrote(batch.commit(), entries.len());
    }
}
