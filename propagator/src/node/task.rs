//! The replication task of one master: a feeder per replicate.
//!
//! Each feeder owns one link to its replicate's node, its own cursor and
//! its own window of batches in flight, so a slow or unreachable replicate
//! never holds back another. On every (re)connect it asks the replicate for
//! its confirmation and resumes after the confirmed seq — never from its own
//! memory — after checking the replicate's digest against what the master
//! expects at that seq. It then ships whole master transactions in batches
//! as soon as they are durable on the master (it wakes on the database's
//! durable-LSN watch: no polling), and checks every acknowledgement's digest.
//!
//! Partial replicates get the projection of the records their predicate
//! selects over the full after-image: a record that leaves the selection is
//! deleted from the replicate, one that enters is stored. A record on which
//! the predicate fails to evaluate (a missing field, a wrong type) counts as
//! not selected ([`Predicate::selects`]).
//!
//! What happens on a failure depends on the node's [`Policy`]:
//! - a lost link is retried with backoff capped at the task's restart
//!   interval (automatic policy and a restart interval), else the feeder
//!   stops until `etp task start|restart`;
//! - a digest mismatch or a diverged replicate puts it in `error` (recorded
//!   in its error log); the automatic policy retries it with backoff, the
//!   manual one waits for `etp replicate reset-error`;
//! - a replicate that needs a load (new, or redefined) is loaded by the
//!   automatic policy ([`super::load`]) and waits for `etp replicate init`
//!   under the manual one (unless its master is still empty);
//! - the maintenance policy stops every feeder at a safe point (between
//!   acknowledged batches or chunks) and starts none.

use super::client::{ClientError, Conn};
use super::control::{Anchor, Control, LoadOrder, Policy};
use crate::database::Database;
use crate::digest::FileMeta;
use crate::ids::{DbId, Fnr, Isn, Seq};
use crate::log_record::LogRecord;
use crate::predicate::{project, Predicate};
use crate::record::{decode_record, encode_record};
use crate::topology::{MasterDef, Replicate, TaskDef};
use crate::wire::{
    CleanupPlan, Confirmation, ErrorCode, LinkState, ReplChange, ReplicateReport, Request,
    Response, TaskReport, XrefEntry, XrefReport,
};
use serde_bytes::ByteBuf;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// Default batches in flight per replicate.
const DEFAULT_WINDOW: usize = 8;
/// Default log records per batch (extended to the end of a transaction).
const DEFAULT_BATCH: usize = 2000;
/// Bytes of images per batch, at most (whole transactions).
const MAX_BATCH_BYTES: usize = 8 << 20;
/// A link with batches in flight and no acknowledgement for this long is dead.
pub(super) const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// Backoff cap for retrying a replicate in error (automatic policy).
const ERROR_RETRY_CAP: Duration = Duration::from_secs(60);
/// Behind and not confirming anything for this long: stalled.
pub const STALL_AFTER_S: f64 = 3.0;
/// How often a streaming feeder records its digest anchor.
const ANCHOR_EVERY: Duration = Duration::from_secs(30);
/// Log records scanned, at most, to measure a replicate's lag in bytes.
const LAG_BYTES_SCAN: u64 = 200_000;

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(super) struct Ctx {
    pub db: Database,
    pub master: MasterDef,
    pub def: TaskDef,
    pub log: Fnr,
    pub window: usize,
    pub batch: usize,
    pub control: Arc<Control>,
    /// Every replicate of this master (a load may read from a full one).
    pub reps: Vec<Replicate>,
}

/// A load as its feeder runs it.
#[derive(Clone, Debug)]
pub(super) struct LoadStatus {
    pub id: String,
    pub snapshot: Seq,
    pub source: String,
    pub scanned: u64,
    pub total: u64,
    pub loaded: u64,
    pub chunks_this_run: u64,
    pub resumed_from: Isn,
    pub started: Instant,
}

#[derive(Default)]
pub(super) struct FeedState {
    pub phase: String,
    pub streaming: bool,
    pub has_confirmation: bool,
    pub load: Option<LoadStatus>,
    pub sent: Seq,
    pub confirmed: Seq,
    /// When the confirmed seq last moved (or streaming began), µs.
    pub progress_us: i64,
    pub last_error: Option<String>,
    pub connects: u64,
}

pub(super) struct Feeder {
    pub rep: Replicate,
    /// A fingerprint of the replicate's definition (anchors are only valid under it).
    pub def_hash: u128,
    pub st: Mutex<FeedState>,
    /// The confirmed seq, for waiters ([`Task::watch_confirmed`]).
    pub confirmed: tokio::sync::watch::Sender<Seq>,
    handle: Mutex<Option<JoinHandle<()>>>,
    /// The replicate's expected meta at a seq it confirmed (a shortcut for
    /// the next connect; the resume point always comes from the replicate).
    pub expected: Mutex<Option<(Seq, FileMeta)>>,
    /// Some(why): stop at the next safe point.
    pub stop: tokio::sync::watch::Sender<Option<String>>,
    /// The last refusal of a load request by the replicate (see
    /// [`LoadRefusal`]): met again after a retry, the load is an error.
    pub refusal: Mutex<Option<LoadRefusal>>,
}

/// A load request the replicate refused: which load, where, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct LoadRefusal {
    pub load: String,
    /// The chunk's first isn; `None` for the load's beginning.
    pub at: Option<Isn>,
    pub code: ErrorCode,
}

impl Feeder {
    /// Records a refusal of a load request. A refusal the same load met at
    /// the same point before (after a reconnect and a retry) is not retried
    /// again: the same request would be refused again, forever
    /// ([`Stop::Refused`]); any other is a lost link, retried.
    pub(super) fn load_refused(&self, r: LoadRefusal, message: String) -> Stop {
        let mut last = lock(&self.refusal);
        if last.as_ref() == Some(&r) {
            *last = None;
            let at = r.at.map_or("its beginning".to_string(), |i| {
                format!("the chunk from isn {i}")
            });
            return Stop::Refused(format!(
                "load {} of replicate {} refused again at {at} after a retry: {message}",
                r.load,
                self.name()
            ));
        }
        *last = Some(r);
        Stop::Link(message)
    }

    /// Forgets a recorded refusal (a load finished, or an operator retries).
    pub(super) fn forget_refusal(&self) {
        *lock(&self.refusal) = None;
    }

