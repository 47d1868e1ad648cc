//! What a node remembers about the replication it runs, beside the
//! topology: the policy mode and, per replicate it feeds, the operator's
//! state (shunned), the error state and error log, gap records, the digest
//! anchor and a pending load order. Kept as one JSON record in the
//! administration file (written durably, through the PLOG, before anything
//! acts on it), so it survives restarts and is readable with `etp file dump`.

use crate::database::Database;
use crate::digest::{Digest, FileMeta};
use crate::ids::{Fnr, Isn, Seq};
use crate::record::{Record, Value};
/// The types of this state that travel on the wire live in [`crate::wire`].
pub use crate::wire::{ErrorEntry, Gap, LoadSummary, Policy};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Why the control state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("reading the control record of the administration file: {0}")]
    Read(#[source] crate::error::DbError),
    #[error("administration file {fnr} record {CONTROL_ISN}: {reason}")]
    Bad { fnr: Fnr, reason: String },
    #[error("no topology has been applied to this node (no administration file)")]
    NoAdministrationFile,
    #[error("writing the control record: {0}")]
    Write(#[source] crate::error::DbError),
}

impl ControlError {
    pub fn code(&self) -> crate::wire::ErrorCode {
        match self {
            ControlError::Read(d) | ControlError::Write(d) => d.code(),
            ControlError::Bad { .. } => crate::wire::ErrorCode::Damaged,
            ControlError::NoAdministrationFile => crate::wire::ErrorCode::Refused,
        }
    }
}

impl From<ControlError> for crate::wire::Failure {
    fn from(e: ControlError) -> crate::wire::Failure {
        crate::wire::Failure::new(e.code(), e.to_string())
    }
}

/// The record of the administration file that holds the control state.
pub const CONTROL_ISN: Isn = Isn(2);

/// Error-log entries kept per replicate (oldest dropped first).
const MAX_ERRORS: usize = 200;

/// A point where the replicate's expected content is known: its count and
/// digest after master seq `seq`, under definition `def`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Anchor {
    pub seq: Seq,
    pub count: u64,
    pub digest: Digest,
    pub def: u128,
}

impl Anchor {
    pub fn meta(&self, fnr: Fnr) -> FileMeta {
        let mut m = FileMeta::new(fnr);
        m.count = self.count;
        m.digest = self.digest;
        m
    }
}

/// An operator's (or the automatic policy's) request to load a replicate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoadOrder {
    pub id: String,
    /// None: the master; Some: a full replicate of the same master.
    pub from: Option<String>,
    pub rewrite: bool,
    pub chunk: Option<u32>,
    pub requested_us: i64,
    pub why: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplicateControl {
    /// (reason, since µs)
    pub shunned: Option<(String, i64)>,
    /// The current error, if the replicate is in error.
    pub error: Option<ErrorEntry>,
    pub errors: Vec<ErrorEntry>,
    pub gaps: Vec<Gap>,
    pub anchor: Option<Anchor>,
    pub load: Option<LoadOrder>,
    pub last_load: Option<LoadSummary>,
    /// Set while a copy set is being restored into it (backup).
    pub restoring: Option<String>,
    /// Found holding another history than its master's (cleared by the
    /// load that replaces it).
    #[serde(default)]
    pub diverged: Option<crate::wire::Divergence>,
}

impl ReplicateControl {
    /// Adds to the error log (a repeat of the last entry is counted, not added).
    pub fn log(&mut self, kind: &str, reason: &str) {
        let now = chrono::Utc::now().timestamp_micros();
        if let Some(last) = self.errors.last_mut() {
            if last.reason == reason && last.kind == kind {
                last.repeats += 1;
                last.last_us = now;
                return;
            }
        }
        if self.errors.len() == MAX_ERRORS {
            self.errors.remove(0);
        }
        self.errors.push(ErrorEntry {
            first_us: now,
            last_us: now,
            reason: reason.to_string(),
            repeats: 1,
            kind: kind.to_string(),
        });
    }

    /// Puts the replicate in error and logs it.
    pub fn fail(&mut self, reason: &str) {
        self.log("error", reason);
        if let Some(e) = self.errors.last() {
            self.error = Some(e.clone());
        }
    }

