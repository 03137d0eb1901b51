//! The coalescing rules of the dedup map, as plain functions: [`next_state`] (one event onto a
//! pending state), [`closed_only`] (whether an entry is nothing but closes) and [`merge_retry`]
//! (a failed transfer under newer events), and what a pending entry is ([`Op`], [`Pending`]).
//! The tests at the bottom are their table.

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
    /// When the first event of this entry arrived.
    pub first: Instant,
    /// When the latest event of this entry arrived.
    pub last: Instant,
    /// When the entry may be transferred.
    pub due: Instant,
    /// Failed transfers so far.
    pub attempts: u32,
    /// Nothing but closes after writing came for this entry ([`closed_only`]): the dispatcher
    /// sends it only if the file differs from what the target's index certifies.
    pub closed_only: bool,
}

impl Pending {
    /// Whether a pending transfer of this entry makes every path below it up to date.
    pub fn covers_subtree(&self) -> bool {
        self.op == Op::Tree || (self.op == Op::Delete && self.is_dir)
    }
}

/// The coalescing rule: the op after `kind` happens to a path whose pending op is `cur`.
/// A removal is always sent, even of a file created since the last transfer: a transfer of
/// an ancestor (a subtree, a shallow pass, a piece of a pass), or a failed one of the file
/// itself, may have copied it meanwhile, and the deletion of a name the target never had costs
/// a path in a batch, where an extra file left on the target would be wrong until a rescan.
pub fn next_state(cur: Option<Op>, kind: ChangeKind, is_dir: bool) -> Op {
    use ChangeKind::*;
    let moved_in = if is_dir { Op::Tree } else { Op::Update };
    match (cur, kind) {
        (_, Rescan) => Op::Tree,
        (None, Created | Modified | Closed) => Op::Update,
        (None, MovedIn) => moved_in,
        (_, Removed) => Op::Delete,
        // A rename over an existing name: whatever was there may be on the target.
        (Some(_), MovedIn) => moved_in,
        // A directory removed and made again: the target may still hold the old contents.
        (Some(Op::Delete), Created | Modified | Closed) if is_dir => Op::Tree,
        (Some(Op::Delete), Created | Modified | Closed) => Op::Update,
        (Some(op), Created | Modified | Closed) => op,
    }
}