    pub fn set_phase(&self, s: impl Into<String>) {
        lock(&self.st).phase = s.into();
    }
    pub fn name(&self) -> &str {
        &self.rep.def.name
    }
}

/// The fingerprint of what a replicate holds of its master.
pub fn definition_hash(rep: &Replicate) -> u128 {
    let d = &rep.def;
    let text = format!(
        "{}|{}|{}|{}|{}|{:?}|{:?}",
        d.master_database, d.master, d.database, d.file, d.confirmation, d.fields, d.predicate
    );
    let h = blake3::hash(text.as_bytes());
    let mut first = [0u8; 16];
    first.copy_from_slice(&h.as_bytes()[..16]);
    u128::from_le_bytes(first)
}

pub struct Task {
    pub(super) ctx: Arc<Ctx>,
    pub(super) feeders: Vec<Arc<Feeder>>,
}

pub(super) enum Stop {
    /// The link failed: retry (policy and restart interval permitting) or stop.
    Link(String),
    /// The replicate is wrong: error state.
    Fatal(String),
    /// The replicate needs a load before it can be fed.
    NeedsLoad(String),
    /// Asked to stop; stopped at a safe point.
    Stopped(String),
    /// The replicate refused the same load request twice: error state, and
    /// no more retries until an operator acts (reset-error, reinit).
    Refused(String),
}

pub(super) fn link_err(e: ClientError) -> Stop {
    match e {
        // The same batch would be too large again on every retry.
        ClientError::TooLarge { .. } => Stop::Fatal(e.to_string()),
        e => Stop::Link(e.to_string()),
    }
}

/// Runs a link step with a deadline: a peer that accepts and then stalls
/// must not hang the feeder.
pub(super) async fn timed<T>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, ClientError>>,
) -> Result<T, Stop> {
    match tokio::time::timeout(ACK_TIMEOUT, f).await {
        Ok(r) => r.map_err(link_err),
        Err(_) => Err(Stop::Link(format!(
            "{what} took more than {} s",
            ACK_TIMEOUT.as_secs()
        ))),
    }
}

/// Runs a blocking call (database, control record) off the reactor.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(format!("internal error: {e}")),
    }
}

pub(super) fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

impl Task {
    /// Starts the feeders (unless the policy or a replicate's state says
    /// not to); call inside a tokio runtime.
    pub fn start(
        db: Database,
        master: MasterDef,
        def: TaskDef,
        reps: Vec<Replicate>,
        control: Arc<Control>,
        run: bool,
    ) -> Task {
        let ctx = Arc::new(Ctx {
            db,
            log: Fnr(master.log),
            window: def.window.map_or(DEFAULT_WINDOW, |w| w as usize),
            batch: def.batch.map_or(DEFAULT_BATCH, |b| b as usize),
            master,
            def,
            control,
            reps: reps.clone(),
        });
        let feeders = reps
            .into_iter()
            .map(|rep| {
                Arc::new(Feeder {
                    def_hash: definition_hash(&rep),
                    rep,
                    st: Mutex::new(FeedState {
                        phase: "starting".into(),
                        progress_us: now_us(),
                        ..FeedState::default()
                    }),
                    confirmed: tokio::sync::watch::channel(Seq(0)).0,
                    handle: Mutex::new(None),
                    expected: Mutex::new(None),
                    stop: tokio::sync::watch::channel(None).0,
                    refusal: Mutex::new(None),
                })
            })
            .collect();
        let t = Task { ctx, feeders };
        if run {
            t.start_feeders();
        }
        t
    }

    pub fn master(&self) -> Fnr {
        Fnr(self.ctx.master.file)
    }

    pub fn feeds(&self, replicate: &str) -> bool {
        self.feeders.iter().any(|f| f.name() == replicate)
    }

    pub(super) fn feeder(&self, replicate: &str) -> Option<&Arc<Feeder>> {
        self.feeders.iter().find(|f| f.name() == replicate)
    }

    /// Starts every feeder that is not running (those the policy and their
    /// state allow: see [`run`]).
    pub fn start_feeders(&self) {
        for f in &self.feeders {
            self.start_one(f);
        }
    }

    pub(super) fn start_one(&self, f: &Arc<Feeder>) {
        let mut h = lock(&f.handle);
        if h.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        f.stop.send_replace(None);
        f.set_phase("starting");
        let (ctx, f2) = (self.ctx.clone(), f.clone());
        *h = Some(tokio::spawn(async move { run(ctx, f2).await }));
    }

    /// Stops every feeder at a safe point: between acknowledged batches (a
    /// batch is one transaction on the replicate, applied whole or not at
    /// all) or between load chunks.
    pub async fn stop_feeders(&self, why: &str) {
        for f in &self.feeders {
            f.stop.send_replace(Some(why.to_string()));
        }
        for f in &self.feeders {
            stop_one(f, why).await;
        }
    }

    pub(super) async fn stop_feeder(&self, f: &Arc<Feeder>, why: &str) {
        f.stop.send_replace(Some(why.to_string()));
        stop_one(f, why).await;
    }

    /// Stops at once (shutdown): the replicate sees whole batches or none.
    pub fn abort(&self) {
        for f in &self.feeders {
            if let Some(h) = lock(&f.handle).take() {
                h.abort();
            }
            let mut s = lock(&f.st);
            s.streaming = false;
            s.load = None;
            s.phase = "stopped (node shutting down)".into();
        }
    }

    /// A receiver of the named replicate's confirmed seq, if this task feeds it.
    pub fn watch_confirmed(&self, replicate: &str) -> Option<tokio::sync::watch::Receiver<Seq>> {
        self.feeder(replicate).map(|f| f.confirmed.subscribe())
    }

