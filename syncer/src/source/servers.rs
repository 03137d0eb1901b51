//! In-kernel file servers on this host that may write into the source: the kernel NFS server
//! (nfsd) and ksmbd. Their writes never pass through system calls, so the eBPF
//! syscall-tracepoint hooks cannot see them (fanotify, inotify and the VFS-level eBPF hooks
//! do). This module only finds out whether one serves the source: [`super::policy`] acts on it
//! (`auto` leaves the tracepoints for last, and a source that would miss the server's writes
//! is announced as an error), and `syncer check` reports it.
//!
//! What counts as serving the source: an NFS export (in exportfs's table `/var/lib/nfs/etab`,
//! the kernel's `/proc/fs/nfsd/exports`, or the configuration `/etc/exports` and
//! `/etc/exports.d/*.exports`, so that a server that starts after syncer counts too) that is
//! the source, lies above it or below it; or ksmbd loaded at all (its shares are not
//! cheaply known, so it counts wherever it runs).

use std::path::{Path, PathBuf};

/// The NFS export tables, live ones first.
const EXPORT_TABLES: &[&str] = &["/var/lib/nfs/etab", "/proc/fs/nfsd/exports", "/etc/exports"];
/// Where further export configuration lives (files ending in `.exports`).
const EXPORTS_D: &str = "/etc/exports.d";

/// What serves the source from inside the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelServers {
    /// NFS exports that are the source, above it or below it.
    pub nfs_exports: Vec<PathBuf>,
    /// Whether nfsd runs right now (it has threads).
    pub nfsd_running: bool,
    /// Whether the ksmbd module is loaded.
    pub ksmbd: bool,
}

impl KernelServers {
    /// Looks at this host's export tables and modules for `root` (the source).
    pub fn probe(root: &Path) -> KernelServers {
        let mut tables: Vec<String> = EXPORT_TABLES
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .collect();
        if let Ok(dir) = std::fs::read_dir(EXPORTS_D) {
            for e in dir.flatten() {
                if e.file_name().to_string_lossy().ends_with(".exports") {
                    tables.extend(std::fs::read_to_string(e.path()).ok());
                }
            }
        }
        let mut nfs_exports = Vec::new();
        for t in &tables {
            for p in overlapping_exports(t, root) {
                if !nfs_exports.contains(&p) {
                    nfs_exports.push(p);
                }
            }
        }
        let nfsd_running = std::fs::read_to_string("/proc/fs/nfsd/threads")
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .is_some_and(|n| n > 0);
        KernelServers {
            nfs_exports,
            nfsd_running,
            ksmbd: Path::new("/sys/module/ksmbd").exists(),
        }
    }

    /// Whether an in-kernel server may write into the source.
    pub fn serve(&self) -> bool {
        !self.nfs_exports.is_empty() || self.ksmbd
    }

    /// What serves the source, for a log line or `syncer check`; `None` when nothing does.
    pub fn describe(&self) -> Option<String> {
        let mut parts = Vec::new();
        if !self.nfs_exports.is_empty() {
            let list: Vec<String> = self
                .nfs_exports
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            parts.push(format!(
                "the kernel NFS server ({}) exports {}",
                if self.nfsd_running {
                    "running"
                } else {
                    "configured, not running now"
                },
                list.join(", ")
            ));
        }
        if self.ksmbd {
            parts.push("the in-kernel SMB server ksmbd is loaded".to_string());
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

/// The export paths in one export table (`etab`, `/proc/fs/nfsd/exports` or `/etc/exports`
/// syntax: the path first on a line, `#` comments, paths quoted or with `\ooo` escapes) that
/// are `root`, above it or below it. NFSv4 pseudo-root entries (`v4root`) are not exports.
pub fn overlapping_exports(table: &str, root: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for line in table.lines() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // The NFSv4 pseudo-root's entries (the export's ancestors, in the kernel's table)
        // export nothing of their own.
        if line.contains("v4root") {
            continue;
        }
        let Some(path) = export_path(line) else {
            continue;
        };
        if (root.starts_with(&path) || path.starts_with(root)) && !out.contains(&path) {
            out.push(path);
        }
    }
    out
}

/// The path at the start of an export line.
fn export_path(line: &str) -> Option<PathBuf> {
    let raw = if let Some(rest) = line.strip_prefix('"') {
        rest.split('"').next()?
    } else {
        line.split_whitespace().next()?
    };
    if !raw.starts_with('/') {
        return None;
    }
    // `\040` and the like: octal escapes of bytes (spaces, mostly).
    let bytes = raw.as_bytes();
    let mut path = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                let v = d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
                path.push(v as u8);
                i += 4;
            }
            None => {
                path.push(bytes[i]);
                i += 1;
            }
        }
    }
    use std::os::unix::ffi::OsStringExt;
    Some(PathBuf::from(std::ffi::OsString::from_vec(path)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_that_overlap_the_source() {
        let etab = "/srv/nfs\t127.0.0.1(rw,sync,wdelay,hide,no_subtree_check,fsid=11)\n\
                    /srv/other\t*(ro)\n\
                    /data/with\\040space\t10.0.0.0/8(rw)\n";
        let exports = "# /etc/exports\n\
                       \n\
                       /export/home  host1(rw) host2(ro)\n\
                       \"/quoted path\" *(rw)\n\
                       /\t*(ro,fsid=0)\n";
        let proc_fs = "# Version 1.1\n# Path Client(Flags) # IPs\n\
                       /\t127.0.0.1(ro,no_root_squash,sync,no_wdelay,no_subtree_check,v4root,fsid=0)\n\
                       /srv\t127.0.0.1(ro,no_root_squash,sync,no_wdelay,no_subtree_check,v4root)\n\
                       /srv/nfs\t127.0.0.1(rw)\n";
        let cases: &[(&str, &str, &[&str])] = &[
            // The source is the export, below it, or above it.
            (etab, "/srv/nfs", &["/srv/nfs"]),
            (etab, "/srv/nfs/project", &["/srv/nfs"]),
            (etab, "/srv", &["/srv/nfs", "/srv/other"]),
            // A sibling with a common prefix is not the same tree.
            (etab, "/srv/nfs2", &[]),
            (etab, "/elsewhere", &[]),
            (etab, "/data/with space/x", &["/data/with space"]),
            (exports, "/export/home/u1", &["/export/home", "/"]),
            (exports, "/quoted path", &["/quoted path", "/"]),
            (exports, "/tmp", &["/"]),
            (proc_fs, "/srv/nfs", &["/srv/nfs"]),
            (proc_fs, "/srv/nfs/x", &["/srv/nfs"]),
            ("", "/srv", &[]),
            ("not-a-path *(rw)\n", "/srv", &[]),
        ];
        for (table, root, want) in cases {
            let got = overlapping_exports(table, Path::new(root));
            let want: Vec<PathBuf> = want.iter().map(PathBuf::from).collect();
            assert_eq!(got, want, "root {root} in\n{table}");
        }
    }

    #[test]
    fn described_only_when_something_serves() {
        assert_eq!(KernelServers::default().describe(), None);
        assert!(!KernelServers::default().serve());
        let s = KernelServers {
            nfs_exports: vec![PathBuf::from("/srv/nfs")],
            nfsd_running: true,
            ksmbd: false,
        };
        assert!(s.serve());
        assert_eq!(
            s.describe().as_deref(),
            Some("the kernel NFS server (running) exports /srv/nfs")
        );
    }
}
