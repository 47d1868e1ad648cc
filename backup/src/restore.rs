//! Verify, restore, regenerate and back out.
//!
//! Restores write through [`Database::restore_range`]: chunked commits that
//! derive nothing (a restored master writes no log records; its log is
//! restored beside it from the same set) and are logged like any commit,
//! so a crash in the middle of a restore leaves a database that restart
//! recovery brings back consistently, and running the restore again
//! finishes it. The last chunk of each file proves the file's count and
//! digest against the copy's.

use crate::area::{Area, CopySet, Member};
use anyhow::{bail, Context};
use propagator::copy::{resolve, CopyError, Records};
use propagator::medium::FsDir;
use propagator::slice::{log_start, read_slice, SliceBase};
use propagator::{Database, FileMeta, Fnr, Isn, Lsn, Role};
use std::collections::{BTreeMap, BTreeSet};

/// Re-reads one member: every frame's CRC, the whole file's blake3 and
/// length against the catalog, and its resolved count and digest.
pub fn verify_member(area: &Area, set: &str, m: &Member) -> anyhow::Result<()> {
    let dir = FsDir::new(area.data_dir(set));
    let r = resolve(&dir, &m.copy.name, &mut |_| Ok(()))?;
    check_resolved(&dir, m, &r)
}

fn check_resolved(dir: &FsDir, m: &Member, r: &propagator::copy::Resolved) -> anyhow::Result<()> {
    use propagator::medium::MediumDir;
    let path = dir.describe(&m.copy.name);
    if r.bytes != m.copy.bytes || r.blake3 != m.copy.blake3 {
        return Err(CopyError::Mismatch {
            path,
            reason: format!(
                "it is {} bytes with blake3 {}, but the catalog recorded {} bytes with blake3 {}",
                r.bytes, r.blake3, m.copy.bytes, m.copy.blake3
            ),
        }
        .into());
    }
    if r.header.def.fnr != m.fnr || r.end.lsn != m.copy.lsn || r.end.meta != m.copy.meta {
        return Err(CopyError::Mismatch {
            path,
            reason: "its header or end frame disagrees with the catalog".into(),
        }
        .into());
    }
    Ok(())
}

/// Verifies every member of a set; the first failure names its file.
pub fn verify_set(area: &Area, set: &CopySet) -> anyhow::Result<()> {
    for m in &set.members {
        verify_member(area, &set.id, m)
            .with_context(|| format!("copy set {} fails verification", set.id))?;
    }
    Ok(())
}

/// Writes one file's new content, in chunks, as it streams in ascending isn,
/// with `overlay` (isn → final bytes, None: absent) laid over it.
struct FileWriter<'a> {
    db: &'a Database,
    fnr: Fnr,
    overlay: std::iter::Peekable<std::collections::btree_map::IntoIter<Isn, Option<Vec<u8>>>>,
    pending: Option<(Isn, Records)>,
    written: u64,
    removed: u64,
}

const CHUNK: usize = 8192;

impl<'a> FileWriter<'a> {
    fn new(db: &'a Database, fnr: Fnr, overlay: BTreeMap<Isn, Option<Vec<u8>>>) -> Self {
        FileWriter {
            db,
            fnr,
            overlay: overlay.into_iter().peekable(),
            pending: None,
            written: 0,
            removed: 0,
        }
    }

    fn merged(&mut self, chunk: Vec<(Isn, Vec<u8>)>, all: bool) -> Vec<(Isn, Vec<u8>)> {
        let mut out = Vec::with_capacity(chunk.len());
        for (isn, v) in chunk {
            while let Some((oi, _)) = self.overlay.peek() {
                if *oi >= isn {
                    break;
                }
                if let Some((oi, Some(ov))) = self.overlay.next() {
                    out.push((oi, ov));
                }
            }
            match self.overlay.peek() {
                Some((oi, _)) if *oi == isn => {
                    if let Some((oi, Some(ov))) = self.overlay.next() {
                        out.push((oi, ov));
                    }
                }
                _ => out.push((isn, v)),
            }
        }
        if all {
            for (oi, ov) in self.overlay.by_ref() {
                if let Some(ov) = ov {
                    out.push((oi, ov));
                }
            }
        }
        out
    }

