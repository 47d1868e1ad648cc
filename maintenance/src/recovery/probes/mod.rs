//! Probes that answer the recovery flows' questions from the live nodes.
//!
//! The facts are gathered once per diagnosis — every node's reachability,
//! the state each reports for the topology's files (content checked against
//! the recorded digest where a file is marked damaged), every replicate's
//! confirmation read from its own confirmation file, the master nodes' task
//! reports, the copy catalog, the client journal and the topology export —
//! and each probe answers from them with the evidence it used. A probe that
//! cannot decide answers "unanswerable" and says why, so a walk stops there
//! instead of guessing.

mod case1;
mod case2;
mod case34;
mod case5;
mod damage;

use flowcharts::{Answer, Answers, Node, NodeKind};
use propagator::node::client::Client;
use propagator::topology::Valid;
use propagator::wire::{AdminRequest, CopyRequest, OperationRequest, ReadRequest};
use propagator::wire::{Divergence, Request, Response, TaskReport};
use propagator::{DbId, Fnr, Isn};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// What a node says of one of its files.
#[derive(Clone, Debug)]
pub struct Stat {
    pub count: u64,
    pub digest: String,
    pub damaged: Option<propagator::catalog::Damage>,
    pub next_isn: u64,
    /// For a file marked damaged: its content's (count, digest) as read
    /// now, when it differs from the recorded level (damaged in its own
    /// right, not only as a partner).
    pub content_differs: Option<(u64, String)>,
}

impl Stat {
    /// Damaged in its own right: marked, and its content disagrees with its
    /// recorded level (or could not be read).
    fn own_damage(&self) -> Option<String> {
        match (&self.damaged, &self.content_differs) {
            (d, Some((c, dg))) => Some(format!(
                "{}it holds {c} records, digest {dg}; its recorded level is {} records, digest {}",
                d.as_ref()
                    .map(|d| format!("{d}; "))
                    .unwrap_or_else(|| "not yet noticed by its node: ".into()),
                self.count,
                self.digest
            )),
            // Marked only because its partner is damaged, and holding
            // what it should: not damaged in its own right.
            (Some(d), None) if d.partner.is_some() => None,
            (Some(d), None) => Some(d.reason.clone()),
            (None, None) => None,
        }
    }
}

/// A master of the topology.
#[derive(Clone, Debug)]
pub struct MasterFact {
    pub db: DbId,
    pub addr: SocketAddr,
    pub fnr: Fnr,
    pub log: Fnr,
    pub name: String,
    pub stat: Option<Stat>,
    pub log_stat: Option<Stat>,
    pub task: Option<TaskReport>,
    /// Its incarnation, as its node's catalog defines it.
    pub incarnation: Option<u32>,
}

impl MasterFact {
    /// The master's current level: its log's last seq.
    pub fn level(&self) -> Option<u64> {
        self.log_stat
            .as_ref()
            .filter(|s| s.next_isn > 0)
            .map(|s| s.next_isn.saturating_sub(1))
    }
}

/// A replicate of the topology.
#[derive(Clone, Debug)]
pub struct RepFact {
    pub name: String,
    pub db: DbId,
    pub addr: SocketAddr,
    pub file: Fnr,
    pub confirmation: Fnr,
    pub master_db: DbId,
    pub master: Fnr,
    pub partial: bool,
    pub stat: Option<Stat>,
    pub conf_stat: Option<Stat>,
    /// (seq, incarnation) its confirmation file holds.
    pub confirmed: Option<(u64, u32)>,
    /// What the master's task reports of it.
    pub state: Option<String>,
    pub reason: Option<String>,
    /// It holds another history than its master's (ahead of it, or a seq
    /// of another incarnation): what shows it.
    pub diverged: Option<Divergence>,
}

impl RepFact {
    pub fn damaged(&self) -> bool {
        let d = |s: &Option<Stat>| {
            s.as_ref()
                .is_some_and(|s| s.damaged.is_some() || s.content_differs.is_some())
        };
        d(&self.stat) || d(&self.conf_stat)
    }
}

/// The administration file of one database.
#[derive(Clone, Debug)]
pub struct AdminFact {
    pub db: DbId,
    pub addr: SocketAddr,
    pub fnr: Fnr,
    pub damaged: Option<String>,
    /// The topology the node serves (None: it serves none).
    pub topology: Option<String>,
}

/// Where the probes look besides the nodes.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    /// The copy area.
    pub area: Option<PathBuf>,
    /// The client journal (`etp exec --journal DIR`) of the master's clients.
    pub journal: Option<PathBuf>,
    /// A topology export (`etp admin export`), also used to find the nodes
    /// when the given node holds no topology.
    pub export: Option<PathBuf>,
}

