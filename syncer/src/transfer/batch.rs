//! Batching decisions: which kind of rsync call an entry needs, how big a batch of one kind
//! and retry level may be, how a failed piece of the pass is cut for its retry, and the ready
//! queues (one FIFO per kind and level) batches are taken from. Plain functions and a plain
//! queue, tested with tables below.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::guard::Reach;
use crate::queue::{Op, Pending, Taken};
use crate::target::BatchKind;

/// The rsync call an entry of `op` goes out in.
pub fn kind_of(op: Op) -> BatchKind {
    match op {
        Op::Update | Op::Delete => BatchKind::Plain,
        Op::Tree => BatchKind::Tree,
        Op::Shallow => BatchKind::Shallow,
    }
}

/// Most entries in one batch of `kind` at retry `level`: `batch_max` plain paths, a sixteenth
/// of that for subtrees (each may be large), divided by 8 per failed attempt so that one bad
/// path ends up alone; at least one.
pub fn limit(kind: BatchKind, level: u32, batch_max: usize) -> usize {
    let base = match kind {
        BatchKind::Plain => batch_max,
        BatchKind::Tree | BatchKind::Shallow => batch_max.div_ceil(16),
    };
    (base >> (3 * level.min(10))).max(1)
}

/// How many entries each retry piece of a failed pass piece of `len` gets (eight pieces).
pub fn retry_piece(len: usize) -> usize {
    len.div_ceil(8).max(1)
}

/// Whether an entry writes a directory itself, its subtree, or deletes it (and so must come
/// after what is in flight below it).
pub fn dir_level(p: &Pending) -> bool {
    matches!(p.op, Op::Tree | Op::Shallow | Op::Delete) || p.is_dir
}

/// What a transfer of `op` covers at its path.
pub fn reach(op: Op) -> Reach {
    match op {
        Op::Update => Reach::Entry,
        Op::Delete | Op::Tree | Op::Shallow => Reach::Subtree,
    }
}

/// Whether an entry's `lstat` says some ancestor of it is no longer a directory: such a path
/// cannot exist, and rsync refuses it (ENOTDIR is not a missing argument), so it needs no
/// transfer of its own; the ancestor's transfer replaces the target's directory, children
/// included.
pub fn below_a_file(lstat: &std::io::Result<std::fs::Metadata>) -> bool {
    lstat
        .as_ref()
        .is_err_and(|e| e.raw_os_error() == Some(libc::ENOTDIR))
}

/// Longest a small live batch is held back by [`hold_live`].
pub const LINGER: Duration = Duration::from_millis(300);

/// Whether live work waits before it goes (Nagle's rule, while a pass is under way): when a
/// live batch is in flight already, ready entries fewer than a full batch (`full`) wait for it
/// to come back, or at most [`LINGER`] after the oldest of them was due; they then go as one
/// batch. Every rsync run costs a process on both hosts, and during a pass the CPU is what the
/// pass and the live changes share: fewer, bigger live batches leave the pass its pace for a
/// fraction of a second of latency. `Some(until)`: hold, and look again then.
pub fn hold_live(
    passing: bool,
    live_inflight: usize,
    ready: usize,
    full: usize,
    oldest_due: Instant,
    now: Instant,
) -> Option<Instant> {
    let until = oldest_due + LINGER;
    (passing && live_inflight > 0 && ready < full && until > now).then_some(until)
}

/// The ready entries, one FIFO queue per (batch kind, retry level).
#[derive(Default)]
pub struct Ready {
    queues: Vec<((BatchKind, u32), VecDeque<Taken>)>,
    len: usize,
}

impl Ready {
    fn queue(&mut self, t: &Taken) -> &mut VecDeque<Taken> {
        let k = (kind_of(t.pending.op), t.pending.attempts);
        let i = match self.queues.iter().position(|(qk, _)| *qk == k) {
            Some(i) => i,
            None => {
                self.queues.push((k, VecDeque::new()));
                self.queues.len() - 1
            }
        };
        &mut self.queues[i].1
    }

    pub fn push_back(&mut self, t: Taken) {
        self.len += 1;
        self.queue(&t).push_back(t);
    }

