//! `etp policy …`, `etp replicate …`, `etp confirm set`, `etp xref`,
//! `etp log plan-cleanup|cleanup`: the operator's view of replication.
//!
//! Every command takes `--node` of any node of the topology: the topology
//! it holds says which node feeds which replicate, and the command talks to
//! that one (or to all of them).

use super::ask as call;
use crate::cli::{
    CleanupArgs, ConfirmCommand, LoadArgs, PolicyCommand, ReplicateArgs, ReplicateCommand, XrefArgs,
};
use crate::output;
use crate::Outcome;
use anyhow::{anyhow, bail, Context};
use propagator::node::client::Client;
use propagator::node::control::Policy;
use propagator::topology::Valid;
use propagator::wire::{AdminRequest, OperationRequest};
use propagator::wire::{Health, ReplicaState};
use propagator::wire::{ReplicateAction, ReplicateReport, Request, Response, TaskReport};
use propagator::{DbId, Fnr, Seq};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The topology the node holds.
fn topology(node: SocketAddr) -> anyhow::Result<Valid> {
    let mut c = Client::connect(node)?;
    match c.call(&Request::Admin(AdminRequest::AdminExport))? {
        Response::Text(t) => Valid::parse(&t).map_err(|e| anyhow!("the node's topology: {e}")),
        other => bail!("unexpected answer {other:?}"),
    }
}

/// The nodes that run replication tasks.
fn task_nodes(v: &Valid) -> Vec<(DbId, SocketAddr)> {
    v.addresses
        .iter()
        .filter(|(db, _)| v.tasks_on(**db).iter().any(|(_, _, r)| !r.is_empty()))
        .map(|(d, a)| (*d, *a))
        .collect()
}

