//! A newcomer's first hour, through the real binary: their own two nodes,
//! the mistakes newcomers make, and commands that say what they mean.

use etp_system_tests::{etp, etp_stdin, ok, parse_dump, start_node, wait_for};
use std::path::Path;
use std::time::Duration;

/// Two masters (items 10/11, orders 12/13) on database 1, a full replicate
/// of each on database 2; database 2's address written as a host name.
fn topology(a1: std::net::SocketAddr, p2: u16) -> String {
    format!(
        r#"
[[database]]
dbid = 1
address = "{a1}"

[[database]]
dbid = 2
address = "localhost:{p2}"

[[master]]
database = 1
file = 10
name = "items"
log = 11
fields = ["name", "qty"]

[[master]]
database = 1
file = 12
name = "orders"
log = 13
fields = ["item", "count"]

[[replicate]]
name = "items_copy"
master_database = 1
master = 10
database = 2
file = 20
confirmation = 21

[[replicate]]
name = "orders_copy"
master_database = 1
master = 12
database = 2
file = 22
confirmation = 21

[[task]]
master_database = 1
master = 10
restart_interval_s = 1

[[task]]
master_database = 1
master = 12
restart_interval_s = 1
"#
    )
}

fn init(dir: &Path, dbid: u32) {
    ok(&etp(&[
        "db",
        "init",
        "--dbid",
        &dbid.to_string(),
        "--data",
        dir.to_str().expect("utf-8 path"),
    ]));
}

fn dump_count(node: &str, file: u32) -> usize {
    let out = etp(&["file", "dump", "--node", node, "--file", &file.to_string()]);
    if !out.status.success() {
        return usize::MAX;
    }
    parse_dump(&String::from_utf8_lossy(&out.stdout)).len()
}

