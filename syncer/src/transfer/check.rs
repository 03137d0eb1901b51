//! The start's reach of a target (does it take syncer at all), and the periodic verify's
//! contents check of one target: the transport's dry run comparing contents (run through the shard's [`run_check`], the only place that spawns), and what it
//! reports queued in the target's map as changes, which the pool then sends like any other.
//! Nothing is trusted to the report but "look at this path again": a queued path is sent as
//! the source holds it when its transfer runs, so a difference that was only a transfer in
//! flight costs one more transfer, never a wrong target.

use std::time::Instant;

use super::shard::run_check;
use crate::queue::DedupMap;
use crate::target::{Outcome, Transport};

/// A contents check that could not be done.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("this target's transport has no contents check")]
    Unsupported,
    #[error("the contents check failed ({outcome:?}, exit {code:?}): {reason}")]
    Failed {
        outcome: Outcome,
        code: Option<i32>,
        reason: String,
    },
}

/// Runs `transport`'s reach (see [`Transport::reach`]), at most `within`: `None` when it has
/// none, else its exit code (`None`: killed, or out of time) and stderr.
pub async fn reach(
    transport: &dyn Transport,
    within: std::time::Duration,
) -> Option<(Option<i32>, String)> {
    let inv = transport.reach()?;
    match tokio::time::timeout(within, run_check(inv, None)).await {
        Ok((code, _, stderr)) => Some((code.ok().flatten(), stderr)),
        Err(_) => Some((None, format!("no answer within {} s", within.as_secs()))),
    }
}

/// Runs the contents check of `transport` and queues what differs in `map`; how many entries
/// differed. `tag` marks the process as this state's (see `state::kill_orphans`).
pub async fn check_contents(
    transport: &dyn Transport,
    map: &DedupMap,
    tag: Option<String>,
) -> Result<usize, CheckError> {
    let inv = transport.check().ok_or(CheckError::Unsupported)?;
    let (code, out, stderr) = run_check(inv, tag).await;
    let code = code.map_err(|()| CheckError::Failed {
        outcome: Outcome::Fatal,
        code: None,
        reason: stderr.clone(),
    })?;
    let outcome = transport.outcome(code);
    // A vanished file (24) is a change in progress: its events follow.
    if !outcome.succeeded() {
        return Err(CheckError::Failed {
            outcome,
            code,
            reason: crate::target::rsync::reason(&stderr).to_string(),
        });
    }
    let changes = transport.drift(&out);
    map.insert_all(&changes, Instant::now());
    Ok(changes.len())
}
