//! The tools under test and how each one is started, recognised as ready, and stopped:
//! syncer (`run --source-kind fanotify|inotify`), lsyncd (`default.rsync` to the daemon, with
//! delay=1 and with its default delay of 15 s), the classic inotifywait+rsync script from the
//! operators' blog posts, and one-shot `rsync -a` (the bulk reference, run by the bench itself).

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::sys::{mono_ns, Exit, Proc, Tap};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tool {
    SyncerFanotify,
    SyncerInotify,
    /// Not built yet: listed so that the table says so.
    SyncerEbpf,
    LsyncdD1,
    LsyncdD15,
    Script,
    RsyncBulk,
}

pub const ALL: [Tool; 7] = [
    Tool::SyncerFanotify,
    Tool::SyncerInotify,
    Tool::SyncerEbpf,
    Tool::LsyncdD1,
    Tool::LsyncdD15,
    Tool::Script,
    Tool::RsyncBulk,
];

impl Tool {
    pub fn id(self) -> &'static str {
        match self {
            Tool::SyncerFanotify => "syncer-fanotify",
            Tool::SyncerInotify => "syncer-inotify",
            Tool::SyncerEbpf => "syncer-ebpf",
            Tool::LsyncdD1 => "lsyncd-d1",
            Tool::LsyncdD15 => "lsyncd-d15",
            Tool::Script => "script",
            Tool::RsyncBulk => "rsync-bulk",
        }
    }

    /// The name shown in the tables.
    pub fn label(self) -> &'static str {
        match self {
            Tool::SyncerFanotify => "syncer (fanotify)",
            Tool::SyncerInotify => "syncer (inotify)",
            Tool::SyncerEbpf => "syncer (ebpf)",
            Tool::LsyncdD1 => "lsyncd delay=1",
            Tool::LsyncdD15 => "lsyncd delay=15 (default)",
            Tool::Script => "inotifywait+rsync script",
            Tool::RsyncBulk => "rsync -a one-shot (bulk reference)",
        }
    }

    pub fn parse(s: &str) -> Result<Tool> {
        ALL.into_iter().find(|t| t.id() == s).ok_or_else(|| {
            let ids: Vec<_> = ALL.iter().map(|t| t.id()).collect();
            anyhow::anyhow!("unknown tool {s:?} (one of {})", ids.join(", "))
        })
    }

    pub fn is_syncer(self) -> bool {
        matches!(
            self,
            Tool::SyncerFanotify | Tool::SyncerInotify | Tool::SyncerEbpf
        )
    }

    /// The line that says the event source is armed.
    pub fn live_marker(self) -> &'static str {
        match self {
            t if t.is_syncer() => "event source live",
            // lsyncd adds its inotify watches for the whole tree during initialisation and
            // starts the startup rsync in its first cycle, after that.
            Tool::LsyncdD1 | Tool::LsyncdD15 => "recursive startup rsync",
            _ => "Watches established.",
        }
    }

    /// The line that says the initial sync is done and events are being replicated.
    pub fn ready_marker(self) -> &'static str {
        match self {
            t if t.is_syncer() => "initial sync finished",
            Tool::LsyncdD1 | Tool::LsyncdD15 => "Startup of",
            _ => "Watches established.",
        }
    }
}

impl fmt::Display for Tool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

/// syncer's log filter: `info` (its markers are info lines), or `SYNCER_BENCH_RUST_LOG` (e.g.
/// `syncer=debug` to log every batch into the run's log directory).
pub fn syncer_log_filter() -> String {
    std::env::var("SYNCER_BENCH_RUST_LOG").unwrap_or_else(|_| "info".into())
}

/// Where a tool runs.
pub struct Env<'a> {
    pub syncer: &'a Path,
    pub source: &'a Path,
    pub url: &'a str,
    /// Directory for this run's config and logs.
    pub dir: &'a Path,
    /// syncer: run the initial sync at start.
    pub initial_sync: bool,
    /// syncer: `--full-resync` (the full pass, the state's index not trusted).
    pub full_resync: bool,
}

/// A started tool.
pub struct Running {
    pub tool: Tool,
    pub proc: Proc,
    /// The stream carrying the markers (stderr for syncer and the script, stdout for lsyncd).
    pub tap: Tap,
    /// The other stream, only logged.
    pub other: Tap,
    pub t_spawn: u64,
}

const SYNCER_PATTERNS: &[&str] = &[
    "event source live",
    "initial sync finished",
    "pool finished",
    " WARN ",
    " ERROR ",
];
const LSYNCD_PATTERNS: &[&str] = &["recursive startup rsync", "Startup of", "Error"];
const SCRIPT_PATTERNS: &[&str] = &["Watches established.", "rsync error", "rsync:"];

fn lsyncd_config(env: &Env, delay: u32) -> Result<PathBuf> {
    let path = env.dir.join("lsyncd.conf.lua");
    std::fs::write(
        &path,
        format!(
            "settings {{\n    nodaemon = true,\n    statusFile = \"{}/lsyncd.status\",\n}}\n\
             sync {{\n    default.rsync,\n    source = \"{}\",\n    target = \"{}\",\n    \
             delay = {delay},\n    rsync = {{ archive = true }},\n}}\n",
            env.dir.display(),
            env.source.display(),
            env.url
        ),
    )?;
    Ok(path)
}

