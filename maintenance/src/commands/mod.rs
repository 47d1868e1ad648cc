//! One module per command family; each returns an [`Outcome`] or an error.

mod bench;
mod bench_copy;
mod bench_propagate;
mod cert;
mod copy;
mod db;
mod demo;
mod file;
mod log;
mod node;
mod recover;
mod recover_walk;
mod replicate;

use crate::cli::{Cli, Command};
use crate::Outcome;
use anyhow::Context;
use propagator::{Database, DbError};
use std::path::Path;

/// One request to the node at `addr`. An error answer comes back as an
/// error naming the node (the client turns it into one).
pub(crate) use maintenance::recovery::ask;

pub fn run(cli: Cli) -> anyhow::Result<Outcome> {
    // How this process reaches nodes (a node sets its own at start).
    if !matches!(cli.command, Command::Node(_)) {
        if let Some(t) = cert::client_transport(&cli.tls)? {
            propagator::net::set_client(t);
        }
    }
    match cli.command {
        Command::Cert(c) => cert::run(c),
        Command::Db(c) => db::run(c),
        Command::File(c) => file::run(c),
        Command::Master(c) => file::run_master(c),
        Command::Exec(a) => file::exec(a),
        Command::Log(c) => log::run(c),
        Command::Bench(c) => bench::run(c),
        Command::Demo(a) => demo::run(a),
        Command::Node(c) => node::run(c, &cli.tls),
        Command::Admin(c) => node::admin(c),
        Command::Task(c) => node::task(c),
        Command::Policy(c) => replicate::policy(c),
        Command::Console(a) => {
            maintenance::console::run(a.node.node, a.listen, a.sources.into(), a.state, a.tls)
        }
        Command::Replicate(c) => replicate::run(c),
        Command::Confirm(c) => replicate::confirm(c),
        Command::Xref(a) => replicate::xref(a),
        Command::Copy(c) => copy::run(c),
        Command::Recover(c) => recover::run(c),
    }
}

/// Opens a database for a command, telling the operator on stderr what
/// restart recovery did.
pub fn open_db(dir: &Path) -> Result<Database, DbError> {
    open_db_with(dir, propagator::Options::default())
}

/// [`open_db`] with tuning options.
pub fn open_db_with(dir: &Path, opts: propagator::Options) -> Result<Database, DbError> {
    let plog: std::sync::Arc<dyn propagator::medium::MediumDir> =
        std::sync::Arc::new(propagator::medium::FsDir::new(dir.join("plog")));
    let (db, report) = Database::open_with(dir, plog, opts)?;
    if let Some(t) = &report.torn_tail {
        eprintln!(
            "etp: note: torn tail truncated in {} at offset {} ({} bytes of an unacknowledged transaction: {})",
            t.path, t.offset, t.bytes_dropped, t.reason
        );
    }
    if let Some(p) = &report.removed_segment {
        eprintln!("etp: note: removed {p}, a log segment whose creation was cut short");
    }
    if report.replayed > 0 {
        eprintln!(
            "etp: note: restart recovery redid {} committed transactions (LSN {} to {})",
            report.replayed,
            report.store_lsn.0 + 1,
            report.log_end
        );
    }
    for (fnr, reason) in &report.damaged {
        eprintln!("etp: warning: file {fnr} is damaged and will not be used: {reason}");
    }
    Ok(db)
}

pub fn open_with_options(dir: &Path, opts: propagator::Options) -> anyhow::Result<Database> {
    open_db_with(dir, opts).with_context(|| format!("cannot open database {}", dir.display()))
}

pub fn open_or_context(dir: &Path) -> anyhow::Result<Database> {
    open_db(dir).with_context(|| format!("cannot open database {}", dir.display()))
}
