//! The node's metrics (`etp node run --metrics ADDR`): OpenMetrics text
//! written by prometheus-client, served by the project's one HTTP stack
//! ([`crate::net::http`]: axum on hyper), plain on a loopback address, over
//! TLS with client certificates anywhere else.
//!
//! A scrape renders the database's counters ([`crate::metrics`]) and, per
//! replicate fed by this node, what its task reports (`task status`), plus
//! an apply rate computed here from successive confirmed-seq samples.
//!
//! One request a connection: `GET`/`HEAD /metrics` → 200, any other path
//! → 404, another method on `/metrics` → 405 (with `Allow`), a malformed
//! request → 400, a request head over [`MAX_REQUEST_BYTES`] → 431, a head
//! not complete within [`READ_TIMEOUT`] → the connection closed. At most
//! [`MAX_CONNECTIONS`] are served at once (more are closed at once), and a
//! connection lives at most its read, scrape and write deadlines together:
//! a slow client holds nothing for long and no request can stop the node.

use super::Node;
use crate::ids::Lsn;
use crate::metrics::{DbSnapshot, HistogramSnapshot};
use crate::wire::{ReplicaState, TaskReport};
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// The media type of the exposition: OpenMetrics text (what
/// prometheus-client writes; Prometheus asks for it first).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The largest request head (request line and headers) read.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// How long a client may take to send its request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client may take to read the answer.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long rendering the metrics may take before the answer is 503.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(20);
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 16;

/// The apply rate is measured over about this window.
const RATE_WINDOW: Duration = Duration::from_secs(10);
/// A sample is kept at most this often (bounds the samples per replicate).
const RATE_SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// A replicate's key: (master name, replicate name).
pub type ReplicateKey = (String, String);

/// Confirmed-seq samples per replicate: the apply rate's source.
#[derive(Default)]
pub struct Rates {
    samples: Mutex<BTreeMap<ReplicateKey, VecDeque<(Instant, u64)>>>,
}

impl Rates {
    /// Records `seq` for each key at `now` and returns each key's rate in
    /// records per second over about the last [`RATE_WINDOW`] (0 until two
    /// samples lie apart). Keys not given are forgotten; a seq that went
    /// back (the replicate was reloaded) restarts its samples.
    pub fn update(&self, now: Instant, seqs: &[(ReplicateKey, u64)]) -> Vec<f64> {
        let mut all = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|k, _| seqs.iter().any(|(s, _)| s == k));
        seqs.iter()
            .map(|(key, seq)| {
                let q = all.entry(key.clone()).or_default();
                if q.back().is_some_and(|(_, s)| s > seq) {
                    q.clear();
                }
                let due = q
                    .back()
                    .is_none_or(|(t, _)| now.saturating_duration_since(*t) >= RATE_SAMPLE_EVERY);
                if due {
                    q.push_back((now, *seq));
                }
                // Keep as the oldest sample the newest one at least a window old.
                while q.len() > 1
                    && q.get(1)
                        .is_some_and(|(t, _)| now.saturating_duration_since(*t) >= RATE_WINDOW)
                {
                    q.pop_front();
                }
                match q.front() {
                    Some((t0, s0)) => {
                        let dt = now.saturating_duration_since(*t0).as_secs_f64();
                        if dt > 0.0 {
                            seq.saturating_sub(*s0) as f64 / dt
                        } else {
                            0.0
                        }
                    }
                    None => 0.0,
                }
            })
            .collect()
    }
}

/// One replicate's numbers as a scrape renders them.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplicateSample {
    pub master: String,
    pub replicate: String,
    pub state: ReplicaState,
    pub confirmed_seq: u64,
    pub lag_records: u64,
    pub lag_s: f64,
    pub stalled_s: f64,
    pub apply_rate: f64,
    pub gaps: u64,
    /// 1 while it serves no current reads (held), else 0.
    pub held: u64,
    /// Holds released since the node started.
    pub releases: u64,
}

/// One task's master as a scrape renders it.
#[derive(Clone, Debug, PartialEq)]
pub struct MasterSample {
    pub master: String,
    pub seq: u64,
}

