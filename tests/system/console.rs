//! The operator console (`etp console`) as a real process against real
//! nodes, read over HTTP/1.1 the way a browser asks.

use etp_system_tests::{etp_command, wait_for, KillGuard};
use maintenance::cluster::Cluster;
use propagator::exec::ExecTarget;
use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

/// `etp console --node NODE --listen 127.0.0.1:0`, and the address it
/// printed.
fn start_console(node: SocketAddr, log: &std::path::Path) -> (KillGuard, SocketAddr) {
    let err = std::fs::File::create(log).expect("console log");
    let mut child = etp_command()
        .args([
            "console",
            "--node",
            &node.to_string(),
            "--listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(err)
        .spawn()
        .expect("starting etp console");
    let stdout = child.stdout.take().expect("stdout");
    let guard = KillGuard(child);
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .expect("the console's first line");
    let addr = line
        .trim()
        .strip_prefix("console listening on http://")
        .and_then(|a| a.strip_suffix('/'))
        .unwrap_or_else(|| {
            panic!(
                "console did not start: {line:?} {}",
                std::fs::read_to_string(log).unwrap_or_default()
            )
        })
        .parse()
        .expect("an address");
    (guard, addr)
}

/// One HTTP/1.1 request: the status code and the body.
fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the console");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .expect("send");
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read");
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, body.to_string())
}

#[test]
fn the_cluster_page_shows_every_database_master_and_replicate_and_a_stopped_node_at_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cl = Cluster::start(etp_system_tests::etp_bin(), tmp.path(), Some(1)).expect("cluster");
    let mut c = cl.master().client().expect("client");
    for id in 1..=20i64 {
        let mut r = propagator::Record::new();
        r.insert("id".into(), propagator::Value::Int(id));
        r.insert("grp".into(), propagator::Value::Int(id % 8));
        r.insert("qty".into(), propagator::Value::Int(id));
        c.store(maintenance::cluster::MASTER, None, r)
            .expect("store");
        c.et(None).expect("et");
    }
    let (seq, _) = cl.wait_converged(LIMIT).expect("converged");
    let (_console, at) = start_console(cl.nodes[0].addr, &tmp.path().join("console.log"));
    let (code, page) = http(at, "GET", "/");
    assert_eq!(code, 200, "{page}");
    for want in [
        "<h1>Cluster</h1>",
        "id=\"db-1\"",
        "id=\"db-2\"",
        "id=\"db-3\"",
        "id=\"master-items\"",
        "id=\"rep-items_full\"",
        "id=\"rep-items_part\"",
        "automatic",
    ] {
        assert!(page.contains(want), "{want} missing from {page}");
    }
    // The master's row: its seq; each replicate online, current, at it.
    let row = |id: &str| {
        let from = page.find(&format!("id=\"{id}\"")).expect("row");
        let to = page[from..].find("</tr>").map_or(page.len(), |e| from + e);
        page[from..to].to_string()
    };
    assert!(
        row("master-items").contains(&format!(">{}<", seq.0)),
        "{}",
        row("master-items")
    );
    for r in ["rep-items_full", "rep-items_part"] {
        let r = row(r);
        assert!(
            r.contains("class=\"ok\">online")
                && r.contains(">current<")
                && r.contains(&format!(">{}<", seq.0)),
            "{r}"
        );
    }
    assert!(!page.contains("unreachable"), "{page}");
    // A stopped node shows as unreachable on the next page, with since when.
    cl.nodes[2].stop().expect("stop");
    let page = wait_for("the stopped database shown unreachable", LIMIT, || {
        let (code, page) = http(at, "GET", "/");
        (code == 200 && page.contains("unreachable</span> since")).then_some(page)
    });
    let from = page.find("id=\"db-3\"").expect("db 3");
    assert!(page[from..].starts_with("id=\"db-3\""), "{page}");
    let to = page[from..].find("</tr>").map_or(page.len(), |e| from + e);
    assert!(
        page[from..to].contains("unreachable</span> since")
            && page[from..to].contains("Connection refused"),
        "{page}"
    );
    // Anything else is not found; no page changes anything through GET,
    // and nothing is served to a POST here yet.
    let (code, body) = http(at, "GET", "/nope");
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("Not found"), "{body}");
    let (code, _) = http(at, "POST", "/");
    assert_eq!(code, 405);
}

#[test]
fn the_console_refuses_a_non_loopback_address() {
    let out = etp_command()
        .args(["console", "--node", "127.0.0.1:1", "--listen", "0.0.0.0:0"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("loopback addresses only") && err.contains("0.0.0.0:0"),
        "{err}"
    );
}