/// How a database the tool cannot reach is down.
#[derive(Clone, Debug, PartialEq)]
pub enum DownKind {
    /// Its address refuses connections, to the tool and to every node
    /// that tried: nothing listens there — the node is stopped.
    Stopped,
    /// Another node reaches it: it runs, and only the tool's path to it is cut.
    CutOffFromTool,
    /// Nobody reaches it, and not because its address refuses: a cut path
    /// (or a hung node) — a link fault, not a stopped node.
    PathFault,
}

impl DownKind {
    /// How a database the tool could not reach is down, from the tool's
    /// own attempt (`refused`: its address refused the connection) and
    /// what every node that answers found when it tried.
    pub fn judge(refused: bool, peers: &[&propagator::wire::ReachReport]) -> DownKind {
        if peers.iter().any(|r| r.reached) {
            // Another node reaches it: it runs; only the tool's path is cut.
            DownKind::CutOffFromTool
        } else if !peers.is_empty() && peers.iter().all(|r| r.refused) {
            // Every node that tried was refused: stopped, whatever the
            // tool's own path said.
            DownKind::Stopped
        } else if refused && peers.iter().all(|r| r.refused) {
            // Nobody else could say; its address refused the tool.
            DownKind::Stopped
        } else {
            DownKind::PathFault
        }
    }
}

/// A database the tool could not reach, and what its peers say of it.
#[derive(Clone, Debug)]
pub struct Down {
    pub db: DbId,
    pub addr: SocketAddr,
    pub reason: String,
    pub kind: DownKind,
    /// Each reachable node's attempt: (node's database, its report).
    pub peers: Vec<(DbId, propagator::wire::ReachReport)>,
}

impl Down {
    pub fn describe(&self) -> String {
        let peers: Vec<String> = self
            .peers
            .iter()
            .map(|(from, r)| match (r.reached, r.refused) {
                (true, _) => format!("database {from}'s node reaches it"),
                (false, true) => format!("refused to database {from}'s node too"),
                (false, false) => format!(
                    "database {from}'s node cannot reach it either: {}",
                    r.reason.as_deref().unwrap_or("no reason given")
                ),
            })
            .collect();
        format!(
            "database {} at {}: {}{}",
            self.db,
            self.addr,
            self.reason,
            if peers.is_empty() {
                String::new()
            } else {
                format!(" ({})", peers.join("; "))
            }
        )
    }
}

pub struct LiveProbes {
    pub topology: Valid,
    pub sources: Sources,
    /// The databases the tool could not reach, told apart.
    pub down: Vec<Down>,
    pub reachable: BTreeSet<DbId>,
    pub masters: Vec<MasterFact>,
    pub reps: Vec<RepFact>,
    pub admins: Vec<AdminFact>,
    /// Per database: the first LSN its protection log still holds, and its last.
    pub plog: BTreeMap<DbId, (u64, u64)>,
    /// Per database and copy-set LSN (the newest set of each of its
    /// files): its protection log read from there to its end, every frame
    /// checked (or why it could not be).
    pub plog_read: BTreeMap<(DbId, u64), Result<propagator::plog::survey::ReadBack, String>>,
    /// The catalogued copy sets, when a copy area was given.
    pub sets: Option<Vec<backup::CopySet>>,
    /// Pending client transactions, when a journal was given.
    pub pending: Option<Vec<crate::journal::Entry>>,
    pub export: Option<String>,
    /// Files with no copy newer than a node's alarm age, as the nodes with
    /// a copy area report them: warnings beside the diagnosis.
    pub copy_alarms: Vec<String>,
}

fn last_lsn(c: &mut Client) -> Option<u64> {
    match c.call(&Request::Read(ReadRequest::Info)) {
        Ok(Response::Info(i)) => Some(i.last_lsn.0),
        _ => None,
    }
}

/// What the node says of a file, its content summed afresh: read again
/// until no commit landed between the recorded level and the sum (a busy
/// file would otherwise look damaged); after a few tries the content check
/// is left out, and only the node's own damage mark counts.
fn stat(c: &mut Client, fnr: Fnr) -> Option<Stat> {
    for _ in 0..8 {
        let before = last_lsn(c)?;
        let s = stat_once(c, fnr)?;
        if last_lsn(c)? == before {
            return Some(s);
        }
    }
    stat_once(c, fnr).map(|s| Stat {
        content_differs: None,
        ..s
    })
}