    /// The task's state (blocking: reads log records for lag figures).
    pub fn report(&self) -> TaskReport {
        let ctx = &self.ctx;
        let master_seq = ctx
            .db
            .file_info(ctx.log)
            .map(|i| Seq(i.meta.next_isn.saturating_sub(1)))
            .unwrap_or_default();
        let control = ctx.control.snapshot();
        let now = now_us();
        let replicates: Vec<ReplicateReport> = self
            .feeders
            .iter()
            .map(|f| {
                let ctl = control.of(f.name());
                let s = lock(&f.st);
                let lag_records = master_seq.0.saturating_sub(s.confirmed.0);
                let oldest_us = if lag_records > 0 {
                    ctx.db
                        .read_log_record(ctx.log, Seq(s.confirmed.0 + 1))
                        .ok()
                        .flatten()
                        .map(|r| r.time_us)
                } else {
                    None
                };
                let lag_s = oldest_us.map_or(0.0, |t| (now - t).max(0) as f64 / 1e6);
                let stalled_s = match oldest_us {
                    Some(t) => (now - t.max(s.progress_us)).max(0) as f64 / 1e6,
                    None if lag_records > 0 => (now - s.progress_us).max(0) as f64 / 1e6,
                    None => 0.0,
                };
                let health = if lag_records == 0 {
                    "current"
                } else if stalled_s >= STALL_AFTER_S {
                    "stalled"
                } else {
                    "behind"
                };
                let (lag_bytes, exact) = lag_bytes(ctx, s.confirmed, lag_records);
                let (state, reason) = if let Some((why, _)) = &ctl.shunned {
                    ("shunned", Some(why.clone()))
                } else if let Some(e) = &ctl.error {
                    ("error", Some(e.reason.clone()))
                } else if let Some(r) = &ctl.restoring {
                    ("restoring", Some(r.clone()))
                } else if s.load.is_some() || ctl.load.is_some() {
                    ("initializing", ctl.load.as_ref().map(|l| l.why.clone()))
                } else if s.streaming {
                    ("online", None)
                } else {
                    ("offline", Some(s.phase.clone()))
                };
                let load = s.load.as_ref().map(|l| {
                    let secs = l.started.elapsed().as_secs_f64().max(1e-3);
                    let rate = l.scanned as f64 / secs;
                    let left = l.total.saturating_sub(l.scanned) as f64;
                    crate::wire::LoadReport {
                        id: l.id.clone(),
                        snapshot: l.snapshot,
                        source: l.source.clone(),
                        scanned: l.scanned,
                        total: l.total,
                        loaded: l.loaded,
                        chunks_this_run: l.chunks_this_run,
                        resumed_from: l.resumed_from,
                        rows_per_s: rate,
                        eta_s: (rate > 0.0).then(|| left / rate),
                    }
                });
                ReplicateReport {
                    name: f.name().to_string(),
                    database: DbId(f.rep.def.database),
                    address: f.rep.address.to_string(),
                    kind: if f.rep.is_partial() {
                        "partial"
                    } else {
                        "full"
                    }
                    .into(),
                    state: state.into(),
                    reason,
                    phase: s.phase.clone(),
                    sent_seq: s.sent,
                    confirmed_seq: s.confirmed,
                    lag_records,
                    lag_bytes,
                    lag_bytes_exact: exact,
                    lag_s,
                    stalled_s,
                    health: health.into(),
                    consistency: if ctl.gaps.is_empty() {
                        "consistent"
                    } else {
                        "consistent-except-gaps"
                    }
                    .into(),
                    gaps: ctl.gaps.clone(),
                    load,
                    last_load: ctl.last_load.clone(),
                    last_error: s.last_error.clone(),
                    errors_logged: ctl.errors.len() as u64,
                    connects: s.connects,
                }
            })
            .collect();
        let (log_records, log_bytes) = log_size(ctx);
        let warn_bytes = ctx.def.log_warn_mb.unwrap_or(1024) << 20;
        let mut warnings = Vec::new();
        if log_bytes > warn_bytes {
            warnings.push(format!(
                "the log file of master {} holds about {} MiB ({log_records} records), above log_warn_mb = {}: see etp log plan-cleanup",
                ctx.master.name,
                log_bytes >> 20,
                warn_bytes >> 20
            ));
        }
        let running = self
            .feeders
            .iter()
            .any(|f| lock(&f.handle).as_ref().is_some_and(|h| !h.is_finished()));
        TaskReport {
            master: Fnr(ctx.master.file),
            master_name: ctx.master.name.clone(),
            state: if running { "running" } else { "stopped" }.into(),
            restart_interval_s: ctx.def.restart_interval_s,
            policy: control.policy,
            master_seq,
            log_records,
            log_bytes,
            warnings,
            replicates,
        }
    }

    /// Which replicates have a master transaction (blocking).
    pub fn xref(&self, id: Option<&str>, seq: Option<Seq>) -> Result<Option<XrefReport>, String> {
        let ctx = &self.ctx;
        let mut found: Vec<LogRecord> = Vec::new();
        match (id, seq) {
            (Some(id), _) => {
                ctx.db
                    .for_each_raw(ctx.log, Isn(1), |_, b| {
                        let r =
                            LogRecord::decode(b).map_err(|source| crate::DbError::BadRecord {
                                fnr: ctx.log,
                                source,
                            })?;
                        if r.client_id.as_deref() == Some(id) {
                            let last = r.part == r.parts;
                            found.push(r);
                            return Ok(!last);
                        }
                        Ok(true)
                    })
                    .map_err(|e| e.to_string())?;
            }
            (None, Some(seq)) => {
                let Some(r) = ctx
                    .db
                    .read_log_record(ctx.log, seq)
                    .map_err(|e| e.to_string())?
                else {
                    return Ok(None);
                };
                // The whole transaction: back to part 1, on to the last part.
                let first = Seq(seq.0 + 1 - u64::from(r.part.max(1)));
                let last = Seq(first.0 + u64::from(r.parts.max(1)) - 1);
                for s in first.0..=last.0 {
                    if let Some(r) = ctx
                        .db
                        .read_log_record(ctx.log, Seq(s))
                        .map_err(|e| e.to_string())?
                    {
                        found.push(r);
                    }
                }
            }
            (None, None) => return Err("name a transaction: --id or --seq".into()),
        }
        let (Some(first), Some(last)) = (found.first(), found.last()) else {
            return Ok(None);
        };
        let control = ctx.control.snapshot();
        let replicates = self
            .feeders
            .iter()
            .map(|f| {
                let ctl = control.of(f.name());
                let confirmed = lock(&f.st).confirmed;
                let touches = found
                    .iter()
                    .any(|r| matches!(transform(&f.rep, r), Ok(Some(_)) | Err(_)));
                let status = if ctl.in_gap(first.seq) || ctl.in_gap(last.seq) {
                    "skipped (gap)"
                } else if confirmed < last.seq {
                    "pending"
                } else if !touches {
                    "applied (changed nothing there: outside its selection)"
                } else {
                    "applied"
                };
                XrefEntry {
                    replicate: f.name().to_string(),
                    status: status.into(),
                    confirmed_seq: confirmed,
                }
            })
            .collect();
        Ok(Some(XrefReport {
            master: Fnr(ctx.master.file),
            first_seq: first.seq,
            last_seq: last.seq,
            lsn: first.lsn,
            time_us: first.time_us,
            client_id: first.client_id.clone(),
            replicates,
        }))
    }

