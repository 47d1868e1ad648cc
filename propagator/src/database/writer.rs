//! The log writer and page-store applier threads: group commit, pipelined.
//!
//! The writer takes every commit queued since its last sync, appends them
//! with one write, makes them durable with one `fdatasync`, and answers each
//! committer: ET returns once its entry is durable. It then hands the group to
//! the applier, which writes it to the page store in one atomic batch with the
//! applied LSN, while the writer already syncs the next group. Until a group
//! is applied its records are served from the in-memory overlay, so every
//! reader sees every acknowledged commit. A failed write, sync or store apply
//! is never retried (PostgreSQL's `data_sync_retry=off`): the database is
//! poisoned, every waiting and later commit fails, and the next open recovers
//! from what the log durably holds.

use super::{lock, Shared};
use crate::catalog::FileDef;
use crate::digest::FileMeta;
use crate::error::DbError;
use crate::ids::{Fnr, Isn, Lsn};
use crate::plog::{Checkpoint, PlogEntry, PlogWriter};
use crate::store::StoreBatch;
use std::collections::BTreeMap;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

pub(crate) struct Job {
    pub lsn: Lsn,
    pub payload: Vec<u8>,
    pub records: Vec<(Fnr, Isn, Option<Vec<u8>>)>,
    pub metas: Vec<FileMeta>,
    pub catalog: Vec<FileDef>,
    pub client_id: Option<String>,
    /// Answered once the entry is durable; taken when answered.
    pub done: Option<oneshot::Sender<Result<(), DbError>>>,
}

pub(crate) enum WriterMsg {
    Commit(Job),
    Close(oneshot::Sender<Result<(), DbError>>),
    /// Answered once every commit queued before it is applied (or failed).
    Barrier(oneshot::Sender<()>),
    /// Stop without a clean checkpoint, as a crash would (tests).
    Abandon(oneshot::Sender<()>),
}

/// What the writer hands the applier.
enum ApplyMsg {
    Group(Vec<Job>),
    Barrier(oneshot::Sender<()>),
}

/// Groups the applier may lag behind the writer before the writer waits.
/// With single-commit groups this covers several apply windows; with large
/// groups it bounds the memory held for the applier (at most this many
/// groups of `max_group_bytes`, in practice far less).
const APPLY_QUEUE: usize = 128;

/// The most log bytes one page-store batch gathers.
const MAX_APPLY_BYTES: usize = 16 << 20;

/// How long the applier gathers groups into one page-store batch.
const APPLY_WINDOW: Duration = Duration::from_millis(5);

/// The most commits one page-store batch takes.
const MAX_APPLY_COMMITS: usize = 4096;

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

pub(crate) fn run(
    shared: Arc<Shared>,
    mut writer: PlogWriter,
    mut cps: CheckpointState,
    rx: mpsc::Receiver<WriterMsg>,
    max_group_bytes: usize,
) {
    let (atx, arx) = mpsc::sync_channel::<ApplyMsg>(APPLY_QUEUE);
    let ashared = shared.clone();
    let applier = std::thread::Builder::new()
        .name("page-store-applier".into())
        .spawn(move || apply_loop(&ashared, arx));
    let applier = match applier {
        Ok(h) => h,
        Err(e) => {
            poison(&shared, format!("cannot start the page-store applier: {e}"));
            return;
        }
    };
    let mut closer: Option<oneshot::Sender<Result<(), DbError>>> = None;
    let mut abandoned = false;
    while closer.is_none() && !abandoned {
        let mut jobs = Vec::new();
        let mut barrier = None;
        match rx.recv() {
            Err(_) => break,
            Ok(WriterMsg::Close(c)) => closer = Some(c),
            Ok(WriterMsg::Barrier(b)) => barrier = Some(b),
            Ok(WriterMsg::Abandon(a)) => {
                let _ = a.send(());
                abandoned = true;
            }
            Ok(WriterMsg::Commit(j)) => {
                let mut bytes = j.payload.len();
                jobs.push(j);
                while bytes < max_group_bytes {
                    match rx.try_recv() {
                        Ok(WriterMsg::Commit(j)) => {
                            bytes += j.payload.len();
                            jobs.push(j);
                        }
                        Ok(WriterMsg::Close(c)) => {
                            closer = Some(c);
                            break;
                        }
                        Ok(WriterMsg::Barrier(b)) => {
                            barrier = Some(b);
                            break;
                        }
                        Ok(WriterMsg::Abandon(a)) => {
                            // Whatever came before the crash is still written.
                            let _ = a.send(());
                            abandoned = true;
                            break;
                        }
                        Err(_) => break,
                    }
                }
            }
        }
        if !jobs.is_empty() {
            write_group(&shared, &mut writer, &mut cps, jobs, &atx);
        }
        if let Some(b) = barrier {
            let _ = atx.send(ApplyMsg::Barrier(b));
        }
    }
    // Let the applier finish everything handed to it.
    drop(atx);
    let _ = applier.join();
    if abandoned {
        return;
    }
    // Refuse anything still queued, then close cleanly if nothing failed.
    while let Ok(m) = rx.try_recv() {
        match m {
            WriterMsg::Commit(j) => {
                if let Some(done) = j.done {
                    let _ = done.send(Err(DbError::Closed));
                }
            }
            WriterMsg::Close(c) => {
                let _ = c.send(Ok(()));
            }
            WriterMsg::Barrier(b) => {
                let _ = b.send(());
            }
            WriterMsg::Abandon(a) => {
                let _ = a.send(());
            }
        }
    }
    let result = close_cleanly(&shared, &mut writer, &cps);
    if let Err(e) = &result {
        tracing::error!(error = %e, "database did not close cleanly; the next open will recover");
    }
    if let Some(c) = closer {
        let _ = c.send(result);
    }
}

