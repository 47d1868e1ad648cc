//! Copy sets through real node processes: taken under write load, the rules
//! applied, the replicate set restored into its stopped node and caught up
//! by its replication task, the log cleaned up to the newest master copy.

use etp_system_tests::{etp, etp_bin, etp_command, ok, wait_for};
use maintenance::cluster::{Cluster, FULL, MASTER};
use propagator::node::client::Client;
use propagator::record::encode_record;
use propagator::wire::ReadRequest;
use propagator::wire::{Command, LinkRequest, Request, Response};
use propagator::{Fnr, Isn, LogRecord, Record, Seq, Value};
use serde_bytes::ByteBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(120);

fn rec(id: u64, v: i64) -> Record {
    let mut r = Record::new();
    r.insert("id".into(), Value::Int(id as i64));
    r.insert("grp".into(), Value::Int((id % 12) as i64));
    r.insert("qty".into(), Value::Int(v % 30));
    r.insert("note".into(), Value::Text(format!("n{id}")));
    r
}

fn put(c: &mut Client, isn: u64, v: i64, store: bool) {
    let fields = ByteBuf::from(encode_record(&rec(isn, v)).expect("encode"));
    let cmd = if store {
        Command::Store {
            file: MASTER,
            isn: Some(Isn(isn)),
            fields,
        }
    } else {
        Command::Update {
            file: MASTER,
            isn: Isn(isn),
            fields,
        }
    };
    match c.batch(vec![cmd, Command::Et { id: None }]).expect("batch") {
        Response::Committed(_) => {}
        other => panic!("commit failed: {other:?}"),
    }
}

