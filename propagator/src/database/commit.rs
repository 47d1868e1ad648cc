//! The commit path: a session's buffered commands resolved against the
//! latest state under the state lock (before-images, after-images, derived
//! log records, metas), given an LSN and queued for the group commit; and
//! the catalog changes (create a file, define a master) that go the same way.

use super::writer::Ticket;
use super::*;
use crate::catalog::Damage;

/// A transaction queued for the group commit, not yet known durable.
///
/// [`PendingCommit::wait`] answers once its group is synced (or failed).
/// Dropped without a wait, it waits on drop: a queued entry may be the one
/// that must lead its group, and the queue stalls until somebody does.
#[must_use = "a queued commit is acknowledged only by waiting for it"]
pub struct PendingCommit {
    db: Database,
    ticket: Option<Ticket>,
    info: Option<CommitInfo>,
}

impl PendingCommit {
    /// The commit's LSN (assigned when it was queued).
    pub fn lsn(&self) -> Lsn {
        self.info.as_ref().map_or(Lsn(0), |i| i.lsn)
    }

    /// What the commit will answer once durable (its metas, seqs, and when
    /// it became visible), known from the moment it was queued.
    pub fn info(&self) -> Option<&CommitInfo> {
        self.info.as_ref()
    }

    /// Blocks until the commit is durable; its outcome.
    pub fn wait(mut self) -> Result<CommitInfo, DbError> {
        if let Some(t) = self.ticket.take() {
            let shared = self.db.shared();
            shared.committer.finish(shared, t)?;
        }
        self.info.take().ok_or(DbError::Closed)
    }
}

impl Drop for PendingCommit {
    fn drop(&mut self) {
        if let Some(t) = self.ticket.take() {
            let shared = self.db.shared();
            let _ = shared.committer.finish(shared, t);
        }
    }
}

impl Database {
    /// Stores or replaces an engine-written record (administration and
    /// confirmation files), as one transaction.
    pub fn put_engine_record(
        &self,
        fnr: Fnr,
        isn: Isn,
        record: Record,
    ) -> Result<CommitInfo, DbError> {
        self.commit(
            Vec::new(),
            vec![Op::Put {
                fnr,
                isn,
                record,
                follows: None,
            }],
            None,
        )
    }

    /// Checks a store a session is about to buffer, under one lock: the
    /// file is one a client may write and undamaged, and the isn is free in
    /// the latest state (committed or committing). With no isn given the
    /// next one is handed out; it lies above every isn the file has held, so
    /// it is not looked up. Advisory: ET checks again. Also says whether the
    /// isn is taken.
    pub(crate) fn prepare_store(&self, fnr: Fnr, isn: Option<Isn>) -> Result<(Isn, bool), DbError> {
        let mut st = lock(&self.shared().state);
        Self::writable(&st, fnr)?;
        match isn {
            Some(isn) if isn.0 > super::MAX_STORE_ISN => Err(DbError::IsnTooLarge {
                fnr,
                isn,
                max: super::MAX_STORE_ISN,
            }),
            Some(isn) => {
                // At or above the file's next isn (committed or committing)
                // no record holds it: no page-store lookup.
                let next = st.metas.get(&fnr).map(|m| m.next_isn);
                if next.is_some_and(|n| n < u64::MAX && isn.0 >= n) {
                    return Ok((isn, false));
                }
                let view = LatestView {
                    st: &st,
                    store: &self.shared().store,
                    prefetched: None,
                };
                Ok((isn, view.get(fnr, isn)?.is_some()))
            }
            None => {
                let from_meta = st.metas.get(&fnr).map(|m| m.next_isn).unwrap_or(1);
                let next = st.next_isn.entry(fnr).or_insert(1);
                let isn = (*next).max(from_meta);
                // The last isn is never handed out: the next isn saturates
                // there, so it could be handed out again.
                if isn == u64::MAX {
                    return Err(DbError::TooLarge(format!(
                        "file {fnr} has no isn left to hand out"
                    )));
                }
                *next = isn + 1;
                Ok((Isn(isn), false))
            }
        }
    }

