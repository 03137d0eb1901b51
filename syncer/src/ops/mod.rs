//! The operator's side of the daemon: what it reports about the pipeline and the few things
//! an operator may ask of it, never how the pipeline runs: the service manager's notify
//! protocol ([`notify`]) and the control socket with its client ([`control`]); metrics come
//! here too. Fed plain snapshots by the supervisor, or asked through [`control::Pipeline`],
//! which the supervisor implements; depends on no other layer (only the `shutdown` leaf).

pub mod control;
pub mod metrics;
pub mod notify;
