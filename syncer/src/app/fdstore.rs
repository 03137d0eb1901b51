//! systemd's file descriptor store (`FDSTORE=1`, `FileDescriptorStoreMax=`): the fanotify
//! group is handed to the service manager once the source is armed, and handed back to the
//! next process of the unit after a crash or a restart by the manager. The kernel keeps the
//! group's mark and queues events while no syncer runs, so that start reads what happened
//! meanwhile instead of walking the tree (see [`crate::state::cursor`] for when that is safe).
//!
//! Outside systemd (no `NOTIFY_SOCKET`, no `LISTEN_FDS` for this process) everything here
//! does nothing. The stored group's name carries its id: `fanotify-<16 hex digits>`.

use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};

use sd_notify::NotifyState;
use tracing::{debug, info, warn};

const PREFIX: &str = "fanotify-";

/// A group handed back by the service manager.
pub struct Kept {
    pub id: u64,
    pub fd: OwnedFd,
}

/// The group this process's predecessor stored, if systemd handed one over. Other descriptors
/// handed over are closed (and removed from the store when they carry our prefix).
pub fn take() -> Option<Kept> {
    let fds = match sd_notify::listen_fds_with_names() {
        Ok(fds) => fds,
        Err(e) => {
            warn!("the descriptors systemd passed cannot be read ({e}); none are used");
            return None;
        }
    };
    let mut kept = None;
    for (raw, name) in fds {
        // SAFETY: systemd passed this descriptor to this process (LISTEN_PID matched), and
        // nothing else in syncer takes passed descriptors.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        match (parse_name(&name), &kept) {
            (Some(id), None) => kept = Some(Kept { id, fd }),
            (Some(_), Some(_)) => {
                warn!(name, "a second fanotify group in the fd store: removed");
                remove(&name);
            }
            (None, _) => debug!(
                name,
                "a descriptor passed by systemd that syncer does not use: closed"
            ),
        }
    }
    if let Some(k) = &kept {
        info!(
            group = format!("{:016x}", k.id),
            "systemd handed back the fanotify group of the previous syncer"
        );
    }
    kept
}

/// Whether a service manager is there to keep a group (`NOTIFY_SOCKET`): without one, the
/// reader keeps no spool and no cursor, since nothing would hand its queue to a successor.
pub fn available() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// Stores `fd` as group `id` (replacing `old`, the group handed back, if it is another one).
/// A store that refuses (`FileDescriptorStoreMax=0`) costs nothing but the walk after a
/// restart.
pub fn keep(id: u64, fd: BorrowedFd<'_>, old: Option<u64>) {
    if !available() {
        return;
    }
    if let Some(old) = old.filter(|&o| o != id) {
        remove(&name(old));
    }
    if old == Some(id) {
        return; // the manager holds it already
    }
    let n = name(id);
    match sd_notify::notify_with_fds(&[NotifyState::FdStore, NotifyState::FdName(&n)], &[fd]) {
        Ok(()) => info!(group = format!("{id:016x}"), "fanotify group handed to systemd's fd store: a restart reads what queued meanwhile"),
        Err(e) => warn!("cannot hand the fanotify group to systemd's fd store ({e}): a restart walks the tree for what changed"),
    }
}

/// Takes group `id` out of the store (its queue is not read by anyone any more).
pub fn forget(id: u64) {
    if available() {
        remove(&name(id));
    }
}

fn remove(name: &str) {
    if let Err(e) = sd_notify::notify(&[NotifyState::FdStoreRemove, NotifyState::FdName(name)]) {
        warn!(
            name,
            "cannot remove a descriptor from systemd's fd store: {e}"
        );
    }
}

fn name(id: u64) -> String {
    format!("{PREFIX}{id:016x}")
}

fn parse_name(name: &str) -> Option<u64> {
    let hex = name.strip_prefix(PREFIX)?;
    (hex.len() == 16).then(|| u64::from_str_radix(hex, 16).ok())?
}

/// A new group's id: random (the standard library's per-process hash keys, with the time),
/// so that a group of another process is never taken for it.
pub fn new_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() | 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_group_id() {
        #[rustfmt::skip]
        let table: &[(&str, Option<u64>)] = &[
            ("fanotify-00000000000000ff", Some(0xff)),
            ("fanotify-0123456789abcdef", Some(0x0123_4567_89ab_cdef)),
            ("fanotify-ff", None),
            ("fanotify-0123456789abcdeg", None),
            ("stored", None),
            ("", None),
        ];
        for (n, want) in table {
            assert_eq!(parse_name(n), *want, "{n}");
        }
        assert_eq!(parse_name(&name(42)), Some(42));
        assert_ne!(new_id(), new_id());
    }
}