    /// Refuses a file a client may not write (unknown, damaged, or of a
    /// role only the engine writes).
    pub(super) fn writable(st: &Latest, fnr: Fnr) -> Result<(), DbError> {
        let def = Self::usable_def(st, fnr)?;
        if !def.role.client_writable() {
            return Err(DbError::ReadOnlyFile {
                fnr,
                role: def.role.clone(),
            });
        }
        Ok(())
    }

    /// The latest (committed or committing) bytes of a record, for a
    /// session's own checks, with the last LSN as it read them (see
    /// [`Seen`]); refuses files a client may not write.
    pub(crate) fn writable_get(&self, fnr: Fnr, isn: Isn) -> Result<Option<Seen>, DbError> {
        let st = lock(&self.shared().state);
        Self::writable(&st, fnr)?;
        let bytes = LatestView {
            st: &st,
            store: &self.shared().store,
            prefetched: None,
        }
        .get(fnr, isn)?;
        Ok(bytes.map(|bytes| Seen {
            at: st.last_lsn,
            bytes,
        }))
    }

    /// What [`Database::writable_get`] reads for each isn of `fnr` in
    /// `[lo, hi]`, by one scan of the page store under one hold of the
    /// state lock (the overlay's writes over it): the records there, each
    /// with the LSN it was read at. An isn with no record is not in the map.
    pub(crate) fn writable_get_range(
        &self,
        fnr: Fnr,
        lo: Isn,
        hi: Isn,
    ) -> Result<HashMap<Isn, Seen>, DbError> {
        let st = lock(&self.shared().state);
        Self::writable(&st, fnr)?;
        let mut found = stored_range(&self.shared().store, fnr, lo, hi)?;
        // Written by commits the applier has not brought to the page store.
        if !st.overlay.is_empty() {
            for isn in lo.0..=hi.0 {
                if let Some((_, v)) = st.overlay.get(&(fnr, Isn(isn))) {
                    match v {
                        Some(v) => found.insert(Isn(isn), v.clone()),
                        None => found.remove(&Isn(isn)),
                    };
                }
            }
        }
        let at = st.last_lsn;
        drop(st);
        Ok(found
            .into_iter()
            .map(|(isn, bytes)| (isn, Seen { at, bytes }))
            .collect())
    }

    /// Appends the log records a commit derived to their logs' tails; any
    /// other write to a log file, or a change of its definition, empties
    /// that log's tail. Called under the state lock, before the commit is
    /// visible, so a tail never disagrees with the page store.
    fn keep_tails(
        shared: &super::Shared,
        lsn: Lsn,
        rewritten: impl Iterator<Item = Fnr>,
        logs: &[(Fnr, std::sync::Arc<crate::LogRecord>)],
    ) {
        let mut tails = lock(&shared.tails);
        let mut any = false;
        for fnr in rewritten {
            tails.remove(&fnr);
            any = true;
        }
        if any {
            shared
                .log_rewrites
                .fetch_add(1, std::sync::atomic::Ordering::Release);
        }
        for (log, rec) in logs {
            tails.entry(*log).or_default().push(lsn, rec.clone());
        }
    }

    /// Commits a transaction: resolve, log, sync, apply (see the module docs).
    pub(crate) fn commit(
        &self,
        catalog: Vec<CatalogOp>,
        ops: Vec<Op>,
        client_id: Option<String>,
    ) -> Result<CommitInfo, DbError> {
        self.commit_queued(catalog, ops, client_id, false)?.wait()
    }

