//! Durable state: what survives a restart, a crash or a power loss.
//!
//! One state directory per source (`--state-dir`, default `/var/lib/syncer`), locked by the
//! running syncer, holding one fjall database (an LSM store with a write-ahead journal,
//! atomic batches and range scans) and, per target, a log file ([`journal`]):
//! - the **journal** of pending paths (`queue::Journal`, in its log): written as the map takes
//!   changes in, marked gone when a transfer covering the path succeeded;
//! - the **index**: what the target is known to hold, one [`meta::Meta`] per entry, taken from
//!   the source before the transfer that copied it and written when that transfer succeeded;
//! - whether the index is **complete** (a full pass or a catch-up walk ended since it was
//!   started), and failures.
//!
//! Writes go to one writer thread (sending never blocks: the source's reader thread must not
//! wait on the store; it writes only the spool of [`cursor`]), which writes them to the store in batches gathered over 10 ms, and makes
//! them durable (fdatasync) every [`writer::SYNC_EVERY`] while there are writes: a kill -9 loses what
//! the writer had not yet written (milliseconds of changes), a power loss what was not yet
//! synced; both are found again by the next start's walk against the index (see
//! ARCHITECTURE.md). A value that fails
//! its checksum, or a database that cannot be opened, is never trusted: the state is set aside
//! and rebuilt by a full pass.

pub mod catchup;
pub mod cursor;
mod journal;
mod lock;
pub mod meta;
pub mod stat;
mod target;
mod writer;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use std::os::unix::ffi::OsStrExt;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use tracing::warn;

pub use self::lock::{kill_orphans, ORPHAN_TAG};
pub use self::meta::IndexUpdate;
pub use self::target::{Failure, TargetState};
use self::writer::{Write, Writer};
use crate::change::ReadMarks;

/// The identity record's version; a state written by another layout is not read.
const SCHEMA: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot use the state directory {dir}: {source}")]
    Io {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("the state directory {dir} is in use by another syncer (pid in {dir}/lock: {holder}); give each syncer its own --state-dir")]
    Locked { dir: PathBuf, holder: String },
    #[error("the state directory {dir} belongs to source {recorded}, not to {source_dir}; give this source its own --state-dir, or pass --full-resync to start this one over")]
    OtherSource {
        dir: PathBuf,
        recorded: String,
        source_dir: String,
    },
    #[error("the state in {dir} is damaged: {why}")]
    Damaged { dir: PathBuf, why: String },
}

/// The open state of one source.
pub struct State {
    dir: PathBuf,
    db: Database,
    meta: Keyspace,
    writer: Writer,
    /// When the previous syncer on this state was last alive (its heartbeat), if one was.
    last_alive: Option<std::time::SystemTime>,
    cursor: Arc<cursor::Cursor>,
    /// What the previous syncer's reader left in the cursor.
    previous_marks: Option<cursor::Marks>,
    followed: std::sync::Mutex<Option<u64>>,
    /// The targets' journals, by target id.
    logs: std::sync::Mutex<std::collections::HashMap<String, writer::SharedLog>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _lock: File,
}

/// What identifies a source: its path and its filesystem's id (so that a directory replaced by
/// another filesystem, or restored from elsewhere, does not inherit an index).
fn identity(source: &Path) -> std::io::Result<String> {
    let st = nix::sys::statfs::statfs(source).map_err(std::io::Error::from)?;
    // SAFETY: fsid_t is `struct { int __val[2]; }` (its fields are private in the libc crate).
    let fsid: [i32; 2] = unsafe { std::mem::transmute(st.filesystem_id()) };
    Ok(format!(
        "schema={SCHEMA} source={} fsid={:08x}{:08x}",
        source.display(),
        fsid[0],
        fsid[1]
    ))
}

impl State {
    /// Opens (creating if needed) the state of `source` in `dir`. `fresh`: start over
    /// (`--full-resync`), discarding what is there. Its heartbeat is the wall clock.
    pub fn open(dir: &Path, source: &Path, fresh: bool) -> Result<State, StateError> {
        State::open_following(dir, source, fresh, None)
    }

