//! The node's metrics: Prometheus text (format 0.0.4) served over a small
//! HTTP/1.1 responder on a loopback address (`etp node run --metrics ADDR`).
//!
//! A scrape renders the database's counters ([`crate::metrics`]) and, per
//! replicate fed by this node, what its task reports (`task status`), plus
//! an apply rate computed here from successive confirmed-seq samples.
//!
//! The responder answers one request per connection (`Connection: close`):
//! `GET`/`HEAD /metrics` → 200, any other path → 404, another method on
//! `/metrics` → 405, a malformed request → 400, a request head over
//! [`MAX_REQUEST_BYTES`] → 431, a head not complete within [`READ_TIMEOUT`]
//! → 408. At most [`MAX_CONNECTIONS`] are served at once (more are closed
//! at once); every read and write has a deadline, so a slow client holds
//! nothing for long and no request can stop the node.

use super::Node;
use crate::ids::Lsn;
use crate::metrics::{DbSnapshot, Text, CONTENT_TYPE};
use crate::wire::{ReplicaState, TaskReport};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

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
}

/// The whole exposition text.
pub fn render(
    db: &DbSnapshot,
    last_lsn: Lsn,
    conns: &ConnSample,
    masters: &[MasterSample],
    reps: &[ReplicateSample],
    copies: &[crate::wire::CopyAge],
) -> String {
    let mut t = Text::new();
    if !copies.is_empty() {
        t.family(
            "etp_copy_age_seconds",
            "gauge",
            "Age of the newest copy set, in this node's copy area, of each master, log and administration file of the topology (absent: none).",
        );
        for c in copies {
            if let Some(a) = c.age_s {
                let (db, f) = (c.database.to_string(), c.file.to_string());
                t.sample(
                    "etp_copy_age_seconds",
                    &[
                        ("database", db.as_str()),
                        ("file", f.as_str()),
                        ("role", c.role.as_str()),
                    ],
                    a,
                );
            }
        }
        t.family(
            "etp_copy_alarm",
            "gauge",
            "1 when a master, log or administration file has no copy set newer than the node's --copy-alarm-hours.",
        );
        for c in copies {
            let (db, f) = (c.database.to_string(), c.file.to_string());
            t.sample(
                "etp_copy_alarm",
                &[
                    ("database", db.as_str()),
                    ("file", f.as_str()),
                    ("role", c.role.as_str()),
                ],
                if c.alarm { 1.0 } else { 0.0 },
            );
        }
    }
    t.family(
        "etp_connections",
        "gauge",
        "Connections the node serves now (past their TLS handshake).",
    )
    .sample("etp_connections", &[], conns.open as f64);
    t.family(
        "etp_connections_refused_total",
        "counter",
        "Connections refused: at the connection limit, over their address's share of handshakes in progress (per_ip), or in their TLS handshake (a bad or missing certificate, or none within the handshake timeout).",
    )
    .sample(
        "etp_connections_refused_total",
        &[("reason", "limit")],
        conns.refused_limit as f64,
    )
    .sample(
        "etp_connections_refused_total",
        &[("reason", "handshake")],
        conns.refused_handshake as f64,
    )
    .sample(
        "etp_connections_refused_total",
        &[("reason", "per_ip")],
        conns.refused_per_ip as f64,
    );
    t.family(
        "etp_connections_idle_closed_total",
        "counter",
        "Connections closed after the idle timeout with nothing in flight.",
    )
    .sample(
        "etp_connections_idle_closed_total",
        &[],
        conns.idle_closed as f64,
    );
    t.family(
        "etp_requests_not_allowed_total",
        "counter",
        "Requests refused because the peer's certificate does not allow them.",
    )
    .sample(
        "etp_requests_not_allowed_total",
        &[],
        conns.not_allowed as f64,
    );
    t.family(
        "etp_commits_total",
        "counter",
        "Transactions committed (durable) on this database since the node started.",
    )
    .sample("etp_commits_total", &[], db.commits as f64);
    t.family(
        "etp_commit_bytes_total",
        "counter",
        "Protection log entry bytes of those transactions.",
    )
    .sample("etp_commit_bytes_total", &[], db.commit_bytes as f64);
    t.family(
        "etp_plog_fsync_seconds",
        "histogram",
        "Latency of the group commit's protection log sync (fdatasync).",
    )
    .histogram("etp_plog_fsync_seconds", &[], &db.fsync);
    t.family(
        "etp_last_lsn",
        "gauge",
        "LSN of the last transaction committed on this database.",
    )
    .sample("etp_last_lsn", &[], last_lsn.0 as f64);
    if !masters.is_empty() {
        t.family(
            "etp_master_seq",
            "gauge",
            "Last log seq of each master this node runs the task of.",
        );
        for m in masters {
            t.sample("etp_master_seq", &[("master", &m.master)], m.seq as f64);
        }
    }
    if reps.is_empty() {
        return t.finish();
    }
    type Get = fn(&ReplicateSample) -> f64;
    let gauges: [(&str, &str, Get); 7] = [
        (
            "etp_replicate_confirmed_seq",
            "Last master seq the replicate confirmed.",
            |r| r.confirmed_seq as f64,
        ),
        (
            "etp_replicate_lag_records",
            "Master log records the replicate has not confirmed.",
            |r| r.lag_records as f64,
        ),
        (
            "etp_replicate_lag_seconds",
            "Age of the oldest master change the replicate has not confirmed.",
            |r| r.lag_s,
        ),
        (
            "etp_replicate_stalled_seconds",
            "How long the replicate has been behind without confirming anything.",
            |r| r.stalled_s,
        ),
        (
            "etp_replicate_apply_rate",
            "Records per second the replicate confirmed over about the last 10 s of scrapes.",
            |r| r.apply_rate,
        ),
        (
            "etp_replicate_gaps",
            "Gap records in the replicate's confirm set (ranges it does not hold).",
            |r| r.gaps as f64,
        ),
        (
            "etp_replicate_held",
            "1 while the replicate serves no current reads (restored and not caught up, shunned or in error).",
            |r| r.held as f64,
        ),
    ];
    for (name, help, get) in gauges {
        t.family(name, "gauge", help);
        for r in reps {
            t.sample(
                name,
                &[("master", &r.master), ("replicate", &r.replicate)],
                get(r),
            );
        }
    }
    t.family(
        "etp_replicate_releases_total",
        "counter",
        "Holds released since the node started: the replicate confirmed its master's level and serves current reads again.",
    );
    for r in reps {
        t.sample(
            "etp_replicate_releases_total",
            &[("master", &r.master), ("replicate", &r.replicate)],
            r.releases as f64,
        );
    }
    t.family(
        "etp_replicate_state",
        "gauge",
        "1 for the replicate's current state, 0 for the others.",
    );
    for r in reps {
        // One series per state, the replicate's own at 1.
        for &s in ReplicaState::ALL {
            let v = if r.state == s { 1.0 } else { 0.0 };
            t.sample(
                "etp_replicate_state",
                &[
                    ("master", &r.master),
                    ("replicate", &r.replicate),
                    ("state", s.as_str()),
                ],
                v,
            );
        }
    }
    t.finish()
}

