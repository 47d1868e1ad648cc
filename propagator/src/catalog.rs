//! The database's own catalog: which files exist, their names and roles.
//!
//! Catalog changes are transactions like any other: they are written to the
//! protection log and applied to the page store with the LSN that made them,
//! so a crash can never leave a file half-defined.

use crate::ids::Fnr;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The longest file name accepted.
pub const MAX_FILE_NAME: usize = 64;

/// Whether `name` may name a file: 1 to [`MAX_FILE_NAME`] letters, digits, '_', '-' or '.'.
pub fn valid_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_FILE_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// An ordinary file: clients write it, nothing is logged for propagation.
    Plain,
    /// A master file: every committed change also writes one record to `log`.
    Master { log: Fnr, incarnation: u32 },
    /// The ETP log file of `master`: `seq → LogRecord`, written only by the engine.
    Log { master: Fnr },
    /// A read-only copy of a master, written only by its replication task.
    Replicate,
    /// Per (master, replicate) the last applied seq; written only by the engine.
    Confirmation,
    /// The definitions of the topology; written only through the maintenance utility.
    Administration,
}

impl Role {
    pub fn name(&self) -> &'static str {
        match self {
            Role::Plain => "plain",
            Role::Master { .. } => "master",
            Role::Log { .. } => "log",
            Role::Replicate => "replicate",
            Role::Confirmation => "confirmation",
            Role::Administration => "administration",
        }
    }

    /// Whether a client transaction may change records of a file with this role.
    pub fn client_writable(&self) -> bool {
        matches!(self, Role::Plain | Role::Master { .. })
    }

    /// Parses a role that can be given to `file create` (not master/log, which
    /// are made by `master define`).
    pub fn parse_creatable(s: &str) -> Option<Role> {
        Some(match s {
            "plain" => Role::Plain,
            "replicate" => Role::Replicate,
            "confirmation" => Role::Confirmation,
            "administration" => Role::Administration,
            _ => return None,
        })
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Master { log, incarnation } => {
                write!(f, "master (log {log}, incarnation {incarnation})")
            }
            Role::Log { master } => write!(f, "log (of master {master})"),
            other => f.write_str(other.name()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct FileDef {
    pub fnr: Fnr,
    pub name: String,
    pub role: Role,
    /// A restore into the file has begun and its last chunk has not been
    /// proved yet (why it began): the file is damaged until then, across
    /// restarts, since what it holds may be part copy, part old content.
    ///
    /// Encoded as a sequence (rmp's compact form): trailing fields that
    /// are `None` are left out (so an entry with neither is byte for byte
    /// what it was before they existed, which an older binary reads), a
    /// field before one that is set is written as nil; missing trailing
    /// fields decode as their defaults.
    #[serde(default)]
    pub restoring: Option<String>,
    /// A replicate file that serves no current reads (see [`Hold`]):
    /// restored from a copy and not yet caught up, or shunned or in error
    /// at its master. Only its replication task clears it.
    #[serde(default)]
    pub hold: Option<Hold>,
}

impl Serialize for FileDef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let n = match (&self.restoring, &self.hold) {
            (_, Some(_)) => 5,
            (Some(_), None) => 4,
            (None, None) => 3,
        };
        let mut st = s.serialize_struct("FileDef", n)?;
        st.serialize_field("fnr", &self.fnr)?;
        st.serialize_field("name", &self.name)?;
        st.serialize_field("role", &self.role)?;
        if n >= 4 {
            st.serialize_field("restoring", &self.restoring)?;
        }
        if n == 5 {
            st.serialize_field("hold", &self.hold)?;
        }
        st.end()
    }
}

/// Why a replicate file serves no current reads: a client that reads it
/// gets a refusal naming this, unless it asks for stale reads. Kept in the
/// catalog (it survives restarts) and cleared only by the replicate's own
/// task, once the replicate has confirmed its master's level (seed 001's
/// restored replica, locked until it has caught up).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub kind: HoldKind,
    /// What happened, for people.
    pub why: String,
    /// Since when (µs since the epoch).
    pub since_us: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldKind {
    /// Restored from a copy set: locked to every writer but its task until
    /// it confirms the level its master had when it came back.
    Restored,
    /// Shunned by an operator at its master: not fed.
    Shunned,
    /// In error at its master (a digest mismatch, a divergence, a refused
    /// load): what it holds is not known to be any level of its master.
    Error,
}

impl HoldKind {
    pub fn name(self) -> &'static str {
        match self {
            HoldKind::Restored => "restored",
            HoldKind::Shunned => "shunned",
            HoldKind::Error => "error",
        }
    }
}

impl Hold {
    pub fn new(kind: HoldKind, why: impl Into<String>) -> Hold {
        Hold {
            kind,
            why: why.into(),
            since_us: chrono::Utc::now().timestamp_micros(),
        }
    }
}

/// Whether two holds (or their absence) are the same hold: its kind and
/// since when, which a release names (a hold set again since is another).
pub fn same_hold(a: Option<&Hold>, b: Option<&Hold>) -> bool {
    a.map(|h| (h.kind, h.since_us)) == b.map(|h| (h.kind, h.since_us))
}

