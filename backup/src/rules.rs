//! The copy rules (seed 004, "File Saving Requirements"; DOMAIN.md §3):
//!
//! 1. A master is copied with its log file, at one LSN, and with the
//!    administration file of its database if there is one.
//! 2. A replicate is copied with its confirmation file, at one LSN; a
//!    confirmation file shared by several replicates is copied with all of
//!    them.
//! 3. A log file or a confirmation file is never copied on its own.
//! 4. A set is one of: master + log (+ administration), replicates +
//!    confirmation, plain files. Other mixes are refused: take them as
//!    separate sets of one job.
//! 5. Within one job a replicate is copied after its master.
//!
//! Rules 1 and 2 *add* what is missing (and say so); 3 to 5 refuse.

use crate::error::Error;
use propagator::{DbId, FileDef, Fnr, Role};
use std::collections::{BTreeMap, BTreeSet};

pub use crate::area::SetKind;

/// Replicate file → (its confirmation file, its master (database, file)),
/// for the replicates of one database, from the topology.
pub type Groups = BTreeMap<Fnr, (Fnr, (DbId, Fnr))>;

/// The members of one set and what was added to follow the rules.
#[derive(Clone, Debug, PartialEq)]
pub struct Planned {
    pub kind: SetKind,
    /// Members in copy order: masters before logs, replicates before
    /// their confirmation.
    pub files: Vec<Fnr>,
    pub added: Vec<String>,
}

/// Plans one set of database files from what was asked for.
pub fn plan_set(defs: &[FileDef], groups: &Groups, asked: &[Fnr]) -> Result<Planned, Error> {
    let by: BTreeMap<Fnr, &FileDef> = defs.iter().map(|d| (d.fnr, d)).collect();
    if asked.is_empty() {
        return Err(Error::Refused("name at least one file to copy".into()));
    }
    let mut want: BTreeSet<Fnr> = BTreeSet::new();
    let mut added = Vec::new();
    let mut kinds = BTreeSet::new();
    let admin = defs
        .iter()
        .find(|d| d.role == Role::Administration)
        .map(|d| d.fnr);
    for f in asked {
        let Some(def) = by.get(f) else {
            return Err(Error::Refused(format!(
                "file {f} does not exist in this database"
            )));
        };
        match &def.role {
            Role::Log { master } => return Err(Error::Refused(format!(
                "file {f} ({}) is the log of master {master}: a log file is copied only with its master; copy file {master}",
                def.name
            ))),
            Role::Master { log, .. } => {
                kinds.insert(SetKind::Master);
                want.insert(*f);
                if !asked.contains(log) {
                    added.push(format!("log file {log} (copied with its master {f})"));
                }
                want.insert(*log);
                if let Some(a) = admin {
                    if !asked.contains(&a) && want.insert(a) {
                        added.push(format!(
                            "administration file {a} (copied with the masters of its database)"
                        ));
                    }
                }
            }
            Role::Replicate => {
                kinds.insert(SetKind::Replicate);
                let Some((conf, _)) = groups.get(f) else {
                    return Err(Error::Refused(format!(
                        "replicate file {f} ({}) has no confirmation file in the topology: a replicate is copied only with its confirmation",
                        def.name
                    )));
                };
                want.insert(*f);
                for (r, (c, _)) in groups {
                    if c == conf && want.insert(*r) && !asked.contains(r) {
                        added.push(format!(
                            "replicate file {r} (shares confirmation file {conf} with {f})"
                        ));
                    }
                }
                if want.insert(*conf) && !asked.contains(conf) {
                    added.push(format!("confirmation file {conf} (of replicate {f})"));
                }
            }
            Role::Confirmation => {
                kinds.insert(SetKind::Replicate);
                let members: Vec<Fnr> = groups
                    .iter()
                    .filter(|(_, (c, _))| c == f)
                    .map(|(r, _)| *r)
                    .collect();
                if members.is_empty() {
                    return Err(Error::Refused(format!(
                        "confirmation file {f} ({}) confirms no replicate in the topology: a confirmation file is copied only with its replicates",
                        def.name
                    )));
                }
                want.insert(*f);
                for r in members {
                    if want.insert(r) && !asked.contains(&r) {
                        added.push(format!("replicate file {r} (confirmed in file {f})"));
                    }
                }
            }
            Role::Administration => {
                kinds.insert(SetKind::Master);
                want.insert(*f);
            }
            Role::Plain => {
                kinds.insert(SetKind::Plain);
                want.insert(*f);
            }
        }
    }
    // An administration file alone is a set of its own kind "master"
    // (it belongs with masters); plain files may go with anything.
    let real: BTreeSet<SetKind> = kinds
        .iter()
        .copied()
        .filter(|k| *k != SetKind::Plain)
        .collect();
    if real.len() > 1 {
        return Err(Error::Refused("a copy set is either a master with its log or replicates with their confirmation file, not both: take them as separate sets of one job (masters first)".into()));
    }
    let kind = real.into_iter().next().unwrap_or(SetKind::Plain);
    // Copy order: by role (masters, logs, replicates, confirmations, the rest), then fnr.
    let rank = |f: &Fnr| match by.get(f).map(|d| &d.role) {
        Some(Role::Master { .. }) => 0,
        Some(Role::Log { .. }) => 1,
        Some(Role::Replicate) => 2,
        Some(Role::Confirmation) => 3,
        _ => 4,
    };
    let mut files: Vec<Fnr> = want.into_iter().collect();
    files.sort_by_key(|f| (rank(f), *f));
    Ok(Planned { kind, files, added })
}

