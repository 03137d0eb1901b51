//! The dispatcher's side of a pass (the start-up pass, a rescan): starting one, handing out
//! its pieces as shallow batches, ending it once every piece is on the target.

use std::path::PathBuf;
use std::time::Instant;

use tracing::{error, info, warn};

use super::super::passes::{entries_of, PassState};
use super::super::{Batch, Origin};
use super::Dispatcher;
use crate::queue::pass::Piece;
use crate::queue::Op;
use crate::target::BatchKind;

impl Dispatcher {
    /// The next piece of the pass (a due retry first), as a shallow batch.
    pub(super) fn next_pass_batch(&mut self, now: Instant) -> Option<Batch> {
        let p = self.pass.as_mut()?;
        let (level, piece) = p.take(now)?;
        let origin = Origin::Pass {
            gen: p.gen,
            level,
            no: piece.no,
        };
        let entries = entries_of(piece, level, now);
        Some(self.launch(BatchKind::Shallow, origin, entries, now))
    }

    pub(super) fn current_pass(&mut self, gen: u64) -> Option<&mut PassState> {
        self.pass.as_mut().filter(|p| p.gen == gen)
    }

    /// Starts a pass over `rel` (replacing one under way: its pieces in flight finish, the rest
    /// is walked again), resumed `after` a path that a pass cut short had covered. A pass
    /// that starts over forgets what an older one covered: the older one's guarantee (every
    /// change since was seen) is what the rescan says no longer holds.
    pub fn start_pass(
        &mut self,
        rel: PathBuf,
        initial: bool,
        after: Option<PathBuf>,
        now: Instant,
    ) {
        self.pass_gen += 1;
        match (&after, &self.state) {
            (Some(a), _) => {
                info!(target = %self.target, after = %a.display(), "the start-up pass resumes where the previous syncer's ended: after this directory (the walk ahead finds what changed before it since)");
            }
            (None, Some(s)) => s.set_pass_covered(None),
            (None, None) => {}
        }
        self.stats.pass_began(if rel.as_os_str().is_empty() {
            crate::transfer::passes::entries_estimate(&self.source).unwrap_or(0)
        } else {
            0
        });
        let p = PassState::start(
            self.source.clone(),
            rel.clone(),
            self.piece_size,
            self.pass_gen,
            initial,
            after,
            now,
        );
        match p {
            Ok(p) => self.pass = Some(p),
            Err(e) => {
                // Without a walker thread, one subtree transfer of the whole tree does it.
                error!(target = %self.target, "cannot start the tree walk ({e}); comparing the tree in one transfer");
                self.pass = None;
                self.map.schedule(&rel, Op::Tree, now);
                self.check_pass_done(now);
            }
        }
    }

    pub fn wants_piece(&self) -> bool {
        self.pass.as_ref().is_some_and(PassState::wants_piece)
    }

    /// Records how far the pass's order is on the target, when that moved: a start after a
    /// crash resumes the pass there.
    pub(super) fn note_covered(&mut self) {
        let Some(p) = self.pass.as_mut().filter(|_| self.watched) else {
            return;
        };
        if let (Some(upto), Some(s)) = (p.take_covered(Instant::now()), &self.state) {
            s.set_pass_covered(Some(&upto));
            // Tests cut a pass short here (`FAILPOINTS=pass-covered=...->panic`).
            fail::fail_point!("pass-covered");
        }
    }

    pub fn piece_arrived(&mut self, piece: Option<Piece>, now: Instant) {
        if let Some(p) = self.pass.as_mut() {
            p.arrived(piece);
            self.check_pass_done(now);
        }
    }

    /// Ends the pass once it is walked and every piece is on the target.
    pub fn check_pass_done(&mut self, now: Instant) {
        if !self.pass.as_ref().is_none_or(PassState::is_done) {
            return;
        }
        if let Some(p) = self.pass.take() {
            info!(
                target = %self.target,
                ms = now.duration_since(p.started).as_millis() as u64,
                dirs = p.dirs_done,
                failed_dirs = p.failed_dirs,
                "{}", if p.initial { "start-up pass done" } else { "rescan done" }
            );
            if let Some(s) = &self.state {
                // Every directory went through a successful piece: the index is whole.
                s.set_complete(true);
            }
            if !p.initial {
                return;
            }
        }
        if let Some(tx) = self.initial_done.take() {
            let _ = tx.send(());
        }
    }

    /// Shutdown while a pass is under way: its pieces in flight finish, the rest is left to the
    /// next start.
    pub fn abandon_pass(&mut self) {
        self.passes_allowed = false;
        if let Some(p) = self.pass.take() {
            warn!(target = %self.target, dirs_done = p.dirs_done, dirs_walked = ?p.walked(),
                  "shutdown during the {}: the rest is compared at the next start",
                  if p.initial { "start-up pass" } else { "rescan" });
        }
    }
}
