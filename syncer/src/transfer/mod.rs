//! The transfer pool of one target: a dispatcher and N shard tasks.
//!
//! The [`dispatcher`] takes due entries from the target's dedup map, groups them into batches
//! ([`batch`]), holds back what would overlap a transfer in flight ([`guard`]) and hands each
//! batch to an idle [`shard`] over a bounded channel; a shard runs one process at a time for
//! its batch (the target's [`Transport`] says which) and sends the outcome back. The start-up
//! pass's pieces ([`passes`]) go out between the live batches. [`health`] pauses a target that
//! does not answer, with a growing backoff (other targets have their own pools and never wait
//! for this one); a batch that fails in part comes back with a backoff in ever smaller batches,
//! so that one bad path ends up alone.
//!
//! [`Transport`]: crate::target::Transport

pub mod batch;
pub mod check;
pub mod dispatcher;
pub mod guard;
pub mod health;
mod passes;
mod shard;

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tracing::error;

use self::dispatcher::Dispatcher;
use self::guard::Seq;
use self::shard::{shard_task, BatchResult, ShardCtx};
use crate::queue::pass::Piece;
use crate::queue::{DedupMap, Taken};
use crate::shutdown::Shutdown;
use crate::state::{IndexUpdate, TargetState};
use crate::target::{BatchKind, Target, Transport};

/// Counters of one target's pool.
#[derive(Debug, Default)]
pub struct PoolStats {
    /// Batches handed to a shard.
    pub batches: AtomicU64,
    /// Batches that succeeded.
    pub batches_ok: AtomicU64,
    pub paths_done: AtomicU64,
    pub rsync_spawned: AtomicU64,
    pub failed_batches: AtomicU64,
    /// Entries dropped without a transfer: below a directory that became a file (the
    /// ancestor's transfer replaces it, children included), or nothing but a close after
    /// writing of a file the target's index shows it holds as it is.
    pub dropped: AtomicU64,
    /// Paths that have failed alone three times or more (recorded in the state with rsync's
    /// reason, and still retried).
    pub failed_paths: AtomicU64,
    /// The dispatcher loop's turns (at least one a [`TICK`] while it runs).
    pub alive: crate::alive::Ticker,
    /// The target is down (its batches cannot reach it; paused, probed).
    pub down: std::sync::atomic::AtomicBool,
    /// Paused by the operator (`syncer pause`): nothing is sent, everything stays queued (and
    /// journaled); a drain does not wait for it.
    pub paused: std::sync::atomic::AtomicBool,
    /// Stopped by a reload (its target removed or changed): a drain does not wait for it,
    /// what is queued stays in its map and journal.
    pub retired: std::sync::atomic::AtomicBool,
    /// The start-up pass (or a rescan's pass) is running.
    pub passing: std::sync::atomic::AtomicBool,
    /// When a batch last succeeded (ms since the epoch; 0: never).
    pub last_synced_ms: AtomicU64,
    /// Down because the target turns syncer away (a password, a module, a key): a
    /// configuration to fix, not an outage.
    pub refused: std::sync::atomic::AtomicBool,
    /// The last failure's reason, as rsync said it (empty: none since the last success).
    pub last_error: std::sync::Mutex<String>,
    /// rsync's exit codes so far, by code (-1: killed by a signal, or could not run).
    pub exits: std::sync::Mutex<std::collections::BTreeMap<i32, u64>>,
    /// What rsync said it did (see [`crate::target::RunStats`]), summed over its runs.
    pub files_seen: AtomicU64,
    pub files_sent: AtomicU64,
    pub file_bytes: AtomicU64,
    pub bytes_sent: AtomicU64,
    /// Down, but the target answered (neither unreachable nor refusing): waiting out a
    /// backoff before the next attempt.
    pub backoff: std::sync::atomic::AtomicBool,
    /// The pass running is a rescan's, not the start-up's.
    pub rescanning: std::sync::atomic::AtomicBool,
    /// A walk of the source against this target's index runs (a rescan with an index).
    pub comparing: std::sync::atomic::AtomicBool,
    /// The pass under way (or the last one): entries rsync looked at in its pieces, the file
    /// bytes they sent, and an estimate of the entries it will meet (0: unknown).
    pub pass_entries: AtomicU64,
    pub pass_bytes: AtomicU64,
    pub pass_total: AtomicU64,
    /// How long batches took: counts per bucket of [`BATCH_SECONDS`] (the last: above them).
    pub batch_buckets: [AtomicU64; BATCH_SECONDS.len() + 1],
    pub batch_micros: AtomicU64,
}

