//! The `syncer` binary: parses the command line (clap) into plain config structs, sets up
//! logging and the runtime, and calls into the library. Exit codes: 0 ok, 2 bad usage or
//! config, 1 runtime failure.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use syncer::config::{EbpfHooks, Settings, SourceKind};

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
    /// Print what this kernel offers for watching and which source `auto` picks.
    Check {
        /// A directory on the filesystem to probe (default: /).
        #[arg(long, default_value = "/")]
        path: PathBuf,
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
}

fn settings(
    common: CommonArgs,
    extra: Settings,
) -> Result<syncer::config::Config, syncer::error::ConfigError> {
    let file = match &common.config {
        Some(path) => Settings::from_file(path)?,
        None => Settings::default(),
    };
    let cli = Settings {
        source: common.source,
        targets: (!common.targets.is_empty()).then_some(common.targets),
        password_file: common.password_file,
        shards: common.shards,
        ..extra
    };
    cli.over(file).into_config()
}

fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("syncer-rt")
        .enable_all()
        .build()?)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let (cfg, one_shot) = match cli.cmd {
        Cmd::Check { path } => {
            print!("{}", syncer::check::report(&path));
            return ExitCode::SUCCESS;
        }
        Cmd::Run(a) => {
            let extra = Settings {
                source_kind: a.source_kind,
                ebpf_hooks: a.ebpf_hooks,
                initial_sync: a.no_initial_sync.then_some(false),
                delay_ms: a.delay,
                ..Settings::default()
            };
            (settings(a.common, extra), false)
        }
        Cmd::Sync(c) => (settings(c, Settings::default()), true),
    };
    let cfg = match cfg {
        Ok(c) => c,
        Err(e) => {
            eprintln!("syncer: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime().and_then(|rt| {
        rt.block_on(async {
            if one_shot {
                syncer::daemon::sync_once(cfg).await
            } else {
                syncer::daemon::run(cfg).await
            }
        })
        .map_err(anyhow::Error::from)
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("syncer: {e:#}");
            ExitCode::from(1)
        }
    }
}
