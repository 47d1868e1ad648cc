//! Errors of the database layer. Each variant carries what an operator or a
//! caller needs to act on it; `Display` texts read as sentences.

use crate::catalog::Role;
use crate::ids::{Fnr, Isn, Lsn, Seq};
use crate::plog::LogError;
use crate::record::RecordError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("database directory {dir}: {reason}")]
    Directory { dir: String, reason: String },
    #[error("database {dir} is in use by another process")]
    InUse { dir: String },
    #[error("file {0} does not exist")]
    UnknownFile(Fnr),
    #[error("file {fnr} already exists (named {name:?})")]
    FileExists { fnr: Fnr, name: String },
    #[error("invalid file definition: {0}")]
    BadDefinition(String),
    #[error("file {fnr} is damaged: {reason}")]
    FileDamaged { fnr: Fnr, reason: String },
    #[error("file {fnr} is a {} file; only the engine writes it", role.name())]
    ReadOnlyFile { fnr: Fnr, role: Role },
    #[error("record {isn} already exists in file {fnr}")]
    RecordExists { fnr: Fnr, isn: Isn },
    #[error("record {isn} does not exist in file {fnr}")]
    RecordMissing { fnr: Fnr, isn: Isn },
    #[error("invalid isn 0 in file {0}: isns start at 1")]
    ZeroIsn(Fnr),
    #[error("isn {isn} in file {fnr} is above {max} (2^62), the largest a store may name: the isns above are the engine's to hand out")]
    IsnTooLarge { fnr: Fnr, isn: Isn, max: u64 },
    #[error("record for file {fnr}: {source}")]
    BadRecord {
        fnr: Fnr,
        #[source]
        source: RecordError,
    },
    #[error("file {fnr} has no field {field:?}: its declared fields are {} (declare the field in the topology's fields of this master, or set extra_fields = \"allow\" there)", declared.join(", "))]
    UndeclaredField {
        fnr: Fnr,
        field: String,
        declared: Vec<String>,
    },
    #[error("transaction id {id:?} was already committed at LSN {lsn}")]
    AlreadyCommitted { id: String, lsn: Lsn },
    #[error("transaction id must be 1 to 128 bytes, got {0} bytes")]
    BadClientId(usize),
    #[error(
        "the transaction was aborted by an earlier error ({0}); back it out (BT) and start again"
    )]
    Aborted(String),
    #[error("transaction too large: {0}")]
    TooLarge(String),
    #[error("page store disagrees with the protection log at LSN {lsn}: record {isn} of file {fnr} is not the logged before-image")]
    BeforeImageMismatch { fnr: Fnr, isn: Isn, lsn: Lsn },
    #[error("page store has applied LSN {applied} but the protection log ends at LSN {log_end}: the log lost committed transactions")]
    StoreAheadOfLog { applied: Lsn, log_end: Lsn },
    #[error("page store has applied LSN {applied} but the protection log starts after LSN {oldest}: the store is older than the log can bring forward")]
    StoreBehindLog { applied: Lsn, oldest: Lsn },
    #[error("log file {fnr}'s store ({dir}) holds it as of LSN {applied}{}, but the protection log starts after LSN {oldest}: it cannot be rebuilt (restore the log file from a copy set)", fault.as_ref().map(|f| format!(" ({f})")).unwrap_or_default())]
    LogStoreBehindLog {
        fnr: Fnr,
        dir: String,
        applied: Lsn,
        oldest: Lsn,
        fault: Option<String>,
    },
    #[error("the database stopped accepting commits after a failed write or sync ({0}); reopen it to recover")]
    Poisoned(String),
    /// A queued commit whose log write or sync failed: it may or may not
    /// be durable (its bytes may have reached the disk). Nothing serves it
    /// meanwhile; the next open decides by what the log holds.
    #[error("the log write or sync of this commit failed ({0}): whether it is durable is not known; the database stopped accepting commits (reopen it to recover, then retry under the same transaction id)")]
    OutcomeUnknown(String),
    #[error("the database is closed")]
    Closed,
    #[error("replicate file {fnr} has diverged from its master at record {isn}: {reason}")]
    ReplicateDiverged { fnr: Fnr, isn: Isn, reason: String },
    #[error("replicated batch out of sequence for replicate file {fnr}: it follows seq {expected}, but the replicate has confirmed seq {confirmed}")]
    OutOfSequence {
        fnr: Fnr,
        expected: Seq,
        confirmed: Seq,
    },
    #[error("confirmation file {fnr}: a load ({id}) is in progress; replicated batches wait until it ends")]
    LoadInProgress { fnr: Fnr, id: String },
    #[error("loaded chunk out of sequence in confirmation file {fnr}: it continues load {id} at isn {next}, but the replicate holds {found}")]
    LoadOutOfSequence {
        fnr: Fnr,
        id: String,
        next: u64,
        found: String,
    },
}

impl DbError {
    /// The wire code a peer decides on.
    pub fn code(&self) -> crate::wire::ErrorCode {
        use crate::wire::ErrorCode as C;
        match self {
            DbError::AlreadyCommitted { lsn, .. } => C::AlreadyCommitted { lsn: *lsn },
            DbError::OutOfSequence { .. } => C::OutOfSequence,
            DbError::LoadOutOfSequence { .. } => C::LoadOutOfSequence,
            DbError::LoadInProgress { .. } => C::LoadInProgress,
            DbError::ReplicateDiverged { .. } => C::Diverged,
            DbError::FileDamaged { .. } | DbError::BeforeImageMismatch { .. } => C::Damaged,
            DbError::Poisoned(_) | DbError::Closed => C::Unavailable,
            DbError::OutcomeUnknown(_) => C::OutcomeUnknown,
            e if e.is_request_error() => C::BadRequest,
            _ => C::Other,
        }
    }

    /// True for errors that say nothing was committed and nothing is damaged:
    /// the caller's own request was wrong.
    pub fn is_request_error(&self) -> bool {
        matches!(
            self,
            DbError::UnknownFile(_)
                | DbError::FileExists { .. }
                | DbError::BadDefinition(_)
                | DbError::ReadOnlyFile { .. }
                | DbError::RecordExists { .. }
                | DbError::RecordMissing { .. }
                | DbError::ZeroIsn(_)
                | DbError::IsnTooLarge { .. }
                | DbError::BadRecord { .. }
                | DbError::UndeclaredField { .. }
                | DbError::AlreadyCommitted { .. }
                | DbError::BadClientId(_)
                | DbError::Aborted(_)
                | DbError::TooLarge(_)
        )
    }
}
