//! Prometheus metrics (`prometheus-client`, OpenMetrics text), served at `/metrics` on
//! `--metrics-listen ADDR:PORT` when asked for (off by default). Every scrape asks the
//! supervisor for a [`Snapshot`] of the counters it already keeps and encodes it through a
//! collector: nothing is counted twice, and nothing on the hot path knows about metrics.
//!
//! Names follow the conventions: base units, counters end in `_total`, times are
//! `*_timestamp_seconds`; a target is labelled by its name (the config's `name`, else a short
//! name from the URL: `target="backup/mod"`; never the URL, which may carry a user).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// The states a target's `syncer_target_state` gauge names (one of them is 1).
pub const STATES: [&str; 7] = [
    "initial sync",
    "live",
    "rescan",
    "down",
    "backoff",
    "refused",
    "paused",
];

/// One target's numbers at a scrape.
#[derive(Debug, Clone, Default)]
pub struct TargetMetrics {
    /// The label: a short name, not a URL.
    pub name: String,
    /// One of [`STATES`].
    pub state: String,
    pub pending: u64,
    pub oldest_pending_seconds: f64,
    /// 0: never.
    pub last_synced_timestamp_seconds: f64,
    pub batches_ok: u64,
    pub batches_failed: u64,
    pub paths_sent: u64,
    pub paths_dropped: u64,
    /// What rsync said of its runs: entries it looked at, regular files it sent, their size,
    /// the bytes on the wire.
    pub files_seen: u64,
    pub files_sent: u64,
    pub file_bytes: u64,
    pub bytes_sent: u64,
    /// Changes folded into an entry already pending.
    pub coalesced: u64,
    /// The pass under way (or the last): entries rsync looked at, and the estimate of all
    /// it will meet (0: unknown).
    pub pass_entries: u64,
    pub pass_total: u64,
    pub rsync_runs: u64,
    pub failing_paths: u64,
    /// rsync exit codes and how often (-1: a signal, or it could not run).
    pub exits: Vec<(i32, u64)>,
    /// Batch durations: (upper bound in seconds, count in that bucket alone), the last bound
    /// `f64::MAX` (encoded `+Inf`); their sum in seconds.
    pub batch_buckets: Vec<(f64, u64)>,
    pub batch_seconds_sum: f64,
}

/// The daemon's numbers at a scrape.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub source_kind: String,
    pub events: u64,
    pub rescans: u64,
    pub lost: u64,
    pub stale: u64,
    /// Changes handed on, by kind (`created`, `modified`, `removed`, `moved_in`, `rescan`).
    pub changes: Vec<(&'static str, u64)>,
    pub targets: Vec<TargetMetrics>,
}

#[derive(Debug)]
struct Collect(Snapshot);

fn target_label(t: &TargetMetrics) -> Vec<(&'static str, String)> {
    vec![("target", t.name.clone())]
}

impl Collect {
    fn counter(
        enc: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        v: u64,
    ) -> Result<(), std::fmt::Error> {
        let c = ConstCounter::new(v);
        c.encode(enc.encode_descriptor(name, help, None, MetricType::Counter)?)
    }

    /// One family over the targets: `value` of each, with its label.
    fn per_target<V: Fn(&TargetMetrics) -> f64>(
        &self,
        enc: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        kind: MetricType,
        value: V,
    ) -> Result<(), std::fmt::Error> {
        let mut m = enc.encode_descriptor(name, help, None, kind)?;
        for t in &self.0.targets {
            let labels = target_label(t);
            let v = value(t);
            match kind {
                MetricType::Counter => {
                    ConstCounter::new(v as u64).encode(m.encode_family(&labels)?)?
                }
                _ => ConstGauge::new(v).encode(m.encode_family(&labels)?)?,
            }
        }
        Ok(())
    }
}

