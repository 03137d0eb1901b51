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

/// The sink sources deliver to: every target's map, each change stamped once.
pub struct Fanout {
    maps: Vec<Arc<DedupMap>>,
}

impl Fanout {
    pub fn new(maps: Vec<Arc<DedupMap>>) -> Fanout {
        Fanout { maps }
    }
}

impl ChangeSink for Fanout {
    fn push(&self, changes: &[Change]) {
        if changes.is_empty() {
            return;
        }
        let now = Instant::now();
        for m in &self.maps {
            m.insert_all(changes, now);
        }
    }
}
