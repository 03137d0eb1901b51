//! The bench's settings, parsed once by `main` into these plain structs: the rate runs'
//! ([`Opts`], [`RateSpec`]) and those of the sections that take their own ([`LiveOpts`],
//! [`RestartOpts`]). Every section reads them; they depend on no section.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::gen::Mix;
use crate::livegen::LiveMix;
use crate::tools::Tool;

/// A rate of the generator: files (operations) per second, or as fast as it can go.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum RateSpec {
    Fixed(f64),
    Max,
}

impl RateSpec {
    pub fn parse(s: &str) -> Result<RateSpec> {
        if s == "max" {
            return Ok(RateSpec::Max);
        }
        let r: f64 = s.parse().with_context(|| format!("rate {s:?}"))?;
        if r <= 0.0 {
            bail!("rate {s:?} must be positive (or `max`)");
        }
        Ok(RateSpec::Fixed(r))
    }

    pub fn label(&self) -> String {
        match self {
            RateSpec::Fixed(r) => format!("{r}"),
            RateSpec::Max => "max".into(),
        }
    }

    pub fn per_s(&self) -> f64 {
        match self {
            RateSpec::Fixed(r) => *r,
            RateSpec::Max => 0.0,
        }
    }
}

/// The bench's settings, defaults resolved.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Opts {
    pub syncer: PathBuf,
    pub quick: bool,
    pub ram: bool,
    pub repeat: usize,
    pub rates: Vec<RateSpec>,
    /// Writer run time per rate row (the operation count is rate x duration, capped).
    pub duration_s: f64,
    /// Cap on the operations of one row, and the count of the `max` rate.
    pub max_files: u64,
    /// Writer run time of the lsyncd delay=15 rows.
    pub d15_duration_s: f64,
    pub tools: Vec<Tool>,
    pub tree_files: u64,
    pub tree_dirs: u64,
    pub mix: Mix,
    pub converge_cap_s: f64,
    /// Longest wait after the writer stops for the tool to run no rsync.
    pub busy_cap_s: f64,
    pub work: PathBuf,
    /// The pristine images of the big-tree rows (built once, copied per row).
    pub images: PathBuf,
    pub out: PathBuf,
    pub name: String,
    pub seed: u64,
    pub files_per_dir: u32,
    /// The rows "big tree under live load".
    pub live: LiveOpts,
    /// The rows "restarts on a big tree".
    pub restart: RestartOpts,
}

impl Opts {
    pub fn ops_for(&self, tool: Tool, rate: RateSpec) -> u64 {
        let dur = if tool == Tool::LsyncdD15 {
            self.d15_duration_s
        } else {
            self.duration_s
        };
        match rate {
            RateSpec::Fixed(r) => ((r * dur).round() as u64).clamp(1, self.max_files),
            RateSpec::Max => self.max_files,
        }
    }
}

/// The live section's settings, defaults resolved.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct LiveOpts {
    /// Tree sizes in files (directories: files / 10); empty skips the section.
    pub trees: Vec<u64>,
    /// Rates of the syncer rows, operations/s; 0 is the no-load baseline.
    pub rates: Vec<f64>,
    /// Rates of the other tools' rows.
    pub peer_rates: Vec<f64>,
    pub tools: Vec<Tool>,
    pub duration_s: f64,
    /// Seconds after spawn of the kill -9 + restart rows (None: no such rows).
    pub kill_s: Option<f64>,
    pub converge_cap_s: f64,
    /// Longest wait for the start-up pass, from the (last) spawn.
    pub startup_cap_s: f64,
    pub mix: LiveMix,
    /// Life of the load's temporary directories before their `rm -r`, ms.
    pub tmp_life_ms: (u64, u64),
    /// The huge-tree mode: tiny files stored in their inodes (ext4 inline_data).
    pub huge: bool,
    /// Rebuild the pristine images even if a matching one is kept.
    pub rebuild: bool,
    /// Keep the target copy's UUID (the same as the source's), to check that it is harmless.
    pub same_uuid: bool,
    /// The load starts once the start-up pass ended; CPU and rsync runs count from then.
    pub settled: bool,
}

impl LiveOpts {
    /// File sizes of the tree and of the files the load writes.
    pub(crate) fn sizes(&self) -> ((u64, u64), (u64, u64)) {
        if self.huge {
            ((8, 60), (8, 60))
        } else {
            ((512, 4096), (1024, 32 * 1024))
        }
    }
}

/// The restart section's settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RestartOpts {
    /// Tree sizes in files; empty skips the section.
    pub trees: Vec<u64>,
    /// The load of the kill rows, operations/s, and how long it runs.
    pub rate: f64,
    pub duration_s: f64,
    /// Percent of the files changed while syncer is stopped.
    pub changed_pct: f64,
}