fn json_lines(s: &str) -> Vec<serde_json::Value> {
    s.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn taken(out: &str) -> serde_json::Value {
    json_lines(out)
        .into_iter()
        .find(|v| v["event"] == "taken")
        .expect("a taken event")
}

/// The file numbers of a taken set's members, in copy order.
fn member_fnrs(taken: &serde_json::Value) -> Vec<u64> {
    taken["set"]["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|x| x["fnr"].as_u64().expect("fnr"))
        .collect()
}

fn log_count(cl: &Cluster) -> u64 {
    match cl
        .master()
        .client()
        .expect("client")
        .call(&Request::Read(ReadRequest::FileStat { file: Fnr(11) }))
    {
        Ok(Response::Stat { count, .. }) => count,
        other => panic!("{other:?}"),
    }
}

#[test]
fn copy_sets_through_nodes_follow_the_rules_and_bound_log_cleanup() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cl = Cluster::start(etp_bin(), tmp.path(), Some(1)).expect("cluster");
    cl.wait_converged(LIMIT).expect("converged");
    let area = tmp.path().join("area");
    let area_s = area.display().to_string();
    let (m, full) = (cl.nodes[0].addr.to_string(), cl.nodes[1].addr.to_string());
    let mut c = cl.master().client().expect("client");
    for k in 1..=3000 {
        put(&mut c, k, 0, true);
    }
    // A writer keeps committing while the copies are taken.
    let stop = Arc::new(AtomicBool::new(false));
    let addr = cl.nodes[0].addr;
    let s = stop.clone();
    let w = std::thread::spawn(move || {
        let mut c = Client::connect(addr).expect("writer");
        let mut v = 1;
        while !s.load(Ordering::Relaxed) {
            put(&mut c, 1 + (v as u64 * 7919) % 3000, v, false);
            v += 1;
        }
    });
    // The rules: a log alone and a master+replicate mix are refused.
    let out = etp(&[
        "copy", "take", "--node", &m, "--area", &area_s, "--file", "11",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("copied only with its master"));
    // The master set brings its log and the administration file.
    let ms = taken(&ok(&etp(&[
        "copy", "take", "--node", &m, "--area", &area_s, "--file", "10", "--json",
    ])));
    assert_eq!(member_fnrs(&ms), vec![10, 11, 255], "{ms}");
    let master_seq = ms["set"]["seqs"]["10"].as_u64().expect("seq");
    // The replicate set brings its confirmation file.
    let rs = taken(&ok(&etp(&[
        "copy", "take", "--node", &full, "--area", &area_s, "--file", "20", "--json",
    ])));
    let rid = rs["set"]["id"].as_str().expect("id").to_string();
    assert_eq!(member_fnrs(&rs), vec![20, 21], "{rs}");
    // The plan names the replicate copy a cleanup past its confirmation
    // would orphan, and only then.
    let conf = rs["set"]["confirmed"][0]["seq"]
        .as_u64()
        .expect("confirmed seq");
    let plan = |until: u64| -> serde_json::Value {
        let out = etp(&[
            "log",
            "plan-cleanup",
            "--node",
            &m,
            "--area",
            &area_s,
            "--until",
            &until.to_string(),
            "--json",
        ]);
        json_lines(&String::from_utf8_lossy(&out.stdout))
            .into_iter()
            .next()
            .expect("a plan")
    };
    let p = plan(conf + 1);
    assert!(
        p["would_orphan_copies"][0]
            .as_str()
            .unwrap_or_default()
            .contains(&rid),
        "{p}"
    );
    let p = plan(conf);
    assert_eq!(p["would_orphan_copies"], serde_json::json!([]), "{p}");
    // Asked for one member, restore brings the whole set: the replicate
    // and its confirmation, as of one LSN — the replicate equal to the
    // master as of the confirmed seq (its log record's count and digest).
    let rdir = tmp.path().join("restored-replicate");
    let out = ok(&etp(&[
        "copy",
        "restore",
        "--file",
        "20",
        "--area",
        &area_s,
        "--to",
        &rdir.display().to_string(),
        "--json",
    ]));
    assert!(
        out.contains("\"fnr\":20") && out.contains("\"fnr\":21"),
        "{out}"
    );
    let rdata = rdir.display().to_string();
    let confirm = json_lines(&ok(&etp(&[
        "file", "dump", "--data", &rdata, "--file", "21",
    ])));
    let seq = confirm[0]["fields"]["seq"].as_u64().expect("confirmed seq");
    assert_eq!(seq, conf, "the set's confirmation");
    let files = json_lines(&ok(&etp(&["db", "status", "--data", &rdata, "--json"])));
    let rep = files
        .iter()
        .find(|f| f["file"] == 20)
        .expect("replicate file");
    let mut logrec = None;
    cl.master()
        .client()
        .expect("client")
        .dump_raw(Fnr(11), |isn, b, _| {
            if isn.0 == seq {
                logrec = Some(LogRecord::decode(b).expect("a log record"));
            }
            Ok(())
        })
        .expect("dump log");
    let logrec = logrec.expect("the log still holds the confirmed seq");
    assert_eq!(rep["records"].as_u64(), Some(logrec.master_count));
    assert_eq!(
        rep["digest"].as_str(),
        Some(logrec.master_digest.to_string().as_str())
    );
    assert!(ok(&etp(&["copy", "verify", "--area", &area_s])).contains(": ok"));
    assert_eq!(
        ok(&etp(&["copy", "list", "--area", &area_s]))
            .lines()
            .count(),
        2
    );
    // More changes after the replicate copy, then quiet.
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    w.join().expect("writer");

    // Log cleanup: the horizon is the node's own, read from its copy area:
    // every record up to the master copy's seq (all replicates confirmed
    // past it), and not one more for a catalog the client points at that
    // claims a newer copy of everything.
    let forged = tmp.path().join("forged");
    std::fs::create_dir_all(forged.join("sets")).expect("forged area");
    for e in std::fs::read_dir(area.join("sets")).expect("sets") {
        let e = e.expect("entry");
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(e.path()).expect("read")).expect("json");
        for seq in v["seqs"].as_object_mut().expect("seqs").values_mut() {
            *seq = serde_json::json!(1_000_000_000u64);
        }
        std::fs::write(forged.join("sets").join(e.file_name()), v.to_string()).expect("forge");
    }
    let before = log_count(&cl);
    assert!(before > master_seq + 100, "{before} {master_seq}");
    let out = ok(&etp(&[
        "log",
        "cleanup",
        "--node",
        &m,
        "--area",
        &forged.display().to_string(),
    ]));
    assert!(
        out.contains(&format!("deleted: {master_seq} records")),
        "{out}"
    );
    assert_eq!(log_count(&cl), before - master_seq);
    // A flipped byte in a member is named by verify (exit 1).
    let dir = area.join("data").join(&rid);
    let f = std::fs::read_dir(&dir)
        .expect("set dir")
        .filter_map(|e| e.ok())
        .find(|e| e.file_name().to_string_lossy().starts_with("00020"))
        .expect("replicate copy")
        .path();
    let mut b = std::fs::read(&f).expect("read");
    let mid = b.len() / 2;
    b[mid] ^= 1;
    std::fs::write(&f, &b).expect("write");
    let out = etp(&["copy", "verify", &rid, "--area", &area_s]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("DAMAGED") && text.contains("00020-"),
        "{text}"
    );
}

/// A replicate set restored into its stopped node: the task resumes from
/// the restored confirmation and catches up, while the master is quiet
/// (the master notices the link went down even with nothing in flight).
#[test]
fn a_replicate_set_restored_into_its_node_catches_up() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cl = Cluster::start(etp_bin(), tmp.path(), Some(1)).expect("cluster");
    cl.wait_converged(LIMIT).expect("converged");
    let area = tmp.path().join("area");
    let area_s = area.display().to_string();
    let full = cl.nodes[1].addr.to_string();
    let mut c = cl.master().client().expect("client");
    for k in 1..=3000 {
        put(&mut c, k, 0, true);
    }
    cl.wait_converged(LIMIT).expect("converged");
    let rs = taken(&ok(&etp(&[
        "copy", "take", "--node", &full, "--area", &area_s, "--file", "20", "--json",
    ])));
    let rid = rs["set"]["id"].as_str().expect("id").to_string();
    for k in 1..=300 {
        put(&mut c, k, k as i64, false);
    }
    cl.wait_converged(LIMIT).expect("converged");
    // Restore the replicate set into its stopped node: the task resumes
    // from the restored confirmation and catches up.
    cl.nodes[1].stop().expect("stop full");
    let data = cl.nodes[1].data.display().to_string();
    let out = ok(&etp(&[
        "copy", "restore", &rid, "--area", &area_s, "--data", &data, "--json",
    ]));
    assert!(out.contains("\"fnr\":20"), "{out}");
    // One JSON document a line: progress events (verify, then restore,
    // counting up), then the result.
    let docs = json_lines(&out);
    let restoring: Vec<&serde_json::Value> = docs
        .iter()
        .filter(|d| d["event"] == "progress" && d["phase"] == "restore")
        .collect();
    assert!(restoring.len() >= 2, "{out}");
    let last = restoring.last().expect("restore progress");
    assert!(
        last["done"] == last["total"] && last["total"].as_u64() > Some(0),
        "{out}"
    );
    assert!(docs.iter().any(|d| d["phase"] == "verify"), "{out}");
    assert!(docs.last().is_some_and(|d| d["event"].is_null()), "{out}");
    cl.nodes[1].restart().expect("restart full");
    wait_for("the restored replicate to catch up", LIMIT, || {
        cl.check_equal().ok()
    });
    cl.wait_converged(LIMIT).expect("converged");
    // The master was told: the replicate was marked restoring, then freed.
    let log = ok(&etp(&[
        "replicate",
        "errors",
        "items_full",
        "--node",
        &cl.nodes[0].addr.to_string(),
    ]));
    assert!(
        log.contains("restore begins") && log.contains("restore ended"),
        "{log}"
    );
    let _ = FULL;
}

