//! `syncer check`: probes what this kernel and these privileges offer (fanotify reporting
//! modes and marks, the queue, eBPF program types and the eBPF source's two sets of hooks,
//! inotify limits, in-kernel file servers serving the path) and says which source `auto` would
//! pick, and why, through the same policy the daemon uses. Every line comes from a real
//! attempt, not from a version table.

use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};

use crate::source::ebpf::{self, probe::bpf_load, probe::BPF_TYPES};
use crate::source::fanotify::{self, sys};
use crate::source::policy::{self, Candidate};
use crate::source::servers::KernelServers;
use crate::source::{EbpfHooks, QueueMode, SourceKind};

/// One probed capability.
#[derive(Debug, Clone)]
pub struct Probe {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

/// The result of `syncer check`.
#[derive(Debug, Clone)]
pub struct Report {
    pub path: PathBuf,
    pub kernel: String,
    pub probes: Vec<Probe>,
    pub auto: String,
    pub auto_why: String,
}

fn probe(name: &'static str, r: Result<String, String>) -> Probe {
    match r {
        Ok(detail) => Probe {
            name,
            ok: true,
            detail,
        },
        Err(detail) => Probe {
            name,
            ok: false,
            detail,
        },
    }
}

fn init_with(flags: u32) -> Result<String, String> {
    let base = sys::FAN_CLASS_NOTIF | sys::FAN_CLOEXEC | sys::FAN_NONBLOCK;
    sys::init(base | flags, libc::O_RDONLY as u32)
        .map(|_| "yes".to_string())
        .map_err(|e| e.to_string())
}

/// Probes everything, marking the filesystem that holds `path`.
pub fn report(path: &Path) -> Report {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let (mut probes, mark) = fanotify_probes(path);
    probes.push(probe(
        "BTF (/sys/kernel/btf/vmlinux)",
        if Path::new("/sys/kernel/btf/vmlinux").exists() {
            Ok("present".into())
        } else {
            Err("absent".into())
        },
    ));
    for (name, ty, attach) in BPF_TYPES {
        probes.push(probe(name, bpf_load(*ty, *attach)));
    }
    let [fsnotify_hooks, tracepoints] = ebpf::probe_hooks(path);
    probes.push(probe("eBPF source: fsnotify hooks", fsnotify_hooks.clone()));
    probes.push(probe(
        "eBPF source: syscall tracepoints",
        tracepoints.clone(),
    ));
    probes.extend(limits());
    // The daemon's own policy, fed with what was probed here.
    let works = |c: Candidate| -> Result<(), String> {
        match c {
            Candidate::Ebpf(EbpfHooks::Fsnotify) => fsnotify_hooks.clone().map(drop),
            Candidate::Fanotify => mark.clone(),
            Candidate::Ebpf(_) => tracepoints.clone().map(drop),
            Candidate::Inotify => Ok(()),
        }
    };
    let servers = KernelServers::probe(path);
    probes.push(Probe {
        name: "in-kernel file servers",
        ok: true,
        detail: match servers.describe() {
            Some(d) => format!(
                "{d}: its writes bypass system calls; the syscall tracepoints cannot see them"
            ),
            None => "none serves this path (no NFS export over or under it, no ksmbd)".into(),
        },
    });
    let candidates = policy::candidates_served(SourceKind::Auto, EbpfHooks::Auto, servers.serve());
    let (auto, auto_why) = match policy::choose(&candidates, works) {
        Ok((c, (), refused)) => {
            let mut why = why_pick(c).to_string();
            if c == Candidate::Ebpf(EbpfHooks::Tracepoints) && servers.serve() {
                why.push_str(
                    "; NOTHING ELSE WORKS HERE, so the NFS/SMB clients' changes would not be \
                     replicated",
                );
            } else if servers.serve() {
                why.push_str(
                    "; it sees the in-kernel file server's writes (the syscall tracepoints, \
                     which would not, come last here)",
                );
            }
            for (r, e) in refused {
                why.push_str(&format!("; {r}: {e}"));
            }
            (c.to_string(), why)
        }
        Err(_) => ("nothing".into(), "no source can watch here".into()),
    };
    Report {
        path: path.to_path_buf(),
        kernel,
        probes,
        auto,
        auto_why,
    }
}

/// fanotify's reporting modes, the queue, and a filesystem mark on `path` for real.
fn fanotify_probes(path: &Path) -> (Vec<Probe>, Result<(), String>) {
    let mut probes = vec![
        probe(
            "fanotify FAN_REPORT_DFID_NAME",
            init_with(sys::FAN_REPORT_DFID_NAME),
        ),
        probe(
            "fanotify FAN_REPORT_FID",
            init_with(sys::FAN_REPORT_DFID_NAME | sys::FAN_REPORT_FID),
        ),
        probe(
            "fanotify FAN_REPORT_TARGET_FID",
            init_with(sys::FAN_REPORT_DFID_NAME | sys::FAN_REPORT_FID | sys::FAN_REPORT_TARGET_FID),
        ),
        probe(
            "fanotify FAN_UNLIMITED_QUEUE",
            init_with(sys::FAN_REPORT_DFID_NAME | sys::FAN_UNLIMITED_QUEUE),
        ),
    ];
    let mark = fanotify::open(QueueMode::Bounded)
        .map_err(|e| e.to_string())
        .and_then(|(fd, mut f)| {
            fanotify::mark_filesystem(&fd, path, &mut f)
                .map(|()| f)
                .map_err(|e| e.to_string())
        });
    probes.push(probe(
        "fanotify filesystem mark",
        mark.as_ref()
            .map(|_| format!("on {}", path.display()))
            .map_err(Clone::clone),
    ));
    probes.push(probe(
        "fanotify FAN_RENAME",
        match &mark {
            Ok(f) if f.rename => Ok("yes".into()),
            Ok(_) => Err("not supported (needs Linux 5.17)".into()),
            Err(e) => Err(e.clone()),
        },
    ));
    (probes, mark.map(drop))
}

/// The kernel's limits on watches, marks and queued events.
fn limits() -> Vec<Probe> {
    [
        "/proc/sys/fs/inotify/max_user_watches",
        "/proc/sys/fs/inotify/max_user_instances",
        "/proc/sys/fs/inotify/max_queued_events",
        "/proc/sys/fs/fanotify/max_queued_events",
        "/proc/sys/fs/fanotify/max_user_marks",
    ]
    .into_iter()
    .map(|f| Probe {
        name: leak(f.trim_start_matches("/proc/sys/")),
        ok: true,
        detail: std::fs::read_to_string(f)
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|e| e.to_string()),
    })
    .collect()
}

/// Why `auto` takes `c` when it works.
fn why_pick(c: Candidate) -> &'static str {
    match c {
        Candidate::Ebpf(EbpfHooks::Fsnotify) => "the VFS-level hooks see every writer, nfsd included, and filter and coalesce in the kernel",
        Candidate::Fanotify => "a filesystem mark with directory handles and names: one mark covers the tree, no per-directory watches",
        Candidate::Ebpf(_) => "syscall tracepoints need no watches but miss in-kernel writers such as nfsd",
        Candidate::Inotify => "inotify needs one watch per directory",
    }
}

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_string().into_boxed_str())
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::new();
        writeln!(
            s,
            "kernel {} (probed on the filesystem of {})",
            self.kernel,
            self.path.display()
        )?;
        for p in &self.probes {
            writeln!(
                s,
                "  [{}] {:<40} {}",
                if p.ok { "ok" } else { "--" },
                p.name,
                p.detail
            )?;
        }
        writeln!(s, "auto would use: {} ({})", self.auto, self.auto_why)?;
        f.write_str(&s)
    }
}
