//! The one reader loop every source runs on its thread: poll the source's descriptor, read what
//! is ready, hand the changes to the sink, until shutdown, noting when the kernel's queue was
//! last found empty. A failed poll or read becomes a rescan of the whole tree; a panic in a
//! source ends the loop with [`SourceExit::Died`] and its message, for the supervisor to act
//! on.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing::{debug, warn};

use super::{Source, SourceExit, SourceStats};
use crate::change::{Change, ChangeSink, ReadMarks, WatchClock};
use crate::shutdown::Shutdown;

/// How long a poll waits before the loop looks at the shutdown signal again.
const POLL_MS: i32 = 200;

pub(super) fn run(
    mut source: Box<dyn Source>,
    sink: Arc<dyn ChangeSink>,
    shutdown: &Shutdown,
    stats: &SourceStats,
    caught_up: &WatchClock,
    marks: Option<&dyn ReadMarks>,
) -> SourceExit {
    let mut out = Vec::with_capacity(1024);
    // Reads that took changes; see ReadMarks for the protocol.
    let mut n = 0u64;
    let body = std::panic::catch_unwind(AssertUnwindSafe(|| {
        while !shutdown.is_triggered() {
            if let Err(e) = crate::source::fanotify::sys::poll_in(source.fd(), POLL_MS) {
                warn!("poll of the event source failed: {e}; rescanning the whole tree");
                rescan(&mut out, stats);
                std::thread::sleep(Duration::from_millis(POLL_MS as u64));
            }
            // Tests make the source die for real here (`FAILPOINTS=source-read=...->panic`).
            fail::fail_point!("source-read");
            if let Some(m) = marks {
                m.reading(n + 1);
            }
            if let Err(e) = source.read(&mut out) {
                warn!("reading the event source failed: {e}; rescanning the whole tree");
                rescan(&mut out, stats);
            }
            if !out.is_empty() {
                sink.push(&out);
                out.clear();
                n += 1;
                if let Some(m) = marks {
                    m.handed(n);
                }
            } else if let Some(m) = marks {
                m.reading(n);
            }
            // Nothing queued right after `t`: everything the kernel queued before it is read
            // and handed on (under load, a moment between two reads is enough).
            let t = SystemTime::now();
            if matches!(
                crate::source::fanotify::sys::poll_in(source.fd(), 0),
                Ok(false)
            ) {
                caught_up.caught_up(t);
            }
        }
    }));
    match body {
        Ok(()) => {
            debug!("event source stopped");
            SourceExit::Stopped
        }
        Err(panic) => {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into());
            // What was read before the panic still goes out.
            sink.push(&out);
            SourceExit::Died(why)
        }
    }
}

fn rescan(out: &mut Vec<Change>, stats: &SourceStats) {
    stats.rescans.fetch_add(1, Ordering::Relaxed);
    out.push(Change::rescan(""));
}
