//! syncer: real-time replication of large file trees to backup targets.
//!
//! The folders follow the pipeline, and dependencies point down it only:
//! `app` (commands, supervisor) → `config` → `transfer` (dispatcher, guard, shards) →
//! `queue` (dedup map, coalescing rules, the pass) and `target` (forms, transports) →
//! `change`; `source` (kernel → changes) → `change`. `ops` (what operators are told) is fed
//! snapshots by `app` and depends on nothing. `shutdown`, `alive` and `change` are leaves.
//! `main.rs` only parses the command line and calls [`app`]. See ARCHITECTURE.md.

pub mod alive;
pub mod app;
pub mod change;
pub mod config;
pub mod ops;
pub mod queue;
pub mod shutdown;
pub mod source;
pub mod state;
pub mod target;
pub mod transfer;

/// For unit tests that need something of the machine (root, tracefs, BTF): skip with a
/// message, or fail where the suite must run everything (`SYNCER_E2E_REQUIRE=1`, which
/// `cargo xtask test` sets).
#[cfg(test)]
pub(crate) fn skip_or_fail(why: &str) {
    if std::env::var_os("SYNCER_E2E_REQUIRE").is_some_and(|v| v == "1") {
        panic!("cannot run here (SYNCER_E2E_REQUIRE=1): {why}");
    }
    eprintln!("SKIP: {why}");
}
