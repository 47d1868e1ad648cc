//! Restart recovery (autorestart) and damage detection at open.
//!
//! 1. Open every segment (headers, ownership, no gaps).
//! 2. Find the segment whose opening checkpoint is at or before the page
//!    store's applied LSN `A`; scan from there, checking every frame.
//! 3. Commits up to `A` only advance the *expected* catalog and metas (from
//!    the log, the truth); at `A` they are compared with what the store says.
//! 4. Commits after `A` are replayed through the same [`Applier`] as the live
//!    path, each before-image checked against the store: a mismatch marks
//!    that file (and its master/log partner) damaged, never silently used.
//! 5. A bad frame in the last segment with nothing valid after it is a torn
//!    tail: unacknowledged, truncated and reported — unless the store has
//!    already applied past it, which means it held a committed transaction.
//!    A bad frame anywhere else stops the open, naming segment and offset.
//! 6. After an unclean stop every file is rescanned and its digest compared
//!    with the log's; a clean stop (a clean checkpoint last, nothing to
//!    replay) skips the rescan.

use super::writer::CheckpointState;
use super::Latest;
use crate::apply::{Applier, StateView};
use crate::catalog::{Damage, FileDef, Role};
use crate::digest::FileMeta;
use crate::error::DbError;
use crate::ids::{DbId, Fnr, Isn, Lsn};
use crate::medium::MediumDir;
use crate::plog::format::HEADER_LEN;
use crate::plog::reader::valid_frame_after;
use crate::plog::{
    open_segments, Checkpoint, Commit, LogError, LogScan, PlogEntry, PlogWriter, ScanFault, Segment,
};
use crate::store::{PageStore, StoreBatch};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// A torn tail that open truncated.
#[derive(Clone, Debug, Serialize)]
pub struct TornTail {
    pub path: String,
    pub segment: u64,
    pub offset: u64,
    pub bytes_dropped: u64,
    pub reason: String,
}

/// What open found and did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct OpenReport {
    /// The page store's applied LSN before recovery.
    pub store_lsn: Lsn,
    /// The last LSN in the protection log.
    pub log_end: Lsn,
    /// Commits redone into the page store.
    pub replayed: u64,
    /// Whether the last stop was clean (no rescan needed).
    pub clean: bool,
    pub rescanned: bool,
    pub torn_tail: Option<TornTail>,
    pub removed_segment: Option<String>,
    /// Files found damaged: (fnr, reason).
    pub damaged: Vec<(Fnr, String)>,
}

pub(crate) struct Recovered {
    pub latest: Latest,
    pub writer: PlogWriter,
    pub checkpoint: CheckpointState,
    pub report: OpenReport,
}

/// The catalog and metas the log says the files should have.
#[derive(Default)]
struct Expected {
    catalog: BTreeMap<Fnr, FileDef>,
    metas: BTreeMap<Fnr, FileMeta>,
}

impl Expected {
    fn load(&mut self, c: &Checkpoint) {
        self.catalog = c.catalog.iter().map(|d| (d.fnr, d.clone())).collect();
        self.metas = c.metas.iter().map(|m| (m.fnr, *m)).collect();
    }

    fn matches(&self, c: &Checkpoint) -> bool {
        c.catalog.len() == self.catalog.len()
            && c.catalog
                .iter()
                .all(|d| self.catalog.get(&d.fnr) == Some(d))
            && c.metas.iter().all(|m| self.metas.get(&m.fnr) == Some(m))
    }

    fn advance(&mut self, c: &Commit) {
        for op in &c.catalog {
            if let crate::catalog::CatalogOp::Define(d) = op {
                self.catalog.insert(d.fnr, d.clone());
                self.metas.entry(d.fnr).or_insert(FileMeta::new(d.fnr));
            }
        }
        for m in &c.metas {
            self.metas.insert(m.fnr, *m);
        }
    }