    /// [`State::open`], with the heartbeat following `clock` from its first beat on: until
    /// when that clock's source had read every record the kernel queued (see
    /// [`crate::source::SourceConfig::caught_up`]), not merely that this process lived. What
    /// a start after a crash walks for, and what a resumed pass relies on, is what no source
    /// saw: a source not yet reading, behind, or stopped before the drain is not credited.
    pub fn open_following(
        dir: &Path,
        source: &Path,
        fresh: bool,
        clock: Option<Arc<crate::change::WatchClock>>,
    ) -> Result<State, StateError> {
        let io = |source| StateError::Io {
            dir: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let lock = lock::lock(dir)?;
        let id = identity(source).map_err(io)?;
        let db_dir = dir.join("db");
        let journals = dir.join(JOURNALS);
        if fresh && db_dir.exists() {
            std::fs::remove_dir_all(&db_dir).map_err(io)?;
        }
        if fresh && journals.exists() {
            std::fs::remove_dir_all(&journals).map_err(io)?;
        }
        std::fs::create_dir_all(&journals).map_err(io)?;
        let db = open_db(&db_dir, dir)?;
        let meta = keyspace(&db, "meta", dir)?;
        match meta.get("identity") {
            Ok(Some(v)) if *v == *id.as_bytes() => {}
            Ok(Some(v)) => {
                let recorded = String::from_utf8_lossy(&v).into_owned();
                return Err(StateError::OtherSource {
                    dir: dir.to_path_buf(),
                    recorded,
                    source_dir: id,
                });
            }
            Ok(None) => meta
                .insert("identity", id.as_bytes())
                .map_err(|e| damaged(dir, e))?,
            Err(e) => return Err(damaged(dir, e)),
        }
        let last_alive = match meta.get(writer::ALIVE_KEY) {
            Ok(Some(v)) => writer::alive_time(&v),
            _ => None,
        };
        let (cursor, previous_marks) = cursor::Cursor::open(dir).map_err(io)?;
        let cursor = Arc::new(cursor);
        let writer = Writer::new();
        if let Some(c) = clock {
            writer.follow(c);
        }
        let failed = Arc::new(AtomicBool::new(false));
        let thread = {
            let (db, meta, failed, dir, w, cursor) = (
                db.clone(),
                meta.clone(),
                failed.clone(),
                dir.to_path_buf(),
                writer.clone(),
                cursor.clone(),
            );
            std::thread::Builder::new()
                .name("state-writer".into())
                .spawn(move || writer::write_loop(&db, &meta, &w, &failed, &dir, &cursor))
                .map_err(io)?
        };
        Ok(State {
            dir: dir.to_path_buf(),
            db,
            meta,
            writer,
            last_alive,
            cursor,
            previous_marks,
            followed: Default::default(),
            logs: Default::default(),
            thread: Some(thread),
            _lock: lock,
        })
    }

    /// Moves a damaged state aside (kept for inspection) so that a fresh one can be opened.
    pub fn set_aside(dir: &Path) -> std::io::Result<PathBuf> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let aside = dir.join(format!("db.damaged-{stamp}"));
        std::fs::rename(dir.join("db"), &aside)?;
        // The journals go with it: a full pass covers whatever they held.
        if dir.join(JOURNALS).exists() {
            std::fs::rename(dir.join(JOURNALS), aside.join(JOURNALS))?;
        }
        Ok(aside)
    }

    /// The state of one target (its keyspaces are made on first use).
    pub fn target(&self, name: &str) -> Result<Arc<TargetState>, StateError> {
        let id = format!("{:08x}", crc32fast::hash(name.as_bytes()));
        let ks = |kind: &str| keyspace(&self.db, &format!("{kind}-{id}"), &self.dir);
        let log = self.journal(&id)?;
        Ok(Arc::new(TargetState {
            name: name.to_string(),
            dir: self.dir.clone(),
            index: ks("index")?,
            journal: log,
            failures: ks("failures")?,
            meta: self.meta.clone(),
            complete_key: format!("complete-{id}"),
            covered_key: format!("covered-{id}"),
            owed_key: format!("owed-{id}"),
            paused_key: format!("paused-{id}"),
            tag: self.dir.display().to_string(),
            writer: self.writer.clone(),
            linked: Default::default(),
        }))
    }

