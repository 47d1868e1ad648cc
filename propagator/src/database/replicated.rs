//! Replicated apply and loads: a master's batch applied to a replicate with
//! its confirmation in one transaction (guarded so batches and chunks apply
//! in order, exactly once), and a loaded chunk replacing an isn range.

use super::*;

impl Database {
    /// Commits changes replicated from a master, and the confirmation record,
    /// as one transaction. The batch must follow the confirmed seq `follows`
    /// (checked first, in the same transaction: a stale batch from an old
    /// link is refused as out of sequence and changes nothing). Each change
    /// names the record's expected current bytes (`before`): a replicate
    /// that does not hold exactly them has diverged, and the transaction is
    /// refused with nothing applied.
    pub fn apply_replicated(
        &self,
        replicate: Fnr,
        follows: Seq,
        changes: Vec<ReplicatedChange>,
        confirmation: (Fnr, Isn, Record),
    ) -> Result<CommitInfo, DbError> {
        // Its caller waits for the sync: it does not linger.
        self.queue_replicated(replicate, follows, changes, confirmation, false)?
            .wait()
    }

    /// [`Database::apply_replicated`] without waiting for the sync: the
    /// batch is visible and queued, and the next batch (which must follow
    /// its confirmation) may be applied behind it at once. Nobody waits on
    /// its sync, which may linger for the batches behind it.
    pub fn apply_replicated_queued(
        &self,
        replicate: Fnr,
        follows: Seq,
        changes: Vec<ReplicatedChange>,
        confirmation: (Fnr, Isn, Record),
    ) -> Result<super::PendingCommit, DbError> {
        self.queue_replicated(replicate, follows, changes, confirmation, true)
    }

    fn queue_replicated(
        &self,
        replicate: Fnr,
        follows: Seq,
        changes: Vec<ReplicatedChange>,
        confirmation: (Fnr, Isn, Record),
        linger: bool,
    ) -> Result<super::PendingCommit, DbError> {
        let (cfnr, cisn, rec) = confirmation;
        let mut ops = vec![Op::Put {
            fnr: cfnr,
            isn: cisn,
            record: rec,
            follows: Some(PutGuard::Seq(follows)),
        }];
        ops.extend(
            changes
                .into_iter()
                .map(|ReplicatedChange { isn, before, after }| Op::Replicated {
                    fnr: replicate,
                    isn,
                    before,
                    after,
                }),
        );
        self.commit_queued(Vec::new(), ops, None, linger)
    }

    /// Replaces a replicate's records in the isn range `[from, to)` (`to`
    /// None: to the end) with `wanted` (ascending isns inside the range), and
    /// writes the load's progress record, as one transaction. Records
    /// already equal are left alone unless `rewrite`. The progress record is
    /// guarded ([`PutGuard::Load`]), so a chunk applies exactly once and in
    /// order. With `expect`, the file's count and digest after the chunk must
    /// equal it (the last chunk of a load), or nothing is written.
    ///
    /// A chunk that lands where the replicate holds nothing (at or above
    /// its next isn: every chunk of a load into an empty replicate) goes to
    /// the page store in bulk (see `bulk`); `sum`, if given, is its records'
    /// count and digest, computed by the caller from these very bytes.
    ///
    /// The caller serialises writes to `replicate` (as replication links do).
    #[allow(clippy::too_many_arguments)]
    pub fn load_range(
        &self,
        replicate: Fnr,
        from: Isn,
        to: Option<Isn>,
        wanted: Vec<(Isn, Vec<u8>)>,
        rewrite: bool,
        progress: (Fnr, Isn, Record, PutGuard),
        expect: Option<(u64, crate::Digest)>,
        sum: Option<(u64, crate::Digest)>,
    ) -> Result<(CommitInfo, LoadStats), DbError> {
        check_chunk("loaded", from, to, &wanted)?;
        let def = self.file(replicate)?;
        if def.role != Role::Replicate {
            return Err(DbError::BadDefinition(format!(
                "file {replicate} is a {} file, not a replicate",
                def.role.name()
            )));
        }
        let info = self.file_info(replicate)?;
        if info.damaged.is_none() && !wanted.is_empty() && Self::bulk_fits(&info.meta, from) {
            let sum = sum.unwrap_or_else(|| super::bulk::chunk_sum(&wanted));
            let mut meta = info.meta;
            meta.add_sum(sum.0, sum.1);
            prove_loaded(&meta, expect)?;
            let (cfnr, cisn, rec, guard) = progress;
            // Whatever would refuse the commit is checked before the chunk
            // is written: here, that it is the load's next chunk.
            {
                let st = lock(&self.shared().state);
                let current = LatestView {
                    st: &st,
                    store: &self.shared().store,
                    prefetched: None,
                }
                .get(cfnr, cisn)?;
                super::commit::check_guard(cfnr, current.as_deref(), &guard)?;
            }
            let put = Op::Put {
                fnr: cfnr,
                isn: cisn,
                record: rec,
                follows: Some(guard),
            };
            let info = self
                .bulk_queued(replicate, &wanted, sum, Vec::new(), vec![put])?
                .wait()?;
            let stats = LoadStats {
                written: sum.0,
                ..LoadStats::default()
            };
            return Ok((info, stats));
        }
        // What the page store holds in the range is what the replicate
        // held when the load began (the load's first step waits until every
        // earlier write is applied, see `settle`), or a previous chunk's
        // — never this one's: chunks are guarded and cover disjoint ranges.
        let existing = self.stored_range(replicate, from, to)?;
        let mut meta = self.file_info(replicate)?.meta;
        let (diff, stats) = diff_range(existing, wanted, rewrite);
        let last = expect.is_some();
        let mut ops = Vec::with_capacity(diff.len() + 1);
        for ReplicatedChange { isn, before, after } in diff {
            if last {
                meta.change(isn, before.as_deref(), after.as_deref());
            }
            // Checked against the page store as any replicated change is:
            // that read is also what makes sled evict its cache (it does so
            // only on reads), which bounds a node's memory during a load.
            ops.push(Op::Replicated {
                fnr: replicate,
                isn,
                before,
                after,
            });
        }
        prove_loaded(&meta, expect)?;
        let (cfnr, cisn, rec, guard) = progress;
        ops.insert(
            0,
            Op::Put {
                fnr: cfnr,
                isn: cisn,
                record: rec,
                follows: Some(guard),
            },
        );
        let info = self.commit(Vec::new(), ops, None)?;
        Ok((info, stats))
    }