impl Collector for Collect {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        {
            let mut m = enc.encode_descriptor(
                "syncer_source",
                "The event source in use",
                None,
                MetricType::Info,
            )?;
            m.encode_info(&vec![("kind", s.source_kind.clone())])?;
        }
        Collect::counter(
            &mut enc,
            "syncer_source_events",
            "Kernel records read",
            s.events,
        )?;
        Collect::counter(
            &mut enc,
            "syncer_source_rescans",
            "Overflows and other losses, each answered with a rescan",
            s.rescans,
        )?;
        Collect::counter(
            &mut enc,
            "syncer_source_lost",
            "Records the kernel could not deliver",
            s.lost,
        )?;
        Collect::counter(
            &mut enc,
            "syncer_source_stale",
            "Records dropped because their directory was already gone",
            s.stale,
        )?;
        {
            let mut m = enc.encode_descriptor(
                "syncer_source_changes",
                "Changes the source handed on, by kind",
                None,
                MetricType::Counter,
            )?;
            for (kind, v) in &s.changes {
                ConstCounter::new(*v)
                    .encode(m.encode_family(&vec![("kind", kind.to_string())])?)?;
            }
        }
        use MetricType::{Counter, Gauge};
        self.per_target(
            &mut enc,
            "syncer_target_pending",
            "Paths queued or in flight",
            Gauge,
            |t| t.pending as f64,
        )?;
        self.per_target(
            &mut enc,
            "syncer_target_oldest_pending_seconds",
            "Age of the oldest change still owed a transfer (0: none)",
            Gauge,
            |t| t.oldest_pending_seconds,
        )?;
        self.per_target(
            &mut enc,
            "syncer_target_last_synced_timestamp_seconds",
            "When a batch last succeeded (0: never)",
            Gauge,
            |t| t.last_synced_timestamp_seconds,
        )?;
        self.per_target(
            &mut enc,
            "syncer_target_failing_paths",
            "Paths that keep failing",
            Gauge,
            |t| t.failing_paths as f64,
        )?;
        self.per_target(
            &mut enc,
            "syncer_target_initial_sync",
            "1 while the start-up pass runs",
            Gauge,
            |t| f64::from(u8::from(t.state == "initial sync")),
        )?;
        self.per_target(
            &mut enc,
            "syncer_paths_sent",
            "Paths replicated",
            Counter,
            |t| t.paths_sent as f64,
        )?;
        self.per_target(
            &mut enc,
            "syncer_paths_dropped",
            "Paths that needed no transfer (below a directory replaced by a file, or a late close of a file the target holds)",
            Counter,
            |t| t.paths_dropped as f64,
        )?;
        self.per_target(
            &mut enc,
            "syncer_files_sent",
            "Regular files whose contents rsync sent",
            Counter,
            |t| t.files_sent as f64,
        )?;
        self.per_target(
            &mut enc,
            "syncer_file_bytes_sent",
            "Size of the files rsync sent",
            Counter,
            |t| t.file_bytes as f64,
        )?;
        self.per_target(
            &mut enc,
            "syncer_bytes_sent",
            "Bytes rsync put on the wire (after delta encoding)",
            Counter,
            |t| t.bytes_sent as f64,
        )?;
        self.per_target(
            &mut enc,
            "syncer_entries_checked",
            "Entries rsync looked at",
            Counter,
            |t| t.files_seen as f64,
        )?;
        self.per_target(
            &mut enc,
            "syncer_coalesced",
            "Changes folded into one already pending (a transfer saved each)",
            Counter,
            |t| t.coalesced as f64,
        )?;
        self.per_target(
            &mut enc,
            "syncer_pass_entries",
            "Entries the pass under way (or the last) has compared",
            Gauge,
            |t| t.pass_entries as f64,
        )?;
        self.per_target(
            &mut enc,
            "syncer_pass_entries_estimated",
            "Entries the pass under way is expected to meet (0: unknown)",
            Gauge,
            |t| t.pass_total as f64,
        )?;
        self.per_target(
            &mut enc,
            "syncer_rsync_runs",
            "rsync processes run",
            Counter,
            |t| t.rsync_runs as f64,
        )?;
        {
            let mut m = enc.encode_descriptor(
                "syncer_target_state",
                "The target's state (1 for the current one)",
                None,
                Gauge,
            )?;
            for t in &s.targets {
                for st in STATES {
                    let labels = vec![("target", t.name.clone()), ("state", st.to_string())];
                    ConstGauge::new(i64::from(t.state == st)).encode(m.encode_family(&labels)?)?;
                }
            }
        }
        {
            let mut m =
                enc.encode_descriptor("syncer_batches", "Batches by result", None, Counter)?;
            for t in &s.targets {
                for (result, v) in [("ok", t.batches_ok), ("failed", t.batches_failed)] {
                    let labels = vec![("target", t.name.clone()), ("result", result.to_string())];
                    ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
                }
            }
        }
        {
            let mut m = enc.encode_descriptor(
                "syncer_rsync_exits",
                "rsync exit codes (-1: a signal, or it could not run)",
                None,
                Counter,
            )?;
            for t in &s.targets {
                for (code, v) in &t.exits {
                    let labels = vec![("target", t.name.clone()), ("code", code.to_string())];
                    ConstCounter::new(*v).encode(m.encode_family(&labels)?)?;
                }
            }
        }
        {
            let mut m = enc.encode_descriptor(
                "syncer_batch_duration_seconds",
                "How long rsync runs took",
                None,
                MetricType::Histogram,
            )?;
            for t in &s.targets {
                let count = t.batch_buckets.iter().map(|(_, c)| c).sum();
                m.encode_family(&target_label(t))?.encode_histogram::<()>(
                    t.batch_seconds_sum,
                    count,
                    &t.batch_buckets,
                    None,
                )?;
            }
        }
        Ok(())
    }
}

