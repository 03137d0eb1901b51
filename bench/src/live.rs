//! The rows "big tree under live load": a tree of N files in N/10 directories that the target
//! already holds, a tool started on it with its start-up pass, and the live load of a busy file
//! server (`live-gen`, see livegen.rs) written into the tree from the same moment on;
//! optionally the tool killed with SIGKILL a few seconds in and restarted at once. Then the wait
//! for convergence after the writer stopped, the full comparison, and every change's latency,
//! split into the changes made during the start-up pass and after it.
//!
//! Each tree size is built once ([`Pristine`]: the `tree` subcommand into a source image, that
//! image copied sparsely into the target image, the copy given a new UUID) and kept under the
//! work directory for later runs; every row gets fresh sparse copies of both images.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::bench::Ctx;
use crate::compare::{compare, Diff};
use crate::fsimg::{copy_image, LoopFs};
use crate::livegen::{Kind, LiveGenReport, LiveMix};
use crate::opts::LiveOpts;
use crate::procmon::{machine_busy_s, own_cpu_s, TreeStats};
use crate::stats::percentile;
use crate::sys::{self, mono_ns, run_cmd, secs, Proc};
use crate::tools::{self, Env, Running, Tool};
use crate::tree::WatchLimit;
use crate::watch::{Marks, Watcher};

/// A pristine pair of images of one tree size.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Pristine {
    pub files: u64,
    pub dirs: u64,
    #[serde(skip)]
    pub src: PathBuf,
    #[serde(skip)]
    pub tgt: PathBuf,
    /// Reused from an earlier run (the times below are then that run's).
    pub reused: bool,
    pub build_s: f64,
    /// `cp --sparse=always` of the source image into the target image.
    pub copy_s: f64,
    /// `tune2fs -U random` of the copy (instant with metadata_csum_seed).
    pub uuid_s: f64,
    /// Blocks allocated to one image, MiB.
    pub image_mib: f64,
    pub same_uuid: bool,
}

const GIB: u64 = 1 << 30;
const KIB: u64 = 1 << 10;

fn geometry(files: u64, dirs: u64, huge: bool) -> (u64, u64) {
    let inodes = files + dirs + files / 5 + 200_000;
    let size = if huge {
        inodes * 256 * 5 / 4 + dirs * 8 * KIB + 4 * GIB
    } else {
        (files + dirs) * 8 * KIB + 4 * GIB
    };
    (size, inodes)
}

fn mkfs_args(huge: bool) -> Vec<&'static str> {
    // metadata_csum_seed: the UUID can change without rewriting every checksum.
    let mut v = vec!["-O", "metadata_csum_seed"];
    if huge {
        v.extend(["-O", "inline_data", "-I", "256"]);
    }
    v
}

fn allocated_mib(p: &Path) -> f64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).map_or(0.0, |m| m.blocks() as f64 * 512.0 / (1 << 20) as f64)
}

/// Builds (or finds, kept from an earlier run) the pristine images of a tree of `files`.
pub fn pristine(c: &Ctx, lo: &LiveOpts, files: u64) -> Result<Pristine> {
    let dirs = (files / 10).max(1);
    let dir = c.o.images.clone();
    std::fs::create_dir_all(&dir)?;
    let tag = format!("{}{files}", if lo.huge { "huge-" } else { "tree-" });
    let (src, tgt, stamp) = (
        dir.join(format!("{tag}.src.img")),
        dir.join(format!("{tag}.tgt.img")),
        dir.join(format!("{tag}.json")),
    );
    let want = serde_json::json!({"files": files, "dirs": dirs, "seed": c.o.seed,
        "huge": lo.huge, "same_uuid": lo.same_uuid, "layout": 1});
    if !lo.rebuild && src.exists() && tgt.exists() {
        if let Ok(t) = std::fs::read(&stamp) {
            let (w, p): (serde_json::Value, Pristine) = serde_json::from_slice(&t)?;
            if w == want {
                eprintln!(
                    "== live: reusing the {files}-file images in {}",
                    dir.display()
                );
                return Ok(Pristine {
                    src,
                    tgt,
                    reused: true,
                    ..p
                });
            }
        }
    }
    let _ = std::fs::remove_file(&stamp);
    let p = build_pristine(c, lo, files, dirs, &src, &tgt)?;
    std::fs::write(&stamp, serde_json::to_vec(&(want, &p))?)?;
    Ok(p)
}

