//! Starting from the durable state: open it (a damaged one is set aside and rebuilt), give
//! every target a map that journals into it, put back what was pending, and decide per target
//! how the start catches up: a catch-up walk against a complete index (local metadata only),
//! or a full pass with rsync that builds the index.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tracing::{error, info, warn};

use super::RunError;
use crate::config::Config;
use crate::queue::{DedupMap, Op};
use crate::state::catchup::{self, Compared};
use crate::state::{State, StateError, TargetState};
use crate::target::Target;
use crate::transfer::CatchUp;

/// Directories read at once by a catch-up walk: on a cold cache metadata reads are I/O bound
/// and several in flight pay off (8 threads about halved a cold walk of 1 M entries on a
/// virtual disk of this machine kind).
pub const WALK_THREADS: usize = 8;

/// One target's start.
pub struct Planned {
    pub state: Arc<TargetState>,
    pub map: Arc<DedupMap>,
    /// A full pass (no complete index, or --full-resync); else a catch-up walk, unless
    /// `walk` is false.
    pub pass: bool,
    /// Without a pass: whether the start walks against the index. Not when the fanotify
    /// group was handed back with everything it had delivered kept (see
    /// [`crate::state::cursor`]), nor under `--no-initial-sync`.
    pub walk: bool,
    /// With a pass: the ctime from which entries are queued at once, ahead of the pass (see
    /// [`catchup::recent_walk`]), when a previous syncer used this state.
    pub recent_since: Option<(i64, u32)>,
    /// With a pass and `recent_since`: how far the previous syncer's pass got (every directory
    /// up to this path, in the walk's order, was on the target). A `run` resumes its pass
    /// there: what changed before that point since was seen by that syncer (its journal) or
    /// is found by the walk ahead (its ctime).
    pub resume_after: Option<PathBuf>,
}

/// How much earlier than the previous syncer's last heartbeat the walk ahead of a pass
/// starts: its heartbeat may be up to 2 s older than its death (1 s while writing), its
/// source may have been behind the kernel, and ctimes come from a coarse clock.
pub const RECENT_MARGIN: std::time::Duration = std::time::Duration::from_secs(5);

/// The ctime `RECENT_MARGIN` before `alive`.
fn since(alive: std::time::SystemTime) -> (i64, u32) {
    let t = alive - RECENT_MARGIN;
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (d.as_secs() as i64, d.subsec_nanos())
}

/// Opens the state of `cfg.source` and plans every target; `clock`: the live source's (see
/// [`State::open_following`]); `handed`: the id of the fanotify group the source took up from
/// systemd's fd store, if it did.
/// Without a clock (`syncer sync`) nothing is walked, and nothing is noted as owed.
pub fn open(
    cfg: &Config,
    clock: Option<Arc<crate::change::WatchClock>>,
    handed: Option<u64>,
) -> Result<(State, Vec<Planned>), RunError> {
    let watching = clock.is_some();
    let state = match State::open_following(
        &cfg.state_dir,
        &cfg.source,
        cfg.full_resync,
        clock.clone(),
    ) {
        Ok(s) => s,
        Err(StateError::Damaged { dir, why }) => {
            let aside = State::set_aside(&dir).map_err(|e| {
                RunError::io(
                    format!("set the damaged state in {} aside", dir.display()),
                    e,
                )
            })?;
            error!("the state in {} is damaged ({why}); it is kept in {} and rebuilt: full pass against every target", dir.display(), aside.display());
            State::open_following(&cfg.state_dir, &cfg.source, true, clock)?
        }
        Err(e) => return Err(e.into()),
    };
    let orphans = crate::state::kill_orphans(state.dir());
    if orphans > 0 {
        warn!(
            orphans,
            "stopped the transfers a previous syncer on this state left running"
        );
    }
    // Nothing happened unseen since the previous syncer: its group queued every event since,
    // and everything its reader had taken was in the journal when it died.
    let seamless = match (handed, state.previous_marks()) {
        (Some(g), Some(m)) if m.seamless(g) => true,
        (Some(_), _) => {
            warn!("the fanotify group was handed back, but the previous syncer may have died with events read and not yet kept: this start walks for what changed, as after any crash");
            false
        }
        (None, _) => false,
    };
    let mut planned = Vec::with_capacity(cfg.targets.len());
    for target in &cfg.targets {
        let ts = state.target(&target.display)?;
        let (map, pending) = journal_into_map(cfg, target, &ts);
        let pass = cfg.full_resync || !ts.is_complete();
        if pass && !cfg.full_resync {
            info!(target = %target, "no complete index for this target yet: full pass, which builds it");
        }
        // A walk the previous syncer started and did not end is owed whatever else holds.
        let owed = ts.walk_owed();
        let seamless = seamless && owed.is_none();
        let walk = !pass && cfg.initial_sync && !seamless;
        let catch_up = match (pass, walk) {
            (true, _) => "full pass",
            (false, true) => "walk against the index",
            (false, false) if seamless => {
                "none: the kernel kept every event since the previous syncer"
            }
            (false, false) => "none (--no-initial-sync)",
        };
        info!(target = %target, pending, catch_up, "state restored from {}", state.dir().display());
        let recent_since = match seamless {
            true => None,
            false => state.last_alive().map(since).into_iter().chain(owed).min(),
        }
        .filter(|_| pass);
        if watching && (walk || (recent_since.is_some() && cfg.initial_sync)) {
            // Before the reader starts, so before this syncer's first heartbeat: a kill
            // during the walk leaves the next start owing it, from the same moment.
            ts.set_walk_owed(Some(recent_since.unwrap_or((0, 0))));
        }
        let covered = ts.pass_covered();
        let resume_after = match (&covered, state.last_alive()) {
            (Some(at), Some(alive)) if pass && !cfg.full_resync && cfg.initial_sync => {
                resume_point(at, alive, target)
            }
            _ => None,
        };
        if resume_after.is_none() && covered.is_some() {
            // A start that does not resume (no walk ahead, `--no-initial-sync`) forgets the
            // point: what changed in the covered part before this start would not be walked
            // for by a later one, which only looks back to this start's heartbeat.
            ts.set_pass_covered(None);
        }
        planned.push(Planned {
            state: ts,
            map,
            pass,
            walk,
            recent_since,
            resume_after,
        });
    }
    Ok((state, planned))
}

