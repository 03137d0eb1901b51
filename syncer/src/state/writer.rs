//! The state's writer thread: every write to the store goes through it, gathered into
//! batches, made durable by one group commit every [`SYNC_EVERY`]; senders never block.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fjall::{Database, Keyspace, PersistMode};
use tracing::{debug, warn};

use crate::change::WatchClock;

/// How often writes are made durable (the group commit).
pub const SYNC_EVERY: Duration = Duration::from_secs(1);

/// The meta key of the writer's heartbeat: the wall-clock time (ns since the epoch, LE) at
/// which this state was last known to be in use. A start after a crash reads it: what changed
/// in the source since then cannot have been seen.
pub(super) const ALIVE_KEY: &str = "alive";

/// How often the heartbeat is written along with other writes, and when idle (idle beats are
/// not synced: a crash keeps them, a power loss leaves an older one, which only means more).
const ALIVE_BUSY: Duration = Duration::from_secs(1);
const ALIVE_IDLE: Duration = Duration::from_secs(2);
/// How soon a beat is tried again while the followed clock has not started.
const CLOCK_RETRY: Duration = Duration::from_millis(50);

/// The heartbeat's value for `t`.
pub(super) fn alive_value(t: std::time::SystemTime) -> [u8; 8] {
    let ns = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    ns.to_le_bytes()
}

/// The time a heartbeat value says (`None` for anything else).
pub(super) fn alive_time(v: &[u8]) -> Option<std::time::SystemTime> {
    let ns = u64::from_le_bytes(v.try_into().ok()?);
    Some(std::time::UNIX_EPOCH + Duration::from_nanos(ns))
}

/// How long the writer gathers writes into one batch (what a kill -9 can lose at most, with
/// the batch being written).
const GATHER: Duration = Duration::from_millis(10);

/// A target's journal, shared by its state and the writer thread (which alone writes it).
pub(crate) type SharedLog = std::sync::Arc<std::sync::Mutex<super::journal::Log>>;

/// One write for the writer thread.
pub(crate) enum Write {
    /// Inserts and removals, in one batch.
    Batch(Vec<(Keyspace, Vec<u8>, Option<Vec<u8>>)>),
    /// Records to append to a target's journal ([`super::journal`]).
    Journal(SharedLog, Vec<u8>),
    /// Inserts and removals that say what the journal holds (a pass's covered point, a walk
    /// that ended after what it queued): written only once every journal is synced, so that a
    /// power loss never keeps them without the records written before them (the journal and
    /// the store are two files).
    Barrier(Vec<(Keyspace, Vec<u8>, Option<Vec<u8>>)>),
    /// Syncs everything written so far and answers.
    Flush(std::sync::mpsc::Sender<()>),
    /// Syncs and ends the writer (the state is closing; later writes are dropped).
    Stop,
    /// The reader's read `n` is in the journal once everything sent before is written
    /// ([`super::cursor`]).
    Cursor(u64),
}

/// Where writes are sent; cheap to clone. Senders append to a buffer and wake the writer only
/// when the buffer was empty: however many small writes come, the writer wakes at most once
/// per [`GATHER`] and takes them all.
#[derive(Clone)]
pub(crate) struct Writer {
    shared: Arc<(std::sync::Mutex<Buffer>, std::sync::Condvar)>,
}

#[derive(Default)]
struct Buffer {
    writes: Vec<Write>,
    closed: bool,
    /// The source's clock ([`Writer::follow`]).
    clock: Option<Arc<WatchClock>>,
}