impl Node {
    /// This node's metrics in the Prometheus text format (0.0.4).
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

/// Binds the metrics listener: loopback addresses only (port 0: any free port).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, super::NodeError> {
    if !addr.ip().is_loopback() {
        return Err(super::NodeError::MetricsNotLoopback { addr });
    }
    TcpListener::bind(addr)
        .await
        .map_err(|source| super::NodeError::MetricsListen { addr, source })
}

/// Serves metrics on `listener` until `shutdown` resolves.
pub async fn serve(
    node: Arc<Node>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            acc = listener.accept() => match acc {
                Ok((stream, peer)) => match slots.clone().try_acquire_owned() {
                    Ok(slot) => {
                        let node = node.clone();
                        tokio::spawn(async move {
                            connection(&node, stream).await;
                            drop(slot);
                        });
                    }
                    Err(_) => {
                        tracing::warn!(%peer, "metrics: too many connections; closing one");
                        drop(stream);
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// What a request asks for.
#[derive(Debug, PartialEq)]
pub enum Route {
    /// The metrics; `head`: headers only.
    Metrics {
        head: bool,
    },
    NotFound,
    MethodNotAllowed,
}

/// Parses a request head (request line and headers, without the body):
/// the route, or why the request is malformed.
pub fn parse_request(head: &[u8]) -> Result<Route, &'static str> {
    let text = std::str::from_utf8(head).map_err(|_| "request head is not UTF-8")?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let line = lines.next().ok_or("empty request")?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("request line is not METHOD TARGET VERSION");
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err("bad method");
    }
    if !target.starts_with('/') || target.bytes().any(|b| b.is_ascii_control()) {
        return Err("bad request target");
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err("not HTTP/1.0 or HTTP/1.1");
    }
    for h in lines.take_while(|l| !l.is_empty()) {
        let Some((name, _)) = h.split_once(':') else {
            return Err("header line without a colon");
        };
        if name.is_empty() || name.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err("bad header name");
        }
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    if path != "/metrics" {
        return Ok(Route::NotFound);
    }
    match method {
        "GET" => Ok(Route::Metrics { head: false }),
        "HEAD" => Ok(Route::Metrics { head: true }),
        _ => Ok(Route::MethodNotAllowed),
    }
}

/// The end of the request head in `buf`, if it is complete.
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

enum Head {
    Complete(Vec<u8>),
    /// The client closed before sending anything.
    Closed,
    /// The client closed mid-head.
    Truncated,
    TooLarge,
}

async fn read_head(stream: &mut TcpStream) -> std::io::Result<Head> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(if buf.is_empty() {
                Head::Closed
            } else {
                Head::Truncated
            });
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = head_end(&buf) {
            buf.truncate(end);
            return Ok(Head::Complete(buf));
        }
        if buf.len() > MAX_REQUEST_BYTES {
            return Ok(Head::TooLarge);
        }
    }
}

