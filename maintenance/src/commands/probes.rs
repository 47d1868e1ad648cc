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

pub struct LiveProbes {
    unreachable: Vec<String>,
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
    pub fn gather(node: SocketAddr) -> anyhow::Result<LiveProbes> {
        let text = match Client::connect(node)?.call(&Request::AdminExport)? {
            Response::Text(t) => t,
            other => anyhow::bail!("node {node} answered {other:?} to AdminExport"),
        };
        let v = Valid::parse(&text).map_err(|e| anyhow::anyhow!("node {node}'s topology: {e}"))?;
        let mut p = LiveProbes {
            unreachable: Vec::new(),
            admin: Vec::new(),
            masters: Vec::new(),
            logs: Vec::new(),
            replicates: Vec::new(),
            confirmations: Vec::new(),
            reports: Vec::new(),
        };
        let mut clients: BTreeMap<DbId, Client> = BTreeMap::new();
        for (db, addr) in &v.addresses {
            match Client::connect(*addr).and_then(|mut c| c.call(&Request::Info).map(|_| c)) {
                Ok(c) => {
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
                    p.reports.extend(ts.into_iter().flat_map(|t| t.replicates));
                }
            }
        }
        for r in &v.replicates {
            let db = DbId(r.def.database);
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
        Ok(p)
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
            other => Answer::unanswerable(format!(
                "probe `{other}` is not built yet: answer it by hand (etp recover walk, to come)"
            )),
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
