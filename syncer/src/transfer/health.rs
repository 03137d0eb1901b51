//! Target health and backoff: when a target that did not answer may be tried again, and how
//! long a batch that failed in part waits before its retry. Decisions only, tested with tables.

use std::time::{Duration, Instant};

/// Shortest and longest pause of a target that is down.
const DOWN_MIN: Duration = Duration::from_millis(500);
const DOWN_MAX: Duration = Duration::from_secs(30);

/// Up or down, and until when.
#[derive(Debug, Default)]
pub struct Health {
    down_until: Option<Instant>,
    backoff: Duration,
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
    /// to 30 s. Returns the pause.
    pub fn failed(&mut self, now: Instant) -> Duration {
        self.backoff = (self.backoff * 2).clamp(DOWN_MIN, DOWN_MAX);
        self.down_until = Some(now + self.backoff);
        self.backoff
    }

    /// A batch went through. Returns whether the target had been down.
    pub fn succeeded(&mut self) -> bool {
        self.backoff = Duration::ZERO;
        self.down_until.take().is_some()
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
            let mut h = Health::default();
            let now = Instant::now();
            for (i, e) in events.iter().enumerate() {
                match e {
                    Some(want) => {
                        assert_eq!(h.failed(now), ms(*want), "{name}, event {i}");
                        assert!(
                            h.is_down(now) && !h.is_down(now + ms(*want)),
                            "{name}, event {i}"
                        );
                    }
                    None => {
                        assert!(h.succeeded(), "{name}: it was down");
                        assert!(!h.is_down(now));
                    }
                }
            }
        }
        assert!(!Health::default().succeeded(), "up all along");
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
