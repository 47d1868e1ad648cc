//! Copy sets: hot, consistent copies of a database's files taken together
//! by the rules of the anchor product, a catalog of them, verification,
//! restore, regenerate (roll forward with the protection log) and backout
//! (roll back with before-images).
//!
//! - [`area`]: the copy area on disk and its catalog (one JSON file per
//!   set, written only once every member is written, synced and verified);
//!   it lives in the engine ([`propagator::copy::area`]), re-exported here.
//! - [`rules`]: which files must be copied together, and in what order.
//! - [`take`]: taking sets from a database opened here or through a node.
//! - [`restore`]: verify, restore, regenerate, backout; in the engine too
//!   ([`propagator::copy::restore`]), so a node restores a set into its own
//!   database as a recovery step without the binary lending it a closure.
//! - [`archive`]: protection-log segments archived, then pruned.
//! - [`schedule`]: copy jobs run by cron, with retention and a history.
//!
//! The copy files themselves are written by the engine
//! ([`propagator::copy`]), through the same medium seam as its log.

pub mod archive;
pub mod error;
pub mod recover_db;
pub mod rules;
pub mod schedule;
pub mod take;

pub use area::{Area, CopySet, Member};
pub use error::{Error, Within};
pub use propagator::copy::{area, restore};
