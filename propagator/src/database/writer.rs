//! Group commit led by the committers, and the page-store applier thread.
//!
//! There is no log-writer thread. A committing thread queues its entry; if no
//! other thread is writing the log, it becomes the *leader*: it takes every
//! entry queued so far, appends them with one write, makes them durable with
//! one `fdatasync`, hands the group to the applier and answers the others in
//! the group. Entries queued while a leader syncs wait and form the next
//! group, which the same leader writes (up to [`LEAD_ROUNDS`] groups in a
//! row) before it passes the leadership to the first committer still
//! waiting and returns.
//!
//! This is the leader/follower group commit of PostgreSQL's WAL flush and
//! MySQL's binlog group commit. Measured on a two-core VM against the
//! dedicated writer thread it replaces: one client no longer pays two thread
//! hand-offs per commit (each the wake of a possibly idle vCPU), which took
//! the one-client rate from 0.76 to 0.96-1.06 of the disk's raw fdatasync
//! rate.
//!
//! The applier writes durable groups to the page store in one atomic batch
//! with the applied LSN, behind the committers. Until a group is applied its
//! records are served from the in-memory overlay, so every reader sees every
//! acknowledged commit. A failed write, sync or store apply is never retried
//! (PostgreSQL's `data_sync_retry=off`): the database is poisoned, every
//! waiting and later commit fails, and the next open recovers from what the
//! log durably holds.

use super::{lock, Shared};
use crate::catalog::FileDef;
use crate::digest::FileMeta;
use crate::error::DbError;
use crate::ids::{Fnr, Isn, Lsn};
use crate::plog::{Checkpoint, PlogEntry, PlogWriter};
use crate::store::StoreBatch;
use std::collections::{BTreeMap, VecDeque};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

pub(crate) struct Job {
    pub lsn: Lsn,
    /// A replicated batch: its sync may wait up to [`LINGER`] for others.
    pub linger: bool,
    pub payload: Vec<u8>,
    pub records: Vec<(Fnr, Isn, Option<Vec<u8>>)>,
    pub metas: Vec<FileMeta>,
    pub catalog: Vec<FileDef>,
    pub client_id: Option<String>,
    /// Files the commit emptied from an isn on
    /// ([`crate::catalog::CatalogOp::Clear`]).
    pub cleared: Vec<(Fnr, Isn)>,
}

/// What the leader hands the applier.
enum ApplyMsg {
    Group(Vec<Job>),
    Barrier(oneshot::Sender<()>),
}

/// Groups the applier may lag behind the committers before a leader waits.
/// With single-commit groups this covers several apply windows; with large
/// groups it bounds the memory held for the applier.
const APPLY_QUEUE: usize = 128;

/// How long after the last sync a group of replicated batches only waits
/// before its own, so that the batches that arrive meanwhile share it. No
/// client waits on them: a link's batch is answered (and visible) once
/// queued, and its sync is reported to the feeder when it happens. On one
/// disk a replicate's syncs queue the master's commits behind them; this is
/// PostgreSQL's apply worker, whose subscription commits without a flush
/// (`synchronous_commit` off) and whose WAL writer flushes every
/// `wal_writer_delay` (200 ms), with a bound twenty times shorter. Measured
/// (interleaved pairs, N=200000): 2 ms -> 10 ms took the full-speed lag p99
/// from 2.1 to 0.5 ms and the replicas' CPU per commit down a quarter; the
/// durable lag (master commit to the replicate's sync) is 6 -> 13 ms p50.
const LINGER: Duration = Duration::from_millis(10);

/// The most log bytes one page-store batch gathers.
const MAX_APPLY_BYTES: usize = 16 << 20;

/// How long the applier gathers groups into one page-store batch.
const APPLY_WINDOW: Duration = Duration::from_millis(5);

/// The most commits one page-store batch takes.
const MAX_APPLY_COMMITS: usize = 4096;

/// How many keys the applier takes out of the overlay per hold of the
/// state lock (about 100 µs of work).
pub(super) const OVERLAY_SLICE: usize = 2048;

/// Catalog and metas as of the last written LSN: what a checkpoint records.
#[derive(Default)]
pub(crate) struct CheckpointState {
    pub catalog: BTreeMap<Fnr, FileDef>,
    pub metas: BTreeMap<Fnr, FileMeta>,
    pub last_lsn: Lsn,
}

