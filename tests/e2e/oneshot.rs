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

/// The counts of `N entries` and `N/M entries` in a progress bar's frames.
fn entry_counts(text: &str) -> Vec<u64> {
    text.split(" entries")
        .filter_map(|before| {
            let word = before.rsplit(' ').next()?;
            let done = word.split('/').next()?;
            done.replace(',', "").parse().ok()
        })
        .collect()
}

/// On a terminal, `syncer sync` draws a progress bar per target that ends at the whole tree;
/// with stderr a pipe (a service, a log file), nothing but log lines.
#[test]
fn sync_shows_progress_on_a_terminal_and_nothing_otherwise() {
    let Some(rig) = Rig::new() else { return };
    let src = &rig.src;
    make_tree(&src.join("tree"), &TreeSpec::new(3000));
    let mut args: Vec<std::ffi::OsString> =
        vec!["sync".into(), "--source".into(), src.as_os_str().into()];
    args.extend(rig.target_args());

    let piped = run_syncer(&args, EXIT_TIMEOUT);
    assert_eq!(
        piped.code(),
        Some(0),
        "syncer sync failed:\n{}",
        piped.stderr
    );
    assert!(
        entry_counts(&piped.stderr).is_empty() && !piped.stderr.contains('\r'),
        "a progress bar on a pipe:\n{}",
        piped.stderr
    );
    rig.assert_targets_identical();

    // The same on a terminal (`script` gives it a pty, and copies what it shows to stdout),
    // after the targets lost their copy.
    for t in rig.target_dirs() {
        remove(&t.join("tree"));
    }
    let quote = |a: &std::ffi::OsStr| format!("'{}'", a.to_string_lossy().replace('\'', "'\\''"));
    let line: Vec<String> = std::iter::once(std::ffi::OsStr::new(SYNCER_BIN))
        .chain(args.iter().map(|a| a.as_os_str()))
        .map(quote)
        .collect();
    let mut cmd = std::process::Command::new("script");
    cmd.args(["-qec", &line.join(" "), "/dev/null"]);
    let shown = Syncer::spawn_command(cmd).finish(EXIT_TIMEOUT);
    assert_eq!(
        shown.code(),
        Some(0),
        "syncer sync on a terminal failed:\n{}",
        shown.stdout
    );
    let counts = entry_counts(&shown.stdout);
    // Both targets' bars end at the tree: its 3000 files and their directories at least.
    assert!(
        counts.iter().filter(|&&n| n >= 3000).count() >= 2,
        "no bar reached the tree's 3000 files: {counts:?} in\n{}",
        shown.stdout
    );
    assert!(shown.stdout.contains(" sent"), "{}", shown.stdout);
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