    /// Target `id`'s journal: one per target for the process (a reload that replaces a
    /// target's state shares it with the map that still journals into it).
    fn journal(&self, id: &str) -> Result<writer::SharedLog, StateError> {
        let mut logs = self
            .logs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(log) = logs.get(id) {
            return Ok(log.clone());
        }
        let log = journal::Log::open(&self.dir.join(JOURNALS).join(format!("{id}.log"))).map_err(
            |source| StateError::Io {
                dir: self.dir.clone(),
                source,
            },
        )?;
        let log = Arc::new(std::sync::Mutex::new(log));
        self.adopt_old_journal(id, &log)?;
        logs.insert(id.to_string(), log.clone());
        Ok(log)
    }

    /// A state written before the journals were logs kept them in a keyspace (`journal-<id>`,
    /// path → op, kind and CRC): its entries move into the log, durably, and the keyspace goes.
    fn adopt_old_journal(&self, id: &str, log: &writer::SharedLog) -> Result<(), StateError> {
        let name = format!("journal-{id}");
        if !self.db.keyspace_exists(&name) {
            return Ok(());
        }
        let old = keyspace(&self.db, &name, &self.dir)?;
        let mut records = Vec::new();
        for item in old.iter() {
            let (k, v) = item.into_inner().map_err(|e| damaged(&self.dir, e))?;
            let body = v
                .get(..2)
                .filter(|b| v.len() == 6 && meta::checksum(&k, b).to_le_bytes() == v[2..]);
            let Some(op) = body.and_then(|b| journal::op_of(b[0])) else {
                return Err(damaged(&self.dir, "a journal entry fails its checksum"));
            };
            let path = std::ffi::OsStr::from_bytes(k.get(1..).unwrap_or_default());
            let is_dir = v[1] == 1;
            journal::encode(&mut records, Path::new(path), Some((op, is_dir)));
        }
        let mut l = writer::lock(log);
        let io = |source| StateError::Io {
            dir: self.dir.clone(),
            source,
        };
        l.append(&records).map_err(io)?;
        l.sync().map_err(io)?;
        drop(l);
        self.db
            .delete_keyspace(old)
            .map_err(|e| damaged(&self.dir, e))
    }

    /// Waits until everything written so far is durable.
    pub fn flush(&self) {
        self.writer.flush();
    }

