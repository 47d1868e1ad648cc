//! `etp exec --node ADDR --journal DIR`: a client transaction that failed
//! because its master was unavailable, or whose ET acknowledgement was lost,
//! is rerun once the master is back and applied exactly once (DESIGN §2,
//! invariant 3). Real node processes, real TCP, a fault proxy in between.

use etp_system_tests::proxy::{Direction, FaultProxy};
use etp_system_tests::{etp, etp_bin, etp_command, etp_stdin, ok, parse_dump, wait_for, KillGuard};
use maintenance::cluster::NodeProc;
use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

const ANY_PORT: &str = "127.0.0.1:0";

/// A database with plain files 10 and 11, served by a node.
fn node() -> (tempfile::TempDir, NodeProc) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path().join("db");
    let ds = d.to_str().expect("utf-8");
    ok(&etp(&["db", "init", "--data", ds, "--dbid", "1"]));
    for (f, name) in [("10", "t"), ("11", "cal")] {
        ok(&etp(&[
            "file", "create", "--data", ds, "--file", f, "--name", name,
        ]));
    }
    let listen: SocketAddr = ANY_PORT.parse().expect("addr");
    let n = NodeProc::start(etp_bin(), &d, 1, listen).expect("node starts");
    (tmp, n)
}

fn journal_dir(tmp: &tempfile::TempDir) -> PathBuf {
    tmp.path().join("journal")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn dump(addr: SocketAddr, file: u32) -> BTreeMap<u64, serde_json::Value> {
    parse_dump(&ok(&etp(&[
        "file",
        "dump",
        "--node",
        &addr.to_string(),
        "--file",
        &file.to_string(),
    ])))
}

fn lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("output line is JSON"))
        .collect()
}

fn code(out: &Output) -> Option<i32> {
    out.status.code()
}

fn show(out: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn status(j: &Path) -> (Output, serde_json::Value) {
    let out = etp(&["exec", "--journal", s(j), "--status", "--json"]);
    let v = serde_json::from_slice(&out.stdout).expect("status --json is one JSON document");
    (out, v)
}

/// An address nothing listens on.
fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind(ANY_PORT).expect("bind");
    l.local_addr().expect("addr")
}

