//! Library side of the `etp` utility: what the binary, the benches and the
//! system tests share.
//!
//! - [`cluster`]: a topology of real node processes on loopback.
//! - [`journal`]: the durable transaction journal of `etp exec --journal`.

pub mod cluster;
pub mod journal;
