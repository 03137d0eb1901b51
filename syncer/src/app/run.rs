//! `syncer run`, the supervisor: arms the event source (first, so that nothing is missed while
//! the state opens), builds one dedup map per target, starts the source's reader into them and
//! the pools (after the source is live, so changes made during the start-up pass are queued
//! behind it), then watches all of them.
//!
//! - SIGTERM/SIGINT: the source stops, then the pools drain (delays ignored) until their maps
//!   are empty or nothing succeeded for `drain_timeout_s`; exit 0, or 1 naming what is left.
//! - The source's thread dies (a panic): it is said loudly, and the source is opened again
//!   with a rescan of the whole tree (the queued changes of every target stay where they are),
//!   at most [`RESTARTS`] times in [`RESTART_WINDOW`]; beyond that syncer drains and exits 1,
//!   for the service manager's restart policy to take over.
//! - A pool fails (a shard died): said with its target, the others drain, exit 1.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use super::fdstore;
use super::live::{Live, LiveTarget};
use super::pools::{Job, Pools};
use super::restore;
use super::RunError;
use crate::change::{Change, ChangeSink};
use crate::config::Config;
use crate::ops::control;
use crate::ops::notify::{self as service, Service};
use crate::queue::Fanout;
use crate::shutdown::Shutdown;
use crate::source::{self, SourceConfig, SourceExit, SourceHandle};
use crate::state::catchup::Compared;
use crate::transfer::check::check_contents;
use crate::transfer::PoolStats;

/// Restarts of a dying source allowed within [`RESTART_WINDOW`].
pub const RESTARTS: usize = 3;
pub const RESTART_WINDOW: Duration = Duration::from_secs(600);

/// When the source died lately; decides whether it may be restarted once more.
#[derive(Debug, Default)]
pub struct RestartBudget {
    deaths: Vec<Instant>,
}

impl RestartBudget {
    /// Records a death at `now`; whether a restart is allowed.
    pub fn allow(&mut self, now: Instant) -> bool {
        self.deaths
            .retain(|&t| now.duration_since(t) < RESTART_WINDOW);
        self.deaths.push(now);
        self.deaths.len() <= RESTARTS
    }

    pub fn deaths(&self) -> usize {
        self.deaths.len()
    }
}

/// Reads the configuration again (the file, under the same command line), for a reload.
pub type Reloader = Box<dyn Fn() -> Result<Config, crate::config::ConfigError> + Send + Sync>;

