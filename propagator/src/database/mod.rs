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

mod bulk;
mod check;
mod commit;
mod reads;
mod recover_ops;
mod recovery;
mod replicated;
mod restore;
mod segments;
mod writer;

pub use bulk::chunk_sum;
pub use check::{CheckReport, FileCheck};
use commit::LatestView;
pub use commit::PendingCommit;
pub use reads::RangeContent;
pub use recovery::{OpenReport, TornTail};
use replicated::{check_chunk, diff_range};
pub use replicated::{LoadStats, PutGuard, ReplicatedChange};
pub use restore::CopyPoint;
pub use restore::{IngestChunk, Restore};
pub use segments::SegmentInfo;

use crate::apply::{Applier, StateView};
use crate::catalog::{CatalogOp, FileDef, Hold, HoldKind, Role, MAX_FILE_NAME};
use crate::digest::FileMeta;
use crate::error::DbError;
use crate::ids::{DbId, Fnr, Isn, Lsn, Seq};
use crate::log_record::LogRecord;
use crate::medium::{FsDir, MediumDir};
use crate::plog::{Checkpoint, Commit, LogScan, PlogEntry, PlogWriter};
use crate::record::{apply_patch, decode_record, encode_record, Record};
use crate::store::{Engine, PageStore};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::watch;
use writer::{Committer, Job};

/// Default protection-log segment size.
pub const DEFAULT_SEGMENT_SIZE: u64 = 64 << 20;
/// The most commands one transaction may hold.
pub const MAX_TXN_COMMANDS: usize = 100_000;
/// The most encoded bytes one transaction may write (checked at each store
/// and update, so an open transaction never holds more).
pub const MAX_TXN_BYTES: usize = 64 << 20;
/// The largest isn a client's store may name: above it, isns are only
/// handed out by the engine, so one store cannot use up a file's numbering.
pub const MAX_STORE_ISN: u64 = 1 << 62;
/// Records one `range_digest` hands back, at most.
pub const MAX_RANGE_RECORDS: usize = 200_000;
const IDENTITY_FILE: &str = "DATABASE";

/// Creates `dir` (and its missing parents) readable by its owner only
/// (0700), or makes an existing one so. A database's files are its owner's:
/// the node and `etp` also run with umask 077, so what the page store
/// engine creates inside is 0600 too.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Why a database's directories are not safe to serve: one of the data
/// directory, its log and its page store is writable by others than its
/// owner (None: they are not).
pub fn shared_dirs(dir: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    [dir.to_path_buf(), dir.join("plog"), dir.join("store")]
        .into_iter()
        .filter_map(|d| {
            let mode = std::fs::metadata(&d).ok()?.permissions().mode() & 0o777;
            (mode & 0o022 != 0).then(|| format!("{} (mode {mode:04o})", d.display()))
        })
        .reduce(|a, b| format!("{a}, {b}"))
}
/// In a database directory, says that a restore into a new database is
/// making it and has not finished: whatever else is there is not a
/// database yet, and the next restore into the directory starts over.
pub const RESTORE_MARKER: &str = ".etp-restore-incomplete";
const LOCK_FILE: &str = "LOCK";

/// The identity file `DATABASE` in a data directory (TOML).
#[derive(Serialize, Deserialize)]
struct Identity {
    format: u32,
    dbid: u32,
    segment_size: u64,
    created: String,
    /// The page store's engine (databases made before the choice existed
    /// run on sled).
    #[serde(default = "sled_engine")]
    store: Engine,
}

fn sled_engine() -> Engine {
    Engine::Sled
}

/// The engine a new database gets when none is named: `ETP_STORE` (sled or
/// fjall) if set, else [`Engine::default`]. The variable lets a whole test
/// run, or an operator's scripts, pick the engine without new flags.
pub fn default_engine() -> Engine {
    std::env::var("ETP_STORE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_default()
}

/// Tuning for an open database.
#[derive(Clone, Debug)]
pub struct Options {
    /// The page store's cache budget.
    pub cache_bytes: u64,
    /// The most bytes of log entries written by one group commit.
    pub max_group_bytes: usize,
    /// Opens a directory that holds [`RESTORE_MARKER`]: only the restore
    /// making the database there does (anyone else is refused).
    pub restoring: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            cache_bytes: 64 << 20,
            max_group_bytes: 8 << 20,
            restoring: false,
        }
    }
}