/// A map for `target`, with what its journal holds put back in it; how many entries that was.
fn journal_into_map(
    cfg: &Config,
    target: &Target,
    ts: &Arc<TargetState>,
) -> (Arc<DedupMap>, usize) {
    let map = Arc::new(DedupMap::with_journal(
        target.delay.unwrap_or(cfg.delay),
        ts.clone(),
    ));
    let pending = match ts.pending() {
        Ok(p) => p,
        Err(e) => {
            // The journal cannot be read: the full pass covers whatever it held.
            error!(target = %target, "{e}; full pass against this target");
            let _ = ts.clear_index();
            Vec::new()
        }
    };
    let now = Instant::now();
    // A transfer in flight when syncer died (or was still queued at its exit) may have left
    // a receiver's temporary file on the target, which neither the source nor the index
    // knows: each directory that had one gets a shallow pass with --delete. (Subtree and
    // shallow entries clean up their own directories.)
    let mut dirs = std::collections::BTreeSet::new();
    for (path, op, is_dir) in &pending {
        map.restore(path, *op, *is_dir, now);
        if matches!(op, Op::Update | Op::Delete) {
            dirs.insert(path.parent().map(Path::to_path_buf).unwrap_or_default());
        }
    }
    for dir in dirs {
        map.schedule(&dir, Op::Shallow, now + std::time::Duration::from_millis(1));
    }
    (map, pending.len())
}

/// The plan of a target a reload adds (`kept`: `None`) or changes (`kept`: its map, which
/// keeps what is queued). An added target's journal goes back into a new map; with a
/// complete index it is compared with the tree by a walk against that index (a rescan,
/// which its dispatcher answers so), else it gets a full pass. A changed one goes on where
/// it was: its unfinished pass, if any, resumes where it got (this syncer watched all along).
pub fn plan_reloaded(
    state: &State,
    cfg: &Config,
    target: &Target,
    kept: Option<Arc<DedupMap>>,
) -> Result<Planned, RunError> {
    let ts = state.target(&target.display)?;
    let pass = !ts.is_complete();
    let (map, resume_after) = match kept {
        Some(map) => {
            map.set_delay(target.delay.unwrap_or(cfg.delay));
            (map, ts.pass_covered().filter(|_| pass))
        }
        None => {
            let (map, pending) = journal_into_map(cfg, target, &ts);
            // What changed while it was not a target is not in its journal: a new pass or a
            // walk against its index finds it.
            ts.set_pass_covered(None);
            if !pass {
                map.insert_all(&[crate::change::Change::rescan("")], Instant::now());
            }
            info!(target = %target, pending, catch_up = if pass { "full pass" } else { "walk against the index" }, "target added by a reload");
            (map, None)
        }
    };
    Ok(Planned {
        state: ts,
        map,
        pass,
        walk: false,
        recent_since: None,
        resume_after,
    })
}

