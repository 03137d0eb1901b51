//! NFS server hosts: the kernel NFS server (nfsd) exports the source, a
//! sub-tree of a loop-mounted ext4 filesystem with a second export beside it, on 127.0.0.1; the
//! kernel NFS client mounts both (NFSv3 and NFSv4.2), and every change below is made through
//! the client mount. syncer watches the export on the server side and must replicate what the
//! clients did, compared byte for byte (modes and mtimes included) with the export:
//! - many files in nested new directories, rewrites, appends, truncates, chmod and set mtimes,
//!   renames of files and directories, deletions (`rm -r` of trees, among them a directory
//!   removed right after being filled, so that its handles go stale), odd names, symlinks and
//!   hard links;
//! - a file kept open and written (each piece committed to the server) for 6 s: it must not
//!   be sent more often than the coalescing window allows (counted in the daemon's log);
//! - silly-renames: a file removed, and one renamed over, while the client holds them open
//!   become `.nfs<hex>` files on the server; they must never reach a target, and the final
//!   state must;
//! - the export beside the source: its changes must not travel.
//!
//! `kernel_v3::{fanotify,ebpf}` and `kernel_v42::{fanotify,ebpf}`: the eBPF source on its
//! VFS-level hooks (the VM kernels allow them). `tracepoints_miss_nfsd`: the syscall tracepoints
//! cannot see nfsd; `syncer check` must say the path is exported, `auto` must not pick them, and
//! choosing them explicitly must be announced as an error.
//!
//! These need a kernel with nfsd and the NFS client (not this host's kind: `cargo xtask
//! vm-test` boots stock Debian kernels with both, and sets `SYNCER_E2E_REQUIRE_NFS=1`, which
//! makes a skip a failure). One NFS server at a time: the scenarios take a lock.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::util::*;

/// The NFS server programs the scenarios run.
const SERVER_TOOLS: &[&str] = &[
    "rpc.nfsd",
    "rpc.mountd",
    "exportfs",
    "nfsdcld",
    "rpcbind",
    "mount.nfs",
];
/// The coalescing delay of these scenarios (milliseconds): longer than the long write's
/// pauses between pieces (100 ms plus a commit), so that the file is never quiet for a delay
/// while it is written and only the hold applies: a path that keeps changing is sent at the
/// latest ten delays after its first event.
const NFS_DELAY_MS: u64 = 300;
const HOLD_MS: u64 = NFS_DELAY_MS * 10;

/// One NFS server at a time on this host.
static SERVER: Mutex<()> = Mutex::new(());

/// Why this machine cannot run the kernel NFS server and client, if it cannot.
fn missing() -> Option<String> {
    let filesystems = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    for (fs_name, what) in [("nfsd", "NFS server (nfsd)"), ("nfs", "NFS client")] {
        if !filesystems
            .lines()
            .any(|l| l.split_whitespace().last() == Some(fs_name))
        {
            return Some(format!(
                "the kernel has no {what}; `cargo xtask vm-test` runs these scenarios on stock \
                 Debian kernels"
            ));
        }
    }
    for t in SERVER_TOOLS {
        if !tool(t).is_file() {
            return Some(format!(
                "`{t}` not found (Debian's nfs-kernel-server, nfs-common, rpcbind)"
            ));
        }
    }
    None
}

/// [`skip`], then whether the NFS scenarios cannot run here (printing `SKIP:`); with
/// `SYNCER_E2E_REQUIRE_NFS=1` that is a failure.
fn nfs_skip() -> bool {
    if skip() {
        return true;
    }
    let Some(reason) = missing() else {
        return false;
    };
    let required = std::env::var_os("SYNCER_E2E_REQUIRE_NFS").is_some_and(|v| v == "1");
    assert!(!required, "cannot run the NFS scenarios: {reason}");
    eprintln!("SKIP: {reason}");
    true
}

/// The NFS protocol version a client mount speaks.
#[derive(Clone, Copy, Debug)]
enum Version {
    V3,
    V42,
}

impl Version {
    fn options(self) -> &'static str {
        match self {
            // No lock manager (rpc.statd) in these scenarios.
            Version::V3 => "vers=3,nolock,proto=tcp",
            Version::V42 => "vers=4.2,proto=tcp",
        }
    }
}

