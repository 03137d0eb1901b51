//! `syncer-bench`: the load bench of syncer against its peers (lsyncd, the inotifywait+rsync
//! script, one-shot rsync), run by `cargo xtask bench [--quick]`. This file owns the command
//! line and the order of the runs; see bench/README.md for the method and the columns.
//!
//! Hidden subcommands are the bench re-executing itself: `gen` (the workload generator, in its
//! own process), `tree` (the start-up tree) and `live-gen` (the live load written into a big
//! tree).

mod bench;
mod compare;
mod daemon;
mod fmt;
mod fsimg;
mod gen;
mod live;
mod livegen;
mod livereport;
mod opts;
mod procmon;
mod report;
mod restart;
mod stats;
mod sys;
mod tools;
mod tree;
mod watch;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::bench::{Ctx, RateSample};
use crate::gen::Mix;
use crate::livegen::LiveMix;
use crate::opts::{LiveOpts, Opts, RateSpec, RestartOpts};
use crate::report::{Meta, Report};
use crate::sys::{mono_ns, secs};
use crate::tools::Tool;

/// The work directory on disk (the default; with --ram, where the pristine images stay).
const DISK_WORK: &str = "/var/tmp/syncer-bench";

#[derive(Parser)]
#[command(
    name = "syncer-bench",
    about = "Load bench: syncer vs lsyncd, the inotifywait+rsync script and rsync",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    bench: BenchArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Internal: the workload generator.
    #[command(hide = true)]
    Gen {
        #[arg(long)]
        dir: PathBuf,
        /// Operations per second (0: as fast as possible).
        #[arg(long)]
        rate: f64,
        #[arg(long)]
        ops: u64,
        #[arg(long, default_value_t = 600.0)]
        time_cap_s: f64,
        #[arg(long, default_value = "none")]
        mix: String,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value_t = 100)]
        files_per_dir: u32,
        #[arg(long, default_value_t = 10)]
        dirs_per_top: u32,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        trace: Option<PathBuf>,
    },
    /// Internal: the live load, written into an existing start-up tree.
    #[command(hide = true)]
    LiveGen {
        #[arg(long)]
        dir: PathBuf,
        /// The tree's files and directories (its layout is computed, not read).
        #[arg(long)]
        files: u64,
        #[arg(long)]
        dirs: u64,
        #[arg(long)]
        rate: f64,
        #[arg(long)]
        duration_s: f64,
        #[arg(long, default_value = LiveMix::DEFAULT)]
        mix: String,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value_t = 1024)]
        min_size: u64,
        #[arg(long, default_value_t = 32768)]
        max_size: u64,
        /// Life of a temporary directory before its `rm -r`, milliseconds.
        #[arg(long, default_value = "500-2000")]
        tmp_life_ms: String,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        trace: Option<PathBuf>,
    },
    /// Compares two trees as the bench does (metadata; with --contents every byte too) and
    /// prints the differences and the time it took.
    Compare {
        src: PathBuf,
        tgt: PathBuf,
        #[arg(long)]
        contents: bool,
    },
    /// Re-renders the Markdown of a saved JSON report (after a change of the layout).
    Render {
        /// The JSON report, e.g. bench/results/latest.json.
        json: PathBuf,
    },
    /// Internal: writes the start-up tree.
    #[command(hide = true)]
    Tree {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        files: u64,
        #[arg(long)]
        dirs: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Smallest file, bytes.
        #[arg(long, default_value_t = 512)]
        min_size: u64,
        /// Largest file, bytes.
        #[arg(long, default_value_t = 4096)]
        max_size: u64,
    },
}

