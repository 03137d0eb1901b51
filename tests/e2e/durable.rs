//! Durable state: what a restart costs. Every scenario restarts syncer on the same state
//! directory and counts what the rsync daemon received (its transfer log), not time.
//! - `restart_transfers_only_what_changed`: changes made while syncer is stopped (a rewrite
//!   that restores mtime and size, a deleted tree, a renamed directory, new files, a chmod)
//!   are replicated on start and nothing else is sent; a start on an up-to-date tree sends
//!   nothing and runs no rsync at all.
//! - `kill_9_under_load_loses_nothing`: syncer killed with SIGKILL while a writer runs a mixed
//!   load; restarted on the same state, the trees end identical and the restart sends what
//!   changed, not the tree.
//! - `damaged_state_is_rebuilt`: the store's files overwritten with garbage: detected,
//!   logged, a full pass, identical trees.
//! - `a_damaged_journal_is_set_aside_and_passed`: a journal holding what a down target
//!   still owes, damaged in its middle while syncer is down: detected, logged, kept aside,
//!   a full pass against that target, identical trees.
//! - `a_second_syncer_on_the_same_state_is_refused`.
//! - `changes_while_down_go_ahead_of_an_unfinished_pass`: a syncer killed before its first
//!   pass was done; what changed meanwhile (a rewrite that restores mtime and size, which the
//!   pass's quick check cannot see) is found by the walk ahead of the next pass.
//! - `an_unfinished_pass_resumes_where_it_ended` (with `failpoints`): a pass cut short a few
//!   pieces in; what changed meanwhile in the part it had covered (a directory moved in from
//!   the part it had not, a new subtree, a same-size same-mtime rewrite, a deletion) reaches
//!   the targets, and the next start sends only the rest of the pass.
//! - `periodic_verify_with_checksums_repairs_drift_on_the_targets`: bytes rotted on a target
//!   (size and mtime kept), a file lost and one gained there: the periodic verify's contents
//!   check finds them and they are repaired; the next verify finds nothing.

use std::collections::BTreeSet;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use crate::util::*;

const CATCH_UP: &str = "catch-up walk done";
const FULL_PASS: &str = "start-up pass done";

fn tree() -> TreeSpec {
    TreeSpec {
        max_size: 4096,
        ..TreeSpec::new(2000)
    }
}

/// Starts syncer on the rig, waits for its initial sync and for both targets to match.
fn start_synced(rig: &Rig) -> Syncer {
    let mut s = rig.start(SourceKind::Fanotify);
    rig.assert_converges(&mut s);
    s
}

#[test]
fn restart_transfers_only_what_changed() {
    let Some(rig) = Rig::new() else { return };
    let src = &rig.src;
    let files = make_tree(&src.join("t"), &tree());
    let first = start_synced(&rig);
    let log = first.stop();
    assert!(
        log.contains(FULL_PASS),
        "the first start builds the index with a full pass"
    );

    // While syncer is down.
    let same = src.join("t").join(&files[10]);
    let before = std::fs::symlink_metadata(&same).unwrap();
    let len = before.len() as usize;
    write_file(&same, &vec![b'Z'; len]);
    set_mtime(&same, before_mtime(&before).0, before_mtime(&before).1);
    let deleted_dir = src.join("t").join(files[0].parent().unwrap());
    let deleted_count = count_files(&deleted_dir);
    std::fs::remove_dir_all(&deleted_dir).unwrap();
    let renamed_from = src.join("t/d1/d2");
    let renamed_count = count_files(&renamed_from);
    rename(&renamed_from, &src.join("t/d1/renamed"));
    write_file(&src.join("t/new-a"), b"new a\n");
    write_file(&src.join("t/d4/new-b"), b"new b\n");
    let chmodded = src.join("t").join(&files[20]);
    chmod(&chmodded, 0o600);

    let mark = rig.daemon.received().len();
    let mut second = rig.start(SourceKind::Fanotify);
    rig.assert_converges(&mut second);
    let log = second.stop();
    assert!(
        log.contains(CATCH_UP) && !log.contains(FULL_PASS),
        "no full pass:\n{log}"
    );
    let sent: Vec<String> = rig.daemon.received()[mark..].to_vec();
    let names: BTreeSet<&str> = sent.iter().filter_map(|p| p.rsplit('/').next()).collect();
    let rewritten = same.file_name().unwrap().to_str().unwrap();
    assert!(
        names.contains(rewritten),
        "the rewrite that kept mtime and size ({rewritten}) was not sent: {sent:?}\n{log}"
    );
    assert!(names.contains("new-a") && names.contains("new-b"));
    // The renamed directory is sent again (no renames on the target yet), the rest not.
    let most = renamed_count + 2 + 2 + 1; // + the rewrite, the chmod, and the new files
    assert!(
        sent.len() <= most,
        "{} files sent after a restart, at most {most} changed ({deleted_count} deleted): {sent:?}",
        sent.len()
    );

    // Up to date: nothing at all goes to the target.
    let (mark, conns) = (rig.daemon.received().len(), rig.daemon.transfers());
    let mut third = rig.start(SourceKind::Fanotify);
    rig.assert_converges(&mut third);
    let log = third.stop();
    assert!(log.contains("differences=0"), "{log}");
    assert_eq!(
        rig.daemon.received().len(),
        mark,
        "an up-to-date start sent files"
    );
    assert_eq!(
        rig.daemon.transfers(),
        conns,
        "an up-to-date start ran rsync against the daemon"
    );
}

