//! Scenarios 7 and 8c, unreachable targets: the rsync daemon stopped for a few seconds while a
//! writer keeps creating files, then restarted on the same port (syncer logs `target down`, keeps
//! running, loses nothing); and an rsync:// target with nothing listening when syncer starts
//! (the local target must converge meanwhile), brought up later.

use std::thread;
use std::time::Duration;

use crate::util::*;

per_source_kind!(daemon_outage_while_writing, target_unreachable_at_start);

fn daemon_outage_while_writing(kind: SourceKind) {
    let Some(mut rig) = Rig::new() else { return };
    let mut syncer = rig.start(kind);
    let writer = Writer::spawn(rig.src.join("stream"), Duration::from_millis(10));
    thread::sleep(Duration::from_secs(1));

    rig.daemon.stop();
    thread::sleep(Duration::from_secs(3));
    syncer.wait_for_log(TARGET_DOWN, MARKER_TIMEOUT);
    syncer.assert_running("while its rsync daemon target was down");
    rig.daemon.start();
    thread::sleep(Duration::from_secs(1));

    let written = writer.stop();
    assert!(written > 100, "the writer only managed {written} files");
    rig.assert_converges(&mut syncer);
    for t in rig.target_dirs() {
        assert_eq!(count_files(&t.join("stream")), written, "{}", t.display());
    }
    syncer.stop();
}

fn target_unreachable_at_start(kind: SourceKind) {
    let Some(mut rig) = Rig::new() else { return };
    // Keep the port, but with nothing listening on it.
    rig.daemon.stop();
    make_tree(&rig.src.join("before"), &TreeSpec::new(300));

    let mut syncer = rig.spawn(kind, &[]);
    syncer.wait_for_log(TARGET_DOWN, MARKER_TIMEOUT);
    thread::sleep(Duration::from_secs(1));
    syncer.assert_running("with an unreachable rsync:// target (it must keep retrying)");
    make_tree(
        &rig.src.join("meanwhile"),
        &TreeSpec {
            seed: 5,
            ..TreeSpec::new(100)
        },
    );
    // The dead target must not hold back the live one.
    assert_converges(&rig.src, &rig.local, CONVERGE_TIMEOUT);
    syncer.assert_running("with an unreachable rsync:// target");

    rig.daemon.start();
    rig.assert_converges(&mut syncer);
    syncer.stop();
}
