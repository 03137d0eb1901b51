//! What can end `syncer run` or `syncer sync` with exit code 1, each with the context an
//! operator needs.

use crate::source::SourceError;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error("the event source ({source_kind}) died {times} time(s) within {window_min} minutes, last: {why}")]
    SourceDied {
        source_kind: String,
        times: usize,
        window_min: u64,
        why: String,
    },
    #[error("the transfer pool of target {target} failed: {why}")]
    PoolFailed { target: String, why: String },
    #[error("{0} change(s) could not be replicated before shutdown (see the log)")]
    Undrained(usize),
}

impl RunError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        RunError::Io {
            what: what.into(),
            source,
        }
    }
}