/// `syncer run`: replicate until SIGTERM/SIGINT, then drain and return; on SIGHUP, the
/// configuration is read again through `reload` and its targets applied.
pub async fn run(mut cfg: Config, reload: Option<Reloader>) -> Result<(), RunError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term =
        signal(SignalKind::terminate()).map_err(|e| RunError::io("install SIGTERM handler", e))?;
    let mut int =
        signal(SignalKind::interrupt()).map_err(|e| RunError::io("install SIGINT handler", e))?;
    let mut hup =
        signal(SignalKind::hangup()).map_err(|e| RunError::io("install SIGHUP handler", e))?;

    super::preflight::check_targets(&cfg).await?;
    // Bound before anything starts: an address that cannot be had is the operator's to fix.
    let metrics_listener = match cfg.metrics_listen {
        Some(addr) => Some(crate::ops::control::bind_metrics(addr).await.map_err(|e| {
            RunError::io(
                format!("listen for metrics on {addr} (--metrics-listen)"),
                e,
            )
        })?),
        None => None,
    };
    let shutdown = Shutdown::new();
    let scfg = SourceConfig {
        root: cfg.source.clone(),
        queue: cfg.fanotify_queue,
        ebpf_hooks: cfg.ebpf_hooks,
        ebpf_ring_bytes: cfg.ebpf_ring_bytes,
        caught_up: Default::default(),
    };
    // Armed before the state is opened (a store recovering after a crash takes a moment):
    // what changes meanwhile queues in the kernel rather than being left to a walk. Under
    // systemd, the previous syncer's fanotify group may be handed back with what queued
    // while no syncer ran.
    let kept = fdstore::take();
    let kept_id = kept.as_ref().map(|k| k.id);
    let opened = source::open(cfg.source_kind, &scfg, kept.map(|k| k.fd))?;
    let taken_up = matches!(opened.kept_queue(), Some((_, true)));
    let (state, planned) = restore::open(
        &cfg,
        Some(scfg.caught_up.clone()),
        kept_id.filter(|_| taken_up),
    )?;
    let marks = keep_group(&state, &opened, kept_id.filter(|_| taken_up), kept_id);
    let maps: Vec<_> = planned.iter().map(|p| p.map.clone()).collect();
    let fanout = Arc::new(Fanout::new(maps));
    let sink: Arc<dyn ChangeSink> = fanout.clone();
    let mut src = Some(opened.start(sink.clone(), &shutdown, marks)?);
    let started = Instant::now();
    let mut pools = Pools::start(&cfg, cfg.initial_sync, Job::Run, &shutdown, &planned);
    let mut initial = initial_sync(&cfg, &planned, &mut pools);
    let mut initial_reported = !cfg.initial_sync;
    // On a terminal, bars for the start-up pass, gone once the initial sync is.
    let mut progress = cfg
        .initial_sync
        .then(|| super::progress::Progress::start(pools.progress_targets()))
        .flatten();
    if !cfg.initial_sync {
        info!("initial sync finished (skipped: --no-initial-sync)");
    }
    // Ready once the source is live: changes are seen from here on.
    let live = Arc::new(Live::new(
        cfg.source.clone(),
        live_targets(&pools, &[]),
        sink.clone(),
        scfg.caught_up.clone(),
    ));
    live.set_source(
        src.as_ref()
            .map(|s| (s.picked.to_string(), s.stats.clone())),
    );
    // Its own stop: status answers through the drain too.
    let control_stop = Shutdown::new();
    let mut control = start_control(&cfg, &live, &control_stop);
    let mut metrics = metrics_listener.map(|l| start_metrics(l, &live, &control_stop));
    // The control and metrics tasks started again when they end on their own (a panic).
    let mut served_restarts = 0u32;
    // Tests hold the start here (`FAILPOINTS=service-ready=sleep(3000)`): the unit must not
    // be active before READY.
    fail::fail_point!("service-ready");
    let mut service = Service::new();
    service.ready(&pipeline_now(
        src.as_ref().map(|s| &*s.stats),
        &pools,
        !initial_reported,
        false,
    ));
    // Pools a reload changes wait for their predecessor's end (by its id) before they start:
    // two dispatchers never share a map.
    let mut replacements: Vec<Replacement> = Vec::new();
    let mut service_tick = tokio::time::interval(service.interval());
    service_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut budget = RestartBudget::default();
    let mut fatal = None;
    let mut verify = verify_timer(&cfg);
    let mut verifying: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        tokio::select! {
            _ = tick(&mut verify) => {
                if verifying.as_ref().is_none_or(|v| v.is_finished()) {
                    verifying = Some(spawn_verify(&cfg, &pools));
                }
            }
            _ = service_tick.tick() => {
                service.tick(&pipeline_now(src.as_ref().map(|s| &*s.stats), &pools, !initial_reported, false));
            }
            _ = hup.recv() => {
                service.reloading();
                let outcome = match &reload {
                    None => Err("this syncer was started without a config file: nothing to read again".to_string()),
                    Some(read) => read().map_err(|e| e.to_string()).and_then(|new| {
                        apply_reload(new, &mut cfg, &mut pools, &mut replacements, &state, &shutdown)
                            .map_err(|e| e.to_string())
                    }),
                };
                match &outcome {
                    Ok(summary) => info!("reloaded: {summary}"),
                    Err(e) => error!("reload failed, the running configuration stays: {e}"),
                }
                fanout.set(fed_maps(&pools, &replacements));
                live.set_targets(live_targets(&pools, &replacements));
                live.set_reload_error(outcome.err());
                service.ready(&pipeline_now(src.as_ref().map(|s| &*s.stats), &pools, !initial_reported, false));
            }
            _ = term.recv() => { info!("SIGTERM: draining"); break; }
            _ = int.recv() => { info!("SIGINT: draining"); break; }
            _ = &mut initial, if !initial_reported => {
                initial_reported = true;
                drop(progress.take());
                info!(ms = started.elapsed().as_millis() as u64, "initial sync finished");
            }
            r = task_ended(&mut control) => {
                served_restarts += 1;
                if served_restarts <= SERVED_RESTARTS {
                    error!("the control socket's task ended ({}): starting it again", joined(r));
                    control = start_control(&cfg, &live, &control_stop);
                } else {
                    error!("the control socket's task ended ({}), too often: running without it", joined(r));
                }
            }
            r = task_ended(&mut metrics) => {
                served_restarts += 1;
                let again = served_restarts <= SERVED_RESTARTS;
                error!("the metrics task ended ({}){}", joined(r), if again { ": starting it again" } else { ", too often: running without it" });
                if let (true, Some(addr)) = (again, cfg.metrics_listen) {
                    match crate::ops::control::bind_metrics(addr).await {
                        Ok(l) => metrics = Some(start_metrics(l, &live, &control_stop)),
                        Err(e) => error!("listen for metrics on {addr} again: {e}: running without metrics"),
                    }
                }
            }
            _ = exited(&mut src) => {
                let dead = src.take().expect("exited() only resolves with a source");
                live.set_source(None);
                match restart_source(dead, &mut budget, &cfg, &scfg, &sink, &shutdown, &state) {
                    Ok(new) => {
                        live.set_source(Some((new.picked.to_string(), new.stats.clone())));
                        src = Some(new);
                    }
                    Err(e) => {
                        fatal = Some(e);
                        break;
                    }
                }
            }
            Some(ended) = pools.set.join_next() => {
                if let Some(id) = pools.retired(&ended) {
                    if let Some(at) = replacements.iter().position(|r| r.after == id) {
                        let r = replacements.remove(at);
                        match restore::plan_reloaded(&state, &cfg, &r.target, Some(r.map.clone())) {
                            Ok(plan) => pools.add(&cfg, &r.target, &plan, Some(r.stats), &shutdown),
                            Err(e) => error!(target = %r.target, "{e}: the changed target cannot start again; restart syncer"),
                        }
                        pools.order_by(&cfg.targets.iter().map(|t| t.display.clone()).collect::<Vec<_>>());
                        fanout.set(fed_maps(&pools, &replacements));
                        live.set_targets(live_targets(&pools, &replacements));
                    }
                    continue;
                }
                // A pool ends only on shutdown; one ending now failed.
                let e = pools.failure(ended).unwrap_or_else(|| RunError::PoolFailed {
                    target: "(unknown)".into(),
                    why: "it returned before shutdown".into(),
                });
                error!("{e}; draining the other targets and exiting");
                fatal = Some(e);
                break;
            }
        }
    }
    service.stopping(&pipeline_now(
        src.as_ref().map(|s| &*s.stats),
        &pools,
        !initial_reported,
        true,
    ));
    if let Some(src) = src {
        stop_source(src);
    }
    shutdown.trigger();
    drop(replacements);
    let drained = drain(pools, &mut service, cfg.drain_timeout).await;
    control_stop.trigger();
    for task in [control, metrics].into_iter().flatten() {
        let _ = task.await;
    }
    drop(planned);
    drop(state);
    match fatal {
        Some(e) => Err(e),
        None => drained,
    }
}

