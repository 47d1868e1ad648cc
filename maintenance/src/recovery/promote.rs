//! Failover (`etp master promote REPLICATE`, seed 002's `recover using`):
//! the freshest full replicate of a master becomes the master, on its own
//! database, with its own log starting at the seq it confirms and a raised
//! incarnation; the topology is rewritten (the master's definition moves,
//! every other replicate is repointed to it, its task with it) and applied
//! to every node; the replicates that cannot simply go on from the new
//! master's first seq are reloaded from it; the seqs the old master had
//! given out beyond that point are named as lost.
//!
//! The old master is quiesced first if it answers (so nothing commits there
//! meanwhile; it stays quiesced); its database is dropped from the topology
//! when it does not answer and holds nothing else.

use super::actions::{load, verify_one};
use super::ask;
use anyhow::{bail, Context};
use propagator::node::client::Client;
use propagator::topology::{MasterDef, Valid};
use propagator::wire::{ReadRequest, RecoveryOp, Request, Response};
use propagator::{DbId, Fnr, Role, Seq};
use serde::Serialize;
use std::net::SocketAddr;
use std::time::Duration;

/// What a promotion will do (or did).
#[derive(Clone, Debug, Serialize)]
pub struct PromotePlan {
    pub replicate: String,
    pub database: DbId,
    pub address: SocketAddr,
    pub file: Fnr,
    pub confirmation: Fnr,
    /// The new master's log file.
    pub log: Fnr,
    /// The seq the promoted replicate confirms: the new master's level.
    pub seq: u64,
    pub master: String,
    pub old_database: DbId,
    pub old_file: Fnr,
    pub old_address: SocketAddr,
    /// The old master answered (and was quiesced, when executing).
    pub old_answered: bool,
    /// The old master's level: its log's last seq when it answers, else the
    /// highest seq any replicate confirms.
    pub old_level: u64,
    /// The incarnation the new master's will be above.
    pub floor: u32,
    /// Seqs lost for good: (first, last).
    pub lost: Option<(u64, u64)>,
    /// Replicates reloaded from the new master.
    pub reload: Vec<String>,
    /// The old master's database leaves the topology.
    pub drop_database: bool,
    /// The new topology.
    pub topology: String,
}

fn confirmation(addr: SocketAddr, conf: Fnr, file: Fnr) -> Option<(u64, u32)> {
    let mut c = Client::connect(addr).ok()?;
    super::probes::read_confirmation(&mut c, conf, file)
}