impl fmt::Display for Hold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            HoldKind::Restored => write!(
                f,
                "restored from a copy ({}) and locked until it confirms its master's level",
                self.why
            ),
            HoldKind::Shunned => write!(f, "shunned at its master ({})", self.why),
            HoldKind::Error => write!(f, "in error at its master ({})", self.why),
        }
    }
}

/// The damage reason of a file whose restore has not finished.
pub fn unfinished_restore(why: &str) -> String {
    format!("a restore into it began ({why}) and has not finished: it holds part of a copy; run the restore again")
}

/// A change to the catalog, carried in a protection-log commit entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CatalogOp {
    /// Creates a file (or replaces the definition of an existing one).
    Define(FileDef),
    /// A replicate file's count and digest become those of the records the
    /// page store holds (given here, computed from them), and any damage
    /// recorded against it is cleared: the start of a reload that replaces
    /// every record and proves the result against the master's digest.
    Rebase(crate::digest::FileMeta),
    /// The commit's changes to this file are written as given: a master's
    /// changes derive no log records (a restore writes a master and its log
    /// from one copy set). With `next_isn`, the file's next isn (a log
    /// file's next seq) becomes exactly that after the commit.
    Restore { fnr: Fnr, next_isn: Option<u64> },
    /// A bulk chunk: records `first..=last` of the file, `count` of them
    /// with these digest terms summed, were written straight to the page
    /// store (and synced there) before this entry, which names them rather
    /// than carrying them. Every isn of the chunk lay at or above the
    /// file's next isn (it replaced nothing); the file's count and digest
    /// grow by the chunk's and its next isn moves past `last`. Replay
    /// checks that the page store holds the chunk whole.
    Bulk(BulkChunk),
    /// A replicate file is emptied from isn `from` on for a load that
    /// writes every record there again ([`crate::Database::clear_for_load`]):
    /// its meta becomes `meta` (that of the records below `from`: empty
    /// from isn 1), and any damage recorded against it is cleared. The
    /// page store deletes its records at or above `from` before it writes
    /// anything the commit (or a later one) writes to it; replay does the
    /// same. A slice cannot cross it (the log does not name what it
    /// deleted).
    Clear {
        fnr: Fnr,
        from: crate::ids::Isn,
        meta: crate::digest::FileMeta,
    },
}

impl CatalogOp {
    /// The file the operation is about.
    pub fn fnr(&self) -> Fnr {
        match self {
            CatalogOp::Define(d) => d.fnr,
            CatalogOp::Rebase(m) => m.fnr,
            CatalogOp::Restore { fnr, .. } | CatalogOp::Clear { fnr, .. } => *fnr,
            CatalogOp::Bulk(b) => b.fnr,
        }
    }
}

/// What a [`CatalogOp::Bulk`] entry says of its chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BulkChunk {
    pub fnr: Fnr,
    pub first: crate::ids::Isn,
    pub last: crate::ids::Isn,
    pub count: u64,
    pub digest: crate::digest::Digest,
}

/// Why a file is unusable: the reason, for people, and whether the damage
/// is only inherited from its partner (a master's log, or a log's master):
/// a file marked because its partner is damaged holds what it should.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Damage {
    pub reason: String,
    /// The damaged partner this file was marked for, if that is all.
    #[serde(default)]
    pub partner: Option<Fnr>,
}

impl Damage {
    /// Damage of the file itself.
    pub fn own(reason: impl Into<String>) -> Damage {
        Damage {
            reason: reason.into(),
            partner: None,
        }
    }

    /// A file marked because its partner `partner` is damaged.
    pub fn of_partner(partner: Fnr, reason: &str) -> Damage {
        Damage {
            reason: format!("its partner file {partner} is damaged: {reason}"),
            partner: Some(partner),
        }
    }
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Catalog entries are rmp's compact (sequence) form: one written
    /// before `restoring` and `hold` existed still decodes, and a hold
    /// without a restore keeps its place.
    #[test]
    fn a_file_definition_decodes_across_its_versions() {
        #[derive(Serialize)]
        struct Before {
            fnr: Fnr,
            name: String,
            role: Role,
        }
        let old = rmp_serde::to_vec(&Before {
            fnr: Fnr(20),
            name: "items_full".into(),
            role: Role::Replicate,
        })
        .expect("encode");
        let def: FileDef = rmp_serde::from_slice(&old).expect("an old entry decodes");
        assert_eq!((def.restoring.clone(), def.hold.clone()), (None, None));
        // Written again, it is the same bytes (an older binary reads it).
        assert_eq!(rmp_serde::to_vec(&def).expect("encode"), old);
        let restoring = FileDef {
            restoring: Some("copy set 1".into()),
            ..def.clone()
        };
        let b = rmp_serde::to_vec(&restoring).expect("encode");
        assert_eq!(
            rmp_serde::from_slice::<FileDef>(&b).expect("decode"),
            restoring
        );
        // JSON (reports) takes the same shape.
        let j = serde_json::to_string(&def).expect("json");
        assert_eq!(serde_json::from_str::<FileDef>(&j).expect("json"), def);
        let held = FileDef {
            fnr: Fnr(20),
            name: "items_full".into(),
            role: Role::Replicate,
            restoring: None,
            hold: Some(Hold::new(HoldKind::Shunned, "disk check")),
        };
        let b = rmp_serde::to_vec(&held).expect("encode");
        assert_eq!(rmp_serde::from_slice::<FileDef>(&b).expect("decode"), held);
    }
}
