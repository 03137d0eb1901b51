//! The rate runs: for each rate and tool, fresh source and target filesystems, the tool started
//! and waited for, the generator run in its own process, then the wait for convergence, a full
//! comparison, and the tool stopped. Also the one-shot `rsync -a` bulk reference on the same
//! files. [`Ctx`] owns everything that must be cleaned up (mounts, the daemon, the monitor).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::compare::{compare, Diff};
use crate::daemon::RsyncDaemon;
use crate::fsimg::LoopFs;
use crate::gen::{GenReport, Mix};
use crate::opts::{Opts, RateSpec};
use crate::procmon::{machine_busy_s, own_cpu_s, Monitor};
use crate::stats::percentile;
use crate::sys::{self, mono_ns, secs, Proc};
use crate::tools::{self, Env, Tool};
use crate::watch::Watcher;

/// Everything the bench owns. Fields drop in order: the monitor, the daemon, then the
/// filesystems (so that nothing still uses a mount when it goes).
pub struct Ctx {
    pub o: Opts,
    pub exe: PathBuf,
    pub work: PathBuf,
    pub logs: PathBuf,
    pub monitor: Monitor,
    pub daemon: RsyncDaemon,
    pub src: LoopFs,
    pub tgt: LoopFs,
}

const GIB: u64 = 1 << 30;
const KTHREADD: i32 = 2;

/// Image size for a workload of `ops` operations of 10-100 KB files (sparse, so generous).
fn image_size(ops: u64) -> u64 {
    (ops * 56 * 1024 * 2 + GIB).max(2 * GIB)
}

impl Ctx {
    pub fn new(o: Opts) -> Result<Ctx> {
        let work = o.work.clone();
        std::fs::create_dir_all(&work).with_context(|| format!("create {}", work.display()))?;
        crate::fsimg::clean_stale(&work)?;
        let logs = work.join("logs");
        let _ = std::fs::remove_dir_all(&logs);
        std::fs::create_dir_all(&logs)?;
        let exe = std::fs::read_link("/proc/self/exe").context("find own executable")?;
        let src = LoopFs::create(&work.join("src.img"), &work.join("mnt/src"), 2 * GIB, None)?;
        let tgt = LoopFs::create(&work.join("tgt.img"), &work.join("mnt/tgt"), 2 * GIB, None)?;
        let daemon = RsyncDaemon::start(&work, tgt.path())?;
        let monitor = Monitor::start(Duration::from_millis(100));
        monitor.track(daemon.pid());
        // kthreadd: the kernel threads (loop devices, jbd2, writeback) work for every row too.
        monitor.track(KTHREADD);
        Ok(Ctx {
            o,
            exe,
            work,
            logs,
            monitor,
            daemon,
            src,
            tgt,
        })
    }

    /// A fresh log directory for one run.
    pub fn run_dir(&self, name: &str) -> Result<PathBuf> {
        let d = self.logs.join(name);
        std::fs::create_dir_all(&d)?;
        Ok(d)
    }

    fn fresh_filesystems(&mut self, size: u64) -> Result<()> {
        self.src.set_size(size);
        self.tgt.set_size(size);
        self.src.recreate()?;
        self.tgt.recreate()
    }