/// The samples of the task reports, apply rates measured by `rates`.
pub fn samples(
    reports: &[TaskReport],
    rates: &Rates,
    now: Instant,
) -> (Vec<MasterSample>, Vec<ReplicateSample>) {
    let masters = reports
        .iter()
        .map(|t| MasterSample {
            master: t.master_name.clone(),
            seq: t.master_seq.0,
        })
        .collect();
    let reps: Vec<_> = reports
        .iter()
        .flat_map(|t| t.replicates.iter().map(move |r| (t, r)))
        .collect();
    let keys: Vec<_> = reps
        .iter()
        .map(|(t, r)| ((t.master_name.clone(), r.name.clone()), r.confirmed_seq.0))
        .collect();
    let rate = rates.update(now, &keys);
    let reps = reps
        .iter()
        .zip(rate)
        .map(|((t, r), apply_rate)| ReplicateSample {
            master: t.master_name.clone(),
            replicate: r.name.clone(),
            state: r.state,
            confirmed_seq: r.confirmed_seq.0,
            lag_records: r.lag_records,
            lag_s: r.lag_s,
            stalled_s: r.stalled_s,
            apply_rate,
            gaps: r.gaps.len() as u64,
            held: u64::from(r.held.is_some()),
            releases: r.releases,
        })
        .collect();
    (masters, reps)
}

/// A node's connection counters, as a scrape renders them.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ConnSample {
    pub open: u64,
    pub refused_limit: u64,
    pub refused_handshake: u64,
    pub refused_per_ip: u64,
    pub idle_closed: u64,
    pub not_allowed: u64,
    /// The metrics listener's own: served, and refused at its limit, in
    /// its handshake, over an address's share of handshakes.
    pub metrics_served: u64,
    pub metrics_refused: [u64; 3],
}

