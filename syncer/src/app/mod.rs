//! The commands and their lifecycle: [`run`] (the supervisor of the daemon), [`sync`] (one
//! full parallel sync), [`check`] (what this kernel offers), [`client`] (the commands that
//! ask a running daemon). Each builds the pipeline from a
//! validated [`crate::config::Config`]; nothing below this layer sees the command line.

pub mod check;
pub mod client;
pub mod error;
mod fdstore;
mod live;
mod pools;
mod preflight;
pub mod progress;
pub mod restore;
pub mod run;
pub mod sync;

pub use self::error::RunError;