/// Works out the promotion of replicate `name` from the topology `node`
/// serves (nothing is changed).
pub fn plan(node: SocketAddr, name: &str, log: Option<u32>) -> anyhow::Result<PromotePlan> {
    let v = super::topology_of(node)?;
    let Some(r) = v.replicates.iter().find(|r| r.def.name == name) else {
        bail!(
            "no replicate is named {name:?}; the replicates are: {}",
            v.replicates
                .iter()
                .map(|r| r.def.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    if r.is_partial() {
        bail!("replicate {name} is partial (a field list or a selection): only a full replicate holds all of its master and can become it");
    }
    let (mdb, mfile) = (DbId(r.def.master_database), Fnr(r.def.master));
    let Some(m) = v
        .topology
        .masters
        .iter()
        .find(|m| m.database == mdb.0 && m.file == mfile.0)
        .cloned()
    else {
        bail!("replicate {name}'s master (file {mfile} of database {mdb}) is not defined");
    };
    let db = DbId(r.def.database);
    let addr = v.addresses[&db];
    // What every replicate of the master confirms.
    let siblings: Vec<_> = v
        .replicates
        .iter()
        .filter(|x| x.def.master_database == mdb.0 && x.def.master == mfile.0)
        .collect();
    let mut confirmed = Vec::new();
    for x in &siblings {
        let a = v.addresses[&DbId(x.def.database)];
        confirmed.push((
            *x,
            confirmation(a, Fnr(x.def.confirmation), Fnr(x.def.file)),
        ));
    }
    let Some((seq, _)) = confirmed
        .iter()
        .find(|(x, _)| x.def.name == name)
        .and_then(|(_, c)| *c)
    else {
        bail!("replicate {name} on database {db} confirms nothing (unreachable, or never loaded): it cannot become the master");
    };
    if let Some((x, Some((s, _)))) = confirmed
        .iter()
        .filter(|(x, _)| !x.is_partial() && x.def.name != name)
        .max_by_key(|(_, c)| c.map_or(0, |c| c.0))
    {
        if *s > seq {
            bail!(
                "replicate {} confirms seq {s}, above {name}'s {seq}: promote the freshest full replicate ({})",
                x.def.name,
                x.def.name
            );
        }
    }
    // The old master's level and incarnation, if it answers.
    let old_addr = v.addresses[&mdb];
    let old = (|| -> anyhow::Result<(u64, u32)> {
        let mut c = Client::connect(old_addr)?;
        let level = match c.call(&Request::Read(ReadRequest::FileStat { file: Fnr(m.log) }))? {
            Response::Stat { next_isn, .. } => next_isn.saturating_sub(1),
            other => bail!("{other:?}"),
        };
        let inc = match c.call(&Request::Read(ReadRequest::Files))? {
            Response::Files { files, .. } => files
                .iter()
                .find(|d| d.fnr == mfile)
                .and_then(|d| match d.role {
                    Role::Master { incarnation, .. } => Some(incarnation),
                    _ => None,
                })
                .unwrap_or(0),
            other => bail!("{other:?}"),
        };
        Ok((level, inc))
    })();
    let max_confirmed = confirmed.iter().filter_map(|(_, c)| *c).max();
    let (old_answered, old_level, old_inc) = match old {
        Ok((l, i)) => (true, l, i),
        Err(_) => (
            false,
            max_confirmed.map_or(seq, |c| c.0),
            max_confirmed.map_or(0, |c| c.1),
        ),
    };
    let floor = old_inc.max(
        confirmed
            .iter()
            .filter_map(|(_, c)| c.map(|c| c.1))
            .max()
            .unwrap_or(0),
    );
    // The new master's log: the given file, else the first number above
    // every file its database holds.
    // (A promotion cut short left the file a master already: its log is
    // taken again, so a rerun finishes it.)
    let files = match ask(addr, &Request::Read(ReadRequest::Files))? {
        Response::Files { files, .. } => files,
        other => bail!("node {addr} answered {other:?}"),
    };
    let promoted_log = files
        .iter()
        .find(|d| d.fnr.0 == r.def.file)
        .and_then(|d| match d.role {
            Role::Master { log, .. } => Some(log),
            _ => None,
        });
    let log = match (log, promoted_log) {
        (Some(l), Some(p)) if Fnr(l) != p => bail!(
            "file {} of database {db} is a master already, with log file {p}, not {l}: a promotion cut short; run it again without --log",
            r.def.file
        ),
        (_, Some(p)) => p,
        (Some(l), None) => Fnr(l),
        (None, None) => Fnr(files.iter().map(|d| d.fnr.0).max().unwrap_or(0) + 1),
    };
    // The new topology.
    let mut t = v.topology.clone();
    t.masters
        .retain(|x| !(x.database == mdb.0 && x.file == mfile.0));
    t.masters.push(MasterDef {
        database: db.0,
        file: r.def.file,
        log: log.0,
        ..m.clone()
    });
    t.replicates.retain(|x| x.name != name);
    for x in &mut t.replicates {
        if x.master_database == mdb.0 && x.master == mfile.0 {
            x.master_database = db.0;
            x.master = r.def.file;
        }
    }
    for task in &mut t.tasks {
        if task.master_database == mdb.0 && task.master == mfile.0 {
            task.master_database = db.0;
            task.master = r.def.file;
        }
    }
    let holds = |d: u32| {
        t.masters.iter().any(|x| x.database == d) || t.replicates.iter().any(|x| x.database == d)
    };
    let drop_database = !old_answered && !holds(mdb.0);
    if drop_database {
        t.databases.retain(|d| d.dbid != mdb.0);
    }
    let topology = toml::to_string(&t).context("writing the new topology")?;
    Valid::parse(&topology).map_err(|e| anyhow::anyhow!("the new topology: {e}"))?;
    // Every other replicate reloads from the new master: its confirmation
    // names the old master, so none is a level of the new one's log (a
    // replicate node takes a link from the master its topology names and
    // reports such a replicate as needing a load).
    let reload: Vec<String> = confirmed
        .iter()
        .filter(|(x, _)| x.def.name != name)
        .map(|(x, _)| x.def.name.clone())
        .collect();
    Ok(PromotePlan {
        replicate: name.to_string(),
        database: db,
        address: addr,
        file: Fnr(r.def.file),
        confirmation: Fnr(r.def.confirmation),
        log,
        seq,
        master: m.name.clone(),
        old_database: mdb,
        old_file: mfile,
        old_address: old_addr,
        old_answered,
        old_level,
        floor,
        lost: (old_level > seq).then_some((seq + 1, old_level)),
        reload,
        drop_database,
        topology,
    })
}

/// Carries a promotion out: quiesces the old master if it answers (and
/// plans again, the levels now still), promotes, applies the topology,
/// reloads, verifies. `say` gets a line per step.
pub fn execute(
    node: SocketAddr,
    name: &str,
    log: Option<u32>,
    wait: Duration,
    say: &mut dyn FnMut(String),
) -> anyhow::Result<PromotePlan> {
    let first = plan(node, name, log)?;
    if first.old_answered {
        let old = first.old_address;
        ask(old, &Request::Recovery(RecoveryOp::Quiesce { on: true }))
            .with_context(|| format!("quiescing the old master's node {old}"))?;
        say(format!(
            "old master {} (database {}) quiesced: client updates refused there",
            first.master, first.old_database
        ));
    }
    // The old master answers: its replicate is given the time to confirm
    // its level before anything is named lost.
    if first.old_answered && first.seq < first.old_level {
        let caught = super::actions::wait_until(
            &format!(
                "{name} to confirm the old master's level {}",
                first.old_level
            ),
            wait,
            || {
                let seq =
                    confirmation(first.address, first.confirmation, first.file).map_or(0, |c| c.0);
                Ok((seq >= first.old_level).then_some(()))
            },
        );
        match caught {
            Ok(()) => say(format!(
                "{name} confirms the old master's level {}",
                first.old_level
            )),
            Err(e) => say(format!("{e:#}: the seqs after its level are named lost")),
        }
    }
    let p = plan(node, name, log)?;
    match ask(
        p.address,
        &Request::Recovery(RecoveryOp::Promote {
            file: p.file,
            confirmation: p.confirmation,
            log: p.log,
            at: Seq(p.seq),
            floor: p.floor,
        }),
    )? {
        Response::Text(_) => {}
        other => bail!("node {} answered {other:?} to Promote", p.address),
    }
    say(format!(
        "{} (file {} of database {}) is master {} now, its log file {} starting at seq {}",
        p.replicate, p.file, p.database, p.master, p.log, p.seq
    ));
    propagator::node::apply::apply_topology_blocking(&p.topology)
        .map_err(|e| anyhow::anyhow!("applying the new topology: {}", e.message))?;
    say("the new topology is applied on every node".into());
    for r in &p.reload {
        say(load(p.address, r, None, wait)?);
    }
    for r in &p.reload {
        say(super::actions::wait_until(
            &format!("{r} to confirm the new master's level"),
            wait,
            || verify_one(p.address, r).map(Some),
        )?);
    }
    if let Some((a, b)) = p.lost {
        say(format!(
            "seqs {a} to {b} of master {} were given out by the old master and are lost for good",
            p.master
        ));
    }
    Ok(p)
}
