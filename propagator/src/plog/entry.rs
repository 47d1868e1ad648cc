//! What one protection-log frame holds.

use crate::catalog::{CatalogOp, FileDef};
use crate::digest::FileMeta;
use crate::ids::{Fnr, Isn, Lsn};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PlogEntry {
    Commit(Commit),
    Checkpoint(Checkpoint),
}

/// One committed transaction.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Commit {
    pub lsn: Lsn,
    /// Commit time, µs since the Unix epoch (UTC); never decreases with LSN.
    pub time_us: i64,
    pub client_id: Option<String>,
    /// Catalog changes, applied before `changes`.
    pub catalog: Vec<CatalogOp>,
    /// Client-visible record changes, in command order. Log records of master
    /// files are derived from these (see `crate::apply`), not stored here.
    pub changes: Vec<Change>,
    /// Count, digest and next isn, after this commit, of every file it touched
    /// (derived log files included): replay checks its own result against them.
    pub metas: Vec<FileMeta>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub fnr: Fnr,
    pub isn: Isn,
    #[serde(with = "serde_bytes")]
    pub before: Option<Vec<u8>>,
    #[serde(with = "serde_bytes")]
    pub after: Option<Vec<u8>>,
}

/// The whole catalog and every file's meta as of `as_of`. The first frame of
/// every segment is one; a clean shutdown writes one with `clean` set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub as_of: Lsn,
    pub time_us: i64,
    pub clean: bool,
    pub catalog: Vec<FileDef>,
    pub metas: Vec<FileMeta>,
}

impl PlogEntry {
    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec(self).expect("a protection-log entry always encodes")
    }

    pub fn decode(bytes: &[u8]) -> Result<PlogEntry, String> {
        rmp_serde::from_slice(bytes).map_err(|e| e.to_string())
    }
}
