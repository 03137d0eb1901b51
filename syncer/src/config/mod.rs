//! Configuration: the plain structs the core runs on, built once from an optional TOML file and
//! the command line (the command line wins). Validation happens here, so that the core never
//! sees an impossible setting, and every rejection names the flag or the config line.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::source::{EbpfHooks, QueueMode, SourceKind};
use crate::target::{RsyncOptions, Target, TargetKind};

/// A configuration or command-line problem: exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}, line {line}: {msg}")]
    Parse {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    #[error("{flag}: {msg}")]
    Invalid { flag: &'static str, msg: String },
}

/// Everything `syncer run` and `syncer sync` need, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// Canonical absolute path of the replicated tree.
    pub source: PathBuf,
    pub targets: Vec<Target>,
    pub source_kind: SourceKind,
    pub initial_sync: bool,
    /// Coalescing window: a path is transferred once it has been quiet this long.
    pub delay: Duration,
    /// rsync processes per target running at once.
    pub shards: usize,
    pub rsync: RsyncOptions,
    /// Most paths in one rsync call.
    pub batch_max: usize,
    pub fanotify_queue: QueueMode,
    pub ebpf_hooks: EbpfHooks,
    /// Size of the eBPF source's ring buffer in bytes (a power of two, at least one page).
    pub ebpf_ring_bytes: u32,
    /// How long shutdown waits for queued changes to drain.
    pub drain_timeout: Duration,
    /// Where the journal and the index live (one directory per source).
    pub state_dir: PathBuf,
    /// Forget the state: full pass against every target, index rebuilt.
    pub full_resync: bool,
    /// Every this long, the source is walked against each target's index and what differs
    /// is replicated (off by default).
    pub verify_interval: Option<Duration>,
    /// With the periodic verify: also compare contents with the target (an rsync dry run with
    /// `--checksum` over the whole tree, which reads every file on both hosts).
    pub verify_checksum: bool,
    /// Where `syncer status` and the other client commands reach the daemon.
    pub control_socket: PathBuf,
    /// Where Prometheus metrics are served (`/metrics`); off when `None`.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// Settings as read from the command line or the config file, before merging and validation.
/// Every field is optional; `None` means "not given here".
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub source: Option<PathBuf>,
    pub targets: Option<Vec<String>>,
    /// `[[target]]` tables: one target each, with its own settings.
    #[serde(rename = "target")]
    pub target_tables: Option<Vec<TargetTable>>,
    pub source_kind: Option<SourceKind>,
    pub initial_sync: Option<bool>,
    pub delay_ms: Option<u64>,
    pub shards: Option<usize>,
    pub password_file: Option<PathBuf>,
    pub rsync_path: Option<PathBuf>,
    pub rsync_args: Option<Vec<String>>,
    pub batch_max: Option<usize>,
    pub fanotify_queue: Option<QueueMode>,
    pub ebpf_hooks: Option<EbpfHooks>,
    pub ebpf_ring_kib: Option<u32>,
    pub drain_timeout_s: Option<u64>,
    pub state_dir: Option<PathBuf>,
    pub verify_interval_s: Option<u64>,
    pub verify_checksum: Option<bool>,
    pub control_socket: Option<PathBuf>,
    pub metrics_listen: Option<String>,
    /// Command line only.
    #[serde(skip)]
    pub full_resync: Option<bool>,
}

/// One `[[target]]` table of the config file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TargetTable {
    /// What status, logs and metrics call it (default: a short name from the URL).
    pub name: Option<String>,
    /// A local directory, `rsync://[user@]host[:port]/module[/path]` or `[user@]host:path`.
    pub url: String,
    pub shards: Option<usize>,
    pub delay_ms: Option<u64>,
    pub password_file: Option<PathBuf>,
    /// After the global `rsync_args`.
    pub rsync_args: Option<Vec<String>>,
    /// ssh's arguments for an ssh target (e.g. `["-p", "2222", "-i", "/etc/syncer/id"]`),
    /// after syncer's own (`-o BatchMode=yes -o ConnectTimeout=10`).
    pub ssh_options: Option<Vec<String>>,
}

pub const DEFAULT_DELAY: Duration = Duration::from_millis(50);

