//! The log writer thread: group commit.
//!
//! It takes every commit queued since its last sync, appends them with one
//! write, makes them durable with one `fdatasync`, applies them to the page
//! store in one atomic batch, and only then answers each committer. A failed
//! write, sync or store apply is never retried (PostgreSQL's
//! `data_sync_retry=off`): the database is poisoned, every waiting and later
//! commit fails, and the next open recovers from what the log durably holds.

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
use tokio::sync::oneshot;

pub(crate) struct Job {
    pub lsn: Lsn,
    pub payload: Vec<u8>,
    pub records: Vec<(Fnr, Isn, Option<Vec<u8>>)>,
    pub metas: Vec<FileMeta>,
    pub catalog: Vec<FileDef>,
    pub client_id: Option<String>,
    pub done: oneshot::Sender<Result<(), DbError>>,
}

pub(crate) enum WriterMsg {
    Commit(Job),
    Close(oneshot::Sender<Result<(), DbError>>),
    /// Answered once every commit queued before it is applied (or failed).
    Barrier(oneshot::Sender<()>),
    /// Stop without a clean checkpoint, as a crash would (tests).
    Abandon(oneshot::Sender<()>),
}

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
    let mut closer: Option<oneshot::Sender<Result<(), DbError>>> = None;
    while closer.is_none() {
        let mut jobs = Vec::new();
        let mut barrier = None;
        match rx.recv() {
            Err(_) => break,
            Ok(WriterMsg::Close(c)) => closer = Some(c),
            Ok(WriterMsg::Barrier(b)) => barrier = Some(b),
            Ok(WriterMsg::Abandon(a)) => {
                let _ = a.send(());
                return;
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
                        Ok(m @ (WriterMsg::Barrier(_) | WriterMsg::Abandon(_))) => {
                            if let WriterMsg::Barrier(b) = m {
                                barrier = Some(b);
                            } else {
                                write_group(
                                    &shared,
                                    &mut writer,
                                    &mut cps,
                                    std::mem::take(&mut jobs),
                                );
                                if let WriterMsg::Abandon(a) = m {
                                    let _ = a.send(());
                                }
                                return;
                            }
                            break;
                        }
                        Err(_) => break,
                    }
                }
            }
        }
        if !jobs.is_empty() {
            write_group(&shared, &mut writer, &mut cps, jobs);
        }
        if let Some(b) = barrier {
            let _ = b.send(());
        }
    }
    // Refuse anything still queued, then close cleanly if nothing failed.
    while let Ok(m) = rx.try_recv() {
        match m {
            WriterMsg::Commit(j) => {
                let _ = j.done.send(Err(DbError::Closed));
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
    jobs: Vec<Job>,
) {
    if let Some(reason) = poisoned(shared) {
        for j in jobs {
            let _ = j.done.send(Err(DbError::Poisoned(reason.clone())));
        }
        return;
    }
    let logged = writer
        .append(jobs.iter().map(|j| j.payload.as_slice()))
        .and_then(|_| writer.sync());
    if let Err(e) = logged {
        let reason = e.to_string();
        poison(shared, reason.clone());
        for j in jobs {
            let _ = j.done.send(Err(DbError::Poisoned(reason.clone())));
        }
        return;
    }
    // Durable from here on. Apply to the page store in one atomic batch.
    let last = jobs.last().map(|j| j.lsn).unwrap_or(cps.last_lsn);
    let mut batch = StoreBatch {
        applied: last,
        ..StoreBatch::default()
    };
    for j in &jobs {
        for d in &j.catalog {
            cps.catalog.insert(d.fnr, d.clone());
        }
        for m in &j.metas {
            cps.metas.insert(m.fnr, *m);
        }
        batch.records.extend(j.records.iter().cloned());
        batch.metas.extend(j.metas.iter().copied());
        batch.catalog.extend(j.catalog.iter().cloned());
        if let Some(id) = &j.client_id {
            batch.client_ids.push((id.clone(), j.lsn));
        }
    }
    cps.last_lsn = last;
    if let Err(e) = shared.store.apply(&batch) {
        let reason = format!("page store write failed after the log sync: {e}");
        poison(shared, reason.clone());
        for j in jobs {
            let _ = j.done.send(Err(DbError::Poisoned(format!(
                "{reason}; LSN {} is durable in the protection log and will be redone at the next open",
                j.lsn
            ))));
        }
        return;
    }
    {
        let mut st = lock(&shared.state);
        for j in &jobs {
            for (fnr, isn, _) in &j.records {
                if let Some((lsn, _)) = st.overlay.get(&(*fnr, *isn)) {
                    if *lsn == j.lsn {
                        st.overlay.remove(&(*fnr, *isn));
                    }
                }
            }
            if let Some(id) = &j.client_id {
                st.pending_ids.remove(id);
            }
        }
    }
    shared.applied.send_replace(last);
    for j in jobs {
        let _ = j.done.send(Ok(()));
    }
    if writer.needs_rotation() {
        if let Err(e) = writer.rotate(&cps.checkpoint(false)) {
            poison(shared, format!("cannot start a new log segment: {e}"));
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
