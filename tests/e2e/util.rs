//! Harness for the end-to-end tests, in the spirit of ripgrep's `tests/util.rs`:
//!
//! - [`skip`]: prints `SKIP: <reason>` when the machine cannot run the suite (not root, no loop
//!   mounts); `SYNCER_E2E_REQUIRE=1` turns that into a failure.
//! - [`LoopFs`]: a throw-away ext4 filesystem on a sparse loop image (fanotify reports whole
//!   filesystems, so every test gets its own source filesystem).
//! - [`RsyncDaemon`]: an `rsync --daemon` with one writable module on a free 127.0.0.1 port, which
//!   can be stopped and restarted on the same port.
//! - [`Syncer`]: the real binary as a child process, its stderr captured (and echoed, prefixed, to
//!   the test's stderr), with [`Syncer::wait_for_log`], [`Syncer::stop`] (SIGTERM, expect exit 0),
//!   [`Syncer::pause`]/[`Syncer::resume`] (SIGSTOP/SIGCONT); one-shot runs via [`run_syncer`].
//! - [`compare_trees`] / [`assert_converges`]: byte-for-byte tree comparison (entries, types,
//!   permission bits, owners, mtimes with nanoseconds, sizes, contents, symlink targets), and
//!   polling until two trees are identical.
//! - [`Rig`]: what most scenarios need at once: a `LoopFs` source at `<mnt>/src`, an rsync daemon
//!   target and a local-directory target, and the `syncer run` command line for them.
//! - Deterministic writers: [`Rng`], [`TreeSpec`]/[`make_tree`], [`Writer`] and small fs helpers
//!   that panic with the path on error.
//!
//! Nothing here is shared between tests (temp dirs, mounts and ports are per test), so the tests
//! run in parallel threads.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::ops::Range;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::mount::{umount2, MntFlags};
use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::stat::{utimensat, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::Pid;
use tempfile::TempDir;

/// The binary under test, as built by cargo for this test.
pub const SYNCER_BIN: &str = env!("CARGO_BIN_EXE_syncer");

/// The binary the tests run: `SYNCER_E2E_BIN` if set (e.g. a release build), else [`SYNCER_BIN`].
pub fn syncer_bin() -> PathBuf {
    std::env::var_os("SYNCER_E2E_BIN").map_or_else(|| PathBuf::from(SYNCER_BIN), PathBuf::from)
}

/// Printed once the kernel event source is armed (before the initial sync starts).
pub const LIVE: &str = "event source live";
/// Printed when the initial sync is done (at once with `--no-initial-sync`).
pub const INITIAL_SYNC_FINISHED: &str = "initial sync finished";
/// Printed when a fanotify/inotify queue overflow was seen.
pub const QUEUE_OVERFLOW: &str = "queue overflow";
/// Printed when a target is unreachable.
pub const TARGET_DOWN: &str = "target down";

/// How long a scenario waits for the source and its targets to become identical.
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long to wait for a log marker.
pub const MARKER_TIMEOUT: Duration = Duration::from_secs(90);
/// How long `syncer` may take to drain and exit after SIGTERM, or to finish a one-shot command.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(90);
/// The `--delay` (milliseconds) the watching scenarios pass.
pub const DELAY_MS: &str = "50";

// ---------------------------------------------------------------------------------------------
// Skipping

/// Polls `ok` every 50 ms until it holds, failing after [`MARKER_TIMEOUT`] with `what`.
pub fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + MARKER_TIMEOUT;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// Returns `true`, after printing `SKIP: <reason>` to stderr, when this machine cannot run the
/// suite: not root, a tool missing, or loop mounts unavailable. The probe (a real 32 MiB loop
/// mount) runs once per test binary. With `SYNCER_E2E_REQUIRE=1` a skip is a failure instead.
pub fn skip() -> bool {
    static PROBE: OnceLock<Option<String>> = OnceLock::new();
    let Some(reason) = PROBE.get_or_init(probe_environment) else {
        return false;
    };
    let required =
        std::env::var_os("SYNCER_E2E_REQUIRE").is_some_and(|v| !v.is_empty() && v != "0");
    assert!(
        !required,
        "cannot run the end-to-end tests: {reason} (and SYNCER_E2E_REQUIRE is set)"
    );
    eprintln!("SKIP: {reason}");
    true
}

fn probe_environment() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some(
            "not running as root (loop mounts, fanotify and the rsync daemon need it)".into(),
        );
    }
    for name in ["rsync", "mkfs.ext4", "mount"] {
        if !tool(name).is_file() {
            return Some(format!("`{name}` not found in PATH, /usr/sbin or /sbin"));
        }
    }
    match LoopFs::try_new(32 << 20) {
        Ok(fs) => {
            drop(fs);
            None
        }
        Err(e) => Some(format!("loop mounts unavailable: {e}")),
    }
}

/// Whether this build of syncer can inject faults (`--features failpoints`, as `cargo xtask
/// test` builds it); else prints `SKIP:` and returns false, or fails under
/// `SYNCER_E2E_REQUIRE=1`.
pub fn failpoints() -> bool {
    if cfg!(feature = "failpoints") {
        return true;
    }
    let msg = "the syncer binary was built without the `failpoints` feature (use cargo xtask test)";
    assert!(
        std::env::var_os("SYNCER_E2E_REQUIRE").is_none_or(|v| v != "1"),
        "{msg}"
    );
    eprintln!("SKIP: {msg}");
    false
}

/// Resolves an external tool through PATH, then the sbin directories (mkfs.ext4 lives there and
/// PATH does not always include them). Returns the bare name if nothing is found.
pub fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Runs a command to completion; `Err` carries the command line, exit status and output.
pub fn run_tool(cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd:?}: cannot spawn: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A fresh temp dir named after `tag`.
pub fn temp_dir(tag: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(&format!("syncer-e2e-{tag}-"))
        .tempdir()
        .expect("cannot create a temp dir")
}

// ---------------------------------------------------------------------------------------------
// LoopFs

/// An ext4 filesystem on a sparse image, loop-mounted at a temp mount point. Drop unmounts it
/// (lazily if it stays busy) and removes the image.
pub struct LoopFs {
    mnt: PathBuf,
    _dir: TempDir,
}

