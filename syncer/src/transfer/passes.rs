//! The transfer side of a pass (the start-up pass, or a rescan of the whole tree): the walk
//! handing out pieces, the piece read ahead, failed pieces waiting for their retry, what is in
//! flight, how far the walk's order is on the target, and when it is all done. The dispatcher
//! asks it for the next piece and tells it how each piece went.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

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
    /// How far the walk's order is on the target.
    covered: Covered,
    /// When that was last taken ([`PassState::take_covered`]).
    covered_taken: Option<Instant>,
    pub started: Instant,
    pub dirs_done: u64,
    /// Directories handed to the map after failing alone.
    pub failed_dirs: u64,
}

/// The least time between two records of how far a pass got (each makes the state's writer
/// sync the journal first).
pub const COVERED_EVERY: Duration = Duration::from_millis(250);

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
            walk: Some(Walk::start(source, rel, size, after)?),
            next: None,
            retry: VecDeque::new(),
            inflight: 0,
            covered: Covered::default(),
            covered_taken: None,
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
                self.covered.handed(&p);
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
        self.covered.part_done(no);
    }

    /// How far the walk's order is on the target, when that moved since it was last taken,
    /// at most once per [`COVERED_EVERY`] (the point is a barrier for the state's writer,
    /// which syncs the journal before it: a restart resumes at most that much earlier).
    pub fn take_covered(&mut self, now: Instant) -> Option<PathBuf> {
        if self
            .covered_taken
            .is_some_and(|t| now.saturating_duration_since(t) < COVERED_EVERY)
        {
            return None;
        }
        let moved = self.covered.moved.take();
        if moved.is_some() {
            self.covered_taken = Some(now);
        }
        moved
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
            self.covered.part_done(piece.no);
            return piece.dirs.into_iter().next();
        }
        let part = retry_piece(piece.dirs.len());
        let chunks = piece.dirs.chunks(part);
        self.covered.split(piece.no, chunks.len());
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

/// About how many entries a pass over the whole of `source` meets, when that can be told
/// cheaply: the inodes in use on its filesystem, when `source` is that filesystem's root
/// (a directory below it shares the count with its neighbours: `None`).
pub fn entries_estimate(source: &std::path::Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let here = std::fs::metadata(source).ok()?;
    let parent = std::fs::metadata(source.join("..")).ok()?;
    let root = here.dev() != parent.dev() || here.ino() == parent.ino();
    if !root {
        return None;
    }
    let st = nix::sys::statvfs::statvfs(source).ok()?;
    let used = st.files().saturating_sub(st.files_free());
    (used > 0).then_some(used)
}

/// The completed prefix of a pass's pieces, in walk order: each piece handed out counts its
/// parts still out (a failed piece is retried in parts); once the pieces at the front are all
/// done, every directory up to the last of them is on the target.
#[derive(Default)]
struct Covered {
    /// Pieces not yet wholly done, or after one that is not: number, parts out, last directory.
    out: VecDeque<(u64, usize, PathBuf)>,
    /// The prefix's new end, once it moved (taken by [`PassState::take_covered`]).
    moved: Option<PathBuf>,
}

impl Covered {
    /// Piece `p` was handed out (pieces come in walk order, numbered 0, 1, ...).
    fn handed(&mut self, p: &Piece) {
        let last = p.dirs.last().cloned().unwrap_or_default();
        self.out.push_back((p.no, 1, last));
    }

    fn slot(&mut self, no: u64) -> Option<&mut (u64, usize, PathBuf)> {
        let first = self.out.front()?.0;
        self.out
            .get_mut(usize::try_from(no.checked_sub(first)?).ok()?)
    }

    /// Piece `no` is retried as `parts` parts.
    fn split(&mut self, no: u64, parts: usize) {
        if let Some(o) = self.slot(no) {
            o.1 += parts.saturating_sub(1);
        }
    }

    /// One part of piece `no` is done with.
    fn part_done(&mut self, no: u64) {
        if let Some(o) = self.slot(no) {
            o.1 = o.1.saturating_sub(1);
        }
        while self.out.front().is_some_and(|o| o.1 == 0) {
            self.moved = self.out.pop_front().map(|o| o.2);
        }
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
                closed_only: false,
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_covered_point_is_taken_at_most_once_per_interval() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // (ms after t0, the prefix moved just before) -> taken
        #[rustfmt::skip]
        let steps: &[(u64, bool, bool)] = &[
            (0, true, true),
            (100, true, false),   // too soon: kept for later
            (200, false, false),
            (250, false, true),   // what moved at 100 ms
            (300, false, false),  // nothing moved since
            (400, true, false),
            (2000, false, true),
        ];
        let mut p = PassState::start(
            PathBuf::from("/nonexistent-syncer-test"),
            PathBuf::new(),
            PieceSize {
                entries: 1,
                dirs: 1,
            },
            0,
            true,
            None,
            t0,
        )
        .unwrap();
        for (i, &(at, moved, want)) in steps.iter().enumerate() {
            if moved {
                p.covered.moved = Some(PathBuf::from(format!("d{i}")));
            }
            assert_eq!(p.take_covered(t0 + ms(at)).is_some(), want, "at {at} ms");
        }
    }

    #[test]
    fn the_covered_prefix_grows_over_pieces_wholly_done() {
        // Steps: hand out piece n (its last directory "dN"), split n into k parts, one part of
        // n done; then the prefix's new end, if it moved.
        enum Step {
            Hand(u64),
            Split(u64, usize),
            Done(u64),
        }
        use Step::*;
        // why, steps, the prefix's new end after each
        type Row<'a> = (&'a str, &'a [Step], &'a [Option<&'a str>]);
        #[rustfmt::skip]
        let table: &[Row] = &[
            ("in order", &[Hand(0), Hand(1), Done(0), Done(1)], &[None, None, Some("d0"), Some("d1")]),
            ("out of order: waits for the first", &[Hand(0), Hand(1), Hand(2), Done(1), Done(2), Done(0)],
                &[None, None, None, None, None, Some("d2")]),
            ("a split piece needs every part", &[Hand(0), Split(0, 3), Done(0), Done(0), Done(0)],
                &[None, None, None, None, Some("d0")]),
            ("a piece handed to the map alone counts done", &[Hand(0), Hand(1), Done(1), Done(0)],
                &[None, None, None, Some("d1")]),
            ("an unknown or repeated piece changes nothing", &[Hand(3), Done(1), Done(3), Done(3)],
                &[None, None, Some("d3"), None]),
        ];
        for (why, steps, want) in table {
            let mut c = Covered::default();
            let got: Vec<Option<String>> = steps
                .iter()
                .map(|s| {
                    match *s {
                        Hand(n) => c.handed(&Piece {
                            no: n,
                            dirs: vec![PathBuf::from(format!("d{n}"))],
                            entries: 0,
                        }),
                        Split(n, k) => c.split(n, k),
                        Done(n) => c.part_done(n),
                    }
                    c.moved.take().map(|p| p.display().to_string())
                })
                .collect();
            let want: Vec<Option<String>> = want.iter().map(|w| w.map(String::from)).collect();
            assert_eq!(got, want, "{why}");
        }
    }
}
