//! The confirmation record: what a confirmation file holds for each of its
//! replicates (keyed by the replicate's file number), written in the same
//! transaction as the replicated changes it confirms.
//!
//! One schema, used by both sides: the node's link writes and reads it
//! ([`confirmation_to_record`], [`load_progress_to_record`] and their
//! inverses), and the database checks a write's guard against it
//! ([`GuardView`]) without knowing the rest.
//!
//! Two shapes share the record: a confirmation (the last master seq applied,
//! its incarnation, master time, digest and count), and, while a load is in
//! progress, the load's progress (`load_*` fields, `seq` 0).

use crate::ids::{DbId, Fnr, Isn, Seq};
use crate::record::{Record, Value};
use crate::wire::{Confirmation, LoadProgress};

/// The last master seq the replicate applied (0 while loading).
pub const SEQ: &str = "seq";
/// Present only while a load is in progress: its id.
pub const LOAD_ID: &str = "load_id";
/// While loading: the records below this isn are loaded.
pub const LOAD_NEXT: &str = "load_next";

/// What a write guard needs of the record it replaces.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuardView<'a> {
    /// The load in progress, if any.
    pub load_id: Option<&'a str>,
    /// The confirmed seq (0 when absent).
    pub seq: Seq,
    /// A load's next isn, if recorded.
    pub load_next: Option<u64>,
}

impl<'a> GuardView<'a> {
    pub fn of(r: &'a Record) -> GuardView<'a> {
        let int = |k: &str| match r.get(k) {
            Some(Value::Int(n)) => Some(*n as u64),
            _ => None,
        };
        GuardView {
            load_id: match r.get(LOAD_ID) {
                Some(Value::Text(t)) => Some(t.as_str()),
                _ => None,
            },
            seq: Seq(int(SEQ).unwrap_or(0)),
            load_next: int(LOAD_NEXT),
        }
    }
}

/// A confirmation record, decoded.
#[derive(Clone, Debug, PartialEq)]
pub enum Decoded {
    Confirmed(Confirmation),
    Loading(LoadProgress),
}

/// Decodes a confirmation record of either shape.
pub fn decode(r: &Record) -> Result<Decoded, ConfirmationError> {
    if r.contains_key(LOAD_ID) {
        load_progress_from_record(r).map(Decoded::Loading)
    } else {
        confirmation_from_record(r).map(Decoded::Confirmed)
    }
}

/// The record a confirmation file holds for one replicate (keyed by the
/// replicate's file number).
pub fn confirmation_to_record(c: &Confirmation) -> Record {
    let mut r = Record::new();
    r.insert("replicate".into(), Value::Text(c.replicate.clone()));
    r.insert("master_db".into(), Value::Int(i64::from(c.master_db.0)));
    r.insert("master".into(), Value::Int(i64::from(c.master.0)));
    r.insert(SEQ.into(), Value::Int(c.seq.0 as i64));
    r.insert("incarnation".into(), Value::Int(i64::from(c.incarnation)));
    r.insert("master_time_us".into(), Value::Int(c.master_time_us));
    r.insert("digest".into(), Value::Text(c.digest.to_string()));
    r.insert("count".into(), Value::Int(c.count as i64));
    r.insert("applied_us".into(), Value::Int(c.applied_us));
    if let Some(id) = &c.loaded_by {
        r.insert("loaded_by".into(), Value::Text(id.clone()));
    }
    r
}

/// The confirmation record of a replicate while a load is in progress.
pub fn load_progress_to_record(
    replicate: &str,
    master_db: DbId,
    master: Fnr,
    p: &LoadProgress,
) -> Record {
    let mut r = Record::new();
    r.insert("replicate".into(), Value::Text(replicate.to_string()));
    r.insert("master_db".into(), Value::Int(i64::from(master_db.0)));
    r.insert("master".into(), Value::Int(i64::from(master.0)));
    r.insert(SEQ.into(), Value::Int(0));
    r.insert(LOAD_ID.into(), Value::Text(p.id.clone()));
    r.insert("load_snapshot".into(), Value::Int(p.snapshot.0 as i64));
    r.insert("load_source".into(), Value::Text(p.source.clone()));
    r.insert("load_rewrite".into(), Value::Bool(p.rewrite));
    r.insert(LOAD_NEXT.into(), Value::Int(p.next.0 as i64));
    r.insert("load_count".into(), Value::Int(p.count as i64));
    r.insert("load_digest".into(), Value::Text(p.digest.to_string()));
    r.insert("load_chunks".into(), Value::Int(p.chunks as i64));
    r
}

/// A confirmation record that does not hold what its schema says.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{what} field {field:?} {problem}")]
pub struct ConfirmationError {
    /// "confirmation" or "load progress".
    pub what: &'static str,
    pub field: String,
    pub problem: String,
}

/// Typed reads of an engine-written record's fields, errors naming `what`.
struct Fields<'a> {
    rec: &'a Record,
    what: &'static str,
}

impl Fields<'_> {
    fn bad(&self, k: &str, problem: String) -> ConfirmationError {
        ConfirmationError {
            what: self.what,
            field: k.to_string(),
            problem,
        }
    }
    fn int(&self, k: &str) -> Result<i64, ConfirmationError> {
        match self.rec.get(k) {
            Some(Value::Int(i)) => Ok(*i),
            other => Err(self.bad(k, format!("is {other:?}, not an integer"))),
        }
    }
    fn text(&self, k: &str) -> Result<String, ConfirmationError> {
        match self.rec.get(k) {
            Some(Value::Text(t)) => Ok(t.clone()),
            other => Err(self.bad(k, format!("is {other:?}, not text"))),
        }
    }
    fn digest(&self, k: &str) -> Result<crate::Digest, ConfirmationError> {
        let d = self.text(k)?;
        d.parse()
            .map_err(|_| self.bad(k, format!("holds {d:?}, not a digest")))
    }
}

pub fn load_progress_from_record(r: &Record) -> Result<LoadProgress, ConfirmationError> {
    let f = Fields {
        rec: r,
        what: "load progress",
    };
    Ok(LoadProgress {
        id: f.text(LOAD_ID)?,
        snapshot: Seq(f.int("load_snapshot")? as u64),
        source: f.text("load_source")?,
        rewrite: matches!(r.get("load_rewrite"), Some(Value::Bool(true))),
        next: Isn(f.int(LOAD_NEXT)? as u64),
        count: f.int("load_count")? as u64,
        digest: f.digest("load_digest")?,
        chunks: f.int("load_chunks")? as u64,
    })
}

pub fn confirmation_from_record(r: &Record) -> Result<Confirmation, ConfirmationError> {
    let f = Fields {
        rec: r,
        what: "confirmation",
    };
    Ok(Confirmation {
        replicate: f.text("replicate")?,
        master_db: DbId(f.int("master_db")? as u32),
        master: Fnr(f.int("master")? as u32),
        seq: Seq(f.int(SEQ)? as u64),
        incarnation: f.int("incarnation")? as u32,
        master_time_us: f.int("master_time_us")?,
        digest: f.digest("digest")?,
        count: f.int("count")? as u64,
        applied_us: f.int("applied_us")?,
        loaded_by: match r.get("loaded_by") {
            Some(Value::Text(t)) => Some(t.clone()),
            _ => None,
        },
    })
}
