//! Loading and attaching syncer's BPF program: the object (built from `syncer-ebpf` by
//! `cargo xtask build-ebpf` and committed as `syncer.bpf.o`), structure offsets from the
//! kernel's BTF, the process-tracking tracepoints, then the best hooks the kernel allows
//! (VFS-level fentry/fexit, else the raw syscall tracepoints). Also `syncer check`'s probe of
//! each set of hooks.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, ProgramArray, RingBuf};
use aya::programs::{FEntry, FExit, RawTracePoint, TracePoint};
use aya::{Ebpf, EbpfLoader};
use syncer_ebpf_abi::{Config, SysDesc, SYSCALL_SLOTS};
use tracing::{debug, info};

use super::record::Placement;
use super::{btf, syscalls};
use crate::source::{EbpfHooks, SourceError};

/// The BPF object, built from `syncer-ebpf` by `cargo xtask build-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!("syncer.bpf.o");

/// Ring buffer size for `syncer check`'s probe.
const PROBE_RING_BYTES: u32 = 64 << 10;

const TRACEFS: &str = "/sys/kernel/tracing";

/// Which hooks ended up attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attached {
    /// fentry on fsnotify.
    Fsnotify,
    /// fexit on the vfs_* functions (where fsnotify() cannot be attached), with the reason.
    Vfs(String),
    /// The raw syscall tracepoints: how many calls are followed, and why the fsnotify hooks
    /// were not used.
    Tracepoints { calls: usize, why: String },
}

/// A loaded and attached program with the maps the reader needs.
pub struct Loaded {
    _ebpf: Ebpf,
    pub attached: Attached,
    pub(super) events: RingBuf<MapData>,
    pub(super) dirty: BpfHashMap<MapData, u64, u8>,
    pub(super) counters: PerCpuArray<MapData, u64>,
    /// The inotify watch that keeps fsnotify running on the source filesystem (fentry mode).
    _watch: Option<OwnedFd>,
    /// The exit stages of the tracepoint programs: the kernel empties a program array when its
    /// last user-space reference goes, so it is held for as long as the programs run.
    _stages: Option<ProgramArray<MapData>>,
}

fn bpf_err(what: &str, e: impl std::fmt::Display) -> SourceError {
    let msg = e.to_string();
    if msg.contains("Operation not permitted") || msg.contains("EPERM") {
        SourceError::NotPermitted {
            kind: "ebpf",
            what: "CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN)",
            source: std::io::Error::other(format!("{what}: {msg}")),
        }
    } else {
        SourceError::Io {
            what: format!("eBPF: {what}"),
            source: std::io::Error::other(msg),
        }
    }
}

/// The program `name` of the object as its type `P` (a mismatch is a bug in this file).
fn program<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> &'a mut P
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let p = ebpf
        .program_mut(name)
        .unwrap_or_else(|| panic!("no program {name} in syncer.bpf.o"));
    p.try_into()
        .unwrap_or_else(|e| panic!("program {name} has another type: {e}"))
}

/// Mounts tracefs where it is missing (tracepoints are attached by their tracefs ids).
fn ensure_tracefs() -> Result<(), SourceError> {
    if Path::new(TRACEFS).join("events").exists() {
        return Ok(());
    }
    nix::mount::mount(
        Some("nodev"),
        TRACEFS,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| SourceError::Unsupported {
        kind: "ebpf",
        why: format!("tracefs is not mounted at {TRACEFS} and mounting it failed ({e})"),
    })?;
    info!("mounted tracefs at {TRACEFS}");
    Ok(())
}

/// The byte offset of `child_pid` in this kernel's sched_process_fork record.
fn fork_child_pid_offset() -> Result<u32, SourceError> {
    let path = Path::new(TRACEFS).join("events/sched/sched_process_fork/format");
    let text = std::fs::read_to_string(&path).map_err(|e| SourceError::Io {
        what: format!("read {}", path.display()),
        source: e,
    })?;
    text.lines()
        .find(|l| l.contains(" child_pid;"))
        .and_then(|l| l.split("offset:").nth(1))
        .and_then(|s| s.split(';').next())
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| SourceError::Unsupported {
            kind: "ebpf",
            why: format!("no child_pid field in {}", path.display()),
        })
}

/// The kernel's internal encoding of a device number (`MKDEV`).
fn kernel_dev(dev: u64) -> u32 {
    (libc::major(dev) << 20) | libc::minor(dev)
}

