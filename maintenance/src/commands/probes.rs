//! Probes that answer the recovery flows' questions from the live nodes.
//!
//! The facts are gathered once per diagnosis (every node's reachability,
//! the damage each reports for the topology's files, the master nodes'
//! task reports) and each probe answers from them with the evidence it
//! used. Probes not built yet answer "unanswerable", naming themselves, so
//! a walk stops there instead of guessing.

use flowcharts::{Answer, Answers, Node, NodeKind};
use propagator::node::client::Client;
use propagator::topology::Valid;
use propagator::wire::{ReplicateReport, Request, Response};
use propagator::{DbId, Fnr};
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// A file of the topology and what its node says of it.
struct FileFact {
    what: String,
    damaged: Option<String>,
}

/// A replicate of the topology, as the probes need it.
struct RepFact {
    name: String,
    db: DbId,
    file: Fnr,
    master_db: DbId,
    master: Fnr,
    partial: bool,
    damaged: bool,
}

pub struct LiveProbes {
    unreachable: Vec<String>,
    reachable: Vec<DbId>,
    reps: Vec<RepFact>,
    /// Per master (database, file): its last seq and the records its log holds.
    logs_held: BTreeMap<(DbId, Fnr), (u64, u64)>,
    /// Per database: the first LSN its protection log still holds, and its last.
    plog: BTreeMap<DbId, (u64, u64)>,
    /// The catalogued copy sets, when a copy area was given.
    sets: Option<Vec<backup::CopySet>>,
    admin: Vec<FileFact>,
    masters: Vec<FileFact>,
    logs: Vec<FileFact>,
    replicates: Vec<FileFact>,
    confirmations: Vec<FileFact>,
    reports: Vec<ReplicateReport>,
}

fn stat(c: &mut Client, fnr: Fnr, what: String) -> FileFact {
    let damaged = match c.call(&Request::FileStat { file: fnr }) {
        Ok(Response::Stat { damaged, .. }) => damaged,
        Ok(other) => Some(format!("unexpected answer {other:?}")),
        Err(e) => Some(e.to_string()),
    };
    FileFact { what, damaged }
}

impl LiveProbes {
    /// Gathers the facts from every node of the topology `node` holds.
    pub fn gather(node: SocketAddr, area: Option<&std::path::Path>) -> anyhow::Result<LiveProbes> {
        let text = match Client::connect(node)?.call(&Request::AdminExport)? {
            Response::Text(t) => t,
            other => anyhow::bail!("node {node} answered {other:?} to AdminExport"),
        };
        let v = Valid::parse(&text).map_err(|e| anyhow::anyhow!("node {node}'s topology: {e}"))?;
        let mut p = LiveProbes {
            unreachable: Vec::new(),
            reachable: Vec::new(),
            reps: Vec::new(),
            logs_held: BTreeMap::new(),
            plog: BTreeMap::new(),
            sets: match area {
                Some(a) => Some(backup::Area::open(a)?.list()?),
                None => None,
            },
            admin: Vec::new(),
            masters: Vec::new(),
            logs: Vec::new(),
            replicates: Vec::new(),
            confirmations: Vec::new(),
            reports: Vec::new(),
        };
        let mut clients: BTreeMap<DbId, Client> = BTreeMap::new();
        for (db, addr) in &v.addresses {
            match Client::connect(*addr).and_then(|mut c| c.call(&Request::Info).map(|i| (c, i))) {
                Ok((mut c, info)) => {
                    let last = match info {
                        Response::Info(i) => i.last_lsn.0,
                        _ => 0,
                    };
                    if let Ok(Response::Segments(segs)) = c.call(&Request::PlogSegments) {
                        if let Some(first) = segs.first() {
                            p.plog.insert(*db, (first.first_lsn.0, last));
                        }
                    }
                    p.reachable.push(*db);
                    clients.insert(*db, c);
                }
                Err(e) => p.unreachable.push(format!("database {db} at {addr}: {e}")),
            }
        }
        let admin = v.admin_file();
        for (db, c) in clients.iter_mut() {
            p.admin.push(stat(
                c,
                admin,
                format!("administration file {admin} on database {db}"),
            ));
        }
        for m in &v.topology.masters {
            if let Some(c) = clients.get_mut(&DbId(m.database)) {
                let db = DbId(m.database);
                p.masters.push(stat(
                    c,
                    Fnr(m.file),
                    format!("master {} (file {}) on database {db}", m.name, m.file),
                ));
                p.logs.push(stat(
                    c,
                    Fnr(m.log),
                    format!("log file {} of master {} on database {db}", m.log, m.name),
                ));
                if let Ok(Response::Tasks(ts)) = c.call(&Request::TaskStatus) {
                    for t in ts {
                        p.logs_held
                            .insert((db, t.master), (t.master_seq.0, t.log_records));
                        p.reports.extend(t.replicates);
                    }
                }
            }
        }
        for r in &v.replicates {
            let db = DbId(r.def.database);
            p.reps.push(RepFact {
                name: r.def.name.clone(),
                db,
                file: Fnr(r.def.file),
                master_db: DbId(r.def.master_database),
                master: Fnr(r.def.master),
                partial: r.is_partial(),
                damaged: false,
            });
            if let Some(c) = clients.get_mut(&db) {
                p.replicates.push(stat(
                    c,
                    Fnr(r.def.file),
                    format!(
                        "replicate {} (file {}) on database {db}",
                        r.def.name, r.def.file
                    ),
                ));
                p.confirmations.push(stat(
                    c,
                    Fnr(r.def.confirmation),
                    format!(
                        "confirmation file {} of replicate {} on database {db}",
                        r.def.confirmation, r.def.name
                    ),
                ));
            }
        }
        for (rep, (f, c)) in p
            .reps
            .iter_mut()
            .zip(p.replicates.iter().zip(&p.confirmations))
        {
            rep.damaged = f.damaged.is_some() || c.damaged.is_some();
        }
        Ok(p)
    }

