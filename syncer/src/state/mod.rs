//! Durable state: what survives a restart, a crash or a power loss.
//!
//! One state directory per source (`--state-dir`, default `/var/lib/syncer`), locked by the
//! running syncer, holding one fjall database (an LSM store with a write-ahead journal,
//! atomic batches and range scans) with, per target:
//! - the **journal** of pending paths (`queue::Journal`): written as the map takes changes
//!   in, removed when a transfer covering the path succeeded;
//! - the **index**: what the target is known to hold, one [`meta::Meta`] per entry, taken from
//!   the source before the transfer that copied it and written when that transfer succeeded;
//! - whether the index is **complete** (a full pass or a catch-up walk ended since it was
//!   started), and failures.
//!
//! Writes go to one writer thread (sending never blocks: the source's reader thread must not
//! wait on the disk), which writes them to the store in batches gathered over 10 ms, and makes
//! them durable (fdatasync) every [`SYNC_EVERY`] while there are writes: a kill -9 loses what
//! the writer had not yet written (milliseconds of changes), a power loss what was not yet
//! synced; both are found again by the next start's walk against the index (see
//! ARCHITECTURE.md). A value that fails
//! its checksum, or a database that cannot be opened, is never trusted: the state is set aside
//! and rebuilt by a full pass.

pub mod catchup;
pub mod meta;
pub mod stat;
mod target;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use tracing::{debug, warn};

pub use self::target::{Failure, IndexUpdate, TargetState};

/// The environment variable that marks a syncer's transfers with its state directory.
pub const ORPHAN_TAG: &str = "SYNCER_STATE_OWNER";

/// Stops the processes a crashed syncer on `dir` left running (its rsyncs, found by their
/// [`ORPHAN_TAG`]): finishing later, they could write an older version over what this one
/// sends. Called with the state's lock held, so no live syncer owns them. Returns how many.
pub fn kill_orphans(dir: &Path) -> usize {
    let want = format!("{ORPHAN_TAG}={}", dir.display());
    let mine = std::process::id();
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid as u32 == mine {
            continue;
        }
        let Ok(env) = std::fs::read(e.path().join("environ")) else {
            continue;
        };
        if env.split(|&b| b == 0).any(|v| v == want.as_bytes()) {
            // SAFETY: kill has no memory preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            pids.push(pid);
        }
    }
    // Wait (briefly) until they are gone.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while pids
        .iter()
        .any(|p| Path::new(&format!("/proc/{p}/environ")).exists())
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    pids.len()
}

/// How often writes are made durable (the group commit).
pub const SYNC_EVERY: Duration = Duration::from_secs(1);

/// How long the writer gathers writes into one batch (what a kill -9 can lose at most, with
/// the batch being written).
const GATHER: Duration = Duration::from_millis(10);

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
    thread: Option<std::thread::JoinHandle<()>>,
    _lock: File,
}

/// One write for the writer thread.
pub(crate) enum Write {
    /// Inserts and removals, in one batch.
    Batch(Vec<(Keyspace, Vec<u8>, Option<Vec<u8>>)>),
    /// Syncs everything written so far and answers.
    Flush(std::sync::mpsc::Sender<()>),
    /// Syncs and ends the writer (the state is closing; later writes are dropped).
    Stop,
}

/// Where writes are sent; cheap to clone. Senders append to a buffer and wake the writer only
/// when the buffer was empty: however many small writes come, the writer wakes at most once
/// per [`GATHER`] and takes them all.
#[derive(Clone)]
pub(crate) struct Writer {
    shared: Arc<(std::sync::Mutex<Buffer>, std::sync::Condvar)>,
}

#[derive(Default)]
pub(crate) struct Buffer {
    writes: Vec<Write>,
    closed: bool,
}

impl Writer {
    fn new() -> Writer {
        Writer {
            shared: Arc::new(Default::default()),
        }
    }

    pub(crate) fn send(&self, w: Write) {
        let (lock, cond) = &*self.shared;
        let mut b = lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if b.closed {
            return; // the state is closing: everything before is written
        }
        let wake = b.writes.is_empty();
        b.writes.push(w);
        drop(b);
        if wake {
            cond.notify_one();
        }
    }

    /// Waits until everything sent before is written and synced.
    pub(crate) fn flush(&self) {
        let (tx, rx) = std::sync::mpsc::channel();
        self.send(Write::Flush(tx));
        let _ = rx.recv();
    }

