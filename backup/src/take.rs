//! Taking copy sets, from a database opened here or through its node.

use crate::area::{Area, CopySet, Member};
use crate::restore::verify_member;
use crate::rules::{check_job_order, groups_of, plan_set, JobSet, Planned};
use anyhow::{bail, Context};
use propagator::copy::Copied;
use propagator::medium::FsDir;
use propagator::node::client::Client;
use propagator::topology::Valid;
use propagator::wire::{Request, Response};
use propagator::{Database, DbId, FileDef, Fnr, Role};
use std::net::SocketAddr;
use std::time::Instant;

/// Where a set's files are read from.
pub enum Source {
    /// A database opened by this process (its node is not running).
    Local(Database),
    /// A running node, which writes the copy files itself.
    Node(SocketAddr),
}

impl Source {
    pub fn describe(&self) -> String {
        match self {
            Source::Local(db) => db.dir().display().to_string(),
            Source::Node(a) => format!("node {a}"),
        }
    }

    /// The database's id, file catalog and topology.
    pub fn catalog(&self) -> anyhow::Result<(DbId, Vec<FileDef>, Option<Valid>)> {
        match self {
            Source::Local(db) => {
                let topo = propagator::node::stored_topology(db).map_err(anyhow::Error::msg)?;
                Ok((
                    db.dbid(),
                    db.files().into_iter().map(|f| f.def).collect(),
                    topo,
                ))
            }
            Source::Node(addr) => {
                let mut c = Client::connect(*addr)?;
                let dbid = match c.call(&Request::Info)? {
                    Response::Info(i) => i.dbid,
                    other => bail!("node {addr} answered {other:?} to Info"),
                };
                match c.call(&Request::Files)? {
                    Response::Files { files, topology } => {
                        let topo = match topology {
                            Some(t) => Some(Valid::parse(&t).map_err(|e| {
                                anyhow::anyhow!("node {addr} holds a bad topology: {e}")
                            })?),
                            None => None,
                        };
                        Ok((dbid, files, topo))
                    }
                    other => bail!("node {addr} answered {other:?} to Files"),
                }
            }
        }
    }

    fn take(&self, files: &[Fnr], dir: &std::path::Path, set: &str) -> anyhow::Result<Copied> {
        match self {
            Source::Local(db) => Ok(propagator::copy::take(
                db,
                files,
                &FsDir::new(dir),
                set,
                &mut |_| {},
            )?),
            Source::Node(addr) => {
                let dir = std::path::absolute(dir)
                    .with_context(|| format!("cannot resolve {}", dir.display()))?;
                let mut c = Client::connect(*addr)?;
                match c.call(&Request::CopyTake {
                    files: files.to_vec(),
                    dir: dir.display().to_string(),
                    set: set.to_string(),
                })? {
                    Response::Copied(c) => Ok(c),
                    other => bail!("node {addr} answered {other:?} to CopyTake"),
                }
            }
        }
    }
}

/// One set of a job, as asked: where from, which files.
pub struct Ask {
    pub source: Source,
    pub files: Vec<Fnr>,
}

/// What happened to one set of a job.
#[derive(Debug)]
pub struct Taken {
    pub set: CopySet,
    pub added: Vec<String>,
}

/// Plans every set of a job by the rules, checks their order, then takes
/// and verifies them one after the other, recording each in the catalog
/// only once all of its members are written and read back. A failure stops
/// the job; the sets recorded before it stay (each is whole), the failing
/// one leaves nothing in the catalog.
pub fn take_job(
    area: &Area,
    job: Option<&str>,
    asks: &[Ask],
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<Vec<Taken>> {
    let mut plans = Vec::new();
    for a in asks {
        let (dbid, defs, topo) = a
            .source
            .catalog()
            .with_context(|| format!("cannot read the catalog of {}", a.source.describe()))?;
        let groups = groups_of(topo.as_ref(), dbid);
        let planned = plan_set(&defs, &groups, &a.files).with_context(|| {
            format!(
                "refused: a copy set of {} (database {dbid})",
                a.source.describe()
            )
        })?;
        let masters = planned
            .files
            .iter()
            .filter_map(|f| groups.get(f).map(|(_, m)| *m))
            .collect();
        plans.push((
            JobSet {
                dbid,
                planned,
                masters,
            },
            defs,
        ));
    }
    let sets: Vec<JobSet> = plans.iter().map(|(s, _)| s.clone()).collect();
    check_job_order(&sets).context("refused")?;
    let mut out = Vec::new();
    for ((js, defs), a) in plans.into_iter().zip(asks) {
        let set = take_one(area, job, &a.source, &js.planned, &defs, progress)?;
        out.push(Taken {
            set,
            added: js.planned.added,
        });
    }
    Ok(out)
}

fn take_one(
    area: &Area,
    job: Option<&str>,
    source: &Source,
    planned: &Planned,
    defs: &[FileDef],
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<CopySet> {
    let now = chrono::Utc::now();
    let id = area.new_set(now)?;
    let dir = area.data_dir(&id);
    let t0 = Instant::now();
    progress(&format!(
        "set {id}: copying files {:?} of {}",
        planned.files.iter().map(|f| f.0).collect::<Vec<_>>(),
        source.describe()
    ));
    let result = (|| -> anyhow::Result<CopySet> {
        let copied = source
            .take(&planned.files, &dir, &id)
            .with_context(|| format!("copy set {id} from {}", source.describe()))?;
        let mut members = Vec::new();
        let mut bytes = 0;
        for f in &copied.files {
            progress(&format!("set {id}: verifying {}", f.name));
            bytes += f.bytes;
            let partner = match defs.iter().find(|d| d.fnr == f.def.fnr).map(|d| &d.role) {
                Some(Role::Master { log, .. }) => Some(*log),
                Some(Role::Log { master }) => Some(*master),
                _ => None,
            };
            let m = Member {
                fnr: f.def.fnr,
                name: f.def.name.clone(),
                role: f.def.role.name().to_string(),
                partner,
                copy: f.clone(),
            };
            verify_member(area, &id, &m)?;
            members.push(m);
        }
        let local = now.with_timezone(&chrono::Local);
        Ok(CopySet {
            id: id.clone(),
            kind: planned.kind,
            job: job.map(str::to_string),
            taken_utc: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            taken_local: local.to_rfc3339_opts(chrono::SecondsFormat::Secs, false),
            source: source.describe(),
            dbid: copied.dbid,
            lsn: copied.lsn,
            start_lsn: copied.start_lsn,
            time_us: copied.time_us,
            seqs: copied.seqs,
            members,
            bytes,
            seconds: t0.elapsed().as_secs_f64(),
        })
    })();
    match result {
        Ok(set) => {
            area.record(&set)?;
            progress(&format!("set {id}: recorded in the catalog"));
            Ok(set)
        }
        Err(e) => {
            area.discard(&id);
            Err(e)
        }
    }
}