/// Restarts of the control and metrics tasks, together, before syncer runs on without them.
const SERVED_RESTARTS: u32 = 10;

/// The metrics task: it answers on `listener` until `stop`.
fn start_metrics(
    listener: tokio::net::TcpListener,
    live: &Arc<Live>,
    stop: &Shutdown,
) -> tokio::task::JoinHandle<()> {
    info!(addr = ?listener.local_addr().ok(), "metrics served at /metrics");
    let pipeline: Arc<dyn control::Pipeline> = live.clone();
    tokio::spawn(crate::ops::control::serve_metrics(
        listener,
        pipeline,
        stop.clone(),
    ))
}

/// Resolves when `task` ends (never when there is none), leaving `None` behind.
async fn task_ended(
    task: &mut Option<tokio::task::JoinHandle<()>>,
) -> Result<(), tokio::task::JoinError> {
    let r = match task.as_mut() {
        Some(t) => t.await,
        None => std::future::pending().await,
    };
    *task = None;
    r
}

/// Why a task ended, for the log.
fn joined(r: Result<(), tokio::task::JoinError>) -> String {
    match r {
        Ok(()) => "it returned".into(),
        Err(e) if e.is_panic() => {
            let p = e.into_panic();
            p.downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .map_or("a panic".into(), |m| format!("a panic: {m}"))
        }
        Err(e) => e.to_string(),
    }
}

