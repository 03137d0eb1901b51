//! The catch-up walk: after a restart (or lost events), the source is compared with each
//! target's index, directory by directory, on a few threads (reading metadata is I/O bound on
//! a cold cache, so several directories are read at once); what differs becomes changes in that
//! target's map, exactly as if events had reported it. Only local metadata is read: nothing is
//! asked of the target.
//!
//! [`diff`] decides per entry (its table is in the tests); a directory is descended into for a
//! target only when the index knows it as the same directory (same inode), otherwise the whole
//! subtree is sent.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use tracing::debug;

use super::meta::Meta;
use super::stat;
use super::{StateError, TargetState};
use crate::change::{Change, ChangeKind};
use crate::queue::DedupMap;

/// What one entry's source and index metadata say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Diff {
    /// Nothing to do.
    Same,
    /// The same directory, unchanged itself: compare what is in it.
    Descend,
    /// A file (symlink, ...) that changed: send it.
    Changed,
    /// The same directory with other attributes (its mtime moves with its entries): send the
    /// directory itself and compare what is in it.
    DirChanged,
    /// Not on the target: send it (a directory with its whole subtree).
    New { dir: bool },
    /// No longer in the source: delete it on the target (a directory with its subtree).
    Gone { dir: bool },
    /// Something else at the same name: delete the old, send the new.
    Replaced { old_dir: bool, new_dir: bool },
}

/// The decision for one entry. Any difference in kind, mode, owner, size, times or inode
/// counts: ctime catches a rewrite that restored the old mtime and size.
pub fn diff(src: Option<&Meta>, idx: Option<&Meta>) -> Diff {
    match (src, idx) {
        (None, None) => Diff::Same,
        (Some(s), None) => Diff::New { dir: s.is_dir() },
        (None, Some(i)) => Diff::Gone { dir: i.is_dir() },
        (Some(s), Some(i)) if s.kind != i.kind || (s.is_dir() && s.ino != i.ino) => {
            Diff::Replaced {
                old_dir: i.is_dir(),
                new_dir: s.is_dir(),
            }
        }
        (Some(s), Some(i)) if s.is_dir() => {
            if (s.mode, s.uid, s.gid, s.mtime) == (i.mode, i.uid, i.gid, i.mtime) {
                Diff::Descend
            } else {
                Diff::DirChanged
            }
        }
        (Some(s), Some(i)) if s == i => Diff::Same,
        _ => Diff::Changed,
    }
}

/// The changes that say `d` for `path`; whether to descend into it.
fn changes_of(d: Diff, path: &Path, out: &mut Vec<Change>) -> bool {
    use ChangeKind::*;
    match d {
        Diff::Same => false,
        Diff::Descend => true,
        Diff::Changed => {
            out.push(Change::new(path, Modified, false));
            false
        }
        Diff::DirChanged => {
            out.push(Change::new(path, Modified, true));
            true
        }
        Diff::New { dir } => {
            // A directory new to the target goes whole (MovedIn is a subtree transfer).
            out.push(Change::new(path, if dir { MovedIn } else { Created }, dir));
            false
        }
        Diff::Gone { dir } => {
            out.push(Change::new(path, Removed, dir));
            false
        }
        Diff::Replaced { old_dir, new_dir } => {
            out.push(Change::new(path, Removed, old_dir));
            out.push(Change::new(path, MovedIn, new_dir));
            false
        }
    }
}

/// One target the walk compares with.
pub struct Compared {
    pub state: Arc<TargetState>,
    pub map: Arc<DedupMap>,
}

/// What the walk found.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub dirs: u64,
    pub entries: u64,
    /// Changes queued, per target (in the order given).
    pub changes: Vec<u64>,
}

struct Shared {
    queue: VecDeque<(PathBuf, Vec<usize>)>,
    busy: usize,
    report: Report,
    failed: Option<StateError>,
}

