//! Ingest benchmark of syncer's kernel event sources: how fast the eBPF, fanotify and inotify
//! sources read, resolve and coalesce the records of one synthetic load, and what that costs in
//! CPU on the writer's side and in syncer.
//!
//! Run as root (it mounts loop filesystems, loads eBPF programs and marks filesystems with
//! fanotify): `cargo bench -p syncer --bench ingest`. Without root it prints a SKIP line and exits
//! 0; without `--bench` (e.g. under `cargo test --all-targets`) it does nothing. The table goes
//! to stdout and to `bench/results/ingest.md`.
//!
//! Workloads (each on a fresh 1 GiB ext4 loop image in /dev/shm, 100 directories made before the
//! source starts):
//! - `create`: N new files (default 100 000), each `open(O_CREAT|O_WRONLY)`, 100-byte `write`,
//!   `close`, round-robin over the 100 directories;
//! - `rewrite`: 1 000 000 `write(2)` calls of 64 bytes, round-robin over 100 files that exist
//!   before the source starts (the case where coalescing in the kernel matters);
//! - `mixed`: N operations in cycles of create (as above), rename within the directory, chmod,
//!   unlink.
//!
//! Every workload runs with each source and once with no source at all (the writer's baseline),
//! `INGEST_REPS` times (default 3); the table shows medians. The writer is a separate process
//! (this binary with a hidden `--writer` argument), started by a launcher process that is forked
//! before any eBPF program is loaded: the eBPF source excludes syncer's own descendants, so a
//! writer forked by this process would be invisible to it. The writer's CPU is its `wait4`
//! rusage (user + sys, so it includes what the kernel hooks cost in its system calls). syncer's
//! CPU is this process's CPU minus the main thread's (which only polls counters), over the run:
//! the source thread's read, resolve and dedup inserts. The map is never drained (no rsync), so
//! the number of distinct pending paths at the end shows what the coalescing produced.
//!
//! Ingestion is complete once the writer has exited and `SourceStats::events` has not moved for
//! 300 ms; the ingest time runs from the writer's first operation to the last change of that
//! counter (or the writer's end, if later).
//!
//! Knobs: `INGEST_SCALE` (default 1; e.g. 0.1 for a quick run) scales every N,
//! `INGEST_REPS` (default 3), `INGEST_WORKLOADS` (e.g. `create,rewrite`),
//! `INGEST_SOURCES` (e.g. `ebpf,fanotify`; the baseline always runs), `RUST_LOG` (default `warn`).

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use syncer::queue::DedupMap;
use syncer::queue::Fanout;
use syncer::shutdown::Shutdown;
use syncer::source::{start, SourceConfig, SourceHandle, SourceStats};
use syncer::source::{EbpfHooks, QueueMode, SourceKind};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Directories every workload spreads over.
const DIRS: u64 = 100;
/// How long the record counter must stand still after the writer exited.
const QUIET_NS: u64 = 300_000_000;
/// Give up waiting for a source that keeps reading this long after the writer exited.
const TAIL_LIMIT_NS: u64 = 300_000_000_000;
/// Size of the sparse filesystem image.
const IMAGE_BYTES: u64 = 1 << 30;
/// Inodes of the image (mkfs's default ratio gives 65 536, too few for `create`).
const IMAGE_INODES: &str = "262144";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--writer") => std::process::exit(writer_main(&args[2..])),
        Some("--launcher") => std::process::exit(launcher_main()),
        _ => {}
    }
    if !args.iter().any(|a| a == "--bench") {
        println!(
            "ingest: not run (no --bench); use `cargo bench -p syncer --bench ingest` as root"
        );
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!(
            "SKIP ingest: needs root (mounts loop filesystems, loads eBPF programs, uses fanotify)"
        );
        return;
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = bench_main() {
        eprintln!("ingest: {e}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------------------------
// Workloads and the writer process

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    Create,
    Rewrite,
    Mixed,
}

impl Workload {
    const ALL: [Workload; 3] = [Workload::Create, Workload::Rewrite, Workload::Mixed];

    fn name(self) -> &'static str {
        match self {
            Workload::Create => "create",
            Workload::Rewrite => "rewrite",
            Workload::Mixed => "mixed",
        }
    }

    fn parse(s: &str) -> Option<Workload> {
        Workload::ALL.into_iter().find(|w| w.name() == s)
    }

    /// Operations at `scale`.
    fn ops(self, scale: f64) -> u64 {
        let full = match self {
            Workload::Create | Workload::Mixed => 100_000.0,
            Workload::Rewrite => 1_000_000.0,
        };
        let n = ((full * scale).round() as u64).max(DIRS);
        match self {
            Workload::Mixed => n / 4 * 4,
            _ => n,
        }
    }

    /// What exists before the source starts.
    fn prepare(self, root: &Path) -> Res<()> {
        for d in 0..DIRS {
            let dir = root.join(format!("d{d:02}"));
            std::fs::create_dir(&dir)?;
            if self == Workload::Rewrite {
                std::fs::File::create(dir.join("r.dat"))?;
            }
        }
        // SAFETY: sync has no preconditions; it keeps writeback of the setup out of the run.
        unsafe { libc::sync() };
        Ok(())
    }
}

/// CLOCK_MONOTONIC in nanoseconds: one clock for this process and the writer.
fn mono_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to fill.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// `--writer <workload> <n> <dir>`: runs the workload and prints `ops start_ns end_ns`.
fn writer_main(args: &[String]) -> i32 {
    let (Some(wl), Some(n), Some(root)) = (
        args.first().and_then(|s| Workload::parse(s)),
        args.get(1).and_then(|s| s.parse::<u64>().ok()),
        args.get(2),
    ) else {
        eprintln!("usage: --writer create|rewrite|mixed N DIR");
        return 2;
    };
    let start = mono_ns();
    let ops = match wl {
        Workload::Create => write_create(root, n),
        Workload::Rewrite => write_rewrite(root, n),
        Workload::Mixed => write_mixed(root, n),
    };
    let end = mono_ns();
    println!("{ops} {start} {end}");
    0
}

/// A NUL-terminated path in a reused buffer.
struct CPath(Vec<u8>);

impl CPath {
    fn set(&mut self, args: std::fmt::Arguments) -> *const libc::c_char {
        self.0.clear();
        self.0
            .write_fmt(args)
            .expect("formatting into a Vec cannot fail");
        self.0.push(0);
        self.0.as_ptr().cast()
    }
}

fn check(r: libc::c_long, what: &str) -> libc::c_long {
    if r < 0 {
        panic!("writer: {what}: {}", std::io::Error::last_os_error());
    }
    r
}

/// open(O_CREAT|O_WRONLY) + 100-byte write + close of the file at `path`.
fn create_file(path: *const libc::c_char, data: &[u8; 100]) {
    // SAFETY: path is NUL-terminated; data is 100 readable bytes.
    unsafe {
        let fd = check(
            libc::open(
                path,
                libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                0o644,
            ) as _,
            "open",
        ) as libc::c_int;
        let n = check(
            libc::write(fd, data.as_ptr().cast(), data.len()) as _,
            "write",
        );
        assert_eq!(n as usize, data.len(), "short write");
        libc::close(fd);
    }
}

fn write_create(root: &str, n: u64) -> u64 {
    let data = [b'x'; 100];
    let mut p = CPath(Vec::with_capacity(256));
    for i in 0..n {
        create_file(
            p.set(format_args!("{root}/d{:02}/c{i:07}", i % DIRS)),
            &data,
        );
    }
    n
}

fn write_rewrite(root: &str, n: u64) -> u64 {
    let data = [b'y'; 64];
    let mut p = CPath(Vec::with_capacity(256));
    let fds: Vec<libc::c_int> = (0..DIRS)
        .map(|d| {
            // SAFETY: the path is NUL-terminated.
            unsafe {
                check(
                    libc::open(
                        p.set(format_args!("{root}/d{d:02}/r.dat")),
                        libc::O_WRONLY | libc::O_CLOEXEC,
                    ) as _,
                    "open",
                ) as libc::c_int
            }
        })
        .collect();
    for i in 0..n {
        let fd = fds[(i % DIRS) as usize];
        // SAFETY: fd is open; data is 64 readable bytes.
        let w = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        assert_eq!(check(w as _, "write") as usize, data.len(), "short write");
    }
    for fd in fds {
        // SAFETY: fd is open and closed once.
        unsafe { libc::close(fd) };
    }
    n
}

fn write_mixed(root: &str, n: u64) -> u64 {
    let data = [b'z'; 100];
    let mut a = CPath(Vec::with_capacity(256));
    let mut b = CPath(Vec::with_capacity(256));
    let cycles = n / 4;
    for k in 0..cycles {
        let d = k % DIRS;
        let pa = a.set(format_args!("{root}/d{d:02}/m{k:07}.a"));
        let pb = b.set(format_args!("{root}/d{d:02}/m{k:07}.b"));
        create_file(pa, &data);
        // SAFETY: both paths are NUL-terminated.
        unsafe {
            check(libc::rename(pa, pb) as _, "rename");
            check(libc::chmod(pb, 0o600) as _, "chmod");
            check(libc::unlink(pb) as _, "unlink");
        }
    }
    cycles * 4
}

// ---------------------------------------------------------------------------------------------
// The launcher: forked before any eBPF program exists, so its writers are not excluded

/// `--launcher`: reads `workload n dir` lines, runs a writer for each and answers
/// `ops start_ns end_ns user_ns sys_ns` (or `err ...`).
fn launcher_main() -> i32 {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("launcher: {e}");
            return 1;
        }
    };
    let mut out = std::io::stdout().lock();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let reply = run_writer(&exe, &line).unwrap_or_else(|e| format!("err {e}"));
        if writeln!(out, "{reply}").and_then(|()| out.flush()).is_err() {
            break;
        }
    }
    0
}

