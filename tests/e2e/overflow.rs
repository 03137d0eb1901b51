//! Scenario 6, a real fanotify queue overflow: with `fanotify_queue = "bounded"` (the kernel's
//! default 16384-event queue) and syncer frozen by SIGSTOP, 20,000 files are created across 110
//! directories and 2000 files deleted (well over 40,000 events); after SIGCONT syncer must report
//! `queue overflow`, rescan, and converge. fanotify only: inotify has no such setting.

use crate::util::*;

#[test]
fn fanotify_queue_overflow() {
    let Some(rig) = Rig::new() else { return };
    let config = rig.write_config(
        "bounded.toml",
        "# a bounded fanotify queue, so that the flood below overflows it\n\
         fanotify_queue = \"bounded\"\n",
    );
    let before = TreeSpec {
        files: 0..2000,
        max_size: 1024,
        ..TreeSpec::new(0)
    };
    make_tree(&rig.src.join("before"), &before);

    let mut syncer = rig.spawn(
        SourceKind::Fanotify,
        &["--config", config.to_str().unwrap()],
    );
    syncer.wait_for_log(INITIAL_SYNC_FINISHED, MARKER_TIMEOUT);
    rig.assert_converges(&mut syncer);
    assert!(
        !syncer.log_contains(QUEUE_OVERFLOW),
        "`queue overflow` logged before the flood, so the check below would prove nothing"
    );

    syncer.pause();
    let flood = TreeSpec {
        files: 0..20_000,
        fanout: 10,
        depth: 2,
        max_size: 200,
        seed: 99,
    };
    make_tree(&rig.src.join("flood"), &flood);
    for i in (0..20_000).step_by(20) {
        remove(&rig.src.join("flood").join(flood.path_of(i)));
    }
    for i in (0..2000).step_by(2) {
        remove(&rig.src.join("before").join(before.path_of(i)));
    }
    syncer.resume();

    syncer.wait_for_log(QUEUE_OVERFLOW, MARKER_TIMEOUT);
    rig.assert_converges(&mut syncer);
    syncer.stop();
}
