//! The ordering guard of one target: which transfers are in flight where, and whether a new
//! one must wait for them.
//!
//! Every transfer reads the source when it runs, so two transfers that touch the same path only
//! conflict when the later one carries news the earlier one cannot have seen: a transfer that
//! started before a path's latest event may write an older state of it (or, with `--delete`,
//! remove what the newer transfer wrote) and must therefore finish before a transfer for that
//! event starts. The guard answers that question for an entry with the latest event `last`:
//!
//! * the path itself is in flight in a transfer started at or before `last`;
//! * an ancestor is in flight in a subtree transfer (tree, shallow, deletion) started at or
//!   before `last`;
//! * for a directory-level entry (its own attributes, a subtree, a deletion): anything below it
//!   is in flight in a transfer started at or before `last` (rsync writes a file by renaming a
//!   temporary file into its directory, and sends every parent directory of a listed path with
//!   its attributes, so a directory must be written after what is below it).
//!
//! Transfers started after `last` read a state at least as new, so they never hold an entry
//! back: a busy directory is not starved by the steady stream of transfers below it, and the
//! start-up pass (whose pieces carry no event at all) never waits.
//!
//! Every answer costs time proportional to the path's depth, never to how much is in flight or
//! waiting: nodes are kept per path (only for paths in flight and their ancestors), each with
//! the transfers in flight *at* it and a count per transfer of those *below* it. An entry that
//! must wait is parked on the node that blocks it and handed back when that node changes.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Instant;

use hashbrown::HashMap;

/// Identifies one transfer (a batch); increasing in start order.
pub type Seq = u64;

/// What an in-flight transfer covers at its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// The entry itself (a file, a symlink, a directory's own attributes).
    Entry,
    /// The entry and everything below it (tree, shallow, deletion).
    Subtree,
}

#[derive(Debug)]
struct Node<W> {
    /// Transfers in flight at exactly this path.
    here: Vec<(Seq, Instant, Reach)>,
    /// Transfers in flight strictly below this path, earliest start first: how many of each
    /// one's paths lie below.
    below: BTreeMap<(Instant, Seq), u32>,
    /// Entries waiting for a transfer in flight here to end.
    wait_here: Vec<W>,
    /// Entries waiting for the earliest transfer in flight below to end.
    wait_below: Vec<W>,
}

impl<W> Default for Node<W> {
    fn default() -> Self {
        Node {
            here: Vec::new(),
            below: BTreeMap::new(),
            wait_here: Vec::new(),
            wait_below: Vec::new(),
        }
    }
}

impl<W> Node<W> {
    fn is_empty(&self) -> bool {
        self.here.is_empty()
            && self.below.is_empty()
            && self.wait_here.is_empty()
            && self.wait_below.is_empty()
    }
}

/// What an entry waits for: a transfer in flight at `node`, or below it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block<'a> {
    pub node: &'a [u8],
    pub below: bool,
}

/// The guard; `W` is what waits (the dispatcher's queued entries).
#[derive(Debug)]
pub struct Guard<W> {
    nodes: HashMap<Box<[u8]>, Node<W>>,
    waiting: usize,
}

impl<W> Default for Guard<W> {
    fn default() -> Self {
        Guard {
            nodes: HashMap::new(),
            waiting: 0,
        }
    }
}

/// The proper ancestors of a relative path, nearest first, ending with the root (`""`).
pub fn ancestors(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = if path.is_empty() { None } else { Some(path) };
    std::iter::from_fn(move || {
        let p = rest?;
        match p.iter().rposition(|&b| b == b'/') {
            Some(i) => {
                rest = Some(&p[..i]);
                Some(&p[..i])
            }
            None => {
                rest = None;
                Some(&p[..0])
            }
        }
    })
}

/// A relative path's bytes.
pub fn key(path: &Path) -> &[u8] {
    path.as_os_str().as_bytes()
}

