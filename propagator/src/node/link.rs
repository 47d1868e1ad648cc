//! The replicate side of a replication link: open (confirmation, digest,
//! load progress), loaded chunks, and replicated batches, each applied with
//! its confirmation record in one transaction.

use super::session::Step;
use super::*;
use crate::confirmation::{
    confirmation_to_record, decode as decode_confirmation, load_progress_from_record,
    load_progress_to_record, Decoded,
};
use crate::database::ReplicatedChange;

impl Link {
    /// The record of this link's replicate while a load is in progress.
    pub(super) fn progress_record(&self, p: &LoadProgress) -> Record {
        load_progress_to_record(&self.name, self.master_db, self.master, p)
    }
}

impl Node {
    pub(super) async fn link(
        self: &Arc<Self>,
        conv: &mut Conversation,
        r: LinkRequest,
    ) -> Response {
        match r {
            LinkRequest::LinkOpen {
                replicate,
                file,
                confirmation,
                master_db,
                master,
            } => {
                self.link_open(conv, replicate, file, confirmation, master_db, master)
                    .await
            }
            LinkRequest::LoadBegin {
                id,
                snapshot,
                source,
                rewrite,
            } => self.load_begin(conv, id, snapshot, source, rewrite).await,
            LinkRequest::LoadChunk {
                id,
                from,
                to,
                records,
                count,
                digest,
                last,
            } => {
                self.load_chunk(conv, id, from, to, records, (count, digest), last)
                    .await
            }
            LinkRequest::LinkApply {
                follows,
                changes,
                confirmation,
                txn_ends,
            } => match self
                .link_apply(conv, follows, changes, confirmation, txn_ends)
                .await
            {
                Step::Now(r) => r,
                Step::Later(f) => f.await,
            },
        }
    }

    pub(super) async fn link_open(
        &self,
        conv: &mut Conversation,
        replicate: String,
        file: Fnr,
        confirmation: Fnr,
        master_db: DbId,
        master: Fnr,
    ) -> Response {
        let owner = self.link_owner(file);
        let _owner = owner.lock().await;
        let db = self.db.clone();
        let r = blocking(move || {
            let conf_def = db.file(confirmation)?;
            if conf_def.role != Role::Confirmation {
                return Err(DbError::BadDefinition(format!(
                    "file {confirmation} is a {} file, not a confirmation file",
                    conf_def.role.name()
                )));
            }
            // The confirmation and the file's digest, read together.
            let (conf, info) = db.read_with_info(confirmation, Isn(u64::from(file.0)), file)?;
            if info.def.role != Role::Replicate {
                return Err(DbError::BadDefinition(format!(
                    "file {file} is a {} file, not a replicate",
                    info.def.role.name()
                )));
            }
            let (conf, load) = match conf.as_ref().map(decode_confirmation).transpose() {
                Ok(None) => (None, None),
                Ok(Some(Decoded::Loading(p))) => (None, Some(p)),
                Ok(Some(Decoded::Confirmed(c))) => (Some(c), None),
                Err(e) => return Err(DbError::BadDefinition(e.to_string())),
            };
            let (count, digest) = match &info.damaged {
                Some(_) => db.content_digest(file)?,
                None => (info.meta.count, info.meta.digest),
            };
            Ok(LinkState {
                confirmation: conf,
                digest,
                count,
                damaged: info.damaged,
                load,
            })
        })
        .await;
        match r {
            Ok(state) => {
                if let Some(c) = &state.confirmation {
                    if c.replicate != replicate || c.master_db != master_db || c.master != master {
                        return Response::error(format!(
                            "replicate file {file} confirms {:?} of master {} on database {}, not {replicate:?} of master {master} on database {master_db}",
                            c.replicate, c.master, c.master_db
                        ));
                    }
                }
                conv.link = Some(Link {
                    name: replicate,
                    master_db,
                    master,
                    file,
                    confirmation,
                    damaged: state.damaged.is_some(),
                });
                Response::Link(state)
            }
            Err(e) => Response::error(e),
        }
    }

