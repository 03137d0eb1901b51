//! syncer's BPF program: reports changes to one filesystem (the source's) through a ring buffer,
//! filtered and coalesced in the kernel. The loader (`syncer::source::ebpf`) attaches one of two
//! sets of programs:
//!
//! - **VFS level** (fentry on `fsnotify` and `__fsnotify_parent`): the same notifications that
//!   feed inotify and fanotify, after the operation succeeded, from every writer including
//!   in-kernel ones (nfsd, ksmbd). Preferred where the kernel allows fentry.
//! - **Syscall tracepoints** (the raw `sys_enter`/`sys_exit` tracepoints, dispatching on the
//!   `SYSCALLS` table of calls that change a tree): the fallback where fentry is refused. It sees
//!   only what processes do through system calls.
//!
//! Both filter to the source device, skip syncer's own processes (the `EXCLUDE` set, kept up to
//! date across fork/exit), report only successful operations and fold repeated writes to one
//! inode into one record until the loader has taken it (`DIRTY`). Paths are built by walking
//! dentries up to the filesystem root, so they are right whatever the writer's working
//! directory, directory fds or mount namespace. Anything that cannot be reported completely
//! counts as lost, and the loader rescans.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    cty::c_void,
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task, generated as gen},
    macros::{fentry, fexit, map, raw_tracepoint, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
    programs::{FEntryContext, FExitContext, RawTracePointContext, TracePointContext},
};
use syncer_ebpf_abi::*;

#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);
#[map]
static SYSCALLS: Array<SysDesc> = Array::with_max_entries(SYSCALL_SLOTS, 0);
#[map]
static PENDING: HashMap<u64, Pending> = HashMap::with_max_entries(16384, 0);
#[map]
static EXCLUDE: HashMap<u32, u8> = HashMap::with_max_entries(16384, 0);
#[map]
static DIRTY: LruHashMap<u64, u8> = LruHashMap::with_max_entries(65536, 0);
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::SLOTS, 0);
#[map]
static SCRATCH: PerCpuArray<[u8; SCRATCH_LEN]> = PerCpuArray::with_max_entries(1, 0);
/// The loader sets the size (`ring_buffer_bytes`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

const AT_FDCWD: i32 = -100;
const AT_REMOVEDIR: u64 = 0x200;
const AT_EMPTY_PATH: u64 = 0x1000;
const O_CREAT: u64 = 0o100;
const O_TRUNC: u64 = 0o1000;
const O_TMPFILE_BIT: u64 = 0o20000000;
const FMODE_WRITE: u32 = 0x2;
const FMODE_CREATED: u32 = 0x10_0000;
const RENAME_EXCHANGE: u64 = 2;
const S_IFMT: u16 = 0o170000;
const S_IFDIR: u16 = 0o040000;
const EEXIST: i32 = 17;

#[inline(always)]
fn config() -> Option<&'static Config> {
    let c = CONFIG.get(0)?;
    if c.ready == 0 {
        None
    } else {
        Some(c)
    }
}

#[inline(always)]
unsafe fn rd<T>(addr: u64) -> Option<T> {
    aya_ebpf::helpers::bpf_probe_read_kernel(addr as *const T).ok()
}

#[inline(always)]
fn count(i: u32) {
    if let Some(p) = COUNTERS.get_ptr_mut(i) {
        unsafe { *p += 1 }
    }
}

#[inline(always)]
fn tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

#[inline(always)]
fn excluded() -> bool {
    unsafe { EXCLUDE.get(tgid()).is_some() }
}

#[inline(always)]
unsafe fn fd_file(c: &Config, fd: u64) -> Option<u64> {
    let fd = fd as i32;
    if fd < 0 {
        return None;
    }
    let task = bpf_get_current_task();
    let files: u64 = rd(task + c.off.task_files as u64)?;
    let fdt: u64 = rd(files + c.off.files_fdt as u64)?;
    let max: u32 = rd(fdt + c.off.fdt_max_fds as u64)?;
    if fd as u32 >= max {
        return None;
    }
    let arr: u64 = rd(fdt + c.off.fdt_fd as u64)?;
    let f: u64 = rd(arr + fd as u64 * 8)?;
    (f != 0).then_some(f)
}