/// Two nodes on free ports with [`topology`] applied; returns their guards
/// and the master's address.
fn two_nodes(dir: &Path) -> (Vec<etp_system_tests::KillGuard>, std::net::SocketAddr) {
    let (d1, d2) = (dir.join("n1"), dir.join("n2"));
    init(&d1, 1);
    init(&d2, 2);
    let (n1, a1) = start_node(&d1, Some("127.0.0.1:0"), &dir.join("n1.log"));
    let (n2, a2) = start_node(&d2, Some("127.0.0.1:0"), &dir.join("n2.log"));
    let topo = dir.join("topology.toml");
    std::fs::write(&topo, topology(a1, a2.port())).expect("write topology");
    ok(&etp(&[
        "admin",
        "apply",
        "--node",
        &a1.to_string(),
        topo.to_str().expect("utf-8"),
    ]));
    (vec![n1, n2], a1)
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The whole first hour on one cluster: host names, a restart without
/// `--listen`, the schema, xref across masters, status from any node, a
/// healthy diagnosis, a walk at end of input, and plain log files.
#[test]
fn a_newcomers_cluster_keeps_its_addresses_and_refuses_silent_mistakes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (d1, d2) = (tmp.path().join("n1"), tmp.path().join("n2"));
    let (log1, log2) = (tmp.path().join("n1.log"), tmp.path().join("n2.log"));
    init(&d1, 1);
    init(&d2, 2);
    // First start: any free port; the node notes where it listens.
    let (_n1, a1) = start_node(&d1, Some("127.0.0.1:0"), &log1);
    let (mut n2, a2) = start_node(&d2, Some("localhost:0"), &log2);
    assert!(a2.ip().is_loopback(), "{a2}");
    let topo = tmp.path().join("topology.toml");
    std::fs::write(&topo, topology(a1, a2.port())).expect("write topology");
    // `--node` takes a host name as well as an address.
    let m = format!("localhost:{}", a1.port());
    let r = format!("localhost:{}", a2.port());
    ok(&etp(&[
        "admin",
        "apply",
        "--node",
        &m,
        topo.to_str().expect("utf-8"),
    ]));

    // A transaction writing both masters, under one id.
    ok(&etp_stdin(
        &["exec", "--node", &m],
        concat!(
            r#"{"op":"store","file":10,"isn":1,"fields":{"name":"bolt","qty":5}}"#,
            "\n",
            r#"{"op":"store","file":12,"isn":1,"fields":{"item":"bolt","count":2}}"#,
            "\n",
            r#"{"op":"et","id":"both"}"#,
            "\n"
        ),
    ));
    wait_for("both replicates", Duration::from_secs(30), || {
        (dump_count(&r, 20) == 1 && dump_count(&r, 22) == 1).then_some(())
    });

    // xref without --master: every master the transaction wrote.
    let x = ok(&etp(&["xref", "--id", "both", "--node", &m, "--json"]));
    let masters: Vec<u64> = x
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json line");
            v["master"].as_u64().expect("master")
        })
        .collect();
    assert_eq!(masters, vec![10, 12], "{x}");

    // A misspelt field is refused, naming it and the declared ones, and
    // nothing of its transaction is committed.
    let bad = etp_stdin(
        &["exec", "--node", &m],
        concat!(
            r#"{"op":"store","file":10,"isn":2,"fields":{"name":"nut","qty":1}}"#,
            "\n",
            r#"{"op":"update","file":10,"isn":1,"fields":{"custmer":"x"}}"#,
            "\n",
            r#"{"op":"et"}"#,
            "\n"
        ),
    );
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    let text = stdout(&bad) + &stderr(&bad);
    assert!(
        text.contains("custmer") && text.contains("name, qty"),
        "{text}"
    );
    assert_eq!(
        dump_count(&m, 10),
        1,
        "the refused transaction left nothing"
    );

    // Input that ends inside a transaction exits 1 and says what was backed out.
    let open = etp_stdin(
        &["exec", "--node", &m],
        &(r#"{"op":"store","file":10,"isn":3,"fields":{"name":"washer","qty":9}}"#.to_string()
            + "\n"),
    );
    assert_eq!(open.status.code(), Some(1), "{}", stderr(&open));
    assert!(
        stdout(&open).contains("backed out") && stderr(&open).contains("backed out"),
        "{}{}",
        stdout(&open),
        stderr(&open)
    );
    assert_eq!(dump_count(&m, 10), 1);

    // task status from the replicate's node shows the tasks that feed it.
    let st = ok(&etp(&["task", "status", "--node", &r, "--json"]));
    assert!(
        st.contains("items_copy") && st.contains("orders_copy"),
        "{st}"
    );

    // A healthy cluster: one line, no plan, exit 0.
    let state = tmp.path().join("recovery");
    let d = etp(&[
        "recover",
        "diagnose",
        "--node",
        &m,
        "--state",
        state.to_str().expect("utf-8"),
    ]);
    assert_eq!(d.status.code(), Some(0), "{}{}", stdout(&d), stderr(&d));
    assert_eq!(stdout(&d).lines().count(), 1, "{}", stdout(&d));
    assert!(stdout(&d).contains("all intact"), "{}", stdout(&d));

    // A walk whose input ends says so (and changes nothing).
    let w = etp_stdin(&["recover", "walk", "triage", "--node", &m], "");
    assert_eq!(w.status.code(), Some(2));
    assert!(
        stderr(&w).contains("input ended before question"),
        "{}",
        stderr(&w)
    );

    // The replicate's node dies and comes back without --listen: same
    // address, and the master resyncs it with no new topology.
    n2.kill();
    ok(&etp_stdin(
        &["exec", "--node", &m],
        concat!(
            r#"{"op":"store","file":10,"isn":4,"fields":{"name":"gear","qty":3}}"#,
            "\n",
            r#"{"op":"et"}"#,
            "\n"
        ),
    ));
    // The topology is what says where it listens (not only its own note).
    std::fs::remove_file(d2.join("node-address")).expect("the node noted its address");
    let (_n2b, a2b) = start_node(&d2, None, &log2);
    assert_eq!(a2b.port(), a2.port(), "a restart keeps the node's address");
    wait_for("the replicate resynced", Duration::from_secs(30), || {
        (dump_count(&r, 20) == 2).then_some(())
    });
    // The master's log says the link came back, at the default level; the
    // node logs, written to files, carry no terminal colour codes.
    let l1 = wait_for("the restored link logged", Duration::from_secs(10), || {
        let t = std::fs::read_to_string(&log1).unwrap_or_default();
        t.contains("replication link restored").then_some(t)
    });
    let l2 = std::fs::read_to_string(&log2).unwrap_or_default();
    assert!(!l1.contains('\u{1b}') && !l2.contains('\u{1b}'), "{l1}");

    // Started elsewhere than its topology says: the node warns in its log,
    // and task status says so.
    drop(_n2b);
    let (_n2c, a2c) = start_node(&d2, Some("127.0.0.1:0"), &log2);
    assert_ne!(a2c.port(), a2.port());
    let st = etp(&["task", "status", "--node", &a2c.to_string()]);
    assert!(
        stderr(&st).contains(&format!(
            "listens at {a2c}, but the topology names database 2"
        )),
        "{}",
        stderr(&st)
    );
    wait_for("the moved node's warning", Duration::from_secs(10), || {
        std::fs::read_to_string(&log2)
            .unwrap_or_default()
            .contains("its peers will not reach it")
            .then_some(())
    });
}

