//! `etp recover run`: one system test per recovery case. Each builds its
//! situation on a real three-node cluster (a master, a full and a partial
//! replicate) with nothing hand-edited but the injected fault, checks that
//! `etp recover diagnose` picks the case and branch, executes the plan, and
//! proves the result: full replicate equal to the master, partial equal to
//! its selection, every confirmation current and digest-verified, every
//! acknowledged transaction present.
//!
//! `ETP_RECOVER_RECORDS=200000` runs them at the size the figures
//! are measured at; each prints a `FIGURE` line (diagnose and execute
//! seconds, operator decisions).

use etp_system_tests::proxy::{Direction, FaultProxy};
use etp_system_tests::{etp, etp_bin, etp_command, etp_stdin, ok, tamper};
use maintenance::cluster::{topology_text, Cluster, MASTER, PART};
use propagator::wire::ReplicaState;
use propagator::wire::{Command, Response};
use propagator::{Fnr, Isn, Record, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const CONVERGE: Duration = Duration::from_secs(600);

fn records() -> u64 {
    std::env::var("ETP_RECOVER_RECORDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3000)
}

fn rec(k: u64, qty: i64) -> Record {
    let mut r = Record::new();
    r.insert("id".into(), Value::Int(k as i64));
    r.insert("grp".into(), Value::Int((k % 8) as i64));
    r.insert("qty".into(), Value::Int(qty));
    r
}

fn encoded(r: &Record) -> serde_bytes::ByteBuf {
    serde_bytes::ByteBuf::from(propagator::record::encode_record(r).expect("encode"))
}

/// A cluster, a copy area, and the model of every acknowledged write.
struct Scene {
    tmp: tempfile::TempDir,
    cl: Cluster,
    model: BTreeMap<u64, i64>,
}

impl Scene {
    fn new() -> Scene {
        Scene::with_restart_interval(Some(1))
    }

    /// `None`: a lost link stops a task's feeding until it is restarted.
    fn with_restart_interval(restart_s: Option<u64>) -> Scene {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cl = Cluster::start(etp_bin(), tmp.path(), restart_s).expect("cluster");
        Scene::fill(tmp, cl)
    }

    /// [`Scene::new`] with databases whose protection-log segments are
    /// `bytes` long (so a short test fills, archives and prunes several).
    fn with_segments(bytes: u64) -> Scene {
        let tmp = tempfile::tempdir().expect("tempdir");
        for db in 1..=3u32 {
            ok(&etp(&[
                "db",
                "init",
                "--dbid",
                &db.to_string(),
                "--segment-size",
                &bytes.to_string(),
                "--data",
                &tmp.path().join(format!("db{db}")).display().to_string(),
            ]));
        }
        let cl = Cluster::start(etp_bin(), tmp.path(), Some(1)).expect("cluster");
        Scene::fill(tmp, cl)
    }

    /// [`Scene::new`] whose task declares a sync-down complete after its
    /// backlog has settled for `settle_s` seconds.
    fn with_sync_down_settle(settle_s: u64) -> Scene {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cl = Cluster::start_with(etp_bin(), tmp.path(), |addrs| {
            topology_text(addrs, Some(1)).replace(
                "restart_interval_s = 1\n",
                &format!("restart_interval_s = 1\nsync_down_settle_s = {settle_s}\n"),
            )
        })
        .expect("cluster");
        Scene::fill(tmp, cl)
    }

    /// [`Scene::new`] with `n` records on the master.
    fn sized(n: u64) -> Scene {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cl = Cluster::start(etp_bin(), tmp.path(), Some(1)).expect("cluster");
        Scene::fill_with(tmp, cl, n)
    }

    /// A scene whose replicate links run through fault proxies; tasks
    /// without a restart interval (a lost link stops the feeding).
    fn proxied() -> (Scene, Vec<FaultProxy>) {
        Scene::proxied_with(None)
    }

    /// [`Scene::proxied`] with a restart interval for the tasks.
    fn proxied_with(restart_s: Option<u64>) -> (Scene, Vec<FaultProxy>) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut proxies = Vec::new();
        let cl = Cluster::start_with(etp_bin(), tmp.path(), |addrs| {
            let mut routed = vec![addrs[0]];
            for a in &addrs[1..] {
                let p = FaultProxy::start(*a).expect("proxy");
                routed.push(p.addr());
                proxies.push(p);
            }
            topology_text(&routed, restart_s)
        })
        .expect("cluster");
        (Scene::fill(tmp, cl), proxies)
    }

    /// A scene whose task loads in chunks of `chunk` records, without a
    /// restart interval, and whose full replicate's node sits behind a fault
    /// proxy (to slow its answers down).
    fn chunked(chunk: u32) -> (Scene, FaultProxy) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut proxy = None;
        let cl = Cluster::start_with(etp_bin(), tmp.path(), |addrs| {
            let p = FaultProxy::start(addrs[1]).expect("proxy");
            let routed = [addrs[0], p.addr(), addrs[2]];
            proxy = Some(p);
            topology_text(&routed, None).replace(
                "[[task]]\nmaster_database = 1\nmaster = 10\n",
                &format!("[[task]]\nmaster_database = 1\nmaster = 10\nload_chunk = {chunk}\n"),
            )
        })
        .expect("cluster");
        let proxy = proxy.expect("the topology was written");
        (Scene::fill(tmp, cl), proxy)
    }

    fn fill(tmp: tempfile::TempDir, cl: Cluster) -> Scene {
        Scene::fill_with(tmp, cl, records())
    }

    fn fill_with(tmp: tempfile::TempDir, cl: Cluster, n: u64) -> Scene {
        let mut s = Scene {
            tmp,
            cl,
            model: BTreeMap::new(),
        };
        let mut k = 1;
        while k <= n {
            let hi = (k + 999).min(n);
            s.store(k..=hi, 20);
            k = hi + 1;
        }
        s.cl.wait_converged(CONVERGE).expect("converged");
        s
    }

    fn m(&self) -> String {
        self.cl.nodes[0].addr.to_string()
    }

    fn dir(&self, name: &str) -> String {
        self.tmp.path().join(name).display().to_string()
    }

    /// Stores (or replaces) records `keys` with `qty`, one transaction.
    fn store(&mut self, keys: std::ops::RangeInclusive<u64>, qty: i64) {
        let mut c = self.cl.master().client().expect("client");
        let mut cmds = Vec::new();
        for k in keys.clone() {
            let r = rec(k, qty);
            cmds.push(if self.model.contains_key(&k) {
                Command::Update {
                    file: MASTER,
                    isn: Isn(k),
                    fields: encoded(&r),
                }
            } else {
                Command::Store {
                    file: MASTER,
                    isn: Some(Isn(k)),
                    fields: encoded(&r),
                }
            });
        }
        cmds.push(Command::Et { id: None });
        match c.batch(cmds).expect("commit") {
            Response::Committed(_) => {}
            other => panic!("commit refused: {other:?}"),
        }
        for k in keys {
            self.model.insert(k, qty);
        }
    }

    fn take_master_copy(&self) {
        ok(&etp(&[
            "copy",
            "take",
            "--node",
            &self.m(),
            "--area",
            &self.dir("area"),
            "--file",
            "10",
        ]));
    }

    /// `etp recover diagnose` as JSON, and how long it took.
    fn diagnose(&self, extra: &[&str]) -> (Option<i32>, serde_json::Value, f64) {
        let m = self.m();
        let mut args = vec!["recover", "diagnose", "--node", &m, "--json"];
        args.extend_from_slice(extra);
        let t = Instant::now();
        let out = etp(&args);
        let secs = t.elapsed().as_secs_f64();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "diagnose JSON: {e}\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code(), v, secs)
    }

    /// The arguments of `etp recover run --execute --json` against this
    /// scene (its journal in `recovery/`), waiting at most `wait_s`.
    fn run_args(&self, wait_s: u32, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = [
            "recover",
            "run",
            "--execute",
            "--json",
            "--node",
            &self.m(),
            "--state",
            &self.dir("recovery"),
            "--wait-s",
            &wait_s.to_string(),
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    }

    /// `etp recover run --execute --json`: exit code, events, seconds.
    fn run(&self, extra: &[&str]) -> (Option<i32>, Vec<serde_json::Value>, f64) {
        let args = self.run_args(300, extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let t = Instant::now();
        let out = etp(&args);
        let secs = t.elapsed().as_secs_f64();
        let events = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        eprintln!(
            "recover run: {}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            for i in 1..=3 {
                let log = self.tmp.path().join(format!("db{i}.node.log"));
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(150).collect();
                eprintln!("--- {} (last lines)", log.display());
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
        (out.status.code(), events, secs)
    }

    /// More writes after the recovery: they propagate, and the proof holds.
    fn store_and_prove(&mut self, keys: std::ops::RangeInclusive<u64>, qty: i64) {
        self.store(keys, qty);
        self.cl.wait_converged(CONVERGE).expect("converged");
        self.prove();
    }

    /// `run --execute` that must end recovered: its events and seconds.
    fn recover(&self, extra: &[&str]) -> (Vec<serde_json::Value>, f64) {
        let (code, events, secs) = self.run(extra);
        assert_eq!(code, Some(0), "{events:?}");
        assert!(recovered(&events), "{events:?}");
        (events, secs)
    }

    /// Every replicate equals the master (or its selection), every
    /// confirmation is the master's last seq, and the master holds every
    /// acknowledged write.
    fn prove(&self) {
        let n = self.cl.check_equal().expect("replicates equal the master");
        let master = self.cl.dump(0, MASTER).expect("dump");
        assert_eq!(n as u64, self.model.len() as u64);
        for (k, qty) in &self.model {
            let r = master
                .get(&Isn(*k))
                .unwrap_or_else(|| panic!("record {k} lost"));
            assert_eq!(r.get("qty"), Some(&Value::Int(*qty)), "record {k}");
        }
        let t = self.cl.task_status().expect("status");
        for r in &t.replicates {
            assert_eq!(r.state, ReplicaState::Online, "{r:?}");
            assert_eq!(r.confirmed_seq, t.master_seq, "{r:?}");
        }
        for name in ["items_full", "items_part"] {
            let out = ok(&etp(&[
                "replicate",
                "verify",
                name,
                "--node",
                &self.m(),
                "--json",
            ]));
            assert!(out.contains("\"equal\":true"), "{name}: {out}");
        }
    }
}

/// The recovery journal's entries, one JSON text a line.
fn journal_text(s: &Scene) -> String {
    maintenance::recovery::journal::entries(&s.tmp.path().join("recovery"))
        .expect("the recovery journal")
        .join("\n")
}

fn leaf(v: &serde_json::Value) -> String {
    v["case"]["plan"]["leaf"]
        .as_str()
        .or(v["triage"]["plan"]["leaf"].as_str())
        .unwrap_or_default()
        .to_string()
}

fn figure(case: &str, diagnose_s: f64, execute_s: f64, events: &[serde_json::Value]) {
    let operator = events.iter().filter(|e| e["event"] == "operator").count();
    let steps = events.iter().filter(|e| e["event"] == "done").count();
    eprintln!(
        "FIGURE {case}: records={} diagnose_s={diagnose_s:.2} execute_s={execute_s:.2} steps={steps} operator_decisions={operator}",
        records()
    );
}

/// The detail of the done event of `action`.
fn detail<'a>(events: &'a [serde_json::Value], action: &str) -> &'a str {
    events
        .iter()
        .find(|e| e["action"] == action && e["event"] == "done")
        .and_then(|e| e["detail"].as_str())
        .unwrap_or_else(|| panic!("no {action} done: {events:?}"))
}

fn recovered(events: &[serde_json::Value]) -> bool {
    events.iter().any(|e| e["event"] == "recovered")
}

/// Records written into one file's page store (None: deleted).
type Edits = Vec<(Isn, Option<Record>)>;

/// Stops node `node`, writes `edits` straight into its files' page store
/// (the injected fault), and starts it again.
fn damage(s: &mut Scene, node: usize, edits: Vec<(Fnr, Edits)>) {
    s.cl.nodes[node].stop().expect("stop");
    for (file, e) in edits {
        tamper(&s.cl.nodes[node].data, file, e);
    }
    s.cl.nodes[node].restart().expect("restart");
}

/// Damages the master (a record deleted, one changed) and its log (a
/// record deleted): case 4.
fn damage_master_and_log(s: &mut Scene) {
    damage(
        s,
        0,
        vec![
            (MASTER, vec![(Isn(7), None), (Isn(8), Some(rec(8, 5)))]),
            (Fnr(11), vec![(Isn(3), None)]),
        ],
    );
}

#[test]
fn case2_a_damaged_partial_replicate_is_reinstalled_from_the_master() {
    let mut s = Scene::new();
    s.take_master_copy();
    s.store(1..=10, 30);
    // Damage the partial replicate behind the engine's back.
    let victim = (1..).find(|k| k % 4 == 0).unwrap_or(4);
    damage(
        &mut s,
        2,
        vec![(PART, vec![(Isn(victim), Some(rec(victim, 999)))])],
    );
    let area = s.dir("area");
    let (code, v, dt) = s.diagnose(&["--area", &area]);
    assert_eq!(code, Some(1), "{v}");
    assert_eq!(v["triage"]["plan"]["case"], "case2_replicate", "{v}");
    assert_eq!(leaf(&v), "reinstall_partial_from_master", "{v}");
    // Without the copy area the first question cannot be answered: the
    // run refuses, naming it, and changes nothing.
    let (code, events, _) = s.run(&[]);
    assert_eq!(code, Some(1), "{events:?}");
    let refused = events
        .iter()
        .find(|e| e["event"] == "refused")
        .expect("refused");
    assert!(
        refused["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("unit_copy_with_intact_plog"),
        "{refused}"
    );
    assert!(!events.iter().any(|e| e["event"] == "done"), "{events:?}");
    // A dry run prints the bound plan and executes nothing.
    let out = etp(&[
        "recover",
        "run",
        "--dry-run",
        "--node",
        &s.m(),
        "--area",
        &area,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("reload_replicate_from_master replicate items_part (database 3)")
            && text.contains("(dry run: nothing executed)"),
        "{text}"
    );
    // Walked by hand, taking every probe's answer, the case ends at the
    // same leaf; answering against a probe takes the other branch, and
    // says so.
    let saved = s.dir("walk.json");
    let walk = |answers: &str| {
        let m = s.m();
        let out = etp_stdin(
            &[
                "recover",
                "walk",
                "case2_replicate",
                "--node",
                &m,
                "--area",
                &area,
                "--save",
                &saved,
            ],
            answers,
        );
        assert_eq!(out.status.code(), Some(1));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = walk("\n\n\n\n\n\n\n\n");
    assert!(
        text.contains("plan (reinstall_partial_from_master)")
            && text.contains("(0 answer(s) differ from the probes)"),
        "{text}"
    );
    let text = walk("\n\n\nn\n\n");
    assert!(
        text.contains("plan (reinstall_from_master)")
            && text.contains("(1 answer(s) differ from the probes)")
            && text.contains("answers saved in"),
        "{text}"
    );
    // Writes go on meanwhile; none may be lost.
    s.store(11..=20, 31);
    // The saved walk is executed: its first plan is the operator's
    // (the override taken), its answers' evidence says where they came from.
    let (events, et) = s.recover(&["--area", &area, "--answers", &saved]);
    let first = events
        .iter()
        .find(|e| e["event"] == "plan")
        .expect("a plan event");
    assert_eq!(first["plan"]["leaf"], "reinstall_from_master", "{first}");
    s.prove();
    figure("case2", dt, et, &events);
    // The state has changed since the walk (nothing is damaged now): the
    // saved answers are refused, naming the first question whose probe
    // answers differently, and nothing is executed.
    let m = s.m();
    let state = s.dir("recovery-again");
    let out = etp(&[
        "recover",
        "run",
        "--execute",
        "--json",
        "--node",
        &m,
        "--state",
        &state,
        "--area",
        &area,
        "--answers",
        &saved,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("unit_copy_with_intact_plog") && err.contains("walk again"),
        "{err}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("\"done\""), "{stdout}");
}

#[test]
fn case3_a_damaged_log_is_refreshed_and_every_replicate_reinstalled() {
    let mut s = Scene::new();
    s.store(1..=10, 30);
    s.cl.wait_converged(CONVERGE).expect("converged");
    // Damage the master's log file; the master itself stays intact.
    damage(&mut s, 0, vec![(Fnr(11), vec![(Isn(5), Some(rec(5, 1)))])]);
    // An empty copy area: no copy set of master and log exists.
    let area = s.dir("area");
    std::fs::create_dir_all(&area).expect("area");
    let (code, v, dt) = s.diagnose(&["--area", &area]);
    assert_eq!(code, Some(1), "{v}");
    let path = v["triage"]["path"].as_array().expect("path");
    let master_q = path
        .iter()
        .find(|p| p["probe"] == "master_damaged")
        .expect("asked about the master");
    assert_eq!(master_q["answer"], "no", "{master_q}");
    assert_eq!(v["triage"]["plan"]["case"], "case3_log", "{v}");
    assert_eq!(leaf(&v), "refresh_log_reinstall_replicates", "{v}");
    let (events, et) = s.recover(&["--area", &area]);
    // The fresh copy set the plan took is catalogued.
    let sets = ok(&etp(&["copy", "list", "--area", &area]));
    assert!(sets.contains("master"), "{sets}");
    // Updates are accepted again and propagate.
    s.store_and_prove(11..=20, 32);
    figure("case3", dt, et, &events);
}

#[test]
fn case4_a_damaged_master_and_log_are_restored_from_their_copy_set_and_rolled_forward() {
    let mut s = Scene::new();
    s.take_master_copy();
    // Acknowledged after the copy: the roll-forward must bring them back.
    s.store(1..=50, 40);
    s.store(100..=120, 41);
    s.cl.wait_converged(CONVERGE).expect("converged");
    damage_master_and_log(&mut s);
    let area = s.dir("area");
    let (code, v, dt) = s.diagnose(&["--area", &area]);
    assert_eq!(code, Some(1), "{v}");
    assert_eq!(v["triage"]["plan"]["leaf"], "case4", "{v}");
    assert_eq!(leaf(&v), "restore_set_and_regenerate", "{v}");
    let (events, et) = s.recover(&["--area", &area]);
    assert!(
        events
            .iter()
            .any(|e| e["action"] == "regenerate_to_end" && e["event"] == "done"),
        "{events:?}"
    );
    s.store_and_prove(200..=210, 42);
    figure("case4", dt, et, &events);
}

#[test]
fn case5_a_damaged_administration_file_is_restored_from_its_copy_and_rolled_forward() {
    let mut s = Scene::new();
    let export = s.dir("topology-export.toml");
    std::fs::write(&export, ok(&etp(&["admin", "export", "--node", &s.m()]))).expect("export");
    s.take_master_copy();
    s.store(1..=30, 50);
    s.cl.wait_converged(CONVERGE).expect("converged");
    // The master node's administration file damaged: it comes back up
    // serving no topology, so no task feeds the replicates.
    damage(&mut s, 0, vec![(Fnr(255), vec![(Isn(1), Some(rec(1, 1)))])]);
    s.store(31..=40, 51);
    let area = s.dir("area");
    // The master node serves no topology: the export leads to the others.
    let (code, v, dt) = s.diagnose(&["--area", &area, "--export", &export]);
    assert_eq!(code, Some(1), "{v}");
    assert_eq!(v["triage"]["plan"]["case"], "case5_admin", "{v}");
    assert_eq!(leaf(&v), "restore_admin_regenerate", "{v}");
    let (events, et) = s.recover(&["--area", &area, "--export", &export]);
    s.store_and_prove(41..=45, 52);
    figure("case5", dt, et, &events);
}

/// The master's records as key → qty.
fn qtys(master: &BTreeMap<Isn, Record>) -> BTreeMap<u64, i64> {
    master
        .iter()
        .map(|(i, r)| {
            let q = match r.get("qty") {
                Some(Value::Int(q)) => *q,
                other => panic!("record {i} has qty {other:?}"),
            };
            (i.0, q)
        })
        .collect()
}

/// kill -9 of the master's node at random points of a case 4 run (its copy
/// set restored through the node, then rolled forward), ten times while
/// the restore is under way and ten while the roll-forward is: each
/// interrupted run ends, naming why, within its bound; after each restart
/// the master reads either as damaged or as one of the two points a
/// restore proves (the copy's content, or every acknowledged write); and
/// the next run resumes the plan, the last one recovering everything.
#[test]
fn case4_with_its_node_killed_mid_restore_and_mid_roll_forward_ten_times_each_still_recovers() {
    use std::io::BufRead;
    let mut s = Scene::sized(160_000);
    s.take_master_copy();
    let at_copy = s.model.clone();
    s.store(1..=2000, 40);
    s.store(120_000..=121_000, 41);
    s.cl.wait_converged(CONVERGE).expect("converged");
    damage_master_and_log(&mut s);
    let area = s.dir("area");
    let mut rng = fastrand::Rng::with_seed(etp_system_tests::seed("case4_kill9"));
    // Kills that landed while the node was restoring (step 3) and while it
    // was rolling forward (step 4, which restores the set again with the
    // log's changes laid over it): the node dropped the step's call.
    let (mut in_restore, mut in_roll) = (0, 0);
    let mut cycle = 0;
    while in_restore < 10 || in_roll < 10 {
        assert!(
            cycle < 80,
            "{cycle} cycles: {in_restore} kills in the restore, {in_roll} in the roll-forward"
        );
        // Until ten kills hit the restore, the run is killed a random few
        // milliseconds after it starts the restore; then it is let finish
        // it and killed in the roll-forward.
        let target = if in_restore < 10 { 3 } else { 4 };
        let mut child = etp_command()
            .args(s.run_args(20, &["--area", &area]))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("etp recover run");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel::<serde_json::Value>();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut events = Vec::new();
        // Whether the run started the step: if the plan is past it (a kill
        // that came after the step ended), the run goes on to the end.
        let mut reached = false;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(e) => {
                    let started = (e["event"] == "start").then(|| e["step"].as_u64());
                    let past = (e["event"] == "resume" && e["done"].as_u64() >= Some(target))
                        || (e["event"] == "start" && e["step"].as_u64() > Some(target));
                    events.push(e);
                    if started == Some(Some(target)) {
                        reached = true;
                        break;
                    }
                    if past {
                        break;
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    panic!("cycle {cycle}: no event within two minutes: {events:?}")
                }
            }
        }
        if reached {
            std::thread::sleep(Duration::from_millis(rng.u64(0..100)));
            s.cl.nodes[0].kill();
        }
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done_tx.send(child.wait_with_output());
        });
        let out = done_rx
            .recv_timeout(Duration::from_secs(180))
            .unwrap_or_else(|_| panic!("cycle {cycle}: the run did not end"))
            .expect("output");
        reader.join().expect("reader");
        events.extend(rx.try_iter());
        cycle += 1;
        if !reached {
            // The plan went past the step before the kill (the one before
            // ended it just in time): this run finishes it; the master is
            // damaged again for a new plan.
            assert!(
                out.status.success() && recovered(&events),
                "cycle {cycle}: a run past step {target} did not recover: {events:?}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            eprintln!("cycle {cycle}: the plan was past step {target}; damaged again");
            damage_master_and_log(&mut s);
            // A new incident: a journal of its own (one journal allows a
            // bounded number of rounds).
            std::fs::remove_dir_all(s.tmp.path().join("recovery")).expect("remove the journal");
            continue;
        }
        let failed: Vec<&serde_json::Value> =
            events.iter().filter(|e| e["event"] == "failed").collect();
        assert!(
            !out.status.success(),
            "cycle {cycle}: the run recovered before the kill: {events:?}"
        );
        let said = format!(
            "{}{}",
            failed
                .iter()
                .map(|e| e["error"].as_str().unwrap_or_default())
                .collect::<Vec<_>>()
                .join("; "),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !said.trim().is_empty(),
            "cycle {cycle}: the run failed without saying why"
        );
        let dropped = failed.iter().any(|e| {
            e["step"].as_u64() == Some(target)
                && e["error"]
                    .as_str()
                    .is_some_and(|t| t.contains("closed the connection") || t.contains("reset"))
        });
        if dropped && target == 3 {
            in_restore += 1;
        } else if dropped {
            in_roll += 1;
        }
        eprintln!("cycle {cycle}: step {target}, dropped {dropped}: {said}");
        s.cl.nodes[0].restart().expect("restart");
        match s.cl.dump(0, MASTER) {
            Ok(d) => {
                let got = qtys(&d);
                assert!(
                    got == at_copy || got == s.model,
                    "cycle {cycle}: the master reads as intact at no proved point"
                );
            }
            Err(e) => assert!(e.to_string().contains("damaged"), "cycle {cycle}: {e:#}"),
        }
    }
    s.recover(&["--area", &area]);
    s.store_and_prove(200..=210, 42);
}

/// One client transaction (`client_txn`) through the clients' journal,
/// acknowledged, and in the model.
fn journaled(s: &mut Scene, journal: &str, key: u64, id: &str) {
    let out = etp_stdin(
        &["exec", "--node", &s.m(), "--journal", journal],
        &client_txn(key, id),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.model.insert(key, 60);
}

/// The clients' journal holds nothing pending (every transaction ran once).
fn nothing_pending(journal: &str) {
    let status = etp(&["exec", "--journal", journal, "--status"]);
    assert_eq!(
        status.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );
}

/// One client transaction storing `key` (qty 60), under client id `id`.
fn client_txn(key: u64, id: &str) -> String {
    format!(
        "{{\"op\":\"store\",\"file\":10,\"isn\":{key},\"fields\":{{\"id\":{key},\"grp\":{},\"qty\":60}}}}\n\
         {{\"op\":\"et\",\"id\":\"{id}\"}}\n",
        key % 8
    )
}

#[test]
fn case1_a_link_cut_mid_transaction_is_rerun_and_the_isolated_replicates_resynchronized() {
    let (mut s, proxies) = Scene::proxied();
    let n = records();
    // The bytes a clean journaled transaction sends, to cut the next one
    // three bytes short of its ET.
    let journal = s.dir("client-journal");
    let clean = FaultProxy::start(s.cl.nodes[0].addr).expect("proxy");
    let out = etp_stdin(
        &[
            "exec",
            "--node",
            &clean.addr().to_string(),
            "--journal",
            &journal,
        ],
        &client_txn(n + 1, "calibrate"),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.model.insert(n + 1, 60);
    let sent = clean.bytes(Direction::ClientToServer);
    // The replicates' links go down, then the client's link to the master
    // breaks in the middle of a transaction: the node backs it out, the
    // client gives up and keeps it in its journal.
    for p in &proxies {
        p.refuse();
        p.cut();
    }
    s.store(1..=20, 61);
    etp_system_tests::wait_for("the feeders to stop on the lost links", CONVERGE, || {
        let t = s.cl.task_status().ok()?;
        t.replicates
            .iter()
            .all(|r| {
                r.reason
                    .as_deref()
                    .is_some_and(|x| x.starts_with("stopped (link lost"))
            })
            .then_some(())
    });
    let cut = FaultProxy::start(s.cl.nodes[0].addr).expect("proxy");
    cut.reset_after(Direction::ClientToServer, sent - 3);
    let out = etp_stdin(
        &[
            "exec",
            "--node",
            &cut.addr().to_string(),
            "--journal",
            &journal,
            "--retry-for",
            "0",
        ],
        &client_txn(n + 2, "interrupted"),
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(cut.resets(), 1, "the cut fired");
    // The links come back; nothing restarts the feeding by itself.
    for p in &proxies {
        p.accept_again();
    }
    // Without the client journal, whether a client's update failed cannot
    // be known: the case walk stops at C1.1 instead of guessing "no".
    let (_, v, _) = s.diagnose(&[]);
    assert_eq!(v["triage"]["plan"]["case"], "case1_isolated", "{v}");
    let first = &v["case"]["path"][0];
    assert_eq!(first["probe"], "master_transaction_interrupted", "{v}");
    assert_eq!(first["answer"], "unanswerable", "{first}");
    assert_eq!(v["case"]["plan"]["plan"], "stopped", "{v}");
    let (code, v, dt) = s.diagnose(&["--journal", &journal]);
    assert_eq!(code, Some(1), "{v}");
    assert_eq!(v["triage"]["plan"]["case"], "case1_isolated", "{v}");
    assert_eq!(leaf(&v), "rerun_start_tasks", "{v}");
    let first = &v["case"]["path"][0];
    assert!(
        first["evidence"]
            .as_str()
            .unwrap_or_default()
            .contains("interrupted"),
        "{first}"
    );
    let (events, et) = s.recover(&["--journal", &journal]);
    s.model.insert(n + 2, 60);
    s.prove();
    // Rerun exactly once: nothing is pending, and the record holds once.
    nothing_pending(&journal);
    figure("case1", dt, et, &events);
}

#[test]
fn an_interrupted_run_resumes_at_the_step_it_stopped_at() {
    let mut s = Scene::new();
    s.take_master_copy();
    s.store(1..=40, 70);
    s.cl.wait_converged(CONVERGE).expect("converged");
    damage(
        &mut s,
        0,
        vec![
            (MASTER, vec![(Isn(9), None)]),
            (Fnr(11), vec![(Isn(4), None)]),
        ],
    );
    let area = s.dir("area");
    // Stopped right after the restore (step 3 of restore_set_and_regenerate):
    // the master is back at the copy's level, the roll-forward not done.
    let m = s.m();
    let state = s.dir("recovery");
    let out = etp_command()
        .args([
            "recover",
            "run",
            "--execute",
            "--json",
            "--node",
            &m,
            "--state",
            &state,
            "--area",
            &area,
        ])
        .env("ETP_RECOVER_STOP_AFTER_STEPS", "3")
        .output()
        .expect("etp");
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let journal = journal_text(&s);
    assert_eq!(
        journal
            .lines()
            .filter(|l| l.contains("\"line\":\"done\""))
            .count(),
        3
    );
    // Diagnose names the unfinished plan and says to finish it first.
    let out = etp(&[
        "recover", "diagnose", "--node", &m, "--area", &area, "--state", &state, "--json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(
        v["unfinished_plan"]
            .as_str()
            .unwrap_or_default()
            .contains("3 of 9 steps done"),
        "{v}"
    );
    // The master's node restarts meanwhile: it still refuses client
    // updates (the quiesce is kept in its control state), so nothing can
    // commit between the restore and the roll-forward.
    s.cl.nodes[0].restart().expect("restart");
    let mut c = s.cl.master().client().expect("client");
    let refused = c
        .batch(vec![
            Command::Store {
                file: MASTER,
                isn: Some(Isn(999_999)),
                fields: encoded(&rec(999_999, 1)),
            },
            Command::Et { id: None },
        ])
        .expect_err("refused");
    assert!(refused.to_string().contains("quiesced"), "{refused}");
    // Run again: it resumes at step 4 and rolls forward from the LSN the
    // restore found, so every acknowledged write is back.
    let (code, events, _) = s.run(&["--area", &area]);
    assert_eq!(code, Some(0), "{events:?}");
    let resume = events
        .iter()
        .find(|e| e["event"] == "resume")
        .expect("resumed");
    assert_eq!(resume["done"], 3, "{resume}");
    let first = events
        .iter()
        .find(|e| e["event"] == "done")
        .expect("a step");
    assert_eq!(first["step"], 4, "{first}");
    assert_eq!(first["action"], "regenerate_to_end", "{first}");
    assert!(recovered(&events), "{events:?}");
    s.store_and_prove(41..=45, 71);
}

#[test]
fn a_database_down_stops_the_run_at_an_operator_step_until_it_answers() {
    let mut s = Scene::new();
    // The clients' journal (a replicate cut off right after the restart is
    // case 1, whose first question only the journal answers).
    let journal = s.dir("client-journal");
    journaled(&mut s, &journal, records() + 1, "before");
    s.cl.nodes[2].stop().expect("stop");
    let (code, events, _) = s.run(&["--journal", &journal]);
    assert_eq!(code, Some(1), "{events:?}");
    let op = events
        .iter()
        .find(|e| e["event"] == "operator")
        .expect("an operator step");
    assert_eq!(op["action"], "restart_databases", "{op}");
    // The step names the stopped database, and only it.
    let what = op["what"].as_str().unwrap_or_default();
    assert!(what.starts_with("start the node of database 3 ("), "{op}");
    let (_, v, _) = s.diagnose(&[]);
    let t0 = &v["triage"]["path"][0];
    assert_eq!(t0["answer"], "no", "{t0}");
    assert!(
        t0["evidence"]
            .as_str()
            .unwrap_or_default()
            .contains("stopped"),
        "{t0}"
    );
    // The operator starts the node; the run takes the step as done and
    // goes on until everything is verified.
    s.cl.nodes[2].restart().expect("restart");
    s.store(1..=5, 80);
    let (code, events, _) = s.run(&["--journal", &journal]);
    assert_eq!(code, Some(0), "{events:?}");
    assert!(events.iter().any(|e| e["event"] == "resume"), "{events:?}");
    assert!(recovered(&events), "{events:?}");
    s.prove();
}

/// C2.2 with little written since the copy: rolling the copy forward with
/// the protection log is quicker than reloading it.
#[test]
fn case2_a_damaged_full_replicate_is_restored_from_its_copy_and_rolled_forward() {
    case2_full_from_copy(false);
}

/// C2.2 with the whole file rewritten twice since the copy: the protection
/// log to replay is larger than the copy, so the copy is reloaded and the
/// task catches it up.
#[test]
fn case2_a_damaged_full_replicate_is_reloaded_from_its_copy_and_caught_up() {
    case2_full_from_copy(true);
}

fn case2_full_from_copy(churn: bool) {
    let mut s = Scene::new();
    // A copy of the full replicate with its confirmation, then more master
    // changes it lacks.
    let area = s.dir("area");
    let full = s.cl.nodes[1].addr.to_string();
    ok(&etp(&[
        "copy", "take", "--node", &full, "--area", &area, "--file", "20",
    ]));
    s.store(1..=25, 90);
    if churn {
        let n = records();
        for qty in [91, 92] {
            let mut k = 1;
            while k <= n {
                let hi = (k + 999).min(n);
                s.store(k..=hi, qty);
                k = hi + 1;
            }
        }
    }
    s.cl.wait_converged(CONVERGE).expect("converged");
    damage(
        &mut s,
        1,
        vec![(maintenance::cluster::FULL, vec![(Isn(3), None)])],
    );
    let (code, v, dt) = s.diagnose(&["--area", &area]);
    assert_eq!(code, Some(1), "{v}");
    let c22 = v["case"]["path"]
        .as_array()
        .and_then(|p| {
            p.iter()
                .find(|q| q["probe"] == "reload_quicker_than_roll_forward")
        })
        .cloned()
        .unwrap_or_default();
    assert_eq!(c22["answer"], if churn { "yes" } else { "no" }, "{c22}");
    assert!(
        c22["evidence"]
            .as_str()
            .unwrap_or_default()
            .contains("of protection log to replay"),
        "{c22}"
    );
    let want = if churn {
        "reload_unit_catch_up"
    } else {
        "restore_and_regenerate"
    };
    assert_eq!(leaf(&v), want, "{v}");
    let (events, et) = s.recover(&["--area", &area]);
    let restored = detail(&events, "restore_copy_set");
    assert!(restored.contains("replicate items_full"), "{restored}");
    if !churn {
        detail(&events, "regenerate_to_end");
    }
    s.store_and_prove(26..=30, 93);
    figure(
        if churn {
            "case2-copy-reload"
        } else {
            "case2-copy-regenerate"
        },
        dt,
        et,
        &events,
    );
}

#[test]
fn case4_without_a_copy_the_master_is_rebuilt_from_its_full_replicate() {
    let mut s = Scene::new();
    s.store(1..=30, 95);
    s.cl.wait_converged(CONVERGE).expect("converged");
    damage(
        &mut s,
        0,
        vec![
            (MASTER, vec![(Isn(11), Some(rec(11, 7)))]),
            (Fnr(11), vec![(Isn(2), None)]),
        ],
    );
    // A copy area without any copy of the master.
    let area = s.dir("area");
    std::fs::create_dir_all(&area).expect("area");
    let (code, v, dt) = s.diagnose(&["--area", &area]);
    assert_eq!(code, Some(1), "{v}");
    assert_eq!(leaf(&v), "rebuild_master_from_full_replicate", "{v}");
    let (events, et) = s.recover(&["--area", &area]);
    let rebuilt = detail(&events, "restore_master_from_full_replicate");
    assert!(rebuilt.contains("rebuilt from items_full"), "{rebuilt}");
    // The full replicate was current: no level is lost.
    let gap = detail(&events, "record_gap");
    assert!(gap.contains("no level lost"), "{gap}");
    s.store_and_prove(31..=35, 96);
    figure("case4-replicate", dt, et, &events);
}

#[test]
fn two_damaged_replicates_are_recovered_in_two_rounds_then_verified() {
    let mut s = Scene::new();
    damage(
        &mut s,
        1,
        vec![(maintenance::cluster::FULL, vec![(Isn(2), None)])],
    );
    damage(&mut s, 2, vec![(PART, vec![(Isn(8), Some(rec(8, 3)))])]);
    let area = s.dir("area");
    std::fs::create_dir_all(&area).expect("area");
    let (events, _) = s.recover(&["--area", &area]);
    // One round per damaged unit, then triage finds everything intact.
    let plans: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "plan")
        .filter_map(|e| e["plan"]["leaf"].as_str())
        .collect();
    assert_eq!(
        plans,
        vec![
            "reinstall_from_master",
            "reinstall_partial_from_master",
            "all_intact"
        ],
        "{events:?}"
    );
    s.store_and_prove(1..=5, 97);
}

#[test]
fn case4_a_master_rebuilt_from_a_lagging_full_replicate_gets_the_rest_from_its_own_log() {
    rebuild_from_a_lagging_full_replicate(Scene::with_restart_interval(None), None);
}

/// The same recovery with loads of 64-record chunks (so the partial's
/// reload from the full replicate crosses dozens of chunk boundaries), the
/// full replicate's answers slowed by 20 ms: its `Dump` answers arrive after
/// the partial's acknowledgements, the race that once left a stale answer on
/// the source connection and a chunk refused forever.
#[test]
fn case4_a_reload_from_a_slow_full_replicate_crosses_many_chunks() {
    let (s, proxy) = Scene::chunked(64);
    rebuild_from_a_lagging_full_replicate(s, Some(&proxy));
}

/// A lagging full replicate; master and log damaged in the page store;
/// the master rebuilt from the full replicate, the partial reloaded from
/// it, and the transactions the full replicate lacked re-applied from the
/// master's own log. `slow`: the full replicate's proxy, slowed for the recovery.
fn rebuild_from_a_lagging_full_replicate(mut s: Scene, slow: Option<&FaultProxy>) {
    // The full replicate's node goes down; without a restart interval its
    // feeding stays stopped, so it lags at seq S from here on.
    s.cl.nodes[1].stop().expect("stop");
    let feeder_stopped = |s: &Scene| {
        s.cl.task_status().ok().and_then(|t| {
            t.replicates
                .iter()
                .find(|r| r.name == "items_full")
                .filter(|r| {
                    r.reason
                        .as_deref()
                        .is_some_and(|x| x.starts_with("stopped"))
                })
                .map(|r| r.confirmed_seq.0)
        })
    };
    let lag_at =
        etp_system_tests::wait_for("the full replicate's feeding to stop", CONVERGE, || {
            feeder_stopped(&s)
        });
    s.cl.nodes[1].restart().expect("restart");
    let kept = s.model.clone();
    // Acknowledged, but only the master and the partial replicate get them.
    s.store(1..=10, 56);
    s.store(11..=20, 57);
    let t = s.cl.task_status().expect("status");
    let lost_to = t.master_seq.0;
    assert!(lost_to > lag_at, "{t:?}");
    etp_system_tests::wait_for("the partial replicate to catch up", CONVERGE, || {
        let t = s.cl.task_status().ok()?;
        t.replicates
            .iter()
            .any(|r| r.name == "items_part" && r.confirmed_seq == t.master_seq)
            .then_some(())
    });
    // Master and log damaged; the log record the full replicate needs next
    // is one of the damaged ones, so it cannot catch up any more.
    damage(
        &mut s,
        0,
        vec![
            (MASTER, vec![(Isn(5), Some(rec(5, 1)))]),
            (Fnr(11), vec![(Isn(lag_at + 1), Some(rec(1, 1)))]),
        ],
    );
    let area = s.dir("area");
    std::fs::create_dir_all(&area).expect("area");
    let (code, v, _) = s.diagnose(&["--area", &area]);
    assert_eq!(code, Some(1), "{v}");
    assert_eq!(leaf(&v), "rebuild_master_from_full_replicate", "{v}");
    if let Some(p) = slow {
        p.delay(Direction::ServerToClient, Duration::from_millis(20));
    }
    let (events, _) = s.recover(&["--area", &area]);
    if let Some(p) = slow {
        p.delay(Direction::ServerToClient, Duration::ZERO);
        // The partial was reloaded from the full replicate, chunk by chunk.
        let t = s.cl.task_status().expect("status");
        let part = t.replicates.iter().find(|r| r.name == "items_part");
        let load = part
            .and_then(|r| r.last_load.as_ref())
            .expect("a finished load");
        assert_eq!(load.source, "replicate:items_full", "{load:?}");
        assert!(load.chunks >= records() / 64, "{load:?}");
    }
    // What the full replicate lacked, the master's own log still holds
    // whole (only its page store was damaged): both transactions are
    // re-applied on the rebuilt master, and no level is lost.
    let re = detail(&events, "reapply_recoverable_transactions");
    assert!(
        re.contains("2 of 2 transaction(s)")
            && re.contains(&format!("after seq {lag_at} re-applied")),
        "{re}"
    );
    let gap = detail(&events, "record_gap");
    assert!(
        gap.contains(&format!(
            "no level lost (seqs {} to {lost_to} re-applied from its log)",
            lag_at + 1
        )),
        "{gap}"
    );
    let journal = journal_text(&s);
    assert!(journal.contains("\"line\":\"reapplied\""), "{journal}");
    assert!(!journal.contains("\"line\":\"gap\""), "{journal}");
    // Every acknowledged write is on the master and every replicate.
    assert_ne!(s.model, kept);
    s.store_and_prove(21..=25, 58);
}

/// The master's incarnation, as its node's catalog defines it.
fn incarnation(s: &Scene) -> u32 {
    use propagator::wire::{ReadRequest, Request};
    let mut c = s.cl.master().client().expect("client");
    match c.call(&Request::Read(ReadRequest::Files)).expect("files") {
        Response::Files { files, .. } => files
            .iter()
            .find(|d| d.fnr == MASTER)
            .and_then(|d| match d.role {
                propagator::Role::Master { incarnation, .. } => Some(incarnation),
                _ => None,
            })
            .expect("the master's definition"),
        other => panic!("Files: {other:?}"),
    }
}

/// Issue 21 items 1 and 5: a master restored by hand (offline `copy
/// restore` of an older copy set) behind its replicates. The restore
/// raises the master's incarnation; each replicate is found diverged at
/// its next link open, before anything is fed; triage sends it to a reload
/// (not to case 1's resync), the lost seqs are journaled, and afterwards
/// every replicate equals the master. An operator's `master incarnation
/// raise` afterwards leaves the replicates streaming.
#[test]
fn a_master_restored_behind_its_replicates_is_found_diverged_and_the_replicates_reloaded() {
    let mut s = Scene::new();
    let area = s.dir("area");
    s.take_master_copy();
    let at_copy = s.model.clone();
    let copy_seq = s.cl.task_status().expect("status").master_seq;
    s.store(1..=40, 50);
    let (ahead, _) = s.cl.wait_converged(CONVERGE).expect("converged");
    let before = incarnation(&s);
    let full_before = s.cl.dump(1, maintenance::cluster::FULL).expect("dump");
    // The hand restore, on the stopped master's data directory.
    s.cl.nodes[0].stop().expect("stop");
    let data = s.cl.nodes[0].data.display().to_string();
    ok(&etp(&[
        "copy", "restore", "--file", "10", "--area", &area, "--data", &data,
    ]));
    s.cl.nodes[0].restart().expect("restart");
    s.model = at_copy;
    assert_eq!(
        incarnation(&s),
        before + 1,
        "the restore raises the incarnation"
    );
    // Both replicates are stopped as diverged at their link open.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let t = s.cl.task_status().expect("status");
        let diverged: Vec<_> = t
            .replicates
            .iter()
            .filter(|r| r.diverged.is_some())
            .collect();
        if diverged.len() == 2 {
            for r in diverged {
                assert_eq!(r.state, ReplicaState::Error, "{r:?}");
                let d = r.diverged.as_ref().expect("diverged");
                assert_eq!(d.confirmed_seq, ahead, "{r:?}");
                assert_eq!(d.master_seq, copy_seq, "{r:?}");
                assert_eq!(d.lost_from.0, copy_seq.0 + 1, "{r:?}");
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replicates not found diverged: {t:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The master takes writes again (seqs given out again, in the new
    // incarnation); nothing reaches the diverged replicates, however long.
    s.store(1..=5, 70);
    // (Their feeders have ended: nothing retries a diverged replicate.)
    let t = s.cl.task_status().expect("status");
    assert_eq!(t.master_seq.0, copy_seq.0 + 5);
    for r in &t.replicates {
        assert_eq!(r.confirmed_seq, ahead, "{r:?}");
        assert_eq!(r.state, ReplicaState::Error, "{r:?}");
        assert!(!r.feeding, "{r:?}");
    }
    assert_eq!(
        s.cl.dump(1, maintenance::cluster::FULL).expect("dump"),
        full_before,
        "nothing was fed to a diverged replicate"
    );
    let (code, v, dt) = s.diagnose(&["--area", &area]);
    assert_eq!(code, Some(1), "{v}");
    assert_eq!(leaf(&v), "reload_diverged", "{v}");
    let (events, et) = s.recover(&["--area", &area]);
    let lost = detail(&events, "record_lost_seqs");
    assert!(
        lost.contains(&format!("items_full: seqs {} to {ahead}", copy_seq.0 + 1)),
        "{lost}"
    );
    let journal = journal_text(&s);
    assert!(
        journal.contains("\"replicate\":\"items_full\""),
        "{journal}"
    );
    s.store_and_prove(6..=10, 71);
    figure("diverged", dt, et, &events);
    // An operator's raise: the replicates keep streaming (the seqs they
    // confirm keep their incarnation in the master's log).
    let raised = ok(&etp(&[
        "master",
        "incarnation",
        "raise",
        "--node",
        &s.m(),
        "--master",
        "10",
        "--json",
    ]));
    assert!(
        raised.contains(&format!("\"incarnation\":{}", before + 2)),
        "{raised}"
    );
    assert_eq!(incarnation(&s), before + 2);
    s.store_and_prove(11..=15, 72);
}

/// Issue 21 item 9: a client transaction that failed while the master was
/// down stays pending in the client's journal; once the master is back,
/// triage (given the journal) routes to its rerun instead of `all_intact`,
/// and the rerun applies it exactly once. Without the journal, triage says
/// that it could not know.
#[test]
fn a_pending_journaled_transaction_is_found_by_triage_and_rerun_once() {
    let mut s = Scene::new();
    let n = records();
    let journal = s.dir("client-journal");
    s.cl.nodes[0].stop().expect("stop");
    let out = etp_stdin(
        &[
            "exec",
            "--node",
            &s.m(),
            "--journal",
            &journal,
            "--retry-for",
            "0",
        ],
        &client_txn(n + 1, "while-down"),
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.cl.nodes[0].restart().expect("restart");
    let (_, v, _) = s.diagnose(&[]);
    assert_eq!(leaf(&v), "all_intact", "{v}");
    let q = v["triage"]["path"]
        .as_array()
        .and_then(|p| p.iter().find(|q| q["probe"] == "pending_reruns"))
        .cloned()
        .unwrap_or_default();
    assert!(
        q["evidence"]
            .as_str()
            .unwrap_or_default()
            .contains("no client journal given"),
        "{q}"
    );
    let (code, v, dt) = s.diagnose(&["--journal", &journal]);
    assert_eq!(code, Some(1), "{v}");
    assert_eq!(leaf(&v), "rerun_pending", "{v}");
    let (events, et) = s.recover(&["--journal", &journal]);
    let rerun = detail(&events, "rerun_failed_transactions");
    assert!(rerun.contains("every pending transaction rerun"), "{rerun}");
    s.model.insert(n + 1, 60);
    s.prove();
    nothing_pending(&journal);
    figure("rerun-pending", dt, et, &events);
}

/// Issue 21 item 4: a replicate's node that runs but is cut off by a link
/// fault (its address accepts and drops connections, for the tool and for
/// the master alike) is told apart from a stopped one: triage takes it as
/// running (case 1, the task's own restart resynchronizes it once the link
/// is back), not as a database to restart. (The stopped node, whose
/// address refuses everyone, is `a_database_down_stops_the_run_…`.)
#[test]
fn a_replicate_node_cut_off_by_a_link_fault_is_case_1_not_a_restart() {
    let (mut s, proxies) = Scene::proxied_with(Some(1));
    let journal = s.dir("client-journal");
    journaled(&mut s, &journal, records() + 1, "before");
    let part = &proxies[1];
    part.refuse();
    part.cut();
    s.store(1..=10, 62);
    let (code, v, dt) = s.diagnose(&["--journal", &journal]);
    assert_eq!(code, Some(1), "{v}");
    let t0 = &v["triage"]["path"][0];
    assert_eq!(t0["probe"], "databases_restarted", "{v}");
    assert_eq!(t0["answer"], "yes", "{t0}");
    let evidence = t0["evidence"].as_str().unwrap_or_default();
    assert!(
        evidence.contains("database 3") && evidence.contains("link fault"),
        "{t0}"
    );
    assert_eq!(v["triage"]["plan"]["case"], "case1_isolated", "{v}");
    assert_eq!(leaf(&v), "self_restart_resyncs", "{v}");
    // The link comes back; the plan waits for it and verifies.
    part.accept_again();
    let (events, et) = s.recover(&["--journal", &journal]);
    s.prove();
    figure("case1-link-fault", dt, et, &events);
}

/// Stores every record of the model again with `qty`, a thousand a transaction.
fn rewrite_all(s: &mut Scene, qty: i64) {
    let n = records();
    let mut k = 1;
    while k <= n {
        let hi = (k + 999).min(n);
        s.store(k..=hi, qty);
        k = hi + 1;
    }
}

/// `etp db recover` on the stopped master's directory: exit code, stdout.
fn db_recover(s: &Scene, extra: &[&str]) -> (Option<i32>, String, String, f64) {
    let data = s.cl.nodes[0].data.display().to_string();
    let area = s.dir("area");
    let mut args = vec!["db", "recover", "--data", &data, "--area", &area];
    args.extend_from_slice(extra);
    let t = Instant::now();
    let out = etp(&args);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        t.elapsed().as_secs_f64(),
    )
}

/// Issue 21 items 2 and 3 on a real cluster: the master's page store is
/// deleted, then (separately) damaged, with its protection log archived and
/// pruned; `etp db recover` rebuilds it in place from its copy set and the
/// live and archived log to its last LSN, the node starts on it, and the
/// replicates go on streaming. Then a flipped byte in the middle of its log:
/// a recovery to the end is refused naming the damage; one to the last good
/// LSN names the LSNs lost and their files, the master starts behind its
/// replicates, they are found diverged and reloaded.
#[test]
fn a_master_whose_database_will_not_open_is_recovered_from_copy_and_archived_log() {
    let mut s = Scene::with_segments(64 << 10);
    s.take_master_copy();
    rewrite_all(&mut s, 21);
    rewrite_all(&mut s, 22);
    s.cl.wait_converged(CONVERGE).expect("converged");
    let area = s.dir("area");
    let archived = ok(&etp(&[
        "copy",
        "archive",
        "--node",
        &s.m(),
        "--area",
        &area,
        "--prune",
    ]));
    assert!(archived.contains("removed"), "{archived}");
    // The page store deleted: the node does not start on it.
    s.cl.nodes[0].stop().expect("stop");
    let data = s.cl.nodes[0].data.clone();
    std::fs::remove_dir_all(data.join("store")).expect("delete the page store");
    let node = etp(&[
        "node",
        "run",
        "--data",
        &data.display().to_string(),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(node.status.code(), Some(2), "{node:?}");
    assert!(
        String::from_utf8_lossy(&node.stderr).contains("cannot open database"),
        "{node:?}"
    );
    // The operator walks triage from a live node and answers that the
    // stopped database does not open: a copy set holds its master, so the
    // leaf rebuilds it; the run stops at that operator step, naming the
    // database and the command.
    let full = s.cl.nodes[1].addr.to_string();
    let saved = s.dir("walk-db-recover.json");
    let walk = etp_stdin(
        &[
            "recover", "walk", "triage", "--node", &full, "--area", &area, "--save", &saved,
        ],
        "\nn\n\n",
    );
    let text = String::from_utf8_lossy(&walk.stdout).into_owned();
    assert!(
        text.contains("plan (recover_databases)") && text.contains("(1 answer(s) differ"),
        "{text}"
    );
    let state = s.dir("recovery-db");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "recover",
            "run",
            "--execute",
            "--json",
            "--node",
            &full,
            "--state",
            &state,
            "--area",
            &area,
        ];
        args.extend_from_slice(extra);
        let out = etp(&args);
        let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        (out.status.code(), events)
    };
    let (code, events) = run(&["--answers", &saved]);
    assert_eq!(code, Some(1), "{events:?}");
    let op = events
        .iter()
        .find(|e| e["event"] == "operator")
        .expect("an operator step");
    assert_eq!(op["action"], "recover_database", "{op}");
    let what = op["what"].as_str().unwrap_or_default();
    assert!(
        what.contains("database 1") && what.contains("etp db recover --data"),
        "{op}"
    );
    let (code, out, err, secs) = db_recover(&s, &[]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(
        out.contains("from the copies and log") && out.contains("archived"),
        "{out}"
    );
    eprintln!(
        "FIGURE db-recover-deleted: records={} recover_s={secs:.2}",
        records()
    );
    s.cl.nodes[0].restart().expect("restart");
    s.cl.wait_converged(CONVERGE).expect("converged");
    // Its node back, the run takes the step as done and ends verified.
    let (code, events) = run(&[]);
    assert_eq!(code, Some(0), "{events:?}");
    assert!(recovered(&events), "{events:?}");
    s.store_and_prove(1..=10, 23);
    // A copy of the recovered database (written in bulk, which no
    // roll-forward crosses), more writes; then its page store damaged.
    s.take_master_copy();
    rewrite_all(&mut s, 24);
    s.cl.wait_converged(CONVERGE).expect("converged");
    s.cl.nodes[0].stop().expect("stop");
    for e in std::fs::read_dir(data.join("store"))
        .expect("store")
        .flatten()
    {
        if e.path().is_file() {
            std::fs::write(e.path(), vec![0x5Au8; 512]).expect("damage");
        }
    }
    let (code, out, err, secs) = db_recover(&s, &[]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    eprintln!(
        "FIGURE db-recover-damaged: records={} recover_s={secs:.2}",
        records()
    );
    s.cl.nodes[0].restart().expect("restart");
    s.store_and_prove(11..=20, 25);

    // A flipped byte in the middle of a closed segment of the master's log.
    s.take_master_copy();
    rewrite_all(&mut s, 26);
    rewrite_all(&mut s, 27);
    s.cl.wait_converged(CONVERGE).expect("converged");
    s.cl.nodes[0].stop().expect("stop");
    let mut segs: Vec<_> = std::fs::read_dir(data.join("plog"))
        .expect("plog")
        .flatten()
        .map(|e| e.path())
        .collect();
    segs.sort();
    assert!(segs.len() >= 3, "{segs:?}");
    let victim = &segs[segs.len() - 2];
    let mut bytes = std::fs::read(victim).expect("read");
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(victim, &bytes).expect("flip");
    std::fs::remove_dir_all(data.join("store")).expect("lose the store");
    let (code, out, err, _) = db_recover(&s, &[]);
    assert_eq!(code, Some(2), "{out}\n{err}");
    assert!(err.contains("--to-last-good"), "{err}");
    let (code, out, err, secs) = db_recover(&s, &["--to-last-good", "--reapply"]);
    assert_eq!(code, Some(1), "{out}\n{err}");
    assert!(
        out.contains("LOST: LSNs") && out.contains("(files 10, 11"),
        "{out}"
    );
    // The transactions read whole after the damage are re-applied where
    // they still fit, or named (issue 21 item 9; the rules are
    // backup's `the_transactions_read_whole_after_a_damage_…`).
    assert!(out.contains("REAPPLIED"), "{out}");
    eprintln!(
        "FIGURE db-recover-last-good: records={} recover_s={secs:.2}",
        records()
    );
    // The master lost its last transactions: it starts behind its
    // replicates, which are found diverged and reloaded.
    s.cl.nodes[0].restart().expect("restart");
    let (code, v, _) = s.diagnose(&["--area", &area]);
    assert_eq!(code, Some(1), "{v}");
    assert_eq!(leaf(&v), "reload_diverged", "{v}");
    s.recover(&["--area", &area]);
    // What the master lost is lost for every copy: the model follows the
    // master (its records are each at some acknowledged value).
    let master = s.cl.dump(0, MASTER).expect("dump");
    for (k, r) in &master {
        let q = match r.get("qty") {
            Some(Value::Int(q)) => *q,
            other => panic!("record {k}: qty {other:?}"),
        };
        assert!((20..=27).contains(&q), "record {k}: qty {q}");
        s.model.insert(k.0, q);
    }
    s.store_and_prove(21..=30, 28);
}

/// The master node's last LSN.
fn master_lsn(s: &Scene) -> u64 {
    use propagator::wire::{ReadRequest, Request};
    let mut c = s.cl.master().client().expect("client");
    match c.call(&Request::Read(ReadRequest::Info)).expect("info") {
        Response::Info(i) => i.last_lsn.0,
        other => panic!("Info: {other:?}"),
    }
}

/// Flips one byte inside the payload of the commit at `lsn` in the
/// protection log under `data` (the node stopped).
fn flip_commit(data: &std::path::Path, dbid: u32, lsn: u64) {
    use propagator::plog::format::FRAME_HEADER_LEN;
    use propagator::plog::{open_segments_readonly, reader::frames_from, PlogEntry};
    let dir = propagator::medium::FsDir::new(data.join("plog"));
    let segs = open_segments_readonly(&dir, propagator::DbId(dbid)).expect("segments");
    for seg in &segs {
        let frames = frames_from(seg, propagator::plog::format::HEADER_LEN).expect("frames");
        for (at, e) in frames {
            if matches!(&e, PlogEntry::Commit(c) if c.lsn.0 == lsn) {
                let mut bytes = std::fs::read(&seg.path).expect("read");
                let i = (at + FRAME_HEADER_LEN + 40) as usize;
                bytes[i] ^= 0x40;
                std::fs::write(&seg.path, &bytes).expect("flip");
                return;
            }
        }
    }
    panic!("no commit at LSN {lsn} in {}", data.display());
}

/// Issue 21 item 9 through a live node: master and log damaged, their
/// copy set newer than the replicates (their task stopped before it), and
/// one commit after the copy unreadable in a closed segment of the
/// master's log. C4.1 answers no, naming the damage; the plan restores the
/// set and re-applies, from the node's own log, the transactions read
/// whole on either side of the damage where their before-images still
/// hold. The one transaction after the damage that changed what the lost
/// one had changed is named and not applied; the gap is exactly the seqs
/// of those two; every replicate then equals the master.
#[test]
fn case4_reapplies_from_the_live_masters_log_what_a_damaged_segment_leaves_whole() {
    let mut s = Scene::with_segments(64 << 10);
    assert!(records() >= 3000);
    // Maintenance: no task feeds, so the replicates stay at the copy's level.
    ok(&etp(&["policy", "set", "maintenance", "--node", &s.m()]));
    s.take_master_copy();
    let at_copy = s.model.clone();
    let thirds = [1..=1000u64, 1001..=2000, 2001..=3000];
    let mut lsns = Vec::new();
    for qty in [61, 62] {
        for r in &thirds {
            s.store(r.clone(), qty);
            lsns.push(master_lsn(&s));
        }
    }
    s.store(1..=10, 63);
    s.store(11..=20, 64);
    // The second transaction after the copy is unreadable in the log; the
    // master and its log are damaged in the page store, the log at the
    // first seq after the copy, so no replicate can go past the copy.
    s.cl.nodes[0].stop().expect("stop");
    flip_commit(&s.cl.nodes[0].data, 1, lsns[1]);
    tamper(&s.cl.nodes[0].data, MASTER, vec![(Isn(7), None)]);
    tamper(&s.cl.nodes[0].data, Fnr(11), vec![(Isn(3001), None)]);
    s.cl.nodes[0].restart().expect("restart");
    ok(&etp(&["policy", "set", "automatic", "--node", &s.m()]));
    let area = s.dir("area");
    let (code, v, dt) = s.diagnose(&["--area", &area]);
    assert_eq!(code, Some(1), "{v}");
    let path = v["case"]["path"].as_array().expect("case path");
    let c41 = path
        .iter()
        .find(|p| p["probe"] == "master_log_copy_with_intact_plog")
        .expect("C4.1 asked");
    assert_eq!(c41["answer"], "no", "{c41}");
    let why = c41["evidence"].as_str().unwrap_or_default();
    assert!(
        why.contains("damaged in") && why.contains("replays whole only to LSN"),
        "{c41}"
    );
    assert_eq!(leaf(&v), "restore_set_from_copy", "{v}");
    let (events, et) = s.recover(&["--area", &area]);
    let re = detail(&events, "reapply_recoverable_transactions");
    assert!(re.contains("6 of 7 transaction(s)"), "{re}");
    assert!(re.contains(&format!("LSN {}", lsns[4])), "{re}");
    assert!(re.contains("its log is damaged in"), "{re}");
    // What the master holds: every transaction but the lost one and the
    // one after it that found the lost one's records changed.
    let mut want = at_copy;
    for k in 1..=3000u64 {
        let q = match k {
            1..=10 => 63,
            11..=20 => 64,
            1001..=2000 => continue,
            _ => 62,
        };
        want.insert(k, q);
    }
    s.model = want;
    s.prove();
    // The gap is the two transactions' seqs, and nothing else.
    let gap = detail(&events, "record_gap");
    let lost: Vec<&str> = gap.matches("are lost for good").collect();
    assert_eq!(lost.len(), 2, "{gap}");
    let journal = journal_text(&s);
    assert!(journal.contains("\"line\":\"reapplied\""), "{journal}");
    figure("case4-reapply", dt, et, &events);
    s.store_and_prove(21..=30, 65);
}

/// `etp replicate verify NAME --node ADDR --json` says equal.
fn verified(node: &str, name: &str) -> bool {
    let out = etp(&["replicate", "verify", name, "--node", node, "--json"]);
    String::from_utf8_lossy(&out.stdout).contains("\"equal\":true")
}

/// Issue 21 item 8: the master's database destroyed with no copy. The full
/// replicate (behind the partial one: its node was down for the last
/// writes) is promoted: it becomes the master on its own database, the
/// partial replicate (ahead of it) is repointed and reloaded from it, the
/// seqs only the old master and the partial had are named lost, and clients
/// write to the new master, whose changes reach the partial replicate.
#[test]
fn a_master_database_destroyed_without_a_copy_fails_over_to_its_full_replicate() {
    let mut s = Scene::new();
    let full = s.cl.nodes[1].addr.to_string();
    s.cl.nodes[1]
        .stop()
        .expect("stop the full replicate's node");
    s.store(1..=16, 41);
    // The partial replicate has the last writes (those of its selection).
    let deadline = Instant::now() + CONVERGE;
    let level = loop {
        let t = s.cl.task_status().expect("status");
        let part = t
            .replicates
            .iter()
            .find(|r| r.name == "items_part")
            .expect("items_part");
        if part.confirmed_seq == t.master_seq {
            break t.master_seq;
        }
        assert!(Instant::now() < deadline, "{t:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    // The master dies before the full replicate's node is back: it cannot
    // catch up.
    s.cl.nodes[0].kill();
    std::fs::remove_dir_all(&s.cl.nodes[0].data).expect("destroy the master's database");
    s.cl.nodes[1].restart().expect("restart");
    // The plan, changing nothing.
    let out = etp(&[
        "master",
        "promote",
        "items_full",
        "--node",
        &full,
        "--dry-run",
        "--json",
    ]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap_or_default();
    let p = &v["plan"];
    assert_eq!(p["reload"], serde_json::json!(["items_part"]), "{text}");
    assert_eq!(p["drop_database"], true, "{text}");
    let seq = p["seq"].as_u64().unwrap_or_default();
    assert_eq!(p["lost"], serde_json::json!([seq + 1, level.0]), "{text}");
    // Triage, walked by the operator: the stopped master's database does
    // not open (answered), and no copy set holds its master (the probe):
    // the leaf promotes the freshest full replicate.
    let area = s.dir("area");
    std::fs::create_dir_all(&area).expect("area");
    let saved = s.dir("walk-promote.json");
    let walk = etp_stdin(
        &[
            "recover", "walk", "triage", "--node", &full, "--area", &area, "--save", &saved,
        ],
        "\nn\n\n",
    );
    let text = String::from_utf8_lossy(&walk.stdout).into_owned();
    assert!(text.contains("plan (promote_freshest_replicate)"), "{text}");
    let state = s.dir("recovery-promote");
    let t = Instant::now();
    let out = etp(&[
        "recover",
        "run",
        "--execute",
        "--json",
        "--node",
        &full,
        "--state",
        &state,
        "--area",
        &area,
        "--answers",
        &saved,
    ]);
    let secs = t.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(recovered(&events), "{text}");
    let promoted = events
        .iter()
        .find(|e| e["event"] == "done" && e["action"] == "promote_full_replicate")
        .expect("the promotion step done");
    assert!(
        promoted["detail"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("seqs {} to {} lost", seq + 1, level.0)),
        "{promoted}"
    );
    let journal = maintenance::recovery::journal::entries(std::path::Path::new(&state))
        .expect("journal")
        .join("\n");
    assert!(
        journal.contains(&format!("\"from_seq\":{}", seq + 1)),
        "{journal}"
    );
    eprintln!("FIGURE failover: records={} promote_s={secs:.2}", records());
    assert!(verified(&full, "items_part"), "{text}");
    // Clients write to the new master; the partial replicate follows it.
    let mut c = propagator::node::client::Client::connect(s.cl.nodes[1].addr).expect("client");
    let mut cmds = Vec::new();
    for k in 1..=40u64 {
        cmds.push(Command::Update {
            file: maintenance::cluster::FULL,
            isn: Isn(k),
            fields: encoded(&rec(k, 42)),
        });
    }
    cmds.push(Command::Et { id: None });
    match c.batch(cmds).expect("commit on the new master") {
        Response::Committed(_) => {}
        other => panic!("commit refused: {other:?}"),
    }
    let deadline = Instant::now() + CONVERGE;
    while !verified(&full, "items_part") {
        assert!(
            Instant::now() < deadline,
            "the partial replicate never caught up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let part = s.cl.dump(2, PART).expect("dump");
    assert!(
        part.values().any(|r| r.get("qty") == Some(&Value::Int(42))),
        "the new master's changes reached the partial replicate"
    );
}

/// The partial replicate's site (database 3) wiped: its node stopped, its
/// data directory deleted and initialised again, empty (not restarted).
fn wipe_partial_site(s: &mut Scene) {
    s.cl.nodes[2].stop().expect("stop");
    let data = s.cl.nodes[2].data.clone();
    std::fs::remove_dir_all(&data).expect("wipe the site");
    ok(&etp(&[
        "db",
        "init",
        "--dbid",
        "3",
        "--data",
        &data.display().to_string(),
    ]));
}

/// Issue 21 item 6: a replicate's site wiped and started again empty (a
/// new database with the same id, its node at the same address). Its
/// master reports the replicate `uninitialized` (not a lost link), status
/// exits 1, triage takes its own branch, and the run re-creates the site's
/// files from the topology and loads it from its master.
#[test]
fn a_wiped_replicate_site_is_found_uninitialized_and_synced_down() {
    let mut s = Scene::new();
    // In manual policy nothing syncs it down by itself: the operator's one
    // command is the recovery run.
    ok(&etp(&["policy", "set", "manual", "--node", &s.m()]));
    wipe_partial_site(&mut s);
    s.cl.nodes[2].restart().expect("restart empty");
    s.store(1..=10, 65);
    // (Manual policy: the lost link stopped the feeder; started, it finds
    // the site empty.)
    // (Its status exits 1 once the feeder has found the site empty, which
    // may be before it prints.)
    let started = etp(&["task", "start", "--node", &s.m()]);
    assert!(matches!(started.status.code(), Some(0 | 1)), "{started:?}");
    etp_system_tests::wait_for("the site to be reported uninitialized", CONVERGE, || {
        let t = s.cl.task_status().ok()?;
        t.replicates
            .iter()
            .any(|r| r.name == "items_part" && r.state == ReplicaState::Uninitialized)
            .then_some(())
    });
    let out = etp(&["replicate", "status", "--node", &s.m()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("uninitialized"),
        "{out:?}"
    );
    let (code, v, dt) = s.diagnose(&[]);
    assert_eq!(code, Some(1), "{v}");
    assert_eq!(leaf(&v), "sync_down_site", "{v}");
    let (events, et) = s.recover(&[]);
    s.prove();
    figure("site-sync-down", dt, et, &events);
}

/// Issue 21 item 6 in automatic policy (seed 000): a wiped replicate site
/// started again empty is synced down by its master's task without an
/// operator: the site takes the topology the task sends and re-creates its
/// files, the replicate is loaded, progress is logged on both sides, and
/// the master declares the sync-down complete once the backlog has stayed
/// under its threshold for the task's settle time.
#[test]
fn a_wiped_replicate_site_is_synced_down_by_its_master_in_automatic_policy() {
    let mut s = Scene::with_sync_down_settle(2);
    wipe_partial_site(&mut s);
    let t = Instant::now();
    s.cl.nodes[2].restart().expect("restart empty");
    s.store(1..=10, 66);
    // Writes go on all along, a transaction every 50 ms: acknowledgements
    // keep arriving while the backlog settles.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // (Keys above every record the scene holds.)
    let first_new = records() + 1001;
    let writer = {
        let (stop, addr) = (stop.clone(), s.cl.nodes[0].addr);
        std::thread::spawn(move || {
            let mut c = propagator::node::client::Client::connect(addr).expect("client");
            let mut k = first_new - 1;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                k += 1;
                let cmds = vec![
                    Command::Store {
                        file: MASTER,
                        isn: Some(Isn(k)),
                        fields: encoded(&rec(k, 67)),
                    },
                    Command::Et { id: None },
                ];
                match c.batch(cmds) {
                    Ok(Response::Committed(_)) => {}
                    other => panic!("commit refused: {other:?}"),
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            k
        })
    };
    let log = etp_system_tests::wait_for("the sync-down declared complete", CONVERGE, || {
        let log = ok(&etp(&[
            "replicate",
            "errors",
            "items_part",
            "--node",
            &s.m(),
        ]));
        log.contains("sync-down complete").then_some(log)
    });
    let secs = t.elapsed().as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let last = writer.join().expect("the writer");
    for k in first_new..=last {
        s.model.insert(k, 67);
    }
    assert!(
        log.contains("took the topology") && log.contains("for 2 s"),
        "{log}"
    );
    let status = s.cl.task_status().expect("status");
    let part = status
        .replicates
        .iter()
        .find(|r| r.name == "items_part")
        .expect("items_part");
    assert!(
        part.sync_down
            .as_deref()
            .is_some_and(|d| d.starts_with("complete after")),
        "{part:?}"
    );
    // Progress on both sides: what the master sent, what the site applied.
    let node_log = |i: usize| {
        std::fs::read_to_string(s.tmp.path().join(format!("db{i}.node.log"))).unwrap_or_default()
    };
    let (master, site) = (node_log(1), node_log(3));
    assert!(
        master.contains("sync-down of its wiped site")
            && master.contains("load started")
            && master.contains("load finished")
            && master.contains("sync-down complete"),
        "{master}"
    );
    assert!(
        site.contains("took the topology its master sent")
            && site.contains("load begins")
            && site.contains("load applied"),
        "{site}"
    );
    // A site that holds a topology takes none this way; and a node's
    // certificate sends one only to a database it masters a replicate on
    // (database 2's masters none of database 3's).
    let text = ok(&etp(&["admin", "export", "--node", &s.m()]));
    let adopt = propagator::wire::Request::Admin(propagator::wire::AdminRequest::AdminAdopt {
        topology: text,
    });
    for (who, code, words) in [
        (
            "admin",
            propagator::wire::ErrorCode::Refused,
            "holds a topology",
        ),
        (
            "db2",
            propagator::wire::ErrorCode::NotAllowed,
            "only for a replicate its database masters",
        ),
    ] {
        let mut c = propagator::node::client::Client::connect_with(
            s.cl.nodes[2].addr,
            &propagator::net::Transport::Tls(etp_system_tests::credentials(who)),
        )
        .expect("client");
        match c.call(&adopt) {
            Err(propagator::node::client::ClientError::Remote {
                code: got, message, ..
            }) => {
                assert_eq!(got, code, "{who}: {message}");
                assert!(message.contains(words), "{who}: {message}");
            }
            other => panic!("AdminAdopt from {who} answered {other:?}"),
        }
    }
    s.cl.wait_converged(CONVERGE).expect("converged");
    s.prove();
    eprintln!(
        "FIGURE site-sync-down-automatic: records={} complete_s={secs:.2} (settle 2 s)",
        records()
    );
}