/// One command of a transaction, as buffered by a session.
#[derive(Clone, Debug)]
pub(crate) enum Op {
    Store {
        fnr: Fnr,
        isn: Isn,
        /// The record's canonical encoding, made once when the session
        /// took the command: the commit writes these bytes as they are.
        bytes: Vec<u8>,
    },
    Update {
        fnr: Fnr,
        isn: Isn,
        patch: Record,
        /// The committed bytes the session patched, and its result: the
        /// commit takes the result as it is when the record still holds
        /// those bytes (else it patches what it finds).
        seen: Option<(Seen, Vec<u8>)>,
    },
    Delete {
        fnr: Fnr,
        isn: Isn,
        /// The committed bytes the session found.
        seen: Option<Seen>,
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
    pub damaged: Option<crate::catalog::Damage>,
}

/// A committed record as a session read it, and the last LSN when it did.
/// At ET the record is known unchanged, without reading it again, when no
/// later commit wrote it: none is in the overlay, and the applier has taken
/// none out of it ([`Latest::overlay_applied`] at most `at`).
#[derive(Clone, Debug)]
pub(crate) struct Seen {
    pub at: Lsn,
    pub bytes: Vec<u8>,
}

impl Seen {
    pub fn unchanged(&self, st: &Latest, fnr: Fnr, isn: Isn) -> bool {
        st.overlay_applied <= self.at
            && st
                .overlay
                .get(&(fnr, isn))
                .is_none_or(|(lsn, _)| *lsn <= self.at)
    }
}

/// A record written by a queued commit: the commit's LSN and the bytes (None = deleted).
pub(crate) type Pending = (Lsn, Option<Vec<u8>>);

/// The latest state: everything committed or being committed.
pub(crate) struct Latest {
    pub catalog: BTreeMap<Fnr, FileDef>,
    pub metas: BTreeMap<Fnr, FileMeta>,
    /// Records written by commits queued but not yet in the page store.
    pub overlay: HashMap<(Fnr, Isn), Pending>,
    /// The last LSN whose records the applier may have taken out of the
    /// overlay. A record read when the last LSN was `at` is unchanged if
    /// this is at most `at` and the overlay holds no later write of it
    /// (see [`Seen`]).
    pub overlay_applied: Lsn,
    pub pending_ids: HashMap<String, Lsn>,
    pub last_lsn: Lsn,
    pub last_time_us: i64,
    pub next_isn: HashMap<Fnr, u64>,
    pub damaged: BTreeMap<Fnr, crate::catalog::Damage>,
    /// Files whose restore was begun ([`Database::begin_restore`]) since
    /// this open: their meta's next isn is above every record the page
    /// store holds. Not kept across an open: replay skips a damaged file's
    /// changes, and its meta may then lag its records.
    pub rebased: std::collections::HashSet<Fnr>,
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
    /// Per master: the fields its records may carry (set from the topology;
    /// a master without an entry takes any field).
    pub schemas: Mutex<BTreeMap<Fnr, Arc<BTreeSet<String>>>>,
    /// Per log file: its newest records, decoded (see [`LogTail`]).
    pub tails: Mutex<BTreeMap<Fnr, LogTail>>,
    /// Counts commits that rewrote a log file (or changed a definition),
    /// under the state lock: a read of the page store made without that
    /// lock checks it did not change meanwhile.
    pub log_rewrites: std::sync::atomic::AtomicU64,
    /// Run by a leader that found no group behind its own (see
    /// [`Database::on_idle_durable`]).
    pub idle_hooks: Mutex<Vec<std::sync::Weak<dyn IdleDurable>>>,
}

/// Work a group commit's leader does itself once its group is durable and
/// no other group waits: a streaming feeder sends the tail it was waiting
/// for from the thread that synced it, without waking the reactor first.
pub trait IdleDurable: Send + Sync {
    /// Prepares what to send now that `lsn` is durable; whether there is
    /// anything to [`IdleDurable::flush`].
    fn durable(&self, lsn: Lsn) -> bool;
    /// Sends what `durable` prepared.
    fn flush(&self) {}
    /// Called by a leader between writing its group, which ends at `upto`,
    /// and syncing it, when nobody waits behind it: what can be made ready
    /// before `durable(upto)` may be made ready now, while the device
    /// writes. Nothing may leave the node before `durable(upto)`; if the
    /// sync fails, `durable` is never called for `upto`. It runs under the
    /// committer's log lock: it must not commit, wait for a commit or for
    /// the page store, or block on anything that might.
    fn prepare(&self, _upto: Lsn) {}
}

/// The newest records of a log file, as the commits that derived them made
/// them: the feeders streaming at the tail read them here instead of
/// reading the page store and decoding each record, once per replicate.
///
/// Kept under the state lock's discipline: a commit appends the log
/// records it derived; any other write to a log file (a cleanup, a restore,
/// a refresh) or a change of its definition empties that log's tail, so
/// what is here is always what the page store holds for those seqs.
#[derive(Default)]
pub(crate) struct LogTail {
    /// The seq after the newest record held.
    next: u64,
    /// Contiguous seqs up to `next - 1`, each with the LSN of its commit
    /// (a record is read only once that LSN is durable).
    recs: std::collections::VecDeque<(Lsn, Arc<LogRecord>)>,
    /// The before- and after-image bytes held.
    bytes: usize,
}

/// Records kept per log tail at most (older ones are read from the page
/// store), and image bytes at most: records may be up to 1 MiB each.
const TAIL_RECORDS: usize = 16_384;
const TAIL_BYTES: usize = 16 << 20;

impl LogTail {
    fn push(&mut self, lsn: Lsn, rec: Arc<LogRecord>) {
        if rec.seq.0 != self.next {
            self.recs.clear();
            self.bytes = 0;
        }
        self.next = rec.seq.0 + 1;
        self.bytes += rec.image_bytes();
        self.recs.push_back((lsn, rec));
        while self.recs.len() > TAIL_RECORDS || (self.bytes > TAIL_BYTES && self.recs.len() > 1) {
            match self.recs.pop_front() {
                Some((_, old)) => self.bytes -= old.image_bytes(),
                None => break,
            }
        }
    }