impl CheckpointState {
    pub fn checkpoint(&self, clean: bool) -> Checkpoint {
        Checkpoint {
            as_of: self.last_lsn,
            time_us: chrono::Utc::now().timestamp_micros(),
            clean,
            catalog: self.catalog.values().cloned().collect(),
            metas: self.metas.values().copied().collect(),
        }
    }
}

/// What a committer waiting for its entry is told.
enum Answer {
    Waiting,
    /// Lead the next group: this committer's entry is first in the queue.
    Lead,
    /// The group is written (or failed); this committer is `.1` in it.
    Done(Arc<Answered>, usize),
}

/// A written group's outcome, shared by its committers.
///
/// Waking is a binary tree rooted at `root` (the leader's own entry, when
/// in the group, is not woken): the leader wakes the root, and whoever is
/// woken wakes its two children before it returns. Measured on a two-core
/// VM under sixteen clients, a wake costs the waker up to 30 µs (the woken
/// thread often preempts it): a leader that woke every committer of its
/// group itself spent 119 µs a group waking against 226 µs syncing, one
/// that woke two spent 46-54 µs, and one that wakes one spends 30-34 µs.
/// The tree spreads the wakes over the committers; the leader's share, on
/// the path to the next sync, is one.
struct Answered {
    result: Result<(), GroupError>,
    waiters: Vec<Arc<Waiter>>,
    root: usize,
}

impl Answered {
    fn result(&self) -> Result<(), DbError> {
        self.result.as_ref().map_err(|e| e.to_db()).copied()
    }

    fn wake(self: &Arc<Self>, i: usize) {
        if let Some(w) = self.waiters.get(i) {
            w.tell(Answer::Done(self.clone(), i));
        }
    }

    /// Wakes the children of `i` in the tree.
    fn wake_children(self: &Arc<Self>, i: usize) {
        let k = i - self.root;
        self.wake(self.root + 2 * k + 1);
        self.wake(self.root + 2 * k + 2);
    }
}

/// One committer waiting: told by whoever leads its group.
///
/// The thread to wake is the one that waits, which need not be the one that
/// queued the entry: a pipelined session queues its next transaction while
/// another thread waits for the previous one.
pub(crate) struct Waiter {
    slot: Mutex<(Answer, Thread)>,
}

impl Waiter {
    fn new() -> Waiter {
        Waiter {
            slot: Mutex::new((Answer::Waiting, std::thread::current())),
        }
    }

    fn tell(&self, a: Answer) {
        let thread = {
            let mut s = lock(&self.slot);
            s.0 = a;
            s.1.clone()
        };
        // A token: if the thread is not parked yet, its next park returns.
        thread.unpark();
    }

    fn wait(&self) -> Answer {
        loop {
            // Taken with the lock released before parking: `tell` needs it.
            // The waiting thread is recorded under the same lock, so a
            // `tell` that finds no answer taken yet wakes this thread.
            let a = {
                let mut s = lock(&self.slot);
                s.1 = std::thread::current();
                std::mem::replace(&mut s.0, Answer::Waiting)
            };
            match a {
                Answer::Waiting => std::thread::park(),
                a => return a,
            }
        }
    }
}

/// Who leads after a group.
enum Next {
    /// This thread again: it is running already, while waking another
    /// costs a context switch on the critical path (measured under sixteen
    /// clients: a group every 424 µs instead of every 466 µs).
    Continue,
    HandOff(Arc<Waiter>),
    Nobody,
}

/// The most groups one committer leads in a row before it hands the
/// leadership on and returns: the bound on its own commit latency.
const LEAD_ROUNDS: usize = 4;

/// A queued commit: lead its group, or wait to be answered.
pub(crate) struct Ticket {
    waiter: Arc<Waiter>,
    lead: bool,
}

/// Why a group was not made durable: the reason the database is poisoned.
struct GroupError {
    reason: String,
    /// Its entries may have reached the log (a write or sync failed), or
    /// were certainly not written (the database had stopped before).
    written: bool,
}

impl GroupError {
    /// What each commit of the group is told: its fate is not known, or
    /// (never written) that it was not committed.
    fn to_db(&self) -> DbError {
        match self.written {
            true => DbError::OutcomeUnknown(self.reason.clone()),
            false => DbError::Poisoned(self.reason.clone()),
        }
    }
}

