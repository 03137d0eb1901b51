//! The rows "restarts on a big tree": what a restart of syncer costs once the target holds the
//! tree and syncer's state knows it (the durable-state issue). On fresh copies of the live
//! section's images (the target already holding the tree), per tree size:
//! - **kill -9 under load**: syncer started, its start-up pass done (the index complete), the
//!   live load at `--restart-rate` for `--restart-duration` seconds, syncer killed with SIGKILL
//!   at its last operation (with what it had not sent yet) and started again at once on its
//!   state;
//! - the same, restarted with **`--full-resync`**: the full pass every start paid before the
//!   state existed;
//! - **a clean stop, 1 % changed**: syncer stopped (SIGTERM) after its pass, `--restart-changed`
//!   percent of the files rewritten (with a few new ones), deleted or renamed meanwhile, then
//!   started again;
//! - **one `rsync -a --delete`** of the same tree after the same changes, for comparison.
//!
//! Each row reports the time from the (re)start to syncer's `initial sync finished` and to the
//! moment the target matched the source, the latency of the load's changes, and the rsync runs,
//! bytes received by the daemon and CPU from the (re)start on; and the state directory's size.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::bench::Ctx;
use crate::compare::{compare, Diff};
use crate::live::{self, Index, Lat, Pristine};
use crate::livegen::{LiveGenReport, LiveMix};
use crate::opts::RestartOpts;
use crate::sys::{self, mono_ns, secs, Proc};
use crate::tools::{self, Env, Running, Tool};
use crate::tree::WatchLimit;
use crate::watch::Watcher;

/// The scenarios, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Scenario {
    #[default]
    KillIndex,
    KillFullResync,
    StopChanged,
    RsyncOnce,
}

impl Scenario {
    pub const ALL: [Scenario; 4] = [
        Scenario::KillIndex,
        Scenario::KillFullResync,
        Scenario::StopChanged,
        Scenario::RsyncOnce,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Scenario::KillIndex => "kill -9 under load, restart on the state",
            Scenario::KillFullResync => "kill -9 under load, restart with --full-resync",
            Scenario::StopChanged => "stopped, files changed, start on the state",
            Scenario::RsyncOnce => "the same changes, one `rsync -a --delete`",
        }
    }

    fn id(self) -> &'static str {
        match self {
            Scenario::KillIndex => "kill",
            Scenario::KillFullResync => "kill-full-resync",
            Scenario::StopChanged => "stop-changed",
            Scenario::RsyncOnce => "rsync-once",
        }
    }
}

/// One row.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RestartSample {
    pub scenario: Scenario,
    pub files: u64,
    /// Operations the generator made (the load, or the changes while stopped).
    pub ops: u64,
    /// (Re)start to `initial sync finished` (rsync: its run).
    pub ready_s: Option<f64>,
    /// (Re)start to the moment the target matched the source.
    pub converged_s: Option<f64>,
    /// The load's changes (kill rows).
    pub lat: Lat,
    /// From the (re)start on: daemon sessions and bytes the daemon received.
    pub rsync_runs: u64,
    pub received_mib: f64,
    /// From the (re)start on: CPU of syncer and its rsyncs (or of the one rsync), syncer alone,
    /// and the daemon's.
    pub tool_cpu_s: f64,
    pub self_cpu_s: Option<f64>,
    pub daemon_cpu_s: f64,
    /// The state directory after the first pass.
    pub state_mib: Option<f64>,
    pub diff: Diff,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RestartSection {
    pub opts: RestartOpts,
    pub samples: Vec<RestartSample>,
    pub elapsed_s: f64,
}

/// The changes made while syncer is stopped: rewrites (and a few new files, the generator's
/// least), deletions and renames into other directories.
fn changes_mix() -> LiveMix {
    LiveMix::parse("rewrite=45,rename=25,delete=25").expect("a valid mix")
}

/// Counters read at a (re)start.
struct Mark {
    t: u64,
    conn: u64,
    received: u64,
    daemon_cpu: f64,
}