    /// The oldest seq held.
    fn first(&self) -> Option<Seq> {
        (!self.recs.is_empty()).then(|| Seq(self.next - self.recs.len() as u64))
    }

    fn get(&self, seq: Seq) -> Option<&(Lsn, Arc<LogRecord>)> {
        let first = self.next.checked_sub(self.recs.len() as u64)?;
        let i = seq.0.checked_sub(first)?;
        self.recs.get(usize::try_from(i).ok()?)
    }
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

use crate::catalog::valid_file_name as valid_name;

impl Database {
    /// Creates a new, empty database in `dir` (which must not exist or be empty).
    pub fn init(dir: &Path, dbid: DbId, segment_size: Option<u64>) -> Result<(), DbError> {
        Self::init_with_engine(dir, dbid, segment_size, default_engine())
    }

    /// [`Database::init`] with the page store on `engine`.
    pub fn init_with_engine(
        dir: &Path,
        dbid: DbId,
        segment_size: Option<u64>,
        engine: Engine,
    ) -> Result<(), DbError> {
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
            // Only the mark of a restore making the database here may be
            // there (see `copy::restore::restore_to_dir`).
            let mut entries = std::fs::read_dir(dir).map_err(|e| derr(e.to_string()))?;
            if entries.any(|e| e.map_or(true, |e| e.file_name() != RESTORE_MARKER)) {
                return Err(derr("already exists and is not empty".into()));
            }
        }
        private_dir(dir).map_err(|e| derr(e.to_string()))?;
        private_dir(&dir.join("plog")).map_err(|e| derr(e.to_string()))?;
        let id = Identity {
            format: 1,
            dbid: dbid.0,
            segment_size,
            created: chrono::Utc::now().to_rfc3339(),
            store: engine,
        };
        let text = toml::to_string(&id).expect("the identity always encodes");
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(dir.join(IDENTITY_FILE))
                .and_then(|mut f| f.write_all(text.as_bytes()))
                .map_err(|e| derr(e.to_string()))?;
        }
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