    /// What log cleanup may delete, and why not more (blocking). Nothing is
    /// deleted beyond what every replicate has durably confirmed, nor past
    /// the master's most recent catalogued copy; with no copy, nothing.
    /// What may be deleted from the master's log file, and (with
    /// `execute`) deletes it: log records every replicate has durably
    /// confirmed and at or before `copy_horizon`, the log seq of the
    /// master's most recent catalogued copy (None: no copy, nothing is
    /// deleted), and at or before `until` if given.
    pub fn cleanup_plan(
        &self,
        until: Option<Seq>,
        copy_horizon: Option<Seq>,
        execute: bool,
    ) -> Result<CleanupPlan, String> {
        let ctx = &self.ctx;
        let mut first = None;
        let mut last = Seq(0);
        let (mut records, mut bytes) = (0u64, 0u64);
        ctx.db
            .for_each_raw(ctx.log, Isn(1), |isn, b| {
                first.get_or_insert(Seq(isn.0));
                last = Seq(isn.0);
                records += 1;
                bytes += b.len() as u64;
                Ok(true)
            })
            .map_err(|e| e.to_string())?;
        let control = ctx.control.snapshot();
        let mut reps = Vec::new();
        for f in &self.feeders {
            let st = lock(&f.st);
            let ctl = control.of(f.name());
            let (seq, from) = if st.has_confirmation {
                (st.confirmed, "its last durable acknowledgement")
            } else if let Some(a) = ctl.anchor {
                (a.seq, "anchor recorded on this node")
            } else {
                (
                    Seq(0),
                    "unknown (never connected): nothing of the log is released",
                )
            };
            // A load in progress needs everything after its snapshot.
            let seq = match &st.load {
                Some(l) => seq.min(l.snapshot),
                None => seq,
            };
            reps.push((f.name().to_string(), seq, from.to_string()));
        }
        let min_confirmed = reps.iter().map(|r| r.1).min().unwrap_or(last);
        let safe_until = copy_horizon.map(|c| c.min(min_confirmed));
        let mut notes = Vec::new();
        if copy_horizon.is_none() {
            notes.push(format!(
                "no catalogued copy of master {} exists: nothing may be deleted (a log record is deleted only when every replicate has durably confirmed it and it is older than the master's most recent copy)",
                ctx.master.name
            ));
        }
        let warn_bytes = ctx.def.log_warn_mb.unwrap_or(1024) << 20;
        if bytes > warn_bytes {
            notes.push(format!(
                "warning: the log file holds {bytes} bytes, above the threshold of {warn_bytes}"
            ));
        }
        let mut deleted = 0;
        if let (true, Some(safe)) = (execute, safe_until) {
            let upto = until.map_or(safe, |u| u.min(safe));
            // In chunks of at most 50 000 records per transaction; log
            // records are only ever deleted from the front.
            let mut from = first.map_or(1, |f| f.0);
            while from <= upto.0 {
                let to = (from + 50_000).min(upto.0 + 1);
                let (_, stats) = ctx
                    .db
                    .restore_range(ctx.log, Isn(from), Some(Isn(to)), Vec::new(), None)
                    .map_err(|e| e.to_string())?;
                deleted += stats.removed;
                from = to;
            }
            if deleted > 0 {
                notes.push(format!("deleted {deleted} log records up to seq {upto}"));
            }
        }
        let would_strand = match until {
            Some(u) => reps
                .iter()
                .filter(|r| r.1 < u)
                .map(|r| format!("{} (confirmed {}): needs a full reinit", r.0, r.1))
                .collect(),
            None => Vec::new(),
        };
        Ok(CleanupPlan {
            master: Fnr(ctx.master.file),
            master_name: ctx.master.name.clone(),
            first_seq: first.unwrap_or_default(),
            last_seq: last,
            records,
            bytes,
            warn_bytes,
            replicates: reps,
            copy_horizon,
            safe_until,
            requested: until,
            would_strand,
            would_orphan_copies: Vec::new(),
            deleted,
            notes,
        })
    }
}

async fn stop_one(f: &Arc<Feeder>, why: &str) {
    let h = lock(&f.handle).take();
    if let Some(mut h) = h {
        // Enough for the batches in flight to be acknowledged.
        let grace = ACK_TIMEOUT + Duration::from_secs(2);
        if tokio::time::timeout(grace, &mut h).await.is_err() {
            h.abort();
        }
    }
    let mut s = lock(&f.st);
    s.streaming = false;
    s.load = None;
    s.phase = format!("stopped ({why})");
}

/// Bytes of the log records a replicate has not confirmed (an estimate from
/// the first `LAG_BYTES_SCAN` beyond that).
fn lag_bytes(ctx: &Ctx, confirmed: Seq, lag_records: u64) -> (u64, bool) {
    if lag_records == 0 {
        return (0, true);
    }
    let (mut n, mut bytes) = (0u64, 0u64);
    let r = ctx.db.for_each_raw(ctx.log, Isn(confirmed.0 + 1), |_, b| {
        n += 1;
        bytes += b.len() as u64;
        Ok(n < LAG_BYTES_SCAN)
    });
    if r.is_err() || n == 0 {
        return (0, false);
    }
    if n >= lag_records {
        (bytes, true)
    } else {
        (bytes / n * lag_records, false)
    }
}

/// The log file's record count and its size, estimated from the newest
/// records (cheap enough for every status call).
fn log_size(ctx: &Ctx) -> (u64, u64) {
    let Ok(info) = ctx.db.file_info(ctx.log) else {
        return (0, 0);
    };
    let last = info.meta.next_isn.saturating_sub(1);
    let (mut n, mut bytes) = (0u64, 0u64);
    for s in (last.saturating_sub(63).max(1)..=last).rev() {
        if let Ok(Some(b)) = ctx.db.read_durable_raw(ctx.log, Isn(s)) {
            n += 1;
            bytes += b.len() as u64;
        }
    }
    let avg = bytes.checked_div(n).unwrap_or(0);
    (info.meta.count, info.meta.count * avg)
}