    fn flush(&mut self, to: Option<Isn>, last: Option<FileMeta>) -> anyhow::Result<()> {
        let (from, recs) = self.pending.take().unwrap_or((Isn(1), Vec::new()));
        let (_, stats) = self
            .db
            .restore_range(self.fnr, from, to, recs, last)
            .with_context(|| format!("restoring file {}", self.fnr))?;
        self.written += stats.written;
        self.removed += stats.removed;
        Ok(())
    }

    fn push(&mut self, chunk: Vec<(Isn, Vec<u8>)>) -> anyhow::Result<()> {
        let merged = self.merged(chunk, false);
        for part in merged.chunks(CHUNK) {
            let first = part[0].0;
            match self.pending.take() {
                None => self.pending = Some((Isn(1), part.to_vec())),
                Some(p) => {
                    self.pending = Some(p);
                    self.flush(Some(first), None)?;
                    self.pending = Some((first, part.to_vec()));
                }
            }
        }
        Ok(())
    }

    fn finish(mut self, meta: FileMeta) -> anyhow::Result<(u64, u64)> {
        let rest = self.merged(Vec::new(), true);
        for part in rest.chunks(CHUNK) {
            let first = part[0].0;
            match self.pending.take() {
                None => self.pending = Some((Isn(1), part.to_vec())),
                Some(p) => {
                    self.pending = Some(p);
                    self.flush(Some(first), None)?;
                    self.pending = Some((first, part.to_vec()));
                }
            }
        }
        self.flush(None, Some(meta))?;
        Ok((self.written, self.removed))
    }
}

/// What a restore wrote, per file.
#[derive(Debug, serde::Serialize)]
pub struct Restored {
    pub set: String,
    /// The LSN the files are at now (the set's, or where regenerate stopped).
    pub lsn: Lsn,
    pub files: Vec<RestoredFile>,
}

#[derive(Debug, serde::Serialize)]
pub struct RestoredFile {
    pub fnr: Fnr,
    pub name: String,
    pub count: u64,
    pub digest: String,
    pub written: u64,
    pub removed: u64,
}

/// Makes sure each member file exists in `db` with the copy's role (creating
/// it if not) and is usable (rebasing a damaged one).
fn prepare(db: &Database, set: &CopySet) -> anyhow::Result<()> {
    let existing: BTreeMap<Fnr, propagator::FileInfo> =
        db.files().into_iter().map(|f| (f.def.fnr, f)).collect();
    for m in &set.members {
        let def = &m.copy.def;
        match existing.get(&m.fnr) {
            Some(f) => {
                if f.def.role.name() != def.role.name() {
                    bail!(
                        "file {} of database {} is a {} file, but the copy holds a {} file: not restored",
                        m.fnr,
                        db.dir().display(),
                        f.def.role.name(),
                        def.role.name()
                    );
                }
            }
            None => match &def.role {
                Role::Master { log, .. } => {
                    db.create_file(m.fnr, &def.name, Role::Plain)?;
                    db.define_master(m.fnr, *log)?;
                }
                Role::Log { .. } => {}
                r => {
                    db.create_file(m.fnr, &def.name, r.clone())?;
                }
            },
        }
    }
    let damaged: Vec<Fnr> = db
        .files()
        .into_iter()
        .filter(|f| f.damaged.is_some() && set.member(f.def.fnr).is_some())
        .map(|f| f.def.fnr)
        .collect();
    for fnr in damaged {
        db.rebase_file(fnr)?;
    }
    Ok(())
}