    /// Creates, in `dir`, a new empty database like the one in `like` (its
    /// id, segment size and page-store engine) whose protection log
    /// continues another's: its first segment is numbered `first_segment`
    /// and its first commit will be LSN `after + 1` (the page store starts
    /// applied to `after`). A whole-database recovery writes into one, so
    /// the recovered database's LSNs go on from the recovered point instead
    /// of starting again at 1 beside its own copies and archived segments.
    pub fn init_like(
        dir: &Path,
        like: &Path,
        after: Lsn,
        first_segment: u64,
    ) -> Result<(), DbError> {
        let id = Self::identity(like)?;
        Self::init_with_engine(dir, DbId(id.dbid), Some(id.segment_size), id.store)?;
        let derr = |reason: String| DbError::Directory {
            dir: dir.display().to_string(),
            reason,
        };
        let plog_dir = dir.join("plog");
        // init's own first segment makes way for the continuing one.
        for e in std::fs::read_dir(&plog_dir).map_err(|e| derr(e.to_string()))? {
            let e = e.map_err(|e| derr(e.to_string()))?;
            std::fs::remove_file(e.path()).map_err(|e| derr(e.to_string()))?;
        }
        let plog: Arc<dyn MediumDir> = Arc::new(FsDir::new(&plog_dir));
        let cp = Checkpoint {
            as_of: after,
            time_us: chrono::Utc::now().timestamp_micros(),
            clean: true,
            catalog: vec![],
            metas: vec![],
        };
        PlogWriter::create_segment(plog, DbId(id.dbid), first_segment, &cp, id.segment_size)?;
        let store = PageStore::open(
            &dir.join("store"),
            id.store,
            Options::default().cache_bytes,
            id.segment_size.max(64 << 10),
        )?;
        store.apply(&crate::store::StoreBatch {
            applied: after,
            ..Default::default()
        })?;
        store.flush()?;
        drop(store);
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| derr(e.to_string()))?;
        Ok(())
    }

    /// The id of the database in `dir`, read from its identity file alone
    /// (the page store is not opened: a database that will not open still
    /// says who it is).
    pub fn dbid_of(dir: &Path) -> Result<DbId, DbError> {
        Ok(DbId(Self::identity(dir)?.dbid))
    }

    /// The name of the identity file in a database directory.
    pub const IDENTITY_FILE: &'static str = IDENTITY_FILE;

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