/// The upper bounds of the batch-duration buckets (seconds).
pub const BATCH_SECONDS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

impl PoolStats {
    /// One rsync run ended (`code`: its exit code; `None`: a signal; `Err`: it could not run).
    pub fn record_run(&self, code: Result<Option<i32>, ()>, took: Duration) {
        let code = code.ok().flatten().unwrap_or(-1);
        *self
            .exits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(code)
            .or_default() += 1;
        let secs = took.as_secs_f64();
        let bucket = BATCH_SECONDS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(BATCH_SECONDS.len());
        self.batch_buckets[bucket].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.batch_micros.fetch_add(
            took.as_micros() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Adds one run's totals.
    pub fn record_sent(&self, s: crate::target::RunStats) {
        use std::sync::atomic::Ordering::Relaxed;
        self.files_seen.fetch_add(s.files_seen, Relaxed);
        self.files_sent.fetch_add(s.files_sent, Relaxed);
        self.file_bytes.fetch_add(s.file_bytes, Relaxed);
        self.bytes_sent.fetch_add(s.bytes_sent, Relaxed);
    }

    /// A pass begins, expected to meet about `total` entries (0: unknown).
    pub fn pass_began(&self, total: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.pass_entries.store(0, Relaxed);
        self.pass_bytes.store(0, Relaxed);
        self.pass_total.store(total, Relaxed);
    }

    /// Records the reason of a failure (`None`: a success clears it).
    pub fn set_error(&self, why: Option<&str>) {
        let mut e = self
            .last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        e.clear();
        e.push_str(why.unwrap_or_default());
    }

    pub fn error(&self) -> Option<String> {
        let e = self
            .last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (!e.is_empty()).then(|| e.clone())
    }
}

/// The longest the dispatcher loop sleeps without a turn (its liveness tick).
pub const TICK: Duration = Duration::from_secs(1);

/// How the pool runs.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub source: PathBuf,
    pub shards: usize,
    /// Most paths in one batch.
    pub batch_max: usize,
    /// The target can be probed while down (see [`health`]).
    pub can_probe: bool,
    pub drain_timeout: Duration,
    /// Run the start-up pass (compare the whole tree) first.
    pub initial_sync: bool,
    /// On shutdown, finish the start-up pass before returning (`syncer sync`); otherwise an
    /// unfinished pass is abandoned (the next start runs it again) and only the changes seen
    /// are drained.
    pub finish_pass_on_drain: bool,
    /// A live source watches the tree while the pool runs: an unfinished pass records how far
    /// it got, for a later start to resume (see [`crate::queue::pass`]). Without one (`syncer
    /// sync`) nobody sees the changes made during the pass, and nothing is recorded.
    pub watched: bool,
}

/// One target's pool, ready to run.
pub struct Pool {
    pub target: Target,
    pub transport: Arc<dyn Transport>,
    pub map: Arc<DedupMap>,
    pub cfg: PoolConfig,
    pub stats: Arc<PoolStats>,
    /// Told once the start-up pass is done.
    pub initial_done: Option<oneshot::Sender<()>>,
    /// The target's durable state: the index is kept true as batches succeed, and marked
    /// complete when a pass ends.
    pub state: Option<Arc<TargetState>>,
    /// Compares the source with the index instead of running a pass, for a rescan of the whole
    /// tree (returns false where it cannot: no complete index).
    pub catch_up: Option<CatchUp>,
    /// With `initial_sync`: where a start-up pass cut short had got to; the pass resumes after
    /// it (see [`crate::queue::pass`]).
    pub resume_after: Option<PathBuf>,
}

/// Starts a catch-up walk of the whole tree for this target; false when there is no complete
/// index to walk against (a pass is run instead).
pub type CatchUp = Arc<dyn Fn() -> bool + Send + Sync>;

/// How a pool ended.
#[derive(Debug)]
pub struct PoolReport {
    /// Paths still pending when the drain timeout ran out.
    pub undrained: usize,
}

/// A pool that cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("shard {0} of the transfer pool is gone")]
    ShardGone(usize),
    #[error("shard {shard} of the transfer pool died: {why}")]
    ShardDied { shard: usize, why: String },
}

