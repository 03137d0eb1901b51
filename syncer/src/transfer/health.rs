//! Target health and backoff: when a target that did not answer may be tried again, and how
//! long a batch that failed in part waits before its retry. Decisions only, tested with tables.
//!
//! A target that could not be reached at all is probed (a TCP connect, by the pool) every
//! [`PROBE_EVERY`] while it pauses, and the pause ends at the first probe that connects: a
//! target that comes back is used again within about a second, whatever the backoff has
//! grown to, while the backoff still spaces out real attempts against a target that answers
//! but refuses (wrong module or password), so neither the logs nor the target are flooded.

use std::time::{Duration, Instant};

/// Shortest and longest pause of a target that is down; a target that cannot be probed
/// (a local directory) pauses at most [`UNPROBED_MAX`], so that it too resumes soon after it
/// is back (its retries are cheap: no network, no remote process).
const DOWN_MIN: Duration = Duration::from_millis(500);
const DOWN_MAX: Duration = Duration::from_secs(30);
pub const UNPROBED_MAX: Duration = Duration::from_secs(5);

/// How often an unreachable target is probed.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Up or down, and until when.
#[derive(Debug, Default)]
pub struct Health {
    down_until: Option<Instant>,
    backoff: Duration,
    /// When the current outage began.
    since: Option<Instant>,
    /// The last failure was "unreachable": probes may end the pause.
    probe: bool,
    next_probe: Option<Instant>,
    /// The longest pause.
    max: Duration,
}

impl Health {
    /// For a target that can be probed, or not.
    pub fn new(can_probe: bool) -> Health {
        Health {
            max: if can_probe { DOWN_MAX } else { UNPROBED_MAX },
            ..Health::default()
        }
    }
}

impl Health {
    /// Whether nothing may be sent at `now`.
    pub fn is_down(&self, now: Instant) -> bool {
        self.down_until.is_some_and(|t| now < t)
    }

    /// When the pause ends, if one is running at `now`.
    pub fn down_until(&self, now: Instant) -> Option<Instant> {
        self.down_until.filter(|&t| t > now)
    }

    /// The target did not answer: it pauses 0.5 s, doubling with every failure in a row, up
    /// to 30 s; `unreachable` (nothing answered at all) lets probes end the pause. Returns the
    /// pause, and whether this began an outage.
    pub fn failed(&mut self, now: Instant, unreachable: bool) -> (Duration, bool) {
        self.backoff = (self.backoff * 2).clamp(DOWN_MIN, self.max.max(DOWN_MIN));
        self.down_until = Some(now + self.backoff);
        self.probe = unreachable;
        self.next_probe = unreachable.then(|| now + PROBE_EVERY);
        let began = self.since.is_none();
        self.since.get_or_insert(now);
        (self.backoff, began)
    }

    /// The last failure came from a target that answered (it was not unreachable): its
    /// pause is a backoff, not an outage probes can end.
    pub fn answered(&self) -> bool {
        self.since.is_some() && !self.probe
    }

    /// How long the current outage has lasted.
    pub fn outage(&self, now: Instant) -> Option<Duration> {
        self.since.map(|s| now.saturating_duration_since(s))
    }

    /// Whether a probe is due at `now`.
    pub fn probe_due(&self, now: Instant) -> bool {
        self.is_down(now) && self.probe && self.next_probe.is_some_and(|t| now >= t)
    }

    /// When the next probe is due, if probing.
    pub fn next_probe(&self, now: Instant) -> Option<Instant> {
        self.next_probe.filter(|_| self.is_down(now) && self.probe)
    }

    /// A probe is under way: the next one comes a period later.
    pub fn probing(&mut self, now: Instant) {
        self.next_probe = Some(now + PROBE_EVERY);
    }

    /// A probe connected: the pause ends now (the next batch says whether it is really back).
    pub fn probe_ok(&mut self, now: Instant) {
        if self.is_down(now) {
            self.down_until = Some(now);
        }
    }

