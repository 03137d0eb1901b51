//! Scenario 13, writers that name files the way real programs do: a separate process (Python,
//! whose `os` calls map one to one onto the system calls) works through relative paths from a
//! working directory inside the tree, through directory fds after moving its working directory
//! out of the tree (`openat`, `mkdirat`, `symlinkat`, `renameat`, `fchmodat`, `utimensat`,
//! `unlinkat`), through a directory fd whose directory has been renamed, from a working
//! directory that is renamed under it, with `..`, and through plain fds (`write`, `ftruncate`,
//! `fchmod`). Every source must end with identical trees.

use std::process::Command;

use crate::util::*;

per_source_kind!(relative_paths_and_dirfds);

const WRITER: &str = r#"
import os, sys
src = sys.argv[1]
work = os.path.join(src, "work")
os.chdir(work)
os.makedirs("a/b")
with open("a/b/rel.txt", "w") as f:
    f.write("relative\n")
dfd = os.open("a", os.O_RDONLY | os.O_DIRECTORY)
os.chdir("/")
fd = os.open("viafd.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640, dir_fd=dfd)
os.write(fd, b"through a directory fd\n")
os.close(fd)
os.mkdir("sub", dir_fd=dfd)
os.symlink("viafd.txt", "link", dir_fd=dfd)
os.rename("b/rel.txt", "sub/moved.txt", src_dir_fd=dfd, dst_dir_fd=dfd)
os.chmod("viafd.txt", 0o600, dir_fd=dfd)
os.utime("sub/moved.txt", ns=(1_000_000_000_123, 1_000_000_000_456), dir_fd=dfd)
os.rename(os.path.join(work, "a"), os.path.join(work, "renamed"))
fd = os.open("after-rename.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=dfd)
os.write(fd, b"the fd's directory was renamed\n")
os.close(fd)
os.chdir(os.path.join(work, "renamed", "sub"))
os.rename(os.path.join(work, "renamed", "sub"), os.path.join(work, "renamed", "sub2"))
with open("in-renamed-cwd.txt", "w") as f:
    f.write("cwd renamed under me\n")
os.mkdir("../newdir")
with open("../newdir/f", "w") as f:
    f.write("dot dot\n")
os.unlink("moved.txt")
fd = os.open("big", os.O_WRONLY | os.O_CREAT, 0o644)
for i in range(2000):
    os.write(fd, b"y" * 100)
os.ftruncate(fd, 150_000)
os.fchmod(fd, 0o604)
os.close(fd)
os.mkdir("gone")
os.rmdir("gone")
os.mkdir("gone2")
here = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
os.chdir("/")
os.rmdir("gone2", dir_fd=here)
os.unlink("in-renamed-cwd.txt", dir_fd=here)
with open(os.path.join(work, "renamed", "sub2", "last"), "w") as f:
    f.write("done\n")
"#;

fn relative_paths_and_dirfds(kind: SourceKind) {
    let Some(rig) = Rig::new() else { return };
    mkdirs(&rig.src.join("work"));
    let mut syncer = rig.start(kind);
    let out = Command::new("python3")
        .arg("-c")
        .arg(WRITER)
        .arg(&rig.src)
        .current_dir("/")
        .output()
        .expect("run python3 (the writer)");
    assert!(
        out.status.success(),
        "the writer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(rig.src.join("work/renamed/sub2/big").exists());
    rig.assert_converges(&mut syncer);
    syncer.stop();
}
