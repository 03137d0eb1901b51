//! The reader's cursor and spool: which kernel event queue (a fanotify group kept in systemd's
//! fd store) this state follows, how far its reader had read that queue, how far what it read
//! is kept raw in the spool, and how far it is in the journal. A successor handed the same
//! queue trusts it in place of a walk when every read begun was kept (`saved >= reading`),
//! and turns the kept reads not yet journaled (`journaled < seq <= saved`) into changes again.
//!
//! The cursor is a small file mapped shared (`cursor` in the state directory): a mark is a
//! store to memory, and the kernel keeps the page when the process is killed. The spool
//! (`spool`) holds each read's records as the kernel gave them (`seq`, length, CRC-32,
//! bytes), appended with one write before they are processed, so the only moment a kill loses
//! a read is inside that write; it starts over once everything in it is journaled and it
//! grew past [`SPOOL_RESET`]. A power loss loses the fd store with it, so both files only
//! matter between two processes of one boot.

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::MmapMut;

/// Marks the file as a cursor of this layout.
const MAGIC: u64 = u64::from_le_bytes(*b"syncur01");
const LEN: u64 = 40;
/// The cells: magic, group, reading, journaled, saved.
const GROUP: usize = 1;
const READING: usize = 2;
const JOURNALED: usize = 3;
const SAVED: usize = 4;
/// Past this size, a spool whose reads are all journaled starts over.
pub const SPOOL_RESET: u64 = 8 << 20;

/// What a previous process left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marks {
    /// The queue it followed (the id in the fd store's name).
    pub group: u64,
    /// The last read that may have taken records.
    pub reading: u64,
    /// The last read whose changes were written to the journal.
    pub journaled: u64,
    /// The last read whose records are in the spool.
    pub saved: u64,
}

impl Marks {
    /// Whether a successor handed queue `group` may take it up without a walk: every read
    /// begun was kept (what was not journaled is replayed from the spool).
    pub fn seamless(&self, group: u64) -> bool {
        self.group == group && self.saved >= self.reading && self.journaled <= self.saved
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
            saved: c.cell(SAVED).load(Ordering::Acquire),
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
        self.cell(SAVED).store(0, Ordering::Release);
        self.cell(READING).store(0, Ordering::Release);
        self.cell(GROUP).store(group, Ordering::Release);
        self.cell(0).store(MAGIC, Ordering::Release);
    }

    pub(super) fn saved(&self, n: u64) {
        self.cell(SAVED).store(n, Ordering::Release);
    }

    pub(super) fn journaled_now(&self) -> u64 {
        self.cell(JOURNALED).load(Ordering::Acquire)
    }

    pub(super) fn reading(&self, n: u64) {
        self.cell(READING).store(n, Ordering::Release);
    }

    pub(super) fn journaled(&self, n: u64) {
        self.cell(JOURNALED).store(n, Ordering::Release);
    }
}

/// The raw reads, appended by the reader thread only.
pub struct Spool {
    file: std::fs::File,
    len: u64,
}

impl Spool {
    /// Opens the spool in `dir`. `keep`: `Some((journaled, saved))` to continue a
    /// predecessor's: its records with `journaled < seq <= saved` are returned and everything
    /// after the last of them is cut (a torn write); `None` starts it empty.
    pub(super) fn open(
        dir: &Path,
        keep: Option<(u64, u64)>,
    ) -> std::io::Result<(Spool, Vec<Vec<u8>>)> {
        use std::io::Read;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join("spool"))?;
        let mut kept = Vec::new();
        let mut len = 0u64;
        if let Some((journaled, saved)) = keep {
            let mut all = Vec::new();
            file.read_to_end(&mut all)?;
            let mut at = 0usize;
            while let Some((seq, body, next)) = record(&all, at) {
                if seq > saved {
                    break;
                }
                if seq > journaled {
                    kept.push(body.to_vec());
                }
                at = next;
            }
            len = at as u64;
        }
        file.set_len(len)?;
        Ok((Spool { file, len }, kept))
    }

    /// Appends read `seq`'s records (one write); starts over first when everything in the
    /// spool is journaled (`journaled >= last`) and it is past [`SPOOL_RESET`].
    pub(super) fn append(
        &mut self,
        seq: u64,
        bytes: &[u8],
        journaled: u64,
        last: u64,
    ) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        if self.len >= SPOOL_RESET && journaled >= last {
            self.file.set_len(0)?;
            self.len = 0;
        }
        let mut rec = Vec::with_capacity(16 + bytes.len());
        rec.extend_from_slice(&seq.to_le_bytes());
        rec.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        rec.extend_from_slice(&crc32fast::hash(bytes).to_le_bytes());
        rec.extend_from_slice(bytes);
        self.file.write_all_at(&rec, self.len)?;
        self.len += rec.len() as u64;
        Ok(())
    }
}

