//! Raw fanotify, handle and poll system calls, and the constants of `<linux/fanotify.h>` that the
//! libc crate does not reliably carry. The fanotify source's unsafe code lives here (the eBPF
//! source's is in its loader and record decoder).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

pub const FAN_MODIFY: u64 = 0x0000_0002;
pub const FAN_ATTRIB: u64 = 0x0000_0004;
pub const FAN_CLOSE_WRITE: u64 = 0x0000_0008;
pub const FAN_MOVED_FROM: u64 = 0x0000_0040;
pub const FAN_MOVED_TO: u64 = 0x0000_0080;
pub const FAN_CREATE: u64 = 0x0000_0100;
pub const FAN_DELETE: u64 = 0x0000_0200;
pub const FAN_DELETE_SELF: u64 = 0x0000_0400;
pub const FAN_MOVE_SELF: u64 = 0x0000_0800;
pub const FAN_Q_OVERFLOW: u64 = 0x0000_4000;
pub const FAN_FS_ERROR: u64 = 0x0000_8000;
pub const FAN_RENAME: u64 = 0x1000_0000;
pub const FAN_ONDIR: u64 = 0x4000_0000;

pub const FAN_CLOEXEC: u32 = 0x0000_0001;
pub const FAN_NONBLOCK: u32 = 0x0000_0002;
pub const FAN_CLASS_NOTIF: u32 = 0x0000_0000;
pub const FAN_UNLIMITED_QUEUE: u32 = 0x0000_0010;
pub const FAN_REPORT_FID: u32 = 0x0000_0200;
pub const FAN_REPORT_DIR_FID: u32 = 0x0000_0400;
pub const FAN_REPORT_NAME: u32 = 0x0000_0800;
pub const FAN_REPORT_TARGET_FID: u32 = 0x0000_1000;
pub const FAN_REPORT_DFID_NAME: u32 = FAN_REPORT_DIR_FID | FAN_REPORT_NAME;

pub const FAN_MARK_ADD: u32 = 0x0000_0001;
pub const FAN_MARK_FILESYSTEM: u32 = 0x0000_0100;

pub const FAN_EVENT_INFO_TYPE_FID: u8 = 1;
pub const FAN_EVENT_INFO_TYPE_DFID_NAME: u8 = 2;
pub const FAN_EVENT_INFO_TYPE_DFID: u8 = 3;
pub const FAN_EVENT_INFO_TYPE_OLD_DFID_NAME: u8 = 10;
pub const FAN_EVENT_INFO_TYPE_NEW_DFID_NAME: u8 = 12;

pub const FANOTIFY_METADATA_VERSION: u8 = 3;
pub const FAN_NOFD: i32 = -1;

/// `fanotify_init(2)`.
pub fn init(flags: u32, event_f_flags: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain system call with integer arguments.
    let fd = unsafe { libc::fanotify_init(flags, event_f_flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `fanotify_mark(2)` on `path`.
pub fn mark(fd: BorrowedFd<'_>, flags: u32, mask: u64, path: &Path) -> io::Result<()> {
    let c = cstring(path)?;
    // SAFETY: valid descriptor and NUL-terminated path.
    let r = unsafe { libc::fanotify_mark(fd.as_raw_fd(), flags, mask, libc::AT_FDCWD, c.as_ptr()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn cstring(path: &Path) -> io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

/// The file handle of `path` (a `struct file_handle` as the kernel writes it: `handle_bytes`,
/// `handle_type`, then the opaque bytes), as fanotify reports it in FID records.
pub fn name_to_handle(path: &Path) -> io::Result<Vec<u8>> {
    let c = cstring(path)?;
    // A file_handle header with MAX_HANDLE_SZ (128) bytes of room, 4-byte aligned.
    let mut buf = vec![0u32; 2 + 128 / 4];
    buf[0] = 128;
    let mut mount_id = 0i32;
    // SAFETY: buf holds a file_handle header with 128 bytes of room; c is NUL-terminated.
    let r = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            libc::AT_FDCWD,
            c.as_ptr(),
            buf.as_mut_ptr(),
            &mut mount_id,
            0,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let len = 8 + buf[0] as usize;
    // SAFETY: buf is at least len bytes long (the kernel wrote at most 128 handle bytes).
    Ok(unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), len) }.to_vec())
}

/// Opens the object named by a `struct file_handle` (as the kernel wrote it: `handle_bytes`,
/// `handle_type`, then the opaque bytes) with `O_PATH`, relative to `mount_fd`'s filesystem.
pub fn open_by_handle(mount_fd: RawFd, handle: &[u8]) -> io::Result<OwnedFd> {
    if handle.len() < 8 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // Copy into a 4-byte aligned buffer: struct file_handle is read with u32 fields.
    let mut buf = vec![0u32; handle.len().div_ceil(4)];
    // SAFETY: buf has at least handle.len() bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(handle.as_ptr(), buf.as_mut_ptr().cast::<u8>(), handle.len());
    }
    // SAFETY: buf holds a complete file_handle of the length the kernel gave us.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount_fd,
            buf.as_mut_ptr(),
            libc::O_PATH | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: new descriptor owned by us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// The path of an open descriptor (through /proc), and whether the object is still linked.
pub fn fd_path(fd: &OwnedFd) -> io::Result<(PathBuf, bool)> {
    let path = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
    // SAFETY: zeroed stat is a valid out-parameter for fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor and out-pointer.
    let r = unsafe { libc::fstat(fd.as_raw_fd(), &mut st) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((path, st.st_nlink > 0))
}

/// Waits up to `timeout_ms` for `fd` to become readable.
pub fn poll_in(fd: BorrowedFd<'_>, timeout_ms: i32) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let r = unsafe { libc::poll(&mut p, 1, timeout_ms) };
    match r {
        r if r < 0 => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            }
        }
        0 => Ok(false),
        _ => Ok(true),
    }
}

/// `read(2)` into `buf`; `Ok(0)` when nothing is queued (non-blocking descriptor).
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for writes of its length.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(0),
            _ => Err(e),
        };
    }
    Ok(n as usize)
}
