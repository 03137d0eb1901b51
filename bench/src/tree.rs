//! The big-tree runs: a tree of many small files (`--tree-files`, in `--tree-dirs` directories)
//! on its own filesystem, then, per repeat: the initial sync to an empty target (`rsync -a` vs
//! `syncer sync`), and the start-up of each watcher on that tree with the target already in
//! place: time until the event source is live, until the initial sync is done, and the memory
//! of the process idling afterwards.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::bench::Ctx;
use crate::compare::{compare, Diff};
use crate::fsimg::LoopFs;
use crate::procmon::vm_kb;
use crate::sys::{self, mono_ns, secs, Proc};
use crate::tools::{self, Env, Tool};

/// One start-up of one watcher.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct StartSample {
    pub tool: String,
    /// Spawn to "event source live" (watches or mark in place).
    pub live_s: Option<f64>,
    /// Spawn to the end of its initial sync (the target already holds the tree).
    pub ready_s: Option<f64>,
    /// VmRSS of the main process, and the summed RSS of its tree, 1 s after ready, MiB.
    pub idle_rss_mib: Option<f64>,
    pub idle_tree_rss_mib: Option<f64>,
    pub hwm_mib: Option<f64>,
    /// CPU seconds of the tree until then.
    pub cpu_s: f64,
    pub self_cpu_s: Option<f64>,
    pub rsync_runs: u64,
    pub error: Option<String>,
}

/// One full initial sync of the tree to an empty target.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SyncSample {
    pub tool: String,
    pub time_s: f64,
    pub cpu_s: f64,
    pub daemon_cpu_s: f64,
    pub rsync_runs: u64,
    pub syncer_rsync_spawned: Option<u64>,
    pub diff: Diff,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TreeSection {
    pub files: u64,
    pub dirs: u64,
    pub gen_s: f64,
    pub start: Vec<StartSample>,
    pub sync: Vec<SyncSample>,
}

/// Raises fs.inotify.max_user_watches for the run if the tree needs more, restoring it after.
pub struct WatchLimit {
    old: Option<String>,
}

const WATCHES: &str = "/proc/sys/fs/inotify/max_user_watches";

impl WatchLimit {
    pub fn ensure(need: u64) -> WatchLimit {
        let old = std::fs::read_to_string(WATCHES).unwrap_or_default();
        let cur: u64 = old.trim().parse().unwrap_or(0);
        if cur >= need {
            return WatchLimit { old: None };
        }
        eprintln!("raising {WATCHES} from {cur} to {need} for this run");
        if std::fs::write(WATCHES, need.to_string()).is_err() {
            eprintln!("warning: cannot raise {WATCHES}; inotify watchers may fail");
            return WatchLimit { old: None };
        }
        WatchLimit { old: Some(old) }
    }
}

impl Drop for WatchLimit {
    fn drop(&mut self) {
        if let Some(old) = &self.old {
            let _ = std::fs::write(WATCHES, old.trim());
        }
    }
}

const KIB: u64 = 1024;