/// Input of `txns` transactions of two stores each into file 10 from isn
/// `base`; transaction `bad`'s second store repeats an isn already stored.
fn two_store_txns(base: u64, txns: u64, bad: u64) -> String {
    let mut input = String::new();
    for k in 1..=txns {
        let first = base + 2 * k - 1;
        let second = if k == bad { base + 1 } else { first + 1 };
        for isn in [first, second] {
            input += &format!(
                r#"{{"op":"store","file":10,"isn":{isn},"fields":{{"name":"p{isn}","qty":{k}}}}}"#
            );
            input += "\n";
        }
        input += "{\"op\":\"et\"}\n";
    }
    input
}

/// `etp exec --node` keeps whole transactions in flight (the default) and
/// still behaves as one command at a time does: results in input order,
/// the run stops at the first failure naming its line, and nothing after
/// it commits although it was already sent. A transaction that reads runs
/// in its turn.
#[test]
fn a_pipelined_exec_stops_at_the_first_failure_with_nothing_after_it_committed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (_nodes, a1) = two_nodes(tmp.path());
    let m = a1.to_string();
    // Transaction 15 of 40 fails on its second store (line 44).
    for (base, pipeline) in [(0u64, "8"), (1000, "1")] {
        let out = etp_stdin(
            &["exec", "--node", &m, "--pipeline", pipeline],
            &two_store_txns(base, 40, 15),
        );
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        let lines: Vec<serde_json::Value> = stdout(&out)
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect();
        assert_eq!(lines.len(), 15, "{}", stdout(&out));
        let lsns: Vec<u64> = lines[..14]
            .iter()
            .map(|v| v["lsn"].as_u64().expect("a commit line"))
            .collect();
        assert!(lsns.windows(2).all(|w| w[0] < w[1]), "{lsns:?}");
        assert_eq!(lines[14]["line"], 44, "{}", stdout(&out));
        assert!(
            lines[14]["error"]
                .as_str()
                .is_some_and(|e| e.contains("exists")),
            "{}",
            stdout(&out)
        );
        assert!(
            stderr(&out).contains("14 earlier transactions stay committed"),
            "{}",
            stderr(&out)
        );
    }
    // 14 transactions of two records from each run; none after the failure.
    let stored = parse_dump(&ok(&etp(&["file", "dump", "--node", &m, "--file", "10"])));
    assert_eq!(stored.len(), 56);
    assert!(stored
        .keys()
        .all(|isn| *isn <= 28 || (1001..=1028).contains(isn)));

    // A read between pipelined transactions prints in its place.
    let mut input = two_store_txns(2000, 3, 0);
    input += r#"{"op":"read","file":10,"isn":2001}"#;
    input += "\n";
    input += &two_store_txns(2006, 3, 0);
    let out = etp_stdin(&["exec", "--node", &m], &input);
    assert!(out.status.success(), "{}", stderr(&out));
    let kinds: Vec<&str> = stdout(&out)
        .lines()
        .map(|l| {
            if l.contains("\"fields\"") {
                "read"
            } else {
                "commit"
            }
        })
        .collect();
    assert_eq!(
        kinds,
        ["commit", "commit", "commit", "read", "commit", "commit", "commit"]
    );
    assert!(stdout(&out).contains("p2001"), "{}", stdout(&out));
}

