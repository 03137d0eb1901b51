//! Graceful shutdown: on SIGINT and on SIGTERM syncer drains what is queued and exits 0, so the
//! targets are complete the moment it has exited (no polling). Both runs use `--no-initial-sync`
//! so that nothing but the drain can account for the changes.

use std::thread;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::util::*;

per_source_kind!(drains_on_sigint_and_sigterm);

fn drains_on_sigint_and_sigterm(kind: SourceKind) {
    let Some(rig) = Rig::new() else { return };
    let src = &rig.src;
    let spec = TreeSpec::new(800);

    for (round, signal) in [Signal::SIGINT, Signal::SIGTERM].into_iter().enumerate() {
        let mut syncer = rig.spawn(kind, &["--no-initial-sync"]);
        syncer.wait_for_log(INITIAL_SYNC_FINISHED, MARKER_TIMEOUT);
        if round == 0 {
            make_tree(&src.join("tree"), &spec);
        } else {
            for i in (0..800).step_by(2) {
                remove(&src.join("tree").join(spec.path_of(i)));
            }
            make_tree(
                &src.join("more"),
                &TreeSpec {
                    seed: 3,
                    ..TreeSpec::new(400)
                },
            );
        }
        // Time to read the events from the kernel, not to replicate them.
        thread::sleep(Duration::from_secs(1));
        syncer.stop_with(signal);
        rig.assert_targets_identical();
    }
}