#[inline(always)]
unsafe fn file_dentry(c: &Config, f: u64) -> Option<u64> {
    rd(f + c.off.file_path as u64 + c.off.path_dentry as u64)
}

#[inline(always)]
unsafe fn inode_dev(c: &Config, inode: u64) -> Option<u32> {
    let sb: u64 = rd(inode + c.off.inode_sb as u64)?;
    rd(sb + c.off.sb_dev as u64)
}

#[inline(always)]
unsafe fn dentry_dev(c: &Config, d: u64) -> Option<u32> {
    let sb: u64 = rd(d + c.off.dentry_sb as u64)?;
    rd(sb + c.off.sb_dev as u64)
}

#[inline(always)]
unsafe fn inode_is_dir(c: &Config, inode: u64) -> bool {
    matches!(rd::<u16>(inode + c.off.inode_mode as u64), Some(m) if m & S_IFMT == S_IFDIR)
}

/// `v & mask`, with the mask kept in the program: LLVM drops a mask it can prove redundant
/// from earlier range checks, and older verifiers (Linux 6.1) cannot follow those checks
/// through the loop, so they would see an unbounded offset into the scratch buffer.
#[inline(always)]
fn masked(v: usize, mask: usize) -> usize {
    // SAFETY: reads a local variable.
    unsafe { core::ptr::read_volatile(&v) & mask }
}

#[inline(always)]
fn scratch() -> Option<*mut u8> {
    SCRATCH.get_ptr_mut(0).map(|p| p as *mut u8)
}

/// State of one directory walk, on the caller's stack, shared with [`walk_step`].
#[repr(C)]
struct Walk {
    off: u64,
    dentry: u64,
    whole: u64,
}

/// One level of [`walk`]: appends the name of `w.dentry` and moves to its parent. Returns 1 to
/// stop (root reached, buffer full or a read failed), 0 to go on.
unsafe extern "C" fn walk_step(_index: u64, ctx: *mut c_void) -> i64 {
    let w = &mut *(ctx as *mut Walk);
    let (Some(c), Some(buf)) = (config(), scratch()) else {
        return 1;
    };
    let d = w.dentry;
    let Some(parent) = rd::<u64>(d + c.off.dentry_parent as u64) else {
        return 1;
    };
    if parent == d || parent == 0 {
        w.whole = 1;
        return 1;
    }
    let off = w.off as usize;
    if off > OFF_MASK - 256 {
        return 1;
    }
    let qs = d + c.off.dentry_name as u64;
    let (len, name) = match (
        rd::<u32>(qs + c.off.qstr_len as u64),
        rd::<u64>(qs + c.off.qstr_name as u64),
    ) {
        (Some(l), Some(n)) => ((l & 0xff) as usize, n),
        _ => return 1,
    };
    let p = buf.add(masked(off, OFF_MASK));
    *p = len as u8;
    if gen::bpf_probe_read_kernel(p.add(1) as *mut c_void, len as u32, name as *const c_void) != 0 {
        return 1;
    }
    w.off = (off + 1 + len) as u64;
    w.dentry = parent;
    0
}

/// Appends the components from dentry `d` up to the filesystem root at `off` of the scratch
/// buffer, leaf first. Returns the end offset and whether the root was reached.
///
/// The loop is `bpf_loop` (Linux 5.17+) so that the verifier checks its body once: inlined as
/// a bounded loop at every call site, the programs exceeded the 1M-instruction verification
/// budget of Linux 6.1.
#[inline(always)]
unsafe fn walk(off: usize, d: u64) -> (usize, bool) {
    let mut w = Walk {
        off: off as u64,
        dentry: d,
        whole: 0,
    };
    gen::bpf_loop(
        MAX_DEPTH,
        walk_step as *mut c_void,
        &mut w as *mut Walk as *mut c_void,
        0,
    );
    (w.off as usize, w.whole != 0)
}