fn stat_once(c: &mut Client, fnr: Fnr) -> Option<Stat> {
    match c.call(&Request::Read(ReadRequest::FileStat { file: fnr })) {
        Ok(Response::Stat {
            count,
            digest,
            damaged,
            next_isn,
        }) => {
            // The content is read and summed whether or not the node has
            // noticed damage: bytes changed behind its back after a clean
            // stop are found only here (or when a task trips on them).
            let content_differs = match c.call(&Request::Read(ReadRequest::RangeDigest {
                file: fnr,
                from: Isn(1),
                to: None,
                records: false,
            })) {
                Ok(Response::Range {
                    count: n,
                    digest: d,
                    ..
                }) if (n, d) != (count, digest) => Some((n, d.to_string())),
                Ok(Response::Range { .. }) => None,
                Ok(other) => Some((0, format!("unreadable: {other:?}"))),
                Err(e) => Some((0, format!("unreadable: {e}"))),
            };
            Some(Stat {
                count,
                digest: digest.to_string(),
                damaged,
                next_isn,
                content_differs,
            })
        }
        // The node answered but cannot stat the file (a file of the
        // topology it does not hold): as good as damaged.
        Err(propagator::node::client::ClientError::Remote { message, .. }) => Some(Stat {
            count: 0,
            digest: String::new(),
            damaged: Some(propagator::catalog::Damage::own(message)),
            next_isn: 0,
            content_differs: Some((0, "unreadable".into())),
        }),
        _ => None,
    }
}

/// The confirmation a replicate's confirmation file holds for it.
pub(crate) fn read_confirmation(c: &mut Client, conf: Fnr, file: Fnr) -> Option<(u64, u32)> {
    let Ok(Response::Records { items, .. }) = c.call(&Request::Read(ReadRequest::Dump {
        file: conf,
        from: Isn(u64::from(file.0)),
        limit: 1,
        // A tool inspects what it holds, whatever its state.
        stale: true,
    })) else {
        return None;
    };
    let (isn, bytes) = items.first()?;
    if *isn != Isn(u64::from(file.0)) {
        return None;
    }
    let rec = propagator::record::decode_record(bytes).ok()?;
    let c = propagator::confirmation::confirmation_from_record(&rec).ok()?;
    Some((c.seq.0, c.incarnation))
}

/// Whether a replicate's confirmation shows another history than its
/// master's, read from the master's catalog and log (the feeder's own
/// check at link open, made here whether or not a task has tried): a later
/// incarnation than the master's, a seq past its level, or a seq its log
/// holds from another incarnation.
fn divergence(c: &mut Client, m: &MasterFact, r: &RepFact) -> Option<Divergence> {
    let (seq, inc) = r.confirmed?;
    let confirmed = (propagator::Seq(seq), inc);
    let master = (propagator::Seq(m.level().unwrap_or(0)), m.incarnation?);
    // The master's log record at a seq (None: it holds none there, or it
    // could not be read).
    let record_at = |s: propagator::Seq| {
        let Ok(Response::Records { items, .. }) = c.call(&Request::Read(ReadRequest::Dump {
            file: m.log,
            from: Isn(s.0),
            limit: 1,
            // A tool inspects what it holds, whatever its state.
            stale: true,
        })) else {
            return Ok::<_, std::convert::Infallible>(None);
        };
        Ok(items
            .first()
            .filter(|(isn, _)| *isn == Isn(s.0))
            .and_then(|(_, bytes)| propagator::LogRecord::decode(bytes).ok())
            .map(|r| (r.incarnation, r.is_base())))
    };
    match Divergence::judge(confirmed, master, record_at) {
        Ok(d) => d,
        Err(never) => match never {},
    }
}

fn topology_of(node: SocketAddr, export: Option<&Path>) -> anyhow::Result<(Valid, Option<String>)> {
    let export_text = match export {
        Some(p) => Some(std::fs::read_to_string(p).map_err(|e| {
            anyhow::anyhow!("cannot read the topology export {}: {e}", p.display())
        })?),
        None => None,
    };
    let held =
        Client::connect(node).and_then(|mut c| c.call(&Request::Admin(AdminRequest::AdminExport)));
    let text = match (held, &export_text) {
        (Ok(Response::Text(t)), _) => t,
        (_, Some(t)) => t.clone(),
        (Ok(Response::Error { message, .. }), None) => anyhow::bail!(
            "node {node} holds no usable topology ({message}): give a topology export (--export FILE) so the other nodes can be found"
        ),
        (Ok(other), None) => anyhow::bail!("node {node} answered {other:?} to AdminExport"),
        (Err(e), None) => anyhow::bail!("node {node} does not answer: {e}"),
    };
    let v = Valid::parse(&text).map_err(|e| anyhow::anyhow!("the topology: {e}"))?;
    Ok((v, export_text))
}