    /// Resolves a transaction, publishes it and queues it for the group
    /// commit; the answer waits for its sync. Later transactions (of this
    /// session or any other) see it at once and commit after it: were its
    /// sync to fail, the database is poisoned and every later commit fails
    /// too, so none is acknowledged without the ones before it. `linger`:
    /// nobody waits on its sync (a replication link's batch), which may then
    /// wait for company (see the writer's LINGER).
    pub(crate) fn commit_queued(
        &self,
        catalog: Vec<CatalogOp>,
        ops: Vec<Op>,
        client_id: Option<String>,
        linger: bool,
    ) -> Result<PendingCommit, DbError> {
        self.check_poisoned()?;
        if let Some(id) = &client_id {
            if id.is_empty() || id.len() > 128 {
                return Err(DbError::BadClientId(id.len()));
            }
        }
        let shared = self.shared();
        let (rx, info) = {
            let mut st = lock(&shared.state);
            if let Some(id) = &client_id {
                let prior = match st.pending_ids.get(id) {
                    Some(l) => Some(*l),
                    None => shared.store.client_id(id)?,
                };
                if let Some(lsn) = prior {
                    return Err(DbError::AlreadyCommitted {
                        id: id.clone(),
                        lsn,
                    });
                }
            }
            if catalog.is_empty() && ops.is_empty() && client_id.is_none() {
                return Ok(PendingCommit {
                    db: self.clone(),
                    ticket: None,
                    info: Some(CommitInfo {
                        lsn: st.last_lsn,
                        time_us: st.last_time_us,
                        client_id,
                        seqs: BTreeMap::new(),
                        metas: Vec::new(),
                        visible_us: st.last_time_us,
                    }),
                });
            }
            let lsn = st.last_lsn.next();
            let view = LatestView {
                st: &st,
                store: &shared.store,
                prefetched: Prefetched::scan(&shared.store, &ops)?,
            };
            // Its time is stamped below, once its changes are resolved.
            let mut ap = Applier::new(&view, lsn, st.last_time_us, client_id.clone());
            for op in &catalog {
                ap.catalog_op(op);
            }
            let mut bytes = 0usize;
            for op in ops {
                let change = resolve(&ap, &st, op)?;
                bytes += change.after.as_ref().map_or(0, |a| a.len());
                if bytes > MAX_TXN_BYTES {
                    return Err(DbError::TooLarge(format!(
                        "more than {MAX_TXN_BYTES} bytes of records"
                    )));
                }
                ap.change(change, false)?;
            }
            // The commit's time: taken here, after its rows and before its
            // log entry, as PostgreSQL takes its commit timestamp at COMMIT.
            // Never before the previous commit's (clocks may step back).
            let time_us = chrono::Utc::now().timestamp_micros().max(st.last_time_us);
            ap.set_time(time_us);
            let derived = ap.finish()?;
            let rebased: Vec<Fnr> = catalog
                .iter()
                .filter_map(|op| match op {
                    CatalogOp::Rebase(m) => Some(m.fnr),
                    CatalogOp::Clear { fnr, .. } => Some(*fnr),
                    CatalogOp::Define(_) | CatalogOp::Restore { .. } | CatalogOp::Bulk(_) => None,
                })
                .collect();
            let entry = Commit {
                lsn,
                time_us,
                client_id: client_id.clone(),
                catalog,
                changes: derived.changes,
                metas: derived.metas.values().copied().collect(),
            };
            let metas_after: Vec<FileMeta> = derived.metas.values().copied().collect();
            let payload = PlogEntry::Commit(entry).encode();
            if payload.len() > crate::plog::format::MAX_PAYLOAD as usize {
                return Err(DbError::TooLarge(format!(
                    "the log entry would be {} bytes",
                    payload.len()
                )));
            }
            // From here the commit is accepted: publish it to the latest state
            // and queue it while still holding the lock (queue order = LSN order).
            for m in derived.metas.values() {
                st.metas.insert(m.fnr, *m);
            }
            // The restore marks these definitions replace: a cleared mark
            // clears the damage it recorded (and only that damage).
            let cleared: Vec<(Fnr, String)> = derived
                .catalog
                .values()
                .filter(|d| d.restoring.is_none())
                .filter_map(|d| {
                    let prev = st.catalog.get(&d.fnr)?.restoring.as_deref()?;
                    Some((d.fnr, crate::catalog::unfinished_restore(prev)))
                })
                .collect();
            for d in derived.catalog.values() {
                st.catalog.insert(d.fnr, d.clone());
            }
            for fnr in &rebased {
                st.damaged.remove(fnr);
            }
            for d in derived.catalog.values() {
                if let Some(why) = &d.restoring {
                    st.damaged
                        .insert(d.fnr, Damage::own(crate::catalog::unfinished_restore(why)));
                }
            }
            for (fnr, mark) in cleared {
                if st.damaged.get(&fnr).is_some_and(|d| d.reason == mark) {
                    st.damaged.remove(&fnr);
                }
            }
            let rewritten = derived.rewritten_logs.iter().chain(derived.catalog.keys());
            Self::keep_tails(shared, lsn, rewritten.copied(), &derived.logs);
            let mut keys = Vec::with_capacity(derived.records.len());
            for (fnr, isn, v) in &derived.records {
                st.overlay.insert((*fnr, *isn), (lsn, v.clone()));
                keys.push((*fnr, *isn));
            }
            if let Some(id) = &client_id {
                st.pending_ids.insert(id.clone(), lsn);
            }
            st.last_lsn = lsn;
            st.last_time_us = time_us;
            let job = Job {
                linger,
                lsn,
                payload,
                records: derived.records,
                metas: derived.metas.into_values().collect(),
                catalog: derived.catalog.into_values().collect(),
                client_id: client_id.clone(),
                cleared: derived.cleared,
            };
            (
                shared.committer.enqueue(job)?,
                CommitInfo {
                    lsn,
                    time_us,
                    client_id,
                    seqs: derived.seqs,
                    metas: metas_after,
                    visible_us: chrono::Utc::now().timestamp_micros(),
                },
            )
        };
        Ok(PendingCommit {
            db: self.clone(),
            ticket: Some(rx),
            info: Some(info),
        })
    }

