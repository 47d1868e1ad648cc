//! Atomicity and autobackout across `kill -9`: a child `etp exec` commits
//! transactions that each touch a master (and so its log) and a plain file,
//! and is killed at random points. After every restart: every acknowledged
//! ET is present, no part of an unacknowledged one is, the master equals the
//! replay of its log, log seqs are gap-free, and `etp db check` passes.

use etp_system_tests::{etp, etp_command, ok, parse_dump, seed, KillGuard};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

const MASTER: u32 = 10;
const PLAIN: u32 = 20;

/// Transaction `t` writes three master records and one plain record, all
/// tagged with `t`: isn 3t+1..3t+3 in the master, isn t+1 in the plain file.
fn txn(t: u64, update_previous: bool) -> String {
    let mut s = String::new();
    for k in 1..=3 {
        let isn = 3 * t + k;
        s.push_str(&format!(
            "{{\"op\":\"store\",\"file\":{MASTER},\"isn\":{isn},\"fields\":{{\"t\":{t},\"k\":{k},\"pad\":\"{}\"}}}}\n",
            "p".repeat((t % 50) as usize)
        ));
    }
    if update_previous {
        // Also update the previous transaction's first record: cross-transaction state.
        s.push_str(&format!(
            "{{\"op\":\"update\",\"file\":{MASTER},\"isn\":{},\"fields\":{{\"seen_by\":{t}}}}}\n",
            3 * (t - 1) + 1
        ));
    }
    s.push_str(&format!(
        "{{\"op\":\"store\",\"file\":{PLAIN},\"isn\":{},\"fields\":{{\"t\":{t}}}}}\n",
        t + 1
    ));
    s.push_str(&format!("{{\"op\":\"et\",\"id\":\"t{t}\"}}\n"));
    s
}

/// Master state replayed from `etp log show --json`, checking seqs are 1..n.
fn replay(dir: &str) -> BTreeMap<u64, serde_json::Value> {
    let out = ok(&etp(&[
        "log",
        "show",
        "--data",
        dir,
        "--master",
        &MASTER.to_string(),
        "--json",
    ]));
    let mut state = BTreeMap::new();
    for (i, line) in out.lines().enumerate() {
        let r: serde_json::Value = serde_json::from_str(line).expect("log line");
        assert_eq!(
            r["seq"].as_u64(),
            Some(i as u64 + 1),
            "log seq gap at line {i}"
        );
        let isn = r["isn"].as_u64().expect("isn");
        if r["after"].is_null() {
            state.remove(&isn);
        } else {
            state.insert(isn, r["after"].clone());
        }
    }
    state
}

fn dump(dir: &str, file: u32) -> BTreeMap<u64, serde_json::Value> {
    parse_dump(&ok(&etp(&[
        "file",
        "dump",
        "--data",
        dir,
        "--file",
        &file.to_string(),
    ])))
}

#[test]
fn kill_9_at_random_points_loses_no_acknowledged_et_and_leaves_no_partial_one() {
    kill_9_cycles("fjall");
}

#[test]
fn kill_9_at_random_points_on_a_sled_page_store() {
    kill_9_cycles("sled");
}

