//! The maintenance utility against real node processes: policy modes,
//! replicate states, online initial load and reinit (resumed after a kill),
//! verification, confirmation edits with gap records, log cleanup, stalled
//! detection.

use etp_system_tests::{etp, etp_bin, ok, tamper, wait_for};
use maintenance::cluster::{topology_text, Cluster, FULL, MASTER, PART};
use propagator::node::client::Client;
use propagator::record::encode_record;
use propagator::wire::{Command, ReplicateReport, Request, Response};
use propagator::wire::{Consistency, Health, ReplicaState};
use propagator::wire::{OperationRequest, ReadRequest};
use propagator::{Fnr, Isn, Record, Seq, Value};
use serde_bytes::ByteBuf;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(120);
/// The replicate the init test adds (on database 3).
const NEW: Fnr = Fnr(40);

fn rec(id: u64, grp: i64, qty: i64) -> Record {
    let mut r = Record::new();
    r.insert("id".into(), Value::Int(id as i64));
    r.insert("grp".into(), Value::Int(grp));
    r.insert("qty".into(), Value::Int(qty));
    r.insert("note".into(), Value::Text(format!("n{id}")));
    r
}

fn store(isn: u64, r: &Record) -> Command {
    Command::Store {
        file: MASTER,
        isn: Some(Isn(isn)),
        fields: ByteBuf::from(encode_record(r).expect("encode")),
    }
}

/// Stores isns `from..from+n` on the master, `per` records a transaction.
fn bulk(c: &mut Client, from: u64, n: u64, per: u64) {
    let mut i = from;
    while i < from + n {
        let end = (i + per).min(from + n);
        let mut cmds: Vec<Command> = (i..end)
            .map(|k| store(k, &rec(k, (k % 12) as i64, (k % 30) as i64)))
            .collect();
        cmds.push(Command::Et { id: None });
        match c.batch(cmds).expect("batch") {
            Response::Committed(_) => {}
            other => panic!("bulk load failed: {other:?}"),
        }
        i = end;
    }
}

