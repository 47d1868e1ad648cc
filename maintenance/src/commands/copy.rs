//! `etp copy take|list|show|verify|restore|regenerate|backout`.

use super::open_or_context;
use crate::cli::CopyCommand;
use crate::output;
use crate::Outcome;
use anyhow::{bail, Context};
use backup::restore::{self, Target};
use backup::take::{take_job, Ask, Source};
use backup::{Area, CopySet};
use propagator::wire::CopyRequest;
use propagator::{Fnr, Lsn};

fn parse_time(s: &str) -> anyhow::Result<i64> {
    let t = chrono::DateTime::parse_from_rfc3339(s).with_context(|| {
        format!("--to-time {s:?} is not an RFC 3339 time (e.g. 2026-11-30T21:00:00Z)")
    })?;
    Ok(t.timestamp_micros())
}

fn source_of(t: crate::cli::TargetArgs) -> anyhow::Result<Source> {
    Ok(match (t.data, t.node) {
        (Some(d), _) => Source::Local(open_or_context(&d)?),
        (None, Some(a)) => Source::Node(a),
        (None, None) => bail!("give --data DIR or --node ADDR"),
    })
}

fn summary(s: &CopySet) -> String {
    let members: Vec<String> = s
        .members
        .iter()
        .map(|m| {
            format!(
                "{} {} ({}, {} records)",
                m.fnr, m.name, m.role, m.copy.end.meta.count
            )
        })
        .collect();
    format!(
        "{}  {:?}  db {}  LSN {}  {}  {} bytes  [{}]",
        s.id,
        s.kind,
        s.dbid,
        s.lsn,
        s.taken_local,
        s.bytes,
        members.join(", ")
    )
}