impl LiveProbes {
    /// Gathers the facts from every node of the topology `node` holds (or
    /// the export names).
    pub fn gather(node: SocketAddr, sources: &Sources) -> anyhow::Result<LiveProbes> {
        let (v, export) = topology_of(node, sources.export.as_deref())?;
        let sets = match &sources.area {
            Some(a) => Some(backup::Area::open(a)?.list()?),
            None => None,
        };
        let pending = match &sources.journal {
            Some(j) => Some(
                crate::journal::read(j)
                    .map_err(|e| anyhow::anyhow!("the client journal {}: {e}", j.display()))?
                    .pending,
            ),
            None => None,
        };
        let mut p = LiveProbes {
            topology: v.clone(),
            sources: sources.clone(),
            down: Vec::new(),
            reachable: BTreeSet::new(),
            masters: Vec::new(),
            reps: Vec::new(),
            admins: Vec::new(),
            plog: BTreeMap::new(),
            plog_read: BTreeMap::new(),
            sets,
            pending,
            export,
            copy_alarms: Vec::new(),
        };
        let mut clients: BTreeMap<DbId, Client> = BTreeMap::new();
        for (db, addr) in &v.addresses {
            match Client::connect(*addr)
                .and_then(|mut c| c.call(&Request::Read(ReadRequest::Info)).map(|i| (c, i)))
            {
                Ok((mut c, info)) => {
                    let last = match info {
                        Response::Info(i) => i.last_lsn.0,
                        _ => 0,
                    };
                    if let Ok(Response::Segments(segs)) =
                        c.call(&Request::Copy(CopyRequest::PlogSegments))
                    {
                        if let Some(first) = segs.first() {
                            p.plog.insert(*db, (first.first_lsn.0, last));
                        }
                    }
                    p.reachable.insert(*db);
                    clients.insert(*db, c);
                }
                Err(e) => {
                    p.down.push(Down {
                        db: *db,
                        addr: *addr,
                        reason: e.to_string(),
                        kind: if e.refused() {
                            DownKind::Stopped
                        } else {
                            DownKind::PathFault
                        },
                        peers: Vec::new(),
                    });
                }
            }
        }
        // Ask every node that answers whether it reaches the ones that do
        // not: one that is reached runs; one whose address refuses everyone
        // is stopped; any other failure is a link fault.
        for d in &mut p.down {
            for (from, c) in clients.iter_mut() {
                if let Ok(Response::Reach(r)) =
                    c.call(&Request::Read(ReadRequest::Reach { database: d.db }))
                {
                    d.peers.push((*from, r));
                }
            }
            let peers: Vec<&propagator::wire::ReachReport> =
                d.peers.iter().map(|(_, r)| r).collect();
            d.kind = DownKind::judge(d.kind == DownKind::Stopped, &peers);
        }
        // Each database's log read back from its newest copy sets' LSNs:
        // a roll-forward from a set needs every frame after it.
        for (db, c) in clients.iter_mut() {
            let Some(sets) = &p.sets else { break };
            // The sets the probes pick (in catalog order, newest last):
            // per file its newest, and its newest with replicates'
            // confirmations (a unit's copy).
            let mine: Vec<&backup::CopySet> = sets.iter().filter(|s| s.dbid == *db).collect();
            let files: BTreeSet<Fnr> = mine
                .iter()
                .flat_map(|s| s.members.iter().map(|m| m.fnr))
                .collect();
            let mut lsns: BTreeSet<u64> = BTreeSet::new();
            for f in files {
                let holds = |s: &&&backup::CopySet| s.member(f).is_some();
                lsns.extend(mine.iter().rev().find(holds).map(|s| s.lsn.0));
                lsns.extend(
                    mine.iter()
                        .rev()
                        .filter(holds)
                        .find(|s| !s.confirmed.is_empty())
                        .map(|s| s.lsn.0),
                );
            }
            for lsn in lsns {
                let r = match c.call(&Request::Copy(CopyRequest::PlogCheck {
                    from: propagator::Lsn(lsn + 1),
                })) {
                    Ok(Response::Text(t)) => serde_json::from_str(&t)
                        .map_err(|e| format!("its answer is not a log read-back: {e}")),
                    Ok(Response::Error { message, .. }) => Err(message),
                    Ok(other) => Err(format!("it answered {other:?}")),
                    Err(e) => Err(e.to_string()),
                };
                p.plog_read.insert((*db, lsn), r);
            }
        }
        // Each node's catalog, read once.
        let mut catalogs: BTreeMap<DbId, Vec<propagator::FileDef>> = BTreeMap::new();
        for (db, c) in clients.iter_mut() {
            if let Ok(Response::CopyAges(ages)) = c.call(&Request::Read(ReadRequest::CopyAges)) {
                for a in ages.into_iter().filter(|a| a.alarm) {
                    let alarm = format!("no recent copy: {} ({})", a.what(), a.newest());
                    if !p.copy_alarms.contains(&alarm) {
                        p.copy_alarms.push(alarm);
                    }
                }
            }
            if let Ok(Response::Files { files, .. }) = c.call(&Request::Read(ReadRequest::Files)) {
                catalogs.insert(*db, files);
            }
        }
        let admin = v.admin_file();
        for (db, c) in clients.iter_mut() {
            let topology = match c.call(&Request::Admin(AdminRequest::AdminExport)) {
                Ok(Response::Text(t)) => Some(t),
                _ => None,
            };
            // A node with no topology and no administration file at all is
            // an uninitialized site (T4c), not a damaged one.
            let no_admin_file = topology.is_none()
                && catalogs
                    .get(db)
                    .is_some_and(|files| !files.iter().any(|f| f.fnr == admin));
            let damaged = if no_admin_file {
                None
            } else {
                stat(c, admin).and_then(|s| s.own_damage())
            };
            p.admins.push(AdminFact {
                db: *db,
                addr: v.addresses[db],
                fnr: admin,
                damaged,
                topology,
            });
        }
        for m in &v.topology.masters {
            let db = DbId(m.database);
            let mut f = MasterFact {
                db,
                addr: v.addresses[&db],
                fnr: Fnr(m.file),
                log: Fnr(m.log),
                name: m.name.clone(),
                stat: None,
                log_stat: None,
                task: None,
                incarnation: None,
            };
            if let Some(c) = clients.get_mut(&db) {
                f.stat = stat(c, f.fnr);
                f.log_stat = stat(c, f.log);
                f.incarnation = catalogs
                    .get(&db)
                    .and_then(|files| files.iter().find(|d| d.fnr == f.fnr))
                    .and_then(|d| match d.role {
                        propagator::Role::Master { incarnation, .. } => Some(incarnation),
                        _ => None,
                    });
                if let Ok(Response::Tasks(ts)) =
                    c.call(&Request::Operation(OperationRequest::TaskStatus))
                {
                    f.task = ts.into_iter().find(|t| t.master == f.fnr);
                }
            }
            p.masters.push(f);
        }
        for r in &v.replicates {
            let db = DbId(r.def.database);
            let mut f = RepFact {
                name: r.def.name.clone(),
                db,
                addr: v.addresses[&db],
                file: Fnr(r.def.file),
                confirmation: Fnr(r.def.confirmation),
                master_db: DbId(r.def.master_database),
                master: Fnr(r.def.master),
                partial: r.is_partial(),
                stat: None,
                conf_stat: None,
                confirmed: None,
                state: None,
                reason: None,
                diverged: None,
            };
            // A wiped site (its node serves no topology) holds none of its
            // files: uninitialized (T4c), not damaged.
            let wiped = p.admins.iter().any(|a| a.db == db && a.topology.is_none());
            if let Some(c) = clients.get_mut(&db).filter(|_| !wiped) {
                f.stat = stat(c, f.file);
                f.conf_stat = stat(c, f.confirmation);
                f.confirmed = read_confirmation(c, f.confirmation, f.file);
            }
            if let Some(rep) = p
                .masters
                .iter()
                .filter(|m| m.db == f.master_db && m.fnr == f.master)
                .filter_map(|m| m.task.as_ref())
                .flat_map(|t| &t.replicates)
                .find(|x| x.name == f.name)
            {
                f.state = Some(rep.state.to_string());
                f.reason = rep.reason.clone();
                f.diverged = rep.diverged.clone();
            }
            if f.diverged.is_none() {
                if let (Some(m), Some(c)) = (
                    p.masters
                        .iter()
                        .find(|m| m.db == f.master_db && m.fnr == f.master),
                    clients.get_mut(&f.master_db),
                ) {
                    f.diverged = divergence(c, m, &f);
                }
            }
            p.reps.push(f);
        }
        Ok(p)
    }

