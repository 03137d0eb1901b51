//! `syncer check`: probes what this kernel and these privileges offer (fanotify reporting
//! modes and marks, the queue, eBPF program types and the eBPF source's two sets of hooks,
//! inotify limits) and says which source `auto` would pick, and why. Every line comes from a real attempt, not from a version table.

use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};

use crate::config::QueueMode;
use crate::source::ebpf;
use crate::source::fanotify::{self, sys};

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
    pub auto: &'static str,
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
    let fanotify_ok = mark.is_ok();
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
    let (fsnotify_ok, tracepoints_ok) = (fsnotify_hooks.is_ok(), tracepoints.is_ok());
    probes.push(probe("eBPF source: fsnotify hooks", fsnotify_hooks.clone()));
    probes.push(probe("eBPF source: syscall tracepoints", tracepoints));
    for f in [
        "/proc/sys/fs/inotify/max_user_watches",
        "/proc/sys/fs/inotify/max_user_instances",
        "/proc/sys/fs/inotify/max_queued_events",
        "/proc/sys/fs/fanotify/max_queued_events",
        "/proc/sys/fs/fanotify/max_user_marks",
    ] {
        let name = f.trim_start_matches("/proc/sys/");
        probes.push(Probe {
            name: leak(name),
            ok: true,
            detail: std::fs::read_to_string(f)
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|e| e.to_string()),
        });
    }
    let (auto, auto_why) = if fsnotify_ok {
        ("ebpf (fsnotify hooks)", "fentry on fsnotify sees every writer at VFS level, nfsd included, and filters and coalesces in the kernel".to_string())
    } else if fanotify_ok {
        ("fanotify", format!("a filesystem mark with directory handles and names works: one mark covers the tree, no per-directory watches (eBPF fsnotify hooks: {})", fsnotify_hooks.err().unwrap_or_default()))
    } else if tracepoints_ok {
        ("ebpf (syscall tracepoints)", format!("fanotify is unavailable ({}); syscall tracepoints need no watches but miss in-kernel writers such as nfsd", mark.err().unwrap_or_default()))
    } else {
        (
            "inotify",
            format!(
                "fanotify is unavailable ({}); inotify needs one watch per directory",
                mark.err().unwrap_or_default()
            ),
        )
    };
    Report {
        path: path.to_path_buf(),
        kernel,
        probes,
        auto,
        auto_why,
    }
}

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_string().into_boxed_str())
}

const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;
const BPF_PROG_TYPE_TRACEPOINT: u32 = 5;
const BPF_PROG_TYPE_RAW_TRACEPOINT: u32 = 17;
const BPF_PROG_TYPE_TRACING: u32 = 26;
const BPF_PROG_TYPE_LSM: u32 = 29;
const BPF_TRACE_FENTRY: u32 = 24;
const BPF_LSM_MAC: u32 = 27;

const BPF_TYPES: &[(&str, u32, u32)] = &[
    ("eBPF socket_filter", BPF_PROG_TYPE_SOCKET_FILTER, 0),
    ("eBPF tracepoint", BPF_PROG_TYPE_TRACEPOINT, 0),
    ("eBPF raw_tracepoint", BPF_PROG_TYPE_RAW_TRACEPOINT, 0),
    (
        "eBPF fentry (tracing)",
        BPF_PROG_TYPE_TRACING,
        BPF_TRACE_FENTRY,
    ),
    ("eBPF lsm", BPF_PROG_TYPE_LSM, BPF_LSM_MAC),
];

/// Tries `BPF_PROG_LOAD` of `r0 = 0; exit`. fentry and LSM programs need a BTF attach target,
/// which this probe does not give: the kernel answers EPERM when the type itself is refused,
/// and an error from the verifier or the BTF lookup (EINVAL, ESRCH, ...) when it is allowed.
fn bpf_load(prog_type: u32, attach: u32) -> Result<String, String> {
    let insns: [u64; 2] = [0x0000_0000_0000_00b7, 0x0000_0000_0000_0095];
    let license = b"GPL\0";
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&prog_type.to_ne_bytes());
    attr[4..8].copy_from_slice(&2u32.to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    attr[68..72].copy_from_slice(&attach.to_ne_bytes());
    // SAFETY: attr is a valid bpf_attr prefix; the pointers it holds outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            5, /* BPF_PROG_LOAD */
            attr.as_mut_ptr(),
            attr.len() as u32,
        )
    };
    if fd >= 0 {
        // SAFETY: we own the new program descriptor.
        unsafe { libc::close(fd as i32) };
        return Ok("loads".into());
    }
    let e = std::io::Error::last_os_error();
    match (e.raw_os_error(), attach) {
        (Some(libc::EPERM), _) => Err(format!("refused ({e})")),
        (_, a) if a != 0 => Ok(format!(
            "type allowed (a bare probe without an attach target fails with: {e})"
        )),
        _ => Err(e.to_string()),
    }
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
