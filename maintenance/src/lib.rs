//! Library side of the `etp` utility: what the binary, the benches and the
//! system tests share.
//!
//! - [`cluster`]: a topology of real node processes on loopback.
//! - [`console`]: the operator's pages (`etp console`).
//! - [`journal`]: the durable transaction journal of `etp exec --journal`.
//! - [`recovery`]: the recovery flows, diagnosed and carried out.

pub mod cluster;
pub mod console;
pub mod journal;
pub mod recovery;

/// How a command ended, beyond plain success.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// A check ran and found a problem (exit 1).
    Problem,
}

/// Whether two paths name the same directory (compared resolved, as given
/// when one cannot be resolved).
pub fn same_dir(a: &std::path::Path, b: &std::path::Path) -> bool {
    let resolved =
        |p: &std::path::Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    resolved(a) == resolved(b)
}
