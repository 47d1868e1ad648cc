//! `etp` — the maintenance utility and node of the propagation engine.
//!
//! Parses arguments, installs logging, runs one command and maps the outcome
//! to an exit code: 0 success, 1 a check found a problem, 2 an operational
//! error (bad input included). The work lives in the libraries.

mod cli;
mod commands;
mod output;

use clap::Parser;

use std::process::ExitCode;

pub use maintenance::Outcome;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ETP_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match commands::run(args) {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::Problem) => ExitCode::from(1),
        Err(e) => {
            eprintln!("etp: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