/// The record at `at`: its seq, body, and where the next one starts; `None` at the end or at
/// a torn or damaged record.
fn record(all: &[u8], at: usize) -> Option<(u64, &[u8], usize)> {
    let head = all.get(at..at + 16)?;
    let seq = u64::from_le_bytes(head[..8].try_into().ok()?);
    let len = u32::from_le_bytes(head[8..12].try_into().ok()?) as usize;
    let sum = u32::from_le_bytes(head[12..16].try_into().ok()?);
    let body = all.get(at + 16..at + 16 + len)?;
    (crc32fast::hash(body) == sum).then_some((seq, body, at + 16 + len))
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
        assert_eq!(
            (prev.group, prev.reading, prev.journaled, prev.saved),
            (7, 2, 1, 0)
        );
        #[rustfmt::skip]
        let table: &[(&str, Marks, u64, bool)] = &[
            ("read 2 begun, not kept", prev, 7, false),
            ("read 2 kept, not journaled", Marks { saved: 2, ..prev }, 7, true),
            ("all journaled", Marks { journaled: 2, saved: 2, ..prev }, 7, true),
            ("another queue", Marks { journaled: 2, saved: 2, ..prev }, 8, false),
            ("nothing read yet", Marks { reading: 0, journaled: 0, saved: 0, ..prev }, 7, true),
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
                journaled: 0,
                saved: 0,
            })
        );
    }

    #[test]
    fn the_spool_gives_back_what_was_kept_and_not_journaled() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, kept) = Spool::open(dir.path(), None).unwrap();
        assert!(kept.is_empty());
        for seq in 1..=4u64 {
            s.append(seq, format!("read {seq}").as_bytes(), 0, 0)
                .unwrap();
        }
        drop(s);
        // A torn fifth record.
        let p = dir.path().join("spool");
        let mut tail = std::fs::read(&p).unwrap();
        tail.extend_from_slice(&5u64.to_le_bytes());
        tail.extend_from_slice(&100u32.to_le_bytes());
        tail.extend_from_slice(b"torn");
        std::fs::write(&p, &tail).unwrap();
        let show = |v: Vec<Vec<u8>>| -> Vec<String> {
            v.into_iter()
                .map(|b| String::from_utf8(b).unwrap())
                .collect()
        };
        #[rustfmt::skip]
        let table: &[(&str, (u64, u64), &[&str])] = &[
            ("two journaled, four kept", (2, 4), &["read 3", "read 4"]),
            ("only three counted as kept", (1, 3), &["read 2", "read 3"]),
            ("all journaled", (4, 4), &[]),
        ];
        for (name, keep, want) in table {
            let (_, kept) = Spool::open(dir.path(), Some(*keep)).unwrap();
            assert_eq!(show(kept), *want, "{name}");
            // What follows the last counted record is cut: the torn one and any later.
            let again = Spool::open(dir.path(), Some((0, u64::MAX))).unwrap().1;
            assert_eq!(
                again.len() as u64,
                keep.1,
                "{name}: cut after record {}",
                keep.1
            );
            std::fs::write(&p, &tail).unwrap();
        }
        let (_, kept) = Spool::open(dir.path(), None).unwrap();
        assert!(kept.is_empty());
        assert_eq!(
            std::fs::metadata(&p).unwrap().len(),
            0,
            "a fresh start empties it"
        );
    }
}
