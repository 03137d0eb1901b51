//! Parsing of the fanotify read buffer: event metadata followed by information records
//! (file identifiers with optional names). `nix` does not expose these records, so this module
//! reads the layout of `<linux/fanotify.h>` itself, with bounds checks on every field: a
//! malformed buffer is an error (and a rescan), never a panic.

use super::sys::*;

/// One event: its mask, the process that caused it, and its information records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event<'a> {
    pub mask: u64,
    pub pid: i32,
    pub records: Vec<Record<'a>>,
}

/// A file identifier record: which kind, the `struct file_handle` bytes, and the name for the
/// `*_DFID_NAME` kinds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    pub info_type: u8,
    pub handle: &'a [u8],
    pub name: Option<&'a [u8]>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed fanotify record at offset {offset}: {what}")]
pub struct ParseError {
    pub offset: usize,
    pub what: &'static str,
}

const METADATA_LEN: usize = 24;

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// Parses every event in `buf` (the bytes one `read` returned).
pub fn parse(buf: &[u8]) -> Result<Vec<Event<'_>>, ParseError> {
    let mut out = Vec::new();
    let mut off = 0;
    while off < buf.len() {
        let err = |what| ParseError { offset: off, what };
        if buf.len() - off < METADATA_LEN {
            return Err(err("truncated metadata"));
        }
        let event_len = u32_at(buf, off) as usize;
        let vers = buf[off + 4];
        let metadata_len = u16_at(buf, off + 6) as usize;
        if vers != FANOTIFY_METADATA_VERSION {
            return Err(err("unknown metadata version"));
        }
        if event_len < METADATA_LEN
            || metadata_len < METADATA_LEN
            || metadata_len > event_len
            || off + event_len > buf.len()
        {
            return Err(err("bad event length"));
        }
        let mask = u64::from_ne_bytes(buf[off + 8..off + 16].try_into().expect("8 bytes"));
        let fd = u32_at(buf, off + 16) as i32;
        let pid = u32_at(buf, off + 20) as i32;
        if fd != FAN_NOFD {
            // Not expected in FID mode; never leak a descriptor.
            // SAFETY: the kernel gave us this descriptor; we own and close it.
            unsafe { libc::close(fd) };
        }
        let records = parse_records(
            &buf[off + metadata_len..off + event_len],
            off + metadata_len,
        )?;
        out.push(Event { mask, pid, records });
        off += event_len;
    }
    Ok(out)
}

fn parse_records(mut b: &[u8], mut base: usize) -> Result<Vec<Record<'_>>, ParseError> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let err = |what| ParseError { offset: base, what };
        if b.len() < 4 {
            return Err(err("truncated info header"));
        }
        let info_type = b[0];
        let len = u16_at(b, 2) as usize;
        if len < 4 || len > b.len() {
            return Err(err("bad info length"));
        }
        let body = &b[4..len];
        match info_type {
            FAN_EVENT_INFO_TYPE_FID
            | FAN_EVENT_INFO_TYPE_DFID
            | FAN_EVENT_INFO_TYPE_DFID_NAME
            | FAN_EVENT_INFO_TYPE_OLD_DFID_NAME
            | FAN_EVENT_INFO_TYPE_NEW_DFID_NAME => {
                // fsid (8 bytes), then struct file_handle { u32 handle_bytes; i32 type; u8[] }.
                if body.len() < 16 {
                    return Err(err("truncated file handle"));
                }
                let fh = &body[8..];
                let hb = u32_at(fh, 0) as usize;
                if 8 + hb > fh.len() {
                    return Err(err("file handle longer than its record"));
                }
                let handle = &fh[..8 + hb];
                let name = match info_type {
                    FAN_EVENT_INFO_TYPE_DFID_NAME
                    | FAN_EVENT_INFO_TYPE_OLD_DFID_NAME
                    | FAN_EVENT_INFO_TYPE_NEW_DFID_NAME => {
                        let rest = &fh[8 + hb..];
                        let end = rest
                            .iter()
                            .position(|&c| c == 0)
                            .ok_or(err("name without terminator"))?;
                        Some(&rest[..end])
                    }
                    _ => None,
                };
                out.push(Record {
                    info_type,
                    handle,
                    name,
                });
            }
            // PIDFD, ERROR, RANGE, MNT and future records carry nothing we need.
            _ => {}
        }
        b = &b[len..];
        base += len;
    }
    Ok(out)
}