/// Commits small transactions (updates, stores, deletes) until stopped.
struct Writer {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(addr: SocketAddr, existing: u64, fresh_from: u64) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let (s, d) = (stop.clone(), done.clone());
        let handle = std::thread::spawn(move || {
            let mut c = Client::connect(addr).expect("writer connects");
            let mut rng = fastrand::Rng::with_seed(7);
            let mut next = fresh_from;
            let mut deleted = std::collections::BTreeSet::new();
            while !s.load(Ordering::Relaxed) {
                let k = rng.u64(1..=existing);
                let mut cmds = Vec::new();
                if !deleted.contains(&k) {
                    if rng.u32(0..10) == 0 {
                        deleted.insert(k);
                        cmds.push(Command::Delete {
                            file: MASTER,
                            isn: Isn(k),
                        });
                    } else {
                        let mut p = Record::new();
                        p.insert("qty".into(), Value::Int(rng.i64(0..30)));
                        p.insert("grp".into(), Value::Int(rng.i64(0..12)));
                        cmds.push(Command::Update {
                            file: MASTER,
                            isn: Isn(k),
                            fields: ByteBuf::from(encode_record(&p).expect("encode")),
                        });
                    }
                }
                cmds.push(store(next, &rec(next, rng.i64(0..12), rng.i64(0..30))));
                next += 1;
                cmds.push(Command::Et { id: None });
                match c.batch(cmds) {
                    Ok(Response::Committed(_)) => {
                        d.fetch_add(1, Ordering::Relaxed);
                    }
                    // A record an earlier writer deleted: that transaction
                    // is backed out; go on.
                    Err(e) if e.to_string().contains("does not exist") => {
                        deleted.insert(k);
                        let _ = c.batch(vec![Command::Bt]);
                    }
                    other => panic!("writer transaction failed: {other:?}"),
                }
            }
        });
        Writer {
            stop,
            done,
            handle: Some(handle),
        }
    }

    fn committed(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.join().expect("writer thread");
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn reports(addr: SocketAddr) -> Vec<(Seq, ReplicateReport)> {
    let mut c = Client::connect(addr).expect("connect");
    match c
        .call(&Request::Operation(OperationRequest::ReplicateStatus))
        .expect("status")
    {
        Response::Tasks(t) => t
            .into_iter()
            .flat_map(|t| {
                let m = t.master_seq;
                t.replicates.into_iter().map(move |r| (m, r))
            })
            .collect(),
        other => panic!("unexpected {other:?}"),
    }
}

fn report(addr: SocketAddr, name: &str) -> (Seq, ReplicateReport) {
    reports(addr)
        .into_iter()
        .find(|(_, r)| r.name == name)
        .unwrap_or_else(|| panic!("no replicate {name}"))
}

fn wait_current(addr: SocketAddr, name: &str) -> ReplicateReport {
    wait_for(&format!("{name} online and current"), LIMIT, || {
        let (m, r) = report(addr, name);
        (r.state == ReplicaState::Online && r.confirmed_seq == m).then_some(r)
    })
}

fn node_arg(cl: &Cluster) -> String {
    cl.master().addr.to_string()
}

/// The example topology (restart interval 1 s) plus a full replicate
/// `items_new` on database 3, loaded in chunks of `chunk` records.
fn with_new_replicate(addrs: &[SocketAddr], chunk: u32) -> String {
    let t = topology_text(addrs, Some(1));
    let t = t.replace(
        "restart_interval_s = 1",
        &format!("restart_interval_s = 1\nload_chunk = {chunk}"),
    );
    format!(
        "{t}\n[[replicate]]\nname = \"items_new\"\nmaster_database = 1\nmaster = 10\ndatabase = 3\nfile = 40\nconfirmation = 41\n"
    )
}

#[test]
fn init_under_write_load_resumes_after_the_loading_node_is_killed_and_ends_equal() {
    const N: u64 = 200_000;
    let t = tempfile::tempdir().expect("tempdir");
    let (mut cl, node) = with_items_new_waiting(t.path(), N, 4000);
    let master = cl.master().addr;

    let writer = Writer::start(master, N, 1_000_000);
    init_no_wait(&node);
    // Kill the node being loaded part-way through.
    let at = wait_for("a quarter of the load", LIMIT, || {
        let (_, r) = report(master, "items_new");
        let l = r.load?;
        (l.chunks_this_run >= 12).then_some(l.chunks_this_run)
    });
    cl.nodes[2].kill();
    cl.nodes[2].restart().expect("restart node 3");
    // Under the manual policy the lost link stops the feeder; rerunning
    // init picks the load up where the replicate's progress record says.
    wait_for("items_new stopped by the lost link", LIMIT, || {
        let (_, r) = report(master, "items_new");
        (r.state != ReplicaState::Initializing || r.load.is_none()).then_some(())
    });
    init_no_wait(&node);
    // Then the loading master's node, part-way through the second run.
    let second = wait_for("the resumed load under way", LIMIT, || {
        let (_, r) = report(master, "items_new");
        let l = r.load?;
        (l.chunks_this_run >= 5 && l.resumed_from > Isn(1)).then_some(l.resumed_from)
    });
    assert!(writer.committed() > 0, "the master kept committing");
    writer.finish();
    cl.nodes[0].kill();
    cl.nodes[0].restart().expect("restart the master's node");
    let writer = Writer::start(master, N, 2_000_000);
    // Its feeder picks the load up by itself at start (the order and the
    // replicate's progress are both durable); init follows it to the end.
    let out = ok(&etp(&["replicate", "init", "items_new", "--node", &node]));
    assert!(out.contains("resumed from isn"), "{out}");
    let (_, r) = report(master, "items_new");
    let l = r.last_load.expect("load summary");
    assert!(
        l.resumed_from > second,
        "the third run resumed after the second: {l:?} (first run had {at} chunks, the second resumed from {second})"
    );
    assert!(
        l.chunks_last_run < l.chunks,
        "the last run loaded fewer chunks than the whole load: {l:?}"
    );
    assert!(l.snapshot > Seq(0));
    writer.finish();
    // Everything else was stopped by the kill too (manual policy).
    ok(&etp(&["task", "start", "--node", &node]));
    wait_current(master, "items_new");
    wait_current(master, "items_part");
    wait_current(master, "items_full");
    let m = cl.dump(0, MASTER).expect("master");
    let n = cl.dump(2, NEW).expect("new replicate");
    assert_eq!(n.len(), m.len());
    assert!(n == m, "items_new equals the master");
    ok(&etp(&["replicate", "verify", "items_new", "--node", &node]));
    ok(&etp(&["policy", "set", "automatic", "--node", &node]));
}

/// The `done` event of a `--json` command's output.
fn done_event(out: &str) -> serde_json::Value {
    out.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .find(|v: &serde_json::Value| v["event"] == "done")
        .expect("a done event")
}

/// `etp admin apply` of the topology file `topo` through the master's node.
fn admin_apply(node: &str, topo: &std::path::Path) {
    ok(&etp(&[
        "admin",
        "apply",
        "--node",
        node,
        topo.to_str().expect("utf8"),
    ]));
}

/// `etp replicate init items_new --no-wait` through the master's node.
fn init_no_wait(node: &str) {
    ok(&etp(&[
        "replicate",
        "init",
        "items_new",
        "--node",
        node,
        "--no-wait",
    ]));
}

/// A master database of `n` records (isns 1..=n) in `dir`, made with
/// `etp exec` before it becomes a master: a new replicate needs a load.
fn master_of(dir: &std::path::Path, n: u64) {
    let d = dir.to_str().expect("utf8");
    ok(&etp(&["db", "init", "--data", d, "--dbid", "1"]));
    ok(&etp(&[
        "file", "create", "--data", d, "--file", "10", "--name", "items",
    ]));
    let mut input = String::with_capacity(n as usize * 90);
    for k in 1..=n {
        input.push_str(&format!(
            "{{\"op\":\"store\",\"file\":10,\"isn\":{k},\"fields\":{{\"id\":{k},\"grp\":{},\"qty\":{},\"note\":\"n{k}\"}}}}\n",
            k % 12,
            k % 30
        ));
        if k % 10_000 == 0 {
            input.push_str("{\"op\":\"et\"}\n");
        }
    }
    input.push_str("{\"op\":\"et\"}\n");
    ok(&etp_system_tests::etp_stdin(&["exec", "--data", d], &input));
}

/// A cluster under `dir` whose master held `n` records before it became
/// a master, with the example's two replicates loaded, the manual policy
/// set (nothing loads or restarts by itself), and a new full replicate
/// `items_new` (loaded in chunks of `chunk`) waiting for its load. Also
/// the master's address as the CLI takes it.
fn with_items_new_waiting(dir: &std::path::Path, n: u64, chunk: u32) -> (Cluster, String) {
    master_of(&dir.join("db1"), n);
    let cl = Cluster::start(etp_bin(), dir, Some(1)).expect("cluster");
    let node = node_arg(&cl);
    // The automatic policy loads the example's two replicates.
    cl.wait_converged(LIMIT).expect("converged");
    wait_for("both replicates loaded", LIMIT, || {
        reports(cl.master().addr)
            .iter()
            .all(|(_, r)| r.last_load.is_some() && r.state == ReplicaState::Online)
            .then_some(())
    });
    ok(&etp(&["policy", "set", "manual", "--node", &node]));
    let addrs: Vec<SocketAddr> = cl.nodes.iter().map(|n| n.addr).collect();
    let topo = dir.join("topology2.toml");
    std::fs::write(&topo, with_new_replicate(&addrs, chunk)).expect("write topology");
    admin_apply(&node, &topo);
    let master = cl.master().addr;
    let r = wait_for("items_new waiting for its load", LIMIT, || {
        let (_, r) = report(master, "items_new");
        (r.state == ReplicaState::Offline && r.phase.contains("initial load")).then_some(r)
    });
    assert!(r.phase.contains("etp replicate init"), "{}", r.phase);
    (cl, node)
}

/// kill -9 of either side at random points of a load into an empty
/// replicate (every chunk a bulk chunk: written to the page store, then
/// named by its log entry), ten times over: each run resumes at or after
/// where the one before had got, the replicate never reads as loaded
/// before the last chunk proves it, and it ends equal to the master.
#[test]
fn a_bulk_load_killed_ten_times_on_either_side_resumes_and_ends_equal() {
    const N: u64 = 30_000;
    let t = tempfile::tempdir().expect("tempdir");
    let (mut cl, node) = with_items_new_waiting(t.path(), N, 100);
    let master = cl.master().addr;
    let want = cl.dump(0, MASTER).expect("master");
    assert_eq!(want.len() as u64, N);
    let mut rng = fastrand::Rng::with_seed(etp_system_tests::seed("bulk_load_kill9"));
    let first_side = rng.usize(0..2);
    let mut floor = Isn(1);
    let mut resumed = 0;
    let mut cycles = 0;
    for cycle in 0..10 {
        if report(master, "items_new").1.state == ReplicaState::Online {
            // Finished by a run the master's feeder resumed by itself.
            break;
        }
        cycles += 1;
        // A resumed run (the master's feeder picks a durable load order up
        // by itself after its node restarts) is followed; a stopped one is
        // started again from the replicate's progress record.
        init_no_wait(&node);
        let after = rng.u64(1..8);
        let l = wait_for("the load under way (or done)", LIMIT, || {
            let (_, r) = report(master, "items_new");
            if r.state == ReplicaState::Online {
                return Some(None);
            }
            let l = r.load?;
            (l.chunks_this_run >= after).then_some(Some(l))
        });
        let Some(l) = l else {
            break;
        };
        assert!(
            l.resumed_from >= floor,
            "cycle {cycle}: resumed from {} after an earlier run had resumed from {floor}",
            l.resumed_from
        );
        if l.resumed_from > Isn(1) {
            resumed += 1;
        }
        floor = l.resumed_from;
        let side = if (cycle + first_side).is_multiple_of(2) {
            0
        } else {
            2
        };
        cl.nodes[side].kill();
        cl.nodes[side].restart().expect("restart");
        if side == 2 {
            // The lost link stops the feeder (manual policy).
            wait_for("items_new stopped by the lost link", LIMIT, || {
                let (_, r) = report(master, "items_new");
                (r.state != ReplicaState::Initializing || r.load.is_none()).then_some(())
            });
        }
        // Nothing the last chunk has not proved reads as loaded.
        let (_, r) = report(master, "items_new");
        if r.state == ReplicaState::Online {
            assert_eq!(
                cl.dump(2, NEW).expect("new replicate"),
                want,
                "cycle {cycle}"
            );
        }
    }
    assert!(
        cycles >= 5 && resumed + 1 >= cycles,
        "{cycles} runs, of which {resumed} resumed a load"
    );
    if report(master, "items_new").1.state != ReplicaState::Online {
        init_no_wait(&node);
    }
    wait_for("items_new loaded", LIMIT, || {
        let (_, r) = report(master, "items_new");
        assert!(r.state != ReplicaState::Error, "{r:?}");
        (r.state == ReplicaState::Online).then_some(())
    });
    ok(&etp(&["task", "start", "--node", &node]));
    wait_current(master, "items_new");
    assert!(cl.dump(2, NEW).expect("new replicate") == want);
    ok(&etp(&["replicate", "verify", "items_new", "--node", &node]));
    ok(&etp(&["policy", "set", "automatic", "--node", &node]));
}

/// kill -9 of either side at random points of a full reinit of a replicate
/// that holds records — the entry that begins it empties the replicate, so
/// every chunk after is a bulk chunk — ten times over: nothing the last
/// chunk has not proved reads as loaded, and it ends equal to the master.
#[test]
fn a_full_reinit_killed_ten_times_on_either_side_empties_the_replicate_and_ends_equal() {
    const N: u64 = 30_000;
    let t = tempfile::tempdir().expect("tempdir");
    let (mut cl, node) = with_items_new_waiting(t.path(), N, 100);
    let master = cl.master().addr;
    init_no_wait(&node);
    wait_for("items_new loaded", LIMIT, || {
        let (_, r) = report(master, "items_new");
        (r.state == ReplicaState::Online).then_some(())
    });
    assert_eq!(
        cl.dump(2, NEW).expect("loaded"),
        cl.dump(0, MASTER).expect("master")
    );
    // The replicate's task stopped, the master moves on: 100 records gone,
    // 50 new. Only a reinit that replaces what the replicate holds leaves
    // the 100 out.
    ok(&etp(&["task", "stop", "--node", &node]));
    let mut c = cl.master().client().expect("client");
    let mut cmds: Vec<Command> = (1..=N)
        .step_by(300)
        .map(|k| Command::Delete {
            file: MASTER,
            isn: Isn(k),
        })
        .collect();
    cmds.extend((N + 1..=N + 50).map(|k| store(k, &rec(k, 1, 2))));
    cmds.push(Command::Et { id: None });
    match c.batch(cmds).expect("batch") {
        Response::Committed(_) => {}
        other => panic!("changing the master: {other:?}"),
    }
    let want = cl.dump(0, MASTER).expect("master");
    assert_eq!(want.len() as u64, N - 100 + 50);
    let reinit = || {
        ok(&etp(&[
            "replicate",
            "reinit",
            "items_new",
            "--node",
            &node,
            "--no-wait",
        ]))
    };
    let mut rng = fastrand::Rng::with_seed(etp_system_tests::seed("reinit_kill9"));
    let first_side = rng.usize(0..2);
    let mut kills = 0;
    for cycle in 0..10 {
        // A reinit, or the one a restarted master resumed by itself.
        reinit();
        // Killed as soon as the load is under way (the emptying entry just
        // committed, or about to be) or a few chunks in.
        let after = rng.u64(0..6);
        let under_way = wait_for("the reinit under way (or done)", LIMIT, || {
            let (_, r) = report(master, "items_new");
            if r.state == ReplicaState::Online && r.load.is_none() {
                return Some(false);
            }
            let l = r.load?;
            (l.chunks_this_run >= after).then_some(true)
        });
        if !under_way {
            continue;
        }
        let side = if (cycle + first_side).is_multiple_of(2) {
            0
        } else {
            2
        };
        cl.nodes[side].kill();
        kills += 1;
        cl.nodes[side].restart().expect("restart");
        // Nothing the last chunk has not proved reads as loaded.
        let (_, r) = report(master, "items_new");
        if r.state == ReplicaState::Online && r.load.is_none() {
            assert_eq!(
                cl.dump(2, NEW).expect("new replicate"),
                want,
                "cycle {cycle}"
            );
        }
    }
    assert!(kills >= 5, "only {kills} kills landed in a reinit");
    reinit();
    wait_for("items_new reloaded", LIMIT, || {
        let (_, r) = report(master, "items_new");
        assert!(r.state != ReplicaState::Error, "{r:?}");
        (r.state == ReplicaState::Online && r.load.is_none()).then_some(())
    });
    assert!(cl.dump(2, NEW).expect("new replicate") == want);
    let log = std::fs::read_to_string(cl.nodes[2].data.with_extension("node.log"))
        .expect("the replicate node's log");
    assert!(
        log.contains("replicate emptied for a reload that writes every record"),
        "the reinit did not empty the replicate"
    );
    ok(&etp(&["task", "start", "--node", &node]));
    wait_current(master, "items_new");
    ok(&etp(&["replicate", "verify", "items_new", "--node", &node]));
}

/// A partial replicate's load from the master reads each chunk in two
/// halves on two threads, viewing records as it reads them, and widens
/// its chunks to about the records it keeps; under a writer that moves
/// records in and out of its selection, the load ends equal to the
/// selection of the master as of its snapshot, and the replicate catches
/// up to the master after it.
#[test]
fn a_partial_reinit_read_in_halves_under_a_writer_ends_equal_to_the_selection() {
    const N: u64 = 40_000;
    let t = tempfile::tempdir().expect("tempdir");
    let cl = Cluster::start(etp_bin(), t.path(), Some(1)).expect("cluster");
    let node = node_arg(&cl);
    let master = cl.master().addr;
    let mut c = cl.master().client().expect("client");
    bulk(&mut c, 1, N, 2000);
    cl.wait_converged(LIMIT).expect("converged");
    ok(&etp(&["policy", "set", "manual", "--node", &node]));
    let writer = Writer::start(master, N, 1_000_000);
    wait_for("the writer under way", LIMIT, || {
        (writer.committed() > 50).then_some(())
    });
    let out = ok(&etp(&[
        "replicate",
        "reinit",
        "items_part",
        "--node",
        &node,
        "--json",
    ]));
    let done = done_event(&out);
    let load = &done["load"];
    // Read in chunks of the default 8192 records at first, then widened:
    // fewer chunks than the master's records over 8192.
    let chunks = load["chunks"].as_u64().expect("chunks");
    assert!((1..N / 8192).contains(&chunks), "{load}");
    assert!(writer.committed() > 100, "the master kept committing");
    writer.finish();
    ok(&etp(&["task", "start", "--node", &node]));
    wait_current(master, "items_part");
    let m = cl.dump(0, MASTER).expect("master");
    let want = cl.expected_partial(&m);
    let got = cl.dump(2, PART).expect("partial");
    assert_eq!(got.len(), want.len());
    assert!(got == want, "items_part equals the master's selection");
    ok(&etp(&[
        "replicate",
        "verify",
        "items_part",
        "--node",
        &node,
    ]));
    ok(&etp(&["policy", "set", "automatic", "--node", &node]));
}

#[test]
fn scoped_reinit_after_a_predicate_change_moves_only_the_delta() {
    let t = tempfile::tempdir().expect("tempdir");
    let cl = Cluster::start(etp_bin(), t.path(), Some(1)).expect("cluster");
    let node = node_arg(&cl);
    let master = cl.master().addr;
    let mut c = cl.master().client().expect("client");
    bulk(&mut c, 1, 20_000, 2000);
    cl.wait_converged(LIMIT).expect("converged");
    let before = cl.dump(2, PART).expect("partial");
    let m = cl.dump(0, MASTER).expect("master");
    let int = |r: &Record, k: &str| match r.get(k) {
        Some(Value::Int(i)) => *i,
        _ => -1,
    };
    // Stricter: qty > 20 instead of qty > 10.
    let want: BTreeMap<Isn, Record> = cl
        .expected_partial(&m)
        .into_iter()
        .filter(|(_, r)| int(r, "qty") > 20)
        .collect();
    let leaving = before.len() - want.len();
    assert!(leaving > 1000, "the change moves records ({leaving})");

    ok(&etp(&["policy", "set", "manual", "--node", &node]));
    let text = std::fs::read_to_string(t.path().join("topology.toml")).expect("topology");
    let stricter = text.replace("qty > 10", "qty > 20");
    let topo = t.path().join("stricter.toml");
    std::fs::write(&topo, &stricter).expect("write");
    admin_apply(&node, &topo);
    wait_for("items_part asking for a reinit", LIMIT, || {
        let (_, r) = report(master, "items_part");
        (r.state == ReplicaState::Offline && r.phase.contains("definition")).then_some(())
    });
    let out = ok(&etp(&[
        "replicate",
        "reinit",
        "items_part",
        "--scoped",
        "--node",
        &node,
        "--json",
    ]));
    let done = done_event(&out);
    let load = &done["load"];
    assert_eq!(load["removed"].as_u64(), Some(leaving as u64), "{load}");
    assert_eq!(load["written"].as_u64(), Some(0), "{load}");
    assert_eq!(load["kept"].as_u64(), Some(want.len() as u64), "{load}");
    assert!(cl.dump(2, PART).expect("partial") == want, "new selection");

    // Under the automatic policy a redefinition reloads by itself: looser
    // again (qty > 5), only the entering records are written.
    ok(&etp(&["policy", "set", "automatic", "--node", &node]));
    let looser = text.replace("qty > 10", "qty > 5");
    std::fs::write(&topo, &looser).expect("write");
    admin_apply(&node, &topo);
    let want: BTreeMap<Isn, Record> = cl
        .expected_partial(&m)
        .into_iter()
        .chain(
            m.iter()
                .filter(|(_, r)| int(r, "grp") % 4 == 0 && (6..=10).contains(&int(r, "qty")))
                .map(|(i, r)| {
                    let mut p = r.clone();
                    p.remove("note");
                    (*i, p)
                }),
        )
        .collect();
    let r = wait_for("the automatic scoped reload", LIMIT, || {
        let (_, r) = report(master, "items_part");
        let l = r.last_load.as_ref()?;
        (r.state == ReplicaState::Online && l.written > 0).then_some(r)
    });
    let l = r.last_load.expect("summary");
    assert_eq!(l.removed, 0, "{l:?}");
    assert_eq!(l.written as usize + (l.kept as usize), want.len(), "{l:?}");
    assert!(
        cl.dump(2, PART).expect("partial") == want,
        "looser selection"
    );
    // Reloaded from the full replicate instead of the master: same content.
    let out = ok(&etp(&[
        "replicate",
        "reinit",
        "items_part",
        "--from",
        "items_full",
        "--node",
        &node,
        "--json",
    ]));
    assert!(out.contains("replicate:items_full"), "{out}");
    assert!(
        cl.dump(2, PART).expect("partial") == want,
        "loaded from items_full"
    );
    ok(&etp(&[
        "replicate",
        "verify",
        "items_part",
        "--node",
        &node,
    ]));
    // A partial replicate is not a load source.
    let bad = etp(&[
        "replicate",
        "reinit",
        "items_full",
        "--from",
        "items_part",
        "--node",
        &node,
    ]);
    assert_ne!(bad.status.code(), Some(0));
}

/// Changes a replicate's page store behind the engine (node stopped).
fn verify_json(node: &str, name: &str) -> (i32, serde_json::Value) {
    let out = etp(&["replicate", "verify", name, "--node", node, "--json"]);
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "verify output: {} / {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), v)
}

#[test]
fn verify_reports_equality_under_load_and_names_injected_differences() {
    let t = tempfile::tempdir().expect("tempdir");
    let mut cl = Cluster::start(etp_bin(), t.path(), Some(1)).expect("cluster");
    let node = node_arg(&cl);
    let master = cl.master().addr;
    let mut c = cl.master().client().expect("client");
    bulk(&mut c, 1, 10_000, 2000);
    cl.wait_converged(LIMIT).expect("converged");
    let writer = Writer::start(master, 10_000, 500_000);
    for name in ["items_full", "items_part"] {
        let (code, v) = verify_json(&node, name);
        assert_eq!(code, 0, "{v}");
        assert_eq!(v["equal"], true, "{v}");
    }
    writer.finish();
    cl.wait_converged(LIMIT).expect("converged");
    // Pick records the partial holds: one changed, one deleted; and add one.
    let part = cl.dump(2, PART).expect("partial");
    let mut held = part.keys().copied();
    let (pa, pb) = (held.next().expect("a"), held.next().expect("b"));
    let full = cl.dump(1, FULL).expect("full");
    let mut fk = full.keys().copied();
    let (fa, fb) = (fk.nth(10).expect("a"), fk.nth(10).expect("b"));
    let extra = Isn(9_000_000);
    cl.nodes[1].stop().expect("stop 2");
    let mut changed = full[&fa].clone();
    changed.insert("note".into(), Value::Text("tampered".into()));
    tamper(
        &cl.nodes[1].data,
        FULL,
        vec![(fa, Some(changed)), (fb, None), (extra, Some(rec(1, 0, 0)))],
    );
    cl.nodes[2].stop().expect("stop 3");
    let mut changed = part[&pa].clone();
    changed.insert("qty".into(), Value::Int(-5));
    let mut extra_rec = Record::new();
    extra_rec.insert("id".into(), Value::Int(1));
    tamper(
        &cl.nodes[2].data,
        PART,
        vec![(pa, Some(changed)), (pb, None), (extra, Some(extra_rec))],
    );
    cl.nodes[1].restart().expect("restart 2");
    cl.nodes[2].restart().expect("restart 3");
    for (name, a, b) in [("items_full", fa, fb), ("items_part", pa, pb)] {
        let (code, v) = verify_json(&node, name);
        assert_eq!(code, 1, "{v}");
        assert_eq!(v["equal"], false, "{v}");
        let diffs: BTreeMap<u64, String> = v["differences"]
            .as_array()
            .expect("differences")
            .iter()
            .map(|d| {
                (
                    d["isn"].as_u64().expect("isn"),
                    d["kind"].as_str().expect("kind").to_string(),
                )
            })
            .collect();
        let want: BTreeMap<u64, String> = [
            (a.0, "changed".to_string()),
            (b.0, "missing".to_string()),
            (extra.0, "extra".to_string()),
        ]
        .into_iter()
        .collect();
        assert_eq!(diffs, want, "{name}: {v}");
    }
    // The feeder caught the damage too: both replicates are in error.
    wait_for("both replicates in error", LIMIT, || {
        reports(master)
            .iter()
            .all(|(_, r)| r.state == ReplicaState::Error)
            .then_some(())
    });
    let out = etp(&["replicate", "status", "--node", &node]);
    assert_eq!(out.status.code(), Some(1));
    // An operator's reset is recorded (the automatic policy then retries,
    // and the replicate goes back to error: it is still damaged).
    ok(&etp(&[
        "replicate",
        "reset-error",
        "items_full",
        "--node",
        &node,
    ]));
    let log = ok(&etp(&[
        "replicate",
        "errors",
        "items_full",
        "--node",
        &node,
        "--json",
    ]));
    assert!(log.contains("error reset by the operator"), "{log}");
    // A reinit repairs them (written: what differed).
    for name in ["items_full", "items_part"] {
        ok(&etp(&[
            "replicate",
            "reinit",
            name,
            "--scoped",
            "--node",
            &node,
        ]));
        let (code, v) = verify_json(&node, name);
        assert_eq!(code, 0, "{v}");
    }
    cl.check_equal().expect("equal after reinit");
}

#[test]
fn confirm_set_leaves_a_gap_record_and_cleanup_deletes_nothing_without_a_copy() {
    let t = tempfile::tempdir().expect("tempdir");
    let cl = Cluster::start(etp_bin(), t.path(), Some(1)).expect("cluster");
    let node = node_arg(&cl);
    let master = cl.master().addr;
    let mut c = cl.master().client().expect("client");
    bulk(&mut c, 1, 1000, 100);
    let mut txn = |i: u64| {
        let mut p = Record::new();
        p.insert("qty".into(), Value::Int(25));
        p.insert("grp".into(), Value::Int(4));
        let cmds = vec![
            Command::Update {
                file: MASTER,
                isn: Isn(i),
                fields: ByteBuf::from(encode_record(&p).expect("enc")),
            },
            Command::Et {
                id: Some(format!("tx{i}")),
            },
        ];
        match c.batch(cmds).expect("txn") {
            Response::Committed(r) => r.seqs[0].2,
            other => panic!("{other:?}"),
        }
    };
    for i in 1..=10 {
        txn(i);
    }
    cl.wait_converged(LIMIT).expect("converged");
    ok(&etp(&[
        "replicate",
        "shun",
        "items_part",
        "--reason",
        "link maintenance",
        "--node",
        &node,
    ]));
    let mut last = Seq(0);
    for i in 11..=30 {
        last = txn(i);
    }
    let skip_to = Seq(last.0 - 5);
    let (_, r) = report(master, "items_part");
    assert_eq!(r.state, ReplicaState::Shunned);
    let from = r.confirmed_seq;
    // Moving back is refused: it would apply changes twice.
    let back = etp(&[
        "confirm",
        "set",
        "items_part",
        "--seq",
        &(from.0 - 1).to_string(),
        "--node",
        &node,
    ]);
    assert_eq!(back.status.code(), Some(2));
    ok(&etp(&[
        "confirm",
        "set",
        "items_part",
        "--seq",
        &skip_to.to_string(),
        "--reason",
        "operator skipped",
        "--node",
        &node,
    ]));
    let (_, r) = report(master, "items_part");
    assert_eq!(r.consistency, Consistency::ConsistentExceptGaps);
    assert_eq!(r.gaps.len(), 1);
    assert_eq!((r.gaps[0].from, r.gaps[0].to), (Seq(from.0 + 1), skip_to));
    assert_eq!(r.gaps[0].reason, "operator skipped");
    ok(&etp(&[
        "replicate",
        "unshun",
        "items_part",
        "--node",
        &node,
    ]));
    wait_current(master, "items_part");
    // Status keeps saying so (exit 1), xref names the skipped transaction.
    let out = etp(&["replicate", "status", "--node", &node]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("consistent-except-gaps"));
    let x = ok(&etp(&["xref", "--id", "tx15", "--node", &node, "--json"]));
    let x: serde_json::Value = serde_json::from_str(x.trim()).expect("json");
    let status = |name: &str| {
        x["replicates"]
            .as_array()
            .expect("replicates")
            .iter()
            .find(|r| r["replicate"] == name)
            .map(|r| r["status"].as_str().unwrap_or_default().to_string())
    };
    assert_eq!(status("items_part").as_deref(), Some("skipped (gap)"));
    assert_eq!(status("items_full").as_deref(), Some("applied"));
    let errors = ok(&etp(&[
        "replicate",
        "errors",
        "items_part",
        "--node",
        &node,
    ]));
    assert!(
        errors.contains("operator skipped") && errors.contains("link maintenance"),
        "{errors}"
    );
    // The gap survives a restart of the master's node.
    let mut cl = cl;
    cl.nodes[0].restart().expect("restart master");
    let (_, r) = report(master, "items_part");
    assert_eq!(r.gaps.len(), 1);
    // Log cleanup: every replicate confirmed everything, but no copy exists.
    let plan = ok(&etp(&["log", "plan-cleanup", "--node", &node, "--json"]));
    let plan: serde_json::Value = serde_json::from_str(plan.trim()).expect("json");
    assert!(plan["safe_until"].is_null(), "{plan}");
    assert!(plan["notes"][0]
        .as_str()
        .unwrap_or_default()
        .contains("is catalogued in this node's copy area"));
    let out = ok(&etp(&[
        "log",
        "cleanup",
        "--node",
        &node,
        "--until",
        &last.to_string(),
    ]));
    assert!(out.contains("deleted: 0 records"), "{out}");
    let stat = cl
        .master()
        .client()
        .expect("client")
        .call(&Request::Read(ReadRequest::FileStat { file: Fnr(11) }))
        .expect("stat");
    match stat {
        Response::Stat { count, .. } => {
            assert_eq!(count, last.0, "the log still holds every record")
        }
        other => panic!("{other:?}"),
    }
    // A reload clears the gap.
    ok(&etp(&[
        "replicate",
        "reinit",
        "items_part",
        "--scoped",
        "--node",
        &node,
    ]));
    let (_, r) = report(master, "items_part");
    assert!(r.gaps.is_empty());
    ok(&etp(&["replicate", "status", "--node", &node]));
    // A log above its size threshold is flagged in status (exit 1).
    let text = std::fs::read_to_string(t.path().join("topology.toml")).expect("topology");
    let tight = text.replace(
        "restart_interval_s = 1",
        "restart_interval_s = 1\nlog_warn_mb = 0",
    );
    let topo = t.path().join("tight.toml");
    std::fs::write(&topo, tight).expect("write");
    admin_apply(&node, &topo);
    let out = etp(&["replicate", "status", "--node", &node]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("above log_warn_mb"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn a_frozen_replicate_node_shows_growing_stalled_time() {
    let t = tempfile::tempdir().expect("tempdir");
    let cl = Cluster::start(etp_bin(), t.path(), Some(1)).expect("cluster");
    let node = node_arg(&cl);
    let master = cl.master().addr;
    let mut c = cl.master().client().expect("client");
    bulk(&mut c, 1, 100, 10);
    cl.wait_converged(LIMIT).expect("converged");
    let pid = cl.nodes[1].pid().expect("pid").to_string();
    let _cont = ContOnDrop(pid.clone());
    ok(&std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .output()
        .expect("kill -STOP"));
    bulk(&mut c, 1000, 100, 10);
    let first = wait_for("items_full stalled", LIMIT, || {
        let (_, r) = report(master, "items_full");
        (r.health == Health::Stalled).then_some(r)
    });
    assert!(first.stalled_s >= 3.0, "{first:?}");
    assert!(first.lag_records > 0);
    let later = wait_for("stalled time growing", LIMIT, || {
        let (_, r) = report(master, "items_full");
        (r.stalled_s >= first.stalled_s + 1.0).then_some(r)
    });
    assert_ne!(
        (later.state.as_str(), later.health.as_str()),
        ("online", "current")
    );
    // The partial is not held back, and status exits 1 naming the stall.
    wait_current(master, "items_part");
    let out = etp(&["replicate", "status", "--node", &node]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("stalled for"));
    ok(&std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .output()
        .expect("kill -CONT"));
    let r = wait_current(master, "items_full");
    assert_eq!(r.health, Health::Current);
}

/// Resumes a stopped process if the test ends early.
struct ContOnDrop(String);

impl Drop for ContOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &self.0])
            .output();
    }
}

