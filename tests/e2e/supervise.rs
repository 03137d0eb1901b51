//! The supervisor, made to act for real: the event source's reader thread is killed by a
//! panic (a failpoint in the reader loop of the real binary, built with the `failpoints`
//! feature, which `cargo xtask test` turns on).
//! - `source_death_restarts_with_a_rescan`: the source dies once while files are being
//!   written; syncer must say so, open the source again, rescan, and converge: nothing written
//!   around the death is lost.
//! - `repeated_source_deaths_exit_1`: the source dies every time it is opened; after the
//!   restart budget syncer must drain, exit 1 and name the source and the reason.

use std::time::Duration;

use crate::util::*;

const DIED: &str = "the event source died";
const RESTARTED: &str = "event source restarted";

fn spawn_with_failpoint(rig: &Rig, kind: SourceKind, failpoints: &str) -> Syncer {
    spawn_with_failpoint_and(rig, kind, failpoints, &[])
}

/// [`spawn_with_failpoint`] with `extra` arguments after the usual ones.
fn spawn_with_failpoint_and(
    rig: &Rig,
    kind: SourceKind,
    failpoints: &str,
    extra: &[std::ffi::OsString],
) -> Syncer {
    let mut args: Vec<std::ffi::OsString> =
        vec!["run".into(), "--source".into(), rig.src.clone().into()];
    args.extend(rig.target_args());
    args.extend(kind.args().into_iter().map(Into::into));
    args.extend(["--delay", DELAY_MS].map(Into::into));
    args.extend(extra.iter().cloned());
    let mut cmd = std::process::Command::new(syncer_bin());
    cmd.args(args).env("FAILPOINTS", failpoints);
    Syncer::spawn_command(cmd)
}

#[test]
fn source_death_restarts_with_a_rescan() {
    if !failpoints() {
        return;
    }
    let Some(rig) = Rig::new() else { return };
    make_tree(&rig.src.join("before"), &TreeSpec::new(300));
    // The reader loop turns about 5 times a second when idle: the source dies a few seconds
    // in, while the writer is busy, and the reopened source (a fresh count) stays up.
    let mut syncer = spawn_with_failpoint(
        &rig,
        SourceKind::Fanotify,
        "source-read=25*off->1*panic(killed by a failpoint)->off",
    );
    syncer.wait_for_log(INITIAL_SYNC_FINISHED, MARKER_TIMEOUT);
    let writer = Writer::spawn(rig.src.join("during"), Duration::from_millis(5));
    syncer.wait_for_log(RESTARTED, MARKER_TIMEOUT);
    std::thread::sleep(Duration::from_millis(500));
    let written = writer.stop();
    assert!(written > 0);
    assert!(syncer.log_contains(DIED), "{}", syncer.log());
    assert!(
        syncer.log_contains("killed by a failpoint"),
        "the reason is not in the log"
    );
    make_tree(&rig.src.join("after"), &TreeSpec::new(50));
    rig.assert_converges(&mut syncer);
    let log = syncer.stop();
    assert!(
        log.contains("rescanning the whole tree"),
        "no rescan after the restart"
    );
}

#[test]
fn repeated_source_deaths_exit_1() {
    if !failpoints() {
        return;
    }
    let Some(rig) = Rig::new() else { return };
    let syncer = spawn_with_failpoint(&rig, SourceKind::Inotify, "source-read=panic(always dying)");
    let done = syncer.finish(EXIT_TIMEOUT);
    assert_eq!(done.code(), Some(1), "{}", done.stderr);
    for want in ["died 4 time(s)", "always dying", "inotify"] {
        assert!(
            done.stderr.contains(want),
            "{want:?} missing from:\n{}",
            done.stderr
        );
    }
    assert_eq!(done.stderr.matches(RESTARTED).count(), 3, "{}", done.stderr);
}

/// The control socket's task dies (a panic from a failpoint at its first accept): the
/// supervisor says so and starts it again, and `syncer status` answers; replication never
/// stopped.
#[test]
fn a_dead_control_socket_task_is_started_again() {
    if !failpoints() {
        return;
    }
    let Some(rig) = Rig::new() else { return };
    make_tree(&rig.src.join("t"), &TreeSpec::new(50));
    let socket = rig.control_socket();
    let mut syncer = spawn_with_failpoint_and(
        &rig,
        SourceKind::Fanotify,
        "control-serve=1*panic(killed by a failpoint)->off",
        &["--control-socket".into(), socket.clone().into()],
    );
    syncer.wait_for_log(
        "the control socket's task ended (a panic: killed by a failpoint): starting it again",
        MARKER_TIMEOUT,
    );
    syncer.wait_for_log(INITIAL_SYNC_FINISHED, MARKER_TIMEOUT);
    let out = std::process::Command::new(syncer_bin())
        .args(["status", "--json", "--control-socket"])
        .arg(&socket)
        .output()
        .expect("syncer status runs");
    assert!(
        out.status.success(),
        "status after the restart: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status is JSON");
    assert_eq!(s["targets"].as_array().map(Vec::len), Some(2), "{s:#}");
    write_file(&rig.src.join("t/after"), b"after the restart");
    rig.assert_converges(&mut syncer);
    syncer.stop();
}
