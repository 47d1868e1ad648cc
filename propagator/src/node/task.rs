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
//! A lost link with a restart interval is retried with backoff capped at the
//! interval; without one the feeder stops until `etp task start|restart`.
//! A digest mismatch or a diverged replicate puts it in `error` and stops it.

use super::client::{ClientError, Conn};
use crate::database::Database;
use crate::digest::FileMeta;
use crate::ids::{DbId, Fnr, Seq};
use crate::log_record::LogRecord;
use crate::predicate::{project, Predicate};
use crate::record::{decode_record, encode_record};
use crate::topology::{MasterDef, Replicate, TaskDef};
use crate::wire::{Confirmation, ReplChange, ReplicateReport, Request, Response, TaskReport};
use serde_bytes::ByteBuf;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;

/// Default batches in flight per replicate.
const DEFAULT_WINDOW: usize = 8;
/// Default log records per batch (extended to the end of a transaction).
const DEFAULT_BATCH: usize = 2000;
/// Bytes of images per batch, at most (whole transactions).
const MAX_BATCH_BYTES: usize = 8 << 20;
/// A link with batches in flight and no acknowledgement for this long is dead.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Ctx {
    db: Database,
    master: MasterDef,
    def: TaskDef,
    log: Fnr,
    window: usize,
    batch: usize,
}

#[derive(Default)]
struct FeedState {
    state: String,
    sent: Seq,
    confirmed: Seq,
    last_error: Option<String>,
    connects: u64,
}

struct Feeder {
    rep: Replicate,
    st: Mutex<FeedState>,
    /// The confirmed seq, for waiters ([`Task::wait_confirmed`]).
    confirmed: tokio::sync::watch::Sender<Seq>,
    handle: Mutex<Option<JoinHandle<()>>>,
    /// The replicate's expected meta at a seq it confirmed (a shortcut for
    /// the next connect; the resume point always comes from the replicate).
    expected: Mutex<Option<(Seq, FileMeta)>>,
}

impl Feeder {
    fn set_state(&self, s: &str) {
        lock(&self.st).state = s.to_string();
    }
}

pub struct Task {
    ctx: Arc<Ctx>,
    feeders: Vec<Arc<Feeder>>,
}

enum Stop {
    /// The link failed: retry (with a restart interval) or stop.
    Link(String),
    /// The replicate is wrong: error state, not fed any more.
    Fatal(String),
}

fn link_err(e: ClientError) -> Stop {
    match e {
        // The same batch would be too large again on every retry.
        ClientError::TooLarge { .. } => Stop::Fatal(e.to_string()),
        e => Stop::Link(e.to_string()),
    }
}

