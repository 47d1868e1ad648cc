//! The page store: the current state of every file, in an ordered
//! key-value engine — sled or fjall ([`Engine`], chosen when the database
//! is created and recorded in its identity).
//!
//! This is the only module that touches either engine. The page store is a
//! cache of the protection log's effect, never the truth: neither engine's
//! flush is a durability point the database relies on, and damage can make
//! one lose keys silently, so the database replays the log after
//! [`PageStore::applied_lsn`] at every open and checks digests. What the
//! database needs of an engine is crash consistency (after a crash it holds
//! a prefix of the batches it was given, each whole) and ordered scans.
//!
//! Everything lives in one keyspace under one-byte key prefixes (one sled
//! tree; one fjall keyspace, whose `pages` partition holds every key but
//! records, and each file's records a partition of its own, `file-<fnr>`,
//! in stores made since per-file partitions), so each [`StoreBatch`] —
//! records, file metas, catalog, client ids and the applied LSN — is
//! written by one atomic batch:
//! ```text
//! 0x00 "applied"               → applied LSN (u64 BE)
//! 0x01 fnr(u32 BE)             → FileDef (MessagePack)
//! 0x02 fnr(u32 BE)             → FileMeta (MessagePack)
//! 0x03 client id (UTF-8)       → commit LSN (u64 BE)
//! 0x10 fnr(u32 BE) isn(u64 BE) → record bytes
//! ```
//!
//! A file of its own partition, empty, can be filled by
//! [`PageStore::ingest`]: sorted runs written straight to disk and synced,
//! each record written once (a restore into a new database).
//!
//! The records of ETP log files are not in the engine: each log file has a
//! [`LogStore`] of its own (`logs/log-<fnr>/` beside the store), written in
//! the same [`PageStore::apply`] (first), with its own applied LSN (its last
//! mark); restart recovery replays each from its own LSN.

use crate::catalog::{FileDef, Role};
use crate::digest::FileMeta;
use crate::ids::{Fnr, Isn, Lsn};
use crate::logstore::{LogStore, LogStoreError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

const APPLIED: &[u8] = b"\x00applied";
/// Present once the log files' records live in log stores (databases made
/// before had them in the engine: moved at their first open).
const LOG_STORES: &[u8] = b"\x00log-stores";
/// The fjall layout: [`PER_FILE`] when each file's records have a
/// partition of their own (absent: all in `pages`, as made before).
const LAYOUT: &[u8] = b"\x00layout";
const PER_FILE: &[u8] = b"per-file";

/// The key-value engine under the page store.
///
/// Measured on this machine (see the README's performance section): sled
/// 0.34 spends 14–29 µs of CPU per appended key, fjall 2 about 1.5 µs, and
/// fjall scans and updates several times faster too. sled stays fully
/// supported: databases created with it keep it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    Sled,
    /// The default for new databases.
    #[default]
    Fjall,
}

impl Engine {
    pub const ALL: [Engine; 2] = [Engine::Sled, Engine::Fjall];

    pub fn name(self) -> &'static str {
        match self {
            Engine::Sled => "sled",
            Engine::Fjall => "fjall",
        }
    }
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Engine {
    type Err = String;
    fn from_str(s: &str) -> Result<Engine, String> {
        Engine::ALL
            .into_iter()
            .find(|e| e.name() == s)
            .ok_or_else(|| format!("unknown page-store engine {s:?}: expected sled or fjall"))
    }
}

/// A record's bytes as the page store holds them, shared, not copied.
/// Serialises as bytes.
pub enum StoredBytes {
    Sled(sled::IVec),
    Fjall(fjall::Slice),
    /// Read from a log store.
    Owned(Vec<u8>),
}

impl AsRef<[u8]> for StoredBytes {
    fn as_ref(&self) -> &[u8] {
        match self {
            StoredBytes::Sled(v) => v.as_ref(),
            StoredBytes::Fjall(v) => v.as_ref(),
            StoredBytes::Owned(v) => v,
        }
    }
}

impl serde::Serialize for StoredBytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.as_ref())
    }
}
const CATALOG: u8 = 0x01;
const META: u8 = 0x02;
const CLIENT_ID: u8 = 0x03;
const DATA: u8 = 0x10;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("page store {dir} cannot be opened: {reason}")]
    Open { dir: String, reason: String },
    #[error("page store {dir}: {reason}")]
    Io { dir: String, reason: String },
    #[error(transparent)]
    Log(#[from] LogStoreError),
    #[error("page store {dir}: undecodable {what}: {reason}")]
    Decode {
        dir: String,
        what: String,
        reason: String,
    },
}

pub struct PageStore {
    kv: Kv,
    dir: PathBuf,
    /// The log files' stores, under `logs_dir`.
    logs: RwLock<BTreeMap<Fnr, Arc<LogStore>>>,
    logs_dir: PathBuf,
    log_segment_size: u64,
    /// Held by each batch and by a flush: a flush marks the log stores a
    /// batch did not touch as of the batch's LSN only once it is whole.
    writing: Mutex<()>,
}

enum Kv {
    Sled(sled::Db),
    Fjall(FjallKv),
}

/// A fjall keyspace: `pages` for every key but records; the records of
/// each file in a partition of its own (`file-<fnr>`), which a scan reads
/// alone and a restore into an empty file can fill with sorted runs
/// written straight to disk ([`PageStore::ingest`]). Databases made before
/// per-file partitions keep their records in `pages`.
struct FjallKv {
    keyspace: fjall::Keyspace,
    pages: fjall::PartitionHandle,
    /// Records in partitions of their own (see [`LAYOUT`]).
    per_file: bool,
    files: RwLock<BTreeMap<Fnr, fjall::PartitionHandle>>,
    /// Files being ingested: fjall holds their memtable's lock throughout,
    /// so the relief leaves them be.
    ingesting: Arc<Mutex<std::collections::BTreeSet<Fnr>>>,
    /// The thread that relieves the journals (see [`Relief`]).
    relief: Option<Relief>,
}

impl Drop for FjallKv {
    fn drop(&mut self) {
        if let Some(r) = self.relief.take() {
            r.stop();
        }
    }
}