fn run_writer(exe: &Path, line: &str) -> Res<String> {
    let mut fields = line.splitn(3, ' ');
    let (Some(wl), Some(n), Some(dir)) = (fields.next(), fields.next(), fields.next()) else {
        return Err(format!("bad request {line:?}").into());
    };
    let mut child = Command::new(exe)
        .args(["--writer", wl, n, dir])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut text = String::new();
    child
        .stdout
        .take()
        .expect("piped stdout")
        .read_to_string(&mut text)?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data, all-zero is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our unreaped child; status and ru are valid to fill.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    if r != pid {
        return Err(format!("wait4: {}", std::io::Error::last_os_error()).into());
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        return Err(format!("writer failed (wait status {status:#x})").into());
    }
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    Ok(format!(
        "{} {} {}",
        text.trim(),
        tv(ru.ru_utime),
        tv(ru.ru_stime)
    ))
}

struct Launcher {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

#[derive(Debug, Clone, Copy)]
struct WriterRun {
    ops: u64,
    start_ns: u64,
    end_ns: u64,
    cpu_ns: u64,
}

impl Launcher {
    fn start() -> Res<Launcher> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("--launcher")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        Ok(Launcher {
            child,
            stdin,
            stdout,
        })
    }

    fn send(&mut self, wl: Workload, n: u64, dir: &Path) -> Res<()> {
        let stdin = self.stdin.as_mut().expect("launcher stdin");
        writeln!(stdin, "{} {n} {}", wl.name(), dir.display())?;
        stdin.flush()?;
        Ok(())
    }

