//! The running daemon as the control socket sees it ([`crate::ops::control::Pipeline`]):
//! status from the counters, the maps and the state's failures; pause and resume of a
//! target; rescans of a subtree; checkpoints. Owned by the supervisor, which tells it when
//! the source is opened again.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use crate::change::{Change, ChangeSink, WatchClock};
use crate::ops::control::{
    Checkpoint, CheckpointTarget, FailureEntry, Pipeline, SourceStatus, Status, TargetStatus,
};
use crate::ops::metrics::{Snapshot, TargetMetrics};
use crate::queue::DedupMap;
use crate::source::SourceStats;
use crate::state::TargetState;
use crate::transfer::PoolStats;

/// One target's handles.
pub struct LiveTarget {
    /// Its name (see [`crate::target::Target::name`]).
    pub name: String,
    /// Its URL or directory, as configured.
    pub url: String,
    pub stats: Arc<PoolStats>,
    pub map: Arc<DedupMap>,
    pub state: Arc<TargetState>,
}

/// Checkpoints kept for their clients (the oldest are forgotten past it).
const CHECKPOINTS_MAX: usize = 1024;

pub struct Live {
    started: Instant,
    root: PathBuf,
    /// The source's kind and counters; `None` while it is opened again.
    source: Mutex<Option<(String, Arc<SourceStats>)>>,
    targets: std::sync::RwLock<Vec<LiveTarget>>,
    /// Why the last reload failed (none: it did not).
    reload_error: Mutex<Option<String>>,
    sink: Arc<dyn ChangeSink>,
    caught_up: Arc<WatchClock>,
    /// By id (wall-clock ms): when it was taken, and the first moment the source was seen to
    /// have read everything queued before it (every change from before it is in the maps,
    /// inserted no later than that moment).
    checkpoints: Mutex<BTreeMap<u64, (SystemTime, Option<Instant>)>>,
}

impl Live {
    pub fn new(
        root: PathBuf,
        targets: Vec<LiveTarget>,
        sink: Arc<dyn ChangeSink>,
        caught_up: Arc<WatchClock>,
    ) -> Live {
        Live {
            started: Instant::now(),
            root,
            source: Mutex::new(None),
            targets: std::sync::RwLock::new(targets),
            reload_error: Mutex::new(None),
            sink,
            caught_up,
            checkpoints: Mutex::new(BTreeMap::new()),
        }
    }

    /// The source now running (`None`: being opened again).
    pub fn set_source(&self, source: Option<(String, Arc<SourceStats>)>) {
        *self.source.lock().unwrap_or_else(|e| e.into_inner()) = source;
    }

    /// The targets after a reload.
    pub fn set_targets(&self, targets: Vec<LiveTarget>) {
        *self.targets.write().unwrap_or_else(|e| e.into_inner()) = targets;
    }

    /// What the last reload said (`None`: it worked).
    pub fn set_reload_error(&self, e: Option<String>) {
        *self.reload_error.lock().unwrap_or_else(|e| e.into_inner()) = e;
    }

    fn targets(&self) -> std::sync::RwLockReadGuard<'_, Vec<LiveTarget>> {
        self.targets.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The handles of `target` (its name, URL, or number from 1).
    #[allow(clippy::type_complexity)]
    fn find(
        &self,
        target: &str,
    ) -> Result<(Arc<PoolStats>, Arc<DedupMap>, Arc<TargetState>, String), String> {
        let all = self.targets();
        let hit = all
            .iter()
            .find(|t| t.name == target || t.url == target)
            .or_else(|| {
                target
                    .parse::<usize>()
                    .ok()
                    .and_then(|n| n.checked_sub(1))
                    .and_then(|i| all.get(i))
            });
        if let Some(t) = hit {
            return Ok((
                t.stats.clone(),
                t.map.clone(),
                t.state.clone(),
                t.name.clone(),
            ));
        }
        let names: Vec<&str> = all.iter().map(|t| t.name.as_str()).collect();
        Err(format!(
            "no target {target:?}: the targets are {} (or their numbers from 1)",
            names.join(", ")
        ))
    }