/// Waits out a backoff delay, unless asked to stop.
async fn pause(f: &Feeder, delay: Duration) -> Option<String> {
    let mut stop = f.stop.subscribe();
    if let Some(why) = stop.borrow_and_update().clone() {
        return Some(why);
    }
    tokio::select! {
        _ = tokio::time::sleep(delay) => None,
        _ = stop.changed() => stop.borrow().clone(),
    }
}

fn backoff(attempt: u32, cap: Duration) -> Duration {
    Duration::from_millis(100u64 << attempt.min(10)).min(cap)
}

async fn run(ctx: Arc<Ctx>, f: Arc<Feeder>) {
    let mut attempt: u32 = 0;
    let name = f.name().to_string();
    loop {
        if let Some(why) = f.stop.borrow().clone() {
            f.set_phase(format!("stopped ({why})"));
            return;
        }
        let ctl = ctx.control.replicate(&name);
        let policy = ctx.control.policy();
        if let Some((why, _)) = &ctl.shunned {
            f.set_phase(format!("not fed (shunned: {why})"));
            return;
        }
        if policy == Policy::Maintenance {
            f.set_phase("stopped (policy maintenance)");
            return;
        }
        if ctl.restoring.is_some() {
            f.set_phase("not fed (a copy set is being restored into it)");
            return;
        }
        // A damaged log cannot feed anyone: stop without blaming the
        // replicate (the master's recovery flow, case 3 or 4, mends it).
        if let Some(why) = ctx.db.file_info(ctx.log).ok().and_then(|i| i.damaged) {
            f.set_phase(format!(
                "stopped (the master's log file {} is damaged: {why})",
                ctx.log
            ));
            return;
        }
        if ctl.error.is_some() && policy != Policy::Automatic {
            f.set_phase(format!(
                "stopped (in error, policy {policy}: etp replicate reset-error {name})"
            ));
            return;
        }
        f.set_phase("connecting");
        let stop = feed(&ctx, &f, &mut attempt).await;
        {
            let mut s = lock(&f.st);
            s.streaming = false;
            s.load = None;
        }
        match stop {
            Stop::Stopped(why) => {
                save_anchor(&ctx, &f).await;
                f.set_phase(format!("stopped ({why})"));
                return;
            }
            Stop::Fatal(msg) => {
                tracing::error!(replicate = %name, error = %msg, "replicate in error");
                lock(&f.st).last_error = Some(msg.clone());
                let c = ctx.control.clone();
                let (n2, m2) = (name.clone(), msg.clone());
                if let Err(e) = blocking(move || c.update_replicate(&n2, |r| r.fail(&m2))).await {
                    tracing::error!(replicate = %name, error = %e, "cannot record the error state");
                }
                if ctx.control.policy() != Policy::Automatic {
                    f.set_phase(format!("stopped (error: {msg})"));
                    return;
                }
                let delay = backoff(attempt, ERROR_RETRY_CAP);
                attempt += 1;
                f.set_phase(format!("in error; retrying in {} ms", delay.as_millis()));
                if let Some(why) = pause(&f, delay).await {
                    f.set_phase(format!("stopped ({why})"));
                    return;
                }
            }
            Stop::Refused(msg) => {
                tracing::error!(replicate = %name, error = %msg, "replicate in error: load refused");
                lock(&f.st).last_error = Some(msg.clone());
                let c = ctx.control.clone();
                let (n2, m2) = (name.clone(), msg.clone());
                if let Err(e) = blocking(move || c.update_replicate(&n2, |r| r.fail(&m2))).await {
                    tracing::error!(replicate = %name, error = %e, "cannot record the error state");
                }
                f.set_phase(format!(
                    "stopped (error: {msg}; etp replicate reinit {name} orders a new load, reset-error retries this one)"
                ));
                return;
            }
            Stop::Link(msg) => {
                tracing::warn!(replicate = %name, error = %msg, "replication link lost");
                lock(&f.st).last_error = Some(msg.clone());
                let cap = match (ctx.control.policy(), ctx.def.restart_interval_s) {
                    (Policy::Automatic, Some(cap)) => cap,
                    (Policy::Automatic, None) => {
                        f.set_phase(format!("stopped (link lost: {msg}; no restart interval)"));
                        return;
                    }
                    (p, _) => {
                        f.set_phase(format!("stopped (link lost: {msg}; policy {p})"));
                        return;
                    }
                };
                let delay = backoff(attempt, Duration::from_secs(cap));
                attempt += 1;
                f.set_phase(format!("retrying in {} ms", delay.as_millis()));
                if let Some(why) = pause(&f, delay).await {
                    f.set_phase(format!("stopped ({why})"));
                    return;
                }
            }
            Stop::NeedsLoad(why) => {
                if ctx.control.policy() != Policy::Automatic && !master_is_empty(&ctx) {
                    f.set_phase(format!(
                        "stopped ({why}: etp replicate init {name}, or reinit --scoped)"
                    ));
                    return;
                }
                tracing::info!(replicate = %name, reason = %why, "loading the replicate (automatic policy)");
                let c = ctx.control.clone();
                let (n2, order) = (
                    name.clone(),
                    LoadOrder {
                        id: new_load_id(),
                        from: None,
                        // A redefined replicate moves only what differs.
                        rewrite: false,
                        chunk: None,
                        requested_us: now_us(),
                        why: format!("{why} (automatic policy)"),
                    },
                );
                if let Err(e) = blocking(move || {
                    c.update_replicate(&n2, |r| {
                        r.log("info", &format!("load ordered: {}", order.why));
                        r.load = Some(order);
                    })
                })
                .await
                {
                    f.set_phase(format!("stopped (cannot order a load: {e})"));
                    return;
                }
            }
        }
    }
}

/// A master that holds nothing and never logged anything: loading a new
/// replicate from it is trivial, whatever the policy.
fn master_is_empty(ctx: &Ctx) -> bool {
    let count = |f: Fnr| ctx.db.file_info(f).map(|i| (i.meta.count, i.meta.next_isn));
    matches!(
        (count(Fnr(ctx.master.file)), count(ctx.log)),
        (Ok((0, _)), Ok((_, 1)))
    )
}