    /// A batch went through. Returns how long the target had been down, if it had.
    pub fn succeeded(&mut self, now: Instant) -> Option<Duration> {
        self.backoff = Duration::ZERO;
        self.down_until = None;
        self.probe = false;
        self.next_probe = None;
        self.since.take().map(|s| now.saturating_duration_since(s))
    }
}

/// The backoff of a partial failure at retry `level`: 2, 4, 8 ... s, at most 60 s.
pub fn retry_backoff(level: u32) -> Duration {
    Duration::from_secs(1 << level.min(6)).min(Duration::from_secs(60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn down_pauses_double_and_reset() {
        // A run of events and the pause each failure gives (None: a success).
        let ms = Duration::from_millis;
        #[rustfmt::skip]
        let table: &[(&str, &[Option<u64>])] = &[
            ("first failure", &[Some(500)]),
            ("doubling", &[Some(500), Some(1000), Some(2000), Some(4000)]),
            ("capped at 30 s", &[Some(500), Some(1000), Some(2000), Some(4000), Some(8000), Some(16000), Some(30000), Some(30000)]),
            ("a success starts over", &[Some(500), Some(1000), None, Some(500)]),
        ];
        for (name, events) in table {
            let mut h = Health::new(true);
            let now = Instant::now();
            for (i, e) in events.iter().enumerate() {
                match e {
                    Some(want) => {
                        assert_eq!(h.failed(now, false).0, ms(*want), "{name}, event {i}");
                        assert!(
                            h.is_down(now) && !h.is_down(now + ms(*want)),
                            "{name}, event {i}"
                        );
                    }
                    None => {
                        assert!(h.succeeded(now).is_some(), "{name}: it was down");
                        assert!(!h.is_down(now));
                    }
                }
            }
        }
        assert!(
            Health::default().succeeded(Instant::now()).is_none(),
            "up all along"
        );
    }

    #[test]
    fn probes_end_the_pause_of_an_unreachable_target() {
        let t0 = Instant::now();
        let s = |x: u64| t0 + Duration::from_millis(x);
        // (event, at ms) → expectations, in order.
        let mut h = Health::new(true);
        for _ in 0..8 {
            h.failed(t0, true); // a long outage: the backoff is at 30 s
        }
        assert!(h.is_down(s(20_000)));
        assert!(!h.probe_due(s(500)), "not before a period");
        assert!(h.probe_due(s(1000)));
        h.probing(s(1000));
        assert!(!h.probe_due(s(1500)));
        assert_eq!(h.next_probe(s(1500)), Some(s(2000)));
        h.probe_ok(s(2100));
        assert!(
            !h.is_down(s(2100)),
            "a probe that connects ends the pause at once"
        );
        assert!(!h.answered(), "unreachable: an outage, not a backoff");
        // Reached, but refused (e.g. a wrong password): no probing, the backoff holds.
        let (pause, began) = h.failed(s(2200), false);
        assert!(h.answered(), "it answered: a backoff");
        assert!(!began, "still the same outage");
        assert_eq!(pause, DOWN_MAX);
        assert!(!h.probe_due(s(5000)));
        assert_eq!(h.outage(s(5000)), Some(Duration::from_secs(5)));
        assert_eq!(h.succeeded(s(6000)), Some(Duration::from_secs(6)));
        assert!(!h.answered(), "up again");
        assert!(h.failed(s(7000), true).1, "a new outage");
    }

    #[test]
    fn unprobed_targets_pause_briefly() {
        let mut h = Health::new(false);
        let now = Instant::now();
        let pauses: Vec<u64> = (0..6)
            .map(|_| h.failed(now, false).0.as_millis() as u64)
            .collect();
        assert_eq!(pauses, [500, 1000, 2000, 4000, 5000, 5000]);
    }

    #[test]
    fn retry_backoffs() {
        for (level, secs) in [(1, 2), (2, 4), (3, 8), (5, 32), (6, 60), (7, 60), (40, 60)] {
            assert_eq!(
                retry_backoff(level),
                Duration::from_secs(secs),
                "level {level}"
            );
        }
    }
}