/// A thread that relieves the journals of a keyspace twice a second (see
/// [`relieve`]). It runs beside the writers, not after their writes: once
/// fjall halts a write for its journals, the writer does not return until
/// some of them are freed, and a relief that only followed writes never
/// came (`etp bench propagate`, the drain after a replicate's node was
/// killed mid-load: halted for good).
struct Relief {
    stop: Arc<(Mutex<bool>, std::sync::Condvar)>,
    handle: std::thread::JoinHandle<()>,
}

impl Relief {
    fn start(
        keyspace: fjall::Keyspace,
        ingesting: Arc<Mutex<std::collections::BTreeSet<Fnr>>>,
    ) -> std::io::Result<Relief> {
        let stop = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let s = stop.clone();
        let handle = std::thread::Builder::new()
            .name("store-relief".into())
            .spawn(move || {
                let (lock, cv) = &*s;
                let mut stopped = lock.lock().unwrap_or_else(|p| p.into_inner());
                let mut stuck = Stuck::default();
                while !*stopped {
                    let (g, _) = cv
                        .wait_timeout(stopped, std::time::Duration::from_millis(500))
                        .unwrap_or_else(|p| p.into_inner());
                    stopped = g;
                    if !*stopped {
                        relieve(&keyspace, &ingesting, &mut stuck);
                    }
                }
            })?;
        Ok(Relief { stop, handle })
    }

    fn stop(self) {
        let (lock, cv) = &*self.stop;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cv.notify_all();
        let _ = self.handle.join();
    }
}

/// Journals (each ended by a memtable's rotation) past which every
/// partition's memtable is rotated (see [`relieve`]).
const JOURNALS_RELIEVED_AT: usize = 4;
/// Passes of the relief with the journals not going down before each
/// partition is written [`RELIEF_KEY`] (see [`relieve`]).
const STUCK_PASSES: u32 = 3;
/// A key no record, meta or definition has (they start with a one-byte
/// prefix, or `\x00` and another name), written only by [`relieve`].
const RELIEF_KEY: &[u8] = b"\x00relief";

/// What the relief saw of the journals at its last pass.
#[derive(Default)]
struct Stuck {
    /// How many there were.
    journals: usize,
    /// Passes in a row they have not gone down.
    passes: u32,
}

/// fjall frees a journal only once every partition with data in it has
/// flushed that data; a partition written a little at a time (`pages`: the
/// metas and applied LSN of every batch; a confirmation file) fills its
/// memtable only after hundreds of MB of other writes, and meanwhile pins
/// every journal. fjall's own monitor rotates one such partition at a
/// time, and only past half of its 512 MB journal limit; a bulk load
/// outran it here and halted every write, for good (seen in `etp bench
/// propagate` with per-file partitions). So past [`JOURNALS_RELIEVED_AT`]
/// journals, every partition's memtable is rotated at each pass: small
/// ones flush in a moment, and the journals before go. Every partition of
/// the keyspace, not only those written since the store opened: after a
/// restart fjall recovers each partition's memtable from the journals.
///
/// Rotating is not always enough: fjall frees the oldest journal only once
/// every partition's newest *persisted* seqno has reached what that
/// partition held in memory when the journal was sealed. A partition whose
/// memtable is empty cannot move that seqno by a flush: one left idle
/// after its seqno moved on (fjall-rs/fjall#288, open upstream, after a
/// `clear()`), or — our reading of fjall's compaction, not seen — one
/// whose newest entries were deletions that a compaction into the last
/// level dropped. So when the journals have not gone down for
/// [`STUCK_PASSES`] passes, each partition that holds sorted runs gets a
/// small write ([`RELIEF_KEY`], outside every record's and every meta's
/// key range) before its rotation: its flush then persists a seqno newer
/// than any journal's mark. (The permanent halts seen in `etp bench
/// propagate` after a node was killed mid-load were another fjall bug,
/// fixed in `vendor/fjall`: its flusher left memtables recovered from the
/// journals queued, and they kept every journal.)
fn relieve(
    keyspace: &fjall::Keyspace,
    ingesting: &Mutex<std::collections::BTreeSet<Fnr>>,
    stuck: &mut Stuck,
) {
    let count = keyspace.journal_count();
    if count < JOURNALS_RELIEVED_AT {
        *stuck = Stuck {
            journals: count,
            passes: 0,
        };
        return;
    }
    // Not going down for a few passes: partitions with sorted runs get a
    // relief key before their rotation (see above).
    stuck.passes = if count >= stuck.journals {
        stuck.passes + 1
    } else {
        0
    };
    stuck.journals = count;
    let touch = stuck.passes >= STUCK_PASSES;
    if touch {
        stuck.passes = 0;
        tracing::info!(
            journals = count,
            "fjall's journals are not going down: each partition is written a relief key"
        );
    }
    // Held throughout: an ingest registers under it before it takes its
    // partition's memtable lock, which a rotation would wait for (with
    // fjall's journal lock held, stalling every write).
    let ingesting = ingesting.lock().unwrap_or_else(|p| p.into_inner());
    let busy: Vec<String> = ingesting.iter().map(|f| file_partition(*f)).collect();
    for name in keyspace.list_partitions() {
        if busy.iter().any(|b| b.as_str() == &*name) {
            continue;
        }
        let Ok(p) = keyspace.open_partition(&name, partition_options()) else {
            continue;
        };
        // A partition with no sorted run pins nothing this way (and one
        // that is empty may be ingested into: it stays empty).
        if touch && p.segment_count() > 0 {
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64);
            if let Err(e) = p.insert(RELIEF_KEY, stamp.to_be_bytes()) {
                tracing::warn!(partition = %p.name, error = %e, "writing the relief key failed");
            }
        }
        // Nothing to rotate (an empty memtable) is not an error; a failed
        // rotation poisons the keyspace, which the next write reports.
        if let Err(e) = p.rotate_memtable() {
            tracing::warn!(partition = %p.name, error = %e, "rotating a memtable to free journals failed");
        }
    }
}

