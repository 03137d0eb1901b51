//! Replication targets: the three accepted forms (local directory, rsync daemon URL, ssh
//! `[user@]host:path`), and the [`Transport`] seam: how a request of the transfer layer ("make
//! these paths on the target as they are in the source", later "rename this") becomes one
//! process to run. The transfer layer runs it; nothing here spawns anything. Today every form
//! is served by rsync ([`rsync::Rsync`]); a transport that can rename on the target (ssh, local)
//! answers [`Transport::rename`].

pub mod rsync;

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use self::rsync::{BatchKind, Outcome, RsyncOptions, RunStats};

/// A target that cannot be parsed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TargetError(pub String);

/// Where a tree is replicated to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetKind {
    /// A directory on this machine.
    Local(PathBuf),
    /// `rsync://[user@]host[:port]/module[/path]`, served by an rsync daemon.
    Daemon { url: String },
    /// `[user@]host:path`, reached through rsync over ssh.
    Ssh { spec: String },
}

/// One target as configured, with the options that apply to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub kind: TargetKind,
    /// The text the operator wrote, for messages.
    pub display: String,
    /// `--password-file` for rsync daemon targets.
    pub password_file: Option<PathBuf>,
    /// What operators and metrics call it: the config's `name`, else a short name from the
    /// URL (`host/module`, `host:dir`, the directory's name).
    pub name: String,
    /// rsync processes for this target (else the global `shards`).
    pub shards: Option<usize>,
    /// Its coalescing delay (else the global `delay_ms`).
    pub delay: Option<std::time::Duration>,
    /// rsync arguments for this target alone, after the global `rsync_args`.
    pub rsync_args: Vec<String>,
    /// ssh's arguments, for an ssh target (see [`rsync::ssh_command`]).
    pub ssh_options: Vec<String>,
}

impl Target {
    /// Parses a target as given on the command line or in the config file.
    pub fn parse(text: &str, password_file: Option<&Path>) -> Result<Target, TargetError> {
        let invalid = TargetError;
        if text.is_empty() {
            return Err(invalid("empty target".into()));
        }
        let kind = if let Some(rest) = text.strip_prefix("rsync://") {
            let (hostport, module) = rest
                .split_once('/')
                .ok_or_else(|| invalid(format!("{text}: rsync:// target needs a module")))?;
            let host = hostport.rsplit('@').next().unwrap_or_default();
            if host.is_empty() || module.trim_matches('/').is_empty() {
                return Err(invalid(format!(
                    "{text}: expected rsync://[user@]host[:port]/module[/path]"
                )));
            }
            if let Some((_, port)) = host.rsplit_once(':') {
                if !host.starts_with('[') && port.parse::<u16>().is_err() {
                    return Err(invalid(format!("{text}: bad port {port:?}")));
                }
            }
            TargetKind::Daemon {
                url: format!("rsync://{}/{}/", hostport, module.trim_end_matches('/')),
            }
        } else if !text.starts_with('/') && !text.starts_with('.') && is_ssh_spec(text) {
            let (host, path) = text.split_once(':').expect("checked by is_ssh_spec");
            if host.rsplit('@').next().unwrap_or_default().is_empty() {
                return Err(invalid(format!("{text}: expected [user@]host:path")));
            }
            let path = if path.is_empty() { "." } else { path };
            TargetKind::Ssh {
                spec: format!("{host}:{}/", path.trim_end_matches('/')),
            }
        } else {
            TargetKind::Local(PathBuf::from(text))
        };
        // rsync refuses --password-file without a daemon connection; keep it off the others.
        let password_file = password_file
            .filter(|_| matches!(kind, TargetKind::Daemon { .. }))
            .map(Path::to_path_buf);
        Ok(Target {
            kind,
            display: text.to_string(),
            password_file,
            name: short_name(text),
            shards: None,
            delay: None,
            rsync_args: Vec::new(),
            ssh_options: Vec::new(),
        })
    }

    /// The destination argument for rsync, always ending in `/`.
    pub fn rsync_dest(&self) -> String {
        match &self.kind {
            TargetKind::Local(p) => {
                let mut s = p.to_string_lossy().into_owned();
                if !s.ends_with('/') {
                    s.push('/');
                }
                s
            }
            TargetKind::Daemon { url } => url.clone(),
            TargetKind::Ssh { spec } => spec.clone(),
        }
    }

    /// The host and port to probe: an rsync daemon's (873 by default), ssh's (22).
    pub fn probe_addr(&self) -> Option<(String, u16)> {
        let (hostport, default) = match &self.kind {
            TargetKind::Local(_) => return None,
            TargetKind::Daemon { url } => {
                let rest = url.strip_prefix("rsync://").unwrap_or(url);
                (rest.split('/').next().unwrap_or(rest), 873)
            }
            TargetKind::Ssh { spec } => (spec.split(':').next().unwrap_or(spec), 22),
        };
        let host = hostport.rsplit('@').next().unwrap_or(hostport);
        if let Some(inner) = host.strip_prefix('[') {
            // [v6]:port or [v6]
            let (addr, rest) = inner.split_once(']')?;
            let port = rest.strip_prefix(':').and_then(|p| p.parse().ok());
            return Some((addr.to_string(), port.unwrap_or(default)));
        }
        match host.rsplit_once(':') {
            Some((h, p)) if matches!(self.kind, TargetKind::Daemon { .. }) => {
                Some((h.to_string(), p.parse().ok()?))
            }
            _ => Some((host.to_string(), default)),
        }
    }

    pub fn is_daemon(&self) -> bool {
        matches!(self.kind, TargetKind::Daemon { .. })
    }
}

