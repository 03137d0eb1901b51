//! The eBPF source: loads syncer's BPF program (`syncer-ebpf`, committed as `syncer.bpf.o` and
//! built by `cargo xtask build-ebpf`) with aya, attaches the best hooks this kernel allows and
//! turns ring-buffer records into [`Change`]s.
//!
//! Hooks, in order of preference (see ARCHITECTURE.md for what each sees):
//! 1. fentry on `fsnotify` and `__fsnotify_parent`: VFS level, after success, every writer
//!    including nfsd. Kernels skip fsnotify for filesystems without any fsnotify mark, so this
//!    mode also holds one inotify watch on the source root.
//! 2. Syscall tracepoints, where fentry is refused: only system calls of processes.
//!
//! Paths are walked in the kernel up to the filesystem root and placed here ([`record`]). A
//! full ring buffer, an unreadable name or a walk that did not reach the root counts as a loss
//! (the `LOST` counter, exposed as [`SourceStats::lost`]) and becomes a rescan.
//!
//! [`Change`]: crate::change::Change

pub mod btf;
mod load;
pub mod probe;
pub mod record;
pub mod syscalls;

use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use syncer_ebpf_abi::counter;
use tracing::{info, warn};

pub use self::load::{load, probe_hooks, Attached, Loaded};
use self::record::{Placed, Placement};
use super::{EbpfHooks, Source, SourceConfig, SourceError, SourceStats};
use crate::change::Change;
use crate::source::fanotify::changes_for;

/// Opens the eBPF source with `hooks` on the filesystem of `cfg.root`.
pub fn open_source(
    cfg: &SourceConfig,
    hooks: EbpfHooks,
    stats: Arc<SourceStats>,
) -> Result<Reader, SourceError> {
    let placement = Placement::find(&cfg.root).map_err(|e| SourceError::Io {
        what: format!("find the filesystem of {}", cfg.root.display()),
        source: e,
    })?;
    let loaded = load(&placement, hooks, cfg.ebpf_ring_bytes)?;
    // Parsing the kernel's BTF (twice: aya's and ours) and the object took tens of MiB of heap
    // that is free now; hand it back rather than idle on it.
    // SAFETY: malloc_trim has no preconditions.
    unsafe { libc::malloc_trim(0) };
    log_live(&cfg.root, hooks, &loaded.attached);
    Ok(Reader {
        loaded,
        placement,
        stats,
        out: Vec::with_capacity(1024),
        lost_seen: 0,
    })
}

fn log_live(root: &Path, hooks: EbpfHooks, attached: &Attached) {
    match attached {
        Attached::Fsnotify => info!(
            root = %root.display(),
            "event source live: eBPF fentry on fsnotify (VFS level: sees every writer, nfsd included)"
        ),
        Attached::Vfs(why) => {
            info!("eBPF: {why}; using fexit on the vfs_* functions instead");
            info!(
                root = %root.display(),
                "event source live: eBPF fexit on vfs_* (VFS level: sees every writer, nfsd included)"
            );
        }
        Attached::Tracepoints { calls, .. } if hooks == EbpfHooks::Tracepoints => info!(
            root = %root.display(),
            calls,
            "event source live: eBPF syscall tracepoints (chosen by ebpf_hooks; they do not see \
             in-kernel writers such as nfsd)"
        ),
        Attached::Tracepoints { calls, why } => {
            warn!(
                "eBPF: {why}; falling back to syscall tracepoints, which do not see in-kernel \
                 writers (nfsd, ksmbd), io_uring, or writes through shared mappings before close"
            );
            info!(
                root = %root.display(),
                calls,
                "event source live: eBPF syscall tracepoints"
            );
        }
    }
}

/// The loaded program and what turns its ring-buffer records into changes.
pub struct Reader {
    loaded: Loaded,
    placement: Placement,
    stats: Arc<SourceStats>,
    out: Vec<Change>,
    lost_seen: u64,
}

impl Source for Reader {
    fn fd(&self) -> BorrowedFd<'_> {
        self.loaded.events.as_fd()
    }

    fn sees_in_kernel_writers(&self) -> bool {
        !matches!(self.loaded.attached, Attached::Tracepoints { .. })
    }

    fn read(&mut self, out: &mut Vec<Change>) -> std::io::Result<()> {
        self.drain();
        self.check_lost();
        out.append(&mut self.out);
        Ok(())
    }
}

impl Reader {
    /// Reads every record in the ring.
    fn drain(&mut self) {
        let Loaded { events, dirty, .. } = &mut self.loaded;
        while let Some(item) = events.next() {
            self.stats.events.fetch_add(1, Ordering::Relaxed);
            let rec = match record::decode(&item) {
                Ok(r) => r,
                Err(e) => {
                    warn!("{e}; rescanning the whole tree");
                    self.stats.rescans.fetch_add(1, Ordering::Relaxed);
                    self.out.push(Change::rescan(""));
                    continue;
                }
            };
            if rec.key != 0 {
                // From here on the kernel reports this inode again; the change below is
                // transferred after this point, so nothing written before it is missed.
                let _ = dirty.remove(&rec.key);
            }
            match self.placement.place(&rec) {
                Placed::Inside(rel) => {
                    let is_dir = self.placement.is_dir(&rec, &rel);
                    changes_for(rec.mask as u64, &rel, is_dir, &mut self.out);
                }
                Placed::Outside => {}
                Placed::Lost => {
                    warn!("an eBPF record's path is too deep to walk; rescanning the whole tree");
                    self.stats.lost.fetch_add(1, Ordering::Relaxed);
                    self.stats.rescans.fetch_add(1, Ordering::Relaxed);
                    self.out.push(Change::rescan(""));
                }
            }
        }
    }

    /// Records the kernel side could not deliver become a rescan.
    fn check_lost(&mut self) {
        let Ok(per_cpu) = self.loaded.counters.get(&counter::LOST, 0) else {
            return;
        };
        let lost: u64 = per_cpu.iter().sum();
        if lost > self.lost_seen {
            let n = lost - self.lost_seen;
            self.lost_seen = lost;
            warn!(
                lost = n,
                "eBPF records lost (ring buffer full or unreadable names); rescanning the whole tree"
            );
            self.stats.lost.fetch_add(n, Ordering::Relaxed);
            self.stats.rescans.fetch_add(1, Ordering::Relaxed);
            self.out.push(Change::rescan(""));
        }
    }
}
