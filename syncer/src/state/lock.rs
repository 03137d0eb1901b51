//! The state directory's owner: its lock (one syncer per state), and the processes a crashed
//! owner left running.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use super::StateError;

/// The environment variable that marks a syncer's transfers with its state directory.
pub const ORPHAN_TAG: &str = "SYNCER_STATE_OWNER";

/// Stops the processes a crashed syncer on `dir` left running (its rsyncs, found by their
/// [`ORPHAN_TAG`]): finishing later, they could write an older version over what this one
/// sends. Called with the state's lock held, so no live syncer owns them. Returns how many.
pub fn kill_orphans(dir: &Path) -> usize {
    let want = format!("{ORPHAN_TAG}={}", dir.display());
    let mine = std::process::id();
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid as u32 == mine {
            continue;
        }
        let Ok(env) = std::fs::read(e.path().join("environ")) else {
            continue;
        };
        if env.split(|&b| b == 0).any(|v| v == want.as_bytes()) {
            // SAFETY: kill has no memory preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            pids.push(pid);
        }
    }
    // Wait (briefly) until they are gone.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while pids
        .iter()
        .any(|p| Path::new(&format!("/proc/{p}/environ")).exists())
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    pids.len()
}

/// How long a start waits for the state directory's lock before saying it is in use.
const LOCK_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Takes the state directory's lock (`flock` on `lock`, which holds the holder's pid).
pub(super) fn lock(dir: &Path) -> Result<File, StateError> {
    use std::io::{Read, Seek, Write};
    let path = dir.join("lock");
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|source| StateError::Io {
            dir: dir.to_path_buf(),
            source,
        })?;
    // Seen in the property test: the lock still held for a moment after its holder was
    // killed (-9) and reaped (a child between fork and exec would hold the descriptor until
    // its exec closes it). A restart right after a kill waits that out; a second syncer on
    // the same directory still fails, after LOCK_GRACE.
    let deadline = std::time::Instant::now() + LOCK_GRACE;
    // SAFETY (both calls): flock on a descriptor we own.
    while unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let mut holder = String::new();
        let _ = f.read_to_string(&mut holder);
        return Err(StateError::Locked {
            dir: dir.to_path_buf(),
            holder: holder.trim().to_string(),
        });
    }
    let _ = f.set_len(0);
    let _ = f.rewind();
    let _ = writeln!(f, "{}", std::process::id());
    Ok(f)
}
