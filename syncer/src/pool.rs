//! The transfer pool of one target: a dispatcher task and N shard tasks.
//!
//! The dispatcher takes due entries from the target's [`DedupMap`] into ready queues (one per
//! batch kind and retry level), groups them into batches and hands each batch to an idle shard
//! over a bounded channel; a shard runs one rsync process at a time on its batch and sends the
//! outcome back. The pool is the only place in syncer that spawns processes.
//!
//! Ordering: an entry that overlaps a transfer in flight that started before the entry's latest
//! event waits for it (see [`crate::guard`]); it is parked on the guard's node that blocks it
//! and handed back when that node changes, so a completion costs what it releases, never a scan
//! of what waits. Which shard runs a batch does not matter for correctness; shards are
//! interchangeable workers.
//!
//! The start-up pass (and a rescan of the whole tree) is a [`pass::Walk`] whose pieces go out
//! as shallow batches between the live work: live changes take a shard first, the pass always
//! has at least one piece in flight, and a live change in a directory waits at most for the one
//! piece in flight over it.
//!
//! Failures: a batch whose rsync says the target is unreachable goes back unchanged and the
//! whole target pauses with a growing backoff (other targets have their own pools and never wait
//! for this one); a partial failure goes back with a per-entry backoff and is retried in ever
//! smaller batches, so that one bad path ends up alone.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use crate::config::RsyncOptions;
use crate::dedup::{DedupMap, Op, Pending, Taken};
use crate::guard::{self, Guard, Reach, Seq};
use crate::pass::{Piece, PieceSize, Walk};
use crate::rsync::{self, BatchKind, Outcome};
use crate::target::Target;

/// Counters of one target's pool.
#[derive(Debug, Default)]
pub struct PoolStats {
    pub batches: AtomicU64,
    pub paths_done: AtomicU64,
    pub rsync_spawned: AtomicU64,
    pub failed_batches: AtomicU64,
    pub dropped_vanished: AtomicU64,
}

/// What the pool needs besides its target and map.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub source: PathBuf,
    pub shards: usize,
    pub rsync: RsyncOptions,
    pub drain_timeout: Duration,
    /// Run the start-up pass (compare the whole tree) first.
    pub initial_sync: bool,
    /// On shutdown, finish the start-up pass before returning (`syncer sync`); otherwise an
    /// unfinished pass is abandoned (the next start runs it again) and only the changes seen
    /// are drained.
    pub finish_pass_on_drain: bool,
}

/// How a pool ended.
#[derive(Debug)]
pub struct PoolReport {
    pub target: String,
    /// Paths still pending when the drain timeout ran out.
    pub undrained: usize,
}

/// Where a batch's entries came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// Taken from the dedup map (the map holds them in flight).
    Map,
    /// A piece of pass `gen`, at retry `level`.
    Pass { gen: u64, level: u32 },
}

struct Batch {
    kind: BatchKind,
    seq: Seq,
    origin: Origin,
    entries: Vec<Taken>,
}

struct BatchResult {
    shard: usize,
    batch: Batch,
    outcome: Outcome,
    stderr: String,
    elapsed: Duration,
}

/// Directories per pass piece at most, and entries per piece (see [`pass`]).
const PIECE_ENTRIES: u64 = 4096;