/// The control socket's task (`None`: no socket, said why): it answers until `stop`.
fn start_control(
    cfg: &Config,
    live: &Arc<Live>,
    stop: &Shutdown,
) -> Option<tokio::task::JoinHandle<()>> {
    match control::bind(&cfg.control_socket) {
        Ok(listener) => {
            info!(socket = %cfg.control_socket.display(), "control socket ready (syncer status)");
            let pipeline: Arc<dyn control::Pipeline> = live.clone();
            Some(tokio::spawn(control::serve(
                listener,
                pipeline,
                stop.clone(),
            )))
        }
        Err(e) => {
            warn!(
                "{e}: running without a control socket (`syncer status` cannot reach this syncer)"
            );
            None
        }
    }
}

/// The pipeline as the service manager is told of it: `reader`, the source's counters (none
/// while it is being restarted).
fn pipeline_now(
    reader: Option<&crate::source::SourceStats>,
    pools: &Pools,
    initial: bool,
    draining: bool,
) -> service::Now {
    now_of(reader, &seen(pools), initial, draining)
}

/// Each target's name, counters and map.
type Seen = Vec<(String, Arc<PoolStats>, Arc<crate::queue::DedupMap>)>;

fn seen(pools: &Pools) -> Seen {
    pools
        .members
        .iter()
        .map(|m| (m.target.name.clone(), m.stats.clone(), m.map.clone()))
        .collect()
}

fn now_of(
    reader: Option<&crate::source::SourceStats>,
    seen: &Seen,
    initial: bool,
    draining: bool,
) -> service::Now {
    let now = Instant::now();
    service::Now {
        initial,
        draining,
        reader_idle_for: reader.map(|s| s.alive.age(now)),
        targets: seen
            .iter()
            .map(|(name, s, map)| service::TargetNow {
                name: name.clone(),
                pending: map.len(),
                down: s.down.load(Ordering::Relaxed),
                idle_for: s.alive.age(now),
            })
            .collect(),
    }
}

/// Waits for the pools' drain; meanwhile the service manager is kept told (STATUS, watchdog),
/// and asked for more time while the drain makes progress (each extension outlasts the
/// drain's own give-up time, `drain_timeout` without progress).
async fn drain(
    pools: Pools,
    service: &mut Service,
    drain_timeout: Duration,
) -> Result<(), RunError> {
    let seen = seen(&pools);
    let done = || -> u64 {
        seen.iter()
            .map(|(_, s, _)| s.paths_done.load(Ordering::Relaxed))
            .sum()
    };
    let mut last = done();
    let mut last_extend = Instant::now();
    let finish = pools.finish();
    tokio::pin!(finish);
    let mut tick = tokio::time::interval(service.interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            r = &mut finish => return r,
            _ = tick.tick() => {
                service.tick(&now_of(None, &seen, false, true));
                if last_extend.elapsed() >= service::EXTEND_EVERY {
                    last_extend = Instant::now();
                    let now = done();
                    if now != last {
                        last = now;
                        service.extend(drain_timeout + Duration::from_secs(30));
                    }
                    let left: usize = seen.iter().map(|(_, _, m)| m.len()).sum();
                    info!(left, "draining");
                }
            }
        }
    }
}

/// A pool a reload changes: started once its predecessor (`after`) has ended.
struct Replacement {
    after: u64,
    target: crate::target::Target,
    map: Arc<crate::queue::DedupMap>,
    stats: Arc<PoolStats>,
    state: Arc<crate::state::TargetState>,
}

