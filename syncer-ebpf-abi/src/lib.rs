//! The binary interface between syncer's BPF program (`syncer-ebpf`) and its loader
//! (`syncer::source::ebpf`): the ring-buffer record layout, the configuration the loader writes
//! before attaching, and the per-syscall table that tells the tracepoint programs how to read
//! each system call's arguments. Both sides compile this one file, so they cannot disagree.
#![no_std]

/// Event bits. They equal the kernel's `FS_*` fsnotify bits (and so `FAN_*`), which lets the
/// loader treat records from the fsnotify hook and from syscall tracepoints alike.
pub const EV_MODIFY: u32 = 0x0000_0002;
pub const EV_ATTRIB: u32 = 0x0000_0004;
pub const EV_CLOSE_WRITE: u32 = 0x0000_0008;
pub const EV_MOVED_FROM: u32 = 0x0000_0040;
pub const EV_MOVED_TO: u32 = 0x0000_0080;
pub const EV_CREATE: u32 = 0x0000_0100;
pub const EV_DELETE: u32 = 0x0000_0200;
pub const EV_ISDIR: u32 = 0x4000_0000;

/// Record flags.
/// The object's type is not known (syscall tracepoints for rename, link, path attributes): the
/// loader looks at what the path holds now.
pub const F_TYPE_UNKNOWN: u16 = 1;
/// `name` is an absolute path as the process saw it, and the process's root is not on the
/// source filesystem; the loader maps it through its own view of the mounts.
pub const F_ABSOLUTE: u16 = 2;
/// The directory walk stopped before the filesystem root (too deep or too long): the loader
/// cannot place the record and rescans.
pub const F_TRUNCATED: u16 = 4;

/// Bytes before the variable part of a record.
pub const HEADER_LEN: usize = core::mem::size_of::<RecordHeader>();
/// Size of the per-CPU scratch buffer a record is assembled in.
pub const SCRATCH_LEN: usize = 16384;
/// Longest user path read (PATH_MAX).
pub const NAME_MAX_LEN: usize = 4096;
/// Mask that keeps every write offset inside the scratch buffer (with `NAME_MAX_LEN` to spare).
pub const OFF_MASK: usize = 0x1fff;
/// Deepest directory walk.
pub const MAX_DEPTH: u32 = 64;

// A record always fits: header + name + the walk inside the masked window, with a name
// component (at most 255 bytes) to spare at its end.
const _: () = assert!(OFF_MASK + 1 + NAME_MAX_LEN <= SCRATCH_LEN);
const _: () = assert!(HEADER_LEN + NAME_MAX_LEN + 256 < OFF_MASK);

/// One ring-buffer record: this header, then `name_len` bytes of name (a path relative to the
/// walked directory, or absolute with [`F_ABSOLUTE`]; may be empty), then `walk_len` bytes of
/// directory walk: the components from the walked directory up to the filesystem root, leaf
/// first, each as one length byte and that many bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RecordHeader {
    /// `EV_*` bits.
    pub mask: u32,
    /// `F_*` bits.
    pub flags: u16,
    pub name_len: u16,
    pub walk_len: u16,
    pub _pad: u16,
    /// Thread group of the process that made the change (0 for kernel threads via fsnotify).
    pub tgid: u32,
    /// Key in the coalescing map that the loader must delete before acting on the record
    /// (0: none).
    pub key: u64,
}