/// The kernel NFS server with its helpers (rpcbind, the NFSv4 client-tracking daemon started
/// first so that a fresh server skips its grace period, mountd), exporting some directories
/// to 127.0.0.1. Drop stops it all.
struct KernelNfs {
    daemons: Vec<(&'static str, Child)>,
    tracking: TempDir,
    _one_at_a_time: MutexGuard<'static, ()>,
}

fn run_ok(cmd: &mut Command) {
    if let Err(e) = run_tool(cmd) {
        panic!("{e}");
    }
}

fn mounted(path: &str) -> bool {
    fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(path))
}

impl KernelNfs {
    fn start(exports: &[&Path]) -> KernelNfs {
        let guard = SERVER.lock().unwrap_or_else(|e| e.into_inner());
        let threads = fs::read_to_string("/proc/fs/nfsd/threads").unwrap_or_default();
        assert!(
            threads.trim().parse::<u32>().unwrap_or(0) == 0,
            "an NFS server already runs on this host ({} threads): these scenarios start their own",
            threads.trim()
        );
        if !mounted("/proc/fs/nfsd") {
            run_ok(Command::new(tool("mount")).args(["-t", "nfsd", "nfsd", "/proc/fs/nfsd"]));
        }
        for d in ["/var/lib/nfs/rpc_pipefs", "/run/rpcbind", "/etc/exports.d"] {
            mkdirs(Path::new(d));
        }
        for f in ["/var/lib/nfs/etab", "/var/lib/nfs/rmtab", "/etc/exports"] {
            if !Path::new(f).exists() {
                write_file(Path::new(f), b"");
            }
        }
        if !mounted("/var/lib/nfs/rpc_pipefs") {
            run_ok(Command::new(tool("mount")).args([
                "-t",
                "rpc_pipefs",
                "sunrpc",
                "/var/lib/nfs/rpc_pipefs",
            ]));
        }
        let tracking = temp_dir("nfsdcld");
        let mut nfs = KernelNfs {
            daemons: Vec::new(),
            tracking,
            _one_at_a_time: guard,
        };
        nfs.daemon("rpcbind", &["-f"]);
        wait_until("rpcbind listens on port 111", || {
            TcpStream::connect_timeout(
                &SocketAddr::from((Ipv4Addr::LOCALHOST, 111)),
                Duration::from_millis(200),
            )
            .is_ok()
        });
        let db = nfs.tracking.path().to_str().unwrap().to_string();
        // It waits for nfsd's upcall pipe, which appears when nfsd starts.
        nfs.daemon("nfsdcld", &["-F", "-s", &db]);
        thread::sleep(Duration::from_millis(300));
        for (i, e) in exports.iter().enumerate() {
            run_ok(Command::new(tool("exportfs")).args([
                "-o".to_string(),
                format!("rw,sync,no_root_squash,no_subtree_check,fsid={}", 100 + i),
                format!("127.0.0.1:{}", e.display()),
            ]));
        }
        nfs.daemon("rpc.mountd", &["-F"]);
        // A short grace period, in case the tracking daemon cannot lift it.
        for knob in ["nfsv4gracetime", "nfsv4leasetime"] {
            let _ = fs::write(format!("/proc/fs/nfsd/{knob}"), "10");
        }
        run_ok(Command::new(tool("rpc.nfsd")).arg("8"));
        nfs
    }

    fn daemon(&mut self, name: &'static str, args: &[&str]) {
        let child = Command::new(tool(name))
            .args(args)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        self.daemons.push((name, child));
    }

    /// Mounts `export` from 127.0.0.1 with the kernel NFS client.
    fn mount(&self, export: &Path, version: Version) -> NfsMount {
        let dir = temp_dir("nfs-client");
        let path = dir.path().join("mnt");
        mkdirs(&path);
        run_ok(
            Command::new(tool("mount"))
                .args(["-t", "nfs", "-o", version.options()])
                .arg(format!("127.0.0.1:{}", export.display()))
                .arg(&path),
        );
        NfsMount { path, _dir: dir }
    }
}