impl LoopFs {
    /// The default image size: 512 MiB (sparse), 131072 inodes.
    pub const DEFAULT_SIZE: u64 = 512 << 20;

    /// A new filesystem of [`LoopFs::DEFAULT_SIZE`].
    pub fn new() -> LoopFs {
        Self::with_size(Self::DEFAULT_SIZE)
    }

    /// A new filesystem of `bytes` (4 KiB blocks, one inode per 4 KiB, 256-byte inodes so that
    /// timestamps have nanoseconds).
    pub fn with_size(bytes: u64) -> LoopFs {
        Self::try_new(bytes).unwrap_or_else(|e| panic!("cannot set up a loop filesystem: {e}"))
    }

    fn try_new(bytes: u64) -> Result<LoopFs, String> {
        let dir = temp_dir("loopfs");
        let img = dir.path().join("fs.img");
        File::create(&img)
            .and_then(|f| f.set_len(bytes))
            .map_err(|e| format!("creating {}: {e}", img.display()))?;
        run_tool(
            Command::new(tool("mkfs.ext4"))
                .args([
                    "-q", "-F", "-b", "4096", "-i", "4096", "-I", "256", "-m", "0",
                ])
                .arg(&img),
        )?;
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt).map_err(|e| format!("creating {}: {e}", mnt.display()))?;
        let mut last = String::new();
        // `mount -o loop` picks a free loop device; parallel tests can race for one, so retry.
        for _ in 0..5 {
            match run_tool(
                Command::new(tool("mount"))
                    .args(["-o", "loop"])
                    .arg(&img)
                    .arg(&mnt),
            ) {
                Ok(()) => return Ok(LoopFs { mnt, _dir: dir }),
                Err(e) => last = e,
            }
            thread::sleep(Duration::from_millis(200));
        }
        Err(last)
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.mnt
    }

    /// Creates `<mnt>/<name>` and returns it.
    pub fn mkdir(&self, name: &str) -> PathBuf {
        let p = self.mnt.join(name);
        mkdirs(&p);
        p
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        for _ in 0..30 {
            match umount2(&self.mnt, MntFlags::empty()) {
                Ok(()) => return,
                Err(Errno::EBUSY) => thread::sleep(Duration::from_millis(100)),
                Err(_) => break,
            }
        }
        eprintln!(
            "LoopFs: {} stays busy, unmounting lazily",
            self.mnt.display()
        );
        let _ = umount2(&self.mnt, MntFlags::MNT_DETACH);
    }
}

// ---------------------------------------------------------------------------------------------
// Ports and the rsync daemon

/// A TCP port on 127.0.0.1 that is free right now. It is drawn at random below the kernel's
/// ephemeral range, so that outgoing connections (which take ephemeral ports) cannot grab it while
/// a daemon on it is stopped.
pub fn free_port() -> u16 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let low: u16 = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    if low > 12_000 {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let mut rng = Rng::new(
            u64::from(std::process::id()) << 32
                ^ nanos as u64
                ^ COUNTER
                    .fetch_add(1, Ordering::Relaxed)
                    .wrapping_mul(0x9E37_79B9),
        );
        for _ in 0..500 {
            let port = 10_000 + rng.below(u64::from(low - 10_000)) as u16;
            if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
                return port;
            }
        }
    }
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("cannot bind 127.0.0.1:0")
        .port()
}

/// The password of the daemon's `auth` module (user `syncer`).
pub const AUTH_PASSWORD: &str = "right";

