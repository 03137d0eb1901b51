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
    let cond = Condvar::new();
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
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| worker(root, targets, &shared, &cond));
        }
    });
    let shared = shared.into_inner().expect("walk state");
    match shared.failed {
        Some(e) => Err(e),
        None => Ok(shared.report),
    }
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

fn worker(root: &Path, targets: &[Compared], shared: &Mutex<Shared>, cond: &Condvar) {
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
        let result = compare_dir(root, &dir, &active, targets);
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
    use super::super::meta::Kind;
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
}