    /// The replicate a case is about: the first one found damaged.
    fn unit(&self) -> Option<&RepFact> {
        self.reps.iter().find(|r| r.damaged)
    }

    /// The newest copy set holding the unit's replicate file, and the seq
    /// its confirmation holds.
    fn unit_copy(&self) -> Result<Option<(&backup::CopySet, u64)>, Answer> {
        let Some(unit) = self.unit() else {
            return Err(Answer::unanswerable(
                "no replicate is damaged: there is no unit to recover",
            ));
        };
        let Some(sets) = &self.sets else {
            return Err(Answer::unanswerable(
                "no copy area given (--area DIR): copies cannot be looked for",
            ));
        };
        Ok(sets
            .iter()
            .rev()
            .filter(|s| s.dbid == unit.db && s.member(unit.file).is_some())
            .find_map(|s| {
                s.confirmed
                    .iter()
                    .find(|c| c.replicate == unit.name)
                    .map(|c| (s, c.seq))
            }))
    }

    /// The first seq the unit's master still holds in its log, and its last.
    fn master_log(&self, unit: &RepFact) -> Option<(u64, u64)> {
        self.logs_held
            .get(&(unit.master_db, unit.master))
            .map(|(last, held)| (last.saturating_sub(*held) + 1, *last))
    }