/// The maps the source feeds: every running pool's and those of pools waiting to replace one.
fn fed_maps(pools: &Pools, waiting: &[Replacement]) -> Vec<Arc<crate::queue::DedupMap>> {
    pools
        .members
        .iter()
        .map(|m| m.map.clone())
        .chain(waiting.iter().map(|r| r.map.clone()))
        .collect()
}

/// The targets the control socket shows: the running pools' and those waiting to replace one.
fn live_targets(pools: &Pools, waiting: &[Replacement]) -> Vec<LiveTarget> {
    let live = |target: &crate::target::Target,
                stats: &Arc<PoolStats>,
                map: &Arc<crate::queue::DedupMap>,
                state: &Arc<crate::state::TargetState>| LiveTarget {
        name: target.name.clone(),
        url: target.display.clone(),
        stats: stats.clone(),
        map: map.clone(),
        state: state.clone(),
    };
    pools
        .members
        .iter()
        .map(|m| live(&m.target, &m.stats, &m.map, &m.state))
        .chain(
            waiting
                .iter()
                .map(|r| live(&r.target, &r.stats, &r.map, &r.state)),
        )
        .collect()
}

/// What a reload may change while syncer runs: its targets (added, removed, or changed:
/// their settings or the global ones they take). The rest takes effect at the next start.
fn apply_reload(
    new: Config,
    cfg: &mut Config,
    pools: &mut Pools,
    replacements: &mut Vec<Replacement>,
    state: &crate::state::State,
    shutdown: &Shutdown,
) -> Result<String, RunError> {
    for (what, old, now) in [
        (
            "source",
            format!("{:?}", cfg.source),
            format!("{:?}", new.source),
        ),
        (
            "state_dir",
            format!("{:?}", cfg.state_dir),
            format!("{:?}", new.state_dir),
        ),
        (
            "source_kind",
            format!("{:?}", cfg.source_kind),
            format!("{:?}", new.source_kind),
        ),
        (
            "control_socket",
            format!("{:?}", cfg.control_socket),
            format!("{:?}", new.control_socket),
        ),
        (
            "metrics_listen",
            format!("{:?}", cfg.metrics_listen),
            format!("{:?}", new.metrics_listen),
        ),
        (
            "fanotify_queue",
            format!("{:?}", cfg.fanotify_queue),
            format!("{:?}", new.fanotify_queue),
        ),
    ] {
        if old != now {
            warn!("reload: {what} changed ({old} -> {now}); it takes effect at the next start");
        }
    }
    let globals = |c: &Config| {
        format!(
            "{:?} {:?} {:?} {:?} {:?}",
            c.shards, c.delay, c.rsync, c.batch_max, c.drain_timeout
        )
    };
    let globals_changed = globals(cfg) != globals(&new);
    let (mut added, mut removed, mut changed) = (Vec::new(), Vec::new(), Vec::new());
    let mut i = 0;
    while i < pools.members.len() {
        let m = &pools.members[i];
        match new.targets.iter().find(|t| t.display == m.target.display) {
            None => {
                removed.push(m.target.name.clone());
                pools.retire(i);
            }
            Some(t) if *t != m.target || globals_changed => {
                changed.push(t.name.clone());
                let old = pools.retire(i);
                replacements.push(Replacement {
                    after: old.id,
                    target: t.clone(),
                    map: old.map,
                    stats: old.stats,
                    state: old.state,
                });
            }
            Some(_) => i += 1,
        }
    }
    for t in &new.targets {
        let running = pools.members.iter().any(|m| m.target.display == t.display)
            || replacements.iter().any(|r| r.target.display == t.display);
        if !running {
            let plan = restore::plan_reloaded(state, &new, t, None)?;
            pools.add(&new, t, &plan, None, shutdown);
            added.push(t.name.clone());
        }
    }
    pools.order_by(
        &new.targets
            .iter()
            .map(|t| t.display.clone())
            .collect::<Vec<_>>(),
    );
    *cfg = new;
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    Ok(format!(
        "targets added: {}; removed: {}; changed: {}",
        list(&added),
        list(&removed),
        list(&changed)
    ))
}