/// Where a batch's entries came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// Taken from the dedup map (the map holds them in flight).
    Map,
    /// (A part of) piece `no` of pass `gen`, at retry `level`.
    Pass { gen: u64, level: u32, no: u64 },
}

/// What one process transfers.
pub struct Batch {
    kind: BatchKind,
    seq: Seq,
    origin: Origin,
    entries: Vec<Taken>,
    /// For a plain batch, what the dispatcher's `lstat` saw of each entry when it took it
    /// (before the transfer reads it): the index updates its success makes true.
    seen: Option<Vec<IndexUpdate>>,
}

enum Event {
    Result(BatchResult),
    Probe(bool),
    Piece(Option<Piece>),
    ShardEnded(usize, String),
    Wake,
    Shutdown,
}

/// Runs the pool until `shutdown` fires and the map has drained (or the drain timeout ran
/// out: no batch succeeded for that long). With `cfg.initial_sync`, the whole tree is compared
/// first, in pieces.
///
/// Kept whole (about 80 lines): one loop whose state (draining, the deadline, the probe)
/// every step reads; each decision in it is a call into the dispatcher.
pub async fn run(pool: Pool, shutdown: Shutdown) -> Result<PoolReport, PoolError> {
    let Pool {
        target,
        transport,
        map,
        cfg,
        stats,
        initial_done,
        state,
        catch_up,
        resume_after,
    } = pool;
    let index = state.clone().map(|s| (cfg.source.clone(), s));
    let (shard_txs, mut result_rx, mut shards) = spawn_shards(&cfg, &transport, &stats, &index);
    let now = Instant::now();
    let mut d = Dispatcher::new(target.clone(), map.clone(), &cfg, stats, now);
    (d.initial_done, d.state, d.catch_up) = (initial_done, state, catch_up);
    if cfg.initial_sync {
        d.start_pass(PathBuf::new(), true, resume_after, now);
    }
    d.check_pass_done(now);

    let mut draining = shutdown.is_triggered();
    let mut drain_started: Option<Instant> = None;
    let probe_addr = transport.probe_addr();
    let mut probe: Option<std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>> = None;
    loop {
        let now = Instant::now();
        d.turn(now);
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
            d.dispatch(now, draining, &shard_txs).await?;
        }
        let busy = cfg.shards - d.idle.len();
        let work_left = !map.is_empty() || d.pass.is_some();
        let held = d.paused() || d.retired();
        if draining && (!work_left || past_deadline || held) && busy == 0 {
            break;
        }
        if probe.is_none() && d.health.probe_due(now) {
            if let Some((host, port)) = probe_addr.clone() {
                d.health.probing(now);
                probe = Some(Box::pin(tcp_probe(host, port)));
            }
        }
        let wake = d.next_wake(now, draining, deadline).min(now + TICK);
        let wants_piece = d.wants_piece();
        let event = tokio::select! {
            Some(res) = result_rx.recv() => Event::Result(res),
            ok = async { probe.as_mut().expect("guarded").await }, if probe.is_some() => Event::Probe(ok),
            piece = next_piece(&mut d.pass), if wants_piece => Event::Piece(piece),
            Some(ended) = shards.join_next() => match ended {
                Ok(shard) => Event::ShardEnded(shard, "it returned".into()),
                Err(e) => Event::ShardEnded(usize::MAX, e.to_string()),
            },
            _ = map.changed() => Event::Wake,
            _ = tokio::time::sleep_until(wake.into()) => Event::Wake,
            _ = shutdown.wait(), if !draining => Event::Shutdown,
        };
        match event {
            Event::Result(res) => d.finish(res),
            Event::Probe(ok) => {
                probe = None;
                if ok {
                    d.health.probe_ok(Instant::now());
                }
            }
            Event::Piece(p) => d.piece_arrived(p, Instant::now()),
            Event::ShardEnded(shard, why) => return Err(PoolError::ShardDied { shard, why }),
            Event::Wake => {}
            Event::Shutdown => draining = true,
        }
    }
    drop(shard_txs);
    // A paused target's queue stays in its journal for the next start; a retired one's in its
    // map for the pool that follows it (or the journal, for a target removed).
    if d.retired() {
        while shards.join_next().await.is_some() {}
        return Ok(PoolReport { undrained: 0 });
    }
    let kept = d.state.is_some() && d.paused();
    Ok(wind_down(&target, shards, &map, kept).await)
}