impl FjallKv {
    /// The partition `fnr`'s records live in, made (and its directory
    /// entry synced) the first time.
    fn records(&self, fnr: Fnr) -> Result<fjall::PartitionHandle, fjall::Error> {
        if !self.per_file {
            return Ok(self.pages.clone());
        }
        if let Some(p) = self
            .files
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fnr)
        {
            return Ok(p.clone());
        }
        let mut files = self.files.write().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = files.get(&fnr) {
            return Ok(p.clone());
        }
        let name = file_partition(fnr);
        let p = self.keyspace.open_partition(&name, partition_options())?;
        // Decided on the marker itself, not on whether fjall knew the
        // partition: a marker whose writing failed once is written (and
        // synced) the next time, before the handle is ever used.
        if !p.path().join(MADE).try_exists()? {
            // fjall syncs the partition's own files but has a window where
            // a crash leaves one it cannot open (its version marker
            // written, its level manifest not yet): marked as made here,
            // with its entry in the partitions folder synced, before any
            // batch's journal entry can name it. An unmarked one holds
            // nothing and is removed at open (see `clear_unmade`).
            let marker = p.path().join(MADE);
            std::fs::File::create(&marker)?.sync_all()?;
            sync_dir(p.path())?;
            sync_dir(&p.path().parent().map(Path::to_path_buf).unwrap_or_default())?;
        }
        files.insert(fnr, p.clone());
        Ok(p)
    }

    /// The partition a key of the store's layout lives in.
    fn partition_of(&self, key: &[u8]) -> Result<fjall::PartitionHandle, fjall::Error> {
        match key_fnr(key) {
            Some(fnr) if self.per_file => self.records(fnr),
            _ => Ok(self.pages.clone()),
        }
    }
}

/// Records to ingest, passed on while their isns strictly ascend; the
/// first that does not ends them, and [`Ordered::check`] names it.
struct Ordered<'a> {
    records: &'a mut dyn Iterator<Item = (Isn, Vec<u8>)>,
    prev: Option<Isn>,
    unordered: Option<(Option<Isn>, Isn)>,
}

impl<'a> Ordered<'a> {
    fn new(records: &'a mut dyn Iterator<Item = (Isn, Vec<u8>)>) -> Self {
        Ordered {
            records,
            prev: None,
            unordered: None,
        }
    }

    /// The error for an isn out of order (`err(before, isn)`), if one was.
    fn check<E>(&self, err: impl FnOnce(Option<Isn>, Isn) -> E) -> Result<(), E> {
        match self.unordered {
            Some((before, isn)) => Err(err(before, isn)),
            None => Ok(()),
        }
    }
}

impl Iterator for Ordered<'_> {
    type Item = (Isn, Vec<u8>);
    fn next(&mut self) -> Option<Self::Item> {
        if self.unordered.is_some() {
            return None;
        }
        let (isn, v) = self.records.next()?;
        if self.prev.is_some_and(|p| isn <= p) {
            self.unordered = Some((self.prev, isn));
            return None;
        }
        self.prev = Some(isn);
        Some((isn, v))
    }
}

/// A record key's file.
fn key_fnr(key: &[u8]) -> Option<Fnr> {
    match key {
        [DATA, a, b, c, d, ..] => Some(Fnr(u32::from_be_bytes([*a, *b, *c, *d]))),
        _ => None,
    }
}

/// The start of a per-file partition's name (a directory name, not text).
const FILE_PARTITION: &[u8] = b"file-";

/// The name of the partition `fnr`'s records live in (per-file layout).
fn file_partition(fnr: Fnr) -> String {
    format!("file-{}", fnr.0)
}

/// In a per-file partition's folder once it is whole (see
/// [`FjallKv::records`]).
const MADE: &str = ".etp-made";

/// Removes the per-file partitions a crash left half-made (no [`MADE`]
/// marker): nothing was ever written to them.
fn clear_unmade(store: &Path) -> Result<(), std::io::Error> {
    let folder = store.join("partitions");
    let entries = match std::fs::read_dir(&folder) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut removed = false;
    for e in entries {
        let e = e?;
        let name = e.file_name();
        // A marker that cannot be looked at is an error, not an absence.
        if name.as_encoded_bytes().starts_with(FILE_PARTITION)
            && !e.path().join(MADE).try_exists()?
        {
            tracing::warn!(partition = %e.path().display(), "removing a partition a crash left half-made");
            std::fs::remove_dir_all(e.path())?;
            removed = true;
        }
    }
    if removed {
        sync_dir(&folder)?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), std::io::Error> {
    std::fs::File::open(dir)?.sync_all()
}

/// The options every fjall partition is made with.
fn partition_options() -> fjall::PartitionCreateOptions {
    // Uncompressed blocks: the records are small, already compact
    // MessagePack, and read back on every feeder scan and update; lz4 cost
    // CPU on both sides for little space. (Both options are fixed when the
    // partition is created.)
    fjall::PartitionCreateOptions::default()
        .compression(fjall::CompressionType::None)
        .compaction_strategy(compaction())
}

/// An engine's error, as text for people (it is reported, never decided on).
trait EngineError: std::fmt::Display {}
impl EngineError for sled::Error {}
impl EngineError for fjall::Error {}
impl EngineError for std::io::Error {}

/// One atomic write to the page store.
#[derive(Default)]
pub struct StoreBatch {
    pub applied: Lsn,
    pub records: Vec<(Fnr, Isn, Option<Vec<u8>>)>,
    pub metas: Vec<FileMeta>,
    pub catalog: Vec<FileDef>,
    pub client_ids: Vec<(String, Lsn)>,
    /// Only the log files' records (restart recovery bringing a log store
    /// that is behind up to the engine's applied LSN).
    pub logs_only: bool,
    /// Files whose records from an isn on are deleted before the batch is
    /// written (see [`PageStore::clear`]).
    pub cleared: Vec<(Fnr, Isn)>,
}

impl StoreBatch {
    /// Every key the batch writes to the engine (`None`: removes), in one
    /// order for either engine: catalog, metas, records (of files `in_kv`
    /// holds), client ids, the applied LSN.
    fn each_write(&self, in_kv: impl Fn(Fnr) -> bool, mut write: impl FnMut(&[u8], Option<&[u8]>)) {
        for def in &self.catalog {
            let v = rmp_serde::to_vec(def).expect("a file definition always encodes");
            write(&fnr_key(CATALOG, def.fnr), Some(&v));
        }
        for m in &self.metas {
            let v = rmp_serde::to_vec(m).expect("a file meta always encodes");
            write(&fnr_key(META, m.fnr), Some(&v));
        }
        for (fnr, isn, v) in &self.records {
            if in_kv(*fnr) {
                write(&data_key(*fnr, *isn), v.as_deref());
            }
        }
        for (id, lsn) in &self.client_ids {
            write(&id_key(id), Some(&lsn.0.to_be_bytes()));
        }
        write(APPLIED, Some(&self.applied.0.to_be_bytes()));
    }
}

fn data_key(fnr: Fnr, isn: Isn) -> [u8; 13] {
    let mut k = [0u8; 13];
    k[0] = DATA;
    k[1..5].copy_from_slice(&fnr.0.to_be_bytes());
    k[5..13].copy_from_slice(&isn.0.to_be_bytes());
    k
}

fn fnr_key(prefix: u8, fnr: Fnr) -> [u8; 5] {
    let mut k = [0u8; 5];
    k[0] = prefix;
    k[1..5].copy_from_slice(&fnr.0.to_be_bytes());
    k
}

fn id_key(id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(id.len() + 1);
    k.push(CLIENT_ID);
    k.extend_from_slice(id.as_bytes());
    k
}

/// How long opening waits for sled's lock to be released by a handle of
/// this process that is still shutting down.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// One write to a log store: a seq and its record (`None`: removed).
type LogWrite<'a> = (Isn, Option<&'a [u8]>);