/// The OpenMetrics text of `snapshot`.
pub fn render(snapshot: Snapshot) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Collect(snapshot)));
    let mut out = String::new();
    match prometheus_client::encoding::text::encode(&mut out, &registry) {
        Ok(()) => out,
        Err(e) => format!("# the metrics could not be encoded: {e}\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrape_is_well_formed() {
        let text = render(Snapshot {
            source_kind: "fanotify".into(),
            events: 10,
            changes: vec![("created", 4), ("modified", 6)],
            targets: vec![TargetMetrics {
                name: "host/mod".into(),
                state: "live".into(),
                pending: 3,
                paths_sent: 7,
                bytes_sent: 4096,
                coalesced: 2,
                exits: vec![(0, 5), (23, 1)],
                batch_buckets: vec![(0.1, 4), (1.0, 2), (f64::MAX, 0)],
                batch_seconds_sum: 1.5,
                ..Default::default()
            }],
            ..Default::default()
        });
        for want in [
            "# TYPE syncer_source_events counter",
            "syncer_source_events_total 10",
            "syncer_target_pending{target=\"host/mod\"} 3",
            "syncer_paths_sent_total{target=\"host/mod\"} 7",
            "syncer_source_changes_total{kind=\"modified\"} 6",
            "syncer_bytes_sent_total{target=\"host/mod\"} 4096",
            "syncer_coalesced_total{target=\"host/mod\"} 2",
            "syncer_target_state{target=\"host/mod\",state=\"backoff\"} 0",
            "syncer_target_state{target=\"host/mod\",state=\"live\"} 1",
            "syncer_target_state{target=\"host/mod\",state=\"down\"} 0",
            "syncer_rsync_exits_total{target=\"host/mod\",code=\"23\"} 1",
            "syncer_batch_duration_seconds_bucket{le=\"1.0\",target=\"host/mod\"} 6",
            "syncer_batch_duration_seconds_count{target=\"host/mod\"} 6",
            "syncer_batch_duration_seconds_bucket{le=\"+Inf\",target=\"host/mod\"} 6",
            "# EOF",
        ] {
            assert!(text.contains(want), "{want} in:\n{text}");
        }
    }
}