#[derive(Default)]
struct Queue {
    /// Accepted, not yet written, in LSN order.
    pending: VecDeque<(Job, Arc<Waiter>)>,
    /// A thread leads (or has been told to lead). Pending entries imply one.
    leader: bool,
    /// The last LSN made durable and handed to the applier.
    durable: Lsn,
    /// Page-store barriers waiting for their LSN to become durable.
    barriers: Vec<(Lsn, oneshot::Sender<()>)>,
    /// A group failed: no LSN will become durable any more.
    failed: bool,
    /// Closed (or closing): new commits are refused.
    closed: bool,
    /// A close holds the leadership for good.
    shut: bool,
    /// Threads waiting for the leadership to be free (closing).
    idle_waiters: usize,
}

/// The log side, touched by the leader only.
struct LogSide {
    writer: PlogWriter,
    cps: CheckpointState,
    apply: mpsc::SyncSender<ApplyMsg>,
    applier: JoinHandle<()>,
    backlog: Arc<Backlog>,
    /// When the log was last synced.
    last_sync: Instant,
    /// A durable group not yet handed to the applier: its leader hands it
    /// over after its idle hooks have sent the tail ([`Committer::lead`]),
    /// so the applier's wake-up does not come first; anything that goes to
    /// the applier before (a later group, a barrier, a close) takes it along.
    unsent: Option<Vec<Job>>,
}

/// The log bytes handed to the applier and not yet in the page store.
/// Each is held twice meanwhile (the group's records and the overlay), so
/// a leader waits while they are over [`MAX_APPLY_BACKLOG`]. The queue's
/// length alone ([`APPLY_QUEUE`] groups) let a slow page store hold 128
/// groups of load chunks; this bounds the bytes whatever the group sizes.
#[derive(Default)]
struct Backlog {
    /// The bytes held, and whether the applier stopped (then nobody waits).
    bytes: Mutex<(usize, bool)>,
    drained: Condvar,
}

const MAX_APPLY_BACKLOG: usize = 8 << 20;

impl Backlog {
    fn add(&self, n: usize) {
        let mut b = lock(&self.bytes);
        while !b.1 && b.0 > 0 && b.0 + n > MAX_APPLY_BACKLOG {
            b = self.drained.wait(b).unwrap_or_else(|p| p.into_inner());
        }
        b.0 += n;
    }

    /// Whether adding `n` bytes would wait for the applier.
    fn would_wait(&self, n: usize) -> bool {
        let b = lock(&self.bytes);
        !b.1 && b.0 > 0 && b.0 + n > MAX_APPLY_BACKLOG
    }

    fn done(&self, n: usize) {
        let mut b = lock(&self.bytes);
        b.0 = b.0.saturating_sub(n);
        self.drained.notify_all();
    }
}

/// Marks the backlog's applier gone when its loop ends (or panics): a
/// leader waiting for room goes on, and its send to the applier then fails
/// and poisons the database.
struct ApplierGone<'a>(&'a Backlog);

impl Drop for ApplierGone<'_> {
    fn drop(&mut self) {
        lock(&self.0.bytes).1 = true;
        self.0.drained.notify_all();
    }
}

/// The group committer of one database.
pub(crate) struct Committer {
    q: Mutex<Queue>,
    idle: Condvar,
    /// Wakes a leader lingering over replicated batches (see [`LINGER`]).
    urgent: Condvar,
    log: Mutex<Option<LogSide>>,
    max_group_bytes: usize,
}

impl Committer {
    /// Starts the page-store applier; the log is written from `writer` on.
    pub fn start(
        shared: &Arc<Shared>,
        writer: PlogWriter,
        cps: CheckpointState,
    ) -> std::io::Result<()> {
        let (apply, arx) = mpsc::sync_channel::<ApplyMsg>(APPLY_QUEUE);
        let ashared = shared.clone();
        let backlog = Arc::new(Backlog::default());
        let abacklog = backlog.clone();
        let applier = std::thread::Builder::new()
            .name("page-store-applier".into())
            .spawn(move || apply_loop(&ashared, &abacklog, arx))?;
        let durable = cps.last_lsn;
        *lock(&shared.committer.q) = Queue {
            durable,
            ..Queue::default()
        };
        *lock(&shared.committer.log) = Some(LogSide {
            writer,
            cps,
            apply,
            applier,
            backlog,
            last_sync: Instant::now(),
            unsent: None,
        });
        Ok(())
    }

    pub fn new(max_group_bytes: usize) -> Committer {
        Committer {
            q: Mutex::new(Queue {
                closed: true,
                ..Queue::default()
            }),
            idle: Condvar::new(),
            urgent: Condvar::new(),
            log: Mutex::new(None),
            max_group_bytes: max_group_bytes.max(1),
        }
    }

