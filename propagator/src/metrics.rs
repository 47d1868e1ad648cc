//! Metrics: lock-free counters the engine updates on its hot paths, and the
//! Prometheus text exposition format (0.0.4) they are served in.
//!
//! The group-commit leader updates [`DbMetrics`] with relaxed atomics (one add per
//! group commit, never a lock); [`crate::Database::metrics`] takes a
//! [`DbSnapshot`]. [`Text`] renders families with escaped label values,
//! cumulative histogram buckets, `+Inf`, `_sum` and `_count`. The node's
//! per-replicate metrics and the HTTP responder are in
//! [`crate::node::metrics`].

use std::fmt::Write as _;
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

/// Escapes a label value: backslash, double quote and line feed.
pub fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// Escapes HELP text: backslash and line feed.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A sample value as the format spells it (`+Inf`, `-Inf`, `NaN`).
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

/// Prometheus text (format 0.0.4) under construction. Each family is
/// written once, with its HELP and TYPE lines, then its samples.
#[derive(Default)]
pub struct Text {
    out: String,
}

/// The media type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

impl Text {
    pub fn new() -> Text {
        Text::default()
    }

    /// Starts a family: `kind` is counter, gauge or histogram.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) -> &mut Self {
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        self
    }

    /// One sample line: `name{labels} value`.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: f64) -> &mut Self {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(val));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", format_value(v));
        self
    }

    /// A histogram's samples: cumulative `_bucket`s ending with `+Inf`,
    /// `_sum` and `_count` (the family line is the caller's).
    pub fn histogram(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        h: &HistogramSnapshot,
    ) -> &mut Self {
        let bucket = format!("{name}_bucket");
        let mut cum = 0u64;
        for (i, c) in h.counts.iter().enumerate() {
            cum += c;
            let le = h
                .bounds
                .get(i)
                .map_or_else(|| "+Inf".to_string(), |b| format_value(*b));
            let mut ls = labels.to_vec();
            ls.push(("le", &le));
            self.sample(&bucket, &ls, cum as f64);
        }
        self.sample(&format!("{name}_sum"), labels, h.sum);
        self.sample(&format!("{name}_count"), labels, h.count() as f64);
        self
    }

    pub fn finish(self) -> String {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(escape_label("x\ny"), "x\\ny");
        let mut t = Text::new();
        t.family("m", "gauge", "line\\one\nline two").sample(
            "m",
            &[("replicate", "q\"\\\n"), ("master", "p")],
            1.0,
        );
        assert_eq!(
            t.finish(),
            "# HELP m line\\\\one\\nline two\n# TYPE m gauge\nm{replicate=\"q\\\"\\\\\\n\",master=\"p\"} 1\n"
        );
    }

    #[test]
    fn values_use_the_format_spelling() {
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(0.25), "0.25");
        assert_eq!(format_value(42.0), "42");
        assert_eq!(format_value(0.0001), "0.0001");
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_at_inf() {
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
        let mut t = Text::new();
        t.family("lat_seconds", "histogram", "latency").histogram(
            "lat_seconds",
            &[("db", "1")],
            &s,
        );
        let text = t.finish();
        let want = "\
# HELP lat_seconds latency
# TYPE lat_seconds histogram
lat_seconds_bucket{db=\"1\",le=\"0.001\"} 2
lat_seconds_bucket{db=\"1\",le=\"0.01\"} 3
lat_seconds_bucket{db=\"1\",le=\"0.1\"} 3
lat_seconds_bucket{db=\"1\",le=\"+Inf\"} 4
lat_seconds_sum{db=\"1\"} 2.0065
lat_seconds_count{db=\"1\"} 4
";
        assert_eq!(text, want);
    }

    #[test]
    fn empty_histogram_renders_zeros() {
        let s = Histogram::new(&FSYNC_BUCKETS).snapshot();
        let mut t = Text::new();
        t.histogram("f", &[], &s);
        let text = t.finish();
        assert_eq!(text.lines().count(), FSYNC_BUCKETS.len() + 3);
        assert!(text.contains("f_bucket{le=\"+Inf\"} 0\n"));
        assert!(text.ends_with("f_sum 0\nf_count 0\n"));
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
