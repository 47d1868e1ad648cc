//! A recovery plan bound to the live topology: each step's `$variables`
//! resolved to the nodes, files and replicates they stand for ([`bind`]),
//! and the vocabulary of actions ([`Action`]) the executor carries out.

use super::probes::{LiveProbes, MasterFact, RepFact};
use anyhow::{bail, Context};
use flowcharts::Step;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

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
    pub(crate) fn describe(&self) -> String {
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

/// A master among a step's targets.
pub(crate) struct MasterRef<'a> {
    pub db: u32,
    pub addr: SocketAddr,
    pub file: u32,
    pub log: u32,
    pub name: &'a str,
}

impl Bound {
    /// The step's target masters, in order.
    pub(crate) fn masters(&self) -> impl Iterator<Item = MasterRef<'_>> {
        self.targets.iter().filter_map(|t| match t {
            Target::Master {
                db,
                addr,
                file,
                log,
                name,
            } => Some(MasterRef {
                db: *db,
                addr: *addr,
                file: *file,
                log: *log,
                name,
            }),
            _ => None,
        })
    }

    pub(crate) fn describe(&self) -> String {
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

    /// Whether this step is `action`.
    pub(crate) fn is(&self, action: Action) -> bool {
        Action::parse(&self.action) == Some(action)
    }

    /// Steps that wait for a person.
    pub(crate) fn operator(&self) -> bool {
        matches!(
            Action::parse(&self.action),
            Some(Action::ManualIntervention | Action::RestartDatabases | Action::RecoverDatabase)
        )
    }
}

/// Declares [`Action`] and its table of tree names from one list.
macro_rules! actions {
    ($($variant:ident = $name:literal),+ $(,)?) => {
        /// Every action a recovery tree may name: the executor ([`Exec::step`])
        /// matches on it exhaustively, so an action without an executor does
        /// not compile, and a test checks the trees name exactly these.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub(crate) enum Action {
            $($variant),+
        }

        impl Action {
            pub(crate) const ALL: &'static [(Action, &'static str)] =
                &[$((Action::$variant, $name)),+];
        }
    };
}

actions! {
    AwaitLink = "await_link",
    ManualIntervention = "manual_intervention",
    QuiesceMaster = "quiesce_master",
    RaiseIncarnation = "raise_incarnation",
    ReapplyRecoverableTransactions = "reapply_recoverable_transactions",
    RebuildLogToMasterLevel = "rebuild_log_to_master_level",
    PromoteFullReplicate = "promote_full_replicate",
    RecordGap = "record_gap",
    RecoverDatabase = "recover_database",
    RecordLostSeqs = "record_lost_seqs",
    ReinstallTopology = "reinstall_topology",
    RefreshLog = "refresh_log",
    RegenerateToEnd = "regenerate_to_end",
    ReinitReplicate = "reinit_replicate",
    ReloadReplicateFromFullReplicate = "reload_replicate_from_full_replicate",
    ReloadReplicateFromMaster = "reload_replicate_from_master",
    RerunFailedTransactions = "rerun_failed_transactions",
    ResetError = "reset_error",
    RestartDatabases = "restart_databases",
    RestartTasks = "restart_tasks",
    RestoreAdminFromCopy = "restore_admin_from_copy",
    RestoreAdminFromExport = "restore_admin_from_export",
    RestoreCopySet = "restore_copy_set",
    RestoreMasterFromFullReplicate = "restore_master_from_full_replicate",
    ResumeMaster = "resume_master",
    StopTasks = "stop_tasks",
    TakeCopySet = "take_copy_set",
    VerifyDefinitions = "verify_definitions",
    VerifyMasterLog = "verify_master_log",
    VerifyReplicates = "verify_replicates",
}

impl Action {
    pub(crate) fn parse(name: &str) -> Option<Action> {
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
            if b.is(Action::RestoreAdminFromCopy) && b.targets.is_empty() {
                // Bound now: once restored, the files are no longer damaged.
                b.targets = admin_targets(p);
            }
            Ok(b)
        })
        .collect()
}

pub(crate) fn master_target(m: &MasterFact) -> Target {
    Target::Master {
        db: m.db.0,
        addr: m.addr,
        file: m.fnr.0,
        log: m.log.0,
        name: m.name.clone(),
    }
}

pub(crate) fn rep_target(r: &RepFact, p: &LiveProbes) -> Target {
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
pub(crate) fn admin_targets(p: &LiveProbes) -> Vec<Target> {
    p.damaged_admins()
        .into_iter()
        .map(|a| Target::Admin {
            db: a.db.0,
            addr: a.addr,
            file: a.fnr.0,
        })
        .collect()
}

pub(crate) fn resolve(var: &str, p: &LiveProbes) -> anyhow::Result<Vec<Target>> {
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
        "down_databases" => p
            .down
            .iter()
            .filter(|d| d.kind == super::probes::DownKind::Stopped)
            .map(|d| Target::Database {
                db: d.db.0,
                addr: d.addr,
            })
            .collect(),
        "uninitialized_replicates" => p
            .reps
            .iter()
            .filter(|r| p.uninitialized(r))
            .map(|r| rep_target(r, p))
            .collect(),
        "diverged_replicates" => p
            .reps
            .iter()
            .filter(|r| r.diverged.is_some())
            .map(|r| rep_target(r, p))
            .collect(),
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