/// A journaled run that meets a refused transaction keeps the input after
/// it: journaled, pending, and rerun later.
#[test]
fn a_journaled_run_keeps_the_input_after_a_refusal_pending() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (_nodes, a1) = two_nodes(tmp.path());
    let m = a1.to_string();
    let journal = tmp.path().join("journal");
    let j = journal.to_str().expect("utf-8");
    let input = [
        r#"{"op":"store","file":10,"isn":1,"fields":{"name":"a","qty":1}}"#,
        r#"{"op":"et","id":"t1"}"#,
        // Refused: an undeclared field.
        r#"{"op":"store","file":10,"isn":2,"fields":{"nme":"b"}}"#,
        r#"{"op":"et","id":"t2"}"#,
        r#"{"op":"store","file":10,"isn":3,"fields":{"name":"c","qty":3}}"#,
        r#"{"op":"et","id":"t3"}"#,
        // Unfinished: said so even after the refusal.
        r#"{"op":"store","file":10,"isn":4,"fields":{"name":"d","qty":4}}"#,
    ]
    .join("\n")
        + "\n";
    let out = etp_stdin(&["exec", "--node", &m, "--journal", j], &input);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("1 transaction(s) stay pending")
            && stderr(&out).contains("input ended inside a transaction"),
        "{}",
        stderr(&out)
    );
    let status = etp(&["exec", "--journal", j, "--status", "--json"]);
    assert_eq!(status.status.code(), Some(1), "t3 is pending");
    assert!(stdout(&status).contains("t3"), "{}", stdout(&status));
    assert_eq!(dump_count(&m, 10), 1, "t3 was not run out of order");
    // The rerun commits it, once.
    ok(&etp(&["exec", "--node", &m, "--journal", j, "--rerun"]));
    assert_eq!(dump_count(&m, 10), 2);
    assert_eq!(
        etp(&["exec", "--journal", j, "--status"]).status.code(),
        Some(0)
    );
}