/// Whether an unfinished pass may resume `at` its point, given the previous syncer's last
/// heartbeat: not with a clock now behind it (ctimes since may be older than it).
fn resume_point(
    at: &Path,
    alive: std::time::SystemTime,
    target: &impl std::fmt::Display,
) -> Option<PathBuf> {
    if std::time::SystemTime::now() < alive {
        warn!(target = %target, "the clock is behind the previous syncer's last heartbeat: its start-up pass starts over rather than resuming");
        return None;
    }
    Some(at.to_path_buf())
}

/// Runs a catch-up walk for `targets` (on this thread); what differs is queued in their maps.
/// A damaged index is cleared and its target asked for a full rescan. `owed`: the walk was
/// noted as owed ([`TargetState::set_walk_owed`]) and ends that note (the start's and a
/// rescan's walks; not a periodic verify, which must not end another walk's note).
pub fn walk(source: &Path, targets: &[Compared], owed: bool) {
    if targets.is_empty() {
        return;
    }
    let t0 = Instant::now();
    // A store that panics on a damaged file is a damaged index, not a dead walk.
    let walked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        catchup::catch_up(source, targets, WALK_THREADS)
    }))
    .unwrap_or_else(|_| {
        Err(StateError::Damaged {
            dir: PathBuf::from("(the state)"),
            why: "reading the index panicked".into(),
        })
    });
    match walked {
        Ok(r) => {
            for (t, n) in targets.iter().zip(&r.changes) {
                info!(
                    target = t.state.name(),
                    dirs = r.dirs,
                    entries = r.entries,
                    differences = n,
                    ms = t0.elapsed().as_millis() as u64,
                    "catch-up walk done"
                );
            }
        }
        Err(e) => {
            error!("{e}: the index is not trusted; full pass");
            for t in targets {
                let _ = t.state.clear_index();
                t.map
                    .insert_all(&[crate::change::Change::rescan("")], Instant::now());
            }
        }
    }
    // After what the walk queued (the same writer): nothing is owed any more.
    for t in targets.iter().filter(|_| owed) {
        t.state.set_walk_owed(None);
    }
}

/// Runs the walk ahead of the pass for `targets` (on this thread): entries changed since
/// `since` that a target's index does not certify are queued at once in its map. `resumed[i]`:
/// where target i's pass resumes (the walk is then what finds the changes before that point).
pub fn recent(source: &Path, since: (i64, u32), targets: &[Compared], resumed: &[Option<PathBuf>]) {
    if targets.is_empty() {
        return;
    }
    let t0 = Instant::now();
    let walked = catchup::recent_walk(source, since, targets, resumed, WALK_THREADS);
    match walked {
        Ok(r) => info!(
            dirs = r.dirs,
            entries = r.entries,
            queued = r.changes.first().copied().unwrap_or(0),
            ms = t0.elapsed().as_millis() as u64,
            "walk ahead of the pass done: what changed since the previous syncer was last alive is queued"
        ),
        Err(e) => {
            warn!("the walk ahead of the pass failed ({e}); the pass covers it");
            // A resumed pass relies on this walk for the part it skips: it starts over.
            for (t, r) in targets.iter().zip(resumed) {
                if r.is_some() {
                    warn!(target = t.state.name(), "the start-up pass starts over from the beginning");
                    t.map.insert_all(&[crate::change::Change::rescan("")], Instant::now());
                }
            }
        }
    }
    for t in targets {
        t.state.set_walk_owed(None);
    }
}

/// The catch-up a target's pool starts for a rescan of the whole tree.
/// While its walk runs, the pool's `comparing` flag is up (status says `rescan`).
pub fn catch_up_for(
    source: PathBuf,
    state: Arc<TargetState>,
    map: Arc<DedupMap>,
    stats: Arc<crate::transfer::PoolStats>,
) -> CatchUp {
    Arc::new(move || {
        if !state.is_complete() {
            return false;
        }
        let t = Compared {
            state: state.clone(),
            map: map.clone(),
        };
        // The rescan's entry leaves the map now: a kill during the walk leaves it owed.
        state.set_walk_owed(Some((0, 0)));
        let source = source.clone();
        let comparing = stats.clone();
        comparing.comparing.store(true, Ordering::Relaxed);
        let spawned = std::thread::Builder::new()
            .name("catch-up".into())
            .spawn(move || {
                // Lowered however the walk ends (a panic included).
                struct Lower(Arc<crate::transfer::PoolStats>);
                impl Drop for Lower {
                    fn drop(&mut self) {
                        self.0.comparing.store(false, Ordering::Relaxed);
                    }
                }
                let _lower = Lower(comparing);
                walk(&source, &[t], true);
            });
        if let Err(e) = spawned {
            stats.comparing.store(false, Ordering::Relaxed);
            warn!("cannot start the catch-up walk ({e}): full pass instead");
            return false;
        }
        true
    })
}
