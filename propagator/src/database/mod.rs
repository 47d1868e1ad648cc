//! A database: one data directory with its catalog, page store and
//! protection log, and the commit pipeline that ties them together.
//!
//! Commit protocol (no-steal, no-force):
//! 1. A [`Session`](crate::Session) buffers its commands; nothing reaches
//!    disk before ET, so a session that dies leaves no trace (autobackout).
//! 2. At ET the transaction is resolved against the latest state under the
//!    state lock: before-images read, after-images built, derived log records
//!    and file metas computed ([`crate::apply`]), an LSN assigned, and the
//!    entry queued for the log *while the lock is held* so queue order is
//!    LSN order.
//! 3. Group commit, led by the committers ([`writer`]): the committer that
//!    finds nobody writing the log appends every queued entry and makes the
//!    group durable with one `fdatasync`; the others wait to be answered.
//!    ET returns once its entry is durable.
//! 4. The applier thread writes the group to the page store in one atomic
//!    batch that also records the applied LSN, while the next group syncs.
//!    Until then the group's records are read from the overlay, so a reader
//!    always sees every acknowledged commit.
//!
//! On open, [`recovery`] replays the log after the store's applied LSN
//! (autorestart) and checks digests.

mod recover_ops;
mod recovery;
mod writer;

pub use recovery::{OpenReport, TornTail};

use crate::apply::{Applier, StateView};
use crate::catalog::{CatalogOp, FileDef, Role, MAX_FILE_NAME};
use crate::digest::FileMeta;
use crate::error::DbError;
use crate::ids::{DbId, Fnr, Isn, Lsn, Seq};
use crate::log_record::LogRecord;
use crate::medium::{FsDir, MediumDir};
use crate::plog::{Checkpoint, Commit, LogScan, PlogEntry, PlogWriter};
use crate::record::{apply_patch, decode_record, encode_record, Record};
use crate::store::PageStore;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::watch;
use writer::{Committer, Job};

/// Default protection-log segment size.
pub const DEFAULT_SEGMENT_SIZE: u64 = 64 << 20;
/// The most commands one transaction may hold.
pub const MAX_TXN_COMMANDS: usize = 100_000;
/// The most encoded bytes one transaction may write.
pub const MAX_TXN_BYTES: usize = 64 << 20;
/// Records one `range_digest` hands back, at most.
pub const MAX_RANGE_RECORDS: usize = 200_000;
const IDENTITY_FILE: &str = "DATABASE";
const LOCK_FILE: &str = "LOCK";

/// The identity file `DATABASE` in a data directory (TOML).
#[derive(Serialize, Deserialize)]
struct Identity {
    format: u32,
    dbid: u32,
    segment_size: u64,
    created: String,
}

/// Tuning for an open database.
#[derive(Clone, Debug)]
pub struct Options {
    /// sled's cache budget.
    pub cache_bytes: u64,
    /// The most bytes of log entries written by one group commit.
    pub max_group_bytes: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            cache_bytes: 64 << 20,
            max_group_bytes: 8 << 20,
        }
    }
}

/// One command of a transaction, as buffered by a session.
#[derive(Clone, Debug)]
pub(crate) enum Op {
    Store {
        fnr: Fnr,
        isn: Isn,
        record: Record,
    },
    Update {
        fnr: Fnr,
        isn: Isn,
        patch: Record,
    },
    Delete {
        fnr: Fnr,
        isn: Isn,
    },
    /// A change replicated from a master: `before` must be the current bytes.
    Replicated {
        fnr: Fnr,
        isn: Isn,
        before: Option<Vec<u8>>,
        after: Option<Vec<u8>>,
    },
    /// A record written by a restore: any role, `before` must be the current
    /// bytes (the caller read them from the page store).
    Restored {
        fnr: Fnr,
        isn: Isn,
        before: Option<Vec<u8>>,
        after: Option<Vec<u8>>,
    },
    /// Store or replace an engine-written record (confirmations, the
    /// topology). With a guard, the record's current state must match it
    /// (see [`PutGuard`]).
    Put {
        fnr: Fnr,
        isn: Isn,
        record: Record,
        follows: Option<PutGuard>,
    },
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

/// Checks that a chunk's records (`what`: loaded, restored) lie inside
/// `[from, to)`, have isns above 0 and ascend.
fn check_chunk(
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
fn diff_range(
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
                    out.push((i, Some(b), None));
                }
            }
            std::cmp::Ordering::Greater => {
                if let Some((i, a)) = want.next() {
                    stats.written += 1;
                    out.push((i, None, Some(a)));
                }
            }
            std::cmp::Ordering::Equal => {
                if let (Some((i, b)), Some((_, a))) = (have.next(), want.next()) {
                    if a == b && !rewrite {
                        stats.kept += 1;
                    } else {
                        stats.written += 1;
                        out.push((i, Some(b), Some(a)));
                    }
                }
            }
        }
    }
    (out, stats)
}