/// `rsync --daemon` serving one writable module `mod` (a temp dir) on 127.0.0.1, as root
/// (`uid = root`, `gid = root`, `munge symlinks = no`), and a module `auth` that wants a
/// password ([`RsyncDaemon::auth_url`]).
///
/// The module uses `use chroot = yes`: without a chroot the daemon sanitizes symlink targets
/// (`/etc/passwd` arrives as `etc/passwd`) even with `munge symlinks = no`, so the copy could never
/// equal the source. Inside the chroot ids are numeric, which is what the comparison wants.
pub struct RsyncDaemon {
    dir: TempDir,
    module: PathBuf,
    conf: PathBuf,
    log: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl RsyncDaemon {
    /// Configures and starts a daemon on a free port.
    pub fn new() -> RsyncDaemon {
        let mut last = String::new();
        for _ in 0..5 {
            let mut daemon = Self::configure(free_port());
            match daemon.try_start(Duration::from_secs(5)) {
                Ok(()) => return daemon,
                // Most likely someone else took the port between our check and the daemon's bind.
                Err(e) => last = e,
            }
        }
        panic!("cannot start an rsync daemon: {last}");
    }

    fn configure(port: u16) -> RsyncDaemon {
        let dir = temp_dir("rsyncd");
        let module = dir.path().join("module");
        mkdirs(&module);
        let conf = dir.path().join("rsyncd.conf");
        let log = dir.path().join("rsyncd.log");
        let text = format!(
            "# rsyncd.conf written by the syncer e2e harness\n\
             reverse lookup = no\n\
             forward lookup = no\n\
             max connections = 0\n\
             log file = {}\n\
             \n\
             [mod]\n\
             \tpath = {}\n\
             \tcomment = syncer e2e target\n\
             \tread only = false\n\
             \tlist = yes\n\
             \tuid = root\n\
             \tgid = root\n\
             \tuse chroot = yes\n\
             \tmunge symlinks = no\n\
             \ttransfer logging = yes\n\
             \tlog format = xfer %o %n\n\
             \n\
             [auth]\n\
             \tpath = {}\n\
             \tread only = false\n\
             \tuid = root\n\
             \tgid = root\n\
             \tuse chroot = yes\n\
             \tauth users = syncer\n\
             \tsecrets file = {}\n",
            log.display(),
            module.display(),
            dir.path().join("auth-module").display(),
            dir.path().join("secrets").display(),
        );
        mkdirs(&dir.path().join("auth-module"));
        write_file(
            &dir.path().join("secrets"),
            format!("syncer:{AUTH_PASSWORD}\n").as_bytes(),
        );
        chmod(&dir.path().join("secrets"), 0o600);
        write_file(&conf, text.as_bytes());
        RsyncDaemon {
            dir,
            module,
            conf,
            log,
            port,
            child: None,
        }
    }

    /// Starts the daemon again on its port (after [`RsyncDaemon::stop`]). Retries for a while if
    /// the port is briefly unavailable.
    pub fn start(&mut self) {
        if let Err(e) = self.try_start(Duration::from_secs(20)) {
            panic!("cannot restart the rsync daemon on port {}: {e}", self.port);
        }
    }

    fn try_start(&mut self, patience: Duration) -> Result<(), String> {
        assert!(self.child.is_none(), "the rsync daemon is already running");
        let deadline = Instant::now() + patience;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let out_path = self.dir.path().join("daemon.out");
        loop {
            let out = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&out_path)
                .map_err(|e| format!("{}: {e}", out_path.display()))?;
            let err = out.try_clone().map_err(|e| e.to_string())?;
            let mut child = Command::new(tool("rsync"))
                .arg("--daemon")
                .arg("--no-detach")
                .arg(format!("--config={}", self.conf.display()))
                .arg("--address=127.0.0.1")
                .arg(format!("--port={}", self.port))
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .process_group(0)
                .spawn()
                .map_err(|e| format!("cannot spawn rsync --daemon: {e}"))?;
            let status = loop {
                if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                    break status;
                }
                if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
                    self.child = Some(child);
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "port {} not accepting after {patience:?}",
                        self.port
                    ));
                }
                thread::sleep(Duration::from_millis(50));
            };
            if Instant::now() >= deadline {
                return Err(format!(
                    "rsync --daemon on port {} exited with {status}:\n{}\n{}",
                    self.port,
                    fs::read_to_string(&out_path).unwrap_or_default(),
                    self.log()
                ));
            }
            thread::sleep(Duration::from_millis(250));
        }
    }

    /// Stops the daemon and any transfer it is serving, the way a service manager would: SIGTERM
    /// to its process group (rsync then removes its partial temp files), SIGKILL after 5 s.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pgid = Pid::from_raw(child.id() as i32);
            let _ = killpg(pgid, Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            // The serving children may outlive the listener for a moment.
            thread::sleep(Duration::from_millis(100));
            let _ = killpg(pgid, Signal::SIGKILL);
            let _ = child.wait();
        }
    }

    /// `rsync://syncer@127.0.0.1:PORT/auth`: a module that wants user `syncer` with
    /// [`AUTH_PASSWORD`].
    pub fn auth_url(&self) -> String {
        format!("rsync://syncer@127.0.0.1:{}/auth", self.port)
    }

    /// Changes the `auth` module's password (the backup host rotating it).
    pub fn set_auth_password(&self, password: &str) {
        let secrets = self.dir.path().join("secrets");
        write_file(&secrets, format!("syncer:{password}\n").as_bytes());
        chmod(&secrets, 0o600);
    }

    /// Where the `auth` module keeps its files.
    pub fn auth_path(&self) -> PathBuf {
        self.dir.path().join("auth-module")
    }

    /// `rsync://127.0.0.1:PORT/mod`
    pub fn url(&self) -> String {
        format!("rsync://127.0.0.1:{}/mod", self.port)
    }

    /// The module's directory, i.e. what the target should look like.
    pub fn path(&self) -> &Path {
        &self.module
    }

    /// The daemon's log file contents.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// Where the daemon writes its log.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// What the daemon printed on stdout and stderr.
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&fs::read(self.dir.path().join("daemon.out")).unwrap_or_default())
            .into_owned()
    }

    /// The files the daemon has received so far (from its transfer log), in order.
    pub fn received(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter_map(|l| {
                l.split_once(" xfer recv ")
                    .map(|(_, name)| name.to_string())
            })
            .collect()
    }

    /// How many rsync sessions have written to a module so far (`rsync to MODULE/ from`):
    /// transfers, not the listing a start reaches the target with.
    pub fn transfers(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("] rsync to "))
            .count()
    }
}

impl Drop for RsyncDaemon {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// The syncer process

/// A running `syncer` (or any command spawned through [`Syncer::spawn_command`]) with its stderr
/// captured line by line. Drop kills its whole process group.
pub struct Syncer {
    child: Child,
    tag: String,
    stderr: Arc<Mutex<String>>,
    stdout: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    status: Option<ExitStatus>,
    paused: bool,
    /// The state directory made for this process when the test gave none.
    _state: Option<TempDir>,
    /// The directory of its own control socket, when the test gave none.
    _control: Option<TempDir>,
}

/// How a one-shot command ended.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// The exit code, or `None` if killed by a signal.
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

impl Syncer {
    /// Spawns `syncer ARGS...`.
    pub fn spawn<I, S>(args: I) -> Syncer
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(syncer_bin());
        cmd.args(args);
        Self::spawn_command(cmd)
    }

    /// Spawns `cmd` in its own process group, stdin closed, `RUST_LOG` set (from
    /// `SYNCER_E2E_RUST_LOG`, default `info`), stdout and stderr captured and echoed to the test's
    /// stderr prefixed with `[syncer#N]`.
    /// Without `--state-dir` (or `SYNCER_STATE_DIR`) given, the process gets a fresh state
    /// directory of its own, removed with it: tests never share `/var/lib/syncer`; the same
    /// for the control socket (`--control-socket`, `SYNCER_CONTROL_SOCKET`).
    pub fn spawn_command(mut cmd: Command) -> Syncer {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let tag = format!("syncer#{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let given = cmd.get_args().any(|a| a == "--state-dir")
            || cmd.get_envs().any(|(k, _)| k == "SYNCER_STATE_DIR");
        let state = (!given).then(|| {
            let d = temp_dir("state");
            cmd.env("SYNCER_STATE_DIR", d.path());
            d
        });
        // Nor /run/syncer/control.sock: a socket of its own unless the test names one.
        let given = cmd.get_args().any(|a| a == "--control-socket")
            || cmd.get_envs().any(|(k, _)| k == "SYNCER_CONTROL_SOCKET");
        let control = (!given).then(|| {
            let d = temp_dir("ctl");
            cmd.env("SYNCER_CONTROL_SOCKET", d.path().join("control.sock"));
            d
        });
        let level = std::env::var("SYNCER_E2E_RUST_LOG").unwrap_or_else(|_| "info".into());
        cmd.env("RUST_LOG", level)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        eprintln!("[{tag}] $ {cmd:?}");
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}"));
        let stderr = Arc::new(Mutex::new(String::new()));
        let stdout = Arc::new(Mutex::new(String::new()));
        let readers = vec![
            spawn_reader(
                child.stderr.take().expect("piped stderr"),
                stderr.clone(),
                tag.clone(),
            ),
            spawn_reader(
                child.stdout.take().expect("piped stdout"),
                stdout.clone(),
                format!("{tag} stdout"),
            ),
        ];
        Syncer {
            child,
            tag,
            stderr,
            stdout,
            readers,
            status: None,
            paused: false,
            _state: state,
            _control: control,
        }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// Sends `signal` to the process (e.g. SIGHUP: a reload).
    pub fn signal(&self, signal: Signal) {
        nix::sys::signal::kill(self.pid(), signal).expect("signal syncer");
    }

    /// Everything the process wrote to stderr so far.
    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Whether stderr contains `marker` so far.
    pub fn log_contains(&self, marker: &str) -> bool {
        self.stderr.lock().unwrap().contains(marker)
    }

    fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let tail = &lines[lines.len().saturating_sub(40)..];
        format!(
            "--- last {} lines of [{}] stderr ---\n{}",
            tail.len(),
            self.tag,
            tail.join("\n")
        )
    }

    fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("waitpid failed");
            if self.status.is_some() {
                // Whatever the process left behind in its group (rsync children) goes too.
                let _ = killpg(self.pid(), Signal::SIGKILL);
                self.join_readers(Duration::from_secs(5));
            }
        }
        self.status
    }

    /// Waits until stderr contains `marker`; panics if the process exits first or `timeout` passes.
    pub fn wait_for_log(&mut self, marker: &str, timeout: Duration) {
        if let Err(e) = self.try_wait_for_log(marker, timeout) {
            panic!("{e}");
        }
    }

    /// [`Syncer::wait_for_log`], returning the failure instead of panicking.
    pub fn try_wait_for_log(&mut self, marker: &str, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log_contains(marker) {
                return Ok(());
            }
            if let Some(status) = self.poll_exit() {
                if self.log_contains(marker) {
                    return Ok(());
                }
                return Err(format!(
                    "[{}] exited with {status} before logging {marker:?}\n{}",
                    self.tag,
                    self.log_tail()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "[{}] did not log {marker:?} within {timeout:?}\n{}",
                    self.tag,
                    self.log_tail()
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Panics if the process has exited (`what` says what the test was doing).
    pub fn assert_running(&mut self, what: &str) {
        if let Some(status) = self.poll_exit() {
            panic!(
                "[{}] exited with {status} {what}\n{}",
                self.tag,
                self.log_tail()
            );
        }
    }

    /// SIGSTOP.
    pub fn pause(&mut self) {
        kill(self.pid(), Signal::SIGSTOP).expect("SIGSTOP");
        self.paused = true;
    }

    /// SIGCONT.
    pub fn resume(&mut self) {
        kill(self.pid(), Signal::SIGCONT).expect("SIGCONT");
        self.paused = false;
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.poll_exit() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM and asserts a clean exit (status 0) within [`EXIT_TIMEOUT`]. Returns the log.
    pub fn stop(self) -> String {
        self.stop_with(Signal::SIGTERM)
    }

    /// Sends `signal` (SIGTERM or SIGINT) and asserts a clean exit (status 0) within
    /// [`EXIT_TIMEOUT`]. Returns the log.
    /// SIGKILL to syncer alone, as a crash would (its rsyncs may go on: the next syncer on
    /// the same state stops them): no drain, nothing asserted about the exit.
    pub fn kill(mut self) -> String {
        let _ = kill(self.pid(), Signal::SIGKILL);
        let _ = self.child.wait();
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        self.log()
    }

    pub fn stop_with(mut self, signal: Signal) -> String {
        self.assert_running("before it was asked to stop");
        if self.paused {
            self.resume();
        }
        kill(self.pid(), signal).unwrap_or_else(|e| panic!("kill -{signal}: {e}"));
        let Some(status) = self.wait_exit(EXIT_TIMEOUT) else {
            panic!(
                "[{}] still running {EXIT_TIMEOUT:?} after {signal}\n{}",
                self.tag,
                self.log_tail()
            );
        };
        assert!(
            status.success(),
            "[{}] exited with {status} after {signal}, expected 0\n{}",
            self.tag,
            self.log_tail()
        );
        self.log()
    }

    /// Waits for the process to end on its own within `timeout` (panics otherwise) and returns
    /// its status and output.
    pub fn finish(self, timeout: Duration) -> Finished {
        self.try_finish(timeout).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Syncer::finish`], returning an error (and killing the process) if it is still running
    /// after `timeout`.
    pub fn try_finish(mut self, timeout: Duration) -> Result<Finished, String> {
        let Some(status) = self.wait_exit(timeout) else {
            return Err(format!(
                "[{}] still running after {timeout:?}\n{}",
                self.tag,
                self.log_tail()
            ));
        };
        Ok(Finished {
            status,
            stdout: self.stdout.lock().unwrap().clone(),
            stderr: self.log(),
        })
    }

    fn join_readers(&mut self, timeout: Duration) {
        // The pipes stay open as long as any process holding them lives; do not wait forever.
        let deadline = Instant::now() + timeout;
        while self.readers.iter().any(|r| !r.is_finished()) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        for reader in std::mem::take(&mut self.readers) {
            if reader.is_finished() {
                let _ = reader.join();
            }
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = kill(self.pid(), Signal::SIGCONT);
            let _ = killpg(self.pid(), Signal::SIGKILL);
            let _ = self.child.wait();
        }
        self.join_readers(Duration::from_secs(2));
    }
}

fn spawn_reader(
    pipe: impl Read + Send + 'static,
    buf: Arc<Mutex<String>>,
    tag: String,
) -> JoinHandle<()> {
    // Spawned threads inherit libtest's output capture, so the echo shows only for failed tests
    // (or with --nocapture).
    thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut raw = Vec::new();
        loop {
            raw.clear();
            match reader.read_until(b'\n', &mut raw) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&raw);
                    let line = line.trim_end_matches('\n');
                    eprintln!("[{tag}] {line}");
                    let mut buf = buf.lock().unwrap();
                    buf.push_str(line);
                    buf.push('\n');
                }
            }
        }
    })
}

/// Runs `syncer ARGS...` to completion (panics after `timeout`).
pub fn run_syncer<I, S>(args: I, timeout: Duration) -> Finished
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Syncer::spawn(args).finish(timeout)
}

// ---------------------------------------------------------------------------------------------
// Tree comparison

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

#[derive(Debug)]
struct Entry {
    kind: Kind,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
    size: u64,
    rdev: u64,
    nlink: u64,
    link: Option<OsString>,
}

fn show(rel: &[u8]) -> String {
    if rel.is_empty() {
        "\".\"".into()
    } else {
        format!("{:?}", OsStr::from_bytes(rel))
    }
}

fn join_rel(root: &Path, rel: &[u8]) -> PathBuf {
    if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(OsStr::from_bytes(rel))
    }
}

/// Walks `root` without following symlinks. Keys are `/`-joined relative paths as raw bytes (the
/// root itself is the empty key); a top-level `lost+found` is left out. Problems reading the tree
/// (e.g. entries vanishing mid-walk) are reported in `problems`.
fn snapshot(root: &Path, problems: &mut Vec<String>) -> BTreeMap<Vec<u8>, Entry> {
    let mut out = BTreeMap::new();
    let mut stack = vec![Vec::new()];
    while let Some(rel) = stack.pop() {
        let path = join_rel(root, &rel);
        let md = match fs::symlink_metadata(&path) {
            Ok(md) => md,
            Err(e) => {
                problems.push(format!(
                    "{}: cannot lstat {}: {e}",
                    show(&rel),
                    path.display()
                ));
                continue;
            }
        };
        let ft = md.file_type();
        let kind = if ft.is_file() {
            Kind::File
        } else if ft.is_dir() {
            Kind::Dir
        } else if ft.is_symlink() {
            Kind::Symlink
        } else if ft.is_fifo() {
            Kind::Fifo
        } else if ft.is_socket() {
            Kind::Socket
        } else if ft.is_char_device() {
            Kind::CharDevice
        } else {
            Kind::BlockDevice
        };
        let link = if kind == Kind::Symlink {
            match fs::read_link(&path) {
                Ok(t) => Some(t.into_os_string()),
                Err(e) => {
                    problems.push(format!(
                        "{}: cannot readlink {}: {e}",
                        show(&rel),
                        path.display()
                    ));
                    None
                }
            }
        } else {
            None
        };
        if kind == Kind::Dir {
            match fs::read_dir(&path) {
                Ok(rd) => {
                    for de in rd {
                        match de {
                            Ok(de) => {
                                let name = de.file_name();
                                if rel.is_empty() && name == "lost+found" {
                                    continue;
                                }
                                let mut child = rel.clone();
                                if !child.is_empty() {
                                    child.push(b'/');
                                }
                                child.extend_from_slice(name.as_bytes());
                                stack.push(child);
                            }
                            Err(e) => problems.push(format!("{}: readdir: {e}", show(&rel))),
                        }
                    }
                }
                Err(e) => problems.push(format!(
                    "{}: cannot list {}: {e}",
                    show(&rel),
                    path.display()
                )),
            }
        }
        out.insert(
            rel,
            Entry {
                kind,
                mode: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
                mtime: (md.mtime(), md.mtime_nsec()),
                size: md.size(),
                rdev: md.rdev(),
                nlink: md.nlink(),
                link,
            },
        );
    }
    out
}

/// Offset of the first differing byte of two files, `None` if identical.
fn first_difference(a: &Path, b: &Path) -> io::Result<Option<u64>> {
    let mut fa = BufReader::with_capacity(1 << 16, File::open(a)?);
    let mut fb = BufReader::with_capacity(1 << 16, File::open(b)?);
    let mut offset = 0u64;
    loop {
        let (ba, bb) = (fa.fill_buf()?, fb.fill_buf()?);
        if ba.is_empty() || bb.is_empty() {
            return Ok((ba.len() != bb.len()).then_some(offset));
        }
        let n = ba.len().min(bb.len());
        if let Some(i) = (0..n).find(|&i| ba[i] != bb[i]) {
            return Ok(Some(offset + i as u64));
        }
        fa.consume(n);
        fb.consume(n);
        offset += n as u64;
    }
}

/// The differences between the trees at `a` and `b`, one readable line each (empty if identical):
/// entries present on one side only, file type, permission bits (incl. setuid/setgid/sticky),
/// owner and group, mtime to the nanosecond (not for symlinks), size and contents of regular
/// files, symlink targets, device numbers. Symlinks are not followed; names are raw bytes (non-
/// UTF-8 is fine). The roots themselves are compared too (as `"."`); a top-level `lost+found` is
/// ignored on both sides.
pub fn compare_trees(a: &Path, b: &Path) -> Vec<String> {
    let mut diffs = Vec::new();
    let ta = snapshot(a, &mut diffs);
    let tb = snapshot(b, &mut diffs);
    let keys: BTreeSet<&Vec<u8>> = ta.keys().chain(tb.keys()).collect();
    for rel in keys {
        let (ea, eb) = match (ta.get(rel), tb.get(rel)) {
            (Some(ea), Some(eb)) => (ea, eb),
            (Some(_), None) => {
                diffs.push(format!("{}: only in A", show(rel)));
                continue;
            }
            (None, _) => {
                diffs.push(format!("{}: only in B", show(rel)));
                continue;
            }
        };
        // Hard links are named: an entry's other names tell where its change came through.
        let name = match ea.nlink {
            n if n > 1 && ea.kind != Kind::Dir => format!("{} ({n} links in A)", show(rel)),
            _ => show(rel),
        };
        if ea.kind != eb.kind {
            diffs.push(format!("{name}: type {:?} vs {:?}", ea.kind, eb.kind));
            continue;
        }
        if ea.mode != eb.mode {
            diffs.push(format!("{name}: mode {:04o} vs {:04o}", ea.mode, eb.mode));
        }
        if (ea.uid, ea.gid) != (eb.uid, eb.gid) {
            diffs.push(format!(
                "{name}: owner {}:{} vs {}:{}",
                ea.uid, ea.gid, eb.uid, eb.gid
            ));
        }
        if ea.kind != Kind::Symlink && ea.mtime != eb.mtime {
            diffs.push(format!(
                "{name}: mtime {}.{:09} vs {}.{:09}",
                ea.mtime.0, ea.mtime.1, eb.mtime.0, eb.mtime.1
            ));
        }
        match ea.kind {
            Kind::File if ea.size != eb.size => {
                diffs.push(format!("{name}: size {} vs {}", ea.size, eb.size));
            }
            Kind::File => match first_difference(&join_rel(a, rel), &join_rel(b, rel)) {
                Ok(None) => {}
                Ok(Some(at)) => diffs.push(format!("{name}: contents differ at byte {at}")),
                Err(e) => diffs.push(format!("{name}: cannot compare contents: {e}")),
            },
            Kind::Symlink if ea.link != eb.link => {
                diffs.push(format!(
                    "{name}: symlink -> {:?} vs -> {:?}",
                    ea.link, eb.link
                ));
            }
            Kind::CharDevice | Kind::BlockDevice if ea.rdev != eb.rdev => {
                diffs.push(format!("{name}: device {:#x} vs {:#x}", ea.rdev, eb.rdev));
            }
            _ => {}
        }
    }
    diffs
}

/// Formats the first 20 differences between `a` and `b` for a failure message.
pub fn describe_differences(a: &Path, b: &Path, diffs: &[String]) -> String {
    let mut s = format!(
        "{} difference(s) between A = {} and B = {}",
        diffs.len(),
        a.display(),
        b.display()
    );
    if diffs.len() > 20 {
        s.push_str(" (first 20)");
    }
    s.push(':');
    for d in diffs.iter().take(20) {
        let _ = write!(s, "\n  - {d}");
    }
    s
}

/// Panics with a readable diff unless the trees at `a` and `b` are identical right now.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let diffs = compare_trees(a, b);
    assert!(diffs.is_empty(), "{}", describe_differences(a, b, &diffs));
}

/// Polls [`compare_trees`] every 200 ms until `a` and `b` are identical; panics with the first 20
/// differences after `timeout`.
pub fn assert_converges(a: &Path, b: &Path, timeout: Duration) {
    converge(a, &[b], timeout, None);
}

fn converge(src: &Path, targets: &[&Path], timeout: Duration, mut syncer: Option<&mut Syncer>) {
    let start = Instant::now();
    loop {
        let pending: Vec<(&Path, Vec<String>)> = targets
            .iter()
            .map(|t| (*t, compare_trees(src, t)))
            .filter(|(_, d)| !d.is_empty())
            .collect();
        if pending.is_empty() {
            eprintln!("converged after {:.1?}", start.elapsed());
            return;
        }
        if let Some(s) = syncer.as_deref_mut() {
            s.assert_running("while the trees were converging");
        }
        if start.elapsed() >= timeout {
            let report: Vec<String> = pending
                .iter()
                .map(|(t, d)| describe_differences(src, t, d))
                .collect();
            panic!("no convergence after {timeout:?}:\n{}", report.join("\n"));
        }
        thread::sleep(Duration::from_millis(200));
    }
}

// ---------------------------------------------------------------------------------------------
// The usual setup

/// Which kernel event source a watching scenario runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    Fanotify,
    Inotify,
    Ebpf,
}

impl SourceKind {
    /// The `--source-kind` value.
    pub fn arg(self) -> &'static str {
        match self {
            SourceKind::Fanotify => "fanotify",
            SourceKind::Inotify => "inotify",
            SourceKind::Ebpf => "ebpf",
        }
    }

    /// The arguments that select this source: `--source-kind KIND`, and for eBPF the hooks
    /// named by `SYNCER_E2E_EBPF_HOOKS` (`cargo xtask vm-test` runs the eBPF scenarios once
    /// with `fsnotify` and once with `tracepoints`; unset, syncer picks).
    pub fn args(self) -> Vec<String> {
        let mut v = vec!["--source-kind".to_string(), self.arg().to_string()];
        if self == SourceKind::Ebpf {
            if let Some(h) = std::env::var("SYNCER_E2E_EBPF_HOOKS")
                .ok()
                .filter(|h| !h.is_empty())
            {
                v.extend(["--ebpf-hooks".to_string(), h]);
            }
        }
        v
    }
}

/// Expands `per_source_kind!(scenario_a, scenario_b)` into, for each scenario function
/// `fn scenario_a(kind: SourceKind)` of the current module, a module `scenario_a` with three
/// tests: `scenario_a::fanotify`, `scenario_a::inotify` and `scenario_a::ebpf`.
macro_rules! per_source_kind {
    ($($scenario:ident),+ $(,)?) => {$(
        mod $scenario {
            #[test]
            fn fanotify() {
                super::$scenario($crate::util::SourceKind::Fanotify);
            }

            #[test]
            fn inotify() {
                super::$scenario($crate::util::SourceKind::Inotify);
            }

            #[test]
            fn ebpf() {
                super::$scenario($crate::util::SourceKind::Ebpf);
            }
        }
    )+};
}

/// A scenario's fixtures: a fresh loop filesystem with the source at `<mnt>/src`, an rsync daemon
/// target and a local-directory target (both empty), and a scratch dir for configs.
pub struct Rig {
    /// The source directory, `<mnt>/src`.
    pub src: PathBuf,
    /// The local-directory target; may be pointed elsewhere before starting syncer.
    pub local: PathBuf,
    pub daemon: RsyncDaemon,
    pub fs: LoopFs,
    scratch: TempDir,
}

impl Rig {
    /// Sets everything up, or prints `SKIP: ...` and returns `None` (see [`skip`]).
    pub fn new() -> Option<Rig> {
        Self::with_fs_size(LoopFs::DEFAULT_SIZE)
    }

    /// [`Rig::new`] with a source filesystem of `bytes` (one inode per 4 KiB).
    pub fn with_fs_size(bytes: u64) -> Option<Rig> {
        if skip() {
            return None;
        }
        let fs = LoopFs::with_size(bytes);
        let src = fs.mkdir("src");
        let scratch = temp_dir("rig");
        let local = scratch.path().join("local-target");
        mkdirs(&local);
        let daemon = RsyncDaemon::new();
        Some(Rig {
            src,
            local,
            daemon,
            fs,
            scratch,
        })
    }

    /// A directory for config files and other test-owned files (not a target).
    pub fn scratch(&self) -> &Path {
        self.scratch.path()
    }

    /// Writes `text` to `<scratch>/<name>` and returns its path.
    pub fn write_config(&self, name: &str, text: &str) -> PathBuf {
        let p = self.scratch().join(name);
        write_file(&p, text.as_bytes());
        p
    }

    /// The trees that must end up identical to the source.
    pub fn target_dirs(&self) -> [&Path; 2] {
        [self.daemon.path(), &self.local]
    }

    /// `--target <daemon url> --target <local dir>`
    pub fn target_args(&self) -> Vec<OsString> {
        vec![
            "--target".into(),
            self.daemon.url().into(),
            "--target".into(),
            self.local.clone().into_os_string(),
        ]
    }

    /// The control socket of the rig's syncer (`syncer status --control-socket ...`).
    pub fn control_socket(&self) -> PathBuf {
        self.scratch.path().join("control.sock")
    }

    /// The state directory every syncer of this rig uses (so a restart finds its state).
    pub fn state_dir(&self) -> PathBuf {
        self.scratch.path().join("state")
    }

    /// Spawns `syncer run --source SRC --target DAEMON --target LOCAL --source-kind KIND
    /// --delay 50 --state-dir STATE EXTRA...` without waiting for anything.
    pub fn spawn(&self, kind: SourceKind, extra: &[&str]) -> Syncer {
        let mut args: Vec<OsString> =
            vec!["run".into(), "--source".into(), self.src.clone().into()];
        args.extend(["--state-dir".into(), self.state_dir().into_os_string()]);
        args.extend([
            "--control-socket".into(),
            self.control_socket().into_os_string(),
        ]);
        args.extend(self.target_args());
        args.extend(kind.args().into_iter().map(OsString::from));
        args.extend(["--delay", DELAY_MS].map(OsString::from));
        args.extend(extra.iter().map(OsString::from));
        Syncer::spawn(args)
    }

    /// [`Rig::spawn`] with no extra arguments, then waits for `initial sync finished`.
    pub fn start(&self, kind: SourceKind) -> Syncer {
        let mut syncer = self.spawn(kind, &[]);
        syncer.wait_for_log(INITIAL_SYNC_FINISHED, MARKER_TIMEOUT);
        syncer
    }

    /// Polls until both targets equal the source (panicking if `syncer` exits meanwhile or after
    /// [`CONVERGE_TIMEOUT`], with the first differences).
    pub fn assert_converges(&self, syncer: &mut Syncer) {
        converge(
            &self.src,
            &self.target_dirs(),
            CONVERGE_TIMEOUT,
            Some(syncer),
        );
    }

    /// Asserts right now that both targets equal the source.
    pub fn assert_targets_identical(&self) {
        for t in self.target_dirs() {
            assert_same_tree(&self.src, t);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Writers

/// A small deterministic PRNG (SplitMix64).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x2545_F491_4F6C_DD1D)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform-ish in `0..n` (`0` if `n == 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// `len` pseudo-random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(len + 8);
        while v.len() < len {
            v.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        v.truncate(len);
        v
    }
}

/// A deterministic set of files in nested directories: file `i` of `files` lives at
/// `d<i % fanout>/d<(i / fanout) % fanout>/...` (`depth` levels) `/f<i>`, with a pseudo-random size
/// in `0..=max_size` and pseudo-random contents derived from `seed` and `i`.
#[derive(Clone, Debug)]
pub struct TreeSpec {
    pub files: Range<usize>,
    pub fanout: usize,
    pub depth: usize,
    pub max_size: usize,
    pub seed: u64,
}

impl TreeSpec {
    /// `n` files, fan-out 6, depth 3, up to 20 KiB each.
    pub fn new(n: usize) -> TreeSpec {
        TreeSpec {
            files: 0..n,
            fanout: 6,
            depth: 3,
            max_size: 20 * 1024,
            seed: 0x5EED,
        }
    }

    /// The relative path of file `i`.
    pub fn path_of(&self, i: usize) -> PathBuf {
        let mut p = PathBuf::new();
        let mut x = i;
        for _ in 0..self.depth {
            p.push(format!("d{}", x % self.fanout));
            x /= self.fanout;
        }
        p.push(format!("f{i:06}"));
        p
    }

    /// The contents of file `i`.
    pub fn contents_of(&self, i: usize) -> Vec<u8> {
        let mut rng = Rng::new(self.seed ^ (i as u64).wrapping_mul(0x0100_0000_01B3));
        let len = rng.below(self.max_size as u64 + 1) as usize;
        rng.bytes(len)
    }
}

/// Writes the files of `spec` under `root` (creating directories as needed) and returns their
/// paths relative to `root`.
pub fn make_tree(root: &Path, spec: &TreeSpec) -> Vec<PathBuf> {
    spec.files
        .clone()
        .map(|i| {
            let rel = spec.path_of(i);
            let path = root.join(&rel);
            if let Some(parent) = path.parent() {
                mkdirs(parent);
            }
            write_file(&path, &spec.contents_of(i));
            rel
        })
        .collect()
}

/// A background thread that keeps creating small files under a directory (a new subdirectory
/// every 50 files), one per `every`, until stopped.
pub struct Writer {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<usize>,
}

impl Writer {
    pub fn spawn(dir: PathBuf, every: Duration) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = thread::spawn(move || {
            let mut n = 0usize;
            while !flag.load(Ordering::Relaxed) {
                let sub = dir.join(format!("batch{:04}", n / 50));
                mkdirs(&sub);
                write_file(
                    &sub.join(format!("w{n:06}")),
                    format!("write number {n}\n").as_bytes(),
                );
                n += 1;
                thread::sleep(every);
            }
            n
        });
        Writer { stop, handle }
    }

    /// Stops the thread and returns how many files it wrote.
    pub fn stop(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("writer thread panicked")
    }
}

/// `OsStr` from raw bytes (for non-UTF-8 names).
pub fn os(bytes: &[u8]) -> &OsStr {
    OsStr::from_bytes(bytes)
}

/// Creates `path` and its parents.
pub fn mkdirs(path: &Path) {
    fs::create_dir_all(path).unwrap_or_else(|e| panic!("mkdir -p {}: {e}", path.display()));
}

/// Creates or truncates `path` (and any missing parent directories) and writes `data`.
pub fn write_file(path: &Path, data: &[u8]) {
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() && !parent.exists() {
            mkdirs(parent);
        }
    }
    fs::write(path, data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Appends `data` to `path` (opened and closed for this one write).
pub fn append_file(path: &Path, data: &[u8]) {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(data))
        .unwrap_or_else(|e| panic!("append to {}: {e}", path.display()));
}

/// Sets the mtime (not following symlinks), leaving the atime alone.
pub fn set_mtime(path: &Path, secs: i64, nsec: i64) {
    utimensat(
        None,
        path,
        &TimeSpec::UTIME_OMIT,
        &TimeSpec::new(secs, nsec),
        UtimensatFlags::NoFollowSymlink,
    )
    .unwrap_or_else(|e| panic!("utimensat {}: {e}", path.display()));
}

/// chmod (permission bits including setuid/setgid/sticky).
pub fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

/// lchown.
pub fn lchown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("lchown {uid}:{gid} {}: {e}", path.display()));
}

/// Creates the symlink `link` -> `target`.
pub fn symlink(target: impl AsRef<Path>, link: &Path) {
    std::os::unix::fs::symlink(target.as_ref(), link).unwrap_or_else(|e| {
        panic!(
            "ln -s {} {}: {e}",
            target.as_ref().display(),
            link.display()
        )
    });
}

/// rename(2).
pub fn rename(from: &Path, to: &Path) {
    fs::rename(from, to).unwrap_or_else(|e| panic!("mv {} {}: {e}", from.display(), to.display()));
}

/// Removes a file, symlink or whole directory tree.
pub fn remove(path: &Path) {
    let md = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
    let r = if md.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    r.unwrap_or_else(|e| panic!("rm -r {}: {e}", path.display()));
}

/// How many regular files are under `root` (recursively, not following symlinks).
pub fn count_files(root: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for de in fs::read_dir(&dir).unwrap_or_else(|e| panic!("ls {}: {e}", dir.display())) {
            let de = de.expect("readdir");
            let ft = de.file_type().expect("file type");
            if ft.is_dir() {
                stack.push(de.path());
            } else if ft.is_file() {
                n += 1;
            }
        }
    }
    n
}

/// Names that trip up command lines, shells, rsync filter rules and `--files-from` lists: spaces,
/// control characters (newline!), leading dashes, comment and rule prefixes, wildcards, `:`,
/// non-UTF-8 bytes and 255-byte names.
pub fn odd_names() -> Vec<Vec<u8>> {
    let mut names: Vec<Vec<u8>> = [
        &b"with space"[..],
        b" leading space",
        b"trailing space ",
        b"new\nline",
        b"carriage\rreturn",
        b"tab\there",
        b"ctl\x01char",
        b"-leading-dash",
        b"--help",
        b"-",
        b"#hash",
        b";semicolon",
        b"+ plus rule",
        b"- minus rule",
        b"star*question?",
        b"[brackets]",
        b"back\\slash",
        b"quote'double\"",
        b"dollar$HOME",
        b"host:path",
        b"rsync:",
        b"~tilde",
        b"..dots",
        b".hidden",
        b"\xff\xfe",
        b"caf\xc3\xa9",
        b"mixed\xff\xc3\xa9\x80",
    ]
    .iter()
    .map(|n| n.to_vec())
    .collect();
    names.push(vec![b'a'; 255]);
    names.push(format!("{}x", "\u{e9}".repeat(127)).into_bytes());
    names
}

/// Populates `root` with one of everything: every [`odd_names`] name as a file and as a
/// directory holding a file of the same name, symlinks (relative, absolute, dangling, to a
/// directory, with a non-UTF-8 target, a loop), empty files and directories, unusual modes
/// (setuid, read-only directories, sticky), foreign owners, and mtimes far in the past and future
/// with nanoseconds (set last, on files and directories).
pub fn make_variety(root: &Path) {
    let names = odd_names();
    let odd_dirs = root.join("odd dirs");
    mkdirs(&odd_dirs);
    for (i, name) in names.iter().enumerate() {
        write_file(&root.join(os(name)), format!("odd file {i}\n").as_bytes());
        let dir = odd_dirs.join(os(name));
        mkdirs(&dir);
        write_file(
            &dir.join(os(name)),
            format!("nested odd file {i}\n").as_bytes(),
        );
    }

    let links = root.join("links");
    mkdirs(&links);
    symlink("../with space", &links.join("relative"));
    symlink("/etc/passwd", &links.join("absolute"));
    symlink("does/not/exist", &links.join("dangling"));
    symlink("../odd dirs", &links.join("to-dir"));
    symlink(
        os(b"new\nline\xff target"),
        &links.join(os(b"odd\xfftarget")),
    );
    symlink("loop", &links.join("loop"));

    write_file(&root.join("empty"), b"");
    mkdirs(&root.join("empty-dir"));
    mkdirs(&root.join("e1/e2/e3"));

    let modes = root.join("modes");
    mkdirs(&modes);
    for mode in [0o600, 0o755, 0o444, 0o000, 0o4755, 0o2750, 0o1644] {
        let p = modes.join(format!("m{mode:04o}"));
        write_file(&p, format!("mode {mode:o}\n").as_bytes());
        chmod(&p, mode);
    }
    for mode in [0o700, 0o555, 0o1777, 0o2775] {
        let d = modes.join(format!("d{mode:04o}"));
        mkdirs(&d);
        write_file(&d.join("inside"), b"inside\n");
        chmod(&d, mode);
    }

    let owners = root.join("owners");
    mkdirs(&owners);
    write_file(&owners.join("u1234"), b"owned by 1234:5678\n");
    lchown(&owners.join("u1234"), 1234, 5678);
    mkdirs(&owners.join("dir"));
    lchown(&owners.join("dir"), 4321, 8765);
    symlink("u1234", &owners.join("link"));
    lchown(&owners.join("link"), 1111, 2222);

    let times = root.join("times");
    mkdirs(&times);
    for (name, secs, nsec) in [
        ("old", 981_173_106, 123_456_789),
        ("future", 4_102_444_800, 999_999_999),
        ("whole-second", 1_234_567_890, 0),
    ] {
        let p = times.join(name);
        write_file(&p, name.as_bytes());
        set_mtime(&p, secs, nsec);
    }
    mkdirs(&times.join("dir"));
    set_mtime(&times.join("dir"), 1_000_000_000, 500_000_000);
    set_mtime(&times, 1_111_111_111, 111_111_111);
}
