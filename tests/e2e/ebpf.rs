//! Scenario 14, the eBPF source's hooks and losses:
//! - `ebpf_hooks_fall_back_cleanly`: whether this kernel allows fentry programs is probed here
//!   with a bare `BPF_PROG_LOAD` (the library's probe), independently of the source's loading. Where it refuses them (this machine
//!   kind), `--source-kind ebpf` must say so, fall back to syscall tracepoints and replicate;
//!   `--ebpf-hooks fsnotify` must fail with a clear message; `auto` must pick fanotify; and
//!   `syncer check` must report the same. Where fentry loads and can attach to fsnotify() (the
//!   Linux 6.12 VM of `cargo xtask vm-test`), the fsnotify hooks must be used; on Linux 6.1,
//!   which allows fentry but cannot attach it to a seven-argument function, the same fallback.
//! - `ebpf_ring_buffer_full`: with a one-page ring buffer and syncer frozen by SIGSTOP, a flood
//!   of changes cannot fit; after SIGCONT syncer must log the loss, rescan and converge.

use std::time::Duration;

use crate::util::*;

const FALLBACK: &str = "falling back to syscall tracepoints";
const LIVE_TRACEPOINTS: &str = "event source live: eBPF syscall tracepoints";
const LIVE_FSNOTIFY: &str = "event source live: eBPF fentry on fsnotify";
const LIVE_VFS: &str = "event source live: eBPF fexit on vfs_*";
/// Both VFS-level hook sets say this.
const VFS_LEVEL: &str = "(VFS level: sees every writer";
const RECORDS_LOST: &str = "eBPF records lost";

/// Whether the kernel accepts an fentry program (`BPF_PROG_TYPE_TRACING`): a bare
/// `BPF_PROG_LOAD` of a trivial program, not the eBPF source's own loading of its hooks.
fn fentry_allowed() -> bool {
    syncer::source::ebpf::probe::fentry_allowed()
}

fn run_args(rig: &Rig, extra: &[&str]) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> =
        vec!["run".into(), "--source".into(), rig.src.clone().into()];
    args.extend(rig.target_args());
    args.extend(["--delay", "50"].iter().map(Into::into));
    args.extend(extra.iter().map(Into::into));
    args
}

/// `(major, minor)` of the running kernel.
fn kernel_version() -> (u32, u32) {
    let r = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut it = r
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

#[test]
fn ebpf_hooks_fall_back_cleanly() {
    let Some(rig) = Rig::new() else { return };
    // Where fentry is allowed the VFS-level hooks must attach: on fsnotify() itself where the
    // kernel's BPF trampolines take its seven arguments (x86_64: Linux 6.5+), else on the vfs_*
    // functions.
    let allowed = fentry_allowed();
    let vfs_hooks = if kernel_version() >= (6, 5) {
        LIVE_FSNOTIFY
    } else {
        LIVE_VFS
    };
    eprintln!(
        "fentry allowed on this kernel ({:?}): {allowed}; expected hooks: {vfs_hooks}",
        kernel_version()
    );

    let mut syncer = Syncer::spawn(run_args(&rig, &["--source-kind", "ebpf"]));
    syncer.wait_for_log(INITIAL_SYNC_FINISHED, MARKER_TIMEOUT);
    if allowed {
        assert!(
            syncer.log_contains(vfs_hooks),
            "fentry loads here, but syncer did not use the expected hooks ({vfs_hooks})"
        );
        assert!(!syncer.log_contains(FALLBACK));
    } else {
        assert!(syncer.log_contains(FALLBACK), "no fallback message");
        assert!(syncer.log_contains(LIVE_TRACEPOINTS));
    }
    make_tree(&rig.src.join("after-fallback"), &TreeSpec::new(300));
    write_file(&rig.src.join("top"), b"top\n");
    rig.assert_converges(&mut syncer);
    syncer.stop();

    let forced = Syncer::spawn(run_args(
        &rig,
        &["--source-kind", "ebpf", "--ebpf-hooks", "fsnotify"],
    ));
    if allowed {
        let mut forced = forced;
        forced.wait_for_log(VFS_LEVEL, MARKER_TIMEOUT);
        forced.stop();
    } else {
        let done = forced.finish(Duration::from_secs(60));
        assert_eq!(
            done.code(),
            Some(1),
            "--ebpf-hooks fsnotify must fail here:\n{}",
            done.stderr
        );
        assert!(
            done.stderr.contains("fentry is not available here:"),
            "the error does not say why:\n{}",
            done.stderr
        );
    }

    let mut auto = Syncer::spawn(run_args(&rig, &["--source-kind", "auto"]));
    auto.wait_for_log(INITIAL_SYNC_FINISHED, MARKER_TIMEOUT);
    let want = if allowed {
        vfs_hooks
    } else {
        "event source live: fanotify"
    };
    assert!(
        auto.log_contains(want),
        "auto did not pick the expected source ({want})"
    );
    write_file(&rig.src.join("auto"), b"auto\n");
    rig.assert_converges(&mut auto);
    auto.stop();

    let check = run_syncer(
        ["check", "--path", rig.src.to_str().unwrap()],
        Duration::from_secs(60),
    );
    let line = check
        .stdout
        .lines()
        .find(|l| l.contains("eBPF source: fsnotify hooks"))
        .unwrap_or_else(|| {
            panic!(
                "`syncer check` has no fsnotify hooks line:\n{}",
                check.stdout
            )
        });
    assert_eq!(
        line.contains("[ok]"),
        allowed,
        "check disagrees with the probe: {line}"
    );
    assert!(
        check
            .stdout
            .contains("[ok] eBPF source: syscall tracepoints"),
        "{}",
        check.stdout
    );
}

#[test]
fn ebpf_ring_buffer_full() {
    let Some(rig) = Rig::new() else { return };
    let config = rig.write_config(
        "tiny-ring.toml",
        "# one page of ring buffer, so that the flood below cannot fit\nebpf_ring_kib = 4\n",
    );
    make_tree(&rig.src.join("before"), &TreeSpec::new(500));
    let mut args = SourceKind::Ebpf.args();
    args.extend(["--config".to_string(), config.to_str().unwrap().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut syncer = Syncer::spawn(run_args(&rig, &args));
    syncer.wait_for_log(INITIAL_SYNC_FINISHED, MARKER_TIMEOUT);
    rig.assert_converges(&mut syncer);
    // The syscall tracepoints also hand every absolute name that other processes on the host
    // write (their root is not on the source's filesystem) to the loader, which places them: on
    // a busy machine (the rest of the suite running) they can fill four KiB on their own. So a
    // loss before the flood is noted, not failed; the flood must bring a report of its own.
    let lost_reports = |s: &Syncer| s.log().matches(RECORDS_LOST).count();
    let before = lost_reports(&syncer);
    if before > 0 {
        eprintln!("{before} loss report(s) before the flood, from other writers on the host");
    }

    syncer.pause();
    let flood = TreeSpec {
        files: 0..3000,
        fanout: 10,
        depth: 2,
        max_size: 100,
        seed: 7,
    };
    make_tree(&rig.src.join("flood"), &flood);
    for i in (0..500).step_by(3) {
        remove(&rig.src.join("before").join(TreeSpec::new(500).path_of(i)));
    }
    syncer.resume();

    wait_until("the flood is reported lost", || {
        lost_reports(&syncer) > before
    });
    rig.assert_converges(&mut syncer);
    let log = syncer.stop();
    assert!(
        log.contains("lost="),
        "the stop line does not count losses:\n{log}"
    );
}
