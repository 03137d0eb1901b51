//! The arrival clock: a fanotify filesystem mark on the target filesystem
//! (FAN_REPORT_DFID_NAME) read by one blocking thread. Every event that puts a final name in
//! place (FAN_CREATE, FAN_MOVED_TO; rsync writes `.name.XXXXXX` and renames it) and whose name is
//! one of the generator's unique file names is recorded with the time it was read; so is every
//! event that takes one away (FAN_DELETE, FAN_MOVED_FROM), and both kinds for the directory
//! names the live load times ([`DirName`]). Any event at all (also attribute changes) moves the
//! "last activity" time that the convergence wait uses. No polling of the tree: the thread
//! sleeps in poll(2).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::sys::mono_ns;

const FAN_CLASS_NOTIF: u32 = 0x0;
const FAN_CLOEXEC: u32 = 0x1;
const FAN_UNLIMITED_QUEUE: u32 = 0x10;
const FAN_REPORT_FID: u32 = 0x200;
const FAN_REPORT_DFID_NAME: u32 = 0xc00;

const FAN_MARK_ADD: u32 = 0x1;
const FAN_MARK_FILESYSTEM: u32 = 0x100;

const FAN_ATTRIB: u64 = 0x4;
const FAN_MOVED_FROM: u64 = 0x40;
const FAN_MOVED_TO: u64 = 0x80;
const FAN_CREATE: u64 = 0x100;
const FAN_DELETE: u64 = 0x200;
const FAN_Q_OVERFLOW: u64 = 0x4000;
const FAN_ONDIR: u64 = 0x4000_0000;

const INFO_DFID_NAME: u8 = 2;
const INFO_NEW_DFID_NAME: u8 = 12;

const METADATA_LEN: usize = 24;

/// Parses a generator file name (`f` and eight digits) into its id.
pub fn file_id(name: &[u8]) -> Option<u32> {
    if name.len() != 9 || name[0] != b'f' || !name[1..].iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(&name[1..]).ok()?.parse().ok()
}

/// The generator's name for file `id`.
pub fn file_name(id: u32) -> String {
    format!("f{id:08}")
}

/// The directory names whose arrival and departure the live load times: the start-up tree's
/// leaves (`d` and at least six digits) and the leaves renamed by the live load (`r` and eight
/// digits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirName {
    Leaf,
    Renamed,
}

const DIR_KEY_SHIFT: u32 = 40;

/// The key of a directory name: apart from every file id (which are below 2^32).
pub fn dir_key(kind: DirName, n: u64) -> u64 {
    let tag = match kind {
        DirName::Leaf => 1u64,
        DirName::Renamed => 2,
    };
    tag << DIR_KEY_SHIFT | n
}

impl DirName {
    pub fn of_key(key: u64) -> DirName {
        if key >> DIR_KEY_SHIFT == 2 {
            DirName::Renamed
        } else {
            DirName::Leaf
        }
    }
}

/// The key of a timed directory name, if `name` is one.
pub fn dir_key_of(name: &[u8]) -> Option<u64> {
    let (kind, digits) = match name.split_first()? {
        (b'd', rest) if rest.len() >= 6 => (DirName::Leaf, rest),
        (b'r', rest) if rest.len() == 8 => (DirName::Renamed, rest),
        _ => return None,
    };
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(dir_key(
        kind,
        std::str::from_utf8(digits).ok()?.parse().ok()?,
    ))
}

/// One parsed event: its mask and the entry name of its (new) DFID_NAME record.
#[derive(Debug, PartialEq, Eq)]
pub struct Event<'a> {
    pub mask: u64,
    pub name: Option<&'a [u8]>,
}

/// Parses a buffer read from a FAN_REPORT_DFID_NAME group. Stops at the first malformed record.
pub fn parse(buf: &[u8]) -> Vec<Event<'_>> {
    let rd_u16 = |b: &[u8], o: usize| u16::from_ne_bytes([b[o], b[o + 1]]) as usize;
    let rd_u32 = |b: &[u8], o: usize| u32::from_ne_bytes(b[o..o + 4].try_into().unwrap()) as usize;
    let mut out = Vec::new();
    let mut off = 0;
    while off + METADATA_LEN <= buf.len() {
        let event_len = rd_u32(buf, off);
        let meta_len = rd_u16(buf, off + 6);
        if event_len < METADATA_LEN || meta_len < METADATA_LEN || off + event_len > buf.len() {
            break;
        }
        let mask = u64::from_ne_bytes(buf[off + 8..off + 16].try_into().unwrap());
        let fd = i32::from_ne_bytes(buf[off + 16..off + 20].try_into().unwrap());
        if fd >= 0 {
            // FID groups report no descriptors; close one anyway rather than leak it.
            // SAFETY: the kernel handed us this descriptor; nothing else owns it.
            unsafe { libc::close(fd) };
        }
        let ev = &buf[off..off + event_len];
        let mut name = None;
        let mut i = meta_len;
        while i + 4 <= ev.len() {
            let info_type = ev[i];
            let len = rd_u16(ev, i + 2);
            if len < 4 || i + len > ev.len() {
                break;
            }
            if matches!(info_type, INFO_DFID_NAME | INFO_NEW_DFID_NAME) {
                // header(4) fsid(8) handle_bytes(4) handle_type(4) handle[handle_bytes] name\0
                let h = i + 4 + 8;
                if h + 8 <= i + len {
                    let hb = rd_u32(ev, h);
                    let n = h + 8 + hb;
                    if n <= i + len {
                        let raw = &ev[n..i + len];
                        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
                        name = Some(&raw[..end]);
                    }
                }
            }
            i += len;
        }
        out.push(Event { mask, name });
        off += event_len;
    }
    out
}

