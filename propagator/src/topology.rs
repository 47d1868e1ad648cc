//! The topology: which databases exist, which files are masters, which
//! replicates copy them, and how their replication tasks behave.
//!
//! Written by an operator as TOML (see `examples/topology.toml`), checked
//! whole before anything changes, and kept in every node's administration
//! file. Each node takes its own part: the master's node defines the master
//! and its log file and runs the task; a replicate's node creates the
//! replicate and confirmation files.
//!
//! ```toml
//! [[database]]
//! dbid = 1
//! address = "127.0.0.1:7401"
//!
//! [[master]]
//! database = 1
//! file = 10
//! name = "items"
//! log = 11
//! fields = ["id", "grp", "qty", "note"]
//!
//! [[replicate]]
//! name = "items_part"
//! master_database = 1
//! master = 10
//! database = 3
//! file = 30
//! confirmation = 31
//! fields = ["id", "grp", "qty"]           # omit both for a full replicate
//! predicate = "grp % 4 == 0 && qty > 10"
//!
//! [[task]]
//! master_database = 1
//! master = 10
//! restart_interval_s = 5                   # omit: a lost link stops the task
//! ```

use crate::catalog::{valid_file_name, Role};
use crate::ids::{DbId, Fnr};
use crate::predicate::Predicate;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

/// The administration file's number unless the topology says otherwise.
pub const DEFAULT_ADMIN_FILE: u32 = 255;

