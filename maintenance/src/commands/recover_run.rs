//! `etp recover run [CASE] --dry-run | --execute`: a recovery plan bound to
//! the live topology and carried out step by step, with a durable journal so
//! an interrupted run resumes at the step it stopped at.
//!
//! A round diagnoses (triage and its case, or the case named), binds the
//! leaf's `$variables` to the files, replicates and nodes they stand for,
//! journals the bound plan, then performs each step through the nodes and
//! journals it done. Triage then runs again, as the seed says, until it ends
//! at `all_intact` (whose plan — tasks running, replicates verified — ends
//! the run). Two kinds of step wait for a person: `manual_intervention` and
//! `restart_databases` (this tool does not start node processes); the run
//! stops there with exit 1 and the instruction, and `--confirm` says it is
//! done. Nothing is executed while a probe is unanswerable: the run refuses
//! and names the question.

use super::ask as call;
use super::probes::{LiveProbes, MasterFact, RepFact, Sources};
use super::replicate::action as replicate;
use crate::output;
use crate::Outcome;
use anyhow::{bail, Context};
use flowcharts::{Plan, Step, TreeSet};
use propagator::wire::ReplicaState;
use propagator::wire::{RecoveryOp, ReplicateAction, Request, Response, TaskAction};
use propagator::{DbId, Fnr, Isn};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Something a bound step works on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Target {
    Database {
        db: u32,
        addr: SocketAddr,
    },
    Master {
        db: u32,
        addr: SocketAddr,
        file: u32,
        log: u32,
        name: String,
    },
    Replicate {
        name: String,
        db: u32,
        addr: SocketAddr,
        file: u32,
        master_db: u32,
        master: u32,
        /// The node that feeds it (its master's).
        feeder: SocketAddr,
        partial: bool,
    },
    Admin {
        db: u32,
        addr: SocketAddr,
        file: u32,
    },
    Export {
        path: String,
    },
}

impl Target {
    fn describe(&self) -> String {
        match self {
            Target::Database { db, .. } => format!("database {db}"),
            Target::Master { name, db, .. } => format!("master {name} (database {db})"),
            Target::Replicate { name, db, .. } => format!("replicate {name} (database {db})"),
            Target::Admin { db, file, .. } => {
                format!("administration file {file} of database {db}")
            }
            Target::Export { path } => format!("topology export {path}"),
        }
    }
}

/// One step of a plan with its variables bound.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Bound {
    pub action: String,
    pub targets: Vec<Target>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<Target>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Bound {
    fn describe(&self) -> String {
        let t: Vec<String> = self.targets.iter().map(Target::describe).collect();
        let mut s = format!("{} {}", self.action, t.join(", "));
        if !self.sources.is_empty() {
            let f: Vec<String> = self.sources.iter().map(Target::describe).collect();
            s += &format!(" from {}", f.join(", "));
        }
        if let Some(r) = &self.reason {
            s += &format!(": {r}");
        }
        s
    }

    /// Steps that wait for a person.
    fn operator(&self) -> bool {
        matches!(
            Action::parse(&self.action),
            Some(Action::ManualIntervention | Action::RestartDatabases)
        )
    }
}

/// Every action a recovery tree may name: the executor ([`Exec::step`])
/// matches on it exhaustively, so an action without an executor does not
/// compile, and a test checks the trees name exactly these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    AwaitLink,
    ManualIntervention,
    QuiesceMaster,
    RaiseIncarnation,
    ReapplyRecoverableTransactions,
    RebuildLogToMasterLevel,
    RecordGap,
    RefreshLog,
    RegenerateToEnd,
    ReinitReplicate,
    ReloadReplicateFromFullReplicate,
    ReloadReplicateFromMaster,
    RerunFailedTransactions,
    ResetError,
    RestartDatabases,
    RestartTasks,
    RestoreAdminFromCopy,
    RestoreAdminFromExport,
    RestoreCopySet,
    RestoreMasterFromFullReplicate,
    ResumeMaster,
    StopTasks,
    TakeCopySet,
    VerifyDefinitions,
    VerifyMasterLog,
    VerifyReplicates,
}

impl Action {
    const ALL: &'static [(Action, &'static str)] = &[
        (Action::AwaitLink, "await_link"),
        (Action::ManualIntervention, "manual_intervention"),
        (Action::QuiesceMaster, "quiesce_master"),
        (Action::RaiseIncarnation, "raise_incarnation"),
        (
            Action::ReapplyRecoverableTransactions,
            "reapply_recoverable_transactions",
        ),
        (
            Action::RebuildLogToMasterLevel,
            "rebuild_log_to_master_level",
        ),
        (Action::RecordGap, "record_gap"),
        (Action::RefreshLog, "refresh_log"),
        (Action::RegenerateToEnd, "regenerate_to_end"),
        (Action::ReinitReplicate, "reinit_replicate"),
        (
            Action::ReloadReplicateFromFullReplicate,
            "reload_replicate_from_full_replicate",
        ),
        (
            Action::ReloadReplicateFromMaster,
            "reload_replicate_from_master",
        ),
        (Action::RerunFailedTransactions, "rerun_failed_transactions"),
        (Action::ResetError, "reset_error"),
        (Action::RestartDatabases, "restart_databases"),
        (Action::RestartTasks, "restart_tasks"),
        (Action::RestoreAdminFromCopy, "restore_admin_from_copy"),
        (Action::RestoreAdminFromExport, "restore_admin_from_export"),
        (Action::RestoreCopySet, "restore_copy_set"),
        (
            Action::RestoreMasterFromFullReplicate,
            "restore_master_from_full_replicate",
        ),
        (Action::ResumeMaster, "resume_master"),
        (Action::StopTasks, "stop_tasks"),
        (Action::TakeCopySet, "take_copy_set"),
        (Action::VerifyDefinitions, "verify_definitions"),
        (Action::VerifyMasterLog, "verify_master_log"),
        (Action::VerifyReplicates, "verify_replicates"),
    ];

    fn parse(name: &str) -> Option<Action> {
        Action::ALL
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(a, _)| *a)
    }
}

