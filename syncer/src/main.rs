//! The `syncer` binary: parses the command line ([`cli`]), sets up logging and the runtime,
//! and calls into the library's commands. Exit codes: 0 ok, 2 bad usage or config, 1 runtime
//! failure. The only place (with `cli.rs`) where clap and anyhow appear.

mod cli;

use std::process::ExitCode;

use cli::Command;

/// Logs go to stderr; under systemd with stderr connected to the journal (`JOURNAL_STREAM`
/// names stderr's device and inode), to the journal itself, with each event's fields as
/// journal fields (`SYNCER_TARGET=...`, `SYNCER_PENDING=...`) and its level as the priority.
fn init_logging() {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    if stderr_is_the_journal() {
        if let Ok(journal) = tracing_journald::layer() {
            tracing_subscriber::registry()
                .with(filter())
                .with(
                    journal
                        .with_syslog_identifier("syncer".into())
                        .with_field_prefix(Some("SYNCER".into())),
                )
                .init();
            return;
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(syncer::app::progress::LogWriter)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Whether stderr is the stream systemd connected to the journal (`JOURNAL_STREAM=dev:inode`).
fn stderr_is_the_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let Ok(st) = nix::sys::stat::fstat(libc::STDERR_FILENO) else {
        return false;
    };
    dev.parse::<u64>().ok() == Some(st.st_dev) && ino.parse::<u64>().ok() == Some(st.st_ino)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("syncer-rt")
        .enable_all()
        .build()?)
}

fn main() -> ExitCode {
    let cmd = cli::parse();
    init_logging();
    // Failpoints (tests only: the `failpoints` feature) are read from FAILPOINTS.
    let _failpoints = fail::FailScenario::setup();
    let cmd = match cmd {
        Ok(c) => c,
        Err(e) => {
            eprintln!("syncer: {e}");
            return ExitCode::from(2);
        }
    };
    if let Command::Docs(dir) = &cmd {
        return match cli::write_docs(dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("syncer: writing the docs into {}: {e}", dir.display());
                ExitCode::from(1)
            }
        };
    }
    if let Command::Client(socket, client) = &cmd {
        return match syncer::app::client::run(socket, client) {
            Ok(code) => ExitCode::from(code),
            Err(e) => {
                eprintln!("syncer: {e}");
                ExitCode::from(1)
            }
        };
    }
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("syncer: {e:#}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(async {
        match cmd {
            Command::Check(path) => {
                print!("{}", syncer::app::check::report(&path));
                Ok(())
            }
            Command::Run(cfg, reload) => syncer::app::run::run(cfg, reload).await,
            Command::Sync(cfg) => syncer::app::sync::sync(cfg).await,
            Command::Client(..) | Command::Docs(_) => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = e.exit_code();
            eprintln!("syncer: {:#}", anyhow::Error::from(e));
            ExitCode::from(code)
        }
    }
}
