//! The Markdown of the section "big tree under live load": the images, one row per (tree, rate,
//! tool, kill) and the ratios (start-up with load / without, syncer / lsyncd, a small tree / a
//! big one).

use std::fmt::Write as _;

use crate::fmt::{dur, num};
use crate::live::{Lat, LiveSample, LiveSection};
use crate::tools::Tool;
use crate::tree::TreeSection;

fn opt(v: Option<f64>) -> String {
    v.map_or("–".into(), dur)
}

fn lat(l: &Lat) -> String {
    if l.n == 0 {
        return "–".into();
    }
    let never = if l.never > 0 {
        format!(", {} never", l.never)
    } else {
        String::new()
    };
    format!(
        "{} / {} / {} ({}{never})",
        opt(l.p50_s),
        opt(l.p99_s),
        opt(l.max_s),
        l.n
    )
}

fn label(id: &str) -> &'static str {
    Tool::parse(id).map_or("?", |t| t.label())
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    (!v.is_empty()).then(|| v[v.len() / 2])
}

/// The same tree's no-load row of the same tool (without a kill).
fn baseline<'a>(sec: &'a LiveSection, s: &LiveSample) -> Option<&'a LiveSample> {
    sec.samples
        .iter()
        .find(|b| b.tool == s.tool && b.files == s.files && b.rate == 0.0 && b.kill_s.is_none())
}

/// syncer's own CPU per 1000 operations, and the part beyond the no-load row's.
fn cpu_per_kop(sec: &LiveSection, s: &LiveSample) -> (Option<f64>, Option<f64>) {
    let Some(own) = s.self_cpu_s else {
        return (None, None);
    };
    if s.ops == 0 {
        return (None, None);
    }
    let per = |x: f64| x * 1000.0 / s.ops as f64;
    // A settled row counts from the load's start: all of it is the load's.
    let base = baseline(sec, s)
        .filter(|_| !s.settled)
        .and_then(|b| b.self_cpu_s);
    (Some(per(own)), base.map(|b| per((own - b).max(0.0))))
}

fn images(s: &mut String, sec: &LiveSection) {
    let _ = writeln!(
        s,
        "| tree | directories | allocated per image | built in | target copy (cp --sparse=always) | \
         new UUID (tune2fs -U) | fresh copies per row (both, in parallel; median) | final full compare (median) |\n\
         |---|---|---|---|---|---|---|---|"
    );
    for p in &sec.images {
        let mine: Vec<&LiveSample> = sec
            .samples
            .iter()
            .filter(|x| x.files == p.files && x.error.is_none())
            .collect();
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} MiB | {}{} | {} | {} | {} | {} |",
            p.files,
            p.dirs,
            p.image_mib,
            dur(p.build_s),
            if p.reused { " (an earlier run)" } else { "" },
            dur(p.copy_s),
            if p.same_uuid {
                "kept (--live-same-uuid)".into()
            } else {
                dur(p.uuid_s)
            },
            if sec.opts.huge {
                "moved, not copied (huge mode)".into()
            } else {
                opt(median(mine.iter().map(|x| x.copy_s).collect()))
            },
            opt(median(mine.iter().map(|x| x.compare_s).collect())),
        );
    }
    let _ = writeln!(s);
}