/// A bound plan, as journaled.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BoundPlan {
    pub round: u32,
    pub tree: String,
    pub leaf: String,
    pub outcome: String,
    pub steps: Vec<Bound>,
    /// Per master (database, file): its level (last seq) when the plan was made.
    pub levels: Vec<(u32, u32, u64)>,
}

/// One line of the recovery journal.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "line", rename_all = "snake_case")]
enum Line {
    Plan {
        plan: BoundPlan,
        at: String,
    },
    Done {
        step: usize,
        detail: String,
        seconds: f64,
    },
    /// Journaled before the plan's first restore on node `addr` writes:
    /// that node's last LSN then, where a later roll-forward of the plan
    /// stops (so the restore's own commits are never replayed, whatever
    /// attempt of it was interrupted).
    Started {
        step: usize,
        addr: String,
        lsn: u64,
    },
    /// A master's level (last seq) right after a step set it back.
    Level {
        db: u32,
        file: u32,
        seq: u64,
    },
    Failed {
        step: usize,
        error: String,
    },
    Waiting {
        step: usize,
    },
    Confirmed {
        step: usize,
    },
    Gap {
        master: String,
        from_seq: u64,
        to_seq: u64,
    },
    End {
        leaf: String,
        at: String,
    },
}

const JOURNAL: &str = "recovery.jsonl";

/// The recovery journal: JSON lines, each written and fsync'd before the
/// step it records is taken as done.
struct RunJournal {
    path: PathBuf,
    lines: Vec<Line>,
}