fn build_pristine(
    c: &Ctx,
    lo: &LiveOpts,
    files: u64,
    dirs: u64,
    src: &Path,
    tgt: &Path,
) -> Result<Pristine> {
    eprintln!("== live: building the {files}-file tree ({dirs} directories)");
    let (size, inodes) = geometry(files, dirs, lo.huge);
    let ((min, max), _) = lo.sizes();
    let t0 = mono_ns();
    let fs = LoopFs::create_with(
        src,
        &c.work.join("mnt/build"),
        size,
        Some(inodes),
        &mkfs_args(lo.huge),
    )?;
    let mut p = Proc::spawn(
        "tree generator",
        Command::new(&c.exe)
            .arg("tree")
            .arg("--dir")
            .arg(fs.path())
            .args(["--files", &files.to_string(), "--dirs", &dirs.to_string()])
            .args(["--seed", &c.o.seed.to_string()])
            .args([
                "--min-size",
                &min.to_string(),
                "--max-size",
                &max.to_string(),
            ])
            .stdin(Stdio::null()),
    )?;
    let exit = wait_proc(&mut p, 4.0 * 3600.0)?;
    if exit.code() != Some(0) {
        bail!("the tree generator failed: {}", exit.describe());
    }
    fs.unmount_keep()?;
    let build_s = secs(mono_ns() - t0);
    let t1 = mono_ns();
    let mut cp = copy_image(src, tgt)?;
    if wait_proc(&mut cp, 3600.0)?.code() != Some(0) {
        bail!("cp {} failed", src.display());
    }
    let copy_s = secs(mono_ns() - t1);
    let t2 = mono_ns();
    if !lo.same_uuid {
        run_cmd(
            Command::new("tune2fs").args(["-U", "random"]).arg(tgt),
            Duration::from_secs(3600),
        )?;
    }
    let p = Pristine {
        files,
        dirs,
        src: src.to_path_buf(),
        tgt: tgt.to_path_buf(),
        reused: false,
        build_s,
        copy_s,
        uuid_s: secs(mono_ns() - t2),
        image_mib: allocated_mib(src),
        same_uuid: lo.same_uuid,
    };
    eprintln!(
        "   built in {:.1} s ({:.0} MiB allocated); target copy {:.1} s; new UUID {:.2} s",
        p.build_s, p.image_mib, p.copy_s, p.uuid_s
    );
    Ok(p)
}

fn wait_proc(p: &mut Proc, cap_s: f64) -> Result<sys::Exit> {
    let t0 = mono_ns();
    loop {
        sys::check_interrupt()?;
        if let Some(e) = p.wait_timeout(Duration::from_millis(100)) {
            return Ok(e);
        }
        if secs(mono_ns() - t0) > cap_s {
            bail!("{} did not finish in {cap_s:.0} s", p.name);
        }
    }
}

/// Gives the bench's source and target filesystems fresh copies of the pristine images (both
/// copied at once), or, in the huge mode, the pristine images themselves (used up). Returns
/// the seconds the copies took.
pub(crate) fn fresh_copies(c: &mut Ctx, p: &Pristine, consume: bool) -> Result<f64> {
    c.src.release()?;
    c.tgt.release()?;
    let t0 = mono_ns();
    // Used up: moved, or copied and removed when the pristine images are on another
    // filesystem (--images, --ram) and a rename fails with EXDEV.
    let moved = consume && move_images(p, c)?;
    if !moved {
        let mut a = copy_image(&p.src, c.src.img())?;
        let mut b = copy_image(&p.tgt, c.tgt.img())?;
        for cp in [&mut a, &mut b] {
            if wait_proc(cp, 3600.0)?.code() != Some(0) {
                bail!("copying a pristine image failed");
            }
        }
        if consume {
            std::fs::remove_file(&p.src)?;
            std::fs::remove_file(&p.tgt)?;
        }
    }
    let s = secs(mono_ns() - t0);
    c.src.mount()?;
    c.tgt.mount()?;
    Ok(s)
}

/// Renames the pristine images into the fresh ones; false (nothing moved) when they are on
/// another filesystem. Both pristine images share a directory, and so do both fresh ones: only
/// the first rename can meet EXDEV.
fn move_images(p: &Pristine, c: &Ctx) -> Result<bool> {
    for (from, to) in [(&p.src, c.src.img()), (&p.tgt, c.tgt.img())] {
        match std::fs::rename(from, to) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) && from == &p.src => return Ok(false),
            Err(e) => return Err(e).with_context(|| format!("rename {}", from.display())),
        }
    }
    Ok(true)
}

/// Writes the fresh copies back to disk (so that no writeback of them runs during the row) and
/// drops the pristine images from the page cache (they are read again only by the next row's
/// copy; keeping them would push the row's own pages out). Returns the seconds it took.
pub(crate) fn flush_copies(c: &Ctx, p: &Pristine) -> Result<f64> {
    use std::os::fd::AsRawFd;
    let t0 = mono_ns();
    for img in [c.src.img(), c.tgt.img()] {
        std::fs::File::open(img)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("fsync {}", img.display()))?;
    }
    for img in [&p.src, &p.tgt] {
        if let Ok(f) = std::fs::File::open(img) {
            // SAFETY: plain syscall on an open descriptor.
            unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        }
    }
    Ok(secs(mono_ns() - t0))
}