impl Settings {
    /// Reads a TOML config file.
    pub fn from_file(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Settings::from_toml(&text, path)
    }

    /// Parses TOML text; errors name `path` and the line.
    pub fn from_toml(text: &str, path: &Path) -> Result<Settings, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
                .unwrap_or(1);
            ConfigError::Parse {
                path: path.to_path_buf(),
                line,
                msg: e.message().to_string(),
            }
        })
    }

    /// Fills every field not set here from `lower` (the command line over the config file).
    pub fn over(self, lower: Settings) -> Settings {
        Settings {
            source: self.source.or(lower.source),
            // Targets from the command line replace the file's, tables and all.
            target_tables: if self.targets.is_some() {
                None
            } else {
                self.target_tables.or(lower.target_tables)
            },
            targets: self.targets.or(lower.targets),
            source_kind: self.source_kind.or(lower.source_kind),
            initial_sync: self.initial_sync.or(lower.initial_sync),
            delay_ms: self.delay_ms.or(lower.delay_ms),
            shards: self.shards.or(lower.shards),
            password_file: self.password_file.or(lower.password_file),
            rsync_path: self.rsync_path.or(lower.rsync_path),
            rsync_args: self.rsync_args.or(lower.rsync_args),
            batch_max: self.batch_max.or(lower.batch_max),
            fanotify_queue: self.fanotify_queue.or(lower.fanotify_queue),
            ebpf_hooks: self.ebpf_hooks.or(lower.ebpf_hooks),
            ebpf_ring_kib: self.ebpf_ring_kib.or(lower.ebpf_ring_kib),
            drain_timeout_s: self.drain_timeout_s.or(lower.drain_timeout_s),
            state_dir: self.state_dir.or(lower.state_dir),
            verify_interval_s: self.verify_interval_s.or(lower.verify_interval_s),
            verify_checksum: self.verify_checksum.or(lower.verify_checksum),
            control_socket: self.control_socket.or(lower.control_socket),
            metrics_listen: self.metrics_listen.or(lower.metrics_listen),
            full_resync: self.full_resync.or(lower.full_resync),
        }
    }

    /// Validates and resolves the settings into a [`Config`].
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let source = valid_source(self.source.as_deref())?;
        let targets =
            match (&self.targets, &self.target_tables) {
                (Some(_), Some(_)) => return Err(ConfigError::Invalid {
                    flag: "targets",
                    msg:
                        "give targets either as `targets = [...]` or as [[target]] tables, not both"
                            .into(),
                }),
                (_, Some(tables)) => table_targets(&source, tables, self.password_file.as_deref())?,
                (t, None) => {
                    let mut targets = valid_targets(
                        &source,
                        t.as_deref().unwrap_or_default(),
                        self.password_file.as_deref(),
                    )?;
                    // Short names made unique: `data`, `data-2`.
                    for i in 0..targets.len() {
                        let base = targets[i].name.clone();
                        let mut n = 2;
                        while targets[..i].iter().any(|o| o.name == targets[i].name) {
                            targets[i].name = format!("{base}-{n}");
                            n += 1;
                        }
                    }
                    targets
                }
            };
        let state_dir = valid_state_dir(self.state_dir, &source)?;
        let invalid = |flag, msg: String| Err(ConfigError::Invalid { flag, msg });
        let delay =
            Duration::from_millis(self.delay_ms.unwrap_or(DEFAULT_DELAY.as_millis() as u64));
        if delay > Duration::from_secs(3600) {
            return invalid("--delay", "more than an hour; give milliseconds".into());
        }
        let shards = self.shards.unwrap_or_else(default_shards);
        if shards == 0 || shards > 256 {
            return invalid("--shards", format!("{shards} is out of range 1..=256"));
        }
        let batch_max = self.batch_max.unwrap_or(2000);
        if batch_max == 0 {
            return invalid("batch_max", "must be at least 1".into());
        }
        let ring_kib = self.ebpf_ring_kib.unwrap_or(8192);
        if !(4..=1 << 20).contains(&ring_kib) || !ring_kib.is_power_of_two() {
            return invalid(
                "ebpf_ring_kib",
                format!("{ring_kib} must be a power of two from 4 to 1048576"),
            );
        }
        let verify_interval = match self.verify_interval_s {
            None | Some(0) => None,
            Some(s) if s < 10 => {
                return invalid(
                    "verify_interval_s",
                    format!("{s} s: at least 10 s, or 0 for off"),
                )
            }
            Some(s) => Some(Duration::from_secs(s)),
        };
        let verify_checksum = self.verify_checksum.unwrap_or(false);
        if verify_checksum && verify_interval.is_none() {
            return invalid(
                "verify_checksum",
                "is part of the periodic verify: set verify_interval_s too".into(),
            );
        }
        let metrics_listen = match &self.metrics_listen {
            None => None,
            Some(a) => Some(a.parse().map_err(|e| ConfigError::Invalid {
                flag: "--metrics-listen (metrics_listen)",
                msg: format!("{a:?} is not ADDR:PORT ({e}); e.g. 127.0.0.1:9725"),
            })?),
        };
        Ok(Config {
            metrics_listen,
            source,
            targets,
            source_kind: self.source_kind.unwrap_or(SourceKind::Auto),
            initial_sync: self.initial_sync.unwrap_or(true),
            delay,
            shards,
            rsync: RsyncOptions {
                program: self.rsync_path.unwrap_or_else(|| PathBuf::from("rsync")),
                extra_args: self.rsync_args.unwrap_or_default(),
                io_timeout_s: 120,
            },
            batch_max,
            fanotify_queue: self.fanotify_queue.unwrap_or(QueueMode::Unlimited),
            ebpf_hooks: self.ebpf_hooks.unwrap_or(EbpfHooks::Auto),
            ebpf_ring_bytes: ring_kib * 1024,
            drain_timeout: Duration::from_secs(self.drain_timeout_s.unwrap_or(60)),
            state_dir,
            full_resync: self.full_resync.unwrap_or(false),
            verify_interval,
            verify_checksum,
            control_socket: self
                .control_socket
                .unwrap_or_else(|| PathBuf::from(DEFAULT_CONTROL_SOCKET)),
        })
    }
}