impl Drop for KernelNfs {
    fn drop(&mut self) {
        let _ = run_tool(Command::new(tool("rpc.nfsd")).arg("0"));
        let _ = run_tool(Command::new(tool("exportfs")).args(["-ua"]));
        for (_, child) in self.daemons.iter_mut().rev() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A kernel NFS client mount; drop unmounts it.
struct NfsMount {
    path: PathBuf,
    _dir: TempDir,
}

impl Drop for NfsMount {
    fn drop(&mut self) {
        for _ in 0..20 {
            if run_tool(Command::new(tool("umount")).arg(&self.path)).is_ok() {
                return;
            }
            thread::sleep(Duration::from_millis(200));
        }
        let _ = run_tool(
            Command::new(tool("umount"))
                .args(["-f", "-l"])
                .arg(&self.path),
        );
    }
}

/// Every `.nfs*` name anywhere below `dir`.
fn silly_names_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(".nfs") {
                out.push(e.path());
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
    }
    out
}

/// What a workload does, through one NFS client or another: a kernel NFS mount or the
/// server's own directory ([`Direct`]), or libnfs speaking the protocol itself
/// (`ganesha.rs`). Paths are relative to the export; every call panics on failure.
pub(crate) trait Client {
    /// `mkdir -p`.
    fn mkdirs(&mut self, rel: &Path);
    /// Creates or truncates a file, writes `data`, sets mode 0644, closes it.
    fn write(&mut self, rel: &Path, data: &[u8]);
    fn append(&mut self, rel: &Path, data: &[u8]);
    fn truncate(&mut self, rel: &Path, len: u64);
    fn chmod(&mut self, rel: &Path, mode: u32);
    /// Sets atime and mtime (to microseconds at least).
    fn set_mtime(&mut self, rel: &Path, secs: i64, nsec: i64);
    fn rename(&mut self, from: &Path, to: &Path);
    fn remove_file(&mut self, rel: &Path);
    fn remove_dir(&mut self, rel: &Path);
    fn symlink(&mut self, target: &str, rel: &Path);
    fn hard_link(&mut self, from: &Path, to: &Path);
    /// Creates `rel` (mode 0644) and keeps it open for [`Client::piece`].
    fn open_long(&mut self, rel: &Path);
    /// Writes to the open file and commits the write to the server (fsync).
    fn piece(&mut self, data: &[u8]);
    fn close_long(&mut self);
    /// Whether this client can chmod a directory (Debian's libnfs 4.0 cannot over NFSv4).
    fn chmods_directories(&self) -> bool {
        true
    }
}

/// A [`Client`] on a directory: a kernel NFS client mount, or the export on the server.
pub(crate) struct Direct {
    root: PathBuf,
    long: Option<File>,
}

impl Direct {
    pub(crate) fn new(root: &Path) -> Direct {
        Direct {
            root: root.to_path_buf(),
            long: None,
        }
    }
}

impl Client for Direct {
    fn mkdirs(&mut self, rel: &Path) {
        mkdirs(&self.root.join(rel));
    }
    fn write(&mut self, rel: &Path, data: &[u8]) {
        let p = self.root.join(rel);
        OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o644)
            .open(&p)
            .and_then(|mut f| f.write_all(data))
            .unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    }
    fn append(&mut self, rel: &Path, data: &[u8]) {
        append_file(&self.root.join(rel), data);
    }
    fn truncate(&mut self, rel: &Path, len: u64) {
        let p = self.root.join(rel);
        OpenOptions::new()
            .write(true)
            .open(&p)
            .and_then(|f| f.set_len(len))
            .unwrap_or_else(|e| panic!("truncate {}: {e}", p.display()));
    }
    fn chmod(&mut self, rel: &Path, mode: u32) {
        chmod(&self.root.join(rel), mode);
    }
    fn set_mtime(&mut self, rel: &Path, secs: i64, nsec: i64) {
        set_mtime(&self.root.join(rel), secs, nsec);
    }
    fn rename(&mut self, from: &Path, to: &Path) {
        rename(&self.root.join(from), &self.root.join(to));
    }
    fn remove_file(&mut self, rel: &Path) {
        let p = self.root.join(rel);
        fs::remove_file(&p).unwrap_or_else(|e| panic!("rm {}: {e}", p.display()));
    }
    fn remove_dir(&mut self, rel: &Path) {
        let p = self.root.join(rel);
        fs::remove_dir(&p).unwrap_or_else(|e| panic!("rmdir {}: {e}", p.display()));
    }
    fn symlink(&mut self, target: &str, rel: &Path) {
        symlink(target, &self.root.join(rel));
    }
    fn hard_link(&mut self, from: &Path, to: &Path) {
        fs::hard_link(self.root.join(from), self.root.join(to)).unwrap();
    }
    fn open_long(&mut self, rel: &Path) {
        let p = self.root.join(rel);
        let f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o644)
            .open(&p)
            .unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
        self.long = Some(f);
    }
    fn piece(&mut self, data: &[u8]) {
        let f = self.long.as_mut().expect("no file open");
        f.write_all(data).unwrap();
        f.sync_data().unwrap();
    }
    fn close_long(&mut self) {
        self.long = None;
    }
}

