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
        DbCommand::Recover {
            data,
            area,
            into,
            to_lsn,
            to_time,
            to_last_good,
            reapply,
            json,
        } => recover(
            data,
            area,
            into,
            to_lsn,
            to_time,
            to_last_good,
            reapply,
            json,
        ),
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

#[allow(clippy::too_many_arguments)]
fn recover(
    data: std::path::PathBuf,
    area: Option<std::path::PathBuf>,
    into: Option<std::path::PathBuf>,
    to_lsn: Option<u64>,
    to_time: Option<String>,
    to_last_good: bool,
    reapply: bool,
    json: bool,
) -> anyhow::Result<Outcome> {
    use backup::recover_db::{recover_with, Until};
    let until = match (to_lsn, to_time, to_last_good) {
        (Some(l), _, _) => Until::Lsn(propagator::Lsn(l)),
        (_, Some(t), _) => Until::Time(
            chrono::DateTime::parse_from_rfc3339(&t)
                .with_context(|| {
                    format!("--to-time {t:?} is not an RFC 3339 time (e.g. 2026-11-30T21:00:00Z)")
                })?
                .timestamp_micros(),
        ),
        (_, _, true) => Until::LastGood,
        _ => Until::End,
    };
    let area = match &area {
        Some(a) => Some(backup::Area::open(a)?),
        None => None,
    };
    let mut sink = output::ProgressSink::new(json);
    let r = recover_with(
        &data,
        area.as_ref(),
        into.as_deref(),
        until,
        reapply,
        &mut |p| sink.on(p),
    );
    drop(sink);
    let r = r?;
    if json {
        output::json(&serde_json::to_value(&r)?);
    } else {
        println!(
            "database {} recovered into {} from the {} to LSN {}",
            r.dbid,
            r.into.display(),
            r.method,
            r.lsn
        );
        let live = r.segments.iter().filter(|s| s.from == "live").count();
        println!(
            "  protection log: {} segment(s), {live} live and {} archived; LSN {} to {}",
            r.segments.len(),
            r.segments.len() - live,
            r.log.first,
            r.log.last_good
        );
        for s in &r.sets {
            println!(
                "  copy set {} (LSN {}): files {}, {} commit(s) rolled forward",
                s.set,
                s.lsn,
                fnrs(&s.files),
                s.commits
            );
        }
        if let Some(l) = &r.lost {
            println!(
                "  LOST: LSNs {} to {} (files {}): {}",
                l.from,
                l.through,
                fnrs(&l.files),
                match &r.log.damage {
                    Some(d) => format!(
                        "the log is damaged at {} offset {} ({})",
                        d.path, d.offset, d.reason
                    ),
                    None => "after the LSN asked for".into(),
                }
            );
        }
        if let Some(ra) = &r.reapplied {
            for (old, new) in &ra.done {
                println!("  REAPPLIED: LSN {old} as LSN {new}");
            }
            for c in &ra.conflicts {
                println!(
                    "  NOT REAPPLIED: LSN {} (file {} isn {}: {})",
                    c.lsn, c.file, c.isn, c.why
                );
            }
            if !ra.skipped.is_empty() {
                println!(
                    "  NOT REAPPLIED (not client transactions): LSNs {}",
                    ra.skipped
                        .iter()
                        .map(|l| l.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
        if !r.not_recovered.is_empty() {
            println!(
                "  NOT RECOVERED (no copy set holds them and the log does not reach back to LSN 1): files {}",
                fnrs(&r.not_recovered)
            );
        }
        if let Some(k) = &r.damaged_kept {
            println!("  the damaged database is kept as {}", k.display());
        }
    }
    Ok(if r.lost.is_some() || !r.not_recovered.is_empty() {
        Outcome::Problem
    } else {
        Outcome::Ok
    })
}

/// File numbers for people: "10, 11, 255".
fn fnrs<'a>(files: impl IntoIterator<Item = &'a propagator::Fnr>) -> String {
    files
        .into_iter()
        .map(|f| f.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