    /// The page-store engine of the database in `dir`, from its identity
    /// (without opening it).
    pub fn engine_of(dir: &Path) -> Result<Engine, DbError> {
        Ok(Self::identity(dir)?.store)
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
        if !opts.restoring && dir.join(RESTORE_MARKER).exists() {
            return Err(DbError::Directory {
                dir: dir.display().to_string(),
                reason: "a restore into a new database here did not finish: it is not a database \
                         yet (run the restore again, which starts over, or remove the directory)"
                    .into(),
            });
        }
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
        // Log stores rotate segments at the protection log's segment size
        // (each rotation syncs), not below 64 KiB.
        let store = PageStore::open(
            &dir.join("store"),
            id.store,
            opts.cache_bytes,
            id.segment_size.max(64 << 10),
        )?;
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
            schemas: Mutex::new(BTreeMap::new()),
            tails: Mutex::new(BTreeMap::new()),
            log_rewrites: std::sync::atomic::AtomicU64::new(0),
            idle_hooks: Mutex::new(Vec::new()),
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

    /// The page store's engine.
    pub fn engine(&self) -> Engine {
        self.shared().store.engine()
    }

    /// The fields client stores and updates may write in each master (the
    /// topology's declared `fields`); a master left out takes any field.
    /// Replaces what was set before. Held in memory: whoever opens the
    /// database for client writes sets it from the stored topology.
    pub fn set_schemas(&self, schemas: BTreeMap<Fnr, BTreeSet<String>>) {
        *lock(&self.shared().schemas) =
            schemas.into_iter().map(|(f, s)| (f, Arc::new(s))).collect();
    }

    /// Refuses a field that master `fnr` does not declare.
    pub(crate) fn check_schema<'a>(
        &self,
        fnr: Fnr,
        fields: impl Iterator<Item = &'a str>,
    ) -> Result<(), DbError> {
        let Some(declared) = lock(&self.shared().schemas).get(&fnr).cloned() else {
            return Ok(());
        };
        match fields.into_iter().find(|f| !declared.contains(*f)) {
            None => Ok(()),
            Some(field) => Err(DbError::UndeclaredField {
                fnr,
                field: field.to_string(),
                declared: declared.iter().cloned().collect(),
            }),
        }
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

    /// Registers `hook` to run on the thread that made a group durable when
    /// no other group waits behind it (the leader would go idle): what a
    /// reactor task would do after the durable watch woke it, done without
    /// that wake-up. The hook must be quick and never block on the log (it
    /// runs with no lock of the committer held, but its leader's own answer
    /// waits for it). Dropped hooks are forgotten.
    pub fn on_idle_durable(&self, hook: std::sync::Weak<dyn IdleDurable>) {
        let mut hooks = lock(&self.shared().idle_hooks);
        hooks.retain(|h| h.strong_count() > 0);
        hooks.push(hook);
    }

    /// Waits until every commit up to `seen` is durable, or fails if the
    /// database stopped (a failed write or sync) first. The rule readers
    /// are served by: a commit is published to them after its sync. A
    /// commit joins the latest state when it is queued (later transactions
    /// build on it, and fail with it), but an answer that could carry it is
    /// sent only once it is durable: a node reads, takes its last LSN, and
    /// answers after `durable_through` it. So no reader is ever answered
    /// with a commit a failed sync takes back.
    pub async fn durable_through(&self, seen: Lsn) -> Result<(), DbError> {
        let mut rx = self.subscribe_durable();
        loop {
            if *rx.borrow_and_update() >= seen {
                return Ok(());
            }
            self.check_poisoned()?;
            // Closing: what is not durable now may never be (a commit
            // refused by the close had already moved the last LSN).
            if self.shared().committer.closing() {
                return Err(DbError::Closed);
            }
            if rx.changed().await.is_err() {
                return Err(DbError::Closed);
            }
        }
    }

    /// [`Database::durable_through`] for a thread outside an async runtime
    /// (it blocks).
    pub fn wait_durable(&self, seen: Lsn) -> Result<(), DbError> {
        let shared = self.shared();
        if *shared.durable.borrow() < seen {
            // Answered once `seen` is applied, or dropped when the
            // database failed or closed.
            let _ = shared.committer.barrier(shared, seen).blocking_recv();
        }
        if *shared.durable.borrow() >= seen {
            return Ok(());
        }
        self.check_poisoned()?;
        Err(DbError::Closed)
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
        let shared = self.shared();
        let rx = shared.committer.barrier(shared, target);
        rx.blocking_recv().map_err(|_| DbError::Closed)?;
        self.check_poisoned()
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

#[cfg(test)]
mod tail_tests {
    use super::*;

    fn rec(seq: u64, image: usize) -> Arc<LogRecord> {
        Arc::new(LogRecord {
            seq: Seq(seq),
            incarnation: 1,
            lsn: Lsn(seq),
            time_us: 0,
            client_id: None,
            master: Fnr(10),
            isn: Isn(seq),
            op: crate::LogOp::Store,
            before: None,
            after: Some(vec![0; image]),
            master_count: seq,
            master_digest: crate::Digest::default(),
            part: 1,
            parts: 1,
        })
    }

    #[test]
    fn a_tail_holds_contiguous_seqs_within_its_count_and_byte_bounds() {
        let mut t = LogTail::default();
        for s in 1..=10 {
            t.push(Lsn(s), rec(s, 100));
        }
        assert_eq!(t.get(Seq(1)).map(|r| r.1.seq), Some(Seq(1)));
        assert_eq!(t.get(Seq(10)).map(|r| r.1.seq), Some(Seq(10)));
        assert!(t.get(Seq(11)).is_none() && t.get(Seq(0)).is_none());
        // A gap starts it again.
        t.push(Lsn(20), rec(20, 100));
        assert!(t.get(Seq(10)).is_none());
        assert_eq!(t.get(Seq(20)).map(|r| r.0), Some(Lsn(20)));
        // Large images: the oldest go once the bytes exceed the bound.
        for s in 21..=60 {
            t.push(Lsn(s), rec(s, 1 << 20));
        }
        assert!(t.bytes <= TAIL_BYTES, "{}", t.bytes);
        assert!(t.get(Seq(21)).is_none());
        assert_eq!(t.get(Seq(60)).map(|r| r.1.seq), Some(Seq(60)));
    }
}

#[cfg(test)]
mod overlay_tests {
    use super::*;
    use crate::catalog::Role;
    use crate::ids::DbId;
    use crate::Value;

    fn record(v: i64) -> crate::Record {
        let mut r = crate::Record::new();
        r.insert("v".into(), Value::Int(v));
        r
    }

    /// A new database (in the returned directory) with one plain file.
    fn plain_file() -> (tempfile::TempDir, Database, Fnr) {
        let tmp = tempfile::tempdir().expect("tempdir");
        Database::init(tmp.path(), DbId(5), None).expect("init");
        let (db, _) = Database::open(tmp.path()).expect("open");
        let f = Fnr(20);
        db.create_file(f, "m", Role::Plain).expect("create");
        (tmp, db, f)
    }

    /// A read-ahead puts the overlay's writes (commits queued, not yet in
    /// the page store) over what it scanned: a queued delete hides the
    /// record, a queued store shows one the page store lacks. (Queued
    /// writes are placed in the overlay by hand: a real commit may reach
    /// the page store before the scan.)
    #[test]
    fn a_range_read_puts_the_overlay_over_the_page_store() {
        let (_tmp, db, f) = plain_file();
        let mut s = db.session();
        for i in 1..=40u64 {
            s.store(f, Some(Isn(i)), record(i as i64)).expect("store");
        }
        s.et(None).expect("et");
        db.wait_applied().expect("applied");
        let stored = crate::record::encode_record(&record(99)).expect("encode");
        {
            let mut st = lock(&db.shared().state);
            let at = st.last_lsn;
            st.overlay.insert((f, Isn(10)), (at, None));
            st.overlay.insert((f, Isn(41)), (at, Some(stored.clone())));
        }
        let found = db.writable_get_range(f, Isn(1), Isn(50)).expect("range");
        assert!(
            !found.contains_key(&Isn(10)),
            "a queued delete hides the record"
        );
        assert_eq!(found.get(&Isn(41)).map(|s| &s.bytes), Some(&stored));
        assert_eq!(found.len(), 40);
        for i in (1..=40u64).filter(|i| *i != 10) {
            assert_eq!(
                found.get(&Isn(i)).map(|s| s.bytes.clone()),
                db.shared().store.get(f, Isn(i)).expect("get"),
                "isn {i}"
            );
        }
        let mut st = lock(&db.shared().state);
        st.overlay.clear();
    }

    /// The applier takes a batch's records out of the overlay a slice at a
    /// time (`OVERLAY_SLICE` keys per hold of the state lock): a batch of
    /// several slices leaves it empty once applied, and every record reads
    /// back as last written, from the page store.
    #[test]
    fn a_batch_of_many_slices_leaves_the_overlay_empty_and_reads_the_last_write() {
        let (_tmp, db, f) = plain_file();
        let n = 3 * super::writer::OVERLAY_SLICE as u64 + 17;
        let mut s = db.session();
        for i in 1..=n {
            s.store(f, Some(Isn(i)), record(1)).expect("store");
        }
        s.et(None).expect("et");
        // Rewritten and deleted by later commits, likely in the same batch.
        for i in (1..=n).step_by(97) {
            s.update(f, Isn(i), record(2)).expect("rewrite");
            s.et(None).expect("et");
        }
        s.delete(f, Isn(n)).expect("delete");
        s.et(None).expect("et");
        db.wait_applied().expect("applied");
        assert!(
            lock(&db.shared().state).overlay.is_empty(),
            "{} records left in the overlay",
            lock(&db.shared().state).overlay.len()
        );
        for i in 1..n {
            let want = if (i - 1) % 97 == 0 { 2 } else { 1 };
            assert_eq!(
                db.read(f, Isn(i)).expect("read"),
                Some(record(want)),
                "isn {i}"
            );
        }
        assert_eq!(db.read(f, Isn(n)).expect("read"), None);
    }

    /// A key a later commit rewrote between two slices keeps its entry;
    /// the batch's own entries go.
    #[test]
    fn a_key_rewritten_between_slices_keeps_the_later_entry() {
        let f = Fnr(20);
        let mut overlay: HashMap<(Fnr, Isn), Pending> = (1..=3)
            .map(|i| ((f, Isn(i)), (Lsn(5), Some(vec![1]))))
            .collect();
        let keys: Vec<(Lsn, (Fnr, Isn))> = (1..=3).map(|i| (Lsn(5), (f, Isn(i)))).collect();
        let mut keys = keys.into_iter();
        super::writer::take_out(&mut overlay, keys.by_ref().take(1));
        // A commit at LSN 7 rewrites isn 2 before the next slice.
        overlay.insert((f, Isn(2)), (Lsn(7), Some(vec![2])));
        super::writer::take_out(&mut overlay, keys);
        assert_eq!(
            overlay.into_iter().collect::<Vec<_>>(),
            vec![((f, Isn(2)), (Lsn(7), Some(vec![2])))]
        );
    }
}