    /// The master a case is about: one whose master or log file is
    /// damaged, else the master of a damaged replicate, else of a replicate
    /// cut off, else the first.
    pub fn master(&self) -> Option<&MasterFact> {
        let damaged = |m: &&MasterFact| {
            m.stat.as_ref().is_some_and(|s| s.own_damage().is_some())
                || m.log_stat
                    .as_ref()
                    .is_some_and(|s| s.own_damage().is_some())
        };
        let of = |r: &RepFact| {
            self.masters
                .iter()
                .find(|m| m.db == r.master_db && m.fnr == r.master)
        };
        let stopped = |m: &&MasterFact| {
            self.down
                .iter()
                .any(|d| d.db == m.db && d.kind == DownKind::Stopped)
        };
        self.masters
            .iter()
            .find(damaged)
            .or_else(|| self.masters.iter().find(stopped))
            .or_else(|| self.reps.iter().find(|r| r.damaged()).and_then(of))
            .or_else(|| self.reps.iter().find(|r| r.diverged.is_some()).and_then(of))
            .or_else(|| self.reps.iter().find(|r| self.cut_off(r)).and_then(of))
            .or_else(|| self.masters.first())
    }

    /// The replicate's database answers but holds no topology (a wiped
    /// site): its master reports it so, or its node serves no topology.
    pub fn uninitialized(&self, r: &RepFact) -> bool {
        r.state.as_deref() == Some("uninitialized")
            || (self.reachable.contains(&r.db)
                && self
                    .admins
                    .iter()
                    .any(|a| a.db == r.db && a.topology.is_none()))
    }

