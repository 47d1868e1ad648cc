//! Propagation between real node processes on 127.0.0.1: end to end, under
//! `kill -9` of every node, through a faulty link, against bad frames and
//! bad topologies, and with a replicate damaged behind the engine's back.

use etp_system_tests::proxy::{Direction, FaultProxy};
use etp_system_tests::{etp, etp_bin, seed, wait_for};
use maintenance::cluster::{topology_text, Cluster, FULL, MASTER, PART};
use propagator::confirmation::confirmation_from_record;
use propagator::exec::ExecTarget;
use propagator::node::client::Client;
use propagator::wire::ReplicaState;
use propagator::wire::{OperationRequest, ReadRequest};
use propagator::wire::{Request, Response};
use propagator::{Fnr, Isn, Record, Value};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

const CONVERGE: Duration = Duration::from_secs(90);

/// The master's content as the test knows it: every acknowledged commit.
type Model = BTreeMap<Isn, Record>;

fn record(id: u64, grp: i64, qty: i64) -> Record {
    let mut r = Record::new();
    r.insert("id".into(), Value::Int(id as i64));
    r.insert("grp".into(), Value::Int(grp));
    r.insert("qty".into(), Value::Int(qty));
    r.insert("note".into(), Value::Text(format!("n{id}")));
    r
}

/// The ops of one random transaction against `model` (not yet applied).
enum Op {
    Store(Isn, Record),
    Update(Isn, Record),
    Delete(Isn),
}

fn plan(rng: &mut fastrand::Rng, model: &Model, next: &mut u64) -> Vec<Op> {
    let mut ops = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..rng.u32(1..=4) {
        let live: Vec<Isn> = model
            .keys()
            .filter(|k| !seen.contains(*k))
            .copied()
            .collect();
        let roll = rng.u32(0..10);
        if roll < 5 || live.len() < 8 {
            let isn = Isn(*next);
            *next += 1;
            seen.insert(isn);
            ops.push(Op::Store(
                isn,
                record(isn.0, rng.i64(0..12), rng.i64(0..30)),
            ));
        } else if roll < 8 {
            let isn = live[rng.usize(..live.len())];
            seen.insert(isn);
            let mut p = Record::new();
            p.insert("grp".into(), Value::Int(rng.i64(0..12)));
            if rng.bool() {
                p.insert("qty".into(), Value::Int(rng.i64(0..30)));
            } else {
                // A record the predicate cannot evaluate on: documented as not selected.
                p.insert("qty".into(), Value::Null);
            }
            ops.push(Op::Update(isn, p));
        } else {
            let isn = live[rng.usize(..live.len())];
            seen.insert(isn);
            ops.push(Op::Delete(isn));
        }
    }
    ops
}

fn apply(model: &mut Model, ops: &[Op]) {
    for op in ops {
        match op {
            Op::Store(i, r) => {
                model.insert(*i, r.clone());
            }
            Op::Update(i, p) => {
                if let Some(r) = model.get_mut(i) {
                    propagator::record::apply_patch(r, p);
                }
            }
            Op::Delete(i) => {
                model.remove(i);
            }
        }
    }
}

/// Runs one transaction; Ok(true) committed, Ok(false) backed out (BT).
fn run_txn(c: &mut Client, ops: &[Op], id: &str, bt: bool) -> anyhow::Result<bool> {
    for op in ops {
        match op {
            Op::Store(i, r) => {
                c.store(MASTER, Some(*i), r.clone())?;
            }
            Op::Update(i, p) => c.update(MASTER, *i, p.clone())?,
            Op::Delete(i) => c.delete(MASTER, *i)?,
        }
    }
    if bt {
        c.bt()?;
        return Ok(false);
    }
    c.et(Some(id.to_string()))?;
    Ok(true)
}

/// After a lost connection: did transaction `id` commit? An empty ET with
/// the same id answers exactly (refused as already committed, or it takes
/// the id for an empty transaction).
fn committed(c: &mut Client, id: &str) -> anyhow::Result<bool> {
    match c.et(Some(id.to_string())) {
        Ok(_) => Ok(false),
        Err(e) if e.to_string().contains("already committed") => Ok(true),
        Err(e) => Err(e.into()),
    }
}