    /// The writer's side: waits for writes (at most `timeout` when given), then lets them
    /// gather for [`GATHER`] unless one of them asks to be done now; `None` once closed.
    fn take(&self, timeout: Option<Duration>) -> Option<Vec<Write>> {
        let (lock, cond) = &*self.shared;
        let mut b = lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while b.writes.is_empty() && !b.closed {
            match timeout {
                Some(t) => {
                    let (g, r) = cond
                        .wait_timeout(b, t)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    b = g;
                    if r.timed_out() {
                        return Some(Vec::new());
                    }
                }
                None => {
                    b = cond
                        .wait(b)
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                }
            }
        }
        if b.writes.is_empty() && b.closed {
            return None;
        }
        let urgent = b
            .writes
            .iter()
            .any(|w| matches!(w, Write::Flush(_) | Write::Stop));
        if !urgent {
            drop(b);
            std::thread::sleep(GATHER);
            b = lock
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        Some(std::mem::take(&mut b.writes))
    }
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
    /// (`--full-resync`), discarding what is there.
    pub fn open(dir: &Path, source: &Path, fresh: bool) -> Result<State, StateError> {
        let io = |source| StateError::Io {
            dir: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let lock = lock(dir)?;
        let id = identity(source).map_err(io)?;
        let db_dir = dir.join("db");
        if fresh && db_dir.exists() {
            std::fs::remove_dir_all(&db_dir).map_err(io)?;
        }
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
        let writer = Writer::new();
        let failed = Arc::new(AtomicBool::new(false));
        let thread = {
            let (db, failed, dir, w) = (
                db.clone(),
                failed.clone(),
                dir.to_path_buf(),
                writer.clone(),
            );
            std::thread::Builder::new()
                .name("state-writer".into())
                .spawn(move || write_loop(&db, &w, &failed, &dir))
                .map_err(io)?
        };
        Ok(State {
            dir: dir.to_path_buf(),
            db,
            meta,
            writer,
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
        Ok(aside)
    }

    /// The state of one target (its keyspaces are made on first use).
    pub fn target(&self, name: &str) -> Result<Arc<TargetState>, StateError> {
        let id = format!("{:08x}", crc32fast::hash(name.as_bytes()));
        let ks = |kind: &str| keyspace(&self.db, &format!("{kind}-{id}"), &self.dir);
        Ok(Arc::new(TargetState {
            name: name.to_string(),
            dir: self.dir.clone(),
            index: ks("index")?,
            journal: ks("journal")?,
            failures: ks("failures")?,
            meta: self.meta.clone(),
            complete_key: format!("complete-{id}"),
            tag: self.dir.display().to_string(),
            writer: self.writer.clone(),
            linked: Default::default(),
        }))
    }

    /// Waits until everything written so far is durable.
    pub fn flush(&self) {
        self.writer.flush();
    }

    pub fn dir(&self) -> &Path {
        &self.dir
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

/// How long a start waits for the state directory's lock before saying it is in use.
const LOCK_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Takes the state directory's lock (`flock` on `lock`, which holds the holder's pid).
fn lock(dir: &Path) -> Result<File, StateError> {
    use std::io::{Read, Seek, Write};
    let path = dir.join("lock");
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|source| StateError::Io {
            dir: dir.to_path_buf(),
            source,
        })?;
    // Seen in the property test: the lock still held for a moment after its holder was
    // killed (-9) and reaped (a child between fork and exec would hold the descriptor until
    // its exec closes it). A restart right after a kill waits that out; a second syncer on
    // the same directory still fails, after LOCK_GRACE.
    let deadline = std::time::Instant::now() + LOCK_GRACE;
    // SAFETY (both calls): flock on a descriptor we own.
    while unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let mut holder = String::new();
        let _ = f.read_to_string(&mut holder);
        return Err(StateError::Locked {
            dir: dir.to_path_buf(),
            holder: holder.trim().to_string(),
        });
    }
    let _ = f.set_len(0);
    let _ = f.rewind();
    let _ = writeln!(f, "{}", std::process::id());
    Ok(f)
}

/// Adds one write to the batch being built.
fn take(
    w: Write,
    batch: &mut fjall::OwnedWriteBatch,
    n: &mut usize,
    flushes: &mut Vec<std::sync::mpsc::Sender<()>>,
    stop: &mut bool,
) {
    match w {
        Write::Batch(items) => {
            for (ks, k, v) in items {
                match v {
                    Some(v) => batch.insert(&ks, k, v),
                    None => batch.remove(&ks, k),
                }
                *n += 1;
            }
        }
        Write::Flush(reply) => flushes.push(reply),
        Write::Stop => *stop = true,
    }
}

/// The writer thread: writes what comes in batches, syncs every [`SYNC_EVERY`] while there
/// are writes (and when asked), until the state closes.
fn write_loop(db: &Database, writer: &Writer, failed: &AtomicBool, dir: &Path) {
    let mut last_sync = std::time::Instant::now();
    let mut unsynced = false;
    loop {
        // Wait for work, but wake to sync what is written and not yet durable.
        let timeout = unsynced.then(|| SYNC_EVERY.saturating_sub(last_sync.elapsed()));
        let Some(writes) = writer.take(timeout) else {
            break;
        };
        let mut batch = db.batch();
        let mut n = 0usize;
        let mut flushes = Vec::new();
        let mut stop = false;
        for w in writes {
            take(w, &mut batch, &mut n, &mut flushes, &mut stop);
        }
        if n > 0 {
            if let Err(e) = batch.commit() {
                if !failed.swap(true, Ordering::Relaxed) {
                    tracing::error!("cannot write the state in {} ({e}): replication goes on, and the next start compares more of the tree", dir.display());
                }
            }
            unsynced = true;
        }
        if unsynced && (stop || !flushes.is_empty() || last_sync.elapsed() >= SYNC_EVERY) {
            if let Err(e) = db.persist(PersistMode::SyncData) {
                warn!("syncing the state failed: {e}");
            } else {
                debug!("state synced");
            }
            last_sync = std::time::Instant::now();
            unsynced = false;
        }
        for reply in flushes {
            let _ = reply.send(());
        }
        if stop {
            let (lock, _) = &*writer.shared;
            lock.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .closed = true;
            return;
        }
    }
    let _ = db.persist(PersistMode::SyncAll);
}

#[cfg(test)]
mod tests {
    use super::meta::{Kind, Meta};
    use super::target::IndexUpdate;
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