    /// Whether `seq` lies in a recorded gap.
    pub fn in_gap(&self, seq: Seq) -> bool {
        self.gaps.iter().any(|g| g.from <= seq && seq <= g.to)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeControl {
    pub policy: Policy,
    pub replicates: BTreeMap<String, ReplicateControl>,
    /// Client updates refused while a recovery plan rewrites a master
    /// (`etp recover run`); kept here so a restart does not forget it.
    #[serde(default)]
    pub quiesced: bool,
}

impl NodeControl {
    /// One replicate's state (the default for one never recorded).
    pub fn of(&self, name: &str) -> ReplicateControl {
        self.replicates.get(name).cloned().unwrap_or_default()
    }
}

/// The control state, cached in memory and written through to the
/// administration file.
pub struct Control {
    db: Database,
    admin: Mutex<Option<Fnr>>,
    state: Mutex<NodeControl>,
    /// Serialises writers (so the file always holds the latest state).
    write: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Control {
    /// Reads the control record of the administration file `admin`, if any.
    pub fn open(db: Database, admin: Option<Fnr>) -> Result<Control, ControlError> {
        let mut state = NodeControl::default();
        if let Some(fnr) = admin {
            let rec = db.read(fnr, CONTROL_ISN).map_err(ControlError::Read)?;
            if let Some(rec) = rec {
                let Some(Value::Text(json)) = rec.get("control") else {
                    return Err(ControlError::Bad {
                        fnr,
                        reason: "no control text".into(),
                    });
                };
                state = serde_json::from_str(json).map_err(|e| ControlError::Bad {
                    fnr,
                    reason: format!("bad control state: {e}"),
                })?;
            }
        }
        Ok(Control {
            db,
            admin: Mutex::new(admin),
            state: Mutex::new(state),
            write: Mutex::new(()),
        })
    }

    /// Reads the control record of administration file `fnr` again (after
    /// the file was restored) and writes to that file from now on.
    pub fn reload(&self, fnr: Fnr) -> Result<(), ControlError> {
        let fresh = Control::open(self.db.clone(), Some(fnr))?;
        let state = std::mem::take(&mut *lock(&fresh.state));
        let _w = lock(&self.write);
        *lock(&self.state) = state;
        *lock(&self.admin) = Some(fnr);
        Ok(())
    }

    /// The administration file to write to (the topology names it).
    pub fn set_admin(&self, fnr: Fnr) {
        *lock(&self.admin) = Some(fnr);
    }

    pub fn quiesced(&self) -> bool {
        lock(&self.state).quiesced
    }

    pub fn policy(&self) -> Policy {
        lock(&self.state).policy
    }

    pub fn snapshot(&self) -> NodeControl {
        lock(&self.state).clone()
    }

    pub fn replicate(&self, name: &str) -> ReplicateControl {
        lock(&self.state).of(name)
    }

    /// Whether a replicate has gap records (without copying its record).
    pub fn has_gaps(&self, name: &str) -> bool {
        lock(&self.state)
            .replicates
            .get(name)
            .is_some_and(|r| !r.gaps.is_empty())
    }

    /// Changes the state durably (blocking: one commit), then in memory.
    pub fn update<R>(&self, f: impl FnOnce(&mut NodeControl) -> R) -> Result<R, ControlError> {
        let _w = lock(&self.write);
        let mut next = lock(&self.state).clone();
        let r = f(&mut next);
        if next == *lock(&self.state) {
            return Ok(r);
        }
        let Some(fnr) = *lock(&self.admin) else {
            return Err(ControlError::NoAdministrationFile);
        };
        let json = serde_json::to_string(&next).map_err(|e| ControlError::Bad {
            fnr,
            reason: format!("the control state does not encode: {e}"),
        })?;
        let mut rec = Record::new();
        rec.insert("control".into(), Value::Text(json));
        self.db
            .put_engine_record(fnr, CONTROL_ISN, rec)
            .map_err(ControlError::Write)?;
        *lock(&self.state) = next;
        Ok(r)
    }

    /// Changes one replicate's control state durably.
    pub fn update_replicate<R>(
        &self,
        name: &str,
        f: impl FnOnce(&mut ReplicateControl) -> R,
    ) -> Result<R, ControlError> {
        self.update(|c| f(c.replicates.entry(name.to_string()).or_default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_parses_and_names_a_bad_one() {
        assert_eq!("manual".parse::<Policy>(), Ok(Policy::Manual));
        let e = "sometimes".parse::<Policy>().expect_err("refused");
        assert!(e.contains("sometimes"), "{e}");
    }

    #[test]
    fn error_log_counts_repeats_and_is_bounded() {
        let mut c = ReplicateControl::default();
        c.fail("a");
        c.fail("a");
        c.fail("b");
        assert_eq!(c.errors.len(), 2);
        assert_eq!(c.errors[0].repeats, 2);
        assert_eq!(c.error.as_ref().map(|e| e.reason.as_str()), Some("b"));
        for i in 0..(MAX_ERRORS + 10) {
            c.log("info", &i.to_string());
        }
        assert_eq!(c.errors.len(), MAX_ERRORS);
    }

    #[test]
    fn control_state_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        Database::init(dir.path(), crate::DbId(1), None).expect("init");
        let (db, _) = Database::open(dir.path()).expect("open");
        db.create_file(Fnr(255), "administration", crate::Role::Administration)
            .expect("admin file");
        let c = Control::open(db.clone(), Some(Fnr(255))).expect("control");
        c.update(|s| s.policy = Policy::Manual).expect("policy");
        c.update_replicate("r", |r| {
            r.gaps.push(Gap {
                from: Seq(3),
                to: Seq(9),
                reason: "operator".into(),
                time_us: 1,
            })
        })
        .expect("gap");
        drop(c);
        db.close().expect("close");
        let (db, _) = Database::open(dir.path()).expect("reopen");
        let c = Control::open(db.clone(), Some(Fnr(255))).expect("control");
        assert_eq!(c.policy(), Policy::Manual);
        assert!(c.replicate("r").in_gap(Seq(5)));
        assert!(!c.replicate("r").in_gap(Seq(10)));
        drop(c);
        db.close().expect("close");
    }
}
