//! `cargo xtask vm-test`: runs syncer's end-to-end test binary (or any shell command) inside qemu
//! VMs that boot stock Debian cloud kernels (6.1 and 6.12), where fentry/fexit and LSM eBPF
//! programs load, unlike on the host kernel.
//!
//! This module owns everything about those VMs:
//! - the kernels: the newest `linux-image-<series>-cloud-amd64-unsigned` that apt knows of is
//!   fetched with `apt-get download`, unpacked with `dpkg -x` (never installed) under
//!   [`CACHE_DIR`], and its bzImage is decompressed to an ELF `vmlinux` that qemu boots through
//!   the PVH entry (much faster under TCG than decompressing in the guest);
//! - the guest: an uncompressed cpio (newc) initramfs with busybox, the host's rsync, mkfs.ext4,
//!   util-linux mount/umount/losetup/setpriv and Debian's python3 (most of its standard library),
//!   each with the shared libraries `ldd` lists; the kernel modules the tests need (in dependency
//!   order, from each module's `.modinfo`); the syncer and e2e binaries (debug info stripped)
//!   under `/opt/syncer/`; and a generated `/init` that mounts the pseudo filesystems (tracefs,
//!   bpffs, securityfs included), loads the modules, brings up `lo` and hands PID 1 to busybox
//!   init, which reaps orphans while `/etc/syncer-vm/run` runs the command and powers off;
//! - the run: `qemu-system-x86_64 -accel tcg` with the console on stdout, streamed to our stdout,
//!   a `SYNCER-VM-EXIT=<code>` marker line that carries the command's exit code, and a host-side
//!   timeout (`SYNCER_VM_TIMEOUT` seconds, default [`DEFAULT_TIMEOUT_SECS`]).
//!
//! Usage: `cargo xtask vm-test [--kernel 6.1|6.12|all] [--filter SUBSTRING] [--keep]
//! [--shell-cmd CMD]`. Host packages (qemu-system-x86, busybox-static, the decompressors) are
//! installed with apt-get when missing and running as root.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value as Json;

/// Downloads, unpacked kernels and per-run work directories live here, outside the repository.
const CACHE_DIR: &str = "/var/tmp/syncer-vm";
/// How long one VM may run before it is killed, unless `SYNCER_VM_TIMEOUT` says otherwise.
const DEFAULT_TIMEOUT_SECS: u64 = 3600;
/// The line the guest prints (followed by the command's exit code) before powering off.
const EXIT_MARKER: &str = "SYNCER-VM-EXIT=";
/// The e2e tests a run selects unless `--filter` says otherwise: the eBPF scenarios (fentry and
/// LSM programs load on these kernels) and the NFS ones (these kernels have nfsd).
const DEFAULT_FILTER: &str = "ebpf,nfs";
/// Guest RAM and CPUs.
const GUEST_MEM: &str = "3G";
const GUEST_CPUS: &str = "2";
/// The kernel command line. `lsm=` enables the BPF LSM (Debian's default list does not);
/// `mitigations=off` because speculation barriers only cost time under emulation.
const KERNEL_CMDLINE: &str =
    "console=ttyS0 lsm=lockdown,capability,landlock,yama,bpf panic=-1 quiet mitigations=off";
/// Kernel modules loaded in the guest (with their dependencies) unless built in: `loop` for the
/// tests' loop-mounted ext4 filesystems (ext4 itself is built into Debian's cloud kernels); the
/// kernel NFS server and the NFS client (v3 and v4.x) for the NFS scenarios.
const GUEST_MODULES: &[&str] = &["loop", "nfsd", "nfsv3", "nfsv4"];
/// The guest's PATH.
const GUEST_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Host programs copied into the guest (with their libraries), and the Debian package of each.
/// The e2e harness runs rsync, mkfs.ext4, mount and setpriv; umount and losetup are for
/// debugging with `--shell-cmd`. They take precedence over busybox's applets of the same name.
const GUEST_TOOLS: &[(&str, &str)] = &[
    ("rsync", "rsync"),
    ("mkfs.ext4", "e2fsprogs"),
    ("mount", "mount"),
    ("umount", "mount"),
    ("losetup", "mount"),
    ("setpriv", "util-linux"),
];

/// Debian's NFS user-space programs for the guest's kernel NFS server and client. They are
/// downloaded with `apt-get download` and unpacked under [`CACHE_DIR`], never installed on the
/// host (whose kernel may have no NFS at all, and whose package scripts would start services).
const NFS_PACKAGES: &[&str] = &["nfs-kernel-server", "nfs-common", "rpcbind"];
/// The programs taken from them (the same paths in the guest): the server's daemons and
/// `exportfs`, the NFSv4 client-tracking daemon (started first, it lets a fresh server skip
/// its grace period), rpcbind (NFSv3) and the mount helper.
const NFS_PROGRAMS: &[&str] = &[
    "/usr/sbin/rpc.nfsd",
    "/usr/sbin/rpc.mountd",
    "/usr/sbin/exportfs",
    "/usr/sbin/nfsdcld",
    "/usr/sbin/rpcinfo",
    "/sbin/mount.nfs",
    "/sbin/rpcbind",
];
/// What those programs need from the host (a file and its Debian package), installed when
/// missing: the shared libraries they link to (so that `ldd` finds them to copy) and the
/// files libtirpc reads (`/etc/netconfig`, `/etc/rpc`, copied into the guest).
const NFS_HOST_FILES: &[(&str, &str)] = &[
    ("/lib/x86_64-linux-gnu/libtirpc.so.3", "libtirpc3"),
    ("/etc/netconfig", "libtirpc-common"),
    (
        "/lib/x86_64-linux-gnu/libevent_core-2.1.so.7",
        "libevent-core-2.1-7",
    ),
    ("/lib/x86_64-linux-gnu/libsqlite3.so.0", "libsqlite3-0"),
    ("/lib/x86_64-linux-gnu/libwrap.so.0", "libwrap0"),
    (
        "/lib/x86_64-linux-gnu/libgssapi_krb5.so.2",
        "libgssapi-krb5-2",
    ),
    ("/lib/x86_64-linux-gnu/libkeyutils.so.1", "libkeyutils1"),
    (
        "/lib/x86_64-linux-gnu/libdevmapper.so.1.02.1",
        "libdevmapper1.02.1",
    ),
    ("/etc/rpc", "netbase"),
];

/// The Python that the guest gets (Debian's, not one from PATH, which may be a pyenv shim).
const PYTHON: &str = "/usr/bin/python3";
/// Parts of Python's standard library that no test uses (besides `config-*`, the static
/// libpython): left out of the guest to keep the initramfs small.
const PYTHON_STDLIB_SKIP: &[&str] = &[
    "test",
    "idlelib",
    "tkinter",
    "turtledemo",
    "ensurepip",
    "lib2to3",
    "pydoc_data",
    "distutils",
    "site-packages",
    "dist-packages",
];

