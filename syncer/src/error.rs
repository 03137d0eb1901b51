//! Error types of the library: one `thiserror` enum per concern, each carrying the context an
//! operator needs (the path, flag, config line or target involved).

use std::path::PathBuf;

/// A configuration or command-line problem: exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}, line {line}: {msg}")]
    Parse {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    #[error("{flag}: {msg}")]
    Invalid { flag: &'static str, msg: String },
}

/// A failure while running: exit code 1.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
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
