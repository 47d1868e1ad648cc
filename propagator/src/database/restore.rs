//! Restore: rebasing a file on what it holds, marking a file being restored
//! so part-copied content never reads as intact, writing a copy's records
//! back range by range, and the copy point a copy set is taken at.

use super::*;

impl Database {
    /// Takes a replicate file's records as they stand in the page store as
    /// its new baseline ([`CatalogOp::Rebase`]): its count and digest are
    /// recomputed from them and any damage recorded against it is cleared.
    /// Only a load that then replaces every record (and proves the result
    /// against its master) may do this. The caller serialises writes to it.
    pub fn rebase_replicate(&self, fnr: Fnr) -> Result<FileMeta, DbError> {
        let def = self.file_info(fnr)?.def;
        if def.role != Role::Replicate {
            return Err(DbError::BadDefinition(format!(
                "file {fnr} is a {} file; only replicate files are rebased",
                def.role.name()
            )));
        }
        self.rebase_file(fnr)
    }

    /// Takes any file's records as they stand in the page store as its new
    /// baseline (see [`Database::rebase_replicate`]): the first step of a
    /// restore into a damaged file, whose every record the restore then
    /// replaces and proves against the copy's digest.
    ///
    /// A rebase is an explicit new baseline: it also clears an unfinished
    /// restore's mark (a load that then replaces every record and proves
    /// it against its master, or an administration file rebuilt from an
    /// export). Callers that cannot prove the content must check the mark
    /// first (see [`Database::refresh_log`]).
    pub fn rebase_file(&self, fnr: Fnr) -> Result<FileMeta, DbError> {
        let (def, meta) = self.baseline(fnr)?;
        let mut ops = Vec::new();
        if def.restoring.is_some() {
            ops.push(CatalogOp::Define(FileDef {
                restoring: None,
                ..def
            }));
        }
        ops.push(CatalogOp::Rebase(meta));
        self.commit(ops, Vec::new(), None)?;
        Ok(meta)
    }

    /// Sets (or with `None` clears) the hold of replicate file `fnr` (see
    /// [`Hold`]); the previous one is returned. Only its replication task
    /// does this (a link request), and a restore's end.
    pub fn set_hold(&self, fnr: Fnr, hold: Option<Hold>) -> Result<Option<Hold>, DbError> {
        let def = self.file_info(fnr)?.def;
        if def.role != Role::Replicate {
            return Err(DbError::BadDefinition(format!(
                "file {fnr} is a {} file; only a replicate file is held",
                def.role.name()
            )));
        }
        let same = |h: &Option<Hold>| h.as_ref().map(|h| (h.kind, h.why.clone()));
        if same(&def.hold) == same(&hold) {
            return Ok(def.hold);
        }
        let old = def.hold.clone();
        self.commit(
            vec![CatalogOp::Define(FileDef { hold, ..def })],
            Vec::new(),
            None,
        )?;
        Ok(old)
    }

    /// A file's definition and the meta of what its page store holds now.
    pub(super) fn baseline(&self, fnr: Fnr) -> Result<(FileDef, FileMeta), DbError> {
        let info = self.file_info(fnr)?;
        self.wait_applied()?;
        let mut meta = recovery::scan_meta(&self.shared().store, fnr)?;
        meta.next_isn = meta.next_isn.max(info.meta.next_isn);
        Ok((info.def, meta))
    }

    /// Begins a restore into a file: its records as they stand in the page
    /// store become its baseline (as [`Database::rebase_file`]), and it is
    /// marked as being restored — damaged, across restarts, until the
    /// restore's last chunk ([`Database::restore_range`] with `last`) proves
    /// it. `why` says what the restore is for.
    ///
    /// A master's content is set back by any restore, so the same commit
    /// raises its incarnation ([`Database::begin_restore_above`]): a crash
    /// anywhere in the restore leaves the raised incarnation, and the seqs
    /// it gives out next can never be mistaken for the ones a replicate
    /// confirmed before.
    pub fn begin_restore(&self, fnr: Fnr, why: &str) -> Result<FileMeta, DbError> {
        self.begin_restore_above(fnr, why, 0)
    }

