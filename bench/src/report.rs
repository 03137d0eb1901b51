//! The results: every sample, the per-row summaries (median and min-max over the repeats), the
//! machine and tool versions, written as JSON and as Markdown tables (also printed).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::bench::RateSample;
use crate::fmt::{dur, num};
use crate::stats::Spread;
use crate::tools::Tool;
use crate::tree::TreeSection;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Meta {
    pub date: String,
    pub command: String,
    pub mode: String,
    pub storage: String,
    pub repeat: usize,
    pub mix: String,
    pub duration_s: f64,
    pub d15_duration_s: f64,
    pub max_files: u64,
    pub converge_cap_s: f64,
    pub busy_cap_s: f64,
    pub files_per_dir: u32,
    pub kernel: String,
    pub cpus: usize,
    pub mem_gib: f64,
    pub rsync: String,
    pub lsyncd: String,
    pub inotifywait: String,
    pub syncer: String,
    pub git: String,
    pub load_before: String,
    pub load_after: String,
    pub elapsed_s: f64,
}

/// One row of the rate table: a tool at a rate, over its repeats.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RowSummary {
    pub tool: String,
    pub label: String,
    pub rate: String,
    pub runs: usize,
    pub failed: usize,
    pub files: Option<Spread>,
    pub achieved_rate: Option<Spread>,
    pub p50_s: Option<Spread>,
    pub p90_s: Option<Spread>,
    pub p99_s: Option<Spread>,
    pub max_s: Option<Spread>,
    pub unseen_max: u64,
    pub converged_s: Option<Spread>,
    pub not_converged: usize,
    pub idle_s: Option<Spread>,
    pub still_busy: usize,
    pub missing_max: u64,
    pub wrong_max: u64,
    pub extra_max: u64,
    pub dirs_meta_wrong_max: u64,
    pub mtime_subsec_max: u64,
    pub tool_cpu_s: Option<Spread>,
    pub self_cpu_s: Option<Spread>,
    pub daemon_cpu_s: Option<Spread>,
    pub tree_rss_peak_mib: Option<Spread>,
    pub hwm_mib: Option<Spread>,
    pub rsync_runs: Option<Spread>,
    pub foreign_cpu_pct: Option<Spread>,
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Report {
    pub meta: Meta,
    pub summary: Vec<RowSummary>,
    pub samples: Vec<RateSample>,
    pub tree: Option<TreeSection>,
    /// The rows "big tree under live load".
    pub live: Option<crate::live::LiveSection>,
    /// The rows "restarts on a big tree".
    pub restart: Option<crate::restart::RestartSection>,
    /// What the setup changed (tools skipped).
    pub notes: Vec<String>,
    /// What the samples show that a reader should not miss ([`auto_notes`]).
    pub findings: Vec<String>,
}

fn spread<F: Fn(&RateSample) -> Option<f64>>(v: &[&RateSample], f: F) -> Option<Spread> {
    Spread::of(v.iter().map(|s| f(s)))
}

/// Summarises the samples of one tool at one rate.
pub fn summarize(tool: Tool, rate: &str, all: &[RateSample]) -> RowSummary {
    let mine: Vec<&RateSample> = all
        .iter()
        .filter(|s| s.tool == tool.id() && s.rate == rate)
        .collect();
    let ok: Vec<&RateSample> = mine.iter().copied().filter(|s| s.error.is_none()).collect();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let bulk = tool == Tool::RsyncBulk;
    RowSummary {
        tool: tool.id().into(),
        label: tool.label().into(),
        rate: rate.into(),
        runs: mine.len(),
        failed: mine.len() - ok.len(),
        files: spread(&ok, |s| Some((s.diff.files) as f64)),
        achieved_rate: spread(&ok, |s| Some(s.achieved_rate)),
        p50_s: spread(&ok, |s| s.p50_s),
        p90_s: spread(&ok, |s| s.p90_s),
        p99_s: spread(&ok, |s| s.p99_s),
        max_s: spread(&ok, |s| s.max_s),
        unseen_max: ok.iter().map(|s| s.unseen).max().unwrap_or(0),
        converged_s: spread(&ok, |s| s.converged_s),
        not_converged: if bulk {
            0
        } else {
            ok.iter().filter(|s| s.converged_s.is_none()).count()
        },
        idle_s: spread(&ok, |s| s.idle_s),
        still_busy: if bulk {
            0
        } else {
            ok.iter().filter(|s| s.idle_s.is_none()).count()
        },
        missing_max: ok.iter().map(|s| s.diff.files_missing).max().unwrap_or(0),
        wrong_max: ok.iter().map(|s| s.diff.files_wrong).max().unwrap_or(0),
        extra_max: ok
            .iter()
            .map(|s| s.diff.files_extra + s.diff.dirs_extra + s.diff.dirs_missing)
            .max()
            .unwrap_or(0),
        dirs_meta_wrong_max: ok.iter().map(|s| s.diff.dirs_meta_wrong).max().unwrap_or(0),
        mtime_subsec_max: ok
            .iter()
            .map(|s| s.diff.files_mtime_subsec)
            .max()
            .unwrap_or(0),
        tool_cpu_s: spread(&ok, |s| Some(s.tool_cpu_s)),
        self_cpu_s: spread(&ok, |s| s.self_cpu_s),
        daemon_cpu_s: spread(&ok, |s| Some(s.daemon_cpu_s)),
        tree_rss_peak_mib: spread(&ok, |s| Some(s.tree_rss_peak_mib)),
        hwm_mib: spread(&ok, |s| Some(s.hwm_mib)),
        rsync_runs: spread(&ok, |s| Some(s.rsync_runs as f64)),
        foreign_cpu_pct: spread(&ok, |s| {
            (s.window_s > 0.0).then(|| 100.0 * s.foreign_cpu_s / (s.window_s * cpus))
        }),
        errors: mine.iter().filter_map(|s| s.error.clone()).collect(),
    }
}