/// Where the control socket is by default (systemd's `RuntimeDirectory=syncer`).
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/syncer/control.sock";

/// Where state lives by default (systemd's `StateDirectory=syncer`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/syncer";

/// The state directory: absolute, and not inside the source (its writes would be replicated).
fn valid_state_dir(dir: Option<PathBuf>, source: &Path) -> Result<PathBuf, ConfigError> {
    let dir = dir.unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
    let invalid = |msg| ConfigError::Invalid {
        flag: "--state-dir",
        msg,
    };
    let abs = if dir.is_absolute() {
        dir
    } else {
        std::env::current_dir()
            .map_err(|e| invalid(format!("{}: {e}", dir.display())))?
            .join(dir)
    };
    if abs.starts_with(source) {
        return Err(invalid(format!(
            "{} is inside the source {}: its writes would be replicated",
            abs.display(),
            source.display()
        )));
    }
    Ok(abs)
}

/// The source directory, canonical.
fn valid_source(source: Option<&Path>) -> Result<PathBuf, ConfigError> {
    let invalid = |msg| ConfigError::Invalid {
        flag: "--source",
        msg,
    };
    let source = source.ok_or_else(|| {
        invalid("no source directory given (use --source DIR or `source` in the config)".into())
    })?;
    let canonical =
        std::fs::canonicalize(source).map_err(|e| invalid(format!("{}: {e}", source.display())))?;
    if !canonical.is_dir() {
        return Err(invalid(format!(
            "{} is not a directory",
            canonical.display()
        )));
    }
    Ok(canonical)
}

/// The targets, parsed; local ones must not overlap the source.
fn valid_targets(
    source: &Path,
    texts: &[String],
    password_file: Option<&Path>,
) -> Result<Vec<Target>, ConfigError> {
    if texts.is_empty() {
        return Err(ConfigError::Invalid {
            flag: "--target",
            msg: "at least one target is needed".into(),
        });
    }
    if let Some(pw) = password_file {
        check_password_file(pw, nix::unistd::geteuid().is_root())?;
    }
    texts
        .iter()
        .map(|text| {
            let target = Target::parse(text, password_file).map_err(|e| ConfigError::Invalid {
                flag: "--target",
                msg: e.0,
            })?;
            if let TargetKind::Local(dir) = &target.kind {
                check_local_target(source, dir)?;
            }
            Ok(target)
        })
        .collect()
}