    /// [`Database::begin_restore`], with a master's new incarnation above
    /// `floor` as well as above its current one (a copy's incarnation, when
    /// the master is restored into a new database).
    pub fn begin_restore_above(
        &self,
        fnr: Fnr,
        why: &str,
        floor: u32,
    ) -> Result<FileMeta, DbError> {
        let (def, meta) = self.baseline(fnr)?;
        let role = match def.role {
            Role::Master { log, incarnation } => {
                let next = incarnation.max(floor).saturating_add(1);
                tracing::warn!(file = %fnr, incarnation = next, why, "master set back: incarnation raised");
                Role::Master {
                    log,
                    incarnation: next,
                }
            }
            r => r,
        };
        self.commit(
            vec![
                CatalogOp::Define(FileDef {
                    restoring: Some(why.to_string()),
                    role,
                    ..def
                }),
                CatalogOp::Rebase(meta),
            ],
            Vec::new(),
            None,
        )?;
        lock(&self.shared().state).rebased.insert(fnr);
        Ok(meta)
    }

    /// Replaces a file's records in `[from, to)` (`to` None: to the end)
    /// with `wanted` (ascending isns inside the range), as one transaction
    /// that derives nothing ([`CatalogOp::Restore`]): a restored master
    /// writes no log records, its log is restored beside it. Any role. With
    /// `last`, this is the file's last chunk: its count and digest after it
    /// must equal `last`'s, and its next isn becomes `last.next_isn`.
    ///
    /// The caller serialises writes to `fnr` (nothing else may write it
    /// during a restore); a damaged file is rebased first.
    pub fn restore_range(
        &self,
        fnr: Fnr,
        from: Isn,
        to: Option<Isn>,
        wanted: Vec<(Isn, Vec<u8>)>,
        last: Option<FileMeta>,
    ) -> Result<(CommitInfo, LoadStats), DbError> {
        let (pending, stats) =
            self.restore_range_queued(fnr, from, to, wanted, last, Restore::Logged)?;
        Ok((pending.wait()?, stats))
    }

