//! End-to-end tests of the `syncer` binary. Each scenario mounts its own ext4 loop filesystem as
//! the source (at `<mnt>/src`), starts an rsync daemon target and a local-directory target, runs
//! the real binary (`CARGO_BIN_EXE_syncer`), changes the source, and polls until both targets equal
//! the source byte for byte, modes, owners and nanosecond mtimes included. The watching scenarios
//! run once per event source (`<scenario>::fanotify`, `<scenario>::inotify`, `<scenario>::ebpf`:
//! on this kernel the eBPF source runs on syscall tracepoints; `cargo xtask vm-test` runs the
//! eBPF scenarios in VMs whose kernels allow its fsnotify hooks). The harness is in
//! `util.rs`; each scenario file says at its top what it covers.
//!
//! Run as root: `cargo test -p syncer --test e2e` (filter with e.g. `-- inotify` or
//! `-- harness_selftest`; `-- --nocapture` shows syncer's log as it happens). Environment:
//! - `SYNCER_E2E_REQUIRE=1`: fail instead of printing `SKIP:` when not root / no loop mounts.
//! - `SYNCER_E2E_BIN=/path/to/syncer`: run another build (e.g. `target/release/syncer`).
//! - `SYNCER_E2E_RUST_LOG=debug`: the `RUST_LOG` given to syncer (default `info`).
//! - `SYNCER_E2E_EBPF_HOOKS=fsnotify|tracepoints`: force the eBPF source's hooks.
//! - `SYNCER_E2E_REQUIRE_NFS=1`: fail instead of skipping the NFS scenarios (`nfs.rs`) where
//!   the kernel has no NFS server (`cargo xtask vm-test` sets it in its guests).

#[macro_use]
mod util;

mod bigtree;
mod bulk;
mod closes;
mod control;
mod delete;
mod durable;
mod ebpf;
mod errors;
mod ganesha;
mod hardlinks;
mod harness;
mod initial;
mod names;
mod nfs;
mod oneshot;
mod outage;
mod overflow;
mod property;
mod relative;
mod rename;
mod samefs;
mod shutdown;
mod ssh;
mod supervise;
mod systemd;
