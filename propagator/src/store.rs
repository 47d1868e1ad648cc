//! The page store: the current state of every file, kept in sled.
//!
//! This is the only module that touches sled. sled is a cache of the
//! protection log's effect, never the truth: its flush is not a durable
//! flush and damage can make it lose keys silently, so the database replays
//! the log after [`PageStore::applied_lsn`] at every open and checks digests.
//!
//! Everything lives in one sled tree under one-byte key prefixes, so each
//! [`StoreBatch`] — records, file metas, catalog, client ids and the applied
//! LSN — is written by one atomic `apply_batch`:
//! ```text
//! 0x00 "applied"               → applied LSN (u64 BE)
//! 0x01 fnr(u32 BE)             → FileDef (MessagePack)
//! 0x02 fnr(u32 BE)             → FileMeta (MessagePack)
//! 0x03 client id (UTF-8)       → commit LSN (u64 BE)
//! 0x10 fnr(u32 BE) isn(u64 BE) → record bytes
//! ```

use crate::catalog::FileDef;
use crate::digest::FileMeta;
use crate::ids::{Fnr, Isn, Lsn};
use std::path::{Path, PathBuf};

const APPLIED: &[u8] = b"\x00applied";

/// A record's bytes as the page store holds them, shared, not copied.
/// Serialises as bytes.
pub struct StoredBytes(sled::IVec);

impl AsRef<[u8]> for StoredBytes {
    fn as_ref(&self) -> &[u8] {
        self.0.as_ref()
    }
}

impl serde::Serialize for StoredBytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0.as_ref())
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
    #[error("page store {dir}: undecodable {what}: {reason}")]
    Decode {
        dir: String,
        what: String,
        reason: String,
    },
}

pub struct PageStore {
    db: sled::Db,
    dir: PathBuf,
}

/// One atomic write to the page store.
#[derive(Default)]
pub struct StoreBatch {
    pub applied: Lsn,
    pub records: Vec<(Fnr, Isn, Option<Vec<u8>>)>,
    pub metas: Vec<FileMeta>,
    pub catalog: Vec<FileDef>,
    pub client_ids: Vec<(String, Lsn)>,
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

impl PageStore {
    /// Opens (or creates) the store in `dir`. A store sled cannot open — or
    /// one that makes sled panic — is an error naming the directory.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<PageStore, StoreError> {
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
        let db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(e)) => {
                return Err(StoreError::Open {
                    dir: dir.display().to_string(),
                    reason: e.to_string(),
                })
            }
            Err(_) => {
                return Err(StoreError::Open {
                    dir: dir.display().to_string(),
                    reason: "sled panicked while opening it (damaged files)".into(),
                })
            }
        };
        Ok(PageStore {
            db,
            dir: dir.to_path_buf(),
        })
    }

    fn io(&self, e: sled::Error) -> StoreError {
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

    pub fn applied_lsn(&self) -> Result<Lsn, StoreError> {
        match self.db.get(APPLIED).map_err(|e| self.io(e))? {
            None => Ok(Lsn(0)),
            Some(v) => Ok(Lsn(self.u64_value("applied LSN", &v)?)),
        }
    }

    pub fn catalog(&self) -> Result<Vec<FileDef>, StoreError> {
        let mut out = Vec::new();
        for kv in self.db.scan_prefix([CATALOG]) {
            let (_, v) = kv.map_err(|e| self.io(e))?;
            out.push(rmp_serde::from_slice(&v).map_err(|e| self.decode_err("catalog entry", e))?);
        }
        Ok(out)
    }

    pub fn metas(&self) -> Result<Vec<FileMeta>, StoreError> {
        let mut out = Vec::new();
        for kv in self.db.scan_prefix([META]) {
            let (_, v) = kv.map_err(|e| self.io(e))?;
            out.push(rmp_serde::from_slice(&v).map_err(|e| self.decode_err("file meta", e))?);
        }
        Ok(out)
    }

    pub fn get(&self, fnr: Fnr, isn: Isn) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .db
            .get(data_key(fnr, isn))
            .map_err(|e| self.io(e))?
            .map(|v| v.to_vec()))
    }

    pub fn client_id(&self, id: &str) -> Result<Option<Lsn>, StoreError> {
        match self.db.get(id_key(id)).map_err(|e| self.io(e))? {
            None => Ok(None),
            Some(v) => Ok(Some(Lsn(self.u64_value("client id", &v)?))),
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
        let start = data_key(fnr, from);
        let end = fnr_key(DATA, Fnr(fnr.0)).to_vec();
        self.db
            .range(start.to_vec()..)
            .take_while(move |kv| match kv {
                Ok((k, _)) => k.starts_with(&end),
                Err(_) => true,
            })
            .map(move |kv| {
                let (k, v) = kv.map_err(|e| self.io(e))?;
                let isn = u64::from_be_bytes(
                    k[5..13]
                        .try_into()
                        .map_err(|_| self.decode_err("record key", "short key"))?,
                );
                Ok((Isn(isn), StoredBytes(v)))
            })
    }

    /// Writes one batch atomically.
    pub fn apply(&self, b: &StoreBatch) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for def in &b.catalog {
            batch.insert(
                &fnr_key(CATALOG, def.fnr)[..],
                rmp_serde::to_vec(def).expect("a file definition always encodes"),
            );
        }
        for m in &b.metas {
            batch.insert(
                &fnr_key(META, m.fnr)[..],
                rmp_serde::to_vec(m).expect("a file meta always encodes"),
            );
        }
        for (fnr, isn, v) in &b.records {
            match v {
                Some(v) => batch.insert(&data_key(*fnr, *isn)[..], v.as_slice()),
                None => batch.remove(&data_key(*fnr, *isn)[..]),
            }
        }
        for (id, lsn) in &b.client_ids {
            batch.insert(id_key(id), &lsn.0.to_be_bytes()[..]);
        }
        batch.insert(APPLIED, &b.applied.0.to_be_bytes()[..]);
        self.db.apply_batch(batch).map_err(|e| self.io(e))
    }

    /// Asks sled to write its buffers out (not a durability point: see the module docs).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(|e| self.io(e))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
