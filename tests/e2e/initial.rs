//! Scenario 5, the initial sync: a tree populated before syncer starts, targets pre-seeded with
//! stale entries that must go (extra files and trees, type conflicts, different contents and
//! modes), and changes made while the initial sync runs. Also `--no-initial-sync`: what existed
//! before is left alone, what changes afterwards is replicated.

use std::time::Duration;

use crate::util::*;

per_source_kind!(initial_sync_with_stale_targets, no_initial_sync);

fn initial_sync_with_stale_targets(kind: SourceKind) {
    let Some(rig) = Rig::new() else { return };
    let src = &rig.src;
    let tree = TreeSpec {
        files: 0..6000,
        max_size: 12 * 1024,
        ..TreeSpec::new(0)
    };
    make_tree(&src.join("tree"), &tree);
    make_variety(&src.join("variety"));
    write_file(&src.join("kinds/dir-in-target"), b"a file in the source\n");
    write_file(
        &src.join("kinds/file-in-target/inner"),
        b"a dir in the source\n",
    );
    write_file(&src.join("differs"), b"source version\n");
    write_file(&src.join("mode-only"), b"same bytes\n");
    chmod(&src.join("mode-only"), 0o600);

    for t in rig.target_dirs() {
        make_tree(
            &t.join("stale-tree"),
            &TreeSpec {
                seed: 77,
                ..TreeSpec::new(100)
            },
        );
        write_file(&t.join("stale-file"), b"stale\n");
        write_file(&t.join("kinds/dir-in-target/inner/f"), b"stale\n");
        write_file(&t.join("kinds/file-in-target"), b"stale\n");
        write_file(
            &t.join("differs"),
            b"the target's much longer stale version\n",
        );
        write_file(&t.join("mode-only"), b"same bytes\n");
        chmod(&t.join("mode-only"), 0o644);
        write_file(
            &t.join("tree")
                .join(tree.path_of(0))
                .with_file_name("stale-sibling"),
            b"stale\n",
        );
        mkdirs(&t.join("variety/empty-dir/stale-subdir"));
    }

    let mut syncer = rig.spawn(kind, &[]);
    syncer.wait_for_log(LIVE, MARKER_TIMEOUT);
    // Changes racing with the initial sync.
    make_tree(
        &src.join("during"),
        &TreeSpec {
            seed: 2,
            ..TreeSpec::new(500)
        },
    );
    for i in (0..6000).step_by(60) {
        write_file(
            &src.join("tree").join(tree.path_of(i)),
            format!("rewritten {i}\n").as_bytes(),
        );
    }
    for i in (30..6000).step_by(60) {
        remove(&src.join("tree").join(tree.path_of(i)));
    }
    rename(&src.join("tree/d1"), &src.join("tree-d1-moved"));
    write_file(
        &src.join("differs"),
        b"source version, changed during the initial sync\n",
    );
    syncer.wait_for_log(INITIAL_SYNC_FINISHED, MARKER_TIMEOUT);
    rig.assert_converges(&mut syncer);
    syncer.stop();
}

fn no_initial_sync(kind: SourceKind) {
    let Some(rig) = Rig::new() else { return };
    let src = &rig.src;
    write_file(
        &src.join("old/untouched"),
        b"existed before syncer started\n",
    );
    mkdirs(&src.join("new"));

    let mut syncer = rig.spawn(kind, &["--no-initial-sync"]);
    syncer.wait_for_log(INITIAL_SYNC_FINISHED, MARKER_TIMEOUT);
    make_tree(&src.join("new"), &TreeSpec::new(200));
    for t in rig.target_dirs() {
        assert_converges(&src.join("new"), &t.join("new"), CONVERGE_TIMEOUT);
        syncer.assert_running("after replicating new/");
        // Nothing ever happened to old/untouched, so nothing may have copied it.
        assert!(
            !t.join("old/untouched").exists(),
            "{}: a file that was not touched got copied despite --no-initial-sync",
            t.display()
        );
    }
    // Touching the old file now makes it part of the replicated set.
    append_file(&src.join("old/untouched"), b"touched\n");
    let copied = src.join("old/untouched");
    for t in rig.target_dirs() {
        let target = t.join("old/untouched");
        let deadline = std::time::Instant::now() + CONVERGE_TIMEOUT;
        while std::fs::read(&target).ok() != std::fs::read(&copied).ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "{} never got the touched old/untouched",
                t.display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    syncer.stop();
}