    /// Runs the generator into the source filesystem and returns its report and CPU seconds.
    fn generate(&self, rate: f64, ops: u64, dir: &Path) -> Result<(GenReport, f64)> {
        let out = dir.join("gen.json");
        let cap_s = if rate > 0.0 {
            3.0 * ops as f64 / rate + 30.0
        } else {
            600.0
        };
        let log = std::fs::File::create(dir.join("gen.log"))?;
        let mut p = Proc::spawn(
            "generator",
            Command::new(&self.exe)
                .arg("gen")
                .arg("--dir")
                .arg(self.src.path())
                .arg("--rate")
                .arg(rate.to_string())
                .arg("--ops")
                .arg(ops.to_string())
                .arg("--time-cap-s")
                .arg(cap_s.to_string())
                .arg("--mix")
                .arg(self.o.mix.describe_arg())
                .arg("--seed")
                .arg(self.o.seed.to_string())
                .arg("--files-per-dir")
                .arg(self.o.files_per_dir.to_string())
                .arg("--out")
                .arg(&out)
                .arg("--trace")
                .arg(dir.join("gen.trace"))
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log),
        )?;
        let end = mono_ns() + ((cap_s + 30.0) * 1e9) as u64;
        let exit = loop {
            sys::check_interrupt()?;
            if let Some(e) = p.wait_timeout(Duration::from_millis(200)) {
                break e;
            }
            if mono_ns() > end {
                bail!("the generator did not finish in {:.0} s", cap_s + 30.0);
            }
        };
        if exit.code() != Some(0) {
            bail!(
                "the generator failed ({}): {}",
                exit.describe(),
                std::fs::read_to_string(dir.join("gen.log")).unwrap_or_default()
            );
        }
        let rep: GenReport =
            serde_json::from_slice(&std::fs::read(&out)?).context("read the generator's report")?;
        Ok((rep, exit.cpu_s))
    }
}

impl Mix {
    /// The form `gen --mix` takes.
    pub fn describe_arg(&self) -> String {
        if *self == Mix::NONE {
            "none".into()
        } else {
            self.describe()
        }
    }
}

/// One run of one tool at one rate.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RateSample {
    pub tool: String,
    pub rate: String,
    pub ops: u64,
    /// Operations per second the generator achieved (for the bulk row: files per second of
    /// the one rsync).
    pub achieved_rate: f64,
    pub gen: GenCounts,
    /// Seconds from spawn to the tool's ready line (initial sync done).
    pub ready_s: f64,
    /// Files whose arrival was timed (alive at the end), and those never seen arriving.
    pub latency_n: u64,
    pub unseen: u64,
    pub p50_s: Option<f64>,
    pub p90_s: Option<f64>,
    pub p99_s: Option<f64>,
    pub max_s: Option<f64>,
    pub mean_s: Option<f64>,
    /// Seconds from the writer's last operation until the target matched (None: not within
    /// the cap).
    pub converged_s: Option<f64>,
    /// Seconds from the writer's last operation until the tool had run no rsync for a second
    /// (None: still busy at the cap, e.g. working through a backlog of events).
    pub idle_s: Option<f64>,
    pub converge_cap_s: f64,
    pub busy_cap_s: f64,
    /// The full comparison at the end (after convergence or the cap).
    pub diff: Diff,
    /// CPU seconds of the tool's process tree from writer start to the end of the wait.
    pub tool_cpu_s: f64,
    /// syncer's own CPU seconds (its rsync children excluded), same window.
    pub self_cpu_s: Option<f64>,
    pub daemon_cpu_s: f64,
    pub gen_cpu_s: f64,
    pub bench_cpu_s: f64,
    pub machine_busy_s: f64,
    /// CPU of kernel threads (loop devices, jbd2, writeback workers) in the window.
    pub kernel_threads_cpu_s: f64,
    /// Machine CPU not accounted to the tool, the daemon, the generator, the bench or kernel
    /// threads: other load on the machine during the run (noise), plus interrupt time.
    pub foreign_cpu_s: f64,
    pub window_s: f64,
    /// Peak of the summed RSS of the tool's tree (sampled every 100 ms), MiB.
    pub tree_rss_peak_mib: f64,
    /// VmHWM of the tool's main process, MiB.
    pub hwm_mib: f64,
    /// rsync client sessions the daemon accepted during the workload.
    pub rsync_runs: u64,
    /// Distinct rsync processes seen in the tool's tree by sampling, and most at once.
    pub rsync_seen: usize,
    pub rsync_max_live: usize,
    /// syncer's own count (its `rsync_spawned=`), initial sync included.
    pub syncer_rsync_spawned: Option<u64>,
    pub exit: String,
    pub watcher_events: u64,
    pub warnings: Vec<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct GenCounts {
    pub creates: u64,
    pub rewrites: u64,
    pub renames: u64,
    pub deletes: u64,
    pub dir_renames: u64,
    pub late_ops: u64,
    pub capped: bool,
    pub mib: f64,
    pub seconds: f64,
}