/// The source's kernel queue, if it can outlive this process (a fanotify group): followed by
/// the state's cursor, and handed to systemd's fd store (replacing `stored`, the group handed
/// back, when this is another one). `taken_up`: the group is the one handed back. The marks
/// its reader leaves. Without a service manager to hand it to, nothing is kept: the spool's
/// write per read would only cost.
fn keep_group(
    state: &crate::state::State,
    opened: &source::Opened,
    taken_up: Option<u64>,
    stored: Option<u64>,
) -> Option<Arc<dyn crate::change::ReadMarks>> {
    match opened.kept_queue().filter(|_| fdstore::available()) {
        Some((fd, _)) => {
            let id = taken_up.unwrap_or_else(fdstore::new_id);
            match state.follow_group(id) {
                Ok(marks) => {
                    fdstore::keep(id, fd, stored);
                    Some(marks)
                }
                Err(e) => {
                    // Without marks a kept group would look to a successor as the last
                    // marks say: it is not kept, and the next start walks.
                    warn!("{e}: the fanotify group is not kept for a restart");
                    if let Some(old) = stored {
                        fdstore::forget(old);
                    }
                    None
                }
            }
        }
        None => {
            if let Some(old) = stored {
                fdstore::forget(old);
            }
            None
        }
    }
}

/// The initial sync: targets with a complete index catch up by one walk against it, while the
/// others pass; resolves when both are done.
fn initial_sync(
    cfg: &Config,
    planned: &[restore::Planned],
    pools: &mut Pools,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    let walked: Vec<Compared> = planned
        .iter()
        .filter(|p| p.walk)
        .map(|p| Compared {
            state: p.state.clone(),
            map: p.map.clone(),
        })
        .collect();
    // Targets that pass after a syncer that used the state died or stopped: what changed
    // since it was last alive goes ahead of the pass (the oldest such moment of them all).
    let (ahead, resumed): (Vec<_>, Vec<_>) = planned
        .iter()
        .filter(|p| p.recent_since.is_some() && cfg.initial_sync)
        .map(|p| {
            let t = Compared {
                state: p.state.clone(),
                map: p.map.clone(),
            };
            (t, p.resume_after.clone())
        })
        .unzip();
    let since = planned.iter().filter_map(|p| p.recent_since).min();
    let source = cfg.source.clone();
    let ahead = tokio::task::spawn_blocking(move || {
        if let Some(since) = since {
            restore::recent(&source, since, &ahead, &resumed);
        }
    });
    let source = cfg.source.clone();
    let walk = tokio::task::spawn_blocking(move || restore::walk(&source, &walked, true));
    let passes = pools.initial_done();
    Box::pin(async move {
        let _ = walk.await;
        let _ = ahead.await;
        passes.await;
    })
}

/// Ticks every `verify_interval_s`, first one interval after the start.
fn verify_timer(cfg: &Config) -> Option<tokio::time::Interval> {
    cfg.verify_interval.map(|every| {
        let mut t = tokio::time::interval_at((Instant::now() + every).into(), every);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        t
    })
}

