//! `cargo xtask build-ebpf [--check]`: builds the BPF object from `syncer-ebpf/` and installs it
//! as `syncer/src/source/ebpf/syncer.bpf.o`, which syncer embeds (so that syncer itself builds
//! on stable Rust, without nightly or bpf-linker). `--check` builds into a scratch directory and
//! fails if the committed object differs: CI runs it, so the object cannot drift from its
//! source.
//!
//! Needs the nightly toolchain with rust-src and bpf-linker 0.13.0 built against nightly's
//! LLVM; both are installed here when missing (the recipe of ../shared/notes/platform.md).
//! The crates are built from a fixed staging path, so that the object does not depend on where
//! the repository lives.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

const BPF_LINKER_VERSION: &str = "0.13.0";
const OBJECT: &str = "syncer/src/source/ebpf/syncer.bpf.o";

fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// `rustup run nightly <program>`, without the stable toolchain's environment.
fn nightly(program: &str) -> Command {
    let mut c = Command::new("rustup");
    c.args(["run", "nightly", program]);
    for v in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTDOC",
        "RUSTC_WRAPPER",
        "CARGO",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
    ] {
        c.env_remove(v);
    }
    c
}

fn run(c: &mut Command, what: &str) -> Result<String> {
    let out = c.output().with_context(|| format!("run {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

/// Installs what the build needs, or says what is missing.
fn ensure_toolchain() -> Result<()> {
    let sysroot = run(nightly("rustc").args(["--print", "sysroot"]), "rustc +nightly")
        .context("the nightly toolchain is needed to build the BPF object (rustup toolchain install nightly)")?;
    let sysroot = PathBuf::from(sysroot.trim());
    if !sysroot.join("lib/rustlib/src/rust/library/core").exists() {
        eprintln!("xtask: adding rust-src to the nightly toolchain");
        run(
            Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]),
            "rustup component add rust-src",
        )?;
    }
    let linker = cargo_home().join("bin/bpf-linker");
    let current = Command::new(&linker)
        .env("LD_LIBRARY_PATH", sysroot.join("lib"))
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION));
    if current {
        return Ok(());
    }
    // bpf-linker against the LLVM that the nightly toolchain ships (no system LLVM needed).
    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against nightly's LLVM (about a minute)"
    );
    let llvm = std::fs::read_dir(sysroot.join("lib"))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so.") && n.ends_with("-nightly"))
        })
        .context("nightly ships no libLLVM.so.*-nightly")?;
    let prefix = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
        .join(".cache/rust-llvm");
    std::fs::create_dir_all(prefix.join("lib"))?;
    // Under both names: the build looks for libLLVM.so, the linker at run time (through its
    // rpath) for the library's own soname.
    for name in [
        std::ffi::OsStr::new("libLLVM.so"),
        llvm.file_name().unwrap_or_default(),
    ] {
        let link = prefix.join("lib").join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&llvm, &link)?;
    }
    let mut c = Command::new("cargo");
    c.env_remove("RUSTUP_TOOLCHAIN")
        .env("LLVM_PREFIX", &prefix)
        .env(
            "RUSTFLAGS",
            format!("-C link-arg=-Wl,-rpath,{}", prefix.join("lib").display()),
        )
        .args([
            "install",
            "bpf-linker",
            "--locked",
            "--version",
            BPF_LINKER_VERSION,
        ])
        .args(["--no-default-features", "--features", "llvm-22"]);
    let st = c.status().context("cargo install bpf-linker")?;
    if !st.success() {
        bail!("cargo install bpf-linker failed");
    }
    Ok(())
}

/// Where the BPF crates are copied to be built. Cargo hashes a path dependency's location into
/// its symbol names, which end up in the object's BTF: built in place, the object would differ
/// between checkouts. Built from this fixed path, it is the same everywhere.
const STAGE: &str = "/var/tmp/syncer-ebpf-build";

/// Copies `from` to `to`, leaving out `target/` directories.
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if e.file_type()?.is_dir() {
            if e.file_name() != "target" {
                copy_tree(&src, &dst)?;
            }
        } else {
            std::fs::copy(&src, &dst).with_context(|| format!("copy {}", src.display()))?;
        }
    }
    Ok(())
}

/// Builds the object into `target_dir` and returns its path.
fn build(target_dir: &Path) -> Result<PathBuf> {
    let root = repo_root();
    let stage = Path::new(STAGE);
    let _ = std::fs::remove_dir_all(stage);
    for krate in ["syncer-ebpf", "syncer-ebpf-abi"] {
        copy_tree(&root.join(krate), &stage.join(krate))?;
    }
    // CARGO_ENCODED_RUSTFLAGS separates flags with 0x1f. --btf: bpf-linker emits BTF only when
    // asked; the kernel needs its func_info for the bpf_loop callback, and aya for the fentry
    // programs. The remaps keep the staging and cargo home paths out of the debug info.
    let flags = format!(
        "-Clink-arg=--btf\x1f--remap-path-prefix={STAGE}=/syncer\x1f--remap-path-prefix={}=/cargo",
        cargo_home().display()
    );
    let mut c = nightly("cargo");
    c.current_dir(stage.join("syncer-ebpf"))
        .env("CARGO_ENCODED_RUSTFLAGS", flags)
        .env("PATH", path_with_cargo_bin())
        .args(["build", "--release", "--locked", "-Z", "build-std=core"])
        .args(["--target", "bpfel-unknown-none", "--target-dir"])
        .arg(target_dir);
    let st = c.status().context("cargo +nightly build (syncer-ebpf)")?;
    if !st.success() {
        bail!("building syncer-ebpf failed");
    }
    Ok(target_dir.join("bpfel-unknown-none/release/syncer"))
}

/// PATH with cargo's bin directory first, where bpf-linker is installed.
fn path_with_cargo_bin() -> std::ffi::OsString {
    let mut paths = vec![cargo_home().join("bin")];
    if let Some(p) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&p));
    }
    std::env::join_paths(paths).unwrap_or_default()
}

pub fn build_ebpf(rest: &[String]) -> Result<()> {
    let check = rest.iter().any(|a| a == "--check");
    ensure_toolchain()?;
    let root = repo_root();
    let committed = root.join(OBJECT);
    if check {
        let scratch =
            std::env::temp_dir().join(format!("syncer-ebpf-check-{}", std::process::id()));
        let built = build(&scratch)?;
        let same = std::fs::read(&built)? == std::fs::read(&committed).unwrap_or_default();
        let _ = std::fs::remove_dir_all(&scratch);
        if !same {
            bail!(
                "{OBJECT} is out of date with syncer-ebpf/ (or syncer-ebpf-abi/): run \
                 `cargo xtask build-ebpf` and commit the object"
            );
        }
        eprintln!("xtask: {OBJECT} matches its source");
        return Ok(());
    }
    let built = build(&root.join("target/ebpf"))?;
    std::fs::copy(&built, &committed)
        .with_context(|| format!("install {}", committed.display()))?;
    eprintln!(
        "xtask: installed {OBJECT} ({} bytes)",
        std::fs::metadata(&committed)?.len()
    );
    Ok(())
}