    /// [`Database::restore_range`], answered once queued: the chunk's
    /// commit is durable once the returned [`PendingCommit`] is waited for,
    /// so a restore can read and build its next chunk meanwhile. Whoever
    /// holds the pending commit must wait for it before calling this again
    /// from the same thread (a chunk may wait for the ones before it to
    /// reach the page store, which needs their waits). With
    /// [`Restore::Bulk`], a chunk that replaces nothing goes to the page
    /// store in bulk (see `bulk`).
    pub fn restore_range_queued(
        &self,
        fnr: Fnr,
        from: Isn,
        to: Option<Isn>,
        wanted: Vec<(Isn, Vec<u8>)>,
        last: Option<FileMeta>,
        how: Restore,
    ) -> Result<(PendingCommit, LoadStats), DbError> {
        check_chunk("restored", from, to, &wanted)?;
        if let Some(want) = last {
            // The file ends as the copy: every record below its next isn
            // (new isns are handed out from there, unlooked-up). The last
            // chunk runs to the end, from at most that isn, with none above.
            let top = wanted.last().map(|(i, _)| i.0);
            if to.is_some() || from.0 > want.next_isn || top.is_some_and(|t| t >= want.next_isn) {
                return Err(DbError::BadDefinition(format!(
                    "the last chunk restored into file {fnr} must run from at most the copy's next isn {} to the end and hold no record at or above it (it runs from {from}{}{}); nothing written",
                    want.next_isn,
                    to.map(|t| format!(" to {t}")).unwrap_or_default(),
                    top.map(|t| format!(" and holds isn {t}")).unwrap_or_default(),
                )));
            }
        }
        let (def, mut meta, rebased) = {
            let st = lock(&self.shared().state);
            let def = st.catalog.get(&fnr).ok_or(DbError::UnknownFile(fnr))?;
            // A file being restored is damaged until its last chunk: only
            // the restore itself writes it.
            if def.restoring.is_none() {
                Self::usable_def(&st, fnr)?;
            }
            (def.clone(), st.info(fnr)?.meta, st.rebased.contains(&fnr))
        };
        // Rebased by this restore since the database opened, no isn at or
        // above the file's next isn holds a record: a chunk from there on,
        // as each chunk of a file restored from empty is, replaces nothing,
        // and neither waits for the page store to apply the chunk before it
        // nor reads it. (After a reopen, replay may have skipped the
        // damaged file's changes: its meta can lag its records, so a
        // resumed restore reads them.)
        let fresh = rebased && Self::bulk_fits(&meta, from);
        if let (true, false, Restore::Bulk { sum }) = (fresh, wanted.is_empty(), how) {
            // Replaces nothing: the chunk goes to the page store in bulk,
            // its log entry naming it (see `bulk`).
            meta.add_sum(sum.0, sum.1);
            prove_restored(&meta, last)?;
            let catalog = self.restore_catalog(fnr, def, last);
            let stats = LoadStats {
                written: sum.0,
                ..LoadStats::default()
            };
            let pending = self.bulk_queued(fnr, &wanted, sum, catalog, Vec::new())?;
            return Ok((self.restored(fnr, last, pending), stats));
        }
        let existing = if fresh {
            Vec::new()
        } else {
            self.wait_applied()?;
            self.stored_range(fnr, from, to)?
        };
        let (diff, stats) = diff_range(existing, wanted, false);
        let mut ops = Vec::with_capacity(diff.len());
        for ReplicatedChange { isn, before, after } in diff {
            // Only the last chunk's result is checked before it is written
            // (the commit derives every chunk's meta itself).
            if last.is_some() {
                meta.change(isn, before.as_deref(), after.as_deref());
            }
            ops.push(Op::Restored {
                fnr,
                isn,
                before,
                after,
            });
        }
        prove_restored(&meta, last)?;
        let catalog = self.restore_catalog(fnr, def, last);
        let pending = self.commit_queued(catalog, ops, None, false)?;
        Ok((self.restored(fnr, last, pending), stats))
    }

    /// Whether a restore of `fnr` from empty can go to the page store as
    /// sorted runs ([`Database::restore_ingest`]): the file is being
    /// restored, rebased by this restore since the database opened, counts
    /// no record, and the engine holds none of its records.
    pub fn can_restore_ingest(&self, fnr: Fnr) -> Result<bool, DbError> {
        Ok(self.ingestable(fnr)?.is_some())
    }

    /// The definition and meta of a file [`Database::can_restore_ingest`]
    /// says yes to, read under one lock.
    fn ingestable(&self, fnr: Fnr) -> Result<Option<(FileDef, FileMeta)>, DbError> {
        let fresh = {
            let st = lock(&self.shared().state);
            let def = st.catalog.get(&fnr).ok_or(DbError::UnknownFile(fnr))?;
            let meta = st.info(fnr)?.meta;
            (def.restoring.is_some() && st.rebased.contains(&fnr) && meta.count == 0)
                .then(|| (def.clone(), meta))
        };
        match fresh {
            Some(f) if self.shared().store.can_ingest(fnr)? => Ok(Some(f)),
            _ => Ok(None),
        }
    }

    /// Restores a whole file from empty (see
    /// [`Database::can_restore_ingest`]) by writing its records as sorted
    /// runs straight into the page store, synced
    /// ([`crate::store::PageStore::ingest`]), then queueing one commit of a
    /// bulk entry naming them all ([`CatalogOp::Bulk`]: isn range, count,
    /// digest) with the end of the restore. `chunks` stream the file in
    /// ascending isn, each with its count and digest (summed by the caller
    /// from these very bytes); the one with `last` ends it and proves the
    /// file against the copy's meta, as [`Database::restore_range`]'s last
    /// chunk does.
    ///
    /// Until the commit, the records lie in the file's own partition, which
    /// its meta does not count, and the file stays marked as being
    /// restored: a failure at any point (a record that is not valid, a
    /// chunk out of order, a proof that fails, a crash) leaves it damaged,
    /// and a restore run again rebases it on what it holds.
    pub fn restore_ingest(
        &self,
        fnr: Fnr,
        chunks: &mut dyn Iterator<Item = IngestChunk>,
    ) -> Result<(PendingCommit, LoadStats), DbError> {
        let r = self.ingest_whole(fnr, chunks);
        if r.is_err() {
            // Records may lie in its partition, uncounted: no longer a file
            // restored from empty, and a restore run again reads what it
            // holds (after a rebase).
            lock(&self.shared().state).rebased.remove(&fnr);
        }
        r
    }

