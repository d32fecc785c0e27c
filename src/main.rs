//! The `sparks` binary: reads the configuration, sets up logging, runs the server.

use std::{path::PathBuf, process::ExitCode};

use clap::Parser;

/// mimalloc returns freed memory to the system far more readily than glibc's per-thread arenas,
/// which kept hundreds of MB resident after bursts of concurrent requests.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use sparks::config::{Config, LogFormat};

#[derive(Parser)]
#[command(
    name = "sparks",
    version,
    about = "A Matrix homeserver with an embedded SFU, in one binary"
)]
struct Args {
    /// TOML configuration file. Without it the embedded defaults are used
    /// (server_name "localhost", client API on 127.0.0.1:8008, data in ./sparks-data).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Replace the server's signing key and exit (run with the server stopped). The old key
    /// stays published in `old_verify_keys` so what it signed can still be verified.
    #[arg(long)]
    rotate_signing_key: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match Config::load(args.config.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("sparks: {error}");
            return ExitCode::from(2);
        }
    };
    if args.rotate_signing_key {
        return match sparks::server::rotate_signing_key(&config) {
            Ok(key_id) => {
                println!("new signing key {key_id}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("sparks: {error}");
                ExitCode::FAILURE
            }
        };
    }
    let _log_guard = init_logging(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("sparks: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(sparks::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            eprintln!("sparks: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go through a non-blocking writer (a background thread does the I/O), so a busy server
/// does not wait on stderr. The guard flushes what is buffered when `main` returns.
fn init_logging(config: &Config) -> tracing_appender::non_blocking::WorkerGuard {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Pretty => builder.init(),
    }
    guard
}