/// The runs of copy jobs recorded in the area's history.
fn runs(area: &std::path::Path) -> Vec<serde_json::Value> {
    let out = ok(&etp(&[
        "copy",
        "jobs",
        "history",
        "--area",
        &area.display().to_string(),
        "--json",
    ]));
    json_lines(&out)
}

#[test]
fn a_node_runs_copy_jobs_and_a_killed_node_leaves_no_half_job() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cl = Cluster::start(etp_bin(), tmp.path(), Some(1)).expect("cluster");
    let mut c = cl.master().client().expect("client");
    for k in 1..=200 {
        put(&mut c, k, 0, true);
    }
    cl.wait_converged(LIMIT).expect("converged");
    let area = tmp.path().join("area");
    let m = cl.nodes[0].addr.to_string();
    // A bad definition is refused, naming what is wrong; nothing is stored.
    let bad = tmp.path().join("bad.toml");
    // So is a job that breaks the copy rules, when it is defined (not at
    // its first run), naming the rule: a replicate copied before its
    // master, a log copied on its own.
    for (cron, files, why) in [
        (
            "99 * * * *",
            "[[job.set]]\ndatabase = 1\nfiles = [10]\n",
            "cron",
        ),
        (
            "0 * * * * *",
            "[[job.set]]\ndatabase = 2\nfiles = [20]\n[[job.set]]\ndatabase = 1\nfiles = [10]\n",
            "within one job a replicate is copied after its master",
        ),
        (
            "0 * * * * *",
            "[[job.set]]\ndatabase = 1\nfiles = [11]\n",
            "a log file is copied only with its master",
        ),
    ] {
        std::fs::write(
            &bad,
            format!(
                "area = \"{}\"\n[[job]]\nname = \"j\"\ncron = \"{cron}\"\n{files}",
                area.display()
            ),
        )
        .expect("write");
        let out = etp(&[
            "copy",
            "jobs",
            "set",
            &bad.display().to_string(),
            "--node",
            &m,
        ]);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(why),
            "{out:?}"
        );
        assert!(ok(&etp(&["copy", "jobs", "show", "--node", &m])).contains("no copy jobs"));
    }
    // Every two seconds: the master set, then the full replicate's set.
    let jobs = tmp.path().join("jobs.toml");
    std::fs::write(
        &jobs,
        format!(
            "area = \"{}\"\n[[job]]\nname = \"j\"\ncron = \"*/2 * * * * *\"\nkeep = 3\n[[job.set]]\ndatabase = 1\nfiles = [10]\n[[job.set]]\ndatabase = 2\nfiles = [20]\n",
            area.display()
        ),
    )
    .expect("write");
    ok(&etp(&[
        "copy",
        "jobs",
        "set",
        &jobs.display().to_string(),
        "--node",
        &m,
    ]));
    wait_for("a successful job run", LIMIT, || {
        runs(&area).iter().any(|r| r["ok"] == true).then_some(())
    });
    // The replicate's node dies: runs fail, and record why.
    cl.nodes[1].kill();
    let failed_before = runs(&area).iter().filter(|r| r["ok"] == false).count();
    wait_for("a failed job run", LIMIT, || {
        (runs(&area).iter().filter(|r| r["ok"] == false).count() > failed_before).then_some(())
    });
    let failed = runs(&area)
        .into_iter()
        .rfind(|r| r["ok"] == false)
        .expect("a failure");
    assert!(
        failed["error"]
            .as_str()
            .unwrap_or_default()
            .contains("node"),
        "{failed}"
    );
    // Back up: the next slot succeeds again.
    cl.nodes[1].restart().expect("restart");
    let ok_before = runs(&area).iter().filter(|r| r["ok"] == true).count();
    wait_for("a successful run after the restart", LIMIT, || {
        (runs(&area).iter().filter(|r| r["ok"] == true).count() > ok_before).then_some(())
    });
    // Every run in the catalog is whole (two sets), and retention keeps 3
    // runs (a 4th may be recorded between its run and its retention).
    let list = json_lines(&ok(&etp(&[
        "copy",
        "list",
        "--area",
        &area.display().to_string(),
        "--json",
    ])));
    let mut by_run: std::collections::BTreeMap<String, usize> = Default::default();
    for s in &list {
        *by_run
            .entry(
                s["run"]
                    .as_str()
                    .expect("a job's set has a run")
                    .to_string(),
            )
            .or_default() += 1;
    }
    assert!(by_run.values().all(|n| *n == 2), "{by_run:?}");
    assert!(by_run.len() <= 3 + 1, "{by_run:?}");
}

