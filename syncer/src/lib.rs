//! syncer: real-time replication of large file trees to backup targets.
//!
//! The library holds the whole pipeline; `main.rs` only parses the command line into a
//! [`config::Config`] and calls [`daemon::run`], [`daemon::sync_once`] or [`check::report`].
//! See ARCHITECTURE.md for the code map and the invariants.

pub mod change;
pub mod check;
pub mod config;
pub mod daemon;
pub mod dedup;
pub mod error;
pub mod guard;
pub mod pass;
pub mod pool;
pub mod rsync;
pub mod source;
pub mod target;