fn row(s: &mut String, sec: &LiveSection, x: &LiveSample, cpus: f64) {
    let kill = match x.kill_s {
        Some(k) => format!("at {k} s"),
        None if x.settled => "– (load after the pass)".into(),
        None => "–".into(),
    };
    if let Some(e) = &x.error {
        let e = e.lines().next().unwrap_or("");
        let _ = writeln!(
            s,
            "| {} | {} | {} | {kill} | failed: {e} |{}",
            x.files,
            x.rate,
            label(&x.tool),
            " |".repeat(15)
        );
        return;
    }
    let load = x.rate > 0.0;
    let vs = baseline(sec, x)
        .filter(|b| load && !x.settled && b.startup_s.is_some())
        .and_then(|b| Some(x.startup_s? / b.startup_s?))
        .map_or("–".into(), |r| format!("{r:.2}×"));
    let startup = match (x.startup_s, x.first_startup_s) {
        (Some(t), Some(f)) => format!("{} (restart; first {})", dur(t), dur(f)),
        (Some(t), None) => dur(t),
        (None, _) => format!("not finished in {:.0} s", sec.opts.startup_cap_s),
    };
    let converged = match (load, x.converged_s) {
        (false, _) => "–".into(),
        (true, Some(c)) => dur(c),
        (true, None) => format!("not converged (>{} s)", x.converge_cap_s),
    };
    let (per, extra) = cpu_per_kop(sec, x);
    let per = match (per, extra) {
        (Some(p), Some(e)) => format!("{} ({})", num(p), num(e)),
        (Some(p), None) => num(p),
        _ => "–".into(),
    };
    let thread = x
        .threads
        .first()
        .map_or("–".into(), |(n, c)| format!("{n} {}", num(*c)));
    let other = if x.window_s > 0.0 {
        format!("{:.0}%", 100.0 * x.foreign_cpu_s / (x.window_s * cpus))
    } else {
        "–".into()
    };
    let _ = writeln!(
        s,
        "| {} | {} | {} | {kill} | {} | {} ({}) | {startup} | {vs} | {} | {} | {converged} | {} / {} / {} | {} | {per} | {thread} | {} | {} | {:.0} / {:.0} | {} | {other} |",
        x.files,
        x.rate,
        label(&x.tool),
        if load { format!("{:.0}", x.achieved_rate) } else { "–".into() },
        if load { x.ops.to_string() } else { "–".into() },
        x.late_ops,
        if load { lat(&x.lat_startup) } else { "–".into() },
        if load { lat(&x.lat_after) } else { "–".into() },
        x.diff.files_missing + x.diff.dirs_missing,
        x.diff.files_wrong,
        x.diff.files_extra + x.diff.dirs_extra,
        x.self_cpu_s.map_or("–".into(), num),
        num(x.tool_cpu_s),
        num(x.daemon_cpu_s),
        x.tree_rss_peak_mib,
        x.hwm_mib,
        x.rsync_runs,
    );
}

/// The ratios the issue asks for, one line each.
fn ratios(sec: &LiveSection, tree: Option<&TreeSection>) -> Vec<String> {
    let ok: Vec<&LiveSample> = sec.samples.iter().filter(|x| x.error.is_none()).collect();
    let mut n = Vec::new();
    for x in ok.iter().filter(|x| x.rate > 0.0) {
        if x.settled {
            continue;
        }
        let kill = if x.kill_s.is_some() {
            " with kill -9 + restart"
        } else {
            ""
        };
        if let (Some(b), Some(t)) = (baseline(sec, x), x.startup_s) {
            if let Some(bt) = b.startup_s {
                n.push(format!(
                    "{} files, {} at {} ops/s{kill}: start-up pass {} with the load vs {} without \
                     ({:.2}×).",
                    x.files,
                    label(&x.tool),
                    x.rate,
                    dur(t),
                    dur(bt),
                    t / bt
                ));
            }
        }
        if x.tool != Tool::SyncerFanotify.id() {
            continue;
        }
        let peer = ok.iter().find(|p| {
            p.tool == Tool::LsyncdD1.id()
                && p.files == x.files
                && p.rate == x.rate
                && p.kill_s == x.kill_s
        });
        if let Some(p) = peer {
            let r = |a: Option<f64>, b: Option<f64>| match (a, b) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
                _ => "–".into(),
            };
            n.push(format!(
                "{} files at {} ops/s{kill}, syncer vs lsyncd delay=1: p99 {} vs {} ({}), converged \
                 {} vs {}, tool-tree CPU {} vs {} s ({}).",
                x.files,
                x.rate,
                opt(x.lat_all.p99_s),
                opt(p.lat_all.p99_s),
                r(x.lat_all.p99_s, p.lat_all.p99_s),
                opt(x.converged_s),
                opt(p.converged_s),
                num(x.tool_cpu_s),
                num(p.tool_cpu_s),
                r(Some(x.tool_cpu_s), Some(p.tool_cpu_s)),
            ));
        }
    }
    size_ratios(sec, &ok, &mut n);
    if let (Some(t), Some(s)) = (
        tree,
        ok.iter()
            .find(|x| x.rate == 0.0 && x.kill_s.is_none() && x.tool == Tool::SyncerFanotify.id()),
    ) {
        let big = t.start.iter().find(|x| x.tool == Tool::SyncerFanotify.id());
        if let (Some(b), true) = (big.and_then(|b| b.ready_s), t.files == s.files) {
            n.push(format!(
                "The no-load start-up on copied images ({}) vs the start-up table's on a freshly \
                 written tree ({}), {} files.",
                opt(s.startup_s),
                dur(b),
                s.files
            ));
        }
    }
    n
}

