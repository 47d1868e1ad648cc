//! Reading what a stretch of the protection log wrote.
//!
//! A commit frame holds the client-visible changes; the log records of
//! master files are derived from them ([`crate::apply`]). To learn every
//! record a range of commits wrote — a copy's log slice, a regenerate's
//! roll-forward, a backout's before-images — the commits are run through
//! the same [`Applier`] the live path uses, on a view that holds only the
//! catalog and the file metas (the before-images are in the log itself).

use crate::apply::{Applier, StateView};
use crate::catalog::FileDef;
use crate::digest::FileMeta;
use crate::error::DbError;
use crate::ids::{DbId, Fnr, Isn, Lsn};
use crate::medium::MediumDir;
use crate::plog::{open_segments_readonly, LogScan, PlogEntry};
use std::collections::{BTreeMap, BTreeSet};

/// One record a commit wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct SliceRecord {
    pub fnr: Fnr,
    pub isn: Isn,
    /// Bytes before (None: absent). Derived log records are always new.
    pub before: Option<Vec<u8>>,
    pub after: Option<Vec<u8>>,
}

/// What one commit wrote to the files asked for.
#[derive(Clone, Debug)]
pub struct SliceCommit {
    pub lsn: Lsn,
    pub time_us: i64,
    pub records: Vec<SliceRecord>,
    /// Bulk chunks the commit wrote to the slice's files: named by the
    /// log, their records are not in `records` (see [`SliceCommit::whole`]).
    pub bulk: Vec<crate::catalog::BulkChunk>,
    /// Files of the slice the commit emptied for a reload
    /// ([`crate::catalog::CatalogOp::Clear`]): the log does not name what
    /// it deleted (see [`SliceCommit::whole`]).
    pub cleared: Vec<Fnr>,
}

impl SliceCommit {
    /// The commit, if `records` is all it wrote to the slice's files; a
    /// commit with a bulk chunk cannot be rolled forward, copied or backed
    /// out from the log ([`SliceError::Bulk`]).
    pub fn whole(self) -> Result<SliceCommit, SliceError> {
        if let Some(fnr) = self.cleared.first() {
            return Err(SliceError::Cleared {
                lsn: self.lsn,
                fnr: *fnr,
            });
        }
        match self.bulk.first() {
            Some(b) => Err(SliceError::Bulk {
                lsn: self.lsn,
                fnr: b.fnr,
                first: b.first,
                last: b.last,
            }),
            None => Ok(self),
        }
    }
}

/// The catalog and the file metas as of the LSN a slice starts after;
/// advanced by [`read_slice`] to where it stopped.
#[derive(Clone, Debug, Default)]
pub struct SliceBase {
    pub catalog: BTreeMap<Fnr, FileDef>,
    pub metas: BTreeMap<Fnr, FileMeta>,
}

impl StateView for SliceBase {
    fn def(&self, fnr: Fnr) -> Option<FileDef> {
        self.catalog.get(&fnr).cloned()
    }
    fn meta(&self, fnr: Fnr) -> Option<FileMeta> {
        self.metas.get(&fnr).copied()
    }
    fn get(&self, _fnr: Fnr, _isn: Isn) -> Result<Option<Vec<u8>>, DbError> {
        // Changes are applied without verification: the log's own
        // before-images are the truth here.
        Ok(None)
    }
}

