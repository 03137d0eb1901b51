//! Event sources: each watches the source tree through one kernel interface and turns what it
//! reads into [`Change`]s for the sink. A source knows nothing of targets or rsync.
//!
//! Every source runs on its own thread (kernel reads are blocking and the hot path must not wait
//! on the async runtime) and stops when its stop flag is raised. A source that loses events
//! (queue overflow, unresolvable records) sends a [`ChangeKind::Rescan`] for the affected subtree
//! instead of dropping anything silently.
//!
//! [`ChangeKind::Rescan`]: crate::change::ChangeKind::Rescan

pub mod ebpf;
pub mod fanotify;
pub mod inotify;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use tracing::info;

use crate::change::Change;
use crate::config::{EbpfHooks, QueueMode, SourceKind};
use crate::dedup::DedupMap;

/// Why a source could not start.
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

/// Where sources deliver changes: every target's dedup map.
#[derive(Clone)]
pub struct Sink {
    maps: Arc<Vec<Arc<DedupMap>>>,
}

impl Sink {
    pub fn new(maps: Vec<Arc<DedupMap>>) -> Sink {
        Sink {
            maps: Arc::new(maps),
        }
    }

    pub fn push(&self, changes: &[Change]) {
        if changes.is_empty() {
            return;
        }
        let now = Instant::now();
        for m in self.maps.iter() {
            m.insert_all(changes, now);
        }
    }
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
}

/// What a started source needs.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    pub root: PathBuf,
    pub queue: QueueMode,
    pub ebpf_hooks: EbpfHooks,
    pub ebpf_ring_bytes: u32,
}

/// A running source; dropping it without [`SourceHandle::stop`] leaves the thread running
/// until the process ends.
pub struct SourceHandle {
    pub kind: SourceKind,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub stats: Arc<SourceStats>,
}

impl SourceHandle {
    /// Asks the source thread to stop and waits for it.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the source of `kind` (resolving `auto`) on `cfg.root`.
pub fn start(
    kind: SourceKind,
    cfg: &SourceConfig,
    sink: Sink,
) -> Result<SourceHandle, SourceError> {
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(SourceStats::default());
    let (kind, thread) = match kind {
        SourceKind::Fanotify => (
            SourceKind::Fanotify,
            fanotify::start(cfg, sink, stop.clone(), stats.clone())?,
        ),
        SourceKind::Inotify => (
            SourceKind::Inotify,
            inotify::start(cfg, sink, stop.clone(), stats.clone())?,
        ),
        SourceKind::Ebpf => (
            SourceKind::Ebpf,
            ebpf::start(cfg, sink, stop.clone(), stats.clone())?,
        ),
        SourceKind::Auto => auto(cfg, sink, &stop, &stats)?,
    };
    Ok(SourceHandle {
        kind,
        stop,
        thread: Some(thread),
        stats,
    })
}

/// `auto`: the first source that starts, best first. The eBPF fsnotify hooks see what
/// fanotify sees and filter and coalesce in the kernel; fanotify needs no BPF; eBPF syscall
/// tracepoints miss in-kernel writers but need no file-handle support from the filesystem;
/// inotify needs a watch per directory.
fn auto(
    cfg: &SourceConfig,
    sink: Sink,
    stop: &Arc<AtomicBool>,
    stats: &Arc<SourceStats>,
) -> Result<(SourceKind, JoinHandle<()>), SourceError> {
    let with_hooks = |ebpf_hooks| SourceConfig {
        ebpf_hooks,
        ..cfg.clone()
    };
    let fsnotify_hooks = match cfg.ebpf_hooks {
        EbpfHooks::Auto => EbpfHooks::Fsnotify,
        h => h,
    };
    let mut why = Vec::new();
    if fsnotify_hooks == EbpfHooks::Fsnotify {
        match ebpf::start(
            &with_hooks(fsnotify_hooks),
            sink.clone(),
            stop.clone(),
            stats.clone(),
        ) {
            Ok(t) => return Ok((SourceKind::Ebpf, t)),
            Err(e) => why.push(format!("eBPF fsnotify hooks: {e}")),
        }
    }
    match fanotify::start(cfg, sink.clone(), stop.clone(), stats.clone()) {
        Ok(t) => return Ok((SourceKind::Fanotify, t)),
        Err(e) => why.push(format!("fanotify: {e}")),
    }
    if cfg.ebpf_hooks != EbpfHooks::Fsnotify {
        match ebpf::start(
            &with_hooks(EbpfHooks::Tracepoints),
            sink.clone(),
            stop.clone(),
            stats.clone(),
        ) {
            Ok(t) => return Ok((SourceKind::Ebpf, t)),
            Err(e) => why.push(format!("eBPF tracepoints: {e}")),
        }
    }
    info!("auto: falling back to inotify ({})", why.join("; "));
    Ok((
        SourceKind::Inotify,
        inotify::start(cfg, sink, stop.clone(), stats.clone())?,
    ))
}

/// Runs a source's reader loop on its own named thread.
fn spawn_reader(
    name: &str,
    f: impl FnOnce() + Send + 'static,
) -> Result<JoinHandle<()>, SourceError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|e| SourceError::Io {
            what: format!("spawn the {name} thread"),
            source: e,
        })
}

/// `abs` relative to `root`, if it lies in it (the root itself is the empty path).
pub fn relative_to(abs: &Path, root: &Path) -> Option<PathBuf> {
    abs.strip_prefix(root).ok().map(Path::to_path_buf)
}
