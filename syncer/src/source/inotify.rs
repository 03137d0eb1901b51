//! The inotify source: the unprivileged fallback. It needs one watch per directory, so start-up
//! walks the whole tree and large trees can hit `fs.inotify.max_user_watches`; that limit is
//! reported as an error naming the sysctl, never ignored.
//!
//! Races of a per-directory scheme are closed by transferring a new directory as a whole
//! subtree (files created in it before its watch existed are included), and `IN_Q_OVERFLOW`
//! becomes a rescan of the whole tree (with watches re-added).

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, InotifyEvent, WatchDescriptor};
use tracing::{info, warn};

use super::{Source, SourceConfig, SourceError, SourceStats};
use crate::change::{entry_changes, Change, ChangeKind};

fn watch_flags() -> AddWatchFlags {
    AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF
        | AddWatchFlags::IN_ONLYDIR
        | AddWatchFlags::IN_DONT_FOLLOW
}

struct Watches {
    fd: Inotify,
    root: PathBuf,
    by_wd: HashMap<WatchDescriptor, PathBuf>,
    /// The same watches by path, ordered by components so that a subtree is one range: a
    /// directory rename or removal costs the watches it moves, not a scan of all of them.
    by_path: BTreeMap<PathBuf, WatchDescriptor>,
}

impl Watches {
    /// Watches `rel` and every directory below it; directories that vanish meanwhile are
    /// skipped. Fails on the watch limit (naming the sysctl) or an unexpected error.
    fn add_tree(&mut self, rel: &Path) -> Result<(), SourceError> {
        let mut stack = vec![rel.to_path_buf()];
        while let Some(dir) = stack.pop() {
            let abs = self.root.join(&dir);
            match self.fd.add_watch(&abs, watch_flags()) {
                Ok(wd) => self.insert(wd, dir.clone()),
                Err(Errno::ENOENT) | Err(Errno::ENOTDIR) => continue,
                Err(Errno::ENOSPC) => {
                    let limit = std::fs::read_to_string("/proc/sys/fs/inotify/max_user_watches")
                        .unwrap_or_default();
                    return Err(SourceError::Unsupported {
                        kind: "inotify",
                        why: format!(
                            "watch limit reached at {} (fs.inotify.max_user_watches = {}); raise it or run as root with --source-kind fanotify",
                            abs.display(),
                            limit.trim()
                        ),
                    });
                }
                Err(e) => {
                    return Err(SourceError::Io {
                        what: format!("inotify_add_watch {}", abs.display()),
                        source: e.into(),
                    })
                }
            }
            let Ok(rd) = std::fs::read_dir(&abs) else {
                continue;
            };
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(dir.join(e.file_name()));
                }
            }
        }
        Ok(())
    }

    fn insert(&mut self, wd: WatchDescriptor, dir: PathBuf) {
        // The kernel gives the same descriptor for a directory watched again (after a rename
        // it has not told us of, or a rescan): its old path is stale.
        if let Some(old) = self.by_wd.insert(wd, dir.clone()) {
            if self.by_path.get(&old) == Some(&wd) {
                self.by_path.remove(&old);
            }
        }
        self.by_path.insert(dir, wd);
    }

    fn forget(&mut self, wd: WatchDescriptor) {
        if let Some(p) = self.by_wd.remove(&wd) {
            if self.by_path.get(&p) == Some(&wd) {
                self.by_path.remove(&p);
            }
        }
    }

    /// The watches at `rel` and below it.
    fn subtree(&self, rel: &Path) -> Vec<(PathBuf, WatchDescriptor)> {
        self.by_path
            .range::<Path, _>((std::ops::Bound::Included(rel), std::ops::Bound::Unbounded))
            .take_while(|(p, _)| p.starts_with(rel))
            .map(|(p, wd)| (p.clone(), *wd))
            .collect()
    }

    /// Renames the watched paths at and below `from` to lie below `to`.
    fn moved(&mut self, from: &Path, to: &Path) {
        for (p, wd) in self.subtree(from) {
            self.by_path.remove(&p);
            let rest = p.strip_prefix(from).expect("in the subtree");
            let new = if rest.as_os_str().is_empty() {
                to.to_path_buf()
            } else {
                to.join(rest)
            };
            self.insert(wd, new);
        }
    }

    /// Drops the watches on `rel` and below (moved out of the tree).
    fn remove_tree(&mut self, rel: &Path) {
        for (_, wd) in self.subtree(rel) {
            self.forget(wd);
            let _ = self.fd.rm_watch(wd);
        }
    }
}

