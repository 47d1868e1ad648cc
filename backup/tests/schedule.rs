//! Copy jobs driven by a controllable clock: they fire at their cron
//! times (missed slots run once), keep their retention, and a job whose
//! second set cannot be taken records why and leaves nothing in the
//! catalog — not even its first set.

use backup::schedule::{self, Clock, Scheduler};
use backup::take::Source;
use backup::Area;
use chrono::{DateTime, Duration, TimeZone, Utc};
use propagator::{Database, DbId, Fnr, Isn, Record, Role, Value};
use std::sync::Mutex;

struct FakeClock(Mutex<DateTime<Utc>>);

impl FakeClock {
    fn set(&self, t: DateTime<Utc>) {
        *self.0.lock().expect("lock") = t;
    }
}

impl Clock for FakeClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().expect("lock")
    }
}

fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 30, h, m, s)
        .single()
        .expect("a time")
}

fn master_db(dir: &std::path::Path) -> Database {
    Database::init(dir, DbId(7), None).expect("init");
    let (db, _) = Database::open(dir).expect("open");
    db.create_file(Fnr(10), "orders", Role::Plain)
        .expect("master");
    db.define_master(Fnr(10), Fnr(11)).expect("define");
    let mut s = db.session();
    for k in 1..=500u64 {
        let mut r = Record::new();
        r.insert("k".into(), Value::Int(k as i64));
        s.store(Fnr(10), Some(Isn(k)), r).expect("store");
    }
    s.et(None).expect("et");
    db
}

fn dead_addr() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

fn sets_of(area: &Area, job: &str) -> Vec<backup::CopySet> {
    area.list()
        .expect("list")
        .into_iter()
        .filter(|s| s.job.as_deref() == Some(job))
        .collect()
}

#[test]
fn jobs_fire_at_cron_times_keep_retention_and_record_whole_runs_only() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = master_db(&tmp.path().join("db"));
    let area_dir = tmp.path().join("area");
    let text = format!(
        r#"
area = "{}"

[[job]]
name = "m"
cron = "0 */10 * * * *"
keep = 2
[[job.set]]
database = 7
files = [10]

[[job]]
name = "both"
cron = "0 0 * * * *"
[[job.set]]
database = 7
files = [10]
[[job.set]]
database = 9
files = [20]
"#,
        area_dir.display()
    );
    let clock = FakeClock(Mutex::new(at(10, 3, 0)));
    let mut s = Scheduler::new(&text, clock.now()).expect("valid jobs");
    assert_eq!(s.next_due(), Some(at(10, 10, 0)));
    let dead = dead_addr();
    let src = |d: DbId| -> Result<Source, backup::Error> {
        Ok(if d == DbId(7) {
            Source::Local(db.clone())
        } else {
            Source::Node(dead)
        })
    };
    let mut quiet = |_: &str| {};
    let area = Area::open(&area_dir).expect("area");
    clock.set(at(10, 9, 59));
    assert!(s
        .run_due(&area, &clock, &src, &mut quiet)
        .expect("run")
        .is_empty());
    clock.set(at(10, 10, 0));
    let runs = s.run_due(&area, &clock, &src, &mut quiet).expect("run");
    assert_eq!(runs.len(), 1);
    assert!(runs[0].ok && runs[0].job == "m", "{runs:?}");
    assert_eq!(sets_of(&area, "m").len(), 1);
    for t in [at(10, 20, 0), at(10, 30, 0), at(10, 40, 0)] {
        clock.set(t);
        let runs = s.run_due(&area, &clock, &src, &mut quiet).expect("run");
        assert_eq!(runs.len(), 1, "at {t}: {runs:?}");
    }
    assert_eq!(sets_of(&area, "m").len(), 2, "keep = 2");
    // 11:00: both jobs are due; "both" cannot reach database 9.
    clock.set(at(11, 0, 0));
    let runs = s.run_due(&area, &clock, &src, &mut quiet).expect("run");
    assert_eq!(runs.len(), 2, "{runs:?}");
    let both = runs.iter().find(|r| r.job == "both").expect("both ran");
    assert!(!both.ok && both.sets.is_empty());
    assert!(
        both.error
            .as_deref()
            .unwrap_or_default()
            .contains(&dead.to_string()),
        "{both:?}"
    );
    assert!(
        sets_of(&area, "both").is_empty(),
        "no half job in the catalog"
    );
    // Nothing orphaned in the data directory either.
    let dirs = std::fs::read_dir(area.root().join("data"))
        .expect("data")
        .count();
    assert_eq!(dirs, area.list().expect("list").len());
    // Missed slots run once: from 11:00 to 13:35 "m" missed 15 slots.
    clock.set(at(13, 35, 0));
    let runs = s.run_due(&area, &clock, &src, &mut quiet).expect("run");
    assert_eq!(runs.iter().filter(|r| r.job == "m").count(), 1);
    assert_eq!(
        runs.iter().filter(|r| r.job == "both").count(),
        1,
        "retried at its next slot"
    );
    assert_eq!(s.next_due(), Some(at(13, 40, 0)));
    // The history holds every run, in order.
    let h = schedule::history(&area).expect("history");
    assert_eq!(h.len(), 8);
    assert_eq!(h.iter().filter(|r| !r.ok).count(), 2);
    assert!(
        h.iter().any(|r| !r.dropped.is_empty()),
        "retention is recorded"
    );
}