impl RunJournal {
    fn open(dir: &Path) -> anyhow::Result<RunJournal> {
        std::fs::create_dir_all(dir).with_context(|| {
            format!(
                "cannot create the recovery journal directory {}",
                dir.display()
            )
        })?;
        let path = dir.join(JOURNAL);
        let mut lines = Vec::new();
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                // A torn last line (no newline): its step was never taken as
                // done. Cut it off so the next line starts on its own.
                if !text.is_empty() && !text.ends_with('\n') {
                    let keep = text.rfind('\n').map_or(0, |i| i + 1);
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .and_then(|f| {
                            f.set_len(keep as u64)?;
                            f.sync_all()
                        })
                        .with_context(|| {
                            format!("cannot cut the torn tail of {}", path.display())
                        })?;
                }
                let n = text.lines().count();
                for (i, l) in text.lines().enumerate() {
                    match serde_json::from_str::<Line>(l) {
                        Ok(x) => lines.push(x),
                        // A torn last line: its step was never taken as done.
                        Err(_) if i + 1 == n && !text.ends_with('\n') => {}
                        Err(e) => bail!(
                            "recovery journal {} line {}: {e}; move it aside to start afresh",
                            path.display(),
                            i + 1
                        ),
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
        Ok(RunJournal { path, lines })
    }

    fn append(&mut self, line: Line) -> anyhow::Result<()> {
        let mut text = serde_json::to_string(&line)?;
        text.push('\n');
        let created = !self.path.exists();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .with_context(|| format!("cannot open {}", self.path.display()))?;
        f.write_all(text.as_bytes())?;
        f.sync_data()
            .with_context(|| format!("cannot sync {}", self.path.display()))?;
        if created {
            if let Some(dir) = self.path.parent() {
                std::fs::File::open(dir)
                    .and_then(|d| d.sync_all())
                    .with_context(|| format!("cannot sync {}", dir.display()))?;
            }
        }
        self.lines.push(line);
        Ok(())
    }

    /// The last plan, if it has not ended, with the steps done.
    fn open_plan(&self) -> Option<(BoundPlan, Vec<bool>, Option<usize>)> {
        let start = self
            .lines
            .iter()
            .rposition(|l| matches!(l, Line::Plan { .. }))?;
        let Line::Plan { plan, .. } = &self.lines[start] else {
            return None;
        };
        let mut done = vec![false; plan.steps.len()];
        let mut waiting = None;
        for l in &self.lines[start + 1..] {
            match l {
                Line::End { .. } => return None,
                Line::Done { step, .. } | Line::Confirmed { step } => {
                    if let Some(d) = done.get_mut(*step) {
                        *d = true;
                    }
                    if waiting == Some(*step) {
                        waiting = None;
                    }
                }
                Line::Waiting { step } => waiting = Some(*step),
                _ => {}
            }
        }
        Some((plan.clone(), done, waiting))
    }

    /// The lines of the current plan.
    fn current(&self) -> &[Line] {
        match self
            .lines
            .iter()
            .rposition(|l| matches!(l, Line::Plan { .. }))
        {
            Some(start) => &self.lines[start..],
            None => &[],
        }
    }

    /// The LSN node `addr` was at before the current plan's first restore
    /// on it wrote anything.
    fn lsn_before(&self, addr: &str) -> Option<u64> {
        self.current().iter().find_map(|l| match l {
            Line::Started { addr: a, lsn, .. } if a == addr => Some(*lsn),
            _ => None,
        })
    }

    /// The lowest level a step of the current plan set master (db, file) back to.
    fn level_after(&self, db: u32, file: u32) -> Option<u64> {
        self.current()
            .iter()
            .filter_map(|l| match l {
                Line::Level {
                    db: d,
                    file: f,
                    seq,
                } if *d == db && *f == file => Some(*seq),
                _ => None,
            })
            .min()
    }

    /// The most recent plan journaled.
    fn last_plan(&self) -> Option<&BoundPlan> {
        self.lines.iter().rev().find_map(|l| match l {
            Line::Plan { plan, .. } => Some(plan),
            _ => None,
        })
    }

    fn rounds(&self) -> u32 {
        self.lines
            .iter()
            .filter_map(|l| match l {
                Line::Plan { plan, .. } => Some(plan.round),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    }
}

/// Says so when the recovery journal in `state` holds a plan that has not
/// ended (None when there is no journal).
pub fn unfinished(state: &Path) -> anyhow::Result<Option<String>> {
    if !state.join(JOURNAL).exists() {
        return Ok(None);
    }
    let j = RunJournal::open(state)?;
    Ok(j.open_plan().map(|(p, done, _)| {
        format!(
            "an unfinished recovery plan is in {}: {} / {}, {} of {} steps done; finish it first: etp recover run --execute --state {}",
            j.path.display(),
            p.tree,
            p.leaf,
            done.iter().filter(|d| **d).count(),
            p.steps.len(),
            state.display()
        )
    }))
}

/// How a run is to go.
pub struct RunOptions {
    pub node: SocketAddr,
    pub case: Option<String>,
    pub execute: bool,
    pub confirm: bool,
    pub sources: Sources,
    pub state: PathBuf,
    pub wait: Duration,
    pub json: bool,
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Binds a leaf's steps to the live topology.
pub fn bind(steps: &[Step], p: &LiveProbes) -> anyhow::Result<Vec<Bound>> {
    steps
        .iter()
        .map(|s| {
            let mut b = Bound {
                action: s.action.clone(),
                targets: Vec::new(),
                sources: Vec::new(),
                reason: s.params.get("reason").cloned(),
            };
            if let Some(t) = s.params.get("target") {
                b.targets = resolve(t, p)?;
            }
            if let Some(t) = s.params.get("source") {
                b.sources = resolve(t, p)?;
            }
            if b.action == "restore_admin_from_copy" && b.targets.is_empty() {
                // Bound now: once restored, the files are no longer damaged.
                b.targets = admin_targets(p);
            }
            Ok(b)
        })
        .collect()
}

fn master_target(m: &MasterFact) -> Target {
    Target::Master {
        db: m.db.0,
        addr: m.addr,
        file: m.fnr.0,
        log: m.log.0,
        name: m.name.clone(),
    }
}

fn rep_target(r: &RepFact, p: &LiveProbes) -> Target {
    let feeder = p
        .topology
        .addresses
        .get(&r.master_db)
        .copied()
        .unwrap_or(r.addr);
    Target::Replicate {
        name: r.name.clone(),
        db: r.db.0,
        addr: r.addr,
        file: r.file.0,
        master_db: r.master_db.0,
        master: r.master.0,
        feeder,
        partial: r.partial,
    }
}

/// The damaged administration files.
fn admin_targets(p: &LiveProbes) -> Vec<Target> {
    p.damaged_admins()
        .into_iter()
        .map(|a| Target::Admin {
            db: a.db.0,
            addr: a.addr,
            file: a.fnr.0,
        })
        .collect()
}

fn resolve(var: &str, p: &LiveProbes) -> anyhow::Result<Vec<Target>> {
    let Some(name) = var.strip_prefix('$') else {
        bail!("parameter {var:?} is not a $variable");
    };
    let master = || p.master().context("the topology defines no master");
    Ok(match name {
        "all" => p.masters.iter().map(master_target).collect(),
        "master" | "log" => vec![master_target(master()?)],
        "replicates" => {
            let m = master()?;
            p.replicates_of(m).map(|r| rep_target(r, p)).collect()
        }
        "unit" | "replicate" => p.unit().into_iter().map(|r| rep_target(r, p)).collect(),
        "ahead_replicates" => {
            let m = master()?;
            let set_seq = p
                .sets
                .as_ref()
                .and_then(|s| {
                    s.iter()
                        .rev()
                        .find(|s| s.dbid == m.db && s.member(m.fnr).is_some())
                })
                .and_then(|s| s.seqs.get(&m.fnr).map(|q| q.0))
                .unwrap_or(0);
            p.replicates_of(m)
                .filter(|r| r.confirmed.is_some_and(|c| c.0 > set_seq))
                .map(|r| rep_target(r, p))
                .collect()
        }
        "full_replicate" => {
            let m = master()?;
            let unit: Vec<String> = p.unit().iter().map(|r| r.name.clone()).collect();
            let not: Vec<&str> = unit.iter().map(String::as_str).collect();
            p.full_replicate(m, &not)
                .map(|r| rep_target(r, p))
                .into_iter()
                .collect()
        }
        "stale_replicates" => p
            .reps
            .iter()
            .filter(|r| r.state.as_deref() == Some("error"))
            .map(|r| rep_target(r, p))
            .collect(),
        "admin" => admin_targets(p),
        "topology_export" => match &p.sources.export {
            Some(e) => vec![Target::Export {
                path: e.display().to_string(),
            }],
            None => bail!("the plan needs a topology export: give --export FILE"),
        },
        other => bail!("unknown variable ${other}"),
    })
}

fn text(r: Response) -> String {
    match r {
        Response::Text(t) => t,
        other => format!("{other:?}"),
    }
}

/// What `await_link` and the verifications poll with.
fn wait_until<T>(
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

fn masters_of(targets: &[Target]) -> Vec<(SocketAddr, Fnr)> {
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

fn task_of(addr: SocketAddr, master: Fnr) -> anyhow::Result<propagator::wire::TaskReport> {
    match call(addr, &Request::TaskStatus)? {
        Response::Tasks(ts) => ts
            .into_iter()
            .find(|t| t.master == master)
            .with_context(|| format!("node {addr} runs no task for master file {master}")),
        other => bail!("node {addr} answered {other:?}"),
    }
}

/// The replicates a step about masters or replicates covers.
fn replicates_in(targets: &[Target], topo: &LiveProbes) -> Vec<Target> {
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
fn load(
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
        let t = match call(feeder, &Request::ReplicateStatus)? {
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

struct Exec<'a> {
    opts: &'a RunOptions,
    probes: &'a LiveProbes,
    plan: &'a BoundPlan,
}

impl Exec<'_> {
    fn area(&self) -> anyhow::Result<String> {
        match &self.opts.sources.area {
            Some(a) => Ok(std::fs::canonicalize(a)
                .unwrap_or_else(|_| a.clone())
                .display()
                .to_string()),
            None => bail!("this step needs the copy area: give --area DIR"),
        }
    }

    fn restore(
        &self,
        step: usize,
        b: &Bound,
        regenerate: bool,
        journal: &mut RunJournal,
    ) -> anyhow::Result<String> {
        let area = self.area()?;
        let mut out = Vec::new();
        for t in &b.targets {
            let (addr, file) = match t {
                Target::Master { addr, file, .. } => (*addr, Fnr(*file)),
                Target::Replicate { addr, file, .. } => (*addr, Fnr(*file)),
                Target::Admin { addr, file, .. } => (*addr, Fnr(*file)),
                other => bail!("cannot restore {}", other.describe()),
            };
            let key = addr.to_string();
            if journal.lsn_before(&key).is_none() {
                let lsn = match call(addr, &Request::Info)? {
                    Response::Info(i) => i.last_lsn.0,
                    other => bail!("node {addr} answered {other:?}"),
                };
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
                    area: area.clone(),
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

    fn step(&self, i: usize, b: &Bound, journal: &mut RunJournal) -> anyhow::Result<String> {
        let limit = self.opts.wait;
        let Some(action) = Action::parse(&b.action) else {
            bail!(
                "action `{}` is not carried out by this engine: do it by hand, then run with --confirm",
                b.action
            );
        };
        match action {
            Action::StopTasks => {
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
                            let runs = match call(*addr, &Request::TaskStatus)? {
                                Response::Tasks(ts) => ts.iter().any(|t| t.master == Fnr(*file)),
                                other => bail!("node {addr} answered {other:?}"),
                            };
                            if runs {
                                call(
                                    *addr,
                                    &Request::TaskControl {
                                        master: Some(Fnr(*file)),
                                        action: TaskAction::Stop,
                                    },
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
            Action::QuiesceMaster | Action::ResumeMaster => {
                let on = b.action == "quiesce_master";
                for t in &b.targets {
                    if let Target::Master { addr, .. } = t {
                        call(*addr, &Request::Recovery(RecoveryOp::Quiesce { on }))?;
                    }
                }
                Ok(format!(
                    "client updates {}",
                    if on { "refused" } else { "accepted again" }
                ))
            }
            Action::AwaitLink => {
                let mut dbs: Vec<(u32, SocketAddr)> = Vec::new();
                for t in &b.targets {
                    if let Target::Master { db, addr, file, .. } = t {
                        dbs.push((*db, *addr));
                        for r in self
                            .probes
                            .reps
                            .iter()
                            .filter(|r| r.master_db == DbId(*db) && r.master == Fnr(*file))
                        {
                            dbs.push((r.db.0, r.addr));
                        }
                    }
                }
                let started = Instant::now();
                wait_until("the links", limit, || {
                    for (_, a) in &dbs {
                        if call(*a, &Request::Info).is_err() {
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
            Action::RestoreCopySet | Action::RestoreAdminFromCopy => {
                self.restore(i, b, false, journal)
            }
            Action::RegenerateToEnd | Action::RebuildLogToMasterLevel => {
                self.restore(i, b, true, journal)
            }
            Action::VerifyMasterLog => {
                let mut out = Vec::new();
                for t in &b.targets {
                    let Target::Master {
                        addr,
                        file,
                        log,
                        name,
                        ..
                    } = t
                    else {
                        continue;
                    };
                    out.push(verify_master_log(*addr, Fnr(*file), Fnr(*log), name)?);
                }
                Ok(out.join("; "))
            }
            Action::RefreshLog | Action::RaiseIncarnation => {
                let mut out = Vec::new();
                for t in &b.targets {
                    let Target::Master {
                        addr,
                        db,
                        file,
                        log,
                        ..
                    } = t
                    else {
                        continue;
                    };
                    let op = if b.action == "refresh_log" {
                        RecoveryOp::RefreshLog {
                            master: Fnr(*file),
                            at: None,
                        }
                    } else {
                        RecoveryOp::RaiseIncarnation { master: Fnr(*file) }
                    };
                    out.push(text(call(*addr, &Request::Recovery(op))?));
                    if b.action == "refresh_log" {
                        journal.append(Line::Level {
                            db: *db,
                            file: *file,
                            seq: log_level(*addr, Fnr(*log))?,
                        })?;
                    }
                }
                Ok(out.join("; "))
            }
            Action::TakeCopySet => {
                let area = backup::Area::open(Path::new(&self.area()?))?;
                let mut out = Vec::new();
                for t in &b.targets {
                    let Target::Master {
                        addr, file, name, ..
                    } = t
                    else {
                        continue;
                    };
                    let taken = backup::take::take_job(
                        &area,
                        None,
                        &[backup::take::Ask {
                            source: backup::take::Source::Node(*addr),
                            files: vec![Fnr(*file)],
                        }],
                        &mut |_| {},
                    )?;
                    for x in taken {
                        out.push(format!(
                            "copy set {} of {name} at LSN {}",
                            x.set.id, x.set.lsn
                        ));
                    }
                }
                Ok(out.join("; "))
            }
            Action::ReloadReplicateFromMaster | Action::ReloadReplicateFromFullReplicate => {
                let from = match b.action.as_str() {
                    "reload_replicate_from_master" => None,
                    _ => match b.sources.first() {
                        Some(Target::Replicate { name, .. }) => Some(name.clone()),
                        _ => bail!("no full replicate to load from"),
                    },
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
            Action::ReinitReplicate => {
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
            Action::RerunFailedTransactions | Action::ReapplyRecoverableTransactions => {
                let Some(dir) = &self.opts.sources.journal else {
                    return Ok("no client journal given (--journal DIR): nothing to rerun".into());
                };
                let Some(Target::Master { addr, .. }) = b.targets.first() else {
                    bail!("no master to rerun on");
                };
                let mut sink = Vec::new();
                let end = maintenance::journal::exec(
                    dir,
                    &maintenance::journal::ExecOptions {
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
                    maintenance::journal::ExecEnd::Done => Ok(format!(
                        "client journal {}: every pending transaction rerun ({lines} result line(s))",
                        dir.display()
                    )),
                    maintenance::journal::ExecEnd::Pending(n) => {
                        bail!("{n} transaction(s) still pending: the master stayed unreachable")
                    }
                    maintenance::journal::ExecEnd::Error { message, pending } => {
                        bail!("rerun refused: {message} ({pending} pending)")
                    }
                }
            }
            Action::RecordGap => {
                let mut out = Vec::new();
                for t in &b.targets {
                    let Target::Master {
                        addr,
                        db,
                        file,
                        log,
                        name,
                    } = t
                    else {
                        continue;
                    };
                    let before = self
                        .plan
                        .levels
                        .iter()
                        .find(|l| l.0 == *db && l.1 == *file)
                        .map_or(0, |l| l.2);
                    // The level the plan set the master back to (before
                    // any re-apply gave out new seqs), else its level now.
                    let now = match journal.level_after(*db, *file) {
                        Some(l) => l,
                        None => log_level(*addr, Fnr(*log))?,
                    };
                    if now >= before {
                        out.push(format!(
                            "{name}: no level lost (at seq {now}, was {before})"
                        ));
                    } else {
                        journal.append(Line::Gap {
                            master: name.clone(),
                            from_seq: now + 1,
                            to_seq: before,
                        })?;
                        out.push(format!(
                            "{name}: seqs {} to {before} are lost for good (recorded)",
                            now + 1
                        ));
                    }
                }
                Ok(out.join("; "))
            }
            Action::RestoreAdminFromExport => {
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
                let any = self
                    .probes
                    .admins
                    .first()
                    .map(|a| a.addr)
                    .context("no node answers")?;
                call(any, &Request::AdminApply { topology })?;
                Ok(format!(
                    "topology from {path} applied; administration file rebuilt on database(s) {}",
                    damaged
                        .iter()
                        .map(|a| a.db.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            }
            Action::VerifyDefinitions => verify_definitions(self.probes),
            Action::ResetError => {
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
            Action::RestartTasks => {
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
                        &Request::TaskControl {
                            master: Some(master),
                            action: TaskAction::Start,
                        },
                    )?;
                    out.push(format!("task of master file {master} on {addr} started"));
                }
                Ok(out.join("; "))
            }
            Action::VerifyReplicates => {
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
            Action::RestoreMasterFromFullReplicate => {
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
                let (detail, seq) = master_from_replicate(*addr, Fnr(*file), name, src)?;
                journal.append(Line::Level {
                    db: *db,
                    file: *file,
                    seq,
                })?;
                Ok(detail)
            }
            Action::RestartDatabases | Action::ManualIntervention => {
                bail!("an operator step cannot be executed")
            }
        }
    }
}

/// Rebuilds a master from a full replicate of it: the replicate's records
/// are written into the master in chunks (deriving nothing), the last chunk
/// proved against the count and digest the replicate's confirmation
/// records, and the log restarted at that confirmation's seq. The master's
/// tasks are stopped and its clients quiesced (the plan's earlier steps), so
/// the replicate is not fed meanwhile.
fn master_from_replicate(
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
    let conf_file = match call(*raddr, &Request::Files)? {
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
        &Request::Dump {
            file: conf_file,
            from: Isn(u64::from(rfile.0)),
            limit: 1,
        },
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
    let next_isn = match call(addr, &Request::FileStat { file: master })? {
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
            &Request::Dump {
                file: rfile,
                from,
                limit: 10_000,
            },
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
fn log_level(addr: SocketAddr, log: Fnr) -> anyhow::Result<u64> {
    match call(addr, &Request::FileStat { file: log })? {
        Response::Stat { next_isn, .. } => Ok(next_isn.saturating_sub(1)),
        other => bail!("node {addr} answered {other:?}"),
    }
}

/// Checks the log's last record names the master's count and digest.
fn verify_master_log(
    addr: SocketAddr,
    master: Fnr,
    log: Fnr,
    name: &str,
) -> anyhow::Result<String> {
    let stat = |f: Fnr| -> anyhow::Result<(u64, propagator::Digest, u64)> {
        match call(addr, &Request::FileStat { file: f })? {
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
        &Request::Dump {
            file: log,
            from: Isn(last),
            limit: 1,
        },
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

fn verify_one(feeder: SocketAddr, name: &str) -> anyhow::Result<String> {
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
fn verify_definitions(p: &LiveProbes) -> anyhow::Result<String> {
    let mut texts = Vec::new();
    for (db, addr) in &p.topology.addresses {
        let (files, topology) = match call(*addr, &Request::Files)? {
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
            &Request::FileStat {
                file: v.admin_file(),
            },
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

/// Diagnoses and binds the plan of one round.
fn make_plan(
    opts: &RunOptions,
    set: &TreeSet,
    round: u32,
    case: Option<&str>,
) -> anyhow::Result<(LiveProbes, Result<BoundPlan, String>)> {
    let mut probes = LiveProbes::gather(opts.node, &opts.sources)?;
    let walk = match case {
        Some(c) => {
            let tree = set.get(c).with_context(|| {
                let known: Vec<&str> = set.trees().map(|t| t.id.as_str()).collect();
                format!(
                    "no recovery flow {c:?}; the flows are: {}",
                    known.join(", ")
                )
            })?;
            flowcharts::walk(tree, &mut probes).map_err(|e| anyhow::anyhow!("{e}"))?
        }
        None => {
            let d = flowcharts::diagnose(set, &mut probes).map_err(|e| anyhow::anyhow!("{e}"))?;
            if !opts.json {
                for w in std::iter::once(&d.triage).chain(d.case.as_ref()) {
                    super::recover::print_walk(w);
                }
            }
            d.case.unwrap_or(d.triage)
        }
    };
    if case.is_some() && !opts.json {
        super::recover::print_walk(&walk);
    }
    let plan = match &walk.plan {
        Plan::Actions {
            leaf,
            outcome,
            steps,
            ..
        } => Ok(BoundPlan {
            round,
            tree: walk.tree.clone(),
            leaf: leaf.clone(),
            outcome: outcome.clone(),
            steps: bind(steps, &probes)?,
            levels: probes
                .masters
                .iter()
                .map(|m| (m.db.0, m.fnr.0, m.level().unwrap_or(0)))
                .collect(),
        }),
        Plan::Goto { case, .. } => Err(format!("the walk ended handing over to {case}")),
        Plan::Stopped { node, reason } => {
            let probe = walk
                .path
                .iter()
                .find(|v| &v.node == node)
                .and_then(|v| v.probe.clone())
                .unwrap_or_default();
            Err(format!(
                "question `{node}` (probe `{probe}`) cannot be answered: {reason}"
            ))
        }
    };
    Ok((probes, plan))
}

fn say(opts: &RunOptions, event: serde_json::Value, human: String) {
    if opts.json {
        output::json(&event);
    } else {
        println!("{human}");
    }
}

/// Test hook: stop the process after this many steps (an interruption).
fn stop_after() -> Option<usize> {
    std::env::var("ETP_RECOVER_STOP_AFTER_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
}

pub fn run(opts: RunOptions) -> anyhow::Result<Outcome> {
    let set = TreeSet::builtin().context("the built-in trees")?;
    if !opts.execute {
        let (_, plan) = make_plan(&opts, &set, 1, opts.case.as_deref())?;
        return match plan {
            Err(why) => {
                say(
                    &opts,
                    serde_json::json!({"event": "refused", "reason": why}),
                    format!("nothing can be executed: {why}"),
                );
                Ok(Outcome::Problem)
            }
            Ok(p) => {
                let intact = p.leaf == "all_intact";
                if opts.json {
                    output::json(&serde_json::json!({"event": "plan", "plan": p, "dry_run": true}));
                } else {
                    println!("plan ({}, {}): {}", p.tree, p.leaf, p.outcome);
                    for (i, s) in p.steps.iter().enumerate() {
                        println!(
                            "  {}. {}{}",
                            i + 1,
                            s.describe(),
                            if s.operator() { "  [operator]" } else { "" }
                        );
                    }
                    println!("(dry run: nothing executed)");
                }
                Ok(if intact {
                    Outcome::Ok
                } else {
                    Outcome::Problem
                })
            }
        };
    }
    let mut journal = RunJournal::open(&opts.state)?;
    let mut steps_run = 0usize;
    let started = Instant::now();
    let mut case = opts.case.clone();
    loop {
        let (probes, plan, mut done, waiting) = match journal.open_plan() {
            Some((plan, done, waiting)) => {
                say(
                    &opts,
                    serde_json::json!({"event": "resume", "tree": plan.tree, "leaf": plan.leaf, "done": done.iter().filter(|d| **d).count()}),
                    format!(
                        "resuming plan {} / {} at step {}",
                        plan.tree,
                        plan.leaf,
                        done.iter().filter(|d| **d).count() + 1
                    ),
                );
                // A node restarted meanwhile has forgotten its quiesce:
                // assert it again while the plan still needs it.
                for (i, b) in plan.steps.iter().enumerate() {
                    let resumed = plan
                        .steps
                        .iter()
                        .enumerate()
                        .any(|(k, r)| k > i && r.action == "resume_master" && done[k]);
                    if b.action == "quiesce_master" && done[i] && !resumed {
                        for t in &b.targets {
                            if let Target::Master { addr, .. } = t {
                                call(*addr, &Request::Recovery(RecoveryOp::Quiesce { on: true }))?;
                            }
                        }
                    }
                }
                let probes = LiveProbes::gather(opts.node, &opts.sources)?;
                (probes, plan, done, waiting)
            }
            None => {
                let round = journal.rounds() + 1;
                if round > 12 {
                    bail!(
                        "12 rounds of recovery have run without reaching all_intact; see {}",
                        journal.path.display()
                    );
                }
                let (probes, plan) = make_plan(&opts, &set, round, case.take().as_deref())?;
                let plan = match plan {
                    Ok(p) => p,
                    Err(why) => {
                        say(
                            &opts,
                            serde_json::json!({"event": "refused", "reason": why}),
                            format!("refusing to execute: {why}"),
                        );
                        return Ok(Outcome::Problem);
                    }
                };
                // The same plan again right after it ran: what it does did
                // not help, and doing it again may undo more. A person decides.
                if let Some(prev) = journal.last_plan() {
                    if plan.leaf != "all_intact"
                        && prev.leaf == plan.leaf
                        && prev.steps == plan.steps
                    {
                        let why = format!(
                            "the previous round ran plan {} / {} and the diagnosis asks for it again: stopping for an operator (see {})",
                            plan.tree,
                            plan.leaf,
                            journal.path.display()
                        );
                        say(
                            &opts,
                            serde_json::json!({"event": "refused", "reason": why}),
                            format!("refusing to execute: {why}"),
                        );
                        return Ok(Outcome::Problem);
                    }
                }
                say(
                    &opts,
                    serde_json::json!({"event": "plan", "plan": plan}),
                    format!(
                        "executing plan {} / {}: {}",
                        plan.tree, plan.leaf, plan.outcome
                    ),
                );
                journal.append(Line::Plan {
                    plan: plan.clone(),
                    at: now(),
                })?;
                let n = plan.steps.len();
                (probes, plan, vec![false; n], None)
            }
        };
        let exec = Exec {
            opts: &opts,
            probes: &probes,
            plan: &plan,
        };
        for (i, b) in plan.steps.iter().enumerate() {
            if done[i] {
                continue;
            }
            if b.operator() {
                let all_up = b.action == "restart_databases" && probes.unreachable.is_empty();
                if all_up || (opts.confirm && waiting == Some(i)) {
                    journal.append(Line::Confirmed { step: i })?;
                    done[i] = true;
                    continue;
                }
                if waiting != Some(i) {
                    journal.append(Line::Waiting { step: i })?;
                }
                let what = match b.action.as_str() {
                    "restart_databases" => format!(
                        "start the node of every database that does not answer ({}), then run again",
                        probes.unreachable.join("; ")
                    ),
                    _ => b.reason.clone().unwrap_or_default(),
                };
                say(&opts, serde_json::json!({"event": "operator", "step": i + 1, "action": b.action, "what": what}),
                    format!("  {}. OPERATOR: {what}\n     when done: etp recover run --execute --confirm (same --state)", i + 1));
                return Ok(Outcome::Problem);
            }
            let t0 = Instant::now();
            match exec.step(i, b, &mut journal) {
                Ok(detail) => {
                    let seconds = t0.elapsed().as_secs_f64();
                    journal.append(Line::Done {
                        step: i,
                        detail: detail.clone(),
                        seconds,
                    })?;
                    done[i] = true;
                    say(
                        &opts,
                        serde_json::json!({"event": "done", "step": i + 1, "action": b.action, "detail": detail, "seconds": seconds}),
                        format!(
                            "  {}. {} — done in {seconds:.1} s: {detail}",
                            i + 1,
                            b.describe()
                        ),
                    );
                }
                Err(e) => {
                    journal.append(Line::Failed {
                        step: i,
                        error: format!("{e:#}"),
                    })?;
                    say(&opts, serde_json::json!({"event": "failed", "step": i + 1, "action": b.action, "error": format!("{e:#}")}),
                        format!("  {}. {} — FAILED: {e:#}\n     fix the cause and run again: the plan resumes at this step", i + 1, b.describe()));
                    return Ok(Outcome::Problem);
                }
            }
            steps_run += 1;
            if stop_after() == Some(steps_run) {
                eprintln!("etp: stopping after {steps_run} step(s) (ETP_RECOVER_STOP_AFTER_STEPS)");
                std::process::exit(3);
            }
        }
        journal.append(Line::End {
            leaf: plan.leaf.clone(),
            at: now(),
        })?;
        if plan.leaf == "all_intact" {
            say(
                &opts,
                serde_json::json!({"event": "recovered", "seconds": started.elapsed().as_secs_f64(), "rounds": plan.round}),
                format!(
                    "recovered: every replicate current and verified ({:.1} s)",
                    started.elapsed().as_secs_f64()
                ),
            );
            return Ok(Outcome::Ok);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every action the shipped trees name has an executor (an `Action`,
    /// matched exhaustively by `Exec::step`), every executor is named by a
    /// tree, and the standard vocabulary lists exactly these.
    #[test]
    fn every_tree_action_has_an_executor_and_every_executor_a_tree() {
        let set = flowcharts::TreeSet::builtin().expect("the shipped trees");
        let mut named = std::collections::BTreeSet::new();
        for tree in set.trees() {
            for node in tree.leaves() {
                if let Some(flowcharts::Leaf {
                    end: flowcharts::LeafEnd::Actions(steps),
                    ..
                }) = node.leaf()
                {
                    named.extend(steps.iter().map(|s| s.action.clone()));
                }
            }
        }
        let executors: std::collections::BTreeSet<String> =
            Action::ALL.iter().map(|(_, n)| n.to_string()).collect();
        let missing: Vec<_> = named.difference(&executors).collect();
        assert!(
            missing.is_empty(),
            "tree actions without an executor: {missing:?}"
        );
        let unused: Vec<_> = executors.difference(&named).collect();
        assert!(unused.is_empty(), "executors no tree names: {unused:?}");
        let vocabulary: std::collections::BTreeSet<String> = flowcharts::Registry::standard()
            .actions()
            .map(|(n, _)| n.to_string())
            .collect();
        assert_eq!(vocabulary, executors);
        for (a, n) in Action::ALL {
            assert_eq!(Action::parse(n), Some(*a));
        }
        assert_eq!(Action::parse("no_such_action"), None);
    }

    fn plan(steps: usize) -> BoundPlan {
        BoundPlan {
            round: 1,
            tree: "case2_replicate".into(),
            leaf: "reload_unit_catch_up".into(),
            outcome: "o".into(),
            steps: (0..steps)
                .map(|i| Bound {
                    action: if i == 1 {
                        "manual_intervention".into()
                    } else {
                        "restart_tasks".into()
                    },
                    targets: Vec::new(),
                    sources: Vec::new(),
                    reason: None,
                })
                .collect(),
            levels: vec![(1, 10, 7)],
        }
    }

    #[test]
    fn the_journal_resumes_at_the_first_step_not_done_and_ends_a_plan() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut j = RunJournal::open(dir.path()).expect("open");
        assert!(j.open_plan().is_none());
        j.append(Line::Plan {
            plan: plan(3),
            at: now(),
        })
        .expect("plan");
        j.append(Line::Started {
            step: 0,
            addr: "127.0.0.1:1".into(),
            lsn: 42,
        })
        .expect("started");
        j.append(Line::Done {
            step: 0,
            detail: "d".into(),
            seconds: 0.1,
        })
        .expect("done");
        j.append(Line::Level {
            db: 1,
            file: 10,
            seq: 9,
        })
        .expect("level");
        j.append(Line::Waiting { step: 1 }).expect("waiting");
        let j = RunJournal::open(dir.path()).expect("reopen");
        let (p, done, waiting) = j.open_plan().expect("open plan");
        assert_eq!(p.steps.len(), 3);
        assert_eq!(done, vec![true, false, false]);
        assert_eq!(waiting, Some(1));
        assert_eq!(j.lsn_before("127.0.0.1:1"), Some(42));
        assert_eq!(j.lsn_before("127.0.0.1:2"), None);
        assert_eq!(j.level_after(1, 10), Some(9));
        assert_eq!(j.level_after(1, 11), None);
        let mut j = j;
        j.append(Line::Confirmed { step: 1 }).expect("confirmed");
        let (_, done, waiting) = j.open_plan().expect("open plan");
        assert_eq!(done, vec![true, true, false]);
        assert_eq!(waiting, None);
        j.append(Line::End {
            leaf: "reload_unit_catch_up".into(),
            at: now(),
        })
        .expect("end");
        assert!(j.open_plan().is_none());
        assert_eq!(j.rounds(), 1);
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_a_damaged_one_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut j = RunJournal::open(dir.path()).expect("open");
        j.append(Line::Plan {
            plan: plan(2),
            at: now(),
        })
        .expect("plan");
        let path = dir.path().join(JOURNAL);
        let mut text = std::fs::read_to_string(&path).expect("read");
        text.push_str("{\"line\":\"done\",\"step\":0,\"deta");
        std::fs::write(&path, &text).expect("write");
        let mut j = RunJournal::open(dir.path()).expect("a torn tail is dropped");
        let (_, done, _) = j.open_plan().expect("plan");
        assert_eq!(done, vec![false, false], "the torn step is not done");
        // The torn bytes are cut off: the next line stands on its own.
        j.append(Line::Waiting { step: 1 }).expect("append");
        let j = RunJournal::open(dir.path()).expect("reopen");
        assert_eq!(j.open_plan().expect("plan").2, Some(1));
        let text = std::fs::read_to_string(&path).expect("read");
        std::fs::write(&path, format!("garbage\n{text}\n")).expect("write");
        let err = RunJournal::open(dir.path()).err().expect("refused");
        assert!(err.to_string().contains("line 1"), "{err}");
    }
}