/// The node that feeds a replicate.
fn feeder_node(node: SocketAddr, name: &str) -> anyhow::Result<SocketAddr> {
    let v = topology(node)?;
    let rep = v
        .replicates
        .iter()
        .find(|r| r.def.name == name)
        .ok_or_else(|| {
            anyhow!(
                "the topology names no replicate {name:?} (it has: {})",
                v.replicates
                    .iter()
                    .map(|r| r.def.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
    v.addresses
        .get(&DbId(rep.def.master_database))
        .copied()
        .ok_or_else(|| {
            anyhow!(
                "the topology has no address for database {}",
                rep.def.master_database
            )
        })
}

fn reports_at(addr: SocketAddr) -> anyhow::Result<Vec<TaskReport>> {
    match call(addr, &Request::Operation(OperationRequest::ReplicateStatus))? {
        Response::Tasks(t) => Ok(t),
        other => bail!("unexpected answer {other:?}"),
    }
}

fn report_of(addr: SocketAddr, name: &str) -> anyhow::Result<ReplicateReport> {
    reports_at(addr)?
        .into_iter()
        .flat_map(|t| t.replicates)
        .find(|r| r.name == name)
        .ok_or_else(|| anyhow!("the node at {addr} does not feed replicate {name:?}"))
}

/// A replicate that needs the operator's attention.
fn is_problem(r: &ReplicateReport) -> bool {
    matches!(
        r.state,
        ReplicaState::Error | ReplicaState::Shunned | ReplicaState::Uninitialized
    ) || r.health == Health::Stalled
        || !r.gaps.is_empty()
}

fn secs(s: f64) -> String {
    if s < 10.0 {
        format!("{s:.1} s")
    } else {
        format!("{s:.0} s")
    }
}

fn print_reports(reps: &[(String, ReplicateReport)], json: bool) {
    if json {
        for (master, r) in reps {
            let mut v = serde_json::to_value(r).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.insert("master".into(), master.clone().into());
            }
            output::json(&v);
        }
        return;
    }
    let rows: Vec<Vec<String>> = reps
        .iter()
        .map(|(master, r)| {
            let mut state = match &r.reason {
                Some(why) if r.state != ReplicaState::Online => format!("{} ({why})", r.state),
                _ => r.state.to_string(),
            };
            if let Some(d) = &r.sync_down {
                state.push_str(&format!("; sync-down {d}"));
            }
            if let Some(h) = &r.held {
                let what = match h.hold.kind {
                    propagator::catalog::HoldKind::Restored => "locked",
                    _ => "no current reads",
                };
                state.push_str(&match h.release_at {
                    Some(at) => format!("; {what} until it confirms seq {at}"),
                    None => format!("; {what}"),
                });
            }
            let lag = format!(
                "{} rec, {}{} B, {}",
                r.lag_records,
                if r.lag_bytes_exact { "" } else { "~" },
                r.lag_bytes,
                secs(r.lag_s)
            );
            let health = if r.health == Health::Stalled {
                format!("stalled for {}", secs(r.stalled_s))
            } else {
                r.health.to_string()
            };
            let load = r.load.as_ref().map_or(String::new(), |l| {
                format!(
                    "loading {}/{} ({:.0} rows/s{})",
                    l.scanned,
                    l.total,
                    l.rows_per_s,
                    l.eta_s
                        .map_or(String::new(), |e| format!(", eta {}", secs(e)))
                )
            });
            vec![
                r.name.clone(),
                master.clone(),
                r.kind.to_string(),
                state,
                r.confirmed_seq.to_string(),
                lag,
                health,
                if r.gaps.is_empty() {
                    r.consistency.to_string()
                } else {
                    format!(
                        "{} ({})",
                        r.consistency,
                        r.gaps
                            .iter()
                            .map(|g| format!("{}..{}", g.from, g.to))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                },
                load,
            ]
        })
        .collect();
    output::table(
        &[
            "replicate",
            "master",
            "kind",
            "state",
            "confirmed",
            "lag",
            "health",
            "consistency",
            "load",
        ],
        &rows,
    );
}

pub fn policy(c: PolicyCommand) -> anyhow::Result<Outcome> {
    let (node, set, json) = match c {
        PolicyCommand::Set { mode, node, json } => {
            let p: Policy = mode.parse().map_err(anyhow::Error::msg)?;
            (node, Some(p), json)
        }
        PolicyCommand::Show { node, json } => (node, None, json),
    };
    let v = topology(node.node)?;
    let mut rows = Vec::new();
    for (db, addr) in &v.addresses {
        let got = match call(*addr, &Request::Operation(OperationRequest::Policy { set })) {
            Ok(Response::Policy(p)) => Ok(p),
            Ok(Response::Error { message, .. }) => Err(message),
            Ok(other) => Err(format!("unexpected answer {other:?}")),
            Err(e) => Err(format!("{e:#}")),
        };
        if json {
            output::json(&match &got {
                Ok(p) => {
                    serde_json::json!({"database": db.0, "address": addr.to_string(), "policy": p})
                }
                Err(e) => {
                    serde_json::json!({"database": db.0, "address": addr.to_string(), "error": e})
                }
            });
        }
        rows.push((db, addr, got));
    }
    if !json {
        output::table(
            &["database", "address", "policy"],
            &rows
                .iter()
                .map(|(d, a, g)| {
                    vec![
                        d.to_string(),
                        a.to_string(),
                        match g {
                            Ok(p) => p.to_string(),
                            Err(e) => format!("error: {e}"),
                        },
                    ]
                })
                .collect::<Vec<_>>(),
        );
    }
    if let Some((d, _, Err(e))) = rows.iter().find(|r| r.2.is_err()) {
        bail!("database {d}: {e}");
    }
    Ok(Outcome::Ok)
}

pub fn run(c: ReplicateCommand) -> anyhow::Result<Outcome> {
    match c {
        ReplicateCommand::Status { name, node, json } => {
            let v = topology(node.node)?;
            let mut all = Vec::new();
            let mut warnings = Vec::new();
            for (_, addr) in task_nodes(&v) {
                for t in reports_at(addr).with_context(|| format!("asking the node at {addr}"))? {
                    warnings.extend(t.warnings);
                    for r in t.replicates {
                        if name.as_ref().is_none_or(|n| *n == r.name) {
                            all.push((t.master_name.clone(), r));
                        }
                    }
                }
            }
            if let Some(n) = &name {
                if all.is_empty() {
                    bail!("no node feeds a replicate named {n:?}");
                }
            }
            print_reports(&all, json);
            for w in &warnings {
                if json {
                    output::json(&serde_json::json!({ "warning": w }));
                } else {
                    println!("warning: {w}");
                }
            }
            Ok(
                if !warnings.is_empty() || all.iter().any(|(_, r)| is_problem(r)) {
                    Outcome::Problem
                } else {
                    Outcome::Ok
                },
            )
        }
        ReplicateCommand::Errors(a) => {
            let addr = feeder_node(a.node.node, &a.name)?;
            let errs = match action(addr, &a.name, ReplicateAction::Errors)? {
                Response::Errors(e) => e,
                other => bail!("unexpected answer {other:?}"),
            };
            if a.json {
                for e in &errs {
                    output::json(&serde_json::to_value(e)?);
                }
            } else if errs.is_empty() {
                println!("replicate {}: the error log is empty", a.name);
            } else {
                let t = |us: i64| {
                    chrono::DateTime::from_timestamp_micros(us)
                        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                        .unwrap_or_default()
                };
                output::table(
                    &["first", "last", "times", "kind", "reason"],
                    &errs
                        .iter()
                        .map(|e| {
                            vec![
                                t(e.first_us),
                                t(e.last_us),
                                e.repeats.to_string(),
                                e.kind.clone(),
                                e.reason.clone(),
                            ]
                        })
                        .collect::<Vec<_>>(),
                );
            }
            Ok(Outcome::Ok)
        }
        ReplicateCommand::ResetError(a) => simple(a, ReplicateAction::ResetError),
        ReplicateCommand::Shun { replicate, reason } => {
            simple(replicate, ReplicateAction::Shun { reason })
        }
        ReplicateCommand::Unshun(a) => simple(a, ReplicateAction::Unshun),
        ReplicateCommand::Init(a) => load(a, false, true),
        ReplicateCommand::Reinit { load: a, scoped } => load(a, true, !scoped),
        ReplicateCommand::Verify {
            replicate: a,
            max_isns,
        } => {
            let addr = feeder_node(a.node.node, &a.name)?;
            let v = match action(addr, &a.name, ReplicateAction::Verify { max_isns })? {
                Response::Verify(v) => v,
                other => bail!("unexpected answer {other:?}"),
            };
            if a.json {
                output::json(&serde_json::json!({
                    "replicate": v.replicate, "seq": v.seq.0, "equal": v.equal,
                    "expected_count": v.expected_count, "expected_digest": v.expected_digest.to_string(),
                    "count": v.count, "digest": v.digest.to_string(),
                    "ranges_checked": v.ranges_checked, "ranges_differing": v.ranges_differing,
                    "differences": v.differences.iter().map(|(i, k)| serde_json::json!({"isn": i.0, "kind": k})).collect::<Vec<_>>(),
                    "truncated": v.truncated,
                }));
            } else if v.equal {
                println!(
                    "replicate {} equals its master as of seq {} ({} records, digest {})",
                    v.replicate, v.seq, v.count, v.digest
                );
            } else {
                println!(
                    "replicate {} DIFFERS from its master as of seq {}: it holds {} records (digest {}), the master's view {} (digest {}); {} of {} ranges differ",
                    v.replicate, v.seq, v.count, v.digest, v.expected_count, v.expected_digest,
                    v.ranges_differing, v.ranges_checked
                );
                for (isn, kind) in &v.differences {
                    println!("  isn {isn}: {kind}");
                }
                if v.truncated {
                    println!("  … more (raise --max-isns)");
                }
            }
            Ok(if v.equal {
                Outcome::Ok
            } else {
                Outcome::Problem
            })
        }
    }
}

pub(super) use maintenance::recovery::replicate_action as action;

fn simple(a: ReplicateArgs, act: ReplicateAction) -> anyhow::Result<Outcome> {
    let addr = feeder_node(a.node.node, &a.name)?;
    action(addr, &a.name, act)?;
    let r = report_of(addr, &a.name)?;
    print_reports(&[(String::new(), r)], a.json);
    Ok(Outcome::Ok)
}

/// Orders a load and follows it (progress bar, or JSON progress events)
/// until the replicate is online and current.
fn load(a: LoadArgs, reinit: bool, rewrite: bool) -> anyhow::Result<Outcome> {
    let name = a.replicate.name.clone();
    let json = a.replicate.json;
    let addr = feeder_node(a.replicate.node.node, &name)?;
    let ordered_us = chrono::Utc::now().timestamp_micros();
    action(
        addr,
        &name,
        ReplicateAction::Init {
            from: a.from.clone(),
            reinit,
            rewrite,
            chunk: a.chunk,
        },
    )?;
    if a.no_wait {
        let r = report_of(addr, &name)?;
        print_reports(&[(String::new(), r)], json);
        return Ok(Outcome::Ok);
    }
    let bar = indicatif::ProgressBar::new(0);
    if json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:20} [{bar:40}] {pos}/{len} master records ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(format!("loading {name}"));
    let started = Instant::now();
    let mut last_event = Instant::now();
    let mut missed = 0;
    loop {
        let r = match report_of(addr, &name) {
            Ok(r) => {
                missed = 0;
                r
            }
            // The feeding node may be restarting: keep following for a while.
            Err(e) => {
                missed += 1;
                if missed > 120 {
                    return Err(e.context("the feeding node stopped answering"));
                }
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
        };
        if let Some(l) = &r.load {
            bar.set_length(l.total);
            bar.set_position(l.scanned.min(l.total));
            if json && last_event.elapsed() >= Duration::from_secs(1) {
                last_event = Instant::now();
                output::json(&serde_json::json!({
                    "event": "progress", "replicate": name, "scanned": l.scanned, "total": l.total,
                    "loaded": l.loaded, "chunks_this_run": l.chunks_this_run,
                    "rows_per_s": l.rows_per_s, "eta_s": l.eta_s,
                }));
            }
        }
        let finished = r
            .last_load
            .as_ref()
            .is_some_and(|l| l.finished_us >= ordered_us);
        if r.state == ReplicaState::Error {
            bar.abandon();
            if json {
                output::json(
                    &serde_json::json!({"event": "error", "replicate": name, "reason": r.reason}),
                );
            } else {
                eprintln!(
                    "etp: replicate {name} is in error: {}",
                    r.reason.unwrap_or_default()
                );
            }
            return Ok(Outcome::Problem);
        }
        if finished && r.state == ReplicaState::Online {
            bar.finish_and_clear();
            let l = r.last_load.clone();
            let secs = started.elapsed().as_secs_f64();
            if json {
                output::json(&serde_json::json!({
                    "event": "done", "replicate": name, "seconds": secs,
                    "load": l, "confirmed_seq": r.confirmed_seq.0, "lag_records": r.lag_records,
                }));
            } else if let Some(l) = l {
                println!(
                    "replicate {name} loaded from {} as of seq {}: {} records ({} written, {} removed, {} already equal) in {} chunks ({} by the last run, resumed from isn {}); online, confirmed seq {}, {secs:.1} s",
                    l.source, l.snapshot, l.records, l.written, l.removed, l.kept, l.chunks,
                    l.chunks_last_run, l.resumed_from, r.confirmed_seq
                );
            }
            return Ok(Outcome::Ok);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn confirm(c: ConfirmCommand) -> anyhow::Result<Outcome> {
    let ConfirmCommand::Set {
        replicate: a,
        seq,
        reason,
    } = c;
    let addr = feeder_node(a.node.node, &a.name)?;
    action(
        addr,
        &a.name,
        ReplicateAction::ConfirmSet {
            seq: Seq(seq),
            reason,
        },
    )?;
    let r = report_of(addr, &a.name)?;
    if !a.json {
        if let Some(g) = r.gaps.last() {
            println!(
                "replicate {}: confirmation set to seq {seq}; gap {}..{} recorded ({})",
                a.name, g.from, g.to, g.reason
            );
        }
    }
    print_reports(&[(String::new(), r)], a.json);
    Ok(Outcome::Ok)
}

pub fn xref(a: XrefArgs) -> anyhow::Result<Outcome> {
    let v = topology(a.node.node)?;
    let mut last_err = None;
    let mut found = Vec::new();
    for (_, addr) in task_nodes(&v) {
        let req = Request::Operation(OperationRequest::Xref {
            master: a.master.map(Fnr),
            id: a.id.clone(),
            seq: a.seq.map(Seq),
        });
        match call(addr, &req)? {
            Response::Xref(x) => found.extend(x),
            Response::Error { message, .. } => last_err = Some(message),
            other => bail!("unexpected answer {other:?}"),
        }
    }
    if found.is_empty() {
        bail!(
            "{}",
            last_err.unwrap_or_else(|| "no node runs a replication task".into())
        );
    }
    // A seq is a position in one master's log: seq 7 of two masters is two
    // different transactions.
    let lsns: std::collections::BTreeSet<_> = found.iter().map(|x| x.lsn).collect();
    if a.seq.is_some() && lsns.len() > 1 {
        bail!(
            "seq {} is in the logs of {} masters (files {}), as different transactions: name one with --master",
            a.seq.unwrap_or_default(),
            found.len(),
            found.iter().map(|x| x.master.to_string()).collect::<Vec<_>>().join(", ")
        );
    }
    // Every master the transaction wrote: one report (one JSON line) each.
    for x in &found {
        if a.json {
            output::json(&serde_json::to_value(x)?);
            continue;
        }
        println!(
            "transaction {} on master {}: seq {}..{}, lsn {}, {}",
            x.client_id.as_deref().unwrap_or("(no client id)"),
            x.master,
            x.first_seq,
            x.last_seq,
            x.lsn,
            chrono::DateTime::from_timestamp_micros(x.time_us)
                .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                .unwrap_or_default()
        );
        output::table(
            &["replicate", "status", "confirmed"],
            &x.replicates
                .iter()
                .map(|r| {
                    vec![
                        r.replicate.clone(),
                        r.status.clone(),
                        r.confirmed_seq.to_string(),
                    ]
                })
                .collect::<Vec<_>>(),
        );
    }
    Ok(Outcome::Ok)
}

pub fn cleanup(a: CleanupArgs, execute: bool) -> anyhow::Result<Outcome> {
    let v = topology(a.node.node)?;
    let mut warn = false;
    let area = a.area.as_deref().map(backup::Area::open).transpose()?;
    let sets = match &area {
        Some(ar) => ar.list()?,
        None => Vec::new(),
    };
    for (dbid, addr) in task_nodes(&v) {
        // Each node reads its cleanup horizon from its own copy area: say
        // so when --area names another.
        if let Some(given) = &a.area {
            let node_area = match call(addr, &Request::Read(propagator::wire::ReadRequest::Info))? {
                Response::Info(i) => i.copy_area,
                _ => None,
            };
            let same = node_area
                .as_deref()
                .is_some_and(|n| maintenance::same_dir(std::path::Path::new(n), given));
            if !same {
                eprintln!(
                    "note: node {addr} bounds its cleanup by its own copy area ({}), not --area {} (which only names the replicate copies a cleanup would strand)",
                    node_area.as_deref().unwrap_or("none: nothing is deleted"),
                    given.display()
                );
            }
        }
        let req = Request::Operation(OperationRequest::LogCleanup {
            master: a.master.map(Fnr),
            until: a.until.map(Seq),
            execute,
        });
        let plans = match call(addr, &req)? {
            Response::Cleanup(p) => p,
            Response::Error { message, .. } if a.master.is_some() => {
                let _ = message;
                continue;
            }
            Response::Error { message, .. } => bail!("{message}"),
            other => bail!("unexpected answer {other:?}"),
        };
        for mut p in plans {
            // Replicate copy sets whose confirmation lies before the
            // requested point could no longer catch up after a restore.
            if let Some(u) = p.requested {
                for s in &sets {
                    for c in &s.confirmed {
                        if DbId(c.master_db) == dbid && Fnr(c.master) == p.master && Seq(c.seq) < u
                        {
                            p.would_orphan_copies.push(format!(
                                "set {} (replicate {} confirmed {}): a restore of it could no longer catch up",
                                s.id, c.replicate, c.seq
                            ));
                        }
                    }
                }
            }
            warn |= p.bytes > p.warn_bytes
                || !p.would_strand.is_empty()
                || !p.would_orphan_copies.is_empty();
            if a.json {
                output::json(&serde_json::to_value(&p)?);
                continue;
            }
            println!(
                "master {} ({}): log seq {}..{}, {} records, {} bytes",
                p.master, p.master_name, p.first_seq, p.last_seq, p.records, p.bytes
            );
            for (name, seq, from) in &p.replicates {
                println!("  replicate {name}: durably confirmed seq {seq} ({from})");
            }
            println!(
                "  copy horizon: {}",
                p.copy_horizon.map_or(
                    "none (no catalogued copy of the master)".into(),
                    |s| format!("seq {s}")
                )
            );
            println!(
                "  may delete: {}",
                p.safe_until
                    .map_or("nothing".into(), |s| format!("seq {} to {s}", p.first_seq))
            );
            if let Some(u) = p.requested {
                println!("  cleaning up to seq {u} would:");
                if p.would_strand.is_empty() && p.would_orphan_copies.is_empty() {
                    println!("    strand no replicate and no copy");
                }
                for s in &p.would_strand {
                    println!("    strand {s}");
                }
                for c in &p.would_orphan_copies {
                    println!("    orphan copy {c}");
                }
            }
            for n in &p.notes {
                println!("  {n}");
            }
            if execute {
                println!("  deleted: {} records", p.deleted);
            }
        }
    }
    Ok(if warn { Outcome::Problem } else { Outcome::Ok })
}
