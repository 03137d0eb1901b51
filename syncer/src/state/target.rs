//! The durable state of one target: its journal of pending paths, its index of what it holds,
//! and whether that index is complete.

use fjall::Keyspace;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::meta::{self, IndexUpdate, Meta};
use super::writer::{SharedLog, Write, Writer};
use super::StateError;
use crate::queue::{Journal, JournalEntry, Op};

/// One insert (`Some` value) or removal for the writer.
pub(super) type Item = (Keyspace, Vec<u8>, Option<Vec<u8>>);

pub struct TargetState {
    pub(super) name: String,
    pub(super) dir: PathBuf,
    pub(super) index: Keyspace,
    pub(super) journal: SharedLog,
    pub(super) failures: Keyspace,
    pub(super) meta: Keyspace,
    pub(super) complete_key: String,
    /// Where the unfinished pass's covered prefix is kept ([`TargetState::pass_covered`]).
    pub(super) covered_key: String,
    /// Where a walk that started and has not ended is noted ([`TargetState::walk_owed`]).
    pub(super) owed_key: String,
    /// Where an operator's pause is kept ([`TargetState::paused`]).
    pub(super) paused_key: String,
    pub(super) tag: String,
    pub(super) writer: Writer,
    /// Hard-linked names the walks met, until the dispatcher takes them (see
    /// [`TargetState::note_links`]).
    pub(super) linked: std::sync::Mutex<Vec<NotedLink>>,
}

/// The value of a target's pause key.
const PAUSED: &[u8] = b"paused";

/// A hard-linked name a walk met: path, metadata, and whether a transfer that succeeds sends it
/// as it was read (so that its other names must follow).
pub type NotedLink = (PathBuf, Meta, bool);

/// Most hard-linked names kept for the dispatcher; past it new ones are dropped (costing only
/// pairs missed until the catch-up walk).
const LINKED_MAX: usize = 1 << 20;

/// A path that keeps failing on this target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub path: PathBuf,
    pub attempts: u32,
    /// Seconds since the epoch.
    pub first: u64,
    pub last: u64,
    pub reason: String,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A failing path's key: `p` and the path (the root, `""`, is the key `p`: keys are never
/// empty).
fn failure_key(path: &Path) -> Vec<u8> {
    let mut k = Vec::with_capacity(path.as_os_str().len() + 1);
    k.push(b'p');
    k.extend_from_slice(path.as_os_str().as_bytes());
    k
}

impl TargetState {
    /// What this state's transfers carry in [`super::ORPHAN_TAG`].
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The target's name (as configured).
    pub fn name(&self) -> &str {
        &self.name
    }

    fn damaged(&self, why: impl std::fmt::Display) -> StateError {
        StateError::Damaged {
            dir: self.dir.clone(),
            why: format!("target {}: {why}", self.name),
        }
    }

    pub(super) fn send(&self, items: Vec<Item>) {
        if !items.is_empty() {
            self.writer.send(Write::Batch(items));
        }
    }

    /// Hard-linked names (path, inode) that a walk of the source met: the dispatcher takes
    /// them ([`TargetState::take_links`]) when a file with several links changes, so that a
    /// name in another directory, or renamed there with its directory, is known without a walk
    /// of its own.
    ///
    /// `sent`: the names are read for a transfer of what changed (a live subtree transfer,
    /// whose covered entries the map dropped): if their inode changed since its names were last
    /// queued, the other names are queued too. The catch-up walk's names are not (it compares
    /// each name itself).
    pub fn note_links(&self, names: super::stat::Linked, sent: bool) {
        if names.is_empty() {
            return;
        }
        let mut l = self.linked.lock().unwrap_or_else(|e| e.into_inner());
        let room = LINKED_MAX.saturating_sub(l.len());
        l.extend(names.into_iter().take(room).map(|(p, m)| (p, m, sent)));
    }

