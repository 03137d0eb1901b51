//! The operator's side of the daemon: what it reports about the pipeline, never how the
//! pipeline runs. Today the service manager's notify protocol ([`notify`]); the control
//! socket and metrics come here too. Fed plain snapshots by the supervisor; depends on no
//! other layer.

pub mod notify;