    /// When the previous syncer on this state was last alive (its heartbeat: at most about a
    /// second old while it was writing, two when idle); `None` on a fresh state.
    pub fn last_alive(&self) -> Option<std::time::SystemTime> {
        self.last_alive
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The kernel queue this syncer follows ([`State::follow_group`]), if any.
    pub fn followed_group(&self) -> Option<u64> {
        *self
            .followed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What the previous syncer's reader left in the cursor ([`cursor`]).
    pub fn previous_marks(&self) -> Option<cursor::Marks> {
        self.previous_marks
    }

    /// This syncer's reader reads kernel queue `group` (before the reader starts): its marks,
    /// for the reader, confirmed by the writer as the journal takes what was read. When the
    /// predecessor followed the same group and kept every read it began, its spool is
    /// continued and what it had not journaled is given back ([`ReadMarks::unjournaled`]);
    /// otherwise cursor and spool start over.
    pub fn follow_group(&self, group: u64) -> Result<Arc<dyn ReadMarks>, StateError> {
        let go_on = self.previous_marks.filter(|m| m.seamless(group));
        let (spool, kept) = cursor::Spool::open(&self.dir, go_on.map(|m| (m.journaled, m.saved)))
            .map_err(|source| StateError::Io {
            dir: self.dir.clone(),
            source,
        })?;
        let n = match go_on {
            Some(m) => {
                self.cursor.reading(m.saved);
                m.saved
            }
            None => {
                self.cursor.start(group);
                0
            }
        };
        *self
            .followed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(group);
        Ok(Arc::new(Marks {
            cursor: self.cursor.clone(),
            writer: self.writer.clone(),
            spool: std::sync::Mutex::new(spool),
            n: AtomicU64::new(n),
            took: AtomicBool::new(false),
            replayed: AtomicBool::new(false),
            kept: std::sync::Mutex::new(kept),
            failed: AtomicBool::new(false),
            dir: self.dir.clone(),
        }))
    }
}

/// The reader's side of the cursor and the spool (used from the reader thread only).
struct Marks {
    cursor: Arc<cursor::Cursor>,
    writer: Writer,
    spool: std::sync::Mutex<cursor::Spool>,
    /// The last read kept (or handed).
    n: AtomicU64,
    /// The read begun took records.
    took: AtomicBool,
    /// The predecessor's unjournaled reads were given back and not yet handed.
    replayed: AtomicBool,
    kept: std::sync::Mutex<Vec<Vec<u8>>>,
    /// The spool could not be written: nothing is marked kept any more.
    failed: AtomicBool,
    dir: PathBuf,
}

impl ReadMarks for Marks {
    fn unjournaled(&self) -> Vec<Vec<u8>> {
        let kept = std::mem::take(
            &mut *self
                .kept
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        self.replayed.store(!kept.is_empty(), Ordering::Relaxed);
        kept
    }

    fn reading(&self) {
        self.took.store(false, Ordering::Relaxed);
        self.cursor.reading(self.n.load(Ordering::Relaxed) + 1);
    }

    fn raw(&self, bytes: &[u8]) {
        self.took.store(true, Ordering::Relaxed);
        if self.failed.load(Ordering::Relaxed) {
            return;
        }
        let last = self.n.load(Ordering::Relaxed);
        let mut spool = self
            .spool
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match spool.append(last + 1, bytes, self.cursor.journaled_now(), last) {
            Ok(()) => self.cursor.saved(last + 1),
            Err(e) => {
                self.failed.store(true, Ordering::Relaxed);
                warn!("cannot write the reader's spool in {} ({e}): a restart walks the tree for what changed", self.dir.display());
            }
        }
    }

    fn handed(&self) {
        if self.took.swap(false, Ordering::Relaxed) {
            let n = self.n.fetch_add(1, Ordering::Relaxed) + 1;
            self.writer.send(Write::Cursor(n));
        } else if self.replayed.swap(false, Ordering::Relaxed) {
            self.writer
                .send(Write::Cursor(self.n.load(Ordering::Relaxed)));
        } else {
            self.cursor.reading(self.n.load(Ordering::Relaxed));
        }
    }
}

impl Drop for State {
    fn drop(&mut self) {
        // Everything sent before is written and synced; the store is closed before the lock
        // is released, so the next syncer never meets this one's writer.
        self.writer.send(Write::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Err(e) = self.db.persist(PersistMode::SyncAll) {
            warn!("the state could not be synced at exit: {e}");
        }
    }
}

fn damaged(dir: &Path, e: impl std::fmt::Display) -> StateError {
    StateError::Damaged {
        dir: dir.to_path_buf(),
        why: e.to_string(),
    }
}

fn open_db(db_dir: &Path, dir: &Path) -> Result<Database, StateError> {
    // A panic inside the store on a damaged file is a damaged state too, not a crash.
    let opened = std::panic::catch_unwind(|| Database::builder(db_dir).open());
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e)) => Err(damaged(dir, e)),
        Err(_) => Err(damaged(dir, "the store panicked while opening it")),
    }
}

fn keyspace(db: &Database, name: &str, dir: &Path) -> Result<Keyspace, StateError> {
    db.keyspace(name, KeyspaceCreateOptions::default)
        .map_err(|e| damaged(dir, e))
}

/// The directory of the targets' journals, in the state directory.
const JOURNALS: &str = "journal";

#[cfg(test)]
mod tests {
    use super::meta::IndexUpdate;
    use super::meta::{Kind, Meta};
    use super::*;
    use crate::queue::{Journal, Op};

    fn file(ino: u64) -> Meta {
        Meta {
            kind: Kind::File,
            mode: 0o100644,
            uid: 0,
            gid: 0,
            size: ino * 10,
            mtime: (1, 2),
            ctime: (3, 4),
            ino,
        }
    }

    fn dir_meta(ino: u64) -> Meta {
        Meta {
            kind: Kind::Dir,
            mode: 0o40755,
            ..file(ino)
        }
    }

    fn names(v: &[(Vec<u8>, Meta)]) -> Vec<String> {
        let mut n: Vec<String> = v
            .iter()
            .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
            .collect();
        n.sort();
        n
    }