/// Where the log a slice needs is missing or unreadable.
#[derive(Debug, thiserror::Error)]
pub enum SliceError {
    #[error("the protection log in {dir} no longer covers LSN {needed}: its oldest segment ({segment}) starts at LSN {oldest}")]
    NotCovered {
        dir: String,
        needed: Lsn,
        segment: String,
        oldest: Lsn,
    },
    #[error("the protection log in {dir} ends at LSN {end}, before LSN {wanted}")]
    EndsEarly { dir: String, end: Lsn, wanted: Lsn },
    #[error("protection log segment {path} is damaged at offset {offset} (LSN {lsn} expected): {reason}")]
    Damaged {
        path: String,
        offset: u64,
        lsn: Lsn,
        reason: String,
    },
    /// A commit wrote a bulk chunk of a file the slice covers: the
    /// protection log names the chunk but does not carry its records.
    #[error("LSN {lsn} wrote isns {first}..={last} of file {fnr} in bulk (a restore or a load into it), and the protection log does not carry a bulk chunk's records: nothing can be rolled forward or sliced across it; use a copy taken after LSN {lsn}")]
    Bulk {
        lsn: Lsn,
        fnr: Fnr,
        first: crate::ids::Isn,
        last: crate::ids::Isn,
    },
    /// A commit emptied a file the slice covers, for a reload: the log
    /// does not name the records it deleted.
    #[error("LSN {lsn} emptied file {fnr} for a reload (the protection log does not name the records it deleted): nothing can be rolled forward or sliced across it; use a copy taken after LSN {lsn}")]
    Cleared { lsn: Lsn, fnr: Fnr },
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Calls `f` with what each commit after `after` (up to and including
/// `upto`; None: to the end of the log) wrote to `files` (empty: every
/// file), in LSN order; `f` returns false to stop before that commit.
/// `base` must hold the catalog and metas as of `after` and is advanced
/// through every commit `f` accepted. Returns the last LSN accepted (or
/// `after`).
///
/// Safe on a log that is being written: segments are only read, and an
/// unreadable frame after `upto` (the unsynced tail) ends the scan.
pub fn read_slice(
    dir: &dyn MediumDir,
    dbid: DbId,
    base: &mut SliceBase,
    after: Lsn,
    upto: Option<Lsn>,
    files: &BTreeSet<Fnr>,
    mut f: impl FnMut(SliceCommit) -> Result<bool, SliceError>,
) -> Result<Lsn, SliceError> {
    let segs = open_segments_readonly(dir, dbid).map_err(DbError::from)?;
    let Some(start) = segs
        .iter()
        .rposition(|s| s.header.first_lsn.0 <= after.0 + 1)
    else {
        let first = &segs[0];
        return Err(SliceError::NotCovered {
            dir: dir.describe(""),
            needed: after.next(),
            segment: first.path.clone(),
            oldest: first.header.first_lsn,
        });
    };
    let mut scan = LogScan::new(&segs, start);
    let mut last = after;
    loop {
        if upto.is_some_and(|u| last >= u) {
            break;
        }
        let frame = match scan.next_frame() {
            Ok(Some(fr)) => fr,
            Ok(None) => break,
            Err(fault) => {
                if upto.is_none() {
                    // The live, unsynced tail of the log.
                    break;
                }
                return Err(SliceError::Damaged {
                    path: fault.path,
                    offset: fault.offset,
                    lsn: fault.expected_lsn,
                    reason: fault.reason,
                });
            }
        };
        let PlogEntry::Commit(c) = frame.entry else {
            continue;
        };
        if c.lsn <= after {
            continue;
        }
        let wanted = |fnr: &Fnr| files.is_empty() || files.contains(fnr);
        let bulk: Vec<crate::catalog::BulkChunk> = c
            .catalog
            .iter()
            .filter_map(|op| match op {
                crate::catalog::CatalogOp::Bulk(b) if wanted(&b.fnr) => Some(*b),
                _ => None,
            })
            .collect();
        let cleared: Vec<Fnr> = c
            .catalog
            .iter()
            .filter_map(|op| match op {
                crate::catalog::CatalogOp::Clear { fnr, .. } if wanted(fnr) => Some(*fnr),
                _ => None,
            })
            .collect();
        let d = {
            let mut ap = Applier::new(&*base, c.lsn, c.time_us, c.client_id.clone());
            for op in &c.catalog {
                ap.catalog_op(op);
            }
            // Only the wanted files' changes are re-derived: `base` holds
            // no meta for the others (a master's log records derive from
            // the master's changes, and a slice wants both or neither).
            for ch in c.changes.iter().filter(|ch| wanted(&ch.fnr)) {
                ap.change(ch.clone(), false)?;
            }
            ap.finish()?
        };
        let mut records: Vec<SliceRecord> = d
            .changes
            .iter()
            .filter(|ch| wanted(&ch.fnr))
            .map(|ch| SliceRecord {
                fnr: ch.fnr,
                isn: ch.isn,
                before: ch.before.clone(),
                after: ch.after.clone(),
            })
            .collect();
        // Derived log records follow the changes in `records`.
        records.extend(
            d.records[d.changes.len()..]
                .iter()
                .filter(|(fnr, _, _)| wanted(fnr))
                .map(|(fnr, isn, v)| SliceRecord {
                    fnr: *fnr,
                    isn: *isn,
                    before: None,
                    after: v.clone(),
                }),
        );
        let go = f(SliceCommit {
            lsn: c.lsn,
            time_us: c.time_us,
            records,
            bulk,
            cleared,
        })?;
        if !go {
            // Refused: `base` stays as of the commit before it.
            return Ok(last);
        }
        for m in d.metas.values() {
            base.metas.insert(m.fnr, *m);
        }
        for def in d.catalog.into_values() {
            base.catalog.insert(def.fnr, def);
        }
        last = c.lsn;
    }
    if let Some(u) = upto {
        if last < u {
            return Err(SliceError::EndsEarly {
                dir: dir.describe(""),
                end: last,
                wanted: u,
            });
        }
    }
    Ok(last)
}

/// Where a protection log starts: the first LSN its oldest segment holds,
/// and when that segment was created (every commit before that LSN is at
/// or before this time).
#[derive(Clone, Copy, Debug)]
pub struct LogStart {
    pub lsn: Lsn,
    pub time_us: i64,
    pub segment: u64,
}

pub fn log_start(dir: &dyn MediumDir, dbid: DbId) -> Result<LogStart, SliceError> {
    let segs = open_segments_readonly(dir, dbid).map_err(DbError::from)?;
    let first = &segs[0];
    Ok(LogStart {
        lsn: first.header.first_lsn,
        time_us: first.header.created_us,
        segment: first.no,
    })
}