/// `rm -r` of `rel` through `c`, deepest first, listing what to remove from the export's
/// directory on the server (`server`).
pub(crate) fn remove_tree(c: &mut dyn Client, server: &Path, rel: &Path) {
    let mut entries: Vec<PathBuf> = fs::read_dir(server.join(rel))
        .unwrap()
        .map(|e| rel.join(e.unwrap().file_name()))
        .collect();
    entries.sort();
    for e in entries {
        if fs::symlink_metadata(server.join(&e)).unwrap().is_dir() {
            remove_tree(c, server, &e);
        } else {
            c.remove_file(&e);
        }
    }
    c.remove_dir(rel);
}

/// What the workload's long write did.
pub(crate) struct LongWrite {
    pub(crate) name: String,
    pub(crate) writes: usize,
    pub(crate) took: Duration,
}

/// The mixed workload, all through `c` (and `beside`, a client of the other export); `server`
/// is the export's directory on the server.
pub(crate) fn workload(c: &mut dyn Client, beside: &mut dyn Client, server: &Path) -> LongWrite {
    let p = |s: String| PathBuf::from(s);
    let mut rng = Rng::new(0x6e66_7321);
    // Many files in nested new directories.
    for d in 0..4 {
        for e in 0..4 {
            let dir = p(format!("new/d{d}/e{e}"));
            c.mkdirs(&dir);
            for f in 0..10 {
                let len = rng.below(24 * 1024) as usize;
                c.write(&dir.join(format!("f{f}.dat")), &rng.bytes(len));
            }
        }
    }
    // Rewrites (same size), appends, truncates, chmod and mtimes on the existing tree.
    for i in 0..20 {
        let f = p(format!("new/d0/e{}/f{}.dat", i % 4, i % 10));
        let len = fs::metadata(server.join(&f)).unwrap().len() as usize;
        c.write(&f, &rng.bytes(len));
    }
    for i in 0..20 {
        c.append(
            &p(format!("new/d1/e{}/f{}.dat", i % 4, i % 10)),
            &rng.bytes(3000),
        );
    }
    for i in 0..10 {
        c.truncate(&p(format!("new/d2/e{}/f{i}.dat", i % 4)), (i * 100) as u64);
    }
    c.chmod(Path::new("new/d3/e0/f0.dat"), 0o600);
    if c.chmods_directories() {
        c.chmod(Path::new("new/d3/e1"), 0o750);
    }
    c.set_mtime(Path::new("new/d3/e0/f1.dat"), 1_500_000_000, 123_456_789);
    // Renames of files (across directories, and over an existing file) and of a directory.
    c.mkdirs(Path::new("moved"));
    for f in 0..5 {
        c.rename(
            &p(format!("new/d3/e2/f{f}.dat")),
            &p(format!("moved/from-e2-{f}.dat")),
        );
    }
    c.rename(Path::new("new/d3/e2/f9.dat"), Path::new("new/d3/e3/f0.dat"));
    c.rename(Path::new("new/d1"), Path::new("moved/d1-renamed"));
    // Deletions: files, a tree, and a directory filled and removed at once (its handles go
    // stale before the events about it are read).
    for f in 5..9 {
        c.remove_file(&p(format!("new/d3/e2/f{f}.dat")));
    }
    remove_tree(c, server, Path::new("new/d2"));
    for round in 0..5 {
        let tmp = p(format!("tmp-{round}"));
        c.mkdirs(&tmp.join("inner"));
        for f in 0..10 {
            c.write(&tmp.join(format!("inner/t{f}")), b"temporary\n");
        }
        remove_tree(c, server, &tmp);
    }
    // Odd names, a symlink, a hard link.
    let odd = Path::new("odd");
    c.mkdirs(odd);
    for name in [
        &b"with space"[..],
        b"tab\there",
        b"new\nline",
        b"-leading-dash",
        b"\xc3\xbcnic\xc3\xb6de",
        b"bad-utf8-\xff\xfe",
        b"star*question?",
        &[b'l'; 255][..],
    ] {
        c.write(&odd.join(os(name)), name);
    }
    c.symlink("../new/d0/e0/f0.dat", &odd.join("link"));
    c.hard_link(Path::new("new/d0/e1/f1.dat"), &odd.join("hard"));
    // The export beside the source.
    for d in 0..3 {
        let dir = p(format!("not-ours/d{d}"));
        beside.mkdirs(&dir);
        for f in 0..10 {
            beside.write(&dir.join(format!("f{f}")), &rng.bytes(100));
        }
    }

    // A file kept open and written, each piece committed to the server, for seconds.
    let name = "long/open.log".to_string();
    c.mkdirs(Path::new("long"));
    c.open_long(Path::new(&name));
    let started = Instant::now();
    let mut writes = 0;
    while started.elapsed() < Duration::from_secs(6) {
        c.piece(&rng.bytes(4096));
        writes += 1;
        thread::sleep(Duration::from_millis(100));
    }
    c.close_long();
    LongWrite {
        name,
        writes,
        took: started.elapsed(),
    }
}

