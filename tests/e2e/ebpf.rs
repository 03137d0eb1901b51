//! Scenario 14, the eBPF source's hooks and losses:
//! - `ebpf_hooks_fall_back_cleanly`: whether this kernel allows fentry programs is probed here
//!   with a bare `BPF_PROG_LOAD`, independently of syncer. Where it refuses them (this machine
//!   kind), `--source-kind ebpf` must say so, fall back to syscall tracepoints and replicate;
//!   `--ebpf-hooks fsnotify` must fail with a clear message; `auto` must pick fanotify; and
//!   `syncer check` must report the same. Where fentry loads (the VMs of `cargo xtask vm-test`),
//!   the fsnotify hooks must be used.
//! - `ebpf_ring_buffer_full`: with a one-page ring buffer and syncer frozen by SIGSTOP, a flood
//!   of changes cannot fit; after SIGCONT syncer must log the loss, rescan and converge.

use std::time::Duration;

use crate::util::*;

const FALLBACK: &str = "falling back to syscall tracepoints";
const LIVE_TRACEPOINTS: &str = "event source live: eBPF syscall tracepoints";
const LIVE_FSNOTIFY: &str = "event source live: eBPF fentry on fsnotify";
const RECORDS_LOST: &str = "eBPF records lost";

/// Whether the kernel accepts an fentry program (`BPF_PROG_TYPE_TRACING`): EPERM means the type
/// itself is refused; any other error (there is no attach target here) means it is allowed.
fn fentry_allowed() -> bool {
    let insns: [u64; 2] = [0xb7, 0x95]; // r0 = 0; exit
    let license = b"GPL\0";
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&26u32.to_ne_bytes()); // BPF_PROG_TYPE_TRACING
    attr[4..8].copy_from_slice(&2u32.to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    attr[68..72].copy_from_slice(&24u32.to_ne_bytes()); // BPF_TRACE_FENTRY
                                                        // SAFETY: attr is a valid bpf_attr prefix; the pointers it holds outlive the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, 5, attr.as_mut_ptr(), attr.len() as u32) };
    if fd >= 0 {
        unsafe { libc::close(fd as i32) };
        return true;
    }
    std::io::Error::last_os_error().raw_os_error() != Some(libc::EPERM)
}

fn run_args(rig: &Rig, extra: &[&str]) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> =
        vec!["run".into(), "--source".into(), rig.src.clone().into()];
    args.extend(rig.target_args());
    args.extend(["--delay", "50"].iter().map(Into::into));
    args.extend(extra.iter().map(Into::into));
    args
}

#[test]
fn ebpf_hooks_fall_back_cleanly() {
    let Some(rig) = Rig::new() else { return };
    let allowed = fentry_allowed();
    eprintln!("fentry programs allowed by this kernel: {allowed}");

    let mut syncer = Syncer::spawn(run_args(&rig, &["--source-kind", "ebpf"]));
    syncer.wait_for_log(INITIAL_SYNC_FINISHED, MARKER_TIMEOUT);
    if allowed {
        assert!(
            syncer.log_contains(LIVE_FSNOTIFY),
            "fentry loads here, but syncer did not use it"
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
        forced.wait_for_log(LIVE_FSNOTIFY, MARKER_TIMEOUT);
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
            done.stderr.contains("fentry is not available here"),
            "the error does not say why:\n{}",
            done.stderr
        );
    }

    let mut auto = Syncer::spawn(run_args(&rig, &["--source-kind", "auto"]));
    auto.wait_for_log(INITIAL_SYNC_FINISHED, MARKER_TIMEOUT);
    let want = if allowed {
        LIVE_FSNOTIFY
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
    assert!(
        !syncer.log_contains(RECORDS_LOST),
        "losses before the flood prove nothing"
    );

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

    syncer.wait_for_log(RECORDS_LOST, MARKER_TIMEOUT);
    rig.assert_converges(&mut syncer);
    let log = syncer.stop();
    assert!(
        log.contains("lost="),
        "the stop line does not count losses:\n{log}"
    );
}