/// Loads the program for the filesystem holding `placement.root` and attaches hooks.
pub fn load(
    placement: &Placement,
    hooks: EbpfHooks,
    ring_bytes: u32,
) -> Result<Loaded, SourceError> {
    let t0 = std::time::Instant::now();
    ensure_tracefs()?;
    let offsets = btf::Btf::from_sys_fs()
        .and_then(|b| b.offsets())
        .map_err(|e| SourceError::Unsupported {
            kind: "ebpf",
            why: format!("kernel BTF is needed to find structure offsets: {e}"),
        })?;
    debug!(
        ms = t0.elapsed().as_millis() as u64,
        "eBPF: structure offsets read"
    );
    let kbtf = aya::Btf::from_sys_fs().ok();
    debug!(
        ms = t0.elapsed().as_millis() as u64,
        "eBPF: kernel BTF parsed"
    );
    let mut ebpf = EbpfLoader::new()
        .btf(kbtf.as_ref())
        .map_max_entries("EVENTS", ring_bytes)
        .load(OBJECT)
        .map_err(|e| bpf_err("load the BPF object", e))?;

    debug!(ms = t0.elapsed().as_millis() as u64, "eBPF: object loaded");
    let config = configure(&mut ebpf, placement, offsets)?;
    debug!(
        ms = t0.elapsed().as_millis() as u64,
        "eBPF: process tracking attached"
    );
    let fsnotify = match hooks {
        EbpfHooks::Tracepoints => Err("tracepoints chosen by ebpf_hooks".to_string()),
        EbpfHooks::Fsnotify | EbpfHooks::Auto => {
            match attach_fsnotify(&mut ebpf, kbtf.as_ref(), &placement.root, &config.off) {
                Ok(attached) => Ok(attached),
                Err(e) if hooks == EbpfHooks::Auto => Err(e.to_string()),
                Err(e) => return Err(e),
            }
        }
    };
    let (attached, watch, stages) = match fsnotify {
        Ok((attached, watch)) => (attached, Some(watch), None),
        Err(why) => {
            let (attached, stages) = attach_tracepoints(&mut ebpf, why)?;
            (attached, None, Some(stages))
        }
    };

    debug!(ms = t0.elapsed().as_millis() as u64, "eBPF: hooks attached");
    let events = RingBuf::try_from(ebpf.take_map("EVENTS").expect("EVENTS map"))
        .map_err(|e| bpf_err("open EVENTS", e))?;
    let dirty = BpfHashMap::try_from(ebpf.take_map("DIRTY").expect("DIRTY map"))
        .map_err(|e| bpf_err("open DIRTY", e))?;
    let counters = PerCpuArray::try_from(ebpf.take_map("COUNTERS").expect("COUNTERS map"))
        .map_err(|e| bpf_err("open COUNTERS", e))?;
    Ok(Loaded {
        _ebpf: ebpf,
        attached,
        events,
        dirty,
        counters,
        _watch: watch,
        _stages: stages,
    })
}

/// Writes the `CONFIG` map (device, structure offsets), puts syncer in the `EXCLUDE` set and
/// attaches the fork/exit tracepoints that keep that set up to date with its children.
fn configure(
    ebpf: &mut Ebpf,
    placement: &Placement,
    offsets: syncer_ebpf_abi::Offsets,
) -> Result<Config, SourceError> {
    let mut config = Config {
        dev: kernel_dev(placement.dev),
        ready: 1,
        off: offsets,
    };
    config.off.fork_child_pid = fork_child_pid_offset()?;
    let mut cfg_map: Array<_, Config> =
        Array::try_from(ebpf.map_mut("CONFIG").expect("CONFIG map"))
            .map_err(|e| bpf_err("open CONFIG", e))?;
    cfg_map
        .set(0, config, 0)
        .map_err(|e| bpf_err("write CONFIG", e))?;
    let mut exclude: BpfHashMap<_, u32, u8> =
        BpfHashMap::try_from(ebpf.map_mut("EXCLUDE").expect("EXCLUDE map"))
            .map_err(|e| bpf_err("open EXCLUDE", e))?;
    exclude
        .insert(std::process::id(), 1, 0)
        .map_err(|e| bpf_err("write EXCLUDE", e))?;
    for (prog, event) in [
        ("sched_fork", "sched_process_fork"),
        ("sched_exit", "sched_process_exit"),
    ] {
        let tp: &mut TracePoint = program(ebpf, prog);
        tp.load().map_err(|e| bpf_err(&format!("load {prog}"), e))?;
        tp.attach("sched", event)
            .map_err(|e| bpf_err(&format!("attach sched/{event}"), e))?;
    }
    Ok(config)
}

