//! `etp file …`, `etp master define`, `etp exec`.

use super::open_or_context;
use crate::cli::{ExecArgs, FileCommand, IncarnationCommand, MasterCommand};
use crate::output;
use crate::Outcome;
use anyhow::{bail, Context};
use propagator::node::client::Client;
use propagator::record::{decode_record, record_to_json};
use propagator::{Database, Fnr, Isn, LogRecord, Role};
use std::io::{BufWriter, Write};

pub fn run(c: FileCommand) -> anyhow::Result<Outcome> {
    match c {
        FileCommand::Create {
            data,
            file,
            name,
            role,
        } => {
            let Some(r) = Role::parse_creatable(&role) else {
                bail!("unknown role {role:?}: expected plain, replicate, confirmation or administration (masters and logs are made with `etp master define`)");
            };
            let db = open_or_context(&data.data)?;
            let info = db
                .create_file(Fnr(file), &name, r)
                .with_context(|| format!("cannot create file {file}"))?;
            println!("created file {file} ({name}, {role}) at LSN {}", info.lsn);
            Ok(Outcome::Ok)
        }
        FileCommand::List { data, json } => {
            let db = open_or_context(&data.data)?;
            print_files(&db, json);
            Ok(Outcome::Ok)
        }
        FileCommand::Dump {
            target,
            file,
            stale,
        } => {
            match (target.data, target.node) {
                (Some(dir), _) => dump(&open_or_context(&dir)?, Fnr(file))?,
                (None, Some(addr)) => dump_node(addr, Fnr(file), stale)?,
                (None, None) => bail!("give --data DIR or --node ADDR"),
            }
            Ok(Outcome::Ok)
        }
    }
}

pub fn print_files(db: &Database, json: bool) {
    let files = db.files();
    if json {
        for f in files {
            output::json(&serde_json::json!({
                "file": f.def.fnr.0, "name": f.def.name, "role": f.def.role.name(),
                "detail": f.def.role.to_string(), "records": f.meta.count,
                "digest": f.meta.digest.to_string(), "next_isn": f.meta.next_isn,
                "damaged": f.damaged.as_ref().map(|d| d.reason.as_str()),
            }));
        }
        return;
    }
    let rows: Vec<Vec<String>> = files
        .iter()
        .map(|f| {
            vec![
                f.def.fnr.to_string(),
                f.def.name.clone(),
                f.def.role.to_string(),
                f.meta.count.to_string(),
                f.meta.digest.to_string(),
                f.damaged
                    .clone()
                    .map_or("ok".into(), |d| format!("DAMAGED: {d}")),
            ]
        })
        .collect();
    output::table(
        &["file", "name", "role", "records", "digest", "state"],
        &rows,
    );
}

/// One dumped record as its JSON line's `fields`.
fn dump_fields(
    fnr: Fnr,
    bytes: &[u8],
    is_log: bool,
) -> Result<serde_json::Value, propagator::DbError> {
    Ok(if is_log {
        LogRecord::decode(bytes)
            .map_err(|source| propagator::DbError::BadRecord { fnr, source })?
            .to_json()
    } else {
        record_to_json(
            &decode_record(bytes)
                .map_err(|source| propagator::DbError::BadRecord { fnr, source })?,
        )
    })
}