/// What rsync itself would refuse in a password file, found at start rather than at the
/// first batch: a file it cannot read, one others can read (rsync: "password file must not
/// be other-accessible"), and, run as root, one root does not own.
fn check_password_file(pw: &Path, as_root: bool) -> Result<(), ConfigError> {
    use std::os::unix::fs::MetadataExt;
    let invalid = |msg| ConfigError::Invalid {
        flag: "--password-file (password_file)",
        msg,
    };
    let meta = std::fs::metadata(pw).map_err(|e| invalid(format!("{}: {e}", pw.display())))?;
    if !meta.is_file() {
        return Err(invalid(format!("{} is not a file", pw.display())));
    }
    if let Err(e) = std::fs::File::open(pw) {
        return Err(invalid(format!("{} cannot be read: {e}", pw.display())));
    }
    if meta.mode() & 0o006 != 0 {
        return Err(invalid(format!(
            "{} can be read by others (mode {:o}), which rsync refuses: chmod 600 {}",
            pw.display(),
            meta.mode() & 0o777,
            pw.display()
        )));
    }
    if as_root && meta.uid() != 0 {
        return Err(invalid(format!(
            "{} is owned by uid {}, and rsync run as root wants it owned by root: chown root {}",
            pw.display(),
            meta.uid(),
            pw.display()
        )));
    }
    Ok(())
}

/// The targets of `[[target]]` tables, each with its settings; errors name the table
/// (`target[2].url`) and key.
fn table_targets(
    source: &Path,
    tables: &[TargetTable],
    password_file: Option<&Path>,
) -> Result<Vec<Target>, ConfigError> {
    let mut out: Vec<Target> = Vec::with_capacity(tables.len());
    for (i, t) in tables.iter().enumerate() {
        let key = |k: &str| format!("#{} ({}) {k}", i + 1, t.name.as_deref().unwrap_or(&t.url));
        let invalid = |k: &str, msg: String| ConfigError::Invalid {
            flag: "[[target]]",
            msg: format!("{}: {msg}", key(k)),
        };
        let pw = t.password_file.as_deref().or(password_file);
        if let Some(pw) = t.password_file.as_deref() {
            check_password_file(pw, nix::unistd::geteuid().is_root())
                .map_err(|e| invalid("password_file", e.to_string()))?;
        }
        let mut target = valid_targets(source, std::slice::from_ref(&t.url), pw)
            .map_err(|e| invalid("url", e.to_string()))?
            .remove(0);
        if let Some(name) = &t.name {
            if name.is_empty() || name.chars().any(|c| c.is_control()) {
                return Err(invalid("name", format!("{name:?} is not a usable name")));
            }
            target.name = name.clone();
        }
        if out.iter().any(|o| o.display == target.display) {
            return Err(invalid("url", "is another target's too".into()));
        }
        if out.iter().any(|o| o.name == target.name) {
            return Err(invalid(
                "name",
                format!(
                    "{:?} names another target too; give each its own `name`",
                    target.name
                ),
            ));
        }
        if let Some(n) = t.shards {
            if n == 0 || n > 256 {
                return Err(invalid("shards", format!("{n} is out of range 1..=256")));
            }
        }
        target.shards = t.shards;
        if let Some(ms) = t.delay_ms {
            if ms > 3_600_000 {
                return Err(invalid(
                    "delay_ms",
                    "more than an hour; give milliseconds".into(),
                ));
            }
            target.delay = Some(Duration::from_millis(ms));
        }
        target.rsync_args = t.rsync_args.clone().unwrap_or_default();
        if let Some(opts) = &t.ssh_options {
            if !matches!(target.kind, crate::target::TargetKind::Ssh { .. }) {
                return Err(invalid(
                    "ssh_options",
                    "only an ssh target ([user@]host:path) takes ssh options".into(),
                ));
            }
            if let Some(bad) = opts.iter().find(|o| o.contains('\'') && o.contains('"')) {
                return Err(invalid(
                    "ssh_options",
                    format!("{bad:?}: rsync cannot pass an argument with both kinds of quote"),
                ));
            }
            target.ssh_options = opts.clone();
        }
        out.push(target);
    }
    if out.is_empty() {
        return Err(ConfigError::Invalid {
            flag: "[[target]]",
            msg: "at least one target is needed".into(),
        });
    }
    Ok(out)
}

