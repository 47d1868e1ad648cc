//! The vocabulary a tree may use: probe names, action names (with the
//! parameters each takes) and the `$variables` parameters may name.
//!
//! The library only checks names; the engine side gives them meaning. A
//! caller that implements fewer probes or actions builds its own
//! [`Registry`], and validation then refuses trees that need the rest.

use std::collections::BTreeMap;

use serde::Serialize;

/// An action and the parameters it accepts (name → meaning).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActionSpec {
    pub description: String,
    pub params: BTreeMap<String, String>,
}

/// Known probes, actions and parameter variables, each with a one-line
/// description.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Registry {
    probes: BTreeMap<String, String>,
    actions: BTreeMap<String, ActionSpec>,
    variables: BTreeMap<String, String>,
}

impl Registry {
    /// An empty registry: every probe and action is unknown.
    pub fn new() -> Registry {
        Registry::default()
    }

    pub fn with_probe(mut self, name: &str, description: &str) -> Registry {
        self.probes
            .insert(name.to_string(), description.to_string());
        self
    }

    /// `params` are `(name, meaning)` pairs.
    pub fn with_action(
        mut self,
        name: &str,
        description: &str,
        params: &[(&str, &str)],
    ) -> Registry {
        let params = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.actions.insert(
            name.to_string(),
            ActionSpec {
                description: description.to_string(),
                params,
            },
        );
        self
    }

    /// A variable is named without its `$`.
    pub fn with_variable(mut self, name: &str, description: &str) -> Registry {
        self.variables
            .insert(name.to_string(), description.to_string());
        self
    }

    pub fn has_probe(&self, name: &str) -> bool {
        self.probes.contains_key(name)
    }

    pub fn action(&self, name: &str) -> Option<&ActionSpec> {
        self.actions.get(name)
    }

    pub fn has_variable(&self, name: &str) -> bool {
        self.variables.contains_key(name)
    }