    /// Queues an accepted entry. Called under the state lock, so queue order
    /// is LSN order.
    pub fn enqueue(&self, job: Job) -> Result<Ticket, DbError> {
        let waiter = Arc::new(Waiter::new());
        let mut q = lock(&self.q);
        if q.closed {
            return Err(DbError::Closed);
        }
        // LSNs are handed out under the state lock, one after another.
        debug_assert!(
            q.pending
                .back()
                .is_none_or(|(prev, _)| prev.lsn.0 + 1 == job.lsn.0),
            "LSN {} queued after LSN {:?}",
            job.lsn,
            q.pending.back().map(|(p, _)| p.lsn)
        );
        let urgent = !job.linger;
        q.pending.push_back((job, waiter.clone()));
        if urgent && q.leader {
            // A leader may be lingering over replicated batches.
            self.urgent.notify_one();
        }
        let lead = !q.leader;
        q.leader = true;
        Ok(Ticket { waiter, lead })
    }

    /// Waits until the ticket's entry is durable, leading its group if told
    /// to. Called without the state lock.
    pub fn finish(&self, shared: &Shared, t: Ticket) -> Result<(), DbError> {
        if t.lead {
            return self.lead(shared);
        }
        loop {
            match t.waiter.wait() {
                Answer::Lead => return self.lead(shared),
                Answer::Done(group, i) => {
                    group.wake_children(i);
                    return group.result();
                }
                Answer::Waiting => {}
            }
        }
    }

    /// Writes and syncs the queued entries as one group. The caller's own
    /// entry is the first of them: the queue was empty when it led, or it was
    /// told to lead because its entry came first.
    fn lead(&self, shared: &Shared) -> Result<(), DbError> {
        let mut own = None;
        for round in 1.. {
            let (result, waiters, next) = self.lead_group(shared, round < LEAD_ROUNDS, round == 1);
            // The first of the first group is this thread's own entry: the
            // wake tree then starts at the second.
            let root = usize::from(own.is_none());
            let durable = result.as_ref().ok().copied();
            let group = Arc::new(Answered {
                result: result.map(|_| ()),
                waiters,
                root,
            });
            if own.is_none() {
                own = Some(group.result());
            }
            group.wake(root);
            match next {
                Next::Continue => {}
                Next::HandOff(_) => break,
                Next::Nobody => {
                    if let Some(lsn) = durable {
                        run_idle_hooks(shared, lsn);
                    }
                    // Unless a new leader holds the log: it hands the
                    // group over before writing its own.
                    let mut log = match self.log.try_lock() {
                        Ok(log) => Some(log),
                        Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
                        Err(std::sync::TryLockError::WouldBlock) => None,
                    };
                    if let Some(side) = log.as_mut().and_then(|l| l.as_mut()) {
                        side.hand_unsent(shared);
                    }
                    notify_durable(shared);
                    break;
                }
            }
        }
        own.unwrap_or(Err(DbError::Closed))
    }

