//! The dispatcher of one target: takes due entries from the map into the ready queues, builds
//! batches no conflicting transfer holds back, sends the start-up pass's pieces between them,
//! and settles each batch's outcome (forget, retry, pause the target).
//!
//! Ordering: an entry that overlaps a transfer in flight that started before the entry's latest
//! event waits for it ([`super::guard`]); it is parked on the guard's node that blocks it and
//! handed back when that node changes, so a completion costs what it releases, never a scan of
//! what waits. Live work takes a shard first (held back briefly behind a live batch in flight
//! while a pass runs: [`batch::hold_live`]); the pass always keeps one piece in flight.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tracing::{info, trace, warn};

use super::batch::{self, Ready};
use super::guard::{self, Guard, Seq};
use super::health::Health;
mod links;
mod pass;
mod settle;

use self::links::Links;
use super::passes::PassState;
use super::{Batch, CatchUp, Origin, PoolConfig, PoolError, PoolStats};
use crate::queue::pass::PieceSize;
use crate::queue::{DedupMap, Op, Taken};
use crate::state::meta::Meta;
use crate::state::{IndexUpdate, TargetState};
use crate::target::{BatchKind, Target};

/// Entries per pass piece (see [`crate::queue::pass`]); at most `batch_max` directories.
const PIECE_ENTRIES: u64 = 4096;