fn poison(shared: &Shared, reason: String) {
    tracing::error!(reason = %reason, "database stops accepting commits");
    let mut p = lock(&shared.poisoned);
    if p.is_none() {
        *p = Some(reason);
    }
}

fn poisoned(shared: &Shared) -> Option<String> {
    lock(&shared.poisoned).clone()
}

fn write_group(
    shared: &Shared,
    writer: &mut PlogWriter,
    cps: &mut CheckpointState,
    mut jobs: Vec<Job>,
    applier: &mpsc::SyncSender<ApplyMsg>,
) {
    if let Some(reason) = poisoned(shared) {
        for j in jobs {
            if let Some(done) = j.done {
                let _ = done.send(Err(DbError::Poisoned(reason.clone())));
            }
        }
        return;
    }
    let logged = writer
        .append(jobs.iter().map(|j| j.payload.as_slice()))
        .and_then(|_| {
            let started = Instant::now();
            let synced = writer.sync();
            shared.metrics.fsync.observe(started.elapsed());
            synced
        });
    if let Err(e) = logged {
        let reason = e.to_string();
        poison(shared, reason.clone());
        for j in jobs {
            if let Some(done) = j.done {
                let _ = done.send(Err(DbError::Poisoned(reason.clone())));
            }
        }
        return;
    }
    // Durable from here on: publish it, answer the committers, then apply
    // behind them.
    if let Some(last) = jobs.last() {
        shared.durable.send_replace(last.lsn);
    }
    let bytes: usize = jobs.iter().map(|j| j.payload.len()).sum();
    shared.metrics.committed(jobs.len() as u64, bytes as u64);
    for j in &mut jobs {
        for d in &j.catalog {
            cps.catalog.insert(d.fnr, d.clone());
        }
        for m in &j.metas {
            cps.metas.insert(m.fnr, *m);
        }
        cps.last_lsn = j.lsn;
        if let Some(done) = j.done.take() {
            let _ = done.send(Ok(()));
        }
    }
    if applier.send(ApplyMsg::Group(jobs)).is_err() {
        poison(shared, "the page-store applier stopped".into());
    }
    if writer.needs_rotation() {
        if let Err(e) = writer.rotate(&cps.checkpoint(false)) {
            poison(shared, format!("cannot start a new log segment: {e}"));
        }
    }
}

/// The applier thread: writes durable groups to the page store.
///
/// It gathers the groups that arrive within [`APPLY_WINDOW`] of the first
/// (up to [`MAX_APPLY_COMMITS`] commits) into one page-store batch. A sled
/// batch has a large fixed cost, and on a two-core machine an applier that
/// wakes for every single-commit group steals the CPU the committers need:
/// measured, it halved the one-client commit rate. Nothing waits on this:
/// ET has already returned, and readers see the commits through the overlay.
fn apply_loop(shared: &Shared, rx: mpsc::Receiver<ApplyMsg>) {
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
                let deadline = Instant::now() + APPLY_WINDOW;
                let mut bytes: usize = jobs.iter().map(|j| j.payload.len()).sum();
                while jobs.len() < MAX_APPLY_COMMITS && bytes < MAX_APPLY_BYTES {
                    let wait = deadline.saturating_duration_since(Instant::now());
                    match rx.recv_timeout(wait) {
                        Ok(ApplyMsg::Group(more)) => {
                            bytes += more.iter().map(|j| j.payload.len()).sum::<usize>();
                            jobs.extend(more);
                        }
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                if poisoned(shared).is_none() {
                    apply_group(shared, jobs);
                }
            }
        }
    }
}

fn apply_group(shared: &Shared, mut jobs: Vec<Job>) {
    let Some(last) = jobs.last().map(|j| j.lsn) else {
        return;
    };
    let mut batch = StoreBatch {
        applied: last,
        ..StoreBatch::default()
    };
    let mut keys = Vec::with_capacity(jobs.len());
    for j in &mut jobs {
        keys.push((
            j.lsn,
            j.records
                .iter()
                .map(|(f, i, _)| (*f, *i))
                .collect::<Vec<_>>(),
        ));
        batch.records.append(&mut j.records);
        batch.metas.extend(j.metas.iter().copied());
        batch.catalog.extend(j.catalog.iter().cloned());
        if let Some(id) = &j.client_id {
            batch.client_ids.push((id.clone(), j.lsn));
        }
    }
    if let Err(e) = shared.store.apply(&batch) {
        // The group is durable in the log; the next open redoes it.
        poison(
            shared,
            format!("page store write failed after the log sync (up to LSN {last}): {e}"),
        );
        return;
    }
    {
        let mut st = lock(&shared.state);
        for (lsn, ks) in &keys {
            for k in ks {
                // A later commit may have rewritten the key: keep its entry.
                if st.overlay.get(k).is_some_and(|(l, _)| l == lsn) {
                    st.overlay.remove(k);
                }
            }
        }
        for j in &jobs {
            if let Some(id) = &j.client_id {
                st.pending_ids.remove(id);
            }
        }
    }
    shared.applied.send_replace(last);
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