/// `file dump --node`: the same lines, read from a running node.
fn dump_node(addr: std::net::SocketAddr, fnr: Fnr, stale: bool) -> anyhow::Result<()> {
    let mut client = Client::connect(addr)?;
    client.stale_reads(stale);
    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut failure = None;
    client.dump_raw(fnr, |isn, bytes, is_log| {
        if failure.is_some() {
            return Ok(());
        }
        match dump_fields(fnr, bytes, is_log) {
            Ok(fields) => {
                let _ = writeln!(
                    out,
                    "{}",
                    serde_json::json!({ "isn": isn.0, "fields": fields })
                );
            }
            Err(e) => failure = Some(e),
        }
        Ok(())
    })?;
    let _ = out.flush();
    match failure {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

/// Prints a file as JSON lines in ascending isn; a log file's records are
/// shown as their fields (seq, op, images, digest …).
fn dump(db: &Database, fnr: Fnr) -> anyhow::Result<()> {
    let def = db.file(fnr)?;
    let is_log = matches!(def.role, Role::Log { .. });
    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut broken_pipe = false;
    db.for_each_raw(fnr, Isn(0), |isn, bytes| {
        let fields = dump_fields(fnr, bytes, is_log)?;
        if writeln!(
            out,
            "{}",
            serde_json::json!({ "isn": isn.0, "fields": fields })
        )
        .is_err()
        {
            broken_pipe = true;
            return Ok(false);
        }
        Ok(true)
    })?;
    if !broken_pipe {
        let _ = out.flush();
    }
    Ok(())
}

pub fn run_master(c: MasterCommand) -> anyhow::Result<Outcome> {
    match c {
        MasterCommand::Define { data, file, log } => {
            let db = open_or_context(&data.data)?;
            let info = db
                .define_master(Fnr(file), Fnr(log))
                .with_context(|| format!("cannot make file {file} a master"))?;
            println!(
                "file {file} is a master with log file {log} (LSN {})",
                info.lsn
            );
            Ok(Outcome::Ok)
        }
        MasterCommand::Incarnation(IncarnationCommand::Raise { node, master, json }) => {
            raise_incarnation(node.node, Fnr(master), json)
        }
        MasterCommand::Promote {
            replicate,
            node,
            log,
            dry_run,
            wait_s,
            json,
        } => {
            use maintenance::recovery::promote;
            let p = if dry_run {
                promote::plan(node.node, &replicate, log)?
            } else {
                let t = std::time::Instant::now();
                let p = promote::execute(
                    node.node,
                    &replicate,
                    log,
                    std::time::Duration::from_secs(wait_s),
                    &mut |line| {
                        if json {
                            output::json(&serde_json::json!({"event": "step", "detail": line}));
                        } else {
                            println!("{line}");
                        }
                    },
                )?;
                if !json {
                    println!("promoted in {:.1} s", t.elapsed().as_secs_f64());
                }
                p
            };
            if json {
                output::json(
                    &serde_json::json!({"event": "promote", "dry_run": dry_run, "plan": p}),
                );
            } else {
                println!(
                    "{}: {} (file {} of database {}) becomes master {} at seq {} (log file {}, incarnation above {}); old master on database {} {}",
                    if dry_run { "plan" } else { "done" },
                    p.replicate,
                    p.file,
                    p.database,
                    p.master,
                    p.seq,
                    p.log,
                    p.floor,
                    p.old_database,
                    if p.old_answered { "answers (quiesced)" } else { "does not answer" }
                );
                println!(
                    "  reloaded from the new master: {}",
                    if p.reload.is_empty() {
                        "none".into()
                    } else {
                        p.reload.join(", ")
                    }
                );
                match p.lost {
                    Some((a, b)) => println!("  LOST: seqs {a} to {b} (given out by the old master after the promoted replicate's level)"),
                    None => println!("  no seq is lost"),
                }
                if p.drop_database {
                    println!("  database {} leaves the topology", p.old_database);
                }
                if dry_run {
                    println!("--- the new topology ---\n{}", p.topology);
                }
            }
            Ok(if p.lost.is_some() {
                Outcome::Problem
            } else {
                Outcome::Ok
            })
        }
    }
}

/// Raises a master's incarnation on its node, its task's feeders started
/// again afterwards if they ran before.
fn raise_incarnation(
    addr: std::net::SocketAddr,
    master: Fnr,
    json: bool,
) -> anyhow::Result<Outcome> {
    use maintenance::recovery::ask;
    use propagator::wire::{
        OperationRequest, RecoveryOp, Request, Response, TaskAction, TaskState,
    };
    let ran = match ask(addr, &Request::Operation(OperationRequest::TaskStatus))? {
        Response::Tasks(ts) => ts
            .iter()
            .any(|t| t.master == master && t.state == TaskState::Running),
        other => bail!("node {addr} answered {other:?} to TaskStatus"),
    };
    let v = match ask(
        addr,
        &Request::Recovery(RecoveryOp::RaiseIncarnation { master }),
    )? {
        Response::Text(t) => serde_json::from_str::<serde_json::Value>(&t)
            .with_context(|| format!("node {addr} answered {t:?}"))?,
        other => bail!("node {addr} answered {other:?} to RaiseIncarnation"),
    };
    if ran {
        ask(
            addr,
            &Request::Operation(OperationRequest::TaskControl {
                master: Some(master),
                action: TaskAction::Start,
            }),
        )?;
    }
    if json {
        output::json(&v);
    } else {
        println!(
            "master {master}: incarnation {} (LSN {}){}",
            v["incarnation"],
            v["lsn"],
            if ran {
                "; its task's feeders started again"
            } else {
                ""
            }
        );
    }
    Ok(Outcome::Ok)
}

pub fn exec(a: ExecArgs) -> anyhow::Result<Outcome> {
    if let Some(dir) = &a.journal {
        return exec_journal(&a, dir);
    }
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout().lock();
    let outcome = match (a.data, a.node) {
        (Some(dir), _) => {
            let db = open_or_context(&dir)?;
            // The masters' declared fields hold offline as through a node.
            propagator::node::load_schemas(&db)?;
            let mut session = db.session();
            propagator::exec::run_exec(&mut session, stdin.lock(), &mut stdout)
        }
        (None, Some(addr)) => {
            let mut client = Client::connect(addr)?;
            let depth = usize::from(a.pipeline);
            propagator::exec::run_exec_pipelined(&mut client, stdin.lock(), &mut stdout, depth)
        }
        (None, None) => bail!("give --data DIR or --node ADDR"),
    }
    .context("reading commands or writing results")?;
    match (outcome.error, outcome.backed_out_at_end) {
        (Some((line, msg)), _) => bail!("line {line}: {msg} (the open transaction was backed out; {} earlier transactions stay committed)", outcome.committed),
        (None, Some(open)) => {
            eprintln!(
                "etp: error: input ended inside a transaction: its {} command(s) since line {} were backed out (end it with {{\"op\":\"et\"}}); {} earlier transaction(s) stay committed",
                open.commands, open.first_line, outcome.committed
            );
            Ok(Outcome::Problem)
        }
        (None, None) => Ok(Outcome::Ok),
    }
}

/// `etp exec --journal DIR` (see `maintenance::journal`).
fn exec_journal(a: &ExecArgs, dir: &std::path::Path) -> anyhow::Result<Outcome> {
    use maintenance::journal;
    let mut stdout = std::io::stdout().lock();
    if a.status {
        return Ok(if journal::status(dir, a.json, &mut stdout)? {
            Outcome::Ok
        } else {
            Outcome::Problem
        });
    }
    if a.data.is_some() {
        bail!("--journal works with --node only: offline exec (--data) commits to the database directly and durably before it answers, so there is no master to be unavailable and nothing to rerun");
    }
    let Some(node) = a.node else {
        bail!("--journal needs --node ADDR (or --status)");
    };
    let retry_for = match a.retry_for {
        None => journal::DEFAULT_RETRY_FOR,
        Some(s) if s.is_finite() && s >= 0.0 => std::time::Duration::from_secs_f64(s),
        Some(s) => bail!("--retry-for must be a number of seconds >= 0, got {s}"),
    };
    let opts = journal::ExecOptions {
        node,
        retry_for,
        rerun_only: a.rerun,
        exempt: false,
    };
    let stdin = std::io::stdin();
    match journal::exec(dir, &opts, stdin.lock(), &mut stdout)? {
        journal::ExecEnd::Done => Ok(Outcome::Ok),
        journal::ExecEnd::Pending(_) => Ok(Outcome::Problem),
        journal::ExecEnd::Error { message, pending } => {
            bail!("{message} ({pending} transaction(s) stay pending in the journal, in order; a refused one is marked failed and is not among them: `etp exec --node ADDR --journal DIR --rerun` runs them)")
        }
        journal::ExecEnd::OpenAtEnd {
            first_line,
            commands,
            pending,
        } => {
            eprintln!(
                "etp: error: input ended inside a transaction: its {commands} command(s) from line {first_line} on were backed out, not journaled (end it with {{\"op\":\"et\"}}); {pending} transaction(s) pending in the journal"
            );
            Ok(Outcome::Problem)
        }
    }
}