    /// Whether the answer can be read, waiting at most `ms`.
    fn ready(&self, ms: i32) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.stdout.get_ref().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, ms) > 0 }
    }

    fn answer(&mut self) -> Res<WriterRun> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            return Err("the launcher exited".into());
        }
        if let Some(e) = line.strip_prefix("err ") {
            return Err(format!("writer: {}", e.trim()).into());
        }
        let v: Vec<u64> = line
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("launcher answer {line:?}: {e}"))?;
        let [ops, start_ns, end_ns, user, sys] = v[..] else {
            return Err(format!("launcher answer {line:?}").into());
        };
        Ok(WriterRun {
            ops,
            start_ns,
            end_ns,
            cpu_ns: user + sys,
        })
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Scratch filesystem and running source, both cleaned up on any exit path

/// A fresh ext4 image in /dev/shm, loop-mounted; unmounted and deleted on drop.
struct Scratch {
    image: PathBuf,
    mnt: PathBuf,
    mounted: bool,
}

fn run_cmd(cmd: &mut Command) -> Res<()> {
    let out = cmd.stdin(Stdio::null()).output()?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(())
}

impl Scratch {
    fn new(work: &Path, id: usize) -> Res<Scratch> {
        let mut s = Scratch {
            image: PathBuf::from(format!(
                "/dev/shm/syncer-ingest-{}-{id}.img",
                std::process::id()
            )),
            mnt: work.join(format!("mnt-{id}")),
            mounted: false,
        };
        std::fs::File::create(&s.image)?.set_len(IMAGE_BYTES)?;
        run_cmd(
            Command::new("mkfs.ext4")
                .args([
                    "-q",
                    "-F",
                    "-N",
                    IMAGE_INODES,
                    "-E",
                    "lazy_itable_init=0,lazy_journal_init=0",
                ])
                .arg(&s.image),
        )
        .or_else(|_| {
            // Older mke2fs without lazy_journal_init.
            run_cmd(
                Command::new("mkfs.ext4")
                    .args(["-q", "-F", "-N", IMAGE_INODES, "-E", "lazy_itable_init=0"])
                    .arg(&s.image),
            )
        })?;
        std::fs::create_dir_all(&s.mnt)?;
        run_cmd(
            Command::new("mount")
                .args(["-o", "loop"])
                .arg(&s.image)
                .arg(&s.mnt),
        )?;
        s.mounted = true;
        s.mnt = std::fs::canonicalize(&s.mnt)?;
        Ok(s)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.mounted
            && run_cmd(Command::new("umount").arg(&self.mnt)).is_err()
            && run_cmd(Command::new("umount").arg("-l").arg(&self.mnt)).is_err()
        {
            eprintln!("ingest: could not unmount {}", self.mnt.display());
        }
        let _ = std::fs::remove_dir(&self.mnt);
        let _ = std::fs::remove_file(&self.image);
    }
}

