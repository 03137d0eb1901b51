//! The fanotify source: one filesystem mark on the filesystem holding the source tree, with
//! directory file handles and names in every record (`FAN_REPORT_DFID_NAME`). No per-directory
//! watches, so start-up takes the same time on any tree size.
//!
//! Records are resolved to paths through [`resolve::Resolver`]; records outside the source tree
//! (the mark covers the whole filesystem, including any local target on it) are dropped there,
//! so syncer never reacts to its own writes. `FAN_Q_OVERFLOW`, a malformed buffer or a record
//! whose directory cannot be resolved for any reason but its deletion becomes a rescan of the
//! whole source tree.

pub mod parse;
pub mod resolve;
pub mod sys;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tracing::{debug, info, trace, warn};

use self::parse::{Event, Record};
use self::resolve::{Resolved, Resolver};
use self::sys::*;
use super::QueueMode;
use super::{Source, SourceConfig, SourceError, SourceStats};
use crate::change::{entry_changes, Change, ChangeKind};

/// Dir-handle cache entries before the cache starts over.
const CACHE_CAPACITY: usize = 1 << 18;

/// What the kernel granted.
#[derive(Debug, Clone, Copy)]
pub struct Features {
    pub init_flags: u32,
    pub rename: bool,
    pub unlimited: bool,
}

/// Opens a fanotify group with the richest reporting this kernel allows.
pub fn open(queue: QueueMode) -> Result<(OwnedFd, Features), SourceError> {
    let base = FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK;
    let queue_flag = match queue {
        QueueMode::Unlimited => FAN_UNLIMITED_QUEUE,
        QueueMode::Bounded => 0,
    };
    let reports = [
        FAN_REPORT_DFID_NAME | FAN_REPORT_FID | FAN_REPORT_TARGET_FID,
        FAN_REPORT_DFID_NAME | FAN_REPORT_FID,
        FAN_REPORT_DFID_NAME,
    ];
    let mut last = None;
    for report in reports {
        match init(
            base | queue_flag | report,
            (libc::O_RDONLY | libc::O_LARGEFILE) as u32,
        ) {
            Ok(fd) => {
                return Ok((
                    fd,
                    Features {
                        init_flags: report,
                        rename: false,
                        unlimited: queue_flag != 0,
                    },
                ))
            }
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                return Err(SourceError::NotPermitted {
                    kind: "fanotify",
                    what: "CAP_SYS_ADMIN",
                    source: e,
                })
            }
            Err(e) => last = Some(e),
        }
    }
    Err(SourceError::Unsupported {
        kind: "fanotify",
        why: format!(
            "fanotify_init with FAN_REPORT_DFID_NAME failed ({}); needs Linux 5.9 or later",
            last.expect("tried at least once")
        ),
    })
}

const BASE_MASK: u64 =
    FAN_CREATE | FAN_DELETE | FAN_MODIFY | FAN_CLOSE_WRITE | FAN_ATTRIB | FAN_ONDIR;

/// Adds the filesystem mark for `path`, with `FAN_RENAME` where the kernel has it.
pub fn mark_filesystem(
    fd: &OwnedFd,
    path: &Path,
    features: &mut Features,
) -> Result<(), SourceError> {
    let flags = FAN_MARK_ADD | FAN_MARK_FILESYSTEM;
    let io = |e: std::io::Error| {
        match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => SourceError::NotPermitted {
            kind: "fanotify",
            what: "CAP_SYS_ADMIN for a filesystem mark",
            source: e,
        },
        Some(libc::EXDEV) | Some(libc::EOPNOTSUPP) | Some(libc::ENODEV) => SourceError::Unsupported {
            kind: "fanotify",
            why: format!(
                "cannot mark the filesystem holding {} ({e}): it does not support file handles or is a sub-volume",
                path.display()
            ),
        },
        _ => SourceError::Io {
            what: format!("fanotify_mark {}", path.display()),
            source: e,
        },
    }
    };
    if features.init_flags & FAN_REPORT_FID != 0 {
        match mark(fd.as_fd(), flags, BASE_MASK | FAN_RENAME, path) {
            Ok(()) => {
                features.rename = true;
                return Ok(());
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => return Err(io(e)),
        }
    }
    mark(
        fd.as_fd(),
        flags,
        BASE_MASK | FAN_MOVED_FROM | FAN_MOVED_TO,
        path,
    )
    .map_err(io)
}