/// syncer on the smallest vs the largest tree: CPU per 1000 operations, and p99, per rate.
fn size_ratios(sec: &LiveSection, ok: &[&LiveSample], n: &mut Vec<String>) {
    let (Some(small), Some(big)) = (
        sec.opts.trees.iter().min().copied(),
        sec.opts.trees.iter().max().copied(),
    ) else {
        return;
    };
    if small == big {
        return;
    }
    let find = |files: u64, rate: f64| {
        ok.iter().copied().find(|x| {
            x.files == files
                && x.rate == rate
                && x.kill_s.is_none()
                && x.tool == Tool::SyncerFanotify.id()
        })
    };
    for &rate in sec.opts.rates.iter().filter(|&&r| r > 0.0) {
        let (Some(a), Some(b)) = (find(small, rate), find(big, rate)) else {
            continue;
        };
        let ((pa, ea), (pb, eb)) = (cpu_per_kop(sec, a), cpu_per_kop(sec, b));
        let r = |x: Option<f64>, y: Option<f64>| match (x, y) {
            (Some(x), Some(y)) if y > 0.0 => format!("{:.2}×", x / y),
            _ => "–".into(),
        };
        n.push(format!(
            "syncer at {rate} ops/s, {big} vs {small} files: own CPU per 1000 ops {} vs {} ({}; \
             beyond the no-load rows {} vs {}, {}), p99 {} vs {} ({}).",
            pb.map_or("–".into(), num),
            pa.map_or("–".into(), num),
            r(pb, pa),
            eb.map_or("–".into(), num),
            ea.map_or("–".into(), num),
            r(eb, ea),
            opt(b.lat_all.p99_s),
            opt(a.lat_all.p99_s),
            r(b.lat_all.p99_s, a.lat_all.p99_s),
        ));
    }
}

/// Appends the section to the Markdown document.
pub fn tables(s: &mut String, sec: &LiveSection, tree: Option<&TreeSection>) {
    let o = &sec.opts;
    let _ = writeln!(
        s,
        "## Big tree under live load\n\n\
         Each tree (N files of {} in N/10 directories) is on the target already; every row \
         starts the tool on fresh copies of both images with its start-up pass, and the live load \
         at the same moment: {} s of {} (percent; a temporary directory gets 2–5 files and a \
         subdirectory with 1–3 more, and `rm -r` {}–{} ms later), new files of {}.{} The wait for convergence after the writer \
         stops is capped at {} s, the start-up pass at {} s. Latencies are from the operation's \
         completion to the name's arrival (or departure) on the target, split at the end of the \
         (last) start-up pass; cells show p50 / p99 / max (changes timed, never seen). One run \
         per row; the section took {:.0} s.\n",
        if o.huge {
            "8–60 bytes, stored in their inodes (inline_data)"
        } else {
            "0.5–4 KB"
        },
        o.duration_s,
        o.mix.describe(),
        o.tmp_life_ms.0,
        o.tmp_life_ms.1,
        if o.huge { "8–60 bytes" } else { "1–32 KB" },
        o.kill_s.map_or(String::new(), |k| format!(
            " Rows \"kill -9\": the tool gets SIGKILL {k} s after spawn and is started again at \
             once with the same arguments."
        )) + if o.settled {
            " Rows \"load after the pass\" (--live-settled): the load starts once the start-up \
             pass ended (steady state on the tree); their CPU, rsync runs and latencies count from \
             the load's start, the busiest thread's CPU from the spawn."
        } else {
            ""
        },
        o.converge_cap_s,
        o.startup_cap_s,
        sec.elapsed_s
    );
    images(s, sec);
    let _ = writeln!(
        s,
        "| tree (files) | ops/s | tool | kill -9 | achieved ops/s | ops (late) | start-up pass | vs no load | \
         during start-up: p50 / p99 / max | after start-up: p50 / p99 / max | converged after | \
         missing / wrong / extra | syncer own CPU s | own CPU s per 1000 ops (beyond no load) | \
         busiest thread (CPU s) | CPU s (tool tree) | daemon CPU s | peak RSS MiB (tree / main) | \
         rsync runs | other load |"
    );
    let _ = writeln!(s, "|{}", "---|".repeat(20));
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    for x in &sec.samples {
        row(s, sec, x, cpus);
    }
    let r = ratios(sec, tree);
    if !r.is_empty() {
        let _ = writeln!(s, "\nRatios:\n");
        for line in r {
            let _ = writeln!(s, "- {line}");
        }
    }
    let _ = writeln!(s);
}