    fn ingest_whole(
        &self,
        fnr: Fnr,
        chunks: &mut dyn Iterator<Item = IngestChunk>,
    ) -> Result<(PendingCommit, LoadStats), DbError> {
        self.check_poisoned()?;
        let Some((def, mut meta)) = self.ingestable(fnr)? else {
            return Err(DbError::BadDefinition(format!(
                "file {fnr} is not being restored from empty: its records cannot be ingested"
            )));
        };
        let is_log = matches!(def.role, Role::Log { .. });
        let mut total = FileMeta::new(fnr);
        let mut last: Option<FileMeta> = None;
        let mut span: Option<(Isn, Isn)> = None;
        let mut problem: Option<DbError> = None;
        let mut cur: std::vec::IntoIter<(Isn, Vec<u8>)> = Vec::new().into_iter();
        let mut records = std::iter::from_fn(|| loop {
            if let Some((isn, v)) = cur.next() {
                let wrong = match span {
                    None if !Self::bulk_fits(&meta, isn) => Some(DbError::BadDefinition(format!(
                        "a restore of file {fnr} from isn {isn} lies below its next isn {}",
                        meta.next_isn
                    ))),
                    // Validated as any stored record is (a log's records
                    // are the log's own).
                    _ if is_log => None,
                    _ => super::commit::check_stored(fnr, &v).err(),
                };
                if let Some(e) = wrong {
                    problem = Some(e);
                    return None;
                }
                span = Some((span.map_or(isn, |s| s.0), isn));
                return Some((isn, v));
            }
            if last.is_some() {
                return None;
            }
            let c = chunks.next()?;
            total.add_sum(c.sum.0, c.sum.1);
            last = c.last;
            cur = c.records.into_iter();
        });
        self.shared().store.ingest(fnr, &mut records)?;
        if let Some(e) = problem {
            return Err(e);
        }
        let Some(want) = last else {
            return Err(DbError::BadDefinition(format!(
                "the restore of file {fnr} ended before its last chunk"
            )));
        };
        let Some((first, top)) = span else {
            // Nothing to ingest: the file is restored empty.
            return self.restore_range_queued(fnr, Isn(1), None, Vec::new(), last, Restore::Logged);
        };
        if top.0 >= want.next_isn {
            return Err(DbError::BadDefinition(format!(
                "file {fnr}'s restored records run to isn {top}, at or above the copy's next isn {}",
                want.next_isn
            )));
        }
        meta.add_sum(total.count, total.digest);
        prove_restored(&meta, last)?;
        let mut all = vec![CatalogOp::Bulk(crate::catalog::BulkChunk {
            fnr,
            first,
            last: top,
            count: total.count,
            digest: total.digest,
        })];
        all.extend(self.restore_catalog(fnr, def, last));
        let pending = self.commit_queued(all, Vec::new(), None, false)?;
        let stats = LoadStats {
            written: total.count,
            ..LoadStats::default()
        };
        Ok((self.restored(fnr, last, pending), stats))
    }

    /// A chunk queued: after the last one (`last`), the file is restored,
    /// and its next chunks, if any, are another restore's.
    fn restored(&self, fnr: Fnr, last: Option<FileMeta>, p: PendingCommit) -> PendingCommit {
        if last.is_some() {
            lock(&self.shared().state).rebased.remove(&fnr);
        }
        p
    }