    /// Writes one group; says who leads next. It may be this thread again
    /// (`stay`): it is running already, while waking another takes a
    /// context switch on the critical path. Only a leader's first group
    /// (`first`: its own entry leads it) may linger.
    fn lead_group(
        &self,
        shared: &Shared,
        stay: bool,
        first: bool,
    ) -> (Result<Lsn, GroupError>, Vec<Arc<Waiter>>, Next) {
        let mut jobs = Vec::new();
        let mut waiters = Vec::new();
        if first {
            // Replicated batches only: wait for company, until LINGER after
            // the last sync, or until a commit somebody waits on (or a
            // barrier) is queued.
            let until = lock(&self.log)
                .as_ref()
                .map_or_else(Instant::now, |s| s.last_sync + LINGER);
            let mut q = lock(&self.q);
            while only_lingering(&q) && q.barriers.is_empty() && !q.closed {
                let now = Instant::now();
                if now >= until {
                    break;
                }
                q = self
                    .urgent
                    .wait_timeout(q, until - now)
                    .map_or_else(|p| p.into_inner().0, |r| r.0);
            }
        }
        {
            let mut q = lock(&self.q);
            let mut bytes = 0usize;
            while let Some((j, _)) = q.pending.front() {
                if !jobs.is_empty() && bytes + j.payload.len() > self.max_group_bytes {
                    break;
                }
                bytes += j.payload.len();
                let Some((j, w)) = q.pending.pop_front() else {
                    break;
                };
                jobs.push(j);
                waiters.push(w);
            }
        }
        let mut log = lock(&self.log);
        let result = match log.as_mut() {
            // A panic here must not strand the group's committers and every
            // later one behind a leader that is gone: it poisons instead.
            Some(side) => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                side.write_group(shared, jobs)
            }))
            .unwrap_or_else(|_| Err(fail(shared, "the log writer panicked"))),
            // Unreachable (a close takes the log only when nobody leads), but
            // a failed group must poison: later barriers then say so.
            None => Err(fail(shared, "a leader found the log closed")),
        };
        // Publish, then pass the leadership on before anyone is woken.
        let (next, barriers) = {
            let mut q = lock(&self.q);
            match &result {
                Ok(last) => q.durable = *last,
                Err(_) => q.failed = true,
            }
            let barriers = if q.failed {
                std::mem::take(&mut q.barriers)
            } else {
                let durable = q.durable;
                let (ready, waiting) = std::mem::take(&mut q.barriers)
                    .into_iter()
                    .partition(|(l, _)| *l <= durable);
                q.barriers = waiting;
                ready
            };
            let next = match q.pending.front() {
                // Replicated batches only behind: their own thread leads
                // them (and may linger), while this one answers its group.
                Some((_, w)) if only_lingering(&q) => Next::HandOff(w.clone()),
                Some(_) if stay => Next::Continue,
                Some((_, w)) => Next::HandOff(w.clone()),
                None => {
                    q.leader = false;
                    if q.idle_waiters > 0 {
                        self.idle.notify_all();
                    }
                    Next::Nobody
                }
            };
            (next, barriers)
        };
        if !matches!(next, Next::Nobody) {
            notify_durable(shared);
        }
        if let Some(side) = log.as_mut() {
            if !matches!(next, Next::Nobody) || !barriers.is_empty() {
                side.hand_unsent(shared);
            }
        }
        if let Next::HandOff(n) = &next {
            n.tell(Answer::Lead);
        }
        for (_, b) in barriers {
            send_barrier(log.as_ref(), b);
        }
        drop(log);
        (result, waiters, next)
    }

    /// Answers once every entry up to `target` is in the page store (or the
    /// database failed or closed).
    pub fn barrier(&self, shared: &Shared, target: Lsn) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        {
            let mut q = lock(&self.q);
            // Queued even while a close waits for the last group: the close
            // hands what is left to the applier behind that group.
            if q.durable < target && !q.failed && !q.shut {
                q.barriers.push((target, tx));
                // Somebody waits: a lingering leader syncs now.
                self.urgent.notify_one();
                return rx;
            }
        }
        // Durable already: its group went to the applier before `durable`
        // moved, under the log lock this send takes too, or its leader left
        // it `unsent`, handed over here first. Closed: the sender is dropped
        // and the caller sees `Closed`.
        let mut log = lock(&self.log);
        if let Some(side) = log.as_mut() {
            side.hand_unsent(shared);
        }
        send_barrier(log.as_ref(), tx);
        rx
    }

    pub fn closing(&self) -> bool {
        lock(&self.q).closed
    }

    /// Stops accepting commits, waits for the group in flight, stops the
    /// applier once it has applied everything, and, unless `crash`, writes a
    /// clean checkpoint. A second close does nothing.
    pub fn close(&self, shared: &Shared, crash: bool) -> Result<(), DbError> {
        let barriers = {
            let mut q = lock(&self.q);
            q.closed = true;
            self.urgent.notify_all();
            while q.leader && !q.shut {
                q.idle_waiters += 1;
                q = self.idle.wait(q).unwrap_or_else(|p| p.into_inner());
                q.idle_waiters -= 1;
            }
            if q.shut {
                // Another close got here first.
                return Ok(());
            }
            // Nobody leads again: commits are refused from here on.
            q.leader = true;
            q.shut = true;
            if q.idle_waiters > 0 {
                self.idle.notify_all();
            }
            std::mem::take(&mut q.barriers)
        };
        // Readers waiting for a durable LSN are told the database closes.
        shared.durable.send_modify(|_| {});
        let Some(mut side) = lock(&self.log).take() else {
            return Ok(());
        };
        side.hand_unsent(shared);
        // Behind every group written: answered once those are applied.
        for (_, b) in barriers {
            send_barrier(Some(&side), b);
        }
        let LogSide {
            mut writer,
            cps,
            apply,
            applier,
            backlog: _,
            last_sync: _,
            unsent: _,
        } = side;
        // Let the applier finish everything handed to it.
        drop(apply);
        let _ = applier.join();
        if crash {
            return Ok(());
        }
        let result = close_cleanly(shared, &mut writer, &cps);
        if let Err(e) = &result {
            tracing::error!(error = %e, "database did not close cleanly; the next open will recover");
        }
        result
    }
}

