//! The pending state of each target: the dedup map and its coalescing rules, and the
//! start-up pass that walks the tree into pieces. Knows nothing of how changes are transferred.

pub mod dedup;
pub mod pass;
pub mod rules;

use std::sync::Arc;
use std::time::Instant;

use crate::change::{Change, ChangeSink};

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
/// maps changes when a reload adds or removes a target.
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