/// Walks `root` with `threads` threads, comparing with every target in `targets`.
pub fn catch_up(root: &Path, targets: &[Compared], threads: usize) -> Result<Report, StateError> {
    let shared = Mutex::new(Shared {
        queue: VecDeque::new(),
        busy: 0,
        report: Report {
            changes: vec![0; targets.len()],
            ..Report::default()
        },
        failed: None,
    });
    // The root itself first.
    let root_meta = stat::lstat(root, Path::new("")).ok().flatten();
    let mut active = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        let idx = t.state.get(Path::new(""))?;
        let mut out = Vec::new();
        let d = match diff(root_meta.as_ref(), idx.as_ref()) {
            // The root is compared as a directory whatever the index says of it.
            Diff::New { .. } | Diff::Replaced { .. } => Diff::DirChanged,
            d => d,
        };
        if changes_of(d, Path::new(""), &mut out) {
            active.push(i);
        }
        push(
            &t.map,
            &out,
            &mut shared.lock().expect("walk state").report.changes[i],
        );
    }
    shared
        .lock()
        .expect("walk state")
        .queue
        .push_back((PathBuf::new(), active));
    run(shared, threads, &|dir, active| {
        compare_dir(root, dir, active, targets)
    })
}

/// One directory's visit: what it found and where to go on.
type Visit<'a> = dyn Fn(&Path, &[usize]) -> Result<DirDone, StateError> + Sync + 'a;

/// How much lower the walk's threads run than the rest of syncer (`nice`): a walk is
/// background work, and the live changes' transfers, the pass and the source's reader go
/// first when the CPU is short (8 walk threads on 2 CPUs otherwise take most of it).
const WALK_NICE: libc::c_int = 10;

/// Visits the queued directories (and those the visits add) on `threads` threads.
fn run(shared: Mutex<Shared>, threads: usize, visit: &Visit<'_>) -> Result<Report, StateError> {
    let cond = Condvar::new();
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                // Linux nices threads one by one (a thread's id is a PRIO_PROCESS id); a
                // failure leaves it at the normal priority.
                // SAFETY: plain syscalls on this thread's own id.
                unsafe {
                    let tid = libc::gettid();
                    let now = libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t);
                    libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, now + WALK_NICE);
                }
                worker(&shared, &cond, visit)
            });
        }
    });
    let shared = shared.into_inner().expect("walk state");
    match shared.failed {
        Some(e) => Err(e),
        None => Ok(shared.report),
    }
}

/// What the start-up walk after a crash does with one entry it meets whose ctime is `since`
/// or later: the previous syncer may not have seen that change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recent {
    /// Older than `since`: the pass covers it (or the journal held it).
    Old,
    /// Recent, but the index holds exactly this metadata: a transfer that read this state
    /// succeeded before the previous syncer stopped, and the target has it.
    Certified,
    /// A file (symlink, ...) written, made, renamed or chmod'ed since: send it.
    Send,
    /// A directory whose entries (or itself) changed since: a shallow pass of it, which also
    /// removes what was deleted in it.
    Shallow,
    /// A directory in the part of the tree a resumed pass does not walk again, which the
    /// index does not know there (made, or moved in, since): its whole subtree, since the
    /// entries below it keep their old ctimes.
    Subtree,
}

/// The decision for an entry with metadata `m`, which the target's index records as `idx`;
/// `covered`: the entry is in the part of the tree that the previous syncer's pass had
/// covered, which a resumed pass does not walk again. Elsewhere only latency rides on it (the
/// pass covers every entry anyway); there, it is what brings the target up to date.
pub fn recent(m: &Meta, idx: Option<&Meta>, since: (i64, u32), covered: bool) -> Recent {
    let known_dir = idx.is_some_and(|i| i.is_dir() && i.ino == m.ino);
    match (m.ctime >= since, m.is_dir()) {
        (false, _) => Recent::Old,
        // Any change moves the ctime: the same record is the same state.
        (true, _) if idx == Some(m) => Recent::Certified,
        (true, false) => Recent::Send,
        (true, true) if covered && !known_dir => Recent::Subtree,
        (true, true) => Recent::Shallow,
    }
}

/// Whether `path` is in the part of the tree covered up to `upto` (the walk's order).
pub fn covered(path: &Path, upto: Option<&Path>) -> bool {
    upto.is_some_and(|u| path <= u)
}