/// The VFS-level hooks: fentry on the two fsnotify entry points or, where the kernel cannot
/// attach to `fsnotify()`, fexit on the vfs_* functions. Both also need `__fsnotify_parent` and
/// the inotify watch that keeps it called.
fn attach_fsnotify(
    ebpf: &mut Ebpf,
    kbtf: Option<&aya::Btf>,
    root: &Path,
    offsets: &syncer_ebpf_abi::Offsets,
) -> Result<(Attached, OwnedFd), SourceError> {
    let kbtf = kbtf.ok_or_else(|| SourceError::Unsupported {
        kind: "fentry",
        why: "it needs kernel BTF".into(),
    })?;
    let refused = |what: &str, func: &str, e: &dyn std::error::Error| {
        let mut why = format!("{what} fentry/{func}: {}", verbose(e));
        if why.contains("os error 524") {
            // ENOTSUPP from the trampoline: too many arguments for this kernel.
            why.push_str(
                " (fsnotify() takes seven arguments; x86_64 BPF trampolines accept more than \
                 six only since Linux 6.5)",
            );
        }
        SourceError::Unsupported {
            kind: "fentry",
            why,
        }
    };
    // fsnotify(): the name events. Loaded and attached first, so that a kernel that refuses it
    // leaves nothing attached.
    let p: &mut FEntry = program(ebpf, "fsnotify");
    p.load("fsnotify", kbtf)
        .map_err(|e| refused("loading", "fsnotify", &e))?;
    let attached = match p.attach() {
        Ok(_) => Attached::Fsnotify,
        Err(e) => {
            let why = refused("attaching", "fsnotify", &e).to_string();
            if offsets.rd_old_dentry == u32::MAX {
                return Err(SourceError::Unsupported {
                    kind: "fentry",
                    why: format!("{why}; no struct renamedata for the vfs_* hooks"),
                });
            }
            attach_vfs(ebpf, kbtf).map_err(|e| SourceError::Unsupported {
                kind: "fentry",
                why: format!("{why}; the vfs_* hooks: {e}"),
            })?;
            Attached::Vfs(why)
        }
    };
    let p: &mut FEntry = program(ebpf, "fsnotify_parent");
    p.load("__fsnotify_parent", kbtf)
        .map_err(|e| refused("loading", "__fsnotify_parent", &e))?;
    p.attach()
        .map_err(|e| refused("attaching", "__fsnotify_parent", &e))?;
    Ok((attached, root_watch(root)?))
}

/// fentry/fexit on the vfs_* functions.
fn attach_vfs(ebpf: &mut Ebpf, kbtf: &aya::Btf) -> Result<(), String> {
    const EXITS: &[(&str, &str)] = &[
        ("vfs_open_exit", "vfs_open"),
        ("vfs_create_exit", "vfs_create"),
        ("vfs_mknod_exit", "vfs_mknod"),
        ("vfs_mkdir_exit", "vfs_mkdir"),
        ("vfs_symlink_exit", "vfs_symlink"),
        ("vfs_link_exit", "vfs_link"),
        ("vfs_unlink_exit", "vfs_unlink"),
        ("vfs_rmdir_exit", "vfs_rmdir"),
        ("vfs_rename_exit", "vfs_rename"),
        ("notify_change_exit", "notify_change"),
    ];
    let p: &mut FEntry = program(ebpf, "vfs_rename_entry");
    p.load("vfs_rename", kbtf)
        .and_then(|()| p.attach().map(drop))
        .map_err(|e| format!("fentry/vfs_rename: {}", verbose(&e)))?;
    for (prog, func) in EXITS {
        let p: &mut FExit = program(ebpf, prog);
        p.load(func, kbtf)
            .and_then(|()| p.attach().map(drop))
            .map_err(|e| format!("fexit/{func}: {}", verbose(&e)))?;
    }
    Ok(())
}