/// One process to run for a request: the program, its arguments, what goes to its stdin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub stdin: Vec<u8>,
}

/// How the transfer layer's requests reach one target.
pub trait Transport: Send + Sync + fmt::Debug {
    /// The process that makes `paths` (relative to the source root; the root is the empty
    /// path) on the target as they are in the source when it runs, `kind` saying how deep.
    fn sync(&self, kind: BatchKind, paths: &[&Path]) -> Invocation;

    /// What an exit status of a [`Transport::sync`] process means.
    fn outcome(&self, code: Option<i32>) -> Outcome;

    /// The process that renames `from` to `to` on the target, where this transport can (none
    /// can yet: a rename travels as a deletion and a transfer of the new name).
    fn rename(&self, _from: &Path, _to: &Path) -> Option<Invocation> {
        None
    }

    /// Where a TCP connect tells cheaply whether the target is reachable again (the daemon's
    /// port, ssh's), if anywhere.
    fn probe_addr(&self) -> Option<(String, u16)> {
        None
    }

    /// The process that lists, without changing anything, what differs between the source
    /// and the target, contents compared (the periodic verify's deep check), if this transport
    /// has one. Its standard output goes to [`Transport::drift`].
    fn check(&self) -> Option<Invocation> {
        None
    }

    /// The process that reaches the target and changes nothing (a listing of its top
    /// directory), for the start's check that it takes syncer at all, if this transport has
    /// one.
    fn reach(&self) -> Option<Invocation> {
        None
    }

    /// The changes that make the target match the source, read from a check's output.
    fn drift(&self, _out: &[u8]) -> Vec<crate::change::Change> {
        Vec::new()
    }

    /// What a [`Transport::sync`] process reported of itself, read from the end of its
    /// standard output (zero where it said nothing).
    fn run_stats(&self, _out: &[u8]) -> RunStats {
        RunStats::default()
    }
}

/// The transport for `target`, replicating `source`.
pub fn transport(source: &Path, target: &Target, opts: &RsyncOptions) -> Arc<dyn Transport> {
    let mut opts = opts.clone();
    opts.extra_args.extend(target.rsync_args.iter().cloned());
    Arc::new(rsync::Rsync::new(source, target, &opts))
}

/// A short name for a target, from what identifies it (`host/module`, `host:dir`, the
/// directory's name): for status and labels, where a URL (which may carry a user) is too
/// much.
pub fn short_name(id: &str) -> String {
    let trimmed = id.trim_end_matches('/');
    if let Some(rest) = trimmed.strip_prefix("rsync://") {
        let mut parts = rest.splitn(3, '/');
        let host = parts.next().unwrap_or_default();
        let host = host.rsplit('@').next().unwrap_or(host);
        let host = host.split(':').next().unwrap_or(host);
        let module = parts.next().unwrap_or_default();
        return format!("{host}/{module}");
    }
    if let Some((host, path)) = trimmed.split_once(':').filter(|(h, _)| !h.contains('/')) {
        let host = host.rsplit('@').next().unwrap_or(host);
        let dir = path.rsplit('/').next().unwrap_or(path);
        return format!("{host}:{dir}");
    }
    trimmed.rsplit('/').next().unwrap_or(trimmed).to_string()
}

/// `host:path` where the part before the first `:` has no `/` (rsync's own rule).
fn is_ssh_spec(text: &str) -> bool {
    match text.split_once(':') {
        Some((host, _)) => !host.is_empty() && !host.contains('/'),
        None => false,
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_forms() {
        let cases: &[(&str, &str)] = &[
            ("/backup/data", "/backup/data/"),
            ("./rel", "./rel/"),
            ("rsync://127.0.0.1:8730/mod", "rsync://127.0.0.1:8730/mod/"),
            ("rsync://u@host/mod/sub/", "rsync://u@host/mod/sub/"),
            ("backup@host:/srv/copy", "backup@host:/srv/copy/"),
            ("host:", "host:./"),
            ("dir/with:colon", "dir/with:colon/"),
        ];
        for (input, dest) in cases {
            let t = Target::parse(input, None).unwrap();
            assert_eq!(t.rsync_dest(), *dest, "{input}");
        }
    }

    #[test]
    fn rejects_bad_targets() {
        for bad in [
            "",
            "rsync://host",
            "rsync://host/",
            "rsync://host:xx/mod",
            "@:x",
        ] {
            assert!(
                Target::parse(bad, None).is_err(),
                "{bad} should be rejected"
            );
        }
    }

    #[test]
    fn probe_addresses() {
        #[rustfmt::skip]
        let table: &[(&str, Option<(&str, u16)>)] = &[
            ("rsync://127.0.0.1:8730/mod", Some(("127.0.0.1", 8730))),
            ("rsync://u@backup/mod/sub", Some(("backup", 873))),
            ("rsync://[::1]:9000/m", Some(("::1", 9000))),
            ("backup@host:/srv/copy", Some(("host", 22))),
            ("/local/dir", None),
        ];
        for (text, want) in table {
            let got = Target::parse(text, None).unwrap().probe_addr();
            assert_eq!(got, want.map(|(h, p)| (h.to_string(), p)), "{text}");
        }
    }

    #[test]
    fn password_file_only_for_daemons() {
        let pw = Path::new("/etc/pw");
        assert!(Target::parse("rsync://h/m", Some(pw))
            .unwrap()
            .password_file
            .is_some());
        assert!(Target::parse("/x", Some(pw))
            .unwrap()
            .password_file
            .is_none());
    }
}
