//! The targets' transfer pools as one set the supervisor owns: one dedup map and one pool task
//! per target, their counters, and the start-up pass's completion.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tracing::info;

use super::restore::{catch_up_for, Planned};
use super::RunError;
use crate::config::Config;
use crate::shutdown::Shutdown;
use crate::target::transport;
use crate::transfer::{self, Pool, PoolConfig, PoolError, PoolReport, PoolStats};

/// What a pool task ends with: its target's index and how it went.
pub type PoolEnd = (usize, Result<PoolReport, PoolError>);

pub struct Pools {
    pub set: JoinSet<PoolEnd>,
    pub stats: Vec<Arc<PoolStats>>,
    names: Vec<String>,
    initial: Vec<oneshot::Receiver<()>>,
}

/// What the pools are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    /// `syncer sync`: the pass is finished on shutdown, and nothing watches the tree meanwhile
    /// (so an unfinished pass records no progress to resume from).
    Sync,
    /// `syncer run`: a live source watches the tree; an unfinished pass is abandoned on
    /// shutdown, its progress recorded for the next start to resume.
    Run,
}

impl Pools {
    /// Starts one pool per target as planned (`planned[i]` belongs to `cfg.targets[i]`):
    /// with its map and state, a full pass first where `pass` (and `initial_sync`) says so.
    pub fn start(
        cfg: &Config,
        initial_sync: bool,
        job: Job,
        shutdown: &Shutdown,
        planned: &[Planned],
    ) -> Pools {
        let mut p = Pools {
            set: JoinSet::new(),
            stats: Vec::new(),
            names: Vec::new(),
            initial: Vec::new(),
        };
        for (i, (target, plan)) in cfg.targets.iter().zip(planned).enumerate() {
            let map = plan.map.clone();
            let stats = Arc::new(PoolStats::default());
            let (tx, rx) = oneshot::channel();
            let pool = Pool {
                target: target.clone(),
                transport: transport(&cfg.source, target, &cfg.rsync),
                map: map.clone(),
                cfg: PoolConfig {
                    source: cfg.source.clone(),
                    shards: target.shards.unwrap_or(cfg.shards),
                    batch_max: cfg.batch_max,
                    can_probe: target.probe_addr().is_some(),
                    drain_timeout: cfg.drain_timeout,
                    initial_sync: initial_sync && plan.pass,
                    finish_pass_on_drain: job == Job::Sync,
                    watched: job == Job::Run,
                },
                stats: stats.clone(),
                initial_done: Some(tx),
                state: Some(plan.state.clone()),
                catch_up: Some(catch_up_for(
                    cfg.source.clone(),
                    plan.state.clone(),
                    map.clone(),
                )),
                resume_after: plan.resume_after.clone().filter(|_| job == Job::Run),
            };
            let shutdown = shutdown.clone();
            p.set
                .spawn(async move { (i, transfer::run(pool, shutdown).await) });
            p.initial.push(rx);
            p.stats.push(stats);
            p.names.push(target.name.clone());
        }
        p
    }

    /// Resolves once every pool's start-up pass is done (or its pool is gone).
    pub fn initial_done(&mut self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let rxs = std::mem::take(&mut self.initial);
        async move {
            for rx in rxs {
                let _ = rx.await;
            }
        }
    }

    /// Each target's name and counters (for the service manager's status and watchdog).
    pub fn seen(&self) -> Vec<(String, Arc<PoolStats>)> {
        self.names
            .iter()
            .cloned()
            .zip(self.stats.iter().cloned())
            .collect()
    }

    pub fn name(&self, i: usize) -> &str {
        self.names.get(i).map_or("?", String::as_str)
    }

    /// The error of a pool that ended: its target named.
    pub fn failure(&self, ended: Result<PoolEnd, tokio::task::JoinError>) -> Option<RunError> {
        match ended {
            Ok((_, Ok(_))) => None,
            Ok((i, Err(e))) => Some(RunError::PoolFailed {
                target: self.name(i).to_string(),
                why: e.to_string(),
            }),
            Err(e) => Some(RunError::PoolFailed {
                target: "(unknown)".into(),
                why: format!("its task ended: {e}"),
            }),
        }
    }

    /// Waits for every pool to finish its drain; the first failure, else the changes left.
    pub async fn finish(mut self) -> Result<(), RunError> {
        let mut undrained = 0;
        let mut failed = None;
        while let Some(ended) = self.set.join_next().await {
            if let Ok((_, Ok(report))) = &ended {
                undrained += report.undrained;
            }
            if let Some(e) = self.failure(ended) {
                tracing::error!("{e}");
                failed.get_or_insert(e);
            }
        }
        for (t, s) in self.stats.iter().enumerate() {
            info!(
                target = self.name(t),
                batches = s.batches.load(Ordering::Relaxed),
                paths = s.paths_done.load(Ordering::Relaxed),
                rsync_spawned = s.rsync_spawned.load(Ordering::Relaxed),
                failed_batches = s.failed_batches.load(Ordering::Relaxed),
                dropped = s.dropped.load(Ordering::Relaxed),
                "pool finished"
            );
        }
        match (failed, undrained) {
            (Some(e), _) => Err(e),
            (None, 0) => Ok(()),
            (None, n) => Err(RunError::Undrained(n)),
        }
    }
}