    /// Waits until every write so far is in the page store: the first step
    /// of a load, so that `load_range` reads a settled file.
    pub fn settle(&self) -> Result<(), DbError> {
        self.wait_applied()
    }

    /// Empties replicate file `replicate` for a full reinit, which writes
    /// every record again ([`CatalogOp::Clear`] from isn 1), in one commit
    /// with the engine record `progress` puts (the load's beginning): its
    /// count and digest become zero, its next isn 1, and any damage
    /// recorded against it goes. Then waits until the page store has
    /// applied it, so the load's chunks, each at or above the file's next
    /// isn, go to the page store in bulk after the deletion, never before
    /// it.
    ///
    /// Until the load's last chunk proves the file against its master, it
    /// is a replicate being loaded, as during any reinit. The caller
    /// serialises writes to it (as replication links do).
    pub fn clear_for_load(
        &self,
        replicate: Fnr,
        progress: (Fnr, Isn, Record),
    ) -> Result<CommitInfo, DbError> {
        self.loaded_replicate(replicate)?;
        let (fnr, isn, record) = progress;
        let put = Op::Put {
            fnr,
            isn,
            record,
            follows: None,
        };
        self.commit_clear(replicate, Isn(1), FileMeta::new(replicate), vec![put])
    }

    /// Empties replicate file `replicate` from isn `from` on, for a load
    /// resumed at `from` after a crash left records of a chunk that was
    /// never committed (the file damaged), as [`Database::clear_for_load`]
    /// does from isn 1: only if the records below `from` are exactly what
    /// the file's meta says (read here). They stay, those at or above go,
    /// and the damage goes. Otherwise nothing is done and None is returned
    /// (the caller rebases the file instead). Resumed at isn 1, the whole
    /// file goes.
    pub fn clear_resumed_load(
        &self,
        replicate: Fnr,
        from: Isn,
    ) -> Result<Option<CommitInfo>, DbError> {
        let meta = self.loaded_replicate(replicate)?;
        if from.0 <= 1 {
            // Resumed at its start: nothing below to keep.
            let empty = FileMeta::new(replicate);
            return self
                .commit_clear(replicate, from, empty, Vec::new())
                .map(Some);
        }
        self.wait_applied()?;
        let below = super::recovery::range_meta(
            &self.shared().store,
            replicate,
            Isn(0),
            Some(Isn(from.0 - 1)),
        )?;
        if (below.count, below.digest) != (meta.count, meta.digest) || meta.next_isn > from.0 {
            return Ok(None);
        }
        self.commit_clear(replicate, from, meta, Vec::new())
            .map(Some)
    }

    /// The meta of `replicate`, a replicate file a load may empty (damaged
    /// too: emptying it ends its damage), or why it is not one.
    fn loaded_replicate(&self, replicate: Fnr) -> Result<FileMeta, DbError> {
        let info = self.file_info(replicate)?;
        let def = info.def;
        if def.role != Role::Replicate {
            return Err(DbError::BadDefinition(format!(
                "file {replicate} is a {} file; only a replicate file is emptied for a load",
                def.role.name()
            )));
        }
        if def.restoring.is_some() {
            return Err(DbError::BadDefinition(format!(
                "file {replicate} is being restored: a load does not empty it"
            )));
        }
        Ok(info.meta)
    }