#[test]
fn journal_master_down_then_rerun_on_new_address_applies_exactly_once() {
    let (tmp, mut n) = node();
    let j = journal_dir(&tmp);
    let old = n.addr;
    n.kill();
    let input = "{\"op\":\"store\",\"file\":10,\"fields\":{\"k\":\"a\"}}\n\
                 {\"op\":\"et\",\"id\":\"down-a\"}\n\
                 {\"op\":\"store\",\"file\":10,\"fields\":{\"k\":\"b\"}}\n\
                 {\"op\":\"update\",\"file\":10,\"isn\":1,\"fields\":{\"v\":2}}\n\
                 {\"op\":\"et\"}\n";
    let out = etp_stdin(
        &[
            "exec",
            "--node",
            &old.to_string(),
            "--journal",
            s(&j),
            "--retry-for",
            "0.3",
        ],
        input,
    );
    assert_eq!(code(&out), Some(1), "{}", show(&out));
    assert!(lines(&out).is_empty(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("2 transaction(s) pending"),
        "{}",
        show(&out)
    );

    let (st, v) = status(&j);
    assert_eq!(code(&st), Some(1), "{}", show(&st));
    let pending = v["pending"].as_array().expect("pending list");
    assert_eq!(pending.len(), 2, "{v}");
    assert_eq!(pending[0]["id"], "down-a");
    assert_eq!(pending[0]["first"], "store file 10");
    assert!(pending[0]["attempts"].as_u64() >= Some(1), "{v}");
    assert!(pending[0]["last_error"].as_str().is_some(), "{v}");
    assert_eq!(
        pending[1]["attempts"], 0,
        "the second waits behind the first: {v}"
    );
    assert_eq!(pending[1]["first"], "store file 10 (+1 more)");
    let human = etp(&["exec", "--journal", s(&j), "--status"]);
    assert_eq!(code(&human), Some(1));
    assert!(String::from_utf8_lossy(&human.stdout).contains("down-a"));

    // The master comes back, on another port.
    let mut n2 = NodeProc::start(etp_bin(), &n.data, 1, ANY_PORT.parse().expect("addr"))
        .expect("node restarts");
    let new = n2.addr.to_string();
    let out = etp(&["exec", "--node", &new, "--journal", s(&j), "--rerun"]);
    assert_eq!(code(&out), Some(0), "{}", show(&out));
    let l = lines(&out);
    assert_eq!(l.len(), 2, "{}", show(&out));
    assert_eq!(l[0]["id"], "down-a");
    assert_eq!(l[0]["rerun"], true);
    assert_eq!(l[1]["rerun"], true);
    assert!(l[1]["id"].as_str().is_some_and(|id| id.starts_with("etp-")));
    assert!(
        l[0]["lsn"].as_u64() < l[1]["lsn"].as_u64(),
        "in order: {l:?}"
    );

    let d = dump(n2.addr, 10);
    assert_eq!(d.len(), 2, "{d:?}");
    assert_eq!(d[&1], serde_json::json!({"k": "a", "v": 2}));
    assert_eq!(d[&2], serde_json::json!({"k": "b"}));

    let (st, v) = status(&j);
    assert_eq!(code(&st), Some(0), "{}", show(&st));
    assert_eq!(v["pending"], serde_json::json!([]));
    // Nothing left: a second rerun does nothing, and the journal was compacted.
    let out = etp(&["exec", "--node", &new, "--journal", s(&j), "--rerun"]);
    assert_eq!(code(&out), Some(0), "{}", show(&out));
    assert!(lines(&out).is_empty());
    assert_eq!(dump(n2.addr, 10).len(), 2);
    let len = std::fs::metadata(j.join(maintenance::journal::FILE_NAME))
        .expect("journal file")
        .len();
    assert_eq!(len, 8, "only the magic remains after compaction");
    n2.kill();
}

#[test]
fn journal_retries_while_master_unreachable_then_applies_once() {
    let (tmp, n) = node();
    let j = journal_dir(&tmp);
    let proxy = FaultProxy::start(n.addr).expect("proxy");
    proxy.refuse();
    let mut child = KillGuard(
        etp_command()
            .args(["exec", "--node", &proxy.addr().to_string(), "--journal"])
            .arg(&j)
            .args(["--retry-for", "25"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("etp exec starts"),
    );
    let mut stdin = child.0.stdin.take().expect("stdin");
    stdin
        .write_all(
            b"{\"op\":\"store\",\"file\":10,\"fields\":{\"k\":\"w\"}}\n{\"op\":\"et\",\"id\":\"wait-1\"}\n\
              {\"op\":\"store\",\"file\":10,\"fields\":{\"k\":\"x\"}}\n{\"op\":\"et\",\"id\":\"wait-2\"}\n",
        )
        .expect("write input");
    drop(stdin);
    wait_for("exec to retry twice", Duration::from_secs(20), || {
        (proxy.refused() >= 2).then_some(())
    });
    let (_, v) = status(&j);
    assert_eq!(v["pending"][0]["id"], "wait-1", "{v}");
    proxy.accept_again();
    let st = wait_for("exec to finish", Duration::from_secs(25), || {
        child.0.try_wait().ok().flatten()
    });
    let mut stdout = String::new();
    if let Some(mut o) = child.0.stdout.take() {
        use std::io::Read;
        let _ = o.read_to_string(&mut stdout);
    }
    assert!(st.success(), "{st}: {stdout}");
    let l: Vec<serde_json::Value> = stdout
        .lines()
        .map(|x| serde_json::from_str(x).expect("JSON"))
        .collect();
    assert_eq!(l.len(), 2, "{stdout}");
    assert_eq!(
        (l[0]["id"].clone(), l[0]["rerun"].clone()),
        ("wait-1".into(), true.into())
    );
    assert_eq!(
        (l[1]["id"].clone(), l[1]["rerun"].clone()),
        ("wait-2".into(), false.into())
    );
    let d = dump(n.addr, 10);
    assert_eq!(
        d.values().cloned().collect::<Vec<_>>(),
        vec![serde_json::json!({"k": "w"}), serde_json::json!({"k": "x"})]
    );
    assert_eq!(code(&status(&j).0), Some(0));
}

/// One transaction whose rerun fails on its own effects if it had committed
/// (the explicit isn exists), plus an engine-assigned isn (which a second
/// application would duplicate).
fn txn(file: u32, id: &str) -> String {
    format!(
        "{{\"op\":\"store\",\"file\":{file},\"isn\":100,\"fields\":{{\"k\":\"fixed\"}}}}\n\
         {{\"op\":\"store\",\"file\":{file},\"fields\":{{\"k\":\"assigned\"}}}}\n\
         {{\"op\":\"et\",\"id\":\"{id}\"}}\n"
    )
}

/// Runs one transaction through a clean proxy on the calibration file and
/// returns the bytes each way: the faulty runs have the same sizes.
fn calibrate(node: SocketAddr, tmp: &tempfile::TempDir) -> (u64, u64) {
    let proxy = FaultProxy::start(node).expect("proxy");
    let j = tmp.path().join("calibration-journal");
    let out = etp_stdin(
        &[
            "exec",
            "--node",
            &proxy.addr().to_string(),
            "--journal",
            s(&j),
        ],
        &txn(11, "cut-cal"),
    );
    assert_eq!(code(&out), Some(0), "{}", show(&out));
    (
        proxy.bytes(Direction::ClientToServer),
        proxy.bytes(Direction::ServerToClient),
    )
}

fn cut_run(direction: Direction, id: &str) -> Vec<serde_json::Value> {
    let (tmp, n) = node();
    let (c2s, s2c) = calibrate(n.addr, &tmp);
    let j = journal_dir(&tmp);
    let proxy = FaultProxy::start(n.addr).expect("proxy");
    // The connection's last frame each way is the ET request and its
    // answer: cut three bytes before its end.
    let total = match direction {
        Direction::ClientToServer => c2s,
        Direction::ServerToClient => s2c,
    };
    proxy.reset_after(direction, total - 3);
    let out = etp_stdin(
        &[
            "exec",
            "--node",
            &proxy.addr().to_string(),
            "--journal",
            s(&j),
            "--retry-for",
            "20",
        ],
        &txn(10, id),
    );
    assert_eq!(code(&out), Some(0), "{}", show(&out));
    assert_eq!(proxy.resets(), 1, "the cut fired");
    assert!(proxy.accepted() >= 2, "the transaction was sent again");
    let d = dump(n.addr, 10);
    assert_eq!(d.len(), 2, "applied exactly once: {d:?}");
    assert_eq!(d[&100], serde_json::json!({"k": "fixed"}));
    assert_eq!(
        d.values().filter(|v| v["k"] == "assigned").count(),
        1,
        "{d:?}"
    );
    assert_eq!(code(&status(&j).0), Some(0));
    lines(&out)
}

#[test]
fn journal_et_committed_but_ack_lost_is_not_applied_twice() {
    let l = cut_run(Direction::ServerToClient, "cut-acked");
    assert_eq!(l.len(), 1, "{l:?}");
    assert_eq!(l[0]["id"], "cut-acked");
    assert_eq!(l[0]["rerun"], true);
    assert_eq!(
        l[0]["already_committed"], true,
        "the first attempt committed; the rerun found it by id: {l:?}"
    );
    assert!(l[0]["lsn"].as_u64().is_some());
}

#[test]
fn journal_et_cut_before_reaching_node_is_applied_once_by_rerun() {
    let l = cut_run(Direction::ClientToServer, "cut-unsent");
    assert_eq!(l.len(), 1, "{l:?}");
    assert_eq!(l[0]["id"], "cut-unsent");
    assert_eq!(l[0]["rerun"], true);
    assert!(
        l[0].get("already_committed").is_none(),
        "the first attempt was backed out: {l:?}"
    );
    assert!(l[0]["time"].as_str().is_some());
}

#[test]
fn journal_damage_is_reported_naming_the_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let j = journal_dir(&tmp);
    let addr = closed_port().to_string();
    let out = etp_stdin(
        &[
            "exec",
            "--node",
            &addr,
            "--journal",
            s(&j),
            "--retry-for",
            "0",
        ],
        &txn(10, "dmg-1"),
    );
    assert_eq!(code(&out), Some(1), "{}", show(&out));
    let file = j.join(maintenance::journal::FILE_NAME);
    let mut b = std::fs::read(&file).expect("journal file");
    // A payload byte of the first entry (magic 8 + header 16).
    b[8 + 16 + 10] ^= 0x40;
    std::fs::write(&file, &b).expect("damage");

    let out = etp(&["exec", "--node", &addr, "--journal", s(&j), "--rerun"]);
    assert_eq!(code(&out), Some(2), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(s(&file)), "{err}");
    assert!(
        err.contains("offset 8") && err.contains("checksum"),
        "{err}"
    );
    let st = etp(&["exec", "--journal", s(&j), "--status"]);
    assert_eq!(code(&st), Some(1), "{}", show(&st));
    assert!(String::from_utf8_lossy(&st.stderr).contains(s(&file)));

    // Offline exec has nothing to journal: refused clearly.
    let out = etp_stdin(
        &[
            "exec",
            "--data",
            s(&tmp.path().join("db")),
            "--journal",
            s(&j),
        ],
        "",
    );
    assert_eq!(code(&out), Some(2), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--journal works with --node only"));
}