/// At quiescence: the master holds exactly the acknowledged commits, the
/// full replicate equals it, the partial equals select(project(master)), and
/// every confirmation names the master's last seq with the right digest.
fn verify_converged(cl: &Cluster, model: &Model, what: &str) {
    cl.wait_converged(CONVERGE)
        .unwrap_or_else(|e| panic!("{what}: not converged: {e}"));
    assert_eq!(
        &cl.dump(0, MASTER).expect("master"),
        model,
        "{what}: master == acknowledged commits"
    );
    cl.check_equal().unwrap_or_else(|e| panic!("{what}: {e}"));
    check_confirmations(cl);
}

fn check_confirmations(cl: &Cluster) {
    let status = cl.task_status().expect("task status");
    for (i, file, conf) in [(1usize, FULL, Fnr(21)), (2, PART, Fnr(31))] {
        let recs = cl.dump(i, conf).expect("confirmation dump");
        let c = confirmation_from_record(
            recs.get(&Isn(u64::from(file.0)))
                .expect("confirmation record"),
        )
        .expect("confirmation decodes");
        assert_eq!(
            c.seq, status.master_seq,
            "{} confirms the master's last seq",
            c.replicate
        );
        let files = cl.dump(i, file).expect("replicate dump");
        let mut meta = propagator::FileMeta::new(file);
        for (isn, r) in &files {
            meta.change(
                *isn,
                None,
                Some(&propagator::record::encode_record(r).expect("enc")),
            );
        }
        assert_eq!(
            (c.digest, c.count),
            (meta.digest, meta.count),
            "{}: confirmation digest",
            c.replicate
        );
    }
}

#[test]
fn end_to_end_full_and_partial_replicates_converge() {
    let s = seed("end_to_end");
    let t = tempfile::tempdir().expect("tempdir");
    let cl = Cluster::start(etp_bin(), t.path(), Some(1)).expect("cluster");
    let mut rng = fastrand::Rng::with_seed(s);
    let mut c = cl.master().client().expect("client");
    let (mut model, mut next) = (Model::new(), 1u64);
    for n in 0..400 {
        let ops = plan(&mut rng, &model, &mut next);
        let bt = rng.u32(0..15) == 0;
        if run_txn(&mut c, &ops, &format!("e{n}"), bt).expect("txn") {
            apply(&mut model, &ops);
        }
    }
    verify_converged(&cl, &model, &format!("seed {s}"));
    // One transaction at a time: the master's committing thread sent the
    // short tails itself (a batch the feeder would send after a wake-up),
    // and the replicates converged all the same.
    let status = cl.task_status().expect("status");
    for r in &status.replicates {
        assert!(
            r.batches_sent_by_committer > 0 && r.batches_sent_by_committer <= r.batches_sent,
            "{}: {} of {} batches sent by the committing thread",
            r.name,
            r.batches_sent_by_committer,
            r.batches_sent
        );
    }
    // Waiting for a confirmation is answered by the node, and times out naming the seq.
    let last = status.master_seq;
    let mut w = cl.master().client().expect("client");
    // Applied (visible) and confirmed (durable) alike.
    for name in ["items_full", "items_part"] {
        for applied in [true, false] {
            let ok = w.call(&Request::Operation(OperationRequest::WaitConfirmed {
                replicate: name.into(),
                seq: last,
                timeout_ms: 10_000,
                applied,
            }));
            assert!(matches!(ok, Ok(Response::Ok)), "{ok:?}");
        }
    }
    for (applied, verb) in [(false, "confirm"), (true, "apply")] {
        let late = w.call(&Request::Operation(OperationRequest::WaitConfirmed {
            replicate: "items_full".into(),
            seq: propagator::Seq(last.0 + 1000),
            timeout_ms: 50,
            applied,
        }));
        assert!(
            late.as_ref().is_err_and(|e| e
                .to_string()
                .contains(&format!("did not {verb} seq {}", last.0 + 1000))),
            "{late:?}"
        );
    }
    // The CLI reads the same over --node as offline (exec and dump are one interface).
    let out = etp(&[
        "file",
        "dump",
        "--node",
        &cl.nodes[1].addr.to_string(),
        "--file",
        "20",
    ]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        model.len()
    );
}

