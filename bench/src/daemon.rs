//! The rsync daemon every tool replicates to: `rsync --daemon --no-detach` on 127.0.0.1 with one
//! writable module (`bench`) whose path is the target filesystem. Its log has one "connect from"
//! line per client session, which is how the bench counts the rsync runs of every tool exactly.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::sys::{self, mono_ns, Proc};

pub struct RsyncDaemon {
    proc: Proc,
    port: u16,
    log: PathBuf,
}

impl RsyncDaemon {
    /// Starts a daemon serving `path` as module `bench`; config and log go to `dir`.
    pub fn start(dir: &Path, path: &Path) -> Result<RsyncDaemon> {
        let port = free_port()?;
        let conf = dir.join("rsyncd.conf");
        let log = dir.join("rsyncd.log");
        let _ = std::fs::remove_file(&log);
        std::fs::write(
            &conf,
            format!(
                "use chroot = no\nuid = root\ngid = root\nmax connections = 0\n\
                 log file = {}\n\n[bench]\n    path = {}\n    read only = false\n",
                log.display(),
                path.display()
            ),
        )
        .context("write rsyncd.conf")?;
        let proc = Proc::spawn(
            "rsync daemon",
            Command::new("rsync")
                .arg("--daemon")
                .arg("--no-detach")
                .arg(format!("--config={}", conf.display()))
                .arg(format!("--port={port}"))
                .arg("--address=127.0.0.1")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )?;
        let mut d = RsyncDaemon { proc, port, log };
        let end = mono_ns() + 10_000_000_000;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        loop {
            sys::check_interrupt()?;
            if d.proc.exited() {
                bail!("rsync daemon exited at start; see {}", d.log.display());
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                break;
            }
            if mono_ns() > end {
                bail!("rsync daemon did not listen on port {port} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(d)
    }

    pub fn url(&self) -> String {
        format!("rsync://127.0.0.1:{}/bench/", self.port)
    }

    pub fn pid(&self) -> i32 {
        self.proc.pid
    }

    /// Bytes the daemon received from clients so far (its `sent N bytes  received N bytes`
    /// line at the end of each session).
    pub fn received_bytes(&self) -> u64 {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(" received ").nth(1))
            .filter_map(|r| r.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    }

    /// Client sessions so far (the probe connection at start-up included).
    pub fn connections(&self) -> u64 {
        std::fs::read_to_string(&self.log)
            .map(|s| s.matches("connect from").count() as u64)
            .unwrap_or(0)
    }
}

impl Drop for RsyncDaemon {
    fn drop(&mut self) {
        self.proc.stop(libc::SIGTERM, true, Duration::from_secs(3));
    }
}

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("bind a probe port")?;
    Ok(l.local_addr()?.port())
}
