//! A shard: one task per rsync slot of a target, running one process at a time for the batches
//! the dispatcher hands it, and sending each outcome back. [`run_process`] (for the batches,
//! and behind [`run_check`] for the periodic verify's contents check) is the only place in
//! syncer that spawns processes.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::{Batch, PoolStats};
use crate::state::stat::{self, Depth};
use crate::state::{IndexUpdate, TargetState};
use crate::target::{BatchKind, Invocation, Outcome, Transport};

/// What a shard says of a batch.
pub struct BatchResult {
    pub shard: usize,
    pub batch: Batch,
    pub outcome: Outcome,
    pub stderr: String,
    pub elapsed: Duration,
}

impl BatchResult {
    /// rsync's reason, for the log: its first specific complaint (`@ERROR: ...`, `rsync: ...`:
    /// the cause, where later ones are consequences such as a broken pipe) rather than the
    /// summary line (`rsync error: ... (code 23)`), else the last line.
    pub fn reason(&self) -> &str {
        crate::target::rsync::reason(&self.stderr)
    }
}

pub struct ShardCtx {
    pub shard: usize,
    pub transport: Arc<dyn Transport>,
    pub results: mpsc::Sender<BatchResult>,
    pub stats: Arc<PoolStats>,
    /// The target's index, kept true as batches succeed (with the source it is read from).
    pub index: Option<(PathBuf, Arc<TargetState>)>,
}

/// Runs batches until the dispatcher closes the channel.
pub async fn shard_task(ctx: ShardCtx, mut rx: mpsc::Receiver<Batch>) {
    while let Some(batch) = rx.recv().await {
        let start = Instant::now();
        let paths: Vec<&Path> = batch.entries.iter().map(|t| t.path.as_ref()).collect();
        let inv = ctx.transport.sync(batch.kind, &paths);
        drop(paths);
        // The index learns what the source held *before* the transfer read it: if the source
        // still shows that at the next start, the target holds at least that version.
        let updates = match (&ctx.index, &batch.seen) {
            (Some(_), Some(seen)) => Some(seen.clone()),
            (Some((source, state)), None) => Some(prestat(source, state, &batch).await),
            (None, _) => None,
        };
        let tag = ctx.index.as_ref().map(|(_, s)| s.tag().to_string());
        let (code, stdout, stderr) = run_process(inv, tag, Keep::Tail).await;
        if code.is_ok() {
            ctx.stats.rsync_spawned.fetch_add(1, Ordering::Relaxed);
            let sent = ctx.transport.run_stats(&stdout);
            tracing::debug!(shard = ctx.shard, paths = batch.entries.len(), kind = ?batch.kind, ?sent, "rsync ran");
            ctx.stats.record_sent(sent);
            if matches!(batch.origin, super::Origin::Pass { .. }) {
                ctx.stats
                    .pass_entries
                    .fetch_add(sent.files_seen, Ordering::Relaxed);
                ctx.stats
                    .pass_bytes
                    .fetch_add(sent.file_bytes, Ordering::Relaxed);
            }
        }
        ctx.stats.record_run(code, start.elapsed());
        let outcome = match code {
            Ok(code) => ctx.transport.outcome(code),
            Err(()) => Outcome::Fatal,
        };
        if let (true, Some((_, state)), Some(updates)) = (outcome.succeeded(), &ctx.index, updates)
        {
            let state = state.clone();
            let _ = tokio::task::spawn_blocking(move || state.apply(&updates)).await;
        }
        let res = BatchResult {
            shard: ctx.shard,
            batch,
            outcome,
            stderr,
            elapsed: start.elapsed(),
        };
        if ctx.results.send(res).await.is_err() {
            break;
        }
    }
}

/// The index updates a batch makes true if it succeeds, read from the source now.
/// Hard-linked names met below the batch's paths are handed to the dispatcher through
/// `state` ([`TargetState::note_links`]).
async fn prestat(source: &Path, state: &Arc<TargetState>, batch: &Batch) -> Vec<IndexUpdate> {
    let depth = match batch.kind {
        BatchKind::Plain => Depth::Entry,
        BatchKind::Shallow => Depth::Children,
        BatchKind::Tree => Depth::Subtree,
    };
    let paths: Vec<PathBuf> = batch.entries.iter().map(|t| t.path.to_path_buf()).collect();
    if depth == Depth::Entry {
        // One lstat per path (microseconds each): not worth a hand-off to another thread.
        return stat::prestat(source, depth, &paths, &mut Vec::new());
    }
    let source = source.to_path_buf();
    let state = state.clone();
    let live = batch.origin == super::Origin::Map;
    tokio::task::spawn_blocking(move || {
        let mut linked = Vec::new();
        let updates = stat::prestat(&source, depth, &paths, &mut linked);
        state.note_links(linked, live);
        updates
    })
    .await
    .unwrap_or_default()
}

