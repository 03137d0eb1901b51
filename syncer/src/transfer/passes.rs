//! The transfer side of a pass (the start-up pass, or a rescan of the whole tree): the walk
//! handing out pieces, the piece read ahead, failed pieces waiting for their retry, what is in
//! flight, how far the walk's order is on the target, and when it is all done. The dispatcher
//! asks it for the next piece and tells it how each piece went.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::batch::retry_piece;
use crate::queue::pass::{Piece, PieceSize, Walk};
use std::sync::Arc;

use crate::queue::{Op, Pending, Taken};

pub struct PassState {
    /// Which pass this is: pieces of an older one that come back are not counted.
    pub gen: u64,
    /// The start-up pass (its end is "initial sync finished"), or a rescan.
    pub initial: bool,
    /// `None` once the walk has handed out its last piece.
    walk: Option<Walk>,
    next: Option<Piece>,
    /// Failed pieces: when they may go again, their retry level.
    retry: VecDeque<(Instant, u32, Piece)>,
    inflight: usize,
    /// Pieces handed out and not yet wholly on the target or before one that is not, in walk
    /// order: number, parts still out (a failed piece is retried in parts), last directory.
    out: VecDeque<(u64, usize, PathBuf)>,
    /// Every directory up to this path (the walk's order) is on the target; `covered_new`
    /// once it moved since [`PassState::take_covered`].
    covered: Option<PathBuf>,
    covered_new: bool,
    pub started: Instant,
    pub dirs_done: u64,
    /// Directories handed to the map after failing alone.
    pub failed_dirs: u64,
}

impl PassState {
    /// A pass over `rel` below `source`, resumed after `after` (a pass cut short had every
    /// directory up to it on the target); `Err` when the walker thread cannot start.
    pub fn start(
        source: PathBuf,
        rel: PathBuf,
        size: PieceSize,
        gen: u64,
        initial: bool,
        after: Option<PathBuf>,
        now: Instant,
    ) -> std::io::Result<PassState> {
        Ok(PassState {
            gen,
            initial,
            walk: Some(Walk::start(source, rel, size, after.clone())?),
            next: None,
            retry: VecDeque::new(),
            inflight: 0,
            out: VecDeque::new(),
            covered: after,
            covered_new: false,
            started: now,
            dirs_done: 0,
            failed_dirs: 0,
        })
    }

    /// Whether the walk should be asked for a piece (none read ahead).
    pub fn wants_piece(&self) -> bool {
        self.walk.is_some() && self.next.is_none()
    }

    /// The walk's next piece, for the dispatcher's select (pending forever once walked).
    pub async fn next_from_walk(&mut self) -> Option<Piece> {
        match self.walk.as_mut() {
            Some(w) => w.next().await,
            None => std::future::pending().await,
        }
    }

    /// What the walk gave: a piece, or `None` once it is complete.
    pub fn arrived(&mut self, piece: Option<Piece>) {
        match piece {
            Some(p) => {
                let last = p.dirs.last().cloned().unwrap_or_default();
                self.out.push_back((p.no, 1, last));
                self.next = Some(p);
            }
            None => self.walk = None,
        }
    }

    /// Whether no piece is in flight (the pass's turn for a shard).
    pub fn idle(&self) -> bool {
        self.inflight == 0
    }

    /// The next piece to send (a due retry first) and its retry level.
    pub fn take(&mut self, now: Instant) -> Option<(u32, Piece)> {
        let taken = if self.retry.front().is_some_and(|(due, _, _)| *due <= now) {
            self.retry.pop_front().map(|(_, level, p)| (level, p))
        } else {
            self.next.take().map(|p| (0, p))
        };
        if taken.is_some() {
            self.inflight += 1;
        }
        taken
    }

    /// When the earliest failed piece may go again.
    pub fn next_retry(&self) -> Option<Instant> {
        self.retry.front().map(|(due, _, _)| *due)
    }

    /// A piece (or part of piece `no`) of `dirs` directories is on the target.
    pub fn landed(&mut self, no: u64, dirs: usize) {
        self.inflight -= 1;
        self.dirs_done += dirs as u64;
        self.part_done(no);
    }

    /// One part of piece `no` is done with; the covered prefix grows over pieces wholly done.
    fn part_done(&mut self, no: u64) {
        let Some(first) = self.out.front().map(|o| o.0) else {
            return;
        };
        if let Some(o) = no
            .checked_sub(first)
            .and_then(|i| self.out.get_mut(i as usize))
        {
            o.1 = o.1.saturating_sub(1);
        }
        while self.out.front().is_some_and(|o| o.1 == 0) {
            let (_, _, last) = self.out.pop_front().expect("a front");
            self.covered = Some(last);
            self.covered_new = true;
        }
    }

    /// How far the walk's order is on the target, when that moved since last asked.
    pub fn take_covered(&mut self) -> Option<PathBuf> {
        std::mem::take(&mut self.covered_new)
            .then(|| self.covered.clone())
            .flatten()
    }

    /// The target was down: the same piece again, first, once it is back.
    pub fn down(&mut self, level: u32, piece: Piece, now: Instant) {
        self.inflight -= 1;
        self.retry.push_front((now, level, piece));
    }

    /// The piece failed in part: it goes again at `due`, cut in eight, at `level`. A directory
    /// failing alone is returned, to be handed to the map (which retries it like any change).
    /// (The map keeps a directory it was handed, durably: for the pass, it is done with.)
    pub fn failed(&mut self, piece: Piece, level: u32, due: Instant) -> Option<PathBuf> {
        self.inflight -= 1;
        if piece.dirs.len() == 1 {
            self.failed_dirs += 1;
            self.part_done(piece.no);
            return piece.dirs.into_iter().next();
        }
        let part = retry_piece(piece.dirs.len());
        let chunks = piece.dirs.chunks(part);
        if let Some(o) = self.out.iter_mut().find(|o| o.0 == piece.no) {
            o.1 += chunks.len() - 1;
        }
        for chunk in chunks {
            self.retry.push_back((
                due,
                level,
                Piece {
                    no: piece.no,
                    dirs: chunk.to_vec(),
                    entries: 0,
                },
            ));
        }
        None
    }

    /// Walked, and every piece on the target.
    pub fn is_done(&self) -> bool {
        self.walk.is_none() && self.next.is_none() && self.retry.is_empty() && self.inflight == 0
    }

    /// Directories the walk has read so far (when still walking).
    pub fn walked(&self) -> Option<u64> {
        self.walk
            .as_ref()
            .map(|w| w.stats.dirs.load(Ordering::Relaxed))
    }
}

/// The directories of a batch of pass entries (of piece `no`), as a piece again.
pub fn piece_of(no: u64, entries: &[Taken]) -> Piece {
    Piece {
        no,
        dirs: entries.iter().map(|t| t.path.to_path_buf()).collect(),
        entries: 0,
    }
}

/// A piece's directories as entries of a shallow batch at retry `level`. They carry no event
/// (first = last = now), so the guard never makes them wait.
pub fn entries_of(piece: Piece, level: u32, now: Instant) -> Vec<Taken> {
    piece
        .dirs
        .into_iter()
        .map(|dir| Taken {
            path: Arc::from(dir.as_path()),
            pending: Pending {
                op: Op::Shallow,
                is_dir: true,
                first: now,
                last: now,
                due: now,
                attempts: level,
            },
        })
        .collect()
}
