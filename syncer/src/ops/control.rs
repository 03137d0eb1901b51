//! The control socket: HTTP/1.1 with JSON bodies over a unix socket (mode 0660, so access is
//! the socket's permissions; `curl --unix-socket` works too), served by one task of the
//! daemon, and the client the `status`, `failures`, `pause`, `resume`, `rescan` and
//! `checkpoint` commands use. What it reports and does goes through [`Pipeline`], which the
//! supervisor implements: this module never reaches into the pipeline itself.
//!
//! Routes (every answer is JSON; errors are `{"error": "..."}` with status 400 or 404):
//! `GET /v1/status`, `GET /v1/failures`, `POST /v1/pause?target=T`, `POST /v1/resume?target=T`,
//! `POST /v1/rescan?path=P`, `POST /v1/checkpoint` (answers its `id`),
//! `GET /v1/checkpoint?id=N`. The metrics listener (`--metrics-listen`, a TCP port) is
//! served here too, with the same HTTP answer and one route, `GET /metrics`
//! ([`super::metrics`] renders it).

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tracing::{debug, warn};

use crate::shutdown::Shutdown;

/// The daemon as `syncer status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    pub uptime_s: u64,
    pub source: SourceStatus,
    pub targets: Vec<TargetStatus>,
    /// Why the last reload (SIGHUP) failed; the configuration before it is still running.
    pub reload_error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SourceStatus {
    pub root: String,
    /// `fanotify`, `ebpf (...)`, `inotify`; `restarting` while it is opened again.
    pub kind: String,
    pub events: u64,
    /// Overflows and other losses, each answered with a rescan.
    pub rescans: u64,
    /// Records the kernel could not deliver.
    pub lost: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetStatus {
    pub name: String,
    /// Its URL or directory, as configured.
    pub url: String,
    /// `initial sync`, `live`, `rescan` (a pass over the tree after a loss or an operator's
    /// `rescan`), `down` (unreachable, probed), `backoff` (it answered but failed: waiting
    /// before the next attempt), `refused` (it turns syncer away: a password, a module, a
    /// key) or `paused`.
    pub state: String,
    /// Paths queued or in flight.
    pub pending: u64,
    /// Age of the oldest change still waiting (none: nothing waits).
    pub oldest_pending_s: Option<f64>,
    /// When a batch last succeeded (seconds since the epoch).
    pub last_synced: Option<f64>,
    /// Paths that keep failing (see `syncer failures`).
    pub failing_paths: u64,
    pub batches: u64,
    pub failed_batches: u64,
    pub paths_sent: u64,
    /// Regular files whose contents rsync sent, and the bytes it put on the wire.
    #[serde(default)]
    pub files_sent: u64,
    #[serde(default)]
    pub bytes_sent: u64,
    pub rsync_runs: u64,
    /// The last failure's reason as rsync gave it (none since the last success).
    pub last_error: Option<String>,
}

/// A path that keeps failing on a target.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailureEntry {
    pub target: String,
    pub path: String,
    pub attempts: u32,
    /// Seconds since the epoch.
    pub first: u64,
    pub last: u64,
    pub reason: String,
}

/// How far a checkpoint is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Checkpoint {
    pub id: u64,
    /// Every target holds everything seen before the checkpoint.
    pub reached: bool,
    /// The source had read everything the kernel queued before it.
    pub source_caught_up: bool,
    pub targets: Vec<CheckpointTarget>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointTarget {
    pub name: String,
    pub reached: bool,
    /// Why not yet (`paused`, `initial sync`, `changes from before it pending`).
    pub waiting_for: Option<String>,
}

/// What the control socket asks of the daemon.
pub trait Pipeline: Send + Sync {
    fn status(&self) -> Status;
    fn failures(&self) -> Vec<FailureEntry>;
    /// Pauses (or resumes) the target named `target` (its name, or its number from 1); the
    /// name.
    fn pause(&self, target: &str, paused: bool) -> Result<String, String>;
    /// Compares `path` (absolute inside the source, or relative to it) against every
    /// target's index and sends what differs.
    fn rescan(&self, path: &str) -> Result<String, String>;
    /// Starts a checkpoint now; its id.
    fn checkpoint(&self) -> u64;
    fn checkpoint_state(&self, id: u64) -> Result<Checkpoint, String>;
    /// The numbers a metrics scrape shows.
    fn metrics(&self) -> super::metrics::Snapshot;
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot create the control socket's directory {dir}: {source}")]
    Dir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the control socket {0} is in use by another syncer; give each its own --control-socket"
    )]
    InUse(PathBuf),
    #[error("cannot listen on the control socket {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot reach syncer at {path} ({source}); is `syncer run` running with this --control-socket?")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("talking to syncer at {path}: {why}")]
    Protocol { path: PathBuf, why: String },
    #[error("{0}")]
    Refused(String),
}

