//! The command line (clap), parsed once into what the library runs on: a validated
//! [`Config`] per command. Nothing outside `main.rs` and this file sees clap.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use syncer::app::client::Client;
use syncer::config::{Config, ConfigError, Settings, DEFAULT_CONTROL_SOCKET};
use syncer::source::{EbpfHooks, SourceKind};

/// What to do, with its settings validated.
pub enum Command {
    /// With how to read the configuration again on SIGHUP (when it came from a file).
    Run(Config, Option<syncer::app::run::Reloader>),
    Sync(Config),
    Check(PathBuf),
    /// A client command, with the daemon's control socket.
    Client(PathBuf, Client),
    /// Writes the man page and shell completions into the directory (for packaging).
    Docs(PathBuf),
}

/// Parses the command line (exiting with clap's message and code 2 on bad usage) and builds the
/// command's config.
pub fn parse() -> Result<Command, ConfigError> {
    match Cli::parse().cmd {
        Cmd::Check { path } => Ok(Command::Check(path)),
        Cmd::GenerateDocs { dir } => Ok(Command::Docs(dir)),
        Cmd::Run(a) => {
            let extra = Settings {
                source_kind: a.source_kind,
                ebpf_hooks: a.ebpf_hooks,
                initial_sync: a.no_initial_sync.then_some(false),
                delay_ms: a.delay,
                control_socket: a.control_socket,
                metrics_listen: a.metrics_listen,
                ..Settings::default()
            };
            let file = a.common.config.clone();
            let cli = cli_settings(a.common, extra);
            let cfg = merged(&cli, file.as_deref())?;
            let reload = file.map(|path| {
                let r: syncer::app::run::Reloader = Box::new(move || merged(&cli, Some(&path)));
                r
            });
            Ok(Command::Run(cfg, reload))
        }
        Cmd::Sync(c) => settings(c, Settings::default()).map(Command::Sync),
        Cmd::Status {
            json,
            watch,
            check,
            max_lag,
            socket,
        } => {
            if max_lag.is_some() && !check {
                return Err(ConfigError::Invalid {
                    flag: "--max-lag",
                    msg: "goes with --check".into(),
                });
            }
            let check = check.then(|| std::time::Duration::from_secs(max_lag.unwrap_or(60)));
            Ok(Command::Client(
                socket.control_socket,
                Client::Status { json, watch, check },
            ))
        }
        Cmd::Failures { json, socket } => Ok(Command::Client(
            socket.control_socket,
            Client::Failures { json },
        )),
        Cmd::Pause { target, socket } => Ok(Command::Client(
            socket.control_socket,
            Client::Pause(target),
        )),
        Cmd::Resume { target, socket } => Ok(Command::Client(
            socket.control_socket,
            Client::Resume(target),
        )),
        Cmd::Rescan { path, socket } => {
            Ok(Command::Client(socket.control_socket, Client::Rescan(path)))
        }
        Cmd::Checkpoint {
            wait,
            timeout,
            socket,
        } => Ok(Command::Client(
            socket.control_socket,
            Client::Checkpoint {
                wait,
                timeout: timeout.map(std::time::Duration::from_secs),
            },
        )),
    }
}

/// The running daemon's control socket, for the client commands.
#[derive(Args)]
struct SocketArg {
    /// The control socket of the `syncer run` to ask.
    #[arg(long = "control-socket", env = "SYNCER_CONTROL_SOCKET", default_value = DEFAULT_CONTROL_SOCKET)]
    control_socket: PathBuf,
}