/// One protection-log segment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SegmentInfo {
    pub no: u64,
    /// File name in the log directory.
    pub name: String,
    pub path: String,
    pub first_lsn: Lsn,
    /// The last LSN it holds; None for the open (last) segment.
    pub last_lsn: Option<Lsn>,
    pub bytes: u64,
    pub created_us: i64,
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

/// A range of a file: count, digest and (if asked) its records.
pub type RangeContent = (u64, crate::Digest, Vec<(Isn, Vec<u8>)>);

/// A replicated change: isn, expected current bytes, new bytes (None: absent).
pub type ReplicatedChange = (Isn, Option<Vec<u8>>, Option<Vec<u8>>);

/// What ET returns.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CommitInfo {
    pub lsn: Lsn,
    pub time_us: i64,
    pub client_id: Option<String>,
    /// Per master touched: the first and last seq written to its log.
    pub seqs: BTreeMap<Fnr, (Seq, Seq)>,
    /// Every file the commit changed, with its count and digest after it.
    pub metas: Vec<FileMeta>,
    /// When the commit became visible to readers (published under the state
    /// lock, before its log sync), µs since the epoch.
    pub visible_us: i64,
}

/// A file as the catalog and its meta describe it.
#[derive(Clone, Debug)]
pub struct FileInfo {
    pub def: FileDef,
    pub meta: FileMeta,
    pub damaged: Option<String>,
}

/// A record written by a queued commit: the commit's LSN and the bytes (None = deleted).
pub(crate) type Pending = (Lsn, Option<Vec<u8>>);

/// The latest state: everything committed or being committed.
pub(crate) struct Latest {
    pub catalog: BTreeMap<Fnr, FileDef>,
    pub metas: BTreeMap<Fnr, FileMeta>,
    /// Records written by commits queued but not yet in the page store.
    pub overlay: HashMap<(Fnr, Isn), Pending>,
    pub pending_ids: HashMap<String, Lsn>,
    pub last_lsn: Lsn,
    pub last_time_us: i64,
    pub next_isn: HashMap<Fnr, u64>,
    pub damaged: BTreeMap<Fnr, String>,
}

impl Latest {
    /// A file's definition, meta (count, digest, next isn) and damage.
    fn info(&self, fnr: Fnr) -> Result<FileInfo, DbError> {
        let def = self.catalog.get(&fnr).ok_or(DbError::UnknownFile(fnr))?;
        Ok(FileInfo {
            def: def.clone(),
            meta: self.metas.get(&fnr).copied().unwrap_or(FileMeta::new(fnr)),
            damaged: self.damaged.get(&fnr).cloned(),
        })
    }
}

pub(crate) struct Shared {
    pub dir: PathBuf,
    pub dbid: DbId,
    pub store: PageStore,
    pub plog: Arc<dyn MediumDir>,
    pub state: Mutex<Latest>,
    pub poisoned: Mutex<Option<String>>,
    pub applied: watch::Sender<Lsn>,
    /// The LSN of the last commit made durable (synced), possibly not yet applied.
    pub durable: watch::Sender<Lsn>,
    pub metrics: crate::metrics::DbMetrics,
    pub committer: Committer,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock is a broken invariant elsewhere; the
    // state itself is only ever changed all-or-nothing under it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Handle {
    shared: Arc<Shared>,
    _lock: File,
}

impl Drop for Handle {
    fn drop(&mut self) {
        let _ = self.shared.committer.close(&self.shared, false);
    }
}

/// An open database. Cloning shares it; it closes cleanly when the last
/// clone (sessions included) is dropped, or at [`Database::close`].
#[derive(Clone)]
pub struct Database {
    h: Arc<Handle>,
}

/// The latest state plus the page store: what a new commit applies on.
struct LatestView<'a> {
    st: &'a Latest,
    store: &'a PageStore,
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
        Ok(self.store.get(fnr, isn)?)
    }
}

use crate::catalog::valid_file_name as valid_name;

