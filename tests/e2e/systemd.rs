//! syncer as a service of a real systemd (PID 1 of a `systemd-nspawn` container booted from
//! this machine's own root, seen through a throw-away overlay; the rig's filesystems are bound
//! in at the same paths, the rsync daemon is the host's on 127.0.0.1).
//! - `a_crash_under_systemd_reads_the_kept_queue_and_walks_nothing`: the unit keeps the
//!   fanotify group in systemd's fd store; syncer is killed with SIGKILL, the tree changes
//!   while it is down (new files, a rewrite that keeps size and mtime, a deleted tree, a
//!   renamed directory), systemd restarts it and hands the group back: the restart reads what
//!   the kernel queued meanwhile, walks nothing, sends only what changed, and the trees end
//!   identical. Then a crash under load (a writer creating a file every millisecond across the
//!   kill): what the dying process had read and not journaled comes back from its spool, the
//!   rest from the queue, and again nothing is walked.
//! - `the_shipped_unit_is_ready_once_live_reports_status_and_drains_on_stop`: `dist/`'s
//!   hardened `syncer.service` (verified by `systemd-analyze`, its exposure scored), with the
//!   binary and a config installed where it expects them: active only after READY, STATUS
//!   says the phase, `systemctl reload` applies a changed config, `systemctl stop` returns
//!   after the drain with the trees identical; logs reach the journal with their fields.
//! - `a_stuck_reader_stops_the_watchdog_pings_and_systemd_restarts_syncer`: the reader paused
//!   by a failpoint, pings stop, systemd kills the process and the restart replicates.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

/// One container at a time: two booted from the same root at once do not both come up.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A container with systemd as PID 1; dropped: killed, its overlay unmounted.
struct Container {
    _turn: std::sync::MutexGuard<'static, ()>,
    nspawn: std::process::Child,
    leader: u32,
    dir: tempfile::TempDir,
}

/// Whether this machine can boot a container; else prints `SKIP:` and returns false, or fails
/// under `SYNCER_E2E_REQUIRE=1`.
fn containers() -> bool {
    let Some(why) = container_unavailable() else {
        return true;
    };
    let required =
        std::env::var_os("SYNCER_E2E_REQUIRE").is_some_and(|v| !v.is_empty() && v != "0");
    assert!(!required, "cannot boot a systemd container: {why}");
    eprintln!("SKIP: {why}");
    false
}

/// Why this machine cannot boot a container.
fn container_unavailable() -> Option<String> {
    for p in [
        "/usr/bin/systemd-nspawn",
        "/lib/systemd/systemd",
        "/usr/bin/nsenter",
    ] {
        if !Path::new(p).exists() {
            return Some(format!(
                "{p} not found (Debian packages systemd-container, systemd, util-linux)"
            ));
        }
    }
    None
}

