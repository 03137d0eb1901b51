//! The reader's cursor: which kernel event queue (a fanotify group kept in systemd's fd store)
//! this state follows, how far its reader had read that queue, and how far what it read is in
//! the journal. A successor handed the same queue trusts it in place of a walk only when the
//! two marks agree: nothing read was lost with the process.
//!
//! Kept in a small file mapped shared (`cursor` in the state directory): a mark is a store to
//! memory, no system call on the reader's path, and the kernel keeps the page when the process
//! is killed. A power loss loses the fd store with it, so the file only matters between two
//! processes of one boot.

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::MmapMut;

/// Marks the file as a cursor of this layout.
const MAGIC: u64 = u64::from_le_bytes(*b"syncur01");
const LEN: u64 = 32;
/// The cells: magic, group, reading, journaled.
const GROUP: usize = 1;
const READING: usize = 2;
const JOURNALED: usize = 3;

/// What a previous process left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marks {
    /// The queue it followed (the id in the fd store's name).
    pub group: u64,
    /// The last read that may have taken records.
    pub reading: u64,
    /// The last read whose changes were written to the journal.
    pub journaled: u64,
}

impl Marks {
    /// Whether a successor handed queue `group` may take it up without a walk.
    pub fn seamless(&self, group: u64) -> bool {
        self.group == group && self.reading == self.journaled
    }
}

pub struct Cursor {
    map: MmapMut,
}

impl Cursor {
    /// Opens (creating) the cursor in `dir`; also what the previous process left, if anything.
    pub(super) fn open(dir: &Path) -> std::io::Result<(Cursor, Option<Marks>)> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join("cursor"))?;
        if f.metadata()?.len() != LEN {
            f.set_len(0)?;
            f.set_len(LEN)?;
        }
        // SAFETY: the file is ours (the state directory is locked) and only read and written
        // through the atomics below.
        let map = unsafe { MmapMut::map_mut(&f)? };
        let c = Cursor { map };
        let prev = (c.cell(0).load(Ordering::Acquire) == MAGIC).then(|| Marks {
            group: c.cell(GROUP).load(Ordering::Acquire),
            reading: c.cell(READING).load(Ordering::Acquire),
            journaled: c.cell(JOURNALED).load(Ordering::Acquire),
        });
        Ok((c, prev))
    }

    fn cell(&self, i: usize) -> &AtomicU64 {
        let p = self.map.as_ptr() as *const AtomicU64;
        // SAFETY: the mapping is LEN bytes, page-aligned, and lives as long as `self`.
        unsafe { &*p.add(i) }
    }

    /// This process follows `group` from here, its reader not started yet. The marks are
    /// reset first: a process killed in between leaves marks that agree (nothing read yet)
    /// for whichever group is named.
    pub(super) fn start(&self, group: u64) {
        self.cell(JOURNALED).store(0, Ordering::Release);
        self.cell(READING).store(0, Ordering::Release);
        self.cell(GROUP).store(group, Ordering::Release);
        self.cell(0).store(MAGIC, Ordering::Release);
    }

    pub(super) fn reading(&self, n: u64) {
        self.cell(READING).store(n, Ordering::Release);
    }

    pub(super) fn journaled(&self, n: u64) {
        self.cell(JOURNALED).store(n, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_survive_the_process_and_agree_only_when_all_read_was_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (c, prev) = Cursor::open(dir.path()).unwrap();
        assert_eq!(prev, None, "a new cursor has nothing from before");
        c.start(7);
        c.reading(1);
        c.journaled(1);
        c.reading(2);
        drop(c);
        let (c, prev) = Cursor::open(dir.path()).unwrap();
        let prev = prev.unwrap();
        assert_eq!((prev.group, prev.reading, prev.journaled), (7, 2, 1));
        #[rustfmt::skip]
        let table: &[(&str, Marks, u64, bool)] = &[
            ("read 2 not journaled", prev, 7, false),
            ("all journaled", Marks { journaled: 2, ..prev }, 7, true),
            ("another queue", Marks { journaled: 2, ..prev }, 8, false),
            ("nothing read yet", Marks { reading: 0, journaled: 0, ..prev }, 7, true),
        ];
        for (name, m, group, want) in table {
            assert_eq!(m.seamless(*group), *want, "{name}");
        }
        c.start(9);
        drop(c);
        let (_, prev) = Cursor::open(dir.path()).unwrap();
        assert_eq!(
            prev,
            Some(Marks {
                group: 9,
                reading: 0,
                journaled: 0
            })
        );
    }
}
