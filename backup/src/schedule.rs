//! Scheduled copy jobs.
//!
//! The definitions are TOML kept in the administration file of the node
//! that runs them (`etp copy jobs set`):
//!
//! ```toml
//! area = "/srv/etp/copies"        # optional: the node's own copy area
//!
//! [[job]]
//! name = "nightly"
//! cron = "0 30 2 * * *"           # croner syntax, seconds optional
//! keep = 7                        # keep the newest 7 runs (optional)
//! max_age_days = 30               # drop runs older than this (optional)
//! [[job.set]]                     # one copy set per entry, in this order
//! database = 1
//! files = [10]                    # the rules add the log and the rest
//! [[job.set]]
//! database = 2
//! files = [20]
//!
//! [[job]]                         # the log's side of the copy discipline
//! name = "archive"
//! kind = "archive"                # archive + prune (`copy archive --prune`)
//! cron = "0 0 * * * *"
//! [[job.set]]
//! database = 1
//!
//! [[job]]
//! name = "cleanup"
//! kind = "log_cleanup"            # `log cleanup --execute`, via the node
//! cron = "0 15 * * * *"
//! [[job.set]]
//! database = 1
//! ```
//!
//! The jobs write to the copy area of the node that runs them
//! (`node run --copy-area`); an `area` in the text must name that area, and
//! the node checks the definitions ([`check_jobs`]) before it stores them.
//!
//! A run takes every set of its job or records none of them
//! ([`crate::take::take_job`]); a run that fails records why in the job
//! history and the job is tried again at its next slot. Slots missed while
//! the node was down or a run was long are not made up: one run, then the
//! next slot after it. The [`Clock`] is a trait so tests drive time.

use crate::area::Area;
use crate::error::{Error, Within};
use crate::take::{take_job, Ask, Source};
use chrono::{DateTime, Utc};
use propagator::wire::{AdminRequest, CopyRequest};
use propagator::{DbId, Fnr};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::str::FromStr;

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JobsDef {
    /// Must be the node's copy area, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub area: Option<PathBuf>,
    #[serde(default)]
    pub job: Vec<JobDef>,
}

/// What a scheduled job does.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// Takes copy sets of the files its sets name (the default).
    #[default]
    Copy,
    /// Archives the closed protection-log segments of each database its
    /// sets name into the copy area, then prunes the archived ones no copy
    /// set needs (`etp copy archive --prune`).
    Archive,
    /// Cleans each named database's masters' log files up to what their
    /// replicates confirmed and the copy area's sets still need (`etp log
    /// cleanup --execute`, through the database's node).
    LogCleanup,
}