/// Runs the pool of `target` until `shutdown` turns true and the map has drained (or the drain
/// timeout ran out). With `cfg.initial_sync`, the whole tree is compared first, in pieces;
/// `initial_done` is told once all of it has been transferred.
pub async fn run(
    target: Target,
    map: Arc<DedupMap>,
    cfg: PoolConfig,
    initial_done: Option<tokio::sync::oneshot::Sender<()>>,
    mut shutdown: watch::Receiver<bool>,
    stats: Arc<PoolStats>,
) -> PoolReport {
    let (result_tx, mut result_rx) = mpsc::channel::<BatchResult>(cfg.shards);
    let mut shard_txs = Vec::with_capacity(cfg.shards);
    let mut shard_handles = Vec::with_capacity(cfg.shards);
    for shard in 0..cfg.shards {
        let (tx, rx) = mpsc::channel::<Batch>(1);
        shard_txs.push(tx);
        let ctx = ShardCtx {
            shard,
            target: target.clone(),
            source: cfg.source.clone(),
            rsync: cfg.rsync.clone(),
            results: result_tx.clone(),
            stats: stats.clone(),
        };
        shard_handles.push(tokio::spawn(shard_task(ctx, rx)));
    }
    drop(result_tx);

    let now = Instant::now();
    let mut d = Dispatcher::new(target.clone(), map.clone(), &cfg, stats, now);
    d.initial_done = initial_done;
    if cfg.initial_sync {
        d.start_pass(PathBuf::new(), true, now);
    }
    d.check_pass_done(now);

    let mut draining = *shutdown.borrow();
    let mut drain_started: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if draining && drain_started.is_none() {
            drain_started = Some(now);
            if !cfg.finish_pass_on_drain {
                d.abandon_pass();
            }
        }
        // Shutdown gives up only after the drain made no progress for the whole timeout, so a
        // long transfer still finishes while an unreachable target does not hold the exit.
        let deadline = drain_started.map(|t| t.max(d.last_progress) + cfg.drain_timeout);
        let past_deadline = deadline.is_some_and(|t| now >= t);
        if !past_deadline {
            d.dispatch(now, draining, &shard_txs).await;
        }
        let busy = cfg.shards - d.idle.len();
        let work_left = !map.is_empty() || d.pass.is_some();
        if draining && (!work_left || past_deadline) && busy == 0 {
            break;
        }
        let wake = d.next_wake(now, draining, deadline);
        let wants_piece = d.wants_piece();
        let event = tokio::select! {
            Some(res) = result_rx.recv() => Event::Result(res),
            piece = next_piece(&mut d.pass), if wants_piece => Event::Piece(piece),
            _ = map.changed() => Event::Wake,
            _ = tokio::time::sleep_until(wake.into()) => Event::Wake,
            changed = shutdown.changed(), if !draining => {
                Event::Shutdown(changed.is_err() || *shutdown.borrow())
            }
        };
        match event {
            Event::Result(res) => d.finish(res),
            Event::Piece(p) => d.piece_arrived(p, Instant::now()),
            Event::Wake => {}
            Event::Shutdown(s) => draining = s,
        }
    }
    drop(shard_txs);
    for h in shard_handles {
        let _ = h.await;
    }
    let undrained = map.len();
    if undrained > 0 {
        error!(target = %target, undrained, "shutdown: changes not replicated to this target (the next start's initial sync will pick them up)");
    }
    PoolReport {
        target: target.display.clone(),
        undrained,
    }
}

enum Event {
    Result(BatchResult),
    Piece(Option<Piece>),
    Wake,
    Shutdown(bool),
}