/// Restores a whole set into `db` (a database opened by this process; its
/// node must not be running), rolled forward by `overlays` (per file: isn →
/// final bytes) to the metas `metas` if given.
fn write_set(
    db: &Database,
    area: &Area,
    set: &CopySet,
    overlays: BTreeMap<Fnr, BTreeMap<Isn, Option<Vec<u8>>>>,
    metas: &BTreeMap<Fnr, FileMeta>,
    lsn: Lsn,
) -> anyhow::Result<Restored> {
    verify_set(area, set).context("refused to restore")?;
    prepare(db, set)?;
    let dir = FsDir::new(area.data_dir(&set.id));
    let mut overlays = overlays;
    let mut files = Vec::new();
    for m in &set.members {
        let mut w = FileWriter::new(db, m.fnr, overlays.remove(&m.fnr).unwrap_or_default());
        let mut err = None;
        resolve(&dir, &m.copy.name, &mut |chunk| {
            if err.is_none() {
                if let Err(e) = w.push(chunk) {
                    err = Some(e);
                }
            }
            Ok(())
        })?;
        if let Some(e) = err {
            return Err(e);
        }
        let meta = metas.get(&m.fnr).copied().unwrap_or(m.copy.meta);
        let (written, removed) = w.finish(meta)?;
        files.push(RestoredFile {
            fnr: m.fnr,
            name: m.name.clone(),
            count: meta.count,
            digest: meta.digest.to_string(),
            written,
            removed,
        });
    }
    db.wait_applied()?;
    Ok(Restored {
        set: set.id.clone(),
        lsn,
        files,
    })
}

/// Restores a whole set into `db`, as of the set's LSN.
pub fn restore_into(db: &Database, area: &Area, set: &CopySet) -> anyhow::Result<Restored> {
    if db.dbid() != set.dbid {
        bail!(
            "copy set {} is of database {}, not of database {} ({})",
            set.id,
            set.dbid,
            db.dbid(),
            db.dir().display()
        );
    }
    write_set(db, area, set, BTreeMap::new(), &BTreeMap::new(), set.lsn)
}

/// Restores a whole set into a new database in `dir` (same database id).
pub fn restore_to_dir(
    dir: &std::path::Path,
    area: &Area,
    set: &CopySet,
) -> anyhow::Result<Restored> {
    verify_set(area, set).context("refused to restore")?;
    Database::init(dir, set.dbid, None)
        .with_context(|| format!("cannot create database {}", dir.display()))?;
    let (db, _) =
        Database::open(dir).with_context(|| format!("cannot open database {}", dir.display()))?;
    let r = write_set(&db, area, set, BTreeMap::new(), &BTreeMap::new(), set.lsn)?;
    db.close()?;
    Ok(r)
}

/// How far regenerate rolls forward.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    Lsn(Lsn),
    /// Every commit at or before this time (µs since the epoch).
    Time(i64),
    End,
}

/// What regenerate found and did.
#[derive(Debug, serde::Serialize)]
pub struct Regenerated {
    pub restored: Restored,
    pub from_lsn: Lsn,
    pub commits: u64,
    /// Newer sets passed over because they failed verification.
    pub skipped: Vec<String>,
}

