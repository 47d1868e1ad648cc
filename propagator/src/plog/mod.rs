//! The protection log (PLOG): the durable truth of a database.
//!
//! Every committed transaction is one frame in an append-only, segmented
//! log; its `fdatasync` is the durability point of ET. The page store (sled)
//! is only a cache of the log's effect: at start the log is replayed after
//! the page store's applied LSN.
//!
//! - [`format`]: byte layout of segment headers and frames.
//! - [`entry`]: what a frame holds (commits and checkpoints).
//! - [`reader`]: opening segments and scanning frames with every check
//!   (magic, length, CRC, LSN continuity), telling a torn tail apart from
//!   damage in the middle.
//! - [`writer`]: appending frames, syncing, rotating segments.

pub mod entry;
pub mod format;
pub mod reader;
pub mod survey;
pub mod writer;

pub use entry::{Change, Checkpoint, Commit, PlogEntry};
pub use reader::{open_segments, open_segments_readonly, LogScan, ScanFault, Scanned, Segment};
pub use writer::PlogWriter;

use crate::ids::{DbId, Lsn};

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("protection log I/O error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("protection log directory {dir} has no segment")]
    NoSegments { dir: String },
    #[error("protection log segment {path} has a bad header: {reason}")]
    BadHeader { path: String, reason: String },
    #[error("protection log segment {path} belongs to database {found}, not {expected}")]
    WrongDatabase {
        path: String,
        found: DbId,
        expected: DbId,
    },
    #[error("protection log segment {missing} is missing (between {before} and {after})")]
    MissingSegment {
        missing: u64,
        before: String,
        after: String,
    },
    #[error("protection log damaged in segment {segment} ({path}) at offset {offset}: {reason}; the log is intact only before LSN {expected_lsn}")]
    Corrupt {
        path: String,
        segment: u64,
        offset: u64,
        expected_lsn: Lsn,
        reason: String,
    },
    #[error("protection log damaged at its tail in segment {segment} ({path}) at offset {offset}: {reason}; the page store has applied LSN {applied}, so the damaged frame held a committed transaction")]
    TailCommitted {
        path: String,
        segment: u64,
        offset: u64,
        applied: Lsn,
        reason: String,
    },
    #[error(
        "transaction entry of {size} bytes exceeds the frame limit of {} bytes",
        format::MAX_PAYLOAD
    )]
    EntryTooLarge { size: usize },
}

impl LogError {
    pub fn io(path: String, source: std::io::Error) -> LogError {
        LogError::Io { path, source }
    }
}