    fn partner(&self, fnr: Fnr) -> Option<Fnr> {
        match self.catalog.get(&fnr)?.role {
            Role::Master { log, .. } => Some(log),
            Role::Log { master } => Some(master),
            _ => None,
        }
    }
}

/// Replayed writes not yet applied to the store.
struct ReplayView<'a> {
    exp: &'a Expected,
    store: &'a PageStore,
    overlay: &'a HashMap<(Fnr, Isn), Option<Vec<u8>>>,
}

impl StateView for ReplayView<'_> {
    fn def(&self, fnr: Fnr) -> Option<FileDef> {
        self.exp.catalog.get(&fnr).cloned()
    }
    fn meta(&self, fnr: Fnr) -> Option<FileMeta> {
        self.exp.metas.get(&fnr).copied()
    }
    fn get(&self, fnr: Fnr, isn: Isn) -> Result<Option<Vec<u8>>, DbError> {
        if let Some(v) = self.overlay.get(&(fnr, isn)) {
            return Ok(v.clone());
        }
        Ok(self.store.get(fnr, isn)?)
    }
}

struct Replay {
    overlay: HashMap<(Fnr, Isn), Option<Vec<u8>>>,
    batch: StoreBatch,
    commits: usize,
}

impl Replay {
    fn flush(&mut self, store: &PageStore, applied: Lsn) -> Result<(), DbError> {
        if self.commits == 0 {
            return Ok(());
        }
        self.batch.applied = applied;
        store.apply(&self.batch)?;
        self.batch = StoreBatch::default();
        self.overlay.clear();
        self.commits = 0;
        Ok(())
    }
}

fn mark_damaged(exp: &Expected, damaged: &mut BTreeMap<Fnr, Damage>, fnr: Fnr, reason: String) {
    if let Some(p) = exp.partner(fnr) {
        damaged
            .entry(p)
            .or_insert_with(|| Damage::of_partner(fnr, &reason));
    }
    tracing::error!(file = %fnr, reason = %reason, "file damaged");
    damaged.entry(fnr).or_insert(Damage::own(reason));
}

