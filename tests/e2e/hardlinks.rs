//! Hard links, live (fanotify, with a state directory): a write through one name must reach
//! the inode's other names on both targets, whichever directory they are in.
//! - a link in another directory that existed at start (learned from the start-up pass);
//! - the same after that directory was renamed (learned from the subtree transfer), and a
//!   write through it right after the rename (folded into that transfer);
//! - a link made, written through and removed before any transfer (the unlinked child's file
//!   handle: its names in the same directory);
//! - a link made and renamed into another directory before any transfer, then written
//!   through (the renamed child's handle pairs it with the names it left);
//! - a write through one name while syncer was killed (the catch-up walk's ctime).
//!
//! Every step waits for both targets to equal the source, so a name left behind fails it.

use crate::util::*;

fn append(path: &std::path::Path, bytes: &[u8]) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
}

#[test]
fn writes_through_one_name_reach_the_others() {
    let Some(rig) = Rig::new() else { return };
    let src = &rig.src;
    mkdirs(&src.join("d"));
    mkdirs(&src.join("e"));
    write_file(&src.join("a"), b"first\n");
    std::fs::hard_link(src.join("a"), src.join("d/b")).unwrap();
    write_file(&src.join("e/x"), b"x\n");
    std::fs::hard_link(src.join("e/x"), src.join("e/y")).unwrap();
    let mut s = rig.start(SourceKind::Fanotify);
    rig.assert_converges(&mut s);

    // Through a name in another directory.
    append(&src.join("d/b"), b"through d/b\n");
    rig.assert_converges(&mut s);

    // That directory renamed: its link is known under the new name.
    std::fs::rename(src.join("d"), src.join("moved")).unwrap();
    rig.assert_converges(&mut s);
    append(&src.join("a"), b"through a\n");
    rig.assert_converges(&mut s);
    chmod(&src.join("moved/b"), 0o640);
    rig.assert_converges(&mut s);

    // Renamed and written through at once: the write is folded into the directory's
    // transfer, which must still reach the other name.
    std::fs::rename(src.join("moved"), src.join("again")).unwrap();
    append(&src.join("again/b"), b"through again/b\n");
    rig.assert_converges(&mut s);
    std::fs::rename(src.join("again"), src.join("moved")).unwrap();
    rig.assert_converges(&mut s);

    // A link made, written through and removed at once: no transfer saw it.
    std::fs::hard_link(src.join("e/x"), src.join("e/tmp")).unwrap();
    append(&src.join("e/tmp"), b"through a short-lived name\n");
    std::fs::remove_file(src.join("e/tmp")).unwrap();
    rig.assert_converges(&mut s);

    // A link made and renamed into another directory at once, then written through.
    std::fs::hard_link(src.join("e/x"), src.join("e/z")).unwrap();
    std::fs::rename(src.join("e/z"), src.join("moved/z")).unwrap();
    rig.assert_converges(&mut s);
    append(&src.join("moved/z"), b"through the moved link\n");
    rig.assert_converges(&mut s);

    // While syncer is down.
    s.kill();
    append(&src.join("moved/b"), b"while down\n");
    let mut s = rig.start(SourceKind::Fanotify);
    rig.assert_converges(&mut s);
    s.stop();
}