impl JobKind {
    fn is_copy(&self) -> bool {
        *self == JobKind::Copy
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JobDef {
    pub name: String,
    #[serde(default, skip_serializing_if = "JobKind::is_copy")]
    pub kind: JobKind,
    pub cron: String,
    pub keep: Option<usize>,
    pub max_age_days: Option<f64>,
    pub set: Vec<SetDef>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SetDef {
    pub database: u32,
    /// The files to copy (a copy job); none for the other kinds.
    #[serde(default)]
    pub files: Vec<u32>,
}

/// Parses and checks job definitions: every cron expression parses, names
/// are unique, every job has sets, retention values are sane.
pub fn parse_jobs(text: &str) -> Result<(JobsDef, BTreeMap<String, croner::Cron>), Error> {
    let def: JobsDef = toml::from_str(text).within(|| "copy jobs".to_string())?;
    let mut crons = BTreeMap::new();
    for j in &def.job {
        if j.name.is_empty()
            || !j
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
        {
            return Err(Error::Refused(format!(
                "copy job name {:?}: use letters, digits, '-' and '_'",
                j.name
            )));
        }
        let cron = croner::Cron::from_str(&j.cron)
            .map_err(|e| Error::Refused(format!("copy job {}: cron {:?}: {e}", j.name, j.cron)))?;
        if crons.insert(j.name.clone(), cron).is_some() {
            return Err(Error::Refused(format!(
                "copy job {} is defined twice",
                j.name
            )));
        }
        if j.set.is_empty() {
            return Err(Error::Refused(format!(
                "copy job {} has no [[job.set]]",
                j.name
            )));
        }
        match j.kind {
            JobKind::Copy if j.set.iter().any(|s| s.files.is_empty()) => {
                return Err(Error::Refused(format!(
                    "copy job {}: every set names at least one file",
                    j.name
                )))
            }
            JobKind::Archive | JobKind::LogCleanup if j.set.iter().any(|s| !s.files.is_empty()) => {
                return Err(Error::Refused(format!(
                    "job {}: a {} job names databases only (files = [] or no files line)",
                    j.name,
                    if j.kind == JobKind::Archive {
                        "archive"
                    } else {
                        "log_cleanup"
                    }
                )))
            }
            JobKind::Archive | JobKind::LogCleanup
                if j.keep.is_some() || j.max_age_days.is_some() =>
            {
                return Err(Error::Refused(format!(
                    "job {}: keep and max_age_days are a copy job's retention",
                    j.name
                )))
            }
            _ => {}
        }
        if j.keep == Some(0) {
            return Err(Error::Refused(format!(
                "copy job {}: keep must be at least 1",
                j.name
            )));
        }
        if j.max_age_days.is_some_and(|d| d.is_nan() || d <= 0.0) {
            return Err(Error::Refused(format!(
                "copy job {}: max_age_days must be above 0",
                j.name
            )));
        }
    }
    Ok((def, crons))
}

/// The check a node makes before it stores copy-job definitions: they
/// parse ([`parse_jobs`]), the node has a copy area, and an `area` in them
/// is that area.
pub fn check_jobs(
    text: &str,
    node_area: Option<&std::path::Path>,
    topology: Option<&propagator::topology::Valid>,
) -> Result<JobsDef, Error> {
    let (def, _) = parse_jobs(text)?;
    if let Some(v) = topology {
        for j in def.job.iter().filter(|j| j.kind != JobKind::Copy) {
            if let Some(s) = j
                .set
                .iter()
                .find(|s| !v.addresses.contains_key(&DbId(s.database)))
            {
                return Err(Error::Refused(format!(
                    "job {:?}: database {} is not in the topology",
                    j.name, s.database
                )));
            }
        }
        for j in def.job.iter().filter(|j| j.kind == JobKind::Copy) {
            let sets: Vec<(DbId, Vec<Fnr>)> = j
                .set
                .iter()
                .map(|s| (DbId(s.database), s.files.iter().map(|f| Fnr(*f)).collect()))
                .collect();
            crate::rules::check_sets_with_topology(v, &sets)
                .map_err(|e| Error::Refused(format!("job {:?}: {e}", j.name)))?;
        }
    }
    // No jobs (clearing them) needs no area.
    if def.job.is_empty() && def.area.is_none() {
        return Ok(def);
    }
    let Some(node_area) = node_area else {
        return Err(Error::Refused(
            "this node has no copy area for its copy jobs to write to (start it with --copy-area DIR)"
                .into(),
        ));
    };
    if let Some(a) = &def.area {
        let same = match (std::fs::canonicalize(a), std::fs::canonicalize(node_area)) {
            (Ok(x), Ok(y)) => x == y,
            _ => a == node_area,
        };
        if !same {
            return Err(Error::Refused(format!(
                "area = {:?}: copy jobs write to the copy area of the node that runs them, {} (drop the line or name that area)",
                a.display().to_string(),
                node_area.display()
            )));
        }
    }
    Ok(def)
}

/// Time, as the scheduler sees it.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// One run of a job, as the history records it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct JobRun {
    pub job: String,
    /// The cron slot this run is for.
    pub slot: String,
    pub started: String,
    pub seconds: f64,
    pub ok: bool,
    /// Sets recorded in the catalog (all of the job's, or none).
    pub sets: Vec<String>,
    /// Sets removed by retention after the run.
    pub dropped: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What an archive or log-cleanup job did, per database.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub done: Vec<String>,
}

fn history_path(area: &Area) -> PathBuf {
    area.root().join("jobs-history.jsonl")
}

/// Appends a run to the area's job history (synced).
fn record_run(area: &Area, run: &JobRun) -> Result<(), Error> {
    let path = history_path(area);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .within(|| format!("cannot open {}", path.display()))?;
    let mut line = serde_json::to_vec(run).within(|| "encoding a job run".to_string())?;
    line.push(b'\n');
    f.write_all(&line)
        .and_then(|_| f.sync_data())
        .within(|| format!("cannot write {}", path.display()))
}

/// The job history, oldest first (a torn last line is skipped).
pub fn history(area: &Area) -> Result<Vec<JobRun>, Error> {
    let path = history_path(area);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).within(|| format!("cannot read {}", path.display())),
    };
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// Drops the sets of `job`'s runs beyond `keep` and older than
/// `max_age_days` (never the newest run). Returns the dropped set ids.
pub fn apply_retention(
    area: &Area,
    job: &JobDef,
    now: DateTime<Utc>,
) -> Result<Vec<String>, Error> {
    let mut runs: BTreeMap<String, Vec<crate::CopySet>> = BTreeMap::new();
    for s in area.list()? {
        if s.job.as_deref() == Some(job.name.as_str()) {
            runs.entry(s.run.clone().unwrap_or_else(|| s.id.clone()))
                .or_default()
                .push(s);
        }
    }
    // Newest first (run ids are UTC timestamps).
    let ordered: Vec<(String, Vec<crate::CopySet>)> = runs.into_iter().rev().collect();
    let mut dropped = Vec::new();
    for (i, (_, sets)) in ordered.iter().enumerate() {
        if i == 0 {
            continue;
        }
        let too_many = job.keep.is_some_and(|k| i >= k);
        let too_old = job.max_age_days.is_some_and(|d| {
            sets.iter().all(|s| {
                DateTime::parse_from_rfc3339(&s.taken_utc)
                    .map(|t| (now - t.with_timezone(&Utc)).num_seconds() as f64 > d * 86_400.0)
                    .unwrap_or(false)
            })
        });
        if too_many || too_old {
            for s in sets {
                area.remove(&s.id)?;
                dropped.push(s.id.clone());
            }
        }
    }
    Ok(dropped)
}

/// Runs one job now: takes its sets from `source_of` (database → where),
/// records the run in the history and applies retention after a success.
pub fn run_job(
    area: &Area,
    job: &JobDef,
    slot: DateTime<Utc>,
    now: DateTime<Utc>,
    source_of: &dyn Fn(DbId) -> Result<Source, Error>,
    progress: &mut dyn FnMut(&str),
) -> JobRun {
    let t0 = std::time::Instant::now();
    let mut done = Vec::new();
    let result = (|| -> Result<Vec<String>, Error> {
        match job.kind {
            JobKind::Copy => {
                let mut asks = Vec::new();
                for s in &job.set {
                    asks.push(Ask {
                        source: source_of(DbId(s.database))?,
                        files: s.files.iter().map(|f| Fnr(*f)).collect(),
                    });
                }
                let taken = take_job(area, Some(&job.name), &asks, progress)?;
                Ok(taken.into_iter().map(|t| t.set.id).collect())
            }
            JobKind::Archive => {
                for s in &job.set {
                    let src = source_of(DbId(s.database))?;
                    let a = crate::archive::archive(area, &src)?;
                    let p = crate::archive::prune(area, &src)?;
                    done.push(format!(
                        "database {}: {} segment(s) archived, {} removed from the live log ({})",
                        s.database,
                        a.len(),
                        p.removed.len(),
                        p.note
                    ));
                }
                Ok(Vec::new())
            }
            JobKind::LogCleanup => {
                for s in &job.set {
                    let addr = match source_of(DbId(s.database))? {
                        Source::Node(a) => a,
                        Source::Local(_) => {
                            return Err(Error::Refused(format!(
                                "database {}: a log cleanup runs through the database's node",
                                s.database
                            )))
                        }
                    };
                    let req = propagator::wire::Request::Operation(
                        propagator::wire::OperationRequest::LogCleanup {
                            master: None,
                            until: None,
                            execute: true,
                        },
                    );
                    match propagator::node::client::Client::connect(addr)?.call(&req)? {
                        propagator::wire::Response::Cleanup(plans) => {
                            for p in plans {
                                done.push(format!(
                                    "database {} master {}: log now seq {}..{} ({} records)",
                                    s.database, p.master, p.first_seq, p.last_seq, p.records
                                ));
                            }
                        }
                        other => {
                            return Err(Error::Unexpected(format!(
                                "node {addr} answered {other:?} to LogCleanup"
                            )))
                        }
                    }
                }
                Ok(Vec::new())
            }
        }
    })();
    // The sets are recorded once taken: a retention that fails afterwards
    // (a damaged catalog entry, say) is reported, not the run undone.
    let (ok, sets, dropped, error) = match result {
        Ok(s) if job.kind != JobKind::Copy => (true, s, Vec::new(), None),
        Ok(s) => match apply_retention(area, job, now) {
            Ok(d) => (true, s, d, None),
            Err(e) => (
                true,
                s,
                Vec::new(),
                Some(format!("retention not applied: {e:#}")),
            ),
        },
        Err(e) => (false, Vec::new(), Vec::new(), Some(format!("{e:#}"))),
    };
    let run = JobRun {
        job: job.name.clone(),
        slot: slot.to_rfc3339(),
        started: now.to_rfc3339(),
        seconds: t0.elapsed().as_secs_f64(),
        ok,
        sets,
        dropped,
        error,
        done,
    };
    if let Err(e) = record_run(area, &run) {
        progress(&format!("job {}: cannot record its run: {e:#}", job.name));
    }
    run
}

/// The schedule of a set of jobs: when each fires next.
pub struct Scheduler {
    pub def: JobsDef,
    crons: BTreeMap<String, croner::Cron>,
    next: BTreeMap<String, DateTime<Utc>>,
}

impl Scheduler {
    pub fn new(text: &str, now: DateTime<Utc>) -> Result<Scheduler, Error> {
        let (def, crons) = parse_jobs(text)?;
        let mut s = Scheduler {
            def,
            crons,
            next: BTreeMap::new(),
        };
        for name in s.crons.keys().cloned().collect::<Vec<_>>() {
            s.advance(&name, now)?;
        }
        Ok(s)
    }

