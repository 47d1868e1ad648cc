//! Verify, restore, regenerate and back out.
//!
//! Restores write through [`Database::restore_range`]: chunked commits that
//! derive nothing (a restored master writes no log records; its log is
//! restored beside it from the same set) and are logged like any commit,
//! so a crash in the middle of a restore leaves a database that restart
//! recovery brings back consistently, and running the restore again
//! finishes it. The last chunk of each file proves the file's count and
//! digest against the copy's.

use super::area::{Area, CopySet, Member};
use super::error::{SetError, Within};
use crate::copy::{resolve, resolve_with, CopyError, Overlay, Prove, Records};
use crate::database::{IngestChunk, LoadStats, PendingCommit, Restore, RESTORE_MARKER};
use crate::medium::FsDir;
use crate::slice::{log_start, read_slice, SliceBase};
use crate::wire::OperationRequest;
use crate::{Database, FileMeta, Fnr, Isn, Lsn, Role};
use std::collections::{BTreeMap, BTreeSet};

/// How far a long restore, regenerate or backout has got, for a progress
/// bar or a JSON progress event.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Progress {
    /// What it is doing: `verify`, `restore`, `roll forward`, `read log`,
    /// `back out`.
    pub phase: &'static str,
    pub done: u64,
    /// What `done` will reach; a phase may end short of it (a regenerate to
    /// a time stops at the first later commit).
    pub total: u64,
    /// What `done` counts: `records` or `log entries`.
    pub unit: &'static str,
}

/// Told of [`Progress`] as an operation goes.
pub type OnProgress<'a> = &'a mut dyn FnMut(&Progress);

/// Counts one phase's progress and reports it (not more often than every
/// 1/64 of the total, and at the end).
struct Counter<'a, 'b> {
    p: Progress,
    next: u64,
    on: &'a mut OnProgress<'b>,
}

impl<'a, 'b> Counter<'a, 'b> {
    fn new(
        on: &'a mut OnProgress<'b>,
        phase: &'static str,
        total: u64,
        unit: &'static str,
    ) -> Self {
        let p = Progress {
            phase,
            done: 0,
            total,
            unit,
        };
        (on)(&p);
        Counter { p, next: 0, on }
    }

    fn set(&mut self, done: u64) {
        self.p.done = done;
        if done >= self.next {
            (self.on)(&self.p);
            self.next = done + (self.p.total / 64).max(1);
        }
    }

    fn add(&mut self, n: u64) {
        self.set(self.p.done + n);
    }

    fn finish(self) {
        (self.on)(&self.p);
    }
}

/// Re-reads one member: every frame's CRC, the whole file's blake3 and
/// length against the catalog, and its resolved count and digest.
pub fn verify_member(area: &Area, set: &str, m: &Member) -> Result<(), SetError> {
    verify_member_counted(area, set, m, &mut |_| {})
}

fn verify_member_counted(
    area: &Area,
    set: &str,
    m: &Member,
    records: &mut dyn FnMut(u64),
) -> Result<(), SetError> {
    let dir = FsDir::new(area.data_dir(set)?);
    let r = resolve(&dir, &m.copy.name, &mut |chunk| {
        records(chunk.len() as u64);
        Ok(())
    })?;
    check_resolved(&dir, m, &r)
}

fn check_resolved(dir: &FsDir, m: &Member, r: &crate::copy::Resolved) -> Result<(), SetError> {
    use crate::medium::MediumDir;
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
    if r.header.def.fnr != m.fnr || r.end != m.copy.end {
        return Err(CopyError::Mismatch {
            path,
            reason: "its header or end frame disagrees with the catalog".into(),
        }
        .into());
    }
    Ok(())
}

/// Verifies every member of a set; the first failure names its file.
pub fn verify_set(area: &Area, set: &CopySet, mut on: OnProgress) -> Result<(), SetError> {
    let mut c = Counter::new(&mut on, "verify", set_records(set), "records");
    for m in &set.members {
        verify_member_counted(area, &set.id, m, &mut |n| c.add(n)).within(|| unverified(set))?;
    }
    c.finish();
    Ok(())
}

/// What a check of a copy set's files that fails says first.
fn unverified(set: &CopySet) -> String {
    format!("copy set {} fails verification", set.id)
}

/// The records a set's copy files hold (what resolving them streams).
fn set_records(set: &CopySet) -> u64 {
    set.members.iter().map(|m| m.copy.end.meta.count).sum()
}

