//! `etp db init|check|status`.

use super::{open_db, open_or_context};
use crate::cli::DbCommand;
use crate::output;
use crate::Outcome;
use anyhow::Context;
use propagator::{Database, DbError, DbId};

pub fn run(c: DbCommand) -> anyhow::Result<Outcome> {
    match c {
        DbCommand::Init {
            data,
            dbid,
            segment_size,
            store,
        } => {
            let engine = store.unwrap_or_else(propagator::default_engine);
            Database::init_with_engine(&data.data, DbId(dbid), segment_size, engine)
                .with_context(|| format!("cannot create database {}", data.data.display()))?;
            println!(
                "created database {dbid} in {} (page store: {engine})",
                data.data.display()
            );
            Ok(Outcome::Ok)
        }
        DbCommand::Check { data, json } => check(&data.data, json),
        DbCommand::Status { data, json } => {
            let db = open_or_context(&data.data)?;
            super::file::print_files(&db, json);
            if !json {
                println!(
                    "dbid {}, last LSN {}, page store {}",
                    db.dbid(),
                    db.last_lsn(),
                    db.engine()
                );
            }
            Ok(Outcome::Ok)
        }
    }
}

fn check(dir: &std::path::Path, json: bool) -> anyhow::Result<Outcome> {
    let db = match open_db(dir) {
        Ok(db) => db,
        // Not a database, or busy: an operational error, not damage.
        Err(e @ (DbError::Directory { .. } | DbError::InUse { .. })) => {
            return Err(anyhow::Error::new(e).context(format!("cannot check {}", dir.display())))
        }
        Err(e) => {
            if json {
                output::json(&serde_json::json!({ "ok": false, "open_error": e.to_string() }));
            } else {
                println!("DAMAGED: {e}");
            }
            return Ok(Outcome::Problem);
        }
    };
    let report = db.check().context("check failed")?;
    if json {
        let mut v = serde_json::to_value(&report).context("encoding the report")?;
        v["ok"] = serde_json::Value::Bool(report.is_ok());
        output::json(&v);
    } else {
        println!(
            "protection log: {} segments, {} frames, last LSN {}: {}",
            report.segments,
            report.frames,
            report.log_end,
            report.log_problem.as_deref().unwrap_or("ok")
        );
        let rows: Vec<Vec<String>> = report
            .files
            .iter()
            .map(|f| {
                vec![
                    f.fnr.to_string(),
                    f.name.clone(),
                    f.role.to_string(),
                    f.count.to_string(),
                    f.digest.clone(),
                    f.problem
                        .clone()
                        .map_or("ok".into(), |p| format!("DAMAGED: {p}")),
                ]
            })
            .collect();
        output::table(
            &["file", "name", "role", "records", "digest", "state"],
            &rows,
        );
        println!(
            "{}",
            if report.is_ok() {
                "check passed"
            } else {
                "check FAILED"
            }
        );
    }
    Ok(if report.is_ok() {
        Outcome::Ok
    } else {
        Outcome::Problem
    })
}
