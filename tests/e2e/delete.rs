//! Scenario 3, deletions: single files, whole trees, a directory deleted and recreated under the
//! same name with different contents, entries changing type (file ↔ directory ↔ symlink) under
//! one name, rapid delete/recreate cycles, and finally emptying the source completely.

use crate::util::*;

per_source_kind!(deletes_and_recreates);

fn deletes_and_recreates(kind: SourceKind) {
    let Some(rig) = Rig::new() else { return };
    let src = &rig.src;
    let tree = TreeSpec::new(600);
    make_tree(&src.join("tree"), &tree);
    mkdirs(&src.join("victims"));
    for i in 0..100 {
        write_file(
            &src.join(format!("victims/f{i:03}")),
            format!("victim {i}\n").as_bytes(),
        );
    }
    make_tree(
        &src.join("gone"),
        &TreeSpec {
            seed: 9,
            ..TreeSpec::new(300)
        },
    );
    mkdirs(&src.join("same"));
    for name in ["a", "b", "c"] {
        write_file(
            &src.join("same").join(name),
            format!("first {name}\n").as_bytes(),
        );
    }
    write_file(&src.join("file-then-dir"), b"a file for now\n");
    mkdirs(&src.join("dir-then-file"));
    write_file(&src.join("dir-then-file/inside"), b"inside a dir for now\n");
    symlink("tree", &src.join("link-then-file"));

    let mut syncer = rig.start(kind);
    rig.assert_converges(&mut syncer);

    for i in (0..100).step_by(3) {
        remove(&src.join(format!("victims/f{i:03}")));
    }
    remove(&src.join("gone"));
    remove(&src.join("tree/d1"));
    remove(&src.join("same"));
    mkdirs(&src.join("same"));
    write_file(&src.join("same/a"), b"second a, different contents\n");
    write_file(&src.join("same/d"), b"second d\n");
    remove(&src.join("file-then-dir"));
    mkdirs(&src.join("file-then-dir"));
    write_file(&src.join("file-then-dir/now-a-dir"), b"x\n");
    remove(&src.join("dir-then-file"));
    write_file(&src.join("dir-then-file"), b"now a file\n");
    remove(&src.join("link-then-file"));
    write_file(&src.join("link-then-file"), b"now a file\n");
    rig.assert_converges(&mut syncer);

    // Delete and recreate faster than any --delay, ending in a known state.
    for round in 0..10u64 {
        let flip = src.join("flip");
        if flip.exists() {
            remove(&flip);
        }
        make_tree(
            &flip,
            &TreeSpec {
                seed: round,
                ..TreeSpec::new(20)
            },
        );
        let shape = src.join("shape");
        if std::fs::symlink_metadata(&shape).is_ok() {
            remove(&shape);
        }
        match round % 3 {
            0 => write_file(&shape, format!("file in round {round}\n").as_bytes()),
            1 => {
                mkdirs(&shape);
                write_file(
                    &shape.join("f"),
                    format!("dir in round {round}\n").as_bytes(),
                );
            }
            _ => symlink(format!("target-{round}"), &shape),
        }
    }
    rig.assert_converges(&mut syncer);

    // Empty the source entirely: the targets must end up empty too.
    for entry in std::fs::read_dir(src).unwrap() {
        remove(&entry.unwrap().path());
    }
    rig.assert_converges(&mut syncer);
    syncer.stop();
}
