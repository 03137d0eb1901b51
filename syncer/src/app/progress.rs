//! The terminal's progress bars for the start-up pass (`syncer sync`, the initial sync of
//! `syncer run`): one per target, with the entries compared (of an estimate, when one is
//! cheap to have), the file bytes sent, the rate and the time left; nothing at all when
//! stderr is not a terminal (a service, a pipe, a file). Log lines go through
//! [`LogWriter`], which lifts the bars out of the way while a line is written.
//!
//! The bars read the pools' counters ([`PoolStats`]) from a thread of their own, a few times a
//! second: nothing in the pipeline knows they exist.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{
    HumanBytes, HumanCount, HumanDuration, MultiProgress, ProgressBar, ProgressDrawTarget,
    ProgressStyle,
};

use crate::transfer::PoolStats;

/// The bars on screen, for [`LogWriter`] (none: nothing drawn).
static SHOWN: Mutex<Option<MultiProgress>> = Mutex::new(None);

/// How often the bars are redrawn.
const EVERY: Duration = Duration::from_millis(250);

/// Bars shown until dropped (or until every target's pass has ended); the last frame stays.
pub struct Progress {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    /// Shows a bar for each target (its name, its counters) while its start-up pass runs;
    /// `None` when stderr is not a terminal.
    pub fn start(targets: Vec<(String, Arc<PoolStats>)>) -> Option<Progress> {
        if targets.is_empty() || !std::io::stderr().is_terminal() {
            return None;
        }
        let bars = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(4));
        *SHOWN.lock().unwrap_or_else(|e| e.into_inner()) = Some(bars.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("progress".into())
            .spawn(move || draw(bars, targets, &stopped))
            .ok()?;
        Some(Progress {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        *SHOWN.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// One target's bar: not yet shown, shown (since when), or finished.
enum Bar {
    Waiting,
    Shown(ProgressBar, Instant),
    Done,
}

fn style(estimated: bool) -> ProgressStyle {
    let template = if estimated {
        "{prefix:.bold} [{bar:30}] {msg}"
    } else {
        "{spinner} {prefix:.bold} {msg}"
    };
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// The text after the bar: `1,234/10,000 entries  5.2 MiB sent  850/s  ETA 10 seconds`
/// (without the total and the ETA when there is no estimate).
pub fn line(entries: u64, total: u64, sent: u64, took: Duration, down: bool) -> String {
    let secs = took.as_secs_f64();
    let rate = if secs > 0.0 {
        entries as f64 / secs
    } else {
        0.0
    };
    let mut s = if total > 0 {
        format!(
            "{}/{} entries",
            HumanCount(entries),
            HumanCount(total.max(entries))
        )
    } else {
        format!("{} entries", HumanCount(entries))
    };
    s.push_str(&format!(
        "  {} sent  {}/s",
        HumanBytes(sent),
        HumanCount(rate as u64)
    ));
    if total > entries && rate >= 1.0 {
        let left = Duration::from_secs_f64((total - entries) as f64 / rate);
        s.push_str(&format!("  ETA {}", HumanDuration(left)));
    }
    if down {
        s.push_str("  (target down)");
    }
    s
}

fn draw(bars: MultiProgress, targets: Vec<(String, Arc<PoolStats>)>, stop: &AtomicBool) {
    let mut shown: Vec<Bar> = targets.iter().map(|_| Bar::Waiting).collect();
    loop {
        // Read before the counters, so that the last frame shows where the pass ended.
        let last = stop.load(Ordering::Relaxed);
        let now = Instant::now();
        for ((name, stats), bar) in targets.iter().zip(shown.iter_mut()) {
            let passing =
                stats.passing.load(Ordering::Relaxed) && !stats.rescanning.load(Ordering::Relaxed);
            let entries = stats.pass_entries.load(Ordering::Relaxed);
            let total = stats.pass_total.load(Ordering::Relaxed);
            let sent = stats.pass_bytes.load(Ordering::Relaxed);
            let down = stats.down.load(Ordering::Relaxed);
            if matches!(bar, Bar::Waiting) && passing {
                let b = bars.add(ProgressBar::new(total.max(1)));
                b.set_style(style(total > 0));
                b.set_prefix(name.clone());
                *bar = Bar::Shown(b, now);
            }
            if let Bar::Shown(b, since) = bar {
                b.set_length(total.max(entries).max(1));
                b.set_position(entries);
                b.set_message(line(entries, total, sent, now - *since, down && passing));
                if !passing || last {
                    if !passing {
                        b.set_length(entries.max(1));
                        b.set_position(entries.max(1));
                    }
                    b.finish();
                    *bar = Bar::Done;
                }
            }
        }
        if last || shown.iter().all(|b| matches!(b, Bar::Done)) {
            return;
        }
        std::thread::sleep(EVERY);
    }
}

/// Where log lines go: stderr, with the bars (if any) lifted while a line is written.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let shown = SHOWN.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match shown {
            Some(bars) => bars.suspend(|| std::io::stderr().write_all(buf)),
            None => std::io::stderr().write_all(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> LogWriter {
        LogWriter
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_after_the_bar() {
        let s = Duration::from_secs;
        #[rustfmt::skip]
        let table: &[(u64, u64, u64, Duration, bool, &str)] = &[
            // entries, estimate, bytes sent, time since the bar appeared, down → text
            (0, 0, 0, s(0), false, "0 entries  0 B sent  0/s"),
            (5000, 0, 2048, s(2), false, "5,000 entries  2.00 KiB sent  2,500/s"),
            (1000, 10_000, 0, s(1), false, "1,000/10,000 entries  0 B sent  1,000/s  ETA 9 seconds"),
            // The estimate was short: no ETA, the count goes on.
            (12_000, 10_000, 0, s(4), false, "12,000/12,000 entries  0 B sent  3,000/s"),
            (1000, 10_000, 0, s(1), true, "1,000/10,000 entries  0 B sent  1,000/s  ETA 9 seconds  (target down)"),
        ];
        for &(entries, total, sent, took, down, want) in table {
            assert_eq!(line(entries, total, sent, took, down), want);
        }
    }
}