/// "median" or "median (min–max)" when there were repeats.
fn cell(s: &Option<Spread>, f: fn(f64) -> String) -> String {
    match s {
        None => "–".into(),
        Some(s) if s.n > 1 && s.max > s.min => {
            format!("{} ({}–{})", f(s.median), f(s.min), f(s.max))
        }
        Some(s) => f(s.median),
    }
}

fn ratio(a: Option<Spread>, b: Option<Spread>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b.median > 0.0 => format!("{:.2}×", a.median / b.median),
        _ => "–".into(),
    }
}

/// The Markdown document: header, the three tables, notes.
pub fn markdown(r: &Report) -> String {
    let m = &r.meta;
    let mut s = String::new();
    let _ = writeln!(s, "# syncer load bench: results\n");
    let _ = writeln!(
        s,
        "{} · mode **{}** · storage: **{}** · {} CPUs, {:.0} GiB RAM · Linux {} · took {:.0} s\n",
        m.date, m.mode, m.storage, m.cpus, m.mem_gib, m.kernel, m.elapsed_s
    );
    let _ = writeln!(
        s,
        "Tools: {} · {} · {} · {} · git {}\n",
        m.syncer, m.rsync, m.lsyncd, m.inotifywait, m.git
    );
    let _ = writeln!(s, "Command: `{}`\n", m.command);
    let _ = writeln!(
        s,
        "Workload: files of 10–100 KB, ~{} per directory, two levels; mix: {}; {} s of writing per \
         row (lsyncd delay=15: {} s), at most {} operations per row; convergence wait capped at \
         {} s; every row starts on fresh ext4 filesystems. Each row ran {} time(s): cells show the \
         median, and (min–max) when repeats differed. Load average before/after: {} / {}.\n",
        m.files_per_dir,
        m.mix,
        m.duration_s,
        m.d15_duration_s,
        m.max_files,
        m.converge_cap_s,
        m.repeat,
        m.load_before,
        m.load_after
    );
    if !r.summary.is_empty() {
        let _ = writeln!(s, "## Replication under load\n");
        let _ = writeln!(
            s,
            "| files/s | tool | achieved files/s | p50 | p90 | p99 | max | missing / wrong / extra | \
             mtime off <1 s (files / dirs) | converged after | rsync busy until | CPU s (tool tree) | syncer own CPU s | daemon CPU s | peak RSS MiB \
             (tree / main) | rsync runs | p99 vs syncer | CPU vs syncer | other load |"
        );
        let _ = writeln!(s, "|{}", "---|".repeat(19));
        for row in &r.summary {
            let base = r
                .summary
                .iter()
                .find(|x| x.rate == row.rate && x.tool == Tool::SyncerFanotify.id());
            if row.failed == row.runs {
                let _ = writeln!(
                    s,
                    "| {} | {} | failed: {} |{}",
                    row.rate,
                    row.label,
                    row.errors
                        .first()
                        .map(|e| e.lines().next().unwrap_or(""))
                        .unwrap_or(""),
                    " |".repeat(17)
                );
                continue;
            }
            let bulk = row.tool == Tool::RsyncBulk.id();
            let converged = if bulk {
                "–".to_string()
            } else if row.not_converged == row.runs - row.failed {
                format!("not converged (>{} s)", r.meta.converge_cap_s)
            } else if row.not_converged > 0 {
                format!(
                    "{} ({} not)",
                    cell(&row.converged_s, dur),
                    row.not_converged
                )
            } else {
                cell(&row.converged_s, dur)
            };
            let busy = if bulk {
                "–".to_string()
            } else if row.still_busy == row.runs - row.failed {
                format!("still busy at {} s", r.meta.busy_cap_s)
            } else if row.still_busy > 0 {
                format!("{} ({} still busy)", cell(&row.idle_s, dur), row.still_busy)
            } else {
                cell(&row.idle_s, dur)
            };
            let lat = |x: &Option<Spread>| if bulk { "–".into() } else { cell(x, dur) };
            let unseen = if row.unseen_max > 0 {
                format!(" ({} never arrived)", row.unseen_max)
            } else {
                String::new()
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {}{} | {} / {} / {} | {} / {} | {} | {} | {} | {} | {} | {} / {} | {} | {} | {} | {} |",
                row.rate,
                row.label,
                cell(&row.achieved_rate, |x| format!("{x:.0}")),
                lat(&row.p50_s),
                lat(&row.p90_s),
                lat(&row.p99_s),
                lat(&row.max_s),
                unseen,
                row.missing_max,
                row.wrong_max,
                row.extra_max,
                row.mtime_subsec_max,
                row.dirs_meta_wrong_max,
                converged,
                busy,
                cell(&row.tool_cpu_s, num),
                if row.self_cpu_s.is_some() { cell(&row.self_cpu_s, num) } else { "–".into() },
                cell(&row.daemon_cpu_s, num),
                cell(&row.tree_rss_peak_mib, |x| format!("{x:.0}")),
                cell(&row.hwm_mib, |x| format!("{x:.0}")),
                cell(&row.rsync_runs, |x| format!("{x:.0}")),
                if bulk { "–".into() } else { ratio(row.p99_s, base.and_then(|b| b.p99_s)) },
                if bulk { "–".into() } else { ratio(row.tool_cpu_s, base.and_then(|b| b.tool_cpu_s)) },
                cell(&row.foreign_cpu_pct, |x| format!("{x:.0}%")),
            );
        }
        let _ = writeln!(s);
    }
    if let Some(t) = &r.tree {
        tree_tables(&mut s, t);
    }
    if let Some(l) = &r.live {
        crate::livereport::tables(&mut s, l, r.tree.as_ref());
    }
    if let Some(x) = &r.restart {
        crate::restart::tables(&mut s, x);
    }
    if !r.notes.is_empty() || !r.findings.is_empty() {
        let _ = writeln!(s, "## Notes from this run\n");
        for n in r.notes.iter().chain(&r.findings) {
            let _ = writeln!(s, "- {n}");
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(
        s,
        "Columns and method: see bench/README.md. Raw samples: the JSON file next to this one."
    );
    s
}

fn tree_tables(s: &mut String, t: &TreeSection) {
    let _ = writeln!(
        s,
        "## Start-up on a big tree\n\n{} files (0.5–4 KB) in {} directories, written in {:.1} s. \
         The target already holds the tree (the last initial sync below), so \"initial sync\" is \
         the check of an up-to-date copy.\n",
        t.files, t.dirs, t.gen_s
    );
    let _ = writeln!(
        s,
        "| watcher | event source live after | vs inotifywait -mr | initial sync done after | idle RSS MiB (main / tree) | CPU s until idle | rsync runs |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|");
    let tools: Vec<String> = {
        let mut v: Vec<String> = Vec::new();
        for x in &t.start {
            if !v.contains(&x.tool) {
                v.push(x.tool.clone());
            }
        }
        v
    };
    let pick = |name: &str, f: fn(&crate::tree::StartSample) -> Option<f64>| {
        Spread::of(t.start.iter().filter(|x| x.tool == name).map(f))
    };
    let inw = pick("inotifywait -mr (script)", |x| x.live_s);
    for name in &tools {
        let errs: Vec<&String> = t
            .start
            .iter()
            .filter(|x| &x.tool == name)
            .filter_map(|x| x.error.as_ref())
            .collect();
        let live = pick(name, |x| x.live_s);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} / {} | {} | {} |{}",
            name,
            cell(&live, dur),
            ratio(live, inw),
            cell(&pick(name, |x| x.ready_s), dur),
            cell(&pick(name, |x| x.idle_rss_mib), |x| format!("{x:.1}")),
            cell(&pick(name, |x| x.idle_tree_rss_mib), |x| format!("{x:.1}")),
            cell(&pick(name, |x| Some(x.cpu_s)), num),
            cell(&pick(name, |x| Some(x.rsync_runs as f64)), |x| format!(
                "{x:.0}"
            )),
            if errs.is_empty() {
                String::new()
            } else {
                format!(" failed: {}", errs[0].lines().next().unwrap_or(""))
            }
        );
    }
    let _ = writeln!(
        s,
        "\n## Initial sync of the big tree to an empty target\n\n\
         | tool | time | vs rsync -a | CPU s (tool tree) | daemon CPU s | rsync runs | target afterwards |\n\
         |---|---|---|---|---|---|---|"
    );
    let pick_sync = |name: &str, f: fn(&crate::tree::SyncSample) -> Option<f64>| {
        Spread::of(
            t.sync
                .iter()
                .filter(|x| x.tool == name && x.error.is_none())
                .map(f),
        )
    };
    let base = pick_sync("rsync -a", |x| Some(x.time_s));
    for name in ["rsync -a", "syncer sync"] {
        let time = pick_sync(name, |x| Some(x.time_s));
        let bad: Vec<String> = t
            .sync
            .iter()
            .filter(|x| x.tool == name)
            .map(|x| match &x.error {
                Some(e) => format!("failed: {}", e.lines().next().unwrap_or("")),
                None if x.diff.files_ok() => "identical".into(),
                None => format!(
                    "{} missing, {} wrong, {} extra",
                    x.diff.files_missing + x.diff.dirs_missing,
                    x.diff.files_wrong,
                    x.diff.files_extra + x.diff.dirs_extra
                ),
            })
            .collect();
        let mut result = bad.clone();
        result.dedup();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} |",
            name,
            cell(&time, dur),
            ratio(time, base),
            cell(&pick_sync(name, |x| Some(x.cpu_s)), num),
            cell(&pick_sync(name, |x| Some(x.daemon_cpu_s)), num),
            cell(
                &pick_sync(name, |x| Some(x.rsync_runs as f64)),
                |x| format!("{x:.0}")
            ),
            result.join("; ")
        );
    }
    let _ = writeln!(s);
}

