//! The client commands (`syncer status`, `failures`, `pause`, `resume`, `rescan`,
//! `checkpoint`): each asks a running `syncer run` through its control socket
//! ([`crate::ops::control`]) and prints the answer, for people (a table) or for programs
//! (`--json`). Exit codes: 0, 1 when the daemon cannot be reached or refuses, and for
//! `status --check` when a target lags or is down.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::ops::control::{self, Checkpoint, ControlError, FailureEntry, Status};

/// A client command, parsed.
#[derive(Debug, Clone)]
pub enum Client {
    Status {
        json: bool,
        watch: bool,
        /// `--check`: exit 1 unless every target is up and lags at most this long.
        check: Option<Duration>,
    },
    Failures {
        json: bool,
    },
    Pause(String),
    Resume(String),
    Rescan(PathBuf),
    Checkpoint {
        wait: bool,
        timeout: Option<Duration>,
    },
}

/// What a command ends with: its exit code (0 or 1), and what it says.
pub fn run(socket: &Path, cmd: &Client) -> Result<u8, ControlError> {
    match cmd {
        Client::Status { json, watch, check } => loop {
            let s: Status = control::request(socket, "GET", "/v1/status")?;
            let problems = check.map(|lag| lagging(&s, lag)).unwrap_or_default();
            if *watch {
                // Clear the screen, then the table.
                print!("\x1b[2J\x1b[H");
            }
            if *json {
                println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
            } else if check.is_none() || *watch {
                print!("{}", render(&s));
            }
            if let Some(lag) = check {
                if !*watch {
                    if problems.is_empty() {
                        println!(
                            "OK: every target is up and at most {} s behind",
                            lag.as_secs()
                        );
                        return Ok(0);
                    }
                    for p in &problems {
                        println!("CRITICAL: {p}");
                    }
                    return Ok(1);
                }
            }
            if !*watch {
                return Ok(0);
            }
            std::thread::sleep(Duration::from_secs(1));
        },
        Client::Failures { json } => {
            let f: Vec<FailureEntry> = control::request(socket, "GET", "/v1/failures")?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&f).unwrap_or_default());
            } else if f.is_empty() {
                println!("no failing paths");
            } else {
                for e in &f {
                    println!(
                        "{}\t{}\t{} attempts, since {}\t{}",
                        e.target,
                        e.path,
                        e.attempts,
                        e.first,
                        e.reason.trim()
                    );
                }
            }
            Ok(0)
        }
        Client::Pause(t) | Client::Resume(t) => {
            let pause = matches!(cmd, Client::Pause(_));
            let route = format!(
                "/v1/{}?target={}",
                if pause { "pause" } else { "resume" },
                control::percent_encode(t)
            );
            let v: serde_json::Value = control::request(socket, "POST", &route)?;
            let name = v.get("target").and_then(|n| n.as_str()).unwrap_or(t);
            println!("{name}: {}", if pause { "paused" } else { "resumed" });
            Ok(0)
        }
        Client::Rescan(p) => {
            let route = format!(
                "/v1/rescan?path={}",
                control::percent_encode(&p.display().to_string())
            );
            let v: serde_json::Value = control::request(socket, "POST", &route)?;
            let what = v.get("rescan").and_then(|n| n.as_str()).unwrap_or("?");
            println!("rescanning {what} on every target");
            Ok(0)
        }
        Client::Checkpoint { wait, timeout } => {
            let v: serde_json::Value = control::request(socket, "POST", "/v1/checkpoint")?;
            let id = v
                .get("id")
                .and_then(|i| i.as_u64())
                .ok_or_else(|| ControlError::Refused(format!("a checkpoint without an id: {v}")))?;
            let t0 = Instant::now();
            loop {
                let c: Checkpoint =
                    control::request(socket, "GET", &format!("/v1/checkpoint?id={id}"))?;
                if c.reached {
                    println!("checkpoint {id} reached: every target holds what was seen before it");
                    return Ok(0);
                }
                let late = timeout.is_some_and(|t| t0.elapsed() >= t);
                if !*wait || late {
                    println!(
                        "checkpoint {id} not reached{}:",
                        if late { " in time" } else { " yet" }
                    );
                    for t in c.targets.iter().filter(|t| !t.reached) {
                        println!(
                            "  {}: waiting for {}",
                            t.name,
                            t.waiting_for.as_deref().unwrap_or("?")
                        );
                    }
                    return Ok(if *wait { 1 } else { 0 });
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// What `status --check` finds wrong: targets down or paused, or lagging more than `lag`.
pub fn lagging(s: &Status, lag: Duration) -> Vec<String> {
    let mut out = Vec::new();
    for t in &s.targets {
        if matches!(t.state.as_str(), "down" | "backoff" | "refused" | "paused") {
            out.push(format!("{} is {}", t.name, t.state));
        }
        if let Some(age) = t.oldest_pending_s.filter(|&a| a > lag.as_secs_f64()) {
            out.push(format!(
                "{} is {age:.0} s behind ({} pending; at most {} s allowed)",
                t.name,
                t.pending,
                lag.as_secs()
            ));
        }
    }
    out
}

/// The status as a table for people.
pub fn render(s: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "syncer {} (pid {}, up {} s): {} via {} ({} events, {} rescans, {} lost)",
        s.version,
        s.pid,
        s.uptime_s,
        s.source.root,
        s.source.kind,
        s.source.events,
        s.source.rescans,
        s.source.lost
    );
    let _ = writeln!(
        out,
        "{:<32} {:<12} {:>9} {:>10} {:>12} {:>9} {:>9} {:>9} {:>8}",
        "TARGET", "STATE", "PENDING", "OLDEST", "LAST SYNC", "SENT", "BYTES", "RSYNCS", "FAILING"
    );
    if let Some(e) = &s.reload_error {
        let _ = writeln!(
            out,
            "the last reload failed (the configuration before it runs): {e}"
        );
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    for t in &s.targets {
        let oldest = t
            .oldest_pending_s
            .map_or("-".to_string(), |a| format!("{a:.1} s"));
        let last = t.last_synced.map_or("never".to_string(), |l| {
            format!("{:.0} s ago", (now - l).max(0.0))
        });
        let _ = writeln!(
            out,
            "{:<32} {:<12} {:>9} {:>10} {:>12} {:>9} {:>9} {:>9} {:>8}",
            t.name,
            t.state,
            t.pending,
            oldest,
            last,
            t.paths_sent,
            indicatif::HumanBytes(t.bytes_sent).to_string(),
            t.rsync_runs,
            t.failing_paths
        );
        if let Some(e) = &t.last_error {
            let _ = writeln!(out, "  last error: {e}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::control::{SourceStatus, TargetStatus};

    fn target(name: &str, state: &str, oldest: Option<f64>) -> TargetStatus {
        TargetStatus {
            name: name.into(),
            url: format!("/{name}"),
            state: state.into(),
            pending: 4,
            oldest_pending_s: oldest,
            last_synced: None,
            failing_paths: 0,
            batches: 0,
            failed_batches: 0,
            paths_sent: 0,
            files_sent: 0,
            bytes_sent: 0,
            rsync_runs: 0,
            last_error: None,
        }
    }

    #[test]
    fn what_a_check_finds() {
        let cases = [
            (vec![target("a", "live", None)], 0),
            (vec![target("a", "live", Some(3.0))], 0),
            (vec![target("a", "live", Some(30.0))], 1),
            (
                vec![target("a", "down", Some(1.0)), target("b", "paused", None)],
                2,
            ),
            (vec![target("a", "backoff", None)], 1),
            (vec![target("a", "refused", None)], 1),
            (vec![target("a", "rescan", Some(2.0))], 0),
            (vec![target("a", "initial sync", Some(2.0))], 0),
        ];
        for (targets, problems) in cases {
            let s = Status {
                version: "v".into(),
                pid: 1,
                uptime_s: 0,
                source: SourceStatus {
                    root: "/".into(),
                    kind: "fanotify".into(),
                    events: 0,
                    rescans: 0,
                    lost: 0,
                },
                targets,
                reload_error: None,
            };
            let got = lagging(&s, Duration::from_secs(10));
            assert_eq!(got.len(), problems, "{got:?}");
            assert!(render(&s).lines().count() == s.targets.len() + 2);
        }
    }
}
