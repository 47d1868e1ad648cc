//! Whole-database recovery (`etp db recover`): a database whose page store
//! will not open (damaged, deleted, its disk lost) is rebuilt from what
//! survives elsewhere — the newest copy set of each of its files in the copy
//! area, rolled forward with its protection log, the live segments and the
//! archived ones (`copy archive`) together — or, when the protection log
//! still reaches back to the database's first LSN, from the log alone. The
//! damaged page store is never opened.
//!
//! The log is gathered first: for every segment number, the live segment
//! or its archived copy (the archived one verified against its recorded
//! size and blake3; the live one wins unless it is shorter, as a copy that
//! lost its tail would be). The gathered log is then read end to end
//! ([`propagator::plog::survey`]): damage in its middle (well-formed frames
//! after a bad one) stops a recovery to the end, and `--to-last-good` stops
//! at the last commit before it, naming the commits after it (LSN, time,
//! files) that are lost. A torn tail is the log's end, as at a restart.
//!
//! The result is written into a new directory (`--into`, or beside the
//! damaged one and then swapped into its place, the damaged directory kept
//! under a new name for whoever investigates).

use crate::area::{Area, CopySet};
use crate::error::{Error, Within};
use crate::restore::{self, LogSource, OnProgress, Target};
use propagator::medium::FsDir;
use propagator::plog::survey::{survey_keeping, Survey};
pub use propagator::reapply::{Conflict, Reapplied};
use propagator::{Database, DbId, Fnr, Lsn};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Where a whole-database recovery stops.
#[derive(Clone, Copy, Debug)]
pub enum Until {
    /// The end of the protection log (refused if it is damaged before it).
    End,
    Lsn(Lsn),
    /// Every commit at or before this time (µs since the epoch).
    Time(i64),
    /// The last commit before the first damage in the log.
    LastGood,
}

/// One protection-log segment the recovery read, and where from.
#[derive(Clone, Debug, Serialize)]
pub struct SegmentUsed {
    pub name: String,
    /// "live" (the damaged database's own log directory) or "archive".
    pub from: &'static str,
    pub bytes: u64,
}

/// A copy set the recovery started from.
#[derive(Clone, Debug, Serialize)]
pub struct SetUsed {
    pub set: String,
    pub lsn: Lsn,
    pub files: Vec<Fnr>,
    /// Commits rolled forward onto it.
    pub commits: u64,
}