/// rsync waits on the network far more than on the CPU, so a few processes per core pay off.
pub fn default_shards() -> usize {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    (cpus * 2).clamp(2, 16)
}

/// A local target must not overlap the source, or syncer would copy its own output.
fn check_local_target(source: &Path, dir: &Path) -> Result<(), ConfigError> {
    let abs = if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(dir))
            .unwrap_or_else(|_| dir.to_path_buf())
    };
    // The target may not exist yet: canonicalize its closest existing ancestor.
    let mut probe = abs.as_path();
    let mut rest = Vec::new();
    let resolved = loop {
        match std::fs::canonicalize(probe) {
            Ok(p) => break rest.iter().rev().fold(p, |acc: PathBuf, c| acc.join(c)),
            Err(_) => match (probe.parent(), probe.file_name()) {
                (Some(parent), Some(name)) => {
                    rest.push(name.to_os_string());
                    probe = parent;
                }
                _ => break abs.clone(),
            },
        }
    };
    if resolved.starts_with(source) || source.starts_with(&resolved) {
        return Err(ConfigError::Invalid {
            flag: "--target",
            msg: format!(
                "{} overlaps the source {}: a target must lie outside the source tree and not contain it",
                dir.display(),
                source.display()
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_errors_name_the_line() {
        let text = "source = \"/x\"\n\ndelay_ms = \"soon\"\n";
        let err = Settings::from_toml(text, Path::new("/etc/syncer.toml")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/etc/syncer.toml, line 3"), "{msg}");
    }

    #[test]
    fn password_files_rsync_would_refuse() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "secret\n").unwrap();
        let me_root = nix::unistd::geteuid().is_root();
        // (mode, checked as root, what the message says; "" = accepted)
        let cases = [
            (0o600, false, ""),
            (0o640, false, ""),
            (0o604, false, "can be read by others (mode 604)"),
            (0o644, false, "chmod 600"),
        ];
        for (mode, as_root, want) in cases {
            std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(mode)).unwrap();
            let got = check_password_file(&pw, as_root);
            match want {
                "" => assert!(got.is_ok(), "{mode:o}: {got:?}"),
                w => {
                    let msg = got.expect_err("refused").to_string();
                    assert!(
                        msg.contains(w) && msg.contains("password_file"),
                        "{mode:o}: {msg}"
                    );
                }
            }
        }
        let missing = check_password_file(&dir.path().join("none"), false).unwrap_err();
        assert!(missing.to_string().contains("No such file"), "{missing}");
        // Owned by whoever runs the test: as root it is root's, else refused for root.
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(check_password_file(&pw, true).is_ok(), me_root);
    }

    #[test]
    fn target_tables() {
        let src = tempfile::tempdir().unwrap();
        let base = format!("source = {:?}\n", src.path().display().to_string());
        let config = |text: &str| {
            Settings::from_toml(&format!("{base}{text}"), Path::new("/etc/syncer/s.toml"))
                .and_then(Settings::into_config)
        };
        let c = config(
            "[[target]]\nname = \"primary\"\nurl = \"rsync://b1.example/export\"\nshards = 3\ndelay_ms = 200\nrsync_args = [\"-H\"]\n\
             [[target]]\nurl = \"/mnt/copy\"\n\
             [[target]]\nurl = \"backup@b2.example:/srv/copy\"\nssh_options = [\"-p\", \"2222\"]\n",
        )
        .unwrap();
        let t = &c.targets;
        assert_eq!(
            (t[0].name.as_str(), t[0].shards, t[0].delay),
            ("primary", Some(3), Some(Duration::from_millis(200)))
        );
        assert_eq!(t[0].rsync_args, ["-H"]);
        assert_eq!(
            (t[1].name.as_str(), t[1].shards, t[1].delay),
            ("copy", None, None)
        );
        assert_eq!(t[2].ssh_options, ["-p", "2222"]);
        // The flat form names by the URL, made unique.
        let c =
            config("targets = [\"/a/data\", \"/b/data/\", \"rsync://u@h:873/m/sub\"]\n").unwrap();
        let names: Vec<&str> = c.targets.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["data", "data-2", "h/m"]);
        // Mistakes, named with their table and key (or the file and line).
        let cases = [
            ("targets = [\"/x\"]\n[[target]]\nurl = \"/y\"\n", "not both"),
            (
                "[[target]]\nurl = \"/y\"\nshards = 0\n",
                "#1 (/y) shards: 0 is out of range",
            ),
            (
                "[[target]]\nname = \"a\"\nurl = \"/y\"\n[[target]]\nname = \"a\"\nurl = \"/z\"\n",
                "#2 (a) name: \"a\" names another target",
            ),
            (
                "[[target]]\nurl = \"/y\"\n[[target]]\nurl = \"/y\"\n",
                "#2 (/y) url: is another target's",
            ),
            ("[[target]]\nurl = \"rsync://h/\"\n", "#1 (rsync://h/) url"),
            ("[[target]]\nurl = \"/y\"\nshard = 2\n", "s.toml, line 4"),
        ];
        for (text, want) in cases {
            let err = config(text).expect_err(text).to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = Settings::from_toml("sauce = 1\n", Path::new("c.toml")).unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
    }

    #[test]
    fn command_line_wins_over_file() {
        let file = Settings {
            delay_ms: Some(500),
            shards: Some(3),
            ..Settings::default()
        };
        let cli = Settings {
            delay_ms: Some(10),
            ..Settings::default()
        };
        let merged = cli.over(file);
        assert_eq!(merged.delay_ms, Some(10));
        assert_eq!(merged.shards, Some(3));
    }

    #[test]
    fn validates_source_and_targets() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir(&src).unwrap();
        let base = |targets: Vec<String>| Settings {
            source: Some(src.clone()),
            targets: Some(targets),
            ..Settings::default()
        };
        let ok = base(vec![dir.path().join("dst").display().to_string()]);
        assert!(ok.into_config().is_ok());
        let inside = base(vec![src.join("copy").display().to_string()]);
        assert!(inside
            .into_config()
            .unwrap_err()
            .to_string()
            .contains("overlaps"));
        let none = base(vec![]);
        assert!(none.into_config().is_err());
        let missing = Settings {
            source: Some(dir.path().join("nope")),
            ..base(vec!["/tmp/x".into()])
        };
        let msg = missing.into_config().unwrap_err().to_string();
        assert!(msg.contains("--source") && msg.contains("nope"), "{msg}");
    }

    #[test]
    fn verify_settings() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir(&src).unwrap();
        let with = |interval: Option<u64>, checksum: Option<bool>| Settings {
            source: Some(src.clone()),
            targets: Some(vec![dir.path().join("dst").display().to_string()]),
            verify_interval_s: interval,
            verify_checksum: checksum,
            ..Settings::default()
        };
        // (interval, checksum) -> Ok((period, checksum)) or the key the error names.
        type Want = Result<(Option<u64>, bool), &'static str>;
        #[rustfmt::skip]
        let table: &[(Option<u64>, Option<bool>, Want)] = &[
            (None, None, Ok((None, false))),
            (Some(0), None, Ok((None, false))),
            (Some(3600), None, Ok((Some(3600), false))),
            (Some(3600), Some(true), Ok((Some(3600), true))),
            (Some(5), None, Err("verify_interval_s")),
            (None, Some(true), Err("verify_checksum")),
            (Some(0), Some(true), Err("verify_checksum")),
            (None, Some(false), Ok((None, false))),
        ];
        for (interval, checksum, want) in table {
            let got = with(*interval, *checksum)
                .into_config()
                .map(|c| (c.verify_interval.map(|d| d.as_secs()), c.verify_checksum))
                .map_err(|e| e.to_string());
            match (want, &got) {
                (Ok(w), Ok(g)) => assert_eq!(w, g, "{interval:?} {checksum:?}"),
                (Err(key), Err(msg)) => {
                    assert!(msg.starts_with(key), "{interval:?} {checksum:?}: {msg}")
                }
                _ => panic!("{interval:?} {checksum:?}: {got:?}, want {want:?}"),
            }
        }
    }
}
