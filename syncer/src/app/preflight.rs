//! What is checked of the targets before anything starts: each remote target is reached once
//! the way every transfer will reach it (a listing of its top directory, with the password
//! file and the operator's arguments). A target that answers and turns syncer away (a wrong
//! password, no such module, an unknown ssh host key) is a configuration to fix, said with
//! exit 2 and rsync's own reason, not an outage to retry forever. One that does not answer
//! may be down for now: the pools retry it (and probe it) as usual. The password file's mode
//! and owner were checked with the config.

use std::time::Duration;

use tracing::{info, warn};

use super::RunError;
use crate::config::Config;
use crate::target::rsync::{reason, refusal};
use crate::target::transport;

/// How long a target has to answer at start.
const REACH: Duration = Duration::from_secs(20);

pub async fn check_targets(cfg: &Config) -> Result<(), RunError> {
    for t in &cfg.targets {
        let tr = transport(&cfg.source, t, &cfg.rsync);
        let Some((code, stderr)) = crate::transfer::check::reach(&*tr, REACH).await else {
            continue;
        };
        if code == Some(0) {
            info!(target = %t.display, "the target answers");
            continue;
        }
        match refusal(&stderr) {
            Some(why) => {
                return Err(RunError::Refused {
                    target: t.display.clone(),
                    why: format!(
                        "{why}: {} (check the target, --password-file and the target host's configuration)",
                        reason(&stderr)
                    ),
                })
            }
            None => warn!(
                target = %t.display,
                "the target does not answer yet ({}): starting anyway, its changes wait until it does",
                reason(&stderr)
            ),
        }
    }
    Ok(())
}