/// A file's records and digest as `etp db status --data DIR --json` says.
fn status_of(data: &std::path::Path) -> Vec<(u64, u64, String)> {
    let out = ok(&etp(&[
        "db",
        "status",
        "--data",
        &data.display().to_string(),
        "--json",
    ]));
    json_lines(&out)
        .iter()
        .filter_map(|f| {
            Some((
                f["file"].as_u64()?,
                f["records"].as_u64()?,
                f["digest"].as_str()?.to_string(),
            ))
        })
        .collect()
}

/// Runs the command `run` makes (into the directory it is given) ten times
/// killed (SIGKILL) at random points of a whole run, then once to its end;
/// returns the directory it ended in. Each directory a kill leaves marked
/// is not taken for a database: opening it is refused, naming the
/// unfinished restore.
fn killed_ten_times(
    tmp: &std::path::Path,
    name: &str,
    rng: &mut fastrand::Rng,
    run: &dyn Fn(&std::path::Path) -> std::process::Command,
) -> std::path::PathBuf {
    // One whole run first: how long it takes here.
    let t = std::time::Instant::now();
    let first = tmp.join(format!("{name}-first"));
    let out = run(&first).output().expect("a whole run");
    assert!(out.status.success(), "{name}: {out:?}");
    let whole = t.elapsed();
    let to = tmp.join(name);
    let (mut kills, mut refused) = (0, 0);
    for _ in 0..60 {
        if kills >= 10 {
            break;
        }
        let mut child = etp_system_tests::KillGuard(
            run(&to)
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("starting the run"),
        );
        // A random point of a whole run (a bare delay: where the kill lands).
        std::thread::sleep(whole.mul_f64(rng.f64()));
        if let Some(status) = child.0.try_wait().expect("try_wait") {
            // It ended first: a database now; the next run needs an empty place.
            assert!(status.success(), "{name}: a run that was not killed failed");
            std::fs::remove_dir_all(&to).expect("remove the finished run's database");
            continue;
        }
        child.kill();
        kills += 1;
        if to.join(propagator::database::RESTORE_MARKER).exists() {
            let out = etp(&["db", "status", "--data", &to.display().to_string()]);
            assert_eq!(out.status.code(), Some(2), "{name}: {out:?}");
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("did not finish"),
                "{name}: {out:?}"
            );
            refused += 1;
        } else if std::fs::read_dir(&to).is_ok_and(|mut d| d.next().is_some()) {
            // Killed after its mark went (closing, printing): a whole
            // database, which the next run needs out of the way. (Killed
            // before its mark was made, it left at most an empty
            // directory, which the next run takes.)
            ok(&etp(&["db", "check", "--data", &to.display().to_string()]));
            std::fs::remove_dir_all(&to).expect("remove the finished run's database");
        }
    }
    assert!(
        kills >= 10,
        "{name}: only {kills} kills landed inside a run"
    );
    assert!(refused >= 1, "{name}: no kill left a half-made directory");
    let out = run(&to).output().expect("the last run");
    assert!(out.status.success(), "{name}: the last run: {out:?}");
    assert!(!to.join(propagator::database::RESTORE_MARKER).exists());
    ok(&etp(&["db", "check", "--data", &to.display().to_string()]));
    to
}