/// An information record to encode: (info type, handle bytes, name).
pub type RecordSpec<'a> = (u8, &'a [u8], Option<&'a [u8]>);

/// Encodes one event as the kernel lays it out (pid 42, no fd); for tests and benchmarks.
pub fn encode_event(mask: u64, records: &[RecordSpec<'_>]) -> Vec<u8> {
    let mut recs = Vec::new();
    for (ty, handle_body, name) in records {
        let mut r = vec![*ty, 0, 0, 0];
        r.extend_from_slice(&[7u8; 8]); // fsid
        r.extend_from_slice(&(handle_body.len() as u32).to_ne_bytes());
        r.extend_from_slice(&1i32.to_ne_bytes());
        r.extend_from_slice(handle_body);
        if let Some(n) = name {
            r.extend_from_slice(n);
            r.push(0);
        }
        while r.len() % 4 != 0 {
            r.push(0);
        }
        let len = r.len() as u16;
        r[2..4].copy_from_slice(&len.to_ne_bytes());
        recs.extend(r);
    }
    let mut e = Vec::new();
    e.extend_from_slice(&((24 + recs.len()) as u32).to_ne_bytes());
    e.push(FANOTIFY_METADATA_VERSION);
    e.push(0);
    e.extend_from_slice(&24u16.to_ne_bytes());
    e.extend_from_slice(&mask.to_ne_bytes());
    e.extend_from_slice(&FAN_NOFD.to_ne_bytes());
    e.extend_from_slice(&42i32.to_ne_bytes());
    e.extend(recs);
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dfid_name_and_fid() {
        let mut buf = encode_event(
            FAN_CREATE | FAN_ONDIR,
            &[
                (
                    FAN_EVENT_INFO_TYPE_DFID_NAME,
                    b"\x01\x02\x03\x04\x05\x06\x07\x08",
                    Some(b"new dir"),
                ),
                (
                    FAN_EVENT_INFO_TYPE_FID,
                    b"\x09\x09\x09\x09\x09\x09\x09\x09",
                    None,
                ),
            ],
        );
        buf.extend(encode_event(FAN_Q_OVERFLOW, &[]));
        let evs = parse(&buf).unwrap();
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[0].mask, FAN_CREATE | FAN_ONDIR);
        assert_eq!(evs[0].pid, 42);
        assert_eq!(evs[0].records[0].name, Some(&b"new dir"[..]));
        assert_eq!(evs[0].records[0].handle.len(), 16);
        assert_eq!(evs[0].records[1].name, None);
        assert_eq!(evs[1].mask, FAN_Q_OVERFLOW);
        assert!(evs[1].records.is_empty());
    }

    #[test]
    fn rejects_malformed_buffers_without_panicking() {
        let good = encode_event(
            FAN_MODIFY,
            &[(FAN_EVENT_INFO_TYPE_DFID_NAME, b"abcdefgh", Some(b"f"))],
        );
        for cut in 1..good.len() {
            assert!(parse(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = good.clone();
        bad[4] = 9; // version
        assert!(parse(&bad).is_err());
        let mut bad = good.clone();
        bad[24 + 4 + 8] = 200; // handle_bytes beyond the record
        assert!(parse(&bad).is_err());
        let mut bad = good;
        let n = bad.len();
        for b in &mut bad[n - 4..] {
            *b = b'x'; // name loses its terminator
        }
        assert!(parse(&bad).is_err());
    }
}
