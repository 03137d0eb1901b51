//! Closes after writing with nothing else reported. A file opened for writing and closed
//! untouched (what an NFS server does when it closes a descriptor it kept, a second or more
//! after the writes it served were sent) must not be sent again once the target's index shows
//! the target holds it as it is; a file changed through a shared mapping (no write event, only
//! its close) must be sent. A file written and closed only after its write was sent (NFSv3's
//! habit) is sent once.

use std::fs::OpenOptions;
use std::io::Write;
use std::thread;
use std::time::Duration;

use crate::util::*;

per_source_kind!(closes);

fn closes(kind: SourceKind) {
    let Some(rig) = Rig::new() else { return };
    let src = &rig.src;
    // In a directory: a batch that writes directly in the source root also lists the root,
    // which rsync expands to its entries.
    write_file(&src.join("d/kept"), b"opened for writing, never written\n");
    write_file(&src.join("d/mapped"), &[b'a'; 8192]);
    write_file(&src.join("d/late"), b"written, closed later\n");
    let mut syncer = rig.start(kind);
    rig.assert_converges(&mut syncer);
    // The daemon logs a session's files when it ends: wait for a first marker's session.
    write_file(&src.join("d/marker0"), b"first\n");
    wait_until("the first marker reaches the target", || {
        rig.daemon.received().iter().any(|n| n == "d/marker0")
    });
    let before = rig.daemon.received().len();

    // Opened for writing and closed untouched, again and again.
    for _ in 0..5 {
        drop(
            OpenOptions::new()
                .write(true)
                .open(src.join("d/kept"))
                .unwrap(),
        );
        thread::sleep(Duration::from_millis(150));
    }
    // Written through a shared mapping: the kernel reports only the close.
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(src.join("d/mapped"))
        .unwrap();
    // SAFETY: the file is this test's own and nothing else maps or truncates it meanwhile.
    let mut map = unsafe { memmap2::MmapMut::map_mut(&f) }.unwrap();
    map[..21].copy_from_slice(b"changed via a mapping");
    map.flush().unwrap();
    drop(map);
    drop(f);
    // Written, then closed after its write was sent.
    let mut late = OpenOptions::new()
        .write(true)
        .open(src.join("d/late"))
        .unwrap();
    late.write_all(b"new contents, then a wait\n").unwrap();
    let wrote_at = rig.daemon.received().len();
    wait_until("the write reaches the target before the close", || {
        rig.daemon.received()[wrote_at..]
            .iter()
            .any(|n| n == "d/late")
    });
    let closed_at = rig.daemon.received().len();
    drop(late);
    // A marker after everything: once it arrived, every earlier event was handled.
    write_file(&src.join("d/marker"), b"last\n");
    rig.assert_converges(&mut syncer);
    wait_until("the marker reaches the target", || {
        rig.daemon.received()[before..]
            .iter()
            .any(|n| n == "d/marker")
    });

    let sent = &rig.daemon.received()[before..];
    let count = |name: &str| {
        sent.iter()
            .filter(|n| n.strip_prefix("d/") == Some(name))
            .count()
    };
    assert_eq!(
        count("kept"),
        0,
        "closes of a file the target holds as it is were sent: {sent:?}"
    );
    assert!(
        count("mapped") >= 1,
        "the mapped write was not sent: {sent:?}"
    );
    let after_close = &rig.daemon.received()[closed_at..];
    assert!(
        !after_close.iter().any(|n| n == "d/late"),
        "the late close of a file sent since its write was sent again: {after_close:?}"
    );
    syncer.stop();
}
