//! Project tasks that need more than cargo, invoked through the `xtask` alias in
//! .cargo/config.toml:
//! - `cargo xtask test`: installs what the end-to-end tests need (Debian packages, as root) and
//!   runs the whole test suite. This is the README's test command and what `.ci/run` runs.
//! - `cargo xtask bench`: runs the load bench (`bench/`) against the real binary.
//! - `cargo xtask build-ebpf [--check]`: builds the BPF object that syncer embeds, or checks
//!   that the committed one is current (see `ebpf.rs`).
//! - `cargo xtask vm-test`: runs the end-to-end tests inside qemu VMs booting stock Debian
//!   kernels (6.1, 6.12), where fentry/LSM eBPF programs load (see `vm.rs`).
//! - `cargo xtask deb [--check]`: the Debian package, checked by `dpkg -i` into a clean
//!   Debian root (see `deb.rs`).

mod deb;
mod ebpf;
mod vm;

use std::process::Command;

use anyhow::{bail, Context, Result};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let task = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    match task.as_str() {
        "test" => test(&rest),
        "bench" => bench(&rest),
        "vm-test" => vm::vm_test(&rest),
        "build-ebpf" => ebpf::build_ebpf(&rest),
        "deb" => deb::deb(&rest),
        _ => {
            eprintln!(
                "usage: cargo xtask test [-- TEST-ARGS...] | cargo xtask bench [ARGS...] | \
                 cargo xtask build-ebpf [--check] | cargo xtask deb [--check] | \
                 cargo xtask vm-test [--kernel 6.1|6.12|all] [--filter SUBSTRING] [--keep] \
                 [--shell-cmd CMD]"
            );
            bail!("unknown task {task:?}")
        }
    }
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// Builds syncer and the bench in release mode, then runs the bench with `rest` (see
/// bench/README.md; `--quick` for the short run). Installs the peers it compares against first.
fn bench(rest: &[String]) -> Result<()> {
    ensure_tools(BENCH_TOOLS)?;
    let st = cargo()
        .args(["build", "--release", "-p", "syncer", "-p", "syncer-bench"])
        .status()
        .context("cargo build")?;
    if !st.success() {
        bail!("build failed");
    }
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = manifest.parent().unwrap_or(manifest);
    let st = Command::new(root.join("target/release/syncer-bench"))
        .arg("--syncer")
        .arg(root.join("target/release/syncer"))
        .args(rest)
        .status()
        .context("run syncer-bench")?;
    if !st.success() {
        bail!("bench failed");
    }
    Ok(())
}

/// Programs the tests run, and the Debian package of each.
const TEST_TOOLS: &[(&str, &str)] = &[
    ("rsync", "rsync"),
    ("mkfs.ext4", "e2fsprogs"),
    ("mount", "mount"),
    ("setpriv", "util-linux"),
    ("python3", "python3"),
    // A real systemd as PID 1 of a container (the fd store scenario).
    ("systemd-nspawn", "systemd-container"),
    ("nsenter", "util-linux"),
    // A real sshd on 127.0.0.1 for the ssh target scenario.
    ("/usr/sbin/sshd", "openssh-server"),
    // nfs-ganesha with its VFS backend and rpcbind, and libnfs for the client (ganesha.rs).
    ("ganesha.nfsd", "nfs-ganesha"),
    (
        "/usr/lib/x86_64-linux-gnu/ganesha/libfsalvfs.so",
        "nfs-ganesha-vfs",
    ),
    ("rpcbind", "rpcbind"),
    ("/usr/lib/x86_64-linux-gnu/libnfs.so.13", "libnfs13"),
    ("ip", "iproute2"),
    // The OpenMetrics parser the metrics scenario checks scrapes with (Debian's python3's).
    (
        "/usr/lib/python3/dist-packages/prometheus_client/__init__.py",
        "python3-prometheus-client",
    ),
];

/// What the bench runs besides syncer, and the Debian package of each.
const BENCH_TOOLS: &[(&str, &str)] = &[
    ("rsync", "rsync"),
    ("mkfs.ext4", "e2fsprogs"),
    ("mount", "mount"),
    ("lsyncd", "lsyncd"),
    ("inotifywait", "inotify-tools"),
];

/// Whether `program` is on the PATH (or, given as an absolute path, exists).
fn have(program: &str) -> bool {
    if program.starts_with('/') {
        return std::path::Path::new(program).exists();
    }
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs missing tools with apt-get when running as root; otherwise says what is missing
/// (the tests or bench rows that need it then fail or skip with a message).
fn ensure_tools(tools: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = tools
        .iter()
        .filter(|(prog, _)| !have(prog))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root || !have("apt-get") {
        eprintln!(
            "xtask: missing tools (packages: {}); install them first",
            missing.join(" ")
        );
        return Ok(());
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    let ok = Command::new("apt-get")
        .args(["update", "-qq"])
        .status()?
        .success()
        && Command::new("apt-get")
            .args(["install", "-y", "-qq"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()?
            .success();
    if !ok {
        bail!("apt-get install {} failed", missing.join(" "));
    }
    Ok(())
}

/// The whole test suite: unit tests and the end-to-end tests against real processes. The
/// end-to-end tests must run: `SYNCER_E2E_REQUIRE=1` makes a machine where they cannot (not
/// root, no loop devices, a tool missing, a binary without failpoints) fail instead of skip.
fn test(rest: &[String]) -> Result<()> {
    ensure_tools(TEST_TOOLS)?;
    let st = cargo()
        .args([
            "test",
            "--workspace",
            "--locked",
            "--features",
            "syncer/failpoints",
        ])
        .env("SYNCER_E2E_REQUIRE", "1")
        .args(rest)
        .status()
        .context("cargo test")?;
    if !st.success() {
        bail!("tests failed");
    }
    Ok(())
}
