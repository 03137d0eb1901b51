//! Settling a batch's outcome: a success forgets its entries (or counts the pass piece
//! landed), a target that could not take it pauses the target and keeps the batch for when
//! it is back, any other failure retries the entries later, in smaller batches, and records a
//! path that keeps failing on its own.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tracing::{debug, error, info, trace, warn};

use super::super::health::retry_backoff;
use super::super::passes::piece_of;
use super::super::shard::BatchResult;
use super::super::{Batch, Origin};
use super::Dispatcher;
use crate::queue::Op;
use crate::target::{BatchKind, Outcome};

impl Dispatcher {
    /// Settles a batch's outcome.
    pub fn finish(&mut self, res: BatchResult) {
        let now = Instant::now();
        self.idle.push(res.shard);
        self.land(&res.batch);
        trace!(target = %self.target, seq = res.batch.seq, outcome = ?res.outcome, "finished");
        match res.outcome {
            o if o.succeeded() => self.succeeded(res, now),
            Outcome::TargetDown => self.target_down(res, now),
            _ => self.failed(res, now),
        }
    }

    fn succeeded(&mut self, res: BatchResult, now: Instant) {
        let n = res.batch.entries.len();
        if let Some(outage) = self.health.succeeded(now) {
            info!(target = %self.target, down_ms = outage.as_millis() as u64, "target back up");
            self.down_logged = None;
        }
        self.last_progress = now;
        self.stats.paths_done.fetch_add(n as u64, Ordering::Relaxed);
        self.stats.batches_ok.fetch_add(1, Ordering::Relaxed);
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.stats.last_synced_ms.store(unix_ms, Ordering::Relaxed);
        if self.stats.refused.swap(false, Ordering::Relaxed) || self.health.outage(now).is_none() {
            self.stats.set_error(None);
        }
        debug!(target = %self.target, kind = ?res.batch.kind, origin = ?res.batch.origin, paths = n, ms = res.elapsed.as_millis() as u64, "batch done");
        if res.outcome == Outcome::Vanished {
            debug!(target = %self.target, "some files vanished during transfer: {}", res.stderr.trim());
        }
        self.certify(&res.batch);
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
            Origin::Pass { gen, no, .. } => {
                if let Some(p) = self.current_pass(gen) {
                    p.landed(no, n);
                    self.note_covered();
                }
                self.check_pass_done(now);
            }
        }
    }

    /// The target could not take the batch: pause it (said once a minute while it stays down)
    /// and keep the batch for when it is back.
    fn target_down(&mut self, res: BatchResult, now: Instant) {
        self.stats.failed_batches.fetch_add(1, Ordering::Relaxed);
        let unreachable = crate::target::rsync::unreachable(&res.stderr);
        let refusal = crate::target::rsync::refusal(&res.stderr);
        self.stats
            .refused
            .store(refusal.is_some(), Ordering::Relaxed);
        self.stats.set_error(Some(res.reason()));
        let (pause, began) = self.health.failed(now, unreachable);
        let again = self
            .down_logged
            .is_some_and(|t| now < t + Duration::from_secs(60));
        if began || !again {
            let down_s = self.health.outage(now).map_or(0, |d| d.as_secs());
            match refusal {
                Some(why) => {
                    error!(target = %self.target, retry_in_ms = pause.as_millis() as u64, down_s, pending = self.map.len(),
                  "target refuses syncer: {why} (a configuration to fix, not an outage; its changes stay queued): {}", res.reason())
                }
                None => {
                    warn!(target = %self.target, retry_in_ms = pause.as_millis() as u64, probing = unreachable, down_s, pending = self.map.len(),
                  "target down: {}", res.reason())
                }
            }
            self.down_logged = Some(now);
        } else {
            debug!(target = %self.target, "target still down: {}", res.reason());
        }
        self.requeue_down(res.batch, now);
    }

    /// rsync failed on the batch (in part): retry it after the level's backoff.
    fn failed(&mut self, res: BatchResult, now: Instant) {
        let n = res.batch.entries.len();
        let outcome = res.outcome;
        self.stats.failed_batches.fetch_add(1, Ordering::Relaxed);
        self.stats.set_error(Some(res.reason()));
        let level = res.batch.entries.first().map_or(0, |t| t.pending.attempts) + 1;
        let backoff = retry_backoff(level);
        let msg = format!(
            "rsync {outcome:?} on a batch of {n} path(s), retrying in {}s: {}",
            backoff.as_secs(),
            res.stderr.trim()
        );
        // A path failing alone, again and again, is a failure of its own: recorded with
        // rsync's reason, retried on the backoff's schedule, said every tenth time.
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
            Origin::Pass { gen, level, no } => {
                // Pieces are shallow passes with --delete: their retry removes leftovers too.
                let piece = piece_of(no, &batch.entries);
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
            Origin::Pass { gen, no, .. } => {
                let piece = piece_of(no, &batch.entries);
                // A piece of a pass since replaced needs nothing: the newer pass covers it.
                let Some(p) = self.current_pass(gen) else {
                    return;
                };
                if let Some(dir) = p.failed(piece, level, due) {
                    // Journaled by the map before the pass counts it done.
                    self.map.schedule(&dir, Op::Shallow, due);
                }
                self.note_covered();
                self.check_pass_done(Instant::now());
            }
        }
    }
}