/// Most of a process's stderr kept for the log, and of a batch's stdout for its totals.
const TAIL_KEEP: usize = 8192;

/// How much of a process's standard output is kept.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Keep {
    /// The end ([`TAIL_KEEP`] bytes or more): a batch's totals (the operator's `-v` may
    /// print a line per file before them).
    Tail,
    /// All of it: a check's itemized list.
    Whole,
}

/// Runs a check (see [`crate::target::Transport::check`]): like a batch's process, with its
/// standard output kept whole. Returns the exit code, the output and the end of stderr.
pub async fn run_check(
    inv: Invocation,
    tag: Option<String>,
) -> (Result<Option<i32>, ()>, Vec<u8>, String) {
    run_process(inv, tag, Keep::Whole).await
}

/// Reads `pipe` to its end, keeping everything or only the last [`TAIL_KEEP`] bytes or so.
async fn read_pipe(pipe: Option<impl tokio::io::AsyncRead + Unpin>, keep: Keep) -> Vec<u8> {
    let mut buf = Vec::new();
    let Some(mut pipe) = pipe else {
        return buf;
    };
    let mut chunk = [0u8; 4096];
    loop {
        match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if keep == Keep::Tail && buf.len() > 2 * TAIL_KEEP {
                    buf.drain(..buf.len() - TAIL_KEEP);
                }
            }
        }
    }
    buf
}

/// The service manager's environment, kept from rsync.
const SERVICE_VARS: [&str; 6] = [
    "NOTIFY_SOCKET",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
];

async fn run_process(
    inv: Invocation,
    tag: Option<String>,
    keep: Keep,
) -> (Result<Option<i32>, ()>, Vec<u8>, String) {
    let mut cmd = tokio::process::Command::new(&inv.program);
    cmd.args(&inv.args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // Tagged, so that a syncer starting on this state after a crash can find and stop the
    // transfers its predecessor left running (see `state::kill_orphans`).
    if let Some(tag) = &tag {
        cmd.env(crate::state::ORPHAN_TAG, tag);
    }
    // What systemd told syncer is not rsync's to act on (a child notifying the manager, or
    // taking the passed descriptors for its own).
    for var in SERVICE_VARS {
        cmd.env_remove(var);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return (
                Err(()),
                Vec::new(),
                format!("cannot run {}: {e}", inv.program.display()),
            )
        }
    };
    let Some(mut stdin) = child.stdin.take() else {
        return (
            Err(()),
            Vec::new(),
            "the child's pipes were not set up".into(),
        );
    };
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let list = inv.stdin;
    let writer = async move {
        // The process may exit early (target down) and close the pipe: its exit code says so.
        let _ = stdin.write_all(&list).await;
        drop(stdin);
    };
    let reader = read_pipe(stderr, Keep::Tail);
    let output = read_pipe(stdout, keep);
    let (_, err, out) = tokio::join!(writer, reader, output);
    let text = String::from_utf8_lossy(&err).into_owned();
    match child.wait().await {
        Ok(s) => (Ok(s.code()), out, text),
        // Waiting failed: treated as a process killed by a signal (the target may be fine).
        Err(e) => (
            Ok(None),
            out,
            format!("waiting for {}: {e}", inv.program.display()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_from_rsync() {
        #[rustfmt::skip]
        let table: &[(&str, &str)] = &[
            ("rsync: [sender] send_files failed to open \"/s/x\": Permission denied (13)\nrsync error: some files/attrs were not transferred (see previous errors) (code 23) at main.c(1338)\n",
             "rsync: [sender] send_files failed to open \"/s/x\": Permission denied (13)"),
            ("@ERROR: auth failed on module dst\nrsync error: error starting client-server protocol (code 5) at main.c(1850)\n",
             "@ERROR: auth failed on module dst"),
            ("rsync error: timeout in data send/receive (code 30)\n", "rsync error: timeout in data send/receive (code 30)"),
            ("rsync: [receiver] write failed on \"/t/f\": No space left on device (28)\nrsync: [sender] write error: Broken pipe (32)\nrsync error: error in file IO (code 11)\n",
             "rsync: [receiver] write failed on \"/t/f\": No space left on device (28)"),
            ("", "(no message)"),
        ];
        for (stderr, want) in table {
            let r = BatchResult {
                shard: 0,
                batch: Batch {
                    kind: BatchKind::Plain,
                    seq: 0,
                    origin: super::super::Origin::Map,
                    entries: Vec::new(),
                    seen: None,
                },
                outcome: Outcome::Partial,
                stderr: stderr.to_string(),
                elapsed: Duration::ZERO,
            };
            assert_eq!(r.reason(), *want);
        }
    }
}
