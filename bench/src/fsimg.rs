//! The bench's filesystems: each an ext4 image (sparse file, on disk or in /dev/shm) loop-mounted
//! at its own mount point, so that the source and the target each see only their own events.
//! [`LoopFs`] unmounts and deletes its image when dropped (unless told to keep it: the live
//! rows' pristine tree images); [`clean_stale`] removes what an earlier, killed bench left
//! mounted under the work directory. [`copy_image`] copies an image file sparsely.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::sys::run_cmd;

/// An ext4 filesystem on a sparse image file, mounted with `-o loop`.
pub struct LoopFs {
    img: PathBuf,
    mnt: PathBuf,
    size: u64,
    inodes: Option<u64>,
    /// Extra mkfs.ext4 arguments (e.g. `-O inline_data`).
    mkfs_args: Vec<String>,
    mounted: bool,
    /// Leave the image file in place when unmounted.
    keep: bool,
}

impl LoopFs {
    /// Makes a fresh filesystem of `size` bytes (and `inodes` inodes, if given) at `img` and
    /// mounts it at `mnt`.
    pub fn create(img: &Path, mnt: &Path, size: u64, inodes: Option<u64>) -> Result<LoopFs> {
        LoopFs::create_with(img, mnt, size, inodes, &[])
    }

    /// [`LoopFs::create`] with extra mkfs.ext4 arguments.
    pub fn create_with(
        img: &Path,
        mnt: &Path,
        size: u64,
        inodes: Option<u64>,
        mkfs_args: &[&str],
    ) -> Result<LoopFs> {
        let mut fs = LoopFs {
            img: img.to_path_buf(),
            mnt: mnt.to_path_buf(),
            size,
            inodes,
            mkfs_args: mkfs_args.iter().map(|s| s.to_string()).collect(),
            mounted: false,
            keep: false,
        };
        fs.format_and_mount()?;
        Ok(fs)
    }

    /// Unmounts and keeps the image file (for copies of it, see [`copy_image`]).
    pub fn unmount_keep(mut self) -> Result<PathBuf> {
        self.keep = true;
        self.unmount()?;
        Ok(self.img.clone())
    }

    pub fn img(&self) -> &Path {
        &self.img
    }

    /// Unmounts and deletes the image, leaving the mount point free for [`LoopFs::mount`].
    pub fn release(&mut self) -> Result<()> {
        self.unmount()
    }

    /// Mounts whatever filesystem image is now at this `LoopFs`'s image path.
    pub fn mount(&mut self) -> Result<()> {
        if self.mounted {
            self.unmount()?;
        }
        self.mount_img()
    }

    pub fn path(&self) -> &Path {
        &self.mnt
    }

    /// Replaces the filesystem by an empty one (same size, same mount point).
    pub fn recreate(&mut self) -> Result<()> {
        self.unmount()?;
        self.format_and_mount()
    }

    /// Resizes the image for the next [`LoopFs::recreate`] (and resets the inode count to
    /// mkfs's default).
    pub fn set_size(&mut self, size: u64) {
        self.size = size;
        self.inodes = None;
    }

    /// Sets size and inode count for the next [`LoopFs::recreate`].
    pub fn set_geometry(&mut self, size: u64, inodes: Option<u64>) {
        self.size = size;
        self.inodes = inodes;
    }

    fn format_and_mount(&mut self) -> Result<()> {
        std::fs::create_dir_all(&self.mnt)
            .with_context(|| format!("create {}", self.mnt.display()))?;
        let _ = std::fs::remove_file(&self.img);
        let f = std::fs::File::create(&self.img)
            .with_context(|| format!("create {}", self.img.display()))?;
        f.set_len(self.size).context("size the image")?;
        drop(f);
        let mut mkfs = Command::new("mkfs.ext4");
        mkfs.args([
            "-q",
            "-F",
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1,nodiscard",
        ]);
        if let Some(n) = self.inodes {
            mkfs.arg("-N").arg(n.to_string());
        }
        mkfs.args(&self.mkfs_args);
        mkfs.arg(&self.img);
        run_cmd(&mut mkfs, Duration::from_secs(120))?;
        self.mount_img()
    }

