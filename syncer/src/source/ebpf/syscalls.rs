//! The system calls the tracepoint programs follow, and how to read each one's arguments.
//! The loader writes this table into the BPF `SYSCALLS` map (indexed by syscall number), which
//! the two raw tracepoints `sys_enter`/`sys_exit` look each call up in.
//!
//! Not followed (documented in ARCHITECTURE.md): io_uring operations, writes through shared
//! mappings of files that stay open, and the *xattrat calls of Linux 6.13+.

use syncer_ebpf_abi::{op, SysDesc, NO_ARG};

/// One followed system call: its tracepoint name (`sys_enter_<name>`), number and arguments.
pub struct Syscall {
    pub name: &'static str,
    pub nr: i64,
    pub desc: SysDesc,
}

const fn d(op: u8, fd: i8, dfd: i8, path: i8, dfd2: i8, path2: i8, flags: i8) -> SysDesc {
    SysDesc {
        op,
        fd,
        dfd,
        path,
        dfd2,
        path2,
        flags,
        _pad: 0,
    }
}

const N: i8 = NO_ARG;

macro_rules! table {
    ($($name:literal $nr:ident = $desc:expr;)*) => {
        /// Every followed system call of this architecture.
        pub fn table() -> Vec<Syscall> {
            vec![$(Syscall { name: $name, nr: libc::$nr, desc: $desc }),*]
        }
    };
}

#[cfg(target_arch = "x86_64")]
table! {
    "write" SYS_write = d(op::FD_WRITE, 0, N, N, N, N, N);
    "pwrite64" SYS_pwrite64 = d(op::FD_WRITE, 0, N, N, N, N, N);
    "writev" SYS_writev = d(op::FD_WRITE, 0, N, N, N, N, N);
    "pwritev" SYS_pwritev = d(op::FD_WRITE, 0, N, N, N, N, N);
    "pwritev2" SYS_pwritev2 = d(op::FD_WRITE, 0, N, N, N, N, N);
    "ftruncate" SYS_ftruncate = d(op::FD_WRITE, 0, N, N, N, N, N);
    "fallocate" SYS_fallocate = d(op::FD_WRITE, 0, N, N, N, N, N);
    "copy_file_range" SYS_copy_file_range = d(op::FD_WRITE, 2, N, N, N, N, N);
    "sendfile64" SYS_sendfile = d(op::FD_WRITE, 0, N, N, N, N, N);
    "splice" SYS_splice = d(op::FD_WRITE, 2, N, N, N, N, N);
    "fchmod" SYS_fchmod = d(op::FD_ATTR, 0, N, N, N, N, N);
    "fchown" SYS_fchown = d(op::FD_ATTR, 0, N, N, N, N, N);
    "fsetxattr" SYS_fsetxattr = d(op::FD_ATTR, 0, N, N, N, N, N);
    "fremovexattr" SYS_fremovexattr = d(op::FD_ATTR, 0, N, N, N, N, N);
    "close" SYS_close = d(op::CLOSE, 0, N, N, N, N, N);
    "open" SYS_open = d(op::OPEN, N, N, N, N, N, 1);
    "openat" SYS_openat = d(op::OPEN, N, N, N, N, N, 2);
    "creat" SYS_creat = d(op::OPEN, N, N, N, N, N, N);
    "openat2" SYS_openat2 = d(op::OPENAT2, N, N, N, N, N, 2);
    "mknod" SYS_mknod = d(op::CREATE, N, N, 0, N, N, N);
    "mknodat" SYS_mknodat = d(op::CREATE, N, 0, 1, N, N, N);
    "symlink" SYS_symlink = d(op::CREATE, N, N, 1, N, N, N);
    "symlinkat" SYS_symlinkat = d(op::CREATE, N, 1, 2, N, N, N);
    "link" SYS_link = d(op::CREATE, N, N, 1, N, N, N);
    "linkat" SYS_linkat = d(op::CREATE, N, 2, 3, N, N, N);
    "mkdir" SYS_mkdir = d(op::MKDIR, N, N, 0, N, N, N);
    "mkdirat" SYS_mkdirat = d(op::MKDIR, N, 0, 1, N, N, N);
    "unlink" SYS_unlink = d(op::UNLINK, N, N, 0, N, N, N);
    "rmdir" SYS_rmdir = d(op::RMDIR, N, N, 0, N, N, N);
    "unlinkat" SYS_unlinkat = d(op::UNLINKAT, N, 0, 1, N, N, 2);
    "truncate" SYS_truncate = d(op::PATH_ATTR, N, N, 0, N, N, N);
    "chmod" SYS_chmod = d(op::PATH_ATTR, N, N, 0, N, N, N);
    "fchmodat" SYS_fchmodat = d(op::PATH_ATTR, N, 0, 1, N, N, N);
    "fchmodat2" SYS_fchmodat2 = d(op::PATH_ATTR, N, 0, 1, N, N, 3);
    "chown" SYS_chown = d(op::PATH_ATTR, N, N, 0, N, N, N);
    "lchown" SYS_lchown = d(op::PATH_ATTR, N, N, 0, N, N, N);
    "fchownat" SYS_fchownat = d(op::PATH_ATTR, N, 0, 1, N, N, 4);
    "utime" SYS_utime = d(op::PATH_ATTR, N, N, 0, N, N, N);
    "utimes" SYS_utimes = d(op::PATH_ATTR, N, N, 0, N, N, N);
    "futimesat" SYS_futimesat = d(op::PATH_ATTR, N, 0, 1, N, N, N);
    "utimensat" SYS_utimensat = d(op::PATH_ATTR, N, 0, 1, N, N, 3);
    "setxattr" SYS_setxattr = d(op::PATH_ATTR, N, N, 0, N, N, N);
    "lsetxattr" SYS_lsetxattr = d(op::PATH_ATTR, N, N, 0, N, N, N);
    "removexattr" SYS_removexattr = d(op::PATH_ATTR, N, N, 0, N, N, N);
    "lremovexattr" SYS_lremovexattr = d(op::PATH_ATTR, N, N, 0, N, N, N);
    "rename" SYS_rename = d(op::RENAME, N, N, 0, N, 1, N);
    "renameat" SYS_renameat = d(op::RENAME, N, 0, 1, 2, 3, N);
    "renameat2" SYS_renameat2 = d(op::RENAME, N, 0, 1, 2, 3, 4);
}