    /// The source's kind and counters now (`None`: being opened again).
    fn source(&self) -> Option<(String, Arc<SourceStats>)> {
        self.source
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn state_of(t: &LiveTarget) -> &'static str {
        let s = &t.stats;
        let on = |b: &std::sync::atomic::AtomicBool| b.load(Ordering::Relaxed);
        if on(&s.paused) {
            "paused"
        } else if on(&s.down) {
            if on(&s.refused) {
                "refused"
            } else if on(&s.backoff) {
                "backoff"
            } else {
                "down"
            }
        } else if on(&s.passing) {
            if on(&s.rescanning) {
                "rescan"
            } else {
                "initial sync"
            }
        } else if on(&s.comparing) {
            "rescan"
        } else {
            "live"
        }
    }
}

impl Pipeline for Live {
    fn status(&self) -> Status {
        let now = Instant::now();
        let source = self.source();
        let source = match source {
            Some((kind, s)) => SourceStatus {
                root: self.root.display().to_string(),
                kind,
                events: s.events.load(Ordering::Relaxed),
                rescans: s.rescans.load(Ordering::Relaxed),
                lost: s.lost.load(Ordering::Relaxed),
            },
            None => SourceStatus {
                root: self.root.display().to_string(),
                kind: "restarting".into(),
                events: 0,
                rescans: 0,
                lost: 0,
            },
        };
        let targets = self
            .targets()
            .iter()
            .map(|t| {
                let s = &t.stats;
                let last = s.last_synced_ms.load(Ordering::Relaxed);
                TargetStatus {
                    name: t.name.clone(),
                    url: t.url.clone(),
                    state: Live::state_of(t).into(),
                    pending: t.map.len() as u64,
                    oldest_pending_s: t
                        .map
                        .oldest()
                        .map(|o| now.saturating_duration_since(o).as_secs_f64()),
                    last_synced: (last > 0).then(|| last as f64 / 1000.0),
                    failing_paths: s.failed_paths.load(Ordering::Relaxed),
                    batches: s.batches.load(Ordering::Relaxed),
                    failed_batches: s.failed_batches.load(Ordering::Relaxed),
                    paths_sent: s.paths_done.load(Ordering::Relaxed),
                    files_sent: s.files_sent.load(Ordering::Relaxed),
                    bytes_sent: s.bytes_sent.load(Ordering::Relaxed),
                    rsync_runs: s.rsync_spawned.load(Ordering::Relaxed),
                    last_error: s.error(),
                }
            })
            .collect();
        Status {
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            uptime_s: self.started.elapsed().as_secs(),
            source,
            targets,
            reload_error: self
                .reload_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }

    fn metrics(&self) -> Snapshot {
        let now = Instant::now();
        let source = self.source();
        let (kind, s) = match &source {
            Some((kind, s)) => (kind.clone(), Some(s)),
            None => ("restarting".to_string(), None),
        };
        let get = |f: fn(&SourceStats) -> &std::sync::atomic::AtomicU64| {
            s.map_or(0, |s| f(s).load(Ordering::Relaxed))
        };
        Snapshot {
            source_kind: kind,
            events: get(|s| &s.events),
            rescans: get(|s| &s.rescans),
            lost: get(|s| &s.lost),
            stale: get(|s| &s.stale),
            changes: crate::source::CHANGE_KINDS
                .iter()
                .enumerate()
                .map(|(i, (_, name))| {
                    (*name, s.map_or(0, |s| s.changes[i].load(Ordering::Relaxed)))
                })
                .collect(),
            targets: self
                .targets()
                .iter()
                .map(|t| {
                    let s = &t.stats;
                    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
                    let mut buckets: Vec<(f64, u64)> = crate::transfer::BATCH_SECONDS
                        .iter()
                        .copied()
                        .chain([f64::MAX])
                        .zip(s.batch_buckets.iter().map(load))
                        .collect();
                    buckets.shrink_to_fit();
                    TargetMetrics {
                        name: t.name.clone(),
                        state: Live::state_of(t).into(),
                        pending: t.map.len() as u64,
                        oldest_pending_seconds: t
                            .map
                            .oldest()
                            .map_or(0.0, |o| now.saturating_duration_since(o).as_secs_f64()),
                        last_synced_timestamp_seconds: load(&s.last_synced_ms) as f64 / 1000.0,
                        batches_ok: load(&s.batches_ok),
                        batches_failed: load(&s.failed_batches),
                        paths_sent: load(&s.paths_done),
                        paths_dropped: load(&s.dropped),
                        files_seen: load(&s.files_seen),
                        files_sent: load(&s.files_sent),
                        file_bytes: load(&s.file_bytes),
                        bytes_sent: load(&s.bytes_sent),
                        coalesced: t.map.coalesced(),
                        pass_entries: load(&s.pass_entries),
                        pass_total: load(&s.pass_total),
                        rsync_runs: load(&s.rsync_spawned),
                        failing_paths: load(&s.failed_paths),
                        exits: s
                            .exits
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .iter()
                            .map(|(c, n)| (*c, *n))
                            .collect(),
                        batch_buckets: buckets,
                        batch_seconds_sum: load(&s.batch_micros) as f64 / 1e6,
                    }
                })
                .collect(),
        }
    }

    fn failures(&self) -> Vec<FailureEntry> {
        self.targets()
            .iter()
            .flat_map(|t| {
                t.state.failures().into_iter().map(|f| FailureEntry {
                    target: t.name.clone(),
                    path: f.path.display().to_string(),
                    attempts: f.attempts,
                    first: f.first,
                    last: f.last,
                    reason: f.reason,
                })
            })
            .collect()
    }

    fn pause(&self, target: &str, paused: bool) -> Result<String, String> {
        let (stats, map, state, name) = self.find(target)?;
        // Kept in the state first: a restart right after still finds it.
        state.set_paused(paused);
        let was = stats.paused.swap(paused, Ordering::Relaxed);
        if was != paused {
            tracing::info!(target = %name, pending = map.len(), "{}", if paused { "paused by the operator: changes stay queued" } else { "resumed by the operator" });
        }
        map.wake();
        Ok(name)
    }

    fn rescan(&self, path: &str) -> Result<String, String> {
        let p = Path::new(path);
        let rel = if p.is_absolute() {
            p.strip_prefix(&self.root)
                .map_err(|_| format!("{path} is not inside the source {}", self.root.display()))?
                .to_path_buf()
        } else {
            p.to_path_buf()
        };
        if rel
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(format!(
                "{path}: give a path inside the source, without `..`"
            ));
        }
        let rel: PathBuf = rel
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .collect();
        tracing::info!(path = %rel.display(), "rescan asked for by the operator");
        self.sink.push(&[Change::rescan(rel.clone())]);
        Ok(self.root.join(&rel).display().to_string())
    }

