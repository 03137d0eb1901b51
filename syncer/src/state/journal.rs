//! The journal of one target: its pending paths, as an append-only log file
//! (`journal/<id>.log` in the state directory). Every change of a path's pending state (its op
//! and whether it is a directory, or gone once a transfer covering it succeeded) is one
//! record; the state's writer appends what came in each batch with one `write`, and syncs the
//! log with the store once a second. A start replays the log (the last record of a path wins)
//! and rewrites it with only what is pending; a running log is rewritten the same way each
//! time it has doubled (at least [`COMPACT_MIN`]).
//!
//! Why not a keyspace of the store: a pending path lives for a fraction of a second, and in an
//! LSM store every one of them was a skiplist insert, a tombstone, and a share of flushes and
//! compactions: half of the writer's CPU under a steady load, for a set that is small at any
//! moment. A log costs a copy of the record per change.
//!
//! A record: CRC-32 (of everything after it), the body's length (u32, little-endian), then the
//! body: one state byte (the op, `0x10` for a directory; [`GONE`]) and the path's bytes. A
//! record that fails its checksum or runs past the end is a **torn tail** when no valid record
//! follows it (a kill or a power loss during the last write: cut off, the start's walk against
//! the index finds what it held), and **damage** otherwise (never trusted: the log is set
//! aside and the target gets a full pass).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::queue::Op;

/// The state byte of a path no longer pending.
const GONE: u8 = 0xff;
/// The state byte's directory bit.
const DIR: u8 = 0x10;
/// Bytes before a record's body.
const HEAD: usize = 8;
/// The longest body a record may have (a state byte and a path); anything longer is garbage.
const MAX_BODY: usize = 1 + (64 << 10);
/// A log is rewritten once it is past this size and twice its size after the last rewrite.
pub const COMPACT_MIN: u64 = 32 << 20;
/// A bad record followed by more than this is damage, not a torn tail (the tail a crash can
/// tear is the last write, or the last second of writes after a power loss).
const TORN_MAX: usize = 16 << 20;

/// A pending path as the journal holds it: path, op, is a directory.
pub type Entry = (PathBuf, Op, bool);

/// A path's pending state in a record (`None`: no longer pending).
type State = Option<(Op, bool)>;

/// An op's number, in these records as in the keyspace journals before them.
pub(super) fn op_byte(op: Op) -> u8 {
    match op {
        Op::Update => 0,
        Op::Delete => 1,
        Op::Tree => 2,
        Op::Shallow => 3,
    }
}

/// The op numbered `b` ([`op_byte`]), if any.
pub(super) fn op_of(b: u8) -> Option<Op> {
    Some(match b {
        0 => Op::Update,
        1 => Op::Delete,
        2 => Op::Tree,
        3 => Op::Shallow,
        _ => return None,
    })
}

fn state_byte(state: State) -> u8 {
    match state {
        None => GONE,
        Some((op, is_dir)) => op_byte(op) | if is_dir { DIR } else { 0 },
    }
}

/// The state a byte says (`Some(None)`: gone); `None` for a byte no writer makes.
fn state_of(b: u8) -> Option<State> {
    if b == GONE {
        return Some(None);
    }
    Some(Some((op_of(b & !DIR)?, b & DIR != 0)))
}

/// Appends the record of `path`'s new state (`None`: no longer pending) to `out`.
pub fn encode(out: &mut Vec<u8>, path: &Path, state: State) {
    let p = path.as_os_str().as_bytes();
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&((1 + p.len()) as u32).to_le_bytes());
    out.push(state_byte(state));
    out.extend_from_slice(p);
    let crc = crc32fast::hash(&out[start + 4..]).to_le_bytes();
    out[start..start + 4].copy_from_slice(&crc);
}

/// The record at `pos`: its state, its path and where the next one starts; `None` when no
/// valid record starts there.
fn record_at(bytes: &[u8], pos: usize) -> Option<(State, &[u8], usize)> {
    let head = bytes.get(pos..pos.checked_add(HEAD)?)?;
    let crc = u32::from_le_bytes(head[..4].try_into().ok()?);
    let len = u32::from_le_bytes(head[4..].try_into().ok()?) as usize;
    if len == 0 || len > MAX_BODY {
        return None;
    }
    let end = pos + HEAD + len;
    let checked = bytes.get(pos + 4..end)?;
    if crc32fast::hash(checked) != crc {
        return None;
    }
    let body = &bytes[pos + HEAD..end];
    Some((state_of(body[0])?, &body[1..], end))
}

/// What a log's bytes say.
#[derive(Debug, PartialEq, Eq)]
pub struct Replayed {
    /// The pending paths, in path order.
    pub pending: Vec<Entry>,
    /// Where the valid records end (the log's length unless its tail was torn).
    pub valid: usize,
}

/// A log whose records cannot be trusted: a bad record at `at` with valid ones after it.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("a journal record at byte {at} fails its checksum and records follow it")]
pub struct Damaged {
    pub at: usize,
}

