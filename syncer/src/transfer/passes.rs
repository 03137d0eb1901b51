//! The transfer side of a pass (the start-up pass, or a rescan of the whole tree): the walk
//! handing out pieces, the piece read ahead, failed pieces waiting for their retry, what is in
//! flight, and when it is all done. The dispatcher asks it for the next piece and tells it how
//! each piece went.

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
    pub started: Instant,
    pub dirs_done: u64,
    /// Directories handed to the map after failing alone.
    pub failed_dirs: u64,
}

impl PassState {
    /// A pass over `rel` below `source`; `Err` when the walker thread cannot start.
    pub fn start(
        source: PathBuf,
        rel: PathBuf,
        size: PieceSize,
        gen: u64,
        initial: bool,
        now: Instant,
    ) -> std::io::Result<PassState> {
        Ok(PassState {
            gen,
            initial,
            walk: Some(Walk::start(source, rel, size)?),
            next: None,
            retry: VecDeque::new(),
            inflight: 0,
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
            Some(p) => self.next = Some(p),
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

    /// A piece of `dirs` directories is on the target.
    pub fn landed(&mut self, dirs: usize) {
        self.inflight -= 1;
        self.dirs_done += dirs as u64;
    }

    /// The target was down: the same piece again, first, once it is back.
    pub fn down(&mut self, level: u32, piece: Piece, now: Instant) {
        self.inflight -= 1;
        self.retry.push_front((now, level, piece));
    }

    /// The piece failed in part: it goes again at `due`, cut in eight, at `level`. A directory
    /// failing alone is returned, to be handed to the map (which retries it like any change).
    pub fn failed(&mut self, piece: Piece, level: u32, due: Instant) -> Option<PathBuf> {
        self.inflight -= 1;
        if piece.dirs.len() == 1 {
            self.failed_dirs += 1;
            return piece.dirs.into_iter().next();
        }
        let part = retry_piece(piece.dirs.len());
        for chunk in piece.dirs.chunks(part) {
            self.retry.push_back((
                due,
                level,
                Piece {
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

/// The directories of a batch of pass entries, as a piece again.
pub fn piece_of(entries: &[Taken]) -> Piece {
    Piece {
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