/// What the host needs to build and boot the VMs, and the Debian package of each.
const HOST_TOOLS: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("busybox", "busybox-static"),
    ("ldd", "libc-bin"),
    ("dpkg-deb", "dpkg"),
    ("lz4", "lz4"),
    ("zstd", "zstd"),
    ("xz", "xz-utils"),
    ("gzip", "gzip"),
    (PYTHON, "python3"),
    ("objcopy", "binutils"),
];

/// A kernel series that `--kernel` can select.
#[derive(Clone, Copy, Debug)]
struct Series {
    /// The `--kernel` value.
    name: &'static str,
    /// Matches the unsigned cloud image packages of this series (`apt-cache search` regex).
    package_regex: &'static str,
}

const SERIES: &[Series] = &[
    Series {
        name: "6.1",
        // linux-image-6.1.0-56-cloud-amd64-unsigned (bookworm, bookworm-security)
        package_regex: r"^linux-image-6\.1\.0-[0-9]+-cloud-amd64-unsigned$",
    },
    Series {
        name: "6.12",
        // linux-image-6.12.117+deb12-cloud-amd64-unsigned (bookworm-security),
        // linux-image-6.12.38+bpo-cloud-amd64-unsigned (bookworm-backports), +deb13 (trixie)
        package_regex: r"^linux-image-6\.12\.[0-9]+\+(deb[0-9]+|bpo)-cloud-amd64-unsigned$",
    },
];

struct Options {
    kernels: Vec<Series>,
    filter: String,
    keep: bool,
    shell_cmd: Option<String>,
}

fn usage() -> &'static str {
    "usage: cargo xtask vm-test [--kernel 6.1|6.12|all] [--filter SUBSTRING[,SUBSTRING...]] \
     [--keep] [--shell-cmd CMD]"
}

fn parse_args(args: &[String]) -> Result<Options> {
    let mut opts = Options {
        kernels: SERIES.to_vec(),
        filter: DEFAULT_FILTER.into(),
        keep: false,
        shell_cmd: None,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = |flag: &str| -> Result<String> {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| anyhow!("{flag} needs a value\n{}", usage()))
        };
        match flag {
            "--kernel" => {
                let k = value(flag)?;
                opts.kernels = if k == "all" {
                    SERIES.to_vec()
                } else {
                    let s = SERIES.iter().find(|s| s.name == k).ok_or_else(|| {
                        anyhow!("unknown kernel {k:?}: expected 6.1, 6.12 or all")
                    })?;
                    vec![*s]
                };
            }
            "--filter" => opts.filter = value(flag)?,
            "--shell-cmd" => opts.shell_cmd = Some(value(flag)?),
            "--keep" => opts.keep = true,
            "-h" | "--help" => {
                println!("{}", usage());
                std::process::exit(0);
            }
            _ => bail!("unknown argument {arg:?}\n{}", usage()),
        }
    }
    Ok(opts)
}

/// `cargo xtask vm-test`: builds syncer and the e2e test binary, then boots each selected kernel
/// in turn and runs the e2e tests matching `--filter` (or `--shell-cmd`) in it. Prints one summary
/// line per kernel; fails if any run failed.
pub fn vm_test(args: &[String]) -> Result<()> {
    let opts = parse_args(args)?;
    let mut tools = HOST_TOOLS.to_vec();
    tools.extend_from_slice(GUEST_TOOLS);
    tools.extend_from_slice(NFS_HOST_FILES);
    super::ensure_tools(&tools)?;
    for (prog, pkg) in &tools {
        if find_program(prog).is_none() {
            bail!("`{prog}` not found: install the Debian package {pkg}");
        }
    }
    let cache = PathBuf::from(CACHE_DIR);
    fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;

    // With --shell-cmd the binaries are there for debugging by hand, if they build.
    let payload = match build_binaries() {
        Ok(p) => Some(p),
        Err(e) if opts.shell_cmd.is_some() => {
            eprintln!("vm-test: {e:#}; booting without /opt/syncer");
            None
        }
        Err(e) => return Err(e),
    };
    let timeout = std::env::var("SYNCER_VM_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(
            Duration::from_secs(DEFAULT_TIMEOUT_SECS),
            Duration::from_secs,
        );

    let nfs = prepare_nfs_utils(&cache)?;
    let mut results = Vec::new();
    for series in &opts.kernels {
        let kernel = prepare_kernel(&cache, series)?;
        let started = Instant::now();
        let outcome = run_in_vm(&cache, &kernel, &opts, payload.as_ref(), &nfs, timeout);
        let secs = started.elapsed().as_secs_f64();
        if let Err(e) = &outcome {
            eprintln!("vm-test: kernel {}: {e:#}", kernel.release);
        }
        results.push((kernel, outcome.is_ok(), secs));
    }
    println!();
    for (kernel, ok, secs) in &results {
        println!(
            "vm-test: kernel {} (Debian {} {}): {} in {secs:.1} s",
            kernel.release,
            kernel.package,
            kernel.package_version,
            if *ok { "PASS" } else { "FAIL" },
        );
    }
    let failed = results.iter().filter(|(_, ok, _)| !ok).count();
    if failed > 0 {
        bail!("vm-test failed on {failed} of {} kernels", results.len());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Building the binaries

/// The syncer binary and the e2e test binary.
struct Payload {
    syncer: PathBuf,
    e2e: PathBuf,
}

fn build_binaries() -> Result<Payload> {
    let syncer = cargo_executable(
        &["build", "--release", "-p", "syncer", "--bin", "syncer"],
        |target, _profile| target_name(target) == Some("syncer") && target_has_kind(target, "bin"),
    )?;
    let e2e = cargo_executable(
        &[
            "test",
            "--release",
            "-p",
            "syncer",
            "--test",
            "e2e",
            "--no-run",
        ],
        |target, profile| {
            target_name(target) == Some("e2e")
                && profile.get("test").and_then(Json::as_bool) == Some(true)
        },
    )?;
    Ok(Payload { syncer, e2e })
}

fn target_name(target: &Json) -> Option<&str> {
    target.get("name").and_then(Json::as_str)
}

fn target_has_kind(target: &Json, kind: &str) -> bool {
    target
        .get("kind")
        .and_then(Json::as_array)
        .is_some_and(|kinds| kinds.iter().any(|k| k.as_str() == Some(kind)))
}

/// Runs cargo with `--message-format=json-render-diagnostics` and returns the executable of the
/// last `compiler-artifact` whose target and profile satisfy `pick`.
fn cargo_executable(args: &[&str], pick: impl Fn(&Json, &Json) -> bool) -> Result<PathBuf> {
    eprintln!("vm-test: cargo {}", args.join(" "));
    let out = super::cargo()
        .args(args)
        .arg("--message-format=json-render-diagnostics")
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo")?;
    if !out.status.success() {
        bail!("cargo {} failed", args.join(" "));
    }
    let mut found = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if !line.contains("\"compiler-artifact\"") {
            continue;
        }
        let msg: Json = serde_json::from_str(line)
            .with_context(|| format!("parsing cargo's output: {line}"))?;
        let (Some(target), Some(profile)) = (msg.get("target"), msg.get("profile")) else {
            continue;
        };
        if pick(target, profile) {
            if let Some(exe) = msg.get("executable").and_then(Json::as_str) {
                found = Some(PathBuf::from(exe));
            }
        }
    }
    found.ok_or_else(|| anyhow!("cargo {} produced no matching executable", args.join(" ")))
}

// ---------------------------------------------------------------------------------------------
// Kernels

/// An unpacked Debian kernel package.
struct Kernel {
    /// The package name, e.g. `linux-image-6.1.0-56-cloud-amd64-unsigned`.
    package: String,
    /// The package version, e.g. `6.1.192-2`.
    package_version: String,
    /// `uname -r`, e.g. `6.1.0-56-cloud-amd64`: the directory under lib/modules.
    release: String,
    /// Where the package is unpacked.
    root: PathBuf,
    /// The decompressed ELF kernel.
    vmlinux: PathBuf,
}

/// The newest package of `series` that apt knows of, downloaded, unpacked and decompressed into
/// the cache (reused when already there). Falls back to the newest cached one when apt lists none.
fn prepare_kernel(cache: &Path, series: &Series) -> Result<Kernel> {
    let kernels = cache.join("kernels");
    fs::create_dir_all(&kernels)?;
    let mut candidates = apt_packages(series.package_regex)?;
    if candidates.is_empty() && is_root() {
        eprintln!(
            "vm-test: no {} cloud kernel in apt's lists; running apt-get update",
            series.name
        );
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        candidates = apt_packages(series.package_regex)?;
        if candidates.is_empty() && series.name == "6.12" {
            add_backports_source()?;
            candidates = apt_packages(series.package_regex)?;
        }
    }
    let cached: Vec<String> = fs::read_dir(&kernels)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| !n.ends_with(".tmp") && is_series_package(series, n))
        .collect();
    let package = match newest(&candidates) {
        Some(p) => p,
        None => newest(&cached).ok_or_else(|| {
            anyhow!(
                "no package matching {} in apt's lists and none cached in {}: this needs a \
                 Debian bookworm (or newer) apt source",
                series.package_regex,
                kernels.display()
            )
        })?,
    };
    let root = kernels.join(&package);
    if !root.join(".complete").exists() {
        unpack_kernel(cache, &package, &root)?;
    }
    load_kernel(&package, root)
}