/// A started source, stopped (and its thread joined) on drop.
struct Running(Option<SourceHandle>);

impl Running {
    fn stats(&self) -> Arc<SourceStats> {
        self.0.as_ref().expect("running source").stats.clone()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.stop();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One measurement

#[derive(Debug, Clone, Default)]
struct Sample {
    ops: u64,
    writer_wall_s: f64,
    writer_cpu_s: f64,
    records: u64,
    ingest_s: f64,
    /// How long after the writer's last operation the last record was read.
    lag_s: f64,
    syncer_cpu_s: f64,
    lost: u64,
    rescans: u64,
    stale: u64,
    pending: usize,
    /// The source was still reading when the tail limit ran out.
    unfinished: bool,
}

/// CPU of every thread of this process but the calling (main) one.
fn syncer_cpu_ns() -> i64 {
    clock_ns(libc::CLOCK_PROCESS_CPUTIME_ID) as i64 - clock_ns(libc::CLOCK_THREAD_CPUTIME_ID) as i64
}

fn source_name(kind: Option<SourceKind>) -> &'static str {
    match kind {
        None => "none (baseline)",
        Some(SourceKind::Ebpf) => "ebpf",
        Some(SourceKind::Fanotify) => "fanotify",
        Some(SourceKind::Inotify) => "inotify",
        Some(SourceKind::Auto) => "auto",
    }
}

struct Env<'a> {
    work: &'a Path,
    launcher: &'a mut Launcher,
    next_id: usize,
}

