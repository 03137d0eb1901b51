//! The coalescing rules of the dedup map, as plain functions: [`next_state`] (one event onto a
//! pending state) and [`merge_retry`] (a failed transfer under newer events), and what a
//! pending entry is ([`Op`], [`Pending`]). The tests at the bottom are their table.

use std::time::Instant;

use crate::change::ChangeKind;

/// How a pending path is to be transferred.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// Bring the entry itself up to date (a directory without its contents). If the path is gone
    /// from the source by then, this deletes it on the target.
    Update,
    /// The path was removed. Transferred like `Update` (rsync deletes what is missing); a
    /// directory deletion also covers every pending path below it.
    Delete,
    /// Make the whole subtree identical, deleting extraneous files on the target.
    Tree,
    /// Make the directory and its immediate entries identical, without recursing (used by the
    /// rescan planner for the directories above the subtrees it hands out).
    Shallow,
}

/// The pending state of one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub op: Op,
    pub is_dir: bool,
    /// The path did not exist on the target when this entry began (it was created here, and no
    /// transfer of it was in flight), so a removal before any transfer may need none.
    pub born: bool,
    /// When the first event of this entry arrived.
    pub first: Instant,
    /// When the latest event of this entry arrived.
    pub last: Instant,
    /// When the entry may be transferred.
    pub due: Instant,
    /// Failed transfers so far.
    pub attempts: u32,
}

impl Pending {
    /// Whether a pending transfer of this entry makes every path below it up to date.
    pub fn covers_subtree(&self) -> bool {
        self.op == Op::Tree || (self.op == Op::Delete && self.is_dir)
    }

    /// A file created and removed again before any transfer could have copied it.
    pub fn vanished(&self) -> bool {
        self.op == Op::Delete && self.born && !self.is_dir
    }
}

/// The coalescing rule: the `(op, born)` state after `kind` happens to a path whose pending
/// state is `cur`. `inflight` tells whether a transfer of the path is running now.
pub fn next_state(
    cur: Option<(Op, bool)>,
    kind: ChangeKind,
    is_dir: bool,
    inflight: bool,
) -> (Op, bool) {
    use ChangeKind::*;
    let moved_in = if is_dir { Op::Tree } else { Op::Update };
    match (cur, kind) {
        (_, Rescan) => (Op::Tree, false),
        (None, Created) => (Op::Update, !inflight),
        (None, Modified) => (Op::Update, false),
        (None, MovedIn) => (moved_in, false),
        (None, Removed) => (Op::Delete, false),
        (Some((op, born)), Removed) => (Op::Delete, born && op != Op::Tree),
        // A rename over an existing name: whatever was there may be on the target.
        (Some(_), MovedIn) => (moved_in, false),
        // A directory removed and made again: the target may still hold the old contents.
        (Some((Op::Delete, false)), Created | Modified) if is_dir => (Op::Tree, false),
        (Some((Op::Delete, born)), Created | Modified) => (Op::Update, born),
        (Some((op, born)), Created | Modified) => (op, born),
    }
}

/// A failed transfer of `old` goes back under the `newer` events that arrived meanwhile.
pub fn merge_retry(old: &Pending, newer: Option<Pending>) -> Pending {
    let Some(newer) = newer else {
        return old.clone();
    };
    let op = match (old.op, newer.op) {
        (Op::Tree, _) | (_, Op::Tree) => Op::Tree,
        (Op::Delete, Op::Update) if old.is_dir && newer.is_dir => Op::Tree,
        (Op::Shallow, Op::Update | Op::Shallow) => Op::Shallow,
        (_, op) => op,
    };
    Pending {
        op,
        is_dir: newer.is_dir,
        born: false,
        first: old.first.min(newer.first),
        last: old.last.max(newer.last),
        due: old.due.max(newer.due),
        attempts: old.attempts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ChangeKind::*;

    /// What the dispatcher will transfer for a path after a sequence of events.
    fn outcome(events: &[(ChangeKind, bool)], inflight_at_start: bool) -> &'static str {
        let mut state = None;
        for (i, &(kind, is_dir)) in events.iter().enumerate() {
            state = Some(next_state(state, kind, is_dir, inflight_at_start && i == 0));
        }
        let is_dir = events.last().map(|e| e.1).unwrap_or(false);
        match state {
            None => "nothing",
            Some((Op::Delete, true)) if !is_dir => "nothing (vanished)",
            Some((Op::Delete, _)) => "delete",
            Some((Op::Update, _)) => "update",
            Some((Op::Tree, _)) => "tree",
            Some((Op::Shallow, _)) => "shallow",
        }
    }

    /// (name, events as (kind, is_dir), in flight when the first event came, outcome)
    type Case = (
        &'static str,
        &'static [(ChangeKind, bool)],
        bool,
        &'static str,
    );

    #[test]
    fn coalescing_rules() {
        const F: bool = false;
        const D: bool = true;
        #[rustfmt::skip]
        let table: &[Case] = &[
            ("many writes become one transfer", &[(Created, F), (Modified, F), (Modified, F), (Modified, F)], false, "update"),
            ("rewrite of an existing file", &[(Modified, F), (Modified, F)], false, "update"),
            ("create then delete transfers nothing", &[(Created, F), (Modified, F), (Removed, F)], false, "nothing (vanished)"),
            ("create then delete while a copy is in flight", &[(Created, F), (Removed, F)], true, "delete"),
            ("delete then create replaces", &[(Removed, F), (Created, F)], false, "update"),
            ("modify then delete deletes", &[(Modified, F), (Removed, F)], false, "delete"),
            ("rename over an existing file, then delete", &[(MovedIn, F), (Removed, F)], false, "delete"),
            ("created, deleted, created again", &[(Created, F), (Removed, F), (Created, F)], false, "update"),
            ("mkdir", &[(Created, D)], false, "update"),
            ("mkdir then rmdir still deletes (children may have gone out)", &[(Created, D), (Removed, D)], false, "delete"),
            ("directory deleted and recreated", &[(Removed, D), (Created, D)], false, "tree"),
            ("directory renamed in", &[(MovedIn, D)], false, "tree"),
            ("directory renamed away", &[(Modified, D), (Removed, D)], false, "delete"),
            ("swap chain: a->tmp, b->a", &[(Removed, D), (MovedIn, D)], false, "tree"),
            ("rescan wins over updates", &[(Modified, F), (Rescan, D)], false, "tree"),
            ("tree then removed deletes", &[(MovedIn, D), (Removed, D)], false, "delete"),
            ("tree absorbs later updates", &[(MovedIn, D), (Modified, D)], false, "tree"),
            ("attribute change of a directory", &[(Modified, D)], false, "update"),
        ];
        for (name, events, inflight, want) in table {
            assert_eq!(outcome(events, *inflight), *want, "{name}");
        }
    }
}
