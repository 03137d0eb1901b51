//! What `syncer run` tells its service manager over systemd's notify protocol (`sd-notify`):
//! READY once the event source is live (not after the start-up pass, which can outlast any
//! start timeout on a big tree), STATUS lines with progress, WATCHDOG pings only while the
//! pipeline is healthy (the source's reader and every target's dispatcher loop going round),
//! and STOPPING, then EXTEND_TIMEOUT while the drain makes progress. Silent when no manager
//! listens (`NOTIFY_SOCKET` unset).

use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use tracing::{error, warn};

/// How often STATUS is refreshed (when its text changed).
const STATUS_EVERY: Duration = Duration::from_secs(2);

/// The shortest time a loop may go without a turn before it counts as stuck (the loops turn
/// at least every second; a busy turn can take a moment more).
const STUCK_MIN: Duration = Duration::from_secs(3);

/// How often, during the drain, the stop timeout is extended while the drain makes progress.
pub const EXTEND_EVERY: Duration = Duration::from_secs(5);

/// One target, as the status line and the watchdog see it.
#[derive(Debug, Clone)]
pub struct TargetNow {
    pub name: String,
    /// Paths queued or in flight.
    pub pending: usize,
    pub down: bool,
    /// How long ago its dispatcher loop last went round.
    pub idle_for: Duration,
}

/// The pipeline now.
#[derive(Debug, Clone)]
pub struct Now {
    /// The start-up pass (or catch-up walk) is still running.
    pub initial: bool,
    pub draining: bool,
    /// How long ago the source's reader last went round; `None` while it is being restarted.
    pub reader_idle_for: Option<Duration>,
    pub targets: Vec<TargetNow>,
}

/// The STATUS text for `now`.
pub fn status_text(now: &Now) -> String {
    let phase = match (now.draining, now.initial) {
        (true, _) => "draining",
        (false, true) => "initial sync",
        (false, false) => "live",
    };
    let pending: usize = now.targets.iter().map(|t| t.pending).sum();
    let up = now.targets.iter().filter(|t| !t.down).count();
    let mut s = format!(
        "{phase}: {pending} pending, {up}/{} targets up",
        now.targets.len()
    );
    let down: Vec<&str> = now
        .targets
        .iter()
        .filter(|t| t.down)
        .map(|t| t.name.as_str())
        .collect();
    if !down.is_empty() {
        s.push_str(&format!(" (down: {})", down.join(", ")));
    }
    s
}

/// Why the pipeline is stuck (`None`: healthy): a loop that has not gone round for `limit`.
pub fn stuck(now: &Now, limit: Duration) -> Option<String> {
    if let Some(idle) = now.reader_idle_for.filter(|&d| d >= limit) {
        return Some(format!(
            "the event source's reader has not gone round for {} s",
            idle.as_secs()
        ));
    }
    now.targets.iter().find(|t| t.idle_for >= limit).map(|t| {
        format!(
            "the dispatcher of target {} has not gone round for {} s",
            t.name,
            t.idle_for.as_secs()
        )
    })
}

/// The notify side of the supervisor.
pub struct Service {
    /// The watchdog's interval, when the manager asked for pings.
    watchdog: Option<Duration>,
    last_status: String,
    status_at: Option<Instant>,
    /// Said once per stuck spell.
    stuck_said: bool,
}

impl Service {
    pub fn new() -> Service {
        Service {
            watchdog: sd_notify::watchdog_enabled(),
            last_status: String::new(),
            status_at: None,
            stuck_said: false,
        }
    }

    /// How often [`Service::tick`] wants to run.
    pub fn interval(&self) -> Duration {
        match self.watchdog {
            Some(w) => (w / 3).clamp(Duration::from_millis(100), STATUS_EVERY),
            None => STATUS_EVERY,
        }
    }

    /// A loop idle this long is stuck: half the watchdog's interval, at least [`STUCK_MIN`].
    fn limit(&self) -> Option<Duration> {
        self.watchdog.map(|w| (w / 2).max(STUCK_MIN))
    }

    fn send(&self, states: &[NotifyState]) {
        if let Err(e) = sd_notify::notify(states) {
            warn!("cannot notify the service manager: {e}");
        }
    }