    fn cut_off(&self, r: &RepFact) -> bool {
        matches!(r.state.as_deref(), Some("offline") | Some("error"))
            || !self.reachable.contains(&r.db)
    }

    /// The replicates of a master.
    pub fn replicates_of<'a>(&'a self, m: &MasterFact) -> impl Iterator<Item = &'a RepFact> {
        let (db, fnr) = (m.db, m.fnr);
        self.reps
            .iter()
            .filter(move |r| r.master_db == db && r.master == fnr)
    }

    /// The unit a case 2 is about: the first damaged replicate (or
    /// confirmation) and every replicate sharing its confirmation file.
    pub fn unit(&self) -> Vec<&RepFact> {
        let Some(first) = self.reps.iter().find(|r| r.damaged()) else {
            return Vec::new();
        };
        self.reps
            .iter()
            .filter(|r| r.db == first.db && r.confirmation == first.confirmation)
            .collect()
    }

    /// The newest intact, reachable full replicate of a master, other than `not`.
    pub fn full_replicate(&self, m: &MasterFact, not: &[&str]) -> Option<&RepFact> {
        self.replicates_of(m)
            .filter(|r| {
                !r.partial
                    && !r.damaged()
                    && !not.contains(&r.name.as_str())
                    && self.reachable.contains(&r.db)
            })
            .max_by_key(|r| r.confirmed.map_or(0, |c| c.0))
    }

    fn full_replicate_answer(&self, m: &MasterFact, not: &[&str]) -> Answer {
        match self.full_replicate(m, not) {
            Some(r) => Answer::yes(format!(
                "full replicate {} on database {} is intact (confirmed seq {})",
                r.name,
                r.db,
                r.confirmed.map_or(0, |c| c.0)
            )),
            None => Answer::no(format!(
                "no {}intact, reachable full replicate of master {}",
                if not.is_empty() { "" } else { "other " },
                m.name
            )),
        }
    }

    /// The administration files found damaged.
    pub fn damaged_admins(&self) -> Vec<&AdminFact> {
        self.admins.iter().filter(|a| a.damaged.is_some()).collect()
    }

    fn sets(&self) -> Result<&[backup::CopySet], Answer> {
        match &self.sets {
            Some(s) => Ok(s),
            None => Err(Answer::unanswerable(
                "no copy area given (--area DIR): copies cannot be looked for",
            )),
        }
    }

    /// The newest catalogued copy set of database `db` holding `fnr`.
    fn newest_set(&self, db: DbId, fnr: Fnr) -> Result<Option<&backup::CopySet>, Answer> {
        Ok(self
            .sets()?
            .iter()
            .rev()
            .find(|s| s.dbid == db && s.member(fnr).is_some()))
    }

    /// Whether database `db`'s protection log still reaches back to the
    /// set's LSN; the answer with its evidence.
    fn plog_covers(&self, db: DbId, set: &backup::CopySet) -> Answer {
        match self.plog.get(&db) {
            Some((first, last)) if *first <= set.lsn.0 + 1 => {
                match self.plog_read.get(&(db, set.lsn.0)) {
                    Some(Ok(r)) => match &r.fault {
                        None => Answer::yes(format!(
                            "copy set {} at LSN {}; the protection log of database {db} holds LSN {first} to {last}, every frame after the set read whole",
                            set.id, set.lsn
                        )),
                        Some(f) => Answer::no(format!(
                            "copy set {} at LSN {}, but the protection log of database {db} is damaged in {} at offset {} ({}): it replays whole only to LSN {}{}",
                            set.id,
                            set.lsn,
                            f.path,
                            f.offset,
                            f.reason,
                            f.last_good,
                            f.resumed
                                .map(|l| format!("; whole again from LSN {l} (re-applied where it fits, not replayed)"))
                                .unwrap_or_default()
                        )),
                    },
                    Some(Err(e)) => Answer::unanswerable(format!(
                        "database {db} did not read its protection log back from copy set {}'s LSN {}: {e}",
                        set.id, set.lsn
                    )),
                    // Gathered without the copy area's sets (none then).
                    None => Answer::unanswerable(format!(
                        "the protection log of database {db} was not read back from copy set {}'s LSN {}",
                        set.id, set.lsn
                    )),
                }
            }
            Some((first, _)) => Answer::no(format!(
                "copy set {} at LSN {}, but the protection log of database {db} starts at LSN {first}",
                set.id, set.lsn
            )),
            None => Answer::unanswerable(format!("database {db} does not answer")),
        }
    }

    /// The newest copy set holding the unit's replicate file, and the seq
    /// its confirmation holds.
    fn unit_copy(&self) -> Result<Option<(&backup::CopySet, u64)>, Answer> {
        let unit = self.unit();
        let Some(first) = unit.first() else {
            return Err(Answer::unanswerable(
                "no replicate is damaged: there is no unit to recover",
            ));
        };
        Ok(self
            .sets()?
            .iter()
            .rev()
            .filter(|s| s.dbid == first.db && s.member(first.file).is_some())
            .find_map(|s| {
                s.confirmed
                    .iter()
                    .find(|c| c.replicate == first.name)
                    .map(|c| (s, c.seq))
            }))
    }

    /// The probe's answer, with its evidence.
    pub fn probe(&self, name: &str) -> Answer {
        match name {
            "databases_restarted" => {
                let stopped: Vec<String> = self
                    .down
                    .iter()
                    .filter(|d| d.kind == DownKind::Stopped)
                    .map(|d| d.describe())
                    .collect();
                let cut: Vec<String> = self
                    .down
                    .iter()
                    .filter(|d| d.kind != DownKind::Stopped)
                    .map(|d| d.describe())
                    .collect();
                if !stopped.is_empty() {
                    Answer::no(format!(
                        "stopped (its address refuses connections): {}{}",
                        stopped.join("; "),
                        if cut.is_empty() {
                            String::new()
                        } else {
                            format!("; cut off, not stopped: {}", cut.join("; "))
                        }
                    ))
                } else if !cut.is_empty() {
                    Answer::yes(format!(
                        "no database is stopped; cut off by a link fault (its address does not refuse, or another node reaches it): {}",
                        cut.join("; ")
                    ))
                } else {
                    Answer::yes(
                        "every database of the topology answers (its restart recovery ran at open)",
                    )
                }
            }
            "stopped_databases_open" => {
                let stopped: Vec<String> = self
                    .down
                    .iter()
                    .filter(|d| d.kind == DownKind::Stopped)
                    .map(|d| format!("database {} at {}", d.db, d.addr))
                    .collect();
                if stopped.is_empty() {
                    Answer::yes("no database is stopped")
                } else {
                    Answer::yes(format!(
                        "presumed: only starting its node tells whether {} opens; if a node exits with 'cannot open database', answer no (etp recover walk triage --save FILE, then etp recover run --answers FILE)",
                        stopped.join(", ")
                    ))
                }
            }
            "master_database_lost" => {
                let stopped: Vec<&MasterFact> = self
                    .masters
                    .iter()
                    .filter(|m| {
                        self.down
                            .iter()
                            .any(|d| d.db == m.db && d.kind == DownKind::Stopped)
                    })
                    .collect();
                if stopped.is_empty() {
                    return Answer::no("no stopped database holds a master");
                }
                let mut lost = Vec::new();
                let mut kept = Vec::new();
                for m in stopped {
                    match self.newest_set(m.db, m.fnr) {
                        Err(a) => return a,
                        Ok(Some(set)) => kept.push(format!(
                            "copy set {} (LSN {}) holds master {} of database {}: etp db recover rebuilds it",
                            set.id, set.lsn, m.name, m.db
                        )),
                        Ok(None) => lost.push(format!(
                            "no copy set holds master {} of database {} (if its protection log reaches back to LSN 1, etp db recover rebuilds it from the log alone: answer no)",
                            m.name, m.db
                        )),
                    }
                }
                if lost.is_empty() {
                    Answer::no(kept.join("; "))
                } else {
                    Answer::yes(lost.join("; "))
                }
            }
            "site_uninitialized" => {
                let wiped: Vec<String> = self
                    .reps
                    .iter()
                    .filter(|r| self.uninitialized(r))
                    .map(|r| {
                        format!(
                            "replicate {} on database {}: {}",
                            r.name,
                            r.db,
                            r.reason
                                .as_deref()
                                .unwrap_or("its node answers but serves no topology")
                        )
                    })
                    .collect();
                if wiped.is_empty() {
                    Answer::no("every replicate's database that answers serves the topology")
                } else {
                    Answer::yes(wiped.join("; "))
                }
            }
            "replicate_diverged" => {
                let d: Vec<String> = self
                    .reps
                    .iter()
                    .filter_map(|r| {
                        r.diverged
                            .as_ref()
                            .map(|d| format!("replicate {} on database {} {d}", r.name, r.db))
                    })
                    .collect();
                if !d.is_empty() {
                    Answer::yes(d.join("; "))
                } else if let Some(m) = self
                    .reps
                    .iter()
                    .filter(|r| r.confirmed.is_some())
                    .filter_map(|r| {
                        self.masters
                            .iter()
                            .find(|m| m.db == r.master_db && m.fnr == r.master)
                    })
                    .find(|m| m.incarnation.is_none())
                {
                    Answer::unanswerable(format!(
                        "master {}'s database {} does not answer: its history cannot be compared",
                        m.name, m.db
                    ))
                } else {
                    Answer::no(format!(
                        "{} replicate(s), each confirming a level of its master's history",
                        self.reps.len()
                    ))
                }
            }
            "admin_damaged" => self.damage("admin"),
            "master_damaged" => self.damage("master"),
            "log_damaged" => self.damage("log"),
            "replicate_damaged" => self.damage("replicate"),
            "confirmation_damaged" => self.damage("confirmation"),
            "master_isolated" => {
                let cut: Vec<String> = self
                    .reps
                    .iter()
                    .filter(|r| self.cut_off(r))
                    .map(|r| {
                        format!(
                            "replicate {} is {} ({})",
                            r.name,
                            r.state.as_deref().unwrap_or("unreachable"),
                            r.reason.as_deref().unwrap_or("no reason given")
                        )
                    })
                    .collect();
                if cut.is_empty() {
                    Answer::no(format!("{} replicate(s), every one fed", self.reps.len()))
                } else {
                    Answer::yes(cut.join("; "))
                }
            }
            "pending_reruns" => match &self.pending {
                None => Answer::no(
                    "no client journal given (--journal DIR): only the node's side is known, and every transaction left open was backed out at its restart",
                ),
                Some(_) => self.case1("master_transaction_interrupted"),
            },
            "master_transaction_interrupted"
            | "interrupted_transaction_used_et"
            | "master_reachable"
            | "tasks_restart_by_themselves"
            | "replicate_in_error" => self.case1(name),
            "unit_copy_with_intact_plog"
            | "reload_quicker_than_roll_forward"
            | "restored_replicate_behind_master"
            | "replicate_copy_above_cleanup_horizon"
            | "replicate_partial" => self.case2(name),
            "full_replicate_available" => {
                if self.unit().is_empty() {
                    // Case 4: a full replicate of the damaged master.
                    match self.master() {
                        None => Answer::unanswerable("the topology defines no master"),
                        Some(m) => self.full_replicate_answer(m, &[]),
                    }
                } else {
                    self.case2(name)
                }
            }
            other => self.case34(other),
        }
    }
}

