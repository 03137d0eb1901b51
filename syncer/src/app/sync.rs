//! `syncer sync`: one full parallel sync of every target (the start-up pass alone), then return.

use std::time::Instant;

use tracing::info;

use super::pools::{Job, Pools};
use super::restore;
use super::RunError;
use crate::config::Config;
use crate::shutdown::Shutdown;

pub async fn sync(cfg: Config) -> Result<(), RunError> {
    super::preflight::check_targets(&cfg).await?;
    let started = Instant::now();
    // Draining from the start: the pools finish the pass and return.
    let shutdown = Shutdown::triggered();
    // The pass builds every target's index (and completes what a crashed run left pending).
    let (_state, mut planned) = restore::open(&cfg, None, None)?;
    for p in &mut planned {
        p.pass = true;
    }
    let pools = Pools::start(&cfg, true, Job::Sync, &shutdown, &planned);
    let progress = super::progress::Progress::start(pools.progress_targets());
    let r = pools.finish().await;
    drop(progress);
    if r.is_ok() {
        info!(ms = started.elapsed().as_millis() as u64, "sync finished");
    }
    r
}