/// One chunk for a [`ChunkWriter`]: [`Database::restore_range`]'s arguments.
struct Chunk {
    fnr: Fnr,
    from: Isn,
    to: Option<Isn>,
    records: Records,
    last: Option<FileMeta>,
    /// In bulk (a new database), or logged.
    bulk: bool,
}

/// A thread that takes items in order from a bounded queue (`depth`
/// waiting) and returns what its `body` made of them; its first failure
/// stops it, and is what [`Stage::send`] or [`Stage::finish`] answers.
struct Stage<T, R> {
    tx: Option<std::sync::mpsc::SyncSender<T>>,
    thread: Option<std::thread::JoinHandle<Result<R, SetError>>>,
    name: &'static str,
}

impl<T: Send + 'static, R: Send + 'static> Stage<T, R> {
    fn start(
        name: &'static str,
        depth: usize,
        body: impl FnOnce(std::sync::mpsc::Receiver<T>) -> Result<R, SetError> + Send + 'static,
    ) -> Result<Self, SetError> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<T>(depth);
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || body(rx))?;
        Ok(Stage {
            tx: Some(tx),
            thread: Some(thread),
            name,
        })
    }

    /// Hands an item over; if the thread has stopped, its failure.
    fn send(&mut self, item: T) -> Result<(), SetError> {
        let stopped = match &self.tx {
            Some(tx) => tx.send(item).is_err(),
            None => true,
        };
        if stopped {
            self.finish()?;
            refused!("the restore's {} thread stopped", self.name);
        }
        Ok(())
    }

    /// Waits until every item handed over is handled; what the body made.
    fn finish(&mut self) -> Result<R, SetError> {
        self.tx = None;
        match self.thread.take() {
            Some(t) => match t.join() {
                Ok(r) => r,
                Err(_) => refused!("the restore's {} thread panicked", self.name),
            },
            None => refused!("the restore's {} thread already finished", self.name),
        }
    }
}

impl<T, R> Drop for Stage<T, R> {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Writes a restore's chunks in order, in three threads beside the one
/// that reads and decodes the copy: a sum thread sums each bulk chunk's
/// records (count and digest: a blake3 per record, the largest share of a
/// restore's CPU after the kernel's copying), a writer thread writes each
/// chunk (in bulk, straight to the page store, where it can) and queues
/// its commit, and a sync thread waits for each commit in turn (leading
/// its group commit), so a chunk's log sync overlaps the next chunk's
/// write. At most [`DEPTH`] chunks wait at each stage and one commit to be
/// synced.
type ChunkWriter = Stage<Chunk, BTreeMap<Fnr, LoadStats>>;

/// The writer stage: chunks with how each is written.
type ChunkWrite = Stage<(Chunk, Restore), BTreeMap<Fnr, LoadStats>>;

/// How many chunks (up to 8 MB each) wait at each stage of a restore: the
/// writer stops for tens of milliseconds at each of the page store's syncs
/// of a sorted run, and the stages before it keep reading and summing
/// meanwhile.
const DEPTH: usize = 4;

fn chunk_writer(db: &Database) -> Result<ChunkWriter, SetError> {
    let mut write = chunk_write(db)?;
    Stage::start("sum", DEPTH, move |rx: std::sync::mpsc::Receiver<Chunk>| {
        for c in rx {
            // Summed here, from the very bytes written, on a thread of its
            // own: not on the reading thread nor the writer's.
            let how = match c.bulk {
                true => Restore::Bulk {
                    sum: crate::database::chunk_sum(&c.records),
                },
                false => Restore::Logged,
            };
            write.send((c, how))?;
        }
        write.finish()
    })
}

fn chunk_write(db: &Database) -> Result<ChunkWrite, SetError> {
    let db = db.clone();
    Stage::start(
        "write",
        DEPTH,
        move |rx: std::sync::mpsc::Receiver<(Chunk, Restore)>| {
            let mut sync =
                Stage::start("sync", 1, |rx: std::sync::mpsc::Receiver<PendingCommit>| {
                    for p in rx {
                        p.wait().within(|| "syncing a restored chunk".to_string())?;
                    }
                    Ok(())
                })?;
            let mut stats: BTreeMap<Fnr, LoadStats> = BTreeMap::new();
            while let Ok((c, how)) = rx.recv() {
                let fnr = c.fnr;
                let whole = matches!(how, Restore::Bulk { .. }) && c.from == Isn(1);
                let (pending, s) =
                    if whole && !c.records.is_empty() && db.can_restore_ingest(fnr)? {
                        // A file restored from empty: the whole of it, chunk by
                        // chunk as they come, as sorted runs of the page store.
                        let mut first = Some((c, how));
                        let mut chunks = std::iter::from_fn(|| {
                            let (c, how) = first.take().or_else(|| rx.recv().ok())?;
                            let sum = match how {
                                Restore::Bulk { sum } => sum,
                                Restore::Logged => crate::database::chunk_sum(&c.records),
                            };
                            Some(IngestChunk {
                                records: c.records,
                                sum,
                                last: c.last,
                            })
                        });
                        db.restore_ingest(fnr, &mut chunks)
                    } else {
                        db.restore_range_queued(fnr, c.from, c.to, c.records, c.last, how)
                    }
                    .within(|| format!("restoring file {fnr}"))?;
                sync.send(pending)?;
                *stats.entry(fnr).or_default() += s;
            }
            sync.finish()?;
            Ok(stats)
        },
    )
}

/// Writes one file's new content, in chunks, as it streams in ascending isn,
/// with `overlay` (isn → final bytes, None: absent) laid over it.
struct FileWriter {
    fnr: Fnr,
    overlay: Overlay,
    pending: Option<(Isn, Records)>,
    /// Chunks that replace nothing may go in bulk (a new database).
    bulk: bool,
}

const CHUNK: usize = 8192;

impl FileWriter {
    fn new(fnr: Fnr, overlay: BTreeMap<Isn, Option<Vec<u8>>>, bulk: bool) -> Self {
        FileWriter {
            fnr,
            overlay: Overlay::new(overlay),
            pending: None,
            bulk,
        }
    }

