//! Self-test of the harness, independent of syncer's behaviour: a LoopFs source copied with plain
//! `rsync -a` to an [`RsyncDaemon`] and to a local directory compares equal; [`compare_trees`]
//! catches each kind of deliberate corruption; the daemon restarts on its port; and the
//! [`Syncer`] process wrapper works (driven by a shell script standing in for the binary).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::util::*;

/// `rsync -a --delete -I --modify-window=-1 SRC/ DST/`: `-I` so that a same-size, same-mtime
/// corruption is repaired; `--modify-window=-1` because rsync otherwise treats mtimes in the same
/// second as equal and leaves a directory created in the same second as its source with the wrong
/// nanoseconds.
fn rsync(src: &Path, dst: &str) -> Result<(), String> {
    run_tool(
        Command::new(tool("rsync"))
            .args(["-a", "--delete", "-I", "--modify-window=-1"])
            .arg(format!("{}/", src.display()))
            .arg(format!("{dst}/")),
    )
}

/// A corruption of a copy and the word its difference report must contain.
struct Corruption {
    what: &'static str,
    apply: fn(&Path),
    expect: &'static str,
}

const CORRUPTIONS: &[Corruption] = &[
    Corruption {
        what: "mtime off by one nanosecond",
        apply: |t| {
            let f = t.join("times/old");
            set_mtime(&f, 981_173_106, 123_456_788);
        },
        expect: "\"times/old\": mtime 981173106.123456789 vs 981173106.123456788",
    },
    Corruption {
        what: "one byte changed, size and mtime kept",
        apply: |t| {
            let f = t.join("times/future");
            let mut data = std::fs::read(&f).unwrap();
            data[2] ^= 0x20;
            write_file(&f, &data);
            set_mtime(&f, 4_102_444_800, 999_999_999);
        },
        expect: "\"times/future\": contents differ at byte 2",
    },
    Corruption {
        what: "directory mtime",
        apply: |t| set_mtime(&t.join("times/dir"), 1_000_000_001, 500_000_000),
        expect: "\"times/dir\": mtime",
    },
    Corruption {
        what: "mode",
        apply: |t| chmod(&t.join("modes/m0600"), 0o644),
        expect: "\"modes/m0600\": mode 0600 vs 0644",
    },
    Corruption {
        what: "owner",
        apply: |t| lchown(&t.join("owners/u1234"), 1234, 0),
        expect: "\"owners/u1234\": owner 1234:5678 vs 1234:0",
    },
    Corruption {
        what: "extra entry",
        apply: |t| write_file(&t.join(os(b"odd dirs/\xff\xfe/extra")), b"x"),
        expect: "\"odd dirs/\\xFF\\xFE/extra\": only in B",
    },
    Corruption {
        what: "missing entry",
        apply: |t| remove(&t.join(os(b"new\nline"))),
        expect: "\"new\\nline\": only in A",
    },
    Corruption {
        what: "symlink target",
        apply: |t| {
            remove(&t.join("links/dangling"));
            symlink("does/not/exist/either", &t.join("links/dangling"));
        },
        expect: "\"links/dangling\": symlink",
    },
    Corruption {
        what: "file replaced by a directory",
        apply: |t| {
            remove(&t.join("empty"));
            mkdirs(&t.join("empty"));
        },
        expect: "\"empty\": type File vs Dir",
    },
    Corruption {
        what: "size",
        apply: |t| append_file(&t.join("#hash"), b"more"),
        expect: "\"#hash\": size",
    },
    Corruption {
        what: "root mode",
        apply: |t| chmod(t, 0o700),
        expect: "\".\": mode",
    },
];

#[test]
fn harness_selftest() {
    if skip() {
        return;
    }
    let fs = LoopFs::new();
    let src = fs.mkdir("src");
    make_variety(&src);
    make_tree(&src.join("tree"), &TreeSpec::new(100));
    let root_mtime = (1_500_000_000, 42);
    set_mtime(&src, root_mtime.0, root_mtime.1);

    // A plain rsync -a to the daemon and to a local dir gives identical trees.
    let mut daemon = RsyncDaemon::new();
    rsync(&src, &daemon.url()).unwrap();
    assert_same_tree(&src, daemon.path());
    assert!(
        daemon.transfers() >= 1,
        "daemon log {}:\n{}\ndaemon output:\n{}",
        daemon.log_path().display(),
        daemon.log(),
        daemon.output()
    );
    let scratch = temp_dir("selftest");
    let local = scratch.path().join("local");
    mkdirs(&local);
    let local_s = local.to_str().unwrap();
    rsync(&src, local_s).unwrap();
    assert_same_tree(&src, &local);
    assert!(compare_trees(&src, &local).is_empty());

    // Each corruption is reported, precisely, and only it.
    for c in CORRUPTIONS {
        (c.apply)(&local);
        let diffs = compare_trees(&src, &local);
        assert!(
            diffs.iter().any(|d| d.contains(c.expect)),
            "{}: expected a difference containing {:?}, got {diffs:#?}",
            c.what,
            c.expect
        );
        rsync(&src, local_s).unwrap();
        assert_same_tree(&src, &local);
    }

    // The daemon stops and restarts on the same port.
    daemon.stop();
    assert!(
        rsync(&src, &daemon.url()).is_err(),
        "rsync to a stopped daemon succeeded"
    );
    daemon.start();
    write_file(&src.join("after restart"), b"1");
    rsync(&src, &daemon.url()).unwrap();
    assert_same_tree(&src, daemon.path());

    // assert_converges waits for a lagging copy.
    write_file(&src.join("late"), b"late");
    let copier = {
        let (src, dst) = (src.clone(), local_s.to_string());
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(700));
            rsync(&src, &dst).unwrap();
        })
    };
    assert!(!compare_trees(&src, &local).is_empty());
    assert_converges(&src, &local, Duration::from_secs(30));
    copier.join().unwrap();

    // The process wrapper: markers, SIGSTOP/SIGCONT, SIGTERM with exit 0, exit codes, stdout.
    let mut sh = Command::new("sh");
    sh.args([
        "-c",
        "echo 'INFO event source live' >&2; trap 'echo bye >&2; exit 0' TERM; \
         while :; do sleep 0.05; done",
    ]);
    let mut fake = Syncer::spawn_command(sh);
    fake.wait_for_log(LIVE, Duration::from_secs(10));
    fake.pause();
    fake.resume();
    fake.assert_running("after SIGSTOP/SIGCONT");
    assert!(fake.stop().contains("bye"));

    let mut sh = Command::new("sh");
    sh.args(["-c", "echo out; echo err >&2; exit 3"]);
    let done = Syncer::spawn_command(sh).finish(Duration::from_secs(10));
    assert_eq!(done.code(), Some(3));
    assert_eq!(done.stdout, "out\n");
    assert_eq!(done.stderr, "err\n");

    // wait_for_log fails (rather than hangs) when the process exits without the marker.
    let mut sh = Command::new("sh");
    sh.args(["-c", "echo nothing >&2"]);
    let mut quitter = Syncer::spawn_command(sh);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        quitter.wait_for_log(LIVE, Duration::from_secs(30));
    }));
    assert!(
        r.is_err(),
        "wait_for_log returned for a marker that never came"
    );
}