/// Opens the inotify source: a watch on every directory of the tree.
pub fn open_source(cfg: &SourceConfig, stats: Arc<SourceStats>) -> Result<Reader, SourceError> {
    let fd = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK).map_err(|e| {
        SourceError::Io {
            what: "inotify_init".into(),
            source: e.into(),
        }
    })?;
    let mut w = Watches {
        fd,
        root: cfg.root.clone(),
        by_wd: HashMap::new(),
        by_path: BTreeMap::new(),
    };
    let t0 = std::time::Instant::now();
    w.add_tree(Path::new(""))?;
    info!(
        root = %cfg.root.display(),
        watches = w.by_wd.len(),
        ms = t0.elapsed().as_millis() as u64,
        "event source live: inotify (one watch per directory)"
    );
    Ok(Reader { w, stats })
}

/// The watches and what turns their events into changes.
pub struct Reader {
    w: Watches,
    stats: Arc<SourceStats>,
}

impl Source for Reader {
    fn fd(&self) -> BorrowedFd<'_> {
        self.w.fd.as_fd()
    }

    fn read(&mut self, out: &mut Vec<Change>) -> std::io::Result<()> {
        let events = match self.w.fd.read_events() {
            Ok(evs) => evs,
            Err(Errno::EAGAIN) | Err(Errno::EINTR) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        self.stats
            .events
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        handle(&mut self.w, &events, &self.stats, out);
        Ok(())
    }
}

fn handle(w: &mut Watches, events: &[InotifyEvent], stats: &SourceStats, out: &mut Vec<Change>) {
    // Directory renames inside the tree arrive as MOVED_FROM/MOVED_TO pairs sharing a cookie.
    let mut moved_from: HashMap<u32, PathBuf> = HashMap::new();
    for ev in events {
        let m = ev.mask;
        if m.contains(AddWatchFlags::IN_Q_OVERFLOW) {
            warn!("inotify queue overflow: events were lost; rescanning the whole tree");
            stats.rescans.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = w.add_tree(Path::new("")) {
                warn!("{e}");
            }
            out.push(Change::rescan(""));
            continue;
        }
        if m.contains(AddWatchFlags::IN_IGNORED) {
            w.forget(ev.wd);
            continue;
        }
        let Some(dir) = w.by_wd.get(&ev.wd).cloned() else {
            continue;
        };
        let is_dir = m.contains(AddWatchFlags::IN_ISDIR);
        let Some(name) = &ev.name else {
            // An event on the watched directory itself.
            if m.intersects(AddWatchFlags::IN_DELETE_SELF | AddWatchFlags::IN_MOVE_SELF)
                && dir.as_os_str().is_empty()
            {
                warn!("the source root itself was moved or deleted; rescanning");
                out.push(Change::rescan(""));
            } else if m.contains(AddWatchFlags::IN_ATTRIB) {
                out.push(Change::new(&dir, ChangeKind::Modified, true));
            }
            continue;
        };
        let path = dir.join(name);
        if m.contains(AddWatchFlags::IN_MOVED_FROM) {
            if is_dir {
                moved_from.insert(ev.cookie, path.clone());
            }
            entry_changes(&path, ChangeKind::Removed, is_dir, out);
        }
        if m.contains(AddWatchFlags::IN_DELETE) {
            entry_changes(&path, ChangeKind::Removed, is_dir, out);
        }
        if m.intersects(AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO) {
            if is_dir {
                match moved_from
                    .remove(&ev.cookie)
                    .filter(|_| m.contains(AddWatchFlags::IN_MOVED_TO))
                {
                    Some(from) => w.moved(&from, &path),
                    None => {
                        if let Err(e) = w.add_tree(&path) {
                            warn!(
                                "{e}; changes below {} are not seen until a rescan",
                                path.display()
                            );
                        }
                    }
                }
                // Whatever was created in it before its watch existed goes with it.
                entry_changes(&path, ChangeKind::MovedIn, true, out);
            } else if m.contains(AddWatchFlags::IN_MOVED_TO) {
                entry_changes(&path, ChangeKind::MovedIn, false, out);
            } else {
                entry_changes(&path, ChangeKind::Created, false, out);
            }
        }
        if m.intersects(AddWatchFlags::IN_MODIFY | AddWatchFlags::IN_ATTRIB) {
            out.push(Change::new(&path, ChangeKind::Modified, is_dir));
        } else if m.contains(AddWatchFlags::IN_CLOSE_WRITE) {
            out.push(Change::new(&path, ChangeKind::Closed, is_dir));
        }
    }
    // Directories moved out of the tree: stop watching them.
    for (_, from) in moved_from {
        w.remove_tree(&from);
    }
}
