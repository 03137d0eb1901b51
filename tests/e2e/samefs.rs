//! Scenario 10, a local target on the source's own filesystem (`<mnt>/src` → `<mnt>/src-mirror`,
//! a name a string-prefix check would mistake for part of the source): fanotify sees syncer's own
//! writes to the target, which must not feed back. The trees converge, the mirror holds no
//! nested copy, and once idle syncer makes no further transfers (counted as rsync daemon
//! connections).

use std::thread;
use std::time::Duration;

use crate::util::*;

per_source_kind!(target_on_source_filesystem);

fn target_on_source_filesystem(kind: SourceKind) {
    let Some(mut rig) = Rig::new() else { return };
    rig.local = rig.fs.mkdir("src-mirror");
    let src = &rig.src;
    let mut syncer = rig.start(kind);

    make_tree(&src.join("tree"), &TreeSpec::new(1000));
    write_file(&src.join("log"), b"first\n");
    rig.assert_converges(&mut syncer);

    append_file(&src.join("log"), b"second\n");
    rename(&src.join("tree/d2"), &src.join("tree/d2-renamed"));
    remove(&src.join("tree/d3"));
    rig.assert_converges(&mut syncer);

    // Idle now: give stragglers 2 s, then no transfer may happen for 3 s.
    thread::sleep(Duration::from_secs(2));
    let before = rig.daemon.transfers();
    thread::sleep(Duration::from_secs(3));
    let after = rig.daemon.transfers();
    if after != before {
        let log = rig.daemon.log();
        let lines: Vec<&str> = log.lines().collect();
        panic!(
            "syncer made {} transfer(s) in 3 s while the source was idle (feedback from its own \
             writes to the target on the same filesystem?)\n--- tail of the rsync daemon log ---\n{}",
            after - before,
            lines[lines.len().saturating_sub(20)..].join("\n")
        );
    }
    rig.assert_targets_identical();
    for nested in ["src", "src-mirror"] {
        assert!(
            !rig.local.join(nested).exists(),
            "the mirror contains a nested {nested}/"
        );
    }
    syncer.stop();
}