async fn next_piece(pass: &mut Option<PassState>) -> Option<Piece> {
    match pass.as_mut().and_then(|p| p.walk.as_mut()) {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}

/// A pass under way: the walk, the piece read ahead, pieces to retry.
struct PassState {
    gen: u64,
    /// The start-up pass (its end is "initial sync finished"), or a rescan.
    initial: bool,
    /// `None` once the walk has handed out its last piece.
    walk: Option<Walk>,
    next: Option<Piece>,
    /// Failed pieces: when they may go again, their retry level.
    retry: VecDeque<(Instant, u32, Piece)>,
    inflight: usize,
    started: Instant,
    dirs_done: u64,
    /// Directories handed to the map after failing alone.
    failed_dirs: u64,
}

/// The ready entries, one FIFO queue per (batch kind, retry level).
#[derive(Default)]
struct Ready {
    queues: Vec<((BatchKind, u32), VecDeque<Taken>)>,
    len: usize,
}

impl Ready {
    fn queue(&mut self, t: &Taken) -> &mut VecDeque<Taken> {
        let k = (BatchKind::of(t.pending.op), t.pending.attempts);
        let i = match self.queues.iter().position(|(qk, _)| *qk == k) {
            Some(i) => i,
            None => {
                self.queues.push((k, VecDeque::new()));
                self.queues.len() - 1
            }
        };
        &mut self.queues[i].1
    }

    fn push_back(&mut self, t: Taken) {
        self.len += 1;
        self.queue(&t).push_back(t);
    }

    /// An entry that waited goes back in front of its queue (it is older than the rest).
    fn push_front(&mut self, t: Taken) {
        self.len += 1;
        self.queue(&t).push_front(t);
    }

    /// The queue whose first entry has been due longest.
    fn oldest(&mut self) -> Option<(BatchKind, u32, &mut VecDeque<Taken>)> {
        self.queues.retain(|(_, q)| !q.is_empty());
        let ((kind, level), q) = self
            .queues
            .iter_mut()
            .min_by_key(|(_, q)| q.front().map(|t| t.pending.due))?;
        Some((*kind, *level, q))
    }
}

struct Dispatcher {
    target: Target,
    map: Arc<DedupMap>,
    batch_max: usize,
    idle: Vec<usize>,
    /// Taken from the map, waiting for a shard.
    ready: Ready,
    /// What is in flight where; entries waiting for a conflicting transfer are parked in it.
    guard: Guard<Taken>,
    next_seq: Seq,
    /// Subtree transfers (tree, shallow) in flight, and when the last one ended.
    trees_inflight: usize,
    last_tree_end: Option<Instant>,
    down_until: Option<Instant>,
    down_backoff: Duration,
    pass: Option<PassState>,
    pass_gen: u64,
    piece_size: PieceSize,
    initial_done: Option<tokio::sync::oneshot::Sender<()>>,
    stats: Arc<PoolStats>,
    source: PathBuf,
    /// When a batch last succeeded.
    last_progress: Instant,
}

impl Dispatcher {
    fn new(
        target: Target,
        map: Arc<DedupMap>,
        cfg: &PoolConfig,
        stats: Arc<PoolStats>,
        now: Instant,
    ) -> Dispatcher {
        Dispatcher {
            target,
            map,
            batch_max: cfg.rsync.batch_max,
            idle: (0..cfg.shards).rev().collect(),
            ready: Ready::default(),
            guard: Guard::default(),
            next_seq: 0,
            trees_inflight: 0,
            last_tree_end: None,
            down_until: None,
            down_backoff: Duration::ZERO,
            pass: None,
            pass_gen: 0,
            piece_size: PieceSize {
                entries: PIECE_ENTRIES,
                dirs: cfg.rsync.batch_max,
            },
            initial_done: None,
            stats,
            source: cfg.source.clone(),
            last_progress: now,
        }
    }

    async fn dispatch(&mut self, now: Instant, draining: bool, shards: &[mpsc::Sender<Batch>]) {
        if self.down_until.is_some_and(|t| now < t) {
            return;
        }
        while let Some(&shard) = self.idle.last() {
            self.fill_ready(now, draining);
            let Some(batch) = self.next_batch(now) else {
                break;
            };
            self.idle.pop();
            self.stats.batches.fetch_add(1, Ordering::Relaxed);
            if shards[shard].send(batch).await.is_err() {
                error!(target = %self.target, shard, "shard task is gone");
                return;
            }
        }
    }

    /// Moves due entries from the map into the ready queues, dropping those that need no
    /// transfer. A rescan of the whole tree becomes a pass.
    fn fill_ready(&mut self, now: Instant, draining: bool) {
        let want = self.batch_max.saturating_sub(self.ready.len);
        if want == 0 {
            return;
        }
        for t in self.map.take_due(now, want, draining) {
            if t.pending.op == Op::Tree && t.path.as_os_str().is_empty() {
                // Overflow or lost events: compare the whole tree again, in pieces.
                let initial = self.pass.as_ref().is_some_and(|p| p.initial);
                info!(target = %self.target, "rescanning the whole tree");
                self.start_pass(PathBuf::new(), initial, now);
                self.map.complete(&t.path, None);
                continue;
            }
            if t.pending.vanished() && self.no_tree_since(t.pending.first) {
                // Created and removed before any transfer could have copied it.
                self.stats.dropped_vanished.fetch_add(1, Ordering::Relaxed);
                self.map.complete(&t.path, None);
                continue;
            }
            if below_a_non_directory(&self.source, &t.path) {
                // A directory above it was replaced by a file (or symlink): the path cannot
                // exist, and rsync refuses it (ENOTDIR is not a missing argument). The
                // ancestor's own transfer replaces the target's directory, children included.
                self.stats.dropped_vanished.fetch_add(1, Ordering::Relaxed);
                self.map.complete(&t.path, None);
                continue;
            }
            self.ready.push_back(t);
        }
    }

    /// The next batch: live work first, but the pass always keeps one piece in flight.
    fn next_batch(&mut self, now: Instant) -> Option<Batch> {
        let pass_turn = self.pass.as_ref().is_some_and(|p| p.inflight == 0);
        if !pass_turn {
            if let Some(b) = self.next_map_batch(now) {
                return Some(b);
            }
        }
        self.next_pass_batch(now)
            .or_else(|| self.next_map_batch(now))
    }

    /// A batch from the ready queue that has waited longest: entries of one kind and retry
    /// level, none of which overlaps a transfer in flight that started before its last event.
    fn next_map_batch(&mut self, now: Instant) -> Option<Batch> {
        loop {
            let (kind, level, q) = self.ready.oldest()?;
            let limit = match kind {
                BatchKind::Plain => self.batch_max,
                _ => self.batch_max.div_ceil(16),
            };
            let limit = (limit >> (3 * level.min(10))).max(1);
            let mut entries = Vec::new();
            let mut taken = 0;
            while entries.len() < limit {
                let Some(t) = q.pop_front() else { break };
                taken += 1;
                let dir_level = dir_level(&t.pending);
                match self
                    .guard
                    .blocker(guard::key(&t.path), t.pending.last, dir_level)
                {
                    Some(b) => {
                        let (node, below) = (b.node.to_vec(), b.below);
                        self.guard.wait(&node, below, t);
                    }
                    None => entries.push(t),
                }
            }
            self.ready.len -= taken;
            if entries.is_empty() {
                continue; // everything in that queue waits: try the next one
            }
            return Some(self.launch(kind, Origin::Map, entries, now));
        }
    }

    /// The next piece of the pass (a due retry first), as a shallow batch.
    fn next_pass_batch(&mut self, now: Instant) -> Option<Batch> {
        let p = self.pass.as_mut()?;
        let (level, piece) = if p.retry.front().is_some_and(|(due, _, _)| *due <= now) {
            let (_, level, piece) = p.retry.pop_front().expect("checked");
            (level, piece)
        } else {
            (0, p.next.take()?)
        };
        p.inflight += 1;
        let origin = Origin::Pass { gen: p.gen, level };
        let entries = piece
            .dirs
            .into_iter()
            .map(|dir| Taken {
                path: Arc::from(dir.as_path()),
                pending: Pending {
                    op: Op::Shallow,
                    is_dir: true,
                    born: false,
                    first: now,
                    last: now,
                    due: now,
                    attempts: level,
                },
            })
            .collect();
        Some(self.launch(BatchKind::Shallow, origin, entries, now))
    }

    /// Marks a batch's entries in flight.
    fn launch(
        &mut self,
        kind: BatchKind,
        origin: Origin,
        entries: Vec<Taken>,
        now: Instant,
    ) -> Batch {
        let seq = self.next_seq;
        self.next_seq += 1;
        for t in &entries {
            self.guard
                .mark(guard::key(&t.path), seq, now, reach(t.pending.op));
            if matches!(t.pending.op, Op::Tree | Op::Shallow) {
                self.trees_inflight += 1;
            }
        }
        Batch {
            kind,
            seq,
            origin,
            entries,
        }
    }

    fn no_tree_since(&self, since: Instant) -> bool {
        self.trees_inflight == 0 && self.last_tree_end.is_none_or(|end| end < since)
    }

    /// Ends what a batch held in flight; entries parked behind it go back to the ready queues.
    fn land(&mut self, batch: &Batch, now: Instant) {
        let mut released = Vec::new();
        for t in &batch.entries {
            self.guard
                .unmark(guard::key(&t.path), batch.seq, &mut released);
            if matches!(t.pending.op, Op::Tree | Op::Shallow) {
                self.trees_inflight -= 1;
                self.last_tree_end = Some(now);
            }
        }
        // Released in the order they were parked, each in front of its queue: reverse so the
        // oldest ends up first.
        for t in released.into_iter().rev() {
            self.ready.push_front(t);
        }
    }

    fn finish(&mut self, res: BatchResult) {
        let now = Instant::now();
        self.idle.push(res.shard);
        self.land(&res.batch, now);
        let n = res.batch.entries.len();
        match res.outcome {
            o if o.succeeded() => {
                if self.down_until.take().is_some() {
                    info!(target = %self.target, "target back up");
                }
                self.down_backoff = Duration::ZERO;
                self.last_progress = now;
                self.stats.paths_done.fetch_add(n as u64, Ordering::Relaxed);
                debug!(target = %self.target, kind = ?res.batch.kind, origin = ?res.batch.origin, paths = n, ms = res.elapsed.as_millis() as u64, "batch done");
                if o == Outcome::Vanished {
                    debug!(target = %self.target, "some files vanished during transfer: {}", res.stderr.trim());
                }
                match res.batch.origin {
                    Origin::Map => {
                        for t in &res.batch.entries {
                            self.map.complete(&t.path, None);
                        }
                    }
                    Origin::Pass { gen, .. } => {
                        if let Some(p) = self.pass.as_mut().filter(|p| p.gen == gen) {
                            p.inflight -= 1;
                            p.dirs_done += n as u64;
                        }
                        self.check_pass_done(now);
                    }
                }
            }
            Outcome::TargetDown => {
                self.stats.failed_batches.fetch_add(1, Ordering::Relaxed);
                self.down_backoff = (self.down_backoff * 2)
                    .clamp(Duration::from_millis(500), Duration::from_secs(30));
                self.down_until = Some(now + self.down_backoff);
                warn!(target = %self.target, retry_in_ms = self.down_backoff.as_millis() as u64, pending = self.map.len(),
                      "target down: {}", last_line(&res.stderr));
                self.requeue_down(res.batch, now);
            }
            outcome => {
                self.stats.failed_batches.fetch_add(1, Ordering::Relaxed);
                let level = res.batch.entries.first().map_or(0, |t| t.pending.attempts) + 1;
                let backoff = retry_backoff(level);
                let msg = format!(
                    "rsync {outcome:?} on a batch of {n} path(s), retrying in {}s: {}",
                    backoff.as_secs(),
                    res.stderr.trim()
                );
                if outcome == Outcome::Fatal {
                    error!(target = %self.target, "{msg}");
                } else {
                    warn!(target = %self.target, "{msg}");
                }
                self.requeue_failed(res.batch, level, now + backoff);
            }
        }
    }

    /// A batch the target could not take: the same batch again once it is back.
    fn requeue_down(&mut self, batch: Batch, now: Instant) {
        match batch.origin {
            Origin::Map => {
                // A receiver killed mid-transfer can leave its temporary files behind; once the
                // target is back, a shallow pass with --delete over each directory that had a
                // file in flight removes them.
                let mut dirs = std::collections::BTreeSet::new();
                for t in batch.entries {
                    if batch.kind == BatchKind::Plain {
                        dirs.insert(t.path.parent().map(Path::to_path_buf).unwrap_or_default());
                    }
                    let mut p = t.pending;
                    p.due = now;
                    self.map.complete(&t.path, Some(p));
                }
                for dir in dirs {
                    self.map
                        .schedule(&dir, Op::Shallow, now + Duration::from_millis(1));
                }
            }
            Origin::Pass { gen, level } => {
                // Pieces are shallow passes with --delete: their retry removes leftovers too.
                if let Some(p) = self.pass.as_mut().filter(|p| p.gen == gen) {
                    p.inflight -= 1;
                    p.retry.push_front((now, level, piece_of(&batch.entries)));
                }
            }
        }
    }

    /// A batch that failed in part: its entries again after `due`, in smaller batches.
    fn requeue_failed(&mut self, batch: Batch, level: u32, due: Instant) {
        match batch.origin {
            Origin::Map => {
                for t in batch.entries {
                    let mut p = t.pending;
                    p.attempts = level;
                    p.due = due;
                    self.map.complete(&t.path, Some(p));
                }
            }
            Origin::Pass { gen, .. } => {
                let Some(p) = self.pass.as_mut().filter(|p| p.gen == gen) else {
                    return; // a newer pass covers it
                };
                p.inflight -= 1;
                if batch.entries.len() == 1 {
                    // Failing alone: the map retries it from here on (with backoff, like any
                    // change), and the pass goes on without it.
                    p.failed_dirs += 1;
                    self.map.schedule(&batch.entries[0].path, Op::Shallow, due);
                } else {
                    let part = batch.entries.len().div_ceil(8);
                    for chunk in batch.entries.chunks(part) {
                        p.retry.push_back((due, level, piece_of(chunk)));
                    }
                }
                self.check_pass_done(Instant::now());
            }
        }
    }

    /// Starts a pass over `rel` (replacing one under way: its pieces in flight finish, the rest
    /// is walked again).
    fn start_pass(&mut self, rel: PathBuf, initial: bool, now: Instant) {
        self.pass_gen += 1;
        let walk = match Walk::start(self.source.clone(), rel.clone(), self.piece_size) {
            Ok(w) => Some(w),
            Err(e) => {
                // Without a walker thread, one subtree transfer of the whole tree does it.
                error!(target = %self.target, "cannot start the tree walk ({e}); comparing the tree in one transfer");
                self.map.schedule(&rel, Op::Tree, now);
                None
            }
        };
        self.pass = Some(PassState {
            gen: self.pass_gen,
            initial,
            walk,
            next: None,
            retry: VecDeque::new(),
            inflight: 0,
            started: now,
            dirs_done: 0,
            failed_dirs: 0,
        });
    }

    fn wants_piece(&self) -> bool {
        self.pass
            .as_ref()
            .is_some_and(|p| p.walk.is_some() && p.next.is_none())
    }

    fn piece_arrived(&mut self, piece: Option<Piece>, now: Instant) {
        let Some(p) = self.pass.as_mut() else { return };
        match piece {
            Some(piece) => p.next = Some(piece),
            None => {
                p.walk = None;
                self.check_pass_done(now);
            }
        }
    }

    /// Ends the pass once it is walked and every piece is on the target.
    fn check_pass_done(&mut self, now: Instant) {
        let done = self.pass.as_ref().is_none_or(|p| {
            p.walk.is_none() && p.next.is_none() && p.retry.is_empty() && p.inflight == 0
        });
        if !done {
            return;
        }
        if let Some(p) = self.pass.take() {
            info!(
                target = %self.target,
                ms = now.duration_since(p.started).as_millis() as u64,
                dirs = p.dirs_done,
                failed_dirs = p.failed_dirs,
                "{}", if p.initial { "start-up pass done" } else { "rescan done" }
            );
            if !p.initial {
                return;
            }
        }
        if let Some(tx) = self.initial_done.take() {
            let _ = tx.send(());
        }
    }

    /// Shutdown while a pass is under way: its pieces in flight finish, the rest is left to the
    /// next start.
    fn abandon_pass(&mut self) {
        if let Some(p) = self.pass.take() {
            let walked = p
                .walk
                .as_ref()
                .map(|w| w.stats.dirs.load(Ordering::Relaxed));
            warn!(target = %self.target, dirs_done = p.dirs_done, dirs_walked = ?walked,
                  "shutdown during the {}: the rest is compared at the next start",
                  if p.initial { "start-up pass" } else { "rescan" });
        }
    }

    /// When the loop must look again, at the latest.
    fn next_wake(&self, now: Instant, draining: bool, deadline: Option<Instant>) -> Instant {
        let idle = Duration::from_secs(3600);
        let mut wake = self.map.next_due().unwrap_or(now + idle);
        if draining && !self.map.is_empty() {
            wake = wake.min(now + Duration::from_millis(50));
        }
        if let Some(&(due, _, _)) = self.pass.as_ref().and_then(|p| p.retry.front()) {
            wake = wake.min(due);
        }
        if self.idle.is_empty() || self.down_until.is_some_and(|t| t > now) {
            // Nothing can be sent before a shard frees up (a result wakes us) or the target's
            // backoff ends.
            wake = self.down_until.filter(|&t| t > now).unwrap_or(now + idle);
        }
        // A deadline already past must not make the loop spin while a shard is still busy.
        match deadline.filter(|&t| t > now) {
            Some(t) => wake.min(t),
            None => wake,
        }
    }
}

/// Whether an entry writes a directory itself, its subtree, or deletes it (and so must come
/// after what is in flight below it).
fn dir_level(p: &Pending) -> bool {
    matches!(p.op, Op::Tree | Op::Shallow | Op::Delete) || p.is_dir
}

/// What a transfer of `op` covers at its path.
fn reach(op: Op) -> Reach {
    match op {
        Op::Update => Reach::Entry,
        Op::Delete | Op::Tree | Op::Shallow => Reach::Subtree,
    }
}

/// The backoff of a partial failure at retry `level`: 2, 4, 8 ... s, at most 60 s.
fn retry_backoff(level: u32) -> Duration {
    Duration::from_secs(1 << level.min(6)).min(Duration::from_secs(60))
}

fn piece_of(entries: &[Taken]) -> Piece {
    Piece {
        dirs: entries.iter().map(|t| t.path.to_path_buf()).collect(),
        entries: 0,
    }
}

/// Whether some ancestor of `path` in `source` is no longer a directory.
fn below_a_non_directory(source: &Path, path: &Path) -> bool {
    !path.as_os_str().is_empty()
        && std::fs::symlink_metadata(source.join(path))
            .is_err_and(|e| e.raw_os_error() == Some(libc::ENOTDIR))
}

fn last_line(s: &str) -> &str {
    s.trim()
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("(no message)")
}

struct ShardCtx {
    shard: usize,
    target: Target,
    source: PathBuf,
    rsync: RsyncOptions,
    results: mpsc::Sender<BatchResult>,
    stats: Arc<PoolStats>,
}

async fn shard_task(ctx: ShardCtx, mut rx: mpsc::Receiver<Batch>) {
    while let Some(batch) = rx.recv().await {
        let start = Instant::now();
        let (outcome, stderr) = run_rsync(&ctx, &batch).await;
        let res = BatchResult {
            shard: ctx.shard,
            batch,
            outcome,
            stderr,
            elapsed: start.elapsed(),
        };
        if ctx.results.send(res).await.is_err() {
            break;
        }
    }
}

/// Whether a plain batch writes entries directly in the source root. rsync writes a file by
/// renaming a temporary file into place, which moves the mtime of the target's directory;
/// it restores the mtimes of the directories in its file list at the end, and `--relative`
/// puts every parent directory of a listed path in that list, except the root itself. So the
/// root goes in explicitly.
fn touches_root_entries(entries: &[Taken]) -> bool {
    let mut root_listed = false;
    let mut root_child = false;
    for t in entries {
        match t.path.parent() {
            None => root_listed = true,
            Some(p) if p.as_os_str().is_empty() => root_child = true,
            Some(_) => {}
        }
    }
    root_child && !root_listed
}

/// Most of rsync's stderr kept for the log.
const STDERR_KEEP: usize = 8192;

async fn run_rsync(ctx: &ShardCtx, batch: &Batch) -> (Outcome, String) {
    let mut list = Vec::with_capacity(batch.entries.len() * 32);
    for t in &batch.entries {
        rsync::push_entry(&mut list, &t.path, batch.kind);
    }
    if batch.kind == BatchKind::Plain && touches_root_entries(&batch.entries) {
        rsync::push_entry(&mut list, Path::new(""), batch.kind);
    }
    let args = rsync::args(&ctx.rsync, batch.kind, &ctx.source, &ctx.target);
    let mut cmd = tokio::process::Command::new(&ctx.rsync.program);
    cmd.args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return (
                Outcome::Fatal,
                format!("cannot run {}: {e}", ctx.rsync.program.display()),
            )
        }
    };
    ctx.stats.rsync_spawned.fetch_add(1, Ordering::Relaxed);
    let mut stdin = child.stdin.take().expect("piped stdin");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let writer = async move {
        // rsync may exit early (target down) and close the pipe: that is reported by its exit code.
        let _ = stdin.write_all(&list).await;
        drop(stdin);
    };
    let reader = async move {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match stderr.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.len() > 2 * STDERR_KEEP {
                        buf.drain(..buf.len() - STDERR_KEEP);
                    }
                }
            }
        }
        buf
    };
    let (_, err) = tokio::join!(writer, reader);
    let status = child.wait().await;
    let text = String::from_utf8_lossy(&err).into_owned();
    match status {
        Ok(s) => (Outcome::from_exit(s.code()), text),
        Err(e) => (Outcome::TargetDown, format!("waiting for rsync: {e}")),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn paths_below_a_file_cannot_exist() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("f"), b"").unwrap();
        std::fs::create_dir(d.path().join("dir")).unwrap();
        let below = |p: &str| super::below_a_non_directory(d.path(), std::path::Path::new(p));
        assert!(below("f/inside"));
        assert!(below("f/a/b"));
        assert!(!below("dir/missing"));
        assert!(!below("missing/x"));
        assert!(!below("f"));
        assert!(!below(""));
    }
}
