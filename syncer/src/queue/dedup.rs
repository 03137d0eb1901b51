//! The dedup map: one per target, at most one pending entry per path, latest state wins.
//!
//! Sources insert [`Change`]s from their own threads (the map is a sharded concurrent map, so
//! inserts from the event thread never wait for the dispatcher); the target's dispatcher takes
//! entries once they have been quiet for the coalescing delay. An entry taken for transfer stays
//! in the map as *in flight*: new events for the path gather in a fresh pending state behind it,
//! and [`DedupMap::complete`] either forgets the path or puts a failed transfer back for retry.
//! So a path leaves the map only when a transfer of it succeeded.
//!
//! The coalescing rules themselves ([`next_state`], [`merge_retry`]) and their table are in
//! [`super::rules`].
//!
//! Locking: the slots are a sharded concurrent map (`DashMap`); the due times are one heap
//! behind a mutex, which an insert holds for one batch of changes and [`DedupMap::take_due`]
//! for up to its `max` entries, never across an await or a system call.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tracing::trace;

use super::rules::{closed_only, merge_retry, next_state, Op, Pending};
use super::{Journal, JournalEntry};
use crate::change::Change;

#[derive(Debug)]
struct Slot {
    pending: Option<Pending>,
    inflight: bool,
    /// When the in-flight transfer was taken, if it covers the subtree: it reads the source
    /// after that moment, so it also covers descendants' changes seen before it.
    covering_since: Option<Instant>,
    /// The first event the in-flight transfer stands for (for [`DedupMap::oldest`]).
    inflight_first: Option<Instant>,
    /// The in-flight transfer deletes a directory. Its rsync may read the source after the
    /// directory was made again (it then only brings the new directory's own entry up to
    /// date, and the old contents stay on the target): a change seen meanwhile is taken as
    /// following a pending deletion (a directory made again: the whole subtree).
    inflight_dir_delete: bool,
}

impl Slot {
    fn empty() -> Slot {
        Slot {
            pending: None,
            inflight: false,
            inflight_dir_delete: false,
            covering_since: None,
            inflight_first: None,
        }
    }