/// Restores the newest usable copy set of `db` holding `fnr` and rolls it
/// forward with `db`'s protection log to `target`, writing the result into
/// `into` (None: `db` itself). The whole set is regenerated (a log only
/// ever at the level of its master).
pub fn regenerate(
    db: &Database,
    area: &Area,
    fnr: Fnr,
    target: Target,
    into: Option<&Database>,
) -> anyhow::Result<Regenerated> {
    let max_lsn = match target {
        Target::Lsn(l) => Some(l),
        _ => None,
    };
    let mut candidates = area.newest_with(db.dbid(), fnr, max_lsn)?;
    if let Target::Time(t) = target {
        candidates.retain(|s| s.time_us <= t);
    }
    if candidates.is_empty() {
        bail!(
            "no copy set of database {} holds file {fnr}{}: nothing to regenerate from",
            db.dbid(),
            match target {
                Target::Lsn(l) => format!(" at or before LSN {l}"),
                Target::Time(_) => " at or before that time".into(),
                Target::End => String::new(),
            }
        );
    }
    let mut skipped = Vec::new();
    let set = loop {
        let Some(s) = candidates.first().cloned() else {
            bail!(
                "no usable copy set holds file {fnr}; passed over: {}",
                skipped.join("; ")
            );
        };
        candidates.remove(0);
        match verify_set(area, &s) {
            Ok(()) => break s,
            Err(e) => skipped.push(format!("{}: {e:#}", s.id)),
        }
    };
    if let Target::Lsn(l) = target {
        if l > db.last_lsn() {
            bail!(
                "LSN {l} is past the end of the protection log of {} (LSN {})",
                db.dir().display(),
                db.last_lsn()
            );
        }
    }
    let files: BTreeSet<Fnr> = set.members.iter().map(|m| m.fnr).collect();
    let mut base = SliceBase {
        catalog: db.files().into_iter().map(|f| (f.def.fnr, f.def)).collect(),
        metas: set.members.iter().map(|m| (m.fnr, m.copy.meta)).collect(),
    };
    for m in &set.members {
        base.catalog.insert(m.fnr, m.copy.def.clone());
    }
    let mut overlays: BTreeMap<Fnr, BTreeMap<Isn, Option<Vec<u8>>>> = BTreeMap::new();
    let mut commits = 0u64;
    let mut reached = set.lsn;
    let upto = match target {
        Target::Lsn(l) => Some(l),
        _ => None,
    };
    // Metas as they stand after the last commit applied (a commit past a
    // time target is read but not applied: keep the metas before it).
    let mut metas_now: BTreeMap<Fnr, FileMeta> = base.metas.clone();
    read_slice(
        &*db.plog_dir(),
        db.dbid(),
        &mut base,
        set.lsn,
        upto,
        &files,
        |c| {
            if let Target::Time(t) = target {
                if c.time_us > t {
                    return Ok(false);
                }
            }
            for r in c.records {
                overlays.entry(r.fnr).or_default().insert(r.isn, r.after);
            }
            commits += 1;
            reached = c.lsn;
            Ok(true)
        },
    )
    .with_context(|| format!("cannot roll copy set {} forward", set.id))?;
    // `base` was advanced through every commit passed to the closure; for a
    // time target the last one may have been refused: recompute from the
    // overlays in that case.
    if let Target::Time(_) = target {
        metas_now = metas_after(&set, &overlays, area)?;
    } else {
        for f in &files {
            if let Some(m) = base.metas.get(f) {
                metas_now.insert(*f, *m);
            }
        }
    }
    let target_db = into.unwrap_or(db);
    if target_db.dbid() != set.dbid {
        bail!(
            "database {} is database {}, the copy set's is {}",
            target_db.dir().display(),
            target_db.dbid(),
            set.dbid
        );
    }
    let restored = write_set(target_db, area, &set, overlays, &metas_now, reached)?;
    Ok(Regenerated {
        restored,
        from_lsn: set.lsn,
        commits,
        skipped,
    })
}

/// The metas of a set's files after `overlays`, computed from the copy.
fn metas_after(
    set: &CopySet,
    overlays: &BTreeMap<Fnr, BTreeMap<Isn, Option<Vec<u8>>>>,
    area: &Area,
) -> anyhow::Result<BTreeMap<Fnr, FileMeta>> {
    let dir = FsDir::new(area.data_dir(&set.id));
    let mut out = BTreeMap::new();
    for m in &set.members {
        let ov = overlays.get(&m.fnr);
        let mut meta = m.copy.meta;
        if let Some(ov) = ov {
            let keys: BTreeSet<Isn> = ov.keys().copied().collect();
            let mut old: BTreeMap<Isn, Vec<u8>> = BTreeMap::new();
            resolve(&dir, &m.copy.name, &mut |chunk| {
                for (i, v) in chunk {
                    if keys.contains(&i) {
                        old.insert(i, v);
                    }
                }
                Ok(())
            })?;
            for (i, after) in ov {
                meta.change(*i, old.get(i).map(|v| v.as_slice()), after.as_deref());
            }
        }
        out.insert(m.fnr, meta);
    }
    Ok(out)
}

