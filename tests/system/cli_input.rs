//! Bad input gets a clear error naming what was wrong, and loses nothing
//! already committed: `etp exec` lines, CLI arguments, damaged databases.

use etp_system_tests::{etp, etp_stdin, ok, parse_dump};

fn master_db() -> (tempfile::TempDir, String) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path().join("db").to_str().expect("utf-8").to_string();
    ok(&etp(&["db", "init", "--data", &d, "--dbid", "1"]));
    ok(&etp(&[
        "file", "create", "--data", &d, "--file", "10", "--name", "m",
    ]));
    ok(&etp(&[
        "master", "define", "--data", &d, "--file", "10", "--log", "11",
    ]));
    ok(&etp(&[
        "file",
        "create",
        "--data",
        &d,
        "--file",
        "30",
        "--name",
        "r",
        "--role",
        "replicate",
    ]));
    (tmp, d)
}

#[test]
fn exec_prints_one_line_per_et_with_lsn_seq_time_and_id() {
    let (_t, d) = master_db();
    let out = ok(&etp_stdin(
        &["exec", "--data", &d],
        "{\"op\":\"store\",\"file\":10,\"fields\":{\"name\":\"a\",\"qty\":3}}\n\
         {\"op\":\"store\",\"file\":10,\"isn\":7,\"fields\":{\"name\":\"b\"}}\n\
         {\"op\":\"et\",\"id\":\"c1\"}\n\
         {\"op\":\"update\",\"file\":10,\"isn\":7,\"fields\":{\"qty\":4,\"name\":null}}\n\
         {\"op\":\"read\",\"file\":10,\"isn\":7}\n\
         {\"op\":\"et\"}\n\
         {\"op\":\"delete\",\"file\":10,\"isn\":1}\n\
         {\"op\":\"bt\"}\n",
    ));
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert_eq!(lines[0]["id"], "c1");
    assert_eq!(lines[0]["seq"]["10"], 2);
    assert!(lines[0]["lsn"].as_u64().is_some() && lines[0]["time"].as_str().is_some());
    assert_eq!(lines[1]["fields"], serde_json::json!({"qty": 4}));
    assert_eq!(lines[2]["seq"]["10"], 3);
    let dump = parse_dump(&ok(&etp(&["file", "dump", "--data", &d, "--file", "10"])));
    assert_eq!(
        dump.keys().copied().collect::<Vec<_>>(),
        vec![1, 7],
        "the BT'd delete must not apply"
    );
    assert_eq!(dump[&7], serde_json::json!({"qty": 4}));
}

#[test]
fn every_bad_exec_line_is_named_and_nothing_committed_is_lost() {
    let (_t, d) = master_db();
    ok(&etp_stdin(
        &["exec", "--data", &d],
        "{\"op\":\"store\",\"file\":10,\"isn\":1,\"fields\":{\"a\":1}}\n{\"op\":\"et\"}\n",
    ));
    let cases = [
        ("{not json", "not valid JSON"),
        ("[1,2]", "must be a JSON object"),
        ("{\"file\":10}", "missing \"op\""),
        ("{\"op\":\"frobnicate\"}", "unknown op \"frobnicate\""),
        (
            "{\"op\":\"store\",\"file\":10,\"fields\":{\"a\":1},\"extra\":1}",
            "unknown key \"extra\"",
        ),
        (
            "{\"op\":\"store\",\"file\":\"ten\",\"fields\":{}}",
            "\"file\" must be a positive integer",
        ),
        (
            "{\"op\":\"store\",\"file\":10,\"isn\":-1,\"fields\":{}}",
            "\"isn\" must be a positive integer",
        ),
        ("{\"op\":\"store\",\"file\":10}", "needs \"fields\""),
        (
            "{\"op\":\"store\",\"file\":10,\"fields\":{\"a\":[1]}}",
            "field \"a\"",
        ),
        (
            "{\"op\":\"store\",\"file\":99,\"fields\":{\"a\":1}}",
            "file 99 does not exist",
        ),
        (
            "{\"op\":\"store\",\"file\":30,\"fields\":{\"a\":1}}",
            "replicate file",
        ),
        (
            "{\"op\":\"store\",\"file\":11,\"fields\":{\"a\":1}}",
            "log file",
        ),
        (
            "{\"op\":\"store\",\"file\":10,\"isn\":1,\"fields\":{\"a\":2}}",
            "already exists",
        ),
        (
            "{\"op\":\"update\",\"file\":10,\"isn\":5,\"fields\":{\"a\":2}}",
            "does not exist",
        ),
        ("{\"op\":\"et\",\"id\":7}", "\"id\" must be a string"),
    ];
    for (bad, expect) in cases {
        // A valid command first (same transaction), then the bad line on line 2.
        let input = format!("{{\"op\":\"store\",\"file\":10,\"isn\":50,\"fields\":{{\"x\":1}}}}\n{bad}\n{{\"op\":\"et\"}}\n");
        let out = etp_stdin(&["exec", "--data", &d], &input);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let err: serde_json::Value =
            serde_json::from_str(stdout.lines().last().expect("error line")).expect("error JSON");
        assert_eq!(err["line"], 2, "{bad}: {stdout}");
        let msg = err["error"].as_str().expect("message");
        assert!(
            msg.contains(expect),
            "{bad}: message {msg:?} does not say {expect:?}"
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("line 2"), "{bad}: {stderr}");
        let dump = parse_dump(&ok(&etp(&["file", "dump", "--data", &d, "--file", "10"])));
        assert_eq!(
            dump.keys().copied().collect::<Vec<_>>(),
            vec![1],
            "{bad}: committed data changed or the failed transaction left a trace"
        );
    }
    let check = etp(&["db", "check", "--data", &d]);
    assert!(check.status.success());
}

#[test]
fn bad_arguments_and_missing_databases_are_operational_errors() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path().to_str().expect("utf-8");
    for args in [
        vec!["db", "init", "--data", d, "--dbid", "0"],
        vec!["db", "init", "--data", d, "--dbid", "x"],
        vec!["file", "dump", "--data", d],
        vec!["frobnicate"],
    ] {
        let out = etp(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?}: no explanation");
    }
    let out = etp(&["db", "check", "--data", &format!("{d}/nowhere")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a database"));
    let out = etp(&[
        "file", "create", "--data", d, "--file", "1", "--name", "x", "--role", "master",
    ]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn db_check_exits_1_naming_a_damaged_protection_log_segment() {
    let (_t, d) = master_db();
    let mut input = String::new();
    for i in 1..=50 {
        input.push_str(&format!("{{\"op\":\"store\",\"file\":10,\"isn\":{i},\"fields\":{{\"a\":{i}}}}}\n{{\"op\":\"et\"}}\n"));
    }
    ok(&etp_stdin(&["exec", "--data", &d], &input));
    assert!(etp(&["db", "check", "--data", &d]).status.success());
    let seg = std::path::Path::new(&d)
        .join("plog")
        .join("seg-0000000000000001.plog");
    let mut bytes = std::fs::read(&seg).expect("segment");
    // Segments are preallocated with zeros: damage the middle of the frames.
    let end = bytes.iter().rposition(|b| *b != 0).expect("frames");
    let mid = end / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&seg, bytes).expect("write");
    let out = etp(&["db", "check", "--data", &d]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("segment 1") && text.contains("offset"),
        "{text}"
    );
    // Nothing opens on a damaged log: no command silently uses it.
    assert_eq!(
        etp(&["file", "dump", "--data", &d, "--file", "10"])
            .status
            .code(),
        Some(2)
    );
}