fn before_mtime(m: &std::fs::Metadata) -> (i64, i64) {
    use std::os::unix::fs::MetadataExt;
    (m.mtime(), m.mtime_nsec())
}

#[test]
fn kill_9_under_load_loses_nothing() {
    let Some(rig) = Rig::new() else { return };
    make_tree(&rig.src.join("t"), &tree());
    let first = start_synced(&rig);
    let mut w = Churn::new(&rig.src.join("t"), 7);
    for _ in 0..300 {
        w.step();
    }
    first.kill();
    for _ in 0..300 {
        w.step();
    }
    let mark = rig.daemon.received().len();
    let mut second = rig.start(SourceKind::Fanotify);
    for _ in 0..300 {
        w.step();
    }
    rig.assert_converges(&mut second);
    let log = second.stop();
    assert!(
        !log.contains(FULL_PASS),
        "a restart after kill -9 ran a full pass:\n{log}"
    );
    let sent = rig.daemon.received().len() - mark;
    // The load touched at most `w.touched` names (a renamed directory counts every name under
    // it: the target has no renames); the tree holds 2000 files plus what the load added.
    assert!(
        sent <= w.touched,
        "{sent} files sent after the restart: more than the {} names the load touched",
        w.touched
    );
}

/// A small deterministic mixed load on an existing tree: rewrites, creations, renames,
/// deletions, directory renames and removals.
struct Churn {
    root: std::path::PathBuf,
    rng: Rng,
    n: usize,
    /// An upper bound on the names the load changed: one per operation, and every name under a
    /// renamed directory.
    touched: usize,
}

impl Churn {
    fn new(root: &Path, seed: u64) -> Churn {
        Churn {
            root: root.to_path_buf(),
            rng: Rng::new(seed),
            n: 0,
            touched: 0,
        }
    }

    fn pick(&mut self, dirs: bool) -> Option<std::path::PathBuf> {
        let mut all = Vec::new();
        walk(&self.root, &mut all);
        all.retain(|p: &std::path::PathBuf| p.is_dir() == dirs && p != &self.root);
        if all.is_empty() {
            return None;
        }
        Some(all.swap_remove(self.rng.below(all.len() as u64) as usize))
    }

    fn step(&mut self) {
        self.n += 1;
        self.touched += 1;
        let n = self.n;
        match self.rng.below(20) {
            0..=6 => {
                if let Some(f) = self.pick(false) {
                    let len = self.rng.below(3000) as usize;
                    write_file(&f, &self.rng.bytes(len));
                }
            }
            7..=11 => {
                if let Some(d) = self.pick(true) {
                    write_file(&d.join(format!("c{n}")), format!("{n}\n").as_bytes());
                }
            }
            12..=14 => {
                if let (Some(f), Some(d)) = (self.pick(false), self.pick(true)) {
                    let _ = std::fs::rename(&f, d.join(format!("r{n}")));
                }
            }
            15..=16 => {
                if let Some(f) = self.pick(false) {
                    let _ = std::fs::remove_file(f);
                }
            }
            17 => {
                if let Some(d) = self.pick(true) {
                    let mut under = Vec::new();
                    walk(&d, &mut under);
                    self.touched += under.len();
                    let _ = std::fs::rename(&d, d.with_file_name(format!("dr{n}")));
                }
            }
            18 => {
                if let Some(d) = self.pick(true) {
                    let _ = std::fs::remove_dir_all(d);
                }
            }
            _ => {
                if let Some(f) = self.pick(false) {
                    chmod(&f, 0o600 + (n as u32 % 0o100));
                }
            }
        }
    }
}

fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    out.push(dir.to_path_buf());
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
}

