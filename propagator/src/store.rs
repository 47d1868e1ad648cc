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
//! tree, one fjall partition), so each [`StoreBatch`] — records, file metas,
//! catalog, client ids and the applied LSN — is written by one atomic batch:
//! ```text
//! 0x00 "applied"               → applied LSN (u64 BE)
//! 0x01 fnr(u32 BE)             → FileDef (MessagePack)
//! 0x02 fnr(u32 BE)             → FileMeta (MessagePack)
//! 0x03 client id (UTF-8)       → commit LSN (u64 BE)
//! 0x10 fnr(u32 BE) isn(u64 BE) → record bytes
//! ```
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
    Fjall {
        keyspace: fjall::Keyspace,
        pages: fjall::PartitionHandle,
    },
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
                let r = std::panic::catch_unwind(|| {
                    // Two cores: one background worker each for memtable
                    // flushes and compaction.
                    let keyspace = fjall::Config::new(dir)
                        .cache_size(cache_bytes)
                        .flush_workers(1)
                        .compaction_workers(1)
                        .open()?;
                    // Uncompressed blocks: the records are small, already
                    // compact MessagePack, and read back on every feeder
                    // scan and update; lz4 cost CPU on both sides for
                    // little space. (Both options are fixed when the
                    // partition is created.)
                    let opts = fjall::PartitionCreateOptions::default()
                        .compression(fjall::CompressionType::None)
                        .compaction_strategy(compaction());
                    let pages = keyspace.open_partition(PAGES, opts)?;
                    Ok::<_, fjall::Error>(Kv::Fjall { keyspace, pages })
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
            Kv::Fjall { keyspace, pages } => {
                let mut batch = fjall::Batch::with_capacity(keyspace.clone(), writes.len())
                    .durability(Some(fjall::PersistMode::SyncAll));
                for (k, v) in writes {
                    match v {
                        Some(v) => batch.insert(pages, k, v),
                        None => batch.remove(pages, k),
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
            Kv::Fjall { .. } => Engine::Fjall,
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
            Kv::Fjall { pages, .. } => Ok(pages
                .get(key)
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
            Kv::Fjall { pages, .. } => {
                for kv in pages.prefix([prefix]) {
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
            Kv::Fjall { pages, .. } => {
                Box::new(pages.range(start..).map_while(move |kv| match kv {
                    Err(e) => Some(Err(self.io(e))),
                    Ok((k, v)) => isn_of(&k).map(|i| Ok((i?, StoredBytes::Fjall(v)))),
                }))
            }
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
            Kv::Fjall { keyspace, pages } => {
                let n = b.catalog.len() + b.metas.len() + b.records.len() + b.client_ids.len() + 1;
                // Each batch is handed to the OS as it is committed (not
                // synced: the PLOG makes a commit durable). fjall 2.11
                // ignores a failed journal write unless the batch asks for
                // a persist, so this is also how a write error reaches us
                // (and poisons the database) instead of being lost.
                let mut batch = fjall::Batch::with_capacity(keyspace.clone(), n)
                    .durability(Some(fjall::PersistMode::Buffer));
                b.each_write(in_kv, |k, v| match v {
                    Some(v) => batch.insert(pages, k, v),
                    None => batch.remove(pages, k),
                });
                batch.commit().map_err(|e| self.io(e))
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
                Kv::Fjall { keyspace, pages } => {
                    let mut batch = fjall::Batch::with_capacity(keyspace.clone(), records.len())
                        .durability(Some(fjall::PersistMode::Buffer));
                    for (isn, v) in records {
                        batch.insert(pages, data_key(fnr, *isn), v.as_slice());
                    }
                    batch.commit().map_err(|e| self.io(e))?;
                }
            }
        }
        match &self.kv {
            Kv::Sled(db) => db.flush().map(|_| ()).map_err(|e| self.io(e)),
            Kv::Fjall { keyspace, .. } => keyspace
                .persist(fjall::PersistMode::SyncData)
                .map_err(|e| self.io(e)),
        }
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
            Kv::Fjall { keyspace, .. } => keyspace
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