pub(super) fn new_load_id() -> String {
    format!(
        "load-{}-{:08x}",
        chrono::Utc::now().format("%Y%m%dT%H%M%S"),
        fastrand_u32()
    )
}

fn fastrand_u32() -> u32 {
    // No RNG dependency in the library: the clock's nanoseconds and a
    // counter are unique enough for an id that only has to differ between
    // loads of one replicate.
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let t = chrono::Utc::now().timestamp_subsec_nanos();
    t ^ n.rotate_left(16)
}

/// Records the replicate's current expected meta as its anchor.
async fn save_anchor(ctx: &Arc<Ctx>, f: &Arc<Feeder>) {
    let Some((seq, meta)) = *lock(&f.expected) else {
        return;
    };
    let anchor = Anchor {
        seq,
        count: meta.count,
        digest: meta.digest,
        def: f.def_hash,
    };
    if ctx.control.replicate(f.name()).anchor == Some(anchor) {
        return;
    }
    let c = ctx.control.clone();
    let name = f.name().to_string();
    if let Err(e) = blocking(move || c.update_replicate(&name, |r| r.anchor = Some(anchor))).await {
        tracing::warn!(replicate = %f.name(), error = %e, "cannot record the digest anchor");
    }
}

/// Opens the link to the replicate: its confirmation, digest and load progress.
pub(super) async fn open_link(ctx: &Ctx, rep: &Replicate) -> Result<(Conn, LinkState), Stop> {
    let mut conn = match tokio::time::timeout(ACK_TIMEOUT, Conn::connect(rep.address)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(link_err(e)),
        Err(_) => {
            return Err(Stop::Link(format!(
                "connecting to {} took more than {} s",
                rep.address,
                ACK_TIMEOUT.as_secs()
            )))
        }
    };
    let open = Request::LinkOpen {
        replicate: rep.def.name.clone(),
        file: Fnr(rep.def.file),
        confirmation: Fnr(rep.def.confirmation),
        master_db: ctx.db.dbid(),
        master: Fnr(ctx.master.file),
    };
    match timed("opening the link", conn.call(&open)).await? {
        Response::Link(s) => Ok((conn, s)),
        other => Err(Stop::Link(conn.unexpected(&other, "Link").to_string())),
    }
}

