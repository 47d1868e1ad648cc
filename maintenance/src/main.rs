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

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    // What etp creates (databases, logs, copies, keys) is its owner's only:
    // directories 0700, files 0600.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let args = cli::Cli::parse();
    if let Err(e) = init_logging() {
        eprintln!("etp: error: {e}");
        return ExitCode::from(2);
    }
    match commands::run(args) {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::Problem) => ExitCode::from(1),
        Err(e) => {
            eprintln!("etp: error: {}", chain_text(&e));
            ExitCode::from(2)
        }
    }
}

/// Logs go to standard error: `ETP_LOG` filters them (default `warn`),
/// `ETP_LOG_FORMAT=json` writes one JSON object per line for log shippers;
/// colours only when standard error is a terminal.
fn init_logging() -> Result<(), String> {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("ETP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let format = std::env::var("ETP_LOG_FORMAT").unwrap_or_default();
    let base = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format.as_str() {
        "json" => base.json().init(),
        "" | "text" => base.with_ansi(std::io::stderr().is_terminal()).init(),
        other => return Err(format!("ETP_LOG_FORMAT={other:?}: expected text or json")),
    }
    Ok(())
}

/// An error and its causes on one line, `a: b: c`. Many of the engine's
/// errors already print their cause ("reading the control record: …");
/// a cause whose text the line already ends with is not repeated.
fn chain_text(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.ends_with(text.as_str()) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::chain_text;

    #[derive(Debug)]
    struct Outer(std::io::Error);

    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "reading the control record: {}", self.0)
        }
    }

    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_cause_the_message_already_carries_is_printed_once() {
        let io = std::io::Error::other("disk on fire");
        let e = anyhow::Error::new(Outer(io)).context("starting the node");
        assert_eq!(
            chain_text(&e),
            "starting the node: reading the control record: disk on fire"
        );
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(chain_text(&plain), "outer: inner");
    }
}