#[test]
fn damaged_state_is_rebuilt() {
    let Some(rig) = Rig::new() else { return };
    make_tree(&rig.src.join("t"), &tree());
    start_synced(&rig).stop();
    // Garbage over the middle of every file of the store.
    let mut damaged = 0;
    let mut stack = vec![rig.state_dir().join("db")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(len) = e.metadata().map(|m| m.len()) {
                if len > 16 {
                    use std::io::{Seek, Write};
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .custom_flags(0)
                        .open(&p)
                        .unwrap();
                    f.seek(std::io::SeekFrom::Start(len / 3)).unwrap();
                    f.write_all(&vec![0xA5; (len / 3) as usize]).unwrap();
                    damaged += 1;
                }
            }
        }
    }
    assert!(damaged > 0, "no state files to damage");
    // Meanwhile the source changes, so the rebuilt state must be the source's.
    write_file(&rig.src.join("t/after-damage"), b"x\n");
    let mut s = rig.start(SourceKind::Fanotify);
    rig.assert_converges(&mut s);
    let log = s.stop();
    assert!(
        log.contains("damaged") || log.contains("not trusted"),
        "the damage was not reported:\n{log}"
    );
    assert!(
        log.contains(FULL_PASS),
        "no full pass after the damage:\n{log}"
    );
}

#[test]
fn a_damaged_journal_is_set_aside_and_passed() {
    let Some(mut rig) = Rig::new() else { return };
    make_tree(&rig.src.join("t"), &tree());
    let s = start_synced(&rig);
    // The daemon down: what is written now stays owed to it, in its journal.
    rig.daemon.stop();
    make_tree(&rig.src.join("owed"), &TreeSpec::new(300));
    let journals = rig.state_dir().join("journal");
    wait_until("the journal holds what the daemon is owed", || {
        std::fs::read_dir(&journals)
            .unwrap()
            .flatten()
            .any(|e| e.metadata().is_ok_and(|m| m.len() > 300 * 20))
    });
    s.kill();
    // Garbage over the middle of every journal that holds records.
    let mut damaged = 0;
    for e in std::fs::read_dir(&journals).unwrap().flatten() {
        let len = e.metadata().unwrap().len();
        if len > 64 {
            use std::io::{Seek, Write};
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open(e.path())
                .unwrap();
            f.seek(std::io::SeekFrom::Start(len / 3)).unwrap();
            f.write_all(&[0xA5; 16]).unwrap();
            damaged += 1;
        }
    }
    assert!(damaged > 0, "no journal to damage");
    rig.daemon.start();
    let mut s = rig.start(SourceKind::Fanotify);
    rig.assert_converges(&mut s);
    let log = s.stop();
    assert!(
        log.contains("fails its checksum and records follow it") && log.contains("damaged-"),
        "the damage was not reported, or the journal not kept aside:\n{log}"
    );
    assert!(
        log.contains(FULL_PASS),
        "no full pass after the damage:\n{log}"
    );
}

#[test]
fn a_second_syncer_on_the_same_state_is_refused() {
    let Some(rig) = Rig::new() else { return };
    let mut first = rig.start(SourceKind::Inotify);
    let second = rig.spawn(SourceKind::Inotify, &[]).finish(EXIT_TIMEOUT);
    assert_eq!(second.code(), Some(1), "{}", second.stderr);
    assert!(
        second.stderr.contains("in use by another syncer"),
        "{}",
        second.stderr
    );
    first.assert_running("after a second syncer was refused");
    first.stop();
}

#[test]
fn daemon_down_30_s_resumes_within_seconds() {
    let Some(mut rig) = Rig::new() else { return };
    let mut syncer = rig.start(SourceKind::Fanotify);
    let writer = Writer::spawn(rig.src.join("stream"), Duration::from_millis(20));
    std::thread::sleep(Duration::from_secs(1));
    rig.daemon.stop();
    std::thread::sleep(Duration::from_secs(30));
    syncer.assert_running("while its daemon target was down");
    let back = std::time::Instant::now();
    rig.daemon.start();
    syncer.wait_for_log("target back up", MARKER_TIMEOUT);
    let resumed = back.elapsed();
    let written = writer.stop();
    rig.assert_converges(&mut syncer);
    for t in rig.target_dirs() {
        assert_eq!(count_files(&t.join("stream")), written, "{}", t.display());
    }
    let log = syncer.stop();
    // A generous bound (probes come every second); the bench reports the figure.
    assert!(
        resumed < Duration::from_secs(10),
        "replication resumed {resumed:?} after the daemon came back"
    );
    assert!(
        log.matches("target down").count() <= 2,
        "an outage of 30 s flooded the log:\n{log}"
    );
}