/// What backout did.
#[derive(Debug, serde::Serialize)]
pub struct BackedOut {
    pub fnr: Fnr,
    /// Commits after the time that were undone for this file.
    pub commits: u64,
    pub records: u64,
    pub files: Vec<RestoredFile>,
}

/// Rolls a master (with its log) or a plain file of `db` back to its state
/// at `time_us`, with the before-images of the commits after it.
pub fn backout(db: &Database, fnr: Fnr, time_us: i64) -> anyhow::Result<BackedOut> {
    let def = db.file(fnr)?;
    let mut files = BTreeSet::from([fnr]);
    match def.role {
        Role::Master { log, .. } => {
            files.insert(log);
        }
        Role::Plain => {}
        other => bail!(
            "file {fnr} is a {} file: only a master (with its log) or a plain file is backed out{}",
            other.name(),
            match other {
                Role::Log { master } => format!("; back out its master {master}"),
                Role::Replicate => "; reload a replicate from its master instead".into(),
                _ => String::new(),
            }
        ),
    }
    let start = log_start(&*db.plog_dir(), db.dbid())?;
    let mut base = SliceBase {
        catalog: db.files().into_iter().map(|f| (f.def.fnr, f.def)).collect(),
        metas: BTreeMap::new(),
    };
    let mut first_before: BTreeMap<Fnr, BTreeMap<Isn, Option<Vec<u8>>>> = BTreeMap::new();
    let mut commits = 0u64;
    let mut covered = start.lsn.0 <= 1 || start.time_us <= time_us;
    let mut log_seq_floor: Option<u64> = None;
    read_slice(
        &*db.plog_dir(),
        db.dbid(),
        &mut base,
        Lsn(start.lsn.0.saturating_sub(1)),
        None,
        &files,
        |c| {
            if c.time_us <= time_us {
                covered = true;
                return Ok(true);
            }
            if !c.records.is_empty() {
                commits += 1;
            }
            for r in c.records {
                let per = first_before.entry(r.fnr).or_default();
                per.entry(r.isn).or_insert(r.before);
                if r.fnr != fnr {
                    log_seq_floor = Some(log_seq_floor.map_or(r.isn.0, |f| f.min(r.isn.0)));
                }
            }
            Ok(true)
        },
    )?;
    if !covered {
        bail!(
            "the protection log of {} starts at LSN {} ({}), after the time asked for: it no longer holds the before-images back to then",
            db.dir().display(),
            start.lsn,
            chrono::DateTime::from_timestamp_micros(start.time_us)
                .map(|t| t.to_rfc3339())
                .unwrap_or_default()
        );
    }
    let mut out = Vec::new();
    let mut records = 0;
    // The master first, then its log (as a restore does).
    for f in files.iter().copied() {
        let overlay = first_before.remove(&f).unwrap_or_default();
        records += overlay.len() as u64;
        let mut meta = db.file_info(f)?.meta;
        for (isn, before) in &overlay {
            let cur = db.read_durable_raw(f, *isn)?;
            meta.change(*isn, cur.as_deref(), before.as_deref());
        }
        if f != fnr {
            if let Some(floor) = log_seq_floor {
                meta.next_isn = floor;
            }
        }
        db.wait_applied()?;
        let mut w = FileWriter::new(db, f, overlay);
        let mut from = Isn(1);
        loop {
            let chunk = db.scan_store(f, from, CHUNK, 8 << 20)?;
            let Some((last, _)) = chunk.last() else { break };
            from = Isn(last.0 + 1);
            w.push(chunk)?;
        }
        let (written, removed) = w.finish(meta)?;
        out.push(RestoredFile {
            fnr: f,
            name: db.file(f)?.name,
            count: meta.count,
            digest: meta.digest.to_string(),
            written,
            removed,
        });
    }
    Ok(BackedOut {
        fnr,
        commits,
        records,
        files: out,
    })
}

/// The database id a set belongs to, for messages.
pub fn describe(set: &CopySet) -> String {
    format!("set {} of database {} at LSN {}", set.id, set.dbid, set.lsn)
}