    /// Commits the clear of `replicate` from `from` (its meta then `meta`)
    /// with `ops`, and waits until the page store has applied it.
    fn commit_clear(
        &self,
        replicate: Fnr,
        from: Isn,
        meta: FileMeta,
        ops: Vec<Op>,
    ) -> Result<CommitInfo, DbError> {
        let info = self.commit(
            vec![CatalogOp::Clear {
                fnr: replicate,
                from,
                meta,
            }],
            ops,
            None,
        )?;
        self.wait_applied()?;
        Ok(info)
    }
}

/// With a load's last chunk (`expect`: the master's count and digest),
/// that the replicate `meta` says it would hold after it is exactly that.
fn prove_loaded(meta: &FileMeta, expect: Option<(u64, crate::Digest)>) -> Result<(), DbError> {
    match expect {
        Some((count, digest)) if (meta.count, meta.digest) != (count, digest) => {
            Err(DbError::BadDefinition(format!(
                "replicate file {} would hold {} records with digest {} after its last loaded chunk, but the load expects {count} records with digest {digest}; nothing written",
                meta.fnr, meta.count, meta.digest
            )))
        }
        _ => Ok(()),
    }
}

/// What a confirmation record must hold before an engine write replaces it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PutGuard {
    /// Its `seq` field (0 when absent) equals this and no load is in
    /// progress: a confirmation only ever moves forward, one batch at a time.
    Seq(Seq),
    /// A load with this id is in progress and has loaded up to (not
    /// including) isn `next`: chunks apply in order, each exactly once.
    Load { id: String, next: u64 },
}

/// What one loaded chunk changed on a replicate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadStats {
    /// Records stored or replaced.
    pub written: u64,
    /// Records deleted (held by the replicate, not wanted in the range).
    pub removed: u64,
    /// Records already equal, left alone (scoped loads).
    pub kept: u64,
}

impl std::ops::AddAssign for LoadStats {
    fn add_assign(&mut self, o: LoadStats) {
        self.written += o.written;
        self.removed += o.removed;
        self.kept += o.kept;
    }
}

/// Checks that a chunk's records (`what`: loaded, restored) lie inside
/// `[from, to)`, have isns above 0 and ascend.
pub(super) fn check_chunk(
    what: &str,
    from: Isn,
    to: Option<Isn>,
    wanted: &[(Isn, Vec<u8>)],
) -> Result<(), DbError> {
    let in_range = |i: Isn| i >= from && to.is_none_or(|t| i < t);
    if let Some(bad) = wanted.iter().find(|(i, _)| !in_range(*i) || i.0 == 0) {
        return Err(DbError::BadDefinition(format!(
            "{what} record isn {} lies outside its chunk [{from}, {})",
            bad.0,
            to.map_or("end".into(), |t| t.to_string())
        )));
    }
    if wanted.windows(2).any(|w| w[0].0 >= w[1].0) {
        return Err(DbError::BadDefinition(format!(
            "{what} records are not in ascending isn order"
        )));
    }
    Ok(())
}

/// The changes that turn `have` into `want` (both ascending by isn):
/// records only in `have` are deleted, records only in `want` stored,
/// records in both replaced if they differ (or always, with `rewrite`).
pub(super) fn diff_range(
    have: Vec<(Isn, Vec<u8>)>,
    want: Vec<(Isn, Vec<u8>)>,
    rewrite: bool,
) -> (Vec<ReplicatedChange>, LoadStats) {
    let mut stats = LoadStats::default();
    let mut out = Vec::new();
    let (mut have, mut want) = (have.into_iter().peekable(), want.into_iter().peekable());
    loop {
        let order = match (have.peek(), want.peek()) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some((h, _)), Some((w, _))) => h.cmp(w),
        };
        match order {
            std::cmp::Ordering::Less => {
                if let Some((i, b)) = have.next() {
                    stats.removed += 1;
                    out.push(ReplicatedChange::new(i, Some(b), None));
                }
            }
            std::cmp::Ordering::Greater => {
                if let Some((i, a)) = want.next() {
                    stats.written += 1;
                    out.push(ReplicatedChange::new(i, None, Some(a)));
                }
            }
            std::cmp::Ordering::Equal => {
                if let (Some((i, b)), Some((_, a))) = (have.next(), want.next()) {
                    if a == b && !rewrite {
                        stats.kept += 1;
                    } else {
                        stats.written += 1;
                        out.push(ReplicatedChange::new(i, Some(b), Some(a)));
                    }
                }
            }
        }
    }
    (out, stats)
}

/// A replicated change: isn, expected current bytes, new bytes (None: absent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicatedChange {
    pub isn: Isn,
    /// The bytes the replicate must hold now (None: absent).
    pub before: Option<Vec<u8>>,
    /// The bytes it holds after (None: deleted).
    pub after: Option<Vec<u8>>,
}

impl ReplicatedChange {
    pub fn new(isn: Isn, before: Option<Vec<u8>>, after: Option<Vec<u8>>) -> ReplicatedChange {
        ReplicatedChange { isn, before, after }
    }
}