#[test]
fn max_age_drops_old_runs_but_never_the_newest() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = master_db(&tmp.path().join("db"));
    let area = Area::open(&tmp.path().join("area")).expect("area");
    let text = format!(
        "area = \"{}\"\n[[job]]\nname = \"aged\"\ncron = \"0 0 * * * *\"\nmax_age_days = 1\n[[job.set]]\ndatabase = 7\nfiles = [10]\n",
        area.root().display()
    );
    let (def, _) = schedule::parse_jobs(&text).expect("valid");
    let job = &def.job[0];
    let src = |_: DbId| -> Result<Source, backup::Error> { Ok(Source::Local(db.clone())) };
    let now = Utc::now();
    let first = schedule::run_job(&area, job, now, now, &src, &mut |_| {});
    assert!(first.ok);
    let later = now + Duration::days(2);
    let second = schedule::run_job(&area, job, later, later, &src, &mut |_| {});
    assert_eq!(second.dropped, first.sets, "the two-day-old run is dropped");
    assert_eq!(sets_of(&area, "aged").len(), 1);
    let third = schedule::run_job(
        &area,
        job,
        later,
        later + Duration::days(5),
        &src,
        &mut |_| {},
    );
    assert_eq!(sets_of(&area, "aged").len(), 1, "{third:?}");
}

#[test]
fn a_node_takes_jobs_only_for_its_own_copy_area() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mine = tmp.path().join("mine");
    let other = tmp.path().join("other");
    for d in [&mine, &other] {
        std::fs::create_dir(d).expect("dir");
    }
    let job =
        "[[job]]\nname = \"a\"\ncron = \"0 * * * * *\"\n[[job.set]]\ndatabase = 1\nfiles = [10]\n";
    let with = |a: &std::path::Path| format!("area = {:?}\n{job}", a.display().to_string());
    // No line: the node's area. Its own area named: taken.
    schedule::check_jobs(job, Some(&mine), None).expect("no area line");
    schedule::check_jobs(&with(&mine), Some(&mine), None).expect("its own area");
    // Another area, or a way out of its own, is refused naming both.
    for bad in [other.clone(), mine.join("..").join("other")] {
        let e = schedule::check_jobs(&with(&bad), Some(&mine), None).expect_err("another area");
        let e = format!("{e:#}");
        assert!(
            e.contains(&mine.display().to_string()) && e.contains("area ="),
            "{e}"
        );
    }
    // A node without an area takes no jobs, but can have them cleared.
    let e = schedule::check_jobs(job, None, None).expect_err("no area");
    assert!(format!("{e:#}").contains("--copy-area"), "{e:#}");
    schedule::check_jobs("", None, None).expect("clearing needs no area");
}

#[test]
fn bad_job_definitions_are_refused_with_the_reason() {
    for (text, want) in [
        ("area = \"/x\"\n[[job]]\nname = \"a\"\ncron = \"61 * * * *\"\n[[job.set]]\ndatabase = 1\nfiles = [10]\n", "copy job a: cron"),
        ("area = \"/x\"\n[[job]]\nname = \"a\"\ncron = \"* * * * *\"\n[[job.set]]\ndatabase = 1\nfiles = [10]\n[[job]]\nname = \"a\"\ncron = \"* * * * *\"\n[[job.set]]\ndatabase = 1\nfiles = [10]\n", "defined twice"),
        ("area = \"/x\"\n[[job]]\nname = \"a\"\ncron = \"* * * * *\"\nset = []\n", "has no [[job.set]]"),
        ("area = \"/x\"\n[[job]]\nname = \"a\"\ncron = \"* * * * *\"\nkeep = 0\n[[job.set]]\ndatabase = 1\nfiles = [10]\n", "keep must be at least 1"),
        ("area = \"/x\"\nbogus = 1\n", "unknown field"),
    ] {
        let e = Scheduler::new(text, Utc::now()).err().expect("refused");
        assert!(format!("{e:#}").contains(want), "{want}: {e:#}");
    }
}