/// Replays a log: the last record of each path wins.
pub fn replay(bytes: &[u8]) -> Result<Replayed, Damaged> {
    let mut live: HashMap<&[u8], (Op, bool)> = HashMap::new();
    let mut pos = 0;
    while pos < bytes.len() {
        match record_at(bytes, pos) {
            Some((state, path, next)) => {
                match state {
                    Some(s) => live.insert(path, s),
                    None => live.remove(path),
                };
                pos = next;
            }
            None => {
                let rest = bytes.len() - pos;
                if rest > TORN_MAX || (pos + 1..bytes.len()).any(|p| record_at(bytes, p).is_some())
                {
                    return Err(Damaged { at: pos });
                }
                break;
            }
        }
    }
    let mut pending: Vec<Entry> = live
        .into_iter()
        .map(|(p, (op, d))| (PathBuf::from(OsStr::from_bytes(p)), op, d))
        .collect();
    pending.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(Replayed {
        pending,
        valid: pos,
    })
}

/// The records of `entries`, each pending.
fn encode_all(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for (p, op, d) in entries {
        encode(&mut out, p, Some((*op, *d)));
    }
    out
}

/// One target's log, written by the state's writer thread only.
pub struct Log {
    path: PathBuf,
    file: File,
    len: u64,
    /// Written since the last sync.
    dirty: bool,
    compact_at: u64,
}