impl GenCounts {
    fn of(r: &GenReport) -> GenCounts {
        GenCounts {
            creates: r.creates,
            rewrites: r.rewrites,
            renames: r.renames,
            deletes: r.deletes,
            dir_renames: r.dir_renames,
            late_ops: r.late_ops,
            capped: r.capped,
            mib: r.bytes as f64 / (1 << 20) as f64,
            seconds: secs(r.t_end - r.t_start),
        }
    }
}

/// No target event for this long, after the writer stopped, before the trees are compared.
const QUIET_NS: u64 = 300_000_000;

/// Latency of every file alive at the end: from the close()/rename() that gave it its name to
/// the first arrival of that name on the target at or after that moment.
fn latencies(alive: &[(u32, u64)], arrivals: &[(u32, u64)]) -> (Vec<f64>, u64) {
    let mut by_id: HashMap<u32, Vec<u64>> = HashMap::with_capacity(alive.len());
    for &(id, t) in arrivals {
        by_id.entry(id).or_default().push(t);
    }
    let mut lat = Vec::with_capacity(alive.len());
    let mut unseen = 0;
    for &(id, named) in alive {
        match by_id
            .get(&id)
            .and_then(|ts| ts.iter().copied().filter(|&t| t >= named).min())
        {
            Some(t) => lat.push(secs(t - named)),
            None => unseen += 1,
        }
    }
    lat.sort_by(f64::total_cmp);
    (lat, unseen)
}

/// Writes, for looking into a run, every file alive at the end with the time it got its name and
/// its first arrival at or after that (`id named_ns arrived_ns latency_s`; `-` if never).
fn write_arrivals(path: &Path, alive: &[(u32, u64)], arrivals: &[(u32, u64)]) -> Result<()> {
    use std::io::Write;
    let mut first: HashMap<u32, Vec<u64>> = HashMap::with_capacity(alive.len());
    for &(id, t) in arrivals {
        first.entry(id).or_default().push(t);
    }
    let mut w = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?,
    );
    writeln!(w, "id\tnamed_ns\tarrived_ns\tlatency_s")?;
    for &(id, named) in alive {
        match first
            .get(&id)
            .and_then(|ts| ts.iter().copied().filter(|&t| t >= named).min())
        {
            Some(t) => writeln!(w, "{id}\t{named}\t{t}\t{:.6}", secs(t - named))?,
            None => writeln!(w, "{id}\t{named}\t-\t-")?,
        }
    }
    w.flush()?;
    Ok(())
}

/// How many of `alive` have not arrived yet.
fn pending(alive: &[(u32, u64)], arrivals: &[(u32, u64)]) -> usize {
    let mut latest: HashMap<u32, u64> = HashMap::with_capacity(arrivals.len());
    for &(id, t) in arrivals {
        let e = latest.entry(id).or_insert(t);
        *e = (*e).max(t);
    }
    alive
        .iter()
        .filter(|(id, named)| latest.get(id).is_none_or(|&t| t < *named))
        .count()
}

