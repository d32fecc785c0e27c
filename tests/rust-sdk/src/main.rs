//! `sdk-scenarios`: drives a homeserver with matrix-rust-sdk (the SDK Element X is built on).
//!
//!   sdk-scenarios --homeserver http://127.0.0.1:PORT <scenario>
//!
//! Scenarios: `e2ee-exchange`, `e2ee-second-device`, `room-list` (or `all`). Each registers
//! its own fresh users (m.login.dummy), uses in-memory stores (one per client, each with its
//! own Olm machine), prints `PASS <scenario>` or `FAIL <scenario>: <reason>` and exits non-zero
//! on failure. `RUST_LOG=debug` (or e.g. `matrix_sdk=debug`) shows the SDK's requests.

mod e2ee;
mod room_list;
mod util;

use std::{process::ExitCode, time::Duration};

use clap::Parser;
use matrix_sdk::reqwest::Url;

#[derive(Parser, Debug)]
#[command(about = "matrix-rust-sdk end-to-end scenarios against a homeserver")]
struct Args {
    /// Homeserver base URL, e.g. http://127.0.0.1:8008
    #[arg(long)]
    homeserver: Url,
    /// Seconds each wait (for a sync condition) may take before the scenario fails.
    #[arg(long, default_value_t = 30)]
    wait: u64,
    /// e2ee-exchange | e2ee-second-device | room-list | all
    scenario: String,
}

pub const SCENARIOS: &[&str] = &["e2ee-exchange", "e2ee-second-device", "room-list"];

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let names: Vec<&str> = if args.scenario == "all" {
        SCENARIOS.to_vec()
    } else if SCENARIOS.contains(&args.scenario.as_str()) {
        vec![args.scenario.as_str()]
    } else {
        eprintln!(
            "unknown scenario {:?}; expected one of {} or all",
            args.scenario,
            SCENARIOS.join(", ")
        );
        return ExitCode::from(2);
    };
    let ctx = util::Ctx { hs: args.homeserver.clone(), wait: Duration::from_secs(args.wait) };

    let mut failed = 0;
    for name in names {
        let started = std::time::Instant::now();
        let result = match name {
            "e2ee-exchange" => e2ee::exchange(&ctx).await,
            "e2ee-second-device" => e2ee::second_device(&ctx).await,
            "room-list" => room_list::room_list(&ctx).await,
            _ => unreachable!(),
        };
        let secs = started.elapsed().as_secs_f32();
        match result {
            Ok(()) => println!("PASS {name} ({secs:.1}s)"),
            Err(e) => {
                failed += 1;
                println!("FAIL {name} ({secs:.1}s): {e:#}");
            }
        }
    }
    if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