impl Container {
    /// Boots a container whose root is an overlay of `/` (writes go to a tmpfs), with `binds`
    /// mounted at the same paths; waits until its systemd says it is running.
    fn boot(binds: &[&Path]) -> Container {
        let turn = ONE_AT_A_TIME
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let dir = temp_dir("nspawn");
        let up = dir.path().join("up");
        let root = dir.path().join("root");
        mkdirs(&up);
        mkdirs(&root);
        run_tool(
            Command::new(tool("mount"))
                .args(["-t", "tmpfs", "tmpfs"])
                .arg(&up),
        )
        .unwrap();
        mkdirs(&up.join("u"));
        mkdirs(&up.join("w"));
        run_tool(
            Command::new(tool("mount"))
                .args(["-t", "overlay", "overlay", "-o"])
                .arg(format!(
                    "lowerdir=/,upperdir={},workdir={}",
                    up.join("u").display(),
                    up.join("w").display()
                ))
                .arg(&root),
        )
        .unwrap();
        let mut cmd = Command::new("/usr/bin/systemd-nspawn");
        cmd.arg(format!("--directory={}", root.display()))
            .args([
                "--boot",
                "--register=no",
                "--keep-unit",
                "--console=passive",
            ])
            // nspawn's seccomp filter refuses fanotify and open_by_handle_at by default.
            .args(["--capability=all", "--system-call-filter=@file-system fanotify_init fanotify_mark open_by_handle_at name_to_handle_at bpf perf_event_open"])
            .arg("--machine")
            .arg(format!("syncer-e2e-{}", std::process::id()));
        for b in binds {
            cmd.arg(format!("--bind={}", b.display()));
        }
        let log = std::fs::File::create(dir.path().join("nspawn.log")).unwrap();
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        eprintln!("$ {cmd:?}");
        let nspawn = cmd.spawn().expect("spawn systemd-nspawn");
        let mut c = Container {
            _turn: turn,
            leader: 0,
            nspawn,
            dir,
        };
        let t0 = Instant::now();
        loop {
            assert!(
                t0.elapsed() < Duration::from_secs(90),
                "the container did not boot:\n{}",
                std::fs::read_to_string(c.dir.path().join("nspawn.log")).unwrap_or_default()
            );
            if let Some(pid) = c.find_leader() {
                c.leader = pid;
                let state = c.exec(&["systemctl", "is-system-running"]);
                if state.trim() == "running" || state.trim() == "degraded" {
                    return c;
                }
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// The container's PID 1, seen from here: nspawn's child.
    fn find_leader(&self) -> Option<u32> {
        let kids =
            std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.nspawn.id()))
                .ok()?;
        kids.split_whitespace().next()?.parse().ok()
    }

    /// Runs `argv` inside the container; its stdout (stderr is echoed).
    fn exec(&self, argv: &[&str]) -> String {
        let (_, out, err) = self.exec_status(argv);
        if !err.is_empty() {
            eprintln!("[container] {argv:?}: {err}");
        }
        out
    }

    /// Installs `text` as a runtime unit (under the container's /run) and starts it; `via`: a
    /// directory bound into the container, for the file on its way in.
    fn start_unit(&self, name: &str, text: &str, via: &Path) {
        let file = via.join(name);
        write_file(&file, text.as_bytes());
        let dest = format!("/run/systemd/system/{name}");
        self.exec(&["mkdir", "-p", "/run/systemd/system"]);
        self.exec(&["cp", file.to_str().unwrap(), &dest]);
        self.exec(&["systemctl", "daemon-reload"]);
        self.exec(&["systemctl", "start", name]);
    }

    /// Runs `argv` inside the container: whether it succeeded, its stdout and stderr.
    fn exec_status(&self, argv: &[&str]) -> (bool, String, String) {
        let out = Command::new("/usr/bin/nsenter")
            .arg("-t")
            .arg(self.leader.to_string())
            .args(["-m", "-u", "-i", "-p", "--"])
            .args(argv)
            .stdin(Stdio::null())
            .output()
            .expect("run nsenter");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Puts `text` at `dest` inside the container, through `via` (a directory bound in).
    fn put(&self, dest: &str, text: &str, via: &Path) {
        let file = via.join(dest.trim_start_matches('/').replace('/', "_"));
        write_file(&file, text.as_bytes());
        let dir = Path::new(dest)
            .parent()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        self.exec(&["mkdir", "-p", &dir]);
        self.exec(&["cp", file.to_str().unwrap(), dest]);
    }

    /// A unit's property (`systemctl show -P`).
    fn property(&self, unit: &str, name: &str) -> String {
        self.exec(&["systemctl", "show", "-P", name, unit])
            .trim()
            .to_string()
    }

    fn main_pid(&self, unit: &str) -> u32 {
        self.exec(&["systemctl", "show", "-P", "MainPID", unit])
            .trim()
            .parse()
            .unwrap_or(0)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // Killing the container's PID 1 ends every process of its PID namespace; nspawn
        // killed alone would leave them running.
        if let Some(pid) = self.find_leader() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
        let root = self.dir.path().join("root");
        for m in [root, self.dir.path().join("up")] {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// A unit running `exec_start` (which runs syncer on the rig: source, daemon target, state)
/// with the fd store, restarted after every death, both processes' output appended to `log`.
fn unit(log: &Path, restart_sec: u32, exec_start: &str) -> String {
    format!(
        "[Service]\n\
         Type=simple\n\
         NotifyAccess=main\n\
         FileDescriptorStoreMax=4\n\
         Restart=always\n\
         RestartSec={restart_sec}\n\
         Environment=RUST_LOG=info NO_COLOR=1\n\
         StandardOutput=append:{log}\n\
         StandardError=append:{log}\n\
         ExecStart={exec_start}\n",
        log = log.display(),
    )
}

/// `syncer run` on the rig (fanotify, its daemon target, its state) as `bin`.
fn run_args(bin: &Path, rig: &Rig) -> String {
    format!(
        "{bin} run --source {src} --target {url} --source-kind fanotify --delay 50 --state-dir {state}",
        bin = bin.display(),
        src = rig.src.display(),
        url = rig.daemon.url(),
        state = rig.state_dir().display(),
    )
}

/// The log file's text (the unit appends both processes' output to it).
fn read_log(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

fn wait_log(p: &Path, marker: &str, from: usize, timeout: Duration) -> String {
    let t0 = Instant::now();
    loop {
        let log = read_log(p);
        if log.get(from..).is_some_and(|l| l.contains(marker)) {
            return log[from..].to_string();
        }
        assert!(
            t0.elapsed() < timeout,
            "no {marker:?} in the unit's log after {timeout:?}:\n{}",
            log.get(from..).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_crash_under_systemd_reads_the_kept_queue_and_walks_nothing() {
    let Some(rig) = Rig::new() else { return };
    if !containers() {
        return;
    }
    let src = &rig.src;
    let files = make_tree(
        &src.join("t"),
        &TreeSpec {
            max_size: 4096,
            ..TreeSpec::new(600)
        },
    );
    let bin = std::fs::canonicalize(syncer_bin()).unwrap();
    let bin_dir = bin.parent().unwrap().to_path_buf();
    let log = rig.scratch().join("unit.log");
    let container = Container::boot(&[rig.fs.path(), rig.scratch(), &bin_dir]);
    let unit = unit(&log, 2, &run_args(&bin, &rig));
    container.start_unit("syncer-e2e.service", &unit, rig.scratch());
    wait_log(&log, INITIAL_SYNC_FINISHED, 0, MARKER_TIMEOUT);
    let first = wait_log(&log, "fd store", 0, MARKER_TIMEOUT);
    assert!(
        first.contains("handed to systemd's fd store"),
        "the first process stores its group:\n{first}"
    );
    let target = rig.daemon.path();
    converge_to(src, target);
    write_file(&src.join("t/live-before.txt"), b"seen live");
    converge_to(src, target);

    // The crash, and changes while no syncer runs.
    let pid = container.main_pid("syncer-e2e.service");
    assert!(pid > 0, "the unit has a main process");
    let before = read_log(&log).len();
    let received_before = rig.daemon.received().len();
    container.exec(&["kill", "-9", &pid.to_string()]);
    let t0 = Instant::now();
    while container.main_pid("syncer-e2e.service") == pid && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    // The rewrite keeps size and mtime: only its event (or a ctime walk) can tell.
    let k = src.join("t").join(&files[0]);
    let meta = std::fs::metadata(&k).unwrap();
    let mut data = std::fs::read(&k).unwrap();
    for b in data.iter_mut() {
        *b = b.wrapping_add(1);
    }
    write_file(&k, &data);
    set_mtime(&k, meta.mtime(), meta.mtime_nsec());
    write_file(&src.join("t/made-while-down.txt"), b"queued in the kernel");
    mkdirs(&src.join("t/new-dir/deeper"));
    write_file(&src.join("t/new-dir/deeper/f"), b"nested");
    std::fs::remove_dir_all(src.join("t/d1")).unwrap();
    std::fs::rename(src.join("t/d2"), src.join("t/d2-renamed")).unwrap();

    let second = wait_log(&log, INITIAL_SYNC_FINISHED, before, Duration::from_secs(60));
    converge_to(src, target);
    assert!(
        second.contains("systemd handed back the fanotify group"),
        "the restarted syncer gets the group back:\n{second}"
    );
    assert!(
        second.contains("kept_group=true"),
        "and takes it up:\n{second}"
    );
    assert!(
        second.contains("the kernel kept every event since the previous syncer"),
        "the restart trusts the kept queue:\n{second}"
    );
    assert!(
        !second.contains("catch-up walk done") && !second.contains("walk ahead"),
        "no walk after a crash with the group kept:\n{second}"
    );
    // What the restart sent: the changed files (and the renamed directory's files), not the tree.
    let received: Vec<String> = rig.daemon.received()[received_before..].to_vec();
    let renamed = files.iter().filter(|f| f.starts_with("d2")).count();
    assert!(
        received.iter().any(|r| r.contains("made-while-down.txt"))
            && received
                .iter()
                .any(|r| r.ends_with(&files[0].display().to_string())),
        "the changes made while down were sent: {received:?}"
    );
    assert!(
        received.len() <= renamed + 10,
        "the restart sends what changed ({} files below the renamed directory, a few new and \
         rewritten), not the tree of {}: {} sent: {received:?}",
        renamed,
        files.len(),
        received.len()
    );
    eprintln!("the restart sent {} files:\n{second}", received.len());

    // A crash under load: a writer keeps creating files (one per millisecond) across the
    // kill. What the dying syncer had read and kept but not journaled is replayed from its
    // spool; the rest waits in the kernel's queue: still no walk. A kill that lands between
    // the kernel handing over a buffer and its spool write (tens of microseconds per read)
    // must walk instead, and says so: the crash is tried up to three times until one needs
    // no walk.
    let mut seamless = false;
    for attempt in 0..3 {
        let before = read_log(&log).len();
        let received_before = rig.daemon.received().len();
        let writer = Writer::spawn(
            src.join(format!("t/load{attempt}")),
            Duration::from_millis(1),
        );
        std::thread::sleep(Duration::from_millis(1500));
        let pid = container.main_pid("syncer-e2e.service");
        container.exec(&["kill", "-9", &pid.to_string()]);
        std::thread::sleep(Duration::from_millis(1500));
        let written = writer.stop();
        let next = wait_log(&log, INITIAL_SYNC_FINISHED, before, Duration::from_secs(60));
        converge_to(src, target);
        let received = rig.daemon.received().len() - received_before;
        eprintln!("crash under load {attempt}: {written} files written, {received} sent");
        // Under load a file is often sent at its creation and again when it is closed.
        assert!(
            received <= written * 3 / 2,
            "the crash under load costs what was written ({written} files): {received} sent"
        );
        if next.contains("the kernel kept every event since the previous syncer") {
            assert!(
                next.contains("kept_group=true") && !next.contains("catch-up walk done"),
                "a crash under load: the restart trusts the kept queue and spool:\n{next}"
            );
            seamless = true;
            break;
        }
        assert!(
            next.contains("may have died with events read and not yet kept")
                && next.contains("catch-up walk done"),
            "a restart that cannot trust the queue says why and walks:\n{next}"
        );
    }
    assert!(seamless, "three crashes under load all needed a walk");
    drop(container);
}

#[test]
fn a_read_kept_and_not_journaled_is_replayed_after_a_crash() {
    if !failpoints() {
        return;
    }
    let Some(rig) = Rig::new() else { return };
    if !containers() {
        return;
    }
    let src = &rig.src;
    make_tree(&src.join("t"), &TreeSpec::new(50));
    let bin = std::fs::canonicalize(syncer_bin()).unwrap();
    let bin_dir = bin.parent().unwrap().to_path_buf();
    let log = rig.scratch().join("unit.log");
    // The first process stops its reader on the first read that took changes, after keeping
    // it in the spool and before handing it on; the restarted one runs free.
    let flag = rig.scratch().join("pause-once");
    write_file(&flag, b"");
    let container = Container::boot(&[rig.fs.path(), rig.scratch(), &bin_dir]);
    let unit = unit(
        &log,
        1,
        &format!(
            "/bin/sh -c 'if [ -e {flag} ]; then rm {flag}; export FAILPOINTS=source-handing=pause; fi; exec {run}'",
            flag = flag.display(),
            run = run_args(&bin, &rig),
        ),
    );
    container.start_unit("syncer-spool.service", &unit, rig.scratch());
    wait_log(&log, INITIAL_SYNC_FINISHED, 0, MARKER_TIMEOUT);
    wait_log(&log, "handed to systemd's fd store", 0, MARKER_TIMEOUT);
    let target = rig.daemon.path();
    converge_to(src, target);

    // Only the spool will know of these once the process is gone: made outside the source
    // tree (on its filesystem: the reader reads those events and drops them), then moved in
    // by one rename, the single change of the read that the failpoint stops.
    let prep = rig.fs.path().join("prep/only-in-the-spool");
    mkdirs(&prep);
    for i in 0..5 {
        write_file(&prep.join(format!("f{i}")), b"kept raw");
    }
    std::thread::sleep(Duration::from_millis(300));
    std::fs::rename(&prep, src.join("t/only-in-the-spool")).unwrap();
    let spool = rig.state_dir().join("spool");
    let t0 = Instant::now();
    while std::fs::metadata(&spool).map_or(0, |m| m.len()) == 0 {
        assert!(
            t0.elapsed() < MARKER_TIMEOUT,
            "the read was never kept in the spool"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = read_log(&log).len();
    let pid = container.main_pid("syncer-spool.service");
    container.exec(&["kill", "-9", &pid.to_string()]);
    let next = wait_log(&log, INITIAL_SYNC_FINISHED, before, Duration::from_secs(60));
    converge_to(src, target);
    assert!(
        next.contains(
            "replayed what the previous syncer read from the queue and had not journaled"
        ) && next.contains("the kernel kept every event since the previous syncer")
            && !next.contains("catch-up walk done"),
        "the restart replays the kept read and walks nothing:\n{next}"
    );
    drop(container);
}

/// The shipped unit, the binary at the path it runs (`/usr/bin/syncer`) and a config at
/// `/etc/syncer/syncer.toml` for the rig (fanotify, its daemon target), in `container`; a
/// drop-in adds `drop_in` and appends the output to `log`. The source lives under /tmp,
/// which the unit's PrivateTmp= would hide: the drop-in turns that off.
fn install_shipped_unit(container: &Container, rig: &Rig, bin: &Path, log: &Path, drop_in: &str) {
    let unit = std::fs::read_to_string(workspace_root().join("dist/syncer.service")).unwrap();
    container.exec(&[
        "install",
        "-m",
        "755",
        bin.to_str().unwrap(),
        "/usr/bin/syncer",
    ]);
    container.put(
        "/etc/syncer/syncer.toml",
        &format!(
            "source = \"{}\"\ntargets = [\"{}\"]\nsource_kind = \"fanotify\"\ndelay_ms = 50\n",
            rig.src.display(),
            rig.daemon.url()
        ),
        rig.scratch(),
    );
    container.put("/etc/systemd/system/syncer.service", &unit, rig.scratch());
    container.put(
        "/etc/systemd/system/syncer.service.d/e2e.conf",
        &format!(
            "[Service]\nPrivateTmp=no\nEnvironment=NO_COLOR=1\nStandardOutput=append:{log}\nStandardError=append:{log}\n{drop_in}",
            log = log.display()
        ),
        rig.scratch(),
    );
    container.exec(&["systemctl", "daemon-reload"]);
}

/// The workspace's root (the e2e tests run from `syncer/`).
fn workspace_root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn the_shipped_unit_is_ready_once_live_reports_status_and_drains_on_stop() {
    if !failpoints() {
        return;
    }
    let Some(rig) = Rig::new() else { return };
    if !containers() {
        return;
    }
    let src = &rig.src;
    make_tree(&src.join("t"), &TreeSpec::new(200));
    let bin = std::fs::canonicalize(syncer_bin()).unwrap();
    let bin_dir = bin.parent().unwrap().to_path_buf();
    let log = rig.scratch().join("unit.log");
    let container = Container::boot(&[rig.fs.path(), rig.scratch(), &bin_dir]);
    // READY is held back 3 s after the source is live: meanwhile the unit is activating.
    install_shipped_unit(
        &container,
        &rig,
        &bin,
        &log,
        "Environment=FAILPOINTS=service-ready=sleep(3000)\n",
    );

    // The unit as shipped: systemd accepts it, and its exposure is what ARCHITECTURE.md says.
    let (ok, out, err) = container.exec_status(&[
        "systemd-analyze",
        "verify",
        "/etc/systemd/system/syncer.service",
    ]);
    assert!(
        ok && err.trim().is_empty(),
        "systemd-analyze verify: {out}{err}"
    );
    for unit in ["syncer.service", "syncer@.service"] {
        let path = workspace_root().join("dist").join(unit);
        let out = Command::new("systemd-analyze")
            .args(["security", "--offline=yes"])
            .arg(&path)
            .output()
            .expect("run systemd-analyze security");
        let text = String::from_utf8_lossy(&out.stdout);
        let level: f64 = text
            .lines()
            .find_map(|l| l.split("Overall exposure level for ").nth(1))
            .and_then(|l| l.split(": ").nth(1))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no exposure level for {unit}:\n{text}"));
        assert!(
            level <= 3.0,
            "{unit}'s exposure is {level}, above 3.0:\n{text}"
        );
    }

    container.exec(&["systemctl", "start", "--no-block", "syncer.service"]);
    wait_log(&log, "event source live", 0, MARKER_TIMEOUT);
    let state = container.property("syncer.service", "ActiveState");
    assert_eq!(
        state, "activating",
        "live but not READY yet: the unit is not active"
    );
    let t0 = Instant::now();
    while container.property("syncer.service", "ActiveState") != "active" {
        assert!(
            t0.elapsed() < MARKER_TIMEOUT,
            "the unit never became active"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let target = rig.daemon.path();
    converge_to(src, target);
    wait_log(&log, INITIAL_SYNC_FINISHED, 0, MARKER_TIMEOUT);
    let t0 = Instant::now();
    loop {
        let status = container.property("syncer.service", "StatusText");
        if status.starts_with("live: ") && status.contains("1/1 targets up") {
            break;
        }
        assert!(
            t0.elapsed() < MARKER_TIMEOUT,
            "STATUS never said live: {status:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // A config change, then `systemctl reload`: the target's new delay takes effect.
    container.put(
        "/etc/syncer/syncer.toml",
        &format!(
            "source = \"{}\"\ntargets = [\"{}\"]\nsource_kind = \"fanotify\"\ndelay_ms = 80\n",
            rig.src.display(),
            rig.daemon.url()
        ),
        rig.scratch(),
    );
    let (ok, _, err) = container.exec_status(&["systemctl", "reload", "syncer.service"]);
    assert!(ok, "systemctl reload: {err}");
    wait_log(
        &log,
        "reloaded: targets added: none; removed: none; changed: 127.0.0.1/mod",
        0,
        MARKER_TIMEOUT,
    );
    assert_eq!(
        container.property("syncer.service", "ActiveState"),
        "active"
    );
    write_file(&src.join("t/after-the-reload"), b"sent with the new delay");
    converge_to(src, target);

    // A stop under a burst: `systemctl stop` returns once the drain is done, and nothing is
    // left behind.
    let burst = src.join("t/burst");
    mkdirs(&burst);
    for i in 0..300 {
        write_file(
            &burst.join(format!("f{i}")),
            format!("burst {i}").as_bytes(),
        );
    }
    let (ok, _, err) = container.exec_status(&["systemctl", "stop", "syncer.service"]);
    assert!(ok, "systemctl stop: {err}");
    let diffs = compare_trees(src, target);
    assert!(diffs.is_empty(), "the stop drained everything: {diffs:?}");
    let text = read_log(&log);
    assert!(text.contains("SIGTERM: draining"), "{text}");
    assert_eq!(container.property("syncer.service", "Result"), "success");
    assert_eq!(container.property("syncer.service", "ExecMainStatus"), "0");

    // With stderr connected to the journal, the log goes to the journal with its fields.
    let src_s = src.display().to_string();
    let url = rig.daemon.url();
    let (ok, _, err) = container.exec_status(&[
        "systemd-run",
        "--wait",
        "--quiet",
        "--unit=syncer-journal",
        "-p",
        "PrivateTmp=no",
        "/usr/bin/syncer",
        "sync",
        "--source",
        &src_s,
        "--target",
        &url,
        "--state-dir",
        "/var/lib/syncer-journal-test",
    ]);
    assert!(ok, "syncer sync under systemd-run: {err}");
    let journal = container.exec(&[
        "journalctl",
        "--no-pager",
        "-o",
        "json",
        "-u",
        "syncer-journal.service",
    ]);
    assert!(
        journal.contains("\"SYSLOG_IDENTIFIER\":\"syncer\"")
            && journal.contains("\"SYNCER_MS\"")
            && journal.contains("sync finished"),
        "syncer's fields in the journal:\n{journal}"
    );
    drop(container);
}

#[test]
fn a_stuck_reader_stops_the_watchdog_pings_and_systemd_restarts_syncer() {
    if !failpoints() {
        return;
    }
    let Some(rig) = Rig::new() else { return };
    if !containers() {
        return;
    }
    let src = &rig.src;
    make_tree(&src.join("t"), &TreeSpec::new(50));
    let bin = std::fs::canonicalize(syncer_bin()).unwrap();
    let bin_dir = bin.parent().unwrap().to_path_buf();
    let log = rig.scratch().join("unit.log");
    let container = Container::boot(&[rig.fs.path(), rig.scratch(), &bin_dir]);
    // The first process's reader stops at its first turn; the restarted one runs free.
    let flag = rig.scratch().join("stick-once");
    write_file(&flag, b"");
    install_shipped_unit(
        &container,
        &rig,
        &bin,
        &log,
        &format!(
            "WatchdogSec=4s\nRestart=always\nRestartSec=1\nReadWritePaths={scratch}\nExecStart=\nExecStart=/bin/sh -c 'if [ -e {flag} ]; then rm {flag}; export FAILPOINTS=source-read=pause; fi; exec /usr/bin/syncer run --config /etc/syncer/syncer.toml'\n",
            scratch = rig.scratch().display(),
            flag = flag.display(),
        ),
    );
    container.exec(&["systemctl", "start", "syncer.service"]);
    let stuck = wait_log(&log, "no longer pinging the watchdog", 0, MARKER_TIMEOUT);
    assert!(
        stuck.contains("reader"),
        "the stuck loop is named:\n{stuck}"
    );
    // systemd gives up on the silent process and starts another.
    let at = read_log(&log).len();
    wait_log(&log, "event source live", at, MARKER_TIMEOUT);
    let t0 = Instant::now();
    while container.property("syncer.service", "NRestarts") == "0" {
        assert!(
            t0.elapsed() < MARKER_TIMEOUT,
            "systemd never restarted the stuck syncer"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let journal = container.exec(&["journalctl", "--no-pager", "-u", "syncer.service"]);
    assert!(
        journal.contains("Watchdog timeout"),
        "systemd's watchdog ended it:\n{journal}"
    );
    write_file(&src.join("t/after-the-restart"), b"replicated");
    converge_to(src, rig.daemon.path());
    drop(container);
}

fn converge_to(src: &Path, target: &Path) {
    assert_converges(src, target, CONVERGE_TIMEOUT);
}