/// Walks both fresh trees once (a metadata comparison, which must find them identical), so that
/// the row starts with the directories and inodes cached, as on a server in use. Returns the
/// seconds it took.
pub(crate) fn warm_up(c: &Ctx) -> Result<f64> {
    let t0 = mono_ns();
    let d = compare(c.src.path(), c.tgt.path(), false)?;
    if !d.files_ok() {
        bail!("the fresh copies differ before the row: {:?}", d.examples);
    }
    Ok(secs(mono_ns() - t0))
}

/// Latency statistics of one group of timed changes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Lat {
    /// Changes timed, and those whose arrival (or departure) was never seen.
    pub n: u64,
    pub never: u64,
    pub p50_s: Option<f64>,
    pub p90_s: Option<f64>,
    pub p99_s: Option<f64>,
    pub max_s: Option<f64>,
}

impl Lat {
    pub(crate) fn of(mut v: Vec<f64>, never: u64) -> Lat {
        v.sort_by(f64::total_cmp);
        Lat {
            n: v.len() as u64 + never,
            never,
            p50_s: percentile(&v, 50.0),
            p90_s: percentile(&v, 90.0),
            p99_s: percentile(&v, 99.0),
            max_s: v.last().copied(),
        }
    }
}

/// One live row.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct LiveSample {
    pub tool: String,
    pub files: u64,
    pub dirs: u64,
    pub rate: f64,
    /// Seconds after spawn of the kill -9 (and immediate restart), if this row has one.
    pub kill_s: Option<f64>,
    /// The load started once the start-up pass ended (CPU and rsync runs from then on).
    pub settled: bool,
    pub duration_s: f64,
    /// Fresh copies of both images for this row (parallel), seconds.
    pub copy_s: f64,
    /// fsync of both copies, and the warm-up walk of both trees before the spawn, seconds.
    pub flush_s: f64,
    pub warm_s: f64,
    pub ops: u64,
    pub achieved_rate: f64,
    pub late_ops: u64,
    pub gen: LiveCounts,
    /// Spawn to the event source's live line (of the instance that finished the start-up).
    pub live_s: Option<f64>,
    /// The start-up pass: spawn (or restart) to `initial sync finished` / `Startup of`.
    pub startup_s: Option<f64>,
    /// The killed instance's start-up pass, if it finished before the kill.
    pub first_startup_s: Option<f64>,
    /// When the last start-up pass finished (CLOCK_MONOTONIC), for the split of the latencies.
    #[serde(skip)]
    pub ready_ns: Option<u64>,
    pub lat_all: Lat,
    /// Changes completed before the start-up pass finished, and after.
    pub lat_startup: Lat,
    pub lat_after: Lat,
    pub lat_kinds: Vec<(String, Lat)>,
    /// Writer's end to the last change on the target after which the trees matched.
    pub converged_s: Option<f64>,
    pub converge_cap_s: f64,
    pub diff: Diff,
    /// The final full comparison (every byte), seconds, with the sequential read of both
    /// images before it (`preread_s`, included) that makes it fast.
    pub compare_s: f64,
    pub preread_s: f64,
    /// syncer's own CPU (rsync children excluded), all instances.
    pub self_cpu_s: Option<f64>,
    /// Its threads' CPU at the end, busiest first (the last instance).
    pub threads: Vec<(String, f64)>,
    pub tool_cpu_s: f64,
    pub daemon_cpu_s: f64,
    pub gen_cpu_s: f64,
    pub bench_cpu_s: f64,
    pub foreign_cpu_s: f64,
    pub window_s: f64,
    pub tree_rss_peak_mib: f64,
    pub hwm_mib: f64,
    pub rsync_runs: u64,
    pub syncer_rsync_spawned: Option<u64>,
    pub watcher_events: u64,
    pub warnings: Vec<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct LiveCounts {
    pub creates: u64,
    pub rewrites: u64,
    pub renames: u64,
    pub deletes: u64,
    pub tmpdirs: u64,
    pub tmp_files: u64,
    pub dir_renames: u64,
    pub mib: f64,
}

impl LiveCounts {
    fn of(r: &LiveGenReport) -> LiveCounts {
        LiveCounts {
            creates: r.creates,
            rewrites: r.rewrites,
            renames: r.renames,
            deletes: r.deletes,
            tmpdirs: r.tmpdirs,
            tmp_files: r.tmp_files,
            dir_renames: r.dir_renames,
            mib: r.bytes as f64 / (1 << 20) as f64,
        }
    }
}