    fn mount_img(&mut self) -> Result<()> {
        std::fs::create_dir_all(&self.mnt)
            .with_context(|| format!("create {}", self.mnt.display()))?;
        // noinit_itable: the image is sparse (reads as zeros), so the kernel need not zero the
        // inode tables in the background while the bench measures.
        run_cmd(
            Command::new("mount")
                .args(["-o", "loop,noinit_itable"])
                .arg(&self.img)
                .arg(&self.mnt),
            Duration::from_secs(60),
        )?;
        self.mounted = true;
        Ok(())
    }

    fn unmount(&mut self) -> Result<()> {
        if self.mounted {
            self.mounted = false;
            umount(&self.mnt)?;
        }
        if !self.keep {
            let _ = std::fs::remove_file(&self.img);
        }
        Ok(())
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        if let Err(e) = self.unmount() {
            eprintln!("warning: {e:#}");
        }
    }
}

/// Unmounts `mnt`, lazily if it stays busy (`mount -o loop` images detach their loop device
/// when unmounted).
fn umount(mnt: &Path) -> Result<()> {
    for _ in 0..20 {
        let c = std::ffi::CString::new(mnt.as_os_str().as_encoded_bytes())?;
        // SAFETY: plain syscall on a NUL-terminated path.
        if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINVAL) | Some(libc::ENOENT) => return Ok(()), // not mounted
            Some(libc::EBUSY) => std::thread::sleep(Duration::from_millis(100)),
            _ => return Err(e).with_context(|| format!("umount {}", mnt.display())),
        }
    }
    let c = std::ffi::CString::new(mnt.as_os_str().as_encoded_bytes())?;
    // SAFETY: as above.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("umount -l {}", mnt.display()));
    }
    eprintln!("warning: {} stayed busy; unmounted lazily", mnt.display());
    Ok(())
}

/// Reads image files sequentially (one thread each), so that their blocks are in the page
/// cache: the loop devices then serve a walk of millions of small files from memory instead of
/// from random reads of the disk. Returns the seconds it took.
pub fn preread(imgs: &[&Path]) -> Result<f64> {
    let t0 = crate::sys::mono_ns();
    std::thread::scope(|sc| {
        let hs: Vec<_> = imgs
            .iter()
            .map(|img| {
                sc.spawn(move || -> Result<()> {
                    let f = std::fs::File::open(img)
                        .with_context(|| format!("open {}", img.display()))?;
                    read_data_extents(&f)
                })
            })
            .collect();
        hs.into_iter().try_for_each(|h| {
            h.join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("preread panicked")))
        })
    })?;
    Ok(crate::sys::secs(crate::sys::mono_ns() - t0))
}

/// Reads every data extent of a sparse file (SEEK_DATA/SEEK_HOLE), skipping the holes.
fn read_data_extents(f: &std::fs::File) -> Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    let fd = f.as_raw_fd();
    let mut buf = vec![0u8; 4 << 20];
    let mut pos: i64 = 0;
    loop {
        crate::sys::check_interrupt()?;
        // SAFETY: plain syscalls on an open descriptor.
        let data = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
        if data < 0 {
            return Ok(()); // ENXIO: no data after pos
        }
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        let end = if hole < 0 { data } else { hole };
        let mut off = data;
        while off < end {
            let n = ((end - off) as usize).min(buf.len());
            let got = f.read_at(&mut buf[..n], off as u64)?;
            if got == 0 {
                return Ok(());
            }
            off += got as i64;
        }
        pos = end.max(data + 1);
    }
}

/// Copies image `from` to `to` with `cp --sparse=always` (holes stay holes, and so do the zero
/// blocks of the lazily initialised inode tables), replacing `to`.
/// Returns the running `cp`.
pub fn copy_image(from: &Path, to: &Path) -> Result<crate::sys::Proc> {
    let _ = std::fs::remove_file(to);
    crate::sys::Proc::spawn(
        "cp",
        Command::new("cp")
            .arg("--sparse=always")
            .arg(from)
            .arg(to)
            .stdin(std::process::Stdio::null()),
    )
}

/// Unmounts everything mounted under `work` (left by an earlier bench that was killed) and
/// removes its images.
pub fn clean_stale(work: &Path) -> Result<()> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").context("read mountinfo")?;
    let prefix = work.to_string_lossy().to_string();
    let mut stale: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(|m| m.to_string())
        .collect();
    // Deepest first.
    stale.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in stale {
        eprintln!("cleaning up a stale mount: {m}");
        umount(Path::new(&m))?;
    }
    if let Ok(rd) = std::fs::read_dir(work) {
        for e in rd.flatten() {
            if e.path().extension().is_some_and(|x| x == "img") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(())
}