    /// Creates a file.
    pub fn create_file(&self, fnr: Fnr, name: &str, role: Role) -> Result<CommitInfo, DbError> {
        if fnr.0 == 0 {
            return Err(DbError::BadDefinition("file numbers start at 1".into()));
        }
        if !valid_name(name) {
            return Err(DbError::BadDefinition(format!(
                "file name {name:?} must be 1 to {MAX_FILE_NAME} letters, digits, '_', '-' or '.'"
            )));
        }
        if matches!(role, Role::Master { .. } | Role::Log { .. }) {
            return Err(DbError::BadDefinition(
                "master and log files are made with `master define`".into(),
            ));
        }
        {
            let st = lock(&self.shared().state);
            if let Some(d) = st.catalog.get(&fnr) {
                return Err(DbError::FileExists {
                    fnr,
                    name: d.name.clone(),
                });
            }
            if let Some(d) = st.catalog.values().find(|d| d.name == name) {
                return Err(DbError::BadDefinition(format!(
                    "the name {name:?} is already used by file {}",
                    d.fnr
                )));
            }
        }
        let def = FileDef {
            fnr,
            name: name.to_string(),
            role,
            restoring: None,
            hold: None,
        };
        self.commit(vec![CatalogOp::Define(def)], vec![], None)
    }

