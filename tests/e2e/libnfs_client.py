#!/usr/bin/env python3
"""An NFS client for the nfs-ganesha scenarios of tests/e2e/nfs.rs: libnfs (libnfs.so.13,
Debian's libnfs13) driven through ctypes, so the calls travel as NFS RPCs to the server and no
kernel NFS client is needed.

    libnfs_client.py SERVER EXPORT VERSION      (VERSION: 3 or 4)

It mounts EXPORT and then reads one request per line on stdin, words separated by spaces,
every path and every datum in hex (names may hold any byte but '/' and NUL); it answers each
with "ok" (or "ok VALUE") or "err MESSAGE" on stdout. Paths are relative to the export.

    mkdirs P             mkdir -p (numbers are decimal, modes octal)
    write P MODE DATA    truncate, or create with MODE; write; close
    append P DATA        open, write at the end, close
    truncate P LEN
    chmod P MODE         MODE in octal
    mtime P SECS USECS   atime and mtime
    rename FROM TO
    unlink P
    rmdir P
    symlink TARGET P
    link FROM TO
    open P MODE          the same, keeping P open (one file at a time)
    piece DATA           write to the open file and commit it (fsync)
    close                close it

Writes go in pieces of at most 3 KiB: Debian's libnfs 4.0 cannot encode a larger NFSv4
WRITE. Creation ignores the mode asked for, so the mode is set on the open file (fchmod).
With LIBNFS_CLIENT_TRACE=1 in the environment, each request is echoed to stderr.
"""

import ctypes
import os
import sys

PIECE = 3 * 1024

lib = ctypes.CDLL("libnfs.so.13", use_errno=True)
vp = ctypes.c_void_p
lib.nfs_init_context.restype = vp
lib.nfs_get_error.restype = ctypes.c_char_p
lib.nfs_get_error.argtypes = [vp]
lib.nfs_set_version.argtypes = [vp, ctypes.c_int]
lib.nfs_mount.argtypes = [vp, ctypes.c_char_p, ctypes.c_char_p]
lib.nfs_umount.argtypes = [vp]
lib.nfs_destroy_context.argtypes = [vp]
lib.nfs_open.argtypes = [vp, ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(vp)]
lib.nfs_create.argtypes = [vp, ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.POINTER(vp)]
lib.nfs_close.argtypes = [vp, vp]
lib.nfs_write.argtypes = [vp, vp, ctypes.c_uint64, ctypes.c_char_p]
lib.nfs_pwrite.argtypes = [vp, vp, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_char_p]
lib.nfs_fsync.argtypes = [vp, vp]
lib.nfs_fchmod.argtypes = [vp, vp, ctypes.c_int]
lib.nfs_truncate.argtypes = [vp, ctypes.c_char_p, ctypes.c_uint64]
lib.nfs_mkdir.argtypes = [vp, ctypes.c_char_p]
lib.nfs_rmdir.argtypes = [vp, ctypes.c_char_p]
lib.nfs_unlink.argtypes = [vp, ctypes.c_char_p]
lib.nfs_rename.argtypes = [vp, ctypes.c_char_p, ctypes.c_char_p]
lib.nfs_chmod.argtypes = [vp, ctypes.c_char_p, ctypes.c_int]
lib.nfs_symlink.argtypes = [vp, ctypes.c_char_p, ctypes.c_char_p]
lib.nfs_link.argtypes = [vp, ctypes.c_char_p, ctypes.c_char_p]


class Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


lib.nfs_utimes.argtypes = [vp, ctypes.c_char_p, ctypes.POINTER(Timeval)]


class NfsError(Exception):
    pass


