//! The records of a master's ETP log file.
//!
//! One log record per changed master record, keyed by `seq` (gap-free per
//! master). Each carries full before- and after-images, so applying it is
//! idempotent and a partial replicate can decide membership on its own, and
//! the master's count and digest after this seq, so a replicate can prove it
//! holds exactly the master's content at that seq.
//!
//! Log records are *derived*: the protection log holds the master change
//! once, and [`crate::apply`] builds the log record from it — the same code
//! on the live commit path and on replay, so both produce the same bytes.

use crate::digest::Digest;
use crate::ids::{Fnr, Isn, Lsn, Seq};
use crate::record::{decode_record, record_to_json, RecordError};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogOp {
    Store,
    Update,
    Delete,
}

impl LogOp {
    pub fn name(self) -> &'static str {
        match self {
            LogOp::Store => "store",
            LogOp::Update => "update",
            LogOp::Delete => "delete",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    pub seq: Seq,
    /// The master's incarnation when this record was written.
    pub incarnation: u32,
    /// The transaction that made the change (its commit LSN on the master's database).
    pub lsn: Lsn,
    /// Commit time, microseconds since the Unix epoch (UTC).
    pub time_us: i64,
    /// The client transaction id given with ET, if any.
    pub client_id: Option<String>,
    pub master: Fnr,
    pub isn: Isn,
    pub op: LogOp,
    #[serde(with = "serde_bytes")]
    pub before: Option<Vec<u8>>,
    #[serde(with = "serde_bytes")]
    pub after: Option<Vec<u8>>,
    /// The master's record count and digest after this seq.
    pub master_count: u64,
    pub master_digest: Digest,
    /// This record is part `part` of `parts` of its transaction on this master.
    pub part: u32,
    pub parts: u32,
}

impl LogRecord {
    /// The bytes of its before- and after-images (what batch and tail
    /// limits count).
    pub fn image_bytes(&self) -> usize {
        self.before.as_ref().map_or(0, Vec::len) + self.after.as_ref().map_or(0, Vec::len)
    }

    /// The base record a log refresh leaves (the master's level, no
    /// change): it carries the incarnation of the refresh, not of the
    /// history that led there.
    pub fn is_base(&self) -> bool {
        self.isn == Isn(0) && self.before.is_none() && self.after.is_none()
    }

    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec(self).expect("a log record always encodes")
    }

    pub fn decode(bytes: &[u8]) -> Result<LogRecord, RecordError> {
        rmp_serde::from_slice(bytes).map_err(|e| RecordError::Decode(e.to_string()))
    }

    pub fn time(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(self.time_us).unwrap_or_default()
    }

    /// The JSON form used by `etp log show --json` and `etp file dump` of a log file.
    pub fn to_json(&self) -> serde_json::Value {
        let image = |b: &Option<Vec<u8>>| match b {
            None => serde_json::Value::Null,
            Some(bytes) => match decode_record(bytes) {
                Ok(r) => record_to_json(&r),
                Err(e) => serde_json::json!({ "$undecodable": e.to_string() }),
            },
        };
        serde_json::json!({
            "seq": self.seq.0,
            "incarnation": self.incarnation,
            "lsn": self.lsn.0,
            "time": self.time().to_rfc3339_opts(SecondsFormat::Micros, true),
            "id": self.client_id,
            "master": self.master.0,
            "isn": self.isn.0,
            "op": self.op.name(),
            "before": image(&self.before),
            "after": image(&self.after),
            "master_count": self.master_count,
            "master_digest": self.master_digest.to_string(),
            "part": self.part,
            "parts": self.parts,
        })
    }
}