impl Log {
    /// Opens (creating) the log at `path`; appends go to its end.
    pub fn open(path: &Path) -> std::io::Result<Log> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(path)?;
        let len = file.metadata()?.len();
        Ok(Log {
            path: path.to_path_buf(),
            file,
            len,
            dirty: false,
            compact_at: COMPACT_MIN.max(2 * len),
        })
    }

    /// Reads what the log holds and rewrites it with only that (a torn tail is cut off:
    /// `Ok((pending, Some(bytes cut)))`). A damaged log is moved aside (`<name>.damaged-<time>`)
    /// and an empty one takes its place: the caller must not trust that nothing was pending.
    pub fn read_pending(&mut self) -> Result<(Vec<Entry>, Option<usize>), (Damaged, PathBuf)> {
        let bytes = std::fs::read(&self.path).unwrap_or_default();
        match replay(&bytes) {
            Ok(r) => {
                let torn = (r.valid < bytes.len()).then(|| bytes.len() - r.valid);
                if self.rewrite(&encode_all(&r.pending)).is_err() {
                    // Not rewritten: appends go on after the old records (a torn tail then
                    // sits between; the next start takes it for damage and passes).
                    tracing::warn!(log = %self.path.display(), "cannot rewrite the journal");
                }
                Ok((r.pending, torn))
            }
            Err(d) => {
                let stamp = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let aside = self.path.with_extension(format!("log.damaged-{stamp}"));
                let _ = std::fs::rename(&self.path, &aside);
                let _ = self.rewrite(&[]);
                Err((d, aside))
            }
        }
    }

    /// Appends records (one `write`); rewrites the log when it has grown enough.
    pub fn append(&mut self, records: &[u8]) -> std::io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.file.write_all(records) {
            // No half record stays behind for later records to follow (that would be damage).
            let _ = self.file.set_len(self.len);
            return Err(e);
        }
        self.len += records.len() as u64;
        self.dirty = true;
        if self.len >= self.compact_at {
            self.compact()?;
        }
        Ok(())
    }

    /// Makes what was appended durable.
    pub fn sync(&mut self) -> std::io::Result<()> {
        if self.dirty {
            self.file.sync_data()?;
            self.dirty = false;
        }
        Ok(())
    }

    /// Rewrites the log with only what is pending. A log that does not replay is left as it
    /// is (the next start finds the damage); the next try waits until it doubled again.
    fn compact(&mut self) -> std::io::Result<()> {
        let bytes = std::fs::read(&self.path)?;
        match replay(&bytes) {
            Ok(r) => self.rewrite(&encode_all(&r.pending)),
            Err(e) => {
                tracing::error!(log = %self.path.display(), "{e}: the journal is not rewritten; the next start passes");
                self.compact_at = 2 * self.len;
                Ok(())
            }
        }
    }

    /// Replaces the log with `records`, durably (a new file synced, renamed over it).
    fn rewrite(&mut self, records: &[u8]) -> std::io::Result<()> {
        let tmp = self.path.with_extension("log.new");
        {
            let mut f = File::create(&tmp)?;
            f.write_all(records)?;
            f.sync_data()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        self.file = OpenOptions::new()
            .append(true)
            .read(true)
            .open(&self.path)?;
        self.len = records.len() as u64;
        self.dirty = false;
        self.compact_at = COMPACT_MIN.max(2 * self.len);
        Ok(())
    }

    #[cfg(test)]
    pub fn len(&self) -> u64 {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(path: &str, state: State) -> Vec<u8> {
        let mut v = Vec::new();
        encode(&mut v, Path::new(path), state);
        v
    }

    fn shown(r: &Replayed) -> Vec<String> {
        r.pending
            .iter()
            .map(|(p, op, d)| format!("{}:{op:?}:{d}", p.display()))
            .collect()
    }

    #[test]
    fn the_last_record_of_a_path_wins() {
        let u = Some((Op::Update, false));
        let d = Some((Op::Delete, false));
        let t = Some((Op::Tree, true));
        type Case = (&'static str, Vec<Vec<u8>>, &'static [&'static str]);
        #[rustfmt::skip]
        let table: &[Case] = &[
            ("empty", vec![], &[]),
            ("one pending", vec![rec("a/f", u)], &["a/f:Update:false"]),
            ("sent", vec![rec("a/f", u), rec("a/f", None)], &[]),
            ("changed kind", vec![rec("a/f", u), rec("a/f", d)], &["a/f:Delete:false"]),
            ("sent, then pending again", vec![rec("a/f", u), rec("a/f", None), rec("a/f", u)],
                &["a/f:Update:false"]),
            ("the root and a tree", vec![rec("", Some((Op::Update, true))), rec("d", t)],
                &[":Update:true", "d:Tree:true"]),
            ("gone without being pending", vec![rec("x", None)], &[]),
            ("shallow", vec![rec("d", Some((Op::Shallow, true)))], &["d:Shallow:true"]),
            ("odd bytes in a name", vec![rec("a/\n\u{7f}\u{e9}", u)], &["a/\n\u{7f}\u{e9}:Update:false"]),
        ];
        for (name, records, want) in table {
            let bytes = records.concat();
            let r = replay(&bytes).unwrap();
            assert_eq!(shown(&r), *want, "{name}");
            assert_eq!(r.valid, bytes.len(), "{name}");
        }
    }

    #[test]
    fn a_torn_tail_is_cut_and_damage_is_refused() {
        let u = Some((Op::Update, false));
        let good = [rec("a", u), rec("b", u), rec("a", None)].concat();
        let last = rec("c", u);
        let mut flipped = last.clone();
        let n = flipped.len();
        flipped[n - 1] ^= 1;
        let mut middle = good.clone();
        middle[9] ^= 0x40;
        middle.extend_from_slice(&last);
        type Case = (
            &'static str,
            Vec<u8>,
            Result<(&'static [&'static str], usize), usize>,
        );
        #[rustfmt::skip]
        let table: Vec<Case> = vec![
            ("the last record half written", [good.clone(), last[..5].to_vec()].concat(),
                Ok((&["b:Update:false"], good.len()))),
            ("its body cut short", [good.clone(), last[..last.len() - 1].to_vec()].concat(),
                Ok((&["b:Update:false"], good.len()))),
            ("zeros after it (a power loss)", [good.clone(), vec![0; 4096]].concat(),
                Ok((&["b:Update:false"], good.len()))),
            ("the last record's bytes wrong", [good.clone(), flipped].concat(),
                Ok((&["b:Update:false"], good.len()))),
            ("a bad record with good ones after it", middle, Err(0)),
            ("garbage longer than any torn tail", [good.clone(), vec![0xa5; TORN_MAX + 1]].concat(),
                Err(good.len())),
        ];
        for (name, bytes, want) in table {
            let got = replay(&bytes);
            match want {
                Ok((pending, valid)) => {
                    let r = got.unwrap_or_else(|e| panic!("{name}: {e}"));
                    assert_eq!(shown(&r), pending, "{name}");
                    assert_eq!(r.valid, valid, "{name}");
                }
                Err(at) => assert_eq!(got, Err(Damaged { at }), "{name}"),
            }
        }
    }

    #[test]
    fn a_log_reopened_holds_what_was_pending_and_compacts() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("x.log");
        let mut log = Log::open(&p).unwrap();
        let mut batch = Vec::new();
        for i in 0..1000 {
            encode(
                &mut batch,
                Path::new(&format!("f{i}")),
                Some((Op::Update, false)),
            );
        }
        for i in 0..999 {
            encode(&mut batch, Path::new(&format!("f{i}")), None);
        }
        log.append(&batch).unwrap();
        log.sync().unwrap();
        // Half a record more: a kill inside the write.
        log.append(&rec("torn", Some((Op::Update, false)))[..6])
            .unwrap();
        drop(log);
        let mut log = Log::open(&p).unwrap();
        let (pending, torn) = log.read_pending().unwrap();
        assert_eq!(pending, vec![(PathBuf::from("f999"), Op::Update, false)]);
        assert_eq!(torn, Some(6));
        assert_eq!(
            log.len(),
            rec("f999", Some((Op::Update, false))).len() as u64
        );
        // A damaged log is set aside; an empty one replaces it.
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[9] ^= 1;
        bytes.extend_from_slice(&rec("later", Some((Op::Update, false))));
        std::fs::write(&p, &bytes).unwrap();
        let mut log = Log::open(&p).unwrap();
        let (e, aside) = log.read_pending().unwrap_err();
        assert_eq!(e, Damaged { at: 0 });
        assert_eq!(std::fs::read(&aside).unwrap(), bytes, "kept for inspection");
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 0);
        assert_eq!(log.read_pending().unwrap(), (vec![], None));
    }
}
