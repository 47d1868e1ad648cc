//! Taking copy sets, from a database opened here or through its node.

use crate::area::{Area, Confirmed, CopySet, Member};
use crate::error::{Error, Within};
use crate::restore::verify_member;
use crate::rules::{check_job_order, groups_of, plan_set, JobSet, Planned};
use propagator::copy::Copied;
use propagator::medium::FsDir;
use propagator::node::client::Client;
use propagator::topology::Valid;
use propagator::wire::{CopyRequest, ReadRequest};
use propagator::wire::{Request, Response};
use propagator::{Database, DbId, FileDef, Fnr, Lsn, Role, SegmentInfo};
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
    pub fn catalog(&self) -> Result<(DbId, Vec<FileDef>, Option<Valid>), Error> {
        match self {
            Source::Local(db) => {
                let topo = propagator::node::stored_topology(db)?;
                Ok((
                    db.dbid(),
                    db.files().into_iter().map(|f| f.def).collect(),
                    topo,
                ))
            }
            Source::Node(addr) => {
                let mut c = Client::connect(*addr)?;
                let dbid = match c.call(&Request::Read(ReadRequest::Info))? {
                    Response::Info(i) => i.dbid,
                    other => {
                        return Err(Error::Unexpected(format!(
                            "node {addr} answered {other:?} to Info"
                        )))
                    }
                };
                match c.call(&Request::Read(ReadRequest::Files))? {
                    Response::Files { files, topology } => {
                        let topo = match topology {
                            Some(t) => Some(Valid::parse(&t).map_err(|e| {
                                Error::Refused(format!("node {addr} holds a bad topology: {e}"))
                            })?),
                            None => None,
                        };
                        Ok((dbid, files, topo))
                    }
                    other => Err(Error::Unexpected(format!(
                        "node {addr} answered {other:?} to Files"
                    ))),
                }
            }
        }
    }

    /// The protection log's segments, oldest first.
    pub fn segments(&self) -> Result<Vec<SegmentInfo>, Error> {
        match self {
            Source::Local(db) => Ok(db.plog_segments()?),
            Source::Node(addr) => {
                match Client::connect(*addr)?.call(&Request::Copy(CopyRequest::PlogSegments))? {
                    Response::Segments(v) => Ok(v),
                    other => Err(Error::Unexpected(format!(
                        "node {addr} answered {other:?} to PlogSegments"
                    ))),
                }
            }
        }
    }

    /// Removes log segments through `through` (see `Database::remove_segments`).
    pub fn remove_segments(&self, through: Lsn) -> Result<Vec<SegmentInfo>, Error> {
        match self {
            Source::Local(db) => Ok(db.remove_segments(through)?),
            Source::Node(addr) => {
                match Client::connect(*addr)?
                    .call(&Request::Copy(CopyRequest::PlogRemove { through }))?
                {
                    Response::Segments(v) => Ok(v),
                    other => Err(Error::Unexpected(format!(
                        "node {addr} answered {other:?} to PlogRemove"
                    ))),
                }
            }
        }
    }

    fn take(&self, files: &[Fnr], dir: &std::path::Path, set: &str) -> Result<Copied, Error> {
        match self {
            Source::Local(db) => Ok(propagator::copy::take(
                db,
                files,
                &FsDir::new(dir),
                set,
                &mut |_| {},
            )?),
            // The node writes into the directory the set claimed in its own
            // copy area (`--copy-area`), which must be this area: it refuses
            // a set it does not find claimed there.
            Source::Node(addr) => {
                let mut c = Client::connect(*addr)?;
                match c.call(&Request::Copy(CopyRequest::CopyTake {
                    files: files.to_vec(),
                    set: set.to_string(),
                }))? {
                    Response::Copied(c) => Ok(c),
                    other => Err(Error::Unexpected(format!(
                        "node {addr} answered {other:?} to CopyTake"
                    ))),
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
/// and verifies them one after the other, and records them in the catalog
/// once every set of the job is written and read back: a job is recorded
/// whole or not at all.
pub fn take_job(
    area: &Area,
    job: Option<&str>,
    asks: &[Ask],
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<Taken>, Error> {
    let mut plans = Vec::new();
    for a in asks {
        let (dbid, defs, topo) = a
            .source
            .catalog()
            .within(|| format!("cannot read the catalog of {}", a.source.describe()))?;
        let groups = groups_of(topo.as_ref(), dbid);
        let planned = plan_set(&defs, &groups, &a.files).within(|| {
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
    check_job_order(&sets).within(|| "refused".to_string())?;
    // Every set is taken and read back before any is recorded: a job that
    // fails part-way (a node unreachable or killed) leaves nothing in the
    // catalog, not the sets it had taken so far.
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let run = job.map(|_| {
        let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{}-{n:06}", chrono::Utc::now().format("%Y%m%dT%H%M%S%.6fZ"))
    });
    let mut out: Vec<Taken> = Vec::new();
    for ((js, defs), a) in plans.into_iter().zip(asks) {
        match take_one(
            area,
            job,
            run.as_deref(),
            &a.source,
            &js.planned,
            &defs,
            progress,
        ) {
            Ok(set) => out.push(Taken {
                set,
                added: js.planned.added,
            }),
            Err(e) => {
                for t in &out {
                    area.discard(&t.set.id);
                }
                return Err(e);
            }
        }
    }
    for (i, t) in out.iter().enumerate() {
        if let Err(e) = area.record(&t.set) {
            for u in &out[..i] {
                let _ = area.remove(&u.set.id);
            }
            for u in &out[i..] {
                area.discard(&u.set.id);
            }
            return Err(e.into());
        }
        progress(&format!("set {}: recorded in the catalog", t.set.id));
    }
    Ok(out)
}

fn take_one(
    area: &Area,
    job: Option<&str>,
    run: Option<&str>,
    source: &Source,
    planned: &Planned,
    defs: &[FileDef],
    progress: &mut dyn FnMut(&str),
) -> Result<CopySet, Error> {
    let now = chrono::Utc::now();
    let id = area.new_set(now)?;
    let dir = area.data_dir(&id)?;
    let t0 = Instant::now();
    progress(&format!(
        "set {id}: copying files {:?} of {}",
        planned.files.iter().map(|f| f.0).collect::<Vec<_>>(),
        source.describe()
    ));
    let result = (|| -> Result<CopySet, Error> {
        let copied = source
            .take(&planned.files, &dir, &id)
            .within(|| format!("copy set {id} from {}", source.describe()))?;
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
        let confirmed = confirmations(area, &id, &members)?;
        let local = now.with_timezone(&chrono::Local);
        Ok(CopySet {
            id: id.clone(),
            kind: planned.kind,
            job: job.map(str::to_string),
            run: run.map(str::to_string),
            taken_utc: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            taken_local: local.to_rfc3339_opts(chrono::SecondsFormat::Secs, false),
            source: source.describe(),
            dbid: copied.dbid,
            lsn: copied.lsn,
            start_lsn: copied.start_lsn,
            time_us: copied.time_us,
            seqs: copied.seqs,
            members,
            confirmed,
            bytes,
            seconds: t0.elapsed().as_secs_f64(),
        })
    })();
    if result.is_err() {
        area.discard(&id);
    }
    result
}

/// The confirmations a set's confirmation files hold (empty for other sets).
fn confirmations(area: &Area, id: &str, members: &[Member]) -> Result<Vec<Confirmed>, Error> {
    use propagator::record::decode_record;
    use propagator::Value;
    let dir = FsDir::new(area.data_dir(id)?);
    let mut out = Vec::new();
    for m in members
        .iter()
        .filter(|m| m.copy.def.role == Role::Confirmation)
    {
        propagator::copy::resolve(&dir, &m.copy.name, &mut |recs| {
            for (_, bytes) in recs {
                let Ok(r) = decode_record(&bytes) else {
                    continue;
                };
                let int = |k: &str| match r.get(k) {
                    Some(Value::Int(i)) => u64::try_from(*i).ok(),
                    _ => None,
                };
                if let (Some(Value::Text(name)), Some(db), Some(master), Some(seq)) = (
                    r.get("replicate"),
                    int("master_db"),
                    int("master"),
                    int("seq"),
                ) {
                    out.push(Confirmed {
                        replicate: name.clone(),
                        master_db: db as u32,
                        master: master as u32,
                        seq,
                    });
                }
            }
            Ok(())
        })?;
    }
    Ok(out)
}