/// Opens the fanotify source: the group (`kept`: one a predecessor left in systemd's fd store,
/// taken up if it is a fanotify group marking only this filesystem, else a new one), the
/// filesystem mark, the handle resolver.
pub fn open_source(
    cfg: &SourceConfig,
    stats: Arc<SourceStats>,
    kept: Option<OwnedFd>,
) -> Result<Reader, SourceError> {
    let taken = kept.and_then(|fd| match adopt(fd, &cfg.root) {
        Ok(g) => Some(g),
        Err(why) => {
            warn!("the fanotify group kept in the fd store is not taken up ({why}): a new one is opened, and the start walks for what changed meanwhile");
            None
        }
    });
    let adopted = taken.is_some();
    let (fd, mut features) = match taken {
        Some(g) => g,
        None => open(cfg.queue)?,
    };
    mark_filesystem(&fd, &cfg.root, &mut features)?;
    let mount_fd: OwnedFd = std::fs::File::open(&cfg.root)
        .map_err(|e| SourceError::Io {
            what: format!("open {}", cfg.root.display()),
            source: e,
        })?
        .into();
    let resolver = Resolver::new(cfg.root.clone(), mount_fd, CACHE_CAPACITY);
    info!(
        root = %cfg.root.display(),
        rename = features.rename,
        target_fid = features.init_flags & FAN_REPORT_TARGET_FID != 0,
        unlimited_queue = features.unlimited,
        kept_group = adopted,
        "event source live: fanotify filesystem mark"
    );
    Ok(Reader {
        fd,
        adopted,
        resolver,
        stats,
        buf: vec![0u8; BUF_LEN],
        out: Vec::with_capacity(1024),
        link_lookups: Vec::new(),
    })
}