/// What a whole-database recovery did.
#[derive(Clone, Debug, Serialize)]
pub struct Recovered {
    pub dbid: DbId,
    /// The recovered database.
    pub into: PathBuf,
    /// The damaged directory, kept under this name (an in-place recovery).
    pub damaged_kept: Option<PathBuf>,
    /// "copies and log" or "log alone".
    pub method: &'static str,
    pub segments: Vec<SegmentUsed>,
    pub log: Survey,
    /// The LSN the database is recovered to.
    pub lsn: Lsn,
    pub sets: Vec<SetUsed>,
    /// The commits after `lsn` that the log holds but the recovery could
    /// not or was told not to apply: (first, last) LSN, and their files.
    pub lost: Option<Lost>,
    /// Files the log changed that no copy set holds (a recovery from copies
    /// cannot bring them back; from the log alone it does).
    pub not_recovered: Vec<Fnr>,
    /// Segments of the old log written into the archive (so copy sets can
    /// be rolled forward across the recovery later).
    pub archived: Vec<String>,
    /// Archived segments and copy sets after the recovered LSN, moved out
    /// of the way (another history).
    pub set_aside: Vec<String>,
    /// With `--reapply`: the transactions after the damage re-applied.
    pub reapplied: Option<Reapplied>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Lost {
    pub from: Lsn,
    pub through: Lsn,
    pub files: BTreeSet<Fnr>,
}

/// The gathered log: a directory holding, per segment number, the live
/// segment or its archived copy (removed when dropped).
pub struct Gathered {
    dir: PathBuf,
    pub used: Vec<SegmentUsed>,
}

impl Gathered {
    /// The gathered segments' directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The gathered segments, opened.
    fn segments(&self, dbid: DbId) -> Result<Vec<propagator::plog::Segment>, Error> {
        propagator::plog::open_segments_readonly(&FsDir::new(&self.dir), dbid)
            .map_err(propagator::DbError::from)
            .within(|| "cannot read the gathered log".to_string())
    }
}

/// Walks the commits of `segs` in LSN order, up to the first damage:
/// `f(segment index, end of its frame, commit)` until it returns false.
fn each_commit(
    segs: &[propagator::plog::Segment],
    mut f: impl FnMut(usize, u64, &propagator::plog::Commit) -> bool,
) {
    let mut scan = propagator::plog::LogScan::new(segs, 0);
    while let Ok(Some(fr)) = scan.next_frame() {
        if let propagator::plog::PlogEntry::Commit(c) = &fr.entry {
            if !f(fr.seg_idx, fr.end, c) {
                break;
            }
        }
    }
}

impl Drop for Gathered {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Gathers database `dbid`'s protection log: its live segments in
/// `data/plog` and its archived ones in `area`, per segment number the live
/// one unless its archived copy (verified) is longer; staged beside
/// `beside`.
pub fn gather(
    data: &Path,
    area: Option<&Area>,
    dbid: DbId,
    beside: &Path,
) -> Result<Gathered, Error> {
    let stem = format!(
        ".{}.plog-",
        beside
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    );
    let dir = beside.with_file_name(format!("{stem}{}", std::process::id()));
    // What a killed run left (its process gone) goes first: it holds only
    // links to segments.
    if let Some(parent) = beside.parent() {
        if let Ok(entries) = std::fs::read_dir(parent) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let pid = name.strip_prefix(&stem).and_then(|p| p.parse::<u32>().ok());
                if pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir).within(|| format!("cannot clear {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).within(|| format!("cannot create {}", dir.display()))?;
    let g = Gathered {
        dir,
        used: Vec::new(),
    };
    // Segment number → (path, bytes, from).
    let mut chosen: BTreeMap<u64, (PathBuf, u64, &'static str)> = BTreeMap::new();
    let live = data.join("plog");
    if let Ok(entries) = std::fs::read_dir(&live) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(no) = propagator::plog::format::parse_segment_name(&name) {
                let bytes = e.metadata().map(|m| m.len()).unwrap_or(0);
                chosen.insert(no, (e.path(), bytes, "live"));
            }
        }
    }
    if let Some(area) = area {
        for a in crate::archive::list(area, dbid)? {
            // The archived copy (of a closed segment, verified below) is
            // taken when there is no live one, when the live one is
            // shorter (it lost its tail), or when the live one is as long
            // but its bytes differ (damaged since it was archived).
            let better = match chosen.get(&a.segment.no) {
                None => true,
                Some((_, bytes, _)) if *bytes < a.segment.bytes => true,
                Some((path, bytes, _)) if *bytes == a.segment.bytes => {
                    crate::archive::hash_file(path).map_or(true, |(_, h)| h != a.blake3)
                }
                Some(_) => false,
            };
            if !better {
                continue;
            }
            match crate::archive::verify(area, dbid, &a) {
                Ok(()) => {
                    let path = crate::archive::dir_of(area, dbid).join(&a.segment.name);
                    chosen.insert(a.segment.no, (path, a.segment.bytes, "archive"));
                }
                Err(e) => {
                    tracing::warn!(segment = %a.segment.name, reason = %e, "archived log segment left out")
                }
            }
        }
    }
    if chosen.is_empty() {
        return Err(Error::Refused(format!(
            "no protection-log segment of database {dbid} in {}{}: nothing to recover from",
            live.display(),
            area.map(|a| format!(" or in the archive of {}", a.root().display()))
                .unwrap_or_default()
        )));
    }
    let mut g = g;
    for (no, (path, bytes, from)) in chosen {
        let name = propagator::plog::format::segment_name(no);
        let to = g.dir.join(&name);
        if std::fs::hard_link(&path, &to).is_err() {
            std::fs::copy(&path, &to)
                .within(|| format!("cannot copy {} to {}", path.display(), to.display()))?;
        }
        g.used.push(SegmentUsed { name, from, bytes });
    }
    Ok(g)
}

/// The LSN a recovery stops at, from the log's survey; refuses what the log
/// cannot give, naming the damage.
fn target_lsn(s: &Survey, until: Until) -> Result<Lsn, Error> {
    let damaged = |what: &str| -> Error {
        let d = s.damage.as_ref();
        Error::Refused(format!(
            "{what}: the protection log is damaged after LSN {} ({}){}; recover with --to-last-good to stop at LSN {}",
            s.last_good,
            d.map(|d| format!("{} at offset {}: {}", d.path, d.offset, d.reason))
                .unwrap_or_default(),
            d.and_then(|d| d.lost_through())
                .map(|t| format!(", and LSNs {} to {t} after it would be lost", s.last_good.next()))
                .unwrap_or_default(),
            s.last_good
        ))
    };
    match until {
        Until::End | Until::Time(_) if s.damage.is_some() => {
            Err(damaged("cannot recover to the end of the log"))
        }
        Until::End | Until::Time(_) | Until::LastGood => Ok(s.last_good),
        Until::Lsn(l) if l > s.last_good => match &s.damage {
            Some(_) => Err(damaged(&format!("cannot recover to LSN {l}"))),
            None => Err(Error::Refused(format!(
                "LSN {l} is past the end of the protection log (LSN {})",
                s.last_good
            ))),
        },
        Until::Lsn(l) if l.0 + 1 < s.first.0 => Err(Error::Refused(format!(
            "LSN {l} is before the protection log's first LSN {}",
            s.first
        ))),
        Until::Lsn(l) => Ok(l),
    }
}

/// Per master file, the highest incarnation any definition in the gathered
/// log gives it (checkpoints and commits, before and after the target).
fn max_incarnations(g: &Gathered, dbid: DbId) -> Result<BTreeMap<Fnr, u32>, Error> {
    use propagator::catalog::CatalogOp;
    use propagator::plog::PlogEntry;
    let mut out: BTreeMap<Fnr, u32> = BTreeMap::new();
    let mut note = |d: &propagator::FileDef| {
        if let propagator::Role::Master { incarnation, .. } = d.role {
            let e = out.entry(d.fnr).or_insert(0);
            *e = (*e).max(incarnation);
        }
    };
    for s in &g.segments(dbid)? {
        let frames = propagator::plog::reader::frames_from(s, propagator::plog::format::HEADER_LEN)
            .within(|| format!("cannot read {}", s.path))?;
        for (_, e) in frames {
            match e {
                PlogEntry::Checkpoint(c) => c.catalog.iter().for_each(&mut note),
                PlogEntry::Commit(c) => {
                    for op in &c.catalog {
                        if let CatalogOp::Define(d) = op {
                            note(d);
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Raises every master of `db` above the highest incarnation the gathered
/// log gives it: the recovered database set it back, and the seqs it gives
/// out next must not pass for ones of the history it left.
fn raise_masters(db: &Database, floors: &BTreeMap<Fnr, u32>) -> Result<(), propagator::DbError> {
    for f in db.files() {
        if let propagator::Role::Master { .. } = f.def.role {
            let floor = floors.get(&f.def.fnr).copied().unwrap_or(0);
            db.raise_incarnation_above(f.def.fnr, floor)?;
        }
    }
    Ok(())
}

/// The files the commits in `(after, upto]` changed.
fn files_between(g: &Gathered, dbid: DbId, after: Lsn, upto: Lsn) -> Result<BTreeSet<Fnr>, Error> {
    let mut out = BTreeSet::new();
    if upto <= after {
        return Ok(out);
    }
    each_commit(&g.segments(dbid)?, |_, _, c| {
        if c.lsn > upto {
            return false;
        }
        if c.lsn > after {
            out.extend(c.metas.iter().map(|m| m.fnr));
            out.extend(c.changes.iter().map(|ch| ch.fnr));
        }
        true
    });
    Ok(out)
}

/// The LSN of the last commit at or before `time_us` (at most `upto`).
fn lsn_at_time(g: &Gathered, dbid: DbId, time_us: i64, upto: Lsn) -> Result<Lsn, Error> {
    let segs = g.segments(dbid)?;
    let mut at = Lsn(segs
        .first()
        .map_or(0, |s| s.header.first_lsn.0.saturating_sub(1)));
    each_commit(&segs, |_, _, c| {
        if c.lsn > upto || c.time_us > time_us {
            return false;
        }
        at = c.lsn;
        true
    });
    Ok(at)
}

/// Recovers the database in `data` (its page store is not opened) into
/// `into` (None: in place, the damaged directory kept beside it).
pub fn recover(
    data: &Path,
    area: Option<&Area>,
    into: Option<&Path>,
    until: Until,
    on: OnProgress,
) -> Result<Recovered, Error> {
    recover_with(data, area, into, until, false, on)
}

/// [`recover`]; with `reapply` and a log damaged in the middle, the client
/// transactions read whole after the damage are then re-applied to the
/// recovered database as new transactions ([`propagator::reapply::reapply`]).
pub fn recover_with(
    data: &Path,
    area: Option<&Area>,
    into: Option<&Path>,
    until: Until,
    reapply: bool,
    on: OnProgress,
) -> Result<Recovered, Error> {
    if reapply && !matches!(until, Until::LastGood) {
        return Err(Error::Refused(
            "re-applying the transactions after a damage needs a recovery to the last good LSN (--to-last-good): a recovery stopped at an LSN or a time was told to leave out what follows".into(),
        ));
    }
    let dbid = Database::dbid_of(data).within(|| format!("cannot recover {}", data.display()))?;
    let data_abs = std::path::absolute(data).within(|| format!("{}", data.display()))?;
    let (target_dir, in_place) = match into {
        Some(d) => (d.to_path_buf(), false),
        None => {
            let name = data_abs
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "db".into());
            (data_abs.with_file_name(format!("{name}.recovering")), true)
        }
    };
    let gathered = gather(data, area, dbid, &target_dir)?;
    let log = survey_keeping(&FsDir::new(&gathered.dir), dbid, reapply)
        .map_err(propagator::DbError::from)
        .within(|| format!("cannot read the protection log of database {dbid}"))?;
    let lsn = target_lsn(&log, until)?;
    // A time: the last commit at or before it (every later step — the
    // roll-forward, the new log's start, what the area keeps — uses that
    // LSN, never the log's end).
    let lsn = match until {
        Until::Time(t) => lsn_at_time(&gathered, dbid, t, lsn)?,
        _ => lsn,
    };
    let time = match until {
        Until::Time(t) => Some(t),
        _ => None,
    };
    // The sets that can be rolled forward to the target with this log.
    let mut sets: Vec<CopySet> = match area {
        Some(a) => a
            .list()?
            .into_iter()
            .filter(|s| s.dbid == dbid && s.lsn <= lsn && s.lsn.0 + 1 >= log.first.0)
            .filter(|s| time.is_none_or(|t| s.time_us <= t))
            .collect(),
        None => Vec::new(),
    };
    // Newest first: per file, the newest set holding it.
    sets.sort_by(|a, b| (b.lsn, &b.id).cmp(&(a.lsn, &a.id)));
    let mut covered: BTreeSet<Fnr> = BTreeSet::new();
    let mut chosen: Vec<CopySet> = Vec::new();
    let mut skipped = Vec::new();
    for s in sets {
        if s.members.iter().all(|m| covered.contains(&m.fnr)) {
            continue;
        }
        match restore::verify_set(area.expect("sets come from an area"), &s, on) {
            Ok(()) => {
                covered.extend(s.members.iter().map(|m| m.fnr));
                chosen.push(s);
            }
            Err(e) => skipped.push(format!("{}: {e:#}", s.id)),
        }
    }
    let uncovered: Vec<Fnr> = log.touched.difference(&covered).copied().collect();
    let from_log_alone = log.first == Lsn(1) && (chosen.is_empty() || !uncovered.is_empty());
    if !from_log_alone && chosen.is_empty() {
        return Err(Error::Refused(format!(
            "no usable copy set of database {dbid} can be rolled forward with its protection log (which starts at LSN {}){}{}",
            log.first,
            if area.is_none() { "; give the copy area (--area DIR)" } else { "" },
            if skipped.is_empty() {
                String::new()
            } else {
                format!("; passed over: {}", skipped.join("; "))
            }
        )));
    }
    let mut used = Vec::new();
    // The last segment of the old log holding anything up to the target.
    let last_held = gathered
        .segments(dbid)?
        .iter()
        .filter(|s| s.header.first_lsn <= lsn)
        .map(|s| s.no)
        .max()
        .unwrap_or(0);
    let built = if from_log_alone {
        rebuild_from_log(data, &gathered, &target_dir, dbid, lsn).and_then(|()| {
            // Set back (the log goes on past the target): its masters'
            // next seqs must not pass for the ones left behind.
            if lsn < log.last_good || log.damage.is_some() {
                let floors = max_incarnations(&gathered, dbid)?;
                let (db, _) = Database::open(&target_dir)
                    .within(|| format!("cannot open {}", target_dir.display()))?;
                let raised = raise_masters(&db, &floors);
                db.close()
                    .within(|| format!("cannot close {}", target_dir.display()))?;
                raised.within(|| {
                    format!(
                        "cannot raise the incarnations of {}'s masters",
                        target_dir.display()
                    )
                })?;
            }
            Ok(())
        })
    } else {
        // The recovered database's log goes on after the recovered LSN,
        // in the segment after the last one of the old log that holds
        // anything up to it (later ones belong to the history after it and
        // are set aside).
        let next_segment = last_held + 1;
        let floors = max_incarnations(&gathered, dbid)?;
        let new = restore::NewDatabase::make_like(&target_dir, data, lsn, next_segment)?;
        let src = LogSource {
            plog: std::sync::Arc::new(FsDir::new(&gathered.dir)),
            dbid,
            catalog: BTreeMap::new(),
            last_lsn: log.last_good,
            name: format!("database {dbid}'s gathered log"),
        };
        // (A time was resolved to its LSN above.)
        let target = Target::Lsn(lsn);
        let written = (|| {
            // Oldest first: where sets overlap, each is rolled to the same
            // target, so the order does not change the result.
            for s in chosen.iter().rev() {
                let r = restore::regenerate_set(
                    &src,
                    area.expect("sets come from an area"),
                    s.clone(),
                    target,
                    &new.db,
                    true,
                    Vec::new(),
                    on,
                )?;
                used.push(SetUsed {
                    set: s.id.clone(),
                    lsn: s.lsn,
                    files: s.members.iter().map(|m| m.fnr).collect(),
                    commits: r.commits,
                });
            }
            // The masters restored from copies carry the copies'
            // incarnations: raise them above any the log gave them since.
            raise_masters(&new.db, &floors)?;
            Ok(())
        })();
        new.finish(written).map_err(Error::from)
    };
    built?;
    // The client transactions read whole after the damage, re-applied
    // where they still fit (their before-images are what the recovered
    // database holds).
    let reapplied = match (&log.damage, reapply) {
        (Some(d), true) => {
            let (db, _) = Database::open(&target_dir)
                .within(|| format!("cannot open {}", target_dir.display()))?;
            let r = propagator::reapply::reapply(&db, &d.commits, None);
            db.close()
                .within(|| format!("cannot close {}", target_dir.display()))?;
            Some(r.within(|| "re-applying the transactions after the damage".to_string())?)
        }
        _ => None,
    };
    let reached = lsn;
    // What the log holds after the recovered LSN: commits before the
    // damage the recovery was told to stop short of, and those read after
    // the damage.
    let after_damage = log.damage.as_ref().and_then(|d| d.lost_through());
    let through = after_damage.unwrap_or(log.last_good).max(log.last_good);
    let lost = if through > reached || log.damage.is_some() {
        let mut files = files_between(&gathered, dbid, reached, log.last_good)?;
        if let Some(d) = &log.damage {
            files.extend(d.files());
        }
        Some(Lost {
            from: reached.next(),
            through: through.max(reached.next()),
            files,
        })
    } else {
        None
    };
    let damaged_kept = if in_place {
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
        let kept = data_abs.with_file_name(format!(
            "{}.damaged-{stamp}",
            data_abs
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        ));
        std::fs::rename(&data_abs, &kept)
            .within(|| format!("cannot move {} aside", data_abs.display()))?;
        std::fs::rename(&target_dir, &data_abs).within(|| {
            format!(
                "cannot move {} into place (the damaged database is kept as {})",
                target_dir.display(),
                kept.display()
            )
        })?;
        Some(kept)
    } else {
        None
    };
    // The area follows once the recovered database is in place. The log
    // alone: the rebuilt database goes on writing in the segment its log
    // was cut in, so that segment is not archived now (`copy archive`
    // takes it once it is closed).
    let settled = match area {
        Some(a) => settle_history(
            a,
            dbid,
            &gathered,
            reached,
            from_log_alone.then_some(last_held),
        )?,
        None => Settled::default(),
    };
    Ok(Recovered {
        dbid,
        into: if in_place { data_abs } else { target_dir },
        damaged_kept,
        method: if from_log_alone {
            "log alone"
        } else {
            "copies and log"
        },
        segments: gathered.used.clone(),
        log,
        lsn: reached,
        sets: used,
        lost,
        not_recovered: if from_log_alone {
            Vec::new()
        } else {
            uncovered
        },
        archived: settled.archived,
        set_aside: settled.set_aside,
        reapplied,
    })
}

/// What the recovery did to the copy area so the recovered database's
/// history is the only one it holds.
#[derive(Default)]
struct Settled {
    archived: Vec<String>,
    set_aside: Vec<String>,
}

/// Makes the copy area hold the recovered database's history and no
/// other: every segment of the old log up to the recovered LSN is
/// archived (the one holding it cut just after it), so copy sets of the
/// database can still be rolled forward across the recovery later; archived
/// segments and catalogued copy sets after the recovered LSN (a history the
/// recovery left) are set aside, not deleted.
fn settle_history(
    area: &Area,
    dbid: DbId,
    g: &Gathered,
    lsn: Lsn,
    continued: Option<u64>,
) -> Result<Settled, Error> {
    let segs = g.segments(dbid)?;
    // Per segment: its last commit's LSN, and where the recovered LSN's
    // frame ends if it holds it.
    let mut last: BTreeMap<usize, Lsn> = BTreeMap::new();
    let mut cut: Option<(usize, u64)> = None;
    each_commit(&segs, |i, end, c| {
        if c.lsn > lsn {
            return false;
        }
        last.insert(i, c.lsn);
        if c.lsn == lsn {
            cut = Some((i, end));
        }
        true
    });
    let mut out = Settled::default();
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    let archived: BTreeMap<u64, crate::archive::Archived> = crate::archive::list(area, dbid)?
        .into_iter()
        .map(|a| (a.segment.no, a))
        .collect();
    for (i, s) in segs.iter().enumerate() {
        let first = s.header.first_lsn;
        if first > lsn {
            if let Some(a) = archived.get(&s.no) {
                crate::archive::set_aside(area, dbid, a, &stamp)?;
                out.set_aside
                    .push(format!("archived log segment {}", a.segment.name));
            }
            continue;
        }
        if continued == Some(s.no) {
            continue;
        }
        let mut bytes = std::fs::read(&s.path).within(|| format!("cannot read {}", s.path))?;
        if let Some((_, end)) = cut.filter(|(ci, _)| *ci == i) {
            bytes.truncate(end as usize);
        }
        let same = archived.get(&s.no).is_some_and(|a| {
            a.segment.bytes == bytes.len() as u64
                && a.blake3 == blake3::hash(&bytes).to_hex().to_string()
        });
        if same {
            continue;
        }
        // An archived copy that holds more (the history after the
        // recovered LSN) is set aside first, never overwritten.
        if let Some(a) = archived.get(&s.no) {
            crate::archive::set_aside(area, dbid, a, &stamp)?;
            out.set_aside
                .push(format!("archived log segment {}", a.segment.name));
        }
        let name = propagator::plog::format::segment_name(s.no);
        let info = propagator::SegmentInfo {
            no: s.no,
            name: name.clone(),
            path: s.path.clone(),
            first_lsn: first,
            last_lsn: Some(
                last.get(&i)
                    .copied()
                    .unwrap_or(Lsn(first.0.saturating_sub(1))),
            ),
            bytes: bytes.len() as u64,
            created_us: s.header.created_us,
        };
        crate::archive::store(area, dbid, info, &bytes)?;
        out.archived.push(name);
    }
    for set in area
        .list()?
        .into_iter()
        .filter(|s| s.dbid == dbid && s.lsn > lsn)
    {
        area.set_aside(&set.id)?;
        out.set_aside
            .push(format!("copy set {} (LSN {})", set.id, set.lsn));
    }
    Ok(out)
}

/// A new database from the protection log alone (it reaches back to LSN
/// 1): the identity and the log up to the target are put in place and the
/// database's own restart replays them into an empty page store.
fn rebuild_from_log(
    data: &Path,
    g: &Gathered,
    into: &Path,
    dbid: DbId,
    lsn: Lsn,
) -> Result<(), Error> {
    if into.exists()
        && std::fs::read_dir(into)
            .within(|| format!("cannot read {}", into.display()))?
            .next()
            .is_some()
    {
        return Err(Error::Refused(format!(
            "{} exists and is not empty{}",
            into.display(),
            if into.join(Database::IDENTITY_FILE).exists() {
                ""
            } else {
                " (a recovery into it was interrupted? remove it, or recover --into another directory)"
            }
        )));
    }
    let plog = into.join("plog");
    std::fs::create_dir_all(&plog).within(|| format!("cannot create {}", plog.display()))?;
    let made = (|| -> Result<(), Error> {
        let id = data.join(Database::IDENTITY_FILE);
        std::fs::copy(&id, into.join(Database::IDENTITY_FILE))
            .within(|| format!("cannot copy {}", id.display()))?;
        // The log through the target's commit: whole segments before it,
        // the one holding it cut just after its frame.
        let segs = g.segments(dbid)?;
        let mut cut: Option<(usize, u64)> = None;
        each_commit(&segs, |i, end, c| {
            if c.lsn > lsn {
                return false;
            }
            cut = Some((i, end));
            true
        });
        let Some((last_seg, _)) = cut else {
            return Err(Error::Refused(format!(
                "the protection log holds no commit up to LSN {lsn}: there is nothing to rebuild"
            )));
        };
        for (i, s) in segs.iter().enumerate().take(last_seg + 1) {
            let name = propagator::plog::format::segment_name(s.no);
            let to = plog.join(&name);
            std::fs::copy(&s.path, &to).within(|| format!("cannot copy {}", s.path))?;
            if let Some((ci, end)) = cut {
                if ci == i {
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(&to)
                        .and_then(|f| f.set_len(end).and_then(|()| f.sync_all()))
                        .within(|| format!("cannot cut {}", to.display()))?;
                }
            }
        }
        std::fs::File::open(&plog)
            .and_then(|d| d.sync_all())
            .within(|| format!("cannot sync {}", plog.display()))?;
        // Its restart replays the whole log into the empty page store.
        let (db, _) = Database::open(into)
            .within(|| format!("cannot open the rebuilt database {}", into.display()))?;
        db.close()
            .within(|| format!("cannot close {}", into.display()))?;
        Ok(())
    })();
    if made.is_err() {
        let _ = std::fs::remove_dir_all(into);
    }
    made
}