/// Waits for the target to match the source after the writer stopped at `w`: a quiet spell
/// on the target, every file arrived, then a metadata comparison; repeated on new activity
/// until `cap_ns`. Returns the convergence time (last target event - `w`) if it converged.
fn wait_converged(
    src: &Path,
    tgt: &Path,
    watcher: &Watcher,
    alive: &[(u32, u64)],
    w: u64,
    cap_ns: u64,
) -> Result<Option<f64>> {
    let deadline = w + cap_ns;
    loop {
        sys::check_interrupt()?;
        let now = mono_ns();
        let last = watcher.last_event().max(w);
        if now < last + QUIET_NS && now < deadline {
            std::thread::sleep(Duration::from_nanos(
                (last + QUIET_NS - now).min(deadline - now),
            ));
            continue;
        }
        if pending(alive, &watcher.arrivals()) == 0 {
            let d = compare(src, tgt, false)?;
            let last_after = watcher.last_event().max(w);
            if d.files_ok() && last_after == last {
                return Ok(Some(secs(last - w)));
            }
            if last_after != last {
                continue;
            }
        }
        if mono_ns() >= deadline {
            return Ok(None);
        }
        watcher.wait_event_after(
            last,
            Duration::from_nanos(deadline.saturating_sub(mono_ns())),
        );
    }
}