/// One record of a scan.
type ScanEntry = Result<(Isn, StoredBytes), StoreError>;

/// The fjall partition's compaction: size-tiered. Measured here against
/// fjall's default (leveled), interleaved, in `etp bench propagate`: the
/// master's CPU per row 13.8–15.0 against 14.7–15.9 µs in bulk, 28.5–31.0
/// against 34.5–41.0 µs for updates and 13.5–17.5 against 27.0–29.0 µs
/// for deletes (leveled compaction rewrote the master's records and log
/// records over and over: 29% of the master's samples during updates).
/// Tiered holds more space for a while; the page store is a cache of the
/// protection log, and point reads stay cheap behind bloom filters. Like
/// the compression, fjall records it when the partition is created:
/// databases created before keep leveled compaction.
fn compaction() -> fjall::compaction::Strategy {
    fjall::compaction::Strategy::SizeTiered(Default::default())
}

/// The fjall partition that holds every key.
const PAGES: &str = "pages";

impl PageStore {
    /// Opens (or creates) the store in `dir` with `engine`. A store the
    /// engine cannot open — or one that makes it panic — is an error naming
    /// the directory.
    pub fn open(
        dir: &Path,
        engine: Engine,
        cache_bytes: u64,
        log_segment_size: u64,
    ) -> Result<PageStore, StoreError> {
        let open_err = |reason: String| StoreError::Open {
            dir: dir.display().to_string(),
            reason,
        };
        let kv = match engine {
            Engine::Sled => Kv::Sled(Self::open_sled(dir, cache_bytes).map_err(open_err)?),
            Engine::Fjall => {
                clear_unmade(dir).map_err(|e| open_err(e.to_string()))?;
                let r = std::panic::catch_unwind(|| {
                    // Two cores: one background worker each for memtable
                    // flushes and compaction.
                    let keyspace = fjall::Config::new(dir)
                        .cache_size(cache_bytes)
                        .flush_workers(1)
                        .compaction_workers(1)
                        .open()?;
                    let pages = keyspace.open_partition(PAGES, partition_options())?;
                    // A store with nothing in it yet takes the per-file
                    // layout; one made before keeps its records in `pages`.
                    let per_file = match pages.get(LAYOUT)? {
                        Some(v) => v.as_ref() == PER_FILE,
                        None if pages.is_empty()? => {
                            pages.insert(LAYOUT, PER_FILE)?;
                            keyspace.persist(fjall::PersistMode::SyncAll)?;
                            true
                        }
                        None => false,
                    };
                    let ingesting = Arc::new(Mutex::new(std::collections::BTreeSet::new()));
                    // Only the per-file layout writes partitions a little at
                    // a time while others take bulk writes.
                    let relief = if per_file {
                        Some(Relief::start(keyspace.clone(), ingesting.clone())?)
                    } else {
                        None
                    };
                    Ok::<_, fjall::Error>(Kv::Fjall(FjallKv {
                        keyspace,
                        pages,
                        per_file,
                        files: RwLock::new(BTreeMap::new()),
                        ingesting,
                        relief,
                    }))
                });
                match r {
                    Ok(Ok(kv)) => kv,
                    Ok(Err(e)) => return Err(open_err(e.to_string())),
                    Err(_) => {
                        return Err(open_err(
                            "fjall panicked while opening it (damaged files)".into(),
                        ))
                    }
                }
            }
        };
        let store = PageStore {
            kv,
            dir: dir.to_path_buf(),
            logs: RwLock::new(BTreeMap::new()),
            logs_dir: dir.with_file_name("logs"),
            log_segment_size,
            writing: Mutex::new(()),
        };
        store.open_logs()?;
        Ok(store)
    }

    fn log_dir(&self, fnr: Fnr) -> PathBuf {
        self.logs_dir.join(format!("log-{}", fnr.0))
    }

    /// Opens the store of every log file in the catalog. A database made
    /// before log stores has its log records moved out of the engine; a
    /// store that is gone is made anew as empty at LSN 0, for restart
    /// recovery to rebuild from the protection log (if it reaches back).
    fn open_logs(&self) -> Result<(), StoreError> {
        let moved = self.get_raw(LOG_STORES)?.is_some();
        for def in self.catalog()? {
            if !matches!(def.role, Role::Log { .. }) {
                continue;
            }
            let dir = self.log_dir(def.fnr);
            let ls = if dir.exists() {
                LogStore::open(&dir, def.fnr, self.log_segment_size)?
            } else if moved {
                tracing::warn!(file = %def.fnr, dir = %dir.display(), "log store missing: to be rebuilt from the protection log");
                LogStore::create(&dir, def.fnr, self.log_segment_size, Lsn(0))?
            } else {
                self.move_log_out(def.fnr, &dir)?
            };
            self.logs
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(def.fnr, Arc::new(ls));
        }
        if !moved {
            self.kv_writes(vec![(LOG_STORES.to_vec(), Some(vec![1]))])?;
        }
        Ok(())
    }