    #[test]
    fn index_updates_write_only_what_differs() {
        let t = tempfile::tempdir().unwrap();
        let src = tempfile::tempdir().unwrap();
        let s = State::open(t.path(), src.path(), true).unwrap();
        let ts = s.target("x").unwrap();
        ts.apply(&[
            IndexUpdate::Children(
                "a".into(),
                vec![(b"f".to_vec(), file(2)), (b"sub".to_vec(), dir_meta(3))],
            ),
            IndexUpdate::Put("a/sub/x".into(), file(4)),
            IndexUpdate::Put("a/sub/deep/y".into(), file(5)),
        ]);
        s.flush();
        // What one update would write: "+path" puts, "-path" removals.
        let shown = |items: Vec<target::Item>| -> Vec<String> {
            let mut v: Vec<String> = items
                .iter()
                .map(|(_, k, v)| {
                    let k = String::from_utf8_lossy(k).replace('\0', "/");
                    let k = k.trim_start_matches('/').to_string();
                    format!("{}{k}", if v.is_some() { "+" } else { "-" })
                })
                .collect();
            v.sort();
            v
        };
        type Kids = Vec<(Vec<u8>, Meta)>;
        let kids = |v: &[(&str, Meta)]| -> Kids {
            v.iter().map(|(n, m)| (n.as_bytes().to_vec(), *m)).collect()
        };
        #[rustfmt::skip]
        let children: &[(&str, Kids, &[&str])] = &[
            ("nothing changed", kids(&[("f", file(2)), ("sub", dir_meta(3))]), &[]),
            ("one file changed", kids(&[("f", file(9)), ("sub", dir_meta(3))]), &["+a/f"]),
            ("a new file", kids(&[("f", file(2)), ("g", file(6)), ("sub", dir_meta(3))]), &["+a/g"]),
            ("a directory gone", kids(&[("f", file(2))]), &["-a/sub", "-a/sub/deep/y", "-a/sub/x"]),
            ("a directory replaced by a file", kids(&[("f", file(2)), ("sub", file(7))]),
                &["+a/sub", "-a/sub/deep/y", "-a/sub/x"]),
        ];
        for (name, kids, want) in children {
            let mut items = Vec::new();
            ts.children_into(&mut items, Path::new("a"), kids);
            assert_eq!(shown(items), *want, "{name}");
        }
        #[rustfmt::skip]
        let removals: &[(&str, &str, &[&str])] = &[
            ("a file: no scan", "a/f", &["-a/f"]),
            ("a directory: its subtree", "a/sub", &["-a/sub", "-a/sub/deep/y", "-a/sub/x"]),
            ("unknown: scanned, nothing below", "a/nothing", &["-a/nothing"]),
        ];
        for (name, path, want) in removals {
            let mut items = Vec::new();
            ts.remove_into(&mut items, Path::new(path));
            assert_eq!(shown(items), *want, "{name}");
        }
    }

    #[test]
    fn a_walk_started_and_not_ended_is_owed_by_the_next_start() {
        let t = tempfile::tempdir().unwrap();
        let src = tempfile::tempdir().unwrap();
        type Since = Option<(i64, u32)>;
        #[rustfmt::skip]
        let table: &[(&str, &[Since], Since)] = &[
            ("never walked", &[], None),
            ("started", &[Some((100, 5))], Some((100, 5))),
            ("started and ended", &[Some((100, 5)), None], None),
            ("ended, then another started", &[Some((100, 5)), None, Some((7, 0))], Some((7, 0))),
        ];
        for (name, steps, want) in table {
            {
                let s = State::open(t.path(), src.path(), true).unwrap();
                let ts = s.target("x").unwrap();
                for step in *steps {
                    ts.set_walk_owed(*step);
                }
                s.flush();
            }
            let s = State::open(t.path(), src.path(), false).unwrap();
            assert_eq!(s.target("x").unwrap().walk_owed(), *want, "{name}");
        }
        // A value that fails its checksum owes a walk from the beginning of time.
        let s = State::open(t.path(), src.path(), true).unwrap();
        let ts = s.target("x").unwrap();
        ts.send(vec![(
            ts.meta.clone(),
            ts.owed_key.as_bytes().to_vec(),
            Some(vec![1; 16]),
        )]);
        s.flush();
        assert_eq!(ts.walk_owed(), Some((0, 0)));
    }