    fn case2(&self, name: &str) -> Answer {
        let Some(unit) = self.unit() else {
            return Answer::unanswerable("no replicate is damaged: there is no unit to recover");
        };
        match name {
            "master_reachable" => {
                if self.reachable.contains(&unit.master_db) {
                    Answer::yes(format!(
                        "database {} of master {} answers",
                        unit.master_db, unit.master
                    ))
                } else {
                    Answer::no(format!(
                        "database {} of master {} does not answer",
                        unit.master_db, unit.master
                    ))
                }
            }
            "replicate_partial" => {
                if unit.partial {
                    Answer::yes(format!(
                        "replicate {} has a field list or a selection",
                        unit.name
                    ))
                } else {
                    Answer::no(format!("replicate {} is full", unit.name))
                }
            }
            "full_replicate_available" => {
                match self.reps.iter().find(|r| {
                    r.name != unit.name
                        && r.master_db == unit.master_db
                        && r.master == unit.master
                        && !r.partial
                        && !r.damaged
                        && self.reachable.contains(&r.db)
                }) {
                    Some(r) => Answer::yes(format!(
                        "full replicate {} on database {} is intact",
                        r.name, r.db
                    )),
                    None => Answer::no(format!(
                        "no other intact full replicate of master {}",
                        unit.master
                    )),
                }
            }
            _ => {
                let (set, seq) = match self.unit_copy() {
                    Err(a) => return a,
                    Ok(None) => {
                        return Answer::no(format!(
                            "no copy set holds replicate {} with its confirmation",
                            unit.name
                        ))
                    }
                    Ok(Some(x)) => x,
                };
                match name {
                    "unit_copy_with_intact_plog" => match self.plog.get(&unit.db) {
                        Some((first, last)) if *first <= set.lsn.0 + 1 => Answer::yes(format!(
                            "copy set {} at LSN {}; the protection log of database {} holds LSN {first} to {last}",
                            set.id, set.lsn, unit.db
                        )),
                        Some((first, _)) => Answer::no(format!(
                            "copy set {} at LSN {}, but the protection log of database {} starts at LSN {first}",
                            set.id, set.lsn, unit.db
                        )),
                        None => Answer::unanswerable(format!("database {} does not answer", unit.db)),
                    },
                    "reload_quicker_than_roll_forward" | "replicate_copy_above_cleanup_horizon" => {
                        match self.master_log(unit) {
                            None => Answer::unanswerable(format!("the task of master {} does not report its log", unit.master)),
                            Some((first, last)) if seq + 1 >= first => Answer::yes(format!(
                                "copy set {} confirms seq {seq}; master {}'s log holds seq {first} to {last}, so replication can bring it up from there",
                                set.id, unit.master
                            )),
                            Some((first, last)) => Answer::no(format!(
                                "copy set {} confirms seq {seq}, but master {}'s log holds only seq {first} to {last}",
                                set.id, unit.master
                            )),
                        }
                    }
                    "restored_replicate_behind_master" => match self.master_log(unit) {
                        None => Answer::unanswerable(format!("the task of master {} does not report its log", unit.master)),
                        Some((_, last)) if seq < last => Answer::yes(format!(
                            "copy set {} confirms seq {seq}; the master is at seq {last}",
                            set.id
                        )),
                        Some((_, last)) => Answer::no(format!(
                            "copy set {} confirms seq {seq}; the master is at seq {last}",
                            set.id
                        )),
                    },
                    other => Answer::unanswerable(format!(
                        "probe `{other}` is not built yet: answer it by hand (etp recover walk, to come)"
                    )),
                }
            }
        }
    }

    fn damage(facts: &[FileFact], none: &str) -> Answer {
        let bad: Vec<String> = facts
            .iter()
            .filter_map(|f| {
                f.damaged
                    .as_ref()
                    .map(|d| format!("{} is damaged: {d}", f.what))
            })
            .collect();
        if bad.is_empty() {
            let names: Vec<&str> = facts.iter().map(|f| f.what.as_str()).collect();
            Answer::no(format!("{none}: {}", names.join("; ")))
        } else {
            Answer::yes(bad.join("; "))
        }
    }

    /// The probe's answer, with its evidence.
    pub fn probe(&self, name: &str) -> Answer {
        match name {
            "databases_restarted" => {
                if self.unreachable.is_empty() {
                    Answer::yes(
                        "every database of the topology answers (its restart recovery ran at open)",
                    )
                } else {
                    Answer::no(format!("not answering: {}", self.unreachable.join("; ")))
                }
            }
            "admin_damaged" => Self::damage(&self.admin, "intact"),
            "master_damaged" => Self::damage(&self.masters, "intact"),
            "log_damaged" => Self::damage(&self.logs, "intact"),
            "replicate_damaged" => Self::damage(&self.replicates, "intact"),
            "confirmation_damaged" => Self::damage(&self.confirmations, "intact"),
            "master_isolated" => {
                let cut: Vec<String> = self
                    .reports
                    .iter()
                    .filter(|r| r.state == "offline" || r.state == "error")
                    .map(|r| {
                        format!(
                            "replicate {} is {} ({})",
                            r.name,
                            r.state,
                            r.reason.clone().unwrap_or_else(|| r.phase.clone())
                        )
                    })
                    .collect();
                if cut.is_empty() {
                    Answer::no(format!(
                        "{} replicate(s), every one fed",
                        self.reports.len()
                    ))
                } else {
                    Answer::yes(cut.join("; "))
                }
            }
            other => self.case2(other),
        }
    }
}

impl Answers for LiveProbes {
    type Error = std::convert::Infallible;
    fn answer(&mut self, node: &Node) -> Result<Answer, Self::Error> {
        Ok(match &node.kind {
            NodeKind::Question(q) => match &q.probe {
                Some(p) => self.probe(p),
                None => Answer::unanswerable(
                    "the question has no probe: only an operator can answer it",
                ),
            },
            NodeKind::Leaf(_) => Answer::unanswerable("not a question"),
        })
    }
}
