//! The feeder core: what every part of a replication task shares. A
//! feeder's context and state, why a feeding run ended ([`Stop`]), the link
//! open, the expected content of a replicate at a seq, and the helpers that
//! keep blocking work and slow peers off the reactor. The streaming loop
//! (`stream`), the load (`load`), the batch reader (`batch`), reporting
//! (`report`) and selection and projection (`view`) build on it; it
//! imports none of them but `view`.

use super::client::{ClientError, Conn};
use super::control::Control;
use super::errors::{off_reactor, Internal, OpError};
use super::view::transform;
use crate::database::Database;
use crate::digest::FileMeta;
use crate::ids::{DbId, Fnr, Isn, Seq};
use crate::topology::{MasterDef, Replicate, TaskDef};
use crate::wire::LinkRequest;
use crate::wire::{ErrorCode, LinkState, Request, Response};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// Default batches in flight per replicate: as many answers as a node
/// owes on one connection (`PIPELINE_DEPTH`). At the tail each batch is a
/// transaction or two, and a window of 8 filled while the replicate synced
/// (lag waited for acknowledgements).
pub(super) const DEFAULT_WINDOW: usize = 16;
/// Bytes of images in flight per replicate, at most, once more than one
/// batch is (a drain's batches are large).
pub(super) const MAX_INFLIGHT_BYTES: usize = 8 << 20;
/// Default log records per batch (extended to the end of a transaction).
pub(super) const DEFAULT_BATCH: usize = 2000;
/// Bytes of images per batch, at most (whole transactions).
pub(super) const MAX_BATCH_BYTES: usize = 4 << 20;
/// A link with batches in flight and no acknowledgement for this long is dead.
pub(super) const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// Backoff cap for retrying a replicate in error (automatic policy).
pub(super) const ERROR_RETRY_CAP: Duration = Duration::from_secs(60);
/// Behind and not confirming anything for this long: stalled.
pub const STALL_AFTER_S: f64 = 3.0;
/// How often a streaming feeder records its digest anchor.
pub(super) const ANCHOR_EVERY: Duration = Duration::from_secs(30);
/// ... or once this many seqs were confirmed since the last one. A feeder
/// that was not stopped at a safe point (its node shut down) rolls a
/// partial replicate's expected state forward from its anchor on the next
/// connect, reading and transforming every log record since (measured:
/// half the master's CPU during an initial sync, when a burst of a million
/// records came within the 30 s).
pub(super) const ANCHOR_RECORDS: u64 = 100_000;
/// Log records scanned, at most, to measure a replicate's lag in bytes.
pub(super) const LAG_BYTES_SCAN: u64 = 200_000;

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(super) struct Ctx {
    pub db: Database,
    /// The topology text this node serves.
    pub topology: Arc<str>,
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

#[derive(Default, Clone)]
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
    /// The replicate's database answered that it holds no topology (a
    /// wiped site), at the last attempt.
    pub uninitialized: Option<String>,
    pub connects: u64,
    /// Batches sent while streaming, and how many of them the thread that
    /// made the log's tail durable sent itself (see `tail`).
    pub batches: u64,
    pub batches_by_committer: u64,
    /// Log records read on connects to work out the replicate's expected
    /// state (rolled forward from an anchor or an earlier state).
    pub rolled_forward: u64,
    /// Since when the link has been down, and how many reconnects failed
    /// (the first loss is logged as a warning, its end too).
    pub down: Option<(Instant, u32)>,
    /// The replicate serves no current reads (it said so at the last link
    /// open, or this feeder told it so), and the master's level it is
    /// released at (None: shunned or in error, not released).
    pub hold: Option<(crate::catalog::Hold, Option<Seq>)>,
    /// Releases delivered since the node started.
    pub releases: u64,
    /// A sync-down of the replicate's wiped site this feeder started.
    pub sync_down: Option<SyncDown>,
}

/// A wiped replicate site being synced down (seed 000): from the topology
/// sent to its settled backlog.
#[derive(Clone, Debug)]
pub(super) struct SyncDown {
    pub since: Instant,
    /// Since when its backlog has stayed at or under the task's threshold.
    pub settled_since: Option<Instant>,
    /// When completion was declared.
    pub done: Option<Instant>,
}