/// A transaction whose images exceed a link batch's byte limit (8 MiB)
/// is shipped whole: stores of 11 records of 0.9 MB, then an update of all
/// of them (before- and after-images: 20 MB), converge on both replicates.
#[test]
fn transactions_larger_than_a_batch_replicate_whole() {
    let t = tempfile::tempdir().expect("tempdir");
    let cl = Cluster::start(etp_bin(), t.path(), Some(1)).expect("cluster");
    let mut c = cl.master().client().expect("client");
    let mut model = Model::new();
    let big = |id: u64, fill: char| {
        let mut r = record(id, (id % 4) as i64, 1);
        r.insert("note".into(), Value::Text(fill.to_string().repeat(900_000)));
        r
    };
    let stores: Vec<Op> = (1..=11).map(|i| Op::Store(Isn(i), big(i, 'a'))).collect();
    assert!(run_txn(&mut c, &stores, "big-store", false).expect("store txn"));
    apply(&mut model, &stores);
    let updates: Vec<Op> = (1..=11).map(|i| Op::Update(Isn(i), big(i, 'b'))).collect();
    assert!(run_txn(&mut c, &updates, "big-update", false).expect("update txn"));
    apply(&mut model, &updates);
    verify_converged(&cl, &model, "large transactions");
}

#[test]
fn every_node_killed_at_random_points_loses_and_duplicates_nothing() {
    let s = seed("kill9_nodes");
    let t = tempfile::tempdir().expect("tempdir");
    let mut cl = Cluster::start(etp_bin(), t.path(), Some(1)).expect("cluster");
    let mut rng = fastrand::Rng::with_seed(s);
    let (mut model, mut next) = (Model::new(), 1u64);
    let mut n = 0u64;
    let mut c = cl.master().client().expect("client");
    const KILLS: usize = 21;
    for k in 0..KILLS {
        let victim = k % 3;
        let before_kill = rng.u32(5..40);
        for _ in 0..before_kill {
            let ops = plan(&mut rng, &model, &mut next);
            n += 1;
            if run_txn(&mut c, &ops, &format!("k{n}"), false).expect("txn on a live master") {
                apply(&mut model, &ops);
            }
        }
        if victim == 0 {
            // Kill the master in the middle of a transaction's ET.
            let ops = plan(&mut rng, &model, &mut next);
            n += 1;
            let id = format!("k{n}");
            let pid = cl.nodes[0].pid().expect("pid");
            let killer = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_micros(fastrand::u64(0..3000)));
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            });
            let outcome = run_txn(&mut c, &ops, &id, false);
            killer.join().expect("killer");
            cl.nodes[0].restart().expect("master restart");
            c = cl.master().client().expect("reconnect");
            let done = match outcome {
                Ok(_) => true,
                Err(_) => committed(&mut c, &id).expect("resolve the ambiguous commit"),
            };
            if done {
                apply(&mut model, &ops);
            }
        } else {
            cl.nodes[victim].kill();
            // Let the master commit while the replicate is down, then bring it back.
            for _ in 0..rng.u32(0..10) {
                let ops = plan(&mut rng, &model, &mut next);
                n += 1;
                if run_txn(&mut c, &ops, &format!("k{n}"), false).expect("txn") {
                    apply(&mut model, &ops);
                }
            }
            cl.nodes[victim].restart().expect("replicate restart");
        }
    }
    verify_converged(&cl, &model, &format!("after {KILLS} kills, seed {s}"));
}

/// A cluster whose replicate links go through fault proxies.
fn proxied(dir: &std::path::Path, restart: Option<u64>) -> (Cluster, Vec<FaultProxy>) {
    let mut proxies = Vec::new();
    let cl = Cluster::start_with(etp_bin(), dir, |addrs| {
        let mut routed = vec![addrs[0]];
        for a in &addrs[1..] {
            let p = FaultProxy::start(*a).expect("proxy");
            routed.push(p.addr());
            proxies.push(p);
        }
        topology_text(&routed, restart)
    })
    .expect("cluster");
    (cl, proxies)
}