    /// Probes by name, with their description.
    pub fn probes(&self) -> impl Iterator<Item = (&str, &str)> {
        self.probes.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Actions by name.
    pub fn actions(&self) -> impl Iterator<Item = (&str, &ActionSpec)> {
        self.actions.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Variables by name (without `$`).
    pub fn variables(&self) -> impl Iterator<Item = (&str, &str)> {
        self.variables.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The full vocabulary of the shipped trees. The engine implements each
    /// probe (answer + evidence) and each action; the README lists them too.
    pub fn standard() -> Registry {
        let mut registry = Registry::new();
        for (name, description) in STANDARD_PROBES {
            registry = registry.with_probe(name, description);
        }
        for (name, description, params) in STANDARD_ACTIONS {
            registry = registry.with_action(name, description, params);
        }
        for (name, description) in STANDARD_VARIABLES {
            registry = registry.with_variable(name, description);
        }
        registry
    }
}

const TARGET: (&str, &str) = (
    "target",
    "the files, replicates or tasks the action works on",
);
const SOURCE: (&str, &str) = ("source", "where the content comes from");
const REASON: (&str, &str) = (
    "reason",
    "what the operator must do, in one or two sentences",
);

/// Probe names and what a `yes` means.
pub const STANDARD_PROBES: &[(&str, &str)] = &[
    // triage
    ("databases_restarted", "every database involved has finished its start-up PLOG replay (open transactions backed out, committed ones redone) and is open: none is stopped (its address refusing the tool and every node that tried); one cut off by a link fault counts as running (case 1)"),
    ("stopped_databases_open", "each stopped database opens when its node is started (presumed yes: only a start tells; an operator answers no for a node that exits with 'cannot open database')"),
    ("master_database_lost", "a stopped database holds a master of which the copy catalog holds no copy set (unanswerable without a copy area); its protection log is on the stopped database's disk, out of the tool's reach: an operator whose log reaches back to LSN 1 (db recover rebuilds from the log alone) answers no"),
    ("admin_damaged", "the administration file cannot be opened, fails its digest check, or its definitions contradict the files present"),
    ("master_damaged", "a master file (or its database's page store) cannot be opened or its digest disagrees with the PLOG: damaged, not merely unreachable"),
    ("log_damaged", "the master's log file cannot be opened, fails its digest, has a seq gap, or its last entry's master digest disagrees with the master"),
    ("replicate_damaged", "a replicate file cannot be opened or its digest disagrees with the digest its confirmation recorded"),
    ("replicate_diverged", "a replicate holds another history than its master's: its confirmation names a later incarnation than the master's, a seq past the master's level, or a seq the master's log holds from another incarnation (the master was set back behind it), or its digest disagrees with the master's at the seq it confirms"),
    ("site_uninitialized", "a replicate's database answers but holds no topology (its master reports the replicate `uninitialized`): a wiped site, or a new empty database in place of the one the topology names"),
    ("confirmation_damaged", "a confirmation file cannot be opened, fails its digest check, or names an (incarnation, seq) the master's log never had"),
    ("pending_reruns", "the client journal holds transactions that failed or were left unanswered while the master was unavailable, not yet rerun (no when no journal is given, saying so)"),
    ("master_isolated", "a master cannot reach one or more of its replicates' databases, or a replication task stopped on a link failure"),
    // case 1
    ("master_transaction_interrupted", "the client journal or the node's error log shows a master update transaction that failed or was left open when the link broke"),
    ("interrupted_transaction_used_et", "the interrupted update ran as a transaction ended by ET, so autobackout removed it (no: files were changed outside transaction control)"),
    ("master_reachable", "the master's node and every involved replicate database answer over their links now"),
    ("tasks_restart_by_themselves", "each affected replication task has a restart interval, the policy mode is automatic, and tasks are not stopped for maintenance"),
    ("replicate_in_error", "some replicate of this master is in `error`, or marked in use by a task that is no longer running"),
    // case 2
    ("unit_copy_with_intact_plog", "a catalogued copy of the unit (replicate + confirmation + every replicate sharing it) exists and the PLOG from its LSN to the failure is complete and passes its CRCs"),
    ("reload_quicker_than_roll_forward", "reloading the unit from its copy is quicker than restore + roll forward: the PLOG to replay since the copy is larger than the copy"),
    ("restored_replicate_behind_master", "the unit copy's confirmation level (incarnation, seq) is below the master's current level"),
    ("replicate_copy_above_cleanup_horizon", "a catalogued copy of the unit exists and the log still holds every entry after its confirmation seq (the copy is at or above the cleanup horizon)"),
    ("replicate_partial", "the affected replicate is partial (a field list and/or a selection predicate)"),
    ("full_replicate_available", "an undamaged, reachable full replicate of this master exists"),
    // cases 3 and 4
    ("master_log_copy_with_intact_plog", "a catalogued master+log copy set exists and the PLOG from its LSN to the failure is complete and passes its CRCs"),
    ("restored_log_behind_master", "the log in the newest master+log copy ends below the master's current seq (the master committed after the copy)"),
    ("master_consistent", "the master's digest equals the digest recorded for its last committed seq, so a copy taken now is a sound common level"),
    ("master_copy_exists", "the copy catalog holds at least one intact (digest-verified) copy of the master"),
    ("master_copy_newer_than_full_replicate", "the newest intact master copy is at or above the confirmation level of the most recently synchronized full replicate (yes when there is no full replicate)"),
    ("log_copy_matches_master_copy", "the log copy of that copy set is intact and was taken at the same LSN as the master copy"),
    ("replicate_ahead_of_master", "some replicate's confirmation (incarnation, seq) is beyond the level the master is restored to"),
    // case 5
    ("admin_copy_with_intact_plog", "a catalogued copy of the administration file exists and the PLOG from its LSN to the failure is complete and passes its CRCs"),
    ("admin_copy_exists", "the copy catalog holds at least one intact copy of the administration file"),
    ("admin_export_current", "a topology export (TOML) exists that is at least as recent as the last definition change the PLOG records"),
    ("definitions_changed_after_copy", "the PLOG or the maintenance journal records definition changes made after the newest administration copy"),
];

/// `(name, description, parameters as (name, meaning))`.
pub type ActionEntry = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

/// Action names, what each does, and its parameters.
pub const STANDARD_ACTIONS: &[ActionEntry] = &[
    ("restart_databases", "start (or restart) each database so its PLOG replay backs out open transactions and redoes committed ones (general step 1)", &[TARGET]),
    ("recover_database", "on each target database's host, rebuild the database that will not open with etp db recover (its copy sets and live and archived PLOG, or the PLOG alone; in place, the damaged directory kept), then start its node (an operator step: the tool does not run on that host)", &[TARGET]),
    ("promote_full_replicate", "make the target full replicate (the freshest) the master: quiesce the old master if it answers, give the replicate its own log at its confirmed seq and a raised incarnation, repoint and reload the other replicates, record the lost seqs, apply the topology everywhere (etp master promote)", &[TARGET]),
    ("stop_tasks", "stop the replication and cleanup tasks serving the target at a safe point and keep them stopped (maintenance mode when the administration file is readable, else per node)", &[TARGET]),
    ("quiesce_master", "refuse new client update transactions on the master (clients get a retryable error; transactions with an id are journaled for rerun); the recovery's own re-apply still runs", &[TARGET]),
    ("resume_master", "accept update transactions on the master again", &[TARGET]),
    ("await_link", "wait until every database involved is reachable again; replicates keep serving reads and the master keeps committing and logging meanwhile", &[TARGET]),
    ("restore_copy_set", "restore the newest usable copy set that holds the target; every member of the set (master + log, or replicate + confirmation + sharing replicates) is restored together", &[TARGET]),
    ("regenerate_to_end", "roll the restored files forward with the PLOG from the copy's LSN to the end of the PLOG", &[TARGET]),
    ("rebuild_log_to_master_level", "roll the restored master+log set forward with the PLOG until the log's last seq is the master's pre-failure level; fails if the PLOG lacks an entry", &[TARGET]),
    ("verify_master_log", "check that the log's last seq and recorded master digest equal the master's current level and digest", &[TARGET]),
    ("refresh_log", "empty the log and start it at the master's current level; nothing older can be sent to replicates afterwards", &[TARGET]),
    ("raise_incarnation", "raise the master's incarnation, so confirmations from before the restore are recognised as another history", &[TARGET]),
    ("take_copy_set", "take a fresh consistent copy set of the target now and catalogue it (older copies no longer match a rebuilt log)", &[TARGET]),
    ("reload_replicate_from_master", "install the target replicates from a consistent copy of the master (taken now, or the restored master's copy) and set each confirmation to that copy's (incarnation, seq)", &[TARGET]),
    ("reload_replicate_from_full_replicate", "install the target replicates from the source full replicate and set each confirmation to the source's level (the source itself is left as it is)", &[TARGET, SOURCE]),
    ("reinit_replicate", "reinitialize partial replicates loaded from a master or full-replicate source: drop records outside the selection, project to the field list; confirmation stays at the source level (no-op for full replicates)", &[TARGET]),
    ("restore_master_from_full_replicate", "load the master from the source full replicate; the master's level becomes that replicate's confirmation level", &[TARGET, SOURCE]),
    ("rerun_failed_transactions", "resubmit the journaled client transactions that failed while the master was unavailable; an id already committed is refused as done, so nothing applies twice", &[TARGET]),
    ("reapply_recoverable_transactions", "collect, in commit order, the transactions committed after the restored level that the readable PLOG and client journals still hold, and rerun them as new ET transactions so they are logged and propagate", &[TARGET]),
    ("reinstall_topology", "apply the topology the live nodes serve to every node again: a node without it (a wiped site) re-creates its files; the others are left as they are", &[TARGET]),
    ("record_lost_seqs", "record in the recovery journal, per target replicate, the seqs it held that its master's history no longer has (lost with the master's rewind), for the operator and the audit", &[TARGET]),
    ("record_gap", "record in the recovery journal the master levels lost for good (after the restored level and not recoverable), for the operator and the audit", &[TARGET]),
    ("restore_admin_from_copy", "restore only the administration file from its newest catalogued copy (masters and logs keep their level: replication positions live in confirmation files)", &[]),
    ("restore_admin_from_export", "rebuild the administration file by applying the newest topology export (TOML)", &[SOURCE]),
    ("verify_definitions", "check every definition against the files present: masters, logs, replicates and confirmation files exist with their roles, fields and predicates", &[]),
    ("reset_error", "after confirming no task runs on them, clear the `error` state and in-use marks of the target replicates (error log kept)", &[TARGET]),
    ("restart_tasks", "start the replication tasks for the target; each asks every replicate for its confirmation and resumes from there", &[TARGET]),
    ("verify_replicates", "wait until every target replicate's confirmation equals the log's last seq with the expected digest; report any left in error", &[TARGET]),
    ("manual_intervention", "stop and tell the operator what to do (reason); the plan goes on only when the operator confirms it is done", &[REASON]),
];

/// Variables action parameters may name (written `$name`); the engine binds
/// them from the diagnosis context.
pub const STANDARD_VARIABLES: &[(&str, &str)] = &[
    ("all", "every database, master and task of the topology"),
    ("master", "the master file concerned, with its log file"),
    ("log", "the master's log file"),
    ("replicate", "the affected replicate file"),
    ("unit", "the affected replicate, its confirmation file and every replicate sharing that confirmation file"),
    ("replicates", "every replicate of the master"),
    ("ahead_replicates", "the replicates whose confirmation is beyond the restored master's level"),
    ("full_replicate", "the newest undamaged full replicate of the master"),
    ("down_databases", "the databases found stopped: their address refuses connections, to the tool and to every node that tried"),
    ("uninitialized_replicates", "the replicates whose database answers but holds no topology (a wiped site)"),
    ("diverged_replicates", "the replicates holding another history than their master's (ahead of it, or at a seq of another incarnation)"),
    ("stale_replicates", "the replicates whose in-use or error marks no longer match reality"),
    ("admin", "the administration file"),
    ("topology_export", "the newest topology export (TOML)"),
];