/// After convergence, waits until the tool's tree has had no rsync process for a second
/// (sampled every 100 ms), up to `cap_ns` after `w`. Returns when it went idle, relative to `w`
/// (at least `busy_until`, the last change on the target).
fn wait_idle(m: &Monitor, pid: i32, w: u64, busy_until: u64, cap_ns: u64) -> Result<Option<f64>> {
    const IDLE_NS: u64 = 1_000_000_000;
    // At least a second after the last change on the target, to see it idle.
    let deadline = (w + cap_ns).max(busy_until) + IDLE_NS;
    let mut last_busy = busy_until;
    loop {
        sys::check_interrupt()?;
        let now = mono_ns();
        if m.get(pid).rsync_live > 0 {
            last_busy = now;
        }
        if now >= last_busy + IDLE_NS {
            return Ok(Some(secs(last_busy.saturating_sub(w))));
        }
        if now >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One run of `tool` at `rate`.
pub fn rate_sample(c: &mut Ctx, tool: Tool, rate: RateSpec, dir: &Path) -> Result<RateSample> {
    if tool == Tool::RsyncBulk {
        return bulk_sample(c, rate, dir);
    }
    let ops = c.o.ops_for(tool, rate);
    c.fresh_filesystems(image_size(ops))?;
    let watcher = Watcher::start(c.tgt.path())?;
    let url = c.daemon.url();
    let env = Env {
        syncer: &c.o.syncer,
        source: c.src.path(),
        url: &url,
        dir,
        initial_sync: true,
        full_resync: false,
    };
    let mut run = tools::start(tool, &env)?;
    let pid = run.proc.pid;
    c.monitor.track(pid);
    let result = (|| -> Result<(RateSample, Vec<(u32, u64)>)> {
        let ready = run
            .tap
            .wait_for(tool.ready_marker(), Duration::from_secs(60))?;
        let base = c.monitor.sample_now(pid);
        let dbase = c.monitor.sample_now(c.daemon.pid());
        let kbase = c.monitor.get(KTHREADD);
        let (conn0, busy0, own0) = (c.daemon.connections(), machine_busy_s(), own_cpu_s());
        let t0 = mono_ns();
        let (rep, gen_cpu) = c.generate(rate.per_s(), ops, dir)?;
        if run.proc.exited() {
            bail!("{} exited during the run: {}", tool.id(), run.tap.tail());
        }
        let w = rep.t_end;
        let converged = wait_converged(
            c.src.path(),
            c.tgt.path(),
            &watcher,
            &rep.alive,
            w,
            (c.o.converge_cap_s * 1e9) as u64,
        )?;
        let idle = wait_idle(
            &c.monitor,
            pid,
            w,
            watcher.last_event().max(w),
            (c.o.busy_cap_s * 1e9) as u64,
        )?;
        let after = c.monitor.sample_now(pid);
        let dafter = c.monitor.sample_now(c.daemon.pid());
        let kafter = c.monitor.get(KTHREADD);
        let (conn1, busy1, own1, t1) = (
            c.daemon.connections(),
            machine_busy_s(),
            own_cpu_s(),
            mono_ns(),
        );
        let diff = compare(c.src.path(), c.tgt.path(), true)?;
        let tool_cpu = (after.cpu_s - base.cpu_s).max(0.0);
        let daemon_cpu = (dafter.cpu_s - dbase.cpu_s).max(0.0);
        let kernel_cpu = (kafter.cpu_s - kbase.cpu_s).max(0.0);
        let busy = busy1 - busy0;
        let bench_cpu = own1 - own0;
        let sample = RateSample {
            tool: tool.id().into(),
            rate: rate.label(),
            ops,
            achieved_rate: rep.achieved_rate(),
            gen: GenCounts::of(&rep),
            ready_s: secs(ready - run.t_spawn),
            converged_s: converged,
            idle_s: idle,
            converge_cap_s: c.o.converge_cap_s,
            busy_cap_s: c.o.busy_cap_s,
            diff,
            tool_cpu_s: tool_cpu,
            self_cpu_s: tool
                .is_syncer()
                .then_some((after.self_cpu_s - base.self_cpu_s).max(0.0)),
            daemon_cpu_s: daemon_cpu,
            gen_cpu_s: gen_cpu,
            bench_cpu_s: bench_cpu,
            machine_busy_s: busy,
            kernel_threads_cpu_s: kernel_cpu,
            foreign_cpu_s: (busy - tool_cpu - daemon_cpu - gen_cpu - bench_cpu - kernel_cpu)
                .max(0.0),
            window_s: secs(t1 - t0),
            tree_rss_peak_mib: after.rss_peak as f64 / (1 << 20) as f64,
            hwm_mib: after.vm_hwm_kb as f64 / 1024.0,
            rsync_runs: conn1.saturating_sub(conn0),
            rsync_seen: after.rsync_seen,
            rsync_max_live: after.rsync_max_live,
            ..RateSample::default()
        };
        Ok((sample, rep.alive))
    })();
    c.monitor.untrack(pid);
    let stopped = run.stop(Duration::from_secs(60));
    let seen = watcher.stop()?;
    let (mut s, alive) = result?;
    let (lat, unseen) = latencies(&alive, &seen.arrivals);
    if let Err(e) = write_arrivals(&dir.join("arrivals.tsv"), &alive, &seen.arrivals) {
        eprintln!("warning: {e:#}");
    }
    s.unseen = unseen;
    s.latency_n = lat.len() as u64;
    s.p50_s = percentile(&lat, 50.0);
    s.p90_s = percentile(&lat, 90.0);
    s.p99_s = percentile(&lat, 99.0);
    s.max_s = lat.last().copied();
    s.mean_s = (!lat.is_empty()).then(|| lat.iter().sum::<f64>() / lat.len() as f64);
    s.watcher_events = seen.events;
    s.syncer_rsync_spawned = stopped.rsync_spawned;
    s.exit = format!(
        "{}{}",
        stopped.exit.describe(),
        if stopped.killed { " (killed)" } else { "" }
    );
    s.warnings = stopped.warnings;
    if seen.overflow {
        s.warnings
            .push("the target watcher's queue overflowed".into());
    }
    Ok(s)
}

/// The bulk reference: the same files written first (no tool running), then one `rsync -a`.
fn bulk_sample(c: &mut Ctx, rate: RateSpec, dir: &Path) -> Result<RateSample> {
    let ops = c.o.ops_for(Tool::RsyncBulk, rate);
    c.fresh_filesystems(image_size(ops))?;
    let (rep, gen_cpu) = c.generate(0.0, ops, dir)?;
    let dbase = c.monitor.sample_now(c.daemon.pid());
    let kbase = c.monitor.get(KTHREADD);
    let (conn0, busy0, own0) = (c.daemon.connections(), machine_busy_s(), own_cpu_s());
    let log = std::fs::File::create(dir.join("rsync-bulk.log"))?;
    let t0 = mono_ns();
    let mut p = Proc::spawn(
        "rsync -a",
        Command::new("rsync")
            .arg("-a")
            .arg(format!("{}/", c.src.path().display()))
            .arg(c.daemon.url())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log),
    )?;
    c.monitor.track(p.pid);
    let exit = loop {
        sys::check_interrupt()?;
        if let Some(e) = p.wait_timeout(Duration::from_millis(100)) {
            break e;
        }
        if secs(mono_ns() - t0) > 1800.0 {
            bail!("rsync -a did not finish in 30 minutes");
        }
    };
    let t1 = mono_ns();
    let st = c.monitor.get(p.pid);
    c.monitor.untrack(p.pid);
    let dafter = c.monitor.sample_now(c.daemon.pid());
    let kafter = c.monitor.get(KTHREADD);
    let (conn1, busy1, own1) = (c.daemon.connections(), machine_busy_s(), own_cpu_s());
    let diff = compare(c.src.path(), c.tgt.path(), true)?;
    let files = rep.alive.len() as u64;
    let daemon_cpu = (dafter.cpu_s - dbase.cpu_s).max(0.0);
    let kernel_cpu = (kafter.cpu_s - kbase.cpu_s).max(0.0);
    let busy = busy1 - busy0;
    let bench_cpu = own1 - own0;
    Ok(RateSample {
        tool: Tool::RsyncBulk.id().into(),
        rate: rate.label(),
        ops,
        achieved_rate: files as f64 / secs(t1 - t0).max(1e-9),
        gen: GenCounts::of(&rep),
        latency_n: 0,
        converged_s: None,
        converge_cap_s: 0.0,
        diff,
        tool_cpu_s: exit.cpu_s,
        daemon_cpu_s: daemon_cpu,
        gen_cpu_s: gen_cpu,
        bench_cpu_s: bench_cpu,
        machine_busy_s: busy,
        kernel_threads_cpu_s: kernel_cpu,
        foreign_cpu_s: (busy - exit.cpu_s - daemon_cpu - bench_cpu - kernel_cpu).max(0.0),
        window_s: secs(t1 - t0),
        tree_rss_peak_mib: st.rss_peak as f64 / (1 << 20) as f64,
        hwm_mib: exit.maxrss_kb as f64 / 1024.0,
        rsync_runs: conn1.saturating_sub(conn0),
        rsync_seen: 1,
        rsync_max_live: 1,
        exit: exit.describe(),
        ..RateSample::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_takes_the_first_arrival_after_the_name_was_given() {
        let alive = [(1, 100), (2, 200), (3, 300)];
        // 1 arrives early (a partial copy) and again later; 3 never arrives after 300.
        let arrivals = [(1, 50), (1, 400), (1, 600), (2, 250), (3, 10)];
        let (lat, unseen) = latencies(&alive, &arrivals);
        assert_eq!(unseen, 1);
        assert_eq!(lat, vec![50e-9, 300e-9]);
        assert_eq!(pending(&alive, &arrivals), 1);
    }

    #[test]
    fn ops_are_capped() {
        let o = Opts {
            syncer: PathBuf::new(),
            quick: true,
            ram: false,
            repeat: 1,
            rates: vec![],
            duration_s: 10.0,
            max_files: 5000,
            d15_duration_s: 2.0,
            tools: vec![],
            tree_files: 0,
            tree_dirs: 0,
            mix: Mix::NONE,
            converge_cap_s: 30.0,
            busy_cap_s: 8.0,
            work: PathBuf::new(),
            images: PathBuf::new(),
            out: PathBuf::new(),
            name: String::new(),
            seed: 1,
            files_per_dir: 100,
            live: Default::default(),
            restart: Default::default(),
        };
        assert_eq!(o.ops_for(Tool::Script, RateSpec::Fixed(200.0)), 2000);
        assert_eq!(o.ops_for(Tool::Script, RateSpec::Fixed(5000.0)), 5000);
        assert_eq!(o.ops_for(Tool::LsyncdD15, RateSpec::Fixed(200.0)), 400);
        assert_eq!(o.ops_for(Tool::Script, RateSpec::Max), 5000);
    }
}