/// The walk a start does while a full pass runs, when the previous syncer on this state died
/// (or stopped) before its pass was done: every entry whose ctime is `since` (its last
/// heartbeat, less a margin) or later, and which the target's index does not certify, is
/// queued in that target's map at once, as a live change, so that what changed while no
/// syncer was watching (or what it saw and had not yet sent or journaled) does not wait for
/// the pass to reach it, and what it had sent is not sent twice. Local metadata only.
///
/// `resumed[i]`: target i's pass resumes after that path (see [`crate::queue::pass`]); up to
/// it, this walk is what finds what changed while nobody watched (a directory the index does
/// not know there gets a subtree transfer; one that cannot be read too, which the map retries
/// until it can). Elsewhere the pass still covers everything, and this walk only brings those
/// changes forward.
pub fn recent_walk(
    root: &Path,
    since: (i64, u32),
    targets: &[Compared],
    resumed: &[Option<PathBuf>],
    threads: usize,
) -> Result<Report, StateError> {
    let everyone: Vec<usize> = (0..targets.len()).collect();
    let shared = Mutex::new(Shared {
        queue: VecDeque::from([(PathBuf::new(), everyone)]),
        busy: 0,
        report: Report {
            changes: vec![0; targets.len()],
            ..Report::default()
        },
        failed: None,
    });
    if let Ok(Some(m)) = stat::lstat(root, Path::new("")) {
        for t in targets {
            // The root is above any resume point: known to the index, or sent whole.
            let idx = t.state.get(Path::new(""))?;
            if recent(&m, idx.as_ref(), since, false) == Recent::Shallow {
                t.map
                    .schedule(Path::new(""), crate::queue::Op::Shallow, Instant::now());
            }
        }
    }
    run(shared, threads, &|dir, _| {
        recent_dir(root, dir, since, targets, resumed)
    })
}

/// Reads one directory for [`recent_walk`].
fn recent_dir(
    root: &Path,
    dir: &Path,
    since: (i64, u32),
    targets: &[Compared],
    resumed: &[Option<PathBuf>],
) -> Result<DirDone, StateError> {
    let upto = |i: usize| resumed.get(i).and_then(|r| r.as_deref());
    let src = match stat::read_dir(&root.join(dir)) {
        Ok(Some(src)) => src,
        // Gone: its parent's transfer (or the pass) removes it.
        Ok(None) => Vec::new(),
        Err(e) => {
            // Unreadable: the pass reports it and covers what is there; where no pass will
            // come, the whole subtree goes to the map, which retries it until it can be read
            // (the empty path being the whole tree: a rescan).
            let mut changes = Vec::new();
            for (i, t) in targets.iter().enumerate() {
                if covered(dir, upto(i)) {
                    tracing::warn!(dir = %dir.display(), "cannot read a directory during the walk ahead of the pass ({e}): it is sent whole once it can be read");
                    t.map.schedule(dir, crate::queue::Op::Tree, Instant::now());
                    changes.push((i, 1));
                }
            }
            return Ok(DirDone {
                entries: 0,
                changes,
                descend: Vec::new(),
            });
        }
    };
    let everyone: Vec<usize> = (0..targets.len()).collect();
    let descend = src
        .iter()
        .filter(|(_, m)| m.is_dir())
        .map(|(name, _)| (dir.join(OsStr::from_bytes(name)), everyone.clone()))
        .collect();
    let now = Instant::now();
    let mut changes = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        let (mut files, mut dirs) = (Vec::new(), Vec::new());
        for (name, m) in &src {
            if m.ctime < since {
                continue;
            }
            let path = dir.join(OsStr::from_bytes(name));
            let idx = t.state.get(&path)?;
            match recent(m, idx.as_ref(), since, covered(&path, upto(i))) {
                Recent::Old | Recent::Certified => {}
                Recent::Send => files.push(Change::new(&path, ChangeKind::Modified, false)),
                Recent::Shallow => dirs.push((path, crate::queue::Op::Shallow)),
                Recent::Subtree => dirs.push((path, crate::queue::Op::Tree)),
            }
        }
        let mut n = 0;
        push(&t.map, &files, &mut n);
        for (d, op) in &dirs {
            t.map.schedule(d, *op, now);
        }
        changes.push((i, n + dirs.len() as u64));
    }
    Ok(DirDone {
        entries: src.len() as u64,
        changes,
        descend,
    })
}