/// Whether an entry is, after `kind`, nothing but closes after writing: `cur` is that of the
/// pending entry (`None`: nothing pending). Such a close usually comes after the writes it
/// ends were reported and sent (an NFS server closes its cached descriptor a second or more
/// after a client's last WRITE); the file is then sent only if it no longer matches the
/// target's index entry (the certificate of what the target holds, `state::meta`).
pub fn closed_only(cur: Option<bool>, kind: ChangeKind) -> bool {
    kind == ChangeKind::Closed && cur.unwrap_or(true)
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
        first: old.first.min(newer.first),
        last: old.last.max(newer.last),
        due: old.due.max(newer.due),
        attempts: old.attempts,
        closed_only: old.closed_only && newer.closed_only,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ChangeKind::*;

    /// What the dispatcher will transfer for a path after a sequence of events.
    fn outcome(events: &[(ChangeKind, bool)]) -> &'static str {
        let mut state = None;
        let mut only_closes = None;
        for &(kind, is_dir) in events {
            state = Some(next_state(state, kind, is_dir));
            only_closes = Some(closed_only(only_closes, kind));
        }
        match (name(state), only_closes) {
            ("update", Some(true)) => "update if changed",
            (n, _) => n,
        }
    }

    fn name(op: Option<Op>) -> &'static str {
        match op {
            None => "nothing",
            Some(Op::Delete) => "delete",
            Some(Op::Update) => "update",
            Some(Op::Tree) => "tree",
            Some(Op::Shallow) => "shallow",
        }
    }

    type Case = (&'static str, &'static [(ChangeKind, bool)], &'static str);

    #[test]
    fn coalescing_rules() {
        const F: bool = false;
        const D: bool = true;
        #[rustfmt::skip]
        let table: &[Case] = &[
            ("many writes become one transfer", &[(Created, F), (Modified, F), (Modified, F), (Modified, F)], "update"),
            ("rewrite of an existing file", &[(Modified, F), (Modified, F)], "update"),
            ("create then delete sends the deletion (an ancestor's transfer may have copied it)", &[(Created, F), (Modified, F), (Removed, F)], "delete"),
            ("delete then create replaces", &[(Removed, F), (Created, F)], "update"),
            ("modify then delete deletes", &[(Modified, F), (Removed, F)], "delete"),
            ("rename over an existing file, then delete", &[(MovedIn, F), (Removed, F)], "delete"),
            ("created, deleted, created again", &[(Created, F), (Removed, F), (Created, F)], "update"),
            ("mkdir", &[(Created, D)], "update"),
            ("mkdir then rmdir still deletes (children may have gone out)", &[(Created, D), (Removed, D)], "delete"),
            ("directory deleted and recreated", &[(Removed, D), (Created, D)], "tree"),
            ("directory renamed in", &[(MovedIn, D)], "tree"),
            ("directory renamed away", &[(Modified, D), (Removed, D)], "delete"),
            ("swap chain: a->tmp, b->a", &[(Removed, D), (MovedIn, D)], "tree"),
            ("rescan wins over updates", &[(Modified, F), (Rescan, D)], "tree"),
            ("tree then removed deletes", &[(MovedIn, D), (Removed, D)], "delete"),
            ("tree absorbs later updates", &[(MovedIn, D), (Modified, D)], "tree"),
            ("attribute change of a directory", &[(Modified, D)], "update"),
            ("a close alone (an NFS server's late one): sent only if the file changed", &[(Closed, F)], "update if changed"),
            ("closes alone", &[(Closed, F), (Closed, F)], "update if changed"),
            ("writes then their close", &[(Modified, F), (Closed, F)], "update"),
            ("a close then a write", &[(Closed, F), (Modified, F)], "update"),
            ("created then closed", &[(Created, F), (Closed, F)], "update"),
            ("removed, then a close of the name made again", &[(Removed, F), (Closed, F)], "update"),
            ("a close then removed", &[(Closed, F), (Removed, F)], "delete"),
        ];
        for (name, events, want) in table {
            assert_eq!(outcome(events), *want, "{name}");
        }
    }

    #[test]
    fn retry_rules() {
        let t0 = Instant::now();
        let p = |op: Op, is_dir: bool| Pending {
            op,
            is_dir,
            first: t0,
            last: t0,
            due: t0,
            attempts: 1,
            closed_only: false,
        };
        const F: bool = false;
        const D: bool = true;
        // (what failed, what came meanwhile, then one more event) -> what is transferred.
        type Retry = (
            &'static str,
            Pending,
            Option<Pending>,
            Option<(ChangeKind, bool)>,
            &'static str,
        );
        #[rustfmt::skip]
        let table: &[Retry] = &[
            ("a failed file comes back as it was", p(Op::Update, F), None, None, "update"),
            ("a created file whose (partial) transfer failed, then removed: the removal is sent",
             p(Op::Update, F), None, Some((Removed, F)), "delete"),
            ("the same with the removal arriving during the failed transfer",
             p(Op::Update, F), Some(p(Op::Delete, F)), None, "delete"),
            ("a failed deletion under a re-creation of the directory", p(Op::Delete, D), Some(p(Op::Update, D)), None, "tree"),
            ("a failed subtree absorbs newer updates", p(Op::Tree, D), Some(p(Op::Update, D)), None, "tree"),
            ("a failed shallow pass absorbs updates", p(Op::Shallow, D), Some(p(Op::Update, D)), None, "shallow"),
            ("newer events win otherwise", p(Op::Update, F), Some(p(Op::Delete, F)), None, "delete"),
        ];
        for (what, failed, newer, then, want) in table {
            let m = merge_retry(failed, newer.clone());
            let op = match then {
                Some((kind, is_dir)) => next_state(Some(m.op), *kind, *is_dir),
                None => m.op,
            };
            assert_eq!(name(Some(op)), *want, "{what}");
        }
    }
}
