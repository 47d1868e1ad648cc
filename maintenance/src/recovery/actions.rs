//! One executor per action: each step of a bound plan carried out through
//! the nodes ([`Exec::step`] matches [`Action`] exhaustively), and the
//! verifications that end a plan.

use super::journal::*;
use super::plan::*;
use super::probes::LiveProbes;
use super::RunOptions;
use super::{ask as call, replicate_action as replicate};
use anyhow::{bail, Context};
use propagator::wire::ReplicaState;
use propagator::wire::{OperationRequest, ReadRequest};
use propagator::wire::{RecoveryOp, ReplicateAction, Request, Response, TaskAction};
use propagator::{DbId, Fnr, Isn};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

pub(crate) fn text(r: Response) -> String {
    match r {
        Response::Text(t) => t,
        other => format!("{other:?}"),
    }
}

/// What `await_link` and the verifications poll with.
pub(crate) fn wait_until<T>(
    what: &str,
    limit: Duration,
    mut f: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let start = Instant::now();
    let mut last_err = None;
    loop {
        match f() {
            Ok(Some(t)) => return Ok(t),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if start.elapsed() > limit {
            bail!(
                "{what}: not reached within {} s{}",
                limit.as_secs(),
                last_err
                    .map(|e| format!(" (last: {e:#})"))
                    .unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub(crate) fn masters_of(targets: &[Target]) -> Vec<(SocketAddr, Fnr)> {
    let mut out: Vec<(SocketAddr, Fnr)> = Vec::new();
    for t in targets {
        let x = match t {
            Target::Master { addr, file, .. } => (*addr, Fnr(*file)),
            Target::Replicate { feeder, master, .. } => (*feeder, Fnr(*master)),
            _ => continue,
        };
        if !out.contains(&x) {
            out.push(x);
        }
    }
    out
}

pub(crate) fn task_of(
    addr: SocketAddr,
    master: Fnr,
) -> anyhow::Result<propagator::wire::TaskReport> {
    match call(addr, &Request::Operation(OperationRequest::TaskStatus))? {
        Response::Tasks(ts) => ts
            .into_iter()
            .find(|t| t.master == master)
            .with_context(|| format!("node {addr} runs no task for master file {master}")),
        other => bail!("node {addr} answered {other:?}"),
    }
}

/// The replicates a step about masters or replicates covers.
pub(crate) fn replicates_in(targets: &[Target], topo: &LiveProbes) -> Vec<Target> {
    let mut out = Vec::new();
    for t in targets {
        match t {
            Target::Replicate { .. } => out.push(t.clone()),
            Target::Master { db, file, .. } => {
                for r in topo
                    .reps
                    .iter()
                    .filter(|r| r.master_db == DbId(*db) && r.master == Fnr(*file))
                {
                    out.push(rep_target(r, topo));
                }
            }
            _ => {}
        }
    }
    out
}

/// Orders a load of replicate `name` and follows it until it is online.
pub(crate) fn load(
    feeder: SocketAddr,
    name: &str,
    from: Option<String>,
    limit: Duration,
) -> anyhow::Result<String> {
    let ordered = chrono::Utc::now().timestamp_micros();
    // A restore mark would keep the feeder from starting the load.
    replicate(feeder, name, ReplicateAction::Restoring { why: None })?;
    replicate(
        feeder,
        name,
        ReplicateAction::Init {
            from,
            reinit: true,
            rewrite: true,
            chunk: None,
        },
    )?;
    wait_until(&format!("load of {name}"), limit, || {
        let t = match call(
            feeder,
            &Request::Operation(OperationRequest::ReplicateStatus),
        )? {
            Response::Tasks(ts) => ts,
            _ => return Ok(None),
        };
        let Some(r) = t
            .iter()
            .flat_map(|t| &t.replicates)
            .find(|r| r.name == name)
        else {
            bail!("no task reports replicate {name}");
        };
        if let Some(l) = r.last_load.as_ref().filter(|l| l.finished_us >= ordered) {
            if r.state == ReplicaState::Online {
                return Ok(Some(format!(
                    "{name} loaded from {} as of seq {}: {} records",
                    l.source, l.snapshot, l.records
                )));
            }
        }
        if r.state == ReplicaState::Error && r.load.is_none() {
            bail!(
                "replicate {name} is in error: {}",
                r.reason.clone().unwrap_or_default()
            );
        }
        Ok(None)
    })
}

pub(crate) struct Exec<'a> {
    pub(crate) opts: &'a RunOptions,
    pub(crate) probes: &'a LiveProbes,
    pub(crate) plan: &'a BoundPlan,
}

impl Exec<'_> {
    pub(crate) fn area(&self) -> anyhow::Result<String> {
        match &self.opts.sources.area {
            Some(a) => Ok(std::fs::canonicalize(a)
                .unwrap_or_else(|_| a.clone())
                .display()
                .to_string()),
            None => bail!("this step needs the copy area: give --area DIR"),
        }
    }

    pub(crate) fn restore(
        &self,
        step: usize,
        b: &Bound,
        regenerate: bool,
        journal: &mut RunJournal,
    ) -> anyhow::Result<String> {
        let area = self.area()?;
        let mut targets = Vec::new();
        for t in &b.targets {
            let (addr, file) = match t {
                Target::Master { addr, file, .. } => (*addr, Fnr(*file)),
                Target::Replicate { addr, file, .. } => (*addr, Fnr(*file)),
                Target::Admin { addr, file, .. } => (*addr, Fnr(*file)),
                other => bail!("cannot restore {}", other.describe()),
            };
            let info = match call(addr, &Request::Read(ReadRequest::Info))? {
                Response::Info(i) => i,
                other => bail!("node {addr} answered {other:?}"),
            };
            // Each node restores from its own copy area: before anything
            // is restored, every one must be the area this plan chose its
            // sets from (the nodes of a plan share one machine's paths).
            let same = info
                .copy_area
                .as_deref()
                .is_some_and(|a| crate::same_dir(Path::new(a), Path::new(&area)));
            if !same {
                bail!(
                    "node {addr} restores from its own copy area ({}), not from --area {area}: start it with --copy-area {area}",
                    info.copy_area.as_deref().unwrap_or("none")
                );
            }
            targets.push((t, addr, file, info));
        }
        let mut out = Vec::new();
        for (t, addr, file, info) in targets {
            let key = addr.to_string();
            if journal.lsn_before(&key).is_none() {
                let lsn = info.last_lsn.0;
                journal.append(Line::Started {
                    step,
                    addr: key.clone(),
                    lsn,
                })?;
            }
            // Roll forward to where the node was before this plan's first
            // restore on it, so no restore's own commits are replayed.
            let upto = if regenerate {
                Some(propagator::Lsn(
                    journal
                        .lsn_before(&key)
                        .context("no starting LSN journaled")?,
                ))
            } else {
                None
            };
            let r = call(
                addr,
                &Request::Recovery(RecoveryOp::Restore {
                    file,
                    regenerate,
                    upto,
                }),
            )?;
            let v: serde_json::Value = serde_json::from_str(&text(r))
                .context("the node's answer to a restore is not JSON")?;
            let set = v["restored"]["set"].as_str().unwrap_or("?").to_string();
            if let Target::Master { db, file, log, .. } = t {
                journal.append(Line::Level {
                    db: *db,
                    file: *file,
                    seq: log_level(addr, Fnr(*log))?,
                })?;
            }
            out.push(match v["commits"].as_u64() {
                Some(n) => format!(
                    "{}: copy set {set} restored and rolled forward by {n} commit(s) to LSN {}",
                    t.describe(),
                    v["restored"]["lsn"]
                ),
                None => format!("{}: copy set {set} restored", t.describe()),
            });
        }
        Ok(out.join("; "))
    }

    pub(crate) fn step(
        &self,
        i: usize,
        b: &Bound,
        journal: &mut RunJournal,
    ) -> anyhow::Result<String> {
        let Some(action) = Action::parse(&b.action) else {
            bail!(
                "action `{}` is not carried out by this engine: do it by hand, then run with --confirm",
                b.action
            );
        };
        match action {
            Action::StopTasks => self.stop_tasks(b),
            Action::QuiesceMaster => self.quiesce(b, true),
            Action::ResumeMaster => self.quiesce(b, false),
            Action::AwaitLink => self.await_link(b),
            Action::RestoreCopySet | Action::RestoreAdminFromCopy => {
                self.restore(i, b, false, journal)
            }
            Action::RegenerateToEnd | Action::RebuildLogToMasterLevel => {
                self.restore(i, b, true, journal)
            }
            Action::VerifyMasterLog => self.verify_master_logs(b),
            Action::RefreshLog => self.rewrite_master_level(b, true, journal),
            Action::RaiseIncarnation => self.rewrite_master_level(b, false, journal),
            Action::TakeCopySet => self.take_copy_set(b),
            Action::ReloadReplicateFromMaster => self.reload_replicates(b, false),
            Action::ReloadReplicateFromFullReplicate => self.reload_replicates(b, true),
            Action::ReinitReplicate => self.reinit_replicates(b),
            Action::RerunFailedTransactions => self.rerun_journaled(b),
            Action::ReapplyRecoverableTransactions => self.reapply_recoverable(b, journal),
            Action::RecordGap => self.record_gap(b, journal),
            Action::RecordLostSeqs => self.record_lost_seqs(b, journal),
            Action::ReinstallTopology => {
                let text = &self.probes.topology.text;
                propagator::node::apply::apply_topology_blocking(text)
                    .map_err(|e| anyhow::anyhow!("applying the topology again: {}", e.message))
            }
            Action::RestoreAdminFromExport => self.restore_admin_from_export(b),
            Action::VerifyDefinitions => verify_definitions(self.probes),
            Action::ResetError => self.reset_errors(b),
            Action::RestartTasks => self.restart_tasks(b),
            Action::VerifyReplicates => self.verify_replicates(b),
            Action::RestoreMasterFromFullReplicate => {
                self.restore_master_from_full_replicate(i, b, journal)
            }
            Action::PromoteFullReplicate => self.promote(b, journal),
            Action::RestartDatabases | Action::RecoverDatabase | Action::ManualIntervention => {
                bail!("an operator step cannot be executed")
            }
        }
    }

    /// Stops the feeding of the targets: a master's task feeders, or a replicate unit marked restoring (not fed).
    fn stop_tasks(&self, b: &Bound) -> anyhow::Result<String> {
        let mut out = Vec::new();
        for t in &b.targets {
            match t {
                Target::Replicate { name, feeder, .. } => {
                    replicate(
                        *feeder,
                        name,
                        ReplicateAction::Restoring {
                            why: Some("etp recover run".into()),
                        },
                    )?;
                    out.push(format!("{name} not fed"));
                }
                Target::Master {
                    addr, file, name, ..
                } => {
                    // A node without a topology (its administration
                    // file damaged) runs no task to stop.
                    let runs = match call(*addr, &Request::Operation(OperationRequest::TaskStatus))?
                    {
                        Response::Tasks(ts) => ts.iter().any(|t| t.master == Fnr(*file)),
                        other => bail!("node {addr} answered {other:?}"),
                    };
                    if runs {
                        call(
                            *addr,
                            &Request::Operation(OperationRequest::TaskControl {
                                master: Some(Fnr(*file)),
                                action: TaskAction::Stop,
                            }),
                        )?;
                        out.push(format!("task of {name} stopped"));
                    } else {
                        out.push(format!("task of {name}: none running"));
                    }
                }
                other => bail!("cannot stop the tasks of {}", other.describe()),
            }
        }
        Ok(out.join("; "))
    }

    /// Makes the masters' nodes refuse client updates (`on`) or accept them again.
    fn quiesce(&self, b: &Bound, on: bool) -> anyhow::Result<String> {
        for m in b.masters() {
            call(m.addr, &Request::Recovery(RecoveryOp::Quiesce { on }))?;
        }
        Ok(format!(
            "client updates {}",
            if on { "refused" } else { "accepted again" }
        ))
    }

    /// Waits until every replicate of the target masters confirms their level again (the links came back).
    fn await_link(&self, b: &Bound) -> anyhow::Result<String> {
        let limit = self.opts.wait;
        let mut dbs: Vec<(u32, SocketAddr)> = Vec::new();
        for m in b.masters() {
            dbs.push((m.db, m.addr));
            for r in self
                .probes
                .reps
                .iter()
                .filter(|r| r.master_db == DbId(m.db) && r.master == Fnr(m.file))
            {
                dbs.push((r.db.0, r.addr));
            }
        }
        let started = Instant::now();
        wait_until("the links", limit, || {
            for (_, a) in &dbs {
                if call(*a, &Request::Read(ReadRequest::Info)).is_err() {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        })?;
        Ok(format!(
            "databases {} answer (waited {:.1} s)",
            dbs.iter()
                .map(|d| d.0.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            started.elapsed().as_secs_f64()
        ))
    }

    /// Checks each target log's last record against its master's count and digest.
    fn verify_master_logs(&self, b: &Bound) -> anyhow::Result<String> {
        let mut out = Vec::new();
        for m in b.masters() {
            out.push(verify_master_log(m.addr, Fnr(m.file), Fnr(m.log), m.name)?);
        }
        Ok(out.join("; "))
    }

    /// Refreshes a master's log at the master's level (`refresh`), or raises
    /// the master's incarnation.
    fn rewrite_master_level(
        &self,
        b: &Bound,
        refresh: bool,
        journal: &mut RunJournal,
    ) -> anyhow::Result<String> {
        let mut out = Vec::new();
        for m in b.masters() {
            let op = if refresh {
                RecoveryOp::RefreshLog {
                    master: Fnr(m.file),
                    at: None,
                }
            } else {
                RecoveryOp::RaiseIncarnation {
                    master: Fnr(m.file),
                }
            };
            out.push(text(call(m.addr, &Request::Recovery(op))?));
            if refresh {
                journal.append(Line::Level {
                    db: m.db,
                    file: m.file,
                    seq: log_level(m.addr, Fnr(m.log))?,
                })?;
            }
        }
        Ok(out.join("; "))
    }

    /// Takes a copy set of each target master and its log, through its node.
    fn take_copy_set(&self, b: &Bound) -> anyhow::Result<String> {
        let area = backup::Area::open(Path::new(&self.area()?))?;
        let mut out = Vec::new();
        for m in b.masters() {
            let taken = backup::take::take_job(
                &area,
                None,
                &[backup::take::Ask {
                    source: backup::take::Source::Node(m.addr),
                    files: vec![Fnr(m.file)],
                }],
                &mut |_| {},
            )?;
            for x in taken {
                out.push(format!(
                    "copy set {} of {} at LSN {}",
                    x.set.id, m.name, x.set.lsn
                ));
            }
        }
        Ok(out.join("; "))
    }

    /// Reloads each target replicate online (from the master or a full replicate) and follows it until online.
    fn reload_replicates(&self, b: &Bound, from_full: bool) -> anyhow::Result<String> {
        let limit = self.opts.wait;
        let from = match (from_full, b.sources.first()) {
            (false, _) => None,
            (true, Some(Target::Replicate { name, .. })) => Some(name.clone()),
            (true, _) => bail!("no full replicate to load from"),
        };
        let mut out = Vec::new();
        for t in &b.targets {
            if let Target::Replicate { name, feeder, .. } = t {
                if from.as_ref() == Some(name) {
                    out.push(format!("{name} is the source: left as it is"));
                    continue;
                }
                out.push(load(*feeder, name, from.clone(), limit)?);
            }
        }
        Ok(out.join("; "))
    }

    /// A partial replicate is already selected and projected by its load: verifies it against its master.
    fn reinit_replicates(&self, b: &Bound) -> anyhow::Result<String> {
        let mut out = Vec::new();
        for t in &b.targets {
            if let Target::Replicate {
                name,
                feeder,
                partial,
                ..
            } = t
            {
                if !partial {
                    out.push(format!("{name} is full: nothing to reinitialize"));
                    continue;
                }
                // The load projected and selected every record; prove it.
                out.push(verify_one(*feeder, name)?);
            }
        }
        Ok(out.join("; "))
    }

    /// C4.2 and C4.7: re-applies to each target master the transactions
    /// its own log still holds whole after the level this plan set it back
    /// to (before the plan's first restore on its node), then reruns the
    /// client journal's pending ones. Resumable: a transaction re-applied
    /// by an interrupted attempt is found committed, not applied twice.
    fn reapply_recoverable(&self, b: &Bound, journal: &mut RunJournal) -> anyhow::Result<String> {
        let mut out = Vec::new();
        for m in b.masters() {
            let key = m.addr.to_string();
            let (Some(level), Some(upto)) =
                (journal.level_after(m.db, m.file), journal.lsn_before(&key))
            else {
                out.push(format!(
                    "{}: not set back by a restore in this plan: its log holds nothing to re-apply",
                    m.name
                ));
                continue;
            };
            let r = call(
                m.addr,
                &Request::Recovery(RecoveryOp::Reapply {
                    master: Fnr(m.file),
                    level: propagator::Seq(level),
                    upto: propagator::Lsn(upto),
                }),
            )?;
            let f: propagator::reapply::FromLog = serde_json::from_str(&text(r))
                .context("the node's answer to a re-apply is not a re-apply report")?;
            let seqs = f.recovered_seqs();
            if !seqs.is_empty() {
                journal.append(Line::Reapplied {
                    db: m.db,
                    file: m.file,
                    seqs: seqs.iter().map(|(a, z)| (a.0, z.0)).collect(),
                })?;
            }
            out.push(describe_reapplied(m.name, &f));
        }
        out.push(self.rerun_journaled(b)?);
        Ok(out.join("; "))
    }

    /// Reruns the client journal's pending transactions, exactly once.
    fn rerun_journaled(&self, b: &Bound) -> anyhow::Result<String> {
        let limit = self.opts.wait;
        let Some(dir) = &self.opts.sources.journal else {
            return Ok("no client journal given (--journal DIR): nothing to rerun".into());
        };
        let Some(Target::Master { addr, .. }) = b.targets.first() else {
            bail!("no master to rerun on");
        };
        let mut sink = Vec::new();
        let end = crate::journal::exec(
            dir,
            &crate::journal::ExecOptions {
                node: *addr,
                retry_for: limit,
                rerun_only: true,
                exempt: true,
            },
            std::io::empty(),
            &mut sink,
        )?;
        let lines = String::from_utf8_lossy(&sink).lines().count();
        match end {
            crate::journal::ExecEnd::Done => Ok(format!(
                "client journal {}: every pending transaction rerun ({lines} result line(s))",
                dir.display()
            )),
            crate::journal::ExecEnd::Pending(n) => {
                bail!("{n} transaction(s) still pending: the master stayed unreachable")
            }
            crate::journal::ExecEnd::Error { message, pending } => {
                bail!("rerun refused: {message} ({pending} pending)")
            }
            // A rerun reads no input, so it never ends inside one.
            crate::journal::ExecEnd::OpenAtEnd { pending, .. } => {
                bail!("rerun left {pending} transaction(s) pending")
            }
        }
    }

    /// Journals, per diverged replicate, the seqs it held that its
    /// master's history lost (as the diagnosis found them, before a reload
    /// replaces them).
    /// Promotes the target full replicate (the freshest of its master) to
    /// be the master ([`super::promote::execute`]); the seqs the old master
    /// committed after its level are journaled as lost.
    fn promote(&self, b: &Bound, journal: &mut RunJournal) -> anyhow::Result<String> {
        let Some(Target::Replicate { name, addr, .. }) = b
            .targets
            .iter()
            .find(|t| matches!(t, Target::Replicate { .. }))
        else {
            bail!("no full replicate of the master is intact and reachable: nothing can become the master");
        };
        let mut said = Vec::new();
        let p = super::promote::execute(*addr, name, None, self.opts.wait, &mut |line| {
            tracing::info!("{line}");
            said.push(line);
        })?;
        if let Some((from, to)) = p.lost {
            journal.append(Line::Gap {
                master: p.master.clone(),
                from_seq: from,
                to_seq: to,
                replicate: None,
            })?;
        }
        Ok(format!(
            "{name} (database {}) is master {} at seq {} (log file {}){}; {}",
            p.database,
            p.master,
            p.seq,
            p.log,
            p.lost
                .map(|(a, z)| format!(", seqs {a} to {z} lost (recorded)"))
                .unwrap_or_default(),
            said.join("; ")
        ))
    }

    fn record_lost_seqs(&self, b: &Bound, journal: &mut RunJournal) -> anyhow::Result<String> {
        let mut out = Vec::new();
        for t in &b.targets {
            let Target::Replicate { name, .. } = t else {
                continue;
            };
            let Some(r) = self.probes.reps.iter().find(|r| &r.name == name) else {
                bail!("replicate {name} is not in the diagnosis");
            };
            let Some(d) = &r.diverged else {
                out.push(format!("{name}: not diverged"));
                continue;
            };
            if d.lost_from > d.confirmed_seq {
                out.push(format!(
                    "{name}: no seq is known lost (its history differs from its master's: {})",
                    d.why
                ));
                continue;
            }
            let master = self
                .probes
                .masters
                .iter()
                .find(|m| m.db == r.master_db && m.fnr == r.master)
                .map_or_else(|| r.master.to_string(), |m| m.name.clone());
            journal.append(Line::Gap {
                master: master.clone(),
                from_seq: d.lost_from.0,
                to_seq: d.confirmed_seq.0,
                replicate: Some(name.clone()),
            })?;
            out.push(format!(
                "{name}: seqs {} to {} of incarnation {} are not in master {master}'s history (recorded; {})",
                d.lost_from, d.confirmed_seq, d.confirmed_incarnation, d.why
            ));
        }
        Ok(out.join("; "))
    }

    /// Journals the seqs lost for good: the plan-time level above the level now.
    fn record_gap(&self, b: &Bound, journal: &mut RunJournal) -> anyhow::Result<String> {
        let mut out = Vec::new();
        for m in b.masters() {
            let (db, file, name) = (m.db, m.file, m.name);
            let before = self
                .plan
                .levels
                .iter()
                .find(|l| l.0 == db && l.1 == file)
                .map_or(0, |l| l.2);
            // The level the plan set the master back to (before
            // any re-apply gave out new seqs), else its level now.
            let now = match journal.level_after(db, file) {
                Some(l) => l,
                None => log_level(m.addr, Fnr(m.log))?,
            };
            let lost = lost_ranges(now, before, &journal.reapplied(db, file));
            if lost.is_empty() {
                out.push(if now >= before {
                    format!("{name}: no level lost (at seq {now}, was {before})")
                } else {
                    format!(
                        "{name}: no level lost (seqs {} to {before} re-applied from its log)",
                        now + 1
                    )
                });
            }
            for (from, to) in lost {
                journal.append(Line::Gap {
                    master: name.to_string(),
                    from_seq: from,
                    to_seq: to,
                    replicate: None,
                })?;
                out.push(format!(
                    "{name}: seqs {from} to {to} are lost for good (recorded)"
                ));
            }
        }
        Ok(out.join("; "))
    }

    /// Rebases the damaged administration files and applies the export to every node.
    fn restore_admin_from_export(&self, b: &Bound) -> anyhow::Result<String> {
        let Some(Target::Export { path }) = b.sources.first() else {
            bail!("no topology export to restore from (--export FILE)");
        };
        let topology = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the topology export {path}"))?;
        let damaged = self.probes.damaged_admins();
        for a in &damaged {
            call(
                a.addr,
                &Request::Recovery(RecoveryOp::Rebase { file: a.fnr }),
            )?;
        }
        propagator::node::apply::apply_topology_blocking(&topology)?;
        Ok(format!(
            "topology from {path} applied; administration file rebuilt on database(s) {}",
            damaged
                .iter()
                .map(|a| a.db.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }

    /// Clears the error state of each target replicate.
    fn reset_errors(&self, b: &Bound) -> anyhow::Result<String> {
        let mut out = Vec::new();
        for t in &b.targets {
            if let Target::Replicate { name, feeder, .. } = t {
                replicate(*feeder, name, ReplicateAction::ResetError)?;
                out.push(format!("{name} reset"));
            }
        }
        if out.is_empty() {
            return Ok("no replicate in error".into());
        }
        Ok(out.join("; "))
    }

    /// Clears restore marks and starts the target masters' tasks.
    fn restart_tasks(&self, b: &Bound) -> anyhow::Result<String> {
        let mut out = Vec::new();
        for t in &b.targets {
            if let Target::Replicate { name, feeder, .. } = t {
                replicate(*feeder, name, ReplicateAction::Restoring { why: None })?;
                out.push(format!("{name} fed again"));
            }
        }
        for (addr, master) in masters_of(&b.targets) {
            let has_reps = self.probes.reps.iter().any(|r| {
                r.master == master
                    && self.probes.topology.addresses.get(&r.master_db) == Some(&addr)
            });
            if !has_reps {
                continue;
            }
            call(
                addr,
                &Request::Operation(OperationRequest::TaskControl {
                    master: Some(master),
                    action: TaskAction::Start,
                }),
            )?;
            out.push(format!("task of master file {master} on {addr} started"));
        }
        Ok(out.join("; "))
    }

    /// Waits until each replicate is current, then compares it with its master.
    fn verify_replicates(&self, b: &Bound) -> anyhow::Result<String> {
        let limit = self.opts.wait;
        let reps = replicates_in(&b.targets, self.probes);
        let mut out = Vec::new();
        for t in &reps {
            let Target::Replicate {
                name,
                feeder,
                master,
                ..
            } = t
            else {
                continue;
            };
            let seq = wait_until(&format!("replicate {name} current"), limit, || {
                let task = task_of(*feeder, Fnr(*master))?;
                let Some(r) = task.replicates.iter().find(|r| &r.name == name) else {
                    bail!("no task reports replicate {name}");
                };
                if r.state == ReplicaState::Error {
                    bail!(
                        "replicate {name} is in error: {}",
                        r.reason.clone().unwrap_or_default()
                    );
                }
                Ok(
                    (r.state == ReplicaState::Online && r.confirmed_seq == task.master_seq)
                        .then_some(task.master_seq),
                )
            })?;
            out.push(format!("{} (seq {seq})", verify_one(*feeder, name)?));
        }
        Ok(out.join("; "))
    }

    /// Rebuilds each target master from its freshest full replicate.
    fn restore_master_from_full_replicate(
        &self,
        i: usize,
        b: &Bound,
        journal: &mut RunJournal,
    ) -> anyhow::Result<String> {
        let (
            Some(Target::Master {
                addr,
                db,
                file,
                name,
                ..
            }),
            Some(src),
        ) = (b.targets.first(), b.sources.first())
        else {
            bail!("no master or no full replicate to rebuild it from");
        };
        // Where its log stood before the rebuild wrote anything: what a
        // re-apply reads its transactions up to.
        let key = addr.to_string();
        if journal.lsn_before(&key).is_none() {
            let lsn = match call(*addr, &Request::Read(ReadRequest::Info))? {
                Response::Info(i) => i.last_lsn.0,
                other => bail!("node {addr} answered {other:?}"),
            };
            journal.append(Line::Started {
                step: i,
                addr: key,
                lsn,
            })?;
        }
        let (detail, seq) = master_from_replicate(*addr, Fnr(*file), name, src)?;
        journal.append(Line::Level {
            db: *db,
            file: *file,
            seq,
        })?;
        Ok(detail)
    }
}

/// Rebuilds a master from a full replicate of it: the replicate's records
/// are written into the master in chunks (deriving nothing), the last chunk
/// proved against the count and digest the replicate's confirmation
/// records, and the log restarted at that confirmation's seq. The master's
/// tasks are stopped and its clients quiesced (the plan's earlier steps), so
/// the replicate is not fed meanwhile.
pub(crate) fn master_from_replicate(
    addr: SocketAddr,
    master: Fnr,
    name: &str,
    src: &Target,
) -> anyhow::Result<(String, u64)> {
    let Target::Replicate {
        name: rname,
        addr: raddr,
        file: rfile,
        partial: false,
        ..
    } = src
    else {
        bail!("the source {} is not a full replicate", src.describe());
    };
    let rfile = Fnr(*rfile);
    let conf_file = match call(*raddr, &Request::Read(ReadRequest::Files))? {
        Response::Files {
            topology: Some(t), ..
        } => propagator::topology::Valid::parse(&t)
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .replicates
            .iter()
            .find(|r| &r.def.name == rname)
            .map(|r| Fnr(r.def.confirmation))
            .with_context(|| format!("replicate {rname} is not in its node's topology"))?,
        _ => bail!("the node of {rname} serves no topology"),
    };
    let confirmed = match call(
        *raddr,
        &Request::Read(ReadRequest::Dump {
            file: conf_file,
            from: Isn(u64::from(rfile.0)),
            limit: 1,
            // A tool inspects what it holds, whatever its state.
            stale: true,
        }),
    )? {
        Response::Records { items, .. } => {
            let (_, bytes) = items
                .into_iter()
                .find(|(i, _)| *i == Isn(u64::from(rfile.0)))
                .with_context(|| format!("replicate {rname} has no confirmation"))?;
            let rec = propagator::record::decode_record(&bytes)
                .map_err(|e| anyhow::anyhow!("confirmation of {rname}: {e}"))?;
            propagator::confirmation::confirmation_from_record(&rec)
                .map_err(|e| anyhow::anyhow!("confirmation of {rname}: {e}"))?
        }
        other => bail!("node {raddr} answered {other:?}"),
    };
    let next_isn = match call(addr, &Request::Read(ReadRequest::FileStat { file: master }))? {
        Response::Stat { next_isn, .. } => next_isn,
        _ => 1,
    };
    // Pages of the replicate, each written as the chunk up to the next
    // page's first isn; the last one to the end, proved.
    let mut pending: Option<(Isn, Vec<(Isn, serde_bytes::ByteBuf)>)> = None;
    let mut from = Isn(1);
    let mut last_isn = 0u64;
    let mut written = 0u64;
    let send = |from: Isn,
                to: Option<Isn>,
                records: Vec<(Isn, serde_bytes::ByteBuf)>,
                last: Option<propagator::FileMeta>|
     -> anyhow::Result<()> {
        call(
            addr,
            &Request::Recovery(RecoveryOp::RestoreRange {
                file: master,
                from,
                to,
                records,
                last,
            }),
        )?;
        Ok(())
    };
    loop {
        let (items, done) = match call(
            *raddr,
            &Request::Read(ReadRequest::Dump {
                file: rfile,
                from,
                limit: 10_000,
                // A tool inspects what it holds, whatever its state.
                stale: true,
            }),
        )? {
            Response::Records { items, done, .. } => (items, done),
            other => bail!("node {raddr} answered {other:?}"),
        };
        if items.is_empty() && !done {
            bail!("node {raddr} sent an empty page of {rname} before its end");
        }
        if let (Some((first, _)), Some((last, _))) = (items.first(), items.last()) {
            let (first, last) = (*first, *last);
            if let Some((pfrom, precs)) = pending.take() {
                send(pfrom, Some(first), precs, None)?;
            }
            last_isn = last.0;
            written += items.len() as u64;
            pending = Some((
                if written == items.len() as u64 {
                    Isn(1)
                } else {
                    first
                },
                items,
            ));
            from = Isn(last.0 + 1);
        }
        if done {
            break;
        }
    }
    let (pfrom, precs) = pending.unwrap_or((Isn(1), Vec::new()));
    send(
        pfrom,
        None,
        precs,
        Some(propagator::FileMeta {
            fnr: master,
            count: confirmed.count,
            digest: confirmed.digest,
            next_isn: next_isn.max(last_isn + 1),
        }),
    )?;
    call(
        addr,
        &Request::Recovery(RecoveryOp::RefreshLog {
            master,
            at: Some(confirmed.seq),
        }),
    )?;
    Ok((
        format!(
            "master {name} rebuilt from {rname}: {written} records, digest {}; its log restarts at seq {}",
            confirmed.digest, confirmed.seq
        ),
        confirmed.seq.0,
    ))
}

/// A master's level: its log's last seq.
pub(crate) fn log_level(addr: SocketAddr, log: Fnr) -> anyhow::Result<u64> {
    match call(addr, &Request::Read(ReadRequest::FileStat { file: log }))? {
        Response::Stat { next_isn, .. } => Ok(next_isn.saturating_sub(1)),
        other => bail!("node {addr} answered {other:?}"),
    }
}

/// Checks the log's last record names the master's count and digest.
pub(crate) fn verify_master_log(
    addr: SocketAddr,
    master: Fnr,
    log: Fnr,
    name: &str,
) -> anyhow::Result<String> {
    let stat = |f: Fnr| -> anyhow::Result<(u64, propagator::Digest, u64)> {
        match call(addr, &Request::Read(ReadRequest::FileStat { file: f }))? {
            Response::Stat {
                count,
                digest,
                damaged: None,
                next_isn,
            } => Ok((count, digest, next_isn)),
            Response::Stat {
                damaged: Some(d), ..
            } => bail!("file {f} of {name} is still damaged: {d}"),
            other => bail!("node {addr} answered {other:?}"),
        }
    };
    let (count, digest, _) = stat(master)?;
    let (_, _, next) = stat(log)?;
    let last = next.saturating_sub(1);
    if last == 0 {
        return Ok(format!("{name}: no seq yet, {count} records"));
    }
    let rec = match call(
        addr,
        &Request::Read(ReadRequest::Dump {
            file: log,
            from: Isn(last),
            limit: 1,
            // A tool inspects what it holds, whatever its state.
            stale: true,
        }),
    )? {
        Response::Records { items, .. } => items
            .into_iter()
            .find(|(i, _)| *i == Isn(last))
            .with_context(|| format!("log of {name} lacks its last seq {last}"))?,
        other => bail!("node {addr} answered {other:?}"),
    };
    let lr = propagator::log_record::LogRecord::decode(&rec.1)
        .map_err(|e| anyhow::anyhow!("log record seq {last} of {name}: {e}"))?;
    if (lr.master_count, lr.master_digest) != (count, digest) {
        bail!(
            "{name}: the log's last seq {last} says {} records, digest {}; the master holds {count}, digest {digest}",
            lr.master_count,
            lr.master_digest
        );
    }
    Ok(format!(
        "{name}: log ends at seq {last} with the master's {count} records, digest {digest}"
    ))
}

pub(crate) fn verify_one(feeder: SocketAddr, name: &str) -> anyhow::Result<String> {
    match replicate(feeder, name, ReplicateAction::Verify { max_isns: 10 })? {
        Response::Verify(v) if v.equal => Ok(format!(
            "{name} equals its master's content at seq {} ({} records, digest {})",
            v.seq, v.count, v.digest
        )),
        Response::Verify(v) => bail!(
            "{name} differs from its master at seq {}: {} records / digest {} expected {} / {}; first differences {:?}",
            v.seq, v.count, v.digest, v.expected_count, v.expected_digest, v.differences
        ),
        other => bail!("node {feeder} answered {other:?}"),
    }
}

/// Every node serves one topology, its administration file intact, and
/// holds every file that topology gives it, in its role.
pub(crate) fn verify_definitions(p: &LiveProbes) -> anyhow::Result<String> {
    let mut texts = Vec::new();
    for (db, addr) in &p.topology.addresses {
        let (files, topology) = match call(*addr, &Request::Read(ReadRequest::Files))? {
            Response::Files { files, topology } => (files, topology),
            other => bail!("node {addr} answered {other:?}"),
        };
        let Some(t) = topology else {
            bail!("database {db} serves no topology");
        };
        let v = propagator::topology::Valid::parse(&t)
            .map_err(|e| anyhow::anyhow!("database {db}'s topology: {e}"))?;
        if let Response::Stat {
            damaged: Some(d), ..
        } = call(
            *addr,
            &Request::Read(ReadRequest::FileStat {
                file: v.admin_file(),
            }),
        )? {
            bail!("database {db}: administration file still damaged: {d}");
        }
        let has = |fnr: u32, role: &str| {
            files
                .iter()
                .any(|f| f.fnr == Fnr(fnr) && f.role.name() == role)
        };
        for m in v.topology.masters.iter().filter(|m| m.database == db.0) {
            if !has(m.file, "master") || !has(m.log, "log") {
                bail!(
                    "database {db} lacks master {} or its log file {}",
                    m.name,
                    m.log
                );
            }
        }
        for r in v.replicates.iter().filter(|r| r.def.database == db.0) {
            if !has(r.def.file, "replicate") || !has(r.def.confirmation, "confirmation") {
                bail!(
                    "database {db} lacks replicate {} or its confirmation file {}",
                    r.def.name,
                    r.def.confirmation
                );
            }
        }
        texts.push(t);
    }
    texts.sort();
    texts.dedup();
    if texts.len() > 1 {
        bail!("the nodes serve {} different topologies", texts.len());
    }
    Ok(format!(
        "{} database(s) serve one topology; every master, log, replicate and confirmation file is present in its role",
        p.topology.addresses.len()
    ))
}

/// The seqs after `now` up to `before` that no re-applied range covers.
fn lost_ranges(now: u64, before: u64, reapplied: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut next = now + 1;
    for &(a, z) in reapplied {
        if z < next {
            continue;
        }
        if a > next {
            out.push((next, (a - 1).min(before)));
        }
        next = next.max(z + 1);
        if next > before {
            break;
        }
    }
    if next <= before {
        out.push((next, before));
    }
    out.retain(|(a, z)| a <= z);
    out
}

/// One line for a master's re-apply: what was read, re-applied, refused.
fn describe_reapplied(name: &str, f: &propagator::reapply::FromLog) -> String {
    let r = &f.reapplied;
    let mut s = format!(
        "{name}: {} of {} transaction(s) its log holds after seq {} re-applied",
        r.done.len(),
        f.chosen.len(),
        f.level
    );
    let seqs = f.recovered_seqs();
    if let (Some(a), Some(z)) = (seqs.first(), seqs.last()) {
        s += &format!(" (first given seqs {} to {})", a.0, z.1);
    }
    if !r.conflicts.is_empty() {
        let c: Vec<String> = r
            .conflicts
            .iter()
            .map(|c| {
                format!(
                    "LSN {} (file {} record {}: {})",
                    c.lsn, c.file, c.isn, c.why
                )
            })
            .collect();
        s += &format!("; not re-applied: {}", c.join(", "));
    }
    if let Some(fault) = &f.read.fault {
        let (a, z) = (
            fault.last_good.next().0,
            fault.resumed.map_or(f.upto.0, |l| l.0.saturating_sub(1)),
        );
        s += &format!(
            "; its log is damaged in {} at offset {} ({}): {} unread",
            fault.path,
            fault.offset,
            fault.reason,
            if a == z {
                format!("LSN {a}")
            } else {
                format!("LSNs {a} to {z}")
            }
        );
    }
    s
}

#[cfg(test)]
mod lost_tests {
    use super::lost_ranges;

    #[test]
    fn the_gap_is_what_no_reapplied_range_covers() {
        assert_eq!(lost_ranges(10, 10, &[]), vec![]);
        assert_eq!(lost_ranges(10, 20, &[]), vec![(11, 20)]);
        assert_eq!(lost_ranges(10, 20, &[(11, 20)]), vec![]);
        assert_eq!(
            lost_ranges(10, 20, &[(11, 12), (15, 15)]),
            vec![(13, 14), (16, 20)]
        );
        assert_eq!(
            lost_ranges(10, 20, &[(13, 14), (19, 25)]),
            vec![(11, 12), (15, 18)]
        );
        // Ranges at or below the level count for nothing.
        assert_eq!(lost_ranges(10, 12, &[(5, 9)]), vec![(11, 12)]);
    }
}
