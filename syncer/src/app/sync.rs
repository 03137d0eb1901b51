//! `syncer sync`: one full parallel sync of every target (the start-up pass alone), then return.

use std::time::Instant;

use tracing::info;

use super::pools::{new_maps, Pools};
use super::RunError;
use crate::config::Config;
use crate::shutdown::Shutdown;

pub async fn sync(cfg: Config) -> Result<(), RunError> {
    let started = Instant::now();
    // Draining from the start: the pools finish the pass and return.
    let shutdown = Shutdown::triggered();
    let pools = Pools::start(&cfg, true, true, &shutdown, new_maps(&cfg));
    let r = pools.finish().await;
    if r.is_ok() {
        info!(ms = started.elapsed().as_millis() as u64, "sync finished");
    }
    r
}
