//! Project tasks that need more than cargo: `cargo xtask bench` runs the load bench
//! (`bench/`) against the real binary. Invoked through the `xtask` alias in .cargo/config.toml.

use std::process::Command;

use anyhow::{bail, Context, Result};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let task = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    match task.as_str() {
        "bench" => bench(&rest),
        _ => {
            eprintln!("usage: cargo xtask bench [ARGS...]");
            bail!("unknown task {task:?}")
        }
    }
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// Builds syncer and the bench in release mode, then runs the bench with `rest`.
fn bench(rest: &[String]) -> Result<()> {
    let st = cargo()
        .args(["build", "--release", "-p", "syncer", "-p", "syncer-bench"])
        .status()
        .context("cargo build")?;
    if !st.success() {
        bail!("build failed");
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
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