/// Writes the header and sends `off` bytes of the scratch buffer.
#[inline(always)]
unsafe fn submit(
    buf: *mut u8,
    mask: u32,
    flags: u16,
    name_len: usize,
    off: usize,
    key: u64,
) -> bool {
    let h = buf as *mut RecordHeader;
    (*h).mask = mask;
    (*h).flags = flags;
    (*h).name_len = name_len as u16;
    (*h).walk_len = (off - HEADER_LEN - name_len) as u16;
    (*h)._pad = 0;
    (*h).tgid = tgid();
    (*h).key = key;
    let len = masked(off, SCRATCH_LEN - 1);
    let data = core::slice::from_raw_parts(buf as *const u8, len);
    if EVENTS.output::<[u8]>(data, 0).is_ok() {
        count(counter::EMITTED);
        true
    } else {
        count(counter::LOST);
        false
    }
}

/// A change to the inode behind `dentry`, folded into any record for it still pending.
#[inline(always)]
unsafe fn emit_inode(c: &Config, mask: u32, dentry: u64, inode: u64) {
    let Some(buf) = scratch() else { return };
    let mut key = inode;
    match DIRTY.insert(key, 1u8, BPF_NOEXIST as u64) {
        Ok(()) => {}
        Err(e) if e == -EEXIST => {
            count(counter::COALESCED);
            return;
        }
        Err(_) => key = 0,
    }
    let mask = if inode_is_dir(c, inode) {
        mask | EV_ISDIR
    } else {
        mask
    };
    let (off, whole) = walk(HEADER_LEN, dentry);
    let flags = if whole { 0 } else { F_TRUNCATED };
    if !submit(buf, mask, flags, 0, off, key) && key != 0 {
        let _ = DIRTY.remove(key);
    }
}

/// A change to the name `uptr` (a user-space string) relative to directory fd `dfd`.
#[inline(always)]
unsafe fn emit_path(c: &Config, mask: u32, flags: u16, dfd: u64, uptr: u64) {
    let Some(buf) = scratch() else { return };
    let name = buf.add(HEADER_LEN);
    let r = gen::bpf_probe_read_user_str(
        name as *mut c_void,
        NAME_MAX_LEN as u32,
        uptr as *const c_void,
    );
    if r <= 0 {
        // Unreadable name: the change cannot be placed.
        count(counter::LOST);
        return;
    }
    let n = ((r - 1) as usize) & (NAME_MAX_LEN - 1);
    let absolute = n > 0 && *name == b'/';
    let task = bpf_get_current_task();
    let base = if absolute || dfd as i32 == AT_FDCWD {
        let fs: u64 = match rd(task + c.off.task_fs as u64) {
            Some(fs) => fs,
            None => return count(counter::LOST),
        };
        let which = if absolute {
            c.off.fs_root
        } else {
            c.off.fs_pwd
        };
        rd::<u64>(fs + which as u64 + c.off.path_dentry as u64)
    } else {
        fd_file(c, dfd).and_then(|f| file_dentry(c, f))
    };
    let Some(base) = base else {
        return count(counter::LOST);
    };
    let Some(dev) = dentry_dev(c, base) else {
        return count(counter::LOST);
    };
    if dev != c.dev {
        if absolute {
            // The process's root is elsewhere: the loader maps the absolute name itself.
            submit(buf, mask, flags | F_ABSOLUTE, n, HEADER_LEN + n, 0);
        }
        return;
    }
    let (off, whole) = walk(HEADER_LEN + n, base);
    submit(
        buf,
        mask,
        flags | if whole { 0 } else { F_TRUNCATED },
        n,
        off,
        0,
    );
}

// ---------------------------------------------------------------------------------------------
// VFS level: fsnotify.

/// File events (modify, attributes, close after writing): `__fsnotify_parent(dentry, mask, ..)`.
#[fentry(function = "__fsnotify_parent")]
pub fn fsnotify_parent(ctx: FEntryContext) -> u32 {
    unsafe { on_fsnotify_parent(&ctx) };
    0
}