#[derive(Parser)]
#[command(
    name = "syncer",
    version,
    about = "Real-time replication of large file trees with rsync"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Replicate SOURCE to every TARGET in real time, until SIGTERM/SIGINT.
    Run(RunArgs),
    /// One full parallel sync of SOURCE to every TARGET, then exit.
    Sync(CommonArgs),
    /// Write the man page (syncer.1) and bash, zsh and fish completions into DIR.
    #[command(hide = true)]
    GenerateDocs { dir: PathBuf },
    /// Print what this kernel offers for watching and which source `auto` picks.
    Check {
        /// A directory on the filesystem to probe (default: /).
        #[arg(long, default_value = "/")]
        path: PathBuf,
    },
    /// How far behind each target of a running syncer is, and why.
    Status {
        /// As JSON.
        #[arg(long)]
        json: bool,
        /// Again every second.
        #[arg(long)]
        watch: bool,
        /// For monitoring: exit 1 unless every target is up and no change waits longer than
        /// --max-lag.
        #[arg(long)]
        check: bool,
        /// Seconds a change may wait, with --check (default 60).
        #[arg(long)]
        max_lag: Option<u64>,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// The paths that keep failing, per target, with rsync's reasons.
    Failures {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Stop sending to TARGET (its name or number from 1); its changes stay queued.
    Pause {
        target: String,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Send to a paused TARGET again.
    Resume {
        target: String,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Compare PATH (inside the source) with every target and send what differs.
    Rescan {
        path: PathBuf,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// A mark now: done when every target holds everything seen before it.
    Checkpoint {
        /// Wait until it is reached (exit 1 if --timeout runs out first).
        #[arg(long)]
        wait: bool,
        /// Seconds to wait at most, with --wait.
        #[arg(long)]
        timeout: Option<u64>,
        #[command(flatten)]
        socket: SocketArg,
    },
}

#[derive(Args)]
struct CommonArgs {
    /// The directory tree to replicate.
    #[arg(long)]
    source: Option<PathBuf>,
    /// A local directory, rsync://[user@]host[:port]/module[/path], or [user@]host:path (ssh).
    #[arg(long = "target")]
    targets: Vec<String>,
    /// A TOML config file; the command line overrides it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Password file for rsync daemon targets.
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// rsync processes per target.
    #[arg(long)]
    shards: Option<usize>,
    /// Where the journal of pending changes and the index of each target live (one directory
    /// per source; default /var/lib/syncer).
    #[arg(long, env = "SYNCER_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Forget the state: compare the whole tree against every target with rsync and rebuild
    /// the index.
    #[arg(long)]
    full_resync: bool,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Kernel event source: auto, fanotify, ebpf or inotify.
    #[arg(long, value_parser = |s: &str| s.parse::<SourceKind>())]
    source_kind: Option<SourceKind>,
    /// Hooks of the eBPF source: auto (fsnotify fentry where the kernel allows it, else syscall
    /// tracepoints), fsnotify or tracepoints.
    #[arg(long, value_parser = |s: &str| s.parse::<EbpfHooks>())]
    ebpf_hooks: Option<EbpfHooks>,
    /// Skip the full sync at start-up.
    #[arg(long)]
    no_initial_sync: bool,
    /// Coalescing delay in milliseconds.
    #[arg(long)]
    delay: Option<u64>,
    /// Where `syncer status` and the other client commands reach this syncer (default
    /// /run/syncer/control.sock).
    #[arg(long, env = "SYNCER_CONTROL_SOCKET")]
    control_socket: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (off by default; e.g.
    /// 127.0.0.1:9725).
    #[arg(long, value_name = "ADDR:PORT")]
    metrics_listen: Option<String>,
}

fn settings(common: CommonArgs, extra: Settings) -> Result<Config, ConfigError> {
    let file = common.config.clone();
    merged(&cli_settings(common, extra), file.as_deref())
}

/// The command line over the config file (read now), validated.
fn merged(cli: &Settings, file: Option<&std::path::Path>) -> Result<Config, ConfigError> {
    let file = match file {
        Some(path) => Settings::from_file(path)?,
        None => Settings::default(),
    };
    cli.clone().over(file).into_config()
}

/// What the command line sets.
fn cli_settings(common: CommonArgs, extra: Settings) -> Settings {
    Settings {
        source: common.source,
        targets: (!common.targets.is_empty()).then_some(common.targets),
        password_file: common.password_file,
        shards: common.shards,
        state_dir: common.state_dir,
        full_resync: common.full_resync.then_some(true),
        ..extra
    }
}

/// The man pages (`syncer.1`, and `syncer-run.1` and so on for the subcommands) and shell
/// completions, into `dir`.
pub fn write_docs(dir: &std::path::Path) -> std::io::Result<()> {
    use clap::CommandFactory;
    std::fs::create_dir_all(dir)?;
    let cmd = Cli::command();
    clap_mangen::generate_to(cmd.clone(), dir)?;
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        clap_complete::generate_to(shell, &mut cmd.clone(), "syncer", dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// clap's own checks of the command line (unique names, valid defaults), for every
    /// subcommand.
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