/// One connection's worth of feeding; returns why it ended.
async fn feed(ctx: &Arc<Ctx>, f: &Arc<Feeder>, attempt: &mut u32) -> Stop {
    let rep = &f.rep;
    let name = f.name().to_string();
    let mut stop_rx = f.stop.subscribe();
    let (mut conn, state) = match open_link(ctx, rep).await {
        Ok(x) => x,
        Err(s) => return s,
    };
    {
        let mut s = lock(&f.st);
        s.connects += 1;
        s.has_confirmation = state.confirmation.is_some();
        if let Some(c) = &state.confirmation {
            s.confirmed = c.seq;
            s.sent = c.seq;
        }
    }
    let ctl = ctx.control.replicate(&name);
    // A load in progress (the replicate says where), one ordered, or one
    // that ended just before a crash (its confirmation names it).
    let order = ctl.load.clone();
    let finished_order = match (&order, &state.confirmation) {
        (Some(o), Some(c)) if c.loaded_by.as_deref() == Some(o.id.as_str()) => Some(o.clone()),
        _ => None,
    };
    let (conf_seq, mut expected) = if let Some(p) = state.load.clone() {
        let order = order.filter(|o| o.id == p.id);
        match super::load::run_load(ctx, f, &mut conn, super::load::Start::Resume(p, order)).await {
            Ok(x) => x,
            Err(stop) => return stop,
        }
    } else if let (Some(o), None) = (order, finished_order.as_ref()) {
        match super::load::run_load(ctx, f, &mut conn, super::load::Start::Begin(o)).await {
            Ok(x) => x,
            Err(stop) => return stop,
        }
    } else {
        if let Some(o) = finished_order {
            // The load ended, the order was not cleared: the confirmation is
            // the load's result.
            if let Some(c) = &state.confirmation {
                let mut m = FileMeta::new(Fnr(rep.def.file));
                m.count = c.count;
                m.digest = c.digest;
                if let Err(e) = super::load::finish_order(ctx, f, &o.id, c.seq, m, None).await {
                    return Stop::Link(e);
                }
            }
        }
        let conf_seq = state.confirmation.as_ref().map_or(Seq(0), |c| c.seq);
        if state.confirmation.is_none() {
            // A new replicate starts from a load (a consistent read of the
            // master), never from a replay of the log: the log may not
            // reach back to the master's first record, and a load is
            // proportional to what the master holds, not to its history.
            return Stop::NeedsLoad(format!(
                "a new replicate needs an initial load from master {}",
                ctx.master.name
            ));
        } else if ctl.anchor.is_some_and(|a| a.def != f.def_hash) {
            return Stop::NeedsLoad(
                "its definition (fields or predicate) changed since it was loaded".into(),
            );
        }
        let expected = match expected_at(ctx, f, conf_seq).await {
            Ok(m) => m,
            Err(e) => return Stop::Fatal(e),
        };
        if state.digest != expected.digest || state.count != expected.count {
            let damage = state
                .damaged
                .map(|d| format!(" (its node reports: {d})"))
                .unwrap_or_default();
            return Stop::Fatal(format!(
                "replicate {name} at seq {conf_seq}: digest {} over {} records, but the master expects digest {} over {} records{damage}",
                state.digest, state.count, expected.digest, expected.count
            ));
        }
        (conf_seq, expected)
    };
    {
        let mut s = lock(&f.st);
        s.phase = "streaming".into();
        s.streaming = true;
        s.load = None;
        s.has_confirmation = true;
        s.sent = conf_seq;
        s.confirmed = conf_seq;
        s.progress_us = now_us();
    }
    f.confirmed.send_replace(conf_seq);
    *lock(&f.expected) = Some((conf_seq, expected));
    if ctl.error.is_some() {
        let c = ctx.control.clone();
        let n2 = name.clone();
        let _ = blocking(move || {
            c.update_replicate(&n2, |r| {
                r.error = None;
                r.log(
                    "info",
                    "error cleared: the replicate checked out on reconnect",
                );
            })
        })
        .await;
    }
    let anchored = ctx.control.replicate(&name).anchor;
    if anchored.is_none_or(|a| a.def != f.def_hash) {
        save_anchor(ctx, f).await;
    }
    let mut last_anchor = Instant::now();
    let mut cursor = conf_seq;
    let mut inflight: VecDeque<(Seq, FileMeta)> = VecDeque::new();
    let mut durable = ctx.db.subscribe_durable();
    let mut stopping: Option<String> = stop_rx.borrow_and_update().clone();
    loop {
        if let Some(why) = &stopping {
            if inflight.is_empty() {
                return Stop::Stopped(why.clone());
            }
        }
        let can_send = inflight.len() < ctx.window && stopping.is_none();
        tokio::select! {
            changed = stop_rx.changed(), if stopping.is_none() => {
                stopping = match changed {
                    Ok(()) => stop_rx.borrow().clone(),
                    Err(_) => Some("task dropped".into()),
                };
            }
            // Acknowledgements; and while nothing is in flight, the
            // connection is watched too: anything the replicate sends then,
            // or the connection closing (its node stopped, restarted or
            // restored), ends this link at once, so an idle master never
            // keeps reporting a stale confirmation as current.
            resp = async {
                if inflight.is_empty() {
                    Ok(conn.recv().await)
                } else {
                    tokio::time::timeout(ACK_TIMEOUT, conn.recv()).await
                }
            } => {
                if inflight.is_empty() {
                    return Stop::Link(match resp {
                        Ok(Err(e)) => format!("the link went down while idle: {e}"),
                        Ok(Ok(other)) => format!("unexpected message while idle: {other:?}"),
                        Err(_) => "the link timed out while idle".into(),
                    });
                }
                let resp = match resp {
                    Err(_) => return Stop::Link(format!(
                        "no acknowledgement from {} for {} s", rep.address, ACK_TIMEOUT.as_secs()
                    )),
                    Ok(Err(e)) => return link_err(e),
                    Ok(Ok(r)) => r,
                };
                let Some((want_seq, want)) = inflight.pop_front() else {
                    return Stop::Link("acknowledgement with nothing in flight".into());
                };
                match resp {
                    Response::Applied { applied_seq, durable_seq: seq, digest, count, .. } => {
                        // Confirmed means durable on the replicate.
                        if applied_seq != want_seq || seq != want_seq {
                            return Stop::Link(format!(
                                "acknowledged applied seq {applied_seq}, durable seq {seq}; expected {want_seq}"
                            ));
                        }
                        if digest != want.digest || count != want.count {
                            return Stop::Fatal(format!(
                                "replicate {name} at seq {seq}: digest {digest} over {count} records, but the master expects digest {} over {} records",
                                want.digest, want.count
                            ));
                        }
                        {
                            let mut s = lock(&f.st);
                            s.confirmed = seq;
                            s.progress_us = now_us();
                        }
                        f.confirmed.send_replace(seq);
                        // The link works: the next loss backs off from the start.
                        *attempt = 0;
                        *lock(&f.expected) = Some((seq, want));
                        if last_anchor.elapsed() >= ANCHOR_EVERY {
                            last_anchor = Instant::now();
                            save_anchor(ctx, f).await;
                        }
                    }
                    Response::Error { code: ErrorCode::OutOfSequence, message } => {
                        // Another link applied first (a replaced connection
                        // draining): reconnect and resume from the confirmation.
                        return Stop::Link(message);
                    }
                    Response::Error { code: ErrorCode::Diverged, message } => {
                        let gaps = ctx.control.replicate(&name).gaps;
                        let hint = if gaps.is_empty() {
                            String::new()
                        } else {
                            format!(" (it has {} gap record(s) from confirm set: a reinit clears them)", gaps.len())
                        };
                        return Stop::Fatal(format!("replicate {name} at seq {want_seq}: {message}{hint}"));
                    }
                    Response::Error { message, .. } => return Stop::Link(message),
                    other => return Stop::Link(conn.unexpected(&other, "Applied").to_string()),
                }
            }
            batch = next_batch(ctx, cursor, &mut durable), if can_send => {
                let batch = match batch {
                    Ok(b) => b,
                    Err(e) => return e,
                };
                let Some(last) = batch.last() else { continue };
                let (last_seq, incarnation, time_us) = (last.seq, last.incarnation, last.time_us);
                let mut changes = Vec::new();
                let mut txn_ends = Vec::new();
                let mut touched = false;
                for rec in &batch {
                    match transform(rep, rec) {
                        Ok(Some(c)) => {
                            touched = true;
                            expected.change(
                                c.isn,
                                c.before.as_deref().map(|b| b.as_slice()),
                                c.after.as_deref().map(|b| b.as_slice()),
                            );
                            changes.push(c);
                        }
                        Ok(None) => {}
                        Err(e) => return Stop::Fatal(format!(
                            "master {} seq {}: {e}", ctx.master.name, rec.seq
                        )),
                    }
                    if rec.part == rec.parts {
                        if touched {
                            txn_ends.push((rec.seq, rec.time_us));
                        }
                        touched = false;
                    }
                }
                let exact = !rep.is_partial() && ctx.control.replicate(&name).gaps.is_empty();
                if exact {
                    let (mc, md) = (last.master_count, last.master_digest);
                    if (mc, md) != (expected.count, expected.digest) {
                        return Stop::Fatal(format!(
                            "replicate {name} at seq {last_seq}: the changes shipped give digest {} over {} records, but the master's log says {md} over {mc}; the replicate needs a reinit",
                            expected.digest, expected.count
                        ));
                    }
                }
                let req = Request::LinkApply {
                    follows: cursor,
                    changes,
                    confirmation: Confirmation {
                        replicate: name.clone(),
                        master_db: ctx.db.dbid(),
                        master: Fnr(ctx.master.file),
                        seq: last_seq,
                        incarnation,
                        master_time_us: time_us,
                        digest: expected.digest,
                        count: expected.count,
                        applied_us: 0,
                        loaded_by: None,
                    },
                    txn_ends,
                };
                if let Err(stop) = timed("sending a batch", conn.send(&req)).await {
                    return stop;
                }
                inflight.push_back((last_seq, expected));
                cursor = last_seq;
                lock(&f.st).sent = cursor;
            }
        }
    }
}