/// Package names matching `regex` in apt's lists.
fn apt_packages(regex: &str) -> Result<Vec<String>> {
    let out = Command::new("apt-cache")
        .args(["search", "--names-only", regex])
        .output()
        .context("running apt-cache (this needs a Debian host)")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(" - ").next())
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .collect())
}

/// Whether a cached directory name is a package of `series` (its fixed prefix and suffix).
fn is_series_package(series: &Series, name: &str) -> bool {
    let prefix = format!("linux-image-{}.", series.name);
    name.starts_with(&prefix) && name.ends_with("-cloud-amd64-unsigned")
}

/// The newest of some package names of one series, comparing their digit runs numerically.
fn newest(names: &[String]) -> Option<String> {
    fn key(name: &str) -> Vec<u64> {
        name.split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().unwrap_or(0))
            .collect()
    }
    names.iter().max_by_key(|n| key(n)).cloned()
}

/// Adds bookworm-backports (where Debian 12 gets its 6.12 kernels besides bookworm-security) as
/// an apt source, once. Backports are pinned low by Debian, so this changes no installed package.
fn add_backports_source() -> Result<()> {
    let path = Path::new("/etc/apt/sources.list.d/syncer-vm-backports.sources");
    if path.exists() {
        return Ok(());
    }
    let os = fs::read_to_string("/etc/os-release").unwrap_or_default();
    let codename = os
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|s| s.trim_matches('"').to_string())
        .unwrap_or_default();
    if codename != "bookworm" {
        return Ok(());
    }
    eprintln!(
        "vm-test: adding the apt source bookworm-backports ({}) for a 6.12 cloud kernel",
        path.display()
    );
    fs::write(
        path,
        "# Added by `cargo xtask vm-test` (syncer) for linux-image-6.12.*-cloud-amd64-unsigned.\n\
         Types: deb\n\
         URIs: http://deb.debian.org/debian\n\
         Suites: bookworm-backports\n\
         Components: main\n\
         Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
    )?;
    run(Command::new("apt-get").args(["update", "-qq"]))
}