fn mark(c: &Ctx) -> Mark {
    Mark {
        t: mono_ns(),
        conn: c.daemon.connections(),
        received: c.daemon.received_bytes(),
        daemon_cpu: c.monitor.sample_now(c.daemon.pid()).cpu_s,
    }
}

/// Fills the counters of `s` from `m` on; `tool`: the running syncer. The daemon logs a
/// session's bytes as it ends: its log is given a moment to stop growing first.
fn account(c: &Ctx, s: &mut RestartSample, m: &Mark, tool: Option<&Running>) {
    let mut last = c.daemon.received_bytes();
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(150));
        let now = c.daemon.received_bytes();
        if now == last {
            break;
        }
        last = now;
    }
    s.rsync_runs = c.daemon.connections().saturating_sub(m.conn);
    s.received_mib = c.daemon.received_bytes().saturating_sub(m.received) as f64 / (1 << 20) as f64;
    s.daemon_cpu_s = (c.monitor.sample_now(c.daemon.pid()).cpu_s - m.daemon_cpu).max(0.0);
    if let Some(r) = tool {
        let st = c.monitor.sample_now(r.proc.pid);
        s.tool_cpu_s = st.cpu_s;
        s.self_cpu_s = Some(st.self_cpu_s);
    }
}

fn wait_gen(gen: &mut Proc, dir: &Path, cap_s: f64) -> Result<LiveGenReport> {
    let end = mono_ns() + (cap_s * 1e9) as u64;
    loop {
        sys::check_interrupt()?;
        if let Some(e) = gen.wait_timeout(Duration::from_millis(50)) {
            return live::gen_report(&e, dir);
        }
        if mono_ns() > end {
            bail!("the generator did not finish in time");
        }
    }
}

fn dir_mib(p: &Path) -> f64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0u64;
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.blocks() * 512,
                Err(_) => {}
            }
        }
    }
    total as f64 / (1 << 20) as f64
}

/// Starts syncer on the bench's trees and waits for its start-up pass.
fn start_ready(c: &Ctx, env: &Env) -> Result<(Running, u64)> {
    let run = tools::start(Tool::SyncerFanotify, env)?;
    c.monitor.track(run.proc.pid);
    let cap = Duration::from_secs_f64(c.o.live.startup_cap_s);
    let t = run
        .tap
        .wait_for(Tool::SyncerFanotify.ready_marker(), cap)
        .with_context(|| format!("syncer's start-up: {}", run.tap.tail()))?;
    Ok((run, t))
}

