//! Wiring and lifecycle: builds one dedup map and one pool per target, starts the event source,
//! runs the initial sync, and on SIGTERM/SIGINT stops the source first and then lets every pool
//! drain what is queued before returning (the shutdown path of mini-redis, in small).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::config::Config;
use crate::dedup::DedupMap;
use crate::error::RunError;
use crate::pool::{self, PoolConfig, PoolReport, PoolStats};
use crate::source::{self, Sink, SourceConfig};

struct Pools {
    set: JoinSet<PoolReport>,
    initial: Vec<oneshot::Receiver<()>>,
    stats: Vec<Arc<PoolStats>>,
    maps: Vec<Arc<DedupMap>>,
}

fn new_maps(cfg: &Config) -> Vec<Arc<DedupMap>> {
    cfg.targets
        .iter()
        .map(|_| Arc::new(DedupMap::new(cfg.delay)))
        .collect()
}

/// Starts one pool per target, each on its map (`maps[i]` belongs to `cfg.targets[i]`).
fn start_pools(
    cfg: &Config,
    initial_sync: bool,
    finish_pass_on_drain: bool,
    shutdown: &watch::Receiver<bool>,
    maps: Vec<Arc<DedupMap>>,
) -> Pools {
    let mut p = Pools {
        set: JoinSet::new(),
        initial: Vec::new(),
        stats: Vec::new(),
        maps: Vec::new(),
    };
    for (target, map) in cfg.targets.iter().zip(maps) {
        let stats = Arc::new(PoolStats::default());
        let (tx, rx) = oneshot::channel();
        let pcfg = PoolConfig {
            source: cfg.source.clone(),
            shards: cfg.shards,
            rsync: cfg.rsync.clone(),
            drain_timeout: cfg.drain_timeout,
            initial_sync,
            finish_pass_on_drain,
        };
        p.set.spawn(pool::run(
            target.clone(),
            map.clone(),
            pcfg,
            Some(tx),
            shutdown.clone(),
            stats.clone(),
        ));
        p.initial.push(rx);
        p.stats.push(stats);
        p.maps.push(map);
    }
    p
}

async fn finish(mut pools: Pools) -> Result<(), RunError> {
    let mut undrained = 0;
    while let Some(r) = pools.set.join_next().await {
        match r {
            Ok(report) => undrained += report.undrained,
            Err(e) => warn!("a pool task failed: {e}"),
        }
    }
    for (t, s) in pools.stats.iter().enumerate() {
        info!(
            target = t,
            batches = s.batches.load(Ordering::Relaxed),
            paths = s.paths_done.load(Ordering::Relaxed),
            rsync_spawned = s.rsync_spawned.load(Ordering::Relaxed),
            failed_batches = s.failed_batches.load(Ordering::Relaxed),
            "pool finished"
        );
    }
    if undrained > 0 {
        return Err(RunError::Undrained(undrained));
    }
    Ok(())
}

/// `syncer run`: replicate until SIGTERM/SIGINT, then drain and return.
pub async fn run(cfg: Config) -> Result<(), RunError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term =
        signal(SignalKind::terminate()).map_err(|e| RunError::io("install SIGTERM handler", e))?;
    let mut int =
        signal(SignalKind::interrupt()).map_err(|e| RunError::io("install SIGINT handler", e))?;

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    // The maps exist before the source starts, so no event is missed; the pools (and with them
    // the initial sync) start after it is live, so changes made during the initial sync are
    // queued behind it.
    let maps = new_maps(&cfg);
    let scfg = SourceConfig {
        root: cfg.source.clone(),
        queue: cfg.fanotify_queue,
        ebpf_hooks: cfg.ebpf_hooks,
        ebpf_ring_bytes: cfg.ebpf_ring_bytes,
    };
    let src = source::start(cfg.source_kind, &scfg, Sink::new(maps.clone()))?;
    let started = Instant::now();
    let mut pools = start_pools(&cfg, cfg.initial_sync, false, &shutdown_rx, maps);
    let mut initial = all_fired(pools.initial_receivers());
    let mut initial_reported = false;
    if !cfg.initial_sync {
        info!("initial sync finished (skipped: --no-initial-sync)");
        initial_reported = true;
    }
    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM: draining"); break; }
            _ = int.recv() => { info!("SIGINT: draining"); break; }
            _ = &mut initial, if !initial_reported => {
                initial_reported = true;
                info!(ms = started.elapsed().as_millis() as u64, "initial sync finished");
            }
            Some(r) = pools.set.join_next() => {
                // A pool only ends on shutdown; one ending early is a bug worth stopping for.
                warn!("a pool ended unexpectedly: {r:?}");
                break;
            }
        }
    }
    let stats = src.stats.clone();
    tokio::task::spawn_blocking(move || src.stop())
        .await
        .map_err(|e| RunError::io("stop the event source", std::io::Error::other(e)))?;
    info!(
        events = stats.events.load(Ordering::Relaxed),
        rescans = stats.rescans.load(Ordering::Relaxed),
        stale = stats.stale.load(Ordering::Relaxed),
        lost = stats.lost.load(Ordering::Relaxed),
        "event source stopped"
    );
    let _ = shutdown_tx.send(true);
    for m in &pools.maps {
        m.wake();
    }
    finish(pools).await
}

/// `syncer sync`: one full parallel sync of every target, then return.
pub async fn sync_once(cfg: Config) -> Result<(), RunError> {
    let (_tx, rx) = watch::channel(true);
    let started = Instant::now();
    let pools = start_pools(&cfg, true, true, &rx, new_maps(&cfg));
    let r = finish(pools).await;
    if r.is_ok() {
        info!(ms = started.elapsed().as_millis() as u64, "sync finished");
    }
    r
}

impl Pools {
    fn initial_receivers(&mut self) -> Vec<oneshot::Receiver<()>> {
        std::mem::take(&mut self.initial)
    }
}

/// Resolves when every receiver has fired (or its sender is gone).
fn all_fired(
    rxs: Vec<oneshot::Receiver<()>>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    Box::pin(async move {
        for rx in rxs {
            let _ = rx.await;
        }
    })
}
