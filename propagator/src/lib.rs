//! # propagator — the engine library of `etp`
//!
//! A database (one data directory) holds numbered files of records, a
//! protection log that makes every committed transaction durable, and a page
//! store that holds the current state. Master files write one log record per
//! change into their ETP log file in the same transaction; replication tasks
//! (next layer) stream those log records to replicates.
//!
//! Principal types:
//! - [`Database`]: open, recover, commit (group commit), read, check.
//! - [`Session`]: a client's transaction (store / update / delete / read, ET, BT).
//! - [`plog`]: the protection log — segments, frames, checkpoints.
//! - [`store::PageStore`]: sled, behind one module, never trusted alone.
//! - [`apply::Applier`]: the one function from changes to writes, shared by
//!   the live path and replay.
//! - [`LogRecord`]: what a master's log file holds per change.
//! - [`exec`]: the JSON-lines interface other tools script against.
//!
//! Data flow of one transaction:
//! 1. `Session::store/update/delete` buffer commands (checked as given).
//! 2. `Session::et` resolves them under the state lock into changes,
//!    derived log records and file digests, and queues a log entry.
//! 3. The writer appends the group, `fdatasync`s it, applies it to sled
//!    with the applied LSN in the same batch, and wakes the committers.
//! 4. At open, the log is replayed after sled's applied LSN; digests prove
//!    every file's content; damage names the file and is never used.
//!
//! Invariants: nothing of an uncommitted transaction is ever written; an ET
//! returns only after its entry is durable and applied; a master change and
//! its log record are one entry and one store batch; LSNs and per-master seqs
//! are gap-free. Start reading at [`database`].

pub mod addr;
pub mod apply;
pub mod catalog;
pub mod confirmation;
pub mod copy;
pub mod database;
pub mod digest;
mod divergence;
pub mod error;
pub mod exec;
pub mod framed;
pub mod ids;
pub mod log_record;
pub mod logstore;
pub mod medium;
pub mod metrics;
pub mod net;
pub mod node;
pub mod plog;
pub mod predicate;
pub mod reapply;
pub mod record;
pub mod session;
pub mod slice;
pub mod store;
pub mod topology;
pub mod wire;

pub use catalog::{FileDef, Role};
pub use database::{
    default_engine, CheckReport, CommitInfo, CopyPoint, Database, FileInfo, OpenReport, Options,
    SegmentInfo,
};
pub use digest::{Digest, FileMeta};
pub use error::DbError;
pub use ids::{DbId, Fnr, Isn, Lsn, Seq};
pub use log_record::{LogOp, LogRecord};
pub use predicate::{project, Predicate, PredicateError};
pub use record::{Record, Value};
pub use session::Session;
pub use store::Engine;