/// The script from the blog posts, as operators copy it: every event line runs a whole-tree
/// `rsync -az --delete`. `-q` is dropped (only that) so that inotifywait says when its watches
/// are set up; the event lines on stdout are the same.
pub fn script_text(source: &Path, url: &str) -> String {
    format!(
        "inotifywait -mr --format '%w%f' -e create,close_write,delete,moved_to '{src}' \
         | while read line; do rsync -az --delete '{src}/' '{url}'; done",
        src = source.display()
    )
}

/// Starts `tool`; returns once it has been spawned (wait for its markers with `tap`).
pub fn start(tool: Tool, env: &Env) -> Result<Running> {
    let mut cmd = match tool {
        Tool::SyncerFanotify | Tool::SyncerInotify | Tool::SyncerEbpf => {
            let kind = match tool {
                Tool::SyncerFanotify => "fanotify",
                Tool::SyncerInotify => "inotify",
                _ => "ebpf",
            };
            let mut c = Command::new(env.syncer);
            c.arg("run")
                .arg("--source")
                .arg(env.source)
                .arg("--target")
                .arg(env.url)
                .arg("--source-kind")
                .arg(kind)
                .env("RUST_LOG", syncer_log_filter());
            // Each run its own state (a restart within the run finds it again): rows never
            // inherit another row's index. SYNCER_BENCH_NO_STATE=1 leaves the flag out, to
            // measure a syncer from before the state existed against today's.
            if std::env::var_os("SYNCER_BENCH_NO_STATE").is_none() {
                c.arg("--state-dir").arg(env.dir.join("syncer-state"));
            }
            if !env.initial_sync {
                c.arg("--no-initial-sync");
            }
            if env.full_resync {
                c.arg("--full-resync");
            }
            c
        }
        Tool::LsyncdD1 | Tool::LsyncdD15 => {
            let conf = lsyncd_config(env, if tool == Tool::LsyncdD1 { 1 } else { 15 })?;
            let mut c = Command::new("lsyncd");
            c.arg(conf);
            c
        }
        Tool::Script => {
            let mut c = Command::new("bash");
            c.arg("-c").arg(script_text(env.source, env.url));
            c
        }
        Tool::RsyncBulk => bail!("rsync-bulk is run by the bench, not started as a daemon"),
    };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .current_dir(env.dir);
    let t_spawn = mono_ns();
    let (proc, mut child) = Proc::spawn_with(tool.id(), &mut cmd)?;
    let out = child.stdout.take().expect("piped stdout");
    let err = child.stderr.take().expect("piped stderr");
    let (out_log, err_log) = (
        env.dir.join(format!("{}.stdout.log", tool.id())),
        env.dir.join(format!("{}.stderr.log", tool.id())),
    );
    let (tap, other) = match tool {
        Tool::LsyncdD1 | Tool::LsyncdD15 => (
            Tap::new(out, &out_log, LSYNCD_PATTERNS)?,
            Tap::new(err, &err_log, &[])?,
        ),
        Tool::Script => (
            Tap::new(err, &err_log, SCRIPT_PATTERNS)?,
            Tap::new(out, &out_log, &[])?,
        ),
        _ => (
            Tap::new(err, &err_log, SYNCER_PATTERNS)?,
            Tap::new(out, &out_log, &[])?,
        ),
    };
    Ok(Running {
        tool,
        proc,
        tap,
        other,
        t_spawn,
    })
}

/// How a tool's stop went.
pub struct Stopped {
    pub exit: Exit,
    pub killed: bool,
    /// syncer's own count from its `pool finished ... rsync_spawned=N` line.
    pub rsync_spawned: Option<u64>,
    /// Warning and error lines it logged.
    pub warnings: Vec<String>,
}

impl Running {
    /// Stops the tool the way its operator would: syncer gets SIGTERM and drains; lsyncd gets
    /// SIGTERM; the script's whole process group gets SIGTERM.
    pub fn stop(mut self, grace: Duration) -> Stopped {
        let group = self.tool == Tool::Script;
        let (exit, killed) = self.proc.stop(libc::SIGTERM, group, grace);
        self.tap.finish(Duration::from_secs(2));
        self.other.finish(Duration::from_secs(1));
        let rsync_spawned = self
            .tap
            .lines_with("pool finished")
            .iter()
            .filter_map(|l| l.split("rsync_spawned=").nth(1))
            .filter_map(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .reduce(|a, b| a + b);
        let warn_patterns: &[&str] = match self.tool {
            Tool::LsyncdD1 | Tool::LsyncdD15 => &["Error"],
            Tool::Script => &["rsync error", "rsync:"],
            _ => &[" WARN ", " ERROR "],
        };
        let mut warnings: Vec<String> = Vec::new();
        for p in warn_patterns {
            for l in self.tap.lines_with(p) {
                if warnings.len() < 20 && !warnings.contains(&l) {
                    warnings.push(l);
                }
            }
        }
        Stopped {
            exit,
            killed,
            rsync_spawned,
            warnings,
        }
    }
}