/// Runs the whole section.
pub fn run(c: &mut Ctx) -> Result<TreeSection> {
    let (files, dirs) = (c.o.tree_files, c.o.tree_dirs.max(1));
    let mut sec = TreeSection {
        files,
        dirs,
        ..TreeSection::default()
    };
    // Small files take one 4 KiB block each; directories one block.
    let size = (files + dirs) * 8 * KIB + (1 << 30);
    let inodes = Some(files + dirs + files / 10 + 10_000);
    let tree = LoopFs::create(
        &c.work.join("tree.img"),
        &c.work.join("mnt/tree"),
        size,
        inodes,
    )?;
    let _limit = WatchLimit::ensure(dirs + 10_000);
    let dir = c.run_dir("tree")?;
    eprintln!("== start-up tree: {files} files in {dirs} directories");
    let t0 = mono_ns();
    let mut p = Proc::spawn(
        "tree generator",
        Command::new(&c.exe)
            .arg("tree")
            .arg("--dir")
            .arg(tree.path())
            .arg("--files")
            .arg(files.to_string())
            .arg("--dirs")
            .arg(dirs.to_string())
            .arg("--seed")
            .arg(c.o.seed.to_string())
            .stdin(Stdio::null()),
    )?;
    let exit = loop {
        sys::check_interrupt()?;
        if let Some(e) = p.wait_timeout(Duration::from_millis(200)) {
            break e;
        }
        if secs(mono_ns() - t0) > 3600.0 {
            bail!("the tree generator did not finish in an hour");
        }
    };
    if exit.code() != Some(0) {
        bail!("the tree generator failed: {}", exit.describe());
    }
    sec.gen_s = secs(mono_ns() - t0);
    c.tgt.set_geometry(size, inodes);
    let cap = if files > 300_000 { 3600 } else { 600 };
    for rep in 0..c.o.repeat {
        // Alternate the order so that neither always runs on a warmer cache.
        let order: [bool; 2] = if rep % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for use_syncer in order {
            let s = sync_sample(c, tree.path(), use_syncer, &dir, cap)
                .unwrap_or_else(|e| failed_sync(use_syncer, e));
            eprintln!(
                "   initial sync {:<12} {:>7.2} s  cpu {:>6.2} s  {}",
                s.tool,
                s.time_s,
                s.cpu_s,
                s.error.as_deref().unwrap_or("")
            );
            sec.sync.push(s);
        }
        // The last sync left a full copy on the target: the watchers start against it.
        for tool in [
            Tool::SyncerFanotify,
            Tool::SyncerInotify,
            Tool::SyncerEbpf,
            Tool::Script,
            Tool::LsyncdD15,
        ] {
            if !wanted(&c.o.tools, tool) {
                continue;
            }
            let s = match start_sample(c, tool, tree.path(), &dir, cap) {
                Ok(s) => s,
                Err(e) => {
                    sys::check_interrupt()?;
                    StartSample {
                        tool: start_label(tool).into(),
                        error: Some(format!("{e:#}")),
                        ..StartSample::default()
                    }
                }
            };
            eprintln!(
                "   start-up {:<24} live {:>7} s  ready {:>7} s  idle rss {:>7} MiB {}",
                s.tool,
                fmt_opt(s.live_s),
                fmt_opt(s.ready_s),
                fmt_opt(s.idle_rss_mib),
                s.error.as_deref().unwrap_or("")
            );
            sec.start.push(s);
        }
    }
    drop(tree);
    Ok(sec)
}

/// Whether the start-up runs include `tool` (lsyncd runs once if either lsyncd row is chosen).
fn wanted(tools: &[Tool], tool: Tool) -> bool {
    match tool {
        Tool::LsyncdD15 => tools.contains(&Tool::LsyncdD1) || tools.contains(&Tool::LsyncdD15),
        t => tools.contains(&t),
    }
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{x:.2}"))
}

/// The name of a watcher in the start-up table.
pub fn start_label(tool: Tool) -> &'static str {
    match tool {
        Tool::Script => "inotifywait -mr (script)",
        Tool::LsyncdD15 => "lsyncd",
        t => t.id(),
    }
}

fn failed_sync(use_syncer: bool, e: anyhow::Error) -> SyncSample {
    SyncSample {
        tool: if use_syncer {
            "syncer sync"
        } else {
            "rsync -a"
        }
        .into(),
        error: Some(format!("{e:#}")),
        ..SyncSample::default()
    }
}