/// Kills a node at random points while it commits, on a database whose
/// page store runs on `engine`.
fn kill_9_cycles(engine: &str) {
    let seed = seed(&format!("kill_9_{engine}"));
    let mut rng = fastrand::Rng::with_seed(seed);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("db");
    let d = dir.to_str().expect("utf-8 path");
    // Small segments so kills also land around segment rotation.
    ok(&etp(&[
        "db",
        "init",
        "--data",
        d,
        "--dbid",
        "1",
        "--segment-size",
        "16384",
        "--store",
        engine,
    ]));
    ok(&etp(&[
        "file",
        "create",
        "--data",
        d,
        "--file",
        &MASTER.to_string(),
        "--name",
        "m",
    ]));
    ok(&etp(&[
        "master",
        "define",
        "--data",
        d,
        "--file",
        &MASTER.to_string(),
        "--log",
        "11",
    ]));
    ok(&etp(&[
        "file",
        "create",
        "--data",
        d,
        "--file",
        &PLAIN.to_string(),
        "--name",
        "p",
    ]));

    let mut acked: BTreeSet<u64> = BTreeSet::new();
    let mut next_t = 0u64;
    let cycles = 50;
    for cycle in 0..cycles {
        let mut child = KillGuard(
            etp_command()
                .args(["exec", "--data", d])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn exec"),
        );
        let mut stdin = child.0.stdin.take().expect("stdin");
        let stdout = child.0.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Feed a batch of transactions; kill after a random number of acks,
        // sometimes before the first one (kill during start-up/recovery).
        let batch = 40;
        let first = next_t;
        let mut input = String::new();
        for t in first..first + batch {
            // The previous cycle's last transaction may have died uncommitted.
            input.push_str(&txn(t, t > first));
        }
        let _ = stdin.write_all(input.as_bytes());
        let kill_after = rng.u64(0..batch / 2);
        let mut seen = 0;
        while seen < kill_after {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(line) => {
                    let v: serde_json::Value = serde_json::from_str(&line).expect("ack JSON");
                    assert!(v.get("error").is_none(), "cycle {cycle}: exec error {line}");
                    let id = v["id"].as_str().expect("id");
                    acked.insert(id[1..].parse().expect("t"));
                    seen += 1;
                }
                Err(e) => panic!("cycle {cycle}: no ack within 30 s ({e})"),
            }
        }
        // A little more time so some kills land mid-commit.
        if rng.bool() {
            std::thread::sleep(Duration::from_micros(rng.u64(0..3000)));
        }
        child.kill();
        drop(stdin);
        let _ = reader.join();
        // Acks already printed before the kill are acknowledged too.
        while let Ok(line) = rx.try_recv() {
            let v: serde_json::Value = serde_json::from_str(&line).expect("ack JSON");
            if let Some(id) = v["id"].as_str() {
                acked.insert(id[1..].parse().expect("t"));
            }
        }
        next_t = first + batch;

        // Restart: recovery runs on open; then the oracle.
        let master = dump(d, MASTER);
        let plain = dump(d, PLAIN);
        for t in 0..next_t {
            let parts: Vec<bool> = (1..=3).map(|k| master.contains_key(&(3 * t + k))).collect();
            let in_plain = plain.contains_key(&(t + 1));
            let all = parts.iter().all(|p| *p) && in_plain;
            let none = parts.iter().all(|p| !*p) && !in_plain;
            assert!(all || none, "cycle {cycle}: transaction t{t} is partly present: master {parts:?}, plain {in_plain}");
            if acked.contains(&t) {
                assert!(all, "cycle {cycle}: acknowledged t{t} lost");
            }
        }
        assert_eq!(
            replay(d),
            master,
            "cycle {cycle}: master differs from the replay of its log"
        );
        let check = etp(&["db", "check", "--data", d]);
        assert!(
            check.status.success(),
            "cycle {cycle}: db check failed: {}",
            String::from_utf8_lossy(&check.stdout)
        );
    }
    assert!(
        acked.len() > cycles,
        "too few acknowledged transactions ({}) for a meaningful test",
        acked.len()
    );
    // Every acknowledged transaction id is refused if resubmitted.
    let t = *acked.iter().next().expect("one acked");
    let out = etp_bin_stdin_retry(d, t);
    assert!(out.contains("already committed"), "{out}");
}

fn etp_bin_stdin_retry(d: &str, t: u64) -> String {
    let out = etp_system_tests::etp_stdin(
        &["exec", "--data", d],
        &format!("{{\"op\":\"et\",\"id\":\"t{t}\"}}\n"),
    );
    assert_eq!(out.status.code(), Some(2));
    String::from_utf8_lossy(&out.stdout).into_owned()
}