    /// The source is live: the service is up.
    pub fn ready(&mut self, now: &Now) {
        let text = status_text(now);
        self.send(&[NotifyState::Ready, NotifyState::Status(&text)]);
        self.last_status = text;
        self.status_at = Some(Instant::now());
    }

    /// A periodic turn: STATUS when it changed, a watchdog ping when nothing is stuck.
    pub fn tick(&mut self, now: &Now) {
        let text = status_text(now);
        let due = self.status_at.is_none_or(|t| t.elapsed() >= STATUS_EVERY);
        if due && text != self.last_status {
            self.send(&[NotifyState::Status(&text)]);
            self.last_status = text;
            self.status_at = Some(Instant::now());
        }
        let Some(limit) = self.limit() else { return };
        match stuck(now, limit) {
            None => {
                self.stuck_said = false;
                self.send(&[NotifyState::Watchdog]);
            }
            Some(why) => {
                if !self.stuck_said {
                    error!("{why}: no longer pinging the watchdog (the service manager restarts syncer)");
                    self.stuck_said = true;
                }
            }
        }
    }

    /// A reload begins (READY follows it, through [`Service::ready`]).
    pub fn reloading(&mut self) {
        self.send(&[NotifyState::Reloading]);
    }

    /// The drain begins.
    pub fn stopping(&mut self, now: &Now) {
        let text = status_text(now);
        self.send(&[NotifyState::Stopping, NotifyState::Status(&text)]);
        self.last_status = text;
    }

    /// The drain made progress: it may take `more` from now.
    pub fn extend(&self, more: Duration) {
        let us = more.as_micros().min(u32::MAX as u128) as u32;
        self.send(&[NotifyState::ExtendTimeoutUsec(us)]);
    }
}

impl Default for Service {
    fn default() -> Self {
        Service::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(name: &str, pending: usize, down: bool, idle_ms: u64) -> TargetNow {
        TargetNow {
            name: name.into(),
            pending,
            down,
            idle_for: Duration::from_millis(idle_ms),
        }
    }

    #[test]
    fn status_lines() {
        let cases = [
            (
                false,
                true,
                vec![target("a", 1200, false, 0), target("b", 3, false, 0)],
                "initial sync: 1203 pending, 2/2 targets up",
            ),
            (
                false,
                false,
                vec![target("a", 0, false, 0)],
                "live: 0 pending, 1/1 targets up",
            ),
            (
                false,
                false,
                vec![target("a", 5, true, 0), target("b", 0, false, 0)],
                "live: 5 pending, 1/2 targets up (down: a)",
            ),
            (
                true,
                false,
                vec![target("a", 7, false, 0)],
                "draining: 7 pending, 1/1 targets up",
            ),
        ];
        for (draining, initial, targets, want) in cases {
            let now = Now {
                initial,
                draining,
                reader_idle_for: Some(Duration::ZERO),
                targets,
            };
            assert_eq!(status_text(&now), want);
        }
    }

    #[test]
    fn which_loop_is_stuck() {
        let limit = Duration::from_secs(5);
        let cases: [(Option<u64>, Vec<TargetNow>, Option<&str>); 5] = [
            (Some(200), vec![target("a", 0, false, 900)], None),
            // A target that is down is not stuck: its loop still goes round.
            (Some(200), vec![target("a", 9, true, 900)], None),
            (Some(6000), vec![target("a", 0, false, 0)], Some("reader")),
            (
                Some(0),
                vec![target("a", 0, false, 0), target("b", 0, false, 7000)],
                Some("target b"),
            ),
            // A source being restarted has no reader for a moment.
            (None, vec![target("a", 0, false, 0)], None),
        ];
        for (reader, targets, want) in cases {
            let now = Now {
                initial: false,
                draining: false,
                reader_idle_for: reader.map(Duration::from_millis),
                targets,
            };
            let got = stuck(&now, limit);
            match want {
                None => assert_eq!(got, None),
                Some(w) => assert!(
                    got.as_deref().is_some_and(|g| g.contains(w)),
                    "{got:?} names {w}"
                ),
            }
        }
    }
}