unsafe fn on_fsnotify_parent(ctx: &FEntryContext) {
    let Some(c) = config() else { return };
    let dentry: u64 = ctx.arg(0);
    let mask: u32 = ctx.arg(1);
    let ev = mask & (EV_MODIFY | EV_ATTRIB | EV_CLOSE_WRITE);
    if ev == 0 || dentry == 0 {
        return;
    }
    let Some(inode) = rd::<u64>(dentry + c.off.dentry_inode as u64) else {
        return;
    };
    if inode == 0 || inode_dev(c, inode) != Some(c.dev) || excluded() {
        return;
    }
    emit_inode(c, ev, dentry, inode);
}

/// Directory-entry events (create, delete, moves) carry the directory and the name:
/// `fsnotify(mask, data, data_type, dir, name, inode, cookie)`. A directory's own attribute
/// changes come here too, without a name.
#[fentry(function = "fsnotify")]
pub fn fsnotify(ctx: FEntryContext) -> u32 {
    unsafe { on_fsnotify(&ctx) };
    0
}

unsafe fn on_fsnotify(ctx: &FEntryContext) {
    let Some(c) = config() else { return };
    let mask: u32 = ctx.arg(0);
    let dir: u64 = ctx.arg(3);
    let qname: u64 = ctx.arg(4);
    let inode: u64 = ctx.arg(5);
    let entry = mask & (EV_CREATE | EV_DELETE | EV_MOVED_FROM | EV_MOVED_TO);
    if dir != 0 && qname != 0 && entry != 0 {
        if inode_dev(c, dir) != Some(c.dev) || excluded() {
            return;
        }
        let Some(buf) = scratch() else { return };
        // A directory has one dentry: the first (only) alias of its inode.
        let dentry = match rd::<u64>(dir + c.off.inode_dentry as u64) {
            Some(first) if first != 0 => first - c.off.dentry_alias as u64,
            _ => return count(counter::LOST),
        };
        let (len, name) = match (
            rd::<u32>(qname + c.off.qstr_len as u64),
            rd::<u64>(qname + c.off.qstr_name as u64),
        ) {
            (Some(l), Some(n)) => ((l & 0xff) as usize, n),
            _ => return count(counter::LOST),
        };
        if gen::bpf_probe_read_kernel(
            buf.add(HEADER_LEN) as *mut c_void,
            len as u32,
            name as *const c_void,
        ) != 0
        {
            return count(counter::LOST);
        }
        let (off, whole) = walk(HEADER_LEN + len, dentry);
        let flags = if whole { 0 } else { F_TRUNCATED };
        submit(buf, entry | (mask & EV_ISDIR), flags, len, off, 0);
    } else if dir == 0 && inode != 0 && mask & EV_ISDIR != 0 && mask & (EV_MODIFY | EV_ATTRIB) != 0
    {
        if inode_dev(c, inode) != Some(c.dev) || excluded() {
            return;
        }
        let dentry = match rd::<u64>(inode + c.off.inode_dentry as u64) {
            Some(first) if first != 0 => first - c.off.dentry_alias as u64,
            _ => return count(counter::LOST),
        };
        emit_inode(c, mask & (EV_MODIFY | EV_ATTRIB), dentry, inode);
    }
}

// ---------------------------------------------------------------------------------------------
// VFS level, for kernels where fentry cannot attach to fsnotify() (seven arguments: x86_64
// trampolines take more than six only since Linux 6.5): fexit on the vfs_* entry points that
// every writer, nfsd included, goes through, with `__fsnotify_parent` above for data and
// attribute changes of files.

/// A change to the entry `dentry` itself (its name under its parent), when `ret` is success.
#[inline(always)]
unsafe fn on_vfs(mask: u32, dentry: u64, ret: i64) {
    let Some(c) = config() else { return };
    if ret != 0 || dentry == 0 || dentry_dev(c, dentry) != Some(c.dev) || excluded() {
        return;
    }
    let Some(buf) = scratch() else { return };
    let mask = match rd::<u64>(dentry + c.off.dentry_inode as u64) {
        Some(inode) if inode != 0 && inode_is_dir(c, inode) => mask | EV_ISDIR,
        _ => mask,
    };
    let (off, whole) = walk(HEADER_LEN, dentry);
    submit(buf, mask, if whole { 0 } else { F_TRUNCATED }, 0, off, 0);
}

