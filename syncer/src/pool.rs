//! The transfer pool of one target: a dispatcher task and N shard tasks.
//!
//! The dispatcher takes due entries from the target's [`DedupMap`], groups them into batches
//! and hands each batch to an idle shard over a bounded channel; a shard runs one rsync
//! process at a time on its batch and sends the outcome back. The pool is the only place in
//! syncer that spawns processes.
//!
//! Ordering: no two transfers that touch the same path run at once. A path waits while it is
//! itself in flight (the map keeps it), while an ancestor's subtree transfer (tree, shallow,
//! directory deletion) is in flight, and a directory-level transfer waits while anything below
//! it is in flight, so that a directory's mtime is written after its children's. Which shard
//! runs a batch does not matter for correctness; shards are interchangeable workers.
//!
//! Failures: a batch whose rsync says the target is unreachable goes back to the map unchanged
//! and the whole target pauses with a growing backoff (other targets have their own pools and
//! never wait for this one); a partial failure goes back with a per-entry backoff and is retried
//! in ever smaller batches, so that one bad path ends up alone.

use std::collections::{HashMap, HashSet, VecDeque};
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
}

/// How a pool ended.
#[derive(Debug)]
pub struct PoolReport {
    pub target: String,
    /// Paths still pending when the drain timeout ran out.
    pub undrained: usize,
}

struct Batch {
    kind: BatchKind,
    entries: Vec<Taken>,
}

struct BatchResult {
    shard: usize,
    batch: Batch,
    outcome: Outcome,
    stderr: String,
    elapsed: Duration,
}

/// Runs the pool of `target` until `shutdown` turns true and the map has drained (or the drain
/// timeout ran out). With `initial_sync`, the whole tree is compared first, in parallel pieces;
/// `initial_done` is told once all of it has been transferred.
pub async fn run(
    target: Target,
    map: Arc<DedupMap>,
    cfg: PoolConfig,
    initial_sync: bool,
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
    let mut d = Dispatcher {
        target: target.clone(),
        map,
        batch_max: cfg.rsync.batch_max,
        idle: (0..cfg.shards).rev().collect(),
        ready: VecDeque::new(),
        blocked: Vec::new(),
        inflight_ops: HashMap::new(),
        inflight_under: HashMap::new(),
        trees_inflight: 0,
        last_tree_end: None,
        down_until: None,
        down_backoff: Duration::ZERO,
        initial_left: HashSet::new(),
        initial_done,
        stats,
        source: cfg.source.clone(),
        root_pieces: cfg.shards * ROOT_PIECES_PER_SHARD,
        last_progress: now,
    };
    if initial_sync {
        let plan = tokio::task::block_in_place(|| {
            crate::scan::plan(&d.source, Path::new(""), d.root_pieces)
        });
        d.initial_left = plan.iter().map(|(p, _)| p.clone()).collect();
        d.schedule_plan(plan, now);
    }
    d.check_initial_done();

    let mut draining = *shutdown.borrow();
    let mut drain_started: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if draining && drain_started.is_none() {
            drain_started = Some(now);
        }
        // Shutdown gives up only after the drain made no progress for the whole timeout, so a
        // long transfer still finishes while an unreachable target does not hold the exit.
        let deadline = drain_started.map(|t| t.max(d.last_progress) + cfg.drain_timeout);
        let past_deadline = deadline.is_some_and(|t| now >= t);
        if !past_deadline {
            d.dispatch(now, draining, &shard_txs).await;
        }
        let busy = cfg.shards - d.idle.len();
        if draining && (d.map.is_empty() || past_deadline) && busy == 0 {
            break;
        }
        let mut wake = d.map.next_due().unwrap_or(now + Duration::from_secs(3600));
        if draining && !d.map.is_empty() {
            wake = wake.min(now + Duration::from_millis(50));
        }
        if d.idle.is_empty() || d.down_until.is_some_and(|t| t > now) {
            // Nothing can be sent before a shard frees up (a result wakes us) or the target's
            // backoff ends.
            wake = d
                .down_until
                .filter(|&t| t > now)
                .unwrap_or(now + Duration::from_secs(3600));
        }
        if let Some(t) = deadline {
            wake = wake.min(t);
        }
        tokio::select! {
            Some(res) = result_rx.recv() => d.finish(res),
            _ = d.map.changed() => {}
            _ = tokio::time::sleep_until(wake.into()) => {}
            changed = shutdown.changed(), if !draining => {
                draining = changed.is_err() || *shutdown.borrow();
            }
        }
    }
    drop(shard_txs);
    for h in shard_handles {
        let _ = h.await;
    }
    let undrained = d.map.len();
    if undrained > 0 {
        error!(target = %target, undrained, "shutdown: changes not replicated to this target (the next start's initial sync will pick them up)");
    }
    PoolReport {
        target: target.display.clone(),
        undrained,
    }
}