#[cfg(not(target_arch = "x86_64"))]
table! {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every entry's argument indices agree with the kernel's tracepoint format, where tracefs
    /// is mounted: the path argument is a `const char *` and fds/dirfds are ints.
    #[test]
    fn argument_indices_match_tracepoint_formats() {
        let base = std::path::Path::new("/sys/kernel/tracing/events/syscalls");
        if !base.exists() {
            // The loader mounts tracefs itself where it can; so does the test.
            let _ = nix::mount::mount(
                Some("nodev"),
                "/sys/kernel/tracing",
                Some("tracefs"),
                nix::mount::MsFlags::empty(),
                None::<&str>,
            );
        }
        if !base.exists() {
            crate::skip_or_fail("tracefs is not mounted at /sys/kernel/tracing (needs root)");
            return;
        }
        let mut checked = 0;
        for sc in table() {
            let Ok(fmt) =
                std::fs::read_to_string(base.join(format!("sys_enter_{}/format", sc.name)))
            else {
                continue; // not on this kernel
            };
            // The syscall's own fields, in order, after the common ones.
            let fields: Vec<&str> = fmt
                .lines()
                .filter(|l| {
                    l.contains("field:") && !l.contains("common_") && !l.contains("__syscall_nr")
                })
                .collect();
            let is =
                |i: i8, pat: &[&str]| i < 0 || pat.iter().any(|p| fields[i as usize].contains(p));
            let d = sc.desc;
            assert!(is(d.path, &["char *"]), "{}: path", sc.name);
            assert!(is(d.path2, &["char *"]), "{}: path2", sc.name);
            assert!(is(d.dfd, &["dfd", "fd"]), "{}: dfd", sc.name);
            assert!(is(d.dfd2, &["dfd", "fd"]), "{}: dfd2", sc.name);
            assert!(is(d.fd, &["fd"]), "{}: fd", sc.name);
            assert!(is(d.flags, &["flag", "how"]), "{}: flags", sc.name);
            checked += 1;
        }
        // Most of the table exists on any kernel syncer runs on: a format directory that holds
        // none of them means the check read nothing.
        assert!(
            checked * 2 > table().len(),
            "only {checked} of {} calls have a tracepoint format",
            table().len()
        );
    }
}