/// `copy restore --to` and `copy regenerate --into`, each killed (SIGKILL)
/// at random points ten times: the directory a kill leaves is not taken
/// for a database, the next run into it starts over, and the run that
/// ends leaves the files equal to their source (count and digest),
/// checked whole by `db check`.
#[test]
fn a_restore_or_regenerate_into_a_new_directory_killed_ten_times_starts_over_and_ends_equal() {
    use propagator::{Database, DbId, Role};
    let mut rng = fastrand::Rng::with_seed(etp_system_tests::seed("restore_kill"));
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    let (src_s, area_s) = (
        src.display().to_string(),
        tmp.path().join("area").display().to_string(),
    );
    let (db, _) = {
        Database::init(&src, DbId(3), None).expect("init");
        Database::open(&src).expect("open")
    };
    db.create_file(Fnr(10), "orders", Role::Plain)
        .expect("create");
    db.define_master(Fnr(10), Fnr(11)).expect("master");
    let mut s = db.session();
    let pad = |k: u64| Value::Text(format!("{k:0>1000}"));
    for k in 1..=40_000u64 {
        let mut r = rec(k, k as i64);
        r.insert("pad".into(), pad(k));
        s.store(Fnr(10), Some(Isn(k)), r).expect("store");
        if k % 2000 == 0 {
            s.et(None).expect("et");
        }
    }
    drop(s);
    db.close().expect("close");
    let set = taken(&ok(&etp(&[
        "copy", "take", "--data", &src_s, "--area", &area_s, "--file", "10", "--json",
    ])));
    let id = set["set"]["id"].as_str().expect("set id").to_string();
    let members = member_fnrs(&set);
    let of = |data: &std::path::Path, files: &[u64]| -> Vec<(u64, u64, String)> {
        status_of(data)
            .into_iter()
            .filter(|(f, _, _)| files.contains(f))
            .collect()
    };
    let want = of(&src, &members);
    assert_eq!(want.len(), 2, "master and log: {want:?}");
    let restored = killed_ten_times(tmp.path(), "restore", &mut rng, &|to| {
        let mut c = etp_command();
        c.args(["copy", "restore", &id, "--area", &area_s, "--to"])
            .arg(to)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        c
    });
    assert_eq!(of(&restored, &members), want, "restored");
    // Changes after the set, for the regenerate to roll forward.
    let (db, _) = Database::open(&src).expect("reopen");
    let mut s = db.session();
    for k in (1..=40_000u64).step_by(7) {
        let mut r = rec(k, -(k as i64));
        r.insert("pad".into(), pad(k + 1));
        s.update(Fnr(10), Isn(k), r).expect("update");
        if k % 700 == 1 {
            s.et(None).expect("et");
        }
    }
    s.et(None).expect("et");
    drop(s);
    db.close().expect("close");
    let want = of(&src, &[10]);
    let regenerated = killed_ten_times(tmp.path(), "regenerate", &mut rng, &|to| {
        let mut c = etp_command();
        c.args([
            "copy",
            "regenerate",
            "--data",
            &src_s,
            "--area",
            &area_s,
            "--file",
            "10",
            "--to-end",
            "--into",
        ])
        .arg(to)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
        c
    });
    assert_eq!(of(&regenerated, &[10]), want, "regenerated");
}