struct Dispatcher {
    target: Target,
    map: Arc<DedupMap>,
    batch_max: usize,
    idle: Vec<usize>,
    /// Taken from the map, waiting for a shard.
    ready: VecDeque<Taken>,
    /// Taken from the map, waiting for a conflicting transfer to end.
    blocked: Vec<Taken>,
    /// Paths in flight and their op.
    inflight_ops: HashMap<Arc<Path>, Op>,
    /// For each directory, how many in-flight paths lie below it.
    inflight_under: HashMap<PathBuf, usize>,
    trees_inflight: usize,
    last_tree_end: Option<Instant>,
    down_until: Option<Instant>,
    down_backoff: Duration,
    initial_left: HashSet<PathBuf>,
    initial_done: Option<tokio::sync::oneshot::Sender<()>>,
    stats: Arc<PoolStats>,
    source: PathBuf,
    /// How many subtrees a rescan of the whole tree is split into.
    root_pieces: usize,
    /// When a batch last succeeded.
    last_progress: Instant,
}

/// A rescan of the whole tree is split into this many subtrees per shard.
pub const ROOT_PIECES_PER_SHARD: usize = 4;

impl Dispatcher {
    async fn dispatch(&mut self, now: Instant, draining: bool, shards: &[mpsc::Sender<Batch>]) {
        if self.down_until.is_some_and(|t| now < t) {
            return;
        }
        while let Some(&shard) = self.idle.last() {
            let want = self.batch_max.saturating_sub(self.ready.len());
            if want > 0 {
                for t in self.map.take_due(now, want, draining) {
                    if t.pending.op == Op::Tree && t.path.as_os_str().is_empty() {
                        self.split_root_rescan(t, now);
                    } else {
                        self.ready.push_back(t);
                    }
                }
            }
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

    /// A rescan of the whole tree (overflow, lost events) as one rsync would use one core and
    /// one connection for hours on a big tree: hand it out in parallel pieces instead.
    fn split_root_rescan(&mut self, t: Taken, now: Instant) {
        let plan = tokio::task::block_in_place(|| {
            crate::scan::plan(&self.source, &t.path, self.root_pieces)
        });
        if plan.len() <= 1 {
            self.ready.push_back(t);
            return;
        }
        info!(target = %self.target, pieces = plan.len(), "rescanning the whole tree in parallel pieces");
        self.map.complete(&t.path, None);
        self.schedule_plan(plan, now);
    }

    /// Queues a rescan plan: subtrees first, the directories above them just after, so that
    /// the directories' own transfers (and mtimes) come last.
    fn schedule_plan(&self, plan: Vec<(PathBuf, Op)>, now: Instant) {
        for (path, op) in plan {
            let due = if op == Op::Shallow {
                now + Duration::from_millis(1)
            } else {
                now
            };
            self.map.schedule(&path, op, due);
        }
    }

    /// Builds the next batch from `ready`: entries of one kind and retry level, none of which
    /// conflicts with a transfer in flight.
    fn next_batch(&mut self, now: Instant) -> Option<Batch> {
        let mut batch: Option<(BatchKind, u32, usize, Vec<Taken>)> = None;
        let mut rest = VecDeque::with_capacity(self.ready.len());
        while let Some(t) = self.ready.pop_front() {
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
            if self.conflicts(&t.path, &t.pending) {
                self.blocked.push(t);
                continue;
            }
            let kind = BatchKind::of(t.pending.op);
            let level = t.pending.attempts;
            match &mut batch {
                None => {
                    let limit = match kind {
                        BatchKind::Plain => self.batch_max,
                        _ => self.batch_max.div_ceil(16),
                    };
                    let limit = (limit >> (3 * level.min(10))).max(1);
                    self.mark(&t.path, t.pending.op);
                    batch = Some((kind, level, limit, vec![t]));
                }
                Some((k, l, limit, v)) if *k == kind && *l == level && v.len() < *limit => {
                    self.mark(&t.path, t.pending.op);
                    v.push(t);
                }
                Some(_) => rest.push_back(t),
            }
        }
        self.ready = rest;
        let _ = now;
        batch.map(|(kind, _, _, entries)| Batch { kind, entries })
    }

    fn no_tree_since(&self, since: Instant) -> bool {
        self.trees_inflight == 0 && self.last_tree_end.is_none_or(|end| end < since)
    }

    fn conflicts(&self, path: &Path, p: &Pending) -> bool {
        let dir_level = matches!(p.op, Op::Tree | Op::Shallow | Op::Delete) || p.is_dir;
        if dir_level && self.inflight_under.get(path).is_some_and(|&n| n > 0) {
            return true;
        }
        if self.inflight_ops.contains_key(path) {
            return true;
        }
        path.ancestors().skip(1).any(|a| {
            self.inflight_ops
                .get(a)
                .is_some_and(|op| matches!(op, Op::Tree | Op::Shallow | Op::Delete))
        })
    }

    fn mark(&mut self, path: &Arc<Path>, op: Op) {
        self.inflight_ops.insert(path.clone(), op);
        for a in path.ancestors().skip(1) {
            *self.inflight_under.entry(a.to_path_buf()).or_insert(0) += 1;
        }
        if matches!(op, Op::Tree | Op::Shallow) {
            self.trees_inflight += 1;
        }
    }

    fn unmark(&mut self, path: &Path, op: Op, now: Instant) {
        self.inflight_ops.remove(path);
        for a in path.ancestors().skip(1) {
            if let Some(n) = self.inflight_under.get_mut(a) {
                *n -= 1;
                if *n == 0 {
                    self.inflight_under.remove(a);
                }
            }
        }
        if matches!(op, Op::Tree | Op::Shallow) {
            self.trees_inflight -= 1;
            self.last_tree_end = Some(now);
        }
    }

    fn finish(&mut self, res: BatchResult) {
        let now = Instant::now();
        self.idle.push(res.shard);
        let n = res.batch.entries.len();
        match res.outcome {
            o if o.succeeded() => {
                if self.down_until.take().is_some() {
                    info!(target = %self.target, "target back up");
                }
                self.down_backoff = Duration::ZERO;
                self.last_progress = now;
                self.stats.paths_done.fetch_add(n as u64, Ordering::Relaxed);
                debug!(target = %self.target, kind = ?res.batch.kind, paths = n, ms = res.elapsed.as_millis() as u64, "batch done");
                if o == Outcome::Vanished {
                    debug!(target = %self.target, "some files vanished during transfer: {}", res.stderr.trim());
                }
                for t in &res.batch.entries {
                    self.unmark(&t.path, t.pending.op, now);
                    self.map.complete(&t.path, None);
                    self.initial_progress(&t.path, t.pending.op);
                }
                self.check_initial_done();
            }
            Outcome::TargetDown => {
                self.stats.failed_batches.fetch_add(1, Ordering::Relaxed);
                self.down_backoff = (self.down_backoff * 2)
                    .clamp(Duration::from_millis(500), Duration::from_secs(30));
                self.down_until = Some(now + self.down_backoff);
                warn!(target = %self.target, retry_in_ms = self.down_backoff.as_millis() as u64, pending = self.map.len(),
                      "target down: {}", last_line(&res.stderr));
                // A receiver killed mid-transfer can leave its temporary files behind; once the
                // target is back, a shallow pass with --delete over each directory that had a
                // file in flight removes them.
                let mut dirs = std::collections::BTreeSet::new();
                for t in res.batch.entries {
                    self.unmark(&t.path, t.pending.op, now);
                    if res.batch.kind == BatchKind::Plain {
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
            outcome => {
                self.stats.failed_batches.fetch_add(1, Ordering::Relaxed);
                let level = res.batch.entries.first().map_or(0, |t| t.pending.attempts) + 1;
                let backoff = Duration::from_secs(1 << level.min(6)).min(Duration::from_secs(60));
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
                for t in res.batch.entries {
                    self.unmark(&t.path, t.pending.op, now);
                    let mut p = t.pending;
                    p.attempts = level;
                    p.due = now + backoff;
                    self.map.complete(&t.path, Some(p));
                }
            }
        }
        // Whatever waited on those transfers may go now.
        let blocked = std::mem::take(&mut self.blocked);
        self.ready.extend(blocked);
    }

    fn initial_progress(&mut self, path: &Path, op: Op) {
        if self.initial_left.is_empty() {
            return;
        }
        self.initial_left.remove(path);
        if op == Op::Tree {
            let under: Vec<_> = self
                .initial_left
                .iter()
                .filter(|p| crate::change::is_below(p, path))
                .cloned()
                .collect();
            for p in under {
                self.initial_left.remove(&p);
            }
        }
    }

    fn check_initial_done(&mut self) {
        if self.initial_left.is_empty() {
            if let Some(tx) = self.initial_done.take() {
                let _ = tx.send(());
            }
        }
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
