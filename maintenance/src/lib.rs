//! Library side of the `etp` utility: what the binary, the benches and the
//! system tests share.
//!
//! - [`cluster`]: a topology of real node processes on loopback.

pub mod cluster;