#[derive(Args)]
struct BenchArgs {
    /// The syncer binary (cargo xtask bench passes target/release/syncer).
    #[arg(long)]
    syncer: Option<PathBuf>,
    /// The short run (under 3 minutes): two rates, short rows, a 100k-file tree, no repeats.
    #[arg(long)]
    quick: bool,
    /// Put the filesystem images in /dev/shm instead of on disk (the pristine images of the
    /// big-tree rows stay on disk, see --images).
    #[arg(long)]
    ram: bool,
    /// Directory for the pristine images of the big-tree rows (default WORK/live-images; with
    /// --ram /var/tmp/syncer-bench/live-images: they are read once per row, and the copies of a
    /// 1 M-file tree fit in RAM where copies and pristine images together do not).
    #[arg(long)]
    images: Option<PathBuf>,
    /// Runs of every row (the tables show the median and min–max).
    #[arg(long)]
    repeat: Option<usize>,
    /// Comma-separated rates in files/s, or `max` (default 200,1000,5000,max; quick: 1000,5000).
    #[arg(long)]
    rates: Option<String>,
    /// Seconds of writing per row (default 20; quick: 3).
    #[arg(long)]
    duration: Option<f64>,
    /// Seconds of writing in the lsyncd delay=15 rows (default: as --duration; quick: 3).
    #[arg(long)]
    d15_duration: Option<f64>,
    /// Most operations in one row, and the count of the `max` rate (default 50000; quick 8000).
    #[arg(long)]
    max_files: Option<u64>,
    /// Comma-separated tools: syncer-fanotify, syncer-inotify, syncer-ebpf, lsyncd-d1,
    /// lsyncd-d15, script, rsync-bulk (default: all).
    #[arg(long)]
    tools: Option<String>,
    /// Files in the start-up tree (default 1000000; quick 100000; 0 skips the start-up runs).
    #[arg(long)]
    tree_files: Option<u64>,
    /// Directories of the start-up tree (default: files / 10).
    #[arg(long)]
    tree_dirs: Option<u64>,
    /// Skip the rate runs (only the start-up tree).
    #[arg(long)]
    no_rates: bool,
    /// Operation mix in percent, or `none` (default rewrite=5,rename=3,delete=2,dirrename=0.02).
    #[arg(long)]
    mix: Option<String>,
    /// Longest wait for the target to converge after the writer stops, seconds (default 60;
    /// quick 20).
    #[arg(long)]
    converge_cap: Option<f64>,
    /// Longest wait, after the writer stops, for the tool to stop running rsync (default: the
    /// convergence cap; quick 5).
    #[arg(long)]
    busy_cap: Option<f64>,
    /// Directory for images, mounts and logs (default /var/tmp/syncer-bench, or
    /// /dev/shm/syncer-bench with --ram).
    #[arg(long)]
    work: Option<PathBuf>,
    /// Where NAME.json and NAME.md go (default: bench/results).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Base name of the result files.
    #[arg(long, default_value = "latest")]
    name: String,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Files per leaf directory.
    #[arg(long, default_value_t = 100)]
    files_per_dir: u32,
    #[command(flatten)]
    live: LiveArgs,
}