/// Issue 21 item 11: a node with `--copy-alarm-hours` raises an alarm for
/// every master, log and administration file with no copy newer than that
/// (`etp copy ages` exits 1 naming them; `recover diagnose` lists them as
/// warnings); a fresh copy of the master's set clears its alarms until it
/// is older than the alarm age again.
#[test]
fn files_without_a_recent_copy_raise_an_alarm() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // 0.002 h: 7.2 s.
    let cl = Cluster::start_with_args(
        etp_bin(),
        tmp.path(),
        &["--copy-alarm-hours", "0.002"],
        |a| maintenance::cluster::topology_text(a, Some(1)),
    )
    .expect("cluster");
    let m = cl.nodes[0].addr.to_string();
    let ages = |want: i32| {
        let out = etp(&["copy", "ages", "--node", &m]);
        assert_eq!(out.status.code(), Some(want), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = ages(1);
    assert!(
        text.contains("ALARM master file 10 of database 1 (items): no copy")
            && text.contains("ALARM log file 11 of database 1")
            && text.contains("ALARM administration file 255 of database 2"),
        "{text}"
    );
    let area = tmp.path().join("area").display().to_string();
    ok(&etp(&[
        "copy", "take", "--node", &m, "--area", &area, "--file", "10",
    ]));
    let text = ages(1);
    assert!(
        text.lines()
            .any(|l| l.starts_with("master file 10 of database 1 (items): newest copy")),
        "{text}"
    );
    // The other databases' administration files are still without a copy:
    // a warning beside the diagnosis.
    let out = etp(&["recover", "diagnose", "--node", &m, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let warnings = v["warnings"].to_string();
    assert!(
        warnings.contains("no recent copy: administration file 255 of database 2"),
        "{v}"
    );
    // The master's copy ages past the alarm age.
    wait_for(
        "the master's copy to age past the alarm",
        Duration::from_secs(60),
        || {
            let out = etp(&["copy", "ages", "--node", &m]);
            String::from_utf8_lossy(&out.stdout)
                .contains("ALARM master file 10 of database 1 (items): newest copy")
                .then_some(())
        },
    );
}

/// Whether a `file dump --node` of the full replicate was refused as held,
/// with the words the refusal must carry.
fn dump_refused(addr: &str, words: &[&str]) -> Option<String> {
    let out = etp(&["file", "dump", "--node", addr, "--file", "20"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code() != Some(0) && words.iter().all(|w| err.contains(w))).then_some(err)
}

/// Seed 001's restored replica: a replicate set restored into its stopped
/// node is locked (reads refused, naming why; stale reads allowed), it
/// announces its restored level to its master, is caught up from there
/// and released (an event in its error log, a metric) only once it has
/// confirmed the master's level. A shunned replicate refuses reads too,
/// until it is unshunned and has caught up again.
#[test]
fn a_restored_replicate_is_locked_until_it_confirms_its_masters_level() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cl =
        Cluster::start_with_args(etp_bin(), tmp.path(), &["--metrics", "127.0.0.1:0"], |a| {
            maintenance::cluster::topology_text(a, Some(1))
        })
        .expect("cluster");
    let metrics = cl.master().metrics.expect("metrics address");
    let area = tmp.path().join("area");
    let area_s = area.display().to_string();
    let (m, full) = (cl.nodes[0].addr.to_string(), cl.nodes[1].addr.to_string());
    let mut c = cl.master().client().expect("client");
    for k in 1..=2000 {
        put(&mut c, k, 0, true);
    }
    cl.wait_converged(LIMIT).expect("converged");
    let rs = taken(&ok(&etp(&[
        "copy", "take", "--node", &full, "--area", &area_s, "--file", "20", "--json",
    ])));
    let rid = rs["set"]["id"].as_str().expect("id").to_string();
    for k in 1..=300 {
        put(&mut c, k, k as i64, false);
    }
    let (level, _) = cl.wait_converged(LIMIT).expect("converged");
    // Nothing feeds it while it comes back: what it serves then is seen.
    ok(&etp(&["policy", "set", "maintenance", "--node", &m]));
    cl.nodes[1].stop().expect("stop full");
    let data = cl.nodes[1].data.display().to_string();
    ok(&etp(&[
        "copy", "restore", &rid, "--area", &area_s, "--data", &data,
    ]));
    cl.nodes[1].restart().expect("restart full");
    // Locked: a current read is refused, naming why and the way round.
    let err = dump_refused(&full, &["restored from a copy", "--stale"])
        .expect("a dump of the restored replicate is refused");
    assert!(err.contains("locked until it confirms"), "{err}");
    let mut rc = Client::connect(cl.nodes[1].addr).expect("client");
    use propagator::exec::ExecTarget;
    match rc.read(Fnr(20), Isn(1), false) {
        Err(propagator::node::client::ClientError::Remote { code, .. }) => {
            assert_eq!(code, propagator::wire::ErrorCode::Held)
        }
        other => panic!("a read of the locked replicate answered {other:?}"),
    }
    // Only a release at (or below) what it confirms, of the hold it has,
    // clears it: one for a level it has not reached is refused, as is one
    // naming another hold.
    // (A link is a node's conversation: the master's certificate.)
    let mut lc = Client::connect_with(
        cl.nodes[1].addr,
        &propagator::net::Transport::Tls(etp_system_tests::credentials("db1")),
    )
    .expect("the master's certificate");
    let held = match lc.call(&Request::Link(LinkRequest::LinkOpen {
        replicate: "items_full".into(),
        file: Fnr(20),
        confirmation: Fnr(21),
        master_db: propagator::DbId(1),
        master: Fnr(10),
    })) {
        Ok(Response::Link(state)) => state.hold.expect("it announces its hold"),
        other => panic!("link open answered {other:?}"),
    };
    assert_eq!(held.kind, propagator::catalog::HoldKind::Restored);
    for (level, releasing, words) in [
        (
            Seq(level.0 + 1_000_000),
            Some(held.clone()),
            "released only at its master's level",
        ),
        (Seq(1), None, "held differently now"),
    ] {
        match lc.call(&Request::Link(LinkRequest::Hold {
            hold: None,
            level,
            releasing,
        })) {
            Err(propagator::node::client::ClientError::Remote { message, .. }) => {
                assert!(message.contains(words), "{message}")
            }
            other => panic!("a premature release answered {other:?}"),
        }
    }
    // A stale read gets the copy's content: record 1 as it was copied.
    let old = rc.read(Fnr(20), Isn(1), true).expect("stale read");
    assert_eq!(old, Some(rec(1, 0)));
    let out = ok(&etp(&[
        "file", "dump", "--node", &full, "--file", "20", "--stale",
    ]));
    assert_eq!(out.lines().count(), 2000);
    // Fed again: it announces its level, catches up, and is released.
    let t = std::time::Instant::now();
    ok(&etp(&["policy", "set", "automatic", "--node", &m]));
    let text = wait_for("the restored replicate released", LIMIT, || {
        let text = crate::metrics::scrape(metrics).ok()?;
        let labels = "{master=\"items\",replicate=\"items_full\"}";
        let released =
            crate::metrics::value(&text, &format!("etp_replicate_releases_total{labels}"))
                == Some(1.0)
                && crate::metrics::value(&text, &format!("etp_replicate_held{labels}"))
                    == Some(0.0);
        released.then_some(text)
    });
    assert!(text.contains("etp_replicate_held"), "{text}");
    eprintln!(
        "FIGURE restored-replica-released: records=2000 behind=300 release_s={:.2}",
        t.elapsed().as_secs_f64()
    );
    let log = ok(&etp(&["replicate", "errors", "items_full", "--node", &m]));
    assert!(
        log.contains("restored replicate announces incarnation")
            && log.contains(&format!("locked until it confirms seq {}", level.0))
            && log.contains(&format!("released at seq {}", level.0)),
        "{log}"
    );
    cl.check_equal().expect("equal once released");
    assert_eq!(
        rc.read(Fnr(20), Isn(1), false).expect("read"),
        Some(rec(1, 1))
    );
    // Shunned: reads refused (its node is told) until unshunned and caught up.
    ok(&etp(&[
        "replicate",
        "shun",
        "items_full",
        "--reason",
        "disk check",
        "--node",
        &m,
    ]));
    let err = wait_for("the shunned replicate to refuse reads", LIMIT, || {
        dump_refused(&full, &["shunned", "disk check"])
    });
    assert!(err.contains("--stale"), "{err}");
    put(&mut c, 1, 99, false);
    ok(&etp(&["replicate", "unshun", "items_full", "--node", &m]));
    wait_for("the unshunned replicate released", LIMIT, || {
        let out = etp(&["file", "dump", "--node", &full, "--file", "20"]);
        (out.status.code() == Some(0)).then_some(())
    });
    assert_eq!(
        rc.read(Fnr(20), Isn(1), false).expect("read"),
        Some(rec(1, 99))
    );
}
