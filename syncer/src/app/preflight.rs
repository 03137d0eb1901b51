//! What is checked of the targets before anything starts: an rsync daemon that answers and
//! has no such module (or refuses this host) is a configuration to fix, said with exit 2,
//! not an outage to retry forever. A daemon that does not answer may be down for now: the
//! pools retry it (and probe it) as usual. The password file was checked with the config.

use std::time::Duration;

use tracing::{info, warn};

use super::RunError;
use crate::config::Config;
use crate::target::rsync::{greet_module, ModuleAnswer};

/// How long a daemon has to answer at start.
const GREETING: Duration = Duration::from_secs(3);

pub async fn check_targets(cfg: &Config) -> Result<(), RunError> {
    let daemons: Vec<(String, String, u16, String)> = cfg
        .targets
        .iter()
        .filter_map(|t| {
            let module = t.daemon_module()?;
            let (host, port) = t.probe_addr()?;
            Some((t.display.clone(), host, port, module))
        })
        .collect();
    if daemons.is_empty() {
        return Ok(());
    }
    let checked = tokio::task::spawn_blocking(move || {
        for (name, host, port, module) in daemons {
            match greet_module(&host, port, &module, GREETING) {
                Ok(ModuleAnswer::Serves) => {
                    info!(target = %name, module = %module, "the rsync daemon serves the module")
                }
                Ok(ModuleAnswer::Refuses(said)) => {
                    return Err(RunError::Refused {
                        target: name,
                        why: format!(
                            "the rsync daemon at {host}:{port} refuses module {module:?}: {said} (check the module's name in the target, and the daemon's rsyncd.conf)"
                        ),
                    })
                }
                Err(e) => {
                    warn!(target = %name, "the rsync daemon at {host}:{port} does not answer yet ({e}): starting anyway, its changes wait until it does")
                }
            }
        }
        Ok(())
    });
    checked
        .await
        .unwrap_or_else(|e| Err(RunError::io("check the targets", std::io::Error::other(e))))
}