fn replay_commit(
    store: &PageStore,
    exp: &Expected,
    damaged: &mut BTreeMap<Fnr, Damage>,
    rp: &mut Replay,
    c: &Commit,
    marks: &HashMap<Fnr, Lsn>,
) -> Result<(), DbError> {
    // A log store that already holds this commit: neither checked nor written.
    let held = |fnr: Fnr| marks.get(&fnr).is_some_and(|m| c.lsn <= *m);
    for op in &c.catalog {
        if let crate::catalog::CatalogOp::Clear { fnr, from, .. } = op {
            // Emptied before this commit's writes, as the applier does:
            // what the commits replayed so far wrote goes to the page store
            // first (it holds them as of the commit before), then every
            // record of the file goes, and reads see the emptied file.
            rp.flush(store, Lsn(c.lsn.0.saturating_sub(1)))?;
            store.clear(*fnr, *from)?;
            damaged.remove(fnr);
        }
    }
    check_bulk(store, exp, damaged, c, |f| !held(f))?;
    loop {
        let view = ReplayView {
            exp,
            store,
            overlay: &rp.overlay,
        };
        let mut ap = Applier::new(&view, c.lsn, c.time_us, c.client_id.clone());
        for op in &c.catalog {
            // A rebase takes the file's content as it stood then as its new
            // baseline: damage found before it no longer applies.
            if let crate::catalog::CatalogOp::Rebase(m) = op {
                damaged.remove(&m.fnr);
            }
            ap.catalog_op(op);
        }
        let mut failed = None;
        for ch in &c.changes {
            if damaged.contains_key(&ch.fnr) {
                continue;
            }
            match ap.change(ch.clone(), !held(ch.fnr)) {
                Ok(()) => {}
                Err(e @ DbError::BeforeImageMismatch { .. }) => {
                    failed = Some((ch.fnr, e.to_string()));
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        if let Some((fnr, reason)) = failed {
            mark_damaged(exp, damaged, fnr, reason);
            continue;
        }
        let d = ap.finish()?;
        for m in &c.metas {
            if damaged.contains_key(&m.fnr) {
                continue;
            }
            if d.metas.get(&m.fnr) != Some(m) {
                mark_damaged(
                    exp,
                    damaged,
                    m.fnr,
                    format!(
                        "replaying LSN {} gives a different digest than the log recorded",
                        c.lsn
                    ),
                );
            }
        }
        for (fnr, isn, v) in d.records {
            if !damaged.contains_key(&fnr) && !held(fnr) {
                rp.overlay.insert((fnr, isn), v.clone());
                rp.batch.records.push((fnr, isn, v));
            }
        }
        rp.batch.metas.extend(
            c.metas
                .iter()
                .filter(|m| !damaged.contains_key(&m.fnr))
                .copied(),
        );
        rp.batch.catalog.extend(d.catalog.into_values());
        if let Some(id) = &c.client_id {
            rp.batch.client_ids.push((id.clone(), c.lsn));
        }
        rp.commits += 1;
        return Ok(());
    }
}

/// Checks that the page store holds whole each bulk chunk `c` commits to a
/// file `check` selects (one not yet applied); a file whose chunk is not
/// there is damaged: the protection log does not carry its records.
fn check_bulk(
    store: &PageStore,
    exp: &Expected,
    damaged: &mut BTreeMap<Fnr, Damage>,
    c: &Commit,
    check: impl Fn(Fnr) -> bool,
) -> Result<(), DbError> {
    for op in &c.catalog {
        let crate::catalog::CatalogOp::Bulk(b) = op else {
            continue;
        };
        if damaged.contains_key(&b.fnr) || !check(b.fnr) {
            continue;
        }
        if let Some(reason) = super::bulk::bulk_chunk_problem(store, c.lsn, b)? {
            mark_damaged(exp, damaged, b.fnr, reason);
        }
    }
    Ok(())
}

/// A commit the page store holds but some log stores do not: only their
/// records, derived again (the commit's changes carry every image the log
/// records need; nothing is read).
fn replay_logs_only(
    store: &PageStore,
    exp: &Expected,
    logs: &mut StoreBatch,
    c: &Commit,
    marks: &HashMap<Fnr, Lsn>,
) -> Result<(), DbError> {
    let overlay = HashMap::new();
    let view = ReplayView {
        exp,
        store,
        overlay: &overlay,
    };
    let mut ap = Applier::new(&view, c.lsn, c.time_us, c.client_id.clone());
    for op in &c.catalog {
        ap.catalog_op(op);
    }
    for ch in &c.changes {
        ap.change(ch.clone(), false)?;
    }
    let d = ap.finish()?;
    for (fnr, isn, v) in d.records {
        if marks.get(&fnr).is_some_and(|m| c.lsn > *m) {
            logs.records.push((fnr, isn, v));
        }
    }
    Ok(())
}

/// Each log store's LSN after open: one with frames past its last mark
/// (a batch cut short, or a bad frame) is cut back to the mark when the
/// protection log reaches back to rebuild what follows; otherwise open
/// stops, naming the store and what is wrong with it.
fn log_marks(store: &PageStore, oldest: Lsn) -> Result<HashMap<Fnr, Lsn>, DbError> {
    let mut marks = HashMap::new();
    for ls in store.log_stores() {
        let applied = ls.applied();
        if applied < oldest {
            return Err(DbError::LogStoreBehindLog {
                fnr: ls.fnr(),
                dir: ls.dir().display().to_string(),
                applied,
                oldest,
                fault: ls.tail().and_then(|t| t.fault).map(|f| f.to_string()),
            });
        }
        if let Some(tail) = ls.tail() {
            match &tail.fault {
                Some(f) => tracing::warn!(file = %ls.fnr(), fault = %f, mark = %applied,
                    "log store damaged after its last good mark: rebuilt from the protection log"),
                None => tracing::info!(file = %ls.fnr(), bytes = tail.bytes, mark = %applied,
                    "log store: a batch cut short after its last mark dropped"),
            }
            ls.repair().map_err(crate::store::StoreError::from)?;
        }
        marks.insert(ls.fnr(), applied);
    }
    Ok(marks)
}

/// Compares a file's content in the store with its expected meta.
/// The count and digest of a file computed from its records in the page store.
pub(crate) fn scan_meta(store: &PageStore, fnr: Fnr) -> Result<FileMeta, DbError> {
    range_meta(store, fnr, Isn(0), None)
}

/// The count and digest of `fnr`'s records the page store holds from isn
/// `from` through `through` (None: to the end), read from it.
pub(crate) fn range_meta(
    store: &PageStore,
    fnr: Fnr,
    from: Isn,
    through: Option<Isn>,
) -> Result<FileMeta, DbError> {
    let mut held = FileMeta::new(fnr);
    for kv in store.scan_shared(fnr, from) {
        let (isn, v) = kv?;
        if through.is_some_and(|t| isn > t) {
            break;
        }
        held.change(isn, None, Some(v.as_ref()));
    }
    Ok(held)
}

pub(crate) fn content_problem(
    store: &PageStore,
    expected: &FileMeta,
) -> Result<Option<String>, DbError> {
    let actual = scan_meta(store, expected.fnr)?;
    if actual.count == expected.count && actual.digest == expected.digest {
        return Ok(None);
    }
    Ok(Some(format!(
        "content has {} records with digest {}, the protection log says {} records with digest {}",
        actual.count, actual.digest, expected.count, expected.digest
    )))
}

fn compare_store(
    store: &PageStore,
    exp: &Expected,
    at: Lsn,
    damaged: &mut BTreeMap<Fnr, Damage>,
) -> Result<(), DbError> {
    let metas: BTreeMap<Fnr, FileMeta> = store.metas()?.into_iter().map(|m| (m.fnr, m)).collect();
    let catalog: BTreeMap<Fnr, FileDef> =
        store.catalog()?.into_iter().map(|d| (d.fnr, d)).collect();
    for (fnr, def) in &exp.catalog {
        let want = exp.metas.get(fnr).copied().unwrap_or(FileMeta::new(*fnr));
        if catalog.get(fnr) != Some(def) {
            mark_damaged(
                exp,
                damaged,
                *fnr,
                format!(
                    "the page store's catalog entry disagrees with the protection log at LSN {at}"
                ),
            );
        } else if metas.get(fnr).map(|m| (m.count, m.digest)) != Some((want.count, want.digest)) {
            mark_damaged(exp, damaged, *fnr, format!("the page store's count and digest disagree with the protection log at LSN {at}"));
        }
    }
    Ok(())
}

fn torn_or_corrupt(
    segs: &[Segment],
    f: &ScanFault,
    applied: Lsn,
    last: Lsn,
) -> Result<(), DbError> {
    let seg = &segs[f.seg_idx];
    let is_last = f.seg_idx + 1 == segs.len();
    let later = if is_last && f.offset > 0 {
        valid_frame_after(seg, f.offset).map_err(|e| LogError::io(seg.path.clone(), e))?
    } else {
        None
    };
    if !is_last || f.offset == 0 || later.is_some() {
        let reason = match later {
            Some(at) => format!("{} (a valid frame follows at offset {at})", f.reason),
            None => f.reason.clone(),
        };
        return Err(LogError::Corrupt {
            path: f.path.clone(),
            segment: f.segment,
            offset: f.offset,
            expected_lsn: f.expected_lsn,
            reason,
        }
        .into());
    }
    if applied > last {
        return Err(LogError::TailCommitted {
            path: f.path.clone(),
            segment: f.segment,
            offset: f.offset,
            applied,
            reason: f.reason.clone(),
        }
        .into());
    }
    Ok(())
}

pub(crate) fn recover(
    store: &PageStore,
    plog: Arc<dyn MediumDir>,
    dbid: DbId,
    segment_size: u64,
) -> Result<Recovered, DbError> {
    let opened = open_segments(&*plog, dbid)?;
    let mut segs = opened.segments;
    let applied = store.applied_lsn()?;
    let mut report = OpenReport {
        store_lsn: applied,
        removed_segment: opened.removed_torn,
        ..OpenReport::default()
    };
    let oldest = Lsn(segs[0].header.first_lsn.0.saturating_sub(1));
    if applied < oldest {
        return Err(DbError::StoreBehindLog { applied, oldest });
    }
    let marks = log_marks(store, oldest)?;
    // Replay starts at the oldest of the page store's and the log stores' LSNs.
    let from = marks.values().copied().fold(applied, Lsn::min);
    let start = segs
        .iter()
        .rposition(|s| s.header.first_lsn.0 <= from.0 + 1)
        .ok_or(DbError::StoreBehindLog { applied, oldest })?;
    let mut logs_batch = StoreBatch {
        logs_only: true,
        ..StoreBatch::default()
    };
    let mut exp = Expected::default();
    let mut damaged = BTreeMap::new();
    let mut rp = Replay {
        overlay: HashMap::new(),
        batch: StoreBatch::default(),
        commits: 0,
    };
    let mut loaded = false;
    let mut compared = false;
    let mut last_end = (start, HEADER_LEN);
    let mut last_clean = false;
    let mut last_time = 0i64;
    let mut fault = None;
    let mut torn = None;
    let mut scan = LogScan::new(&segs, start);
    loop {
        let frame = match scan.next_frame() {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(f) => {
                fault = Some(f);
                break;
            }
        };
        last_end = (frame.seg_idx, frame.end);
        match &frame.entry {
            PlogEntry::Checkpoint(c) => {
                if !loaded {
                    exp.load(c);
                    loaded = true;
                } else if !exp.matches(c) {
                    return Err(LogError::Corrupt {
                        path: segs[frame.seg_idx].path.clone(),
                        segment: frame.segment,
                        offset: frame.offset,
                        expected_lsn: scan.last_lsn().next(),
                        reason: "checkpoint disagrees with the commits before it".into(),
                    }
                    .into());
                }
                last_clean = c.clean;
                last_time = last_time.max(c.time_us);
            }
            PlogEntry::Commit(c) => {
                last_clean = false;
                last_time = last_time.max(c.time_us);
                if c.lsn > applied {
                    if !logs_batch.records.is_empty() {
                        logs_batch.applied = applied;
                        store.apply(&logs_batch)?;
                        logs_batch.records.clear();
                    }
                    replay_commit(store, &exp, &mut damaged, &mut rp, c, &marks)?;
                    report.replayed += 1;
                } else if c.lsn > from {
                    check_bulk(store, &exp, &mut damaged, c, |f| {
                        marks.get(&f).is_some_and(|m| c.lsn > *m)
                    })?;
                    replay_logs_only(store, &exp, &mut logs_batch, c, &marks)?;
                    if logs_batch.records.len() >= 4096 {
                        logs_batch.applied = c.lsn;
                        store.apply(&logs_batch)?;
                        logs_batch.records.clear();
                    }
                }
                exp.advance(c);
            }
        }
        if !compared && scan.last_lsn() == applied {
            compare_store(store, &exp, applied, &mut damaged)?;
            compared = true;
        }
        if rp.commits >= 4096 {
            rp.flush(store, scan.last_lsn())?;
        }
    }
    let log_end = scan.last_lsn();
    drop(scan);
    if let Some(f) = fault {
        // A log store marked past the bad frame held it as committed too.
        let held = marks.values().copied().fold(applied, Lsn::max);
        torn_or_corrupt(&segs, &f, held, log_end)?;
        let seg = &segs[f.seg_idx];
        if f.offset <= HEADER_LEN && f.seg_idx > 0 {
            // Torn while being created: nothing was committed into it.
            let name = crate::plog::format::segment_name(seg.no);
            plog.remove(&name)
                .map_err(|e| LogError::io(seg.path.clone(), e))?;
            plog.sync_dir()
                .map_err(|e| LogError::io(seg.path.clone(), e))?;
            report.removed_segment = Some(seg.path.clone());
            segs.truncate(f.seg_idx);
        } else {
            torn = Some(f);
        }
    }
    if applied > log_end {
        return Err(DbError::StoreAheadOfLog { applied, log_end });
    }
    if let Some((fnr, m)) = marks.iter().find(|(_, m)| **m > log_end) {
        tracing::error!(file = %fnr, mark = %m, "log store ahead of the protection log");
        return Err(DbError::StoreAheadOfLog {
            applied: *m,
            log_end,
        });
    }
    if !logs_batch.records.is_empty() {
        logs_batch.applied = applied.min(log_end);
        store.apply(&logs_batch)?;
    }

    rp.flush(store, log_end)?;
    report.log_end = log_end;
    report.clean = last_clean && report.replayed == 0 && torn.is_none();
    // After an unclean stop every file is rescanned. Replicate files are
    // rescanned at every open: their digest is what a replication task
    // checks against the master's, so damage done while the node was down
    // (an offline edit, a restored wrong copy) must show in it.
    report.rescanned = !report.clean;
    for (fnr, def) in &exp.catalog {
        if report.clean && def.role != Role::Replicate {
            continue;
        }
        {
            if damaged.contains_key(fnr) {
                continue;
            }
            let want = exp.metas.get(fnr).copied().unwrap_or(FileMeta::new(*fnr));
            if let Some(problem) = content_problem(store, &want)? {
                mark_damaged(&exp, &mut damaged, *fnr, problem);
            }
        }
    }
    // A restore that began and never proved its last chunk.
    for (fnr, def) in &exp.catalog {
        if let Some(why) = &def.restoring {
            damaged.insert(*fnr, Damage::own(crate::catalog::unfinished_restore(why)));
        }
    }
    report.damaged = damaged
        .iter()
        .map(|(f, r)| (*f, r.reason.clone()))
        .collect();
    let (seg_idx, offset) = last_end;
    let seg = &segs[seg_idx.min(segs.len() - 1)];
    let offset = if seg_idx < segs.len() {
        offset
    } else {
        seg.len
    };
    let (writer, zeroed) = PlogWriter::resume(
        plog.clone(),
        dbid,
        seg.no,
        seg.medium.clone(),
        offset,
        segment_size,
    )?;
    if let Some(f) = torn {
        // The writer zeroed the unsynced remains after the last good frame.
        tracing::warn!(segment = seg.no, offset = f.offset, dropped = zeroed, reason = %f.reason,
            "torn tail dropped (an unacknowledged transaction backed out)");
        report.torn_tail = Some(TornTail {
            path: seg.path.clone(),
            segment: seg.no,
            offset: f.offset,
            bytes_dropped: zeroed,
            reason: f.reason.clone(),
        });
    }
    let checkpoint = CheckpointState {
        catalog: exp.catalog.clone(),
        metas: exp.metas.clone(),
        last_lsn: log_end,
    };
    let latest = Latest {
        catalog: exp.catalog,
        metas: exp.metas,
        overlay: HashMap::new(),
        overlay_applied: Lsn(0),
        pending_ids: HashMap::new(),
        last_lsn: log_end,
        last_time_us: last_time,
        next_isn: HashMap::new(),
        damaged,
        rebased: Default::default(),
    };
    Ok(Recovered {
        latest,
        writer,
        checkpoint,
        report,
    })
}
