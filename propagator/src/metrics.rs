//! Metrics: lock-free counters the engine updates on its hot paths.
//!
//! The group-commit leader updates [`DbMetrics`] with relaxed atomics (one add per
//! group commit, never a lock); [`crate::Database::metrics`] takes a
//! [`DbSnapshot`]. The node's per-replicate metrics, their OpenMetrics
//! text (prometheus-client) and the HTTP endpoint are in
//! [`crate::node::metrics`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the PLOG fsync latency histogram's buckets.
pub const FSYNC_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// A fixed-bucket latency histogram: one atomic per bucket (not cumulative;
/// the snapshot accumulates), the sum in nanoseconds.
pub struct Histogram {
    bounds: &'static [f64],
    /// One per bound, plus the overflow (`+Inf`) bucket.
    counts: Vec<AtomicU64>,
    sum_ns: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(self.bounds.len());
        if let Some(c) = self.counts.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            bounds: self.bounds.to_vec(),
            counts: self
                .counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            sum: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

/// A histogram as read at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSnapshot {
    /// Upper bounds of the finite buckets, ascending.
    pub bounds: Vec<f64>,
    /// Per bucket (not cumulative): one per bound, then the `+Inf` overflow.
    pub counts: Vec<u64>,
    pub sum: f64,
}

impl HistogramSnapshot {
    /// Observations in all buckets.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// What one database counts: updated by whoever leads each group commit.
pub struct DbMetrics {
    pub commits: AtomicU64,
    pub commit_bytes: AtomicU64,
    pub fsync: Histogram,
}

impl Default for DbMetrics {
    fn default() -> Self {
        DbMetrics {
            commits: AtomicU64::new(0),
            commit_bytes: AtomicU64::new(0),
            fsync: Histogram::new(&FSYNC_BUCKETS),
        }
    }
}

impl DbMetrics {
    /// One durable group of `commits` transactions, `bytes` of log entries.
    pub fn committed(&self, commits: u64, bytes: u64) {
        self.commits.fetch_add(commits, Ordering::Relaxed);
        self.commit_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> DbSnapshot {
        DbSnapshot {
            commits: self.commits.load(Ordering::Relaxed),
            commit_bytes: self.commit_bytes.load(Ordering::Relaxed),
            fsync: self.fsync.snapshot(),
        }
    }
}

/// A database's counters since it was opened.
#[derive(Clone, Debug, PartialEq)]
pub struct DbSnapshot {
    /// Transactions made durable.
    pub commits: u64,
    /// Log entry bytes of those transactions.
    pub commit_bytes: u64,
    /// Latency of the group commit's log sync, seconds.
    pub fsync: HistogramSnapshot,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_hold_their_own_counts_and_the_overflow() {
        static B: [f64; 3] = [0.001, 0.01, 0.1];
        let h = Histogram::new(&B);
        h.observe(Duration::from_micros(500)); // le 0.001
        h.observe(Duration::from_millis(1)); // le 0.001 (bounds are inclusive)
        h.observe(Duration::from_millis(5)); // le 0.01
        h.observe(Duration::from_secs(2)); // +Inf only
        let s = h.snapshot();
        assert_eq!(s.counts, vec![2, 1, 0, 1]);
        assert_eq!(s.count(), 4);
        assert!((s.sum - 2.0065).abs() < 1e-9, "{}", s.sum);
    }

    #[test]
    fn a_database_counts_its_commits_and_log_syncs() -> Result<(), Box<dyn std::error::Error>> {
        use crate::{Database, DbId, Fnr, Record, Role, Value};
        let t = tempfile::tempdir()?;
        let dir = t.path().join("db");
        Database::init(&dir, DbId(1), None)?;
        let (db, _) = Database::open(&dir)?;
        db.create_file(Fnr(10), "items", Role::Plain)?;
        let before = db.metrics();
        let mut s = db.session();
        for i in 0..5 {
            let mut r = Record::new();
            r.insert("n".into(), Value::Int(i));
            s.store(Fnr(10), None, r)?;
            s.et(None)?;
        }
        let after = db.metrics();
        assert_eq!(after.commits, before.commits + 5);
        assert!(after.commit_bytes > before.commit_bytes);
        assert!(after.fsync.count() > before.fsync.count());
        assert!(after.fsync.count() <= after.commits, "one sync per group");
        db.close()?;
        Ok(())
    }

    #[test]
    fn db_metrics_count_groups() {
        let m = DbMetrics::default();
        m.committed(3, 300);
        m.committed(1, 10);
        m.fsync.observe(Duration::from_micros(200));
        let s = m.snapshot();
        assert_eq!((s.commits, s.commit_bytes, s.fsync.count()), (4, 310, 1));
    }
}