/// The section in the report.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct LiveSection {
    pub opts: LiveOpts,
    pub images: Vec<Pristine>,
    pub samples: Vec<LiveSample>,
    pub elapsed_s: f64,
}

/// Sorted arrival and departure times of every name the watcher saw.
pub(crate) struct Index {
    arrived: HashMap<u64, Vec<u64>>,
    left: HashMap<u64, Vec<u64>>,
}

impl Index {
    pub(crate) fn of(m: &Marks) -> Index {
        let build = |v: &[(u64, u64)]| {
            let mut h: HashMap<u64, Vec<u64>> = HashMap::new();
            for &(k, t) in v {
                h.entry(k).or_default().push(t);
            }
            for ts in h.values_mut() {
                ts.sort_unstable();
            }
            h
        };
        Index {
            arrived: build(&m.arrived),
            left: build(&m.left),
        }
    }

    fn first(h: &HashMap<u64, Vec<u64>>, key: u64, t: u64) -> Option<u64> {
        let ts = h.get(&key)?;
        let i = ts.partition_point(|&x| x < t);
        ts.get(i).copied()
    }
}

/// Every timed change: (kind, op time, when it reached the target). A departure of a name the
/// pre-built tree did not hold is timed only if the target ever held it.
pub(crate) fn timed(rep: &LiveGenReport, ix: &Index) -> Vec<(Kind, u64, Option<u64>)> {
    let mut v: Vec<(Kind, u64, Option<u64>)> = rep
        .arrive
        .iter()
        .map(|&(k, t, kind)| (kind, t, Index::first(&ix.arrived, k, t)))
        .collect();
    v.extend(
        rep.leave
            .iter()
            .filter(|&&(k, _, _, pre)| pre || ix.arrived.contains_key(&k))
            .map(|&(k, t, kind, _)| (kind, t, Index::first(&ix.left, k, t))),
    );
    v
}

pub(crate) fn lat_of<'a>(it: impl Iterator<Item = &'a (Kind, u64, Option<u64>)>) -> Lat {
    let mut v = Vec::new();
    let mut never = 0;
    for &(_, t, at) in it {
        match at {
            Some(a) => v.push(secs(a - t)),
            None => never += 1,
        }
    }
    Lat::of(v, never)
}

/// Fills the latency fields; `ready` is when the (last) start-up pass finished.
fn latencies(s: &mut LiveSample, rep: &LiveGenReport, marks: &Marks, ready: Option<u64>) {
    let ix = Index::of(marks);
    let all = timed(rep, &ix);
    let cut = ready.unwrap_or(u64::MAX);
    s.lat_all = lat_of(all.iter());
    s.lat_startup = lat_of(all.iter().filter(|x| x.1 < cut));
    s.lat_after = lat_of(all.iter().filter(|x| x.1 >= cut));
    s.lat_kinds = Kind::ALL
        .iter()
        .map(|&k| (k.id().to_string(), lat_of(all.iter().filter(|x| x.0 == k))))
        .filter(|(_, l)| l.n > 0)
        .collect();
}

/// Every timed change, for a look at the tail: seconds from the load's start to the
/// operation, its kind, the name's key, and its latency in seconds (`-` never arrived).
fn write_latencies(path: &Path, rep: &LiveGenReport, marks: &Marks) -> Result<()> {
    use std::fmt::Write as _;
    let ix = Index::of(marks);
    let mut out = String::from("op_s\tkind\tkey\tlatency_s\n");
    let mut rows: Vec<(u64, Kind, u64, Option<u64>)> = rep
        .arrive
        .iter()
        .map(|&(k, t, kind)| (t, kind, k, Index::first(&ix.arrived, k, t)))
        .collect();
    rows.extend(
        rep.leave
            .iter()
            .filter(|&&(k, _, _, pre)| pre || ix.arrived.contains_key(&k))
            .map(|&(k, t, kind, _)| (t, kind, k, Index::first(&ix.left, k, t))),
    );
    rows.sort_unstable_by_key(|r| r.0);
    for (t, kind, k, at) in rows {
        let lat = at.map_or("-".to_string(), |a| format!("{:.3}", secs(a - t)));
        let _ = writeln!(
            out,
            "{:.3}\t{}\t{k}\t{lat}",
            secs(t.saturating_sub(rep.t_start)),
            kind.id()
        );
    }
    std::fs::write(path, out)?;
    Ok(())
}

/// How many timed changes have not reached the target yet.
fn pending(rep: &LiveGenReport, marks: &Marks) -> usize {
    timed(rep, &Index::of(marks))
        .iter()
        .filter(|x| x.2.is_none())
        .count()
}

/// No target event for this long, after the writer stopped, before the trees are compared.
const QUIET_NS: u64 = 500_000_000;

