//! Event sources: each arms one kernel interface on the source tree and turns what it reads
//! into [`Change`]s for the sink. A source knows nothing of targets or rsync.
//!
//! A source implements [`Source`] (a descriptor to poll, a non-blocking read); one reader loop
//! ([`reader`]) drives every kind on its own thread, so kernel reads never wait on the async
//! runtime. [`policy`] decides which kind `auto` opens (and `syncer check` asks the same
//! policy). A source that loses events (queue overflow, unresolvable records) sends a
//! [`ChangeKind::Rescan`] instead of dropping anything silently.
//!
//! [`ChangeKind::Rescan`]: crate::change::ChangeKind::Rescan

pub mod ebpf;
pub mod fanotify;
pub mod inotify;
pub mod policy;
mod reader;
pub mod servers;

use std::os::fd::BorrowedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use serde::Deserialize;
use tokio::sync::oneshot;

use crate::change::{Change, ChangeSink, ReadMarks, WatchClock};
use crate::shutdown::Shutdown;

/// Which kernel event source feeds the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// The best source this kernel and these privileges allow (see [`policy`]).
    Auto,
    Fanotify,
    Ebpf,
    Inotify,
}

impl std::str::FromStr for SourceKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(SourceKind::Auto),
            "fanotify" => Ok(SourceKind::Fanotify),
            "ebpf" => Ok(SourceKind::Ebpf),
            "inotify" => Ok(SourceKind::Inotify),
            other => Err(format!(
                "unknown source kind {other:?} (expected auto, fanotify, ebpf or inotify)"
            )),
        }
    }
}

/// Size policy of the fanotify kernel queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueMode {
    /// `FAN_UNLIMITED_QUEUE`: the kernel never drops events (the default; see ARCHITECTURE.md).
    Unlimited,
    /// The kernel's default bounded queue (16384 events): overflow leads to a rescan.
    Bounded,
}

/// Which kernel hooks the eBPF source attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EbpfHooks {
    /// The VFS-level hooks where the kernel allows fentry programs, else syscall tracepoints
    /// (the default).
    Auto,
    /// Only the VFS-level hooks; fail if the kernel refuses them.
    Fsnotify,
    /// Only syscall tracepoints, even where fentry would load.
    Tracepoints,
}

impl std::str::FromStr for EbpfHooks {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(EbpfHooks::Auto),
            "fsnotify" => Ok(EbpfHooks::Fsnotify),
            "tracepoints" => Ok(EbpfHooks::Tracepoints),
            other => Err(format!(
                "unknown eBPF hooks {other:?} (expected auto, fsnotify or tracepoints)"
            )),
        }
    }
}

/// Why a source could not start, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{kind} needs {what}: {source}. Run syncer as root, or use --source-kind inotify for unprivileged watching")]
    NotPermitted {
        kind: &'static str,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("{kind} is not available here: {why}")]
    Unsupported { kind: &'static str, why: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

/// Counters shared by a source and the daemon.
#[derive(Debug, Default)]
pub struct SourceStats {
    /// Kernel records read.
    pub events: AtomicU64,
    /// Overflows and other losses that caused a rescan.
    pub rescans: AtomicU64,
    /// Records dropped because their directory no longer exists (a later removal covers them).
    pub stale: AtomicU64,
    /// Records the kernel could not deliver (eBPF ring buffer full, unreadable names); each
    /// batch of losses caused a rescan.
    pub lost: AtomicU64,
    /// The reader loop's turns (at least one per poll timeout while it runs).
    pub alive: crate::alive::Ticker,
    /// Changes handed on, by [`crate::change::ChangeKind`] (see [`CHANGE_KINDS`]).
    pub changes: [AtomicU64; CHANGE_KINDS.len()],
}

/// The kinds of change counted in [`SourceStats::changes`], as metrics name them.
pub const CHANGE_KINDS: [(crate::change::ChangeKind, &str); 5] = {
    use crate::change::ChangeKind::*;
    [
        (Created, "created"),
        (Modified, "modified"),
        (Removed, "removed"),
        (MovedIn, "moved_in"),
        (Rescan, "rescan"),
    ]
};

impl SourceStats {
    /// Counts `changes` by kind.
    pub fn count_changes(&self, changes: &[Change]) {
        let mut n = [0u64; CHANGE_KINDS.len()];
        for c in changes {
            if let Some(i) = CHANGE_KINDS.iter().position(|(k, _)| *k == c.kind) {
                n[i] += 1;
            }
        }
        for (counter, n) in self.changes.iter().zip(n) {
            if n > 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        }
    }
}

/// What a started source needs.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    pub root: PathBuf,
    pub queue: QueueMode,
    pub ebpf_hooks: EbpfHooks,
    pub ebpf_ring_bytes: u32,
    /// Set by the reader whenever it finds the kernel's queue empty (see
    /// [`crate::state::State::open_following`]).
    pub caught_up: Arc<WatchClock>,
}

/// A kernel interface armed on the source tree (mark, watches or programs in place), driven by
/// the reader loop.
pub trait Source: Send {
    /// The descriptor that turns readable when records wait.
    fn fd(&self) -> BorrowedFd<'_>;

    /// Reads what is ready without blocking (one buffer's worth at most) and appends the
    /// changes to `out`. Called after every poll, a timeout included, so that losses the
    /// kernel only counts are noticed too. An error means records may be lost: the loop
    /// rescans.
    fn read(&mut self, out: &mut Vec<Change>) -> std::io::Result<()>;

    /// [`Source::read`], giving `marks` the raw records before turning them into changes
    /// (sources whose records a successor can replay; the others just read).
    fn read_keeping(
        &mut self,
        out: &mut Vec<Change>,
        marks: &dyn ReadMarks,
    ) -> std::io::Result<()> {
        let _ = marks;
        self.read(out)
    }

    /// Turns raw records a predecessor kept ([`ReadMarks::unjournaled`]) into changes.
    fn replay(&mut self, raw: &[u8], out: &mut Vec<Change>) {
        let _ = (raw, out);
    }

    /// Whether the source sees what in-kernel writers (nfsd, ksmbd) do; only the eBPF
    /// syscall tracepoints do not (see [`servers`]).
    fn sees_in_kernel_writers(&self) -> bool {
        true
    }

    /// A kernel queue that outlives this process when someone keeps its descriptor (a
    /// fanotify group: its marks stay and events queue while no syncer reads), and whether it
    /// was handed over by a predecessor. `None`: the source dies with the process.
    fn kept_queue(&self) -> Option<(BorrowedFd<'_>, bool)> {
        None
    }
}

/// How a source's thread ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceExit {
    /// Asked to stop.
    Stopped,
    /// The thread died on its own: why (a panic's message).
    Died(String),
}