/// The kernel NFS client's habit: a file removed, and one renamed over, while the client holds
/// them open become `.nfs<hex>` files on the server. Returns the open files (written to after
/// the remove); once they are closed, the client removes the silly-renamed files.
fn silly_renames(c: &Path, server: &Path) -> (File, File) {
    let silly = c.join("silly");
    mkdirs(&silly);
    write_file(&silly.join("held"), b"held open\n");
    write_file(&silly.join("target"), b"old target\n");
    write_file(&silly.join("newer"), b"the new target\n");
    let mut held = OpenOptions::new()
        .read(true)
        .write(true)
        .open(silly.join("held"))
        .unwrap();
    let held_target = File::open(silly.join("target")).unwrap();
    fs::remove_file(silly.join("held")).unwrap();
    fs::rename(silly.join("newer"), silly.join("target")).unwrap();
    let server_side = silly_names_below(&server.join("silly"));
    assert_eq!(
        server_side.len(),
        2,
        "the client should have silly-renamed the two open files on the server: {server_side:?}"
    );
    held.write_all(b"written after the remove\n").unwrap();
    held.sync_data().unwrap();
    (held, held_target)
}

/// Replication latency of a steady stream of new files: p50 and p99 from each file's close
/// to its name appearing in the local target (rsync renames it into place), and how many
/// the writer wrote per second.
pub(crate) struct Latency {
    pub(crate) files: usize,
    pub(crate) rate: f64,
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
}