/// Most certificates of recent plain transfers kept in memory ([`Dispatcher::certify`]); past
/// it they are forgotten at once (the index still has them, once written).
const RECENT_CERTIFICATES: usize = 16 * 1024;

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
    /// Live (map) batches in flight, and until when live work is held back behind them
    /// ([`batch::hold_live`]).
    live_inflight: usize,
    held_until: Option<Instant>,
    pub(super) health: Health,
    links: Links,
    /// What fill_ready's lstat saw of plain entries still waiting (see [`Batch`]).
    seen: hashbrown::HashMap<Arc<Path>, Option<Meta>>,
    /// The certificates of plain transfers that succeeded lately, as the index gets them: a
    /// late close that comes during the transfer is taken before the state's writer has
    /// made the index entry visible.
    recent: hashbrown::HashMap<PathBuf, Meta>,
    /// When a still-down target was last said to be down (the log says so once a minute).
    down_logged: Option<Instant>,
    pub(super) pass: Option<PassState>,
    pub(super) pass_gen: u64,
    /// False once a shutdown has abandoned the pass: a rescan asked for then is left to the
    /// next start, like the rest of the pass.
    pub(super) passes_allowed: bool,
    pub(super) piece_size: PieceSize,
    /// Record the pass's progress for a later start (see [`super::PoolConfig::watched`]).
    pub(super) watched: bool,
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
            live_inflight: 0,
            held_until: None,
            health: Health::new(cfg.can_probe),
            links: Links::default(),
            seen: hashbrown::HashMap::new(),
            recent: hashbrown::HashMap::new(),
            down_logged: None,
            pass: None,
            pass_gen: 0,
            passes_allowed: true,
            piece_size: PieceSize {
                entries: PIECE_ENTRIES,
                dirs: cfg.batch_max,
            },
            watched: cfg.watched,
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
        if self.health.is_down(now) || self.paused() || self.retired() {
            return Ok(());
        }
        self.held_until = None;
        while let Some(&shard) = self.idle.last() {
            self.fill_ready(now, draining);
            let Some(batch) = self.next_batch(now, draining) else {
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
                    self.start_pass(PathBuf::new(), initial, None, now);
                } else {
                    warn!(target = %self.target, "a rescan of the whole tree was asked for during shutdown: the next start compares the tree");
                }
                self.map.complete(&t.path, None);
                continue;
            }
            if t.pending.op == Op::Delete && !t.pending.is_dir {
                self.unlinked(&t.path, now);
            }
            let meta = std::fs::symlink_metadata(self.source.join(&t.path));
            // A path below a directory that was replaced by a file (or symlink) cannot exist,
            // and rsync refuses it (ENOTDIR is not a missing argument); the ancestor's own
            // transfer replaces the target's directory, children included.
            if batch::below_a_file(&meta) {
                trace!(path = %t.path.display(), "dropped: below a file");
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                self.map.complete(&t.path, None);
                continue;
            }
            if t.pending.closed_only && self.holds_already(&t.path, &meta) {
                trace!(path = %t.path.display(), "dropped: a close of what the target holds");
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
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

    /// Whether the target's index certifies that the target holds `path` as the source shows
    /// it now (`meta`, just read): then a close after writing, with no other event, needs
    /// no transfer (the writes it ends were sent). No state, no index entry, a read error or
    /// any difference (a write since moved the ctime): it does.
    fn holds_already(&self, path: &Path, meta: &std::io::Result<std::fs::Metadata>) -> bool {
        let (Some(state), Ok(m)) = (&self.state, meta) else {
            return false;
        };
        let now = Meta::from_metadata(m);
        m.is_file()
            && (self.recent.get(path) == Some(&now)
                || matches!(state.get(path), Ok(Some(known)) if known == now))
    }

    /// Keeps the certificates of a plain batch that succeeded, for [`Self::holds_already`].
    pub(super) fn certify(&mut self, batch: &Batch) {
        let Some(seen) = &batch.seen else { return };
        if self.recent.len() + seen.len() > RECENT_CERTIFICATES {
            self.recent.clear();
        }
        for u in seen {
            match u {
                IndexUpdate::Put(p, m) => {
                    self.recent.insert(p.clone(), *m);
                }
                IndexUpdate::Remove(p) => {
                    self.recent.remove(p);
                }
                IndexUpdate::Children(..) => {}
            }
        }
    }

    /// The next batch: live work first, but the pass always keeps one piece in flight.
    fn next_batch(&mut self, now: Instant, draining: bool) -> Option<Batch> {
        let pass_turn = self.pass.as_ref().is_some_and(PassState::idle);
        if !pass_turn {
            if let Some(b) = self.next_map_batch(now, draining) {
                return Some(b);
            }
        }
        self.next_pass_batch(now)
            .or_else(|| self.next_map_batch(now, draining))
    }

    /// A batch from the ready queue that has waited longest: entries of one kind and retry
    /// level, none of which overlaps a transfer in flight that started before its last event.
    fn next_map_batch(&mut self, now: Instant, draining: bool) -> Option<Batch> {
        loop {
            let (kind, level) = self.ready.oldest()?;
            let limit = batch::limit(kind, level, self.batch_max);
            let passing = self.pass.is_some() && !draining;
            let oldest = self.ready.oldest_due()?;
            let ready = self.ready.len();
            if let Some(until) =
                batch::hold_live(passing, self.live_inflight, ready, limit, oldest, now)
            {
                self.held_until = Some(until);
                return None;
            }
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
        if origin == Origin::Map {
            self.live_inflight += 1;
        }
        for t in &entries {
            trace!(target = %self.target, seq, ?kind, ?origin, path = %t.path.display(), op = ?t.pending.op, "launch");
            self.guard
                .mark(guard::key(&t.path), seq, now, batch::reach(t.pending.op));
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

    /// Ends what a batch held in flight; entries parked behind it go back to the ready queues.
    fn land(&mut self, batch: &Batch) {
        if batch.origin == Origin::Map {
            self.live_inflight -= 1;
        }
        let mut released = Vec::new();
        for t in &batch.entries {
            self.guard
                .unmark(guard::key(&t.path), batch.seq, &mut released);
        }
        // Released in the order they were parked, each in front of its queue: reverse so the
        // oldest ends up first.
        for t in released.into_iter().rev() {
            self.ready.push_front(t);
        }
    }

    /// The operator paused this target.
    pub fn paused(&self) -> bool {
        self.stats.paused.load(Ordering::Relaxed)
    }

    /// A reload stopped this pool: it ends with what is in flight.
    pub fn retired(&self) -> bool {
        self.stats.retired.load(Ordering::Relaxed)
    }

    /// One turn of the pool's loop: its liveness tick, and whether the target is down, for
    /// the supervisor to read.
    pub fn turn(&self, now: Instant) {
        self.stats.alive.tick();
        let down = self.health.outage(now).is_some();
        self.stats.down.store(down, Ordering::Relaxed);
        self.stats
            .backoff
            .store(down && self.health.answered(), Ordering::Relaxed);
        self.stats
            .passing
            .store(self.pass.is_some(), Ordering::Relaxed);
        self.stats.rescanning.store(
            self.pass.as_ref().is_some_and(|p| !p.initial),
            Ordering::Relaxed,
        );
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
        if let Some(held) = self.held_until {
            wake = wake.min(held);
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