/// A label set: (name, value) pairs.
type Labels = Vec<(&'static str, String)>;

/// A sample's value: counts exactly, measures as decimals.
#[derive(Clone, Copy, Debug)]
enum Num {
    U(u64),
    F(f64),
}

/// One family's samples as read at a scrape (the engine keeps its own
/// counters, so a scrape hands prometheus-client values, not live metrics).
#[derive(Debug)]
struct Rows {
    kind: MetricType,
    rows: Vec<(Labels, Num)>,
}

impl EncodeMetric for Rows {
    fn encode(&self, mut e: MetricEncoder) -> std::fmt::Result {
        fn one(e: &mut MetricEncoder, kind: MetricType, v: Num) -> std::fmt::Result {
            match (kind, v) {
                (MetricType::Counter, Num::U(n)) => {
                    e.encode_counter::<NoLabelSet, u64, u64>(&n, None)
                }
                (MetricType::Counter, Num::F(x)) => {
                    e.encode_counter::<NoLabelSet, f64, f64>(&x, None)
                }
                (_, Num::U(n)) => e.encode_gauge(&n),
                (_, Num::F(x)) => e.encode_gauge(&x),
            }
        }
        for (labels, v) in &self.rows {
            if labels.is_empty() {
                one(&mut e, self.kind, *v)?;
            } else {
                let mut f = e.encode_family(labels)?;
                one(&mut f, self.kind, *v)?;
            }
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        self.kind
    }
}

/// A histogram as read at a scrape.
#[derive(Debug)]
struct Hist(HistogramSnapshot);

impl EncodeMetric for Hist {
    fn encode(&self, mut e: MetricEncoder) -> std::fmt::Result {
        let h = &self.0;
        let buckets: Vec<(f64, u64)> = h
            .counts
            .iter()
            .enumerate()
            // The last bucket is the overflow: prometheus-client spells
            // f64::MAX as +Inf.
            .map(|(i, c)| (h.bounds.get(i).copied().unwrap_or(f64::MAX), *c))
            .collect();
        e.encode_histogram::<NoLabelSet>(h.sum, h.count(), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Escapes a label value as the text format wants it: backslash, double
/// quote and line feed.
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

/// HELP text as registered: prometheus-client ends it with a full stop.
fn help_text(help: &str) -> &str {
    help.strip_suffix('.').unwrap_or(help)
}

/// The scrape's families, registered in order, then encoded once.
struct Exposition(Registry);

impl Exposition {
    fn rows(&mut self, name: &str, kind: MetricType, help: &str, rows: Vec<(Labels, Num)>) {
        // prometheus-client writes label values as given: escaped here
        // (a replicate's name is the topology's, any text).
        let rows = rows
            .into_iter()
            .map(|(l, v)| {
                (
                    l.into_iter().map(|(k, x)| (k, escape_label(&x))).collect(),
                    v,
                )
            })
            .collect();
        self.0.register(name, help_text(help), Rows { kind, rows });
    }

    fn gauge(&mut self, name: &str, help: &str, rows: Vec<(Labels, Num)>) {
        self.rows(name, MetricType::Gauge, help, rows);
    }

    /// A counter family: `name` without its `_total`, which the encoding
    /// adds to every sample.
    fn counter(&mut self, name: &str, help: &str, rows: Vec<(Labels, Num)>) {
        self.rows(name, MetricType::Counter, help, rows);
    }

    fn finish(self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.0) {
            tracing::warn!(error = %e, "metrics: encoding failed");
        }
        out
    }
}

/// The whole exposition (OpenMetrics text, [`CONTENT_TYPE`]).
pub fn render(
    db: &DbSnapshot,
    last_lsn: Lsn,
    conns: &ConnSample,
    masters: &[MasterSample],
    reps: &[ReplicateSample],
    copies: &[crate::wire::CopyAge],
) -> String {
    let mut t = Exposition(Registry::default());
    if !copies.is_empty() {
        let key = |c: &crate::wire::CopyAge| -> Labels {
            vec![
                ("database", c.database.to_string()),
                ("file", c.file.to_string()),
                ("role", c.role.clone()),
            ]
        };
        t.gauge(
            "etp_copy_age_seconds",
            "Age of the newest copy set, in this node's copy area, of each master, log and administration file of the topology (absent: none).",
            copies
                .iter()
                .filter_map(|c| c.age_s.map(|a| (key(c), Num::F(a))))
                .collect(),
        );
        t.gauge(
            "etp_copy_alarm",
            "1 when a master, log or administration file has no copy set newer than the node's --copy-alarm-hours.",
            copies
                .iter()
                .map(|c| (key(c), Num::U(u64::from(c.alarm))))
                .collect(),
        );
    }
    t.gauge(
        "etp_connections",
        "Connections the node serves now (past their TLS handshake).",
        vec![(vec![], Num::U(conns.open))],
    );
    t.counter(
        "etp_connections_refused",
        "Connections refused: at the connection limit, over their address's share of handshakes in progress (per_ip), or in their TLS handshake (a bad or missing certificate, or none within the handshake timeout).",
        vec![
            (vec![("reason", "limit".into())], Num::U(conns.refused_limit)),
            (
                vec![("reason", "handshake".into())],
                Num::U(conns.refused_handshake),
            ),
            (vec![("reason", "per_ip".into())], Num::U(conns.refused_per_ip)),
        ],
    );
    t.counter(
        "etp_metrics_connections",
        "Connections the metrics listener served (past their TLS handshake, when it serves TLS).",
        vec![(vec![], Num::U(conns.metrics_served))],
    );
    t.counter(
        "etp_metrics_connections_refused",
        "Connections the metrics listener refused: at its connection limit, in their TLS handshake, or over their address's share of handshakes in progress (per_ip).",
        ["limit", "handshake", "per_ip"]
            .iter()
            .zip(conns.metrics_refused)
            .map(|(r, n)| (vec![("reason", r.to_string())], Num::U(n)))
            .collect(),
    );
    t.counter(
        "etp_connections_idle_closed",
        "Connections closed after the idle timeout with nothing in flight.",
        vec![(vec![], Num::U(conns.idle_closed))],
    );
    t.counter(
        "etp_requests_not_allowed",
        "Requests refused because the peer's certificate does not allow them.",
        vec![(vec![], Num::U(conns.not_allowed))],
    );
    t.counter(
        "etp_commits",
        "Transactions committed (durable) on this database since the node started.",
        vec![(vec![], Num::U(db.commits))],
    );
    t.counter(
        "etp_commit_bytes",
        "Protection log entry bytes of those transactions.",
        vec![(vec![], Num::U(db.commit_bytes))],
    );
    t.0.register(
        "etp_plog_fsync_seconds",
        "Latency of the group commit's protection log sync (fdatasync)",
        Hist(db.fsync.clone()),
    );
    t.gauge(
        "etp_last_lsn",
        "LSN of the last transaction committed on this database.",
        vec![(vec![], Num::U(last_lsn.0))],
    );
    if !masters.is_empty() {
        t.gauge(
            "etp_master_seq",
            "Last log seq of each master this node runs the task of.",
            masters
                .iter()
                .map(|m| (vec![("master", m.master.clone())], Num::U(m.seq)))
                .collect(),
        );
    }
    if reps.is_empty() {
        return t.finish();
    }
    let key = |r: &ReplicateSample| -> Labels {
        vec![
            ("master", r.master.clone()),
            ("replicate", r.replicate.clone()),
        ]
    };
    type Get = fn(&ReplicateSample) -> Num;
    let gauges: [(&str, &str, Get); 7] = [
        (
            "etp_replicate_confirmed_seq",
            "Last master seq the replicate confirmed.",
            |r| Num::U(r.confirmed_seq),
        ),
        (
            "etp_replicate_lag_records",
            "Master log records the replicate has not confirmed.",
            |r| Num::U(r.lag_records),
        ),
        (
            "etp_replicate_lag_seconds",
            "Age of the oldest master change the replicate has not confirmed.",
            |r| Num::F(r.lag_s),
        ),
        (
            "etp_replicate_stalled_seconds",
            "How long the replicate has been behind without confirming anything.",
            |r| Num::F(r.stalled_s),
        ),
        (
            "etp_replicate_apply_rate",
            "Records per second the replicate confirmed over about the last 10 s of scrapes.",
            |r| Num::F(r.apply_rate),
        ),
        (
            "etp_replicate_gaps",
            "Gap records in the replicate's confirm set (ranges it does not hold).",
            |r| Num::U(r.gaps),
        ),
        (
            "etp_replicate_held",
            "1 while the replicate serves no current reads (restored and not caught up, shunned or in error).",
            |r| Num::U(r.held),
        ),
    ];
    for (name, help, get) in gauges {
        t.gauge(name, help, reps.iter().map(|r| (key(r), get(r))).collect());
    }
    t.counter(
        "etp_replicate_releases",
        "Holds released since the node started: the replicate confirmed its master's level and serves current reads again.",
        reps.iter().map(|r| (key(r), Num::U(r.releases))).collect(),
    );
    // One series per state, the replicate's own at 1.
    t.gauge(
        "etp_replicate_state",
        "1 for the replicate's current state, 0 for the others.",
        reps.iter()
            .flat_map(|r| {
                ReplicaState::ALL.iter().map(move |&s| {
                    let mut l = key(r);
                    l.push(("state", s.as_str().to_string()));
                    (l, Num::U(u64::from(r.state == s)))
                })
            })
            .collect(),
    );
    t.finish()
}

impl Node {
    /// This node's metrics in the OpenMetrics text format.
    pub async fn metrics_text(&self) -> String {
        let tasks = self.all_tasks();
        let db = self.db.clone();
        let read = tokio::task::spawn_blocking(move || {
            let reports: Vec<TaskReport> = tasks.iter().map(|t| t.report()).collect();
            (db.metrics(), db.last_lsn(), reports)
        })
        .await;
        let (snap, lsn, reports) = match read {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: reading the task reports failed");
                (self.db.metrics(), Lsn(0), Vec::new())
            }
        };
        let (masters, reps) = samples(&reports, &self.metrics, Instant::now());
        let c = &self.conns;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        let conns = ConnSample {
            open: get(&c.open),
            refused_limit: get(&c.refused_limit),
            refused_handshake: get(&c.refused_handshake),
            refused_per_ip: get(&c.refused_per_ip),
            idle_closed: get(&c.idle_closed),
            not_allowed: get(&c.not_allowed),
            metrics_served: get(&self.metrics_http.served),
            metrics_refused: [
                get(&self.metrics_http.refused_limit),
                get(&self.metrics_http.refused_handshake),
                get(&self.metrics_http.refused_per_ip),
            ],
        };
        let copies = match self.copy_ages().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: reading the copy area failed");
                Vec::new()
            }
        };
        render(&snap, lsn, &conns, &masters, &reps, &copies)
    }
}

/// Binds the metrics listener (port 0: any free port): a loopback
/// address, or any other when the node serves TLS (`tls`), where scrapers
/// present a certificate of the cluster's authority.
pub async fn bind(addr: SocketAddr, tls: bool) -> Result<TcpListener, super::NodeError> {
    if !addr.ip().is_loopback() && !tls {
        return Err(super::NodeError::MetricsNotLoopback { addr });
    }
    TcpListener::bind(addr)
        .await
        .map_err(|source| super::NodeError::MetricsListen { addr, source })
}

/// The metrics listener's bounds: a scraper's one request a connection.
const LIMITS: crate::net::http::Limits = crate::net::http::Limits {
    max_connections: MAX_CONNECTIONS,
    handshake: READ_TIMEOUT,
    head: READ_TIMEOUT,
    head_bytes: MAX_REQUEST_BYTES,
    lifetime: Duration::from_secs(
        READ_TIMEOUT.as_secs() + SCRAPE_TIMEOUT.as_secs() + WRITE_TIMEOUT.as_secs(),
    ),
    keep_alive: false,
};

/// Serves `/metrics` on `listener` until `shutdown` resolves, over the
/// project's one HTTP stack ([`crate::net::http`]): TLS with client
/// certificates when `tls` is given, else plain (loopback only).
pub async fn serve(
    node: Arc<Node>,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use axum::routing::get;
    let counts = node.metrics_http.clone();
    let app = axum::Router::new()
        .route("/metrics", get(scrape))
        .fallback(|| async {
            (
                axum::http::StatusCode::NOT_FOUND,
                "404 Not Found: metrics are at /metrics\n",
            )
        })
        .with_state(node);
    crate::net::http::serve(listener, app, tls, LIMITS, counts, shutdown).await;
}

/// GET (and HEAD) /metrics: the exposition, or 503 when it takes longer
/// than [`SCRAPE_TIMEOUT`].
async fn scrape(
    axum::extract::State(node): axum::extract::State<Arc<Node>>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match tokio::time::timeout(SCRAPE_TIMEOUT, node.metrics_text()).await {
        Ok(body) => ([(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response(),
        Err(_) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "503 Service Unavailable: metrics took too long\n",
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{DbMetrics, FSYNC_BUCKETS};

    #[test]
    fn apply_rate_comes_from_successive_samples() {
        let rates = Rates::default();
        let k = |s: u64| vec![(("m".to_string(), "r".to_string()), s)];
        let t0 = Instant::now();
        assert_eq!(rates.update(t0, &k(100)), vec![0.0]);
        let r = rates.update(t0 + Duration::from_secs(2), &k(300));
        assert!((r[0] - 100.0).abs() < 1e-9, "{r:?}");
        // Samples older than the window stop counting.
        let r = rates.update(t0 + Duration::from_secs(14), &k(300));
        assert!((r[0] - 0.0).abs() < 1e-9, "{r:?}");
        // A reload (seq going back) restarts the measure.
        assert_eq!(rates.update(t0 + Duration::from_secs(15), &k(5)), vec![0.0]);
        // Replicates no longer reported are forgotten.
        rates.update(t0 + Duration::from_secs(16), &[]);
        assert!(rates.samples.lock().map(|m| m.is_empty()).unwrap_or(false));
    }

    #[test]
    fn render_has_every_family_and_one_state_per_replicate() {
        let m = DbMetrics::default();
        m.committed(7, 700);
        m.fsync.observe(Duration::from_millis(3));
        let reps = vec![ReplicateSample {
            master: "orders".into(),
            replicate: "orders \"full\"".into(),
            state: ReplicaState::Online,
            confirmed_seq: 41,
            lag_records: 1,
            lag_s: 0.5,
            stalled_s: 0.0,
            apply_rate: 12.5,
            gaps: 2,
            held: 1,
            releases: 3,
        }];
        let masters = vec![MasterSample {
            master: "orders".into(),
            seq: 42,
        }];
        let text = render(
            &m.snapshot(),
            Lsn(99),
            &ConnSample::default(),
            &masters,
            &reps,
            &[
                crate::wire::CopyAge {
                    database: crate::DbId(1),
                    file: crate::Fnr(10),
                    role: "master".into(),
                    name: Some("orders".into()),
                    newest_set: Some("20261207T000000Z-001".into()),
                    age_s: Some(7200.0),
                    alarm: true,
                },
                crate::wire::CopyAge {
                    database: crate::DbId(1),
                    file: crate::Fnr(255),
                    role: "administration".into(),
                    name: None,
                    newest_set: None,
                    age_s: None,
                    alarm: true,
                },
            ],
        );
        let labels = "master=\"orders\",replicate=\"orders \\\"full\\\"\"";
        for line in [
            "etp_commits_total 7".to_string(),
            "etp_commit_bytes_total 700".into(),
            "etp_plog_fsync_seconds_bucket{le=\"0.0025\"} 0".into(),
            "etp_plog_fsync_seconds_bucket{le=\"0.005\"} 1".into(),
            "etp_plog_fsync_seconds_bucket{le=\"+Inf\"} 1".into(),
            "etp_plog_fsync_seconds_count 1".into(),
            "etp_last_lsn 99".into(),
            "etp_master_seq{master=\"orders\"} 42".into(),
            format!("etp_replicate_confirmed_seq{{{labels}}} 41"),
            format!("etp_replicate_lag_records{{{labels}}} 1"),
            format!("etp_replicate_lag_seconds{{{labels}}} 0.5"),
            format!("etp_replicate_stalled_seconds{{{labels}}} 0.0"),
            format!("etp_replicate_apply_rate{{{labels}}} 12.5"),
            format!("etp_replicate_gaps{{{labels}}} 2"),
            format!("etp_replicate_held{{{labels}}} 1"),
            format!("etp_replicate_releases_total{{{labels}}} 3"),
            format!("etp_replicate_state{{{labels},state=\"online\"}} 1"),
            format!("etp_replicate_state{{{labels},state=\"offline\"}} 0"),
            format!("etp_replicate_state{{{labels},state=\"shunned\"}} 0"),
            "etp_copy_age_seconds{database=\"1\",file=\"10\",role=\"master\"} 7200.0".into(),
            "etp_copy_alarm{database=\"1\",file=\"10\",role=\"master\"} 1".into(),
            "etp_copy_alarm{database=\"1\",file=\"255\",role=\"administration\"} 1".into(),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        let state_ones = text
            .lines()
            .filter(|l| l.starts_with("etp_replicate_state{") && l.ends_with(" 1"))
            .count();
        assert_eq!(state_ones, 1);
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with("etp_plog_fsync_seconds_bucket"))
                .count(),
            FSYNC_BUCKETS.len() + 1
        );
        // OpenMetrics: it ends with EOF; HELP ends with one full stop.
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(!text.contains("..\n"), "{text}");
        assert!(text.contains(
            "# HELP etp_commits Transactions committed (durable) on this database since the node started.\n# TYPE etp_commits counter\n"
        ), "{text}");
        // Every family is declared once, before its samples.
        let types: Vec<_> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
        let mut uniq = types.clone();
        uniq.dedup();
        assert_eq!(types, uniq);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(escape_label("x\ny"), "x\\ny");
        assert_eq!(escape_label("plain-name_1"), "plain-name_1");
    }

    #[test]
    fn state_label_values_are_the_json_names() {
        for &s in ReplicaState::ALL {
            let json = serde_json::to_string(&s).expect("json");
            assert_eq!(json, format!("\"{}\"", s.as_str()));
        }
    }
}