/// The rows "big tree under live load" (see bench/README.md).
#[derive(Args)]
struct LiveArgs {
    /// Skip the live-load rows.
    #[arg(long)]
    no_live: bool,
    /// Tree sizes in files, directories = files / 10 (default 10000,1000000; quick 100000).
    #[arg(long)]
    live_trees: Option<String>,
    /// syncer's rates in operations/s, 0 = no load (default 0,500,1000,2000; quick 0,500).
    #[arg(long)]
    live_rates: Option<String>,
    /// The other tools' rates (default 0,500; `none` for no rows).
    #[arg(long)]
    live_peer_rates: Option<String>,
    /// Tools (default syncer-fanotify,lsyncd-d1; quick syncer-fanotify).
    #[arg(long)]
    live_tools: Option<String>,
    /// Seconds of writing per row (default 30; quick 15).
    #[arg(long)]
    live_duration: Option<f64>,
    /// Seconds after spawn of the kill -9 + restart rows; 0 = no such rows (default 6).
    #[arg(long)]
    live_kill: Option<f64>,
    /// Start the load only once the start-up pass ended (steady state on a big tree): CPU,
    /// rsync runs and latencies count from the load's start; no kill rows.
    #[arg(long)]
    live_settled: bool,
    /// Longest wait for convergence after the writer stops (default 180; quick 60).
    #[arg(long)]
    live_converge_cap: Option<f64>,
    /// Longest wait for the start-up pass, from the (re)spawn (default 900; quick 180).
    #[arg(long)]
    live_startup_cap: Option<f64>,
    /// The live load's mix in percent, creations the rest.
    #[arg(long, default_value = LiveMix::DEFAULT)]
    live_mix: String,
    /// Life of the load's temporary directories before their `rm -r`, ms (default 500-2000).
    #[arg(long, default_value = "500-2000")]
    live_tmp_life: String,
    /// Build the pristine tree images again even if matching ones are kept.
    #[arg(long)]
    live_rebuild: bool,
    /// Give the target image the source's UUID (a check that this is harmless).
    #[arg(long)]
    live_same_uuid: bool,
    /// Only the huge-tree run: N tiny files (ext4 inline_data) in N/10 directories, syncer at
    /// --live-rates (default 500), results in bench/results/huge.{md,json}.
    #[arg(long)]
    huge_tree: Option<u64>,
    /// Tree sizes of the rows "restarts on a big tree" (default 1000000; quick 100000; `none`
    /// skips them): kill -9 under load with and without the state's index, a stop with files
    /// changed meanwhile, one `rsync -a` of the same.
    #[arg(long)]
    restart_trees: Option<String>,
    /// The load of the restart rows' kill -9, operations/s (default 500).
    #[arg(long, default_value_t = 500.0)]
    restart_rate: f64,
    /// How long that load runs, s (default 30; quick 15).
    #[arg(long)]
    restart_duration: Option<f64>,
    /// Percent of the files changed while syncer is stopped (default 1).
    #[arg(long, default_value_t = 1.0)]
    restart_changed: f64,
}

fn resolve_restart(a: &LiveArgs, q: bool) -> Result<RestartOpts> {
    let trees = match (&a.restart_trees, a.no_live || a.huge_tree.is_some()) {
        (Some(t), _) => list_f64(t)?,
        (None, true) => Vec::new(),
        (None, false) => vec![if q { 100_000.0 } else { 1_000_000.0 }],
    };
    Ok(RestartOpts {
        trees: trees.into_iter().map(|x| x as u64).collect(),
        rate: a.restart_rate,
        duration_s: a.restart_duration.unwrap_or(if q { 15.0 } else { 30.0 }),
        changed_pct: a.restart_changed,
    })
}

fn list_f64(s: &str) -> Result<Vec<f64>> {
    if s == "none" || s.is_empty() {
        return Ok(Vec::new());
    }
    s.split(',')
        .map(|x| {
            x.trim()
                .parse::<f64>()
                .with_context(|| format!("number {x:?}"))
        })
        .collect()
}