/// Issue 21 item 11: archiving (with its prune) and log cleanup are jobs
/// like copies. An archive job archives the closed segments and prunes the
/// ones no copy set needs; a log cleanup runs only through a node (a local
/// source is refused, recorded as the run's error); their definitions name
/// databases only and have no retention.
#[test]
fn archive_and_log_cleanup_are_scheduled_like_copies() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("db");
    Database::init(&dir, DbId(7), Some(64 << 10)).expect("init");
    let (db, _) = Database::open(&dir).expect("open");
    db.create_file(Fnr(10), "orders", Role::Plain)
        .expect("master");
    db.define_master(Fnr(10), Fnr(11)).expect("define");
    let mut s = db.session();
    for round in 0..3i64 {
        for k in 1..=1000u64 {
            let mut r = Record::new();
            r.insert("k".into(), Value::Int(k as i64 + round));
            r.insert("pad".into(), Value::Text("x".repeat(60)));
            if round == 0 {
                s.store(Fnr(10), Some(Isn(k)), r).expect("store");
            } else {
                s.update(Fnr(10), Isn(k), r).expect("update");
            }
            if k % 250 == 0 {
                s.et(None).expect("et");
            }
        }
    }
    drop(s);
    let closed = db
        .plog_segments()
        .expect("segments")
        .iter()
        .filter(|s| s.last_lsn.is_some())
        .count();
    assert!(closed >= 2, "{:?}", db.plog_segments());
    let area = Area::open(&tmp.path().join("area")).expect("area");
    let text = "[[job]]\nname = \"copies\"\ncron = \"0 0 * * * *\"\n[[job.set]]\ndatabase = 7\nfiles = [10]\n\
                [[job]]\nname = \"archive\"\nkind = \"archive\"\ncron = \"0 5 * * * *\"\n[[job.set]]\ndatabase = 7\n\
                [[job]]\nname = \"cleanup\"\nkind = \"log_cleanup\"\ncron = \"0 10 * * * *\"\n[[job.set]]\ndatabase = 7\n";
    let (def, _) = schedule::parse_jobs(text).expect("parses");
    let job = |n: &str| def.job.iter().find(|j| j.name == n).expect("job").clone();
    let src = |_: DbId| Ok(Source::Local(db.clone()));
    let t = at(1, 0, 0);
    let copy = schedule::run_job(&area, &job("copies"), t, t, &src, &mut |_| {});
    assert!(copy.ok, "{copy:?}");
    // More commits after the copy, then the archive job.
    let mut s = db.session();
    for k in 1..=1000u64 {
        let mut r = Record::new();
        r.insert("k".into(), Value::Int(-(k as i64)));
        r.insert("pad".into(), Value::Text("y".repeat(60)));
        s.update(Fnr(10), Isn(k), r).expect("update");
        if k % 250 == 0 {
            s.et(None).expect("et");
        }
    }
    drop(s);
    let run = schedule::run_job(&area, &job("archive"), t, t, &src, &mut |_| {});
    assert!(run.ok, "{run:?}");
    assert!(run.done.iter().any(|d| d.contains("archived")), "{run:?}");
    let archived = backup::archive::list(&area, DbId(7)).expect("list");
    assert!(archived.len() >= closed, "{archived:?}");
    let first = db.plog_segments().expect("segments")[0].first_lsn;
    assert!(first.0 > 1, "the prune removed archived segments");
    // The run is in the history with what it did.
    let h = schedule::history(&area).expect("history");
    assert!(
        h.iter().any(|r| r.job == "archive" && !r.done.is_empty()),
        "{h:?}"
    );
    // A log cleanup runs through a node only.
    let run = schedule::run_job(&area, &job("cleanup"), t, t, &src, &mut |_| {});
    assert!(!run.ok);
    assert!(
        run.error
            .as_deref()
            .unwrap_or_default()
            .contains("through the database's node"),
        "{run:?}"
    );
    // Their definitions name databases only, with no retention.
    for (bad, want) in [
        ("[[job]]\nname = \"a\"\nkind = \"archive\"\ncron = \"0 * * * * *\"\n[[job.set]]\ndatabase = 7\nfiles = [10]\n", "names databases only"),
        ("[[job]]\nname = \"a\"\nkind = \"log_cleanup\"\ncron = \"0 * * * * *\"\nkeep = 2\n[[job.set]]\ndatabase = 7\n", "retention"),
        ("[[job]]\nname = \"a\"\nkind = \"shred\"\ncron = \"0 * * * * *\"\n[[job.set]]\ndatabase = 7\n", "kind"),
    ] {
        let e = schedule::parse_jobs(bad).expect_err(want);
        assert!(format!("{e:#}").contains(want), "{e:#}");
    }
    db.close().expect("close");
}