/// A bound control socket; the file is removed when this is dropped.
pub struct Listener {
    inner: UnixListener,
    path: PathBuf,
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds the control socket at `path` (its directory made if missing; a stale socket left by
/// a dead syncer replaced; a live one refused), mode 0660.
pub fn bind(path: &Path) -> Result<Listener, ControlError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| ControlError::Dir {
            dir: dir.to_path_buf(),
            source,
        })?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ControlError::InUse(path.to_path_buf()));
        }
        let _ = std::fs::remove_file(path);
    }
    let bind_err = |source| ControlError::Bind {
        path: path.to_path_buf(),
        source,
    };
    let inner = UnixListener::bind(path).map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(bind_err)?;
    Ok(Listener {
        inner,
        path: path.to_path_buf(),
    })
}

/// Most bytes of a request head.
const HEAD_MAX: usize = 8192;

/// Serves requests until `shutdown`: one at a time per connection, each answered and closed.
pub async fn serve(listener: Listener, pipeline: Arc<dyn Pipeline>, shutdown: Shutdown) {
    loop {
        // Tests kill this task here (`FAILPOINTS=control-serve=1*panic`): the supervisor
        // must start it again.
        fail::fail_point!("control-serve");
        let conn = tokio::select! {
            c = listener.inner.accept() => c,
            _ = shutdown.wait() => return,
        };
        match conn {
            Ok((stream, _)) => {
                let p = pipeline.clone();
                tokio::spawn(async move {
                    let route = move |m: &str, t: &str| {
                        let (code, body) = route(&*p, m, t);
                        (code, JSON, body)
                    };
                    if let Err(e) = answer(stream, route).await {
                        debug!("control connection: {e}");
                    }
                });
            }
            Err(e) => {
                warn!("control socket: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Reads one request head from `stream`, answers it with `route(method, target)` (run off the
/// runtime's threads: answers may scan the maps) and closes.
pub async fn answer<S, R>(mut stream: S, route: R) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    R: FnOnce(&str, &str) -> (u16, &'static str, String) + Send + 'static,
{
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .map_err(|_| std::io::Error::other("request timed out"))??;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > HEAD_MAX {
            break;
        }
    }
    let line = String::from_utf8_lossy(&head)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (method, target) = (method.to_string(), target.to_string());
    let (code, kind, body) = tokio::task::spawn_blocking(move || route(&method, &target))
        .await
        .unwrap_or_else(|e| (500, JSON, error_body(&format!("the handler failed: {e}"))));
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Internal Server Error",
    };
    let response = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// The content type of every control answer.
pub const JSON: &str = "application/json";

fn error_body(why: &str) -> String {
    serde_json::json!({ "error": why }).to_string()
}

fn json<T: Serialize>(v: &T) -> (u16, String) {
    match serde_json::to_string(v) {
        Ok(s) => (200, s),
        Err(e) => (500, error_body(&e.to_string())),
    }
}

/// One request: its status code and body.
pub fn route(p: &dyn Pipeline, method: &str, target: &str) -> (u16, String) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let arg = |name: &str| {
        query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == name).then(|| percent_decode(v))
        })
    };
    let refused = |r: Result<String, String>, key: &str, extra: serde_json::Value| match r {
        Ok(v) => {
            let mut body = serde_json::json!({ key: v });
            if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
                b.extend(e.clone());
            }
            (200, body.to_string())
        }
        Err(e) => (400, error_body(&e)),
    };
    match (method, path) {
        ("GET", "/v1/status") => json(&p.status()),
        ("GET", "/v1/failures") => json(&p.failures()),
        ("POST", "/v1/pause") | ("POST", "/v1/resume") => match arg("target") {
            Some(t) => {
                let pause = path == "/v1/pause";
                refused(
                    p.pause(&t, pause),
                    "target",
                    serde_json::json!({ "paused": pause }),
                )
            }
            None => (400, error_body("which target? (?target=NAME)")),
        },
        ("POST", "/v1/rescan") => match arg("path") {
            Some(path) => refused(p.rescan(&path), "rescan", serde_json::json!({})),
            None => (400, error_body("which path? (?path=P)")),
        },
        ("POST", "/v1/checkpoint") => json(&serde_json::json!({ "id": p.checkpoint() })),
        ("GET", "/v1/checkpoint") => match arg("id").and_then(|i| i.parse().ok()) {
            Some(id) => match p.checkpoint_state(id) {
                Ok(c) => json(&c),
                Err(e) => (404, error_body(&e)),
            },
            None => (400, error_body("which checkpoint? (?id=N)")),
        },
        (
            _,
            "/v1/status" | "/v1/failures" | "/v1/pause" | "/v1/resume" | "/v1/rescan"
            | "/v1/checkpoint",
        ) => (405, error_body(&format!("{method} is not allowed here"))),
        _ => (404, error_body(&format!("no such route: {path}"))),
    }
}

