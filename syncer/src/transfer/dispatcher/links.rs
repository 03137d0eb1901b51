//! Hard links: a write through one name changes the file under every name, but the kernel
//! reports only the name written. The dispatcher tells [`Links`] the inode of every file entry
//! it takes that has more than one link, and the names the walks met (the catch-up walk,
//! subtree transfers' pre-transfer reading); when one name of such an inode changes, or is
//! unlinked, its other known names are changed too. While fewer names are known than the inode
//! has links, the dispatcher looks for them in the entry's own directory (where most hard
//! links live). A name in another directory that neither an event nor a walk has shown is
//! missed by live replication; the catch-up walk (at every start, and `verify_interval_s`)
//! compares every name's ctime, which any write moves, and repairs it.

use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use tracing::trace;

use super::Dispatcher;
use crate::queue::Op;

use hashbrown::HashMap;

/// Most names remembered; past it the table starts over (costing only missed pairs until the
/// names are seen again).
const CAPACITY: usize = 1 << 20;

#[derive(Debug, Default)]
pub struct Links {
    by_ino: HashMap<u64, Names>,
    /// The inode each known name was last seen as (so that an unlinked name, which can no
    /// longer be looked at, still tells which inode changed).
    by_path: HashMap<Arc<Path>, u64>,
}

#[derive(Debug, Default)]
struct Names {
    paths: Vec<Arc<Path>>,
    /// The inode's ctime when its other names were last queued: the names queued then come
    /// back through here with the same ctime and must not queue each other again.
    propagated: Option<(i64, i64)>,
}

impl Links {
    /// `path` is a file with inode `ino` and `nlink` links: returns the other names remembered
    /// for that inode (the caller checks that each still is that inode, and [`Links::forget`]s
    /// the ones that are not).
    ///
    /// `ctime` is the inode's: names are queued once per change of the inode.
    pub fn seen(
        &mut self,
        path: &Arc<Path>,
        ino: u64,
        nlink: u64,
        ctime: (i64, i64),
    ) -> Vec<Arc<Path>> {
        if nlink < 2 {
            return Vec::new();
        }
        self.add(path.clone(), ino);
        let names = self.by_ino.entry(ino).or_default();
        if names.propagated == Some(ctime) {
            return Vec::new();
        }
        names.propagated = Some(ctime);
        names.paths.iter().filter(|n| *n != path).cloned().collect()
    }

    /// How many names of `ino` are known.
    pub fn known(&self, ino: u64) -> usize {
        self.by_ino.get(&ino).map_or(0, |n| n.paths.len())
    }

    /// Remembers `path` as a name of `ino` (found by looking, not by an event).
    pub fn add(&mut self, path: Arc<Path>, ino: u64) {
        match self.by_path.get(&path) {
            Some(&known) if known == ino => return,
            // The name was another inode's: it is this one's now.
            Some(&other) => self.forget(other, &path),
            None => {}
        }
        if self.by_path.len() >= CAPACITY {
            self.by_ino.clear();
            self.by_path.clear();
        }
        self.by_ino.entry(ino).or_default().paths.push(path.clone());
        self.by_path.insert(path, ino);
    }

    /// `path` is no longer a name of `ino`.
    pub fn forget(&mut self, ino: u64, path: &Path) {
        if self.by_path.get(path) == Some(&ino) {
            self.by_path.remove(path);
        }
        if let Some(names) = self.by_ino.get_mut(&ino) {
            names.paths.retain(|n| n.as_ref() != path);
            if names.paths.is_empty() {
                self.by_ino.remove(&ino);
            }
        }
    }

    /// `path` was unlinked: if it was a known name, its inode (which may have changed through
    /// it just before) and the inode's other known names, which the caller queues.
    pub fn removed(&mut self, path: &Path) -> Option<(u64, Vec<Arc<Path>>)> {
        let ino = *self.by_path.get(path)?;
        self.forget(ino, path);
        let names = self.by_ino.get_mut(&ino)?;
        names.propagated = None;
        Some((ino, names.paths.clone()))
    }
}

/// Most entries of a directory read when looking for an inode's other names there.
const LOOK_MAX: usize = 4096;