/// Writes `n` 1 KiB files into `<sub>` through `writers` (NFS clients, or the server itself),
/// taking turns, at `rate` per second in all, and times each one's arrival in `target/<sub>`,
/// watched with inotify.
pub(crate) fn latency(
    writers: &mut [&mut (dyn Client + Send)],
    target: &Path,
    sub: &str,
    n: usize,
    rate: u32,
) -> Latency {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    use std::collections::HashMap;
    use std::sync::Arc;

    writers[0].mkdirs(Path::new(sub));
    let arrived_dir = target.join(sub);
    wait_until("the stream's directory reaches the target", || {
        arrived_dir.is_dir()
    });
    let ino = Inotify::init(InitFlags::IN_CLOEXEC).unwrap();
    ino.add_watch(
        &arrived_dir,
        AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_CREATE,
    )
    .unwrap();
    let arrivals: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let seen = arrivals.clone();
    let reader = thread::spawn(move || {
        while seen.lock().unwrap().len() < n {
            let Ok(events) = ino.read_events() else { break };
            let now = Instant::now();
            let mut seen = seen.lock().unwrap();
            for e in events {
                if let Some(name) = e.name.and_then(|n| n.into_string().ok()) {
                    if !name.starts_with('.') {
                        seen.entry(name).or_insert(now);
                    }
                }
            }
        }
    });
    let start = Instant::now();
    let k = writers.len();
    let mut closed = vec![start; n];
    thread::scope(|scope| {
        let mut turns = Vec::new();
        for (j, w) in writers.iter_mut().enumerate() {
            turns.push(scope.spawn(move || {
                let mut times = Vec::new();
                for i in (j..n).step_by(k) {
                    let due = start + Duration::from_secs_f64(i as f64 / f64::from(rate));
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        thread::sleep(wait);
                    }
                    w.write(&Path::new(sub).join(format!("f{i:05}")), &[b'x'; 1024]);
                    times.push((i, Instant::now()));
                }
                times
            }));
        }
        for t in turns {
            for (i, at) in t.join().unwrap() {
                closed[i] = at;
            }
        }
    });
    let wrote = start.elapsed();
    wait_until("every file of the stream arrives", || {
        arrivals.lock().unwrap().len() >= n
    });
    // The reader stops at the n-th arrival.
    reader.join().unwrap();
    let arrivals = arrivals.lock().unwrap();
    let mut lat: Vec<Duration> = (0..n)
        .map(|i| arrivals[&format!("f{i:05}")].saturating_duration_since(closed[i]))
        .collect();
    lat.sort();
    Latency {
        files: n,
        rate: n as f64 / wrote.as_secs_f64(),
        p50: lat[n / 2],
        p99: lat[(n * 99 / 100).min(n - 1)],
    }
}

/// A figure for the report: on the VM's console (the test's own output is captured), else
/// stderr.
fn report(line: &str) {
    eprintln!("{line}");
    if std::env::var_os("SYNCER_VM_KERNEL").is_some() {
        if let Ok(mut c) = OpenOptions::new().write(true).open("/dev/console") {
            let _ = writeln!(c, "{line}");
        }
    }
}

/// `syncer run` on the rig's source with `kind`, both targets, a state directory and
/// [`NFS_DELAY_MS`], once its initial sync is done.
pub(crate) fn start_syncer(rig: &Rig, kind: SourceKind) -> Syncer {
    start_syncer_with(rig, kind, &NFS_DELAY_MS.to_string())
}

/// [`start_syncer`] with another `--delay`.
fn start_syncer_with(rig: &Rig, kind: SourceKind, delay_ms: &str) -> Syncer {
    let mut args: Vec<std::ffi::OsString> = vec![
        "run".into(),
        "--source".into(),
        rig.src.clone().into(),
        "--state-dir".into(),
        rig.state_dir().into(),
    ];
    args.extend(rig.target_args());
    args.extend(kind.args().into_iter().map(Into::into));
    args.extend(["--delay".into(), delay_ms.into()]);
    let mut syncer = Syncer::spawn(args);
    syncer.wait_for_log(INITIAL_SYNC_FINISHED, MARKER_TIMEOUT);
    syncer
}