/// `vfs_open(path, file)`: a file that this open created (`FMODE_CREATED`).
#[fexit(function = "vfs_open")]
pub fn vfs_open_exit(ctx: FExitContext) -> i32 {
    let (path, file, ret): (u64, u64, i64) = (ctx.arg(0), ctx.arg(1), ctx.arg(2));
    if let Some(c) = config() {
        unsafe {
            if matches!(rd::<u32>(file + c.off.file_mode as u64), Some(m) if m & FMODE_CREATED != 0)
            {
                if let Some(d) = rd::<u64>(path + c.off.path_dentry as u64) {
                    on_vfs(EV_CREATE, d, ret);
                }
            }
        }
    }
    0
}

/// `vfs_create(idmap, dir, dentry, mode, excl)` (nfsd; open(2) creates through `vfs_open`).
#[fexit(function = "vfs_create")]
pub fn vfs_create_exit(ctx: FExitContext) -> i32 {
    unsafe { on_vfs(EV_CREATE, ctx.arg(2), ctx.arg(5)) };
    0
}

/// `vfs_mknod(idmap, dir, dentry, mode, dev)`.
#[fexit(function = "vfs_mknod")]
pub fn vfs_mknod_exit(ctx: FExitContext) -> i32 {
    unsafe { on_vfs(EV_CREATE, ctx.arg(2), ctx.arg(5)) };
    0
}

/// `vfs_mkdir(idmap, dir, dentry, mode)`.
#[fexit(function = "vfs_mkdir")]
pub fn vfs_mkdir_exit(ctx: FExitContext) -> i32 {
    unsafe { on_vfs(EV_CREATE | EV_ISDIR, ctx.arg(2), ctx.arg(4)) };
    0
}

/// `vfs_symlink(idmap, dir, dentry, oldname)`.
#[fexit(function = "vfs_symlink")]
pub fn vfs_symlink_exit(ctx: FExitContext) -> i32 {
    unsafe { on_vfs(EV_CREATE, ctx.arg(2), ctx.arg(4)) };
    0
}

/// `vfs_link(old_dentry, idmap, dir, new_dentry, delegated)`.
#[fexit(function = "vfs_link")]
pub fn vfs_link_exit(ctx: FExitContext) -> i32 {
    unsafe { on_vfs(EV_CREATE, ctx.arg(3), ctx.arg(5)) };
    0
}

/// `vfs_unlink(idmap, dir, dentry, delegated)`: the dentry keeps its name and parent.
#[fexit(function = "vfs_unlink")]
pub fn vfs_unlink_exit(ctx: FExitContext) -> i32 {
    unsafe { on_vfs(EV_DELETE, ctx.arg(2), ctx.arg(4)) };
    0
}

/// `vfs_rmdir(idmap, dir, dentry)`.
#[fexit(function = "vfs_rmdir")]
pub fn vfs_rmdir_exit(ctx: FExitContext) -> i32 {
    unsafe { on_vfs(EV_DELETE | EV_ISDIR, ctx.arg(2), ctx.arg(3)) };
    0
}

/// `vfs_rename(rd)` before the move: the old name, while `old_dentry` still has it. Reported
/// even if the rename then fails, which only costs a transfer of a path that did not change.
#[fentry(function = "vfs_rename")]
pub fn vfs_rename_entry(ctx: FEntryContext) -> i32 {
    let rd_: u64 = ctx.arg(0);
    if let Some(c) = config() {
        unsafe {
            if let Some(old) = rd::<u64>(rd_ + c.off.rd_old_dentry as u64) {
                on_vfs(EV_MOVED_FROM, old, 0);
            }
        }
    }
    0
}

