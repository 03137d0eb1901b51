//! The dispatcher of one target: takes due entries from the map into the ready queues, builds
//! batches no conflicting transfer holds back, sends the start-up pass's pieces between them,
//! and settles each batch's outcome (forget, retry, pause the target).
//!
//! Ordering: an entry that overlaps a transfer in flight that started before the entry's latest
//! event waits for it ([`super::guard`]); it is parked on the guard's node that blocks it and
//! handed back when that node changes, so a completion costs what it releases, never a scan of
//! what waits. Live work takes a shard first; the pass always keeps one piece in flight.

use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, trace, warn};

use super::batch::{self, Ready};
use super::guard::{self, Guard, Seq};
use super::health::{retry_backoff, Health};
use super::links::Links;
use super::passes::{entries_of, piece_of, PassState};
use super::shard::BatchResult;
use super::{Batch, CatchUp, Origin, PoolConfig, PoolError, PoolStats};
use crate::queue::pass::{Piece, PieceSize};
use crate::queue::{DedupMap, Op, Taken};
use crate::state::meta::Meta;
use crate::state::{IndexUpdate, TargetState};
use crate::target::{BatchKind, Outcome, Target};

/// Most entries of a directory read when looking for an inode's other names there.
const LOOK_MAX: usize = 4096;

/// Entries per pass piece (see [`crate::queue::pass`]); at most `batch_max` directories.
const PIECE_ENTRIES: u64 = 4096;

pub struct Dispatcher {
    pub(super) target: Target,
    pub(super) map: Arc<DedupMap>,
    batch_max: usize,
    pub idle: Vec<usize>,
    /// Taken from the map, waiting for a shard.
    ready: Ready,
    /// What is in flight where; entries waiting for a conflicting transfer are parked in it.
    guard: Guard<Taken>,
    next_seq: Seq,
    /// Subtree transfers (tree, shallow) in flight, and when the last one ended.
    trees_inflight: usize,
    last_tree_end: Option<Instant>,
    pub(super) health: Health,
    links: Links,
    /// What fill_ready's lstat saw of plain entries still waiting (see [`Batch`]).
    seen: hashbrown::HashMap<Arc<Path>, Option<Meta>>,
    /// When a still-down target was last said to be down (the log says so once a minute).
    down_logged: Option<Instant>,
    pub(super) pass: Option<PassState>,
    pub(super) pass_gen: u64,
    /// False once a shutdown has abandoned the pass: a rescan asked for then is left to the
    /// next start, like the rest of the pass.
    pub(super) passes_allowed: bool,
    pub(super) piece_size: PieceSize,
    pub initial_done: Option<oneshot::Sender<()>>,
    pub state: Option<Arc<TargetState>>,
    pub catch_up: Option<CatchUp>,
    stats: Arc<PoolStats>,
    pub(super) source: PathBuf,
    /// When a batch last succeeded.
    pub last_progress: Instant,
}

impl Dispatcher {
    pub fn new(
        target: Target,
        map: Arc<DedupMap>,
        cfg: &PoolConfig,
        stats: Arc<PoolStats>,
        now: Instant,
    ) -> Dispatcher {
        Dispatcher {
            target,
            map,
            batch_max: cfg.batch_max,
            idle: (0..cfg.shards).rev().collect(),
            ready: Ready::default(),
            guard: Guard::default(),
            next_seq: 0,
            trees_inflight: 0,
            last_tree_end: None,
            health: Health::new(cfg.can_probe),
            links: Links::default(),
            seen: hashbrown::HashMap::new(),
            down_logged: None,
            pass: None,
            pass_gen: 0,
            passes_allowed: true,
            piece_size: PieceSize {
                entries: PIECE_ENTRIES,
                dirs: cfg.batch_max,
            },
            initial_done: None,
            state: None,
            catch_up: None,
            stats,
            source: cfg.source.clone(),
            last_progress: now,
        }
    }