impl SyncDown {
    /// The sync-down's state, for people.
    pub fn describe(&self, settle: Duration) -> String {
        match (self.done, self.settled_since) {
            (Some(d), _) => format!(
                "complete after {:.1} s",
                d.duration_since(self.since).as_secs_f64()
            ),
            (None, Some(t)) => format!(
                "settling: backlog under the threshold for {:.1} s of {} s",
                t.elapsed().as_secs_f64(),
                settle.as_secs()
            ),
            (None, None) => format!(
                "in progress for {:.1} s (files re-created, loading or catching up)",
                self.since.elapsed().as_secs_f64()
            ),
        }
    }
}

/// A sync-down is declared complete once the replicate's backlog stays
/// at or under this many log records ...
pub(super) const SYNC_DOWN_BACKLOG: u64 = 1000;
/// ... for this long (both overridden by the task's definition).
pub(super) const SYNC_DOWN_SETTLE: Duration = Duration::from_secs(10);

impl Ctx {
    /// The task's sync-down completion rule: (backlog, settle time).
    pub fn sync_down_rule(&self) -> (u64, Duration) {
        (
            self.def.sync_down_backlog.unwrap_or(SYNC_DOWN_BACKLOG),
            self.def
                .sync_down_settle_s
                .map_or(SYNC_DOWN_SETTLE, Duration::from_secs),
        )
    }
}

/// Sends the topology to the replicate's wiped site, which takes it
/// (`AdminAdopt`) and re-creates its files: the next link open finds a
/// replicate that needs a load.
pub(super) async fn sync_down(ctx: &Ctx, f: &Feeder) -> Result<(), Stop> {
    let mut conn = connect(&f.rep).await?;
    let req = Request::Admin(crate::wire::AdminRequest::AdminAdopt {
        topology: ctx.topology.to_string(),
    });
    match timed("sending the topology to the wiped site", conn.call(&req)).await? {
        Response::Ok => Ok(()),
        other => Err(Stop::Link(conn.unexpected(&other, "Ok").to_string())),
    }
}

pub(super) struct Feeder {
    pub rep: Replicate,
    /// A fingerprint of the replicate's definition (anchors are only valid under it).
    pub def_hash: u128,
    pub st: Mutex<FeedState>,
    /// The confirmed seq, for waiters ([`Task::watch_confirmed`]).
    pub confirmed: tokio::sync::watch::Sender<Seq>,
    /// The seq the replicate has applied (visible there; at least `confirmed`).
    pub applied: tokio::sync::watch::Sender<Seq>,
    pub handle: Mutex<Option<JoinHandle<()>>>,
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

    /// Whether its feeding task is running.
    pub(super) fn running(&self) -> bool {
        lock(&self.handle)
            .as_ref()
            .is_some_and(|h| !h.is_finished())
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
    /// The replicate holds another history than its master's: error
    /// state, nothing fed, until a load replaces it.
    Diverged(crate::wire::Divergence),
    /// The replicate's database holds no topology (a wiped site): retried
    /// as a lost link is, reported as uninitialized.
    Uninitialized(String),
}

impl Stop {
    /// An operator request that met a link failure or a refusal: a link
    /// that failed is `Unavailable`, anything else a refusal.
    pub(super) fn into_op(self) -> OpError {
        match self {
            Stop::Link(m) => OpError::Link(m),
            other => OpError::Refused(other.reason()),
        }
    }