    /// Moves a log file's records from the engine into a new log store.
    fn move_log_out(&self, fnr: Fnr, dir: &Path) -> Result<LogStore, StoreError> {
        let applied = self.applied_lsn()?;
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| self.io(e))?;
        }
        let ls = LogStore::create(dir, fnr, self.log_segment_size, applied)?;
        let mut keys = Vec::new();
        let mut chunk: Vec<(Isn, StoredBytes)> = Vec::new();
        for kv in self.scan_shared(fnr, Isn(0)) {
            let (isn, v) = kv?;
            keys.push((data_key(fnr, isn).to_vec(), None));
            chunk.push((isn, v));
            if chunk.len() == 4096 {
                ls.apply(chunk.iter().map(|(i, v)| (*i, Some(v.as_ref()))), applied)?;
                chunk.clear();
            }
        }
        ls.apply(chunk.iter().map(|(i, v)| (*i, Some(v.as_ref()))), applied)?;
        ls.sync(applied)?;
        tracing::info!(file = %fnr, records = keys.len(), "log records moved into the log store");
        self.kv_writes(keys)?;
        Ok(ls)
    }

    /// Writes keys straight to the engine (not a batch of the database).
    fn kv_writes(&self, writes: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<(), StoreError> {
        match &self.kv {
            Kv::Sled(db) => {
                let mut batch = sled::Batch::default();
                for (k, v) in writes {
                    match v {
                        Some(v) => batch.insert(k, v),
                        None => batch.remove(k),
                    }
                }
                db.apply_batch(batch).map_err(|e| self.io(e))?;
                db.flush().map(|_| ()).map_err(|e| self.io(e))
            }
            Kv::Fjall(f) => {
                let mut batch = fjall::Batch::with_capacity(f.keyspace.clone(), writes.len())
                    .durability(Some(fjall::PersistMode::SyncAll));
                for (k, v) in writes {
                    let p = f.partition_of(&k).map_err(|e| self.io(e))?;
                    match v {
                        Some(v) => batch.insert(&p, k, v),
                        None => batch.remove(&p, k),
                    }
                }
                batch.commit().map_err(|e| self.io(e))
            }
        }
    }

    fn log(&self, fnr: Fnr) -> Option<Arc<LogStore>> {
        self.logs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fnr)
            .cloned()
    }

    /// The log files' stores.
    pub fn log_stores(&self) -> Vec<Arc<LogStore>> {
        self.logs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The store of log file `fnr`, if it is one.
    pub fn log_store(&self, fnr: Fnr) -> Option<Arc<LogStore>> {
        self.log(fnr)
    }

    fn open_sled(dir: &Path, cache_bytes: u64) -> Result<sled::Db, String> {
        let cfg = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .flush_every_ms(Some(1000));
        // sled releases its file lock from its own background threads, after
        // its handle is dropped: a store this process has just closed can
        // still be locked for a moment. (Another process cannot hold it: the
        // database's LOCK file is taken first.) Wait for it, with a deadline.
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        let opened = loop {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cfg.open()));
            match &r {
                Ok(Err(sled::Error::Io(e)))
                    if (e.kind() == std::io::ErrorKind::WouldBlock
                        || e.to_string().contains("could not acquire lock"))
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                _ => break r,
            }
        };
        match opened {
            Ok(Ok(db)) => Ok(db),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("sled panicked while opening it (damaged files)".into()),
        }
    }

    /// The engine this store runs on.
    pub fn engine(&self) -> Engine {
        match self.kv {
            Kv::Sled(_) => Engine::Sled,
            Kv::Fjall(_) => Engine::Fjall,
        }
    }

    fn io(&self, e: impl EngineError) -> StoreError {
        StoreError::Io {
            dir: self.dir.display().to_string(),
            reason: e.to_string(),
        }
    }

    fn decode_err(&self, what: impl Into<String>, reason: impl ToString) -> StoreError {
        StoreError::Decode {
            dir: self.dir.display().to_string(),
            what: what.into(),
            reason: reason.to_string(),
        }
    }

    fn u64_value(&self, what: &str, v: &[u8]) -> Result<u64, StoreError> {
        let b: [u8; 8] = v
            .try_into()
            .map_err(|_| self.decode_err(what, format!("{} bytes, expected 8", v.len())))?;
        Ok(u64::from_be_bytes(b))
    }

    /// One key's value.
    fn get_raw(&self, key: &[u8]) -> Result<Option<StoredBytes>, StoreError> {
        match &self.kv {
            Kv::Sled(db) => Ok(db.get(key).map_err(|e| self.io(e))?.map(StoredBytes::Sled)),
            Kv::Fjall(f) => Ok(f
                .partition_of(key)
                .and_then(|p| p.get(key))
                .map_err(|e| self.io(e))?
                .map(StoredBytes::Fjall)),
        }
    }

    /// The values of every key starting with `prefix`, in key order.
    fn prefix_values(&self, prefix: u8) -> Result<Vec<StoredBytes>, StoreError> {
        let mut out = Vec::new();
        match &self.kv {
            Kv::Sled(db) => {
                for kv in db.scan_prefix([prefix]) {
                    out.push(StoredBytes::Sled(kv.map_err(|e| self.io(e))?.1));
                }
            }
            Kv::Fjall(f) => {
                for kv in f.pages.prefix([prefix]) {
                    out.push(StoredBytes::Fjall(kv.map_err(|e| self.io(e))?.1));
                }
            }
        }
        Ok(out)
    }

    pub fn applied_lsn(&self) -> Result<Lsn, StoreError> {
        match self.get_raw(APPLIED)? {
            None => Ok(Lsn(0)),
            Some(v) => Ok(Lsn(self.u64_value("applied LSN", v.as_ref())?)),
        }
    }

    pub fn catalog(&self) -> Result<Vec<FileDef>, StoreError> {
        self.prefix_values(CATALOG)?
            .iter()
            .map(|v| {
                rmp_serde::from_slice(v.as_ref()).map_err(|e| self.decode_err("catalog entry", e))
            })
            .collect()
    }

    pub fn metas(&self) -> Result<Vec<FileMeta>, StoreError> {
        self.prefix_values(META)?
            .iter()
            .map(|v| rmp_serde::from_slice(v.as_ref()).map_err(|e| self.decode_err("file meta", e)))
            .collect()
    }

    pub fn get(&self, fnr: Fnr, isn: Isn) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(ls) = self.log(fnr) {
            return Ok(ls.get(isn)?);
        }
        Ok(self
            .get_raw(&data_key(fnr, isn))?
            .map(|v| v.as_ref().to_vec()))
    }

    pub fn client_id(&self, id: &str) -> Result<Option<Lsn>, StoreError> {
        match self.get_raw(&id_key(id))? {
            None => Ok(None),
            Some(v) => Ok(Some(Lsn(self.u64_value("client id", v.as_ref())?))),
        }
    }

    /// The records of `fnr` with isn ≥ `from`, in ascending isn.
    pub fn scan(
        &self,
        fnr: Fnr,
        from: Isn,
    ) -> impl Iterator<Item = Result<(Isn, Vec<u8>), StoreError>> + '_ {
        self.scan_shared(fnr, from)
            .map(|kv| kv.map(|(i, v)| (i, v.as_ref().to_vec())))
    }

    /// [`PageStore::scan`] without copying the bytes out of the store.
    pub fn scan_shared(
        &self,
        fnr: Fnr,
        from: Isn,
    ) -> impl Iterator<Item = Result<(Isn, StoredBytes), StoreError>> + '_ {
        if let Some(ls) = self.log(fnr) {
            let entries: Box<dyn Iterator<Item = ScanEntry> + '_> =
                Box::new(ls.scan(from).map(|r| {
                    r.map(|(i, v)| (i, StoredBytes::Owned(v)))
                        .map_err(StoreError::from)
                }));
            return entries;
        }
        let start = data_key(fnr, from).to_vec();
        let end = fnr_key(DATA, Fnr(fnr.0));
        // The key's isn while it is a record of `fnr`; None past them.
        let isn_of = move |k: &[u8]| -> Option<Result<Isn, StoreError>> {
            if !k.starts_with(&end) {
                return None;
            }
            Some(
                k.get(5..13)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(|b| Isn(u64::from_be_bytes(b)))
                    .ok_or_else(|| self.decode_err("record key", "short key")),
            )
        };
        let entries: Box<dyn Iterator<Item = ScanEntry> + '_> = match &self.kv {
            Kv::Sled(db) => Box::new(db.range(start..).map_while(move |kv| match kv {
                Err(e) => Some(Err(self.io(e))),
                Ok((k, v)) => isn_of(&k).map(|i| Ok((i?, StoredBytes::Sled(v)))),
            })),
            Kv::Fjall(f) => match f.records(fnr) {
                Err(e) => Box::new(std::iter::once(Err(self.io(e)))),
                Ok(p) => Box::new(p.range(start..).map_while(move |kv| match kv {
                    Err(e) => Some(Err(self.io(e))),
                    Ok((k, v)) => isn_of(&k).map(|i| Ok((i?, StoredBytes::Fjall(v)))),
                })),
            },
        };
        entries
    }

    /// Writes one batch: the records of log files to their log stores
    /// (each marked as of `b.applied`), then everything else to the engine
    /// in one atomic batch.
    pub fn apply(&self, b: &StoreBatch) -> Result<(), StoreError> {
        let _writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        for def in &b.catalog {
            if matches!(def.role, Role::Log { .. }) && self.log(def.fnr).is_none() {
                // A new log file: empty as of the batch before this one.
                let dir = self.log_dir(def.fnr);
                if dir.exists() {
                    // Left by a store whose definition the engine lost
                    // (rebuilt from the protection log now).
                    std::fs::remove_dir_all(&dir).map_err(|e| self.io(e))?;
                }
                std::fs::create_dir_all(&self.logs_dir).map_err(|e| self.io(e))?;
                let ls =
                    LogStore::create(&dir, def.fnr, self.log_segment_size, self.applied_lsn()?)?;
                self.logs
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(def.fnr, Arc::new(ls));
            }
        }
        let logs = self.logs.read().unwrap_or_else(|p| p.into_inner()).clone();
        if !logs.is_empty() {
            let mut per: BTreeMap<Fnr, Vec<LogWrite>> = BTreeMap::new();
            for (fnr, isn, v) in &b.records {
                if logs.contains_key(fnr) {
                    per.entry(*fnr).or_default().push((*isn, v.as_deref()));
                }
            }
            for (fnr, recs) in per {
                logs[&fnr].apply(recs, b.applied)?;
            }
        }
        if b.logs_only {
            return Ok(());
        }
        for (f, from) in &b.cleared {
            self.clear_locked(*f, *from)?;
        }
        let in_kv = |f: Fnr| !logs.contains_key(&f);
        match &self.kv {
            Kv::Sled(db) => {
                let mut batch = sled::Batch::default();
                b.each_write(in_kv, |k, v| match v {
                    Some(v) => batch.insert(k, v),
                    None => batch.remove(k),
                });
                db.apply_batch(batch).map_err(|e| self.io(e))
            }
            Kv::Fjall(f) => {
                let n = b.catalog.len() + b.metas.len() + b.records.len() + b.client_ids.len() + 1;
                // Each batch is handed to the OS as it is committed (not
                // synced: the PLOG makes a commit durable). fjall 2.11
                // ignores a failed journal write unless the batch asks for
                // a persist, so this is also how a write error reaches us
                // (and poisons the database) instead of being lost.
                let mut batch = fjall::Batch::with_capacity(f.keyspace.clone(), n)
                    .durability(Some(fjall::PersistMode::Buffer));
                // The partition of the last record's file, looked up once
                // per run of its records.
                let mut last: Option<(Fnr, fjall::PartitionHandle)> = None;
                let mut failed = None;
                b.each_write(in_kv, |k, v| {
                    let p = match key_fnr(k) {
                        Some(fnr) if f.per_file => match &last {
                            Some((l, p)) if *l == fnr => p.clone(),
                            _ => match f.records(fnr) {
                                Ok(p) => {
                                    last = Some((fnr, p.clone()));
                                    p
                                }
                                Err(e) => {
                                    failed.get_or_insert(e);
                                    return;
                                }
                            },
                        },
                        _ => f.pages.clone(),
                    };
                    match v {
                        Some(v) => batch.insert(&p, k, v),
                        None => batch.remove(&p, k),
                    }
                });
                if let Some(e) = failed {
                    return Err(self.io(e));
                }
                batch.commit().map_err(|e| self.io(e))?;
                if !b.cleared.is_empty() {
                    // Deletions made durable with the applied LSN past
                    // them: a write that does not go through the journal
                    // (an ingest's synced runs) may follow, and a replay
                    // of the clear after it would delete what it wrote.
                    f.keyspace
                        .persist(fjall::PersistMode::SyncData)
                        .map_err(|e| self.io(e))?;
                }
                Ok(())
            }
        }
    }

    /// Deletes every record of `fnr` (not a log file's) at or above isn
    /// `from`, in batches, not synced and not moving the applied LSN: the
    /// protection-log entry that empties the file
    /// ([`crate::catalog::CatalogOp::Clear`]) comes first, and replay
    /// deletes them again if the page store had not applied it. Deleting
    /// what is not there is nothing.
    pub fn clear(&self, fnr: Fnr, from: Isn) -> Result<(), StoreError> {
        let _writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        self.clear_locked(fnr, from)
    }

    fn clear_locked(&self, fnr: Fnr, mut from: Isn) -> Result<(), StoreError> {
        if self.log(fnr).is_some() {
            return Err(self.io(std::io::Error::other(format!(
                "file {fnr} is a log file: its records are not cleared"
            ))));
        }
        const BATCH: usize = 65_536;
        loop {
            let mut keys = Vec::with_capacity(BATCH);
            for kv in self.scan_shared(fnr, from) {
                let (isn, _) = kv?;
                keys.push(data_key(fnr, isn));
                // On from past it: a scan from the start again would step
                // over every deletion made so far.
                from = Isn(isn.0.saturating_add(1));
                if keys.len() == BATCH {
                    break;
                }
            }
            if keys.is_empty() {
                return Ok(());
            }
            let full = keys.len() == BATCH;
            match &self.kv {
                Kv::Sled(db) => {
                    let mut batch = sled::Batch::default();
                    for k in &keys {
                        batch.remove(&k[..]);
                    }
                    db.apply_batch(batch).map_err(|e| self.io(e))?;
                }
                Kv::Fjall(f) => {
                    let p = f.records(fnr).map_err(|e| self.io(e))?;
                    let mut batch = fjall::Batch::with_capacity(f.keyspace.clone(), keys.len())
                        .durability(Some(fjall::PersistMode::Buffer));
                    for k in keys {
                        batch.remove(&p, k);
                    }
                    batch.commit().map_err(|e| self.io(e))?;
                }
            }
            if !full {
                return Ok(());
            }
        }
    }

    /// Writes a bulk chunk of new records of `fnr` (none of their isns
    /// holds a record) straight to the engine, or to the file's log store,
    /// and makes them durable there: the protection-log entry that names
    /// them ([`crate::catalog::CatalogOp::Bulk`]) is written after, and
    /// does not carry them. The engine's applied LSN does not move.
    pub fn bulk_put(&self, fnr: Fnr, records: &[(Isn, Vec<u8>)]) -> Result<(), StoreError> {
        if let Some(ls) = self.log(fnr) {
            return Ok(ls.bulk(records.iter().map(|(i, v)| (*i, v.as_slice())))?);
        }
        {
            let _writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
            match &self.kv {
                Kv::Sled(db) => {
                    let mut batch = sled::Batch::default();
                    for (isn, v) in records {
                        batch.insert(&data_key(fnr, *isn)[..], v.as_slice());
                    }
                    db.apply_batch(batch).map_err(|e| self.io(e))?;
                }
                Kv::Fjall(f) => {
                    let p = f.records(fnr).map_err(|e| self.io(e))?;
                    let mut batch = fjall::Batch::with_capacity(f.keyspace.clone(), records.len())
                        .durability(Some(fjall::PersistMode::Buffer));
                    for (isn, v) in records {
                        batch.insert(&p, data_key(fnr, *isn), v.as_slice());
                    }
                    batch.commit().map_err(|e| self.io(e))?;
                }
            }
        }
        match &self.kv {
            Kv::Sled(db) => db.flush().map(|_| ()).map_err(|e| self.io(e)),
            Kv::Fjall(f) => f
                .keyspace
                .persist(fjall::PersistMode::SyncData)
                .map_err(|e| self.io(e)),
        }
    }

    /// Whether [`PageStore::ingest`] can take `fnr`'s records: a log
    /// file's empty store; or fjall, the file's records in a partition of
    /// their own, and that partition empty (no sorted run, nothing in
    /// memory).
    pub fn can_ingest(&self, fnr: Fnr) -> Result<bool, StoreError> {
        if let Some(ls) = self.log(fnr) {
            return Ok(ls.is_empty());
        }
        match &self.kv {
            Kv::Fjall(f) if f.per_file => {
                let p = f.records(fnr).map_err(|e| self.io(e))?;
                Ok(p.segment_count() == 0 && p.approximate_len() == 0)
            }
            _ => Ok(false),
        }
    }

    /// Writes `records` (strictly ascending isns) of a file whose partition
    /// is empty (see [`PageStore::can_ingest`]) as new sorted runs of the
    /// engine, synced, with their directory, before it returns: not
    /// through the engine's journal, memory, flushes and compactions, so
    /// each record is written once. A log file's go to its log store,
    /// synced once at the end. Nothing else may write the file
    /// meanwhile. Like [`PageStore::bulk_put`], the engine's applied LSN
    /// does not move: the protection-log entry naming the records comes
    /// after. An input out of order is an error, with part of it ingested.
    pub fn ingest(
        &self,
        fnr: Fnr,
        records: &mut dyn Iterator<Item = (Isn, Vec<u8>)>,
    ) -> Result<(), StoreError> {
        if let Some(ls) = self.log(fnr) {
            if !ls.is_empty() {
                return Err(self.io(std::io::Error::other(format!(
                    "log file {fnr}'s store is not empty: its records cannot be ingested"
                ))));
            }
            let mut ordered = Ordered::new(records);
            ls.ingest(&mut ordered)?;
            return ordered.check(|before, isn| self.out_of_order(fnr, before, isn));
        }
        let Kv::Fjall(f) = &self.kv else {
            return Err(self.io(std::io::Error::other(
                "only a fjall page store ingests sorted runs",
            )));
        };
        if !self.can_ingest(fnr)? {
            return Err(self.io(std::io::Error::other(format!(
                "file {fnr}'s partition is not empty: its records cannot be ingested"
            ))));
        }
        let p = f.records(fnr).map_err(|e| self.io(e))?;
        let mut ordered = Ordered::new(records);
        let keyed = (&mut ordered).map(|(isn, v)| (data_key(fnr, isn), v));
        // fjall asserts its preconditions (checked above) by panicking.
        f.ingesting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fnr);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| p.ingest(keyed)));
        f.ingesting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fnr);
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(self.io(e)),
            Err(_) => {
                return Err(self.io(std::io::Error::other(format!(
                    "fjall panicked ingesting file {fnr}'s records"
                ))))
            }
        }
        ordered.check(|before, isn| self.out_of_order(fnr, before, isn))
    }

    fn out_of_order(&self, fnr: Fnr, before: Option<Isn>, isn: Isn) -> StoreError {
        self.io(std::io::Error::other(format!(
            "file {fnr}'s records to ingest are out of order: isn {isn} after {}",
            before.map(|b| b.to_string()).unwrap_or_default()
        )))
    }

    /// Asks the engine to write its buffers out. The database relies on it
    /// only before it removes protection-log segments (the store must not
    /// need what they hold); a commit's durability is the PLOG's.
    ///
    /// Every log store is synced too, marked as of the engine's applied LSN
    /// when no batch since its last mark touched it (so none needs the
    /// protection log from before that LSN).
    pub fn flush(&self) -> Result<(), StoreError> {
        let _writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        match &self.kv {
            Kv::Sled(db) => db.flush().map(|_| ()).map_err(|e| self.io(e))?,
            Kv::Fjall(f) => f
                .keyspace
                .persist(fjall::PersistMode::SyncAll)
                .map_err(|e| self.io(e))?,
        }
        let applied = self.applied_lsn()?;
        for ls in self.log_stores() {
            ls.sync(applied)?;
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(fnr: Fnr, isn: u64, lsn: u64) -> StoreBatch {
        StoreBatch {
            applied: Lsn(lsn),
            records: vec![(fnr, Isn(isn), Some(format!("r{isn}").into_bytes()))],
            ..StoreBatch::default()
        }
    }

    fn records(s: &PageStore, fnr: Fnr) -> Vec<(Isn, Vec<u8>)> {
        s.scan(fnr, Isn(0)).map(|r| r.expect("scan")).collect()
    }

    #[test]
    fn a_new_fjall_store_keeps_each_files_records_in_a_partition_of_its_own() {
        let t = tempfile::tempdir().expect("tempdir");
        let dir = t.path().join("store");
        let s = PageStore::open(&dir, Engine::Fjall, 1 << 20, 1 << 20).expect("open");
        s.apply(&batch(Fnr(5), 1, 1)).expect("apply");
        s.apply(&batch(Fnr(6), 1, 2)).expect("apply");
        assert_eq!(records(&s, Fnr(5)), vec![(Isn(1), b"r1".to_vec())]);
        drop(s);
        for f in ["file-5", "file-6"] {
            assert!(dir.join("partitions").join(f).join(MADE).exists(), "{f}");
        }
        let s = PageStore::open(&dir, Engine::Fjall, 1 << 20, 1 << 20).expect("reopen");
        assert_eq!(records(&s, Fnr(6)), vec![(Isn(1), b"r1".to_vec())]);
        assert_eq!(s.applied_lsn().expect("applied"), Lsn(2));
    }

    #[test]
    fn a_partition_a_crash_left_half_made_is_removed_at_open_and_the_rest_is_kept() {
        let t = tempfile::tempdir().expect("tempdir");
        let dir = t.path().join("store");
        let s = PageStore::open(&dir, Engine::Fjall, 1 << 20, 1 << 20).expect("open");
        s.apply(&batch(Fnr(5), 1, 1)).expect("apply");
        drop(s);
        // What fjall leaves when killed between a new partition's version
        // marker and its level manifest (and before our marker).
        let parts = dir.join("partitions");
        let half = parts.join("file-9");
        std::fs::create_dir_all(half.join("segments")).expect("mkdir");
        for f in ["config", "manifest"] {
            std::fs::copy(parts.join("file-5").join(f), half.join(f)).expect("copy");
        }
        let s = PageStore::open(&dir, Engine::Fjall, 1 << 20, 1 << 20).expect("open after");
        assert!(!half.exists());
        assert_eq!(records(&s, Fnr(5)), vec![(Isn(1), b"r1".to_vec())]);
        // Made again when a record of the file comes.
        s.apply(&batch(Fnr(9), 3, 2)).expect("apply");
        assert_eq!(records(&s, Fnr(9)), vec![(Isn(3), b"r3".to_vec())]);
    }

    #[test]
    fn a_fjall_store_made_before_per_file_partitions_keeps_its_records_in_pages() {
        let t = tempfile::tempdir().expect("tempdir");
        let dir = t.path().join("store");
        {
            // The layout as it was: every key in `pages`, no layout key.
            let ks = fjall::Config::new(&dir).open().expect("keyspace");
            let pages = ks
                .open_partition(PAGES, partition_options())
                .expect("pages");
            pages.insert(APPLIED, 1u64.to_be_bytes()).expect("applied");
            pages
                .insert(data_key(Fnr(5), Isn(1)), b"old")
                .expect("record");
            ks.persist(fjall::PersistMode::SyncAll).expect("persist");
        }
        let s = PageStore::open(&dir, Engine::Fjall, 1 << 20, 1 << 20).expect("open");
        assert_eq!(records(&s, Fnr(5)), vec![(Isn(1), b"old".to_vec())]);
        s.apply(&batch(Fnr(5), 2, 2)).expect("apply");
        assert!(!s.can_ingest(Fnr(6)).expect("can"));
        drop(s);
        assert!(!dir.join("partitions").join("file-5").exists());
        let s = PageStore::open(&dir, Engine::Fjall, 1 << 20, 1 << 20).expect("reopen");
        assert_eq!(
            records(&s, Fnr(5)),
            vec![(Isn(1), b"old".to_vec()), (Isn(2), b"r2".to_vec())]
        );
    }
}