/// What the daemon target received during the workload: no `.nfs*` name, nothing of the other
/// export, and the long write at most once per hold window (and a couple around it).
pub(crate) fn check_transfers(rig: &Rig, long: &LongWrite) {
    let received = rig.daemon.received();
    let junk: Vec<&String> = received
        .iter()
        .filter(|n| n.split('/').any(|c| c.starts_with(".nfs")))
        .collect();
    assert!(
        junk.is_empty(),
        "silly-renames reached the target: {junk:?}"
    );
    for t in rig.target_dirs() {
        assert!(silly_names_below(t).is_empty());
    }
    let beside_sent: Vec<&String> = received.iter().filter(|n| n.contains("not-ours")).collect();
    assert!(
        beside_sent.is_empty(),
        "the other export's files travelled: {beside_sent:?}"
    );
    let sent = received.iter().filter(|n| **n == long.name).count();
    let allowed = (long.took.as_millis() as u64).div_ceil(HOLD_MS) as usize + 3;
    eprintln!(
        "{}: {} committed writes over {:.1?}, sent {sent} times (allowed {allowed})",
        long.name, long.writes, long.took
    );
    assert!(
        sent >= 1 && sent <= allowed && sent < long.writes,
        "{} was written {} times over {:.1?} and sent {sent} times (at most {allowed} allowed)",
        long.name,
        long.writes,
        long.took
    );
}

/// Figures (not asserted), under syncer's default delay (`syncer` is stopped, and a new one
/// started on the same state, which also shows a restart catching up): `n` new files written
/// at 500/s through `nfs`, and the same written on the server; their latency, and the
/// transfers per file written over NFS. Reported as one `NFS-FIGURES <label> ...` line.
pub(crate) fn figures(
    rig: &Rig,
    syncer: Syncer,
    kind: SourceKind,
    nfs: &mut [&mut (dyn Client + Send)],
    n: usize,
    label: &str,
    long: &LongWrite,
) {
    syncer.stop();
    let mut syncer = start_syncer_with(rig, kind, DELAY_MS);
    let before = rig.daemon.received().len();
    let nfs_stream = latency(nfs, &rig.local, "stream-nfs", n, 500);
    let local_stream = latency(
        &mut [&mut Direct::new(&rig.src)],
        &rig.local,
        "stream-local",
        n,
        500,
    );
    rig.assert_converges(&mut syncer);
    syncer.stop();
    let received = rig.daemon.received();
    let sent = received[before..]
        .iter()
        .filter(|n| n.starts_with("stream-nfs/f"))
        .count();
    report(&format!(
        "NFS-FIGURES {label} delay {DELAY_MS} ms: through NFS ({} clients) {} files at {:.0}/s: p50 {:.0?} p99 {:.0?}, {:.2} \
         transfers per file; written on the server at {:.0}/s: p50 {:.0?} p99 {:.0?}; long \
         write: {} commits over {:.1?}, sent {} times",
        nfs.len(),
        nfs_stream.files,
        nfs_stream.rate,
        nfs_stream.p50,
        nfs_stream.p99,
        sent as f64 / nfs_stream.files as f64,
        local_stream.rate,
        local_stream.p50,
        local_stream.p99,
        long.writes,
        long.took,
        received.iter().filter(|n| **n == long.name).count(),
    ));
}

fn scenario(version: Version, kind: SourceKind) {
    if nfs_skip() {
        return;
    }
    let Some(rig) = Rig::new() else { return };
    let beside = rig.fs.mkdir("other-export");
    make_tree(&rig.src.join("before"), &TreeSpec::new(200));
    let nfs = KernelNfs::start(&[&rig.src, &beside]);
    let client = nfs.mount(&rig.src, version);
    let client_beside = nfs.mount(&beside, version);

    let mut syncer = start_syncer(&rig, kind);
    if kind == SourceKind::Ebpf {
        assert!(
            syncer.log_contains("VFS level: sees every writer"),
            "the eBPF source should run on its VFS-level hooks on this kernel:\n{}",
            syncer.log()
        );
    }

    // The silly-renamed files are there, changing, all through the workload: none may be sent.
    let held = silly_renames(&client.path, &rig.src);
    let long = workload(
        &mut Direct::new(&client.path),
        &mut Direct::new(&client_beside.path),
        &rig.src,
    );
    drop(held);
    rig.assert_converges(&mut syncer);
    // Once the client let go of them, the silly-renamed files are gone from the server too.
    assert!(silly_names_below(&rig.src).is_empty());
    check_transfers(&rig, &long);

    // 300 files each: under the VMs' emulation a writer reaches tens of files a second.
    let label = format!(
        "kernel {} nfsd {version:?} source {}",
        std::env::var("SYNCER_VM_KERNEL").unwrap_or_default(),
        kind.arg()
    );
    figures(
        &rig,
        syncer,
        kind,
        &mut [&mut Direct::new(&client.path)],
        300,
        &label,
        &long,
    );
}