fn one_row(c: &mut Ctx, p: &Pristine, sc: Scenario, dir: &Path) -> Result<RestartSample> {
    let ro = c.o.restart.clone();
    let mut s = RestartSample {
        scenario: sc,
        files: p.files,
        ..RestartSample::default()
    };
    live::fresh_copies(c, p, false)?;
    live::flush_copies(c, p)?;
    live::warm_up(c)?;
    let watcher = Watcher::start(c.tgt.path())?;
    let url = c.daemon.url();
    let src = c.src.path().to_path_buf();
    let env = |full_resync| Env {
        syncer: &c.o.syncer,
        source: &src,
        url: &url,
        dir,
        initial_sync: true,
        full_resync,
    };
    let changed_ops = ((p.files as f64 * ro.changed_pct / 100.0).round() as u64).max(1);
    // The changes while stopped: fast, so that they take a second or two.
    let changes_rate = 5000.0;
    let changes_s = changed_ops as f64 / changes_rate;
    match sc {
        Scenario::KillIndex | Scenario::KillFullResync => {
            let (mut first, _) = start_ready(c, &env(false))?;
            let mut gen = live::spawn_gen(c, p, ro.rate, ro.duration_s, &c.o.live.mix, dir)?;
            let rep = wait_gen(&mut gen, dir, ro.duration_s + 120.0)?;
            s.ops = rep.ops;
            // Killed at the load's last operation, with what it had not sent yet: the restart
            // then owes exactly that, and the time to converge is what the restart costs.
            first.proc.signal(libc::SIGKILL);
            first
                .proc
                .wait_timeout(Duration::from_secs(10))
                .context("the killed syncer did not die")?;
            c.monitor.untrack(first.proc.pid);
            let m = mark(c);
            let again = tools::start(Tool::SyncerFanotify, &env(sc == Scenario::KillFullResync))?;
            c.monitor.track(again.proc.pid);
            let cap = Duration::from_secs_f64(c.o.live.startup_cap_s);
            if let Ok(t) = again.tap.wait_for(Tool::SyncerFanotify.ready_marker(), cap) {
                s.ready_s = Some(secs(t.saturating_sub(m.t)));
            }
            s.converged_s = live::wait_converged(c, &watcher, &rep, m.t)?;
            let ix = Index::of(&watcher.marks());
            s.lat = live::lat_of(live::timed(&rep, &ix).iter());
            account(c, &mut s, &m, Some(&again));
            c.monitor.untrack(again.proc.pid);
            again.stop(Duration::from_secs(60));
        }
        Scenario::StopChanged => {
            let (first, _) = start_ready(c, &env(false))?;
            c.monitor.untrack(first.proc.pid);
            let stopped = first.stop(Duration::from_secs(120));
            if stopped.exit.code() != Some(0) {
                bail!("syncer did not stop cleanly: {}", stopped.exit.describe());
            }
            s.state_mib = Some(dir_mib(&dir.join("syncer-state")));
            let mut gen = live::spawn_gen(c, p, changes_rate, changes_s, &changes_mix(), dir)?;
            let rep = wait_gen(&mut gen, dir, changes_s + 120.0)?;
            s.ops = rep.ops;
            let m = mark(c);
            let (again, t) = start_ready(c, &env(false))?;
            s.ready_s = Some(secs(t.saturating_sub(m.t)));
            s.converged_s = live::wait_converged(c, &watcher, &rep, m.t)?;
            account(c, &mut s, &m, Some(&again));
            c.monitor.untrack(again.proc.pid);
            again.stop(Duration::from_secs(60));
        }
        Scenario::RsyncOnce => {
            let mut gen = live::spawn_gen(c, p, changes_rate, changes_s, &changes_mix(), dir)?;
            let rep = wait_gen(&mut gen, dir, changes_s + 120.0)?;
            s.ops = rep.ops;
            let m = mark(c);
            let log = std::fs::File::create(dir.join("rsync.log"))?;
            let mut rsync = Proc::spawn(
                "rsync -a",
                Command::new("rsync")
                    .args(["-a", "--delete"])
                    .arg(format!("{}/", src.display()))
                    .arg(&url)
                    .stdin(Stdio::null())
                    .stdout(log.try_clone()?)
                    .stderr(log),
            )?;
            let e = loop {
                sys::check_interrupt()?;
                if let Some(e) = rsync.wait_timeout(Duration::from_millis(50)) {
                    break e;
                }
            };
            if e.code() != Some(0) {
                bail!("rsync -a failed ({})", e.describe());
            }
            s.ready_s = Some(secs(mono_ns() - m.t));
            s.converged_s = s.ready_s;
            account(c, &mut s, &m, None);
            s.tool_cpu_s = e.cpu_s;
        }
    }
    drop(watcher.stop()?);
    s.diff = compare(c.src.path(), c.tgt.path(), true)?;
    Ok(s)
}

/// Runs the whole section.
pub fn run(c: &mut Ctx) -> Result<RestartSection> {
    let ro = c.o.restart.clone();
    let t0 = mono_ns();
    let mut sec = RestartSection {
        opts: ro.clone(),
        ..RestartSection::default()
    };
    let lo = c.o.live.clone();
    for &files in &ro.trees {
        let p = live::pristine(c, &lo, files)?;
        let _limit = WatchLimit::ensure(p.dirs * 2 + 10_000);
        for sc in Scenario::ALL {
            let d = c.run_dir(&format!("restart-{files}-{}", sc.id()))?;
            let s = one_row(c, &p, sc, &d).or_else(|e| {
                sys::check_interrupt()?;
                Ok::<_, anyhow::Error>(RestartSample {
                    scenario: sc,
                    files,
                    error: Some(format!("{e:#}")),
                    ..RestartSample::default()
                })
            })?;
            progress(&s);
            sec.samples.push(s);
        }
    }
    sec.elapsed_s = secs(mono_ns() - t0);
    Ok(sec)
}