fn default_admin() -> u32 {
    DEFAULT_ADMIN_FILE
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    #[serde(default = "default_admin")]
    pub admin_file: u32,
    #[serde(rename = "database", default)]
    pub databases: Vec<DatabaseDef>,
    #[serde(rename = "master", default)]
    pub masters: Vec<MasterDef>,
    #[serde(rename = "replicate", default)]
    pub replicates: Vec<ReplicateDef>,
    #[serde(rename = "task", default)]
    pub tasks: Vec<TaskDef>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseDef {
    pub dbid: u32,
    pub address: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MasterDef {
    pub database: u32,
    pub file: u32,
    pub name: String,
    pub log: u32,
    /// The fields the master's records carry: its schema. A client store or
    /// update naming another field is refused (unless `extra_fields` is
    /// "allow"); predicates and replicates' field lists name only these.
    pub fields: Vec<String>,
    /// "refuse" (the default): a store or update naming an undeclared
    /// field is refused. "allow": any field is taken.
    #[serde(default, skip_serializing_if = "ExtraFields::is_refuse")]
    pub extra_fields: ExtraFields,
}

/// What a client store or update may do with a field its master does not
/// declare.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExtraFields {
    #[default]
    Refuse,
    Allow,
}

impl ExtraFields {
    fn is_refuse(&self) -> bool {
        *self == ExtraFields::Refuse
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicateDef {
    pub name: String,
    pub master_database: u32,
    pub master: u32,
    pub database: u32,
    pub file: u32,
    pub confirmation: u32,
    /// Partial replicates: the fields kept (all when absent).
    pub fields: Option<Vec<String>>,
    /// Partial replicates: the CEL selection predicate (all records when absent).
    pub predicate: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskDef {
    pub master_database: u32,
    pub master: u32,
    /// Reconnect by itself after a lost link, backing off up to this many seconds.
    pub restart_interval_s: Option<u64>,
    /// Batches in flight per replicate (default 16; whatever the window,
    /// at most 8 MiB of images once more than one batch is in flight).
    pub window: Option<u32>,
    /// Log records per batch, at most (default 2000; whole transactions).
    pub batch: Option<u32>,
    /// Records per chunk of an initial load or reinit (default 16384; at most
    /// 8 MB of records per reading thread either way: a partial replicate's
    /// chunk is read by two).
    pub load_chunk: Option<u32>,
    /// `etp replicate status` and `etp log plan-cleanup` warn when the
    /// master's log file holds more than this many MiB (default 1024).
    pub log_warn_mb: Option<u64>,
    /// A wiped replicate site synced down (seed 000) is declared synced
    /// once its backlog stays at or under this many log records
    /// (default 1000) ...
    pub sync_down_backlog: Option<u64>,
    /// ... for this many seconds (default 10).
    pub sync_down_settle_s: Option<u64>,
}

/// A replicate with its predicate compiled.
#[derive(Clone, Debug)]
pub struct Replicate {
    pub def: ReplicateDef,
    pub address: SocketAddr,
    pub predicate: Option<Predicate>,
}

impl Replicate {
    pub fn is_partial(&self) -> bool {
        self.def.fields.is_some() || self.predicate.is_some()
    }
}

/// A checked topology.
#[derive(Clone, Debug)]
pub struct Valid {
    pub text: String,
    pub topology: Topology,
    pub addresses: BTreeMap<DbId, SocketAddr>,
    pub replicates: Vec<Replicate>,
}

/// Every file the topology puts on one database, with its role.
#[derive(Clone, Debug, PartialEq)]
pub struct FileWant {
    pub fnr: Fnr,
    pub name: String,
    pub role: Role,
}

#[derive(Debug, thiserror::Error)]
#[error("topology refused: {0}")]
pub struct TopologyError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, TopologyError> {
    Err(TopologyError(msg.into()))
}

impl Valid {
    /// Parses and checks a topology; nothing is changed anywhere by this.
    pub fn parse(text: &str) -> Result<Valid, TopologyError> {
        let topology: Topology = toml::from_str(text)
            .map_err(|e| TopologyError(format!("not a valid topology: {e}")))?;
        let mut addresses = BTreeMap::new();
        for d in &topology.databases {
            let addr: SocketAddr = crate::addr::resolve(&d.address)
                .map_err(|e| TopologyError(format!("database {}: address {e}", d.dbid)))?;
            if addresses.insert(DbId(d.dbid), addr).is_some() {
                return err(format!("database {} is defined twice", d.dbid));
            }
        }
        let known_db = |what: &str, db: u32| -> Result<(), TopologyError> {
            if addresses.contains_key(&DbId(db)) {
                Ok(())
            } else {
                err(format!(
                    "{what} names database {db}, which the topology does not define"
                ))
            }
        };
        if topology.admin_file == 0 {
            return err("admin_file must be a file number from 1");
        }
        // Per file: what claimed it, and whether it may be shared (a
        // confirmation file serves several replicates).
        let mut files: BTreeMap<(u32, u32), (String, bool)> = BTreeMap::new();
        let mut claim = |db: u32, fnr: u32, what: String, shareable: bool| {
            if fnr == 0 {
                return err(format!("{what}: file numbers start at 1"));
            }
            if fnr == topology.admin_file {
                return err(format!("{what}: file {fnr} is the administration file"));
            }
            match files.get(&(db, fnr)) {
                Some((prev, prev_shareable)) if !(shareable && *prev_shareable) => err(format!(
                    "{what}: file {fnr} on database {db} is already {prev}"
                )),
                _ => {
                    files.insert((db, fnr), (what, shareable));
                    Ok(())
                }
            }
        };
        let mut masters = BTreeMap::new();
        for m in &topology.masters {
            let what = format!("master {:?}", m.name);
            known_db(&what, m.database)?;
            if !valid_file_name(&m.name) {
                return err(format!("{what}: not a valid file name"));
            }
            if m.fields.is_empty() {
                return err(format!("{what}: list the fields its records carry"));
            }
            for f in &m.fields {
                crate::record::check_field_name(f)
                    .map_err(|e| TopologyError(format!("{what}: {e}")))?;
            }
            claim(m.database, m.file, what.clone(), false)?;
            claim(m.database, m.log, format!("the log file of {what}"), false)?;
            if masters.insert((m.database, m.file), m).is_some() {
                return err(format!("{what} is defined twice"));
            }
        }
        let mut names = BTreeSet::new();
        let mut replicates = Vec::new();
        for r in &topology.replicates {
            let what = format!("replicate {:?}", r.name);
            if !valid_file_name(&r.name) {
                return err(format!("{what}: not a valid name"));
            }
            if !names.insert(r.name.clone()) {
                return err(format!("{what} is defined twice"));
            }
            known_db(&what, r.database)?;
            known_db(&what, r.master_database)?;
            let Some(m) = masters.get(&(r.master_database, r.master)) else {
                return err(format!(
                    "{what} copies file {} of database {}, which is not a master in the topology",
                    r.master, r.master_database
                ));
            };
            if let Some(fields) = &r.fields {
                if fields.is_empty() {
                    return err(format!("{what}: an empty field list"));
                }
                if let Some(f) = fields.iter().find(|f| !m.fields.contains(f)) {
                    return err(format!(
                        "{what}: field {f:?} is not a field of master {:?} (it has {})",
                        m.name,
                        m.fields.join(", ")
                    ));
                }
            }
            let predicate = match &r.predicate {
                None => None,
                Some(src) => Some(
                    Predicate::compile(src, &m.fields)
                        .map_err(|e| TopologyError(format!("{what}: {e}")))?,
                ),
            };
            claim(r.database, r.file, what.clone(), false)?;
            claim(
                r.database,
                r.confirmation,
                format!("confirmation file of {what}"),
                true,
            )?;
            replicates.push(Replicate {
                def: r.clone(),
                address: addresses[&DbId(r.database)],
                predicate,
            });
        }
        let mut tasks = BTreeSet::new();
        for t in &topology.tasks {
            let what = format!(
                "task of master file {} on database {}",
                t.master, t.master_database
            );
            if !masters.contains_key(&(t.master_database, t.master)) {
                return err(format!("{what}: not a master in the topology"));
            }
            if !tasks.insert((t.master_database, t.master)) {
                return err(format!("{what} is defined twice"));
            }
            if t.window == Some(0) || t.batch == Some(0) {
                return err(format!("{what}: window and batch must be at least 1"));
            }
            if t.restart_interval_s == Some(0) {
                return err(format!(
                    "{what}: restart_interval_s must be at least 1 (omit it for none)"
                ));
            }
        }
        Ok(Valid {
            text: text.to_string(),
            topology,
            addresses,
            replicates,
        })
    }

    pub fn admin_file(&self) -> Fnr {
        Fnr(self.topology.admin_file)
    }

    /// The declared fields of each master on database `db` that refuses
    /// undeclared ones (see [`crate::Database::set_schemas`]).
    pub fn schemas_on(&self, db: DbId) -> BTreeMap<Fnr, BTreeSet<String>> {
        self.topology
            .masters
            .iter()
            .filter(|m| m.database == db.0 && m.extra_fields == ExtraFields::Refuse)
            .map(|m| (Fnr(m.file), m.fields.iter().cloned().collect()))
            .collect()
    }

    /// The files this topology puts on database `db`.
    pub fn files_on(&self, db: DbId) -> Vec<FileWant> {
        let mut out = Vec::new();
        for m in self.topology.masters.iter().filter(|m| m.database == db.0) {
            out.push(FileWant {
                fnr: Fnr(m.file),
                name: m.name.clone(),
                role: Role::Master {
                    log: Fnr(m.log),
                    incarnation: 1,
                },
            });
        }
        for r in self
            .topology
            .replicates
            .iter()
            .filter(|r| r.database == db.0)
        {
            out.push(FileWant {
                fnr: Fnr(r.file),
                name: r.name.clone(),
                role: Role::Replicate,
            });
            if !out.iter().any(|w| w.fnr == Fnr(r.confirmation)) {
                out.push(FileWant {
                    fnr: Fnr(r.confirmation),
                    name: format!("confirm-{}", r.confirmation),
                    role: Role::Confirmation,
                });
            }
        }
        out
    }

    /// The masters on database `db` with the replicates of each and the task settings.
    pub fn tasks_on(&self, db: DbId) -> Vec<(MasterDef, TaskDef, Vec<Replicate>)> {
        self.topology
            .masters
            .iter()
            .filter(|m| m.database == db.0)
            .map(|m| {
                let task = self
                    .topology
                    .tasks
                    .iter()
                    .find(|t| t.master_database == m.database && t.master == m.file)
                    .cloned()
                    .unwrap_or(TaskDef {
                        master_database: m.database,
                        master: m.file,
                        restart_interval_s: None,
                        window: None,
                        batch: None,
                        load_chunk: None,
                        log_warn_mb: None,
                        sync_down_backlog: None,
                        sync_down_settle_s: None,
                    });
                let reps = self
                    .replicates
                    .iter()
                    .filter(|r| r.def.master_database == m.database && r.def.master == m.file)
                    .cloned()
                    .collect();
                (m.clone(), task, reps)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../examples/topology.toml");

    #[test]
    fn the_example_topology_is_valid() {
        let v = Valid::parse(EXAMPLE).expect("valid");
        assert_eq!(v.replicates.len(), 2);
        assert!(v.replicates.iter().any(|r| r.is_partial()));
        assert_eq!(v.files_on(DbId(1)).len(), 1);
        assert_eq!(v.files_on(DbId(3)).len(), 2);
    }

    #[test]
    fn declared_fields_are_the_schema_unless_extra_fields_are_allowed() {
        let v = Valid::parse(EXAMPLE).expect("valid");
        let s = v.schemas_on(DbId(1));
        let want: BTreeSet<String> = ["id", "grp", "qty", "note"].map(String::from).into();
        assert_eq!(s.get(&Fnr(10)), Some(&want));
        assert!(
            v.schemas_on(DbId(2)).is_empty(),
            "replicates take no schema"
        );
        let allow = EXAMPLE.replace(
            "fields = [\"id\", \"grp\", \"qty\", \"note\"]",
            "fields = [\"id\", \"grp\", \"qty\", \"note\"]\nextra_fields = \"allow\"",
        );
        assert_ne!(allow, EXAMPLE);
        let v = Valid::parse(&allow).expect("valid");
        assert!(v.schemas_on(DbId(1)).is_empty(), "allow: any field");
        refused(&allow.replace("\"allow\"", "\"sometimes\""), "sometimes");
    }

    fn refused(text: &str, needle: &str) {
        let e = Valid::parse(text).expect_err("must be refused").to_string();
        assert!(e.contains(needle), "{needle:?} not in {e:?}");
    }

    #[test]
    fn bad_topologies_are_refused_naming_the_problem() {
        refused(&EXAMPLE.replace("grp % 4 == 0", "grp % % 4"), "items_part");
        refused(&EXAMPLE.replace("qty > 10", "weight > 10"), "weight");
        refused(
            &EXAMPLE.replace("database = 3", "database = 9"),
            "database 9",
        );
        refused(
            &EXAMPLE.replace("\"id\", \"grp\", \"qty\"]", "\"id\", \"colour\"]"),
            "colour",
        );
        refused(&format!("{EXAMPLE}\nbogus = 1\n"), "bogus");
        refused(
            "[[database]]\ndbid = 1\naddress = \"nowhere\"\n",
            "host:port",
        );
    }
}