/// Offline, the declared fields hold as through a node; a plain file takes
/// any field; input left inside a transaction exits 1.
#[test]
fn offline_exec_checks_the_schema_and_never_loses_input_silently() {
    let tmp = tempfile::tempdir().expect("tempdir");
    drop(two_nodes(tmp.path()));
    let d1 = tmp.path().join("n1");
    let data = d1.to_str().expect("utf-8");
    let bad = etp_stdin(
        &["exec", "--data", data],
        concat!(
            r#"{"op":"store","file":10,"fields":{"name":"a","colour":"red"}}"#,
            "\n",
            r#"{"op":"et"}"#,
            "\n"
        ),
    );
    assert_eq!(bad.status.code(), Some(2));
    assert!(stdout(&bad).contains("colour"), "{}", stdout(&bad));
    let dump = ok(&etp(&["file", "dump", "--data", data, "--file", "10"]));
    assert!(dump.trim().is_empty(), "{dump}");
    // A plain file has no declared fields.
    ok(&etp(&[
        "file", "create", "--data", data, "--file", "50", "--name", "notes",
    ]));
    ok(&etp_stdin(
        &["exec", "--data", data],
        concat!(
            r#"{"op":"store","file":50,"fields":{"anything":1}}"#,
            "\n",
            r#"{"op":"et"}"#,
            "\n"
        ),
    ));
    let open = etp_stdin(
        &["exec", "--data", data],
        &(r#"{"op":"store","file":50,"fields":{"more":2}}"#.to_string() + "\n"),
    );
    assert_eq!(open.status.code(), Some(1));
    assert!(
        stderr(&open).contains("input ended inside a transaction"),
        "{}",
        stderr(&open)
    );
    let dump = ok(&etp(&["file", "dump", "--data", data, "--file", "50"]));
    assert_eq!(dump.lines().count(), 1, "{dump}");
    // A malformed line is named by one line number: the input's.
    let bad_json = etp_stdin(
        &["exec", "--data", data],
        "\n{\"op\":\"store\",\"file\":50,\"fields\":{\"x\":1}\n",
    );
    assert_eq!(bad_json.status.code(), Some(2));
    let line: serde_json::Value =
        serde_json::from_str(stdout(&bad_json).trim()).expect("one JSON error line");
    assert_eq!(line["line"], 2, "{line}");
    let msg = line["error"].as_str().unwrap_or_default();
    assert!(
        msg.contains("not valid JSON at column") && !msg.contains("line"),
        "{msg}"
    );
    // Neither target: the error names both.
    let none = etp_stdin(&["exec"], "");
    assert_eq!(none.status.code(), Some(2));
    assert!(
        stderr(&none).contains("--data") && stderr(&none).contains("--node"),
        "{}",
        stderr(&none)
    );
}

/// `ETP_LOG_FORMAT=json` writes one JSON object per log line; an unknown
/// format is refused by name.
#[test]
fn logs_can_be_json_lines_for_shippers() {
    use std::io::BufRead;
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path().join("n1");
    init(&d, 1);
    let log = tmp.path().join("n1.log");
    let err = std::fs::File::create(&log).expect("log file");
    let mut child = etp_system_tests::etp_command()
        .args(["node", "run", "--listen", "127.0.0.1:0", "--data"])
        .arg(&d)
        .env("ETP_LOG", "info")
        .env("ETP_LOG_FORMAT", "json")
        .stdout(std::process::Stdio::piped())
        .stderr(err)
        .spawn()
        .expect("node");
    let mut line = String::new();
    let out = child.stdout.take().expect("stdout");
    let mut guard = etp_system_tests::KillGuard(child);
    std::io::BufReader::new(out)
        .read_line(&mut line)
        .expect("listening line");
    let text = wait_for("the node's first log line", Duration::from_secs(10), || {
        let t = std::fs::read_to_string(&log).unwrap_or_default();
        t.contains("node serving").then_some(t)
    });
    guard.kill();
    for l in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{l}");
    }
    let bad = etp_system_tests::etp_command()
        .args(["db", "status", "--data"])
        .arg(&d)
        .env("ETP_LOG_FORMAT", "xml")
        .output()
        .expect("etp");
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        stderr(&bad).contains("ETP_LOG_FORMAT=\"xml\""),
        "{}",
        stderr(&bad)
    );
}

/// The demo explains what it shows: the topology it applied, the workload,
/// the backed-out transactions, what connects count, and the partial's rule.
#[test]
fn the_demo_explains_itself() {
    let out = etp(&["demo", "--transactions", "200"]);
    let text = ok(&out);
    for want in [
        "master items (file 10, log file 11) on database 1, fields id, grp, qty, note",
        "items_full (file 20, confirmation file 21) on database 2: full replicate",
        "records where grp % 4 == 0 && qty > 10, fields id, grp, qty",
        "== workload: 200 transactions",
        "backed out on purpose (the workload's BTs)",
        "(connects: the links the master's task opened",
        "partial == the master's records its predicate selects, cut to its fields",
    ] {
        assert!(text.contains(want), "{want:?} missing from:\n{text}");
    }
    assert!(!text.contains("select(project"), "{text}");
}
