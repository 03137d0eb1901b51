//! Scenario 2, renames of replicated entries: a file; a directory holding 1000 files; files and
//! directories moved across directories; swap chains (a→tmp, b→a, tmp→b) for files and for
//! directories; a chain of ten renames in a row; atomic-save (write temp, rename over); a
//! directory renamed over an empty one; moves out of the source and in from elsewhere on the
//! same filesystem; then a second round onto new nested directories and odd names.

use crate::util::*;

per_source_kind!(renames);

fn renames(kind: SourceKind) {
    let Some(rig) = Rig::new() else { return };
    let src = &rig.src;
    let small = |n: usize, seed: u64| TreeSpec {
        files: 0..n,
        fanout: 3,
        depth: 2,
        max_size: 2048,
        seed,
    };

    // The tree the renames will shuffle, replicated first.
    write_file(&src.join("file"), b"plain file\n");
    make_tree(
        &src.join("big"),
        &TreeSpec {
            files: 0..1000,
            fanout: 1,
            depth: 0,
            max_size: 1024,
            seed: 1,
        },
    );
    make_tree(&src.join("a/sub"), &small(30, 2));
    write_file(&src.join("a/one"), b"one\n");
    mkdirs(&src.join("b"));
    write_file(&src.join("x"), b"contents of x\n");
    write_file(&src.join("y"), b"contents of y, longer\n");
    make_tree(&src.join("dx"), &small(20, 3));
    make_tree(&src.join("dy"), &small(25, 4));
    write_file(&src.join("chain0"), b"travelling file\n");
    write_file(&src.join("config"), b"old config\n");
    make_tree(&src.join("dir-over-empty"), &small(10, 5));
    mkdirs(&src.join("empty-dest"));
    make_tree(&src.join("leaving"), &small(15, 6));
    make_tree(&rig.fs.path().join("outside-in"), &small(40, 7));

    let mut syncer = rig.start(kind);
    rig.assert_converges(&mut syncer);

    rename(&src.join("file"), &src.join("file.renamed"));
    rename(&src.join("big"), &src.join("big-renamed"));
    rename(&src.join("a/sub"), &src.join("b/moved-sub"));
    rename(&src.join("a/one"), &src.join("b/one-moved"));
    // Swaps.
    rename(&src.join("x"), &src.join("swap.tmp"));
    rename(&src.join("y"), &src.join("x"));
    rename(&src.join("swap.tmp"), &src.join("y"));
    rename(&src.join("dx"), &src.join("swapdir.tmp"));
    rename(&src.join("dy"), &src.join("dx"));
    rename(&src.join("swapdir.tmp"), &src.join("dy"));
    // A chain, each hop replacing nothing.
    for i in 0..10 {
        rename(
            &src.join(format!("chain{i}")),
            &src.join(format!("chain{}", i + 1)),
        );
    }
    append_file(&src.join("chain10"), b"appended after the last hop\n");
    // Atomic save: the old file is replaced by a rename onto it.
    write_file(
        &src.join("config.tmp"),
        b"new config, longer than the old one\n",
    );
    rename(&src.join("config.tmp"), &src.join("config"));
    // A directory replacing an empty one.
    rename(&src.join("dir-over-empty"), &src.join("empty-dest"));
    // Out of the source, and into it from elsewhere on the same filesystem.
    rename(&src.join("leaving"), &rig.fs.path().join("left"));
    rename(&rig.fs.path().join("outside-in"), &src.join("arrived"));
    rig.assert_converges(&mut syncer);

    // Second round: into freshly made nested directories and onto odd names.
    mkdirs(&src.join("deep/er"));
    rename(&src.join("big-renamed"), &src.join("deep/er/big"));
    rename(
        &src.join("file.renamed"),
        &src.join(os(b"renamed \xff\n-file")),
    );
    rename(&src.join("b"), &src.join(os(b"-b dir \xfe")));
    rename(&src.join("arrived"), &src.join("deep/arrived"));
    rig.assert_converges(&mut syncer);
    syncer.stop();
}