    #[test]
    fn heartbeat_says_when_the_last_syncer_was_alive() {
        let t = tempfile::tempdir().unwrap();
        let (dir, src) = (t.path().join("state"), t.path().join("src"));
        std::fs::create_dir_all(&src).unwrap();
        let s = State::open(&dir, &src, false).unwrap();
        assert_eq!(s.last_alive(), None, "a fresh state has no previous syncer");
        // Written at the stop: the time the state was left.
        let t0 = std::time::SystemTime::now();
        s.target("t").unwrap().set_complete(false);
        s.flush();
        drop(s);
        let s = State::open(&dir, &src, false).unwrap();
        let alive = s.last_alive().expect("the previous syncer's heartbeat");
        let after = std::time::SystemTime::now();
        assert!(
            alive >= t0 && alive <= after,
            "{alive:?} between {t0:?} and {after:?}"
        );
        drop(s);
        let s = State::open(&dir, &src, true).unwrap();
        assert_eq!(s.last_alive(), None, "--full-resync forgets it too");
    }

    #[test]
    fn a_followed_heartbeat_says_when_the_source_last_caught_up() {
        let t = tempfile::tempdir().unwrap();
        let (dir, src) = (t.path().join("state"), t.path().join("src"));
        std::fs::create_dir_all(&src).unwrap();
        let clock = Arc::new(crate::change::WatchClock::default());
        let reopen = |clock: &Arc<crate::change::WatchClock>| {
            let s = State::open_following(&dir, &src, false, Some(clock.clone())).unwrap();
            let alive = s.last_alive();
            s.target("t").unwrap().set_complete(false);
            s.flush();
            drop(s);
            alive
        };
        assert_eq!(reopen(&clock), None, "a fresh state");
        assert_eq!(
            reopen(&clock),
            None,
            "a source that never caught up leaves no beat"
        );
        let then = std::time::SystemTime::now() - std::time::Duration::from_secs(30);
        clock.caught_up(then);
        reopen(&clock);
        let ns = |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap();
        let seen = reopen(&clock).expect("a beat");
        assert_eq!(
            ns(seen),
            ns(then),
            "the source's moment, not the wall clock"
        );
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
        clock.caught_up(later);
        reopen(&clock);
        let seen = reopen(&clock).expect("a beat");
        assert!(
            seen <= std::time::SystemTime::now(),
            "never ahead of the wall clock"
        );
    }

    #[test]
    fn lock_identity_and_fresh_start() {
        let t = tempfile::tempdir().unwrap();
        let (dir, src, other) = (
            t.path().join("state"),
            t.path().join("src"),
            t.path().join("other"),
        );
        std::fs::create_dir_all(&src).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        let s = State::open(&dir, &src, false).unwrap();
        let again = State::open(&dir, &src, false);
        assert!(
            matches!(again, Err(StateError::Locked { .. })),
            "a second syncer is refused"
        );
        drop(s);
        let s = State::open(&dir, &src, false).unwrap();
        s.target("t").unwrap().set_complete(true);
        drop(s);
        let msg = State::open(&dir, &other, false)
            .err()
            .expect("another source")
            .to_string();
        assert!(
            msg.contains("belongs to source") && msg.contains("--full-resync"),
            "{msg}"
        );
        let s = State::open(&dir, &other, true).expect("--full-resync starts over");
        assert!(
            !s.target("t").unwrap().is_complete(),
            "nothing of the old state is kept"
        );
    }