fn commit_some(
    c: &mut Client,
    rng: &mut fastrand::Rng,
    model: &mut Model,
    next: &mut u64,
    n: u32,
    tag: &str,
) {
    for i in 0..n {
        let ops = plan(rng, model, next);
        if run_txn(c, &ops, &format!("{tag}{i}"), false).expect("txn") {
            apply(model, &ops);
        }
    }
}

#[test]
fn link_faults_with_a_restart_interval_heal_without_intervention() {
    let s = seed("link_faults_restart");
    let t = tempfile::tempdir().expect("tempdir");
    let (cl, proxies) = proxied(t.path(), Some(1));
    let mut rng = fastrand::Rng::with_seed(s);
    let (mut model, mut next) = (Model::new(), 1u64);
    let mut c = cl.master().client().expect("client");
    commit_some(&mut c, &mut rng, &mut model, &mut next, 50, "a");
    // Cut every link.
    for p in &proxies {
        p.cut();
    }
    commit_some(&mut c, &mut rng, &mut model, &mut next, 50, "b");
    // Stall them (held, not dropped), then let them go.
    for p in &proxies {
        p.stall();
    }
    commit_some(&mut c, &mut rng, &mut model, &mut next, 50, "c");
    for p in &proxies {
        p.resume();
    }
    // Reset mid-frame, in both directions.
    proxies[0].reset_after(Direction::ClientToServer, 700);
    proxies[1].reset_after(Direction::ServerToClient, 30);
    commit_some(&mut c, &mut rng, &mut model, &mut next, 80, "d");
    // Link down for a while: connections refused.
    for p in &proxies {
        p.refuse();
        p.cut();
    }
    commit_some(&mut c, &mut rng, &mut model, &mut next, 30, "e");
    for p in &proxies {
        p.accept_again();
    }
    verify_converged(&cl, &model, &format!("after link faults, seed {s}"));
    assert!(
        proxies.iter().all(|p| p.accepted() >= 3),
        "the links were re-established"
    );
    assert!(
        proxies.iter().any(|p| p.resets() >= 1),
        "a mid-frame reset happened"
    );
}