    /// Makes plain file `fnr` a master with `log` as its ETP log file
    /// (created if missing; an existing one must be an empty plain file).
    pub fn define_master(&self, fnr: Fnr, log: Fnr) -> Result<CommitInfo, DbError> {
        if log == fnr {
            return Err(DbError::BadDefinition(
                "a master cannot be its own log file".into(),
            ));
        }
        if log.0 == 0 {
            return Err(DbError::BadDefinition("file numbers start at 1".into()));
        }
        let ops = {
            let st = lock(&self.shared().state);
            let def = Self::usable_def(&st, fnr)?;
            if def.role != Role::Plain {
                return Err(DbError::BadDefinition(format!(
                    "file {fnr} is a {} file; only a plain file can become a master",
                    def.role.name()
                )));
            }
            let log_def = match st.catalog.get(&log) {
                Some(l) => {
                    let count = st.metas.get(&log).map_or(0, |m| m.count);
                    if l.role != Role::Plain || count != 0 {
                        return Err(DbError::BadDefinition(format!(
                            "file {log} exists ({} file with {count} records); a log file must be new or an empty plain file",
                            l.role.name()
                        )));
                    }
                    FileDef {
                        role: Role::Log { master: fnr },
                        ..l.clone()
                    }
                }
                None => {
                    let name = format!("{}.log", def.name);
                    if st.catalog.values().any(|d| d.name == name) {
                        return Err(DbError::BadDefinition(format!(
                            "the name {name:?} for the new log file is already used"
                        )));
                    }
                    FileDef {
                        fnr: log,
                        name,
                        role: Role::Log { master: fnr },
                        restoring: None,
                        hold: None,
                    }
                }
            };
            vec![
                CatalogOp::Define(log_def),
                CatalogOp::Define(FileDef {
                    role: Role::Master {
                        log,
                        incarnation: 1,
                    },
                    ..def.clone()
                }),
            ]
        };
        self.commit(ops, vec![], None)
    }
}

/// The latest state plus the page store: what a new commit applies on.
pub(super) struct LatestView<'a> {
    pub(super) st: &'a Latest,
    pub(super) store: &'a PageStore,
    /// What the page store held in an isn range of one file, read by one
    /// scan under the state lock (see [`Prefetched::scan`]).
    pub(super) prefetched: Option<Prefetched>,
}

/// The records of `fnr` in `[from, to]` as the page store held them, read
/// under the state lock: until it is released the applier cannot take a
/// record out of the overlay, so overlay-then-this reads as overlay-then-
/// store does, key by key.
pub(super) struct Prefetched {
    fnr: Fnr,
    from: Isn,
    to: Isn,
    found: HashMap<Isn, Vec<u8>>,
}

impl Prefetched {
    /// The fewest replicated changes worth one scan instead of a lookup each.
    const MIN: usize = 32;

    /// One scan for a replicate batch's changes when they are many and
    /// dense in one file (a bulk of inserts or a range of updates); `None`
    /// when lookups suit them better.
    fn scan(store: &PageStore, ops: &[Op]) -> Result<Option<Prefetched>, DbError> {
        let mut range: Option<(Fnr, u64, u64)> = None;
        let mut n = 0usize;
        for op in ops {
            let Op::Replicated { fnr, isn, .. } = op else {
                continue;
            };
            n += 1;
            range = match range {
                None => Some((*fnr, isn.0, isn.0)),
                Some((f, lo, hi)) if f == *fnr => Some((f, lo.min(isn.0), hi.max(isn.0))),
                Some(_) => return Ok(None),
            };
        }
        let Some((fnr, lo, hi)) = range else {
            return Ok(None);
        };
        if n < Self::MIN || (hi - lo) / 4 > n as u64 {
            return Ok(None);
        }
        let found = stored_range(store, fnr, Isn(lo), Isn(hi))?;
        Ok(Some(Prefetched {
            fnr,
            from: Isn(lo),
            to: Isn(hi),
            found,
        }))
    }
}

/// The records of `fnr` the page store holds in `[lo, hi]`, by one scan.
fn stored_range(
    store: &PageStore,
    fnr: Fnr,
    lo: Isn,
    hi: Isn,
) -> Result<HashMap<Isn, Vec<u8>>, DbError> {
    let mut found = HashMap::new();
    for kv in store.scan_shared(fnr, lo) {
        let (isn, v) = kv?;
        if isn > hi {
            break;
        }
        found.insert(isn, v.as_ref().to_vec());
    }
    Ok(found)
}