/// Waits for the target to match the source after the writer stopped at `w`: a quiet spell,
/// every timed change arrived, then a metadata comparison; again on new activity, until the
/// cap. Returns the convergence time (last target event - `w`).
pub(crate) fn wait_converged(
    c: &Ctx,
    watcher: &Watcher,
    rep: &LiveGenReport,
    w: u64,
) -> Result<Option<f64>> {
    let deadline = w + (c.o.live.converge_cap_s * 1e9) as u64;
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
        if pending(rep, &watcher.marks()) == 0 {
            let d = compare(c.src.path(), c.tgt.path(), false)?;
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
            Duration::from_nanos(deadline.saturating_sub(mono_ns()).min(2_000_000_000)),
        );
    }
}

/// The tool's instances over a row: the one running now, and what the killed one used.
struct Instances {
    run: Running,
    killed: Option<(Running, TreeStats, sys::Exit)>,
}

/// Kills the running instance with SIGKILL (its rsync children are left to finish, as after a
/// real kill -9) and starts a new one with the same arguments at once.
fn kill_and_restart(c: &Ctx, inst: &mut Instances, env: &Env) -> Result<()> {
    let pid = inst.run.proc.pid;
    let st = c.monitor.sample_now(pid);
    inst.run.proc.signal(libc::SIGKILL);
    let exit = inst
        .run
        .proc
        .wait_timeout(Duration::from_secs(10))
        .context("the killed tool did not die")?;
    let new = tools::start(inst.run.tool, env)?;
    c.monitor.track(new.proc.pid);
    c.monitor.untrack(pid);
    let old = std::mem::replace(&mut inst.run, new);
    inst.killed = Some((old, st, exit));
    Ok(())
}