/// Wakes the durable watch's receivers: the LSN it holds was set (without
/// waking them) when its group was synced.
fn notify_durable(shared: &Shared) {
    shared.durable.send_if_modified(|_| true);
}

/// Runs the idle hooks (see [`super::Database::on_idle_durable`]) of a
/// leader whose group made `lsn` durable and that leads nothing more.
fn run_idle_hooks(shared: &Shared, lsn: Lsn) {
    let hooks = idle_hooks(shared);
    // Everything prepared first, then sent back to back: each frame's
    // write wakes its replicate, and the second need not wait for the
    // first one's transform (measured: paced lag p50 -3 %).
    let mut ready = Vec::new();
    for h in &hooks {
        guarded(&mut || {
            if h.durable(lsn) {
                ready.push(h.clone());
            }
        });
    }
    for h in ready {
        guarded(&mut || h.flush());
    }
}

/// The idle hooks a leader about to sync has prepare: all of them when
/// nobody waits behind its group (so it will run them), else none.
fn hooks_to_prepare(shared: &Shared) -> Vec<Arc<dyn super::IdleDurable>> {
    if lock(&shared.committer.q).pending.is_empty() {
        idle_hooks(shared)
    } else {
        Vec::new()
    }
}

/// The idle hooks still registered.
fn idle_hooks(shared: &Shared) -> Vec<Arc<dyn super::IdleDurable>> {
    let h = lock(&shared.idle_hooks);
    h.iter().filter_map(std::sync::Weak::upgrade).collect()
}

/// Runs a hook: its panic is not the commit's failure (a durable commit's
/// committer is answered as such).
fn guarded(f: &mut dyn FnMut()) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
        tracing::error!("an idle-durable hook panicked");
    }
}

/// Whether everything queued is a replicated batch that may linger.
fn only_lingering(q: &Queue) -> bool {
    !q.pending.is_empty() && q.pending.iter().all(|(j, _)| j.linger)
}

/// Hands a barrier to the applier, behind every group sent before it. With
/// no applier the barrier is dropped: its waiter sees the database closed.
fn send_barrier(side: Option<&LogSide>, b: oneshot::Sender<()>) {
    if let Some(s) = side {
        let _ = s.apply.send(ApplyMsg::Barrier(b));
    }
}

impl LogSide {
    /// Appends, syncs and hands one group to the applier; the last LSN made
    /// durable.
    fn write_group(&mut self, shared: &Shared, jobs: Vec<Job>) -> Result<Lsn, GroupError> {
        if let Some(reason) = poisoned(shared) {
            // A group before this one failed: nothing of this one is written.
            return Err(GroupError {
                reason,
                written: false,
            });
        }
        let Some(last) = jobs.last().map(|j| j.lsn) else {
            // Unreachable: a leader's own entry is always in its group.
            return Err(fail(shared, "a leader found no entry to write"));
        };
        // The group before, if its leader left it (see `unsent`).
        self.hand_unsent(shared);
        let logged = self
            .writer
            .append(jobs.iter().map(|j| j.payload.as_slice()))
            .and_then(|_| {
                let started = Instant::now();
                // Nobody waits behind this group, so its leader will run
                // the idle hooks once it is durable: they make their frames
                // ready while the device writes it.
                let hooks = hooks_to_prepare(shared);
                if !hooks.is_empty() {
                    self.writer.start_sync();
                    for h in hooks {
                        guarded(&mut || h.prepare(last));
                    }
                }
                let synced = self.writer.sync();
                shared.metrics.fsync.observe(started.elapsed());
                self.last_sync = Instant::now();
                synced
            });
        if let Err(e) = logged {
            return Err(fail(shared, e.to_string()));
        }
        // Durable from here on: readers see it at once; the durable
        // watch's receivers are woken by the leader (`notify_durable`),
        // after its idle hooks when it has nothing more to lead, and
        // before anything below that may wait.
        shared.durable.send_if_modified(|d| {
            *d = last;
            false
        });
        let bytes: usize = jobs.iter().map(|j| j.payload.len()).sum();
        shared.metrics.committed(jobs.len() as u64, bytes as u64);
        for j in &jobs {
            for d in &j.catalog {
                self.cps.catalog.insert(d.fnr, d.clone());
            }
            for m in &j.metas {
                self.cps.metas.insert(m.fnr, *m);
            }
        }
        self.cps.last_lsn = last;
        // The durable watch's receivers are woken once the leader knows
        // whether it leads on, unless a step below may wait (the applier
        // behind, a new segment to start): then now.
        let rotate = self.writer.needs_rotation();
        let wait = self.backlog.would_wait(bytes);
        if rotate || wait {
            notify_durable(shared);
        }
        self.backlog.add(bytes);
        // Left for the leader to hand over once its idle hooks have sent
        // the tail (measured: the applier's wake-up first cost the paced
        // commit-to-visible lag 30 µs of 150 after the sync), unless a step
        // below may wait.
        if rotate || wait {
            self.hand(shared, jobs);
        } else {
            self.unsent = Some(jobs);
        }
        if rotate {
            if let Err(e) = self.writer.rotate(&self.cps.checkpoint(false)) {
                // This group is durable; the next one fails.
                poison(shared, format!("cannot start a new log segment: {e}"));
            }
        }
        Ok(last)
    }
}