#[test]
fn without_a_restart_interval_a_lost_link_stops_and_task_restart_heals_it() {
    let s = seed("link_faults_no_restart");
    let t = tempfile::tempdir().expect("tempdir");
    let (cl, proxies) = proxied(t.path(), None);
    let mut rng = fastrand::Rng::with_seed(s);
    let (mut model, mut next) = (Model::new(), 1u64);
    let mut c = cl.master().client().expect("client");
    commit_some(&mut c, &mut rng, &mut model, &mut next, 30, "a");
    cl.wait_converged(CONVERGE).expect("converged first");
    proxies[1].cut();
    commit_some(&mut c, &mut rng, &mut model, &mut next, 30, "b");
    let status = wait_for("the partial's feeder to stop", CONVERGE, || {
        let st = cl.task_status().ok()?;
        let part = st.replicates.iter().find(|r| r.name == "items_part")?;
        let full = st.replicates.iter().find(|r| r.name == "items_full")?;
        (part.state == ReplicaState::Offline && full.confirmed_seq == st.master_seq).then_some(st)
    });
    let part = status
        .replicates
        .iter()
        .find(|r| r.name == "items_part")
        .expect("part");
    assert!(part.phase.contains("link lost"), "{}", part.phase);
    assert!(
        part.confirmed_seq < status.master_seq,
        "the stopped replicate lags"
    );
    // It stays stopped: more commits reach only the full replicate.
    commit_some(&mut c, &mut rng, &mut model, &mut next, 20, "c");
    let st = cl.task_status().expect("status");
    let part = st
        .replicates
        .iter()
        .find(|r| r.name == "items_part")
        .expect("part");
    assert_eq!(part.state, ReplicaState::Offline, "{}", part.phase);
    // `etp task status` shows it to an operator, exit 0 (stopped is not an error).
    let out = etp(&[
        "task",
        "status",
        "--node",
        &cl.master().addr.to_string(),
        "--json",
    ]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("link lost"));
    let out = etp(&["task", "restart", "--node", &cl.master().addr.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    cl.wait_converged(CONVERGE)
        .expect("converged after task restart");
    cl.check_equal().expect("equal");
}

fn node_info(addr: SocketAddr) -> propagator::wire::NodeInfo {
    let mut c = Client::connect(addr).expect("connect");
    match c.call(&Request::Read(ReadRequest::Info)).expect("info") {
        Response::Info(i) => i,
        other => panic!("{other:?}"),
    }
}

/// Sends raw bytes and returns whatever the node answers before it closes.
/// Sends `bytes` on a TLS connection of their own, ends the session's
/// sending side, and returns what the node answered before it closed.
fn raw(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = etp_system_tests::tls_connect(addr);
    let _ = s.write_all(bytes);
    s.conn.send_close_notify();
    let _ = s.flush();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

#[test]
fn bad_frames_close_only_their_connection_and_lose_nothing() {
    let t = tempfile::tempdir().expect("tempdir");
    let cl = Cluster::start(etp_bin(), t.path(), Some(1)).expect("cluster");
    let addr = cl.master().addr;
    let mut c = cl.master().client().expect("client");
    let mut model = Model::new();
    let mut next = 1;
    let mut rng = fastrand::Rng::with_seed(7);
    commit_some(&mut c, &mut rng, &mut model, &mut next, 20, "a");
    let before = node_info(addr).last_lsn;
    // Garbage in a valid length prefix: answered with an error, then closed.
    let mut g = 9u32.to_be_bytes().to_vec();
    g.extend_from_slice(b"\xc1garbage!");
    let answer = raw(addr, &g);
    assert!(!answer.is_empty(), "an undecodable request gets a reason");
    // An oversized length prefix, a truncated frame, pure noise.
    raw(addr, &(1u32 << 31).to_be_bytes());
    let mut cut = 100u32.to_be_bytes().to_vec();
    cut.extend_from_slice(&[0x80; 10]);
    raw(addr, &cut);
    raw(addr, &[0xff; 3]);
    // A frame from another protocol version.
    let mut other = Vec::new();
    let body = {
        #[derive(serde::Serialize)]
        struct Env {
            v: u16,
            msg: Request,
        }
        rmp_serde::to_vec_named(&Env {
            v: 999,
            msg: Request::Read(ReadRequest::Info),
        })
        .expect("enc")
    };
    other.extend_from_slice(&(body.len() as u32).to_be_bytes());
    other.extend_from_slice(&body);
    let answer = String::from_utf8_lossy(&raw(addr, &other)).into_owned();
    assert!(answer.contains("version 999"), "{answer:?}");
    // A connection dropped mid-transaction is backed out.
    {
        let mut d = Client::connect(addr).expect("connect");
        d.store(MASTER, Some(Isn(999_999)), record(999_999, 4, 50))
            .expect("store");
    }
    // The node keeps serving, nothing committed is lost, nothing new was applied.
    let info = wait_for("node still serving", Duration::from_secs(10), || {
        Some(node_info(addr))
    });
    assert_eq!(info.last_lsn, before, "bad frames applied nothing");
    commit_some(&mut c, &mut rng, &mut model, &mut next, 5, "b");
    assert_eq!(cl.dump(0, MASTER).expect("master"), model);
    cl.wait_converged(CONVERGE).expect("converged");
    cl.check_equal().expect("equal");
}

#[test]
fn a_malformed_topology_is_refused_and_changes_nothing() {
    let t = tempfile::tempdir().expect("tempdir");
    let cl = Cluster::start(etp_bin(), t.path(), Some(1)).expect("cluster");
    let addr = cl.master().addr.to_string();
    let good = std::fs::read_to_string(t.path().join("topology.toml")).expect("topology");
    let cases = [
        (good.replace("grp % 4 == 0", "grp % % 4"), "items_part"),
        (good.replace("qty > 10", "weight > 10"), "weight"),
        (good.replace("database = 3", "database = 7"), "database 7"),
        (
            good.replace(
                "fields = [\"id\", \"grp\", \"qty\"]",
                "fields = [\"id\", \"colour\"]",
            ),
            "colour",
        ),
        ("this is = not [toml".to_string(), "topology"),
    ];
    for (i, (text, needle)) in cases.iter().enumerate() {
        let f = t.path().join(format!("bad{i}.toml"));
        std::fs::write(&f, text).expect("write");
        let out = etp(&["admin", "apply", "--node", &addr, f.to_str().expect("utf8")]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(needle), "{needle:?} not in {err}");
    }
    // The node's topology is still the good one.
    let out = etp(&["admin", "export", "--node", &addr]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), good);
}

#[test]
fn a_replicate_record_changed_offline_is_caught_by_the_digest_check() {
    let t = tempfile::tempdir().expect("tempdir");
    let mut cl = Cluster::start(etp_bin(), t.path(), Some(1)).expect("cluster");
    let mut c = cl.master().client().expect("client");
    let mut rng = fastrand::Rng::with_seed(11);
    let (mut model, mut next) = (Model::new(), 1u64);
    commit_some(&mut c, &mut rng, &mut model, &mut next, 30, "a");
    cl.wait_converged(CONVERGE).expect("converged");
    // Stop the full replicate's node cleanly and edit one record behind the engine.
    cl.nodes[1].stop().expect("stop");
    let (&isn, _) = model.iter().next().expect("a record");
    {
        let data = &cl.nodes[1].data;
        let engine = propagator::Database::engine_of(data).expect("a database");
        let store =
            propagator::store::PageStore::open(&data.join("store"), engine, 1 << 20, 1 << 20)
                .expect("store");
        let applied = store.applied_lsn().expect("lsn");
        let bytes = propagator::record::encode_record(&record(isn.0, 1, 1)).expect("enc");
        store
            .apply(&propagator::store::StoreBatch {
                applied,
                records: vec![(FULL, isn, Some(bytes))],
                ..Default::default()
            })
            .expect("tamper");
        store.flush().expect("flush");
    }
    cl.nodes[1].restart().expect("restart");
    commit_some(&mut c, &mut rng, &mut model, &mut next, 5, "b");
    let st = wait_for("the full replicate in error", CONVERGE, || {
        let st = cl.task_status().ok()?;
        let full = st.replicates.iter().find(|r| r.name == "items_full")?;
        (full.state == ReplicaState::Error).then_some(st)
    });
    let full = st
        .replicates
        .iter()
        .find(|r| r.name == "items_full")
        .expect("full");
    let reason = full.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("items_full") && reason.contains("digest") && reason.contains("seq"),
        "{reason}"
    );
    // The partial replicate is not held back.
    wait_for("the partial to converge", CONVERGE, || {
        let st = cl.task_status().ok()?;
        let part = st.replicates.iter().find(|r| r.name == "items_part")?;
        (part.confirmed_seq == st.master_seq).then_some(())
    });
    // `etp task status` exits 1: a replicate is in error.
    let out = etp(&["task", "status", "--node", &cl.master().addr.to_string()]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn a_master_holding_records_before_its_topology_is_loaded_then_fed() {
    let t = tempfile::tempdir().expect("tempdir");
    // Database 1 exists with records in file 10 before it becomes a master.
    let d1 = t.path().join("db1");
    let d1s = d1.to_str().expect("utf8");
    assert!(etp(&["db", "init", "--data", d1s, "--dbid", "1"])
        .status
        .success());
    assert!(
        etp(&["file", "create", "--data", d1s, "--file", "10", "--name", "items"])
            .status
            .success()
    );
    let mut input = String::new();
    for i in 1..=300 {
        input.push_str(&format!(
            "{{\"op\":\"store\",\"file\":10,\"isn\":{i},\"fields\":{{\"id\":{i},\"grp\":{},\"qty\":{}}}}}\n",
            i % 8,
            i % 50
        ));
    }
    input.push_str("{\"op\":\"et\"}\n");
    assert!(
        etp_system_tests::etp_stdin(&["exec", "--data", d1s], &input)
            .status
            .success()
    );
    let cl = Cluster::start(etp_bin(), t.path(), None).expect("cluster");
    // The automatic policy loads both replicates (feeding them from seq 1
    // would miss the 300 records); the reason is on record.
    let st = wait_for("both replicates loaded", CONVERGE, || {
        let st = cl.task_status().ok()?;
        st.replicates
            .iter()
            .all(|r| r.state == ReplicaState::Online && r.last_load.is_some())
            .then_some(st)
    });
    for r in &st.replicates {
        let l = r.last_load.as_ref().expect("load summary");
        assert_eq!(l.source, "master");
        assert_eq!(l.resumed_from, Isn(1));
    }
    let mut c = cl.master().client().expect("client");
    let mut rng = fastrand::Rng::with_seed(5);
    let mut model = Model::new();
    let mut next = 1000u64;
    commit_some(&mut c, &mut rng, &mut model, &mut next, 20, "after");
    cl.wait_converged(CONVERGE).expect("converged");
    cl.check_equal().expect("equal");
    assert_eq!(
        cl.dump(1, FULL).expect("full").len() as u64,
        300 + model.len() as u64
    );
    let errors = etp(&[
        "replicate",
        "errors",
        "items_part",
        "--node",
        &cl.master().addr.to_string(),
    ]);
    assert!(
        String::from_utf8_lossy(&errors.stdout).contains("initial load"),
        "{}",
        String::from_utf8_lossy(&errors.stdout)
    );
}

/// The replicate's side of the link protocol, spoken by hand: a batch is
/// answered once applied (its durable seq trailing), its sync is reported
/// unasked, and what a report calls durable survives a kill -9 of the
/// replicate's node.
#[test]
fn a_batch_is_answered_once_applied_and_its_reported_sync_survives_kill_9() {
    use propagator::wire::{Confirmation, LinkRequest, ReplChange, TaskAction};
    let t = tempfile::tempdir().expect("tempdir");
    let mut cl = Cluster::start(etp_bin(), t.path(), None).expect("cluster");
    // Streaming, its (empty) initial load over: a load left in progress
    // would refuse the batches below. (Converged alone is true at once on
    // an empty master.)
    wait_for("items_full streaming", CONVERGE, || {
        let st = cl.task_status().ok()?;
        st.replicates
            .iter()
            .any(|r| {
                r.name == "items_full" && r.state == ReplicaState::Online && r.phase == "streaming"
            })
            .then_some(())
    });
    // The master's task stops: this test plays the master on the link.
    let mut m = cl.master().client().expect("client");
    let r = m.call(&Request::Operation(OperationRequest::TaskControl {
        master: Some(MASTER),
        action: TaskAction::Stop,
    }));
    assert!(r.is_ok(), "{r:?}");
    let open = Request::Link(LinkRequest::LinkOpen {
        replicate: "items_full".into(),
        file: FULL,
        confirmation: Fnr(21),
        master_db: propagator::DbId(1),
        master: MASTER,
    });
    // As the master's node: a link needs database 1's certificate.
    let as_master = propagator::net::Transport::Tls(etp_system_tests::credentials("db1"));
    let mut c = Client::connect_with(cl.nodes[1].addr, &as_master).expect("connect");
    let Ok(Response::Link(state)) = c.call(&open) else {
        panic!("LinkOpen refused");
    };
    let at = state.confirmation.as_ref().map_or(0, |c| c.seq.0);
    // Nothing applied on this connection: nothing to sync.
    let r = c.call(&Request::Link(LinkRequest::LinkSync {
        seq: propagator::Seq(at),
    }));
    assert!(
        r.as_ref()
            .is_err_and(|e| e.to_string().contains("no batch was applied")),
        "{r:?}"
    );
    let enc = |id: u64| {
        serde_bytes::ByteBuf::from(
            propagator::record::encode_record(&record(id, 0, 1)).expect("encode"),
        )
    };
    let (mut count, mut digest) = (state.count, state.digest);
    let last = at + 3;
    for s in at + 1..=last {
        let isn = Isn(900_000 + s);
        let mut meta = propagator::FileMeta::new(FULL);
        meta.count = count;
        meta.digest = digest;
        meta.change(isn, None, Some(enc(s).as_slice()));
        (count, digest) = (meta.count, meta.digest);
        let req = Request::Link(LinkRequest::LinkApply {
            follows: propagator::Seq(s - 1),
            changes: vec![ReplChange {
                isn,
                before: None,
                after: Some(enc(s)),
            }],
            confirmation: Confirmation {
                replicate: "items_full".into(),
                master_db: propagator::DbId(1),
                master: MASTER,
                seq: propagator::Seq(s),
                incarnation: 1,
                master_time_us: 1,
                digest,
                count,
                applied_us: 0,
                loaded_by: None,
            },
            txn_ends: Vec::new(),
        });
        c.send(&req).expect("send");
    }
    // Three answers, in order, each applied at its seq and durable at most
    // there; and reports of the syncs, the last one at the last seq.
    let mut applied = Vec::new();
    let mut reported = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while applied.len() < 3 || reported < last {
        assert!(
            std::time::Instant::now() < deadline,
            "no report of seq {last}"
        );
        match c.recv().expect("answer") {
            Response::Applied {
                applied_seq,
                durable_seq,
                count: n,
                ..
            } => {
                assert!(durable_seq <= applied_seq, "{durable_seq} > {applied_seq}");
                assert!(durable_seq.0 >= reported, "durable seqs move forward");
                applied.push((applied_seq.0, n));
            }
            Response::Synced { durable_seq } => {
                assert!(durable_seq.0 >= reported, "reports move forward");
                assert!(
                    applied.iter().any(|(s, _)| *s == durable_seq.0),
                    "reported {durable_seq} before it was answered"
                );
                reported = durable_seq.0;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        applied.iter().map(|a| a.0).collect::<Vec<_>>(),
        vec![at + 1, at + 2, at + 3]
    );
    assert_eq!(applied[2].1, count);
    // Asked, the sync is answered at once (it happened).
    c.send(&Request::Link(LinkRequest::LinkSync {
        seq: propagator::Seq(last),
    }))
    .expect("send");
    match c.recv().expect("answer") {
        Response::Synced { durable_seq } => assert_eq!(durable_seq.0, last),
        other => panic!("unexpected {other:?}"),
    }
    // What was reported durable is there after a kill -9.
    drop(c);
    cl.nodes[1].kill();
    cl.nodes[1].restart().expect("restart");
    let recs = cl.dump(1, Fnr(21)).expect("confirmation dump");
    let conf = confirmation_from_record(recs.get(&Isn(u64::from(FULL.0))).expect("record"))
        .expect("confirmation decodes");
    assert_eq!(conf.seq.0, last);
    assert_eq!(conf.count, count);
    let full = cl.dump(1, FULL).expect("replicate dump");
    for s in at + 1..=last {
        assert!(full.contains_key(&Isn(900_000 + s)), "seq {s}'s record");
    }
}

/// Installing a topology restarts the master's task. Each new feeder starts
/// from what the old one knew of its replicate's expected state: a partial
/// replicate's is not rolled forward again from its anchor (the whole log
/// since the stream began, here), and the digests still check out.
#[test]
fn a_new_topology_keeps_what_the_feeders_knew_of_their_replicates() {
    let s = seed("new_topology");
    let t = tempfile::tempdir().expect("tempdir");
    let cl = Cluster::start(etp_bin(), t.path(), Some(1)).expect("cluster");
    let mut rng = fastrand::Rng::with_seed(s);
    let mut c = cl.master().client().expect("client");
    let (mut model, mut next) = (Model::new(), 1u64);
    commit_some(&mut c, &mut rng, &mut model, &mut next, 60, "a");
    verify_converged(&cl, &model, &format!("seed {s}"));
    let before = cl.task_status().expect("status");
    let text = std::fs::read_to_string(t.path().join("topology.toml")).expect("topology");
    let r = propagator::node::apply::apply_topology_blocking(&text);
    assert!(r.is_ok(), "{r:?}");
    // New feeders (their counts start again) streaming once more.
    let after = wait_for("the new feeders streaming", CONVERGE, || {
        let st = cl.task_status().ok()?;
        st.replicates
            .iter()
            .all(|r| r.state == ReplicaState::Online && r.connects >= 1 && r.batches_sent == 0)
            .then_some(st)
    });
    for r in &after.replicates {
        assert_eq!(
            r.expected_rolled_forward,
            0,
            "{}: {} log records read again on connect (before the new topology: {:?})",
            r.name,
            r.expected_rolled_forward,
            before
                .replicates
                .iter()
                .map(|b| (&b.name, b.confirmed_seq))
                .collect::<Vec<_>>()
        );
    }
    commit_some(&mut c, &mut rng, &mut model, &mut next, 20, "b");
    verify_converged(&cl, &model, &format!("seed {s}, after the new topology"));
}