    fn flush(
        &mut self,
        to: Option<Isn>,
        last: Option<FileMeta>,
        w: &mut ChunkWriter,
    ) -> Result<(), SetError> {
        let (from, records) = self.pending.take().unwrap_or((Isn(1), Vec::new()));
        w.send(Chunk {
            fnr: self.fnr,
            from,
            to,
            records,
            last,
            bulk: self.bulk,
        })
    }

    fn push(&mut self, chunk: Records, w: &mut ChunkWriter) -> Result<(), SetError> {
        let merged = self.overlay.merge(chunk);
        self.stage(merged, w)
    }

    /// Holds records back as the pending chunk, writing the one before:
    /// each chunk covers the isns up to the next chunk's first.
    fn stage(&mut self, records: Records, w: &mut ChunkWriter) -> Result<(), SetError> {
        let mut records = records.into_iter().peekable();
        while records.peek().is_some() {
            let part: Records = records.by_ref().take(CHUNK).collect();
            let first = part[0].0;
            if self.pending.is_some() {
                self.flush(Some(first), None, w)?;
                self.pending = Some((first, part));
            } else {
                self.pending = Some((Isn(1), part));
            }
        }
        Ok(())
    }

    /// Hands over the file's last chunk, which proves it against `meta`.
    fn finish(mut self, meta: FileMeta, w: &mut ChunkWriter) -> Result<(), SetError> {
        let rest = self.overlay.rest();
        self.stage(rest, w)?;
        self.flush(None, Some(meta), w)
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
fn prepare(db: &Database, set: &CopySet) -> Result<(), SetError> {
    let existing: BTreeMap<Fnr, crate::FileInfo> =
        db.files().into_iter().map(|f| (f.def.fnr, f)).collect();
    for m in &set.members {
        let def = &m.copy.def;
        match existing.get(&m.fnr) {
            Some(f) => {
                if f.def.role.name() != def.role.name() {
                    refused!(
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
    // Every member is rebased on what its page store holds, damaged or
    // not: the restore replaces each record and proves the result against
    // the copy's digest, so the count starts from the bytes really there
    // (damage the node has not noticed included). Each is marked as being
    // restored (damaged, across restarts) until its last chunk is proved.
    let members: Vec<Fnr> = db
        .files()
        .into_iter()
        .filter(|f| set.member(f.def.fnr).is_some())
        .map(|f| f.def.fnr)
        .collect();
    for fnr in members {
        // A master's incarnation goes above the copy's as well as its own
        // (a new database's master starts at 0).
        let floor = match set.member(fnr).map(|m| &m.copy.def.role) {
            Some(Role::Master { incarnation, .. }) => *incarnation,
            _ => 0,
        };
        db.begin_restore_above(fnr, &format!("copy set {}", set.id), floor)?;
    }
    Ok(())
}

/// Writes a whole, verified set into `db` (a database opened by this
/// process; its node must not be running), rolled forward by `overlays` (per file: isn →
/// final bytes) to the metas `metas` if given. With `bulk` (a new
/// database, whose log has no past to roll across), chunks that replace
/// nothing go in bulk.
#[allow(clippy::too_many_arguments)]
fn write_set(
    db: &Database,
    area: &Area,
    set: &CopySet,
    overlays: BTreeMap<Fnr, BTreeMap<Isn, Option<Vec<u8>>>>,
    metas: &BTreeMap<Fnr, FileMeta>,
    lsn: Lsn,
    bulk: bool,
    mut on: OnProgress,
) -> Result<Restored, SetError> {
    prepare(db, set)?;
    let dir = FsDir::new(area.data_dir(&set.id)?);
    let mut overlays = overlays;
    let mut files = Vec::new();
    // The records resolved from the copy, what the restore streams.
    let mut c = Counter::new(&mut on, "restore", set_records(set), "records");
    let mut writer = chunk_writer(db)?;
    for m in &set.members {
        let mut w = FileWriter::new(m.fnr, overlays.remove(&m.fnr).unwrap_or_default(), bulk);
        let mut err = None;
        // The file's count and digest are proved by its last restored
        // chunk, against the copy's (or the rolled-forward) meta.
        let resolved = resolve_with(&dir, &m.copy.name, Prove::ByCaller, &mut |chunk| {
            c.add(chunk.len() as u64);
            if err.is_none() {
                if let Err(e) = w.push(chunk, &mut writer) {
                    err = Some(e);
                }
            }
            Ok(())
        })
        .within(|| unverified(set))?;
        if let Some(e) = err {
            return Err(e);
        }
        // The whole file as the catalog recorded it, before its last chunk
        // proves the file and ends its restore.
        check_resolved(&dir, m, &resolved).within(|| unverified(set))?;
        let meta = metas.get(&m.fnr).copied().unwrap_or(m.copy.end.meta);
        w.finish(meta, &mut writer)?;
        files.push(RestoredFile {
            fnr: m.fnr,
            name: m.name.clone(),
            count: meta.count,
            digest: meta.digest.to_string(),
            written: 0,
            removed: 0,
        });
    }
    let stats = writer.finish()?;
    for f in &mut files {
        let s = stats.get(&f.fnr).copied().unwrap_or_default();
        (f.written, f.removed) = (s.written, s.removed);
    }
    db.wait_applied()?;
    c.finish();
    Ok(Restored {
        set: set.id.clone(),
        lsn,
        files,
    })
}

/// Restores a whole set into `db`, as of the set's LSN.
pub fn restore_into(
    db: &Database,
    area: &Area,
    set: &CopySet,
    on: OnProgress,
) -> Result<Restored, SetError> {
    if db.dbid() != set.dbid {
        refused!(
            "copy set {} is of database {}, not of database {} ({})",
            set.id,
            set.dbid,
            db.dbid(),
            db.dir().display()
        );
    }
    verify_set(area, set, on).within(|| "refused to restore".to_string())?;
    write_whole(db, area, set, false, on)
}

/// Writes a whole, verified set as of its own LSN (see [`write_set`]).
fn write_whole(
    db: &Database,
    area: &Area,
    set: &CopySet,
    bulk: bool,
    on: OnProgress,
) -> Result<Restored, SetError> {
    write_set(
        db,
        area,
        set,
        BTreeMap::new(),
        &BTreeMap::new(),
        set.lsn,
        bulk,
        on,
    )
}

/// Restores a whole set into a new database in `dir` (same database id).
///
/// There is no separate verify pass: each file is checked (every frame's
/// CRC, the whole file's blake3 and length, its count and digest) as it is
/// resolved and written,
/// each stays marked as being restored until its last chunk proves it,
/// and a new database that fails any check is removed. (A restore into an
/// existing database verifies the whole set first: there, a damaged copy
/// must not replace anything.)
///
/// Until it ends, `dir` holds a mark (see [`NewDatabase`]): a restore
/// killed half-way leaves a directory that is not a database, and the next
/// restore into it starts over.
pub fn restore_to_dir(
    dir: &std::path::Path,
    area: &Area,
    set: &CopySet,
    on: OnProgress,
) -> Result<Restored, SetError> {
    let new = NewDatabase::make(dir, set.dbid)?;
    // A new database: its log has no past to roll forward across.
    let written = write_whole(&new.db, area, set, true, on);
    new.finish(written)
}

/// A new database a restore or a regenerate is making in a directory.
///
/// Until [`NewDatabase::finish`] ends it, the directory holds a mark
/// ([`RESTORE_MARKER`], synced before the database is made): the database
/// there does not open (except to the restore), and a restore or
/// regenerate into the directory again finds the mark, empties the
/// directory and starts over. A directory with anything else in it is
/// refused, as `Database::init` refuses it.
pub struct NewDatabase {
    pub db: Database,
    dir: std::path::PathBuf,
    /// The directory was there (empty) before.
    existed: bool,
    /// The mark, locked: another restore into the directory is refused.
    _mark: std::fs::File,
}

impl NewDatabase {
    pub fn make(dir: &std::path::Path, dbid: crate::DbId) -> Result<NewDatabase, SetError> {
        Self::make_with(dir, dbid, |d| Database::init(d, dbid, None))
    }

    /// A new database whose protection log continues another's (see
    /// [`Database::init_like`]).
    pub fn make_like(
        dir: &std::path::Path,
        like: &std::path::Path,
        after: Lsn,
        first_segment: u64,
    ) -> Result<NewDatabase, SetError> {
        let dbid = Database::dbid_of(like)?;
        Self::make_with(dir, dbid, |d| {
            Database::init_like(d, like, after, first_segment)
        })
    }

    fn make_with(
        dir: &std::path::Path,
        dbid: crate::DbId,
        init: impl FnOnce(&std::path::Path) -> Result<(), crate::DbError>,
    ) -> Result<NewDatabase, SetError> {
        let marker = dir.join(RESTORE_MARKER);
        let existed = dir.exists();
        let busy = || -> Result<NewDatabase, SetError> {
            refused!(
                "{} is being restored into by another process (its mark is locked)",
                dir.display()
            )
        };
        let mark_file = if marker.exists() {
            // Locked while a restore works in the directory, from before
            // its database is made until after the mark goes.
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&marker)
                .within(|| format!("cannot open {}", marker.display()))?;
            if f.try_lock().is_err() {
                return busy();
            }
            tracing::warn!(dir = %dir.display(), "a restore into this directory did not finish; starting over");
            empty_dir(dir, Some(RESTORE_MARKER))
                .within(|| format!("cannot empty {} to start over", dir.display()))?;
            f
        } else {
            let empty = !existed
                || std::fs::read_dir(dir)
                    .within(|| format!("cannot read {}", dir.display()))?
                    .next()
                    .is_none();
            if !empty {
                // Refused as init refuses it, with its words.
                Database::init(dir, dbid, None)
                    .within(|| format!("cannot create database {}", dir.display()))?;
            }
            // The mark goes first; init leaves it alone.
            let f = std::fs::create_dir_all(dir)
                .and_then(|()| mark(&marker))
                .within(|| format!("cannot mark {} as being restored", dir.display()))?;
            if f.try_lock().is_err() {
                return busy();
            }
            f
        };
        init(dir).within(|| format!("cannot create database {}", dir.display()))?;
        let plog: std::sync::Arc<dyn crate::medium::MediumDir> =
            std::sync::Arc::new(FsDir::new(dir.join("plog")));
        let opts = crate::Options {
            restoring: true,
            ..crate::Options::default()
        };
        // Not cleaned up if it cannot be opened: another process may hold it.
        let (db, _) = Database::open_with(dir, plog, opts)
            .within(|| format!("cannot open database {}", dir.display()))?;
        Ok(NewDatabase {
            db,
            dir: dir.to_path_buf(),
            existed,
            _mark: mark_file,
        })
    }

    /// Ends the work `written` reports: closes the database and, if the
    /// work and the close succeeded, removes the mark (a database now);
    /// else removes what was made (the directory, or its content if it was
    /// there before).
    pub fn finish<T>(self, written: Result<T, SetError>) -> Result<T, SetError> {
        // The mark's lock is held until this returns (`_mark` drops last).
        let NewDatabase {
            db,
            dir,
            existed,
            _mark,
        } = self;
        let closed = db.close();
        let written = written.and_then(|r| {
            closed?;
            std::fs::remove_file(dir.join(RESTORE_MARKER))
                .and_then(|()| std::fs::File::open(&dir)?.sync_all())
                .within(|| format!("cannot unmark {} as being restored", dir.display()))?;
            Ok(r)
        });
        if written.is_err() {
            // Nothing of it may be taken for a restored database.
            let cleared = if existed {
                empty_dir(&dir, None)
            } else {
                std::fs::remove_dir_all(&dir)
            };
            if let Err(e) = cleared {
                tracing::warn!(dir = %dir.display(), error = %e, "the failed restore's database was not removed");
            }
        }
        written
    }
}

/// Removes everything in `dir` but the entry named `keep`.
fn empty_dir(dir: &std::path::Path, keep: Option<&str>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if keep.is_some_and(|k| e.file_name() == k) {
            continue;
        }
        let p = e.path();
        if e.file_type()?.is_dir() {
            std::fs::remove_dir_all(p)?;
        } else {
            std::fs::remove_file(p)?;
        }
    }
    Ok(())
}

/// Writes the restore mark, synced with its directory entry; returns it
/// open.
fn mark(marker: &std::path::Path) -> std::io::Result<std::fs::File> {
    let f = std::fs::File::create(marker)?;
    f.sync_all()?;
    let dir = marker.parent().unwrap_or(std::path::Path::new("."));
    std::fs::File::open(dir)?.sync_all()?;
    Ok(f)
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
/// ever at the level of its master). `into` is a new database: its files
/// are written in bulk (see `database::bulk`); into `db` itself, every
/// chunk is logged, so its log can still be rolled forward across them.
pub fn regenerate(
    db: &Database,
    area: &Area,
    fnr: Fnr,
    target: Target,
    into: Option<&Database>,
    on: OnProgress,
) -> Result<Regenerated, SetError> {
    // Into another database (a new one, as the CLI and the benchmark make
    // it): in bulk; into `db` itself, whose log has a past: logged.
    regenerate_from(
        &LogSource::of(db),
        area,
        fnr,
        target,
        into.unwrap_or(db),
        into.is_some(),
        on,
    )
}

/// [`regenerate`] with another log source than the database's own (its
/// live and archived segments gathered: with a new database `into`, the
/// database need not even open), written into `into` (in bulk when
/// `bulk`: a new database).
pub fn regenerate_from(
    src: &LogSource<'_>,
    area: &Area,
    fnr: Fnr,
    target: Target,
    into: &Database,
    bulk: bool,
    on: OnProgress,
) -> Result<Regenerated, SetError> {
    let (set, skipped) = newest_usable(src.dbid, area, fnr, target, on)?;
    regenerate_set(src, area, set, target, into, bulk, skipped, on)
}

/// The newest copy set of database `dbid` holding `fnr` that verifies, at
/// or before the target, and the newer ones passed over.
fn newest_usable(
    dbid: crate::DbId,
    area: &Area,
    fnr: Fnr,
    target: Target,
    on: OnProgress,
) -> Result<(CopySet, Vec<String>), SetError> {
    let max_lsn = match target {
        Target::Lsn(l) => Some(l),
        _ => None,
    };
    let mut candidates = area.newest_with(dbid, fnr, max_lsn)?;
    if let Target::Time(t) = target {
        candidates.retain(|s| s.time_us <= t);
    }
    if candidates.is_empty() {
        refused!(
            "no copy set of database {} holds file {fnr}{}: nothing to regenerate from",
            dbid,
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
            refused!(
                "no usable copy set holds file {fnr}; passed over: {}",
                skipped.join("; ")
            );
        };
        candidates.remove(0);
        match verify_set(area, &s, on) {
            Ok(()) => break s,
            Err(e) => skipped.push(format!("{}: {e:#}", s.id)),
        }
    };
    Ok((set, skipped))
}

/// The protection log a roll-forward reads, and what it needs to know of
/// its database: an open database's own, or (a database that will not
/// open) its live and archived segments gathered in a directory.
pub struct LogSource<'a> {
    pub plog: std::sync::Arc<dyn crate::medium::MediumDir + 'a>,
    pub dbid: crate::DbId,
    /// The definitions known before the roll-forward (a copy set's own
    /// members' are added to them).
    pub catalog: BTreeMap<Fnr, crate::FileDef>,
    /// The last LSN the log can be read to.
    pub last_lsn: Lsn,
    /// How to name it in messages.
    pub name: String,
}

impl LogSource<'static> {
    pub fn of(db: &Database) -> LogSource<'static> {
        LogSource {
            plog: db.plog_dir(),
            dbid: db.dbid(),
            catalog: db.files().into_iter().map(|f| (f.def.fnr, f.def)).collect(),
            last_lsn: db.last_lsn(),
            name: db.dir().display().to_string(),
        }
    }
}

/// Rolls one verified set forward with `src` to `target`, writing the
/// result into `target_db` (in bulk where a chunk replaces nothing, when
/// `bulk`: a new database, whose log has no past to roll across).
#[allow(clippy::too_many_arguments)]
pub fn regenerate_set(
    src: &LogSource<'_>,
    area: &Area,
    set: CopySet,
    target: Target,
    target_db: &Database,
    bulk: bool,
    skipped: Vec<String>,
    mut on: OnProgress,
) -> Result<Regenerated, SetError> {
    if let Target::Lsn(l) = target {
        if l > src.last_lsn {
            refused!(
                "LSN {l} is past the end of the protection log of {} (LSN {})",
                src.name,
                src.last_lsn
            );
        }
    }
    let files: BTreeSet<Fnr> = set.members.iter().map(|m| m.fnr).collect();
    let mut base = SliceBase {
        catalog: src.catalog.clone(),
        metas: set
            .members
            .iter()
            .map(|m| (m.fnr, m.copy.end.meta))
            .collect(),
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
    let end = upto.unwrap_or(src.last_lsn);
    let mut counted = Counter::new(
        &mut on,
        "roll forward",
        end.0.saturating_sub(set.lsn.0),
        "log entries",
    );
    read_slice(
        &*src.plog,
        src.dbid,
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
            let c = c.whole()?;
            for r in c.records {
                overlays.entry(r.fnr).or_default().insert(r.isn, r.after);
            }
            commits += 1;
            reached = c.lsn;
            counted.set(c.lsn.0.saturating_sub(set.lsn.0));
            Ok(true)
        },
    )
    .within(|| format!("cannot roll copy set {} forward", set.id))?;
    counted.finish();
    // `base` now holds the metas as of the last commit applied.
    let metas_now: BTreeMap<Fnr, FileMeta> = files
        .iter()
        .filter_map(|f| base.metas.get(f).map(|m| (*f, *m)))
        .collect();
    if target_db.dbid() != set.dbid {
        refused!(
            "database {} is database {}, the copy set's is {}",
            target_db.dir().display(),
            target_db.dbid(),
            set.dbid
        );
    }
    let restored = write_set(
        target_db, area, &set, overlays, &metas_now, reached, bulk, on,
    )?;
    Ok(Regenerated {
        restored,
        from_lsn: set.lsn,
        commits,
        skipped,
    })
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
pub fn backout(
    db: &Database,
    fnr: Fnr,
    time_us: i64,
    mut on: OnProgress,
) -> Result<BackedOut, SetError> {
    let def = db.file(fnr)?;
    let mut files = BTreeSet::from([fnr]);
    match def.role {
        Role::Master { log, .. } => {
            files.insert(log);
        }
        Role::Plain => {}
        other => refused!(
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
    let first = start.lsn.0.saturating_sub(1);
    let mut counted = Counter::new(
        &mut on,
        "read log",
        db.last_lsn().0.saturating_sub(first),
        "log entries",
    );
    read_slice(
        &*db.plog_dir(),
        db.dbid(),
        &mut base,
        Lsn(start.lsn.0.saturating_sub(1)),
        None,
        &files,
        |c| {
            counted.set(c.lsn.0.saturating_sub(first));
            if c.time_us <= time_us {
                covered = true;
                return Ok(true);
            }
            // A bulk chunk after the time: its before-images were never logged.
            let c = c.whole()?;
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
    counted.finish();
    if !covered {
        refused!(
            "the protection log of {} starts at LSN {} ({}), after the time asked for: it no longer holds the before-images back to then",
            db.dir().display(),
            start.lsn,
            chrono::DateTime::from_timestamp_micros(start.time_us)
                .map(|t| t.to_rfc3339())
                .unwrap_or_default()
        );
    }
    if commits > 0 && matches!(def.role, Role::Master { .. }) {
        // The master is set back: the seqs it gives out next must not pass
        // for the ones its replicates confirmed before.
        let (inc, _) = db.raise_incarnation(fnr)?;
        tracing::warn!(file = %fnr, incarnation = inc, "master backed out: incarnation raised");
    }
    let mut out = Vec::new();
    let mut records = 0;
    // Every record of the files is rewritten (or kept) from the page store.
    let mut total = 0;
    for f in &files {
        total += db.file_info(*f)?.meta.count;
    }
    let mut counted = Counter::new(&mut on, "back out", total, "records");
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
        let mut w = FileWriter::new(f, overlay, false);
        let mut writer = chunk_writer(db)?;
        let mut from = Isn(1);
        loop {
            let chunk = db.scan_store(f, from, CHUNK, 8 << 20)?;
            let Some((last, _)) = chunk.last() else { break };
            from = Isn(last.0 + 1);
            counted.add(chunk.len() as u64);
            w.push(
                chunk
                    .into_iter()
                    .map(|(i, v)| (i, v.as_ref().to_vec()))
                    .collect(),
                &mut writer,
            )?;
        }
        w.finish(meta, &mut writer)?;
        let stats = writer.finish()?;
        let LoadStats {
            written, removed, ..
        } = stats.get(&f).copied().unwrap_or_default();
        out.push(RestoredFile {
            fnr: f,
            name: db.file(f)?.name,
            count: meta.count,
            digest: meta.digest.to_string(),
            written,
            removed,
        });
    }
    counted.finish();
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

/// Marks (Some) or unmarks (None) every replicate of `set` as being
/// restored, on its master's node, by the topology `db` holds: the master
/// reports it `restoring` and does not feed it until the mark is cleared.
/// Returns what could not be done (an unreachable master is reported, not
/// fatal: the replicate's node is down during the restore anyway).
pub fn mark_restoring(db: &Database, set: &CopySet, why: Option<String>) -> Vec<String> {
    use crate::node::client::Client;
    use crate::wire::{ReplicateAction, Request};
    let mut problems = Vec::new();
    let topo = match crate::node::stored_topology(db) {
        Ok(Some(t)) => t,
        Ok(None) => return problems,
        Err(e) => {
            problems.push(e.to_string());
            return problems;
        }
    };
    for r in &topo.replicates {
        if r.def.database != db.dbid().0 || set.member(Fnr(r.def.file)).is_none() {
            continue;
        }
        let Some(addr) = topo.addresses.get(&crate::DbId(r.def.master_database)) else {
            continue;
        };
        let req = Request::Operation(OperationRequest::Replicate {
            name: r.def.name.clone(),
            action: ReplicateAction::Restoring { why: why.clone() },
        });
        if let Err(e) = Client::connect(*addr).and_then(|mut c| c.call(&req)) {
            problems.push(format!(
                "replicate {}: the master's node {addr} was not told: {e}",
                r.def.name
            ));
        }
    }
    problems
}

/// Restores, inside the node that serves `db`, the newest usable copy set
/// of `db` in the copy area `area` that holds `fnr`; with `roll`, rolled
/// forward with the protection log (`Some(None)`: to its end,
/// `Some(Some(lsn))`: to that LSN). What a recovery plan runs through a
/// live node (`RecoveryOp::Restore`): the node has stopped its tasks and
/// the plan has quiesced its clients.
pub fn restore_in_node(
    db: &Database,
    area: &std::path::Path,
    fnr: Fnr,
    roll: Option<Option<Lsn>>,
) -> Result<serde_json::Value, SetError> {
    let area = Area::open(area)?;
    let mut skipped = Vec::new();
    // A roll-forward to an LSN takes a set at or before it: a copy job that
    // ran after the plan's restore must not be picked up.
    let max_lsn = roll.flatten();
    // Progress goes to the node's log, every few seconds.
    let mut last = std::time::Instant::now();
    let mut on = |p: &Progress| {
        if p.done >= p.total || last.elapsed() >= std::time::Duration::from_secs(5) {
            last = std::time::Instant::now();
            tracing::info!(
                phase = p.phase,
                done = p.done,
                total = p.total,
                unit = p.unit,
                "restore progress"
            );
        }
    };
    for mut set in area.newest_with(db.dbid(), fnr, max_lsn)? {
        // Only what the target needs: a master with its log (not the other
        // masters or the administration file copied beside them), an
        // administration file alone, a replicate unit whole.
        let role = set.member(fnr).map(|m| m.copy.def.role.clone());
        match role {
            Some(Role::Master { log, .. }) => set.members.retain(|m| m.fnr == fnr || m.fnr == log),
            Some(Role::Log { master }) => set.members.retain(|m| m.fnr == fnr || m.fnr == master),
            Some(Role::Administration) => set.members.retain(|m| m.fnr == fnr),
            _ => set
                .members
                .retain(|m| m.copy.def.role != Role::Administration),
        }
        match verify_set(&area, &set, &mut on) {
            Ok(()) if roll.is_some() => {
                let target = match roll.flatten() {
                    Some(l) => Target::Lsn(l),
                    None => Target::End,
                };
                let r = regenerate_set(
                    &LogSource::of(db),
                    &area,
                    set,
                    target,
                    db,
                    false,
                    skipped,
                    &mut on,
                )?;
                return Ok(serde_json::to_value(&r)?);
            }
            Ok(()) => {
                let r = write_whole(db, &area, &set, false, &mut on)?;
                return Ok(serde_json::json!({ "restored": r, "skipped": skipped }));
            }
            Err(e) => skipped.push(format!("{}: {e:#}", set.id)),
        }
    }
    refused!(
        "no usable copy set of database {} holds file {fnr}{}",
        db.dbid(),
        if skipped.is_empty() {
            String::new()
        } else {
            format!("; passed over: {}", skipped.join("; "))
        }
    )
}