class Client:
    def __init__(self, server, export, version):
        self.nfs = lib.nfs_init_context()
        if not self.nfs:
            raise NfsError("nfs_init_context failed")
        lib.nfs_set_version(self.nfs, version)
        self.check(lib.nfs_mount(self.nfs, server.encode(), export.encode()), "mount", export.encode())
        self.held = None

    def check(self, rc, what, path=b""):
        if rc < 0:
            msg = (lib.nfs_get_error(self.nfs) or b"").decode(errors="replace")
            raise NfsError(f"{what} {path!r}: {msg} ({rc})")
        return rc

    @staticmethod
    def abs(path):
        return b"/" + path

    def write_all(self, fh, data, what, path):
        for at in range(0, len(data), PIECE):
            piece = data[at:at + PIECE]
            n = self.check(lib.nfs_write(self.nfs, fh, len(piece), piece), what, path)
            if n != len(piece):
                raise NfsError(f"{what} {path!r}: short write {n} of {len(piece)}")

    def create(self, path, mode):
        """Opens `path` for writing, truncated; creates it with `mode` if it does not exist
        (libnfs 4.0's create fails on an existing file over NFSv4, so an open comes first)."""
        fh = vp()
        if lib.nfs_open(self.nfs, self.abs(path), os.O_WRONLY | os.O_TRUNC, ctypes.byref(fh)) == 0:
            return fh
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        self.check(lib.nfs_create(self.nfs, self.abs(path), flags, mode, ctypes.byref(fh)), "create", path)
        self.check(lib.nfs_fchmod(self.nfs, fh, mode), "fchmod", path)
        return fh

    def mkdirs(self, path):
        so_far = b""
        for part in path.split(b"/"):
            so_far = so_far + b"/" + part if so_far else part
            rc = lib.nfs_mkdir(self.nfs, self.abs(so_far))
            if rc < 0 and b"exist" not in (lib.nfs_get_error(self.nfs) or b"").lower():
                self.check(rc, "mkdir", so_far)

    def write(self, path, mode, data):
        fh = self.create(path, mode)
        try:
            self.write_all(fh, data, "write", path)
        finally:
            self.check(lib.nfs_close(self.nfs, fh), "close", path)

    def append(self, path, data):
        fh = vp()
        flags = os.O_WRONLY | os.O_APPEND
        self.check(lib.nfs_open(self.nfs, self.abs(path), flags, ctypes.byref(fh)), "open", path)
        try:
            self.write_all(fh, data, "append", path)
        finally:
            self.check(lib.nfs_close(self.nfs, fh), "close", path)

    def handle(self, words):
        op = words[0]

        def path(i):
            return bytes.fromhex(words[i])

        def number(i, base=10):
            return int(words[i], base)

        if op == "mkdirs":
            self.mkdirs(path(1))
        elif op == "write":
            self.write(path(1), number(2, 8), path(3))
        elif op == "append":
            self.append(path(1), path(2))
        elif op == "truncate":
            self.check(lib.nfs_truncate(self.nfs, self.abs(path(1)), number(2)), "truncate", path(1))
        elif op == "chmod":
            self.check(lib.nfs_chmod(self.nfs, self.abs(path(1)), number(2, 8)), "chmod", path(1))
        elif op == "mtime":
            t = Timeval(number(2), number(3))
            times = (Timeval * 2)(t, t)
            self.check(lib.nfs_utimes(self.nfs, self.abs(path(1)), times), "utimes", path(1))
        elif op == "rename":
            self.check(lib.nfs_rename(self.nfs, self.abs(path(1)), self.abs(path(2))), "rename", path(1))
        elif op == "unlink":
            self.check(lib.nfs_unlink(self.nfs, self.abs(path(1))), "unlink", path(1))
        elif op == "rmdir":
            self.check(lib.nfs_rmdir(self.nfs, self.abs(path(1))), "rmdir", path(1))
        elif op == "symlink":
            self.check(lib.nfs_symlink(self.nfs, path(1), self.abs(path(2))), "symlink", path(2))
        elif op == "link":
            self.check(lib.nfs_link(self.nfs, self.abs(path(1)), self.abs(path(2))), "link", path(2))
        elif op == "open":
            if self.held is not None:
                raise NfsError("a file is already open")
            self.held = (self.create(path(1), number(2, 8)), path(1))
        elif op == "piece":
            fh, held = self.held
            self.write_all(fh, path(1), "write", held)
            self.check(lib.nfs_fsync(self.nfs, fh), "fsync", held)
        elif op == "close":
            fh, held = self.held
            self.held = None
            self.check(lib.nfs_close(self.nfs, fh), "close", held)
        else:
            raise NfsError(f"unknown request {op!r}")


def main():
    server, export, version = sys.argv[1], sys.argv[2], int(sys.argv[3])
    try:
        client = Client(server, export, version)
    except NfsError as e:
        print(f"err {e}", flush=True)
        sys.exit(1)
    print("ok mounted", flush=True)
    trace = os.environ.get("LIBNFS_CLIENT_TRACE")
    for line in sys.stdin:
        if trace:
            print(line[:200].rstrip(), file=sys.stderr, flush=True)
        words = line.split()
        if not words:
            continue
        try:
            client.handle(words)
            print("ok", flush=True)
        except (NfsError, ValueError, IndexError, TypeError) as e:
            print(f"err {e}", flush=True)
    lib.nfs_umount(client.nfs)
    lib.nfs_destroy_context(client.nfs)


if __name__ == "__main__":
    main()