/// An inotify watch on the source root: kernels skip fsnotify entirely on filesystems without
/// any fsnotify mark, which would silence `__fsnotify_parent` and `fsnotify`.
fn root_watch(root: &Path) -> Result<OwnedFd, SourceError> {
    // SAFETY: plain syscalls; the fd is owned from here on.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
    if fd < 0 {
        return Err(SourceError::Io {
            what: "inotify_init1".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(root.as_os_str()))
        .map_err(|_| SourceError::Io {
            what: format!("inotify watch on {}", root.display()),
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        })?;
    if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), libc::IN_DELETE_SELF) } < 0 {
        return Err(SourceError::Io {
            what: format!("inotify watch on {}", root.display()),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(fd)
}

/// An error with its sources, each said once ("`bpf_raw_tracepoint_open` failed: Device or
/// resource busy").
fn verbose(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !s.contains(&text) {
            s = format!("{}: {text}", s.trim_end_matches(". Verifier output: "));
        }
        cur = c.source();
    }
    s.trim_end_matches(". Verifier output: ").to_string()
}

/// The raw `sys_enter`/`sys_exit` tracepoints, with the table of followed calls. Two raw
/// tracepoints rather than one tracepoint per call: detaching a tracepoint waits for RCU grace
/// periods one after the other, which made shutdown take seconds with a hundred of them, while
/// the cost of a raw tracepoint on calls not followed is one array lookup.
fn attach_tracepoints(
    ebpf: &mut Ebpf,
    why: String,
) -> Result<(Attached, ProgramArray<MapData>), SourceError> {
    let table = syscalls::table();
    let mut map: Array<_, SysDesc> =
        Array::try_from(ebpf.map_mut("SYSCALLS").expect("SYSCALLS map"))
            .map_err(|e| bpf_err("open SYSCALLS", e))?;
    let mut calls = 0;
    for sc in &table {
        if (0..SYSCALL_SLOTS as i64).contains(&sc.nr) {
            map.set(sc.nr as u32, sc.desc, 0)
                .map_err(|e| bpf_err("write SYSCALLS", e))?;
            calls += 1;
        }
    }
    // sys_exit hands each finished call to its stage by tail call.
    let mut stages = ProgramArray::try_from(ebpf.take_map("EXIT_STAGES").expect("EXIT_STAGES map"))
        .map_err(|e| bpf_err("open EXIT_STAGES", e))?;
    for (i, prog) in ["exit_fd", "exit_open", "exit_path", "exit_rename"]
        .into_iter()
        .enumerate()
    {
        let tp: &mut RawTracePoint = program(ebpf, prog);
        tp.load()
            .map_err(|e| bpf_err(&format!("load {prog}"), verbose(&e)))?;
        let fd = tp.fd().map_err(|e| bpf_err(&format!("fd of {prog}"), e))?;
        stages
            .set(i as u32, fd, 0)
            .map_err(|e| bpf_err("write EXIT_STAGES", e))?;
    }
    // Exit first: an entry without its exit would leave its saved arguments behind.
    for prog in ["sys_exit", "sys_enter"] {
        let tp: &mut RawTracePoint = program(ebpf, prog);
        tp.load()
            .map_err(|e| bpf_err(&format!("load {prog}"), verbose(&e)))?;
        tp.attach(prog)
            .map_err(|e| bpf_err(&format!("attach raw tracepoint {prog}"), verbose(&e)))?;
    }
    Ok((Attached::Tracepoints { calls, why }, stages))
}

/// For `syncer check`: whether each set of hooks loads and attaches on the filesystem of
/// `path` (fsnotify fentry, then syscall tracepoints), each tried for real and detached again.
pub fn probe_hooks(path: &Path) -> [Result<String, String>; 2] {
    let placement = match Placement::find(path) {
        Ok(p) => p,
        Err(e) => {
            let e = format!("cannot place {}: {e}", path.display());
            return [Err(e.clone()), Err(e)];
        }
    };
    [EbpfHooks::Fsnotify, EbpfHooks::Tracepoints].map(|hooks| {
        load(&placement, hooks, PROBE_RING_BYTES)
            .map(|l| match l.attached {
                Attached::Fsnotify => {
                    "fentry on fsnotify and __fsnotify_parent load and attach".to_string()
                }
                Attached::Vfs(why) => format!(
                    "fexit on vfs_* and fentry on __fsnotify_parent load and attach ({why})"
                ),
                Attached::Tracepoints { calls, .. } => {
                    format!(
                        "raw sys_enter/sys_exit load and attach ({calls} system calls followed)"
                    )
                }
            })
            .map_err(|e| e.to_string())
    })
}

#[cfg(test)]
mod tests {
    /// The kernel refuses GPL-only helpers to a program whose license is not GPL-compatible,
    /// and aya's loader would quietly supply "GPL" when the object names none: the object
    /// must declare its own.
    #[test]
    fn the_object_declares_a_gpl_compatible_license() {
        let obj = aya_obj::Object::parse(super::OBJECT).expect("syncer.bpf.o parses");
        assert_eq!(obj.license.to_str().unwrap(), "Dual MIT/GPL");
    }
}