#[test]
fn full_target_filesystem_then_space_freed() {
    let Some(mut rig) = Rig::new() else { return };
    // The local target on a 32 MiB filesystem, nearly filled by a file outside the target.
    let small = LoopFs::with_size(32 << 20);
    let filler = small.path().join("filler");
    let target = small.mkdir("target");
    rig.local = target.clone();
    let mut syncer = rig.start(SourceKind::Fanotify);
    let free = nix::sys::statvfs::statvfs(small.path()).unwrap();
    let avail = free.blocks_available() as u64 * free.fragment_size() as u64;
    write_file(&filler, &vec![0u8; (avail - (2 << 20)) as usize]);
    // 8 MiB of files: more than the 2 MiB left.
    for i in 0..64 {
        write_file(
            &rig.src.join(format!("big/f{i:02}")),
            &Rng::new(i).bytes(128 << 10),
        );
    }
    syncer.wait_for_log("No space left on device", MARKER_TIMEOUT);
    syncer.assert_running("with its target filesystem full");
    // The daemon target is not held back by the full one.
    assert_converges(&rig.src, rig.daemon.path(), CONVERGE_TIMEOUT);
    std::fs::remove_file(&filler).unwrap();
    rig.assert_converges(&mut syncer);
    syncer.stop();
    drop(small);
}