pub fn run(c: CopyCommand) -> anyhow::Result<Outcome> {
    match c {
        CopyCommand::Ages { node, json } => {
            use propagator::wire::{ReadRequest, Request, Response};
            let ages =
                match maintenance::recovery::ask(node.node, &Request::Read(ReadRequest::CopyAges))?
                {
                    Response::CopyAges(a) => a,
                    other => bail!("node {} answered {other:?} to CopyAges", node.node),
                };
            if ages.is_empty() && !json {
                println!(
                    "node {} has no copy area or no topology: nothing to report",
                    node.node
                );
            }
            for a in &ages {
                if json {
                    output::json(&serde_json::to_value(a)?);
                } else {
                    println!(
                        "{}{}: {}",
                        if a.alarm { "ALARM " } else { "" },
                        a.what(),
                        a.newest()
                    );
                }
            }
            Ok(if ages.iter().any(|a| a.alarm) {
                Outcome::Problem
            } else {
                Outcome::Ok
            })
        }
        CopyCommand::Take {
            target,
            area,
            files,
            json,
        } => {
            let area = Area::open(&area.area)?;
            let source = source_of(target)?;
            let asks = [Ask {
                source,
                files: files.into_iter().map(Fnr).collect(),
            }];
            let taken = take_job(&area, None, &asks, &mut |msg| {
                if json {
                    output::json(&serde_json::json!({ "event": "progress", "message": msg }));
                } else {
                    eprintln!("{msg}");
                }
            })?;
            for t in taken {
                if json {
                    output::json(&serde_json::json!({
                        "event": "taken", "set": t.set, "added": t.added,
                    }));
                } else {
                    for a in &t.added {
                        println!("added {a}");
                    }
                    println!(
                        "took {} in {:.2} s ({:.1} MB/s)",
                        summary(&t.set),
                        t.set.seconds,
                        t.set.bytes as f64 / 1e6 / t.set.seconds.max(1e-9)
                    );
                }
            }
            Ok(Outcome::Ok)
        }
        CopyCommand::List { area, json } => {
            let area = Area::open(&area.area)?;
            for s in area.list()? {
                if json {
                    output::json(&serde_json::to_value(&s)?);
                } else {
                    println!("{}", summary(&s));
                }
            }
            Ok(Outcome::Ok)
        }
        CopyCommand::Show { set, area, json } => {
            let area = Area::open(&area.area)?;
            let s = area.get(&set)?;
            if json {
                output::json(&serde_json::to_value(&s)?);
            } else {
                println!("{}", serde_json::to_string_pretty(&s)?);
            }
            Ok(Outcome::Ok)
        }
        CopyCommand::Verify { set, area, json } => {
            let area = Area::open(&area.area)?;
            let sets = match set {
                Some(id) => vec![area.get(&id)?],
                None => area.list()?,
            };
            let mut bad = false;
            for s in &sets {
                let r = restore::verify_set(&area, s, &mut |_| {});
                bad |= r.is_err();
                let err = r.err().map(|e| format!("{e:#}"));
                if json {
                    output::json(
                        &serde_json::json!({ "set": s.id, "ok": err.is_none(), "error": err }),
                    );
                } else {
                    match err {
                        None => println!("{}: ok ({} members)", s.id, s.members.len()),
                        Some(e) => println!("{}: DAMAGED: {e}", s.id),
                    }
                }
            }
            Ok(if bad { Outcome::Problem } else { Outcome::Ok })
        }
        CopyCommand::Restore {
            set,
            file,
            area,
            data,
            to,
            json,
        } => {
            let area = Area::open(&area.area)?;
            let s = match (set, file) {
                (Some(id), _) => area.get(&id)?,
                (None, Some(f)) => {
                    let s = area
                        .list()?
                        .into_iter()
                        .rev()
                        .find(|s| s.member(Fnr(f)).is_some())
                        .with_context(|| format!("no copy set holds file {f}"))?;
                    if !json {
                        let others: Vec<String> = s
                            .members
                            .iter()
                            .filter(|m| m.fnr != Fnr(f))
                            .map(|m| format!("{} {}", m.fnr, m.name))
                            .collect();
                        if !others.is_empty() {
                            println!(
                                "file {f} is restored with its whole set {}: also {}",
                                s.id,
                                others.join(", ")
                            );
                        }
                    }
                    s
                }
                (None, None) => bail!("name a set, or --file F"),
            };
            let mut sink = output::ProgressSink::new(json);
            let on = &mut |p: &restore::Progress| sink.on(p);
            let (r, problems) = match (data, to) {
                (Some(d), None) => {
                    let db = open_or_context(&d)?;
                    let why = format!("copy set {} is being restored into {}", s.id, d.display());
                    for p in restore::mark_restoring(&db, &s, Some(why)) {
                        eprintln!("etp: warning: {p}");
                    }
                    let r = restore::restore_into(&db, &area, &s, on)?;
                    let problems = restore::mark_restoring(&db, &s, None);
                    db.close()?;
                    (r, problems)
                }
                (None, Some(t)) => (restore::restore_to_dir(&t, &area, &s, on)?, Vec::new()),
                _ => bail!("give --data DIR (the set's database, its node stopped) or --to DIR (a new database)"),
            };
            drop(sink);
            for p in problems {
                eprintln!("etp: warning: {p} (once it is reachable, etp replicate reset-error NAME clears the mark)");
            }
            print_restored(&r, json)?;
            Ok(Outcome::Ok)
        }
        CopyCommand::Regenerate {
            file,
            data,
            area,
            to_lsn,
            to_time,
            to_end,
            into,
            json,
        } => {
            let area = Area::open(&area.area)?;
            let target = match (to_lsn, to_time, to_end) {
                (Some(l), None, false) => Target::Lsn(Lsn(l)),
                (None, Some(t), false) => Target::Time(parse_time(&t)?),
                (None, None, true) => Target::End,
                _ => bail!("give exactly one of --to-lsn, --to-time, --to-end"),
            };
            // The log is read from the database's live segments and the
            // archived ones (`copy archive`) together, so a set older than
            // the live log still rolls forward.
            let dbid = propagator::Database::dbid_of(&data)
                .with_context(|| format!("cannot regenerate from {}", data.display()))?;
            let gathered = backup::recover_db::gather(
                &data,
                Some(&area),
                dbid,
                into.as_deref().unwrap_or(&data),
            )?;
            let mut sink = output::ProgressSink::new(json);
            let (r, db) = match &into {
                // Into a new database, the database itself is never opened
                // (one that will not open still regenerates): the log's end
                // is the last commit it holds, and damage outside the slice
                // the set needs does not matter.
                Some(dir) => {
                    let log = propagator::plog::survey::survey(
                        &propagator::medium::FsDir::new(gathered.dir()),
                        dbid,
                    )
                    .map_err(propagator::DbError::from)?;
                    let end = log
                        .damage
                        .as_ref()
                        .and_then(|d| d.lost_through())
                        .unwrap_or(log.last_good);
                    let src = restore::LogSource {
                        plog: std::sync::Arc::new(propagator::medium::FsDir::new(gathered.dir())),
                        dbid,
                        catalog: Default::default(),
                        last_lsn: end,
                        name: format!("database {dbid} ({} and its archived log)", data.display()),
                    };
                    let target = match target {
                        Target::End => Target::Lsn(end),
                        t => t,
                    };
                    // A new database is marked until the regenerate ends:
                    // killed, it does not open, and a regenerate into it
                    // again starts over.
                    let n = restore::NewDatabase::make(dir, dbid)?;
                    let r = restore::regenerate_from(
                        &src,
                        &area,
                        Fnr(file),
                        target,
                        &n.db,
                        true,
                        &mut |p| sink.on(p),
                    );
                    (n.finish(r)?, None)
                }
                None => {
                    let db = open_or_context(&data)?;
                    let src = restore::LogSource {
                        plog: std::sync::Arc::new(propagator::medium::FsDir::new(gathered.dir())),
                        ..restore::LogSource::of(&db)
                    };
                    let target = match target {
                        Target::End => Target::Lsn(db.last_lsn()),
                        t => t,
                    };
                    let r = restore::regenerate_from(
                        &src,
                        &area,
                        Fnr(file),
                        target,
                        &db,
                        false,
                        &mut |p| sink.on(p),
                    )?;
                    (r, Some(db))
                }
            };
            drop(sink);
            if json {
                output::json(&serde_json::to_value(&r)?);
            } else {
                for s in &r.skipped {
                    println!("passed over {s}");
                }
                println!(
                    "regenerated from set {} (LSN {}) with {} commits of the protection log, to LSN {}",
                    r.restored.set, r.from_lsn, r.commits, r.restored.lsn
                );
                print_restored(&r.restored, false)?;
            }
            if let Some(db) = db {
                db.close()?;
            }
            Ok(Outcome::Ok)
        }
        CopyCommand::Jobs(j) => jobs(j),
        CopyCommand::Archive {
            target,
            area,
            prune,
            json,
        } => {
            let area = Area::open(&area.area)?;
            let source = source_of(target)?;
            let archived = backup::archive::archive(&area, &source)?;
            for a in &archived {
                if json {
                    output::json(&serde_json::json!({ "event": "archived", "segment": a }));
                } else {
                    println!(
                        "archived segment {} (LSN {} to {})",
                        a.segment.no,
                        a.segment.first_lsn,
                        a.segment.last_lsn.unwrap_or_default()
                    );
                }
            }
            if archived.is_empty() && !json {
                println!("no closed segment left to archive");
            }
            if prune {
                let p = backup::archive::prune(&area, &source)?;
                if json {
                    output::json(&serde_json::json!({ "event": "pruned", "pruned": p }));
                } else {
                    println!("{}", p.note);
                }
            }
            if let Source::Local(db) = source {
                db.close()?;
            }
            Ok(Outcome::Ok)
        }
        CopyCommand::Backout {
            file,
            data,
            to_time,
            json,
        } => {
            let t = parse_time(&to_time)?;
            let db = open_or_context(&data)?;
            let mut sink = output::ProgressSink::new(json);
            let r = restore::backout(&db, Fnr(file), t, &mut |p| sink.on(p))?;
            drop(sink);
            if json {
                output::json(&serde_json::to_value(&r)?);
            } else {
                println!(
                    "backed out {} commits ({} records) of file {} to {to_time}",
                    r.commits, r.records, r.fnr
                );
                for f in &r.files {
                    println!(
                        "  file {} {}: {} records, digest {} ({} written, {} removed)",
                        f.fnr, f.name, f.count, f.digest, f.written, f.removed
                    );
                }
                println!(
                    "note: replicates of a backed-out master are ahead of it now: reinit them"
                );
            }
            db.close()?;
            Ok(Outcome::Ok)
        }
    }
}