    /// Why the run ended, for people.
    pub(super) fn reason(self) -> String {
        match self {
            Stop::Link(m)
            | Stop::Fatal(m)
            | Stop::NeedsLoad(m)
            | Stop::Stopped(m)
            | Stop::Refused(m) => m,
            Stop::Diverged(d) => d.to_string(),
            Stop::Uninitialized(m) => m,
        }
    }
}

pub(super) fn link_err(e: ClientError) -> Stop {
    match e {
        ClientError::Remote {
            code: ErrorCode::Uninitialized,
            ref message,
            ..
        } => Stop::Uninitialized(message.clone()),
        // The same batch would be too large again on every retry; a held
        // load source would be refused again until its own master
        // releases it.
        ClientError::TooLarge { .. }
        | ClientError::Remote {
            code: ErrorCode::Held,
            ..
        } => Stop::Fatal(e.to_string()),
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
/// A feeder turns its errors into the reason its run ended (`Stop`), which
/// is text for people (a replicate's error state and log), never decided on.
pub(super) async fn blocking<T, E>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, OpError>
where
    T: Send + 'static,
    E: Into<OpError> + Send + 'static,
{
    off_reactor(move || f().map_err(Into::into)).await
}

pub(super) fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// Opens the link to the replicate: its confirmation, digest and load progress.
pub(super) async fn open_link(ctx: &Ctx, rep: &Replicate) -> Result<(Conn, LinkState), Stop> {
    let mut conn = connect(rep).await?;
    let open = Request::Link(LinkRequest::LinkOpen {
        replicate: rep.def.name.clone(),
        file: Fnr(rep.def.file),
        confirmation: Fnr(rep.def.confirmation),
        master_db: ctx.db.dbid(),
        master: Fnr(ctx.master.file),
    });
    match timed("opening the link", conn.call(&open)).await? {
        Response::Link(s) => Ok((conn, s)),
        other => Err(Stop::Link(conn.unexpected(&other, "Link").to_string())),
    }
}

/// Delivers a hold (`Some`) to the replicate, or its release (`None`) at
/// the master's level `level`, over a link of its own (a streaming link's
/// connection carries only batches). Nothing is sent if the replicate
/// already stands so.
/// A release names the hold it releases (`releasing`): one set since is
/// not cleared ([`Stop::Refused`], not retried).
pub(super) async fn deliver_hold(
    ctx: &Ctx,
    rep: &Replicate,
    hold: Option<crate::catalog::Hold>,
    level: Seq,
    releasing: Option<&crate::catalog::Hold>,
) -> Result<(), Stop> {
    let (mut conn, state) = open_link(ctx, rep).await?;
    match &hold {
        Some(h) if state.hold.as_ref().map(|s| s.kind) == Some(h.kind) => return Ok(()),
        None if state.hold.is_none() => return Ok(()),
        None if !crate::catalog::same_hold(state.hold.as_ref(), releasing) => {
            return Err(Stop::Refused(format!(
                "the replicate is held differently now ({}): not released",
                state.hold.as_ref().map_or(String::new(), |h| h.to_string())
            )))
        }
        _ => {}
    }
    let req = Request::Link(LinkRequest::Hold {
        hold,
        level,
        releasing: releasing.cloned(),
    });
    match tokio::time::timeout(ACK_TIMEOUT, conn.call(&req)).await {
        Ok(Ok(Response::Ok)) => Ok(()),
        Ok(Err(ClientError::Remote {
            code: ErrorCode::Refused,
            message,
            ..
        })) => Err(Stop::Refused(message)),
        Ok(Err(e)) => Err(link_err(e)),
        Ok(Ok(other)) => Err(Stop::Link(conn.unexpected(&other, "Ok").to_string())),
        Err(_) => Err(Stop::Link(format!(
            "holding or releasing the replicate took more than {} s",
            ACK_TIMEOUT.as_secs()
        ))),
    }
}

/// Connects to the replicate's node (proved to serve its database), with
/// a deadline.
async fn connect(rep: &Replicate) -> Result<Conn, Stop> {
    match tokio::time::timeout(
        ACK_TIMEOUT,
        Conn::connect_to(rep.address, DbId(rep.def.database)),
    )
    .await
    {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(link_err(e)),
        Err(_) => Err(Stop::Link(format!(
            "connecting to {} took more than {} s",
            rep.address,
            ACK_TIMEOUT.as_secs()
        ))),
    }
}

/// Why the master cannot say what a replicate should hold at a seq.
#[derive(Debug, thiserror::Error)]
pub enum ExpectError {
    #[error("the replicate confirms seq {at}, which the master's log does not hold (it ends at {last}): the replicate is ahead of its master")]
    AheadOfLog { at: Seq, last: u64 },
    #[error("the replicate confirms seq {at}, before its anchor at seq {anchor} (it was restored to an earlier level?): the master cannot say what it should hold")]
    BeforeAnchor { at: Seq, anchor: Seq },
    #[error("the replicate confirms seq {at}, but the master's log has no seq {missing}: the replicate is ahead of its master, or the log was cleaned past it")]
    MissingSeq { at: Seq, missing: Seq },
    #[error(transparent)]
    Db(#[from] crate::error::DbError),
    #[error("master record: {0}")]
    Record(#[from] crate::record::RecordError),
    #[error(transparent)]
    Internal(#[from] Internal),
}

/// The master's level (its log's last seq) and incarnation (None: the
/// file is no longer a master).
pub(super) fn master_position(ctx: &Ctx) -> Result<Option<(Seq, u32)>, crate::error::DbError> {
    let inc = match ctx.db.file_info(Fnr(ctx.master.file))?.def.role {
        crate::catalog::Role::Master { incarnation, .. } => incarnation,
        _ => return Ok(None),
    };
    let last = Seq(ctx.db.file_info(ctx.log)?.meta.next_isn.saturating_sub(1));
    Ok(Some((last, inc)))
}

/// Whether a replicate's confirmation shows another history than its
/// master's, told before anything is fed (the rules:
/// [`crate::wire::Divergence::judge`]).
pub(super) async fn divergence(
    ctx: &Arc<Ctx>,
    conf: &crate::wire::Confirmation,
) -> Result<Option<crate::wire::Divergence>, ExpectError> {
    let Some((last, master_inc)) = master_position(ctx)? else {
        return Ok(None);
    };
    let (c, confirmed) = (ctx.clone(), (conf.seq, conf.incarnation));
    off_reactor(move || {
        crate::wire::Divergence::judge(confirmed, (last, master_inc), |s| {
            Ok::<_, ExpectError>(
                c.db.read_log_record(c.log, s)?
                    .map(|r| (r.incarnation, r.is_base())),
            )
        })
    })
    .await
}

/// What the replicate should hold (count and digest) after the master's seq `at`.
pub(super) async fn expected_at(
    ctx: &Arc<Ctx>,
    f: &Arc<Feeder>,
    at: Seq,
) -> Result<FileMeta, ExpectError> {
    let fnr = Fnr(f.rep.def.file);
    let ctl = ctx.control.replicate(f.name());
    let anchor = ctl.anchor.filter(|a| a.def == f.def_hash);
    if at.0 == 0 && anchor.is_none() {
        return Ok(FileMeta::new(fnr));
    }
    if !f.rep.is_partial() && ctl.gaps.is_empty() && at.0 > 0 {
        let c = ctx.clone();
        let rec =
            off_reactor(move || Ok::<_, ExpectError>(c.db.read_log_record(c.log, at)?)).await?;
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
            return Err(ExpectError::AheadOfLog { at, last });
        }
    }
    // Roll forward from the last known point: the feeder's own, the anchor,
    // or (a master that started empty) the beginning.
    let cached = *lock(&f.expected);
    let (from, mut meta) = match (cached, anchor) {
        (Some((s, m)), a) if s <= at && a.is_none_or(|a| a.seq <= s) => (s, m),
        (_, Some(a)) if a.seq <= at => (a.seq, a.meta(fnr)),
        (_, Some(a)) => return Err(ExpectError::BeforeAnchor { at, anchor: a.seq }),
        _ => (Seq(0), FileMeta::new(fnr)),
    };
    let c = ctx.clone();
    let rep = f.rep.clone();
    lock(&f.st).rolled_forward += at.0.saturating_sub(from.0);
    off_reactor(move || {
        for s in from.0 + 1..=at.0 {
            let rec =
                c.db.read_log_record(c.log, Seq(s))?
                    .ok_or(ExpectError::MissingSeq {
                        at,
                        missing: Seq(s),
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
