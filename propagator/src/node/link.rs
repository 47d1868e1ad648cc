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
            LinkRequest::LinkSync { seq } => match self.link_sync(conv, seq) {
                Step::Now(r) => r,
                Step::Later(f) => f.await,
            },
            LinkRequest::Hold {
                hold,
                level,
                releasing,
            } => self.link_hold(conv, hold, level, releasing).await,
        }
    }

    /// Whether the node `who` may open this link: the topology this node
    /// holds names this replicate here, fed from `who`'s database.
    fn link_allowed(
        &self,
        who: &crate::net::Identity,
        replicate: &str,
        file: Fnr,
        confirmation: Fnr,
        master_db: DbId,
        master: Fnr,
    ) -> Result<(), OpError> {
        let refused = |why: String| {
            Err(OpError::NotAllowed(format!(
                "replication link for {replicate:?} refused: {why}"
            )))
        };
        if who.db != Some(master_db) {
            return refused(format!("{who} cannot open a link as database {master_db}"));
        }
        let me = self.db.dbid();
        let topo = lock(&self.topology);
        let Some(v) = topo.as_ref() else {
            return refused("this node holds no topology".into());
        };
        let Some(r) = v.replicates.iter().find(|r| r.def.name == replicate) else {
            return refused("the topology this node holds has no such replicate".into());
        };
        let d = &r.def;
        let want = (
            d.master_database,
            d.master,
            d.database,
            d.file,
            d.confirmation,
        );
        let got = (master_db.0, master.0, me.0, file.0, confirmation.0);
        if want != got {
            return refused(format!(
                "the topology has it as master file {} of database {} into file {} (confirmation {}) of database {}; the link asked for master file {master} of database {master_db} into file {file} (confirmation {confirmation}) of database {me}",
                d.master, d.master_database, d.file, d.confirmation, d.database
            ));
        }
        Ok(())
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
        if lock(&self.topology).is_none() {
            return Response::error(Failure::new(
                ErrorCode::Uninitialized,
                format!(
                    "database {} holds no topology: an uninitialized site (etp admin apply re-creates its files; its replicates are then loaded)",
                    self.db.dbid()
                ),
            ));
        }
        if let Some(who) = &conv.who {
            if let Err(why) =
                self.link_allowed(who, &replicate, file, confirmation, master_db, master)
            {
                self.conns
                    .not_allowed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(certificate = %who.name, replicate = %replicate, reason = %why, "replication link refused");
                return Response::error(why);
            }
        }
        let owner = self.link_owner(file);
        let _owner = owner.lock().await;
        let db = self.db.clone();
        // A batch another connection applied may not be durable yet: the
        // state reported is what a crash would leave (no batch of this
        // replicate can be queued meanwhile: the apply lock is held).
        conv.syncer = None;
        let r = blocking(move || {
            db.wait_applied()?;
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
                hold: info.def.hold,
            })
        })
        .await;
        match r {
            Ok(mut state) => {
                // Repointed: this node's topology names the link's master
                // for this replicate, but the replicate confirms another
                // (its master failed over to a full replicate): what it
                // holds is no level of this master, and only a load makes
                // it one.
                let repointed = state.confirmation.as_ref().is_some_and(|c| {
                    (c.master_db != master_db || c.master != master)
                        && lock(&self.topology).as_ref().is_some_and(|v| {
                            v.replicates.iter().any(|r| {
                                r.def.name == replicate
                                    && r.def.master_database == master_db.0
                                    && r.def.master == master.0
                                    && r.def.file == file.0
                                    && r.def.database == self.db.dbid().0
                            })
                        })
                });
                if repointed {
                    tracing::warn!(replicate = %replicate, %master_db, %master,
                        "replicate repointed to another master: its confirmation names the old one; it needs a load");
                    state.confirmation = None;
                }
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
            db.settle()?;
            let info = db.file_info(link.file)?;
            let cisn = Isn(u64::from(link.file.0));
            if rewrite
                && info.def.restoring.is_none()
                && (info.meta.count > 0 || info.meta.next_isn > 1)
            {
                // Every record is written again: the file is emptied in the
                // commit that begins the load, and each chunk then lies at
                // or above its next isn and goes to the page store in bulk,
                // instead of being compared with what it replaces and
                // logged record by record. The last chunk proves the file
                // against the master's digest, as any load's does.
                let c = db.clear_for_load(link.file, (link.confirmation, cisn, rec))?;
                tracing::info!(replicate = %link.name, file = %link.file, count = info.meta.count,
                    "replicate emptied for a reload that writes every record");
                return Ok(c);
            }
            // A damaged replicate is reloaded whole: what it holds now is
            // the baseline the chunks replace, and the last chunk proves the
            // result against the master's digest.
            if info.damaged.is_some() {
                let m = db.rebase_replicate(link.file)?;
                tracing::warn!(replicate = %link.name, file = %link.file, count = m.count,
                    "damaged replicate rebased on what it holds; the load replaces it");
            }
            db.put_engine_record(link.confirmation, cisn, rec)
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
        let m = crate::database::chunk_sum(&records);
        if m != sum {
            return Response::error(format!(
                "loaded chunk [{from}, …) arrived with {} records and digest {}, its sender computed {} and {}: refused",
                m.0, m.1, sum.0, sum.1
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
        let name = link.name.clone();
        let r = blocking(move || {
            let (rec, info) = db.read_with_info(link.confirmation, cisn, link.file)?;
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
            // Damaged since the load began (a bulk chunk written but never
            // committed, found by the rescan after a crash): rebased on
            // what it holds, as at the load's start. The chunks still to
            // come replace everything from here, and the last one proves
            // the whole file against the master's digest.
            // Only for this load's next chunk, and never a file a restore
            // is writing (a rebase would end its restore mark).
            let rebased = info.damaged.is_some()
                && info.def.restoring.is_none()
                && current.next == from;
            if rebased {
                db.settle()?;
                // A chunk written but never committed: its records go, and
                // the chunks still to come stay bulk — if what lies below
                // is exactly what the file counts. Else the file is
                // rebased on what it holds.
                if db.clear_resumed_load(link.file, from)?.is_some() {
                    tracing::warn!(replicate = %link.name, file = %link.file, at = %from,
                        "damaged replicate emptied from the load's next isn (records of a chunk never committed); the load goes on in bulk");
                } else {
                    let m = db.rebase_replicate(link.file)?;
                    tracing::warn!(replicate = %link.name, file = %link.file, count = m.count, at = %from,
                        "damaged replicate rebased on what it holds mid-load; the load's last chunk proves it");
                }
            }
            let mut total = crate::FileMeta::new(link.file);
            total.count = current.count;
            total.digest = current.digest;
            total.add_sum(m.0, m.1);
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
                Some(m),
            )?;
            let meta = match meta_of(&info, link.file) {
                Some(m) => m,
                None => db.file_info(link.file)?.meta,
            };
            Ok((next, stats, meta, rebased))
        })
        .await;
        match r {
            Ok((progress, stats, meta, rebased)) => {
                if rebased {
                    if let Some(l) = conv.link.as_mut() {
                        l.damaged = false;
                    }
                }
                // What it applied, in this node's log every few seconds
                // (its master's logs what it sent likewise), and its end.
                let due = conv
                    .load_said
                    .is_none_or(|t| t.elapsed() >= super::load::PROGRESS_EVERY);
                if to.is_none() {
                    tracing::info!(replicate = %name, id = %progress.id, records = meta.count,
                        chunks = progress.chunks, "load applied: the replicate confirms the load's snapshot");
                    conv.load_said = None;
                } else if due {
                    tracing::info!(replicate = %name, id = %progress.id, records = progress.count,
                        chunks = progress.chunks, next = %progress.next, "load progress applied");
                    conv.load_said = Some(std::time::Instant::now());
                }
                Response::LoadAck {
                    progress,
                    stats,
                    count: meta.count,
                    digest: meta.digest,
                }
            }
            Err(e) => Response::error(e),
        }
    }

    /// Applies a batch of a replication link and answers as soon as it is
    /// queued for the group commit: it is visible from then on. The wait
    /// for its sync goes to the connection's [`Syncer`], which reports the
    /// link's durable seq in later answers (and to a [`LinkRequest::LinkSync`]).
    /// So a replicate answers without a thread hand-off per batch, and the
    /// batches that arrive while its log syncs share the next sync, as
    /// PostgreSQL's apply workers report their flush position behind their
    /// write position.
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
        let syncer = match &conv.syncer {
            Some(s) => s.clone(),
            None => match Syncer::start(self.clone(), follows, link.name.clone()) {
                Ok(s) => conv.syncer.insert(s).clone(),
                Err(e) => {
                    return Step::Now(Response::error(errors::Internal(format!(
                        "cannot start the link's sync thread: {e}"
                    ))))
                }
            },
        };
        // One apply at a time per replicate until it is queued: a link
        // being replaced may still be applying what it had buffered.
        let owner = self.link_owner(link.file).lock_owned().await;
        let db = self.db.clone();
        conf.applied_us = chrono::Utc::now().timestamp_micros();
        let seq = conf.seq;
        let bytes: usize = changes
            .iter()
            .map(crate::wire::ReplChange::image_bytes)
            .sum();
        let small = changes.len() <= INLINE_CHANGES && bytes <= INLINE_BYTES;
        let queue = move || {
            let q = queue_batch(&db, &link, follows, changes, &conf);
            drop(owner);
            q
        };
        let queued = if small {
            // A small batch (what a link carries at the tail) is resolved
            // and queued right here, without a thread hand-off: queueing
            // never waits for the log, and a few records' before-images
            // are read in microseconds.
            queue()
        } else {
            match tokio::task::spawn_blocking(queue).await {
                Ok(q) => q,
                Err(e) => return Step::Now(Response::error(errors::Internal(e.to_string()))),
            }
        };
        let (pending, meta) = match queued {
            Ok(q) => q,
            Err(e) => return Step::Now(Response::error(e)),
        };
        let lsn = pending.lsn();
        let visible_us = pending.info().map_or(0, |i| i.visible_us);
        // Queued: it commits (or the database fails) whatever is answered.
        let handed = syncer.hand(Queued {
            seq,
            pending,
            txn_ends,
            visible_us,
            bytes,
        });
        let answer = move |durable: Result<Seq, OpError>| match (durable, meta) {
            (Err(e), _) => Response::error(e),
            (Ok(_), Err(e)) => Response::error(e),
            (Ok(durable_seq), Ok(meta)) => Response::Applied {
                applied_seq: seq,
                durable_seq,
                digest: meta.digest,
                count: meta.count,
                lsn,
            },
        };
        match handed {
            // Over MAX_UNSYNCED_BYTES of records queued and not yet
            // durable (a backlog drains faster than the replicate's disk
            // syncs): the answer waits for this batch's sync, so the
            // feeder's window holds the link back and the queue and
            // overlay stay bounded.
            Ok(Handed { unsynced, .. }) if unsynced > MAX_UNSYNCED_BYTES => {
                Step::Later(Box::pin(async move { answer(syncer.wait(seq).await) }))
            }
            Ok(Handed { durable, .. }) => Step::Now(answer(Ok(durable))),
            Err(e) => Step::Now(answer(Err(e))),
        }
    }

    /// Answers once the link's batches up to `seq` are durable. The answer
    /// comes [`Step::Later`]: batches sent behind it are applied meanwhile.
    pub(super) fn link_sync(&self, conv: &mut Conversation, seq: Seq) -> Step {
        if conv.link.is_none() {
            return Step::Now(Response::error("LinkSync before LinkOpen"));
        }
        let Some(syncer) = conv.syncer.clone() else {
            return Step::Now(Response::error(format!(
                "LinkSync for seq {seq}: no batch was applied on this connection"
            )));
        };
        Step::Later(Box::pin(async move {
            match syncer.wait(seq).await {
                Ok(durable_seq) => Response::Synced { durable_seq },
                Err(e) => Response::error(e),
            }
        }))
    }
}

/// A batch queued and waiting for its sync.
pub(super) struct Queued {
    seq: Seq,
    pending: crate::database::PendingCommit,
    txn_ends: Vec<(Seq, i64)>,
    visible_us: i64,
    /// Its record bytes.
    bytes: usize,
}

/// What handing a batch to the sync thread found.
struct Handed {
    /// The link's durable seq so far.
    durable: Seq,
    /// Record bytes handed over and not yet durable, this batch's included.
    unsynced: usize,
}

/// Record bytes a link may have applied and not yet durable before its
/// answers wait for the syncs (see [`Node::link_apply`]).
const MAX_UNSYNCED_BYTES: usize = 4 << 20;

/// What a link's sync thread reports: the last seq it saw durable, or why
/// none will be.
#[derive(Clone)]
pub(super) enum SyncState {
    Durable(Seq),
    Failed(String),
}

/// Why a link's batch will never be durable: its database failed.
fn sync_failed(why: String) -> OpError {
    DbError::Poisoned(why).into()
}

/// The thread that waits for a link's queued batches to be durable, in
/// order (leading their group commit when its turn comes), and reports the
/// durable seq. One per connection that applies batches: it ends once the
/// connection is gone and every batch handed to it is durable.
#[derive(Clone)]
pub(super) struct Syncer {
    tx: std::sync::mpsc::Sender<Queued>,
    state: tokio::sync::watch::Receiver<SyncState>,
    unsynced: Arc<std::sync::atomic::AtomicUsize>,
}

impl Syncer {
    /// Starts the thread of a link to `replicate` opened at seq `from`.
    fn start(node: Arc<Node>, from: Seq, replicate: String) -> std::io::Result<Syncer> {
        let (tx, rx) = std::sync::mpsc::channel::<Queued>();
        let (state_tx, state) = tokio::sync::watch::channel(SyncState::Durable(from));
        let unsynced = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let left = unsynced.clone();
        std::thread::Builder::new()
            .name("link-sync".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    // Every batch queued meanwhile: the first one's sync
                    // (which this thread may lead) takes them all along.
                    let mut run = vec![first];
                    run.extend(rx.try_iter());
                    let mut last = None;
                    for b in run {
                        let waited = b.pending.wait();
                        left.fetch_sub(b.bytes, std::sync::atomic::Ordering::Relaxed);
                        match waited {
                            Ok(_) => {
                                record_lag(&node, &replicate, &b.txn_ends, b.visible_us);
                                last = Some(b.seq);
                            }
                            // For good: a failed state is never replaced.
                            Err(e) => {
                                let why = match e {
                                    DbError::Poisoned(why) | DbError::OutcomeUnknown(why) => why,
                                    other => other.to_string(),
                                };
                                state_tx.send_replace(SyncState::Failed(why));
                            }
                        }
                    }
                    if let Some(seq) = last {
                        state_tx.send_if_modified(|s| match s {
                            SyncState::Durable(d) if *d < seq => {
                                *d = seq;
                                true
                            }
                            _ => false,
                        });
                    }
                }
            })?;
        Ok(Syncer {
            tx,
            state,
            unsynced,
        })
    }

    /// The link's syncs, as they happen: every one since the thread began
    /// (this receiver, never read, has seen only the first state), so a
    /// sync done before the connection asks for them is still reported.
    pub(super) fn reports(&self) -> tokio::sync::watch::Receiver<SyncState> {
        self.state.clone()
    }

    /// Hands a queued batch over; the durable seq so far.
    fn hand(&self, b: Queued) -> Result<Handed, OpError> {
        let state = self.state.borrow().clone();
        match state {
            SyncState::Failed(e) => {
                // Its commit is finished off the reactor (a drop waits).
                drop(tokio::task::spawn_blocking(move || drop(b)));
                Err(sync_failed(e))
            }
            SyncState::Durable(durable) => {
                let bytes = b.bytes;
                let before = self
                    .unsynced
                    .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
                match self.tx.send(b) {
                    Ok(()) => Ok(Handed {
                        durable,
                        unsynced: before + bytes,
                    }),
                    // The thread is gone (it panicked): the batch's commit is
                    // still finished, off the reactor (a drop waits for it).
                    Err(std::sync::mpsc::SendError(b)) => {
                        self.unsynced
                            .fetch_sub(bytes, std::sync::atomic::Ordering::Relaxed);
                        drop(tokio::task::spawn_blocking(move || drop(b)));
                        Err(errors::Internal("the link's sync thread stopped".into()).into())
                    }
                }
            }
        }
    }

    /// Waits until `seq` is durable.
    async fn wait(&self, seq: Seq) -> Result<Seq, OpError> {
        let mut rx = self.state.clone();
        let r = rx
            .wait_for(|s| match s {
                SyncState::Durable(d) => *d >= seq,
                SyncState::Failed(_) => true,
            })
            .await
            .map(|s| s.clone());
        match r {
            Ok(SyncState::Durable(d)) => Ok(d),
            Ok(SyncState::Failed(e)) => Err(sync_failed(e)),
            Err(_) => Err(errors::Internal("the link's sync thread stopped".into()).into()),
        }
    }
}

/// Records the lag of each master transaction a durable batch ended.
fn record_lag(node: &Node, replicate: &str, txn_ends: &[(Seq, i64)], visible_us: i64) {
    if txn_ends.is_empty() {
        return;
    }
    let now = chrono::Utc::now().timestamp_micros();
    let mut lag = lock(&node.lag);
    let q = lag.entry(replicate.to_string()).or_default();
    for &(s, t) in txn_ends {
        if q.len() == LAG_SAMPLES {
            q.pop_front();
        }
        let at = q.iter().rposition(|x| x.0 <= s).map_or(0, |p| p + 1);
        q.insert(at, (s, t, visible_us, now));
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