fn resolve_live(a: &LiveArgs, q: bool) -> Result<LiveOpts> {
    let huge = a.huge_tree.is_some();
    let pick = |v: &Option<String>, full: &str, quick: &str, huge_v: &str| -> String {
        v.clone().unwrap_or_else(|| {
            if huge {
                huge_v.into()
            } else if q {
                quick.into()
            } else {
                full.into()
            }
        })
    };
    let trees = match a.huge_tree {
        Some(n) => vec![n],
        None if a.no_live => Vec::new(),
        None => list_f64(&pick(&a.live_trees, "10000,1000000", "100000", ""))?
            .into_iter()
            .map(|x| x as u64)
            .collect(),
    };
    let tools = pick(
        &a.live_tools,
        "syncer-fanotify,lsyncd-d1",
        "syncer-fanotify",
        "syncer-fanotify",
    )
    .split(',')
    .map(Tool::parse)
    .collect::<Result<Vec<_>>>()?;
    let kill = a.live_kill.unwrap_or(if huge { 0.0 } else { 6.0 });
    Ok(LiveOpts {
        trees,
        rates: list_f64(&pick(&a.live_rates, "0,500,1000,2000", "0,500", "500"))?,
        peer_rates: list_f64(&pick(&a.live_peer_rates, "0,500", "0,500", "none"))?,
        tools,
        duration_s: a.live_duration.unwrap_or(if q { 15.0 } else { 30.0 }),
        kill_s: (kill > 0.0 && !a.live_settled).then_some(kill),
        settled: a.live_settled,
        converge_cap_s: a.live_converge_cap.unwrap_or(if q { 60.0 } else { 180.0 }),
        startup_cap_s: a.live_startup_cap.unwrap_or(if q { 180.0 } else { 900.0 }),
        mix: LiveMix::parse(&a.live_mix)?,
        tmp_life_ms: livegen::parse_range(&a.live_tmp_life)?,
        huge,
        rebuild: a.live_rebuild,
        same_uuid: a.live_same_uuid,
    })
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Some(Cmd::Gen {
            dir,
            rate,
            ops,
            time_cap_s,
            mix,
            seed,
            files_per_dir,
            dirs_per_top,
            out,
            trace,
        }) => Mix::parse(&mix).and_then(|mix| {
            gen::run_gen(&gen::GenArgs {
                dir,
                rate,
                ops,
                time_cap: Duration::from_secs_f64(time_cap_s),
                mix,
                seed,
                files_per_dir,
                dirs_per_top,
                out,
                trace,
            })
        }),
        Some(Cmd::Tree {
            dir,
            files,
            dirs,
            seed,
            min_size,
            max_size,
        }) => gen::run_tree(&gen::TreeArgs {
            dir,
            files,
            dirs,
            seed,
            min_size,
            max_size,
        }),
        Some(Cmd::LiveGen {
            dir,
            files,
            dirs,
            rate,
            duration_s,
            mix,
            seed,
            min_size,
            max_size,
            tmp_life_ms,
            out,
            trace,
        }) => LiveMix::parse(&mix).and_then(|mix| {
            livegen::run_live_gen(&livegen::LiveGenArgs {
                tmp_life_ms: livegen::parse_range(&tmp_life_ms)?,
                dir,
                layout: gen::TreeLayout::new(files, dirs),
                rate,
                duration: Duration::from_secs_f64(duration_s),
                mix,
                seed,
                min_size,
                max_size,
                out,
                trace,
            })
        }),
        Some(Cmd::Compare { src, tgt, contents }) => {
            let t0 = mono_ns();
            compare::compare(&src, &tgt, contents).map(|d| {
                println!("{d:#?}\ntook {:.1} s", secs(mono_ns() - t0));
            })
        }
        Some(Cmd::Render { json }) => report::render(&json),
        None => run_bench(cli.bench),
    };
    if let Err(e) = r {
        eprintln!("syncer-bench: {e:#}");
        std::process::exit(1);
    }
}