impl LogSide {
    /// Hands the group left for after the idle hooks to the applier.
    fn hand_unsent(&mut self, shared: &Shared) {
        if let Some(jobs) = self.unsent.take() {
            self.hand(shared, jobs);
        }
    }

    /// Hands a durable group to the applier, waiting while its queue is full.
    fn hand(&self, shared: &Shared, jobs: Vec<Job>) {
        match self.apply.try_send(ApplyMsg::Group(jobs)) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(group)) => {
                notify_durable(shared);
                if self.apply.send(group).is_err() {
                    poison(shared, "the page-store applier stopped".into());
                }
            }
            Err(mpsc::TrySendError::Disconnected(_)) => {
                poison(shared, "the page-store applier stopped".into());
            }
        }
    }
}

pub(super) fn poison(shared: &Shared, reason: String) {
    tracing::error!(reason = %reason, "database stops accepting commits");
    {
        let mut p = lock(&shared.poisoned);
        if p.is_none() {
            *p = Some(reason);
        }
    }
    // Readers waiting for a durable LSN that will not come are told.
    shared.durable.send_modify(|_| {});
}

/// Poisons the database; the group's error says why (and that its
/// entries may have been written).
fn fail(shared: &Shared, reason: impl Into<String>) -> GroupError {
    let reason = reason.into();
    poison(shared, reason.clone());
    GroupError {
        reason,
        written: true,
    }
}

fn poisoned(shared: &Shared) -> Option<String> {
    lock(&shared.poisoned).clone()
}

/// The applier thread: writes durable groups to the page store.
///
/// It gathers the groups that arrive within [`APPLY_WINDOW`] of the first
/// (up to [`MAX_APPLY_COMMITS`] commits) into one page-store batch. A sled
/// batch has a large fixed cost, and on a two-core machine an applier that
/// wakes for every single-commit group steals the CPU the committers need:
/// measured, it halved the one-client commit rate. Nothing waits on this:
/// ET has already returned, and readers see the commits through the overlay.
fn apply_loop(shared: &Shared, backlog: &Backlog, rx: mpsc::Receiver<ApplyMsg>) {
    let _gone = ApplierGone(backlog);
    let mut next = None;
    loop {
        let msg = match next.take() {
            Some(m) => m,
            None => match rx.recv() {
                Ok(m) => m,
                Err(_) => return,
            },
        };
        match msg {
            ApplyMsg::Barrier(b) => {
                let _ = b.send(());
            }
            ApplyMsg::Group(mut jobs) => {
                let mut bytes: usize = jobs.iter().map(|j| j.payload.len()).sum();
                let mut waited = false;
                while jobs.len() < MAX_APPLY_COMMITS && bytes < MAX_APPLY_BYTES {
                    match rx.try_recv() {
                        Ok(ApplyMsg::Group(more)) => {
                            bytes += more.iter().map(|j| j.payload.len()).sum::<usize>();
                            jobs.extend(more);
                        }
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        // Caught up: sleep through the window once rather
                        // than wait on the channel. A receiver blocked in
                        // `recv` is woken by every send, which costs each
                        // leader a wake; a sleeping one costs nothing.
                        Err(mpsc::TryRecvError::Empty) if !waited => {
                            waited = true;
                            std::thread::sleep(APPLY_WINDOW);
                        }
                        Err(_) => break,
                    }
                }
                if poisoned(shared).is_none() {
                    apply_group(shared, jobs);
                }
                backlog.done(bytes);
            }
        }
    }
}

