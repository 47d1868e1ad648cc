//! Metrics: `etp node run --metrics ADDR` on a real three-node cluster,
//! scraped over real TCP; malformed and slow clients do not stop it.

use etp_system_tests::{etp, etp_bin, wait_for};
use maintenance::cluster::{topology_text, Cluster, MASTER};
use propagator::exec::ExecTarget;
use propagator::{Record, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

const CONVERGE: Duration = Duration::from_secs(90);
const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// Sends `request` as is and returns the whole answer (the server closes).
fn raw(addr: SocketAddr, request: &[u8]) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.write_all(request)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// GET /metrics: the body of a 200 answer.
pub(crate) fn scrape(addr: SocketAddr) -> anyhow::Result<String> {
    let answer = raw(addr, b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no head end in {answer:?}"))?;
    anyhow::ensure!(head.starts_with("HTTP/1.1 200 "), "answer {head:?}");
    anyhow::ensure!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0"),
        "content type in {head:?}"
    );
    Ok(body.to_string())
}

/// The value of one series (`name` or `name{labels}`) in a scrape.
pub(crate) fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

fn rep(name: &str) -> String {
    format!("{{master=\"items\",replicate=\"{name}\"}}")
}

fn item(id: i64) -> Record {
    let mut r = Record::new();
    r.insert("id".into(), Value::Int(id));
    r.insert("grp".into(), Value::Int(id % 5));
    r.insert("qty".into(), Value::Int(id % 7));
    r.insert("note".into(), Value::Text(format!("m{id}")));
    r
}

#[test]
fn metrics_report_commits_fsyncs_and_replicates_and_survive_bad_clients() {
    let t = tempfile::tempdir().expect("tempdir");
    let cl = Cluster::start_with_args(etp_bin(), t.path(), &["--metrics", "127.0.0.1:0"], |a| {
        topology_text(a, Some(1))
    })
    .expect("cluster");
    let m = cl
        .master()
        .metrics
        .expect("the master printed its metrics address");
    assert!(m.ip().is_loopback() && m.port() != 0, "{m}");
    let before = scrape(m).expect("first scrape");
    let commits_before = value(&before, "etp_commits_total").expect("etp_commits_total");

    let mut c = cl.master().client().expect("client");
    for id in 1..=30 {
        c.store(MASTER, None, item(id)).expect("store");
        c.et(None).expect("et");
    }
    let (seq, _) = cl.wait_converged(CONVERGE).expect("converged");
    assert!(seq.0 >= 30, "master seq {seq}");

    // The feeders report what they confirmed; the scrape follows.
    let text = wait_for(
        "metrics to show both replicates online at the master seq",
        CONVERGE,
        || {
            let text = scrape(m).ok()?;
            let done = ["items_full", "items_part"].iter().all(|r| {
                let labels = rep(r);
                value(&text, &format!("etp_replicate_confirmed_seq{labels}")) == Some(seq.0 as f64)
                    && value(
                        &text,
                        &format!(
                            "etp_replicate_state{}",
                            labels.replace('}', ",state=\"online\"}")
                        ),
                    ) == Some(1.0)
            });
            done.then_some(text)
        },
    );
    let commits = value(&text, "etp_commits_total").expect("commits");
    assert!(
        commits >= commits_before + 30.0,
        "{commits_before} → {commits}"
    );
    assert!(value(&text, "etp_commit_bytes_total").is_some_and(|b| b > 0.0));
    let fsyncs = value(&text, "etp_plog_fsync_seconds_count").expect("fsync count");
    assert!(fsyncs > 0.0, "fsync count {fsyncs}");
    assert_eq!(
        value(&text, "etp_plog_fsync_seconds_bucket{le=\"+Inf\"}"),
        Some(fsyncs),
        "the +Inf bucket holds every observation"
    );
    assert!(value(&text, "etp_last_lsn").is_some_and(|l| l >= 30.0));
    assert_eq!(
        value(&text, "etp_master_seq{master=\"items\"}"),
        Some(seq.0 as f64)
    );
    for r in ["items_full", "items_part"] {
        let labels = rep(r);
        assert_eq!(
            value(&text, &format!("etp_replicate_lag_records{labels}")),
            Some(0.0)
        );
        assert_eq!(
            value(&text, &format!("etp_replicate_gaps{labels}")),
            Some(0.0)
        );
        for series in ["lag_seconds", "stalled_seconds", "apply_rate"] {
            let v = value(&text, &format!("etp_replicate_{series}{labels}"));
            assert!(v.is_some_and(|v| v >= 0.0), "{series} of {r}: {v:?}");
        }
        let ones = text
            .lines()
            .filter(|l| {
                l.starts_with(&format!(
                    "etp_replicate_state{}",
                    &labels[..labels.len() - 1]
                ))
            })
            .filter(|l| l.ends_with(" 1"))
            .count();
        assert_eq!(ones, 1, "{r} is in exactly one state");
    }
    // A replicate's node counts the commits that applied the changes.
    let full = cl.nodes[1].metrics.expect("replicate node metrics");
    let full_text = scrape(full).expect("replicate scrape");
    assert!(value(&full_text, "etp_commits_total").is_some_and(|c| c > 0.0));

    // Bad clients: answered, and the node keeps serving.
    let slow = TcpStream::connect(m).expect("slow client connects"); // sends nothing
    for (req, want) in [
        (&b"\x01\x02 garbage\r\n\r\n"[..], "HTTP/1.1 400 "),
        (b"GET /metrics HTTP/9\r\n\r\n", "HTTP/1.1 400 "),
        (
            b"GET /metrics HTTP/1.1\r\nno colon\r\n\r\n",
            "HTTP/1.1 400 ",
        ),
        (b"GET /nothing HTTP/1.1\r\n\r\n", "HTTP/1.1 404 "),
        (b"DELETE /metrics HTTP/1.1\r\n\r\n", "HTTP/1.1 405 "),
    ] {
        let answer = raw(m, req).expect("answered");
        assert!(answer.starts_with(want), "{req:?}: {answer:?}");
    }
    let mut huge = b"GET /metrics HTTP/1.1\r\nX-Pad: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 64 * 1024));
    let answer = raw(m, &huge).unwrap_or_default();
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431 "),
        "oversized head: {answer:?}"
    );
    // Cut off mid-head: the connection is closed once the client closes
    // its side (hyper answers nothing to half a request).
    {
        let mut s = TcpStream::connect(m).expect("connect");
        s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        s.write_all(b"GET /metr").expect("write");
        s.shutdown(std::net::Shutdown::Write).expect("half close");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(
            out.is_empty() || out.starts_with("HTTP/1.1 400 "),
            "{out:?}"
        );
    }
    let again = scrape(m).expect("still serving metrics while a slow client waits");
    assert!(value(&again, "etp_commits_total").is_some_and(|c| c >= commits));
    // The metrics listener counts its own connections (the bad ones too).
    assert!(
        value(&again, "etp_metrics_connections_total").is_some_and(|c| c >= 8.0),
        "{again}"
    );
    assert_eq!(
        value(
            &again,
            "etp_metrics_connections_refused_total{reason=\"limit\"}"
        ),
        Some(0.0),
        "{again}"
    );
    // The slow client is closed at the head deadline (5 s), not held
    // forever: its read ends (the server closed), well before our own
    // 20 s read timeout would have.
    {
        let mut slow = slow;
        slow.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        let mut out = String::new();
        let ended = slow.read_to_string(&mut out);
        assert!(ended.is_ok(), "the server held the slow client: {ended:?}");
        assert!(
            out.is_empty() || out.starts_with("HTTP/1.1 408 "),
            "{out:?}"
        );
    }
    cl.task_status()
        .expect("the node still answers its clients");
}

