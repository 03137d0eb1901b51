//! Scenario 9 and `check`, the one-shot commands: `syncer sync` copies a populated tree (plus odd
//! names, links, modes, owners, mtimes) to an rsync daemon target and a local one, removing stale
//! entries, exits 0, and leaves identical trees; a second `sync` after changes does it again.
//! `syncer check` exits 0 and reports the kernel's capabilities.

use std::time::Duration;

use crate::util::*;

#[test]
fn sync_once_to_daemon_and_local() {
    let Some(rig) = Rig::new() else { return };
    let src = &rig.src;
    let tree = TreeSpec::new(1500);
    make_tree(&src.join("tree"), &tree);
    make_variety(&src.join("variety"));
    set_mtime(src, 1_400_000_000, 123);
    for t in rig.target_dirs() {
        write_file(&t.join("stale-file"), b"stale\n");
        write_file(&t.join("tree/stale-dir/f"), b"stale\n");
    }
    let mut args: Vec<std::ffi::OsString> =
        vec!["sync".into(), "--source".into(), src.as_os_str().into()];
    args.extend(rig.target_args());

    let done = run_syncer(&args, EXIT_TIMEOUT);
    assert_eq!(done.code(), Some(0), "syncer sync failed:\n{}", done.stderr);
    rig.assert_targets_identical();

    for i in (0..1500).step_by(3) {
        remove(&src.join("tree").join(tree.path_of(i)));
    }
    make_tree(
        &src.join("added"),
        &TreeSpec {
            seed: 8,
            ..TreeSpec::new(300)
        },
    );
    chmod(&src.join("variety/modes/m0755"), 0o700);
    let done = run_syncer(&args, EXIT_TIMEOUT);
    assert_eq!(
        done.code(),
        Some(0),
        "second syncer sync failed:\n{}",
        done.stderr
    );
    rig.assert_targets_identical();
}

#[test]
fn check_reports_capabilities() {
    let Some(rig) = Rig::new() else { return };
    let done = run_syncer(
        ["check", "--path", rig.src.to_str().unwrap()],
        Duration::from_secs(60),
    );
    assert_eq!(
        done.code(),
        Some(0),
        "syncer check failed:\n{}{}",
        done.stdout,
        done.stderr
    );
    let out = &done.stdout;
    let verdict = |name: &str| -> bool {
        let line = out
            .lines()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("`syncer check` has no {name:?} line:\n{out}"));
        assert!(
            line.contains("[ok]") || line.contains("[--]"),
            "no verdict: {line}"
        );
        line.contains("[ok]")
    };
    // Root with a loop filesystem (the rig): a fanotify filesystem mark works, and inotify always.
    assert!(verdict("fanotify filesystem mark"), "{out}");
    verdict("eBPF source: fsnotify hooks");
    verdict("eBPF source: syscall tracepoints");
    // What check says auto picks is what the daemon picks on the same filesystem.
    let auto = out
        .lines()
        .find_map(|l| l.strip_prefix("auto would use: "))
        .unwrap_or_else(|| panic!("no `auto would use` line:\n{out}"));
    let live = [
        ("ebpf (VFS-level hooks)", "event source live: eBPF f"),
        ("fanotify", "event source live: fanotify"),
        (
            "ebpf (syscall tracepoints)",
            "event source live: eBPF syscall tracepoints",
        ),
        ("inotify", "event source live: inotify"),
    ]
    .into_iter()
    .find(|(name, _)| auto.starts_with(&format!("{name} (")))
    .unwrap_or_else(|| panic!("check picks an unknown source: {auto}"))
    .1;
    let mut args: Vec<std::ffi::OsString> =
        vec!["run".into(), "--source".into(), rig.src.clone().into()];
    args.extend(rig.target_args());
    args.extend(["--source-kind", "auto", "--delay", DELAY_MS].map(Into::into));
    let mut syncer = Syncer::spawn(args);
    syncer.wait_for_log(LIVE, MARKER_TIMEOUT);
    assert!(
        syncer.log_contains(live),
        "check says auto uses {auto:?}, the daemon did not log {live:?}:\n{}",
        syncer.log()
    );
    syncer.stop();
}