    /// The oldest event this slot still owes a transfer for.
    fn first(&self) -> Option<Instant> {
        let pending = self.pending.as_ref().map(|p| p.first);
        match (pending, self.inflight_first) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// An entry handed to the dispatcher.
#[derive(Debug, Clone)]
pub struct Taken {
    pub path: Arc<Path>,
    pub pending: Pending,
}

type Timer = Reverse<(Instant, Arc<Path>)>;

/// The concurrent coalescing queue of one target.
pub struct DedupMap {
    slots: DashMap<Arc<Path>, Slot, hashbrown::DefaultHashBuilder>,
    /// Due times of pending entries; stale ones are checked against the slot when popped.
    timers: Mutex<BinaryHeap<Timer>>,
    /// The coalescing delay in nanoseconds (a reload may change it); at most ten of them pass
    /// between a path's first event and its transfer.
    delay_ns: std::sync::atomic::AtomicU64,
    /// Pending entries whose transfer covers their subtree (see [`Pending::covers_subtree`]).
    covering: AtomicUsize,
    /// In-flight transfers that cover their subtree.
    covering_inflight: AtomicUsize,
    wake: tokio::sync::Notify,
    journal: Option<Arc<dyn Journal>>,
    /// Changes folded into an entry already pending (each one a transfer saved).
    coalesced: std::sync::atomic::AtomicU64,
}

impl DedupMap {
    /// `delay`: quiet time before a path is transferred; a path that keeps changing is
    /// transferred at the latest ten delays after its first event.
    pub fn new(delay: Duration) -> DedupMap {
        DedupMap {
            slots: DashMap::with_hasher(hashbrown::DefaultHashBuilder::default()),
            timers: Mutex::new(BinaryHeap::new()),
            delay_ns: std::sync::atomic::AtomicU64::new(delay.as_nanos() as u64),
            covering: AtomicUsize::new(0),
            covering_inflight: AtomicUsize::new(0),
            wake: tokio::sync::Notify::new(),
            journal: None,
            coalesced: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn delay(&self) -> Duration {
        Duration::from_nanos(self.delay_ns.load(Ordering::Relaxed))
    }

    /// A new coalescing delay, for changes from now on (a reload).
    pub fn set_delay(&self, delay: Duration) {
        self.delay_ns
            .store(delay.as_nanos() as u64, Ordering::Relaxed);
    }

    /// The same, recording what is pending in `journal`.
    pub fn with_journal(delay: Duration, journal: Arc<dyn Journal>) -> DedupMap {
        DedupMap {
            journal: Some(journal),
            ..DedupMap::new(delay)
        }
    }

    fn journal(&self, entries: &[JournalEntry<'_>]) {
        if let (Some(j), false) = (&self.journal, entries.is_empty()) {
            j.record(entries);
        }
    }

    /// The due-time heap. A panic elsewhere while it was held leaves a valid heap (its entries
    /// are only hints, checked against the slots when popped), so a poisoned lock is taken as is.
    fn timers(&self) -> std::sync::MutexGuard<'_, BinaryHeap<Timer>> {
        self.timers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records changes seen at `now` and wakes the dispatcher.
    pub fn insert_all(&self, changes: &[Change], now: Instant) {
        if changes.is_empty() {
            return;
        }
        let mut timers = self.timers();
        let mut changed = Vec::new();
        let mut folded = 0;
        for c in changes {
            let (state, was_pending) = self.insert_one(c, now, &mut timers);
            folded += u64::from(was_pending);
            if let Some(state) = state {
                if self.journal.is_some() {
                    changed.push((c.path.as_path(), Some(state)));
                }
            }
        }
        drop(timers);
        self.coalesced.fetch_add(folded, Ordering::Relaxed);
        self.journal(&changed);
        self.wake.notify_one();
    }

    /// Applies one change; returns the path's new (op, is_dir) if it differs from before,
    /// and whether the change was folded into an entry already pending.
    fn insert_one(
        &self,
        c: &Change,
        now: Instant,
        timers: &mut BinaryHeap<Timer>,
    ) -> (Option<(Op, bool)>, bool) {
        let mut slot = match self.slots.get_mut(c.path.as_path()) {
            Some(slot) => slot,
            None => self
                .slots
                .entry(Arc::from(c.path.as_path()))
                .or_insert_with(Slot::empty),
        };
        let key = slot.key().clone();
        let inflight = slot.inflight;
        let cur = slot
            .pending
            .as_ref()
            .map(|p| p.op)
            .or(slot.inflight_dir_delete.then_some(Op::Delete));
        let op = next_state(cur, c.kind, c.is_dir);
        // An in-flight directory deletion counts as an event other than a close.
        let only_closes = closed_only(
            slot.pending
                .as_ref()
                .map(|p| p.closed_only)
                .or(slot.inflight_dir_delete.then_some(false)),
            c.kind,
        );
        trace!(path = %c.path.display(), kind = ?c.kind, dir = c.is_dir, ?op, inflight, "change");
        let before = slot.pending.as_ref().map(|p| (p.op, p.is_dir));
        let pending = match slot.pending.take() {
            Some(mut p) => {
                self.uncount(&p);
                p.op = op;
                p.is_dir = c.is_dir;
                p.closed_only = only_closes;
                let delay = self.delay();
                p.due = (now + delay).min(p.first + delay * 10).max(p.due);
                p.last = now;
                p
            }
            None => {
                let p = Pending {
                    op,
                    is_dir: c.is_dir,
                    first: now,
                    last: now,
                    due: now + self.delay(),
                    attempts: 0,
                    closed_only: only_closes,
                };
                if !inflight {
                    timers.push(Reverse((p.due, key)));
                }
                p
            }
        };
        self.count(&pending);
        let after = (pending.op, pending.is_dir);
        slot.pending = Some(pending);
        ((before != Some(after)).then_some(after), before.is_some())
    }

    /// Changes folded into an entry already pending, so far.
    pub fn coalesced(&self) -> u64 {
        self.coalesced.load(Ordering::Relaxed)
    }

    /// Schedules `op` on `path` directly (the rescan planner's `Tree` and `Shallow` requests),
    /// due at `due`.
    pub fn schedule(&self, path: &Path, op: Op, due: Instant) {
        self.restore(path, op, true, due)
    }

    /// Puts `op` on `path` back as pending, due at `due`, merged with what is there (the
    /// journal's entries after a restart, and [`DedupMap::schedule`]).
    pub fn restore(&self, path: &Path, op: Op, is_dir: bool, due: Instant) {
        let mut timers = self.timers();
        let mut slot = self
            .slots
            .entry(Arc::from(path))
            .or_insert_with(Slot::empty);
        let key = slot.key().clone();
        let request = Pending {
            op,
            is_dir,
            first: due,
            last: due,
            due,
            attempts: 0,
            closed_only: false,
        };
        let merged = match slot.pending.take() {
            Some(cur) => {
                self.uncount(&cur);
                let mut m = merge_retry(&cur, Some(request));
                m.due = cur.due.min(due);
                m
            }
            None => request,
        };
        if !slot.inflight {
            timers.push(Reverse((merged.due, key)));
        }
        self.count(&merged);
        let state = (merged.op, merged.is_dir);
        slot.pending = Some(merged);
        drop(slot);
        drop(timers);
        self.journal(&[(path, Some(state))]);
        self.wake.notify_one();
    }

    fn count(&self, p: &Pending) {
        if p.covers_subtree() {
            self.covering.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn uncount(&self, p: &Pending) {
        if p.covers_subtree() {
            self.covering.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Takes up to `max` entries that are due at `now` (all pending entries when `drain`),
    /// marking them in flight. Entries made redundant by a pending transfer of an ancestor that
    /// covers them are dropped here.
    pub fn take_due(&self, now: Instant, max: usize, drain: bool) -> Vec<Taken> {
        let mut out = Vec::new();
        let mut covered_done: Vec<Arc<Path>> = Vec::new();
        let mut timers = self.timers();
        let mut later = Vec::new();
        while out.len() < max {
            let Some(Reverse((due, path))) = timers.peek().cloned() else {
                break;
            };
            if due > now && !drain {
                break;
            }
            timers.pop();
            let last = match self.slots.get(&path) {
                Some(s) if !s.inflight => s.pending.as_ref().map(|p| p.last),
                _ => None,
            };
            let Some(last) = last else {
                continue; // gone, or in flight (complete() re-arms it)
            };
            let covered = self.covered_by_ancestor(&path, last);
            let first = self.slots.get(&path).and_then(|s| s.first());
            let Some(mut slot) = self.slots.get_mut(&path) else {
                continue;
            };
            if slot.inflight {
                continue; // complete() re-arms it
            }
            let Some(p) = slot.pending.as_ref() else {
                continue;
            };
            if p.due > now && !drain {
                later.push(Reverse((p.due, path.clone())));
                continue;
            }
            let p = slot.pending.take().expect("checked above");
            self.uncount(&p);
            if let Some(ancestor) = covered {
                // The ancestor's transfer (pending or in flight, and journaled until it
                // succeeds) covers this path; it now also stands for this path's oldest event.
                drop(slot);
                if let (Some(first), Some(mut a)) = (first, self.slots.get_mut(&ancestor)) {
                    match a.pending.as_mut().filter(|p| p.covers_subtree()) {
                        Some(p) => p.first = p.first.min(first),
                        None => a.inflight_first = a.inflight_first.map(|f| f.min(first)),
                    }
                }
                self.slots
                    .remove_if(&path, |_, s| s.pending.is_none() && !s.inflight);
                trace!(path = %path.display(), "covered by an ancestor's transfer");
                covered_done.push(path.clone());
                continue;
            }
            slot.inflight = true;
            slot.inflight_dir_delete = p.op == Op::Delete && p.is_dir;
            slot.inflight_first = Some(p.first);
            if p.covers_subtree() {
                slot.covering_since = Some(now);
                self.covering_inflight.fetch_add(1, Ordering::Relaxed);
            }
            out.push(Taken {
                path: path.clone(),
                pending: p,
            });
        }
        timers.extend(later);
        drop(timers);
        if !covered_done.is_empty() {
            let entries: Vec<JournalEntry<'_>> =
                covered_done.iter().map(|p| (p.as_ref(), None)).collect();
            self.journal(&entries);
        }
        out
    }

    /// The ancestor whose transfer will copy the state of `path` as of after `last`, if any:
    /// a pending one that covers its subtree, or an in-flight one taken after `last`.
    fn covered_by_ancestor(&self, path: &Path, last: Instant) -> Option<Arc<Path>> {
        if self.covering.load(Ordering::Relaxed) == 0
            && self.covering_inflight.load(Ordering::Relaxed) == 0
        {
            return None;
        }
        path.ancestors().skip(1).find_map(|a| {
            let s = self.slots.get(a)?;
            let covers = s.pending.as_ref().is_some_and(Pending::covers_subtree)
                || s.covering_since.is_some_and(|since| since >= last);
            covers.then(|| s.key().clone())
        })
    }

    /// When the oldest event still owed a transfer arrived (pending or in flight; an entry
    /// dropped under an ancestor's covering transfer counts as that transfer's). A scan of
    /// the map: for status and checkpoints, not the hot path.
    pub fn oldest(&self) -> Option<Instant> {
        self.slots.iter().filter_map(|s| s.first()).min()
    }

    /// Ends the transfer of `path`. `retry`: the transfer failed; the entry comes back at
    /// `retry.due`, merged under any newer events.
    pub fn complete(&self, path: &Path, retry: Option<Pending>) {
        let mut timers = self.timers();
        let Some(mut slot) = self.slots.get_mut(path) else {
            return;
        };
        slot.inflight = false;
        slot.inflight_dir_delete = false;
        slot.inflight_first = None;
        if slot.covering_since.take().is_some() {
            self.covering_inflight.fetch_sub(1, Ordering::Relaxed);
        }
        let mut retried = None;
        if let Some(failed) = retry {
            let newer = slot.pending.take();
            if let Some(n) = &newer {
                self.uncount(n);
            }
            let merged = merge_retry(&failed, newer);
            self.count(&merged);
            retried = Some((merged.op, merged.is_dir));
            slot.pending = Some(merged);
        }
        match &slot.pending {
            Some(p) => {
                timers.push(Reverse((p.due, slot.key().clone())));
                drop(slot);
                drop(timers);
                if retried.is_some() {
                    self.journal(&[(path, retried)]);
                }
                self.wake.notify_one();
            }
            None => {
                drop(slot);
                self.slots
                    .remove_if(path, |_, s| s.pending.is_none() && !s.inflight);
                drop(timers);
                self.journal(&[(path, None)]);
            }
        }
    }

    /// The earliest time an entry may become due, if any is pending.
    pub fn next_due(&self) -> Option<Instant> {
        self.timers().peek().map(|Reverse((t, _))| *t)
    }

    /// Waits until something is inserted or completed.
    pub async fn changed(&self) {
        self.wake.notified().await
    }

    /// Wakes the dispatcher (shutdown).
    pub fn wake(&self) {
        self.wake.notify_one()
    }

    /// Paths pending or in flight.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::ChangeKind::{self, *};

    fn map() -> (DedupMap, Instant) {
        (DedupMap::new(Duration::from_millis(50)), Instant::now())
    }

    fn ch(path: &str, kind: ChangeKind, is_dir: bool) -> Change {
        Change::new(path, kind, is_dir)
    }

    #[test]
    fn the_oldest_event_owed_a_transfer() {
        let (m, t0) = map();
        let ms = |n| t0 + Duration::from_millis(n);
        assert_eq!(m.oldest(), None);
        m.insert_all(&[ch("a/f", Created, false)], ms(0));
        m.insert_all(&[ch("b", Created, false)], ms(10));
        assert_eq!(m.oldest(), Some(ms(0)));
        // In flight, it is still owed; a newer event behind it does not make it younger.
        let taken = m.take_due(ms(100), 1, false);
        assert_eq!(paths(&taken), ["a/f"]);
        m.insert_all(&[ch("a/f", Modified, false)], ms(120));
        assert_eq!(m.oldest(), Some(ms(0)));
        m.complete(Path::new("a/f"), None);
        assert_eq!(m.oldest(), Some(ms(10)));
        // A path dropped under its directory's subtree transfer: that transfer owes its event.
        let (m, t0) = map();
        let ms = |n| t0 + Duration::from_millis(n);
        m.insert_all(&[ch("d/x", Created, false)], ms(0));
        m.insert_all(&[ch("d", MovedIn, true)], ms(30));
        let taken = m.take_due(ms(200), 10, false);
        assert_eq!(paths(&taken), ["d"]);
        assert_eq!(m.oldest(), Some(ms(0)));
        m.complete(Path::new("d"), None);
        assert_eq!(m.oldest(), None);
    }

    fn paths(taken: &[Taken]) -> Vec<String> {
        let mut v: Vec<_> = taken.iter().map(|t| t.path.display().to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn entries_wait_for_the_delay_and_coalesce() {
        let (m, t0) = map();
        m.insert_all(&[ch("a", Created, false), ch("a", Modified, false)], t0);
        assert!(m
            .take_due(t0 + Duration::from_millis(10), 100, false)
            .is_empty());
        m.insert_all(&[ch("a", Modified, false)], t0 + Duration::from_millis(40));
        // Debounced: the last event moved the due time.
        assert!(m
            .take_due(t0 + Duration::from_millis(60), 100, false)
            .is_empty());
        let got = m.take_due(t0 + Duration::from_millis(95), 100, false);
        assert_eq!(paths(&got), ["a"]);
        assert_eq!(got[0].pending.op, Op::Update);
        assert_eq!(m.coalesced(), 2, "three events, one entry");
        m.complete(Path::new("a"), None);
        assert!(m.is_empty());
        m.insert_all(&[ch("a", Modified, false)], t0 + Duration::from_millis(200));
        assert_eq!(
            m.coalesced(),
            2,
            "a new entry after the transfer folds nothing"
        );
    }

    /// A directory removed and made again after its deletion was taken: the deletion's rsync
    /// may run when the new directory is there (and leave the old contents on the target), so
    /// what follows it compares the whole subtree.
    #[test]
    fn a_directory_made_again_while_its_deletion_is_in_flight() {
        #[rustfmt::skip]
        let table: &[(&str, ChangeKind, bool, Op)] = &[
            // the change seen while the deletion of the directory `d` is in flight → the op after it
            ("made again", Created, true, Op::Tree),
            ("a file in its place", Created, false, Op::Update),
            ("renamed in", MovedIn, true, Op::Tree),
            ("removed again", Removed, true, Op::Delete),
        ];
        for &(why, kind, is_dir, want) in table {
            let (m, t0) = map();
            m.insert_all(&[ch("d", Removed, true)], t0);
            let got = m.take_due(t0 + Duration::from_secs(1), 10, false);
            assert_eq!(paths(&got), ["d"], "{why}");
            m.insert_all(&[ch("d", kind, is_dir)], t0 + Duration::from_secs(1));
            m.complete(Path::new("d"), None);
            let next = m.take_due(t0 + Duration::from_secs(2), 10, false);
            assert_eq!(paths(&next), ["d"], "{why}");
            assert_eq!(next[0].pending.op, want, "{why}");
            m.complete(Path::new("d"), None);
            // Once it is done, a new directory is a plain one again.
            m.insert_all(&[ch("d", Created, true)], t0 + Duration::from_secs(3));
            let later = m.take_due(t0 + Duration::from_secs(4), 10, false);
            assert_eq!(
                later[0].pending.op,
                Op::Update,
                "{why}: after the deletion ended"
            );
        }
        // A file's deletion in flight leaves a re-created file a plain update.
        let (m, t0) = map();
        m.insert_all(&[ch("f", Removed, false)], t0);
        let _ = m.take_due(t0 + Duration::from_secs(1), 10, false);
        m.insert_all(&[ch("f", Created, false)], t0 + Duration::from_secs(1));
        m.complete(Path::new("f"), None);
        let next = m.take_due(t0 + Duration::from_secs(2), 10, false);
        assert_eq!(next[0].pending.op, Op::Update);
    }

    #[test]
    fn a_busy_file_is_sent_within_max_wait() {
        let (m, t0) = map();
        for i in 0..100u64 {
            m.insert_all(
                &[ch("log", Modified, false)],
                t0 + Duration::from_millis(i * 10),
            );
        }
        let got = m.take_due(t0 + Duration::from_millis(500), 10, false);
        assert_eq!(paths(&got), ["log"]);
    }

    #[test]
    fn deleted_directory_subsumes_children() {
        let (m, t0) = map();
        m.insert_all(
            &[
                ch("d/x", Modified, false),
                ch("d/sub/y", Created, false),
                ch("d", Removed, true),
                ch("other", Modified, false),
            ],
            t0,
        );
        let got = m.take_due(t0 + Duration::from_secs(1), 100, false);
        assert_eq!(paths(&got), ["d", "other"]);
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn events_during_a_transfer_queue_behind_it() {
        let (m, t0) = map();
        m.insert_all(&[ch("f", Created, false)], t0);
        let got = m.take_due(t0 + Duration::from_secs(1), 10, false);
        assert_eq!(got.len(), 1);
        // Removed while the copy is in flight: must still be deleted afterwards.
        m.insert_all(&[ch("f", Removed, false)], t0 + Duration::from_secs(1));
        assert!(
            m.take_due(t0 + Duration::from_secs(5), 10, false)
                .is_empty(),
            "in flight"
        );
        m.complete(Path::new("f"), None);
        let got = m.take_due(t0 + Duration::from_secs(5), 10, false);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].pending.op, Op::Delete);
    }

    #[test]
    fn failed_transfers_come_back_under_newer_events() {
        let (m, t0) = map();
        m.insert_all(&[ch("d", Removed, true)], t0);
        let got = m.take_due(t0 + Duration::from_secs(1), 10, false);
        m.insert_all(&[ch("d", Created, true)], t0 + Duration::from_secs(1));
        let mut failed = got[0].pending.clone();
        failed.attempts += 1;
        failed.due = t0 + Duration::from_secs(3);
        m.complete(Path::new("d"), Some(failed));
        assert!(
            m.take_due(t0 + Duration::from_secs(2), 10, false)
                .is_empty(),
            "backoff"
        );
        let got = m.take_due(t0 + Duration::from_secs(3), 10, false);
        assert_eq!(
            got[0].pending.op,
            Op::Tree,
            "old contents must go: whole tree"
        );
        assert_eq!(got[0].pending.attempts, 1);
    }

    #[test]
    fn drain_ignores_the_delay() {
        let (m, t0) = map();
        m.insert_all(&[ch("a", Created, false), ch("b", Created, false)], t0);
        assert_eq!(m.take_due(t0, 10, true).len(), 2);
    }

    #[test]
    fn schedule_upgrades_pending_entries() {
        let (m, t0) = map();
        m.insert_all(&[ch("d", Modified, true)], t0);
        m.schedule(Path::new("d"), Op::Tree, t0);
        let got = m.take_due(t0 + Duration::from_millis(1), 10, false);
        assert_eq!(got[0].pending.op, Op::Tree);
    }
}