/// `vfs_rename(rd)` after success: `old_dentry` now has the new name; with RENAME_EXCHANGE,
/// `new_dentry` has the old one and both names got a new object.
#[fexit(function = "vfs_rename")]
pub fn vfs_rename_exit(ctx: FExitContext) -> i32 {
    let (rd_, ret): (u64, i64) = (ctx.arg(0), ctx.arg(1));
    if let Some(c) = config() {
        unsafe {
            let flags = rd::<u32>(rd_ + c.off.rd_flags as u64).unwrap_or(0) as u64;
            if let Some(old) = rd::<u64>(rd_ + c.off.rd_old_dentry as u64) {
                on_vfs(EV_MOVED_TO, old, ret);
            }
            if flags & RENAME_EXCHANGE != 0 {
                if let Some(new) = rd::<u64>(rd_ + c.off.rd_new_dentry as u64) {
                    on_vfs(EV_MOVED_FROM | EV_MOVED_TO, new, ret);
                }
            }
        }
    }
    0
}

/// `notify_change(idmap, dentry, attr, delegated)`: attributes and size, directories included
/// (`__fsnotify_parent` covers files only).
#[fexit(function = "notify_change")]
pub fn notify_change_exit(ctx: FExitContext) -> i32 {
    let (dentry, ret): (u64, i64) = (ctx.arg(1), ctx.arg(4));
    if ret != 0 || dentry == 0 {
        return 0;
    }
    if let Some(c) = config() {
        unsafe {
            let Some(inode) = rd::<u64>(dentry + c.off.dentry_inode as u64) else {
                return 0;
            };
            if inode == 0 || inode_dev(c, inode) != Some(c.dev) || excluded() {
                return 0;
            }
            emit_inode(c, EV_ATTRIB, dentry, inode);
        }
    }
    0
}

// ---------------------------------------------------------------------------------------------
// Syscall tracepoints.

#[inline(always)]
fn arg(p: &Pending, i: i8) -> u64 {
    if (0..6).contains(&i) {
        p.args[i as usize]
    } else {
        0
    }
}

/// A directory-fd argument; calls without one (mkdir, rename, ...) work from the cwd.
#[inline(always)]
fn dfd(p: &Pending, i: i8) -> u64 {
    if (0..6).contains(&i) {
        p.args[i as usize]
    } else {
        AT_FDCWD as u64
    }
}

/// The raw `sys_enter` tracepoint (every system call; those not in `SYSCALLS` return at once):
/// `(struct pt_regs *regs, long id)`.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter(ctx: RawTracePointContext) -> i32 {
    unsafe { on_enter(&ctx) };
    0
}

unsafe fn on_enter(ctx: &RawTracePointContext) {
    let nr: u64 = ctx.arg(1);
    if nr >= SYSCALL_SLOTS as u64 {
        return;
    }
    let Some(d) = SYSCALLS.get(nr as u32) else {
        return;
    };
    if d.op == op::NONE {
        return;
    }
    let Some(c) = config() else { return };
    let regs: u64 = ctx.arg(0);
    if excluded() {
        return;
    }
    let mut p = Pending {
        nr: nr as u32,
        _pad: 0,
        args: [0; 6],
    };
    let mut i = 0;
    while i < 6 {
        p.args[i] = rd::<u64>(regs + c.off.regs_arg[i] as u64).unwrap_or(0);
        i += 1;
    }
    if matches!(d.op, op::FD_WRITE | op::FD_ATTR | op::CLOSE) {
        // Most writes in a system go to pipes, sockets and other filesystems: drop them here,
        // and writes to an inode whose record the loader has not taken yet.
        let Some(f) = fd_file(c, arg(&p, d.fd)) else {
            return;
        };
        let Some(inode) = rd::<u64>(f + c.off.file_inode as u64) else {
            return;
        };
        if inode_dev(c, inode) != Some(c.dev) {
            return;
        }
        if d.op == op::CLOSE {
            // close() always releases the fd: report at entry, while the fd still names the file.
            match rd::<u32>(f + c.off.file_mode as u64) {
                Some(m) if m & FMODE_WRITE != 0 => {}
                _ => return,
            }
            if let Some(dentry) = file_dentry(c, f) {
                emit_inode(c, EV_CLOSE_WRITE, dentry, inode);
            }
            return;
        }
        if DIRTY.get(inode).is_some() {
            count(counter::COALESCED);
            return;
        }
    }
    if PENDING.insert(bpf_get_current_pid_tgid(), p, 0).is_err() {
        count(counter::LOST);
    }
}