impl<W> Guard<W> {
    /// What an entry at `path` must wait for, if anything. `last`: the entry's latest event;
    /// `dir_level`: the entry writes the directory itself, its subtree or deletes it.
    pub fn blocker(&self, path: &[u8], last: Instant, dir_level: bool) -> Option<Block<'_>> {
        if let Some((k, n)) = self.nodes.get_key_value(path) {
            if n.here.iter().any(|&(_, started, _)| started <= last) {
                return Some(Block {
                    node: k,
                    below: false,
                });
            }
            if dir_level
                && n.below
                    .first_key_value()
                    .is_some_and(|(&(started, _), _)| started <= last)
            {
                return Some(Block {
                    node: k,
                    below: true,
                });
            }
        }
        for a in ancestors(path) {
            if let Some((k, n)) = self.nodes.get_key_value(a) {
                let covers = n
                    .here
                    .iter()
                    .any(|&(_, started, r)| r == Reach::Subtree && started <= last);
                if covers {
                    return Some(Block {
                        node: k,
                        below: false,
                    });
                }
            }
        }
        None
    }

    /// Parks `w` until what blocks it (an answer of [`Guard::blocker`]) changes.
    pub fn wait(&mut self, node: &[u8], below: bool, w: W) {
        let n = self.nodes.entry_ref(node).or_default();
        if below {
            n.wait_below.push(w);
        } else {
            n.wait_here.push(w);
        }
        self.waiting += 1;
    }

    /// Records that transfer `seq`, started at `started`, covers `path` with `reach`.
    pub fn mark(&mut self, path: &[u8], seq: Seq, started: Instant, reach: Reach) {
        self.nodes
            .entry_ref(path)
            .or_default()
            .here
            .push((seq, started, reach));
        for a in ancestors(path) {
            *self
                .nodes
                .entry_ref(a)
                .or_default()
                .below
                .entry((started, seq))
                .or_insert(0) += 1;
        }
    }

    /// Transfer `seq` no longer covers `path`. Entries parked on what this changes are
    /// appended to `released`; they must ask [`Guard::blocker`] again.
    pub fn unmark(&mut self, path: &[u8], seq: Seq, released: &mut Vec<W>) {
        let Some(n) = self.nodes.get_mut(path) else {
            return;
        };
        let Some(i) = n.here.iter().position(|&(s, _, _)| s == seq) else {
            return;
        };
        let (_, started, _) = n.here.swap_remove(i);
        self.waiting -= n.wait_here.len();
        released.append(&mut n.wait_here);
        if n.is_empty() {
            self.nodes.remove(path);
        }
        for a in ancestors(path) {
            let Some(n) = self.nodes.get_mut(a) else {
                continue;
            };
            let key = (started, seq);
            if let Some(c) = n.below.get_mut(&key) {
                *c -= 1;
                if *c == 0 {
                    let was_first = n.below.first_key_value().is_some_and(|(&k, _)| k == key);
                    n.below.remove(&key);
                    if was_first {
                        self.waiting -= n.wait_below.len();
                        released.append(&mut n.wait_below);
                    }
                }
            }
            if n.is_empty() {
                self.nodes.remove(a);
            }
        }
    }

    /// Entries parked.
    pub fn waiting(&self) -> usize {
        self.waiting
    }

    /// Whether nothing is in flight or parked.
    pub fn is_idle(&self) -> bool {
        self.nodes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn ancestors_nearest_first() {
        let all = |p: &str| -> Vec<String> {
            ancestors(p.as_bytes())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        };
        assert_eq!(all("a/b/c"), ["a/b", "a", ""]);
        assert_eq!(all("top"), [""]);
        assert!(all("").is_empty());
    }

    /// One situation: transfers in flight as (path, started at ms, reach), then an entry
    /// (path, last event at ms, directory level) and the node it must wait for.
    type Case = (
        &'static str,
        &'static [(&'static str, u64, Reach)],
        (&'static str, u64, bool),
        Option<&'static str>,
    );

    #[test]
    fn who_waits_for_whom() {
        use Reach::*;
        #[rustfmt::skip]
        let table: &[Case] = &[
            ("nothing in flight", &[], ("a/f", 10, false), None),
            ("the same file in flight, started before the event", &[("a/f", 5, Entry)], ("a/f", 10, false), Some("a/f")),
            ("the same file in flight, started after the event", &[("a/f", 15, Entry)], ("a/f", 10, false), None),
            ("a sibling in flight", &[("a/g", 5, Entry)], ("a/f", 10, false), None),
            ("an ancestor's subtree in flight", &[("a", 5, Subtree)], ("a/b/f", 10, false), Some("a")),
            ("the root's subtree in flight", &[("", 5, Subtree)], ("a/b/f", 10, false), Some("")),
            ("an ancestor's subtree started after the event", &[("a", 15, Subtree)], ("a/b/f", 10, false), None),
            ("an ancestor's own attributes in flight", &[("a", 5, Entry)], ("a/b/f", 10, false), None),
            ("a file below a directory update", &[("a/f", 5, Entry)], ("a", 10, true), Some("a")),
            ("a file deep below a directory update", &[("a/b/c/f", 5, Entry)], ("a", 10, true), Some("a")),
            ("a file below, started after the directory's event", &[("a/f", 15, Entry)], ("a", 10, true), None),
            ("one of two below started before", &[("a/f", 15, Entry), ("a/g", 5, Entry)], ("a", 10, true), Some("a")),
            ("a file below, but the entry is a file", &[("a/f", 5, Entry)], ("a", 10, false), None),
            ("a name that only shares a prefix", &[("ab", 5, Subtree)], ("ab2/f", 10, false), None),
            ("a name that only shares a prefix, directory level", &[("a/b2", 5, Entry)], ("a/b", 10, true), None),
            ("ties wait", &[("a", 10, Subtree)], ("a/f", 10, false), Some("a")),
        ];
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        for (name, inflight, (path, last, dir_level), want) in table {
            let mut g: Guard<()> = Guard::default();
            for (seq, (p, started, reach)) in inflight.iter().enumerate() {
                g.mark(p.as_bytes(), seq as Seq, at(*started), *reach);
            }
            let got = g
                .blocker(path.as_bytes(), at(*last), *dir_level)
                .map(|b| String::from_utf8_lossy(b.node).into_owned());
            assert_eq!(got.as_deref(), *want, "{name}");
        }
    }

    #[test]
    fn waiters_come_back_when_their_blocker_ends() {
        let t0 = Instant::now();
        let late = t0 + Duration::from_secs(1);
        let mut g: Guard<&'static str> = Guard::default();
        g.mark(b"a", 1, t0, Reach::Subtree);
        g.mark(b"a/x", 2, t0, Reach::Entry);
        g.mark(b"b/y", 2, t0, Reach::Entry);
        let b = g.blocker(b"a/f", late, false).unwrap();
        let (k, below) = (b.node.to_vec(), b.below);
        g.wait(&k, below, "a/f");
        let b = g.blocker(b"b", late, true).unwrap();
        let (k, below) = (b.node.to_vec(), b.below);
        g.wait(&k, below, "b");
        assert_eq!(g.waiting(), 2);
        let mut out = Vec::new();
        g.unmark(b"a/x", 2, &mut out);
        assert!(out.is_empty(), "a/f waits for a, not for a/x");
        g.unmark(b"b/y", 2, &mut out);
        assert_eq!(out, ["b"]);
        assert!(g.blocker(b"b", late, true).is_none());
        g.unmark(b"a", 1, &mut out);
        assert_eq!(out, ["b", "a/f"]);
        g.unmark(b"a", 1, &mut out);
        assert_eq!(out.len(), 2, "unmarking twice is harmless");
        assert!(g.is_idle(), "nodes are dropped once nothing uses them");
        assert_eq!(g.waiting(), 0);
    }

    #[test]
    fn a_directory_waits_only_for_the_oldest_transfer_below() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut g: Guard<u32> = Guard::default();
        g.mark(b"d/old", 1, at(5), Reach::Entry);
        g.mark(b"d/new", 2, at(20), Reach::Entry);
        let b = g.blocker(b"d", at(10), true).unwrap();
        assert!(b.below);
        let k = b.node.to_vec();
        g.wait(&k, true, 7);
        let mut out = Vec::new();
        g.unmark(b"d/new", 2, &mut out);
        assert!(out.is_empty(), "the newer transfer below does not matter");
        g.unmark(b"d/old", 1, &mut out);
        assert_eq!(out, [7]);
        assert!(g.blocker(b"d", at(10), true).is_none());
    }
}
