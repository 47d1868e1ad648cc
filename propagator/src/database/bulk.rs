//! Bulk chunks: a chunk of new records written straight to the page store
//! and made durable there, then committed by a protection-log entry that
//! names the chunk ([`CatalogOp::Bulk`]: its isn range, count and digest)
//! rather than carrying every record.
//!
//! A restore into a file from empty and a load into an empty replicate
//! write their records this way: each record is written once by the
//! engine (not also into the log, an overlay and the applier's batch),
//! which is what bounds them at the disk's rate rather than at the commit
//! path's.
//!
//! What still holds:
//! - **Atomic per chunk.** The entry is queued only after the chunk is
//!   durable in the page store. Until it is durable the chunk's isns lie
//!   at or above the file's next isn, where no committed record is; a
//!   crash in between leaves records the log does not account for, which
//!   the rescan after an unclean stop finds (the file is then damaged and
//!   reloaded or restored again, as a file being restored already is).
//! - **Checked at replay.** A bulk entry the page store has not applied
//!   is replayed by checking that the store holds the chunk whole (its
//!   count and digest over its isn range); otherwise the file is damaged,
//!   named with the entry's LSN.
//! - **The log no longer rebuilds the chunk.** A page store lost entirely
//!   cannot be rebuilt from the protection log past a bulk entry: the file
//!   is damaged, and restored or reloaded from its source again.

use super::*;
use crate::catalog::BulkChunk;
use crate::digest::Digest;

/// The count and summed digest terms of records (all new).
pub fn chunk_sum(records: &[(Isn, Vec<u8>)]) -> (u64, Digest) {
    let mut d = Digest::default();
    for (isn, v) in records {
        d.add(*isn, v);
    }
    (records.len() as u64, d)
}

impl Database {
    /// Whether a chunk whose first isn is `first` lands where the file
    /// `meta` describes holds no record: at or above its next isn (never
    /// the saturated last isn, which a record may hold).
    pub(super) fn bulk_fits(meta: &FileMeta, first: Isn) -> bool {
        meta.next_isn < u64::MAX && first.0 >= meta.next_isn
    }

    /// Writes `records` (ascending, non-empty, none held by the file: see
    /// [`Database::bulk_fits`]) into the page store, durably, then queues
    /// one commit of the chunk's [`CatalogOp::Bulk`], `catalog` after it,
    /// and `ops`. `sum` is the records' count and digest, computed by the
    /// caller from these very bytes.
    ///
    /// The caller serialises writes to `fnr`, and checks anything that
    /// could refuse the commit (guards, the last chunk's proof) before: a
    /// refused commit leaves the chunk's records in the page store, where
    /// the file does not count them.
    pub(super) fn bulk_queued(
        &self,
        fnr: Fnr,
        records: &[(Isn, Vec<u8>)],
        sum: (u64, Digest),
        catalog: Vec<CatalogOp>,
        ops: Vec<Op>,
    ) -> Result<PendingCommit, DbError> {
        let (Some((first, _)), Some((last, _))) = (records.first(), records.last()) else {
            return Err(DbError::BadDefinition(format!(
                "an empty bulk chunk of file {fnr}"
            )));
        };
        self.check_poisoned()?;
        let info = self.file_info(fnr)?;
        if !matches!(info.def.role, Role::Log { .. }) {
            // Validated as any stored record is, outside the state lock.
            for (_, v) in records {
                super::commit::check_stored(fnr, v)?;
            }
        }
        if !Self::bulk_fits(&info.meta, *first) {
            return Err(DbError::BadDefinition(format!(
                "a bulk chunk of file {fnr} from isn {first} lies below its next isn {}; nothing written",
                info.meta.next_isn
            )));
        }
        if let Err(e) = self.shared().store.bulk_put(fnr, records) {
            // Part of the chunk may be in the page store: as any failed
            // page-store write, the database stops here, and the next open
            // rescans.
            writer::poison(
                self.shared(),
                format!("a bulk chunk of file {fnr} failed to be written: {e}"),
            );
            return Err(e.into());
        }
        let mut all = vec![CatalogOp::Bulk(BulkChunk {
            fnr,
            first: *first,
            last: *last,
            count: sum.0,
            digest: sum.1,
        })];
        all.extend(catalog);
        match self.commit_queued(all, ops, None, false) {
            Ok(p) => Ok(p),
            Err(e) => {
                // The chunk is in the page store and no entry counts it:
                // as a failed page-store write, the database stops, and
                // the next open rescans (the callers check all they can
                // before writing, so this is a poisoned or closing
                // database, or a bug). Said as such, not as the commit's
                // own refusal, which a caller might take for retryable.
                let reason =
                    format!("a bulk chunk of file {fnr} was written but not committed: {e}");
                writer::poison(self.shared(), reason.clone());
                Err(DbError::Poisoned(reason))
            }
        }
    }
}

/// Why the page store does not hold a bulk chunk committed at `lsn`, if it
/// does not: the records in its isn range must be exactly its count and
/// digest.
pub(super) fn bulk_chunk_problem(
    store: &PageStore,
    lsn: Lsn,
    b: &BulkChunk,
) -> Result<Option<String>, DbError> {
    let held = super::recovery::range_meta(store, b.fnr, b.first, Some(b.last))?;
    if (held.count, held.digest) == (b.count, b.digest) {
        return Ok(None);
    }
    Ok(Some(format!(
        "the bulk chunk of isns {}..={} committed at LSN {lsn} ({} records, digest {}) is not whole in the page store ({} records, digest {}); its records are not in the protection log: restore or reload the file",
        b.first, b.last, b.count, b.digest, held.count, held.digest
    )))
}