/// One set of a job: the database, and the files planned for it.
#[derive(Clone, Debug)]
pub struct JobSet {
    pub dbid: DbId,
    pub planned: Planned,
    /// For a replicate set: the masters (database, file) of its replicates.
    pub masters: Vec<(DbId, Fnr)>,
}

/// Rule 5: in a job, every replicate set comes after the set of each of its
/// masters that the job copies.
pub fn check_job_order(sets: &[JobSet]) -> Result<(), Error> {
    for (i, s) in sets.iter().enumerate() {
        for (mdb, m) in &s.masters {
            let later = sets.iter().enumerate().skip(i + 1).find(|(_, t)| {
                t.dbid == *mdb && t.planned.kind == SetKind::Master && t.planned.files.contains(m)
            });
            if let Some((j, _)) = later {
                return Err(Error::Refused(format!(
                    "set {} (replicates on database {}) comes before set {} with their master {m} (database {mdb}): within one job a replicate is copied after its master",
                    i + 1,
                    s.dbid,
                    j + 1
                )));
            }
        }
    }
    Ok(())
}

/// The copy rules checked on a job's sets from the topology alone (when the
/// job is defined, before any run): each set's files are what the topology
/// says they are (a file it does not name is taken as a plain file; the
/// run checks it against its database's catalog), so a log or
/// confirmation copied on its own, a mix of kinds, or a replicate set
/// before its master's set is refused then, not at the first run.
pub fn check_sets_with_topology(
    v: &propagator::topology::Valid,
    sets: &[(DbId, Vec<Fnr>)],
) -> Result<(), Error> {
    let mut planned = Vec::new();
    for (i, (db, files)) in sets.iter().enumerate() {
        if !v.addresses.contains_key(db) {
            return Err(Error::Refused(format!(
                "set {}: database {db} is not in the topology",
                i + 1
            )));
        }
        let mut defs: BTreeMap<Fnr, FileDef> = BTreeMap::new();
        let mut put = |fnr: Fnr, role: Role| {
            defs.insert(
                fnr,
                FileDef {
                    fnr,
                    name: format!("file {fnr}"),
                    role,
                    restoring: None,
                    hold: None,
                },
            );
        };
        put(v.admin_file(), Role::Administration);
        for m in v.topology.masters.iter().filter(|m| m.database == db.0) {
            put(
                Fnr(m.file),
                Role::Master {
                    log: Fnr(m.log),
                    incarnation: 0,
                },
            );
            put(
                Fnr(m.log),
                Role::Log {
                    master: Fnr(m.file),
                },
            );
        }
        for r in v.replicates.iter().filter(|r| r.def.database == db.0) {
            put(Fnr(r.def.file), Role::Replicate);
            put(Fnr(r.def.confirmation), Role::Confirmation);
        }
        for f in files {
            defs.entry(*f).or_insert(FileDef {
                fnr: *f,
                name: format!("file {f}"),
                role: Role::Plain,
                restoring: None,
                hold: None,
            });
        }
        let defs: Vec<FileDef> = defs.into_values().collect();
        let groups = groups_of(Some(v), *db);
        let p = plan_set(&defs, &groups, files)
            .map_err(|e| Error::Refused(format!("set {} (database {db}): {e}", i + 1)))?;
        let masters = p
            .files
            .iter()
            .filter_map(|f| groups.get(f).map(|(_, m)| *m))
            .collect();
        planned.push(JobSet {
            dbid: *db,
            planned: p,
            masters,
        });
    }
    check_job_order(&planned)
}