fn progress(s: &RestartSample) {
    let f = |v: Option<f64>| v.map_or("-".into(), crate::fmt::dur);
    match &s.error {
        Some(e) => eprintln!(
            "[restart] {} {}: FAILED: {}",
            s.files,
            s.scenario.label(),
            e.lines().next().unwrap_or("")
        ),
        None => eprintln!(
            "[restart] {} {}: ready {} converged {} p99 {} rsync runs {} received {:.1} MiB \
             missing {} wrong {} extra {}",
            s.files,
            s.scenario.label(),
            f(s.ready_s),
            f(s.converged_s),
            f(s.lat.p99_s),
            s.rsync_runs,
            s.received_mib,
            s.diff.files_missing + s.diff.dirs_missing,
            s.diff.files_wrong,
            s.diff.files_extra + s.diff.dirs_extra,
        ),
    }
}

/// The section's table.
pub fn tables(out: &mut String, sec: &RestartSection) {
    use std::fmt::Write as _;
    let f = |v: Option<f64>| v.map_or("–".into(), crate::fmt::dur);
    let o = &sec.opts;
    let _ = writeln!(
        out,
        "## Restarts on a big tree\n\nThe target holds the tree and syncer's state knows it (its \
         start-up pass ended). Kill rows: the live load at {} ops/s for {:.0} s, syncer killed with \
         SIGKILL at its last operation (what it had not sent yet is owed) and started again at \
         once. Stop rows: syncer stopped (SIGTERM), \
         {}% of the files rewritten, deleted or renamed (and a few made) meanwhile, then started; \
         the `rsync -a` row makes the same changes on fresh copies and runs one `rsync -a --delete` \
         instead. Times from the (re)start; rsync runs, bytes the daemon received and CPU from then \
         on. The section took {:.0} s.\n",
        o.rate, o.duration_s, o.changed_pct, sec.elapsed_s
    );
    let _ = writeln!(
        out,
        "| tree (files) | scenario | changes | (re)start → initial sync finished | (re)start → \
         converged | p99 / max of the load's changes | rsync runs | MiB received by the daemon | \
         CPU s (tool tree) | syncer own CPU s | daemon CPU s | missing / wrong / extra |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for s in &sec.samples {
        if let Some(e) = &s.error {
            let _ = writeln!(
                out,
                "| {} | {} | failed: {} |||||||||| ",
                s.files,
                s.scenario.label(),
                e.lines().next().unwrap_or("").replace('|', "/")
            );
            continue;
        }
        let lat = match s.lat.n {
            0 => "–".to_string(),
            _ => format!("{} / {}", f(s.lat.p99_s), f(s.lat.max_s)),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {:.2} | {:.1} | {} | {:.1} | {} / {} / {} |",
            s.files,
            s.scenario.label(),
            s.ops,
            f(s.ready_s),
            f(s.converged_s),
            lat,
            s.rsync_runs,
            s.received_mib,
            s.tool_cpu_s,
            s.self_cpu_s.map_or("–".into(), |x| format!("{x:.1}")),
            s.daemon_cpu_s,
            s.diff.files_missing + s.diff.dirs_missing,
            s.diff.files_wrong,
            s.diff.files_extra + s.diff.dirs_extra,
        );
    }
    let _ = writeln!(out);
    for s in sec.samples.iter().filter(|s| s.state_mib.is_some()) {
        let mib = s.state_mib.unwrap_or(0.0);
        let entries = s.files as f64 * 1.1;
        let _ = writeln!(
            out,
            "State directory after the start-up pass over {} files (about {:.0} entries with the \
             directories): {:.0} MiB, {:.0} MiB per million entries.\n",
            s.files,
            entries,
            mib,
            mib / entries * 1e6
        );
    }
}