    /// The catalog changes of a restored chunk: written as given, and with
    /// the last chunk (`last`, proved), the file's next isn and the end of
    /// its restore mark.
    fn restore_catalog(&self, fnr: Fnr, def: FileDef, last: Option<FileMeta>) -> Vec<CatalogOp> {
        let mut catalog = vec![CatalogOp::Restore {
            fnr,
            next_isn: last.map(|m| m.next_isn),
        }];
        if let (Some(_), Some(why)) = (last, &def.restoring) {
            // Proved: the restore is over, in this same commit (from the
            // latest definition, so nothing committed meanwhile is undone).
            // A replicate restored from a copy holds an earlier level of
            // its master: it serves no current reads until its task has
            // caught it up (and clears the hold).
            let latest = lock(&self.shared().state).catalog.get(&fnr).cloned();
            let latest = latest.unwrap_or(def.clone());
            let hold = match latest.role {
                Role::Replicate => Some(Hold::new(HoldKind::Restored, why.clone())),
                _ => latest.hold.clone(),
            };
            catalog.push(CatalogOp::Define(FileDef {
                restoring: None,
                hold,
                ..latest
            }));
        }
        catalog
    }

    /// The state a copy is taken at: the latest LSN, its commit time, the
    /// catalog, every file's meta and damage, all read under one lock; then
    /// waits until that LSN is durable and in the page store. Taken at the
    /// start of a copy's page-store scan and again at its end (see
    /// [`crate::copy`]).
    pub fn copy_point(&self) -> Result<CopyPoint, DbError> {
        let point = {
            let st = lock(&self.shared().state);
            CopyPoint {
                lsn: st.last_lsn,
                time_us: st.last_time_us,
                catalog: st.catalog.clone(),
                metas: st.metas.clone(),
                damaged: st
                    .damaged
                    .iter()
                    .map(|(f, d)| (*f, d.reason.clone()))
                    .collect(),
            }
        };
        self.wait_applied()?;
        Ok(point)
    }
}

/// One chunk of a file handed to [`Database::restore_ingest`].
pub struct IngestChunk {
    /// Ascending isns, above the chunk before's.
    pub records: Vec<(Isn, Vec<u8>)>,
    /// The records' count and digest, summed from these very bytes.
    pub sum: (u64, crate::Digest),
    /// With the file's last chunk: the copy's meta, which the file must
    /// then hold.
    pub last: Option<FileMeta>,
}

/// How [`Database::restore_range_queued`] writes a chunk.
#[derive(Clone, Copy, Debug)]
pub enum Restore {
    /// Every record in the chunk's log entry: the log can roll forward,
    /// copy and back out across it. A restore into a database with a past
    /// (its own, in place, or through its node) writes this way.
    Logged,
    /// A chunk that replaces nothing goes to the page store in bulk, named
    /// by its log entry (see `bulk`): for a new database, whose log has no
    /// past to roll across. `sum` is the chunk's count and digest, computed
    /// by the caller from these very bytes.
    Bulk { sum: (u64, crate::Digest) },
}

/// With the last chunk (`last`: the copy's meta), that the file `meta`
/// says it would hold after it is the copy's count and digest.
fn prove_restored(meta: &FileMeta, last: Option<FileMeta>) -> Result<(), DbError> {
    match last {
        Some(want) if (meta.count, meta.digest) != (want.count, want.digest) => {
            Err(DbError::BadDefinition(format!(
                "file {} would hold {} records with digest {} after its last restored chunk, but the copy holds {} records with digest {}; nothing written",
                meta.fnr, meta.count, meta.digest, want.count, want.digest
            )))
        }
        _ => Ok(()),
    }
}

/// A database's state at one LSN, as a copy records it.
#[derive(Clone, Debug)]
pub struct CopyPoint {
    pub lsn: Lsn,
    pub time_us: i64,
    pub catalog: BTreeMap<Fnr, FileDef>,
    pub metas: BTreeMap<Fnr, FileMeta>,
    pub damaged: BTreeMap<Fnr, String>,
}