fn push(map: &DedupMap, changes: &[Change], count: &mut u64) {
    for c in changes {
        tracing::trace!(path = %c.path.display(), kind = ?c.kind, "catch-up difference");
    }
    if !changes.is_empty() {
        map.insert_all(changes, Instant::now());
        *count += changes.len() as u64;
    }
}

fn worker(shared: &Mutex<Shared>, cond: &Condvar, visit: &Visit<'_>) {
    loop {
        let (dir, active) = {
            let mut g = shared.lock().expect("walk state");
            loop {
                if g.failed.is_some() {
                    return;
                }
                if let Some(item) = g.queue.pop_front() {
                    g.busy += 1;
                    break item;
                }
                if g.busy == 0 {
                    cond.notify_all();
                    return;
                }
                g = cond.wait(g).expect("walk state");
            }
        };
        let result = visit(&dir, &active);
        let mut g = shared.lock().expect("walk state");
        g.busy -= 1;
        match result {
            Ok(done) => {
                g.report.dirs += 1;
                g.report.entries += done.entries;
                for (i, n) in done.changes {
                    g.report.changes[i] += n;
                }
                g.queue.extend(done.descend);
            }
            Err(e) => g.failed = Some(e),
        }
        cond.notify_all();
    }
}

struct DirDone {
    entries: u64,
    changes: Vec<(usize, u64)>,
    descend: Vec<(PathBuf, Vec<usize>)>,
}