    pub(super) async fn load_begin(
        &self,
        conv: &mut Conversation,
        id: String,
        snapshot: Seq,
        source: String,
        rewrite: bool,
    ) -> Response {
        let Some(link) = conv.link.clone() else {
            return Response::error("LoadBegin before LinkOpen");
        };
        let owner = self.link_owner(link.file);
        let _owner = owner.lock().await;
        let p = LoadProgress {
            id,
            snapshot,
            source,
            rewrite,
            next: Isn(1),
            count: 0,
            digest: crate::Digest::default(),
            chunks: 0,
        };
        let rec = link.progress_record(&p);
        let db = self.db.clone();
        let link2 = link.clone();
        let r = blocking(move || {
            let link = link2;
            // A damaged replicate is reloaded whole: what it holds now is
            // the baseline the chunks replace, and the last chunk proves the
            // result against the master's digest.
            db.settle()?;
            if db.file_info(link.file)?.damaged.is_some() {
                let m = db.rebase_replicate(link.file)?;
                tracing::warn!(replicate = %link.name, file = %link.file, count = m.count,
                    "damaged replicate rebased on what it holds; the load replaces it");
            }
            db.put_engine_record(link.confirmation, Isn(u64::from(link.file.0)), rec)
        })
        .await;
        match r {
            Ok(_) => {
                if let Some(l) = conv.link.as_mut() {
                    // Rebased if it was damaged: writable again.
                    l.damaged = false;
                }
                tracing::info!(replicate = %link.name, id = %p.id, snapshot = %p.snapshot, "load begins");
                Response::Loading(p)
            }
            Err(e) => Response::error(e),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) async fn load_chunk(
        &self,
        conv: &mut Conversation,
        id: String,
        from: Isn,
        to: Option<Isn>,
        records: Vec<(Isn, ByteBuf)>,
        sum: (u64, crate::Digest),
        last: Option<Confirmation>,
    ) -> Response {
        let Some(link) = conv.link.clone() else {
            return Response::error("LoadChunk before LinkOpen");
        };
        let records: Vec<(Isn, Vec<u8>)> = records
            .into_iter()
            .map(|(i, b)| (i, b.into_vec()))
            .collect();
        // The chunk is what its sender computed, or nothing is written.
        let mut m = crate::FileMeta::new(link.file);
        for (i, b) in &records {
            m.change(*i, None, Some(b));
        }
        if (m.count, m.digest) != sum {
            return Response::error(format!(
                "loaded chunk [{from}, …) arrived with {} records and digest {}, its sender computed {} and {}: refused",
                m.count, m.digest, sum.0, sum.1
            ));
        }
        if last.is_some() != to.is_none() {
            return Response::error(
                "only the last chunk of a load (open-ended) carries the confirmation",
            );
        }
        let owner = self.link_owner(link.file);
        let _owner = owner.lock().await;
        let db = self.db.clone();
        let cisn = Isn(u64::from(link.file.0));
        let r = blocking(move || {
            let (rec, _) = db.read_with_info(link.confirmation, cisn, link.file)?;
            let current = match rec.as_ref().map(load_progress_from_record) {
                Some(Ok(p)) if p.id == id => p,
                _ => {
                    return Err(DbError::LoadOutOfSequence {
                        fnr: link.confirmation,
                        id,
                        next: from.0,
                        found: "no load with that id in progress".into(),
                    })
                }
            };
            let mut total = crate::FileMeta::new(link.file);
            total.count = current.count;
            total.digest = current.digest;
            for (i, b) in &records {
                total.change(*i, None, Some(b));
            }
            let next = LoadProgress {
                next: to.unwrap_or(Isn(u64::MAX)),
                count: total.count,
                digest: total.digest,
                chunks: current.chunks + 1,
                ..current.clone()
            };
            let (progress, expect) = match &last {
                Some(c) => {
                    if (c.count, c.digest) != (total.count, total.digest) {
                        return Err(DbError::BadDefinition(format!(
                            "the load's confirmation says {} records with digest {}, the chunks add up to {} with digest {}",
                            c.count, c.digest, total.count, total.digest
                        )));
                    }
                    let mut c = c.clone();
                    c.replicate = link.name.clone();
                    c.master_db = link.master_db;
                    c.master = link.master;
                    c.applied_us = chrono::Utc::now().timestamp_micros();
                    c.loaded_by = Some(current.id.clone());
                    (confirmation_to_record(&c), Some((total.count, total.digest)))
                }
                None => (link.progress_record(&next), None),
            };
            let guard = crate::database::PutGuard::Load {
                id: current.id.clone(),
                next: from.0,
            };
            let (info, stats) = db.load_range(
                link.file,
                from,
                to,
                records,
                current.rewrite,
                (link.confirmation, cisn, progress, guard),
                expect,
            )?;
            let meta = match meta_of(&info, link.file) {
                Some(m) => m,
                None => db.file_info(link.file)?.meta,
            };
            Ok((next, stats, meta))
        })
        .await;
        match r {
            Ok((progress, stats, meta)) => Response::LoadAck {
                progress,
                stats,
                count: meta.count,
                digest: meta.digest,
            },
            Err(e) => Response::error(e),
        }
    }

    /// Applies a batch of a replication link. The batch is visible once it
    /// is queued for the group commit; the answer (its confirmation
    /// durable) follows its sync. The link's next batch is read and applied
    /// meanwhile ([`Step::Later`]), so batches that arrive together share a
    /// sync and none waits for the one before it to be synced to be seen.
    pub(super) async fn link_apply(
        self: &Arc<Self>,
        conv: &mut Conversation,
        follows: Seq,
        changes: Vec<crate::wire::ReplChange>,
        mut conf: Confirmation,
        txn_ends: Vec<(Seq, i64)>,
    ) -> Step {
        let Some(link) = conv.link.clone() else {
            return Step::Now(Response::error("LinkApply before LinkOpen"));
        };
        if link.damaged {
            return Step::Now(Response::error(Failure::new(
                ErrorCode::Damaged,
                format!("replicate file {} is damaged", link.file),
            )));
        }
        // The confirmation names what the link was opened for, whatever the peer says.
        conf.replicate = link.name.clone();
        conf.master_db = link.master_db;
        conf.master = link.master;
        if conf.seq <= follows {
            return Step::Now(Response::error(format!(
                "batch ends at seq {} but follows seq {follows}",
                conf.seq
            )));
        }
        // One apply at a time per replicate until it is queued: a link
        // being replaced may still be applying what it had buffered.
        let owner = self.link_owner(link.file).lock_owned().await;
        let db = self.db.clone();
        conf.applied_us = chrono::Utc::now().timestamp_micros();
        let seq = conf.seq;
        let name = conf.replicate.clone();
        // Resolved and queued on a blocking thread, which then waits for
        // the sync: the thread that queues an entry is the one that waits
        // for it (and leads its group when its turn comes), so a queued
        // entry never waits for a free thread of the pool to be led.
        let small = changes.len() <= INLINE_CHANGES
            && changes
                .iter()
                .map(|c| {
                    c.before.as_ref().map_or(0, |b| b.len())
                        + c.after.as_ref().map_or(0, |a| a.len())
                })
                .sum::<usize>()
                <= INLINE_BYTES;
        let run = if small {
            // A small batch (what a link carries at the tail) is resolved
            // and queued right here: it is visible one thread hand-off
            // sooner. Queueing never waits for the log, and a few records'
            // before-images are read in microseconds. Only the wait for
            // the sync (and leading it) goes to a blocking thread.
            let queued = queue_batch(&db, &link, follows, changes, &conf);
            drop(owner);
            tokio::task::spawn_blocking(move || {
                let (pending, meta) = queued?;
                Ok::<_, DbError>((pending.wait()?, meta?))
            })
        } else {
            let (queued_tx, queued) = tokio::sync::oneshot::channel::<()>();
            let run = tokio::task::spawn_blocking(move || {
                let queued = queue_batch(&db, &link, follows, changes, &conf);
                drop(owner);
                let _ = queued_tx.send(());
                let (pending, meta) = queued?;
                Ok::<_, DbError>((pending.wait()?, meta?))
            });
            // The next request is read once this batch is queued (or failed).
            let _ = queued.await;
            run
        };
        let node = self.clone();
        Step::Later(Box::pin(async move {
            let r = match run.await {
                Ok(r) => r.map_err(OpError::from),
                Err(e) => Err(OpError::from(errors::Internal(e.to_string()))),
            };
            match r {
                Ok((info, meta)) => {
                    let now = chrono::Utc::now().timestamp_micros();
                    let mut lag = lock(&node.lag);
                    let q = lag.entry(name).or_default();
                    for (s, t) in txn_ends {
                        if q.len() == LAG_SAMPLES {
                            q.pop_front();
                        }
                        // In seq order: pipelined batches may be answered
                        // (and get here) in another order than they synced.
                        let at = q.iter().rposition(|x| x.0 <= s).map_or(0, |p| p + 1);
                        q.insert(at, (s, t, info.visible_us, now));
                    }
                    Response::Applied {
                        applied_seq: seq,
                        durable_seq: seq,
                        digest: meta.digest,
                        count: meta.count,
                        lsn: info.lsn,
                    }
                }
                Err(e) => Response::error(e),
            }
        }))
    }
}

/// A link batch of at most this many changes and record bytes is queued on
/// the reactor (see [`Node::link_apply`]).
const INLINE_CHANGES: usize = 16;
const INLINE_BYTES: usize = 16 << 10;

/// Resolves and queues a link batch with its confirmation. The file's meta
/// after it is taken while no other batch of this replicate can be queued
/// behind it (the caller holds the apply lock): a batch that changed no
/// replicate record leaves the meta as it was.
#[allow(clippy::type_complexity)]
fn queue_batch(
    db: &Database,
    link: &Link,
    follows: Seq,
    changes: Vec<crate::wire::ReplChange>,
    conf: &Confirmation,
) -> Result<
    (
        crate::database::PendingCommit,
        Result<crate::FileMeta, DbError>,
    ),
    DbError,
> {
    let changes = changes
        .into_iter()
        .map(|c| {
            ReplicatedChange::new(
                c.isn,
                c.before.map(ByteBuf::into_vec),
                c.after.map(ByteBuf::into_vec),
            )
        })
        .collect();
    let rec = confirmation_to_record(conf);
    let pending = db.apply_replicated_queued(
        link.file,
        follows,
        changes,
        (link.confirmation, Isn(u64::from(link.file.0)), rec),
    )?;
    let meta = match pending.info().and_then(|i| meta_of(i, link.file)) {
        Some(m) => Ok(m),
        None => db.file_info(link.file).map(|i| i.meta),
    };
    Ok((pending, meta))
}

pub(super) fn meta_of(info: &CommitInfo, fnr: Fnr) -> Option<crate::FileMeta> {
    info.metas.iter().find(|m| m.fnr == fnr).copied()
}