#[test]
fn changes_while_down_go_ahead_of_an_unfinished_pass() {
    let Some(mut rig) = Rig::new() else { return };
    let src = rig.src.clone();
    let files = make_tree(&src.join("t"), &tree());
    let made = std::time::Instant::now();
    // The daemon's target already holds the tree, but it is down: the first syncer's pass
    // against it cannot finish, so its index stays incomplete.
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(src.join("t"))
        .arg(rig.daemon.path())
        .status()
        .unwrap();
    assert!(copied.success());
    rig.daemon.stop();
    let mut first = rig.spawn(SourceKind::Fanotify, &[]);
    first.wait_for_log("target down", MARKER_TIMEOUT);
    // The walk ahead looks back to a few seconds before the last heartbeat (at most 2 s old
    // when idle): let the tree be older than that, so that only what follows is recent.
    let old_enough = Duration::from_secs(10);
    std::thread::sleep(old_enough.saturating_sub(made.elapsed()));
    first.kill();

    // While no syncer runs: a rewrite that keeps size and mtime, a deletion, a new file.
    let same = src.join("t").join(&files[10]);
    let before = std::fs::symlink_metadata(&same).unwrap();
    write_file(&same, &vec![b'Z'; before.len() as usize]);
    set_mtime(&same, before_mtime(&before).0, before_mtime(&before).1);
    std::fs::remove_file(src.join("t").join(&files[20])).unwrap();
    write_file(&src.join("t/made-while-down"), b"new\n");

    rig.daemon.start();
    let mut second = rig.spawn(SourceKind::Fanotify, &[]);
    second.wait_for_log("walk ahead of the pass done", MARKER_TIMEOUT);
    rig.assert_converges(&mut second);
    let log = second.stop();
    assert!(
        log.contains(FULL_PASS),
        "the unfinished index is rebuilt by a pass:\n{log}"
    );
    let queued: u64 = log
        .lines()
        .find(|l| l.contains("walk ahead of the pass done"))
        .and_then(|l| l.split("queued=").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("the walk says what it queued");
    // The rewritten file, the new one, and the directories whose entries changed (the
    // deletion's, the new file's); nothing of the untouched tree.
    assert!(
        (3..=10).contains(&queued),
        "{queued} entries queued ahead of the pass:\n{log}"
    );
}

#[test]
fn an_unfinished_pass_resumes_where_it_ended() {
    if !failpoints() {
        return;
    }
    let Some(rig) = Rig::new() else { return };
    let src = rig.src.clone();
    let files = make_tree(&src.join("t"), &tree());
    let made = std::time::Instant::now();
    // Pieces of at most 4 directories; one target's pool dies when its pass has recorded its
    // progress a third time (a panic: the supervisor drains the other, then it is killed).
    let mut args: Vec<std::ffi::OsString> =
        vec!["run".into(), "--source".into(), src.clone().into()];
    args.extend(["--state-dir".into(), rig.state_dir().into_os_string()]);
    args.extend(rig.target_args());
    args.extend(SourceKind::Fanotify.args().into_iter().map(Into::into));
    let pieces = rig.state_dir().with_extension("toml");
    std::fs::write(&pieces, "batch_max = 4\n").unwrap();
    args.extend(["--delay", DELAY_MS].map(Into::into));
    args.extend(["--config".into(), pieces.clone().into_os_string()]);
    // The walk ahead looks back to a few seconds before the last heartbeat: let the tree be
    // older than that, so that only what follows is recent.
    std::thread::sleep(Duration::from_secs(8).saturating_sub(made.elapsed()));
    let mut cmd = std::process::Command::new(syncer_bin());
    cmd.args(&args).env(
        "FAILPOINTS",
        "pass-covered=2*off->panic(cut short by a failpoint)",
    );
    let mut first = Syncer::spawn_command(cmd);
    first.wait_for_log("draining the other targets", MARKER_TIMEOUT);
    first.kill();

    // While no syncer runs, in the part of the tree the first pieces covered (names that sort
    // before t/d0/d0, the end of the first piece): a directory moved in from the end of the
    // tree (its entries keep their ctimes), a new subtree; and in the tree's first leaf, a
    // rewrite keeping size and mtime and a deletion.
    std::fs::rename(src.join("t/d5"), src.join("t/d0/a-moved")).unwrap();
    std::fs::create_dir_all(src.join("t/d0/b-new/deep")).unwrap();
    write_file(&src.join("t/d0/b-new/deep/f"), b"new\n");
    let leaf: Vec<_> = files.iter().filter(|f| f.starts_with("d0/d0/d0")).collect();
    let same = src.join("t").join(leaf[0]);
    let before = std::fs::symlink_metadata(&same).unwrap();
    write_file(&same, &vec![b'Z'; before.len() as usize]);
    set_mtime(&same, before_mtime(&before).0, before_mtime(&before).1);
    std::fs::remove_file(src.join("t").join(leaf[1])).unwrap();

    let mut second = rig.spawn(
        SourceKind::Fanotify,
        &["--config", pieces.to_str().unwrap()],
    );
    rig.assert_converges(&mut second);
    let log = second.stop();
    let resumed = log.matches("the start-up pass resumes").count();
    assert!(resumed >= 1, "a target's pass resumed:\n{log}");
    let mut dirs = Vec::new();
    walk(&src, &mut dirs);
    let total = dirs.iter().filter(|p| p.is_dir()).count() as u64;
    let sent: Vec<u64> = log
        .lines()
        .filter(|l| l.contains(FULL_PASS))
        .filter_map(|l| {
            l.split(" dirs=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert!(
        sent.iter().any(|&n| n < total),
        "a resumed pass sends fewer than the {total} directories ({sent:?}):\n{log}"
    );
}

#[test]
fn periodic_verify_with_checksums_repairs_drift_on_the_targets() {
    let Some(rig) = Rig::new() else { return };
    let files = make_tree(&rig.src.join("t"), &TreeSpec::new(300));
    let config = rig.write_config(
        "verify.toml",
        "verify_interval_s = 10\nverify_checksum = true\n",
    );
    let mut s = rig.spawn(
        SourceKind::Fanotify,
        &["--config", config.to_str().unwrap()],
    );
    s.wait_for_log(INITIAL_SYNC_FINISHED, MARKER_TIMEOUT);
    rig.assert_converges(&mut s);

    // Drift that no event and no walk of the source can see, on both targets: a file whose
    // bytes changed but not its size or mtime, a file the target lost, one it gained.
    for t in rig.target_dirs() {
        let rotted = t.join("t").join(&files[5]);
        let before = std::fs::symlink_metadata(&rotted).unwrap();
        write_file(&rotted, &vec![b'?'; before.len() as usize]);
        set_mtime(&rotted, before_mtime(&before).0, before_mtime(&before).1);
        std::fs::remove_file(t.join("t").join(&files[7])).unwrap();
        write_file(&t.join("t/stray"), b"not in the source\n");
    }
    s.wait_for_log("contents differ from the source", Duration::from_secs(60));
    rig.assert_converges(&mut s);
    // A later verify finds nothing left.
    let mark = s.log().len();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !s.log()[mark..].contains("contents match the source") {
        assert!(
            std::time::Instant::now() < deadline,
            "no clean verify after the repair:\n{}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = s.stop();
    let found: Vec<u64> = log
        .lines()
        .filter(|l| l.contains("contents differ"))
        .map(|l| {
            l.split("differences=")
                .nth(1)
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .expect("the verify says how many")
        })
        .collect();
    // Per target: the rotted file, the lost one, the stray one (and their directory's
    // mtime); nothing of the rest of the tree.
    assert!(
        found.iter().sum::<u64>() >= 6 && found.iter().all(|&n| n <= 8),
        "differences found {found:?}:\n{log}"
    );
}