/// The confirmation groups of database `db`'s replicates, from a topology.
pub fn groups_of(topology: Option<&propagator::topology::Valid>, db: DbId) -> Groups {
    let mut g = Groups::new();
    if let Some(t) = topology {
        for r in &t.replicates {
            if r.def.database == db.0 {
                g.insert(
                    Fnr(r.def.file),
                    (
                        Fnr(r.def.confirmation),
                        (DbId(r.def.master_database), Fnr(r.def.master)),
                    ),
                );
            }
        }
    }
    g
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(fnr: u32, role: Role) -> FileDef {
        FileDef {
            fnr: Fnr(fnr),
            name: format!("f{fnr}"),
            role,
            restoring: None,
            hold: None,
        }
    }

    fn db() -> (Vec<FileDef>, Groups) {
        let defs = vec![
            def(1, Role::Administration),
            def(
                10,
                Role::Master {
                    log: Fnr(11),
                    incarnation: 1,
                },
            ),
            def(11, Role::Log { master: Fnr(10) }),
            def(20, Role::Replicate),
            def(21, Role::Replicate),
            def(22, Role::Replicate),
            def(29, Role::Confirmation),
            def(39, Role::Confirmation),
            def(50, Role::Plain),
        ];
        let mut g = Groups::new();
        g.insert(Fnr(20), (Fnr(29), (DbId(1), Fnr(10))));
        g.insert(Fnr(21), (Fnr(29), (DbId(1), Fnr(10))));
        g.insert(Fnr(22), (Fnr(39), (DbId(1), Fnr(10))));
        (defs, g)
    }

    #[test]
    fn a_master_brings_its_log_and_the_administration_file() {
        let (d, g) = db();
        let p = plan_set(&d, &g, &[Fnr(10)]).expect("plans");
        assert_eq!(p.kind, SetKind::Master);
        assert_eq!(p.files, vec![Fnr(10), Fnr(11), Fnr(1)]);
        assert_eq!(p.added.len(), 2, "{:?}", p.added);
    }

    #[test]
    fn a_shared_confirmation_forces_its_whole_group() {
        let (d, g) = db();
        let p = plan_set(&d, &g, &[Fnr(20)]).expect("plans");
        assert_eq!(p.kind, SetKind::Replicate);
        assert_eq!(p.files, vec![Fnr(20), Fnr(21), Fnr(29)]);
        let p = plan_set(&d, &g, &[Fnr(29)]).expect("plans");
        assert_eq!(p.files, vec![Fnr(20), Fnr(21), Fnr(29)]);
        let p = plan_set(&d, &g, &[Fnr(22)]).expect("plans");
        assert_eq!(p.files, vec![Fnr(22), Fnr(39)]);
    }

    #[test]
    fn a_log_alone_a_mix_and_an_unknown_file_are_refused() {
        let (d, g) = db();
        let e = plan_set(&d, &g, &[Fnr(11)]).expect_err("log alone");
        assert!(e.to_string().contains("copied only with its master"), "{e}");
        let e = plan_set(&d, &g, &[Fnr(10), Fnr(20)]).expect_err("mix");
        assert!(e.to_string().contains("separate sets"), "{e}");
        let e = plan_set(&d, &g, &[Fnr(77)]).expect_err("unknown");
        assert!(e.to_string().contains("file 77 does not exist"), "{e}");
        let e = plan_set(&d, &Groups::new(), &[Fnr(20)]).expect_err("no topology");
        assert!(e.to_string().contains("no confirmation file"), "{e}");
        let p = plan_set(&d, &g, &[Fnr(50)]).expect("plain alone");
        assert_eq!(p.kind, SetKind::Plain);
    }

    #[test]
    fn a_replicate_before_its_master_in_a_job_is_refused() {
        let (d, g) = db();
        let m = JobSet {
            dbid: DbId(1),
            planned: plan_set(&d, &g, &[Fnr(10)]).expect("plans"),
            masters: vec![],
        };
        let r = JobSet {
            dbid: DbId(2),
            planned: plan_set(&d, &g, &[Fnr(22)]).expect("plans"),
            masters: vec![(DbId(1), Fnr(10))],
        };
        check_job_order(&[m.clone(), r.clone()]).expect("master first is fine");
        let e = check_job_order(&[r, m]).expect_err("replicate first");
        assert!(e.to_string().contains("copied after its master"), "{e}");
    }
}