impl StateView for LatestView<'_> {
    fn def(&self, fnr: Fnr) -> Option<FileDef> {
        self.st.catalog.get(&fnr).cloned()
    }
    fn meta(&self, fnr: Fnr) -> Option<FileMeta> {
        self.st.metas.get(&fnr).copied()
    }
    fn get(&self, fnr: Fnr, isn: Isn) -> Result<Option<Vec<u8>>, DbError> {
        if let Some((_, v)) = self.st.overlay.get(&(fnr, isn)) {
            return Ok(v.clone());
        }
        if let Some(p) = &self.prefetched {
            if p.fnr == fnr && p.from <= isn && isn <= p.to {
                return Ok(p.found.get(&isn).cloned());
            }
        }
        Ok(self.store.get(fnr, isn)?)
    }
}

/// Turns one buffered command into a change against the latest state.
pub(super) fn resolve<V: StateView>(
    ap: &Applier<'_, V>,
    st: &Latest,
    op: Op,
) -> Result<crate::plog::Change, DbError> {
    let fnr = match &op {
        Op::Store { fnr, .. }
        | Op::Update { fnr, .. }
        | Op::Delete { fnr, .. }
        | Op::Replicated { fnr, .. }
        | Op::Restored { fnr, .. }
        | Op::Put { fnr, .. } => *fnr,
    };
    match &op {
        Op::Restored { .. } => {
            // A restore writes the file it marked as being restored.
            let restoring = st.catalog.get(&fnr).is_some_and(|d| d.restoring.is_some());
            if !restoring {
                Database::usable_def(st, fnr)?;
            }
        }
        Op::Replicated { .. } | Op::Put { .. } => {
            let def = Database::usable_def(st, fnr)?;
            let ok = match op {
                Op::Replicated { .. } => def.role == Role::Replicate,
                _ => matches!(def.role, Role::Confirmation | Role::Administration),
            };
            if !ok {
                return Err(DbError::BadDefinition(format!(
                    "file {fnr} is a {} file; the engine writes only replicate, confirmation and administration files this way",
                    def.role.name()
                )));
            }
        }
        _ => {
            Database::writable(st, fnr)?;
        }
    }
    let bad = |source| DbError::BadRecord { fnr, source };
    Ok(match op {
        Op::Store { isn, bytes, .. } => {
            // A new isn needs no lookup: a lookup in the page store waits
            // for any batch the applier is writing (sled holds one global
            // lock across a batch), with the state lock held.
            if !ap.unused(fnr, isn) && ap.current(fnr, isn)?.is_some() {
                return Err(DbError::RecordExists { fnr, isn });
            }
            crate::plog::Change {
                fnr,
                isn,
                before: None,
                after: Some(bytes),
            }
        }
        Op::Update {
            isn, patch, seen, ..
        } => {
            let missing = DbError::RecordMissing { fnr, isn };
            let (before, merged) = match seen {
                // No commit wrote the record since the session read it:
                // its bytes and result stand, with no second read.
                Some((s, merged)) if !ap.touched(fnr, isn) && s.unchanged(st, fnr, isn) => {
                    (s.bytes, Some(merged))
                }
                Some((s, merged)) => {
                    let now = ap.current(fnr, isn)?.ok_or(missing)?;
                    let same = now == s.bytes;
                    (now, same.then_some(merged))
                }
                None => (ap.current(fnr, isn)?.ok_or(missing)?, None),
            };
            let after = match merged {
                Some(m) => m,
                None => {
                    let mut rec = decode_record(&before).map_err(bad)?;
                    apply_patch(&mut rec, &patch);
                    encode_record(&rec).map_err(bad)?
                }
            };
            crate::plog::Change {
                fnr,
                isn,
                before: Some(before),
                after: Some(after),
            }
        }
        Op::Delete { isn, seen, .. } => {
            let before = match seen {
                Some(s) if !ap.touched(fnr, isn) && s.unchanged(st, fnr, isn) => s.bytes,
                _ => ap
                    .current(fnr, isn)?
                    .ok_or(DbError::RecordMissing { fnr, isn })?,
            };
            crate::plog::Change {
                fnr,
                isn,
                before: Some(before),
                after: None,
            }
        }
        Op::Restored {
            isn, before, after, ..
        } => {
            if isn.0 == 0 {
                return Err(DbError::ZeroIsn(fnr));
            }
            let is_log =
                matches!(st.catalog.get(&fnr), Some(d) if matches!(d.role, Role::Log { .. }));
            if let (Some(a), false) = (&after, is_log) {
                check_stored(fnr, a)?;
            }
            // An isn the file has never held needs no lookup (every chunk
            // of a file restored from empty).
            let current = if before.is_none() && ap.unused(fnr, isn) {
                None
            } else {
                ap.current(fnr, isn)?
            };
            if current != before {
                return Err(DbError::BadDefinition(format!(
                    "record {isn} of file {fnr} changed while it was being restored"
                )));
            }
            crate::plog::Change {
                fnr,
                isn,
                before,
                after,
            }
        }
        Op::Replicated {
            isn, before, after, ..
        } => {
            if isn.0 == 0 {
                return Err(DbError::ZeroIsn(fnr));
            }
            if let Some(a) = &after {
                check_stored(fnr, a)?;
            }
            let current = ap.current(fnr, isn)?;
            if current != before {
                return Err(DbError::ReplicateDiverged {
                    fnr,
                    isn,
                    reason: match (&current, &before) {
                        (None, Some(_)) => "the record is missing".into(),
                        (Some(_), None) => "the record already exists".into(),
                        _ => "the record differs from the master's before-image".into(),
                    },
                });
            }
            crate::plog::Change {
                fnr,
                isn,
                before,
                after,
            }
        }
        Op::Put {
            isn,
            record,
            follows,
            ..
        } => {
            let before = ap.current(fnr, isn)?;
            if let Some(guard) = &follows {
                check_guard(fnr, before.as_deref(), guard)?;
            }
            crate::plog::Change {
                fnr,
                isn,
                before,
                after: Some(encode_record(&record).map_err(bad)?),
            }
        }
    })
}