mod kernel_v3 {
    use super::*;

    #[test]
    fn fanotify() {
        scenario(Version::V3, SourceKind::Fanotify);
    }

    #[test]
    fn ebpf() {
        scenario(Version::V3, SourceKind::Ebpf);
    }
}

mod kernel_v42 {
    use super::*;

    #[test]
    fn fanotify() {
        scenario(Version::V42, SourceKind::Fanotify);
    }

    #[test]
    fn ebpf() {
        scenario(Version::V42, SourceKind::Ebpf);
    }
}

/// The syscall tracepoints cannot see nfsd: `syncer check` names the export and `auto` does
/// not pick them; asked for explicitly, they are announced as an error, and indeed miss what a
/// client writes.
#[test]
fn tracepoints_miss_nfsd() {
    if nfs_skip() {
        return;
    }
    let Some(rig) = Rig::new() else { return };
    let nfs = KernelNfs::start(&[&rig.src]);
    let client = nfs.mount(&rig.src, Version::V42);

    let check = run_syncer(["check", "--path", rig.src.to_str().unwrap()], EXIT_TIMEOUT);
    assert_eq!(check.code(), Some(0), "{}", check.stderr);
    assert!(
        check
            .stdout
            .contains("the kernel NFS server (running) exports"),
        "`syncer check` does not say the path is exported:\n{}",
        check.stdout
    );
    let auto = check
        .stdout
        .lines()
        .find(|l| l.starts_with("auto would use:"))
        .unwrap_or_default();
    assert!(
        auto.starts_with("auto would use: ") && !auto.contains("use: ebpf (syscall tracepoints)"),
        "auto would pick the tracepoints on an NFS export: {auto}"
    );
    let exported = format!("exports {}:", rig.src.display());
    assert!(
        check.stdout.contains(&exported),
        "`syncer check` should name the export, and only it ({exported}):\n{}",
        check.stdout
    );

    // Live with `--source-kind KIND --ebpf-hooks tracepoints`, no initial sync.
    let live_with = |kind: &str| {
        let mut args: Vec<std::ffi::OsString> = vec![
            "run".into(),
            "--source".into(),
            rig.src.clone().into(),
            "--no-initial-sync".into(),
        ];
        args.extend(rig.target_args());
        args.extend(["--source-kind", kind, "--ebpf-hooks", "tracepoints"].map(Into::into));
        let mut s = Syncer::spawn(args);
        s.wait_for_log(LIVE, MARKER_TIMEOUT);
        s
    };
    // auto limited to the tracepoints and fanotify: fanotify.
    let auto = live_with("auto");
    assert!(
        auto.log_contains("event source live: fanotify"),
        "{}",
        auto.log()
    );
    auto.stop();

    // Explicitly the tracepoints: an error at start, and a client's write is indeed missed.
    // The policy's error follows the live marker (it is logged once the source is up).
    let mut blind = live_with("ebpf");
    if let Err(e) = blind.try_wait_for_log("will NOT be replicated", MARKER_TIMEOUT) {
        panic!("no error about the NFS export: {e}");
    }
    // A directory made on the server (seen), then a file made in it by a client (not seen),
    // then a file made on the server elsewhere (seen; its parent's shallow sync does not
    // reach into the directory).
    mkdirs(&rig.src.join("dir"));
    wait_until(
        "the directory made on the server reaches the target",
        || rig.daemon.path().join("dir").is_dir(),
    );
    write_file(
        &client.path.join("dir/through-nfs"),
        b"written by an NFS client\n",
    );
    write_file(&rig.src.join("written-locally"), b"written on the server\n");
    wait_until("the local write reaches the target", || {
        rig.daemon.path().join("written-locally").exists()
    });
    thread::sleep(Duration::from_secs(2));
    assert!(
        !rig.daemon.path().join("dir/through-nfs").exists(),
        "the tracepoints saw nfsd's write: then this scenario's premise is wrong"
    );
    blind.stop();
}