/// A running source: its thread, what it is, its counters.
pub struct SourceHandle {
    /// The kind that was opened (never `Auto`) and its hooks, for logs.
    pub picked: policy::Candidate,
    thread: Option<JoinHandle<SourceExit>>,
    exited: oneshot::Receiver<()>,
    shutdown: Shutdown,
    pub stats: Arc<SourceStats>,
}

impl SourceHandle {
    /// Resolves when the source's thread has ended (on its own, or after [`SourceHandle::stop`]).
    pub async fn exited(&mut self) {
        let _ = (&mut self.exited).await;
    }

    /// Stops the source (if still running) and waits for its thread.
    pub fn stop(mut self) -> SourceExit {
        self.shutdown.trigger();
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(exit)) => exit,
            Some(Err(_)) | None => SourceExit::Died("the reader thread was lost".into()),
        }
    }
}

/// A source armed on the kernel, its reader not started: events queue in the kernel from
/// the moment it is open, so a start can arm it first and open the state meanwhile.
pub struct Opened {
    picked: policy::Candidate,
    source: Box<dyn Source>,
    stats: Arc<SourceStats>,
    caught_up: Arc<WatchClock>,
}

/// Opens the source of `kind` (resolving `auto` through [`policy`]) on `cfg.root`; `kept`: a
/// fanotify group a predecessor left in the service manager's fd store (taken up when the
/// source is fanotify; `auto` then prefers fanotify, whose group holds what queued meanwhile).
pub fn open(
    kind: SourceKind,
    cfg: &SourceConfig,
    kept: Option<std::os::fd::OwnedFd>,
) -> Result<Opened, SourceError> {
    let stats = Arc::new(SourceStats::default());
    let (picked, source) = policy::open(kind, cfg, &stats, kept)?;
    Ok(Opened {
        picked,
        source,
        stats,
        caught_up: cfg.caught_up.clone(),
    })
}

impl Opened {
    /// See [`Source::kept_queue`].
    pub fn kept_queue(&self) -> Option<(BorrowedFd<'_>, bool)> {
        self.source.kept_queue()
    }

    /// Starts the reader thread, which delivers to `sink` (what queued since the open first)
    /// until `shutdown` (or a child of it) fires, leaving `marks` of how far it read.
    pub fn start(
        self,
        sink: Arc<dyn ChangeSink>,
        shutdown: &Shutdown,
        marks: Option<Arc<dyn ReadMarks>>,
    ) -> Result<SourceHandle, SourceError> {
        let Opened {
            picked,
            source,
            stats,
            caught_up,
        } = self;
        let shutdown = shutdown.child();
        let (tx, exited) = oneshot::channel();
        let thread = {
            let (shutdown, stats) = (shutdown.clone(), stats.clone());
            std::thread::Builder::new()
                .name(picked.thread_name().into())
                .spawn(move || {
                    let exit = reader::run(
                        source,
                        sink,
                        &shutdown,
                        &stats,
                        &caught_up,
                        marks.as_deref(),
                    );
                    let _ = tx.send(());
                    exit
                })
                .map_err(|e| SourceError::Io {
                    what: format!("spawn the {} thread", picked.thread_name()),
                    source: e,
                })?
        };
        Ok(SourceHandle {
            picked,
            thread: Some(thread),
            exited,
            shutdown,
            stats,
        })
    }
}

/// [`open`] (a new kernel queue) and [`Opened::start`] at once.
pub fn start(
    kind: SourceKind,
    cfg: &SourceConfig,
    sink: Arc<dyn ChangeSink>,
    shutdown: &Shutdown,
) -> Result<SourceHandle, SourceError> {
    open(kind, cfg, None)?.start(sink, shutdown, None)
}