/// Downloads `package` into the cache and unpacks it at `root` (via a temporary directory, so
/// that an interrupted run leaves nothing half-done behind), then writes `root/vmlinux`.
fn unpack_kernel(cache: &Path, package: &str, root: &Path) -> Result<()> {
    let debs = cache.join("debs");
    fs::create_dir_all(&debs)?;
    let find_deb = || -> Result<Option<PathBuf>> {
        Ok(fs::read_dir(&debs)?
            .filter_map(|e| Some(e.ok()?.path()))
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
            }))
    };
    let deb = match find_deb()? {
        Some(deb) => deb,
        None => {
            eprintln!("vm-test: apt-get download {package}");
            let mut cmd = Command::new("apt-get");
            if is_root() {
                // Downloading into a root-owned directory: do not drop to the _apt user.
                cmd.args(["-o", "APT::Sandbox::User=root"]);
            }
            run(cmd.args(["download", "-q", package]).current_dir(&debs))?;
            find_deb()?.ok_or_else(|| anyhow!("apt-get download {package} left no .deb"))?
        }
    };
    let tmp = root.with_extension("tmp");
    let _ = fs::remove_dir_all(&tmp);
    run(Command::new("dpkg").arg("-x").arg(&deb).arg(&tmp))?;
    let version = Command::new("dpkg-deb")
        .args(["-f"])
        .arg(&deb)
        .arg("Version")
        .output()
        .context("dpkg-deb -f")?;
    fs::write(tmp.join(".version"), &version.stdout)?;
    let vmlinuz = fs::read_dir(tmp.join("boot"))?
        .filter_map(|e| Some(e.ok()?.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .ok_or_else(|| anyhow!("{package} has no boot/vmlinuz-*"))?;
    extract_vmlinux(&vmlinuz, &tmp.join("vmlinux"))?;
    fs::write(tmp.join(".complete"), b"")?;
    let _ = fs::remove_dir_all(root);
    fs::rename(&tmp, root)?;
    Ok(())
}

fn load_kernel(package: &str, root: PathBuf) -> Result<Kernel> {
    let release = fs::read_dir(root.join("lib/modules"))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .next()
        .ok_or_else(|| anyhow!("{} has no lib/modules/<release>", root.display()))?;
    let package_version = fs::read_to_string(root.join(".version"))
        .unwrap_or_default()
        .trim()
        .to_string();
    Ok(Kernel {
        package: package.to_string(),
        package_version,
        release,
        vmlinux: root.join("vmlinux"),
        root,
    })
}

/// Decompresses the kernel in a bzImage to an ELF vmlinux, as the kernel's
/// scripts/extract-vmlinux does, but locating the payload through the boot protocol's setup
/// header (`payload_offset`/`payload_length`, protocol 2.08+). Debian compresses 6.1 with LZ4
/// (legacy frame) and 6.12 with zstd.
fn extract_vmlinux(bzimage: &Path, out: &Path) -> Result<()> {
    let image = fs::read(bzimage).with_context(|| format!("reading {}", bzimage.display()))?;
    if image.len() < 0x250 || &image[0x202..0x206] != b"HdrS" {
        bail!("{} is not a bzImage", bzimage.display());
    }
    let setup_sects = match image[0x1f1] {
        0 => 4,
        n => usize::from(n),
    };
    let u32_at = |off: usize| u32::from_le_bytes(image[off..off + 4].try_into().unwrap()) as usize;
    let start = (setup_sects + 1) * 512 + u32_at(0x248);
    let end = start + u32_at(0x24c);
    let payload = image
        .get(start..end)
        .ok_or_else(|| anyhow!("{}: payload out of range", bzimage.display()))?;
    let tool: &[&str] = match payload {
        [0x02, 0x21, 0x4c, 0x18, ..] => &["lz4", "-dc"],
        [0x28, 0xb5, 0x2f, 0xfd, ..] => &["zstd", "-dcq"],
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => &["xz", "-dc", "--single-stream"],
        [0x1f, 0x8b, ..] => &["gzip", "-dc"],
        _ => bail!(
            "{}: unknown kernel compression (magic {:02x?})",
            bzimage.display(),
            &payload[..payload.len().min(6)]
        ),
    };
    let elf = decompress(tool, payload)?;
    if !elf.starts_with(b"\x7fELF") || elf.len() < 1 << 20 {
        bail!(
            "{}: {} did not produce an ELF kernel",
            bzimage.display(),
            tool[0]
        );
    }
    fs::write(out, elf)?;
    Ok(())
}

/// Pipes `input` through a decompressor and returns its output. The exit status is ignored:
/// kernel payloads carry trailing bytes (the decompressed size) that some tools complain about;
/// the caller checks the result instead.
fn decompress(tool: &[&str], input: &[u8]) -> Result<Vec<u8>> {
    let mut child = Command::new(tool[0])
        .args(&tool[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("running {}", tool[0]))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let mut out = Vec::new();
    child
        .stdout
        .take()
        .expect("piped stdout")
        .read_to_end(&mut out)?;
    let _ = child.wait();
    let _ = writer.join();
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// NFS user space

/// Downloads and unpacks [`NFS_PACKAGES`] (apt's candidate versions) into `cache/nfs/<versions>`
/// and returns that directory; reuses it when already there, and falls back to the newest
/// unpacked one when apt cannot download, even after an `apt-get update`.
fn prepare_nfs_utils(cache: &Path) -> Result<PathBuf> {
    let base = cache.join("nfs");
    fs::create_dir_all(&base)?;
    match fetch_nfs_utils(&base) {
        Ok(root) => return Ok(root),
        // Stale lists on a fresh machine name versions the mirror no longer has.
        Err(e) if is_root() => {
            eprintln!("vm-test: cannot fetch the NFS programs ({e:#}); running apt-get update");
            run(Command::new("apt-get").args(["update", "-qq"]))?;
            match fetch_nfs_utils(&base) {
                Ok(root) => return Ok(root),
                Err(e) => eprintln!("vm-test: cannot fetch the NFS programs: {e:#}"),
            }
        }
        Err(e) => eprintln!("vm-test: cannot fetch the NFS programs: {e:#}"),
    }
    // apt lists none, or the download failed: the newest complete earlier one.
    let mut cached: Vec<PathBuf> = fs::read_dir(&base)?
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.join(".complete").exists())
        .collect();
    cached.sort();
    cached.pop().ok_or_else(|| {
        anyhow!(
            "the NFS programs ({}) are neither downloadable with apt-get nor cached in {}",
            NFS_PACKAGES.join(", "),
            base.display()
        )
    })
}

/// The unpacked [`NFS_PACKAGES`] of apt's candidate versions under `base`, downloaded unless
/// already there.
fn fetch_nfs_utils(base: &Path) -> Result<PathBuf> {
    let mut names = Vec::new();
    for pkg in NFS_PACKAGES {
        let out = Command::new("apt-cache")
            .args(["policy", pkg])
            .output()
            .context("running apt-cache")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let version = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Candidate:"))
            .map(|v| v.trim().replace([':', '~', '+'], "_"))
            .filter(|v| !v.is_empty() && v != "(none)")
            .ok_or_else(|| anyhow!("apt knows no candidate version of {pkg}"))?;
        names.push(format!("{pkg}_{version}"));
    }
    let root = base.join(names.join("+"));
    if !root.join(".complete").exists() {
        unpack_packages(&root, NFS_PACKAGES)?;
    }
    Ok(root)
}

/// `apt-get download` of `packages` and `dpkg -x` of each into `root` (through `root.tmp`, so
/// that an interrupted run leaves nothing half-done behind).
fn unpack_packages(root: &Path, packages: &[&str]) -> Result<()> {
    let tmp = root.with_extension("tmp");
    let _ = fs::remove_dir_all(&tmp);
    let debs = tmp.join("debs");
    fs::create_dir_all(&debs)?;
    eprintln!("vm-test: downloading {}", packages.join(" "));
    let mut cmd = Command::new("apt-get");
    if is_root() {
        // Downloading into a root-owned directory: do not drop to the _apt user.
        cmd.args(["-o", "APT::Sandbox::User=root"]);
    }
    run(cmd
        .args(["download", "-q"])
        .args(packages)
        .current_dir(&debs))?;
    let unpacked = tmp.join("root");
    for entry in fs::read_dir(&debs)? {
        let deb = entry?.path();
        run(Command::new("dpkg").arg("-x").arg(&deb).arg(&unpacked))?;
    }
    fs::write(tmp.join(".complete"), b"")?;
    let _ = fs::remove_dir_all(root);
    fs::rename(&tmp, root)?;
    Ok(())
}

/// Copies [`NFS_PROGRAMS`] from the unpacked packages at `nfs` into the guest (with their
/// libraries), and the mount helper's other names.
fn copy_nfs_utils(tree: &Tree, nfs: &Path) -> Result<()> {
    for prog in NFS_PROGRAMS {
        let host = nfs.join("root").join(prog.trim_start_matches('/'));
        tree.copy_program(&host, prog)
            .with_context(|| format!("copying {} into the guest", host.display()))?;
    }
    for alias in ["mount.nfs4", "umount.nfs", "umount.nfs4"] {
        let link = tree.path(&format!("/sbin/{alias}"));
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink("mount.nfs", link)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The initramfs

/// A guest root tree being assembled on the host (written out as a cpio archive at the end).
struct Tree {
    root: PathBuf,
}

impl Tree {
    fn new(root: PathBuf) -> Result<Tree> {
        let _ = fs::remove_dir_all(&root);
        for dir in [
            "usr/bin",
            "usr/sbin",
            "usr/lib",
            "usr/lib64",
            "etc",
            "dev",
            "proc",
            "sys",
            "tmp",
            "run",
            "root",
            "mnt",
            "var/tmp",
            "opt/syncer",
        ] {
            fs::create_dir_all(root.join(dir))?;
        }
        // Merged /usr, like the host (so that ldd's /lib/... and /lib64/... paths land in /usr).
        for (link, target) in [
            ("bin", "usr/bin"),
            ("sbin", "usr/sbin"),
            ("lib", "usr/lib"),
            ("lib64", "usr/lib64"),
        ] {
            std::os::unix::fs::symlink(target, root.join(link))?;
        }
        fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777))?;
        fs::set_permissions(root.join("var/tmp"), fs::Permissions::from_mode(0o1777))?;
        Ok(Tree { root })
    }

    /// The host path of the guest path `guest` (absolute).
    fn path(&self, guest: &str) -> PathBuf {
        self.root.join(guest.trim_start_matches('/'))
    }

    fn exists(&self, guest: &str) -> bool {
        self.path(guest).symlink_metadata().is_ok()
    }

    fn write(&self, guest: &str, contents: &[u8], mode: u32) -> Result<()> {
        let p = self.path(guest);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(&p, contents).with_context(|| format!("writing {}", p.display()))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(mode))?;
        Ok(())
    }

    /// Copies the host file `host` (following symlinks) to the guest path `guest`.
    fn copy(&self, host: &Path, guest: &str) -> Result<()> {
        let p = self.path(guest);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent)?;
        }
        let _ = fs::remove_file(&p);
        fs::copy(host, &p).with_context(|| format!("copying {}", host.display()))?;
        Ok(())
    }

    /// Copies a host program to `guest` with every shared library it needs (per `ldd`, the
    /// dynamic loader included) at the same paths as on the host.
    fn copy_program(&self, host: &Path, guest: &str) -> Result<()> {
        self.copy(host, guest)?;
        for lib in shared_libraries(host)? {
            let g = lib.to_string_lossy().into_owned();
            if !self.exists(&g) {
                self.copy(&lib, &g)?;
            }
        }
        Ok(())
    }
}