/// What a system call does to the tree; the tracepoint programs dispatch on it.
pub mod op {
    /// Not traced.
    pub const NONE: u8 = 0;
    /// Data written through `fd` (write family, fallocate, copy_file_range, sendfile, splice):
    /// success is a return value > 0 (== 0 for fallocate), coalesced per inode.
    pub const FD_WRITE: u8 = 1;
    /// Attributes or size changed through `fd` (ftruncate, fchmod, fchown, fsetxattr, ...):
    /// success is 0.
    pub const FD_ATTR: u8 = 2;
    /// close(): a file opened for writing is closed (covers writes through shared mappings).
    pub const CLOSE: u8 = 3;
    /// open/openat/creat: with O_CREAT or O_TRUNC, the returned fd names the file.
    pub const OPEN: u8 = 4;
    /// openat2: flags inside `struct open_how`.
    pub const OPENAT2: u8 = 5;
    /// A name created (mknod, symlink, link: `path`/`dfd` are the new name).
    pub const CREATE: u8 = 6;
    /// mkdir.
    pub const MKDIR: u8 = 7;
    /// unlink.
    pub const UNLINK: u8 = 8;
    /// rmdir.
    pub const RMDIR: u8 = 9;
    /// unlinkat: AT_REMOVEDIR in `flags`.
    pub const UNLINKAT: u8 = 10;
    /// Attributes or size changed by path (truncate, chmod, chown, utimes, setxattr, ...);
    /// an empty or NULL path with a dirfd means the dirfd itself (AT_EMPTY_PATH, utimensat).
    pub const PATH_ATTR: u8 = 11;
    /// rename family: `path`/`dfd` to `path2`/`dfd2`, RENAME_* in `flags`.
    pub const RENAME: u8 = 12;
}

/// No argument.
pub const NO_ARG: i8 = -1;

/// How to read one system call's arguments (indices into its six arguments, or [`NO_ARG`]).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SysDesc {
    pub op: u8,
    pub fd: i8,
    pub dfd: i8,
    pub path: i8,
    pub dfd2: i8,
    pub path2: i8,
    pub flags: i8,
    pub _pad: u8,
}

impl SysDesc {
    pub const NONE: SysDesc = SysDesc {
        op: op::NONE,
        fd: NO_ARG,
        dfd: NO_ARG,
        path: NO_ARG,
        dfd2: NO_ARG,
        path2: NO_ARG,
        flags: NO_ARG,
        _pad: 0,
    };
}

/// Entries in the syscall table (x86_64 and aarch64 syscall numbers are below this).
pub const SYSCALL_SLOTS: u32 = 512;

/// Kernel structure member offsets, read by the loader from the running kernel's BTF (the BPF
/// side is plain Rust without CO-RE relocations, so it is told where the fields are).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Offsets {
    pub task_fs: u32,
    pub task_files: u32,
    pub fs_root: u32,
    pub fs_pwd: u32,
    pub path_dentry: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    pub file_path: u32,
    pub file_inode: u32,
    pub file_mode: u32,
    pub dentry_parent: u32,
    pub dentry_name: u32,
    pub dentry_inode: u32,
    pub dentry_sb: u32,
    pub qstr_len: u32,
    pub qstr_name: u32,
    pub inode_sb: u32,
    pub inode_mode: u32,
    pub inode_dentry: u32,
    pub dentry_alias: u32,
    pub sb_dev: u32,
    /// `struct renamedata`: `old_dentry`, `new_dentry`, `flags` (the VFS hooks).
    pub rd_old_dentry: u32,
    pub rd_new_dentry: u32,
    pub rd_flags: u32,
    /// Offsets in `struct pt_regs` of the six system call arguments.
    pub regs_arg: [u32; 6],
    /// Offset of `child_pid` in the sched_process_fork tracepoint record.
    pub fork_child_pid: u32,
    pub _pad: u32,
}

/// Written by the loader into the one-entry `CONFIG` array before anything is attached.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Config {
    /// The source filesystem's device in the kernel's internal encoding (`major << 20 | minor`).
    pub dev: u32,
    /// 1 once the loader has filled this in; the programs do nothing before.
    pub ready: u32,
    pub off: Offsets,
}

/// Indices into the per-CPU `COUNTERS` array.
pub mod counter {
    /// Records written to the ring buffer.
    pub const EMITTED: u32 = 0;
    /// Records that could not be written (ring buffer full) or could not be read completely:
    /// each one means a rescan.
    pub const LOST: u32 = 1;
    /// Write events folded into a record already pending for the same inode.
    pub const COALESCED: u32 = 2;
    pub const SLOTS: u32 = 4;
}

/// Arguments of a system call saved at entry for its exit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Pending {
    pub nr: u32,
    pub _pad: u32,
    pub args: [u64; 6],
}

// SAFETY: plain `repr(C)` integers with explicit padding fields: every bit pattern is valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for Config {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for SysDesc {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        assert_eq!(HEADER_LEN, 24);
        assert_eq!(core::mem::size_of::<SysDesc>(), 8);
    }
}