/// `%XX` and `+` decoding of a query value.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `%XX` encoding of everything but unreserved characters.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &c in s.as_bytes() {
        if c.is_ascii_alphanumeric() || b"-._~/".contains(&c) {
            out.push(c as char);
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
    }
    out
}

/// The client side: one request to the daemon at `socket`; the answer's body, parsed.
pub fn request<T: for<'de> Deserialize<'de>>(
    socket: &Path,
    method: &str,
    target: &str,
) -> Result<T, ControlError> {
    let protocol = |why: String| ControlError::Protocol {
        path: socket.to_path_buf(),
        why,
    };
    let mut s = std::os::unix::net::UnixStream::connect(socket).map_err(|source| {
        ControlError::Connect {
            path: socket.to_path_buf(),
            source,
        }
    })?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| protocol(e.to_string()))?;
    write!(
        s,
        "{method} {target} HTTP/1.1\r\nHost: syncer\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| protocol(e.to_string()))?;
    let mut text = String::new();
    s.read_to_string(&mut text)
        .map_err(|e| protocol(e.to_string()))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| protocol("an answer without a body".into()))?;
    let code: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| protocol(format!("a bad status line: {head:?}")))?;
    if code != 200 {
        let why = serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or_else(|| body.to_string());
        return Err(ControlError::Refused(why));
    }
    serde_json::from_str(body).map_err(|e| protocol(format!("{e}: {body}")))
}

/// Binds the metrics listener at `addr` (loopback in the examples: the numbers are not
/// secret, but not everyone's either).
pub async fn bind_metrics(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// Serves `GET /metrics` ([`super::metrics`]) until `stop`, with this module's HTTP answer.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    pipeline: Arc<dyn Pipeline>,
    stop: crate::shutdown::Shutdown,
) {
    loop {
        let conn = tokio::select! {
            c = listener.accept() => c,
            _ = stop.wait() => return,
        };
        match conn {
            Ok((stream, _)) => {
                let p = pipeline.clone();
                tokio::spawn(async move {
                    let route = move |method: &str, target: &str| match (method, target) {
                        ("GET", "/metrics") => (
                            200,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            super::metrics::render(p.metrics()),
                        ),
                        _ => (404, "text/plain", "only GET /metrics here\n".to_string()),
                    };
                    let _ = answer(stream, route).await;
                });
            }
            Err(e) => {
                tracing::warn!("metrics: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_round_trip() {
        for s in ["rsync://host:873/mod", "a b/c%d", "naïve", "x&y=z", ""] {
            assert_eq!(percent_decode(&percent_encode(s)), s, "{s}");
        }
        assert_eq!(percent_decode("a+b%2"), "a b%2");
    }

    struct Fake;
    impl Pipeline for Fake {
        fn status(&self) -> Status {
            Status {
                version: "v".into(),
                pid: 1,
                uptime_s: 2,
                source: SourceStatus {
                    root: "/src".into(),
                    kind: "fanotify".into(),
                    events: 3,
                    rescans: 0,
                    lost: 0,
                },
                targets: vec![],
                reload_error: None,
            }
        }
        fn failures(&self) -> Vec<FailureEntry> {
            vec![]
        }
        fn pause(&self, target: &str, _: bool) -> Result<String, String> {
            match target {
                "t" => Ok("t".into()),
                _ => Err(format!("no target {target}")),
            }
        }
        fn rescan(&self, path: &str) -> Result<String, String> {
            Ok(path.into())
        }
        fn checkpoint(&self) -> u64 {
            7
        }
        fn checkpoint_state(&self, id: u64) -> Result<Checkpoint, String> {
            Err(format!("no checkpoint {id}"))
        }
        fn metrics(&self) -> crate::ops::metrics::Snapshot {
            Default::default()
        }
    }

    #[test]
    fn routes() {
        let cases = [
            ("GET", "/v1/status", 200, "\"kind\":\"fanotify\""),
            ("GET", "/v1/failures", 200, "[]"),
            ("POST", "/v1/pause?target=t", 200, "\"paused\":true"),
            ("POST", "/v1/resume?target=t", 200, "\"paused\":false"),
            ("POST", "/v1/pause?target=u", 400, "no target u"),
            ("POST", "/v1/pause", 400, "which target"),
            ("POST", "/v1/rescan?path=a%20b", 200, "\"rescan\":\"a b\""),
            ("POST", "/v1/checkpoint", 200, "\"id\":7"),
            ("GET", "/v1/checkpoint?id=9", 404, "no checkpoint 9"),
            ("GET", "/v1/pause", 405, "not allowed"),
            ("GET", "/nope", 404, "no such route"),
        ];
        for (method, target, code, has) in cases {
            let (c, body) = route(&Fake, method, target);
            assert_eq!(c, code, "{method} {target}: {body}");
            assert!(body.contains(has), "{method} {target}: {body}");
        }
    }
}