    /// The names noted since the last call.
    pub fn take_links(&self) -> Vec<NotedLink> {
        std::mem::take(&mut *self.linked.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Waits until everything written so far is durable.
    pub fn flush(&self) {
        self.writer.flush();
    }

    /// The paths pending when the state was last written, with their ops (the journal is
    /// rewritten with just these). A torn tail (a kill or a power loss inside the last write)
    /// is cut off, with a warning: what it held changed after the index's certificates, and
    /// the start's walk finds it. A damaged journal is set aside: an error.
    pub fn pending(&self) -> Result<Vec<(PathBuf, Op, bool)>, StateError> {
        let read = super::writer::lock(&self.journal).read_pending();
        match read {
            Ok((pending, torn)) => {
                if let Some(bytes) = torn {
                    tracing::warn!(target = self.name, bytes, "the journal's last write was cut short (a crash during it); the walk against the index finds what it held");
                }
                Ok(pending)
            }
            Err((e, aside)) => {
                Err(self.damaged(format!("{e} (the journal is kept in {})", aside.display())))
            }
        }
    }

    /// Whether the index describes the whole target (a full pass or walk completed).
    pub fn is_complete(&self) -> bool {
        matches!(self.meta.get(&self.complete_key), Ok(Some(v)) if *v == *b"1")
    }

    /// Marks the index complete (or not), durably: after everything written before it. A
    /// complete index has no unfinished pass.
    pub fn set_complete(&self, complete: bool) {
        let v = complete.then(|| b"1".to_vec());
        let mut w = vec![(self.meta.clone(), self.complete_key.as_bytes().to_vec(), v)];
        if complete {
            w.push((
                self.meta.clone(),
                self.covered_key.as_bytes().to_vec(),
                None,
            ));
        }
        self.send(w);
        self.flush();
    }

    /// How far an unfinished pass over the whole tree got: every directory up to this path
    /// (in the walk's order, see [`crate::queue::pass`]) went through a successful piece and
    /// its index entries were written before it. `None` when no pass was cut short, or the
    /// value fails its checksum (then the pass starts over).
    pub fn pass_covered(&self) -> Option<PathBuf> {
        let v = self.meta.get(&self.covered_key).ok()??;
        let (path, sum) = v.split_at_checked(v.len().checked_sub(4)?)?;
        (crc32fast::hash(path).to_le_bytes() == sum)
            .then(|| PathBuf::from(std::ffi::OsStr::from_bytes(path)))
    }

    /// Records how far the pass got (written after the index updates of its pieces, by the
    /// same writer: a crash keeps a prefix), or forgets it (`None`: a pass starting over).
    pub fn set_pass_covered(&self, upto: Option<&Path>) {
        let v = upto.map(|p| {
            let mut v = p.as_os_str().as_bytes().to_vec();
            v.extend_from_slice(&crc32fast::hash(&v).to_le_bytes());
            v
        });
        // What the journal held when the pieces went is part of what this point says.
        self.writer.send(Write::Barrier(vec![(
            self.meta.clone(),
            self.covered_key.as_bytes().to_vec(),
            v,
        )]));
    }

    /// A walk of the source (the catch-up walk, or the walk ahead of a pass) that started and
    /// did not end: the ctime it looked back to (`(0, 0)` for a value that fails its
    /// checksum). A start owes it again, even when no event was lost since (see
    /// [`crate::state::cursor`]): what that walk had not reached yet was never queued.
    pub fn walk_owed(&self) -> Option<(i64, u32)> {
        let v = self.meta.get(&self.owed_key).ok()??;
        let ok = v.len() == 16 && crc32fast::hash(&v[..12]).to_le_bytes() == v[12..];
        if !ok {
            return Some((0, 0));
        }
        let secs = i64::from_le_bytes(v[..8].try_into().ok()?);
        let nanos = u32::from_le_bytes(v[8..12].try_into().ok()?);
        Some((secs, nanos))
    }

    /// Notes that a walk looking back to `since` starts (`Some`), written before anything the
    /// writer takes after it (a heartbeat included); or that it ended, after what it queued
    /// (`None`).
    pub fn set_walk_owed(&self, since: Option<(i64, u32)>) {
        let v = since.map(|(secs, nanos)| {
            let mut v = secs.to_le_bytes().to_vec();
            v.extend_from_slice(&nanos.to_le_bytes());
            let sum = crc32fast::hash(&v).to_le_bytes();
            v.extend_from_slice(&sum);
            v
        });
        let w = vec![(self.meta.clone(), self.owed_key.as_bytes().to_vec(), v)];
        // A walk that ended says its entries are in the journal: after they are, durably.
        self.writer.send(match since {
            Some(_) => Write::Batch(w),
            None => Write::Barrier(w),
        });
    }

    /// Whether the operator paused this target (`syncer pause`) and has not resumed it: a
    /// pause outlives restarts, as an operator who paused a target for maintenance expects.
    pub fn paused(&self) -> bool {
        matches!(self.meta.get(&self.paused_key), Ok(Some(v)) if &*v == PAUSED)
    }

    /// Records a pause or a resume, durably before it returns.
    pub fn set_paused(&self, paused: bool) {
        self.send(vec![(
            self.meta.clone(),
            self.paused_key.as_bytes().to_vec(),
            paused.then(|| PAUSED.to_vec()),
        )]);
        self.flush();
    }

    /// Forgets the whole index (a full pass follows).
    pub fn clear_index(&self) -> Result<(), StateError> {
        self.set_complete(false);
        self.set_pass_covered(None);
        let mut items = Vec::new();
        for item in self.index.iter() {
            let k = item.key().map_err(|e| self.damaged(e))?;
            items.push((self.index.clone(), k.to_vec(), None));
            if items.len() == 100_000 {
                self.send(std::mem::take(&mut items));
            }
        }
        self.send(items);
        self.flush();
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

    /// Applies index updates (one batch for the writer). Reads what it replaces from the
    /// index as it is now: callers apply the updates of one subtree in order.
    pub fn apply(&self, updates: &[IndexUpdate]) {
        let mut items = Vec::new();
        for u in updates {
            match u {
                IndexUpdate::Put(p, m) => {
                    let k = meta::key(p);
                    let v = m.encode(&k);
                    items.push((self.index.clone(), k, Some(v)));
                }
                IndexUpdate::Remove(p) => self.remove_into(&mut items, p),
                IndexUpdate::Children(dir, kids) => self.children_into(&mut items, dir, kids),
            }
        }
        self.send(items);
    }

    /// Adds the removal of `path` and everything below it. An entry the index holds as a
    /// non-directory has nothing below it: no scan (most removals are of files).
    pub(super) fn remove_into(&self, items: &mut Vec<Item>, path: &Path) {
        items.push((self.index.clone(), meta::key(path), None));
        if matches!(self.get(path), Ok(Some(m)) if !m.is_dir()) {
            return;
        }
        self.below_into(items, path);
    }

    /// Adds the removal of everything below `path` (not `path` itself).
    fn below_into(&self, items: &mut Vec<Item>, path: &Path) {
        let mut prefixes = vec![meta::children_prefix(path)];
        prefixes.extend(meta::deeper_prefix(path));
        for prefix in prefixes {
            for item in self.index.prefix(prefix) {
                if let Ok(k) = item.key() {
                    items.push((self.index.clone(), k.to_vec(), None));
                }
            }
        }
    }

    /// Adds "the children of `dir` are exactly `kids`": the entries that went away are
    /// removed (with their subtrees), and only the entries that differ from the index are
    /// written (a shallow transfer after one file changed in a directory of thousands writes
    /// one entry, not thousands).
    pub(super) fn children_into(
        &self,
        items: &mut Vec<Item>,
        dir: &Path,
        kids: &[(Vec<u8>, Meta)],
    ) {
        let present: std::collections::HashMap<&[u8], &Meta> =
            kids.iter().map(|(name, m)| (name.as_slice(), m)).collect();
        let mut known = std::collections::HashMap::new();
        match self.children(dir) {
            Ok(old) => {
                for (name, m) in old {
                    let p = dir.join(std::ffi::OsStr::from_bytes(&name));
                    match present.get(name.as_slice()) {
                        None if m.is_dir() => self.remove_into(items, &p),
                        None => items.push((self.index.clone(), meta::key(&p), None)),
                        // A directory replaced by something else: what was below it goes.
                        Some(new) if m.is_dir() && !new.is_dir() => self.below_into(items, &p),
                        Some(_) => {}
                    }
                    known.insert(name, m);
                }
            }
            Err(_) => known.clear(),
        }
        for (name, m) in kids {
            if known.get(name) == Some(m) {
                continue;
            }
            let p = dir.join(std::ffi::OsStr::from_bytes(name));
            let k = meta::key(&p);
            let v = m.encode(&k);
            items.push((self.index.clone(), k, Some(v)));
        }
    }
}

impl TargetState {
    /// Records that `path` failed again (alone in its batch), with rsync's reason.
    pub fn failed(&self, path: &Path, attempts: u32, reason: &str) {
        let k = failure_key(path);
        let first = self
            .failures
            .get(&k)
            .ok()
            .flatten()
            .and_then(|v| {
                String::from_utf8_lossy(&v)
                    .split('\n')
                    .nth(1)
                    .and_then(|f| f.parse().ok())
            })
            .unwrap_or_else(unix_now);
        let v = format!("{attempts}\n{first}\n{}\n{reason}", unix_now());
        self.send(vec![(self.failures.clone(), k, Some(v.into_bytes()))]);
    }

    /// `path` went through: no longer failing.
    pub fn recovered(&self, path: &Path) {
        self.send(vec![(self.failures.clone(), failure_key(path), None)]);
    }

    /// The paths failing now, with their reasons.
    pub fn failures(&self) -> Vec<Failure> {
        self.failures
            .iter()
            .filter_map(|item| {
                let (k, v) = item.into_inner().ok()?;
                let text = String::from_utf8_lossy(&v).into_owned();
                let mut it = text.splitn(4, '\n');
                Some(Failure {
                    path: PathBuf::from(std::ffi::OsStr::from_bytes(k.get(1..)?)),
                    attempts: it.next()?.parse().ok()?,
                    first: it.next()?.parse().ok()?,
                    last: it.next()?.parse().ok()?,
                    reason: it.next().unwrap_or_default().to_string(),
                })
            })
            .collect()
    }
}

impl Journal for TargetState {
    fn record(&self, entries: &[JournalEntry<'_>]) {
        if entries.is_empty() {
            return;
        }
        let mut records = Vec::with_capacity(entries.len() * 48);
        for (path, state) in entries {
            super::journal::encode(&mut records, path, *state);
        }
        self.writer
            .send(Write::Journal(self.journal.clone(), records));
    }
}