/// Runs a link step with a deadline: a peer that accepts and then stalls
/// must not hang the feeder.
async fn timed<T>(
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

impl Task {
    /// Starts the feeders; call inside a tokio runtime.
    pub fn start(db: Database, master: MasterDef, def: TaskDef, reps: Vec<Replicate>) -> Task {
        let ctx = Arc::new(Ctx {
            db,
            log: Fnr(master.log),
            window: def.window.map_or(DEFAULT_WINDOW, |w| w as usize),
            batch: def.batch.map_or(DEFAULT_BATCH, |b| b as usize),
            master,
            def,
        });
        let feeders = reps
            .into_iter()
            .map(|rep| {
                Arc::new(Feeder {
                    rep,
                    st: Mutex::new(FeedState {
                        state: "starting".into(),
                        ..FeedState::default()
                    }),
                    confirmed: tokio::sync::watch::channel(Seq(0)).0,
                    handle: Mutex::new(None),
                    expected: Mutex::new(None),
                })
            })
            .collect();
        let t = Task { ctx, feeders };
        t.start_feeders();
        t
    }

    /// Starts every feeder that is not running.
    pub fn start_feeders(&self) {
        for f in &self.feeders {
            let mut h = lock(&f.handle);
            if h.as_ref().is_some_and(|h| !h.is_finished()) {
                continue;
            }
            f.set_state("starting");
            let (ctx, f2) = (self.ctx.clone(), f.clone());
            *h = Some(tokio::spawn(async move { run(ctx, f2).await }));
        }
    }

    /// Stops every feeder (between batches as far as the replicate sees it:
    /// each batch is one transaction there, applied whole or not at all).
    pub fn stop_feeders(&self, why: &str) {
        for f in &self.feeders {
            if let Some(h) = lock(&f.handle).take() {
                h.abort();
            }
            f.set_state(&format!("stopped ({why})"));
        }
    }

    pub fn stop(&self) {
        self.stop_feeders("task stopped");
    }

    /// A receiver of the named replicate's confirmed seq, if this task feeds it.
    pub fn watch_confirmed(&self, replicate: &str) -> Option<tokio::sync::watch::Receiver<Seq>> {
        self.feeders
            .iter()
            .find(|f| f.rep.def.name == replicate)
            .map(|f| f.confirmed.subscribe())
    }

    pub fn report(&self) -> TaskReport {
        let master_seq = self
            .ctx
            .db
            .file_info(self.ctx.log)
            .map(|i| Seq(i.meta.next_isn.saturating_sub(1)))
            .unwrap_or_default();
        let replicates: Vec<ReplicateReport> = self
            .feeders
            .iter()
            .map(|f| {
                let s = lock(&f.st);
                ReplicateReport {
                    name: f.rep.def.name.clone(),
                    database: DbId(f.rep.def.database),
                    address: f.rep.address.to_string(),
                    state: s.state.clone(),
                    sent_seq: s.sent,
                    confirmed_seq: s.confirmed,
                    lag_records: master_seq.0.saturating_sub(s.confirmed.0),
                    last_error: s.last_error.clone(),
                    connects: s.connects,
                }
            })
            .collect();
        let running = replicates.iter().any(|r| {
            r.state == "online" || r.state == "connecting" || r.state.starts_with("retrying")
        });
        TaskReport {
            master: Fnr(self.ctx.master.file),
            master_name: self.ctx.master.name.clone(),
            state: if running { "running" } else { "stopped" }.into(),
            restart_interval_s: self.ctx.def.restart_interval_s,
            master_seq,
            replicates,
        }
    }
}

async fn run(ctx: Arc<Ctx>, f: Arc<Feeder>) {
    let mut attempt: u32 = 0;
    loop {
        f.set_state("connecting");
        let stop = feed(&ctx, &f, &mut attempt).await;
        let name = &f.rep.def.name;
        match stop {
            Stop::Fatal(msg) => {
                tracing::error!(replicate = %name, error = %msg, "replicate in error; no longer fed");
                let mut s = lock(&f.st);
                s.state = format!("error: {msg}");
                s.last_error = Some(msg);
                return;
            }
            Stop::Link(msg) => {
                tracing::warn!(replicate = %name, error = %msg, "replication link lost");
                lock(&f.st).last_error = Some(msg.clone());
                let Some(cap) = ctx.def.restart_interval_s else {
                    f.set_state(&format!("stopped (link lost: {msg}; no restart interval)"));
                    return;
                };
                let delay =
                    Duration::from_millis(100u64 << attempt.min(10)).min(Duration::from_secs(cap));
                attempt += 1;
                f.set_state(&format!("retrying in {} ms", delay.as_millis()));
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// One connection's worth of feeding; returns why it ended.
async fn feed(ctx: &Arc<Ctx>, f: &Arc<Feeder>, attempt: &mut u32) -> Stop {
    let rep = &f.rep;
    let mut conn = match Conn::connect(rep.address).await {
        Ok(c) => c,
        Err(e) => return link_err(e),
    };
    let open = Request::LinkOpen {
        replicate: rep.def.name.clone(),
        file: Fnr(rep.def.file),
        confirmation: Fnr(rep.def.confirmation),
        master_db: ctx.db.dbid(),
        master: Fnr(ctx.master.file),
    };
    let state = match timed("opening the link", conn.call(&open)).await {
        Ok(Response::Link(s)) => s,
        Ok(other) => return Stop::Link(conn.unexpected(&other, "Link").to_string()),
        Err(stop) => return stop,
    };
    lock(&f.st).connects += 1;
    let conf_seq = state.confirmation.as_ref().map_or(Seq(0), |c| c.seq);
    if conf_seq.0 == 0 {
        if let Err(e) = master_starts_empty(ctx).await {
            return Stop::Fatal(format!("replicate {}: {e}", rep.def.name));
        }
    }
    let mut expected = match expected_at(ctx, f, conf_seq).await {
        Ok(m) => m,
        Err(e) => return Stop::Fatal(e),
    };
    if state.digest != expected.digest || state.count != expected.count {
        let damage = state
            .damaged
            .map(|d| format!(" (its node reports: {d})"))
            .unwrap_or_default();
        return Stop::Fatal(format!(
            "replicate {} at seq {conf_seq}: digest {} over {} records, but the master expects digest {} over {} records{damage}",
            rep.def.name, state.digest, state.count, expected.digest, expected.count
        ));
    }
    {
        let mut s = lock(&f.st);
        s.state = "online".into();
        s.sent = conf_seq;
        s.confirmed = conf_seq;
    }
    f.confirmed.send_replace(conf_seq);
    *lock(&f.expected) = Some((conf_seq, expected));
    let mut cursor = conf_seq;
    let mut inflight: VecDeque<(Seq, FileMeta)> = VecDeque::new();
    let mut durable = ctx.db.subscribe_durable();
    loop {
        let can_send = inflight.len() < ctx.window;
        tokio::select! {
            resp = tokio::time::timeout(ACK_TIMEOUT, conn.recv()), if !inflight.is_empty() => {
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
                                "replicate {} at seq {seq}: digest {digest} over {count} records, but the master expects digest {} over {} records",
                                rep.def.name, want.digest, want.count
                            ));
                        }
                        lock(&f.st).confirmed = seq;
                        f.confirmed.send_replace(seq);
                        // The link works: the next loss backs off from the start.
                        *attempt = 0;
                        *lock(&f.expected) = Some((seq, want));
                    }
                    Response::Error { message } if message.contains("out of sequence") => {
                        // Another link applied first (a replaced connection
                        // draining): reconnect and resume from the confirmation.
                        return Stop::Link(message);
                    }
                    Response::Error { message } if message.contains("diverged") => {
                        return Stop::Fatal(format!("replicate {} at seq {want_seq}: {message}", rep.def.name));
                    }
                    Response::Error { message } => return Stop::Link(message),
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
                if !rep.is_partial() {
                    let (mc, md) = (last.master_count, last.master_digest);
                    if (mc, md) != (expected.count, expected.digest) {
                        return Stop::Fatal(format!(
                            "replicate {} at seq {last_seq}: the changes shipped give digest {} over {} records, but the master's log says {md} over {mc}; the replicate needs an initial load",
                            rep.def.name, expected.digest, expected.count
                        ));
                    }
                }
                let req = Request::LinkApply {
                    follows: cursor,
                    changes,
                    confirmation: Confirmation {
                        replicate: rep.def.name.clone(),
                        master_db: ctx.db.dbid(),
                        master: Fnr(ctx.master.file),
                        seq: last_seq,
                        incarnation,
                        master_time_us: time_us,
                        digest: expected.digest,
                        count: expected.count,
                        applied_us: 0,
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
    let before = view(
        rep.predicate.as_ref(),
        rep.def.fields.as_deref(),
        &rec.before,
    )?;
    let after = view(
        rep.predicate.as_ref(),
        rep.def.fields.as_deref(),
        &rec.after,
    )?;
    if before == after {
        return Ok(None);
    }
    Ok(Some(ReplChange {
        isn: rec.isn,
        before: before.map(ByteBuf::from),
        after: after.map(ByteBuf::from),
    }))
}

/// What a partial replicate holds of one master image.
fn view(
    pred: Option<&Predicate>,
    fields: Option<&[String]>,
    image: &Option<Vec<u8>>,
) -> Result<Option<Vec<u8>>, String> {
    let Some(bytes) = image else { return Ok(None) };
    let r = decode_record(bytes).map_err(|e| e.to_string())?;
    if pred.is_some_and(|p| !p.selects(&r)) {
        return Ok(None);
    }
    let r = match fields {
        Some(f) => project(&r, f),
        None => r,
    };
    encode_record(&r).map(Some).map_err(|e| e.to_string())
}

/// Refuses to feed an empty replicate from a master that held records
/// before its first log record: those would never reach it (a partial
/// replicate's digest check could not see it). It needs an initial load.
async fn master_starts_empty(ctx: &Arc<Ctx>) -> Result<(), String> {
    let mut durable = ctx.db.subscribe_durable();
    loop {
        durable.borrow_and_update();
        let c = ctx.clone();
        let before = tokio::task::block_in_place(move || -> Result<Option<u64>, crate::DbError> {
            if let Some(r) = c.db.read_log_record(c.log, Seq(1))? {
                return Ok(Some(match r.op {
                    crate::log_record::LogOp::Store => r.master_count.saturating_sub(1),
                    crate::log_record::LogOp::Update => r.master_count,
                    crate::log_record::LogOp::Delete => r.master_count + 1,
                }));
            }
            // No durable log record yet. Every master change writes one, in
            // the same commit, and `files` reads all metas under one lock: if
            // the log has never been written, the master's count is what it
            // held before it became a master.
            let files = c.db.files();
            let meta = |f: Fnr| files.iter().find(|i| i.def.fnr == f).map(|i| i.meta);
            match (meta(c.log), meta(Fnr(c.master.file))) {
                (Some(l), Some(m)) if l.next_isn <= 1 => Ok(Some(m.count)),
                // The first log record is committed but not yet durable.
                _ => Ok(None),
            }
        })
        .map_err(|e| e.to_string())?;
        match before {
            Some(0) => return Ok(()),
            Some(n) => {
                return Err(format!(
                    "master {} held {n} records before its first log record; the replicate needs an initial load",
                    ctx.master.name
                ))
            }
            None => {
                if durable.changed().await.is_err() {
                    return Err("the master database closed".into());
                }
            }
        }
    }
}

/// What the replicate should hold (count and digest) after the master's seq `at`.
async fn expected_at(ctx: &Arc<Ctx>, f: &Arc<Feeder>, at: Seq) -> Result<FileMeta, String> {
    let fnr = Fnr(f.rep.def.file);
    if at.0 == 0 {
        return Ok(FileMeta::new(fnr));
    }
    if !f.rep.is_partial() {
        let c = ctx.clone();
        let rec = tokio::task::spawn_blocking(move || c.db.read_log_record(c.log, at))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let Some(rec) = rec else {
            return Err(format!(
                "the replicate confirms seq {at}, which the master's log does not hold: the replicate is ahead of its master"
            ));
        };
        let mut m = FileMeta::new(fnr);
        m.count = rec.master_count;
        m.digest = rec.master_digest;
        return Ok(m);
    }
    // Partial: roll forward from the last known point, or from the start.
    let (from, mut meta) = match *lock(&f.expected) {
        Some((s, m)) if s <= at => (s, m),
        _ => (Seq(0), FileMeta::new(fnr)),
    };
    let c = ctx.clone();
    let rep = f.rep.clone();
    tokio::task::spawn_blocking(move || {
        for s in from.0 + 1..=at.0 {
            let rec = c
                .db
                .read_log_record(c.log, Seq(s))
                .map_err(|e| e.to_string())?
                .ok_or_else(|| {
                    format!("the replicate confirms seq {at}, but the master's log has no seq {s}: the replicate is ahead of its master")
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
    .map_err(|e| e.to_string())?
}
