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
    let body = std::panic::catch_unwind(AssertUnwindSafe(|| {
        // What a predecessor read from this queue and kept, but had not journaled.
        if let Some(m) = marks {
            let kept = m.unjournaled();
            if !kept.is_empty() {
                for raw in &kept {
                    source.replay(raw, &mut out);
                }
                tracing::info!(
                    buffers = kept.len(),
                    changes = out.len(),
                    "replayed what the previous syncer read from the queue and had not journaled"
                );
                sink.push(&out);
                out.clear();
                m.handed();
            }
        }
        while !shutdown.is_triggered() {
            stats.alive.tick();
            if let Err(e) = crate::source::fanotify::sys::poll_in(source.fd(), POLL_MS) {
                warn!("poll of the event source failed: {e}; rescanning the whole tree");
                rescan(&mut out, stats);
                std::thread::sleep(Duration::from_millis(POLL_MS as u64));
            }
            // Tests make the source die for real here (`FAILPOINTS=source-read=...->panic`).
            fail::fail_point!("source-read");
            let read = match marks {
                Some(m) => {
                    m.reading();
                    source.read_keeping(&mut out, m)
                }
                None => source.read(&mut out),
            };
            if let Err(e) = read {
                warn!("reading the event source failed: {e}; rescanning the whole tree");
                rescan(&mut out, stats);
            }
            if !out.is_empty() {
                // Tests stop a reader here, holding a read it kept and did not hand on
                // (`FAILPOINTS=source-handing=pause`), and kill the process.
                fail::fail_point!("source-handing");
                stats.count_changes(&out);
                sink.push(&out);
                out.clear();
            }
            if let Some(m) = marks {
                m.handed();
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