/// The absolute paths `ldd` lists for `program` (none for a static one).
fn shared_libraries(program: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(program)
        .output()
        .context("running ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        if text.contains("not a dynamic executable") || out.stdout.is_empty() {
            return Ok(Vec::new());
        }
        bail!("ldd {}: {}", program.display(), out.status);
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)",
        // "/lib64/ld-linux-x86-64.so.2 (0x...)" or "linux-vdso.so.1 (0x...)"
        let line = line.trim();
        if line.contains("=> not found") {
            bail!("ldd {}: {line}", program.display());
        }
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.trim(),
            None => line,
        };
        let path = path.split(" (").next().unwrap_or("").trim();
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

/// Copies Debian's Python (which some e2e tests run as a writer) to the same paths in the guest:
/// the interpreter, its libraries, and its standard library minus the parts no test needs.
fn copy_python(tree: &Tree) -> Result<()> {
    let out = Command::new(PYTHON)
        .args([
            "-c",
            "import os, sys; print(os.path.dirname(os.__file__)); \
             print(os.path.realpath(sys.executable))",
        ])
        .output()
        .with_context(|| format!("running {PYTHON}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let (Some(stdlib), Some(exe), true) = (lines.next(), lines.next(), out.status.success()) else {
        bail!(
            "{PYTHON} did not report its standard library: {}",
            out.status
        );
    };
    tree.copy_program(Path::new(exe), exe)?;
    if exe != PYTHON {
        let name = Path::new(exe).file_name().unwrap_or_default();
        std::os::unix::fs::symlink(name, tree.path(PYTHON))?;
    }
    copy_dir(tree, Path::new(stdlib), PYTHON_STDLIB_SKIP)
}

/// Copies the host directory `dir` (recursively, symlinks as symlinks) to the same path in the
/// guest, leaving out entries named in `skip` (or starting with `config-`), and the shared
/// libraries that any `.so` in it needs.
fn copy_dir(tree: &Tree, dir: &Path, skip: &[&str]) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if skip.contains(&name.as_ref()) || name.starts_with("config-") {
            continue;
        }
        let guest = path.to_string_lossy().into_owned();
        let ty = entry.file_type()?;
        if ty.is_dir() {
            fs::create_dir_all(tree.path(&guest))?;
            copy_dir(tree, &path, skip)?;
        } else if ty.is_symlink() {
            let _ = fs::remove_file(tree.path(&guest));
            std::os::unix::fs::symlink(fs::read_link(&path)?, tree.path(&guest))?;
        } else if name.ends_with(".so") {
            tree.copy_program(&path, &guest)?;
        } else {
            tree.copy(&path, &guest)?;
        }
    }
    Ok(())
}