/// Compares one directory for the targets in `active`.
fn compare_dir(
    root: &Path,
    dir: &Path,
    active: &[usize],
    targets: &[Compared],
) -> Result<DirDone, StateError> {
    let mut linked = Vec::new();
    let src = match stat::read_dir_noting(&root.join(dir), &mut linked) {
        Ok(Some(e)) => e,
        // Gone since its parent was read: the parent's entry was compared already, and events
        // report what happens from here on.
        Ok(None) => Vec::new(),
        Err(e) => {
            // Unreadable: compare it whole with rsync, which reports the error and retries.
            debug!(dir = %dir.display(), "cannot read during the catch-up walk: {e}");
            let mut changes = Vec::new();
            for &i in active {
                push(&targets[i].map, &[Change::rescan(dir)], &mut 0);
                changes.push((i, 1));
            }
            return Ok(DirDone {
                entries: 0,
                changes,
                descend: Vec::new(),
            });
        }
    };
    if !linked.is_empty() {
        // Source facts, the same for every target: each target's dispatcher learns them.
        let linked: stat::Linked = linked
            .into_iter()
            .map(|(name, m)| (dir.join(OsStr::from_bytes(&name)), m))
            .collect();
        for t in targets {
            t.state.note_links(linked.clone(), false);
        }
    }
    let by_name: HashMap<&[u8], &Meta> = src.iter().map(|(n, m)| (n.as_slice(), m)).collect();
    let mut descend: HashMap<Vec<u8>, Vec<usize>> = HashMap::new();
    let mut counts = Vec::new();
    for &i in active {
        let t = &targets[i];
        let idx = t.state.children(dir)?;
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (name, im) in &idx {
            seen.insert(name.as_slice());
            let path = dir.join(OsStr::from_bytes(name));
            if changes_of(
                diff(by_name.get(name.as_slice()).copied(), Some(im)),
                &path,
                &mut out,
            ) {
                descend.entry(name.clone()).or_default().push(i);
            }
        }
        for (name, sm) in &src {
            if !seen.contains(name.as_slice()) {
                let path = dir.join(OsStr::from_bytes(name));
                changes_of(diff(Some(sm), None), &path, &mut out);
            }
        }
        let mut n = 0;
        push(&t.map, &out, &mut n);
        counts.push((i, n));
    }
    Ok(DirDone {
        entries: src.len() as u64,
        changes: counts,
        descend: descend
            .into_iter()
            .map(|(name, who)| (dir.join(OsStr::from_bytes(&name)), who))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::meta::{IndexUpdate, Kind};
    use super::*;

    fn m(kind: Kind, ino: u64) -> Meta {
        Meta {
            kind,
            mode: if kind == Kind::Dir { 0o40755 } else { 0o100644 },
            uid: 0,
            gid: 0,
            size: 10,
            mtime: (100, 0),
            ctime: (100, 0),
            ino,
        }
    }

    #[test]
    fn entry_decisions() {
        let f = m(Kind::File, 1);
        let d = m(Kind::Dir, 2);
        let with = |mut x: Meta, edit: &dyn Fn(&mut Meta)| {
            edit(&mut x);
            x
        };
        #[rustfmt::skip]
        let table: &[(&str, Option<Meta>, Option<Meta>, Diff)] = &[
            ("unchanged file", Some(f), Some(f), Diff::Same),
            ("rewritten, size changed", Some(with(f, &|x| x.size = 11)), Some(f), Diff::Changed),
            ("rewritten, mtime and size restored (ctime moved)", Some(with(f, &|x| x.ctime = (200, 0))), Some(f), Diff::Changed),
            ("chmod", Some(with(f, &|x| x.mode = 0o100600)), Some(f), Diff::Changed),
            ("chown", Some(with(f, &|x| x.uid = 7)), Some(f), Diff::Changed),
            ("replaced by another file (new inode)", Some(with(f, &|x| x.ino = 9)), Some(f), Diff::Changed),
            ("new file", Some(f), None, Diff::New { dir: false }),
            ("new directory", Some(d), None, Diff::New { dir: true }),
            ("deleted file", None, Some(f), Diff::Gone { dir: false }),
            ("deleted directory", None, Some(d), Diff::Gone { dir: true }),
            ("unchanged directory", Some(d), Some(d), Diff::Descend),
            ("directory whose entries changed", Some(with(d, &|x| x.mtime = (200, 0))), Some(d), Diff::DirChanged),
            ("directory only touched (ctime)", Some(with(d, &|x| x.ctime = (200, 0))), Some(d), Diff::Descend),
            ("another directory at the name (renamed over)", Some(with(d, &|x| x.ino = 9)), Some(d), Diff::Replaced { old_dir: true, new_dir: true }),
            ("file became a directory", Some(d), Some(f), Diff::Replaced { old_dir: false, new_dir: true }),
            ("directory became a symlink", Some(m(Kind::Symlink, 3)), Some(d), Diff::Replaced { old_dir: true, new_dir: false }),
            ("neither", None, None, Diff::Same),
        ];
        for (name, src, idx, want) in table {
            assert_eq!(diff(src.as_ref(), idx.as_ref()), *want, "{name}");
        }
    }

    #[test]
    fn recent_decisions() {
        let with = |mut x: Meta, c: (i64, u32)| {
            x.ctime = c;
            x
        };
        let since = (100, 500);
        let (f, d) = (
            with(m(Kind::File, 1), (101, 0)),
            with(m(Kind::Dir, 2), (150, 0)),
        );
        let older = |x: &Meta| with(*x, (100, 400));
        let other_dir = with(m(Kind::Dir, 7), (150, 0));
        // name, metadata, the index's record, in the covered part, decision
        #[rustfmt::skip]
        let table: &[(&str, Meta, Option<Meta>, bool, Recent)] = &[
            ("file changed before", with(m(Kind::File, 1), (100, 499)), None, false, Recent::Old),
            ("file changed at the moment", with(m(Kind::File, 1), (100, 500)), None, false, Recent::Send),
            ("file changed after, not in the index", f, None, false, Recent::Send),
            ("file changed after its certificate", f, Some(older(&f)), false, Recent::Send),
            ("file sent as it is now", f, Some(f), false, Recent::Certified),
            ("file sent, then replaced by another inode", with(m(Kind::File, 9), (101, 0)), Some(f), false, Recent::Send),
            ("symlink made after", with(m(Kind::Symlink, 1), (200, 0)), None, false, Recent::Send),
            ("directory unchanged", with(m(Kind::Dir, 2), (99, 0)), None, false, Recent::Old),
            ("directory whose entries changed", d, None, false, Recent::Shallow),
            ("directory changed after its certificate", d, Some(older(&d)), false, Recent::Shallow),
            ("directory sent as it is now", d, Some(d), false, Recent::Certified),
            ("covered: file moved in", f, None, true, Recent::Send),
            ("covered: directory unchanged", with(m(Kind::Dir, 2), (99, 0)), None, true, Recent::Old),
            ("covered: known directory whose entries changed", d, Some(older(&d)), true, Recent::Shallow),
            ("covered: directory made or moved in", d, None, true, Recent::Subtree),
            ("covered: another directory under a known name", other_dir, Some(older(&d)), true, Recent::Subtree),
            ("covered: a directory where a file was", d, Some(older(&f)), true, Recent::Subtree),
            ("covered: directory sent as it is now", d, Some(d), true, Recent::Certified),
        ];
        for (name, meta, idx, cov, want) in table {
            assert_eq!(recent(meta, idx.as_ref(), since, *cov), *want, "{name}");
        }
        #[rustfmt::skip]
        let order: &[(&str, Option<&str>, bool)] = &[
            ("a", None, false), ("a", Some(""), false), ("", Some(""), true),
            ("a", Some("a"), true), ("a/x", Some("a"), false), ("a", Some("a/x"), true),
            ("a/b", Some("a/x"), true), ("a/y", Some("a/x"), false), ("ab", Some("a/x"), false),
            ("a/x/deep", Some("a/y"), true),
        ];
        for &(p, upto, want) in order {
            assert_eq!(
                covered(Path::new(p), upto.map(Path::new)),
                want,
                "{p} up to {upto:?}"
            );
        }
    }

    #[test]
    fn the_walk_ahead_queues_only_what_changed_since() {
        let t = tempfile::tempdir().unwrap();
        let r = &t.path().join("src");
        std::fs::create_dir_all(r.join("old/deep")).unwrap();
        std::fs::create_dir_all(r.join("touched")).unwrap();
        std::fs::write(r.join("old/deep/kept"), b"x").unwrap();
        std::fs::write(r.join("old/deep/rewritten"), b"x").unwrap();
        std::fs::write(r.join("touched/gone"), b"x").unwrap();
        // ctimes come from a coarse clock: leave it time to move on.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        let since = (now.as_secs() as i64, now.subsec_nanos());
        std::thread::sleep(std::time::Duration::from_millis(50));
        std::fs::write(r.join("old/deep/rewritten"), b"y").unwrap();
        std::fs::remove_file(r.join("touched/gone")).unwrap();
        std::fs::write(r.join("new"), b"z").unwrap();
        std::fs::write(r.join("sent"), b"s").unwrap();
        std::fs::write(r.join("sent-then-written"), b"s").unwrap();
        // What the previous syncer had sent: certified as it is now, or before a later write.
        let state = super::super::State::open(&t.path().join("state"), r, false).unwrap();
        let ts = state.target("t").unwrap();
        let meta = |p: &str| stat::lstat(r, Path::new(p)).unwrap().unwrap();
        ts.apply(&[
            IndexUpdate::Put("sent".into(), meta("sent")),
            IndexUpdate::Put("sent-then-written".into(), meta("sent-then-written")),
        ]);
        ts.flush();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(r.join("sent-then-written"), b"t").unwrap();
        let map = Arc::new(DedupMap::new(std::time::Duration::ZERO));
        let targets = [Compared {
            state: ts,
            map: map.clone(),
        }];
        let rep = recent_walk(r, since, &targets, &[None], 2).unwrap();
        let far = Instant::now() + std::time::Duration::from_secs(60);
        let mut got: Vec<String> = map
            .take_due(far, 100, true)
            .into_iter()
            .map(|t| format!("{} {:?}", t.path.display(), t.pending.op))
            .collect();
        got.sort();
        // The root's entries changed (new), so did touched's (gone): shallow passes; the
        // rewritten file, the new one and the one written after it was sent: sent; the one
        // sent as it is and the rest are left to the pass.
        assert_eq!(
            got,
            [
                " Shallow",
                "new Update",
                "old/deep/rewritten Update",
                "sent-then-written Update",
                "touched Shallow"
            ],
        );
        assert_eq!(rep.dirs, 4);
    }
}