async fn tick(t: &mut Option<tokio::time::Interval>) {
    match t {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// The periodic verify: a catch-up walk against every complete index, then, with
/// `verify_checksum`, each of those targets' contents check (an rsync dry run with
/// `--checksum`); what either finds is queued and replicated like any change.
fn spawn_verify(cfg: &Config, pools: &Pools) -> tokio::task::JoinHandle<()> {
    let complete: Vec<&super::pools::Member> = pools
        .members
        .iter()
        .filter(|m| m.state.is_complete())
        .collect();
    let targets: Vec<Compared> = complete
        .iter()
        .map(|m| Compared {
            state: m.state.clone(),
            map: m.map.clone(),
        })
        .collect();
    info!(
        targets = targets.len(),
        checksum = cfg.verify_checksum,
        "verify: comparing the source with the index"
    );
    let checks: Vec<_> = complete
        .iter()
        .filter(|_| cfg.verify_checksum)
        .map(|m| {
            (
                m.target.display.clone(),
                crate::target::transport(&cfg.source, &m.target, &cfg.rsync),
                m.map.clone(),
                m.state.tag().to_string(),
            )
        })
        .collect();
    let source = cfg.source.clone();
    tokio::spawn(async move {
        let _ = tokio::task::spawn_blocking(move || restore::walk(&source, &targets, false)).await;
        for (name, transport, map, tag) in checks {
            let t0 = Instant::now();
            let done = check_contents(&*transport, &map, Some(tag)).await;
            let ms = t0.elapsed().as_millis() as u64;
            match done {
                Ok(0) => {
                    info!(target = %name, ms, "verify: the target's contents match the source")
                }
                Ok(n) => {
                    warn!(target = %name, differences = n, ms, "verify: the target's contents differ from the source; the differences are queued")
                }
                Err(e) => warn!(target = %name, ms, "verify: {e}; tried again at the next verify"),
            }
        }
    })
}

async fn exited(src: &mut Option<SourceHandle>) {
    match src.as_mut() {
        Some(s) => s.exited().await,
        None => std::future::pending().await,
    }
}

/// The source's thread ended on its own: open it again with a rescan, within the budget; or
/// the error to exit with.
fn restart_source(
    src: SourceHandle,
    budget: &mut RestartBudget,
    cfg: &Config,
    scfg: &SourceConfig,
    sink: &Arc<dyn ChangeSink>,
    shutdown: &Shutdown,
    state: &crate::state::State,
) -> Result<SourceHandle, RunError> {
    let picked = src.picked;
    let stats = src.stats.clone();
    let why = match src.stop() {
        SourceExit::Died(why) => why,
        SourceExit::Stopped => "its thread stopped without being asked".to_string(),
    };
    error!(source = %picked, events = stats.events.load(Ordering::Relaxed), "the event source died: {why}");
    let allowed = budget.allow(Instant::now());
    let died = RunError::SourceDied {
        source_kind: picked.to_string(),
        times: budget.deaths(),
        window_min: RESTART_WINDOW.as_secs() / 60,
        why,
    };
    if !allowed {
        error!("{died}: draining and exiting");
        return Err(died);
    }
    // A new kernel queue: the one in the fd store (if any) is replaced with it.
    let started = source::open(cfg.source_kind, scfg, None).and_then(|o| {
        let marks = keep_group(state, &o, None, state.followed_group());
        o.start(sink.clone(), shutdown, marks)
    });
    match started {
        Ok(new) => {
            warn!(source = %new.picked, "event source restarted; rescanning the whole tree for what happened meanwhile");
            sink.push(&[Change::rescan("")]);
            Ok(new)
        }
        Err(e) => {
            error!("the event source cannot be opened again: {e}");
            Err(died)
        }
    }
}

fn stop_source(src: SourceHandle) {
    let stats = src.stats.clone();
    // The reader notices the signal within one poll (200 ms).
    let exit = src.stop();
    info!(
        events = stats.events.load(Ordering::Relaxed),
        rescans = stats.rescans.load(Ordering::Relaxed),
        stale = stats.stale.load(Ordering::Relaxed),
        lost = stats.lost.load(Ordering::Relaxed),
        "event source stopped"
    );
    if let SourceExit::Died(why) = exit {
        warn!("the event source had died while stopping: {why}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_within_the_budget() {
        let t0 = Instant::now();
        let min = |m: u64| t0 + Duration::from_secs(60 * m);
        // Deaths at these minutes, and whether each may restart.
        #[rustfmt::skip]
        let table: &[(&str, &[(u64, bool)])] = &[
            ("one death", &[(0, true)]),
            ("three quick deaths are allowed", &[(0, true), (1, true), (2, true)]),
            ("the fourth within ten minutes is not", &[(0, true), (1, true), (2, true), (3, false)]),
            ("old deaths are forgotten", &[(0, true), (1, true), (2, true), (12, true), (13, true)]),
        ];
        for (name, deaths) in table {
            let mut b = RestartBudget::default();
            for (i, &(at, want)) in deaths.iter().enumerate() {
                assert_eq!(b.allow(min(at)), want, "{name}, death {i}");
            }
        }
    }
}