#[test]
fn metrics_refuse_a_non_loopback_address_without_certificates() {
    let t = tempfile::tempdir().expect("tempdir");
    let data = t.path().join("db");
    let data = data.to_str().expect("utf-8 path");
    let init = etp(&["db", "init", "--dbid", "1", "--data", data]);
    assert!(init.status.success(), "{init:?}");
    let out = etp_system_tests::etp_command()
        .env_remove("ETP_CERTS")
        .env_remove("ETP_CA")
        .env_remove("ETP_CERT")
        .env_remove("ETP_KEY")
        .args([
            "node",
            "run",
            "--insecure-loopback",
            "--data",
            data,
            "--listen",
            "127.0.0.1:0",
            "--metrics",
            "0.0.0.0:0",
        ])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a loopback address") && err.contains("TLS with client certificates"),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "nothing served: {:?}", out.stdout);
}

/// Metrics over TLS (`--metrics-tls`; always so off loopback): a scraper
/// with a certificate of the cluster's authority gets them, one without
/// gets nothing.
#[test]
fn metrics_over_tls_need_a_certificate_of_the_authority() {
    let t = tempfile::tempdir().expect("tempdir");
    let cl = Cluster::start_with_args(
        etp_bin(),
        t.path(),
        &["--metrics", "127.0.0.1:0", "--metrics-tls"],
        |a| topology_text(a, Some(1)),
    )
    .expect("cluster");
    let m = cl.nodes[0].metrics.expect("metrics address");
    let get = "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let (code, body) =
        etp_system_tests::https_exchange(m, propagator::net::NODE_SERVER_NAME, Some("reader"), get)
            .expect("an answer");
    assert_eq!(code, 200, "{body}");
    assert!(value(&body, "etp_last_lsn").is_some(), "{body}");
    assert_eq!(
        etp_system_tests::https_exchange(m, propagator::net::NODE_SERVER_NAME, None, get),
        None
    );
    // Plain HTTP is not answered.
    let plain = raw(m, get.as_bytes()).unwrap_or_default();
    assert!(!plain.contains("etp_last_lsn"), "{plain}");
}