/// The raw `sys_exit` tracepoint: `(struct pt_regs *regs, long ret)`; acts on calls whose
/// entry saved their arguments.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit(ctx: RawTracePointContext) -> i32 {
    unsafe { on_exit(&ctx) };
    0
}

unsafe fn on_exit(ctx: &RawTracePointContext) {
    let id = bpf_get_current_pid_tgid();
    let Some(p) = PENDING.get(id).copied() else {
        return;
    };
    let _ = PENDING.remove(id);
    let ret: i64 = ctx.arg(1);
    if ret < 0 {
        return;
    }
    let Some(d) = SYSCALLS.get(p.nr) else { return };
    let stage = match d.op {
        op::FD_WRITE | op::FD_ATTR => EXIT_FD,
        op::OPEN | op::OPENAT2 => EXIT_OPEN,
        op::CREATE | op::MKDIR | op::UNLINK | op::RMDIR | op::UNLINKAT | op::PATH_ATTR => EXIT_PATH,
        op::RENAME => EXIT_RENAME,
        _ => return,
    };
    let Some(cur) = CURRENT.get_ptr_mut(0) else {
        return;
    };
    (*cur).p = p;
    (*cur).ret = ret;
    (*cur).desc = *d;
    EXIT_STAGES.tail_call(ctx, stage);
    // Only reached if the stage is missing: the loader fills every slot before attaching.
    count(counter::LOST);
}

/// The exit stages, one program each (tail calls from `sys_exit`): one program with all of them
/// inlined exceeded what the verifier of Linux 6.1 explores.
const EXIT_FD: u32 = 0;
const EXIT_OPEN: u32 = 1;
const EXIT_PATH: u32 = 2;
const EXIT_RENAME: u32 = 3;

/// A finished system call handed to its exit stage.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Current {
    p: Pending,
    ret: i64,
    desc: SysDesc,
}

#[map]
static CURRENT: PerCpuArray<Current> = PerCpuArray::with_max_entries(1, 0);
#[map]
static EXIT_STAGES: ProgramArray = ProgramArray::with_max_entries(4, 0);

#[inline(always)]
fn current() -> Option<(&'static Config, Current)> {
    let c = config()?;
    let cur = unsafe { *CURRENT.get_ptr(0)? };
    Some((c, cur))
}

/// write family, ftruncate, fallocate, fchmod, ...
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn exit_fd(_ctx: RawTracePointContext) -> i32 {
    if let Some((c, cur)) = current() {
        let ev = if cur.desc.op == op::FD_WRITE {
            EV_MODIFY
        } else {
            EV_ATTRIB
        };
        unsafe { on_fd(c, ev, arg(&cur.p, cur.desc.fd)) };
    }
    0
}

/// open, openat, openat2, creat with O_CREAT or O_TRUNC: the returned fd names the file.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn exit_open(_ctx: RawTracePointContext) -> i32 {
    if let Some((c, cur)) = current() {
        unsafe { on_open(c, &cur) };
    }
    0
}

unsafe fn on_open(c: &Config, cur: &Current) {
    let (p, d) = (&cur.p, &cur.desc);
    let flags = if d.flags < 0 {
        // creat()
        O_CREAT | O_TRUNC
    } else if d.op == op::OPENAT2 {
        aya_ebpf::helpers::bpf_probe_read_user(arg(p, d.flags) as *const u64).unwrap_or(O_CREAT)
    } else {
        arg(p, d.flags)
    };
    if flags & (O_CREAT | O_TRUNC) == 0 || flags & O_TMPFILE_BIT != 0 {
        return;
    }
    let fd = cur.ret as u64;
    let Some(f) = fd_file(c, fd) else {
        return;
    };
    let created =
        matches!(rd::<u32>(f + c.off.file_mode as u64), Some(m) if m & FMODE_CREATED != 0);
    if !created {
        return on_fd(c, EV_MODIFY, fd);
    }
    let Some(buf) = scratch() else { return };
    let Some(dentry) = file_dentry(c, f) else {
        return;
    };
    if dentry_dev(c, dentry) != Some(c.dev) {
        return;
    }
    let (off, whole) = walk(HEADER_LEN, dentry);
    submit(
        buf,
        EV_CREATE,
        if whole { 0 } else { F_TRUNCATED },
        0,
        off,
        0,
    );
}