    #[test]
    fn journal_and_index_survive_a_reopen() {
        let t = tempfile::tempdir().unwrap();
        let (dir, src) = (t.path().join("state"), t.path().to_path_buf());
        {
            let s = State::open(&dir, &src, false).unwrap();
            let ts = s.target("rsync://h/m").unwrap();
            ts.record(&[
                (Path::new(""), Some((Op::Update, true))),
                (Path::new("a/f"), Some((Op::Update, false))),
                (Path::new("d"), Some((Op::Tree, true))),
                (Path::new("gone"), Some((Op::Delete, false))),
            ]);
            ts.flush();
            ts.record(&[(Path::new("a/f"), None)]);
            ts.flush();
            ts.apply(&[
                IndexUpdate::Put("a".into(), dir_meta(1)),
                IndexUpdate::Children(
                    "a".into(),
                    vec![(b"f".to_vec(), file(2)), (b"sub".to_vec(), dir_meta(3))],
                ),
                IndexUpdate::Put("a/sub/x".into(), file(4)),
                IndexUpdate::Put("a/sub/deep/y".into(), file(5)),
            ]);
            ts.flush();
        }
        let s = State::open(&dir, &src, false).unwrap();
        let ts = s.target("rsync://h/m").unwrap();
        let mut pending = ts.pending().unwrap();
        pending.sort_by(|a, b| a.0.cmp(&b.0));
        let shown: Vec<String> = pending
            .iter()
            .map(|(p, op, d)| format!("{}:{op:?}:{d}", p.display()))
            .collect();
        assert_eq!(shown, [":Update:true", "d:Tree:true", "gone:Delete:false"]);
        assert_eq!(names(&ts.children(Path::new("a")).unwrap()), ["f", "sub"]);
        assert_eq!(ts.get(Path::new("a/sub/x")).unwrap(), Some(file(4)));
        // The directory's entries are now only f: sub goes, with everything below it.
        ts.apply(&[IndexUpdate::Children(
            "a".into(),
            vec![(b"f".to_vec(), file(2))],
        )]);
        ts.flush();
        assert_eq!(names(&ts.children(Path::new("a")).unwrap()), ["f"]);
        assert_eq!(ts.get(Path::new("a/sub/x")).unwrap(), None);
        assert_eq!(ts.get(Path::new("a/sub/deep/y")).unwrap(), None);
        assert_eq!(
            ts.get(Path::new("a")).unwrap(),
            Some(dir_meta(1)),
            "the directory itself stays"
        );
        ts.apply(&[IndexUpdate::Remove("a".into())]);
        ts.flush();
        assert!(ts.children(Path::new("a")).unwrap().is_empty());
        assert_eq!(ts.get(Path::new("a")).unwrap(), None);
        assert!(
            s.target("another").unwrap().pending().unwrap().is_empty(),
            "targets are apart"
        );
    }

    #[test]
    fn a_target_opened_twice_shares_its_journal() {
        // A reload replaces a target's state while its map still journals into the old one:
        // two handles on one log would each rewrite it under the other.
        let t = tempfile::tempdir().unwrap();
        let s = State::open(&t.path().join("state"), t.path(), false).unwrap();
        let (a, b) = (s.target("x").unwrap(), s.target("x").unwrap());
        assert!(Arc::ptr_eq(&a.journal, &b.journal));
        assert!(!Arc::ptr_eq(&a.journal, &s.target("y").unwrap().journal));
    }

    #[test]
    fn a_journal_kept_in_the_store_moves_into_the_log() {
        let t = tempfile::tempdir().unwrap();
        let (dir, src) = (t.path().join("state"), t.path().to_path_buf());
        let name = "rsync://h/m";
        let id = format!("{:08x}", crc32fast::hash(name.as_bytes()));
        {
            // What a state from before the logs held: path -> op, is_dir, CRC.
            let s = State::open(&dir, &src, false).unwrap();
            let old = keyspace(&s.db, &format!("journal-{id}"), &dir).unwrap();
            for (path, op, is_dir) in [("a/f", 0u8, 0u8), ("d", 2, 1)] {
                let k = [b"p".as_slice(), path.as_bytes()].concat();
                let body = [op, is_dir];
                let crc = meta::checksum(&k, &body).to_le_bytes();
                old.insert(&k, [body[0], body[1], crc[0], crc[1], crc[2], crc[3]])
                    .unwrap();
            }
            s.flush();
        }
        let s = State::open(&dir, &src, false).unwrap();
        let ts = s.target(name).unwrap();
        assert!(!s.db.keyspace_exists(&format!("journal-{id}")));
        assert_eq!(
            ts.pending().unwrap(),
            vec![
                (PathBuf::from("a/f"), Op::Update, false),
                (PathBuf::from("d"), Op::Tree, true)
            ]
        );
    }

    #[test]
    fn a_damaged_value_is_detected() {
        let t = tempfile::tempdir().unwrap();
        let s = State::open(&t.path().join("state"), t.path(), false).unwrap();
        let ts = s.target("t").unwrap();
        ts.apply(&[IndexUpdate::Put("f".into(), file(1))]);
        ts.flush();
        let k = super::meta::key(Path::new("f"));
        let mut v = ts.index.get(&k).unwrap().unwrap().to_vec();
        v[3] ^= 1;
        ts.index.insert(&k, v).unwrap();
        let e = ts.get(Path::new("f")).unwrap_err().to_string();
        assert!(e.contains("checksum"), "{e}");
        assert!(ts.children(Path::new("")).is_err());
    }
}