/// An answer: status, extra headers, body, and whether to send the body.
struct Reply {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    extra: &'static str,
    body: String,
    head_only: bool,
}

impl Reply {
    fn error(status: u16, reason: &'static str, detail: &str) -> Reply {
        Reply {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            extra: "",
            body: format!("{status} {reason}: {detail}\n"),
            head_only: false,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{}Connection: close\r\n\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len(),
            self.extra
        )
        .into_bytes();
        if !self.head_only {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

async fn connection(node: &Node, mut stream: TcpStream) {
    let reply = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Err(_) => Reply::error(408, "Request Timeout", "request head not received in time"),
        Ok(Err(_) | Ok(Head::Closed)) => return,
        Ok(Ok(Head::Truncated)) => Reply::error(400, "Bad Request", "incomplete request head"),
        Ok(Ok(Head::TooLarge)) => Reply::error(
            431,
            "Request Header Fields Too Large",
            "request head over 8 KiB",
        ),
        Ok(Ok(Head::Complete(head))) => match parse_request(&head) {
            Err(why) => Reply::error(400, "Bad Request", why),
            Ok(Route::NotFound) => Reply::error(404, "Not Found", "metrics are at /metrics"),
            Ok(Route::MethodNotAllowed) => Reply {
                extra: "Allow: GET, HEAD\r\n",
                ..Reply::error(405, "Method Not Allowed", "use GET")
            },
            Ok(Route::Metrics { head }) => {
                match tokio::time::timeout(SCRAPE_TIMEOUT, node.metrics_text()).await {
                    Ok(body) => Reply {
                        status: 200,
                        reason: "OK",
                        content_type: CONTENT_TYPE,
                        extra: "",
                        body,
                        head_only: head,
                    },
                    Err(_) => Reply::error(503, "Service Unavailable", "metrics took too long"),
                }
            }
        },
    };
    let bytes = reply.bytes();
    let sent = tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    })
    .await;
    if !matches!(sent, Ok(Ok(()))) {
        return;
    }
    // Read what the client still sends (briefly, boundedly) before closing,
    // so unread input does not reset the connection under the answer.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let mut chunk = [0u8; 4096];
        let mut left = 64 * 1024usize;
        while left > 0 {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{DbMetrics, FSYNC_BUCKETS};

    #[test]
    fn requests_route_or_are_refused() {
        let ok = |s: &str| parse_request(s.as_bytes());
        assert_eq!(
            ok("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Ok(Route::Metrics { head: false })
        );
        assert_eq!(
            ok("HEAD /metrics?x=1 HTTP/1.0\n\n"),
            Ok(Route::Metrics { head: true })
        );
        assert_eq!(ok("GET / HTTP/1.1\r\n\r\n"), Ok(Route::NotFound));
        assert_eq!(ok("POST /other HTTP/1.1\r\n\r\n"), Ok(Route::NotFound));
        assert_eq!(
            ok("POST /metrics HTTP/1.1\r\n\r\n"),
            Ok(Route::MethodNotAllowed)
        );
        for bad in [
            "",
            "GET\r\n\r\n",
            "GET /metrics\r\n\r\n",
            "GET /metrics HTTP/1.1 extra\r\n\r\n",
            "get /metrics HTTP/1.1\r\n\r\n",
            "GET metrics HTTP/1.1\r\n\r\n",
            "GET /metrics HTTP/2.0\r\n\r\n",
            "GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n",
            "GET /metrics HTTP/1.1\r\n: empty name\r\n\r\n",
            "\u{1}\u{2}garbage\r\n\r\n",
        ] {
            assert!(ok(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(parse_request(b"GET /metrics HTTP/1.1\r\nX: \xff\r\n\r\n").is_err());
    }

    #[test]
    fn head_ends_at_the_first_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\nbody"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
    }

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
            format!("etp_replicate_stalled_seconds{{{labels}}} 0"),
            format!("etp_replicate_apply_rate{{{labels}}} 12.5"),
            format!("etp_replicate_gaps{{{labels}}} 2"),
            format!("etp_replicate_held{{{labels}}} 1"),
            format!("etp_replicate_releases_total{{{labels}}} 3"),
            format!("etp_replicate_state{{{labels},state=\"online\"}} 1"),
            format!("etp_replicate_state{{{labels},state=\"offline\"}} 0"),
            format!("etp_replicate_state{{{labels},state=\"shunned\"}} 0"),
            "etp_copy_age_seconds{database=\"1\",file=\"10\",role=\"master\"} 7200".into(),
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
        // Every family is declared once, before its samples.
        let types: Vec<_> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
        let mut uniq = types.clone();
        uniq.dedup();
        assert_eq!(types, uniq);
    }

    #[test]
    fn state_label_values_are_the_json_names() {
        for &s in ReplicaState::ALL {
            let json = serde_json::to_string(&s).expect("json");
            assert_eq!(json, format!("\"{}\"", s.as_str()));
        }
    }
}
