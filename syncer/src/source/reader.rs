//! The one reader loop every source runs on its thread: poll the source's descriptor, read what
//! is ready, hand the changes to the sink, until shutdown, noting when the kernel's queue was
//! last found empty. A failed poll or read becomes a rescan of the whole tree; a panic in a
//! source ends the loop with [`SourceExit::Died`] and its message, for the supervisor to act
//! on.
//!
//! Under a steady stream of events the loop reads at most once per [`READ_PACE`] ([`pace`]):
//! the first event after a quiet spell is read at once, but a busy queue is left to fill for
//! a few milliseconds between reads, so that one read, one hand-over to the maps (their locks,
//! the dispatchers' wake-ups, the journal's) and one wake-up of this thread carry tens of
//! events instead of one or two. The coalescing delay (50 ms) dwarfs the wait.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tracing::{debug, warn};

use super::{Source, SourceExit, SourceStats};
use crate::change::{Change, ChangeSink, ReadMarks, WatchClock};
use crate::shutdown::Shutdown;

/// How long a poll waits before the loop looks at the shutdown signal again.
const POLL_MS: i32 = 200;

/// The least time between two reads while events keep coming (see the module's doc).
pub const READ_PACE: Duration = Duration::from_millis(5);

/// How long to wait before polling again: `last_took` is when the last read that returned
/// records began, if the one before this poll did. A read that found nothing (the queue was
/// quiet) or one long enough ago waits for nothing: the next event is read as it comes.
pub fn pace(last_took: Option<Instant>, now: Instant) -> Option<Duration> {
    let since = now.saturating_duration_since(last_took?);
    (since < READ_PACE).then(|| READ_PACE - since)
}

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
        // When the last read that took records began (None after one that found nothing).
        let mut last_took: Option<Instant> = None;
        while !shutdown.is_triggered() {
            stats.alive.tick();
            if let Some(wait) = pace(last_took, Instant::now()) {
                std::thread::sleep(wait);
            }
            if let Err(e) = crate::source::fanotify::sys::poll_in(source.fd(), POLL_MS) {
                warn!("poll of the event source failed: {e}; rescanning the whole tree");
                rescan(&mut out, stats);
                std::thread::sleep(Duration::from_millis(POLL_MS as u64));
            }
            // Tests make the source die for real here (`FAILPOINTS=source-read=...->panic`).
            fail::fail_point!("source-read");
            let began = Instant::now();
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
            last_took = (!out.is_empty()).then_some(began);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_paced_only_while_events_keep_coming() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // (the last read took records, begun this long before now) -> wait before polling
        let cases: &[(Option<Duration>, Option<Duration>)] = &[
            // The last read found nothing: the next event is read as soon as it comes.
            (None, None),
            // A read just began and took records: the rest of the pace.
            (Some(ms(0)), Some(READ_PACE)),
            (Some(ms(2)), Some(READ_PACE - ms(2))),
            // The pace has passed (a slow read, a slow hand-over): no wait.
            (Some(READ_PACE), None),
            (Some(ms(200)), None),
        ];
        for &(ago, want) in cases {
            let now = t0 + ms(1000);
            let last = ago.map(|a| now - a);
            assert_eq!(pace(last, now), want, "last read began {ago:?} ago");
        }
    }
}