/// One name created, removed or changed: mknod, symlink, link, mkdir, unlink, rmdir, unlinkat,
/// truncate, chmod, chown, utimes, xattrs.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn exit_path(_ctx: RawTracePointContext) -> i32 {
    if let Some((c, cur)) = current() {
        unsafe { on_path(c, &cur) };
    }
    0
}

unsafe fn on_path(c: &Config, cur: &Current) {
    let (p, d) = (&cur.p, &cur.desc);
    let path = arg(p, d.path);
    let (mask, flags) = match d.op {
        op::CREATE => (EV_CREATE, 0),
        op::MKDIR => (EV_CREATE | EV_ISDIR, 0),
        op::UNLINK => (EV_DELETE, 0),
        op::RMDIR => (EV_DELETE | EV_ISDIR, 0),
        op::UNLINKAT if arg(p, d.flags) & AT_REMOVEDIR != 0 => (EV_DELETE | EV_ISDIR, 0),
        op::UNLINKAT => (EV_DELETE, 0),
        _ => {
            let empty = path == 0
                || (arg(p, d.flags) & AT_EMPTY_PATH != 0
                    && matches!(
                        aya_ebpf::helpers::bpf_probe_read_user(path as *const u8),
                        Ok(0)
                    ));
            if empty {
                // The directory fd itself (AT_EMPTY_PATH, utimensat with a NULL name).
                return on_fd(c, EV_ATTRIB, dfd(p, d.dfd));
            }
            (EV_ATTRIB, F_TYPE_UNKNOWN)
        }
    };
    emit_path(c, mask, flags, dfd(p, d.dfd), path);
}

/// rename, renameat, renameat2 (RENAME_EXCHANGE: both names got a new object).
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn exit_rename(_ctx: RawTracePointContext) -> i32 {
    if let Some((c, cur)) = current() {
        let (p, d) = (&cur.p, &cur.desc);
        let exchange = d.flags >= 0 && arg(p, d.flags) & RENAME_EXCHANGE != 0;
        let (from, to) = if exchange {
            (EV_MOVED_FROM | EV_MOVED_TO, EV_MOVED_FROM | EV_MOVED_TO)
        } else {
            (EV_MOVED_FROM, EV_MOVED_TO)
        };
        unsafe {
            emit_path(c, from, F_TYPE_UNKNOWN, dfd(p, d.dfd), arg(p, d.path));
            emit_path(c, to, F_TYPE_UNKNOWN, dfd(p, d.dfd2), arg(p, d.path2));
        }
    }
    0
}

#[inline(always)]
unsafe fn on_fd(c: &Config, ev: u32, fd: u64) {
    let Some(f) = fd_file(c, fd) else { return };
    let Some(inode) = rd::<u64>(f + c.off.file_inode as u64) else {
        return;
    };
    if inode_dev(c, inode) != Some(c.dev) {
        return;
    }
    if let Some(dentry) = file_dentry(c, f) {
        emit_inode(c, ev, dentry, inode);
    }
}

// ---------------------------------------------------------------------------------------------
// Process tracking: syncer's descendants (its rsync children) are excluded like syncer itself.

#[tracepoint]
pub fn sched_fork(ctx: TracePointContext) -> u32 {
    if let Some(c) = config() {
        if excluded() {
            if let Ok(child) = unsafe { ctx.read_at::<u32>(c.off.fork_child_pid as usize) } {
                let _ = EXCLUDE.insert(child, 1u8, 0);
            }
        }
    }
    0
}

#[tracepoint]
pub fn sched_exit(_ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    // A thread's id or, for the main thread, the process's: whichever was added at fork.
    let _ = EXCLUDE.remove(id as u32);
    let _ = PENDING.remove(id);
    0
}

/// The license the kernel reads from the object's `license` section. The programs call
/// helpers the kernel reserves for GPL-compatible code (`bpf_probe_read_kernel`, the ring
/// buffer), so the object says so instead of relying on the loader's default.
#[no_mangle]
#[link_section = "license"]
pub static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