fn resolve(a: BenchArgs) -> Result<Opts> {
    let q = a.quick;
    let live = resolve_live(&a.live, q)?;
    let restart = resolve_restart(&a.live, q)?;
    let huge = live.huge;
    let syncer = match a.syncer {
        Some(p) => p,
        None => {
            let exe = std::env::current_exe()?;
            exe.with_file_name("syncer")
        }
    };
    let syncer = std::fs::canonicalize(&syncer).with_context(|| {
        format!(
            "the syncer binary {} (build it, or pass --syncer)",
            syncer.display()
        )
    })?;
    let rates = a
        .rates
        .unwrap_or_else(|| {
            if q {
                "1000,5000".into()
            } else {
                "200,1000,5000,max".into()
            }
        })
        .split(',')
        .map(RateSpec::parse)
        .collect::<Result<Vec<_>>>()?;
    let tools = match a.tools {
        Some(t) => t.split(',').map(Tool::parse).collect::<Result<Vec<_>>>()?,
        None => tools::ALL.to_vec(),
    };
    let duration_s = a.duration.unwrap_or(if q { 3.0 } else { 20.0 });
    let tree_files = if huge {
        0
    } else {
        a.tree_files.unwrap_or(if q { 100_000 } else { 1_000_000 })
    };
    let converge_cap_s = a.converge_cap.unwrap_or(if q { 20.0 } else { 60.0 });
    let ram = a.ram;
    let work = a.work.unwrap_or_else(|| {
        PathBuf::from(if ram {
            "/dev/shm/syncer-bench"
        } else {
            DISK_WORK
        })
    });
    let images = a
        .images
        .unwrap_or_else(|| if ram { Path::new(DISK_WORK) } else { &work }.join("live-images"));
    Ok(Opts {
        syncer,
        quick: q,
        ram,
        images,
        repeat: a.repeat.unwrap_or(if q { 1 } else { 3 }).max(1),
        rates: if a.no_rates || huge {
            Vec::new()
        } else {
            rates
        },
        duration_s,
        max_files: a.max_files.unwrap_or(if q { 8_000 } else { 50_000 }),
        d15_duration_s: a.d15_duration.unwrap_or(if q { 3.0 } else { duration_s }),
        tools,
        tree_files,
        tree_dirs: a.tree_dirs.unwrap_or((tree_files / 10).max(1)),
        mix: Mix::parse(
            a.mix
                .as_deref()
                .unwrap_or("rewrite=5,rename=3,delete=2,dirrename=0.02"),
        )?,
        converge_cap_s,
        busy_cap_s: a.busy_cap.unwrap_or(if q { 5.0 } else { converge_cap_s }),
        work,
        out: a
            .out
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results")),
        name: if huge && a.name == "latest" {
            "huge".into()
        } else {
            a.name
        },
        seed: a.seed,
        files_per_dir: a.files_per_dir,
        live,
        restart,
    })
}

/// First line of `cmd`'s output, or "?".
fn probe(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("?")
                .trim()
                .to_string()
        })
        .unwrap_or_else(|| "?".into())
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd} >/dev/null"))
        .status()
        .is_ok_and(|s| s.success())
}

fn meta(o: &Opts) -> Meta {
    let mem_kb: f64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0.0);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let rev = probe(
        "git",
        &[
            "-C",
            &root.to_string_lossy(),
            "rev-parse",
            "--short",
            "HEAD",
        ],
    );
    let dirty = Command::new("git")
        .args([
            "-C",
            &root.to_string_lossy(),
            "status",
            "--porcelain",
            "--",
            "syncer",
        ])
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    Meta {
        date: probe("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        mode: if o.quick {
            "quick".into()
        } else {
            "full".into()
        },
        storage: if o.ram {
            format!(
                "ext4 images in RAM ({}; pristine images of the big trees on disk: {})",
                o.work.display(),
                o.images.display()
            )
        } else {
            format!("ext4 images on disk ({})", o.work.display())
        },
        repeat: o.repeat,
        mix: o.mix.describe(),
        duration_s: o.duration_s,
        d15_duration_s: o.d15_duration_s,
        max_files: o.max_files,
        converge_cap_s: o.converge_cap_s,
        busy_cap_s: o.busy_cap_s,
        files_per_dir: o.files_per_dir,
        kernel: probe("uname", &["-r"]),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        mem_gib: mem_kb / (1024.0 * 1024.0),
        rsync: probe("rsync", &["--version"])
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
        lsyncd: format!(
            "lsyncd {}",
            probe("lsyncd", &["--version"]).trim_start_matches("Version: ")
        ),
        inotifywait: probe("inotifywait", &["--help"]),
        syncer: probe(&o.syncer.to_string_lossy(), &["--version"]),
        git: format!("{rev}{}", if dirty { " (syncer/ modified)" } else { "" }),
        load_before: std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
            .to_string(),
        ..Meta::default()
    }
}

