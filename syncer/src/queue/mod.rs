//! The pending state of each target: the dedup map and its coalescing rules, and the
//! start-up pass that walks the tree into pieces. Knows nothing of how changes are transferred.

pub mod dedup;
pub mod pass;
pub mod rules;

use std::sync::Arc;
use std::time::Instant;

use crate::change::{is_silly_renamed, Change, ChangeSink};

pub use self::dedup::{DedupMap, Taken};
pub use self::rules::{Op, Pending};

/// What a map tells its journal: `path` is pending with this op (and is a directory or not),
/// or (`None`) no longer pending because a transfer covering it succeeded.
pub type JournalEntry<'a> = (&'a std::path::Path, Option<(Op, bool)>);

/// Where a map records what is pending, so that a restart finds it again
/// (`crate::state` keeps it on disk). Called with every insert, retry and completion; must not
/// block for long (it runs on the source's reader thread).
pub trait Journal: Send + Sync {
    fn record(&self, entries: &[JournalEntry<'_>]);
}

/// The sink sources deliver to: every target's map, each change stamped once. The set of
/// maps changes when a reload adds or removes a target. The one filter every change passes
/// is here: NFS silly-renames are protocol artifacts, never content
/// ([`crate::change::is_silly_rename`]), and go no further.
pub struct Fanout {
    maps: std::sync::RwLock<Vec<Arc<DedupMap>>>,
}

impl Fanout {
    pub fn new(maps: Vec<Arc<DedupMap>>) -> Fanout {
        Fanout {
            maps: std::sync::RwLock::new(maps),
        }
    }

    /// From now on, changes go to `maps`.
    pub fn set(&self, maps: Vec<Arc<DedupMap>>) {
        *self
            .maps
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = maps;
    }
}

impl ChangeSink for Fanout {
    fn push(&self, changes: &[Change]) {
        if changes.is_empty() {
            return;
        }
        if changes.iter().any(|c| is_silly_renamed(&c.path)) {
            let kept: Vec<Change> = changes
                .iter()
                .filter(|c| !is_silly_renamed(&c.path))
                .cloned()
                .collect();
            return self.push(&kept);
        }
        let now = Instant::now();
        let maps = self
            .maps
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for m in maps.iter() {
            m.insert_all(changes, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;
    use crate::change::ChangeKind::{Created, Modified, Removed};

    #[test]
    fn silly_renames_go_no_further() {
        let map = Arc::new(DedupMap::new(Duration::ZERO));
        let fanout = Fanout::new(vec![map.clone()]);
        let silly = "d/.nfs00000000000c04a200000001";
        // A rename of `d/f` to its silly name, then writes to it while the client holds it.
        fanout.push(&[
            Change::new("d/f", Removed, false),
            Change::new(silly, Created, false),
            Change::new("d", Modified, true),
        ]);
        fanout.push(&[Change::new(silly, Modified, false)]);
        let mut taken: Vec<PathBuf> = map
            .take_due(Instant::now() + Duration::from_secs(1), 100, true)
            .into_iter()
            .map(|t| t.path.to_path_buf())
            .collect();
        taken.sort();
        assert_eq!(taken, [PathBuf::from("d"), PathBuf::from("d/f")]);
    }
}