/// The next durable log records after `cursor`: whole transactions, up to
/// the batch size; waits (without polling) until there is at least one.
async fn next_batch(
    ctx: &Arc<Ctx>,
    cursor: Seq,
    durable: &mut tokio::sync::watch::Receiver<crate::ids::Lsn>,
) -> Result<Vec<LogRecord>, Stop> {
    loop {
        durable.borrow_and_update();
        let c = ctx.clone();
        let read = tokio::task::spawn_blocking(move || {
            let mut out: Vec<LogRecord> = Vec::new();
            let mut bytes = 0usize;
            let mut seq = cursor.0 + 1;
            while let Some(rec) = c.db.read_log_record(c.log, Seq(seq))? {
                bytes += rec.before.as_ref().map_or(0, Vec::len)
                    + rec.after.as_ref().map_or(0, Vec::len);
                let boundary = rec.part == rec.parts;
                out.push(rec);
                seq += 1;
                if boundary && (out.len() >= c.batch || bytes >= MAX_BATCH_BYTES) {
                    break;
                }
            }
            // Never ship part of a transaction.
            while out.last().is_some_and(|r| r.part != r.parts) {
                out.pop();
            }
            Ok::<_, crate::DbError>(out)
        })
        .await;
        match read {
            Ok(Ok(b)) if !b.is_empty() => return Ok(b),
            Ok(Ok(_)) => {}
            // A log record that does not decode: the log file is damaged,
            // not the replicate. Mark the log and stop feeding (its
            // recovery flow, case 3, rebuilds or refreshes it).
            Ok(Err(e @ crate::DbError::BadRecord { .. }))
            | Ok(Err(e @ crate::DbError::FileDamaged { .. })) => {
                let why = format!("the master's log file {} is damaged: {e}", ctx.log);
                ctx.db.mark_damaged(ctx.log, why.clone());
                return Err(Stop::Stopped(why));
            }
            Ok(Err(e)) => return Err(Stop::Fatal(format!("reading the log file: {e}"))),
            Err(e) => return Err(Stop::Link(format!("internal error: {e}"))),
        }
        if durable.changed().await.is_err() {
            return Err(Stop::Link("the master database closed".into()));
        }
    }
}

/// The replicate's change for one log record (None: nothing changes there).
pub fn transform(rep: &Replicate, rec: &LogRecord) -> Result<Option<ReplChange>, String> {
    if !rep.is_partial() {
        return Ok(Some(ReplChange {
            isn: rec.isn,
            before: rec.before.clone().map(ByteBuf::from),
            after: rec.after.clone().map(ByteBuf::from),
        }));
    }
    let before = view(rep, rec.before.as_deref())?;
    let after = view(rep, rec.after.as_deref())?;
    if before == after {
        return Ok(None);
    }
    Ok(Some(ReplChange {
        isn: rec.isn,
        before: before.map(ByteBuf::from),
        after: after.map(ByteBuf::from),
    }))
}

/// What a replicate holds of one master image (None: not selected).
pub fn view(rep: &Replicate, image: Option<&[u8]>) -> Result<Option<Vec<u8>>, String> {
    let Some(bytes) = image else { return Ok(None) };
    if !rep.is_partial() {
        return Ok(Some(bytes.to_vec()));
    }
    let r = decode_record(bytes).map_err(|e| e.to_string())?;
    let pred: Option<&Predicate> = rep.predicate.as_ref();
    if pred.is_some_and(|p| !p.selects(&r)) {
        return Ok(None);
    }
    let r = match rep.def.fields.as_deref() {
        Some(f) => project(&r, f),
        None => r,
    };
    encode_record(&r).map(Some).map_err(|e| e.to_string())
}

/// What the replicate should hold (count and digest) after the master's seq `at`.
pub(super) async fn expected_at(
    ctx: &Arc<Ctx>,
    f: &Arc<Feeder>,
    at: Seq,
) -> Result<FileMeta, String> {
    let fnr = Fnr(f.rep.def.file);
    let ctl = ctx.control.replicate(f.name());
    let anchor = ctl.anchor.filter(|a| a.def == f.def_hash);
    if at.0 == 0 && anchor.is_none() {
        return Ok(FileMeta::new(fnr));
    }
    if !f.rep.is_partial() && ctl.gaps.is_empty() && at.0 > 0 {
        let c = ctx.clone();
        let rec =
            blocking(move || c.db.read_log_record(c.log, at).map_err(|e| e.to_string())).await?;
        if let Some(rec) = rec {
            let mut m = FileMeta::new(fnr);
            m.count = rec.master_count;
            m.digest = rec.master_digest;
            return Ok(m);
        }
        let last = ctx
            .db
            .file_info(ctx.log)
            .map(|i| i.meta.next_isn.saturating_sub(1))
            .unwrap_or(0);
        if at.0 > last {
            return Err(format!(
                "the replicate confirms seq {at}, which the master's log does not hold (it ends at {last}): the replicate is ahead of its master"
            ));
        }
    }
    // Roll forward from the last known point: the feeder's own, the anchor,
    // or (a master that started empty) the beginning.
    let cached = *lock(&f.expected);
    let (from, mut meta) = match (cached, anchor) {
        (Some((s, m)), a) if s <= at && a.is_none_or(|a| a.seq <= s) => (s, m),
        (_, Some(a)) if a.seq <= at => (a.seq, a.meta(fnr)),
        (_, Some(a)) => {
            return Err(format!(
                "the replicate confirms seq {at}, before its anchor at seq {} (it was restored to an earlier level?): the master cannot say what it should hold",
                a.seq
            ))
        }
        _ => (Seq(0), FileMeta::new(fnr)),
    };
    let c = ctx.clone();
    let rep = f.rep.clone();
    blocking(move || {
        for s in from.0 + 1..=at.0 {
            let rec = c
                .db
                .read_log_record(c.log, Seq(s))
                .map_err(|e| e.to_string())?
                .ok_or_else(|| {
                    format!("the replicate confirms seq {at}, but the master's log has no seq {s}: the replicate is ahead of its master, or the log was cleaned past it")
                })?;
            if let Some(ch) = transform(&rep, &rec)? {
                meta.change(
                    ch.isn,
                    ch.before.as_deref().map(|b| b.as_slice()),
                    ch.after.as_deref().map(|b| b.as_slice()),
                );
            }
        }
        Ok(meta)
    })
    .await
}