    fn checkpoint(&self) -> u64 {
        let wall = SystemTime::now();
        let mut c = self.checkpoints.lock().unwrap_or_else(|e| e.into_inner());
        let mut id = wall
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        while c.contains_key(&id) {
            id += 1;
        }
        c.insert(id, (wall, None));
        while c.len() > CHECKPOINTS_MAX {
            c.pop_first();
        }
        id
    }

    fn checkpoint_state(&self, id: u64) -> Result<Checkpoint, String> {
        let mut c = self.checkpoints.lock().unwrap_or_else(|e| e.into_inner());
        let entry = c.get_mut(&id).ok_or_else(|| {
            format!(
                "no checkpoint {id} (taken by this syncer, and among its last {CHECKPOINTS_MAX})"
            )
        })?;
        // Everything the kernel queued before it has been read into the maps...
        if entry.1.is_none() && self.caught_up.get().is_some_and(|t| t >= entry.0) {
            entry.1 = Some(Instant::now());
        }
        let read_by = entry.1;
        drop(c);
        let source_caught_up = read_by.is_some();
        // ... and nothing from before it is still pending or in flight on a target.
        let targets: Vec<CheckpointTarget> = self
            .targets()
            .iter()
            .map(|t| {
                let waiting_for = if t.stats.paused.load(Ordering::Relaxed) {
                    Some("paused".to_string())
                } else if t.stats.passing.load(Ordering::Relaxed) {
                    Some("initial sync".to_string())
                } else {
                    match read_by {
                        None => Some("the source reading what came before it".to_string()),
                        Some(by) if t.map.oldest().is_some_and(|o| o <= by) => {
                            Some("changes from before it pending".to_string())
                        }
                        Some(_) => None,
                    }
                };
                CheckpointTarget {
                    name: t.name.clone(),
                    reached: waiting_for.is_none(),
                    waiting_for,
                }
            })
            .collect();
        Ok(Checkpoint {
            id,
            reached: targets.iter().all(|t| t.reached),
            source_caught_up,
            targets,
        })
    }
}