    fn advance(&mut self, name: &str, after: DateTime<Utc>) -> Result<(), Error> {
        let cron = &self.crons[name];
        let t = cron.find_next_occurrence(&after, false).map_err(|e| {
            Error::Refused(format!(
                "copy job {name}: no next time for {}: {e}",
                cron.pattern
            ))
        })?;
        self.next.insert(name.to_string(), t);
        Ok(())
    }

    /// When the next job is due.
    pub fn next_due(&self) -> Option<DateTime<Utc>> {
        self.next.values().min().copied()
    }

    /// Runs every job due at `clock.now()`, each once, then schedules its
    /// next slot after the time the run ended.
    pub fn run_due(
        &mut self,
        area: &Area,
        clock: &dyn Clock,
        source_of: &dyn Fn(DbId) -> Result<Source, Error>,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Vec<JobRun>, Error> {
        let now = clock.now();
        let due: Vec<(String, DateTime<Utc>)> = self
            .next
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(n, t)| (n.clone(), *t))
            .collect();
        let mut runs = Vec::new();
        for (name, slot) in due {
            let Some(job) = self.def.job.iter().find(|j| j.name == name).cloned() else {
                continue;
            };
            runs.push(run_job(area, &job, slot, now, source_of, progress));
            self.advance(&name, clock.now().max(slot))?;
        }
        Ok(runs)
    }
}

/// The copy-job text a node holds.
pub fn fetch_jobs(node: std::net::SocketAddr) -> Result<String, Error> {
    use propagator::wire::{Request, Response};
    match propagator::node::client::Client::connect(node)?
        .call(&Request::Copy(CopyRequest::CopyJobs { set: None }))?
    {
        Response::Text(t) => Ok(t),
        other => Err(Error::Unexpected(format!(
            "node {node} answered {other:?} to CopyJobs"
        ))),
    }
}

/// Where each database of the node's topology is served.
pub fn addresses(
    node: std::net::SocketAddr,
) -> Result<BTreeMap<DbId, std::net::SocketAddr>, Error> {
    use propagator::wire::{Request, Response};
    match propagator::node::client::Client::connect(node)?
        .call(&Request::Admin(AdminRequest::AdminExport))?
    {
        Response::Text(t) => Ok(propagator::topology::Valid::parse(&t)
            .map_err(|e| Error::Refused(format!("node {node} holds a bad topology: {e}")))?
            .addresses),
        other => Err(Error::Unexpected(format!(
            "node {node} answered {other:?} to AdminExport"
        ))),
    }
}

/// A source for each database, by the topology `node` holds.
pub fn node_sources(
    node: std::net::SocketAddr,
) -> Result<impl Fn(DbId) -> Result<Source, Error>, Error> {
    let addrs = addresses(node)?;
    Ok(move |db: DbId| {
        addrs
            .get(&db)
            .map(|a| Source::Node(*a))
            .ok_or_else(|| Error::Refused(format!("database {db} is not in the topology")))
    })
}

/// The scheduler a node runs beside its service: reads the job definitions
/// from the node (every 2 s, so `etp copy jobs set` takes effect without a
/// restart), runs the jobs that are due into the node's copy `area`, until
/// `stop`. Without an area it schedules nothing (the node refuses jobs).
pub fn serve(
    node: std::net::SocketAddr,
    area: Option<&std::path::Path>,
    clock: &dyn Clock,
    stop: &std::sync::atomic::AtomicBool,
) {
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};
    let mut text = String::new();
    let mut sched: Option<Scheduler> = None;
    let mut checked: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        if checked.is_none_or(|c| c.elapsed() >= Duration::from_secs(2)) {
            checked = Some(Instant::now());
            if let Ok(t) = fetch_jobs(node) {
                if t != text {
                    sched = if t.trim().is_empty() {
                        None
                    } else {
                        match check_jobs(&t, area, None)
                            .and_then(|_| Scheduler::new(&t, clock.now()))
                        {
                            Ok(s) => Some(s),
                            Err(e) => {
                                tracing::error!(error = %format!("{e:#}"), "copy jobs not scheduled");
                                None
                            }
                        }
                    };
                    text = t;
                }
            }
        }
        if let Some(s) = sched.as_mut() {
            if s.next_due().is_some_and(|t| t <= clock.now()) {
                let result = area
                    .ok_or_else(|| Error::Refused("no copy area".into()))
                    .and_then(|r| Ok(Area::open(r)?))
                    .and_then(|a| {
                        let src = node_sources(node)?;
                        s.run_due(&a, clock, &src, &mut |m| {
                            tracing::info!(message = m, "copy job")
                        })
                    });
                match result {
                    Ok(runs) => {
                        for r in runs {
                            match &r.error {
                                None => {
                                    tracing::info!(job = %r.job, sets = ?r.sets, "copy job done")
                                }
                                Some(e) if r.ok => {
                                    tracing::warn!(job = %r.job, sets = ?r.sets, error = %e, "copy job done; its retention was not applied")
                                }
                                Some(e) => {
                                    tracing::warn!(job = %r.job, error = %e, "copy job failed; next slot retries")
                                }
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %format!("{e:#}"), "copy jobs could not run"),
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
