//! The commands and their lifecycle: [`run`] (the supervisor of the daemon), [`sync`] (one
//! full parallel sync), [`check`] (what this kernel offers). Each builds the pipeline from a
//! validated [`crate::config::Config`]; nothing below this layer sees the command line.

pub mod check;
pub mod error;
mod fdstore;
mod pools;
pub mod restore;
pub mod run;
pub mod sync;

pub use self::error::RunError;