fn progress(i: usize, n: usize, s: &RateSample) {
    let f = |v: Option<f64>| v.map_or("-".into(), fmt::dur);
    if let Some(e) = &s.error {
        eprintln!(
            "[{i}/{n}] {} @ {}: FAILED: {}",
            s.tool,
            s.rate,
            e.lines().next().unwrap_or("")
        );
        return;
    }
    eprintln!(
        "[{i}/{n}] {:<16} @ {:>5}: {:>6.0} files/s  p50 {:>7}  p99 {:>7}  max {:>7}  converged {:>7}  \
         missing {} wrong {} extra {}  cpu {:.2} s  rsync runs {}",
        s.tool,
        s.rate,
        s.achieved_rate,
        f(s.p50_s),
        f(s.p99_s),
        f(s.max_s),
        if s.tool == Tool::RsyncBulk.id() { "-".into() } else { f(s.converged_s) },
        s.diff.files_missing,
        s.diff.files_wrong,
        s.diff.files_extra,
        s.tool_cpu_s,
        s.rsync_runs
    );
}

fn run_bench(a: BenchArgs) -> Result<()> {
    // SAFETY: plain syscall.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the bench needs root (loop mounts, fanotify filesystem marks)");
    }
    sys::install_signal_handlers();
    let mut o = resolve(a)?;
    let mut notes = Vec::new();
    for (tool, cmd) in [
        (Tool::LsyncdD1, "lsyncd"),
        (Tool::LsyncdD15, "lsyncd"),
        (Tool::Script, "inotifywait"),
    ] {
        if o.tools.contains(&tool) && !have(cmd) {
            notes.push(format!(
                "{} skipped: `{cmd}` is not installed",
                tool.label()
            ));
            o.tools.retain(|t| *t != tool);
        }
    }
    let t_start = mono_ns();
    let mut meta = meta(&o);
    let mut ctx = Ctx::new(o.clone())?;
    let runnable: Vec<Tool> = o.tools.clone();
    let total = o.repeat * o.rates.len() * runnable.len();
    let mut samples = Vec::new();
    let mut i = 0;
    for rep in 0..o.repeat {
        for &rate in &o.rates {
            for &tool in &runnable {
                i += 1;
                let dir = ctx.run_dir(&format!("{}-{}-{}", rate.label(), tool.id(), rep))?;
                let s = match bench::rate_sample(&mut ctx, tool, rate, &dir) {
                    Ok(s) => s,
                    Err(e) => {
                        sys::check_interrupt()?;
                        RateSample {
                            tool: tool.id().into(),
                            rate: rate.label(),
                            error: Some(format!("{e:#}")),
                            ..RateSample::default()
                        }
                    }
                };
                progress(i, total, &s);
                samples.push(s);
            }
        }
    }
    let tree = if o.tree_files > 0 {
        Some(tree::run(&mut ctx)?)
    } else {
        None
    };
    let live = if o.live.trees.is_empty() {
        None
    } else {
        Some(live::run(&mut ctx)?)
    };
    let restart = if o.restart.trees.is_empty() {
        None
    } else {
        Some(restart::run(&mut ctx)?)
    };
    drop(ctx);
    let mut summary = Vec::new();
    for &rate in &o.rates {
        for &tool in &o.tools {
            summary.push(report::summarize(tool, &rate.label(), &samples));
        }
    }
    meta.elapsed_s = secs(mono_ns() - t_start);
    meta.load_after = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string();
    let mut r = Report {
        meta,
        summary,
        samples,
        tree,
        live,
        restart,
        notes,
        findings: Vec::new(),
    };
    r.findings = report::auto_notes(&r);
    let md = report::markdown(&r);
    println!("{md}");
    report::write(&r, &md, &o.out, &o.name)?;
    eprintln!(
        "wrote {} and {}",
        o.out.join(format!("{}.json", o.name)).display(),
        o.out.join(format!("{}.md", o.name)).display()
    );
    Ok(())
}