impl Writer {
    pub(super) fn new() -> Writer {
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

    /// Beats follow `clock` rather than the wall clock:
    /// the heartbeat then says until when a source watched the tree, not only until when
    /// this process lived (a source that fell behind, or stopped before the drain, would
    /// otherwise be credited with changes it never saw).
    pub(crate) fn follow(&self, clock: Arc<WatchClock>) {
        let (lock, _) = &*self.shared;
        lock.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clock = Some(clock);
    }

    /// The heartbeat's time now: the wall clock, or the followed clock (never ahead of the
    /// wall clock); `None` while that clock has not started.
    fn beat_time(&self) -> Option<std::time::SystemTime> {
        let now = std::time::SystemTime::now();
        let (lock, _) = &*self.shared;
        let clock = lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clock
            .clone();
        match clock {
            None => Some(now),
            Some(c) => c.get().map(|t| t.min(now)),
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

/// What one turn of the writer takes from the buffer.
#[derive(Default)]
struct Turn {
    /// Store writes in this turn's batch.
    n: usize,
    /// Journal records, per log, in the order they came.
    journal: Vec<(SharedLog, Vec<u8>)>,
    /// Some writes are barriers: the journals are synced before the batch is written.
    barrier: bool,
    flushes: Vec<std::sync::mpsc::Sender<()>>,
    stop: bool,
    read: Option<u64>,
}

/// Adds one write to the batch being built.
fn take(w: Write, batch: &mut fjall::OwnedWriteBatch, t: &mut Turn) {
    let mut put = |items: Vec<(Keyspace, Vec<u8>, Option<Vec<u8>>)>| {
        for (ks, k, v) in items {
            match v {
                Some(v) => batch.insert(&ks, k, v),
                None => batch.remove(&ks, k),
            }
            t.n += 1;
        }
    };
    match w {
        Write::Batch(items) => put(items),
        Write::Barrier(items) => {
            put(items);
            t.barrier = true;
        }
        Write::Journal(log, records) => {
            match t
                .journal
                .iter_mut()
                .find(|(l, _)| std::sync::Arc::ptr_eq(l, &log))
            {
                Some((_, r)) => r.extend_from_slice(&records),
                None => t.journal.push((log, records)),
            }
        }
        Write::Flush(reply) => t.flushes.push(reply),
        Write::Stop => t.stop = true,
        Write::Cursor(n) => t.read = Some(n),
    }
}

/// A journal, locked (a panic while it was held leaves nothing half-written that a later
/// append or read would trust: records carry their own checksums).
pub(super) fn lock(log: &SharedLog) -> std::sync::MutexGuard<'_, super::journal::Log> {
    log.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Syncs every journal written to; false if one failed (logged).
fn sync_journals(logs: &[SharedLog]) -> bool {
    let mut ok = true;
    for log in logs {
        if let Err(e) = lock(log).sync() {
            warn!("syncing a journal failed: {e}");
            ok = false;
        }
    }
    ok
}

/// The writer thread: writes what comes in batches, syncs every [`SYNC_EVERY`] while there
/// are writes (and when asked), beats ([`ALIVE_KEY`]), until the state closes.
pub(super) fn write_loop(
    db: &Database,
    meta: &Keyspace,
    writer: &Writer,
    failed: &AtomicBool,
    dir: &Path,
    cursor: &super::cursor::Cursor,
) {
    let mut last_sync = std::time::Instant::now();
    let mut last_beat: Option<std::time::Instant> = None;
    let mut unsynced = false;
    // Every journal this writer appended to (synced with the store).
    let mut logs: Vec<SharedLog> = Vec::new();
    // Writes and commits since the last sync (for the debug log).
    let (mut written, mut commits) = (0usize, 0usize);
    loop {
        // Wait for work, but wake to sync what is written and not yet durable, and to beat.
        let beat_in = last_beat.map_or(Duration::ZERO, |t| ALIVE_IDLE.saturating_sub(t.elapsed()));
        let timeout = match unsynced {
            true => SYNC_EVERY.saturating_sub(last_sync.elapsed()).min(beat_in),
            false => beat_in,
        };
        let Some(writes) = writer.take(Some(timeout)) else {
            break;
        };
        let mut batch = db.batch();
        let mut turn = Turn::default();
        for w in writes {
            take(w, &mut batch, &mut turn);
        }
        let Turn {
            mut n,
            journal,
            barrier,
            flushes,
            stop,
            read,
        } = turn;
        // The journal's records first, one write per log: the store's writes of this turn
        // (index entries, the heartbeat) never reach the OS before them.
        for (log, records) in journal {
            if let Err(e) = lock(&log).append(&records) {
                if !failed.swap(true, Ordering::Relaxed) {
                    tracing::error!("cannot write the journal in {} ({e}): replication goes on, and the next start compares more of the tree", dir.display());
                }
            }
            unsynced = true;
            if !logs.iter().any(|l| std::sync::Arc::ptr_eq(l, &log)) {
                logs.push(log);
            }
        }
        if barrier && !sync_journals(&logs) {
            failed.store(true, Ordering::Relaxed);
        }
        // Written to the operating system at each commit (not left in the store's buffer): a
        // kill -9 then loses only what was still gathering, and the cursor can say so.
        batch = batch.durability(Some(PersistMode::Buffer));
        let every = if n > 0 { ALIVE_BUSY } else { ALIVE_IDLE };
        let due = stop || last_beat.is_none_or(|t| t.elapsed() >= every);
        let at = due.then(|| writer.beat_time()).flatten();
        if due {
            let now = std::time::Instant::now();
            // A followed clock not started yet (its source not reading yet): try again soon,
            // so that a syncer killed in its first seconds still leaves its beat.
            last_beat = Some(match at {
                Some(_) => now,
                None => now.checked_sub(ALIVE_IDLE - CLOCK_RETRY).unwrap_or(now),
            });
        }
        if let Some(at) = at {
            batch.insert(meta, ALIVE_KEY, alive_value(at));
            if n == 0 {
                // A beat alone is written, not synced.
                let _ = batch.commit();
                batch = db.batch().durability(Some(PersistMode::Buffer));
            } else {
                n += 1;
            }
        }
        written += n;
        commits += usize::from(n > 0);
        if n > 0 {
            if let Err(e) = batch.commit() {
                if !failed.swap(true, Ordering::Relaxed) {
                    tracing::error!("cannot write the state in {} ({e}): replication goes on, and the next start compares more of the tree", dir.display());
                }
            }
            unsynced = true;
        }
        // After a failed write the journal is not what was read, for good.
        if let (Some(read), false) = (read, failed.load(Ordering::Relaxed)) {
            cursor.journaled(read);
        }
        if unsynced && (stop || !flushes.is_empty() || last_sync.elapsed() >= SYNC_EVERY) {
            sync_journals(&logs);
            if let Err(e) = db.persist(PersistMode::SyncData) {
                warn!("syncing the state failed: {e}");
            } else {
                debug!(written, commits, "state synced");
                (written, commits) = (0, 0);
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
    sync_journals(&logs);
    let _ = db.persist(PersistMode::SyncAll);
}