/// One initial sync of `tree` to a fresh target.
fn sync_sample(
    c: &mut Ctx,
    tree: &Path,
    use_syncer: bool,
    dir: &Path,
    cap: u64,
) -> Result<SyncSample> {
    sys::check_interrupt()?;
    c.tgt.recreate()?;
    let url = c.daemon.url();
    let name = if use_syncer {
        "syncer sync"
    } else {
        "rsync -a"
    };
    let log_path = dir.join(if use_syncer {
        "syncer-sync.log"
    } else {
        "rsync-a.log"
    });
    let log = std::fs::File::create(&log_path)?;
    let mut cmd = if use_syncer {
        let mut cmd = Command::new(&c.o.syncer);
        let state = dir.join("syncer-sync-state");
        let _ = std::fs::remove_dir_all(&state);
        cmd.arg("sync")
            .arg("--source")
            .arg(tree)
            .arg("--target")
            .arg(&url)
            .arg("--state-dir")
            .arg(state)
            .env("RUST_LOG", tools::syncer_log_filter());
        cmd
    } else {
        let mut cmd = Command::new("rsync");
        cmd.arg("-a").arg(format!("{}/", tree.display())).arg(&url);
        cmd
    };
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let dbase = c.monitor.sample_now(c.daemon.pid());
    let conn0 = c.daemon.connections();
    let t0 = mono_ns();
    let mut p = Proc::spawn(name, &mut cmd)?;
    let exit = loop {
        sys::check_interrupt()?;
        if let Some(e) = p.wait_timeout(Duration::from_millis(100)) {
            break e;
        }
        if secs(mono_ns() - t0) > cap as f64 {
            bail!("{name} did not finish in {cap} s");
        }
    };
    let t1 = mono_ns();
    let dafter = c.monitor.sample_now(c.daemon.pid());
    if exit.code() != Some(0) {
        bail!(
            "{name} failed ({}): see {}",
            exit.describe(),
            log_path.display()
        );
    }
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    let spawned = text
        .lines()
        .filter(|l| l.contains("pool finished"))
        .filter_map(|l| l.split("rsync_spawned=").nth(1))
        .filter_map(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .reduce(|a, b| a + b);
    let diff = compare(tree, c.tgt.path(), false)?;
    Ok(SyncSample {
        tool: name.into(),
        time_s: secs(t1 - t0),
        cpu_s: exit.cpu_s,
        daemon_cpu_s: (dafter.cpu_s - dbase.cpu_s).max(0.0),
        rsync_runs: c.daemon.connections().saturating_sub(conn0),
        syncer_rsync_spawned: spawned,
        diff,
        error: None,
    })
}

/// One start-up of `tool` on `tree`, the target already holding a copy.
fn start_sample(c: &mut Ctx, tool: Tool, tree: &Path, dir: &Path, cap: u64) -> Result<StartSample> {
    sys::check_interrupt()?;
    let url = c.daemon.url();
    let run_dir = dir.join(tool.id());
    std::fs::create_dir_all(&run_dir)?;
    let env = Env {
        syncer: &c.o.syncer,
        source: tree,
        url: &url,
        dir: &run_dir,
        initial_sync: true,
        full_resync: false,
    };
    let conn0 = c.daemon.connections();
    let run = tools::start(tool, &env)?;
    let pid = run.proc.pid;
    c.monitor.track(pid);
    let result = (|| -> Result<StartSample> {
        let timeout = Duration::from_secs(cap);
        let live = run
            .tap
            .wait_for(tool.live_marker(), timeout)
            .context("waiting until live")?;
        let ready = run
            .tap
            .wait_for(tool.ready_marker(), timeout)
            .context("waiting for the initial sync")?;
        sys::sleep(Duration::from_secs(1))?;
        let st = c.monitor.sample_now(pid);
        let vm = vm_kb(pid);
        Ok(StartSample {
            tool: start_label(tool).into(),
            live_s: Some(secs(live - run.t_spawn)),
            ready_s: (tool != Tool::Script).then(|| secs(ready - run.t_spawn)),
            idle_rss_mib: vm.map(|(rss, _)| rss as f64 / 1024.0),
            idle_tree_rss_mib: Some(st.rss as f64 / (1 << 20) as f64),
            hwm_mib: vm.map(|(_, hwm)| hwm as f64 / 1024.0),
            cpu_s: st.cpu_s,
            self_cpu_s: tool.is_syncer().then_some(st.self_cpu_s),
            rsync_runs: c.daemon.connections().saturating_sub(conn0),
            error: None,
        })
    })();
    c.monitor.untrack(pid);
    run.stop(Duration::from_secs(30));
    result
}