    /// An entry that waited goes back in front of its queue (it is older than the rest).
    pub fn push_front(&mut self, t: Taken) {
        self.len += 1;
        self.queue(&t).push_front(t);
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The (kind, level) of the queue whose first entry has been due longest.
    pub fn oldest(&mut self) -> Option<(BatchKind, u32)> {
        self.queues.retain(|(_, q)| !q.is_empty());
        self.queues
            .iter()
            .min_by_key(|(_, q)| q.front().map(|t| t.pending.due))
            .map(|(k, _)| *k)
    }

    /// When the entry that has been due longest became due.
    pub fn oldest_due(&self) -> Option<Instant> {
        self.queues
            .iter()
            .filter_map(|(_, q)| q.front().map(|t| t.pending.due))
            .min()
    }

    /// Takes the first entry of the (kind, level) queue.
    pub fn pop(&mut self, key: (BatchKind, u32)) -> Option<Taken> {
        let (_, q) = self.queues.iter_mut().find(|(k, _)| *k == key)?;
        let t = q.pop_front()?;
        self.len -= 1;
        Some(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::sync::Arc;
    use BatchKind::*;

    #[test]
    fn live_work_held_while_a_pass_runs() {
        let t0 = Instant::now();
        let ms = |n| Duration::from_millis(n);
        let linger = LINGER.as_millis() as u64;
        // passing, live in flight, ready, ms since the oldest was due, held until, why
        type Row = (bool, usize, usize, u64, Option<u64>, &'static str);
        #[rustfmt::skip]
        let table: &[Row] = &[
            // passing, live in flight, ready, ms since the oldest was due, held until (ms)
            (false, 1, 5, 0, None, "no pass: live work goes as it comes"),
            (true, 0, 5, 0, None, "nothing live in flight: goes at once"),
            (true, 1, 5, 0, Some(linger), "one in flight: waits for it"),
            (true, 3, 5, 100, Some(linger), "waits at most LINGER after being due"),
            (true, 1, 5, linger, None, "LINGER over: goes"),
            (true, 1, 5, linger + 50, None, "overdue: goes"),
            (true, 1, 2000, 0, None, "a full batch goes at once"),
            (true, 1, 1999, 0, Some(linger), "one short of full: waits"),
        ];
        for &(passing, inflight, ready, since, want, why) in table {
            let got = hold_live(passing, inflight, ready, 2000, t0, t0 + ms(since));
            assert_eq!(got, want.map(|w| t0 + ms(w)), "{why}");
        }
    }

    #[test]
    fn batch_limits() {
        #[rustfmt::skip]
        let table: &[(BatchKind, u32, usize, usize)] = &[
            // kind, retry level, batch_max, limit
            (Plain, 0, 2000, 2000),
            (Plain, 1, 2000, 250),
            (Plain, 2, 2000, 31),
            (Plain, 3, 2000, 3),
            (Plain, 4, 2000, 1),
            (Plain, 40, 2000, 1),
            (Tree, 0, 2000, 125),
            (Shallow, 0, 2000, 125),
            (Tree, 1, 2000, 15),
            (Tree, 2, 2000, 1),
            (Plain, 0, 1, 1),
            (Tree, 0, 1, 1),
        ];
        for &(kind, level, max, want) in table {
            assert_eq!(
                limit(kind, level, max),
                want,
                "{kind:?} level {level} max {max}"
            );
        }
    }

    #[test]
    fn retry_pieces() {
        for (len, want) in [(1, 1), (7, 1), (8, 1), (9, 2), (400, 50), (4001, 501)] {
            assert_eq!(retry_piece(len), want, "{len}");
        }
    }

    #[test]
    fn entries_and_what_they_cover() {
        #[rustfmt::skip]
        let table: &[(Op, bool, BatchKind, bool, Reach)] = &[
            // op, is a directory, batch kind, directory level, reach
            (Op::Update, false, Plain, false, Reach::Entry),
            (Op::Update, true, Plain, true, Reach::Entry),
            (Op::Delete, false, Plain, true, Reach::Subtree),
            (Op::Delete, true, Plain, true, Reach::Subtree),
            (Op::Tree, true, Tree, true, Reach::Subtree),
            (Op::Shallow, true, Shallow, true, Reach::Subtree),
        ];
        let t0 = Instant::now();
        for &(op, is_dir, kind, dl, r) in table {
            let p = pending(op, is_dir, 0, t0);
            assert_eq!(kind_of(op), kind, "{op:?}");
            assert_eq!(dir_level(&p), dl, "{op:?} dir={is_dir}");
            assert_eq!(reach(op), r, "{op:?}");
        }
    }

    fn pending(op: Op, is_dir: bool, attempts: u32, due: Instant) -> Pending {
        Pending {
            op,
            is_dir,
            first: due,
            last: due,
            due,
            attempts,
            closed_only: false,
        }
    }

    #[test]
    fn paths_below_a_file_cannot_exist() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("f"), b"").unwrap();
        std::fs::create_dir(d.path().join("dir")).unwrap();
        let below = |p: &str| below_a_file(&std::fs::symlink_metadata(d.path().join(p)));
        assert!(below("f/inside"));
        assert!(below("f/a/b"));
        assert!(!below("dir/missing"));
        assert!(!below("missing/x"));
        assert!(!below("f"));
    }

    #[test]
    fn the_queue_that_waited_longest_goes_first() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let taken = |p: &str, op, attempts, due| Taken {
            path: Arc::from(Path::new(p)),
            pending: pending(op, false, attempts, due),
        };
        let mut r = Ready::default();
        r.push_back(taken("new-plain", Op::Update, 0, at(30)));
        r.push_back(taken("old-tree", Op::Tree, 0, at(10)));
        r.push_back(taken("retry", Op::Update, 1, at(20)));
        assert_eq!(r.len(), 3);
        assert_eq!(r.oldest(), Some((Tree, 0)));
        assert_eq!(
            r.pop((Tree, 0)).unwrap().path.as_ref(),
            Path::new("old-tree")
        );
        assert_eq!(
            r.oldest(),
            Some((Plain, 1)),
            "a due retry before a newer first attempt"
        );
        r.push_front(taken("waited", Op::Update, 0, at(5)));
        assert_eq!(r.oldest(), Some((Plain, 0)));
        assert_eq!(
            r.pop((Plain, 0)).unwrap().path.as_ref(),
            Path::new("waited")
        );
        assert!(r.pop((Tree, 0)).is_none());
        assert_eq!(r.len(), 2);
    }
}