impl Database {
    /// Creates a new, empty database in `dir` (which must not exist or be empty).
    pub fn init(dir: &Path, dbid: DbId, segment_size: Option<u64>) -> Result<(), DbError> {
        let derr = |reason: String| DbError::Directory {
            dir: dir.display().to_string(),
            reason,
        };
        if dbid.0 == 0 {
            return Err(derr("dbid must be at least 1".into()));
        }
        let segment_size = segment_size.unwrap_or(DEFAULT_SEGMENT_SIZE);
        if segment_size < 4096 {
            return Err(derr(format!(
                "segment size {segment_size} is below 4096 bytes"
            )));
        }
        if dir.exists() {
            let mut entries = std::fs::read_dir(dir).map_err(|e| derr(e.to_string()))?;
            if entries.next().is_some() {
                return Err(derr("already exists and is not empty".into()));
            }
        }
        std::fs::create_dir_all(dir.join("plog")).map_err(|e| derr(e.to_string()))?;
        let id = Identity {
            format: 1,
            dbid: dbid.0,
            segment_size,
            created: chrono::Utc::now().to_rfc3339(),
        };
        let text = toml::to_string(&id).expect("the identity always encodes");
        std::fs::write(dir.join(IDENTITY_FILE), text).map_err(|e| derr(e.to_string()))?;
        let plog: Arc<dyn MediumDir> = Arc::new(FsDir::new(dir.join("plog")));
        let cp = Checkpoint {
            as_of: Lsn(0),
            time_us: chrono::Utc::now().timestamp_micros(),
            clean: true,
            catalog: vec![],
            metas: vec![],
        };
        PlogWriter::create_segment(plog, dbid, 1, &cp, segment_size)?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| derr(e.to_string()))?;
        Ok(())
    }

    fn identity(dir: &Path) -> Result<Identity, DbError> {
        let path = dir.join(IDENTITY_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| DbError::Directory {
            dir: dir.display().to_string(),
            reason: format!("not a database ({}: {e})", path.display()),
        })?;
        let id: Identity = toml::from_str(&text).map_err(|e| DbError::Directory {
            dir: dir.display().to_string(),
            reason: format!("{} is damaged: {e}", path.display()),
        })?;
        if id.format != 1 {
            return Err(DbError::Directory {
                dir: dir.display().to_string(),
                reason: format!("format {} is not one this engine reads (1)", id.format),
            });
        }
        Ok(id)
    }

    /// Opens a database, running restart recovery.
    pub fn open(dir: &Path) -> Result<(Database, OpenReport), DbError> {
        let plog: Arc<dyn MediumDir> = Arc::new(FsDir::new(dir.join("plog")));
        Self::open_with(dir, plog, Options::default())
    }

    /// Opens with the protection log on a given medium (tests use
    /// [`crate::medium::MemDir`] to build crash images).
    pub fn open_with(
        dir: &Path,
        plog: Arc<dyn MediumDir>,
        opts: Options,
    ) -> Result<(Database, OpenReport), DbError> {
        let id = Self::identity(dir)?;
        let lock_file = File::create(dir.join(LOCK_FILE)).map_err(|e| DbError::Directory {
            dir: dir.display().to_string(),
            reason: format!("cannot create lock file: {e}"),
        })?;
        if lock_file.try_lock().is_err() {
            return Err(DbError::InUse {
                dir: dir.display().to_string(),
            });
        }
        let dbid = DbId(id.dbid);
        let store = PageStore::open(&dir.join("store"), opts.cache_bytes)?;
        let mut rec = recovery::recover(&store, plog.clone(), dbid, id.segment_size)?;
        if rec.report.clean {
            // From now on the database is open: a crash before the next clean
            // close must not look like a clean stop (the next open rescans).
            let dirty = PlogEntry::Checkpoint(rec.checkpoint.checkpoint(false)).encode();
            rec.writer.append([dirty.as_slice()])?;
            rec.writer.sync()?;
        }
        let (applied_tx, _) = watch::channel(rec.latest.last_lsn);
        let (durable_tx, _) = watch::channel(rec.latest.last_lsn);
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            dbid,
            store,
            plog,
            state: Mutex::new(rec.latest),
            poisoned: Mutex::new(None),
            applied: applied_tx,
            durable: durable_tx,
            metrics: Default::default(),
            committer: Committer::new(opts.max_group_bytes),
        });
        Committer::start(&shared, rec.writer, rec.checkpoint).map_err(|e| DbError::Directory {
            dir: dir.display().to_string(),
            reason: format!("cannot start the page-store applier: {e}"),
        })?;
        let db = Database {
            h: Arc::new(Handle {
                shared,
                _lock: lock_file,
            }),
        };
        Ok((db, rec.report))
    }

    fn shared(&self) -> &Shared {
        &self.h.shared
    }

    pub fn dbid(&self) -> DbId {
        self.shared().dbid
    }

    pub fn dir(&self) -> &Path {
        &self.shared().dir
    }

    /// Starts a client session.
    pub fn session(&self) -> crate::Session {
        crate::Session::new(self.clone())
    }

    /// Commits, log bytes and log sync latency since this open.
    pub fn metrics(&self) -> crate::metrics::DbSnapshot {
        self.shared().metrics.snapshot()
    }

    /// The LSN of the last commit accepted (queued for the log).
    pub fn last_lsn(&self) -> Lsn {
        lock(&self.shared().state).last_lsn
    }

    /// Watches the LSN applied to the page store (every commit up to it is durable).
    pub fn subscribe(&self) -> watch::Receiver<Lsn> {
        self.shared().applied.subscribe()
    }

    /// Watches the LSN of the last durable commit: it moves as soon as a
    /// group's `fdatasync` returns, before the page store has it.
    pub fn subscribe_durable(&self) -> watch::Receiver<Lsn> {
        self.shared().durable.subscribe()
    }

    /// The bytes of a record as of the last durable commit: an overlay entry
    /// from a commit not yet synced is not returned (the page store's value
    /// is older still, so `None` then means "not yet"). Meant for records
    /// that are written once, such as log records: replication must never
    /// ship a change that a crash could still take back.
    pub fn read_durable_raw(&self, fnr: Fnr, isn: Isn) -> Result<Option<Vec<u8>>, DbError> {
        let durable = *self.shared().durable.borrow();
        let st = lock(&self.shared().state);
        Self::usable_def(&st, fnr)?;
        match st.overlay.get(&(fnr, isn)) {
            Some((lsn, _)) if *lsn > durable => Ok(None),
            Some((_, v)) => Ok(v.clone()),
            None => Ok(self.shared().store.get(fnr, isn)?),
        }
    }

    /// A durable log record of a master, by seq (see [`Database::read_durable_raw`]).
    pub fn read_log_record(&self, log: Fnr, seq: Seq) -> Result<Option<LogRecord>, DbError> {
        match self.read_durable_raw(log, Isn(seq.0))? {
            None => Ok(None),
            Some(b) => LogRecord::decode(&b)
                .map(Some)
                .map_err(|source| DbError::BadRecord { fnr: log, source }),
        }
    }

    /// A file's meta (count, digest, next isn) and damage, if any.
    pub fn file_info(&self, fnr: Fnr) -> Result<FileInfo, DbError> {
        lock(&self.shared().state).info(fnr)
    }

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
                .map(|(isn, before, after)| Op::Replicated {
                    fnr: replicate,
                    isn,
                    before,
                    after,
                }),
        );
        self.commit(Vec::new(), ops, None)
    }

    /// A record and a file's meta and damage, read under one lock (a
    /// replicate's confirmation and its file's digest that belong together).
    pub fn read_with_info(
        &self,
        rec_fnr: Fnr,
        isn: Isn,
        info_fnr: Fnr,
    ) -> Result<(Option<Record>, FileInfo), DbError> {
        let st = lock(&self.shared().state);
        Self::usable_def(&st, rec_fnr)?;
        let info = st.info(info_fnr)?;
        let bytes = LatestView {
            st: &st,
            store: &self.shared().store,
        }
        .get(rec_fnr, isn)?;
        let rec = match bytes {
            None => None,
            Some(b) => Some(decode_record(&b).map_err(|source| DbError::BadRecord {
                fnr: rec_fnr,
                source,
            })?),
        };
        Ok((rec, info))
    }

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

    /// Replaces a replicate's records in the isn range `[from, to)` (`to`
    /// None: to the end) with `wanted` (ascending isns inside the range), and
    /// writes the load's progress record, as one transaction. Records
    /// already equal are left alone unless `rewrite`. The progress record is
    /// guarded ([`PutGuard::Load`]), so a chunk applies exactly once and in
    /// order. With `expect`, the file's count and digest after the chunk must
    /// equal it (the last chunk of a load), or nothing is written.
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
    ) -> Result<(CommitInfo, LoadStats), DbError> {
        check_chunk("loaded", from, to, &wanted)?;
        let def = self.file(replicate)?;
        if def.role != Role::Replicate {
            return Err(DbError::BadDefinition(format!(
                "file {replicate} is a {} file, not a replicate",
                def.role.name()
            )));
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
        for (isn, before, after) in diff {
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
        if let Some((count, digest)) = expect {
            if (meta.count, meta.digest) != (count, digest) {
                return Err(DbError::BadDefinition(format!(
                    "replicate file {replicate} would hold {} records with digest {} after its last loaded chunk, but the load expects {count} records with digest {digest}; nothing written",
                    meta.count, meta.digest
                )));
            }
        }
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

    /// The records the page store holds for `fnr` in `[from, to)`.
    fn stored_range(
        &self,
        fnr: Fnr,
        from: Isn,
        to: Option<Isn>,
    ) -> Result<Vec<(Isn, Vec<u8>)>, DbError> {
        let mut out = Vec::new();
        for kv in self.shared().store.scan(fnr, from) {
            let (isn, v) = kv?;
            if to.is_some_and(|t| isn >= t) {
                break;
            }
            out.push((isn, v));
        }
        Ok(out)
    }

    /// Waits until every write so far is in the page store: the first step
    /// of a load, so that `load_range` reads a settled file.
    pub fn settle(&self) -> Result<(), DbError> {
        self.wait_applied()
    }

    /// The count and digest of a file's committed records with isns in
    /// `[from, to)` (`to` None: to the end), computed from the records, and
    /// the records if `keep` (at most `MAX_RANGE_RECORDS`). Works on a
    /// damaged file too: verification reads what it holds.
    pub fn range_digest(
        &self,
        fnr: Fnr,
        from: Isn,
        to: Option<Isn>,
        keep: bool,
    ) -> Result<RangeContent, DbError> {
        {
            let st = lock(&self.shared().state);
            st.catalog.get(&fnr).ok_or(DbError::UnknownFile(fnr))?;
        }
        self.wait_applied()?;
        let mut meta = FileMeta::new(fnr);
        let mut kept = Vec::new();
        for kv in self.shared().store.scan(fnr, from) {
            let (isn, v) = kv?;
            if to.is_some_and(|t| isn >= t) {
                break;
            }
            meta.change(isn, None, Some(&v));
            if keep {
                if kept.len() == MAX_RANGE_RECORDS {
                    return Err(DbError::TooLarge(format!(
                        "file {fnr} holds more than {MAX_RANGE_RECORDS} records in [{from}, {})",
                        to.map_or("end".into(), |t| t.to_string())
                    )));
                }
                kept.push((isn, v));
            }
        }
        Ok((meta.count, meta.digest, kept))
    }

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

    /// A file's definition and the meta of what its page store holds now.
    fn baseline(&self, fnr: Fnr) -> Result<(FileDef, FileMeta), DbError> {
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
    pub fn begin_restore(&self, fnr: Fnr, why: &str) -> Result<FileMeta, DbError> {
        let (def, meta) = self.baseline(fnr)?;
        self.commit(
            vec![
                CatalogOp::Define(FileDef {
                    restoring: Some(why.to_string()),
                    ..def
                }),
                CatalogOp::Rebase(meta),
            ],
            Vec::new(),
            None,
        )?;
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
        let def = {
            let st = lock(&self.shared().state);
            let def = st.catalog.get(&fnr).ok_or(DbError::UnknownFile(fnr))?;
            // A file being restored is damaged until its last chunk: only
            // the restore itself writes it.
            if def.restoring.is_none() {
                Self::usable_def(&st, fnr)?;
            }
            def.clone()
        };
        self.wait_applied()?;
        let existing = self.stored_range(fnr, from, to)?;
        let mut meta = self.file_info(fnr)?.meta;
        let (diff, stats) = diff_range(existing, wanted, false);
        let mut ops = Vec::with_capacity(diff.len());
        for (isn, before, after) in diff {
            meta.change(isn, before.as_deref(), after.as_deref());
            ops.push(Op::Restored {
                fnr,
                isn,
                before,
                after,
            });
        }
        if let Some(want) = last {
            if (meta.count, meta.digest) != (want.count, want.digest) {
                return Err(DbError::BadDefinition(format!(
                    "file {fnr} would hold {} records with digest {} after its last restored chunk, but the copy holds {} records with digest {}; nothing written",
                    meta.count, meta.digest, want.count, want.digest
                )));
            }
        }
        let mut catalog = vec![CatalogOp::Restore {
            fnr,
            next_isn: last.map(|m| m.next_isn),
        }];
        if last.is_some() && def.restoring.is_some() {
            // Proved: the restore is over, in this same commit (from the
            // latest definition, so nothing committed meanwhile is undone).
            let latest = lock(&self.shared().state).catalog.get(&fnr).cloned();
            catalog.push(CatalogOp::Define(FileDef {
                restoring: None,
                ..latest.unwrap_or(def)
            }));
        }
        let info = self.commit(catalog, ops, None)?;
        Ok((info, stats))
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
                damaged: st.damaged.clone(),
            }
        };
        self.wait_applied()?;
        Ok(point)
    }

    /// Up to `max_records` records (and about `max_bytes`) of a file from
    /// isn `from` on, straight from the page store (shared, not copied),
    /// without waiting for queued commits: a fuzzy scan, made exact by the
    /// log slice a copy carries with it.
    pub fn scan_store(
        &self,
        fnr: Fnr,
        from: Isn,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<(Isn, crate::store::StoredBytes)>, DbError> {
        let mut out = Vec::new();
        let mut bytes = 0;
        for kv in self.shared().store.scan_shared(fnr, from) {
            let (isn, v) = kv?;
            bytes += v.as_ref().len() + 8;
            out.push((isn, v));
            if out.len() >= max_records || bytes >= max_bytes {
                break;
            }
        }
        Ok(out)
    }

    /// The protection log's directory.
    pub fn plog_dir(&self) -> Arc<dyn MediumDir> {
        self.shared().plog.clone()
    }

    /// The protection log's segments, oldest first; the last one is open.
    pub fn plog_segments(&self) -> Result<Vec<SegmentInfo>, DbError> {
        let shared = self.shared();
        let segs = crate::plog::open_segments_readonly(&*shared.plog, shared.dbid)?;
        let mut out: Vec<SegmentInfo> = Vec::with_capacity(segs.len());
        for (i, seg) in segs.iter().enumerate() {
            out.push(SegmentInfo {
                no: seg.no,
                name: crate::plog::format::segment_name(seg.no),
                path: seg.path.clone(),
                first_lsn: seg.header.first_lsn,
                last_lsn: segs
                    .get(i + 1)
                    .map(|n| Lsn(n.header.first_lsn.0.saturating_sub(1))),
                bytes: seg.len,
                created_us: seg.header.created_us,
            });
        }
        Ok(out)
    }

    /// Removes the oldest closed segments whose every commit is at or
    /// before `through` and that restart recovery can no longer need: the
    /// page store is flushed first and only segments wholly at or before
    /// its applied LSN go. The open segment always stays. Returns what was
    /// removed. The caller archives segments before removing them.
    pub fn remove_segments(&self, through: Lsn) -> Result<Vec<SegmentInfo>, DbError> {
        let shared = self.shared();
        self.wait_applied()?;
        shared.store.flush()?;
        let applied = shared.store.applied_lsn()?;
        let limit = Lsn(through.0.min(applied.0));
        let mut removed = Vec::new();
        for seg in self.plog_segments()? {
            match seg.last_lsn {
                Some(last) if last <= limit => {
                    shared
                        .plog
                        .remove(&seg.name)
                        .map_err(|e| crate::plog::LogError::io(seg.path.clone(), e))?;
                    removed.push(seg);
                }
                _ => break,
            }
        }
        if !removed.is_empty() {
            shared
                .plog
                .sync_dir()
                .map_err(|e| crate::plog::LogError::io(shared.plog.describe(""), e))?;
        }
        Ok(removed)
    }

    /// The count and digest of a file's records as they stand in the page
    /// store, computed from the records themselves (also for a damaged file).
    pub fn content_digest(&self, fnr: Fnr) -> Result<(u64, crate::Digest), DbError> {
        self.wait_applied()?;
        let meta = recovery::scan_meta(&self.shared().store, fnr)?;
        Ok((meta.count, meta.digest))
    }

    fn check_poisoned(&self) -> Result<(), DbError> {
        match lock(&self.shared().poisoned).as_ref() {
            Some(reason) => Err(DbError::Poisoned(reason.clone())),
            None => Ok(()),
        }
    }

    /// Waits until every commit queued so far is in the page store.
    pub fn wait_applied(&self) -> Result<(), DbError> {
        let target = lock(&self.shared().state).last_lsn;
        let rx = self.shared().committer.barrier(target);
        rx.blocking_recv().map_err(|_| DbError::Closed)?;
        self.check_poisoned()
    }

    /// Every file with its meta.
    pub fn files(&self) -> Vec<FileInfo> {
        let st = lock(&self.shared().state);
        st.catalog.keys().filter_map(|f| st.info(*f).ok()).collect()
    }

    /// A file's definition, refusing unknown and damaged files.
    pub fn file(&self, fnr: Fnr) -> Result<FileDef, DbError> {
        let st = lock(&self.shared().state);
        Self::usable_def(&st, fnr).cloned()
    }

    fn usable_def(st: &Latest, fnr: Fnr) -> Result<&FileDef, DbError> {
        let def = st.catalog.get(&fnr).ok_or(DbError::UnknownFile(fnr))?;
        if let Some(reason) = st.damaged.get(&fnr) {
            return Err(DbError::FileDamaged {
                fnr,
                reason: reason.clone(),
            });
        }
        Ok(def)
    }

    /// Reads a committed record (every acknowledged commit included).
    pub fn read(&self, fnr: Fnr, isn: Isn) -> Result<Option<Record>, DbError> {
        let bytes = {
            let st = lock(&self.shared().state);
            Self::usable_def(&st, fnr)?;
            match st.overlay.get(&(fnr, isn)) {
                Some((_, v)) => v.clone(),
                None => self.shared().store.get(fnr, isn)?,
            }
        };
        match bytes {
            None => Ok(None),
            Some(b) => Ok(Some(
                decode_record(&b).map_err(|source| DbError::BadRecord { fnr, source })?,
            )),
        }
    }

    /// Calls `f` with every committed record of `fnr` from isn `from` on, in
    /// ascending isn, until it returns `false`. Every commit acknowledged
    /// before the call is included.
    pub fn for_each_raw(
        &self,
        fnr: Fnr,
        from: Isn,
        mut f: impl FnMut(Isn, &[u8]) -> Result<bool, DbError>,
    ) -> Result<(), DbError> {
        self.file(fnr)?;
        self.wait_applied()?;
        for kv in self.shared().store.scan(fnr, from) {
            let (isn, v) = kv?;
            if !f(isn, &v)? {
                break;
            }
        }
        Ok(())
    }

    /// Calls `f` with every log record of master `master` from `from` on.
    pub fn for_each_log_record(
        &self,
        master: Fnr,
        from: Seq,
        mut f: impl FnMut(LogRecord) -> Result<bool, DbError>,
    ) -> Result<(), DbError> {
        let def = self.file(master)?;
        let Role::Master { log, .. } = def.role else {
            return Err(DbError::BadDefinition(format!(
                "file {master} is not a master file"
            )));
        };
        self.for_each_raw(log, Isn(from.0), |_, bytes| {
            let rec = LogRecord::decode(bytes)
                .map_err(|source| DbError::BadRecord { fnr: log, source })?;
            f(rec)
        })
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
            Some(isn) => {
                let view = LatestView {
                    st: &st,
                    store: &self.shared().store,
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
    fn writable(st: &Latest, fnr: Fnr) -> Result<(), DbError> {
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
    /// session's own checks; refuses files a client may not write.
    pub(crate) fn writable_get(&self, fnr: Fnr, isn: Isn) -> Result<Option<Vec<u8>>, DbError> {
        let st = lock(&self.shared().state);
        Self::writable(&st, fnr)?;
        LatestView {
            st: &st,
            store: &self.shared().store,
        }
        .get(fnr, isn)
    }

    /// The LSN a client transaction id was committed at (or is being
    /// committed at, by an ET in flight), if any.
    pub fn committed_id(&self, id: &str) -> Result<Option<Lsn>, DbError> {
        let shared = self.shared();
        let st = lock(&shared.state);
        match st.pending_ids.get(id) {
            Some(l) => Ok(Some(*l)),
            None => Ok(shared.store.client_id(id)?),
        }
    }

    /// Commits a transaction: resolve, log, sync, apply (see the module docs).
    pub(crate) fn commit(
        &self,
        catalog: Vec<CatalogOp>,
        ops: Vec<Op>,
        client_id: Option<String>,
    ) -> Result<CommitInfo, DbError> {
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
                return Ok(CommitInfo {
                    lsn: st.last_lsn,
                    time_us: st.last_time_us,
                    client_id,
                    seqs: BTreeMap::new(),
                    metas: Vec::new(),
                    visible_us: st.last_time_us,
                });
            }
            let lsn = st.last_lsn.next();
            let time_us = chrono::Utc::now().timestamp_micros().max(st.last_time_us);
            let view = LatestView {
                st: &st,
                store: &shared.store,
            };
            let mut ap = Applier::new(&view, lsn, time_us, client_id.clone());
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
            let derived = ap.finish()?;
            let rebased: Vec<Fnr> = catalog
                .iter()
                .filter_map(|op| match op {
                    CatalogOp::Rebase(m) => Some(m.fnr),
                    CatalogOp::Define(_) | CatalogOp::Restore { .. } => None,
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
            for d in derived.catalog.values() {
                st.catalog.insert(d.fnr, d.clone());
            }
            for fnr in &rebased {
                st.damaged.remove(fnr);
            }
            for d in derived.catalog.values() {
                match &d.restoring {
                    Some(why) => {
                        st.damaged
                            .insert(d.fnr, crate::catalog::unfinished_restore(why));
                    }
                    None => {
                        if st
                            .damaged
                            .get(&d.fnr)
                            .is_some_and(|r| r.starts_with("a restore into it began"))
                        {
                            st.damaged.remove(&d.fnr);
                        }
                    }
                }
            }
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
                lsn,
                payload,
                records: derived.records,
                metas: derived.metas.into_values().collect(),
                catalog: derived.catalog.into_values().collect(),
                client_id: client_id.clone(),
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
        shared.committer.finish(shared, rx)?;
        Ok(info)
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

    /// Verifies the whole protection log and every file's content digest.
    pub fn check(&self) -> Result<CheckReport, DbError> {
        let shared = self.shared();
        self.wait_applied()?;
        let mut report = CheckReport::default();
        // Read-only: a segment being created right now must not be taken
        // for a torn one and removed.
        match crate::plog::open_segments_readonly(&*shared.plog, shared.dbid) {
            Err(e) => report.log_problem = Some(e.to_string()),
            Ok(segments) => {
                report.segments = segments.len() as u64;
                let mut scan = LogScan::new(&segments, 0);
                loop {
                    match scan.next_frame() {
                        Ok(Some(_)) => report.frames += 1,
                        Ok(None) => break,
                        Err(f) => {
                            report.log_problem = Some(format!(
                                "segment {} ({}) offset {}: {} (intact only before LSN {})",
                                f.segment, f.path, f.offset, f.reason, f.expected_lsn
                            ));
                            break;
                        }
                    }
                }
                report.log_end = scan.last_lsn();
            }
        }
        let (catalog, metas, damaged) = {
            let st = lock(&shared.state);
            (st.catalog.clone(), st.metas.clone(), st.damaged.clone())
        };
        for def in catalog.values() {
            let expected = metas
                .get(&def.fnr)
                .copied()
                .unwrap_or(FileMeta::new(def.fnr));
            let problem = if let Some(d) = damaged.get(&def.fnr) {
                Some(d.clone())
            } else {
                recovery::content_problem(&shared.store, &expected)?
            };
            report.files.push(FileCheck {
                fnr: def.fnr,
                name: def.name.clone(),
                role: def.role.name(),
                count: expected.count,
                digest: expected.digest.to_string(),
                problem,
            });
        }
        Ok(report)
    }

    /// Stops the database the way a crash would: no clean checkpoint is
    /// written, so the next open runs full recovery. For tests.
    #[doc(hidden)]
    pub fn simulate_crash(self) {
        let _ = self.shared().committer.close(self.shared(), true);
    }

    /// Whether a close has begun: commits are refused from then on. For tests.
    #[doc(hidden)]
    pub fn closing(&self) -> bool {
        self.shared().committer.closing()
    }

    /// Closes the database cleanly: waits for queued commits, writes a clean
    /// checkpoint. Other clones of this handle then see `Closed`.
    pub fn close(self) -> Result<(), DbError> {
        self.shared().committer.close(self.shared(), false)
    }
}

/// Turns one buffered command into a change against the latest state.
fn resolve<V: StateView>(
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
        Op::Store { isn, record, .. } => {
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
                after: Some(encode_record(&record).map_err(bad)?),
            }
        }
        Op::Update { isn, patch, .. } => {
            let before = ap
                .current(fnr, isn)?
                .ok_or(DbError::RecordMissing { fnr, isn })?;
            let mut rec = decode_record(&before).map_err(bad)?;
            apply_patch(&mut rec, &patch);
            crate::plog::Change {
                fnr,
                isn,
                before: Some(before),
                after: Some(encode_record(&rec).map_err(bad)?),
            }
        }
        Op::Delete { isn, .. } => {
            let before = ap
                .current(fnr, isn)?
                .ok_or(DbError::RecordMissing { fnr, isn })?;
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
                decode_record(a).map_err(bad)?;
            }
            if ap.current(fnr, isn)? != before {
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
                // Validated as any stored record is: nothing undecodable lands.
                decode_record(a).map_err(bad)?;
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
            if let Some(guard) = follows {
                let current = match &before {
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
                        if confirmed != expected {
                            return Err(DbError::OutOfSequence {
                                fnr,
                                expected,
                                confirmed,
                            });
                        }
                    }
                    PutGuard::Load { id, next } => {
                        let at = view.load_next;
                        if load_id != Some(id.as_str()) || at != Some(next) {
                            return Err(DbError::LoadOutOfSequence {
                                fnr,
                                id,
                                next,
                                found: match (load_id, at) {
                                    (Some(l), Some(n)) => format!("load {l} at isn {n}"),
                                    _ => "no load in progress".into(),
                                },
                            });
                        }
                    }
                }
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

/// What `Database::check` found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CheckReport {
    pub segments: u64,
    pub frames: u64,
    pub log_end: Lsn,
    pub log_problem: Option<String>,
    pub files: Vec<FileCheck>,
}

#[derive(Clone, Debug, Serialize)]
pub struct FileCheck {
    pub fnr: Fnr,
    pub name: String,
    pub role: &'static str,
    pub count: u64,
    pub digest: String,
    pub problem: Option<String>,
}

impl CheckReport {
    pub fn is_ok(&self) -> bool {
        self.log_problem.is_none() && self.files.iter().all(|f| f.problem.is_none())
    }
}