fn yes_no(yes: bool, evidence: String) -> Answer {
    if yes {
        Answer::yes(evidence)
    } else {
        Answer::no(evidence)
    }
}

/// The topology text the administration file in a copy set holds.
fn copied_topology(
    area: &Path,
    set: &backup::CopySet,
    admin: Fnr,
) -> anyhow::Result<Option<String>> {
    let a = backup::Area::open(area)?;
    let m = set
        .member(admin)
        .ok_or_else(|| anyhow::anyhow!("copy set {} lacks file {admin}", set.id))?;
    let dir = propagator::medium::FsDir::new(a.data_dir(&set.id)?);
    let mut text = None;
    propagator::copy::resolve(&dir, &m.copy.name, &mut |chunk| {
        for (isn, bytes) in chunk {
            if isn == Isn(1) {
                if let Ok(r) = propagator::record::decode_record(&bytes) {
                    if let Some(propagator::Value::Text(t)) = r.get("topology") {
                        text = Some(t.clone());
                    }
                }
            }
        }
        Ok(())
    })?;
    Ok(text)
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

#[cfg(test)]
mod tests {
    use super::DownKind;
    use propagator::wire::ReachReport;

    fn peer(reached: bool, refused: bool) -> ReachReport {
        ReachReport {
            database: propagator::DbId(3),
            address: "127.0.0.1:7403".into(),
            reached,
            refused,
            reason: (!reached).then(|| "no".into()),
        }
    }

    /// The three ways a database the tool cannot reach is down. (The
    /// stopped node and the cut link run as system tests; a path cut from
    /// the tool alone is this table's.)
    #[test]
    fn a_database_out_of_the_tools_reach_is_judged_by_its_peers() {
        let (reached, refused, cut) = (peer(true, false), peer(false, true), peer(false, false));
        let cases: &[(bool, Vec<&ReachReport>, DownKind)] = &[
            // Another node reaches it: it runs, only the tool is cut off.
            (false, vec![&reached], DownKind::CutOffFromTool),
            (true, vec![&refused, &reached], DownKind::CutOffFromTool),
            // Everyone refused: stopped.
            (true, vec![&refused, &refused], DownKind::Stopped),
            (false, vec![&refused], DownKind::Stopped),
            (true, vec![], DownKind::Stopped),
            // Refused to the tool, but a node's path fails otherwise: a
            // link fault, not a stopped node.
            (true, vec![&refused, &cut], DownKind::PathFault),
            (false, vec![&cut], DownKind::PathFault),
            (false, vec![], DownKind::PathFault),
        ];
        for (tool_refused, peers, want) in cases {
            assert_eq!(
                DownKind::judge(*tool_refused, peers),
                *want,
                "tool refused: {tool_refused}, peers: {peers:?}"
            );
        }
    }
}