/// Finds a program in PATH or the sbin directories, as the e2e harness does.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Builds the guest tree for `kernel` under `dir/root` and returns the path of the cpio archive
/// written from it.
fn build_initramfs(
    dir: &Path,
    kernel: &Kernel,
    opts: &Options,
    payload: Option<&Payload>,
    nfs: &Path,
) -> Result<PathBuf> {
    let tree = Tree::new(dir.join("root"))?;

    // Host programs first, so that they win over busybox applets of the same name.
    for (prog, _) in GUEST_TOOLS {
        let host = find_program(prog).ok_or_else(|| anyhow!("`{prog}` not found on the host"))?;
        tree.copy_program(&host, &host.to_string_lossy())?;
    }
    let busybox = find_program("busybox").ok_or_else(|| anyhow!("busybox not found"))?;
    tree.copy_program(&busybox, "/usr/bin/busybox")?;
    let list = Command::new(&busybox).arg("--list").output()?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet.contains('/') {
            continue;
        }
        let taken = [
            "/usr/bin/",
            "/usr/sbin/",
            "/usr/local/bin/",
            "/usr/local/sbin/",
        ]
        .iter()
        .any(|d| tree.exists(&format!("{d}{applet}")));
        if !taken {
            std::os::unix::fs::symlink("busybox", tree.path(&format!("/usr/bin/{applet}")))?;
        }
    }
    copy_python(&tree)?;
    copy_nfs_utils(&tree, nfs)?;
    if let Some(p) = payload {
        for (host, guest) in [
            (&p.syncer, "/opt/syncer/syncer"),
            (&p.e2e, "/opt/syncer/e2e"),
        ] {
            tree.copy_program(host, guest)?;
            // Debug info is most of a debug build's size, and every MiB of initramfs costs boot
            // time under emulation; panic messages keep their file:line without it.
            let _ = Command::new("objcopy")
                .arg("--strip-debug")
                .arg(tree.path(guest))
                .status();
        }
    }

    // /etc: what rsync's daemon (uid/gid = root), setpriv (nobody) and mke2fs look up.
    // `_rpc` is the user rpcbind runs as.
    tree.write(
        "/etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n\
          _rpc:x:100:65534::/run/rpcbind:/bin/false\n",
        0o644,
    )?;
    tree.write("/etc/group", b"root:x:0:\nnogroup:x:65534:\n", 0o644)?;
    tree.write(
        "/etc/nsswitch.conf",
        b"passwd: files\ngroup: files\nshadow: files\nhosts: files\nservices: files\n",
        0o644,
    )?;
    tree.write(
        "/etc/hosts",
        b"127.0.0.1 localhost\n::1 localhost ip6-localhost\n",
        0o644,
    )?;
    tree.write("/etc/hostname", b"syncer-vm\n", 0o644)?;
    // /etc/netconfig and /etc/rpc: what libtirpc (rpcbind, mountd, mount.nfs) reads.
    for host in [
        "/etc/mke2fs.conf",
        "/etc/services",
        "/etc/protocols",
        "/etc/netconfig",
        "/etc/rpc",
    ] {
        if Path::new(host).is_file() {
            tree.copy(Path::new(host), host)?;
        }
    }

    // Kernel modules, decompressed, in dependency order.
    let modules = module_load_order(kernel, GUEST_MODULES)?;
    let mut insmods = String::new();
    for (name, path) in &modules {
        let guest = format!("/lib/modules/{}/{name}.ko", kernel.release);
        let bytes = read_module(path)?;
        tree.write(&guest, &bytes, 0o644)?;
        writeln!(
            insmods,
            "insmod {guest} || echo 'vm-init: insmod {name} failed'"
        )?;
    }

    let command = match &opts.shell_cmd {
        Some(cmd) => cmd.clone(),
        // The guest has the kernel NFS server: its scenarios must run, not skip.
        None => format!(
            "SYNCER_E2E_REQUIRE=1 SYNCER_E2E_REQUIRE_NFS=1 SYNCER_E2E_BIN=/opt/syncer/syncer{} \
             /opt/syncer/e2e --test-threads=1 {}",
            // Passed through, to force the eBPF source's hooks in the guest.
            std::env::var("SYNCER_E2E_EBPF_HOOKS")
                .map(|h| format!(" SYNCER_E2E_EBPF_HOOKS={}", shell_quote(&h)))
                .unwrap_or_default(),
            filter_args(&opts.filter)
        ),
    };
    tree.write(
        "/etc/syncer-vm/cmd",
        format!("{command}\n").as_bytes(),
        0o755,
    )?;
    tree.write("/init", init_script(kernel, &insmods).as_bytes(), 0o755)?;
    tree.write(
        "/etc/inittab",
        b"# busybox init reaps orphaned processes while the run script runs.\n\
          ::sysinit:/etc/syncer-vm/run\n",
        0o644,
    )?;
    tree.write("/etc/syncer-vm/run", run_script(kernel).as_bytes(), 0o755)?;

    let cpio = dir.join("initramfs.cpio");
    write_cpio(&tree.root, &cpio)?;
    Ok(cpio)
}

/// `/init`: mounts, modules and loopback, then hands PID 1 to busybox init (which reaps orphans)
/// to run `/etc/syncer-vm/run`.
fn init_script(kernel: &Kernel, insmods: &str) -> String {
    format!(
        r#"#!/bin/sh
# Generated by `cargo xtask vm-test` for {release}.
export PATH={GUEST_PATH}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=1777,size=90% tmpfs /tmp
mount -t tmpfs -o mode=755 tmpfs /run
mount -t securityfs securityfs /sys/kernel/security
mount -t tracefs nodev /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
{insmods}ip link set lo up
hostname syncer-vm
exec /usr/bin/busybox init
"#,
        release = kernel.release,
    )
}

/// `/etc/syncer-vm/run`: runs the command, prints the exit marker and powers off.
fn run_script(kernel: &Kernel) -> String {
    format!(
        r#"#!/bin/sh
export PATH={GUEST_PATH}
export HOME=/root TMPDIR=/tmp TERM=dumb
export SYNCER_VM_KERNEL={release}
ulimit -n 65536
echo
echo "vm-init: $(uname -r), $(date -u), running /etc/syncer-vm/cmd"
cd /root
/bin/sh /etc/syncer-vm/cmd </dev/null
rc=$?
sync
printf '\n{EXIT_MARKER}%s\n' "$rc"
poweroff -f
"#,
        release = kernel.release,
    )
}

