//! Scenario 1, bulk changes while syncer runs: 3000 files (0–20 KiB) in nested directories that
//! are themselves created moments before; one file rewritten 200 times (truncated to new sizes,
//! rewritten at the same size, overwritten in place); a file appended to 500 times (reopened for
//! each line) and another through one long-lived handle; then a tenth of the files rewritten.

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::thread;
use std::time::Duration;

use crate::util::*;

per_source_kind!(many_files_rewrites_appends);

fn many_files_rewrites_appends(kind: SourceKind) {
    let Some(rig) = Rig::new() else { return };
    let mut syncer = rig.start(kind);

    // 10 batches of 300 files, each batch in a new directory tree (4 + 16 + 64 directories).
    let batch_spec = |batch: u64| TreeSpec {
        files: 0..300,
        fanout: 4,
        depth: 3,
        max_size: 20 * 1024,
        seed: batch,
    };
    for batch in 0..10 {
        make_tree(
            &rig.src.join(format!("bulk/batch{batch}")),
            &batch_spec(batch),
        );
        thread::sleep(Duration::from_millis(20));
    }

    // One file rewritten over and over, sometimes keeping its size (and so possibly its mtime
    // second): rsync's size+mtime quick check alone would miss those rewrites.
    let hot = rig.src.join("hot.dat");
    let mut rng = Rng::new(42);
    for i in 0..200 {
        match i % 3 {
            0 => {
                let len = rng.below(8192) as usize;
                write_file(&hot, &rng.bytes(len));
            }
            1 => write_file(&hot, &rng.bytes(4096)),
            _ => {
                let mut f = OpenOptions::new()
                    .write(true)
                    .open(&hot)
                    .expect("open hot.dat");
                f.seek(SeekFrom::Start(0)).unwrap();
                f.write_all(&rng.bytes(1024)).unwrap();
            }
        }
        if i % 20 == 0 {
            thread::sleep(Duration::from_millis(30));
        }
    }

    // Appends: reopening each time, and through one handle kept open for all of them.
    let appended = rig.src.join("appended.log");
    let mut held = OpenOptions::new()
        .create(true)
        .append(true)
        .open(rig.src.join("held-open.log"))
        .expect("open held-open.log");
    for i in 0..500 {
        append_file(&appended, format!("line {i}\n").as_bytes());
        writeln!(held, "held line {i}").unwrap();
        if i % 50 == 0 {
            thread::sleep(Duration::from_millis(20));
        }
    }
    drop(held);
    rig.assert_converges(&mut syncer);

    // A tenth of the files get new contents (new sizes, same names).
    for batch in 0..10 {
        let spec = batch_spec(batch);
        let root = rig.src.join(format!("bulk/batch{batch}"));
        for i in (0..300).step_by(10) {
            write_file(
                &root.join(spec.path_of(i)),
                &Rng::new(i as u64 + 1000 * batch).bytes(i * 7),
            );
        }
    }
    rig.assert_converges(&mut syncer);
    syncer.stop();
}