/// Checks a confirmation record's guard ([`PutGuard`]) against the record
/// as it stands (`before`; None: absent).
pub(super) fn check_guard(
    fnr: Fnr,
    before: Option<&[u8]>,
    guard: &PutGuard,
) -> Result<(), DbError> {
    let bad = |source| DbError::BadRecord { fnr, source };
    let current = match before {
        None => Record::new(),
        Some(b) => decode_record(b).map_err(bad)?,
    };
    let view = crate::confirmation::GuardView::of(&current);
    let load_id = view.load_id;
    match guard {
        PutGuard::Seq(expected) => {
            if let Some(id) = load_id {
                return Err(DbError::LoadInProgress {
                    fnr,
                    id: id.to_string(),
                });
            }
            let confirmed = view.seq;
            if confirmed != *expected {
                return Err(DbError::OutOfSequence {
                    fnr,
                    expected: *expected,
                    confirmed,
                });
            }
        }
        PutGuard::Load { id, next } => {
            let at = view.load_next;
            if load_id != Some(id.as_str()) || at != Some(*next) {
                return Err(DbError::LoadOutOfSequence {
                    fnr,
                    id: id.clone(),
                    next: *next,
                    found: match (load_id, at) {
                        (Some(l), Some(n)) => format!("load {l} at isn {n}"),
                        _ => "no load in progress".into(),
                    },
                });
            }
        }
    }
    Ok(())
}

/// Validates a record about to be stored as given (replicated, restored,
/// loaded in bulk): nothing undecodable lands. A master's images are
/// canonical: checked without a decode.
pub(super) fn check_stored(fnr: Fnr, bytes: &[u8]) -> Result<(), DbError> {
    if crate::record::canonical_fields(bytes).is_none() {
        decode_record(bytes).map_err(|source| DbError::BadRecord { fnr, source })?;
    }
    Ok(())
}