fn print_restored(r: &restore::Restored, json: bool) -> anyhow::Result<()> {
    if json {
        output::json(&serde_json::to_value(r)?);
    } else {
        println!("restored set {} (files at LSN {})", r.set, r.lsn);
        for f in &r.files {
            println!(
                "  file {} {}: {} records, digest {} ({} written, {} removed)",
                f.fnr, f.name, f.count, f.digest, f.written, f.removed
            );
        }
    }
    Ok(())
}

fn jobs(c: crate::cli::JobsCommand) -> anyhow::Result<Outcome> {
    use crate::cli::JobsCommand;
    use backup::schedule::{self, Scheduler};
    use propagator::node::client::Client;
    use propagator::wire::{Request, Response};
    match c {
        JobsCommand::Set { file, node } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let s = Scheduler::new(&text, chrono::Utc::now())
                .with_context(|| format!("{} is refused", file.display()))?;
            match Client::connect(node.node)?
                .call(&Request::Copy(CopyRequest::CopyJobs { set: Some(text) }))?
            {
                Response::Text(_) => {}
                other => bail!("unexpected answer {other:?}"),
            }
            println!(
                "stored {} copy job(s) on node {}; next run at {}",
                s.def.job.len(),
                node.node,
                s.next_due().map(|t| t.to_rfc3339()).unwrap_or_default()
            );
            Ok(Outcome::Ok)
        }
        JobsCommand::Show { node, json } => {
            let text = schedule::fetch_jobs(node.node)?;
            if json {
                let (def, _) = schedule::parse_jobs(&text)?;
                output::json(&serde_json::to_value(def)?);
            } else if text.trim().is_empty() {
                println!("no copy jobs defined on node {}", node.node);
            } else {
                print!("{text}");
            }
            Ok(Outcome::Ok)
        }
        JobsCommand::Run { name, node, json } => {
            let text = schedule::fetch_jobs(node.node)?;
            let (def, _) = schedule::parse_jobs(&text)?;
            let job = def
                .job
                .iter()
                .find(|j| j.name == name)
                .with_context(|| format!("no copy job {name:?} on node {}", node.node))?;
            // The jobs write to the node's copy area (an `area` in them
            // names it, the node checked that).
            let root = match Client::connect(node.node)?
                .call(&Request::Read(propagator::wire::ReadRequest::Info))?
            {
                Response::Info(i) => i.copy_area.map(std::path::PathBuf::from),
                other => bail!("unexpected answer {other:?}"),
            }
            .or(def.area.clone())
            .with_context(|| {
                format!(
                    "node {} has no copy area for its jobs (start it with --copy-area DIR)",
                    node.node
                )
            })?;
            let area = Area::open(&root)?;
            let sources = schedule::node_sources(node.node)?;
            let bar = (!json && std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .then(indicatif::ProgressBar::new_spinner);
            if let Some(b) = &bar {
                b.enable_steady_tick(std::time::Duration::from_millis(120));
            }
            let now = chrono::Utc::now();
            let run = schedule::run_job(&area, job, now, now, &sources, &mut |m| {
                if json {
                    output::json(&serde_json::json!({ "event": "progress", "message": m }));
                } else if let Some(b) = &bar {
                    b.set_message(m.to_string());
                } else {
                    eprintln!("{m}");
                }
            });
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            if json {
                output::json(&serde_json::json!({ "event": "run", "run": run }));
            } else {
                print_run(&run);
            }
            Ok(if run.ok {
                Outcome::Ok
            } else {
                Outcome::Problem
            })
        }
        JobsCommand::History { area, json } => {
            let area = Area::open(&area.area)?;
            for r in schedule::history(&area)? {
                if json {
                    output::json(&serde_json::to_value(&r)?);
                } else {
                    print_run(&r);
                }
            }
            Ok(Outcome::Ok)
        }
    }
}

fn print_run(r: &backup::schedule::JobRun) {
    if r.ok && !r.done.is_empty() {
        println!(
            "{}  job {}  ok in {:.1} s  {}",
            r.started,
            r.job,
            r.seconds,
            r.done.join("; ")
        );
        return;
    }
    match &r.error {
        Some(e) if !r.ok => println!("{}  job {}  FAILED: {e}", r.started, r.job),
        _ => println!(
            "{}  job {}  ok in {:.1} s  sets {}{}{}",
            r.started,
            r.job,
            r.seconds,
            r.sets.join(", "),
            if r.dropped.is_empty() {
                String::new()
            } else {
                format!("  (retention dropped {})", r.dropped.join(", "))
            },
            r.error
                .as_ref()
                .map(|e| format!("  ({e})"))
                .unwrap_or_default()
        ),
    }
}
