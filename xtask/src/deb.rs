//! `cargo xtask deb [--check]`: the Debian package. Builds syncer (release), has it write its
//! man pages and shell completions (`syncer generate-docs`), and packs them with the binary,
//! the units and the example config by cargo-deb (installed when missing), into
//! `target/debian/`. With `--check`: installs the package with `dpkg -i` into a clean
//! Debian root (debootstrap, minbase, with rsync; kept under `target/deb-root-cache` as a
//! tarball so a second run does not fetch it again) and runs `syncer --version` there.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: {cmd:?}");
    let st = cmd.status().with_context(|| format!("run {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed ({st})");
    }
    Ok(())
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"))
}

pub fn deb(rest: &[String]) -> Result<()> {
    let check = rest.iter().any(|a| a == "--check");
    run(Command::new("cargo").args(["build", "--release", "--locked", "-p", "syncer"]))?;
    let target = target_dir();
    let bin = target.join("release/syncer");
    run(Command::new(&bin)
        .arg("generate-docs")
        .arg(target.join("release/syncer-docs")))?;
    let have_deb = Command::new("cargo")
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_deb {
        run(Command::new("cargo").args(["install", "cargo-deb", "--locked"]))?;
    }
    run(Command::new("cargo").args(["deb", "-p", "syncer", "--no-build"]))?;
    let debs: Vec<PathBuf> = std::fs::read_dir(target.join("debian"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    let deb = debs
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .context("cargo deb wrote no .deb")?;
    eprintln!("xtask: {}", deb.display());
    if check {
        check_install(&deb, &target)?;
    }
    Ok(())
}

/// `dpkg -i` into a clean Debian root, then the binary, its man page and a unit there.
fn check_install(deb: &Path, target: &Path) -> Result<()> {
    let cache = target.join("deb-root-cache/bookworm-minbase.tar");
    let work = target.join("deb-root");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    if !cache.exists() {
        if Command::new("sh")
            .args(["-c", "command -v debootstrap"])
            .output()
            .map_or(true, |o| !o.status.success())
        {
            run(Command::new("apt-get").args(["install", "-y", "-qq", "debootstrap"]))?;
        }
        run(Command::new("debootstrap")
            .args(["--variant=minbase", "--include=rsync", "bookworm"])
            .arg(&work)
            .arg("http://deb.debian.org/debian"))?;
        std::fs::create_dir_all(cache.parent().unwrap())?;
        run(Command::new("tar")
            .arg("-C")
            .arg(&work)
            .arg("-cf")
            .arg(&cache)
            .arg("."))?;
    } else {
        run(Command::new("tar")
            .arg("-C")
            .arg(&work)
            .arg("-xf")
            .arg(&cache))?;
    }
    std::fs::copy(deb, work.join("syncer.deb"))?;
    run(Command::new("chroot")
        .arg(&work)
        .args(["dpkg", "-i", "/syncer.deb"]))?;
    let out = Command::new("chroot")
        .arg(&work)
        .args(["syncer", "--version"])
        .output()?;
    let version = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !version.starts_with("syncer ") {
        bail!(
            "syncer --version in the clean root: {version}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for f in [
        "lib/systemd/system/syncer.service",
        "lib/systemd/system/syncer@.service",
        "usr/share/man/man1/syncer.1",
        "usr/share/man/man1/syncer-run.1",
        "usr/share/bash-completion/completions/syncer",
        "usr/share/doc/syncer/examples/syncer.toml",
    ] {
        if !work.join(f).exists() {
            bail!("the package did not install /{f}");
        }
    }
    eprintln!(
        "xtask: the package installs on a clean Debian root: {}",
        version.trim()
    );
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