fn run_once(env: &mut Env, wl: Workload, kind: Option<SourceKind>, n: u64) -> Res<Sample> {
    env.next_id += 1;
    // Declared before the source, so the source stops before the filesystem is unmounted.
    let scratch = Scratch::new(env.work, env.next_id)?;
    let root = scratch.mnt.clone();
    wl.prepare(&root)?;
    let map = Arc::new(DedupMap::new(Duration::from_millis(50)));
    let running = match kind {
        None => None,
        Some(kind) => {
            let cfg = SourceConfig {
                root: root.clone(),
                queue: QueueMode::Unlimited,
                ebpf_hooks: EbpfHooks::Auto,
                ebpf_ring_bytes: 8 << 20,
                caught_up: Default::default(),
            };
            Some(Running(Some(start(
                kind,
                &cfg,
                Arc::new(Fanout::new(vec![map.clone()])),
                &Shutdown::new(),
            )?)))
        }
    };
    let stats = running.as_ref().map(Running::stats);
    std::thread::sleep(Duration::from_millis(100));
    let read = |s: &Option<Arc<SourceStats>>| {
        s.as_ref()
            .map_or(0, |s| s.events.load(std::sync::atomic::Ordering::Relaxed))
    };

    let events0 = read(&stats);
    let cpu0 = syncer_cpu_ns();
    env.launcher.send(wl, n, &root)?;
    let mut last_events = events0;
    let mut last_change = 0u64;
    let mut writer: Option<(WriterRun, u64)> = None;
    let mut unfinished = false;
    loop {
        if writer.is_none() && env.launcher.ready(1) {
            writer = Some((env.launcher.answer()?, mono_ns()));
        }
        let now = mono_ns();
        let ev = read(&stats);
        if ev != last_events {
            last_events = ev;
            last_change = now;
        }
        if let Some((_, seen)) = writer {
            if stats.is_none() || now.saturating_sub(last_change.max(seen)) >= QUIET_NS {
                break;
            }
            if now - seen > TAIL_LIMIT_NS {
                unfinished = true;
                break;
            }
        }
    }
    let cpu1 = syncer_cpu_ns();
    let (w, _) = writer.expect("writer finished");
    let end = last_change.max(w.end_ns);
    let load = |f: fn(&SourceStats) -> &std::sync::atomic::AtomicU64| {
        stats
            .as_ref()
            .map_or(0, |s| f(s).load(std::sync::atomic::Ordering::Relaxed))
    };
    let sample = Sample {
        ops: w.ops,
        writer_wall_s: (w.end_ns - w.start_ns) as f64 / 1e9,
        writer_cpu_s: w.cpu_ns as f64 / 1e9,
        records: last_events - events0,
        ingest_s: end.saturating_sub(w.start_ns) as f64 / 1e9,
        lag_s: end.saturating_sub(w.end_ns) as f64 / 1e9,
        syncer_cpu_s: (cpu1 - cpu0).max(0) as f64 / 1e9,
        lost: load(|s| &s.lost),
        rescans: load(|s| &s.rescans),
        stale: load(|s| &s.stale),
        pending: map.len(),
        unfinished,
    };
    drop(running);
    drop(scratch);
    Ok(sample)
}

// ---------------------------------------------------------------------------------------------
// The bench

fn env_list<T>(name: &str, all: &[T], parse: impl Fn(&str) -> Option<T>) -> Res<Vec<T>>
where
    T: Copy,
{
    match std::env::var(name) {
        Err(_) => Ok(all.to_vec()),
        Ok(v) => v
            .split(',')
            .map(|s| parse(s.trim()).ok_or_else(|| format!("{name}: unknown {s:?}").into()))
            .collect(),
    }
}

/// Which hooks the eBPF source takes with `ebpf_hooks = auto` on this kernel.
fn ebpf_hooks(work: &Path) -> String {
    let scratch = match Scratch::new(work, 0) {
        Ok(s) => s,
        Err(e) => return format!("unknown ({e})"),
    };
    let [fentry, tracepoints] = syncer::source::ebpf::probe_hooks(&scratch.mnt);
    match (fentry, tracepoints) {
        (Ok(_), _) => "fentry on fsnotify/__fsnotify_parent".into(),
        (Err(why), Ok(tp)) => format!("syscall tracepoints, {tp}; fentry refused: {why}"),
        (Err(a), Err(b)) => format!("none (fentry: {a}; tracepoints: {b})"),
    }
}