/// The test binary's filter arguments for `--filter A,B`: one per name (libtest runs the tests
/// matching any of them).
fn filter_args(filter: &str) -> String {
    let quoted: Vec<String> = filter
        .split(',')
        .filter(|f| !f.is_empty())
        .map(shell_quote)
        .collect();
    quoted.join(" ")
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// `names` and their dependencies (from each module's `.modinfo` `depends=`), dependencies first,
/// as (module name, host path). Modules built into the kernel are left out.
fn module_load_order(kernel: &Kernel, names: &[&str]) -> Result<Vec<(String, PathBuf)>> {
    let moddir = kernel.root.join("lib/modules").join(&kernel.release);
    let builtin: BTreeSet<String> = fs::read_to_string(moddir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| Some(module_name(Path::new(l).file_name()?.to_str()?)))
        .collect();
    let mut index = BTreeMap::new();
    index_modules(&moddir.join("kernel"), &mut index)?;
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    fn visit(
        name: &str,
        index: &BTreeMap<String, PathBuf>,
        builtin: &BTreeSet<String>,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<(String, PathBuf)>,
    ) -> Result<()> {
        let name = module_name(name);
        if !seen.insert(name.clone()) || builtin.contains(&name) {
            return Ok(());
        }
        let path = index
            .get(&name)
            .ok_or_else(|| anyhow!("kernel module {name} is neither built in nor shipped"))?;
        for dep in module_depends(&read_module(path)?)? {
            visit(&dep, index, builtin, seen, order)?;
        }
        order.push((name, path.clone()));
        Ok(())
    }
    for name in names {
        visit(name, &index, &builtin, &mut seen, &mut order)?;
    }
    Ok(order)
}

/// `loop.ko.xz` -> `loop`, with `-` as `_` (the kernel treats them alike).
fn module_name(file: &str) -> String {
    let base = file.split(".ko").next().unwrap_or(file);
    base.replace('-', "_")
}

fn index_modules(dir: &Path, index: &mut BTreeMap<String, PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            index_modules(&path, index)?;
        } else if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
            if name.contains(".ko") {
                index.insert(module_name(name), path.clone());
            }
        }
    }
    Ok(())
}

/// A module file's contents, decompressed.
fn read_module(path: &Path) -> Result<Vec<u8>> {
    let bytes = fs::read(path)?;
    let name = path.to_string_lossy();
    let tool: &[&str] = if name.ends_with(".xz") {
        &["xz", "-dc"]
    } else if name.ends_with(".zst") {
        &["zstd", "-dcq"]
    } else if name.ends_with(".gz") {
        &["gzip", "-dc"]
    } else {
        return Ok(bytes);
    };
    let out = decompress(tool, &bytes)?;
    if !out.starts_with(b"\x7fELF") {
        bail!("{}: cannot decompress", path.display());
    }
    Ok(out)
}

/// The `depends=` list in an ELF64 module's `.modinfo` section.
fn module_depends(elf: &[u8]) -> Result<Vec<String>> {
    let bad = || anyhow!("not an ELF64 little-endian module");
    let u16_at = |o: usize| -> Result<usize> {
        Ok(u16::from_le_bytes(elf.get(o..o + 2).ok_or_else(bad)?.try_into()?) as usize)
    };
    let u32_at = |o: usize| -> Result<usize> {
        Ok(u32::from_le_bytes(elf.get(o..o + 4).ok_or_else(bad)?.try_into()?) as usize)
    };
    let u64_at = |o: usize| -> Result<usize> {
        Ok(u64::from_le_bytes(elf.get(o..o + 8).ok_or_else(bad)?.try_into()?) as usize)
    };
    if !elf.starts_with(b"\x7fELF\x02\x01") {
        return Err(bad());
    }
    let (shoff, shentsize, shnum, shstrndx) =
        (u64_at(0x28)?, u16_at(0x3a)?, u16_at(0x3c)?, u16_at(0x3e)?);
    let section = |i: usize| -> Result<(usize, &[u8])> {
        let h = shoff + i * shentsize;
        let (name, off, size) = (u32_at(h)?, u64_at(h + 0x18)?, u64_at(h + 0x20)?);
        Ok((name, elf.get(off..off + size).ok_or_else(bad)?))
    };
    let (_, names) = section(shstrndx)?;
    for i in 0..shnum {
        let (name_off, data) = section(i)?;
        let name = names.get(name_off..).unwrap_or_default();
        if name.starts_with(b".modinfo\0") {
            for field in data.split(|&b| b == 0) {
                if let Some(deps) = field.strip_prefix(b"depends=") {
                    return Ok(String::from_utf8_lossy(deps)
                        .split(',')
                        .filter(|d| !d.is_empty())
                        .map(str::to_string)
                        .collect());
                }
            }
            return Ok(Vec::new());
        }
    }
    Ok(Vec::new())
}

/// Writes the tree at `root` as an uncompressed cpio "newc" archive (what the kernel unpacks
/// into its rootfs), owned by root, plus a /dev/console node (needed before devtmpfs is mounted).
fn write_cpio(root: &Path, out: &Path) -> Result<()> {
    let file = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let mut ino = 1u32;
    let mut entry = |w: &mut BufWriter<fs::File>,
                     name: &str,
                     mode: u32,
                     mtime: u32,
                     rdev: (u32, u32),
                     data: &[u8]|
     -> Result<()> {
        ino += 1;
        let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
        let header = format!(
            "070701{ino:08X}{mode:08X}{:08X}{:08X}{nlink:08X}{mtime:08X}{:08X}{:08X}{:08X}\
             {:08X}{:08X}{:08X}{:08X}",
            0,
            0,
            data.len(),
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() + 1,
            0
        );
        w.write_all(header.as_bytes())?;
        w.write_all(name.as_bytes())?;
        w.write_all(&[0])?;
        pad4(w, 110 + name.len() + 1)?;
        w.write_all(data)?;
        pad4(w, data.len())?;
        Ok(())
    };
    let mut stack = vec![root.to_path_buf()];
    let mut paths = Vec::new();
    while let Some(dir) = stack.pop() {
        let mut entries: Vec<PathBuf> = fs::read_dir(&dir)?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()?;
        entries.sort();
        for p in entries {
            let md = p.symlink_metadata()?;
            if md.is_dir() {
                stack.push(p.clone());
            }
            paths.push((p, md));
        }
    }
    // Parents before children: sort by path (a parent is a prefix of its children).
    paths.sort_by(|a, b| a.0.cmp(&b.0));
    for (p, md) in paths {
        let name = p.strip_prefix(root)?.to_string_lossy().into_owned();
        let mtime = md.mtime().max(0) as u32;
        if md.file_type().is_symlink() {
            let target = fs::read_link(&p)?;
            entry(
                &mut w,
                &name,
                md.mode(),
                mtime,
                (0, 0),
                target.as_os_str().as_encoded_bytes(),
            )?;
        } else if md.is_dir() {
            entry(&mut w, &name, md.mode(), mtime, (0, 0), &[])?;
        } else {
            let data = fs::read(&p)?;
            entry(&mut w, &name, md.mode(), mtime, (0, 0), &data)?;
        }
    }
    entry(&mut w, "dev/console", 0o020600, 0, (5, 1), &[])?;
    entry(&mut w, "dev/null", 0o020666, 0, (1, 3), &[])?;
    entry(&mut w, "TRAILER!!!", 0, 0, (0, 0), &[])?;
    w.flush()?;
    Ok(())
}