fn apply_group(shared: &Shared, mut jobs: Vec<Job>) {
    let Some(last) = jobs.last().map(|j| j.lsn) else {
        return;
    };
    // The page store records one applied LSN for the batch: it must cover
    // a contiguous run, or a reopen would skip the hole.
    debug_assert!(
        jobs.windows(2).all(|w| w[0].lsn.0 + 1 == w[1].lsn.0),
        "a page-store batch of non-contiguous LSNs"
    );
    let mut batch = StoreBatch {
        applied: last,
        ..StoreBatch::default()
    };
    let mut keys = Vec::with_capacity(jobs.len());
    // One meta and one definition per file per batch: the latest. A master
    // changed by every commit would otherwise be encoded and handed to the
    // page store once per commit, only for all but the last to be replaced.
    let mut metas = BTreeMap::new();
    let mut catalog = BTreeMap::new();
    for j in &mut jobs {
        keys.push((
            j.lsn,
            j.records
                .iter()
                .map(|(f, i, _)| (*f, *i))
                .collect::<Vec<_>>(),
        ));
        for (f, from) in j.cleared.drain(..) {
            // Emptied before anything the batch writes: what earlier
            // commits of the batch wrote there goes with it.
            batch.records.retain(|(r, i, _)| *r != f || *i < from);
            batch.cleared.push((f, from));
        }
        batch.records.append(&mut j.records);
        metas.extend(j.metas.iter().map(|m| (m.fnr, *m)));
        catalog.extend(j.catalog.drain(..).map(|d| (d.fnr, d)));
        if let Some(id) = &j.client_id {
            batch.client_ids.push((id.clone(), j.lsn));
        }
    }
    batch.metas = metas.into_values().collect();
    batch.catalog = catalog.into_values().collect();
    if let Err(e) = shared.store.apply(&batch) {
        // The group is durable in the log; the next open redoes it.
        poison(
            shared,
            format!("page store write failed after the log sync (up to LSN {last}): {e}"),
        );
        return;
    }
    // The batch's records leave the overlay a slice at a time, each slice
    // under its own hold of the state lock, which every commit needs (a
    // batch after a backlog holds 100,000 keys). Between slices the thread
    // yields, so that a committer woken meanwhile can take the lock: std's
    // mutex is not fair, and an unlock followed at once by a lock would
    // win. Readers get the same answer either way: a key still in the
    // overlay reads as it did a moment before, and one taken out reads from
    // the page store, which now holds the batch. `overlay_applied` goes up
    // in the first hold, which only makes [`Seen`] checks read again; the
    // batch's client ids leave in the last.
    let mut keys = keys
        .iter()
        .flat_map(|(lsn, ks)| ks.iter().map(move |k| (*lsn, *k)))
        .peekable();
    let mut st = lock(&shared.state);
    st.overlay_applied = last;
    loop {
        take_out(&mut st.overlay, keys.by_ref().take(OVERLAY_SLICE));
        if keys.peek().is_none() {
            break;
        }
        drop(st);
        std::thread::yield_now();
        st = lock(&shared.state);
    }
    for j in &jobs {
        if let Some(id) = &j.client_id {
            st.pending_ids.remove(id);
        }
    }
    drop(st);
    shared.applied.send_replace(last);
}

/// Takes out of the overlay each key whose entry is still the one the
/// commit at `lsn` wrote: a later commit's rewrite of it stays.
pub(super) fn take_out(
    overlay: &mut std::collections::HashMap<(Fnr, Isn), super::Pending>,
    keys: impl Iterator<Item = (Lsn, (Fnr, Isn))>,
) {
    for (lsn, k) in keys {
        if overlay.get(&k).is_some_and(|(l, _)| *l == lsn) {
            overlay.remove(&k);
        }
    }
}

fn close_cleanly(
    shared: &Shared,
    writer: &mut PlogWriter,
    cps: &CheckpointState,
) -> Result<(), DbError> {
    if let Some(reason) = poisoned(shared) {
        return Err(DbError::Poisoned(reason));
    }
    shared.store.flush()?;
    let payload = PlogEntry::Checkpoint(cps.checkpoint(true)).encode();
    writer.append([payload.as_slice()])?;
    writer.sync()?;
    Ok(())
}