impl Dispatcher {
    /// Files with several links changed under one name each: their other known names changed
    /// too. Names not known yet are looked for in each entry's directory, each directory read
    /// once per call and only its first [`LOOK_MAX`] entries (a directory of a million fresh
    /// links costs a bounded read per batch, not one per link).
    pub(super) fn other_links(&mut self, changed: &[(Arc<Path>, std::fs::Metadata)], now: Instant) {
        self.learn_links(now);
        let mut look: hashbrown::HashMap<&Path, hashbrown::HashSet<u64>> =
            hashbrown::HashMap::new();
        for (path, m) in changed {
            if (self.links.known(m.ino()) as u64) < m.nlink() {
                let dir = path.parent().unwrap_or(Path::new(""));
                look.entry(dir).or_default().insert(m.ino());
            }
        }
        for (dir, inodes) in look {
            if let Ok(rd) = std::fs::read_dir(self.source.join(dir)) {
                for e in rd.flatten().take(LOOK_MAX) {
                    if inodes.contains(&e.ino()) {
                        self.links.add(Arc::from(dir.join(e.file_name())), e.ino());
                    }
                }
            }
        }
        for (path, m) in changed {
            self.propagate(path, m, now);
        }
    }

    /// Queues the other known names of `path`'s inode, once per change of its ctime.
    fn propagate(&mut self, path: &Arc<Path>, m: &std::fs::Metadata, now: Instant) {
        let others = self
            .links
            .seen(path, m.ino(), m.nlink(), (m.ctime(), m.ctime_nsec()));
        trace!(target = %self.target, path = %path.display(), ino = m.ino(), nlink = m.nlink(), known = self.links.known(m.ino()), others = others.len(), "hard-linked file changed");
        self.queue_other_names(m.ino(), others, now);
    }

    /// Queues the names in `others` that still are inode `ino`; forgets those that are not.
    fn queue_other_names(&mut self, ino: u64, others: Vec<Arc<Path>>, now: Instant) {
        for other in others {
            match std::fs::symlink_metadata(self.source.join(&*other)) {
                Ok(o) if o.ino() == ino => {
                    trace!(target = %self.target, other = %other.display(), "another name of a changed inode queued");
                    self.map.restore(&other, Op::Update, false, now);
                }
                _ => self.links.forget(ino, &other),
            }
        }
    }

    /// Takes the hard-linked names the walks met (the catch-up walk, subtree transfers'
    /// reading of what they send): names in other directories, and names that came with a
    /// renamed directory.
    ///
    /// Names a live subtree transfer sent stand for changes the map folded into that transfer
    /// (a write through a name in a directory renamed just before): their other names are
    /// queued once per change of the inode.
    pub(super) fn learn_links(&mut self, now: Instant) {
        let Some(state) = &self.state else {
            return;
        };
        for (name, m, sent) in state.take_links() {
            let name: Arc<Path> = Arc::from(name);
            self.links.add(name.clone(), m.ino);
            if !sent {
                continue;
            }
            let others = self
                .links
                .seen(&name, m.ino, 2, (m.ctime.0, i64::from(m.ctime.1)));
            self.queue_other_names(m.ino, others, now);
        }
    }

    /// A file name went away: if it was a known name of a hard-linked inode, what changed
    /// through it just before (a write, a chmod) shows only under the other names, which
    /// are queued.
    pub(super) fn unlinked(&mut self, path: &Path, now: Instant) {
        self.learn_links(now);
        if let Some((ino, others)) = self.links.removed(path) {
            self.queue_other_names(ino, others, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_names_of_an_inode() {
        let p = |s: &str| -> Arc<Path> { Arc::from(Path::new(s)) };
        let names = |v: Vec<Arc<Path>>| -> Vec<String> {
            v.iter().map(|n| n.display().to_string()).collect()
        };
        let mut l = Links::default();
        let t = |n| (n, 0);
        assert!(
            l.seen(&p("single"), 1, 1, t(1)).is_empty(),
            "one link: nothing kept"
        );
        assert!(
            l.seen(&p("a"), 7, 2, t(1)).is_empty(),
            "the first name seen"
        );
        assert_eq!(names(l.seen(&p("b"), 7, 2, t(2))), ["a"]);
        assert!(
            l.seen(&p("a"), 7, 2, t(2)).is_empty(),
            "the name queued for that change does not queue b back"
        );
        assert_eq!(
            names(l.seen(&p("a"), 7, 2, t(3))),
            ["b"],
            "a new change: not itself"
        );
        assert_eq!(names(l.seen(&p("c"), 7, 3, t(4))), ["a", "b"]);
        l.forget(7, Path::new("a"));
        assert_eq!(names(l.seen(&p("b"), 7, 2, t(5))), ["c"]);
        assert!(l.seen(&p("x"), 8, 2, t(5)).is_empty(), "inodes are apart");
        l.add(p("x"), 9);
        assert_eq!(
            l.known(8),
            0,
            "a name reused by another inode leaves the old one"
        );
        assert_eq!(
            l.removed(Path::new("b")).map(|(i, v)| (i, names(v))),
            Some((7, vec!["c".to_string()])),
            "an unlinked name tells its inode's other names"
        );
        assert_eq!(l.known(7), 1);
        assert!(l.removed(Path::new("nowhere")).is_none());
    }
}