/// Starts the live generator on the bench's source tree (`p`'s layout): `rate` operations/s
/// of `mix` for `duration_s`; its report goes to `dir/live-gen.json` ([`gen_report`]).
pub(crate) fn spawn_gen(
    c: &Ctx,
    p: &Pristine,
    rate: f64,
    duration_s: f64,
    mix: &LiveMix,
    dir: &Path,
) -> Result<Proc> {
    let lo = &c.o.live;
    let (_, (min, max)) = lo.sizes();
    let log = std::fs::File::create(dir.join("live-gen.log"))?;
    Proc::spawn(
        "live generator",
        Command::new(&c.exe)
            .arg("live-gen")
            .arg("--dir")
            .arg(c.src.path())
            .args([
                "--files",
                &p.files.to_string(),
                "--dirs",
                &p.dirs.to_string(),
            ])
            .args(["--rate", &rate.to_string()])
            .args(["--duration-s", &duration_s.to_string()])
            .args(["--mix", &mix.describe()])
            .args([
                "--tmp-life-ms",
                &format!("{}-{}", lo.tmp_life_ms.0, lo.tmp_life_ms.1),
            ])
            .args(["--seed", &c.o.seed.to_string()])
            .args([
                "--min-size",
                &min.to_string(),
                "--max-size",
                &max.to_string(),
            ])
            .arg("--out")
            .arg(dir.join("live-gen.json"))
            .arg("--trace")
            .arg(dir.join("live-gen.trace"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log),
    )
}

/// The report of a generator that exited with `e` (see [`spawn_gen`]).
pub(crate) fn gen_report(e: &sys::Exit, dir: &Path) -> Result<LiveGenReport> {
    if e.code() != Some(0) {
        bail!(
            "the live generator failed ({}): {}",
            e.describe(),
            std::fs::read_to_string(dir.join("live-gen.log")).unwrap_or_default()
        );
    }
    serde_json::from_slice(&std::fs::read(dir.join("live-gen.json"))?)
        .context("read the live generator's report")
}

/// Runs the generator (if `rate` > 0) while keeping the kill schedule; returns its report and
/// CPU seconds (None for the no-load row).
fn run_load(
    c: &Ctx,
    inst: &mut Instances,
    env: &Env,
    p: &Pristine,
    rate: f64,
    kill_at: Option<u64>,
    dir: &Path,
) -> Result<(Option<LiveGenReport>, f64)> {
    let lo = &c.o.live;
    let mut gen = if rate > 0.0 {
        Some(spawn_gen(c, p, rate, lo.duration_s, &lo.mix, dir)?)
    } else {
        None
    };
    let cap = mono_ns() + ((lo.duration_s + 120.0) * 1e9) as u64;
    let mut gen_exit = None;
    loop {
        sys::check_interrupt()?;
        if kill_at.is_some_and(|k| mono_ns() >= k) && inst.killed.is_none() {
            kill_and_restart(c, inst, env)?;
        }
        if let Some(g) = gen.as_mut() {
            if gen_exit.is_none() {
                gen_exit = g.wait_timeout(Duration::from_millis(20));
            }
        }
        let gen_done = gen.is_none() || gen_exit.is_some();
        if gen_done && (kill_at.is_none() || inst.killed.is_some()) {
            break;
        }
        if mono_ns() > cap {
            bail!("the live generator did not finish in time");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let Some(e) = gen_exit else {
        return Ok((None, 0.0));
    };
    Ok((Some(gen_report(&e, dir)?), e.cpu_s))
}

/// CPU seconds of every thread of `pid`, busiest first.
fn thread_cpu(pid: i32) -> Vec<(String, f64)> {
    // SAFETY: plain sysconf query.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut v: Vec<(String, f64)> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let t = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let (open, close) = (t.find('(')?, t.rfind(')')?);
            let f: Vec<&str> = t[close + 2..].split(' ').collect();
            let n = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
            Some((t[open + 1..close].to_string(), (n(11) + n(12)) as f64 / tck))
        })
        .collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v.truncate(6);
    v
}

/// Machine-wide counters at the start of a row's window, and the tool's own when the window
/// starts after its spawn (settled rows).
struct Base {
    t0: u64,
    daemon_cpu: f64,
    conn: u64,
    busy: f64,
    own: f64,
    tool_cpu: f64,
    tool_self: f64,
}

fn base(c: &Ctx, tool: Option<i32>) -> Base {
    let t = tool.map(|pid| c.monitor.sample_now(pid));
    Base {
        daemon_cpu: c.monitor.sample_now(c.daemon.pid()).cpu_s,
        conn: c.daemon.connections(),
        busy: machine_busy_s(),
        own: own_cpu_s(),
        tool_cpu: t.as_ref().map_or(0.0, |t| t.cpu_s),
        tool_self: t.as_ref().map_or(0.0, |t| t.self_cpu_s),
        t0: mono_ns(),
    }
}

/// One row: `tool` on fresh copies of `p`'s tree, the load at `rate` from spawn on, and the kill
/// -9 + restart at `kill_s` if given.
pub fn live_row(
    c: &mut Ctx,
    p: &Pristine,
    tool: Tool,
    rate: f64,
    kill_s: Option<f64>,
    dir: &Path,
) -> Result<LiveSample> {
    let mut s = LiveSample {
        tool: tool.id().into(),
        files: p.files,
        dirs: p.dirs,
        rate,
        kill_s,
        settled: c.o.live.settled && rate > 0.0,
        duration_s: if rate > 0.0 { c.o.live.duration_s } else { 0.0 },
        converge_cap_s: c.o.live.converge_cap_s,
        ..LiveSample::default()
    };
    s.copy_s = fresh_copies(c, p, c.o.live.huge)?;
    s.flush_s = flush_copies(c, p)?;
    s.warm_s = warm_up(c)?;
    let watcher = Watcher::start(c.tgt.path())?;
    let url = c.daemon.url();
    let (src, run_dir) = (c.src.path().to_path_buf(), dir.to_path_buf());
    let env = Env {
        syncer: &c.o.syncer,
        source: &src,
        url: &url,
        dir: &run_dir,
        initial_sync: true,
        full_resync: false,
    };
    let mut b = base(c, None);
    let run = tools::start(tool, &env)?;
    c.monitor.track(run.proc.pid);
    let kill_at = kill_s.map(|k| run.t_spawn + (k * 1e9) as u64);
    let mut inst = Instances { run, killed: None };
    let r = measure(
        c, &mut s, &mut inst, &env, p, &watcher, kill_at, &mut b, dir,
    );
    c.monitor.untrack(inst.run.proc.pid);
    let stopped = inst.run.stop(Duration::from_secs(30));
    let seen = watcher.stop()?;
    let rep = r?;
    if let Some(rep) = &rep {
        let ready = s.ready_ns;
        latencies(&mut s, rep, &seen.marks, ready);
        if let Err(e) = write_latencies(&dir.join("latencies.tsv"), rep, &seen.marks) {
            eprintln!("cannot write {}: {e}", dir.join("latencies.tsv").display());
        }
    }
    s.watcher_events = seen.events;
    s.syncer_rsync_spawned = stopped.rsync_spawned;
    s.warnings = stopped.warnings;
    if seen.overflow {
        s.warnings
            .push("the target watcher's queue overflowed".into());
    }
    Ok(s)
}

/// The measured part of a row, between the spawn and the stop. Returns the load's report.
#[allow(clippy::too_many_arguments)]
fn measure(
    c: &Ctx,
    s: &mut LiveSample,
    inst: &mut Instances,
    env: &Env,
    p: &Pristine,
    watcher: &Watcher,
    kill_at: Option<u64>,
    b: &mut Base,
    dir: &Path,
) -> Result<Option<LiveGenReport>> {
    let lo = &c.o.live;
    let tool = inst.run.tool;
    if s.settled {
        // Steady state: the pass is over before the first operation, and the window starts here.
        let cap = Duration::from_secs_f64(lo.startup_cap_s);
        let t = inst.run.tap.wait_for(tool.ready_marker(), cap)?;
        s.startup_s = Some(secs(t - inst.run.t_spawn));
        *b = base(c, Some(inst.run.proc.pid));
    }
    let (rep, gen_cpu) = run_load(c, inst, env, p, s.rate, kill_at, dir)?;
    if inst.run.proc.exited() {
        bail!(
            "{} exited during the run: {}",
            tool.id(),
            inst.run.tap.tail()
        );
    }
    if let Some(rep) = &rep {
        s.ops = rep.ops;
        s.achieved_rate = rep.achieved_rate();
        s.late_ops = rep.late_ops;
        s.gen = LiveCounts::of(rep);
        s.converged_s = wait_converged(c, watcher, rep, rep.t_end)?;
    }
    let cap = inst.run.t_spawn + (lo.startup_cap_s * 1e9) as u64;
    let wait = Duration::from_nanos(cap.saturating_sub(mono_ns()).max(1));
    if let Ok(t) = inst.run.tap.wait_for(tool.ready_marker(), wait) {
        s.startup_s = Some(secs(t - inst.run.t_spawn));
        s.ready_ns = Some(t);
    }
    if let Ok(t) = inst
        .run
        .tap
        .wait_for(tool.live_marker(), Duration::from_millis(1))
    {
        s.live_s = Some(secs(t - inst.run.t_spawn));
    }
    if let Some((old, _, _)) = &inst.killed {
        if let Ok(t) = old
            .tap
            .wait_for(tool.ready_marker(), Duration::from_millis(1))
        {
            s.first_startup_s = Some(secs(t - old.t_spawn));
        }
    }
    account(c, s, inst, b, gen_cpu);
    let t = mono_ns();
    s.preread_s = crate::fsimg::preread(&[c.src.img(), c.tgt.img()])?;
    s.diff = compare(c.src.path(), c.tgt.path(), true)?;
    s.compare_s = secs(mono_ns() - t);
    Ok(rep)
}

/// CPU, memory and rsync counts of the row's window (all instances of the tool).
fn account(c: &Ctx, s: &mut LiveSample, inst: &Instances, b: &Base, gen_cpu: f64) {
    let pid = inst.run.proc.pid;
    let now = c.monitor.sample_now(pid);
    let d = c.monitor.sample_now(c.daemon.pid());
    let (old_cpu, old_self, old_rss, old_hwm) = match &inst.killed {
        Some((_, st, exit)) => (
            exit.cpu_s.max(st.cpu_s),
            st.self_cpu_s,
            st.rss_peak,
            st.vm_hwm_kb,
        ),
        None => (0.0, 0.0, 0, 0),
    };
    s.tool_cpu_s = now.cpu_s + old_cpu - b.tool_cpu;
    if inst.run.tool.is_syncer() {
        s.self_cpu_s = Some(now.self_cpu_s + old_self - b.tool_self);
        s.threads = thread_cpu(pid);
    }
    s.daemon_cpu_s = (d.cpu_s - b.daemon_cpu).max(0.0);
    s.gen_cpu_s = gen_cpu;
    s.bench_cpu_s = own_cpu_s() - b.own;
    s.window_s = secs(mono_ns() - b.t0);
    let busy = machine_busy_s() - b.busy;
    s.foreign_cpu_s = (busy - s.tool_cpu_s - s.daemon_cpu_s - s.gen_cpu_s - s.bench_cpu_s).max(0.0);
    s.tree_rss_peak_mib = now.rss_peak.max(old_rss) as f64 / (1 << 20) as f64;
    s.hwm_mib = now.vm_hwm_kb.max(old_hwm) as f64 / 1024.0;
    s.rsync_runs = c.daemon.connections().saturating_sub(b.conn);
}

/// The rows of one tree, in order: for each rate, each tool (syncer at `rates`, the others at
/// `peer_rates`), without and (if asked, at a rate above 0) with the kill.
pub fn rows(lo: &LiveOpts) -> Vec<(Tool, f64, Option<f64>)> {
    let mut all: Vec<f64> = lo.rates.iter().chain(&lo.peer_rates).copied().collect();
    all.sort_by(f64::total_cmp);
    all.dedup();
    let mut v = Vec::new();
    for rate in all {
        for &tool in &lo.tools {
            let rates = if tool.is_syncer() {
                &lo.rates
            } else {
                &lo.peer_rates
            };
            if !rates.contains(&rate) {
                continue;
            }
            v.push((tool, rate, None));
            if let (Some(k), true) = (lo.kill_s, rate > 0.0) {
                v.push((tool, rate, Some(k)));
            }
        }
    }
    v
}

fn progress(i: usize, n: usize, s: &LiveSample) {
    let f = |v: Option<f64>| v.map_or("-".into(), crate::fmt::dur);
    let kill = if s.kill_s.is_some() { " +kill" } else { "" };
    if let Some(e) = &s.error {
        let e = e.lines().next().unwrap_or("");
        eprintln!(
            "[live {i}/{n}] {} {} @ {}{kill}: FAILED: {e}",
            s.files, s.tool, s.rate
        );
        return;
    }
    eprintln!(
        "[live {i}/{n}] {:>8} files {:<16} @ {:>5}{kill}: start-up {:>7}  p99 during {:>7} \
         after {:>7}  converged {:>7}  missing {} wrong {} extra {}  own cpu {} s  copy {:.1} s  \
         flush {:.1} s  warm {:.1} s  compare {:.1} s",
        s.files,
        s.tool,
        s.rate,
        f(s.startup_s),
        f(s.lat_startup.p99_s),
        f(s.lat_after.p99_s),
        f(s.converged_s),
        s.diff.files_missing + s.diff.dirs_missing,
        s.diff.files_wrong,
        s.diff.files_extra + s.diff.dirs_extra,
        s.self_cpu_s.map_or("-".into(), |x| format!("{x:.1}")),
        s.copy_s,
        s.flush_s,
        s.warm_s,
        s.compare_s
    );
}

/// Runs the whole section.
pub fn run(c: &mut Ctx) -> Result<LiveSection> {
    let lo = c.o.live.clone();
    let t0 = mono_ns();
    let mut sec = LiveSection {
        opts: lo.clone(),
        ..LiveSection::default()
    };
    let per_tree = rows(&lo);
    let total = per_tree.len() * lo.trees.len();
    let mut i = 0;
    for &files in &lo.trees {
        let p = pristine(c, &lo, files)?;
        let _limit = WatchLimit::ensure(p.dirs * 2 + 10_000);
        sec.images.push(p.clone());
        for &(tool, rate, kill) in &per_tree {
            i += 1;
            let name = format!(
                "live-{files}-{rate}-{}{}",
                tool.id(),
                if kill.is_some() { "-kill" } else { "" }
            );
            let dir = c.run_dir(&name)?;
            let s = live_row(c, &p, tool, rate, kill, &dir).or_else(|e| {
                sys::check_interrupt()?;
                Ok::<_, anyhow::Error>(LiveSample {
                    tool: tool.id().into(),
                    files,
                    dirs: p.dirs,
                    rate,
                    kill_s: kill,
                    error: Some(format!("{e:#}")),
                    ..LiveSample::default()
                })
            })?;
            progress(i, total, &s);
            sec.samples.push(s);
        }
    }
    sec.elapsed_s = secs(mono_ns() - t0);
    Ok(sec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_split_at_the_end_of_the_start_up_pass() {
        let rep = LiveGenReport {
            arrive: vec![(1, 100, Kind::Create), (2, 300, Kind::Rewrite)],
            leave: vec![(3, 150, Kind::Delete, true), (4, 400, Kind::Delete, false)],
            ..LiveGenReport::default()
        };
        let marks = Marks {
            arrived: vec![(1, 50), (1, 180), (2, 900)],
            left: vec![(3, 160)],
        };
        let mut s = LiveSample::default();
        latencies(&mut s, &rep, &marks, Some(200));
        // 4 never reached the target, so its deletion is not timed.
        assert_eq!((s.lat_all.n, s.lat_all.never), (3, 0));
        assert_eq!(s.lat_startup.n, 2);
        assert_eq!(s.lat_startup.max_s, Some(80e-9));
        assert_eq!(s.lat_after.p50_s, Some(600e-9));
        assert_eq!(pending(&rep, &marks), 0);
        let none = Marks::default();
        assert_eq!(pending(&rep, &none), 3);
    }

    #[test]
    fn rows_run_peers_at_their_rates_and_kill_only_under_load() {
        let lo = LiveOpts {
            rates: vec![0.0, 500.0, 2000.0],
            peer_rates: vec![500.0],
            tools: vec![Tool::SyncerFanotify, Tool::LsyncdD1],
            kill_s: Some(6.0),
            ..LiveOpts::default()
        };
        let r = rows(&lo);
        assert_eq!(r.len(), 1 + 2 + 2 + 2);
        assert_eq!(r[0], (Tool::SyncerFanotify, 0.0, None));
        assert!(r.contains(&(Tool::LsyncdD1, 500.0, Some(6.0))));
        assert!(!r.iter().any(|x| x.0 == Tool::LsyncdD1 && x.1 == 2000.0));
    }
}