#[test]
fn maintenance_policy_stops_every_task_at_a_safe_point_and_starts_none() {
    let t = tempfile::tempdir().expect("tempdir");
    let cl = Cluster::start(etp_bin(), t.path(), Some(1)).expect("cluster");
    let node = node_arg(&cl);
    let master = cl.master().addr;
    let mut c = cl.master().client().expect("client");
    bulk(&mut c, 1, 2000, 200);
    let writer = Writer::start(master, 2000, 100_000);
    wait_for("some concurrent commits", LIMIT, || {
        (writer.committed() > 20).then_some(())
    });
    let out = ok(&etp(&[
        "policy",
        "set",
        "maintenance",
        "--node",
        &node,
        "--json",
    ]));
    assert_eq!(out.lines().count(), 3, "every node answered: {out}");
    for (_, r) in reports(master) {
        assert_eq!(r.state, ReplicaState::Offline, "{r:?}");
        assert!(r.phase.contains("policy maintenance"), "{}", r.phase);
    }
    let frozen: Vec<Seq> = reports(master)
        .iter()
        .map(|(_, r)| r.confirmed_seq)
        .collect();
    // Stopped between whole batches: each replicate equals the master as of
    // the seq it confirms.
    for name in ["items_full", "items_part"] {
        let (code, v) = verify_json(&node, name);
        assert_eq!((code, &v["equal"]), (0, &serde_json::json!(true)), "{v}");
    }
    // No task starts while it holds; the master keeps committing.
    let start = etp(&["task", "start", "--node", &node]);
    assert_eq!(start.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&start.stderr).contains("maintenance"));
    let n = writer.committed();
    wait_for("more commits", LIMIT, || {
        (writer.committed() > n + 20).then_some(())
    });
    let still: Vec<Seq> = reports(master)
        .iter()
        .map(|(_, r)| r.confirmed_seq)
        .collect();
    assert_eq!(frozen, still, "nothing was fed during maintenance");
    writer.finish();
    ok(&etp(&["policy", "set", "automatic", "--node", &node]));
    cl.wait_converged(LIMIT).expect("converged");
    cl.check_equal().expect("equal");
    let list = ok(&etp(&["task", "list", "--node", &node]));
    assert!(
        list.contains("items_full, items_part") && list.contains("automatic"),
        "{list}"
    );
}