/// Takes up a group handed over by the service manager: it must be a fanotify group with
/// directory handles and names whose marks are all filesystem marks on the filesystem of
/// `root` (a group of an older configuration is not). Its reporting flags come from the
/// kernel's fdinfo.
fn adopt(fd: OwnedFd, root: &Path) -> Result<(OwnedFd, Features), String> {
    use std::os::fd::AsRawFd;
    let raw = fd.as_raw_fd();
    // Handed over without close-on-exec: rsync must not inherit it.
    nix::fcntl::fcntl(
        raw,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(|e| format!("fcntl: {e}"))?;
    let link = std::fs::read_link(format!("/proc/self/fd/{raw}")).map_err(|e| e.to_string())?;
    if link != Path::new("anon_inode:[fanotify]") {
        return Err(format!("it is {}", link.display()));
    }
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{raw}"))
        .map_err(|e| format!("fdinfo: {e}"))?;
    let dev = nix::sys::stat::stat(root).map_err(|e| format!("stat {}: {e}", root.display()))?;
    let want = (nix::sys::stat::major(dev.st_dev) << 20) | nix::sys::stat::minor(dev.st_dev);
    let features = group_features(&info, want)?;
    Ok((fd, features))
}

/// The reporting flags of a group from its fdinfo, if every mark in it is a filesystem mark
/// on the filesystem whose kernel device number is `dev`.
fn group_features(info: &str, dev: u64) -> Result<Features, String> {
    let field = |line: &str, key: &str| -> Option<u64> {
        let v = line.split_whitespace().find_map(|w| w.strip_prefix(key))?;
        u64::from_str_radix(v, 16).ok()
    };
    let mut flags = None;
    let mut marks = 0;
    for line in info.lines().filter(|l| l.starts_with("fanotify ")) {
        if let Some(f) = field(line, "flags:") {
            flags = Some(f as u32);
        } else if let Some(sdev) = field(line, "sdev:") {
            if line.contains(" ino:") || line.contains("mnt_id:") {
                return Err("it holds marks other than filesystem marks".into());
            }
            if sdev != dev {
                return Err(format!("it marks another filesystem (device {sdev:x})"));
            }
            marks += 1;
        } else {
            return Err("it holds marks other than filesystem marks".into());
        }
    }
    let flags = flags.ok_or("its fdinfo names no flags")?;
    if flags & FAN_REPORT_DFID_NAME != FAN_REPORT_DFID_NAME {
        return Err(format!(
            "it does not report directory handles and names (flags {flags:x})"
        ));
    }
    if marks == 0 {
        return Err("it marks nothing".into());
    }
    Ok(Features {
        init_flags: flags & (FAN_REPORT_DFID_NAME | FAN_REPORT_FID | FAN_REPORT_TARGET_FID),
        rename: false,
        unlimited: flags & FAN_UNLIMITED_QUEUE != 0,
    })
}

/// The armed fanotify group and what turns its records into changes.
pub struct Reader {
    fd: OwnedFd,
    /// The group was handed over by a predecessor (systemd's fd store).
    adopted: bool,
    resolver: Resolver,
    stats: Arc<SourceStats>,
    buf: Vec<u8>,
    out: Vec<Change>,
    /// Directories to look in for other names of inodes (see [`Reader::surviving_links`]).
    link_lookups: Vec<(std::path::PathBuf, u64)>,
}

/// Most entries of a directory read when looking for an inode's other names there.
const LOOK_MAX: usize = 4096;

/// Read buffer size; the kernel fills it with as many whole events as fit.
const BUF_LEN: usize = 256 * 1024;

impl Source for Reader {
    fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn kept_queue(&self) -> Option<(BorrowedFd<'_>, bool)> {
        Some((self.fd.as_fd(), self.adopted))
    }

    fn read(&mut self, out: &mut Vec<Change>) -> std::io::Result<()> {
        self.read_and(out, |_| {})
    }

    fn read_keeping(
        &mut self,
        out: &mut Vec<Change>,
        marks: &dyn crate::change::ReadMarks,
    ) -> std::io::Result<()> {
        self.read_and(out, |raw| marks.raw(raw))
    }

    fn replay(&mut self, raw: &[u8], out: &mut Vec<Change>) {
        self.handle_buffer(raw);
        out.append(&mut self.out);
    }
}

impl Reader {
    /// One read; `keep` sees the records before they are turned into changes.
    fn read_and(&mut self, out: &mut Vec<Change>, keep: impl FnOnce(&[u8])) -> std::io::Result<()> {
        let mut buf = std::mem::take(&mut self.buf);
        let r = read(self.fd.as_fd(), &mut buf);
        if let Ok(n) = r {
            if n > 0 {
                keep(&buf[..n]);
            }
            self.handle_buffer(&buf[..n]);
        }
        self.buf = buf;
        out.append(&mut self.out);
        r.map(drop)
    }

    fn rescan(&mut self, why: &str) {
        self.stats.rescans.fetch_add(1, Ordering::Relaxed);
        debug!("rescan of the whole tree: {why}");
        self.out.push(Change::rescan(""));
    }

    fn handle_buffer(&mut self, buf: &[u8]) {
        let events = match parse::parse(buf) {
            Ok(evs) => evs,
            Err(e) => {
                warn!("{e}; rescanning the whole tree");
                self.rescan("parse error");
                return;
            }
        };
        self.stats
            .events
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        for ev in &events {
            self.handle_event(ev);
        }
        self.look_up_links();
    }

    fn handle_event(&mut self, ev: &Event<'_>) {
        if ev.mask & FAN_Q_OVERFLOW != 0 {
            warn!("fanotify queue overflow: events were lost; rescanning the whole tree");
            self.resolver.invalidate_all();
            self.rescan("queue overflow");
            return;
        }
        if ev.mask & FAN_FS_ERROR != 0 {
            return;
        }
        let is_dir = ev.mask & FAN_ONDIR != 0;
        if is_dir && ev.mask & (FAN_MOVED_FROM | FAN_MOVED_TO | FAN_RENAME | FAN_MOVE_SELF) != 0 {
            self.renamed_dir(ev);
        }
        if is_dir && ev.mask & (FAN_DELETE | FAN_DELETE_SELF) != 0 {
            if let Some(fid) = ev
                .records
                .iter()
                .find(|r| r.info_type == FAN_EVENT_INFO_TYPE_FID)
            {
                self.resolver.forget(fid.handle);
            }
        }
        // A file name that went away (unlinked, or renamed: the old name): its other names.
        let name_gone = match () {
            _ if is_dir => None,
            _ if ev.mask & FAN_DELETE != 0 => Some(1),
            _ if ev.mask & (FAN_MOVED_FROM | FAN_RENAME) != 0 => Some(2),
            _ => None,
        };
        for rec in &ev.records {
            let mask = match rec.info_type {
                FAN_EVENT_INFO_TYPE_OLD_DFID_NAME => FAN_MOVED_FROM,
                FAN_EVENT_INFO_TYPE_NEW_DFID_NAME => FAN_MOVED_TO,
                FAN_EVENT_INFO_TYPE_DFID_NAME | FAN_EVENT_INFO_TYPE_DFID => ev.mask & !FAN_RENAME,
                _ => continue,
            };
            self.handle_record(rec, mask, is_dir);
        }
        if let Some(min_links) = name_gone {
            self.surviving_links(ev, min_links);
        }
    }

    /// A file name was unlinked or renamed away. If its inode has other names (it has at least
    /// `min_links` links: 1 after an unlink, 2 after a rename), those in the name's old
    /// directory are reported changed: what was written through the name just before shows
    /// only under them, and the transfer layer learns them as names of the inode (a link
    /// renamed into another directory before any transfer saw it stays paired with them).
    /// An inode that is gone, or open but unlinked, costs one failed lookup.
    fn surviving_links(&mut self, ev: &Event<'_>, min_links: libc::nlink_t) {
        let child = ev
            .records
            .iter()
            .find(|r| r.info_type == FAN_EVENT_INFO_TYPE_FID);
        let parent = ev
            .records
            .iter()
            .find(|r| r.info_type == FAN_EVENT_INFO_TYPE_OLD_DFID_NAME)
            .or_else(|| {
                ev.records
                    .iter()
                    .find(|r| r.info_type == FAN_EVENT_INFO_TYPE_DFID_NAME)
            });
        let (Some(child), Some(parent)) = (child, parent) else {
            return;
        };
        let Ok(fd) = self.resolver.open_handle(child.handle) else {
            return;
        };
        let Ok(st) = nix::sys::stat::fstat(std::os::fd::AsRawFd::as_raw_fd(&fd)) else {
            return;
        };
        if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_nlink < min_links {
            return;
        }
        let Ok(Ok(dir)) = self.resolver.entry(parent.handle, None) else {
            return;
        };
        self.link_lookups.push((dir, st.st_ino));
    }

    /// Reports the names of the inodes [`Reader::surviving_links`] found, each directory read
    /// once per buffer of events and only its first [`LOOK_MAX`] entries (an `rm -r` of a
    /// directory full of hard links costs a bounded read per buffer, not one per name).
    fn look_up_links(&mut self) {
        use std::os::unix::fs::DirEntryExt;
        if self.link_lookups.is_empty() {
            return;
        }
        let mut by_dir: std::collections::HashMap<std::path::PathBuf, Vec<u64>> =
            std::collections::HashMap::new();
        for (dir, ino) in self.link_lookups.drain(..) {
            by_dir.entry(dir).or_default().push(ino);
        }
        for (dir, inodes) in by_dir {
            let Ok(rd) = std::fs::read_dir(self.resolver.root().join(&dir)) else {
                continue;
            };
            for e in rd.flatten().take(LOOK_MAX) {
                if inodes.contains(&e.ino()) {
                    let path = dir.join(e.file_name());
                    trace!(path = %path.display(), "another name of an unlinked or renamed file");
                    self.out
                        .push(Change::new(path, ChangeKind::Modified, false));
                }
            }
        }
    }

    /// A directory was renamed: the cached paths at and below its old name (and below the
    /// name it replaced) are stale from here on; nothing else is.
    fn renamed_dir(&mut self, ev: &Event<'_>) {
        for rec in &ev.records {
            let named = matches!(
                rec.info_type,
                FAN_EVENT_INFO_TYPE_OLD_DFID_NAME
                    | FAN_EVENT_INFO_TYPE_NEW_DFID_NAME
                    | FAN_EVENT_INFO_TYPE_DFID_NAME
            );
            let Some(name) = rec.name.filter(|_| named) else {
                continue;
            };
            match self.resolver.abs_path(rec.handle) {
                Ok(Some(parent)) => self
                    .resolver
                    .invalidate_subtree(&parent.join(std::ffi::OsStr::from_bytes(name))),
                // The parent is gone or cannot be resolved: any cached path may be stale.
                _ => {
                    self.resolver.invalidate_all();
                    return;
                }
            }
        }
    }

    fn handle_record(&mut self, rec: &Record<'_>, mask: u64, is_dir: bool) {
        let path = match self.resolver.entry(rec.handle, rec.name) {
            Ok(Ok(p)) => p,
            Ok(Err(Resolved::Outside)) => {
                trace!(mask, name = ?rec.name.map(String::from_utf8_lossy), "outside the source");
                return;
            }
            Ok(Err(_gone)) => {
                trace!(mask, name = ?rec.name.map(String::from_utf8_lossy), "directory gone");
                // The directory was deleted since: its own removal event (in a live parent)
                // follows in the queue and covers this entry.
                self.stats.stale.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(e) => {
                warn!("cannot resolve a directory handle ({e}); rescanning the whole tree");
                self.rescan("unresolvable handle");
                return;
            }
        };
        changes_for(mask, &path, is_dir, &mut self.out);
    }
}

/// The changes one record stands for. Several bits may be merged into one record by the
/// kernel, in an order it does not tell; a removal together with an appearance is reported as
/// both (removal first), which makes the target follow whatever the source holds now.
pub fn changes_for(mask: u64, path: &Path, is_dir: bool, out: &mut Vec<Change>) {
    let removed = mask & (FAN_DELETE | FAN_MOVED_FROM) != 0;
    let appeared = mask & (FAN_CREATE | FAN_MOVED_TO) != 0;
    let at_root = path.as_os_str().is_empty();
    if removed && !at_root {
        entry_changes(path, ChangeKind::Removed, is_dir, out);
    }
    if appeared && !at_root {
        let kind = if removed || mask & FAN_MOVED_TO != 0 {
            ChangeKind::MovedIn
        } else {
            ChangeKind::Created
        };
        entry_changes(path, kind, is_dir, out);
    }
    if mask & (FAN_MODIFY | FAN_ATTRIB) != 0 {
        out.push(Change::new(path, ChangeKind::Modified, is_dir));
    } else if mask & FAN_CLOSE_WRITE != 0 {
        out.push(Change::new(path, ChangeKind::Closed, is_dir));
    }
    if at_root && (removed || appeared) {
        // The source root itself was removed or replaced: compare everything.
        out.push(Change::rescan(""));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn kinds(mask: u64, is_dir: bool) -> Vec<(String, ChangeKind)> {
        let mut out = Vec::new();
        changes_for(mask, Path::new("d/f"), is_dir, &mut out);
        out.into_iter()
            .map(|c| (c.path.display().to_string(), c.kind))
            .collect()
    }

    #[test]
    fn a_kept_group_is_taken_up_only_if_it_marks_this_filesystem_alone() {
        let head = "pos:\t0\nflags:\t02004002\nmnt_id:\t17\nino:\t12\n";
        let flags = "fanotify flags:1e13 event-flags:8000\n";
        let fs = |dev: &str| format!("fanotify sdev:{dev} mflags:0 mask:58000100 ignored_mask:0\n");
        type Want = Result<(u32, bool), &'static str>;
        #[rustfmt::skip]
        let table: Vec<(&str, String, Want)> = vec![
            ("our filesystem mark", format!("{head}{flags}{}", fs("fe00000")),
                Ok((FAN_REPORT_DFID_NAME | FAN_REPORT_FID | FAN_REPORT_TARGET_FID, true))),
            ("bounded queue, no child handles", format!("{head}fanotify flags:c03 event-flags:8000\n{}", fs("fe00000")),
                Ok((FAN_REPORT_DFID_NAME, false))),
            ("another filesystem", format!("{head}{flags}{}", fs("fe00001")), Err("another filesystem")),
            ("a second filesystem too", format!("{head}{flags}{}{}", fs("fe00000"), fs("800001")), Err("another filesystem")),
            ("an inode mark", format!("{head}{flags}fanotify ino:2 sdev:fe00000 mflags:0 mask:1 ignored_mask:0\n"), Err("other than")),
            ("a mount mark", format!("{head}{flags}fanotify mnt_id:1d mflags:0 mask:1 ignored_mask:0\n"), Err("other than")),
            ("no names", format!("{head}fanotify flags:213 event-flags:8000\n{}", fs("fe00000")), Err("names")),
            ("no marks", format!("{head}{flags}"), Err("marks nothing")),
            ("not fanotify's", head.to_string(), Err("no flags")),
        ];
        for (name, info, want) in table {
            let got = group_features(&info, 0xfe00000).map(|f| (f.init_flags, f.unlimited));
            match (got, want) {
                (Ok(g), Ok(w)) => assert_eq!(g, w, "{name}"),
                (Err(g), Err(w)) => assert!(g.contains(w), "{name}: {g}"),
                (g, w) => panic!("{name}: got {g:?}, want {w:?}"),
            }
        }
    }

    #[test]
    fn record_masks_to_changes() {
        use ChangeKind::*;
        let s = |p: &str, k| (p.to_string(), k);
        assert_eq!(
            kinds(FAN_CREATE, false),
            [s("d/f", Created), s("d", Modified)]
        );
        assert_eq!(
            kinds(FAN_CLOSE_WRITE | FAN_MODIFY, false),
            [s("d/f", Modified)]
        );
        // A close with nothing else: only a close (it may find the target up to date).
        assert_eq!(kinds(FAN_CLOSE_WRITE, false), [s("d/f", Closed)]);
        assert_eq!(
            kinds(FAN_CLOSE_WRITE | FAN_ATTRIB, false),
            [s("d/f", Modified)]
        );
        assert_eq!(
            kinds(FAN_CREATE | FAN_CLOSE_WRITE, false),
            [s("d/f", Created), s("d", Modified), s("d/f", Closed)]
        );
        assert_eq!(
            kinds(FAN_MOVED_TO | FAN_ONDIR, true),
            [s("d/f", MovedIn), s("d", Modified)]
        );
        assert_eq!(
            kinds(FAN_CREATE | FAN_DELETE, false),
            [
                s("d/f", Removed),
                s("d", Modified),
                s("d/f", MovedIn),
                s("d", Modified)
            ]
        );
        let mut out = Vec::new();
        changes_for(FAN_ATTRIB | FAN_ONDIR, &PathBuf::new(), true, &mut out);
        assert_eq!(out, [Change::new("", Modified, true)]);
    }
}