/// Re-renders a saved report (`syncer-bench render FILE.json`): recomputes the findings and
/// rewrites the Markdown next to it, e.g. after a change of the tables' layout.
pub fn render(json: &Path) -> Result<()> {
    let text = std::fs::read_to_string(json).with_context(|| format!("read {}", json.display()))?;
    let mut r: Report = serde_json::from_str(&text).context("parse the report")?;
    r.findings = auto_notes(&r);
    let md = markdown(&r);
    let dir = json.parent().unwrap_or(Path::new("."));
    let name = json
        .file_stem()
        .and_then(|s| s.to_str())
        .context("a report file name")?;
    write(&r, &md, dir, name)?;
    println!("{md}");
    Ok(())
}

/// Writes `NAME.json` and `NAME.md` into `dir`.
pub fn write(r: &Report, md: &str, dir: &Path, name: &str) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let json = serde_json::to_string_pretty(r)?;
    for (ext, text) in [("json", json.as_str()), ("md", md)] {
        let path = dir.join(format!("{name}.{ext}"));
        let tmp = dir.join(format!("{name}.{ext}.tmp"));
        std::fs::write(&tmp, text).with_context(|| format!("write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

/// "a" or "a–b" for the values of a row's runs.
fn range(v: &[f64], f: fn(f64) -> String) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let (a, b) = (f(lo), f(hi));
    if a == b {
        a
    } else {
        format!("{a}–{b}")
    }
}

/// Notes on anything a reader should not miss, one line per finding and row: failed runs, lost
/// or wrong files, rows that never converged, files that never arrived, a generator that fell
/// behind, warnings the tools logged, and the sub-second mtimes every rsync-based tool leaves.
pub fn auto_notes(r: &Report) -> Vec<String> {
    let int = |x: f64| format!("{x:.0}");
    let mut n = Vec::new();
    let gen: Vec<f64> = r
        .samples
        .iter()
        .filter(|s| s.tool == Tool::RsyncBulk.id() && s.error.is_none())
        .map(|s| s.ops as f64 / s.gen.seconds.max(1e-9))
        .collect();
    if !gen.is_empty() {
        n.push(format!(
            "The generator alone (writing the bulk rows' files, nothing else running) managed {} \
             operations/s.",
            range(&gen, int)
        ));
    }
    // Rows in table order, each with its runs.
    let mut rows: Vec<(&str, &str, Vec<&RateSample>)> = Vec::new();
    for s in &r.samples {
        match rows
            .iter_mut()
            .find(|(t, rt, _)| *t == s.tool && *rt == s.rate)
        {
            Some(row) => row.2.push(s),
            None => rows.push((&s.tool, &s.rate, vec![s])),
        }
    }
    let mut subsec = Vec::new();
    for (tool, rate, runs) in &rows {
        let what = format!("{tool} at {rate} files/s");
        let m = runs.len();
        for s in runs {
            if let Some(e) = &s.error {
                n.push(format!(
                    "{what}: a run failed: {}",
                    e.lines().next().unwrap_or("")
                ));
            } else if !s.diff.files_ok() {
                let d = &s.diff;
                n.push(format!(
                    "{what}: at the end {} files missing, {} wrong, {} extra, {} dirs missing, \
                     {} extra (e.g. {})",
                    d.files_missing,
                    d.files_wrong,
                    d.files_extra,
                    d.dirs_missing,
                    d.dirs_extra,
                    d.examples
                        .iter()
                        .take(3)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join("; ")
                ));
            }
        }
        let ok: Vec<&&RateSample> = runs.iter().filter(|s| s.error.is_none()).collect();
        let count = |f: &dyn Fn(&RateSample) -> bool| ok.iter().filter(|s| f(s)).count();
        let bulk = *tool == Tool::RsyncBulk.id();
        let nc = count(&|s| !bulk && s.converged_s.is_none());
        if nc > 0 {
            n.push(format!(
                "{what}: did not converge within {} s in {nc} of {m} run(s)",
                r.meta.converge_cap_s
            ));
        }
        let unseen: Vec<f64> = ok.iter().map(|s| s.unseen as f64).collect();
        if unseen.iter().any(|&u| u > 0.0) {
            n.push(format!(
                "{what}: files alive at the end never seen arriving on the target: {}",
                range(&unseen, int)
            ));
        }
        // Behind by more than 2%: the tool took the CPUs from the writer.
        let target: f64 = rate.parse().unwrap_or(0.0);
        let late = count(&|s| !bulk && s.achieved_rate < 0.98 * target);
        if late > 0 {
            let achieved: Vec<f64> = ok.iter().map(|s| s.achieved_rate).collect();
            n.push(format!(
                "{what}: the generator fell more than 2% behind its schedule in {late} of {m} \
                 run(s): achieved {}/s",
                range(&achieved, int)
            ));
        }
        let warned: Vec<&&&RateSample> = ok.iter().filter(|s| !s.warnings.is_empty()).collect();
        if let Some(first) = warned.first() {
            n.push(format!(
                "{what}: warnings logged in {} of {m} run(s), e.g. `{}`",
                warned.len(),
                first.warnings[0].chars().take(200).collect::<String>()
            ));
        }
        let bad_exit = count(&|s| s.tool.starts_with("syncer") && !s.exit.starts_with("exit 0"));
        if bad_exit > 0 {
            n.push(format!(
                "{what}: syncer did not exit 0 after SIGTERM in {bad_exit} of {m} run(s)"
            ));
        }
        let sub: Vec<f64> = ok
            .iter()
            .map(|s| s.diff.files_mtime_subsec as f64)
            .collect();
        if sub.iter().any(|&x| x > 0.0) {
            subsec.push(format!("{tool} @ {rate}: {}", range(&sub, int)));
        }
    }
    if let Some((s, ex)) = r
        .samples
        .iter()
        .find_map(|s| s.diff.subsec_examples.first().map(|e| (s, e)))
    {
        n.push(format!(
            "Files with the right bytes but an mtime off by under a second: {}. These tools run \
             rsync with its default quick check, which compares whole seconds: a file \
             rewritten while an rsync was sending it arrives with the new bytes and the old mtime \
             (from the file list), and the transfer the rewrite triggers is skipped as up to date \
             (e.g. {} in {} @ {}, source vs target).",
            subsec.join(", "),
            ex,
            s.tool,
            s.rate
        ));
    }
    n
}
