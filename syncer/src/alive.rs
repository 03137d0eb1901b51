//! Liveness of the pipeline's long-running loops (the source's reader thread, each target's
//! dispatcher task): each ticks once per turn, and the supervisor's watchdog asks how long ago
//! ([`crate::app::service`]). A loop that stops ticking is stuck. A leaf, like `shutdown`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The process's own epoch for ticks (they are kept as milliseconds since it).
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn ms(t: Instant) -> u64 {
    t.saturating_duration_since(epoch()).as_millis() as u64
}

/// When a loop last went round; made ticked.
#[derive(Debug)]
pub struct Ticker(AtomicU64);

impl Default for Ticker {
    fn default() -> Ticker {
        Ticker(AtomicU64::new(ms(Instant::now())))
    }
}

impl Ticker {
    /// The loop went round now.
    pub fn tick(&self) {
        self.0.store(ms(Instant::now()), Ordering::Relaxed);
    }

    /// How long ago it last went round, at `now`.
    pub fn age(&self, now: Instant) -> Duration {
        Duration::from_millis(ms(now).saturating_sub(self.0.load(Ordering::Relaxed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tick_resets_the_age() {
        let t = Ticker::default();
        let later = Instant::now() + Duration::from_secs(5);
        assert!(t.age(later) >= Duration::from_millis(4900));
        t.tick();
        assert!(t.age(Instant::now()) < Duration::from_secs(1));
    }
}