#[derive(Default)]
struct Shared {
    /// (file id, time read) for every final-name arrival of a generator file.
    arrivals: Vec<(u32, u64)>,
    /// (key, time read) for every departure of a generator file name (FAN_DELETE,
    /// FAN_MOVED_FROM), and the arrivals and departures of timed directory names.
    departures: Vec<(u64, u64)>,
    dir_arrivals: Vec<(u64, u64)>,
    /// Time of the last event of any kind.
    last_event: u64,
    events: u64,
    overflow: bool,
}

/// The running watcher of one target filesystem.
pub struct Watcher {
    shared: Arc<(Mutex<Shared>, Condvar)>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<()>>>,
}

/// Arrivals and departures of every timed name (file ids and directory keys alike), as
/// (key, time read).
#[derive(Debug, Clone, Default)]
pub struct Marks {
    pub arrived: Vec<(u64, u64)>,
    pub left: Vec<(u64, u64)>,
}

/// What the watcher saw.
pub struct Seen {
    pub arrivals: Vec<(u32, u64)>,
    pub marks: Marks,
    pub events: u64,
    pub overflow: bool,
}

impl Watcher {
    /// Marks the filesystem holding `mount` and starts reading.
    pub fn start(mount: &Path) -> Result<Watcher> {
        // SAFETY: plain syscalls; the returned descriptor is owned below.
        let fd = unsafe {
            libc::fanotify_init(
                FAN_CLASS_NOTIF
                    | FAN_CLOEXEC
                    | FAN_UNLIMITED_QUEUE
                    | FAN_REPORT_FID
                    | FAN_REPORT_DFID_NAME,
                (libc::O_RDONLY | libc::O_LARGEFILE | libc::O_CLOEXEC) as u32,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error())
                .context("fanotify_init for the target watcher");
        }
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let path = std::ffi::CString::new(mount.as_os_str().as_encoded_bytes())?;
        let mask = FAN_CREATE | FAN_MOVED_TO | FAN_MOVED_FROM | FAN_DELETE | FAN_ATTRIB | FAN_ONDIR;
        // SAFETY: valid descriptor and NUL-terminated path.
        let r = unsafe {
            libc::fanotify_mark(
                fd.as_raw_fd(),
                FAN_MARK_ADD | FAN_MARK_FILESYSTEM,
                mask,
                libc::AT_FDCWD,
                path.as_ptr(),
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("fanotify_mark {}", mount.display()));
        }
        let shared: Arc<(Mutex<Shared>, Condvar)> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (sh, sp) = (shared.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("target-watch".into())
            .spawn(move || read_loop(fd, &sh, &sp))
            .context("spawn the watcher thread")?;
        Ok(Watcher {
            shared,
            stop,
            thread: Some(thread),
        })
    }

    /// Time of the last event (0 if none yet).
    pub fn last_event(&self) -> u64 {
        self.shared.0.lock().expect("watch lock").last_event
    }

    /// A copy of the arrivals so far.
    pub fn arrivals(&self) -> Vec<(u32, u64)> {
        self.shared.0.lock().expect("watch lock").arrivals.clone()
    }

    /// A copy of the arrivals and departures so far, of files and directories.
    pub fn marks(&self) -> Marks {
        marks_of(&self.shared.0.lock().expect("watch lock"))
    }

    /// Waits until an event newer than `after` has been read, or `timeout`.
    pub fn wait_event_after(&self, after: u64, timeout: Duration) {
        let end = mono_ns() + timeout.as_nanos() as u64;
        let (lock, cv) = &*self.shared;
        let mut s = lock.lock().expect("watch lock");
        while s.last_event <= after {
            let now = mono_ns();
            if now >= end || crate::sys::check_interrupt().is_err() {
                return;
            }
            let slice = Duration::from_nanos((end - now).min(100_000_000));
            s = cv.wait_timeout(s, slice).expect("watch lock").0;
        }
    }

    /// Stops the thread and returns everything seen.
    pub fn stop(mut self) -> Result<Seen> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            match t.join() {
                Ok(r) => r?,
                Err(_) => bail!("the watcher thread panicked"),
            }
        }
        let mut s = self.shared.0.lock().expect("watch lock");
        Ok(Seen {
            marks: marks_of(&s),
            arrivals: std::mem::take(&mut s.arrivals),
            events: s.events,
            overflow: s.overflow,
        })
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn marks_of(s: &Shared) -> Marks {
    let mut arrived: Vec<(u64, u64)> = s.arrivals.iter().map(|&(id, t)| (id as u64, t)).collect();
    arrived.extend_from_slice(&s.dir_arrivals);
    Marks {
        arrived,
        left: s.departures.clone(),
    }
}

/// Sorts one event into `b`: (file arrivals, departures, directory arrivals).
fn classify(ev: &Event, now: u64, b: &mut Batch) {
    let Some(name) = ev.name else { return };
    let dir = ev.mask & FAN_ONDIR != 0;
    let key = if dir {
        dir_key_of(name)
    } else {
        file_id(name).map(u64::from)
    };
    let Some(key) = key else { return };
    if ev.mask & (FAN_CREATE | FAN_MOVED_TO) != 0 {
        if dir {
            b.dir_arrivals.push((key, now));
        } else {
            b.arrivals.push((key as u32, now));
        }
    }
    if ev.mask & (FAN_DELETE | FAN_MOVED_FROM) != 0 {
        b.departures.push((key, now));
    }
}

#[derive(Default)]
struct Batch {
    arrivals: Vec<(u32, u64)>,
    departures: Vec<(u64, u64)>,
    dir_arrivals: Vec<(u64, u64)>,
}

fn read_loop(fd: OwnedFd, shared: &(Mutex<Shared>, Condvar), stop: &AtomicBool) -> Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut batch = Batch::default();
    while !stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd. A 200 ms timeout only bounds how late a stop is noticed.
        let r = unsafe { libc::poll(&mut pfd, 1, 200) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e).context("poll the target watcher");
        }
        if r == 0 {
            continue;
        }
        // SAFETY: reading into our own buffer of the stated length.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        let now = mono_ns();
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if matches!(
                e.kind(),
                std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
            ) {
                continue;
            }
            return Err(e).context("read the target watcher");
        }
        let events = parse(&buf[..n as usize]);
        let mut overflow = false;
        for ev in &events {
            if ev.mask & FAN_Q_OVERFLOW != 0 {
                overflow = true;
            }
            classify(ev, now, &mut batch);
        }
        let (lock, cv) = shared;
        let mut s = lock.lock().expect("watch lock");
        s.arrivals.append(&mut batch.arrivals);
        s.departures.append(&mut batch.departures);
        s.dir_arrivals.append(&mut batch.dir_arrivals);
        s.events += events.len() as u64;
        s.overflow |= overflow;
        if !events.is_empty() {
            s.last_event = now;
            cv.notify_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_temp_names_do_not_match() {
        assert_eq!(file_id(file_name(1234).as_bytes()), Some(1234));
        assert_eq!(file_id(b".f00001234.Xy12ab"), None);
        assert_eq!(file_id(b"f0000123"), None);
        assert_eq!(file_id(b"d00001234"), None);
        assert_eq!(dir_key_of(b"d000123"), Some(dir_key(DirName::Leaf, 123)));
        assert_eq!(
            dir_key_of(b"d1234567"),
            Some(dir_key(DirName::Leaf, 1234567))
        );
        assert_eq!(dir_key_of(b"r00000007"), Some(dir_key(DirName::Renamed, 7)));
        assert_eq!(dir_key_of(b"x00000007"), None);
        assert_eq!(dir_key_of(b"t0001"), None);
        assert_eq!(
            DirName::of_key(dir_key(DirName::Renamed, 7)),
            DirName::Renamed
        );
    }

    /// A hand-built buffer in the kernel's layout: one event with a DFID_NAME record.
    #[test]
    fn parses_a_dfid_name_record() {
        let name = b"f00000042\0";
        let handle = [7u8; 8];
        let rec_len = 4 + 8 + 8 + handle.len() + name.len();
        let rec_len = rec_len.div_ceil(4) * 4;
        let mut ev = Vec::new();
        let total = METADATA_LEN + rec_len;
        ev.extend_from_slice(&(total as u32).to_ne_bytes());
        ev.push(3);
        ev.push(0);
        ev.extend_from_slice(&(METADATA_LEN as u16).to_ne_bytes());
        ev.extend_from_slice(&FAN_MOVED_TO.to_ne_bytes());
        ev.extend_from_slice(&(-1i32).to_ne_bytes());
        ev.extend_from_slice(&0i32.to_ne_bytes());
        ev.push(INFO_DFID_NAME);
        ev.push(0);
        ev.extend_from_slice(&(rec_len as u16).to_ne_bytes());
        ev.extend_from_slice(&[0u8; 8]);
        ev.extend_from_slice(&(handle.len() as u32).to_ne_bytes());
        ev.extend_from_slice(&1i32.to_ne_bytes());
        ev.extend_from_slice(&handle);
        ev.extend_from_slice(name);
        ev.resize(total, 0);
        let mut two = ev.clone();
        two.extend_from_slice(&ev);
        let got = parse(&two);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].mask, FAN_MOVED_TO);
        assert_eq!(got[0].name, Some(&b"f00000042"[..]));
        // A truncated buffer yields only the whole events.
        assert_eq!(parse(&two[..total + 10]).len(), 1);
    }
}