/// After the drain: waits for the shards (their channels are closed) and says what is left.
async fn wind_down(
    target: &Target,
    mut shards: JoinSet<usize>,
    map: &DedupMap,
    kept: bool,
) -> PoolReport {
    while let Some(ended) = shards.join_next().await {
        if let Err(e) = ended {
            error!(target = %target, "a shard failed while stopping: {e}");
        }
    }
    let undrained = map.len();
    if kept {
        if undrained > 0 {
            tracing::warn!(target = %target, kept = undrained, "shutdown: the target is paused; its changes stay in the journal for the next start");
        }
        return PoolReport { undrained: 0 };
    }
    if undrained > 0 {
        error!(target = %target, undrained, "shutdown: changes not replicated to this target (the next start's initial sync will pick them up)");
    }
    PoolReport { undrained }
}

/// The shard tasks: a channel into each, one channel back from all.
fn spawn_shards(
    cfg: &PoolConfig,
    transport: &Arc<dyn Transport>,
    stats: &Arc<PoolStats>,
    index: &Option<(PathBuf, Arc<TargetState>)>,
) -> (
    Vec<mpsc::Sender<Batch>>,
    mpsc::Receiver<BatchResult>,
    JoinSet<usize>,
) {
    let (result_tx, result_rx) = mpsc::channel::<BatchResult>(cfg.shards);
    let mut txs = Vec::with_capacity(cfg.shards);
    let mut set = JoinSet::new();
    for shard in 0..cfg.shards {
        let (tx, rx) = mpsc::channel::<Batch>(1);
        txs.push(tx);
        let ctx = ShardCtx {
            shard,
            transport: transport.clone(),
            results: result_tx.clone(),
            stats: stats.clone(),
            index: index.clone(),
        };
        set.spawn(async move {
            shard_task(ctx, rx).await;
            shard
        });
    }
    (txs, result_rx, set)
}

/// Whether something accepts a TCP connection at `host:port` within a second.
async fn tcp_probe(host: String, port: u16) -> bool {
    let connect = tokio::net::TcpStream::connect((host.as_str(), port));
    matches!(
        tokio::time::timeout(Duration::from_secs(1), connect).await,
        Ok(Ok(_))
    )
}

async fn next_piece(pass: &mut Option<passes::PassState>) -> Option<Piece> {
    match pass.as_mut() {
        Some(p) => p.next_from_walk().await,
        None => std::future::pending().await,
    }
}