fn pad4(w: &mut impl Write, len: usize) -> Result<()> {
    let pad = (4 - len % 4) % 4;
    w.write_all(&[0u8; 3][..pad])?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Running a VM

/// Builds the initramfs for `kernel`, boots it, streams the console to stdout, and returns Ok
/// when the guest reported exit code 0.
fn run_in_vm(
    cache: &Path,
    kernel: &Kernel,
    opts: &Options,
    payload: Option<&Payload>,
    nfs: &Path,
    timeout: Duration,
) -> Result<()> {
    remove_stale_work_dirs(&cache.join("work"));
    let work = cache
        .join("work")
        .join(format!("{}-{}", kernel.release, std::process::id()));
    fs::create_dir_all(&work)?;
    let result = (|| {
        let t = Instant::now();
        let cpio = build_initramfs(&work, kernel, opts, payload, nfs)?;
        let size = fs::metadata(&cpio)?.len();
        eprintln!(
            "vm-test: booting {} ({} {}), initramfs {} MiB built in {:.1} s",
            kernel.release,
            kernel.package,
            kernel.package_version,
            size >> 20,
            t.elapsed().as_secs_f64()
        );
        boot(kernel, &cpio, &work.join("console.log"), timeout)
    })();
    if opts.keep {
        let _ = fs::write(work.join("keep"), b"");
        eprintln!("vm-test: kept {}", work.display());
    } else {
        let _ = fs::remove_dir_all(&work);
    }
    result
}

/// Removes the work directories (`<release>-<pid>`) of runs whose process is gone and that were
/// not kept with `--keep` (those have a `keep` file).
fn remove_stale_work_dirs(work: &Path) {
    let Ok(entries) = fs::read_dir(work) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.rsplit('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        // SAFETY: kill with signal 0 only checks whether the process exists.
        let gone = unsafe { libc::kill(pid, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone && !entry.path().join("keep").exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

fn boot(kernel: &Kernel, cpio: &Path, log: &Path, timeout: Duration) -> Result<()> {
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg,thread=multi", "-cpu", "max"])
        .args(["-smp", GUEST_CPUS, "-m", GUEST_MEM])
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(&kernel.vmlinux)
        .arg("-initrd")
        .arg(cpio)
        .args(["-append", KERNEL_CMDLINE])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let started = Instant::now();
    let exit_code = Arc::new(Mutex::new(None::<i32>));
    let first_line = Arc::new(Mutex::new(None::<Duration>));
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut log = fs::File::create(log)?;
    let reader = {
        let (exit_code, first_line) = (exit_code.clone(), first_line.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            let mut line = Vec::new();
            let mut escape = Escape::None;
            let mut out = std::io::stdout();
            loop {
                let n = match stdout.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                for &b in &buf[..n] {
                    // Drop carriage returns and the firmware's terminal escapes (`ESC c`,
                    // `ESC [ ... letter`), which only clutter logs.
                    match (escape, b) {
                        (_, b'\r') => continue,
                        (Escape::None, 0x1b) => escape = Escape::Start,
                        (Escape::None, _) => line.push(b),
                        (Escape::Start, b'[') => escape = Escape::Csi,
                        (Escape::Start, _) => escape = Escape::None,
                        (Escape::Csi, b'@'..=b'~') => escape = Escape::None,
                        (Escape::Csi, _) => {}
                    }
                    if escape != Escape::None {
                        continue;
                    }
                    if b == b'\n' {
                        let _ = out.write_all(&line);
                        let _ = log.write_all(&line);
                        let text = String::from_utf8_lossy(&line);
                        if text.contains("running /etc/syncer-vm/cmd") {
                            first_line.lock().unwrap().get_or_insert(started.elapsed());
                        }
                        if let Some(code) = text.trim().strip_prefix(EXIT_MARKER) {
                            *exit_code.lock().unwrap() = code.parse().ok();
                        }
                        line.clear();
                    }
                }
                let _ = out.flush();
            }
            let _ = out.write_all(&line);
            let _ = log.write_all(&line);
        })
    };
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            let _ = reader.join();
            bail!(
                "timed out after {} s (SYNCER_VM_TIMEOUT); qemu killed",
                timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = reader.join();
    if let Some(boot) = *first_line.lock().unwrap() {
        eprintln!(
            "vm-test: {}: guest userland up after {:.1} s, qemu exited after {:.1} s",
            kernel.release,
            boot.as_secs_f64(),
            started.elapsed().as_secs_f64()
        );
    }
    let code = *exit_code.lock().unwrap();
    match code {
        Some(0) => Ok(()),
        Some(code) => bail!("the command failed in the guest with exit code {code}"),
        None => bail!(
            "the guest stopped without reporting an exit code (qemu: {status}); see the console \
             output above"
        ),
    }
}

/// Where the console reader is in a terminal escape sequence.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Escape {
    None,
    Start,
    Csi,
}

fn run(cmd: &mut Command) -> Result<()> {
    let st = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed: {st}");
    }
    Ok(())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

// ---------------------------------------------------------------------------------------------
// A minimal JSON reader for cargo's `--message-format=json` lines (xtask has no serde).

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_reads_a_cargo_artifact_line() {
        let line = r#"{"reason":"compiler-artifact","target":{"kind":["test"],"name":"e2e","test":true},"profile":{"opt_level":"0","debuginfo":2,"test":true},"features":[],"executable":"/x/target/debug/deps/e2e-1\"2","fresh":true,"n":null}"#;
        let j: Json = serde_json::from_str(line).unwrap();
        assert_eq!(target_name(j.get("target").unwrap()), Some("e2e"));
        assert!(target_has_kind(j.get("target").unwrap(), "test"));
        assert_eq!(j["profile"]["test"].as_bool(), Some(true));
        assert_eq!(
            j.get("executable").and_then(Json::as_str),
            Some("/x/target/debug/deps/e2e-1\"2")
        );
    }

    #[test]
    fn newest_compares_numbers() {
        let names = [
            "linux-image-6.12.9+deb12-cloud-amd64-unsigned".to_string(),
            "linux-image-6.12.117+deb12-cloud-amd64-unsigned".to_string(),
            "linux-image-6.12.38+bpo-cloud-amd64-unsigned".to_string(),
        ];
        assert_eq!(
            newest(&names).as_deref(),
            Some("linux-image-6.12.117+deb12-cloud-amd64-unsigned")
        );
        assert_eq!(module_name("dm-mod.ko.xz"), "dm_mod");
    }

    #[test]
    fn shell_quote_quotes() {
        assert_eq!(shell_quote("a'b"), r"'a'\''b'");
    }
}