    /// Hands batches to idle shards while there is work that may go.
    pub async fn dispatch(
        &mut self,
        now: Instant,
        draining: bool,
        shards: &[mpsc::Sender<Batch>],
    ) -> Result<(), PoolError> {
        if self.health.is_down(now) {
            return Ok(());
        }
        while let Some(&shard) = self.idle.last() {
            self.fill_ready(now, draining);
            let Some(batch) = self.next_batch(now) else {
                break;
            };
            self.idle.pop();
            self.stats.batches.fetch_add(1, Ordering::Relaxed);
            if shards[shard].send(batch).await.is_err() {
                return Err(PoolError::ShardGone(shard));
            }
        }
        Ok(())
    }

    /// Moves due entries from the map into the ready queues, dropping those that need no
    /// transfer. A rescan of the whole tree becomes a pass.
    fn fill_ready(&mut self, now: Instant, draining: bool) {
        let want = self.batch_max.saturating_sub(self.ready.len());
        if want == 0 {
            return;
        }
        let mut linked = Vec::new();
        for t in self.map.take_due(now, want, draining) {
            if t.pending.op == Op::Tree && t.path.as_os_str().is_empty() {
                // Overflow or lost events: compare the whole tree again; with a complete
                // index, locally against it, else with rsync in pieces.
                if self.catch_up.as_ref().is_some_and(|c| c()) {
                    info!(target = %self.target, "comparing the whole tree with the index");
                } else if self.passes_allowed {
                    let initial = self.pass.as_ref().is_some_and(|p| p.initial);
                    info!(target = %self.target, "rescanning the whole tree");
                    self.start_pass(PathBuf::new(), initial, now);
                } else {
                    warn!(target = %self.target, "a rescan of the whole tree was asked for during shutdown: the next start compares the tree");
                }
                self.map.complete(&t.path, None);
                continue;
            }
            if t.pending.op == Op::Delete && !t.pending.is_dir {
                self.unlinked(&t.path, now);
            }
            let vanished = t.pending.vanished() && self.no_tree_since(t.pending.first);
            let meta = std::fs::symlink_metadata(self.source.join(&t.path));
            // A path below a directory that was replaced by a file (or symlink) cannot exist,
            // and rsync refuses it (ENOTDIR is not a missing argument); the ancestor's own
            // transfer replaces the target's directory, children included.
            if vanished || batch::below_a_file(&meta) {
                trace!(path = %t.path.display(), vanished, "dropped");
                self.stats.dropped_vanished.fetch_add(1, Ordering::Relaxed);
                self.map.complete(&t.path, None);
                continue;
            }
            if let Ok(m) = &meta {
                if m.is_file() && t.pending.op == Op::Update && m.nlink() > 1 {
                    linked.push((t.path.clone(), m.clone()));
                }
            }
            if self.state.is_some() && batch::kind_of(t.pending.op) == BatchKind::Plain {
                // The certificate the index gets if the transfer succeeds (an lstat before the
                // transfer reads the file; kept while the entry waits, which only makes it older).
                match &meta {
                    Ok(m) => {
                        self.seen
                            .insert(t.path.clone(), Some(Meta::from_metadata(m)));
                    }
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                        self.seen.insert(t.path.clone(), None);
                    }
                    Err(_) => {}
                }
            }
            self.ready.push_back(t);
        }
        if !linked.is_empty() {
            self.other_links(&linked, now);
        }
    }

    /// Files with several links changed under one name each: their other known names changed
    /// too. Names not known yet are looked for in each entry's directory, each directory read
    /// once per call and only its first [`LOOK_MAX`] entries (a directory of a million fresh
    /// links costs a bounded read per batch, not one per link).
    fn other_links(&mut self, changed: &[(Arc<Path>, std::fs::Metadata)], now: Instant) {
        self.learn_links(now);
        let mut look: hashbrown::HashMap<&Path, hashbrown::HashSet<u64>> =
            hashbrown::HashMap::new();
        for (path, m) in changed {
            if (self.links.known(m.ino()) as u64) < m.nlink() {
                let dir = path.parent().unwrap_or(Path::new(""));
                look.entry(dir).or_default().insert(m.ino());
            }
        }
        for (dir, inodes) in look {
            if let Ok(rd) = std::fs::read_dir(self.source.join(dir)) {
                for e in rd.flatten().take(LOOK_MAX) {
                    if inodes.contains(&e.ino()) {
                        self.links.add(Arc::from(dir.join(e.file_name())), e.ino());
                    }
                }
            }
        }
        for (path, m) in changed {
            self.propagate(path, m, now);
        }
    }

    /// Queues the other known names of `path`'s inode, once per change of its ctime.
    fn propagate(&mut self, path: &Arc<Path>, m: &std::fs::Metadata, now: Instant) {
        let others = self
            .links
            .seen(path, m.ino(), m.nlink(), (m.ctime(), m.ctime_nsec()));
        trace!(target = %self.target, path = %path.display(), ino = m.ino(), nlink = m.nlink(), known = self.links.known(m.ino()), others = others.len(), "hard-linked file changed");
        self.queue_other_names(m.ino(), others, now);
    }

    /// Queues the names in `others` that still are inode `ino`; forgets those that are not.
    fn queue_other_names(&mut self, ino: u64, others: Vec<Arc<Path>>, now: Instant) {
        for other in others {
            match std::fs::symlink_metadata(self.source.join(&*other)) {
                Ok(o) if o.ino() == ino => {
                    trace!(target = %self.target, other = %other.display(), "another name of a changed inode queued");
                    self.map.restore(&other, Op::Update, false, now);
                }
                _ => self.links.forget(ino, &other),
            }
        }
    }

    /// Takes the hard-linked names the walks met (the catch-up walk, subtree transfers'
    /// reading of what they send): names in other directories, and names that came with a
    /// renamed directory.
    ///
    /// Names a live subtree transfer sent stand for changes the map folded into that transfer
    /// (a write through a name in a directory renamed just before): their other names are
    /// queued once per change of the inode.
    fn learn_links(&mut self, now: Instant) {
        let Some(state) = &self.state else {
            return;
        };
        for (name, m, sent) in state.take_links() {
            let name: Arc<Path> = Arc::from(name);
            self.links.add(name.clone(), m.ino);
            if !sent {
                continue;
            }
            let others = self
                .links
                .seen(&name, m.ino, 2, (m.ctime.0, i64::from(m.ctime.1)));
            self.queue_other_names(m.ino, others, now);
        }
    }

    /// A file name went away: if it was a known name of a hard-linked inode, what changed
    /// through it just before (a write, a chmod) shows only under the other names, which
    /// are queued.
    fn unlinked(&mut self, path: &Path, now: Instant) {
        self.learn_links(now);
        if let Some((ino, others)) = self.links.removed(path) {
            self.queue_other_names(ino, others, now);
        }
    }

    /// The next batch: live work first, but the pass always keeps one piece in flight.
    fn next_batch(&mut self, now: Instant) -> Option<Batch> {
        let pass_turn = self.pass.as_ref().is_some_and(PassState::idle);
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
            let (kind, level) = self.ready.oldest()?;
            let limit = batch::limit(kind, level, self.batch_max);
            let mut entries = Vec::new();
            while entries.len() < limit {
                let Some(t) = self.ready.pop((kind, level)) else {
                    break;
                };
                let blocker = self.guard.blocker(
                    guard::key(&t.path),
                    t.pending.last,
                    batch::dir_level(&t.pending),
                );
                match blocker {
                    Some(b) => {
                        let (node, below) = (b.node.to_vec(), b.below);
                        self.guard.wait(&node, below, t);
                    }
                    None => entries.push(t),
                }
            }
            if !entries.is_empty() {
                return Some(self.launch(kind, Origin::Map, entries, now));
            }
            // Everything in that queue waits: try the next one.
        }
    }

    /// Marks a batch's entries in flight.
    pub(super) fn launch(
        &mut self,
        kind: BatchKind,
        origin: Origin,
        entries: Vec<Taken>,
        now: Instant,
    ) -> Batch {
        let seq = self.next_seq;
        self.next_seq += 1;
        for t in &entries {
            trace!(target = %self.target, seq, ?kind, ?origin, path = %t.path.display(), op = ?t.pending.op, "launch");
            self.guard
                .mark(guard::key(&t.path), seq, now, batch::reach(t.pending.op));
            if matches!(t.pending.op, Op::Tree | Op::Shallow) {
                self.trees_inflight += 1;
            }
        }
        let seen = (kind == BatchKind::Plain && self.state.is_some()).then(|| {
            entries
                .iter()
                .filter_map(|t| match self.seen.remove(&t.path) {
                    Some(Some(m)) => Some(IndexUpdate::Put(t.path.to_path_buf(), m)),
                    Some(None) => Some(IndexUpdate::Remove(t.path.to_path_buf())),
                    None => None,
                })
                .collect()
        });
        Batch {
            kind,
            seq,
            origin,
            entries,
            seen,
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

    /// Settles a batch's outcome.
    pub fn finish(&mut self, res: BatchResult) {
        let now = Instant::now();
        self.idle.push(res.shard);
        self.land(&res.batch, now);
        let n = res.batch.entries.len();
        trace!(target = %self.target, seq = res.batch.seq, outcome = ?res.outcome, "finished");
        match res.outcome {
            o if o.succeeded() => {
                if let Some(outage) = self.health.succeeded(now) {
                    info!(target = %self.target, down_ms = outage.as_millis() as u64, "target back up");
                    self.down_logged = None;
                }
                self.last_progress = now;
                self.stats.paths_done.fetch_add(n as u64, Ordering::Relaxed);
                debug!(target = %self.target, kind = ?res.batch.kind, origin = ?res.batch.origin, paths = n, ms = res.elapsed.as_millis() as u64, "batch done");
                if o == Outcome::Vanished {
                    debug!(target = %self.target, "some files vanished during transfer: {}", res.stderr.trim());
                }
                match res.batch.origin {
                    Origin::Map => {
                        for t in &res.batch.entries {
                            if t.pending.attempts >= 3 {
                                if let Some(s) = &self.state {
                                    s.recovered(&t.path);
                                }
                            }
                            self.map.complete(&t.path, None);
                        }
                        if res.batch.kind != BatchKind::Plain {
                            self.learn_links(now);
                        }
                    }
                    Origin::Pass { gen, .. } => {
                        if let Some(p) = self.current_pass(gen) {
                            p.landed(n);
                        }
                        self.check_pass_done(now);
                    }
                }
            }
            Outcome::TargetDown => {
                self.stats.failed_batches.fetch_add(1, Ordering::Relaxed);
                let unreachable = crate::target::rsync::unreachable(&res.stderr);
                let (pause, began) = self.health.failed(now, unreachable);
                let again = self
                    .down_logged
                    .is_some_and(|t| now < t + Duration::from_secs(60));
                if began || !again {
                    let down_s = self.health.outage(now).map_or(0, |d| d.as_secs());
                    warn!(target = %self.target, retry_in_ms = pause.as_millis() as u64, probing = unreachable, down_s, pending = self.map.len(),
                          "target down: {}", res.reason());
                    self.down_logged = Some(now);
                } else {
                    debug!(target = %self.target, "target still down: {}", res.reason());
                }
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
                // A path failing alone, again and again, is a failure of its own: recorded
                // with rsync's reason, retried on the backoff's schedule, said every tenth time.
                let alone = n == 1 && res.batch.origin == Origin::Map;
                if alone && level >= 3 {
                    let path = &res.batch.entries[0].path;
                    if let Some(s) = &self.state {
                        s.failed(path, level, res.reason());
                    }
                    self.stats
                        .failed_paths
                        .fetch_add(u64::from(level == 3), Ordering::Relaxed);
                }
                if alone && level > 3 && level % 10 != 0 {
                    debug!(target = %self.target, "{msg}");
                } else if outcome == Outcome::Fatal {
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
                let piece = piece_of(&batch.entries);
                if let Some(p) = self.current_pass(gen) {
                    p.down(level, piece, now);
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
                let piece = piece_of(&batch.entries);
                // A piece of a pass since replaced needs nothing: the newer pass covers it.
                let Some(p) = self.current_pass(gen) else {
                    return;
                };
                if let Some(dir) = p.failed(piece, level, due) {
                    self.map.schedule(&dir, Op::Shallow, due);
                }
                self.check_pass_done(Instant::now());
            }
        }
    }

    /// The next piece of the pass (a due retry first), as a shallow batch.
    pub(super) fn next_pass_batch(&mut self, now: Instant) -> Option<Batch> {
        let p = self.pass.as_mut()?;
        let (level, piece) = p.take(now)?;
        let origin = Origin::Pass { gen: p.gen, level };
        let entries = entries_of(piece, level, now);
        Some(self.launch(BatchKind::Shallow, origin, entries, now))
    }

    pub(super) fn current_pass(&mut self, gen: u64) -> Option<&mut PassState> {
        self.pass.as_mut().filter(|p| p.gen == gen)
    }

    /// Starts a pass over `rel` (replacing one under way: its pieces in flight finish, the rest
    /// is walked again).
    pub fn start_pass(&mut self, rel: PathBuf, initial: bool, now: Instant) {
        self.pass_gen += 1;
        let p = PassState::start(
            self.source.clone(),
            rel.clone(),
            self.piece_size,
            self.pass_gen,
            initial,
            now,
        );
        match p {
            Ok(p) => self.pass = Some(p),
            Err(e) => {
                // Without a walker thread, one subtree transfer of the whole tree does it.
                error!(target = %self.target, "cannot start the tree walk ({e}); comparing the tree in one transfer");
                self.pass = None;
                self.map.schedule(&rel, Op::Tree, now);
                self.check_pass_done(now);
            }
        }
    }

    pub fn wants_piece(&self) -> bool {
        self.pass.as_ref().is_some_and(PassState::wants_piece)
    }

    pub fn piece_arrived(&mut self, piece: Option<Piece>, now: Instant) {
        if let Some(p) = self.pass.as_mut() {
            p.arrived(piece);
            self.check_pass_done(now);
        }
    }

    /// Ends the pass once it is walked and every piece is on the target.
    pub fn check_pass_done(&mut self, now: Instant) {
        if !self.pass.as_ref().is_none_or(PassState::is_done) {
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
            if let Some(s) = &self.state {
                // Every directory went through a successful piece: the index is whole.
                s.set_complete(true);
            }
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
    pub fn abandon_pass(&mut self) {
        self.passes_allowed = false;
        if let Some(p) = self.pass.take() {
            warn!(target = %self.target, dirs_done = p.dirs_done, dirs_walked = ?p.walked(),
                  "shutdown during the {}: the rest is compared at the next start",
                  if p.initial { "start-up pass" } else { "rescan" });
        }
    }

    /// When the loop must look again, at the latest.
    pub fn next_wake(&self, now: Instant, draining: bool, deadline: Option<Instant>) -> Instant {
        let idle = Duration::from_secs(3600);
        let mut wake = self.map.next_due().unwrap_or(now + idle);
        if draining && !self.map.is_empty() {
            wake = wake.min(now + Duration::from_millis(50));
        }
        if let Some(due) = self.pass.as_ref().and_then(PassState::next_retry) {
            wake = wake.min(due);
        }
        let down = self.health.down_until(now);
        if self.idle.is_empty() || down.is_some() {
            // Nothing can be sent before a shard frees up (a result wakes us), the target's
            // pause ends, or a probe is due.
            wake = down.unwrap_or(now + idle);
            if let Some(p) = self.health.next_probe(now) {
                wake = wake.min(p);
            }
        }
        // A deadline already past must not make the loop spin while a shard is still busy.
        match deadline.filter(|&t| t > now) {
            Some(t) => wake.min(t),
            None => wake,
        }
    }
}
