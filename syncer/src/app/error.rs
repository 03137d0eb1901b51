//! What can end `syncer run` or `syncer sync` with exit code 1 (or 2, for a target that
//! refuses syncer at start: configuration), each with the context an operator needs.

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
    #[error("--target {target}: {why}")]
    Refused { target: String, why: String },
}

impl RunError {
    /// The exit code: 2 for a configuration the operator must fix, else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Refused { .. } => 2,
            _ => 1,
        }
    }

    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        RunError::Io {
            what: what.into(),
            source,
        }
    }
}