/// Removes the work directory on every exit path.
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn bench_main() -> Res<()> {
    // First, before any eBPF program is loaded: see the module doc.
    let mut launcher = Launcher::start()?;
    let scale: f64 = match std::env::var("INGEST_SCALE") {
        Ok(s) => s.parse().map_err(|e| format!("INGEST_SCALE={s}: {e}"))?,
        Err(_) => 1.0,
    };
    let reps: usize = match std::env::var("INGEST_REPS") {
        Ok(s) => s.parse().map_err(|e| format!("INGEST_REPS={s}: {e}"))?,
        Err(_) => 3,
    };
    if scale <= 0.0 || reps == 0 {
        return Err("INGEST_SCALE and INGEST_REPS must be positive".into());
    }
    let workloads = env_list("INGEST_WORKLOADS", &Workload::ALL, Workload::parse)?;
    let kinds = env_list(
        "INGEST_SOURCES",
        &[SourceKind::Ebpf, SourceKind::Fanotify, SourceKind::Inotify],
        |s| match s.parse() {
            Ok(SourceKind::Auto) | Err(_) => None,
            Ok(k) => Some(k),
        },
    )?;
    let mut sources: Vec<Option<SourceKind>> = vec![None];
    sources.extend(kinds.into_iter().map(Some));

    let work = WorkDir(std::env::temp_dir().join(format!("syncer-ingest-{}", std::process::id())));
    std::fs::create_dir_all(&work.0)?;
    let hooks = ebpf_hooks(&work.0);
    eprintln!("ingest: eBPF hooks: {hooks}");

    let started = std::time::Instant::now();
    let mut env = Env {
        work: &work.0,
        launcher: &mut launcher,
        next_id: 0,
    };
    // results[w][s]: the samples, or why the source could not run.
    let mut results: Vec<Vec<Result<Vec<Sample>, String>>> =
        vec![vec![Ok(Vec::new()); sources.len()]; workloads.len()];
    for (wi, &wl) in workloads.iter().enumerate() {
        let n = wl.ops(scale);
        for rep in 0..reps {
            for (si, &kind) in sources.iter().enumerate() {
                let Ok(samples) = &mut results[wi][si] else {
                    continue;
                };
                match run_once(&mut env, wl, kind, n) {
                    Ok(s) => {
                        eprintln!(
                            "ingest: {} / {} run {}/{reps}: {} ops in {:.2} s, {} records in \
                             {:.2} s, writer CPU {:.2} s, syncer CPU {:.2} s, {} pending",
                            wl.name(),
                            source_name(kind),
                            rep + 1,
                            s.ops,
                            s.writer_wall_s,
                            s.records,
                            s.ingest_s,
                            s.writer_cpu_s,
                            s.syncer_cpu_s,
                            s.pending
                        );
                        samples.push(s);
                    }
                    Err(e) => {
                        eprintln!("ingest: {} / {}: {e}", wl.name(), source_name(kind));
                        results[wi][si] = Err(e.to_string());
                    }
                }
            }
        }
    }
    drop(launcher);

    let table = render(&workloads, &sources, &results);
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let knobs: String = [
        "INGEST_SCALE",
        "INGEST_REPS",
        "INGEST_WORKLOADS",
        "INGEST_SOURCES",
    ]
    .iter()
    .filter_map(|k| std::env::var(k).ok().map(|v| format!("{k}={v} ")))
    .collect();
    let mut md = String::new();
    writeln!(md, "# syncer event-source ingest bench\n")?;
    writeln!(
        md,
        "{date} · Linux {} · {cpus} CPUs · eBPF hooks: {hooks} · scale {scale} · \
         median of {reps} runs per row · took {:.0} s\n",
        kernel.trim(),
        started.elapsed().as_secs_f64()
    )?;
    writeln!(
        md,
        "Command (as root): `{knobs}cargo bench -p syncer --bench ingest` (source: \
         `syncer/benches/ingest.rs`)\n"
    )?;
    writeln!(
        md,
        "Each run: fresh 1 GiB ext4 loop image in /dev/shm, 100 directories; the writer is a \
         separate process. *records read*: `SourceStats::events`. *ingest time*: writer's first \
         operation to the last record read; *lag after writer*: from the writer's last operation \
         to the last record read (near 0: the source kept up, so the rates are the writer's pace, \
         not the source's ceiling). *writer CPU*: the writer's user+sys (kernel hooks \
         run there), with the difference to the no-source baseline in brackets. *syncer CPU*: \
         the source thread (read, resolve, dedup insert). *pending paths*: distinct paths in \
         the dedup map at the end (never drained). *lost/rescans*: the worst run; any is flagged.\n"
    )?;
    md.push_str(&table);
    print!("\n{md}");
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/results/ingest.md");
    std::fs::create_dir_all(out.parent().expect("results dir"))?;
    std::fs::write(&out, &md)?;
    let out = std::fs::canonicalize(&out).unwrap_or(out);
    eprintln!("ingest: wrote {}", out.display());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The table

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn med(s: &[Sample], f: impl Fn(&Sample) -> f64) -> f64 {
    median(s.iter().map(f).collect())
}

fn si(x: f64) -> String {
    if !x.is_finite() {
        "–".into()
    } else if x >= 1e6 {
        format!("{:.2} M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1} k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

fn secs(x: f64) -> String {
    if x < 1.0 {
        format!("{:.0} ms", x * 1e3)
    } else {
        format!("{x:.2} s")
    }
}

fn render(
    workloads: &[Workload],
    sources: &[Option<SourceKind>],
    results: &[Vec<Result<Vec<Sample>, String>>],
) -> String {
    let mut t = String::new();
    t.push_str(
        "| workload | source | ops | writer wall | records read | records/op | ingest time | \
         lag after writer | records/s | ops/s | writer CPU s/M ops (vs baseline) | syncer CPU s/M ops | \
         lost/rescans (worst run) | pending paths |\n",
    );
    t.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (wi, wl) in workloads.iter().enumerate() {
        let per_m = |s: &Sample, cpu: f64| cpu / s.ops as f64 * 1e6;
        let base = match &results[wi][0] {
            Ok(s) if !s.is_empty() => Some(med(s, |s| per_m(s, s.writer_cpu_s))),
            _ => None,
        };
        for (si_, &kind) in sources.iter().enumerate() {
            let name = source_name(kind);
            let s = match &results[wi][si_] {
                Err(e) => {
                    let _ = writeln!(
                        t,
                        "| {} | {name} | unavailable: {} ||||||||||||",
                        wl.name(),
                        e.replace('|', "/")
                    );
                    continue;
                }
                Ok(s) if s.is_empty() => continue,
                Ok(s) => s,
            };
            let ops = med(s, |s| s.ops as f64);
            let wall = med(s, |s| s.writer_wall_s);
            let wcpu = med(s, |s| per_m(s, s.writer_cpu_s));
            let wcell = match (kind, base) {
                (None, _) => format!("{wcpu:.2} (baseline)"),
                (Some(_), Some(b)) => format!("{wcpu:.2} ({:+.2})", wcpu - b),
                (Some(_), None) => format!("{wcpu:.2}"),
            };
            if kind.is_none() {
                let _ = writeln!(
                    t,
                    "| {} | {name} | {ops:.0} | {} | – | – | – | – | – | – | {wcell} | – | – | – |",
                    wl.name(),
                    secs(wall)
                );
                continue;
            }
            let records = med(s, |s| s.records as f64);
            let ingest = med(s, |s| s.ingest_s);
            let lost: u64 = s.iter().map(|s| s.lost).max().unwrap_or(0);
            let rescans: u64 = s.iter().map(|s| s.rescans).max().unwrap_or(0);
            let stale: u64 = s.iter().map(|s| s.stale).max().unwrap_or(0);
            let hit = s.iter().filter(|s| s.lost + s.rescans > 0).count();
            let mut loss = if lost + rescans > 0 {
                format!("**{lost}/{rescans} ⚠** ({hit} of {} runs)", s.len())
            } else {
                "0/0".into()
            };
            if stale > 0 {
                let _ = write!(loss, " (stale {stale})");
            }
            if s.iter().any(|s| s.unfinished) {
                loss.push_str(" **still reading at the limit ⚠**");
            }
            let _ = writeln!(
                t,
                "| {} | {name} | {ops:.0} | {} | {records:.0} | {:.3} | {} | {} | {}/s | {}/s | \
                 {wcell} | {:.2} | {loss} | {:.0} |",
                wl.name(),
                secs(wall),
                med(s, |s| s.records as f64 / s.ops as f64),
                secs(ingest),
                secs(med(s, |s| s.lag_s)),
                si(med(s, |s| s.records as f64 / s.ingest_s)),
                si(med(s, |s| s.ops as f64 / s.ingest_s)),
                med(s, |s| per_m(s, s.syncer_cpu_s)),
                med(s, |s| s.pending as f64),
            );
        }
    }
    t
}
