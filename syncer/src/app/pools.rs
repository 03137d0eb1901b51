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
use crate::queue::DedupMap;
use crate::shutdown::Shutdown;
use crate::state::TargetState;
use crate::target::{transport, Target};
use crate::transfer::{self, Pool, PoolConfig, PoolError, PoolReport, PoolStats};

/// What a pool task ends with: its pool's id and how it went.
pub type PoolEnd = (u64, Result<PoolReport, PoolError>);

/// One target's pool as the supervisor sees it.
pub struct Member {
    pub id: u64,
    pub target: Target,
    pub stats: Arc<PoolStats>,
    pub map: Arc<DedupMap>,
    pub state: Arc<TargetState>,
    /// Stops this pool alone (a reload that removes or changes its target).
    stop: Shutdown,
}

pub struct Pools {
    pub set: JoinSet<PoolEnd>,
    /// The running pools, in the config's order.
    pub members: Vec<Member>,
    /// Pools stopped by a reload, until they end (their end is not a failure).
    retiring: Vec<(u64, String)>,
    initial: Vec<oneshot::Receiver<()>>,
    next_id: u64,
    job: Job,
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
            members: Vec::new(),
            retiring: Vec::new(),
            initial: Vec::new(),
            next_id: 0,
            job,
        };
        for (target, plan) in cfg.targets.iter().zip(planned) {
            let stats = Arc::new(PoolStats::default());
            let rx = p.spawn(cfg, target, plan, initial_sync, stats, shutdown);
            p.initial.push(rx);
        }
        p
    }

    /// Starts the pool of `target` as `plan` says (`stats`: its counters, kept across a
    /// reload that changes it); resolves the receiver once its start-up pass is done.
    fn spawn(
        &mut self,
        cfg: &Config,
        target: &Target,
        plan: &Planned,
        initial_sync: bool,
        stats: Arc<PoolStats>,
        shutdown: &Shutdown,
    ) -> oneshot::Receiver<()> {
        let job = self.job;
        let map = plan.map.clone();
        if job == Job::Run && plan.state.paused() {
            stats.paused.store(true, Ordering::Relaxed);
            tracing::warn!(target = %target.name, pending = map.len(),
                "paused by the operator before this start: its changes stay queued until `syncer resume {}`", target.name);
        }
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
                stats.clone(),
            )),
            resume_after: plan.resume_after.clone().filter(|_| job == Job::Run),
        };
        let id = self.next_id;
        self.next_id += 1;
        let stop = shutdown.child();
        let run_stop = stop.clone();
        self.set
            .spawn(async move { (id, transfer::run(pool, run_stop).await) });
        self.members.push(Member {
            id,
            target: target.clone(),
            stats,
            map,
            state: plan.state.clone(),
            stop,
        });
        rx
    }

    /// Starts a pool for a target a reload added or changed (`stats`: a changed one's).
    pub fn add(
        &mut self,
        cfg: &Config,
        target: &Target,
        plan: &Planned,
        stats: Option<Arc<PoolStats>>,
        shutdown: &Shutdown,
    ) {
        let stats = stats.unwrap_or_default();
        stats.retired.store(false, Ordering::Relaxed);
        // Its pass reports its own end in the log; nobody waits for it.
        drop(self.spawn(cfg, target, plan, true, stats, shutdown));
    }

    /// Stops the pool of the member at `i` (a reload removed or changes its target): what it
    /// has in flight finishes, what is queued stays in its map and journal. Returns it.
    pub fn retire(&mut self, i: usize) -> Member {
        let m = self.members.remove(i);
        m.stats.retired.store(true, Ordering::Relaxed);
        m.map.wake();
        m.stop.trigger();
        self.retiring.push((m.id, m.target.name.clone()));
        m
    }

    /// Puts the members in the order of `names` (the config's).
    pub fn order_by(&mut self, names: &[String]) {
        self.members.sort_by_key(|m| {
            names
                .iter()
                .position(|n| *n == m.target.display)
                .unwrap_or(usize::MAX)
        });
    }

    /// Each pool's name and counters, for the progress bars.
    pub fn progress_targets(&self) -> Vec<(String, Arc<PoolStats>)> {
        self.members
            .iter()
            .map(|m| (m.target.name.clone(), m.stats.clone()))
            .collect()
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

    fn name(&self, id: u64) -> String {
        self.members
            .iter()
            .find(|m| m.id == id)
            .map(|m| m.target.name.clone())
            .or_else(|| {
                self.retiring
                    .iter()
                    .find(|(i, _)| *i == id)
                    .map(|(_, n)| n.clone())
            })
            .unwrap_or_else(|| "?".into())
    }

    /// A pool a reload stopped has ended (not a failure): forgotten; its id.
    pub fn retired(&mut self, ended: &Result<PoolEnd, tokio::task::JoinError>) -> Option<u64> {
        let Ok((id, _)) = ended else { return None };
        let at = self.retiring.iter().position(|(i, _)| i == id)?;
        let (_, name) = self.retiring.remove(at);
        info!(target = %name, "the pool of a target the reload removed or changed has stopped");
        Some(*id)
    }

    /// The error of a pool that ended: its target named.
    pub fn failure(&self, ended: Result<PoolEnd, tokio::task::JoinError>) -> Option<RunError> {
        match ended {
            Ok((_, Ok(_))) => None,
            Ok((id, Err(e))) => Some(RunError::PoolFailed {
                target: self.name(id),
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
            if self.retired(&ended).is_some() {
                continue;
            }
            if let Ok((_, Ok(report))) = &ended {
                undrained += report.undrained;
            }
            if let Some(e) = self.failure(ended) {
                tracing::error!("{e}");
                failed.get_or_insert(e);
            }
        }
        for m in &self.members {
            let s = &m.stats;
            info!(
                target = %m.target.name,
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
